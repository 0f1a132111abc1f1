/*
 * test_resilience.c - retry decisions, backoff and Retry-After, the circuit breaker's state
 * machine (time is passed in, so every transition is checked at its exact millisecond), the
 * breaker under threads, and fallback chain resolution from the config.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aperture/config.h"
#include "aperture/resilience.h"

/* "Sun, 06 Nov 1994 08:49:37 GMT" (RFC 9110's example date), in ms since the epoch. */
#define RFC_DATE_MS INT64_C(784111777000)

static ap_retry_policy policy(void)
{
    ap_retry_policy p;
    ap_retry_policy_init(&p);
    return p;
}

/* ---- backoff ------------------------------------------------------------------------------- */

static void test_resilience__backoff_within_full_jitter_bounds(void **state)
{
    (void)state;
    ap_retry_policy p = policy();
    /* Bounds for attempts 1..8 with base 500, cap 8000. */
    static const long hi[] = {500, 1000, 2000, 4000, 8000, 8000, 8000, 8000};
    enum { DRAWS = 4000 };
    for (int n = 1; n <= 8; n++) {
        double sum = 0;
        long lo_seen = hi[n - 1], hi_seen = 0;
        for (uint64_t seed = 0; seed < DRAWS; seed++) {
            uint64_t rng = seed * 7919 + (uint64_t)n;
            long d = ap_retry_delay_ms(&p, n, NULL, NULL, 0, &rng);
            if (d < 0 || d > hi[n - 1])
                fail_msg("attempt %d seed %llu: %ld outside [0, %ld]", n, (unsigned long long)seed,
                         d, hi[n - 1]);
            sum += (double)d;
            lo_seen = d < lo_seen ? d : lo_seen;
            hi_seen = d > hi_seen ? d : hi_seen;
        }
        /* Uniform over [0, hi]: the mean is hi/2 (the standard error here is under 1%). */
        double mean = sum / DRAWS, want = hi[n - 1] / 2.0;
        if (mean < want * 0.95 || mean > want * 1.05)
            fail_msg("attempt %d: mean %.1f, expected about %.1f", n, mean, want);
        /* Full jitter reaches both ends of the range. */
        assert_true(lo_seen < hi[n - 1] / 20);
        assert_true(hi_seen > hi[n - 1] - hi[n - 1] / 20);
    }
}

static void test_resilience__backoff_is_seeded_and_bounded(void **state)
{
    (void)state;
    ap_retry_policy p = policy();
    uint64_t a = 42, b = 42, c = 43;
    long sa[16], sb[16];
    int differ = 0;
    for (int i = 0; i < 16; i++) {
        sa[i] = ap_retry_delay_ms(&p, 3, NULL, NULL, 0, &a);
        sb[i] = ap_retry_delay_ms(&p, 3, NULL, NULL, 0, &b);
        differ += sa[i] != ap_retry_delay_ms(&p, 3, NULL, NULL, 0, &c);
    }
    assert_memory_equal(sa, sb, sizeof(sa)); /* same seed, same waits */
    assert_true(differ > 8);                 /* another seed, other waits */

    /* No PRNG: the midpoint. Attempts below 1 count as the first. */
    assert_int_equal(ap_retry_delay_ms(&p, 1, NULL, NULL, 0, NULL), 250);
    assert_int_equal(ap_retry_delay_ms(&p, 0, NULL, NULL, 0, NULL), 250);
    assert_int_equal(ap_retry_delay_ms(&p, 4, NULL, NULL, 0, NULL), 2000);
    /* Huge attempt numbers and bases do not overflow past the cap. */
    uint64_t r = 1;
    for (int n = 30; n < 5000; n += 97)
        assert_true(ap_retry_delay_ms(&p, n, NULL, NULL, 0, &r) <= 8000);
    p.base_ms = 86400000;
    p.cap_ms = 86400000;
    for (int n = 1; n < 100; n++)
        assert_true(ap_retry_delay_ms(&p, n, NULL, NULL, 0, &r) <= 86400000);
    /* base 0: retry at once. */
    p.base_ms = 0;
    assert_int_equal(ap_retry_delay_ms(&p, 3, NULL, NULL, 0, &r), 0);
    /* The PRNG itself: seed 0 works and does not repeat at once. */
    uint64_t z = 0;
    uint64_t x1 = ap_retry_rand(&z), x2 = ap_retry_rand(&z);
    assert_true(x1 != 0 && x1 != x2);
}

/* ---- Retry-After --------------------------------------------------------------------------- */

static void test_resilience__retry_after_seconds_and_ms(void **state)
{
    (void)state;
    ap_retry_policy p = policy();
    uint64_t r = 9;
    assert_int_equal(ap_retry_delay_ms(&p, 1, "3", NULL, 0, &r), 3000);
    assert_int_equal(ap_retry_delay_ms(&p, 1, " 7 ", NULL, 0, &r), 7000);
    assert_int_equal(ap_retry_delay_ms(&p, 2, "0", NULL, 0, &r), 0);
    assert_int_equal(ap_retry_delay_ms(&p, 1, "1.5", NULL, 0, &r), 1500);
    /* Longer than retry_after_cap_ms: cut to it (not to cap_ms, which is for backoff). */
    assert_int_equal(ap_retry_delay_ms(&p, 1, "120", NULL, 0, &r), 30000);
    assert_int_equal(ap_retry_delay_ms(&p, 1, "99999999999999999999", NULL, 0, &r), 30000);
    /* retry-after-ms is more precise and wins. */
    assert_int_equal(ap_retry_delay_ms(&p, 1, "9", "1500", 0, &r), 1500);
    assert_int_equal(ap_retry_delay_ms(&p, 1, NULL, "250.2", 0, &r), 251);
    assert_int_equal(ap_retry_delay_ms(&p, 1, NULL, "45000", 0, &r), 30000);
    /* A bad retry-after-ms falls back to Retry-After, bad both to backoff. */
    assert_int_equal(ap_retry_delay_ms(&p, 1, "2", "soon", 0, &r), 2000);
    const char *bad[] = {"", "soon", "-1", "1e3", "3 s", "0x10", "1.2.3", "."};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        long ms = -1;
        if (ap_retry_after_parse(bad[i], bad[i], 0, &ms))
            fail_msg("\"%s\" parsed as %ld ms", bad[i], ms);
        long d = ap_retry_delay_ms(&p, 2, bad[i], bad[i], 0, &r);
        assert_true(d >= 0 && d <= 1000); /* attempt 2's backoff range */
    }
    /* The cap applies to the header, and 0 ignores the wait entirely. */
    p.retry_after_cap_ms = 0;
    assert_int_equal(ap_retry_delay_ms(&p, 1, "5", NULL, 0, &r), 0);
}

