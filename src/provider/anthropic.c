/*
 * anthropic.c - the Anthropic Messages wire (POST /v1/messages, anthropic-version 2023-06-01),
 * both ways: as a provider (canonical -> Messages request, Messages response/stream ->
 * canonical) and as a front end for clients that speak Messages (request -> canonical,
 * canonical response -> Messages response, canonical chunks -> Messages SSE events).
 *
 * What the translation does with the canonical request:
 *   - system and developer messages become the top-level "system" string, their texts a blank
 *     line apart; user/assistant turns keep their order (the API merges consecutive turns of
 *     one role itself);
 *   - text parts stay text blocks; image_url parts become image blocks: data: URLs a base64
 *     source, http(s) URLs a url source (the server normally fetched them already);
 *   - max_completion_tokens or max_tokens -> max_tokens, which the API requires: 4096 when the
 *     client gave none; temperature and top_p pass as they are (Anthropic's temperature range is
 *     0..1, a larger value is the upstream's to refuse); stop -> stop_sequences; user ->
 *     metadata.user_id;
 *   - response_format json_object/json_schema: this API version has no JSON mode, so an
 *     instruction to answer with JSON only (and the schema) is appended to the system prompt;
 *   - tools, tool turns and n > 1 fail with AP_EINVAL ("tools are not supported yet"): tool
 *     calls need a two-way mapping of ids and arguments that is not written yet. Sampling knobs
 *     Messages lacks (presence/frequency penalties, seed, logprobs) are dropped.
 * Responses: the text blocks are concatenated into the message content (thinking and other
 * block types are skipped); usage.prompt_tokens counts input plus cache-creation plus
 * cache-read tokens, since all of them were sent.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/core.h"
#include "provider/wire.h"

#define PREFIX             "anthropic"
#define ANTHROPIC_VERSION  "2023-06-01"
#define DEFAULT_MAX_TOKENS 4096

/* ---- canonical -> Messages request ---------------------------------------------------------- */

/* One canonical content part as a Messages content block (new reference in *out). */
static ap_status to_block(const json_t *part, size_t i, size_t k, json_t **out, ap_error *err)
{
    const char *type = json_string_value(json_object_get(part, "type"));
    const char *url, *mime, *data;
    size_t mime_len, data_len;
    json_t *b = NULL;
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
        b = json_pack("{s:s, s:O}", "type", "text", "text", text);
    } else if (strcmp(type, "image_url") == 0) {
        if ((st = ap__wire_image_url(part, i, k, PREFIX, &url, err)) != AP_OK)
            return st;
        if (ap__wire_data_url(url, &mime, &mime_len, &data, &data_len))
            b = json_pack("{s:s, s:{s:s, s:s%, s:s%}}", "type", "image", "source", "type", "base64",
                          "media_type", mime, mime_len, "data", data, data_len);
        else if (ap__wire_is_http_url(url))
            b = json_pack("{s:s, s:{s:s, s:s}}", "type", "image", "source", "type", "url", "url",
                          url);
        else
            return ap_error_set(err, AP_EINVAL,
                                PREFIX ": messages[%zu].content[%zu]: the image url must be a "
                                       "base64 data: url or an http(s) url",
                                i, k);
    } else {
        return ap_error_set(err, AP_EINVAL,
                            PREFIX ": messages[%zu].content[%zu].type is not supported (text and "
                                   "image_url are)",
                            i, k);
    }
    if (b == NULL)
        return ap_error_set(err, AP_ENOMEM, PREFIX ": out of memory");
    *out = b;
    return AP_OK;
}

/* A user/assistant message's content: strings stay strings, parts become blocks. */
static ap_status to_content(const json_t *content, size_t i, json_t **out, ap_error *err)
{
    json_t *blocks = NULL, *b = NULL;
    ap_status st;

    if (json_is_string(content)) {
        *out = json_incref((json_t *)content);
        return AP_OK;
    }
    if (!json_is_array(content))
        return ap_error_set(err, AP_EINVAL,
                            PREFIX ": messages[%zu].content must be a string or an array", i);
    if ((blocks = json_array()) == NULL)
        return ap_error_set(err, AP_ENOMEM, PREFIX ": out of memory");
    for (size_t k = 0; k < json_array_size(content); k++) {
        if ((st = to_block(json_array_get(content, k), i, k, &b, err)) != AP_OK) {
            json_decref(blocks);
            return st;
        }
        if (json_array_append_new(blocks, b) != 0) {
            json_decref(blocks);
            return ap_error_set(err, AP_ENOMEM, PREFIX ": out of memory");
        }
    }
    *out = blocks;
    return AP_OK;
}

