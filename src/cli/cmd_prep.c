/*
 * cmd_prep.c - aperture prep: preprocess images, in parallel, and summarise what it saved.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aperture/hash.h"
#include "aperture/prep.h"
#include "aperture/tokens.h"
#include "cli/cli.h"

static const char prep_usage[] =
    "usage: aperture prep IN... [-o OUT | --out-dir DIR] [options]\n"
    "\n"
    "Preprocess images for a vision model: decode (format sniffed from bytes), apply EXIF\n"
    "orientation, strip all metadata, convert to sRGB, flatten alpha onto white, resize, and\n"
    "re-encode. Prints one line per image and a summary.\n"
    "\n"
    "  -o, --output OUT     write the processed image to OUT (one input only)\n"
    "  --out-dir DIR        write each processed image into DIR (NAME.jpg|png|webp)\n"
    "  --target P           default|anthropic|openai-high|openai-low|thumbnail|gemini|none\n"
    "  --max-edge N         long edge limit in px (default 1568)\n"
    "  --max-pixels N       output pixel-count limit\n"
    "  --max-input-pixels N refuse inputs over N pixels (default 100000000)\n"
    "  --max-bytes N        refuse inputs over N bytes (default 20971520)\n"
    "  --quality Q          JPEG/WebP quality 1..100 (default 78)\n"
    "  --format F           jpeg|png|webp (default jpeg)\n"
    "  --trim               crop uniform borders (document margins)\n"
    "  --gray               convert to grayscale\n"
    "  --model M            model for the summary's tokens and USD (default by target)\n"
    "  --json               one JSON object per input on stdout instead of the table\n"
    "  --jobs N             worker threads (default: all cores; 1 = one thread)\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 all processed, 1 some inputs refused, 2 usage error.\n";

struct prep_item {
    const char *path;
    ap_status rc;
    char msg[AP_ERROR_MSG_MAX + 64];
    ap_prep_result res;
    char out_path[4096];
    uint64_t tok_before, tok_after;
};

struct prep_job {
    ap_prep_opts opts;
    struct prep_item *items;
    const char *output, *out_dir;
    const char *model;
};

static const char *ext_for(ap_encoding e)
{
    return e == AP_ENC_PNG ? "png" : e == AP_ENC_WEBP ? "webp" : "jpg";
}

/* Write atomically: a temporary file renamed into place, so a failure leaves no partial file. */
static int write_file(const char *path, const uint8_t *buf, size_t len, char *msg, size_t cap)
{
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (f == NULL) {
        snprintf(msg, cap, "AP_EIO: cannot write \"%.200s\": %s", path, strerror(errno));
        return -1;
    }
    size_t w = fwrite(buf, 1, len, f);
    if (fclose(f) != 0 || w != len || rename(tmp, path) != 0) {
        snprintf(msg, cap, "AP_EIO: cannot write \"%.200s\": %s", path, strerror(errno));
        remove(tmp);
        return -1;
    }
    return 0;
}

static void out_name(const struct prep_job *job, const char *in, char *buf, size_t cap)
{
    const char *base = strrchr(in, '/');
    base = base ? base + 1 : in;
    const char *dot = strrchr(base, '.');
    int n = dot && dot != base ? (int)(dot - base) : (int)strlen(base);
    snprintf(buf, cap, "%s/%.*s.%s", job->out_dir, n, base, ext_for(job->opts.encoding));
}

