/*
 * test_limiter.c - the per-provider limiter: immediate grants, the FIFO queue and its
 * callbacks, refusals and their retry hints, queue timeouts, the rpm and tpm buckets, changed
 * limits, the key cap, ap_limiter_free() with waiters, and many threads at once.
 *
 * The bucket arithmetic and the queue's timing are checked on a manual limiter
 * (src/resilience/limiter_int.h): the time is passed in and the thread's pass is run by the
 * test, so every grant and timeout is checked at its exact millisecond. The real limiter, with
 * its thread and CLOCK_MONOTONIC, is checked for the same behaviours with generous waits; the
 * one real-time rate test asserts a hard upper bound (the rate can never be exceeded) and a
 * loose lower one.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aperture/limiter.h"
#include "resilience/limiter_int.h"

/* The longest a test waits for a callback that must come: long enough for a loaded machine. */
#define WAIT_MS 10000

/* ---- helpers --------------------------------------------------------------------------------- */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static ap_limit_opts opts(int max_in_flight, double rpm, double tpm, int queue_max,
                          long queue_timeout_ms)
{
    return (ap_limit_opts){.max_in_flight = max_in_flight,
                           .rpm = rpm,
                           .tpm = tpm,
                           .queue_max = queue_max,
                           .queue_timeout_ms = queue_timeout_ms};
}

/*
 * What callbacks did: a log of (id, rc) in call order, guarded so the limiter's thread and the
 * test can share it, with a condition variable to wait for a number of calls.
 */
#define LOG_MAX 4096
struct log {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t n;
    int id[LOG_MAX];
    ap_status rc[LOG_MAX];
};

/* A callback's ctx: which log, which request. */
struct tag {
    struct log *log;
    int id;
};

static void log_init(struct log *l)
{
    memset(l, 0, sizeof(*l));
    pthread_mutex_init(&l->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&l->cv, &ca);
    pthread_condattr_destroy(&ca);
}

static void log_release(struct log *l)
{
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
}

static void log_cb(void *ctx, ap_status rc)
{
    struct tag *t = ctx;
    struct log *l = t->log;
    pthread_mutex_lock(&l->mu);
    if (l->n < LOG_MAX) {
        l->id[l->n] = t->id;
        l->rc[l->n] = rc;
    }
    l->n++;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

static size_t log_count(struct log *l)
{
    pthread_mutex_lock(&l->mu);
    size_t n = l->n;
    pthread_mutex_unlock(&l->mu);
    return n;
}

/* Wait until the log holds at least n calls or WAIT_MS pass; the count. */
static size_t log_wait(struct log *l, size_t n)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += WAIT_MS / 1000;
    pthread_mutex_lock(&l->mu);
    while (l->n < n && pthread_cond_timedwait(&l->cv, &l->mu, &until) != ETIMEDOUT)
        ;
    size_t got = l->n;
    pthread_mutex_unlock(&l->mu);
    return got;
}

/* The number of calls with rc. */
static size_t log_count_rc(struct log *l, ap_status rc)
{
    size_t c = 0;
    pthread_mutex_lock(&l->mu);
    for (size_t i = 0; i < l->n && i < LOG_MAX; i++)
        c += l->rc[i] == rc;
    pthread_mutex_unlock(&l->mu);
    return c;
}

static void no_cb(void *ctx, ap_status rc)
{
    (void)rc;
    fail_msg("callback called for request %d, which was answered at once", *(int *)ctx);
}

static ap_limiter *manual(void)
{
    ap_limiter *lim = NULL;
    assert_int_equal(ap__limiter_new_manual(&lim, NULL), AP_OK);
    return lim;
}

static ap_limiter *threaded(void)
{
    ap_limiter *lim = NULL;
    ap_error err;
    assert_int_equal(ap_limiter_new(&lim, &err), AP_OK);
    return lim;
}

/* ---- immediate answers ----------------------------------------------------------------------- */

static void test_limiter__unlimited_always_grants(void **state)
{
    (void)state;
    ap_limiter *lim = threaded();
    ap_limit_opts o = opts(0, 0, 0, 0, 0);
    int id = 0;
    long retry = -7;
    for (int i = 0; i < 2000; i++)
        assert_int_equal(ap_limiter_acquire(lim, "p", &o, 1e9, no_cb, &id, &retry), AP_OK);
    assert_int_equal(retry, -7); /* untouched on success */
    assert_int_equal(ap_limiter_in_flight(lim, "p"), 2000);
    assert_int_equal(ap_limiter_queue_depth(lim, "p"), 0);
    for (int i = 0; i < 2000; i++)
        ap_limiter_release(lim, "p", 1e9, 5);
    assert_int_equal(ap_limiter_in_flight(lim, "p"), 0);
    /* A release too many does not go negative. */
    ap_limiter_release(lim, "p", 0, -1);
    assert_int_equal(ap_limiter_in_flight(lim, "p"), 0);
    ap_limiter_free(lim);
    ap_limiter_free(NULL);
}

