/*
 * resample.c - separable Lanczos-3 with weights computed once per axis.
 *
 * Hand-written rather than borrowed because this is the part of the pipeline, after decode,
 * where the time goes: weights are 14-bit fixed point (int16) so the vertical pass, which runs
 * across whole rows, is an int32 multiply-accumulate the compiler vectorises; intermediate rows
 * are 8-bit like Pillow's, so hashes computed over our resizes track imagehash's closely.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "image/resample.h"

#define WBITS 14

/*
 * The two passes are also compiled for AVX2 (8-lane integer multiplies, FMA) and picked at load
 * time by the CPU (GCC function multi-versioning, an ifunc); other CPUs run the baseline build.
 * Results are identical: same weights, same integer arithmetic, float lanes do the same ops.
 */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(AP_NO_CLONES)
#define AP_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define AP_SIMD_CLONES
#endif
#define WONE (1 << WBITS)

static double sinc(double x)
{
    if (x == 0.0)
        return 1.0;
    x *= 3.14159265358979323846;
    return sin(x) / x;
}

static double lanczos3(double x)
{
    if (x <= -3.0 || x >= 3.0)
        return 0.0;
    return sinc(x) * sinc(x / 3.0);
}

void ap__axis_release(struct ap__axis *ax)
{
    if (ax == NULL)
        return;
    free(ax->start);
    free(ax->weight);
    free(ax->fweight);
    free(ax->scratch);
    memset(ax, 0, sizeof(*ax));
}

ap_status ap__axis_init(struct ap__axis *ax, uint32_t in_len, uint32_t out_len, ap_error *err)
{
    double *tmp = NULL;
    ap_status rc = AP_OK;

    memset(ax, 0, sizeof(*ax));
    if (in_len == 0 || out_len == 0)
        return ap_error_set(err, AP_EINVAL, "resample: zero-sized axis");
    double scale = (double)in_len / out_len;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 3.0 * filterscale;
    uint32_t taps = (uint32_t)ceil(support) * 2 + 1;
    if (taps > in_len + 2)
        taps = in_len + 2;

    ax->in_len = in_len;
    ax->out_len = out_len;
    ax->taps = taps;
    ax->start = malloc(sizeof(int32_t) * out_len * 2);
    ax->weight = calloc((size_t)out_len * taps, sizeof(int16_t));
    ax->fweight = aligned_alloc(16, (size_t)out_len * taps * 4 * sizeof(float));
    /* Room for taps - 1 zero pixels past the row end: the RGB pass runs every output over all
     * taps (padded weights are 0) so its inner loop has a fixed trip count. */
    size_t scratch_len = ((size_t)in_len + taps) * 4 * sizeof(float);
    ax->scratch = aligned_alloc(16, scratch_len);
    if (ax->scratch != NULL)
        memset(ax->scratch, 0, scratch_len);
    if (ax->fweight != NULL)
        memset(ax->fweight, 0, (size_t)out_len * taps * 4 * sizeof(float));
    tmp = malloc(sizeof(double) * taps);
    if (ax->start == NULL || ax->weight == NULL || ax->fweight == NULL || ax->scratch == NULL ||
        tmp == NULL) {
        rc = ap_error_set(err, AP_ENOMEM, "resample: out of memory for %u weights", out_len);
        goto out;
    }
    int32_t *count = ax->start + out_len; /* second half of start[]: taps actually used */
    double ss = 1.0 / filterscale;
    for (uint32_t i = 0; i < out_len; i++) {
        double center = (i + 0.5) * scale;
        int64_t lo = (int64_t)(center - support + 0.5);
        int64_t hi = (int64_t)(center + support + 0.5);
        if (lo < 0)
            lo = 0;
        if (hi > (int64_t)in_len)
            hi = in_len;
        int64_t n = hi - lo;
        if (n > (int64_t)taps)
            n = taps;
        if (n < 1) {
            n = 1;
            lo = AP_MIN((int64_t)in_len - 1, (int64_t)center);
        }
        double sum = 0.0;
        for (int64_t k = 0; k < n; k++) {
            tmp[k] = lanczos3(((double)(lo + k) - center + 0.5) * ss);
            sum += tmp[k];
        }
        /* Quantise, then put the rounding residue on the largest tap so weights sum exactly to
         * WONE: a flat field stays exactly flat through any number of passes. */
        int16_t *w = ax->weight + (size_t)i * taps;
        float *fw = ax->fweight + (size_t)i * taps * 4;
        int32_t isum = 0, kmax = 0;
        for (int64_t k = 0; k < n; k++) {
            double v = sum != 0.0 ? tmp[k] / sum : (k == 0 ? 1.0 : 0.0);
            for (int c = 0; c < 4; c++) /* stored broadcast: one aligned load per tap */
                fw[4 * k + c] = (float)v;
            w[k] = (int16_t)lrint(v * WONE);
            isum += w[k];
            if (w[k] > w[kmax])
                kmax = (int32_t)k;
        }
        w[kmax] = (int16_t)(w[kmax] + (WONE - isum));
        ax->start[i] = (int32_t)lo;
        count[i] = (int32_t)n;
    }
out:
    free(tmp);
    if (rc != AP_OK)
        ap__axis_release(ax);
    return rc;
}