/* Build POST {base_url}/v1/messages; see the top of the file for the mapping. */
static ap_status anthropic_build(const ap_provider_conf *p, const char *upstream_model,
                                 const json_t *req, bool stream, struct ap__upreq *out,
                                 ap_error *err)
{
    struct ap__upreq r = {0};
    struct ap__wire_buf sys = {0};
    const json_t *msgs, *temperature, *top_p;
    json_t *body = NULL, *messages = NULL, *content = NULL, *stop = NULL;
    json_int_t max_tokens;
    bool json_mode;
    const char *role, *key;
    ap_status st;

    if (AP_NEVER(p == NULL || out == NULL))
        return ap_error_set(err, AP_EINVAL, PREFIX ": no provider or no output");
    if (upstream_model == NULL || upstream_model[0] == '\0')
        return ap_error_set(err, AP_EINVAL, PREFIX ": no upstream model");
    if ((st = ap__wire_req_messages(req, PREFIX, &msgs, err)) != AP_OK)
        return st;
    if ((messages = json_array()) == NULL)
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
        if ((st = to_content(json_object_get(m, "content"), i, &content, err)) != AP_OK)
            goto out;
        json_t *turn = json_pack("{s:s, s:O}", "role", role, "content", content);
        json_decref(content);
        content = NULL;
        if (turn == NULL || json_array_append_new(messages, turn) != 0)
            goto oom;
    }
    if ((st = ap__wire_json_mode(req, PREFIX, &json_mode, &sys, err)) != AP_OK ||
        (st = ap__wire_max_tokens(req, PREFIX, DEFAULT_MAX_TOKENS, &max_tokens, err)) != AP_OK ||
        (st = ap__wire_number(req, "temperature", PREFIX, &temperature, err)) != AP_OK ||
        (st = ap__wire_number(req, "top_p", PREFIX, &top_p, err)) != AP_OK ||
        (st = ap__wire_stop(req, PREFIX, &stop, err)) != AP_OK)
        goto out;

    body = json_pack("{s:s, s:I}", "model", upstream_model, "max_tokens", max_tokens);
    if (body == NULL)
        goto oom;
    if (sys.len > 0 && json_object_set_new(body, "system", json_stringn(sys.p, sys.len)) != 0)
        goto oom;
    if (json_object_set(body, "messages", messages) != 0 ||
        (temperature && json_object_set(body, "temperature", (json_t *)temperature) != 0) ||
        (top_p && json_object_set(body, "top_p", (json_t *)top_p) != 0) ||
        (stop && json_object_set(body, "stop_sequences", stop) != 0) ||
        (stream && json_object_set_new(body, "stream", json_true()) != 0))
        goto oom;
    const json_t *user = json_object_get(req, "user");
    if (json_is_string(user) && json_string_length(user) > 0 &&
        json_object_set_new(body, "metadata", json_pack("{s:O}", "user_id", user)) != 0)
        goto oom;

    if ((st = ap__wire_url(&r, p, PREFIX, "/v1/messages", NULL, err)) != AP_OK ||
        (st = ap__wire_header(&r, PREFIX, "content-type", "application/json", err)) != AP_OK ||
        (st = ap__wire_header(&r, PREFIX, "accept",
                              stream ? "text/event-stream" : "application/json", err)) != AP_OK ||
        (st = ap__wire_header(&r, PREFIX, "anthropic-version", ANTHROPIC_VERSION, err)) != AP_OK)
        goto out;
    if ((key = ap__wire_key(p)) != NULL &&
        (st = ap__wire_header(&r, PREFIX, "x-api-key", key, err)) != AP_OK)
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
    json_decref(content);
    json_decref(messages);
    json_decref(stop);
    json_decref(body);
    ap__upreq_release(&r);
    return st;
}

/* ---- Messages response -> canonical ------------------------------------------------------- */

/* Anthropic stop_reason -> OpenAI finish_reason. */
static const char *finish_of(const char *stop_reason)
{
    if (stop_reason == NULL)
        return "stop";
    if (strcmp(stop_reason, "max_tokens") == 0 ||
        strcmp(stop_reason, "model_context_window_exceeded") == 0)
        return "length";
    if (strcmp(stop_reason, "tool_use") == 0)
        return "tool_calls";
    if (strcmp(stop_reason, "refusal") == 0)
        return "content_filter";
    return "stop"; /* end_turn, stop_sequence, pause_turn and whatever comes next */
}

/* Fold a Messages usage object into u: input counts every token sent, cached or not. */
static void read_usage(const json_t *usage, struct ap__usage *u)
{
    long in = ap__wire_count(usage, "input_tokens");
    long out = ap__wire_count(usage, "output_tokens");
    if (in >= 0) {
        long cc = ap__wire_count(usage, "cache_creation_input_tokens");
        long cr = ap__wire_count(usage, "cache_read_input_tokens");
        u->input_tokens = in + (cc > 0 ? cc : 0) + (cr > 0 ? cr : 0);
    }
    if (out >= 0)
        u->output_tokens = out;
}