static void test_resilience__retry_after_http_date(void **state)
{
    (void)state;
    ap_retry_policy p = policy();
    uint64_t r = 1;
    int64_t now = RFC_DATE_MS - 5000; /* 5 s before the date */
    const char *forms[] = {
        "Sun, 06 Nov 1994 08:49:37 GMT",  /* IMF-fixdate */
        "Sunday, 06-Nov-94 08:49:37 GMT", /* RFC 850 */
        "Sun Nov  6 08:49:37 1994",       /* asctime */
        "  Sun, 06 Nov 1994 08:49:37 GMT ",
    };
    for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
        long ms = -1;
        if (!ap_retry_after_parse(forms[i], NULL, now, &ms) || ms != 5000)
            fail_msg("\"%s\": %ld ms, expected 5000", forms[i], ms);
        assert_int_equal(ap_retry_delay_ms(&p, 1, forms[i], NULL, now, &r), 5000);
    }
    /* In the past: retry now. Far ahead: the cap. */
    assert_int_equal(ap_retry_delay_ms(&p, 3, forms[0], NULL, RFC_DATE_MS + 60000, &r), 0);
    assert_int_equal(ap_retry_delay_ms(&p, 1, forms[0], NULL, RFC_DATE_MS - 3600000, &r), 30000);
    /* A leap day, and the first second of a year. */
    long ms;
    assert_true(ap_retry_after_parse("Thu, 29 Feb 2024 00:00:00 GMT", NULL,
                                     INT64_C(1709164800000) - 1234, &ms));
    assert_int_equal(ms, 1234);
    assert_true(
        ap_retry_after_parse("Mon, 01 Jan 2035 00:00:00 GMT", NULL, INT64_C(2051222400000), &ms));
    assert_int_equal(ms, 0);
    /* RFC 850 two-digit years: more than 50 years ahead is the previous century. */
    assert_true(ap_retry_after_parse("Friday, 01-Jan-99 00:00:00 GMT", NULL,
                                     INT64_C(915148800000) - 10, &ms)); /* now in 1998 */
    assert_int_equal(ms, 10);
    assert_true(ap_retry_after_parse("Tuesday, 01-Jan-30 00:00:00 GMT", NULL,
                                     INT64_C(1893456000000) - 10, &ms)); /* now in 2029 */
    assert_int_equal(ms, 10);
    /* Not dates. */
    const char *bad[] = {
        "Sun, 31 Feb 1994 08:49:37 GMT", "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 08:49:37 PST",
        "Sun, 6 Nov 1994 08:49:37 GMT",  "Sun Nov  6 08:49:37",
        "Sun, 06 Nov 1994 08:49 GMT",    "Sun, 06 Nov 1994 08:49:37 GMT x",
        "Sun, 29 Feb 1900 00:00:00 GMT",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (ap_retry_after_parse(bad[i], NULL, now, &ms))
            fail_msg("\"%s\" parsed as %ld ms", bad[i], ms);
}

/* ---- whether to retry ---------------------------------------------------------------------- */

