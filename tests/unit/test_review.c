/*
 * test_review.c - the human review queue, one behavioural suite run against both backends: an
 * SQLite file in a temporary directory, and a real redis-server this binary starts on a free
 * loopback port (the redis cases skip, saying so, when redis-server is not installed).
 *
 * Case by case:
 *  - add/get round-trip every field, a 3 MB request included, with and without the request;
 *  - list by status, oldest first, with offset and limit, never carrying the request; count;
 *  - resolve and reject; the second of two resolves (sequential, and two stores racing on
 *    threads) loses with AP_EINVAL "already resolved"; bad resolve arguments change nothing;
 *  - unknown and malformed ids (injection attempts among them) are AP_ENOTFOUND;
 *  - purge removes only resolved and rejected items resolved before the cut;
 *  - items survive close and reopen; 8 threads adding at once get unique ids, all listed;
 *  - Redis: killed, calls fail fast with AP_ENETWORK; restarted, they work again; down at
 *    open, the store opens anyway;
 *  - SQLite: a file shared with the answer cache serves both; relative paths; URL errors.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/stat.h>

#include <hiredis/hiredis.h>

#include "aperture/cache.h"
#include "aperture/review.h"
#include "redis_testutil.h"

#define REDIS_DB 3 /* not 0: the /db part of the URL is exercised */

/* ---- helpers */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Whether id looks like what the store promises: "rv_" + 24 lowercase hex digits. */
static bool id_shaped(const char *id)
{
    if (strlen(id) != 27 || strncmp(id, "rv_", 3) != 0)
        return false;
    for (int i = 3; i < 27; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return false;
    return true;
}

/* A request of about len bytes: JSON with an image as a data: URL, varied so a truncation or a
 * shifted chunk shows. */
static char *big_request(size_t len)
{
    static const char head[] = "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":"
                               "[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/"
                               "jpeg;base64,";
    static const char tail[] = "\"}}]}]}";
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *r = malloc(len + 1);
    uint64_t x = 0x9e3779b97f4a7c15ull;

    assert_non_null(r);
    assert_true(len > sizeof(head) + sizeof(tail));
    memcpy(r, head, sizeof(head) - 1);
    for (size_t i = sizeof(head) - 1; i < len - (sizeof(tail) - 1); i++) {
        x ^= x >> 12, x ^= x << 25, x ^= x >> 27;
        r[i] = b64[(x * 0x2545f4914f6cdd1dull) >> 58];
    }
    memcpy(r + len - (sizeof(tail) - 1), tail, sizeof(tail));
    return r;
}

/*
 * An item to add. The struct's strings are char * because reads hand out owned copies; add
 * only borrows them, so string literals may stand behind the cast.
 */
static ap_review_item item_of(const char *task, const char *model, const char *client,
                              const char *reason, const char *request, const char *candidate)
{
    return (ap_review_item){.task = (char *)task,
                            .model = (char *)model,
                            .client = (char *)client,
                            .reason = (char *)reason,
                            .request = (char *)request,
                            .candidate = (char *)candidate};
}

static void add_ok(ap_review_store *s, const ap_review_item *it, char *id)
{
    ap_error err = {0};
    if (ap_review_add(s, it, id, &err) != AP_OK)
        fail_msg("add: %s", err.msg);
    assert_true(id_shaped(id));
}

/* A small item named by n (in the reason and the request). */
static void add_n(ap_review_store *s, int n, char *id)
{
    char reason[32], request[64];
    snprintf(reason, sizeof(reason), "failed_checks %d", n);
    snprintf(request, sizeof(request), "{\"n\":%d}", n);
    ap_review_item it = item_of(NULL, "gpt-4o", NULL, reason, request, NULL);
    add_ok(s, &it, id);
}

static ap_review_item get_ok(ap_review_store *s, const char *id, bool with_request)
{
    ap_review_item it;
    ap_error err = {0};
    if (ap_review_get(s, id, with_request, &it, &err) != AP_OK)
        fail_msg("get \"%s\": %s", id, err.msg);
    return it;
}

static size_t count_of(ap_review_store *s, ap_review_status st)
{
    size_t n = 12345;
    ap_error err = {0};
    if (ap_review_count(s, st, &n, &err) != AP_OK)
        fail_msg("count: %s", err.msg);
    return n;
}

static void free_list(ap_review_item *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ap_review_item_release(&v[i]);
    free(v);
}

/* ---- a real redis-server for the redis suite */

static struct ap_test_redis redis;
static bool redis_absent; /* redis-server not installed: the redis cases skip */

/* Empty the test database, straight through hiredis (the API has no "delete everything"). */
static void redis_flush(void)
{
    redisContext *c = redisConnect("127.0.0.1", redis.port);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    redisReply *r = redisCommand(c, "SELECT %d", REDIS_DB);
    assert_non_null(r);
    freeReplyObject(r);
    r = redisCommand(c, "FLUSHDB");
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_STATUS);
    freeReplyObject(r);
    redisFree(c);
}

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

/* ---- fixtures: one store per case, on either backend */

enum backend { SQLITE, REDIS };
static const enum backend be_sqlite = SQLITE, be_redis = REDIS;

struct fx {
    enum backend be;
    char dir[64], url[320];
    ap_review_store *s;
};

static ap_review_store *open_store(const char *url)
{
    ap_review_store *s = NULL;
    ap_error err = {0};
    if (ap_review_open(url, &s, &err) != AP_OK)
        fail_msg("open \"%s\": %s", url, err.msg);
    assert_non_null(s);
    return s;
}

