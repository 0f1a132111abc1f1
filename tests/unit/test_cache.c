/*
 * test_cache.c - the answer cache: keys, the multi-index hash, and one behavioural suite run
 * against both stores (an SQLite file, and a real redis-server this binary starts on a free
 * loopback port; those cases skip, saying so, when redis-server is not installed).
 *
 * What the issue asks for, case by case:
 *  - keys: the same processed bytes give the same key whatever the upload looked like (no URL,
 *    no raw bytes in it); task, model, prompt, text, image change the key; framing is unambiguous;
 *  - the MIH finds exactly what a brute-force scan finds, at every threshold, through removals;
 *  - get/put/replace, TTL expiry, the background reaper, purge by key/task/all, stats;
 *  - near hits for tolerant tasks only within the threshold and the same task and shape;
 *  - for extraction tasks a near candidate (two invoices of one template: pHash distance 0) is
 *    refused without a content fingerprint or with a different one, accepted with an equal one;
 *  - Redis: two caches sharing one server see each other's entries; a killed server turns
 *    calls into quick AP_ENETWORK, a restarted one is reconnected within the backoff.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/stat.h>

#include "aperture/cache.h"
#include "aperture/hash.h"
#include "aperture/prep.h"
#include "redis_testutil.h"
#include "cache/mih.h"

#define NEAR_IMAGE AP_CORPUS "/phash/near-duplicates/iphone6__original.jpg"

/* ---- helpers */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: reproducible, no global state */
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

/* code with n distinct random bits flipped */
static uint64_t flip(uint64_t code, int n, uint64_t *rng)
{
    uint64_t mask = 0;
    while (__builtin_popcountll(mask) < n)
        mask |= 1ull << (rng_next(rng) % 64);
    return code ^ mask;
}

struct keyspec {
    const char *task, *model, *prompt, *text;
    size_t n_images;
    int image_seed; /* processed SHA-256 of image i: (image_seed + i), zero-padded */
    uint64_t phash[AP_CACHE_MAX_IMAGES + 2];
    const char *ocr; /* NULL: no content fingerprint */
};

static ap_cache_key mk(const struct keyspec *ks)
{
    ap_cache_key_builder *b = ap_cache_key_begin();
    ap_cache_key k;

    assert_non_null(b);
    ap_cache_key_field(b, "task", ks->task, strlen(ks->task));
    ap_cache_key_field(b, "model", ks->model ? ks->model : "m1",
                       strlen(ks->model ? ks->model : "m1"));
    ap_cache_key_field(b, "prompt_version", ks->prompt ? ks->prompt : "p1",
                       strlen(ks->prompt ? ks->prompt : "p1"));
    ap_cache_key_field(b, "prep", "target=default;q=78", 19);
    if (ks->text)
        ap_cache_key_field(b, "text", ks->text, strlen(ks->text));
    for (size_t i = 0; i < ks->n_images; i++) {
        uint8_t sha[32] = {0};
        uint32_t seed = (uint32_t)ks->image_seed + (uint32_t)i;
        memcpy(sha, &seed, sizeof(seed));
        ap_cache_key_image(b, sha, ks->phash[i]);
    }
    assert_int_equal(ap_cache_key_end(b, &k, NULL), AP_OK);
    if (ks->ocr)
        assert_int_equal(ap_cache_key_content(&k, ks->ocr, strlen(ks->ocr), NULL), AP_OK);
    return k;
}

/* ---- keys */

