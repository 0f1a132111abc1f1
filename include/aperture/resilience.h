/*
 * resilience.h - the decisions behind riding out upstream failures: whether to retry a failed
 * upstream attempt and how long to wait first, and a circuit breaker per deployment. The
 * fallback chain a request walks comes from the config (ap_config_chain() in config.h).
 *
 * This module does no I/O and reads no clock: the caller passes time in (monotonic
 * milliseconds for the breaker, wall-clock milliseconds only to read a Retry-After date) and
 * owns the random state, so every decision can be replayed in a test.
 *
 * Retries. After attempt n of a step failed, ap_retry_should() says whether attempt n + 1 may
 * run: never once the client has gone or bytes of the answer reached it, never past
 * max_attempts, and only for the listed HTTP statuses, connection errors and timeouts.
 * ap_retry_delay_ms() is the wait before it: the upstream's retry-after-ms or Retry-After when
 * it sent one (capped at retry_after_cap_ms), else "full jitter" backoff, uniform in
 * [0, min(cap_ms, base_ms * 2^(n-1))]. ap_retry_attempt_timeout_ms() and
 * ap_retry_fits_deadline() keep attempts and waits inside the request's deadline.
 *
 * Breaker. Each deployment (a provider endpoint serving one upstream model: the key is the
 * caller's, "provider/upstream" by convention, see ap_chain_step) is CLOSED, OPEN or
 * HALF_OPEN:
 *   CLOSED    -> OPEN       after consecutive_failures failures in a row, or when at least
 *                           min_requests results in the last window_ms have an error rate
 *                           >= error_rate;
 *   OPEN      -> HALF_OPEN  on the first ap_breaker_allow() once cooldown_ms have passed;
 *   HALF_OPEN -> CLOSED     once half_open_probes probes have succeeded;
 *   HALF_OPEN -> OPEN       on any failed probe (a fresh cooldown).
 * While OPEN, ap_breaker_allow() is false at once (the caller goes straight to the next step).
 * While HALF_OPEN it is true for exactly half_open_probes callers, flagged as probes, and
 * false for everyone else: no thundering herd onto a deployment that is just recovering. A
 * probe whose result is never recorded does not wedge the breaker: when the probes handed out
 * have been silent for cooldown_ms, a new round is handed out.
 * Results recorded for requests that were let through before the breaker opened (not probes)
 * change nothing while it is OPEN or HALF_OPEN.
 *
 * Threading: the ap_retry_* functions are pure (the PRNG state is the caller's). An
 * ap_breaker_set may be shared by any number of threads; one mutex guards it, and a decision
 * is a hash lookup and a few compares under it (well under a microsecond).
 */
#ifndef APERTURE_RESILIENCE_H
#define APERTURE_RESILIENCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aperture/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- retries -------------------------------------------------------------------------------- */

/* Most HTTP statuses a policy can list. */
#define AP_RETRY_MAX_STATUS 16

typedef struct ap_retry_policy {
    int max_attempts;        /* attempts per chain step, the first included; 1 = none; 3 */
    long base_ms;            /* the first backoff is uniform in [0, base_ms]; 500 */
    long cap_ms;             /* no backoff is longer than this; 8000 */
    long retry_after_cap_ms; /* an upstream's Retry-After is cut to this; 30000 */
    /* HTTP statuses that are retried (400..599): 429, 500, 502, 503, 504. */
    int on_status[AP_RETRY_MAX_STATUS];
    size_t n_on_status;
    bool on_connect_error;   /* AP_ENETWORK: no connection, or it dropped mid-answer; true */
    bool on_timeout;         /* AP_ETIMEOUT; true */
    long attempt_timeout_ms; /* one attempt at most; 0 = the provider's timeout_ms alone; 0 */
    long deadline_ms;        /* the whole request (every step, attempt, wait); 0 = none; 0 */
} ap_retry_policy;

/* Fill p with the defaults above. */
AP_API void ap_retry_policy_init(ap_retry_policy *p);

