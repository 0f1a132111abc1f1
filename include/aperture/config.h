/*
 * config.h - the gateway's configuration: one YAML file (libcyaml), environment overrides, and
 * zero-config conventions.
 *
 * Load order: built-in defaults -> the YAML file (--config / APERTURE_CONFIG; optional) ->
 * environment (APERTURE_* for every setting, plus the names users expect: OPENAI_API_KEY,
 * OPENAI_BASE_URL, ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL, GEMINI_API_KEY, GEMINI_BASE_URL,
 * MAX_IMAGE_SIZE_MB) -> command line (--listen). A provider whose key variable is set is enabled
 * even without a file; the `local` offline provider is always there and is the default model.
 * Every key and variable is documented in docs/CONFIG.md; config/aperture.example.yaml is a
 * complete example.
 *
 * Secrets: provider keys are read from the environment variables the config names and kept only
 * in ap_provider_conf.api_key; nothing in this module ever prints them. Client keys are stored
 * and compared as SHA-256 hashes.
 *
 * Resilience: `retry` and `breaker` hold the retry policy and the breaker options
 * (resilience.h); models and tasks may list `fallbacks`, the steps a request falls through to,
 * resolved per request by ap_config_chain().
 *
 * Threading: an ap_config is immutable after ap_config_load() returns; share it freely.
 */
#ifndef APERTURE_CONFIG_H
#define APERTURE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aperture/prep.h"
#include "aperture/resilience.h"
#include "aperture/status.h"
#include "aperture/tokens.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ap_provider_type {
    AP_PROVIDER_OPENAI = 0,        /* api.openai.com Chat Completions */
    AP_PROVIDER_ANTHROPIC = 1,     /* api.anthropic.com Messages */
    AP_PROVIDER_GEMINI = 2,        /* generativelanguage.googleapis.com generateContent */
    AP_PROVIDER_OPENAI_COMPAT = 3, /* vLLM, Ollama, llama.cpp: OpenAI wire, base_url + key */
    AP_PROVIDER_LOCAL = 4,         /* offline: Tesseract OCR + rules, no network */
} ap_provider_type;

typedef struct ap_provider_conf {
    char *name;          /* "openai", "anthropic", "my-vllm", ... unique */
    ap_provider_type type;
    char *base_url;      /* e.g. "https://api.openai.com/v1"; NULL for local */
    char *api_key_env;   /* the variable the key is read from */
    char *api_key;       /* resolved key, or NULL (self-hosted without auth, local) */
    long connect_timeout_ms; /* default 10,000 */
    long timeout_ms;         /* whole upstream call; default 600,000 */
    /*
     * false when api_key_env names a variable that is not set: the provider stays in the list
     * (so routing can say which variable would enable it) but nothing is routed to it.
     */
    bool enabled;
    /*
     * Runs on infrastructure the operator controls: the only providers a request marked
     * `x-aperture-data-class: restricted` may reach. YAML self_hosted; default true for
     * openai-compatible and local, false for openai, anthropic and gemini (and not settable
     * to true for those three: their base_url may be changed, their traffic may not be trusted
     * to stay in-house by a flag).
     */
    bool self_hosted;
    /* Limits (limiter.h): 0 = none. YAML limits.{max_in_flight, rpm, tpm, queue, queue_timeout_ms}. */
    int max_in_flight;      /* upstream calls in flight at once */
    double rpm;             /* requests started per minute */
    double tpm;             /* estimated input tokens per minute */
    int queue_max;          /* requests that may wait for a slot; default 100; 0 = no queue */
    long queue_timeout_ms;  /* the longest wait in the queue; default 30,000 */
} ap_provider_conf;

/* One deployment of a model, for load balancing (YAML models[].deployments[]). */
typedef struct ap_deployment_conf {
    char *provider; /* ap_provider_conf.name */
    char *upstream; /* the provider's model name; default: the model's upstream */
    double weight;  /* > 0; default 1 */
} ap_deployment_conf;

