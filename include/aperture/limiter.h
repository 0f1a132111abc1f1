/*
 * limiter.h - concurrency and rate limits per upstream provider, with a bounded wait queue.
 *
 * Each key (a provider name) may have up to three limits: calls in flight at once
 * (max_in_flight), calls started per minute (rpm) and estimated input tokens per minute (tpm).
 * The per-minute budgets are token buckets holding one minute's worth (capacity rpm, refilled
 * at rpm/60 per second; the same for tpm), so a burst of up to a minute's budget may start at
 * once and the long-run rate is held.
 *
 * A request asks with ap_limiter_acquire(). When every limit has room and nobody is queued
 * ahead of it, it is granted at once. Otherwise it joins the key's FIFO queue (at most
 * queue_max waiters) and its callback runs exactly once later, on the limiter's own thread
 * (see ap_limiter_cb). When the queue is full the request is refused at once with
 * AP_ERATELIMIT and a hint of when to come back, for a 429 with Retry-After.
 *
 * A token estimate larger than a whole minute's tpm budget is granted once the bucket is full
 * (otherwise it could never run); the bucket then goes negative and later requests wait longer.
 *
 * Threading: one ap_limiter may be shared by any number of threads; one mutex guards it. The
 * limiter owns one thread that wakes for queue deadlines and bucket refills and runs the
 * callbacks of queued requests (never under the mutex, so a callback may call back in).
 * Decisions take the time from CLOCK_MONOTONIC; the _at variants (internal:
 * src/resilience/limiter_int.h) take it from the caller, for tests.
 */
#ifndef APERTURE_LIMITER_H
#define APERTURE_LIMITER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aperture/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ap_limit_opts {
    int max_in_flight;     /* 0 = no limit */
    double rpm;            /* requests per minute; 0 = no limit */
    double tpm;            /* estimated tokens per minute; 0 = no limit */
    int queue_max;         /* waiters allowed; 0 = none (refuse at once when over a limit) */
    long queue_timeout_ms; /* the longest a waiter waits; > 0 */
} ap_limit_opts;

/*
 * A queued request's outcome, called exactly once on the limiter's thread: rc AP_OK = granted
 * (release it later), AP_ETIMEOUT = waited queue_timeout_ms, AP_ERATELIMIT = the limiter is
 * being freed (or the key's queue_max was lowered below the number waiting: the newest are
 * refused). Waiters that fit under raised limits are granted. Not called for requests
 * answered at once by ap_limiter_acquire().
 */
typedef void (*ap_limiter_cb)(void *ctx, ap_status rc);

typedef struct ap_limiter ap_limiter;

/* A limiter with its thread. *out is (transfer full): ap_limiter_free(). */
AP_API AP_NODISCARD ap_status ap_limiter_new(ap_limiter **out, ap_error *err);

/*
 * Stop the thread, call every queued callback with AP_ERATELIMIT, free. NULL is a no-op. No
 * other thread may call in once this has begun.
 */
AP_API void ap_limiter_free(ap_limiter *lim);

/*
 * Shut the door before shutting down: every queued callback is called with AP_ERATELIMIT,
 * and from then on every ap_limiter_acquire() is refused with AP_ERATELIMIT (no new grant,
 * no callback). ap_limiter_release() still works. Returns once no callback is running or can
 * start, so the caller may then free what the callbacks use. Idempotent; NULL is a no-op.
 */
AP_API void ap_limiter_close(ap_limiter *lim);

/*
 * Ask for a slot under key with limits o (copied on first use of the key and whenever they
 * differ from the key's current ones), for a call estimated at tokens input tokens (>= 0).
 *   AP_OK          granted now; cb will not be called; release later.
 *   AP_ERATELIMIT  the queue is full (or queue_max is 0 and a limit has no room): refused,
 *                  *retry_after_ms (may be NULL) = an estimate of when room appears, >= 1.
 *   AP_EBUSY       queued: cb(ctx, ...) will be called once, later, on the limiter's thread.
 *   AP_EINVAL      bad arguments (NULL key or cb, negative or non-finite values, queue_max > 0
 *                  with queue_timeout_ms 0).
 * With all limits 0 the answer is always AP_OK (nothing is tracked but in-flight counts).
 * Keys past the first 1024, or longer than 255 bytes, are granted untracked (bounded memory).
 */
AP_API ap_status ap_limiter_acquire(ap_limiter *lim, const char *key, const ap_limit_opts *o,
                                    double tokens, ap_limiter_cb cb, void *ctx,
                                    long *retry_after_ms);

/*
 * Give back a granted slot (the call ended, however it ended). actual_tokens >= 0 replaces the
 * estimate in the tpm bucket (the difference is credited or debited); < 0 keeps the estimate.
 * The next waiters that now fit are granted on the limiter's thread.
 */
AP_API void ap_limiter_release(ap_limiter *lim, const char *key, double estimated_tokens,
                               double actual_tokens);

/* Requests waiting under key now (for aperture_ratelimit_queue_depth{provider}). */
AP_API size_t ap_limiter_queue_depth(ap_limiter *lim, const char *key);

/* Calls in flight under key now. */
AP_API int ap_limiter_in_flight(ap_limiter *lim, const char *key);

/* Call fn for every key seen, with its queue depth and in-flight count (a snapshot; fn runs
 * without the lock). */
AP_API void ap_limiter_foreach(ap_limiter *lim,
                               void (*fn)(const char *key, size_t queued, int in_flight,
                                          void *ctx),
                               void *ctx);

#ifdef __cplusplus
}
#endif
#endif
