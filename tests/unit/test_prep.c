/*
 * test_prep.c - ap_prep() options and contract: geometry presets, never upscaling, trim, gray,
 * encodings and quality, the byte/pixel/side limits, warnings, hashes of the output, base64.
 *
 * Inputs are synthetic pictures drawn here and encoded with the library's own (internal)
 * encoder, so every expected size is exact and known; the corpus-driven suites live in
 * test_prep_formats.c, _orient.c, _meta.c, _bad.c, _color.c and _resize.c.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <openssl/evp.h>

#include "aperture/hash.h"
#include "image/image.h"
#include "prep_testutil.h"

/* ---- synthetic inputs ------------------------------------------------------------------------ */

/* Pixel of the test picture: gradients plus an 8 px checker, so resizing has real detail. */
static void synth_px(uint32_t x, uint32_t y, uint32_t w, uint32_t h, uint8_t rgb[3])
{
    rgb[0] = (uint8_t)(w > 1 ? x * 255 / (w - 1) : 0);
    rgb[1] = (uint8_t)(h > 1 ? y * 255 / (h - 1) : 0);
    rgb[2] = ((x / 8 + y / 8) & 1) ? 200 : 40;
}

/* Encode pixels with the library's encoder (transfer full: free()). */
static uint8_t *encode(const uint8_t *px, uint32_t w, uint32_t h, unsigned ch, ap_encoding enc,
                       size_t *len)
{
    struct ap__image im = {(uint8_t *)px, w, h, ch, (size_t)w * ch};
    uint8_t *out = NULL;
    ap_error err = {0};
    ap_status st = ap__encode(&im, enc, 92, &out, len, &err);
    if (st != AP_OK)
        fail_msg("encode %ux%u: %s", w, h, err.msg);
    return out;
}

/* The test picture as w x h x ch raw pixels (ch 1: its luma-free green ramp as gray). */
static uint8_t *synth_pixels(uint32_t w, uint32_t h, unsigned ch)
{
    uint8_t *px = malloc((size_t)w * h * ch);
    assert_non_null(px);
    for (uint32_t y = 0; y < h; y++)
        for (uint32_t x = 0; x < w; x++) {
            uint8_t rgb[3];
            synth_px(x, y, w, h, rgb);
            if (ch == 1)
                px[(size_t)y * w + x] = (uint8_t)((rgb[0] + rgb[2]) / 2);
            else
                memcpy(px + ((size_t)y * w + x) * 3, rgb, 3);
        }
    return px;
}

static uint8_t *synth(uint32_t w, uint32_t h, unsigned ch, ap_encoding enc, size_t *len)
{
    uint8_t *px = synth_pixels(w, h, ch);
    uint8_t *out = encode(px, w, h, ch, enc, len);
    free(px);
    return out;
}

/* Run ap_prep or fail the test. */
static void prep_ok(const uint8_t *buf, size_t len, const ap_prep_opts *o, ap_prep_result *r)
{
    ap_error err = {0};
    ap_status st = ap_prep(buf, len, o, r, &err);
    if (st != AP_OK)
        fail_msg("ap_prep: %s %s", ap_strerror(st), err.msg);
}

/* Number of components in a JPEG's frame header (SOF0..2), 0 if none found. */
static int jpeg_components(const uint8_t *p, size_t n)
{
    for (size_t i = 2; i + 9 < n;) {
        if (p[i] != 0xFF)
            return 0;
        uint8_t mk = p[i + 1];
        if (mk >= 0xC0 && mk <= 0xC2)
            return p[i + 9];
        i += 2 + ((size_t)p[i + 2] << 8 | p[i + 3]);
    }
    return 0;
}

/* ---- options and presets ------------------------------------------------------------------- */

