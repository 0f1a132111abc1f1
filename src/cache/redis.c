/*
 * redis.c - the shared store: entries as Redis hashes with native TTLs, and the near-duplicate
 * index as Redis sets, so every gateway on the same Redis sees every entry.
 *
 * Keys (task names are [A-Za-z0-9_.-], checked by cache.c; S = first 16 hex digits of the shape,
 * C = of the content fingerprint):
 *   ap:c:e:<exact hex>            hash: t task, s shape, p pHashes (8 bytes each, big-endian),
 *                                 c fingerprint (absent: none), v value, m meta (absent: none);
 *                                 EXPIRE ttl
 *   ap:c:mih:<task>:S:<b>:<vvvv>  set: the entries of group (task, shape) whose first image's
 *                                 block b (0..3, most significant first) is vvvv (hex)
 *   ap:c:ct:<task>:S:C            set: the entries of content group (task, shape, fingerprint)
 *   ap:c:tk:<task>, ap:c:idx      sorted sets, entry hex scored by expiry (ms): purge by task,
 *                                 and the live count for stats; expired members are trimmed on
 *                                 every put
 * Set members are 40 bytes: the exact key and the first image's pHash, so a lookup drops the
 * members beyond the threshold before it reads any entry. A set's TTL is raised to the longest
 * TTL of what it holds; members outliving their entry (expired, replaced, purged) are never
 * returned, because every candidate is read back and re-checked, and the stale ones are removed
 * when found.
 *
 * A put is one Lua script (atomic, one round trip; Redis >= 4). A lookup is one HMGET when the
 * exact key hits; a near lookup adds three round trips: pipelined SMEMBERS of the probed
 * buckets, pipelined HMGETs of the closest candidates' descriptions, and an HMGET of the
 * winner's value.
 *
 * Failure. One connection behind a mutex, with connect and command timeouts (opts.timeout_ms).
 * Any I/O error drops the connection: from then on every call fails at once with AP_ENETWORK,
 * and a background thread reconnects, at most once per opts.reconnect_ms.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "aperture/hash.h"
#include "cache/cache_int.h"
#include "cache/mih.h"
#include "core/core.h"
#include "net/redis_conn.h"

#define KEY_CAP    128   /* longest key name we build, with room */
#define MEMBER_LEN 40    /* exact key + first pHash */
#define PURGE_LAST "499" /* ZRANGE 0..499: 500 entries per purge batch */
#define MAX_STALE  AP__CACHE_MAX_CANDIDATES

struct redis_store {
    struct ap__store super;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thr;
    bool thr_on, stopping;
    redisContext *rc; /* NULL while down */
    struct ap__cache_health health;
    double last_attempt_ms;
    struct ap__redis_target tgt;
    char what[300]; /* "redis 127.0.0.1:6379", for messages */
};

/* KEYS: entry, idx, task zset, then the sets. ARGV: ttl_s, expires_ms, now_ms, entry hex,
 * set member, task, shape, phashes, fingerprint ("" none), value, meta, has meta ("1"/"0"). */
static const char put_script[] =
    "local ttl = tonumber(ARGV[1])\n"
    "redis.call('DEL', KEYS[1])\n"
    "redis.call('HSET', KEYS[1], 't', ARGV[6], 's', ARGV[7], 'p', ARGV[8], 'v', ARGV[10])\n"
    "if ARGV[9] ~= '' then redis.call('HSET', KEYS[1], 'c', ARGV[9]) end\n"
    "if ARGV[12] == '1' then redis.call('HSET', KEYS[1], 'm', ARGV[11]) end\n"
    "redis.call('EXPIRE', KEYS[1], ttl)\n"
    "for i = 2, 3 do\n"
    "  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[4])\n"
    "  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', ARGV[3])\n"
    "end\n"
    "for i = 4, #KEYS do redis.call('SADD', KEYS[i], ARGV[5]) end\n"
    "for i = 2, #KEYS do\n"
    "  if redis.call('TTL', KEYS[i]) < ttl then redis.call('EXPIRE', KEYS[i], ttl) end\n"
    "end\n"
    "return 1\n";

/* ---- key names */

