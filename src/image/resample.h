/*
 * resample.h - our separable Lanczos-3 resampler (hand-written: this is where the speed is).
 *
 * Geometry follows the usual convention (Pillow, libvips): output pixel i samples the input
 * around centre (i + 0.5) * in/out, and on reduction the kernel is stretched by in/out so every
 * input pixel contributes (antialiasing). Weights are computed once per axis and geometry, as
 * 14-bit fixed point normalised to sum exactly to 1 << 14; inner loops are plain C written for
 * the auto-vectoriser (resample.c is compiled with -O3).
 *
 * Two ways in:
 *  - streaming: ap__hpass_row() reduces each decoded row horizontally as it arrives, and
 *    ap__vpass() reduces the stored rows vertically; memory follows out_w x in_h, not the input;
 *  - whole image: ap__resize().
 */
#ifndef AP_RESAMPLE_H
#define AP_RESAMPLE_H

#include <stdint.h>

#include "image/image.h"

/*
 * Weights for one axis: out_len outputs, each reading taps inputs from start[i]. An axis also
 * owns a scratch row for the RGB horizontal pass, so one axis serves one thread at a time.
 */
struct ap__axis {
    uint32_t in_len, out_len, taps;
    int32_t *start;  /* [out_len] first input index, then [out_len] taps actually used */
    int16_t *weight; /* [out_len * taps] 14-bit fixed point, zero-padded */
    float *fweight;  /* [out_len * taps * 4] the same as float, each broadcast to 4 lanes */
    float *scratch;  /* [in_len * 4] one row widened to float RGBX */
};

/* Compute Lanczos-3 weights for in_len -> out_len. Fails only on allocation (AP_ENOMEM). */
ap_status ap__axis_init(struct ap__axis *ax, uint32_t in_len, uint32_t out_len, ap_error *err);
void ap__axis_release(struct ap__axis *ax);

/* Horizontal pass over one row of ch-channel pixels: in has ax->in_len px, out ax->out_len px. */
void ap__hpass_row(const struct ap__axis *ax, unsigned ch, const uint8_t *in, uint8_t *out);

/*
 * Vertical pass: src holds ax->in_len rows of w*ch bytes (stride sstride); writes ax->out_len rows
 * into dst (stride dstride).
 */
ap_status ap__vpass(const struct ap__axis *ax, uint32_t w, unsigned ch, const uint8_t *src,
                    size_t sstride, uint8_t *dst, size_t dstride, ap_error *err);

/* Resize src to dw x dh (same channels); allocates dst->px (free()). */
ap_status ap__resize(const struct ap__image *src, uint32_t dw, uint32_t dh, struct ap__image *dst,
                     ap_error *err);

#endif
