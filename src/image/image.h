/*
 * image.h - internal interface between the pipeline (prep.c) and the per-format decoders.
 *
 * A decoder is one function, ap__decode_<fmt>(struct ap__dec *d), that:
 *   1. parses the header and fills d->hdr (stored width/height, EXIF orientation, metadata bits),
 *      then calls ap__dec_header(): this checks the pixel limits BEFORE any pixel allocation and
 *      returns the smallest stored-orientation size the pipeline needs, so a decoder that can
 *      shrink on load (JPEG DCT scaling, WebP scaled decode) picks the smallest scale >= it;
 *   2. optionally sets d->icc/d->icc_len (an ICC profile, decoder-owned, valid until it returns),
 *      d->cmyk_inverted (Adobe CMYK), d->premultiplied (associated alpha);
 *   3. calls ap__dec_begin() with the size and layout of the rows it will deliver;
 *   4. delivers every row, top to bottom, with ap__dec_rows() (any batch size);
 *   5. returns AP_OK, or the first failure (ap_error_set(d->err, ...)).
 *
 * Probe mode (ap_prep_probe()): d->probe is set, and ap__dec_header() records the header and
 * returns AP__DEC_PROBED instead of the target size. The decoder stops there and returns it as
 * it would any failure of ap__dec_header(), releasing what it holds: nothing sized by the image
 * has been allocated yet, and no pixel is decoded.
 *
 * The pipeline verifies that exactly height rows arrived: a decoder that stops early cannot pass
 * a half-grey image on as success. Decoders never allocate more than the limits allow: any
 * size they compute from the header is checked by ap__dec_header() first.
 *
 * Decoders deliver 8-bit samples; 16-bit sources are reduced by the decoder. Palettes are
 * expanded by the decoder. Colour management, CMYK, alpha flattening, grayscale, resampling,
 * orientation and encoding are the pipeline's.
 */
#ifndef AP_IMAGE_H
#define AP_IMAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aperture/prep.h"
#include "core/core.h"

/* Layouts of rows a decoder may deliver (8 bits per sample, interleaved). */
enum ap__pix {
    AP__PIX_G8 = 1,    /* gray */
    AP__PIX_GA8 = 2,   /* gray + alpha */
    AP__PIX_RGB8 = 3,  /* RGB */
    AP__PIX_RGBA8 = 4, /* RGB + alpha */
    AP__PIX_CMYK8 = 5, /* CMYK (set d->cmyk_inverted for Adobe-style inverted data) */
};

/* Samples per pixel of a layout. */
static inline unsigned ap__pix_channels(enum ap__pix p)
{
    switch (p) {
    case AP__PIX_G8: return 1;
    case AP__PIX_GA8: return 2;
    case AP__PIX_RGB8: return 3;
    case AP__PIX_RGBA8: return 4;
    case AP__PIX_CMYK8: return 4;
    }
    return 0;
}

/*
 * ap__dec_header()'s answer in probe mode: "header recorded, stop". Not a public code: it never
 * leaves prep.c (ap_prep_probe() turns it into AP_OK), and lies outside ap_status's range so no
 * code appended there can collide with it.
 */
#define AP__DEC_PROBED ((ap_status)0x10000)

struct ap__header {
    uint32_t width, height; /* stored size at full scale */
    int orientation;        /* EXIF 1..8 to apply; 1 when absent, invalid, or already applied */
    unsigned meta;          /* AP_META_* present in the input */
    unsigned warnings;      /* AP_WARN_* */
};

struct ap__sink; /* the pipeline's row consumer (prep.c) */

struct ap__dec {
    /* Set by the pipeline; read-only for decoders. */
    const uint8_t *buf;
    size_t len;
    const ap_prep_opts *opts;
    ap_error *err;
    bool probe; /* read the header only: ap__dec_header() returns AP__DEC_PROBED */
    /* Filled by the decoder. */
    struct ap__header hdr;
    const uint8_t *icc; /* ICC profile, decoder-owned, valid until the decoder returns */
    size_t icc_len;
    bool cmyk_inverted; /* CMYK samples are stored inverted (Adobe APP14 JPEGs) */
    bool premultiplied; /* RGBA/GA samples carry associated (premultiplied) alpha */
    unsigned scale_denom; /* shrink-on-load denominator used (1 = full size); for the result */
    /* Private to the pipeline. */
    struct ap__sink *sink;
    bool header_done;
};

/*
 * Check d->hdr against the limits and record it. Must be called once, before any allocation
 * sized by the image. On success sets *need_w and *need_h (stored orientation) to the smallest
 * decoded size the pipeline can use without losing output quality; decoders that cannot shrink
 * on load ignore them. Fails with AP_ETOOLARGE / AP_ETOOSMALL / AP_EDECODE (zero size).
 * In probe mode only the zero size is refused; otherwise it returns AP__DEC_PROBED (the header
 * is in d->hdr, orientation normalised to 1..8) and the decoder must return that at once.
 */
ap_status ap__dec_header(struct ap__dec *d, uint32_t *need_w, uint32_t *need_h);

/* Announce the rows to come: w x h pixels (h may be smaller than hdr.height when shrunk). */
ap_status ap__dec_begin(struct ap__dec *d, uint32_t w, uint32_t h, enum ap__pix pix);

/* Deliver n rows, each stride bytes apart. Rows arrive in order, top to bottom. */
ap_status ap__dec_rows(struct ap__dec *d, const uint8_t *rows, size_t stride, uint32_t n);

/*
 * Parse an EXIF block (TIFF header onwards, or with the "Exif\0\0" prefix) for the orientation,
 * and OR the AP_META_* bits it shows (EXIF, GPS, THUMBNAIL) into *meta. Returns 1..8; 1 when
 * absent or invalid. Never fails: broken EXIF is ignored, it is being removed anyway.
 */
int ap__exif_orientation(const uint8_t *exif, size_t len, unsigned *meta);

/* The decoders. Each in its own dec_<fmt>.c. */
ap_status ap__decode_jpeg(struct ap__dec *d);
ap_status ap__decode_png(struct ap__dec *d);
ap_status ap__decode_webp(struct ap__dec *d);
ap_status ap__decode_gif(struct ap__dec *d);
ap_status ap__decode_bmp(struct ap__dec *d);
ap_status ap__decode_tiff(struct ap__dec *d);
ap_status ap__decode_heif(struct ap__dec *d); /* HEIC/HEIF and AVIF */

/* A plain 8-bit image (1 or 3 channels) used between resample, orient and encode. */
struct ap__image {
    uint8_t *px;
    uint32_t w, h;
    unsigned ch;
    size_t stride;
};

/* Encode img into a malloc'd buffer. */
ap_status ap__encode(const struct ap__image *img, ap_encoding enc, int quality, uint8_t **out,
                     size_t *out_len, ap_error *err);

#endif