static void hex(const uint8_t *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

static size_t entry_key(char *out, const uint8_t exact[32])
{
    memcpy(out, "ap:c:e:", 7);
    hex(exact, 32, out + 7);
    return 7 + 64;
}

static size_t bucket_key(char *out, const char *task, const uint8_t shape[32], int b, uint32_t v)
{
    return (size_t)snprintf(out, KEY_CAP, "ap:c:mih:%s:%016" PRIx64 ":%d:%04" PRIx32, task,
                            ap__cache_get_be64(shape), b, v);
}

static size_t content_key(char *out, const char *task, const uint8_t shape[32],
                          const uint8_t content[32])
{
    return (size_t)snprintf(out, KEY_CAP, "ap:c:ct:%s:%016" PRIx64 ":%016" PRIx64, task,
                            ap__cache_get_be64(shape), ap__cache_get_be64(content));
}

static uint32_t block_of(uint64_t code, int b)
{
    return (uint32_t)(code >> (16 * (AP__MIH_BLOCKS - 1 - b))) & 0xffffu;
}

/* ---- the connection */

/* The connection broke: drop it, tell the reconnect thread. Lock held. */
static ap_status lost(struct redis_store *s, ap_error *err)
{
    char why[160];
    snprintf(why, sizeof(why), "%s", s->rc && s->rc->err ? s->rc->errstr : "connection lost");
    redisFree(s->rc);
    s->rc = NULL;
    ap__cache_health_down(&s->health, &s->super.opts, s->what, why);
    pthread_cond_signal(&s->cv);
    return ap_error_set(err, AP_ENETWORK, "cache: %s: %s", s->what, why);
}

/* Take the lock and check the connection; on AP_OK the caller holds the lock. */
static ap_status enter(struct redis_store *s, ap_error *err)
{
    pthread_mutex_lock(&s->mu);
    if (s->rc != NULL)
        return AP_OK;
    ap__cache_health_fail(&s->health, &s->super.opts, s->what, 1);
    pthread_mutex_unlock(&s->mu);
    return ap_error_set(err, AP_ENETWORK, "cache: %s is unreachable", s->what);
}

/* Queue one command (pipelining). */
static ap_status append(struct redis_store *s, int argc, const char **argv, const size_t *lens,
                        ap_error *err)
{
    if (redisAppendCommandArgv(s->rc, argc, argv, lens) != REDIS_OK)
        return lost(s, err); /* out of memory in hiredis: the pipeline is unusable */
    return AP_OK;
}

/* Read n replies of queued commands into out[] (all NULL on failure). Error replies fail
 * with AP_EIO after every reply has been read, so the connection stays in step. */
static ap_status replies(struct redis_store *s, size_t n, redisReply **out, ap_error *err)
{
    ap_status rc = AP_OK;
    for (size_t i = 0; i < n; i++) {
        void *r = NULL;
        if (redisGetReply(s->rc, &r) != REDIS_OK || r == NULL) {
            for (size_t j = 0; j < i; j++) {
                freeReplyObject(out[j]);
                out[j] = NULL;
            }
            return lost(s, err);
        }
        out[i] = r;
        if (out[i]->type == REDIS_REPLY_ERROR && rc == AP_OK)
            rc = ap_error_set(err, AP_EIO, "cache: %s: %s", s->what, out[i]->str);
    }
    if (rc != AP_OK)
        for (size_t i = 0; i < n; i++) {
            freeReplyObject(out[i]);
            out[i] = NULL;
        }
    return rc;
}

/* One command, one reply. */
static ap_status command(struct redis_store *s, int argc, const char **argv, const size_t *lens,
                         redisReply **out, ap_error *err)
{
    ap_status rc = append(s, argc, argv, lens, err);
    return rc != AP_OK ? rc : replies(s, 1, out, err);
}

static void free_replies(redisReply **r, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (r[i] != NULL)
            freeReplyObject(r[i]);
}

/* ---- get */

static bool is_str(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_STRING;
}

/* Copy value and meta replies into hit, within the size limit. */
static ap_status take_value(struct redis_store *s, const redisReply *v, const redisReply *m,
                            ap_cache_hit *hit, ap_error *err)
{
    size_t max = s->super.opts.max_value_bytes, mlen = is_str(m) ? m->len : 0;
    if (v->len > max || mlen > max - v->len)
        return ap_error_set(err, AP_ETOOLARGE, "cache: stored value of %zu bytes is over %zu",
                            v->len + mlen, max);
    hit->value = malloc(v->len + 1);
    if (hit->value == NULL)
        return ap_error_set(err, AP_ENOMEM, "cache: out of memory copying a value");
    memcpy(hit->value, v->str, v->len);
    hit->value[v->len] = '\0';
    hit->len = v->len;
    if (is_str(m)) {
        hit->meta = malloc(mlen + 1);
        if (hit->meta == NULL)
            return ap_error_set(err, AP_ENOMEM, "cache: out of memory copying a value");
        memcpy(hit->meta, m->str, mlen);
        hit->meta[mlen] = '\0';
        hit->meta_len = mlen;
    }
    return AP_OK;
}

/* The closest members (within the threshold on the first image), deduplicated. */
struct cands {
    size_t n;
    struct {
        uint8_t member[MEMBER_LEN];
        int d;
    } c[AP__CACHE_MAX_CANDIDATES];
};

static void cands_offer(struct cands *cs, const char *member, size_t len, uint64_t code, int t)
{
    if (len != MEMBER_LEN)
        return;
    int d = ap_hamming64(code, ap__cache_get_be64((const uint8_t *)member + 32));
    if (d > t || (cs->n == AP__CACHE_MAX_CANDIDATES && d >= cs->c[cs->n - 1].d))
        return;
    for (size_t i = 0; i < cs->n; i++)
        if (memcmp(cs->c[i].member, member, MEMBER_LEN) == 0)
            return;
    size_t i = cs->n < AP__CACHE_MAX_CANDIDATES ? cs->n++ : cs->n - 1;
    while (i > 0 && cs->c[i - 1].d > d) {
        cs->c[i] = cs->c[i - 1];
        i--;
    }
    memcpy(cs->c[i].member, member, MEMBER_LEN);
    cs->c[i].d = d;
}

static void cands_offer_all(struct cands *cs, const redisReply *r, uint64_t code, int t)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < r->elements; i++)
        if (is_str(r->element[i]))
            cands_offer(cs, r->element[i]->str, r->element[i]->len, code, t);
}

