/*
 * dedup.c - batch grouping of exact and near-duplicate images (aperture dedup): a union-find
 * over the images, joined first by equal SHA-256, then by equal pHash, then by pHashes within
 * the threshold, found through a multi-index hash over the distinct pHashes.
 *
 * Collapsing equal pHashes before the index matters for catalogs: a folder of 10,000 copies of
 * one template would otherwise make every query return every earlier copy (quadratic work);
 * with them collapsed, the index holds one item per distinct picture.
 */
#include <stdlib.h>
#include <string.h>

#include "aperture/cache.h"
#include "cache/mih.h"
#include "core/core.h"

/* The root of i, halving the path on the way. */
static size_t find(size_t *parent, size_t i)
{
    while (parent[i] != i) {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    return i;
}

/* Join the sets of a and b under the smaller root, so every root is its set's first index. */
static void join(size_t *parent, size_t a, size_t b)
{
    a = find(parent, a);
    b = find(parent, b);
    if (a < b)
        parent[b] = a;
    else if (b < a)
        parent[a] = b;
}

struct by_sha {
    const uint8_t *sha;
    size_t i;
};

struct by_phash {
    uint64_t phash;
    size_t i;
};

static int cmp_sha(const void *a, const void *b)
{
    const struct by_sha *x = a, *y = b;
    int c = memcmp(x->sha, y->sha, 32);
    return c ? c : (x->i > y->i) - (x->i < y->i);
}

static int cmp_phash(const void *a, const void *b)
{
    const struct by_phash *x = a, *y = b;
    if (x->phash != y->phash)
        return x->phash < y->phash ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

struct join_ctx {
    size_t *parent;
    size_t self;
};

static int join_hit(uint64_t id, uint64_t code, int d, void *ctx)
{
    struct join_ctx *j = ctx;
    (void)code, (void)d;
    join(j->parent, j->self, (size_t)id);
    return 0;
}

ap_status ap_cache_dedup(const ap_cache_dedup_item *items, size_t n, int threshold, size_t *group,
                         ap_error *err)
{
    size_t *parent = NULL;
    struct by_sha *bs = NULL;
    struct by_phash *bp = NULL;
    struct ap__mih *m = NULL;
    ap_status rc = AP_OK;

    if (AP_NEVER((items == NULL || group == NULL) && n != 0))
        return ap_error_set(err, AP_EINVAL, "dedup: null items or groups");
    if (threshold < 0 || threshold > AP_CACHE_MAX_THRESHOLD)
        return ap_error_set(err, AP_EINVAL, "dedup: threshold %d is not 0..%d", threshold,
                            AP_CACHE_MAX_THRESHOLD);
    if (n == 0)
        return AP_OK;
    if (n > SIZE_MAX / sizeof(struct by_sha))
        return ap_error_set(err, AP_ETOOLARGE, "dedup: %zu images", n);
    parent = malloc(n * sizeof(*parent));
    bs = malloc(n * sizeof(*bs));
    bp = malloc(n * sizeof(*bp));
    m = ap__mih_new();
    if (parent == NULL || bs == NULL || bp == NULL || m == NULL) {
        rc = ap_error_set(err, AP_ENOMEM, "dedup: out of memory for %zu images", n);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        parent[i] = i;
        bs[i] = (struct by_sha){items[i].sha256, i};
        bp[i] = (struct by_phash){items[i].phash, i};
    }
    /* Exact: runs of equal SHA-256. */
    qsort(bs, n, sizeof(*bs), cmp_sha);
    for (size_t i = 1; i < n; i++)
        if (memcmp(bs[i].sha, bs[i - 1].sha, 32) == 0)
            join(parent, bs[i - 1].i, bs[i].i);
    /* Equal pHashes (distance 0), then one index item per distinct pHash. */
    qsort(bp, n, sizeof(*bp), cmp_phash);
    for (size_t i = 0; i < n; i++) {
        if (i > 0 && bp[i].phash == bp[i - 1].phash) {
            join(parent, bp[i - 1].i, bp[i].i);
            continue;
        }
        /* Query before adding: each near pair is met once, from its later member. */
        struct join_ctx j = {parent, bp[i].i};
        ap__mih_query(m, bp[i].phash, threshold, join_hit, &j);
        if (ap__mih_add(m, bp[i].phash, bp[i].i) != AP_OK) {
            rc = ap_error_set(err, AP_ENOMEM, "dedup: out of memory indexing %zu images", n);
            goto out;
        }
    }
    for (size_t i = 0; i < n; i++)
        group[i] = find(parent, i);
out:
    ap__mih_free(m);
    free(bp);
    free(bs);
    free(parent);
    return rc;
}
