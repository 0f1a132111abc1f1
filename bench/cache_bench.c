/*
 * cache_bench.c - latency of the answer cache at scale: exact and near-duplicate lookups on the
 * SQLite and Redis stores, next to a linear scan of the same entries.
 *
 *   cache_bench [--n N] [--queries Q] [--threshold T] [--value-bytes B]
 *               [--sqlite PATH] [--redis URL] [--reuse] [--no-sql-index]
 *
 * The cache is filled with N "describe" entries of one prompt (one near-match group: the worst
 * case for the near index, and the common one: a fixed prompt over many pictures), each with a
 * random pHash and a 256-byte answer, plus N/10 "invoice_extraction" entries that all share
 * one pHash (one template, different invoices) and differ in their OCR fingerprint. Then Q
 * lookups of each kind, each timed alone:
 *   exact hit      a stored key
 *   near hit       a new image whose pHash is 1..T bits from a stored one (tolerant task)
 *   near miss      a new image with a random pHash: the exact miss plus every probe, for nothing
 *   doc near hit   a new scan of a stored invoice: same template pHash, same fingerprint
 * and for reference:
 *   scan (memory)  the closest of the N pHashes held in an array, compared one by one
 *   scan (sqlite)  the same over the table (SELECT id, phash FROM ap_cache)
 *   scan (redis)   one SCAN + HMGET pass over every entry (once: it takes seconds)
 *   sql index      the design we did not choose for SQLite: a (block, value) table probed with
 *                  SQL, built beside the cache in the same file (--no-sql-index skips it)
 * Also: the time to open (rebuild the in-memory index) and the memory it takes (RSS).
 *
 * Build by hand against the library (no CMake target yet):
 *   cc -O2 -std=c17 -D_POSIX_C_SOURCE=200809L -Iinclude -Isrc bench/cache_bench.c \
 *      build/libaperture.a $(pkg-config --libs <the library's dependencies>) -lpthread -lm
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <sqlite3.h>

#include "aperture/cache.h"
#include "aperture/hash.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

static uint64_t flip(uint64_t code, int n, uint64_t *rng)
{
    uint64_t mask = 0;
    while (__builtin_popcountll(mask) < n)
        mask |= 1ull << (rng_next(rng) % 64);
    return code ^ mask;
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return kb;
}

/* ---- keys: entry i of a kind, reproducible */

#define TEMPLATE_PHASH 0xc3c3a5a55a5a3c3cull

static void die(const char *what, const ap_error *err)
{
    fprintf(stderr, "cache_bench: %s: %s\n", what, err ? err->msg : "");
    exit(1);
}

/* image is the processed-image identity (its "SHA-256"); doc entries also get OCR text. */
static ap_cache_key key_for(bool doc, uint64_t image, uint64_t phash, long invoice)
{
    ap_cache_key_builder *b = ap_cache_key_begin();
    ap_cache_key k;
    uint8_t sha[32] = {doc};
    ap_error err = {0};

    memcpy(sha + 1, &image, sizeof(image));
    ap_cache_key_field(b, "task", doc ? "invoice_extraction" : "describe", doc ? 18 : 8);
    ap_cache_key_field(b, "model", "gpt-4o", 6);
    ap_cache_key_field(b, "prompt_version", "v1", 2);
    ap_cache_key_image(b, sha, phash);
    if (ap_cache_key_end(b, &k, &err) != AP_OK)
        die("key", &err);
    if (doc) {
        char ocr[96];
        int len = snprintf(ocr, sizeof(ocr), "ACME Ltd Invoice %ld Total %ld.%02ld EUR", invoice,
                           invoice % 997, invoice % 100);
        if (ap_cache_key_content(&k, ocr, (size_t)len, &err) != AP_OK)
            die("content", &err);
    }
    return k;
}

/* ---- timing */

