/*
 * cmd_dedup.c - aperture dedup: group the exact and near-duplicate images of a folder (catalog
 * dedup) and say how many model calls deduplication would save.
 *
 * Every file under DIR is preprocessed as 'aperture prep' does (in parallel, with a progress
 * bar); exact duplicates share the processed SHA-256 (the bytes a model would receive), near
 * duplicates have pHashes within --threshold bits. The grouping itself is ap_cache_dedup().
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "aperture/cache.h"
#include "aperture/hash.h"
#include "aperture/prep.h"
#include "cli/cli.h"

static const char dedup_usage[] =
    "usage: aperture dedup DIR [--threshold N] [--json] [--jobs N]\n"
    "\n"
    "Preprocess every file under DIR (recursively, hidden files skipped) as 'aperture prep'\n"
    "does, and group duplicates:\n"
    "  exact   the same processed SHA-256: the model would receive the same bytes\n"
    "  near    pHashes within N bits of another image of the group\n"
    "Groups are transitive (A~B and B~C put A, B and C together). Each group needs one model\n"
    "call; the others are saved.\n"
    "\n"
    "  --threshold N  near-duplicate Hamming distance, 0..32 (default 6; re-encodes and\n"
    "                 rescales of one picture stay within about 6, different pictures are\n"
    "                 some 20-40 apart)\n"
    "  --json         one JSON document on stdout instead of the listing\n"
    "  --jobs N       worker threads (default: all cores; 1 = one thread)\n"
    "  -h, --help     this text\n"
    "\n"
    "Exit status: 0 all files processed, 1 some files refused (not images, too large...),\n"
    "2 usage error.\n";

#define DEFAULT_THRESHOLD 6

struct paths {
    char **v;
    size_t n, cap;
};

struct item {
    const char *path;
    ap_status rc;
    char msg[AP_ERROR_MSG_MAX + 64];
    uint8_t sha256[32];
    char sha_hex[65];
    uint64_t phash;
};

struct job {
    ap_prep_opts opts;
    struct item *items;
};

static int paths_add(struct paths *p, const char *dir, const char *name)
{
    if (p->n == p->cap) {
        size_t ncap = p->cap ? p->cap * 2 : 256;
        char **nv = realloc(p->v, ncap * sizeof(*nv));
        if (nv == NULL)
            return -1;
        p->v = nv;
        p->cap = ncap;
    }
    size_t len = strlen(dir) + 1 + strlen(name) + 1;
    char *s = malloc(len);
    if (s == NULL)
        return -1;
    snprintf(s, len, "%s/%s", dir, name);
    p->v[p->n++] = s;
    return 0;
}

/* Collect the regular files under dir; directories are entered, symlinked ones not (no loops). */
static int walk(const char *dir, struct paths *out)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    struct paths sub = {0};
    int rc = 0;

    if (d == NULL) {
        fprintf(stderr, "aperture dedup: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (paths_add(&sub, dir, e->d_name) != 0) {
            rc = -1;
            break;
        }
    }
    closedir(d);
    for (size_t i = 0; i < sub.n; i++) {
        struct stat st, lst;
        if (rc == 0 && stat(sub.v[i], &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                if (lstat(sub.v[i], &lst) == 0 && !S_ISLNK(lst.st_mode))
                    rc = walk(sub.v[i], out);
            } else if (S_ISREG(st.st_mode)) {
                if (paths_add(out, "", "") == 0) { /* reserve a slot, then move ours in */
                    free(out->v[out->n - 1]);
                    out->v[out->n - 1] = sub.v[i];
                    sub.v[i] = NULL;
                } else {
                    rc = -1;
                }
            }
        }
        free(sub.v[i]);
    }
    free(sub.v);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

struct sha_index {
    const uint8_t *sha;
    size_t k;
};

static int cmp_sha_index(const void *a, const void *b)
{
    const struct sha_index *x = a, *y = b;
    int c = memcmp(x->sha, y->sha, 32);
    return c ? c : (x->k > y->k) - (x->k < y->k);
}

static void dedup_one(size_t i, void *ctx)
{
    struct job *job = ctx;
    struct item *it = &job->items[i];
    uint8_t *buf = NULL;
    size_t len = 0;
    ap_prep_result res;
    ap_error err = {0};

    if (ap_cli_read_file(it->path, job->opts.max_input_bytes, &buf, &len, it->msg,
                         sizeof(it->msg)) != 0) {
        it->rc = AP_EIO;
        return;
    }
    it->rc = ap_prep(buf, len, &job->opts, &res, &err);
    free(buf);
    if (it->rc != AP_OK) {
        snprintf(it->msg, sizeof(it->msg), "%s: %s", ap_strerror(it->rc), err.msg);
        return;
    }
    memcpy(it->sha256, res.sha256, 32);
    memcpy(it->sha_hex, res.sha256_hex, sizeof(it->sha_hex));
    it->phash = res.phash;
    ap_prep_result_release(&res); /* keep the hashes, not the pixels */
}

