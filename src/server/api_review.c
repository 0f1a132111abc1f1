/*
 * api_review.c - the human review queue over HTTP, and the breakers' admin view.
 *
 *   GET  /v1/review/{id}         a client reads its item (client key; the id is the secret)
 *   GET  /v1/review?status=&limit=&offset=   list (admin key)
 *   POST /v1/review/{id}         resolve: {"answer": <any JSON>, "reviewer": "..."} or
 *                                {"status": "rejected", "reviewer": "..."} (admin key)
 *   GET  /v1/admin/breakers      every deployment's breaker (admin key)
 *
 * Store calls are blocking I/O (SQLite, Redis), so these run on the worker pool.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/crypto.h>

#include "aperture/hash.h"
#include "core/core.h"
#include "server/server.h"

bool ap__req_admin(struct ap__req *r)
{
    struct ap_gateway *gw = r->gw;
    if (gw->admin_key_sha256[0] == '\0') {
        ap__req_error(r, 403, "forbidden", NULL, "admin endpoints are off: set APERTURE_ADMIN_KEY");
        return false;
    }
    const char *authz = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization");
    const char *cred = authz && strncasecmp(authz, "Bearer ", 7) == 0
                           ? authz + 7
                           : MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "x-api-key");
    uint8_t d[32];
    char hex[65] = "";
    if (cred && ap_sha256((const uint8_t *)cred, strlen(cred), d, NULL) == AP_OK)
        ap_sha256_hex(d, hex);
    if (hex[0] == '\0' || CRYPTO_memcmp(hex, gw->admin_key_sha256, 64) != 0) {
        ap__req_error(r, 401, "authentication_error", NULL, "missing or invalid admin key");
        return false;
    }
    return true;
}

/* An item as JSON; strings that hold JSON (candidate, answer, request) are embedded parsed. */
static json_t *item_json(const ap_review_item *it)
{
    json_t *j = json_pack("{s:s, s:s, s:I, s:s?, s:s?, s:s?, s:s?}", "id", it->id, "status",
                          ap_review_status_name(it->status), "created_unix_ms",
                          (json_int_t)it->created_unix_ms, "task", it->task, "model", it->model,
                          "client", it->client, "reason", it->reason);
    if (j == NULL)
        return NULL;
    if (it->resolved_unix_ms > 0)
        json_object_set_new(j, "resolved_unix_ms", json_integer(it->resolved_unix_ms));
    if (it->reviewer)
        json_object_set_new(j, "reviewer", json_string(it->reviewer));
    const char *fields[] = {"candidate", "answer", "request"};
    const char *vals[] = {it->candidate, it->answer, it->request};
    for (int i = 0; i < 3; i++) {
        if (vals[i] == NULL)
            continue;
        json_t *v = json_loads(vals[i], JSON_DECODE_ANY, NULL);
        json_object_set_new(j, fields[i], v ? v : json_string(vals[i]));
    }
    return j;
}

static unsigned store_status(ap_status rc)
{
    switch (rc) {
    case AP_ENOTFOUND:
        return 404;
    case AP_EINVAL:
        return 409;
    case AP_ENETWORK:
        return 503;
    default:
        return 500;
    }
}

static void review_list(struct ap__req *r)
{
    const char *st = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "status");
    const char *lim = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "limit");
    const char *off = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "offset");
    ap_review_status status = AP_REVIEW_PENDING;
    if (st && ap_review_status_parse(st, &status) != AP_OK) {
        ap__req_error(r, 400, "invalid_request_error", "status",
                      "status must be pending, resolved or rejected");
        return;
    }
    long limit = lim ? strtol(lim, NULL, 10) : 50, offset = off ? strtol(off, NULL, 10) : 0;
    if (limit < 1 || limit > 500 || offset < 0) {
        ap__req_error(r, 400, "invalid_request_error", NULL,
                      "limit must be 1..500 and offset >= 0");
        return;
    }
    ap_review_item *items = NULL;
    size_t n = 0, total = 0;
    ap_error err = {0};
    ap_status rc =
        ap_review_list(r->gw->review, status, (size_t)offset, (size_t)limit, &items, &n, &err);
    if (rc == AP_OK)
        rc = ap_review_count(r->gw->review, status, &total, &err);
    if (rc != AP_OK) {
        for (size_t i = 0; i < n; i++)
            ap_review_item_release(&items[i]);
        free(items);
        ap__req_error(r, store_status(rc), "review_store_error", NULL, "%s", err.msg);
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++) {
        json_array_append_new(arr, item_json(&items[i]));
        ap_review_item_release(&items[i]);
    }
    free(items);
    ap__req_respond_json(r, 200,
                         json_pack("{s:s, s:I, s:o}", "status", ap_review_status_name(status),
                                   "total", (json_int_t)total, "items", arr),
                         NULL);
}