static void test_prep__opts_defaults(void **state)
{
    (void)state;
    ap_prep_opts o;
    memset(&o, 0x5A, sizeof(o));
    ap_prep_opts_init(&o);
    assert_int_equal(o.max_input_bytes, 20u << 20);
    assert_int_equal(o.max_pixels, 100000000u);
    assert_int_equal(o.min_side, 1);
    assert_int_equal(o.warn_min_side, 100);
    assert_int_equal(o.max_edge, 1568);
    assert_int_equal(o.max_width, 0);
    assert_int_equal(o.max_height, 0);
    assert_int_equal(o.max_short_edge, 0);
    assert_int_equal(o.max_out_pixels, 0);
    assert_int_equal(o.encoding, AP_ENC_JPEG);
    assert_int_equal(o.quality, 78);
    assert_int_equal(o.background[0], 255);
    assert_int_equal(o.background[1], 255);
    assert_int_equal(o.background[2], 255);
    assert_false(o.trim);
    assert_int_equal(o.trim_tolerance, 16);
    assert_false(o.gray);
    assert_false(o.no_hash);
}

static void test_prep__targets_names(void **state)
{
    (void)state;
    static const char *const want[] = {"default",   "anthropic", "openai-high", "openai-low",
                                       "thumbnail", "gemini",    "none"};
    const char *const *t = ap_prep_targets();
    size_t n = 0;
    while (t[n] != NULL)
        n++;
    assert_int_equal(n, 7);
    for (size_t i = 0; i < 7; i++) {
        bool found = false;
        for (size_t j = 0; j < n; j++)
            found = found || strcmp(t[j], want[i]) == 0;
        if (!found)
            fail_msg("target \"%s\" missing from ap_prep_targets()", want[i]);
        ap_prep_opts o;
        ap_prep_opts_init(&o);
        assert_int_equal(ap_prep_opts_target(&o, want[i]), AP_OK);
    }
    ap_prep_opts o;
    ap_prep_opts_init(&o);
    assert_int_equal(ap_prep_opts_target(&o, "gpt-9-ultra"), AP_ENOTFOUND);
    /* Only geometry changes. */
    ap_prep_opts_init(&o);
    o.quality = 33;
    o.encoding = AP_ENC_PNG;
    o.gray = true;
    assert_int_equal(ap_prep_opts_target(&o, "gemini"), AP_OK);
    assert_int_equal(o.quality, 33);
    assert_int_equal(o.encoding, AP_ENC_PNG);
    assert_true(o.gray);
    assert_int_equal(o.max_pixels, 100000000u);
}

struct geo {
    const char *target;
    uint32_t w, h; /* expected output; 0 = checked by rule below (anthropic) */
};

static void check_geometry(uint32_t in_w, uint32_t in_h, const struct geo *g, size_t n)
{
    size_t len;
    uint8_t *jpg = synth(in_w, in_h, 3, AP_ENC_JPEG, &len);
    for (size_t i = 0; i < n; i++) {
        ap_prep_opts o;
        ap_prep_result r;
        ap_prep_opts_init(&o);
        assert_int_equal(ap_prep_opts_target(&o, g[i].target), AP_OK);
        o.no_hash = true;
        prep_ok(jpg, len, &o, &r);
        print_message("  %ux%u --%-12s -> %ux%u\n", in_w, in_h, g[i].target, r.out_width,
                      r.out_height);
        assert_int_equal(r.in_width, in_w);
        assert_int_equal(r.in_height, in_h);
        if (g[i].w != 0) {
            if (r.out_width != g[i].w || r.out_height != g[i].h)
                fail_msg("%ux%u with target %s: %ux%u, expected %ux%u", in_w, in_h, g[i].target,
                         r.out_width, r.out_height, g[i].w, g[i].h);
        } else {
            /* anthropic: long edge <= 1568 and <= 1.15 MP, as large as that allows, aspect kept */
            uint64_t px = (uint64_t)r.out_width * r.out_height;
            assert_true(r.out_width <= 1568 && r.out_height <= 1568);
            assert_true(px <= 1150000);
            assert_true(px >= 1140000 || (r.out_width == 1568 || r.out_height == 1568));
            double a_in = (double)in_w / in_h, a_out = (double)r.out_width / r.out_height;
            assert_true(fabs(a_in - a_out) / a_in < 0.005);
        }
        ap_prep_result_release(&r);
    }
    free(jpg);
}

