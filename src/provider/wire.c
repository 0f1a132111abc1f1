/*
 * wire.c - helpers shared by the provider translations; contracts in wire.h.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "core/core.h"
#include "provider/wire.h"

/* ---- growable buffer --------------------------------------------------------------------- */

ap_status ap__wire_buf_add(struct ap__wire_buf *b, const void *data, size_t len)
{
    if (len > SIZE_MAX - 1 - b->len)
        return AP_ENOMEM;
    size_t need = b->len + len + 1;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < need)
            cap = cap > SIZE_MAX / 2 ? need : cap * 2;
        char *p = realloc(b->p, cap);
        if (p == NULL)
            return AP_ENOMEM;
        b->p = p;
        b->cap = cap;
    }
    if (len > 0)
        memcpy(b->p + b->len, data, len);
    b->len += len;
    b->p[b->len] = '\0';
    return AP_OK;
}

ap_status ap__wire_buf_adds(struct ap__wire_buf *b, const char *s)
{
    return ap__wire_buf_add(b, s, strlen(s));
}

char *ap__wire_buf_take(struct ap__wire_buf *b, size_t *len)
{
    char *p = b->p;
    if (p == NULL && (p = malloc(1)) != NULL)
        p[0] = '\0';
    if (p == NULL)
        return NULL;
    if (len != NULL)
        *len = b->len;
    b->p = NULL;
    b->len = b->cap = 0;
    return p;
}