static int parse_int(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || end == s || v < lo || v > hi) {
        fprintf(stderr, "aperture dedup: %s wants %ld..%ld, not \"%s\"\n", opt, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cmd_dedup(int argc, char **argv)
{
    enum { O_JSON = 256, O_JOBS, O_THRESHOLD };
    static const struct option lo[] = {{"json", no_argument, 0, O_JSON},
                                       {"jobs", required_argument, 0, O_JOBS},
                                       {"threshold", required_argument, 0, O_THRESHOLD},
                                       {"help", no_argument, 0, 'h'},
                                       {0, 0, 0, 0}};
    struct paths paths = {0};
    struct job job = {0};
    ap_cache_dedup_item *di = NULL;
    size_t *ok = NULL, *group = NULL, *head = NULL, *next = NULL;
    struct sha_index *by_sha = NULL;
    size_t n_ok = 0, refused = 0;
    bool *dup = NULL;
    long threshold = DEFAULT_THRESHOLD, jobs = ap_cli_ncpus(), v;
    int json = 0, c, exit_code = AP_EXIT_REFUSED;
    ap_error err = {0};

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (c) {
        case O_JSON:
            json = 1;
            break;
        case O_JOBS:
            if (parse_int("--jobs", optarg, 1, 1024, &v) != 0)
                return AP_EXIT_USAGE;
            jobs = v;
            break;
        case O_THRESHOLD:
            if (parse_int("--threshold", optarg, 0, AP_CACHE_MAX_THRESHOLD, &v) != 0)
                return AP_EXIT_USAGE;
            threshold = v;
            break;
        case 'h':
            fputs(dedup_usage, stdout);
            return AP_EXIT_OK;
        default:
            fputs(dedup_usage, stderr);
            return AP_EXIT_USAGE;
        }
    }
    if (argc - optind != 1) {
        fputs(dedup_usage, stderr);
        return AP_EXIT_USAGE;
    }
    const char *dir = argv[optind];
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        fprintf(stderr, "aperture dedup: \"%s\" is not a directory\n", dir);
        return AP_EXIT_USAGE;
    }
    /* "DIR/" and "DIR" name the same files */
    size_t dlen = strlen(dir);
    char *root = strdup(dir);
    if (root == NULL)
        goto oom;
    while (dlen > 1 && root[dlen - 1] == '/')
        root[--dlen] = '\0';
    int wrc = walk(root, &paths);
    free(root);
    if (wrc != 0)
        goto out;
    qsort(paths.v, paths.n, sizeof(*paths.v), cmp_str);

    ap_prep_opts_init(&job.opts);
    job.items = calloc(paths.n ? paths.n : 1, sizeof(*job.items));
    di = calloc(paths.n ? paths.n : 1, sizeof(*di));
    ok = calloc(paths.n ? paths.n : 1, sizeof(*ok));
    group = calloc(paths.n ? paths.n : 1, sizeof(*group));
    if (job.items == NULL || di == NULL || ok == NULL || group == NULL)
        goto oom;
    for (size_t i = 0; i < paths.n; i++)
        job.items[i].path = paths.v[i];
    ap_cli_parallel(paths.n, (int)jobs, "dedup", dedup_one, &job);

    /* The processed images, in path order; refusals reported one line each. */
    for (size_t i = 0; i < paths.n; i++) {
        const struct item *it = &job.items[i];
        if (it->rc != AP_OK) {
            refused++;
            fprintf(stderr, "aperture dedup: %s: %s\n", it->path, it->msg);
            continue;
        }
        memcpy(di[n_ok].sha256, it->sha256, 32);
        di[n_ok].phash = it->phash;
        ok[n_ok++] = i;
    }
    if (ap_cache_dedup(di, n_ok, (int)threshold, group, &err) != AP_OK) {
        fprintf(stderr, "aperture dedup: %s: %s\n", ap_strerror(err.code), err.msg);
        goto out;
    }

    /* Members of each group as linked lists in path order (head[root], next[k]), and which
     * images repeat the bytes of an earlier one (runs of equal SHA-256, sorted). */
    head = malloc((n_ok ? n_ok : 1) * sizeof(*head));
    next = malloc((n_ok ? n_ok : 1) * sizeof(*next));
    by_sha = malloc((n_ok ? n_ok : 1) * sizeof(*by_sha));
    dup = calloc(n_ok ? n_ok : 1, sizeof(*dup));
    if (head == NULL || next == NULL || by_sha == NULL || dup == NULL)
        goto oom;
    size_t n_groups = 0, n_dup_groups = 0, exact_saved = 0;
    for (size_t k = n_ok; k-- > 0;) {
        if (group[k] == k)
            n_groups++;
        head[k] = SIZE_MAX;
    }
    for (size_t k = n_ok; k-- > 0;) {
        next[k] = head[group[k]];
        head[group[k]] = k;
    }
    for (size_t k = 0; k < n_ok; k++)
        by_sha[k] = (struct sha_index){di[k].sha256, k};
    qsort(by_sha, n_ok, sizeof(*by_sha), cmp_sha_index);
    for (size_t k = 1; k < n_ok; k++)
        if (memcmp(by_sha[k].sha, by_sha[k - 1].sha, 32) == 0) {
            dup[by_sha[k].k] = true;
            exact_saved++;
        }
    size_t saved = n_ok - n_groups;

    if (json) {
        printf("{\"dir\":");
        ap_cli_json_str(stdout, dir);
        printf(",\"threshold\":%ld,\"files\":%zu,\"images\":%zu,\"refused\":%zu,\"groups\":[",
               threshold, paths.n, n_ok, refused);
    } else {
        printf("%zu images under %s, near-duplicate threshold %ld\n", n_ok, dir, threshold);
    }
    for (size_t g = 0; g < n_ok; g++) {
        if (group[g] != g || next[g] == SIZE_MAX)
            continue; /* not a group's first image, or a group of one */
        size_t size = 0;
        int max_d = 0;
        bool all_exact = true;
        for (size_t k = g; k != SIZE_MAX; k = next[k]) {
            int d = ap_hamming64(di[g].phash, di[k].phash);
            size++;
            max_d = d > max_d ? d : max_d;
            all_exact = all_exact && memcmp(di[g].sha256, di[k].sha256, 32) == 0;
        }
        n_dup_groups++;
        if (json)
            printf("%s\n{\"images\":%zu,\"exact\":%s,\"max_distance\":%d,\"members\":[",
                   n_dup_groups > 1 ? "," : "", size, all_exact ? "true" : "false", max_d);
        else
            printf("\ngroup %zu: %zu images, %s (max distance %d)\n", n_dup_groups, size,
                   all_exact ? "exact duplicates" : "near duplicates", max_d);
        for (size_t k = g; k != SIZE_MAX; k = next[k]) {
            const struct item *it = &job.items[ok[k]];
            int d = ap_hamming64(di[g].phash, di[k].phash);
            char ph[17];

            ap_hash64_hex(it->phash, ph);
            if (json) {
                printf("%s{\"path\":", k == g ? "" : ",");
                ap_cli_json_str(stdout, it->path);
                printf(",\"sha256\":\"%s\",\"phash\":\"%s\",\"distance\":%d,"
                       "\"exact_duplicate\":%s}",
                       it->sha_hex, ph, d, dup[k] ? "true" : "false");
            } else {
                char mark[16];
                if (k == g)
                    snprintf(mark, sizeof(mark), "keep");
                else if (dup[k])
                    snprintf(mark, sizeof(mark), "exact");
                else
                    snprintf(mark, sizeof(mark), "d=%d", d);
                printf("  %-6s %s %.12s  %s\n", mark, ph, it->sha_hex, it->path);
            }
        }
        if (json)
            printf("]}");
    }
    if (json) {
        printf("],\"duplicate_groups\":%zu,\"calls_needed\":%zu,\"exact_saved\":%zu,"
               "\"near_saved\":%zu,\"calls_saved\":%zu}\n",
               n_dup_groups, n_groups, exact_saved, saved - exact_saved, saved);
    } else {
        if (n_dup_groups == 0)
            printf("\nno duplicates\n");
        printf("\n%zu duplicate group%s: %zu model calls instead of %zu\n", n_dup_groups,
               n_dup_groups == 1 ? "" : "s", n_groups, n_ok);
        printf("%zu model calls saved (%zu exact, %zu near at threshold %ld)\n", saved, exact_saved,
               saved - exact_saved, threshold);
    }
    exit_code = refused ? AP_EXIT_REFUSED : AP_EXIT_OK;
    goto out;
oom:
    fprintf(stderr, "aperture dedup: out of memory\n");
out:
    for (size_t i = 0; i < paths.n; i++)
        free(paths.v[i]);
    free(paths.v);
    free(job.items);
    free(di);
    free(ok);
    free(group);
    free(head);
    free(next);
    free(by_sha);
    free(dup);
    return exit_code;
}
