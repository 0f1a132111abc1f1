/*
 * prep_testutil.h - shared helpers for the ap_prep() suites (tests/unit/test_prep*.c).
 *
 * Header-only (every function static inline) so that each suite stays one .c file, and one
 * CTest, without touching tests/CMakeLists.txt. Include it after <cmocka.h>.
 *
 * What lives here:
 *   - corpus paths and file reading (AP_CORPUS; never the working directory);
 *   - the corpus manifests, flattened by tests/tools/prep_ref.py (Debian's /usr/bin/python3)
 *     into tab-separated rows, so no JSON parser is needed in C;
 *   - reference pixels made at test time by tools other than aperture (Pillow, libvips), through
 *     the same script;
 *   - decoding our PNG output with libspng, and the metrics the suites assert on: MAE, PSNR,
 *     mean CIELAB colour and CIE76 colour difference;
 *   - a failure counter for table-driven tests, so one run names every failing corpus file
 *     instead of stopping at the first.
 */
#ifndef PREP_TESTUTIL_H
#define PREP_TESTUTIL_H

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <spng.h>

#include "aperture/prep.h"

#define PT_PYTHON "/usr/bin/python3"
#define PT_TOOL   AP_SOURCE_DIR "/tests/tools/prep_ref.py"

/* ---- files ------------------------------------------------------------------------------- */

/* snprintf that fails the test on truncation (and keeps gcc's truncation warnings quiet). */
static inline const char *pt_fmt(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline const char *pt_fmt(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap)
        fail_msg("string too long for its buffer: %s...", buf);
    return buf;
}

/* AP_CORPUS "/" rel into buf (always terminated). Returns buf. */
static inline const char *pt_corpus(char *buf, size_t cap, const char *rel)
{
    return pt_fmt(buf, cap, "%s/%s", AP_CORPUS, rel);
}

