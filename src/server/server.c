/*
 * server.c - the HTTP front: libmicrohttpd with one epoll event thread and suspend/resume.
 *
 * The event thread only parses and copies: it collects a request's body (refusing past
 * max_body_bytes), checks the client key and its rate limit, suspends the connection and queues
 * the endpoint handler on the worker pool. Whoever finishes the request (a worker, or the
 * upstream loop's callback) stores the response and resumes the connection; the event thread
 * then queues it. Streamed answers use a content-reader that suspends the connection while it
 * has nothing to send and is resumed by the writer: no thread waits on a slow upstream.
 */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "aperture/hash.h"
#include "core/core.h"
#include "server/server.h"

/* ---- references --------------------------------------------------------------------------- */

void ap__req_ref(struct ap__req *r)
{
    atomic_fetch_add(&r->refs, 1);
}

void ap__req_unref(struct ap__req *r)
{
    if (atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    if (r->pp)
        MHD_destroy_post_processor(r->pp);
    if (r->response)
        MHD_destroy_response(r->response);
    json_decref(r->form);
    free(r->body);
    free(r->file);
    free(r->sbuf);
    free(r->content_type);
    free(r->task_header);
    free(r->query_target);
    free(r->query_format);
    free(r->query_response);
    free(r->prompt);
    free(r->cache_control);
    free(r->cache_header);
    free(r->cache_ttl_header);
    free(r->data_class);
    free(r->url);
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* ---- answering ------------------------------------------------------------------------------ */

static void add_common_headers(struct ap__req *r, struct MHD_Response *resp,
                               const char *const *headers)
{
    MHD_add_response_header(resp, "x-aperture-request-id", r->id);
    for (size_t i = 0; headers && headers[i] && headers[i + 1]; i += 2)
        MHD_add_response_header(resp, headers[i], headers[i + 1]);
}

/* Hand a finished response to the event thread (caller holds r->mu). */
static void resume_locked(struct ap__req *r)
{
    if (r->suspended) {
        r->suspended = false;
        MHD_resume_connection(r->conn);
    }
}

void ap__req_respond(struct ap__req *r, unsigned status, const char *content_type, char *body,
                     size_t len, const char *const *headers)
{
    pthread_mutex_lock(&r->mu);
    if (r->answered) {
        pthread_mutex_unlock(&r->mu);
        free(body);
        return;
    }
    r->answered = true;
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, body ? body : (char *)"", MHD_RESPMEM_MUST_FREE);
    if (body == NULL) /* MUST_FREE of a static "" would be wrong: make it persistent */
        resp = (MHD_destroy_response(resp),
                MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT));
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    add_common_headers(r, resp, headers);
    r->response = resp;
    r->status = status;
    resume_locked(r);
    pthread_mutex_unlock(&r->mu);
}

void ap__req_respond_json(struct ap__req *r, unsigned status, json_t *j, const char *const *headers)
{
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(12)) : NULL;
    json_decref(j);
    if (s == NULL) {
        s = strdup("{\"error\":{\"message\":\"out of memory\"}}");
        status = 500;
    }
    ap__req_respond(r, status, "application/json", s, s ? strlen(s) : 0, headers);
}

void ap__req_error(struct ap__req *r, unsigned status, const char *type, const char *param,
                   const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(r->error, sizeof(r->error), "%.255s", msg);
    json_t *j;
    if (r->dialect == AP__DIALECT_ANTHROPIC) {
        /* Anthropic's error types: invalid_request_error, authentication_error,
         * rate_limit_error, api_error, overloaded_error, not_found_error. */
        j = json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type", type, "message",
                      msg);
    } else if (r->dialect == AP__DIALECT_OPENAI) {
        j = json_pack("{s:{s:s, s:s, s:s?, s:s?}}", "error", "message", msg, "type", type, "param",
                      param, "code", (const char *)NULL);
    } else {
        j = json_pack("{s:{s:s, s:s, s:s?}}", "error", "code", type, "message", msg, "param",
                      param);
    }
    const char *hdr[5] = {NULL};
    if (status == 429 || status == 503) {
        hdr[0] = "Retry-After";
        hdr[1] = r->retry_after[0] ? r->retry_after : "1";
    }
    ap__req_respond_json(r, status, j, hdr);
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct ap__req *r = cls;
    (void)pos;
    pthread_mutex_lock(&r->mu);
    if (r->soff < r->slen) {
        size_t n = AP_MIN(max, r->slen - r->soff);
        memcpy(buf, r->sbuf + r->soff, n);
        r->soff += n;
        if (r->soff == r->slen)
            r->soff = r->slen = 0;
        pthread_mutex_unlock(&r->mu);
        return (ssize_t)n;
    }
    if (r->stream_done) {
        bool err = r->stream_error;
        pthread_mutex_unlock(&r->mu);
        return err ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
    }
    /* Nothing to send yet: park the connection until the writer has more. */
    r->stream_waiting = true;
    r->suspended = true;
    MHD_suspend_connection(r->conn);
    pthread_mutex_unlock(&r->mu);
    return 0;
}

static void stream_free(void *cls)
{
    ap__req_unref(cls);
}

