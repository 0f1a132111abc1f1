/*
 * test_config.c - the configuration: the example file, zero-config, routing, environment
 * overrides, and every way a config can be wrong (each must name the key and the line, and no
 * message may ever contain a key).
 *
 * Every test starts from an environment with none of the variables the loader reads
 * (clean_env), so the tests do not depend on the shell they run in or on each other.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aperture/config.h"

#define EXAMPLE AP_SOURCE_DIR "/config/aperture.example.yaml"
#define DOC     AP_SOURCE_DIR "/docs/CONFIG.md"

/* SHA-256 of "test", "another-key", "batch-key" and "partner-key". */
#define SHA_TEST    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
#define SHA_ANOTHER "dfc42b5169264b0614a973f3460a90a255e72d3bf083ced693776b21a3821690"
#define SHA_BATCH   "9d8db2a67d146638c07fbb5652ad998062e2e2fa857eef026c40c444b07e3872"
#define SHA_PARTNER "346e50af211b5135824bb2bb58fe0f9e6df228adcf10c58a37fbc46b57baee74"

/* Every variable the loader reads (the per-setting ones are APERTURE_ + the key). */
static const char *const settings_keys[] = {
    "listen",
    "max_body_bytes",
    "workers",
    "client_keys_sha256",
    "rate_rps",
    "rate_burst",
    "default_model",
    "max_image_bytes",
    "max_image_pixels",
    "image_min_side",
    "image_warn_min_side",
    "image_encoding",
    "image_quality",
    "image_background",
    "image_trim",
    "image_trim_tolerance",
    "image_gray",
    "ocr_max_edge",
    "fetch_allow_loopback",
    "fetch_allow_hosts",
    "fetch_timeout_ms",
    "fetch_max_bytes",
    "log_file",
    "log_prompts",
    "review_url",
    "retry.max_attempts",
    "retry.base_ms",
    "retry.cap_ms",
    "retry.retry_after_cap_ms",
    "retry.on_status",
    "retry.on_connect_error",
    "retry.on_timeout",
    "retry.attempt_timeout_ms",
    "retry.deadline_ms",
    "breaker.consecutive_failures",
    "breaker.error_rate",
    "breaker.window_ms",
    "breaker.min_requests",
    "breaker.cooldown_ms",
    "breaker.half_open_probes",
};
#define N_KEYS (sizeof(settings_keys) / sizeof(settings_keys[0]))

static const char *const other_vars[] = {
    "APERTURE_CONFIG", "APERTURE_CLIENT_KEYS", "MAX_IMAGE_SIZE_MB",  "OPENAI_API_KEY",
    "OPENAI_BASE_URL", "ANTHROPIC_API_KEY",    "ANTHROPIC_BASE_URL", "GEMINI_API_KEY",
    "GEMINI_BASE_URL", "VLLM_API_KEY",         "MY_VLLM_KEY",        "APERTURE_BREAKER_FAILURES",
};

/* APERTURE_ + the key in capitals; "retry.base_ms" -> APERTURE_RETRY_BASE_MS. */
static void env_name(const char *key, char *out, size_t cap)
{
    size_t k = (size_t)snprintf(out, cap, "APERTURE_");
    for (; *key && k + 1 < cap; key++)
        out[k++] = *key == '.' ? '_' : (char)(*key >= 'a' && *key <= 'z' ? *key - 'a' + 'A' : *key);
    out[k] = '\0';
}

static int clean_env(void **state)
{
    (void)state;
    char var[64];
    for (size_t i = 0; i < N_KEYS; i++) {
        env_name(settings_keys[i], var, sizeof(var));
        unsetenv(var);
    }
    for (size_t i = 0; i < sizeof(other_vars) / sizeof(other_vars[0]); i++)
        unsetenv(other_vars[i]);
    return 0;
}

/* Load YAML text (named "config.yaml" in messages) or fail the test. */
static ap_config *load_ok(const char *yaml)
{
    ap_config *c = NULL;
    ap_error err = {0};
    ap_status st =
        ap_config_load_buffer(yaml, yaml ? strlen(yaml) : 0, "config.yaml", NULL, &c, &err);
    if (st != AP_OK)
        fail_msg("load: %s %s", ap_strerror(st), err.msg);
    assert_non_null(c);
    return c;
}

/* Load YAML text expecting failure; returns the code, the message in err. */
static ap_status load_bad(const char *yaml, ap_error *err)
{
    ap_config *c = NULL;
    memset(err, 0, sizeof(*err));
    ap_status st = ap_config_load_buffer(yaml, strlen(yaml), "config.yaml", NULL, &c, err);
    if (st == AP_OK) {
        ap_config_free(c);
        fail_msg("loaded, but should not have:\n%s", yaml);
    }
    assert_null(c);
    return st;
}

static const ap_provider_conf *provider(const ap_config *c, const char *name)
{
    for (size_t i = 0; i < c->n_providers; i++)
        if (strcmp(c->providers[i].name, name) == 0)
            return &c->providers[i];
    return NULL;
}

/* Route name, expecting success at the provider named prov. */
static void routes_to(const ap_config *c, const char *name, const char *prov)
{
    const ap_model_conf *m = NULL;
    const ap_provider_conf *p = NULL;
    ap_error err = {0};
    ap_status st = ap_config_route(c, name, &m, &p, &err);
    if (st != AP_OK)
        fail_msg("route %s: %s %s", name, ap_strerror(st), err.msg);
    assert_non_null(p);
    if (strcmp(p->name, prov) != 0)
        fail_msg("route %s: went to %s, expected %s", name, p->name, prov);
}

static int contains(const char *hay, const char *needle)
{
    return strstr(hay, needle) != NULL;
}

/* ---- the example and the defaults ------------------------------------------------------ */

static void test_config__loads_the_example(void **state)
{
    (void)state;
    ap_config *c = NULL;
    ap_error err = {0};
    ap_status st = ap_config_load(EXAMPLE, NULL, &c, &err);
    if (st != AP_OK)
        fail_msg("%s: %s %s", EXAMPLE, ap_strerror(st), err.msg);

    assert_string_equal(c->listen, "127.0.0.1:8080");
    assert_int_equal(c->max_body_bytes, 64u << 20);
    assert_string_equal(c->client_key_sha256[0], SHA_TEST);
    assert_string_equal(c->client_key_sha256[1], SHA_ANOTHER);
    assert_true(c->rate_rps == 5.0);
    assert_true(c->rate_burst == 20.0);
    assert_string_equal(c->default_model, "local");

    /* All five provider types, and nothing duplicated by the zero-config ones. */
    bool seen[5] = {false};
    for (size_t i = 0; i < c->n_providers; i++)
        seen[c->providers[i].type] = true;
    for (int t = 0; t < 5; t++)
        assert_true(seen[t]);
    assert_int_equal(c->n_providers, 6);
    const ap_provider_conf *vllm = provider(c, "my-vllm");
    assert_non_null(vllm);
    assert_string_equal(vllm->base_url, "http://127.0.0.1:8000/v1");
    assert_int_equal(vllm->timeout_ms, 120000);
    assert_int_equal(vllm->connect_timeout_ms, 2000);
    assert_false(vllm->enabled); /* VLLM_API_KEY is not set */
    assert_string_equal(provider(c, "openai")->base_url, "https://api.openai.com/v1");
    assert_string_equal(provider(c, "gemini")->base_url,
                        "https://generativelanguage.googleapis.com/v1beta");
    assert_int_equal(provider(c, "gemini")->timeout_ms, 300000);
    assert_true(provider(c, "local")->enabled);
    /* self_hosted and limits. */
    assert_true(vllm->self_hosted);
    assert_int_equal(vllm->max_in_flight, 8);
    assert_int_equal(vllm->queue_max, 200);
    assert_int_equal(vllm->queue_timeout_ms, 60000);
    assert_true(vllm->rpm == 0 && vllm->tpm == 0);
    const ap_provider_conf *oa = provider(c, "openai");
    assert_false(oa->self_hosted);
    assert_int_equal(oa->max_in_flight, 64);
    assert_true(oa->rpm == 500.0);
    assert_true(oa->tpm == 200000.0);
    assert_int_equal(oa->queue_max, 100);
    assert_int_equal(oa->queue_timeout_ms, 30000);
    assert_false(provider(c, "gemini")->self_hosted);
    assert_true(provider(c, "my-vllm-b")->self_hosted);
    assert_int_equal(provider(c, "my-vllm-b")->max_in_flight, 4);
    assert_int_equal(provider(c, "my-vllm-b")->queue_max, 100);
    assert_true(provider(c, "local")->self_hosted);

    /* Disabled providers are warnings naming the variable; never a failure. */
    assert_true(c->n_warnings >= 1);
    bool vllm_warned = false;
    for (size_t i = 0; i < c->n_warnings; i++)
        vllm_warned |= contains(c->warnings[i], "VLLM_API_KEY");
    assert_true(vllm_warned);

    assert_int_equal(c->n_models, 5);
    assert_string_equal(c->models[0].name, "gpt-4o");
    assert_string_equal(c->models[0].upstream, "gpt-4o-2024-08-06");
    assert_true(c->models[0].usd_per_mtok_in == 2.5);
    assert_true(c->models[0].usd_per_mtok_out == 10.0);
    assert_string_equal(c->models[0].target, "openai-high");
    assert_string_equal(c->models[3].token_model, "qwen2.5-vl");
    /* qwen-vl: two deployments, provider/upstream the first one's. */
    assert_int_equal(c->models[3].n_deployments, 2);
    assert_string_equal(c->models[3].provider, "my-vllm");
    assert_string_equal(c->models[3].upstream, "Qwen/Qwen2.5-VL-7B-Instruct");
    assert_string_equal(c->models[3].deployments[1].provider, "my-vllm-b");
    assert_string_equal(c->models[3].deployments[1].upstream, "Qwen/Qwen2.5-VL-7B-Instruct");
    assert_true(c->models[3].deployments[0].weight == 2.0);
    assert_true(c->models[3].deployments[1].weight == 1.0);
    /* The others: exactly one, made from provider/upstream. */
    assert_int_equal(c->models[0].n_deployments, 1);
    assert_string_equal(c->models[0].deployments[0].provider, "openai");
    assert_string_equal(c->models[0].deployments[0].upstream, "gpt-4o-2024-08-06");
    assert_true(c->models[0].deployments[0].weight == 1.0);
    assert_false(c->models[3].has_token_patch);
    assert_true(c->models[4].has_token_patch);
    assert_int_equal(c->models[4].token_patch.patch_px, 16);
    assert_int_equal(c->models[4].token_patch.max_pixels, 1048576);
    assert_true(c->models[4].token_patch.tokens_per_patch == 1.0);
    assert_int_equal(c->models[4].token_patch.extra_tokens, 2);

    const char *tasks[] = {"describe", "invoice_extraction", "classify", "document_qa"};
    for (size_t i = 0; i < 4; i++) {
        const ap_task_conf *t = ap_config_task(c, tasks[i]);
        assert_non_null(t);
        assert_non_null(t->model);
        assert_true(strlen(t->prompt) > 10);
        assert_non_null(t->prompt_version);
    }
    assert_string_equal(ap_config_task(c, "describe")->prompt_version, "3");
    assert_string_equal(ap_config_task(c, "document_qa")->prompt_version, "1");
    assert_string_equal(ap_config_task(c, "document_qa")->model, "local");
    assert_true(contains(ap_config_task(c, "invoice_extraction")->prompt, "line_items"));
    assert_int_equal(c->models[0].n_fallbacks, 4);
    assert_string_equal(c->models[0].fallbacks[0], "claude-sonnet");
    assert_string_equal(c->models[0].fallbacks[3], "review");
    assert_int_equal(ap_config_task(c, "invoice_extraction")->n_fallbacks, 2);
    const ap_task_conf *inv = ap_config_task(c, "invoice_extraction");
    assert_true(inv->json); /* implied by required */
    assert_int_equal(inv->n_required, 2);
    assert_string_equal(inv->required[0], "vendor");
    assert_string_equal(inv->required[1], "total");
    assert_false(ap_config_task(c, "document_qa")->json);
    assert_false(ap_config_task(c, "describe")->json);
    assert_int_equal(ap_config_task(c, "describe")->n_required, 0);

    /* Clients: the plain list as key1, key2, then the named ones. */
    assert_int_equal(c->n_client_keys, 3);
    assert_string_equal(c->client_key_name[0], "key1");
    assert_string_equal(c->client_key_name[1], "key2");
    assert_string_equal(c->client_key_name[2], "batch");
    assert_string_equal(c->client_key_sha256[2], SHA_BATCH);

    /* Routes, in order. */
    assert_int_equal(c->n_routes, 4);
    const ap_route_rule *r = &c->routes[0];
    assert_string_equal(r->name, "restricted");
    assert_string_equal(r->data_class, "restricted");
    assert_int_equal(r->n_models, 3);
    assert_string_equal(r->models[2], "review");
    assert_null(r->task);
    assert_null(r->two_stage);
    assert_true(r->min_pixels == -1 && r->max_pixels == -1 && r->min_bytes == -1 &&
                r->max_bytes == -1 && r->min_images == -1 && r->max_images == -1);
    assert_string_equal(c->routes[1].task, "invoice_extraction");
    r = &c->routes[2];
    assert_string_equal(r->name, "batch-triage");
    assert_int_equal(r->n_clients, 1);
    assert_string_equal(r->clients[0], "batch");
    assert_true(r->min_pixels == 1000000);
    assert_int_equal(r->min_images, 1);
    assert_int_equal(r->max_images, -1);
    assert_non_null(r->two_stage);
    assert_string_equal(r->two_stage->model, "gemini-flash");
    assert_string_equal(r->two_stage->target, "thumbnail");
    assert_int_equal(r->two_stage->n_classes, 4);
    assert_int_equal(r->two_stage->n_valuable, 1);
    assert_string_equal(r->two_stage->valuable[0], "document");
    assert_string_equal(r->two_stage->prompt,
                        "Classify this image as exactly one of: document, photo, screenshot, "
                        "other. Answer with the class name only.");
    assert_int_equal(r->n_models, 2);
    r = &c->routes[3];
    assert_string_equal(r->model, "gpt-4o");
    assert_int_equal(r->n_keywords, 2);
    assert_string_equal(r->keywords[1], "thumbnail");
    assert_true(r->max_pixels == 262144 && r->max_bytes == 1048576);
    assert_int_equal(r->max_images, 4);
    assert_null(c->review_url);
    assert_int_equal(c->retry.max_attempts, 3);
    assert_int_equal(c->retry.n_on_status, 5);
    assert_int_equal(c->breaker.consecutive_failures, 5);
    assert_int_equal(c->breaker.cooldown_ms, 30000);
    assert_null(ap_config_task(c, "nope"));

    assert_int_equal(c->prep.max_input_bytes, 20u << 20);
    assert_int_equal(c->prep.encoding, AP_ENC_JPEG);
    assert_int_equal(c->prep.background[0], 255);
    assert_int_equal(c->ocr_max_edge, 4000);
    assert_int_equal(c->fetch_timeout_ms, 10000);
    assert_int_equal(c->n_fetch_allow_hosts, 0);
    assert_null(c->log_file);
    assert_false(c->log_prompts);
    ap_config_free(c);
}