static void prep_one(size_t i, void *ctx)
{
    struct prep_job *job = ctx;
    struct prep_item *it = &job->items[i];
    uint8_t *buf = NULL;
    size_t len = 0;
    ap_error err = {0};

    if (ap_cli_read_file(it->path, job->opts.max_input_bytes, &buf, &len, it->msg,
                         sizeof(it->msg)) != 0) {
        it->rc = AP_EIO;
        return;
    }
    it->rc = ap_prep(buf, len, &job->opts, &it->res, &err);
    free(buf);
    if (it->rc != AP_OK) {
        snprintf(it->msg, sizeof(it->msg), "%s: %s", ap_strerror(it->rc), err.msg);
        return;
    }
    /* Tokens at the summary model, for the image as sent raw (the provider's own resize
     * applies) and as processed. */
    ap_tokens_result tr;
    bool swap = it->res.orientation >= 5;
    uint32_t dw = swap ? it->res.in_height : it->res.in_width;
    uint32_t dh = swap ? it->res.in_width : it->res.in_height;
    if (ap_tokens_estimate(job->model, dw, dh, AP_TOKENS_DETAIL_AUTO, &tr, NULL) == AP_OK)
        it->tok_before = tr.tokens;
    if (ap_tokens_estimate(job->model, it->res.out_width, it->res.out_height,
                           AP_TOKENS_DETAIL_AUTO, &tr, NULL) == AP_OK)
        it->tok_after = tr.tokens;
    if (job->output || job->out_dir) {
        if (job->output)
            snprintf(it->out_path, sizeof(it->out_path), "%s", job->output);
        else
            out_name(job, it->path, it->out_path, sizeof(it->out_path));
        if (write_file(it->out_path, it->res.out, it->res.out_len, it->msg, sizeof(it->msg))) {
            it->rc = AP_EIO;
            it->out_path[0] = '\0';
        }
    }
}

static void print_json(const struct prep_item *it)
{
    const ap_prep_result *r = &it->res;
    printf("{\"input\":");
    ap_cli_json_str(stdout, it->path);
    if (it->rc != AP_OK) {
        ap_cli_json_refusal(stdout, ap_strerror(it->rc), it->msg);
        return;
    }
    char meta[128], ph[17], dh[17];
    ap_meta_describe(r->meta_removed, meta, sizeof(meta));
    ap_hash64_hex(r->phash, ph);
    ap_hash64_hex(r->dhash, dh);
    printf(",\"ok\":true,\"format\":\"%s\",\"width\":%u,\"height\":%u,\"bytes\":%zu,"
           "\"out_width\":%u,\"out_height\":%u,\"out_bytes\":%zu,\"out_channels\":%u,"
           "\"media_type\":\"%s\",\"sha256\":\"%s\",\"phash\":\"%s\",\"dhash\":\"%s\","
           "\"orientation\":%d,\"metadata_removed\":\"%s\",\"icc_converted\":%s,"
           "\"icc_description\":",
           ap_format_name(r->in_format), r->in_width, r->in_height, r->in_bytes, r->out_width,
           r->out_height, r->out_len, r->out_channels, r->out_media_type, r->sha256_hex, ph, dh,
           r->orientation, meta, r->icc_converted ? "true" : "false");
    ap_cli_json_str(stdout, r->icc_description);
    printf(",\"cmyk\":%s,\"alpha_flattened\":%s,\"trimmed\":%s,\"decode_scale\":%u,"
           "\"warnings\":{\"small\":%s,\"icc_ignored\":%s,\"multi_frame\":%s,"
           "\"trailing_data\":%s},"
           "\"tokens_before\":%llu,\"tokens_after\":%llu,"
           "\"ms\":{\"decode\":%.2f,\"orient\":%.2f,\"color\":%.2f,\"resample\":%.2f,"
           "\"encode\":%.2f,\"hash\":%.2f,\"total\":%.2f}",
           r->cmyk ? "true" : "false", r->had_alpha ? "true" : "false",
           r->trimmed ? "true" : "false", r->decode_scale,
           (r->warnings & AP_WARN_SMALL) ? "true" : "false",
           (r->warnings & AP_WARN_ICC_IGNORED) ? "true" : "false",
           (r->warnings & AP_WARN_MULTI_FRAME) ? "true" : "false",
           (r->warnings & AP_WARN_TRAILING_DATA) ? "true" : "false",
           (unsigned long long)it->tok_before, (unsigned long long)it->tok_after, r->ms.decode_ms,
           r->ms.orient_ms, r->ms.color_ms, r->ms.resample_ms, r->ms.encode_ms, r->ms.hash_ms,
           r->ms.total_ms);
    if (it->out_path[0]) {
        printf(",\"output\":");
        ap_cli_json_str(stdout, it->out_path);
    }
    printf("}\n");
}

