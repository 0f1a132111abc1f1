/*
 * wire.h - helpers shared by the provider translations (openai.c, anthropic.c, gemini.c).
 * Private to src/provider: the server only ever sees provider.h.
 *
 * What lives here: a growable byte buffer, the SSE event parser, the common stream state that
 * every provider's streaming translator is built on, builders for canonical chunks and
 * responses, the canonical-request readers the non-OpenAI translations share (message text,
 * data URLs, max_tokens, stop, JSON mode), and upstream error messages.
 *
 * Invariants: nothing here formats a provider key into a message; ap__wire_upstream_error()
 * additionally redacts the key (any run of 8+ of its characters) if the upstream echoed it.
 * Messages that quote upstream text are ASCII-printable or valid UTF-8 cut at a character boundary,
 * so the server can put them into JSON as they are.
 *
 * Threading: no shared state; each object belongs to one request.
 */
#ifndef AP_PROVIDER_WIRE_H
#define AP_PROVIDER_WIRE_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "provider/provider.h"

/* Serialisation of every body and event we produce: compact, reals without 17-digit noise
 * (0.7 stays 0.7; any decimal a person typed has at most 15 significant digits). */
#define AP__WIRE_JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))
/* Parsing of upstream bytes: strings may hold U+0000, so every reader uses lengths. */
#define AP__WIRE_JSON_LOAD JSON_ALLOW_NUL
/* One SSE line or one event's data: far above any real chunk, small enough to stop a runaway
 * upstream from growing memory without bound. */
#define AP__WIRE_MAX_EVENT_BYTES ((size_t)16 << 20)
/* How much of a non-JSON upstream error body is quoted in a message. */
#define AP__WIRE_RAW_ERROR_CHARS 200

/* ---- growable buffer --------------------------------------------------------------------- */

/* Always NUL-terminated once anything was added; p is NULL while empty. */
struct ap__wire_buf {
    char *p;
    size_t len, cap;
};
/* Append len bytes. AP_ENOMEM on allocation failure or size overflow (b is unchanged). */
ap_status ap__wire_buf_add(struct ap__wire_buf *b, const void *data, size_t len);
ap_status ap__wire_buf_adds(struct ap__wire_buf *b, const char *s);
/* Move the contents out as a malloc'd string (an empty one when nothing was added); b is empty
 * afterwards. NULL only when allocating that empty string failed. */
char *ap__wire_buf_take(struct ap__wire_buf *b, size_t *len);
void ap__wire_buf_release(struct ap__wire_buf *b);

/* ---- server-sent events ------------------------------------------------------------------ */

/*
 * An incremental parser for text/event-stream as the WHATWG HTML spec defines it: lines end in
 * CRLF, LF or CR (a CR at the end of one feed and an LF at the start of the next are one line
 * end); ":" lines are comments; "event" names the event; "data" lines are joined with LF;
 * "id" and "retry" are ignored; an empty line dispatches. A leading UTF-8 BOM is skipped. An
 * unfinished event at the end of the input is never dispatched.
 */
struct ap__wire_sse {
    struct ap__wire_buf line, data;
    char event[64];
    bool after_cr;   /* the last byte fed was CR: a following LF belongs to it */
    bool seen_bytes; /* past the place a BOM may appear */
};
/* Called once per event. event is "message" when the stream named none; data is the joined
 * data lines (NUL-terminated, len without it). A non-AP_OK return stops the feed. */
typedef ap_status (*ap__wire_sse_fn)(void *ctx, const char *event, const char *data, size_t len,
                                     ap_error *err);
void ap__wire_sse_init(struct ap__wire_sse *s);
/* Feed any split of the stream. AP_ETOOLARGE past AP__WIRE_MAX_EVENT_BYTES per line/event. */
ap_status ap__wire_sse_feed(struct ap__wire_sse *s, const char *buf, size_t len, ap__wire_sse_fn fn,
                            void *ctx, ap_error *err);