static void test_config__defaults_without_a_file(void **state)
{
    (void)state;
    ap_config *c = NULL;
    ap_error err = {0};
    assert_int_equal(ap_config_load(NULL, NULL, &c, &err), AP_OK);
    assert_string_equal(c->listen, "127.0.0.1:8080");
    assert_int_equal(c->max_body_bytes, 64u << 20);
    assert_int_equal(c->workers, 0);
    assert_int_equal(c->n_client_keys, 0);
    assert_string_equal(c->default_model, "local");
    assert_int_equal(c->ocr_max_edge, 4000);
    assert_int_equal(c->fetch_timeout_ms, 10000);
    assert_int_equal(c->fetch_max_bytes, c->prep.max_input_bytes);
    assert_false(c->fetch_allow_loopback);
    assert_int_equal(c->prep.max_input_bytes, 20u << 20);
    assert_int_equal(c->n_models, 0);
    assert_int_equal(c->n_tasks, 0);
    assert_int_equal(c->n_warnings, 0); /* zero-config providers without keys are no news */

    const ap_provider_conf *l = provider(c, "local");
    assert_non_null(l);
    assert_int_equal(l->type, AP_PROVIDER_LOCAL);
    assert_true(l->enabled);
    assert_null(l->base_url);
    const ap_provider_conf *o = provider(c, "openai");
    assert_non_null(o);
    assert_false(o->enabled);
    assert_null(o->api_key);
    assert_string_equal(o->api_key_env, "OPENAI_API_KEY");
    assert_string_equal(provider(c, "anthropic")->base_url, "https://api.anthropic.com");
    routes_to(c, "local", "local");
    ap_config_free(c);

    /* An empty file (or one of comments) is the same as none. */
    c = load_ok("# nothing here\n");
    assert_string_equal(c->listen, "127.0.0.1:8080");
    ap_config_free(c);
}

static void test_config__missing_file_is_an_io_error(void **state)
{
    (void)state;
    ap_config *c = NULL;
    ap_error err = {0};
    assert_int_equal(ap_config_load("/nonexistent/aperture.yaml", NULL, &c, &err), AP_EIO);
    assert_null(c);
    assert_true(contains(err.msg, "/nonexistent/aperture.yaml"));
}

static void test_config__aperture_config_names_the_file(void **state)
{
    (void)state;
    ap_config *c = NULL;
    ap_error err = {0};
    setenv("APERTURE_CONFIG", EXAMPLE, 1);
    assert_int_equal(ap_config_load(NULL, NULL, &c, &err), AP_OK);
    assert_int_equal(c->n_tasks, 4);
    ap_config_free(c);
    /* An explicit path (--config) wins over the variable. */
    setenv("APERTURE_CONFIG", "/nonexistent.yaml", 1);
    assert_int_equal(ap_config_load(EXAMPLE, NULL, &c, &err), AP_OK);
    ap_config_free(c);
}

/* ---- zero-config and routing ----------------------------------------------------------- */

static void test_config__zero_config_env_enables_providers(void **state)
{
    (void)state;
    setenv("OPENAI_API_KEY", "sk-test-openai", 1);
    setenv("OPENAI_BASE_URL", "http://127.0.0.1:9999/v1/", 1);
    setenv("ANTHROPIC_API_KEY", "sk-ant-test", 1);
    setenv("GEMINI_API_KEY", "gem-test", 1);
    setenv("GEMINI_BASE_URL", "http://127.0.0.1:9998/v1beta", 1);
    ap_config *c = load_ok(NULL);

    const ap_provider_conf *o = provider(c, "openai");
    assert_true(o->enabled);
    assert_string_equal(o->api_key, "sk-test-openai");
    assert_string_equal(o->base_url, "http://127.0.0.1:9999/v1"); /* trailing / dropped */
    assert_int_equal(o->connect_timeout_ms, 10000);
    assert_int_equal(o->timeout_ms, 600000);
    const ap_provider_conf *a = provider(c, "anthropic");
    assert_true(a->enabled);
    assert_string_equal(a->base_url, "https://api.anthropic.com");
    assert_string_equal(a->api_key, "sk-ant-test");
    const ap_provider_conf *g = provider(c, "gemini");
    assert_true(g->enabled);
    assert_string_equal(g->base_url, "http://127.0.0.1:9998/v1beta");
    ap_config_free(c);

    /* ANTHROPIC_BASE_URL too, and an empty variable counts as unset. */
    setenv("ANTHROPIC_BASE_URL", "https://proxy.example.com", 1);
    setenv("GEMINI_API_KEY", "", 1);
    c = load_ok(NULL);
    assert_string_equal(provider(c, "anthropic")->base_url, "https://proxy.example.com");
    assert_false(provider(c, "gemini")->enabled);
    ap_config_free(c);
}

static void test_config__each_prefix_routes(void **state)
{
    (void)state;
    setenv("OPENAI_API_KEY", "k1", 1);
    setenv("ANTHROPIC_API_KEY", "k2", 1);
    setenv("GEMINI_API_KEY", "k3", 1);
    ap_config *c = load_ok(NULL);
    static const char *const openai[] = {"gpt-4o",  "gpt-4.1-mini",     "o1", "o1-mini", "o3-mini",
                                         "o4-mini", "chatgpt-4o-latest"};
    for (size_t i = 0; i < sizeof(openai) / sizeof(openai[0]); i++)
        routes_to(c, openai[i], "openai");
    routes_to(c, "claude-3-5-sonnet-20241022", "anthropic");
    routes_to(c, "claude-sonnet-4-20250514", "anthropic");
    routes_to(c, "gemini-2.0-flash", "gemini");
    routes_to(c, "gemini-1.5-pro", "gemini");
    routes_to(c, "local", "local");

    /* Routed by prefix: no model entry. */
    const ap_model_conf *m = (const ap_model_conf *)1;
    const ap_provider_conf *p = NULL;
    ap_error err = {0};
    assert_int_equal(ap_config_route(c, "gpt-4o", &m, &p, &err), AP_OK);
    assert_null(m);
    assert_int_equal(p->type, AP_PROVIDER_OPENAI);

    /* Unknown: the message says what would route it. */
    assert_int_equal(ap_config_route(c, "llama3.2-vision", &m, &p, &err), AP_ENOTFOUND);
    assert_true(contains(err.msg, "llama3.2-vision"));
    assert_true(contains(err.msg, "models"));
    assert_true(contains(err.msg, "gpt-"));
    assert_true(contains(err.msg, "claude-"));
    assert_true(contains(err.msg, "gemini-"));
    assert_true(contains(err.msg, "local"));
    /* Prefixes are prefixes, not substrings. */
    memset(&err, 0, sizeof(err));
    assert_int_equal(ap_config_route(c, "my-gpt-4o", &m, &p, &err), AP_ENOTFOUND);
    memset(&err, 0, sizeof(err));
    assert_int_equal(ap_config_route(c, "", &m, &p, &err), AP_EINVAL);
    ap_config_free(c);
}

static void test_config__disabled_provider_names_the_variable(void **state)
{
    (void)state;
    ap_config *c = load_ok(NULL);
    const ap_model_conf *m = NULL;
    const ap_provider_conf *p = NULL;
    const struct {
        const char *model, *var;
    } cases[] = {
        {"gpt-4o", "OPENAI_API_KEY"},
        {"claude-3-haiku-20240307", "ANTHROPIC_API_KEY"},
        {"gemini-2.0-flash", "GEMINI_API_KEY"},
    };
    for (size_t i = 0; i < 3; i++) {
        ap_error err = {0};
        assert_int_equal(ap_config_route(c, cases[i].model, &m, &p, &err), AP_ENOTFOUND);
        if (!contains(err.msg, cases[i].var))
            fail_msg("%s: \"%s\" does not name %s", cases[i].model, err.msg, cases[i].var);
    }
    ap_config_free(c);

    /* A declared provider whose variable is unset: a warning, disabled, and routing says so. */
    c = load_ok("providers:\n"
                "  - name: box\n"
                "    type: openai-compatible\n"
                "    base_url: http://10.0.0.5:8000/v1\n"
                "    api_key_env: MY_VLLM_KEY\n"
                "models:\n"
                "  - name: qwen\n"
                "    provider: box\n");
    assert_false(provider(c, "box")->enabled);
    assert_int_equal(c->n_warnings, 1);
    assert_true(contains(c->warnings[0], "MY_VLLM_KEY"));
    assert_true(contains(c->warnings[0], "box"));
    ap_error err = {0};
    assert_int_equal(ap_config_route(c, "qwen", &m, &p, &err), AP_ENOTFOUND);
    assert_true(contains(err.msg, "MY_VLLM_KEY"));
    ap_config_free(c);

    setenv("MY_VLLM_KEY", "vllm-secret", 1);
    c = load_ok("providers:\n"
                "  - name: box\n"
                "    type: openai-compatible\n"
                "    base_url: http://10.0.0.5:8000/v1\n"
                "    api_key_env: MY_VLLM_KEY\n"
                "  - name: open\n"
                "    type: openai-compatible\n"
                "    base_url: http://10.0.0.6:8000/v1\n"
                "models:\n"
                "  - name: qwen\n"
                "    provider: box\n");
    routes_to(c, "qwen", "box");
    assert_string_equal(provider(c, "box")->api_key, "vllm-secret");
    /* No api_key_env: a server without auth, enabled. */
    assert_true(provider(c, "open")->enabled);
    assert_null(provider(c, "open")->api_key);
    assert_int_equal(c->n_warnings, 0);
    ap_config_free(c);
}

