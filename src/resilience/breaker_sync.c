/*
 * breaker_sync.c - share breaker transitions between gateways through Redis pub/sub, plus a
 * hash of the breakers open now for gateways that start (or reconnect) later.
 * include/aperture/resilience.h states the contract.
 *
 * Wire (channel <prefix>:ch), one text line per transition, at most WIRE_MAX bytes:
 *     <instance> TAB <state> TAB <until_unix_ms> TAB <deployment>
 * state is "open" or "closed" (HALF_OPEN is never sent: each gateway probes for itself);
 * until_unix_ms is the wall-clock end of the sender's cooldown ("0" for closed). Everything
 * read from Redis is untrusted: lengths are capped, names may not hold control bytes, numbers
 * are plain decimals within range, and a cooldown ending more than MAX_AHEAD_MS from now is
 * refused rather than believed. Anything that fails a check is dropped silently.
 * Hash <prefix>:open: field = deployment, value = until_unix_ms, set on OPEN, deleted on
 * CLOSED, read whole at every (re)connect. Stale fields (until passed) are deleted only if
 * they still hold the value read, so a fresh opening written meanwhile is not lost.
 * Redis channels are server-wide (the /db in the URL selects only the hash's database), so
 * the prefix is what keeps two fleets on one Redis apart.
 *
 * Threads: one, owning two connections: a subscriber (blocked in SUBSCRIBE) and a command
 * connection (PUBLISH, HSET, HDEL, HGETALL). It sleeps in poll() on the subscriber socket and
 * a self-pipe; ap_breaker_sync_publish() queues under the mutex and writes one byte to the
 * pipe, so a caller never waits on Redis. The queue is a ring of QUEUE_CAP messages; when it
 * is full the oldest is dropped (the newest transition of a deployment is the one that
 * matters). While Redis is down the queue keeps filling and is sent after the reconnect, minus
 * openings whose cooldown has meanwhile ended.
 *
 * Clocks: the set runs on CLOCK_MONOTONIC milliseconds (what the server passes to
 * ap_breaker_allow()); the wire carries wall-clock milliseconds. An arriving cooldown end is
 * turned into "now_mono + (until - now_unix)", so clock skew between hosts shifts it by the
 * skew and no more.
 *
 * Blocking: connections use IO_TIMEOUT_MS for connect and each command, so stop() returns
 * within about that long even against a Redis that stopped answering; against one that is up
 * or refusing connections it returns at once. start() makes the first connection itself (so
 * the hash is applied before it returns), which costs the caller the same bound once.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <openssl/rand.h>

#include "aperture/resilience.h"
#include "core/core.h"
#include "net/redis_conn.h"

#define QUEUE_CAP      256
#define RECONNECT_MS   500
#define IO_TIMEOUT_MS  500
#define IDLE_POLL_MS   1000 /* a safety net only: every event also writes to the pipe */
#define PREFIX_MAX     128
#define INSTANCE_MAX   64
#define UNTIL_DIGITS   15 /* up to year ~33658 */
#define WIRE_MAX       (INSTANCE_MAX + 1 + 6 + 1 + UNTIL_DIGITS + 1 + AP_BREAKER_MAX_NAME)
#define MAX_AHEAD_MS   INT64_C(86400000) /* no cooldown is believed to last more than a day */
#define DEFAULT_PREFIX "ap:brk"

/* Delete a hash field only if it still holds the value read (a stale opening). */
static const char del_if_script[] = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then\n"
                                    "  return redis.call('HDEL', KEYS[1], ARGV[1])\n"
                                    "end\n"
                                    "return 0\n";

struct msg {
    ap_breaker_state to; /* OPEN or CLOSED */
    int64_t until;       /* OPEN: wall-clock ms */
    char dep[AP_BREAKER_MAX_NAME + 1];
};

struct ap_breaker_sync {
    ap_breaker_set *set; /* borrowed: outlives the sync */
    struct ap__redis_target tgt;
    char instance[INSTANCE_MAX + 1];
    char channel[PREFIX_MAX + 4]; /* <prefix>:ch */
    char hash[PREFIX_MAX + 6];    /* <prefix>:open */
    int wake[2];                  /* self-pipe: [0] polled by the thread, [1] written */

    pthread_mutex_t mu; /* guards the fields up to the thread's own */
    struct msg *q;      /* ring of QUEUE_CAP */
    size_t q_head, q_n;
    bool stopping, connected;

    /* The thread's own (and start()'s, before the thread exists). */
    pthread_t thr;
    bool thr_on;
    redisContext *cmd, *sub; /* both NULL or both up */
    int64_t last_dial_ms;
};

