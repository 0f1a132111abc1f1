/*
 * encode.c - write the normalised pixels: JPEG (libjpeg-turbo; default q78, optimised Huffman
 * tables, 4:2:0), PNG (libspng) or WebP (libwebp). Only pixels go in, so no input metadata can
 * come out.
 */
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <spng.h>
#include <webp/encode.h>

#include "image/image.h"

struct jerr {
    struct jpeg_error_mgr pub;
    jmp_buf jmp;
};

static void on_error_exit(j_common_ptr cinfo)
{
    longjmp(((struct jerr *)cinfo->err)->jmp, 1);
}

static ap_status encode_jpeg(const struct ap__image *img, int quality, uint8_t **out,
                             size_t *out_len, ap_error *err)
{
    struct jpeg_compress_struct cc;
    struct jerr je;
    unsigned char *volatile mem = NULL;
    unsigned long mem_len = 0;

    memset(&cc, 0, sizeof(cc));
    cc.err = jpeg_std_error(&je.pub);
    je.pub.error_exit = on_error_exit;
    if (setjmp(je.jmp)) {
        jpeg_destroy_compress(&cc);
        free(mem);
        return ap_error_set(err, AP_EENCODE, "jpeg: encoder failed");
    }
    jpeg_create_compress(&cc);
    unsigned char *m = NULL;
    jpeg_mem_dest(&cc, &m, &mem_len);
    cc.image_width = img->w;
    cc.image_height = img->h;
    cc.input_components = (int)img->ch;
    cc.in_color_space = img->ch == 1 ? JCS_GRAYSCALE : JCS_RGB;
    jpeg_set_defaults(&cc);
    jpeg_set_quality(&cc, quality, TRUE);
    cc.optimize_coding = TRUE;
    cc.dct_method = JDCT_ISLOW;
    if (img->ch == 3) {
        /* 4:2:0: chroma at half resolution both ways (jpeg_set_defaults' choice; explicit). */
        cc.comp_info[0].h_samp_factor = 2;
        cc.comp_info[0].v_samp_factor = 2;
        cc.comp_info[1].h_samp_factor = cc.comp_info[1].v_samp_factor = 1;
        cc.comp_info[2].h_samp_factor = cc.comp_info[2].v_samp_factor = 1;
    }
    jpeg_start_compress(&cc, TRUE);
    while (cc.next_scanline < cc.image_height) {
        JSAMPROW rows[16];
        unsigned n = AP_MIN(16u, cc.image_height - cc.next_scanline);
        for (unsigned i = 0; i < n; i++)
            rows[i] = img->px + (size_t)(cc.next_scanline + i) * img->stride;
        jpeg_write_scanlines(&cc, rows, n);
    }
    jpeg_finish_compress(&cc);
    mem = m;
    jpeg_destroy_compress(&cc);
    *out = m;
    *out_len = mem_len;
    return AP_OK;
}

static ap_status encode_png(const struct ap__image *img, uint8_t **out, size_t *out_len,
                            ap_error *err)
{
    spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    ap_status rc = AP_OK;
    int e;
    uint8_t *tight = NULL;

    if (ctx == NULL)
        return ap_error_set(err, AP_ENOMEM, "png: out of memory");
    struct spng_ihdr ihdr = {0};
    ihdr.width = img->w;
    ihdr.height = img->h;
    ihdr.bit_depth = 8;
    ihdr.color_type = img->ch == 1 ? SPNG_COLOR_TYPE_GRAYSCALE : SPNG_COLOR_TYPE_TRUECOLOR;
    spng_set_option(ctx, SPNG_ENCODE_TO_BUFFER, 1);
    spng_set_ihdr(ctx, &ihdr);
    size_t row = (size_t)img->w * img->ch;
    const uint8_t *px = img->px;
    if (img->stride != row) {
        tight = malloc(row * img->h);
        if (tight == NULL) {
            rc = ap_error_set(err, AP_ENOMEM, "png: out of memory");
            goto out;
        }
        for (uint32_t y = 0; y < img->h; y++)
            memcpy(tight + y * row, img->px + y * img->stride, row);
        px = tight;
    }
    if ((e = spng_encode_image(ctx, px, row * img->h, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE))) {
        rc = ap_error_set(err, AP_EENCODE, "png: %s", spng_strerror(e));
        goto out;
    }
    size_t len = 0;
    void *buf = spng_get_png_buffer(ctx, &len, &e);
    if (buf == NULL) {
        rc = ap_error_set(err, AP_EENCODE, "png: %s", spng_strerror(e));
        goto out;
    }
    *out = buf;
    *out_len = len;
out:
    free(tight);
    spng_ctx_free(ctx);
    return rc;
}

static ap_status encode_webp(const struct ap__image *img, int quality, uint8_t **out,
                             size_t *out_len, ap_error *err)
{
    uint8_t *rgb = NULL, *buf = NULL;
    const uint8_t *px = img->px;
    size_t stride = img->stride;

    /* WebP has no gray mode; expand. */
    if (img->ch == 1) {
        rgb = malloc((size_t)img->w * 3 * img->h);
        if (rgb == NULL)
            return ap_error_set(err, AP_ENOMEM, "webp: out of memory");
        for (uint32_t y = 0; y < img->h; y++)
            for (uint32_t x = 0; x < img->w; x++)
                memset(rgb + ((size_t)y * img->w + x) * 3, img->px[y * img->stride + x], 3);
        px = rgb;
        stride = (size_t)img->w * 3;
    }
    size_t n = WebPEncodeRGB(px, (int)img->w, (int)img->h, (int)stride, (float)quality, &buf);
    free(rgb);
    if (n == 0)
        return ap_error_set(err, AP_EENCODE, "webp: encoder failed");
    /* Hand back memory the caller can free() (WebPFree may use another allocator). */
    *out = malloc(n);
    if (*out == NULL) {
        WebPFree(buf);
        return ap_error_set(err, AP_ENOMEM, "webp: out of memory");
    }
    memcpy(*out, buf, n);
    WebPFree(buf);
    *out_len = n;
    return AP_OK;
}

ap_status ap__encode(const struct ap__image *img, ap_encoding enc, int quality, uint8_t **out,
                     size_t *out_len, ap_error *err)
{
    switch (enc) {
    case AP_ENC_JPEG: return encode_jpeg(img, quality, out, out_len, err);
    case AP_ENC_PNG: return encode_png(img, out, out_len, err);
    case AP_ENC_WEBP: return encode_webp(img, quality, out, out_len, err);
    }
    return ap_error_set(err, AP_EINVAL, "encode: unknown encoding %d", (int)enc);
}