static void test_config__configured_model_beats_prefix(void **state)
{
    (void)state;
    setenv("OPENAI_API_KEY", "k", 1);
    ap_config *c = load_ok("providers:\n"
                           "  - name: box\n"
                           "    type: openai-compatible\n"
                           "    base_url: http://10.0.0.5:8000/v1\n"
                           "models:\n"
                           "  - name: gpt-4o\n"
                           "    provider: box\n"
                           "    upstream: Qwen/Qwen2.5-VL-72B-Instruct\n"
                           "  - name: local\n"
                           "    provider: box\n");
    const ap_model_conf *m = NULL;
    const ap_provider_conf *p = NULL;
    ap_error err = {0};
    assert_int_equal(ap_config_route(c, "gpt-4o", &m, &p, &err), AP_OK);
    assert_non_null(m);
    assert_string_equal(p->name, "box");
    assert_string_equal(m->upstream, "Qwen/Qwen2.5-VL-72B-Instruct");
    assert_string_equal(m->token_model, "Qwen/Qwen2.5-VL-72B-Instruct");
    assert_string_equal(m->target, "default"); /* openai-compatible's default */
    assert_true(m->usd_per_mtok_in < 0);       /* not given: the built-in table */
    routes_to(c, "local", "box");
    /* Other gpt-* names still go by prefix. */
    routes_to(c, "gpt-4o-mini", "openai");
    ap_config_free(c);

    /* A declared provider of a type is preferred over the zero-config one of the same type. */
    setenv("AZURE_KEY_FOR_TEST", "k2", 1);
    c = load_ok("providers:\n"
                "  - name: corp-openai\n"
                "    type: openai\n"
                "    base_url: https://llm-proxy.corp.example/v1\n"
                "    api_key_env: AZURE_KEY_FOR_TEST\n");
    routes_to(c, "gpt-4o", "corp-openai");
    assert_non_null(provider(c, "openai")); /* still there, second */
    unsetenv("AZURE_KEY_FOR_TEST");
    ap_config_free(c);
}

/* ---- invalid configs ------------------------------------------------------------------- */

struct bad_case {
    const char *what;
    const char *yaml;
    const char *key; /* NULL: a message about the whole file (syntax, top level) */
    unsigned line;
    const char *also; /* another substring the message must have, or NULL */
};

static const struct bad_case bad_cases[] = {
    {"unknown top-level key", "listen: \"127.0.0.1:9000\"\nmax_body_byte: 5\n", "max_body_byte", 2,
     "unknown key"},
    {"unknown provider key", "providers:\n  - name: a\n    type: openai\n    tpe: x\n",
     "providers[0].tpe", 4, "unknown key"},
    {"bad provider type",
     "providers:\n  - name: ok\n    type: openai\n  - name: bad\n    type: opnai\n",
     "providers[1].type", 5, "\"opnai\""},
    {"model names an unknown provider",
     "models:\n  - name: a\n    provider: openai\n  - name: b\n    provider: anthropic\n"
     "  - name: c\n    provider: x\n",
     "models[2].provider", 7, "no provider named \"x\""},
    {"negative max_body_bytes", "workers: 2\nmax_body_bytes: -5\n", "max_body_bytes", 2,
     "negative"},
    {"negative workers", "workers: -1\n", "workers", 1, "negative"},
    {"negative rate", "rate_rps: -0.5\n", "rate_rps", 1, "negative"},
    {"negative timeout",
     "providers:\n  - name: v\n    type: openai-compatible\n"
     "    base_url: http://127.0.0.1:8000/v1\n    timeout_ms: -1\n",
     "providers[0].timeout_ms", 5, "negative"},
    {"zero connect timeout",
     "providers:\n  - name: v\n    type: openai\n    connect_timeout_ms: 0\n",
     "providers[0].connect_timeout_ms", 4, NULL},
    {"negative price", "models:\n  - name: m\n    provider: openai\n    usd_per_mtok_in: -2.5\n",
     "models[0].usd_per_mtok_in", 4, "negative"},
    {"price not a number",
     "models:\n  - name: m\n    provider: openai\n    usd_per_mtok_out: cheap\n",
     "models[0].usd_per_mtok_out", 4, "number"},
    {"duplicate provider name",
     "providers:\n  - name: p\n    type: openai\n  - name: p\n    type: gemini\n",
     "providers[1].name", 4, "duplicate"},
    {"duplicate model name",
     "models:\n  - name: m\n    provider: local\n  - name: n\n    provider: local\n"
     "  - name: m\n    provider: local\n",
     "models[2].name", 6, "duplicate"},
    {"duplicate task name", "tasks:\n  - name: t\n    prompt: a\n  - name: t\n    prompt: b\n",
     "tasks[1].name", 4, "duplicate"},
    {"duplicate key", "listen: \"a:1\"\nworkers: 1\nlisten: \"b:2\"\n", "listen", 3, "duplicate"},
    {"missing required key", "providers:\n  - name: p\n    base_url: http://x.example\n",
     "providers[0].type", 2, "missing"},
    {"model without provider", "models:\n  - name: m\n    upstream: x\n", "models[0].provider", 2,
     "missing"},
    {"task without prompt", "tasks:\n  - name: t\n    model: local\n", "tasks[0].prompt", 2,
     "missing"},
    {"empty task prompt", "tasks:\n  - name: t\n    prompt: \"\"\n", "tasks[0].prompt", 3, "empty"},
    {"list where a value belongs", "workers: 1\nlisten: [a, b]\n", "listen", 2,
     "expected a single value"},
    {"value where a list belongs", "providers: openai\n", "providers", 1, "expected a list"},
    {"entry not a mapping", "models:\n  - gpt-4o\n", "models[0]", 2, "expected a mapping"},
    {"syntax error", "listen: x\nproviders:\n  - name: a\n\ttype: x\n", NULL, 4, "syntax error"},
    {"unclosed quote", "workers: 1\nlisten: \"127.0.0.1:8080\nlog_file: x\n", NULL, 4,
     "syntax error"},
    {"top level not a mapping", "- listen\n- workers\n", NULL, 1, "mapping"},
    {"bad bool", "log_prompts: maybe\n", "log_prompts", 1, "true or false"},
    {"bad encoding", "image_encoding: gif\n", "image_encoding", 1, "\"gif\""},
    {"quality out of range", "image_quality: 101\n", "image_quality", 1, "at most 100"},
    {"zero min side", "image_min_side: 0\n", "image_min_side", 1, "at least 1"},
    {"bad colour", "image_background: white\n", "image_background", 1, "#rrggbb"},
    {"bad target", "models:\n  - name: m\n    provider: local\n    target: huge\n",
     "models[0].target", 4, "\"huge\""},
    {"bad token patch",
     "models:\n  - name: m\n    provider: local\n    token_patch:\n      patch_px: 14\n"
     "      tokens_per_patch: 0\n",
     "models[0].token_patch.tokens_per_patch", 6, NULL},
    {"openai-compatible without base_url", "providers:\n  - name: v\n    type: openai-compatible\n",
     "providers[0].base_url", 2, "required"},
    {"base_url not http", "providers:\n  - name: v\n    type: openai\n    base_url: ftp://x\n",
     "providers[0].base_url", 4, "http"},
    {"api_key_env not a variable name",
     "providers:\n  - name: v\n    type: anthropic\n    api_key_env: sk-ant-123\n",
     "providers[0].api_key_env", 4, "variable"},
    {"local provider with another type", "providers:\n  - name: local\n    type: openai\n",
     "providers[0].name", 2, "local"},
    {"client key not a hash",
     "client_keys_sha256:\n  - \"" SHA_TEST "\"\n  - my-plain-client-key\n",
     "client_keys_sha256[1]", 3, "SHA-256"},
    {"fetch host is a URL", "fetch_allow_hosts:\n  - https://images.example.com/\n",
     "fetch_allow_hosts[0]", 2, "host"},
    {"bad listen", "listen: localhost\n", "listen", 1, "HOST:PORT"},
    {"bad port", "listen: \"127.0.0.1:99999\"\n", "listen", 1, "port"},
    {"task model does not route", "tasks:\n  - name: t\n    model: llava\n    prompt: p\n",
     "tasks[0].model", 3, "no route"},
    {"default model does not route", "log_prompts: true\ndefault_model: mystery\n", "default_model",
     2, "no route"},
    {"aliases", "listen: &l \"127.0.0.1:1\"\nlog_file: *l\n", "log_file", 2, "alias"},
    /* retry: and breaker: */
    {"unknown retry key", "retry:\n  max_attempts: 2\n  max_attempt: 3\n", "retry.max_attempt", 3,
     "unknown key"},
    {"zero attempts", "workers: 1\nretry:\n  max_attempts: 0\n", "retry.max_attempts", 3,
     "at least 1"},
    {"negative base", "retry:\n  base_ms: -1\n", "retry.base_ms", 2, "negative"},
    {"cap under base", "retry:\n  base_ms: 1000\n  cap_ms: 999\n", "retry.cap_ms", 3,
     "retry.base_ms"},
    {"base over default cap", "retry:\n  base_ms: 9000\n", "retry.base_ms", 2, "retry.cap_ms"},
    {"status not an error", "retry:\n  on_status: [429, 503, 200]\n", "retry.on_status[2]", 2,
     "400 to 599"},
    {"status not a number", "retry:\n  on_status:\n    - 429\n    - five-oh-three\n",
     "retry.on_status[1]", 4, "whole number"},
    {"too many statuses",
     "retry:\n  on_status: [400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413,"
     " 414, 415, 416]\n",
     "retry.on_status", 2, "at most 16"},
    {"retry not a mapping", "retry: [1, 2]\n", "retry", 1, "expected a mapping"},
    {"bad retry bool", "retry:\n  on_timeout: sometimes\n", "retry.on_timeout", 2, "true or false"},
    {"deadline over a day", "retry:\n  deadline_ms: 86400001\n", "retry.deadline_ms", 2,
     "at most 86400000"},
    {"error rate over 1", "breaker:\n  error_rate: 1.5\n", "breaker.error_rate", 2, "0 to 1"},
    {"zero cooldown", "breaker:\n  cooldown_ms: 0\n", "breaker.cooldown_ms", 2, "at least 1"},
    {"zero probes", "breaker:\n  half_open_probes: 0\n", "breaker.half_open_probes", 2,
     "at least 1"},
    {"zero window", "breaker:\n  window_ms: 0\n", "breaker.window_ms", 2, "at least 1"},
    {"negative failures", "breaker:\n  consecutive_failures: -5\n", "breaker.consecutive_failures",
     2, "negative"},
    /* fallbacks */
    {"fallback does not route",
     "models:\n  - name: a\n    provider: local\n    fallbacks: [local, mystery]\n",
     "models[0].fallbacks[1]", 4, "no route for model \"mystery\""},
    {"fallback on its own line",
     "models:\n  - name: a\n    provider: local\n    fallbacks:\n      - local\n      - nope\n",
     "models[0].fallbacks[1]", 6, "no route"},
    {"review not last",
     "models:\n  - name: a\n    provider: local\n    fallbacks: [review, local]\n",
     "models[0].fallbacks[0]", 4, "last step"},
    {"fallback is the model itself",
     "models:\n  - name: a\n    provider: local\n    fallbacks: [local, a]\n",
     "models[0].fallbacks[1]", 4, "the model itself"},
    {"fallback listed twice",
     "models:\n  - name: a\n    provider: local\n    fallbacks: [local, local, review]\n",
     "models[0].fallbacks[1]", 4, "twice"},
    {"too many fallbacks",
     "models:\n  - name: a\n    provider: local\n    fallbacks: [b1, b2, b3, b4, b5, b6, b7, b8,"
     " b9, b10, b11, b12, b13, b14, b15, b16]\n",
     "models[0].fallbacks", 4, "at most 15"},
    {"fallbacks not a list", "models:\n  - name: a\n    provider: local\n    fallbacks: local\n",
     "models[0].fallbacks", 4, "expected a list"},
    {"task fallback does not route",
     "tasks:\n  - name: t\n    prompt: p\n    fallbacks:\n      - gpt-4o\n      - llava\n",
     "tasks[0].fallbacks[1]", 6, "no route"},
    {"task fallback is the task's model",
     "tasks:\n  - name: t\n    model: local\n    prompt: p\n    fallbacks: [local, review]\n",
     "tasks[0].fallbacks[0]", 5, "the task's model"},
    {"task fallback is default_model",
     "tasks:\n  - name: t\n    prompt: p\n    fallbacks: [local]\n", "tasks[0].fallbacks[0]", 4,
     "the task's model"},
    {"model named review", "models:\n  - name: review\n    provider: local\n", "models[0].name", 2,
     "reserved"},
    /* self_hosted and limits */
    {"self_hosted on a hosted api",
     "providers:\n  - name: o\n    type: openai\n    self_hosted: true\n",
     "providers[0].self_hosted", 4, "openai providers cannot be self-hosted"},
    {"self_hosted on the zero-config anthropic",
     "providers:\n  - name: anthropic\n    type: anthropic\n    self_hosted: yes\n",
     "providers[0].self_hosted", 4, "cannot be self-hosted"},
    {"self_hosted not a bool",
     "providers:\n  - name: v\n    type: openai-compatible\n    base_url: http://h:1/v1\n"
     "    self_hosted: mostly\n",
     "providers[0].self_hosted", 5, "true or false"},
    {"negative rpm", "providers:\n  - name: o\n    type: openai\n    limits:\n      rpm: -5\n",
     "providers[0].limits.rpm", 5, "negative"},
    {"tpm not a number",
     "providers:\n  - name: o\n    type: openai\n    limits:\n      tpm: lots\n",
     "providers[0].limits.tpm", 5, "number"},
    {"negative max_in_flight",
     "providers:\n  - name: o\n    type: openai\n    limits:\n      rpm: 1\n      max_in_flight: "
     "-1\n",
     "providers[0].limits.max_in_flight", 6, "negative"},
    {"negative queue", "providers:\n  - name: o\n    type: openai\n    limits:\n      queue: -1\n",
     "providers[0].limits.queue", 5, "negative"},
    {"zero queue timeout",
     "providers:\n  - name: o\n    type: openai\n    limits:\n      queue_timeout_ms: 0\n",
     "providers[0].limits.queue_timeout_ms", 5, "at least 1"},
    {"unknown limits key",
     "providers:\n  - name: o\n    type: openai\n    limits:\n      burst: 3\n",
     "providers[0].limits.burst", 5, "unknown key"},
    /* deployments */
    {"deployment names an unknown provider",
     "models:\n  - name: m\n    deployments:\n      - provider: local\n      - provider: nope\n",
     "models[0].deployments[1].provider", 5, "no provider named \"nope\""},
    {"deployment weight zero",
     "models:\n  - name: m\n    deployments:\n      - provider: local\n        weight: 0\n",
     "models[0].deployments[0].weight", 5, "greater than 0"},
    {"deployment weight negative",
     "models:\n  - name: m\n    deployments:\n      - provider: local\n        weight: -1\n",
     "models[0].deployments[0].weight", 5, "negative"},
    {"deployment without provider", "models:\n  - name: m\n    deployments:\n      - upstream: x\n",
     "models[0].deployments[0].provider", 4, "missing"},
    {"deployment listed twice",
     "models:\n  - name: m\n    deployments:\n      - provider: openai\n        upstream: a\n"
     "      - provider: openai\n        upstream: a\n",
     "models[0].deployments[1]", 6, "listed twice"},
    {"too many deployments",
     "models:\n  - name: m\n    deployments:\n"
     "      - {provider: openai, upstream: a1}\n      - {provider: openai, upstream: a2}\n"
     "      - {provider: openai, upstream: a3}\n      - {provider: openai, upstream: a4}\n"
     "      - {provider: openai, upstream: a5}\n      - {provider: openai, upstream: a6}\n"
     "      - {provider: openai, upstream: a7}\n      - {provider: openai, upstream: a8}\n"
     "      - {provider: openai, upstream: a9}\n",
     "models[0].deployments", 3, "at most 8"},
    {"provider is not the first deployment's",
     "models:\n  - name: m\n    provider: openai\n    deployments:\n      - provider: gemini\n",
     "models[0].provider", 3, "first deployment's, \"gemini\""},
    /* task checks */
    {"json false with required fields",
     "tasks:\n  - name: t\n    prompt: p\n    required: [total]\n    json: false\n",
     "tasks[0].json", 5, "must be true"},
    {"required field listed twice",
     "tasks:\n  - name: t\n    prompt: p\n    required:\n      - total\n      - total\n",
     "tasks[0].required[1]", 6, "twice"},
    {"json not a bool", "tasks:\n  - name: t\n    prompt: p\n    json: sure\n", "tasks[0].json", 4,
     "true or false"},
    /* clients */
    {"client key not a hash", "clients:\n  - name: a\n    key_sha256: abc\n",
     "clients[0].key_sha256", 3, "SHA-256"},
    {"duplicate client name",
     "clients:\n  - name: a\n    key_sha256: \"" SHA_TEST
     "\"\n  - name: a\n    key_sha256: \"" SHA_ANOTHER "\"\n",
     "clients[1].name", 4, "duplicate client name"},
    {"client named like a plain key",
     "clients:\n  - name: key2\n    key_sha256: \"" SHA_TEST "\"\n", "clients[0].name", 2,
     "key1, key2"},
    {"named client repeats a plain key",
     "client_keys_sha256: [\"" SHA_ANOTHER "\", \"" SHA_TEST "\"]\n"
     "clients:\n  - name: a\n    key_sha256: \"" SHA_TEST "\"\n",
     "clients[0].key_sha256", 4, "client_keys_sha256[1]"},
    {"two clients, one key",
     "clients:\n  - name: a\n    key_sha256: \"" SHA_TEST
     "\"\n  - name: b\n    key_sha256: \"" SHA_TEST "\"\n",
     "clients[1].key_sha256", 5, "clients[0]"},
    {"client without a key", "clients:\n  - name: a\n", "clients[0].key_sha256", 2, "missing"},
    /* routes */
    {"duplicate route name",
     "routes:\n  - name: r\n    models: [local]\n  - name: r\n    models: [local]\n",
     "routes[1].name", 4, "duplicate route name"},
    {"empty route name", "routes:\n  - name: \"\"\n    models: [local]\n", "routes[0].name", 2,
     "empty"},
    {"route model does not route",
     "routes:\n  - name: r\n    models:\n      - local\n      - llava\n", "routes[0].models[1]", 5,
     "no route for model \"llava\""},
    {"route review not last", "routes:\n  - name: r\n    models: [review, local]\n",
     "routes[0].models[0]", 3, "last step"},
    {"route model twice", "routes:\n  - name: r\n    models: [local, local]\n",
     "routes[0].models[1]", 3, "twice"},
    {"route without action", "routes:\n  - name: r\n    task: describe\n", "routes[0]", 2,
     "does nothing"},
    {"two_stage classifier does not route",
     "routes:\n  - name: r\n    two_stage:\n      model: tiny\n      classes: [a, b]\n"
     "      valuable: [a]\n",
     "routes[0].two_stage.model", 4, "no route"},
    {"two_stage one class",
     "routes:\n  - name: r\n    two_stage:\n      model: local\n      classes: [a]\n"
     "      valuable: [a]\n",
     "routes[0].two_stage.classes", 5, "at least 2"},
    {"two_stage nothing valuable",
     "routes:\n  - name: r\n    two_stage:\n      model: local\n      classes: [a, b]\n",
     "routes[0].two_stage.valuable", 3, "at least 1"},
    {"two_stage valuable not a class",
     "routes:\n  - name: r\n    two_stage:\n      model: local\n      classes: [a, b]\n"
     "      valuable:\n        - b\n        - c\n",
     "routes[0].two_stage.valuable[1]", 8, "\"c\" is not one of the classes"},
    {"two_stage unknown target",
     "routes:\n  - name: r\n    two_stage:\n      model: local\n      target: tiny\n"
     "      classes: [a, b]\n      valuable: [a]\n",
     "routes[0].two_stage.target", 5, "unknown target \"tiny\""},
    {"route min over max",
     "routes:\n  - name: r\n    min_pixels: 1000\n    max_pixels: 999\n    models: [local]\n",
     "routes[0].max_pixels", 4, "at least min_pixels (1000)"},
    {"route images min over max",
     "routes:\n  - name: r\n    min_images: 3\n    max_images: 2\n    models: [local]\n",
     "routes[0].max_images", 4, "min_images (3)"},
    {"route negative bytes", "routes:\n  - name: r\n    min_bytes: -1\n    models: [local]\n",
     "routes[0].min_bytes", 3, "negative"},
    {"route unknown client",
     "clients:\n  - name: a\n    key_sha256: \"" SHA_TEST "\"\nroutes:\n  - name: r\n"
     "    clients: [a, b]\n    models: [local]\n",
     "routes[0].clients[1]", 6, "no client named \"b\""},
    {"route plain key beyond the list",
     "client_keys_sha256: [\"" SHA_TEST "\"]\nroutes:\n  - name: r\n"
     "    clients: [key1, key2]\n    models: [local]\n",
     "routes[0].clients[1]", 4, "1 entries"},
    {"route unknown key", "routes:\n  - name: r\n    modle: x\n    models: [local]\n",
     "routes[0].modle", 3, "unknown key"},
    {"route models not a list", "routes:\n  - name: r\n    models: local\n", "routes[0].models", 3,
     "expected a list"},
    /* review_url */
    {"review_url not a store", "review_url: \"postgres://db/x\"\n", "review_url", 1,
     "sqlite://PATH or redis://"},
    {"review_url without a path", "review_url: \"sqlite://\"\n", "review_url", 1,
     "no path or host"},
};