/* Whole file into a malloc'd buffer (NUL-terminated for convenience); NULL on failure. */
static inline uint8_t *pt_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    *len = 0;
    if (f == NULL)
        return NULL;
    for (;;) {
        if (cap - n < 65536) {
            cap = cap ? cap * 2 : 1 << 20;
            uint8_t *nb = realloc(buf, cap + 1);
            if (nb == NULL) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    bool bad = ferror(f) != 0;
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* Read a corpus file or fail the test. */
static inline uint8_t *pt_read_corpus(const char *rel, size_t *len)
{
    char path[1024];
    uint8_t *buf = pt_read_file(pt_corpus(path, sizeof(path), rel), len);
    if (buf == NULL)
        fail_msg("cannot read corpus file %s: %s", path, strerror(errno));
    return buf;
}

/* Is needle (n bytes) anywhere in hay? */
static inline bool pt_contains(const uint8_t *hay, size_t len, const void *needle, size_t n)
{
    if (n == 0 || len < n)
        return n == 0;
    const uint8_t *p = needle;
    for (size_t i = 0; i + n <= len; i++)
        if (hay[i] == p[0] && memcmp(hay + i, p, n) == 0)
            return true;
    return false;
}

/* ---- running the helper script ----------------------------------------------------------- */

/* Append s to the command line in cmd, single-quoted for /bin/sh. False when it does not fit. */
static inline bool pt_shell_arg(char *cmd, size_t cap, const char *s)
{
    size_t n = strlen(cmd);
    if (n + 3 >= cap)
        return false;
    cmd[n++] = ' ';
    cmd[n++] = '\'';
    for (; *s; s++) {
        if (*s == '\'') {
            if (n + 5 >= cap)
                return false;
            memcpy(cmd + n, "'\\''", 4);
            n += 4;
        } else {
            if (n + 2 >= cap)
                return false;
            cmd[n++] = *s;
        }
    }
    cmd[n++] = '\'';
    cmd[n] = '\0';
    return true;
}

/* Run cmd, return its whole stdout (malloc'd, NUL-terminated), or NULL if it did not exit 0. */
static inline char *pt_run(const char *cmd)
{
    FILE *p = popen(cmd, "r");
    char *out = NULL;
    size_t n = 0, cap = 0;
    if (p == NULL)
        return NULL;
    for (;;) {
        if (cap - n < 4096) {
            cap = cap ? cap * 2 : 65536;
            char *nb = realloc(out, cap + 1);
            if (nb == NULL)
                break;
            out = nb;
        }
        size_t got = fread(out + n, 1, cap - n, p);
        n += got;
        if (got == 0)
            break;
    }
    int rc = pclose(p);
    if (out == NULL)
        return NULL;
    out[n] = '\0';
    if (rc != 0) {
        print_error("command failed (status %d): %s\n", rc, cmd);
        free(out);
        return NULL;
    }
    return out;
}

/* ---- manifests ----------------------------------------------------------------------------- */

#define PT_MAX_COLS 12

struct pt_row {
    const char *col[PT_MAX_COLS];
    int ncol;
};

struct pt_manifest {
    char *text;
    struct pt_row *rows;
    size_t n;
};

/* Column i of row r, "" when absent. */
static inline const char *pt_col(const struct pt_row *r, int i)
{
    return i < r->ncol ? r->col[i] : "";
}

/* Integer column; -1 when absent ("-"). */
static inline long pt_icol(const struct pt_row *r, int i)
{
    const char *s = pt_col(r, i);
    if (s[0] == '\0' || strcmp(s, "-") == 0)
        return -1;
    return strtol(s, NULL, 10);
}

/*
 * Flatten AP_CORPUS/json_rel with `prep_ref.py manifest kind` (columns documented in the
 * script). Fails the test when the script fails or yields no rows.
 */
static inline void pt_manifest_load(struct pt_manifest *m, const char *kind, const char *json_rel)
{
    char cmd[4096] = PT_PYTHON, path[1024];
    memset(m, 0, sizeof(*m));
    if (!pt_shell_arg(cmd, sizeof(cmd), PT_TOOL) || !pt_shell_arg(cmd, sizeof(cmd), "manifest") ||
        !pt_shell_arg(cmd, sizeof(cmd), kind) ||
        !pt_shell_arg(cmd, sizeof(cmd), pt_corpus(path, sizeof(path), json_rel)))
        fail_msg("command line too long");
    m->text = pt_run(cmd);
    if (m->text == NULL)
        fail_msg("could not flatten %s with %s", json_rel, PT_TOOL);
    size_t lines = 0;
    for (const char *p = m->text; *p; p++)
        lines += *p == '\n';
    m->rows = calloc(lines + 1, sizeof(*m->rows));
    assert_non_null(m->rows);
    char *save = m->text;
    for (char *line = m->text; line && *line; line = save) {
        char *nl = strchr(line, '\n');
        save = nl ? nl + 1 : NULL;
        if (nl)
            *nl = '\0';
        struct pt_row *r = &m->rows[m->n++];
        char *c = line;
        while (c && r->ncol < PT_MAX_COLS) {
            char *tab = strchr(c, '\t');
            if (tab)
                *tab = '\0';
            r->col[r->ncol++] = c;
            c = tab ? tab + 1 : NULL;
        }
    }
    if (m->n == 0)
        fail_msg("manifest %s has no rows", json_rel);
}

static inline void pt_manifest_free(struct pt_manifest *m)
{
    free(m->rows);
    free(m->text);
    memset(m, 0, sizeof(*m));
}

/* The row for a corpus-relative name, or NULL. */
static inline const struct pt_row *pt_manifest_find(const struct pt_manifest *m, const char *name)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(pt_col(&m->rows[i], 0), name) == 0)
            return &m->rows[i];
    return NULL;
}

/* ---- images ------------------------------------------------------------------------------- */

/* 8-bit interleaved pixels, rows tightly packed; ch 1 or 3. */
struct pt_img {
    uint8_t *px;
    uint32_t w, h;
    unsigned ch;
};

static inline void pt_img_free(struct pt_img *im)
{
    free(im->px);
    memset(im, 0, sizeof(*im));
}

