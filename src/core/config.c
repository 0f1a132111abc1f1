/*
 * config.c - the gateway's configuration: built-in defaults, the YAML file, environment
 * overrides, zero-config providers, validation and model routing. docs/CONFIG.md is the user's
 * view; include/aperture/config.h the contract.
 *
 * Every scalar setting is one row of settings[]: its YAML key, its kind and where it lives in
 * ap_config. The same row parses the value whether it comes from the file or from its variable
 * (APERTURE_ + the key in capitals), so both accept and refuse the same things with the same
 * words. A key with a dot lives one level down, in a section mapping ("retry.base_ms" is
 * base_ms under retry:, variable APERTURE_RETRY_BASE_MS). The file's scalars therefore reach us
 * as strings: libcyaml checks the document's shape (keys, lists, mappings, required keys) and we
 * check the values.
 *
 * Errors name where the value came from: "NAME:LINE: PATH: why" for the file (lines from the
 * index built in config_yaml.c), "VARIABLE: why" for the environment. Values of fields that can
 * hold a secret (client key hashes, api_key_env, URLs) are never quoted back, and provider keys
 * are never formatted anywhere.
 *
 * No static mutable state: the tables below are const, everything else hangs off the ap_config
 * being built.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "aperture/config.h"
#include "aperture/hash.h"
#include "core/config_int.h"
#include "core/core.h"

/* A bigger file is not a config; everything allocated from it is bounded by this. */
#define CONFIG_MAX_BYTES (1u << 20)

#define DEFAULT_LISTEN             "127.0.0.1:8080"
#define DEFAULT_CONNECT_TIMEOUT_MS 10000L
#define DEFAULT_TIMEOUT_MS         600000L
#define DEFAULT_QUEUE              100
#define DEFAULT_QUEUE_TIMEOUT_MS   30000L
/* Limits' counts above this are typing mistakes, not capacities. */
#define LIMIT_COUNT_MAX 1000000u

/* ---- the settings table ----------------------------------------------------------------- */

enum kind {
    K_STR,      /* char *, free-form (log_file) */
    K_LISTEN,   /* char *, HOST:PORT */
    K_MODEL,    /* char *, a model name; must route (checked once everything is loaded) */
    K_SIZE,     /* size_t */
    K_INT,      /* int */
    K_LONG,     /* long */
    K_U8,       /* uint8_t */
    K_U32,      /* uint32_t */
    K_U64,      /* uint64_t */
    K_RATE,     /* double >= 0 */
    K_BOOL,     /* bool */
    K_ENCODING, /* ap_encoding: jpeg, png, webp */
    K_COLOR,    /* uint8_t[3] from "#rrggbb" */
    K_HASHES,   /* char ** of lowercase SHA-256 hex + size_t count */
    K_HOSTS,    /* char ** of host names + size_t count */
    K_STATUSES, /* int[AP_RETRY_MAX_STATUS] of HTTP statuses in [min, max] + size_t count */
    K_FRACTION, /* double in [0, 1] */
    K_STORE,    /* char *, a store URL: sqlite://PATH or redis://HOST... (not quoted back) */
};

static bool is_list(enum kind k)
{
    return k == K_HASHES || k == K_HOSTS || k == K_STATUSES;
}

struct setting {
    const char *key; /* the YAML key ("retry.base_ms": base_ms under retry:); the variable is
                        APERTURE_ + the key in capitals, dots as underscores */
    enum kind kind;
    size_t off;        /* the field in ap_config */
    size_t off_n;      /* lists: the count field */
    uint64_t min, max; /* integers: inclusive range; max 0 = the field type's limit */
};

/* Most fields a task may require, keywords, classes and clients a route may list. */
#define TASK_MAX_REQUIRED 64
#define ROUTE_MAX_LIST    64

/* Durations in the retry and breaker sections: at most a day, so sums of them never overflow. */
#define MS_MAX 86400000u

#define AT(m) offsetof(ap_config, m)
static const struct setting settings[] = {
    {"listen", K_LISTEN, AT(listen), 0, 0, 0},
    {"max_body_bytes", K_SIZE, AT(max_body_bytes), 0, 1, 0},
    {"workers", K_INT, AT(workers), 0, 0, 4096},
    {"client_keys_sha256", K_HASHES, AT(client_key_sha256), AT(n_client_keys), 0, 0},
    {"rate_rps", K_RATE, AT(rate_rps), 0, 0, 0},
    {"rate_burst", K_RATE, AT(rate_burst), 0, 0, 0},
    {"default_model", K_MODEL, AT(default_model), 0, 0, 0},
    {"max_image_bytes", K_SIZE, AT(prep.max_input_bytes), 0, 1, 0},
    {"max_image_pixels", K_U64, AT(prep.max_pixels), 0, 1, 0},
    {"image_min_side", K_U32, AT(prep.min_side), 0, 1, 0},
    {"image_warn_min_side", K_U32, AT(prep.warn_min_side), 0, 0, 0},
    {"image_encoding", K_ENCODING, AT(prep.encoding), 0, 0, 0},
    {"image_quality", K_INT, AT(prep.quality), 0, 1, 100},
    {"image_background", K_COLOR, AT(prep.background), 0, 0, 0},
    {"image_trim", K_BOOL, AT(prep.trim), 0, 0, 0},
    {"image_trim_tolerance", K_U8, AT(prep.trim_tolerance), 0, 0, 255},
    {"image_gray", K_BOOL, AT(prep.gray), 0, 0, 0},
    {"ocr_max_edge", K_U32, AT(ocr_max_edge), 0, 1, 0},
    {"fetch_allow_loopback", K_BOOL, AT(fetch_allow_loopback), 0, 0, 0},
    {"fetch_allow_hosts", K_HOSTS, AT(fetch_allow_hosts), AT(n_fetch_allow_hosts), 0, 0},
    {"fetch_timeout_ms", K_LONG, AT(fetch_timeout_ms), 0, 1, 0},
    {"fetch_max_bytes", K_SIZE, AT(fetch_max_bytes), 0, 1, 0},
    {"log_file", K_STR, AT(log_file), 0, 0, 0},
    {"log_prompts", K_BOOL, AT(log_prompts), 0, 0, 0},
    {"review_url", K_STORE, AT(review_url), 0, 0, 0},
    {"retry.max_attempts", K_INT, AT(retry.max_attempts), 0, 1, 100},
    {"retry.base_ms", K_LONG, AT(retry.base_ms), 0, 0, MS_MAX},
    {"retry.cap_ms", K_LONG, AT(retry.cap_ms), 0, 0, MS_MAX},
    {"retry.retry_after_cap_ms", K_LONG, AT(retry.retry_after_cap_ms), 0, 0, MS_MAX},
    {"retry.on_status", K_STATUSES, AT(retry.on_status), AT(retry.n_on_status), 400, 599},
    {"retry.on_connect_error", K_BOOL, AT(retry.on_connect_error), 0, 0, 0},
    {"retry.on_timeout", K_BOOL, AT(retry.on_timeout), 0, 0, 0},
    {"retry.attempt_timeout_ms", K_LONG, AT(retry.attempt_timeout_ms), 0, 0, MS_MAX},
    {"retry.deadline_ms", K_LONG, AT(retry.deadline_ms), 0, 0, MS_MAX},
    {"breaker.consecutive_failures", K_INT, AT(breaker.consecutive_failures), 0, 0, 1000000},
    {"breaker.error_rate", K_FRACTION, AT(breaker.error_rate), 0, 0, 0},
    {"breaker.window_ms", K_LONG, AT(breaker.window_ms), 0, 1, MS_MAX},
    {"breaker.min_requests", K_INT, AT(breaker.min_requests), 0, 1, 1000000},
    {"breaker.cooldown_ms", K_LONG, AT(breaker.cooldown_ms), 0, 1, MS_MAX},
    {"breaker.half_open_probes", K_INT, AT(breaker.half_open_probes), 0, 1, 1000},
};
#define N_SETTINGS 40
_Static_assert(sizeof(settings) / sizeof(settings[0]) == N_SETTINGS, "N_SETTINGS");

/* The mappings under the top level that hold dotted settings ("retry.base_ms"). */
static const char *const sections[] = {"retry", "breaker"};
#define N_SECTIONS 2

/* Settings' other variable names, read before the canonical one (which wins). */
static const struct {
    const char *var, *key;
} env_aliases[] = {
    {"APERTURE_BREAKER_FAILURES", "breaker.consecutive_failures"},
};

/* The section index of setting s (by its key's prefix), or -1 for a top-level one. */
static int section_of(const struct setting *s)
{
    const char *dot = strchr(s->key, '.');
    if (dot == NULL)
        return -1;
    for (int k = 0; k < N_SECTIONS; k++)
        if (strlen(sections[k]) == (size_t)(dot - s->key) &&
            strncmp(s->key, sections[k], (size_t)(dot - s->key)) == 0)
            return k;
    return -1;
}

/* The key within its mapping: "base_ms" for "retry.base_ms". */
static const char *leaf_key(const struct setting *s)
{
    const char *dot = strchr(s->key, '.');
    return dot ? dot + 1 : s->key;
}

/* APERTURE_ + the key in capitals, dots as underscores. */
static void env_var_name(const struct setting *s, char *var, size_t cap)
{
    size_t k = (size_t)snprintf(var, cap, "APERTURE_");
    for (const char *c = s->key; *c && k + 1 < cap; c++)
        var[k++] = *c == '.' ? '_' : (char)toupper((unsigned char)*c);
    var[k] = '\0';
}

/* The providers that exist without a file, enabled by their key variable. */
struct builtin {
    const char *name;
    ap_provider_type type;
    const char *key_env, *url_env, *url;
};
static const struct builtin builtins[] = {
    {"openai", AP_PROVIDER_OPENAI, "OPENAI_API_KEY", "OPENAI_BASE_URL",
     "https://api.openai.com/v1"},
    {"anthropic", AP_PROVIDER_ANTHROPIC, "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL",
     "https://api.anthropic.com"},
    {"gemini", AP_PROVIDER_GEMINI, "GEMINI_API_KEY", "GEMINI_BASE_URL",
     "https://generativelanguage.googleapis.com/v1beta"},
};

/* Model-name conventions, used when no configured model has the exact name. */
static const struct {
    const char *prefix;
    ap_provider_type type;
} prefixes[] = {
    {"gpt-", AP_PROVIDER_OPENAI},     {"o1", AP_PROVIDER_OPENAI},
    {"o3", AP_PROVIDER_OPENAI},       {"o4", AP_PROVIDER_OPENAI},
    {"chatgpt-", AP_PROVIDER_OPENAI}, {"claude-", AP_PROVIDER_ANTHROPIC},
    {"gemini-", AP_PROVIDER_GEMINI},
};
#define PREFIX_HELP                                                                                \
    "gpt-, o1, o3, o4, chatgpt- (openai), claude- (anthropic) or gemini- (gemini), or use "        \
    "\"local\""

static const char *const type_names[] = {"openai", "anthropic", "gemini", "openai-compatible",
                                         "local"};

const char *ap_provider_type_name(ap_provider_type t)
{
    return (unsigned)t < sizeof(type_names) / sizeof(type_names[0]) ? type_names[t] : "unknown";
}

const char *ap_provider_default_target(ap_provider_type t)
{
    switch (t) {
    case AP_PROVIDER_OPENAI:
        return "openai-high";
    case AP_PROVIDER_ANTHROPIC:
        return "anthropic";
    case AP_PROVIDER_GEMINI:
        return "gemini";
    case AP_PROVIDER_OPENAI_COMPAT:
        return "default";
    case AP_PROVIDER_LOCAL:
        return "none";
    }
    return "default";
}

/* ---- the file as libcyaml loads it: every scalar a string ------------------------------- */

struct raw_patch {
    char *patch_px, *max_pixels, *tokens_per_patch, *extra_tokens;
};
struct raw_limits {
    char *max_in_flight, *rpm, *tpm, *queue, *queue_timeout_ms;
};
struct raw_provider {
    char *name, *type, *base_url, *api_key_env, *connect_timeout_ms, *timeout_ms, *self_hosted;
    struct raw_limits *limits;
};
struct raw_deployment {
    char *provider, *upstream, *weight;
};
struct raw_model {
    char *name, *provider, *upstream, *usd_per_mtok_in, *usd_per_mtok_out, *token_model, *target;
    struct raw_patch *token_patch;
    char **fallbacks;
    unsigned fallbacks_count;
    struct raw_deployment *deployments;
    unsigned deployments_count;
};
struct raw_task {
    char *name, *model, *prompt, *prompt_version, *json;
    char **fallbacks;
    unsigned fallbacks_count;
    char **required;
    unsigned required_count;
};
struct raw_client {
    char *name, *key_sha256;
};
struct raw_two_stage {
    char *model, *target, *prompt;
    char **classes;
    unsigned classes_count;
    char **valuable;
    unsigned valuable_count;
};
struct raw_route {
    char *name, *task, *model, *data_class;
    char *min_pixels, *max_pixels, *min_bytes, *max_bytes, *min_images, *max_images;
    char **keywords;
    unsigned keywords_count;
    char **clients;
    unsigned clients_count;
    char **models;
    unsigned models_count;
    struct raw_two_stage *two_stage;
};
/* Settings' values by settings[] index: the top level's, and each section's (same layout). */
struct raw_values {
    char *scalar[N_SETTINGS]; /* lists use list[] */
    char **list[N_SETTINGS];
    unsigned list_n[N_SETTINGS];
};
struct raw_top {
    struct raw_values v;
    struct raw_values *section[N_SECTIONS];
    struct raw_provider *providers;
    unsigned providers_count;
    struct raw_model *models;
    unsigned models_count;
    struct raw_task *tasks;
    unsigned tasks_count;
    struct raw_client *clients;
    unsigned clients_count;
    struct raw_route *routes;
    unsigned routes_count;
};

