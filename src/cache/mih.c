/*
 * mih.c - multi-index hashing of 64-bit codes: AP__MIH_BLOCKS open-addressed tables, one per
 * 16-bit block, from a block value to a bucket of item slots, plus an id -> slot table so that
 * removal is O(1). The contract is in mih.h.
 *
 * Layout. Items live in one array of slots (freed slots are reused through a stack). Each item
 * remembers its position inside each of its buckets, so removing it is a swap with the bucket's
 * last element. Small indexes (fewer than INDEX_AT items) skip the tables: a query compares the
 * handful of codes directly, and a singleton group costs two small allocations.
 */
#include <stdlib.h>
#include <string.h>

#include "cache/mih.h"
#include "core/core.h"

#define BLOCK_BITS 16
#define INDEX_AT   32         /* build the tables once the index reaches this many items */
#define DEAD       UINT32_MAX /* item.pos[0] of a free slot */

struct item {
    uint64_t id;
    uint64_t code;
    uint32_t pos[AP__MIH_BLOCKS]; /* index in the bucket of each block; pos[0] DEAD when free */
};

/* The codes sit beside the slots so that a probe reads its bucket sequentially and touches the
 * item array only for the hits (at a million items, the difference between ~1,000 cache misses
 * per query and a few). */
struct bucket {
    uint32_t key; /* block value + 1; 0 marks an empty table entry */
    uint32_t n, cap;
    uint32_t *slots;
    uint64_t *codes; /* codes[i] == items[slots[i]].code */
};

struct btable {
    uint32_t cap, used; /* cap is 0 or a power of two; used counts keys, kept <= cap / 2 */
    struct bucket *b;
};

struct idslot {
    uint64_t id;
    uint32_t slot; /* slot + 1; 0 marks an empty entry */
};

struct ap__mih {
    struct item *items;
    uint32_t n_items, cap_items; /* n_items: slots handed out (live or free) */
    uint32_t *free_slots;
    uint32_t n_free, cap_free;
    size_t live;
    bool indexed;
    struct btable tab[AP__MIH_BLOCKS];
    struct idslot *ids;
    uint32_t ids_cap, ids_used;
};

/* Number of 16-bit values within r bits of a given one, for r = 0..16. */
static const uint32_t ball16[BLOCK_BITS + 1] = {1,     17,    137,   697,   2517,  6885,
                                                14893, 26333, 39203, 50643, 58651, 63019,
                                                64839, 65399, 65519, 65535, 65536};

static inline uint32_t block_of(uint64_t code, int b)
{
    return (uint32_t)(code >> (BLOCK_BITS * (AP__MIH_BLOCKS - 1 - b))) & 0xffffu;
}

static inline uint32_t hash32(uint32_t v, uint32_t cap)
{
    return (v * 0x9e3779b1u) >> 7 & (cap - 1);
}

static inline uint32_t hash64(uint64_t v, uint32_t cap)
{
    return (uint32_t)((v * 0x9e3779b97f4a7c15ull) >> 32) & (cap - 1);
}

struct ap__mih *ap__mih_new(void)
{
    return calloc(1, sizeof(struct ap__mih));
}

static void tables_free(struct ap__mih *m)
{
    for (int b = 0; b < AP__MIH_BLOCKS; b++) {
        for (uint32_t i = 0; i < m->tab[b].cap; i++) {
            free(m->tab[b].b[i].slots);
            free(m->tab[b].b[i].codes);
        }
        free(m->tab[b].b);
        memset(&m->tab[b], 0, sizeof(m->tab[b]));
    }
    free(m->ids);
    m->ids = NULL;
    m->ids_cap = m->ids_used = 0;
    m->indexed = false;
}

void ap__mih_free(struct ap__mih *m)
{
    if (m == NULL)
        return;
    tables_free(m);
    free(m->items);
    free(m->free_slots);
    free(m);
}

size_t ap__mih_count(const struct ap__mih *m)
{
    return m->live;
}

