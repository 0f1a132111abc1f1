/*
 * gemini.c - the Gemini API wire (generativelanguage.googleapis.com, v1beta):
 * POST {base_url}/models/{model}:generateContent, or :streamGenerateContent?alt=sse, which
 * answers with SSE whose every data line is a whole GenerateContentResponse.
 *
 * What the translation does with the canonical request:
 *   - system and developer messages become systemInstruction (one text part, their texts a
 *     blank line apart); user turns role "user", assistant turns role "model"; empty texts are
 *     dropped (the API refuses empty parts) and so is a turn left with no parts;
 *   - image_url parts must be data: URLs and become inline_data. Gemini takes no arbitrary
 *     image URLs (only its own file URIs), so an http(s) URL fails with AP_EINVAL "gemini:
 *     image URLs must be fetched first"; the server fetches every URL before a provider runs,
 *     so in practice every image arrives here as a data: URL;
 *   - generationConfig: maxOutputTokens (max_completion_tokens or max_tokens; omitted when not
 *     given), temperature, topP, stopSequences, and responseMimeType "application/json" for
 *     response_format json_object/json_schema. For json_schema the schema also goes into the
 *     system instruction: OpenAI's JSON Schema is not the OpenAPI subset responseSchema takes;
 *   - tools, tool turns and n > 1 fail with AP_EINVAL, as for Anthropic; penalties, seed and
 *     logprobs are dropped.
 * Responses: the text parts of the first candidate are concatenated (thought summaries are
 * skipped); completion_tokens counts candidates plus thoughts tokens, since both are billed as
 * output; image_tokens is the IMAGE share of promptTokensDetails.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/core.h"
#include "provider/wire.h"

#define PREFIX "gemini"

/* ---- canonical -> GenerateContentRequest -------------------------------------------------- */

/* Append one canonical content part to parts as a Gemini part. */
static ap_status to_part(const json_t *part, size_t i, size_t k, json_t *parts, ap_error *err)
{
    const char *type = json_string_value(json_object_get(part, "type"));
    const char *url, *mime, *data;
    size_t mime_len, data_len;
    json_t *g = NULL;
    ap_status st;

    if (type == NULL)
        return ap_error_set(err, AP_EINVAL,
                            PREFIX ": messages[%zu].content[%zu] must be an object with a type", i,
                            k);
    if (strcmp(type, "text") == 0) {
        json_t *text = json_object_get(part, "text");
        if (!json_is_string(text))
            return ap_error_set(err, AP_EINVAL,
                                PREFIX ": messages[%zu].content[%zu].text must be a string", i, k);
        if (json_string_length(text) == 0)
            return AP_OK;
        g = json_pack("{s:O}", "text", text);
    } else if (strcmp(type, "image_url") == 0) {
        if ((st = ap__wire_image_url(part, i, k, PREFIX, &url, err)) != AP_OK)
            return st;
        if (ap__wire_is_http_url(url))
            return ap_error_set(err, AP_EINVAL, PREFIX ": image URLs must be fetched first");
        if (!ap__wire_data_url(url, &mime, &mime_len, &data, &data_len))
            return ap_error_set(err, AP_EINVAL,
                                PREFIX ": messages[%zu].content[%zu]: the image url must be a "
                                       "base64 data: url",
                                i, k);
        g = json_pack("{s:{s:s%, s:s%}}", "inline_data", "mime_type", mime, mime_len, "data", data,
                      data_len);
    } else {
        return ap_error_set(err, AP_EINVAL,
                            PREFIX ": messages[%zu].content[%zu].type is not supported (text and "
                                   "image_url are)",
                            i, k);
    }
    if (g == NULL || json_array_append_new(parts, g) != 0)
        return ap_error_set(err, AP_ENOMEM, PREFIX ": out of memory");
    return AP_OK;
}

