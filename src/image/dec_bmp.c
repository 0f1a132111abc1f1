/*
 * dec_bmp.c - BMP decoder, hand-written (no BMP library in our stack).
 *
 * Accepts BITMAPFILEHEADER followed by BITMAPCOREHEADER (OS/2 1.x, 12 bytes), OS/2 2.x
 * (16 or 64 bytes), BITMAPINFOHEADER (40) and its V2/V3/V4/V5 extensions (52/56/108/124);
 * 1/2/4/8-bit palettes, 16/32-bit with default or BI_BITFIELDS/BI_ALPHABITFIELDS masks, 24-bit,
 * RLE4 and RLE8; bottom-up and top-down. Embedded JPEG/PNG, OS/2 Huffman and RLE24 are refused
 * with AP_EUNSUPPORTED.
 *
 * Everything is read straight from d->buf, so a bottom-up file is delivered top to bottom by
 * reading its rows backwards; only one output row is allocated. RLE cannot be read backwards:
 * a first pass validates the stream and records the decoder state at the start of every band
 * of rows, and the second pass decodes the bands in delivery order into a small band buffer.
 *
 * Safety: every offset is checked against d->len before it is read, sizes are computed in
 * 64 bits from 32-bit fields (no product can wrap), and ap__dec_header() sees the declared size
 * before any allocation that depends on it. Palette indices past the palette read black.
 */
#include <stdlib.h>
#include <string.h>

#include "image/image.h"

/* biCompression values. OS/2 2.x reuses 3 and 4 for Huffman 1D and RLE24. */
enum {
    BI_RGB = 0,
    BI_RLE8 = 1,
    BI_RLE4 = 2,
    BI_BITFIELDS = 3,
    BI_JPEG = 4,
    BI_PNG = 5,
    BI_ALPHABITFIELDS = 6,
};

/* One channel of a 16/32-bit pixel: value = (px & mask) >> shift, scaled from max to 255. */
struct chan {
    uint32_t mask;
    unsigned shift;
    uint32_t max; /* mask >> shift; 0 when the channel is absent */
};

struct bmp {
    const uint8_t *buf;
    size_t len;
    uint32_t w, h;
    bool top_down;
    unsigned bpp;
    uint32_t comp;
    size_t data_off;     /* first byte of the pixel data */
    uint64_t stride;     /* bytes per stored row (uncompressed) */
    uint8_t pal[256][3]; /* RGB; entries past the file's palette stay black */
    unsigned n_pal;
    struct chan r, g, b, a; /* 16/32-bit */
    bool alpha;             /* deliver the a channel */
};

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The colour space signature of an ICC profile ("RGB ", "GRAY", ...), 0 if too short. */
static uint32_t icc_space(const uint8_t *icc, size_t len)
{
    if (icc == NULL || len < 20)
        return 0;
    /* ICC headers are big-endian. */
    return (uint32_t)icc[16] << 24 | (uint32_t)icc[17] << 16 | (uint32_t)icc[18] << 8 | icc[19];
}

/*
 * Describe one channel mask. Fails on masks that are not one run of contiguous bits or that
 * do not fit the pixel size: the scaling below assumes both.
 */
static bool chan_init(struct chan *c, uint32_t mask, unsigned bpp)
{
    c->mask = mask;
    c->shift = 0;
    c->max = 0;
    if (mask == 0)
        return true;
    if (bpp < 32 && (mask >> bpp) != 0)
        return false;
    while (((mask >> c->shift) & 1) == 0)
        c->shift++;
    c->max = mask >> c->shift;
    /* Contiguous: max + 1 is a power of two (computed in 64 bits: max may be 0xffffffff). */
    uint64_t m1 = (uint64_t)c->max + 1;
    return (m1 & (m1 - 1)) == 0;
}

/* Scale one channel of px to 0..255, rounding; absent channels read 0. */
static uint8_t chan_get(const struct chan *c, uint32_t px)
{
    if (c->max == 0)
        return 0;
    uint64_t v = (px & c->mask) >> c->shift;
    return (uint8_t)((v * 255 + c->max / 2) / c->max);
}

