/*
 * limiter.c - per-provider concurrency and rate limits with a bounded FIFO wait queue.
 * include/aperture/limiter.h is the contract; docs/internals/limiter.md says why it is built
 * this way.
 *
 * Layout: one mutex guards everything. Keys live in an open-addressing hash table (linear
 * probing, FNV-1a, power-of-two capacity, at most half full) of pointers to records that are
 * never moved or removed, so a key's name pointer stays valid until ap_limiter_free() (the
 * foreach snapshot relies on it). At most AP__LIMITER_MAX_KEYS keys are tracked; acquires under
 * any further key are granted untracked, so memory stays bounded whatever names callers pass.
 *
 * Buckets: each limit per minute is a token bucket of capacity one minute's budget, refilled
 * continuously at budget/60000 per ms. Levels are brought up to date lazily (refill()) whenever
 * a key is looked at, from the time of its last refill. A request needs min(cost, capacity) in
 * the bucket and takes its whole cost, so a cost larger than the capacity runs once the bucket
 * is full and leaves it negative; the debt is repaid by the refill before anyone else fits.
 *
 * Queue: each key keeps its waiters in a singly linked FIFO. A new request never overtakes a
 * waiter: it is granted at once only when the queue is empty. Keys with waiters are chained on
 * lim->active, so a pass of the thread only looks at keys that have work.
 *
 * The thread: wakes when signalled (a release, a new waiter, changed limits) or at the
 * earliest time a pass has work (a waiter's deadline, or the refill that lets a queue head
 * fit); each pass grants the heads that fit in FIFO order, times out expired waiters, and then
 * runs the collected callbacks after dropping the lock, so a callback may call back in.
 * Outcomes decided outside the thread (waiters cut off by a lowered queue_max) wait on
 * lim->done for the next pass, because the contract says callbacks run on the thread.
 * A waiter is unlinked from its queue under the lock before its callback is collected, which is
 * what makes "exactly once" hold.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "aperture/limiter.h"
#include "core/core.h"
#include "resilience/limiter_int.h"

#define MS_PER_MIN 60000.0
/* The longest the thread sleeps without a signal: bounds the effect of any odd deadline. */
#define MAX_SLEEP_MS 3600000.0
/* The longest retry hint handed out (an hour). */
#define MAX_RETRY_MS 3600000.0
/* The in-flight hint when no call has ended yet under the key. */
#define DEFAULT_HINT_MS 1000.0

struct waiter {
    struct waiter *next;
    ap_limiter_cb cb;
    void *ctx;
    double tokens;
    double deadline; /* ms on the limiter's clock */
    ap_status rc;    /* once off the queue: the outcome to report */
};

/* A list of decided waiters, in the order their callbacks should run. */
struct wlist {
    struct waiter *head, *tail;
};

struct lkey {
    char *name;
    uint64_t hash;
    ap_limit_opts o;
    int in_flight;
    double rpm_level, tpm_level; /* what is in the buckets; may be negative after a big cost */
    double refilled_at;          /* the levels are as of this time */
    struct waiter *head, *tail;  /* the FIFO */
    size_t depth;
    double min_deadline; /* no waiter's deadline is earlier (may be earlier than all: a hint) */
    double last_release; /* for the in-flight retry hint; < 0 = no release yet */
    double gap_ms;       /* moving average of the time between releases; < 0 = unknown */
    bool active;         /* chained on lim->active */
    struct lkey *next_active;
};

struct ap_limiter {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* on CLOCK_MONOTONIC; the thread sleeps on it */
    pthread_t thread;
    bool threaded; /* false: a manual limiter (limiter_int.h) */
    bool stopping;
    bool closed; /* shut(): the thread is gone, nothing is granted any more */
    struct lkey **slot;
    size_t cap, n;
    struct lkey *active; /* keys with waiters */
    struct wlist done;   /* decided outside the thread, reported by the next pass */
};

/* ---- small helpers --------------------------------------------------------------------------- */