/* A user/assistant message's content as a new array of parts (possibly empty). */
static ap_status to_parts(const json_t *content, size_t i, json_t **out, ap_error *err)
{
    ap_status st = AP_OK;
    json_t *parts = json_array();
    if (parts == NULL)
        return ap_error_set(err, AP_ENOMEM, PREFIX ": out of memory");
    if (json_is_string(content)) {
        if (json_string_length(content) > 0 &&
            json_array_append_new(parts, json_pack("{s:O}", "text", content)) != 0)
            st = ap_error_set(err, AP_ENOMEM, PREFIX ": out of memory");
    } else if (json_is_array(content)) {
        for (size_t k = 0; st == AP_OK && k < json_array_size(content); k++)
            st = to_part(json_array_get(content, k), i, k, parts, err);
    } else {
        st = ap_error_set(err, AP_EINVAL,
                          PREFIX ": messages[%zu].content must be a string or an array", i);
    }
    if (st != AP_OK) {
        json_decref(parts);
        return st;
    }
    *out = parts;
    return AP_OK;
}

/* Model names go into the URL path: letters, digits, '.', '-', '_' only ("models/" may lead). */
static const char *model_path(const char *m)
{
    if (m == NULL)
        return NULL;
    if (strncmp(m, "models/", 7) == 0)
        m += 7;
    if (m[0] == '\0' || m[0] == '.')
        return NULL;
    for (const char *c = m; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '.' || *c == '-' || *c == '_'))
            return NULL;
    return m;
}

static ap_status gemini_build(const ap_provider_conf *p, const char *upstream_model,
                              const json_t *req, bool stream, struct ap__upreq *out, ap_error *err)
{
    struct ap__upreq r = {0};
    struct ap__wire_buf sys = {0}, path = {0};
    const json_t *msgs, *temperature, *top_p;
    json_t *body = NULL, *contents = NULL, *parts = NULL, *stop = NULL, *gen = NULL;
    json_int_t max_tokens;
    bool json_mode;
    const char *role, *key, *model;
    ap_status st;

    if (AP_NEVER(p == NULL || out == NULL))
        return ap_error_set(err, AP_EINVAL, PREFIX ": no provider or no output");
    if ((model = model_path(upstream_model)) == NULL)
        return ap_error_set(err, AP_EINVAL,
                            PREFIX ": the upstream model name is not a plain "
                                   "model id");
    if ((st = ap__wire_req_messages(req, PREFIX, &msgs, err)) != AP_OK)
        return st;
    if ((contents = json_array()) == NULL)
        goto oom;
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        const json_t *m = json_array_get(msgs, i);
        if ((st = ap__wire_msg_role(m, i, PREFIX, &role, err)) != AP_OK)
            goto out;
        if (strcmp(role, "system") == 0 || strcmp(role, "developer") == 0) {
            if ((st = ap__wire_system_text(json_object_get(m, "content"), i, PREFIX, &sys, err)) !=
                AP_OK)
                goto out;
            continue;
        }
        if ((st = to_parts(json_object_get(m, "content"), i, &parts, err)) != AP_OK)
            goto out;
        if (json_array_size(parts) > 0) {
            json_t *turn =
                json_pack("{s:s, s:O}", "role", strcmp(role, "assistant") == 0 ? "model" : "user",
                          "parts", parts);
            if (turn == NULL || json_array_append_new(contents, turn) != 0)
                goto oom;
        }
        json_decref(parts);
        parts = NULL;
    }
    const char *rft =
        json_string_value(json_object_get(json_object_get(req, "response_format"), "type"));
    bool want_schema = rft != NULL && strcmp(rft, "json_schema") == 0;
    if ((st = ap__wire_json_mode(req, PREFIX, &json_mode, want_schema ? &sys : NULL, err)) !=
            AP_OK ||
        (st = ap__wire_max_tokens(req, PREFIX, -1, &max_tokens, err)) != AP_OK ||
        (st = ap__wire_number(req, "temperature", PREFIX, &temperature, err)) != AP_OK ||
        (st = ap__wire_number(req, "top_p", PREFIX, &top_p, err)) != AP_OK ||
        (st = ap__wire_stop(req, PREFIX, &stop, err)) != AP_OK)
        goto out;

    if ((gen = json_object()) == NULL ||
        (max_tokens > 0 && json_object_set_new(gen, "maxOutputTokens", json_integer(max_tokens))) ||
        (temperature && json_object_set(gen, "temperature", (json_t *)temperature) != 0) ||
        (top_p && json_object_set(gen, "topP", (json_t *)top_p) != 0) ||
        (stop && json_object_set(gen, "stopSequences", stop) != 0) ||
        (json_mode &&
         json_object_set_new(gen, "responseMimeType", json_string("application/json")) != 0))
        goto oom;
    if ((body = json_pack("{s:O}", "contents", contents)) == NULL)
        goto oom;
    if (sys.len > 0 &&
        json_object_set_new(body, "systemInstruction",
                            json_pack("{s:[{s:s%}]}", "parts", "text", sys.p, sys.len)) != 0)
        goto oom;
    if (json_object_size(gen) > 0 && json_object_set(body, "generationConfig", gen) != 0)
        goto oom;

    if (ap__wire_buf_adds(&path, "/models/") != AP_OK || ap__wire_buf_adds(&path, model) != AP_OK ||
        ap__wire_buf_adds(&path, stream ? ":streamGenerateContent?alt=sse" : ":generateContent") !=
            AP_OK)
        goto oom;
    if ((st = ap__wire_url(&r, p, PREFIX, path.p, NULL, err)) != AP_OK ||
        (st = ap__wire_header(&r, PREFIX, "Content-Type", "application/json", err)) != AP_OK ||
        (st = ap__wire_header(&r, PREFIX, "Accept",
                              stream ? "text/event-stream" : "application/json", err)) != AP_OK)
        goto out;
    if ((key = ap__wire_key(p)) != NULL &&
        (st = ap__wire_header(&r, PREFIX, "x-goog-api-key", key, err)) != AP_OK)
        goto out;
    if ((st = ap__wire_body(&r, body, PREFIX, err)) != AP_OK)
        goto out;
    *out = r;
    r = (struct ap__upreq){0};
    goto out;