/* Sample k (0..2) of pixel (x, y), gray images answering the same for every k. */
static inline unsigned pt_px(const struct pt_img *im, uint32_t x, uint32_t y, unsigned k)
{
    const uint8_t *p = im->px + ((size_t)y * im->w + x) * im->ch;
    return im->ch == 1 ? p[0] : p[k];
}

/*
 * Decode a PNG (our output) with libspng into RGB (ch 3) or, for gray PNGs, gray (ch 1).
 * Returns false on any error.
 */
static inline bool pt_decode_png(const uint8_t *buf, size_t len, struct pt_img *out)
{
    spng_ctx *ctx = spng_ctx_new(0);
    struct spng_ihdr ihdr;
    size_t n = 0;
    bool ok = false;
    memset(out, 0, sizeof(*out));
    if (ctx == NULL)
        return false;
    if (spng_set_png_buffer(ctx, buf, len) || spng_get_ihdr(ctx, &ihdr))
        goto done;
    bool gray = ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE && ihdr.bit_depth == 8;
    int fmt = gray ? SPNG_FMT_G8 : SPNG_FMT_RGB8;
    if (spng_decoded_image_size(ctx, fmt, &n))
        goto done;
    out->px = malloc(n);
    if (out->px == NULL || spng_decode_image(ctx, out->px, n, fmt, 0))
        goto done;
    out->w = ihdr.width;
    out->h = ihdr.height;
    out->ch = gray ? 1 : 3;
    ok = true;
done:
    spng_ctx_free(ctx);
    if (!ok)
        pt_img_free(out);
    return ok;
}

/*
 * Reference pixels by other tools: one `prep_ref.py ref` run for n specs "OP|FILE|W|H" (see the
 * script). refs[i] is filled (RGB) or left empty (px NULL) when the tool failed on that spec;
 * the reason is printed. Returns the number of references made.
 */
static inline size_t pt_refs(const char *const *specs, size_t n, struct pt_img *refs)
{
    const char *tmpdir = getenv("TMPDIR");
    char dir[512], cmd[65536] = PT_PYTHON;
    size_t made = 0;

    memset(refs, 0, n * sizeof(*refs));
    pt_fmt(dir, sizeof(dir), "%s/ap-prep-ref-XXXXXX", tmpdir && *tmpdir ? tmpdir : "/tmp");
    if (mkdtemp(dir) == NULL)
        fail_msg("mkdtemp %s: %s", dir, strerror(errno));
    bool fits = pt_shell_arg(cmd, sizeof(cmd), PT_TOOL) && pt_shell_arg(cmd, sizeof(cmd), "ref") &&
                pt_shell_arg(cmd, sizeof(cmd), dir);
    for (size_t i = 0; i < n && fits; i++)
        fits = pt_shell_arg(cmd, sizeof(cmd), specs[i]);
    if (!fits)
        fail_msg("reference command line too long");
    char *out = pt_run(cmd);
    for (char *line = out; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        unsigned long idx, w, h;
        char word[16] = "";
        if (sscanf(line, "%lu %15s", &idx, word) == 2 && strcmp(word, "error") == 0) {
            print_error("reference %s: %s\n", idx < n ? specs[idx] : "?", line);
        } else if (sscanf(line, "%lu %lu %lu", &idx, &w, &h) == 3 && idx < n) {
            char path[600];
            size_t len = 0;
            pt_fmt(path, sizeof(path), "%s/%lu.rgb", dir, idx);
            uint8_t *px = pt_read_file(path, &len);
            if (px != NULL && len == (size_t)w * h * 3) {
                refs[idx].px = px;
                refs[idx].w = (uint32_t)w;
                refs[idx].h = (uint32_t)h;
                refs[idx].ch = 3;
                made++;
            } else {
                print_error("reference %s: bad raw file %s\n", specs[idx], path);
                free(px);
            }
            unlink(path);
        }
        line = nl ? nl + 1 : NULL;
    }
    free(out);
    rmdir(dir);
    return made;
}

/* ---- metrics ------------------------------------------------------------------------------- */

/* Mean absolute difference per channel (0..255) over the common top-left w x h; gray images
 * compare as R = G = B. Returns -1 when sizes differ (and the caller did not ask to crop). */