void ap__wire_buf_release(struct ap__wire_buf *b)
{
    if (b == NULL)
        return;
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- server-sent events ------------------------------------------------------------------ */

void ap__wire_sse_init(struct ap__wire_sse *s)
{
    memset(s, 0, sizeof(*s));
}

void ap__wire_sse_release(struct ap__wire_sse *s)
{
    if (s == NULL)
        return;
    ap__wire_buf_release(&s->line);
    ap__wire_buf_release(&s->data);
}

/* Dispatch the event gathered so far (if it has data) and reset for the next one. */
static ap_status sse_dispatch(struct ap__wire_sse *s, ap__wire_sse_fn fn, void *ctx, ap_error *err)
{
    ap_status st = AP_OK;
    if (s->data.len > 0) {
        /* Every data line added a trailing LF; the last one is not part of the data. */
        s->data.len--;
        s->data.p[s->data.len] = '\0';
        st = fn(ctx, s->event[0] ? s->event : "message", s->data.p, s->data.len, err);
    }
    s->data.len = 0;
    s->event[0] = '\0';
    return st;
}

/* Interpret one complete line (without its terminator). */
static ap_status sse_line(struct ap__wire_sse *s, ap__wire_sse_fn fn, void *ctx, ap_error *err)
{
    const char *line = s->line.p ? s->line.p : "";
    size_t len = s->line.len;
    ap_status st = AP_OK;

    if (len == 0)
        return sse_dispatch(s, fn, ctx, err);
    if (line[0] == ':')
        goto out; /* comment (keep-alives) */

    const char *colon = memchr(line, ':', len);
    size_t name_len = colon ? (size_t)(colon - line) : len;
    const char *value = colon ? colon + 1 : line + len;
    size_t value_len = (size_t)(line + len - value);
    if (value_len > 0 && value[0] == ' ') {
        value++;
        value_len--;
    }
    if (name_len == 4 && memcmp(line, "data", 4) == 0) {
        if (s->data.len + value_len + 1 > AP__WIRE_MAX_EVENT_BYTES) {
            st = ap_error_set(err, AP_ETOOLARGE, "sse: event data over %zu bytes",
                              AP__WIRE_MAX_EVENT_BYTES);
            goto out;
        }
        if (ap__wire_buf_add(&s->data, value, value_len) != AP_OK ||
            ap__wire_buf_add(&s->data, "\n", 1) != AP_OK) {
            st = ap_error_set(err, AP_ENOMEM, "sse: out of memory");
            goto out;
        }
    } else if (name_len == 5 && memcmp(line, "event", 5) == 0) {
        /* Event names we act on are short; a longer one is kept cut, and matches nothing. */
        size_t n = AP_MIN(value_len, sizeof(s->event) - 1);
        memcpy(s->event, value, n);
        s->event[n] = '\0';
    }
    /* "id", "retry" and unknown fields: ignored, as the spec says. */
out:
    s->line.len = 0;
    return st;
}

ap_status ap__wire_sse_feed(struct ap__wire_sse *s, const char *buf, size_t len, ap__wire_sse_fn fn,
                            void *ctx, ap_error *err)
{
    size_t i = 0;
    ap_status st;

    while (i < len) {
        if (s->after_cr) {
            s->after_cr = false;
            if (buf[i] == '\n') {
                i++;
                continue;
            }
        }
        if (!s->seen_bytes) {
            /* A BOM may open the stream; it may also arrive a byte at a time. */
            static const char bom[3] = {'\xEF', '\xBB', '\xBF'};
            size_t have = s->line.len;
            if (have < 3 && buf[i] == bom[have] &&
                memcmp(s->line.p ? s->line.p : "", bom, have) == 0) {
                if (ap__wire_buf_add(&s->line, buf + i, 1) != AP_OK)
                    return ap_error_set(err, AP_ENOMEM, "sse: out of memory");
                i++;
                if (s->line.len == 3) {
                    s->line.len = 0;
                    s->seen_bytes = true;
                }
                continue;
            }
            s->seen_bytes = true; /* not a BOM: what was held back is ordinary text */
        }
        size_t j = i;
        while (j < len && buf[j] != '\n' && buf[j] != '\r')
            j++;
        if (j > i) {
            if (s->line.len + (j - i) > AP__WIRE_MAX_EVENT_BYTES)
                return ap_error_set(err, AP_ETOOLARGE, "sse: line over %zu bytes",
                                    AP__WIRE_MAX_EVENT_BYTES);
            if (ap__wire_buf_add(&s->line, buf + i, j - i) != AP_OK)
                return ap_error_set(err, AP_ENOMEM, "sse: out of memory");
        }
        if (j == len)
            break;
        if (buf[j] == '\r')
            s->after_cr = true;
        if ((st = sse_line(s, fn, ctx, err)) != AP_OK)
            return st;
        i = j + 1;
    }
    return AP_OK;
}

/* The upstream closed. A last line without its terminator was cut mid-way: dropped. An event
 * whose lines are complete but whose blank line never came still counts (the spec would drop
 * it; servers that close right after "data: [DONE]\n" exist). */
static ap_status sse_finish(struct ap__wire_sse *s, ap__wire_sse_fn fn, void *ctx, ap_error *err)
{
    s->line.len = 0;
    return sse_dispatch(s, fn, ctx, err);
}

/* ---- the common streaming translator ------------------------------------------------------ */

struct ap__stream *ap__wire_stream_new(const ap_provider_conf *p, const char *prefix,
                                       const char *model, ap__chunk_fn emit, void *ctx)
{
    struct ap__stream *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->model = strdup(model ? model : "");
    if (s->model == NULL) {
        free(s);
        return NULL;
    }
    s->p = p;
    s->prefix = prefix;
    s->emit = emit;
    s->ctx = ctx;
    ap__wire_sse_init(&s->sse);
    s->usage.input_tokens = s->usage.output_tokens = s->usage.image_tokens = -1;
    s->created = (json_int_t)time(NULL);
    ap__wire_gen_id(s->id, sizeof(s->id), "chatcmpl-");
    return s;
}

void ap__wire_stream_free(struct ap__stream *s)
{
    if (s == NULL)
        return;
    ap__wire_sse_release(&s->sse);
    free(s->model);
    free(s);
}

static ap_status stream_event(void *ctx, const char *event, const char *data, size_t len,
                              ap_error *err)
{
    struct ap__stream *s = ctx;
    if (s->done)
        return AP_OK; /* the stream said it ended; trailing bytes mean nothing */
    return s->on_event(s, event, data, len, err);
}

ap_status ap__wire_stream_feed(struct ap__stream *s, const char *data, size_t len, bool *done,
                               struct ap__usage *usage, ap_error *err)
{
    ap_status st = AP_OK;
    if (AP_NEVER(s == NULL))
        return ap_error_set(err, AP_EINVAL, "stream: no stream");
    if (s->failed != AP_OK)
        return ap_error_set(err, s->failed, "%s: the stream already failed", s->prefix);
    if (!s->done) {
        if (data == NULL) {
            st = sse_finish(&s->sse, stream_event, s, err);
            if (st == AP_OK && !s->done)
                st = s->on_eof(s, err);
        } else {
            st = ap__wire_sse_feed(&s->sse, data, len, stream_event, s, err);
        }
        if (st != AP_OK) {
            s->failed = st;
            return st;
        }
    }
    if (done != NULL)
        *done = s->done;
    if (usage != NULL)
        *usage = s->usage;
    return AP_OK;
}

void ap__wire_stream_set_id(struct ap__stream *s, const char *id)
{
    /* Ids travel into JSON and headers: take only short printable ASCII ones. */
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n >= sizeof(s->id))
        return;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)id[i] < 0x21 || (unsigned char)id[i] > 0x7e)
            return;
    memcpy(s->id, id, n + 1);
}

