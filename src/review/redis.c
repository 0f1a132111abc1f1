/*
 * redis.c - the shared review queue: every gateway on one Redis sees the same items.
 *
 * Keys (ids are checked by review.c, so they are safe inside key names):
 *   ap:rv:item:<id>    hash: status ("0" pending, "1" resolved, "2" rejected), created and
 *                      resolved (ms since the epoch; resolved "0" while pending), and whichever
 *                      of task, model, client, reason, candidate, answer, reviewer, request are
 *                      set (a missing field reads as NULL)
 *   ap:rv:q:pending    sorted sets of ids by created ms, one per status: listing and counting
 *   ap:rv:q:resolved
 *   ap:rv:q:rejected
 *   ap:rv:done         sorted set of resolved and rejected ids by resolved ms: purge reads it
 *                      instead of every item of the two sets above
 * Nothing expires: a review queue is work to be done (ap_review_purge() removes old answers).
 *
 * Add and resolve are Lua scripts, so an item and its set memberships change together, and
 * resolve checks "still pending" and changes the item in one step: of two reviewers racing,
 * exactly one wins and the other is told the item is already resolved. Purge is a read then a
 * pipeline of deletes in batches; it needs no atomicity because nothing leaves the done state
 * but a purge, and DEL counts each item once when two gateways purge together.
 *
 * Failure. One connection behind a mutex, with connect and command timeouts of TIMEOUT_MS. An
 * I/O error (server gone, timeout) drops the connection and fails the call with AP_ENETWORK;
 * the next call dials again, at most once per RECONNECT_MS, and fails at once in between, so
 * a dead server costs callers nothing but the error. Dialing happens under the lock: other
 * callers wait for it (up to TIMEOUT_MS), which is what they would do for the answer anyway.
 * A connection the server closed while idle costs one failed call. Error replies fail with
 * AP_EIO and keep the connection.
 *
 * hiredis writes with write(2): the process must ignore SIGPIPE (the server does), or a write
 * to a server that just died kills it.
 */
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "core/core.h"
#include "review/review_int.h"
#include "net/redis_conn.h"

#define TIMEOUT_MS   200
#define RECONNECT_MS 200
#define PURGE_BATCH  500
#define STR_(x)      #x
#define STR(x)       STR_(x)
#define KEY_CAP      64 /* "ap:rv:item:" + id, with room */

#define PREFIX "ap:rv"
#define DONE   PREFIX ":done"

/* Hash fields, in the order HMGET asks for them; the request last (left out of listings). */
enum {
    F_STATUS,
    F_CREATED,
    F_RESOLVED,
    F_TASK,
    F_MODEL,
    F_CLIENT,
    F_REASON,
    F_CANDIDATE,
    F_ANSWER,
    F_REVIEWER,
    F_REQUEST,
    N_FIELDS
};
static const char *const field_names[N_FIELDS] = {
    "status", "created",   "resolved", "task",     "model",   "client",
    "reason", "candidate", "answer",   "reviewer", "request",
};

static const char *const queue_keys[] = {
    [AP_REVIEW_PENDING] = PREFIX ":q:pending",
    [AP_REVIEW_RESOLVED] = PREFIX ":q:resolved",
    [AP_REVIEW_REJECTED] = PREFIX ":q:rejected",
};

/* KEYS: item, pending set. ARGV: id, created ms, then field/value pairs. 1 added, 0 exists. */
static const char add_script[] = "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n"
                                 "redis.call('HSET', KEYS[1], unpack(ARGV, 3))\n"
                                 "redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])\n"
                                 "return 1\n";

/* KEYS: item, pending set, the new status's set, done. ARGV: id, new status, resolved ms,
 * answer, has answer ("1"/"0"), reviewer, has reviewer. Returns {0} done, {1} no such item,
 * {2, status} no longer pending. */
static const char resolve_script[] =
    "local st = redis.call('HGET', KEYS[1], 'status')\n"
    "if not st then return {1} end\n"
    "if st ~= '0' then return {2, tonumber(st) or -1} end\n"
    "local created = redis.call('HGET', KEYS[1], 'created')\n"
    "redis.call('HSET', KEYS[1], 'status', ARGV[2], 'resolved', ARGV[3])\n"
    "if ARGV[5] == '1' then redis.call('HSET', KEYS[1], 'answer', ARGV[4]) end\n"
    "if ARGV[7] == '1' then redis.call('HSET', KEYS[1], 'reviewer', ARGV[6]) end\n"
    "redis.call('ZREM', KEYS[2], ARGV[1])\n"
    "redis.call('ZADD', KEYS[3], created, ARGV[1])\n"
    "redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])\n"
    "return {0}\n";