static inline double pt_mae_region(const struct pt_img *a, const struct pt_img *b, uint32_t w,
                                   uint32_t h)
{
    if (w > a->w || w > b->w || h > a->h || h > b->h || w == 0 || h == 0)
        return -1;
    double sum = 0;
    for (uint32_t y = 0; y < h; y++)
        for (uint32_t x = 0; x < w; x++)
            for (unsigned k = 0; k < 3; k++)
                sum += abs((int)pt_px(a, x, y, k) - (int)pt_px(b, x, y, k));
    return sum / ((double)w * h * 3);
}

static inline double pt_mae(const struct pt_img *a, const struct pt_img *b)
{
    if (a->w != b->w || a->h != b->h)
        return -1;
    return pt_mae_region(a, b, a->w, a->h);
}

/* PSNR in dB over the RGB samples (255 peak); INFINITY for identical images, -1 on size mismatch.
 */
static inline double pt_psnr(const struct pt_img *a, const struct pt_img *b)
{
    if (a->w != b->w || a->h != b->h)
        return -1;
    double se = 0;
    for (uint32_t y = 0; y < a->h; y++)
        for (uint32_t x = 0; x < a->w; x++)
            for (unsigned k = 0; k < 3; k++) {
                double d = (double)pt_px(a, x, y, k) - (double)pt_px(b, x, y, k);
                se += d * d;
            }
    double mse = se / ((double)a->w * a->h * 3);
    return mse == 0 ? INFINITY : 10.0 * log10(255.0 * 255.0 / mse);
}

/* sRGB 8-bit -> CIELAB (D65 white), the textbook formulas (IEC 61966-2-1, CIE 1976). */
static inline void pt_srgb_to_lab(double r8, double g8, double b8, double lab[3])
{
    double c[3] = {r8 / 255.0, g8 / 255.0, b8 / 255.0};
    for (int k = 0; k < 3; k++)
        c[k] = c[k] <= 0.04045 ? c[k] / 12.92 : pow((c[k] + 0.055) / 1.055, 2.4);
    double X = 0.4124564 * c[0] + 0.3575761 * c[1] + 0.1804375 * c[2];
    double Y = 0.2126729 * c[0] + 0.7151522 * c[1] + 0.0721750 * c[2];
    double Z = 0.0193339 * c[0] + 0.1191920 * c[1] + 0.9503041 * c[2];
    double t[3] = {X / 0.95047, Y / 1.0, Z / 1.08883};
    for (int k = 0; k < 3; k++)
        t[k] = t[k] > 216.0 / 24389.0 ? cbrt(t[k]) : (24389.0 / 27.0 * t[k] + 16.0) / 116.0;
    lab[0] = 116.0 * t[1] - 16.0;
    lab[1] = 500.0 * (t[0] - t[1]);
    lab[2] = 200.0 * (t[1] - t[2]);
}

/* Mean CIELAB colour of the pixels (each pixel converted, then averaged). */
static inline void pt_mean_lab(const struct pt_img *im, double lab[3])
{
    /* Lab is averaged per pixel (not the Lab of the mean RGB): the mean perceived colour. */
    double s[3] = {0, 0, 0}, l[3];
    for (uint32_t y = 0; y < im->h; y++)
        for (uint32_t x = 0; x < im->w; x++) {
            pt_srgb_to_lab(pt_px(im, x, y, 0), pt_px(im, x, y, 1), pt_px(im, x, y, 2), l);
            s[0] += l[0];
            s[1] += l[1];
            s[2] += l[2];
        }
    double n = (double)im->w * im->h;
    for (int k = 0; k < 3; k++)
        lab[k] = s[k] / n;
}

static inline double pt_de76(const double a[3], const double b[3])
{
    return sqrt((a[0] - b[0]) * (a[0] - b[0]) + (a[1] - b[1]) * (a[1] - b[1]) +
                (a[2] - b[2]) * (a[2] - b[2]));
}

/* ---- running the pipeline ------------------------------------------------------------------- */

