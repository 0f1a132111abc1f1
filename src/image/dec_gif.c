/*
 * dec_gif.c - GIF decoder (giflib 5.2, low-level record API).
 *
 * Only the first frame is decoded, composed onto the logical screen: the screen size is what
 * ap__dec_header() checks, the frame is clipped to it, and any screen area the frame does not
 * cover is transparent (the pipeline flattens it onto the background, as browsers show it).
 *
 * DGifSlurp() is never used: it allocates the raster of every frame before we could check a
 * size. We read the screen descriptor, check it, then walk the records up to the first image
 * descriptor and decode that frame line by line into a buffer the size of its visible part.
 *
 * Limits: the screen is checked by ap__dec_header(); the frame's extent (origin + size, which
 * costs decode time even where it is clipped away) is checked against opts->max_pixels, so a
 * 32x32 screen holding a 65535x65535 frame is refused before any LZW work.
 *
 * Metadata: comment extensions -> AP_META_COMMENT, "XMP DataXMP" -> AP_META_XMP, an
 * "ICCRGBG1012" profile -> d->icc, other application extensions (except the animation ones)
 * -> AP_META_OTHER. After the frame, the records are scanned up to the next image descriptor
 * (AP_WARN_MULTI_FRAME) or the trailer (bytes after it: AP_WARN_TRAILING_DATA).
 */
#include <gif_lib.h>
#include <stdlib.h>
#include <string.h>

#include "image/image.h"

/* The caller's bytes, read by giflib through gif_read(). */
struct gif_src {
    const uint8_t *buf;
    size_t len;
    size_t pos;
};

/* What the extension records before (and after) the first frame told us. */
struct gif_ext {
    int transparent; /* palette index from the last Graphics Control Extension, -1 if none */
    uint8_t *icc;    /* ICC profile assembled from its sub-blocks (malloc'd), or NULL */
    size_t icc_len;
};

/* giflib's input callback: copies up to n bytes, fewer at the end of the buffer. */
static int gif_read(GifFileType *gif, GifByteType *out, int n)
{
    struct gif_src *src = gif->UserData;
    size_t left = src->len - src->pos;
    size_t k = n > 0 ? AP_MIN((size_t)n, left) : 0;

    memcpy(out, src->buf + src->pos, k);
    src->pos += k;
    return (int)k;
}

/* giflib's D_GIF_ERR_* as a message in our style (GifErrorString() capitalises). */
static const char *gif_strerror(int code)
{
    switch (code) {
    case D_GIF_ERR_OPEN_FAILED:
        return "open failed";
    /* Our reader only comes up short at the end of the buffer. */
    case D_GIF_ERR_READ_FAILED:
        return "data ends early";
    case D_GIF_ERR_NOT_GIF_FILE:
        return "not a gif file";
    case D_GIF_ERR_NO_SCRN_DSCR:
        return "no screen descriptor";
    case D_GIF_ERR_NO_IMAG_DSCR:
        return "no image descriptor";
    case D_GIF_ERR_NO_COLOR_MAP:
        return "no colour map";
    case D_GIF_ERR_WRONG_RECORD:
        return "unknown record type";
    case D_GIF_ERR_DATA_TOO_BIG:
        return "more image data than the frame holds";
    case D_GIF_ERR_NOT_ENOUGH_MEM:
        return "out of memory";
    case D_GIF_ERR_NOT_READABLE:
        return "not readable";
    case D_GIF_ERR_IMAGE_DEFECT:
        return "corrupt lzw data";
    case D_GIF_ERR_EOF_TOO_SOON:
        return "image data ends early";
    }
    return "unknown giflib error";
}

/* Record giflib's last failure; out of memory keeps its own code. */
static ap_status gif_fail(struct ap__dec *d, int code, const char *what)
{
    ap_status st = code == D_GIF_ERR_NOT_ENOUGH_MEM ? AP_ENOMEM : AP_EDECODE;
    return ap_error_set(d->err, st, "gif: %s: %s", what, gif_strerror(code));
}

/* The colour space signature of an ICC profile ("RGB ", "GRAY", ...), 0 if too short. */
static uint32_t icc_space(const uint8_t *icc, size_t len)
{
    if (icc == NULL || len < 20)
        return 0;
    return (uint32_t)icc[16] << 24 | (uint32_t)icc[17] << 16 | (uint32_t)icc[18] << 8 | icc[19];
}

/*
 * Consume one extension record whose first sub-block giflib already returned in blk
 * (blk[0] = its length; NULL when the extension has no data). Sets metadata bits in d->hdr
 * and transparency/ICC in ext. Fails only when giflib does (truncated sub-blocks).
 */