/*
 * Whether to run attempt + 1 of the same step after attempt (1-based) failed with rc:
 *  - never when client_gone or bytes_sent_to_client (a stream that has begun cannot be
 *    replayed), nor when attempt >= max_attempts;
 *  - AP_ETIMEOUT: on_timeout; AP_ENETWORK: on_connect_error;
 *  - AP_EUPSTREAM, AP_ERATELIMIT, or AP_OK with http_status >= 400 (the net layer completes a
 *    call that got an HTTP error): when http_status is listed in on_status;
 *  - anything else (AP_OK with a good status, AP_EINVAL, AP_EAUTH, AP_ETOOLARGE, ...): no,
 *    the same request would fail the same way.
 * http_status is 0 when there was no response.
 */
AP_API bool ap_retry_should(const ap_retry_policy *p, int attempt, ap_status rc, long http_status,
                            bool client_gone, bool bytes_sent_to_client);

/*
 * Whether rc / http_status is a failure the policy calls transient (the same rules as
 * ap_retry_should() without the attempt count and the client): the failures that say a
 * deployment is unwell. ap_breaker_record()'s success is its negation for a finished call.
 */
AP_API bool ap_retry_transient(const ap_retry_policy *p, ap_status rc, long http_status);

/*
 * The wait before attempt + 1, in ms, after attempt (1-based) failed. When retry_after_ms (the
 * value of a retry-after-ms header: milliseconds, a fraction allowed) or retry_after (a
 * Retry-After header: whole seconds or an HTTP-date) parses, that wait, retry_after_ms first,
 * at most retry_after_cap_ms; a date in the past is 0. Otherwise full jitter: uniform in
 * [0, min(cap_ms, base_ms * 2^(attempt-1))], drawn from *rng_state (see ap_retry_rand();
 * NULL: the midpoint, no jitter). now_unix_ms is the wall clock, used only for a date.
 * Both headers may be NULL; values that do not parse are ignored. Never negative.
 */
AP_API long ap_retry_delay_ms(const ap_retry_policy *p, int attempt, const char *retry_after,
                              const char *retry_after_ms, int64_t now_unix_ms, uint64_t *rng_state);

/*
 * Parse the upstream's wait alone (the same rules as ap_retry_delay_ms(), uncapped): true and
 * *out_ms when retry_after_ms or retry_after says something; false when neither parses.
 * Accepted dates: IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), RFC 850
 * ("Sunday, 06-Nov-94 08:49:37 GMT") and asctime ("Sun Nov  6 08:49:37 1994").
 */
AP_API bool ap_retry_after_parse(const char *retry_after, const char *retry_after_ms,
                                 int64_t now_unix_ms, long *out_ms);

/*
 * How long the next attempt may run, elapsed_ms into the request: the least of
 * provider_timeout_ms (> 0), attempt_timeout_ms (when set) and what is left of deadline_ms
 * (when set). 0 when the deadline has passed: do not start it.
 */
AP_API long ap_retry_attempt_timeout_ms(const ap_retry_policy *p, long elapsed_ms,
                                        long provider_timeout_ms);

/*
 * Whether waiting delay_ms, elapsed_ms into the request, still leaves time before the
 * deadline to try again. When it does not, give up on this step at once (fall through to the
 * next) rather than sleep into the deadline. Always true without a deadline.
 */
AP_API bool ap_retry_fits_deadline(const ap_retry_policy *p, long elapsed_ms, long delay_ms);

/*
 * The next number of a small seeded PRNG (splitmix64) at *state. Any seed works, 0 included;
 * give each request its own (its id's hash, the clock) so retries spread out.
 */
AP_API uint64_t ap_retry_rand(uint64_t *state);

/*
 * A short, bounded label for why an attempt failed, for aperture_retries_total{reason}:
 * "timeout", "connect_error", "http_429", "http_5xx", "http_4xx" or "other". Never NULL.
 */
AP_API const char *ap_retry_reason(ap_status rc, long http_status);

/* ---- fallbacks ------------------------------------------------------------------------------ */

/* Why a request left a chain step for the next one (aperture_fallbacks_total{reason}). */
typedef enum ap_fallback_reason {
    AP_FALLBACK_ERROR = 0,          /* failed after its retries */
    AP_FALLBACK_BREAKER_OPEN = 1,   /* skipped: its breaker is open */
    AP_FALLBACK_REFUSAL = 2,        /* the model refused */
    AP_FALLBACK_INVALID_OUTPUT = 3, /* not parsable where JSON was required */
    AP_FALLBACK_FAILED_CHECKS = 4,  /* a result failing the task's checks (required fields null) */
    AP_FALLBACK_DEADLINE = 5,       /* the request's deadline left no time for it */
} ap_fallback_reason;

