/*
 * api_chat.c - POST /v1/chat/completions (OpenAI dialect) and POST /v1/messages (Anthropic).
 *
 * Both dialects become one canonical request (OpenAI chat format); every image part is loaded
 * (data: URL, or an SSRF-checked fetch), preprocessed for the provider the model routes to, and
 * put back as a data: URL; the provider translates canonical to its wire format. Answers come
 * back the same way. A stream from an OpenAI-wire upstream to an OpenAI client is relayed byte
 * for byte; other pairs are translated chunk by chunk as they arrive.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
#include <strings.h>

#include "aperture/hash.h"
#include "aperture/prep.h"
#include "aperture/router.h"
#include "aperture/tokens.h"
#include "core/core.h"
#include "net/fetch.h"
#include "provider/ocr.h"
#include "aperture/resilience.h"
#include "provider/provider.h"
#include "server/server.h"

/* ---- images ----------------------------------------------------------------------------- */

ap_status ap__b64_decode(const char *s, size_t n, size_t max, uint8_t **out, size_t *out_len)
{
    static int8_t tab[256];
    static int init;
    if (!init) { /* idempotent; a benign race writes the same bytes */
        memset(tab, -1, sizeof(tab));
        const char *a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for (int i = 0; i < 64; i++)
            tab[(unsigned char)a[i]] = (int8_t)i;
        tab['-'] = 62;
        tab['_'] = 63;
        init = 1;
    }
    if (n / 4 * 3 > max + 3)
        return AP_ETOOLARGE;
    uint8_t *b = malloc(n / 4 * 3 + 3);
    if (b == NULL)
        return AP_ENOMEM;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '=')
            break;
        if (c == ' ' || c == '\n' || c == '\r' || c == '\t')
            continue;
        if (tab[c] < 0) {
            free(b);
            return AP_EINVAL;
        }
        acc = acc << 6 | (uint32_t)tab[c];
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            b[o++] = (uint8_t)(acc >> bits);
        }
    }
    if (o > max) {
        free(b);
        return AP_ETOOLARGE;
    }
    *out = b;
    *out_len = o;
    return AP_OK;
}

/* Load an image reference: a data: URL (base64) or an http(s) URL fetched safely. */
ap_status ap__image_load(struct ap__req *r, const char *ref, uint8_t **buf, size_t *len,
                         ap_error *err)
{
    const ap_config *cfg = r->gw->cfg;
    size_t max = cfg->prep.max_input_bytes ? cfg->prep.max_input_bytes : (64u << 20);
    if (strncmp(ref, "data:", 5) == 0) {
        const char *comma = strchr(ref, ',');
        if (comma == NULL)
            return ap_error_set(err, AP_EINVAL, "data URL without a comma");
        const char *b64 = strstr(ref, ";base64");
        if (b64 == NULL || b64 > comma)
            return ap_error_set(err, AP_EINVAL, "data URL is not base64-encoded");
        ap_status rc = ap__b64_decode(comma + 1, strlen(comma + 1), max, buf, len);
        if (rc == AP_ETOOLARGE)
            return ap_error_set(err, rc, "image is over the limit of %zu bytes", max);
        if (rc != AP_OK)
            return ap_error_set(err, rc, "data URL holds invalid base64");
        return AP_OK;
    }
    if (strncasecmp(ref, "http://", 7) == 0 || strncasecmp(ref, "https://", 8) == 0) {
        struct ap__fetch_opts fo = {
            .allow_loopback = cfg->fetch_allow_loopback,
            .allow_hosts = (const char *const *)cfg->fetch_allow_hosts,
            .n_allow_hosts = cfg->n_fetch_allow_hosts,
            .timeout_ms = cfg->fetch_timeout_ms > 0 ? cfg->fetch_timeout_ms : 10000,
            .max_bytes = cfg->fetch_max_bytes ? cfg->fetch_max_bytes : max,
        };
        return ap__fetch(&fo, ref, buf, len, NULL, err);
    }
    return ap_error_set(err, AP_EINVAL, "image URL must be a data: URL or http(s)");
}

/* The preprocessing target for a model on a provider (config first). */
static const char *target_for(const ap_model_conf *m, const ap_provider_conf *p, const char *detail)
{
    if (m && m->target)
        return m->target;
    switch (p->type) {
    case AP_PROVIDER_OPENAI:
        return detail && strcmp(detail, "low") == 0 ? "openai-low" : "openai-high";
    case AP_PROVIDER_ANTHROPIC:
        return "anthropic";
    case AP_PROVIDER_GEMINI:
        return "gemini";
    default:
        return "default";
    }
}

/*
 * Preprocess one image for target and record its facts on the request. token_model may be
 * NULL (no estimate). On success res holds the output (release it).
 */
ap_status ap__image_prep(struct ap__req *r, const uint8_t *buf, size_t len, const char *target,
                         const char *token_model, const char *detail, ap_prep_result *res,
                         ap_error *err)
{
    struct ap_gateway *gw = r->gw;
    ap_prep_opts o = gw->cfg->prep;
    if (ap_prep_opts_target(&o, target) != AP_OK)
        return ap_error_set(err, AP_EINVAL, "unknown preprocessing target \"%s\"", target);
    ap_status rc = ap_prep(buf, len, &o, res, err);
    if (rc != AP_OK)
        return rc;
    r->prep_ms += res->ms.total_ms;
    ap__metrics_observe(gw->metrics, "aperture_preprocess_duration_seconds", NULL,
                        res->ms.total_ms / 1e3);
    ap__metrics_add(gw->metrics, "aperture_image_bytes_total",
                    (const char *[]){"direction", "in", NULL}, (double)len);
    ap__metrics_add(gw->metrics, "aperture_image_bytes_total",
                    (const char *[]){"direction", "out", NULL}, (double)res->out_len);
    if (r->n_img < sizeof(r->img) / sizeof(r->img[0])) {
        struct ap__img_facts *f = &r->img[r->n_img++];
        memcpy(f->sha16, res->sha256_hex, 16);
        f->sha16[16] = '\0';
        snprintf(f->format, sizeof(f->format), "%s", ap_format_name(res->in_format));
        bool swap = res->orientation >= 5;
        f->in_w = swap ? res->in_height : res->in_width;
        f->in_h = swap ? res->in_width : res->in_height;
        f->out_w = res->out_width;
        f->out_h = res->out_height;
        f->in_bytes = len;
        f->out_bytes = res->out_len;
        f->prep_ms = res->ms.total_ms;
        f->orientation = res->orientation;
        ap_meta_describe(res->meta_removed, f->meta_removed, sizeof(f->meta_removed));
        f->tokens_before = f->tokens_after = -1;
        ap_tokens_detail d = AP_TOKENS_DETAIL_AUTO;
        if (detail && ap_tokens_detail_parse(detail, &d) != AP_OK)
            d = AP_TOKENS_DETAIL_AUTO;
        ap_tokens_result tr;
        if (token_model && ap_tokens_estimate(token_model, f->in_w, f->in_h, d, &tr, NULL) == AP_OK)
            f->tokens_before = (long)tr.tokens;
        if (token_model &&
            ap_tokens_estimate(token_model, f->out_w, f->out_h, d, &tr, NULL) == AP_OK) {
            f->tokens_after = (long)tr.tokens;
            const char *ml[] = {"model", token_model, NULL};
            ap__metrics_observe(gw->metrics, "aperture_image_tokens", ml, (double)tr.tokens);
            if (f->tokens_before > f->tokens_after)
                ap__metrics_add(gw->metrics, "aperture_image_tokens_saved_total", ml,
                                (double)(f->tokens_before - f->tokens_after));
        }
    }
    return AP_OK;
}

/* USD per million input/output tokens for a routed model (config, else the built-in table). */
static void prices(const ap_model_conf *m, const char *token_model, double *in, double *out)
{
    *in = *out = 0;
    if (m && m->usd_per_mtok_in >= 0) {
        *in = m->usd_per_mtok_in;
        *out = m->usd_per_mtok_out >= 0 ? m->usd_per_mtok_out : 0;
        return;
    }
    ap_price p;
    if (ap_pricing_lookup(NULL, token_model, &p, NULL) == AP_OK) {
        *in = p.usd_per_mtok_input;
        *out = p.usd_per_mtok_output >= 0 ? p.usd_per_mtok_output : 0;
    }
}

/* ---- the chat context ------------------------------------------------------------------------ */

struct chat {
    struct ap__req *r;
    json_t *canon;
    const ap_provider_conf *prov;
    const ap_model_conf *mconf;
    const struct ap__provider_ops *ops;
    char upstream[128], token_model[128];
    bool stream, passthrough, began, want_usage;
    struct ap__stream *xs;
    struct ap__anth_sse *aw;
    char *errbuf;
    size_t errlen;
    char stream_err[160]; /* why the stream translator gave up */
    double t_up;
    char retry_after[32], retry_after_ms[32];
    struct ap__http_call *call; /* valid until its on_done returns */
    struct ap__usage usage;
    /* Cache. */
    bool cacheable, near, tolerant, from_cache, leader;
    long ttl_s;
    char task[64];
    ap_cache_key key;
    char img_sha[AP_CACHE_MAX_IMAGES][65];
    uint64_t img_phash[AP_CACHE_MAX_IMAGES];
    uint8_t *img_bytes[AP_CACHE_MAX_IMAGES]; /* processed images, for the content fingerprint */
    size_t img_len[AP_CACHE_MAX_IMAGES];
    size_t n_key_img;
    char *acc_text; /* a stream's content, accumulated for storing */
    size_t acc_len;
    char acc_finish[32];
    struct chat *next_waiter;
    const char *cache_hdr;
    /* Resilience: the chain of steps, the step, deployment and attempt now running. */
    ap_chain chain;
    size_t step, dep;
    int attempt;
    bool is_probe;
    double t_first;
    uint64_t rng;
    /*
     * The request with each image's URL replaced by "raw:<i>", and the images as uploaded:
     * every step (and the classifier, and the review item) prepares its own copy from these,
     * so a fallback to a provider with other size limits never fetches a URL twice.
     */
    json_t *orig;
    struct raw_img {
        uint8_t *buf;
        size_t len;
        uint32_t w, h; /* displayed size from the header (0 when not probed) */
    } * raw;
    size_t n_raw, cap_raw;
    char prepared[32]; /* the target c->canon's images were prepared for; "" = none */
    /* Routing. */
    const ap_route_rule *rule;
    bool restricted;
    char *prompt_all; /* the prompt text (for rules), or NULL */
    /* Rate limits: the slot this attempt holds, and a built call waiting for one. */
    bool lim_held;
    double lim_tokens;
    const ap_provider_conf *lim_prov;
    struct ap__http_call *pending;
    long pending_delay;
    /* Checks and review. */
    bool recorded;   /* this attempt's result went to its breaker */
    long next_delay; /* the wait before the next attempt, when it starts from a job */
    char *candidate; /* the last answer that failed the checks, for a review item */
    char why[96];    /* why the last step fell through */
    /* Header values (kept alive until the response is built). */
    char h_before[24], h_after[24], h_saved[24], h_usd_saved[32], h_cost[32], h_prep[24],
        h_route[96];
    const char *headers[32];
};

static void chat_free(struct chat *c)
{
    for (size_t i = 0; i < c->n_key_img; i++)
        free(c->img_bytes[i]);
    for (size_t i = 0; i < c->n_raw; i++)
        free(c->raw[i].buf);
    free(c->raw);
    free(c->prompt_all);
    free(c->candidate);
    if (c->pending) {
        ap__upreq_release(&c->pending->req);
        free(c->pending);
    }
    free(c->acc_text);
    json_decref(c->orig);
    json_decref(c->canon);
    if (c->xs)
        c->ops->stream_free(c->xs);
    if (c->aw)
        ap__anth_sse_free(c->aw);
    free(c->errbuf);
    free(c);
}

static void cache_store(struct chat *c, const json_t *resp);
static void flight_finish(struct chat *c, const json_t *resp, unsigned status, const char *msg);
static bool try_again(struct chat *c, ap_status rc, long status, const char *bad_answer);
static void breaker_result(struct chat *c, bool success);
static const char *answer_check(struct chat *c, const json_t *resp);
static void lim_release(struct chat *c);

