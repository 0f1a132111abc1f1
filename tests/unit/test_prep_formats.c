/*
 * test_prep_formats.c - every format in the corpus decodes through ap_prep() (formats/).
 *
 * Driven by formats/expected.json (flattened at test time by tests/tools/prep_ref.py):
 *   - every "decode" file returns AP_OK, is sniffed as its magic says, and comes out at
 *     after_resize_max1568_wh (+/-1 px) as a JPEG holding nothing but JFIF, tables and pixels
 *     (no EXIF/XMP/comment of the input can survive); gray inputs stay 1-channel;
 *   - "decode_or_clean_reject" files either decode or fail with AP_EDECODE / AP_EUNSUPPORTED;
 *   - the manifest's pixel checks (_checks): each crafted file decoded at full size against the
 *     lossless reference (decoded by Pillow), within the MAE the corpus measured + 0.5 (its own
 *     tolerance: "a correct decoder should be within ~0.5 of these"), exact where lossless;
 *   - alpha charts flattened onto white match expected_flattened_on_white.png;
 *   - animated / multi-page inputs give their first frame (against Pillow's first frame).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "prep_testutil.h"

/* Outcomes in formats/expected.json. */
static bool must_decode(const char *outcome)
{
    return strncmp(outcome, "decode", 6) == 0 &&
           strncmp(outcome, "decode_or_clean_reject", 22) != 0;
}

static bool is_gray_mode(const char *mode)
{
    return strcmp(mode, "L") == 0 || strcmp(mode, "LA") == 0 || strcmp(mode, "1") == 0 ||
           strcmp(mode, "I") == 0 || strcmp(mode, "I;16") == 0;
}

/* A PNG whose IHDR colour type is gray (0) or gray + alpha (4). */
static bool png_gray(const uint8_t *in, size_t len)
{
    return len > 25 && memcmp(in, "\x89PNG\r\n\x1A\n", 8) == 0 && memcmp(in + 12, "IHDR", 4) == 0 &&
           (in[25] == 0 || in[25] == 4);
}

/* A JPEG that starts with SOI and ends with EOI. */
static bool jpeg_framed(const ap_prep_result *r)
{
    return r->out_len > 4 && r->out[0] == 0xFF && r->out[1] == 0xD8 &&
           r->out[r->out_len - 2] == 0xFF && r->out[r->out_len - 1] == 0xD9;
}

