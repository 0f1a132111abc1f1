/*
 * prep.c - the pipeline: sniff -> limits -> decode (rows stream into a sink) -> colour/alpha ->
 * horizontal resample per row -> vertical resample -> orient -> encode -> hashes.
 *
 * The sink is where a decoded row becomes a working row: ICC profile to sRGB (lcms2), CMYK to
 * RGB, alpha flattened onto the background, optional grayscale, then reduced horizontally at
 * once, so what is kept is out_width x in_height, never the full-size image (except with
 * --trim, which must see the whole page to find its margins).
 */
#include <lcms2.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "aperture/hash.h"
#include "image/image.h"
#include "image/resample.h"

/* ---- options and presets ---------------------------------------------------------------- */

void ap_prep_opts_init(ap_prep_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->max_input_bytes = 20u << 20;
    o->max_pixels = 100000000u;
    o->min_side = 1;
    o->warn_min_side = 100;
    o->max_edge = 1568;
    o->encoding = AP_ENC_JPEG;
    o->quality = 78;
    o->background[0] = o->background[1] = o->background[2] = 255;
    o->trim_tolerance = 16;
}

static const char *const target_names[] = {"default",   "anthropic", "openai-high", "openai-low",
                                           "thumbnail", "gemini",    "none",        NULL};

const char *const *ap_prep_targets(void)
{
    return target_names;
}

ap_status ap_prep_opts_target(ap_prep_opts *o, const char *name)
{
    o->max_edge = o->max_width = o->max_height = o->max_short_edge = 0;
    o->max_out_pixels = 0;
    if (strcmp(name, "default") == 0) {
        o->max_edge = 1568;
    } else if (strcmp(name, "anthropic") == 0) {
        /* Anthropic resizes anything over 1568 px on a side or about 1.15 MP; staying inside
         * both means the image the model sees is the one we made. */
        o->max_edge = 1568;
        o->max_out_pixels = 1150000;
    } else if (strcmp(name, "openai-high") == 0) {
        /* OpenAI high detail: fit 2048x2048, then the short side to 768 (tile models). */
        o->max_width = o->max_height = 2048;
        o->max_short_edge = 768;
    } else if (strcmp(name, "openai-low") == 0 || strcmp(name, "thumbnail") == 0) {
        o->max_edge = 512;
    } else if (strcmp(name, "gemini") == 0) {
        /* Gemini 2.x bills 258 tokens per 768 px tile; one tile holds the whole image. */
        o->max_width = o->max_height = 768;
    } else if (strcmp(name, "none") == 0) {
        /* normalise only */
    } else {
        o->max_edge = 1568;
        return AP_ENOTFOUND;
    }
    return AP_OK;
}

/* Output size for a displayed w x h under the geometry options. Never upscales. */
static void fit_geometry(const ap_prep_opts *o, uint32_t w, uint32_t h, uint32_t *ow,
                         uint32_t *oh)
{
    double s = 1.0;
    uint32_t lo = AP_MIN(w, h), hi = AP_MAX(w, h);
    if (o->max_edge && hi > o->max_edge)
        s = AP_MIN(s, (double)o->max_edge / hi);
    if (o->max_width && w > o->max_width)
        s = AP_MIN(s, (double)o->max_width / w);
    if (o->max_height && h > o->max_height)
        s = AP_MIN(s, (double)o->max_height / h);
    if (o->max_short_edge && lo > o->max_short_edge)
        s = AP_MIN(s, (double)o->max_short_edge / lo);
    if (o->max_out_pixels && (uint64_t)w * h > o->max_out_pixels)
        s = AP_MIN(s, sqrt((double)o->max_out_pixels / ((double)w * h)));
    if (s >= 1.0) {
        *ow = w;
        *oh = h;
        return;
    }
    /* Round half up, as the corpus' expectations do; the constraining edge lands exactly. */
    uint32_t nw = (uint32_t)floor(w * s + 0.5), nh = (uint32_t)floor(h * s + 0.5);
    if (o->max_out_pixels && (uint64_t)nw * nh > o->max_out_pixels) {
        nw = (uint32_t)floor(w * s);
        nh = (uint32_t)floor(h * s);
    }
    *ow = nw ? nw : 1;
    *oh = nh ? nh : 1;
}