void ap__wire_sse_release(struct ap__wire_sse *s);

/* ---- the common streaming translator ------------------------------------------------------ */

/*
 * struct ap__stream (opaque in provider.h) is the same for every provider: the SSE parser, the
 * emit callback, what the canonical chunks carry (id, created, model) and the provider's two
 * hooks. on_event gets each SSE event; on_eof runs when the caller reports the end of the
 * upstream body (stream_feed with data NULL) before the stream's own end was seen.
 */
struct ap__stream {
    const ap_provider_conf *p; /* borrowed: the configuration outlives every request */
    const char *prefix;        /* "openai", ... for messages */
    ap_status (*on_event)(struct ap__stream *s, const char *event, const char *data, size_t len,
                          ap_error *err);
    ap_status (*on_eof)(struct ap__stream *s, ap_error *err);
    ap__chunk_fn emit;
    void *ctx;
    struct ap__wire_sse sse;
    struct ap__usage usage;
    ap_status failed;   /* sticky: after a failure every feed fails the same way */
    bool done;          /* the stream's end was seen; later bytes are ignored */
    bool role_sent;     /* the first chunk (delta.role) went out */
    bool finished;      /* a chunk with a finish_reason went out */
    json_int_t created; /* unix seconds at stream_new */
    char id[128];
    char *model; /* owned */
};

struct ap__stream *ap__wire_stream_new(const ap_provider_conf *p, const char *prefix,
                                       const char *model, ap__chunk_fn emit, void *ctx);
/* The stream_feed and stream_free of every provider's ops. */
ap_status ap__wire_stream_feed(struct ap__stream *s, const char *data, size_t len, bool *done,
                               struct ap__usage *usage, ap_error *err);
void ap__wire_stream_free(struct ap__stream *s);
/* Replace s->id / s->model with what the upstream reported (ignored when empty). */
void ap__wire_stream_set_id(struct ap__stream *s, const char *id);
ap_status ap__wire_stream_set_model(struct ap__stream *s, const char *model);
/* Emit the role chunk once ({"role":"assistant","content":""}), then text as a content delta
 * (nothing for len 0), a finish chunk, or the usage chunk ("choices": []). */
ap_status ap__wire_emit_role(struct ap__stream *s, ap_error *err);
ap_status ap__wire_emit_text(struct ap__stream *s, const char *text, size_t len, ap_error *err);
ap_status ap__wire_emit_finish(struct ap__stream *s, const char *finish_reason, ap_error *err);
ap_status ap__wire_emit_usage(struct ap__stream *s, ap_error *err);
/* Parse one event's data as a JSON object (AP_EDECODE "<prefix>: stream event is not a json
 * object" otherwise). */
ap_status ap__wire_event_json(struct ap__stream *s, const char *data, size_t len, json_t **out,
                              ap_error *err);

/* ---- canonical builders ------------------------------------------------------------------- */

/* {"prompt_tokens","completion_tokens","total_tokens"}; unknown counts are 0. NULL: ENOMEM. */
json_t *ap__wire_usage_json(const struct ap__usage *u);
/* A canonical chat.completion with one choice. NULL on allocation failure. */
json_t *ap__wire_completion(const char *id, json_int_t created, const char *model, const char *text,
                            size_t text_len, const char *finish_reason, const struct ap__usage *u);
/* A fresh id: prefix followed by 24 random hex digits. */
void ap__wire_gen_id(char *out, size_t n, const char *prefix);
/* The integer at key, or -1 when absent or not a non-negative integer. */
long ap__wire_count(const json_t *obj, const char *key);

/* ---- reading the canonical request (for the non-OpenAI wires) ----------------------------- */

/* Validate req is an object whose "messages" is a non-empty array; returns the array. Also
 * rejects what no non-OpenAI wire here can carry: "tools"/"functions" (non-empty) and n > 1. */
ap_status ap__wire_req_messages(const json_t *req, const char *prefix, const json_t **messages,
                                ap_error *err);
