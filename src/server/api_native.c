/*
 * api_native.c - the native API: POST /v1/analyze (image + task -> answer and the pipeline's
 * facts), POST /v1/preprocess (image -> processed image and metadata, no model call), and
 * GET /v1/models.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>

#include "aperture/hash.h"
#include "aperture/prep.h"
#include "aperture/tokens.h"
#include "core/core.h"
#include "server/server.h"

/* Built-in prompts for the built-in tasks; a task in the config overrides them. */
static const struct {
    const char *task, *prompt;
    bool json;
} builtin_tasks[] = {
    {"describe", "Describe this image in detail, including any text it contains.", false},
    {"invoice_extraction",
     "Extract from this invoice or receipt: vendor, invoice_number, date (YYYY-MM-DD), total "
     "(a number) and currency (ISO 4217 code). Answer with one JSON object with exactly those "
     "keys; use null for anything not present.",
     true},
    {"classify",
     "Classify this image: answer with one JSON object {\"label\": ..., "
     "\"confidence\": 0..1}.",
     true},
    {"document_qa", "Answer the question about this document.", false},
};

/* The request's fields, from JSON or multipart: image bytes, task, prompt, model, schema. */
struct native_in {
    uint8_t *img;
    size_t img_len;
    const char *task, *prompt, *model, *target, *format;
    json_t *schema; /* borrowed */
    json_t *json;   /* owned (the parsed body or the form) */
};

static void native_in_release(struct native_in *in)
{
    free(in->img);
    json_decref(in->json);
}

