/*
 * mih.h - an in-memory multi-index hash over 64-bit codes (pHashes): finds every stored code
 * within Hamming distance t of a query without looking at the others.
 *
 * The 64 bits are cut into AP__MIH_BLOCKS blocks of 16. If two codes differ in at most t bits,
 * some block differs in at most floor(t / 4) of them (pigeonhole), so a query probes, in each
 * block's table, the buckets of every 16-bit value within that radius of the query's block, and
 * checks the full distance of what it finds. Each item is reported once: from the lowest block
 * through which it can be reached. When the probes would outnumber the items (a large t, a
 * small index) the query compares every item instead; the result set is the same.
 *
 * Items are (code, id) pairs; ids are the caller's (row ids, image indexes) and must be unique
 * within one index. Add and remove are O(1) (amortised); memory is some 185 bytes per item.
 * Indexes below a few dozen items keep only a flat array.
 *
 * Threading: none inside; callers serialise access to one index.
 */
#ifndef AP_CACHE_MIH_H
#define AP_CACHE_MIH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aperture/status.h"

#define AP__MIH_BLOCKS 4

struct ap__mih;

/* Called for each item within the threshold; return nonzero to stop the query. */
typedef int (*ap__mih_fn)(uint64_t id, uint64_t code, int distance, void *ctx);

/* An empty index (transfer full: ap__mih_free()), or NULL when out of memory. */
struct ap__mih *ap__mih_new(void);
/* NULL is a no-op. */
void ap__mih_free(struct ap__mih *m);

/* Add (code, id). id must not be in the index already. AP_ENOMEM leaves the index as it was. */
AP_NODISCARD ap_status ap__mih_add(struct ap__mih *m, uint64_t code, uint64_t id);

/* Remove the item id (whose code was code). Returns false when it was not there. */
bool ap__mih_remove(struct ap__mih *m, uint64_t code, uint64_t id);

/* Items in the index. */
size_t ap__mih_count(const struct ap__mih *m);

/*
 * Call fn for every item within Hamming distance t (0..64) of code, in no particular order,
 * until fn returns nonzero. t < 0 finds nothing. Returns the number of calls made.
 */
size_t ap__mih_query(const struct ap__mih *m, uint64_t code, int t, ap__mih_fn fn, void *ctx);

#endif