/* Fill the x-aperture-* headers from what the request knows now. */
static const char *const *chat_headers(struct chat *c)
{
    struct ap__req *r = c->r;
    long before = 0, after = 0;
    for (size_t i = 0; i < r->n_img; i++) {
        if (r->img[i].tokens_before > 0)
            before += r->img[i].tokens_before;
        if (r->img[i].tokens_after > 0)
            after += r->img[i].tokens_after;
    }
    double pin, pout;
    prices(c->mconf, c->token_model, &pin, &pout);
    long saved = before > after ? before - after : 0;
    if (r->in_tokens > 0 || r->out_tokens > 0)
        r->cost_usd = (double)AP_MAX(r->in_tokens, 0) * pin / 1e6 +
                      (double)AP_MAX(r->out_tokens, 0) * pout / 1e6;
    snprintf(c->h_before, sizeof(c->h_before), "%ld", before);
    snprintf(c->h_after, sizeof(c->h_after), "%ld", after);
    snprintf(c->h_saved, sizeof(c->h_saved), "%ld", saved);
    snprintf(c->h_usd_saved, sizeof(c->h_usd_saved), "%.8f", (double)saved * pin / 1e6);
    snprintf(c->h_cost, sizeof(c->h_cost), "%.8f", r->cost_usd);
    snprintf(c->h_prep, sizeof(c->h_prep), "%.2f", r->prep_ms);
    if (r->review_id[0])
        snprintf(c->h_route, sizeof(c->h_route), "review (step %zu of %zu)", c->step + 1,
                 c->chain.n_steps);
    else if (c->chain.n_steps > 1)
        snprintf(c->h_route, sizeof(c->h_route), "%.60s (step %zu of %zu)",
                 c->chain.step[c->step].model, c->step + 1, c->chain.n_steps);
    else
        snprintf(c->h_route, sizeof(c->h_route), "%.60s", r->provider);
    const char *h[] = {"x-aperture-provider",
                       r->provider,
                       "x-aperture-model",
                       r->model,
                       "x-aperture-route",
                       c->h_route,
                       "x-aperture-image-tokens-before",
                       c->h_before,
                       "x-aperture-image-tokens-after",
                       c->h_after,
                       "x-aperture-tokens-saved",
                       c->h_saved,
                       "x-aperture-usd-saved",
                       c->h_usd_saved,
                       "x-aperture-cost-usd",
                       c->h_cost,
                       "x-aperture-preprocess-ms",
                       c->h_prep,
                       "x-aperture-cache",
                       c->cache_hdr ? c->cache_hdr : "off",
                       NULL,
                       NULL,
                       NULL,
                       NULL,
                       NULL,
                       NULL,
                       NULL};
    size_t n = sizeof(h) / sizeof(h[0]) - 7;
    if (r->rule[0]) {
        h[n++] = "x-aperture-rule";
        h[n++] = r->rule;
    }
    if (r->stage_class[0]) {
        h[n++] = "x-aperture-class";
        h[n++] = r->stage_class;
    }
    if (r->review_id[0]) {
        h[n++] = "x-aperture-review-id";
        h[n++] = r->review_id;
    }
    h[n] = NULL;
    memcpy(c->headers, h, sizeof(h));
    return c->headers;
}

static void account(struct chat *c)
{
    struct ap__req *r = c->r;
    r->in_tokens = c->usage.input_tokens;
    r->out_tokens = c->usage.output_tokens;
    chat_headers(c);
    if (r->cost_usd > 0)
        ap__metrics_add(r->gw->metrics, "aperture_cost_usd_total",
                        (const char *[]){"model", r->model, NULL}, r->cost_usd);
}

/* The /v1/analyze answer: the model's answer (parsed when it is JSON) plus the pipeline's facts. */
static json_t *native_answer(struct chat *c, const json_t *resp)
{
    struct ap__req *r = c->r;
    json_t *choice = json_array_get(json_object_get(resp, "choices"), 0);
    const char *text =
        json_string_value(json_object_get(json_object_get(choice, "message"), "content"));
    json_t *answer = NULL;
    if (text) {
        /* Models often wrap JSON in a fenced block; take the outermost object if there is one. */
        const char *a = strchr(text, '{'), *b = strrchr(text, '}');
        if (a && b && b > a)
            answer = json_loadb(a, (size_t)(b - a + 1), 0, NULL);
        if (answer == NULL)
            answer = json_string(text);
    }
    long before = 0, after = 0;
    json_t *images = json_array();
    for (size_t i = 0; i < r->n_img; i++) {
        const struct ap__img_facts *f = &r->img[i];
        before += f->tokens_before > 0 ? f->tokens_before : 0;
        after += f->tokens_after > 0 ? f->tokens_after : 0;
        json_array_append_new(
            images,
            json_pack("{s:s, s:s, s:i, s:i, s:I, s:i, s:i, s:I, s:i, s:s, s:f}", "sha256_16",
                      f->sha16, "format", f->format, "original_width", (int)f->in_w,
                      "original_height", (int)f->in_h, "original_bytes", (json_int_t)f->in_bytes,
                      "processed_width", (int)f->out_w, "processed_height", (int)f->out_h,
                      "processed_bytes", (json_int_t)f->out_bytes, "orientation", f->orientation,
                      "metadata_removed", f->meta_removed, "preprocess_ms", f->prep_ms));
    }
    return json_pack(
        "{s:s, s:s?, s:s, s:s, s:o?, s:s?, s:{s:I, s:I}, s:f, s:{s:I, s:I, s:I}, "
        "s:o, s:{s:f, s:f, s:f}}",
        "id", r->id, "task", r->task_header, "model", r->model, "provider", r->provider, "answer",
        answer, "finish_reason", json_string_value(json_object_get(choice, "finish_reason")),
        "usage", "input_tokens", (json_int_t)AP_MAX(r->in_tokens, 0), "output_tokens",
        (json_int_t)AP_MAX(r->out_tokens, 0), "cost_usd", r->cost_usd, "image_tokens", "before",
        (json_int_t)before, "after", (json_int_t)after, "saved",
        (json_int_t)(before > after ? before - after : 0), "images", images, "latency_ms",
        "preprocess", r->prep_ms, "upstream", r->upstream_ms, "total", ap__now_ms() - r->t_start);
}

/* A canonical response to the client's dialect, with the accounting headers. */
static void reply_canon(struct chat *c, json_t *resp)
{
    struct ap__req *r = c->r;
    json_t *usage = c->from_cache ? NULL : json_object_get(resp, "usage");
    if (usage) {
        json_t *pt = json_object_get(usage, "prompt_tokens");
        json_t *ct = json_object_get(usage, "completion_tokens");
        if (json_is_integer(pt))
            c->usage.input_tokens = (long)json_integer_value(pt);
        if (json_is_integer(ct))
            c->usage.output_tokens = (long)json_integer_value(ct);
    }
    account(c);
    if (r->dialect == AP__DIALECT_ANTHROPIC) {
        json_t *a = ap__canon_resp_to_anthropic(resp);
        json_decref(resp);
        resp = a;
    } else if (r->dialect == AP__DIALECT_NATIVE) {
        json_t *a = native_answer(c, resp);
        json_decref(resp);
        resp = a;
    }
    if (r->review_id[0]) {
        /* Stored for a person to answer: 202, and the id to ask about it later. */
        json_object_set_new(resp, "needs_review", json_true());
        json_object_set_new(resp, "review_id", json_string(r->review_id));
    }
    if (r->stage_class[0] && r->dialect == AP__DIALECT_NATIVE)
        json_object_set_new(resp, "class", json_string(r->stage_class));
    ap__req_respond_json(r, r->review_id[0] ? 202 : 200, resp, c->headers);
}

/* Upstream failure -> the client's dialect: 4xx the client caused keeps its status; the rest is
 * 502 (bad gateway) or 504 (timeout), naming the provider. */
static void reply_upstream_error(struct chat *c, ap_status rc, long status, const char *msg)
{
    struct ap__req *r = c->r;
    const char *prov = c->prov->name;
    if (rc == AP_ETIMEOUT) {
        ap__req_error(r, 504, r->dialect == AP__DIALECT_ANTHROPIC ? "api_error" : "timeout", NULL,
                      "%s: upstream timed out: %s", prov, msg);
    } else if (rc != AP_OK && rc != AP_EUPSTREAM) {
        ap__req_error(r, 502, r->dialect == AP__DIALECT_ANTHROPIC ? "api_error" : "upstream_error",
                      NULL, "%s: upstream unreachable: %s", prov, msg);
    } else if (status == 400 || status == 404 || status == 413 || status == 422) {
        ap__req_error(r, (unsigned)status, "invalid_request_error", NULL, "%s", msg);
    } else if (status == 429) {
        snprintf(r->retry_after, sizeof(r->retry_after), "%s", c->retry_after);
        ap__req_error(r, 429,
                      r->dialect == AP__DIALECT_ANTHROPIC ? "rate_limit_error"
                                                          : "rate_limit_exceeded",
                      NULL, "%s", msg);
    } else {
        ap__req_error(r, 502, r->dialect == AP__DIALECT_ANTHROPIC ? "api_error" : "upstream_error",
                      NULL, "%s (upstream status %ld)", msg, status);
    }
}

/* ---- streaming ------------------------------------------------------------------------------- */

/* Keep a stream's text and finish reason, so the whole answer can be cached when it ends. */
static void accumulate(struct chat *c, const json_t *chunk)
{
    if (!c->cacheable)
        return;
    json_t *ch0 = json_array_get(json_object_get(chunk, "choices"), 0);
    const char *t = json_string_value(json_object_get(json_object_get(ch0, "delta"), "content"));
    const char *fr = json_string_value(json_object_get(ch0, "finish_reason"));
    if (fr)
        snprintf(c->acc_finish, sizeof(c->acc_finish), "%s", fr);
    if (t && *t) {
        size_t n = strlen(t);
        char *nb = realloc(c->acc_text, c->acc_len + n + 1);
        if (nb == NULL)
            return;
        memcpy(nb + c->acc_len, t, n + 1);
        c->acc_text = nb;
        c->acc_len += n;
    }
}

static void emit_chunk(void *ctx, const json_t *chunk)
{
    struct chat *c = ctx;
    struct ap__req *r = c->r;
    json_t *u = json_object_get(chunk, "usage");
    if (json_is_object(u)) {
        json_t *pt = json_object_get(u, "prompt_tokens"),
               *ct = json_object_get(u, "completion_tokens");
        if (json_is_integer(pt))
            c->usage.input_tokens = (long)json_integer_value(pt);
        if (json_is_integer(ct))
            c->usage.output_tokens = (long)json_integer_value(ct);
    }
    accumulate(c, chunk);
    if (c->passthrough)
        return; /* the raw bytes were already relayed */
    /* Providers always report usage in a last chunk (choices: []); an OpenAI client sees it
     * only when it asked with stream_options.include_usage, as with OpenAI itself. */
    json_t *ch = json_object_get(chunk, "choices");
    if (r->dialect == AP__DIALECT_OPENAI && !c->want_usage && json_is_array(ch) &&
        json_array_size(ch) == 0)
        return;
    if (r->dialect == AP__DIALECT_ANTHROPIC) {
        char *s = NULL;
        size_t n = 0;
        if (ap__anth_sse_chunk(c->aw, chunk, &s, &n) == AP_OK && s) {
            ap__req_stream_write(r, s, n);
        }
        free(s);
        return;
    }
    char *s = json_dumps(chunk, JSON_COMPACT);
    if (s) {
        ap__req_stream_write(r, "data: ", 6);
        ap__req_stream_write(r, s, strlen(s));
        ap__req_stream_write(r, "\n\n", 2);
        free(s);
    }
}

static bool on_stream_data(void *ctx, long status, const char *data, size_t len)
{
    struct chat *c = ctx;
    if (status < 200 || status > 299) {
        /* An error body: keep it (capped) for the error answer. */
        size_t keep = AP_MIN(len, (size_t)65536 - AP_MIN(c->errlen, (size_t)65536));
        char *nb = realloc(c->errbuf, c->errlen + keep + 1);
        if (nb) {
            c->errbuf = nb;
            memcpy(c->errbuf + c->errlen, data, keep);
            c->errlen += keep;
            c->errbuf[c->errlen] = '\0';
        }
        return true;
    }
    if (!c->began) {
        c->began = true;
        ap__req_stream_begin(c->r, chat_headers(c));
    }
    if (c->passthrough)
        ap__req_stream_write(c->r, data, len);
    bool done = false;
    ap_error err = {0};
    if (c->ops->stream_feed(c->xs, data, len, &done, &c->usage, &err) != AP_OK) {
        /* Keep the translator's reason (often the upstream's own in-band error): curl will
         * only say that the write callback refused the data. */
        snprintf(c->stream_err, sizeof(c->stream_err), "%.150s", err.msg);
        return false;
    }
    return true;
}