/* Palette index of pixel x of a packed row (1/2/4/8 bits, most significant bits first). */
static unsigned pal_index(const uint8_t *row, uint32_t x, unsigned bpp)
{
    switch (bpp) {
    case 1:
        return row[x >> 3] >> (7 - (x & 7)) & 1;
    case 2:
        return row[x >> 2] >> (6 - 2 * (x & 3)) & 3;
    case 4:
        return row[x >> 1] >> (x & 1 ? 0 : 4) & 15;
    default:
        return row[x];
    }
}

/* Convert one stored row (uncompressed) to the delivered layout (ch = 1, 3 or 4). */
static void convert_row(const struct bmp *b, const uint8_t *src, uint8_t *dst, unsigned ch)
{
    for (uint32_t x = 0; x < b->w; x++, dst += ch) {
        if (b->bpp <= 8) {
            const uint8_t *c = b->pal[pal_index(src, x, b->bpp)];
            if (ch == 1)
                dst[0] = c[0];
            else
                memcpy(dst, c, 3);
            continue;
        }
        if (b->bpp == 24) {
            const uint8_t *p = src + (size_t)x * 3;
            dst[0] = p[2];
            dst[1] = p[1];
            dst[2] = p[0];
            continue;
        }
        uint32_t px = b->bpp == 16 ? rd16(src + (size_t)x * 2) : rd32(src + (size_t)x * 4);
        dst[0] = chan_get(&b->r, px);
        dst[1] = chan_get(&b->g, px);
        dst[2] = chan_get(&b->b, px);
        if (ch == 4)
            dst[3] = chan_get(&b->a, px);
    }
}

/*
 * Whether any pixel has a nonzero alpha. Files with an alpha mask but all-zero alpha are
 * common (writers that fill the mask field but not the samples) and are meant opaque.
 */
static bool any_alpha(const struct bmp *b)
{
    const uint8_t *base = b->buf + b->data_off;
    unsigned bytes = b->bpp / 8;
    for (uint32_t y = 0; y < b->h; y++) {
        const uint8_t *row = base + y * b->stride;
        for (uint32_t x = 0; x < b->w; x++) {
            const uint8_t *p = row + (size_t)x * bytes;
            uint32_t px = bytes == 2 ? rd16(p) : rd32(p);
            if ((px & b->a.mask) != 0)
                return true;
        }
    }
    return false;
}

/* ---- RLE ---------------------------------------------------------------------------------- */

/* Rows per RLE band: enough for ~1 MiB of indices, at least 64 rows. */
#define RLE_BAND_BYTES (1u << 20)

/* The RLE decoder's position: byte offset, column and row (stored order: bottom-up rows count
 * from the bottom). x is clamped to the width: past it nothing is drawn. */
struct rle_state {
    size_t pos;
    uint32_t x;
    uint64_t y;
    bool live; /* false: the band is never reached (end of bitmap came first) */
};

/*
 * Run the RLE stream from *st until the row reaches hi or the end-of-bitmap marker. Pixels of
 * rows lo <= y < hi go to band (w indices per row, row y - lo) when band is not NULL. When cp is
 * not NULL, the state at the first row of each band of band_rows rows is stored in cp[k] (the
 * validating first pass). Fails when the stream ends before the end-of-bitmap marker or the last
 * row.
 */