static void test_resilience__retry_should_truth_table(void **state)
{
    (void)state;
    ap_retry_policy p = policy();
    const struct {
        int attempt;
        ap_status rc;
        long status;
        bool gone, sent, want;
    } cases[] = {
        {1, AP_EUPSTREAM, 429, false, false, true},
        {1, AP_EUPSTREAM, 500, false, false, true},
        {1, AP_EUPSTREAM, 502, false, false, true},
        {1, AP_EUPSTREAM, 503, false, false, true},
        {1, AP_EUPSTREAM, 504, false, false, true},
        {2, AP_EUPSTREAM, 503, false, false, true},
        {3, AP_EUPSTREAM, 503, false, false, false}, /* max_attempts reached */
        {1, AP_ERATELIMIT, 429, false, false, true},
        {1, AP_OK, 503, false, false, true}, /* an HTTP error the net layer completed */
        {1, AP_OK, 200, false, false, false},
        {1, AP_EUPSTREAM, 400, false, false, false}, /* not listed */
        {1, AP_EUPSTREAM, 401, false, false, false},
        {1, AP_EUPSTREAM, 404, false, false, false},
        {1, AP_EUPSTREAM, 501, false, false, false},
        {1, AP_EUPSTREAM, 0, false, false, false},
        {1, AP_ETIMEOUT, 0, false, false, true},
        {1, AP_ENETWORK, 0, false, false, true},
        {1, AP_EINVAL, 503, false, false, false}, /* deterministic failures */
        {1, AP_EAUTH, 401, false, false, false},
        {1, AP_ETOOLARGE, 0, false, false, false},
        {1, AP_EDECODE, 0, false, false, false},
        /* Never after the client left, never once bytes reached it. */
        {1, AP_EUPSTREAM, 503, true, false, false},
        {1, AP_ETIMEOUT, 0, true, false, false},
        {1, AP_ENETWORK, 0, false, true, false},
        {1, AP_EUPSTREAM, 429, false, true, false},
        {1, AP_ETIMEOUT, 0, true, true, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        bool got = ap_retry_should(&p, cases[i].attempt, cases[i].rc, cases[i].status,
                                   cases[i].gone, cases[i].sent);
        if (got != cases[i].want)
            fail_msg("case %zu (attempt %d, %s, http %ld, gone %d, sent %d): %d", i,
                     cases[i].attempt, ap_strerror(cases[i].rc), cases[i].status, cases[i].gone,
                     cases[i].sent, got);
    }
    /* transient: the same, without the attempt and the client. */
    assert_true(ap_retry_transient(&p, AP_EUPSTREAM, 503));
    assert_true(ap_retry_transient(&p, AP_ETIMEOUT, 0));
    assert_true(ap_retry_transient(&p, AP_OK, 429));
    assert_false(ap_retry_transient(&p, AP_EUPSTREAM, 400));
    assert_false(ap_retry_transient(&p, AP_OK, 200));
    assert_false(ap_retry_transient(&p, AP_EAUTH, 401));
    /* The switches and the list. */
    p.on_timeout = false;
    p.on_connect_error = false;
    assert_false(ap_retry_should(&p, 1, AP_ETIMEOUT, 0, false, false));
    assert_false(ap_retry_should(&p, 1, AP_ENETWORK, 0, false, false));
    p.n_on_status = 1;
    p.on_status[0] = 408;
    assert_true(ap_retry_should(&p, 1, AP_EUPSTREAM, 408, false, false));
    assert_false(ap_retry_should(&p, 1, AP_EUPSTREAM, 503, false, false));
    p.max_attempts = 1;
    assert_false(ap_retry_should(&p, 1, AP_EUPSTREAM, 408, false, false));
}

static void test_resilience__deadline(void **state)
{
    (void)state;
    ap_retry_policy p = policy();
    /* No limits of its own: the provider's timeout; always fits. */
    assert_int_equal(ap_retry_attempt_timeout_ms(&p, 0, 600000), 600000);
    assert_int_equal(ap_retry_attempt_timeout_ms(&p, 999999, 600000), 600000);
    assert_true(ap_retry_fits_deadline(&p, 999999, 999999));
    p.attempt_timeout_ms = 20000;
    assert_int_equal(ap_retry_attempt_timeout_ms(&p, 0, 600000), 20000);
    assert_int_equal(ap_retry_attempt_timeout_ms(&p, 0, 5000), 5000);
    p.deadline_ms = 30000;
    assert_int_equal(ap_retry_attempt_timeout_ms(&p, 0, 600000), 20000);
    assert_int_equal(ap_retry_attempt_timeout_ms(&p, 25000, 600000), 5000);
    assert_int_equal(ap_retry_attempt_timeout_ms(&p, 29999, 600000), 1);
    assert_int_equal(ap_retry_attempt_timeout_ms(&p, 30000, 600000), 0);
    assert_int_equal(ap_retry_attempt_timeout_ms(&p, 45000, 600000), 0);
    assert_true(ap_retry_fits_deadline(&p, 10000, 19999));
    assert_false(ap_retry_fits_deadline(&p, 10000, 20000));
    assert_false(ap_retry_fits_deadline(&p, 30000, 0));
    assert_true(ap_retry_fits_deadline(&p, 0, 0));
}

static void test_resilience__labels(void **state)
{
    (void)state;
    assert_string_equal(ap_retry_reason(AP_ETIMEOUT, 0), "timeout");
    assert_string_equal(ap_retry_reason(AP_ENETWORK, 0), "connect_error");
    assert_string_equal(ap_retry_reason(AP_EUPSTREAM, 429), "http_429");
    assert_string_equal(ap_retry_reason(AP_ERATELIMIT, 429), "http_429");
    assert_string_equal(ap_retry_reason(AP_EUPSTREAM, 503), "http_5xx");
    assert_string_equal(ap_retry_reason(AP_OK, 408), "http_4xx");
    assert_string_equal(ap_retry_reason(AP_EINVAL, 0), "other");
    assert_string_equal(ap_fallback_reason_name(AP_FALLBACK_ERROR), "error");
    assert_string_equal(ap_fallback_reason_name(AP_FALLBACK_BREAKER_OPEN), "breaker_open");
    assert_string_equal(ap_fallback_reason_name(AP_FALLBACK_REFUSAL), "refusal");
    assert_string_equal(ap_fallback_reason_name(AP_FALLBACK_INVALID_OUTPUT), "invalid_output");
    assert_string_equal(ap_fallback_reason_name(AP_FALLBACK_FAILED_CHECKS), "failed_checks");
    assert_string_equal(ap_fallback_reason_name(AP_FALLBACK_DEADLINE), "deadline");
    assert_string_equal(ap_fallback_reason_name((ap_fallback_reason)99), "unknown");
    assert_string_equal(ap_breaker_state_name(AP_BREAKER_CLOSED), "closed");
    assert_string_equal(ap_breaker_state_name(AP_BREAKER_OPEN), "open");
    assert_string_equal(ap_breaker_state_name(AP_BREAKER_HALF_OPEN), "half_open");
    assert_int_equal(AP_BREAKER_CLOSED, 0);
    assert_int_equal(AP_BREAKER_OPEN, 1);
    assert_int_equal(AP_BREAKER_HALF_OPEN, 2);
}

/* ---- the breaker --------------------------------------------------------------------------- */

/* State changes seen through on_change. */
struct changes {
    char log[1024];
    atomic_int n;
};

static void on_change(void *ctx, const char *name, ap_breaker_state from, ap_breaker_state to,
                      int64_t now)
{
    struct changes *c = ctx;
    size_t l = strlen(c->log);
    snprintf(c->log + l, sizeof(c->log) - l, "%s:%s>%s@%lld ", name, ap_breaker_state_name(from),
             ap_breaker_state_name(to), (long long)now);
    atomic_fetch_add(&c->n, 1);
}

static ap_breaker_set *breakers(const ap_breaker_opts *o)
{
    ap_breaker_set *s = NULL;
    ap_error err = {0};
    if (ap_breaker_set_new(o, &s, &err) != AP_OK)
        fail_msg("ap_breaker_set_new: %s", err.msg);
    return s;
}

/* The allow/record pair of one request. */
static bool call(ap_breaker_set *s, const char *d, int64_t now, bool ok)
{
    bool probe = true;
    if (!ap_breaker_allow(s, d, now, &probe)) {
        assert_false(probe);
        return false;
    }
    ap_breaker_record(s, d, now, ok, probe);
    return true;
}

static void test_resilience__breaker_opens_at_exactly_n_failures(void **state)
{
    (void)state;
    ap_breaker_opts o;
    ap_breaker_opts_init(&o);
    o.error_rate = 0; /* the consecutive rule alone */
    ap_breaker_set *s = breakers(&o);
    const char *d = "openai/gpt-4o";

    assert_int_equal(ap_breaker_state_get(s, d), AP_BREAKER_CLOSED); /* never seen */
    /* Four failures, a success: the count starts again. */
    for (int i = 0; i < 4; i++)
        assert_true(call(s, d, 1000 + i, false));
    assert_true(call(s, d, 1004, true));
    for (int i = 0; i < 4; i++) {
        assert_true(call(s, d, 2000 + i, false));
        assert_int_equal(ap_breaker_state_get(s, d), AP_BREAKER_CLOSED);
    }
    assert_true(call(s, d, 2004, false)); /* the 5th in a row */
    assert_int_equal(ap_breaker_state_get(s, d), AP_BREAKER_OPEN);
    bool probe = true;
    assert_false(ap_breaker_allow(s, d, 2005, &probe));
    assert_false(probe);
    /* Other deployments are not affected. */
    assert_true(call(s, "anthropic/claude", 2005, true));
    assert_int_equal(ap_breaker_state_get(s, "anthropic/claude"), AP_BREAKER_CLOSED);
    ap_breaker_set_free(s);
}

static void test_resilience__breaker_cooldown_then_one_probe_closes(void **state)
{
    (void)state;
    struct changes ch = {0};
    ap_breaker_opts o;
    ap_breaker_opts_init(&o);
    o.on_change = on_change;
    o.on_change_ctx = &ch;
    ap_breaker_set *s = breakers(&o);
    const char *d = "dep";
    for (int i = 0; i < 5; i++)
        call(s, d, 10000, false);
    assert_int_equal(ap_breaker_state_get(s, d), AP_BREAKER_OPEN);

    /* Open for the whole cooldown: no request, no probe; the wait counts down. */
    bool probe = true;
    for (int64_t t = 10000; t < 40000; t += 997) {
        assert_false(ap_breaker_allow(s, d, t, &probe));
        assert_false(probe);
        assert_int_equal(ap_breaker_wait_ms(s, d, t), 40000 - t);
    }
    assert_false(ap_breaker_allow(s, d, 39999, &probe));
    /* Results of requests let through earlier change nothing while open. */
    ap_breaker_record(s, d, 20000, true, false);
    ap_breaker_record(s, d, 20000, false, false);
    assert_int_equal(ap_breaker_state_get(s, d), AP_BREAKER_OPEN);

    /* At 30 s exactly: one probe, nobody else. */
    assert_int_equal(ap_breaker_wait_ms(s, d, 40000), 0);
    assert_true(ap_breaker_allow(s, d, 40000, &probe));
    assert_true(probe);
    assert_int_equal(ap_breaker_state_get(s, d), AP_BREAKER_HALF_OPEN);
    for (int i = 0; i < 100; i++) {
        assert_false(ap_breaker_allow(s, d, 40001 + i, &probe));
        assert_false(probe);
    }
    assert_true(ap_breaker_wait_ms(s, d, 40100) > 0);
    /* A late non-probe result does not count as the probe's. */
    ap_breaker_record(s, d, 40200, true, false);
    assert_int_equal(ap_breaker_state_get(s, d), AP_BREAKER_HALF_OPEN);
    /* The good probe closes it; traffic flows again. */
    ap_breaker_record(s, d, 40500, true, true);
    assert_int_equal(ap_breaker_state_get(s, d), AP_BREAKER_CLOSED);
    assert_true(ap_breaker_allow(s, d, 40501, &probe));
    assert_false(probe);
    assert_string_equal(ch.log, "dep:closed>open@10000 dep:open>half_open@40000 "
                                "dep:half_open>closed@40500 ");
    /* Closed again with a clean slate: it takes 5 new failures to open. */
    for (int i = 0; i < 4; i++)
        call(s, d, 41000, false);
    assert_int_equal(ap_breaker_state_get(s, d), AP_BREAKER_CLOSED);
    ap_breaker_set_free(s);
}

static void test_resilience__breaker_bad_probe_reopens(void **state)
{
    (void)state;
    ap_breaker_opts o;
    ap_breaker_opts_init(&o);
    o.cooldown_ms = 1000;
    ap_breaker_set *s = breakers(&o);
    for (int i = 0; i < 5; i++)
        call(s, "d", 0, false);
    bool probe;
    assert_true(ap_breaker_allow(s, "d", 1000, &probe) && probe);
    ap_breaker_record(s, "d", 1300, false, true);
    assert_int_equal(ap_breaker_state_get(s, "d"), AP_BREAKER_OPEN);
    /* Another full cooldown from the failed probe. */
    assert_false(ap_breaker_allow(s, "d", 2299, &probe));
    assert_int_equal(ap_breaker_wait_ms(s, "d", 2000), 300);
    assert_true(ap_breaker_allow(s, "d", 2300, &probe) && probe);
    ap_breaker_record(s, "d", 2400, true, true);
    assert_int_equal(ap_breaker_state_get(s, "d"), AP_BREAKER_CLOSED);
    ap_breaker_set_free(s);
}

static void test_resilience__breaker_several_probes(void **state)
{
    (void)state;
    ap_breaker_opts o;
    ap_breaker_opts_init(&o);
    o.half_open_probes = 3;
    o.cooldown_ms = 100;
    ap_breaker_set *s = breakers(&o);
    for (int i = 0; i < 5; i++)
        call(s, "d", 0, false);
    bool probe;
    /* Exactly three probes, then no more. */
    for (int i = 0; i < 3; i++) {
        assert_true(ap_breaker_allow(s, "d", 100 + i, &probe));
        assert_true(probe);
    }
    assert_false(ap_breaker_allow(s, "d", 103, &probe));
    /* Two good probes are not enough; the third closes it. */
    ap_breaker_record(s, "d", 110, true, true);
    ap_breaker_record(s, "d", 111, true, true);
    assert_int_equal(ap_breaker_state_get(s, "d"), AP_BREAKER_HALF_OPEN);
    assert_false(ap_breaker_allow(s, "d", 112, &probe));
    ap_breaker_record(s, "d", 113, true, true);
    assert_int_equal(ap_breaker_state_get(s, "d"), AP_BREAKER_CLOSED);

    /* Open again; of three probes one fails: open at once, the others' results are ignored. */
    for (int i = 0; i < 5; i++)
        call(s, "d", 200, false);
    for (int i = 0; i < 3; i++)
        assert_true(ap_breaker_allow(s, "d", 300, &probe) && probe);
    ap_breaker_record(s, "d", 301, true, true);
    ap_breaker_record(s, "d", 302, false, true);
    assert_int_equal(ap_breaker_state_get(s, "d"), AP_BREAKER_OPEN);
    ap_breaker_record(s, "d", 303, true, true);
    assert_int_equal(ap_breaker_state_get(s, "d"), AP_BREAKER_OPEN);
    assert_false(ap_breaker_allow(s, "d", 401, &probe));
    assert_true(ap_breaker_allow(s, "d", 402, &probe) && probe);
    ap_breaker_set_free(s);
}

static void test_resilience__breaker_lost_probe_is_replaced(void **state)
{
    (void)state;
    ap_breaker_opts o;
    ap_breaker_opts_init(&o);
    o.cooldown_ms = 1000;
    ap_breaker_set *s = breakers(&o);
    for (int i = 0; i < 5; i++)
        call(s, "d", 0, false);
    bool probe;
    assert_true(ap_breaker_allow(s, "d", 1000, &probe) && probe);
    /* The probe never reports (its client left): nobody else for a cooldown... */
    assert_false(ap_breaker_allow(s, "d", 1999, &probe));
    assert_int_equal(ap_breaker_wait_ms(s, "d", 1500), 500);
    /* ...then a new probe, one only. */
    assert_true(ap_breaker_allow(s, "d", 2000, &probe) && probe);
    assert_false(ap_breaker_allow(s, "d", 2001, &probe));
    ap_breaker_record(s, "d", 2100, true, true);
    assert_int_equal(ap_breaker_state_get(s, "d"), AP_BREAKER_CLOSED);
    ap_breaker_set_free(s);
}

static void test_resilience__breaker_error_rate(void **state)
{
    (void)state;
    ap_breaker_opts o;
    ap_breaker_opts_init(&o);
    o.consecutive_failures = 0; /* the rate rule alone */
    o.error_rate = 0.5;
    o.min_requests = 20;
    o.window_ms = 10000;
    ap_breaker_set *s = breakers(&o);

    /* Alternating fail/ok: 50% but only 19 results: not enough to judge. */
    int64_t t = 100000;
    for (int i = 0; i < 19; i++)
        call(s, "d", t + i, i % 2 == 0); /* 10 ok, 9 failed */
    assert_int_equal(ap_breaker_state_get(s, "d"), AP_BREAKER_CLOSED);
    /* The 20th result is a failure: 10 of 20, exactly the threshold. */
    call(s, "d", t + 19, false);
    assert_int_equal(ap_breaker_state_get(s, "d"), AP_BREAKER_OPEN);
    ap_breaker_set_free(s);

    /* Just below the threshold (every other one fails, but one in 20 of those succeeds: 45%)
     * never opens, however long it goes on. */
    s = breakers(&o);
    for (int i = 0; i < 2000; i++)
        call(s, "d", t + i * 50, i % 2 == 0 || i % 20 == 19);
    assert_int_equal(ap_breaker_state_get(s, "d"), AP_BREAKER_CLOSED);
    ap_breaker_set_free(s);

    /* Old results leave the window: 15 failures long ago, then 15 successes and 5 failures now
     * are 25% of the window, not 50%. */
    s = breakers(&o);
    for (int i = 0; i < 15; i++)
        call(s, "d", t + i, false);
    assert_int_equal(ap_breaker_state_get(s, "d"), AP_BREAKER_CLOSED);
    t += 20000;
    for (int i = 0; i < 15; i++)
        call(s, "d", t + i, true);
    for (int i = 0; i < 5; i++)
        call(s, "d", t + 20 + i, false);
    assert_int_equal(ap_breaker_state_get(s, "d"), AP_BREAKER_CLOSED);
    /* But within it they add up: 10 more failures make 15 of 30. */
    for (int i = 0; i < 10; i++)
        call(s, "d", t + 30 + i, false);
    assert_int_equal(ap_breaker_state_get(s, "d"), AP_BREAKER_OPEN);
    ap_breaker_set_free(s);

    /* Both rules off: it never opens. */
    o.error_rate = 0;
    s = breakers(&o);
    for (int i = 0; i < 100; i++)
        call(s, "d", t + i, false);
    assert_int_equal(ap_breaker_state_get(s, "d"), AP_BREAKER_CLOSED);
    ap_breaker_set_free(s);
}

/* foreach collects into this. */
struct infos {
    int n;
    ap_breaker_info v[8];
};

static void collect(const ap_breaker_info *info, void *ctx)
{
    struct infos *x = ctx;
    if (x->n < 8)
        x->v[x->n++] = *info;
}

static const ap_breaker_info *info_of(const struct infos *x, const char *name)
{
    for (int i = 0; i < x->n; i++)
        if (strcmp(x->v[i].deployment, name) == 0)
            return &x->v[i];
    return NULL;
}

static void test_resilience__breaker_foreach_and_limits(void **state)
{
    (void)state;
    ap_breaker_set *s = breakers(NULL); /* defaults */
    for (int i = 0; i < 5; i++)
        call(s, "down", 5000, false);
    call(s, "up", 5000, true);
    call(s, "up", 5001, false);
    call(s, "flaky", 5000, false);
    struct infos x = {0};
    ap_breaker_foreach(s, collect, &x);
    assert_int_equal(x.n, 3);
    const ap_breaker_info *down = info_of(&x, "down"), *up = info_of(&x, "up");
    assert_non_null(down);
    assert_non_null(up);
    assert_int_equal(down->state, AP_BREAKER_OPEN);
    assert_int_equal(down->opened_at_ms, 5000);
    assert_int_equal(down->probe_at_ms, 35000);
    assert_int_equal(down->times_opened, 1);
    assert_int_equal(up->state, AP_BREAKER_CLOSED);
    assert_int_equal(up->consecutive_failures, 1);
    assert_int_equal(up->window_requests, 2);
    assert_int_equal(up->window_failures, 1);
    assert_int_equal(up->times_opened, 0);

    /* A name too long to track is let through and never listed. */
    char longname[AP_BREAKER_MAX_NAME + 2];
    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    for (int i = 0; i < 10; i++)
        assert_true(call(s, longname, 6000, false));
    assert_int_equal(ap_breaker_state_get(s, longname), AP_BREAKER_CLOSED);
    bool probe = true;
    assert_true(ap_breaker_allow(s, NULL, 6000, &probe));
    assert_false(probe);
    x.n = 0;
    ap_breaker_foreach(s, collect, &x);
    assert_int_equal(x.n, 3);
    ap_breaker_set_free(s);
    ap_breaker_set_free(NULL);

    /* Past AP_BREAKER_MAX_DEPLOYMENTS new names are untracked, old ones still work. */
    s = breakers(NULL);
    char name[32];
    for (int i = 0; i < AP_BREAKER_MAX_DEPLOYMENTS + 10; i++) {
        snprintf(name, sizeof(name), "d%d", i);
        assert_true(ap_breaker_allow(s, name, 0, NULL));
    }
    for (int i = 0; i < 5; i++)
        call(s, "d0", 1, false);
    assert_int_equal(ap_breaker_state_get(s, "d0"), AP_BREAKER_OPEN);
    snprintf(name, sizeof(name), "d%d", AP_BREAKER_MAX_DEPLOYMENTS + 5);
    for (int i = 0; i < 5; i++)
        call(s, name, 1, false);
    assert_int_equal(ap_breaker_state_get(s, name), AP_BREAKER_CLOSED);
    ap_breaker_set_free(s);

    /* Options out of range are refused with the field's name. */
    ap_breaker_opts o;
    ap_error err = {0};
    ap_breaker_opts_init(&o);
    o.half_open_probes = 0;
    assert_int_equal(ap_breaker_set_new(&o, &s, &err), AP_EINVAL);
    assert_non_null(strstr(err.msg, "half_open_probes"));
    ap_breaker_opts_init(&o);
    o.error_rate = 1.5;
    memset(&err, 0, sizeof(err));
    assert_int_equal(ap_breaker_set_new(&o, &s, &err), AP_EINVAL);
    assert_non_null(strstr(err.msg, "error_rate"));
    ap_breaker_opts_init(&o);
    o.cooldown_ms = 0;
    memset(&err, 0, sizeof(err));
    assert_int_equal(ap_breaker_set_new(&o, &s, &err), AP_EINVAL);
    assert_non_null(strstr(err.msg, "cooldown_ms"));
}

/* ---- the breaker under threads ------------------------------------------------------------- */

#define THREADS 8

struct race {
    ap_breaker_set *s;
    pthread_barrier_t go;
    atomic_int allowed, probes;
    int64_t now;
    int rounds;
    bool record_failures;
};

static void *racer(void *arg)
{
    struct race *r = arg;
    pthread_barrier_wait(&r->go);
    for (int i = 0; i < r->rounds; i++) {
        bool probe = false;
        if (ap_breaker_allow(r->s, "shared", r->now, &probe)) {
            atomic_fetch_add(&r->allowed, 1);
            atomic_fetch_add(&r->probes, probe);
            if (r->record_failures)
                ap_breaker_record(r->s, "shared", r->now, false, probe);
        }
    }
    return NULL;
}

static void run_race(struct race *r)
{
    pthread_t t[THREADS];
    pthread_barrier_init(&r->go, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, racer, r), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&r->go);
}

