/*
 * test_breaker_sync.c - ap_breaker_force() (time passed in, every transition at its exact
 * millisecond) and breaker sharing between gateways through a real redis-server this binary
 * starts on free loopback ports (the Redis cases skip, saying so, when redis-server is not
 * installed).
 *
 * Case by case:
 *  - force OPEN refuses until probe_at, then hands out a half-open probe; force CLOSED resets
 *    the counters; forced changes never call on_change; forcing OPEN twice keeps the later
 *    probe_at and counts one opening; HALF_OPEN and untrackable names are not forced;
 *  - two sets, each with its own sync: one trips (its on_change publishes) and the other turns
 *    OPEN and refuses; the first closes after a good probe and the other turns CLOSED;
 *  - a set started after an opening reads the hash and is OPEN when start returns; stale and
 *    malformed hash entries are ignored, the stale ones deleted;
 *  - Redis down at start: start succeeds, not connected; Redis up: connected and syncing;
 *    Redis killed: disconnected, transitions queue; Redis back: reconnected, the queue is sent;
 *  - the queue keeps the newest QUEUE_CAP (256) transitions while Redis is down;
 *  - garbage published on the channel (and our own echo) changes nothing;
 *  - start's argument checks; stop returns promptly whether Redis is up or refusing.
 * Waits for the background thread poll with a generous bound (WAIT_MS), never a fixed sleep.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "aperture/resilience.h"
#include "redis_testutil.h"

#define WAIT_MS  8000 /* for the sync thread to act; it usually takes a few ms */
#define COOLDOWN 60000
#define DEP      "openai/gpt-4o"

/* ---- helpers --------------------------------------------------------------------------------- */

static int64_t clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void)
{
    return clock_ms(CLOCK_MONOTONIC);
}

