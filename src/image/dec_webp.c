/*
 * dec_webp.c - WebP via libwebp + libwebpdemux: lossy (VP8), lossless (VP8L), alpha (ALPH or
 * VP8L), the extended format (VP8X) with ICCP/EXIF/XMP chunks, and animations (first frame).
 *
 * The demuxer walks the RIFF container without touching pixels, so the canvas size and the
 * metadata are known, and checked against the limits, before anything sized by the image is
 * allocated. libwebp then decodes the first frame straight into one buffer of ours, scaled on
 * load when the pipeline needs fewer pixels than the file has.
 *
 * Truncated files are refused, never half-decoded: the demuxer must reach the end of the
 * container, and WebPDecode reports missing data instead of filling grey.
 */
#include <stdlib.h>
#include <string.h>

#include <webp/decode.h>
#include <webp/demux.h>

#include "image/image.h"

static const char *vp8_status_name(VP8StatusCode st)
{
    switch (st) {
    case VP8_STATUS_OK:
        return "VP8_STATUS_OK";
    case VP8_STATUS_OUT_OF_MEMORY:
        return "VP8_STATUS_OUT_OF_MEMORY";
    case VP8_STATUS_INVALID_PARAM:
        return "VP8_STATUS_INVALID_PARAM";
    case VP8_STATUS_BITSTREAM_ERROR:
        return "VP8_STATUS_BITSTREAM_ERROR";
    case VP8_STATUS_UNSUPPORTED_FEATURE:
        return "VP8_STATUS_UNSUPPORTED_FEATURE";
    case VP8_STATUS_SUSPENDED:
        return "VP8_STATUS_SUSPENDED";
    case VP8_STATUS_USER_ABORT:
        return "VP8_STATUS_USER_ABORT";
    case VP8_STATUS_NOT_ENOUGH_DATA:
        return "VP8_STATUS_NOT_ENOUGH_DATA";
    }
    return "VP8_STATUS_UNKNOWN";
}

/* Little-endian 32-bit read; the caller checked the bounds. */
static uint32_t rd_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/*
 * The canvas size the file declares, read from its first chunk without any validation beyond
 * bounds: VP8X (24-bit canvas), VP8L (14-bit) or VP8 (14-bit). Used only to refuse a bomb by
 * its size when libwebp would call it corrupt first (a VP8X canvas that disagrees with its
 * bitstream): a refusal for size is the more useful message. Returns false when unreadable.
 */