static void test_prep__formats_every_file_decodes(void **state)
{
    (void)state;
    struct pt_manifest m;
    pt_manifest_load(&m, "formats", "formats/expected.json");
    int nfail = 0, ndecode = 0, noptional = 0;
    char rel[512];

    for (size_t i = 0; i < m.n; i++) {
        const struct pt_row *row = &m.rows[i];
        const char *name = pt_col(row, 0), *outcome = pt_col(row, 1), *magic = pt_col(row, 2),
                   *mode = pt_col(row, 3);
        long ew = pt_icol(row, 4), eh = pt_icol(row, 5);
        bool optional = strcmp(outcome, "decode_or_clean_reject") == 0;
        bool required = must_decode(outcome) || strcmp(outcome, "reference data / decode") == 0;
        if (!optional && !required)
            continue; /* reference data, READMEs */
        pt_fmt(rel, sizeof(rel), "formats/%s", name);

        ap_prep_opts o;
        ap_prep_result r;
        ap_error err;
        ap_prep_opts_init(&o);
        uint8_t *in = NULL;
        size_t in_len = 0;
        ap_status st = pt_prep_corpus(rel, &o, &r, &err, &in, &in_len);
        if (optional) {
            noptional++;
            if (st != AP_OK && st != AP_EDECODE && st != AP_EUNSUPPORTED)
                PT_FAIL(nfail, rel, "decode_or_clean_reject gave %s (%s)", ap_strerror(st),
                        err.msg);
            if (st != AP_OK) {
                if (r.out != NULL || r.out_len != 0)
                    PT_FAIL(nfail, rel, "failed but left output in the result");
                free(in);
                continue;
            }
        } else {
            ndecode++;
            if (st != AP_OK) {
                PT_FAIL(nfail, rel, "expected AP_OK, got %s: %s", ap_strerror(st), err.msg);
                free(in);
                continue;
            }
        }
        ap_format want = pt_format_of_magic(magic);
        if (r.in_format != want)
            PT_FAIL(nfail, rel, "sniffed %s, magic says %s", ap_format_name(r.in_format), magic);
        if (ew > 0 && (!pt_near(r.out_width, ew, 1) || !pt_near(r.out_height, eh, 1)))
            PT_FAIL(nfail, rel, "output %ux%u, expected %ldx%ld (+/-1)", r.out_width, r.out_height,
                    ew, eh);
        if (ew <= 0 &&
            (r.out_width == 0 || r.out_height == 0 || r.out_width > 1568 || r.out_height > 1568))
            PT_FAIL(nfail, rel, "output %ux%u outside 1..1568", r.out_width, r.out_height);
        char why[160];
        const char *unclean = pt_jpeg_clean(r.out, r.out_len, why, sizeof(why));
        if (!jpeg_framed(&r) || strcmp(r.out_media_type, "image/jpeg") != 0)
            PT_FAIL(nfail, rel, "output is not a complete JPEG (%zu bytes, %s)", r.out_len,
                    r.out_media_type ? r.out_media_type : "(null)");
        else if (unclean != NULL)
            PT_FAIL(nfail, rel, "output JPEG carries more than pixels: %s", unclean);
        /* Pillow calls 16-bit gray+alpha PNGs "RGBA"; the PNG header knows better. */
        bool gray = is_gray_mode(mode) || png_gray(in, in_len);
        if (gray && r.out_channels != 1)
            PT_FAIL(nfail, rel, "gray input (mode %s) came out with %u channels", mode,
                    r.out_channels);
        if (!gray && strcmp(mode, "-") != 0 && strcmp(mode, "P") != 0 && r.out_channels != 3)
            PT_FAIL(nfail, rel, "colour input (mode %s) came out with %u channels", mode,
                    r.out_channels);
        if (strlen(r.sha256_hex) != 64 || r.in_bytes != in_len)
            PT_FAIL(nfail, rel, "result fields not filled (sha256 \"%s\")", r.sha256_hex);
        ap_prep_result_release(&r);
        free(in);
    }
    print_message("formats: %d must-decode files, %d optional, %d failures\n", ndecode, noptional,
                  nfail);
    pt_manifest_free(&m);
    assert_true(ndecode >= 300); /* the manifest really was read */
    assert_int_equal(nfail, 0);
}

