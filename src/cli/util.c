/*
 * util.c - helpers shared by the commands: bounded file reading, a worker pool over inputs with
 * a progress bar, JSON string escaping.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"

int ap_cli_read_file(const char *path, size_t max_bytes, uint8_t **buf, size_t *len, char *msg,
                     size_t msg_cap)
{
    FILE *f = fopen(path, "rb");
    uint8_t *b = NULL;
    size_t cap = 0, n = 0;

    if (f == NULL) {
        snprintf(msg, msg_cap, "cannot open: %s", strerror(errno));
        return -1;
    }
    for (;;) {
        if (n == cap) {
            /* Grow geometrically, but never past max_bytes + 1: one byte more than the limit
             * is enough to know the file is too large. */
            size_t ncap = cap ? cap * 2 : 65536;
            if (max_bytes && ncap > max_bytes + 1)
                ncap = max_bytes + 1;
            if (ncap <= cap) {
                snprintf(msg, msg_cap, "AP_ETOOLARGE: file is over the limit of %zu bytes",
                         max_bytes);
                goto fail;
            }
            uint8_t *nb = realloc(b, ncap);
            if (nb == NULL) {
                snprintf(msg, msg_cap, "out of memory reading the file");
                goto fail;
            }
            b = nb;
            cap = ncap;
        }
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (r == 0) {
            if (ferror(f)) {
                snprintf(msg, msg_cap, "read error: %s", strerror(errno));
                goto fail;
            }
            break;
        }
    }
    fclose(f);
    *buf = b;
    *len = n;
    return 0;
fail:
    fclose(f);
    free(b);
    return -1;
}

int ap_cli_ncpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : (int)n;
}

struct pool {
    size_t n;
    atomic_size_t next, done;
    void (*fn)(size_t, void *);
    void *ctx;
    const char *label;
    int tty;
    pthread_mutex_t draw;
};

static void draw_progress(struct pool *p, size_t done)
{
    if (!p->tty)
        return;
    pthread_mutex_lock(&p->draw);
    int width = 30, fill = p->n ? (int)(done * width / p->n) : width;
    fprintf(stderr, "\r%s [", p->label);
    for (int i = 0; i < width; i++)
        fputc(i < fill ? '#' : '.', stderr);
    fprintf(stderr, "] %zu/%zu", done, p->n);
    if (done == p->n)
        fputs("\r\033[K", stderr);
    fflush(stderr);
    pthread_mutex_unlock(&p->draw);
}

static void *worker(void *arg)
{
    struct pool *p = arg;
    for (;;) {
        size_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->n)
            break;
        p->fn(i, p->ctx);
        draw_progress(p, atomic_fetch_add(&p->done, 1) + 1);
    }
    return NULL;
}

void ap_cli_parallel(size_t n, int jobs, const char *label, void (*fn)(size_t i, void *ctx),
                     void *ctx)
{
    struct pool p = {.n = n, .fn = fn, .ctx = ctx, .label = label};
    atomic_init(&p.next, 0);
    atomic_init(&p.done, 0);
    p.tty = isatty(STDERR_FILENO) && n > 1;
    pthread_mutex_init(&p.draw, NULL);
    if (jobs < 1)
        jobs = 1;
    if ((size_t)jobs > n)
        jobs = n ? (int)n : 1;
    pthread_t tids[256];
    int started = 0;
    if (jobs > 256)
        jobs = 256;
    for (int t = 1; t < jobs; t++)
        if (pthread_create(&tids[started], NULL, worker, &p) == 0)
            started++;
    worker(&p); /* the calling thread works too; with jobs == 1 it works alone, in order */
    for (int t = 0; t < started; t++)
        pthread_join(tids[t], NULL);
    pthread_mutex_destroy(&p.draw);
}

void ap_cli_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20)
                fprintf(f, "\\u%04x", *p);
            else
                fputc(*p, f);
        }
    }
    fputc('"', f);
}

void ap_cli_json_refusal(FILE *f, const char *code, const char *msg)
{
    fputs(",\"ok\":false,\"error\":", f);
    ap_cli_json_str(f, code);
    fputs(",\"message\":", f);
    ap_cli_json_str(f, msg);
    fputs("}\n", f);
}