static void test_limiter__bad_arguments(void **state)
{
    (void)state;
    ap_limiter *lim = manual();
    ap_limit_opts ok = opts(1, 10, 10, 1, 100);
    int id = 0;
    long retry = -7;
    assert_int_equal(ap_limiter_acquire(NULL, "p", &ok, 1, no_cb, &id, &retry), AP_EINVAL);
    assert_int_equal(ap_limiter_acquire(lim, NULL, &ok, 1, no_cb, &id, &retry), AP_EINVAL);
    assert_int_equal(ap_limiter_acquire(lim, "p", NULL, 1, no_cb, &id, &retry), AP_EINVAL);
    assert_int_equal(ap_limiter_acquire(lim, "p", &ok, 1, NULL, &id, &retry), AP_EINVAL);
    assert_int_equal(ap_limiter_acquire(lim, "p", &ok, -1, no_cb, &id, &retry), AP_EINVAL);
    assert_int_equal(ap_limiter_acquire(lim, "p", &ok, NAN, no_cb, &id, &retry), AP_EINVAL);
    ap_limit_opts bad[] = {
        opts(-1, 0, 0, 0, 0),   opts(0, -1, 0, 0, 0),       opts(0, 0, -5, 0, 0),
        opts(0, 0, 0, -1, 100), opts(0, 0, 0, 1, -1),       opts(0, 0, 0, 1, 0),
        opts(0, NAN, 0, 0, 0),  opts(0, 0, INFINITY, 0, 0),
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(ap_limiter_acquire(lim, "p", &bad[i], 1, no_cb, &id, &retry), AP_EINVAL);
    assert_int_equal(retry, -7);
    /* Nothing was tracked by the refusals. */
    assert_int_equal(ap_limiter_in_flight(lim, "p"), 0);
    assert_int_equal(ap_limiter_acquire(lim, "p", &ok, 1, no_cb, &id, &retry), AP_OK);
    assert_int_equal(ap_limiter_in_flight(lim, "p"), 1);
    ap_limiter_free(lim);
}

/* ---- the queue with the real thread ---------------------------------------------------------- */

static void test_limiter__third_queues_release_grants(void **state)
{
    (void)state;
    ap_limiter *lim = threaded();
    ap_limit_opts o = opts(2, 0, 0, 10, 60000);
    struct log log;
    log_init(&log);
    struct tag t = {&log, 3};
    int id = 0;
    assert_int_equal(ap_limiter_acquire(lim, "p", &o, 0, no_cb, &id, NULL), AP_OK);
    assert_int_equal(ap_limiter_acquire(lim, "p", &o, 0, no_cb, &id, NULL), AP_OK);
    assert_int_equal(ap_limiter_acquire(lim, "p", &o, 0, log_cb, &t, NULL), AP_EBUSY);
    assert_int_equal(ap_limiter_queue_depth(lim, "p"), 1);
    assert_int_equal(ap_limiter_in_flight(lim, "p"), 2);
    /* Nothing frees a slot: the waiter stays queued. */
    sleep_ms(50);
    assert_int_equal(log_count(&log), 0);

    ap_limiter_release(lim, "p", 0, -1);
    assert_int_equal(log_wait(&log, 1), 1);
    assert_int_equal(log.id[0], 3);
    assert_int_equal(log.rc[0], AP_OK);
    assert_int_equal(ap_limiter_queue_depth(lim, "p"), 0);
    assert_int_equal(ap_limiter_in_flight(lim, "p"), 2);
    ap_limiter_free(lim);
    assert_int_equal(log_count(&log), 1); /* and never again */
    log_release(&log);
}

/* A callback that gives its slot back and asks again, from the limiter's own thread. */
struct reenter {
    ap_limiter *lim;
    struct tag t; /* the inner waiter's ctx */
    atomic_int calls;
};

static void reenter_cb(void *ctx, ap_status rc)
{
    struct reenter *r = ctx;
    assert_int_equal(rc, AP_OK);
    ap_limit_opts o = opts(1, 0, 0, 10, 60000);
    ap_limiter_release(r->lim, "p", 0, -1);
    /* Nobody waits and a slot is free: granted at once, no callback. */
    int id = 9;
    assert_int_equal(ap_limiter_acquire(r->lim, "p", &o, 0, no_cb, &id, NULL), AP_OK);
    /* Now the slot is taken: this one queues, and its callback comes later. */
    assert_int_equal(ap_limiter_acquire(r->lim, "p", &o, 0, log_cb, &r->t, NULL), AP_EBUSY);
    /* Last, so the test acts only once all of the above happened. */
    atomic_fetch_add(&r->calls, 1);
}

static void test_limiter__callback_may_call_back_in(void **state)
{
    (void)state;
    ap_limiter *lim = threaded();
    ap_limit_opts o = opts(1, 0, 0, 10, 60000);
    struct log log;
    log_init(&log);
    struct reenter r = {lim, {&log, 9}, 0};
    int id = 0;
    assert_int_equal(ap_limiter_acquire(lim, "p", &o, 0, no_cb, &id, NULL), AP_OK);
    assert_int_equal(ap_limiter_acquire(lim, "p", &o, 0, reenter_cb, &r, NULL), AP_EBUSY);
    ap_limiter_release(lim, "p", 0, -1);
    /* The re-entrant acquire's waiter is granted when the callback's own grant is released. */
    for (double t0 = now_ms(); atomic_load(&r.calls) == 0 && now_ms() - t0 < WAIT_MS;)
        sleep_ms(2);
    assert_int_equal(atomic_load(&r.calls), 1);
    ap_limiter_release(lim, "p", 0, -1);
    assert_int_equal(log_wait(&log, 1), 1);
    assert_int_equal(log.id[0], 9);
    assert_int_equal(log.rc[0], AP_OK);
    ap_limiter_free(lim);
    assert_int_equal(atomic_load(&r.calls), 1);
    log_release(&log);
}

static void test_limiter__queue_timeout_real(void **state)
{
    (void)state;
    ap_limiter *lim = threaded();
    ap_limit_opts o = opts(1, 0, 0, 10, 50);
    struct log log;
    log_init(&log);
    struct tag t = {&log, 1};
    int id = 0;
    assert_int_equal(ap_limiter_acquire(lim, "p", &o, 0, no_cb, &id, NULL), AP_OK);
    double t0 = now_ms();
    assert_int_equal(ap_limiter_acquire(lim, "p", &o, 0, log_cb, &t, NULL), AP_EBUSY);
    assert_int_equal(log_wait(&log, 1), 1);
    /* Not before its deadline (the thread's clock is the same monotonic clock). */
    assert_true(now_ms() - t0 >= 49);
    assert_int_equal(log.rc[0], AP_ETIMEOUT);
    assert_int_equal(ap_limiter_queue_depth(lim, "p"), 0);
    assert_int_equal(ap_limiter_in_flight(lim, "p"), 1); /* a timeout takes no slot */
    ap_limiter_free(lim);
    assert_int_equal(log_count(&log), 1);
    log_release(&log);
}

static void test_limiter__free_calls_waiters(void **state)
{
    (void)state;
    struct log log;
    log_init(&log);
    struct tag t[3] = {{&log, 1}, {&log, 2}, {&log, 3}};
    int id = 0;
    ap_limit_opts o = opts(1, 0, 0, 5, 60000);
    for (int pass = 0; pass < 2; pass++) {
        /* Once with the thread (it answers on its way out), once manual (the caller does). */
        ap_limiter *lim = pass == 0 ? threaded() : manual();
        log.n = 0;
        assert_int_equal(ap_limiter_acquire(lim, "p", &o, 0, no_cb, &id, NULL), AP_OK);
        for (int i = 0; i < 3; i++)
            assert_int_equal(ap_limiter_acquire(lim, "p", &o, 0, log_cb, &t[i], NULL), AP_EBUSY);
        assert_int_equal(ap_limiter_queue_depth(lim, "p"), 3);
        ap_limiter_free(lim); /* returns after the callbacks ran */
        assert_int_equal(log_count(&log), 3);
        for (int i = 0; i < 3; i++) {
            assert_int_equal(log.id[i], i + 1);
            assert_int_equal(log.rc[i], AP_ERATELIMIT);
        }
    }
    log_release(&log);
}

/* close(): the waiters are answered, nothing is granted after, releases still work. */
static void test_limiter__close_refuses_then_free(void **state)
{
    (void)state;
    struct log log;
    log_init(&log);
    struct tag t[2] = {{&log, 1}, {&log, 2}};
    int id = 0;
    ap_limit_opts o = opts(1, 0, 0, 5, 60000);
    ap_limiter *lim = threaded();
    assert_int_equal(ap_limiter_acquire(lim, "p", &o, 0, no_cb, &id, NULL), AP_OK);
    for (int i = 0; i < 2; i++)
        assert_int_equal(ap_limiter_acquire(lim, "p", &o, 0, log_cb, &t[i], NULL), AP_EBUSY);
    ap_limiter_close(lim); /* returns after the callbacks ran */
    assert_int_equal(log_count(&log), 2);
    assert_int_equal(log.rc[0], AP_ERATELIMIT);
    assert_int_equal(log.rc[1], AP_ERATELIMIT);
    long ra = 0;
    assert_int_equal(ap_limiter_acquire(lim, "p", &o, 0, log_cb, &t[0], &ra), AP_ERATELIMIT);
    ap_limiter_release(lim, "p", 0, -1); /* the slot granted before close */
    assert_int_equal(ap_limiter_in_flight(lim, "p"), 0);
    ap_limiter_close(lim); /* idempotent */
    ap_limiter_free(lim);
    assert_int_equal(log_count(&log), 2); /* no callback for the refused acquire */
    log_release(&log);
}

/* ---- the queue, time passed in --------------------------------------------------------------- */

static void test_limiter__queue_timeout_exact(void **state)
{
    (void)state;
    ap_limiter *lim = manual();
    ap_limit_opts o = opts(1, 0, 0, 10, 500);
    struct log log;
    log_init(&log);
    struct tag a = {&log, 1}, b = {&log, 2};
    int id = 0;
    double next = 0;
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, no_cb, &id, NULL, 0), AP_OK);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, log_cb, &a, NULL, 0), AP_EBUSY);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, log_cb, &b, NULL, 200), AP_EBUSY);
    assert_int_equal(ap__limiter_poll_at(lim, 0, &next), 0);
    assert_true(next == 500);
    assert_int_equal(ap__limiter_poll_at(lim, 499, &next), 0);
    assert_int_equal(ap__limiter_poll_at(lim, 500, &next), 1);
    assert_int_equal(log.id[0], 1);
    assert_int_equal(log.rc[0], AP_ETIMEOUT);
    assert_true(next == 700);
    assert_int_equal(ap_limiter_queue_depth(lim, "p"), 1);
    /* A slot frees before the second deadline: granted, not timed out. */
    ap__limiter_release_at(lim, "p", 0, -1, 650);
    assert_int_equal(ap__limiter_poll_at(lim, 650, &next), 1);
    assert_int_equal(log.id[1], 2);
    assert_int_equal(log.rc[1], AP_OK);
    assert_true(next == -1); /* nothing waits */
    assert_int_equal(ap__limiter_poll_at(lim, 10000, &next), 0);
    ap_limiter_free(lim);
    assert_int_equal(log_count(&log), 2);
    log_release(&log);
}