/* ---- the sink ----------------------------------------------------------------------------- */

struct ap__sink {
    const ap_prep_opts *opts;
    ap_prep_result *res;
    ap_error *err;
    /* Decoded rows. */
    uint32_t dw, dh;
    enum ap__pix pix;
    unsigned in_ch;   /* samples per decoded pixel */
    bool alpha;       /* decoded rows carry alpha */
    unsigned wch;     /* working channels: 1 or 3 */
    uint32_t rows_in; /* rows received so far */
    /* Colour. */
    cmsContext lcms;
    cmsHTRANSFORM xf;
    bool cmyk_inverted, premultiplied;
    uint8_t *conv; /* one row after the ICC transform (in_ch or 3 + alpha samples) */
    uint8_t *flat; /* one row in working layout */
    /* Output geometry in stored orientation, and the horizontal pass. */
    uint32_t tw, th;
    bool keep_full; /* store unreduced rows (trim) */
    struct ap__axis hx;
    bool hresize;
    uint8_t *mid; /* dh rows of mw pixels */
    uint32_t mw;
    size_t mstride;
    double color_ms, resample_ms;
};

static void sink_release(struct ap__sink *s)
{
    if (s->xf)
        cmsDeleteTransform(s->xf);
    if (s->lcms)
        cmsDeleteContext(s->lcms);
    ap__axis_release(&s->hx);
    free(s->conv);
    free(s->flat);
    free(s->mid);
}

static void lcms_silent(cmsContext ctx, cmsUInt32Number code, const char *text)
{
    (void)ctx, (void)code, (void)text;
}

/* A gray profile with the sRGB tone curve: where gray ICC input is converted to. */
static cmsHPROFILE gray_srgb_profile(cmsContext ctx)
{
    static const cmsFloat64Number p[5] = {2.4, 1.0 / 1.055, 0.055 / 1.055, 1.0 / 12.92, 0.04045};
    cmsToneCurve *c = cmsBuildParametricToneCurve(ctx, 4, p);
    if (c == NULL)
        return NULL;
    cmsHPROFILE pr = cmsCreateGrayProfileTHR(ctx, cmsD50_xyY(), c);
    cmsFreeToneCurve(c);
    return pr;
}

/* Build the ICC -> sRGB transform for the decoder's profile, if it is usable and not sRGB. */
static void sink_setup_icc(struct ap__sink *s, const uint8_t *icc, size_t icc_len)
{
    cmsHPROFILE in = NULL, out = NULL;
    s->res->meta_removed |= AP_META_ICC;
    s->lcms = cmsCreateContext(NULL, NULL);
    if (s->lcms == NULL)
        goto ignored;
    cmsSetLogErrorHandlerTHR(s->lcms, lcms_silent);
    in = cmsOpenProfileFromMemTHR(s->lcms, icc, (cmsUInt32Number)icc_len);
    if (in == NULL)
        goto ignored;
    cmsGetProfileInfoASCII(in, cmsInfoDescription, "en", "US", s->res->icc_description,
                           sizeof(s->res->icc_description));
    cmsColorSpaceSignature cs = cmsGetColorSpace(in);
    cmsUInt32Number fin, fout, flags = 0;
    switch (s->pix) {
    case AP__PIX_RGB8:
    case AP__PIX_RGBA8:
        if (cs != cmsSigRgbData)
            goto ignored;
        /* An sRGB profile needs no work: skip the per-pixel transform. */
        if (strncmp(s->res->icc_description, "sRGB", 4) == 0)
            goto done;
        fin = fout = s->pix == AP__PIX_RGB8 ? TYPE_RGB_8 : TYPE_RGBA_8;
        out = cmsCreate_sRGBProfileTHR(s->lcms);
        break;
    case AP__PIX_G8:
    case AP__PIX_GA8:
        if (cs != cmsSigGrayData)
            goto ignored;
        fin = fout = s->pix == AP__PIX_G8 ? TYPE_GRAY_8 : TYPE_GRAYA_8;
        out = gray_srgb_profile(s->lcms);
        break;
    case AP__PIX_CMYK8:
        if (cs != cmsSigCmykData)
            goto ignored;
        /* Inverted (Adobe) CMYK is described to lcms as "reversed" samples. */
        fin = s->cmyk_inverted ? TYPE_CMYK_8_REV : TYPE_CMYK_8;
        fout = TYPE_RGB_8;
        out = cmsCreate_sRGBProfileTHR(s->lcms);
        break;
    default:
        goto ignored;
    }
    if (out == NULL)
        goto ignored;
    if (s->alpha)
        flags |= cmsFLAGS_COPY_ALPHA;
    s->xf = cmsCreateTransformTHR(s->lcms, in, fin, out, fout, INTENT_RELATIVE_COLORIMETRIC,
                                  flags | cmsFLAGS_BLACKPOINTCOMPENSATION);
    if (s->xf == NULL)
        goto ignored;
    s->res->icc_converted = true;
    goto done;
ignored:
    s->res->warnings |= AP_WARN_ICC_IGNORED;
done:
    if (in)
        cmsCloseProfile(in);
    if (out)
        cmsCloseProfile(out);
}