static void rm_db_files(const char *dir, const char *name)
{
    static const char *const sfx[] = {"", "-wal", "-shm", "-journal"};
    char p[400];
    for (size_t i = 0; i < sizeof(sfx) / sizeof(sfx[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s%s", dir, name, sfx[i]);
        unlink(p);
    }
}

static int fx_setup(void **state)
{
    enum backend be = *(const enum backend *)*state;
    struct fx *fx = calloc(1, sizeof(*fx));

    assert_non_null(fx);
    fx->be = be;
    *state = fx;
    if (be == SQLITE) {
        snprintf(fx->dir, sizeof(fx->dir), "/tmp/ap_review_test_XXXXXX");
        assert_non_null(mkdtemp(fx->dir));
        /* "sqlite://" + "/tmp/...": the absolute form, sqlite:///tmp/... */
        snprintf(fx->url, sizeof(fx->url), "sqlite://%s/review.db", fx->dir);
    } else {
        if (redis_absent || redis.pid <= 0)
            return 0; /* the case skips */
        redis_flush();
        snprintf(fx->url, sizeof(fx->url), "redis://127.0.0.1:%d/%d", redis.port, REDIS_DB);
    }
    fx->s = open_store(fx->url);
    assert_string_equal(ap_review_backend(fx->s), be == SQLITE ? "sqlite" : "redis");
    return 0;
}

static int fx_teardown(void **state)
{
    struct fx *fx = *state;
    ap_review_close(fx->s);
    if (fx->be == SQLITE) {
        rm_db_files(fx->dir, "review.db");
        rmdir(fx->dir);
    }
    free(fx);
    return 0;
}

static struct fx *need(void **state)
{
    struct fx *fx = *state;
    if (fx->s == NULL)
        skip();
    return fx;
}

/* ---- the suite, on either backend */

static void test_review__add_get_roundtrip(void **state)
{
    struct fx *fx = need(state);
    char *req = big_request(3u << 20);
    ap_review_item in = item_of("extract_invoice", "gpt-4o", "acme-prod", "failed_checks", req,
                                "{\"total\":\"12.50\",\"note\":\"caf\xc3\xa9 \\\"quoted\\\"\"}");
    char id[AP_REVIEW_ID_MAX], id2[AP_REVIEW_ID_MAX];

    int64_t t0 = wall_ms();
    add_ok(fx->s, &in, id);
    int64_t t1 = wall_ms();

    ap_review_item out = get_ok(fx->s, id, true);
    assert_string_equal(out.id, id);
    assert_int_equal(out.status, AP_REVIEW_PENDING);
    assert_true(out.created_unix_ms >= t0 && out.created_unix_ms <= t1);
    assert_int_equal(out.resolved_unix_ms, 0);
    assert_string_equal(out.task, in.task);
    assert_string_equal(out.model, in.model);
    assert_string_equal(out.client, in.client);
    assert_string_equal(out.reason, in.reason);
    assert_string_equal(out.candidate, in.candidate);
    assert_non_null(out.request);
    assert_int_equal(strlen(out.request), 3u << 20);
    assert_memory_equal(out.request, req, 3u << 20);
    assert_null(out.answer);
    assert_null(out.reviewer);
    ap_review_item_release(&out);
    ap_review_item_release(&out); /* twice is fine: released items are empty */

    /* Without the request: everything else, request NULL. */
    out = get_ok(fx->s, id, false);
    assert_string_equal(out.id, id);
    assert_null(out.request);
    assert_string_equal(out.candidate, in.candidate);
    assert_string_equal(out.client, in.client);
    ap_review_item_release(&out);

    /* Optional fields left out read back as NULL, not "". */
    ap_review_item min = item_of(NULL, "m", NULL, "breaker_open", "{}", NULL);
    add_ok(fx->s, &min, id2);
    assert_string_not_equal(id, id2);
    out = get_ok(fx->s, id2, true);
    assert_null(out.task);
    assert_null(out.client);
    assert_null(out.candidate);
    assert_string_equal(out.request, "{}");
    assert_string_equal(out.reason, "breaker_open");
    ap_review_item_release(&out);

    /* The request is required; nothing is stored without it. */
    ap_review_item none = item_of(NULL, "m", NULL, "x", NULL, NULL);
    ap_error err = {0};
    char id3[AP_REVIEW_ID_MAX] = "untouched";
    assert_int_equal(ap_review_add(fx->s, &none, id3, &err), AP_EINVAL);
    assert_string_equal(id3, "untouched");
    assert_int_equal(count_of(fx->s, AP_REVIEW_PENDING), 2);
    free(req);
}

static void test_review__list_and_count(void **state)
{
    struct fx *fx = need(state);
    char ids[5][AP_REVIEW_ID_MAX];
    ap_review_item *v = NULL;
    size_t n = 0;
    ap_error err = {0};

    for (int i = 0; i < 5; i++) {
        add_n(fx->s, i, ids[i]);
        sleep_ms(3); /* distinct creation times: "oldest first" is then one order */
    }
    assert_int_equal(count_of(fx->s, AP_REVIEW_PENDING), 5);
    assert_int_equal(count_of(fx->s, AP_REVIEW_RESOLVED), 0);
    assert_int_equal(count_of(fx->s, AP_REVIEW_REJECTED), 0);

    if (ap_review_list(fx->s, AP_REVIEW_PENDING, 0, 100, &v, &n, &err) != AP_OK)
        fail_msg("list: %s", err.msg);
    assert_int_equal(n, 5);
    for (size_t i = 0; i < n; i++) {
        char reason[48];
        snprintf(reason, sizeof(reason), "failed_checks %zu", i);
        assert_string_equal(v[i].id, ids[i]);
        assert_string_equal(v[i].reason, reason);
        assert_string_equal(v[i].model, "gpt-4o");
        assert_null(v[i].request); /* listings never carry the request */
        assert_int_equal(v[i].status, AP_REVIEW_PENDING);
        if (i > 0)
            assert_true(v[i].created_unix_ms > v[i - 1].created_unix_ms);
    }
    free_list(v, n);

    /* A page: skip 1, take 2. */
    assert_int_equal(ap_review_list(fx->s, AP_REVIEW_PENDING, 1, 2, &v, &n, NULL), AP_OK);
    assert_int_equal(n, 2);
    assert_string_equal(v[0].id, ids[1]);
    assert_string_equal(v[1].id, ids[2]);
    free_list(v, n);
    /* The last page is short; past the end is empty; limit 0 is empty; huge values are fine. */
    assert_int_equal(ap_review_list(fx->s, AP_REVIEW_PENDING, 4, 10, &v, &n, NULL), AP_OK);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].id, ids[4]);
    free_list(v, n);
    assert_int_equal(ap_review_list(fx->s, AP_REVIEW_PENDING, 5, 10, &v, &n, NULL), AP_OK);
    assert_int_equal(n, 0);
    assert_null(v);
    assert_int_equal(ap_review_list(fx->s, AP_REVIEW_PENDING, 0, 0, &v, &n, NULL), AP_OK);
    assert_int_equal(n, 0);
    assert_int_equal(ap_review_list(fx->s, AP_REVIEW_PENDING, SIZE_MAX, SIZE_MAX, &v, &n, NULL),
                     AP_OK);
    assert_int_equal(n, 0);
    assert_int_equal(ap_review_list(fx->s, AP_REVIEW_PENDING, 3, SIZE_MAX, &v, &n, NULL), AP_OK);
    assert_int_equal(n, 2);
    free_list(v, n);

    /* Resolve #1, reject #3: each list holds its own, still oldest first. */
    assert_int_equal(ap_review_resolve(fx->s, ids[1], AP_REVIEW_RESOLVED, "{\"a\":1}", "ann", NULL),
                     AP_OK);
    assert_int_equal(ap_review_resolve(fx->s, ids[3], AP_REVIEW_REJECTED, NULL, NULL, NULL), AP_OK);
    assert_int_equal(count_of(fx->s, AP_REVIEW_PENDING), 3);
    assert_int_equal(count_of(fx->s, AP_REVIEW_RESOLVED), 1);
    assert_int_equal(count_of(fx->s, AP_REVIEW_REJECTED), 1);
    assert_int_equal(ap_review_list(fx->s, AP_REVIEW_PENDING, 0, 10, &v, &n, NULL), AP_OK);
    assert_int_equal(n, 3);
    assert_string_equal(v[0].id, ids[0]);
    assert_string_equal(v[1].id, ids[2]);
    assert_string_equal(v[2].id, ids[4]);
    free_list(v, n);
    assert_int_equal(ap_review_list(fx->s, AP_REVIEW_RESOLVED, 0, 10, &v, &n, NULL), AP_OK);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].id, ids[1]);
    assert_string_equal(v[0].answer, "{\"a\":1}");
    assert_string_equal(v[0].reviewer, "ann");
    assert_int_equal(v[0].status, AP_REVIEW_RESOLVED);
    free_list(v, n);
    assert_int_equal(ap_review_list(fx->s, AP_REVIEW_REJECTED, 0, 10, &v, &n, NULL), AP_OK);
    assert_int_equal(n, 1);
    assert_string_equal(v[0].id, ids[3]);
    free_list(v, n);

    /* An unknown status is refused. */
    assert_int_equal(ap_review_list(fx->s, (ap_review_status)7, 0, 10, &v, &n, NULL), AP_EINVAL);
    assert_int_equal(ap_review_count(fx->s, (ap_review_status)-1, &n, NULL), AP_EINVAL);
}

