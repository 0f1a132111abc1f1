/*
 * route_bench.c - what routing and the circuit breakers cost per request: the decision path
 * the server runs before its first upstream call, over a realistic configuration loaded from
 * YAML (issue 5, target (b): <= 50 us per request).
 *
 *   route_bench [--iters N] [--runs R] [--samples S] [--threads T]
 *
 * The configuration (CONFIG_YAML below): 9 providers (2 openai, 2 anthropic, 2 gemini, 3
 * self-hosted openai-compatible; the built-in local makes 10), 8 models with 2-3 deployments
 * each and 2 fallbacks each (3-step chains), 4 tasks, 3 named clients, and 10 routing rules
 * over task, data class, client, image count, pixels, bytes and prompt keywords. One deployment
 * (openai-eu/gpt-4o-2024-08-06) is held OPEN (failures recorded until it opens; a day's cooldown)
 * so that gpt-4o's picks go through the skip-and-pick-again path some of the time.
 *
 * One request's decision (decide()), as the server makes it:
 *   ap_router_match()             the first rule that holds for the request's facts (~1 KB
 *                                 prompt; keywords are searched last, over the whole prompt)
 *   ap_config_chain_list()        the rule's models as the chain, or ap_config_chain() for the
 *                                 request's task/model when no rule matched or it lists none
 *   ap_router_restrict()          when the data class is restricted
 *   for the first healthy step:   ap_router_pick() by weight among the deployments not yet
 *                                 refused, ap_breaker_allow() on it (refused: mark it, pick
 *                                 again; none left: next step), the monotonic clock read as
 *                                 the server does (src/server/api_chat.c: route(), pick_in())
 *   ap_breaker_record()           the call's outcome (1 in 64 a failure)
 * Request kinds, cycled in this order (REQS below): no rule matches (every rule checked, every
 * keyword searched over the whole prompt: the worst case), a mobile client whose prompt ends in
 * "quick", a batch client with a 12 MP image, a task rule, restricted data, a keyword near the
 * end of the prompt, five images, an explicit claude model with no rule. Rows of the table:
 * the mix; the worst-case kind alone; and the worst case with a 16 KB prompt (the keyword
 * search is linear in the prompt and the keywords checked).
 *
 * Measured per row: R runs of N decisions, each run timed as a whole: wall ns per decision
 * (the median and the best run) and the thread's CPU ns per decision (CLOCK_THREAD_CPUTIME_ID;
 * on a shared machine the wall time also counts waits for a core). Then S decisions timed one
 * by one (clock_gettime around each; its own cost, measured and printed, is included) for
 * p50/p99/max (the 16 KB row runs a tenth of N and S). With T threads (default 2) every thread runs
 * the same loop at once, sharing the config and ONE breaker set (its mutex is the contended part);
 * the per-decision figures are per thread (its own time / its own decisions).
 *
 * Not measured: what the server does around these calls (joining the prompt's text parts, the
 * images' header probe, the aperture_route_total / aperture_breaker_state metric updates).
 *
 * Build and run (not part of `all`):
 *   cmake --build build --target route_bench && build/route_bench
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aperture/config.h"
#include "aperture/resilience.h"
#include "aperture/router.h"

/* ---- the configuration ------------------------------------------------------------------- */