static void test_resilience__breaker_no_thundering_herd(void **state)
{
    (void)state;
    struct changes ch = {0};
    ap_breaker_opts o;
    ap_breaker_opts_init(&o);
    o.half_open_probes = 3;
    o.on_change = on_change;
    o.on_change_ctx = &ch;
    ap_breaker_set *s = breakers(&o);

    /* Many threads failing at once: it opens exactly once, and only 5 results get in before
     * (the rest are let through while closed at most, then refused). */
    struct race r = {.s = s, .now = 1000, .rounds = 2000, .record_failures = true};
    run_race(&r);
    assert_int_equal(ap_breaker_state_get(s, "shared"), AP_BREAKER_OPEN);
    struct infos x = {0};
    ap_breaker_foreach(s, collect, &x);
    assert_int_equal(x.v[0].times_opened, 1);
    assert_true(atomic_load(&r.allowed) < THREADS * 2000);
    assert_int_equal(atomic_load(&r.probes), 0);

    /* Cooldown over: of 8 x 2000 callers racing, exactly 3 are let through, all as probes. */
    struct race h = {.s = s, .now = 1000 + 30000, .rounds = 2000};
    run_race(&h);
    assert_int_equal(atomic_load(&h.allowed), 3);
    assert_int_equal(atomic_load(&h.probes), 3);
    assert_int_equal(ap_breaker_state_get(s, "shared"), AP_BREAKER_HALF_OPEN);
    assert_int_equal(atomic_load(&ch.n), 2); /* closed>open, open>half_open */
    ap_breaker_set_free(s);
}