/* ---- small helpers --------------------------------------------------------------------------- */

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

/* 1..max bytes, none a control byte (so a name is one field of one line). */
static bool valid_text(const char *p, size_t len, size_t max)
{
    if (len == 0 || len > max)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

/* A plain decimal of 1..UNTIL_DIGITS digits (no sign, no spaces). */
static bool parse_until(const char *p, size_t len, int64_t *out)
{
    int64_t v = 0;
    if (len == 0 || len > UNTIL_DIGITS)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return true;
}

static void wake(struct ap_breaker_sync *s)
{
    char b = 1;
    /* Full pipe (EAGAIN): a wakeup is already pending, which is all this says. */
    ssize_t n = write(s->wake[1], &b, 1);
    (void)n;
}

static void drain_wake(struct ap_breaker_sync *s)
{
    char buf[64];
    while (read(s->wake[0], buf, sizeof(buf)) > 0)
        ;
}

static bool is_stopping(struct ap_breaker_sync *s)
{
    pthread_mutex_lock(&s->mu);
    bool v = s->stopping;
    pthread_mutex_unlock(&s->mu);
    return v;
}

/* ---- applying what arrives ------------------------------------------------------------------- */

/* A remote transition, as forced on the local set. dep is NUL-terminated and validated. */
static void apply(struct ap_breaker_sync *s, ap_breaker_state to, int64_t until, const char *dep)
{
    int64_t now = mono_ms();
    if (to == AP_BREAKER_CLOSED) {
        ap_breaker_force(s->set, dep, AP_BREAKER_CLOSED, now, 0);
        return;
    }
    int64_t left = until - unix_ms();
    if (left <= 0 || left > MAX_AHEAD_MS)
        return; /* over already, or not to be believed */
    ap_breaker_force(s->set, dep, AP_BREAKER_OPEN, now, now + left);
}

/* One payload from the channel; anything malformed or our own is dropped. */
static void on_wire(struct ap_breaker_sync *s, const char *p, size_t len)
{
    const char *f[4];
    size_t flen[4];
    char dep[AP_BREAKER_MAX_NAME + 1];
    int64_t until;
    ap_breaker_state to;

    if (len > WIRE_MAX)
        return;
    /* Three tabs split four fields; the last (the deployment) may hold no further tab. */
    const char *end = p + len, *at = p;
    for (int i = 0; i < 4; i++) {
        const char *tab = i < 3 ? memchr(at, '\t', (size_t)(end - at)) : end;
        if (tab == NULL)
            return;
        f[i] = at;
        flen[i] = (size_t)(tab - at);
        at = tab + (i < 3);
    }
    if (!valid_text(f[0], flen[0], INSTANCE_MAX) ||
        !valid_text(f[3], flen[3], AP_BREAKER_MAX_NAME) || !parse_until(f[2], flen[2], &until))
        return;
    if (flen[0] == strlen(s->instance) && memcmp(f[0], s->instance, flen[0]) == 0)
        return; /* our own, echoed by Redis */
    if (flen[1] == 4 && memcmp(f[1], "open", 4) == 0)
        to = AP_BREAKER_OPEN;
    else if (flen[1] == 6 && memcmp(f[1], "closed", 6) == 0)
        to = AP_BREAKER_CLOSED;
    else
        return;
    memcpy(dep, f[3], flen[3]);
    dep[flen[3]] = '\0';
    apply(s, to, until, dep);
}

/* One reply read on the subscriber: only ["message", channel, payload] matters. */
static void on_push(struct ap_breaker_sync *s, const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 3)
        return;
    const redisReply *kind = r->element[0], *payload = r->element[2];
    if (kind->type != REDIS_REPLY_STRING || kind->len != 7 || memcmp(kind->str, "message", 7) != 0)
        return;
    if (payload->type != REDIS_REPLY_STRING)
        return;
    on_wire(s, payload->str, payload->len);
}

/*
 * The open breakers recorded in the hash: force the live ones open here, delete the stale ones
 * (conditionally, pipelined). false when the connection failed.
 */