static const char CONFIG_YAML[] =
    "listen: \"127.0.0.1:8080\"\n"
    "clients:\n"
    "  - {name: web, key_sha256: "
    "\"1111111111111111111111111111111111111111111111111111111111111111\"}\n"
    "  - {name: mobile, key_sha256: "
    "\"2222222222222222222222222222222222222222222222222222222222222222\"}\n"
    "  - {name: batch, key_sha256: "
    "\"3333333333333333333333333333333333333333333333333333333333333333\"}\n"
    "providers:\n"
    "  - {name: openai, type: openai, api_key_env: ROUTE_BENCH_KEY}\n"
    "  - {name: openai-eu, type: openai, base_url: \"https://eu.example.invalid/v1\", "
    "api_key_env: ROUTE_BENCH_KEY}\n"
    "  - {name: anthropic, type: anthropic, api_key_env: ROUTE_BENCH_KEY}\n"
    "  - {name: anthropic-b, type: anthropic, base_url: \"https://b.example.invalid\", "
    "api_key_env: ROUTE_BENCH_KEY}\n"
    "  - {name: gemini, type: gemini, api_key_env: ROUTE_BENCH_KEY}\n"
    "  - {name: gemini-b, type: gemini, base_url: \"https://g.example.invalid/v1beta\", "
    "api_key_env: ROUTE_BENCH_KEY}\n"
    "  - {name: vllm-a, type: openai-compatible, base_url: \"http://10.0.0.1:8000/v1\"}\n"
    "  - {name: vllm-b, type: openai-compatible, base_url: \"http://10.0.0.2:8000/v1\"}\n"
    "  - {name: vllm-c, type: openai-compatible, base_url: \"http://10.0.0.3:8000/v1\"}\n"
    "models:\n"
    "  - name: gpt-4o\n"
    "    upstream: gpt-4o-2024-08-06\n"
    "    deployments: [{provider: openai, weight: 3}, {provider: openai-eu, weight: 1}]\n"
    "    fallbacks: [claude-sonnet, gemini-pro]\n"
    "  - name: gpt-4o-mini\n"
    "    deployments: [{provider: openai, weight: 1}, {provider: openai-eu, weight: 1}]\n"
    "    fallbacks: [gemini-flash, claude-haiku]\n"
    "  - name: claude-sonnet\n"
    "    upstream: claude-sonnet-4-5\n"
    "    deployments: [{provider: anthropic, weight: 2}, {provider: anthropic-b, weight: 1}]\n"
    "    fallbacks: [gpt-4o, gemini-pro]\n"
    "  - name: claude-haiku\n"
    "    upstream: claude-haiku-4-5\n"
    "    deployments: [{provider: anthropic}, {provider: anthropic-b}]\n"
    "    fallbacks: [gpt-4o-mini, gemini-flash]\n"
    "  - name: gemini-pro\n"
    "    upstream: gemini-2.5-pro\n"
    "    deployments: [{provider: gemini, weight: 1}, {provider: gemini-b, weight: 1}]\n"
    "    fallbacks: [gpt-4o, claude-sonnet]\n"
    "  - name: gemini-flash\n"
    "    upstream: gemini-2.5-flash\n"
    "    deployments: [{provider: gemini, weight: 4}, {provider: gemini-b, weight: 1}]\n"
    "    fallbacks: [gpt-4o-mini, claude-haiku]\n"
    "  - name: qwen-vl\n"
    "    upstream: Qwen/Qwen2.5-VL-7B-Instruct\n"
    "    deployments: [{provider: vllm-a, weight: 2}, {provider: vllm-b, weight: 1}, "
    "{provider: vllm-c, weight: 1}]\n"
    "    fallbacks: [pixtral, local]\n"
    "  - name: pixtral\n"
    "    upstream: mistralai/Pixtral-12B-2409\n"
    "    deployments: [{provider: vllm-b}, {provider: vllm-c}]\n"
    "    fallbacks: [qwen-vl, local]\n"
    "tasks:\n"
    "  - {name: describe, model: gpt-4o, prompt: \"Describe the image.\"}\n"
    "  - name: invoice_extraction\n"
    "    model: gemini-flash\n"
    "    prompt: \"Extract the invoice fields as JSON.\"\n"
    "    fallbacks: [claude-sonnet, gpt-4o]\n"
    "    required: [vendor, total]\n"
    "  - {name: receipt, model: gpt-4o-mini, prompt: \"Read the receipt.\"}\n"
    "  - {name: classify, model: gemini-flash, prompt: \"Classify the image.\"}\n"
    "routes:\n"
    "  - {name: restricted, data_class: restricted, models: [qwen-vl, pixtral, local]}\n"
    "  - {name: invoice-tiers, task: invoice_extraction, "
    "models: [gemini-flash, claude-sonnet, gpt-4o]}\n"
    "  - {name: receipts, task: receipt, models: [gpt-4o-mini, gemini-flash, claude-haiku]}\n"
    "  - {name: batch-big, clients: [batch], min_pixels: 4000000, min_images: 1, "
    "models: [gemini-pro, gpt-4o, claude-sonnet]}\n"
    "  - {name: batch-small, clients: [batch], max_pixels: 262144, "
    "models: [gpt-4o-mini, gemini-flash, claude-haiku]}\n"
    "  - {name: mobile-quick, clients: [mobile], keywords: [quick, thumbnail, preview], "
    "models: [gpt-4o-mini, gemini-flash, claude-haiku]}\n"
    "  - {name: legal, keywords: [contract, clause, indemnity, liability, warranty, "
    "jurisdiction], models: [claude-sonnet, gpt-4o, gemini-pro]}\n"
    "  - {name: code-screens, model: \"gpt-*\", keywords: [screenshot, stack trace, terminal, "
    "exception], models: [gpt-4o, claude-sonnet, gemini-pro]}\n"
    "  - {name: many-images, min_images: 5, models: [gemini-pro, gpt-4o, claude-sonnet]}\n"
    "  - {name: huge-uploads, min_bytes: 20000000, models: [gemini-flash, gpt-4o-mini, "
    "claude-haiku]}\n";