static ap_status rle_run(const struct bmp *b, struct rle_state *st, uint64_t lo, uint64_t hi,
                         uint8_t *band, struct rle_state *cp, uint64_t band_rows, ap_error *err)
{
    const uint8_t *p = b->buf;
    size_t end = b->len;
    bool rle8 = b->comp == BI_RLE8;
    size_t pos = st->pos;
    uint32_t x = st->x;
    uint64_t y = st->y;

    while (y < hi) {
        if (end - pos < 2) {
            /* Some writers drop the final end-of-line/end-of-bitmap: accept a stream that
             * stops exactly after the last pixel of the last row. */
            if (y + 1 == b->h && x >= b->w)
                break;
            return ap_error_set(err, AP_EDECODE, "bmp: rle data ends at row %llu",
                                (unsigned long long)y);
        }
        unsigned n = p[pos], c = p[pos + 1];
        pos += 2;
        if (n > 0) {
            /* A run of n pixels: one index (RLE8) or two alternating nibbles (RLE4). */
            if (band != NULL && y >= lo) {
                uint8_t *row = band + (y - lo) * b->w;
                unsigned k = (unsigned)AP_MIN((uint32_t)n, b->w - x);
                for (unsigned i = 0; i < k; i++)
                    row[x + i] = rle8 ? (uint8_t)c : (uint8_t)(i & 1 ? c & 15 : c >> 4);
            }
            x += (uint32_t)AP_MIN((uint32_t)n, b->w - x);
            continue;
        }
        uint64_t y0 = y;
        if (c == 0) { /* end of line */
            y++;
            x = 0;
        } else if (c == 1) { /* end of bitmap: the rest stays index 0 */
            y = UINT64_MAX;
            break;
        } else if (c == 2) { /* delta: move right and down */
            if (end - pos < 2)
                return ap_error_set(err, AP_EDECODE, "bmp: rle delta cut short");
            x += AP_MIN((uint32_t)p[pos], b->w - x);
            y += p[pos + 1];
            pos += 2;
        } else { /* literal: c indices, the bytes padded to an even count */
            size_t bytes = rle8 ? c : (c + 1) / 2;
            bytes += bytes & 1;
            if (end - pos < bytes)
                return ap_error_set(err, AP_EDECODE, "bmp: rle literal cut short");
            if (band != NULL && y >= lo) {
                uint8_t *row = band + (y - lo) * b->w;
                unsigned k = (unsigned)AP_MIN((uint32_t)c, b->w - x);
                for (unsigned i = 0; i < k; i++)
                    row[x + i] = rle8
                                     ? p[pos + i]
                                     : (uint8_t)(i & 1 ? p[pos + i / 2] & 15 : p[pos + i / 2] >> 4);
            }
            x += (uint32_t)AP_MIN((uint32_t)c, b->w - x);
            pos += bytes;
        }
        /* Entering band k for the first time: remember where its decoding starts. */
        if (cp != NULL && y > y0) {
            for (uint64_t k = y0 / band_rows + 1; k * band_rows <= y && k * band_rows < b->h; k++)
                cp[k] = (struct rle_state){.pos = pos, .x = x, .y = y, .live = true};
        }
    }
    st->pos = pos;
    st->x = x;
    st->y = y;
    return AP_OK;
}

/* Decode and deliver an RLE4/RLE8 image (see the file comment for the two passes). */
static ap_status decode_rle(struct ap__dec *d, const struct bmp *b, unsigned ch)
{
    struct rle_state *cp = NULL;
    uint8_t *band = NULL, *row = NULL;
    ap_status st;

    uint64_t band_rows = AP_MAX((uint64_t)64, RLE_BAND_BYTES / b->w);
    band_rows = AP_MIN(band_rows, (uint64_t)b->h);
    uint64_t n_bands = (b->h + band_rows - 1) / band_rows;
    cp = calloc(n_bands, sizeof(*cp));
    band = malloc(band_rows * b->w);
    row = malloc((size_t)b->w * ch);
    if (cp == NULL || band == NULL || row == NULL) {
        st = ap_error_set(d->err, AP_ENOMEM, "bmp: out of memory for rle bands");
        goto out;
    }

    /* Pass 1: validate the whole stream and find where each band starts. */
    cp[0] = (struct rle_state){.pos = b->data_off, .live = true};
    struct rle_state scan = cp[0];
    st = rle_run(b, &scan, b->h, b->h, NULL, cp, band_rows, d->err);
    if (st != AP_OK)
        goto out;

    /* Pass 2: bands in delivery order; within a band, rows in delivery order. */
    for (uint64_t i = 0; i < n_bands; i++) {
        uint64_t k = b->top_down ? i : n_bands - 1 - i;
        uint64_t lo = k * band_rows, hi = AP_MIN(lo + band_rows, (uint64_t)b->h);
        /* Pixels the stream skips (delta, early end of line or bitmap) are index 0, as most
         * decoders show them. */
        memset(band, 0, (hi - lo) * b->w);
        if (cp[k].live) {
            struct rle_state s = cp[k];
            st = rle_run(b, &s, lo, hi, band, NULL, band_rows, d->err);
            if (st != AP_OK)
                goto out;
        }
        for (uint64_t j = 0; j < hi - lo; j++) {
            uint64_t y = b->top_down ? lo + j : hi - 1 - j;
            const uint8_t *src = band + (y - lo) * b->w;
            uint8_t *o = row;
            for (uint32_t x = 0; x < b->w; x++, o += ch) {
                if (ch == 1)
                    o[0] = b->pal[src[x]][0];
                else
                    memcpy(o, b->pal[src[x]], 3);
            }
            st = ap__dec_rows(d, row, (size_t)b->w * ch, 1);
            if (st != AP_OK)
                goto out;
        }
    }

out:
    free(row);
    free(band);
    free(cp);
    return st;
}