/*
 * Tolerant candidates: the members of the buckets within floor(t/4) bits of each block, read
 * with pipelined SMEMBERS (one round trip). An SUNION of the same keys costs Redis some 1 ms at
 * a million entries (it builds the union as a set); the client deduplicates only the few
 * members within the threshold, so it is cheaper here.
 */
static ap_status probe_buckets(struct redis_store *s, const ap_cache_key *key, const char *task,
                               int t, struct cands *cs, ap_error *err)
{
    char k[KEY_CAP];
    size_t queued = 0;
    int r = t / AP__MIH_BLOCKS;
    ap_status rc = AP_OK;

    for (int b = 0; b < AP__MIH_BLOCKS && rc == AP_OK; b++) {
        uint32_t v = block_of(key->phash[0], b);
        for (int bits = 0; bits <= r && rc == AP_OK; bits++) {
            /* Every 16-bit mask of that many bits (Gosper's hack), as mih.c enumerates them. */
            uint32_t mask = (1u << bits) - 1;
            while (mask < (1u << 16) && rc == AP_OK) {
                size_t klen = bucket_key(k, task, key->shape, b, v ^ mask);
                rc = append(s, 2, (const char *[]){"SMEMBERS", k}, (const size_t[]){8, klen}, err);
                queued++;
                if (mask == 0)
                    break;
                uint32_t low = mask & -mask, ripple = mask + low;
                mask = (((ripple ^ mask) >> 2) / low) | ripple;
            }
        }
    }
    if (rc != AP_OK)
        return rc; /* an append failure drops the connection, queued commands with it */
    /* Read every reply, even after an error reply, so the connection stays in step. */
    ap_status first = AP_OK;
    for (size_t i = 0; i < queued; i++) {
        redisReply *rep = NULL;
        rc = replies(s, 1, &rep, first == AP_OK ? err : NULL);
        if (rc == AP_ENETWORK)
            return rc;
        if (rc == AP_OK)
            cands_offer_all(cs, rep, key->phash[0], t);
        else if (first == AP_OK)
            first = rc;
        free_replies(&rep, 1);
    }
    return first;
}

/* Queue SREMs of a stale member from the sets that may hold it. Returns commands queued. */
static ap_status unlink_stale(struct redis_store *s, const char *task, const ap_cache_key *key,
                              const uint8_t *member, size_t *queued, ap_error *err)
{
    char k[KEY_CAP];
    uint64_t code = ap__cache_get_be64(member + 32);
    ap_status rc = AP_OK;

    for (int b = 0; b < AP__MIH_BLOCKS && rc == AP_OK; b++) {
        size_t klen = bucket_key(k, task, key->shape, b, block_of(code, b));
        rc = append(s, 3, (const char *[]){"SREM", k, (const char *)member},
                    (const size_t[]){4, klen, MEMBER_LEN}, err);
        ++*queued;
    }
    if (rc == AP_OK && key->has_content) {
        size_t klen = content_key(k, task, key->shape, key->content);
        rc = append(s, 3, (const char *[]){"SREM", k, (const char *)member},
                    (const size_t[]){4, klen, MEMBER_LEN}, err);
        ++*queued;
    }
    return rc;
}

