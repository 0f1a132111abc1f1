/*
 * dec_heif.c - HEIC/HEIF (HEVC) and AVIF (AV1) via libheif: the primary image, grids of tiles,
 * alpha auxiliary images, 10/12-bit sources (reduced to 8 bits by libheif), ICC profiles.
 *
 * Geometry: libheif applies the container's transformations (clap crop, irot rotation, imir
 * mirror) on decode, and the handle's width/height are already the transformed size, so that is
 * the "stored" size we report and hdr.orientation is always 1. An EXIF orientation tag is never
 * applied on top: iPhone HEICs carry both (irot and an EXIF tag describing the same rotation),
 * and in HEIF the transformative properties are normative, the EXIF tag only informative.
 * EXIF is still read, for the metadata bits (GPS).
 *
 * Not covered (libheif 1.15 offers no hook): the codec's own frame size (AV1 sequence header,
 * HEVC SPS) is not compared with ispe before decoding. A file whose ispe understates its coded
 * size is decoded at the coded size and only then refused (the size check after decode).
 *
 * Limits: libheif checks every item's declared size (tiles, alpha and thumbnails included)
 * against its own per-side cap while parsing; we lower that cap to what our pixel limit could
 * ever admit, and our own check (ap__dec_header) runs on the primary image before any decoding.
 * The container is parsed from d->buf in place (without copy), so it must not outlive the call.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <libheif/heif.h>

#include "image/image.h"

/* libheif's built-in per-side cap (MAX_IMAGE_WIDTH/HEIGHT in its security limits, 1.15). */
#define HEIF_SIDE_CAP 32768u

/* Metadata blocks larger than this are noted but not copied out for parsing: ap__exif_orientation
 * ignores blocks over 1 MiB anyway, and a block's size is whatever its iloc extents add up to. */
#define HEIF_META_READ_MAX ((size_t)1 << 20)

/* At most this many top-level images are compared with the primary (grid tiles may be many). */
#define HEIF_TOP_LEVEL_MAX 64

/* At most this many metadata blocks are looked at; real files have one or two. */
#define HEIF_META_BLOCKS_MAX 64

/*
 * Turn a libheif error into ours: out of memory stays AP_ENOMEM, libheif's security limits are
 * AP_ETOOLARGE, a codec or feature libheif lacks is AP_EUNSUPPORTED, everything else (truncated
 * data, bad boxes, codec errors) is AP_EDECODE. libheif's message is kept, minus its newline.
 */
static ap_status heif_fail(struct ap__dec *d, struct heif_error he, const char *what)
{
    ap_status code = AP_EDECODE;
    if (he.code == heif_error_Memory_allocation_error)
        code = he.subcode == heif_suberror_Security_limit_exceeded ? AP_ETOOLARGE : AP_ENOMEM;
    else if (he.code == heif_error_Unsupported_feature ||
             he.code == heif_error_Unsupported_filetype)
        code = AP_EUNSUPPORTED;
    const char *msg = he.message != NULL ? he.message : "";
    int n = (int)AP_MIN(strcspn(msg, "\r\n"), (size_t)160);
    return ap_error_set(d->err, code, "heif: %s (%.*s)", what, n, msg);
}

/*
 * The longest side our limits could ever admit, as libheif's per-side cap: a side cannot exceed
 * max_pixels / min_side. Never above libheif's default, which only ever tightens it. Plus one
 * so that libheif's comparison (> or >=, it changed between versions) cannot refuse a size our
 * own check would accept.
 */
static int side_limit(const ap_prep_opts *o)
{
    uint64_t lim = HEIF_SIDE_CAP;
    if (o != NULL && o->max_pixels > 0)
        lim = AP_MIN(lim, o->max_pixels / AP_MAX(o->min_side, 1u) + 1);
    return (int)lim;
}

