/*
 * cache.c - the public ap_cache API: options and URL dispatch to a store, argument checks, and
 * what the stores share (near-candidate checks, group tags, clocks, up/down logging).
 *
 * Everything a caller passes is checked here once, so the stores can trust task names (short,
 * [A-Za-z0-9_.-], safe inside Redis key names), thresholds and sizes.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aperture/cache.h"
#include "aperture/hash.h"
#include "cache/cache_int.h"
#include "core/core.h"

struct ap_cache {
    struct ap__store *store;
};

void ap_cache_opts_init(ap_cache_opts *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->url = "sqlite://aperture-cache.db";
    opts->reap_interval_ms = 60000;
    opts->timeout_ms = 200;
    opts->reconnect_ms = 1000;
    opts->max_value_bytes = 8u << 20;
    opts->log_interval_ms = 60000;
}

/* Fill the zero fields of o with the defaults. */
static void opts_defaults(ap_cache_opts *o)
{
    ap_cache_opts d;
    ap_cache_opts_init(&d);
    if (o->reap_interval_ms <= 0)
        o->reap_interval_ms = d.reap_interval_ms;
    if (o->timeout_ms <= 0)
        o->timeout_ms = d.timeout_ms;
    if (o->reconnect_ms <= 0)
        o->reconnect_ms = d.reconnect_ms;
    if (o->max_value_bytes == 0)
        o->max_value_bytes = d.max_value_bytes;
    if (o->log_interval_ms <= 0)
        o->log_interval_ms = d.log_interval_ms;
}

ap_status ap_cache_open(const ap_cache_opts *opts, ap_cache **out, ap_error *err)
{
    static const char sqlite_scheme[] = "sqlite://", redis_scheme[] = "redis://";
    struct ap__store *store = NULL;
    ap_cache_opts o;
    ap_status rc;

    if (AP_NEVER(opts == NULL || out == NULL))
        return ap_error_set(err, AP_EINVAL, "cache: null options");
    if (opts->url == NULL)
        return ap_error_set(err, AP_EINVAL, "cache: no url");
    o = *opts;
    opts_defaults(&o);
    if (strncmp(o.url, sqlite_scheme, sizeof(sqlite_scheme) - 1) == 0)
        rc = ap__cache_sqlite_open(o.url + sizeof(sqlite_scheme) - 1, &o, &store, err);
    else if (strncmp(o.url, redis_scheme, sizeof(redis_scheme) - 1) == 0)
        rc = ap__cache_redis_open(o.url + sizeof(redis_scheme) - 1, &o, &store, err);
    else
        return ap_error_set(err, AP_EINVAL,
                            "cache: url \"%s\" is neither sqlite://PATH nor redis://HOST", o.url);
    if (rc != AP_OK)
        return rc;
    ap_cache *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        store->ops->free(store);
        return ap_error_set(err, AP_ENOMEM, "cache: out of memory");
    }
    c->store = store;
    *out = c;
    return AP_OK;
}

void ap_cache_close(ap_cache *c)
{
    if (c == NULL)
        return;
    c->store->ops->free(c->store);
    free(c);
}

/* Task names end up inside Redis key names, between ':' separators: keep them plain. */
static ap_status check_task(const char *task, ap_error *err)
{
    if (task == NULL)
        return ap_error_set(err, AP_EINVAL, "cache: no task");
    size_t len = strlen(task);
    if (len == 0 || len > AP_CACHE_MAX_TASK)
        return ap_error_set(err, AP_EINVAL, "cache: task \"%.*s\" is not 1..%d bytes",
                            (int)AP_MIN(len, 80), task, AP_CACHE_MAX_TASK);
    for (size_t i = 0; i < len; i++) {
        char ch = task[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '-' || ch == '.'))
            return ap_error_set(err, AP_EINVAL,
                                "cache: task \"%s\" has a byte other than [A-Za-z0-9_.-]", task);
    }
    return AP_OK;
}