static ap_status anthropic_parse(const ap_provider_conf *p, long status, const char *body,
                                 size_t len, json_t **resp, struct ap__usage *usage, ap_error *err)
{
    struct ap__usage u = {-1, -1, -1};
    struct ap__wire_buf text = {0};
    json_t *doc = NULL, *r = NULL;
    const json_t *m;
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
    const char *type = json_string_value(json_object_get(doc, "type"));
    if (type != NULL && strcmp(type, "error") == 0) {
        m = ap__wire_error_message(doc);
        st =
            m ? ap__wire_upstream_error(p, PREFIX, json_string_value(m), json_string_length(m), err)
              : ap_error_set(err, AP_EUPSTREAM, PREFIX ": the response is an error");
        goto out;
    }
    const json_t *content = json_object_get(doc, "content");
    if (!json_is_array(content)) {
        st = ap_error_set(err, AP_EDECODE, PREFIX ": the response has no content");
        goto out;
    }
    for (size_t k = 0; k < json_array_size(content); k++) {
        const json_t *blk = json_array_get(content, k);
        const char *bt = json_string_value(json_object_get(blk, "type"));
        const json_t *t = json_object_get(blk, "text");
        if (bt == NULL || strcmp(bt, "text") != 0 || !json_is_string(t))
            continue;
        if (ap__wire_buf_add(&text, json_string_value(t), json_string_length(t)) != AP_OK)
            goto oom;
    }
    read_usage(json_object_get(doc, "usage"), &u);
    const char *id = json_string_value(json_object_get(doc, "id"));
    const char *model = json_string_value(json_object_get(doc, "model"));
    if (id == NULL || id[0] == '\0') {
        ap__wire_gen_id(gen, sizeof(gen), "msg_");
        id = gen;
    }
    r = ap__wire_completion(id, (json_int_t)time(NULL), model ? model : "", text.p, text.len,
                            finish_of(json_string_value(json_object_get(doc, "stop_reason"))), &u);
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

/* ---- Messages stream -> canonical chunks -------------------------------------------------- */

/*
 * message_start -> the role chunk (and input usage); text in content_block_start/_delta ->
 * content chunks; message_delta -> the finish chunk (and output usage); message_stop -> the
 * usage chunk, done; error -> AP_EUPSTREAM. ping, content_block_stop, non-text deltas
 * (thinking, signatures, tool input) and event types added later are ignored, as the API's
 * versioning policy asks.
 */
static ap_status anthropic_event(struct ap__stream *s, const char *event, const char *data,
                                 size_t len, ap_error *err)
{
    json_t *ev = NULL;
    const json_t *m, *t;
    ap_status st;

    if ((st = ap__wire_event_json(s, data, len, &ev, err)) != AP_OK)
        return st;
    const char *type = json_string_value(json_object_get(ev, "type"));
    if (type == NULL)
        type = event;
    if (strcmp(type, "message_start") == 0) {
        const json_t *msg = json_object_get(ev, "message");
        ap__wire_stream_set_id(s, json_string_value(json_object_get(msg, "id")));
        if (ap__wire_stream_set_model(s, json_string_value(json_object_get(msg, "model"))) !=
            AP_OK) {
            st = ap_error_set(err, AP_ENOMEM, PREFIX ": out of memory");
            goto out;
        }
        read_usage(json_object_get(msg, "usage"), &s->usage);
        st = ap__wire_emit_role(s, err);
    } else if (strcmp(type, "content_block_start") == 0) {
        const json_t *cb = json_object_get(ev, "content_block");
        const char *bt = json_string_value(json_object_get(cb, "type"));
        t = json_object_get(cb, "text");
        if (bt != NULL && strcmp(bt, "text") == 0 && json_is_string(t))
            st = ap__wire_emit_text(s, json_string_value(t), json_string_length(t), err);
    } else if (strcmp(type, "content_block_delta") == 0) {
        const json_t *d = json_object_get(ev, "delta");
        const char *dt = json_string_value(json_object_get(d, "type"));
        t = json_object_get(d, "text");
        if (dt != NULL && strcmp(dt, "text_delta") == 0 && json_is_string(t))
            st = ap__wire_emit_text(s, json_string_value(t), json_string_length(t), err);
    } else if (strcmp(type, "message_delta") == 0) {
        read_usage(json_object_get(ev, "usage"), &s->usage);
        const char *sr =
            json_string_value(json_object_get(json_object_get(ev, "delta"), "stop_reason"));
        st = ap__wire_emit_finish(s, finish_of(sr), err);
    } else if (strcmp(type, "message_stop") == 0) {
        if (!s->finished)
            st = ap__wire_emit_finish(s, "stop", err);
        if (st == AP_OK)
            st = ap__wire_emit_usage(s, err);
        s->done = true;
    } else if (strcmp(type, "error") == 0) {
        m = ap__wire_error_message(ev);
        st = m ? ap__wire_upstream_error(s->p, PREFIX, json_string_value(m), json_string_length(m),
                                         err)
               : ap_error_set(err, AP_EUPSTREAM, PREFIX ": the stream reported an error");
    }
out:
    json_decref(ev);
    return st;
}

/* The body ended before message_stop: complete if message_delta came, cut off otherwise. */
static ap_status anthropic_eof(struct ap__stream *s, ap_error *err)
{
    if (!s->finished)
        return ap_error_set(err, AP_ENETWORK, PREFIX ": the stream ended before it finished");
    s->done = true;
    return ap__wire_emit_usage(s, err);
}

static struct ap__stream *anthropic_stream_new(const ap_provider_conf *p, const char *model,
                                               ap__chunk_fn emit, void *ctx)
{
    struct ap__stream *s = ap__wire_stream_new(p, PREFIX, model, emit, ctx);
    if (s != NULL) {
        s->on_event = anthropic_event;
        s->on_eof = anthropic_eof;
    }
    return s;
}

const struct ap__provider_ops ap__anthropic_ops = {
    .name = PREFIX,
    .build = anthropic_build,
    .parse = anthropic_parse,
    .stream_new = anthropic_stream_new,
    .stream_feed = ap__wire_stream_feed,
    .stream_free = ap__wire_stream_free,
};

/* ---- front end: Messages request -> canonical ---------------------------------------------- */

/* Append one Messages content block to parts as a canonical part (thinking blocks: nothing). */
static ap_status from_block(const json_t *blk, size_t i, size_t k, json_t *parts, ap_error *err)
{
    const char *type = json_string_value(json_object_get(blk, "type"));
    json_t *part = NULL;

    if (type == NULL)
        return ap_error_set(err, AP_EINVAL,
                            "messages[%zu].content[%zu] must be an object with a "
                            "type",
                            i, k);
    if (strcmp(type, "text") == 0) {
        const json_t *text = json_object_get(blk, "text");
        if (!json_is_string(text))
            return ap_error_set(err, AP_EINVAL, "messages[%zu].content[%zu].text must be a string",
                                i, k);
        part = json_pack("{s:s, s:O}", "type", "text", "text", text);
    } else if (strcmp(type, "image") == 0) {
        const json_t *src = json_object_get(blk, "source");
        const char *st = json_string_value(json_object_get(src, "type"));
        if (st != NULL && strcmp(st, "base64") == 0) {
            const json_t *mt = json_object_get(src, "media_type");
            const json_t *data = json_object_get(src, "data");
            if (!json_is_string(mt) || !json_is_string(data) || json_string_length(mt) == 0)
                return ap_error_set(err, AP_EINVAL,
                                    "messages[%zu].content[%zu].source needs media_type and data "
                                    "strings",
                                    i, k);
            struct ap__wire_buf url = {0};
            if (ap__wire_buf_adds(&url, "data:") != AP_OK ||
                ap__wire_buf_add(&url, json_string_value(mt), json_string_length(mt)) != AP_OK ||
                ap__wire_buf_adds(&url, ";base64,") != AP_OK ||
                ap__wire_buf_add(&url, json_string_value(data), json_string_length(data)) !=
                    AP_OK) {
                ap__wire_buf_release(&url);
                return ap_error_set(err, AP_ENOMEM, "out of memory");
            }
            part = json_pack("{s:s, s:{s:s%}}", "type", "image_url", "image_url", "url", url.p,
                             url.len);
            ap__wire_buf_release(&url);
        } else if (st != NULL && strcmp(st, "url") == 0) {
            const json_t *u = json_object_get(src, "url");
            if (!json_is_string(u))
                return ap_error_set(err, AP_EINVAL,
                                    "messages[%zu].content[%zu].source.url must be a string", i, k);
            part = json_pack("{s:s, s:{s:O}}", "type", "image_url", "image_url", "url", u);
        } else {
            return ap_error_set(err, AP_EINVAL,
                                "messages[%zu].content[%zu].source.type is not supported (base64 "
                                "and url are)",
                                i, k);
        }
    } else if (strcmp(type, "thinking") == 0 || strcmp(type, "redacted_thinking") == 0) {
        return AP_OK; /* earlier turns' reasoning: nothing to carry across providers */
    } else if (strcmp(type, "tool_use") == 0 || strcmp(type, "tool_result") == 0) {
        return ap_error_set(err, AP_EINVAL, "tools are not supported yet");
    } else {
        return ap_error_set(err, AP_EINVAL,
                            "messages[%zu].content[%zu].type is not supported (text and image "
                            "are)",
                            i, k);
    }
    if (part == NULL || json_array_append_new(parts, part) != 0)
        return ap_error_set(err, AP_ENOMEM, "out of memory");
    return AP_OK;
}

/* Messages content (a string or blocks) -> canonical content (a string or parts). */
static ap_status from_content(const json_t *content, size_t i, json_t **out, ap_error *err)
{
    ap_status st;
    if (json_is_string(content)) {
        *out = json_incref((json_t *)content);
        return AP_OK;
    }
    if (!json_is_array(content))
        return ap_error_set(err, AP_EINVAL, "messages[%zu].content must be a string or an array",
                            i);
    json_t *parts = json_array();
    if (parts == NULL)
        return ap_error_set(err, AP_ENOMEM, "out of memory");
    for (size_t k = 0; k < json_array_size(content); k++) {
        if ((st = from_block(json_array_get(content, k), i, k, parts, err)) != AP_OK) {
            json_decref(parts);
            return st;
        }
    }
    *out = parts;
    return AP_OK;
}

/* The top-level "system": a string, or text blocks (kept as text parts). */
static ap_status from_system(const json_t *sys, json_t *messages, ap_error *err)
{
    json_t *content = NULL;
    if (sys == NULL || json_is_null(sys) || (json_is_string(sys) && json_string_length(sys) == 0) ||
        (json_is_array(sys) && json_array_size(sys) == 0))
        return AP_OK;
    if (json_is_string(sys)) {
        content = json_incref((json_t *)sys);
    } else if (json_is_array(sys)) {
        if ((content = json_array()) == NULL)
            return ap_error_set(err, AP_ENOMEM, "out of memory");
        for (size_t k = 0; k < json_array_size(sys); k++) {
            const json_t *blk = json_array_get(sys, k);
            const char *type = json_string_value(json_object_get(blk, "type"));
            const json_t *text = json_object_get(blk, "text");
            if (type == NULL || strcmp(type, "text") != 0 || !json_is_string(text)) {
                json_decref(content);
                return ap_error_set(err, AP_EINVAL, "system[%zu] must be a text block", k);
            }
            if (json_array_append_new(content,
                                      json_pack("{s:s, s:O}", "type", "text", "text", text)) != 0) {
                json_decref(content);
                return ap_error_set(err, AP_ENOMEM, "out of memory");
            }
        }
    } else {
        return ap_error_set(err, AP_EINVAL,
                            "\"system\" must be a string or an array of text "
                            "blocks");
    }
    json_t *turn = json_pack("{s:s, s:O}", "role", "system", "content", content);
    json_decref(content);
    if (json_array_append_new(messages, turn) != 0)
        return ap_error_set(err, AP_ENOMEM, "out of memory");
    return AP_OK;
}

/*
 * Translate a Messages request into the canonical request. Carried: model, system, messages
 * (text and image blocks), max_tokens, temperature, top_p, stop_sequences -> stop, stream
 * (with stream_options.include_usage, since message_delta must report output tokens).
 * Ignored: metadata, top_k, thinking, service_tier and cache_control marks. Tools and tool
 * blocks fail with AP_EINVAL. *canon is set only on success (transfer full).
 */
ap_status ap__anthropic_req_to_canon(const json_t *in, json_t **canon, ap_error *err)
{
    json_t *c = NULL, *messages = NULL, *content = NULL;
    const json_t *v;
    ap_status st = AP_OK;

    if (AP_NEVER(canon == NULL))
        return ap_error_set(err, AP_EINVAL, "no output");
    if (!json_is_object(in))
        return ap_error_set(err, AP_EINVAL, "the request is not a json object");
    const json_t *msgs = json_object_get(in, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return ap_error_set(err, AP_EINVAL, "\"messages\" must be a non-empty array");
    v = json_object_get(in, "tools");
    if (json_is_array(v) && json_array_size(v) > 0)
        return ap_error_set(err, AP_EINVAL, "tools are not supported yet");

    if ((c = json_object()) == NULL || (messages = json_array()) == NULL)
        goto oom;
    v = json_object_get(in, "model");
    if (v != NULL && !json_is_string(v)) {
        st = ap_error_set(err, AP_EINVAL, "\"model\" must be a string");
        goto out;
    }
    if (v != NULL && json_object_set(c, "model", (json_t *)v) != 0)
        goto oom;
    if ((st = from_system(json_object_get(in, "system"), messages, err)) != AP_OK)
        goto out;
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        const json_t *m = json_array_get(msgs, i);
        const char *role = json_string_value(json_object_get(m, "role"));
        if (role == NULL || (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0)) {
            st = ap_error_set(err, AP_EINVAL, "messages[%zu].role must be user or assistant", i);
            goto out;
        }
        if ((st = from_content(json_object_get(m, "content"), i, &content, err)) != AP_OK)
            goto out;
        json_t *turn = json_pack("{s:s, s:O}", "role", role, "content", content);
        json_decref(content);
        content = NULL;
        if (turn == NULL || json_array_append_new(messages, turn) != 0)
            goto oom;
    }
    if (json_object_set(c, "messages", messages) != 0)
        goto oom;

    v = json_object_get(in, "max_tokens");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) <= 0) {
            st = ap_error_set(err, AP_EINVAL, "\"max_tokens\" must be a positive integer");
            goto out;
        }
        if (json_object_set(c, "max_tokens", (json_t *)v) != 0)
            goto oom;
    }
    static const char *const numbers[] = {"temperature", "top_p"};
    for (size_t k = 0; k < sizeof(numbers) / sizeof(numbers[0]); k++) {
        v = json_object_get(in, numbers[k]);
        if (v == NULL || json_is_null(v))
            continue;
        if (!json_is_number(v)) {
            st = ap_error_set(err, AP_EINVAL, "\"%s\" must be a number", numbers[k]);
            goto out;
        }
        if (json_object_set(c, numbers[k], (json_t *)v) != 0)
            goto oom;
    }
    v = json_object_get(in, "stop_sequences");
    if (v != NULL && !json_is_null(v)) {
        bool ok = json_is_array(v);
        for (size_t k = 0; ok && k < json_array_size(v); k++)
            ok = json_is_string(json_array_get(v, k));
        if (!ok) {
            st = ap_error_set(err, AP_EINVAL, "\"stop_sequences\" must be an array of strings");
            goto out;
        }
        if (json_array_size(v) > 0 && json_object_set(c, "stop", (json_t *)v) != 0)
            goto oom;
    }
    v = json_object_get(in, "stream");
    if (v != NULL && !json_is_null(v)) {
        if (!json_is_boolean(v)) {
            st = ap_error_set(err, AP_EINVAL, "\"stream\" must be a boolean");
            goto out;
        }
        if (json_object_set(c, "stream", (json_t *)v) != 0)
            goto oom;
        if (json_is_true(v) &&
            json_object_set_new(c, "stream_options", json_pack("{s:b}", "include_usage", 1)) != 0)
            goto oom;
    }
    *canon = c;
    c = NULL;
    goto out;