/*
 * Look at one EXIF block: it starts with a 4-byte big-endian offset from the end of that field
 * to the TIFF header (usually 0, or 6 to skip an "Exif\0\0" prefix). Only the metadata bits are
 * wanted (GPS, thumbnail); the orientation is ignored, see the top of the file.
 */
static void note_exif(const struct heif_image_handle *h, heif_item_id id, unsigned *meta)
{
    size_t len = heif_image_handle_get_metadata_size(h, id);
    uint8_t *buf = NULL;

    *meta |= AP_META_EXIF;
    if (len < 4 || len > HEIF_META_READ_MAX || (buf = malloc(len)) == NULL)
        return;
    struct heif_error he = heif_image_handle_get_metadata(h, id, buf);
    if (he.code == heif_error_Ok) {
        uint32_t off = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 | (uint32_t)buf[2] << 8 |
                       (uint32_t)buf[3];
        if (off <= len - 4)
            (void)ap__exif_orientation(buf + 4 + off, len - 4 - off, meta);
    }
    free(buf);
}

/* Note the metadata attached to the primary image in d->hdr.meta. */
static void note_metadata(const struct heif_image_handle *h, struct ap__dec *d)
{
    heif_item_id ids[HEIF_META_BLOCKS_MAX];
    int n = heif_image_handle_get_list_of_metadata_block_IDs(h, NULL, ids, HEIF_META_BLOCKS_MAX);

    for (int i = 0; i < n; i++) {
        /* The returned strings are only valid until the next libheif call: test each at
         * once. */
        const char *type = heif_image_handle_get_metadata_type(h, ids[i]);
        bool is_exif = type != NULL && strcmp(type, "Exif") == 0;
        bool is_mime = type != NULL && strcmp(type, "mime") == 0;
        const char *ctype = heif_image_handle_get_metadata_content_type(h, ids[i]);
        if (is_exif)
            note_exif(h, ids[i], &d->hdr.meta);
        else if (is_mime && ctype != NULL && strcmp(ctype, "application/rdf+xml") == 0)
            d->hdr.meta |= AP_META_XMP;
        else
            d->hdr.meta |= AP_META_OTHER;
    }
    if (heif_image_handle_get_number_of_thumbnails(h) > 0)
        d->hdr.meta |= AP_META_THUMBNAIL;
}

/*
 * Copy the ICC profile (colr "prof" or "rICC") into *icc, (transfer full): free() it. An nclx
 * colour box is not a profile: libheif uses its matrix for YCbCr -> RGB and that is all.
 */
static ap_status read_icc(const struct heif_image_handle *h, struct ap__dec *d, uint8_t **icc)
{
    enum heif_color_profile_type t = heif_image_handle_get_color_profile_type(h);
    if (t != heif_color_profile_type_prof && t != heif_color_profile_type_rICC)
        return AP_OK;
    d->hdr.meta |= AP_META_ICC;
    size_t len = heif_image_handle_get_raw_color_profile_size(h);
    if (len == 0)
        return AP_OK;
    uint8_t *buf = malloc(len);
    if (buf == NULL)
        return ap_error_set(d->err, AP_ENOMEM, "heif: out of memory for a %zu-byte icc profile",
                            len);
    struct heif_error he = heif_image_handle_get_raw_color_profile(h, buf);
    if (he.code != heif_error_Ok) {
        /* An unreadable profile is no reason to refuse the pixels: treat the image as
         * untagged, the pipeline assumes sRGB. */
        free(buf);
        d->hdr.warnings |= AP_WARN_ICC_IGNORED;
        return AP_OK;
    }
    *icc = buf;
    d->icc = buf;
    d->icc_len = len;
    return AP_OK;
}

/*
 * libheif 1.15 copies the alpha plane into the colour image without checking that the two
 * sizes agree (a TODO in its decoder), and the colour conversion then reads the alpha plane at
 * the colour image's size. Refuse files whose alpha item differs in size from the primary.
 * The alpha items are those the OMIT_ALPHA filter drops. Both sizes are compared as coded
 * (ispe), before the transformations, which libheif applies to the combined image.
 */