typedef struct ap_model_conf {
    char *name;          /* the name clients send */
    char *provider;      /* ap_provider_conf.name */
    char *upstream;      /* the provider's model name (default: name) */
    double usd_per_mtok_in, usd_per_mtok_out; /* < 0: use the built-in price table */
    char *token_model;   /* model name for ap_tokens_estimate (default: upstream) */
    char *target;        /* ap_prep target preset (default: ap_provider_default_target()) */
    /* A self-hosted model's image-token rule (YAML token_patch); replaces token_model's rule. */
    bool has_token_patch;
    ap_tokens_patch_formula token_patch;
    /* Where a request for this model goes when it fails: model names, "review" last if at all. */
    char **fallbacks;
    size_t n_fallbacks;
    /*
     * Several deployments of this one model (load balancing by weight, skipping open
     * breakers). When the YAML lists deployments, provider/upstream above are the first
     * one's (the YAML `provider` key is then optional); otherwise there is exactly one,
     * made from provider/upstream with weight 1. Always n_deployments >= 1.
     */
    ap_deployment_conf *deployments;
    size_t n_deployments;
} ap_model_conf;

typedef struct ap_task_conf {
    char *name;          /* "describe", "invoice_extraction", ... */
    char *model;         /* default model for the task */
    char *prompt;        /* default prompt */
    char *prompt_version; /* default "1" */
    /* The task's chain after its model; when set, it replaces the model's fallbacks. */
    char **fallbacks;
    size_t n_fallbacks;
    /*
     * The task's checks on an answer (a step whose answer fails them falls through, reason
     * failed_checks; tiering escalates on them). json: the answer must hold a JSON object
     * (YAML json; default true when required is set); required: fields of that object that
     * must be present and not null (YAML required: [vendor, total]). Without either, only
     * the built-in check applies: a JSON answer whose every field is null fails.
     */
    bool json;
    char **required;
    size_t n_required;
} ap_task_conf;

/* Two-stage processing (YAML routes[].two_stage): classify on a thumbnail with a cheap model,
 * then run the full request only for the classes that are worth it. */
typedef struct ap_two_stage_conf {
    char *model;        /* the classifier (a configured or prefix-routed model) */
    char *target;       /* its ap_prep target; default "thumbnail" */
    char *prompt;       /* default: "Classify this image as exactly one of: <classes>. Answer
                         * with the class name only." */
    char **classes;     /* the labels it chooses from (>= 2) */
    size_t n_classes;
    char **valuable;    /* classes that get the full run (a subset of classes, >= 1) */
    size_t n_valuable;
} ap_two_stage_conf;

/*
 * A routing rule (YAML routes[]): evaluated in order, the first whose every set condition
 * holds decides. Conditions left out (NULL, 0 count, < 0 limits) are not checked.
 */
typedef struct ap_route_rule {
    char *name;          /* unique; aperture_route_total{rule}, x-aperture-rule, the log */
    /* Conditions. */
    char *task;          /* the request's task equals this */
    char *model;         /* the model the client asked for equals this ("*" suffix: prefix) */
    char **keywords;     /* any of these occurs in the prompt text (ASCII case-insensitive) */
    size_t n_keywords;
    long long min_pixels, max_pixels; /* the largest image's w*h (from its header); -1 = any */
    long long min_bytes, max_bytes;   /* all images' bytes together, as uploaded; -1 = any */
    int min_images, max_images;       /* number of images; -1 = any */
    char **clients;      /* the client key's name (clients[].name) is one of these */
    size_t n_clients;
    char *data_class;    /* the x-aperture-data-class header equals this */
    /*
     * Actions. models: the chain to walk, in order (tiering: cheap first, then the frontier
     * model it escalates to when an answer fails the task's checks; "review" may end it);
     * replaces the request's model and fallbacks. Empty: keep the request's own chain.
     * two_stage: classify first (may be combined with models, which then run the full stage).
     */
    char **models;
    size_t n_models;
    ap_two_stage_conf *two_stage; /* NULL: none */
} ap_route_rule;