static void wl_append(struct wlist *l, struct waiter *w)
{
    w->next = NULL;
    if (l->tail != NULL)
        l->tail->next = w;
    else
        l->head = w;
    l->tail = w;
}

/* Run each callback once, in order, and free the waiters. Called without the lock. */
static size_t call_all(struct waiter *w)
{
    size_t n = 0;
    while (w != NULL) {
        struct waiter *next = w->next;
        w->cb(w->ctx, w->rc);
        free(w);
        w = next;
        n++;
    }
    return n;
}

static bool opts_valid(const ap_limit_opts *o)
{
    /* !(x >= 0) also refuses NaN. */
    if (o->max_in_flight < 0 || o->queue_max < 0 || o->queue_timeout_ms < 0)
        return false;
    if (!(o->rpm >= 0) || !isfinite(o->rpm) || !(o->tpm >= 0) || !isfinite(o->tpm))
        return false;
    /* A queue needs a deadline, or a waiter could wait forever. */
    return o->queue_max == 0 || o->queue_timeout_ms > 0;
}

static bool opts_equal(const ap_limit_opts *a, const ap_limit_opts *b)
{
    return a->max_in_flight == b->max_in_flight && a->rpm == b->rpm && a->tpm == b->tpm &&
           a->queue_max == b->queue_max && a->queue_timeout_ms == b->queue_timeout_ms;
}

static bool unlimited(const ap_limit_opts *o)
{
    return o->max_in_flight == 0 && o->rpm == 0 && o->tpm == 0;
}

/* ---- the buckets (lock held) ----------------------------------------------------------------- */

static void refill(struct lkey *k, double now)
{
    /* A clock that went back (only possible with the _at calls) refills nothing. */
    if (!(now > k->refilled_at))
        return;
    double dt = now - k->refilled_at;
    if (k->o.rpm > 0)
        k->rpm_level = AP_MIN(k->o.rpm, k->rpm_level + dt * k->o.rpm / MS_PER_MIN);
    if (k->o.tpm > 0)
        k->tpm_level = AP_MIN(k->o.tpm, k->tpm_level + dt * k->o.tpm / MS_PER_MIN);
    k->refilled_at = now;
}

/*
 * Whether a bucket of capacity cap holding level admits a cost: it must hold the cost, or be
 * full when the cost exceeds the capacity. The slack absorbs rounding in the refill sums, so a
 * bucket the refill arithmetic says is "0.9999999999 of 1" full does not wait another tick.
 */
static bool bucket_fits(double level, double cap, double cost)
{
    return level >= AP_MIN(cost, cap) - 1e-9 * AP_MAX(cap, 1.0);
}

/* Milliseconds until a bucket refilled at cap per minute admits cost; 0 when it does now. */
static double bucket_wait(double level, double cap, double cost)
{
    if (bucket_fits(level, cap, cost))
        return 0;
    return (AP_MIN(cost, cap) - level) / (cap / MS_PER_MIN);
}

/* Whether a request of tokens may start now under every limit of k. */
static bool fits(const struct lkey *k, double tokens)
{
    if (k->o.max_in_flight > 0 && k->in_flight >= k->o.max_in_flight)
        return false;
    if (k->o.rpm > 0 && !bucket_fits(k->rpm_level, k->o.rpm, 1))
        return false;
    if (k->o.tpm > 0 && !bucket_fits(k->tpm_level, k->o.tpm, tokens))
        return false;
    return true;
}

/* Milliseconds until both buckets admit a request of tokens (in-flight aside). */
static double buckets_wait(const struct lkey *k, double tokens)
{
    double w = 0;
    if (k->o.rpm > 0)
        w = AP_MAX(w, bucket_wait(k->rpm_level, k->o.rpm, 1));
    if (k->o.tpm > 0)
        w = AP_MAX(w, bucket_wait(k->tpm_level, k->o.tpm, tokens));
    return w;
}

static void take(struct lkey *k, double tokens)
{
    if (k->in_flight < INT32_MAX)
        k->in_flight++;
    if (k->o.rpm > 0)
        k->rpm_level -= 1;
    if (k->o.tpm > 0)
        k->tpm_level -= tokens;
}