static void test_prep__targets_geometry(void **state)
{
    (void)state;
    static const struct geo landscape[] = {
        {"default", 1568, 1176},  {"anthropic", 0, 0},     {"openai-high", 1024, 768},
        {"openai-low", 512, 384}, {"thumbnail", 512, 384}, {"gemini", 768, 576},
        {"none", 4000, 3000},
    };
    check_geometry(4000, 3000, landscape, sizeof(landscape) / sizeof(landscape[0]));
    static const struct geo portrait[] = {
        {"default", 523, 1568},  {"anthropic", 523, 1568}, {"openai-high", 683, 2048},
        {"thumbnail", 171, 512}, {"gemini", 256, 768},     {"none", 1000, 3000},
    };
    check_geometry(1000, 3000, portrait, sizeof(portrait) / sizeof(portrait[0]));
    static const struct geo square[] = {
        {"default", 1568, 1568},
        {"anthropic", 1072, 1072},
        {"openai-high", 768, 768},
        {"gemini", 768, 768},
    };
    check_geometry(1600, 1600, square, sizeof(square) / sizeof(square[0]));
    static const struct geo panorama[] = {
        {"default", 1568, 131},
        {"openai-high", 2048, 171},
        {"gemini", 768, 64},
    };
    check_geometry(6000, 500, panorama, sizeof(panorama) / sizeof(panorama[0]));
}

static void test_prep__never_upscales(void **state)
{
    (void)state;
    size_t len;
    uint8_t *png = synth(300, 200, 3, AP_ENC_PNG, &len);
    const char *const *t = ap_prep_targets();
    for (size_t i = 0; t[i] != NULL; i++) {
        ap_prep_opts o;
        ap_prep_result r;
        ap_prep_opts_init(&o);
        assert_int_equal(ap_prep_opts_target(&o, t[i]), AP_OK);
        prep_ok(png, len, &o, &r);
        if (r.out_width != 300 || r.out_height != 200)
            fail_msg("target %s: 300x200 became %ux%u", t[i], r.out_width, r.out_height);
        ap_prep_result_release(&r);
    }
    ap_prep_opts o;
    ap_prep_result r;
    ap_prep_opts_init(&o);
    o.max_edge = 5000;
    o.max_width = o.max_height = 4000;
    o.max_short_edge = 3000;
    prep_ok(png, len, &o, &r);
    assert_int_equal(r.out_width, 300);
    assert_int_equal(r.out_height, 200);
    ap_prep_result_release(&r);
    free(png);
}

/* ---- trim ----------------------------------------------------------------------------------- */

/* W x H white page with the test picture in [x0, x0+cw) x [y0, y0+ch). */
static uint8_t *page_with_margins(uint32_t W, uint32_t H, uint32_t x0, uint32_t y0, uint32_t cw,
                                  uint32_t chh, size_t *len)
{
    uint8_t *px = malloc((size_t)W * H * 3);
    assert_non_null(px);
    memset(px, 255, (size_t)W * H * 3);
    for (uint32_t y = 0; y < chh; y++)
        for (uint32_t x = 0; x < cw; x++)
            synth_px(x, y, cw, chh, px + ((size_t)(y0 + y) * W + x0 + x) * 3);
    uint8_t *png = encode(px, W, H, 3, AP_ENC_PNG, len);
    free(px);
    return png;
}