static ap_status gif_extension(struct ap__dec *d, GifFileType *gif, int code, GifByteType *blk,
                               struct gif_ext *ext)
{
    bool is_icc = false;
    uint8_t *icc = NULL;
    size_t icc_len = 0;

    if (code == GRAPHICS_EXT_FUNC_CODE && blk != NULL) {
        GraphicsControlBlock gcb;
        /* A malformed GCB (length != 4) is ignored: no transparency. The last GCB before the
         * image wins, as in every decoder we know of. */
        if (DGifExtensionToGCB(blk[0], blk + 1, &gcb) == GIF_OK)
            ext->transparent = gcb.TransparentColor;
    } else if (code == COMMENT_EXT_FUNC_CODE) {
        d->hdr.meta |= AP_META_COMMENT;
    } else if (code == APPLICATION_EXT_FUNC_CODE) {
        if (blk != NULL && blk[0] >= 11 && memcmp(blk + 1, "XMP DataXMP", 11) == 0)
            d->hdr.meta |= AP_META_XMP;
        else if (blk != NULL && blk[0] >= 11 && memcmp(blk + 1, "ICCRGBG1012", 11) == 0)
            is_icc = ext->icc == NULL; /* the first profile counts */
        else if (blk != NULL && blk[0] >= 11 &&
                 (memcmp(blk + 1, "NETSCAPE2.0", 11) == 0 ||
                  memcmp(blk + 1, "ANIMEXTS1.0", 11) == 0))
            ; /* loop count: animation control, not metadata; frames are counted instead */
        else
            d->hdr.meta |= AP_META_OTHER;
    } else if (code != GRAPHICS_EXT_FUNC_CODE && code != PLAINTEXT_EXT_FUNC_CODE) {
        d->hdr.meta |= AP_META_OTHER;
    }

    while (blk != NULL) {
        if (DGifGetExtensionNext(gif, &blk) == GIF_ERROR) {
            free(icc);
            return gif_fail(d, gif->Error, "extension");
        }
        if (is_icc && blk != NULL) {
            /* The profile is the concatenation of the data sub-blocks. Its size is bounded by
             * the input, which the pipeline has already capped. */
            uint8_t *grown = realloc(icc, icc_len + blk[0]);
            if (grown == NULL) {
                free(icc);
                return ap_error_set(d->err, AP_ENOMEM, "gif: out of memory for icc profile");
            }
            icc = grown;
            memcpy(icc + icc_len, blk + 1, blk[0]);
            icc_len += blk[0];
        }
    }
    if (icc != NULL) {
        ext->icc = icc;
        ext->icc_len = icc_len;
        d->hdr.meta |= AP_META_ICC;
    }
    return AP_OK;
}

/*
 * Walk the records after the first frame, up to the next image descriptor or the trailer, for
 * metadata and warnings. The frame is complete, so a failure here is not an error: the scan
 * stops and what was seen so far stands.
 */
static void gif_scan_rest(struct ap__dec *d, GifFileType *gif, const struct gif_src *src,
                          struct gif_ext *ext)
{
    for (;;) {
        GifRecordType rec;
        if (DGifGetRecordType(gif, &rec) == GIF_ERROR)
            return;
        if (rec == IMAGE_DESC_RECORD_TYPE) {
            d->hdr.warnings |= AP_WARN_MULTI_FRAME;
            return;
        }
        if (rec == TERMINATE_RECORD_TYPE) {
            if (src->pos < src->len)
                d->hdr.warnings |= AP_WARN_TRAILING_DATA;
            return;
        }
        if (rec != EXTENSION_RECORD_TYPE)
            return;
        int code;
        GifByteType *blk;
        if (DGifGetExtension(gif, &code, &blk) == GIF_ERROR)
            return;
        /* Transparency of a later frame must not leak into the first one. */
        int transparent = ext->transparent;
        ap_status st = gif_extension(d, gif, code, blk, ext);
        ext->transparent = transparent;
        if (st != AP_OK) {
            /* Keep the first frame: forget the error this scan recorded. */
            ap_error_clear(d->err);
            return;
        }
    }
}