static void test_config__invalid_configs_name_key_and_line(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *bc = &bad_cases[i];
        ap_error err;
        char want[160];
        ap_status st = load_bad(bc->yaml, &err);
        if (st != AP_EINVAL)
            fail_msg("%s: %s (%s), expected AP_EINVAL", bc->what, ap_strerror(st), err.msg);
        if (bc->key != NULL)
            snprintf(want, sizeof(want), "config.yaml:%u: %s: ", bc->line, bc->key);
        else
            snprintf(want, sizeof(want), "config.yaml:%u: ", bc->line);
        if (!contains(err.msg, want))
            fail_msg("%s: \"%s\" lacks \"%s\"", bc->what, err.msg, want);
        if (bc->also != NULL && !contains(err.msg, bc->also))
            fail_msg("%s: \"%s\" lacks \"%s\"", bc->what, err.msg, bc->also);
        /* One line, lowercase after the location, no full stop. */
        assert_null(strchr(err.msg, '\n'));
        assert_true(err.msg[strlen(err.msg) - 1] != '.');
    }
}

static void test_config__invalid_file_on_disk_names_the_path(void **state)
{
    (void)state;
    char path[] = "/tmp/aperture-test-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *yaml = "listen: \"127.0.0.1:8080\"\nproviders:\n  - name: x\n    type: opnai\n";
    assert_int_equal(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
    close(fd);
    ap_config *c = NULL;
    ap_error err = {0};
    assert_int_equal(ap_config_load(path, NULL, &c, &err), AP_EINVAL);
    char want[128];
    snprintf(want, sizeof(want), "%s:4: providers[0].type: unknown value \"opnai\"", path);
    if (!contains(err.msg, want))
        fail_msg("\"%s\" lacks \"%s\"", err.msg, want);
    unlink(path);
}

static void test_config__bad_environment_names_the_variable(void **state)
{
    (void)state;
    const struct {
        const char *var, *value, *also;
    } cases[] = {
        {"APERTURE_MAX_BODY_BYTES", "-1", "negative"},
        {"APERTURE_WORKERS", "many", "whole number"},
        {"APERTURE_LISTEN", "8080", "HOST:PORT"},
        {"APERTURE_LOG_PROMPTS", "perhaps", "true or false"},
        {"APERTURE_RATE_RPS", "fast", "number"},
        {"APERTURE_FETCH_TIMEOUT_MS", "0", "at least 1"},
        {"APERTURE_DEFAULT_MODEL", "mystery-model", "no route"},
        {"APERTURE_CLIENT_KEYS_SHA256", "abc", "SHA-256"},
        {"APERTURE_CLIENT_KEYS", " , ", "no entries"},
        {"MAX_IMAGE_SIZE_MB", "0", "positive"},
        {"OPENAI_BASE_URL", "api.openai.com", "http"},
        {"APERTURE_RETRY_MAX_ATTEMPTS", "0", "at least 1"},
        {"APERTURE_RETRY_BASE_MS", "soon", "whole number"},
        {"APERTURE_RETRY_BASE_MS", "10000", "at most retry.cap_ms (8000)"},
        {"APERTURE_RETRY_CAP_MS", "100", "at least retry.base_ms (500)"},
        {"APERTURE_RETRY_ON_STATUS", "429,200", "entry 2"},
        {"APERTURE_BREAKER_FAILURES", "-1", "negative"},
        {"APERTURE_BREAKER_COOLDOWN_MS", "0", "at least 1"},
        {"APERTURE_BREAKER_ERROR_RATE", "2", "0 to 1"},
        {"APERTURE_REVIEW_URL", "file:///tmp/x.db", "sqlite://PATH"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        clean_env(NULL);
        setenv(cases[i].var, cases[i].value, 1);
        ap_config *c = NULL;
        ap_error err = {0};
        ap_status st = ap_config_load_buffer(NULL, 0, "config.yaml", NULL, &c, &err);
        if (st != AP_EINVAL)
            fail_msg("%s=%s: %s", cases[i].var, cases[i].value, ap_strerror(st));
        char want[96];
        snprintf(want, sizeof(want), "%s: ", cases[i].var);
        if (strncmp(err.msg, want, strlen(want)) != 0 || !contains(err.msg, cases[i].also))
            fail_msg("%s=%s: \"%s\"", cases[i].var, cases[i].value, err.msg);
    }
    /* --listen is checked the same way. */
    clean_env(NULL);
    ap_config *c = NULL;
    ap_error err = {0};
    assert_int_equal(ap_config_load_buffer(NULL, 0, NULL, "nope", &c, &err), AP_EINVAL);
    assert_true(contains(err.msg, "--listen"));
}

/* ---- secrets ------------------------------------------------------------------------------ */

static void assert_no_secret(const char *msg, const char *what)
{
    if (contains(msg, "SECRET"))
        fail_msg("%s: a key leaked into \"%s\"", what, msg);
}

static void test_config__keys_never_appear_in_messages(void **state)
{
    (void)state;
    static const char *const leaky[] = {
        /* A key pasted where a variable name belongs. */
        "providers:\n  - name: v\n    type: openai\n    api_key_env: sk-SECRET-abc\n",
        /* A plaintext client key where its hash belongs. */
        "client_keys_sha256:\n  - SECRET-client-key\n",
        /* URLs may hold credentials. */
        "providers:\n  - name: v\n    type: openai\n    base_url: ftp://u:SECRET@x.example\n",
        "providers:\n  - name: v\n    type: openai\n    base_url: \"https://u:SECRET@h x\"\n",
        /* The same for a named client's hash and a review store's URL. */
        "clients:\n  - name: a\n    key_sha256: SECRET-client-key\n",
        "review_url: \"redis://:SECRET@host x/0\"\n",
        "review_url: \"https://SECRET@host/\"\n",
    };
    for (size_t i = 0; i < sizeof(leaky) / sizeof(leaky[0]); i++) {
        ap_error err;
        assert_int_equal(load_bad(leaky[i], &err), AP_EINVAL);
        assert_no_secret(err.msg, leaky[i]);
    }

    /* Keys in the environment, then every invalid config and every route failure. */
    setenv("OPENAI_API_KEY", "sk-SECRET-openai", 1);
    setenv("ANTHROPIC_API_KEY", "sk-ant-SECRET", 1);
    setenv("VLLM_API_KEY", "SECRET-vllm", 1);
    setenv("APERTURE_CLIENT_KEYS", "SECRET-client-1,SECRET-client-2", 1);
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        /* Some cases are fine now: APERTURE_CLIENT_KEYS replaces their client_keys_sha256. */
        ap_config *ok = NULL;
        ap_error err = {0};
        const char *y = bad_cases[i].yaml;
        if (ap_config_load_buffer(y, strlen(y), "config.yaml", NULL, &ok, &err) == AP_OK)
            ap_config_free(ok);
        assert_no_secret(err.msg, bad_cases[i].what);
    }
    ap_config *c = NULL;
    ap_error err = {0};
    assert_int_equal(ap_config_load(EXAMPLE, NULL, &c, &err), AP_OK);
    for (size_t i = 0; i < c->n_warnings; i++)
        assert_no_secret(c->warnings[i], "warning");
    /* The plaintext client keys were hashed, and only hashes are kept (+ the named client). */
    assert_int_equal(c->n_client_keys, 3);
    for (size_t i = 0; i < c->n_client_keys; i++)
        assert_no_secret(c->client_key_sha256[i], "client key");
    const char *names[] = {"gpt-4o",        "gemini-flash",  "gemini-2.0-flash",
                           "unknown-model", "claude-sonnet", "qwen-vl"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const ap_model_conf *m;
        const ap_provider_conf *p;
        memset(&err, 0, sizeof(err));
        if (ap_config_route(c, names[i], &m, &p, &err) != AP_OK)
            assert_no_secret(err.msg, names[i]);
    }
    ap_config_free(c);

    /* A bad client key hash from the environment is not echoed either. */
    clean_env(NULL);
    setenv("APERTURE_CLIENT_KEYS_SHA256", "SECRET-not-a-hash", 1);
    c = NULL;
    memset(&err, 0, sizeof(err));
    assert_int_equal(ap_config_load_buffer(NULL, 0, NULL, NULL, &c, &err), AP_EINVAL);
    assert_no_secret(err.msg, "APERTURE_CLIENT_KEYS_SHA256");
}

/* ---- environment overrides ---------------------------------------------------------------- */

static const char *const override_file = "listen: \"127.0.0.1:9000\"\n"
                                         "max_body_bytes: 1000\n"
                                         "workers: 3\n"
                                         "client_keys_sha256: [\"" SHA_TEST "\"]\n"
                                         "rate_rps: 1\n"
                                         "default_model: local\n"
                                         "max_image_pixels: 1000\n"
                                         "image_encoding: png\n"
                                         "fetch_timeout_ms: 500\n"
                                         "log_prompts: false\n"
                                         "log_file: /tmp/file.log\n";

static void test_config__aperture_env_beats_the_file(void **state)
{
    (void)state;
    ap_config *c = load_ok(override_file);
    assert_string_equal(c->listen, "127.0.0.1:9000");
    assert_int_equal(c->max_body_bytes, 1000);
    assert_int_equal(c->workers, 3);
    assert_int_equal(c->prep.encoding, AP_ENC_PNG);
    ap_config_free(c);

    setenv("OPENAI_API_KEY", "k", 1);
    setenv("APERTURE_LISTEN", "0.0.0.0:9999", 1);
    setenv("APERTURE_MAX_BODY_BYTES", "2000", 1);
    setenv("APERTURE_WORKERS", "5", 1);
    setenv("APERTURE_RATE_RPS", "2.5", 1);
    setenv("APERTURE_RATE_BURST", "7", 1);
    setenv("APERTURE_DEFAULT_MODEL", "gpt-4o-mini", 1);
    setenv("APERTURE_MAX_IMAGE_PIXELS", "5000", 1);
    setenv("APERTURE_IMAGE_ENCODING", "webp", 1);
    setenv("APERTURE_FETCH_TIMEOUT_MS", "700", 1);
    setenv("APERTURE_FETCH_ALLOW_LOOPBACK", "1", 1);
    setenv("APERTURE_LOG_PROMPTS", "true", 1);
    setenv("APERTURE_LOG_FILE", "/tmp/env.log", 1);
    setenv("APERTURE_CLIENT_KEYS", "another-key", 1);
    c = load_ok(override_file);
    assert_string_equal(c->listen, "0.0.0.0:9999");
    assert_int_equal(c->max_body_bytes, 2000);
    assert_int_equal(c->workers, 5);
    assert_true(c->rate_rps == 2.5);
    assert_true(c->rate_burst == 7.0);
    assert_string_equal(c->default_model, "gpt-4o-mini");
    assert_int_equal(c->prep.max_pixels, 5000);
    assert_int_equal(c->prep.encoding, AP_ENC_WEBP);
    assert_int_equal(c->fetch_timeout_ms, 700);
    assert_true(c->fetch_allow_loopback);
    assert_true(c->log_prompts);
    assert_string_equal(c->log_file, "/tmp/env.log");
    /* APERTURE_CLIENT_KEYS replaces the file's list with the hashes of its keys. */
    assert_int_equal(c->n_client_keys, 1);
    assert_string_equal(c->client_key_sha256[0], SHA_ANOTHER);
    ap_config_free(c);

    /* --listen beats APERTURE_LISTEN. */
    ap_error err = {0};
    assert_int_equal(ap_config_load_buffer(override_file, strlen(override_file), "config.yaml",
                                           "[::1]:7000", &c, &err),
                     AP_OK);
    assert_string_equal(c->listen, "[::1]:7000");
    ap_config_free(c);
}

/* Each setting's variable, a value, and how to see it took effect. */
static void test_config__every_setting_has_an_env_override(void **state)
{
    (void)state;
    const struct {
        const char *key, *value;
    } vals[] = {
        {"listen", "127.0.0.1:1234"},
        {"max_body_bytes", "4096"},
        {"workers", "7"},
        {"client_keys_sha256", SHA_TEST "," SHA_ANOTHER},
        {"rate_rps", "3.5"},
        {"rate_burst", "9"},
        {"default_model", "local"},
        {"max_image_bytes", "12345"},
        {"max_image_pixels", "777"},
        {"image_min_side", "3"},
        {"image_warn_min_side", "50"},
        {"image_encoding", "png"},
        {"image_quality", "90"},
        {"image_background", "#102030"},
        {"image_trim", "yes"},
        {"image_trim_tolerance", "9"},
        {"image_gray", "on"},
        {"ocr_max_edge", "2000"},
        {"fetch_allow_loopback", "true"},
        {"fetch_allow_hosts", "a.example, b.example"},
        {"fetch_timeout_ms", "1500"},
        {"fetch_max_bytes", "999"},
        {"log_file", "/tmp/aperture-test.log"},
        {"log_prompts", "1"},
        {"review_url", "redis://127.0.0.1:6379/2"},
        {"retry.max_attempts", "4"},
        {"retry.base_ms", "250"},
        {"retry.cap_ms", "4000"},
        {"retry.retry_after_cap_ms", "15000"},
        {"retry.on_status", "429, 503"},
        {"retry.on_connect_error", "false"},
        {"retry.on_timeout", "no"},
        {"retry.attempt_timeout_ms", "20000"},
        {"retry.deadline_ms", "90000"},
        {"breaker.consecutive_failures", "3"},
        {"breaker.error_rate", "0.25"},
        {"breaker.window_ms", "10000"},
        {"breaker.min_requests", "8"},
        {"breaker.cooldown_ms", "5000"},
        {"breaker.half_open_probes", "2"},
    };
    assert_int_equal(sizeof(vals) / sizeof(vals[0]), N_KEYS);
    char var[64];
    for (size_t i = 0; i < N_KEYS; i++) {
        assert_string_equal(vals[i].key, settings_keys[i]);
        env_name(vals[i].key, var, sizeof(var));
        setenv(var, vals[i].value, 1);
    }
    ap_config *c = load_ok("workers: 1\n");
    assert_string_equal(c->listen, "127.0.0.1:1234");
    assert_int_equal(c->max_body_bytes, 4096);
    assert_int_equal(c->workers, 7);
    assert_int_equal(c->n_client_keys, 2);
    assert_string_equal(c->client_key_sha256[1], SHA_ANOTHER);
    assert_true(c->rate_rps == 3.5);
    assert_true(c->rate_burst == 9.0);
    assert_string_equal(c->default_model, "local");
    assert_int_equal(c->prep.max_input_bytes, 12345);
    assert_int_equal(c->prep.max_pixels, 777);
    assert_int_equal(c->prep.min_side, 3);
    assert_int_equal(c->prep.warn_min_side, 50);
    assert_int_equal(c->prep.encoding, AP_ENC_PNG);
    assert_int_equal(c->prep.quality, 90);
    assert_int_equal(c->prep.background[0], 0x10);
    assert_int_equal(c->prep.background[1], 0x20);
    assert_int_equal(c->prep.background[2], 0x30);
    assert_true(c->prep.trim);
    assert_int_equal(c->prep.trim_tolerance, 9);
    assert_true(c->prep.gray);
    assert_int_equal(c->ocr_max_edge, 2000);
    assert_true(c->fetch_allow_loopback);
    assert_int_equal(c->n_fetch_allow_hosts, 2);
    assert_string_equal(c->fetch_allow_hosts[0], "a.example");
    assert_string_equal(c->fetch_allow_hosts[1], "b.example");
    assert_int_equal(c->fetch_timeout_ms, 1500);
    assert_int_equal(c->fetch_max_bytes, 999);
    assert_string_equal(c->log_file, "/tmp/aperture-test.log");
    assert_true(c->log_prompts);
    assert_string_equal(c->review_url, "redis://127.0.0.1:6379/2");
    assert_int_equal(c->retry.max_attempts, 4);
    assert_int_equal(c->retry.base_ms, 250);
    assert_int_equal(c->retry.cap_ms, 4000);
    assert_int_equal(c->retry.retry_after_cap_ms, 15000);
    assert_int_equal(c->retry.n_on_status, 2);
    assert_int_equal(c->retry.on_status[0], 429);
    assert_int_equal(c->retry.on_status[1], 503);
    assert_false(c->retry.on_connect_error);
    assert_false(c->retry.on_timeout);
    assert_int_equal(c->retry.attempt_timeout_ms, 20000);
    assert_int_equal(c->retry.deadline_ms, 90000);
    assert_int_equal(c->breaker.consecutive_failures, 3);
    assert_true(c->breaker.error_rate == 0.25);
    assert_int_equal(c->breaker.window_ms, 10000);
    assert_int_equal(c->breaker.min_requests, 8);
    assert_int_equal(c->breaker.cooldown_ms, 5000);
    assert_int_equal(c->breaker.half_open_probes, 2);
    ap_config_free(c);
}

static void test_config__max_image_size_mb(void **state)
{
    (void)state;
    setenv("MAX_IMAGE_SIZE_MB", "5", 1);
    ap_config *c = load_ok("max_image_bytes: 100\n");
    assert_int_equal(c->prep.max_input_bytes, 5u << 20);
    assert_int_equal(c->fetch_max_bytes, 5u << 20); /* follows unless set */
    ap_config_free(c);
    setenv("MAX_IMAGE_SIZE_MB", "2.5", 1);
    c = load_ok(NULL);
    assert_int_equal(c->prep.max_input_bytes, (5u << 20) / 2);
    ap_config_free(c);
    /* The APERTURE_ name wins when both are set. */
    setenv("APERTURE_MAX_IMAGE_BYTES", "1000", 1);
    c = load_ok(NULL);
    assert_int_equal(c->prep.max_input_bytes, 1000);
    ap_config_free(c);
}

static void test_config__client_keys_are_hashed(void **state)
{
    (void)state;
    setenv("APERTURE_CLIENT_KEYS", "test, another-key", 1);
    ap_config *c = load_ok(NULL);
    assert_int_equal(c->n_client_keys, 2);
    assert_string_equal(c->client_key_sha256[0], SHA_TEST);
    assert_string_equal(c->client_key_sha256[1], SHA_ANOTHER);
    ap_config_free(c);

    /* Hashes from both variables add up; uppercase hex is normalised. */
    setenv("APERTURE_CLIENT_KEYS", "another-key", 1);
    setenv("APERTURE_CLIENT_KEYS_SHA256",
           "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08", 1);
    c = load_ok(NULL);
    assert_int_equal(c->n_client_keys, 2);
    assert_string_equal(c->client_key_sha256[0], SHA_TEST);
    assert_string_equal(c->client_key_sha256[1], SHA_ANOTHER);
    ap_config_free(c);
}

static void test_config__fetch_allow_loopback(void **state)
{
    (void)state;
    ap_config *c = load_ok(NULL);
    assert_false(c->fetch_allow_loopback);
    ap_config_free(c);
    setenv("APERTURE_FETCH_ALLOW_LOOPBACK", "1", 1);
    c = load_ok("fetch_allow_loopback: false\n");
    assert_true(c->fetch_allow_loopback);
    ap_config_free(c);
}

/* ---- the rest ----------------------------------------------------------------------------- */

static void test_config__instances_are_independent(void **state)
{
    (void)state;
    setenv("OPENAI_API_KEY", "first", 1);
    ap_config *a = load_ok("workers: 2\n");
    unsetenv("OPENAI_API_KEY");
    ap_config *b = load_ok("workers: 4\n");
    assert_int_equal(a->workers, 2);
    assert_int_equal(b->workers, 4);
    routes_to(a, "gpt-4o", "openai");
    ap_error err = {0};
    const ap_model_conf *m;
    const ap_provider_conf *p;
    assert_int_equal(ap_config_route(b, "gpt-4o", &m, &p, &err), AP_ENOTFOUND);
    assert_string_equal(provider(a, "openai")->api_key, "first");
    ap_config_free(a);
    ap_config_free(b);
    ap_config_free(NULL);
}

static void test_config__provider_type_names(void **state)
{
    (void)state;
    assert_string_equal(ap_provider_type_name(AP_PROVIDER_OPENAI), "openai");
    assert_string_equal(ap_provider_type_name(AP_PROVIDER_ANTHROPIC), "anthropic");
    assert_string_equal(ap_provider_type_name(AP_PROVIDER_GEMINI), "gemini");
    assert_string_equal(ap_provider_type_name(AP_PROVIDER_OPENAI_COMPAT), "openai-compatible");
    assert_string_equal(ap_provider_type_name(AP_PROVIDER_LOCAL), "local");
    assert_string_equal(ap_provider_type_name((ap_provider_type)99), "unknown");
    assert_string_equal(ap_provider_default_target(AP_PROVIDER_ANTHROPIC), "anthropic");
    assert_string_equal(ap_provider_default_target(AP_PROVIDER_LOCAL), "none");
}

static void test_config__tasks_default_to_default_model(void **state)
{
    (void)state;
    ap_config *c = load_ok("default_model: local\n"
                           "tasks:\n"
                           "  - name: ocr\n"
                           "    prompt: |\n"
                           "      Read the text.\n"
                           "      Keep the layout.\n");
    const ap_task_conf *t = ap_config_task(c, "ocr");
    assert_non_null(t);
    assert_string_equal(t->model, "local");
    assert_string_equal(t->prompt, "Read the text.\nKeep the layout.\n");
    assert_string_equal(t->prompt_version, "1");
    ap_config_free(c);
}

/* ---- retry, breaker, fallbacks ------------------------------------------------------------- */

static void test_config__resilience_defaults(void **state)
{
    (void)state;
    ap_config *c = load_ok(NULL);
    /* The defaults: 3 attempts backing off from 0.5 s; 5 failures open for 30 s. */
    assert_int_equal(c->retry.max_attempts, 3);
    assert_int_equal(c->retry.base_ms, 500);
    assert_int_equal(c->retry.cap_ms, 8000);
    assert_int_equal(c->retry.retry_after_cap_ms, 30000);
    static const int statuses[] = {429, 500, 502, 503, 504};
    assert_int_equal(c->retry.n_on_status, 5);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(c->retry.on_status[i], statuses[i]);
    assert_true(c->retry.on_connect_error);
    assert_true(c->retry.on_timeout);
    assert_int_equal(c->retry.attempt_timeout_ms, 0);
    assert_int_equal(c->retry.deadline_ms, 0);
    assert_int_equal(c->breaker.consecutive_failures, 5);
    assert_true(c->breaker.error_rate == 0.5);
    assert_int_equal(c->breaker.window_ms, 60000);
    assert_int_equal(c->breaker.min_requests, 20);
    assert_int_equal(c->breaker.cooldown_ms, 30000);
    assert_int_equal(c->breaker.half_open_probes, 1);
    assert_null(c->breaker.on_change);
    ap_config_free(c);

    /* An empty or null section is the same as none. */
    c = load_ok("retry:\nbreaker: ~\n");
    assert_int_equal(c->retry.max_attempts, 3);
    assert_int_equal(c->retry.n_on_status, 5);
    assert_int_equal(c->breaker.cooldown_ms, 30000);
    ap_config_free(c);
}

static void test_config__resilience_from_the_file(void **state)
{
    (void)state;
    ap_config *c = load_ok("retry:\n"
                           "  max_attempts: 5\n"
                           "  base_ms: 100\n"
                           "  cap_ms: 2000\n"
                           "  retry_after_cap_ms: 10000\n"
                           "  on_status: [429, 503, 429]\n"
                           "  on_connect_error: false\n"
                           "  on_timeout: true\n"
                           "  attempt_timeout_ms: 30000\n"
                           "  deadline_ms: 120000\n"
                           "breaker:\n"
                           "  consecutive_failures: 0\n"
                           "  error_rate: 0.75\n"
                           "  window_ms: 30000\n"
                           "  min_requests: 10\n"
                           "  cooldown_ms: 15000\n"
                           "  half_open_probes: 3\n");
    assert_int_equal(c->retry.max_attempts, 5);
    assert_int_equal(c->retry.base_ms, 100);
    assert_int_equal(c->retry.cap_ms, 2000);
    assert_int_equal(c->retry.retry_after_cap_ms, 10000);
    assert_int_equal(c->retry.n_on_status, 2); /* the repeat is dropped */
    assert_int_equal(c->retry.on_status[0], 429);
    assert_int_equal(c->retry.on_status[1], 503);
    assert_false(c->retry.on_connect_error);
    assert_true(c->retry.on_timeout);
    assert_int_equal(c->retry.attempt_timeout_ms, 30000);
    assert_int_equal(c->retry.deadline_ms, 120000);
    assert_int_equal(c->breaker.consecutive_failures, 0);
    assert_true(c->breaker.error_rate == 0.75);
    assert_int_equal(c->breaker.window_ms, 30000);
    assert_int_equal(c->breaker.min_requests, 10);
    assert_int_equal(c->breaker.cooldown_ms, 15000);
    assert_int_equal(c->breaker.half_open_probes, 3);
    ap_config_free(c);

    /* An empty list retries no status at all (not the defaults); so does "none" in a variable. */
    c = load_ok("retry:\n  on_status: []\n");
    assert_int_equal(c->retry.n_on_status, 0);
    ap_config_free(c);
    setenv("APERTURE_RETRY_ON_STATUS", "none", 1);
    c = load_ok("retry:\n  on_status: [429]\n");
    assert_int_equal(c->retry.n_on_status, 0);
    ap_config_free(c);
    /* base_ms may equal cap_ms; 0 means no wait. */
    c = load_ok("retry:\n  base_ms: 0\n  cap_ms: 0\n");
    assert_int_equal(c->retry.cap_ms, 0);
    ap_config_free(c);
}

static void test_config__resilience_env_overrides(void **state)
{
    (void)state;
    const char *file = "retry:\n  max_attempts: 2\n  base_ms: 100\n"
                       "breaker:\n  consecutive_failures: 4\n  cooldown_ms: 1000\n";
    setenv("APERTURE_RETRY_MAX_ATTEMPTS", "6", 1);
    setenv("APERTURE_RETRY_BASE_MS", "50", 1);
    setenv("APERTURE_BREAKER_FAILURES", "7", 1);
    setenv("APERTURE_BREAKER_COOLDOWN_MS", "2500", 1);
    ap_config *c = load_ok(file);
    assert_int_equal(c->retry.max_attempts, 6);
    assert_int_equal(c->retry.base_ms, 50);
    assert_int_equal(c->breaker.consecutive_failures, 7);
    assert_int_equal(c->breaker.cooldown_ms, 2500);
    ap_config_free(c);
    /* The canonical name wins over the short one. */
    setenv("APERTURE_BREAKER_CONSECUTIVE_FAILURES", "9", 1);
    c = load_ok(file);
    assert_int_equal(c->breaker.consecutive_failures, 9);
    ap_config_free(c);
    /* A cap from the environment is checked against the file's base. */
    setenv("APERTURE_RETRY_CAP_MS", "40", 1);
    ap_config *bad = NULL;
    ap_error err = {0};
    assert_int_equal(ap_config_load_buffer(file, strlen(file), "config.yaml", NULL, &bad, &err),
                     AP_EINVAL);
    assert_true(contains(err.msg, "APERTURE_RETRY_CAP_MS: must be at least retry.base_ms (50)"));
}

static void test_config__fallbacks(void **state)
{
    (void)state;
    ap_config *c = load_ok("providers:\n"
                           "  - name: box\n"
                           "    type: openai-compatible\n"
                           "    base_url: http://10.0.0.5:8000/v1\n"
                           "    api_key_env: MY_VLLM_KEY\n"
                           "models:\n"
                           "  - name: big\n"
                           "    provider: box\n"
                           "    fallbacks: [gpt-4o, local, review]\n"
                           "  - name: small\n"
                           "    provider: local\n"
                           "tasks:\n"
                           "  - name: invoice\n"
                           "    model: big\n"
                           "    prompt: p\n"
                           "    fallbacks:\n"
                           "      - small\n"
                           "      - review\n");
    const ap_model_conf *big = &c->models[0];
    assert_int_equal(big->n_fallbacks, 3);
    assert_string_equal(big->fallbacks[0], "gpt-4o");
    assert_string_equal(big->fallbacks[2], "review");
    assert_int_equal(c->models[1].n_fallbacks, 0);
    assert_null(c->models[1].fallbacks);
    const ap_task_conf *t = ap_config_task(c, "invoice");
    assert_int_equal(t->n_fallbacks, 2);
    assert_string_equal(t->fallbacks[0], "small");
    /* Disabled providers (box: MY_VLLM_KEY; openai for gpt-4o) are warnings, not errors. */
    bool named_openai = false;
    for (size_t i = 0; i < c->n_warnings; i++)
        named_openai |= contains(c->warnings[i], "model \"big\" fallbacks") &&
                        contains(c->warnings[i], "OPENAI_API_KEY");
    assert_true(named_openai);
    ap_config_free(c);
}

/* ---- self_hosted, limits, deployments, task checks, clients, routes ----------------------- */

static void test_config__self_hosted_and_limits_defaults(void **state)
{
    (void)state;
    ap_config *c = load_ok(NULL);
    /* The hosted APIs are never self-hosted; the offline provider always is. */
    assert_false(provider(c, "openai")->self_hosted);
    assert_false(provider(c, "anthropic")->self_hosted);
    assert_false(provider(c, "gemini")->self_hosted);
    assert_true(provider(c, "local")->self_hosted);
    for (size_t i = 0; i < c->n_providers; i++) {
        const ap_provider_conf *p = &c->providers[i];
        assert_int_equal(p->max_in_flight, 0);
        assert_true(p->rpm == 0 && p->tpm == 0);
        assert_int_equal(p->queue_max, 100);
        assert_int_equal(p->queue_timeout_ms, 30000);
    }
    assert_int_equal(c->n_routes, 0);
    assert_null(c->routes);
    assert_null(c->review_url);
    ap_config_free(c);

    /* Declared: openai-compatible defaults to self-hosted and may say otherwise; a hosted type
     * may say false; limits may be given in part (the rest keep their defaults), queue 0 is
     * "no queue". */
    c = load_ok("providers:\n"
                "  - name: a\n"
                "    type: openai-compatible\n"
                "    base_url: http://10.0.0.1/v1\n"
                "  - name: b\n"
                "    type: openai-compatible\n"
                "    base_url: http://10.0.0.2/v1\n"
                "    self_hosted: false\n"
                "    limits:\n"
                "      rpm: 60.5\n"
                "      queue: 0\n"
                "  - name: openai\n"
                "    type: openai\n"
                "    self_hosted: false\n"
                "    limits:\n"
                "      max_in_flight: 10\n"
                "      tpm: 30000\n"
                "      queue_timeout_ms: 5000\n"
                "  - name: local\n"
                "    type: local\n"
                "    limits: ~\n");
    assert_true(provider(c, "a")->self_hosted);
    assert_false(provider(c, "b")->self_hosted);
    assert_true(provider(c, "b")->rpm == 60.5);
    assert_int_equal(provider(c, "b")->queue_max, 0);
    assert_int_equal(provider(c, "b")->queue_timeout_ms, 30000);
    const ap_provider_conf *o = provider(c, "openai");
    assert_false(o->self_hosted);
    assert_int_equal(o->max_in_flight, 10);
    assert_true(o->tpm == 30000.0);
    assert_true(o->rpm == 0);
    assert_int_equal(o->queue_max, 100);
    assert_int_equal(o->queue_timeout_ms, 5000);
    assert_true(provider(c, "local")->self_hosted);
    assert_int_equal(provider(c, "local")->queue_max, 100);
    ap_config_free(c);
}

static const char *const deploy_yaml = "providers:\n"
                                       "  - name: box-a\n"
                                       "    type: openai-compatible\n"
                                       "    base_url: http://10.0.0.1:8000/v1\n"
                                       "    api_key_env: MY_VLLM_KEY\n"
                                       "  - name: box-b\n"
                                       "    type: openai-compatible\n"
                                       "    base_url: http://10.0.0.2:8000/v1\n"
                                       "    api_key_env: VLLM_API_KEY\n"
                                       "models:\n"
                                       "  - name: qwen\n"
                                       "    upstream: Qwen/Qwen2.5-VL-7B-Instruct\n"
                                       "    deployments:\n"
                                       "      - provider: box-a\n"
                                       "        weight: 3\n"
                                       "      - provider: box-b\n"
                                       "        upstream: qwen-vl-7b\n"
                                       "        weight: 0.5\n"
                                       "      - provider: local\n"
                                       "    fallbacks: [gpt-4o-mini, review]\n"
                                       "  - name: solo\n"
                                       "    provider: box-b\n"
                                       "    deployments:\n"
                                       "      - provider: box-b\n"
                                       "  - name: plain\n"
                                       "    provider: box-a\n"
                                       "    upstream: up-plain\n";

static void test_config__deployments(void **state)
{
    (void)state;
    setenv("MY_VLLM_KEY", "a", 1);
    setenv("VLLM_API_KEY", "b", 1);
    ap_config *c = load_ok(deploy_yaml);
    const ap_model_conf *q = &c->models[0];
    assert_int_equal(q->n_deployments, 3);
    assert_string_equal(q->provider, "box-a");
    assert_string_equal(q->upstream, "Qwen/Qwen2.5-VL-7B-Instruct");
    assert_string_equal(q->token_model, "Qwen/Qwen2.5-VL-7B-Instruct");
    assert_string_equal(q->target, "default"); /* the first deployment's type */
    assert_string_equal(q->deployments[0].upstream, "Qwen/Qwen2.5-VL-7B-Instruct");
    assert_true(q->deployments[0].weight == 3.0);
    assert_string_equal(q->deployments[1].upstream, "qwen-vl-7b");
    assert_true(q->deployments[1].weight == 0.5);
    assert_string_equal(q->deployments[2].provider, "local");
    assert_true(q->deployments[2].weight == 1.0); /* the default */
    /* `provider` beside deployments is fine when it is the first one's. */
    assert_string_equal(c->models[1].provider, "box-b");
    assert_int_equal(c->models[1].n_deployments, 1);
    assert_string_equal(c->models[1].deployments[0].upstream, "solo");
    const ap_model_conf *pl = &c->models[2];
    assert_int_equal(pl->n_deployments, 1);
    assert_string_equal(pl->deployments[0].provider, "box-a");
    assert_string_equal(pl->deployments[0].upstream, "up-plain");
    assert_true(pl->deployments[0].weight == 1.0);
    routes_to(c, "qwen", "box-a");
    ap_config_free(c);

    /* The first deployment's provider disabled: the model still routes, to the next one. */
    unsetenv("MY_VLLM_KEY");
    c = load_ok(deploy_yaml);
    routes_to(c, "qwen", "box-b");
    ap_config_free(c);
    /* All disabled: the message names the first one's variable. */
    unsetenv("VLLM_API_KEY");
    c = load_ok("providers:\n"
                "  - name: box-a\n"
                "    type: openai-compatible\n"
                "    base_url: http://10.0.0.1:8000/v1\n"
                "    api_key_env: MY_VLLM_KEY\n"
                "  - name: box-b\n"
                "    type: openai-compatible\n"
                "    base_url: http://10.0.0.2:8000/v1\n"
                "    api_key_env: VLLM_API_KEY\n"
                "models:\n"
                "  - name: qwen\n"
                "    deployments: [{provider: box-a}, {provider: box-b}]\n");
    const ap_model_conf *m;
    const ap_provider_conf *p;
    ap_error err = {0};
    assert_int_equal(ap_config_route(c, "qwen", &m, &p, &err), AP_ENOTFOUND);
    assert_true(contains(err.msg, "MY_VLLM_KEY"));
    ap_config_free(c);
}

static void test_config__chain_with_deployments(void **state)
{
    (void)state;
    setenv("MY_VLLM_KEY", "a", 1);
    setenv("VLLM_API_KEY", "b", 1);
    setenv("OPENAI_API_KEY", "o", 1);
    ap_config *c = load_ok(deploy_yaml);
    ap_chain ch;
    ap_error err = {0};
    assert_int_equal(ap_config_chain(c, NULL, "qwen", &ch, &err), AP_OK);
    assert_int_equal(ch.n_steps, 3);
    const ap_chain_step *st = &ch.step[0];
    assert_int_equal(st->n_dep, 3);
    assert_string_equal(st->dep[0].provider->name, "box-a");
    assert_string_equal(st->dep[0].upstream, "Qwen/Qwen2.5-VL-7B-Instruct");
    assert_true(st->dep[0].weight == 3.0);
    assert_string_equal(st->dep[0].key, "box-a/Qwen/Qwen2.5-VL-7B-Instruct");
    assert_string_equal(st->dep[1].key, "box-b/qwen-vl-7b");
    assert_true(st->dep[1].weight == 0.5);
    assert_string_equal(st->dep[2].key, "local/Qwen/Qwen2.5-VL-7B-Instruct");
    /* The step's own fields are dep[0]'s. */
    assert_ptr_equal(st->provider, st->dep[0].provider);
    assert_ptr_equal(st->upstream, st->dep[0].upstream);
    assert_string_equal(st->deployment, st->dep[0].key);
    assert_ptr_equal(st->model_conf, &c->models[0]);
    /* A prefix-routed step: one deployment; review: none. */
    assert_string_equal(ch.step[1].model, "gpt-4o-mini");
    assert_int_equal(ch.step[1].n_dep, 1);
    assert_string_equal(ch.step[1].dep[0].key, "openai/gpt-4o-mini");
    assert_true(ch.step[1].dep[0].weight == 1.0);
    assert_string_equal(ch.step[1].deployment, "openai/gpt-4o-mini");
    assert_true(ch.step[2].review);
    assert_int_equal(ch.step[2].n_dep, 0);
    assert_string_equal(ch.step[2].deployment, "");
    ap_config_free(c);

    /* box-a disabled: its deployment is dropped and the step mirrors box-b. */
    unsetenv("MY_VLLM_KEY");
    c = load_ok(deploy_yaml);
    assert_int_equal(ap_config_chain(c, NULL, "qwen", &ch, &err), AP_OK);
    st = &ch.step[0];
    assert_int_equal(st->n_dep, 2);
    assert_string_equal(st->dep[0].key, "box-b/qwen-vl-7b");
    assert_string_equal(st->dep[1].key, "local/Qwen/Qwen2.5-VL-7B-Instruct");
    assert_string_equal(st->provider->name, "box-b");
    assert_string_equal(st->upstream, "qwen-vl-7b");
    assert_string_equal(st->deployment, "box-b/qwen-vl-7b");
    /* solo's only deployment is box-b: still there. plain's is box-a: left out of the chain. */
    assert_int_equal(ap_config_chain(c, NULL, "plain", &ch, &err), AP_ENOTFOUND);
    assert_true(contains(err.msg, "MY_VLLM_KEY"));
    ap_config_free(c);
}

static void test_config__chain_list(void **state)
{
    (void)state;
    setenv("VLLM_API_KEY", "b", 1);
    ap_config *c = load_ok(deploy_yaml); /* box-a (MY_VLLM_KEY) and openai disabled */
    ap_chain ch;
    ap_error err = {0};

    /* The list is the whole chain: qwen's own fallbacks are not added; repeats and disabled
     * steps are left out. */
    const char *const l1[] = {"gpt-4o", "qwen", "plain", "qwen", "local", "review"};
    assert_int_equal(ap_config_chain_list(c, l1, 6, &ch, &err), AP_OK);
    assert_int_equal(ch.n_steps, 3);
    assert_string_equal(ch.step[0].model, "qwen");
    assert_int_equal(ch.step[0].n_dep, 2);
    assert_string_equal(ch.step[0].deployment, "box-b/qwen-vl-7b");
    assert_string_equal(ch.step[1].model, "local");
    assert_null(ch.step[1].model_conf);
    assert_int_equal(ch.step[1].n_dep, 1);
    assert_true(ch.step[2].review);
    assert_null(ch.fallbacks_from);
    const char *const l2[] = {"review"};
    assert_int_equal(ap_config_chain_list(c, l2, 1, &ch, &err), AP_OK);
    assert_int_equal(ch.n_steps, 1);
    assert_true(ch.step[0].review);

    /* Failures leave *out alone. */
    memset(&ch, 0x5a, sizeof(ch));
    ap_chain before = ch;
    const char *const l3[] = {"qwen", "llava"};
    assert_int_equal(ap_config_chain_list(c, l3, 2, &ch, &err), AP_ENOTFOUND);
    assert_true(contains(err.msg, "no route for model \"llava\""));
    const char *const l4[] = {"gpt-4o", "plain"};
    memset(&err, 0, sizeof(err));
    assert_int_equal(ap_config_chain_list(c, l4, 2, &ch, &err), AP_ENOTFOUND);
    assert_true(contains(err.msg, "OPENAI_API_KEY")); /* the first one unavailable */
    const char *const l5[] = {"review", "qwen"};
    memset(&err, 0, sizeof(err));
    assert_int_equal(ap_config_chain_list(c, l5, 2, &ch, &err), AP_EINVAL);
    assert_true(contains(err.msg, "last"));
    const char *const l6[] = {"qwen", ""};
    assert_int_equal(ap_config_chain_list(c, l6, 2, &ch, &err), AP_EINVAL);
    assert_int_equal(ap_config_chain_list(c, l1, 0, &ch, &err), AP_EINVAL);
    assert_int_equal(ap_config_chain_list(c, NULL, 1, &ch, &err), AP_EINVAL);
    assert_memory_equal(&ch, &before, sizeof(ch));
    ap_config_free(c);
}

static void test_config__task_checks(void **state)
{
    (void)state;
    ap_config *c = load_ok("tasks:\n"
                           "  - name: inv\n"
                           "    prompt: p\n"
                           "    required: [vendor, total]\n"
                           "  - name: any_json\n"
                           "    prompt: p\n"
                           "    json: true\n"
                           "  - name: text\n"
                           "    prompt: p\n"
                           "  - name: both\n"
                           "    prompt: p\n"
                           "    json: yes\n"
                           "    required:\n"
                           "      - id\n");
    const ap_task_conf *t = ap_config_task(c, "inv");
    assert_true(t->json);
    assert_int_equal(t->n_required, 2);
    assert_string_equal(t->required[1], "total");
    t = ap_config_task(c, "any_json");
    assert_true(t->json);
    assert_int_equal(t->n_required, 0);
    assert_null(t->required);
    t = ap_config_task(c, "text");
    assert_false(t->json);
    assert_int_equal(t->n_required, 0);
    t = ap_config_task(c, "both");
    assert_true(t->json);
    assert_int_equal(t->n_required, 1);
    assert_string_equal(t->required[0], "id");
    ap_config_free(c);
}

static void test_config__clients_are_named(void **state)
{
    (void)state;
    const char *yaml =
        "client_keys_sha256:\n"
        "  - \"" SHA_TEST "\"\n"
        "  - \"" SHA_ANOTHER "\"\n"
        "clients:\n"
        "  - name: batch\n"
        "    key_sha256: \"" SHA_BATCH "\"\n"
        "  - name: partner\n"
        "    key_sha256: \"346E50AF211B5135824BB2BB58FE0F9E6DF228ADCF10C58A37FBC46B57BAEE74\"\n";
    ap_config *c = load_ok(yaml);
    assert_int_equal(c->n_client_keys, 4);
    static const char *const names[] = {"key1", "key2", "batch", "partner"};
    static const char *const hashes[] = {SHA_TEST, SHA_ANOTHER, SHA_BATCH, SHA_PARTNER};
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(c->client_key_name[i], names[i]);
        assert_string_equal(c->client_key_sha256[i], hashes[i]); /* lowercased */
    }
    ap_config_free(c);

    /* Named clients alone. */
    c = load_ok("clients:\n  - name: only\n    key_sha256: \"" SHA_TEST "\"\n");
    assert_int_equal(c->n_client_keys, 1);
    assert_string_equal(c->client_key_name[0], "only");
    ap_config_free(c);

    /* The environment replaces the plain list; the named clients stay, after it. */
    setenv("APERTURE_CLIENT_KEYS", "another-key", 1);
    c = load_ok(yaml);
    assert_int_equal(c->n_client_keys, 3);
    assert_string_equal(c->client_key_name[0], "key1");
    assert_string_equal(c->client_key_sha256[0], SHA_ANOTHER);
    assert_string_equal(c->client_key_name[1], "batch");
    assert_string_equal(c->client_key_name[2], "partner");
    ap_config_free(c);
    /* ... and a named client may not repeat one of its keys. */
    setenv("APERTURE_CLIENT_KEYS", "batch-key", 1);
    ap_error err;
    assert_int_equal(load_bad(yaml, &err), AP_EINVAL);
    assert_true(contains(err.msg, "config.yaml:6: clients[0].key_sha256: the same key as client "
                                  "key 1 from the environment"));
    unsetenv("APERTURE_CLIENT_KEYS");

    /* No keys at all: no names either. */
    c = load_ok(NULL);
    assert_int_equal(c->n_client_keys, 0);
    ap_config_free(c);
}

