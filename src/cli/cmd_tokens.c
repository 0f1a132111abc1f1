/*
 * cmd_tokens.c - aperture tokens: what each image costs per model in input tokens and USD, as
 * sent raw (the provider's own resize applies) and after aperture's preprocessing for that model.
 *
 * Per input: read once, run ap_prep once per distinct preprocessing target among the models
 * (hashing off: only sizes matter here), then estimate each model twice. Inputs run in parallel;
 * results print in input order.
 */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aperture/prep.h"
#include "aperture/tokens.h"
#include "cli/cli.h"

static const char tokens_usage[] =
    "usage: aperture tokens IN... [--model M]... [options]\n"
    "\n"
    "Estimate the input tokens and USD each image costs per model: as sent raw (the provider\n"
    "resizes it by its own rules) and after aperture's preprocessing for that model. Each\n"
    "provider's published sizing rule is applied; see docs/internals/tokens.md.\n"
    "\n"
    "  --model M        a model to estimate; repeat for several (default: gpt-4o,\n"
    "                   gpt-4.1-mini, claude-sonnet-4-5, gemini-2.0-flash, qwen2.5-vl-7b)\n"
    "  --detail D       OpenAI detail low|high|auto (default auto, estimated as high); low\n"
    "                   also selects Gemini 3's low media resolution\n"
    "  --target P       preprocessing target for every model (default per model: openai-high,\n"
    "                   openai-low with --detail low, anthropic, gemini, or default)\n"
    "  --prices FILE    price overrides, one \"model usd_per_mtok_input [usd_per_mtok_output]\"\n"
    "                   per line, '#' comments (built in: list prices as of late 2025)\n"
    "  --json           one JSON object per input on stdout instead of the table\n"
    "  --jobs N         worker threads (default: all cores; 1 = one thread)\n"
    "  -h, --help       this text\n"
    "\n"
    "Exit status: 0 all estimated, 1 some inputs refused, 2 usage error.\n";

static const char *const default_models[] = {"gpt-4o", "gpt-4.1-mini", "claude-sonnet-4-5",
                                             "gemini-2.0-flash", "qwen2.5-vl-7b"};

enum { MAX_MODELS = 64 };

/* One model's row: its target, price, and the two estimates (filled per input). */
struct model_cfg {
    const char *name;
    const char *target; /* static string or argv */
    size_t target_idx;  /* index into tokens_job.targets */
    bool priced;
    double usd_per_mtok; /* input price when priced */
};

struct estimate {
    ap_status rc;
    ap_tokens_result r;
    char msg[AP_ERROR_MSG_MAX];
};

struct tokens_item {
    const char *path;
    ap_status rc;
    char msg[AP_ERROR_MSG_MAX + 64];
    ap_format format;
    size_t in_bytes;
    uint32_t width, height;          /* displayed orientation */
    uint32_t *out_w, *out_h;         /* per target */
    struct estimate *before, *after; /* per model */
};

struct tokens_job {
    struct model_cfg models[MAX_MODELS];
    size_t n_models;
    int name_w;                      /* width of the model column */
    const char *targets[MAX_MODELS]; /* distinct, in first-use order */
    size_t n_targets;
    ap_tokens_detail detail;
    size_t max_input_bytes;
    struct tokens_item *items;
};

/* The preprocessing target a model is compared at, unless --target says otherwise. */
static const char *target_for(const char *model, ap_tokens_detail detail)
{
    switch (ap_tokens_model_formula(model)) {
    case AP_TOKENS_OPENAI_TILE:
        return detail == AP_TOKENS_DETAIL_LOW ? "openai-low" : "openai-high";
    case AP_TOKENS_OPENAI_PATCH:
        return "openai-high";
    case AP_TOKENS_ANTHROPIC:
        return "anthropic";
    case AP_TOKENS_GEMINI_TILE:
    case AP_TOKENS_GEMINI_FIXED:
        return "gemini";
    case AP_TOKENS_QWEN2_VL:
    case AP_TOKENS_GENERIC_PATCH:
        break;
    }
    return "default";
}