static int64_t unix_ms(void)
{
    return clock_ms(CLOCK_REALTIME);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Poll cond every 10 ms; fail after WAIT_MS. */
#define EVENTUALLY(cond)                                                                           \
    do {                                                                                           \
        int64_t t0_ = mono_ms();                                                                   \
        while (!(cond)) {                                                                          \
            if (mono_ms() - t0_ > WAIT_MS)                                                         \
                fail_msg("%s:%d: still not true after %d ms: %s", __FILE__, __LINE__, WAIT_MS,     \
                         #cond);                                                                   \
            sleep_ms(10);                                                                          \
        }                                                                                          \
    } while (0)

struct counter {
    int changes;
};

static void count_change(void *ctx, const char *deployment, ap_breaker_state from,
                         ap_breaker_state to, int64_t now_ms)
{
    (void)deployment, (void)from, (void)to, (void)now_ms;
    ((struct counter *)ctx)->changes++;
}

static ap_breaker_set *
new_set(void (*fn)(void *, const char *, ap_breaker_state, ap_breaker_state, int64_t), void *ctx)
{
    ap_breaker_opts o;
    ap_breaker_set *s = NULL;
    ap_breaker_opts_init(&o);
    o.consecutive_failures = 3;
    o.error_rate = 0;
    o.cooldown_ms = COOLDOWN;
    o.on_change = fn;
    o.on_change_ctx = ctx;
    assert_int_equal(ap_breaker_set_new(&o, &s, NULL), AP_OK);
    return s;
}

static void info_of(const ap_breaker_info *i, void *ctx)
{
    ap_breaker_info *want = ctx;
    if (strcmp(i->deployment, want->deployment) == 0) {
        const char *name = want->deployment;
        *want = *i;
        want->deployment = name;
    }
}

/* The snapshot of one deployment (state CLOSED, times_opened 0 when never seen). */
static ap_breaker_info info(ap_breaker_set *s, const char *dep)
{
    ap_breaker_info i = {.deployment = dep};
    ap_breaker_foreach(s, info_of, &i);
    return i;
}

static void count_one(const ap_breaker_info *i, void *ctx)
{
    (void)i;
    (*(int *)ctx)++;
}

static int n_tracked(ap_breaker_set *s)
{
    int n = 0;
    ap_breaker_foreach(s, count_one, &n);
    return n;
}

/* ---- force ----------------------------------------------------------------------------------- */

static void test_breaker_sync__force_open_refuses_until_probe_at(void **state)
{
    (void)state;
    struct counter c = {0};
    ap_breaker_set *s = new_set(count_change, &c);
    bool probe = true;

    ap_breaker_force(s, DEP, AP_BREAKER_OPEN, 1000, 5000);
    assert_int_equal(ap_breaker_state_get(s, DEP), AP_BREAKER_OPEN);
    assert_int_equal(c.changes, 0); /* forced: no callback */
    assert_false(ap_breaker_allow(s, DEP, 1000, &probe));
    assert_false(probe);
    assert_false(ap_breaker_allow(s, DEP, 4999, NULL));
    assert_int_equal(ap_breaker_wait_ms(s, DEP, 1000), 4000);
    ap_breaker_info i = info(s, DEP);
    assert_int_equal(i.times_opened, 1);
    assert_int_equal(i.opened_at_ms, 1000);
    assert_int_equal(i.probe_at_ms, 5000);

    /* The cooldown as forced is over: one probe, then everyone else waits. */
    assert_true(ap_breaker_allow(s, DEP, 5000, &probe));
    assert_true(probe);
    assert_int_equal(ap_breaker_state_get(s, DEP), AP_BREAKER_HALF_OPEN);
    assert_int_equal(c.changes, 1); /* that transition is local: reported */
    assert_false(ap_breaker_allow(s, DEP, 5001, &probe));
    ap_breaker_record(s, DEP, 5100, true, true);
    assert_int_equal(ap_breaker_state_get(s, DEP), AP_BREAKER_CLOSED);
    assert_int_equal(c.changes, 2);
    ap_breaker_set_free(s);
}

static void test_breaker_sync__force_closed_resets_counters(void **state)
{
    (void)state;
    struct counter c = {0};
    ap_breaker_set *s = new_set(count_change, &c);

    /* Two failures of three: forced CLOSED forgets them, so three more are needed. */
    ap_breaker_record(s, DEP, 100, false, false);
    ap_breaker_record(s, DEP, 101, false, false);
    ap_breaker_force(s, DEP, AP_BREAKER_CLOSED, 102, 0);
    ap_breaker_record(s, DEP, 103, false, false);
    ap_breaker_record(s, DEP, 104, false, false);
    assert_int_equal(ap_breaker_state_get(s, DEP), AP_BREAKER_CLOSED);
    assert_int_equal(info(s, DEP).consecutive_failures, 2);
    ap_breaker_record(s, DEP, 105, false, false);
    assert_int_equal(ap_breaker_state_get(s, DEP), AP_BREAKER_OPEN);
    assert_int_equal(c.changes, 1);

    /* OPEN (opened here) -> forced CLOSED: requests flow at once, no callback. */
    ap_breaker_force(s, DEP, AP_BREAKER_CLOSED, 200, 0);
    assert_int_equal(ap_breaker_state_get(s, DEP), AP_BREAKER_CLOSED);
    assert_true(ap_breaker_allow(s, DEP, 201, NULL));
    assert_int_equal(ap_breaker_wait_ms(s, DEP, 201), 0);
    assert_int_equal(c.changes, 1);
    assert_int_equal(info(s, DEP).times_opened, 1); /* history is kept */

    /* HALF_OPEN with the probe out -> forced CLOSED: the late probe result counts as normal. */
    ap_breaker_force(s, DEP, AP_BREAKER_OPEN, 300, 400);
    bool probe = false;
    assert_true(ap_breaker_allow(s, DEP, 400, &probe));
    assert_true(probe);
    assert_int_equal(c.changes, 2); /* OPEN -> HALF_OPEN, local */
    ap_breaker_force(s, DEP, AP_BREAKER_CLOSED, 401, 0);
    assert_int_equal(ap_breaker_state_get(s, DEP), AP_BREAKER_CLOSED);
    assert_true(ap_breaker_allow(s, DEP, 402, &probe));
    assert_false(probe);
    ap_breaker_record(s, DEP, 403, false, true);
    assert_int_equal(ap_breaker_state_get(s, DEP), AP_BREAKER_CLOSED);
    assert_int_equal(info(s, DEP).consecutive_failures, 1);
    assert_int_equal(c.changes, 2);
    ap_breaker_set_free(s);
}

static void test_breaker_sync__force_open_twice_keeps_later(void **state)
{
    (void)state;
    struct counter c = {0};
    ap_breaker_set *s = new_set(count_change, &c);

    ap_breaker_force(s, DEP, AP_BREAKER_OPEN, 1000, 5000);
    ap_breaker_force(s, DEP, AP_BREAKER_OPEN, 1500, 3000); /* earlier: ignored */
    assert_int_equal(ap_breaker_wait_ms(s, DEP, 1000), 4000);
    ap_breaker_force(s, DEP, AP_BREAKER_OPEN, 2000, 8000); /* later: taken */
    assert_int_equal(ap_breaker_wait_ms(s, DEP, 1000), 7000);
    assert_false(ap_breaker_allow(s, DEP, 7999, NULL));
    ap_breaker_info i = info(s, DEP);
    assert_int_equal(i.times_opened, 1); /* one opening, however often it is repeated */
    assert_int_equal(i.opened_at_ms, 1000);
    assert_int_equal(c.changes, 0);

    /* Opened here (probe at 10000 + COOLDOWN): an earlier remote end does not shorten it. */
    for (int k = 0; k < 3; k++)
        ap_breaker_record(s, "local", 10000, false, false);
    assert_int_equal(c.changes, 1);
    ap_breaker_force(s, "local", AP_BREAKER_OPEN, 10001, 10500);
    assert_int_equal(ap_breaker_wait_ms(s, "local", 10000), COOLDOWN);
    assert_int_equal(info(s, "local").times_opened, 1);

    /* A forced opening of a HALF_OPEN breaker is an opening: it counts, with its own end. */
    assert_true(ap_breaker_allow(s, DEP, 8000, NULL));
    assert_int_equal(ap_breaker_state_get(s, DEP), AP_BREAKER_HALF_OPEN);
    ap_breaker_force(s, DEP, AP_BREAKER_OPEN, 8001, 9000);
    assert_int_equal(ap_breaker_state_get(s, DEP), AP_BREAKER_OPEN);
    assert_int_equal(info(s, DEP).times_opened, 2);
    assert_int_equal(ap_breaker_wait_ms(s, DEP, 8001), 999);
    ap_breaker_set_free(s);
}

static void test_breaker_sync__force_ignores_half_open_and_bad_names(void **state)
{
    (void)state;
    struct counter c = {0};
    ap_breaker_set *s = new_set(count_change, &c);
    char long_name[AP_BREAKER_MAX_NAME + 2];
    memset(long_name, 'x', sizeof(long_name) - 1);
    long_name[sizeof(long_name) - 1] = '\0';

    ap_breaker_force(s, DEP, AP_BREAKER_HALF_OPEN, 1000, 5000);
    assert_int_equal(n_tracked(s), 0); /* not even created */
    ap_breaker_force(s, DEP, (ap_breaker_state)7, 1000, 5000);
    assert_int_equal(n_tracked(s), 0);
    ap_breaker_force(s, long_name, AP_BREAKER_OPEN, 1000, 5000);
    ap_breaker_force(s, NULL, AP_BREAKER_OPEN, 1000, 5000);
    assert_int_equal(n_tracked(s), 0);
    assert_true(ap_breaker_allow(s, long_name, 1001, NULL)); /* untracked: let through */

    /* A deployment never seen is created by a forced CLOSED too (and stays CLOSED). */
    ap_breaker_force(s, "fresh", AP_BREAKER_CLOSED, 1000, 0);
    assert_int_equal(n_tracked(s), 1);
    assert_int_equal(ap_breaker_state_get(s, "fresh"), AP_BREAKER_CLOSED);
    assert_int_equal(c.changes, 0);
    ap_breaker_set_free(s);
}

/* ---- redis-server processes ------------------------------------------------------------------ */

static struct {
    bool absent;
    struct ap_test_redis main;  /* shared by the cases that do not stop it */
    struct ap_test_redis extra; /* a case's own, to stop and start; killed by its teardown */
} redis;

static int redis_group_setup(void **state)
{
    (void)state;
    /* The raw connections below write to sockets a killed server closed. */
    signal(SIGPIPE, SIG_IGN);
    if (!ap_test_redis_find(&redis.main)) {
        redis.absent = true;
        print_message("redis-server not found: skipping the redis cases\n");
        return 0;
    }
    /* extra runs the same executable; its port is picked by each case */
    memcpy(redis.extra.bin, redis.main.bin, sizeof(redis.extra.bin));
    redis.main.port = ap_test_free_port();
    if (redis.main.port <= 0 || !ap_test_redis_start(&redis.main)) {
        ap_test_redis_kill(&redis.main);
        print_error("could not start %s on port %d\n", redis.main.bin, redis.main.port);
        return -1;
    }
    return 0;
}

static int redis_group_teardown(void **state)
{
    (void)state;
    ap_test_redis_kill(&redis.main);
    return 0;
}

/* Teardown of the cases with their own server: a failed assertion leaves it running. */
static int kill_extra(void **state)
{
    (void)state;
    ap_test_redis_kill(&redis.extra);
    return 0;
}

static void need_redis(void)
{
    if (redis.absent)
        skip();
}

/* ---- gateways: a set whose on_change publishes through its sync ------------------------------ */

struct node {
    ap_breaker_set *set;
    ap_breaker_sync *sync;
};

/* The pattern the server follows: publish OPEN with the cooldown's end on the wall clock. */
static void publish_change(void *ctx, const char *deployment, ap_breaker_state from,
                           ap_breaker_state to, int64_t now_ms)
{
    (void)from;
    struct node *n = ctx;
    int64_t until = 0;
    if (to == AP_BREAKER_OPEN)
        until = unix_ms() + ap_breaker_wait_ms(n->set, deployment, now_ms);
    ap_breaker_sync_publish(n->sync, deployment, to, until);
}

static struct node *node_new(int port, const char *prefix, const char *instance)
{
    struct node *n = calloc(1, sizeof(*n));
    char url[64];
    ap_error err = {0};
    assert_non_null(n);
    n->set = new_set(publish_change, n);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", port);
    if (ap_breaker_sync_start(n->set, url, prefix, instance, &n->sync, &err) != AP_OK)
        fail_msg("start: %s", err.msg);
    assert_non_null(n->sync);
    return n;
}

static void node_free(struct node *n)
{
    if (n == NULL)
        return;
    ap_breaker_sync_stop(n->sync);
    ap_breaker_set_free(n->set);
    free(n);
}

/* Trip dep on n: consecutive_failures failures now. */
static void trip(struct node *n, const char *dep)
{
    for (int k = 0; k < 3; k++)
        ap_breaker_record(n->set, dep, mono_ms(), false, false);
    assert_int_equal(ap_breaker_state_get(n->set, dep), AP_BREAKER_OPEN);
}

/* Close dep on n: a good probe once its (real) cooldown would be over. */
static void heal(struct node *n, const char *dep)
{
    int64_t later = mono_ms() + COOLDOWN;
    bool probe = false;
    assert_true(ap_breaker_allow(n->set, dep, later, &probe));
    assert_true(probe);
    ap_breaker_record(n->set, dep, later, true, true);
    assert_int_equal(ap_breaker_state_get(n->set, dep), AP_BREAKER_CLOSED);
}

static bool is_state(struct node *n, const char *dep, ap_breaker_state st)
{
    return ap_breaker_state_get(n->set, dep) == st;
}

/* A unique prefix per case, so cases sharing the server do not hear each other. */
static const char *prefix_for(const char *name)
{
    static char buf[128];
    snprintf(buf, sizeof(buf), "t%ld:%s", (long)getpid(), name);
    return buf;
}

static redisContext *raw_connect(int port)
{
    struct timeval tv = {.tv_sec = 2};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    assert_non_null(c);
    assert_int_equal(c->err, 0);
    assert_int_equal(redisSetTimeout(c, tv), REDIS_OK);
    return c;
}

/* One command (argv, binary-safe), its reply's integer (-1 for another type). */
static long long raw_int(redisContext *c, int argc, const char **argv, const size_t *lens)
{
    redisReply *r = redisCommandArgv(c, argc, argv, lens);
    assert_non_null(r);
    long long v = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    return v;
}

static long long hexists(redisContext *c, const char *hash, const char *field)
{
    return raw_int(c, 3, (const char *[]){"HEXISTS", hash, field}, NULL);
}

static long long hlen(redisContext *c, const char *hash)
{
    return raw_int(c, 2, (const char *[]){"HLEN", hash}, NULL);
}

/* ---- sync ------------------------------------------------------------------------------------ */

static void test_breaker_sync__open_and_close_propagate(void **state)
{
    (void)state;
    need_redis();
    const char *prefix = prefix_for("propagate");
    struct node *a = node_new(redis.main.port, prefix, "a");
    struct node *b = node_new(redis.main.port, prefix, "b");
    assert_true(ap_breaker_sync_connected(a->sync));
    assert_true(ap_breaker_sync_connected(b->sync));

    trip(a, DEP);
    EVENTUALLY(is_state(b, DEP, AP_BREAKER_OPEN));
    assert_false(ap_breaker_allow(b->set, DEP, mono_ms(), NULL));
    /* B's cooldown is A's, as B's monotonic clock sees it. */
    long wait = ap_breaker_wait_ms(b->set, DEP, mono_ms());
    assert_true(wait > COOLDOWN - WAIT_MS - 2000 && wait <= COOLDOWN + 2000);
    assert_int_equal(info(b->set, DEP).times_opened, 1);

    /* A's good probe closes it everywhere; B, still in its cooldown, follows at once. */
    heal(a, DEP);
    EVENTUALLY(is_state(b, DEP, AP_BREAKER_CLOSED));
    assert_true(ap_breaker_allow(b->set, DEP, mono_ms(), NULL));

    /* The other way round, and B's forced state did not echo back to A. */
    trip(b, "other/model");
    EVENTUALLY(is_state(a, "other/model", AP_BREAKER_OPEN));
    assert_int_equal(ap_breaker_state_get(a->set, DEP), AP_BREAKER_CLOSED);
    node_free(a);
    node_free(b);
}

static void test_breaker_sync__late_starter_reads_hash(void **state)
{
    (void)state;
    need_redis();
    const char *prefix = prefix_for("late");
    char hash[160], until_old[32], until_far[32], until_ok[32];
    snprintf(hash, sizeof(hash), "%s:open", prefix);
    redisContext *raw = raw_connect(redis.main.port);
    struct node *a = node_new(redis.main.port, prefix, "a");

    trip(a, DEP);
    EVENTUALLY(hexists(raw, hash, DEP) == 1);
    /* Entries C must not believe: over already, a week ahead, not a number, a bad name. */
    snprintf(until_old, sizeof(until_old), "%" PRId64, unix_ms() - 1000);
    snprintf(until_far, sizeof(until_far), "%" PRId64, unix_ms() + INT64_C(7) * 86400000);
    snprintf(until_ok, sizeof(until_ok), "%" PRId64, unix_ms() + COOLDOWN);
    raw_int(raw, 4, (const char *[]){"HSET", hash, "stale", until_old}, NULL);
    raw_int(raw, 4, (const char *[]){"HSET", hash, "far", until_far}, NULL);
    raw_int(raw, 4, (const char *[]){"HSET", hash, "nan", "12x4"}, NULL);
    raw_int(raw, 4, (const char *[]){"HSET", hash, "neg", "-5"}, NULL);
    raw_int(raw, 4, (const char *[]){"HSET", hash, "ctl\n", until_ok}, NULL);

    struct node *c = node_new(redis.main.port, prefix, "c");
    assert_true(ap_breaker_sync_connected(c->sync));
    /* Read during start: OPEN before the first request, no waiting. */
    assert_int_equal(ap_breaker_state_get(c->set, DEP), AP_BREAKER_OPEN);
    assert_false(ap_breaker_allow(c->set, DEP, mono_ms(), NULL));
    long wait = ap_breaker_wait_ms(c->set, DEP, mono_ms());
    assert_true(wait > COOLDOWN - WAIT_MS - 2000 && wait <= COOLDOWN + 2000);
    assert_int_equal(n_tracked(c->set), 1);
    /* The stale entry was deleted; the malformed ones are left alone (and ignored). */
    assert_int_equal(hexists(raw, hash, "stale"), 0);
    assert_int_equal(hexists(raw, hash, "far"), 1);
    assert_int_equal(hexists(raw, hash, "nan"), 1);

    /* A closes: the hash forgets it, so the next starter is CLOSED. */
    heal(a, DEP);
    EVENTUALLY(is_state(c, DEP, AP_BREAKER_CLOSED));
    EVENTUALLY(hexists(raw, hash, DEP) == 0);
    struct node *d = node_new(redis.main.port, prefix, "d");
    assert_int_equal(n_tracked(d->set), 0);
    node_free(d);
    node_free(c);
    node_free(a);
    redisFree(raw);
}

static void test_breaker_sync__redis_down_then_up_then_restarted(void **state)
{
    (void)state;
    need_redis();
    struct ap_test_redis *sv = &redis.extra;
    sv->port = ap_test_free_port();
    assert_true(sv->port > 0);
    const char *prefix = prefix_for("down");
    struct node *a = node_new(sv->port, prefix, "a");
    struct node *b = node_new(sv->port, prefix, "b");
    assert_false(ap_breaker_sync_connected(a->sync));
    assert_false(ap_breaker_sync_connected(b->sync));

    /* Meanwhile each set works alone; A's opening waits in its queue. */
    trip(a, DEP);
    assert_int_equal(ap_breaker_state_get(b->set, DEP), AP_BREAKER_CLOSED);

    assert_true(ap_test_redis_start(sv));
    EVENTUALLY(ap_breaker_sync_connected(a->sync) && ap_breaker_sync_connected(b->sync));
    EVENTUALLY(is_state(b, DEP, AP_BREAKER_OPEN));

    /* Killed: both notice; A opens another while it is down. */
    ap_test_redis_kill(sv);
    EVENTUALLY(!ap_breaker_sync_connected(a->sync) && !ap_breaker_sync_connected(b->sync));
    trip(a, "second");
    sleep_ms(100);
    assert_int_equal(ap_breaker_state_get(b->set, "second"), AP_BREAKER_CLOSED);

    /* Back (empty: no persistence): reconnected; the queued opening reaches B (as a message
     * or through the hash, whichever of the two reconnects first), and live ones flow again. */
    assert_true(ap_test_redis_start(sv));
    EVENTUALLY(ap_breaker_sync_connected(a->sync) && ap_breaker_sync_connected(b->sync));
    EVENTUALLY(is_state(b, "second", AP_BREAKER_OPEN));
    heal(a, DEP);
    EVENTUALLY(is_state(b, DEP, AP_BREAKER_CLOSED));
    node_free(a);
    node_free(b);
    ap_test_redis_kill(sv);
}

static void test_breaker_sync__queue_keeps_newest(void **state)
{
    (void)state;
    need_redis();
    struct ap_test_redis *sv = &redis.extra;
    sv->port = ap_test_free_port();
    assert_true(sv->port > 0);
    const char *prefix = prefix_for("queue");
    char hash[160], dep[32];
    snprintf(hash, sizeof(hash), "%s:open", prefix);
    struct node *a = node_new(sv->port, prefix, "a");
    assert_false(ap_breaker_sync_connected(a->sync));

    int64_t until = unix_ms() + COOLDOWN;
    for (int i = 0; i < 600; i++) {
        snprintf(dep, sizeof(dep), "d%d", i);
        ap_breaker_sync_publish(a->sync, dep, AP_BREAKER_OPEN, until);
    }
    /* Not sent, dropped at once: a cooldown already over, HALF_OPEN, names not sendable. */
    ap_breaker_sync_publish(a->sync, "over", AP_BREAKER_OPEN, unix_ms() - 1);
    ap_breaker_sync_publish(a->sync, "half", AP_BREAKER_HALF_OPEN, until);
    ap_breaker_sync_publish(a->sync, "tab\there", AP_BREAKER_OPEN, until);
    ap_breaker_sync_publish(a->sync, "", AP_BREAKER_OPEN, until);
    ap_breaker_sync_publish(a->sync, NULL, AP_BREAKER_OPEN, until);

    assert_true(ap_test_redis_start(sv));
    redisContext *raw = raw_connect(sv->port);
    /* 256 kept ("over" took one slot of the ring and is skipped when sent). */
    EVENTUALLY(hlen(raw, hash) == 255);
    assert_int_equal(hexists(raw, hash, "d599"), 1);
    assert_int_equal(hexists(raw, hash, "d345"), 1);
    assert_int_equal(hexists(raw, hash, "d344"), 0);
    assert_int_equal(hexists(raw, hash, "d0"), 0);
    assert_int_equal(hexists(raw, hash, "over"), 0);
    assert_int_equal(hexists(raw, hash, "half"), 0);
    redisFree(raw);
    node_free(a);
    ap_test_redis_kill(sv);
}

static void publish_raw(redisContext *c, const char *channel, const char *p, size_t len)
{
    const char *argv[3] = {"PUBLISH", channel, p};
    const size_t lens[3] = {7, strlen(channel), len};
    assert_true(raw_int(c, 3, argv, lens) >= 0);
}

static void publish_str(redisContext *c, const char *channel, const char *p)
{
    publish_raw(c, channel, p, strlen(p));
}

static void test_breaker_sync__malformed_messages_ignored(void **state)
{
    (void)state;
    need_redis();
    const char *prefix = prefix_for("garbage");
    char ch[160], hash[160], m[2048], big_name[AP_BREAKER_MAX_NAME + 2], long_inst[80];
    snprintf(ch, sizeof(ch), "%s:ch", prefix);
    snprintf(hash, sizeof(hash), "%s:open", prefix);
    redisContext *raw = raw_connect(redis.main.port);
    /* The hash key holding another type: HGETALL fails, the sync carries on. */
    redisReply *r = redisCommandArgv(raw, 3, (const char *[]){"SET", hash, "x"}, NULL);
    assert_non_null(r);
    freeReplyObject(r);

    struct node *b = node_new(redis.main.port, prefix, "b");
    assert_true(ap_breaker_sync_connected(b->sync));
    int64_t fut = unix_ms() + COOLDOWN;

    static const char *const plain[] = {
        "", "no tabs at all", "x\topen\t123", "x\topen", "\t\t\t",
    };
    for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++)
        publish_str(raw, ch, plain[i]);
    /* Around a valid cooldown end: what comes before it and what after. */
    static const struct {
        const char *pre, *post;
    } around[] = {
        {"x\tajar\t", "\tg1"},       {"x\thalf_open\t", "\tg2"}, {"x\tOPEN\t", "\tg3"},
        {"\topen\t", "\tg4"}, /* no instance */
        {"x\topen\t", "\t"},  /* no deployment */
        {"x\topen\t", "\tg5\tmore"}, {"x\topen\t", "\tg6\x01"},  {"x\topen\t", "\tg7\n"},
        {"x\topen\t", "0000\tg8"}, /* too many digits */
        {"x\topen\t+", "\tg9"},      {"x\topen\t ", "\tg10"},    {"x\x7f\topen\t", "\tg11"},
    };
    for (size_t i = 0; i < sizeof(around) / sizeof(around[0]); i++) {
        snprintf(m, sizeof(m), "%s%" PRId64 "%s", around[i].pre, fut, around[i].post);
        publish_str(raw, ch, m);
    }
    snprintf(m, sizeof(m), "x\topen\t-5\tg12");
    publish_str(raw, ch, m);
    snprintf(m, sizeof(m), "x\topen\t%" PRId64 "\tg13", unix_ms() - 1000); /* over */
    publish_str(raw, ch, m);
    snprintf(m, sizeof(m), "x\topen\t%" PRId64 "\tg14", unix_ms() + INT64_C(2) * 86400000);
    publish_str(raw, ch, m);
    snprintf(m, sizeof(m), "x\topen\t999999999999999\tg15"); /* year 33658 */
    publish_str(raw, ch, m);
    memset(big_name, 'n', sizeof(big_name) - 1);
    big_name[sizeof(big_name) - 1] = '\0';
    snprintf(m, sizeof(m), "x\topen\t%" PRId64 "\t%s", fut, big_name);
    publish_str(raw, ch, m);
    memset(long_inst, 'i', 65);
    long_inst[65] = '\0';
    snprintf(m, sizeof(m), "%s\topen\t%" PRId64 "\tg16", long_inst, fut);
    publish_str(raw, ch, m);
    int n = snprintf(m, sizeof(m), "x\topen\t%" PRId64 "\tg17", fut);
    m[n - 2] = '\0'; /* an embedded NUL: "g\0" + "7" */
    publish_raw(raw, ch, m, (size_t)n);
    size_t blob_len = 100000;
    char *blob = malloc(blob_len);
    assert_non_null(blob);
    memset(blob, '\t', blob_len);
    publish_raw(raw, ch, blob, blob_len);
    free(blob);
    /* Our own message, as Redis echoes it: ignored. */
    snprintf(m, sizeof(m), "b\topen\t%" PRId64 "\tmine", fut);
    publish_str(raw, ch, m);
    /* A closing of a deployment B never saw is applied (created CLOSED), harmlessly. */
    publish_str(raw, ch, "x\tclosed\t0\tnever-seen");

    /* Messages arrive in order: once this one is applied, every one above has been handled. */
    snprintf(m, sizeof(m), "x\topen\t%" PRId64 "\tgood", fut);
    publish_str(raw, ch, m);
    EVENTUALLY(is_state(b, "good", AP_BREAKER_OPEN));
    assert_int_equal(n_tracked(b->set), 2);
    assert_int_equal(ap_breaker_state_get(b->set, "never-seen"), AP_BREAKER_CLOSED);
    assert_int_equal(info(b->set, "never-seen").times_opened, 0);
    assert_true(ap_breaker_sync_connected(b->sync));

    /* Still working both ways after all that. */
    trip(b, "from-b");
    publish_str(raw, ch, "x\tclosed\t0\tgood");
    EVENTUALLY(is_state(b, "good", AP_BREAKER_CLOSED));
    node_free(b);
    redisFree(raw);
}

static void test_breaker_sync__start_rejects_bad_arguments(void **state)
{
    (void)state;
    ap_breaker_set *s = new_set(NULL, NULL);
    ap_breaker_sync *sync = NULL;
    ap_error err = {0};
    char long_prefix[200], long_inst[80];
    memset(long_prefix, 'p', sizeof(long_prefix) - 1);
    long_prefix[sizeof(long_prefix) - 1] = '\0';
    memset(long_inst, 'i', sizeof(long_inst) - 1);
    long_inst[sizeof(long_inst) - 1] = '\0';

    static const char *const urls[] = {
        "http://127.0.0.1:6379", "redis://",       "redis://:6379",    "redis://h:0",
        "redis://h:65536",       "redis://h:12x",  "redis://h:6379/x", "redis://[::1",
        "redis://user@h",        "127.0.0.1:6379",
    };
    for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
        err.msg[0] = '\0';
        if (ap_breaker_sync_start(s, urls[i], NULL, NULL, &sync, &err) != AP_EINVAL)
            fail_msg("url \"%s\" accepted", urls[i]);
        assert_null(sync);
        assert_non_null(strstr(err.msg, "redis url"));
    }
    const char *u = "redis://127.0.0.1:1/0";
    assert_int_equal(ap_breaker_sync_start(NULL, u, NULL, NULL, &sync, &err), AP_EINVAL);
    assert_int_equal(ap_breaker_sync_start(s, NULL, NULL, NULL, &sync, &err), AP_EINVAL);
    assert_int_equal(ap_breaker_sync_start(s, u, NULL, NULL, NULL, &err), AP_EINVAL);
    assert_int_equal(ap_breaker_sync_start(s, u, "", NULL, &sync, &err), AP_EINVAL);
    assert_int_equal(ap_breaker_sync_start(s, u, "a\nb", NULL, &sync, &err), AP_EINVAL);
    assert_int_equal(ap_breaker_sync_start(s, u, long_prefix, NULL, &sync, &err), AP_EINVAL);
    assert_int_equal(ap_breaker_sync_start(s, u, NULL, "", &sync, &err), AP_EINVAL);
    assert_int_equal(ap_breaker_sync_start(s, u, NULL, "a\tb", &sync, &err), AP_EINVAL);
    assert_int_equal(ap_breaker_sync_start(s, u, NULL, long_inst, &sync, &err), AP_EINVAL);
    assert_null(sync);
    ap_breaker_sync_stop(NULL); /* a no-op */
    ap_breaker_set_free(s);
}