oom:
    st = ap_error_set(err, AP_ENOMEM, "out of memory");
out:
    json_decref(content);
    json_decref(messages);
    json_decref(c);
    return st;
}

/* ---- front end: canonical -> Messages response and events ---------------------------------- */

/* OpenAI finish_reason -> Anthropic stop_reason. */
static const char *stop_reason_of(const char *finish_reason)
{
    if (finish_reason == NULL)
        return "end_turn";
    if (strcmp(finish_reason, "length") == 0)
        return "max_tokens";
    if (strcmp(finish_reason, "tool_calls") == 0 || strcmp(finish_reason, "function_call") == 0)
        return "tool_use";
    if (strcmp(finish_reason, "content_filter") == 0)
        return "refusal";
    return "end_turn";
}

/* A Messages id for a canonical one: "msg_" ids stay, "chatcmpl-X" becomes "msg_X", anything
 * unusable (absent, not short printable ASCII) a fresh one. */
static void msg_id(const char *cid, char *out, size_t n)
{
    size_t len = cid ? strlen(cid) : 0;
    bool ok = len > 0 && len + 5 < n;
    for (size_t i = 0; ok && i < len; i++)
        ok = (unsigned char)cid[i] > 0x20 && (unsigned char)cid[i] < 0x7f;
    if (!ok) {
        ap__wire_gen_id(out, n, "msg_");
        return;
    }
    if (strncmp(cid, "msg_", 4) == 0) {
        memcpy(out, cid, len + 1);
        return;
    }
    if (strncmp(cid, "chatcmpl-", 9) == 0 && cid[9] != '\0')
        cid += 9;
    memcpy(out, "msg_", 4);
    memcpy(out + 4, cid, strlen(cid) + 1);
}