/* A message's role, validated; tool turns ("tool", "function", assistant "tool_calls") fail
 * with AP_EINVAL "<prefix>: tools are not supported yet". */
ap_status ap__wire_msg_role(const json_t *msg, size_t i, const char *prefix, const char **role,
                            ap_error *err);
/* Append the text of a system message's content (a string or text parts) to b, each piece
 * separated from what b already holds by a blank line. Non-text parts: AP_EINVAL. */
ap_status ap__wire_system_text(const json_t *content, size_t i, const char *prefix,
                               struct ap__wire_buf *b, ap_error *err);
/* The URL of an image_url part ({"image_url":{"url":...}} or {"image_url":"..."}). */
ap_status ap__wire_image_url(const json_t *part, size_t i, size_t k, const char *prefix,
                             const char **url, ap_error *err);
/* Split "data:<mime>[;params];base64,<data>". false when url is not such a URL. */
bool ap__wire_data_url(const char *url, const char **mime, size_t *mime_len, const char **data,
                       size_t *data_len);
bool ap__wire_is_http_url(const char *url);
/* max_completion_tokens, else max_tokens, else dflt (-1: absent). Must be a positive integer. */
ap_status ap__wire_max_tokens(const json_t *req, const char *prefix, json_int_t dflt,
                              json_int_t *out, ap_error *err);
/* "stop" as a new array of strings, or *out NULL when absent, null or empty. */
ap_status ap__wire_stop(const json_t *req, const char *prefix, json_t **out, ap_error *err);
/* A number field ("temperature", "top_p"): *out borrowed or NULL when absent/null. */
ap_status ap__wire_number(const json_t *req, const char *key, const char *prefix,
                          const json_t **out, ap_error *err);
/*
 * response_format: *json_mode is set when the client asked for JSON ("json_object" or
 * "json_schema"); when instruction is not NULL the instruction to answer with JSON only (with
 * the schema, if any) is appended to it like a system text.
 */
ap_status ap__wire_json_mode(const json_t *req, const char *prefix, bool *json_mode,
                             struct ap__wire_buf *instruction, ap_error *err);

/* ---- the upstream request ----------------------------------------------------------------- */

/* url = base_url without trailing slashes + path (+ path2, may be NULL). */
ap_status ap__wire_url(struct ap__upreq *r, const ap_provider_conf *p, const char *prefix,
                       const char *path, const char *path2, ap_error *err);
/* Add "Name: value". A value holding CR, LF or NUL fails with AP_EINVAL without quoting it
 * (it may be the key). */
ap_status ap__wire_header(struct ap__upreq *r, const char *prefix, const char *name,
                          const char *value, ap_error *err);
/* Serialise body into r->body. */
ap_status ap__wire_body(struct ap__upreq *r, const json_t *body, const char *prefix, ap_error *err);
/* The provider's key when one is set (non-empty), else NULL. */
const char *ap__wire_key(const ap_provider_conf *p);

/* ---- upstream errors ---------------------------------------------------------------------- */

/* AP_EUPSTREAM "<prefix>: <msg>": msg sanitised, every run of 8+ characters of the key
 * redacted (found before any cut, so no part of it survives), cut between characters to fit. */
ap_status ap__wire_upstream_error(const ap_provider_conf *p, const char *prefix, const char *msg,
                                  size_t len, ap_error *err);
/*
 * The message for a non-2xx answer: error.message, error (a string), message, or the same in
 * the first element of an array (Gemini); otherwise the start of the raw body (200 chars), or
 * "http <status>" for an empty body. Always returns AP_EUPSTREAM.
 */
ap_status ap__wire_http_error(const ap_provider_conf *p, const char *prefix, long status,
                              const char *body, size_t len, ap_error *err);
/* The upstream's message inside a parsed error document (see above), or NULL. */
const json_t *ap__wire_error_message(const json_t *doc);

#endif
