/*
 * cache.h - the answer cache: exact and near-duplicate, safe for documents, on an embedded
 * SQLite file (default) or a shared Redis.
 *
 * Keys. The exact key is a SHA-256 the caller computes over everything that shapes an answer:
 * task, model, prompt version (or prompt text hash), preprocessing settings, the request's text
 * parts, and the SHA-256 of each *processed* image (ap_cache_key_builder below). Each entry also
 * carries the 64-bit pHash of each image and, optionally, a content fingerprint (the SHA-256 of
 * the normalised OCR text of the images).
 *
 * Lookups. ap_cache_get() tries the exact key; on a miss, when the caller allows near matches,
 * it finds entries of the same task and "shape" (the exact key computed with image hashes left
 * out) whose images are all within a Hamming distance of the request's, through a multi-index
 * hash over the pHashes (the 64 bits cut into 4 blocks of 16; by pigeonhole a match within t
 * bits agrees within floor(t/4) bits on some block, so only those buckets are probed; never a
 * scan). For tasks that are not tolerant (extraction, anything with a schema), a candidate is
 * returned only when its content fingerprint equals the request's: two invoices printed from
 * the same template, with other numbers, have pHash distance 0 and different OCR text.
 *
 * Backends: "sqlite:///path/file.db" (WAL; expired rows reclaimed in the background) and
 * "redis://host:port/db" (native TTLs; the near-duplicate index lives in Redis sets, so every
 * gateway sharing the Redis sees every entry). A Redis that goes away makes every call fail
 * fast with AP_ENETWORK (the gateway then serves without cache) and is reconnected at most once
 * per second, in the background of calls.
 *
 * Threading: an ap_cache may be used from many threads at once.
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

#define AP_CACHE_MAX_IMAGES 8

typedef struct ap_cache ap_cache;

typedef struct ap_cache_key {
    uint8_t exact[32];   /* the exact key */
    uint8_t shape[32];   /* the same over everything but the image hashes (near-match group) */
    size_t n_images;
    uint64_t phash[AP_CACHE_MAX_IMAGES];
    bool has_content;    /* content fingerprint known */
    uint8_t content[32]; /* SHA-256 of the normalised OCR text of all images */
} ap_cache_key;

/* Incremental key building: feed named fields in a fixed order; images by processed SHA-256. */
typedef struct ap_cache_key_builder ap_cache_key_builder;
AP_API ap_cache_key_builder *ap_cache_key_begin(void);
AP_API void ap_cache_key_field(ap_cache_key_builder *b, const char *name, const char *value,
                               size_t len);
AP_API void ap_cache_key_image(ap_cache_key_builder *b, const uint8_t sha256[32], uint64_t phash);
/* Finish into key (exact, shape, phashes) and free b. */
AP_API void ap_cache_key_end(ap_cache_key_builder *b, ap_cache_key *key);

/* Normalise OCR text (case, whitespace, punctuation runs) and hash it into key->content. */
AP_API void ap_cache_key_content(ap_cache_key *key, const char *ocr_text, size_t len);

typedef enum ap_cache_kind { AP_CACHE_MISS = 0, AP_CACHE_HIT_EXACT = 1, AP_CACHE_HIT_NEAR = 2 } ap_cache_kind;

typedef struct ap_cache_hit {
    ap_cache_kind kind;
    int distance;    /* near: the largest per-image Hamming distance; exact: 0 */
    char *value;     /* (transfer full): free() */
    size_t len;
    char *meta;      /* the metadata stored with the value (transfer full), may be NULL */
    size_t meta_len;
} ap_cache_hit;

typedef struct ap_cache_opts {
    const char *url;          /* "sqlite:///path" or "redis://host:port/db" */
    long reap_interval_ms;    /* sqlite: background reclaim period; default 60,000 */
} ap_cache_opts;

AP_API AP_NODISCARD ap_status ap_cache_open(const ap_cache_opts *opts, ap_cache **out,
                                            ap_error *err);
AP_API void ap_cache_close(ap_cache *c);

/*
 * Look up key for task. near_threshold < 0 disables near matches; tolerant says whether the
 * task accepts a near match on pHash alone (otherwise key->content must be set and equal).
 * AP_OK with hit->kind set (AP_CACHE_MISS on a miss: not an error); AP_ENETWORK when the
 * backend is unreachable.
 */
AP_API AP_NODISCARD ap_status ap_cache_get(ap_cache *c, const ap_cache_key *key, const char *task,
                                           int near_threshold, bool tolerant, ap_cache_hit *hit,
                                           ap_error *err);
AP_API void ap_cache_hit_release(ap_cache_hit *hit);

/* Store value (+ optional meta) under key for ttl_s seconds (> 0). */
AP_API AP_NODISCARD ap_status ap_cache_put(ap_cache *c, const ap_cache_key *key, const char *task,
                                           const char *value, size_t len, const char *meta,
                                           size_t meta_len, long ttl_s, ap_error *err);

/* Purge: one exact key (hex), every entry of a task, or everything (both NULL). *n = removed. */
AP_API AP_NODISCARD ap_status ap_cache_purge(ap_cache *c, const char *key_hex, const char *task,
                                             long *n, ap_error *err);

typedef struct ap_cache_stats {
    long entries;
    long bytes;
    bool backend_up;
    const char *backend; /* "sqlite" or "redis" */
} ap_cache_stats;
AP_API AP_NODISCARD ap_status ap_cache_stats_get(ap_cache *c, ap_cache_stats *st, ap_error *err);

#ifdef __cplusplus
}
#endif
#endif
