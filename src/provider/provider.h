/*
 * provider.h - upstream model providers behind one interface.
 *
 * The canonical request inside the gateway is an OpenAI Chat Completions request body (jansson
 * json_t): messages with text and image_url parts, system as a "system" message, max_tokens,
 * temperature, top_p, stop, response_format, stream, stream_options. By the time a provider
 * sees it, every image part is a data: URL holding the preprocessed image. The canonical
 * response is an OpenAI chat.completion object; the canonical stream is a sequence of OpenAI
 * chat.completion.chunk objects. Front ends (src/server/api_*.c) translate their dialect to and
 * from canonical; providers translate canonical to and from their wire format.
 *
 * Each provider type is one file (openai.c, anthropic.c, gemini.c; the openai-compatible type
 * shares openai.c) exposing a const struct ap__provider_ops; the local provider (local.c) runs
 * in-process and has no HTTP step.
 *
 * Keys: build() puts the key in a header; nothing here ever formats a key into an error
 * message or a log line.
 */
#ifndef AP_PROVIDER_H
#define AP_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "aperture/config.h"
#include "aperture/status.h"

/* An upstream HTTP request, ready for libcurl: POST url with headers and body. */
struct ap__upreq {
    char *url;
    char **headers; /* "Name: value" strings, n_headers of them */
    size_t n_headers;
    char *body;
    size_t body_len;
};
void ap__upreq_release(struct ap__upreq *r);

/* Usage as the provider reported it (-1 where it did not). */
struct ap__usage {
    long input_tokens, output_tokens, image_tokens;
};

/*
 * Incremental translation of an upstream stream (SSE, or Gemini's SSE with alt=sse) into
 * canonical chunks. emit() receives each chunk (borrowed; valid during the call). done is set
 * once the stream's end was seen. feed() may be called with any split of the bytes.
 *
 * The canonical chunks: OpenAI upstreams' chunks pass through as they came; the others yield
 * a first chunk with delta {"role":"assistant","content":""}, content deltas, a chunk with
 * the finish_reason, and a usage chunk ("choices": [], "usage": {...}). OpenAI upstreams send
 * that usage chunk too, since build() asks for it unless the client set stream_options; the
 * server drops usage chunks for a client that did not ask for stream_options.include_usage.
 */
typedef void (*ap__chunk_fn)(void *ctx, const json_t *chunk);
struct ap__stream;

struct ap__provider_ops {
    const char *name; /* "openai", "anthropic", "gemini" */
    /* Build the upstream request for canonical req, addressed to upstream_model. */
    ap_status (*build)(const ap_provider_conf *p, const char *upstream_model, const json_t *req,
                       bool stream, struct ap__upreq *out, ap_error *err);
    /*
     * Translate a complete upstream response into a canonical response. A non-2xx status fails
     * with AP_EUPSTREAM and err->msg = "<provider>: <the provider's own error message>" (or the
     * start of the raw body, 200 characters at most, when it is not JSON); a 2xx body that is
     * not the expected JSON fails with AP_EDECODE. usage is filled where reported (-1 where
     * not). The response's "model" is the one the upstream reported. Also the way to read the
     * error body of a non-2xx answer to a streaming request.
     */
    ap_status (*parse)(const ap_provider_conf *p, long status, const char *body, size_t len,
                       json_t **resp, struct ap__usage *usage, ap_error *err);
    /*
     * Streaming translator: new/feed/free. stream_new: p is borrowed and must outlive the
     * stream; model is what chunks carry until the upstream names its own (Anthropic
     * message_start, Gemini modelVersion); NULL on allocation failure.
     * stream_feed: data NULL (len ignored) reports the end of the upstream body: a last event
     * missing only its blank line still counts, a line cut mid-way does not, and a stream that
     * ends before its own end marker fails with AP_ENETWORK. On success *done (may be NULL)
     * tells whether the stream's end was seen (later bytes are ignored) and *usage (may be NULL)
     * holds what the stream reported so far. Failures: AP_EUPSTREAM for an error event
     * ("<provider>: <message>"), AP_EDECODE for an event that is not the expected JSON,
     * AP_ETOOLARGE for a line or event over 16 MiB; after a failure every later feed fails with
     * the same code. stream_free(NULL) is a no-op.
     */
    struct ap__stream *(*stream_new)(const ap_provider_conf *p, const char *model,
                                     ap__chunk_fn emit, void *ctx);
    ap_status (*stream_feed)(struct ap__stream *s, const char *data, size_t len, bool *done,
                             struct ap__usage *usage, ap_error *err);
    void (*stream_free)(struct ap__stream *s);
};

/* The ops for a provider type (the local type has none: NULL). */
const struct ap__provider_ops *ap__provider_ops_for(ap_provider_type t);

extern const struct ap__provider_ops ap__openai_ops;    /* openai and openai-compatible */
extern const struct ap__provider_ops ap__anthropic_ops;
extern const struct ap__provider_ops ap__gemini_ops;

/*
 * Front-end translation for the Anthropic Messages dialect (src/provider/anthropic.c, since it
 * knows the format both ways): request -> canonical, canonical response -> Anthropic response,
 * canonical chunks -> Anthropic SSE events.
 */
ap_status ap__anthropic_req_to_canon(const json_t *in, json_t **canon, ap_error *err);
/* NULL when canon has no choices[0].message, or on allocation failure. (transfer full) */
json_t *ap__canon_resp_to_anthropic(const json_t *canon);
struct ap__anth_sse; /* writer state: message_start .. message_stop */
/* model: what message_start names (NULL: the first chunk's model). NULL on allocation failure. */
struct ap__anth_sse *ap__anth_sse_new(const char *model);
/* Append the SSE text for one canonical chunk (or the final events when chunk is NULL) to a
 * malloc'd string in *out (may be empty: *out_len 0). */
ap_status ap__anth_sse_chunk(struct ap__anth_sse *w, const json_t *chunk, char **out,
                             size_t *out_len);
/* The SSE text of an error event (type NULL: "api_error") for a failure once the stream has
 * begun; nothing is written after it. */
ap_status ap__anth_sse_error(struct ap__anth_sse *w, const char *type, const char *message,
                             char **out, size_t *out_len);
void ap__anth_sse_free(struct ap__anth_sse *w);

/*
 * The local provider: answer a canonical request in-process with Tesseract OCR over the
 * (OCR-sized) images and rules for the built-in tasks. images/lens are the normalised images
 * capped at cfg->ocr_max_edge, in message order. task may be NULL ("describe"). Returns a
 * canonical response whose message content is JSON text for extraction tasks.
 */
ap_status ap__local_answer(const ap_config *cfg, const char *task, const json_t *req,
                           const uint8_t *const *images, const size_t *lens, size_t n_images,
                           json_t **resp, ap_error *err);

#endif
