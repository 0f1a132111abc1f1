/*
 * server.h - internal interface between the HTTP front (server.c) and the API surfaces
 * (api_chat.c for the OpenAI and Anthropic dialects, api_native.c for analyze/preprocess,
 * api_misc.c for models, metrics and health).
 *
 * Life of a request: server.c collects the body on the event thread (capped), checks auth and
 * rate limits, suspends the connection and queues the endpoint's handler on the worker pool.
 * The handler (or a callback from the upstream loop it started) finishes with exactly one of
 * ap__req_respond*() or ap__req_stream_begin(); that resumes the connection and the event
 * thread sends the answer. A struct ap__req is reference-counted: the connection holds one
 * reference, asynchronous work another.
 */
#ifndef AP_SERVER_H
#define AP_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <jansson.h>
#include <microhttpd.h>

#include "aperture/cache.h"
#include "aperture/config.h"
#include "aperture/resilience.h"
#include "aperture/limiter.h"
#include "aperture/review.h"
#include "aperture/prep.h"
#include "aperture/gateway.h"
#include "core/pool.h"
#include "net/http.h"
#include "server/metrics.h"

enum ap__dialect { AP__DIALECT_OPENAI, AP__DIALECT_ANTHROPIC, AP__DIALECT_NATIVE };

struct ap_gateway {
    const ap_config *cfg;
    struct MHD_Daemon *mhd;
    unsigned port;
    struct ap__pool *pool;
    struct ap__http *http;
    struct ap__metrics *metrics;
    FILE *log;
    bool own_log;
    bool log_off; /* log_file is /dev/null: skip building log lines */
    pthread_mutex_t log_mu;
    atomic_long inflight;
    atomic_ulong next_id;
    atomic_bool stopping;
    /* Per-client-key token buckets. */
    pthread_mutex_t rl_mu;
    struct ap__bucket *buckets;
    /* The answer cache (NULL: off) and requests in flight by exact key (coalescing). */
    ap_cache *cache;
    int near_threshold;
    char admin_key_sha256[65]; /* "" = admin endpoints off */
    pthread_mutex_t flight_mu;
    struct ap__flight *flights;
    double cache_logged_down; /* last time "cache unreachable" was logged (ms) */
    ap_breaker_set *breakers; /* one circuit breaker per provider deployment */
    _Atomic(ap_breaker_sync *) breaker_sync; /* NULL: breakers are this instance's alone */
    char breaker_sync_url[256];
    ap_limiter *limiter;      /* per-provider concurrency and rate limits */
    ap_review_store *review;  /* the human review queue (NULL: could not open; see review_err) */
    char review_err[160];
};

/* Facts about one image, for headers, the log line and /v1/analyze. */
struct ap__img_facts {
    char sha16[17];
    char format[8];
    unsigned in_w, in_h, out_w, out_h;
    size_t in_bytes, out_bytes;
    double prep_ms;
    long tokens_before, tokens_after;
    int orientation;
    char meta_removed[96];
};

struct ap__req {
    struct ap_gateway *gw;
    struct MHD_Connection *conn;
    atomic_int refs;
    pthread_mutex_t mu;
    char id[32];
    const char *endpoint; /* static: "/v1/chat/completions", ... */
    enum ap__dialect dialect;
    void (*handler)(struct ap__req *r);
    double t_start;
    /* Request. */
    char *body;
    size_t len, cap;
    bool too_large;
    char *content_type, *task_header, *query_target, *query_format, *query_response;
    struct MHD_PostProcessor *pp; /* multipart uploads (analyze, preprocess) */
    json_t *form;                 /* multipart fields (text) */
    char *file;                   /* multipart file bytes */
    size_t file_len, file_cap;
    /* Response (set from any thread under mu, queued by the event thread). */
    struct MHD_Response *response;
    unsigned status;
    bool suspended, answered;
    /* Streaming. */
    bool streaming, stream_done, stream_waiting, stream_error;
    char *sbuf;
    size_t slen, scap, soff;
    /* For the log line and headers. */
    char model[128], provider[64], route_method[AP_DEPLOYMENT_MAX];
    struct ap__img_facts img[8];
    size_t n_img;
    double prep_ms, upstream_ms;
    long in_tokens, out_tokens;
    double cost_usd;
    char error[256];
    char retry_after[32]; /* Retry-After for a 429/503 answer ("" = 1 s) */
    char *prompt;         /* the request's text, logged only when log_prompts is on */
    const char *cache_result; /* static: "hit-exact", "hit-near", "miss", "bypass", "off" */
    int cache_distance;
    char *cache_control, *cache_header, *cache_ttl_header;
    bool is_delete;
    bool is_post;
    char *url;                /* the request path */
    char *data_class;         /* x-aperture-data-class */
    const char *client_name;  /* the client key's name (config-owned), NULL without auth */
    /* Routing facts for the log line. */
    char rule[64];            /* the routing rule that decided, "" = none */
    char stage_class[48];     /* two-stage: the class the classifier gave */
    char review_id[AP_REVIEW_ID_MAX];
};

