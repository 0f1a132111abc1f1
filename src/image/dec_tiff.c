/*
 * dec_tiff.c - TIFF decoder (libtiff 4.5, TIFFRGBAImage).
 *
 * The first directory (page) is decoded. libtiff reads d->buf through client callbacks that
 * never go past d->len (it is handed the buffer as a read-only "mapped file"), and reports
 * through per-handle error/warning handlers (TIFFOpenOptions): nothing reaches stderr, no
 * global handler is touched, so concurrent decodes stay independent.
 *
 * Pixels come from TIFFRGBAImageGet(), which handles every photometric, bit depth, planar
 * layout and codec libtiff knows, producing packed ABGR. Two details of it matter here:
 *
 *  - Orientation: it flips (never transposes) rows and columns from the Orientation tag to the
 *    requested orientation. We request the tag's own orientation, so no flip happens and rows
 *    arrive as stored; the tag goes to hdr.orientation and the pipeline applies it, for all
 *    eight values alike.
 *  - CMYK: libtiff's conversion to RGB is a bare inversion that ignores any profile. For 8-bit
 *    CMYK we install our own "put" routines that keep the samples, and deliver CMYK rows.
 *  - Alpha: RGB with unassociated alpha is premultiplied by libtiff on the way out (associated
 *    alpha stays as stored, premultiplied too), so RGBA output is premultiplied. 8-bit gray +
 *    alpha is copied unchanged instead (premultiplied only if the file says associated), and
 *    16-bit gray drops alpha (opaque).
 *
 * Memory: the image is read in bands of rows (img.row_offset), at least one strip or tile row
 * and at most ~16 M pixels, so the raster never holds a large image whole. A band smaller than
 * a strip re-decodes the strip's start (libtiff cannot resume inside a strip), which only
 * happens for huge single-strip images and costs a few passes, not memory.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tiffio.h>

#include "image/image.h"

/* Largest raster band, in pixels (x4 bytes): bounds memory for large single-strip images. */
#define BAND_PIXELS (16u << 20)
/* Cap on any single allocation libtiff makes for us: crafted tag counts and strip sizes fail
 * instead of reserving gigabytes. Comfortably above a BAND_PIXELS band of 16-bit RGBA. */
#define TIFF_MAX_ALLOC ((tmsize_t)256 << 20)

/* The bytes libtiff reads, and what its handlers reported. */
struct tiff_src {
    const uint8_t *buf;
    size_t len;
    uint64_t pos;
    bool failed;   /* an error (or a warning we treat as one) was reported */
    char msg[200]; /* the first such message */
};

static tmsize_t tiff_read(thandle_t h, void *out, tmsize_t n)
{
    struct tiff_src *s = h;
    if (n <= 0 || s->pos >= s->len)
        return 0;
    size_t k = AP_MIN((uint64_t)n, s->len - s->pos);
    memcpy(out, s->buf + s->pos, k);
    s->pos += k;
    return (tmsize_t)k;
}

/* Opened read-only: libtiff never writes, but the table needs a function. */
static tmsize_t tiff_write(thandle_t h, void *in, tmsize_t n)
{
    (void)h;
    (void)in;
    (void)n;
    return -1;
}

/* Like lseek(): positions past the end are allowed (reads there return 0), negative ones not. */
static toff_t tiff_seek(thandle_t h, toff_t off, int whence)
{
    struct tiff_src *s = h;
    uint64_t base;
    switch (whence) {
    case SEEK_SET:
        s->pos = off;
        return off;
    case SEEK_CUR:
        base = s->pos;
        break;
    case SEEK_END:
        base = s->len;
        break;
    default:
        return (toff_t)-1;
    }
    /* toff_t is unsigned: a backwards relative seek arrives as two's complement, so the sum
     * wraps exactly when the signed result would be out of range. */
    uint64_t pos = base + off;
    int64_t delta = (int64_t)off;
    if ((delta < 0 && pos > base) || (delta > 0 && pos < base))
        return (toff_t)-1;
    s->pos = pos;
    return pos;
}

