/*
 * limiter_int.h (internal) - the limiter with the clock passed in, for deterministic tests.
 *
 * include/aperture/limiter.h promises "_at variants" that take the time from the caller; they
 * live here rather than in the public header because only tests need them. Times are
 * milliseconds on any monotonic scale the caller likes (the public calls use CLOCK_MONOTONIC
 * through ap__now_ms()); a time earlier than one already seen for a key refills nothing.
 *
 * A "manual" limiter has no thread: nothing happens between calls, and the work the thread
 * would do (time out waiters, grant the queue heads that now fit, run their callbacks) happens
 * when the caller says, in ap__limiter_poll_at(), with the callbacks run on the caller's
 * thread. Mixing the _at calls with the public ones on one limiter mixes two clocks: don't.
 */
#ifndef AP_LIMITER_INT_H
#define AP_LIMITER_INT_H

#include <stddef.h>

#include "aperture/limiter.h"

/* Keys tracked per limiter; acquires under further keys are granted untracked. */
#define AP__LIMITER_MAX_KEYS 1024
/* Longer keys are granted untracked too (provider names are short). */
#define AP__LIMITER_MAX_KEY_LEN 255

/* A limiter without a thread (see above). *out is (transfer full): ap_limiter_free(), which
 * runs the queued callbacks with AP_ERATELIMIT on the caller's thread. */
ap_status ap__limiter_new_manual(ap_limiter **out, ap_error *err);

/* ap_limiter_acquire() at now_ms. */
ap_status ap__limiter_acquire_at(ap_limiter *lim, const char *key, const ap_limit_opts *o,
                                 double tokens, ap_limiter_cb cb, void *ctx, long *retry_after_ms,
                                 double now_ms);

/* ap_limiter_release() at now_ms. */
void ap__limiter_release_at(ap_limiter *lim, const char *key, double estimated_tokens,
                            double actual_tokens, double now_ms);

/*
 * One pass of the limiter's thread at now_ms: waiters past their deadline get AP_ETIMEOUT,
 * queue heads that fit are granted in FIFO order, waiters refused by a lowered queue_max get
 * AP_ERATELIMIT; their callbacks run here, in the caller, without the lock. Returns how many
 * callbacks ran. *next_ms (may be NULL) = when the next pass has work to do without a release
 * or an acquire happening first (a deadline or a bucket refill), or -1 when nothing waits on
 * time. Meant for manual limiters; on a threaded one it merely races the thread.
 */
size_t ap__limiter_poll_at(ap_limiter *lim, double now_ms, double *next_ms);

#endif
