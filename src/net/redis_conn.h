/*
 * redis_conn.h (internal) - the one place that reads a Redis address and opens a connection to
 * it, shared by the answer cache (src/cache/redis.c), the review queue (src/review/redis.c) and
 * the breaker sync (src/resilience/breaker_sync.c), so the three accept the same URLs and
 * authenticate the same way.
 */
#ifndef AP_NET_REDIS_CONN_H
#define AP_NET_REDIS_CONN_H

#include <stdbool.h>
#include <stddef.h>

#include <hiredis/hiredis.h>

struct ap__redis_target {
    char host[256];
    int port;       /* 6379 unless given */
    int db;         /* 0 unless given */
    char user[128]; /* "" = none (AUTH with the password alone) */
    char pass[256]; /* "" = no AUTH */
};

/*
 * Parse "[[user]:pass@]host[:port][/db]" (the part after "redis://"; host may be "[v6]") into
 * *out. false for anything else (a field too long, a port outside 1..65535, a db outside
 * 0..2^20, trailing bytes); *out is then partly written.
 */
bool ap__redis_target_parse(const char *t, struct ap__redis_target *out);

/*
 * Connect with timeout_ms for the connect and for every later command, turn on TCP keepalive,
 * AUTH when there is a password, then SELECT the db (or PING db 0). NULL on any failure, with
 * why (may be NULL) holding the reason. (transfer full): redisFree().
 */
redisContext *ap__redis_dial(const struct ap__redis_target *t, long timeout_ms, char *why,
                             size_t why_cap);

#endif