oom:
    st = ap_error_set(err, AP_ENOMEM, PREFIX ": out of memory");
out:
    ap__wire_buf_release(&sys);
    ap__wire_buf_release(&path);
    json_decref(parts);
    json_decref(contents);
    json_decref(stop);
    json_decref(gen);
    json_decref(body);
    ap__upreq_release(&r);
    return st;
}

/* ---- GenerateContentResponse -> canonical -------------------------------------------------- */

/* finishReason -> finish_reason; NULL while the candidate is unfinished. */
static const char *finish_of(const char *fr)
{
    if (fr == NULL || fr[0] == '\0' || strcmp(fr, "FINISH_REASON_UNSPECIFIED") == 0)
        return NULL;
    if (strcmp(fr, "MAX_TOKENS") == 0)
        return "length";
    static const char *const filtered[] = {
        "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"};
    for (size_t i = 0; i < sizeof(filtered) / sizeof(filtered[0]); i++)
        if (strcmp(fr, filtered[i]) == 0)
            return "content_filter";
    return "stop"; /* STOP, OTHER, LANGUAGE, MALFORMED_FUNCTION_CALL, and later additions */
}

/* Fold usageMetadata into u (streams repeat it, growing; the last one counts). */
static void read_usage(const json_t *um, struct ap__usage *u)
{
    if (!json_is_object(um))
        return;
    long prompt = ap__wire_count(um, "promptTokenCount");
    long cand = ap__wire_count(um, "candidatesTokenCount");
    long thoughts = ap__wire_count(um, "thoughtsTokenCount");
    if (prompt >= 0)
        u->input_tokens = prompt;
    if (cand >= 0 || thoughts >= 0)
        u->output_tokens = (cand > 0 ? cand : 0) + (thoughts > 0 ? thoughts : 0);
    const json_t *details = json_object_get(um, "promptTokensDetails");
    long image = -1;
    for (size_t i = 0; i < json_array_size(details); i++) {
        const json_t *d = json_array_get(details, i);
        const char *modality = json_string_value(json_object_get(d, "modality"));
        long n = ap__wire_count(d, "tokenCount");
        if (modality != NULL && strcmp(modality, "IMAGE") == 0 && n >= 0)
            image = (image > 0 ? image : 0) + n;
    }
    if (image >= 0)
        u->image_tokens = image;
}