/* `key: ~` and `key:` count as not set. Required keys must be present; empty is checked later. */
#define OPT                    (CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER_NULL_STR)
#define REQ                    CYAML_FLAG_POINTER_NULL_STR
#define STR(key, flags, st, m) CYAML_FIELD_STRING_PTR(key, flags, st, m, 0, CYAML_UNLIMITED)

static const cyaml_schema_value_t str_entry = {
    CYAML_VALUE_STRING(CYAML_FLAG_POINTER, char, 0, CYAML_UNLIMITED),
};

static const cyaml_schema_field_t patch_fields[] = {
    STR("patch_px", REQ, struct raw_patch, patch_px),
    STR("max_pixels", OPT, struct raw_patch, max_pixels),
    STR("tokens_per_patch", REQ, struct raw_patch, tokens_per_patch),
    STR("extra_tokens", OPT, struct raw_patch, extra_tokens),
    CYAML_FIELD_END,
};

/* A list of plain values (model names, field names, keywords) as an optional field. */
#define STRS(key, st, m)                                                                           \
    CYAML_FIELD_SEQUENCE(key, CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER, st, m, &str_entry, 0,      \
                         CYAML_UNLIMITED)
/* An optional mapping; `key: ~` counts as absent. */
#define SUBMAP(key, st, m, fields)                                                                 \
    CYAML_FIELD_MAPPING_PTR(key, CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER_NULL_STR, st, m, fields)

static const cyaml_schema_field_t limits_fields[] = {
    STR("max_in_flight", OPT, struct raw_limits, max_in_flight),
    STR("rpm", OPT, struct raw_limits, rpm),
    STR("tpm", OPT, struct raw_limits, tpm),
    STR("queue", OPT, struct raw_limits, queue),
    STR("queue_timeout_ms", OPT, struct raw_limits, queue_timeout_ms),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t provider_fields[] = {
    STR("name", REQ, struct raw_provider, name),
    STR("type", REQ, struct raw_provider, type),
    STR("base_url", OPT, struct raw_provider, base_url),
    STR("api_key_env", OPT, struct raw_provider, api_key_env),
    STR("connect_timeout_ms", OPT, struct raw_provider, connect_timeout_ms),
    STR("timeout_ms", OPT, struct raw_provider, timeout_ms),
    STR("self_hosted", OPT, struct raw_provider, self_hosted),
    SUBMAP("limits", struct raw_provider, limits, limits_fields),
    CYAML_FIELD_END,
};
static const cyaml_schema_value_t provider_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_provider, provider_fields),
};

static const cyaml_schema_field_t deployment_fields[] = {
    STR("provider", REQ, struct raw_deployment, provider),
    STR("upstream", OPT, struct raw_deployment, upstream),
    STR("weight", OPT, struct raw_deployment, weight),
    CYAML_FIELD_END,
};
static const cyaml_schema_value_t deployment_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_deployment, deployment_fields),
};

static const cyaml_schema_field_t model_fields[] = {
    STR("name", REQ, struct raw_model, name),
    /* Required unless deployments are listed: load_model() says so. */
    STR("provider", OPT, struct raw_model, provider),
    STR("upstream", OPT, struct raw_model, upstream),
    STR("usd_per_mtok_in", OPT, struct raw_model, usd_per_mtok_in),
    STR("usd_per_mtok_out", OPT, struct raw_model, usd_per_mtok_out),
    STR("token_model", OPT, struct raw_model, token_model),
    CYAML_FIELD_MAPPING_PTR("token_patch", CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER,
                            struct raw_model, token_patch, patch_fields),
    STR("target", OPT, struct raw_model, target),
    STRS("fallbacks", struct raw_model, fallbacks),
    CYAML_FIELD_SEQUENCE("deployments", CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER, struct raw_model,
                         deployments, &deployment_entry, 0, CYAML_UNLIMITED),
    CYAML_FIELD_END,
};
static const cyaml_schema_value_t model_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_model, model_fields),
};

static const cyaml_schema_field_t task_fields[] = {
    STR("name", REQ, struct raw_task, name),
    STR("model", OPT, struct raw_task, model),
    STR("prompt", REQ, struct raw_task, prompt),
    STR("prompt_version", OPT, struct raw_task, prompt_version),
    STRS("fallbacks", struct raw_task, fallbacks),
    STR("json", OPT, struct raw_task, json),
    STRS("required", struct raw_task, required),
    CYAML_FIELD_END,
};
static const cyaml_schema_value_t task_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_task, task_fields),
};

static const cyaml_schema_field_t client_fields[] = {
    STR("name", REQ, struct raw_client, name),
    STR("key_sha256", REQ, struct raw_client, key_sha256),
    CYAML_FIELD_END,
};
static const cyaml_schema_value_t client_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_client, client_fields),
};

static const cyaml_schema_field_t two_stage_fields[] = {
    STR("model", REQ, struct raw_two_stage, model),
    STR("target", OPT, struct raw_two_stage, target),
    STR("prompt", OPT, struct raw_two_stage, prompt),
    STRS("classes", struct raw_two_stage, classes),
    STRS("valuable", struct raw_two_stage, valuable),
    CYAML_FIELD_END,
};

static const cyaml_schema_field_t route_fields[] = {
    STR("name", REQ, struct raw_route, name),
    STR("task", OPT, struct raw_route, task),
    STR("model", OPT, struct raw_route, model),
    STRS("keywords", struct raw_route, keywords),
    STR("min_pixels", OPT, struct raw_route, min_pixels),
    STR("max_pixels", OPT, struct raw_route, max_pixels),
    STR("min_bytes", OPT, struct raw_route, min_bytes),
    STR("max_bytes", OPT, struct raw_route, max_bytes),
    STR("min_images", OPT, struct raw_route, min_images),
    STR("max_images", OPT, struct raw_route, max_images),
    STRS("clients", struct raw_route, clients),
    STR("data_class", OPT, struct raw_route, data_class),
    STRS("models", struct raw_route, models),
    SUBMAP("two_stage", struct raw_route, two_stage, two_stage_fields),
    CYAML_FIELD_END,
};
static const cyaml_schema_value_t route_entry = {
    CYAML_VALUE_MAPPING(CYAML_FLAG_DEFAULT, struct raw_route, route_fields),
};

_Static_assert(offsetof(struct raw_top, v) == 0, "raw_top.v must come first");

/* The top level and its sections are assembled from settings[] at load time (on the heap). */
struct schema {
    cyaml_schema_field_t fields[N_SETTINGS + N_SECTIONS + 6];
    cyaml_schema_field_t section_fields[N_SECTIONS][N_SETTINGS + 1];
    cyaml_schema_value_t top;
};

/* The schema field of setting i, whose values are in a struct raw_values. */
static void setting_field(cyaml_schema_field_t *f, size_t i)
{
    f->key = leaf_key(&settings[i]);
    if (is_list(settings[i].kind)) {
        f->data_offset = (uint32_t)(offsetof(struct raw_values, list) + i * sizeof(char **));
        f->count_offset = (uint32_t)(offsetof(struct raw_values, list_n) + i * sizeof(unsigned));
        f->count_size = sizeof(unsigned);
        f->value = (cyaml_schema_value_t){
            CYAML_VALUE_SEQUENCE(CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER, char *, &str_entry, 0,
                                 CYAML_UNLIMITED),
        };
    } else {
        f->data_offset = (uint32_t)(offsetof(struct raw_values, scalar) + i * sizeof(char *));
        f->value = (cyaml_schema_value_t){
            CYAML_VALUE_STRING(OPT, char, 0, CYAML_UNLIMITED),
        };
    }
}

static void schema_init(struct schema *s)
{
    size_t k = 0, n_in[N_SECTIONS] = {0};
    memset(s, 0, sizeof(*s));
    for (size_t i = 0; i < N_SETTINGS; i++) {
        int sec = section_of(&settings[i]);
        if (sec < 0)
            setting_field(&s->fields[k++], i); /* struct raw_values is raw_top's first member */
        else
            setting_field(&s->section_fields[sec][n_in[sec]++], i);
    }
    for (size_t sec = 0; sec < N_SECTIONS; sec++) {
        s->section_fields[sec][n_in[sec]] = (cyaml_schema_field_t)CYAML_FIELD_END;
        cyaml_schema_field_t *f = &s->fields[k++];
        f->key = sections[sec];
        f->data_offset =
            (uint32_t)(offsetof(struct raw_top, section) + sec * sizeof(struct raw_values *));
        f->value = (cyaml_schema_value_t){
            CYAML_VALUE_MAPPING(CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER_NULL_STR,
                                struct raw_values, s->section_fields[sec]),
        };
    }
    s->fields[k++] = (cyaml_schema_field_t)CYAML_FIELD_SEQUENCE(
        "providers", CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER, struct raw_top, providers,
        &provider_entry, 0, CYAML_UNLIMITED);
    s->fields[k++] = (cyaml_schema_field_t)CYAML_FIELD_SEQUENCE(
        "models", CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER, struct raw_top, models, &model_entry, 0,
        CYAML_UNLIMITED);
    s->fields[k++] = (cyaml_schema_field_t)CYAML_FIELD_SEQUENCE(
        "tasks", CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER, struct raw_top, tasks, &task_entry, 0,
        CYAML_UNLIMITED);
    s->fields[k++] = (cyaml_schema_field_t)CYAML_FIELD_SEQUENCE(
        "clients", CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER, struct raw_top, clients, &client_entry,
        0, CYAML_UNLIMITED);
    s->fields[k++] = (cyaml_schema_field_t)CYAML_FIELD_SEQUENCE(
        "routes", CYAML_FLAG_OPTIONAL | CYAML_FLAG_POINTER, struct raw_top, routes, &route_entry, 0,
        CYAML_UNLIMITED);
    s->fields[k] = (cyaml_schema_field_t)CYAML_FIELD_END;
    s->top = (cyaml_schema_value_t){
        CYAML_VALUE_MAPPING(CYAML_FLAG_POINTER, struct raw_top, s->fields),
    };
}

/* ---- the loader's context and error helpers ----------------------------------------------- */

/* Where a value came from: a path in the file, or a variable (or the --listen flag). */
struct src {
    const char *label;
    bool env;
};

struct ld {
    const char *name; /* the file as messages call it */
    const struct ap__yindex *ix;
    ap_config *cfg;
    ap_error *err;
    size_t n_file_providers;       /* providers[0..n) came from the file */
    const char *default_model_env; /* the variable default_model came from, or NULL */
    /* Per setting: set by the file or a variable, and which variable ("" = the file). */
    bool set[N_SETTINGS];
    char env_of[N_SETTINGS][64];
    /* clients[] from the file (lowercase hashes), owned here until finish_clients() moves them
     * behind the plain client_keys_sha256 list, which the environment may still replace. */
    char **client_names, **client_hashes;
    size_t n_clients;
};

AP_PRINTF(3, 4)
static ap_status fail(struct ld *ld, const struct src *at, const char *fmt, ...)
{
    char why[AP_ERROR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    if (at->env)
        return ap_error_set(ld->err, AP_EINVAL, "%s: %s", at->label, why);
    unsigned line = ap__config_yindex_line(ld->ix, at->label, 0);
    if (line == 0)
        return ap_error_set(ld->err, AP_EINVAL, "%s: %s: %s", ld->name, at->label, why);
    return ap_error_set(ld->err, AP_EINVAL, "%s:%u: %s: %s", ld->name, line, at->label, why);
}

/* A file path like "providers[2].type", into a caller's buffer. */
AP_PRINTF(3, 4)
static const char *pathf(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    return buf;
}

/* Config strings are bounded by CONFIG_MAX_BYTES (or the environment): aborting allocations. */
static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *p = ap__xmalloc(n);
    memcpy(p, s, n);
    return p;
}

static void set_str(char **slot, const char *s)
{
    free(*slot);
    *slot = s ? xstrdup(s) : NULL;
}

AP_PRINTF(2, 3)
static void warn(ap_config *cfg, const char *fmt, ...)
{
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    char **w = realloc(cfg->warnings, (cfg->n_warnings + 1) * sizeof(*w));
    if (w == NULL) {
        fprintf(stderr, "aperture: out of memory\n");
        abort();
    }
    cfg->warnings = w;
    cfg->warnings[cfg->n_warnings++] = xstrdup(line);
}

/* ---- value parsers: NULL on success, else why (a static string) --------------------------- */

static const char *parse_uint(const char *t, uint64_t *out)
{
    while (*t == ' ' || *t == '\t')
        t++;
    if (*t == '-')
        return "must not be negative";
    if (!isdigit((unsigned char)*t))
        return "expected a whole number";
    char *end;
    errno = 0;
    unsigned long long v = strtoull(t, &end, 10);
    while (*end == ' ' || *end == '\t')
        end++;
    if (*end != '\0')
        return "expected a whole number";
    if (errno == ERANGE)
        return "is too large";
    *out = (uint64_t)v;
    return NULL;
}

static const char *parse_real(const char *t, double *out)
{
    while (*t == ' ' || *t == '\t')
        t++;
    if (*t == '-')
        return "must not be negative";
    if (!isdigit((unsigned char)*t) && *t != '.')
        return "expected a number";
    char *end;
    errno = 0;
    double v = strtod(t, &end);
    while (*end == ' ' || *end == '\t')
        end++;
    if (*end != '\0' || end == t)
        return "expected a number";
    if (errno == ERANGE || !isfinite(v))
        return "is out of range";
    *out = v;
    return NULL;
}