static const char *default_model(const char *target)
{
    if (strncmp(target, "openai", 6) == 0)
        return "gpt-4o";
    if (strcmp(target, "anthropic") == 0)
        return "claude-sonnet-4-5";
    /* Gemini bills per 768-px tile, so it shows what resizing saves where the provider does
     * not resize for you. */
    return "gemini-2.0-flash";
}

int cmd_prep(int argc, char **argv)
{
    enum { O_OUTDIR = 256, O_TARGET, O_EDGE, O_PIX, O_INPIX, O_BYTES, O_Q, O_FMT, O_TRIM,
           O_GRAY, O_JSON, O_JOBS, O_MODEL };
    static const struct option lo[] = {
        {"output", required_argument, 0, 'o'},   {"out-dir", required_argument, 0, O_OUTDIR},
        {"target", required_argument, 0, O_TARGET}, {"max-edge", required_argument, 0, O_EDGE},
        {"max-pixels", required_argument, 0, O_PIX},
        {"max-input-pixels", required_argument, 0, O_INPIX},
        {"max-bytes", required_argument, 0, O_BYTES}, {"quality", required_argument, 0, O_Q},
        {"format", required_argument, 0, O_FMT},  {"trim", no_argument, 0, O_TRIM},
        {"gray", no_argument, 0, O_GRAY},         {"json", no_argument, 0, O_JSON},
        {"jobs", required_argument, 0, O_JOBS},   {"model", required_argument, 0, O_MODEL},
        {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
    struct prep_job job = {0};
    const char *target = "default";
    int json = 0, jobs = ap_cli_ncpus(), c;
    long long edge = -1, pix = -1;
    char *end;

    ap_prep_opts_init(&job.opts);
    ap_prep_opts opts_cli = job.opts;
    optind = 1;
    while ((c = getopt_long(argc, argv, "o:h", lo, NULL)) != -1) {
        switch (c) {
        case 'o': job.output = optarg; break;
        case O_OUTDIR: job.out_dir = optarg; break;
        case O_TARGET: target = optarg; break;
        case O_EDGE:
        case O_PIX:
        case O_INPIX:
        case O_BYTES:
        case O_Q:
        case O_JOBS: {
            errno = 0;
            long long v = strtoll(optarg, &end, 10);
            if (errno || *end || v < 0) {
                fprintf(stderr, "aperture prep: bad number \"%s\"\n", optarg);
                return AP_EXIT_USAGE;
            }
            if (c == O_EDGE)
                edge = v;
            else if (c == O_PIX)
                pix = v;
            else if (c == O_INPIX)
                opts_cli.max_pixels = (uint64_t)v;
            else if (c == O_BYTES)
                opts_cli.max_input_bytes = (size_t)v;
            else if (c == O_Q)
                opts_cli.quality = (int)v;
            else
                jobs = (int)v;
            break;
        }
        case O_FMT:
            if (strcmp(optarg, "jpeg") == 0 || strcmp(optarg, "jpg") == 0)
                opts_cli.encoding = AP_ENC_JPEG;
            else if (strcmp(optarg, "png") == 0)
                opts_cli.encoding = AP_ENC_PNG;
            else if (strcmp(optarg, "webp") == 0)
                opts_cli.encoding = AP_ENC_WEBP;
            else {
                fprintf(stderr, "aperture prep: unknown format \"%s\"\n", optarg);
                return AP_EXIT_USAGE;
            }
            break;
        case O_TRIM: opts_cli.trim = true; break;
        case O_GRAY: opts_cli.gray = true; break;
        case O_JSON: json = 1; break;
        case O_MODEL: job.model = optarg; break;
        case 'h': fputs(prep_usage, stdout); return AP_EXIT_OK;
        default: fputs(prep_usage, stderr); return AP_EXIT_USAGE;
        }
    }
    job.opts = opts_cli;
    if (ap_prep_opts_target(&job.opts, target) != AP_OK) {
        fprintf(stderr, "aperture prep: unknown target \"%s\"\n", target);
        return AP_EXIT_USAGE;
    }
    if (edge >= 0)
        job.opts.max_edge = (uint32_t)edge;
    if (pix >= 0)
        job.opts.max_out_pixels = (uint64_t)pix;
    if (job.opts.quality < 1 || job.opts.quality > 100) {
        fprintf(stderr, "aperture prep: quality must be 1..100\n");
        return AP_EXIT_USAGE;
    }
    int n = argc - optind;
    if (n <= 0) {
        fputs(prep_usage, stderr);
        return AP_EXIT_USAGE;
    }
    if (job.output && job.out_dir) {
        fprintf(stderr, "aperture prep: -o and --out-dir are exclusive\n");
        return AP_EXIT_USAGE;
    }
    if (job.output && n > 1) {
        fprintf(stderr, "aperture prep: -o takes one input; use --out-dir for several\n");
        return AP_EXIT_USAGE;
    }
    if (job.model == NULL)
        job.model = default_model(target);

    job.items = calloc((size_t)n, sizeof(*job.items));
    if (job.items == NULL) {
        fprintf(stderr, "aperture prep: out of memory\n");
        return AP_EXIT_REFUSED;
    }
    for (int i = 0; i < n; i++)
        job.items[i].path = argv[optind + i];
    ap_cli_parallel((size_t)n, jobs, "prep", prep_one, &job);

    int refused = 0;
    size_t bytes_in = 0, bytes_out = 0, ok = 0;
    uint64_t tok_b = 0, tok_a = 0;
    if (!json) {
        printf("%-40s %6s %11s %11s %9s %9s %7s %7s %8s\n", "input", "format", "in", "out",
               "in KB", "out KB", "tok in", "tok out", "ms");
    }
    for (int i = 0; i < n; i++) {
        struct prep_item *it = &job.items[i];
        if (json)
            print_json(it);
        if (it->rc != AP_OK) {
            refused++;
            fprintf(stderr, "aperture prep: %s: %s\n", it->path, it->msg);
            continue;
        }
        const ap_prep_result *r = &it->res;
        ok++;
        bytes_in += r->in_bytes;
        bytes_out += r->out_len;
        tok_b += it->tok_before;
        tok_a += it->tok_after;
        if (!json) {
            char in_sz[32], out_sz[32];
            const char *base = strrchr(it->path, '/');
            base = base ? base + 1 : it->path;
            snprintf(in_sz, sizeof(in_sz), "%ux%u", r->in_width, r->in_height);
            snprintf(out_sz, sizeof(out_sz), "%ux%u", r->out_width, r->out_height);
            printf("%-40.40s %6s %11s %11s %9.1f %9.1f %7llu %7llu %8.1f\n", base,
                   ap_format_name(r->in_format), in_sz, out_sz, r->in_bytes / 1024.0,
                   r->out_len / 1024.0, (unsigned long long)it->tok_before,
                   (unsigned long long)it->tok_after, r->ms.total_ms);
        }
    }
    double usd_b = 0, usd_a = 0;
    int priced = ap_tokens_cost(NULL, job.model, tok_b, &usd_b, NULL) == AP_OK &&
                 ap_tokens_cost(NULL, job.model, tok_a, &usd_a, NULL) == AP_OK;
    FILE *sf = json ? stderr : stdout;
    fprintf(sf,
            "\nsummary: %zu images (%d refused), %.2f MB in -> %.2f MB out, tokens at %s: %llu "
            "-> %llu",
            ok, refused, bytes_in / 1048576.0, bytes_out / 1048576.0, job.model,
            (unsigned long long)tok_b, (unsigned long long)tok_a);
    if (priced)
        fprintf(sf, ", USD saved: %.6f (%.6f -> %.6f)", usd_b - usd_a, usd_b, usd_a);
    fprintf(sf, "\n");
    for (int i = 0; i < n; i++)
        ap_prep_result_release(&job.items[i].res);
    free(job.items);
    return refused ? AP_EXIT_REFUSED : AP_EXIT_OK;
}