/* Parse the request into in; answers and returns false on a client error. */
static bool native_parse(struct ap__req *r, struct native_in *in, bool raw_ok)
{
    memset(in, 0, sizeof(*in));
    ap_error err = {0};
    const char *ct = r->content_type ? r->content_type : "";
    if (r->form) { /* multipart/form-data */
        in->json = json_incref(r->form);
        if (r->file_len == 0 || r->file == NULL) {
            ap__req_error(r, 400, "invalid_request_error", "image",
                          "image: a file field named \"image\" is required");
            return false;
        }
        in->img = malloc(r->file_len);
        if (in->img == NULL) {
            ap__req_error(r, 500, "api_error", NULL, "out of memory");
            return false;
        }
        memcpy(in->img, r->file, r->file_len);
        in->img_len = r->file_len;
        const char *schema = json_string_value(json_object_get(r->form, "schema"));
        if (schema) {
            json_t *s = json_loads(schema, 0, NULL);
            if (s == NULL) {
                ap__req_error(r, 400, "invalid_request_error", "schema", "schema: not valid JSON");
                return false;
            }
            json_object_set_new(in->json, "schema_parsed", s);
            in->schema = s;
        }
    } else if (strncasecmp(ct, "application/json", 16) == 0 || !raw_ok) {
        json_error_t jerr;
        in->json = r->body ? json_loadb(r->body, r->len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
        if (!json_is_object(in->json)) {
            ap__req_error(r, 400, "invalid_request_error", NULL,
                          "request body is not a JSON object%s%s", in->json ? "" : ": ",
                          in->json ? "" : (r->body ? jerr.text : "empty body"));
            return false;
        }
        const char *image = json_string_value(json_object_get(in->json, "image"));
        const char *url = json_string_value(json_object_get(in->json, "image_url"));
        json_t *jimg = json_object_get(in->json, "image");
        if (jimg && !json_is_string(jimg)) {
            ap__req_error(r, 400, "invalid_request_error", "image",
                          "image: must be a base64 string or a data URL");
            return false;
        }
        if (image == NULL && url == NULL) {
            ap__req_error(r, 400, "invalid_request_error", "image",
                          "image or image_url is required");
            return false;
        }
        ap_status rc;
        if (image && strncmp(image, "data:", 5) != 0) {
            size_t max =
                r->gw->cfg->prep.max_input_bytes ? r->gw->cfg->prep.max_input_bytes : (64u << 20);
            rc = ap__b64_decode(image, strlen(image), max, &in->img, &in->img_len);
            if (rc != AP_OK) {
                ap__req_error(r, rc == AP_ETOOLARGE ? 413 : 400, "invalid_request_error", "image",
                              "image: %s",
                              rc == AP_ETOOLARGE ? "over the size limit" : "invalid base64");
                return false;
            }
        } else {
            rc = ap__image_load(r, image ? image : url, &in->img, &in->img_len, &err);
            if (rc != AP_OK) {
                ap__req_error(r, rc == AP_ETOOLARGE ? 413 : 400, "invalid_request_error",
                              image ? "image" : "image_url", "%s: %s: %s",
                              image ? "image" : "image_url", ap_strerror(rc), err.msg);
                return false;
            }
        }
        in->schema = json_object_get(in->json, "schema");
        if (in->schema && !json_is_object(in->schema)) {
            ap__req_error(r, 400, "invalid_request_error", "schema",
                          "schema: must be a JSON object");
            return false;
        }
    } else { /* raw image bytes (preprocess) */
        in->img = malloc(r->len ? r->len : 1);
        if (in->img == NULL) {
            ap__req_error(r, 500, "api_error", NULL, "out of memory");
            return false;
        }
        if (r->len)
            memcpy(in->img, r->body, r->len);
        in->img_len = r->len;
    }
    json_t *j = in->json;
    in->task = json_string_value(json_object_get(j, "task"));
    in->prompt = json_string_value(json_object_get(j, "prompt"));
    in->model = json_string_value(json_object_get(j, "model"));
    in->target = json_string_value(json_object_get(j, "target"));
    in->format = json_string_value(json_object_get(j, "format"));
    return true;
}

void ap__api_analyze(struct ap__req *r)
{
    struct native_in in;
    if (!native_parse(r, &in, false))
        goto out;
    const ap_config *cfg = r->gw->cfg;
    const char *task = in.task ? in.task : "describe";
    free(r->task_header);
    r->task_header = strdup(task);
    const ap_task_conf *tc = ap_config_task(cfg, task);
    const char *prompt = in.prompt;
    bool want_json = in.schema != NULL;
    for (size_t i = 0; i < sizeof(builtin_tasks) / sizeof(builtin_tasks[0]); i++)
        if (strcmp(builtin_tasks[i].task, task) == 0) {
            if (prompt == NULL)
                prompt = builtin_tasks[i].prompt;
            want_json = want_json || builtin_tasks[i].json;
        }
    if (tc && tc->prompt && in.prompt == NULL) /* the config's prompt beats the built-in one */
        prompt = tc->prompt;
    if (prompt == NULL)
        prompt = builtin_tasks[0].prompt;
    const char *model = in.model             ? in.model
                        : tc && tc->model    ? tc->model
                        : cfg->default_model ? cfg->default_model
                                             : "local";
    /* The canonical request: one user message with the prompt and the image. */
    char *b64 = ap_base64_encode(in.img, in.img_len);
    if (b64 == NULL) {
        ap__req_error(r, 500, "api_error", NULL, "out of memory");
        goto out;
    }
    size_t n = strlen(b64) + 64;
    char *durl = malloc(n);
    if (durl == NULL) {
        free(b64);
        ap__req_error(r, 500, "api_error", NULL, "out of memory");
        goto out;
    }
    /* The media type here is only a label: the pipeline sniffs the bytes. */
    snprintf(durl, n, "data:application/octet-stream;base64,%s", b64);
    free(b64);
    json_t *canon = json_pack("{s:s, s:[{s:s, s:[{s:s, s:s}, {s:s, s:{s:s}}]}]}", "model", model,
                              "messages", "role", "user", "content", "type", "text", "text", prompt,
                              "type", "image_url", "image_url", "url", durl);
    free(durl);
    if (canon == NULL) {
        ap__req_error(r, 500, "api_error", NULL, "out of memory");
        goto out;
    }
    if (in.schema)
        json_object_set_new(canon, "response_format",
                            json_pack("{s:s, s:{s:s, s:O}}", "type", "json_schema", "json_schema",
                                      "name", "result", "schema", in.schema));
    else if (want_json)
        json_object_set_new(canon, "response_format", json_pack("{s:s}", "type", "json_object"));
    ap__chat_run(r, canon);
out:
    native_in_release(&in);
}

void ap__api_preprocess(struct ap__req *r)
{
    struct native_in in;
    ap_prep_result res = {0};
    ap_error err = {0};
    if (!native_parse(r, &in, true))
        goto out;
    const char *target = in.target ? in.target : r->query_target ? r->query_target : "default";
    const char *format = in.format ? in.format : r->query_format ? r->query_format : "jpeg";
    ap_prep_opts o = r->gw->cfg->prep;
    if (ap_prep_opts_target(&o, target) != AP_OK) {
        ap__req_error(r, 400, "invalid_request_error", "target", "target: unknown \"%s\"", target);
        goto out;
    }
    if (strcmp(format, "png") == 0)
        o.encoding = AP_ENC_PNG;
    else if (strcmp(format, "webp") == 0)
        o.encoding = AP_ENC_WEBP;
    else if (strcmp(format, "jpeg") != 0 && strcmp(format, "jpg") != 0) {
        ap__req_error(r, 400, "invalid_request_error", "format",
                      "format: must be jpeg, png or webp");
        goto out;
    }
    ap_status rc = ap_prep(in.img, in.img_len, &o, &res, &err);
    if (rc != AP_OK) {
        ap__req_error(r,
                      rc == AP_ETOOLARGE      ? 413
                      : rc == AP_EUNSUPPORTED ? 415
                                              : 400,
                      ap_strerror(rc), "image", "image refused: %s", err.msg);
        goto out;
    }
    r->prep_ms = res.ms.total_ms;
    char w[16], h[16], ow[16], oh[16], ms[24], ph[17], dh[17], meta[96];
    snprintf(w, sizeof(w), "%u", res.in_width);
    snprintf(h, sizeof(h), "%u", res.in_height);
    snprintf(ow, sizeof(ow), "%u", res.out_width);
    snprintf(oh, sizeof(oh), "%u", res.out_height);
    snprintf(ms, sizeof(ms), "%.2f", res.ms.total_ms);
    ap_hash64_hex(res.phash, ph);
    ap_hash64_hex(res.dhash, dh);
    ap_meta_describe(res.meta_removed, meta, sizeof(meta));
    bool as_json = (r->query_response && strcmp(r->query_response, "json") == 0) ||
                   (r->content_type && strncasecmp(r->content_type, "application/json", 16) == 0 &&
                    !(r->query_response && strcmp(r->query_response, "image") == 0));
    if (as_json) {
        char *b64 = ap_base64_encode(res.out, res.out_len);
        json_t *j =
            json_pack("{s:s, s:s, s:i, s:i, s:I, s:i, s:i, s:I, s:s, s:s, s:s, s:s, "
                      "s:i, s:s, s:b, s:f, s:s?}",
                      "format", ap_format_name(res.in_format), "media_type", res.out_media_type,
                      "original_width", (int)res.in_width, "original_height", (int)res.in_height,
                      "original_bytes", (json_int_t)res.in_bytes, "width", (int)res.out_width,
                      "height", (int)res.out_height, "bytes", (json_int_t)res.out_len, "sha256",
                      res.sha256_hex, "phash", ph, "dhash", dh, "target", target, "orientation",
                      res.orientation, "metadata_removed", meta, "icc_converted", res.icc_converted,
                      "preprocess_ms", res.ms.total_ms, "image_base64", b64);
        free(b64);
        ap__req_respond_json(r, 200, j, NULL);
    } else {
        const char *hdr[] = {"x-aperture-original-width",
                             w,
                             "x-aperture-original-height",
                             h,
                             "x-aperture-width",
                             ow,
                             "x-aperture-height",
                             oh,
                             "x-aperture-sha256",
                             res.sha256_hex,
                             "x-aperture-phash",
                             ph,
                             "x-aperture-dhash",
                             dh,
                             "x-aperture-metadata-removed",
                             meta,
                             "x-aperture-preprocess-ms",
                             ms,
                             NULL};
        ap__req_respond(r, 200, res.out_media_type, (char *)res.out, res.out_len, hdr);
        res.out = NULL; /* ownership moved to the response */
    }
out:
    ap_prep_result_release(&res);
    native_in_release(&in);
}

void ap__api_models(struct ap__req *r)
{
    const ap_config *cfg = r->gw->cfg;
    json_t *data = json_array();
    for (size_t i = 0; i < cfg->n_models; i++)
        json_array_append_new(data, json_pack("{s:s, s:s, s:i, s:s}", "id", cfg->models[i].name,
                                              "object", "model", "created", 0, "owned_by",
                                              cfg->models[i].provider));
    bool has_local = false;
    for (size_t i = 0; i < cfg->n_models; i++)
        has_local = has_local || strcmp(cfg->models[i].name, "local") == 0;
    if (!has_local)
        json_array_append_new(data, json_pack("{s:s, s:s, s:i, s:s}", "id", "local", "object",
                                              "model", "created", 0, "owned_by", "local"));
    ap__req_respond_json(r, 200, json_pack("{s:s, s:o}", "object", "list", "data", data), NULL);
}

/*
 * GET /v1/admin/cache: stats. DELETE /v1/admin/cache?key=HEX | ?task=NAME | ?all=1: purge.
 * Behind the admin key (APERTURE_ADMIN_KEY, sent as a bearer token or x-api-key); without one
 * configured the endpoint is off (403).
 */
void ap__api_admin_cache(struct ap__req *r)
{
    struct ap_gateway *gw = r->gw;
    if (!ap__req_admin(r))
        return;
    if (gw->cache == NULL) {
        ap__req_error(r, 404, "not_found", NULL, "the cache is off");
        return;
    }
    ap_error err = {0};
    if (r->is_delete) {
        const char *key = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "key");
        const char *task = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "task");
        const char *all = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "all");
        if (!key && !task && !(all && strcmp(all, "1") == 0)) {
            ap__req_error(r, 400, "invalid_request_error", NULL,
                          "purge needs ?key=HEX, ?task=NAME or ?all=1");
            return;
        }
        long n = 0;
        ap_status rc = ap_cache_purge(gw->cache, key, task, &n, &err);
        if (rc != AP_OK) {
            ap__req_error(r, rc == AP_EINVAL ? 400 : 503, ap_strerror(rc), NULL, "%s", err.msg);
            return;
        }
        ap__req_respond_json(r, 200, json_pack("{s:I}", "purged", (json_int_t)n), NULL);
        return;
    }
    ap_cache_stats st;
    if (ap_cache_stats_get(gw->cache, &st, &err) != AP_OK) {
        ap__req_error(r, 503, "unavailable", NULL, "%s", err.msg);
        return;
    }
    ap__req_respond_json(r, 200,
                         json_pack("{s:s, s:b, s:I, s:I, s:i}", "backend", st.backend, "backend_up",
                                   st.backend_up, "entries", (json_int_t)st.entries, "bytes",
                                   (json_int_t)st.bytes, "near_threshold", gw->near_threshold),
                         NULL);
}