static void test_prep__trim_removes_uniform_margins(void **state)
{
    (void)state;
    size_t len;
    uint8_t *png = page_with_margins(400, 300, 100, 50, 200, 200, &len);
    ap_prep_opts o;
    ap_prep_result r;
    ap_prep_opts_init(&o);
    prep_ok(png, len, &o, &r);
    assert_int_equal(r.out_width, 400); /* without --trim nothing is cut */
    assert_int_equal(r.out_height, 300);
    assert_false(r.trimmed);
    ap_prep_result_release(&r);

    o.trim = true;
    o.encoding = AP_ENC_PNG;
    prep_ok(png, len, &o, &r);
    assert_true(r.trimmed);
    assert_int_equal(r.out_width, 200);
    assert_int_equal(r.out_height, 200);
    /* What is left is the content itself: its corners, pixel for pixel. */
    struct pt_img out = {0};
    assert_true(pt_decode_png(r.out, r.out_len, &out));
    uint8_t want[3];
    synth_px(0, 0, 200, 200, want);
    for (unsigned k = 0; k < 3; k++)
        assert_int_equal(pt_px(&out, 0, 0, k), want[k]);
    synth_px(199, 199, 200, 200, want);
    for (unsigned k = 0; k < 3; k++)
        assert_int_equal(pt_px(&out, 199, 199, k), want[k]);
    pt_img_free(&out);
    ap_prep_result_release(&r);
    free(png);

    /* Trim first, then the size limit applies to what is left: 4000x3000 page, 2000x1000 text. */
    png = page_with_margins(4000, 3000, 1000, 900, 2000, 1000, &len);
    ap_prep_opts_init(&o);
    o.trim = true;
    o.no_hash = true;
    prep_ok(png, len, &o, &r);
    assert_true(r.trimmed);
    assert_int_equal(r.out_width, 1568);
    assert_int_equal(r.out_height, 784);
    ap_prep_result_release(&r);
    free(png);

    /* A uniform image has nothing to trim: it is kept whole. */
    uint8_t *flat = malloc(120 * 80 * 3);
    assert_non_null(flat);
    memset(flat, 200, 120 * 80 * 3);
    png = encode(flat, 120, 80, 3, AP_ENC_PNG, &len);
    ap_prep_opts_init(&o);
    o.trim = true;
    prep_ok(png, len, &o, &r);
    assert_int_equal(r.out_width, 120);
    assert_int_equal(r.out_height, 80);
    assert_false(r.trimmed);
    ap_prep_result_release(&r);
    free(png);
    free(flat);
}

/* ---- gray ----------------------------------------------------------------------------------- */

static void test_prep__gray_option_gives_one_channel(void **state)
{
    (void)state;
    size_t len;
    uint8_t *png = synth(64, 48, 3, AP_ENC_PNG, &len);
    ap_prep_opts o;
    ap_prep_result r;
    ap_prep_opts_init(&o);
    o.gray = true;
    o.encoding = AP_ENC_PNG;
    prep_ok(png, len, &o, &r);
    assert_int_equal(r.out_channels, 1);
    assert_int_equal(r.out[25], 0); /* IHDR colour type 0: grayscale */
    struct pt_img out = {0};
    assert_true(pt_decode_png(r.out, r.out_len, &out));
    assert_int_equal(out.ch, 1);
    /* Luma is ITU-R 601 (what Pillow's convert("L") and imagehash use). */
    static const uint32_t pts[][2] = {{0, 0}, {63, 0}, {0, 47}, {31, 20}, {63, 47}};
    for (size_t i = 0; i < 5; i++) {
        uint8_t c[3];
        synth_px(pts[i][0], pts[i][1], 64, 48, c);
        int want = (int)((c[0] * 19595u + c[1] * 38470u + c[2] * 7471u + 0x8000u) >> 16);
        int got = (int)pt_px(&out, pts[i][0], pts[i][1], 0);
        if (abs(got - want) > 1)
            fail_msg("gray at (%u,%u): %d, expected %d", pts[i][0], pts[i][1], got, want);
    }
    pt_img_free(&out);
    ap_prep_result_release(&r);

    o.encoding = AP_ENC_JPEG;
    prep_ok(png, len, &o, &r);
    assert_int_equal(r.out_channels, 1);
    assert_int_equal(jpeg_components(r.out, r.out_len), 1);
    ap_prep_result_release(&r);
    free(png);
}