/* ---- the tables */

/* The bucket of value v in t, or NULL. */
static struct bucket *bucket_find(const struct btable *t, uint32_t v)
{
    if (t->cap == 0)
        return NULL;
    for (uint32_t i = hash32(v + 1, t->cap);; i = (i + 1) & (t->cap - 1)) {
        if (t->b[i].key == v + 1)
            return &t->b[i];
        if (t->b[i].key == 0)
            return NULL;
    }
}

/* Make room for one more key in t (rehashing into a table twice the size). */
static ap_status btable_reserve(struct btable *t)
{
    if (t->cap != 0 && (t->used + 1) * 2 <= t->cap)
        return AP_OK;
    uint32_t ncap = t->cap ? t->cap * 2 : 16;
    struct bucket *nb = calloc(ncap, sizeof(*nb));
    if (nb == NULL)
        return AP_ENOMEM;
    for (uint32_t i = 0; i < t->cap; i++) {
        if (t->b[i].key == 0)
            continue;
        uint32_t j = hash32(t->b[i].key, ncap);
        while (nb[j].key != 0)
            j = (j + 1) & (ncap - 1);
        nb[j] = t->b[i];
    }
    free(t->b);
    t->b = nb;
    t->cap = ncap;
    return AP_OK;
}

/* The bucket of v, created (empty) if missing. t must have room (btable_reserve). */
static struct bucket *bucket_get(struct btable *t, uint32_t v)
{
    uint32_t i = hash32(v + 1, t->cap);
    while (t->b[i].key != 0) {
        if (t->b[i].key == v + 1)
            return &t->b[i];
        i = (i + 1) & (t->cap - 1);
    }
    t->b[i].key = v + 1;
    t->used++;
    return &t->b[i];
}

static ap_status bucket_reserve(struct bucket *bk)
{
    if (bk->n < bk->cap)
        return AP_OK;
    uint32_t ncap = bk->cap ? bk->cap * 2 : 2;
    uint32_t *ns = realloc(bk->slots, ncap * sizeof(*ns));
    if (ns == NULL)
        return AP_ENOMEM;
    bk->slots = ns;
    uint64_t *nc = realloc(bk->codes, ncap * sizeof(*nc));
    if (nc == NULL)
        return AP_ENOMEM; /* slots grew, cap did not: still consistent */
    bk->codes = nc;
    bk->cap = ncap;
    return AP_OK;
}

static ap_status ids_reserve(struct ap__mih *m)
{
    if (m->ids_cap != 0 && (m->ids_used + 1) * 2 <= m->ids_cap)
        return AP_OK;
    if (m->ids_cap >= 1u << 31)
        return AP_ENOMEM;
    uint32_t ncap = m->ids_cap ? m->ids_cap * 2 : 64;
    struct idslot *ne = calloc(ncap, sizeof(*ne));
    if (ne == NULL)
        return AP_ENOMEM;
    for (uint32_t i = 0; i < m->ids_cap; i++) {
        if (m->ids[i].slot == 0)
            continue;
        uint32_t j = hash64(m->ids[i].id, ncap);
        while (ne[j].slot != 0)
            j = (j + 1) & (ncap - 1);
        ne[j] = m->ids[i];
    }
    free(m->ids);
    m->ids = ne;
    m->ids_cap = ncap;
    return AP_OK;
}

/* The id table entry of id, or NULL. */
static struct idslot *ids_find(const struct ap__mih *m, uint64_t id)
{
    for (uint32_t i = hash64(id, m->ids_cap);; i = (i + 1) & (m->ids_cap - 1)) {
        if (m->ids[i].slot == 0)
            return NULL;
        if (m->ids[i].id == id)
            return &m->ids[i];
    }
}

static void ids_put(struct ap__mih *m, uint64_t id, uint32_t slot)
{
    uint32_t i = hash64(id, m->ids_cap);
    while (m->ids[i].slot != 0)
        i = (i + 1) & (m->ids_cap - 1);
    m->ids[i].id = id;
    m->ids[i].slot = slot + 1;
    m->ids_used++;
}