struct redis_store {
    struct ap__review_backend super;
    pthread_mutex_t mu;
    redisContext *rc; /* NULL while down */
    double last_dial_ms;
    struct ap__redis_target tgt;
    char what[300]; /* "redis 127.0.0.1:6379", for messages */
};

static size_t item_key(char *out, const char *id)
{
    return (size_t)snprintf(out, KEY_CAP, PREFIX ":item:%s", id);
}

/* ---- the connection */

/* The connection broke: drop it (the next call dials again). Lock held. */
static ap_status lost(struct redis_store *s, ap_error *err)
{
    char why[160];
    snprintf(why, sizeof(why), "%s", s->rc && s->rc->err ? s->rc->errstr : "connection lost");
    redisFree(s->rc);
    s->rc = NULL;
    return ap_error_set(err, AP_ENETWORK, "review: %s: %s", s->what, why);
}

/* Take the lock and make sure of a connection; on AP_OK the caller holds the lock. */
static ap_status enter(struct redis_store *s, ap_error *err)
{
    char why[160];

    pthread_mutex_lock(&s->mu);
    if (s->rc != NULL)
        return AP_OK;
    double now = ap__now_ms();
    if (now - s->last_dial_ms < RECONNECT_MS) {
        pthread_mutex_unlock(&s->mu);
        return ap_error_set(err, AP_ENETWORK, "review: %s is unreachable", s->what);
    }
    s->last_dial_ms = now;
    s->rc = ap__redis_dial(&s->tgt, TIMEOUT_MS, why, sizeof(why));
    if (s->rc != NULL)
        return AP_OK;
    pthread_mutex_unlock(&s->mu);
    return ap_error_set(err, AP_ENETWORK, "review: %s: %s", s->what, why);
}

static void free_replies(redisReply **r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (r[i] != NULL)
            freeReplyObject(r[i]);
        r[i] = NULL;
    }
}

/* Queue one command (pipelining). */
static ap_status append(struct redis_store *s, int argc, const char **argv, const size_t *lens,
                        ap_error *err)
{
    if (redisAppendCommandArgv(s->rc, argc, argv, lens) != REDIS_OK)
        return lost(s, err); /* out of memory in hiredis: the pipeline is unusable */
    return AP_OK;
}

/* Read n replies of queued commands into out[] (all NULL on failure). Error replies fail with
 * AP_EIO after every reply has been read, so the connection stays in step. */
static ap_status replies(struct redis_store *s, size_t n, redisReply **out, ap_error *err)
{
    ap_status rc = AP_OK;
    for (size_t i = 0; i < n; i++) {
        void *r = NULL;
        if (redisGetReply(s->rc, &r) != REDIS_OK || r == NULL) {
            free_replies(out, i);
            return lost(s, err);
        }
        out[i] = r;
        if (out[i]->type == REDIS_REPLY_ERROR && rc == AP_OK)
            rc = ap_error_set(err, AP_EIO, "review: %s: %s", s->what, out[i]->str);
    }
    if (rc != AP_OK)
        free_replies(out, n);
    return rc;
}

/* One command, one reply. */
static ap_status command(struct redis_store *s, int argc, const char **argv, const size_t *lens,
                         redisReply **out, ap_error *err)
{
    ap_status rc = append(s, argc, argv, lens, err);
    return rc != AP_OK ? rc : replies(s, 1, out, err);
}

static ap_status unexpected(struct redis_store *s, const char *what, ap_error *err)
{
    return ap_error_set(err, AP_EIO, "review: %s: unexpected reply to %s", s->what, what);
}

/* ---- reading items */

static bool is_str(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_STRING;
}

/* A decimal int64 from a reply string. */
static bool parse_i64(const redisReply *r, int64_t *out)
{
    int64_t v = 0;
    size_t i = 0;
    bool neg = false;

    if (!is_str(r) || r->len == 0 || r->len > 19)
        return false;
    if (r->str[0] == '-') {
        neg = true;
        i = 1;
    }
    if (i == r->len)
        return false;
    for (; i < r->len; i++) {
        if (r->str[i] < '0' || r->str[i] > '9')
            return false;
        v = v * 10 + (r->str[i] - '0'); /* 18 digits at most: no overflow */
    }
    *out = neg ? -v : v;
    return true;
}