/* "error", "breaker_open", "refusal", "invalid_output", "failed_checks", "deadline";
 * "unknown" otherwise. */
AP_API const char *ap_fallback_reason_name(ap_fallback_reason r);

/* ---- circuit breakers ----------------------------------------------------------------------- */

/* The values are those of the metric aperture_breaker_state{deployment}. */
typedef enum ap_breaker_state {
    AP_BREAKER_CLOSED = 0,
    AP_BREAKER_OPEN = 1,
    AP_BREAKER_HALF_OPEN = 2,
} ap_breaker_state;

/* Deployments one set tracks; past this, new names are let through untracked. */
#define AP_BREAKER_MAX_DEPLOYMENTS 4096
/* Longest deployment name tracked, in bytes; longer names are let through untracked. */
#define AP_BREAKER_MAX_NAME 512

typedef struct ap_breaker_opts {
    int consecutive_failures; /* open after this many failures in a row; 0 = rule off; 5 */
    double error_rate;        /* open at this failure share of the window, 0..1; 0 = off; 0.5 */
    long window_ms;           /* the error-rate window, >= 1; 60000 */
    int min_requests;         /* results the window needs before the rate counts, >= 1; 20 */
    long cooldown_ms;         /* how long OPEN lasts, >= 1; 30000 */
    int half_open_probes;     /* probes let through while HALF_OPEN, >= 1; 1 */
    /*
     * Called on every state change (may be NULL), after the set's lock is released, so it may
     * call back into the set; two changes on different threads may arrive out of order (read
     * ap_breaker_state() for the latest). deployment is borrowed for the set's lifetime.
     */
    void (*on_change)(void *ctx, const char *deployment, ap_breaker_state from, ap_breaker_state to,
                      int64_t now_ms);
    void *on_change_ctx;
} ap_breaker_opts;

/* Fill o with the defaults above (no callback). */
AP_API void ap_breaker_opts_init(ap_breaker_opts *o);

typedef struct ap_breaker_set ap_breaker_set;

/*
 * A set of breakers, one per deployment name, made on first use. opts is copied; NULL = the
 * defaults. AP_EINVAL when a field is out of its range (the message names it). *out is
 * (transfer full): ap_breaker_set_free().
 */
AP_API AP_NODISCARD ap_status ap_breaker_set_new(const ap_breaker_opts *opts, ap_breaker_set **out,
                                                 ap_error *err);

/* Free the set. NULL is a no-op. No other thread may be using it. */
AP_API void ap_breaker_set_free(ap_breaker_set *set);

/*
 * May a request go to deployment now? true when CLOSED; false while OPEN; an OPEN breaker
 * whose cooldown has passed turns HALF_OPEN here, and HALF_OPEN lets exactly
 * half_open_probes callers through with *is_probe (may be NULL) set true, everyone else false.
 * *is_probe is false in every other case. Every allowed request must be followed by one
 * ap_breaker_record() with the same was_probe. now_ms is monotonic.
 */
AP_API bool ap_breaker_allow(ap_breaker_set *set, const char *deployment, int64_t now_ms,
                             bool *is_probe);

/*
 * Record how a request to deployment ended. success false only for what says the deployment
 * is unhealthy (ap_retry_transient(): timeouts, connection errors, 429, 5xx), not for a 400 the
 * request itself caused, nor when the client left first (record nothing: a probe slot is handed
 * out again after a cooldown). was_probe: what ap_breaker_allow() said.
 */
AP_API void ap_breaker_record(ap_breaker_set *set, const char *deployment, int64_t now_ms,
                              bool success, bool was_probe);

/* The deployment's state; CLOSED for one never seen. */
AP_API ap_breaker_state ap_breaker_state_get(ap_breaker_set *set, const char *deployment);

/*
 * How long until ap_breaker_allow() could say yes, in ms: 0 when it would now; while OPEN the
 * rest of the cooldown; while HALF_OPEN with every probe out, until a new round would be
 * handed out. For the Retry-After of a 503 when no step of a chain is healthy.
 */