/* The entry view of an HMGET t s p c [...] reply whose t is a string. */
static void view_of(const redisReply *r, struct ap__cache_entry_view *e)
{
    const redisReply *const *el = (const redisReply *const *)r->element;
    e->task = el[0]->str;
    e->task_len = el[0]->len;
    e->shape = is_str(el[1]) ? (const uint8_t *)el[1]->str : NULL;
    e->shape_len = is_str(el[1]) ? el[1]->len : 0;
    e->phash_be = is_str(el[2]) ? (const uint8_t *)el[2]->str : NULL;
    e->phash_len = is_str(el[2]) ? el[2]->len : 0;
    e->content = is_str(el[3]) ? (const uint8_t *)el[3]->str : NULL;
    e->content_len = is_str(el[3]) ? el[3]->len : 0;
}

/* Read back the candidates' descriptions, closest first; answer with the first that passes.
 * Stale members (entry gone) are removed from their sets on the way. Lock held. */
static ap_status verify(struct redis_store *s, const ap_cache_key *key, const char *task, int t,
                        bool tolerant, const struct cands *cs, ap_cache_hit *hit, ap_error *err)
{
    static const char *const fields[] = {"HMGET", NULL, "t", "s", "p", "c"};
    static const char *const vfields[] = {"HMGET", NULL, "t", "s", "p", "c", "v", "m"};
    redisReply *rep[AP__CACHE_MAX_CANDIDATES] = {0}, *fin[1 + MAX_STALE * 5] = {0};
    char k[KEY_CAP];
    const char *argv[8];
    size_t lens[8], nq = 0, winner = SIZE_MAX;
    ap_status rc = AP_OK;

    if (cs->n == 0)
        return AP_OK;
    for (size_t i = 0; i < cs->n && rc == AP_OK; i++) {
        memcpy(argv, fields, sizeof(fields));
        for (int j = 0; j < 6; j++)
            lens[j] = j == 1 ? entry_key(k, cs->c[i].member) : strlen(argv[j]);
        argv[1] = k;
        rc = append(s, 6, argv, lens, err);
    }
    if (rc == AP_OK)
        rc = replies(s, cs->n, rep, err);
    if (rc != AP_OK)
        return rc;

    for (size_t i = 0; i < cs->n && rc == AP_OK; i++) {
        const redisReply *r = rep[i];
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 4)
            continue;
        if (!is_str(r->element[0])) { /* expired or purged */
            rc = unlink_stale(s, task, key, cs->c[i].member, &nq, err);
            continue;
        }
        struct ap__cache_entry_view e;
        view_of(r, &e);
        int d;
        if (winner == SIZE_MAX && ap__cache_near_ok(key, task, t, tolerant, &e, &d))
            winner = i;
    }
    free_replies(rep, cs->n);
    if (rc != AP_OK)
        return rc;
    /* The stale SREMs are queued; the winner's value rides the same round trip. */
    if (winner != SIZE_MAX) {
        memcpy(argv, vfields, sizeof(vfields));
        for (int j = 0; j < 8; j++)
            lens[j] = j == 1 ? entry_key(k, cs->c[winner].member) : strlen(argv[j]);
        argv[1] = k;
        if ((rc = append(s, 8, argv, lens, err)) != AP_OK)
            return rc;
    }
    size_t total = nq + (winner != SIZE_MAX);
    if (total == 0)
        return AP_OK;
    if ((rc = replies(s, total, fin, err)) != AP_OK)
        return rc;
    const redisReply *r = fin[total - 1];
    if (winner != SIZE_MAX && r->type == REDIS_REPLY_ARRAY && r->elements == 6 &&
        is_str(r->element[0]) && is_str(r->element[4])) {
        /* Re-check: the entry may have been replaced since the first read. */
        struct ap__cache_entry_view e;
        view_of(r, &e);
        int d;
        if (ap__cache_near_ok(key, task, t, tolerant, &e, &d)) {
            rc = take_value(s, r->element[4], r->element[5], hit, err);
            hit->kind = AP_CACHE_HIT_NEAR;
            hit->distance = d;
        }
    }
    free_replies(fin, total);
    return rc;
}