static void test_limiter__fifo_order(void **state)
{
    (void)state;
    ap_limiter *lim = manual();
    ap_limit_opts o = opts(1, 0, 0, 10, 60000);
    struct log log;
    log_init(&log);
    struct tag t[6];
    int id = 0;
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, no_cb, &id, NULL, 0), AP_OK);
    for (int i = 0; i < 5; i++) {
        t[i] = (struct tag){&log, i + 1};
        assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, log_cb, &t[i], NULL, i), AP_EBUSY);
    }
    /* A slot is free but not yet handed to the head: a newcomer must not jump the queue. */
    ap__limiter_release_at(lim, "p", 0, -1, 10);
    t[5] = (struct tag){&log, 6};
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, log_cb, &t[5], NULL, 10), AP_EBUSY);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(ap__limiter_poll_at(lim, 10 + i, NULL), 1);
        assert_int_equal(ap__limiter_poll_at(lim, 10 + i, NULL), 0); /* one slot, one grant */
        ap__limiter_release_at(lim, "p", 0, -1, 10 + i);
    }
    assert_int_equal(log_count(&log), 6);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(log.id[i], i + 1);
        assert_int_equal(log.rc[i], AP_OK);
    }
    assert_int_equal(ap_limiter_in_flight(lim, "p"), 0);
    ap_limiter_free(lim);
    log_release(&log);
}