static void test_config__routes(void **state)
{
    (void)state;
    ap_config *c = load_ok("clients:\n"
                           "  - name: partner\n"
                           "    key_sha256: \"" SHA_PARTNER "\"\n"
                           "client_keys_sha256: [\"" SHA_TEST "\"]\n"
                           "routes:\n"
                           "  - name: everything\n"
                           "    task: describe\n"
                           "    model: \"gpt-*\"\n"
                           "    keywords: [urgent, \"purchase order\"]\n"
                           "    min_pixels: 0\n"
                           "    max_pixels: 4000000\n"
                           "    min_bytes: 10\n"
                           "    max_bytes: 10\n"
                           "    min_images: 1\n"
                           "    max_images: 8\n"
                           "    clients: [partner, key1]\n"
                           "    data_class: internal\n"
                           "    models: [local, review]\n"
                           "    two_stage:\n"
                           "      model: local\n"
                           "      target: openai-low\n"
                           "      prompt: Is this a receipt or not?\n"
                           "      classes: [receipt, other]\n"
                           "      valuable: [receipt]\n"
                           "  - name: bare\n"
                           "    two_stage:\n"
                           "      model: gpt-4o-mini\n"
                           "      classes: [x, y, z]\n"
                           "      valuable: [z, x]\n");
    assert_int_equal(c->n_routes, 2);
    const ap_route_rule *r = &c->routes[0];
    assert_string_equal(r->name, "everything");
    assert_string_equal(r->task, "describe");
    assert_string_equal(r->model, "gpt-*");
    assert_int_equal(r->n_keywords, 2);
    assert_string_equal(r->keywords[1], "purchase order");
    assert_true(r->min_pixels == 0 && r->max_pixels == 4000000);
    assert_true(r->min_bytes == 10 && r->max_bytes == 10); /* min == max is fine */
    assert_int_equal(r->min_images, 1);
    assert_int_equal(r->max_images, 8);
    assert_int_equal(r->n_clients, 2);
    assert_string_equal(r->clients[1], "key1");
    assert_string_equal(r->data_class, "internal");
    assert_int_equal(r->n_models, 2);
    assert_string_equal(r->two_stage->target, "openai-low");
    assert_string_equal(r->two_stage->prompt, "Is this a receipt or not?");
    r = &c->routes[1];
    assert_null(r->task);
    assert_null(r->model);
    assert_null(r->keywords);
    assert_null(r->clients);
    assert_null(r->data_class);
    assert_null(r->models);
    assert_int_equal(r->n_models, 0);
    assert_true(r->min_pixels == -1 && r->max_bytes == -1 && r->min_images == -1);
    assert_string_equal(r->two_stage->target, "thumbnail");
    assert_string_equal(r->two_stage->prompt, "Classify this image as exactly one of: x, y, z. "
                                              "Answer with the class name only.");
    assert_string_equal(r->two_stage->valuable[0], "z");
    /* The classifier's provider is disabled: a warning, as for fallbacks. */
    bool warned = false;
    for (size_t i = 0; i < c->n_warnings; i++)
        warned |= contains(c->warnings[i], "route \"bare\" two_stage") &&
                  contains(c->warnings[i], "OPENAI_API_KEY");
    assert_true(warned);
    ap_config_free(c);
}