static ap_status rd_get(struct ap__store *base, const ap_cache_key *key, const char *task, int t,
                        bool tolerant, ap_cache_hit *hit, ap_error *err)
{
    struct redis_store *s = (struct redis_store *)base;
    redisReply *r = NULL;
    char k[KEY_CAP];
    ap_status rc;

    if ((rc = enter(s, err)) != AP_OK)
        return rc;
    size_t klen = entry_key(k, key->exact);
    rc = command(s, 5, (const char *[]){"HMGET", k, "t", "v", "m"},
                 (const size_t[]){5, klen, 1, 1, 1}, &r, err);
    if (rc != AP_OK)
        goto out;
    /* A key the caller built without its task cannot answer another task. */
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 && is_str(r->element[0]) &&
        r->element[0]->len == strlen(task) &&
        memcmp(r->element[0]->str, task, r->element[0]->len) == 0 && is_str(r->element[1])) {
        rc = take_value(s, r->element[1], r->element[2], hit, err);
        hit->kind = AP_CACHE_HIT_EXACT;
    }
    free_replies(&r, 1);
    if (rc != AP_OK || hit->kind != AP_CACHE_MISS || t < 0)
        goto out;

    struct cands cs = {0};
    if (tolerant) {
        rc = probe_buckets(s, key, task, t, &cs, err);
    } else {
        klen = content_key(k, task, key->shape, key->content);
        rc = command(s, 2, (const char *[]){"SMEMBERS", k}, (const size_t[]){8, klen}, &r, err);
        if (rc == AP_OK)
            cands_offer_all(&cs, r, key->phash[0], t);
        free_replies(&r, 1);
    }
    if (rc == AP_OK)
        rc = verify(s, key, task, t, tolerant, &cs, hit, err);
out:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- put, purge, stats */

