/*
 * review.h - the human review queue: requests that no model step could answer well enough,
 * kept until a person answers them.
 *
 * A fallback chain may end in the step "review" (config.h): instead of an error, the request
 * (its canonical JSON with the processed images, the reason, the last step's answer if any) is
 * stored here and the client gets the item's id and needs_review: true. A reviewer lists the
 * pending items, reads one, and resolves it with an answer (or rejects it); the client polls
 * the item by id.
 *
 * Backends: SQLite (embedded default, one file, WAL) and Redis (several gateways share one
 * queue). The URL picks: "sqlite:///abs/path.db", "sqlite://relative.db", "redis://host:port",
 * "redis://host:port/db". Items are never expired by the store: a review queue is work to be
 * done, not a cache (ap_review_purge() removes resolved items older than a given age).
 *
 * Ids are "rv_" + 24 lowercase hex digits (96 random bits, from the OS), unguessable: the id is
 * what lets a client read its own item.
 *
 * Threading: an ap_review_store may be shared by any number of threads (SQLite: one
 * connection under a mutex; Redis: one connection under a mutex, reconnected on failure).
 * Redis calls fail fast (AP_ENETWORK) when the server is down; nothing is lost silently: an
 * add that fails returns the error and the caller answers the client with it. With Redis the
 * process must ignore SIGPIPE (a write to a server that just died raises it).
 */
#ifndef APERTURE_REVIEW_H
#define APERTURE_REVIEW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aperture/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define AP_REVIEW_ID_MAX 32 /* "rv_" + 24 hex + NUL fits */

typedef enum ap_review_status {
    AP_REVIEW_PENDING = 0,
    AP_REVIEW_RESOLVED = 1,
    AP_REVIEW_REJECTED = 2,
} ap_review_status;

/* One item. Strings are NUL-terminated; on reads they are owned by the item
 * (ap_review_item_release()); on ap_review_add() they are borrowed. */
typedef struct ap_review_item {
    char id[AP_REVIEW_ID_MAX];
    ap_review_status status;
    int64_t created_unix_ms, resolved_unix_ms; /* resolved: 0 while pending */
    char *task;      /* may be NULL */
    char *model;     /* the model the client asked for */
    char *client;    /* the client key's name; may be NULL */
    char *reason;    /* why it needs review: "failed_checks", "breaker_open", "error: ..." */
    char *request;   /* the canonical request JSON (images as data: URLs), may be large */
    char *candidate; /* the best model answer seen (JSON), or NULL */
    char *answer;    /* the reviewer's answer (JSON) once resolved, else NULL */
    char *reviewer;  /* who resolved it; may be NULL */
} ap_review_item;

typedef struct ap_review_store ap_review_store;

/*
 * Open the store at url (see above). AP_EINVAL for a URL it does not understand; AP_EIO when
 * the SQLite file cannot be opened. A Redis store opens even when the server is down (each
 * call then fails with AP_ENETWORK until it is back: the connection is retried on use, at most
 * every 200 ms). *out is (transfer full): ap_review_close().
 */
AP_API AP_NODISCARD ap_status ap_review_open(const char *url, ap_review_store **out,
                                             ap_error *err);

AP_API void ap_review_close(ap_review_store *s);

/* "sqlite" or "redis". */
AP_API const char *ap_review_backend(const ap_review_store *s);

/*
 * Store a new pending item from item's task, model, client, reason, request (required) and
 * candidate; id, status and times are set by the store. On success id_out (at least
 * AP_REVIEW_ID_MAX bytes) holds the new id. AP_EINVAL without a request; AP_ETOOLARGE for a
 * field (of these, or a resolve's answer and reviewer) over 64 MiB.
 */
AP_API AP_NODISCARD ap_status ap_review_add(ap_review_store *s, const ap_review_item *item,
                                            char *id_out, ap_error *err);

/* Read one item. AP_ENOTFOUND when there is none with that id (or the id is malformed).
 * *out is filled (release with ap_review_item_release()). with_request false leaves
 * out->request NULL (listing pages do not need the images). */
AP_API AP_NODISCARD ap_status ap_review_get(ap_review_store *s, const char *id, bool with_request,
                                            ap_review_item *out, ap_error *err);

/*
 * Up to limit items with the given status, oldest first, skipping offset; request is left
 * NULL. *items is a malloc'd array of *n items: release each, then free(*items).
 */
AP_API AP_NODISCARD ap_status ap_review_list(ap_review_store *s, ap_review_status status,
                                             size_t offset, size_t limit, ap_review_item **items,
                                             size_t *n, ap_error *err);

/* How many items have this status. */
AP_API AP_NODISCARD ap_status ap_review_count(ap_review_store *s, ap_review_status status,
                                              size_t *n, ap_error *err);

/*
 * Resolve a pending item: status RESOLVED with answer (JSON text, required) or REJECTED
 * (answer may be NULL), reviewer may be NULL. AP_ENOTFOUND for an unknown id; AP_EINVAL when
 * the item is no longer pending (the message says so: two reviewers racing, the second one
 * learns it lost) or status is PENDING.
 */
AP_API AP_NODISCARD ap_status ap_review_resolve(ap_review_store *s, const char *id,
                                                ap_review_status status, const char *answer,
                                                const char *reviewer, ap_error *err);

/* Remove resolved and rejected items resolved before older_than_unix_ms; *removed may be NULL. */
AP_API AP_NODISCARD ap_status ap_review_purge(ap_review_store *s, int64_t older_than_unix_ms,
                                              size_t *removed, ap_error *err);

/* Free an item's strings (not the item itself). */
AP_API void ap_review_item_release(ap_review_item *item);

/* "pending", "resolved", "rejected"; "unknown" otherwise. */
AP_API const char *ap_review_status_name(ap_review_status s);

/* Parse a status name. AP_EINVAL for anything else. */
AP_API AP_NODISCARD ap_status ap_review_status_parse(const char *name, ap_review_status *out);

#ifdef __cplusplus
}
#endif
#endif