/* The text of a canonical message content: a string, or its text parts joined. */
static ap_status content_text(const json_t *content, struct ap__wire_buf *b)
{
    if (json_is_string(content))
        return ap__wire_buf_add(b, json_string_value(content), json_string_length(content));
    for (size_t k = 0; k < json_array_size(content); k++) {
        const json_t *t = json_object_get(json_array_get(content, k), "text");
        if (json_is_string(t) &&
            ap__wire_buf_add(b, json_string_value(t), json_string_length(t)) != AP_OK)
            return AP_ENOMEM;
    }
    return AP_OK;
}

static json_int_t count_or_zero(const json_t *usage, const char *key)
{
    long n = ap__wire_count(usage, key);
    return n > 0 ? n : 0;
}

/*
 * The Messages response for a canonical response: id "msg_...", type "message", role, model,
 * one text block (none when the text is empty), stop_reason, stop_sequence null (which stop
 * sequence matched is not known across providers), usage. NULL when canon is not a response
 * with a message, or on allocation failure. (transfer full)
 */
json_t *ap__canon_resp_to_anthropic(const json_t *canon)
{
    struct ap__wire_buf text = {0};
    char id[160];
    json_t *r = NULL, *content = NULL;

    const json_t *choice = json_array_get(json_object_get(canon, "choices"), 0);
    const json_t *msg = json_object_get(choice, "message");
    if (!json_is_object(canon) || !json_is_object(msg))
        return NULL;
    if (content_text(json_object_get(msg, "content"), &text) != AP_OK)
        goto out;
    if ((content = json_array()) == NULL)
        goto out;
    if (text.len > 0 && json_array_append_new(content, json_pack("{s:s, s:s%}", "type", "text",
                                                                 "text", text.p, text.len)) != 0)
        goto out;
    msg_id(json_string_value(json_object_get(canon, "id")), id, sizeof(id));
    const char *model = json_string_value(json_object_get(canon, "model"));
    const json_t *usage = json_object_get(canon, "usage");
    r = json_pack("{s:s, s:s, s:s, s:s, s:O, s:s, s:n, s:{s:I, s:I}}", "id", id, "type", "message",
                  "role", "assistant", "model", model ? model : "", "content", content,
                  "stop_reason",
                  stop_reason_of(json_string_value(json_object_get(choice, "finish_reason"))),
                  "stop_sequence", "usage", "input_tokens", count_or_zero(usage, "prompt_tokens"),
                  "output_tokens", count_or_zero(usage, "completion_tokens"));
out:
    json_decref(content);
    ap__wire_buf_release(&text);
    return r;
}