/* ---- the table (lock held) ------------------------------------------------------------------- */

static void grow(ap_limiter *lim)
{
    size_t cap = lim->cap * 2;
    struct lkey **slot = ap__xcalloc(cap, sizeof(*slot));
    for (size_t i = 0; i < lim->cap; i++) {
        struct lkey *k = lim->slot[i];
        if (k == NULL)
            continue;
        size_t j = (size_t)k->hash & (cap - 1);
        while (slot[j] != NULL)
            j = (j + 1) & (cap - 1);
        slot[j] = k;
    }
    free(lim->slot);
    lim->slot = slot;
    lim->cap = cap;
}

/*
 * The record for key; with create, made (no limits yet, buckets as of now) when missing. NULL
 * when missing and not created, and for keys that are not tracked (too long, the table full).
 */
static struct lkey *lookup(ap_limiter *lim, const char *key, bool create, double now)
{
    size_t len = strnlen(key, AP__LIMITER_MAX_KEY_LEN + 1);
    if (len > AP__LIMITER_MAX_KEY_LEN)
        return NULL;
    uint64_t h = ap__fnv1a(key, len);
    size_t i = (size_t)h & (lim->cap - 1);
    for (; lim->slot[i] != NULL; i = (i + 1) & (lim->cap - 1)) {
        struct lkey *k = lim->slot[i];
        if (k->hash == h && strcmp(k->name, key) == 0)
            return k;
    }
    if (!create || lim->n >= AP__LIMITER_MAX_KEYS)
        return NULL;
    struct lkey *k = ap__xcalloc(1, sizeof(*k));
    k->name = ap__xmalloc(len + 1);
    memcpy(k->name, key, len + 1);
    k->hash = h;
    k->refilled_at = now;
    k->min_deadline = INFINITY;
    k->last_release = -1;
    k->gap_ms = -1;
    lim->slot[i] = k;
    lim->n++;
    if (lim->n * 2 > lim->cap)
        grow(lim);
    return k;
}

/* Grant the queue heads that fit now, in order, onto out (buckets refilled by the caller). */
static void grant_heads(struct lkey *k, struct wlist *out)
{
    while (k->head != NULL && fits(k, k->head->tokens)) {
        struct waiter *w = k->head;
        k->head = w->next;
        if (k->head == NULL)
            k->tail = NULL;
        k->depth--;
        take(k, w->tokens);
        w->rc = AP_OK;
        wl_append(out, w);
    }
}

static void kick(ap_limiter *lim)
{
    if (lim->threaded)
        pthread_cond_signal(&lim->cv);
}

/*
 * Adopt new limits for k, keeping its counts. A bucket that was off starts full (as a new key's
 * would); one whose size changes keeps its level, cut to the new capacity. Waiters that fit
 * under raised limits are granted first (so removing every limit grants them all rather than
 * refusing them for the queue of 0 that goes with it); then waiters beyond a lowered queue_max
 * (the newest) are refused with AP_ERATELIMIT. Both are reported at the thread's next pass.
 */
static void set_opts(ap_limiter *lim, struct lkey *k, const ap_limit_opts *o, double now)
{
    refill(k, now); /* at the old rates up to now */
    if (o->rpm != k->o.rpm)
        k->rpm_level = k->o.rpm > 0 ? AP_MIN(k->rpm_level, o->rpm) : o->rpm;
    if (o->tpm != k->o.tpm)
        k->tpm_level = k->o.tpm > 0 ? AP_MIN(k->tpm_level, o->tpm) : o->tpm;
    k->refilled_at = AP_MAX(k->refilled_at, now);
    k->o = *o;

    grant_heads(k, &lim->done);
    if (k->depth > (size_t)o->queue_max) {
        struct waiter **pp = &k->head, *last = NULL;
        for (int i = 0; i < o->queue_max; i++) {
            last = *pp;
            pp = &last->next;
        }
        struct waiter *cut = *pp;
        *pp = NULL;
        k->tail = last;
        k->depth = (size_t)o->queue_max;
        while (cut != NULL) {
            struct waiter *next = cut->next;
            cut->rc = AP_ERATELIMIT;
            wl_append(&lim->done, cut);
            cut = next;
        }
    }
    /* The outcomes above must be reported, and the new limits may change the next wake. */
    if (k->head != NULL || lim->done.head != NULL)
        kick(lim);
}