ap_status ap__decode_gif(struct ap__dec *d)
{
    static const int pass_start[4] = {0, 4, 2, 1}, pass_step[4] = {8, 8, 4, 2};
    struct gif_src src = {.buf = d->buf, .len = d->len, .pos = 0};
    struct gif_ext ext = {.transparent = NO_TRANSPARENT_COLOR};
    GifFileType *gif = NULL;
    uint8_t *line = NULL, *idx = NULL, *row = NULL;
    uint8_t pal[256][3];
    ap_status st = AP_OK;
    int gerr = 0;

    d->hdr.orientation = 1;
    d->scale_denom = 1;

    /* DGifOpen() reads the signature, the screen descriptor and the global colour map: no
     * allocation sized by the image happens before our check below. */
    gif = DGifOpen(&src, gif_read, &gerr);
    if (gif == NULL)
        return gif_fail(d, gerr, "header");

    uint32_t sw = (uint32_t)gif->SWidth, sh = (uint32_t)gif->SHeight;
    if (sw == 0 || sh == 0) {
        st = ap_error_set(d->err, AP_EDECODE, "gif: zero screen size %ux%u", sw, sh);
        goto out;
    }
    d->hdr.width = sw;
    d->hdr.height = sh;
    uint32_t need_w, need_h;
    st = ap__dec_header(d, &need_w, &need_h);
    if (st != AP_OK)
        goto out;

    /* Records up to the first image descriptor. */
    for (;;) {
        GifRecordType rec;
        if (DGifGetRecordType(gif, &rec) == GIF_ERROR) {
            st = gif_fail(d, gif->Error, "record");
            goto out;
        }
        if (rec == IMAGE_DESC_RECORD_TYPE)
            break;
        if (rec == TERMINATE_RECORD_TYPE) {
            st = ap_error_set(d->err, AP_EDECODE, "gif: no image before the trailer");
            goto out;
        }
        if (rec == EXTENSION_RECORD_TYPE) {
            int code;
            GifByteType *blk;
            if (DGifGetExtension(gif, &code, &blk) == GIF_ERROR) {
                st = gif_fail(d, gif->Error, "extension");
                goto out;
            }
            st = gif_extension(d, gif, code, blk, &ext);
            if (st != AP_OK)
                goto out;
        }
    }
    /* giflib reads exactly what it needs, so src.pos is just past the ',' and the frame can be
     * checked before giflib reads the rest of a (possibly truncated) descriptor. The limit
     * applies to the frame's extent, origin included, as decoders that grow the canvas to the
     * frame (Pillow, libvips) see it: clipped or not, its rows cost LZW work. */
    if (src.len - src.pos >= 8 && d->opts->max_pixels != 0) {
        const uint8_t *p = src.buf + src.pos;
        uint64_t right = (uint64_t)(p[0] | p[1] << 8) + (uint64_t)(p[4] | p[5] << 8);
        uint64_t bottom = (uint64_t)(p[2] | p[3] << 8) + (uint64_t)(p[6] | p[7] << 8);
        if (right * bottom > d->opts->max_pixels) {
            st = ap_error_set(d->err, AP_ETOOLARGE,
                              "gif: first frame reaches %llux%llu, over the pixel limit",
                              (unsigned long long)right, (unsigned long long)bottom);
            goto out;
        }
    }
    if (DGifGetImageDesc(gif) == GIF_ERROR) {
        st = gif_fail(d, gif->Error, "image descriptor");
        goto out;
    }

    /* GifWord is an int holding a 16-bit field: never negative. */
    uint32_t fx = (uint32_t)gif->Image.Left, fy = (uint32_t)gif->Image.Top;
    uint32_t fw = (uint32_t)gif->Image.Width, fh = (uint32_t)gif->Image.Height;
    if (fw == 0 || fh == 0) {
        st = ap_error_set(d->err, AP_EDECODE, "gif: empty first frame %ux%u", fw, fh);
        goto out;
    }
    /* The same limit as above, on what giflib parsed (a guard, should the peek have missed). */
    if (AP_NEVER(d->opts->max_pixels != 0 &&
                 (uint64_t)(fx + fw) * (fy + fh) > d->opts->max_pixels)) {
        st = ap_error_set(d->err, AP_ETOOLARGE,
                          "gif: first frame reaches %ux%u, over the pixel limit", fx + fw, fy + fh);
        goto out;
    }
    /* The visible part of the frame: [fx, fx + vw) x [fy, fy + vh), possibly empty. */
    uint32_t vw = fx < sw ? AP_MIN(fw, sw - fx) : 0;
    uint32_t vh = fy < sh ? AP_MIN(fh, sh - fy) : 0;

    /* Palette: the local map, else the global one. Indices past the map are black, never an
     * out-of-bounds read: LZW can emit any byte whatever the map's size. Without any map the
     * spec lets the decoder pick a default; a gray ramp keeps the picture legible. */
    const ColorMapObject *cmap = gif->Image.ColorMap ? gif->Image.ColorMap : gif->SColorMap;
    memset(pal, 0, sizeof(pal));
    bool gray = true;
    if (cmap != NULL && cmap->Colors != NULL) {
        int n = AP_MIN(cmap->ColorCount, 256);
        for (int i = 0; i < n; i++) {
            pal[i][0] = cmap->Colors[i].Red;
            pal[i][1] = cmap->Colors[i].Green;
            pal[i][2] = cmap->Colors[i].Blue;
            gray = gray && pal[i][0] == pal[i][1] && pal[i][1] == pal[i][2];
        }
    } else {
        for (int i = 0; i < 256; i++)
            pal[i][0] = pal[i][1] = pal[i][2] = (uint8_t)i;
    }

    /* Decode the whole frame (so a truncated frame fails even where clipped), keeping the
     * visible rows. DGifGetLine() fails on data that ends early or LZW that stops short. */
    line = malloc(fw);
    idx = malloc(vw && vh ? (size_t)vw * vh : 1);
    if (line == NULL || idx == NULL) {
        st = ap_error_set(d->err, AP_ENOMEM, "gif: out of memory for a %ux%u frame", fw, fh);
        goto out;
    }
    int passes = gif->Image.Interlace ? 4 : 1;
    for (int p = 0; p < passes; p++) {
        uint32_t y0 = gif->Image.Interlace ? (uint32_t)pass_start[p] : 0;
        uint32_t step = gif->Image.Interlace ? (uint32_t)pass_step[p] : 1;
        for (uint32_t y = y0; y < fh; y += step) {
            if (DGifGetLine(gif, line, (int)fw) == GIF_ERROR) {
                st = gif_fail(d, gif->Error, "frame");
                goto out;
            }
            if (y < vh && vw > 0)
                memcpy(idx + (size_t)y * vw, line, vw);
        }
    }

    /* Alpha when the screen shows through: around the frame, or at the transparent index (only
     * if it is actually drawn, so an opaque picture stays opaque). */
    bool alpha = vw != sw || vh != sh || fx != 0 || fy != 0;
    int t = ext.transparent;
    if (!alpha && t >= 0 && t < 256)
        alpha = memchr(idx, t, (size_t)vw * vh) != NULL;
    else if (t < 0 || t > 255)
        t = -1;

    /* A profile that does not describe the rows we deliver would be misapplied: drop it. An
     * RGB profile keeps a gray palette in RGB so the profile still applies. */
    uint32_t space = icc_space(ext.icc, ext.icc_len);
    if (ext.icc != NULL) {
        if (space == 0x52474220u /* "RGB " */) {
            gray = false;
            d->icc = ext.icc;
            d->icc_len = ext.icc_len;
        } else if (space == 0x47524159u /* "GRAY" */ && gray) {
            d->icc = ext.icc;
            d->icc_len = ext.icc_len;
        } else {
            d->hdr.warnings |= AP_WARN_ICC_IGNORED;
        }
    }

    enum ap__pix pix =
        gray ? (alpha ? AP__PIX_GA8 : AP__PIX_G8) : (alpha ? AP__PIX_RGBA8 : AP__PIX_RGB8);
    unsigned ch = ap__pix_channels(pix);

    /* The rest of the file only adds metadata bits and warnings; do it before announcing the
     * rows so the header the pipeline reports is complete. */
    gif_scan_rest(d, gif, &src, &ext);

    st = ap__dec_begin(d, sw, sh, pix);
    if (st != AP_OK)
        goto out;
    row = malloc((size_t)sw * ch);
    if (row == NULL) {
        st = ap_error_set(d->err, AP_ENOMEM, "gif: out of memory for a %u-pixel row", sw);
        goto out;
    }
    for (uint32_t y = 0; y < sh; y++) {
        /* Transparent black where the frame does not reach. */
        memset(row, 0, (size_t)sw * ch);
        if (y >= fy && y - fy < vh) {
            const uint8_t *src_px = idx + (size_t)(y - fy) * vw;
            uint8_t *o = row + (size_t)fx * ch;
            for (uint32_t x = 0; x < vw; x++, o += ch) {
                const uint8_t *c = pal[src_px[x]];
                switch (pix) {
                case AP__PIX_G8:
                    o[0] = c[0];
                    break;
                case AP__PIX_GA8:
                    o[0] = c[0];
                    o[1] = src_px[x] == t ? 0 : 255;
                    break;
                case AP__PIX_RGB8:
                    memcpy(o, c, 3);
                    break;
                default:
                    memcpy(o, c, 3);
                    o[3] = src_px[x] == t ? 0 : 255;
                    break;
                }
            }
        }
        st = ap__dec_rows(d, row, (size_t)sw * ch, 1);
        if (st != AP_OK)
            goto out;
    }

out:
    free(row);
    free(idx);
    free(line);
    /* The profile must outlive the decoder's use of d->icc, which ends here. */
    free(ext.icc);
    d->icc = NULL;
    d->icc_len = 0;
    if (gif != NULL)
        DGifCloseFile(gif, &gerr);
    return st;
}