typedef struct ap_config {
    char *listen;              /* "127.0.0.1:8080" */
    size_t max_body_bytes;     /* default 64 MiB */
    int workers;               /* CPU worker threads; 0 = one per core */
    /* Clients. No keys: no auth, and the server refuses to listen beyond loopback. */
    char **client_key_sha256;  /* lowercase hex SHA-256 of each accepted key */
    size_t n_client_keys;
    /* The name of each key above (YAML clients[].name with clients[].key_sha256, beside the
     * plain client_keys_sha256 list whose keys are named "key1", "key2", ...). Never NULL. */
    char **client_key_name;
    double rate_rps;           /* per-key token bucket refill, requests/s; 0 = unlimited */
    double rate_burst;
    /* Upstreams. */
    ap_provider_conf *providers;
    size_t n_providers;
    ap_model_conf *models;
    size_t n_models;
    ap_task_conf *tasks;
    size_t n_tasks;
    char *default_model;       /* used when a request names none (native API); "local" */
    /* Images. */
    ap_prep_opts prep;         /* limits and defaults; targets per model override geometry */
    uint32_t ocr_max_edge;     /* OCR works on the normalised image capped here; default 4000 */
    /* Fetching image URLs. */
    bool fetch_allow_loopback; /* tests only */
    char **fetch_allow_hosts;  /* optional allow-list; NULL = any public host */
    size_t n_fetch_allow_hosts;
    long fetch_timeout_ms;     /* default 10,000 */
    size_t fetch_max_bytes;    /* default = prep.max_input_bytes */
    /* Resilience (resilience.h has the defaults). breaker.on_change is NULL here. */
    ap_retry_policy retry;
    ap_breaker_opts breaker;
    /* Routing rules, in order (YAML routes). */
    ap_route_rule *routes;
    size_t n_routes;
    /*
     * Where review items are kept (YAML review_url / APERTURE_REVIEW_URL): "sqlite:///path"
     * or "redis://host:port/db". NULL: APERTURE_CACHE_URL when that is redis, else
     * sqlite://aperture-review.db.
     */
    char *review_url;
    /* Logs. */
    char *log_file;            /* NULL = stderr */
    bool log_prompts;          /* default false */
    /*
     * Problems that did not stop the load, one line each, for the caller to log (this module
     * prints nothing): e.g. a provider disabled because its key variable is not set.
     */
    char **warnings;
    size_t n_warnings;
} ap_config;

/*
 * Load the configuration. path may be NULL: then $APERTURE_CONFIG names the file, and when that
 * is unset or empty there is no file (defaults + environment only). argv_listen, when not NULL,
 * overrides the listen address (the --listen flag). *out is (transfer full): ap_config_free().
 * On failure *out is untouched and err names the key, the line and why ("config.yaml:12:
 * providers[0].type: unknown value \"opnai\"" or "APERTURE_WORKERS: expected a whole number"):
 * AP_EINVAL for an invalid setting, AP_EIO when the file cannot be read, AP_ETOOLARGE for a
 * file over 1 MiB. Callers exit with status 2. No message ever contains a key.
 */
AP_API AP_NODISCARD ap_status ap_config_load(const char *path, const char *argv_listen,
                                             ap_config **out, ap_error *err);

/*
 * The same from YAML in memory (buf/len borrowed, need not be NUL-terminated; len 0 = no file).
 * name labels messages in place of the path. APERTURE_CONFIG is not consulted.
 */
AP_API AP_NODISCARD ap_status ap_config_load_buffer(const char *buf, size_t len, const char *name,
                                                    const char *argv_listen, ap_config **out,
                                                    ap_error *err);

/* Free a configuration. NULL is a no-op. */
AP_API void ap_config_free(ap_config *cfg);

/*
 * Route a model name: a configured model by exact name first, else by prefix convention
 * (gpt-*, o1*, o3*, o4*, chatgpt-* -> the first enabled provider of type openai, declared ones
 * before the zero-config one; claude-* -> anthropic; gemini-* -> gemini; "local" -> local).
 * *model (may be NULL) is set to the configured model or NULL when routed by prefix; *prov
 * (may be NULL) to the provider (for a model with several deployments, the first enabled
 * one's); both only on success. AP_ENOTFOUND when nothing routes (the
 * message lists what would) or the provider is not enabled (the message names the key variable
 * that would enable it); AP_EINVAL for a NULL or empty name. Messages are safe to show clients.
 */
AP_API AP_NODISCARD ap_status ap_config_route(const ap_config *cfg, const char *name,
                                              const ap_model_conf **model,
                                              const ap_provider_conf **prov, ap_error *err);