static void on_stream_done(void *ctx, ap_status rc, long status, const char *body, size_t len,
                           const char *errmsg)
{
    struct chat *c = ctx;
    struct ap__req *r = c->r;
    (void)body, (void)len;
    lim_release(c);
    snprintf(c->retry_after, sizeof(c->retry_after), "%s", c->call->retry_after);
    snprintf(c->retry_after_ms, sizeof(c->retry_after_ms), "%s", c->call->retry_after_ms);
    r->upstream_ms = ap__now_ms() - c->t_up;
    ap__metrics_observe(r->gw->metrics, "aperture_upstream_duration_seconds",
                        (const char *[]){"model", r->model, NULL}, r->upstream_ms / 1e3);
    if (!c->began) {
        /* Nothing reached the client yet: this attempt may be retried or fall through. */
        if (try_again(c, rc == AP_OK ? AP_EUPSTREAM : rc, status, NULL))
            return;
        if (rc == AP_OK) {
            ap_error err = {0};
            json_t *resp = NULL;
            struct ap__usage u;
            ap_status prc = c->ops->parse(c->prov, status, c->errbuf ? c->errbuf : "", c->errlen,
                                          &resp, &u, &err);
            json_decref(resp);
            reply_upstream_error(c, prc == AP_OK ? AP_EUPSTREAM : prc, status,
                                 err.msg[0] ? err.msg : "upstream error");
        } else {
            reply_upstream_error(c, rc, status, errmsg);
        }
        flight_finish(c, NULL, r->status ? r->status : 502, r->error);
        goto out;
    }
    /* Tell the translator the body ended: a stream cut before its end marker is an error. */
    ap_error ferr = {0};
    bool done = false;
    if (rc == AP_OK && c->ops->stream_feed(c->xs, NULL, 0, &done, &c->usage, &ferr) != AP_OK) {
        rc = AP_ENETWORK;
        errmsg = ferr.msg;
    }
    account(c);
    breaker_result(c, rc == AP_OK);
    if (rc != AP_OK)
        snprintf(r->error, sizeof(r->error), "%.40s: stream ended early: %.180s", c->prov->name,
                 c->stream_err[0] ? c->stream_err : errmsg);
    if (rc == AP_OK && c->cacheable) {
        /* The whole answer, rebuilt from the stream, for the cache and any waiters. */
        json_t *whole =
            json_pack("{s:s, s:s, s:s, s:[{s:i, s:{s:s, s:s}, s:s}], s:{s:I, s:I}}", "id", r->id,
                      "object", "chat.completion", "model", r->model, "choices", "index", 0,
                      "message", "role", "assistant", "content", c->acc_text ? c->acc_text : "",
                      "finish_reason", c->acc_finish[0] ? c->acc_finish : "stop", "usage",
                      "prompt_tokens", (json_int_t)AP_MAX(c->usage.input_tokens, 0),
                      "completion_tokens", (json_int_t)AP_MAX(c->usage.output_tokens, 0));
        if (whole) {
            cache_store(c, whole);
            flight_finish(c, whole, 200, NULL);
        }
        json_decref(whole);
    }
    flight_finish(c, NULL, 502, r->error[0] ? r->error : "upstream stream failed");
    if (r->dialect == AP__DIALECT_ANTHROPIC) {
        char *s = NULL;
        size_t n = 0;
        ap_status wrc = rc == AP_OK ? ap__anth_sse_chunk(c->aw, NULL, &s, &n)
                                    : ap__anth_sse_error(c->aw, "api_error", r->error, &s, &n);
        if (wrc == AP_OK && s)
            ap__req_stream_write(r, s, n);
        free(s);
    } else if (!c->passthrough && rc == AP_OK) {
        ap__req_stream_write(r, "data: [DONE]\n\n", 14);
    } else if (!c->passthrough) {
        /* Say why before cutting the stream, as OpenAI does with an in-band error event: the
         * SDKs raise it as an APIError instead of a bare socket error. */
        json_t *e = json_pack("{s:{s:s, s:s, s:n, s:n}}", "error", "message", r->error, "type",
                              "upstream_error", "param", "code");
        char *es = e ? json_dumps(e, JSON_COMPACT) : NULL;
        json_decref(e);
        if (es) {
            ap__req_stream_write(r, "data: ", 6);
            ap__req_stream_write(r, es, strlen(es));
            ap__req_stream_write(r, "\n\n", 2);
            free(es);
        }
    }
    ap__req_stream_end(r, rc != AP_OK);
out:
    ap__req_unref(r);
    chat_free(c);
}

static void on_done(void *ctx, ap_status rc, long status, const char *body, size_t len,
                    const char *errmsg)
{
    struct chat *c = ctx;
    struct ap__req *r = c->r;
    /* The call is freed after this returns; keep what the answer needs from it. */
    if (rc != AP_OK)
        lim_release(c);
    snprintf(c->retry_after, sizeof(c->retry_after), "%s", c->call->retry_after);
    snprintf(c->retry_after_ms, sizeof(c->retry_after_ms), "%s", c->call->retry_after_ms);
    r->upstream_ms = ap__now_ms() - c->t_up;
    ap__metrics_observe(r->gw->metrics, "aperture_upstream_duration_seconds",
                        (const char *[]){"model", r->model, NULL}, r->upstream_ms / 1e3);
    if (rc != AP_OK) {
        if (try_again(c, rc, status, NULL))
            return;
        reply_upstream_error(c, rc, status, errmsg);
    } else {
        ap_error err = {0};
        json_t *resp = NULL;
        ap_status prc =
            c->ops->parse(c->prov, status, body ? body : "", len, &resp, &c->usage, &err);
        lim_release(c); /* after parse: with the usage it reported */
        const char *bad = prc == AP_OK ? answer_check(c, resp) : NULL;
        if (bad) {
            free(c->candidate); /* the best answer so far, for a review item */
            c->candidate = json_dumps(resp, JSON_COMPACT);
        }
        /* A 2xx body that does not parse is a broken answer, not the request's fault: retried
         * and counted against the deployment like a connection that dropped mid-answer. */
        ap_status arc = prc == AP_OK ? AP_EUPSTREAM : prc == AP_EDECODE ? AP_ENETWORK : prc;
        if (prc != AP_OK || bad) {
            if (try_again(c, arc, status, bad)) {
                json_decref(resp);
                return;
            }
        }
        if (prc != AP_OK) {
            reply_upstream_error(c, prc == AP_EUPSTREAM ? AP_EUPSTREAM : AP_ENETWORK, status,
                                 err.msg);
        } else {
            /* A failing answer that no later step could replace is still the best there is:
             * it is delivered, but never cached. */
            breaker_result(c, true);
            account(c);
            if (bad == NULL)
                cache_store(c, resp);
            flight_finish(c, resp, 200, NULL);
            reply_canon(c, resp);
        }
    }
    flight_finish(c, NULL, r->status ? r->status : 502, r->error); /* no-op once finished */
    ap__req_unref(r);
    chat_free(c);
}

/* ---- the local provider, in-process ---------------------------------------------------------- */

/* One Tesseract handle per worker thread, made on first use and freed when the thread exits:
 * starting Tesseract costs ~0.1 s, and a handle must not be shared between threads. */
static pthread_key_t ocr_key;
static pthread_once_t ocr_once = PTHREAD_ONCE_INIT;

static void ocr_destroy(void *p)
{
    ap__ocr_free(p);
}

static void ocr_key_init(void)
{
    pthread_key_create(&ocr_key, ocr_destroy);
}

static struct ap__ocr *thread_ocr(ap_error *err)
{
    pthread_once(&ocr_once, ocr_key_init);
    struct ap__ocr *o = pthread_getspecific(ocr_key);
    if (o == NULL && ap__ocr_new("eng", &o, err) == AP_OK)
        pthread_setspecific(ocr_key, o);
    return o;
}

/* Send a complete canonical answer as a stream (local provider, cache hits, coalesced waiters):
 * role + content, finish, usage (when asked), end. */
static void stream_canon(struct chat *c, json_t *resp)
{
    struct ap__req *r = c->r;
    const char *fr = json_string_value(
        json_object_get(json_array_get(json_object_get(resp, "choices"), 0), "finish_reason"));
    json_t *msg = json_object_get(json_array_get(json_object_get(resp, "choices"), 0), "message");
    const char *text = json_string_value(json_object_get(msg, "content"));
    const char *id = json_string_value(json_object_get(resp, "id"));
    json_t *chunks[3];
    chunks[0] =
        json_pack("{s:s, s:s, s:s, s:[{s:i, s:{s:s, s:s}, s:n}]}", "id", id ? id : r->id, "object",
                  "chat.completion.chunk", "model", r->model, "choices", "index", 0, "delta",
                  "role", "assistant", "content", text ? text : "", "finish_reason");
    chunks[1] = json_pack("{s:s, s:s, s:s, s:[{s:i, s:{}, s:s}]}", "id", id ? id : r->id, "object",
                          "chat.completion.chunk", "model", r->model, "choices", "index", 0,
                          "delta", "finish_reason", fr ? fr : "stop");
    chunks[2] = json_pack("{s:s, s:s, s:s, s:[], s:{s:i, s:i, s:i}}", "id", id ? id : r->id,
                          "object", "chat.completion.chunk", "model", r->model, "choices", "usage",
                          "prompt_tokens", 0, "completion_tokens", 0, "total_tokens", 0);
    if (r->dialect == AP__DIALECT_ANTHROPIC && c->aw == NULL)
        c->aw = ap__anth_sse_new(r->model);
    bool was_cacheable = c->cacheable;
    c->cacheable = false; /* not accumulated again */
    ap__req_stream_begin(r, chat_headers(c));
    for (int i = 0; i < 3; i++) {
        if (chunks[i])
            emit_chunk(c, chunks[i]);
        json_decref(chunks[i]);
    }
    if (r->dialect == AP__DIALECT_ANTHROPIC) {
        char *s = NULL;
        size_t n = 0;
        if (ap__anth_sse_chunk(c->aw, NULL, &s, &n) == AP_OK && s)
            ap__req_stream_write(r, s, n);
        free(s);
    } else {
        ap__req_stream_write(r, "data: [DONE]\n\n", 14);
    }
    ap__req_stream_end(r, false);
    c->cacheable = was_cacheable;
    json_decref(resp);
}

/* Answer with a complete canonical response in the form the client asked for. */
static void deliver(struct chat *c, json_t *resp)
{
    /* A coalesced waiter shares its leader's review item. */
    const char *rid = json_string_value(json_object_get(resp, "review_id"));
    if (rid && c->r->review_id[0] == '\0')
        snprintf(c->r->review_id, sizeof(c->r->review_id), "%s", rid);
    if (c->stream)
        stream_canon(c, resp);
    else
        reply_canon(c, resp);
}

/* ---- cache ---------------------------------------------------------------------------------- */

/*
 * Task policy: TTL, whether near-duplicate images may share an answer at all (near), and
 * whether on pHash alone (tolerant) or only with equal OCR text. The generic "chat" task (the
 * proxy endpoints' default) matches exactly only: its answers are about this very image, and a
 * content fingerprint would cost an OCR pass per stored answer.
 */
static void task_policy(const char *task, bool has_schema, long *ttl, bool *near, bool *tolerant)
{
    static const struct {
        const char *task;
        long ttl;
        bool near, tolerant;
    } p[] = {{"invoice_extraction", 7 * 86400, true, false},
             {"describe", 30 * 86400, true, true},
             {"classify", 14 * 86400, true, true},
             {"document_qa", 3600, true, false},
             {"chat", 86400, false, false}};
    *ttl = 86400;
    *near = false;
    *tolerant = false;
    for (size_t i = 0; i < sizeof(p) / sizeof(p[0]); i++)
        if (strcmp(p[i].task, task) == 0) {
            *ttl = p[i].ttl;
            *near = p[i].near;
            *tolerant = p[i].tolerant;
        }
    if (has_schema) { /* an answer with a schema is an extraction, whatever the task says */
        *near = true;
        *tolerant = false;
    }
}

/* The exact key: task, model, prompt version, preprocessing settings, the request with each
 * image replaced by its processed SHA-256 (never a URL or the raw upload), and the images. */
static void cache_key(struct chat *c, const char *target)
{
    struct ap__req *r = c->r;
    const ap_task_conf *tc = ap_config_task(r->gw->cfg, c->task);
    json_t *norm = json_deep_copy(c->canon);
    json_object_del(norm, "stream");
    json_object_del(norm, "stream_options");
    size_t mi, pi, k = 0;
    json_t *m, *p;
    json_array_foreach(json_object_get(norm, "messages"), mi, m)
    {
        json_array_foreach(json_object_get(m, "content"), pi, p)
        {
            const char *type = json_string_value(json_object_get(p, "type"));
            /* A placeholder, not the image's hash: this JSON is part of the "shape" (the
             * near-match group), and the images enter the key by ap_cache_key_image(). */
            if (type && strcmp(type, "image_url") == 0 && k < c->n_key_img) {
                k++;
                json_object_set_new(json_object_get(p, "image_url"), "url", json_string("image"));
            }
        }
    }
    char *req = json_dumps(norm, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(norm);
    const ap_prep_opts *po = &r->gw->cfg->prep;
    char prep[96];
    snprintf(prep, sizeof(prep), "%s;q%d;e%d;bg%02x%02x%02x", target, po->quality,
             (int)po->encoding, po->background[0], po->background[1], po->background[2]);
    const char *pv = tc && tc->prompt_version ? tc->prompt_version : "builtin-1";
    ap_cache_key_builder *b = ap_cache_key_begin();
    ap_cache_key_field(b, "task", c->task, strlen(c->task));
    ap_cache_key_field(b, "model", r->model, strlen(r->model));
    ap_cache_key_field(b, "prompt_version", pv, strlen(pv));
    ap_cache_key_field(b, "prep", prep, strlen(prep));
    ap_cache_key_field(b, "request", req ? req : "", req ? strlen(req) : 0);
    free(req);
    for (size_t i = 0; i < c->n_key_img; i++) {
        uint8_t sha[32];
        for (int j = 0; j < 32; j++) {
            unsigned v = 0;
            sscanf(c->img_sha[i] + 2 * j, "%2x", &v);
            sha[j] = (uint8_t)v;
        }
        ap_cache_key_image(b, sha, c->img_phash[i]);
    }
    ap_error err = {0};
    if (ap_cache_key_end(b, &c->key, &err) != AP_OK)
        c->cacheable = false;
}

/* The OCR-text fingerprint of the request's images (the content check for extraction). */
static bool content_fingerprint(const uint8_t *const *imgs, const size_t *lens, size_t n,
                                ap_cache_key *key)
{
    ap_error err = {0};
    struct ap__ocr *ocr = thread_ocr(&err);
    if (ocr == NULL)
        return false;
    char *all = NULL;
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        struct ap__ocr_page page = {0};
        if (ap__ocr_image(ocr, imgs[i], lens[i], &page, &err) != AP_OK) {
            free(all);
            return false;
        }
        char *nb = realloc(all, len + page.text_len + 2);
        if (nb) {
            all = nb;
            memcpy(all + len, page.text, page.text_len);
            len += page.text_len;
            all[len++] = '\f';
            all[len] = '\0';
        }
        ap__ocr_page_release(&page);
    }
    ap_status rc = ap_cache_key_content(key, all ? all : "", len, &err);
    free(all);
    return rc == AP_OK && key->has_content;
}