ap_status ap__wire_stream_set_model(struct ap__stream *s, const char *model)
{
    if (model == NULL || model[0] == '\0' || strcmp(model, s->model) == 0)
        return AP_OK;
    char *m = strdup(model);
    if (m == NULL)
        return AP_ENOMEM;
    free(s->model);
    s->model = m;
    return AP_OK;
}

/* Hand a new chunk (owned; NULL after a failed allocation) to the caller and drop it. */
static ap_status emit_chunk(struct ap__stream *s, json_t *chunk, ap_error *err)
{
    if (chunk == NULL)
        return ap_error_set(err, AP_ENOMEM, "%s: out of memory", s->prefix);
    s->emit(s->ctx, chunk);
    json_decref(chunk);
    return AP_OK;
}

/* {"id","object","created","model","choices":[{"index":0,"delta":delta,"finish_reason"}]} */
static json_t *delta_chunk(struct ap__stream *s, json_t *delta, const char *finish_reason)
{
    json_t *c = NULL;
    if (delta != NULL)
        c = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:O, s:s?}]}", "id", s->id, "object",
                      "chat.completion.chunk", "created", s->created, "model", s->model, "choices",
                      "index", 0, "delta", delta, "finish_reason", finish_reason);
    json_decref(delta);
    return c;
}

ap_status ap__wire_emit_role(struct ap__stream *s, ap_error *err)
{
    if (s->role_sent)
        return AP_OK;
    s->role_sent = true;
    json_t *delta = json_pack("{s:s, s:s}", "role", "assistant", "content", "");
    return emit_chunk(s, delta_chunk(s, delta, NULL), err);
}

ap_status ap__wire_emit_text(struct ap__stream *s, const char *text, size_t len, ap_error *err)
{
    ap_status st = ap__wire_emit_role(s, err);
    if (st != AP_OK || len == 0)
        return st;
    json_t *str = json_stringn(text, len);
    json_t *delta = str ? json_pack("{s:O}", "content", str) : NULL;
    json_decref(str);
    return emit_chunk(s, delta_chunk(s, delta, NULL), err);
}

ap_status ap__wire_emit_finish(struct ap__stream *s, const char *finish_reason, ap_error *err)
{
    ap_status st = ap__wire_emit_role(s, err);
    if (st != AP_OK)
        return st;
    s->finished = true;
    return emit_chunk(s, delta_chunk(s, json_object(), finish_reason), err);
}

ap_status ap__wire_emit_usage(struct ap__stream *s, ap_error *err)
{
    json_t *u = ap__wire_usage_json(&s->usage);
    json_t *c = NULL;
    if (u != NULL)
        c = json_pack("{s:s, s:s, s:I, s:s, s:[], s:O}", "id", s->id, "object",
                      "chat.completion.chunk", "created", s->created, "model", s->model, "choices",
                      "usage", u);
    json_decref(u);
    return emit_chunk(s, c, err);
}