static ap_status rd_put(struct ap__store *base, const ap_cache_key *key, const char *task,
                        const char *value, size_t len, const char *meta, size_t meta_len,
                        long ttl_s, ap_error *err)
{
    struct redis_store *s = (struct redis_store *)base;
    char keys[8][KEY_CAP], ttl[24], expires[24], now_s[24], khex[65], nkeys[4];
    uint8_t member[MEMBER_LEN], phash[AP_CACHE_MAX_IMAGES * 8];
    const char *argv[3 + 8 + 12];
    size_t lens[3 + 8 + 12];
    int64_t now = ap__cache_wall_ms();
    redisReply *r = NULL;
    int nk = 0, argc = 0;
    ap_status rc;

    for (size_t i = 0; i < key->n_images; i++)
        ap__cache_put_be64(phash + 8 * i, key->phash[i]);
    memcpy(member, key->exact, 32);
    ap__cache_put_be64(member + 32, key->n_images ? key->phash[0] : 0);
    hex(key->exact, 32, khex);
    snprintf(ttl, sizeof(ttl), "%ld", ttl_s);
    snprintf(expires, sizeof(expires), "%" PRId64, now + (int64_t)ttl_s * 1000);
    snprintf(now_s, sizeof(now_s), "%" PRId64, now);

    size_t klens[8];
    klens[0] = entry_key(keys[0], key->exact);
    klens[1] = (size_t)snprintf(keys[1], KEY_CAP, "ap:c:idx");
    klens[2] = (size_t)snprintf(keys[2], KEY_CAP, "ap:c:tk:%s", task);
    nk = 3;
    for (int b = 0; key->n_images > 0 && b < AP__MIH_BLOCKS; b++, nk++)
        klens[nk] = bucket_key(keys[nk], task, key->shape, b, block_of(key->phash[0], b));
    if (key->has_content) {
        klens[nk] = content_key(keys[nk], task, key->shape, key->content);
        nk++;
    }
    snprintf(nkeys, sizeof(nkeys), "%d", nk);

#define ARG(p, n) (argv[argc] = (const char *)(p), lens[argc++] = (n))
    ARG("EVAL", 4);
    ARG(put_script, sizeof(put_script) - 1);
    ARG(nkeys, strlen(nkeys));
    for (int i = 0; i < nk; i++)
        ARG(keys[i], klens[i]);
    ARG(ttl, strlen(ttl));
    ARG(expires, strlen(expires));
    ARG(now_s, strlen(now_s));
    ARG(khex, 64);
    ARG(member, MEMBER_LEN);
    ARG(task, strlen(task));
    ARG(key->shape, 32);
    ARG(phash, 8 * key->n_images);
    ARG(key->content, key->has_content ? 32 : 0);
    ARG(value, len);
    ARG(meta ? meta : "", meta_len);
    ARG(meta ? "1" : "0", 1);
#undef ARG

    if ((rc = enter(s, err)) != AP_OK)
        return rc;
    rc = command(s, argc, argv, lens, &r, err);
    free_replies(&r, 1);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* Delete one entry and its index memberships. *n = 1 if it existed. Lock held. */
static ap_status purge_key(struct redis_store *s, const uint8_t exact[32], long *n, ap_error *err)
{
    redisReply *r = NULL, *rs[9] = {0};
    char k[KEY_CAP], keys[5][KEY_CAP], khex[65], task[AP_CACHE_MAX_TASK + 1];
    uint8_t member[MEMBER_LEN];
    size_t klen = entry_key(k, exact), nq = 0;
    ap_status rc;

    rc = command(s, 6, (const char *[]){"HMGET", k, "t", "s", "p", "c"},
                 (const size_t[]){5, klen, 1, 1, 1, 1}, &r, err);
    if (rc != AP_OK)
        return rc;
    *n = 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 || !is_str(r->element[0]) ||
        r->element[0]->len > AP_CACHE_MAX_TASK || !is_str(r->element[1]) ||
        r->element[1]->len != 32) {
        free_replies(&r, 1);
        return AP_OK;
    }
    memcpy(task, r->element[0]->str, r->element[0]->len);
    task[r->element[0]->len] = '\0';
    ap_cache_key key = {0};
    memcpy(key.shape, r->element[1]->str, 32);
    bool has_phash = is_str(r->element[2]) && r->element[2]->len >= 8;
    memcpy(member, exact, 32);
    ap__cache_put_be64(member + 32,
                       has_phash ? ap__cache_get_be64((const uint8_t *)r->element[2]->str) : 0);
    key.has_content = is_str(r->element[3]) && r->element[3]->len == 32;
    if (key.has_content)
        memcpy(key.content, r->element[3]->str, 32);
    free_replies(&r, 1);

    hex(exact, 32, khex);
    size_t l0 = (size_t)snprintf(keys[0], KEY_CAP, "ap:c:idx");
    size_t l1 = (size_t)snprintf(keys[1], KEY_CAP, "ap:c:tk:%s", task);
    rc = append(s, 2, (const char *[]){"DEL", k}, (const size_t[]){3, klen}, err);
    if (rc == AP_OK)
        rc =
            append(s, 3, (const char *[]){"ZREM", keys[0], khex}, (const size_t[]){4, l0, 64}, err);
    if (rc == AP_OK)
        rc =
            append(s, 3, (const char *[]){"ZREM", keys[1], khex}, (const size_t[]){4, l1, 64}, err);
    nq = 3;
    if (rc == AP_OK && (has_phash || key.has_content)) {
        /* The same SREMs a stale member gets. */
        if (has_phash) {
            rc = unlink_stale(s, task, &key, member, &nq, err);
        } else {
            size_t l = content_key(keys[2], task, key.shape, key.content);
            rc = append(s, 3, (const char *[]){"SREM", keys[2], (const char *)member},
                        (const size_t[]){4, l, MEMBER_LEN}, err);
            nq++;
        }
    }
    if (rc == AP_OK && (rc = replies(s, nq, rs, err)) == AP_OK)
        *n = rs[0]->type == REDIS_REPLY_INTEGER ? (long)rs[0]->integer : 0;
    free_replies(rs, nq);
    return rc;
}

/* SCAN for pattern, deleting as we go. *n += entry keys deleted (those under ap:c:e:). */
static ap_status scan_delete(struct redis_store *s, const char *pattern, long *n, ap_error *err)
{
    char cursor[32] = "0";
    ap_status rc = AP_OK;

    do {
        redisReply *r = NULL;
        rc = command(s, 6, (const char *[]){"SCAN", cursor, "MATCH", pattern, "COUNT", "1000"},
                     NULL, &r, err);
        if (rc != AP_OK)
            return rc;
        if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || !is_str(r->element[0]) ||
            r->element[1]->type != REDIS_REPLY_ARRAY || r->element[0]->len >= sizeof(cursor)) {
            free_replies(&r, 1);
            return ap_error_set(err, AP_EIO, "cache: %s: unexpected SCAN reply", s->what);
        }
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        const redisReply *ks = r->element[1];
        for (size_t i = 0; i < ks->elements && rc == AP_OK; i++) {
            redisReply *d = NULL;
            if (!is_str(ks->element[i]))
                continue;
            rc = command(s, 2, (const char *[]){"DEL", ks->element[i]->str},
                         (const size_t[]){3, ks->element[i]->len}, &d, err);
            if (rc == AP_OK && d->type == REDIS_REPLY_INTEGER &&
                strncmp(ks->element[i]->str, "ap:c:e:", 7) == 0)
                *n += (long)d->integer;
            free_replies(&d, 1);
        }
        free_replies(&r, 1);
    } while (rc == AP_OK && strcmp(cursor, "0") != 0);
    return rc;
}