ap_status ap__dec_header(struct ap__dec *d, uint32_t *need_w, uint32_t *need_h)
{
    const ap_prep_opts *o = d->opts;
    struct ap__header *h = &d->hdr;

    if (h->width == 0 || h->height == 0)
        return ap_error_set(d->err, AP_EDECODE, "image declares a zero size (%ux%u)", h->width,
                            h->height);
    if (d->probe) {
        /* The caller wants the declared size, however large: no limit, nothing to plan. */
        if (h->orientation < 1 || h->orientation > 8)
            h->orientation = 1;
        return AP__DEC_PROBED;
    }
    uint64_t px = (uint64_t)h->width * h->height;
    if (o->max_pixels && px > o->max_pixels)
        return ap_error_set(d->err, AP_ETOOLARGE,
                            "image declares %ux%u = %llu pixels, over the limit of %llu",
                            h->width, h->height, (unsigned long long)px,
                            (unsigned long long)o->max_pixels);
    if (h->width < o->min_side || h->height < o->min_side)
        return ap_error_set(d->err, AP_ETOOSMALL, "image is %ux%u, under the minimum side of %u",
                            h->width, h->height, o->min_side);
    if (h->orientation < 1 || h->orientation > 8)
        h->orientation = 1;
    d->header_done = true;

    /* Output size in displayed orientation, mapped back to stored orientation. */
    bool swap = h->orientation >= 5;
    uint32_t dw = swap ? h->height : h->width, dh = swap ? h->width : h->height, ow, oh;
    fit_geometry(o, dw, dh, &ow, &oh);
    if (o->trim) {
        /* Margins are found on the decoded image; decode it whole. */
        *need_w = h->width;
        *need_h = h->height;
    } else {
        *need_w = swap ? oh : ow;
        *need_h = swap ? ow : oh;
    }
    return AP_OK;
}

