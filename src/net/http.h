/*
 * http.h - upstream HTTP calls on one libcurl multi event loop, in its own thread.
 *
 * Thousands of slow upstream calls cost one thread and one socket each, not a thread each:
 * callers submit a call and return; the loop runs every transfer and calls back on its own
 * thread when bytes arrive (streaming) and when the call ends. Callbacks must be quick (they
 * block every other transfer): translate, append to a buffer, resume a connection.
 */
#ifndef AP_HTTP_H
#define AP_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "aperture/status.h"
#include "provider/provider.h"

struct ap__http;

struct ap__http_call {
    struct ap__upreq req;   /* owned by the call once submitted */
    long connect_timeout_ms;
    long timeout_ms;
    size_t max_body;        /* cap on a buffered body (non-streaming) */
    /* Streaming: called with each piece of the body as it arrives (status known by then).
     * NULL: the body is buffered and handed to on_done. Return false to abort the call. */
    bool (*on_data)(void *ctx, long status, const char *data, size_t len);
    /* Always called exactly once. rc: AP_OK (any HTTP status), AP_ETIMEOUT, AP_ENETWORK,
     * AP_ETOOLARGE. body/len: the buffered body (NULL when streaming). errmsg: curl's reason. */
    void (*on_done)(void *ctx, ap_status rc, long status, const char *body, size_t len,
                    const char *errmsg);
    /* Filled before on_done: the upstream's Retry-After (or retry-after-ms, as seconds). */
    char retry_after[32];
    char retry_after_ms[32]; /* the upstream's retry-after-ms, as sent ("" = none) */
    void *ctx;
    /* Private. */
    void *easy;
    char *buf;
    size_t len, cap;
    long status;
    bool aborted_too_large;
    struct curl_slist *slist;
    double due_ms;                      /* start no earlier than this (ap__now_ms clock) */
    struct ap__http_call *next;         /* submission queue */
    struct ap__http_call *aprev, *anext; /* active list */
};

struct ap__http *ap__http_new(void);
/* Submit a call (ownership moves to the loop). Returns 0, or -1 if the loop is stopping, in
 * which case on_done has been called with AP_ENETWORK. */
int ap__http_submit(struct ap__http *h, struct ap__http_call *call);
/* The same, started no earlier than delay_ms from now (a retry's backoff): the wait holds no
 * thread, the loop starts the call when it is due. */
int ap__http_submit_after(struct ap__http *h, struct ap__http_call *call, long delay_ms);
/* Transfers in flight. */
size_t ap__http_inflight(struct ap__http *h);
/* Abort everything in flight (each on_done gets AP_ENETWORK) and stop the loop; from then on
 * every submit is refused (its on_done called at once), but h stays valid for callers that
 * still hold it (jobs draining on the worker pool). Idempotent. */
void ap__http_stop(struct ap__http *h);
/* Stop (when not yet stopped) and free. */
void ap__http_free(struct ap__http *h);

#endif
