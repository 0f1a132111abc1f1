/*
 * review_int.h (internal) - the backend interface behind ap_review_store, and what the two
 * backends share: id checks, the wall clock, string copies.
 *
 * A backend is a vtable (struct ap__review_ops) with a struct ap__review_backend embedded first
 * in its own struct ("super"). review.c checks every argument once (id syntax, statuses, the
 * answer of a resolve, field sizes) and makes the id and the times, so the backends may trust
 * what they are given: in particular an id reaching a backend is always "rv_" + 24 lowercase
 * hex digits, safe inside a Redis key name. Each backend is thread-safe on its own.
 */
#ifndef AP_REVIEW_INT_H
#define AP_REVIEW_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aperture/review.h"

#define AP__REVIEW_ID_LEN 27 /* "rv_" + 24 hex */

/* The largest field (the request, mostly) an item may carry: far above any request body the
 * gateway accepts, and below what either store refuses (SQLite 1 GB, Redis 512 MB). */
#define AP__REVIEW_MAX_FIELD ((size_t)64 << 20)

struct ap__review_backend;

struct ap__review_ops {
    const char *name; /* "sqlite", "redis" */
    /* Store item as a new pending item named id, created at created_ms. Never overwrites: an
     * existing id fails (AP_EINTERNAL: 96 random bits do not collide). */
    ap_status (*add)(struct ap__review_backend *b, const char *id, int64_t created_ms,
                     const ap_review_item *item, ap_error *err);
    /* out is zeroed and filled; AP_ENOTFOUND when there is no such item. */
    ap_status (*get)(struct ap__review_backend *b, const char *id, bool with_request,
                     ap_review_item *out, ap_error *err);
    /* limit >= 1. *items NULL when *n is 0. */
    ap_status (*list)(struct ap__review_backend *b, ap_review_status status, size_t offset,
                      size_t limit, ap_review_item **items, size_t *n, ap_error *err);
    ap_status (*count)(struct ap__review_backend *b, ap_review_status status, size_t *n,
                       ap_error *err);
    /* status is RESOLVED or REJECTED; answer and reviewer may be NULL. AP_ENOTFOUND, or
     * AP_EINVAL when the item is no longer pending. */
    ap_status (*resolve)(struct ap__review_backend *b, const char *id, ap_review_status status,
                         const char *answer, const char *reviewer, int64_t resolved_ms,
                         ap_error *err);
    ap_status (*purge)(struct ap__review_backend *b, int64_t older_than_ms, size_t *removed,
                       ap_error *err);
    void (*free)(struct ap__review_backend *b);
};

struct ap__review_backend {
    const struct ap__review_ops *ops;
};

/* Backends. target is what follows "sqlite://" or "redis://"; url is the whole URL, for
 * messages only. */
ap_status ap__review_sqlite_open(const char *target, const char *url,
                                 struct ap__review_backend **out, ap_error *err);
ap_status ap__review_redis_open(const char *target, const char *url,
                                struct ap__review_backend **out, ap_error *err);

/* Whether id is exactly "rv_" + 24 lowercase hex digits (the only ids a store ever makes). */
bool ap__review_id_valid(const char *id);

/* Wall-clock milliseconds since the epoch (items outlive the process). */
int64_t ap__review_wall_ms(void);

/* A NUL-terminated copy of len bytes at p, into *out. AP_ENOMEM on failure. */
ap_status ap__review_strndup(const char *p, size_t len, char **out, ap_error *err);

#endif