static int tiff_close(thandle_t h)
{
    (void)h;
    return 0;
}

static toff_t tiff_size(thandle_t h)
{
    return ((struct tiff_src *)h)->len;
}

/* Hand libtiff the buffer itself: no copy of strips. libtiff only reads a mapping it did not
 * open for writing, so casting const away is safe. */
static int tiff_map(thandle_t h, void **base, toff_t *size)
{
    struct tiff_src *s = h;
    *base = (void *)(uintptr_t)s->buf;
    *size = s->len;
    return 1;
}

static void tiff_unmap(thandle_t h, void *base, toff_t size)
{
    (void)h;
    (void)base;
    (void)size;
}

/* Keep the first message; module is often the function that failed, or our file name. */
AP_PRINTF(3, 0)
static void tiff_record(struct tiff_src *s, const char *module, const char *fmt, va_list ap)
{
    if (s->failed)
        return;
    s->failed = true;
    char text[160];
    vsnprintf(text, sizeof(text), fmt, ap);
    if (module != NULL && module[0] != '\0')
        snprintf(s->msg, sizeof(s->msg), "%s: %s", module, text);
    else
        snprintf(s->msg, sizeof(s->msg), "%s", text);
}

AP_PRINTF(4, 0)
static int tiff_on_error(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap)
{
    (void)tif;
    tiff_record(user, module, fmt, ap);
    return 1; /* handled: libtiff must not call the global (stderr) handler */
}

/*
 * Warnings are dropped, except the ones codecs use for data that ends early: libjpeg's
 * "Premature end of JPEG file" (JPEG/OJPEG strips) and CCITT's "Premature EOF". After them
 * libtiff returns success with the rest of the strip made up (grey, white), which must not
 * pass as a decoded image.
 */
AP_PRINTF(4, 0)
static int tiff_on_warning(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap)
{
    (void)tif;
    char text[160];
    va_list copy;
    va_copy(copy, ap);
    vsnprintf(text, sizeof(text), fmt, copy);
    va_end(copy);
    if (strstr(text, "Premature end") != NULL || strstr(text, "Premature EOF") != NULL)
        tiff_record(user, module, fmt, ap);
    return 1;
}

/* The colour space signature of an ICC profile ("RGB ", "GRAY", ...), 0 if too short. */
static uint32_t icc_space(const uint8_t *icc, size_t len)
{
    if (icc == NULL || len < 20)
        return 0;
    /* ICC headers are big-endian. */
    return (uint32_t)icc[16] << 24 | (uint32_t)icc[17] << 16 | (uint32_t)icc[18] << 8 | icc[19];
}

/* Whether Photoshop image resources ("8BIM" blocks) hold IPTC-NAA data (resource 0x0404). */
static bool irb_has_iptc(const uint8_t *p, size_t len)
{
    size_t i = 0;
    while (len - i >= 12 && memcmp(p + i, "8BIM", 4) == 0) {
        unsigned id = (unsigned)p[i + 4] << 8 | p[i + 5];
        /* Pascal name, padded so that length byte + name is even. */
        size_t name = ((size_t)p[i + 6] + 2) & ~(size_t)1;
        if (len - i - 6 < name + 4)
            return false;
        size_t at = i + 6 + name;
        size_t size =
            (size_t)p[at] << 24 | (size_t)p[at + 1] << 16 | (size_t)p[at + 2] << 8 | p[at + 3];
        if (id == 0x0404)
            return true;
        if (size > len - at - 4)
            return false;
        i = at + 4 + size + (size & 1);
        if (i > len)
            return false;
    }
    return false;
}

/*
 * TIFFRGBAImage "put" routines for 8-bit CMYK that store the samples instead of converting them
 * (libtiff's own conversion ignores any profile): each raster word holds C, M, Y, K in the bytes
 * TIFFGetR/G/B/A read. Skews follow TIFFRGBAImage's convention: after a row, the raster pointer
 * moves by toskew and the source by fromskew pixels.
 */