static void test_prep__grayscale_input_stays_gray(void **state)
{
    (void)state;
    size_t len;
    uint8_t *png = synth(80, 60, 1, AP_ENC_PNG, &len);
    ap_prep_opts o;
    ap_prep_result r;
    ap_prep_opts_init(&o);
    prep_ok(png, len, &o, &r);
    assert_int_equal(r.out_channels, 1);
    assert_int_equal(jpeg_components(r.out, r.out_len), 1);
    ap_prep_result_release(&r);
    free(png);

    ap_error err;
    assert_int_equal(pt_prep_corpus("formats/jpeg/crafted/grayscale.jpg", &o, &r, &err, NULL, NULL),
                     AP_OK);
    assert_int_equal(r.out_channels, 1);
    assert_int_equal(jpeg_components(r.out, r.out_len), 1);
    ap_prep_result_release(&r);

    /* A colour JPEG stays colour. */
    assert_int_equal(
        pt_prep_corpus("formats/jpeg/crafted/sampling_444.jpg", &o, &r, &err, NULL, NULL), AP_OK);
    assert_int_equal(r.out_channels, 3);
    assert_int_equal(jpeg_components(r.out, r.out_len), 3);
    ap_prep_result_release(&r);
}

/* ---- encodings and quality ------------------------------------------------------------------ */

static void test_prep__encodings_and_media_types(void **state)
{
    (void)state;
    size_t len;
    uint8_t *src = synth_pixels(160, 120, 3);
    uint8_t *png = encode(src, 160, 120, 3, AP_ENC_PNG, &len);
    ap_prep_opts o;
    ap_prep_result r;

    ap_prep_opts_init(&o);
    prep_ok(png, len, &o, &r);
    assert_string_equal(r.out_media_type, "image/jpeg");
    assert_memory_equal(r.out, "\xFF\xD8\xFF", 3);
    assert_memory_equal(r.out + r.out_len - 2, "\xFF\xD9", 2);
    assert_int_equal(r.in_format, AP_FORMAT_PNG);
    assert_int_equal(r.in_bytes, len);
    ap_prep_result_release(&r);

    o.encoding = AP_ENC_WEBP;
    prep_ok(png, len, &o, &r);
    assert_string_equal(r.out_media_type, "image/webp");
    assert_memory_equal(r.out, "RIFF", 4);
    assert_memory_equal(r.out + 8, "WEBP", 4);
    assert_int_equal(ap_sniff(r.out, r.out_len), AP_FORMAT_WEBP);
    ap_prep_result_release(&r);

    /* PNG output is lossless: the pixels come back exactly. */
    o.encoding = AP_ENC_PNG;
    prep_ok(png, len, &o, &r);
    assert_string_equal(r.out_media_type, "image/png");
    assert_memory_equal(r.out, "\x89PNG\r\n\x1A\n", 8);
    struct pt_img out = {0};
    assert_true(pt_decode_png(r.out, r.out_len, &out));
    assert_int_equal(out.w, 160);
    assert_int_equal(out.h, 120);
    assert_int_equal(out.ch, 3);
    assert_memory_equal(out.px, src, (size_t)160 * 120 * 3);
    pt_img_free(&out);
    ap_prep_result_release(&r);
    free(png);
    free(src);
}

static void test_prep__quality(void **state)
{
    (void)state;
    size_t len;
    uint8_t *png = synth(400, 300, 3, AP_ENC_PNG, &len);
    static const ap_encoding encs[] = {AP_ENC_JPEG, AP_ENC_WEBP};
    for (size_t e = 0; e < 2; e++) {
        ap_prep_opts o;
        ap_prep_result lo, hi;
        ap_prep_opts_init(&o);
        o.encoding = encs[e];
        o.quality = 30;
        prep_ok(png, len, &o, &lo);
        o.quality = 95;
        prep_ok(png, len, &o, &hi);
        print_message("  %s q30 %zu bytes, q95 %zu bytes\n", lo.out_media_type, lo.out_len,
                      hi.out_len);
        assert_true(lo.out_len < hi.out_len);
        ap_prep_result_release(&lo);
        ap_prep_result_release(&hi);
    }
    static const int bad_q[] = {0, -5, 101};
    for (size_t i = 0; i < 3; i++) {
        ap_prep_opts o;
        ap_prep_result r;
        ap_error err = {0};
        ap_prep_opts_init(&o);
        o.quality = bad_q[i];
        assert_int_equal(ap_prep(png, len, &o, &r, &err), AP_EINVAL);
        assert_int_equal(err.code, AP_EINVAL);
        assert_null(r.out);
    }
    free(png);
}