static bool declared_size(const uint8_t *buf, size_t len, uint32_t *w, uint32_t *h)
{
    if (len < 30 || memcmp(buf, "RIFF", 4) != 0 || memcmp(buf + 8, "WEBP", 4) != 0)
        return false;
    const uint8_t *c = buf + 12, *p = buf + 20;
    if (memcmp(c, "VP8X", 4) == 0) {
        *w = 1 + ((uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16);
        *h = 1 + ((uint32_t)p[7] | (uint32_t)p[8] << 8 | (uint32_t)p[9] << 16);
        return true;
    }
    if (memcmp(c, "VP8L", 4) == 0 && p[0] == 0x2f) {
        uint32_t bits = rd_le32(p + 1);
        *w = 1 + (bits & 0x3fff);
        *h = 1 + ((bits >> 14) & 0x3fff);
        return true;
    }
    if (memcmp(c, "VP8 ", 4) == 0 && p[3] == 0x9d && p[4] == 0x01 && p[5] == 0x2a) {
        *w = ((uint32_t)p[6] | (uint32_t)p[7] << 8) & 0x3fff;
        *h = ((uint32_t)p[8] | (uint32_t)p[9] << 8) & 0x3fff;
        return true;
    }
    return false;
}

/*
 * The smallest size >= need_w x need_h with the aspect ratio of w x h (rounded up, so neither
 * side falls below what the pipeline asked for), never larger than w x h.
 */
static void fit_at_least(uint32_t w, uint32_t h, uint32_t need_w, uint32_t need_h, uint32_t *sw,
                         uint32_t *sh)
{
    *sw = w;
    *sh = h;
    if (need_w == 0 || need_h == 0 || (need_w >= w && need_h >= h))
        return;
    /* Scale by max(need_w / w, need_h / h): compare need_w * h with need_h * w. */
    uint64_t by_w = (uint64_t)need_w * h, by_h = (uint64_t)need_h * w;
    if (by_w >= by_h) {
        *sw = need_w;
        *sh = (uint32_t)((by_w + w - 1) / w);
    } else {
        *sh = need_h;
        *sw = (uint32_t)((by_h + h - 1) / h);
    }
    *sw = AP_MIN(AP_MAX(*sw, 1u), w);
    *sh = AP_MIN(AP_MAX(*sh, 1u), h);
}

/*
 * Note the metadata chunks in d->hdr, and point d->icc at the ICCP payload (it lives in d->buf,
 * which outlives the decoder). The demuxer keeps only the chunks the VP8X flags announce;
 * browsers ignore the others too, and every chunk is dropped by re-encoding anyway.
 */
static void note_metadata(WebPDemuxer *dmx, struct ap__dec *d)
{
    WebPChunkIterator ci;

    if (WebPDemuxGetChunk(dmx, "EXIF", 1, &ci)) {
        d->hdr.meta |= AP_META_EXIF;
        d->hdr.orientation = ap__exif_orientation(ci.chunk.bytes, ci.chunk.size, &d->hdr.meta);
        WebPDemuxReleaseChunkIterator(&ci);
    }
    if (WebPDemuxGetChunk(dmx, "XMP ", 1, &ci)) {
        d->hdr.meta |= AP_META_XMP;
        WebPDemuxReleaseChunkIterator(&ci);
    }
    if (WebPDemuxGetChunk(dmx, "ICCP", 1, &ci)) {
        d->hdr.meta |= AP_META_ICC;
        if (ci.chunk.size > 0) {
            d->icc = ci.chunk.bytes;
            d->icc_len = ci.chunk.size;
        }
        WebPDemuxReleaseChunkIterator(&ci);
    }
}

/*
 * Bytes after the RIFF chunk's declared end are not part of the image (polyglots append
 * archives or scripts there); the demuxer ignores them, we say so.
 */
static bool has_trailing_data(const uint8_t *buf, size_t len)
{
    uint64_t riff_end = 8 + (uint64_t)rd_le32(buf + 4);
    riff_end += riff_end & 1; /* RIFF chunks are padded to even sizes */
    return (uint64_t)len > riff_end;
}

ap_status ap__decode_webp(struct ap__dec *d)
{
    WebPDemuxer *dmx = NULL;
    WebPIterator it;
    bool have_it = false;
    uint8_t *px = NULL;
    ap_status rc = AP_OK;
    WebPBitstreamFeatures feat;
    WebPDecoderConfig cfg;
    VP8StatusCode st;
    uint32_t w, h, need_w, need_h;

    memset(&it, 0, sizeof(it));
    d->hdr.orientation = 1;
    d->scale_denom = 1;

    /* libwebp also takes bare VP8/VP8L bitstreams; we only take what sniffing accepted, and
     * the RIFF size field is read below. */
    if (d->len < 12 || memcmp(d->buf, "RIFF", 4) != 0 || memcmp(d->buf + 8, "WEBP", 4) != 0)
        return ap_error_set(d->err, AP_EDECODE, "webp: missing riff header");
    st = WebPGetFeatures(d->buf, d->len, &feat);
    if (st != VP8_STATUS_OK) {
        /* A canvas far above the limits is refused as such even when libwebp finds the
         * bitstream inconsistent with it (or cut short): that is what the file is trying to
         * be, and the more useful message. */
        if (declared_size(d->buf, d->len, &w, &h)) {
            d->hdr.width = w;
            d->hdr.height = h;
            if ((rc = ap__dec_header(d, &need_w, &need_h)) != AP_OK)
                return rc;
        }
        return ap_error_set(d->err, AP_EDECODE, "webp: truncated or corrupt bitstream (%s)",
                            vp8_status_name(st));
    }

    WebPData data = {d->buf, d->len};
    WebPDemuxState state = WEBP_DEMUX_PARSE_ERROR;
    dmx = WebPDemuxPartial(&data, &state);
    if (dmx == NULL || state != WEBP_DEMUX_DONE) {
        /* As above: size first. libwebp read the canvas from the header it did have. */
        d->hdr.width = (uint32_t)feat.width;
        d->hdr.height = (uint32_t)feat.height;
        if ((rc = ap__dec_header(d, &need_w, &need_h)) != AP_OK)
            goto out;
        uint64_t riff_end = 8 + (uint64_t)rd_le32(d->buf + 4);
        if (state != WEBP_DEMUX_PARSE_ERROR && riff_end > d->len)
            rc = ap_error_set(d->err, AP_EDECODE,
                              "webp: truncated file (riff chunk declares %llu bytes, %zu present)",
                              (unsigned long long)riff_end, d->len);
        else
            rc = ap_error_set(d->err, AP_EDECODE, "webp: truncated or corrupt riff container");
        goto out;
    }
    w = WebPDemuxGetI(dmx, WEBP_FF_CANVAS_WIDTH);
    h = WebPDemuxGetI(dmx, WEBP_FF_CANVAS_HEIGHT);
    uint32_t flags = WebPDemuxGetI(dmx, WEBP_FF_FORMAT_FLAGS);
    uint32_t frames = WebPDemuxGetI(dmx, WEBP_FF_FRAME_COUNT);
    d->hdr.width = w;
    d->hdr.height = h;
    note_metadata(dmx, d);
    if (frames > 1)
        d->hdr.warnings |= AP_WARN_MULTI_FRAME;
    if (has_trailing_data(d->buf, d->len))
        d->hdr.warnings |= AP_WARN_TRAILING_DATA;
    if ((rc = ap__dec_header(d, &need_w, &need_h)) != AP_OK)
        goto out;

    if (!WebPDemuxGetFrame(dmx, 1, &it)) {
        rc = ap_error_set(d->err, AP_EDECODE, "webp: no frame in file");
        goto out;
    }
    have_it = true;
    /* The demuxer validated the frame against the canvas; a bug there must not become an
     * out-of-bounds write here. */
    if (AP_NEVER(it.width <= 0 || it.height <= 0 || it.x_offset < 0 || it.y_offset < 0 ||
                 (uint64_t)it.x_offset + (uint64_t)it.width > w ||
                 (uint64_t)it.y_offset + (uint64_t)it.height > h)) {
        rc = ap_error_set(d->err, AP_EDECODE, "webp: frame %dx%d at %d,%d outside the canvas",
                          it.width, it.height, it.x_offset, it.y_offset);
        goto out;
    }

    /*
     * A first frame smaller than the canvas (animations only) is composited as the format
     * says: onto a fully transparent canvas, so the result has alpha where the frame is not.
     * That case is decoded at full size; a frame covering the canvas is scaled on load.
     */
    bool covers = (uint32_t)it.width == w && (uint32_t)it.height == h;
    bool alpha = !covers || it.has_alpha || feat.has_alpha || (flags & ALPHA_FLAG);
    uint32_t out_w = w, out_h = h;
    if (covers)
        fit_at_least(w, h, need_w, need_h, &out_w, &out_h);
    enum ap__pix pix = alpha ? AP__PIX_RGBA8 : AP__PIX_RGB8;
    size_t stride = (size_t)out_w * ap__pix_channels(pix);
    if (out_h > SIZE_MAX / stride) {
        rc = ap_error_set(d->err, AP_ETOOLARGE, "webp: %ux%u pixels do not fit in memory", out_w,
                          out_h);
        goto out;
    }
    size_t total = stride * out_h;
    /* calloc: the transparent canvas around a partial frame must be zero (alpha 0). */
    px = calloc(total, 1);
    if (px == NULL) {
        rc = ap_error_set(d->err, AP_ENOMEM, "webp: out of memory for %ux%u pixels", out_w, out_h);
        goto out;
    }

    if (!WebPInitDecoderConfig(&cfg)) {
        rc = ap_error_set(d->err, AP_EINTERNAL, "webp: libwebp decoder abi mismatch");
        goto out;
    }
    size_t at = (size_t)it.y_offset * stride + (size_t)it.x_offset * ap__pix_channels(pix);
    cfg.output.colorspace = alpha ? MODE_RGBA : MODE_RGB;
    cfg.output.is_external_memory = 1;
    cfg.output.u.RGBA.rgba = px + at;
    cfg.output.u.RGBA.stride = (int)stride;
    cfg.output.u.RGBA.size = total - at;
    if (out_w != w || out_h != h) {
        cfg.options.use_scaling = 1;
        cfg.options.scaled_width = (int)out_w;
        cfg.options.scaled_height = (int)out_h;
    }
    st = WebPDecode(it.fragment.bytes, it.fragment.size, &cfg);
    WebPFreeDecBuffer(&cfg.output); /* external memory: frees only libwebp's bookkeeping */
    if (st != VP8_STATUS_OK) {
        rc = ap_error_set(d->err, AP_EDECODE, "webp: truncated or corrupt bitstream (%s)",
                          vp8_status_name(st));
        goto out;
    }

    if ((rc = ap__dec_begin(d, out_w, out_h, pix)) != AP_OK)
        goto out;
    rc = ap__dec_rows(d, px, stride, out_h);
out:
    if (have_it)
        WebPDemuxReleaseIterator(&it);
    WebPDemuxDelete(dmx);
    free(px);
    return rc;
}