/* The manifest's pixel checks: full-size decode against the lossless reference picture. */
static void test_prep__formats_pixels_match_reference(void **state)
{
    (void)state;
    struct pt_manifest m;
    pt_manifest_load(&m, "checks", "formats/expected.json");
    int nfail = 0;
    char spec_rgb[1024], spec_gray[1024];
    pt_fmt(spec_rgb, sizeof(spec_rgb), "pilraw|%s/formats/jpeg/crafted/reference_1024x683.png|0|0",
           AP_CORPUS);
    pt_fmt(spec_gray, sizeof(spec_gray),
           "pilgray|%s/formats/jpeg/crafted/reference_1024x683.png|0|0", AP_CORPUS);
    const char *specs[] = {spec_rgb, spec_gray};
    struct pt_img refs[2];
    assert_int_equal(pt_refs(specs, 2, refs), 2);
    assert_int_equal(refs[0].w, 1024);
    assert_int_equal(refs[0].h, 683);

    for (size_t i = 0; i < m.n; i++) {
        const struct pt_row *row = &m.rows[i];
        const char *name = pt_col(row, 0), *how = pt_col(row, 3);
        double max_mae = strtod(pt_col(row, 2), NULL);
        char rel[512];
        pt_fmt(rel, sizeof(rel), "formats/%s", name);
        struct pt_img ours = {0};
        if (!pt_pixels_of(rel, &ours, NULL)) {
            PT_FAIL(nfail, rel, "does not decode");
            continue;
        }
        const struct pt_img *ref = strcmp(how, "gray") == 0 ? &refs[1] : &refs[0];
        double mae;
        if (strcmp(how, "crop") == 0)
            mae = pt_mae_region(&ours, ref, ours.w, ours.h);
        else
            mae = pt_mae(&ours, ref);
        /* Lossless files must be exact; lossy ones within the corpus' own +0.5. */
        double limit = max_mae == 0 ? 0 : max_mae + 0.5;
        print_message("  %-48s MAE %.3f (corpus %.2f, limit %.2f)\n", name, mae, max_mae, limit);
        if (mae < 0)
            PT_FAIL(nfail, rel, "size %ux%u does not match the reference", ours.w, ours.h);
        else if (mae > limit)
            PT_FAIL(nfail, rel, "MAE %.3f against the reference, limit %.2f", mae, limit);
        if (strcmp(how, "gray") == 0 && ours.ch != 1)
            PT_FAIL(nfail, rel, "gray JPEG came out with %u channels", ours.ch);
        pt_img_free(&ours);
    }
    pt_img_free(&refs[0]);
    pt_img_free(&refs[1]);
    pt_manifest_free(&m);
    assert_int_equal(nfail, 0);
}

/* PNG as input: our full-size decode of the reference equals Pillow's, bit for bit. */
static void test_prep__formats_png_roundtrip_exact(void **state)
{
    (void)state;
    char spec[1024];
    pt_fmt(spec, sizeof(spec), "pilraw|%s/formats/jpeg/crafted/reference_1024x683.png|0|0",
           AP_CORPUS);
    const char *specs[] = {spec};
    struct pt_img ref = {0}, ours = {0};
    assert_int_equal(pt_refs(specs, 1, &ref), 1);
    assert_true(pt_pixels_of("formats/jpeg/crafted/reference_1024x683.png", &ours, NULL));
    assert_int_equal(ours.w, 1024);
    assert_int_equal(ours.h, 683);
    assert_int_equal(ours.ch, 3);
    assert_true(pt_mae(&ours, &ref) == 0.0);
    pt_img_free(&ref);
    pt_img_free(&ours);
}

/* ---- alpha ------------------------------------------------------------------------------- */

struct alpha_case {
    const char *file;
    int tol;   /* per-sample tolerance at the probe points */
    bool ramp; /* has the ramp row (256x64) */
};

