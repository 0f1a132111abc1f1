/*
 * test_server.c - the HTTP front, in-process: a gateway on an ephemeral loopback port, driven
 * with libcurl. Auth, rate limits, body caps, malformed input, routing errors, health, metrics,
 * /v1/preprocess and the base64 decoder. Model calls are covered by tests/compat (fake
 * upstream + official SDKs).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aperture/config.h"
#include "aperture/gateway.h"
#include "aperture/prep.h"
#include "server/server.h"

struct resp {
    long status;
    char *body;
    size_t len;
    char headers[4096];
    size_t hlen;
};

static size_t on_body(char *d, size_t s, size_t n, void *arg)
{
    struct resp *r = arg;
    char *nb = realloc(r->body, r->len + s * n + 1);
    assert_non_null(nb);
    r->body = nb;
    memcpy(r->body + r->len, d, s * n);
    r->len += s * n;
    r->body[r->len] = '\0';
    return s * n;
}

static size_t on_header(char *d, size_t s, size_t n, void *arg)
{
    struct resp *r = arg;
    size_t k = s * n;
    if (r->hlen + k < sizeof(r->headers) - 1) {
        memcpy(r->headers + r->hlen, d, k);
        r->hlen += k;
        r->headers[r->hlen] = '\0';
    }
    return k;
}

/* One request: method GET when body == NULL. hdr: NULL-terminated header lines. */
static struct resp call(unsigned port, const char *path, const char *body, size_t len,
                        const char *const *hdr)
{
    struct resp r = {0};
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", port, path);
    CURL *e = curl_easy_init();
    struct curl_slist *sl = NULL;
    for (size_t i = 0; hdr && hdr[i]; i++)
        sl = curl_slist_append(sl, hdr[i]);
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, sl);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &r);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, 60L);
    if (body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)len);
    }
    assert_int_equal(curl_easy_perform(e), CURLE_OK);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(sl);
    curl_easy_cleanup(e);
    if (r.body == NULL)
        r.body = strdup("");
    return r;
}

struct fixture {
    ap_config *cfg;
    ap_gateway *gw;
    unsigned port;
};

static struct fixture start(const char *yaml)
{
    struct fixture f = {0};
    ap_error err = {0};
    unsetenv("APERTURE_CONFIG");
    unsetenv("OPENAI_API_KEY");
    unsetenv("ANTHROPIC_API_KEY");
    unsetenv("GEMINI_API_KEY");
    setenv("APERTURE_LOG_FILE", "/dev/null", 1);
    if (ap_config_load_buffer(yaml, strlen(yaml), "test.yaml", "127.0.0.1:0", &f.cfg, &err) !=
        AP_OK)
        fail_msg("config: %s", err.msg);
    if (ap_gateway_start(f.cfg, &f.gw, &err) != AP_OK)
        fail_msg("start: %s", err.msg);
    f.port = ap_gateway_port(f.gw);
    assert_true(f.port > 0);
    return f;
}

static void stop(struct fixture *f)
{
    ap_gateway_stop(f->gw, 2000);
    ap_config_free(f->cfg);
}

static void free_resp(struct resp *r)
{
    free(r->body);
}

static void test_server__health_ready_metrics(void **state)
{
    (void)state;
    struct fixture f = start("listen: 127.0.0.1:0\n");
    struct resp r = call(f.port, "/healthz", NULL, 0, NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "ok"));
    free_resp(&r);
    r = call(f.port, "/readyz", NULL, 0, NULL);
    assert_int_equal(r.status, 200);
    free_resp(&r);
    r = call(f.port, "/nope", NULL, 0, NULL);
    assert_int_equal(r.status, 404);
    free_resp(&r);
    r = call(f.port, "/metrics", NULL, 0, NULL);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "# TYPE aperture_requests_total counter"));
    /* The 404 above was counted (metrics are updated when a request completes). */
    assert_non_null(strstr(r.body, "aperture_requests_total{endpoint=\"other\",model=\"-\","
                                   "status=\"404\"} 1"));
    assert_non_null(strstr(r.body, "# TYPE aperture_request_duration_seconds histogram"));
    free_resp(&r);
    stop(&f);
}