/* The deployment held OPEN for the whole run (gpt-4o's second deployment). */
static const char OPEN_DEPLOYMENT[] = "openai-eu/gpt-4o-2024-08-06";

/* ---- the requests -------------------------------------------------------------------------- */

/* ~1 KB of prose that contains none of the rules' keywords. */
static const char PROSE[] =
    "Please look carefully at the attached picture and tell me what it shows. I would like a "
    "description of the main objects, their colours and positions, the setting, the light and "
    "the weather if any is visible, and anything written on signs, labels or packaging. If "
    "there are people, describe what they are doing without guessing who they are. Mention "
    "anything unusual, damaged or out of place, and say how sure you are about each part of "
    "the answer. Keep the answer short enough to read on a phone, in plain sentences rather "
    "than bullet points, and do not repeat the question. When the picture is blurred, dark or "
    "cut off, say so first and describe only what can really be seen. Prices, dates, totals "
    "and any numbers should be copied exactly as printed, with their units and currency. "
    "Finally, suggest one follow-up question that would help me learn more about the scene, "
    "and note whether a higher resolution version of the image would change the answer in a "
    "useful way. Thank you for the help with this, it is much appreciated by the whole team.";

enum { N_KINDS = 8, PROMPT_CAP = 1200, BIG_PROMPT = 16384 };

struct request {
    const char *label;
    const char *want_rule; /* the rule it must match (NULL: none), checked before timing */
    ap_route_facts f;
    char prompt[PROMPT_CAP];
};

/* REQS[N_KINDS] is the worst case again with a 16 KB prompt (PROSE repeated), for how the
 * keyword search scales; it is not part of the mix. */
static struct request REQS[N_KINDS + 1];
static char big_prompt[BIG_PROMPT];

/* Facts for each kind; the prompt is PROSE with an optional word appended near the end. */
static void requests_init(void)
{
    static const struct {
        const char *label, *want, *task, *model, *client, *data_class, *tail;
        size_t n_images;
        uint64_t max_pixels, total_bytes;
    } k[N_KINDS] = {
        {"no rule matches", NULL, NULL, "gpt-4o", "web", NULL, NULL, 1, 1024 * 768, 180000},
        {"mobile, keyword last", "mobile-quick", NULL, "gpt-4o", "mobile", NULL, " Be quick.", 1,
         640 * 480, 90000},
        {"batch, 12 MP image", "batch-big", "describe", NULL, "batch", NULL, NULL, 1, 4032 * 3024,
         4200000},
        {"task rule", "invoice-tiers", "invoice_extraction", NULL, "web", NULL, NULL, 1,
         2480 * 3508, 900000},
        {"restricted data", "restricted", "describe", NULL, "web", "Restricted", NULL, 1,
         1920 * 1080, 400000},
        {"keyword near the end", "legal", NULL, "gpt-4o", "web", NULL,
         " It is page 3 of a contract.", 1, 2480 * 3508, 700000},
        {"five images", "many-images", NULL, "gpt-4o-mini", "web", NULL, NULL, 5, 1280 * 960,
         1500000},
        {"claude, no rule", NULL, NULL, "claude-sonnet", "web", NULL, NULL, 1, 800 * 600, 120000},
    };
    for (size_t i = 0; i < N_KINDS; i++) {
        struct request *r = &REQS[i];
        int n = snprintf(r->prompt, sizeof(r->prompt), "%s%s", PROSE, k[i].tail ? k[i].tail : "");
        r->label = k[i].label;
        r->want_rule = k[i].want;
        r->f = (ap_route_facts){
            .task = k[i].task,
            .model = k[i].model,
            .prompt = r->prompt,
            .prompt_len = (size_t)n,
            .n_images = k[i].n_images,
            .max_pixels = k[i].max_pixels,
            .total_bytes = k[i].total_bytes,
            .client = k[i].client,
            .data_class = k[i].data_class,
        };
    }
    size_t n = 0;
    while (n + sizeof(PROSE) - 1 < sizeof(big_prompt)) {
        memcpy(big_prompt + n, PROSE, sizeof(PROSE) - 1);
        n += sizeof(PROSE) - 1;
    }
    REQS[N_KINDS] = REQS[0];
    REQS[N_KINDS].label = "no rule matches, 16 KB prompt";
    REQS[N_KINDS].f.prompt = big_prompt;
    REQS[N_KINDS].f.prompt_len = n;
}