static void estimate_into(const struct tokens_job *job, const char *model, uint32_t w, uint32_t h,
                          struct estimate *e)
{
    ap_error err = {0};
    e->rc = ap_tokens_estimate(model, w, h, job->detail, &e->r, &err);
    if (e->rc != AP_OK)
        snprintf(e->msg, sizeof(e->msg), "%s", err.msg);
}

static void tokens_one(size_t i, void *ctx)
{
    struct tokens_job *job = ctx;
    struct tokens_item *it = &job->items[i];
    uint8_t *buf = NULL;
    size_t len = 0;

    if (ap_cli_read_file(it->path, job->max_input_bytes, &buf, &len, it->msg, sizeof(it->msg)) !=
        0) {
        it->rc = AP_EIO;
        return;
    }
    for (size_t t = 0; t < job->n_targets; t++) {
        ap_prep_opts opts;
        ap_prep_result res;
        ap_error err = {0};
        ap_prep_opts_init(&opts);
        opts.no_hash = true;
        /* Checked when the options were parsed. */
        if (ap_prep_opts_target(&opts, job->targets[t]) != AP_OK ||
            (it->rc = ap_prep(buf, len, &opts, &res, &err)) != AP_OK) {
            if (it->rc == AP_OK)
                it->rc = AP_EINTERNAL;
            snprintf(it->msg, sizeof(it->msg), "%s: %s", ap_strerror(it->rc), err.msg);
            goto out;
        }
        if (t == 0) {
            bool swap = res.orientation >= 5; /* 5..8 transpose: displayed w/h swap */
            it->format = res.in_format;
            it->in_bytes = res.in_bytes;
            it->width = swap ? res.in_height : res.in_width;
            it->height = swap ? res.in_width : res.in_height;
        }
        it->out_w[t] = res.out_width;
        it->out_h[t] = res.out_height;
        ap_prep_result_release(&res);
    }
    for (size_t m = 0; m < job->n_models; m++) {
        const struct model_cfg *mc = &job->models[m];
        estimate_into(job, mc->name, it->width, it->height, &it->before[m]);
        estimate_into(job, mc->name, it->out_w[mc->target_idx], it->out_h[mc->target_idx],
                      &it->after[m]);
    }
out:
    free(buf);
}

/* "1234" or "-" for a failed estimate; "0.001913" or "-" for no price. */
static void fmt_tokens(char *b, size_t cap, const struct estimate *e)
{
    if (e->rc == AP_OK)
        snprintf(b, cap, "%llu", (unsigned long long)e->r.tokens);
    else
        snprintf(b, cap, "-");
}

static void fmt_usd(char *b, size_t cap, const struct model_cfg *mc, const struct estimate *e)
{
    if (e->rc == AP_OK && mc->priced)
        snprintf(b, cap, "%.6f", ap_tokens_usd(e->r.tokens, mc->usd_per_mtok));
    else
        snprintf(b, cap, "-");
}