/* ap_prep on a corpus file. *in receives the input bytes (caller frees) when in is non-NULL. */
static inline ap_status pt_prep_corpus(const char *rel, const ap_prep_opts *o, ap_prep_result *r,
                                       ap_error *err, uint8_t **in, size_t *in_len)
{
    size_t len = 0;
    uint8_t *buf = pt_read_corpus(rel, &len);
    ap_error_clear(err);
    ap_status st = ap_prep(buf, len, o, r, err);
    if (in) {
        *in = buf;
        *in_len = len;
    } else {
        free(buf);
    }
    return st;
}

/* ap_prep with the given target and PNG output, decoded back to pixels. False (and a printed
 * reason) on failure. res_out, when non-NULL, receives the result without its output bytes. */
static inline bool pt_pixels_at(const char *rel, const char *target, struct pt_img *out,
                                ap_prep_result *res_out)
{
    ap_prep_opts o;
    ap_prep_result r;
    ap_error err;
    ap_prep_opts_init(&o);
    if (ap_prep_opts_target(&o, target) != AP_OK)
        return false;
    o.encoding = AP_ENC_PNG;
    o.no_hash = true;
    ap_status st = pt_prep_corpus(rel, &o, &r, &err, NULL, NULL);
    memset(out, 0, sizeof(*out));
    if (st != AP_OK) {
        print_error("%s: %s %s\n", rel, ap_strerror(st), err.msg);
        return false;
    }
    bool ok = pt_decode_png(r.out, r.out_len, out);
    if (!ok)
        print_error("%s: our PNG output does not decode\n", rel);
    if (res_out) {
        *res_out = r;
        res_out->out = NULL;
        res_out->out_len = 0;
    }
    ap_prep_result_release(&r);
    return ok;
}

/* Full size: target "none". */
static inline bool pt_pixels_of(const char *rel, struct pt_img *out, ap_prep_result *res_out)
{
    return pt_pixels_at(rel, "none", out, res_out);
}

/* ---- output structure: nothing but pixels and colour information ------------------------ */