static void test_review__resolve_and_reject(void **state)
{
    struct fx *fx = need(state);
    char a[AP_REVIEW_ID_MAX], b[AP_REVIEW_ID_MAX];
    ap_error err = {0};

    add_n(fx->s, 1, a);
    add_n(fx->s, 2, b);

    /* Bad arguments change nothing. */
    assert_int_equal(ap_review_resolve(fx->s, a, AP_REVIEW_PENDING, "{}", NULL, &err), AP_EINVAL);
    assert_int_equal(ap_review_resolve(fx->s, a, AP_REVIEW_RESOLVED, NULL, "bob", NULL), AP_EINVAL);
    assert_int_equal(ap_review_resolve(fx->s, a, (ap_review_status)9, "{}", NULL, NULL), AP_EINVAL);
    ap_review_item it = get_ok(fx->s, a, false);
    assert_int_equal(it.status, AP_REVIEW_PENDING);
    ap_review_item_release(&it);

    int64_t t0 = wall_ms();
    err = (ap_error){0};
    if (ap_review_resolve(fx->s, a, AP_REVIEW_RESOLVED, "{\"label\":\"cat\"}", "bob", &err) !=
        AP_OK)
        fail_msg("resolve: %s", err.msg);
    int64_t t1 = wall_ms();
    it = get_ok(fx->s, a, true);
    assert_int_equal(it.status, AP_REVIEW_RESOLVED);
    assert_string_equal(it.answer, "{\"label\":\"cat\"}");
    assert_string_equal(it.reviewer, "bob");
    assert_true(it.resolved_unix_ms >= t0 && it.resolved_unix_ms <= t1);
    assert_true(it.resolved_unix_ms >= it.created_unix_ms);
    assert_string_equal(it.request, "{\"n\":1}"); /* the rest is untouched */
    assert_string_equal(it.reason, "failed_checks 1");
    ap_review_item_release(&it);

    /* Reject without an answer or a reviewer. */
    assert_int_equal(ap_review_resolve(fx->s, b, AP_REVIEW_REJECTED, NULL, NULL, NULL), AP_OK);
    it = get_ok(fx->s, b, false);
    assert_int_equal(it.status, AP_REVIEW_REJECTED);
    assert_null(it.answer);
    assert_null(it.reviewer);
    assert_true(it.resolved_unix_ms > 0);
    ap_review_item_release(&it);
}