static const char *parse_bool(const char *t, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(t, yes[i]) == 0) {
            *out = true;
            return NULL;
        }
        if (strcasecmp(t, no[i]) == 0) {
            *out = false;
            return NULL;
        }
    }
    return "expected true or false";
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* HOST:PORT as the server takes it: host may be empty (all interfaces), IPv6 in brackets. */
static const char *check_listen(const char *s)
{
    const char *colon = strrchr(s, ':');
    if (colon == NULL || colon[1] == '\0')
        return "expected HOST:PORT, e.g. 127.0.0.1:8080";
    if (s[0] == '[' ? colon[-1] != ']' : memchr(s, ':', (size_t)(colon - s)) != NULL)
        return "expected HOST:PORT with an IPv6 host in brackets, e.g. [::1]:8080";
    uint64_t port;
    if (parse_uint(colon + 1, &port) != NULL || port > 65535)
        return "the port must be a number from 0 to 65535";
    return NULL;
}

/* http(s)://HOST... ; not quoted back in messages (a URL may carry credentials). */
static const char *check_url(const char *s)
{
    size_t skip = strncmp(s, "https://", 8) == 0 ? 8 : strncmp(s, "http://", 7) == 0 ? 7 : 0;
    if (skip == 0)
        return "must start with http:// or https://";
    if (s[skip] == '\0' || s[skip] == '/')
        return "has no host";
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ')
            return "must not contain spaces or control characters";
    return NULL;
}

/* sqlite://PATH or redis://HOST[:PORT][/DB] as the stores take them; not quoted back (a Redis
 * URL may carry a password). The stores check the rest when they open. */
static const char *check_store_url(const char *s)
{
    size_t skip = strncmp(s, "sqlite://", 9) == 0 ? 9 : strncmp(s, "redis://", 8) == 0 ? 8 : 0;
    if (skip == 0)
        return "expected sqlite://PATH or redis://HOST:PORT/DB";
    if (s[skip] == '\0')
        return "has no path or host after the scheme";
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == 0x7f)
            return "must not contain spaces or control characters";
    return NULL;
}

/* An environment variable's name. The value is never echoed: it may be the key itself. */
static bool is_env_name(const char *s)
{
    if (!(isalpha((unsigned char)*s) || *s == '_'))
        return false;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || *s == '_'))
            return false;
    return true;
}

/* Names of providers, models and tasks: printable, no spaces, at most 128 bytes. */
static const char *check_name(const char *s)
{
    if (s == NULL || *s == '\0')
        return "must not be empty";
    if (strlen(s) > 128)
        return "is longer than 128 bytes";
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == 0x7f)
            return "must not contain spaces or control characters";
    return NULL;
}

static const char *check_sha256_hex(const char *s)
{
    size_t n = strlen(s);
    if (n != 64)
        return "expected the SHA-256 of the key as 64 hex digits (store the hash, not the key)";
    for (size_t i = 0; i < n; i++)
        if (hexval(s[i]) < 0)
            return "expected the SHA-256 of the key as 64 hex digits (store the hash, not the key)";
    return NULL;
}

static const char *check_host(const char *s)
{
    if (*s == '\0')
        return "must not be empty";
    for (; *s; s++)
        if ((unsigned char)*s <= ' ' || *s == '/' || *s == '@')
            return "expected a host name, not a URL";
    return NULL;
}

static bool target_known(const char *t)
{
    for (const char *const *n = ap_prep_targets(); *n != NULL; n++)
        if (strcmp(*n, t) == 0)
            return true;
    return false;
}

/* "default, anthropic, ..." for messages. */
static void target_list(char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    for (const char *const *n = ap_prep_targets(); *n != NULL && len < cap; n++) {
        int w = snprintf(buf + len, cap - len, "%s%s", len ? ", " : "", *n);
        if (w > 0)
            len += (size_t)w;
    }
}

/* ---- applying one setting ----------------------------------------------------------------- */

static uint64_t kind_limit(enum kind k)
{
    switch (k) {
    case K_SIZE:
        return SIZE_MAX;
    case K_INT:
        return INT_MAX;
    case K_LONG:
        return LONG_MAX;
    case K_U8:
        return UINT8_MAX;
    case K_U32:
        return UINT32_MAX;
    default:
        return UINT64_MAX;
    }
}

/* Replace the status list s with items: whole numbers in [s->min, s->max], repeats dropped. */
static ap_status apply_statuses(struct ld *ld, const struct setting *s, char *const *items,
                                size_t n, const struct src *at)
{
    int *field = (int *)((char *)ld->cfg + s->off);
    size_t *count = (size_t *)((char *)ld->cfg + s->off_n);
    int v[AP_RETRY_MAX_STATUS];
    size_t k = 0;
    char path[96];
    for (size_t i = 0; i < n; i++) {
        uint64_t u;
        const char *why = parse_uint(items[i], &u);
        char range[64];
        if (why == NULL && (u < s->min || u > s->max)) {
            snprintf(range, sizeof(range), "expected an HTTP status from %llu to %llu",
                     (unsigned long long)s->min, (unsigned long long)s->max);
            why = range;
        }
        if (why != NULL) {
            struct src item = *at;
            if (!at->env)
                item.label = pathf(path, sizeof(path), "%s[%zu]", at->label, i);
            return at->env ? fail(ld, &item, "entry %zu %s", i + 1, why)
                           : fail(ld, &item, "%s", why);
        }
        bool seen = false;
        for (size_t j = 0; j < k; j++)
            seen = seen || v[j] == (int)u;
        if (seen)
            continue;
        if (k == AP_RETRY_MAX_STATUS)
            return fail(ld, at, "at most %d statuses", AP_RETRY_MAX_STATUS);
        v[k++] = (int)u;
    }
    memcpy(field, v, k * sizeof(int));
    *count = k;
    return AP_OK;
}

/* Replace the list setting s with items (validated; hashes lowercased). */
static ap_status apply_list(struct ld *ld, const struct setting *s, char *const *items, size_t n,
                            const struct src *at)
{
    char ***slot = (char ***)((char *)ld->cfg + s->off);
    size_t *count = (size_t *)((char *)ld->cfg + s->off_n);
    char path[96];
    if (s->kind == K_STATUSES)
        return apply_statuses(ld, s, items, n, at);
    for (size_t i = 0; i < n; i++) {
        const char *why = s->kind == K_HASHES ? check_sha256_hex(items[i]) : check_host(items[i]);
        if (why != NULL) {
            struct src item = *at;
            if (!at->env)
                item.label = pathf(path, sizeof(path), "%s[%zu]", at->label, i);
            return at->env ? fail(ld, &item, "entry %zu %s", i + 1, why)
                           : fail(ld, &item, "%s", why);
        }
    }
    /* Copy first: items may point into the list being replaced (env_list appending). */
    char **fresh = n ? ap__xcalloc(n, sizeof(char *)) : NULL;
    for (size_t i = 0; i < n; i++) {
        fresh[i] = xstrdup(items[i]);
        if (s->kind == K_HASHES)
            for (char *c = fresh[i]; *c; c++)
                *c = (char)tolower((unsigned char)*c);
    }
    for (size_t i = 0; i < *count; i++)
        free((*slot)[i]);
    free(*slot);
    *slot = fresh;
    *count = n;
    return AP_OK;
}

/* Parse text as setting s and store it in ld->cfg. */
static ap_status apply(struct ld *ld, const struct setting *s, const char *text,
                       const struct src *at)
{
    void *field = (char *)ld->cfg + s->off;
    const char *why = NULL;
    uint64_t u = 0;
    double d = 0;
    bool b = false;

    switch (s->kind) {
    case K_LISTEN:
        if ((why = check_listen(text)) != NULL)
            return fail(ld, at, "%s", why);
        set_str(field, text);
        return AP_OK;
    case K_MODEL:
        if ((why = check_name(text)) != NULL)
            return fail(ld, at, "%s", why);
        set_str(field, text);
        return AP_OK;
    case K_STR:
        set_str(field, text);
        return AP_OK;
    case K_STORE:
        if ((why = check_store_url(text)) != NULL)
            return fail(ld, at, "%s", why);
        set_str(field, text);
        return AP_OK;
    case K_SIZE:
    case K_INT:
    case K_LONG:
    case K_U8:
    case K_U32:
    case K_U64: {
        uint64_t lim = s->max ? s->max : kind_limit(s->kind);
        if ((why = parse_uint(text, &u)) != NULL)
            return fail(ld, at, "%s", why);
        if (u < s->min)
            return fail(ld, at, "must be at least %llu", (unsigned long long)s->min);
        if (u > lim)
            return fail(ld, at, "must be at most %llu", (unsigned long long)lim);
        switch (s->kind) {
        case K_SIZE:
            *(size_t *)field = (size_t)u;
            break;
        case K_INT:
            *(int *)field = (int)u;
            break;
        case K_LONG:
            *(long *)field = (long)u;
            break;
        case K_U8:
            *(uint8_t *)field = (uint8_t)u;
            break;
        case K_U32:
            *(uint32_t *)field = (uint32_t)u;
            break;
        default:
            *(uint64_t *)field = u;
            break;
        }
        return AP_OK;
    }
    case K_RATE:
        if ((why = parse_real(text, &d)) != NULL)
            return fail(ld, at, "%s", why);
        *(double *)field = d;
        return AP_OK;
    case K_BOOL:
        if ((why = parse_bool(text, &b)) != NULL)
            return fail(ld, at, "%s", why);
        *(bool *)field = b;
        return AP_OK;
    case K_ENCODING:
        if (strcasecmp(text, "jpeg") == 0 || strcasecmp(text, "jpg") == 0)
            *(ap_encoding *)field = AP_ENC_JPEG;
        else if (strcasecmp(text, "png") == 0)
            *(ap_encoding *)field = AP_ENC_PNG;
        else if (strcasecmp(text, "webp") == 0)
            *(ap_encoding *)field = AP_ENC_WEBP;
        else
            return fail(ld, at, "unknown value \"%.32s\" (expected jpeg, png or webp)", text);
        return AP_OK;
    case K_COLOR: {
        const char *h = text[0] == '#' ? text + 1 : text;
        uint8_t *rgb = field;
        if (strlen(h) != 6)
            return fail(ld, at, "expected a colour as #rrggbb");
        for (int i = 0; i < 6; i++)
            if (hexval(h[i]) < 0)
                return fail(ld, at, "expected a colour as #rrggbb");
        for (int i = 0; i < 3; i++)
            rgb[i] = (uint8_t)(hexval(h[2 * i]) * 16 + hexval(h[2 * i + 1]));
        return AP_OK;
    }
    case K_FRACTION:
        if ((why = parse_real(text, &d)) != NULL)
            return fail(ld, at, "%s", why);
        if (d > 1)
            return fail(ld, at, "must be from 0 to 1");
        *(double *)field = d;
        return AP_OK;
    case K_HASHES:
    case K_HOSTS:
    case K_STATUSES:
        break; /* lists go through apply_list() */
    }
    return ap_error_set(ld->err, AP_EINTERNAL, "config: setting \"%s\" has no parser", s->key);
}

/* ---- defaults ------------------------------------------------------------------------------ */

static void defaults(ap_config *c)
{
    c->listen = xstrdup(DEFAULT_LISTEN);
    c->max_body_bytes = (size_t)64 << 20;
    c->workers = 0;
    c->default_model = xstrdup("local");
    ap_prep_opts_init(&c->prep);
    c->ocr_max_edge = 4000;
    c->fetch_timeout_ms = 10000;
    c->fetch_max_bytes = 0; /* = prep.max_input_bytes, filled at the end */
    ap_retry_policy_init(&c->retry);
    ap_breaker_opts_init(&c->breaker);
}

/* ---- providers, models, tasks from the file ------------------------------------------------ */

static const struct builtin *builtin_for_type(ap_provider_type t)
{
    for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++)
        if (builtins[i].type == t)
            return &builtins[i];
    return NULL;
}

static const ap_provider_conf *find_provider(const ap_config *c, const char *name)
{
    for (size_t i = 0; i < c->n_providers; i++)
        if (strcmp(c->providers[i].name, name) == 0)
            return &c->providers[i];
    return NULL;
}

/* A price or other non-negative number from the file. */
static ap_status file_real(struct ld *ld, const char *text, const char *path, double *out)
{
    struct src at = {path, false};
    const char *why = parse_real(text, out);
    return why ? fail(ld, &at, "%s", why) : AP_OK;
}

/*
 * The defaults every provider starts from, declared or zero-config. Only servers the operator
 * runs are trusted with restricted data by default; the hosted APIs never are (load_provider()).
 */
static void provider_init(ap_provider_conf *p, const char *name, ap_provider_type type)
{
    memset(p, 0, sizeof(*p));
    p->name = xstrdup(name);
    p->type = type;
    p->connect_timeout_ms = DEFAULT_CONNECT_TIMEOUT_MS;
    p->timeout_ms = DEFAULT_TIMEOUT_MS;
    p->self_hosted = type == AP_PROVIDER_OPENAI_COMPAT || type == AP_PROVIDER_LOCAL;
    p->queue_max = DEFAULT_QUEUE;
    p->queue_timeout_ms = DEFAULT_QUEUE_TIMEOUT_MS;
}

