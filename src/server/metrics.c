/*
 * metrics.c - a small Prometheus registry. Families are declared in a table (name, type, help,
 * histogram buckets); series hang off them in insertion order.
 */
#include <math.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "server/metrics.h"

enum kind { COUNTER, GAUGE, HISTOGRAM };

static const double dur_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                     0.5,   1,      2.5,   5,    10,    30,   60};
static const double tok_buckets[] = {64, 128, 256, 512, 768, 1024, 1536, 2048, 4096, 8192, 16384};

static const struct family_def {
    const char *name;
    enum kind kind;
    const char *help;
    const double *buckets;
    size_t n_buckets;
} defs[] = {
    {"aperture_requests_total", COUNTER, "Requests by endpoint, model and HTTP status.", 0, 0},
    {"aperture_request_duration_seconds", HISTOGRAM, "Whole-request latency.", dur_buckets,
     sizeof(dur_buckets) / sizeof(dur_buckets[0])},
    {"aperture_upstream_duration_seconds", HISTOGRAM, "Upstream provider call latency.",
     dur_buckets, sizeof(dur_buckets) / sizeof(dur_buckets[0])},
    {"aperture_preprocess_duration_seconds", HISTOGRAM, "Image preprocessing time per image.",
     dur_buckets, sizeof(dur_buckets) / sizeof(dur_buckets[0])},
    {"aperture_image_tokens", HISTOGRAM, "Estimated image tokens per image after preprocessing.",
     tok_buckets, sizeof(tok_buckets) / sizeof(tok_buckets[0])},
    {"aperture_image_tokens_saved_total", COUNTER, "Image tokens saved by preprocessing.", 0, 0},
    {"aperture_cost_usd_total", COUNTER, "USD spent at list prices, from provider usage.", 0, 0},
    {"aperture_image_bytes_total", COUNTER, "Image bytes in (as received) and out (as sent).", 0,
     0},
    {"aperture_inflight_requests", GAUGE, "Requests being handled now.", 0, 0},
    {"aperture_cache_requests_total", COUNTER, "Cache lookups by result.", 0, 0},
    {"aperture_cache_entries", GAUGE, "Entries in the cache.", 0, 0},
    {"aperture_cache_bytes", GAUGE, "Bytes of cached answers.", 0, 0},
    {"aperture_cache_saved_usd_total", COUNTER, "USD not spent thanks to cache hits.", 0, 0},
    {"aperture_cache_backend_up", GAUGE, "1 when the cache backend answers, else 0.", 0, 0},
    {"aperture_retries_total", COUNTER, "Upstream attempts retried, by deployment and reason.", 0,
     0},
    {"aperture_fallbacks_total", COUNTER, "Fallbacks from one chain step to the next.", 0, 0},
    {"aperture_breaker_state", GAUGE, "Circuit breaker: 0 closed, 1 open, 2 half-open.", 0, 0},
    {"aperture_ratelimit_queue_depth", GAUGE, "Requests waiting for a provider's rate limits.", 0,
     0},
    {"aperture_provider_inflight", GAUGE, "Upstream calls in flight per rate-limited provider.", 0,
     0},
    {"aperture_ratelimit_refused_total", COUNTER,
     "Attempts refused by a provider's limits (queue full or waited too long).", 0, 0},
    {"aperture_route_total", COUNTER, "Requests by the routing rule that decided them.", 0, 0},
    {"aperture_two_stage_total", COUNTER, "Two-stage classifications, by class and full run.", 0,
     0},
    {"aperture_client_gone_total", COUNTER,
     "Failed attempts not retried because the client had gone.", 0, 0},
    {"aperture_review_items_total", COUNTER, "Requests stored for human review.", 0, 0},
    {"aperture_review_resolved_total", COUNTER, "Review items resolved or rejected.", 0, 0},
};
#define N_FAMILIES (sizeof(defs) / sizeof(defs[0]))

struct series {
    char *labels; /* rendered: key="value",... (may be "") */
    double value; /* counter/gauge; histogram: sum */
    unsigned long long count;
    unsigned long long *bucket; /* histogram: cumulative at render time */
    struct series *next;
};

struct ap__metrics {
    pthread_mutex_t mu;
    struct series *head[N_FAMILIES], *tail[N_FAMILIES];
};

struct ap__metrics *ap__metrics_new(void)
{
    struct ap__metrics *m = ap__xcalloc(1, sizeof(*m));
    pthread_mutex_init(&m->mu, NULL);
    return m;
}

void ap__metrics_free(struct ap__metrics *m)
{
    if (m == NULL)
        return;
    for (size_t f = 0; f < N_FAMILIES; f++) {
        struct series *s = m->head[f];
        while (s) {
            struct series *n = s->next;
            free(s->labels);
            free(s->bucket);
            free(s);
            s = n;
        }
    }
    pthread_mutex_destroy(&m->mu);
    free(m);
}

static int family(const char *name)
{
    for (size_t f = 0; f < N_FAMILIES; f++)
        if (strcmp(defs[f].name, name) == 0)
            return (int)f;
    return -1;
}