struct series {
    const char *name;
    double *ms;
    size_t n, hits, errors;
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(struct series *s)
{
    if (s->n == 0)
        return;
    qsort(s->ms, s->n, sizeof(double), cmp_double);
    double p50 = s->ms[s->n / 2], p99 = s->ms[(size_t)((double)s->n * 0.99)], max = s->ms[s->n - 1];
    printf("  %-16s n=%-6zu p50 %9.4f ms   p99 %9.4f ms   max %9.4f ms   hits %zu/%zu", s->name,
           s->n, p50, p99, max, s->hits, s->n);
    if (s->errors)
        printf("   AP_ENETWORK %zu", s->errors);
    putchar('\n');
}

struct cfg {
    long n, queries, value_bytes;
    int threshold;
    bool reuse, sql_index;
    const char *sqlite_path, *redis_url;
};

static ap_cache *open_cache(const char *url)
{
    ap_cache_opts o;
    ap_cache *c = NULL;
    ap_error err = {0};
    ap_cache_opts_init(&o);
    o.url = url;
    if (ap_cache_open(&o, &c, &err) != AP_OK)
        die("open", &err);
    return c;
}

/* Fill c; returns the pHashes of the describe entries (the scans compare against them). */
static void fill(ap_cache *c, const struct cfg *cf, const uint64_t *ph)
{
    char *value = malloc((size_t)cf->value_bytes);
    ap_error err = {0};
    long docs = cf->n / 10;
    double t0 = now_ms();

    memset(value, 'a', (size_t)cf->value_bytes);
    for (long i = 0; i < cf->n + docs; i++) {
        bool doc = i >= cf->n;
        long j = doc ? i - cf->n : i;
        ap_cache_key k = key_for(doc, (uint64_t)j, doc ? TEMPLATE_PHASH : ph[j], j);
        snprintf(value, (size_t)cf->value_bytes, "answer %ld", i);
        if (ap_cache_put(c, &k, doc ? "invoice_extraction" : "describe", value,
                         (size_t)cf->value_bytes, NULL, 0, 86400, &err) != AP_OK)
            die("put", &err);
        if (i % 100000 == 0 && i) {
            fprintf(stderr, "\r  filled %ld/%ld (%.0f puts/s)", i, cf->n + docs,
                    (double)i / ((now_ms() - t0) / 1e3));
            fflush(stderr);
        }
    }
    fprintf(stderr, "\r  filled %ld entries in %.1f s (%.0f puts/s)\n", cf->n + docs,
            (now_ms() - t0) / 1e3, (double)(cf->n + docs) / ((now_ms() - t0) / 1e3));
    free(value);
}

static void lookups(ap_cache *c, const struct cfg *cf, const uint64_t *ph, uint64_t seed)
{
    struct series s[4] = {{.name = "exact hit"},
                          {.name = "near hit"},
                          {.name = "near miss"},
                          {.name = "doc near hit"}};
    uint64_t rng = seed;
    ap_error err = {0};

    for (int k = 0; k < 4; k++)
        s[k].ms = malloc((size_t)cf->queries * sizeof(double));
    for (long q = 0; q < cf->queries; q++) {
        for (int kind = 0; kind < 4; kind++) {
            long i = (long)(rng_next(&rng) % (uint64_t)cf->n);
            ap_cache_key k;
            bool tolerant = kind != 3;
            const char *task = kind == 3 ? "invoice_extraction" : "describe";
            int t = kind == 0 ? -1 : cf->threshold;
            if (kind == 0)
                k = key_for(false, (uint64_t)i, ph[i], 0);
            else if (kind == 1)
                k = key_for(false, (uint64_t)(cf->n + i), /* a new image */
                            flip(ph[i], 1 + (int)(rng_next(&rng) % (uint64_t)cf->threshold), &rng),
                            0);
            else if (kind == 2)
                k = key_for(false, (uint64_t)(cf->n + i), rng_next(&rng), 0);
            else
                k = key_for(true, (uint64_t)(cf->n + i), TEMPLATE_PHASH, i % (cf->n / 10));
            ap_cache_hit hit;
            double t0 = now_ms();
            ap_status rc = ap_cache_get(c, &k, task, t, tolerant, &hit, &err);
            double dt = now_ms() - t0;
            if (rc == AP_ENETWORK) { /* a stall past the timeout: count it, let it reconnect */
                s[kind].errors++;
                fprintf(stderr, "  %s: %s\n", s[kind].name, err.msg);
                ap_error_clear(&err);
                struct timespec pause = {1, 100000000};
                nanosleep(&pause, NULL);
                continue;
            }
            if (rc != AP_OK)
                die("get", &err);
            s[kind].ms[s[kind].n++] = dt;
            s[kind].hits += hit.kind != AP_CACHE_MISS;
            ap_cache_hit_release(&hit);
        }
    }
    for (int k = 0; k < 4; k++) {
        report(&s[k]);
        free(s[k].ms);
    }
}

/* The closest stored pHash within t, by comparing them all. */
static void scan_memory(const struct cfg *cf, const uint64_t *ph)
{
    struct series s = {.name = "scan (memory)"};
    uint64_t rng = 77;
    long runs = cf->queries < 2000 ? cf->queries : 2000;
    volatile long sink = 0;

    s.ms = malloc((size_t)runs * sizeof(double));
    for (long q = 0; q < runs; q++) {
        uint64_t code = flip(ph[rng_next(&rng) % (uint64_t)cf->n], 3, &rng);
        double t0 = now_ms();
        int best = 65;
        long at = -1;
        for (long i = 0; i < cf->n; i++) {
            int d = __builtin_popcountll(ph[i] ^ code);
            if (d < best)
                best = d, at = i;
        }
        s.ms[s.n++] = now_ms() - t0;
        s.hits += best <= cf->threshold;
        sink += at;
    }
    report(&s);
    free(s.ms);
}

/* The same over the table: every row's pHash read back. */
static void scan_sqlite(const char *path, const struct cfg *cf, const uint64_t *ph)
{
    struct series s = {.name = "scan (sqlite)"};
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    uint64_t rng = 78;

    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "SELECT id, phash FROM ap_cache WHERE task = 'describe'", -1, &st,
                           NULL) != SQLITE_OK) {
        fprintf(stderr, "cache_bench: sqlite scan: %s\n", sqlite3_errmsg(db));
        sqlite3_close(db);
        return;
    }
    s.ms = malloc(5 * sizeof(double));
    for (int q = 0; q < 5; q++) {
        uint64_t code = flip(ph[rng_next(&rng) % (uint64_t)cf->n], 3, &rng);
        int best = 65;
        double t0 = now_ms();
        while (sqlite3_step(st) == SQLITE_ROW) {
            const uint8_t *p = sqlite3_column_blob(st, 1);
            if (p == NULL || sqlite3_column_bytes(st, 1) < 8)
                continue;
            uint64_t v = 0;
            for (int b = 0; b < 8; b++)
                v = v << 8 | p[b];
            int d = __builtin_popcountll(v ^ code);
            best = d < best ? d : best;
        }
        sqlite3_reset(st);
        s.ms[s.n++] = now_ms() - t0;
        s.hits += best <= cf->threshold;
    }
    report(&s);
    free(s.ms);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/*
 * The alternative to the in-memory index: a table of (block << 16 | value, id, phash) rows,
 * four per entry, probed with one indexed SELECT per probe value; the winner's row is then read
 * from ap_cache, as the store would.
 */