struct ap__flight {
    uint8_t key[32];
    struct chat *waiters;
    struct ap__flight *next;
};

/* Join the flight for c's key: true when another request is already asking upstream (c now
 * waits for its answer), false when c leads. */
static bool flight_join(struct chat *c)
{
    struct ap_gateway *gw = c->r->gw;
    pthread_mutex_lock(&gw->flight_mu);
    for (struct ap__flight *f = gw->flights; f; f = f->next)
        if (memcmp(f->key, c->key.exact, 32) == 0) {
            c->next_waiter = f->waiters;
            f->waiters = c;
            pthread_mutex_unlock(&gw->flight_mu);
            return true;
        }
    struct ap__flight *f = ap__xcalloc(1, sizeof(*f));
    memcpy(f->key, c->key.exact, 32);
    f->next = gw->flights;
    gw->flights = f;
    c->leader = true;
    pthread_mutex_unlock(&gw->flight_mu);
    return false;
}

static void deliver(struct chat *c, json_t *resp);

/* Whether other requests wait on c's answer. */
static bool flight_has_waiters(struct chat *c)
{
    if (!c->leader)
        return false;
    bool any = false;
    struct ap_gateway *gw = c->r->gw;
    pthread_mutex_lock(&gw->flight_mu);
    for (struct ap__flight *f = gw->flights; f; f = f->next)
        if (memcmp(f->key, c->key.exact, 32) == 0)
            any = f->waiters != NULL;
    pthread_mutex_unlock(&gw->flight_mu);
    return any;
}

/* The leader is done: hand its answer (or its failure) to every waiter. */
static void flight_finish(struct chat *c, const json_t *resp, unsigned status, const char *msg)
{
    if (!c->leader)
        return;
    c->leader = false;
    struct ap_gateway *gw = c->r->gw;
    struct chat *w = NULL;
    pthread_mutex_lock(&gw->flight_mu);
    for (struct ap__flight **pp = &gw->flights; *pp; pp = &(*pp)->next)
        if (memcmp((*pp)->key, c->key.exact, 32) == 0) {
            struct ap__flight *f = *pp;
            *pp = f->next;
            w = f->waiters;
            free(f);
            break;
        }
    pthread_mutex_unlock(&gw->flight_mu);
    while (w) {
        struct chat *next = w->next_waiter;
        struct ap__req *wr = w->r;
        wr->cache_result = "coalesced";
        w->cache_hdr = "coalesced";
        if (resp) {
            w->from_cache = true;
            deliver(w, json_deep_copy(resp));
        } else {
            ap__req_error(wr, status ? status : 502, "upstream_error", NULL, "%s",
                          msg ? msg : "upstream failed");
        }
        ap__req_unref(wr);
        chat_free(w);
        w = next;
    }
}

struct store_job {
    struct ap_gateway *gw;
    ap_cache_key key;
    char task[64];
    long ttl;
    bool need_content;
    char *value, *meta;
    uint8_t *imgs[AP_CACHE_MAX_IMAGES];
    size_t lens[AP_CACHE_MAX_IMAGES], n;
};

static void store_run(void *arg)
{
    struct store_job *j = arg;
    ap_error err = {0};
    /* Without a fingerprint (no text found, OCR unavailable) the entry is still stored: it
     * can then only match exactly, never as a near-duplicate of an extraction task. */
    if (j->need_content &&
        !content_fingerprint((const uint8_t *const *)j->imgs, j->lens, j->n, &j->key))
        j->key.has_content = false;
    ap_status rc = ap_cache_put(j->gw->cache, &j->key, j->task, j->value, strlen(j->value), j->meta,
                                j->meta ? strlen(j->meta) : 0, j->ttl, &err);
    ap__cache_backend_state(j->gw, rc != AP_ENETWORK, err.msg);
    for (size_t i = 0; i < j->n; i++)
        free(j->imgs[i]);
    free(j->value);
    free(j->meta);
    free(j);
}

/* Store a good answer, off the request's path (on the worker pool): errors, refusals and
 * truncated answers are not cached. */
static void cache_store(struct chat *c, const json_t *resp)
{
    struct ap__req *r = c->r;
    if (!c->cacheable || c->from_cache || r->gw->cache == NULL)
        return;
    const char *fr = json_string_value(
        json_object_get(json_array_get(json_object_get(resp, "choices"), 0), "finish_reason"));
    if (fr == NULL || strcmp(fr, "stop") != 0)
        return;
    struct store_job *j = ap__xcalloc(1, sizeof(*j));
    j->gw = r->gw;
    j->key = c->key;
    snprintf(j->task, sizeof(j->task), "%s", c->task);
    j->ttl = c->ttl_s;
    j->value = json_dumps(resp, JSON_COMPACT);
    json_t *meta = json_pack("{s:s, s:s, s:f}", "model", r->model, "provider", r->provider,
                             "cost_usd", r->cost_usd);
    j->meta = meta ? json_dumps(meta, JSON_COMPACT) : NULL;
    json_decref(meta);
    /* Extraction-like tasks may only match near-duplicates with the same text: keep the
     * fingerprint with the entry (computed in the job, not on the request's path). */
    j->need_content = c->near && !c->tolerant && c->n_key_img > 0;
    if (j->need_content)
        for (size_t i = 0; i < c->n_key_img; i++) {
            j->imgs[i] = c->img_bytes[i];
            j->lens[i] = c->img_len[i];
            c->img_bytes[i] = NULL;
            j->n++;
        }
    if (j->value == NULL || ap__pool_submit(r->gw->pool, store_run, j) != 0) {
        for (size_t i = 0; i < j->n; i++)
            free(j->imgs[i]);
        free(j->value);
        free(j->meta);
        free(j);
    }
}

/*
 * Look the request up. Returns true when it was answered from the cache. A near candidate for
 * an extraction-like task is only accepted after the content check (OCR text fingerprint).
 */
static bool cache_lookup(struct chat *c)
{
    struct ap__req *r = c->r;
    struct ap_gateway *gw = r->gw;
    ap_cache_hit hit = {0};
    ap_error err = {0};
    int threshold = c->near ? gw->near_threshold : -1;
    ap_status rc = ap_cache_get(gw->cache, &c->key, c->task, threshold, true, &hit, &err);
    if (rc != AP_OK) {
        ap__cache_backend_state(gw, false, err.msg);
        c->cacheable = false; /* serve without cache */
        r->cache_result = "off";
        c->cache_hdr = "off";
        return false;
    }
    if (hit.kind == AP_CACHE_HIT_NEAR && !c->tolerant) {
        /* A pHash neighbour exists; it may be the same template with other numbers. */
        ap_cache_hit_release(&hit);
        if (!content_fingerprint((const uint8_t *const *)c->img_bytes, c->img_len, c->n_key_img,
                                 &c->key))
            return false;
        rc = ap_cache_get(gw->cache, &c->key, c->task, gw->near_threshold, false, &hit, &err);
        if (rc != AP_OK)
            return false;
    }
    const char *lab = hit.kind == AP_CACHE_HIT_EXACT  ? "hit_exact"
                      : hit.kind == AP_CACHE_HIT_NEAR ? "hit_near"
                                                      : "miss";
    ap__metrics_add(gw->metrics, "aperture_cache_requests_total",
                    (const char *[]){"result", lab, NULL}, 1);
    if (hit.kind == AP_CACHE_MISS) {
        ap_cache_hit_release(&hit);
        return false;
    }
    json_t *resp = json_loadb(hit.value, hit.len, 0, NULL);
    json_t *meta = hit.meta ? json_loadb(hit.meta, hit.meta_len, 0, NULL) : NULL;
    double saved = json_real_value(json_object_get(meta, "cost_usd"));
    json_decref(meta);
    if (resp == NULL) {
        ap_cache_hit_release(&hit);
        return false;
    }
    if (saved > 0)
        ap__metrics_add(gw->metrics, "aperture_cache_saved_usd_total",
                        (const char *[]){"model", r->model, NULL}, saved);
    r->cache_result = hit.kind == AP_CACHE_HIT_EXACT ? "hit-exact" : "hit-near";
    r->cache_distance = hit.distance;
    c->cache_hdr = r->cache_result;
    c->from_cache = true;
    snprintf(r->route_method, sizeof(r->route_method), "cache");
    ap_cache_hit_release(&hit);
    deliver(c, resp);
    return true;
}

/* ---- resilience: steps, deployments, retries, breakers, limits, fallbacks -------------------- */

/* Whether any provider has a tokens-per-minute budget (requests then need a token estimate). */
static bool lim_any(const ap_config *cfg)
{
    for (size_t i = 0; i < cfg->n_providers; i++)
        if (cfg->providers[i].tpm > 0)
            return true;
    return false;
}

static bool has_breaker(const ap_provider_conf *p)
{
    return p != NULL && p->type != AP_PROVIDER_LOCAL;
}

/* The running attempt's breaker key ("" for review). */
static const char *dep_key(const struct chat *c)
{
    const ap_chain_step *st = &c->chain.step[c->step];
    return st->n_dep ? st->dep[c->dep].key : st->deployment;
}

/* Point c at deployment k of the current step (attempt count kept: a retry may move). */
static void use_dep(struct chat *c, size_t k)
{
    const ap_chain_step *st = &c->chain.step[c->step];
    const ap_chain_deployment *d = st->n_dep ? &st->dep[k] : NULL;
    c->dep = k;
    c->mconf = st->model_conf;
    c->prov = d ? d->provider : st->provider;
    const char *up = d ? d->upstream : st->upstream;
    snprintf(c->upstream, sizeof(c->upstream), "%s", up ? up : st->model);
    snprintf(c->token_model, sizeof(c->token_model), "%s",
             c->mconf && c->mconf->token_model ? c->mconf->token_model : c->upstream);
    if (c->prov)
        snprintf(c->r->provider, sizeof(c->r->provider), "%s", c->prov->name);
}

/* Point c at chain step i, deployment k, first attempt. */
static void use_step(struct chat *c, size_t i, size_t k)
{
    c->step = i;
    c->attempt = 1;
    use_dep(c, k);
}

/*
 * Pick a deployment of step st whose breaker lets a request through, by weight; *k and
 * *probe on success. A deployment refused by its breaker is left out and the draw repeated,
 * so at most one probe slot is taken, and only by the deployment that is then used.
 */
static bool pick_in(struct chat *c, const ap_chain_step *st, size_t *k, bool *probe)
{
    ap_breaker_set *b = c->r->gw->breakers;
    int64_t now = (int64_t)ap__now_ms();
    *probe = false;
    *k = 0;
    if (st->review)
        return true;
    if (st->n_dep == 0)
        return !has_breaker(st->provider) || ap_breaker_allow(b, st->deployment, now, probe);
    bool ok[AP_MAX_DEPLOYMENTS];
    for (size_t j = 0; j < AP_MAX_DEPLOYMENTS; j++)
        ok[j] = j < st->n_dep;
    for (size_t tries = 0; tries < st->n_dep; tries++) {
        int j = st->n_dep == 1 ? 0 : ap_router_pick(st, ok, &c->rng);
        if (j < 0 || !ok[j])
            return false;
        if (!has_breaker(st->dep[j].provider) || ap_breaker_allow(b, st->dep[j].key, now, probe)) {
            *k = (size_t)j;
            return true;
        }
        ok[j] = false;
    }
    return false;
}

static void breaker_metric(struct chat *c, const char *dep)
{
    struct ap_gateway *gw = c->r->gw;
    ap__metrics_set(gw->metrics, "aperture_breaker_state",
                    (const char *[]){"deployment", dep, NULL},
                    (double)ap_breaker_state_get(gw->breakers, dep));
}

/* Record this attempt's outcome with its deployment's breaker: once per allowed call. */
static void breaker_result(struct chat *c, bool success)
{
    const ap_chain_step *st = &c->chain.step[c->step];
    if (c->recorded || st->review || !has_breaker(c->prov))
        return;
    c->recorded = true;
    ap_breaker_record(c->r->gw->breakers, dep_key(c), (int64_t)ap__now_ms(), success, c->is_probe);
    breaker_metric(c, dep_key(c));
}

static void fb_metric(struct chat *c, const char *from, const char *to, const char *reason)
{
    ap__metrics_add(c->r->gw->metrics, "aperture_fallbacks_total",
                    (const char *[]){"from", from, "to", to, "reason", reason, NULL}, 1);
}