/* ---- a pass of the thread (lock held) -------------------------------------------------------- */

/*
 * Decide what can be decided for k at now: grant the heads that fit, in order, then time out
 * the waiters whose deadline has passed (a waiter that can start is granted even if the thread
 * came late). Returns when k next needs a pass without a signal (INFINITY: never).
 */
static double pass_key(struct lkey *k, double now, struct wlist *out)
{
    refill(k, now);
    grant_heads(k, out);
    /* min_deadline is a lower bound; walk the queue only when it says something may expire. */
    if (now >= k->min_deadline) {
        struct waiter **pp = &k->head, *last = NULL;
        double md = INFINITY;
        while (*pp != NULL) {
            struct waiter *w = *pp;
            if (w->deadline <= now) {
                *pp = w->next;
                k->depth--;
                w->rc = AP_ETIMEOUT;
                wl_append(out, w);
            } else {
                md = AP_MIN(md, w->deadline);
                last = w;
                pp = &w->next;
            }
        }
        k->tail = last;
        k->min_deadline = md;
    }
    if (k->head == NULL) {
        k->min_deadline = INFINITY;
        return INFINITY;
    }
    double next = k->min_deadline;
    /* Bound by in-flight: only a release helps, and a release signals. */
    if (k->o.max_in_flight == 0 || k->in_flight < k->o.max_in_flight) {
        double w = buckets_wait(k, k->head->tokens);
        /* Whole milliseconds, at least one: never a busy loop on a rounding residue. */
        next = AP_MIN(next, now + AP_MAX(ceil(w - 1e-6), 1.0));
    }
    return next;
}

/* One pass over the keys with waiters; returns when the next one is due (INFINITY: none). */
static double pass(ap_limiter *lim, double now, struct wlist *out)
{
    *out = lim->done;
    lim->done = (struct wlist){0};
    double next = INFINITY;
    struct lkey **pp = &lim->active;
    while (*pp != NULL) {
        struct lkey *k = *pp;
        next = AP_MIN(next, pass_key(k, now, out));
        if (k->head == NULL) {
            *pp = k->next_active;
            k->next_active = NULL;
            k->active = false;
        } else {
            pp = &k->next_active;
        }
    }
    return next;
}

/* Take every waiter off every queue with AP_ERATELIMIT (the limiter is being freed). */
static void drain(ap_limiter *lim, struct wlist *out)
{
    *out = lim->done;
    lim->done = (struct wlist){0};
    for (struct lkey *k = lim->active; k != NULL;) {
        struct lkey *next = k->next_active;
        while (k->head != NULL) {
            struct waiter *w = k->head;
            k->head = w->next;
            w->rc = AP_ERATELIMIT;
            wl_append(out, w);
        }
        k->tail = NULL;
        k->depth = 0;
        k->active = false;
        k->next_active = NULL;
        k = next;
    }
    lim->active = NULL;
}

static struct timespec abs_time(double ms)
{
    struct timespec ts;
    double s = floor(ms / 1000.0);
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((ms - s * 1000.0) * 1e6);
    if (ts.tv_nsec < 0)
        ts.tv_nsec = 0;
    if (ts.tv_nsec > 999999999L)
        ts.tv_nsec = 999999999L;
    return ts;
}