ap_status ap_cache_get(ap_cache *c, const ap_cache_key *key, const char *task, int near_threshold,
                       bool tolerant, ap_cache_hit *hit, ap_error *err)
{
    ap_status rc;

    if (AP_NEVER(hit == NULL))
        return ap_error_set(err, AP_EINVAL, "cache: null hit");
    memset(hit, 0, sizeof(*hit));
    if (AP_NEVER(c == NULL || key == NULL))
        return ap_error_set(err, AP_EINVAL, "cache: null cache or key");
    if ((rc = check_task(task, err)) != AP_OK)
        return rc;
    if (near_threshold > AP_CACHE_MAX_THRESHOLD)
        return ap_error_set(err, AP_EINVAL, "cache: near threshold %d is over %d", near_threshold,
                            AP_CACHE_MAX_THRESHOLD);
    if (AP_NEVER(key->n_images > AP_CACHE_MAX_IMAGES))
        return ap_error_set(err, AP_EINVAL, "cache: key has %zu images", key->n_images);
    /* Nothing to compare: exact only. */
    if (key->n_images == 0 || (!tolerant && !key->has_content))
        near_threshold = -1;
    if (near_threshold < 0)
        near_threshold = -1;
    rc = c->store->ops->get(c->store, key, task, near_threshold, tolerant, hit, err);
    if (rc != AP_OK)
        ap_cache_hit_release(hit);
    return rc;
}

void ap_cache_hit_release(ap_cache_hit *hit)
{
    if (hit == NULL)
        return;
    free(hit->value);
    free(hit->meta);
    memset(hit, 0, sizeof(*hit));
}

ap_status ap_cache_put(ap_cache *c, const ap_cache_key *key, const char *task, const char *value,
                       size_t len, const char *meta, size_t meta_len, long ttl_s, ap_error *err)
{
    ap_status rc;

    if (AP_NEVER(c == NULL || key == NULL || (value == NULL && len != 0) ||
                 (meta == NULL && meta_len != 0)))
        return ap_error_set(err, AP_EINVAL, "cache: null cache, key or value");
    if ((rc = check_task(task, err)) != AP_OK)
        return rc;
    if (ttl_s <= 0 || ttl_s > 10L * 365 * 24 * 3600)
        return ap_error_set(err, AP_EINVAL, "cache: ttl %ld s is not 1 s..10 years", ttl_s);
    if (AP_NEVER(key->n_images > AP_CACHE_MAX_IMAGES))
        return ap_error_set(err, AP_EINVAL, "cache: key has %zu images", key->n_images);
    size_t max = c->store->opts.max_value_bytes;
    if (len > max || meta_len > max - len)
        return ap_error_set(err, AP_ETOOLARGE, "cache: value of %zu bytes is over the limit of %zu",
                            len + meta_len, max);
    return c->store->ops->put(c->store, key, task, value ? value : "", len, meta, meta_len, ttl_s,
                              err);
}