static bool load_hash(struct ap_breaker_sync *s)
{
    redisReply *r = redisCommandArgv(s->cmd, 2, (const char *[]){"HGETALL", s->hash}, NULL);
    size_t n_del = 0;
    bool ok = r != NULL;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY)
        goto out; /* an error reply (a key of another type) is not our business */
    int64_t now_unix = unix_ms();
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        char dep[AP_BREAKER_MAX_NAME + 1];
        int64_t until;
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
            !valid_text(k->str, k->len, AP_BREAKER_MAX_NAME) ||
            !parse_until(v->str, v->len, &until))
            continue;
        if (until > now_unix) {
            memcpy(dep, k->str, k->len);
            dep[k->len] = '\0';
            apply(s, AP_BREAKER_OPEN, until, dep);
            continue;
        }
        const char *argv[6] = {"EVAL", del_if_script, "1", s->hash, k->str, v->str};
        const size_t lens[6] = {4, sizeof(del_if_script) - 1, 1, strlen(s->hash), k->len, v->len};
        if (redisAppendCommandArgv(s->cmd, 6, argv, lens) != REDIS_OK) {
            ok = false;
            goto out;
        }
        n_del++;
    }
    for (; n_del > 0; n_del--) {
        void *d = NULL;
        if (redisGetReply(s->cmd, &d) != REDIS_OK || d == NULL) {
            ok = false;
            goto out;
        }
        freeReplyObject(d);
    }
out:
    if (r != NULL)
        freeReplyObject(r);
    return ok;
}

/* ---- sending --------------------------------------------------------------------------------- */

/* HSET (OPEN) or HDEL (CLOSED), then PUBLISH, pipelined. false when the connection failed. */
static bool send_msg(struct ap_breaker_sync *s, const struct msg *m)
{
    char line[WIRE_MAX + 1], until[24];
    bool open = m->to == AP_BREAKER_OPEN;

    if (open && m->until <= unix_ms())
        return true; /* its cooldown is over: nobody should skip the deployment any more */
    snprintf(until, sizeof(until), "%" PRId64, open ? m->until : 0);
    int n = snprintf(line, sizeof(line), "%s\t%s\t%s\t%s", s->instance,
                     ap_breaker_state_name(m->to), until, m->dep);
    if (AP_NEVER(n < 0 || (size_t)n >= sizeof(line)))
        return true; /* cannot happen: every field was capped on the way in */

    int rc =
        open ? redisAppendCommandArgv(s->cmd, 4, (const char *[]){"HSET", s->hash, m->dep, until},
                                      NULL)
             : redisAppendCommandArgv(s->cmd, 3, (const char *[]){"HDEL", s->hash, m->dep}, NULL);
    if (rc != REDIS_OK ||
        redisAppendCommandArgv(s->cmd, 3, (const char *[]){"PUBLISH", s->channel, line}, NULL) !=
            REDIS_OK)
        return false;
    for (int i = 0; i < 2; i++) {
        void *r = NULL;
        if (redisGetReply(s->cmd, &r) != REDIS_OK || r == NULL)
            return false;
        freeReplyObject(r); /* an error reply (WRONGTYPE) changes nothing we can act on */
    }
    return true;
}

/* Send everything queued, oldest first. false when the connection failed; the message being
 * sent is then put back at the front (unless the ring filled meanwhile). */
static bool flush(struct ap_breaker_sync *s)
{
    struct msg m;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        if (s->q_n == 0 || s->stopping) {
            pthread_mutex_unlock(&s->mu);
            return true;
        }
        m = s->q[s->q_head];
        s->q_head = (s->q_head + 1) % QUEUE_CAP;
        s->q_n--;
        pthread_mutex_unlock(&s->mu);

        if (send_msg(s, &m))
            continue;
        pthread_mutex_lock(&s->mu);
        if (s->q_n < QUEUE_CAP) {
            s->q_head = (s->q_head + QUEUE_CAP - 1) % QUEUE_CAP;
            s->q[s->q_head] = m;
            s->q_n++;
        }
        pthread_mutex_unlock(&s->mu);
        return false;
    }
}

/* ---- connections ----------------------------------------------------------------------------- */

static void hang_up(struct ap_breaker_sync *s)
{
    if (s->cmd != NULL)
        redisFree(s->cmd);
    if (s->sub != NULL)
        redisFree(s->sub);
    s->cmd = s->sub = NULL;
    pthread_mutex_lock(&s->mu);
    s->connected = false;
    pthread_mutex_unlock(&s->mu);
}

/* Handle every complete reply already read from the subscriber. false when it broke. */
static bool drain_sub(struct ap_breaker_sync *s)
{
    for (;;) {
        void *r = NULL;
        if (redisGetReplyFromReader(s->sub, &r) != REDIS_OK)
            return false; /* a protocol error: the stream is out of step */
        if (r == NULL)
            return true;
        on_push(s, r);
        freeReplyObject(r);
    }
}

