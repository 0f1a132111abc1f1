/*
 * openai.c - the OpenAI Chat Completions wire, for api.openai.com and every server that speaks
 * it (vLLM, Ollama, llama.cpp: the openai-compatible type, same code, base_url + optional key).
 *
 * The canonical request already is a Chat Completions body, so build() only names the upstream
 * model and sets "stream" (plus stream_options.include_usage, so a streamed answer still
 * reports usage); everything else the client sent, tools included, passes through untouched.
 * parse() checks the answer is a chat.completion and reads usage; the stream translator passes
 * each chunk through as it came and watches for usage, the finish reason and "[DONE]".
 */
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "provider/wire.h"

#define PREFIX "openai"

/*
 * Build POST {base_url}/chat/completions. The body is a shallow copy of req: the copy's own
 * members are replaced, the shared children are never written, so req stays as it was.
 */
static ap_status openai_build(const ap_provider_conf *p, const char *upstream_model,
                              const json_t *req, bool stream, struct ap__upreq *out, ap_error *err)
{
    struct ap__upreq r = {0};
    json_t *body = NULL;
    ap_status st = AP_OK;
    const char *key;

    if (AP_NEVER(p == NULL || out == NULL))
        return ap_error_set(err, AP_EINVAL, PREFIX ": no provider or no output");
    if (!json_is_object(req))
        return ap_error_set(err, AP_EINVAL, PREFIX ": the request is not a json object");
    if (upstream_model == NULL || upstream_model[0] == '\0')
        return ap_error_set(err, AP_EINVAL, PREFIX ": no upstream model");

    if ((body = json_copy((json_t *)req)) == NULL)
        goto oom;
    if (json_object_set_new(body, "model", json_string(upstream_model)) != 0 ||
        json_object_set_new(body, "stream", json_boolean(stream)) != 0)
        goto oom;
    if (stream) {
        /* The client's own stream_options win; otherwise ask for the final usage chunk. */
        if (json_object_get(body, "stream_options") == NULL &&
            json_object_set_new(body, "stream_options", json_pack("{s:b}", "include_usage", 1)) !=
                0)
            goto oom;
    } else {
        /* OpenAI rejects stream_options on a request that does not stream. */
        json_object_del(body, "stream_options");
    }

    if ((st = ap__wire_url(&r, p, PREFIX, "/chat/completions", NULL, err)) != AP_OK ||
        (st = ap__wire_header(&r, PREFIX, "Content-Type", "application/json", err)) != AP_OK ||
        (st = ap__wire_header(&r, PREFIX, "Accept",
                              stream ? "text/event-stream" : "application/json", err)) != AP_OK)
        goto out;
    if ((key = ap__wire_key(p)) != NULL) {
        size_t n = strlen(key) + sizeof("Bearer ");
        char *auth = malloc(n);
        if (auth == NULL)
            goto oom;
        memcpy(auth, "Bearer ", 7);
        memcpy(auth + 7, key, n - 7);
        st = ap__wire_header(&r, PREFIX, "Authorization", auth, err);
        /* The key does not linger in freed memory longer than it must. */
        memset(auth, 0, n);
        free(auth);
        if (st != AP_OK)
            goto out;
    }
    if ((st = ap__wire_body(&r, body, PREFIX, err)) != AP_OK)
        goto out;
    *out = r;
    r = (struct ap__upreq){0};
    goto out;
oom:
    st = ap_error_set(err, AP_ENOMEM, PREFIX ": out of memory");
out:
    json_decref(body);
    ap__upreq_release(&r);
    return st;
}

/* usage.prompt_tokens / completion_tokens of a response or chunk, where present. */
static void read_usage(const json_t *doc, struct ap__usage *u)
{
    const json_t *usage = json_object_get(doc, "usage");
    if (!json_is_object(usage))
        return;
    u->input_tokens = ap__wire_count(usage, "prompt_tokens");
    u->output_tokens = ap__wire_count(usage, "completion_tokens");
}

