/*
 * retry.c - when to retry an upstream attempt and how long to wait first: the status and error
 * rules, full-jitter backoff, the upstream's Retry-After / retry-after-ms (seconds, milliseconds
 * or an HTTP-date), and the per-request deadline. include/aperture/resilience.h is the contract.
 *
 * Full jitter (a uniform draw over the whole [0, backoff] range rather than backoff plus a
 * little noise) is what spreads a crowd of clients that all failed at the same moment: with
 * "equal" or no jitter they come back in waves. The PRNG is splitmix64 over caller-owned
 * state, so tests pin the sequence and no thread shares anything.
 *
 * Nothing here reads a clock; the one use of wall time (a Retry-After date) takes it as an
 * argument.
 */
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "aperture/resilience.h"
#include "core/core.h"

/* A wait longer than this (~24 days) is treated as this: no overflow in callers' sums. */
#define WAIT_MAX_MS ((long)INT32_MAX)

void ap_retry_policy_init(ap_retry_policy *p)
{
    static const int statuses[] = {429, 500, 502, 503, 504};
    memset(p, 0, sizeof(*p));
    p->max_attempts = 3;
    p->base_ms = 500;
    p->cap_ms = 8000;
    p->retry_after_cap_ms = 30000;
    for (size_t i = 0; i < sizeof(statuses) / sizeof(statuses[0]); i++)
        p->on_status[p->n_on_status++] = statuses[i];
    p->on_connect_error = true;
    p->on_timeout = true;
    p->attempt_timeout_ms = 0;
    p->deadline_ms = 0;
}

static bool status_listed(const ap_retry_policy *p, long status)
{
    size_t n = AP_MIN(p->n_on_status, (size_t)AP_RETRY_MAX_STATUS);
    for (size_t i = 0; i < n; i++)
        if (p->on_status[i] == status)
            return true;
    return false;
}

bool ap_retry_transient(const ap_retry_policy *p, ap_status rc, long http_status)
{
    if (AP_NEVER(p == NULL))
        return false;
    switch (rc) {
    case AP_ETIMEOUT:
        return p->on_timeout;
    case AP_ENETWORK:
        return p->on_connect_error;
    case AP_EUPSTREAM:
    case AP_ERATELIMIT:
        return http_status > 0 && status_listed(p, http_status);
    case AP_OK:
        /* A call the net layer completed with an HTTP error status. */
        return http_status >= 400 && status_listed(p, http_status);
    default:
        /* Deterministic failures (bad request, auth, too large): the retry would fail alike. */
        return false;
    }
}

bool ap_retry_should(const ap_retry_policy *p, int attempt, ap_status rc, long http_status,
                     bool client_gone, bool bytes_sent_to_client)
{
    if (AP_NEVER(p == NULL))
        return false;
    /* Nobody to answer, or an answer already half-delivered that a retry would garble. */
    if (client_gone || bytes_sent_to_client)
        return false;
    if (attempt >= p->max_attempts)
        return false;
    return ap_retry_transient(p, rc, http_status);
}

uint64_t ap_retry_rand(uint64_t *state)
{
    /* splitmix64: a Weyl sequence through a 64-bit finaliser; every seed gives a full period. */
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

/* min(cap, base * 2^(attempt-1)) without overflow. */
static long backoff_bound(const ap_retry_policy *p, int attempt)
{
    long cap = p->cap_ms > 0 ? p->cap_ms : 0;
    long hi = p->base_ms > 0 ? AP_MIN(p->base_ms, cap) : 0;
    for (int i = 1; i < attempt && hi > 0 && hi < cap; i++)
        hi = hi > cap / 2 ? cap : hi * 2;
    return hi;
}

/* ---- Retry-After ----------------------------------------------------------------------------- */

/* A non-negative decimal number, a fraction allowed, surrounded by optional blanks. */
static bool parse_number(const char *s, double *out)
{
    while (*s == ' ' || *s == '\t')
        s++;
    if (!isdigit((unsigned char)*s) && !(*s == '.' && isdigit((unsigned char)s[1])))
        return false;
    double v = 0;
    for (; isdigit((unsigned char)*s); s++)
        v = v * 10 + (*s - '0');
    if (*s == '.') {
        double f = 0.1;
        for (s++; isdigit((unsigned char)*s); s++, f /= 10)
            v += (*s - '0') * f;
    }
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s != '\0' || !isfinite(v))
        return false;
    *out = v;
    return true;
}

static long clamp_ms(double ms)
{
    if (!(ms > 0))
        return 0;
    return ms >= (double)WAIT_MAX_MS ? WAIT_MAX_MS : (long)ceil(ms);
}