/* Every entry of task, in batches from its sorted set; then its index sets. Lock held. */
static ap_status purge_task(struct redis_store *s, const char *task, long *n, ap_error *err)
{
    char tk[KEY_CAP], pattern[KEY_CAP];
    size_t tklen = (size_t)snprintf(tk, KEY_CAP, "ap:c:tk:%s", task);
    ap_status rc;

    for (;;) {
        redisReply *r = NULL, *rs[3] = {0};
        rc = command(s, 4, (const char *[]){"ZRANGE", tk, "0", PURGE_LAST},
                     (const size_t[]){6, tklen, 1, strlen(PURGE_LAST)}, &r, err);
        if (rc != AP_OK)
            return rc;
        if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
            free_replies(&r, 1);
            break;
        }
        size_t m = r->elements;
        const char **argv = malloc((m + 2) * sizeof(*argv));
        size_t *lens = malloc((m + 2) * sizeof(*lens));
        char(*ek)[72] = malloc(m * sizeof(*ek));
        if (argv == NULL || lens == NULL || ek == NULL) {
            free(argv), free(lens), free(ek), free_replies(&r, 1);
            return ap_error_set(err, AP_ENOMEM, "cache: out of memory purging");
        }
        /* DEL the entries, ZREM the members from both sorted sets. */
        argv[0] = "DEL", lens[0] = 3;
        for (size_t i = 0; i < m; i++) {
            size_t l = r->element[i]->len;
            snprintf(ek[i], sizeof(ek[i]), "ap:c:e:%.*s", (int)AP_MIN(l, 64), r->element[i]->str);
            argv[1 + i] = ek[i], lens[1 + i] = strlen(ek[i]);
        }
        rc = append(s, (int)(1 + m), argv, lens, err);
        for (int z = 0; z < 2 && rc == AP_OK; z++) {
            argv[0] = "ZREM", lens[0] = 4;
            argv[1] = z ? "ap:c:idx" : tk, lens[1] = z ? 8 : tklen;
            for (size_t i = 0; i < m; i++)
                argv[2 + i] = r->element[i]->str, lens[2 + i] = r->element[i]->len;
            rc = append(s, (int)(2 + m), argv, lens, err);
        }
        if (rc == AP_OK && (rc = replies(s, 3, rs, err)) == AP_OK &&
            rs[0]->type == REDIS_REPLY_INTEGER)
            *n += (long)rs[0]->integer;
        free_replies(rs, 3);
        free(argv), free(lens), free(ek);
        free_replies(&r, 1);
        if (rc != AP_OK)
            return rc;
    }
    long ignored = 0;
    snprintf(pattern, sizeof(pattern), "ap:c:mih:%s:*", task);
    if ((rc = scan_delete(s, pattern, &ignored, err)) != AP_OK)
        return rc;
    snprintf(pattern, sizeof(pattern), "ap:c:ct:%s:*", task);
    if ((rc = scan_delete(s, pattern, &ignored, err)) != AP_OK)
        return rc;
    redisReply *r = NULL;
    rc = command(s, 2, (const char *[]){"DEL", tk}, (const size_t[]){3, tklen}, &r, err);
    free_replies(&r, 1);
    return rc;
}