/* ---- header ------------------------------------------------------------------------------- */

/*
 * Parse the file and info headers, masks and palette into b, and the metadata into d->hdr and
 * d->icc. Checks only what the header itself can show; the pixel data is checked once the
 * size has passed ap__dec_header().
 */
static ap_status parse_header(struct ap__dec *d, struct bmp *b)
{
    const uint8_t *p = d->buf;
    size_t len = d->len;

    if (len < 14 + 12 || p[0] != 'B' || p[1] != 'M')
        return ap_error_set(d->err, AP_EDECODE, "bmp: file too short or not a bmp");
    b->data_off = rd32(p + 10);
    uint32_t hsize = rd32(p + 14);
    if (hsize > len - 14)
        return ap_error_set(d->err, AP_EDECODE, "bmp: %u-byte info header cut short", hsize);
    const uint8_t *ih = p + 14;

    bool core = hsize == 12;
    bool os2v2 = hsize == 16 || hsize == 64;
    int64_t w, h;
    unsigned planes;
    uint32_t clr_used = 0;
    uint32_t masks[4] = {0, 0, 0, 0};
    bool have_masks = false, have_alpha_mask = false;
    size_t pal_off = 14 + (size_t)hsize;
    unsigned pal_entry = core ? 3 : 4;

    if (core) {
        w = rd16(ih + 4);
        h = rd16(ih + 6);
        planes = rd16(ih + 8);
        b->bpp = rd16(ih + 10);
        b->comp = BI_RGB;
    } else if (os2v2 || hsize == 40 || hsize == 52 || hsize == 56 || hsize == 108 || hsize == 124) {
        w = (int32_t)rd32(ih + 4);
        h = (int32_t)rd32(ih + 8);
        planes = rd16(ih + 12);
        b->bpp = rd16(ih + 14);
        /* The short OS/2 2.x header stops here; the fields after it default to zero. */
        b->comp = hsize >= 20 ? rd32(ih + 16) : BI_RGB;
        clr_used = hsize >= 36 ? rd32(ih + 32) : 0;
        if (os2v2 && (b->comp == 3 || b->comp == 4))
            return ap_error_set(d->err, AP_EUNSUPPORTED, "bmp: os/2 %s compression",
                                b->comp == 3 ? "huffman" : "rle24");
        if (!os2v2 && hsize >= 52) {
            for (int i = 0; i < 3; i++)
                masks[i] = rd32(ih + 40 + 4 * i);
            have_masks = true;
        }
        if (!os2v2 && hsize >= 56) {
            masks[3] = rd32(ih + 52);
            have_alpha_mask = true;
        }
        if (hsize == 40 && (b->comp == BI_BITFIELDS || b->comp == BI_ALPHABITFIELDS)) {
            /* The masks follow the 40-byte header, before the palette. */
            size_t n = b->comp == BI_BITFIELDS ? 3 : 4;
            if (len - pal_off < 4 * n)
                return ap_error_set(d->err, AP_EDECODE, "bmp: bit masks cut short");
            for (size_t i = 0; i < n; i++)
                masks[i] = rd32(p + pal_off + 4 * i);
            have_masks = true;
            have_alpha_mask = n == 4;
            pal_off += 4 * n;
        }
        if (hsize == 124) {
            /* V5: an embedded profile ("MBED") lives at an offset from the info header. A
             * linked one ("LINK") names a file: never followed. */
            uint32_t cs = rd32(ih + 56), off = rd32(ih + 112), size = rd32(ih + 116);
            if (cs == 0x4D424544u && size > 0 && off <= len - 14 && size <= len - 14 - off) {
                d->icc = ih + off;
                d->icc_len = size;
                d->hdr.meta |= AP_META_ICC;
            } else if (cs == 0x4D424544u) {
                /* Announced but not inside the file (usually a cut tail): assume sRGB. */
                d->hdr.meta |= AP_META_ICC;
                d->hdr.warnings |= AP_WARN_ICC_IGNORED;
            } else if (cs == 0x4C494E4Bu) {
                d->hdr.meta |= AP_META_OTHER;
            }
        }
    } else {
        return ap_error_set(d->err, AP_EDECODE, "bmp: unknown info header size %u", hsize);
    }

    if (w <= 0)
        return ap_error_set(d->err, AP_EDECODE, "bmp: invalid width %lld", (long long)w);
    /* Negative height means top-down; INT32_MIN has no positive counterpart. */
    b->top_down = h < 0;
    if (h < 0)
        h = -h;
    if (h == 0 || h > INT32_MAX)
        return ap_error_set(d->err, AP_EDECODE, "bmp: invalid height");
    b->w = (uint32_t)w;
    b->h = (uint32_t)h;
    if (planes != 1)
        return ap_error_set(d->err, AP_EDECODE, "bmp: invalid plane count %u", planes);

    switch (b->comp) {
    case BI_RGB:
        if (b->bpp != 1 && b->bpp != 2 && b->bpp != 4 && b->bpp != 8 && b->bpp != 24 &&
            (core || (b->bpp != 16 && b->bpp != 32)))
            return ap_error_set(d->err, AP_EDECODE, "bmp: invalid bit depth %u", b->bpp);
        break;
    case BI_RLE8:
    case BI_RLE4:
        if (b->bpp != (b->comp == BI_RLE8 ? 8u : 4u))
            return ap_error_set(d->err, AP_EDECODE, "bmp: rle%u with bit depth %u",
                                b->comp == BI_RLE8 ? 8 : 4, b->bpp);
        break;
    case BI_BITFIELDS:
    case BI_ALPHABITFIELDS:
        if (b->bpp != 16 && b->bpp != 32)
            return ap_error_set(d->err, AP_EDECODE, "bmp: bit fields with bit depth %u", b->bpp);
        break;
    case BI_JPEG:
    case BI_PNG:
        return ap_error_set(d->err, AP_EUNSUPPORTED, "bmp: embedded %s is not supported",
                            b->comp == BI_JPEG ? "jpeg" : "png");
    default:
        return ap_error_set(d->err, AP_EDECODE, "bmp: unknown compression %u", b->comp);
    }

    if (b->bpp == 16 || b->bpp == 32) {
        bool fields = b->comp == BI_BITFIELDS || b->comp == BI_ALPHABITFIELDS;
        if (fields && !have_masks)
            return ap_error_set(d->err, AP_EDECODE, "bmp: bit fields without masks");
        if (!fields) {
            /* BI_RGB: 5-5-5 or 8-8-8 whatever the header's mask fields say; the fourth byte
             * of a 32-bit pixel is padding. */
            masks[0] = b->bpp == 16 ? 0x7C00 : 0xFF0000;
            masks[1] = b->bpp == 16 ? 0x03E0 : 0x00FF00;
            masks[2] = b->bpp == 16 ? 0x001F : 0x0000FF;
            masks[3] = 0;
        } else if (!have_alpha_mask) {
            masks[3] = 0;
        }
        if (!chan_init(&b->r, masks[0], b->bpp) || !chan_init(&b->g, masks[1], b->bpp) ||
            !chan_init(&b->b, masks[2], b->bpp) || !chan_init(&b->a, masks[3], b->bpp) ||
            (masks[0] | masks[1] | masks[2]) == 0)
            return ap_error_set(d->err, AP_EDECODE, "bmp: invalid bit masks");
    }

    if (b->data_off < 14 + (size_t)hsize || b->data_off >= len)
        return ap_error_set(d->err, AP_EDECODE, "bmp: pixel data offset %zu out of range",
                            b->data_off);

    if (b->bpp <= 8) {
        /* Declared count (all 2^bpp when zero), at most 2^bpp, and at most what fits
         * between the headers and the pixel data: a short palette leaves black entries. */
        uint64_t n = clr_used != 0 ? clr_used : 1u << b->bpp;
        n = AP_MIN(n, (uint64_t)1 << b->bpp);
        size_t room = b->data_off > pal_off ? b->data_off - pal_off : 0;
        n = AP_MIN(n, (uint64_t)(room / pal_entry));
        if (n == 0)
            return ap_error_set(d->err, AP_EDECODE, "bmp: %u-bit image without a palette", b->bpp);
        for (unsigned i = 0; i < n; i++) {
            const uint8_t *e = p + pal_off + (size_t)i * pal_entry;
            b->pal[i][0] = e[2];
            b->pal[i][1] = e[1];
            b->pal[i][2] = e[0];
        }
        b->n_pal = (unsigned)n;
    }
    return AP_OK;
}