void ap__req_stream_begin(struct ap__req *r, const char *const *headers)
{
    pthread_mutex_lock(&r->mu);
    if (r->answered) {
        pthread_mutex_unlock(&r->mu);
        return;
    }
    r->answered = true;
    r->streaming = true;
    ap__req_ref(r); /* held by the response's reader */
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, r, stream_free);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    add_common_headers(r, resp, headers);
    r->response = resp;
    r->status = 200;
    resume_locked(r);
    pthread_mutex_unlock(&r->mu);
}

void ap__req_stream_write(struct ap__req *r, const char *data, size_t len)
{
    if (len == 0)
        return;
    pthread_mutex_lock(&r->mu);
    if (r->slen + len > r->scap) {
        size_t ncap = r->scap ? r->scap : 4096;
        while (ncap < r->slen + len)
            ncap *= 2;
        char *nb = realloc(r->sbuf, ncap);
        if (nb == NULL) {
            pthread_mutex_unlock(&r->mu);
            return;
        }
        r->sbuf = nb;
        r->scap = ncap;
    }
    memcpy(r->sbuf + r->slen, data, len);
    r->slen += len;
    if (r->stream_waiting) {
        r->stream_waiting = false;
        resume_locked(r);
    }
    pthread_mutex_unlock(&r->mu);
}

void ap__req_stream_end(struct ap__req *r, bool error)
{
    pthread_mutex_lock(&r->mu);
    r->stream_done = true;
    r->stream_error = error;
    if (r->stream_waiting) {
        r->stream_waiting = false;
        resume_locked(r);
    }
    pthread_mutex_unlock(&r->mu);
}

/* ---- log line ------------------------------------------------------------------------------- */

void ap__req_log(struct ap__req *r)
{
    struct ap_gateway *gw = r->gw;
    double total = ap__now_ms() - r->t_start;
    const char *lab[] = {"endpoint", r->endpoint, "model", r->model[0] ? r->model : "-",
                         "status",   NULL,        NULL};
    char st[8];
    snprintf(st, sizeof(st), "%u", r->status);
    lab[5] = st;
    ap__metrics_add(gw->metrics, "aperture_requests_total", lab, 1);
    const char *ml[] = {"model", r->model[0] ? r->model : "-", NULL};
    ap__metrics_observe(gw->metrics, "aperture_request_duration_seconds", ml, total / 1e3);

    /* Logging to /dev/null: do not build a line nobody reads (7-12 % of a text request's CPU
     * in the gateway benchmark). */
    if (gw->log_off)
        return;
    const struct ap__img_facts *f = r->n_img ? &r->img[0] : NULL;
    long tok = 0, saved = 0;
    for (size_t i = 0; i < r->n_img; i++) {
        tok += r->img[i].tokens_after > 0 ? r->img[i].tokens_after : 0;
        if (r->img[i].tokens_before > r->img[i].tokens_after && r->img[i].tokens_after >= 0)
            saved += r->img[i].tokens_before - r->img[i].tokens_after;
    }
    char ts[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *j = json_pack(
        "{s:s, s:s, s:s, s:i, s:s?, s:i, s:i, s:i, s:i, s:I, s:I, s:f, s:i, s:I, s:I, s:s, s:s, "
        "s:f, s:f, s:f, s:b, s:s, s:I, s:I}",
        "ts", ts, "request_id", r->id, "endpoint", r->endpoint, "status", (int)r->status,
        "image_hash", f ? f->sha16 : NULL, "original_w", f ? (int)f->in_w : 0, "original_h",
        f ? (int)f->in_h : 0, "processed_w", f ? (int)f->out_w : 0, "processed_h",
        f ? (int)f->out_h : 0, "original_bytes", (json_int_t)(f ? f->in_bytes : 0),
        "processed_bytes", (json_int_t)(f ? f->out_bytes : 0), "preprocessing_ms", r->prep_ms,
        "images", (int)r->n_img, "image_token_count", (json_int_t)tok, "tokens_saved",
        (json_int_t)saved, "provider", r->provider, "model", r->model, "upstream_ms",
        r->upstream_ms, "total_latency_ms", total, "cost_usd", r->cost_usd, "cache_hit",
        r->cache_result && strncmp(r->cache_result, "hit", 3) == 0, "extraction_method",
        r->route_method[0] ? r->route_method : r->provider, "input_tokens",
        (json_int_t)r->in_tokens, "output_tokens", (json_int_t)r->out_tokens);
    if (j && r->error[0])
        json_object_set_new(j, "error", json_string(r->error));
    if (j && r->cache_result) {
        json_object_set_new(j, "cache_kind", json_string(r->cache_result));
        if (strcmp(r->cache_result, "hit-near") == 0)
            json_object_set_new(j, "hamming_distance", json_integer(r->cache_distance));
    }
    if (j && r->rule[0])
        json_object_set_new(j, "route_rule", json_string(r->rule));
    if (j && r->stage_class[0])
        json_object_set_new(j, "class", json_string(r->stage_class));
    if (j && r->review_id[0])
        json_object_set_new(j, "review_id", json_string(r->review_id));
    if (j && r->client_name)
        json_object_set_new(j, "client", json_string(r->client_name));
    if (j && r->prompt) /* set only when the config opts in (log_prompts) */
        json_object_set_new(j, "prompt", json_string(r->prompt));
    char *s = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(12)) : NULL;
    json_decref(j);
    if (s) {
        pthread_mutex_lock(&gw->log_mu);
        fputs(s, gw->log);
        fputc('\n', gw->log);
        fflush(gw->log);
        pthread_mutex_unlock(&gw->log_mu);
        free(s);
    }
}