static uint8_t *read_file(const char *path, size_t extra, size_t *len)
{
    FILE *f = fopen(path, "rb");
    long n;
    uint8_t *buf;

    if (f == NULL)
        fail_msg("cannot open \"%s\"", path);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    assert_true(n > 0);
    assert_int_equal(fseek(f, 0, SEEK_SET), 0);
    buf = malloc((size_t)n + extra);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

/* The key of a describe request over one image given as raw upload bytes. The image's URL is
 * known to the caller and deliberately offered nowhere: the API only takes processed hashes. */
static ap_cache_key key_of_upload(const uint8_t *raw, size_t len, const char *url)
{
    ap_prep_opts o;
    ap_prep_result r;
    ap_cache_key k;

    (void)url;
    ap_prep_opts_init(&o);
    assert_int_equal(ap_prep(raw, len, &o, &r, NULL), AP_OK);
    ap_cache_key_builder *b = ap_cache_key_begin();
    ap_cache_key_field(b, "task", "describe", 8);
    ap_cache_key_field(b, "model", "gpt-4o", 6);
    ap_cache_key_image(b, r.sha256, r.phash);
    assert_int_equal(ap_cache_key_end(b, &k, NULL), AP_OK);
    ap_prep_result_release(&r);
    return k;
}

static void test_cache__key_same_processed_bytes_same_key(void **state)
{
    size_t len;
    uint8_t *raw = read_file(NEAR_IMAGE, 64, &len);
    (void)state;

    /* The same picture uploaded again with bytes after its end (a different raw file, a
     * different raw SHA-256), from another URL: processing yields the same bytes, so one key. */
    ap_cache_key a = key_of_upload(raw, len, "https://a.example/x.jpg");
    memcpy(raw + len, "trailing bytes that change the raw upload, not the processed image", 64);
    ap_cache_key b = key_of_upload(raw, len + 64, "https://b.example/other-name.jpg?v=2");
    uint8_t raw_a[32], raw_b[32];
    assert_int_equal(ap_sha256(raw, len, raw_a, NULL), AP_OK);
    assert_int_equal(ap_sha256(raw, len + 64, raw_b, NULL), AP_OK);
    assert_memory_not_equal(raw_a, raw_b, 32);
    assert_memory_equal(a.exact, b.exact, 32);
    assert_memory_equal(a.shape, b.shape, 32);
    assert_int_equal(a.n_images, 1);
    assert_true(a.phash[0] == b.phash[0]);
    free(raw);
}

static void test_cache__key_fields_change_key(void **state)
{
    struct keyspec base = {.task = "describe",
                           .text = "what is this?",
                           .n_images = 1,
                           .image_seed = 1,
                           .phash = {0x1234}};
    ap_cache_key k0 = mk(&base), k;
    (void)state;

    k = mk(&base); /* deterministic */
    assert_memory_equal(k.exact, k0.exact, 32);

    struct keyspec v = base;
    v.task = "classify";
    k = mk(&v);
    assert_memory_not_equal(k.exact, k0.exact, 32);
    assert_memory_not_equal(k.shape, k0.shape, 32);
    v = base, v.model = "m2", k = mk(&v);
    assert_memory_not_equal(k.exact, k0.exact, 32);
    assert_memory_not_equal(k.shape, k0.shape, 32);
    v = base, v.prompt = "p2", k = mk(&v);
    assert_memory_not_equal(k.exact, k0.exact, 32);
    v = base, v.text = "what is that?", k = mk(&v);
    assert_memory_not_equal(k.exact, k0.exact, 32);
    assert_memory_not_equal(k.shape, k0.shape, 32);

    /* Another image: another exact key, the same shape (the near-match group). */
    v = base, v.image_seed = 2, k = mk(&v);
    assert_memory_not_equal(k.exact, k0.exact, 32);
    assert_memory_equal(k.shape, k0.shape, 32);
    /* The pHash is not part of the exact key: only the processed bytes are. */
    v = base, v.phash[0] = 0x4321, k = mk(&v);
    assert_memory_equal(k.exact, k0.exact, 32);
    /* Another number of images: another shape. */
    v = base, v.n_images = 2, k = mk(&v);
    assert_memory_not_equal(k.shape, k0.shape, 32);
    /* Exact and shape keys never coincide (separate domains). */
    assert_memory_not_equal(k0.exact, k0.shape, 32);

    /* Framing: ("ab", "c") and ("a", "bc") are different requests. */
    ap_cache_key x, y;
    ap_cache_key_builder *b = ap_cache_key_begin();
    ap_cache_key_field(b, "t", "ab", 2);
    ap_cache_key_field(b, "t", "c", 1);
    assert_int_equal(ap_cache_key_end(b, &x, NULL), AP_OK);
    b = ap_cache_key_begin();
    ap_cache_key_field(b, "t", "a", 1);
    ap_cache_key_field(b, "t", "bc", 2);
    assert_int_equal(ap_cache_key_end(b, &y, NULL), AP_OK);
    assert_memory_not_equal(x.exact, y.exact, 32);
    /* An image before or after a text part is a different request. */
    uint8_t sha[32] = {7};
    b = ap_cache_key_begin();
    ap_cache_key_field(b, "text", "a", 1);
    ap_cache_key_image(b, sha, 0);
    assert_int_equal(ap_cache_key_end(b, &x, NULL), AP_OK);
    b = ap_cache_key_begin();
    ap_cache_key_image(b, sha, 0);
    ap_cache_key_field(b, "text", "a", 1);
    assert_int_equal(ap_cache_key_end(b, &y, NULL), AP_OK);
    assert_memory_not_equal(x.exact, y.exact, 32);
    assert_memory_not_equal(x.shape, y.shape, 32);
}

static void test_cache__key_too_many_images_exact_only(void **state)
{
    struct keyspec ks = {.task = "describe", .n_images = AP_CACHE_MAX_IMAGES + 1, .image_seed = 3};
    (void)state;
    ap_cache_key k = mk(&ks);
    assert_int_equal(k.n_images, 0);
    ks.n_images = AP_CACHE_MAX_IMAGES;
    k = mk(&ks);
    assert_int_equal(k.n_images, AP_CACHE_MAX_IMAGES);
    /* A NULL builder (begin out of memory) reports at end. */
    ap_error err = {0};
    ap_cache_key_field(NULL, "x", "y", 1);
    assert_int_equal(ap_cache_key_end(NULL, &k, &err), AP_ENOMEM);
}

static void content_of(const char *text, ap_cache_key *k)
{
    memset(k, 0, sizeof(*k));
    assert_int_equal(ap_cache_key_content(k, text, strlen(text), NULL), AP_OK);
}

static void test_cache__key_content_normalised(void **state)
{
    ap_cache_key a, b;
    (void)state;

    content_of("INVOICE No. 1001\n  Total:\t12.50 EUR  ", &a);
    content_of("invoice no. 1001 total: 12.50 eur", &b);
    assert_true(a.has_content && b.has_content);
    assert_memory_equal(a.content, b.content, 32);
    content_of("invoice no.. 1001 total::  12.50 eur\n-----", &b);
    content_of("invoice no. 1001 total: 12.50 eur\n-", &a);
    assert_memory_equal(a.content, b.content, 32);
    /* Digits are evidence: never normalised away. */
    content_of("invoice no. 1001 total: 12.50 eur", &a);
    content_of("invoice no. 1002 total: 12.50 eur", &b);
    assert_memory_not_equal(a.content, b.content, 32);
    content_of("total 12.50", &a);
    content_of("total 1250", &b);
    assert_memory_not_equal(a.content, b.content, 32);
    /* Nothing legible: no fingerprint. */
    content_of(" \n\t ", &a);
    assert_false(a.has_content);
    content_of("", &a);
    assert_false(a.has_content);
}

/* ---- the multi-index hash */

struct found {
    size_t n, cap;
    uint64_t *ids;
};

static int on_found(uint64_t id, uint64_t code, int d, void *ctx)
{
    struct found *f = ctx;
    (void)code, (void)d;
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 64;
        f->ids = realloc(f->ids, f->cap * sizeof(*f->ids));
        assert_non_null(f->ids);
    }
    f->ids[f->n++] = id;
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Compare one query against the brute force over codes[live]. */
static void check_query(const struct ap__mih *m, const uint64_t *codes, const bool *live, size_t n,
                        uint64_t q, int t)
{
    struct found got = {0}, want = {0};
    size_t calls = ap__mih_query(m, q, t, on_found, &got);
    assert_int_equal(calls, got.n);
    for (size_t i = 0; i < n; i++)
        if (live[i] && ap_hamming64(codes[i], q) <= t)
            on_found(i, codes[i], 0, &want);
    if (got.n > 1)
        qsort(got.ids, got.n, sizeof(uint64_t), cmp_u64);
    if (got.n != want.n)
        fail_msg("t=%d query %016llx: mih found %zu, brute force %zu", t, (unsigned long long)q,
                 got.n, want.n);
    for (size_t i = 0; i < got.n; i++)
        assert_true(got.ids[i] == want.ids[i]); /* also: no item reported twice */
    free(got.ids);
    free(want.ids);
}

static void mih_vs_brute_force(size_t n, uint64_t seed)
{
    static const int ts[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 16, 20, 32, 64};
    uint64_t rng = seed, *codes = malloc(n * sizeof(*codes));
    bool *live = calloc(n, sizeof(*live));
    struct ap__mih *m = ap__mih_new();

    assert_non_null(m);
    /* Half random codes, half clustered around a few centres (real pHashes cluster). */
    uint64_t centres[8];
    for (int i = 0; i < 8; i++)
        centres[i] = rng_next(&rng);
    for (size_t i = 0; i < n; i++) {
        codes[i] = i % 2 ? rng_next(&rng) : flip(centres[i % 8], (int)(rng_next(&rng) % 12), &rng);
        assert_int_equal(ap__mih_add(m, codes[i], i), AP_OK);
        live[i] = true;
    }
    assert_int_equal(ap__mih_count(m), n);
    for (int round = 0; round < 2; round++) {
        for (size_t ti = 0; ti < sizeof(ts) / sizeof(ts[0]); ti++) {
            for (int q = 0; q < 40; q++) {
                uint64_t code =
                    q % 2 ? rng_next(&rng)
                          : flip(codes[rng_next(&rng) % n], (int)(rng_next(&rng) % 10), &rng);
                check_query(m, codes, live, n, code, ts[ti]);
            }
        }
        /* Remove about 40%, re-add a few under new ids' old slots, and compare again. */
        for (size_t i = 0; i < n; i++) {
            if (live[i] && rng_next(&rng) % 10 < 4) {
                assert_true(ap__mih_remove(m, codes[i], i));
                assert_false(ap__mih_remove(m, codes[i], i));
                live[i] = false;
            }
        }
        for (size_t i = 0; i < n; i += 7) {
            if (!live[i]) {
                codes[i] = flip(codes[i], 3, &rng);
                assert_int_equal(ap__mih_add(m, codes[i], i), AP_OK);
                live[i] = true;
            }
        }
        size_t count = 0;
        for (size_t i = 0; i < n; i++)
            count += live[i];
        assert_int_equal(ap__mih_count(m), count);
    }
    ap__mih_free(m);
    free(codes);
    free(live);
}

static void test_cache__mih_matches_brute_force(void **state)
{
    (void)state;
    mih_vs_brute_force(20000, 0x9e3779b97f4a7c15ull); /* indexed */
    mih_vs_brute_force(300, 42);                      /* probes outnumber items: compared */
    mih_vs_brute_force(12, 7);                        /* flat */
}

static int stop_first(uint64_t id, uint64_t code, int d, void *ctx)
{
    (void)id, (void)code, (void)d, (void)ctx;
    return 1;
}

static void test_cache__mih_edges(void **state)
{
    struct ap__mih *m = ap__mih_new();
    (void)state;
    assert_int_equal(ap__mih_query(m, 0, 64, stop_first, NULL), 0); /* empty */
    for (uint64_t i = 0; i < 1000; i++)
        assert_int_equal(ap__mih_add(m, 0xffff0000ffff0000ull, i), AP_OK); /* one bucket */
    assert_int_equal(ap__mih_query(m, 0xffff0000ffff0000ull, 0, stop_first, NULL), 1);
    assert_int_equal(ap__mih_query(m, 0xffff0000ffff0000ull, -1, stop_first, NULL), 0);
    assert_false(ap__mih_remove(m, 0x1, 5)); /* wrong code */
    for (uint64_t i = 0; i < 1000; i++)
        assert_true(ap__mih_remove(m, 0xffff0000ffff0000ull, i));
    assert_int_equal(ap__mih_count(m), 0);
    assert_int_equal(ap__mih_query(m, 0xffff0000ffff0000ull, 8, stop_first, NULL), 0);
    ap__mih_free(m);
    ap__mih_free(NULL);
}

/* Batch dedup: the same partition as joining every pair by brute force. */
static size_t uf_find(size_t *p, size_t i)
{
    while (p[i] != i)
        i = p[i];
    return i;
}

static void test_cache__dedup_matches_brute_force(void **state)
{
    enum { N = 3000 };
    static const int ts[] = {0, 3, 6, 10, 16};
    ap_cache_dedup_item *it = calloc(N, sizeof(*it));
    size_t *group = calloc(N, sizeof(*group)), *p = calloc(N, sizeof(*p));
    uint64_t rng = 11;
    (void)state;

    for (size_t i = 0; i < N; i++) {
        uint32_t id = (uint32_t)i;
        if (i % 5 == 4) { /* an exact copy of an earlier image */
            it[i] = it[rng_next(&rng) % i];
            continue;
        }
        memcpy(it[i].sha256, &id, sizeof(id));
        /* chains of small steps, so transitivity matters, among random pictures */
        it[i].phash = i % 3 == 0 || i < 3 ? rng_next(&rng)
                                          : flip(it[i - 3].phash, (int)(rng_next(&rng) % 8), &rng);
    }
    for (size_t ti = 0; ti < sizeof(ts) / sizeof(ts[0]); ti++) {
        assert_int_equal(ap_cache_dedup(it, N, ts[ti], group, NULL), AP_OK);
        for (size_t i = 0; i < N; i++)
            p[i] = i;
        for (size_t i = 0; i < N; i++)
            for (size_t j = 0; j < i; j++)
                if (memcmp(it[i].sha256, it[j].sha256, 32) == 0 ||
                    ap_hamming64(it[i].phash, it[j].phash) <= ts[ti]) {
                    size_t a = uf_find(p, i), b = uf_find(p, j);
                    p[a > b ? a : b] = a > b ? b : a;
                }
        for (size_t i = 0; i < N; i++)
            assert_int_equal(group[i], uf_find(p, i)); /* both: the smallest index of the set */
    }
    assert_int_equal(ap_cache_dedup(it, N, AP_CACHE_MAX_THRESHOLD + 1, group, NULL), AP_EINVAL);
    assert_int_equal(ap_cache_dedup(it, 0, 6, group, NULL), AP_OK);
    free(it);
    free(group);
    free(p);
}

/* ---- a real redis-server for the redis suite */

static struct ap_test_redis redis;
static bool redis_absent; /* redis-server not installed: the redis cases skip */

static int redis_group_setup(void **state)
{
    (void)state;
    if (!ap_test_redis_find(&redis)) {
        redis_absent = true;
        print_message("redis-server not found: skipping the redis cases\n");
        return 0;
    }
    redis.port = ap_test_free_port();
    if (redis.port <= 0 || !ap_test_redis_start(&redis)) {
        ap_test_redis_kill(&redis);
        print_error("could not start %s on port %d\n", redis.bin, redis.port);
        return -1;
    }
    return 0;
}

static int redis_group_teardown(void **state)
{
    (void)state;
    ap_test_redis_kill(&redis);
    return 0;
}

/* ---- fixtures: one cache per case, on either store */

enum backend { SQLITE, REDIS };
static const enum backend be_sqlite = SQLITE, be_redis = REDIS;

struct fx {
    enum backend be;
    char dir[64], url[320];
    ap_cache *c;
    pthread_mutex_t log_mu;
    int log_down, log_up, log_lines;
};

static void capture_log(void *ctx, const char *line)
{
    struct fx *fx = ctx;
    pthread_mutex_lock(&fx->log_mu);
    fx->log_lines++;
    fx->log_down += strstr(line, "unreachable") != NULL;
    fx->log_up += strstr(line, "reconnected") != NULL;
    pthread_mutex_unlock(&fx->log_mu);
}

static ap_cache *open_cache(struct fx *fx)
{
    ap_cache_opts o;
    ap_cache *c = NULL;
    ap_error err = {0};

    ap_cache_opts_init(&o);
    o.url = fx->url;
    o.reap_interval_ms = 100;
    o.max_value_bytes = 1 << 20;
    o.log_fn = capture_log;
    o.log_ctx = fx;
    o.log_interval_ms = 100;
    if (ap_cache_open(&o, &c, &err) != AP_OK)
        fail_msg("open \"%s\": %s", fx->url, err.msg);
    return c;
}

static int fx_setup(void **state)
{
    enum backend be = *(const enum backend *)*state;
    struct fx *fx = calloc(1, sizeof(*fx));

    assert_non_null(fx);
    fx->be = be;
    pthread_mutex_init(&fx->log_mu, NULL);
    if (be == SQLITE) {
        snprintf(fx->dir, sizeof(fx->dir), "/tmp/ap_cache_test_XXXXXX");
        assert_non_null(mkdtemp(fx->dir));
        snprintf(fx->url, sizeof(fx->url), "sqlite://%s/cache.db", fx->dir);
    } else {
        if (redis_absent) {
            *state = fx; /* the case skips */
            return 0;
        }
        snprintf(fx->url, sizeof(fx->url), "redis://127.0.0.1:%d/0", redis.port);
    }
    fx->c = open_cache(fx);
    long n;
    assert_int_equal(ap_cache_purge(fx->c, NULL, NULL, &n, NULL), AP_OK);
    *state = fx;
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *fx = *state;
    ap_cache_close(fx->c);
    if (fx->be == SQLITE) {
        static const char *const files[] = {"cache.db", "cache.db-wal", "cache.db-shm"};
        char p[400];
        for (size_t i = 0; i < 3; i++) {
            snprintf(p, sizeof(p), "%s/%s", fx->dir, files[i]);
            unlink(p);
        }
        rmdir(fx->dir);
    }
    pthread_mutex_destroy(&fx->log_mu);
    free(fx);
    return 0;
}

static struct fx *need(void **state)
{
    struct fx *fx = *state;
    if (fx->c == NULL)
        skip();
    return fx;
}

static void put(ap_cache *c, const ap_cache_key *k, const char *task, const char *value, long ttl)
{
    ap_error err = {0};
    if (ap_cache_put(c, k, task, value, strlen(value), NULL, 0, ttl, &err) != AP_OK)
        fail_msg("put: %s", err.msg);
}

/* Look up, expect kind (and the value on a hit). Returns the distance. */
static int expect(ap_cache *c, const ap_cache_key *k, const char *task, int t, bool tolerant,
                  ap_cache_kind kind, const char *value)
{
    ap_cache_hit hit;
    ap_error err = {0};
    if (ap_cache_get(c, k, task, t, tolerant, &hit, &err) != AP_OK)
        fail_msg("get: %s", err.msg);
    if (hit.kind != kind)
        fail_msg("get: kind %d, expected %d (value \"%s\")", hit.kind, kind,
                 hit.value ? hit.value : "");
    if (value != NULL) {
        assert_int_equal(hit.len, strlen(value));
        assert_string_equal(hit.value, value);
    }
    int d = hit.distance;
    ap_cache_hit_release(&hit);
    return d;
}

/* ---- the suite, on either store */

static void test_cache__get_put_replace(void **state)
{
    struct fx *fx = need(state);
    struct keyspec ks = {.task = "describe",
                         .text = "hello",
                         .n_images = 1,
                         .image_seed = 1,
                         .phash = {0x0123456789abcdefull}};
    ap_cache_key k = mk(&ks), other;
    ap_cache_hit hit;
    ap_cache_stats st;

    ks.text = "other";
    other = mk(&ks);
    expect(fx->c, &k, "describe", -1, true, AP_CACHE_MISS, NULL);
    assert_int_equal(ap_cache_put(fx->c, &k, "describe", "answer-1", 8, "{\"m\":1}", 7, 60, NULL),
                     AP_OK);
    assert_int_equal(ap_cache_get(fx->c, &k, "describe", -1, true, &hit, NULL), AP_OK);
    assert_int_equal(hit.kind, AP_CACHE_HIT_EXACT);
    assert_int_equal(hit.distance, 0);
    assert_string_equal(hit.value, "answer-1");
    assert_int_equal(hit.meta_len, 7);
    assert_string_equal(hit.meta, "{\"m\":1}");
    ap_cache_hit_release(&hit);
    ap_cache_hit_release(&hit); /* twice is fine */
    expect(fx->c, &other, "describe", -1, true, AP_CACHE_MISS, NULL);
    /* The same key under another task name (a caller that left the task out of its key)
     * never answers. */
    expect(fx->c, &k, "classify", -1, true, AP_CACHE_MISS, NULL);

    put(fx->c, &k, "describe", "answer-2", 60);
    assert_int_equal(ap_cache_get(fx->c, &k, "describe", 6, true, &hit, NULL), AP_OK);
    assert_int_equal(hit.kind, AP_CACHE_HIT_EXACT);
    assert_string_equal(hit.value, "answer-2");
    assert_null(hit.meta);
    ap_cache_hit_release(&hit);
    /* Binary values round-trip. */
    static const char bin[] = {'a', 0, 'b', (char)0xff};
    assert_int_equal(ap_cache_put(fx->c, &other, "describe", bin, sizeof(bin), NULL, 0, 60, NULL),
                     AP_OK);
    assert_int_equal(ap_cache_get(fx->c, &other, "describe", -1, true, &hit, NULL), AP_OK);
    assert_int_equal(hit.len, sizeof(bin));
    assert_memory_equal(hit.value, bin, sizeof(bin));
    ap_cache_hit_release(&hit);

    assert_int_equal(ap_cache_stats_get(fx->c, &st, NULL), AP_OK);
    assert_int_equal(st.entries, 2);
    assert_true(st.backend_up);
    assert_string_equal(st.backend, fx->be == SQLITE ? "sqlite" : "redis");
    if (fx->be == SQLITE)
        assert_int_equal(st.bytes, 8 + 4);
    else
        assert_int_equal(st.bytes, -1);
}

static void test_cache__ttl_expiry(void **state)
{
    struct fx *fx = need(state);
    struct keyspec ks = {.task = "describe", .n_images = 1, .image_seed = 9, .phash = {0xf0f0}};
    ap_cache_key k = mk(&ks), kl;
    ap_cache_stats st;

    ks.image_seed = 10;
    ks.phash[0] = 0xf0f0 ^ 0x3; /* a near duplicate of k */
    ap_cache_key near = mk(&ks);
    ks.image_seed = 11;
    kl = mk(&ks);
    put(fx->c, &k, "describe", "short-lived", 1);
    put(fx->c, &kl, "describe", "long-lived", 60);
    expect(fx->c, &k, "describe", -1, true, AP_CACHE_HIT_EXACT, "short-lived");
    sleep_ms(1500);
    expect(fx->c, &k, "describe", -1, true, AP_CACHE_MISS, NULL);
    /* Its near-index entry must not answer either: the near match is the long-lived one. */
    expect(fx->c, &near, "describe", 6, true, AP_CACHE_HIT_NEAR, "long-lived");
    expect(fx->c, &kl, "describe", -1, true, AP_CACHE_HIT_EXACT, "long-lived");
    /* Reclaimed in the background (reap interval 100 ms) / trimmed from the count. */
    double until = now_ms() + 2000;
    do {
        assert_int_equal(ap_cache_stats_get(fx->c, &st, NULL), AP_OK);
        if (st.entries == 1)
            break;
        sleep_ms(50);
    } while (now_ms() < until);
    assert_int_equal(st.entries, 1);
}

static void test_cache__purge(void **state)
{
    struct fx *fx = need(state);
    struct keyspec ks = {.task = "describe", .n_images = 1, .image_seed = 1, .phash = {0xabcdef}};
    ap_cache_key a1 = mk(&ks), a2, b1;
    char hex[65];
    long n = -1;
    ap_cache_stats st;

    ks.image_seed = 2, ks.phash[0] = 0x1111111111111111ull, a2 = mk(&ks);
    ks.task = "classify", ks.image_seed = 3, b1 = mk(&ks);
    put(fx->c, &a1, "describe", "a1", 60);
    put(fx->c, &a2, "describe", "a2", 60);
    put(fx->c, &b1, "classify", "b1", 60);

    ap_sha256_hex(a1.exact, hex);
    assert_int_equal(ap_cache_purge(fx->c, hex, NULL, &n, NULL), AP_OK);
    assert_int_equal(n, 1);
    assert_int_equal(ap_cache_purge(fx->c, hex, NULL, &n, NULL), AP_OK);
    assert_int_equal(n, 0);
    expect(fx->c, &a1, "describe", 6, true, AP_CACHE_MISS, NULL); /* not even near */
    expect(fx->c, &a2, "describe", -1, true, AP_CACHE_HIT_EXACT, "a2");

    assert_int_equal(ap_cache_purge(fx->c, NULL, "describe", &n, NULL), AP_OK);
    assert_int_equal(n, 1);
    expect(fx->c, &a2, "describe", 6, true, AP_CACHE_MISS, NULL);
    expect(fx->c, &b1, "classify", -1, true, AP_CACHE_HIT_EXACT, "b1");
    assert_int_equal(ap_cache_stats_get(fx->c, &st, NULL), AP_OK);
    assert_int_equal(st.entries, 1);

    put(fx->c, &a2, "describe", "a2 again", 60);
    assert_int_equal(ap_cache_purge(fx->c, NULL, NULL, &n, NULL), AP_OK);
    assert_int_equal(n, 2);
    expect(fx->c, &b1, "classify", 6, true, AP_CACHE_MISS, NULL);
    expect(fx->c, &a2, "describe", 6, true, AP_CACHE_MISS, NULL);
    assert_int_equal(ap_cache_stats_get(fx->c, &st, NULL), AP_OK);
    assert_int_equal(st.entries, 0);
    if (fx->be == SQLITE)
        assert_int_equal(st.bytes, 0);

    assert_int_equal(ap_cache_purge(fx->c, "zz", NULL, &n, NULL), AP_EINVAL);
    assert_int_equal(ap_cache_purge(fx->c, hex, "describe", &n, NULL), AP_EINVAL);
}

static void test_cache__near_tolerant(void **state)
{
    struct fx *fx = need(state);
    uint64_t rng = 99, p = 0x83de2c38712cc7d3ull;
    struct keyspec ks = {.task = "describe",
                         .text = "describe the photo",
                         .n_images = 1,
                         .image_seed = 1,
                         .phash = {p}};
    ap_cache_key k = mk(&ks), q;

    put(fx->c, &k, "describe", "a cat", 60);
    /* The same picture, re-encoded elsewhere: other bytes, pHash 3 bits away. */
    ks.image_seed = 50, ks.phash[0] = flip(p, 3, &rng), q = mk(&ks);
    assert_int_equal(expect(fx->c, &q, "describe", 6, true, AP_CACHE_HIT_NEAR, "a cat"), 3);
    assert_int_equal(expect(fx->c, &q, "describe", 3, true, AP_CACHE_HIT_NEAR, "a cat"), 3);
    expect(fx->c, &q, "describe", 2, true, AP_CACHE_MISS, NULL);
    expect(fx->c, &q, "describe", -1, true, AP_CACHE_MISS, NULL);
    /* Same image, other question: another group. Same key under another task: never. */
    ks.text = "count the cats", q = mk(&ks);
    expect(fx->c, &q, "describe", 6, true, AP_CACHE_MISS, NULL);
    ks.text = "describe the photo", ks.task = "classify", q = mk(&ks);
    expect(fx->c, &q, "classify", 6, true, AP_CACHE_MISS, NULL);
    ks.task = "describe";
    /* The exact image: exact hit, distance 0. */
    ks.image_seed = 1, ks.phash[0] = p, q = mk(&ks);
    assert_int_equal(expect(fx->c, &q, "describe", 6, true, AP_CACHE_HIT_EXACT, "a cat"), 0);

    /* Two images: every one must be within the threshold. */
    struct keyspec two = {
        .task = "describe", .text = "compare", .n_images = 2, .image_seed = 20, .phash = {p, ~p}};
    k = mk(&two);
    put(fx->c, &k, "describe", "two cats", 60);
    two.image_seed = 60, two.phash[0] = flip(p, 2, &rng), two.phash[1] = flip(~p, 5, &rng);
    q = mk(&two);
    assert_int_equal(expect(fx->c, &q, "describe", 6, true, AP_CACHE_HIT_NEAR, "two cats"), 5);
    two.phash[1] = flip(~p, 9, &rng), q = mk(&two);
    expect(fx->c, &q, "describe", 6, true, AP_CACHE_MISS, NULL);

    /* A crowded group (indexed MIH): 2,000 other pictures; the closest entry answers. */
    struct keyspec many = {.task = "describe", .text = "crowd", .n_images = 1};
    char val[32];
    uint64_t target = 0;
    for (int i = 0; i < 2000; i++) {
        many.image_seed = 100 + i;
        many.phash[0] = rng_next(&rng);
        if (i == 1234)
            target = many.phash[0];
        k = mk(&many);
        snprintf(val, sizeof(val), "v%d", i);
        put(fx->c, &k, "describe", val, 60);
    }
    many.image_seed = 7, many.phash[0] = flip(target, 4, &rng), q = mk(&many);
    assert_int_equal(expect(fx->c, &q, "describe", 6, true, AP_CACHE_HIT_NEAR, "v1234"), 4);
    many.phash[0] = flip(target, 7, &rng), q = mk(&many);
    assert_int_equal(expect(fx->c, &q, "describe", 8, true, AP_CACHE_HIT_NEAR, "v1234"), 7);
}

static void test_cache__near_documents_need_equal_content(void **state)
{
    struct fx *fx = need(state);
    /* Two invoices printed from one template: the same pHash, other numbers. */
    uint64_t tmpl = 0xc3c3a5a55a5a3c3cull;
    struct keyspec ks = {.task = "invoice_extraction",
                         .text = "schema:v3",
                         .n_images = 1,
                         .image_seed = 1,
                         .phash = {tmpl},
                         .ocr = "ACME Ltd  Invoice 1001\nTotal 12.50 EUR"};
    ap_cache_key k = mk(&ks), q;

    put(fx->c, &k, "invoice_extraction", "{\"number\":\"1001\",\"total\":12.50}", 60);

    /* Another scan (other bytes, distance 0) of some invoice whose text we do not know. */
    ks.image_seed = 2, ks.ocr = NULL, q = mk(&ks);
    assert_false(q.has_content);
    expect(fx->c, &q, "invoice_extraction", 6, false, AP_CACHE_MISS, NULL);
    /* The other invoice of the template: different text, refused. */
    ks.ocr = "ACME Ltd Invoice 1002\nTotal 99.00 EUR", q = mk(&ks);
    expect(fx->c, &q, "invoice_extraction", 6, false, AP_CACHE_MISS, NULL);
    /* A rescan of the same invoice: the same text after normalisation, accepted. */
    ks.ocr = "acme ltd invoice 1001 total 12.50 eur", q = mk(&ks);
    assert_int_equal(expect(fx->c, &q, "invoice_extraction", 6, false, AP_CACHE_HIT_NEAR,
                            "{\"number\":\"1001\",\"total\":12.50}"),
                     0);
    /* Equal text does not waive the pHash test. */
    uint64_t rng = 5;
    ks.phash[0] = flip(tmpl, 10, &rng), q = mk(&ks);
    expect(fx->c, &q, "invoice_extraction", 6, false, AP_CACHE_MISS, NULL);

    /* An entry stored without a fingerprint never answers a non-tolerant near lookup. */
    struct keyspec bare = {.task = "document_qa",
                           .text = "what is the total?",
                           .n_images = 1,
                           .image_seed = 30,
                           .phash = {tmpl}};
    k = mk(&bare);
    put(fx->c, &k, "document_qa", "12.50", 60);
    bare.image_seed = 31, bare.ocr = "Total 12.50", q = mk(&bare);
    expect(fx->c, &q, "document_qa", 6, false, AP_CACHE_MISS, NULL);
    /* The same lookup declared tolerant would take it: tolerance is the caller's policy. */
    expect(fx->c, &q, "document_qa", 6, true, AP_CACHE_HIT_NEAR, "12.50");
}

static void test_cache__bad_arguments(void **state)
{
    struct fx *fx = need(state);
    struct keyspec ks = {.task = "describe"};
    ap_cache_key k = mk(&ks);
    ap_cache_hit hit;
    ap_error err = {0};
    char big[64];

    assert_int_equal(ap_cache_get(fx->c, &k, "a:b", -1, true, &hit, &err), AP_EINVAL);
    assert_non_null(strstr(err.msg, "a:b"));
    assert_int_equal(hit.kind, AP_CACHE_MISS);
    assert_int_equal(ap_cache_get(fx->c, &k, "", -1, true, &hit, NULL), AP_EINVAL);
    assert_int_equal(ap_cache_get(fx->c, &k, NULL, -1, true, &hit, NULL), AP_EINVAL);
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(ap_cache_get(fx->c, &k, big, -1, true, &hit, NULL), AP_OK); /* 63: fine */
    assert_int_equal(
        ap_cache_get(fx->c, &k, "describe", AP_CACHE_MAX_THRESHOLD + 1, true, &hit, NULL),
        AP_EINVAL);
    assert_int_equal(ap_cache_put(fx->c, &k, "describe", "v", 1, NULL, 0, 0, NULL), AP_EINVAL);
    char *huge = calloc(1, (1 << 20) + 1);
    assert_int_equal(ap_cache_put(fx->c, &k, "describe", huge, (1 << 20) + 1, NULL, 0, 60, NULL),
                     AP_ETOOLARGE);
    assert_int_equal(ap_cache_put(fx->c, &k, "describe", huge, 1 << 19, huge, 1 << 19, 60, NULL),
                     AP_OK);
    assert_int_equal(
        ap_cache_put(fx->c, &k, "describe", huge, 1 << 19, huge, (1 << 19) + 1, 60, NULL),
        AP_ETOOLARGE);
    free(huge);
}

static void test_cache__open_errors(void **state)
{
    ap_cache_opts o;
    ap_cache *c = NULL;
    ap_error err = {0};
    (void)state;

    ap_cache_opts_init(&o);
    o.url = "memcached://x";
    assert_int_equal(ap_cache_open(&o, &c, &err), AP_EINVAL);
    o.url = "sqlite://";
    assert_int_equal(ap_cache_open(&o, &c, NULL), AP_EINVAL);
    o.url = "sqlite:///nonexistent-dir/sub/cache.db";
    assert_int_equal(ap_cache_open(&o, &c, NULL), AP_EIO);
    o.url = "redis://host:99999";
    assert_int_equal(ap_cache_open(&o, &c, NULL), AP_EINVAL);
    o.url = "redis://:";
    assert_int_equal(ap_cache_open(&o, &c, NULL), AP_EINVAL);
    assert_null(c);
    ap_cache_close(NULL);
}

/* sqlite: the file keeps the entries, and the near index is rebuilt at open. */
static void test_cache__sqlite_reopen(void **state)
{
    struct fx *fx = need(state);
    uint64_t rng = 3;
    struct keyspec ks = {.task = "describe", .n_images = 1, .image_seed = 1, .phash = {0x55aa}};
    ap_cache_key k = mk(&ks), q;
    ap_cache_stats st;

    put(fx->c, &k, "describe", "kept", 60);
    for (int i = 0; i < 100; i++) { /* enough for an indexed group */
        ks.image_seed = 10 + i, ks.phash[0] = rng_next(&rng), q = mk(&ks);
        put(fx->c, &q, "describe", "filler", 60);
    }
    ap_cache_close(fx->c);
    fx->c = open_cache(fx);
    expect(fx->c, &k, "describe", -1, true, AP_CACHE_HIT_EXACT, "kept");
    ks.image_seed = 2, ks.phash[0] = 0x55aa ^ 0x10001, q = mk(&ks);
    assert_int_equal(expect(fx->c, &q, "describe", 6, true, AP_CACHE_HIT_NEAR, "kept"), 2);
    assert_int_equal(ap_cache_stats_get(fx->c, &st, NULL), AP_OK);
    assert_int_equal(st.entries, 101);
    assert_int_equal(st.bytes, 4 + 100 * 6);
}

/* Many threads on one cache: no lost updates, no crossed answers. */
struct worker {
    ap_cache *c;
    int id, fails;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    char val[32];
    for (int i = 0; i < 200; i++) {
        struct keyspec ks = {.task = "describe",
                             .n_images = 1,
                             .image_seed = w->id * 1000 + i,
                             .phash = {(uint64_t)(w->id * 1000 + i) * 0x9e3779b97f4a7c15ull}};
        ap_cache_key k = mk(&ks);
        ap_cache_hit hit;
        snprintf(val, sizeof(val), "w%d-%d", w->id, i);
        if (ap_cache_put(w->c, &k, "describe", val, strlen(val), NULL, 0, 60, NULL) != AP_OK ||
            ap_cache_get(w->c, &k, "describe", 4, true, &hit, NULL) != AP_OK)
            w->fails++;
        else if (hit.kind != AP_CACHE_HIT_EXACT || strcmp(hit.value, val) != 0)
            w->fails++;
        ap_cache_hit_release(&hit);
    }
    return NULL;
}

static void test_cache__threads(void **state)
{
    struct fx *fx = need(state);
    pthread_t t[4];
    struct worker w[4];
    ap_cache_stats st;

    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){.c = fx->c, .id = i + 1};
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].fails, 0);
    }
    assert_int_equal(ap_cache_stats_get(fx->c, &st, NULL), AP_OK);
    assert_int_equal(st.entries, 800);
}

