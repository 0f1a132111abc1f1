/*
 * dec_jpeg.c - JPEG via libjpeg-turbo, shrunk on load with DCT scaling.
 *
 * The decoder picks the smallest N/8 scale whose output still covers what the pipeline needs,
 * so a 12 MP photo bound for 1568 px is decoded at 4/8 (a quarter of the pixels): decode is the
 * floor of the pipeline's cost and this is where most of it is saved. Rows stream into the
 * pipeline a few at a time; the full-size image never exists in memory.
 *
 * libjpeg reports fatal errors through error_exit (we longjmp back) and recovers from truncated
 * data by padding with grey and emitting a warning. A truncated image is not a success here:
 * the "premature end of data" warnings are turned into AP_EDECODE.
 */
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>

#include "image/image.h"

struct jerr {
    struct jpeg_error_mgr pub;
    jmp_buf jmp;
    int fatal_warning; /* a warning that means lost image data */
    char msg[JMSG_LENGTH_MAX];
};

static void on_error_exit(j_common_ptr cinfo)
{
    struct jerr *e = (struct jerr *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, e->msg);
    longjmp(e->jmp, 1);
}

static void on_emit_message(j_common_ptr cinfo, int level)
{
    struct jerr *e = (struct jerr *)cinfo->err;
    if (level >= 0)
        return; /* trace messages */
    int code = cinfo->err->msg_code;
    /* Data missing from the scan: libjpeg would hand back grey rows. Extraneous bytes before a
     * marker are common in real phone JPEGs and harmless, so they are not in this list. */
    if (code == JWRN_JPEG_EOF) {
        if (!e->fatal_warning)
            (*cinfo->err->format_message)(cinfo, e->msg);
        e->fatal_warning = 1;
    }
    cinfo->err->num_warnings++;
}

static void output_message_silent(j_common_ptr cinfo)
{
    (void)cinfo;
}

/* Walk the saved markers: orientation from APP1 Exif, and which kinds of metadata exist. */
static void scan_markers(struct jpeg_decompress_struct *ci, struct ap__header *hdr)
{
    for (jpeg_saved_marker_ptr m = ci->marker_list; m != NULL; m = m->next) {
        if (m->marker == JPEG_APP0 + 1) {
            if (m->data_length >= 6 && memcmp(m->data, "Exif\0\0", 6) == 0)
                hdr->orientation = ap__exif_orientation(m->data, m->data_length, &hdr->meta);
            else if (m->data_length >= 29 &&
                     memcmp(m->data, "http://ns.adobe.com/xap/1.0/", 28) == 0)
                hdr->meta |= AP_META_XMP;
            else
                hdr->meta |= AP_META_OTHER;
        } else if (m->marker == JPEG_APP0 + 2) {
            if (m->data_length >= 12 && memcmp(m->data, "ICC_PROFILE", 11) == 0)
                hdr->meta |= AP_META_ICC;
            else
                hdr->meta |= AP_META_OTHER;
        } else if (m->marker == JPEG_APP0 + 13) {
            hdr->meta |= AP_META_IPTC;
        } else if (m->marker == JPEG_COM) {
            hdr->meta |= AP_META_COMMENT;
        } else if (m->marker != JPEG_APP0 && m->marker != JPEG_APP0 + 14) {
            hdr->meta |= AP_META_OTHER; /* APP0 JFIF and APP14 Adobe are structural */
        }
    }
}

/* Smallest N in 1..8 such that the N/8-scaled image (libjpeg rounds up) covers need. */
static unsigned pick_scale(uint32_t w, uint32_t h, uint32_t need_w, uint32_t need_h)
{
    for (unsigned n = 1; n < 8; n++) {
        uint64_t sw = ((uint64_t)w * n + 7) / 8, sh = ((uint64_t)h * n + 7) / 8;
        if (sw >= need_w && sh >= need_h)
            return n;
    }
    return 8;
}

