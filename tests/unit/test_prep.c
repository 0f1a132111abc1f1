/*
 * test_prep.c - ap_prep() options and contract: geometry presets, never upscaling, trim, gray,
 * encodings and quality, the byte/pixel/side limits, warnings, hashes of the output, base64;
 * and ap_prep_probe(): the header alone, against what ap_prep() makes of the same corpus files.
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

/* ---- ap_prep_probe ------------------------------------------------------------------------- */

/*
 * Probe a corpus file and compare with what ap_prep() (target "none": the displayed image at
 * full size) makes of it. When ap_prep succeeds, the probe must too, with the same format,
 * displayed size and orientation. When ap_prep fails the probe may still succeed (it reads the
 * header only: a file cut in its pixel data, or a bomb ap_prep refuses by limit), but must
 * fail cleanly otherwise. Returns the probe's status; *pi is filled on AP_OK.
 */
static ap_status probe_vs_prep(const char *rel, int *nfail, ap_probe_info *pi)
{
    size_t len = 0;
    uint8_t *in = pt_read_corpus(rel, &len);
    ap_prep_opts o;
    ap_prep_opts_init(&o);
    assert_int_equal(ap_prep_opts_target(&o, "none"), AP_OK);
    o.no_hash = true;
    ap_prep_result r;
    ap_error err = {0}, perr = {0};
    ap_status st = ap_prep(in, len, &o, &r, &err);
    memset(pi, 0, sizeof(*pi));
    ap_status pst = ap_prep_probe(in, len, pi, &perr);

    if (pst != AP_OK && (perr.code != pst || perr.msg[0] == '\0'))
        PT_FAIL(*nfail, rel, "probe returned %s but its error says %s \"%s\"", ap_strerror(pst),
                ap_strerror(perr.code), perr.msg);
    if (pst == AP_OK && perr.code != AP_OK)
        PT_FAIL(*nfail, rel, "probe succeeded but left an error: \"%s\"", perr.msg);
    if (st == AP_OK) {
        if (pst != AP_OK)
            PT_FAIL(*nfail, rel, "ap_prep decodes it, the probe says %s: %s", ap_strerror(pst),
                    perr.msg);
        else if (pi->format != r.in_format || pi->width != r.out_width ||
                 pi->height != r.out_height || pi->orientation != r.orientation)
            PT_FAIL(*nfail, rel, "probe %s %ux%u orientation %d, ap_prep %s %ux%u orientation %d",
                    ap_format_name(pi->format), pi->width, pi->height, pi->orientation,
                    ap_format_name(r.in_format), r.out_width, r.out_height, r.orientation);
    } else if (pst != AP_OK && pst != AP_EDECODE && pst != AP_EUNSUPPORTED && pst != AP_ETOOLARGE) {
        PT_FAIL(*nfail, rel, "probe failed with %s: %s", ap_strerror(pst), perr.msg);
    } else if (ap_sniff(in, len) == AP_FORMAT_UNKNOWN && pst != AP_EUNSUPPORTED) {
        PT_FAIL(*nfail, rel, "not an image, yet the probe says %s", ap_strerror(pst));
    }
    if (pst == AP_OK && (pi->width == 0 || pi->height == 0 || pi->orientation < 1 ||
                         pi->orientation > 8 || pi->format != ap_sniff(in, len)))
        PT_FAIL(*nfail, rel, "probe succeeded with %s %ux%u orientation %d",
                ap_format_name(pi->format), pi->width, pi->height, pi->orientation);
    ap_prep_result_release(&r);
    free(in);
    return pst;
}