static void test_review__double_resolve_loses(void **state)
{
    struct fx *fx = need(state);
    char a[AP_REVIEW_ID_MAX];
    ap_error err = {0};

    add_n(fx->s, 1, a);
    assert_int_equal(ap_review_resolve(fx->s, a, AP_REVIEW_RESOLVED, "\"first\"", "ann", NULL),
                     AP_OK);
    assert_int_equal(ap_review_resolve(fx->s, a, AP_REVIEW_RESOLVED, "\"second\"", "bob", &err),
                     AP_EINVAL);
    assert_int_equal(err.code, AP_EINVAL);
    assert_non_null(strstr(err.msg, "already resolved"));
    err = (ap_error){0};
    assert_int_equal(ap_review_resolve(fx->s, a, AP_REVIEW_REJECTED, NULL, "bob", &err), AP_EINVAL);
    assert_non_null(strstr(err.msg, "already resolved"));

    ap_review_item it = get_ok(fx->s, a, false);
    assert_int_equal(it.status, AP_REVIEW_RESOLVED);
    assert_string_equal(it.answer, "\"first\""); /* the winner's answer stands */
    assert_string_equal(it.reviewer, "ann");
    ap_review_item_release(&it);
    assert_int_equal(count_of(fx->s, AP_REVIEW_RESOLVED), 1);
    assert_int_equal(count_of(fx->s, AP_REVIEW_REJECTED), 0);

    /* A rejected item cannot be resolved either. */
    char b[AP_REVIEW_ID_MAX];
    add_n(fx->s, 2, b);
    assert_int_equal(ap_review_resolve(fx->s, b, AP_REVIEW_REJECTED, NULL, NULL, NULL), AP_OK);
    err = (ap_error){0};
    assert_int_equal(ap_review_resolve(fx->s, b, AP_REVIEW_RESOLVED, "{}", NULL, &err), AP_EINVAL);
    assert_non_null(strstr(err.msg, "already rejected"));
}

/* Two reviewers, each on their own store (connection), resolve the same item at once. */
struct racer {
    ap_review_store *s;
    const char *id, *name;
    pthread_barrier_t *go;
    ap_status rc;
    ap_error err;
};

static void *racer_main(void *arg)
{
    struct racer *r = arg;
    pthread_barrier_wait(r->go);
    r->rc = ap_review_resolve(r->s, r->id, AP_REVIEW_RESOLVED, r->name, r->name, &r->err);
    return NULL;
}

static void test_review__racing_reviewers(void **state)
{
    struct fx *fx = need(state);
    ap_review_store *other = open_store(fx->url);
    pthread_barrier_t go;

    pthread_barrier_init(&go, NULL, 2);
    for (int round = 0; round < 10; round++) {
        char id[AP_REVIEW_ID_MAX];
        pthread_t t[2];
        struct racer r[2] = {{.s = fx->s, .id = id, .name = "\"ann\"", .go = &go},
                             {.s = other, .id = id, .name = "\"bob\"", .go = &go}};
        add_n(fx->s, round, id);
        for (int i = 0; i < 2; i++)
            assert_int_equal(pthread_create(&t[i], NULL, racer_main, &r[i]), 0);
        for (int i = 0; i < 2; i++)
            pthread_join(t[i], NULL);
        int wins = (r[0].rc == AP_OK) + (r[1].rc == AP_OK);
        if (wins != 1)
            fail_msg("round %d: %d winners (%s / %s)", round, wins, r[0].err.msg, r[1].err.msg);
        struct racer *winner = r[0].rc == AP_OK ? &r[0] : &r[1];
        struct racer *loser = r[0].rc == AP_OK ? &r[1] : &r[0];
        assert_int_equal(loser->rc, AP_EINVAL);
        assert_non_null(strstr(loser->err.msg, "already resolved"));
        ap_review_item it = get_ok(other, id, false);
        assert_string_equal(it.answer, winner->name); /* the loser wrote nothing */
        assert_string_equal(it.reviewer, winner->name);
        ap_review_item_release(&it);
    }
    pthread_barrier_destroy(&go);
    assert_int_equal(count_of(fx->s, AP_REVIEW_RESOLVED), 10);
    assert_int_equal(count_of(other, AP_REVIEW_PENDING), 0);
    ap_review_close(other);
}

