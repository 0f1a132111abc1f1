/*
 * cmd_hash.c - aperture hash: the keys a cache would use for each image, i.e. the SHA-256 of the
 * processed output (what the gateway sends and caches on) and the imagehash-compatible pHash and
 * dHash of its pixels, plus the SHA-256 of the raw input bytes, labelled as such.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aperture/hash.h"
#include "aperture/prep.h"
#include "cli/cli.h"

static const char hash_usage[] =
    "usage: aperture hash IN... [--json] [--jobs N]\n"
    "\n"
    "Preprocess each image with the default options (as 'aperture prep' does) and print:\n"
    "  phash, dhash   64-bit perceptual hashes of the processed pixels, compatible with\n"
    "                 Python imagehash's phash()/dhash() (compare by Hamming distance:\n"
    "                 re-encodes and rescales stay within a few bits)\n"
    "  sha256         of the processed output bytes: the exact-match cache key\n"
    "  input sha256   of the raw input file, for reference\n"
    "\n"
    "  --json         one JSON object per input on stdout instead of the table\n"
    "  --jobs N       worker threads (default: all cores; 1 = one thread)\n"
    "  -h, --help     this text\n"
    "\n"
    "Exit status: 0 all hashed, 1 some inputs refused, 2 usage error.\n";

struct hash_item {
    const char *path;
    ap_status rc;
    char msg[AP_ERROR_MSG_MAX + 64];
    int have_input_sha; /* the file was read, so input_sha256 is set (even if prep failed) */
    char input_sha256[65];
    ap_prep_result res;
};

struct hash_job {
    ap_prep_opts opts;
    struct hash_item *items;
};

static void hash_one(size_t i, void *ctx)
{
    struct hash_job *job = ctx;
    struct hash_item *it = &job->items[i];
    uint8_t *buf = NULL, digest[AP_SHA256_LEN];
    size_t len = 0;
    ap_error err = {0};

    if (ap_cli_read_file(it->path, job->opts.max_input_bytes, &buf, &len, it->msg,
                         sizeof(it->msg)) != 0) {
        it->rc = AP_EIO;
        return;
    }
    it->rc = ap_sha256(buf, len, digest, &err);
    if (it->rc == AP_OK) {
        ap_sha256_hex(digest, it->input_sha256);
        it->have_input_sha = 1;
        it->rc = ap_prep(buf, len, &job->opts, &it->res, &err);
    }
    free(buf);
    if (it->rc != AP_OK)
        snprintf(it->msg, sizeof(it->msg), "%s: %s", ap_strerror(it->rc), err.msg);
}

static void print_json(const struct hash_item *it)
{
    const ap_prep_result *r = &it->res;
    char ph[17], dh[17];

    printf("{\"input\":");
    ap_cli_json_str(stdout, it->path);
    if (it->have_input_sha)
        printf(",\"input_sha256\":\"%s\"", it->input_sha256);
    if (it->rc != AP_OK) {
        ap_cli_json_refusal(stdout, ap_strerror(it->rc), it->msg);
        return;
    }
    ap_hash64_hex(r->phash, ph);
    ap_hash64_hex(r->dhash, dh);
    printf(",\"ok\":true,\"sha256\":\"%s\",\"phash\":\"%s\",\"dhash\":\"%s\","
           "\"media_type\":\"%s\",\"out_width\":%u,\"out_height\":%u,\"out_bytes\":%zu}\n",
           r->sha256_hex, ph, dh, r->out_media_type, r->out_width, r->out_height, r->out_len);
}

int cmd_hash(int argc, char **argv)
{
    enum { O_JSON = 256, O_JOBS };
    static const struct option lo[] = {{"json", no_argument, 0, O_JSON},
                                       {"jobs", required_argument, 0, O_JOBS},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    struct hash_job job = {0};
    int json = 0, jobs = ap_cli_ncpus(), refused = 0, c;

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case O_JSON:
            json = 1;
            break;
        case O_JOBS: {
            char *end;
            long v;

            errno = 0;
            v = strtol(optarg, &end, 10);
            if (errno || *end || end == optarg || v < 1 || v > 1024) {
                fprintf(stderr, "aperture hash: --jobs wants 1..1024, not \"%s\"\n", optarg);
                return AP_EXIT_USAGE;
            }
            jobs = (int)v;
            break;
        }
        case 'h':
            fputs(hash_usage, stdout);
            return AP_EXIT_OK;
        default:
            fputs(hash_usage, stderr);
            return AP_EXIT_USAGE;
        }
    }
    int n = argc - optind;
    if (n <= 0) {
        fputs(hash_usage, stderr);
        return AP_EXIT_USAGE;
    }

    ap_prep_opts_init(&job.opts);
    job.items = calloc((size_t)n, sizeof(*job.items));
    if (job.items == NULL) {
        fprintf(stderr, "aperture hash: out of memory\n");
        return AP_EXIT_REFUSED;
    }
    for (int i = 0; i < n; i++)
        job.items[i].path = argv[optind + i];
    ap_cli_parallel((size_t)n, jobs, "hash", hash_one, &job);

    if (!json)
        printf("%-16s %-16s %-64s %-64s %s\n", "phash", "dhash", "sha256 (processed output)",
               "input sha256 (raw file bytes)", "input");
    for (int i = 0; i < n; i++) {
        const struct hash_item *it = &job.items[i];
        char ph[17], dh[17];

        if (json)
            print_json(it);
        if (it->rc != AP_OK) {
            refused++;
            fprintf(stderr, "aperture hash: %s: %s\n", it->path, it->msg);
            continue;
        }
        if (!json) {
            ap_hash64_hex(it->res.phash, ph);
            ap_hash64_hex(it->res.dhash, dh);
            printf("%s %s %s %s %s\n", ph, dh, it->res.sha256_hex, it->input_sha256, it->path);
        }
    }
    for (int i = 0; i < n; i++)
        ap_prep_result_release(&job.items[i].res);
    free(job.items);
    return refused ? AP_EXIT_REFUSED : AP_EXIT_OK;
}