/* ---- limits and warnings ------------------------------------------------------------------- */

static void test_prep__max_input_bytes(void **state)
{
    (void)state;
    size_t len;
    uint8_t *png = synth(300, 200, 3, AP_ENC_PNG, &len);
    ap_prep_opts o;
    ap_prep_result r;
    ap_error err = {0};
    ap_prep_opts_init(&o);
    o.max_input_bytes = len - 1;
    assert_int_equal(ap_prep(png, len, &o, &r, &err), AP_ETOOLARGE);
    assert_int_equal(err.code, AP_ETOOLARGE);
    assert_null(r.out);
    assert_int_equal(r.out_len, 0);
    o.max_input_bytes = len;
    prep_ok(png, len, &o, &r);
    ap_prep_result_release(&r);
    /* 0 means no limit. */
    o.max_input_bytes = 0;
    prep_ok(png, len, &o, &r);
    ap_prep_result_release(&r);
    /* The default is 20 MiB: a 21 MiB buffer of zeros is refused for its size, not its bytes. */
    size_t big = 21u << 20;
    uint8_t *zeros = calloc(big, 1);
    assert_non_null(zeros);
    memcpy(zeros, png, len);
    ap_prep_opts_init(&o);
    assert_int_equal(ap_prep(zeros, big, &o, &r, &err), AP_ETOOLARGE);
    free(zeros);
    free(png);
}

static void test_prep__max_pixels(void **state)
{
    (void)state;
    size_t len;
    static const ap_encoding encs[] = {AP_ENC_PNG, AP_ENC_JPEG, AP_ENC_WEBP};
    for (size_t e = 0; e < 3; e++) {
        uint8_t *img = synth(300, 200, 3, encs[e], &len);
        ap_prep_opts o;
        ap_prep_result r;
        ap_error err = {0};
        ap_prep_opts_init(&o);
        o.max_pixels = 300 * 200 - 1;
        assert_int_equal(ap_prep(img, len, &o, &r, &err), AP_ETOOLARGE);
        assert_null(r.out);
        o.max_pixels = 300 * 200;
        prep_ok(img, len, &o, &r);
        assert_int_equal(r.out_width, 300);
        ap_prep_result_release(&r);
        free(img);
    }
}

static void test_prep__min_side(void **state)
{
    (void)state;
    size_t len;
    uint8_t *png = synth(300, 200, 3, AP_ENC_PNG, &len);
    ap_prep_opts o;
    ap_prep_result r;
    ap_error err = {0};
    ap_prep_opts_init(&o);
    o.min_side = 201;
    assert_int_equal(ap_prep(png, len, &o, &r, &err), AP_ETOOSMALL);
    assert_int_equal(err.code, AP_ETOOSMALL);
    assert_null(r.out);
    o.min_side = 200;
    prep_ok(png, len, &o, &r);
    ap_prep_result_release(&r);
    free(png);
}

static void test_prep__warn_small(void **state)
{
    (void)state;
    size_t len;
    ap_prep_opts o;
    ap_prep_result r;
    ap_prep_opts_init(&o);

    uint8_t *png = synth(300, 99, 3, AP_ENC_PNG, &len);
    prep_ok(png, len, &o, &r);
    assert_true(r.warnings & AP_WARN_SMALL);
    ap_prep_result_release(&r);
    o.warn_min_side = 0;
    prep_ok(png, len, &o, &r);
    assert_false(r.warnings & AP_WARN_SMALL);
    ap_prep_result_release(&r);
    free(png);

    ap_prep_opts_init(&o);
    png = synth(300, 100, 3, AP_ENC_PNG, &len);
    prep_ok(png, len, &o, &r);
    assert_false(r.warnings & AP_WARN_SMALL);
    assert_int_equal(r.warnings, 0);
    ap_prep_result_release(&r);
    free(png);
}