static ap_status rd_purge(struct ap__store *base, const uint8_t *key, const char *task, long *n,
                          ap_error *err)
{
    struct redis_store *s = (struct redis_store *)base;
    ap_status rc;

    if ((rc = enter(s, err)) != AP_OK)
        return rc;
    *n = 0;
    if (key != NULL)
        rc = purge_key(s, key, n, err);
    else if (task != NULL)
        rc = purge_task(s, task, n, err);
    else
        rc = scan_delete(s, "ap:c:*", n, err);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static ap_status rd_stats(struct ap__store *base, ap_cache_stats *st, ap_error *err)
{
    struct redis_store *s = (struct redis_store *)base;
    redisReply *rs[2] = {0};
    char now[24];
    ap_status rc;

    st->entries = st->bytes = -1;
    pthread_mutex_lock(&s->mu);
    st->backend_up = s->rc != NULL;
    if (s->rc == NULL) {
        pthread_mutex_unlock(&s->mu);
        return AP_OK;
    }
    snprintf(now, sizeof(now), "%" PRId64, ap__cache_wall_ms());
    rc = append(s, 4, (const char *[]){"ZREMRANGEBYSCORE", "ap:c:idx", "-inf", now}, NULL, err);
    if (rc == AP_OK)
        rc = append(s, 2, (const char *[]){"ZCARD", "ap:c:idx"}, NULL, err);
    if (rc == AP_OK && (rc = replies(s, 2, rs, err)) == AP_OK && rs[1]->type == REDIS_REPLY_INTEGER)
        st->entries = (long)rs[1]->integer;
    free_replies(rs, 2);
    st->backend_up = s->rc != NULL;
    pthread_mutex_unlock(&s->mu);
    if (rc == AP_ENETWORK) { /* down is a state, not a failure, for stats */
        ap_error_clear(err);
        return AP_OK;
    }
    return rc;
}

/* ---- the reconnect thread */

static void *reconnect_main(void *arg)
{
    struct redis_store *s = arg;
    const ap_cache_opts *o = &s->super.opts;

    pthread_mutex_lock(&s->mu);
    while (!s->stopping) {
        if (s->rc != NULL) {
            pthread_cond_wait(&s->cv, &s->mu); /* until lost() or stop */
            continue;
        }
        double wait_ms = s->last_attempt_ms + (double)o->reconnect_ms - ap__now_ms();
        if (wait_ms > 0) {
            struct timespec until = ap__cache_deadline((long)wait_ms + 1);
            pthread_cond_timedwait(&s->cv, &s->mu, &until);
            continue;
        }
        s->last_attempt_ms = ap__now_ms();
        char why[160];
        pthread_mutex_unlock(&s->mu);
        redisContext *c = ap__redis_dial(&s->tgt, s->super.opts.timeout_ms, why,
                                         sizeof(why)); /* up to timeout_ms, unlocked */
        pthread_mutex_lock(&s->mu);
        if (c != NULL && !s->stopping && s->rc == NULL) {
            s->rc = c;
            ap__cache_health_up(&s->health, o, s->what);
        } else {
            if (c != NULL)
                redisFree(c);
            ap__cache_health_fail(&s->health, o, s->what, 0);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- open, free */

static void rd_free(struct ap__store *base)
{
    struct redis_store *s = (struct redis_store *)base;
    if (s->thr_on) {
        pthread_mutex_lock(&s->mu);
        s->stopping = true;
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->thr, NULL);
    }
    if (s->rc != NULL)
        redisFree(s->rc);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static const struct ap__store_ops redis_ops = {
    .name = "redis",
    .get = rd_get,
    .put = rd_put,
    .purge = rd_purge,
    .stats = rd_stats,
    .free = rd_free,
};

ap_status ap__cache_redis_open(const char *target, const ap_cache_opts *opts,
                               struct ap__store **out, ap_error *err)
{
    struct redis_store *s = calloc(1, sizeof(*s));
    char why[160];

    if (s == NULL)
        return ap_error_set(err, AP_ENOMEM, "cache: out of memory");
    s->super.ops = &redis_ops;
    s->super.opts = *opts;
    if (!ap__redis_target_parse(target, &s->tgt)) {
        free(s);
        return ap_error_set(err, AP_EINVAL,
                            "cache: redis url \"%s\" is not redis://[[user]:pass@]host[:port][/db]",
                            opts->url);
    }
    s->super.opts.url = NULL;
    snprintf(s->what, sizeof(s->what), "redis %s:%d", s->tgt.host, s->tgt.port);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->health.up = true;
    s->last_attempt_ms = ap__now_ms();
    /* Down at start is a state like any other: log it and let the thread keep trying. */
    s->rc = ap__redis_dial(&s->tgt, s->super.opts.timeout_ms, why, sizeof(why));
    if (s->rc == NULL)
        ap__cache_health_down(&s->health, &s->super.opts, s->what, why);
    if (pthread_create(&s->thr, NULL, reconnect_main, s) != 0) {
        rd_free(&s->super);
        return ap_error_set(err, AP_ENOMEM, "cache: cannot start the reconnect thread");
    }
    s->thr_on = true;
    *out = &s->super;
    return AP_OK;
}