/* A complete answer: non-2xx is the upstream's error; 2xx must be a chat.completion. */
static ap_status openai_parse(const ap_provider_conf *p, long status, const char *body, size_t len,
                              json_t **resp, struct ap__usage *usage, ap_error *err)
{
    struct ap__usage u = {-1, -1, -1};
    json_t *doc = NULL;
    const json_t *m;

    if (AP_NEVER(resp == NULL))
        return ap_error_set(err, AP_EINVAL, PREFIX ": no output");
    if (status < 200 || status > 299)
        return ap__wire_http_error(p, PREFIX, status, body, len, err);
    if (body == NULL || (doc = json_loadb(body, len, AP__WIRE_JSON_LOAD, NULL)) == NULL)
        return ap_error_set(err, AP_EDECODE, PREFIX ": the response is not json");
    if (!json_is_object(doc)) {
        json_decref(doc);
        return ap_error_set(err, AP_EDECODE, PREFIX ": the response is not a json object");
    }
    /* Some compatible servers answer 200 with an error document. */
    if (json_object_get(doc, "error") != NULL && !json_is_null(json_object_get(doc, "error")) &&
        (m = ap__wire_error_message(doc)) != NULL) {
        ap_status st =
            ap__wire_upstream_error(p, PREFIX, json_string_value(m), json_string_length(m), err);
        json_decref(doc);
        return st;
    }
    const json_t *choices = json_object_get(doc, "choices");
    if (!json_is_array(choices) || json_array_size(choices) == 0 ||
        !json_is_object(json_object_get(json_array_get(choices, 0), "message"))) {
        json_decref(doc);
        return ap_error_set(err, AP_EDECODE, PREFIX ": the response has no choices");
    }
    read_usage(doc, &u);
    *resp = doc;
    if (usage != NULL)
        *usage = u;
    return AP_OK;
}

/* One SSE event of a Chat Completions stream: "[DONE]", an error, or a chunk to pass on. */
static ap_status openai_event(struct ap__stream *s, const char *event, const char *data, size_t len,
                              ap_error *err)
{
    json_t *chunk = NULL;
    const json_t *m;
    ap_status st;

    if (len >= 6 && strncmp(data, "[DONE]", 6) == 0 && strspn(data + 6, " \t\r\n") == len - 6) {
        s->done = true;
        return AP_OK;
    }
    if ((st = ap__wire_event_json(s, data, len, &chunk, err)) != AP_OK) {
        /* An error event may carry plain text. */
        if (strcmp(event, "error") == 0) {
            ap_error_clear(err);
            return ap__wire_upstream_error(s->p, PREFIX, data, len, err);
        }
        return st;
    }
    const json_t *e = json_object_get(chunk, "error");
    if (strcmp(event, "error") == 0 || (e != NULL && !json_is_null(e))) {
        m = ap__wire_error_message(chunk);
        st = m ? ap__wire_upstream_error(s->p, PREFIX, json_string_value(m), json_string_length(m),
                                         err)
               : ap_error_set(err, AP_EUPSTREAM, PREFIX ": the stream reported an error");
        json_decref(chunk);
        return st;
    }
    read_usage(chunk, &s->usage);
    const json_t *choices = json_object_get(chunk, "choices");
    for (size_t i = 0; i < json_array_size(choices); i++)
        if (json_is_string(json_object_get(json_array_get(choices, i), "finish_reason")))
            s->finished = true;
    s->emit(s->ctx, chunk);
    json_decref(chunk);
    return AP_OK;
}

/* The body ended without "[DONE]": complete if a finish reason was seen (some compatible
 * servers omit the marker), cut off otherwise. */
static ap_status openai_eof(struct ap__stream *s, ap_error *err)
{
    if (!s->finished)
        return ap_error_set(err, AP_ENETWORK, PREFIX ": the stream ended before it finished");
    s->done = true;
    return AP_OK;
}

static struct ap__stream *openai_stream_new(const ap_provider_conf *p, const char *model,
                                            ap__chunk_fn emit, void *ctx)
{
    struct ap__stream *s = ap__wire_stream_new(p, PREFIX, model, emit, ctx);
    if (s != NULL) {
        s->on_event = openai_event;
        s->on_eof = openai_eof;
    }
    return s;
}

const struct ap__provider_ops ap__openai_ops = {
    .name = PREFIX,
    .build = openai_build,
    .parse = openai_parse,
    .stream_new = openai_stream_new,
    .stream_feed = ap__wire_stream_feed,
    .stream_free = ap__wire_stream_free,
};