/* A whole number in [min, max] from the file into *out. */
static ap_status file_uint(struct ld *ld, const char *text, const char *path, uint64_t min,
                           uint64_t max, uint64_t *out)
{
    uint64_t u;
    const char *why = parse_uint(text, &u);
    struct src at = {path, false};
    if (why != NULL)
        return fail(ld, &at, "%s", why);
    if (u < min)
        return fail(ld, &at, "must be at least %llu", (unsigned long long)min);
    if (u > max)
        return fail(ld, &at, "must be at most %llu", (unsigned long long)max);
    *out = u;
    return AP_OK;
}

/* providers[i].limits: every key optional, 0 = no limit (the queue's timeout excepted). */
static ap_status load_limits(struct ld *ld, size_t i, const struct raw_limits *r,
                             ap_provider_conf *p)
{
    char path[96];
    uint64_t u;
    ap_status rc;

    if (r->max_in_flight != NULL) {
        pathf(path, sizeof(path), "providers[%zu].limits.max_in_flight", i);
        if ((rc = file_uint(ld, r->max_in_flight, path, 0, LIMIT_COUNT_MAX, &u)) != AP_OK)
            return rc;
        p->max_in_flight = (int)u;
    }
    if (r->rpm != NULL &&
        (rc = file_real(ld, r->rpm, pathf(path, sizeof(path), "providers[%zu].limits.rpm", i),
                        &p->rpm)) != AP_OK)
        return rc;
    if (r->tpm != NULL &&
        (rc = file_real(ld, r->tpm, pathf(path, sizeof(path), "providers[%zu].limits.tpm", i),
                        &p->tpm)) != AP_OK)
        return rc;
    if (r->queue != NULL) {
        pathf(path, sizeof(path), "providers[%zu].limits.queue", i);
        if ((rc = file_uint(ld, r->queue, path, 0, LIMIT_COUNT_MAX, &u)) != AP_OK)
            return rc;
        p->queue_max = (int)u;
    }
    if (r->queue_timeout_ms != NULL) {
        pathf(path, sizeof(path), "providers[%zu].limits.queue_timeout_ms", i);
        if ((rc = file_uint(ld, r->queue_timeout_ms, path, 1, MS_MAX, &u)) != AP_OK)
            return rc;
        p->queue_timeout_ms = (long)u;
    }
    return AP_OK;
}

/* A positive whole number of milliseconds from the file into *out. */
static ap_status file_ms(struct ld *ld, const char *text, const char *path, long *out)
{
    uint64_t u;
    const char *why = parse_uint(text, &u);
    struct src at = {path, false};
    if (why != NULL)
        return fail(ld, &at, "%s", why);
    if (u < 1 || u > (uint64_t)LONG_MAX)
        return fail(ld, &at, "must be at least 1");
    *out = (long)u;
    return AP_OK;
}

static ap_status load_provider(struct ld *ld, size_t i, const struct raw_provider *r)
{
    ap_config *c = ld->cfg;
    ap_provider_conf *p = &c->providers[c->n_providers];
    char path[96];
    struct src at = {path, false};
    const char *why;
    ap_status rc;

    pathf(path, sizeof(path), "providers[%zu].name", i);
    if ((why = check_name(r->name)) != NULL)
        return fail(ld, &at, "%s", why);
    for (size_t j = 0; j < c->n_providers; j++)
        if (strcmp(c->providers[j].name, r->name) == 0)
            return fail(ld, &at, "duplicate provider name \"%s\" (also providers[%zu])", r->name,
                        j);
    pathf(path, sizeof(path), "providers[%zu].type", i);
    size_t t = 0;
    while (t < sizeof(type_names) / sizeof(type_names[0]) &&
           (r->type == NULL || strcmp(r->type, type_names[t]) != 0))
        t++;
    if (t == sizeof(type_names) / sizeof(type_names[0]))
        return fail(ld, &at,
                    "unknown value \"%.32s\" (expected openai, anthropic, gemini, "
                    "openai-compatible or local)",
                    r->type ? r->type : "");
    ap_provider_type type = (ap_provider_type)t;
    if (strcmp(r->name, "local") == 0 && type != AP_PROVIDER_LOCAL) {
        pathf(path, sizeof(path), "providers[%zu].name", i);
        return fail(ld, &at, "\"local\" is the offline provider's name; its type must be local");
    }

    /* The entry is ours from here: anything allocated is freed with the config. */
    provider_init(p, r->name, type);
    c->n_providers++;

    const struct builtin *b = builtin_for_type(type);
    if (r->base_url != NULL) {
        pathf(path, sizeof(path), "providers[%zu].base_url", i);
        if (type == AP_PROVIDER_LOCAL)
            return fail(ld, &at, "the local provider takes no base_url");
        if ((why = check_url(r->base_url)) != NULL)
            return fail(ld, &at, "%s", why);
        p->base_url = xstrdup(r->base_url);
    } else if (type == AP_PROVIDER_OPENAI_COMPAT) {
        pathf(path, sizeof(path), "providers[%zu].base_url", i);
        return fail(ld, &at, "missing (required for openai-compatible providers)");
    }
    /* Types with a built-in default get it (or its *_BASE_URL variable) in finish_providers. */

    if (r->api_key_env != NULL) {
        pathf(path, sizeof(path), "providers[%zu].api_key_env", i);
        if (type == AP_PROVIDER_LOCAL)
            return fail(ld, &at, "the local provider takes no api_key_env");
        if (!is_env_name(r->api_key_env))
            return fail(ld, &at,
                        "not a variable name (name the variable that holds the key, not the key)");
        p->api_key_env = xstrdup(r->api_key_env);
    } else if (b != NULL) {
        p->api_key_env = xstrdup(b->key_env);
    }

    if (r->connect_timeout_ms != NULL &&
        (rc = file_ms(ld, r->connect_timeout_ms,
                      pathf(path, sizeof(path), "providers[%zu].connect_timeout_ms", i),
                      &p->connect_timeout_ms)) != AP_OK)
        return rc;
    if (r->timeout_ms != NULL &&
        (rc = file_ms(ld, r->timeout_ms, pathf(path, sizeof(path), "providers[%zu].timeout_ms", i),
                      &p->timeout_ms)) != AP_OK)
        return rc;

    if (r->self_hosted != NULL) {
        bool sh;
        pathf(path, sizeof(path), "providers[%zu].self_hosted", i);
        if ((why = parse_bool(r->self_hosted, &sh)) != NULL)
            return fail(ld, &at, "%s", why);
        /* A changed base_url may point at a proxy in-house, but the flag cannot prove where the
         * traffic ends up: restricted data goes only to servers of the self-hosted types. */
        if (sh && b != NULL)
            return fail(ld, &at,
                        "%s providers cannot be self-hosted (restricted data may reach only "
                        "openai-compatible and local providers)",
                        type_names[type]);
        p->self_hosted = sh;
    }
    if (r->limits != NULL && (rc = load_limits(ld, i, r->limits, p)) != AP_OK)
        return rc;
    return AP_OK;
}

static ap_status load_patch(struct ld *ld, size_t i, const struct raw_patch *r, ap_model_conf *m)
{
    char path[96];
    struct src at = {path, false};
    const char *why;
    uint64_t u;
    double d;

    m->has_token_patch = true;
    m->token_patch = ap_tokens_generic_default();
    m->token_patch.extra_tokens = 0;
    pathf(path, sizeof(path), "models[%zu].token_patch.patch_px", i);
    if ((why = parse_uint(r->patch_px ? r->patch_px : "", &u)) != NULL)
        return fail(ld, &at, "%s", why);
    if (u < 1 || u > 65535)
        return fail(ld, &at, "must be from 1 to 65535");
    m->token_patch.patch_px = (uint32_t)u;
    if (r->max_pixels != NULL) {
        pathf(path, sizeof(path), "models[%zu].token_patch.max_pixels", i);
        if ((why = parse_uint(r->max_pixels, &u)) != NULL)
            return fail(ld, &at, "%s", why);
        m->token_patch.max_pixels = u;
    }
    pathf(path, sizeof(path), "models[%zu].token_patch.tokens_per_patch", i);
    if ((why = parse_real(r->tokens_per_patch ? r->tokens_per_patch : "", &d)) != NULL)
        return fail(ld, &at, "%s", why);
    if (!(d > 0))
        return fail(ld, &at, "must be greater than 0");
    m->token_patch.tokens_per_patch = d;
    if (r->extra_tokens != NULL) {
        pathf(path, sizeof(path), "models[%zu].token_patch.extra_tokens", i);
        if ((why = parse_uint(r->extra_tokens, &u)) != NULL)
            return fail(ld, &at, "%s", why);
        if (u > UINT32_MAX)
            return fail(ld, &at, "must be at most %u", UINT32_MAX);
        m->token_patch.extra_tokens = (uint32_t)u;
    }
    return AP_OK;
}

/*
 * A fallbacks list from the file into *out and *n_out (the names are checked against the routes
 * once every provider is known: check_fallbacks()). path names the list for messages.
 */
static ap_status copy_fallbacks(struct ld *ld, const char *path, char *const *items, unsigned n,
                                char ***out, size_t *n_out)
{
    struct src at = {path, false};
    if (n > AP_CONFIG_MAX_FALLBACKS)
        return fail(ld, &at, "at most %d steps", AP_CONFIG_MAX_FALLBACKS);
    if (n == 0)
        return AP_OK;
    *out = ap__xcalloc(n, sizeof(char *));
    for (unsigned j = 0; j < n; j++)
        (*out)[j] = xstrdup(items[j] ? items[j] : "");
    *n_out = n;
    return AP_OK;
}

/*
 * Check models[i].deployments (or, without them, models[i].provider): names, weights, repeats,
 * and that a `provider` given beside them is the first one's. Nothing is allocated.
 */
static ap_status check_deployments(struct ld *ld, size_t i, const struct raw_model *r)
{
    char path[128];
    struct src at = {path, false};
    const char *why;
    const char *def_up = r->upstream ? r->upstream : r->name;

    if (r->deployments_count == 0) {
        pathf(path, sizeof(path), "models[%zu].provider", i);
        if (r->provider == NULL)
            return fail(ld, &at, "missing (required without deployments)");
        if ((why = check_name(r->provider)) != NULL)
            return fail(ld, &at, "%s", why);
        return AP_OK;
    }
    if (r->deployments_count > AP_MAX_DEPLOYMENTS) {
        pathf(path, sizeof(path), "models[%zu].deployments", i);
        return fail(ld, &at, "at most %d deployments", AP_MAX_DEPLOYMENTS);
    }
    for (unsigned j = 0; j < r->deployments_count; j++) {
        const struct raw_deployment *d = &r->deployments[j];
        pathf(path, sizeof(path), "models[%zu].deployments[%u].provider", i, j);
        if ((why = check_name(d->provider)) != NULL)
            return fail(ld, &at, "%s", why);
        /* Whether the provider exists is known once the built-ins are in: check_references(). */
        if (d->upstream != NULL) {
            pathf(path, sizeof(path), "models[%zu].deployments[%u].upstream", i, j);
            if ((why = check_name(d->upstream)) != NULL)
                return fail(ld, &at, "%s", why);
        }
        if (d->weight != NULL) {
            double w;
            pathf(path, sizeof(path), "models[%zu].deployments[%u].weight", i, j);
            if ((why = parse_real(d->weight, &w)) != NULL)
                return fail(ld, &at, "%s", why);
            if (!(w > 0))
                return fail(ld, &at, "must be greater than 0");
        }
        /* Two entries for one provider/upstream would share a breaker and double its weight. */
        const char *up = d->upstream ? d->upstream : def_up;
        for (unsigned k = 0; k < j; k++) {
            const struct raw_deployment *e = &r->deployments[k];
            if (strcmp(e->provider, d->provider) == 0 &&
                strcmp(e->upstream ? e->upstream : def_up, up) == 0) {
                pathf(path, sizeof(path), "models[%zu].deployments[%u]", i, j);
                return fail(ld, &at, "\"%s/%.64s\" is listed twice (also deployments[%u])",
                            d->provider, up, k);
            }
        }
    }
    if (r->provider != NULL && strcmp(r->provider, r->deployments[0].provider) != 0) {
        pathf(path, sizeof(path), "models[%zu].provider", i);
        return fail(ld, &at,
                    "with deployments, leave provider out (or name the first deployment's, "
                    "\"%s\")",
                    r->deployments[0].provider);
    }
    return AP_OK;
}

/* Fill m->deployments from r (checked by check_deployments()): always at least one. */
static void fill_deployments(const struct raw_model *r, ap_model_conf *m)
{
    const char *def_up = r->upstream ? r->upstream : r->name;
    size_t n = r->deployments_count ? r->deployments_count : 1;
    m->deployments = ap__xcalloc(n, sizeof(*m->deployments));
    m->n_deployments = n;
    if (r->deployments_count == 0) {
        m->deployments[0].provider = xstrdup(r->provider);
        m->deployments[0].upstream = xstrdup(def_up);
        m->deployments[0].weight = 1;
        return;
    }
    for (size_t j = 0; j < n; j++) {
        const struct raw_deployment *d = &r->deployments[j];
        ap_deployment_conf *dc = &m->deployments[j];
        dc->provider = xstrdup(d->provider);
        dc->upstream = xstrdup(d->upstream ? d->upstream : def_up);
        dc->weight = 1;
        if (d->weight != NULL && AP_NEVER(parse_real(d->weight, &dc->weight) != NULL))
            dc->weight = 1; /* checked above */
    }
}

