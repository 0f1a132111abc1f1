/*
 * phash.c - imagehash-compatible perceptual hashes (pHash, dHash) of 8-bit pixels.
 *
 * The Python `imagehash` library defines both hashes over Pillow:
 *
 *   phash: image.convert("L").resize((32, 32), LANCZOS); scipy.fftpack.dct along axis 0, then
 *          axis 1 (DCT-II, unnormalised); the top-left 8x8 block; bit = coefficient > its median
 *   dhash: image.convert("L").resize((9, 8), LANCZOS); bit = px[r][c + 1] > px[r][c]
 *
 * with the bits read row-major into a number, first bit most significant.
 *
 * Why this file carries its own resize instead of calling the pipeline's ap__resize(): to give
 * the hashes users already store, the 32x32 and 9x8 thumbnails must be the ones Pillow makes, to
 * the last grey level. A dHash bit compares two neighbouring thumbnail pixels that are often
 * equal or one level apart, so a resampler that is merely "close" (other weight precision, other
 * rounding, weights normalised differently) flips bits at random. Pillow's recipe is: convert to
 * gray first; weights from its own geometry (centre (i + 0.5) * in/out, kernel stretched by
 * in/out on reduction, taps from (int)(centre -/+ support + 0.5), normalised by their double sum),
 * rounded to 22-bit fixed point; the horizontal pass first, rounded and clamped to 8 bits, then
 * the vertical pass. Reproducing that is ~100 lines and cheap at these sizes, and it lets
 * the pipeline's resampler optimise for speed and quality without ever moving a stored hash.
 * It was written from that description, not from Pillow's source. Measured against Pillow 9.4:
 * this resize gives identical hashes on all 34 corpus/phash images and on 80 synthetic ones;
 * the pipeline's ap__resize() (14-bit weights summing exactly to 1) also matched the photos but
 * was up to 6 pHash and 4 dHash bits off on noisy synthetic images, whose thumbnails are nearly
 * flat.
 *
 * Memory: a gray row (w bytes), the horizontally reduced columns ((32 + 9) * h bytes) and the
 * weight tables (about 6 * (w + h) weights per hash); the image itself is read once, row by row.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "hash/hash.h"

#define HASH_SIDE       8               /* imagehash hash_size: 8x8 = 64 bits */
#define PHASH_SIDE      (4 * HASH_SIDE) /* phash's highfreq_factor 4: a 32x32 thumbnail */
#define DHASH_W         (HASH_SIDE + 1) /* dhash's 9 columns x 8 rows */
#define PREC_BITS       22              /* Pillow's 8-bit resample precision: 32 - 8 - 2 */
#define LANCZOS_SUPPORT 3.0
#define PI              3.14159265358979323846 /* M_PI is not in strict C17 */
#define TIE_EPS         1e-6                   /* see phash_bits() */

/* Resize weights for one axis: output i reads n[i] inputs from lo[i], weights k[i * ksize..]. */
struct axis {
    uint32_t out_len, ksize;
    uint32_t *lo;
    uint32_t *n;
    int32_t *k; /* PREC_BITS fixed point */
};

static double sinc(double x)
{
    if (x == 0.0)
        return 1.0;
    x *= PI;
    return sin(x) / x;
}

/* Lanczos-3 with the half-open support [-3, 3) Pillow uses. */
static double lanczos3(double x)
{
    if (-LANCZOS_SUPPORT <= x && x < LANCZOS_SUPPORT)
        return sinc(x) * sinc(x / LANCZOS_SUPPORT);
    return 0.0;
}

static void axis_release(struct axis *ax)
{
    free(ax->lo);
    free(ax->n);
    free(ax->k);
    memset(ax, 0, sizeof(*ax));
}

/*
 * Weights for resizing in_len samples to out_len (either direction), in Pillow's geometry and
 * fixed point (see the top of the file). in_len <= AP_HASH_MAX_SIDE and out_len >= 8 keep ksize
 * and the table small (ksize <= 6 * in_len / out_len + 3). Fails only with AP_ENOMEM; ax is then
 * left empty.
 */