static void test_review__unknown_and_malformed_ids(void **state)
{
    struct fx *fx = need(state);
    static const char *const bad[] = {
        "",
        "rv_",
        "rv_0123456789abcdef0123456",         /* 23 hex */
        "rv_0123456789abcdef012345678",       /* 25 hex */
        "rv_0123456789ABCDEF01234567",        /* uppercase */
        "xx_0123456789abcdef01234567",        /* wrong prefix */
        "rv_0123456789abcdef0123456g",        /* not hex */
        "rv_0123456789abcdef01234567\n",      /* trailing byte */
        "rv_0123456789abcdef'; DROP TABLE x", /* SQL */
        "rv_*",                               /* a Redis pattern */
        "rv_0123456789abcdef01234567:x",      /* a Redis key suffix */
        "../../etc/passwd",
    };
    char id[AP_REVIEW_ID_MAX];
    ap_review_item it;
    ap_error err = {0};

    add_n(fx->s, 1, id);
    /* Well-formed but never issued. */
    const char *unknown = "rv_000000000000000000000000";
    assert_int_equal(ap_review_get(fx->s, unknown, true, &it, &err), AP_ENOTFOUND);
    assert_non_null(strstr(err.msg, unknown));
    assert_int_equal(ap_review_resolve(fx->s, unknown, AP_REVIEW_RESOLVED, "{}", NULL, NULL),
                     AP_ENOTFOUND);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(ap_review_get(fx->s, bad[i], false, &it, NULL), AP_ENOTFOUND);
        assert_int_equal(ap_review_resolve(fx->s, bad[i], AP_REVIEW_REJECTED, NULL, NULL, NULL),
                         AP_ENOTFOUND);
    }
    assert_int_equal(ap_review_get(fx->s, NULL, false, &it, NULL), AP_ENOTFOUND);
    /* A real id with its last digit changed is just another unknown id. */
    char near[AP_REVIEW_ID_MAX];
    memcpy(near, id, sizeof(near));
    near[26] = near[26] == '0' ? '1' : '0';
    assert_int_equal(ap_review_get(fx->s, near, false, &it, NULL), AP_ENOTFOUND);
    /* Nothing was harmed. */
    it = get_ok(fx->s, id, true);
    assert_int_equal(it.status, AP_REVIEW_PENDING);
    ap_review_item_release(&it);
    assert_int_equal(count_of(fx->s, AP_REVIEW_PENDING), 1);
}

static void test_review__purge_old_resolved_only(void **state)
{
    struct fx *fx = need(state);
    char a[AP_REVIEW_ID_MAX], b[AP_REVIEW_ID_MAX], c[AP_REVIEW_ID_MAX], d[AP_REVIEW_ID_MAX];
    ap_review_item it;
    size_t removed = 99;

    add_n(fx->s, 1, a);
    add_n(fx->s, 2, b);
    add_n(fx->s, 3, c);
    add_n(fx->s, 4, d); /* stays pending, created before the cut */
    assert_int_equal(ap_review_resolve(fx->s, a, AP_REVIEW_RESOLVED, "{}", NULL, NULL), AP_OK);
    assert_int_equal(ap_review_resolve(fx->s, b, AP_REVIEW_REJECTED, NULL, NULL, NULL), AP_OK);
    sleep_ms(5);
    int64_t cut = wall_ms();
    sleep_ms(5);
    assert_int_equal(ap_review_resolve(fx->s, c, AP_REVIEW_RESOLVED, "{}", NULL, NULL), AP_OK);

    assert_int_equal(ap_review_purge(fx->s, cut, &removed, NULL), AP_OK);
    assert_int_equal(removed, 2);
    assert_int_equal(ap_review_get(fx->s, a, false, &it, NULL), AP_ENOTFOUND);
    assert_int_equal(ap_review_get(fx->s, b, false, &it, NULL), AP_ENOTFOUND);
    it = get_ok(fx->s, c, false);
    assert_int_equal(it.status, AP_REVIEW_RESOLVED);
    ap_review_item_release(&it);
    it = get_ok(fx->s, d, false);
    assert_int_equal(it.status, AP_REVIEW_PENDING);
    ap_review_item_release(&it);
    assert_int_equal(count_of(fx->s, AP_REVIEW_PENDING), 1);
    assert_int_equal(count_of(fx->s, AP_REVIEW_RESOLVED), 1);
    assert_int_equal(count_of(fx->s, AP_REVIEW_REJECTED), 0);

    /* Again: nothing left to remove; removed may be NULL. */
    assert_int_equal(ap_review_purge(fx->s, cut, &removed, NULL), AP_OK);
    assert_int_equal(removed, 0);
    assert_int_equal(ap_review_purge(fx->s, cut, NULL, NULL), AP_OK);
    /* A cut in the future takes the rest of the answered, still never a pending one. */
    assert_int_equal(ap_review_purge(fx->s, wall_ms() + 60000, &removed, NULL), AP_OK);
    assert_int_equal(removed, 1);
    assert_int_equal(count_of(fx->s, AP_REVIEW_PENDING), 1);
    assert_int_equal(count_of(fx->s, AP_REVIEW_RESOLVED), 0);
}

/* redis: two full purge batches and then an empty one (Redis purges 500 at a time). */
static void test_review__purge_many(void **state)
{
    struct fx *fx = need(state);
    size_t removed = 0;

    for (int i = 0; i < 1000; i++) {
        char id[AP_REVIEW_ID_MAX];
        add_n(fx->s, i, id);
        assert_int_equal(ap_review_resolve(fx->s, id,
                                           i % 2 ? AP_REVIEW_RESOLVED : AP_REVIEW_REJECTED, "{}",
                                           NULL, NULL),
                         AP_OK);
    }
    assert_int_equal(ap_review_purge(fx->s, wall_ms() + 1000, &removed, NULL), AP_OK);
    assert_int_equal(removed, 1000);
    assert_int_equal(count_of(fx->s, AP_REVIEW_RESOLVED), 0);
    assert_int_equal(count_of(fx->s, AP_REVIEW_REJECTED), 0);
}