enum first_step { STEP_OK, STEP_REVIEW, STEP_NONE };

/* The first step with a deployment whose breaker lets it through; open ones are skipped at once. */
static enum first_step first_healthy_step(struct chat *c)
{
    for (size_t i = 0; i < c->chain.n_steps; i++) {
        const ap_chain_step *st = &c->chain.step[i];
        if (st->review) {
            if (i > 0)
                fb_metric(c, c->chain.step[0].model, AP_REVIEW_STEP, "breaker_open");
            c->step = i;
            return STEP_REVIEW;
        }
        size_t k;
        if (pick_in(c, st, &k, &c->is_probe)) {
            if (i > 0)
                fb_metric(c, c->chain.step[0].model, st->model, "breaker_open");
            use_step(c, i, k);
            return STEP_OK;
        }
    }
    return STEP_NONE;
}

/* Every step is open: 503 at once, with the shortest cooldown as Retry-After. */
static void no_healthy_step(struct chat *c)
{
    struct ap__req *r = c->r;
    long wait = 0;
    int64_t now = (int64_t)ap__now_ms();
    for (size_t i = 0; i < c->chain.n_steps; i++) {
        const ap_chain_step *st = &c->chain.step[i];
        for (size_t j = 0; j < AP_MAX(st->n_dep, (size_t)1); j++) {
            const char *key = st->n_dep ? st->dep[j].key : st->deployment;
            if (st->review || key[0] == '\0')
                continue;
            long w = ap_breaker_wait_ms(r->gw->breakers, key, now);
            if (w > 0 && (wait == 0 || w < wait))
                wait = w;
        }
    }
    snprintf(r->retry_after, sizeof(r->retry_after), "%ld", wait > 0 ? (wait + 999) / 1000 : 1);
    ap__req_error(r, 503, r->dialect == AP__DIALECT_ANTHROPIC ? "overloaded_error" : "unavailable",
                  NULL, "no healthy provider for \"%s\": every step of its chain is failing",
                  r->model);
    flight_finish(c, NULL, 503, r->error);
}

/*
 * A 2xx answer that still does not do: a refusal; not JSON where JSON was asked (response_format,
 * or the task's json check); a required field missing or null; or a JSON answer whose every
 * field is null (the step found nothing; a later one may).
 */
static const char *answer_check(struct chat *c, const json_t *resp)
{
    json_t *ch0 = json_array_get(json_object_get(resp, "choices"), 0);
    const char *fr = json_string_value(json_object_get(ch0, "finish_reason"));
    if (fr && strcmp(fr, "content_filter") == 0)
        return "refusal";
    /* OpenAI's structured-output refusal: content null, the reason in message.refusal. */
    const char *refusal =
        json_string_value(json_object_get(json_object_get(ch0, "message"), "refusal"));
    if (refusal && *refusal)
        return "refusal";
    const ap_task_conf *tc = ap_config_task(c->r->gw->cfg, c->task);
    json_t *rf = json_object_get(c->canon, "response_format");
    const char *type = json_string_value(json_object_get(rf, "type"));
    bool want_json =
        (type && (strcmp(type, "json_object") == 0 || strcmp(type, "json_schema") == 0)) ||
        (tc && (tc->json || tc->n_required > 0));
    if (!want_json)
        return NULL;
    const char *text =
        json_string_value(json_object_get(json_object_get(ch0, "message"), "content"));
    const char *a = text ? strchr(text, '{') : NULL, *b = text ? strrchr(text, '}') : NULL;
    json_t *j = a && b && b > a ? json_loadb(a, (size_t)(b - a + 1), 0, NULL) : NULL;
    if (!json_is_object(j)) {
        json_decref(j);
        return "invalid_output";
    }
    const char *bad = NULL;
    for (size_t i = 0; tc && i < tc->n_required && !bad; i++) {
        json_t *v = json_object_get(j, tc->required[i]);
        if (v == NULL || json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0))
            bad = "failed_checks";
    }
    const char *k;
    json_t *v;
    bool any = false;
    json_object_foreach(j, k, v) if (!json_is_null(v)) any = true;
    if (!any && json_object_size(j) > 0)
        bad = "failed_checks";
    json_decref(j);
    return bad;
}

static void start_attempt(struct chat *c, long delay_ms);
static void step_job(void *arg);
static void review_job(void *arg);

/* Hand c to the review step on a worker (store I/O). The caller's request reference goes with
 * it. False when it could not be queued (c is still the caller's). */
static bool go_review(struct chat *c, const char *why)
{
    if (why)
        snprintf(c->why, sizeof(c->why), "%s", why);
    return ap__pool_submit(c->r->gw->pool, review_job, c) == 0;
}

/*
 * Leave the current step for the next one that can run: a review step takes the request; a
 * step whose deployments are all open is skipped (counted as breaker_open). Returns true when
 * something was scheduled: c (and the caller's request reference) is then owned by that.
 */
static bool fall_through(struct chat *c, const char *reason)
{
    const ap_chain_step *st = &c->chain.step[c->step];
    snprintf(c->why, sizeof(c->why), "%s after %.60s", reason, st->model);
    for (size_t i = c->step + 1; i < c->chain.n_steps; i++) {
        const ap_chain_step *nx = &c->chain.step[i];
        if (nx->review) {
            fb_metric(c, st->model, AP_REVIEW_STEP, reason);
            c->step = i;
            return go_review(c, NULL);
        }
        size_t k;
        bool probe;
        if (!pick_in(c, nx, &k, &probe)) {
            fb_metric(c, st->model, nx->model, "breaker_open");
            continue;
        }
        fb_metric(c, st->model, nx->model, reason);
        c->is_probe = probe;
        use_step(c, i, k);
        c->next_delay = 0;
        /* The next step may want other image sizes: prepare them on a worker. */
        return ap__pool_submit(c->r->gw->pool, step_job, c) == 0;
    }
    return false;
}

/* The target c's images must be prepared for, for the current deployment ("ocr" for local). */
static const char *step_target(const struct chat *c)
{
    if (c->prov == NULL)
        return "default";
    if (c->prov->type == AP_PROVIDER_LOCAL)
        return "ocr";
    return target_for(c->mconf, c->prov, NULL);
}

/*
 * An attempt failed (rc/status) or answered badly (bad_answer). Retry the same step with
 * backoff where the policy says so (on the same or another deployment of it), else fall
 * through. Returns true when something was scheduled: c is then owned by that.
 */
static bool try_again(struct chat *c, ap_status rc, long status, const char *bad_answer)
{
    struct ap__req *r = c->r;
    struct ap_gateway *gw = r->gw;
    const ap_retry_policy *pol = &gw->cfg->retry;
    long elapsed = (long)(ap__now_ms() - c->t_first);
    bool transient = bad_answer == NULL && ap_retry_transient(pol, rc, status);
    breaker_result(c, !transient);
    /* Nobody to answer (and no coalesced request waiting on this one): stop here. */
    if (!c->began && ap__req_client_gone(r) && !flight_has_waiters(c)) {
        ap__metrics_add(gw->metrics, "aperture_client_gone_total", NULL, 1);
        return false;
    }
    if (bad_answer == NULL && ap_retry_should(pol, c->attempt, rc, status, false, c->began)) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        long delay = ap_retry_delay_ms(pol, c->attempt, c->retry_after[0] ? c->retry_after : NULL,
                                       c->retry_after_ms[0] ? c->retry_after_ms : NULL,
                                       (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000, &c->rng);
        size_t k;
        bool probe;
        if (ap_retry_fits_deadline(pol, elapsed, delay) &&
            pick_in(c, &c->chain.step[c->step], &k, &probe)) {
            ap__metrics_add(gw->metrics, "aperture_retries_total",
                            (const char *[]){"deployment", dep_key(c), "reason",
                                             ap_retry_reason(rc, status), NULL},
                            1);
            char before[32];
            snprintf(before, sizeof(before), "%s", step_target(c));
            c->attempt++;
            c->is_probe = probe;
            use_dep(c, k);
            if (strcmp(before, step_target(c)) != 0 || c->prov->type == AP_PROVIDER_LOCAL) {
                c->next_delay = delay; /* another provider's sizes: prepare on a worker */
                return ap__pool_submit(gw->pool, step_job, c) == 0;
            }
            start_attempt(c, delay);
            return true;
        }
    }
    return fall_through(c, bad_answer ? bad_answer : rc == AP_ETIMEOUT ? "timeout" : "error");
}

/* ---- rate limits ----------------------------------------------------------------------------- */

static bool lim_needed(const struct chat *c)
{
    const ap_provider_conf *p = c->prov;
    return c->r->gw->limiter && p && p->type != AP_PROVIDER_LOCAL &&
           (p->max_in_flight > 0 || p->rpm > 0 || p->tpm > 0);
}

/* A provider's limits as the limiter takes them. */
static void limit_opts(const ap_provider_conf *p, ap_limit_opts *lo)
{
    *lo =
        (ap_limit_opts){.max_in_flight = p->max_in_flight,
                        .rpm = p->rpm,
                        .tpm = p->tpm,
                        .queue_max = p->queue_max,
                        .queue_timeout_ms = p->queue_timeout_ms > 0 ? p->queue_timeout_ms : 30000};
}

/* Give the attempt's slot back (the call ended). */
static void lim_release(struct chat *c)
{
    if (!c->lim_held)
        return;
    c->lim_held = false;
    /* The provider's count of input tokens, when it gave one, corrects the tpm budget. */
    double actual = c->usage.input_tokens > 0 ? (double)c->usage.input_tokens : -1;
    ap_limiter_release(c->r->gw->limiter, c->lim_prov->name, c->lim_tokens, actual);
}

/* The input tokens an attempt is expected to use: text at ~4 bytes a token, plus the images'
 * estimates after preprocessing. */
static double est_tokens(const struct chat *c)
{
    const struct ap__req *r = c->r;
    double t = c->prompt_all ? (double)strlen(c->prompt_all) / 4.0 : 0;
    for (size_t i = 0; i < r->n_img; i++)
        t += r->img[i].tokens_after > 0 ? (double)r->img[i].tokens_after : 0;
    return t;
}

/* Over the provider's limits with no room in its queue (or waited too long): another step,
 * else 429 with Retry-After. Takes c and the caller's request reference. */
static void limit_refused(struct chat *c, long retry_after_ms, const char *why)
{
    struct ap__req *r = c->r;
    const char *prov = c->prov->name;
    ap__metrics_add(r->gw->metrics, "aperture_ratelimit_refused_total",
                    (const char *[]){"provider", prov, "reason", why, NULL}, 1);
    if (fall_through(c, "rate_limited"))
        return;
    long s = retry_after_ms > 0 ? (retry_after_ms + 999) / 1000 : 1;
    snprintf(r->retry_after, sizeof(r->retry_after), "%ld", s);
    ap__req_error(
        r, 429, r->dialect == AP__DIALECT_ANTHROPIC ? "rate_limit_error" : "rate_limit_exceeded",
        NULL, "%s: over this gateway's limits for the provider (%s); retry in %ld s", prov, why, s);
    flight_finish(c, NULL, 429, r->error);
    ap__req_unref(r);
    chat_free(c);
}

static void call_submit(struct chat *c, struct ap__http_call *call, long delay_ms)
{
    c->call = call;
    c->t_up = ap__now_ms();
    ap__http_submit_after(c->r->gw->http, call, delay_ms);
}

/* A queued attempt's turn came (or did not), on the limiter's thread. */
static void lim_cb(void *ctx, ap_status rc)
{
    struct chat *c = ctx;
    struct ap__http_call *call = c->pending;
    c->pending = NULL;
    if (rc == AP_OK) {
        c->lim_held = true;
        call_submit(c, call, c->pending_delay);
        return;
    }
    ap__upreq_release(&call->req);
    free(call);
    limit_refused(c, 1000, rc == AP_ETIMEOUT ? "waited too long in the queue" : "shutting down");
}

/* ---- review ---------------------------------------------------------------------------------- */

static bool prepare_images(struct chat *c, const char *force_target, uint8_t ***ocr,
                           size_t **ocr_len, size_t *n_ocr);

/* Rebuild c->canon from the original request and prepare its images for the current
 * deployment (force_target: for that target instead). */
static bool reprepare(struct chat *c, const char *force_target, uint8_t ***ocr, size_t **ocr_len,
                      size_t *n_ocr)
{
    struct ap__req *r = c->r;
    json_decref(c->canon);
    c->canon = json_deep_copy(c->orig);
    for (size_t i = 0; i < c->n_key_img; i++) {
        free(c->img_bytes[i]);
        c->img_bytes[i] = NULL;
    }
    size_t keep_key_img = c->n_key_img; /* the cache key stays the first step's */
    c->n_key_img = 0;
    if (force_target == NULL)
        r->n_img = 0; /* the facts describe what goes upstream; a review copy is not sent */
    bool ok = prepare_images(c, force_target, ocr, ocr_len, n_ocr);
    for (size_t i = 0; i < c->n_key_img; i++) {
        free(c->img_bytes[i]);
        c->img_bytes[i] = NULL;
    }
    c->n_key_img = keep_key_img;
    return ok;
}

/*
 * The review step, on a worker: the request (images prepared at the default size, for a
 * person to read) goes to the review store, and the client gets 202 with the item's id and
 * needs_review: true in its own dialect. Takes c and one request reference.
 */