/* ---- one decision ---------------------------------------------------------------------------- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* This thread's CPU time: on a shared machine the wall time includes waits for a core. */
static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct ctx {
    const ap_config *cfg;
    ap_breaker_set *breakers;
};

/* What one decision chose, for the check before timing (and so nothing is optimised away). */
struct choice {
    const ap_route_rule *rule;
    size_t step;
    int dep;
    bool ok;
};

/*
 * The decision path for one request. Returns false when it fails to find a route (a bug in the
 * benchmark's configuration: the caller stops). The chain lives on the caller's stack as it
 * does in the server (ap_chain is ~50 KB: its filling is part of the cost).
 */
static bool decide(const struct ctx *x, const struct request *rq, ap_chain *chain, uint64_t *rng,
                   struct choice *out)
{
    ap_error err = {0};
    const ap_route_facts *f = &rq->f;
    const ap_route_rule *rule = ap_router_match(x->cfg, f);
    ap_status rc;
    if (rule != NULL && rule->n_models > 0)
        rc = ap_config_chain_list(x->cfg, (const char *const *)rule->models, rule->n_models, chain,
                                  &err);
    else
        rc = ap_config_chain(x->cfg, f->task, f->model, chain, &err);
    if (rc != AP_OK)
        return false;
    if (ap_router_restricted(f->data_class) && ap_router_restrict(chain, &err) != AP_OK)
        return false;
    out->rule = rule;
    out->ok = false;
    for (size_t s = 0; s < chain->n_steps && !out->ok; s++) {
        const ap_chain_step *st = &chain->step[s];
        if (st->review || st->provider == NULL || st->provider->type == AP_PROVIDER_LOCAL) {
            *out = (struct choice){rule, s, -1, true};
            return true;
        }
        /* As the server's pick_in(): one clock read, a single deployment taken without a draw,
         * a refused one left out and the draw repeated. */
        int64_t now = mono_ms();
        bool allowed[AP_MAX_DEPLOYMENTS];
        for (size_t i = 0; i < AP_MAX_DEPLOYMENTS; i++)
            allowed[i] = i < st->n_dep;
        for (size_t tries = 0; tries < st->n_dep; tries++) {
            int d = st->n_dep == 1 ? 0 : ap_router_pick(st, allowed, rng);
            if (d < 0 || !allowed[d])
                break; /* every deployment refused: the next step */
            bool probe = false;
            const char *key = st->dep[d].key;
            if (!ap_breaker_allow(x->breakers, key, now, &probe)) {
                allowed[d] = false;
                continue;
            }
            /* The call would run here; its outcome: 1 in 64 a transient failure. */
            bool success = (ap_retry_rand(rng) & 63) != 0;
            ap_breaker_record(x->breakers, key, mono_ms(), success, probe);
            *out = (struct choice){rule, s, d, true};
            break;
        }
    }
    return out->ok;
}

/* ---- measurement ----------------------------------------------------------------------------- */