static void sql_index(const char *path, const struct cfg *cf, const uint64_t *ph)
{
    struct series s = {.name = "sql index"};
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL, *probe = NULL, *row = NULL;
    uint64_t rng = 79;
    double t0;

    if (sqlite3_open(path, &db) != SQLITE_OK)
        goto out;
    sqlite3_exec(db, "PRAGMA cache_size = -65536", NULL, NULL, NULL);
    if (sqlite3_exec(db,
                     "CREATE TABLE IF NOT EXISTS bench_mih (bv INTEGER, id INTEGER, phash INTEGER,"
                     " PRIMARY KEY (bv, id)) WITHOUT ROWID",
                     NULL, NULL, NULL) != SQLITE_OK)
        goto out;
    sqlite3_stmt *cnt = NULL;
    long have = 0;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM bench_mih", -1, &cnt, NULL) == SQLITE_OK &&
        sqlite3_step(cnt) == SQLITE_ROW)
        have = sqlite3_column_int64(cnt, 0);
    sqlite3_finalize(cnt);
    if (have != 4 * cf->n) {
        t0 = now_ms();
        sqlite3_exec(db, "DELETE FROM bench_mih; BEGIN", NULL, NULL, NULL);
        if (sqlite3_prepare_v2(db, "INSERT INTO bench_mih VALUES (?1, ?2, ?3)", -1, &ins, NULL) !=
            SQLITE_OK)
            goto out;
        sqlite3_stmt *all = NULL;
        if (sqlite3_prepare_v2(db, "SELECT id, phash FROM ap_cache WHERE task = 'describe'", -1,
                               &all, NULL) != SQLITE_OK)
            goto out;
        while (sqlite3_step(all) == SQLITE_ROW) {
            const uint8_t *p = sqlite3_column_blob(all, 1);
            uint64_t code = 0;
            for (int b = 0; p != NULL && b < 8; b++)
                code = code << 8 | p[b];
            for (int b = 0; b < 4; b++) {
                sqlite3_bind_int64(ins, 1, b << 16 | (int64_t)((code >> (48 - 16 * b)) & 0xffff));
                sqlite3_bind_int64(ins, 2, sqlite3_column_int64(all, 0));
                sqlite3_bind_int64(ins, 3, (int64_t)code);
                sqlite3_step(ins);
                sqlite3_reset(ins);
            }
        }
        sqlite3_finalize(all);
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
        fprintf(stderr, "  sql index built: %ld rows in %.1f s\n", 4 * cf->n,
                (now_ms() - t0) / 1e3);
    }
    if (sqlite3_prepare_v2(db, "SELECT id, phash FROM bench_mih WHERE bv = ?1", -1, &probe, NULL) !=
            SQLITE_OK ||
        sqlite3_prepare_v2(db,
                           "SELECT task, shape, phash, content, expires, value, meta"
                           " FROM ap_cache WHERE id = ?1",
                           -1, &row, NULL) != SQLITE_OK)
        goto out;
    long runs = cf->queries < 5000 ? cf->queries : 5000;
    s.ms = malloc((size_t)runs * sizeof(double));
    int r = cf->threshold / 4;
    for (long q = 0; q < runs; q++) {
        uint64_t code = flip(ph[rng_next(&rng) % (uint64_t)cf->n],
                             1 + (int)(rng_next(&rng) % (uint64_t)cf->threshold), &rng);
        int best = 65;
        int64_t best_id = -1;
        t0 = now_ms();
        for (int b = 0; b < 4; b++) {
            uint32_t v = (uint32_t)(code >> (48 - 16 * b)) & 0xffff;
            for (int k = 0; k <= r; k++) {
                uint32_t mask = (1u << k) - 1;
                while (mask < (1u << 16)) {
                    sqlite3_bind_int64(probe, 1, b << 16 | (int64_t)(v ^ mask));
                    while (sqlite3_step(probe) == SQLITE_ROW) {
                        int d =
                            __builtin_popcountll((uint64_t)sqlite3_column_int64(probe, 1) ^ code);
                        if (d <= cf->threshold && d < best)
                            best = d, best_id = sqlite3_column_int64(probe, 0);
                    }
                    sqlite3_reset(probe);
                    if (mask == 0)
                        break;
                    uint32_t low = mask & -mask, ripple = mask + low;
                    mask = (((ripple ^ mask) >> 2) / low) | ripple;
                }
            }
        }
        if (best_id >= 0) {
            sqlite3_bind_int64(row, 1, best_id);
            if (sqlite3_step(row) == SQLITE_ROW)
                s.hits += sqlite3_column_bytes(row, 5) > 0;
            sqlite3_reset(row);
        }
        s.ms[s.n++] = now_ms() - t0;
    }
    report(&s);
    free(s.ms);