struct ap__anth_sse {
    char *model; /* owned; NULL: the chunks' model */
    char id[160];
    json_int_t in_tokens; /* -1 until a usage chunk says */
    json_int_t out_tokens;
    const char *stop_reason; /* static; NULL until a finish_reason arrives */
    size_t block;            /* index of the open (or next) text block */
    bool started, block_open, ended;
};

/*
 * A writer for one response. model is what message_start names (the model the client asked
 * for); NULL takes the first chunk's. NULL on allocation failure.
 */
struct ap__anth_sse *ap__anth_sse_new(const char *model)
{
    struct ap__anth_sse *w = calloc(1, sizeof(*w));
    if (w == NULL)
        return NULL;
    if (model != NULL && (w->model = strdup(model)) == NULL) {
        free(w);
        return NULL;
    }
    w->in_tokens = w->out_tokens = -1;
    return w;
}

void ap__anth_sse_free(struct ap__anth_sse *w)
{
    if (w == NULL)
        return;
    free(w->model);
    free(w);
}

/* Append "event: <name>\ndata: <json>\n\n"; data is consumed (NULL: a failed allocation). */
static ap_status put_event(struct ap__wire_buf *b, const char *name, json_t *data)
{
    char *s = data ? json_dumps(data, AP__WIRE_JSON_FLAGS) : NULL;
    ap_status st = AP_ENOMEM;
    json_decref(data);
    if (s != NULL && ap__wire_buf_adds(b, "event: ") == AP_OK &&
        ap__wire_buf_adds(b, name) == AP_OK && ap__wire_buf_adds(b, "\ndata: ") == AP_OK &&
        ap__wire_buf_adds(b, s) == AP_OK && ap__wire_buf_adds(b, "\n\n") == AP_OK)
        st = AP_OK;
    free(s);
    return st;
}