ap_status ap__wire_event_json(struct ap__stream *s, const char *data, size_t len, json_t **out,
                              ap_error *err)
{
    json_t *j = json_loadb(data, len, AP__WIRE_JSON_LOAD, NULL);
    if (!json_is_object(j)) {
        json_decref(j);
        return ap_error_set(err, AP_EDECODE, "%s: stream event is not a json object", s->prefix);
    }
    *out = j;
    return AP_OK;
}

/* ---- canonical builders ------------------------------------------------------------------- */

json_t *ap__wire_usage_json(const struct ap__usage *u)
{
    json_int_t in = u->input_tokens > 0 ? u->input_tokens : 0;
    json_int_t out = u->output_tokens > 0 ? u->output_tokens : 0;
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", in, "completion_tokens", out,
                     "total_tokens", in + out);
}

json_t *ap__wire_completion(const char *id, json_int_t created, const char *model, const char *text,
                            size_t text_len, const char *finish_reason, const struct ap__usage *u)
{
    json_t *content = json_stringn(text ? text : "", text ? text_len : 0);
    json_t *usage = ap__wire_usage_json(u);
    json_t *r = NULL;
    if (content != NULL && usage != NULL)
        r = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:O}, s:n, s:s?}], s:O}", "id", id,
                      "object", "chat.completion", "created", created, "model", model, "choices",
                      "index", 0, "message", "role", "assistant", "content", content, "logprobs",
                      "finish_reason", finish_reason, "usage", usage);
    json_decref(content);
    json_decref(usage);
    return r;
}