static void review_job(void *arg)
{
    struct chat *c = arg;
    struct ap__req *r = c->r;
    struct ap_gateway *gw = r->gw;
    ap_error err = {0};
    char id[AP_REVIEW_ID_MAX] = "";
    snprintf(r->route_method, sizeof(r->route_method), "review");
    uint8_t **ocr = NULL;
    size_t *ocr_len = NULL, n_ocr = 0;
    ap_status rc = AP_OK;
    if (gw->review == NULL) {
        rc = ap_error_set(&err, AP_ENETWORK, "%s",
                          gw->review_err[0] ? gw->review_err : "no review store");
    } else if (!reprepare(c, "default", &ocr, &ocr_len, &n_ocr)) {
        rc = AP_EINVAL; /* answered by prepare_images */
    } else {
        char *req = json_dumps(c->canon, JSON_COMPACT);
        char reason[sizeof(c->why)];
        snprintf(reason, sizeof(reason), "%s", c->why[0] ? c->why : "review");
        ap_review_item it = {.task = c->task,
                             .model = r->model,
                             .client = (char *)r->client_name,
                             .reason = reason,
                             .request = req,
                             .candidate = c->candidate};
        rc = req ? ap_review_add(gw->review, &it, id, &err)
                 : ap_error_set(&err, AP_ENOMEM, "out of memory");
        free(req);
    }
    if (rc == AP_OK) {
        snprintf(r->review_id, sizeof(r->review_id), "%s", id);
        ap__metrics_add(gw->metrics, "aperture_review_items_total",
                        (const char *[]){"task", c->task, NULL}, 1);
        char content[96];
        snprintf(content, sizeof(content), "{\"needs_review\":true,\"review_id\":\"%s\"}", id);
        json_t *resp = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:s}, s:s}], "
                                 "s:{s:i, s:i, s:i}, s:s}",
                                 "id", id, "object", "chat.completion", (const char *)"created",
                                 (json_int_t)time(NULL), "model", r->model, "choices", "index", 0,
                                 "message", "role", "assistant", "content", content,
                                 "finish_reason", "stop", "usage", "prompt_tokens", 0,
                                 "completion_tokens", 0, "total_tokens", 0, "review_id", id);
        c->cacheable = false; /* a person's answer is not in yet */
        flight_finish(c, resp, 200, NULL);
        deliver(c, resp);
    } else if (!r->answered) {
        ap__req_error(
            r, 503, r->dialect == AP__DIALECT_ANTHROPIC ? "overloaded_error" : "unavailable", NULL,
            "no model step could answer and the review queue is unavailable: %s", err.msg);
        flight_finish(c, NULL, 503, r->error);
    } else {
        flight_finish(c, NULL, r->status, r->error);
    }
    for (size_t i = 0; i < n_ocr; i++)
        free(ocr[i]);
    free(ocr);
    free(ocr_len);
    ap__req_unref(r);
    chat_free(c);
}

/* ---- steps ----------------------------------------------------------------------------------- */

/* Run the current step: in-process for local, else the first attempt of an upstream call.
 * Takes c (and its request reference). */
static void step_run(struct chat *c, uint8_t **ocr, size_t *ocr_len, size_t n_ocr)
{
    struct ap__req *r = c->r;
    struct ap_gateway *gw = r->gw;
    ap_error err = {0};
    if (c->prov->type == AP_PROVIDER_LOCAL) {
        json_t *resp = NULL;
        snprintf(r->route_method, sizeof(r->route_method), "local-ocr");
        struct ap__ocr *engine = thread_ocr(&err);
        if (engine == NULL) {
            ap__req_error(r, 500, "api_error", NULL, "local: %s", err.msg);
            flight_finish(c, NULL, 500, r->error);
        } else if (ap__local_answer_ocr(gw->cfg, engine, r->task_header, c->canon,
                                        (const uint8_t *const *)ocr, ocr_len, n_ocr, &resp,
                                        &err) != AP_OK) {
            ap__req_error(r, 400, "invalid_request_error", NULL, "%s", err.msg);
            flight_finish(c, NULL, 400, r->error);
        } else {
            const char *bad = answer_check(c, resp);
            if (bad && c->step + 1 < c->chain.n_steps) {
                /* The local answer fails the checks: a later step (review) may do better. */
                free(c->candidate);
                c->candidate = json_dumps(resp, JSON_COMPACT);
                json_decref(resp);
                ap__req_ref(r);
                if (fall_through(c, bad))
                    return;
                ap__req_unref(r);
                ap__req_error(r, 502, "upstream_error", NULL,
                              "local: the answer failed the task's checks");
                flight_finish(c, NULL, 502, r->error);
            } else {
                if (bad == NULL)
                    cache_store(c, resp);
                flight_finish(c, resp, 200, NULL);
                deliver(c, resp);
            }
        }
        chat_free(c);
        return;
    }
    c->ops = ap__provider_ops_for(c->prov->type);
    if (c->ops == NULL) {
        ap__req_error(r, 500, "api_error", NULL, "provider \"%s\" has no implementation",
                      c->prov->name);
        flight_finish(c, NULL, 500, r->error);
        chat_free(c);
        return;
    }
    snprintf(r->route_method, sizeof(r->route_method), "%s", dep_key(c));
    ap__req_ref(r); /* held by the upstream calls until the last on_done */
    long d = c->next_delay;
    c->next_delay = 0;
    start_attempt(c, d);
}

/* Whether the current deployment needs c's images prepared again before it runs. */
static bool needs_prep(const struct chat *c, bool have_ocr)
{
    if (c->prov == NULL)
        return false;
    if (c->prov->type == AP_PROVIDER_LOCAL)
        return !have_ocr && c->n_raw > 0;
    return strcmp(c->prepared, step_target(c)) != 0;
}

/* Prepare what the current step needs and run it. Takes c. ocr arrays: borrowed, may be NULL. */
static void run_prepared(struct chat *c, uint8_t **ocr, size_t *ocr_len, size_t n_ocr)
{
    struct ap__req *r = c->r;
    uint8_t **o2 = NULL;
    size_t *l2 = NULL, n2 = 0;
    bool fresh = needs_prep(c, ocr != NULL);
    if (fresh && !reprepare(c, NULL, &o2, &l2, &n2)) {
        flight_finish(c, NULL, r->status, r->error);
        chat_free(c);
    } else {
        step_run(c, fresh ? o2 : ocr, fresh ? l2 : ocr_len, fresh ? n2 : n_ocr);
    }
    for (size_t i = 0; i < n2; i++)
        free(o2[i]);
    free(o2);
    free(l2);
}

/* A later step (or a retry on another provider), on a worker. The request reference the
 * upstream call held passes to the step; step_run takes its own for the next call. */
static void step_job(void *arg)
{
    struct chat *c = arg;
    struct ap__req *r = c->r;
    run_prepared(c, NULL, NULL, 0);
    ap__req_unref(r);
}

/* After the cache and the classifier: walk the chain from its first healthy step. Takes c. */
static void chain_start(struct chat *c, uint8_t **ocr, size_t *ocr_len, size_t n_ocr)
{
    struct ap__req *r = c->r;
    switch (first_healthy_step(c)) {
    case STEP_NONE:
        no_healthy_step(c);
        chat_free(c);
        return;
    case STEP_REVIEW:
        snprintf(c->why, sizeof(c->why), "%s",
                 c->step > 0 ? "breaker_open: no model step could run" : "review first");
        ap__req_ref(r);
        if (!go_review(c, NULL)) {
            ap__req_unref(r);
            no_healthy_step(c);
            chat_free(c);
        }
        return;
    case STEP_OK:
        break;
    }
    run_prepared(c, ocr, ocr_len, n_ocr);
}

/* Build and submit one upstream attempt of the current step after delay_ms, through the
 * provider's limits. c stays owned by the call; the caller holds a request reference for it. */
static void start_attempt(struct chat *c, long delay_ms)
{
    struct ap__req *r = c->r;
    struct ap_gateway *gw = r->gw;
    ap_error err = {0};
    /* Per-attempt state starts fresh. */
    free(c->errbuf);
    c->errbuf = NULL;
    c->errlen = 0;
    c->retry_after[0] = '\0';
    c->retry_after_ms[0] = '\0';
    c->stream_err[0] = '\0';
    c->recorded = false;
    if (c->xs) {
        c->ops->stream_free(c->xs);
        c->xs = NULL;
    }
    c->ops = ap__provider_ops_for(c->prov->type);
    free(c->acc_text);
    c->acc_text = NULL;
    c->acc_len = 0;
    c->acc_finish[0] = '\0';
    memset(&c->usage, 0, sizeof(c->usage));
    struct ap__http_call *call = ap__xcalloc(1, sizeof(*call));
    if (c->ops == NULL ||
        c->ops->build(c->prov, c->upstream, c->canon, c->stream, &call->req, &err) != AP_OK) {
        free(call);
        ap__req_error(r, 400, "invalid_request_error", NULL, "%s",
                      c->ops ? err.msg : "provider has no implementation");
        flight_finish(c, NULL, 400, r->error);
        ap__req_unref(r);
        chat_free(c);
        return;
    }
    long prov_timeout = c->prov->timeout_ms > 0 ? c->prov->timeout_ms : 600000;
    long left = ap_retry_attempt_timeout_ms(&gw->cfg->retry, (long)(ap__now_ms() - c->t_first),
                                            prov_timeout);
    call->connect_timeout_ms =
        c->prov->connect_timeout_ms > 0 ? c->prov->connect_timeout_ms : 10000;
    call->timeout_ms = left > 0 ? left : 1;
    call->max_body = 64u << 20;
    call->ctx = c;
    if (c->stream) {
        json_t *so = json_object_get(c->canon, "stream_options");
        /* Byte-for-byte relay when nothing needs changing: OpenAI wire to an OpenAI client
         * that chose its own stream_options (otherwise build() adds include_usage for our
         * accounting and the usage chunk must be filtered out). */
        c->passthrough = r->dialect == AP__DIALECT_OPENAI && c->ops == &ap__openai_ops && so;
        c->xs = c->ops->stream_new(c->prov, r->model, emit_chunk, c);
        if (r->dialect == AP__DIALECT_ANTHROPIC && c->aw == NULL)
            c->aw = ap__anth_sse_new(r->model);
        call->on_data = on_stream_data;
        call->on_done = on_stream_done;
    } else {
        call->on_done = on_done;
    }
    if (!lim_needed(c)) {
        call_submit(c, call, delay_ms);
        return;
    }
    const ap_provider_conf *p = c->prov;
    ap_limit_opts lo;
    limit_opts(p, &lo);
    c->pending = call;
    c->pending_delay = delay_ms;
    c->lim_tokens = est_tokens(c);
    c->lim_prov = p;
    long ra = 0;
    ap_status lrc = ap_limiter_acquire(gw->limiter, p->name, &lo, c->lim_tokens, lim_cb, c, &ra);
    if (lrc == AP_EBUSY)
        return; /* lim_cb goes on from here, maybe already */
    c->pending = NULL;
    if (lrc == AP_OK) {
        c->lim_held = true;
        call_submit(c, call, delay_ms);
        return;
    }
    ap__upreq_release(&call->req);
    free(call);
    limit_refused(c, ra, "queue full");
}

/* ---- two-stage: classify on a thumbnail first ------------------------------------------------ */

struct classify {
    struct chat *c;
    const ap_two_stage_conf *ts;
    const ap_provider_conf *prov;
    const struct ap__provider_ops *ops;
    char key[AP_DEPLOYMENT_MAX];
    bool probe;
    bool lim_held;
    double lim_tokens;
    struct ap__http_call *call;
};

static void classify_proceed_job(void *arg)
{
    struct chat *c = arg;
    struct ap__req *r = c->r;
    chain_start(c, NULL, NULL, 0);
    ap__req_unref(r);
}