/* A cursor over a date string. */
struct cur {
    const char *s;
};

static bool cur_char(struct cur *c, char ch)
{
    if (*c->s != ch)
        return false;
    c->s++;
    return true;
}

/* Exactly n digits (n <= 4). */
static bool cur_digits(struct cur *c, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (!isdigit((unsigned char)c->s[i]))
            return false;
        v = v * 10 + (c->s[i] - '0');
    }
    c->s += n;
    *out = v;
    return true;
}

/* "Jan".."Dec" -> 1..12. HTTP dates are case-sensitive; any case is accepted. */
static bool cur_month(struct cur *c, int *out)
{
    static const char names[] = "janfebmaraprmayjunjulaugsepoctnovdec";
    for (int m = 0; m < 12; m++) {
        const char *n = names + 3 * m;
        if (tolower((unsigned char)c->s[0]) == n[0] && tolower((unsigned char)c->s[1]) == n[1] &&
            tolower((unsigned char)c->s[2]) == n[2]) {
            c->s += 3;
            *out = m + 1;
            return true;
        }
    }
    return false;
}

/* "HH:MM:SS" */
static bool cur_time(struct cur *c, int *h, int *mi, int *sec)
{
    return cur_digits(c, 2, h) && cur_char(c, ':') && cur_digits(c, 2, mi) && cur_char(c, ':') &&
           cur_digits(c, 2, sec) && *h <= 23 && *mi <= 59 && *sec <= 60;
}

static bool is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Leap years in [1, y]. */
static long leaps_through(int y)
{
    return (long)y / 4 - (long)y / 100 + (long)y / 400;
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian), or false for a date that does not exist. */
static bool days_since_epoch(int y, int m, int d, int64_t *out)
{
    static const int before[12] = {0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334};
    static const int len[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1900 || y > 9999 || m < 1 || m > 12 || d < 1)
        return false;
    if (d > len[m - 1] + (m == 2 && is_leap(y)))
        return false;
    int64_t days = (int64_t)365 * (y - 1970) + (leaps_through(y - 1) - leaps_through(1969));
    days += before[m - 1] + (m > 2 && is_leap(y)) + (d - 1);
    *out = days;
    return true;
}

/* The year now_unix_ms falls in (for RFC 850's two-digit years). */
static int year_of(int64_t now_unix_ms)
{
    int64_t days = now_unix_ms / 86400000;
    int y = 1970;
    int64_t d0;
    while (y < 9999 && days_since_epoch(y + 1, 1, 1, &d0) && d0 <= days)
        y++;
    return y;
}

/*
 * An HTTP-date (RFC 9110 5.6.7: IMF-fixdate, or the obsolete RFC 850 and asctime forms) as
 * milliseconds since the epoch. The weekday is skipped, not checked.
 */
static bool parse_http_date(const char *s, int64_t now_unix_ms, int64_t *out)
{
    struct cur c = {s};
    int y = 0, mo = 0, d = 0, h = 0, mi = 0, sec = 0;
    while (*c.s == ' ')
        c.s++;
    while (isalpha((unsigned char)*c.s))
        c.s++;
    if (cur_char(&c, ',')) {
        if (!cur_char(&c, ' '))
            return false;
        if (isdigit((unsigned char)c.s[0]) && isdigit((unsigned char)c.s[1]) && c.s[2] == '-') {
            /* RFC 850: "06-Nov-94 08:49:37 GMT"; a year over 50 ahead is in the last century. */
            int yy;
            if (!(cur_digits(&c, 2, &d) && cur_char(&c, '-') && cur_month(&c, &mo) &&
                  cur_char(&c, '-') && cur_digits(&c, 2, &yy)))
                return false;
            int now_y = year_of(now_unix_ms);
            y = now_y - now_y % 100 + yy;
            if (y > now_y + 50)
                y -= 100;
        } else if (!(cur_digits(&c, 2, &d) && cur_char(&c, ' ') && cur_month(&c, &mo) &&
                     cur_char(&c, ' ') && cur_digits(&c, 4, &y))) {
            return false;
        }
        if (!(cur_char(&c, ' ') && cur_time(&c, &h, &mi, &sec) && cur_char(&c, ' ') &&
              cur_char(&c, 'G') && cur_char(&c, 'M') && cur_char(&c, 'T')))
            return false;
    } else {
        /* asctime: "Nov  6 08:49:37 1994" (the day padded with a space). */
        if (!(cur_char(&c, ' ') && cur_month(&c, &mo) && cur_char(&c, ' ')))
            return false;
        if (*c.s == ' ') {
            c.s++;
            if (!cur_digits(&c, 1, &d))
                return false;
        } else if (!cur_digits(&c, 2, &d)) {
            return false;
        }
        if (!(cur_char(&c, ' ') && cur_time(&c, &h, &mi, &sec) && cur_char(&c, ' ') &&
              cur_digits(&c, 4, &y)))
            return false;
    }
    while (*c.s == ' ' || *c.s == '\t')
        c.s++;
    int64_t days;
    if (*c.s != '\0' || !days_since_epoch(y, mo, d, &days))
        return false;
    *out = ((days * 24 + h) * 60 + mi) * (int64_t)60000 + (int64_t)sec * 1000;
    return true;
}