static ap_status check_alpha_size(const struct heif_image_handle *h, struct ap__dec *d)
{
    heif_item_id all[16], no_alpha[16];
    int n_all = heif_image_handle_get_list_of_auxiliary_image_IDs(h, 0, all, 16);
    int n_na = heif_image_handle_get_list_of_auxiliary_image_IDs(
        h, LIBHEIF_AUX_IMAGE_FILTER_OMIT_ALPHA, no_alpha, 16);
    int w = heif_image_handle_get_ispe_width(h), ht = heif_image_handle_get_ispe_height(h);

    for (int i = 0; i < n_all; i++) {
        bool is_alpha = true;
        for (int j = 0; j < n_na; j++)
            is_alpha = is_alpha && no_alpha[j] != all[i];
        if (!is_alpha)
            continue;
        struct heif_image_handle *ah = NULL;
        struct heif_error he = heif_image_handle_get_auxiliary_image_handle(h, all[i], &ah);
        if (he.code != heif_error_Ok)
            return heif_fail(d, he, "cannot open the alpha image");
        int aw = heif_image_handle_get_ispe_width(ah), aht = heif_image_handle_get_ispe_height(ah);
        heif_image_handle_release(ah);
        if (aw != w || aht != ht)
            return ap_error_set(d->err, AP_EDECODE,
                                "heif: alpha image is %dx%d but the image is %dx%d", aw, aht, w,
                                ht);
    }
    return AP_OK;
}

/*
 * Whether the file holds another top-level image the size of the primary: a burst or a
 * collection. Other top-level images do not count: some encoders forget to mark the tiles of a
 * grid hidden, and libheif then lists every tile as a top-level image of its own.
 */
static bool has_other_frames(struct heif_context *ctx, const struct heif_image_handle *primary)
{
    heif_item_id ids[HEIF_TOP_LEVEL_MAX], pid;
    int w = heif_image_handle_get_width(primary), h = heif_image_handle_get_height(primary);
    int n = heif_context_get_list_of_top_level_image_IDs(ctx, ids, HEIF_TOP_LEVEL_MAX);

    if (heif_context_get_primary_image_ID(ctx, &pid).code != heif_error_Ok)
        return false;
    for (int i = 0; i < n; i++) {
        struct heif_image_handle *o = NULL;
        if (ids[i] == pid || heif_context_get_image_handle(ctx, ids[i], &o).code != heif_error_Ok)
            continue;
        bool same = heif_image_handle_get_width(o) == w && heif_image_handle_get_height(o) == h;
        heif_image_handle_release(o);
        if (same)
            return true;
    }
    return false;
}