static void print_table(const struct tokens_job *job, const struct tokens_item *it)
{
    char sz[32], tb[24], ta[24], ub[24], ua[24], osz[32], saved[16];
    const char *base = strrchr(it->path, '/');
    base = base ? base + 1 : it->path;
    snprintf(sz, sizeof(sz), "%ux%u", (unsigned)it->width, (unsigned)it->height);
    printf("%s  %s %s, %.1f KB\n", base, ap_format_name(it->format), sz, it->in_bytes / 1024.0);
    printf("  %-*s %-12s %9s %11s  %-11s %9s %11s %7s\n", job->name_w, "model", "target", "tokens",
           "usd", "processed", "tokens", "usd", "saved");
    for (size_t m = 0; m < job->n_models; m++) {
        const struct model_cfg *mc = &job->models[m];
        const struct estimate *b = &it->before[m], *a = &it->after[m];
        fmt_tokens(tb, sizeof(tb), b);
        fmt_tokens(ta, sizeof(ta), a);
        fmt_usd(ub, sizeof(ub), mc, b);
        fmt_usd(ua, sizeof(ua), mc, a);
        snprintf(osz, sizeof(osz), "%ux%u", (unsigned)it->out_w[mc->target_idx],
                 (unsigned)it->out_h[mc->target_idx]);
        if (b->rc == AP_OK && a->rc == AP_OK && b->r.tokens > 0)
            snprintf(saved, sizeof(saved), "%.1f%%",
                     100.0 * ((double)b->r.tokens - (double)a->r.tokens) / (double)b->r.tokens);
        else
            snprintf(saved, sizeof(saved), "-");
        printf("  %-*s %-12s %9s %11s  %-11s %9s %11s %7s\n", job->name_w, mc->name, mc->target, tb,
               ub, osz, ta, ua, saved);
        /* A model whose own processor refuses the size says why, under its row. */
        if (b->rc != AP_OK)
            printf("  %*s raw: %s\n", job->name_w, "", b->msg);
        if (a->rc != AP_OK)
            printf("  %*s processed: %s\n", job->name_w, "", a->msg);
    }
}

static void print_json_estimate(const struct model_cfg *mc, const struct estimate *e, uint32_t w,
                                uint32_t h)
{
    printf("{\"width\":%u,\"height\":%u,", (unsigned)w, (unsigned)h);
    if (e->rc != AP_OK) {
        printf("\"error\":");
        ap_cli_json_str(stdout, ap_strerror(e->rc));
        printf(",\"message\":");
        ap_cli_json_str(stdout, e->msg);
        printf("}");
        return;
    }
    printf("\"tokens\":%llu,\"billed_width\":%u,\"billed_height\":%u,\"units\":%llu,\"how\":",
           (unsigned long long)e->r.tokens, (unsigned)e->r.eff_width, (unsigned)e->r.eff_height,
           (unsigned long long)e->r.units);
    ap_cli_json_str(stdout, e->r.how);
    if (mc->priced)
        printf(",\"usd\":%.9f}", ap_tokens_usd(e->r.tokens, mc->usd_per_mtok));
    else
        printf(",\"usd\":null}");
}

static void print_json(const struct tokens_job *job, const struct tokens_item *it)
{
    printf("{\"input\":");
    ap_cli_json_str(stdout, it->path);
    if (it->rc != AP_OK) {
        ap_cli_json_refusal(stdout, ap_strerror(it->rc), it->msg);
        return;
    }
    printf(",\"ok\":true,\"format\":\"%s\",\"width\":%u,\"height\":%u,\"bytes\":%zu,"
           "\"detail\":\"%s\",\"models\":[",
           ap_format_name(it->format), (unsigned)it->width, (unsigned)it->height, it->in_bytes,
           ap_tokens_detail_name(job->detail));
    for (size_t m = 0; m < job->n_models; m++) {
        const struct model_cfg *mc = &job->models[m];
        const struct estimate *b = &it->before[m], *a = &it->after[m];
        printf("%s{\"model\":", m ? "," : "");
        ap_cli_json_str(stdout, mc->name);
        printf(",\"target\":");
        ap_cli_json_str(stdout, mc->target);
        printf(",\"formula\":\"%s\",\"usd_per_mtok_input\":",
               ap_tokens_formula_name(ap_tokens_model_formula(mc->name)));
        if (mc->priced)
            printf("%g", mc->usd_per_mtok);
        else
            printf("null");
        printf(",\"before\":");
        print_json_estimate(mc, b, it->width, it->height);
        printf(",\"after\":");
        print_json_estimate(mc, a, it->out_w[mc->target_idx], it->out_h[mc->target_idx]);
        printf("}");
    }
    printf("]}\n");
}

