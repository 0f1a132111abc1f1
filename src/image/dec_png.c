/*
 * dec_png.c - PNG via libspng: palette, tRNS, 16-bit, interlaced, gray(+alpha), APNG (the
 * default image).
 *
 * Non-interlaced images are decoded row by row straight into the pipeline, so a 100 MP PNG
 * costs one row of memory here; interlaced ones need the whole image (Adam7 fills rows in seven
 * passes) and are decoded into a buffer whose size the limits check bounded beforehand.
 * CRC errors are fatal (spng's default): a corrupt file is refused, not half-decoded.
 */
#include <spng.h>
#include <stdlib.h>
#include <string.h>

#include "image/image.h"

/* Metadata chunk limits: an iCCP or zTXt chunk that inflates past these is refused by spng
 * instead of being inflated (zTXt bombs). */
#define PNG_CHUNK_MAX (8u << 20)
#define PNG_CACHE_MAX (32u << 20)

static void note_metadata(spng_ctx *ctx, struct ap__header *hdr, bool *want_icc)
{
    uint32_t n = 0;
    struct spng_exif exif;
    if (spng_get_exif(ctx, &exif) == 0 && exif.data != NULL)
        hdr->orientation = ap__exif_orientation((const uint8_t *)exif.data, exif.length,
                                                &hdr->meta);
    if (spng_get_text(ctx, NULL, &n) == 0 && n > 0) {
        struct spng_text *t = calloc(n, sizeof(*t));
        if (t != NULL && spng_get_text(ctx, t, &n) == 0) {
            for (uint32_t i = 0; i < n; i++)
                hdr->meta |= strcmp(t[i].keyword, "XML:com.adobe.xmp") == 0 ? AP_META_XMP
                                                                             : AP_META_COMMENT;
        } else {
            hdr->meta |= AP_META_COMMENT;
        }
        free(t);
    }
    struct spng_iccp iccp;
    if (spng_get_iccp(ctx, &iccp) == 0) {
        hdr->meta |= AP_META_ICC;
        *want_icc = true;
    }
}

/* 16-bit gray+alpha rows to 8-bit with rounding. */
static void ga16_to_ga8(const uint16_t *in, uint8_t *out, size_t samples)
{
    for (size_t i = 0; i < samples; i++)
        out[i] = (uint8_t)((in[i] * 255u + 32767u) / 65535u);
}