/* Append the first candidate's text (thought parts skipped) to b. */
static ap_status cand_text(const json_t *cand, struct ap__wire_buf *b)
{
    const json_t *parts = json_object_get(json_object_get(cand, "content"), "parts");
    for (size_t k = 0; k < json_array_size(parts); k++) {
        const json_t *part = json_array_get(parts, k);
        const json_t *t = json_object_get(part, "text");
        if (!json_is_string(t) || json_is_true(json_object_get(part, "thought")))
            continue;
        if (ap__wire_buf_add(b, json_string_value(t), json_string_length(t)) != AP_OK)
            return AP_ENOMEM;
    }
    return AP_OK;
}

/* The prompt itself was blocked: no candidates, promptFeedback.blockReason set. */
static bool prompt_blocked(const json_t *doc)
{
    return json_array_size(json_object_get(doc, "candidates")) == 0 &&
           json_is_string(json_object_get(json_object_get(doc, "promptFeedback"), "blockReason"));
}

/* The upstream's error inside a 2xx document or a stream event, if there is one. */
static bool has_error(const json_t *doc)
{
    const json_t *e = json_object_get(doc, "error");
    return e != NULL && !json_is_null(e);
}

static ap_status error_of(const ap_provider_conf *p, const json_t *doc, ap_error *err)
{
    const json_t *m = ap__wire_error_message(doc);
    if (m == NULL)
        return ap_error_set(err, AP_EUPSTREAM, PREFIX ": the response is an error");
    return ap__wire_upstream_error(p, PREFIX, json_string_value(m), json_string_length(m), err);
}

static ap_status gemini_parse(const ap_provider_conf *p, long status, const char *body, size_t len,
                              json_t **resp, struct ap__usage *usage, ap_error *err)
{
    struct ap__usage u = {-1, -1, -1};
    struct ap__wire_buf text = {0};
    json_t *doc = NULL, *r = NULL;
    const char *finish;
    char gen[64];
    ap_status st = AP_OK;

    if (AP_NEVER(resp == NULL))
        return ap_error_set(err, AP_EINVAL, PREFIX ": no output");
    if (status < 200 || status > 299)
        return ap__wire_http_error(p, PREFIX, status, body, len, err);
    if (body == NULL || (doc = json_loadb(body, len, AP__WIRE_JSON_LOAD, NULL)) == NULL)
        return ap_error_set(err, AP_EDECODE, PREFIX ": the response is not json");
    if (!json_is_object(doc)) {
        st = ap_error_set(err, AP_EDECODE, PREFIX ": the response is not a json object");
        goto out;
    }
    if (has_error(doc)) {
        st = error_of(p, doc, err);
        goto out;
    }
    const json_t *cand = json_array_get(json_object_get(doc, "candidates"), 0);
    if (json_is_object(cand)) {
        if (cand_text(cand, &text) != AP_OK)
            goto oom;
        finish = finish_of(json_string_value(json_object_get(cand, "finishReason")));
        if (finish == NULL)
            finish = "stop";
    } else if (prompt_blocked(doc)) {
        finish = "content_filter";
    } else {
        st = ap_error_set(err, AP_EDECODE, PREFIX ": the response has no candidates");
        goto out;
    }
    read_usage(json_object_get(doc, "usageMetadata"), &u);
    const char *id = json_string_value(json_object_get(doc, "responseId"));
    const char *model = json_string_value(json_object_get(doc, "modelVersion"));
    if (id == NULL || id[0] == '\0') {
        ap__wire_gen_id(gen, sizeof(gen), "chatcmpl-");
        id = gen;
    }
    r = ap__wire_completion(id, (json_int_t)time(NULL), model ? model : "", text.p, text.len,
                            finish, &u);
    if (r == NULL)
        goto oom;
    *resp = r;
    if (usage != NULL)
        *usage = u;
    goto out;
oom:
    st = ap_error_set(err, AP_ENOMEM, PREFIX ": out of memory");
out:
    ap__wire_buf_release(&text);
    json_decref(doc);
    return st;
}