bool ap_retry_after_parse(const char *retry_after, const char *retry_after_ms, int64_t now_unix_ms,
                          long *out_ms)
{
    double v;
    if (retry_after_ms != NULL && parse_number(retry_after_ms, &v)) {
        *out_ms = clamp_ms(v);
        return true;
    }
    if (retry_after == NULL)
        return false;
    if (parse_number(retry_after, &v)) {
        *out_ms = clamp_ms(v * 1000.0);
        return true;
    }
    int64_t at;
    if (parse_http_date(retry_after, now_unix_ms, &at)) {
        *out_ms = clamp_ms((double)(at - now_unix_ms));
        return true;
    }
    return false;
}

long ap_retry_delay_ms(const ap_retry_policy *p, int attempt, const char *retry_after,
                       const char *retry_after_ms, int64_t now_unix_ms, uint64_t *rng_state)
{
    if (AP_NEVER(p == NULL))
        return 0;
    long ms;
    if (ap_retry_after_parse(retry_after, retry_after_ms, now_unix_ms, &ms))
        return AP_MIN(ms, AP_MAX(p->retry_after_cap_ms, 0L));
    long hi = backoff_bound(p, attempt < 1 ? 1 : attempt);
    if (hi <= 0)
        return 0;
    if (rng_state == NULL)
        return hi / 2;
    /* The modulo bias is below 2^-32 for any bound a policy can hold. */
    return (long)(ap_retry_rand(rng_state) % ((uint64_t)hi + 1));
}

/* ---- the deadline ---------------------------------------------------------------------------- */

long ap_retry_attempt_timeout_ms(const ap_retry_policy *p, long elapsed_ms,
                                 long provider_timeout_ms)
{
    long t = provider_timeout_ms > 0 ? provider_timeout_ms : LONG_MAX;
    if (AP_NEVER(p == NULL))
        return t;
    if (p->attempt_timeout_ms > 0)
        t = AP_MIN(t, p->attempt_timeout_ms);
    if (p->deadline_ms > 0) {
        if (elapsed_ms >= p->deadline_ms)
            return 0;
        t = AP_MIN(t, p->deadline_ms - AP_MAX(elapsed_ms, 0L));
    }
    return t;
}

bool ap_retry_fits_deadline(const ap_retry_policy *p, long elapsed_ms, long delay_ms)
{
    if (AP_NEVER(p == NULL) || p->deadline_ms <= 0)
        return true;
    elapsed_ms = AP_MAX(elapsed_ms, 0L);
    delay_ms = AP_MAX(delay_ms, 0L);
    /* elapsed + delay < deadline, written so it cannot overflow. */
    return elapsed_ms < p->deadline_ms && delay_ms < p->deadline_ms - elapsed_ms;
}

/* ---- labels ---------------------------------------------------------------------------------- */

const char *ap_retry_reason(ap_status rc, long http_status)
{
    if (rc == AP_ETIMEOUT)
        return "timeout";
    if (rc == AP_ENETWORK)
        return "connect_error";
    if (http_status == 429)
        return "http_429";
    if (http_status >= 500 && http_status <= 599)
        return "http_5xx";
    if (http_status >= 400 && http_status <= 499)
        return "http_4xx";
    return "other";
}

const char *ap_fallback_reason_name(ap_fallback_reason r)
{
    switch (r) {
    case AP_FALLBACK_ERROR:
        return "error";
    case AP_FALLBACK_BREAKER_OPEN:
        return "breaker_open";
    case AP_FALLBACK_REFUSAL:
        return "refusal";
    case AP_FALLBACK_INVALID_OUTPUT:
        return "invalid_output";
    case AP_FALLBACK_FAILED_CHECKS:
        return "failed_checks";
    case AP_FALLBACK_DEADLINE:
        return "deadline";
    }
    return "unknown";
}