static void test_prep__formats_alpha_flattened_on_white(void **state)
{
    (void)state;
    /* formats/expected.json _checks.alpha_expected, and MANIFEST.md: "+/-1, lossy HEIC +/-2". */
    static const struct alpha_case cases[] = {
        {"formats/alpha/alpha_chart_rgba8.png", 1, true},
        {"formats/alpha/alpha_chart_rgba16.png", 1, true},
        {"formats/alpha/alpha_chart.tif", 1, true},
        {"formats/alpha/alpha_chart_associated_premultiplied.tif", 1, true},
        {"formats/alpha/alpha_chart.webp", 1, true},
        {"formats/alpha/alpha_chart_lossless.avif", 1, true},
        {"formats/alpha/alpha_chart.heic", 2, true},
        {"formats/alpha/alpha_chart_palette_trns.png", 1, false},
    };
    static const uint8_t quad[4][3] = {
        {255, 255, 255}, {127, 127, 127}, {191, 255, 191}, {0, 0, 255}};
    static const uint32_t quad_x[4] = {32, 96, 160, 224};
    static const uint32_t ramp_x[5] = {0, 64, 128, 192, 255};
    static const uint8_t ramp[5] = {255, 191, 127, 63, 0};
    struct pt_img expect = {0};
    size_t len;
    uint8_t *png = pt_read_corpus("formats/alpha/expected_flattened_on_white.png", &len);
    assert_true(pt_decode_png(png, len, &expect));
    free(png);
    assert_int_equal(expect.w, 256);
    assert_int_equal(expect.h, 64);
    int nfail = 0;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct alpha_case *c = &cases[i];
        struct pt_img ours = {0};
        ap_prep_result r;
        if (!pt_pixels_of(c->file, &ours, &r)) {
            PT_FAIL(nfail, c->file, "does not decode");
            continue;
        }
        if (!r.had_alpha)
            PT_FAIL(nfail, c->file, "had_alpha not set");
        uint32_t want_h = c->ramp ? 64 : 48;
        if (ours.w != 256 || ours.h != want_h) {
            PT_FAIL(nfail, c->file, "size %ux%u, expected 256x%u", ours.w, ours.h, want_h);
            pt_img_free(&ours);
            continue;
        }
        double mae = pt_mae_region(&ours, &expect, 256, want_h);
        print_message("  %-58s MAE %.3f vs expected_flattened_on_white\n", c->file, mae);
        if (mae >= 3.0)
            PT_FAIL(nfail, c->file, "MAE %.3f vs expected_flattened_on_white.png (limit 3)", mae);
        for (int q = 0; q < 4; q++)
            for (unsigned k = 0; k < 3; k++) {
                int v = (int)pt_px(&ours, quad_x[q], 24, k);
                if (abs(v - quad[q][k]) > c->tol)
                    PT_FAIL(nfail, c->file, "quadrant %d channel %u is %d, expected %d", q, k, v,
                            quad[q][k]);
            }
        for (int j = 0; c->ramp && j < 5; j++)
            for (unsigned k = 0; k < 3; k++) {
                int v = (int)pt_px(&ours, ramp_x[j], 56, k);
                if (abs(v - ramp[j]) > c->tol)
                    PT_FAIL(nfail, c->file, "ramp x=%u channel %u is %d, expected %d", ramp_x[j], k,
                            v, ramp[j]);
            }
        pt_img_free(&ours);
    }

    /* Gray + alpha stays gray; quadrants are the luma of the colours, flattened. */
    {
        static const uint8_t gq[4] = {255, 127, 229, 29};
        struct pt_img g = {0};
        const char *f = "formats/alpha/alpha_chart_gray_alpha.png";
        if (!pt_pixels_of(f, &g, NULL)) {
            PT_FAIL(nfail, f, "does not decode");
        } else {
            if (g.ch != 1)
                PT_FAIL(nfail, f, "came out with %u channels, expected 1", g.ch);
            for (int q = 0; q < 4 && g.w == 256 && g.h == 64; q++) {
                int v = (int)pt_px(&g, quad_x[q], 24, 0);
                if (abs(v - gq[q]) > 1)
                    PT_FAIL(nfail, f, "quadrant %d is %d, expected %d", q, v, gq[q]);
            }
            if (g.w != 256 || g.h != 64)
                PT_FAIL(nfail, f, "size %ux%u", g.w, g.h);
            pt_img_free(&g);
        }
    }

    /* Binary (GIF) transparency: only quadrant 0 is transparent; compare with Pillow too. */
    {
        const char *f = "formats/alpha/alpha_chart_binary.gif";
        char spec[1024];
        pt_fmt(spec, sizeof(spec), "pilraw|%s/%s|0|0", AP_CORPUS, f);
        const char *specs[] = {spec};
        struct pt_img ref = {0}, ours = {0};
        static const uint8_t bq[4][3] = {{255, 255, 255}, {0, 0, 0}, {0, 255, 0}, {0, 0, 255}};
        if (pt_refs(specs, 1, &ref) != 1 || !pt_pixels_of(f, &ours, NULL)) {
            PT_FAIL(nfail, f, "no reference or does not decode");
        } else {
            double mae = pt_mae(&ours, &ref);
            if (mae < 0 || mae > 0.5)
                PT_FAIL(nfail, f, "MAE %.3f vs Pillow flattened on white (limit 0.5)", mae);
            for (int q = 0; q < 4 && ours.h == 48; q++)
                for (unsigned k = 0; k < 3; k++)
                    if (pt_px(&ours, quad_x[q], 24, k) != bq[q][k])
                        PT_FAIL(nfail, f, "quadrant %d channel %u is %u, expected %u", q, k,
                                pt_px(&ours, quad_x[q], 24, k), bq[q][k]);
        }
        pt_img_free(&ref);
        pt_img_free(&ours);
    }
    pt_img_free(&expect);
    assert_int_equal(nfail, 0);
}