/*
 * Both connections, the subscription, our queue sent, then the hash read, in that order:
 * subscribed first so nothing published meanwhile is missed, and our own queued CLOSED sent
 * before the hash is read so our own stale opening is not read back. false (and nothing held)
 * on failure.
 */
static bool connect_all(struct ap_breaker_sync *s)
{
    redisReply *r = NULL;
    bool subscribed;

    s->last_dial_ms = mono_ms();
    s->cmd = ap__redis_dial(&s->tgt, IO_TIMEOUT_MS, NULL, 0);
    s->sub = s->cmd ? ap__redis_dial(&s->tgt, IO_TIMEOUT_MS, NULL, 0) : NULL;
    if (s->sub == NULL)
        goto fail;
    r = redisCommandArgv(s->sub, 2, (const char *[]){"SUBSCRIBE", s->channel}, NULL);
    subscribed = r != NULL && r->type == REDIS_REPLY_ARRAY;
    if (r != NULL)
        freeReplyObject(r);
    /* The read that brought the confirmation may have brought messages too; poll() would not
     * report them, so they are handled now. */
    if (!subscribed || !drain_sub(s) || !flush(s) || !load_hash(s))
        goto fail;
    pthread_mutex_lock(&s->mu);
    s->connected = true;
    pthread_mutex_unlock(&s->mu);
    return true;
fail:
    hang_up(s);
    return false;
}

/* ---- the thread ------------------------------------------------------------------------------ */

static void *run(void *arg)
{
    struct ap_breaker_sync *s = arg;

    while (!is_stopping(s)) {
        if (s->sub == NULL) {
            int64_t wait = s->last_dial_ms + RECONNECT_MS - mono_ms();
            if (wait > 0) {
                struct pollfd p = {.fd = s->wake[0], .events = POLLIN};
                if (poll(&p, 1, (int)wait) > 0)
                    drain_wake(s);
                continue;
            }
            if (!connect_all(s))
                continue;
        }
        if (!flush(s)) {
            hang_up(s);
            continue;
        }
        struct pollfd p[2] = {{.fd = s->sub->fd, .events = POLLIN},
                              {.fd = s->wake[0], .events = POLLIN}};
        int n = poll(p, 2, IDLE_POLL_MS);
        if (n <= 0)
            continue; /* timeout, or EINTR */
        if (p[1].revents != 0)
            drain_wake(s);
        /* One read() (poll said it will not block), then every reply it completed. */
        if (p[0].revents != 0 && (redisBufferRead(s->sub) != REDIS_OK || !drain_sub(s)))
            hang_up(s);
    }
    hang_up(s);
    return NULL;
}

/* ---- the verbs ------------------------------------------------------------------------------- */

/* "redis://[[user]:pass@]host[:port][/db]", host possibly "[v6]" (the cache's syntax). */
static bool parse_url(struct ap_breaker_sync *s, const char *url)
{
    static const char scheme[] = "redis://";
    return strncmp(url, scheme, sizeof(scheme) - 1) == 0 &&
           ap__redis_target_parse(url + sizeof(scheme) - 1, &s->tgt);
}

/* 16 random hex digits; the pid and the clocks if the PRNG fails (unique enough per host). */
static void random_instance(char *out, size_t cap)
{
    unsigned char b[8];
    if (RAND_bytes(b, sizeof(b)) == 1) {
        snprintf(out, cap, "%02x%02x%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2], b[3], b[4], b[5],
                 b[6], b[7]);
        return;
    }
    snprintf(out, cap, "p%ld-%" PRId64 "-%" PRId64, (long)getpid(), unix_ms(), mono_ms());
}

static bool set_nonblock_cloexec(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl >= 0 && fcntl(fd, F_SETFL, fl | O_NONBLOCK) == 0 &&
           fcntl(fd, F_SETFD, FD_CLOEXEC) == 0;
}