static void test_server__malformed_and_missing(void **state)
{
    (void)state;
    struct fixture f = start("listen: 127.0.0.1:0\n");
    const char *ct[] = {"Content-Type: application/json", NULL};
    struct resp r = call(f.port, "/v1/chat/completions", "{bad", 4, ct);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "\"type\":\"invalid_request_error\""));
    assert_non_null(strstr(r.body, "not a JSON object"));
    free_resp(&r);
    r = call(f.port, "/v1/chat/completions", "{\"messages\":[]}", 15, ct);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "\"param\":\"model\""));
    free_resp(&r);
    /* Anthropic dialect: its own error shape. */
    r = call(f.port, "/v1/messages", "[1,2]", 5, ct);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "\"type\":\"error\""));
    free_resp(&r);
    /* A model nothing routes to. */
    const char *q = "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}";
    r = call(f.port, "/v1/chat/completions", q, strlen(q), ct);
    assert_int_equal(r.status, 404);
    assert_non_null(strstr(r.body, "OPENAI_API_KEY"));
    free_resp(&r);
    /* A refused image names its place in the request and the pipeline's code. */
    const char *img = "{\"model\":\"local\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                      "\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,PHN2Zz4=\"}}]}]}";
    r = call(f.port, "/v1/chat/completions", img, strlen(img), ct);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "messages[0].content[0]"));
    assert_non_null(strstr(r.body, "AP_EUNSUPPORTED"));
    free_resp(&r);
    /* Wrong method. */
    r = call(f.port, "/v1/chat/completions", NULL, 0, NULL);
    assert_int_equal(r.status, 405);
    free_resp(&r);
    stop(&f);
}

static void test_server__body_cap(void **state)
{
    (void)state;
    struct fixture f = start("listen: 127.0.0.1:0\nmax_body_bytes: 1000\n");
    char *big = malloc(5000);
    memset(big, 'x', 5000);
    const char *ct[] = {"Content-Type: application/json", NULL};
    struct resp r = call(f.port, "/v1/chat/completions", big, 5000, ct);
    assert_int_equal(r.status, 413);
    assert_non_null(strstr(r.body, "over the limit"));
    free_resp(&r);
    free(big);
    stop(&f);
}

static void test_server__auth_and_rate_limit(void **state)
{
    (void)state;
    /* sha256("secret-key") */
    struct fixture f = start("listen: 127.0.0.1:0\nrate_rps: 0.001\nrate_burst: 2\n"
                             "client_keys_sha256:\n"
                             "  - 2a0d1aa1b6b8b7e0cbcd1c6b9b5c3b0e4e6f2c1f0d5d8b7a6f5e4d3c2b1a0f9e\n");
    ap_config_free(NULL);
    /* The hash above is not of any key we send: every key is refused. */
    const char *noauth[] = {"Content-Type: application/json", NULL};
    struct resp r = call(f.port, "/v1/models", NULL, 0, noauth);
    assert_int_equal(r.status, 401);
    assert_non_null(strstr(r.body, "API key"));
    free_resp(&r);
    const char *bad[] = {"Authorization: Bearer wrong", NULL};
    r = call(f.port, "/v1/models", NULL, 0, bad);
    assert_int_equal(r.status, 401);
    free_resp(&r);
    /* Health and metrics need no key. */
    r = call(f.port, "/healthz", NULL, 0, NULL);
    assert_int_equal(r.status, 200);
    free_resp(&r);
    stop(&f);

    setenv("APERTURE_CLIENT_KEYS", "k-one", 1);
    f = start("listen: 127.0.0.1:0\nrate_rps: 0.001\nrate_burst: 2\n");
    unsetenv("APERTURE_CLIENT_KEYS");
    const char *good[] = {"Authorization: Bearer k-one", NULL};
    const char *xkey[] = {"x-api-key: k-one", NULL};
    r = call(f.port, "/v1/models", NULL, 0, good);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"local\""));
    free_resp(&r);
    r = call(f.port, "/v1/models", NULL, 0, xkey);
    assert_int_equal(r.status, 200);
    free_resp(&r);
    /* The bucket held 2; the third request within the refill period is refused. */
    r = call(f.port, "/v1/models", NULL, 0, good);
    assert_int_equal(r.status, 429);
    assert_non_null(strstr(r.headers, "Retry-After:"));
    free_resp(&r);
    stop(&f);
}