static void put_cmyk_contig(TIFFRGBAImage *img, uint32_t *cp, uint32_t x, uint32_t y, uint32_t w,
                            uint32_t h, int32_t fromskew, int32_t toskew, unsigned char *pp)
{
    const size_t spp = img->samplesperpixel; /* >= 4: extra samples are skipped */
    (void)x;
    (void)y;
    for (; h > 0; h--) {
        for (uint32_t i = 0; i < w; i++, pp += spp)
            *cp++ = (uint32_t)pp[0] | (uint32_t)pp[1] << 8 | (uint32_t)pp[2] << 16 |
                    (uint32_t)pp[3] << 24;
        cp += toskew;
        pp += (ptrdiff_t)fromskew * (ptrdiff_t)spp;
    }
}

/* Planar CMYK: libtiff hands K over as the "alpha" plane. */
static void put_cmyk_separate(TIFFRGBAImage *img, uint32_t *cp, uint32_t x, uint32_t y, uint32_t w,
                              uint32_t h, int32_t fromskew, int32_t toskew, unsigned char *c,
                              unsigned char *m, unsigned char *ye, unsigned char *k)
{
    (void)img;
    (void)x;
    (void)y;
    for (; h > 0; h--) {
        for (uint32_t i = 0; i < w; i++)
            *cp++ =
                (uint32_t)c[i] | (uint32_t)m[i] << 8 | (uint32_t)ye[i] << 16 | (uint32_t)k[i] << 24;
        c += (ptrdiff_t)w + fromskew;
        m += (ptrdiff_t)w + fromskew;
        ye += (ptrdiff_t)w + fromskew;
        k += (ptrdiff_t)w + fromskew;
        cp += toskew;
    }
}

/* OR the AP_META_* bits the first directory shows into d->hdr.meta. */
static void tiff_meta(struct ap__dec *d, TIFF *tif)
{
    static const uint32_t other_tags[] = {
        TIFFTAG_ARTIST,       TIFFTAG_COPYRIGHT,    TIFFTAG_MAKE,
        TIFFTAG_MODEL,        TIFFTAG_SOFTWARE,     TIFFTAG_DATETIME,
        TIFFTAG_HOSTCOMPUTER, TIFFTAG_DOCUMENTNAME, TIFFTAG_PAGENAME,
    };
    uint32_t n = 0;
    void *data = NULL;
    uint64_t off = 0;
    char *text = NULL;

    if (TIFFGetField(tif, TIFFTAG_XMLPACKET, &n, &data) && n > 0)
        d->hdr.meta |= AP_META_XMP;
    if (TIFFGetField(tif, TIFFTAG_RICHTIFFIPTC, &n, &data) && n > 0)
        d->hdr.meta |= AP_META_IPTC;
    if (TIFFGetField(tif, TIFFTAG_PHOTOSHOP, &n, &data) && n > 0 && data != NULL)
        d->hdr.meta |= irb_has_iptc(data, n) ? AP_META_IPTC : AP_META_OTHER;
    if (TIFFGetField(tif, TIFFTAG_EXIFIFD, &off))
        d->hdr.meta |= AP_META_EXIF;
    if (TIFFGetField(tif, TIFFTAG_GPSIFD, &off))
        d->hdr.meta |= AP_META_GPS;
    /* Free text a person wrote is a comment; the rest is provenance. */
    if (TIFFGetField(tif, TIFFTAG_IMAGEDESCRIPTION, &text) && text != NULL && text[0] != '\0')
        d->hdr.meta |= AP_META_COMMENT;
    for (size_t i = 0; i < sizeof(other_tags) / sizeof(other_tags[0]); i++) {
        text = NULL;
        if (TIFFGetField(tif, other_tags[i], &text) && text != NULL && text[0] != '\0')
            d->hdr.meta |= AP_META_OTHER;
    }
    if (TIFFGetField(tif, TIFFTAG_ICCPROFILE, &n, &data) && n > 0 && data != NULL) {
        d->hdr.meta |= AP_META_ICC;
        d->icc = data; /* owned by the TIFF handle, which lives until we return */
        d->icc_len = n;
    }
}