static ap_status load_model(struct ld *ld, size_t i, const struct raw_model *r)
{
    ap_config *c = ld->cfg;
    ap_model_conf *m = &c->models[c->n_models];
    char path[96];
    struct src at = {path, false};
    const char *why;
    ap_status rc;

    pathf(path, sizeof(path), "models[%zu].name", i);
    if ((why = check_name(r->name)) != NULL)
        return fail(ld, &at, "%s", why);
    if (strcmp(r->name, AP_REVIEW_STEP) == 0)
        return fail(ld, &at, "\"" AP_REVIEW_STEP "\" is reserved for the human review step");
    for (size_t j = 0; j < c->n_models; j++)
        if (strcmp(c->models[j].name, r->name) == 0)
            return fail(ld, &at, "duplicate model name \"%s\" (also models[%zu])", r->name, j);
    if ((rc = check_deployments(ld, i, r)) != AP_OK)
        return rc;
    if (r->upstream != NULL) {
        pathf(path, sizeof(path), "models[%zu].upstream", i);
        if ((why = check_name(r->upstream)) != NULL)
            return fail(ld, &at, "%s", why);
    }
    if (r->target != NULL && !target_known(r->target)) {
        char list[160];
        target_list(list, sizeof(list));
        pathf(path, sizeof(path), "models[%zu].target", i);
        return fail(ld, &at, "unknown target \"%.32s\" (expected %s)", r->target, list);
    }

    memset(m, 0, sizeof(*m));
    m->name = xstrdup(r->name);
    fill_deployments(r, m);
    /* The first deployment stands for the model where one provider is wanted (targets). */
    m->provider = xstrdup(m->deployments[0].provider);
    m->upstream = xstrdup(m->deployments[0].upstream);
    m->token_model = xstrdup(r->token_model ? r->token_model : m->upstream);
    m->target = r->target ? xstrdup(r->target) : NULL; /* default by type: check_references() */
    m->usd_per_mtok_in = m->usd_per_mtok_out = -1;
    c->n_models++;
    if ((rc = copy_fallbacks(ld, pathf(path, sizeof(path), "models[%zu].fallbacks", i),
                             r->fallbacks, r->fallbacks_count, &m->fallbacks, &m->n_fallbacks)) !=
        AP_OK)
        return rc;

    if (r->usd_per_mtok_in != NULL &&
        (rc = file_real(ld, r->usd_per_mtok_in,
                        pathf(path, sizeof(path), "models[%zu].usd_per_mtok_in", i),
                        &m->usd_per_mtok_in)) != AP_OK)
        return rc;
    if (r->usd_per_mtok_out != NULL &&
        (rc = file_real(ld, r->usd_per_mtok_out,
                        pathf(path, sizeof(path), "models[%zu].usd_per_mtok_out", i),
                        &m->usd_per_mtok_out)) != AP_OK)
        return rc;
    if (r->token_patch != NULL && (rc = load_patch(ld, i, r->token_patch, m)) != AP_OK)
        return rc;
    return AP_OK;
}

static ap_status load_task(struct ld *ld, size_t i, const struct raw_task *r)
{
    ap_config *c = ld->cfg;
    ap_task_conf *t = &c->tasks[c->n_tasks];
    char path[96];
    struct src at = {path, false};
    const char *why;
    ap_status rc;

    pathf(path, sizeof(path), "tasks[%zu].name", i);
    if ((why = check_name(r->name)) != NULL)
        return fail(ld, &at, "%s", why);
    for (size_t j = 0; j < c->n_tasks; j++)
        if (strcmp(c->tasks[j].name, r->name) == 0)
            return fail(ld, &at, "duplicate task name \"%s\" (also tasks[%zu])", r->name, j);
    if (r->model != NULL) {
        pathf(path, sizeof(path), "tasks[%zu].model", i);
        if ((why = check_name(r->model)) != NULL)
            return fail(ld, &at, "%s", why);
    }
    pathf(path, sizeof(path), "tasks[%zu].prompt", i);
    if (r->prompt == NULL || r->prompt[0] == '\0')
        return fail(ld, &at, "must not be empty");

    memset(t, 0, sizeof(*t));
    t->name = xstrdup(r->name);
    t->model = r->model ? xstrdup(r->model) : NULL; /* default_model: check_references() */
    t->prompt = xstrdup(r->prompt);
    t->prompt_version = xstrdup(r->prompt_version ? r->prompt_version : "1");
    c->n_tasks++;
    if ((rc = copy_fallbacks(ld, pathf(path, sizeof(path), "tasks[%zu].fallbacks", i), r->fallbacks,
                             r->fallbacks_count, &t->fallbacks, &t->n_fallbacks)) != AP_OK)
        return rc;

    /* The checks on an answer: required fields only make sense in a JSON object. */
    if (r->required_count > TASK_MAX_REQUIRED) {
        pathf(path, sizeof(path), "tasks[%zu].required", i);
        return fail(ld, &at, "at most %d fields", TASK_MAX_REQUIRED);
    }
    for (unsigned j = 0; j < r->required_count; j++) {
        const char *f = r->required[j];
        pathf(path, sizeof(path), "tasks[%zu].required[%u]", i, j);
        if (f == NULL || f[0] == '\0')
            return fail(ld, &at, "must not be empty");
        if (strlen(f) > 128)
            return fail(ld, &at, "is longer than 128 bytes");
        for (unsigned k = 0; k < j; k++)
            if (strcmp(r->required[k], f) == 0)
                return fail(ld, &at, "\"%.64s\" is listed twice (also required[%u])", f, k);
    }
    t->json = r->required_count > 0;
    if (r->json != NULL) {
        bool j;
        pathf(path, sizeof(path), "tasks[%zu].json", i);
        if ((why = parse_bool(r->json, &j)) != NULL)
            return fail(ld, &at, "%s", why);
        if (!j && r->required_count > 0)
            return fail(ld, &at, "must be true when required fields are listed");
        t->json = j;
    }
    if (r->required_count > 0) {
        t->required = ap__xcalloc(r->required_count, sizeof(char *));
        for (unsigned j = 0; j < r->required_count; j++)
            t->required[j] = xstrdup(r->required[j]);
        t->n_required = r->required_count;
    }
    return AP_OK;
}

/* ---- clients and routes from the file ------------------------------------------------------- */