/* Random traffic on a few deployments from many threads, time moving on: must not crash or
 * lose track (run under ASan/TSan in the full tier). */
struct churn {
    ap_breaker_set *s;
    atomic_llong clock;
    int seed;
};

static void *churner(void *arg)
{
    struct churn *c = arg;
    uint64_t rng = (uint64_t)atomic_fetch_add(&c->clock, 1) * 977;
    static const char *const names[] = {"a/1", "b/2", "c/3", "d/4"};
    for (int i = 0; i < 20000; i++) {
        int64_t now = atomic_fetch_add(&c->clock, 1);
        uint64_t x = ap_retry_rand(&rng);
        const char *d = names[x % 4];
        bool probe;
        if (ap_breaker_allow(c->s, d, now, &probe))
            ap_breaker_record(c->s, d, now + 1, (x >> 8) % 3 != 0, probe);
        if ((x >> 16) % 64 == 0)
            (void)ap_breaker_state_get(c->s, d);
    }
    return NULL;
}

static void count_cb(const ap_breaker_info *info, void *ctx)
{
    (void)info;
    (*(int *)ctx)++;
}

static void test_resilience__breaker_concurrent_churn(void **state)
{
    (void)state;
    ap_breaker_opts o;
    ap_breaker_opts_init(&o);
    o.cooldown_ms = 50;
    o.half_open_probes = 2;
    o.min_requests = 5;
    struct churn c = {.s = breakers(&o)};
    atomic_init(&c.clock, 1);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, churner, &c), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    int n = 0;
    ap_breaker_foreach(c.s, count_cb, &n);
    assert_int_equal(n, 4);
    ap_breaker_set_free(c.s);
}