static void test_limiter__queue_full_refused_with_hint(void **state)
{
    (void)state;
    ap_limiter *lim = manual();
    struct log log;
    log_init(&log);
    struct tag t = {&log, 1};
    int id = 0;
    long retry = 0;

    /* max_in_flight, no queue, no release seen yet: the default hint. */
    ap_limit_opts o = opts(1, 0, 0, 0, 0);
    assert_int_equal(ap__limiter_acquire_at(lim, "a", &o, 0, no_cb, &id, &retry, 0), AP_OK);
    assert_int_equal(ap__limiter_acquire_at(lim, "a", &o, 0, no_cb, &id, &retry, 0), AP_ERATELIMIT);
    assert_int_equal(retry, 1000);
    /* Calls ending every 200 ms: the hint follows, and grows when releases stop coming. */
    for (int i = 1; i <= 3; i++) {
        ap__limiter_release_at(lim, "a", 0, -1, 200.0 * i);
        assert_int_equal(ap__limiter_acquire_at(lim, "a", &o, 0, no_cb, &id, &retry, 200.0 * i),
                         AP_OK);
    }
    assert_int_equal(ap__limiter_acquire_at(lim, "a", &o, 0, no_cb, &id, &retry, 650),
                     AP_ERATELIMIT);
    assert_int_equal(retry, 200);
    assert_int_equal(ap__limiter_acquire_at(lim, "a", &o, 0, no_cb, &id, &retry, 1600),
                     AP_ERATELIMIT);
    assert_int_equal(retry, 1000);

    /* A full queue: room appears when the head leaves, by its deadline at the latest. */
    o = opts(1, 0, 0, 1, 300);
    assert_int_equal(ap__limiter_acquire_at(lim, "b", &o, 0, no_cb, &id, &retry, 0), AP_OK);
    assert_int_equal(ap__limiter_acquire_at(lim, "b", &o, 0, log_cb, &t, &retry, 0), AP_EBUSY);
    retry = 0;
    assert_int_equal(ap__limiter_acquire_at(lim, "b", &o, 0, no_cb, &id, &retry, 100),
                     AP_ERATELIMIT);
    assert_int_equal(retry, 200);
    /* A late thread: the deadline passed but the waiter is still there. Never below 1. */
    assert_int_equal(ap__limiter_acquire_at(lim, "b", &o, 0, no_cb, &id, &retry, 900),
                     AP_ERATELIMIT);
    assert_int_equal(retry, 1);

    /* rpm 60, no queue: after the minute's budget, one more per second. */
    o = opts(0, 60, 0, 0, 0);
    for (int i = 0; i < 60; i++)
        assert_int_equal(ap__limiter_acquire_at(lim, "c", &o, 0, no_cb, &id, &retry, 0), AP_OK);
    assert_int_equal(ap__limiter_acquire_at(lim, "c", &o, 0, no_cb, &id, &retry, 0), AP_ERATELIMIT);
    assert_int_equal(retry, 1000);
    assert_int_equal(ap__limiter_acquire_at(lim, "c", &o, 0, no_cb, &id, &retry, 400),
                     AP_ERATELIMIT);
    assert_int_equal(retry, 600);
    /* NULL is fine for the hint. */
    assert_int_equal(ap__limiter_acquire_at(lim, "c", &o, 0, no_cb, &id, NULL, 400), AP_ERATELIMIT);
    assert_int_equal(ap__limiter_acquire_at(lim, "c", &o, 0, no_cb, &id, &retry, 1000), AP_OK);

    ap_limiter_free(lim);
    assert_int_equal(log_count(&log), 1);
    assert_int_equal(log.rc[0], AP_ERATELIMIT);
    log_release(&log);
}

/* ---- rpm ------------------------------------------------------------------------------------- */