/* ---- auth and rate limits ----------------------------------------------------------------- */

struct ap__bucket {
    char key[65];
    double tokens, last;
    struct ap__bucket *next;
};

/* Which configured key does this credential match? Constant-time over every key. */
/* 1 + the index of the matching client key, or 0. Every key is compared (constant time per
 * key, and no early exit), so the time taken does not say which prefix matched. */
static size_t auth_check(const ap_config *cfg, const char *cred, char out_hex[65])
{
    uint8_t d[32];
    if (ap_sha256((const uint8_t *)cred, strlen(cred), d, NULL) != AP_OK)
        return 0;
    ap_sha256_hex(d, out_hex);
    size_t ok = 0;
    for (size_t i = 0; i < cfg->n_client_keys; i++)
        if (strlen(cfg->client_key_sha256[i]) == 64 &&
            CRYPTO_memcmp(cfg->client_key_sha256[i], out_hex, 64) == 0)
            ok = i + 1;
    return ok;
}

/* The client key sent with r (bearer token or x-api-key), checked; sets r->client_name. */
static bool client_auth(struct ap__req *r, char hex[65])
{
    const ap_config *cfg = r->gw->cfg;
    const char *cred = NULL;
    const char *authz = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization");
    if (authz && strncasecmp(authz, "Bearer ", 7) == 0)
        cred = authz + 7;
    else
        cred = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "x-api-key");
    size_t k = cred ? auth_check(cfg, cred, hex) : 0;
    if (k == 0)
        return false;
    r->client_name = cfg->client_key_name ? cfg->client_key_name[k - 1] : NULL;
    return true;
}

bool ap__req_client(struct ap__req *r)
{
    char hex[65];
    if (r->gw->cfg->n_client_keys == 0 || client_auth(r, hex))
        return true;
    ap__req_error(r, 401, "authentication_error", NULL, "missing or invalid API key");
    return false;
}

/* Token bucket per key: returns 0 when allowed, else seconds to wait. */
static int rate_take(struct ap_gateway *gw, const char *key)
{
    const ap_config *cfg = gw->cfg;
    if (cfg->rate_rps <= 0)
        return 0;
    double burst = cfg->rate_burst > 0 ? cfg->rate_burst : cfg->rate_rps;
    double now = ap__now_ms() / 1e3;
    int wait = 0;
    pthread_mutex_lock(&gw->rl_mu);
    struct ap__bucket *b = gw->buckets;
    while (b && strcmp(b->key, key) != 0)
        b = b->next;
    if (b == NULL) {
        b = ap__xcalloc(1, sizeof(*b));
        memcpy(b->key, key, 65);
        b->tokens = burst;
        b->last = now;
        b->next = gw->buckets;
        gw->buckets = b;
    }
    b->tokens = AP_MIN(burst, b->tokens + (now - b->last) * cfg->rate_rps);
    b->last = now;
    if (b->tokens >= 1.0)
        b->tokens -= 1.0;
    else
        wait = (int)((1.0 - b->tokens) / cfg->rate_rps) + 1;
    pthread_mutex_unlock(&gw->rl_mu);
    return wait;
}

/* ---- routing -------------------------------------------------------------------------------- */

static void job(void *arg)
{
    struct ap__req *r = arg;
    r->handler(r);
    ap__req_unref(r); /* the job's reference */
}

static void limiter_gauges(const char *key, size_t queued, int in_flight, void *ctx)
{
    struct ap_gateway *gw = ctx;
    ap__metrics_set(gw->metrics, "aperture_ratelimit_queue_depth",
                    (const char *[]){"provider", key, NULL}, (double)queued);
    ap__metrics_set(gw->metrics, "aperture_provider_inflight",
                    (const char *[]){"provider", key, NULL}, (double)in_flight);
}

static void breaker_gauge(const ap_breaker_info *in, void *ctx)
{
    struct ap_gateway *gw = ctx;
    ap__metrics_set(gw->metrics, "aperture_breaker_state",
                    (const char *[]){"deployment", in->deployment, NULL}, (double)in->state);
}

static void handle_metrics(struct ap__req *r)
{
    size_t len;
    struct ap_gateway *gw = r->gw;
    if (gw->cache) {
        ap_cache_stats st;
        if (ap_cache_stats_get(gw->cache, &st, NULL) == AP_OK) {
            /* -1 means "not known" (Redis does not count bytes; a backend that is down). */
            if (st.entries >= 0)
                ap__metrics_set(gw->metrics, "aperture_cache_entries", NULL, (double)st.entries);
            if (st.bytes >= 0)
                ap__metrics_set(gw->metrics, "aperture_cache_bytes", NULL, (double)st.bytes);
            ap__cache_backend_state(gw, st.backend_up, "cache backend unreachable");
        } else {
            ap__cache_backend_state(gw, false, "cache backend unreachable");
        }
    }
    if (gw->limiter)
        ap_limiter_foreach(gw->limiter, limiter_gauges, gw);
    /* Breakers changed by another gateway (ap_breaker_force() reports no change) and breakers
     * whose cooldown ran out are read here, at scrape time. */
    ap_breaker_foreach(gw->breakers, breaker_gauge, gw);
    char *s = ap__metrics_render(r->gw->metrics, &len);
    ap__req_respond(r, 200, "text/plain; version=0.0.4", s, len, NULL);
}