/* "key" + digits: the names the entries of the plain client_keys_sha256 list get. */
static bool is_plain_key_name(const char *s)
{
    if (strncmp(s, "key", 3) != 0 || s[3] == '\0')
        return false;
    for (s += 3; *s; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

static ap_status load_clients(struct ld *ld, const struct raw_client *r, size_t n)
{
    char path[96];
    struct src at = {path, false};
    const char *why;

    if (n == 0)
        return AP_OK;
    ld->client_names = ap__xcalloc(n, sizeof(char *));
    ld->client_hashes = ap__xcalloc(n, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        pathf(path, sizeof(path), "clients[%zu].name", i);
        if ((why = check_name(r[i].name)) != NULL)
            return fail(ld, &at, "%s", why);
        if (is_plain_key_name(r[i].name))
            return fail(ld, &at,
                        "\"%s\": names key1, key2, ... belong to the entries of "
                        "client_keys_sha256",
                        r[i].name);
        for (size_t j = 0; j < ld->n_clients; j++)
            if (strcmp(ld->client_names[j], r[i].name) == 0)
                return fail(ld, &at, "duplicate client name \"%s\" (also clients[%zu])", r[i].name,
                            j);
        /* The hash is never quoted back: a pasted key would be. */
        pathf(path, sizeof(path), "clients[%zu].key_sha256", i);
        if ((why = check_sha256_hex(r[i].key_sha256 ? r[i].key_sha256 : "")) != NULL)
            return fail(ld, &at, "%s", why);
        char *h = xstrdup(r[i].key_sha256);
        for (char *p = h; *p; p++)
            *p = (char)tolower((unsigned char)*p);
        for (size_t j = 0; j < ld->n_clients; j++) {
            if (strcmp(ld->client_hashes[j], h) == 0) {
                free(h);
                return fail(ld, &at, "the same key as clients[%zu]", j);
            }
        }
        ld->client_names[ld->n_clients] = xstrdup(r[i].name);
        ld->client_hashes[ld->n_clients] = h;
        ld->n_clients++;
    }
    return AP_OK;
}

/*
 * A list of names or words from the file into *out (NULL when empty): each non-empty, at most
 * 128 bytes (names: no spaces either), none twice, at most max of them.
 */
static ap_status copy_strs(struct ld *ld, const char *list_path, char *const *items, unsigned n,
                           unsigned max, bool names, char ***out, size_t *n_out)
{
    char path[160];
    struct src at = {path, false};
    const char *why;

    if (n > max) {
        at.label = list_path;
        return fail(ld, &at, "at most %u entries", max);
    }
    for (unsigned j = 0; j < n; j++) {
        const char *s = items[j] ? items[j] : "";
        pathf(path, sizeof(path), "%s[%u]", list_path, j);
        if (names && (why = check_name(s)) != NULL)
            return fail(ld, &at, "%s", why);
        if (!names && s[0] == '\0')
            return fail(ld, &at, "must not be empty");
        if (!names && strlen(s) > 128)
            return fail(ld, &at, "is longer than 128 bytes");
        for (unsigned k = 0; k < j; k++)
            if (strcmp(items[k], s) == 0)
                return fail(ld, &at, "\"%.64s\" is listed twice (also %s[%u])", s, list_path, k);
    }
    if (n == 0)
        return AP_OK;
    *out = ap__xcalloc(n, sizeof(char *));
    for (unsigned j = 0; j < n; j++)
        (*out)[j] = xstrdup(items[j]);
    *n_out = n;
    return AP_OK;
}

/* The classifier's prompt when the file gives none (config.h). */
static char *two_stage_prompt(char *const *classes, size_t n)
{
    static const char head[] = "Classify this image as exactly one of: ";
    static const char tail[] = ". Answer with the class name only.";
    size_t len = sizeof(head) + sizeof(tail);
    for (size_t i = 0; i < n; i++)
        len += strlen(classes[i]) + 2;
    char *p = ap__xmalloc(len);
    size_t k = (size_t)snprintf(p, len, "%s", head);
    for (size_t i = 0; i < n; i++)
        k += (size_t)snprintf(p + k, len - k, "%s%s", i ? ", " : "", classes[i]);
    snprintf(p + k, len - k, "%s", tail);
    return p;
}

static ap_status load_two_stage(struct ld *ld, size_t i, const struct raw_two_stage *r,
                                ap_route_rule *rr)
{
    char path[128];
    struct src at = {path, false};
    const char *why;
    ap_status rc;

    pathf(path, sizeof(path), "routes[%zu].two_stage.model", i);
    if ((why = check_name(r->model)) != NULL)
        return fail(ld, &at, "%s", why);
    if (r->target != NULL && !target_known(r->target)) {
        char list[160];
        target_list(list, sizeof(list));
        pathf(path, sizeof(path), "routes[%zu].two_stage.target", i);
        return fail(ld, &at, "unknown target \"%.32s\" (expected %s)", r->target, list);
    }
    if (r->prompt != NULL && r->prompt[0] == '\0') {
        pathf(path, sizeof(path), "routes[%zu].two_stage.prompt", i);
        return fail(ld, &at, "must not be empty (leave it out for the default)");
    }
    pathf(path, sizeof(path), "routes[%zu].two_stage.classes", i);
    if (r->classes_count < 2)
        return fail(ld, &at, "at least 2 classes are needed");
    pathf(path, sizeof(path), "routes[%zu].two_stage.valuable", i);
    if (r->valuable_count < 1)
        return fail(ld, &at, "at least 1 class must be valuable (else nothing gets the full run)");

    /* Ours from here: freed with the config. */
    ap_two_stage_conf *ts = ap__xcalloc(1, sizeof(*ts));
    rr->two_stage = ts;
    ts->model = xstrdup(r->model);
    ts->target = xstrdup(r->target ? r->target : "thumbnail");
    pathf(path, sizeof(path), "routes[%zu].two_stage.classes", i);
    if ((rc = copy_strs(ld, path, r->classes, r->classes_count, ROUTE_MAX_LIST, true, &ts->classes,
                        &ts->n_classes)) != AP_OK)
        return rc;
    pathf(path, sizeof(path), "routes[%zu].two_stage.valuable", i);
    if ((rc = copy_strs(ld, path, r->valuable, r->valuable_count, ROUTE_MAX_LIST, true,
                        &ts->valuable, &ts->n_valuable)) != AP_OK)
        return rc;
    for (size_t j = 0; j < ts->n_valuable; j++) {
        bool known = false;
        for (size_t k = 0; k < ts->n_classes && !known; k++)
            known = strcmp(ts->classes[k], ts->valuable[j]) == 0;
        if (!known) {
            pathf(path, sizeof(path), "routes[%zu].two_stage.valuable[%zu]", i, j);
            return fail(ld, &at, "\"%s\" is not one of the classes", ts->valuable[j]);
        }
    }
    ts->prompt = r->prompt ? xstrdup(r->prompt) : two_stage_prompt(ts->classes, ts->n_classes);
    return AP_OK;
}

/* One of a route's numeric conditions; absent = -1 (any). */
static ap_status route_limit(struct ld *ld, size_t i, const char *key, const char *text,
                             uint64_t max, long long *out)
{
    char path[96];
    uint64_t u;
    ap_status rc;
    *out = -1;
    if (text == NULL)
        return AP_OK;
    pathf(path, sizeof(path), "routes[%zu].%s", i, key);
    if ((rc = file_uint(ld, text, path, 0, max, &u)) != AP_OK)
        return rc;
    *out = (long long)u;
    return AP_OK;
}

/* min <= max when both are set; the max is blamed. */
static ap_status route_range(struct ld *ld, size_t i, const char *what, long long min,
                             long long max)
{
    char path[96];
    struct src at = {path, false};
    if (min < 0 || max < 0 || min <= max)
        return AP_OK;
    pathf(path, sizeof(path), "routes[%zu].max_%s", i, what);
    return fail(ld, &at, "must be at least min_%s (%lld)", what, min);
}

static ap_status load_route(struct ld *ld, size_t i, const struct raw_route *r)
{
    ap_config *c = ld->cfg;
    ap_route_rule *rr = &c->routes[c->n_routes];
    char path[96];
    struct src at = {path, false};
    const char *why;
    ap_status rc;
    long long v;

    pathf(path, sizeof(path), "routes[%zu].name", i);
    if ((why = check_name(r->name)) != NULL)
        return fail(ld, &at, "%s", why);
    for (size_t j = 0; j < c->n_routes; j++)
        if (strcmp(c->routes[j].name, r->name) == 0)
            return fail(ld, &at, "duplicate route name \"%s\" (also routes[%zu])", r->name, j);
    const struct {
        const char *key, *v;
    } names[] = {{"task", r->task}, {"model", r->model}, {"data_class", r->data_class}};
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        pathf(path, sizeof(path), "routes[%zu].%s", i, names[k].key);
        if (names[k].v != NULL && (why = check_name(names[k].v)) != NULL)
            return fail(ld, &at, "%s", why);
    }

    /* Ours from here: freed with the config. */
    memset(rr, 0, sizeof(*rr));
    rr->name = xstrdup(r->name);
    rr->task = r->task ? xstrdup(r->task) : NULL;
    rr->model = r->model ? xstrdup(r->model) : NULL;
    rr->data_class = r->data_class ? xstrdup(r->data_class) : NULL;
    rr->min_pixels = rr->max_pixels = rr->min_bytes = rr->max_bytes = -1;
    rr->min_images = rr->max_images = -1;
    c->n_routes++;

    if ((rc = copy_strs(ld, pathf(path, sizeof(path), "routes[%zu].keywords", i), r->keywords,
                        r->keywords_count, ROUTE_MAX_LIST, false, &rr->keywords,
                        &rr->n_keywords)) != AP_OK)
        return rc;
    if ((rc = copy_strs(ld, pathf(path, sizeof(path), "routes[%zu].clients", i), r->clients,
                        r->clients_count, ROUTE_MAX_LIST, true, &rr->clients, &rr->n_clients)) !=
        AP_OK)
        return rc;
    /* The whole chain: one more step than a fallbacks list, which follows a model. */
    if ((rc = copy_strs(ld, pathf(path, sizeof(path), "routes[%zu].models", i), r->models,
                        r->models_count, AP_CHAIN_MAX, true, &rr->models, &rr->n_models)) != AP_OK)
        return rc;

    if ((rc = route_limit(ld, i, "min_pixels", r->min_pixels, LLONG_MAX, &rr->min_pixels)) ||
        (rc = route_limit(ld, i, "max_pixels", r->max_pixels, LLONG_MAX, &rr->max_pixels)) ||
        (rc = route_limit(ld, i, "min_bytes", r->min_bytes, LLONG_MAX, &rr->min_bytes)) ||
        (rc = route_limit(ld, i, "max_bytes", r->max_bytes, LLONG_MAX, &rr->max_bytes)))
        return rc;
    if ((rc = route_limit(ld, i, "min_images", r->min_images, LIMIT_COUNT_MAX, &v)) != AP_OK)
        return rc;
    rr->min_images = (int)v;
    if ((rc = route_limit(ld, i, "max_images", r->max_images, LIMIT_COUNT_MAX, &v)) != AP_OK)
        return rc;
    rr->max_images = (int)v;
    if ((rc = route_range(ld, i, "pixels", rr->min_pixels, rr->max_pixels)) ||
        (rc = route_range(ld, i, "bytes", rr->min_bytes, rr->max_bytes)) ||
        (rc = route_range(ld, i, "images", rr->min_images, rr->max_images)))
        return rc;

    if (r->two_stage != NULL && (rc = load_two_stage(ld, i, r->two_stage, rr)) != AP_OK)
        return rc;
    if (rr->n_models == 0 && rr->two_stage == NULL) {
        pathf(path, sizeof(path), "routes[%zu]", i);
        return fail(ld, &at, "rule \"%s\" does nothing: give it models, two_stage or both",
                    rr->name);
    }
    return AP_OK;
}

static ap_status load_file(struct ld *ld, const struct raw_top *r)
{
    ap_config *c = ld->cfg;
    ap_status rc;

    for (size_t i = 0; i < N_SETTINGS; i++) {
        const struct setting *s = &settings[i];
        struct src at = {s->key, false};
        int sec = section_of(s);
        const struct raw_values *v = sec < 0 ? &r->v : r->section[sec];
        if (v == NULL)
            continue;
        if (is_list(s->kind) && (v->list[i] != NULL || ap__config_yindex_has(ld->ix, s->key)))
            rc = apply_list(ld, s, v->list[i], v->list[i] ? v->list_n[i] : 0, &at);
        else if (!is_list(s->kind) && v->scalar[i] != NULL)
            rc = apply(ld, s, v->scalar[i], &at);
        else
            continue;
        if (rc != AP_OK)
            return rc;
        ld->set[i] = true;
    }
    /* Room for the built-ins after the file's providers (finish_providers). */
    c->providers = ap__xcalloc(r->providers_count + 4, sizeof(*c->providers));
    for (size_t i = 0; i < r->providers_count; i++)
        if ((rc = load_provider(ld, i, &r->providers[i])) != AP_OK)
            return rc;
    ld->n_file_providers = c->n_providers;
    c->models = r->models_count ? ap__xcalloc(r->models_count, sizeof(*c->models)) : NULL;
    for (size_t i = 0; i < r->models_count; i++)
        if ((rc = load_model(ld, i, &r->models[i])) != AP_OK)
            return rc;
    c->tasks = r->tasks_count ? ap__xcalloc(r->tasks_count, sizeof(*c->tasks)) : NULL;
    for (size_t i = 0; i < r->tasks_count; i++)
        if ((rc = load_task(ld, i, &r->tasks[i])) != AP_OK)
            return rc;
    if ((rc = load_clients(ld, r->clients, r->clients_count)) != AP_OK)
        return rc;
    c->routes = r->routes_count ? ap__xcalloc(r->routes_count, sizeof(*c->routes)) : NULL;
    for (size_t i = 0; i < r->routes_count; i++)
        if ((rc = load_route(ld, i, &r->routes[i])) != AP_OK)
            return rc;
    return AP_OK;
}

/* ---- the environment ----------------------------------------------------------------------- */

static const char *env(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

/* Split a comma-separated value into trimmed, non-empty items (pointing into buf). */
static size_t split_commas(char *buf, char **items, size_t cap)
{
    size_t n = 0;
    for (char *s = buf; s != NULL && n < cap;) {
        char *comma = strchr(s, ',');
        if (comma)
            *comma = '\0';
        while (*s == ' ' || *s == '\t')
            s++;
        size_t l = strlen(s);
        while (l > 0 && (s[l - 1] == ' ' || s[l - 1] == '\t'))
            s[--l] = '\0';
        if (l > 0)
            items[n++] = s;
        s = comma ? comma + 1 : NULL;
    }
    return n;
}

/* Apply a comma list from variable var to list setting s (append: add to what is there). */
static ap_status env_list(struct ld *ld, const struct setting *s, const char *var,
                          const char *value, bool plaintext_keys, bool append)
{
    ap_status rc = AP_OK;
    size_t len = strlen(value);
    char *buf = ap__xmalloc(len + 1);
    size_t cap = len / 2 + 1; /* at most one item per two bytes ("a,b,c") */
    char **items = ap__xcalloc(cap, sizeof(char *));
    char **hexes = NULL;
    struct src at = {var, true};
    char ***slot = (char ***)((char *)ld->cfg + s->off);
    size_t *count = (size_t *)((char *)ld->cfg + s->off_n);

    memcpy(buf, value, len + 1);
    size_t n = split_commas(buf, items, cap);
    if (plaintext_keys) {
        /* APERTURE_CLIENT_KEYS holds the keys themselves: hash them, and never echo them. */
        hexes = ap__xcalloc(n ? n : 1, sizeof(char *));
        for (size_t i = 0; i < n; i++) {
            uint8_t d[AP_SHA256_LEN];
            hexes[i] = ap__xmalloc(65);
            if ((rc = ap_sha256((const uint8_t *)items[i], strlen(items[i]), d, ld->err)) != AP_OK)
                goto out;
            ap_sha256_hex(d, hexes[i]);
            items[i] = hexes[i];
        }
    }
    if (n == 0) {
        rc = fail(ld, &at, "no entries (expected a comma-separated list)");
        goto out;
    }
    if (append && *count > 0) {
        /* Keep what is there: validate the new ones, then extend. */
        char **all = ap__xcalloc(*count + n, sizeof(char *));
        for (size_t i = 0; i < *count; i++)
            all[i] = (*slot)[i];
        for (size_t i = 0; i < n; i++)
            all[*count + i] = items[i];
        rc = apply_list(ld, s, all, *count + n, &at);
        free(all);
    } else {
        rc = apply_list(ld, s, items, n, &at);
    }
out:
    if (hexes != NULL) {
        for (size_t i = 0; i < n; i++)
            free(hexes[i]);
        free(hexes);
    }
    /* The plaintext keys were in buf: wipe them before it goes back to the allocator. */
    volatile char *w = buf;
    for (size_t i = 0; i < len; i++)
        w[i] = 0;
    free(buf);
    free(items);
    return rc;
}

static ap_status load_env(struct ld *ld)
{
    ap_status rc;
    char var[64];
    const struct setting *hashes = NULL;
    bool hashes_set = false;

    /* MAX_IMAGE_SIZE_MB first, so APERTURE_MAX_IMAGE_BYTES (below) wins over it. */
    const char *mb = env("MAX_IMAGE_SIZE_MB");
    if (mb != NULL) {
        struct src at = {"MAX_IMAGE_SIZE_MB", true};
        double d;
        const char *why = parse_real(mb, &d);
        if (why != NULL)
            return fail(ld, &at, "%s", why);
        if (!(d > 0) || d * 1048576.0 >= (double)SIZE_MAX)
            return fail(ld, &at, "must be a positive number of MiB");
        ld->cfg->prep.max_input_bytes = (size_t)(d * 1048576.0);
    }
    for (size_t i = 0; i < N_SETTINGS; i++) {
        const struct setting *s = &settings[i];
        if (s->kind == K_HASHES)
            hashes = s;
        /* The aliases first, then the canonical name, which wins. */
        for (size_t a = 0; a <= sizeof(env_aliases) / sizeof(env_aliases[0]); a++) {
            if (a < sizeof(env_aliases) / sizeof(env_aliases[0])) {
                if (strcmp(env_aliases[a].key, s->key) != 0)
                    continue;
                snprintf(var, sizeof(var), "%s", env_aliases[a].var);
            } else {
                env_var_name(s, var, sizeof(var));
            }
            const char *v = env(var);
            if (v == NULL)
                continue;
            if (s->kind == K_STATUSES && strcasecmp(v, "none") == 0) {
                struct src at = {var, true};
                rc = apply_list(ld, s, NULL, 0, &at); /* an empty variable means unset */
            } else if (is_list(s->kind)) {
                rc = env_list(ld, s, var, v, false, false);
                hashes_set = hashes_set || s->kind == K_HASHES;
            } else {
                struct src at = {var, true};
                rc = apply(ld, s, v, &at);
                if (rc == AP_OK && s->kind == K_MODEL)
                    ld->default_model_env = "APERTURE_DEFAULT_MODEL";
            }
            if (rc != AP_OK)
                return rc;
            ld->set[i] = true;
            snprintf(ld->env_of[i], sizeof(ld->env_of[i]), "%s", var);
        }
    }
    const char *keys = env("APERTURE_CLIENT_KEYS");
    if (keys != NULL && AP_ALWAYS(hashes != NULL) &&
        (rc = env_list(ld, hashes, "APERTURE_CLIENT_KEYS", keys, true, hashes_set)) != AP_OK)
        return rc;
    return AP_OK;
}

/* ---- built-in providers, keys, references -------------------------------------------------- */

static bool is_prefix(const char *s, const char *p)
{
    return strncmp(s, p, strlen(p)) == 0;
}

/*
 * Add the zero-config providers the file did not declare, give providers of those types their
 * default base URL, and read every key variable. A provider the file declared whose variable
 * is unset is disabled with a warning; a built-in one just stays disabled.
 */
static ap_status finish_providers(struct ld *ld)
{
    ap_config *c = ld->cfg;
    for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++) {
        const struct builtin *b = &builtins[i];
        const char *url = env(b->url_env);
        const char *why;
        if (url != NULL && (why = check_url(url)) != NULL) {
            struct src at = {b->url_env, true};
            return fail(ld, &at, "%s", why);
        }
        if (find_provider(c, b->name) == NULL) {
            ap_provider_conf *p = &c->providers[c->n_providers++];
            provider_init(p, b->name, b->type);
            p->api_key_env = xstrdup(b->key_env);
        }
    }
    if (find_provider(c, "local") == NULL)
        provider_init(&c->providers[c->n_providers++], "local", AP_PROVIDER_LOCAL);
    for (size_t i = 0; i < c->n_providers; i++) {
        ap_provider_conf *p = &c->providers[i];
        const struct builtin *b = builtin_for_type(p->type);
        if (p->base_url == NULL && b != NULL)
            p->base_url = xstrdup(env(b->url_env) ? env(b->url_env) : b->url);
        if (p->base_url != NULL) {
            /* Providers append their paths ("/chat/completions"): no trailing slash. */
            size_t l = strlen(p->base_url);
            while (l > 0 && p->base_url[l - 1] == '/')
                p->base_url[--l] = '\0';
        }
        p->enabled = true;
        if (p->api_key_env != NULL) {
            const char *key = env(p->api_key_env);
            if (key != NULL) {
                p->api_key = xstrdup(key);
            } else {
                p->enabled = false;
                if (i < ld->n_file_providers)
                    warn(c, "provider \"%s\" is disabled: %s is not set", p->name, p->api_key_env);
            }
        }
    }
    return AP_OK;
}

enum route_res { R_OK, R_DISABLED, R_NO_PROVIDER, R_UNKNOWN };

/*
 * Find where name goes. On R_OK and R_DISABLED *prov is the provider (and *model the configured
 * model, if any); on R_NO_PROVIDER *want is the provider type the prefix asked for.
 */
static enum route_res route_find(const ap_config *c, const char *name, const ap_model_conf **model,
                                 const ap_provider_conf **prov, ap_provider_type *want)
{
    *model = NULL;
    *prov = NULL;
    for (size_t i = 0; i < c->n_models; i++) {
        const ap_model_conf *m = &c->models[i];
        if (strcmp(m->name, name) != 0)
            continue;
        /* The first enabled deployment; when none is, the first one (for the message). */
        *model = m;
        for (size_t j = 0; j < m->n_deployments; j++) {
            const ap_provider_conf *p = find_provider(c, m->deployments[j].provider);
            if (p != NULL && p->enabled) {
                *prov = p;
                return R_OK;
            }
        }
        *prov = find_provider(c, m->provider);
        if (AP_NEVER(*prov == NULL))
            return R_UNKNOWN; /* check_references() refuses such a config */
        return (*prov)->enabled ? R_OK : R_DISABLED;
    }
    if (strcmp(name, "local") == 0) {
        *prov = find_provider(c, "local");
        return *prov != NULL ? R_OK : R_UNKNOWN;
    }
    for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
        if (!is_prefix(name, prefixes[i].prefix))
            continue;
        *want = prefixes[i].type;
        for (size_t j = 0; j < c->n_providers; j++) {
            if (c->providers[j].type != *want)
                continue;
            if (c->providers[j].enabled) {
                *prov = &c->providers[j];
                return R_OK;
            }
            if (*prov == NULL)
                *prov = &c->providers[j];
        }
        return *prov != NULL ? R_DISABLED : R_NO_PROVIDER;
    }
    return R_UNKNOWN;
}