/* key="value" pairs, values escaped per the exposition format. */
static void render_labels(const char *const *labels, char *buf, size_t cap)
{
    size_t off = 0;
    buf[0] = '\0';
    for (size_t i = 0; labels && labels[i] && labels[i + 1]; i += 2) {
        int n = snprintf(buf + off, cap - off, "%s%s=\"", off ? "," : "", labels[i]);
        if (n < 0 || (size_t)n >= cap - off)
            return;
        off += (size_t)n;
        for (const char *v = labels[i + 1]; *v && off + 3 < cap; v++) {
            if (*v == '"' || *v == '\\') {
                buf[off++] = '\\';
                buf[off++] = *v;
            } else if (*v == '\n') {
                buf[off++] = '\\';
                buf[off++] = 'n';
            } else {
                buf[off++] = *v;
            }
        }
        if (off + 2 >= cap)
            return;
        buf[off++] = '"';
        buf[off] = '\0';
    }
}

static struct series *lookup(struct ap__metrics *m, int f, const char *const *labels)
{
    char key[512];
    render_labels(labels, key, sizeof(key));
    for (struct series *s = m->head[f]; s; s = s->next)
        if (strcmp(s->labels, key) == 0)
            return s;
    struct series *s = ap__xcalloc(1, sizeof(*s));
    s->labels = strdup(key);
    if (s->labels == NULL)
        abort();
    if (defs[f].kind == HISTOGRAM)
        s->bucket = ap__xcalloc(defs[f].n_buckets, sizeof(*s->bucket));
    if (m->tail[f])
        m->tail[f]->next = s;
    else
        m->head[f] = s;
    m->tail[f] = s;
    return s;
}

static void update(struct ap__metrics *m, const char *name, const char *const *labels, double v,
                   int op)
{
    int f = family(name);
    if (AP_NEVER(f < 0) || !isfinite(v))
        return;
    pthread_mutex_lock(&m->mu);
    struct series *s = lookup(m, f, labels);
    if (op == 0) {
        s->value += v;
    } else if (op == 1) {
        s->value = v;
    } else {
        s->value += v;
        s->count++;
        for (size_t b = 0; b < defs[f].n_buckets; b++)
            if (v <= defs[f].buckets[b]) {
                s->bucket[b]++;
                break;
            }
    }
    pthread_mutex_unlock(&m->mu);
}

void ap__metrics_add(struct ap__metrics *m, const char *name, const char *const *labels, double v)
{
    update(m, name, labels, v, 0);
}

void ap__metrics_set(struct ap__metrics *m, const char *name, const char *const *labels, double v)
{
    update(m, name, labels, v, 1);
}

void ap__metrics_observe(struct ap__metrics *m, const char *name, const char *const *labels,
                         double v)
{
    update(m, name, labels, v, 2);
}

struct out {
    char *buf;
    size_t len, cap;
};

static void emit(struct out *o, const char *fmt, ...) AP_PRINTF(2, 3);
static void emit(struct out *o, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0)
            return;
        if ((size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        o->cap = o->cap * 2 + (size_t)n;
        char *nb = realloc(o->buf, o->cap);
        if (nb == NULL)
            abort();
        o->buf = nb;
    }
}

char *ap__metrics_render(struct ap__metrics *m, size_t *len)
{
    struct out o = {ap__xmalloc(8192), 0, 8192};
    o.buf[0] = '\0';
    static const char *const kinds[] = {"counter", "gauge", "histogram"};
    pthread_mutex_lock(&m->mu);
    for (size_t f = 0; f < N_FAMILIES; f++) {
        const struct family_def *d = &defs[f];
        emit(&o, "# HELP %s %s\n# TYPE %s %s\n", d->name, d->help, d->name, kinds[d->kind]);
        for (struct series *s = m->head[f]; s; s = s->next) {
            const char *sep = s->labels[0] ? "," : "";
            if (d->kind != HISTOGRAM) {
                if (s->labels[0])
                    emit(&o, "%s{%s} %.17g\n", d->name, s->labels, s->value);
                else
                    emit(&o, "%s %.17g\n", d->name, s->value);
                continue;
            }
            unsigned long long cum = 0;
            for (size_t b = 0; b < d->n_buckets; b++) {
                cum += s->bucket[b];
                emit(&o, "%s_bucket{%s%sle=\"%g\"} %llu\n", d->name, s->labels, sep, d->buckets[b],
                     cum);
            }
            emit(&o, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", d->name, s->labels, sep, s->count);
            if (s->labels[0])
                emit(&o, "%s_sum{%s} %.17g\n%s_count{%s} %llu\n", d->name, s->labels, s->value,
                     d->name, s->labels, s->count);
            else
                emit(&o, "%s_sum %.17g\n%s_count %llu\n", d->name, s->value, d->name, s->count);
        }
    }
    pthread_mutex_unlock(&m->mu);
    *len = o.len;
    return o.buf;
}