ap_status ap__dec_begin(struct ap__dec *d, uint32_t w, uint32_t h, enum ap__pix pix)
{
    struct ap__sink *s = d->sink;
    const ap_prep_opts *o = s->opts;

    if (AP_NEVER(!d->header_done || s->dw != 0))
        return ap_error_set(d->err, AP_EINTERNAL, "decoder: begin before header or twice");
    if (w == 0 || h == 0 || w > d->hdr.width || h > d->hdr.height)
        return ap_error_set(d->err, AP_EDECODE, "decoder: bad output size %ux%u", w, h);
    s->dw = w;
    s->dh = h;
    s->pix = pix;
    s->in_ch = ap__pix_channels(pix);
    s->alpha = pix == AP__PIX_GA8 || pix == AP__PIX_RGBA8;
    s->wch = (pix == AP__PIX_G8 || pix == AP__PIX_GA8 || o->gray) ? 1 : 3;
    s->cmyk_inverted = d->cmyk_inverted;
    s->premultiplied = d->premultiplied;
    s->res->cmyk = pix == AP__PIX_CMYK8;
    s->res->had_alpha = s->alpha;
    if (d->icc != NULL && d->icc_len > 0) {
        double t0 = ap__now_ms();
        sink_setup_icc(s, d->icc, d->icc_len);
        s->color_ms += ap__now_ms() - t0;
    }

    /* Target in stored orientation, from the full-scale header size. */
    bool swap = d->hdr.orientation >= 5;
    uint32_t disp_w = swap ? d->hdr.height : d->hdr.width;
    uint32_t disp_h = swap ? d->hdr.width : d->hdr.height, ow, oh;
    fit_geometry(o, disp_w, disp_h, &ow, &oh);
    s->tw = swap ? oh : ow;
    s->th = swap ? ow : oh;
    /* A decoder that could not shrink exactly may deliver slightly more than the target; one
     * that delivers less (never expected) is not upscaled. */
    s->tw = AP_MIN(s->tw, w);
    s->th = AP_MIN(s->th, h);
    s->keep_full = o->trim;
    s->hresize = !s->keep_full && s->tw != w;
    s->mw = s->hresize ? s->tw : w;
    s->mstride = (size_t)s->mw * s->wch;

    size_t conv_ch = s->pix == AP__PIX_CMYK8 ? 3 : s->in_ch;
    s->conv = malloc((size_t)w * AP_MAX(conv_ch, s->in_ch));
    s->flat = malloc((size_t)w * 3);
    s->mid = malloc(s->mstride * h);
    if (s->conv == NULL || s->flat == NULL || s->mid == NULL)
        return ap_error_set(d->err, AP_ENOMEM, "out of memory for a %ux%u working image", s->mw,
                            h);
    if (s->hresize)
        return ap__axis_init(&s->hx, w, s->tw, d->err);
    return AP_OK;
}