void ap__wire_gen_id(char *out, size_t n, const char *prefix)
{
    unsigned char rnd[12];
    if (getrandom(rnd, sizeof(rnd), GRND_NONBLOCK) != (ssize_t)sizeof(rnd)) {
        /* No entropy yet (early boot): ids need to be unique, not secret. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x =
            (uint64_t)ts.tv_sec * 1000000007u ^ (uint64_t)ts.tv_nsec ^ (uint64_t)(uintptr_t)out;
        for (size_t i = 0; i < sizeof(rnd); i++) {
            x += 0x9e3779b97f4a7c15u;
            uint64_t z = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
            rnd[i] = (unsigned char)((z ^ (z >> 27)) >> 24);
        }
    }
    static const char hex[] = "0123456789abcdef";
    size_t pos = 0;
    for (const char *p = prefix; *p && pos + 1 < n; p++)
        out[pos++] = *p;
    for (size_t i = 0; i < sizeof(rnd) && pos + 2 < n; i++) {
        out[pos++] = hex[rnd[i] >> 4];
        out[pos++] = hex[rnd[i] & 15];
    }
    if (n > 0)
        out[pos < n ? pos : n - 1] = '\0';
}

long ap__wire_count(const json_t *obj, const char *key)
{
    const json_t *v = json_object_get(obj, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    json_int_t x = json_integer_value(v);
    return x > LONG_MAX ? LONG_MAX : (long)x;
}

/* ---- reading the canonical request -------------------------------------------------------- */

/* A field that is absent, null or an empty array counts as not given. */
static bool given(const json_t *v)
{
    return v != NULL && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0);
}

ap_status ap__wire_req_messages(const json_t *req, const char *prefix, const json_t **messages,
                                ap_error *err)
{
    if (!json_is_object(req))
        return ap_error_set(err, AP_EINVAL, "%s: the request is not a json object", prefix);
    const json_t *m = json_object_get(req, "messages");
    if (!json_is_array(m) || json_array_size(m) == 0)
        return ap_error_set(err, AP_EINVAL, "%s: \"messages\" must be a non-empty array", prefix);
    if (given(json_object_get(req, "tools")) || given(json_object_get(req, "functions")))
        return ap_error_set(err, AP_EINVAL, "%s: tools are not supported yet", prefix);
    const json_t *n = json_object_get(req, "n");
    if (given(n) && (!json_is_integer(n) || json_integer_value(n) != 1))
        return ap_error_set(err, AP_EINVAL, "%s: \"n\" other than 1 is not supported", prefix);
    *messages = m;
    return AP_OK;
}

ap_status ap__wire_msg_role(const json_t *msg, size_t i, const char *prefix, const char **role,
                            ap_error *err)
{
    if (!json_is_object(msg))
        return ap_error_set(err, AP_EINVAL, "%s: messages[%zu] is not an object", prefix, i);
    const char *r = json_string_value(json_object_get(msg, "role"));
    if (r == NULL)
        return ap_error_set(err, AP_EINVAL, "%s: messages[%zu].role must be a string", prefix, i);
    if (strcmp(r, "tool") == 0 || strcmp(r, "function") == 0 ||
        given(json_object_get(msg, "tool_calls")) || given(json_object_get(msg, "function_call")))
        return ap_error_set(err, AP_EINVAL, "%s: tools are not supported yet", prefix);
    if (strcmp(r, "system") != 0 && strcmp(r, "developer") != 0 && strcmp(r, "user") != 0 &&
        strcmp(r, "assistant") != 0)
        return ap_error_set(err, AP_EINVAL,
                            "%s: messages[%zu].role is not one of system, developer, user, "
                            "assistant",
                            prefix, i);
    *role = r;
    return AP_OK;
}

/* Append a text piece, a blank line apart from what b holds. Empty pieces add nothing. */
static ap_status add_piece(struct ap__wire_buf *b, const json_t *str)
{
    size_t n = json_string_length(str);
    if (n == 0)
        return AP_OK;
    if (b->len > 0 && ap__wire_buf_add(b, "\n\n", 2) != AP_OK)
        return AP_ENOMEM;
    return ap__wire_buf_add(b, json_string_value(str), n);
}

ap_status ap__wire_system_text(const json_t *content, size_t i, const char *prefix,
                               struct ap__wire_buf *b, ap_error *err)
{
    if (json_is_string(content)) {
        if (add_piece(b, content) != AP_OK)
            return ap_error_set(err, AP_ENOMEM, "%s: out of memory", prefix);
        return AP_OK;
    }
    if (!json_is_array(content))
        return ap_error_set(err, AP_EINVAL,
                            "%s: messages[%zu].content must be a string or an array", prefix, i);
    for (size_t k = 0; k < json_array_size(content); k++) {
        const json_t *part = json_array_get(content, k);
        const char *type = json_string_value(json_object_get(part, "type"));
        const json_t *text = json_object_get(part, "text");
        if (type == NULL || strcmp(type, "text") != 0 || !json_is_string(text))
            return ap_error_set(err, AP_EINVAL,
                                "%s: messages[%zu].content[%zu]: a system message may only hold "
                                "text",
                                prefix, i, k);
        if (add_piece(b, text) != AP_OK)
            return ap_error_set(err, AP_ENOMEM, "%s: out of memory", prefix);
    }
    return AP_OK;
}

ap_status ap__wire_image_url(const json_t *part, size_t i, size_t k, const char *prefix,
                             const char **url, ap_error *err)
{
    const json_t *iu = json_object_get(part, "image_url");
    const char *u =
        json_is_object(iu) ? json_string_value(json_object_get(iu, "url")) : json_string_value(iu);
    if (u == NULL)
        return ap_error_set(err, AP_EINVAL,
                            "%s: messages[%zu].content[%zu].image_url.url must be a string", prefix,
                            i, k);
    *url = u;
    return AP_OK;
}

bool ap__wire_data_url(const char *url, const char **mime, size_t *mime_len, const char **data,
                       size_t *data_len)
{
    if (url == NULL || strncasecmp(url, "data:", 5) != 0)
        return false;
    const char *meta = url + 5;
    const char *comma = strchr(meta, ',');
    if (comma == NULL)
        return false;
    size_t meta_len = (size_t)(comma - meta);
    if (meta_len < 7 || strncasecmp(comma - 7, ";base64", 7) != 0)
        return false;
    const char *semi = memchr(meta, ';', meta_len);
    size_t ml = (size_t)(semi - meta);
    if (ml == 0 || comma[1] == '\0')
        return false;
    *mime = meta;
    *mime_len = ml;
    *data = comma + 1;
    *data_len = strlen(comma + 1);
    return true;
}

bool ap__wire_is_http_url(const char *url)
{
    return url != NULL &&
           (strncasecmp(url, "http://", 7) == 0 || strncasecmp(url, "https://", 8) == 0);
}

ap_status ap__wire_max_tokens(const json_t *req, const char *prefix, json_int_t dflt,
                              json_int_t *out, ap_error *err)
{
    const char *key = "max_completion_tokens";
    const json_t *v = json_object_get(req, key);
    if (v == NULL || json_is_null(v)) {
        key = "max_tokens";
        v = json_object_get(req, key);
    }
    if (v == NULL || json_is_null(v)) {
        *out = dflt;
        return AP_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) <= 0)
        return ap_error_set(err, AP_EINVAL, "%s: \"%s\" must be a positive integer", prefix, key);
    *out = json_integer_value(v);
    return AP_OK;
}

