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

static void raw_profile_exif(const char *text, struct ap__header *hdr);

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
            for (uint32_t i = 0; i < n; i++) {
                if (strcmp(t[i].keyword, "XML:com.adobe.xmp") == 0)
                    hdr->meta |= AP_META_XMP;
                else if (strcmp(t[i].keyword, "Raw profile type exif") == 0 ||
                         strcmp(t[i].keyword, "Raw profile type APP1") == 0)
                    raw_profile_exif(t[i].text, hdr);
                else if (strncmp(t[i].keyword, "Raw profile type iptc", 21) == 0)
                    hdr->meta |= AP_META_IPTC;
                else
                    hdr->meta |= AP_META_COMMENT;
            }
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

/* A bounded walk over the chunk headers: animation (acTL) and bytes after IEND (polyglots). */
static void png_walk(const uint8_t *buf, size_t len, struct ap__header *hdr)
{
    size_t off = 8;
    while (off + 12 <= len) {
        uint32_t n = (uint32_t)buf[off] << 24 | (uint32_t)buf[off + 1] << 16 |
                     (uint32_t)buf[off + 2] << 8 | buf[off + 3];
        const uint8_t *type = buf + off + 4;
        if (n > len - off - 12)
            return;
        if (memcmp(type, "acTL", 4) == 0)
            hdr->warnings |= AP_WARN_MULTI_FRAME; /* APNG: the default image is decoded */
        off += (size_t)n + 12;
        if (memcmp(type, "IEND", 4) == 0) {
            if (off < len)
                hdr->warnings |= AP_WARN_TRAILING_DATA;
            return;
        }
    }
}

/* ImageMagick stores EXIF in a text chunk "Raw profile type exif": "\nexif\n  LEN\nHEX...".
 * Decode it to bytes for the orientation; malformed text is ignored. */
static void raw_profile_exif(const char *text, struct ap__header *hdr)
{
    const char *p = strstr(text, "exif");
    if (p == NULL)
        return;
    p += 4;
    while (*p == '\n' || *p == ' ')
        p++;
    char *end;
    unsigned long n = strtoul(p, &end, 10);
    if (end == p || n == 0 || n > (1u << 20))
        return;
    uint8_t *bytes = malloc(n);
    if (bytes == NULL)
        return;
    size_t got = 0;
    int hi = -1;
    for (p = end; *p && got < n; p++) {
        int v = (*p >= '0' && *p <= '9') ? *p - '0'
                : (*p >= 'a' && *p <= 'f') ? *p - 'a' + 10
                : (*p >= 'A' && *p <= 'F') ? *p - 'A' + 10
                                           : -1;
        if (v < 0)
            continue;
        if (hi < 0) {
            hi = v;
        } else {
            bytes[got++] = (uint8_t)(hi << 4 | v);
            hi = -1;
        }
    }
    if (got == n)
        hdr->orientation = ap__exif_orientation(bytes, n, &hdr->meta);
    free(bytes);
}

/* 16-bit gray+alpha rows to 8-bit with rounding; be: samples are big-endian (as stored). */
static void ga16_to_ga8(const uint8_t *in, uint8_t *out, size_t samples, bool be)
{
    for (size_t i = 0; i < samples; i++) {
        uint16_t v;
        if (be)
            v = (uint16_t)(in[2 * i] << 8 | in[2 * i + 1]);
        else
            memcpy(&v, in + 2 * i, 2);
        out[i] = (uint8_t)((v * 255u + 32767u) / 65535u);
    }
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
    png_walk(d->buf, d->len, &d->hdr);
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
    bool wide_gray = false, raw_be16 = false;
    if (gray && !alpha && ihdr.bit_depth <= 8) {
        fmt = SPNG_FMT_G8;
        pix = AP__PIX_G8;
    } else if (ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE_ALPHA) {
        /* spng converts only colour type 0 to GA; type 4 is already gray+alpha, 8 or 16 bit:
         * take it as stored (16-bit samples big-endian) and reduce 16-bit ourselves. */
        fmt = SPNG_FMT_PNG;
        pix = AP__PIX_GA8;
        wide_gray = raw_be16 = ihdr.bit_depth == 16;
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
                ga16_to_ga8(row, row8, stride8, raw_be16);
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
                ga16_to_ga8(r, r, stride8, raw_be16);
            if ((rc = ap__dec_rows(d, r, stride, 1)) != AP_OK)
                goto out;
        }
    }
    /* Read on to IEND: a file cut after its last row (no IEND) is truncated, not complete;
     * and text chunks after IDAT are only visible now. */
    if ((e = spng_decode_chunks(ctx)) != 0) {
        rc = ap_error_set(d->err, AP_EDECODE, "png: after the image data: %s", spng_strerror(e));
        goto out;
    }
    /* An eXIf chunk after IDAT (allowed by Pillow and some writers) is only visible now. Its
     * orientation still applies: orientation is the pipeline's last step. */
    struct spng_exif late_exif;
    if (!(d->hdr.meta & AP_META_EXIF) && spng_get_exif(ctx, &late_exif) == 0 &&
        late_exif.data != NULL)
        d->hdr.orientation = ap__exif_orientation((const uint8_t *)late_exif.data,
                                                  late_exif.length, &d->hdr.meta);
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
