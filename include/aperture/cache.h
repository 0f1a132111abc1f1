/*
 * cache.h - the answer cache: exact and near-duplicate, safe for documents, on an embedded
 * SQLite file (default) or a shared Redis.
 *
 * Keys. The exact key is a SHA-256 the caller computes over everything that shapes an answer:
 * task, model, prompt version (or prompt text hash), preprocessing settings, the request's text
 * parts, and the SHA-256 of each *processed* image (ap_cache_key_builder below): never a URL or
 * the raw upload, so the same picture fetched from two addresses or uploaded in two encodings
 * that normalise to the same bytes shares one key. Each entry also carries the 64-bit pHash of
 * each image and, optionally, a content fingerprint (the SHA-256 of the normalised OCR text of
 * the images).
 *
 * Lookups. ap_cache_get() tries the exact key; on a miss, when the caller allows near matches,
 * it looks for an entry of the same task and "shape" (the exact key computed with the image
 * hashes left out, so the same fields and the same number of images) whose images are all
 * within a Hamming distance of the request's:
 *  - tolerant tasks (describe, classify): candidates come from a multi-index hash over the
 *    first image's pHash (the 64 bits cut into 4 blocks of 16; by pigeonhole a match within t
 *    bits agrees within floor(t/4) bits on some block, so only those buckets are probed; never
 *    a scan of the cache);
 *  - other tasks (extraction, anything with a schema): a near candidate is returned only when
 *    its content fingerprint equals the request's: two invoices printed from the same template,
 *    with other numbers, have pHash distance 0 and different OCR text. Those candidates come
 *    from an exact index on (task, shape, fingerprint), then pass the same pHash test.
 * Every candidate is re-checked against the stored entry (task, shape, every image's distance,
 * expiry) before it is returned.
 *
 * Backends: "sqlite:///path/file.db" (WAL; expired rows reclaimed in the background; the
 * near-duplicate index is kept in this process's memory, rebuilt from the file at open, so
 * rows another process writes are found by exact lookups only) and
 * "redis://[[user]:pass@]host[:port][/db]" (Redis >= 4; native TTLs; the near-duplicate index
 * lives in Redis sets, so every gateway sharing the Redis sees every entry; keys start with
 * "ap:c:"). A Redis that is down at open or goes away later makes every call fail fast with
 * AP_ENETWORK (the gateway then serves without cache, exporting backend_up from
 * ap_cache_stats_get()); a background thread reconnects at most once a second, and the state
 * changes are logged through opts.log_fn, then at most once per log interval while down.
 *
 * Task names are 1..AP_CACHE_MAX_TASK bytes of [A-Za-z0-9_.-] (they become part of Redis key
 * names); anything else is AP_EINVAL.
 *
 * Threading: an ap_cache may be used from many threads at once. Each backend serialises its
 * connection behind one mutex.
 */
#ifndef APERTURE_CACHE_H
#define APERTURE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aperture/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Images per entry that take part in near matching; requests with more match exactly only. */
#define AP_CACHE_MAX_IMAGES 8
/* Largest near_threshold ap_cache_get() accepts (different pictures are some 20-40 apart). */
#define AP_CACHE_MAX_THRESHOLD 32
/* Longest task name, in bytes. */
#define AP_CACHE_MAX_TASK 64

typedef struct ap_cache ap_cache;

typedef struct ap_cache_key {
    uint8_t exact[32]; /* the exact key */
    uint8_t shape[32]; /* the same over everything but the image hashes (near-match group) */
    size_t n_images;   /* images with a pHash below; 0 when none or over the maximum */
    uint64_t phash[AP_CACHE_MAX_IMAGES];
    bool has_content;    /* content fingerprint known */
    uint8_t content[32]; /* SHA-256 of the normalised OCR text of all images */
} ap_cache_key;

/*
 * Incremental key building: feed named fields in a fixed order (the caller's order is part of
 * the key), and images, by processed SHA-256, where they occur in the request. Fields are
 * length-prefixed, so no two different sequences hash alike. Errors are sticky: begin returns
 * NULL when out of memory, and field/image/end then do nothing but report it at end.
 */
typedef struct ap_cache_key_builder ap_cache_key_builder;
/* (transfer full): finished (and freed) by ap_cache_key_end(); NULL when out of memory. */
AP_API ap_cache_key_builder *ap_cache_key_begin(void);
/* name is a NUL-terminated field name ("task", "model", ...); value/len may be NULL/0. */
AP_API void ap_cache_key_field(ap_cache_key_builder *b, const char *name, const char *value,
                               size_t len);
AP_API void ap_cache_key_image(ap_cache_key_builder *b, const uint8_t sha256[32], uint64_t phash);
/*
 * Finish into key (exact, shape, phashes; has_content false) and free b, even on failure.
 * A request with more than AP_CACHE_MAX_IMAGES images gets n_images 0: exact matches only.
 * Fails with AP_ENOMEM or AP_EINTERNAL (OpenSSL); key is then untouched.
 */
AP_API AP_NODISCARD ap_status ap_cache_key_end(ap_cache_key_builder *b, ap_cache_key *key,
                                               ap_error *err);

/*
 * Normalise OCR text and hash it into key->content, setting key->has_content. Normalising:
 * ASCII letters lowercased, each run of whitespace one space (none at the ends), each run of one
 * repeated punctuation character a single one; digits, other punctuation and non-ASCII bytes
 * are kept as they are, so numbers that differ keep different fingerprints. Text that
 * normalises to nothing leaves has_content false (a blank page is no evidence of sameness).
 * Fails with AP_ENOMEM or AP_EINTERNAL (OpenSSL); key is then untouched.
 */
