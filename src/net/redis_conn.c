/*
 * redis_conn.c - Redis addresses and connections for every module that talks to Redis. See
 * redis_conn.h.
 */
#include <stdio.h>
#include <string.h>

#include "net/redis_conn.h"

/* A decimal in [lo, hi] spanning exactly [p, end): no sign, no spaces, at most 9 digits. */
static bool parse_int(const char *p, const char *end, long lo, long hi, int *out)
{
    long v = 0;
    if (p >= end || end - p > 9)
        return false;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return false;
        v = v * 10 + (*p - '0');
    }
    if (v < lo || v > hi)
        return false;
    *out = (int)v;
    return true;
}

bool ap__redis_target_parse(const char *t, struct ap__redis_target *out)
{
    const char *at = strrchr(t, '@'), *h = at ? at + 1 : t, *hend, *p;

    memset(out, 0, sizeof(*out));
    out->port = 6379;
    if (at != NULL) {
        const char *colon = memchr(t, ':', (size_t)(at - t));
        if (colon == NULL || (size_t)(colon - t) >= sizeof(out->user) ||
            (size_t)(at - colon - 1) >= sizeof(out->pass))
            return false;
        memcpy(out->user, t, (size_t)(colon - t));
        memcpy(out->pass, colon + 1, (size_t)(at - colon - 1));
    }
    if (*h == '[') {
        hend = strchr(h, ']');
        if (hend == NULL)
            return false;
        h++;
        p = hend + 1;
    } else {
        hend = h + strcspn(h, ":/");
        p = hend;
    }
    if (hend == h || (size_t)(hend - h) >= sizeof(out->host))
        return false;
    memcpy(out->host, h, (size_t)(hend - h));
    if (*p == ':') {
        const char *e = p + 1 + strcspn(p + 1, "/");
        if (!parse_int(p + 1, e, 1, 65535, &out->port))
            return false;
        p = e;
    }
    if (*p == '/') {
        if (p[1] != '\0' && !parse_int(p + 1, p + strlen(p), 0, 1 << 20, &out->db))
            return false;
        p += strlen(p);
    }
    return *p == '\0';
}

redisContext *ap__redis_dial(const struct ap__redis_target *t, long timeout_ms, char *why,
                             size_t why_cap)
{
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    redisContext *c = redisConnectWithTimeout(t->host, t->port, tv);
    redisReply *r = NULL;
    char db[16];

    if (c == NULL) {
        if (why)
            snprintf(why, why_cap, "out of memory");
        return NULL;
    }
    if (c->err || redisSetTimeout(c, tv) != REDIS_OK)
        goto fail;
    (void)redisEnableKeepAlive(c);
    if (t->pass[0] != '\0') {
        int user = t->user[0] != '\0';
        const char *argv[3] = {"AUTH", user ? t->user : t->pass, t->pass};
        r = redisCommandArgv(c, 2 + user, argv, NULL);
        if (r == NULL || r->type == REDIS_REPLY_ERROR)
            goto fail;
        freeReplyObject(r);
        r = NULL;
    }
    snprintf(db, sizeof(db), "%d", t->db);
    r = t->db ? redisCommandArgv(c, 2, (const char *[]){"SELECT", db}, NULL)
              : redisCommandArgv(c, 1, (const char *[]){"PING"}, NULL);
    if (r == NULL || r->type == REDIS_REPLY_ERROR)
        goto fail;
    freeReplyObject(r);
    return c;
fail:
    if (why)
        snprintf(why, why_cap, "%s",
                 r && r->type == REDIS_REPLY_ERROR ? r->str
                 : c->err                          ? c->errstr
                                                   : "handshake failed");
    if (r != NULL)
        freeReplyObject(r);
    redisFree(c);
    return NULL;
}