/* message_start, then a ping as the API sends one. */
static ap_status sse_start(struct ap__anth_sse *w, const json_t *chunk, struct ap__wire_buf *b)
{
    const char *model = w->model;
    if (model == NULL)
        model = json_string_value(json_object_get(chunk, "model"));
    msg_id(json_string_value(json_object_get(chunk, "id")), w->id, sizeof(w->id));
    w->started = true;
    ap_status st = put_event(
        b, "message_start",
        json_pack("{s:s, s:{s:s, s:s, s:s, s:s, s:[], s:n, s:n, s:{s:I, s:i}}}", "type",
                  "message_start", "message", "id", w->id, "type", "message", "role", "assistant",
                  "model", model ? model : "", "content", "stop_reason", "stop_sequence", "usage",
                  "input_tokens", w->in_tokens > 0 ? w->in_tokens : 0, "output_tokens", 0));
    if (st != AP_OK)
        return st;
    return put_event(b, "ping", json_pack("{s:s}", "type", "ping"));
}

static ap_status sse_block_stop(struct ap__anth_sse *w, struct ap__wire_buf *b)
{
    if (!w->block_open)
        return AP_OK;
    w->block_open = false;
    return put_event(
        b, "content_block_stop",
        json_pack("{s:s, s:I}", "type", "content_block_stop", "index", (json_int_t)w->block++));
}