static void handle_health(struct ap__req *r)
{
    char *s = strdup("{\"status\":\"ok\"}");
    ap__req_respond(r, 200, "application/json", s, s ? strlen(s) : 0, NULL);
}

static void handle_ready(struct ap__req *r)
{
    bool stopping = atomic_load(&r->gw->stopping);
    char *s = strdup(stopping ? "{\"status\":\"stopping\"}" : "{\"status\":\"ready\"}");
    ap__req_respond(r, stopping ? 503 : 200, "application/json", s, s ? strlen(s) : 0, NULL);
}

static void handle_not_found(struct ap__req *r)
{
    ap__req_error(r, 404,
                  r->dialect == AP__DIALECT_ANTHROPIC ? "not_found_error" : "invalid_request_error",
                  NULL, "no route for this path");
}

static void handle_method(struct ap__req *r)
{
    ap__req_error(r, 405, "invalid_request_error", NULL, "method not allowed on %s", r->endpoint);
}

struct route {
    const char *method, *path, *endpoint;
    enum ap__dialect dialect;
    void (*fn)(struct ap__req *);
    bool auth;
    bool pool;   /* CPU work (or store I/O): run on the worker pool; else on the event thread */
    bool prefix; /* path is a prefix ("/v1/review/" + id) */
};

static const struct route routes[] = {
    {"POST", "/v1/chat/completions", "/v1/chat/completions", AP__DIALECT_OPENAI, ap__api_chat, 1, 1,
     0},
    {"POST", "/chat/completions", "/v1/chat/completions", AP__DIALECT_OPENAI, ap__api_chat, 1, 1,
     0},
    {"POST", "/v1/messages", "/v1/messages", AP__DIALECT_ANTHROPIC, ap__api_chat, 1, 1, 0},
    {"POST", "/v1/analyze", "/v1/analyze", AP__DIALECT_NATIVE, ap__api_analyze, 1, 1, 0},
    {"POST", "/v1/preprocess", "/v1/preprocess", AP__DIALECT_NATIVE, ap__api_preprocess, 1, 1, 0},
    {"GET", "/v1/models", "/v1/models", AP__DIALECT_OPENAI, ap__api_models, 1, 0, 0},
    {"GET", "/models", "/v1/models", AP__DIALECT_OPENAI, ap__api_models, 1, 0, 0},
    {"GET", "/v1/admin/cache", "/v1/admin/cache", AP__DIALECT_NATIVE, ap__api_admin_cache, 0, 1, 0},
    {"DELETE", "/v1/admin/cache", "/v1/admin/cache", AP__DIALECT_NATIVE, ap__api_admin_cache, 0, 1,
     0},
    {"GET", "/v1/admin/breakers", "/v1/admin/breakers", AP__DIALECT_NATIVE, ap__api_admin_breakers,
     0, 0, 0},
    /* Review items: a client reads its own by id (the id is unguessable); listing and resolving
     * take the admin key (checked in the handler). */
    {"GET", "/v1/review", "/v1/review", AP__DIALECT_NATIVE, ap__api_review, 0, 1, 0},
    {"GET", "/v1/review/", "/v1/review/{id}", AP__DIALECT_NATIVE, ap__api_review, 0, 1, 1},
    {"POST", "/v1/review/", "/v1/review/{id}", AP__DIALECT_NATIVE, ap__api_review, 0, 1, 1},
    {"GET", "/metrics", "/metrics", AP__DIALECT_NATIVE, handle_metrics, 0, 0, 0},
    {"GET", "/healthz", "/healthz", AP__DIALECT_NATIVE, handle_health, 0, 0, 0},
    {"GET", "/readyz", "/readyz", AP__DIALECT_NATIVE, handle_ready, 0, 0, 0},
};

static const struct route *find_route(const char *method, const char *url, bool *wrong_method)
{
    *wrong_method = false;
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        size_t pl = strlen(routes[i].path);
        if (routes[i].prefix ? strncmp(url, routes[i].path, pl) != 0 || url[pl] == '\0'
                             : strcmp(url, routes[i].path) != 0)
            continue;
        if (strcmp(method, routes[i].method) == 0)
            return &routes[i];
        *wrong_method = true;
    }
    return NULL;
}

static char *dup_header(struct MHD_Connection *c, enum MHD_ValueKind kind, const char *name)
{
    const char *v = MHD_lookup_connection_value(c, kind, name);
    return v ? strdup(v) : NULL;
}

static enum MHD_Result post_iter(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *filename, const char *content_type,
                                 const char *transfer_encoding, const char *data, uint64_t off,
                                 size_t size)
{
    struct ap__req *r = cls;
    (void)kind, (void)content_type, (void)transfer_encoding, (void)off;
    size_t max = r->gw->cfg->max_body_bytes;
    if (filename != NULL || strcmp(key, "image") == 0 || strcmp(key, "file") == 0) {
        if (r->file_len + size > max) {
            r->too_large = true;
            return MHD_NO;
        }
        if (r->file_len + size > r->file_cap) {
            size_t ncap = r->file_cap ? r->file_cap : 65536;
            while (ncap < r->file_len + size)
                ncap *= 2;
            char *nb = realloc(r->file, ncap);
            if (nb == NULL)
                return MHD_NO;
            r->file = nb;
            r->file_cap = ncap;
        }
        memcpy(r->file + r->file_len, data, size);
        r->file_len += size;
        return MHD_YES;
    }
    /* A text field, possibly delivered in pieces: append. */
    json_t *prev = json_object_get(r->form, key);
    const char *p = prev ? json_string_value(prev) : "";
    size_t pl = strlen(p);
    if (pl + size > 1u << 20)
        return MHD_NO;
    char *v = malloc(pl + size + 1);
    if (v == NULL)
        return MHD_NO;
    memcpy(v, p, pl);
    memcpy(v + pl, data, size);
    v[pl + size] = '\0';
    json_object_set_new(r->form, key, json_stringn(v, pl + size));
    free(v);
    return MHD_YES;
}