/* Totals per model over the inputs that were estimated both ways. */
static void print_totals(const struct tokens_job *job, size_t n_items, size_t n_ok)
{
    printf("total over %zu images\n", n_ok);
    printf("  %-*s %-12s %9s %11s  %-11s %9s %11s %7s\n", job->name_w, "model", "target", "tokens",
           "usd", "", "tokens", "usd", "saved");
    for (size_t m = 0; m < job->n_models; m++) {
        const struct model_cfg *mc = &job->models[m];
        unsigned long long tb = 0, ta = 0;
        for (size_t i = 0; i < n_items; i++) {
            const struct tokens_item *it = &job->items[i];
            if (it->rc != AP_OK || it->before[m].rc != AP_OK || it->after[m].rc != AP_OK)
                continue;
            tb += it->before[m].r.tokens;
            ta += it->after[m].r.tokens;
        }
        char ub[24] = "-", ua[24] = "-", saved[16] = "-";
        if (mc->priced) {
            snprintf(ub, sizeof(ub), "%.6f", ap_tokens_usd(tb, mc->usd_per_mtok));
            snprintf(ua, sizeof(ua), "%.6f", ap_tokens_usd(ta, mc->usd_per_mtok));
        }
        if (tb > 0)
            snprintf(saved, sizeof(saved), "%.1f%%", 100.0 * ((double)tb - (double)ta) / tb);
        printf("  %-*s %-12s %9llu %11s  %-11s %9llu %11s %7s\n", job->name_w, mc->name, mc->target,
               tb, ub, "", ta, ua, saved);
    }
}

/* Index of target in job->targets, adding it when new. */
static size_t add_target(struct tokens_job *job, const char *target)
{
    for (size_t t = 0; t < job->n_targets; t++) {
        if (strcmp(job->targets[t], target) == 0)
            return t;
    }
    job->targets[job->n_targets] = target;
    return job->n_targets++;
}

static void usage_targets(void)
{
    fprintf(stderr, "aperture tokens: targets are:");
    for (const char *const *t = ap_prep_targets(); *t != NULL; t++)
        fprintf(stderr, " %s", *t);
    fprintf(stderr, "\n");
}