static void test_prep__probe_synthetic(void **state)
{
    (void)state;
    static const ap_encoding encs[] = {AP_ENC_JPEG, AP_ENC_PNG, AP_ENC_WEBP};
    static const ap_format fmts[] = {AP_FORMAT_JPEG, AP_FORMAT_PNG, AP_FORMAT_WEBP};
    /* Where the header ends: cut anywhere before, the probe must fail. JPEG: libjpeg reads
     * up to the first scan, so the cut is searched for below; PNG: the end of IHDR's data
     * (spng takes an IHDR whose CRC is cut off; the file then fails in ap_prep); WebP (VP8):
     * the frame header with the size. */
    for (size_t e = 0; e < 3; e++) {
        size_t len;
        uint8_t *img = synth(321, 123, 3, encs[e], &len);
        ap_probe_info pi;
        ap_error err = {0};
        memset(&pi, 0x5A, sizeof(pi));
        assert_int_equal(ap_prep_probe(img, len, &pi, &err), AP_OK);
        assert_int_equal(pi.format, fmts[e]);
        assert_int_equal(pi.width, 321);
        assert_int_equal(pi.height, 123);
        assert_int_equal(pi.orientation, 1);
        assert_int_equal(err.code, AP_OK);

        size_t header_end = encs[e] == AP_ENC_PNG ? 29 : encs[e] == AP_ENC_WEBP ? 30 : 0;
        for (size_t i = 2; header_end == 0 && i + 1 < len; i++)
            if (img[i] == 0xFF && img[i + 1] == 0xDA) /* SOS */
                header_end = i;
        assert_true(header_end > 12 && header_end < len);
        for (size_t cut = 0; cut < header_end; cut++) {
            ap_error_clear(&err);
            ap_status st = ap_prep_probe(img, cut, &pi, &err);
            ap_status want = ap_sniff(img, cut) == AP_FORMAT_UNKNOWN ? AP_EUNSUPPORTED : AP_EDECODE;
            if (st != want)
                fail_msg("%s cut to %zu bytes: %s \"%s\", expected %s", ap_format_name(fmts[e]),
                         cut, ap_strerror(st), err.msg, ap_strerror(want));
            assert_int_equal(err.code, want);
        }
        free(img);
    }

    /* Not an image: named by what was sniffed. */
    static const char html[] = "<!DOCTYPE html><html><body>hi</body></html>";
    ap_probe_info pi;
    ap_error err = {0};
    assert_int_equal(ap_prep_probe((const uint8_t *)html, sizeof(html) - 1, &pi, &err),
                     AP_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "html"));
    assert_int_equal(ap_prep_probe((const uint8_t *)"", 0, &pi, &err), AP_EUNSUPPORTED);
    assert_int_equal(ap_prep_probe(NULL, 0, &pi, NULL), AP_EUNSUPPORTED);
    /* Arguments. */
    assert_int_equal(ap_prep_probe(NULL, 10, &pi, &err), AP_EINVAL);
    assert_int_equal(ap_prep_probe((const uint8_t *)html, 10, NULL, &err), AP_EINVAL);
}

static void test_prep__probe_applies_no_limit(void **state)
{
    (void)state;
    size_t len;
    uint8_t *png = synth(300, 200, 3, AP_ENC_PNG, &len);
    ap_prep_opts o;
    ap_prep_opts_init(&o);
    o.max_pixels = 1000;
    o.min_side = 500;
    o.max_input_bytes = 16;
    ap_prep_result r;
    assert_int_equal(ap_prep(png, len, &o, &r, NULL), AP_ETOOLARGE);
    ap_probe_info pi;
    assert_int_equal(ap_prep_probe(png, len, &pi, NULL), AP_OK);
    assert_int_equal(pi.width, 300);
    assert_int_equal(pi.height, 200);
    /* A zero size is still a broken header. Patch IHDR's width (bytes 16..19) to 0: the CRC
     * breaks too, and either way it is AP_EDECODE. */
    memset(png + 16, 0, 4);
    assert_int_equal(ap_prep_probe(png, len, &pi, NULL), AP_EDECODE);
    free(png);
}

static void test_prep__probe_matches_prep_on_formats(void **state)
{
    (void)state;
    struct pt_manifest m;
    pt_manifest_load(&m, "formats", "formats/expected.json");
    int nfail = 0, compared = 0;
    char rel[512];
    for (size_t i = 0; i < m.n; i++) {
        const char *name = pt_col(&m.rows[i], 0), *outcome = pt_col(&m.rows[i], 1);
        if (strncmp(outcome, "decode", 6) != 0 && strcmp(outcome, "reference data / decode") != 0)
            continue; /* reference data, READMEs */
        ap_probe_info pi;
        if (probe_vs_prep(pt_fmt(rel, sizeof(rel), "formats/%s", name), &nfail, &pi) == AP_OK)
            compared++;
    }
    pt_manifest_free(&m);
    if (nfail)
        fail_msg("%d of the formats corpus' files probed wrong", nfail);
    /* The corpus holds some 300 decodable files; a probe that failed them all would not be
     * caught above. */
    assert_true(compared > 250);
}