/*
 * Rows per TIFFRGBAImageGet() call; see the file comment. Returns 0 when the image cannot be
 * read in bounded bands: old-style JPEG cannot restart inside a strip (a partial re-read comes
 * out scrambled), so its strips are never split, and one over the band budget is refused.
 */
static uint32_t band_rows(TIFF *tif, uint32_t w, uint32_t h)
{
    uint32_t unit = 0;
    if (TIFFIsTiled(tif))
        TIFFGetField(tif, TIFFTAG_TILELENGTH, &unit);
    else
        TIFFGetFieldDefaulted(tif, TIFFTAG_ROWSPERSTRIP, &unit);
    if (unit == 0 || unit > h)
        unit = h;
    /* Whole strips/tiles, at least 64 rows, so nothing is decoded twice... */
    uint64_t band = unit >= 64 ? unit : (64 + (uint64_t)unit - 1) / unit * unit;
    /* ...unless that is too much memory: then the strip is cut into k near-equal bands (each
     * re-decodes the strip from its start, so equal parts waste least), a multiple of 16 rows to
     * stay aligned to any YCbCr subsampling and JPEG MCU height. */
    uint64_t cap = AP_MAX((uint64_t)16, BAND_PIXELS / w / 16 * 16);
    uint16_t compression = COMPRESSION_NONE;
    TIFFGetFieldDefaulted(tif, TIFFTAG_COMPRESSION, &compression);
    if (compression == COMPRESSION_OJPEG && band > cap)
        return (uint64_t)unit * w <= BAND_PIXELS ? unit : 0;
    if (band > cap) {
        uint64_t k = (unit + cap - 1) / cap;
        band = ((unit + k - 1) / k + 15) / 16 * 16;
    }
    return (uint32_t)AP_MIN(band, (uint64_t)h);
}