struct job {
    const struct ctx *x;
    const size_t *kinds; /* which REQS to cycle through */
    size_t n_kinds;
    long iters;
    uint64_t seed;
    /* Results. */
    double ns_per_op;     /* wall */
    double cpu_ns_per_op; /* this thread's CPU time */
    uint64_t *samples;    /* per-decision ns, when n_samples > 0 */
    long n_samples;
    bool failed;
    pthread_barrier_t *start;
};

static void *run_job(void *arg)
{
    struct job *j = arg;
    /* 50 KB: on the heap rather than a thread stack of unknown size. */
    ap_chain *chain = malloc(sizeof(*chain));
    uint64_t rng = j->seed;
    struct choice c = {0};
    if (chain == NULL) {
        j->failed = true;
        return NULL;
    }
    if (j->start)
        pthread_barrier_wait(j->start);
    if (j->n_samples > 0) {
        for (long i = 0; i < j->n_samples; i++) {
            const struct request *rq = &REQS[j->kinds[(size_t)i % j->n_kinds]];
            uint64_t t0 = mono_ns();
            bool ok = decide(j->x, rq, chain, &rng, &c);
            j->samples[i] = mono_ns() - t0;
            j->failed |= !ok;
        }
    } else {
        uint64_t t0 = mono_ns(), c0 = cpu_ns();
        for (long i = 0; i < j->iters; i++)
            j->failed |= !decide(j->x, &REQS[j->kinds[(size_t)i % j->n_kinds]], chain, &rng, &c);
        j->ns_per_op = (double)(mono_ns() - t0) / (double)j->iters;
        j->cpu_ns_per_op = (double)(cpu_ns() - c0) / (double)j->iters;
    }
    free(chain);
    return NULL;
}