/* Delete the entry e by backward shifting, so probe chains stay unbroken without tombstones. */
static void ids_delete(struct ap__mih *m, struct idslot *e)
{
    uint32_t mask = m->ids_cap - 1, hole = (uint32_t)(e - m->ids);
    for (uint32_t j = (hole + 1) & mask; m->ids[j].slot != 0; j = (j + 1) & mask) {
        uint32_t home = hash64(m->ids[j].id, m->ids_cap);
        /* j's entry may fill the hole unless its home lies cyclically in (hole, j]. */
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            m->ids[hole] = m->ids[j];
            hole = j;
        }
    }
    m->ids[hole].slot = 0;
    m->ids_used--;
}

/* Reserve everything adding code needs in the tables, so that link_item() cannot fail. */
static ap_status tables_reserve(struct ap__mih *m, uint64_t code)
{
    if (ids_reserve(m) != AP_OK)
        return AP_ENOMEM;
    for (int b = 0; b < AP__MIH_BLOCKS; b++) {
        if (btable_reserve(&m->tab[b]) != AP_OK)
            return AP_ENOMEM;
        if (bucket_reserve(bucket_get(&m->tab[b], block_of(code, b))) != AP_OK)
            return AP_ENOMEM;
    }
    return AP_OK;
}

static void link_item(struct ap__mih *m, uint32_t slot)
{
    struct item *it = &m->items[slot];
    for (int b = 0; b < AP__MIH_BLOCKS; b++) {
        struct bucket *bk = bucket_get(&m->tab[b], block_of(it->code, b));
        AP_ASSERT(bk->n < bk->cap);
        it->pos[b] = bk->n;
        bk->codes[bk->n] = it->code;
        bk->slots[bk->n++] = slot;
    }
    ids_put(m, it->id, slot);
}

static void unlink_item(struct ap__mih *m, uint32_t slot)
{
    struct item *it = &m->items[slot];
    for (int b = 0; b < AP__MIH_BLOCKS; b++) {
        struct bucket *bk = bucket_find(&m->tab[b], block_of(it->code, b));
        if (AP_NEVER(bk == NULL || it->pos[b] >= bk->n))
            continue;
        uint32_t last = bk->slots[--bk->n];
        bk->slots[it->pos[b]] = last;
        bk->codes[it->pos[b]] = bk->codes[bk->n];
        m->items[last].pos[b] = it->pos[b];
        if (bk->n == 0) { /* keep the key, return the memory */
            free(bk->slots);
            free(bk->codes);
            bk->slots = NULL;
            bk->codes = NULL;
            bk->cap = 0;
        }
    }
}

/* Build the tables over the (dense, small) item array. On failure stay flat. */
static void tables_build(struct ap__mih *m)
{
    for (uint32_t s = 0; s < m->n_items; s++) {
        if (tables_reserve(m, m->items[s].code) != AP_OK) {
            tables_free(m);
            return;
        }
        link_item(m, s);
    }
    m->indexed = true;
}

/* ---- add, remove */

ap_status ap__mih_add(struct ap__mih *m, uint64_t code, uint64_t id)
{
    if (!m->indexed && m->live + 1 >= INDEX_AT)
        tables_build(m); /* best effort: a flat index is still correct */
    if (m->n_free == 0 && m->n_items == m->cap_items) {
        uint32_t ncap = m->cap_items ? m->cap_items * 2 : 1;
        if (ncap < m->cap_items || ncap > UINT32_MAX / 2)
            return AP_ENOMEM;
        struct item *ni = realloc(m->items, (size_t)ncap * sizeof(*ni));
        if (ni == NULL)
            return AP_ENOMEM;
        m->items = ni;
        m->cap_items = ncap;
    }
    if (m->indexed && tables_reserve(m, code) != AP_OK)
        return AP_ENOMEM;

    uint32_t slot = m->n_free ? m->free_slots[--m->n_free] : m->n_items++;
    m->items[slot] = (struct item){.id = id, .code = code};
    if (m->indexed)
        link_item(m, slot);
    m->live++;
    return AP_OK;
}