static enum MHD_Result queue(struct ap__req *r, struct MHD_Connection *c)
{
    pthread_mutex_lock(&r->mu);
    struct MHD_Response *resp = r->response;
    r->response = NULL;
    unsigned status = r->status;
    pthread_mutex_unlock(&r->mu);
    if (resp == NULL)
        return MHD_NO;
    enum MHD_Result ret = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    struct ap_gateway *gw = cls;
    struct ap__req *r = *con_cls;
    (void)version;

    if (r == NULL) {
        r = ap__xcalloc(1, sizeof(*r));
        atomic_init(&r->refs, 1); /* the connection's */
        pthread_mutex_init(&r->mu, NULL);
        r->gw = gw;
        r->conn = c;
        r->t_start = ap__now_ms();
        snprintf(r->id, sizeof(r->id), "req_%lx%06lx", (unsigned long)time(NULL),
                 atomic_fetch_add(&gw->next_id, 1) & 0xffffff);
        bool wrong = false;
        const struct route *rt = find_route(method, url, &wrong);
        r->endpoint = rt ? rt->endpoint : "other";
        r->dialect = rt ? rt->dialect
                        : (strncmp(url, "/v1/messages", 12) == 0 ? AP__DIALECT_ANTHROPIC
                                                                 : AP__DIALECT_OPENAI);
        r->handler = rt ? rt->fn : wrong ? handle_method : handle_not_found;
        r->content_type = dup_header(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        r->task_header = dup_header(c, MHD_HEADER_KIND, "x-aperture-task");
        r->query_target = dup_header(c, MHD_GET_ARGUMENT_KIND, "target");
        r->query_format = dup_header(c, MHD_GET_ARGUMENT_KIND, "format");
        r->query_response = dup_header(c, MHD_GET_ARGUMENT_KIND, "response");
        r->is_delete = strcmp(method, "DELETE") == 0;
        r->is_post = strcmp(method, "POST") == 0;
        r->url = strdup(url);
        r->data_class = dup_header(c, MHD_HEADER_KIND, "x-aperture-data-class");
        r->cache_control = dup_header(c, MHD_HEADER_KIND, "Cache-Control");
        r->cache_header = dup_header(c, MHD_HEADER_KIND, "x-aperture-cache");
        r->cache_ttl_header = dup_header(c, MHD_HEADER_KIND, "x-aperture-cache-ttl");
        *con_cls = r;
        atomic_fetch_add(&gw->inflight, 1);
        ap__metrics_set(gw->metrics, "aperture_inflight_requests", NULL,
                        (double)atomic_load(&gw->inflight));

        /* Auth before reading a byte of the body. */
        if (rt && rt->auth && gw->cfg->n_client_keys > 0) {
            char hex[65];
            if (!client_auth(r, hex)) {
                ap__req_error(r, 401,
                              r->dialect == AP__DIALECT_ANTHROPIC ? "authentication_error"
                                                                  : "invalid_request_error",
                              NULL, "missing or invalid API key");
                return queue(r, c);
            }
            int wait = rate_take(gw, hex);
            if (wait > 0) {
                snprintf(r->retry_after, sizeof(r->retry_after), "%d", wait);
                ap__req_error(r, 429,
                              r->dialect == AP__DIALECT_ANTHROPIC ? "rate_limit_error"
                                                                  : "rate_limit_exceeded",
                              NULL, "rate limit exceeded for this key; retry in %d s", wait);
                return queue(r, c);
            }
        }
        const char *cl =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        unsigned long long clen = cl ? strtoull(cl, NULL, 10) : 0;
        /* Over the cap: read and discard the body, then answer 413. Answering at once would
         * close the connection under a client still uploading, and most HTTP clients then
         * report a broken pipe instead of the 413. Only absurd sizes are cut off early. */
        const char *expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Expect");
        bool asks = expect && strcasecmp(expect, "100-continue") == 0;
        if (clen > gw->cfg->max_body_bytes)
            r->too_large = true;
        /* A client that sent "Expect: 100-continue" waits for permission: refuse at once. */
        if (clen > gw->cfg->max_body_bytes &&
            (asks || (clen > (1ull << 30) && clen > 4ull * gw->cfg->max_body_bytes))) {
            ap__req_error(r, 413, "invalid_request_error", NULL,
                          "request body of %s bytes is over the limit of %zu", cl,
                          gw->cfg->max_body_bytes);
            return queue(r, c);
        }
        if (r->content_type && strncasecmp(r->content_type, "multipart/form-data", 19) == 0) {
            r->form = json_object();
            r->pp = MHD_create_post_processor(c, 65536, post_iter, r);
        }
        return MHD_YES;
    }

    if (r->answered && r->response) /* resumed with an answer */
        return queue(r, c);
    if (r->answered) {
        /* Answered before the body was read (auth, limits): MHD already has the response and
         * discards the rest of the upload. */
        *upload_size = 0;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (r->pp) {
            if (MHD_post_process(r->pp, upload_data, *upload_size) != MHD_YES && !r->too_large)
                r->too_large = r->file_len == 0 ? false : r->too_large;
        } else if (!r->too_large) {
            if (r->len + *upload_size > gw->cfg->max_body_bytes) {
                r->too_large = true;
            } else {
                if (r->len + *upload_size + 1 > r->cap) {
                    size_t ncap = r->cap ? r->cap : 16384;
                    while (ncap < r->len + *upload_size + 1)
                        ncap *= 2;
                    char *nb = realloc(r->body, ncap);
                    if (nb == NULL) {
                        r->too_large = true;
                    } else {
                        r->body = nb;
                        r->cap = ncap;
                    }
                }
                if (!r->too_large) {
                    memcpy(r->body + r->len, upload_data, *upload_size);
                    r->len += *upload_size;
                    r->body[r->len] = '\0';
                }
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    /* The whole request is in. */
    if (r->too_large) {
        ap__req_error(r, 413, "invalid_request_error", NULL,
                      "request body is over the limit of %zu bytes", gw->cfg->max_body_bytes);
        return queue(r, c);
    }
    bool wrong = false;
    const struct route *rt = find_route(method, url, &wrong);
    if (rt == NULL || !rt->pool) {
        r->handler(r); /* cheap: answer on the event thread */
        return queue(r, c);
    }
    pthread_mutex_lock(&r->mu);
    r->suspended = true;
    MHD_suspend_connection(c);
    pthread_mutex_unlock(&r->mu);
    ap__req_ref(r); /* the job's */
    if (ap__pool_submit(gw->pool, job, r) != 0) {
        ap__req_unref(r);
        ap__req_error(r, 503, "overloaded_error", NULL, "gateway is shutting down");
    }
    return MHD_YES;
}

bool ap__req_client_gone(struct ap__req *r)
{
    if (r->stream_error)
        return true;
    /* A suspended connection is not polled by MHD, so ask the socket: a peer that closed
     * reads as end of file. Pipelined bytes or nothing yet both mean it is still there. */
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci == NULL)
        return false;
    char b;
    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct ap_gateway *gw = cls;
    struct ap__req *r = *con_cls;
    (void)c, (void)toe;
    if (r == NULL)
        return;
    if (r->status == 0)
        r->status = 499; /* the client went away before an answer */
    ap__req_log(r);
    atomic_fetch_sub(&gw->inflight, 1);
    ap__metrics_set(gw->metrics, "aperture_inflight_requests", NULL,
                    (double)atomic_load(&gw->inflight));
    *con_cls = NULL;
    ap__req_unref(r);
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

void ap__cache_backend_state(struct ap_gateway *gw, bool up, const char *why)
{
    ap__metrics_set(gw->metrics, "aperture_cache_backend_up", NULL, up ? 1 : 0);
    if (up)
        return;
    /* Once per 30 s at most: a dead Redis must not flood the log. */
    double now = ap__now_ms();
    pthread_mutex_lock(&gw->log_mu);
    if (now - gw->cache_logged_down > 30000) {
        gw->cache_logged_down = now;
        fprintf(gw->log, "{\"event\":\"cache_unavailable\",\"message\":");
        json_t *m = json_string(why ? why : "");
        char *ms = json_dumps(m, JSON_ENCODE_ANY);
        fputs(ms ? ms : "\"\"", gw->log);
        free(ms);
        json_decref(m);
        fputs("}\n", gw->log);
        fflush(gw->log);
    }
    pthread_mutex_unlock(&gw->log_mu);
}

/*
 * The cache: on by default with the embedded store (a SQLite file in the working directory);
 * APERTURE_CACHE_URL picks the backend ("sqlite:///path.db", "redis://host:port/db");
 * APERTURE_CACHE=off turns it off. A cache that cannot open leaves the gateway running
 * without one, and says so.
 */
static void cache_log(void *ctx, const char *line)
{
    struct ap_gateway *gw = ctx;
    json_t *j = json_pack("{s:s, s:s}", "event", "cache", "message", line);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (s) {
        pthread_mutex_lock(&gw->log_mu);
        fprintf(gw->log, "%s\n", s);
        fflush(gw->log);
        pthread_mutex_unlock(&gw->log_mu);
        free(s);
    }
}

static void open_cache(struct ap_gateway *gw)
{
    const char *off = getenv("APERTURE_CACHE");
    const char *url = getenv("APERTURE_CACHE_URL");
    const char *thr = getenv("APERTURE_CACHE_NEAR_THRESHOLD");
    const char *admin = getenv("APERTURE_ADMIN_KEY");
    gw->near_threshold = thr && *thr ? (int)strtol(thr, NULL, 10) : 6;
    if (admin && *admin) {
        uint8_t d[32];
        if (ap_sha256((const uint8_t *)admin, strlen(admin), d, NULL) == AP_OK)
            ap_sha256_hex(d, gw->admin_key_sha256);
    }
    if (off && (strcmp(off, "off") == 0 || strcmp(off, "0") == 0))
        return;
    ap_cache_opts o;
    ap_cache_opts_init(&o);
    if (url && *url)
        o.url = url;
    o.log_fn = cache_log;
    o.log_ctx = gw;
    ap_error err = {0};
    if (ap_cache_open(&o, &gw->cache, &err) != AP_OK) {
        gw->cache = NULL;
        fprintf(gw->log, "{\"event\":\"cache_disabled\",\"message\":\"%s\"}\n",
                ap_strerror(err.code));
        ap__metrics_set(gw->metrics, "aperture_cache_backend_up", NULL, 0);
        return;
    }
    ap__metrics_set(gw->metrics, "aperture_cache_backend_up", NULL, 1);
}

/* A breaker changed state here: metric, a log line, and the other gateways (when shared). */
static void breaker_changed(void *ctx, const char *dep, ap_breaker_state from, ap_breaker_state to,
                            int64_t now_ms)
{
    struct ap_gateway *gw = ctx;
    (void)now_ms;
    ap__metrics_set(gw->metrics, "aperture_breaker_state",
                    (const char *[]){"deployment", dep, NULL}, (double)to);
    ap_breaker_sync *sync = atomic_load(&gw->breaker_sync);
    if (sync && to != AP_BREAKER_HALF_OPEN) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        int64_t unix_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
        ap_breaker_sync_publish(sync, dep, to, unix_ms + gw->cfg->breaker.cooldown_ms);
    }
    if (gw->log_off)
        return;
    json_t *j = json_pack("{s:s, s:s, s:s, s:s}", "event", "breaker", "deployment", dep, "from",
                          ap_breaker_state_name(from), "to", ap_breaker_state_name(to));
    char *line = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (line) {
        pthread_mutex_lock(&gw->log_mu);
        fprintf(gw->log, "%s\n", line);
        fflush(gw->log);
        pthread_mutex_unlock(&gw->log_mu);
        free(line);
    }
}

/*
 * The review queue, the limiter and breaker sharing. The review store is the config's
 * review_url, else the cache's Redis when the cache is on Redis (several gateways, one queue),
 * else a SQLite file beside the cache's. Breaker state is shared through
 * APERTURE_BREAKER_SYNC_URL, else the cache's Redis; "off" keeps it local.
 */
static void open_resilience(struct ap_gateway *gw)
{
    const char *cache_url = getenv("APERTURE_CACHE_URL");
    bool cache_redis = cache_url && strncmp(cache_url, "redis://", 8) == 0;
    const char *rv = gw->cfg->review_url ? gw->cfg->review_url
                     : cache_redis       ? cache_url
                                         : "sqlite://aperture-review.db";
    ap_error err = {0};
    if (ap_review_open(rv, &gw->review, &err) != AP_OK) {
        gw->review = NULL;
        snprintf(gw->review_err, sizeof(gw->review_err), "review store unavailable: %.120s",
                 err.msg);
        json_t *j = json_pack("{s:s, s:s}", "event", "review_disabled", "message", err.msg);
        char *line = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (line) {
            fprintf(gw->log, "%s\n", line);
            free(line);
        }
    }
    if (ap_limiter_new(&gw->limiter, &err) != AP_OK)
        gw->limiter = NULL; /* no limits rather than no gateway; only ENOMEM gets here */
    const char *bs = getenv("APERTURE_BREAKER_SYNC_URL");
    if (bs == NULL || *bs == '\0')
        bs = cache_redis ? cache_url : NULL;
    if (bs && strcmp(bs, "off") != 0) {
        ap_breaker_sync *sync = NULL;
        if (ap_breaker_sync_start(gw->breakers, bs, NULL, NULL, &sync, &err) == AP_OK) {
            snprintf(gw->breaker_sync_url, sizeof(gw->breaker_sync_url), "%s", bs);
            atomic_store(&gw->breaker_sync, sync);
        }
    }
}

static bool is_loopback(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
    if (ss->ss_family == AF_INET6)
        return IN6_IS_ADDR_LOOPBACK(&((const struct sockaddr_in6 *)ss)->sin6_addr);
    return false;
}

/* "host:port", "[v6]:port" or ":port" -> sockaddr. */
static ap_status parse_listen(const char *s, struct sockaddr_storage *ss, ap_error *err)
{
    char host[256];
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon[1] == '\0')
        return ap_error_set(err, AP_EINVAL, "listen: \"%s\" is not host:port", s);
    size_t hl = (size_t)(colon - s);
    if (hl >= sizeof(host))
        return ap_error_set(err, AP_EINVAL, "listen: host too long");
    memcpy(host, s, hl);
    host[hl] = '\0';
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535)
        return ap_error_set(err, AP_EINVAL, "listen: bad port in \"%s\"", s);
    memset(ss, 0, sizeof(*ss));
    char *h = host;
    if (h[0] == '[') {
        h++;
        char *rb = strchr(h, ']');
        if (rb)
            *rb = '\0';
    }
    if (h[0] == '\0' || strcmp(h, "0.0.0.0") == 0 || strcmp(h, "*") == 0) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        a->sin_addr.s_addr = htonl(INADDR_ANY);
        return AP_OK;
    }
    if (strcmp(h, "localhost") == 0)
        h = (char *)"127.0.0.1";
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, h, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        return AP_OK;
    }
    if (inet_pton(AF_INET6, h, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        return AP_OK;
    }
    return ap_error_set(err, AP_EINVAL, "listen: \"%s\" is not an IP address", h);
}