/* Run nthreads jobs at once (one: on this thread). Returns false when a decision failed. */
static bool run_parallel(struct job *jobs, int nthreads)
{
    if (nthreads == 1) {
        jobs[0].start = NULL;
        run_job(&jobs[0]);
        return !jobs[0].failed;
    }
    pthread_barrier_t start;
    pthread_t th[64];
    pthread_barrier_init(&start, NULL, (unsigned)nthreads);
    for (int t = 0; t < nthreads; t++) {
        jobs[t].start = &start;
        if (pthread_create(&th[t], NULL, run_job, &jobs[t]) != 0) {
            fprintf(stderr, "route_bench: cannot start a thread\n");
            exit(1);
        }
    }
    bool ok = true;
    for (int t = 0; t < nthreads; t++) {
        pthread_join(th[t], NULL);
        ok &= !jobs[t].failed;
    }
    pthread_barrier_destroy(&start);
    return ok;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

struct row {
    double med_ns, best_ns;        /* per decision, whole-run timing */
    double med_cpu_ns;             /* per decision, the threads' CPU time */
    double p50_ns, p99_ns, max_ns; /* per decision, timed one by one */
};

/* R runs of `iters` decisions on nthreads threads, then `samples` decisions per thread timed
 * one by one. Exits on a failed decision. */
static struct row measure(const struct ctx *x, const size_t *kinds, size_t n_kinds, int nthreads,
                          long iters, int runs, long samples)
{
    struct job jobs[64];
    double *per_run = calloc((size_t)runs * (size_t)nthreads, sizeof(double));
    double *per_run_cpu = calloc((size_t)runs * (size_t)nthreads, sizeof(double));
    uint64_t *all = calloc((size_t)samples * (size_t)nthreads, sizeof(uint64_t));
    struct row row = {0};
    if (per_run == NULL || per_run_cpu == NULL || all == NULL) {
        fprintf(stderr, "route_bench: out of memory\n");
        exit(1);
    }
    for (int r = -1; r < runs; r++) { /* run -1 is a warm-up */
        for (int t = 0; t < nthreads; t++)
            jobs[t] = (struct job){.x = x,
                                   .kinds = kinds,
                                   .n_kinds = n_kinds,
                                   .iters = r < 0 ? iters / 4 + 1 : iters,
                                   .seed = 0x9e3779b97f4a7c15ull * (uint64_t)(t + 1) + (uint64_t)r};
        if (!run_parallel(jobs, nthreads)) {
            fprintf(stderr, "route_bench: a decision found no route\n");
            exit(1);
        }
        for (int t = 0; r >= 0 && t < nthreads; t++) {
            per_run[r * nthreads + t] = jobs[t].ns_per_op;
            per_run_cpu[r * nthreads + t] = jobs[t].cpu_ns_per_op;
        }
    }
    size_t n = (size_t)runs * (size_t)nthreads;
    qsort(per_run, n, sizeof(double), cmp_double);
    row.med_ns = per_run[n / 2];
    row.best_ns = per_run[0];
    qsort(per_run_cpu, n, sizeof(double), cmp_double);
    row.med_cpu_ns = per_run_cpu[n / 2];
    for (int t = 0; t < nthreads; t++)
        jobs[t] = (struct job){.x = x,
                               .kinds = kinds,
                               .n_kinds = n_kinds,
                               .seed = 0x5851f42d4c957f2dull + (uint64_t)t,
                               .samples = all + (size_t)t * (size_t)samples,
                               .n_samples = samples};
    if (!run_parallel(jobs, nthreads)) {
        fprintf(stderr, "route_bench: a decision found no route\n");
        exit(1);
    }
    n = (size_t)samples * (size_t)nthreads;
    qsort(all, n, sizeof(uint64_t), cmp_u64);
    row.p50_ns = (double)all[n / 2];
    row.p99_ns = (double)all[(size_t)((double)n * 0.99)];
    row.max_ns = (double)all[n - 1];
    free(per_run);
    free(per_run_cpu);
    free(all);
    return row;
}

/* The cost of the clock read around each sampled decision (included in the samples). */
static double timer_overhead_ns(void)
{
    enum { N = 200000 };
    uint64_t t0 = mono_ns();
    volatile uint64_t sink = 0;
    for (int i = 0; i < N; i++)
        sink += mono_ns();
    (void)sink;
    return (double)(mono_ns() - t0) / N;
}

/* ---- main -------------------------------------------------------------------------------------
 */

static void usage(void)
{
    fprintf(stderr, "usage: route_bench [--iters N] [--runs R] [--samples S] [--threads T]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    long iters = 200000, samples = 200000;
    int runs = 7, threads = 2;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            usage();
        long v = strtol(argv[++i], NULL, 10);
        if (v <= 0)
            usage();
        if (strcmp(a, "--iters") == 0)
            iters = v;
        else if (strcmp(a, "--runs") == 0)
            runs = (int)v;
        else if (strcmp(a, "--samples") == 0)
            samples = v;
        else if (strcmp(a, "--threads") == 0 && v <= 64)
            threads = (int)v;
        else
            usage();
    }

    /* The providers' key variable: a provider without its key is disabled and routes nothing. */
    setenv("ROUTE_BENCH_KEY", "not-a-real-key", 1);
    ap_config *cfg = NULL;
    ap_breaker_set *breakers = NULL;
    ap_error err = {0};
    if (ap_config_load_buffer(CONFIG_YAML, sizeof(CONFIG_YAML) - 1, "route_bench.yaml", NULL, &cfg,
                              &err) != AP_OK) {
        fprintf(stderr, "route_bench: config: %s\n", err.msg);
        return 1;
    }
    for (size_t i = 0; i < cfg->n_warnings; i++)
        fprintf(stderr, "route_bench: config warning: %s\n", cfg->warnings[i]);
    /* The config's breaker options with a day's cooldown: the deployment opened below stays
     * OPEN for the whole run (no probes), and one that opens by chance stays open too. */
    ap_breaker_opts bo = cfg->breaker;
    bo.cooldown_ms = 86400000;
    if (ap_breaker_set_new(&bo, &breakers, &err) != AP_OK) {
        fprintf(stderr, "route_bench: breakers: %s\n", err.msg);
        ap_config_free(cfg);
        return 1;
    }
    /* Open it the way traffic would: failures in a row (consecutive_failures, or enough for
     * the error-rate rule). */
    int64_t now = mono_ms();
    for (int i = 0; i < 1000 && ap_breaker_state_get(breakers, OPEN_DEPLOYMENT) != AP_BREAKER_OPEN;
         i++) {
        bool probe = false;
        if (ap_breaker_allow(breakers, OPEN_DEPLOYMENT, now, &probe))
            ap_breaker_record(breakers, OPEN_DEPLOYMENT, now, false, probe);
    }
    if (ap_breaker_state_get(breakers, OPEN_DEPLOYMENT) != AP_BREAKER_OPEN) {
        fprintf(stderr, "route_bench: could not open %s\n", OPEN_DEPLOYMENT);
        ap_breaker_set_free(breakers);
        ap_config_free(cfg);
        return 1;
    }
    requests_init();
    struct ctx x = {cfg, breakers};

    /* Check that every kind routes as intended before timing anything. */
    ap_chain *chain = malloc(sizeof(*chain));
    uint64_t rng = 1;
    int rc = 1;
    if (chain == NULL)
        goto out;
    printf("route_bench: %zu routing rules, %zu models, %zu providers; ap_chain is %zu bytes\n\n",
           cfg->n_routes, cfg->n_models, cfg->n_providers, sizeof(ap_chain));
    printf("| request kind | prompt | rule | chain | first step, deployment |\n");
    printf("| --- | ---: | --- | --- | --- |\n");
    for (size_t k = 0; k <= N_KINDS; k++) {
        struct choice c = {0};
        if (!decide(&x, &REQS[k], chain, &rng, &c)) {
            fprintf(stderr, "route_bench: \"%s\" found no route\n", REQS[k].label);
            goto out;
        }
        const char *got = c.rule ? c.rule->name : NULL;
        if ((got == NULL) != (REQS[k].want_rule == NULL) ||
            (got != NULL && strcmp(got, REQS[k].want_rule) != 0)) {
            fprintf(stderr, "route_bench: \"%s\" matched rule %s, expected %s\n", REQS[k].label,
                    got ? got : "(none)", REQS[k].want_rule ? REQS[k].want_rule : "(none)");
            goto out;
        }
        char steps[256] = "";
        size_t used = 0;
        for (size_t s = 0; s < chain->n_steps && used < sizeof(steps); s++)
            used += (size_t)snprintf(steps + used, sizeof(steps) - used, "%s%s", s ? " > " : "",
                                     chain->step[s].model);
        const ap_chain_step *st = &chain->step[c.step];
        printf("| %s | %zu B | %s | %s | %s, %s |\n", REQS[k].label, REQS[k].f.prompt_len,
               got ? got : "(none)", steps, st->model, c.dep >= 0 ? st->dep[c.dep].key : "-");
    }

    static const size_t MIX[N_KINDS] = {0, 1, 2, 3, 4, 5, 6, 7};
    static const size_t WORST[1] = {0}, BIG[1] = {N_KINDS};
    struct {
        const char *name;
        const size_t *kinds;
        size_t n;
        long div; /* fewer decisions for the slow row */
    } rows[] = {{"mix of the 8 kinds", MIX, N_KINDS, 1},
                {"no rule matches (worst case)", WORST, 1, 1},
                {"no rule matches, 16 KB prompt", BIG, 1, 10}};
    printf("\nclock_gettime: %.0f ns per call (each sampled decision includes one)\n",
           timer_overhead_ns());
    printf("%d runs of %ld decisions per thread; %ld decisions per thread timed one by one (a "
           "tenth of each for the 16 KB row)\n\n",
           runs, iters, samples);
    printf("| requests | threads | wall ns/decision, median run | best run | CPU ns/decision, "
           "median run | per-call p50 | p99 | max |\n");
    printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        int tcounts[2] = {1, threads};
        for (int ti = 0; ti < (threads > 1 ? 2 : 1); ti++) {
            struct row m = measure(&x, rows[r].kinds, rows[r].n, tcounts[ti],
                                   iters / rows[r].div + 1, runs, samples / rows[r].div + 1);
            printf("| %s | %d | %.0f ns | %.0f ns | %.0f ns | %.0f ns | %.0f ns | %.1f us |\n",
                   rows[r].name, tcounts[ti], m.med_ns, m.best_ns, m.med_cpu_ns, m.p50_ns, m.p99_ns,
                   m.max_ns / 1e3);
            fflush(stdout);
        }
    }
    rc = 0;
out:
    free(chain);
    ap_breaker_set_free(breakers);
    ap_config_free(cfg);
    return rc;
}