bool ap__mih_remove(struct ap__mih *m, uint64_t code, uint64_t id)
{
    uint32_t slot;

    if (!m->indexed) {
        /* Flat: find it, move the last item into its place. */
        for (slot = 0; slot < m->n_items; slot++)
            if (m->items[slot].id == id && m->items[slot].code == code)
                break;
        if (slot == m->n_items)
            return false;
        m->items[slot] = m->items[--m->n_items];
        m->live--;
        return true;
    }
    struct idslot *e = ids_find(m, id);
    if (e == NULL || m->items[e->slot - 1].code != code)
        return false;
    slot = e->slot - 1;
    ids_delete(m, e);
    unlink_item(m, slot);
    /* Push the slot on the free stack; growing the stack may fail, and then the slot is lost
     * (marked dead) rather than the removal. */
    m->items[slot].pos[0] = DEAD;
    if (m->n_free == m->cap_free) {
        uint32_t ncap = m->cap_free ? m->cap_free * 2 : 16;
        uint32_t *nf = realloc(m->free_slots, ncap * sizeof(*nf));
        if (nf != NULL) {
            m->free_slots = nf;
            m->cap_free = ncap;
        }
    }
    if (m->n_free < m->cap_free)
        m->free_slots[m->n_free++] = slot;
    m->live--;
    return true;
}

/* ---- query */

static size_t query_flat(const struct ap__mih *m, uint64_t code, int t, ap__mih_fn fn, void *ctx)
{
    size_t calls = 0;
    for (uint32_t s = 0; s < m->n_items; s++) {
        const struct item *it = &m->items[s];
        if (m->indexed && it->pos[0] == DEAD)
            continue;
        int d = __builtin_popcountll(it->code ^ code);
        if (d <= t) {
            calls++;
            if (fn(it->id, it->code, d, ctx))
                break;
        }
    }
    return calls;
}

size_t ap__mih_query(const struct ap__mih *m, uint64_t code, int t, ap__mih_fn fn, void *ctx)
{
    if (t < 0 || m->live == 0)
        return 0;
    if (t > 64)
        t = 64;
    int r = t / AP__MIH_BLOCKS; /* radius within a block */
    if (!m->indexed || r >= BLOCK_BITS || (uint64_t)ball16[r] * AP__MIH_BLOCKS >= (uint64_t)m->live)
        return query_flat(m, code, t, fn, ctx);

    size_t calls = 0;
    for (int b = 0; b < AP__MIH_BLOCKS; b++) {
        uint32_t v = block_of(code, b);
        /* Every 16-bit mask of k set bits, k = 0..r, in increasing order (Gosper's hack). */
        for (int k = 0; k <= r; k++) {
            uint32_t mask = (1u << k) - 1;
            while (mask < (1u << BLOCK_BITS)) {
                const struct bucket *bk = bucket_find(&m->tab[b], v ^ mask);
                for (uint32_t i = 0; bk != NULL && i < bk->n; i++) {
                    uint64_t x = bk->codes[i] ^ code;
                    int d = __builtin_popcountll(x);
                    if (d > t)
                        continue;
                    /* Reported already from a lower block whose radius reaches it? */
                    int seen = 0;
                    for (int b2 = 0; b2 < b && !seen; b2++)
                        seen = __builtin_popcount(block_of(x, b2)) <= r;
                    if (seen)
                        continue;
                    calls++;
                    if (fn(m->items[bk->slots[i]].id, bk->codes[i], d, ctx))
                        return calls;
                }
                if (mask == 0)
                    break;
                uint32_t low = mask & -mask, ripple = mask + low;
                mask = (((ripple ^ mask) >> 2) / low) | ripple;
            }
        }
    }
    return calls;
}