/* The task's configuration, or NULL. */
AP_API const ap_task_conf *ap_config_task(const ap_config *cfg, const char *name);

/* Most fallbacks one model or task may list; a chain has at most one more step. */
#define AP_CONFIG_MAX_FALLBACKS 15
#define AP_CHAIN_MAX            (AP_CONFIG_MAX_FALLBACKS + 1)
/* The fallback step that stores the request for human review instead of calling a model. */
#define AP_REVIEW_STEP "review"
/* ap_chain_step.deployment's size; longer keys (client-chosen model names) are cut. */
#define AP_DEPLOYMENT_MAX 320

/* Most deployments one model may list. */
#define AP_MAX_DEPLOYMENTS 8

/* One deployment a chain step may use. */
typedef struct ap_chain_deployment {
    const ap_provider_conf *provider;
    const char *upstream;
    double weight;
    char key[AP_DEPLOYMENT_MAX]; /* "provider/upstream": its circuit breaker's key */
} ap_chain_deployment;

typedef struct ap_chain_step {
    const char *model;                /* the model name, or "review" (borrowed, see below) */
    bool review;                      /* the review step: no model, no provider */
    const ap_model_conf *model_conf;  /* NULL when routed by prefix, and for review */
    const ap_provider_conf *provider; /* NULL for review; = dep[0].provider */
    const char *upstream;             /* the provider's model name; NULL for review; dep[0] */
    /* "provider/upstream": the circuit breaker's key for this step; "" for review; dep[0]. */
    char deployment[AP_DEPLOYMENT_MAX];
    /* Every enabled deployment of the model (load balancing); 0 for review, else >= 1. */
    ap_chain_deployment dep[AP_MAX_DEPLOYMENTS];
    size_t n_dep;
} ap_chain_step;

typedef struct ap_chain {
    ap_chain_step step[AP_CHAIN_MAX];
    size_t n_steps;             /* >= 1 on success */
    const char *fallbacks_from; /* "task" or "model": whose fallbacks were used; NULL: none */
} ap_chain;

/*
 * The steps a request walks, in order: its model, then the fallbacks. task (may be NULL) names
 * a configured task; model (may be NULL) the model the request asked for, else the task's
 * model, else default_model. The fallbacks are the task's when it lists any (the task knows
 * what answer it needs, e.g. a schema-capable model and then review), else the first model's
 * own; a fallback's fallbacks are not followed. Steps that repeat an earlier model, and steps
 * whose provider is disabled, are left out, so the first step may not be the model asked for.
 * Pointers in *out borrow from cfg and from model. AP_ENOTFOUND for an unknown task, for a
 * model that does not route at all (ap_config_route()'s message), and when no step is left
 * (the message says why the first model is unavailable); AP_EINVAL for an empty model name.
 * *out is written only on success.
 */
AP_API AP_NODISCARD ap_status ap_config_chain(const ap_config *cfg, const char *task,
                                              const char *model, ap_chain *out, ap_error *err);

/*
 * A chain from an explicit list of model names (a route rule's models), resolved like
 * ap_config_chain()'s fallbacks: repeats and disabled providers left out, "review" allowed
 * (last). The first model's own fallbacks are not added: the list is the whole chain;
 * fallbacks_from is NULL. AP_ENOTFOUND when a name does not route or nothing is left (the
 * message says why the first unavailable model is); AP_EINVAL for no names (n == 0), an empty
 * name, more than AP_CHAIN_MAX names or "review" before the last. *out is written only on
 * success.
 */
AP_API AP_NODISCARD ap_status ap_config_chain_list(const ap_config *cfg,
                                                   const char *const *models, size_t n,
                                                   ap_chain *out, ap_error *err);

/* "openai", "anthropic", "gemini", "openai-compatible", "local"; "unknown" otherwise. */
AP_API const char *ap_provider_type_name(ap_provider_type t);

/*
 * The ap_prep target a model of this provider type gets when its config names none (and for
 * models routed by prefix): "openai-high", "anthropic", "gemini", "default" for
 * openai-compatible, "none" for local (OCR wants the full image). Never NULL.
 */
AP_API const char *ap_provider_default_target(ap_provider_type t);

#ifdef __cplusplus
}
#endif
#endif