static inline uint8_t luma(unsigned r, unsigned g, unsigned b)
{
    /* ITU-R 601-2, as Pillow's convert("L") computes it (and as imagehash expects). */
    return (uint8_t)((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
}

static inline uint8_t over(unsigned c, unsigned a, unsigned bg)
{
    return (uint8_t)((c * a + bg * (255u - a) + 127u) / 255u);
}

static inline unsigned unpremultiply(unsigned c, unsigned a)
{
    if (a == 0)
        return 0;
    unsigned v = (c * 255u + a / 2) / a;
    return v > 255 ? 255 : v;
}

/* One decoded row -> s->flat in the working layout (wch channels, sRGB, no alpha). */
static void convert_row(struct ap__sink *s, const uint8_t *in)
{
    const uint8_t *bg = s->opts->background;
    const uint32_t w = s->dw;
    const uint8_t *p = in;
    uint8_t *f = s->flat;

    if (s->xf != NULL) {
        cmsDoTransform(s->xf, in, s->conv, w);
        p = s->conv;
    }
    enum ap__pix pix = s->pix;
    if (pix == AP__PIX_CMYK8 && s->xf != NULL)
        pix = AP__PIX_RGB8; /* lcms already produced RGB */
    switch (pix) {
    case AP__PIX_G8:
        memcpy(f, p, w);
        break;
    case AP__PIX_GA8: {
        unsigned bgl = luma(bg[0], bg[1], bg[2]);
        for (uint32_t x = 0; x < w; x++) {
            unsigned g = p[2 * x], a = p[2 * x + 1];
            if (s->premultiplied)
                g = unpremultiply(g, a);
            f[x] = over(g, a, bgl);
        }
        break;
    }
    case AP__PIX_RGB8:
        if (s->wch == 3)
            memcpy(f, p, (size_t)w * 3);
        else
            for (uint32_t x = 0; x < w; x++)
                f[x] = luma(p[3 * x], p[3 * x + 1], p[3 * x + 2]);
        break;
    case AP__PIX_RGBA8:
        for (uint32_t x = 0; x < w; x++) {
            unsigned a = p[4 * x + 3], c[3];
            for (int k = 0; k < 3; k++) {
                c[k] = p[4 * x + k];
                if (s->premultiplied)
                    c[k] = unpremultiply(c[k], a);
                c[k] = over(c[k], a, bg[k]);
            }
            if (s->wch == 3) {
                f[3 * x] = (uint8_t)c[0];
                f[3 * x + 1] = (uint8_t)c[1];
                f[3 * x + 2] = (uint8_t)c[2];
            } else {
                f[x] = luma(c[0], c[1], c[2]);
            }
        }
        break;
    case AP__PIX_CMYK8:
        /* No usable profile: the naive conversion. Inverted data stores 255 - ink. */
        for (uint32_t x = 0; x < w; x++) {
            unsigned c[4];
            for (int k = 0; k < 4; k++)
                c[k] = s->cmyk_inverted ? p[4 * x + k] : 255u - p[4 * x + k];
            unsigned r = (c[0] * c[3] + 127) / 255, g = (c[1] * c[3] + 127) / 255,
                     b = (c[2] * c[3] + 127) / 255;
            if (s->wch == 3) {
                f[3 * x] = (uint8_t)r;
                f[3 * x + 1] = (uint8_t)g;
                f[3 * x + 2] = (uint8_t)b;
            } else {
                f[x] = luma(r, g, b);
            }
        }
        break;
    }
}

ap_status ap__dec_rows(struct ap__dec *d, const uint8_t *rows, size_t stride, uint32_t n)
{
    struct ap__sink *s = d->sink;
    if (AP_NEVER(s->mid == NULL))
        return ap_error_set(d->err, AP_EINTERNAL, "decoder: rows before begin");
    if (n > s->dh - s->rows_in)
        return ap_error_set(d->err, AP_EDECODE, "decoder: more rows than announced (%u)", s->dh);
    for (uint32_t i = 0; i < n; i++) {
        double t0 = ap__now_ms();
        convert_row(s, rows + (size_t)i * stride);
        double t1 = ap__now_ms();
        uint8_t *dst = s->mid + (size_t)s->rows_in * s->mstride;
        if (s->hresize)
            ap__hpass_row(&s->hx, s->wch, s->flat, dst);
        else
            memcpy(dst, s->flat, s->mstride);
        s->color_ms += t1 - t0;
        s->resample_ms += ap__now_ms() - t1;
        s->rows_in++;
    }
    return AP_OK;
}

/* ---- after decode -------------------------------------------------------------------------- */

/* Is pixel (x, y) within tol of ref on every channel? */
static inline bool px_same(const struct ap__image *im, const uint8_t *ref, uint32_t x, uint32_t y,
                           unsigned tol)
{
    const uint8_t *q = im->px + (size_t)y * im->stride + (size_t)x * im->ch;
    for (unsigned k = 0; k < im->ch; k++)
        if ((unsigned)abs((int)q[k] - (int)ref[k]) > tol)
            return false;
    return true;
}

/* Crop uniform borders: the colour of the top-left pixel, within tol per channel. */
static void trim_box(const struct ap__image *im, unsigned tol, uint32_t *x0, uint32_t *y0,
                     uint32_t *x1, uint32_t *y1)
{
    const uint8_t *ref = im->px;
#define PX_SAME(x, y) px_same(im, ref, (x), (y), tol)
    uint32_t top = 0, bot = im->h, left = 0, right = im->w;
    for (; top < bot; top++) {
        uint32_t x = 0;
        while (x < im->w && PX_SAME(x, top))
            x++;
        if (x < im->w)
            break;
    }
    for (; bot > top; bot--) {
        uint32_t x = 0;
        while (x < im->w && PX_SAME(x, bot - 1))
            x++;
        if (x < im->w)
            break;
    }
    for (; left < right; left++) {
        uint32_t y = top;
        while (y < bot && PX_SAME(left, y))
            y++;
        if (y < bot)
            break;
    }
    for (; right > left; right--) {
        uint32_t y = top;
        while (y < bot && PX_SAME(right - 1, y))
            y++;
        if (y < bot)
            break;
    }
#undef PX_SAME
    if (top >= bot || left >= right) { /* uniform image: nothing to keep but nothing to cut */
        top = left = 0;
        bot = im->h;
        right = im->w;
    }
    *x0 = left;
    *y0 = top;
    *x1 = right;
    *y1 = bot;
}

/* Apply EXIF orientation o (2..8) to src into a new image. */
static ap_status orient(const struct ap__image *src, int o, struct ap__image *dst, ap_error *err)
{
    bool swap = o >= 5;
    uint32_t W = swap ? src->h : src->w, H = swap ? src->w : src->h;
    unsigned ch = src->ch;
    size_t stride = (size_t)W * ch;
    uint8_t *px = malloc(stride * H);
    if (px == NULL)
        return ap_error_set(err, AP_ENOMEM, "orient: out of memory");
    const uint32_t w = src->w, h = src->h;
    for (uint32_t y = 0; y < H; y++) {
        uint8_t *out = px + (size_t)y * stride;
        for (uint32_t x = 0; x < W; x++) {
            uint32_t sx, sy;
            switch (o) {
            case 2: sx = w - 1 - x, sy = y; break;
            case 3: sx = w - 1 - x, sy = h - 1 - y; break;
            case 4: sx = x, sy = h - 1 - y; break;
            case 5: sx = y, sy = x; break;
            case 6: sx = y, sy = h - 1 - x; break;
            case 7: sx = w - 1 - y, sy = h - 1 - x; break;
            default: sx = w - 1 - y, sy = x; break; /* 8 */
            }
            const uint8_t *in = src->px + (size_t)sy * src->stride + (size_t)sx * ch;
            for (unsigned k = 0; k < ch; k++)
                out[(size_t)x * ch + k] = in[k];
        }
    }
    dst->px = px;
    dst->w = W;
    dst->h = H;
    dst->ch = ch;
    dst->stride = stride;
    return AP_OK;
}

static ap_status run_decoder(ap_format f, struct ap__dec *d)
{
    switch (f) {
    case AP_FORMAT_JPEG: return ap__decode_jpeg(d);
    case AP_FORMAT_PNG: return ap__decode_png(d);
    case AP_FORMAT_WEBP: return ap__decode_webp(d);
    case AP_FORMAT_GIF: return ap__decode_gif(d);
    case AP_FORMAT_BMP: return ap__decode_bmp(d);
    case AP_FORMAT_TIFF: return ap__decode_tiff(d);
    case AP_FORMAT_HEIF:
    case AP_FORMAT_AVIF: return ap__decode_heif(d);
    case AP_FORMAT_UNKNOWN: break;
    }
    return AP_EUNSUPPORTED;
}

static const char *media_type(ap_encoding e)
{
    switch (e) {
    case AP_ENC_PNG: return "image/png";
    case AP_ENC_WEBP: return "image/webp";
    case AP_ENC_JPEG: break;
    }
    return "image/jpeg";
}

ap_status ap_prep(const uint8_t *buf, size_t len, const ap_prep_opts *opts, ap_prep_result *res,
                  ap_error *err)
{
    ap_prep_result r;
    struct ap__sink s;
    struct ap__dec d;
    struct ap__image full = {0}, sized = {0}, oriented = {0};
    const struct ap__image *fin = NULL;
    ap_prep_opts defaults;
    ap_status rc = AP_OK;
    double t_start = ap__now_ms();

    memset(&r, 0, sizeof(r));
    memset(&s, 0, sizeof(s));
    memset(&d, 0, sizeof(d));
    ap_error_clear(err); /* a reused ap_error must not report an earlier call's failure */
    if (res == NULL || (buf == NULL && len > 0))
        return ap_error_set(err, AP_EINVAL, "prep: NULL argument");
    memset(res, 0, sizeof(*res));
    if (opts == NULL) {
        ap_prep_opts_init(&defaults);
        opts = &defaults;
    }
    if (opts->quality < 1 || opts->quality > 100)
        return ap_error_set(err, AP_EINVAL, "prep: quality %d is outside 1..100", opts->quality);

    r.in_bytes = len;
    if (opts->max_input_bytes && len > opts->max_input_bytes)
        return ap_error_set(err, AP_ETOOLARGE, "input is %zu bytes, over the limit of %zu", len,
                            opts->max_input_bytes);
    r.in_format = ap_sniff(buf, len);
    if (r.in_format == AP_FORMAT_UNKNOWN)
        return ap_error_set(err, AP_EUNSUPPORTED, "not an accepted image format: sniffed \"%s\"",
                            ap_sniff_describe(buf, len));

    s.opts = opts;
    s.res = &r;
    s.err = err;
    d.buf = buf;
    d.len = len;
    d.opts = opts;
    d.err = err;
    d.sink = &s;
    d.scale_denom = 1;
    d.hdr.orientation = 1;

    double t0 = ap__now_ms();
    rc = run_decoder(r.in_format, &d);
    double t_dec = ap__now_ms() - t0;
    if (rc == AP_EUNSUPPORTED && (err == NULL || err->msg[0] == '\0'))
        rc = ap_error_set(err, AP_EUNSUPPORTED, "%s: no decoder", ap_format_name(r.in_format));
    if (rc != AP_OK)
        goto out;
    if (s.mid == NULL || s.rows_in != s.dh) {
        rc = ap_error_set(err, AP_EDECODE, "%s: image data ended after %u of %u rows",
                          ap_format_name(r.in_format), s.rows_in, s.dh);
        goto out;
    }
    r.in_width = d.hdr.width;
    r.in_height = d.hdr.height;
    r.orientation = d.hdr.orientation;
    r.meta_removed |= d.hdr.meta;
    r.warnings |= d.hdr.warnings;
    r.decode_scale = d.scale_denom ? d.scale_denom : 1;
    if (r.in_width < opts->warn_min_side || r.in_height < opts->warn_min_side)
        r.warnings |= AP_WARN_SMALL;
    r.ms.color_ms = s.color_ms;
    r.ms.resample_ms = s.resample_ms;
    r.ms.decode_ms = t_dec - s.color_ms - s.resample_ms;

    struct ap__image mid = {s.mid, s.mw, s.dh, s.wch, s.mstride};
    t0 = ap__now_ms();
    if (s.keep_full) {
        uint32_t x0, y0, x1, y1;
        trim_box(&mid, opts->trim_tolerance, &x0, &y0, &x1, &y1);
        r.trimmed = x0 > 0 || y0 > 0 || x1 < mid.w || y1 < mid.h;
        full.px = mid.px + (size_t)y0 * mid.stride + (size_t)x0 * mid.ch;
        full.w = x1 - x0;
        full.h = y1 - y0;
        full.ch = mid.ch;
        full.stride = mid.stride;
        bool swap = r.orientation >= 5;
        uint32_t ow, oh;
        fit_geometry(opts, swap ? full.h : full.w, swap ? full.w : full.h, &ow, &oh);
        uint32_t tw = swap ? oh : ow, th = swap ? ow : oh;
        if (tw != full.w || th != full.h) {
            if ((rc = ap__resize(&full, tw, th, &sized, err)) != AP_OK)
                goto out;
            fin = &sized;
        } else {
            fin = &full;
        }
    } else if (s.th != s.dh) {
        sized.w = s.mw;
        sized.h = s.th;
        sized.ch = s.wch;
        sized.stride = s.mstride;
        sized.px = malloc(sized.stride * sized.h);
        if (sized.px == NULL) {
            rc = ap_error_set(err, AP_ENOMEM, "out of memory for the output image");
            goto out;
        }
        struct ap__axis vy;
        if ((rc = ap__axis_init(&vy, s.dh, s.th, err)) != AP_OK)
            goto out;
        rc = ap__vpass(&vy, s.mw, s.wch, s.mid, s.mstride, sized.px, sized.stride, err);
        ap__axis_release(&vy);
        if (rc != AP_OK)
            goto out;
        fin = &sized;
    } else {
        fin = &mid;
    }
    r.ms.resample_ms += ap__now_ms() - t0;

    t0 = ap__now_ms();
    if (r.orientation != 1) {
        if ((rc = orient(fin, r.orientation, &oriented, err)) != AP_OK)
            goto out;
        fin = &oriented;
    }
    r.ms.orient_ms = ap__now_ms() - t0;
    r.out_width = fin->w;
    r.out_height = fin->h;
    r.out_channels = fin->ch;

    t0 = ap__now_ms();
    if ((rc = ap__encode(fin, opts->encoding, opts->quality, &r.out, &r.out_len, err)) != AP_OK)
        goto out;
    r.out_media_type = media_type(opts->encoding);
    r.ms.encode_ms = ap__now_ms() - t0;

    t0 = ap__now_ms();
    if ((rc = ap_sha256(r.out, r.out_len, r.sha256, err)) != AP_OK)
        goto out;
    ap_sha256_hex(r.sha256, r.sha256_hex);
    if (!opts->no_hash &&
        (rc = ap_hash_image(fin->px, fin->w, fin->h, fin->stride, fin->ch, &r.phash, &r.dhash,
                            err)) != AP_OK)
        goto out;
    r.ms.hash_ms = ap__now_ms() - t0;
    r.ms.total_ms = ap__now_ms() - t_start;
    *res = r;
    r.out = NULL;
out:
    free(r.out);
    free(sized.px);
    free(oriented.px);
    sink_release(&s);
    return rc;
}

/*
 * The decoders' own header parsing, stopped by ap__dec_header() in probe mode: the same code
 * that ap_prep() trusts with the limits, so the two can never disagree about a file's size.
 */
ap_status ap_prep_probe(const uint8_t *buf, size_t len, ap_probe_info *out, ap_error *err)
{
    ap_prep_result r;
    struct ap__sink s;
    struct ap__dec d;
    ap_prep_opts opts;

    ap_error_clear(err);
    if (out == NULL || (buf == NULL && len > 0))
        return ap_error_set(err, AP_EINVAL, "probe: NULL argument");
    ap_format f = ap_sniff(buf, len);
    if (f == AP_FORMAT_UNKNOWN)
        return ap_error_set(err, AP_EUNSUPPORTED, "not an accepted image format: sniffed \"%s\"",
                            ap_sniff_describe(buf, len));

    /* No limits: a bomb reports what it declares (ap_prep() refuses it). HEIF still has
     * libheif's own per-side cap, which applies while the container is parsed. The sink is
     * never reached (every decoder stops at its header); it is set up only so that a decoder
     * that did not would fail its checks instead of touching a NULL pointer. */
    ap_prep_opts_init(&opts);
    opts.max_input_bytes = 0;
    opts.max_pixels = 0;
    opts.min_side = 0;
    memset(&r, 0, sizeof(r));
    memset(&s, 0, sizeof(s));
    memset(&d, 0, sizeof(d));
    s.opts = &opts;
    s.res = &r;
    s.err = err;
    d.buf = buf;
    d.len = len;
    d.opts = &opts;
    d.err = err;
    d.probe = true;
    d.sink = &s;
    d.scale_denom = 1;
    d.hdr.orientation = 1;

    ap_status rc = run_decoder(f, &d);
    sink_release(&s);
    if (rc == AP__DEC_PROBED) {
        bool swap = d.hdr.orientation >= 5;
        out->format = f;
        out->width = swap ? d.hdr.height : d.hdr.width;
        out->height = swap ? d.hdr.width : d.hdr.height;
        out->orientation = d.hdr.orientation;
        ap_error_clear(err); /* a decoder may have noted a problem it then worked around */
        return AP_OK;
    }
    if (rc == AP_OK) /* a decoder went past its header: a bug, and the answer is unknown */
        return ap_error_set(err, AP_EINTERNAL, "%s: decoder did not stop at the header",
                            ap_format_name(f));
    if (rc == AP_EUNSUPPORTED && (err == NULL || err->msg[0] == '\0'))
        return ap_error_set(err, AP_EUNSUPPORTED, "%s: no decoder", ap_format_name(f));
    return rc;
}

void ap_prep_result_release(ap_prep_result *res)
{
    if (res == NULL)
        return;
    free(res->out);
    memset(res, 0, sizeof(*res));
}

char *ap_base64_encode(const uint8_t *buf, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (len > (SIZE_MAX / 4) * 3 - 3)
        return NULL;
    size_t n = (len + 2) / 3 * 4;
    char *out = malloc(n + 1);
    if (out == NULL)
        return NULL;
    size_t i = 0, o = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)buf[i] << 16 | (uint32_t)buf[i + 1] << 8 | buf[i + 2];
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = tab[(v >> 6) & 63];
        out[o++] = tab[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)buf[i] << 16 | (i + 1 < len ? (uint32_t)buf[i + 1] << 8 : 0);
        out[o++] = tab[v >> 18];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return out;
}