ap_status ap__decode_tiff(struct ap__dec *d)
{
    struct tiff_src src = {.buf = d->buf, .len = d->len};
    TIFFOpenOptions *topts = NULL;
    TIFF *tif = NULL;
    TIFFRGBAImage img;
    bool img_live = false;
    uint32_t *raster = NULL;
    char emsg[1024] = "";
    ap_status st = AP_OK;

    d->hdr.orientation = 1;
    d->scale_denom = 1;

    topts = TIFFOpenOptionsAlloc();
    if (topts == NULL)
        return ap_error_set(d->err, AP_ENOMEM, "tiff: out of memory");
    TIFFOpenOptionsSetErrorHandlerExtR(topts, tiff_on_error, &src);
    TIFFOpenOptionsSetWarningHandlerExtR(topts, tiff_on_warning, &src);
    TIFFOpenOptionsSetMaxSingleMemAlloc(topts, TIFF_MAX_ALLOC);

    /* Opening reads the header and the first directory: tags only, no strips. */
    tif = TIFFClientOpenExt("input", "r", &src, tiff_read, tiff_write, tiff_seek, tiff_close,
                            tiff_size, tiff_map, tiff_unmap, topts);
    if (tif == NULL) {
        st = ap_error_set(d->err, AP_EDECODE, "tiff: %s",
                          src.failed ? src.msg : "cannot read the header");
        goto out;
    }
    /* libtiff reports damage it works around while reading tags (a bad value for one tag, an
     * unknown type) as errors yet opens the file; only errors while decoding pixels count. */
    src.failed = false;
    src.msg[0] = '\0';

    uint32_t w = 0, h = 0;
    if (!TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &w) || !TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &h)) {
        st = ap_error_set(d->err, AP_EDECODE, "tiff: no image width or length");
        goto out;
    }
    uint16_t orient = 0;
    if (TIFFGetField(tif, TIFFTAG_ORIENTATION, &orient) && orient >= 1 && orient <= 8)
        d->hdr.orientation = orient;
    d->hdr.width = w;
    d->hdr.height = h;
    tiff_meta(d, tif);
    /* Another directory follows the first: a multi-page file (or a thumbnail page). Reading
     * just the next-directory offset costs nothing, unlike counting the chain. */
    if (!TIFFLastDirectory(tif))
        d->hdr.warnings |= AP_WARN_MULTI_FRAME;

    uint32_t need_w, need_h;
    st = ap__dec_header(d, &need_w, &need_h);
    if (st != AP_OK)
        goto out;

    /* libtiff's CIELab conversion is approximate (off by ~8/255 on average against lcms), and
     * writers disagree on whether a* and b* are signed; a clean refusal beats quietly shifted
     * colours. */
    uint16_t photometric = 0;
    if (TIFFGetField(tif, TIFFTAG_PHOTOMETRIC, &photometric) &&
        (photometric == PHOTOMETRIC_CIELAB || photometric == PHOTOMETRIC_ICCLAB ||
         photometric == PHOTOMETRIC_ITULAB)) {
        st = ap_error_set(d->err, AP_EUNSUPPORTED, "tiff: cielab photometric %u is not supported",
                          photometric);
        goto out;
    }
    if (!TIFFRGBAImageOK(tif, emsg)) {
        st = ap_error_set(d->err, AP_EUNSUPPORTED, "tiff: %s", emsg);
        goto out;
    }
    if (!TIFFRGBAImageBegin(&img, tif, 1 /* stop on the first read error */, emsg)) {
        st = ap_error_set(d->err, AP_EDECODE, "tiff: %s", src.failed ? src.msg : emsg);
        goto out;
    }
    img_live = true;
    if (AP_NEVER(img.width != w || img.height != h)) {
        st = ap_error_set(d->err, AP_EINTERNAL, "tiff: image size changed to %ux%u", img.width,
                          img.height);
        goto out;
    }
    /* No flips: rows as stored, orientation left to the pipeline (see the file comment). */
    img.req_orientation = img.orientation;

    uint16_t planar = PLANARCONFIG_CONTIG;
    TIFFGetFieldDefaulted(tif, TIFFTAG_PLANARCONFIG, &planar);
    /* 8-bit CMYK (the only depth TIFFRGBAImage reads) goes to the pipeline as CMYK, so an
     * embedded CMYK profile is honoured; TIFF ink values are not inverted. libtiff marks planar
     * CMYK as "alpha" to get at the K plane: that is not alpha. */
    bool cmyk = img.photometric == PHOTOMETRIC_SEPARATED && img.bitspersample == 8 &&
                img.samplesperpixel >= 4 &&
                (img.isContig ? img.put.contig != NULL
                              : img.put.separate != NULL && img.samplesperpixel == 4);
    if (cmyk && img.isContig)
        img.put.contig = put_cmyk_contig;
    else if (cmyk)
        img.put.separate = put_cmyk_separate;
    /* Begin() may rewrite photometric (YCbCr JPEG -> RGB, LogL -> gray); its value is what the
     * raster holds. Gray photometrics come out as R = G = B. */
    bool gray =
        img.photometric == PHOTOMETRIC_MINISBLACK || img.photometric == PHOTOMETRIC_MINISWHITE;
    bool alpha = img.alpha != 0 && !cmyk;
    if (alpha && gray && planar == PLANARCONFIG_CONTIG && img.samplesperpixel == 2 &&
        img.bitspersample == 8)
        d->premultiplied = img.alpha == EXTRASAMPLE_ASSOCALPHA; /* copied as stored */
    else
        d->premultiplied = alpha; /* associated, or premultiplied by libtiff */

    /* A profile that does not describe the rows we deliver (LogLuv or 16-bit CMYK converted
     * by libtiff, gray vs RGB) would be misapplied: drop it. */
    if (d->icc != NULL) {
        uint32_t space = icc_space(d->icc, d->icc_len);
        bool fits = cmyk   ? space == 0x434D594Bu /* "CMYK" */
                    : gray ? space == 0x47524159u /* "GRAY" */
                           : space == 0x52474220u /* "RGB " */;
        bool converted = (img.photometric == PHOTOMETRIC_SEPARATED && !cmyk) ||
                         img.photometric == PHOTOMETRIC_LOGLUV;
        if (!fits || converted) {
            d->icc = NULL;
            d->icc_len = 0;
            d->hdr.warnings |= AP_WARN_ICC_IGNORED;
        }
    }

    enum ap__pix pix = cmyk   ? AP__PIX_CMYK8
                       : gray ? (alpha ? AP__PIX_GA8 : AP__PIX_G8)
                              : (alpha ? AP__PIX_RGBA8 : AP__PIX_RGB8);
    unsigned ch = ap__pix_channels(pix);
    st = ap__dec_begin(d, w, h, pix);
    if (st != AP_OK)
        goto out;

    uint32_t band = band_rows(tif, w, h);
    if (band == 0) {
        st = ap_error_set(d->err, AP_EUNSUPPORTED,
                          "tiff: old-style jpeg strips over %u pixels are not supported",
                          BAND_PIXELS);
        goto out;
    }
    raster = malloc((size_t)w * band * sizeof(*raster));
    if (raster == NULL) {
        st = ap_error_set(d->err, AP_ENOMEM, "tiff: out of memory for %u rows of %u pixels", band,
                          w);
        goto out;
    }
    for (uint32_t row = 0; row < h; row += band) {
        uint32_t n = AP_MIN(band, h - row);
        img.row_offset = (int)row;
        img.col_offset = 0;
        int ok = TIFFRGBAImageGet(&img, raster, w, n);
        if (!ok || src.failed) {
            st = ap_error_set(d->err, AP_EDECODE, "tiff: %s",
                              src.failed ? src.msg : "cannot decode the image data");
            goto out;
        }
        /* Unpack ABGR in place: pixel i's bytes go to [i * ch, i * ch + ch), never past the
         * word it was read from, so each word is read before anything overwrites it. */
        uint8_t *o = (uint8_t *)raster;
        size_t npx = (size_t)w * n;
        for (size_t i = 0; i < npx; i++, o += ch) {
            uint32_t v = raster[i];
            switch (pix) {
            case AP__PIX_G8:
                o[0] = (uint8_t)TIFFGetR(v);
                break;
            case AP__PIX_GA8:
                o[0] = (uint8_t)TIFFGetR(v);
                o[1] = (uint8_t)TIFFGetA(v);
                break;
            case AP__PIX_RGB8:
                o[0] = (uint8_t)TIFFGetR(v);
                o[1] = (uint8_t)TIFFGetG(v);
                o[2] = (uint8_t)TIFFGetB(v);
                break;
            default: /* RGBA, or CMYK from the put routines above */
                o[0] = (uint8_t)TIFFGetR(v);
                o[1] = (uint8_t)TIFFGetG(v);
                o[2] = (uint8_t)TIFFGetB(v);
                o[3] = (uint8_t)TIFFGetA(v);
                break;
            }
        }
        st = ap__dec_rows(d, (const uint8_t *)raster, (size_t)w * ch, n);
        if (st != AP_OK)
            goto out;
    }

out:
    free(raster);
    if (img_live)
        TIFFRGBAImageEnd(&img);
    /* d->icc points into the handle: it ends here. */
    d->icc = NULL;
    d->icc_len = 0;
    if (tif != NULL)
        TIFFClose(tif);
    TIFFOpenOptionsFree(topts);
    return st;
}