out:
    if (s.n == 0)
        fprintf(stderr, "cache_bench: sql index: %s\n", db ? sqlite3_errmsg(db) : "open failed");
    sqlite3_finalize(ins);
    sqlite3_finalize(probe);
    sqlite3_finalize(row);
    sqlite3_close(db);
}

/* One pass over every entry of a Redis: SCAN, and the pHashes fetched in pipelined HMGETs. */
static void scan_redis(const char *url, const struct cfg *cf)
{
    char host[256] = "127.0.0.1";
    int port = 6379;
    if (sscanf(url, "redis://%255[^:/]:%d", host, &port) < 1)
        return;
    redisContext *c = redisConnect(host, port);
    if (c == NULL || c->err) {
        fprintf(stderr, "cache_bench: redis scan: cannot connect\n");
        if (c)
            redisFree(c);
        return;
    }
    char cursor[32] = "0";
    long seen = 0;
    double t0 = now_ms();
    do {
        redisReply *r = redisCommand(c, "SCAN %s MATCH ap:c:e:* COUNT 1000", cursor);
        if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2)
            break;
        snprintf(cursor, sizeof(cursor), "%s", r->element[0]->str);
        redisReply *ks = r->element[1];
        for (size_t i = 0; i < ks->elements; i++)
            redisAppendCommand(c, "HMGET %b p", ks->element[i]->str, ks->element[i]->len);
        for (size_t i = 0; i < ks->elements; i++) {
            void *x = NULL;
            if (redisGetReply(c, &x) == REDIS_OK && x)
                freeReplyObject(x);
            seen++;
        }
        freeReplyObject(r);
    } while (strcmp(cursor, "0") != 0);
    printf("  %-16s one pass over %ld entries: %.0f ms\n", "scan (redis)", seen, now_ms() - t0);
    (void)cf;
    redisFree(c);
}