/* ---- stream ------------------------------------------------------------------------------- */

/*
 * Each event is a GenerateContentResponse: the first yields the role chunk, each one's text a
 * content chunk; the one with a finishReason (or a blocked prompt) the finish chunk and the
 * usage chunk, and the stream is done: Gemini sends no end marker.
 */
static ap_status gemini_event(struct ap__stream *s, const char *event, const char *data, size_t len,
                              ap_error *err)
{
    struct ap__wire_buf text = {0};
    json_t *ev = NULL;
    ap_status st;
    (void)event;

    if ((st = ap__wire_event_json(s, data, len, &ev, err)) != AP_OK)
        return st;
    if (has_error(ev)) {
        st = error_of(s->p, ev, err);
        goto out;
    }
    read_usage(json_object_get(ev, "usageMetadata"), &s->usage);
    if (!s->role_sent) {
        ap__wire_stream_set_id(s, json_string_value(json_object_get(ev, "responseId")));
        if (ap__wire_stream_set_model(s, json_string_value(json_object_get(ev, "modelVersion"))) !=
            AP_OK)
            goto oom;
    }
    if ((st = ap__wire_emit_role(s, err)) != AP_OK)
        goto out;
    const json_t *cand = json_array_get(json_object_get(ev, "candidates"), 0);
    if (cand_text(cand, &text) != AP_OK)
        goto oom;
    if ((st = ap__wire_emit_text(s, text.p, text.len, err)) != AP_OK)
        goto out;
    const char *finish = finish_of(json_string_value(json_object_get(cand, "finishReason")));
    if (finish == NULL && prompt_blocked(ev))
        finish = "content_filter";
    if (finish != NULL) {
        if ((st = ap__wire_emit_finish(s, finish, err)) != AP_OK ||
            (st = ap__wire_emit_usage(s, err)) != AP_OK)
            goto out;
        s->done = true;
    }
    goto out;
oom:
    st = ap_error_set(err, AP_ENOMEM, PREFIX ": out of memory");
out:
    ap__wire_buf_release(&text);
    json_decref(ev);
    return st;
}

/* Gemini's end is the finish reason; a body that ends before one was cut off. */
static ap_status gemini_eof(struct ap__stream *s, ap_error *err)
{
    return ap_error_set(err, AP_ENETWORK, "%s: the stream ended before it finished", s->prefix);
}

static struct ap__stream *gemini_stream_new(const ap_provider_conf *p, const char *model,
                                            ap__chunk_fn emit, void *ctx)
{
    struct ap__stream *s = ap__wire_stream_new(p, PREFIX, model, emit, ctx);
    if (s != NULL) {
        s->on_event = gemini_event;
        s->on_eof = gemini_eof;
    }
    return s;
}

const struct ap__provider_ops ap__gemini_ops = {
    .name = PREFIX,
    .build = gemini_build,
    .parse = gemini_parse,
    .stream_new = gemini_stream_new,
    .stream_feed = ap__wire_stream_feed,
    .stream_free = ap__wire_stream_free,
};