static void test_config__review_url(void **state)
{
    (void)state;
    ap_config *c = load_ok("review_url: \"sqlite:///var/lib/aperture/review.db\"\n");
    assert_string_equal(c->review_url, "sqlite:///var/lib/aperture/review.db");
    ap_config_free(c);
    setenv("APERTURE_REVIEW_URL", "redis://10.0.0.9:6379/3", 1);
    c = load_ok("review_url: \"sqlite://review.db\"\n");
    assert_string_equal(c->review_url, "redis://10.0.0.9:6379/3");
    ap_config_free(c);
    /* A bad URL is refused without quoting it (it may hold a password). */
    setenv("APERTURE_REVIEW_URL", "mysql://u:SECRET@db", 1);
    ap_error err = {0};
    ap_config *bad = NULL;
    assert_int_equal(ap_config_load_buffer(NULL, 0, NULL, NULL, &bad, &err), AP_EINVAL);
    assert_true(contains(err.msg, "APERTURE_REVIEW_URL: "));
    assert_no_secret(err.msg, "APERTURE_REVIEW_URL");
}

/* docs/CONFIG.md names every key and every variable. */
static void test_config__every_key_is_documented(void **state)
{
    (void)state;
    FILE *f = fopen(DOC, "rb");
    assert_non_null(f);
    static char doc[256 * 1024];
    size_t n = fread(doc, 1, sizeof(doc) - 1, f);
    fclose(f);
    doc[n] = '\0';
    char var[64];
    for (size_t i = 0; i < N_KEYS; i++) {
        char key[80];
        snprintf(key, sizeof(key), "`%s`", settings_keys[i]);
        env_name(settings_keys[i], var, sizeof(var));
        if (!contains(doc, key) || !contains(doc, var))
            fail_msg("docs/CONFIG.md does not document %s / %s", key, var);
    }
    for (size_t i = 0; i < sizeof(other_vars) / sizeof(other_vars[0]); i++) {
        if (strcmp(other_vars[i], "VLLM_API_KEY") == 0 || strcmp(other_vars[i], "MY_VLLM_KEY") == 0)
            continue; /* test-only names */
        if (!contains(doc, other_vars[i]))
            fail_msg("docs/CONFIG.md does not mention %s", other_vars[i]);
    }
    const char *entry_keys[] = {"`name`",
                                "`type`",
                                "`base_url`",
                                "`api_key_env`",
                                "`connect_timeout_ms`",
                                "`timeout_ms`",
                                "`provider`",
                                "`upstream`",
                                "`usd_per_mtok_in`",
                                "`usd_per_mtok_out`",
                                "`token_model`",
                                "`token_patch`",
                                "`patch_px`",
                                "`max_pixels`",
                                "`tokens_per_patch`",
                                "`extra_tokens`",
                                "`target`",
                                "`model`",
                                "`prompt`",
                                "`prompt_version`",
                                "`providers`",
                                "`models`",
                                "`tasks`",
                                "`fallbacks`",
                                "`retry`",
                                "`breaker`",
                                "`self_hosted`",
                                "`limits`",
                                "`max_in_flight`",
                                "`rpm`",
                                "`tpm`",
                                "`queue`",
                                "`queue_timeout_ms`",
                                "`deployments`",
                                "`weight`",
                                "`json`",
                                "`required`",
                                "`clients`",
                                "`key_sha256`",
                                "`routes`",
                                "`keywords`",
                                "`min_pixels`",
                                "`max_pixels`",
                                "`min_bytes`",
                                "`max_bytes`",
                                "`min_images`",
                                "`max_images`",
                                "`data_class`",
                                "`models`",
                                "`two_stage`",
                                "`classes`",
                                "`valuable`",
                                "`review_url`",
                                "x-aperture-data-class"};
    for (size_t i = 0; i < sizeof(entry_keys) / sizeof(entry_keys[0]); i++)
        if (!contains(doc, entry_keys[i]))
            fail_msg("docs/CONFIG.md does not document %s", entry_keys[i]);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, clean_env, clean_env)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_config__loads_the_example),
        T(test_config__defaults_without_a_file),
        T(test_config__missing_file_is_an_io_error),
        T(test_config__aperture_config_names_the_file),
        T(test_config__zero_config_env_enables_providers),
        T(test_config__each_prefix_routes),
        T(test_config__disabled_provider_names_the_variable),
        T(test_config__configured_model_beats_prefix),
        T(test_config__invalid_configs_name_key_and_line),
        T(test_config__invalid_file_on_disk_names_the_path),
        T(test_config__bad_environment_names_the_variable),
        T(test_config__keys_never_appear_in_messages),
        T(test_config__aperture_env_beats_the_file),
        T(test_config__every_setting_has_an_env_override),
        T(test_config__max_image_size_mb),
        T(test_config__client_keys_are_hashed),
        T(test_config__fetch_allow_loopback),
        T(test_config__instances_are_independent),
        T(test_config__provider_type_names),
        T(test_config__tasks_default_to_default_model),
        T(test_config__resilience_defaults),
        T(test_config__resilience_from_the_file),
        T(test_config__resilience_env_overrides),
        T(test_config__fallbacks),
        T(test_config__self_hosted_and_limits_defaults),
        T(test_config__deployments),
        T(test_config__chain_with_deployments),
        T(test_config__chain_list),
        T(test_config__task_checks),
        T(test_config__clients_are_named),
        T(test_config__routes),
        T(test_config__review_url),
        T(test_config__every_key_is_documented),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