ap_status ap__wire_stop(const json_t *req, const char *prefix, json_t **out, ap_error *err)
{
    const json_t *v = json_object_get(req, "stop");
    json_t *a = NULL;
    if (v == NULL || json_is_null(v)) {
        *out = NULL;
        return AP_OK;
    }
    if (!json_is_string(v) && !json_is_array(v))
        goto bad;
    if ((a = json_array()) == NULL)
        goto oom;
    if (json_is_string(v)) {
        if (json_array_append(a, (json_t *)v) != 0)
            goto oom;
    } else {
        for (size_t i = 0; i < json_array_size(v); i++) {
            json_t *s = json_array_get(v, i);
            if (!json_is_string(s))
                goto bad;
            if (json_array_append(a, s) != 0)
                goto oom;
        }
    }
    if (json_array_size(a) == 0) {
        json_decref(a);
        a = NULL;
    }
    *out = a;
    return AP_OK;
bad:
    json_decref(a);
    return ap_error_set(err, AP_EINVAL, "%s: \"stop\" must be a string or an array of strings",
                        prefix);
oom:
    json_decref(a);
    return ap_error_set(err, AP_ENOMEM, "%s: out of memory", prefix);
}

ap_status ap__wire_number(const json_t *req, const char *key, const char *prefix,
                          const json_t **out, ap_error *err)
{
    const json_t *v = json_object_get(req, key);
    if (v == NULL || json_is_null(v)) {
        *out = NULL;
        return AP_OK;
    }
    if (!json_is_number(v))
        return ap_error_set(err, AP_EINVAL, "%s: \"%s\" must be a number", prefix, key);
    *out = v;
    return AP_OK;
}

ap_status ap__wire_json_mode(const json_t *req, const char *prefix, bool *json_mode,
                             struct ap__wire_buf *instruction, ap_error *err)
{
    const json_t *rf = json_object_get(req, "response_format");
    const json_t *schema = NULL;
    char *dump = NULL;
    ap_status st = AP_OK;