/* Why name does not route, in words (for the route error and the load-time checks). */
static void route_why(enum route_res res, const char *name, const ap_provider_conf *p,
                      ap_provider_type want, char *buf, size_t cap)
{
    switch (res) {
    case R_OK:
        buf[0] = '\0';
        return;
    case R_DISABLED:
        snprintf(buf, cap, "model \"%.48s\": provider \"%s\" is not enabled: set %s", name, p->name,
                 p->api_key_env ? p->api_key_env : "its key variable");
        return;
    case R_NO_PROVIDER:
        snprintf(buf, cap,
                 "model \"%.48s\": no %s provider is configured (add one under providers)", name,
                 ap_provider_type_name(want));
        return;
    case R_UNKNOWN:
        snprintf(buf, cap,
                 "no route for model \"%.48s\": add it under models, or start it with " PREFIX_HELP,
                 name);
        return;
    }
}

/*
 * A model name the config itself uses (default_model, a task's model) must route to something
 * that exists; a provider that is merely disabled is a warning.
 */
static ap_status check_route(struct ld *ld, const char *name, const struct src *at,
                             const char *what)
{
    const ap_model_conf *m;
    const ap_provider_conf *p;
    ap_provider_type want = AP_PROVIDER_LOCAL;
    char why[224];
    enum route_res res = route_find(ld->cfg, name, &m, &p, &want);
    if (res == R_OK)
        return AP_OK;
    route_why(res, name, p, want, why, sizeof(why));
    if (res == R_DISABLED) {
        warn(ld->cfg, "%s: %s", what, why);
        return AP_OK;
    }
    return fail(ld, at, "%s", why);
}

/*
 * A fallbacks list (path e.g. "models[2].fallbacks") or a route's models: names that route (a
 * disabled provider is a warning, as for a task's model, worded with what), "review" only
 * last, no repeats, not self (the model the list follows; NULL for a route's whole chain).
 */
static ap_status check_fallbacks(struct ld *ld, const char *list_path, char *const *fb, size_t n,
                                 const char *self, const char *self_what, const char *what)
{
    char path[128];
    struct src at = {path, false};
    const char *why;
    ap_status rc;
    for (size_t j = 0; j < n; j++) {
        pathf(path, sizeof(path), "%s[%zu]", list_path, j);
        if ((why = check_name(fb[j])) != NULL)
            return fail(ld, &at, "%s", why);
        for (size_t k = 0; k < j; k++)
            if (strcmp(fb[k], fb[j]) == 0)
                return fail(ld, &at, "\"%s\" is listed twice (also %s[%zu])", fb[j], list_path, k);
        if (strcmp(fb[j], AP_REVIEW_STEP) == 0) {
            if (j + 1 != n)
                return fail(ld, &at, "\"" AP_REVIEW_STEP "\" must be the last step");
            continue;
        }
        if (self != NULL && strcmp(fb[j], self) == 0)
            return fail(ld, &at, "\"%s\" is %s itself", fb[j], self_what);
        if ((rc = check_route(ld, fb[j], &at, what)) != AP_OK)
            return rc;
    }
    return AP_OK;
}

/* Where setting i was last set from, for a message about it. */
static struct src setting_src(const struct ld *ld, size_t i)
{
    if (ld->env_of[i][0] != '\0')
        return (struct src){ld->env_of[i], true};
    return (struct src){settings[i].key, false};
}

static size_t setting_index(const char *key)
{
    for (size_t i = 0; i < N_SETTINGS; i++)
        if (strcmp(settings[i].key, key) == 0)
            return i;
    AP_ASSERT(!"no such setting");
    return 0;
}

/* Settings that constrain each other. The one set explicitly is blamed (the cap, if both). */
static ap_status check_resilience(struct ld *ld)
{
    const ap_retry_policy *r = &ld->cfg->retry;
    if (r->cap_ms >= r->base_ms)
        return AP_OK;
    size_t cap = setting_index("retry.cap_ms"), base = setting_index("retry.base_ms");
    if (ld->set[cap] || !ld->set[base]) {
        struct src at = setting_src(ld, cap);
        return fail(ld, &at, "must be at least retry.base_ms (%ld)", r->base_ms);
    }
    struct src at = setting_src(ld, base);
    return fail(ld, &at, "must be at most retry.cap_ms (%ld)", r->cap_ms);
}

/* A route's references, once providers and clients are final: its models and classifier must
 * route (disabled is a warning, as for fallbacks), its clients must be named. */
static ap_status check_route_rule(struct ld *ld, size_t i)
{
    const ap_config *c = ld->cfg;
    const ap_route_rule *rr = &c->routes[i];
    char path[96], what[180];
    struct src at = {path, false};
    ap_status rc;

    snprintf(what, sizeof(what), "route \"%s\" models", rr->name);
    pathf(path, sizeof(path), "routes[%zu].models", i);
    if ((rc = check_fallbacks(ld, path, rr->models, rr->n_models, NULL, NULL, what)) != AP_OK)
        return rc;
    if (rr->two_stage != NULL) {
        snprintf(what, sizeof(what), "route \"%s\" two_stage", rr->name);
        pathf(path, sizeof(path), "routes[%zu].two_stage.model", i);
        if ((rc = check_route(ld, rr->two_stage->model, &at, what)) != AP_OK)
            return rc;
    }
    for (size_t j = 0; j < rr->n_clients; j++) {
        bool known = false;
        for (size_t k = 0; k < c->n_client_keys && !known; k++)
            known = strcmp(c->client_key_name[k], rr->clients[j]) == 0;
        if (known)
            continue;
        pathf(path, sizeof(path), "routes[%zu].clients[%zu]", i, j);
        if (is_plain_key_name(rr->clients[j]))
            return fail(ld, &at, "no client named \"%s\": client_keys_sha256 has %zu entries",
                        rr->clients[j], c->n_client_keys - ld->n_clients);
        return fail(ld, &at, "no client named \"%s\" (name it under clients)", rr->clients[j]);
    }
    return AP_OK;
}

/*
 * Put the file's named clients behind the plain client_keys_sha256 list (which the environment
 * may have replaced), and name the plain entries "key1", "key2", ... A named client whose hash
 * is also a plain entry would get two names: refused.
 */
static ap_status finish_clients(struct ld *ld)
{
    ap_config *c = ld->cfg;
    size_t np = c->n_client_keys, n = np + ld->n_clients;
    char path[96];
    struct src at = {path, false};

    for (size_t j = 0; j < ld->n_clients; j++) {
        for (size_t i = 0; i < np; i++) {
            if (strcmp(c->client_key_sha256[i], ld->client_hashes[j]) != 0)
                continue;
            pathf(path, sizeof(path), "clients[%zu].key_sha256", j);
            size_t ks = setting_index("client_keys_sha256");
            if (ld->env_of[ks][0] != '\0' || env("APERTURE_CLIENT_KEYS") != NULL)
                return fail(ld, &at, "the same key as client key %zu from the environment", i + 1);
            return fail(ld, &at, "the same key as client_keys_sha256[%zu]", i);
        }
    }
    char **h = ap__xcalloc(n ? n : 1, sizeof(char *));
    char **names = ap__xcalloc(n ? n : 1, sizeof(char *));
    for (size_t i = 0; i < np; i++) {
        char nm[32];
        snprintf(nm, sizeof(nm), "key%zu", i + 1);
        h[i] = c->client_key_sha256[i];
        names[i] = xstrdup(nm);
    }
    for (size_t j = 0; j < ld->n_clients; j++) {
        h[np + j] = ld->client_hashes[j];
        names[np + j] = ld->client_names[j];
        ld->client_hashes[j] = ld->client_names[j] = NULL; /* moved */
    }
    free(c->client_key_sha256);
    c->client_key_sha256 = h;
    c->client_key_name = names;
    c->n_client_keys = n;
    return AP_OK;
}

static ap_status check_references(struct ld *ld)
{
    ap_config *c = ld->cfg;
    char path[96];
    struct src at = {path, false};
    ap_status rc;

    for (size_t i = 0; i < c->n_models; i++) {
        ap_model_conf *m = &c->models[i];
        pathf(path, sizeof(path), "models[%zu].deployments", i);
        bool listed = ap__config_yindex_has(ld->ix, path);
        for (size_t j = 0; j < m->n_deployments; j++) {
            if (find_provider(c, m->deployments[j].provider) != NULL)
                continue;
            if (listed)
                pathf(path, sizeof(path), "models[%zu].deployments[%zu].provider", i, j);
            else
                pathf(path, sizeof(path), "models[%zu].provider", i);
            return fail(ld, &at, "no provider named \"%s\"", m->deployments[j].provider);
        }
        const ap_provider_conf *p = find_provider(c, m->provider);
        if (AP_NEVER(p == NULL))
            return ap_error_set(ld->err, AP_EINTERNAL, "config: model without provider");
        if (m->target == NULL)
            m->target = xstrdup(ap_provider_default_target(p->type));
    }
    struct src dm = {ld->default_model_env ? ld->default_model_env : "default_model",
                     ld->default_model_env != NULL};
    if ((rc = check_route(ld, c->default_model, &dm, "default_model")) != AP_OK)
        return rc;
    for (size_t i = 0; i < c->n_tasks; i++) {
        ap_task_conf *t = &c->tasks[i];
        char what[160], fb_what[180];
        snprintf(what, sizeof(what), "task \"%s\"", t->name);
        snprintf(fb_what, sizeof(fb_what), "%s fallbacks", what);
        if (t->model == NULL) {
            t->model = xstrdup(c->default_model); /* checked above */
        } else {
            pathf(path, sizeof(path), "tasks[%zu].model", i);
            if ((rc = check_route(ld, t->model, &at, what)) != AP_OK)
                return rc;
        }
        pathf(path, sizeof(path), "tasks[%zu].fallbacks", i);
        if ((rc = check_fallbacks(ld, path, t->fallbacks, t->n_fallbacks, t->model,
                                  "the task's model", fb_what)) != AP_OK)
            return rc;
    }
    for (size_t i = 0; i < c->n_models; i++) {
        const ap_model_conf *m = &c->models[i];
        char what[180];
        snprintf(what, sizeof(what), "model \"%s\" fallbacks", m->name);
        pathf(path, sizeof(path), "models[%zu].fallbacks", i);
        if ((rc = check_fallbacks(ld, path, m->fallbacks, m->n_fallbacks, m->name, "the model",
                                  what)) != AP_OK)
            return rc;
    }
    for (size_t i = 0; i < c->n_routes; i++)
        if ((rc = check_route_rule(ld, i)) != AP_OK)
            return rc;
    return check_resilience(ld);
}

/* ---- public API ---------------------------------------------------------------------------- */