/* ---- alpha background ---------------------------------------------------------------------- */

static void test_prep__background_option(void **state)
{
    (void)state;
    ap_prep_opts o;
    ap_prep_result r;
    ap_error err;
    ap_prep_opts_init(&o);
    o.encoding = AP_ENC_PNG;
    o.background[0] = o.background[1] = o.background[2] = 0;
    assert_int_equal(
        pt_prep_corpus("formats/alpha/alpha_chart_rgba8.png", &o, &r, &err, NULL, NULL), AP_OK);
    assert_true(r.had_alpha);
    struct pt_img out = {0};
    assert_true(pt_decode_png(r.out, r.out_len, &out));
    /* Quadrants: transparent red, 50% black, 25% green, opaque blue, over black. */
    static const uint8_t want[4][3] = {{0, 0, 0}, {0, 0, 0}, {0, 64, 0}, {0, 0, 255}};
    static const uint32_t qx[4] = {32, 96, 160, 224};
    for (int q = 0; q < 4; q++)
        for (unsigned k = 0; k < 3; k++)
            if (abs((int)pt_px(&out, qx[q], 24, k) - want[q][k]) > 1)
                fail_msg("quadrant %d channel %u: %u over black, expected %u", q, k,
                         pt_px(&out, qx[q], 24, k), want[q][k]);
    pt_img_free(&out);
    ap_prep_result_release(&r);
}

/* ---- hashes and the result ------------------------------------------------------------------ */

static void test_prep__sha256_and_hashes_of_output(void **state)
{
    (void)state;
    size_t len;
    uint8_t *png = synth(500, 300, 3, AP_ENC_PNG, &len);
    ap_prep_opts o;
    ap_prep_result r;
    ap_prep_opts_init(&o);
    o.encoding = AP_ENC_PNG;
    o.max_edge = 200;
    prep_ok(png, len, &o, &r);

    /* SHA-256 of the output bytes, computed independently with OpenSSL. */
    uint8_t md[32];
    unsigned mdlen = 0;
    assert_int_equal(EVP_Digest(r.out, r.out_len, md, &mdlen, EVP_sha256(), NULL), 1);
    assert_int_equal(mdlen, 32);
    assert_memory_equal(r.sha256, md, 32);
    char hex[65];
    for (int i = 0; i < 32; i++)
        pt_fmt(hex + 2 * i, 3, "%02x", md[i]);
    assert_string_equal(r.sha256_hex, hex);

    /* pHash/dHash are of the output pixels: rehash the decoded PNG. */
    struct pt_img out = {0};
    assert_true(pt_decode_png(r.out, r.out_len, &out));
    uint64_t ph = 0, dh = 0;
    ap_error err = {0};
    assert_int_equal(
        ap_hash_image(out.px, out.w, out.h, (size_t)out.w * out.ch, out.ch, &ph, &dh, &err), AP_OK);
    assert_true(ph == r.phash);
    assert_true(dh == r.dhash);
    assert_true(r.phash != 0 || r.dhash != 0);
    pt_img_free(&out);
    ap_prep_result_release(&r);

    /* no_hash: SHA-256 still, perceptual hashes not. */
    o.no_hash = true;
    prep_ok(png, len, &o, &r);
    assert_true(r.phash == 0 && r.dhash == 0);
    assert_int_equal(strlen(r.sha256_hex), 64);
    ap_prep_result_release(&r);
    free(png);
}