ap_status ap__decode_heif(struct ap__dec *d)
{
    struct heif_context *ctx = NULL;
    struct heif_image_handle *h = NULL;
    struct heif_image *img = NULL;
    struct heif_decoding_options *dopt = NULL;
    uint8_t *icc = NULL;
    ap_status rc = AP_OK;
    struct heif_error he;
    uint32_t need_w, need_h;

    d->hdr.orientation = 1; /* see the top of the file: libheif applies irot/imir itself */
    d->scale_denom = 1;

    ctx = heif_context_alloc();
    if (ctx == NULL)
        return ap_error_set(d->err, AP_ENOMEM, "heif: out of memory");
    heif_context_set_maximum_image_size_limit(ctx, side_limit(d->opts));
    he = heif_context_read_from_memory_without_copy(ctx, d->buf, d->len, NULL);
    if (he.code != heif_error_Ok) {
        rc = heif_fail(d, he, "cannot read container");
        goto out;
    }
    he = heif_context_get_primary_image_handle(ctx, &h);
    if (he.code != heif_error_Ok) {
        rc = heif_fail(d, he, "no primary image");
        goto out;
    }
    /* Zero or negative sizes become 0, which ap__dec_header refuses. */
    int w = heif_image_handle_get_width(h), ht = heif_image_handle_get_height(h);
    d->hdr.width = w > 0 ? (uint32_t)w : 0;
    d->hdr.height = ht > 0 ? (uint32_t)ht : 0;
    note_metadata(h, d);
    if ((rc = read_icc(h, d, &icc)) != AP_OK)
        goto out;
    /* AVIF/HEIF sequences (brands avis, msf1) keep their frames in a track that libheif 1.15
     * does not read, and bursts or collections have several top-level images: all are reduced
     * to the primary image. */
    int hlen = (int)AP_MIN(d->len, (size_t)INT_MAX);
    if (heif_has_compatible_brand(d->buf, hlen, "avis") == 1 ||
        heif_has_compatible_brand(d->buf, hlen, "msf1") == 1 || has_other_frames(ctx, h))
        d->hdr.warnings |= AP_WARN_MULTI_FRAME;
    if ((rc = ap__dec_header(d, &need_w, &need_h)) != AP_OK)
        goto out;

    bool alpha = heif_image_handle_has_alpha_channel(h) != 0;
    if (alpha && (rc = check_alpha_size(h, d)) != AP_OK)
        goto out;
    d->premultiplied = alpha && heif_image_handle_is_premultiplied_alpha(h) != 0;

    dopt = heif_decoding_options_alloc();
    if (dopt == NULL) {
        rc = ap_error_set(d->err, AP_ENOMEM, "heif: out of memory");
        goto out;
    }
    dopt->ignore_transformations = 0;
    dopt->convert_hdr_to_8bit = 1; /* 10/12-bit AVIF and HEIC: libheif reduces to 8 bits */
    enum ap__pix pix = alpha ? AP__PIX_RGBA8 : AP__PIX_RGB8;
    he =
        heif_decode_image(h, &img, heif_colorspace_RGB,
                          alpha ? heif_chroma_interleaved_RGBA : heif_chroma_interleaved_RGB, dopt);
    if (he.code != heif_error_Ok) {
        rc = heif_fail(d, he, "cannot decode image");
        goto out;
    }

    /* Deliver exactly what the header announced: a decoded size that differs (a bug or a
     * crafted clap box) would bypass the limits check. */
    int iw = heif_image_get_width(img, heif_channel_interleaved);
    int ih = heif_image_get_height(img, heif_channel_interleaved);
    int bpp = heif_image_get_bits_per_pixel_range(img, heif_channel_interleaved);
    if (iw != w || ih != ht) {
        rc = ap_error_set(d->err, AP_EDECODE, "heif: decoded %dx%d but the header says %dx%d", iw,
                          ih, w, ht);
        goto out;
    }
    if (bpp != 8) {
        rc = ap_error_set(d->err, AP_EDECODE, "heif: decoded to %d bits per sample, not 8", bpp);
        goto out;
    }
    int stride = 0;
    const uint8_t *px = heif_image_get_plane_readonly(img, heif_channel_interleaved, &stride);
    if (px == NULL || stride < w * (int)ap__pix_channels(pix)) {
        rc = ap_error_set(d->err, AP_EDECODE, "heif: decoder returned no pixels");
        goto out;
    }
    if ((rc = ap__dec_begin(d, d->hdr.width, d->hdr.height, pix)) != AP_OK)
        goto out;
    rc = ap__dec_rows(d, px, (size_t)stride, d->hdr.height);
out:
    heif_image_release(img);
    heif_decoding_options_free(dopt);
    heif_image_handle_release(h);
    heif_context_free(ctx);
    /* The profile dies with this call, as image.h says; leave no dangling pointer behind. */
    if (icc != NULL && d->icc == icc) {
        d->icc = NULL;
        d->icc_len = 0;
    }
    free(icc);
    return rc;
}