ap_status ap_gateway_start(const ap_config *cfg, ap_gateway **out, ap_error *err)
{
    struct sockaddr_storage ss;
    ap_status rc = parse_listen(cfg->listen ? cfg->listen : "127.0.0.1:8080", &ss, err);
    if (rc != AP_OK)
        return rc;
    if (cfg->n_client_keys == 0 && !is_loopback(&ss))
        return ap_error_set(err, AP_EINVAL,
                            "refusing to listen on \"%s\" without client keys: configure "
                            "client_keys_sha256 (or APERTURE_CLIENT_KEYS), or listen on 127.0.0.1",
                            cfg->listen);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    struct ap_gateway *gw = ap__xcalloc(1, sizeof(*gw));
    gw->cfg = cfg;
    pthread_mutex_init(&gw->log_mu, NULL);
    pthread_mutex_init(&gw->rl_mu, NULL);
    atomic_init(&gw->inflight, 0);
    atomic_init(&gw->next_id, 1);
    atomic_init(&gw->stopping, false);
    gw->log = stderr;
    if (cfg->log_file) {
        gw->log = fopen(cfg->log_file, "a");
        if (gw->log == NULL) {
            free(gw);
            return ap_error_set(err, AP_EIO, "cannot open log file \"%s\"", cfg->log_file);
        }
        gw->own_log = true;
        gw->log_off = strcmp(cfg->log_file, "/dev/null") == 0;
    }
    gw->metrics = ap__metrics_new();
    pthread_mutex_init(&gw->flight_mu, NULL);
    open_cache(gw);
    ap_breaker_opts bo = cfg->breaker;
    bo.on_change = breaker_changed;
    bo.on_change_ctx = gw;
    if (ap_breaker_set_new(&bo, &gw->breakers, err) != AP_OK) {
        ap_cache_close(gw->cache);
        ap__metrics_free(gw->metrics);
        free(gw);
        return AP_EINVAL;
    }
    open_resilience(gw);
    gw->pool = ap__pool_new(cfg->workers);
    gw->http = ap__http_new();
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    gw->mhd =
        MHD_start_daemon(flags, 0, NULL, NULL, on_request, gw, MHD_OPTION_SOCK_ADDR, &ss,
                         MHD_OPTION_NOTIFY_COMPLETED, on_completed, gw, MHD_OPTION_CONNECTION_LIMIT,
                         (unsigned)20000, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)900,
                         MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)4096, MHD_OPTION_END);
    if (gw->mhd == NULL) {
        ap__http_free(gw->http);
        ap__pool_free(gw->pool);
        ap_breaker_sync_stop(atomic_load(&gw->breaker_sync));
        ap_limiter_free(gw->limiter);
        ap_review_close(gw->review);
        ap_breaker_set_free(gw->breakers);
        ap_cache_close(gw->cache);
        ap__metrics_free(gw->metrics);
        if (gw->own_log)
            fclose(gw->log);
        free(gw);
        return ap_error_set(err, AP_EIO, "cannot listen on \"%s\" (in use?)", cfg->listen);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(gw->mhd, MHD_DAEMON_INFO_BIND_PORT);
    gw->port = di ? di->port : 0;
    *out = gw;
    return AP_OK;
}