static void test_review__persists_across_reopen(void **state)
{
    struct fx *fx = need(state);
    char a[AP_REVIEW_ID_MAX], b[AP_REVIEW_ID_MAX];
    char *req = big_request(1u << 20);

    ap_review_item in = item_of(NULL, "gpt-4o", NULL, "error: timeout", req, NULL);
    add_ok(fx->s, &in, a);
    add_n(fx->s, 2, b);
    assert_int_equal(ap_review_resolve(fx->s, b, AP_REVIEW_RESOLVED, "{\"ok\":true}", "cy", NULL),
                     AP_OK);
    ap_review_close(fx->s);
    fx->s = NULL;

    fx->s = open_store(fx->url);
    ap_review_item it = get_ok(fx->s, a, true);
    assert_int_equal(it.status, AP_REVIEW_PENDING);
    assert_string_equal(it.reason, "error: timeout");
    assert_string_equal(it.request, req);
    ap_review_item_release(&it);
    it = get_ok(fx->s, b, false);
    assert_int_equal(it.status, AP_REVIEW_RESOLVED);
    assert_string_equal(it.answer, "{\"ok\":true}");
    assert_string_equal(it.reviewer, "cy");
    ap_review_item_release(&it);
    assert_int_equal(count_of(fx->s, AP_REVIEW_PENDING), 1);
    assert_int_equal(count_of(fx->s, AP_REVIEW_RESOLVED), 1);
    free(req);
}

/* 8 threads adding at once on one store: every add succeeds, every id is new and listed. */
#define N_THREADS  8
#define PER_THREAD 25

struct adder {
    ap_review_store *s;
    int t, fails;
    char ids[PER_THREAD][AP_REVIEW_ID_MAX];
};

static void *adder_main(void *arg)
{
    struct adder *a = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        char req[64];
        snprintf(req, sizeof(req), "{\"t\":%d,\"i\":%d}", a->t, i);
        ap_review_item it = item_of(NULL, "m", NULL, "r", req, NULL);
        if (ap_review_add(a->s, &it, a->ids[i], NULL) != AP_OK)
            a->fails++;
    }
    return NULL;
}

static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