static void test_breaker_sync__stop_is_prompt(void **state)
{
    (void)state;
    ap_breaker_set *s = new_set(NULL, NULL);
    ap_breaker_sync *sync = NULL;
    char url[64];

    /* Nothing listening (connection refused), with transitions queued: no hang. */
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", ap_test_free_port());
    assert_int_equal(ap_breaker_sync_start(s, url, NULL, NULL, &sync, NULL), AP_OK);
    assert_false(ap_breaker_sync_connected(sync));
    ap_breaker_sync_publish(sync, DEP, AP_BREAKER_OPEN, unix_ms() + COOLDOWN);
    sleep_ms(50);
    int64_t t0 = mono_ms();
    ap_breaker_sync_stop(sync);
    assert_true(mono_ms() - t0 < 2000); /* one connect attempt at most; in practice ~0 */

    if (!redis.absent) {
        snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", redis.main.port);
        assert_int_equal(ap_breaker_sync_start(s, url, prefix_for("stop"), NULL, &sync, NULL),
                         AP_OK);
        assert_true(ap_breaker_sync_connected(sync));
        t0 = mono_ms();
        ap_breaker_sync_stop(sync);
        assert_true(mono_ms() - t0 < 2000); /* the thread sleeps in poll(): woken at once */
    }
    ap_breaker_set_free(s);
}