static inline uint16_t pt_be16(const uint8_t *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t pt_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint32_t pt_le32(const uint8_t *p)
{
    return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

/*
 * Walk a whole JPEG. Allowed segments: APP0 "JFIF", APP2 "ICC_PROFILE", DQT, DHT, DRI, SOF0-2,
 * SOS (+ entropy data with RSTn and stuffed bytes), EOI as the last two bytes. Returns NULL when
 * clean, else what was found (static string or into why).
 */
static inline const char *pt_jpeg_clean(const uint8_t *p, size_t n, char *why, size_t cap)
{
    if (n < 4 || p[0] != 0xFF || p[1] != 0xD8)
        return "no SOI";
    size_t i = 2;
    for (;;) {
        if (i + 2 > n || p[i] != 0xFF)
            return "segment does not start with 0xFF";
        while (i + 1 < n && p[i + 1] == 0xFF) /* fill bytes */
            i++;
        uint8_t mk = p[i + 1];
        if (mk == 0xD9)
            return i + 2 == n ? NULL : "bytes after EOI";
        if (i + 4 > n)
            return "truncated segment";
        size_t seg = pt_be16(p + i + 2);
        if (seg < 2 || i + 2 + seg > n)
            return "bad segment length";
        const uint8_t *body = p + i + 4;
        bool ok = mk == 0xDB || mk == 0xC4 || mk == 0xDD || mk == 0xC0 || mk == 0xC1 ||
                  mk == 0xC2 || mk == 0xDA;
        if (mk == 0xE0 && seg >= 7 && memcmp(body, "JFIF\0", 5) == 0)
            ok = true;
        if (mk == 0xE2 && seg >= 14 && memcmp(body, "ICC_PROFILE\0", 12) == 0)
            ok = true;
        if (!ok) {
            pt_fmt(why, cap, "segment 0xFF%02X (%zu bytes) at offset %zu", mk, seg, i);
            return why;
        }
        i += 2 + seg;
        if (mk == 0xDA) { /* entropy-coded data up to the next real marker */
            while (i + 1 < n &&
                   !(p[i] == 0xFF && p[i + 1] != 0x00 && !(p[i + 1] >= 0xD0 && p[i + 1] <= 0xD7)))
                i++;
            if (i + 1 >= n)
                return "scan runs to the end (no EOI)";
        }
    }
}

/* Walk a PNG: only IHDR, PLTE, IDAT, IEND and colour chunks; nothing after IEND. */
static inline const char *pt_png_clean(const uint8_t *p, size_t n, char *why, size_t cap)
{
    static const char *const allowed[] = {"IHDR", "PLTE", "IDAT", "IEND",
                                          "sRGB", "gAMA", "cHRM", "iCCP"};
    if (n < 8 || memcmp(p, "\x89PNG\r\n\x1A\n", 8) != 0)
        return "no PNG signature";
    size_t i = 8;
    while (i + 12 <= n) {
        uint32_t len = pt_be32(p + i);
        const char *type = (const char *)p + i + 4;
        bool ok = false;
        for (size_t k = 0; k < sizeof(allowed) / sizeof(allowed[0]); k++)
            ok = ok || memcmp(type, allowed[k], 4) == 0;
        if (!ok) {
            pt_fmt(why, cap, "chunk %.4s at offset %zu", type, i);
            return why;
        }
        if (len > n - i - 12)
            return "chunk runs past the end";
        i += 12 + (size_t)len;
        if (memcmp(type, "IEND", 4) == 0)
            return i == n ? NULL : "bytes after IEND";
    }
    return "no IEND";
}

/* Walk a WebP: RIFF of VP8/VP8L/VP8X/ALPH/ICCP chunks only. */
static inline const char *pt_webp_clean(const uint8_t *p, size_t n, char *why, size_t cap)
{
    if (n < 12 || memcmp(p, "RIFF", 4) != 0 || memcmp(p + 8, "WEBP", 4) != 0)
        return "no RIFF/WEBP header";
    if ((size_t)pt_le32(p + 4) + 8 != n)
        return "RIFF size does not match the file";
    size_t i = 12;
    while (i + 8 <= n) {
        const char *type = (const char *)p + i;
        uint32_t len = pt_le32(p + i + 4);
        if (memcmp(type, "VP8 ", 4) != 0 && memcmp(type, "VP8L", 4) != 0 &&
            memcmp(type, "VP8X", 4) != 0 && memcmp(type, "ALPH", 4) != 0 &&
            memcmp(type, "ICCP", 4) != 0) {
            pt_fmt(why, cap, "chunk %.4s at offset %zu", type, i);
            return why;
        }
        i += 8 + (size_t)len + (len & 1);
    }
    return i == n ? NULL : "trailing bytes";
}

/* ---- table-driven failures ------------------------------------------------------------------ */

/* Record one failing case (printed at once) and count it; assert the count at the end. */
#define PT_FAIL(nfail, file, ...)                                                                  \
    do {                                                                                           \
        char pt_msg_[1024];                                                                        \
        (void)!snprintf(pt_msg_, sizeof(pt_msg_), __VA_ARGS__);                                    \
        print_error("FAIL %s: %s\n", (file), pt_msg_);                                             \
        (nfail)++;                                                                                 \
    } while (0)

/* Map a manifest "magic" to the format ap_sniff must report; AP_FORMAT_UNKNOWN for others. */
static inline ap_format pt_format_of_magic(const char *magic)
{
    static const struct {
        const char *magic;
        ap_format f;
    } map[] = {{"jpeg", AP_FORMAT_JPEG},    {"png", AP_FORMAT_PNG},   {"webp", AP_FORMAT_WEBP},
               {"gif", AP_FORMAT_GIF},      {"bmp", AP_FORMAT_BMP},   {"tiff", AP_FORMAT_TIFF},
               {"bigtiff", AP_FORMAT_TIFF}, {"heic", AP_FORMAT_HEIF}, {"avif", AP_FORMAT_AVIF}};
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(magic, map[i].magic) == 0)
            return map[i].f;
    return AP_FORMAT_UNKNOWN;
}

/* |a - b| <= tol for unsigned sizes. */
static inline bool pt_near(long a, long b, long tol)
{
    return labs(a - b) <= tol;
}

#endif