static void test_review__concurrent_adds(void **state)
{
    struct fx *fx = need(state);
    struct adder *ad = calloc(N_THREADS, sizeof(*ad));
    pthread_t t[N_THREADS];
    const char *all[N_THREADS * PER_THREAD];
    ap_review_item *v = NULL;
    size_t n = 0;

    assert_non_null(ad);
    for (int i = 0; i < N_THREADS; i++) {
        ad[i].s = fx->s;
        ad[i].t = i;
        assert_int_equal(pthread_create(&t[i], NULL, adder_main, &ad[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < N_THREADS; i++) {
        assert_int_equal(ad[i].fails, 0);
        for (int j = 0; j < PER_THREAD; j++) {
            assert_true(id_shaped(ad[i].ids[j]));
            all[i * PER_THREAD + j] = ad[i].ids[j];
        }
    }
    qsort(all, N_THREADS * PER_THREAD, sizeof(all[0]), cmp_str);
    for (size_t i = 1; i < N_THREADS * PER_THREAD; i++)
        assert_string_not_equal(all[i - 1], all[i]);
    assert_int_equal(count_of(fx->s, AP_REVIEW_PENDING), N_THREADS * PER_THREAD);

    assert_int_equal(ap_review_list(fx->s, AP_REVIEW_PENDING, 0, 1000, &v, &n, NULL), AP_OK);
    assert_int_equal(n, N_THREADS * PER_THREAD);
    const char **listed = malloc(n * sizeof(*listed));
    assert_non_null(listed);
    for (size_t i = 0; i < n; i++) {
        listed[i] = v[i].id;
        if (i > 0)
            assert_true(v[i].created_unix_ms >= v[i - 1].created_unix_ms);
    }
    qsort(listed, n, sizeof(listed[0]), cmp_str);
    for (size_t i = 0; i < n; i++)
        assert_string_equal(listed[i], all[i]); /* the same set of ids */
    free(listed);
    free_list(v, n);

    /* Each item holds what its thread wrote. */
    ap_review_item it = get_ok(fx->s, ad[5].ids[7], true);
    assert_string_equal(it.request, "{\"t\":5,\"i\":7}");
    ap_review_item_release(&it);
    free(ad);
}

/* ---- redis only */

/* Killed: calls fail fast with AP_ENETWORK; restarted: the next calls reconnect and work. */
static void test_review__redis_outage(void **state)
{
    struct fx *fx = need(state);
    char id[AP_REVIEW_ID_MAX], id2[AP_REVIEW_ID_MAX], empty[] = "{}", after[] = "{\"after\":1}";
    ap_review_item it;
    ap_error err = {0};
    size_t n;

    add_n(fx->s, 1, id);
    ap_test_redis_kill(&redis);

    double t0 = now_ms();
    assert_int_equal(ap_review_get(fx->s, id, false, &it, &err), AP_ENETWORK);
    assert_true(now_ms() - t0 < 1000);
    assert_non_null(strstr(err.msg, "redis 127.0.0.1"));
    t0 = now_ms();
    for (int i = 0; i < 20; i++) {
        assert_int_equal(ap_review_add(fx->s, &(ap_review_item){.request = empty}, id2, NULL),
                         AP_ENETWORK);
        assert_int_equal(ap_review_count(fx->s, AP_REVIEW_PENDING, &n, NULL), AP_ENETWORK);
        assert_int_equal(ap_review_resolve(fx->s, id, AP_REVIEW_REJECTED, NULL, NULL, NULL),
                         AP_ENETWORK);
        assert_int_equal(ap_review_purge(fx->s, 0, NULL, NULL), AP_ENETWORK);
    }
    assert_true(now_ms() - t0 < 1000); /* 80 calls: no waiting on a dead server */

    assert_true(ap_test_redis_start(&redis));
    t0 = now_ms();
    ap_status rc;
    do {
        rc = ap_review_add(fx->s, &(ap_review_item){.request = after}, id2, NULL);
        if (rc != AP_OK)
            sleep_ms(20);
    } while (rc != AP_OK && now_ms() - t0 < 5000);
    assert_int_equal(rc, AP_OK);
    assert_true(now_ms() - t0 < 3000); /* retried every 200 ms */
    it = get_ok(fx->s, id2, true);
    assert_string_equal(it.request, "{\"after\":1}");
    ap_review_item_release(&it);
    /* The server kept nothing (no persistence in this test): the old item is gone, not an
     * error. */
    assert_int_equal(ap_review_get(fx->s, id, false, &it, NULL), AP_ENOTFOUND);
}

/* Down at open: the store opens, calls fail fast until the server is there. */
static void test_review__redis_down_at_open(void **state)
{
    struct fx *fx = need(state);
    char url[64], id[AP_REVIEW_ID_MAX], empty[] = "{}";
    size_t n;
    (void)fx;

    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", ap_test_free_port());
    ap_review_store *s = open_store(url);
    assert_string_equal(ap_review_backend(s), "redis");
    double t0 = now_ms();
    for (int i = 0; i < 10; i++) {
        assert_int_equal(ap_review_count(s, AP_REVIEW_PENDING, &n, NULL), AP_ENETWORK);
        assert_int_equal(ap_review_add(s, &(ap_review_item){.request = empty}, id, NULL),
                         AP_ENETWORK);
    }
    assert_true(now_ms() - t0 < 1000);
    ap_review_close(s);
}

/* ---- sqlite only */

/* One file for the cache and the review queue: each keeps its own table, both reopen. */
static void test_review__sqlite_shared_with_cache(void **state)
{
    struct fx *fx = need(state);
    char cache_url[400], id[AP_REVIEW_ID_MAX];
    ap_cache_opts o;
    ap_cache *c = NULL;
    ap_error err = {0};

    snprintf(cache_url, sizeof(cache_url), "sqlite://%s/review.db", fx->dir);
    ap_cache_opts_init(&o);
    o.url = cache_url;
    if (ap_cache_open(&o, &c, &err) != AP_OK)
        fail_msg("cache open: %s", err.msg);
    add_n(fx->s, 1, id);
    ap_cache_close(c);
    ap_review_close(fx->s);
    fx->s = NULL;

    /* Both again, the cache first (its schema check must still pass), then the queue. */
    c = NULL;
    err = (ap_error){0};
    if (ap_cache_open(&o, &c, &err) != AP_OK)
        fail_msg("cache reopen: %s", err.msg);
    fx->s = open_store(fx->url);
    ap_review_item it = get_ok(fx->s, id, true);
    assert_string_equal(it.request, "{\"n\":1}");
    ap_review_item_release(&it);
    ap_cache_close(c);
}

/* "sqlite://relative.db" is relative to the working directory. */
static void test_review__sqlite_relative_url(void **state)
{
    struct fx *fx = need(state);
    char cwd[PATH_MAX], id[AP_REVIEW_ID_MAX];
    struct stat sb;

    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(fx->dir), 0);
    ap_review_store *s = open_store("sqlite://rel.db");
    add_n(s, 1, id);
    ap_review_close(s);
    assert_int_equal(chdir(cwd), 0);

    char path[400];
    snprintf(path, sizeof(path), "%s/rel.db", fx->dir);
    assert_int_equal(stat(path, &sb), 0);
    char url[420];
    snprintf(url, sizeof(url), "sqlite://%s", path);
    s = open_store(url);
    ap_review_item it = get_ok(s, id, false);
    assert_string_equal(it.reason, "failed_checks 1");
    ap_review_item_release(&it);
    ap_review_close(s);
    rm_db_files(fx->dir, "rel.db");
}

/* ---- no backend */

static void test_review__open_errors(void **state)
{
    static const char *const bad[] = {
        "",
        "http://x",
        "sqlite:/x.db",
        "sqlite://",
        "redis://",
        "redis://:6379",
        "redis://host:0",
        "redis://host:99999",
        "redis://host:12x",
        "redis://host:6379/db",
        "redis://[::1",
    };
    ap_review_store *s = NULL;
    ap_error err = {0};
    (void)state;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err = (ap_error){0};
        if (ap_review_open(bad[i], &s, &err) != AP_EINVAL)
            fail_msg("\"%s\" opened (%s)", bad[i], err.msg);
        assert_null(s);
        assert_true(err.msg[0] != '\0');
    }
    assert_int_equal(ap_review_open(NULL, &s, NULL), AP_EINVAL);
    /* A file that cannot be created, and a directory: AP_EIO. */
    err = (ap_error){0};
    assert_int_equal(ap_review_open("sqlite:///nonexistent-dir-ap/x/review.db", &s, &err), AP_EIO);
    assert_null(s);
    assert_int_equal(ap_review_open("sqlite:///tmp", &s, NULL), AP_EIO);
    /* A file that is not a database. */
    char dir[] = "/tmp/ap_review_bad_XXXXXX", path[64], url[80];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/junk.db", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    for (int i = 0; i < 100; i++)
        fputs("this is not an sqlite database, just text. ", f);
    fclose(f);
    snprintf(url, sizeof(url), "sqlite://%s", path);
    assert_int_equal(ap_review_open(url, &s, NULL), AP_EIO);
    assert_null(s);
    unlink(path);
    rmdir(dir);
    /* Accepted forms (redis opens even with nothing listening). */
    static const char *const good[] = {"redis://127.0.0.1:1", "redis://127.0.0.1:1/0",
                                       "redis://127.0.0.1:1/", "redis://[::1]:1/2",
                                       "redis://localhost"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        err = (ap_error){0};
        if (ap_review_open(good[i], &s, &err) != AP_OK)
            fail_msg("\"%s\": %s", good[i], err.msg);
        ap_review_close(s);
        s = NULL;
    }
    ap_review_close(NULL); /* a no-op */
}

/* Fields over 64 MiB are refused before any I/O: on a Redis store with no server the answer
 * is AP_ETOOLARGE, not AP_ENETWORK. */
static void test_review__too_large(void **state)
{
    size_t big = ((size_t)64 << 20) + 1;
    char *huge = malloc(big + 1), url[64], id[AP_REVIEW_ID_MAX];
    (void)state;

    assert_non_null(huge);
    memset(huge, 'x', big);
    huge[big] = '\0';
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", ap_test_free_port());
    ap_review_store *s = open_store(url);
    ap_review_item it = item_of(NULL, "m", NULL, "r", huge, NULL);
    assert_int_equal(ap_review_add(s, &it, id, NULL), AP_ETOOLARGE);
    it = item_of(NULL, "m", NULL, "r", "{}", huge);
    assert_int_equal(ap_review_add(s, &it, id, NULL), AP_ETOOLARGE);
    assert_int_equal(
        ap_review_resolve(s, "rv_000000000000000000000000", AP_REVIEW_RESOLVED, huge, NULL, NULL),
        AP_ETOOLARGE);
    huge[big - 1] = '\0'; /* exactly 64 MiB passes the check, and reaches the (dead) server */
    it = item_of(NULL, "m", NULL, "r", huge, NULL);
    assert_int_equal(ap_review_add(s, &it, id, NULL), AP_ENETWORK);
    ap_review_close(s);
    free(huge);
}

static void test_review__status_names(void **state)
{
    ap_review_status st = AP_REVIEW_REJECTED;
    (void)state;

    assert_string_equal(ap_review_status_name(AP_REVIEW_PENDING), "pending");
    assert_string_equal(ap_review_status_name(AP_REVIEW_RESOLVED), "resolved");
    assert_string_equal(ap_review_status_name(AP_REVIEW_REJECTED), "rejected");
    assert_string_equal(ap_review_status_name((ap_review_status)3), "unknown");
    assert_string_equal(ap_review_status_name((ap_review_status)-1), "unknown");
    for (int i = AP_REVIEW_PENDING; i <= AP_REVIEW_REJECTED; i++) {
        assert_int_equal(ap_review_status_parse(ap_review_status_name((ap_review_status)i), &st),
                         AP_OK);
        assert_int_equal(st, i);
    }
    st = AP_REVIEW_RESOLVED;
    assert_int_equal(ap_review_status_parse("Pending", &st), AP_EINVAL);
    assert_int_equal(ap_review_status_parse("", &st), AP_EINVAL);
    assert_int_equal(ap_review_status_parse("unknown", &st), AP_EINVAL);
    assert_int_equal(ap_review_status_parse(NULL, &st), AP_EINVAL);
    assert_int_equal(st, AP_REVIEW_RESOLVED); /* untouched on failure */
}

#define ON(be, f) cmocka_unit_test_prestate_setup_teardown(f, fx_setup, fx_teardown, (void *)&be)
#define SUITE(be)                                                                                  \
    ON(be, test_review__add_get_roundtrip), ON(be, test_review__list_and_count),                   \
        ON(be, test_review__resolve_and_reject), ON(be, test_review__double_resolve_loses),        \
        ON(be, test_review__racing_reviewers), ON(be, test_review__unknown_and_malformed_ids),     \
        ON(be, test_review__purge_old_resolved_only), ON(be, test_review__persists_across_reopen), \
        ON(be, test_review__concurrent_adds)

int main(void)
{
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_review__open_errors),
        cmocka_unit_test(test_review__status_names),
        cmocka_unit_test(test_review__too_large),
    };
    const struct CMUnitTest on_sqlite[] = {
        SUITE(be_sqlite),
        ON(be_sqlite, test_review__sqlite_shared_with_cache),
        ON(be_sqlite, test_review__sqlite_relative_url),
    };
    const struct CMUnitTest on_redis[] = {
        SUITE(be_redis), ON(be_redis, test_review__purge_many),
        ON(be_redis, test_review__redis_down_at_open),
        ON(be_redis, test_review__redis_outage), /* last: it restarts the server */
    };
    int failed = 0;

    /* hiredis writes with write(2): a write to a server just killed must not kill us. */
    signal(SIGPIPE, SIG_IGN);
    failed += cmocka_run_group_tests_name("review", pure, NULL, NULL);
    failed += cmocka_run_group_tests_name("review_sqlite", on_sqlite, NULL, NULL);
    failed += cmocka_run_group_tests_name("review_redis", on_redis, redis_group_setup,
                                          redis_group_teardown);
    return failed;
}