static void review_resolve(struct ap__req *r, const char *id)
{
    json_error_t jerr;
    json_t *body = r->body ? json_loadb(r->body, r->len, 0, &jerr) : NULL;
    if (!json_is_object(body)) {
        json_decref(body);
        ap__req_error(
            r, 400, "invalid_request_error", NULL,
            "body must be a JSON object: {\"answer\": ...} or {\"status\": \"rejected\"}");
        return;
    }
    const char *st = json_string_value(json_object_get(body, "status"));
    const char *reviewer = json_string_value(json_object_get(body, "reviewer"));
    json_t *answer = json_object_get(body, "answer");
    ap_review_status status = AP_REVIEW_RESOLVED;
    if (st && (ap_review_status_parse(st, &status) != AP_OK || status == AP_REVIEW_PENDING)) {
        json_decref(body);
        ap__req_error(r, 400, "invalid_request_error", "status",
                      "status must be resolved or rejected");
        return;
    }
    if (status == AP_REVIEW_RESOLVED && answer == NULL) {
        json_decref(body);
        ap__req_error(r, 400, "invalid_request_error", "answer", "a resolved item needs an answer");
        return;
    }
    char *ans = answer ? json_dumps(answer, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    ap_error err = {0};
    ap_status rc = ap_review_resolve(r->gw->review, id, status, ans, reviewer, &err);
    free(ans);
    json_decref(body);
    if (rc != AP_OK) {
        ap__req_error(r, store_status(rc), rc == AP_EINVAL ? "conflict" : "review_store_error",
                      NULL, "%s", err.msg);
        return;
    }
    ap__metrics_add(r->gw->metrics, "aperture_review_resolved_total",
                    (const char *[]){"status", ap_review_status_name(status), NULL}, 1);
    ap_review_item it;
    if (ap_review_get(r->gw->review, id, false, &it, &err) == AP_OK) {
        ap__req_respond_json(r, 200, item_json(&it), NULL);
        ap_review_item_release(&it);
    } else {
        ap__req_respond_json(
            r, 200, json_pack("{s:s, s:s}", "id", id, "status", ap_review_status_name(status)),
            NULL);
    }
}

void ap__api_review(struct ap__req *r)
{
    struct ap_gateway *gw = r->gw;
    const char *id = strncmp(r->url, "/v1/review/", 11) == 0 ? r->url + 11 : NULL;
    /* Reading one's own item takes a client key; everything else the admin key. */
    bool admin_only = id == NULL || r->is_post;
    if (admin_only ? !ap__req_admin(r) : !ap__req_client(r))
        return;
    if (gw->review == NULL) {
        ap__req_error(r, 503, "unavailable", NULL, "%s",
                      gw->review_err[0] ? gw->review_err : "the review store is not open");
        return;
    }
    if (id == NULL) {
        review_list(r);
        return;
    }
    if (r->is_post) {
        review_resolve(r, id);
        return;
    }
    const char *full = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "request");
    ap_review_item it;
    ap_error err = {0};
    ap_status rc = ap_review_get(gw->review, id, full && strcmp(full, "1") == 0, &it, &err);
    if (rc != AP_OK) {
        ap__req_error(r, store_status(rc), rc == AP_ENOTFOUND ? "not_found" : "review_store_error",
                      NULL, "%s", rc == AP_ENOTFOUND ? "no review item with that id" : err.msg);
        return;
    }
    json_t *j = item_json(&it);
    json_object_set_new(j, "needs_review", json_boolean(it.status == AP_REVIEW_PENDING));
    ap_review_item_release(&it);
    ap__req_respond_json(r, 200, j, NULL);
}

/* ---- GET /v1/admin/breakers ------------------------------------------------------------------ */

struct brk_ctx {
    json_t *arr;
    int64_t now;
};

static void brk_one(const ap_breaker_info *in, void *ctx)
{
    struct brk_ctx *b = ctx;
    json_t *j = json_pack("{s:s, s:s, s:i, s:i, s:i, s:I}", "deployment", in->deployment, "state",
                          ap_breaker_state_name(in->state), "consecutive_failures",
                          in->consecutive_failures, "window_requests", (int)in->window_requests,
                          "window_failures", (int)in->window_failures, "times_opened",
                          (json_int_t)in->times_opened);
    if (j == NULL)
        return;
    if (in->state == AP_BREAKER_OPEN)
        json_object_set_new(j, "retry_in_ms",
                            json_integer(in->probe_at_ms > b->now ? in->probe_at_ms - b->now : 0));
    if (in->times_opened > 0)
        json_object_set_new(j, "opened_ms_ago", json_integer(b->now - in->opened_at_ms));
    json_array_append_new(b->arr, j);
}

void ap__api_admin_breakers(struct ap__req *r)
{
    struct ap_gateway *gw = r->gw;
    if (!ap__req_admin(r))
        return;
    struct brk_ctx b = {json_array(), (int64_t)ap__now_ms()};
    ap_breaker_foreach(gw->breakers, brk_one, &b);
    ap_breaker_sync *sync = atomic_load(&gw->breaker_sync);
    const ap_breaker_opts *o = &gw->cfg->breaker;
    ap__req_respond_json(
        r, 200,
        json_pack("{s:o, s:s, s:b, s:{s:i, s:f, s:I, s:i, s:I, s:i}}", "breakers", b.arr, "shared",
                  sync ? "redis" : "local", "shared_connected",
                  sync ? ap_breaker_sync_connected(sync) : false, "options", "consecutive_failures",
                  o->consecutive_failures, "error_rate", o->error_rate, "window_ms",
                  (json_int_t)o->window_ms, "min_requests", o->min_requests, "cooldown_ms",
                  (json_int_t)o->cooldown_ms, "half_open_probes", o->half_open_probes),
        NULL);
}