static void *run(void *arg)
{
    ap_limiter *lim = arg;
    struct wlist out;
    pthread_mutex_lock(&lim->mu);
    while (!lim->stopping) {
        double now = ap__now_ms();
        double next = pass(lim, now, &out);
        if (out.head != NULL) {
            /* The callbacks may call in, and take time: run them unlocked, then look again. */
            pthread_mutex_unlock(&lim->mu);
            call_all(out.head);
            pthread_mutex_lock(&lim->mu);
            continue;
        }
        /* Every change happens under the lock and signals, so none is missed between the pass
         * and the wait. A spurious or early wakeup costs one pass. */
        struct timespec ts = abs_time(AP_MIN(next, now + MAX_SLEEP_MS));
        pthread_cond_timedwait(&lim->cv, &lim->mu, &ts);
    }
    drain(lim, &out);
    pthread_mutex_unlock(&lim->mu);
    /* A callback calling acquire now is refused at once (stopping), so nothing new queues. */
    call_all(out.head);
    return NULL;
}

/* ---- life ------------------------------------------------------------------------------------ */

static ap_status make(ap_limiter **out, bool threaded, ap_error *err)
{
    ap_limiter *lim = ap__xcalloc(1, sizeof(*lim));
    pthread_condattr_t ca;
    bool mu_ok = false, cv_ok = false;
    ap_status rc = AP_OK;

    if (pthread_mutex_init(&lim->mu, NULL) != 0) {
        rc = ap_error_set(err, AP_ENOMEM, "limiter: cannot create a mutex");
        goto out;
    }
    mu_ok = true;
    if (pthread_condattr_init(&ca) != 0) {
        rc = ap_error_set(err, AP_ENOMEM, "limiter: cannot create a condition variable");
        goto out;
    }
    /* Deadlines are on CLOCK_MONOTONIC: a wall-clock step must not stretch or cut a wait. */
    int e = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (e == 0)
        e = pthread_cond_init(&lim->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (e != 0) {
        rc = ap_error_set(err, AP_ENOMEM, "limiter: cannot create a condition variable");
        goto out;
    }
    cv_ok = true;
    lim->cap = 16;
    lim->slot = ap__xcalloc(lim->cap, sizeof(*lim->slot));
    lim->threaded = threaded;
    if (threaded && (e = pthread_create(&lim->thread, NULL, run, lim)) != 0) {
        rc = ap_error_set(err, e == EAGAIN ? AP_ENOMEM : AP_EINTERNAL,
                          "limiter: cannot start its thread (%s)", strerror(e));
        goto out;
    }
    *out = lim;
    lim = NULL;
out:
    if (lim != NULL) {
        if (cv_ok)
            pthread_cond_destroy(&lim->cv);
        if (mu_ok)
            pthread_mutex_destroy(&lim->mu);
        free(lim->slot);
        free(lim);
    }
    return rc;
}

ap_status ap_limiter_new(ap_limiter **out, ap_error *err)
{
    if (AP_NEVER(out == NULL))
        return ap_error_set(err, AP_EINVAL, "limiter: out is NULL");
    return make(out, true, err);
}

ap_status ap__limiter_new_manual(ap_limiter **out, ap_error *err)
{
    if (AP_NEVER(out == NULL))
        return ap_error_set(err, AP_EINVAL, "limiter: out is NULL");
    return make(out, false, err);
}

/* Stop granting: answer every waiter with AP_ERATELIMIT (on the thread's way out, or here for a
 * manual limiter) and refuse every later acquire. Idempotent. */
static void shut(ap_limiter *lim)
{
    pthread_mutex_lock(&lim->mu);
    if (lim->closed) {
        pthread_mutex_unlock(&lim->mu);
        return;
    }
    lim->closed = true;
    lim->stopping = true;
    if (lim->threaded) {
        /* From a callback this would join its own thread: a misuse the header rules out. */
        AP_ASSERT(!pthread_equal(pthread_self(), lim->thread));
        /* The thread answers every waiter with AP_ERATELIMIT on its way out. */
        pthread_cond_signal(&lim->cv);
        pthread_mutex_unlock(&lim->mu);
        pthread_join(lim->thread, NULL);
    } else {
        struct wlist out;
        drain(lim, &out);
        pthread_mutex_unlock(&lim->mu);
        call_all(out.head);
    }
}

void ap_limiter_close(ap_limiter *lim)
{
    if (lim != NULL)
        shut(lim);
}

void ap_limiter_free(ap_limiter *lim)
{
    if (lim == NULL)
        return;
    shut(lim);
    for (size_t i = 0; i < lim->cap; i++) {
        struct lkey *k = lim->slot[i];
        if (k == NULL)
            continue;
        AP_ASSERT(k->head == NULL);
        free(k->name);
        free(k);
    }
    free(lim->slot);
    pthread_cond_destroy(&lim->cv);
    pthread_mutex_destroy(&lim->mu);
    free(lim);
}

/* ---- the verbs ------------------------------------------------------------------------------- */

/*
 * The refusal hint for k, refused a request of tokens at now: when the queue will have room
 * (its head leaves: granted, or timed out at its deadline at the latest), or with no queue,
 * when this request would fit. A bucket's wait is exact given no other traffic; for in-flight
 * the next release is expected after about the recent time between releases (or the time since
 * the last one, when that is already longer), DEFAULT_HINT_MS when none has ended yet.
 */
static long retry_hint(const struct lkey *k, double tokens, double now)
{
    const struct waiter *h = k->head;
    double w = buckets_wait(k, h != NULL ? h->tokens : tokens);
    if (k->o.max_in_flight > 0 && k->in_flight >= k->o.max_in_flight) {
        double hint = DEFAULT_HINT_MS;
        if (k->gap_ms >= 0)
            hint = AP_MAX(k->gap_ms, now - k->last_release);
        w = AP_MAX(w, hint);
    }
    if (h != NULL)
        w = AP_MIN(w, h->deadline - now);
    w = ceil(w - 1e-6); /* a rounding residue is not another millisecond */
    return (long)AP_MAX(1.0, AP_MIN(w, MAX_RETRY_MS));
}

ap_status ap__limiter_acquire_at(ap_limiter *lim, const char *key, const ap_limit_opts *o,
                                 double tokens, ap_limiter_cb cb, void *ctx, long *retry_after_ms,
                                 double now_ms)
{
    if (lim == NULL || key == NULL || o == NULL || cb == NULL || !(tokens >= 0) ||
        !isfinite(tokens) || !opts_valid(o))
        return AP_EINVAL;

    ap_status rc;
    long hint = 1;
    pthread_mutex_lock(&lim->mu);
    if (lim->stopping) {
        /* A callback run by shut(), or anyone after ap_limiter_close(). */
        rc = AP_ERATELIMIT;
        goto out;
    }
    struct lkey *k = lookup(lim, key, true, now_ms);
    if (k == NULL) {
        rc = AP_OK; /* untracked: over the key cap, or an absurd name */
        goto out;
    }
    if (!opts_equal(&k->o, o))
        set_opts(lim, k, o, now_ms);
    refill(k, now_ms);
    /* No limits: always yes, even past waiters left from earlier limits (the thread grants
     * those at its next pass, set_opts() woke it). */
    if (unlimited(&k->o) || (k->head == NULL && fits(k, tokens))) {
        take(k, tokens);
        rc = AP_OK;
        goto out;
    }
    if (k->depth < (size_t)k->o.queue_max) {
        struct waiter *w = ap__xcalloc(1, sizeof(*w));
        w->cb = cb;
        w->ctx = ctx;
        w->tokens = tokens;
        w->deadline = now_ms + (double)k->o.queue_timeout_ms;
        if (k->tail != NULL)
            k->tail->next = w;
        else
            k->head = w;
        k->tail = w;
        k->depth++;
        k->min_deadline = AP_MIN(k->min_deadline, w->deadline);
        if (!k->active) {
            k->active = true;
            k->next_active = lim->active;
            lim->active = k;
        }
        kick(lim);
        rc = AP_EBUSY;
        goto out;
    }
    hint = retry_hint(k, tokens, now_ms);
    rc = AP_ERATELIMIT;
out:
    pthread_mutex_unlock(&lim->mu);
    if (rc == AP_ERATELIMIT && retry_after_ms != NULL)
        *retry_after_ms = hint;
    return rc;
}

ap_status ap_limiter_acquire(ap_limiter *lim, const char *key, const ap_limit_opts *o,
                             double tokens, ap_limiter_cb cb, void *ctx, long *retry_after_ms)
{
    return ap__limiter_acquire_at(lim, key, o, tokens, cb, ctx, retry_after_ms, ap__now_ms());
}

void ap__limiter_release_at(ap_limiter *lim, const char *key, double estimated_tokens,
                            double actual_tokens, double now_ms)
{
    if (AP_NEVER(lim == NULL) || key == NULL)
        return;
    pthread_mutex_lock(&lim->mu);
    struct lkey *k = lookup(lim, key, false, now_ms);
    if (k == NULL)
        goto out; /* granted untracked */
    if (AP_ALWAYS(k->in_flight > 0))
        k->in_flight--;
    if (k->last_release >= 0 && now_ms >= k->last_release) {
        double gap = now_ms - k->last_release;
        k->gap_ms = k->gap_ms < 0 ? gap : 0.8 * k->gap_ms + 0.2 * gap;
    }
    k->last_release = now_ms;
    if (k->o.tpm > 0 && actual_tokens >= 0 && isfinite(actual_tokens) &&
        isfinite(estimated_tokens)) {
        refill(k, now_ms);
        k->tpm_level = AP_MIN(k->o.tpm, k->tpm_level - (actual_tokens - estimated_tokens));
    }
    /* The grants themselves are the thread's: it runs their callbacks. */
    if (k->head != NULL)
        kick(lim);
out:
    pthread_mutex_unlock(&lim->mu);
}

void ap_limiter_release(ap_limiter *lim, const char *key, double estimated_tokens,
                        double actual_tokens)
{
    ap__limiter_release_at(lim, key, estimated_tokens, actual_tokens, ap__now_ms());
}

size_t ap__limiter_poll_at(ap_limiter *lim, double now_ms, double *next_ms)
{
    struct wlist out;
    pthread_mutex_lock(&lim->mu);
    double next = pass(lim, now_ms, &out);
    pthread_mutex_unlock(&lim->mu);
    if (next_ms != NULL)
        *next_ms = isinf(next) ? -1 : next;
    return call_all(out.head);
}

size_t ap_limiter_queue_depth(ap_limiter *lim, const char *key)
{
    if (AP_NEVER(lim == NULL) || key == NULL)
        return 0;
    pthread_mutex_lock(&lim->mu);
    const struct lkey *k = lookup(lim, key, false, 0);
    size_t n = k != NULL ? k->depth : 0;
    pthread_mutex_unlock(&lim->mu);
    return n;
}

int ap_limiter_in_flight(ap_limiter *lim, const char *key)
{
    if (AP_NEVER(lim == NULL) || key == NULL)
        return 0;
    pthread_mutex_lock(&lim->mu);
    const struct lkey *k = lookup(lim, key, false, 0);
    int n = k != NULL ? k->in_flight : 0;
    pthread_mutex_unlock(&lim->mu);
    return n;
}

struct snap {
    const char *key; /* the record's own name: valid until ap_limiter_free() */
    size_t queued;
    int in_flight;
};

void ap_limiter_foreach(ap_limiter *lim,
                        void (*fn)(const char *key, size_t queued, int in_flight, void *ctx),
                        void *ctx)
{
    if (AP_NEVER(lim == NULL || fn == NULL))
        return;
    pthread_mutex_lock(&lim->mu);
    size_t n = 0;
    struct snap *v = ap__xcalloc(lim->n ? lim->n : 1, sizeof(*v));
    for (size_t i = 0; i < lim->cap; i++) {
        const struct lkey *k = lim->slot[i];
        if (k != NULL)
            v[n++] = (struct snap){k->name, k->depth, k->in_flight};
    }
    pthread_mutex_unlock(&lim->mu);
    for (size_t i = 0; i < n; i++)
        fn(v[i].key, v[i].queued, v[i].in_flight, ctx);
    free(v);
}