/* redis: a second gateway on the same Redis sees the first one's entries, near ones too. */
static void test_cache__redis_shared(void **state)
{
    struct fx *fx = need(state);
    struct keyspec ks = {.task = "describe", .n_images = 1, .image_seed = 1, .phash = {0x77}};
    ap_cache_key k = mk(&ks), q;
    ap_cache *other = open_cache(fx);

    put(fx->c, &k, "describe", "from gateway one", 60);
    ks.image_seed = 2, ks.phash[0] = 0x77 ^ 0x8000000000000001ull, q = mk(&ks);
    assert_int_equal(expect(other, &q, "describe", 6, true, AP_CACHE_HIT_NEAR, "from gateway one"),
                     2);
    expect(other, &k, "describe", -1, true, AP_CACHE_HIT_EXACT, "from gateway one");
    ap_cache_close(other);
}

/* redis: killed mid-test, calls fail fast with AP_ENETWORK; restarted, they succeed again. */
static void test_cache__redis_outage(void **state)
{
    struct fx *fx = need(state);
    struct keyspec ks = {.task = "describe", .n_images = 1, .image_seed = 1, .phash = {0x99}};
    ap_cache_key k = mk(&ks);
    ap_cache_hit hit;
    ap_cache_stats st;
    ap_error err = {0};
    double t0;

    put(fx->c, &k, "describe", "before", 60);
    ap_test_redis_kill(&redis);

    t0 = now_ms();
    assert_int_equal(ap_cache_get(fx->c, &k, "describe", 6, true, &hit, &err), AP_ENETWORK);
    assert_true(now_ms() - t0 < 250);
    assert_int_equal(hit.kind, AP_CACHE_MISS);
    t0 = now_ms();
    for (int i = 0; i < 100; i++) {
        assert_int_equal(ap_cache_get(fx->c, &k, "describe", 6, true, &hit, NULL), AP_ENETWORK);
        assert_int_equal(ap_cache_put(fx->c, &k, "describe", "x", 1, NULL, 0, 60, NULL),
                         AP_ENETWORK);
    }
    assert_true(now_ms() - t0 < 100); /* 200 calls: no waiting on a dead server */
    assert_int_equal(ap_cache_stats_get(fx->c, &st, NULL), AP_OK);
    assert_false(st.backend_up);
    assert_int_equal(st.entries, -1);
    sleep_ms(150); /* past the log interval (100 ms): one reminder line */
    assert_int_equal(ap_cache_get(fx->c, &k, "describe", 6, true, &hit, NULL), AP_ENETWORK);
    pthread_mutex_lock(&fx->log_mu);
    assert_true(fx->log_down >= 2);
    assert_true(fx->log_down <= 20); /* throttled: not one line per failed call */
    pthread_mutex_unlock(&fx->log_mu);

    assert_true(ap_test_redis_start(&redis));
    t0 = now_ms();
    ap_status rc;
    do {
        rc = ap_cache_put(fx->c, &k, "describe", "after", 5, NULL, 0, 60, NULL);
        if (rc != AP_OK)
            sleep_ms(20);
    } while (rc != AP_OK && now_ms() - t0 < 3000);
    assert_int_equal(rc, AP_OK);
    assert_true(now_ms() - t0 < 2500); /* the backoff is 1 s */
    expect(fx->c, &k, "describe", -1, true, AP_CACHE_HIT_EXACT, "after");
    assert_int_equal(ap_cache_stats_get(fx->c, &st, NULL), AP_OK);
    assert_true(st.backend_up);
    pthread_mutex_lock(&fx->log_mu);
    assert_int_equal(fx->log_up, 1);
    pthread_mutex_unlock(&fx->log_mu);
}