AP_API long ap_breaker_wait_ms(ap_breaker_set *set, const char *deployment, int64_t now_ms);

/* One deployment, for /metrics and GET /v1/admin/breakers. */
typedef struct ap_breaker_info {
    const char *deployment; /* borrowed: valid until ap_breaker_set_free() */
    ap_breaker_state state;
    int consecutive_failures; /* failures in a row (CLOSED) */
    uint32_t window_requests; /* results in the error-rate window, as of the last record */
    uint32_t window_failures;
    int64_t opened_at_ms; /* when it last opened (when times_opened > 0) */
    int64_t probe_at_ms;  /* OPEN: when probes may start */
    uint64_t times_opened;
} ap_breaker_info;

/*
 * Call fn once for every deployment seen, in no particular order, from a snapshot taken under
 * the lock (fn runs without it and may call back into the set).
 */
AP_API void ap_breaker_foreach(ap_breaker_set *set,
                               void (*fn)(const ap_breaker_info *info, void *ctx), void *ctx);

/* "closed", "open", "half_open"; "unknown" otherwise. */
AP_API const char *ap_breaker_state_name(ap_breaker_state s);

/*
 * Apply a state decided elsewhere (another gateway, through ap_breaker_sync): OPEN until
 * probe_at_ms (this process's monotonic clock; the cooldown as the other side counted it), or
 * CLOSED (counters reset). HALF_OPEN is not forced (each instance probes for itself once the
 * cooldown ends). on_change is NOT called for a forced change, so a sync never echoes what it
 * received. A deployment never seen is created. Forcing OPEN on an OPEN breaker moves
 * probe_at_ms to the later of the two.
 */
AP_API void ap_breaker_force(ap_breaker_set *set, const char *deployment, ap_breaker_state state,
                             int64_t now_ms, int64_t probe_at_ms);

/* ---- sharing breaker state between gateways (Redis) ---------------------------------------- */

typedef struct ap_breaker_sync ap_breaker_sync;

/*
 * Share set's transitions with every other gateway using the Redis at url
 * ("redis://host:port[/db]"): a transition here is published (ap_breaker_sync_publish(), to
 * be called from the set's on_change) and one there is applied here with ap_breaker_force().
 * The current open breakers are also kept in a Redis hash (field = deployment, value = the
 * wall-clock ms the cooldown ends), read at start, so a gateway started during an outage
 * skips the broken deployment from its first request. Wall-clock times go over the wire and
 * are turned into local monotonic ones on arrival (clock skew between hosts shifts a cooldown
 * by the skew, no more). prefix namespaces the keys and channel (NULL: "ap:brk"). instance
 * names this gateway so it ignores its own messages (NULL: random).
 *
 * Runs one thread (SUBSCRIBE plus reconnects). Redis down: start still succeeds, the sync
 * reconnects in the background (at most every 500 ms) and re-reads the hash; meanwhile each
 * gateway's breakers work alone. publish never blocks the caller on I/O: transitions are
 * queued (bounded; the oldest dropped) and sent by the thread.
 * set is borrowed for the sync's lifetime: stop the sync before ap_breaker_set_free().
 * *out is (transfer full): ap_breaker_sync_stop().
 */
AP_API AP_NODISCARD ap_status ap_breaker_sync_start(ap_breaker_set *set, const char *url,
                                                    const char *prefix, const char *instance,
                                                    ap_breaker_sync **out, ap_error *err);

/* Queue a local transition for the others. cooldown_ends_unix_ms: for OPEN, when this gateway
 * will let probes through, as wall-clock ms; ignored otherwise. Safe from any thread. */
AP_API void ap_breaker_sync_publish(ap_breaker_sync *sync, const char *deployment,
                                    ap_breaker_state to, int64_t cooldown_ends_unix_ms);

/* Whether the sync is connected to Redis now (for /metrics and the admin endpoint). */
AP_API bool ap_breaker_sync_connected(ap_breaker_sync *sync);

/* Stop the thread and free. NULL is a no-op. */
AP_API void ap_breaker_sync_stop(ap_breaker_sync *sync);

#ifdef __cplusplus
}
#endif
#endif