static ap_status axis_init(struct axis *ax, uint32_t in_len, uint32_t out_len, ap_error *err)
{
    double scale = (double)in_len / out_len;
    double filterscale = scale < 1.0 ? 1.0 : scale; /* stretch the kernel only when reducing */
    double support = LANCZOS_SUPPORT * filterscale;
    uint32_t ksize = (uint32_t)ceil(support) * 2 + 1;
    double *w = NULL;
    ap_status rc = AP_OK;

    memset(ax, 0, sizeof(*ax));
    ax->out_len = out_len;
    ax->ksize = ksize;
    ax->lo = malloc(out_len * sizeof(*ax->lo));
    ax->n = malloc(out_len * sizeof(*ax->n));
    ax->k = calloc((size_t)out_len * ksize, sizeof(*ax->k));
    w = malloc(ksize * sizeof(*w));
    if (ax->lo == NULL || ax->n == NULL || ax->k == NULL || w == NULL) {
        rc = ap_error_set(err, AP_ENOMEM, "hash: out of memory for %u resize weights",
                          out_len * ksize);
        goto out;
    }
    for (uint32_t i = 0; i < out_len; i++) {
        double center = (i + 0.5) * scale;
        double ss = 1.0 / filterscale;
        double sum = 0.0;
        int64_t pos = 0, neg = 0;
        int xmin = (int)(center - support + 0.5); /* truncation, as Pillow: -0.7 becomes 0 */
        int xmax = (int)(center + support + 0.5);
        int32_t *k = ax->k + (size_t)i * ksize;

        if (xmin < 0)
            xmin = 0;
        if (xmax > (int)in_len)
            xmax = (int)in_len;
        xmax -= xmin;
        AP_ASSERT(xmax >= 1 && (uint32_t)xmax <= ksize);
        for (int x = 0; x < xmax; x++) {
            w[x] = lanczos3((x + xmin - center + 0.5) * ss);
            sum += w[x];
        }
        for (int x = 0; x < xmax; x++) {
            /* Divide (not multiply by 1 / sum): the last bit decides some roundings below. */
            double v = sum != 0.0 ? w[x] / sum : w[x];
            double fixed = v * (double)(1 << PREC_BITS);
            k[x] = (int32_t)(fixed < 0 ? fixed - 0.5 : fixed + 0.5); /* half away from zero */
            if (k[x] > 0)
                pos += k[x];
            else
                neg -= k[x];
        }
        /* The passes sum in int32, as Pillow does. Normalised Lanczos-3 weights add up to
         * about 1.3 in absolute value, so 255 * that stays far from overflow; check anyway. */
        if (AP_NEVER(255 * pos + (1 << PREC_BITS) > INT32_MAX ||
                     255 * neg + (1 << PREC_BITS) > INT32_MAX)) {
            rc = ap_error_set(err, AP_EINTERNAL, "hash: resize weights out of range");
            goto out;
        }
        ax->lo[i] = (uint32_t)xmin;
        ax->n[i] = (uint32_t)xmax;
    }
out:
    free(w);
    if (rc != AP_OK)
        axis_release(ax);
    return rc;
}

/* A PREC_BITS fixed-point sum (rounding bias included) to 8 bits, clamped. */
static uint8_t clip8(int32_t ss)
{
    if (ss <= 0)
        return 0;
    if (ss >= 255 << PREC_BITS)
        return 255;
    return (uint8_t)(ss >> PREC_BITS);
}

/* Horizontal pass over one gray row: ax->out_len outputs. */
static void hpass_row(const struct axis *ax, const uint8_t *in, uint8_t *out)
{
    for (uint32_t i = 0; i < ax->out_len; i++) {
        const uint8_t *p = in + ax->lo[i];
        const int32_t *k = ax->k + (size_t)i * ax->ksize;
        int32_t ss = 1 << (PREC_BITS - 1);

        for (uint32_t t = 0; t < ax->n[i]; t++)
            ss += p[t] * k[t];
        out[i] = clip8(ss);
    }
}