static void test_prep__probe_orientation(void **state)
{
    (void)state;
    struct pt_manifest m;
    pt_manifest_load(&m, "orientation", "orientation/expected.json");
    int nfail = 0, swapped = 0;
    char rel[512];
    for (size_t i = 0; i < m.n; i++) {
        const struct pt_row *row = &m.rows[i];
        long dw = pt_icol(row, 3), dh = pt_icol(row, 4), o = pt_icol(row, 2);
        pt_fmt(rel, sizeof(rel), "orientation/%s", pt_col(row, 0));
        ap_probe_info pi;
        if (probe_vs_prep(rel, &nfail, &pi) != AP_OK) {
            PT_FAIL(nfail, rel, "probe failed");
            continue;
        }
        if ((long)pi.width != dw || (long)pi.height != dh)
            PT_FAIL(nfail, rel, "probe %ux%u, displayed size is %ldx%ld", pi.width, pi.height, dw,
                    dh);
        /* HEIF/AVIF: the container's transforms are applied, EXIF never (orientation 1). */
        bool heif = pi.format == AP_FORMAT_HEIF || pi.format == AP_FORMAT_AVIF;
        if (!heif && o >= 1 && o <= 8 && pi.orientation != o)
            PT_FAIL(nfail, rel, "orientation %d, EXIF says %ld", pi.orientation, o);
        swapped += pi.orientation >= 5 && pi.width != pi.height;
    }
    pt_manifest_free(&m);
    if (nfail)
        fail_msg("%d orientation files probed wrong", nfail);
    assert_true(swapped >= 10); /* the landscape/portrait 5..8 files were among them */
}

static void test_prep__probe_bombs_report_declared_size(void **state)
{
    (void)state;
    /* Each refused by ap_prep before decoding; the probe reports the size declared. */
    static const struct {
        const char *rel;
        ap_format f;
        uint32_t w, h;
    } bombs[] = {
        {"bad/bombs/jpeg_sof_65500x65500.jpg", AP_FORMAT_JPEG, 65500, 65500},
        {"bad/bombs/png_30000x30000_1bit_valid.png", AP_FORMAT_PNG, 30000, 30000},
        {"bad/bombs/png_65535x65535_rgba_header_only.png", AP_FORMAT_PNG, 65535, 65535},
        {"bad/bombs/gif_65535x65535.gif", AP_FORMAT_GIF, 65535, 65535},
        {"bad/bombs/bmp_50000x50000_24bit_header.bmp", AP_FORMAT_BMP, 50000, 50000},
        {"bad/bombs/bmpsuite_reallybig.bmp", AP_FORMAT_BMP, 3000000, 2000000},
        {"bad/bombs/tiff_100000x100000_deflate.tif", AP_FORMAT_TIFF, 100000, 100000},
        {"bad/bombs/webp_16383x16383_lossless_valid.webp", AP_FORMAT_WEBP, 16383, 16383},
        {"bad/bombs/libvips_17000x17000.avif", AP_FORMAT_AVIF, 17000, 17000},
    };
    int nfail = 0;
    for (size_t i = 0; i < sizeof(bombs) / sizeof(bombs[0]); i++) {
        size_t len;
        uint8_t *in = pt_read_corpus(bombs[i].rel, &len);
        ap_prep_result r;
        ap_status st = ap_prep(in, len, NULL, &r, NULL);
        if (st != AP_ETOOLARGE)
            PT_FAIL(nfail, bombs[i].rel, "ap_prep: %s, expected AP_ETOOLARGE", ap_strerror(st));
        ap_probe_info pi;
        ap_error err = {0};
        st = ap_prep_probe(in, len, &pi, &err);
        if (st != AP_OK)
            PT_FAIL(nfail, bombs[i].rel, "probe: %s %s", ap_strerror(st), err.msg);
        else if (pi.format != bombs[i].f || pi.width != bombs[i].w || pi.height != bombs[i].h)
            PT_FAIL(nfail, bombs[i].rel, "probe: %s %ux%u, declared %s %ux%u",
                    ap_format_name(pi.format), pi.width, pi.height, ap_format_name(bombs[i].f),
                    bombs[i].w, bombs[i].h);
        free(in);
    }
    if (nfail)
        fail_msg("%d bombs probed wrong", nfail);
}

static void test_prep__probe_bad_files_fail_cleanly(void **state)
{
    (void)state;
    struct pt_manifest m;
    pt_manifest_load(&m, "bad", "bad/expected.json");
    int nfail = 0, refused = 0;
    char rel[512];
    for (size_t i = 0; i < m.n; i++) {
        ap_probe_info pi;
        if (probe_vs_prep(pt_fmt(rel, sizeof(rel), "bad/%s", pt_col(&m.rows[i], 0)), &nfail, &pi) !=
            AP_OK)
            refused++;
    }
    pt_manifest_free(&m);
    if (nfail)
        fail_msg("%d of the bad corpus' files probed wrong", nfail);
    assert_true(refused > 40); /* broken headers, non-images */
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
        cmocka_unit_test(test_prep__probe_synthetic),
        cmocka_unit_test(test_prep__probe_applies_no_limit),
        cmocka_unit_test(test_prep__probe_matches_prep_on_formats),
        cmocka_unit_test(test_prep__probe_orientation),
        cmocka_unit_test(test_prep__probe_bombs_report_declared_size),
        cmocka_unit_test(test_prep__probe_bad_files_fail_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