/* redis down from the start: open succeeds, calls fail fast, and it connects when it can. */
static void test_cache__redis_down_at_open(void **state)
{
    struct fx *fx = need(state);
    struct fx dead = {.be = REDIS};
    ap_cache_hit hit;
    struct keyspec ks = {.task = "describe"};
    ap_cache_key k = mk(&ks);
    (void)fx;

    pthread_mutex_init(&dead.log_mu, NULL);
    snprintf(dead.url, sizeof(dead.url), "redis://127.0.0.1:%d", ap_test_free_port());
    ap_cache *c = open_cache(&dead);
    assert_int_equal(dead.log_down, 1);
    double t0 = now_ms();
    assert_int_equal(ap_cache_get(c, &k, "describe", -1, true, &hit, NULL), AP_ENETWORK);
    assert_true(now_ms() - t0 < 50);
    ap_cache_close(c);
    pthread_mutex_destroy(&dead.log_mu);
}

#define BOTH(f)                                                                                    \
    cmocka_unit_test_prestate_setup_teardown(f, fx_setup, fx_teardown, (void *)&be_sqlite)
#define ON_REDIS(f)                                                                                \
    cmocka_unit_test_prestate_setup_teardown(f, fx_setup, fx_teardown, (void *)&be_redis)

int main(void)
{
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_cache__key_same_processed_bytes_same_key),
        cmocka_unit_test(test_cache__key_fields_change_key),
        cmocka_unit_test(test_cache__key_too_many_images_exact_only),
        cmocka_unit_test(test_cache__key_content_normalised),
        cmocka_unit_test(test_cache__mih_matches_brute_force),
        cmocka_unit_test(test_cache__mih_edges),
        cmocka_unit_test(test_cache__dedup_matches_brute_force),
        cmocka_unit_test(test_cache__open_errors),
    };
    const struct CMUnitTest on_sqlite[] = {
        BOTH(test_cache__get_put_replace),
        BOTH(test_cache__ttl_expiry),
        BOTH(test_cache__purge),
        BOTH(test_cache__near_tolerant),
        BOTH(test_cache__near_documents_need_equal_content),
        BOTH(test_cache__bad_arguments),
        BOTH(test_cache__threads),
        BOTH(test_cache__sqlite_reopen),
    };
    const struct CMUnitTest on_redis[] = {
        ON_REDIS(test_cache__get_put_replace),
        ON_REDIS(test_cache__ttl_expiry),
        ON_REDIS(test_cache__purge),
        ON_REDIS(test_cache__near_tolerant),
        ON_REDIS(test_cache__near_documents_need_equal_content),
        ON_REDIS(test_cache__bad_arguments),
        ON_REDIS(test_cache__threads),
        ON_REDIS(test_cache__redis_shared),
        ON_REDIS(test_cache__redis_down_at_open),
        ON_REDIS(test_cache__redis_outage), /* last: it restarts the server */
    };
    int failed = 0;
    failed += cmocka_run_group_tests_name("cache", pure, NULL, NULL);
    failed += cmocka_run_group_tests_name("cache_sqlite", on_sqlite, NULL, NULL);
    failed += cmocka_run_group_tests_name("cache_redis", on_redis, redis_group_setup,
                                          redis_group_teardown);
    return failed;
}