int main(void)
{
    const struct CMUnitTest force[] = {
        cmocka_unit_test(test_breaker_sync__force_open_refuses_until_probe_at),
        cmocka_unit_test(test_breaker_sync__force_closed_resets_counters),
        cmocka_unit_test(test_breaker_sync__force_open_twice_keeps_later),
        cmocka_unit_test(test_breaker_sync__force_ignores_half_open_and_bad_names),
        cmocka_unit_test(test_breaker_sync__start_rejects_bad_arguments),
    };
    const struct CMUnitTest sync[] = {
        cmocka_unit_test(test_breaker_sync__open_and_close_propagate),
        cmocka_unit_test(test_breaker_sync__late_starter_reads_hash),
        cmocka_unit_test_teardown(test_breaker_sync__redis_down_then_up_then_restarted, kill_extra),
        cmocka_unit_test_teardown(test_breaker_sync__queue_keeps_newest, kill_extra),
        cmocka_unit_test(test_breaker_sync__malformed_messages_ignored),
        cmocka_unit_test(test_breaker_sync__stop_is_prompt),
    };
    int failed = cmocka_run_group_tests_name("force", force, NULL, NULL);
    failed += cmocka_run_group_tests_name("sync", sync, redis_group_setup, redis_group_teardown);
    return failed;
}