static void test_limiter__rpm_burst_then_rate(void **state)
{
    (void)state;
    ap_limiter *lim = manual();
    ap_limit_opts o = opts(0, 600, 0, 0, 0);
    int id = 0;
    long retry;
    /* The bucket holds a minute's budget: a burst of 600 starts at once, the 601st does not. */
    for (int i = 0; i < 600; i++)
        assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, no_cb, &id, &retry, 0), AP_OK);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, no_cb, &id, &retry, 0), AP_ERATELIMIT);
    assert_int_equal(retry, 100);

    /* Then a request every millisecond for a minute: 10 per second get in, one every 100 ms. */
    int granted = 600, in_first_s = 0;
    for (int ms = 1; ms <= 60000; ms++) {
        ap_status rc = ap__limiter_acquire_at(lim, "p", &o, 0, no_cb, &id, &retry, ms);
        if (rc == AP_OK) {
            granted++;
            if (ms % 100 != 0)
                fail_msg("granted at %d ms, expected only on multiples of 100", ms);
            in_first_s += ms <= 1000;
        } else {
            assert_int_equal(rc, AP_ERATELIMIT);
            assert_true(retry >= 1 && retry <= 100);
        }
    }
    assert_int_equal(in_first_s, 10);
    /* Over 60 s: at most the burst (capacity) plus 60 s of refill, and no less. */
    assert_true(granted <= 600 + 600);
    assert_int_equal(granted, 1200);
    ap_limiter_free(lim);
}

static void test_limiter__rpm_queue_drains_at_rate(void **state)
{
    (void)state;
    ap_limiter *lim = manual();
    ap_limit_opts o = opts(0, 600, 0, 100, 60000);
    struct log log;
    log_init(&log);
    struct tag t[5];
    int id = 0;
    double next = 0;
    for (int i = 0; i < 600; i++)
        assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, no_cb, &id, NULL, 0), AP_OK);
    for (int i = 0; i < 5; i++) {
        t[i] = (struct tag){&log, i + 1};
        assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, log_cb, &t[i], NULL, 0), AP_EBUSY);
    }
    assert_int_equal(ap__limiter_poll_at(lim, 0, &next), 0);
    /* The thread would sleep exactly until the refill lets the head in. */
    for (int i = 1; i <= 5; i++) {
        assert_true(next == 100.0 * i);
        assert_int_equal(ap__limiter_poll_at(lim, 100.0 * i - 1, NULL), 0);
        assert_int_equal(ap__limiter_poll_at(lim, 100.0 * i, &next), 1);
        assert_int_equal(log.id[i - 1], i);
        assert_int_equal(log.rc[i - 1], AP_OK);
    }
    assert_true(next == -1);
    assert_int_equal(ap_limiter_in_flight(lim, "p"), 605);
    ap_limiter_free(lim);
    log_release(&log);
}

static void test_limiter__rpm_real_time(void **state)
{
    (void)state;
    ap_limiter *lim = threaded();
    /* 20 per second after a burst of 1200. */
    ap_limit_opts o = opts(0, 1200, 0, 100, 60000);
    struct log log;
    log_init(&log);
    enum { WAITERS = 60 };
    struct tag t[WAITERS];
    int id = 0;
    double t0 = now_ms();
    for (int i = 0; i < 1200; i++)
        assert_int_equal(ap_limiter_acquire(lim, "p", &o, 0, no_cb, &id, NULL), AP_OK);
    for (int i = 0; i < WAITERS; i++) {
        t[i] = (struct tag){&log, i};
        assert_int_equal(ap_limiter_acquire(lim, "p", &o, 0, log_cb, &t[i], NULL), AP_EBUSY);
    }
    sleep_ms(1000);
    size_t granted = log_count(&log);
    double elapsed = now_ms() - t0;
    /* Never faster than the rate (since before the bucket existed, plus one for rounding)... */
    if ((double)granted > elapsed * 20 / 1000 + 1)
        fail_msg("%zu granted in %.0f ms at 20/s", granted, elapsed);
    /* ...and, however loaded the machine, not stalled. */
    if (granted < 5)
        fail_msg("only %zu granted in %.0f ms at 20/s", granted, elapsed);
    ap_limiter_free(lim);
    /* Every waiter heard exactly once: granted, or refused by the free. */
    assert_int_equal(log_count(&log), WAITERS);
    assert_int_equal(log_count_rc(&log, AP_OK) + log_count_rc(&log, AP_ERATELIMIT), WAITERS);
    assert_true(log_count_rc(&log, AP_OK) >= granted);
    for (size_t i = 0; i < log_count_rc(&log, AP_OK); i++)
        assert_int_equal(log.id[i], (int)i); /* granted in FIFO order */
    log_release(&log);
}

/* ---- tpm ------------------------------------------------------------------------------------- */

static void test_limiter__tpm_debit_and_actual(void **state)
{
    (void)state;
    ap_limiter *lim = manual();
    /* 60,000 a minute: 1 token per ms. */
    ap_limit_opts o = opts(0, 0, 60000, 0, 0);
    int id = 0;
    long retry = 0;
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 50000, no_cb, &id, &retry, 0), AP_OK);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 10001, no_cb, &id, &retry, 0),
                     AP_ERATELIMIT);
    assert_int_equal(retry, 1);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 10000, no_cb, &id, &retry, 0), AP_OK);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 1, no_cb, &id, &retry, 0), AP_ERATELIMIT);
    assert_int_equal(retry, 1);

    /* The first call used 20,000, not 50,000: 30,000 come back. */
    ap__limiter_release_at(lim, "p", 50000, 20000, 0);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 30000, no_cb, &id, &retry, 0), AP_OK);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 1, no_cb, &id, &retry, 0), AP_ERATELIMIT);
    /* The second used 40,000, not 10,000: 30,000 more are owed, paid off at 1 per ms. */
    ap__limiter_release_at(lim, "p", 10000, 40000, 0);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 1, no_cb, &id, &retry, 0), AP_ERATELIMIT);
    assert_int_equal(retry, 30001);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 1, no_cb, &id, &retry, 30000),
                     AP_ERATELIMIT);
    assert_int_equal(retry, 1);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 1, no_cb, &id, &retry, 30001), AP_OK);
    /* actual < 0 keeps the estimate: nothing changes. */
    ap__limiter_release_at(lim, "p", 30000, -1, 30001);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 1, no_cb, &id, &retry, 30001),
                     AP_ERATELIMIT);

    /* A credit never fills the bucket past a minute's budget. */
    ap__limiter_release_at(lim, "p", 1e9, 0, 200000);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 60000, no_cb, &id, &retry, 200000),
                     AP_OK);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 1, no_cb, &id, &retry, 200000),
                     AP_ERATELIMIT);
    assert_int_equal(retry, 1);
    ap_limiter_free(lim);
}