/* ---- fallback chains ----------------------------------------------------------------------- */

static const char *const chain_yaml = "providers:\n"
                                      "  - name: box\n"
                                      "    type: openai-compatible\n"
                                      "    base_url: http://10.0.0.5:8000/v1\n"
                                      "models:\n"
                                      "  - name: big\n"
                                      "    provider: openai\n"
                                      "    upstream: gpt-4o-2024-08-06\n"
                                      "    fallbacks: [claude-sonnet, qwen, local, review]\n"
                                      "  - name: claude-sonnet\n"
                                      "    provider: anthropic\n"
                                      "    upstream: claude-sonnet-4-20250514\n"
                                      "  - name: qwen\n"
                                      "    provider: box\n"
                                      "    upstream: Qwen/Qwen2.5-VL-7B-Instruct\n"
                                      "    fallbacks: [gpt-4o-mini]\n"
                                      "tasks:\n"
                                      "  - name: invoice\n"
                                      "    model: big\n"
                                      "    prompt: p\n"
                                      "    fallbacks: [qwen, review]\n"
                                      "  - name: describe\n"
                                      "    model: qwen\n"
                                      "    prompt: p\n";

static int clean_env(void **state)
{
    (void)state;
    static const char *const vars[] = {
        "OPENAI_API_KEY",     "ANTHROPIC_API_KEY", "GEMINI_API_KEY",  "OPENAI_BASE_URL",
        "ANTHROPIC_BASE_URL", "GEMINI_BASE_URL",   "APERTURE_CONFIG", "APERTURE_DEFAULT_MODEL",
    };
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        unsetenv(vars[i]);
    return 0;
}

