/*
 * cache_int.h (internal) - the store interface behind ap_cache, and what its backends share:
 * entry checks for near candidates, group tags, the phash wire form, clocks and state logging.
 *
 * A store is a vtable (struct ap__store_ops) with a struct ap__store embedded first in each
 * backend's own struct ("super"). cache.c validates arguments (task length, threshold, sizes)
 * before calling a store, so the stores may assume them. Each store is thread-safe on its own.
 */
#ifndef AP_CACHE_INT_H
#define AP_CACHE_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aperture/cache.h"

/* How many near candidates (closest first pHash of first image) are checked against their
 * entries before giving up; every one already lies within the threshold on that image. */
#define AP__CACHE_MAX_CANDIDATES 32

struct ap__store;

struct ap__store_ops {
    const char *name; /* "sqlite", "redis" */
    /* hit is zeroed; near_threshold < 0 means exact only. */
    ap_status (*get)(struct ap__store *s, const ap_cache_key *key, const char *task,
                     int near_threshold, bool tolerant, ap_cache_hit *hit, ap_error *err);
    ap_status (*put)(struct ap__store *s, const ap_cache_key *key, const char *task,
                     const char *value, size_t len, const char *meta, size_t meta_len, long ttl_s,
                     ap_error *err);
    /* At most one of key (32 bytes) and task is non-NULL. */
    ap_status (*purge)(struct ap__store *s, const uint8_t *key, const char *task, long *n,
                       ap_error *err);
    ap_status (*stats)(struct ap__store *s, ap_cache_stats *st, ap_error *err);
    void (*free)(struct ap__store *s);
};

struct ap__store {
    const struct ap__store_ops *ops;
    ap_cache_opts opts; /* defaults filled in; url NULL (the caller's is not kept) */
};

/* Backends. target is what follows "sqlite://" or "redis://". */
ap_status ap__cache_sqlite_open(const char *target, const ap_cache_opts *opts,
                                struct ap__store **out, ap_error *err);
ap_status ap__cache_redis_open(const char *target, const ap_cache_opts *opts,
                               struct ap__store **out, ap_error *err);

/*
 * A stored entry as a near candidate sees it: borrowed views into a row or a reply.
 * phash_be holds n_images codes of 8 bytes, big-endian; content is NULL when none.
 */
struct ap__cache_entry_view {
    const char *task;
    size_t task_len;
    const uint8_t *shape;
    size_t shape_len;
    const uint8_t *phash_be;
    size_t phash_len;
    const uint8_t *content;
    size_t content_len;
};

/*
 * Whether the entry may answer key as a near match at threshold t: same task and shape, the
 * same number (>= 1) of images each within t, and, unless tolerant, equal content fingerprints.
 * On true, *distance is the largest per-image distance.
 */
bool ap__cache_near_ok(const ap_cache_key *key, const char *task, int t, bool tolerant,
                       const struct ap__cache_entry_view *e, int *distance);

/* Group tags: 64-bit names of the near-match groups (task + shape) and of the content groups
 * (task + shape + fingerprint). Collisions only cost time: candidates are always re-checked. */
uint64_t ap__cache_shape_tag(const char *task, const uint8_t shape[32]);
uint64_t ap__cache_content_tag(const char *task, const uint8_t shape[32],
                               const uint8_t content[32]);

void ap__cache_put_be64(uint8_t *p, uint64_t v);
uint64_t ap__cache_get_be64(const uint8_t *p);

/* Wall-clock milliseconds since the epoch (entries outlive the process). */
int64_t ap__cache_wall_ms(void);

/* An absolute deadline for pthread_cond_timedwait, ms from now (CLOCK_REALTIME). */
struct timespec ap__cache_deadline(long ms);

/*
 * Up/down state of a remote backend, for logging: logs the transitions, and while down, one
 * reminder per log_interval_ms. Guarded by the backend's lock.
 */
struct ap__cache_health {
    bool up;
    double down_since_ms, last_log_ms;
    long failed_calls; /* calls answered AP_ENETWORK since the last line */
};
void ap__cache_health_down(struct ap__cache_health *h, const ap_cache_opts *o, const char *what,
                           const char *why);
void ap__cache_health_up(struct ap__cache_health *h, const ap_cache_opts *o, const char *what);
/* calls: how many calls this failure answered with AP_ENETWORK (0: a reconnection attempt). */
void ap__cache_health_fail(struct ap__cache_health *h, const ap_cache_opts *o, const char *what,
                           long calls);

#endif