static void free_list(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void ap_config_free(ap_config *c)
{
    if (c == NULL)
        return;
    free(c->listen);
    for (size_t i = 0; i < c->n_client_keys; i++)
        free(c->client_key_sha256[i]);
    free(c->client_key_sha256);
    /* Names come with the merge (finish_clients()); a failed load may not have got there. */
    if (c->client_key_name != NULL)
        free_list(c->client_key_name, c->n_client_keys);
    for (size_t i = 0; i < c->n_providers; i++) {
        ap_provider_conf *p = &c->providers[i];
        if (p->api_key != NULL) {
            volatile char *w = p->api_key;
            for (size_t k = 0; w[k] != '\0'; k++)
                w[k] = 0;
        }
        free(p->api_key);
        free(p->name);
        free(p->base_url);
        free(p->api_key_env);
    }
    free(c->providers);
    for (size_t i = 0; i < c->n_models; i++) {
        free(c->models[i].name);
        free(c->models[i].provider);
        free(c->models[i].upstream);
        free(c->models[i].token_model);
        free(c->models[i].target);
        free_list(c->models[i].fallbacks, c->models[i].n_fallbacks);
        for (size_t j = 0; j < c->models[i].n_deployments; j++) {
            free(c->models[i].deployments[j].provider);
            free(c->models[i].deployments[j].upstream);
        }
        free(c->models[i].deployments);
    }
    free(c->models);
    for (size_t i = 0; i < c->n_tasks; i++) {
        free(c->tasks[i].name);
        free(c->tasks[i].model);
        free(c->tasks[i].prompt);
        free(c->tasks[i].prompt_version);
        free_list(c->tasks[i].fallbacks, c->tasks[i].n_fallbacks);
        free_list(c->tasks[i].required, c->tasks[i].n_required);
    }
    free(c->tasks);
    for (size_t i = 0; i < c->n_routes; i++) {
        ap_route_rule *r = &c->routes[i];
        free(r->name);
        free(r->task);
        free(r->model);
        free(r->data_class);
        free_list(r->keywords, r->n_keywords);
        free_list(r->clients, r->n_clients);
        free_list(r->models, r->n_models);
        if (r->two_stage != NULL) {
            free(r->two_stage->model);
            free(r->two_stage->target);
            free(r->two_stage->prompt);
            free_list(r->two_stage->classes, r->two_stage->n_classes);
            free_list(r->two_stage->valuable, r->two_stage->n_valuable);
            free(r->two_stage);
        }
    }
    free(c->routes);
    free(c->review_url);
    free(c->default_model);
    for (size_t i = 0; i < c->n_fetch_allow_hosts; i++)
        free(c->fetch_allow_hosts[i]);
    free(c->fetch_allow_hosts);
    free(c->log_file);
    for (size_t i = 0; i < c->n_warnings; i++)
        free(c->warnings[i]);
    free(c->warnings);
    free(c);
}

ap_status ap_config_load_buffer(const char *buf, size_t len, const char *name,
                                const char *argv_listen, ap_config **out, ap_error *err)
{
    ap_status rc = AP_OK;
    struct ap__yindex *ix = NULL;
    struct raw_top *raw = NULL;
    struct schema *sc = NULL;
    ap_config *c = NULL;
    struct ld ld;

    if (name == NULL)
        name = "config";
    if (len > CONFIG_MAX_BYTES)
        return ap_error_set(err, AP_ETOOLARGE, "%s: larger than %u bytes", name, CONFIG_MAX_BYTES);
    c = ap__xcalloc(1, sizeof(*c));
    defaults(c);
    memset(&ld, 0, sizeof(ld));
    ld.name = name;
    ld.cfg = c;
    ld.err = err;

    if (len > 0) {
        if ((rc = ap__config_yindex_build(buf, len, name, &ix, err)) != AP_OK)
            goto out;
        ld.ix = ix;
        sc = ap__xmalloc(sizeof(*sc));
        schema_init(sc);
        void *data = NULL;
        if ((rc = ap__config_cyaml_load(buf, len, name, ix, &sc->top, &data, err)) != AP_OK)
            goto out;
        raw = data;
    }
    if (raw != NULL) {
        if ((rc = load_file(&ld, raw)) != AP_OK)
            goto out;
    } else {
        c->providers = ap__xcalloc(4, sizeof(*c->providers));
    }
    if ((rc = load_env(&ld)) != AP_OK)
        goto out;
    if (argv_listen != NULL) {
        struct src at = {"--listen", true};
        if ((rc = apply(&ld, &settings[0], argv_listen, &at)) != AP_OK)
            goto out;
    }
    if ((rc = finish_providers(&ld)) != AP_OK)
        goto out;
    if ((rc = finish_clients(&ld)) != AP_OK)
        goto out;
    if ((rc = check_references(&ld)) != AP_OK)
        goto out;
    if (c->fetch_max_bytes == 0)
        c->fetch_max_bytes = c->prep.max_input_bytes;
    *out = c;
    c = NULL;
out:
    if (raw != NULL)
        ap__config_cyaml_free(&sc->top, raw);
    free(sc);
    ap__config_yindex_free(ix);
    ap_config_free(c);
    free_list(ld.client_names, ld.n_clients); /* what finish_clients() did not move */
    free_list(ld.client_hashes, ld.n_clients);
    return rc;
}

ap_status ap_config_load(const char *path, const char *argv_listen, ap_config **out, ap_error *err)
{
    if (path == NULL)
        path = env("APERTURE_CONFIG");
    if (path == NULL)
        return ap_config_load_buffer(NULL, 0, NULL, argv_listen, out, err);

    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return ap_error_set(err, AP_EIO, "%s: cannot open: %s", path, strerror(errno));
    char *buf = ap__xmalloc(CONFIG_MAX_BYTES + 1);
    size_t len = fread(buf, 1, CONFIG_MAX_BYTES + 1, f);
    bool bad = ferror(f) != 0;
    fclose(f);
    ap_status rc;
    if (bad)
        rc = ap_error_set(err, AP_EIO, "%s: read error", path);
    else if (len > CONFIG_MAX_BYTES)
        rc = ap_error_set(err, AP_ETOOLARGE, "%s: larger than %u bytes", path, CONFIG_MAX_BYTES);
    else
        rc = ap_config_load_buffer(buf, len, path, argv_listen, out, err);
    free(buf);
    return rc;
}

ap_status ap_config_route(const ap_config *cfg, const char *name, const ap_model_conf **model,
                          const ap_provider_conf **prov, ap_error *err)
{
    const ap_model_conf *m;
    const ap_provider_conf *p;
    ap_provider_type want = AP_PROVIDER_LOCAL;
    char why[AP_ERROR_MSG_MAX];

    if (cfg == NULL || name == NULL || name[0] == '\0')
        return ap_error_set(err, AP_EINVAL, "no model given");
    enum route_res res = route_find(cfg, name, &m, &p, &want);
    if (res != R_OK) {
        route_why(res, name, p, want, why, sizeof(why));
        return ap_error_set(err, AP_ENOTFOUND, "%s", why);
    }
    if (model != NULL)
        *model = m;
    if (prov != NULL)
        *prov = p;
    return AP_OK;
}

const ap_task_conf *ap_config_task(const ap_config *cfg, const char *name)
{
    if (cfg == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < cfg->n_tasks; i++)
        if (strcmp(cfg->tasks[i].name, name) == 0)
            return &cfg->tasks[i];
    return NULL;
}

/* One deployment of a chain step; its key is the breaker's, "provider/upstream" (cut to fit). */
static void dep_set(ap_chain_deployment *d, const ap_provider_conf *p, const char *upstream,
                    double weight)
{
    d->provider = p;
    d->upstream = upstream;
    d->weight = weight;
    snprintf(d->key, sizeof(d->key), "%s/%s", p->name, upstream);
}

/*
 * Append name to the chain unless it repeats a step or does not route now (every deployment's
 * provider disabled). A configured model's step gets its enabled deployments, in their order.
 */
static void chain_add(const ap_config *c, ap_chain *ch, const char *name)
{
    const ap_model_conf *m;
    const ap_provider_conf *p;
    ap_provider_type want = AP_PROVIDER_LOCAL;

    for (size_t i = 0; i < ch->n_steps; i++)
        if (strcmp(ch->step[i].model, name) == 0)
            return;
    if (AP_NEVER(ch->n_steps == AP_CHAIN_MAX))
        return; /* the loader caps the lists */
    ap_chain_step *st = &ch->step[ch->n_steps];
    memset(st, 0, sizeof(*st));
    if (strcmp(name, AP_REVIEW_STEP) == 0) {
        st->model = name;
        st->review = true;
        ch->n_steps++;
        return;
    }
    if (route_find(c, name, &m, &p, &want) != R_OK)
        return;
    if (m == NULL) {
        /* Routed by prefix (or "local"): the one provider, the name as the client sent it. */
        dep_set(&st->dep[0], p, name, 1);
        st->n_dep = 1;
    } else {
        for (size_t j = 0; j < m->n_deployments && st->n_dep < AP_MAX_DEPLOYMENTS; j++) {
            const ap_deployment_conf *d = &m->deployments[j];
            const ap_provider_conf *dp = find_provider(c, d->provider);
            if (dp != NULL && dp->enabled)
                dep_set(&st->dep[st->n_dep++], dp, d->upstream, d->weight);
        }
        if (AP_NEVER(st->n_dep == 0))
            return; /* route_find() said one is enabled */
    }
    st->model = name;
    st->model_conf = m;
    st->provider = st->dep[0].provider;
    st->upstream = st->dep[0].upstream;
    memcpy(st->deployment, st->dep[0].key, sizeof(st->deployment));
    ch->n_steps++;
}

ap_status ap_config_chain(const ap_config *cfg, const char *task, const char *model, ap_chain *out,
                          ap_error *err)
{
    const ap_task_conf *t = NULL;
    const ap_model_conf *m;
    const ap_provider_conf *p;
    ap_provider_type want = AP_PROVIDER_LOCAL;
    char why[AP_ERROR_MSG_MAX];

    if (AP_NEVER(cfg == NULL || out == NULL))
        return ap_error_set(err, AP_EINVAL, "no configuration");
    if (task != NULL && (t = ap_config_task(cfg, task)) == NULL)
        return ap_error_set(err, AP_ENOTFOUND, "no task named \"%.64s\"", task);
    if (model == NULL)
        model = t != NULL ? t->model : cfg->default_model;
    if (model == NULL || model[0] == '\0')
        return ap_error_set(err, AP_EINVAL, "no model given");
    enum route_res res = route_find(cfg, model, &m, &p, &want);
    if (res == R_UNKNOWN || res == R_NO_PROVIDER) {
        route_why(res, model, p, want, why, sizeof(why));
        return ap_error_set(err, AP_ENOTFOUND, "%s", why);
    }

    /* Built aside: *out is written only on success. */
    ap_chain ch;
    ch.n_steps = 0;
    ch.fallbacks_from = NULL;
    char *const *fb = NULL;
    size_t n_fb = 0;
    if (t != NULL && t->n_fallbacks > 0) {
        fb = t->fallbacks;
        n_fb = t->n_fallbacks;
        ch.fallbacks_from = "task";
    } else if (m != NULL && m->n_fallbacks > 0) {
        fb = m->fallbacks;
        n_fb = m->n_fallbacks;
        ch.fallbacks_from = "model";
    }
    chain_add(cfg, &ch, model);
    for (size_t i = 0; i < n_fb; i++)
        chain_add(cfg, &ch, fb[i]);
    if (ch.n_steps == 0) {
        /* Only possible when the first model's provider is disabled and so are the rest. */
        route_why(res, model, p, want, why, sizeof(why));
        return ap_error_set(err, AP_ENOTFOUND, "%s",
                            why[0] ? why : "no step of the chain is enabled");
    }
    memcpy(out->step, ch.step, ch.n_steps * sizeof(ch.step[0]));
    out->n_steps = ch.n_steps;
    out->fallbacks_from = ch.fallbacks_from;
    return AP_OK;
}

ap_status ap_config_chain_list(const ap_config *cfg, const char *const *models, size_t n,
                               ap_chain *out, ap_error *err)
{
    char why[AP_ERROR_MSG_MAX] = "";

    if (AP_NEVER(cfg == NULL || out == NULL))
        return ap_error_set(err, AP_EINVAL, "no configuration");
    if (models == NULL || n == 0)
        return ap_error_set(err, AP_EINVAL, "no model given");
    if (n > AP_CHAIN_MAX)
        return ap_error_set(err, AP_EINVAL, "at most %d steps", AP_CHAIN_MAX);
    /* Every name first: a list that cannot work is an error even when its first step would. */
    for (size_t i = 0; i < n; i++) {
        const ap_model_conf *m;
        const ap_provider_conf *p;
        ap_provider_type want = AP_PROVIDER_LOCAL;
        if (models[i] == NULL || models[i][0] == '\0')
            return ap_error_set(err, AP_EINVAL, "no model given");
        if (strcmp(models[i], AP_REVIEW_STEP) == 0) {
            if (i + 1 != n)
                return ap_error_set(err, AP_EINVAL, "\"" AP_REVIEW_STEP "\" must be the last step");
            continue;
        }
        enum route_res res = route_find(cfg, models[i], &m, &p, &want);
        if (res == R_UNKNOWN || res == R_NO_PROVIDER) {
            route_why(res, models[i], p, want, why, sizeof(why));
            return ap_error_set(err, AP_ENOTFOUND, "%s", why);
        }
        if (res == R_DISABLED && why[0] == '\0')
            route_why(res, models[i], p, want, why, sizeof(why)); /* the first one unavailable */
    }

    /* Built aside: *out is written only on success. */
    ap_chain ch;
    ch.n_steps = 0;
    ch.fallbacks_from = NULL;
    for (size_t i = 0; i < n; i++)
        chain_add(cfg, &ch, models[i]);
    if (ch.n_steps == 0)
        return ap_error_set(err, AP_ENOTFOUND, "%s",
                            why[0] ? why : "no step of the chain is enabled");
    memcpy(out->step, ch.step, ch.n_steps * sizeof(ch.step[0]));
    out->n_steps = ch.n_steps;
    out->fallbacks_from = NULL;
    return AP_OK;
}