static void test_limiter__tpm_oversize(void **state)
{
    (void)state;
    ap_limiter *lim = manual();
    /* 1,000 a minute: 1 token per 60 ms. */
    ap_limit_opts o = opts(0, 0, 1000, 5, 600000);
    struct log log;
    log_init(&log);
    struct tag t = {&log, 1};
    int id = 0;
    long retry = 0;
    double next = 0;
    /* Five minutes' budget at once: granted because the bucket is full... */
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 5000, no_cb, &id, &retry, 0), AP_OK);
    /* ...and the next request pays for it: 4,000 owed plus its own 1, at 60 ms each. */
    ap_limit_opts noq = opts(0, 0, 1000, 0, 0);
    assert_int_equal(ap__limiter_acquire_at(lim, "q", &noq, 5000, no_cb, &id, &retry, 0), AP_OK);
    assert_int_equal(ap__limiter_acquire_at(lim, "q", &noq, 1, no_cb, &id, &retry, 0),
                     AP_ERATELIMIT);
    assert_int_equal(retry, 4001 * 60);

    /* An oversize request that has to wait waits for a full bucket, not for 5,000. */
    ap_limiter_free(lim);
    lim = manual();
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 500, no_cb, &id, &retry, 0), AP_OK);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 5000, log_cb, &t, &retry, 0), AP_EBUSY);
    assert_int_equal(ap__limiter_poll_at(lim, 0, &next), 0);
    assert_true(next == 30000); /* 500 tokens at 1/60 per ms */
    assert_int_equal(ap__limiter_poll_at(lim, 29999, NULL), 0);
    assert_int_equal(ap__limiter_poll_at(lim, 30000, &next), 1);
    assert_int_equal(log.rc[0], AP_OK);
    ap_limiter_free(lim);
    log_release(&log);
}

/* ---- changed limits, keys -------------------------------------------------------------------- */

static void test_limiter__limits_change(void **state)
{
    (void)state;
    ap_limiter *lim = manual();
    struct log log;
    log_init(&log);
    struct tag t[4];
    for (int i = 0; i < 4; i++)
        t[i] = (struct tag){&log, i + 1};
    int id = 0;
    long retry = 0;

    ap_limit_opts o = opts(1, 0, 0, 5, 60000);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, no_cb, &id, NULL, 0), AP_OK);
    for (int i = 0; i < 3; i++)
        assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, log_cb, &t[i], NULL, 0), AP_EBUSY);
    /* Raised to 3 in flight: the newcomer still queues behind the waiters... */
    o = opts(3, 0, 0, 5, 60000);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, log_cb, &t[3], NULL, 1), AP_EBUSY);
    /* ...and the next pass lets the first two in, in order; the count was kept. */
    assert_int_equal(ap__limiter_poll_at(lim, 1, NULL), 2);
    assert_int_equal(ap_limiter_in_flight(lim, "p"), 3);
    assert_int_equal(ap_limiter_queue_depth(lim, "p"), 2);

    /* Queue cut to 1: the newest waiter is refused, and so is the newcomer. */
    o = opts(3, 0, 0, 1, 60000);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, no_cb, &id, &retry, 2), AP_ERATELIMIT);
    assert_int_equal(ap_limiter_queue_depth(lim, "p"), 1);
    assert_int_equal(ap__limiter_poll_at(lim, 2, NULL), 1);

    /* No limits at all: granted, and so is the waiter (not refused for the queue of 0). */
    o = opts(0, 0, 0, 0, 0);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, no_cb, &id, NULL, 3), AP_OK);
    assert_int_equal(ap__limiter_poll_at(lim, 3, NULL), 1);
    assert_int_equal(log_count(&log), 4);
    static const int want_id[] = {1, 2, 4, 3};
    static const ap_status want_rc[] = {AP_OK, AP_OK, AP_ERATELIMIT, AP_OK};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(log.id[i], want_id[i]);
        assert_int_equal(log.rc[i], want_rc[i]);
    }
    assert_int_equal(ap_limiter_in_flight(lim, "p"), 5);

    /* A bucket switched on starts full; a smaller one keeps what it had, cut to its size. */
    o = opts(0, 10, 0, 0, 0);
    for (int i = 0; i < 10; i++)
        assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, no_cb, &id, NULL, 3), AP_OK);
    assert_int_equal(ap__limiter_acquire_at(lim, "p", &o, 0, no_cb, &id, NULL, 3), AP_ERATELIMIT);
    o = opts(0, 100, 0, 0, 0);
    for (int i = 0; i < 90; i++)
        assert_int_equal(ap__limiter_acquire_at(lim, "r", &o, 0, no_cb, &id, NULL, 0), AP_OK);
    o = opts(0, 5, 0, 0, 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(ap__limiter_acquire_at(lim, "r", &o, 0, no_cb, &id, NULL, 0), AP_OK);
    assert_int_equal(ap__limiter_acquire_at(lim, "r", &o, 0, no_cb, &id, &retry, 0), AP_ERATELIMIT);
    assert_int_equal(retry, 12000); /* the new rate: 5 a minute */
    ap_limiter_free(lim);
    assert_int_equal(log_count(&log), 4);
    log_release(&log);
}

