/*
 * replay_main.c - run a libFuzzer target without libFuzzer: a main() that feeds every file named
 * on the command line, and every file under every directory named (recursively, in name order),
 * to LLVMFuzzerTestOneInput once.
 *
 * Linked with a fuzz_<target>.c under gcc (or any build without APERTURE_FUZZ), so CTest replays
 * the seed corpus and the crashers found so far on every run, with the sanitizers of that build.
 * Each path is printed to stderr before it runs: when a sanitizer aborts, the last line before
 * its report names the input. Exit status: 0 when every input ran, 1 when a path could not be
 * read (a missing corpus must not pass as an empty one), 2 on a usage error.
 */
#include <dirent.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Inputs larger than this are skipped: libFuzzer runs here use -max_len=2097152 as well. */
#define REPLAY_MAX_BYTES (4u << 20)

struct replay {
    unsigned long n_run, n_skipped, n_failed;
};

/* Read path whole into a malloc'd buffer. Returns 0, or -1 with errno set. */
static int read_file(const char *path, uint8_t **out, size_t *out_len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    size_t cap = 1 << 16, len = 0;
    uint8_t *buf = malloc(cap);
    int rc = -1;
    if (buf == NULL)
        goto out;
    for (;;) {
        len += fread(buf + len, 1, cap - len, f);
        if (len < cap)
            break;
        if (cap > REPLAY_MAX_BYTES) {
            errno = EFBIG;
            goto out;
        }
        uint8_t *nb = realloc(buf, cap * 2);
        if (nb == NULL)
            goto out;
        buf = nb;
        cap *= 2;
    }
    if (ferror(f)) {
        errno = EIO;
        goto out;
    }
    *out = buf;
    *out_len = len;
    buf = NULL;
    rc = 0;
out:
    free(buf);
    fclose(f);
    return rc;
}

static void replay_path(struct replay *r, const char *path);

static int skip_entry(const struct dirent *e)
{
    return e->d_name[0] != '.'; /* ".", "..", and hidden files */
}

static void replay_dir(struct replay *r, const char *dir)
{
    struct dirent **names = NULL;
    int n = scandir(dir, &names, skip_entry, alphasort);
    if (n < 0) {
        fprintf(stderr, "replay: cannot list \"%s\": %s\n", dir, strerror(errno));
        r->n_failed++;
        return;
    }
    for (int i = 0; i < n; i++) {
        size_t need = strlen(dir) + 1 + strlen(names[i]->d_name) + 1;
        char *sub = malloc(need);
        if (sub != NULL) {
            snprintf(sub, need, "%s/%s", dir, names[i]->d_name);
            replay_path(r, sub);
            free(sub);
        } else {
            r->n_failed++;
        }
        free(names[i]);
    }
    free(names);
}

static void replay_path(struct replay *r, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "replay: cannot stat \"%s\": %s\n", path, strerror(errno));
        r->n_failed++;
        return;
    }
    if (S_ISDIR(st.st_mode)) {
        replay_dir(r, path);
        return;
    }
    if (!S_ISREG(st.st_mode))
        return;
    if ((uint64_t)st.st_size > REPLAY_MAX_BYTES) {
        r->n_skipped++;
        return;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    if (read_file(path, &buf, &len) != 0) {
        fprintf(stderr, "replay: cannot read \"%s\": %s\n", path, strerror(errno));
        r->n_failed++;
        return;
    }
    fprintf(stderr, "replay: %s (%zu bytes)\n", path, len);
    fflush(stderr);
    /* A copy of exactly len bytes, so ASan sees reads past the end as libFuzzer would. */
    uint8_t *exact = malloc(len ? len : 1);
    if (exact == NULL) {
        free(buf);
        r->n_failed++;
        return;
    }
    memcpy(exact, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    r->n_run++;
}

int main(int argc, char **argv)
{
    struct replay r = {0};
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++)
        replay_path(&r, argv[i]);
    printf("replay: %lu inputs run, %lu skipped (over %u bytes), %lu unreadable\n", r.n_run,
           r.n_skipped, REPLAY_MAX_BYTES, r.n_failed);
    return r.n_failed ? 1 : 0;
}