/* The HMGET fields of item id (F_STATUS.. the last one asked for) into it. AP_ENOTFOUND when
 * the item is gone (no status). */
static ap_status item_read(struct redis_store *s, const char *id, const redisReply *r,
                           size_t n_fields, ap_review_item *it, ap_error *err)
{
    int64_t status, created, resolved;
    ap_status rc = AP_OK;

    if (r->type != REDIS_REPLY_ARRAY || r->elements != n_fields)
        return unexpected(s, "HMGET", err);
    if (r->element[F_STATUS]->type == REDIS_REPLY_NIL)
        return ap_error_set(err, AP_ENOTFOUND, "review: no item \"%s\"", id);
    if (!parse_i64(r->element[F_STATUS], &status) || status < AP_REVIEW_PENDING ||
        status > AP_REVIEW_REJECTED || !parse_i64(r->element[F_CREATED], &created) ||
        !parse_i64(r->element[F_RESOLVED], &resolved))
        return ap_error_set(err, AP_EIO, "review: %s: item \"%s\" is malformed", s->what, id);
    memcpy(it->id, id, AP__REVIEW_ID_LEN + 1);
    it->status = (ap_review_status)status;
    it->created_unix_ms = created;
    it->resolved_unix_ms = resolved;
    char **dst[N_FIELDS] = {
        [F_TASK] = &it->task,         [F_MODEL] = &it->model,         [F_CLIENT] = &it->client,
        [F_REASON] = &it->reason,     [F_CANDIDATE] = &it->candidate, [F_ANSWER] = &it->answer,
        [F_REVIEWER] = &it->reviewer, [F_REQUEST] = &it->request,
    };
    for (size_t f = F_TASK; f < n_fields && rc == AP_OK; f++)
        if (is_str(r->element[f]))
            rc = ap__review_strndup(r->element[f]->str, r->element[f]->len, dst[f], err);
    return rc;
}

/* Queue HMGET of item id's fields F_STATUS..n_fields-1. key must live until the replies. */
static ap_status append_hmget(struct redis_store *s, const char *key, size_t klen, size_t n_fields,
                              ap_error *err)
{
    const char *argv[2 + N_FIELDS] = {"HMGET", key};
    size_t lens[2 + N_FIELDS] = {5, klen};
    for (size_t f = 0; f < n_fields; f++) {
        argv[2 + f] = field_names[f];
        lens[2 + f] = strlen(field_names[f]);
    }
    return append(s, (int)(2 + n_fields), argv, lens, err);
}

/* ---- the verbs */