ap_status ap__decode_bmp(struct ap__dec *d)
{
    struct bmp *b = NULL;
    uint8_t *row = NULL;
    ap_status st;

    d->hdr.orientation = 1;
    d->scale_denom = 1;
    /* 2 KiB: the palette makes it too large for the stack's comfort in a worker thread. */
    b = calloc(1, sizeof(*b));
    if (b == NULL)
        return ap_error_set(d->err, AP_ENOMEM, "bmp: out of memory");
    b->buf = d->buf;
    b->len = d->len;

    st = parse_header(d, b);
    if (st != AP_OK)
        goto out;
    d->hdr.width = b->w;
    d->hdr.height = b->h;
    uint32_t need_w, need_h;
    st = ap__dec_header(d, &need_w, &need_h);
    if (st != AP_OK)
        goto out;

    if (b->comp != BI_RLE4 && b->comp != BI_RLE8) {
        /* All rows must be present; the last one may lack its padding. w <= 2^31 and
         * bpp <= 32, so these fit in 64 bits, and the division keeps stride * (h - 1)
         * from being formed unless it fits the buffer. */
        b->stride = ((uint64_t)b->w * b->bpp + 31) / 32 * 4;
        uint64_t last = ((uint64_t)b->w * b->bpp + 7) / 8;
        uint64_t avail = d->len - b->data_off;
        if ((b->h - 1) > (avail / b->stride) || (b->h - 1) * b->stride + last > avail) {
            st = ap_error_set(d->err, AP_EDECODE, "bmp: pixel data cut short (%llu bytes)",
                              (unsigned long long)avail);
            goto out;
        }
        b->alpha = b->a.max != 0 && any_alpha(b);
    }

    /* A gray palette stays single-channel (the output does too). */
    bool gray = b->bpp <= 8;
    for (unsigned i = 0; gray && i < b->n_pal; i++)
        gray = b->pal[i][0] == b->pal[i][1] && b->pal[i][1] == b->pal[i][2];

    /* A profile that does not describe the rows we deliver would be misapplied: drop it. */
    if (d->icc != NULL) {
        uint32_t space = icc_space(d->icc, d->icc_len);
        if (space == 0x52474220u /* "RGB " */) {
            gray = false;
        } else if (!(space == 0x47524159u /* "GRAY" */ && gray)) {
            d->icc = NULL;
            d->icc_len = 0;
            d->hdr.warnings |= AP_WARN_ICC_IGNORED;
        }
    }

    enum ap__pix pix = gray ? AP__PIX_G8 : b->alpha ? AP__PIX_RGBA8 : AP__PIX_RGB8;
    unsigned ch = ap__pix_channels(pix);
    st = ap__dec_begin(d, b->w, b->h, pix);
    if (st != AP_OK)
        goto out;

    if (b->comp == BI_RLE4 || b->comp == BI_RLE8) {
        st = decode_rle(d, b, ch);
        goto out;
    }
    row = malloc((size_t)b->w * ch);
    if (row == NULL) {
        st = ap_error_set(d->err, AP_ENOMEM, "bmp: out of memory for a %u-pixel row", b->w);
        goto out;
    }
    for (uint32_t y = 0; y < b->h; y++) {
        uint32_t sy = b->top_down ? y : b->h - 1 - y;
        convert_row(b, d->buf + b->data_off + sy * b->stride, row, ch);
        st = ap__dec_rows(d, row, (size_t)b->w * ch, 1);
        if (st != AP_OK)
            goto out;
    }

out:
    free(row);
    free(b);
    return st;
}