static void test_server__refuses_public_listen_without_keys(void **state)
{
    (void)state;
    ap_config *cfg = NULL;
    ap_error err = {0};
    const char *y = "listen: 0.0.0.0:0\n";
    unsetenv("APERTURE_CLIENT_KEYS");
    assert_int_equal(ap_config_load_buffer(y, strlen(y), "t.yaml", NULL, &cfg, &err), AP_OK);
    ap_gateway *gw = NULL;
    assert_int_equal(ap_gateway_start(cfg, &gw, &err), AP_EINVAL);
    assert_non_null(strstr(err.msg, "without client keys"));
    assert_null(gw);
    ap_config_free(cfg);
}

static void test_server__preprocess_raw_and_json(void **state)
{
    (void)state;
    struct fixture f = start("listen: 127.0.0.1:0\n");
    FILE *fp = fopen(AP_CORPUS "/orientation/pillow-hopper/hopper_orientation_6.jpg", "rb");
    assert_non_null(fp);
    char buf[65536];
    size_t n = fread(buf, 1, sizeof(buf), fp);
    fclose(fp);
    const char *ct[] = {"Content-Type: image/jpeg", NULL};
    struct resp r = call(f.port, "/v1/preprocess?format=png", buf, n, ct);
    assert_int_equal(r.status, 200);
    assert_true(r.len > 8 && memcmp(r.body, "\x89PNG", 4) == 0);
    assert_non_null(strstr(r.headers, "x-aperture-width: 128"));
    free_resp(&r);
    r = call(f.port, "/v1/preprocess?response=json&target=thumbnail", buf, n, ct);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "\"orientation\":6"));
    assert_non_null(strstr(r.body, "\"image_base64\":\""));
    free_resp(&r);
    /* Not an image. */
    r = call(f.port, "/v1/preprocess", "<svg></svg>", 11, ct);
    assert_int_equal(r.status, 415);
    assert_non_null(strstr(r.body, "svg"));
    free_resp(&r);
    stop(&f);
}

static void test_server__b64_decode(void **state)
{
    (void)state;
    uint8_t *out = NULL;
    size_t len = 0;
    assert_int_equal(ap__b64_decode("Zm9vYmFy", 8, 100, &out, &len), AP_OK);
    assert_int_equal(len, 6);
    assert_memory_equal(out, "foobar", 6);
    free(out);
    assert_int_equal(ap__b64_decode("Zm9vYg==", 8, 100, &out, &len), AP_OK);
    assert_int_equal(len, 4);
    free(out);
    assert_int_equal(ap__b64_decode("Zm9v\nYmE", 8, 100, &out, &len), AP_OK); /* wrapped */
    assert_int_equal(len, 5);
    free(out);
    out = NULL;
    assert_int_equal(ap__b64_decode("Zm9*", 4, 100, &out, &len), AP_EINVAL);
    assert_null(out);
    assert_int_equal(ap__b64_decode("Zm9vYmFy", 8, 3, &out, &len), AP_ETOOLARGE);
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server__health_ready_metrics),
        cmocka_unit_test(test_server__malformed_and_missing),
        cmocka_unit_test(test_server__body_cap),
        cmocka_unit_test(test_server__auth_and_rate_limit),
        cmocka_unit_test(test_server__refuses_public_listen_without_keys),
        cmocka_unit_test(test_server__preprocess_raw_and_json),
        cmocka_unit_test(test_server__b64_decode),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