static void run(const char *label, const char *url, const char *sqlite_path, const struct cfg *cf,
                const uint64_t *ph)
{
    ap_cache_stats st;
    ap_error err = {0};
    long rss0 = rss_kb();
    double t0 = now_ms();
    ap_cache *c = open_cache(url);
    double open_ms = now_ms() - t0;

    if (ap_cache_stats_get(c, &st, &err) != AP_OK)
        die("stats", &err);
    long want = cf->n + cf->n / 10;
    if (!cf->reuse || st.entries != want) {
        long n;
        if (ap_cache_purge(c, NULL, NULL, &n, &err) != AP_OK)
            die("purge", &err);
        fill(c, cf, ph);
        if (sqlite_path != NULL) { /* reopen: the index is rebuilt from the table */
            ap_cache_close(c);
            rss0 = rss_kb();
            t0 = now_ms();
            c = open_cache(url);
            open_ms = now_ms() - t0;
        }
    }
    printf("%s: %ld entries (%ld describe in one group, %ld invoices of one template),"
           " threshold %d\n",
           label, want, cf->n, cf->n / 10, cf->threshold);
    if (sqlite_path != NULL)
        printf("  open (index rebuilt from the table): %.0f ms, RSS +%ld MB\n", open_ms,
               (rss_kb() - rss0) / 1024);
    lookups(c, cf, ph, 1234);
    ap_cache_close(c);
    if (sqlite_path != NULL) {
        scan_sqlite(sqlite_path, cf, ph);
        if (cf->sql_index)
            sql_index(sqlite_path, cf, ph);
    } else {
        scan_redis(url, cf);
    }
}

int main(int argc, char **argv)
{
    struct cfg cf = {
        .n = 1000000, .queries = 20000, .value_bytes = 256, .threshold = 6, .sql_index = true};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--n") == 0 && v)
            cf.n = strtol(v, NULL, 10), i++;
        else if (strcmp(a, "--queries") == 0 && v)
            cf.queries = strtol(v, NULL, 10), i++;
        else if (strcmp(a, "--threshold") == 0 && v)
            cf.threshold = (int)strtol(v, NULL, 10), i++;
        else if (strcmp(a, "--value-bytes") == 0 && v)
            cf.value_bytes = strtol(v, NULL, 10), i++;
        else if (strcmp(a, "--sqlite") == 0 && v)
            cf.sqlite_path = v, i++;
        else if (strcmp(a, "--redis") == 0 && v)
            cf.redis_url = v, i++;
        else if (strcmp(a, "--reuse") == 0)
            cf.reuse = true;
        else if (strcmp(a, "--no-sql-index") == 0)
            cf.sql_index = false;
        else {
            fprintf(stderr, "usage: cache_bench [--n N] [--queries Q] [--threshold T]"
                            " [--value-bytes B] [--sqlite PATH] [--redis URL] [--reuse]"
                            " [--no-sql-index]\n");
            return 2;
        }
    }
    if (cf.n < 10 || cf.queries < 1 || cf.threshold < 1 || cf.threshold > 32 ||
        cf.value_bytes < 16) {
        fprintf(stderr, "cache_bench: bad sizes\n");
        return 2;
    }
    if (cf.sqlite_path == NULL && cf.redis_url == NULL)
        cf.sqlite_path = "/tmp/aperture_cache_bench.db";

    uint64_t *ph = malloc((size_t)cf.n * sizeof(*ph)), rng = 0x5eed;
    for (long i = 0; i < cf.n; i++)
        ph[i] = rng_next(&rng);
    printf("reference: linear scan of %ld pHashes in memory\n", cf.n);
    scan_memory(&cf, ph);
    if (cf.sqlite_path) {
        char url[600];
        snprintf(url, sizeof(url), "sqlite://%s", cf.sqlite_path);
        run("sqlite", url, cf.sqlite_path, &cf, ph);
    }
    if (cf.redis_url)
        run("redis", cf.redis_url, NULL, &cf, ph);
    free(ph);
    return 0;
}