static void test_prep__arguments_and_release(void **state)
{
    (void)state;
    size_t len;
    uint8_t *png = synth(120, 110, 3, AP_ENC_PNG, &len);
    ap_prep_result r;
    ap_error err = {0};
    assert_int_equal(ap_prep(png, len, NULL, NULL, &err), AP_EINVAL);
    assert_int_equal(ap_prep(NULL, 10, NULL, &r, &err), AP_EINVAL);
    /* NULL opts: the defaults; NULL err is allowed. */
    assert_int_equal(ap_prep(png, len, NULL, &r, NULL), AP_OK);
    assert_int_equal(r.out_width, 120);
    assert_int_equal(r.in_width, 120);
    assert_int_equal(r.in_height, 110);
    assert_int_equal(r.orientation, 1);
    assert_int_equal(r.out_channels, 3);
    assert_false(r.had_alpha);
    ap_prep_result_release(&r);
    assert_null(r.out);
    ap_prep_result_release(&r); /* twice is harmless */
    ap_prep_result_release(NULL);
    /* A failure leaves nothing to release and says why. */
    ap_error_clear(&err);
    ap_status st = ap_prep(png, 20, NULL, &r, &err);
    if (st != AP_EDECODE)
        fail_msg("20 bytes of a PNG: %s \"%s\", expected AP_EDECODE", ap_strerror(st), err.msg);
    if (err.code != AP_EDECODE || err.msg[0] == '\0')
        fail_msg("returned AP_EDECODE but ap_error is %s \"%s\"", ap_strerror(err.code), err.msg);
    assert_null(r.out);
    free(png);
}

/* ---- base64 ---------------------------------------------------------------------------------- */

static void test_prep__base64_rfc4648_vectors(void **state)
{
    (void)state;
    /* RFC 4648 section 10. */
    static const char *const vec[][2] = {{"", ""},
                                         {"f", "Zg=="},
                                         {"fo", "Zm8="},
                                         {"foo", "Zm9v"},
                                         {"foob", "Zm9vYg=="},
                                         {"fooba", "Zm9vYmE="},
                                         {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < sizeof(vec) / sizeof(vec[0]); i++) {
        char *b = ap_base64_encode((const uint8_t *)vec[i][0], strlen(vec[i][0]));
        assert_non_null(b);
        assert_string_equal(b, vec[i][1]);
        free(b);
    }
    /* High bytes use the standard alphabet's '+' and '/'. */
    static const uint8_t hi[] = {0xFB, 0xFF, 0xBF};
    char *b = ap_base64_encode(hi, 3);
    assert_string_equal(b, "+/+/");
    free(b);
    b = ap_base64_encode(NULL, 0);
    assert_non_null(b);
    assert_string_equal(b, "");
    free(b);
    /* A whole output round-trips through OpenSSL's decoder. */
    size_t len;
    uint8_t *png = synth(50, 40, 3, AP_ENC_PNG, &len);
    b = ap_base64_encode(png, len);
    assert_non_null(b);
    assert_int_equal(strlen(b), (len + 2) / 3 * 4);
    uint8_t *dec = malloc(strlen(b));
    assert_non_null(dec);
    int n = EVP_DecodeBlock(dec, (const unsigned char *)b, (int)strlen(b));
    assert_true(n >= (int)len);
    assert_memory_equal(dec, png, len);
    free(dec);
    free(b);
    free(png);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prep__opts_defaults),
        cmocka_unit_test(test_prep__targets_names),
        cmocka_unit_test(test_prep__targets_geometry),
        cmocka_unit_test(test_prep__never_upscales),
        cmocka_unit_test(test_prep__trim_removes_uniform_margins),
        cmocka_unit_test(test_prep__gray_option_gives_one_channel),
        cmocka_unit_test(test_prep__grayscale_input_stays_gray),
        cmocka_unit_test(test_prep__encodings_and_media_types),
        cmocka_unit_test(test_prep__quality),
        cmocka_unit_test(test_prep__max_input_bytes),
        cmocka_unit_test(test_prep__max_pixels),
        cmocka_unit_test(test_prep__min_side),
        cmocka_unit_test(test_prep__warn_small),
        cmocka_unit_test(test_prep__background_option),
        cmocka_unit_test(test_prep__sha256_and_hashes_of_output),
        cmocka_unit_test(test_prep__arguments_and_release),
        cmocka_unit_test(test_prep__base64_rfc4648_vectors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
