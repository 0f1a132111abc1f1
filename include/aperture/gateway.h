/*
 * gateway.h - aperture serve: the HTTP gateway in front of vision-language models.
 *
 * One libmicrohttpd daemon (one event thread, epoll) parses requests; CPU work (image
 * preprocessing, OCR) runs on a worker pool sized to the cores; upstream calls run on one libcurl
 * multi loop. While a request waits on either, its connection is suspended, so a waiting request
 * holds no thread. Endpoints: POST /v1/chat/completions (OpenAI), POST /v1/messages (Anthropic),
 * POST /v1/analyze and /v1/preprocess (native), GET /v1/models, /metrics, /healthz, /readyz.
 */
#ifndef APERTURE_GATEWAY_H
#define APERTURE_GATEWAY_H

#include "aperture/config.h"
#include "aperture/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ap_gateway ap_gateway;

/*
 * Start serving cfg (borrowed; must outlive the gateway) on cfg->listen. Refuses
 * (AP_EINVAL) to listen on a non-loopback address when no client keys are configured.
 */
AP_API AP_NODISCARD ap_status ap_gateway_start(const ap_config *cfg, ap_gateway **out,
                                               ap_error *err);

/* The port actually bound (useful with port 0). */
AP_API unsigned ap_gateway_port(const ap_gateway *gw);

/*
 * Stop: refuse new connections, let requests in flight finish for up to deadline_ms, then
 * abort what is left and free everything. NULL is a no-op.
 */
AP_API void ap_gateway_stop(ap_gateway *gw, long deadline_ms);

#ifdef __cplusplus
}
#endif
#endif