AP_API AP_NODISCARD ap_status ap_cache_key_content(ap_cache_key *key, const char *ocr_text,
                                                   size_t len, ap_error *err);

typedef enum ap_cache_kind {
    AP_CACHE_MISS = 0,
    AP_CACHE_HIT_EXACT = 1,
    AP_CACHE_HIT_NEAR = 2
} ap_cache_kind;

typedef struct ap_cache_hit {
    ap_cache_kind kind;
    int distance; /* near: the largest per-image Hamming distance; exact: 0 */
    char *value;  /* (transfer full): ap_cache_hit_release(); NUL-terminated for convenience */
    size_t len;
    char *meta; /* the metadata stored with the value (transfer full), may be NULL */
    size_t meta_len;
} ap_cache_hit;

/* Called with one line (no newline) when the backend's state changes; see log_interval_ms. */
typedef void (*ap_cache_log_fn)(void *ctx, const char *line);

typedef struct ap_cache_opts {
    const char *url;        /* "sqlite:///path" or "redis://host:port/db" */
    long reap_interval_ms;  /* sqlite: background reclaim period; default 60,000 */
    long timeout_ms;        /* redis: connect and command timeout; default 200 */
    long reconnect_ms;      /* redis: pause between reconnection attempts; default 1,000 */
    size_t max_value_bytes; /* value + meta, refused above (AP_ETOOLARGE); default 8 MiB */
    ap_cache_log_fn log_fn; /* NULL: no logging */
    void *log_ctx;
    long log_interval_ms; /* while the backend is down, repeat the line at most this often;
                             default 60,000 */
} ap_cache_opts;

/* Fill opts with the defaults above and url "sqlite://aperture-cache.db". */
AP_API void ap_cache_opts_init(ap_cache_opts *opts);

/*
 * Open the cache at opts->url (opts is copied; log_ctx must outlive the cache). sqlite
 * creates the file and its schema if needed and fails with AP_EIO when it cannot open it.
 * redis connects once; when the server does not answer, the cache still opens, down (logged,
 * backend_up false), and the background thread keeps trying. AP_EINVAL for a malformed URL.
 */
AP_API AP_NODISCARD ap_status ap_cache_open(const ap_cache_opts *opts, ap_cache **out,
                                            ap_error *err);
/* Stop the background thread and close. NULL is a no-op. */
AP_API void ap_cache_close(ap_cache *c);

/*
 * Look up key for task. near_threshold < 0 disables near matches (0..AP_CACHE_MAX_THRESHOLD
 * otherwise); tolerant says whether the task accepts a near match on pHash alone (otherwise
 * key->has_content must be set and equal to the entry's). AP_OK with hit->kind set
 * (AP_CACHE_MISS on a miss: not an error); AP_ENETWORK when the backend is unreachable;
 * AP_ETOOLARGE for a stored value over max_value_bytes; AP_EINVAL for a bad task or threshold.
 * hit is zeroed on entry, so ap_cache_hit_release() is always safe.
 */
AP_API AP_NODISCARD ap_status ap_cache_get(ap_cache *c, const ap_cache_key *key, const char *task,
                                           int near_threshold, bool tolerant, ap_cache_hit *hit,
                                           ap_error *err);
AP_API void ap_cache_hit_release(ap_cache_hit *hit);

/*
 * Store value (+ optional meta) under key for ttl_s seconds (> 0), replacing what the key held.
 * AP_ETOOLARGE when len + meta_len is over max_value_bytes.
 */
AP_API AP_NODISCARD ap_status ap_cache_put(ap_cache *c, const ap_cache_key *key, const char *task,
                                           const char *value, size_t len, const char *meta,
                                           size_t meta_len, long ttl_s, ap_error *err);

/*
 * Purge: one exact key (64 hex digits, as ap_sha256_hex() prints key->exact), every entry of a
 * task, or everything (both NULL); not both. *n = entries removed (n may be NULL).
 */
AP_API AP_NODISCARD ap_status ap_cache_purge(ap_cache *c, const char *key_hex, const char *task,
                                             long *n, ap_error *err);

typedef struct ap_cache_stats {
    long entries;        /* live entries (sqlite: those not yet reclaimed, as this process
                            counts them) */
    long bytes;          /* value + meta bytes of those; -1 when the backend cannot say (redis) */
    bool backend_up;     /* false while a Redis is unreachable */
    const char *backend; /* static string: "sqlite" or "redis" */
} ap_cache_stats;
/* Fills st; when the backend is down, AP_OK with backend_up false and entries/bytes -1. */
AP_API AP_NODISCARD ap_status ap_cache_stats_get(ap_cache *c, ap_cache_stats *st, ap_error *err);

/* ---- batch dedup (aperture dedup): no cache needed */

typedef struct ap_cache_dedup_item {
    uint8_t sha256[32]; /* of the processed image (ap_prep_result.sha256) */
    uint64_t phash;     /* of the processed image (ap_prep_result.phash) */
} ap_cache_dedup_item;

/*
 * Group n images: two images share a group when their processed SHA-256 are equal (exact) or
 * their pHashes are within threshold bits (near), and groups are closed under both (A~B and B~C
 * put A, B and C together). Near pairs are found with the same multi-index hash as the cache,
 * not by comparing every pair. group[i] (n entries, out) receives the smallest index of image
 * i's group, so group[i] == i marks the first image of each group and n minus the number of
 * such images is how many model calls the duplicates would have cost.
 * AP_EINVAL for a threshold outside 0..AP_CACHE_MAX_THRESHOLD; AP_ENOMEM.
 */
AP_API AP_NODISCARD ap_status ap_cache_dedup(const ap_cache_dedup_item *items, size_t n,
                                             int threshold, size_t *group, ap_error *err);

#ifdef __cplusplus
}
#endif
#endif