struct seen {
    size_t keys, queued;
    int in_flight;
};

static void count_key(const char *key, size_t queued, int in_flight, void *ctx)
{
    struct seen *s = ctx;
    assert_non_null(key);
    s->keys++;
    s->queued += queued;
    s->in_flight += in_flight;
}

static void test_limiter__keys_capped(void **state)
{
    (void)state;
    ap_limiter *lim = manual();
    ap_limit_opts o = opts(1, 0, 0, 0, 0);
    int id = 0;
    char key[32];
    for (int i = 0; i < AP__LIMITER_MAX_KEYS; i++) {
        snprintf(key, sizeof(key), "provider-%d", i);
        assert_int_equal(ap__limiter_acquire_at(lim, key, &o, 0, no_cb, &id, NULL, 0), AP_OK);
        assert_int_equal(ap__limiter_acquire_at(lim, key, &o, 0, no_cb, &id, NULL, 0),
                         AP_ERATELIMIT);
    }
    /* Past the cap: let through untracked rather than grow. */
    for (int i = 0; i < 3; i++)
        assert_int_equal(ap__limiter_acquire_at(lim, "one-too-many", &o, 0, no_cb, &id, NULL, 0),
                         AP_OK);
    assert_int_equal(ap_limiter_in_flight(lim, "one-too-many"), 0);
    ap__limiter_release_at(lim, "one-too-many", 0, -1, 0); /* harmless */

    struct seen s = {0};
    ap_limiter_foreach(lim, count_key, &s);
    assert_int_equal(s.keys, AP__LIMITER_MAX_KEYS);
    assert_int_equal(s.in_flight, AP__LIMITER_MAX_KEYS);
    assert_int_equal(s.queued, 0);
    ap_limiter_free(lim);

    /* A key longer than any provider name is untracked too. */
    lim = manual();
    char long_key[AP__LIMITER_MAX_KEY_LEN + 2];
    memset(long_key, 'k', sizeof(long_key) - 1);
    long_key[sizeof(long_key) - 1] = '\0';
    for (int i = 0; i < 3; i++)
        assert_int_equal(ap__limiter_acquire_at(lim, long_key, &o, 0, no_cb, &id, NULL, 0), AP_OK);
    long_key[AP__LIMITER_MAX_KEY_LEN] = '\0'; /* the longest tracked */
    assert_int_equal(ap__limiter_acquire_at(lim, long_key, &o, 0, no_cb, &id, NULL, 0), AP_OK);
    assert_int_equal(ap__limiter_acquire_at(lim, long_key, &o, 0, no_cb, &id, NULL, 0),
                     AP_ERATELIMIT);
    ap_limiter_free(lim);
}

static void test_limiter__foreach_snapshot(void **state)
{
    (void)state;
    ap_limiter *lim = manual();
    struct log log;
    log_init(&log);
    struct tag t[2] = {{&log, 1}, {&log, 2}};
    int id = 0;
    ap_limit_opts o = opts(2, 0, 0, 5, 1000);
    for (int i = 0; i < 2; i++)
        assert_int_equal(ap__limiter_acquire_at(lim, "a", &o, 0, no_cb, &id, NULL, 0), AP_OK);
    for (int i = 0; i < 2; i++)
        assert_int_equal(ap__limiter_acquire_at(lim, "a", &o, 0, log_cb, &t[i], NULL, 0), AP_EBUSY);
    assert_int_equal(ap__limiter_acquire_at(lim, "b", &o, 0, no_cb, &id, NULL, 0), AP_OK);
    struct seen s = {0};
    ap_limiter_foreach(lim, count_key, &s);
    assert_int_equal(s.keys, 2);
    assert_int_equal(s.queued, 2);
    assert_int_equal(s.in_flight, 3);
    assert_int_equal(ap_limiter_queue_depth(lim, "a"), 2);
    assert_int_equal(ap_limiter_queue_depth(lim, "b"), 0);
    assert_int_equal(ap_limiter_queue_depth(lim, "never"), 0);
    assert_int_equal(ap_limiter_in_flight(lim, "never"), 0);
    ap_limiter_free(lim);
    assert_int_equal(log_count(&log), 2);
    log_release(&log);
}

/* ---- many threads ---------------------------------------------------------------------------- */

enum { WORKERS = 6, PER_WORKER = 300, MAX_IN_FLIGHT = 3 };

struct req {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int calls;
    ap_status rc;
};

struct shared {
    ap_limiter *lim;
    atomic_int in_flight_a, max_seen_a;
    atomic_int granted, timed_out, refused, queued;
    struct req req[WORKERS][PER_WORKER];
};

struct worker {
    struct shared *sh;
    int n;
};