unsigned ap_gateway_port(const ap_gateway *gw)
{
    return gw->port;
}

void ap_gateway_stop(ap_gateway *gw, long deadline_ms)
{
    if (gw == NULL)
        return;
    atomic_store(&gw->stopping, true);
    /* Stop accepting; requests in flight keep going until the deadline. */
    MHD_socket ls = MHD_quiesce_daemon(gw->mhd);
    if (ls != MHD_INVALID_SOCKET)
        close(ls);
    double until = ap__now_ms() + (double)deadline_ms;
    while (atomic_load(&gw->inflight) > 0 && ap__now_ms() < until) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    /* Requests still queued for a rate-limit slot are refused (their callbacks answer at once,
     * and no slot is granted from here on); then abort upstream calls still running: their
     * callbacks answer 502/504 and resume, and give their slots back to the closed limiter. */
    ap_limiter_close(gw->limiter);
    ap__http_stop(gw->http);
    /* Jobs still queued on the pool run to the end; their upstream submits are refused. Only
     * then can the loop's memory go. */
    ap__pool_free(gw->pool);
    gw->pool = NULL;
    ap__http_free(gw->http);
    gw->http = NULL;
    /* Give the event thread a moment to flush the answers just queued. */
    until = ap__now_ms() + 500;
    while (atomic_load(&gw->inflight) > 0 && ap__now_ms() < until) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(gw->mhd);
    ap_cache_close(gw->cache);
    ap_breaker_sync_stop(atomic_exchange(&gw->breaker_sync, NULL));
    ap_review_close(gw->review);
    ap_limiter_free(gw->limiter);
    ap_breaker_set_free(gw->breakers);
    pthread_mutex_destroy(&gw->flight_mu);
    ap__metrics_free(gw->metrics);
    struct ap__bucket *b = gw->buckets;
    while (b) {
        struct ap__bucket *n = b->next;
        free(b);
        b = n;
    }
    if (gw->own_log)
        fclose(gw->log);
    pthread_mutex_destroy(&gw->log_mu);
    pthread_mutex_destroy(&gw->rl_mu);
    free(gw);
    curl_global_cleanup();
}