static ap_status rd_add(struct ap__review_backend *base, const char *id, int64_t created_ms,
                        const ap_review_item *item, ap_error *err)
{
    struct redis_store *s = (struct redis_store *)base;
    const char *argv[5 + 2 + 2 * N_FIELDS];
    size_t lens[5 + 2 + 2 * N_FIELDS];
    char key[KEY_CAP], created[24];
    int argc = 0;
    redisReply *r = NULL;
    ap_status rc;

    snprintf(created, sizeof(created), "%" PRId64, created_ms);
#define ARG(p, n) (argv[argc] = (p), lens[argc++] = (n))
#define FIELD(f, v)                                                                                \
    do {                                                                                           \
        if ((v) != NULL) {                                                                         \
            ARG(field_names[f], strlen(field_names[f]));                                           \
            ARG((v), strlen(v));                                                                   \
        }                                                                                          \
    } while (0)
    ARG("EVAL", 4);
    ARG(add_script, sizeof(add_script) - 1);
    ARG("2", 1);
    size_t klen = item_key(key, id);
    ARG(key, klen);
    ARG(queue_keys[AP_REVIEW_PENDING], strlen(queue_keys[AP_REVIEW_PENDING]));
    ARG(id, AP__REVIEW_ID_LEN);
    ARG(created, strlen(created));
    FIELD(F_STATUS, "0");
    FIELD(F_CREATED, created);
    FIELD(F_RESOLVED, "0");
    FIELD(F_TASK, item->task);
    FIELD(F_MODEL, item->model);
    FIELD(F_CLIENT, item->client);
    FIELD(F_REASON, item->reason);
    FIELD(F_CANDIDATE, item->candidate);
    FIELD(F_REQUEST, item->request);
#undef FIELD
#undef ARG

    if ((rc = enter(s, err)) != AP_OK)
        return rc;
    rc = command(s, argc, argv, lens, &r, err);
    if (rc == AP_OK && r->type != REDIS_REPLY_INTEGER)
        rc = unexpected(s, "the add script", err);
    else if (rc == AP_OK && r->integer != 1)
        rc = ap_error_set(err, AP_EINTERNAL, "review: id \"%s\" already exists", id);
    free_replies(&r, 1);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static ap_status rd_get(struct ap__review_backend *base, const char *id, bool with_request,
                        ap_review_item *out, ap_error *err)
{
    struct redis_store *s = (struct redis_store *)base;
    size_t n_fields = with_request ? N_FIELDS : F_REQUEST;
    char key[KEY_CAP];
    size_t klen = item_key(key, id);
    redisReply *r = NULL;
    ap_status rc;

    if ((rc = enter(s, err)) != AP_OK)
        return rc;
    if ((rc = append_hmget(s, key, klen, n_fields, err)) == AP_OK &&
        (rc = replies(s, 1, &r, err)) == AP_OK)
        rc = item_read(s, id, r, n_fields, out, err);
    free_replies(&r, 1);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/*
 * One page of a status's set, then the items in one pipeline. An item resolved or purged
 * between the two reads is left out (the page is short by it), never shown in the wrong list.
 */
static ap_status rd_list(struct ap__review_backend *base, ap_review_status status, size_t offset,
                         size_t limit, ap_review_item **items, size_t *n, ap_error *err)
{
    struct redis_store *s = (struct redis_store *)base;
    const char *qkey = queue_keys[status];
    redisReply *ids = NULL, **rs = NULL;
    ap_review_item *v = NULL;
    char(*keys)[KEY_CAP] = NULL;
    char start[24], stop[24];
    size_t m = 0, got = 0;
    ap_status rc;

    if (offset > (size_t)LLONG_MAX) {
        *items = NULL, *n = 0;
        return AP_OK;
    }
    /* The last index, without overflow: ZRANGE clamps it to the set's end. */
    unsigned long long last = (unsigned long long)offset + AP_MIN(limit - 1, (size_t)LLONG_MAX);
    snprintf(start, sizeof(start), "%zu", offset);
    snprintf(stop, sizeof(stop), "%llu", AP_MIN(last, (unsigned long long)LLONG_MAX));

    if ((rc = enter(s, err)) != AP_OK)
        return rc;
    rc = command(s, 4, (const char *[]){"ZRANGE", qkey, start, stop}, NULL, &ids, err);
    if (rc != AP_OK)
        goto out;
    if (ids->type != REDIS_REPLY_ARRAY) {
        rc = unexpected(s, "ZRANGE", err);
        goto out;
    }
    m = ids->elements;
    if (m == 0)
        goto out;
    rs = calloc(m, sizeof(*rs));
    keys = malloc(m * sizeof(*keys));
    v = calloc(m, sizeof(*v));
    if (rs == NULL || keys == NULL || v == NULL) {
        rc = ap_error_set(err, AP_ENOMEM, "review: out of memory listing %zu items", m);
        goto out;
    }
    /* A malformed member (not written by us) still gets a reply slot: HMGET of a key that
     * cannot exist, so the replies stay one per member. */
    for (size_t i = 0; i < m && rc == AP_OK; i++) {
        const redisReply *e = ids->element[i];
        bool ok = is_str(e) && e->len == AP__REVIEW_ID_LEN && ap__review_id_valid(e->str);
        size_t klen = item_key(keys[i], ok ? e->str : "-");
        rc = append_hmget(s, keys[i], klen, F_REQUEST, err);
    }
    if (rc != AP_OK || (rc = replies(s, m, rs, err)) != AP_OK)
        goto out;
    for (size_t i = 0; i < m && rc == AP_OK; i++) {
        const redisReply *e = ids->element[i];
        if (!is_str(e) || e->len != AP__REVIEW_ID_LEN || !ap__review_id_valid(e->str))
            continue;
        if (rs[i]->type == REDIS_REPLY_ARRAY && rs[i]->elements > F_STATUS &&
            rs[i]->element[F_STATUS]->type == REDIS_REPLY_NIL)
            continue; /* purged meanwhile */
        rc = item_read(s, e->str, rs[i], F_REQUEST, &v[got], err);
        if (rc == AP_OK && v[got].status != status) {
            ap_review_item_release(&v[got]); /* resolved meanwhile */
            continue;
        }
        got++;
    }
out:
    if (rs != NULL)
        free_replies(rs, m);
    free(rs);
    free(keys);
    if (ids != NULL)
        freeReplyObject(ids);
    pthread_mutex_unlock(&s->mu);
    if (rc != AP_OK) {
        for (size_t i = 0; v != NULL && i < m; i++)
            ap_review_item_release(&v[i]); /* calloc'd: the unused ones are empty */
        free(v);
        return rc;
    }
    if (got == 0) {
        free(v);
        v = NULL;
    }
    *items = v;
    *n = got;
    return AP_OK;
}

static ap_status rd_count(struct ap__review_backend *base, ap_review_status status, size_t *n,
                          ap_error *err)
{
    struct redis_store *s = (struct redis_store *)base;
    redisReply *r = NULL;
    ap_status rc;

    if ((rc = enter(s, err)) != AP_OK)
        return rc;
    rc = command(s, 2, (const char *[]){"ZCARD", queue_keys[status]}, NULL, &r, err);
    if (rc == AP_OK && (r->type != REDIS_REPLY_INTEGER || r->integer < 0))
        rc = unexpected(s, "ZCARD", err);
    else if (rc == AP_OK)
        *n = (size_t)r->integer;
    free_replies(&r, 1);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

static ap_status rd_resolve(struct ap__review_backend *base, const char *id,
                            ap_review_status status, const char *answer, const char *reviewer,
                            int64_t resolved_ms, ap_error *err)
{
    struct redis_store *s = (struct redis_store *)base;
    char key[KEY_CAP], st[4], resolved[24];
    size_t klen = item_key(key, id);
    redisReply *r = NULL;
    ap_status rc;

    snprintf(st, sizeof(st), "%d", (int)status);
    snprintf(resolved, sizeof(resolved), "%" PRId64, resolved_ms);
    const char *argv[] = {"EVAL",
                          resolve_script,
                          "4",
                          key,
                          queue_keys[AP_REVIEW_PENDING],
                          queue_keys[status],
                          DONE,
                          id,
                          st,
                          resolved,
                          answer ? answer : "",
                          answer ? "1" : "0",
                          reviewer ? reviewer : "",
                          reviewer ? "1" : "0"};
    size_t lens[sizeof(argv) / sizeof(argv[0])];
    for (size_t i = 0; i < sizeof(argv) / sizeof(argv[0]); i++)
        lens[i] = i == 3 ? klen : strlen(argv[i]);

    if ((rc = enter(s, err)) != AP_OK)
        return rc;
    rc = command(s, (int)(sizeof(argv) / sizeof(argv[0])), argv, lens, &r, err);
    if (rc == AP_OK) {
        if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
            r->element[0]->type != REDIS_REPLY_INTEGER)
            rc = unexpected(s, "the resolve script", err);
        else if (r->element[0]->integer == 1)
            rc = ap_error_set(err, AP_ENOTFOUND, "review: no item \"%s\"", id);
        else if (r->element[0]->integer == 2)
            rc = ap_error_set(
                err, AP_EINVAL, "review: item \"%s\" is already %s", id,
                ap_review_status_name(r->elements > 1 && r->element[1]->type == REDIS_REPLY_INTEGER
                                          ? (ap_review_status)r->element[1]->integer
                                          : (ap_review_status)-1));
        else if (r->element[0]->integer != 0)
            rc = unexpected(s, "the resolve script", err);
    }
    free_replies(&r, 1);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* One batch of purge: the oldest done ids resolved before cut ("(ms": exclusive), deleted.
 * *batch is how many ids the batch saw; *removed grows by the items deleted. Lock held. */
static ap_status purge_batch(struct redis_store *s, const char *cut, size_t *batch, size_t *removed,
                             ap_error *err)
{
    static const char last[] = STR(PURGE_BATCH);
    redisReply *ids = NULL, *rs[4] = {0};
    const char **argv = NULL;
    size_t *lens = NULL, m = 0;
    char(*keys)[KEY_CAP] = NULL;
    ap_status rc;

    rc = command(s, 7, (const char *[]){"ZRANGEBYSCORE", DONE, "-inf", cut, "LIMIT", "0", last},
                 NULL, &ids, err);
    if (rc != AP_OK)
        return rc;
    if (ids->type != REDIS_REPLY_ARRAY) {
        rc = unexpected(s, "ZRANGEBYSCORE", err);
        goto out;
    }
    m = ids->elements;
    *batch = m;
    if (m == 0)
        goto out;
    argv = malloc((m + 2) * sizeof(*argv));
    lens = malloc((m + 2) * sizeof(*lens));
    keys = malloc(m * sizeof(*keys));
    if (argv == NULL || lens == NULL || keys == NULL) {
        rc = ap_error_set(err, AP_ENOMEM, "review: out of memory purging");
        goto out;
    }
    /* DEL the items (only well-formed ids become key names); ZREM every member from the
     * three sets, malformed ones too, so a stray member cannot stall the purge. */
    size_t nk = 0;
    argv[0] = "DEL", lens[0] = 3;
    for (size_t i = 0; i < m; i++) {
        const redisReply *e = ids->element[i];
        if (is_str(e) && e->len == AP__REVIEW_ID_LEN && ap__review_id_valid(e->str)) {
            lens[1 + nk] = item_key(keys[nk], e->str);
            argv[1 + nk] = keys[nk];
            nk++;
        }
    }
    if (nk > 0)
        rc = append(s, (int)(1 + nk), argv, lens, err);
    const char *sets[] = {queue_keys[AP_REVIEW_RESOLVED], queue_keys[AP_REVIEW_REJECTED], DONE};
    for (size_t z = 0; z < 3 && rc == AP_OK; z++) {
        argv[0] = "ZREM", lens[0] = 4;
        argv[1] = sets[z], lens[1] = strlen(sets[z]);
        for (size_t i = 0; i < m; i++) {
            const redisReply *e = ids->element[i];
            argv[2 + i] = is_str(e) ? e->str : "";
            lens[2 + i] = is_str(e) ? e->len : 0;
        }
        rc = append(s, (int)(2 + m), argv, lens, err);
    }
    size_t nr = nk > 0 ? 4 : 3;
    if (rc == AP_OK && (rc = replies(s, nr, rs, err)) == AP_OK && nk > 0 &&
        rs[0]->type == REDIS_REPLY_INTEGER && rs[0]->integer > 0)
        *removed += (size_t)rs[0]->integer;
    free_replies(rs, 4);
out:
    free(argv);
    free(lens);
    free(keys);
    freeReplyObject(ids);
    return rc;
}

static ap_status rd_purge(struct ap__review_backend *base, int64_t older_than_ms, size_t *removed,
                          ap_error *err)
{
    struct redis_store *s = (struct redis_store *)base;
    char cut[32];
    size_t batch = 0;
    ap_status rc;

    snprintf(cut, sizeof(cut), "(%" PRId64, older_than_ms);
    *removed = 0;
    if ((rc = enter(s, err)) != AP_OK)
        return rc;
    do
        rc = purge_batch(s, cut, &batch, removed, err);
    while (rc == AP_OK && batch == PURGE_BATCH);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- open, free */

static void rd_free(struct ap__review_backend *base)
{
    struct redis_store *s = (struct redis_store *)base;
    if (s->rc != NULL)
        redisFree(s->rc);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static const struct ap__review_ops redis_ops = {
    .name = "redis",
    .add = rd_add,
    .get = rd_get,
    .list = rd_list,
    .count = rd_count,
    .resolve = rd_resolve,
    .purge = rd_purge,
    .free = rd_free,
};

ap_status ap__review_redis_open(const char *target, const char *url,
                                struct ap__review_backend **out, ap_error *err)
{
    struct redis_store *s = calloc(1, sizeof(*s));
    char why[160];

    if (s == NULL)
        return ap_error_set(err, AP_ENOMEM, "review: out of memory");
    s->super.ops = &redis_ops;
    if (!ap__redis_target_parse(target, &s->tgt)) {
        free(s);
        return ap_error_set(err, AP_EINVAL,
                            "review: redis url \"%s\" is not redis://host:port[/db]", url);
    }
    snprintf(s->what, sizeof(s->what), "redis %s:%d", s->tgt.host, s->tgt.port);
    pthread_mutex_init(&s->mu, NULL);
    /* Down at open is a state like any other: calls fail until a dial succeeds. */
    s->last_dial_ms = ap__now_ms();
    s->rc = ap__redis_dial(&s->tgt, TIMEOUT_MS, why, sizeof(why));
    *out = &s->super;
    return AP_OK;
}