static void req_cb(void *ctx, ap_status rc)
{
    struct req *r = ctx;
    pthread_mutex_lock(&r->mu);
    r->calls++;
    r->rc = rc;
    pthread_cond_signal(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct shared *sh = w->sh;
    ap_limit_opts oa = opts(MAX_IN_FLIGHT, 0, 1e9, 1000, 60000);
    /* Key "b": a tiny queue deadline, so timeouts race with grants. */
    ap_limit_opts ob = opts(1, 0, 0, 1000, 1);
    for (int i = 0; i < PER_WORKER; i++) {
        struct req *r = &sh->req[w->n][i];
        bool b = i % 3 == 2;
        const char *key = b ? "b" : "a";
        long retry = 0;
        ap_status rc = ap_limiter_acquire(sh->lim, key, b ? &ob : &oa, 10, req_cb, r, &retry);
        if (rc == AP_ERATELIMIT) {
            atomic_fetch_add(&sh->refused, 1);
            assert_true(retry >= 1);
            continue;
        }
        if (rc == AP_EBUSY) {
            atomic_fetch_add(&sh->queued, 1);
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            until.tv_sec += WAIT_MS / 1000;
            pthread_mutex_lock(&r->mu);
            while (r->calls == 0 && pthread_cond_timedwait(&r->cv, &r->mu, &until) != ETIMEDOUT)
                ;
            int calls = r->calls;
            rc = r->rc;
            pthread_mutex_unlock(&r->mu);
            assert_int_equal(calls, 1);
            if (rc == AP_ETIMEOUT) {
                assert_true(b);
                atomic_fetch_add(&sh->timed_out, 1);
                continue;
            }
        }
        assert_int_equal(rc, AP_OK);
        atomic_fetch_add(&sh->granted, 1);
        int cur = b ? 0 : atomic_fetch_add(&sh->in_flight_a, 1) + 1;
        int seen = atomic_load(&sh->max_seen_a);
        while (cur > seen && !atomic_compare_exchange_weak(&sh->max_seen_a, &seen, cur))
            ;
        if (i % 5 == 0)
            sleep_ms(1); /* hold the slot a while: others queue */
        if (!b)
            atomic_fetch_sub(&sh->in_flight_a, 1);
        ap_limiter_release(sh->lim, key, 10, i % 2 ? 12 : -1);
    }
    return NULL;
}

static void test_limiter__threads_no_lost_or_double_callbacks(void **state)
{
    (void)state;
    struct shared *sh = calloc(1, sizeof(*sh));
    assert_non_null(sh);
    sh->lim = threaded();
    for (int w = 0; w < WORKERS; w++) {
        for (int i = 0; i < PER_WORKER; i++) {
            pthread_mutex_init(&sh->req[w][i].mu, NULL);
            pthread_condattr_t ca;
            pthread_condattr_init(&ca);
            pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
            pthread_cond_init(&sh->req[w][i].cv, &ca);
            pthread_condattr_destroy(&ca);
        }
    }
    pthread_t th[WORKERS];
    struct worker wk[WORKERS];
    for (int w = 0; w < WORKERS; w++) {
        wk[w] = (struct worker){sh, w};
        assert_int_equal(pthread_create(&th[w], NULL, worker_main, &wk[w]), 0);
    }
    for (int w = 0; w < WORKERS; w++)
        pthread_join(th[w], NULL);

    int total = WORKERS * PER_WORKER;
    int granted = atomic_load(&sh->granted), timed_out = atomic_load(&sh->timed_out);
    assert_int_equal(atomic_load(&sh->refused), 0); /* the queues never fill */
    assert_int_equal(granted + timed_out, total);
    assert_true(atomic_load(&sh->max_seen_a) <= MAX_IN_FLIGHT);
    assert_true(atomic_load(&sh->queued) > 0); /* the queue was exercised */
    assert_int_equal(ap_limiter_in_flight(sh->lim, "a"), 0);
    assert_int_equal(ap_limiter_in_flight(sh->lim, "b"), 0);
    assert_int_equal(ap_limiter_queue_depth(sh->lim, "a"), 0);
    assert_int_equal(ap_limiter_queue_depth(sh->lim, "b"), 0);
    ap_limiter_free(sh->lim);

    /* After the thread is gone: every queued request was called exactly once, the others never. */
    int called = 0;
    for (int w = 0; w < WORKERS; w++) {
        for (int i = 0; i < PER_WORKER; i++) {
            struct req *r = &sh->req[w][i];
            assert_true(r->calls == 0 || r->calls == 1);
            called += r->calls;
            pthread_cond_destroy(&r->cv);
            pthread_mutex_destroy(&r->mu);
        }
    }
    assert_int_equal(called, atomic_load(&sh->queued));
    free(sh);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_limiter__unlimited_always_grants),
        cmocka_unit_test(test_limiter__bad_arguments),
        cmocka_unit_test(test_limiter__close_refuses_then_free),
        cmocka_unit_test(test_limiter__third_queues_release_grants),
        cmocka_unit_test(test_limiter__callback_may_call_back_in),
        cmocka_unit_test(test_limiter__queue_timeout_real),
        cmocka_unit_test(test_limiter__free_calls_waiters),
        cmocka_unit_test(test_limiter__queue_timeout_exact),
        cmocka_unit_test(test_limiter__fifo_order),
        cmocka_unit_test(test_limiter__queue_full_refused_with_hint),
        cmocka_unit_test(test_limiter__rpm_burst_then_rate),
        cmocka_unit_test(test_limiter__rpm_queue_drains_at_rate),
        cmocka_unit_test(test_limiter__rpm_real_time),
        cmocka_unit_test(test_limiter__tpm_debit_and_actual),
        cmocka_unit_test(test_limiter__tpm_oversize),
        cmocka_unit_test(test_limiter__limits_change),
        cmocka_unit_test(test_limiter__keys_capped),
        cmocka_unit_test(test_limiter__foreach_snapshot),
        cmocka_unit_test(test_limiter__threads_no_lost_or_double_callbacks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