int cmd_tokens(int argc, char **argv)
{
    enum { O_MODEL = 256, O_DETAIL, O_TARGET, O_PRICES, O_JSON, O_JOBS };
    static const struct option lo[] = {{"model", required_argument, 0, O_MODEL},
                                       {"detail", required_argument, 0, O_DETAIL},
                                       {"target", required_argument, 0, O_TARGET},
                                       {"prices", required_argument, 0, O_PRICES},
                                       {"json", no_argument, 0, O_JSON},
                                       {"jobs", required_argument, 0, O_JOBS},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    struct tokens_job job;
    const char *models[MAX_MODELS];
    size_t n_models = 0;
    const char *target = NULL, *prices = NULL;
    int json = 0, jobs = ap_cli_ncpus(), c, rc = AP_EXIT_OK;
    ap_pricing *pricing = NULL;
    uint32_t *sizes = NULL;
    struct estimate *ests = NULL;
    ap_error err = {0};

    memset(&job, 0, sizeof(job));
    job.detail = AP_TOKENS_DETAIL_AUTO;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case O_MODEL:
            if (optarg[0] == '\0') {
                fprintf(stderr, "aperture tokens: empty model name\n");
                return AP_EXIT_USAGE;
            }
            if (n_models == MAX_MODELS) {
                fprintf(stderr, "aperture tokens: at most %d models\n", MAX_MODELS);
                return AP_EXIT_USAGE;
            }
            models[n_models++] = optarg;
            break;
        case O_DETAIL:
            if (ap_tokens_detail_parse(optarg, &job.detail) != AP_OK) {
                fprintf(stderr, "aperture tokens: --detail is low, high or auto, not \"%s\"\n",
                        optarg);
                return AP_EXIT_USAGE;
            }
            break;
        case O_TARGET:
            target = optarg;
            break;
        case O_PRICES:
            prices = optarg;
            break;
        case O_JSON:
            json = 1;
            break;
        case O_JOBS: {
            char *end;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || v < 1 || v > 1024) {
                fprintf(stderr, "aperture tokens: --jobs wants 1..1024, not \"%s\"\n", optarg);
                return AP_EXIT_USAGE;
            }
            jobs = (int)v;
            break;
        }
        case 'h':
            fputs(tokens_usage, stdout);
            return AP_EXIT_OK;
        default:
            fputs(tokens_usage, stderr);
            return AP_EXIT_USAGE;
        }
    }
    int n = argc - optind;
    if (n <= 0) {
        fputs(tokens_usage, stderr);
        return AP_EXIT_USAGE;
    }
    if (target != NULL) {
        ap_prep_opts probe;
        ap_prep_opts_init(&probe);
        if (ap_prep_opts_target(&probe, target) != AP_OK) {
            fprintf(stderr, "aperture tokens: unknown target \"%s\"\n", target);
            usage_targets();
            return AP_EXIT_USAGE;
        }
    }
    if (n_models == 0) {
        for (size_t i = 0; i < sizeof(default_models) / sizeof(default_models[0]); i++)
            models[n_models++] = default_models[i];
    }

    pricing = ap_pricing_new();
    if (prices != NULL && ap_pricing_load_file(pricing, prices, &err) != AP_OK) {
        fprintf(stderr, "aperture tokens: %s\n", err.msg);
        rc = AP_EXIT_USAGE;
        goto out;
    }
    job.n_models = n_models;
    job.name_w = 20;
    for (size_t m = 0; m < n_models; m++) {
        struct model_cfg *mc = &job.models[m];
        ap_price pr;
        mc->name = models[m];
        size_t nl = strlen(mc->name);
        if (nl > (size_t)job.name_w)
            job.name_w = nl > 60 ? 60 : (int)nl;
        mc->target = target != NULL ? target : target_for(mc->name, job.detail);
        mc->target_idx = add_target(&job, mc->target);
        if (ap_pricing_lookup(pricing, mc->name, &pr, NULL) == AP_OK) {
            mc->priced = true;
            mc->usd_per_mtok = pr.usd_per_mtok_input;
        }
    }
    {
        ap_prep_opts defaults;
        ap_prep_opts_init(&defaults);
        job.max_input_bytes = defaults.max_input_bytes;
    }

    /* One block each for the items, their per-target sizes and per-model estimates. */
    size_t nn = (size_t)n;
    job.items = calloc(nn, sizeof(*job.items));
    sizes = calloc(nn * job.n_targets * 2, sizeof(*sizes));
    ests = calloc(nn * job.n_models * 2, sizeof(*ests));
    if (job.items == NULL || sizes == NULL || ests == NULL) {
        fprintf(stderr, "aperture tokens: out of memory\n");
        rc = AP_EXIT_REFUSED;
        goto out;
    }
    for (size_t i = 0; i < nn; i++) {
        struct tokens_item *it = &job.items[i];
        it->path = argv[optind + (int)i];
        it->out_w = sizes + i * job.n_targets * 2;
        it->out_h = it->out_w + job.n_targets;
        it->before = ests + i * job.n_models * 2;
        it->after = it->before + job.n_models;
    }
    ap_cli_parallel(nn, jobs, "tokens", tokens_one, &job);

    size_t ok = 0;
    for (size_t i = 0; i < nn; i++) {
        const struct tokens_item *it = &job.items[i];
        if (json)
            print_json(&job, it);
        if (it->rc != AP_OK) {
            rc = AP_EXIT_REFUSED;
            fprintf(stderr, "aperture tokens: %s: %s\n", it->path, it->msg);
            continue;
        }
        ok++;
        if (!json) {
            print_table(&job, it);
            printf("\n");
        }
    }
    if (!json && ok > 1)
        print_totals(&job, nn, ok);

out:
    free(ests);
    free(sizes);
    free(job.items);
    ap_pricing_free(pricing);
    return rc;
}