/* Whether the client has closed its connection (or a streamed write failed): no point in
 * retrying or falling back for it. Safe from any thread while the request is suspended. */
bool ap__req_client_gone(struct ap__req *r);

void ap__req_ref(struct ap__req *r);
void ap__req_unref(struct ap__req *r);

/* Answer with a complete body. Takes ownership of body (malloc'd). headers: NULL-terminated
 * "Name", "value" pairs. Safe from any thread; later calls are ignored. */
void ap__req_respond(struct ap__req *r, unsigned status, const char *content_type, char *body,
                     size_t len, const char *const *headers);
/* The same with a JSON body (reference stolen). */
void ap__req_respond_json(struct ap__req *r, unsigned status, json_t *j,
                          const char *const *headers);
/* An error in the request's dialect: OpenAI {"error":{message,type,param,code}}, Anthropic
 * {"type":"error","error":{type,message}}, native {"error":{code,message}}. */
void ap__req_error(struct ap__req *r, unsigned status, const char *type, const char *param,
                   const char *fmt, ...) AP_PRINTF(5, 6);

/* Start a streamed (chunked, text/event-stream) answer; then write, then end. */
void ap__req_stream_begin(struct ap__req *r, const char *const *headers);
void ap__req_stream_write(struct ap__req *r, const char *data, size_t len);
void ap__req_stream_end(struct ap__req *r, bool error);

/* Write the request's JSON log line (once, at completion). */
void ap__req_log(struct ap__req *r);

/* The shared model-call path: canonical request (reference stolen) -> images -> provider ->
 * answer in r's dialect (native: the /v1/analyze shape). */
void ap__chat_run(struct ap__req *r, json_t *canon);

/* Review queue and breaker admin endpoints (api_review.c). */
void ap__api_review(struct ap__req *r);
void ap__api_admin_breakers(struct ap__req *r);
/* The admin key check shared by admin endpoints: true when it passed; otherwise the request has
 * been answered (403 admin off / 401). */
bool ap__req_admin(struct ap__req *r);
/* The client-key check for endpoints whose route has no auth flag: true when it passed (or no
 * keys are configured); otherwise answered 401. */
bool ap__req_client(struct ap__req *r);

/* Image helpers shared by the endpoints (api_chat.c). */
ap_status ap__image_load(struct ap__req *r, const char *ref, uint8_t **buf, size_t *len,
                         ap_error *err);
ap_status ap__image_prep(struct ap__req *r, const uint8_t *buf, size_t len, const char *target,
                         const char *token_model, const char *detail, ap_prep_result *res,
                         ap_error *err);

/* Endpoint handlers (run on the worker pool). */
void ap__api_chat(struct ap__req *r);      /* /v1/chat/completions and /v1/messages */
void ap__api_analyze(struct ap__req *r);   /* /v1/analyze */
void ap__api_preprocess(struct ap__req *r);/* /v1/preprocess */
void ap__api_models(struct ap__req *r);    /* /v1/models */
void ap__api_admin_cache(struct ap__req *r);/* GET/DELETE /v1/admin/cache */

/* Note the cache backend's state for the metric and, once per interval, the log. */
void ap__cache_backend_state(struct ap_gateway *gw, bool up, const char *why);

/* Decode base64 (standard or URL-safe, padding optional, whitespace ignored) into a malloc'd
 * buffer. Returns AP_EINVAL on bad input, AP_ETOOLARGE past max. */
ap_status ap__b64_decode(const char *s, size_t n, size_t max, uint8_t **out, size_t *out_len);

#endif