static ap_config *chain_config(void)
{
    ap_config *c = NULL;
    ap_error err = {0};
    if (ap_config_load_buffer(chain_yaml, strlen(chain_yaml), "chain.yaml", NULL, &c, &err) !=
        AP_OK)
        fail_msg("load: %s", err.msg);
    return c;
}

/* Resolve and compare with the expected model names ("review" for the review step). */
static void chain_is(const ap_config *c, const char *task, const char *model, const char *from,
                     const char *const *want, size_t n)
{
    ap_chain ch;
    ap_error err = {0};
    if (ap_config_chain(c, task, model, &ch, &err) != AP_OK)
        fail_msg("chain %s/%s: %s", task ? task : "-", model ? model : "-", err.msg);
    char got[512] = "";
    for (size_t i = 0; i < ch.n_steps; i++) {
        size_t l = strlen(got);
        snprintf(got + l, sizeof(got) - l, "%s%s", i ? "," : "", ch.step[i].model);
    }
    char exp[512] = "";
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(exp);
        snprintf(exp + l, sizeof(exp) - l, "%s%s", i ? "," : "", want[i]);
    }
    if (strcmp(got, exp) != 0)
        fail_msg("chain %s/%s: [%s], expected [%s]", task ? task : "-", model ? model : "-", got,
                 exp);
    if ((from == NULL) != (ch.fallbacks_from == NULL) ||
        (from != NULL && strcmp(from, ch.fallbacks_from) != 0))
        fail_msg("chain %s/%s: from %s, expected %s", task ? task : "-", model ? model : "-",
                 ch.fallbacks_from ? ch.fallbacks_from : "none", from ? from : "none");
}

#define CHAIN(c, task, model, from, ...)                                                           \
    do {                                                                                           \
        static const char *const w_[] = {__VA_ARGS__};                                             \
        chain_is(c, task, model, from, w_, sizeof(w_) / sizeof(w_[0]));                            \
    } while (0)