    if (rf == NULL || json_is_null(rf)) {
        *json_mode = false;
        return AP_OK;
    }
    const char *type = json_string_value(json_object_get(rf, "type"));
    if (!json_is_object(rf) || type == NULL)
        return ap_error_set(err, AP_EINVAL, "%s: \"response_format\" must be an object with a type",
                            prefix);
    if (strcmp(type, "text") == 0) {
        *json_mode = false;
        return AP_OK;
    }
    if (strcmp(type, "json_schema") == 0) {
        schema = json_object_get(json_object_get(rf, "json_schema"), "schema");
        if (!json_is_object(schema))
            return ap_error_set(err, AP_EINVAL,
                                "%s: \"response_format\".json_schema.schema must be an object",
                                prefix);
    } else if (strcmp(type, "json_object") != 0) {
        return ap_error_set(err, AP_EINVAL,
                            "%s: \"response_format\".type is not one of text, json_object, "
                            "json_schema",
                            prefix);
    }
    if (instruction != NULL) {
        const char *say = schema ? "Answer with a single JSON value that conforms to the JSON "
                                   "Schema below and nothing else: no prose, no markdown code "
                                   "fences.\n"
                                 : "Answer with a single JSON object and nothing else: no "
                                   "prose, no markdown code fences.";
        if (schema != NULL && (dump = json_dumps(schema, AP__WIRE_JSON_FLAGS)) == NULL)
            goto oom;
        if ((instruction->len > 0 && ap__wire_buf_add(instruction, "\n\n", 2) != AP_OK) ||
            ap__wire_buf_adds(instruction, say) != AP_OK ||
            (dump != NULL && ap__wire_buf_adds(instruction, dump) != AP_OK))
            goto oom;
    }
    *json_mode = true;
    goto out;
oom:
    st = ap_error_set(err, AP_ENOMEM, "%s: out of memory", prefix);
out:
    free(dump);
    return st;
}

/* ---- the upstream request ----------------------------------------------------------------- */

const char *ap__wire_key(const ap_provider_conf *p)
{
    return p->api_key != NULL && p->api_key[0] != '\0' ? p->api_key : NULL;
}

ap_status ap__wire_url(struct ap__upreq *r, const ap_provider_conf *p, const char *prefix,
                       const char *path, const char *path2, ap_error *err)
{
    const char *base = p->base_url;
    if (base == NULL || base[0] == '\0')
        return ap_error_set(err, AP_EINVAL, "%s: provider \"%s\" has no base_url", prefix,
                            p->name ? p->name : "?");
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    size_t n = blen + strlen(path) + (path2 ? strlen(path2) : 0) + 1;
    char *u = malloc(n);
    if (u == NULL)
        return ap_error_set(err, AP_ENOMEM, "%s: out of memory", prefix);
    snprintf(u, n, "%.*s%s%s", (int)blen, base, path, path2 ? path2 : "");
    free(r->url);
    r->url = u;
    return AP_OK;
}

ap_status ap__wire_header(struct ap__upreq *r, const char *prefix, const char *name,
                          const char *value, ap_error *err)
{
    if (strpbrk(value, "\r\n") != NULL)
        return ap_error_set(err, AP_EINVAL, "%s: header \"%s\" holds a line break", prefix, name);
    size_t n = strlen(name) + 2 + strlen(value) + 1;
    char *h = malloc(n);
    char **hs = realloc(r->headers, (r->n_headers + 1) * sizeof(*hs));
    if (hs != NULL)
        r->headers = hs;
    if (h == NULL || hs == NULL) {
        free(h);
        return ap_error_set(err, AP_ENOMEM, "%s: out of memory", prefix);
    }
    snprintf(h, n, "%s: %s", name, value);
    r->headers[r->n_headers++] = h;
    return AP_OK;
}

ap_status ap__wire_body(struct ap__upreq *r, const json_t *body, const char *prefix, ap_error *err)
{
    char *s = json_dumps(body, AP__WIRE_JSON_FLAGS);
    if (s == NULL)
        return ap_error_set(err, AP_ENOMEM, "%s: out of memory", prefix);
    free(r->body);
    r->body = s;
    r->body_len = strlen(s);
    return AP_OK;
}

/* ---- upstream errors ---------------------------------------------------------------------- */

/* The length of the valid UTF-8 sequence at s (at most n bytes), or 0 if there is none. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        if (c == 0xED)
            hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (len > n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

/* Runs of the key this long or longer are redacted wherever they appear. */
#define KEY_RUN_MIN 8