ap_status ap_breaker_sync_start(ap_breaker_set *set, const char *url, const char *prefix,
                                const char *instance, ap_breaker_sync **out, ap_error *err)
{
    ap_status rc = AP_OK;
    ap_breaker_sync *s = NULL;
    bool mu_on = false;

    if (set == NULL || url == NULL || out == NULL)
        return ap_error_set(err, AP_EINVAL, "breaker sync: set, url and out are required");
    if (prefix == NULL)
        prefix = DEFAULT_PREFIX;
    if (!valid_text(prefix, strnlen(prefix, PREFIX_MAX + 1), PREFIX_MAX))
        return ap_error_set(err, AP_EINVAL,
                            "breaker sync: prefix must be 1 to %d bytes without control bytes",
                            PREFIX_MAX);
    if (instance != NULL &&
        !valid_text(instance, strnlen(instance, INSTANCE_MAX + 1), INSTANCE_MAX))
        return ap_error_set(err, AP_EINVAL,
                            "breaker sync: instance must be 1 to %d bytes without control bytes",
                            INSTANCE_MAX);

    s = ap__xcalloc(1, sizeof(*s));
    s->set = set;
    s->wake[0] = s->wake[1] = -1;
    if (!parse_url(s, url)) {
        rc = ap_error_set(err, AP_EINVAL,
                          "breaker sync: redis url \"%.100s\" is not "
                          "redis://[[user]:pass@]host[:port][/db]",
                          url);
        goto out;
    }
    if (instance != NULL)
        snprintf(s->instance, sizeof(s->instance), "%s", instance);
    else
        random_instance(s->instance, sizeof(s->instance));
    snprintf(s->channel, sizeof(s->channel), "%s:ch", prefix);
    snprintf(s->hash, sizeof(s->hash), "%s:open", prefix);
    s->q = ap__xcalloc(QUEUE_CAP, sizeof(*s->q));
    if (pipe(s->wake) != 0 || !set_nonblock_cloexec(s->wake[0]) ||
        !set_nonblock_cloexec(s->wake[1])) {
        rc = ap_error_set(err, AP_EIO, "breaker sync: cannot make a pipe: %s", strerror(errno));
        goto out;
    }
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        rc = ap_error_set(err, AP_ENOMEM, "breaker sync: cannot create a mutex");
        goto out;
    }
    mu_on = true;

    /* The first connection here, not on the thread, so a gateway starting during an outage
     * has the open breakers before its first request. Down is fine: the thread retries. */
    (void)connect_all(s);

    /* The thread takes no signals (a write to a dropped socket raises SIGPIPE on the writer:
     * blocked there, it is harmless whatever the process does with SIGPIPE). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int e = pthread_create(&s->thr, NULL, run, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0) {
        rc = ap_error_set(err, AP_ENOMEM, "breaker sync: cannot start the thread");
        goto out;
    }
    s->thr_on = true;
    *out = s;
    s = NULL;
out:
    if (s != NULL) {
        if (mu_on) {
            hang_up(s);
            pthread_mutex_destroy(&s->mu);
        }
        for (int i = 0; i < 2; i++)
            if (s->wake[i] >= 0)
                close(s->wake[i]);
        free(s->q);
        free(s);
    }
    return rc;
}

void ap_breaker_sync_publish(ap_breaker_sync *s, const char *deployment, ap_breaker_state to,
                             int64_t cooldown_ends_unix_ms)
{
    if (AP_NEVER(s == NULL) || deployment == NULL)
        return;
    if (to != AP_BREAKER_OPEN && to != AP_BREAKER_CLOSED)
        return; /* HALF_OPEN is each gateway's own business */
    size_t len = strnlen(deployment, AP_BREAKER_MAX_NAME + 1);
    if (!valid_text(deployment, len, AP_BREAKER_MAX_NAME))
        return; /* untracked by the set anyway, or not sendable as one field of a line */

    pthread_mutex_lock(&s->mu);
    if (s->q_n == QUEUE_CAP) {
        s->q_head = (s->q_head + 1) % QUEUE_CAP; /* drop the oldest */
        s->q_n--;
    }
    struct msg *m = &s->q[(s->q_head + s->q_n) % QUEUE_CAP];
    m->to = to;
    m->until = to == AP_BREAKER_OPEN ? cooldown_ends_unix_ms : 0;
    memcpy(m->dep, deployment, len);
    m->dep[len] = '\0';
    s->q_n++;
    pthread_mutex_unlock(&s->mu);
    wake(s);
}

bool ap_breaker_sync_connected(ap_breaker_sync *s)
{
    if (AP_NEVER(s == NULL))
        return false;
    pthread_mutex_lock(&s->mu);
    bool v = s->connected;
    pthread_mutex_unlock(&s->mu);
    return v;
}

void ap_breaker_sync_stop(ap_breaker_sync *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    pthread_mutex_unlock(&s->mu);
    wake(s);
    if (s->thr_on)
        pthread_join(s->thr, NULL);
    hang_up(s); /* a no-op: the thread hung up on its way out */
    pthread_mutex_destroy(&s->mu);
    close(s->wake[0]);
    close(s->wake[1]);
    free(s->q);
    free(s);
}