ap_status ap__decode_png(struct ap__dec *d)
{
    spng_ctx *ctx = NULL;
    uint8_t *img = NULL, *row = NULL, *row8 = NULL;
    ap_status rc = AP_OK;
    int e;
    struct spng_ihdr ihdr;

    ctx = spng_ctx_new(0);
    if (ctx == NULL)
        return ap_error_set(d->err, AP_ENOMEM, "png: out of memory");
    spng_set_crc_action(ctx, SPNG_CRC_ERROR, SPNG_CRC_ERROR);
    spng_set_chunk_limits(ctx, PNG_CHUNK_MAX, PNG_CACHE_MAX);
    if ((e = spng_set_png_buffer(ctx, d->buf, d->len)) != 0 || (e = spng_get_ihdr(ctx, &ihdr))) {
        rc = ap_error_set(d->err, AP_EDECODE, "png: %s", spng_strerror(e));
        goto out;
    }
    d->hdr.width = ihdr.width;
    d->hdr.height = ihdr.height;
    d->hdr.orientation = 1;
    bool want_icc = false;
    note_metadata(ctx, &d->hdr, &want_icc);
    uint32_t need_w, need_h;
    if ((rc = ap__dec_header(d, &need_w, &need_h)) != AP_OK)
        goto out;

    /* Layout: keep gray single-channel; expand palettes; honour tRNS as alpha. */
    struct spng_trns trns;
    bool has_trns = spng_get_trns(ctx, &trns) == 0;
    bool gray = ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE ||
                ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE_ALPHA;
    bool alpha = has_trns || ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE_ALPHA ||
                 ihdr.color_type == SPNG_COLOR_TYPE_TRUECOLOR_ALPHA;
    int fmt;
    enum ap__pix pix;
    bool wide_gray = false;
    if (gray && !alpha && ihdr.bit_depth <= 8) {
        fmt = SPNG_FMT_G8;
        pix = AP__PIX_G8;
    } else if (gray && ihdr.bit_depth <= 8) {
        fmt = SPNG_FMT_GA8;
        pix = AP__PIX_GA8;
    } else if (gray) {
        /* spng has no 16-bit gray -> 8-bit conversion; take GA16 and reduce it ourselves. */
        fmt = SPNG_FMT_GA16;
        pix = AP__PIX_GA8;
        wide_gray = true;
    } else if (alpha) {
        fmt = SPNG_FMT_RGBA8;
        pix = AP__PIX_RGBA8;
    } else {
        fmt = SPNG_FMT_RGB8;
        pix = AP__PIX_RGB8;
    }

    size_t out_size;
    if ((e = spng_decoded_image_size(ctx, fmt, &out_size)) != 0) {
        rc = ap_error_set(d->err, AP_EDECODE, "png: %s", spng_strerror(e));
        goto out;
    }
    size_t stride = out_size / ihdr.height;
    size_t stride8 = (size_t)ihdr.width * ap__pix_channels(pix);

    struct spng_iccp iccp;
    if (want_icc && spng_get_iccp(ctx, &iccp) == 0 && iccp.profile_len > 0) {
        d->icc = (const uint8_t *)iccp.profile;
        d->icc_len = iccp.profile_len;
    }

    int flags = SPNG_DECODE_TRNS;
    if (ihdr.interlace_method == SPNG_INTERLACE_NONE) {
        if ((e = spng_decode_image(ctx, NULL, 0, fmt, flags | SPNG_DECODE_PROGRESSIVE)) != 0) {
            rc = ap_error_set(d->err, AP_EDECODE, "png: %s", spng_strerror(e));
            goto out;
        }
        row = malloc(stride);
        row8 = wide_gray ? malloc(stride8) : NULL;
        if (row == NULL || (wide_gray && row8 == NULL)) {
            rc = ap_error_set(d->err, AP_ENOMEM, "png: out of memory for a row");
            goto out;
        }
        if ((rc = ap__dec_begin(d, ihdr.width, ihdr.height, pix)) != AP_OK)
            goto out;
        for (uint32_t y = 0; y < ihdr.height; y++) {
            e = spng_decode_row(ctx, row, stride);
            if (e != 0 && !(e == SPNG_EOI && y == ihdr.height - 1)) {
                rc = ap_error_set(d->err, AP_EDECODE, "png: row %u: %s", y, spng_strerror(e));
                goto out;
            }
            if (wide_gray)
                ga16_to_ga8((const uint16_t *)row, row8, stride8);
            if ((rc = ap__dec_rows(d, wide_gray ? row8 : row, stride, 1)) != AP_OK)
                goto out;
        }
    } else {
        img = malloc(out_size);
        if (img == NULL) {
            rc = ap_error_set(d->err, AP_ENOMEM, "png: out of memory for %zu bytes", out_size);
            goto out;
        }
        if ((e = spng_decode_image(ctx, img, out_size, fmt, flags)) != 0) {
            rc = ap_error_set(d->err, AP_EDECODE, "png: %s", spng_strerror(e));
            goto out;
        }
        if ((rc = ap__dec_begin(d, ihdr.width, ihdr.height, pix)) != AP_OK)
            goto out;
        for (uint32_t y = 0; y < ihdr.height; y++) {
            uint8_t *r = img + (size_t)y * stride;
            if (wide_gray) /* in place: the 8-bit row is half the 16-bit one */
                ga16_to_ga8((const uint16_t *)r, r, stride8);
            if ((rc = ap__dec_rows(d, r, stride, 1)) != AP_OK)
                goto out;
        }
    }
    /* Text chunks after IDAT are only visible now. */
    uint32_t ntext = 0;
    if (spng_get_text(ctx, NULL, &ntext) == 0 && ntext > 0)
        d->hdr.meta |= AP_META_COMMENT;
out:
    free(img);
    free(row);
    free(row8);
    spng_ctx_free(ctx);
    d->icc = NULL;
    d->icc_len = 0;
    return rc;
}