static ap_status sse_on_chunk(struct ap__anth_sse *w, const json_t *chunk, struct ap__wire_buf *b)
{
    ap_status st;
    if (!json_is_object(chunk))
        return AP_EINVAL;
    const json_t *usage = json_object_get(chunk, "usage");
    if (json_is_object(usage)) {
        if (ap__wire_count(usage, "prompt_tokens") >= 0)
            w->in_tokens = ap__wire_count(usage, "prompt_tokens");
        if (ap__wire_count(usage, "completion_tokens") >= 0)
            w->out_tokens = ap__wire_count(usage, "completion_tokens");
    }
    if (!w->started && (st = sse_start(w, chunk, b)) != AP_OK)
        return st;
    const json_t *choice = json_array_get(json_object_get(chunk, "choices"), 0);
    const json_t *text = json_object_get(json_object_get(choice, "delta"), "content");
    if (json_is_string(text) && json_string_length(text) > 0) {
        if (!w->block_open) {
            w->block_open = true;
            st = put_event(b, "content_block_start",
                           json_pack("{s:s, s:I, s:{s:s, s:s}}", "type", "content_block_start",
                                     "index", (json_int_t)w->block, "content_block", "type", "text",
                                     "text", ""));
            if (st != AP_OK)
                return st;
        }
        st =
            put_event(b, "content_block_delta",
                      json_pack("{s:s, s:I, s:{s:s, s:O}}", "type", "content_block_delta", "index",
                                (json_int_t)w->block, "delta", "type", "text_delta", "text", text));
        if (st != AP_OK)
            return st;
    }
    const char *fr = json_string_value(json_object_get(choice, "finish_reason"));
    if (fr != NULL) {
        w->stop_reason = stop_reason_of(fr);
        return sse_block_stop(w, b);
    }
    return AP_OK;
}

/* content_block_stop (if open), message_delta with stop_reason and usage, message_stop. */
static ap_status sse_on_end(struct ap__anth_sse *w, struct ap__wire_buf *b)
{
    ap_status st;
    if (!w->started && (st = sse_start(w, NULL, b)) != AP_OK)
        return st;
    if ((st = sse_block_stop(w, b)) != AP_OK)
        return st;
    json_t *usage = json_pack("{s:I}", "output_tokens", w->out_tokens > 0 ? w->out_tokens : 0);
    /* Newer API versions repeat input_tokens here; the SDKs take it when present. */
    if (usage != NULL && w->in_tokens >= 0 &&
        json_object_set_new(usage, "input_tokens", json_integer(w->in_tokens)) != 0)
        return AP_ENOMEM;
    json_t *ev = usage ? json_pack("{s:s, s:{s:s, s:n}, s:O}", "type", "message_delta", "delta",
                                   "stop_reason", w->stop_reason ? w->stop_reason : "end_turn",
                                   "stop_sequence", "usage", usage)
                       : NULL;
    json_decref(usage);
    if ((st = put_event(b, "message_delta", ev)) != AP_OK)
        return st;
    w->ended = true;
    return put_event(b, "message_stop", json_pack("{s:s}", "type", "message_stop"));
}

static ap_status sse_out(struct ap__wire_buf *b, ap_status st, char **out, size_t *out_len)
{
    if (st == AP_OK && (*out = ap__wire_buf_take(b, out_len)) == NULL)
        st = AP_ENOMEM;
    ap__wire_buf_release(b);
    return st;
}

/*
 * The Messages events for one canonical chunk, or the closing events when chunk is NULL:
 * message_start and ping before the first; content_block_start/_delta for text;
 * content_block_stop when the finish_reason arrives; message_delta (stop_reason, usage from the
 * usage chunk) and message_stop at the end. After the end (or an error event) nothing more is
 * written. *out is a malloc'd string, possibly empty. AP_EINVAL: chunk is not an object.
 */
ap_status ap__anth_sse_chunk(struct ap__anth_sse *w, const json_t *chunk, char **out,
                             size_t *out_len)
{
    struct ap__wire_buf b = {0};
    ap_status st = AP_OK;
    if (AP_NEVER(w == NULL || out == NULL))
        return AP_EINVAL;
    if (!w->ended)
        st = chunk ? sse_on_chunk(w, chunk, &b) : sse_on_end(w, &b);
    return sse_out(&b, st, out, out_len);
}

/*
 * An error event ({"type":"error","error":{"type","message"}}) for a failure after the stream
 * began, e.g. the upstream dropped; type defaults to "api_error". Ends the writer.
 */
ap_status ap__anth_sse_error(struct ap__anth_sse *w, const char *type, const char *message,
                             char **out, size_t *out_len)
{
    struct ap__wire_buf b = {0};
    if (AP_NEVER(w == NULL || out == NULL))
        return AP_EINVAL;
    w->ended = true;
    ap_status st =
        put_event(&b, "error",
                  json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type",
                            type ? type : "api_error", "message", message ? message : ""));
    return sse_out(&b, st, out, out_len);
}