static inline uint8_t clip8(int32_t v)
{
    v >>= WBITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

/* One RGB row from the widened float pixels; inlined per tap count. */
static inline __attribute__((always_inline)) void hrow_rgb(const struct ap__axis *ax,
                                                           const v4f *px, uint8_t *out,
                                                           const uint32_t taps)
{
    const v4f *wt = (const v4f *)(const void *)ax->fweight;
    for (uint32_t i = 0; i < ax->out_len; i++) {
        const v4f *p = px + ax->start[i];
        const v4f *w = wt + (size_t)i * taps;
        v4f acc = {0.5f, 0.5f, 0.5f, 0.5f};
        for (uint32_t k = 0; k < taps; k++)
            acc += p[k] * w[k];
        /* Clamp to 0..255 with lane masks rather than per-channel branches. */
        v4i q = __builtin_convertvector(acc, v4i);
        q &= ~(q < 0);
        v4i over = q > 255;
        q = (q & ~over) | (over & 255);
        out[3 * i] = (uint8_t)q[0];
        out[3 * i + 1] = (uint8_t)q[1];
        out[3 * i + 2] = (uint8_t)q[2];
    }
}

AP_SIMD_CLONES void ap__hpass_row(const struct ap__axis *ax, unsigned ch, const uint8_t *in,
                                  uint8_t *out)
{
    const int32_t *count = ax->start + ax->out_len;
    const uint32_t taps = ax->taps;
    const int32_t half = 1 << (WBITS - 1);

    if (ch == 3) {
        /* RGB: widen the row once to float RGBX, then each tap is one 4-lane multiply-add of
         * a whole pixel (GCC vector extensions: SSE on x86-64, NEON on arm64, scalar
         * elsewhere). The common tap counts get a constant trip count the compiler unrolls. */
        v4f *px = (v4f *)(void *)ax->scratch;
        for (uint32_t x = 0; x < ax->in_len; x++)
            px[x] = __builtin_convertvector(((v4i){in[3 * x], in[3 * x + 1], in[3 * x + 2], 0}),
                                            v4f);
        switch (taps) {
        case 7: hrow_rgb(ax, px, out, 7); break;
        case 9: hrow_rgb(ax, px, out, 9); break;
        case 11: hrow_rgb(ax, px, out, 11); break;
        case 13: hrow_rgb(ax, px, out, 13); break;
        default: hrow_rgb(ax, px, out, taps); break;
        }
    } else if (ch == 1) {
        for (uint32_t i = 0; i < ax->out_len; i++) {
            const uint8_t *p = in + ax->start[i];
            const int16_t *w = ax->weight + (size_t)i * taps;
            int32_t v = half;
            for (int32_t k = 0; k < count[i]; k++)
                v += p[k] * w[k];
            out[i] = clip8(v);
        }
    } else {
        for (uint32_t i = 0; i < ax->out_len; i++) {
            const uint8_t *p = in + (size_t)ax->start[i] * ch;
            const int16_t *w = ax->weight + (size_t)i * taps;
            for (unsigned c = 0; c < ch; c++) {
                int32_t v = half;
                for (int32_t k = 0; k < count[i]; k++)
                    v += p[k * ch + c] * w[k];
                out[i * ch + c] = clip8(v);
            }
        }
    }
}

AP_SIMD_CLONES ap_status ap__vpass(const struct ap__axis *ax, uint32_t w, unsigned ch,
                                  const uint8_t *src,
                    size_t sstride, uint8_t *dst, size_t dstride, ap_error *err)
{
    const int32_t *count = ax->start + ax->out_len;
    size_t n = (size_t)w * ch;
    int32_t *acc = malloc(n * sizeof(int32_t));
    if (acc == NULL)
        return ap_error_set(err, AP_ENOMEM, "resample: out of memory for a %zu-sample row", n);
    for (uint32_t i = 0; i < ax->out_len; i++) {
        const int16_t *wt = ax->weight + (size_t)i * ax->taps;
        for (size_t x = 0; x < n; x++)
            acc[x] = 1 << (WBITS - 1);
        /* Row-at-a-time accumulation: each inner loop is a straight widening
         * multiply-accumulate over contiguous bytes, which -O3 turns into SIMD. */
        for (int32_t k = 0; k < count[i]; k++) {
            const uint8_t *restrict row = src + (size_t)(ax->start[i] + k) * sstride;
            const int16_t wk = wt[k];
            int32_t *restrict a = acc;
            /* 16 x 16 -> 32-bit products: the widening multiply SSE2 has (pmullw/pmulhw). */
            for (size_t x = 0; x < n; x++)
                a[x] += (int32_t)(int16_t)row[x] * wk;
        }
        uint8_t *restrict o = dst + (size_t)i * dstride;
        for (size_t x = 0; x < n; x++) {
            int32_t v = acc[x] >> WBITS;
            o[x] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
    free(acc);
    return AP_OK;
}

ap_status ap__resize(const struct ap__image *src, uint32_t dw, uint32_t dh, struct ap__image *dst,
                     ap_error *err)
{
    struct ap__axis hx = {0}, vy = {0};
    uint8_t *mid = NULL, *out = NULL;
    ap_status rc;
    unsigned ch = src->ch;

    memset(dst, 0, sizeof(*dst));
    if ((rc = ap__axis_init(&hx, src->w, dw, err)) != AP_OK)
        goto out;
    if ((rc = ap__axis_init(&vy, src->h, dh, err)) != AP_OK)
        goto out;
    size_t mstride = (size_t)dw * ch;
    mid = malloc(mstride * src->h);
    out = malloc(mstride * dh);
    if (mid == NULL || out == NULL) {
        rc = ap_error_set(err, AP_ENOMEM, "resample: out of memory for %ux%u", dw, src->h);
        goto out;
    }
    for (uint32_t y = 0; y < src->h; y++)
        ap__hpass_row(&hx, ch, src->px + (size_t)y * src->stride, mid + (size_t)y * mstride);
    if ((rc = ap__vpass(&vy, dw, ch, mid, mstride, out, mstride, err)) != AP_OK)
        goto out;
    dst->px = out;
    out = NULL;
    dst->w = dw;
    dst->h = dh;
    dst->ch = ch;
    dst->stride = mstride;
out:
    free(mid);
    free(out);
    ap__axis_release(&hx);
    ap__axis_release(&vy);
    return rc;
}