ap_status ap__decode_jpeg(struct ap__dec *d)
{
    struct jpeg_decompress_struct ci;
    struct jerr je;
    /* Locals changed after setjmp and read after longjmp must be volatile. */
    JOCTET *volatile icc = NULL;
    uint8_t *volatile rows = NULL;
    volatile ap_status rc = AP_OK;

    memset(&ci, 0, sizeof(ci));
    ci.err = jpeg_std_error(&je.pub);
    je.pub.error_exit = on_error_exit;
    je.pub.emit_message = on_emit_message;
    je.pub.output_message = output_message_silent;
    je.fatal_warning = 0;
    je.msg[0] = '\0';
    if (setjmp(je.jmp)) {
        if (rc == AP_OK)
            rc = ap_error_set(d->err, AP_EDECODE, "jpeg: %s", je.msg);
        goto out;
    }
    jpeg_create_decompress(&ci);
    /* libjpeg's own allocation cap, a second line behind our header check. */
    ci.mem->max_memory_to_use = 512L << 20;
    jpeg_mem_src(&ci, d->buf, (unsigned long)d->len);
    jpeg_save_markers(&ci, JPEG_COM, 0xFFFF);
    for (int i = 0; i < 16; i++)
        jpeg_save_markers(&ci, JPEG_APP0 + i, 0xFFFF);
    if (jpeg_read_header(&ci, TRUE) != JPEG_HEADER_OK) {
        rc = ap_error_set(d->err, AP_EDECODE, "jpeg: no image in the stream");
        goto out;
    }
    d->hdr.width = ci.image_width;
    d->hdr.height = ci.image_height;
    d->hdr.orientation = 1;
    scan_markers(&ci, &d->hdr);

    uint32_t need_w, need_h;
    if ((rc = ap__dec_header(d, &need_w, &need_h)) != AP_OK)
        goto out;

    if (d->hdr.meta & AP_META_ICC) {
        JOCTET *p = NULL;
        unsigned int plen = 0;
        if (jpeg_read_icc_profile(&ci, &p, &plen)) {
            icc = p;
            d->icc = p;
            d->icc_len = plen;
        } else {
            d->hdr.warnings |= AP_WARN_ICC_IGNORED;
        }
    }

    enum ap__pix pix;
    switch (ci.jpeg_color_space) {
    case JCS_GRAYSCALE:
        ci.out_color_space = JCS_GRAYSCALE;
        pix = AP__PIX_G8;
        break;
    case JCS_CMYK:
    case JCS_YCCK:
        ci.out_color_space = JCS_CMYK;
        pix = AP__PIX_CMYK8;
        /* Adobe Photoshop writes CMYK JPEGs inverted and marks them with APP14. */
        d->cmyk_inverted = ci.saw_Adobe_marker;
        break;
    default:
        ci.out_color_space = JCS_RGB;
        pix = AP__PIX_RGB8;
        break;
    }
    unsigned n = pick_scale(ci.image_width, ci.image_height, need_w, need_h);
    ci.scale_num = n;
    ci.scale_denom = 8;
    ci.dct_method = JDCT_ISLOW;
    jpeg_start_decompress(&ci);
    d->scale_denom = n == 8 ? 1 : 8 / n;

    if ((rc = ap__dec_begin(d, ci.output_width, ci.output_height, pix)) != AP_OK)
        goto out;
    size_t stride = (size_t)ci.output_width * ci.output_components;
    unsigned batch = ci.rec_outbuf_height > 0 ? (unsigned)ci.rec_outbuf_height : 1;
    batch = batch < 8 ? 8 : batch > 64 ? 64 : batch;
    uint8_t *buf = malloc(stride * batch);
    rows = buf;
    if (buf == NULL) {
        rc = ap_error_set(d->err, AP_ENOMEM, "jpeg: out of memory for %u rows", batch);
        goto out;
    }
    JSAMPROW ptrs[64];
    while (ci.output_scanline < ci.output_height) {
        unsigned want = AP_MIN(batch, ci.output_height - ci.output_scanline);
        unsigned got = 0;
        while (got < want) {
            for (unsigned i = 0; i < want - got; i++)
                ptrs[i] = buf + (size_t)(got + i) * stride;
            JDIMENSION r = jpeg_read_scanlines(&ci, ptrs, want - got);
            if (r == 0)
                break;
            got += r;
        }
        if (je.fatal_warning) {
            rc = ap_error_set(d->err, AP_EDECODE, "jpeg: truncated or corrupt scan data (%s)",
                              je.msg);
            goto out;
        }
        if (got == 0) {
            rc = ap_error_set(d->err, AP_EDECODE, "jpeg: decoder stalled at row %u",
                              ci.output_scanline);
            goto out;
        }
        if ((rc = ap__dec_rows(d, buf, stride, got)) != AP_OK)
            goto out;
    }
    jpeg_finish_decompress(&ci);
    if (je.fatal_warning) {
        rc = ap_error_set(d->err, AP_EDECODE, "jpeg: truncated or corrupt scan data (%s)",
                          je.msg);
        goto out;
    }
    /* Bytes after EOI: a polyglot (appended ZIP, HTML, PDF). The output is re-encoded from
     * pixels, so they cannot leave; say so. */
    if (ci.src != NULL && ci.src->bytes_in_buffer > 16)
        d->hdr.warnings |= AP_WARN_TRAILING_DATA;
out:
    jpeg_destroy_decompress(&ci);
    free(rows);
    free(icc);
    d->icc = NULL;
    d->icc_len = 0;
    return rc;
}