static void classify_done(void *ctx, ap_status rc, long status, const char *body, size_t len,
                          const char *errmsg)
{
    struct classify *k = ctx;
    struct chat *c = k->c;
    struct ap__req *r = c->r;
    struct ap_gateway *gw = r->gw;
    (void)errmsg;
    json_t *resp = NULL;
    struct ap__usage u = {0};
    ap_error err = {0};
    ap_status prc =
        rc == AP_OK ? k->ops->parse(k->prov, status, body ? body : "", len, &resp, &u, &err) : rc;
    if (k->lim_held)
        ap_limiter_release(gw->limiter, k->prov->name, k->lim_tokens,
                           u.input_tokens > 0 ? (double)u.input_tokens : -1);
    bool healthy =
        prc == AP_OK ||
        !ap_retry_transient(&gw->cfg->retry, prc == AP_EUPSTREAM ? AP_EUPSTREAM : prc, status);
    ap_breaker_record(gw->breakers, k->key, (int64_t)ap__now_ms(), healthy, k->probe);
    const char *text = json_string_value(json_object_get(
        json_object_get(json_array_get(json_object_get(resp, "choices"), 0), "message"),
        "content"));
    const char *cls = text ? ap_router_class(k->ts, text) : NULL;
    ap__metrics_add(gw->metrics, "aperture_two_stage_total",
                    (const char *[]){"class",
                                     cls            ? cls
                                     : prc == AP_OK ? "unknown"
                                                    : "error",
                                     "full", cls && !ap_router_valuable(k->ts, cls) ? "no" : "yes",
                                     NULL},
                    1);
    if (cls)
        snprintf(r->stage_class, sizeof(r->stage_class), "%s", cls);
    bool valuable = cls == NULL || ap_router_valuable(k->ts, cls);
    free(k);
    if (!valuable) {
        /* Not worth the full run: the class is the answer. */
        char content[96];
        snprintf(content, sizeof(content), "{\"class\":\"%.60s\"}", cls);
        json_t *ans =
            json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:s}, s:s}], s:{s:I, s:I, s:I}}", "id",
                      r->id, "object", "chat.completion", "created", (json_int_t)time(NULL),
                      "model", r->model, "choices", "index", 0, "message", "role", "assistant",
                      "content", content, "finish_reason", "stop", "usage", "prompt_tokens",
                      (json_int_t)AP_MAX(u.input_tokens, 0), "completion_tokens",
                      (json_int_t)AP_MAX(u.output_tokens, 0), "total_tokens",
                      (json_int_t)(AP_MAX(u.input_tokens, 0) + AP_MAX(u.output_tokens, 0)));
        json_decref(resp);
        snprintf(r->route_method, sizeof(r->route_method), "two-stage");
        c->usage = u;
        account(c);
        cache_store(c, ans);
        flight_finish(c, ans, 200, NULL);
        c->from_cache = true; /* usage already counted */
        deliver(c, ans);
        ap__req_unref(r);
        chat_free(c);
        return;
    }
    json_decref(resp);
    /* Worth it, or the classifier could not tell: the full run (failing open: a missed
     * extraction costs more than a second call). */
    if (ap__pool_submit(gw->pool, classify_proceed_job, c) != 0) {
        ap__req_error(r, 503, "unavailable", NULL, "shutting down");
        flight_finish(c, NULL, 503, r->error);
        ap__req_unref(r);
        chat_free(c);
    }
}

/* The classifier's turn in its provider's queue came (or did not), on the limiter's thread. */
static void classify_lim_cb(void *ctx, ap_status rc)
{
    struct classify *k = ctx;
    struct chat *c = k->c;
    struct ap__req *r = c->r;
    if (rc == AP_OK) {
        k->lim_held = true;
        ap__http_submit(r->gw->http, k->call);
        return;
    }
    /* Waited too long: skip the first stage; the full run goes on (on a worker). */
    ap__upreq_release(&k->call->req);
    free(k->call);
    free(k);
    if (ap__pool_submit(r->gw->pool, classify_proceed_job, c) != 0) {
        ap__req_error(r, 503, "unavailable", NULL, "shutting down");
        flight_finish(c, NULL, 503, r->error);
        ap__req_unref(r);
        chat_free(c);
    }
}

/*
 * Start the classifier of the request's two-stage rule: its images prepared at the rule's
 * target (thumbnail), a short prompt, one non-streamed call. Returns true when it was started
 * (c is then owned by it); false to skip the first stage (no rule, classifier unavailable or
 * open, or not allowed for restricted data).
 */
static bool classify_start(struct chat *c)
{
    struct ap__req *r = c->r;
    struct ap_gateway *gw = r->gw;
    const ap_two_stage_conf *ts = c->rule ? c->rule->two_stage : NULL;
    if (ts == NULL || c->n_raw == 0)
        return false;
    ap_chain cc;
    const char *models[] = {ts->model};
    if (ap_config_chain_list(gw->cfg, models, 1, &cc, NULL) != AP_OK)
        return false;
    if (c->restricted && ap_router_restrict(&cc, NULL) != AP_OK)
        return false;
    const ap_chain_step *st = &cc.step[0];
    size_t di;
    bool probe;
    if (st->review || !pick_in(c, st, &di, &probe))
        return false;
    const ap_chain_deployment *d = st->n_dep ? &st->dep[di] : NULL;
    const ap_provider_conf *prov = d ? d->provider : st->provider;
    const char *up = d ? d->upstream : st->upstream;
    const struct ap__provider_ops *ops = prov ? ap__provider_ops_for(prov->type) : NULL;
    if (ops == NULL || prov->type == AP_PROVIDER_LOCAL)
        return false;
    /* The classifier's request: the prompt and every image as a thumbnail. */
    char prompt[1024];
    if (ts->prompt) {
        snprintf(prompt, sizeof(prompt), "%s", ts->prompt);
    } else {
        size_t off =
            (size_t)snprintf(prompt, sizeof(prompt), "Classify this image as exactly one of:");
        for (size_t i = 0; i < ts->n_classes && off < sizeof(prompt); i++)
            off += (size_t)snprintf(prompt + off, sizeof(prompt) - off, "%s %s", i ? "," : "",
                                    ts->classes[i]);
        if (off < sizeof(prompt))
            snprintf(prompt + off, sizeof(prompt) - off, ". Answer with the class name only.");
    }
    json_t *content = json_array();
    json_array_append_new(content, json_pack("{s:s, s:s}", "type", "text", "text", prompt));
    ap_prep_opts o = gw->cfg->prep;
    if (ap_prep_opts_target(&o, ts->target ? ts->target : "thumbnail") != AP_OK) {
        json_decref(content);
        return false;
    }
    for (size_t i = 0; i < c->n_raw; i++) {
        ap_prep_result res;
        if (ap_prep(c->raw[i].buf, c->raw[i].len, &o, &res, NULL) != AP_OK) {
            json_decref(content);
            return false; /* the full run will report the image's problem */
        }
        r->prep_ms += res.ms.total_ms;
        char *b64 = ap_base64_encode(res.out, res.out_len);
        size_t need = (b64 ? strlen(b64) : 0) + 64;
        char *durl = b64 ? malloc(need) : NULL;
        if (durl)
            snprintf(durl, need, "data:%s;base64,%s", res.out_media_type, b64);
        free(b64);
        ap_prep_result_release(&res);
        if (durl == NULL) {
            json_decref(content);
            return false;
        }
        json_array_append_new(
            content, json_pack("{s:s, s:{s:s}}", "type", "image_url", "image_url", "url", durl));
        free(durl);
    }
    json_t *canon =
        json_pack("{s:s, s:[{s:s, s:o}], s:i, s:i}", "model", ts->model, "messages", "role", "user",
                  "content", content, "max_tokens", 20, "temperature", 0);
    struct ap__http_call *call = ap__xcalloc(1, sizeof(*call));
    ap_status brc =
        canon ? ops->build(prov, up ? up : ts->model, canon, false, &call->req, NULL) : AP_ENOMEM;
    json_decref(canon);
    if (brc != AP_OK) {
        free(call);
        return false;
    }
    struct classify *k = ap__xcalloc(1, sizeof(*k));
    k->c = c;
    k->ts = ts;
    k->prov = prov;
    k->ops = ops;
    k->probe = probe;
    snprintf(k->key, sizeof(k->key), "%s", d ? d->key : st->deployment);
    long prov_timeout = prov->timeout_ms > 0 ? prov->timeout_ms : 600000;
    long left = ap_retry_attempt_timeout_ms(&gw->cfg->retry, (long)(ap__now_ms() - c->t_first),
                                            prov_timeout);
    call->connect_timeout_ms = prov->connect_timeout_ms > 0 ? prov->connect_timeout_ms : 10000;
    call->timeout_ms = left > 0 ? left : 1;
    call->max_body = 1u << 20;
    call->ctx = k;
    call->on_done = classify_done;
    k->call = call;
    ap__req_ref(r); /* held by the classifier call */
    if (gw->limiter && (prov->max_in_flight > 0 || prov->rpm > 0 || prov->tpm > 0)) {
        /* The classifier counts against its provider's limits like any call. */
        ap_limit_opts lo;
        limit_opts(prov, &lo);
        k->lim_tokens = (double)strlen(prompt) / 4.0 + 255.0 * (double)c->n_raw;
        ap_status lrc = ap_limiter_acquire(gw->limiter, prov->name, &lo, k->lim_tokens,
                                           classify_lim_cb, k, NULL);
        if (lrc == AP_EBUSY)
            return true; /* classify_lim_cb goes on */
        if (lrc != AP_OK) {
            /* No room for the classifier: skip the first stage, the full run goes on. */
            ap__upreq_release(&call->req);
            free(call);
            free(k);
            ap__req_unref(r);
            return false;
        }
        k->lim_held = true;
    }
    ap__http_submit(gw->http, call);
    return true;
}

/* ---- the handler --------------------------------------------------------------------------------
 */

/* Append s (and a newline before it when buf is not empty) to buf, truncating at cap. */
static void append_capped(char *buf, size_t cap, size_t *off, const char *s)
{
    if (*off + 1 >= cap)
        return;
    int n = snprintf(buf + *off, cap - *off, "%s%s", *off ? "\n" : "", s);
    if (n > 0)
        *off = AP_MIN(*off + (size_t)n, cap - 1);
}

/* The text parts of a canonical request, joined and capped at 16 KiB: what routing rules search
 * for keywords (16 KiB folds and searches in ~30 us, see docs/BENCHMARKS-gateway.md), and the
 * log line's prompt (its first 4 KiB). */
#define PROMPT_CAP (16u << 10)
static char *prompt_text(const json_t *canon)
{
    char *buf = malloc(PROMPT_CAP);
    size_t off = 0, mi, pi;
    json_t *m, *p;
    if (buf == NULL)
        return NULL;
    buf[0] = '\0';
    json_array_foreach(json_object_get(canon, "messages"), mi, m)
    {
        json_t *content = json_object_get(m, "content");
        if (json_is_string(content))
            append_capped(buf, PROMPT_CAP, &off, json_string_value(content));
        json_array_foreach(content, pi, p)
        {
            const char *t = json_string_value(json_object_get(p, "text"));
            if (t)
                append_capped(buf, PROMPT_CAP, &off, t);
        }
    }
    return buf;
}

/* The image_url object of a content part that is an image, or NULL. */
static json_t *image_part(json_t *part)
{
    const char *type = json_string_value(json_object_get(part, "type"));
    return type && strcmp(type, "image_url") == 0 ? json_object_get(part, "image_url") : NULL;
}

/*
 * Load every image of the request once (data: URL or an SSRF-checked fetch), read its size from
 * its header, and leave "raw:<i>" in its place: every step prepares from these bytes. Returns
 * false after answering.
 */
static bool load_images(struct chat *c, bool probe)
{
    struct ap__req *r = c->r;
    size_t mi, pi;
    json_t *m, *part;
    json_array_foreach(json_object_get(c->canon, "messages"), mi, m)
    {
        json_t *content = json_object_get(m, "content");
        if (!json_is_array(content))
            continue;
        json_array_foreach(content, pi, part)
        {
            json_t *iu = image_part(part);
            if (iu == NULL)
                continue;
            const char *url = json_is_string(iu) ? json_string_value(iu)
                                                 : json_string_value(json_object_get(iu, "url"));
            char param[64];
            snprintf(param, sizeof(param), "messages[%zu].content[%zu]", mi, pi);
            if (url == NULL) {
                ap__req_error(r, 400, "invalid_request_error", param,
                              "%s: image_url.url must be a string", param);
                return false;
            }
            uint8_t *buf = NULL;
            size_t len = 0;
            ap_error err = {0};
            ap_status rc = ap__image_load(r, url, &buf, &len, &err);
            if (rc != AP_OK) {
                ap__req_error(r, rc == AP_ETOOLARGE ? 413 : 400, "invalid_request_error", param,
                              "%s: image %zu could not be loaded: %s: %s", param, c->n_raw,
                              ap_strerror(rc), err.msg);
                return false;
            }
            if (c->n_raw == c->cap_raw) {
                size_t ncap = c->cap_raw ? 2 * c->cap_raw : 4;
                struct raw_img *nr = realloc(c->raw, ncap * sizeof(*nr));
                if (nr == NULL) {
                    free(buf);
                    ap__req_error(r, 500, "api_error", NULL, "out of memory");
                    return false;
                }
                c->raw = nr;
                c->cap_raw = ncap;
            }
            struct raw_img *ri = &c->raw[c->n_raw];
            *ri = (struct raw_img){.buf = buf, .len = len};
            ap_probe_info pin;
            if (probe && ap_prep_probe(buf, len, &pin, NULL) == AP_OK) {
                ri->w = pin.width;
                ri->h = pin.height;
            }
            char ph[32];
            snprintf(ph, sizeof(ph), "raw:%zu", c->n_raw++);
            json_t *niu = json_pack("{s:s}", "url", ph);
            const char *detail =
                json_is_object(iu) ? json_string_value(json_object_get(iu, "detail")) : NULL;
            if (detail)
                json_object_set_new(niu, "detail", json_string(detail));
            json_object_set_new(part, "image_url", niu);
        }
    }
    return true;
}

/* Prepare every image of c->canon (placeholders from load_images()) for the current
 * deployment, or for force_target: a data: URL in its place; for the local provider, OCR-sized
 * images in *ocr instead. Returns false after answering. */