static int hex_nibble(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

ap_status ap_cache_purge(ap_cache *c, const char *key_hex, const char *task, long *n, ap_error *err)
{
    uint8_t key[32];
    long removed = 0;
    ap_status rc;

    if (AP_NEVER(c == NULL))
        return ap_error_set(err, AP_EINVAL, "cache: null cache");
    if (key_hex != NULL && task != NULL)
        return ap_error_set(err, AP_EINVAL, "cache: purge takes a key or a task, not both");
    if (key_hex != NULL) {
        if (strlen(key_hex) != 64)
            return ap_error_set(err, AP_EINVAL, "cache: key \"%.80s\" is not 64 hex digits",
                                key_hex);
        for (int i = 0; i < 32; i++) {
            int hi = hex_nibble(key_hex[2 * i]), lo = hex_nibble(key_hex[2 * i + 1]);
            if (hi < 0 || lo < 0)
                return ap_error_set(err, AP_EINVAL, "cache: key \"%s\" is not 64 hex digits",
                                    key_hex);
            key[i] = (uint8_t)(hi << 4 | lo);
        }
    }
    if (task != NULL && (rc = check_task(task, err)) != AP_OK)
        return rc;
    rc = c->store->ops->purge(c->store, key_hex ? key : NULL, task, &removed, err);
    if (rc == AP_OK && n != NULL)
        *n = removed;
    return rc;
}

ap_status ap_cache_stats_get(ap_cache *c, ap_cache_stats *st, ap_error *err)
{
    ap_cache_stats s = {0};
    ap_status rc;

    if (AP_NEVER(c == NULL || st == NULL))
        return ap_error_set(err, AP_EINVAL, "cache: null cache or stats");
    s.backend = c->store->ops->name;
    rc = c->store->ops->stats(c->store, &s, err);
    if (rc == AP_OK)
        *st = s;
    return rc;
}

/* ---- shared by the stores */

void ap__cache_put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

uint64_t ap__cache_get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

bool ap__cache_near_ok(const ap_cache_key *key, const char *task, int t, bool tolerant,
                       const struct ap__cache_entry_view *e, int *distance)
{
    size_t task_len = strlen(task);
    int worst = 0;

    if (e->task_len != task_len || memcmp(e->task, task, task_len) != 0)
        return false;
    if (e->shape_len != 32 || memcmp(e->shape, key->shape, 32) != 0)
        return false;
    if (key->n_images == 0 || e->phash_len != key->n_images * 8)
        return false;
    for (size_t i = 0; i < key->n_images; i++) {
        int d = ap_hamming64(key->phash[i], ap__cache_get_be64(e->phash_be + 8 * i));
        if (d > t)
            return false;
        worst = AP_MAX(worst, d);
    }
    /* The document rule: a template's copies look alike; only equal text makes them equal. */
    if (!tolerant && (!key->has_content || e->content == NULL || e->content_len != 32 ||
                      memcmp(e->content, key->content, 32) != 0))
        return false;
    *distance = worst;
    return true;
}

/* splitmix64's finaliser: every input bit reaches every output bit. */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t ap__cache_shape_tag(const char *task, const uint8_t shape[32])
{
    return mix64(ap__fnv1a(task, strlen(task)) ^ ap__cache_get_be64(shape));
}

uint64_t ap__cache_content_tag(const char *task, const uint8_t shape[32], const uint8_t content[32])
{
    return mix64(ap__cache_shape_tag(task, shape) ^ ap__cache_get_be64(content));
}

int64_t ap__cache_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct timespec ap__cache_deadline(long ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

static void logf_(const ap_cache_opts *o, const char *fmt, ...) AP_PRINTF(2, 3);
static void logf_(const ap_cache_opts *o, const char *fmt, ...)
{
    char line[512];
    va_list ap;

    if (o->log_fn == NULL)
        return;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    o->log_fn(o->log_ctx, line);
}

void ap__cache_health_down(struct ap__cache_health *h, const ap_cache_opts *o, const char *what,
                           const char *why)
{
    double now = ap__now_ms();
    if (!h->up)
        return;
    h->up = false;
    h->down_since_ms = h->last_log_ms = now;
    h->failed_calls = 0;
    logf_(o, "cache: %s unreachable (%s); serving without cache", what, why);
}

void ap__cache_health_fail(struct ap__cache_health *h, const ap_cache_opts *o, const char *what,
                           long calls)
{
    double now = ap__now_ms();
    h->failed_calls += calls;
    if (h->up || now - h->last_log_ms < (double)o->log_interval_ms)
        return;
    logf_(o, "cache: %s still unreachable after %.0f s; %ld calls served without cache", what,
          (now - h->down_since_ms) / 1e3, h->failed_calls);
    h->last_log_ms = now;
    h->failed_calls = 0;
}

void ap__cache_health_up(struct ap__cache_health *h, const ap_cache_opts *o, const char *what)
{
    if (h->up)
        return;
    h->up = true;
    logf_(o, "cache: %s reconnected after %.1f s", what, (ap__now_ms() - h->down_since_ms) / 1e3);
}