/* ---- first frame ------------------------------------------------------------------------- */

/*
 * Animated GIF/WebP/APNG and multi-page TIFF: the first frame, as Pillow shows it (flattened onto
 * white), and AP_WARN_MULTI_FRAME set. MPO / Ultra HDR JPEGs count their secondary images as
 * frames in the manifest, but a JPEG decoder sees one image: no warning required there.
 */
static void test_prep__formats_first_frame(void **state)
{
    (void)state;
    struct pt_manifest m;
    pt_manifest_load(&m, "formats", "formats/expected.json");
    const char *files[64];
    char *specs[64] = {0};
    size_t n = 0;
    for (size_t i = 0; i < m.n && n < 64; i++) {
        const struct pt_row *row = &m.rows[i];
        const char *magic = pt_col(row, 2);
        if (!must_decode(pt_col(row, 1)) || pt_icol(row, 7) <= 1 || strcmp(magic, "jpeg") == 0)
            continue;
        files[n] = pt_col(row, 0);
        specs[n] = malloc(1024);
        assert_non_null(specs[n]);
        pt_fmt(specs[n], 1024, "pilraw|%s/formats/%s|0|0", AP_CORPUS, files[n]);
        n++;
    }
    assert_true(n >= 10);
    struct pt_img *refs = calloc(n, sizeof(*refs));
    assert_non_null(refs);
    pt_refs((const char *const *)specs, n, refs);
    int nfail = 0;
    for (size_t i = 0; i < n; i++) {
        char rel[512];
        pt_fmt(rel, sizeof(rel), "formats/%s", files[i]);
        struct pt_img ours = {0};
        ap_prep_result r;
        if (!pt_pixels_of(rel, &ours, &r)) {
            PT_FAIL(nfail, rel, "does not decode");
        } else {
            double mae = refs[i].px ? pt_mae(&ours, &refs[i]) : -2;
            print_message("  %-44s first frame MAE %.3f vs Pillow\n", files[i], mae);
            if (refs[i].px == NULL)
                PT_FAIL(nfail, rel, "Pillow could not make a reference");
            else if (mae < 0 || mae > 3.0)
                PT_FAIL(nfail, rel, "first frame MAE %.3f vs Pillow's (limit 3), %ux%u vs %ux%u",
                        mae, ours.w, ours.h, refs[i].w, refs[i].h);
            if (!(r.warnings & AP_WARN_MULTI_FRAME))
                PT_FAIL(nfail, rel, "AP_WARN_MULTI_FRAME not set (warnings 0x%x)", r.warnings);
            pt_img_free(&ours);
        }
        pt_img_free(&refs[i]);
        free(specs[i]);
    }
    free(refs);
    pt_manifest_free(&m);
    assert_int_equal(nfail, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prep__formats_every_file_decodes),
        cmocka_unit_test(test_prep__formats_pixels_match_reference),
        cmocka_unit_test(test_prep__formats_png_roundtrip_exact),
        cmocka_unit_test(test_prep__formats_alpha_flattened_on_white),
        cmocka_unit_test(test_prep__formats_first_frame),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