/* Vertical pass: in holds the rows of w bytes ax reads from; out gets ax->out_len rows. */
static void vpass(const struct axis *ax, const uint8_t *in, uint32_t w, uint8_t *out)
{
    for (uint32_t i = 0; i < ax->out_len; i++) {
        const int32_t *k = ax->k + (size_t)i * ax->ksize;

        for (uint32_t x = 0; x < w; x++) {
            const uint8_t *p = in + (size_t)ax->lo[i] * w + x;
            int32_t ss = 1 << (PREC_BITS - 1);

            for (uint32_t t = 0; t < ax->n[i]; t++)
                ss += p[(size_t)t * w] * k[t];
            out[(size_t)i * w + x] = clip8(ss);
        }
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/*
 * The pHash bits of a 32x32 gray thumbnail. scipy's DCT-II along axis 0 then axis 1 is
 * y[k][l] = 4 * sum_n sum_j x[n][j] cos(pi k (2n + 1) / 64) cos(pi l (2j + 1) / 64); only k, l < 8
 * are kept, so only those are computed, as two 1-D passes. The median of 64 values is the mean of
 * the 32nd and 33rd smallest (numpy's), and a bit is set only when strictly above it.
 *
 * Ties: when the thumbnail has exact symmetries (a flat image, a 1x1 or 3x2 picture blown up to
 * 32x32) several coefficients are exactly equal, or exactly 0, in real arithmetic, and only
 * rounding noise (~1e-10 here; scipy's FFT has its own) decides whether one is "above" the
 * median. imagehash's bits are then noise; ours count values within TIE_EPS of the median as
 * equal, so they are the exact-arithmetic answer (a flat image hashes to 8000000000000000) and do
 * not change with the compiler or the CPU. Distinct coefficients of an 8-bit thumbnail are much
 * further apart than TIE_EPS, so ordinary images are unaffected.
 */
static uint64_t phash_bits(const uint8_t px[PHASH_SIDE * PHASH_SIDE])
{
    double c[HASH_SIDE][PHASH_SIDE];    /* cos(pi k (2n + 1) / 2N) */
    double cols[HASH_SIDE][PHASH_SIDE]; /* DCT along axis 0, rows k < 8 */
    double low[HASH_SIDE * HASH_SIDE], sorted[HASH_SIDE * HASH_SIDE];
    double median;
    uint64_t bits = 0;

    for (int k = 0; k < HASH_SIDE; k++)
        for (int n = 0; n < PHASH_SIDE; n++)
            c[k][n] = cos(PI * k * (2 * n + 1) / (2.0 * PHASH_SIDE));
    for (int k = 0; k < HASH_SIDE; k++)
        for (int j = 0; j < PHASH_SIDE; j++) {
            double s = 0.0;
            for (int n = 0; n < PHASH_SIDE; n++)
                s += px[n * PHASH_SIDE + j] * c[k][n];
            cols[k][j] = 2.0 * s;
        }
    for (int k = 0; k < HASH_SIDE; k++)
        for (int l = 0; l < HASH_SIDE; l++) {
            double s = 0.0;
            for (int j = 0; j < PHASH_SIDE; j++)
                s += cols[k][j] * c[l][j];
            low[k * HASH_SIDE + l] = 2.0 * s;
        }
    memcpy(sorted, low, sizeof(sorted));
    qsort(sorted, HASH_SIDE * HASH_SIDE, sizeof(sorted[0]), cmp_double);
    median = (sorted[31] + sorted[32]) / 2.0;
    for (int i = 0; i < HASH_SIDE * HASH_SIDE; i++)
        bits = (bits << 1) | (low[i] - median > TIE_EPS);
    return bits;
}

/* The dHash bits of a 9-wide, 8-high gray thumbnail. */
static uint64_t dhash_bits(const uint8_t px[DHASH_W * HASH_SIDE])
{
    uint64_t bits = 0;

    for (int r = 0; r < HASH_SIDE; r++)
        for (int c = 0; c < HASH_SIDE; c++)
            bits = (bits << 1) | (px[r * DHASH_W + c + 1] > px[r * DHASH_W + c]);
    return bits;
}

/* Pillow's L from R, G, B: ITU-R 601-2 luma, 16-bit fixed point, rounded. */
#define LUMA(p) ((uint8_t)(((p)[0] * 19595u + (p)[1] * 38470u + (p)[2] * 7471u + 0x8000u) >> 16))

void ap__hash_gray_row(const uint8_t *px, uint32_t w, unsigned channels, uint8_t *out)
{
    switch (channels) {
    case 1:
        memcpy(out, px, w);
        break;
    case 2:
        for (uint32_t x = 0; x < w; x++)
            out[x] = px[2 * x];
        break;
    /* RGB and RGBA spelled out separately: a constant step lets the compiler vectorise. */
    case 3:
        for (uint32_t x = 0; x < w; x++)
            out[x] = LUMA(px + 3 * (size_t)x);
        break;
    default:
        AP_ASSERT(channels == 4);
        for (uint32_t x = 0; x < w; x++)
            out[x] = LUMA(px + 4 * (size_t)x);
        break;
    }
}

ap_status ap_hash_image(const uint8_t *px, uint32_t w, uint32_t h, size_t stride, unsigned channels,
                        uint64_t *phash, uint64_t *dhash, ap_error *err)
{
    struct axis pw = {0}, ph = {0}, dw = {0}, dh = {0};
    uint8_t *gray = NULL, *pcols = NULL, *dcols = NULL;
    uint8_t pthumb[PHASH_SIDE * PHASH_SIDE], dthumb[DHASH_W * HASH_SIDE];
    ap_status rc;

    if (px == NULL || w == 0 || h == 0 || channels < 1 || channels > 4)
        return ap_error_set(err, AP_EINVAL, "hash: bad image (%ux%u, %u channels)", w, h, channels);
    if (w > AP_HASH_MAX_SIDE || h > AP_HASH_MAX_SIDE)
        return ap_error_set(err, AP_ETOOLARGE, "hash: image side over %u px (%ux%u)",
                            AP_HASH_MAX_SIDE, w, h);
    if (stride < (size_t)w * channels)
        return ap_error_set(err, AP_EINVAL, "hash: stride %zu under row size %zu", stride,
                            (size_t)w * channels);

    if (phash != NULL) {
        if ((rc = axis_init(&pw, w, PHASH_SIDE, err)) != AP_OK ||
            (rc = axis_init(&ph, h, PHASH_SIDE, err)) != AP_OK)
            goto out;
        pcols = malloc((size_t)h * PHASH_SIDE);
    }
    if (dhash != NULL) {
        if ((rc = axis_init(&dw, w, DHASH_W, err)) != AP_OK ||
            (rc = axis_init(&dh, h, HASH_SIDE, err)) != AP_OK)
            goto out;
        dcols = malloc((size_t)h * DHASH_W);
    }
    if (channels != 1)
        gray = malloc(w);
    if ((phash != NULL && pcols == NULL) || (dhash != NULL && dcols == NULL) ||
        (channels != 1 && gray == NULL)) {
        rc = ap_error_set(err, AP_ENOMEM, "hash: out of memory for a %ux%u image", w, h);
        goto out;
    }

    /* Pillow converts to "L" before resizing, so the gray values are rounded to 8 bits first. */
    for (uint32_t y = 0; y < h; y++) {
        const uint8_t *row = px + (size_t)y * stride;

        if (channels != 1) {
            ap__hash_gray_row(row, w, channels, gray);
            row = gray;
        }
        if (phash != NULL)
            hpass_row(&pw, row, pcols + (size_t)y * PHASH_SIDE);
        if (dhash != NULL)
            hpass_row(&dw, row, dcols + (size_t)y * DHASH_W);
    }
    if (phash != NULL) {
        vpass(&ph, pcols, PHASH_SIDE, pthumb);
        *phash = phash_bits(pthumb);
    }
    if (dhash != NULL) {
        vpass(&dh, dcols, DHASH_W, dthumb);
        *dhash = dhash_bits(dthumb);
    }
    rc = AP_OK;
out:
    axis_release(&pw);
    axis_release(&ph);
    axis_release(&dw);
    axis_release(&dh);
    free(gray);
    free(pcols);
    free(dcols);
    return rc;
}

ap_status ap_phash(const uint8_t *px, uint32_t w, uint32_t h, size_t stride, unsigned channels,
                   uint64_t *out, ap_error *err)
{
    if (out == NULL)
        return ap_error_set(err, AP_EINVAL, "hash: null output");
    return ap_hash_image(px, w, h, stride, channels, out, NULL, err);
}

ap_status ap_dhash(const uint8_t *px, uint32_t w, uint32_t h, size_t stride, unsigned channels,
                   uint64_t *out, ap_error *err)
{
    if (out == NULL)
        return ap_error_set(err, AP_EINVAL, "hash: null output");
    return ap_hash_image(px, w, h, stride, channels, NULL, out, err);
}

static const char hex_digits[] = "0123456789abcdef";

void ap_hash64_hex(uint64_t h, char out[17])
{
    for (int i = 0; i < 16; i++)
        out[i] = hex_digits[(h >> (60 - 4 * i)) & 15];
    out[16] = '\0';
}

ap_status ap_hash64_parse(const char *hex, uint64_t *out)
{
    uint64_t v = 0;

    if (hex == NULL || out == NULL)
        return AP_EINVAL;
    for (int i = 0; i < 16; i++) {
        char c = hex[i];
        unsigned d;

        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else
            return AP_EINVAL; /* a short string stops here too: its NUL is not a digit */
        v = (v << 4) | d;
    }
    if (hex[16] != '\0')
        return AP_EINVAL;
    *out = v;
    return AP_OK;
}

int ap_hamming64(uint64_t a, uint64_t b)
{
    return __builtin_popcountll(a ^ b);
}