static void test_resilience__chain_resolution(void **state)
{
    (void)state;
    setenv("OPENAI_API_KEY", "k1", 1);
    setenv("ANTHROPIC_API_KEY", "k2", 1);
    ap_config *c = chain_config();

    /* A model's own chain; a fallback's fallbacks (qwen -> gpt-4o-mini) are not followed. */
    CHAIN(c, NULL, "big", "model", "big", "claude-sonnet", "qwen", "local", "review");
    CHAIN(c, NULL, "qwen", "model", "qwen", "gpt-4o-mini");
    /* A task's chain wins over its model's, also when the request names another model. */
    CHAIN(c, "invoice", NULL, "task", "big", "qwen", "review");
    CHAIN(c, "invoice", "claude-sonnet", "task", "claude-sonnet", "qwen", "review");
    /* A step repeating the first is left out. */
    CHAIN(c, "invoice", "qwen", "task", "qwen", "review");
    /* A task without fallbacks: its model's. */
    CHAIN(c, "describe", NULL, "model", "qwen", "gpt-4o-mini");
    CHAIN(c, "describe", "big", "model", "big", "claude-sonnet", "qwen", "local", "review");
    /* No task, no model: default_model, no fallbacks; a prefix-routed name alone. */
    CHAIN(c, NULL, NULL, NULL, "local");
    CHAIN(c, NULL, "gpt-4o-mini", NULL, "gpt-4o-mini");

    /* What each step carries. */
    ap_chain ch;
    ap_error err = {0};
    assert_int_equal(ap_config_chain(c, NULL, "big", &ch, &err), AP_OK);
    assert_int_equal(ch.n_steps, 5);
    assert_non_null(ch.step[0].model_conf);
    assert_string_equal(ch.step[0].provider->name, "openai");
    assert_string_equal(ch.step[0].upstream, "gpt-4o-2024-08-06");
    assert_string_equal(ch.step[0].deployment, "openai/gpt-4o-2024-08-06");
    assert_false(ch.step[0].review);
    assert_string_equal(ch.step[2].deployment, "box/Qwen/Qwen2.5-VL-7B-Instruct");
    assert_string_equal(ch.step[3].provider->name, "local");
    assert_string_equal(ch.step[3].deployment, "local/local");
    assert_true(ch.step[4].review);
    assert_null(ch.step[4].provider);
    assert_null(ch.step[4].model_conf);
    assert_null(ch.step[4].upstream);
    assert_string_equal(ch.step[4].deployment, "");
    assert_int_equal(ap_config_chain(c, NULL, "gpt-4o-mini", &ch, &err), AP_OK);
    assert_null(ch.step[0].model_conf);
    assert_string_equal(ch.step[0].deployment, "openai/gpt-4o-mini");

    /* Failures leave *out alone. */
    memset(&ch, 0x5a, sizeof(ch));
    ap_chain before = ch;
    assert_int_equal(ap_config_chain(c, NULL, "llava", &ch, &err), AP_ENOTFOUND);
    assert_non_null(strstr(err.msg, "no route for model \"llava\""));
    memset(&err, 0, sizeof(err));
    assert_int_equal(ap_config_chain(c, "nope", NULL, &ch, &err), AP_ENOTFOUND);
    assert_non_null(strstr(err.msg, "no task named \"nope\""));
    memset(&err, 0, sizeof(err));
    assert_int_equal(ap_config_chain(c, NULL, "", &ch, &err), AP_EINVAL);
    assert_memory_equal(&ch, &before, sizeof(ch));
    ap_config_free(c);

    /* Disabled providers: their steps are skipped, the first one included. */
    unsetenv("ANTHROPIC_API_KEY");
    c = chain_config();
    CHAIN(c, NULL, "big", "model", "big", "qwen", "local", "review");
    unsetenv("OPENAI_API_KEY");
    ap_config_free(c);
    c = chain_config();
    CHAIN(c, NULL, "big", "model", "qwen", "local", "review");
    CHAIN(c, NULL, "qwen", "model", "qwen"); /* gpt-4o-mini's openai is disabled */
    /* Nothing left: the message says why the model asked for is unavailable. */
    memset(&err, 0, sizeof(err));
    assert_int_equal(ap_config_chain(c, NULL, "gpt-4o", &ch, &err), AP_ENOTFOUND);
    assert_non_null(strstr(err.msg, "OPENAI_API_KEY"));
    ap_config_free(c);
}

static void test_resilience__chain_in_the_example(void **state)
{
    (void)state;
    ap_config *c = NULL;
    ap_error err = {0};
    setenv("OPENAI_API_KEY", "k", 1);
    if (ap_config_load(AP_SOURCE_DIR "/config/aperture.example.yaml", NULL, &c, &err) != AP_OK)
        fail_msg("example: %s", err.msg);
    /* anthropic and my-vllm have no key here: their steps drop out. */
    CHAIN(c, NULL, "gpt-4o", "model", "gpt-4o", "local", "review");
    CHAIN(c, "invoice_extraction", NULL, "task", "gpt-4o", "review");
    ap_config_free(c);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, clean_env, clean_env)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_resilience__backoff_within_full_jitter_bounds),
        T(test_resilience__backoff_is_seeded_and_bounded),
        T(test_resilience__retry_after_seconds_and_ms),
        T(test_resilience__retry_after_http_date),
        T(test_resilience__retry_should_truth_table),
        T(test_resilience__deadline),
        T(test_resilience__labels),
        T(test_resilience__breaker_opens_at_exactly_n_failures),
        T(test_resilience__breaker_cooldown_then_one_probe_closes),
        T(test_resilience__breaker_bad_probe_reopens),
        T(test_resilience__breaker_several_probes),
        T(test_resilience__breaker_lost_probe_is_replaced),
        T(test_resilience__breaker_error_rate),
        T(test_resilience__breaker_foreach_and_limits),
        T(test_resilience__breaker_no_thundering_herd),
        T(test_resilience__breaker_concurrent_churn),
        T(test_resilience__chain_resolution),
        T(test_resilience__chain_in_the_example),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