static bool prepare_images(struct chat *c, const char *force_target, uint8_t ***ocr,
                           size_t **ocr_len, size_t *n_ocr)
{
    struct ap__req *r = c->r;
    json_t *msgs = json_object_get(c->canon, "messages");
    size_t mi, pi, idx = 0;
    json_t *m, *part;
    bool local = force_target == NULL && c->prov && c->prov->type == AP_PROVIDER_LOCAL;
    json_array_foreach(msgs, mi, m)
    {
        json_t *content = json_object_get(m, "content");
        if (!json_is_array(content))
            continue;
        json_array_foreach(content, pi, part)
        {
            json_t *iu = image_part(part);
            if (iu == NULL)
                continue;
            const char *url = json_string_value(json_object_get(iu, "url"));
            const char *detail = json_string_value(json_object_get(iu, "detail"));
            char param[64];
            snprintf(param, sizeof(param), "messages[%zu].content[%zu]", mi, pi);
            size_t ri = url && strncmp(url, "raw:", 4) == 0 ? strtoul(url + 4, NULL, 10) : SIZE_MAX;
            if (ri >= c->n_raw) {
                ap__req_error(r, 400, "invalid_request_error", param,
                              "%s: image_url.url is not a loaded image", param);
                return false;
            }
            const uint8_t *buf = c->raw[ri].buf;
            size_t len = c->raw[ri].len;
            ap_error err = {0};
            ap_status rc;
            ap_prep_result res;
            const char *target = force_target ? force_target
                                 : local      ? "none"
                                              : target_for(c->mconf, c->prov, detail);
            if (local) {
                /* OCR reads the normalised image at up to ocr_max_edge: shrinking a dense page
                 * to 1568 px costs Tesseract accuracy. */
                ap_prep_opts o = r->gw->cfg->prep;
                if (ap_prep_opts_target(&o, "none") != AP_OK)
                    AP_ASSERT(0);
                o.max_edge = r->gw->cfg->ocr_max_edge ? r->gw->cfg->ocr_max_edge : 4000;
                o.quality = 92;
                rc = ap_prep(buf, len, &o, &res, &err);
                if (rc == AP_OK && r->n_img < sizeof(r->img) / sizeof(r->img[0])) {
                    struct ap__img_facts *f = &r->img[r->n_img++];
                    memset(f, 0, sizeof(*f));
                    memcpy(f->sha16, res.sha256_hex, 16);
                    snprintf(f->format, sizeof(f->format), "%s", ap_format_name(res.in_format));
                    f->orientation = res.orientation;
                    ap_meta_describe(res.meta_removed, f->meta_removed, sizeof(f->meta_removed));
                    bool swap = res.orientation >= 5;
                    f->in_w = swap ? res.in_height : res.in_width;
                    f->in_h = swap ? res.in_width : res.in_height;
                    f->out_w = res.out_width;
                    f->out_h = res.out_height;
                    f->in_bytes = len;
                    f->out_bytes = res.out_len;
                    f->prep_ms = res.ms.total_ms;
                    f->tokens_before = f->tokens_after = 0;
                    r->prep_ms += res.ms.total_ms;
                }
            } else if (force_target) {
                /* A copy for the review item: not sent upstream, so neither the image facts
                 * nor the image metrics count it. */
                ap_prep_opts o = r->gw->cfg->prep;
                rc = ap_prep_opts_target(&o, force_target);
                if (rc == AP_OK)
                    rc = ap_prep(buf, len, &o, &res, &err);
                else
                    rc =
                        ap_error_set(&err, rc, "unknown preprocessing target \"%s\"", force_target);
            } else {
                rc = ap__image_prep(r, buf, len, target, c->token_model, detail, &res, &err);
            }
            if (rc != AP_OK) {
                ap__req_error(r, rc == AP_ETOOLARGE ? 413 : 400, "invalid_request_error", param,
                              "%s: image %zu refused: %s: %s", param, idx, ap_strerror(rc),
                              err.msg);
                return false;
            }
            /* What the cache key and the content check need: the processed image's
             * SHA-256 and pHash, and its bytes (the content check OCRs them). */
            if (c->n_key_img < AP_CACHE_MAX_IMAGES && r->gw->cache) {
                size_t k = c->n_key_img++;
                memcpy(c->img_sha[k], res.sha256_hex, 65);
                c->img_phash[k] = res.phash;
                c->img_bytes[k] = malloc(res.out_len);
                if (c->img_bytes[k])
                    memcpy(c->img_bytes[k], res.out, res.out_len);
                c->img_len[k] = c->img_bytes[k] ? res.out_len : 0;
            }
            if (local) {
                *ocr = realloc(*ocr, sizeof(**ocr) * (*n_ocr + 1));
                *ocr_len = realloc(*ocr_len, sizeof(**ocr_len) * (*n_ocr + 1));
                if (*ocr == NULL || *ocr_len == NULL)
                    abort();
                (*ocr)[*n_ocr] = res.out;
                (*ocr_len)[*n_ocr] = res.out_len;
                (*n_ocr)++;
                res.out = NULL;
            } else {
                char *b64 = ap_base64_encode(res.out, res.out_len);
                size_t need = (b64 ? strlen(b64) : 0) + 64;
                char *durl = malloc(need);
                if (b64 == NULL || durl == NULL) {
                    free(b64);
                    free(durl);
                    ap_prep_result_release(&res);
                    ap__req_error(r, 500, "api_error", NULL, "out of memory");
                    return false;
                }
                snprintf(durl, need, "data:%s;base64,%s", res.out_media_type, b64);
                free(b64);
                json_t *niu = json_pack("{s:s}", "url", durl);
                if (detail)
                    json_object_set_new(niu, "detail", json_string(detail));
                json_object_set_new(part, "image_url", niu);
                free(durl);
            }
            ap_prep_result_release(&res);
            idx++;
        }
    }
    snprintf(c->prepared, sizeof(c->prepared), "%s",
             local          ? "ocr"
             : force_target ? force_target
                            : step_target(c));
    return true;
}

void ap__api_chat(struct ap__req *r)
{
    json_error_t jerr;
    ap_error err = {0};
    json_t *canon = NULL;

    if (r->body == NULL) {
        ap__req_error(r, 400, "invalid_request_error", NULL, "request body is empty");
        return;
    }
    json_t *body = json_loadb(r->body, r->len, JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL || !json_is_object(body)) {
        ap__req_error(r, 400, "invalid_request_error", NULL,
                      "request body is not a JSON object: %s (line %d, column %d)",
                      body ? "not an object" : jerr.text, jerr.line, jerr.column);
        json_decref(body);
        return;
    }
    if (r->dialect == AP__DIALECT_ANTHROPIC) {
        ap_status rc = ap__anthropic_req_to_canon(body, &canon, &err);
        json_decref(body);
        if (rc != AP_OK) {
            ap__req_error(r, 400, "invalid_request_error", NULL, "%s", err.msg);
            return;
        }
    } else {
        canon = body;
    }
    ap__chat_run(r, canon);
}

/*
 * Decide the chain: the first routing rule that matches (its models, or the request's own
 * chain), then, for restricted data, only self-hosted steps. Returns false after answering.
 */
static bool route(struct chat *c, const char *ctask, const char *model)
{
    struct ap__req *r = c->r;
    struct ap_gateway *gw = r->gw;
    ap_error err = {0};
    if (gw->cfg->n_routes > 0) {
        uint64_t maxpx = 0, bytes = 0;
        for (size_t i = 0; i < c->n_raw; i++) {
            maxpx = AP_MAX(maxpx, (uint64_t)c->raw[i].w * c->raw[i].h);
            bytes += c->raw[i].len;
        }
        ap_route_facts f = {.task = r->task_header,
                            .model = model,
                            .prompt = c->prompt_all,
                            .prompt_len = c->prompt_all ? strlen(c->prompt_all) : 0,
                            .n_images = c->n_raw,
                            .max_pixels = maxpx,
                            .total_bytes = bytes,
                            .client = r->client_name,
                            .data_class = r->data_class};
        c->rule = ap_router_match(gw->cfg, &f);
    }
    if (c->rule)
        snprintf(r->rule, sizeof(r->rule), "%s", c->rule->name);
    ap__metrics_add(gw->metrics, "aperture_route_total",
                    (const char *[]){"rule", c->rule ? c->rule->name : "default", NULL}, 1);
    ap_status rc = c->rule && c->rule->n_models > 0
                       ? ap_config_chain_list(gw->cfg, (const char *const *)c->rule->models,
                                              c->rule->n_models, &c->chain, &err)
                       : ap_config_chain(gw->cfg, ctask, model, &c->chain, &err);
    if (rc != AP_OK) {
        ap__req_error(r, 404,
                      r->dialect == AP__DIALECT_ANTHROPIC ? "not_found_error"
                                                          : "invalid_request_error",
                      "model", "%s", err.msg);
        return false;
    }
    c->restricted = ap_router_restricted(r->data_class);
    if (c->restricted && ap_router_restrict(&c->chain, &err) != AP_OK) {
        ap__req_error(
            r, 403, r->dialect == AP__DIALECT_ANTHROPIC ? "permission_error" : "permission_denied",
            NULL, "%s", err.msg);
        return false;
    }
    return true;
}

void ap__chat_run(struct ap__req *r, json_t *canon)
{
    struct ap_gateway *gw = r->gw;
    uint8_t **ocr = NULL;
    size_t *ocr_len = NULL, n_ocr = 0;
    struct chat *c = ap__xcalloc(1, sizeof(*c));
    c->r = r;
    c->canon = canon;
    json_t *jm = json_object_get(c->canon, "model");
    if (!json_is_string(jm)) {
        ap__req_error(r, 400, "invalid_request_error", "model", "model: a string is required");
        goto out;
    }
    json_t *jmsgs = json_object_get(c->canon, "messages");
    if (!json_is_array(jmsgs) || json_array_size(jmsgs) == 0) {
        ap__req_error(r, 400, "invalid_request_error", "messages",
                      "messages: a non-empty array is required");
        goto out;
    }
    const char *model = json_string_value(jm);
    snprintf(r->model, sizeof(r->model), "%s", model);
    /* A task named by the client but not configured has no fallbacks of its own. */
    const char *ctask =
        r->task_header && ap_config_task(gw->cfg, r->task_header) ? r->task_header : NULL;
    snprintf(c->task, sizeof(c->task), "%s", r->task_header ? r->task_header : "chat");
    c->t_first = ap__now_ms();
    c->rng = (uint64_t)(c->t_first * 1000.0) ^ (uint64_t)(uintptr_t)c;
    if (gw->cfg->log_prompts || gw->cfg->n_routes > 0 || lim_any(gw->cfg))
        c->prompt_all = prompt_text(c->canon);
    if (gw->cfg->log_prompts && c->prompt_all)
        r->prompt = strndup(c->prompt_all, 4096);
    if (!load_images(c, gw->cfg->n_routes > 0) || !route(c, ctask, model))
        goto out;
    c->orig = json_deep_copy(c->canon);
    use_step(c, 0, 0);
    c->stream = json_is_true(json_object_get(c->canon, "stream"));
    c->want_usage =
        json_is_true(json_object_get(json_object_get(c->canon, "stream_options"), "include_usage"));

    if (c->chain.step[0].review) {
        c->prov = NULL; /* nothing to prepare for: the review step prepares its own */
    } else if (!prepare_images(c, NULL, &ocr, &ocr_len, &n_ocr)) {
        goto out;
    }

    /* The cache: exact, then near-duplicate where the task allows; then coalescing. */
    r->cache_result = "off";
    c->cache_hdr = "off";
    if (gw->cache && c->prov) {
        bool bypass = (r->cache_control && strstr(r->cache_control, "no-cache")) ||
                      (r->cache_header && strcmp(r->cache_header, "bypass") == 0);
        json_t *rf = json_object_get(c->canon, "response_format");
        bool schema = rf && json_object_get(rf, "json_schema") != NULL;
        task_policy(c->task, schema, &c->ttl_s, &c->near, &c->tolerant);
        long ttl = r->cache_ttl_header ? strtol(r->cache_ttl_header, NULL, 10) : 0;
        if (ttl > 0)
            c->ttl_s = ttl;
        c->cacheable = true;
        cache_key(c,
                  c->prov->type == AP_PROVIDER_LOCAL ? "ocr" : target_for(c->mconf, c->prov, NULL));
        if (bypass) {
            r->cache_result = "bypass";
            c->cache_hdr = "bypass";
            ap__metrics_add(gw->metrics, "aperture_cache_requests_total",
                            (const char *[]){"result", "bypass", NULL}, 1);
        } else {
            r->cache_result = "miss";
            c->cache_hdr = "miss";
            if (cache_lookup(c))
                goto out;
        }
        if (c->cacheable && flight_join(c)) {
            ap__req_ref(r); /* held while it waits for the leader */
            c = NULL;       /* owned by the flight now */
            goto out;
        }
    }

    /* Two-stage: a cheap look at a thumbnail first; the full run only when it is worth it. */
    if (classify_start(c)) {
        c = NULL;
        goto out;
    }
    chain_start(c, ocr, ocr_len, n_ocr);
    c = NULL; /* chain_start owns it */
out:
    for (size_t i = 0; i < n_ocr; i++)
        free(ocr[i]);
    free(ocr);
    free(ocr_len);
    if (c)
        chat_free(c);
}