/* The length of the longest prefix of msg[0..len) that occurs anywhere in key. */
static size_t key_run(const char *msg, size_t len, const char *key, size_t key_len)
{
    size_t best = 0;
    for (size_t k = 0; k < key_len; k++) {
        size_t n = 0;
        while (n < len && k + n < key_len && msg[n] == key[k + n])
            n++;
        if (n > best)
            best = n;
    }
    return best;
}

/*
 * Record AP_EUPSTREAM "<prefix>: <msg>" with at most max_chars characters of msg. Should the
 * upstream echo the key, whole or cut (a masked or truncated echo), every run of 8 or more of
 * its characters becomes "[redacted]"; runs are found in the whole of msg before anything is
 * cut, so no part survives a cut either. Control bytes become spaces, bytes that are not
 * UTF-8 become '?', and the cut falls between characters.
 */
static ap_status quote(const ap_provider_conf *p, const char *prefix, const char *msg, size_t len,
                       size_t max_chars, ap_error *err)
{
    static const char mark[] = "[redacted]";
    char clean[AP_ERROR_MSG_MAX];
    size_t room = sizeof(clean) - 1, out = 0, i = 0, chars = 0;
    const char *key = p ? ap__wire_key(p) : NULL;
    size_t key_len = key ? strlen(key) : 0;
    size_t pre = strlen(prefix) + 2;

    room = pre < room ? room - pre : 0;
    while (i < len && out < room && chars < max_chars) {
        chars++;
        size_t run = key_len > 0 ? key_run(msg + i, len - i, key, key_len) : 0;
        if (run >= AP_MIN(key_len, KEY_RUN_MIN)) {
            size_t n = AP_MIN(sizeof(mark) - 1, room - out);
            memcpy(clean + out, mark, n);
            out += n;
            i += run;
            continue;
        }
        unsigned char c = (unsigned char)msg[i];
        if (c < 0x20 || c == 0x7f) {
            clean[out++] = ' ';
            i++;
            continue;
        }
        size_t n = utf8_seq((const unsigned char *)msg + i, len - i);
        if (n == 0) {
            clean[out++] = '?';
            i++;
            continue;
        }
        if (n > room - out)
            break;
        memcpy(clean + out, msg + i, n);
        out += n;
        i += n;
    }
    while (out > 0 && clean[out - 1] == ' ')
        out--;
    clean[out] = '\0';
    return ap_error_set(err, AP_EUPSTREAM, "%s: %s", prefix, clean);
}

ap_status ap__wire_upstream_error(const ap_provider_conf *p, const char *prefix, const char *msg,
                                  size_t len, ap_error *err)
{
    return quote(p, prefix, msg, len, SIZE_MAX, err);
}

const json_t *ap__wire_error_message(const json_t *doc)
{
    if (json_is_array(doc))
        doc = json_array_get(doc, 0);
    if (!json_is_object(doc))
        return NULL;
    const json_t *e = json_object_get(doc, "error");
    const json_t *m = json_object_get(e, "message");
    if (json_is_string(m))
        return m;
    if (json_is_string(e))
        return e;
    m = json_object_get(doc, "message");
    return json_is_string(m) ? m : NULL;
}

ap_status ap__wire_http_error(const ap_provider_conf *p, const char *prefix, long status,
                              const char *body, size_t len, ap_error *err)
{
    ap_status st;
    json_t *doc = body ? json_loadb(body, len, AP__WIRE_JSON_LOAD, NULL) : NULL;
    const json_t *m = ap__wire_error_message(doc);

    if (m != NULL) {
        st = ap__wire_upstream_error(p, prefix, json_string_value(m), json_string_length(m), err);
        json_decref(doc);
        return st;
    }
    json_decref(doc);
    size_t start = 0;
    while (
        body != NULL && start < len &&
        (body[start] == ' ' || body[start] == '\t' || body[start] == '\r' || body[start] == '\n'))
        start++;
    if (body == NULL || start == len)
        return ap_error_set(err, AP_EUPSTREAM, "%s: http %ld with an empty body", prefix, status);
    return quote(p, prefix, body + start, len - start, AP__WIRE_RAW_ERROR_CHARS, err);
}
