/*
 * test_prep_color.c - ICC-tagged and CMYK inputs come out with the right sRGB colours.
 *
 * References are made at test time by other tools:
 *   - ICC: the embedded profile applied with relative colorimetric intent by Pillow's ImageCms
 *     (its own lcms2 call), or by libvips `icc_transform --embedded --intent relative` for the
 *     HEIF/AVIF files Pillow cannot open (libvips 8.14 silently skips LUT-based profiles such as
 *     sample-xyb.jpg's, so it is not the first choice); and for the crafted files, the sRGB
 *     originals the corpus ships;
 *   - CMYK: Pillow's convert("RGB") (the plain, profile-less inversion every CMYK file in the
 *     corpus was written with: the manifest measures cmyk_adobe.jpg against the RGB original at
 *     MAE 1.14 that way), and the RGB twins the corpus ships (pil_sample_rgb.jpg,
 *     reference_1024x683.png).
 *
 * Metric: CIE76 colour difference between the mean CIELAB colour of our output and of the
 * reference, both at the same size (ours at thumbnail size, the reference resized to it).
 * Threshold DE76 < 2.0: about 2.3 is the usual "just noticeable difference", so a mean shift
 * below it is invisible. Measured when the profile is honoured: 0.00-0.10 against the lcms
 * references, under 0.5 against the corpus' sRGB originals. Measured with the profile ignored
 * (the failure guarded against): 2.2-3.5 on the charts, 6-17 on the Adobe RGB, ProPhoto,
 * Rec.2020, ColorMatch and XYB files - but only ~1 on the crafted Display P3 photos, whose mean
 * colour hardly moves; so icc_converted is asserted too, and the charts are checked patch by
 * patch: DE76 < 3 from the sRGB value the manifest gives (an ignored profile is off by 10-40 on
 * the saturated patches), and for the lossless (PNG) charts within +/-3 per channel, the
 * manifest's own tolerance. CMYK decoded with the wrong polarity is off by 38-64.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "prep_testutil.h"

#define MEAN_DE_LIMIT  2.0
#define PATCH_DE_LIMIT 3.0
#define CMP_TARGET     "thumbnail"

/* Profiles our pipeline rightly treats as sRGB (no conversion needed). */
static bool is_srgb_profile(const char *desc)
{
    return strncmp(desc, "sRGB", 4) == 0;
}

struct color_case {
    char rel[512];
    char spec[1200];
    char icc[96];
    struct pt_img ours;
    ap_prep_result res;
    bool ok;
};

/* Run ours at CMP_TARGET, then build "op|file|w|h" for the reference at our size. */
static void prepare(struct color_case *c, const char *rel, const char *op, const char *ref_rel)
{
    pt_fmt(c->rel, sizeof(c->rel), "%s", rel);
    c->ok = pt_pixels_at(rel, CMP_TARGET, &c->ours, &c->res);
    pt_fmt(c->spec, sizeof(c->spec), "%s|%s/%s|%u|%u", op, AP_CORPUS, ref_rel ? ref_rel : rel,
           c->ok ? c->ours.w : 0, c->ok ? c->ours.h : 0);
}

/* Mean-Lab comparison; returns the DE76 (or -1 on size mismatch). */
static double mean_de(const struct pt_img *a, const struct pt_img *b)
{
    if (a->w != b->w || a->h != b->h)
        return -1;
    double la[3], lb[3];
    pt_mean_lab(a, la);
    pt_mean_lab(b, lb);
    return pt_de76(la, lb);
}

static void test_prep__color_icc_matches_lcms_reference(void **state)
{
    (void)state;
    struct pt_manifest m;
    pt_manifest_load(&m, "formats", "formats/expected.json");
    struct color_case *cases = calloc(m.n, sizeof(*cases));
    const char **specs = calloc(m.n, sizeof(*specs));
    struct pt_img *refs = calloc(m.n, sizeof(*refs));
    assert_non_null(cases);
    assert_non_null(specs);
    assert_non_null(refs);
    size_t n = 0;
    int nfail = 0;
    for (size_t i = 0; i < m.n; i++) {
        const struct pt_row *row = &m.rows[i];
        const char *outcome = pt_col(row, 1), *icc = pt_col(row, 6);
        if (strcmp(icc, "-") == 0 || strncmp(outcome, "decode", 6) != 0 ||
            strcmp(outcome, "decode_or_clean_reject") == 0)
            continue;
        char rel[512];
        pt_fmt(rel, sizeof(rel), "formats/%s", pt_col(row, 0));
        prepare(&cases[n], rel, "icc", NULL);
        pt_fmt(cases[n].icc, sizeof(cases[n].icc), "%s", icc);
        specs[n] = cases[n].spec;
        n++;
    }
    assert_true(n >= 25);
    pt_refs(specs, n, refs);

    for (size_t i = 0; i < n; i++) {
        struct color_case *c = &cases[i];
        if (!c->ok) {
            PT_FAIL(nfail, c->rel, "does not decode");
            continue;
        }
        if (!(c->res.meta_removed & AP_META_ICC))
            PT_FAIL(nfail, c->rel, "AP_META_ICC not set for a profile \"%s\"", c->icc);
        if (!is_srgb_profile(c->icc) && !c->res.icc_converted)
            PT_FAIL(nfail, c->rel, "profile \"%s\" not converted (warnings 0x%x, desc \"%s\")",
                    c->icc, c->res.warnings, c->res.icc_description);
        if (refs[i].px == NULL) {
            PT_FAIL(nfail, c->rel, "Pillow/libvips could not make a reference");
            continue;
        }
        double de = mean_de(&c->ours, &refs[i]), mae = pt_mae(&c->ours, &refs[i]);
        print_message("  %-52s %-22.22s mean DE76 %5.2f  MAE %5.2f\n", c->rel, c->icc, de, mae);
        if (de < 0 || de >= MEAN_DE_LIMIT)
            PT_FAIL(nfail, c->rel, "mean colour DE76 %.2f vs %s (limit %.1f)", de, c->spec,
                    MEAN_DE_LIMIT);
    }
    for (size_t i = 0; i < n; i++) {
        pt_img_free(&cases[i].ours);
        pt_img_free(&refs[i]);
    }
    free(cases);
    free(specs);
    free(refs);
    pt_manifest_free(&m);
    assert_int_equal(nfail, 0);
}

/* The colour charts: every patch lands on its sRGB value once the profile is honoured. */
static void test_prep__color_chart_patches(void **state)
{
    (void)state;
    static const char *const charts[] = {
        "formats/icc/crafted/chart_srgb.png",
        "formats/icc/crafted/chart_displayp3.png",
        "formats/icc/crafted/chart_adobergb.png",
        "formats/icc/crafted/chart_displayp3_q95_444.jpg",
        "formats/icc/crafted/chart_adobergb_q95_444.jpg",
    };
    struct pt_manifest patches;
    pt_manifest_load(&patches, "chart", "formats/expected.json");
    assert_int_equal(patches.n, 18);
    int nfail = 0;
    for (size_t i = 0; i < sizeof(charts) / sizeof(charts[0]); i++) {
        struct pt_img im = {0};
        if (!pt_pixels_of(charts[i], &im, NULL)) {
            PT_FAIL(nfail, charts[i], "does not decode");
            continue;
        }
        if (im.w != 384 || im.h != 192) {
            PT_FAIL(nfail, charts[i], "size %ux%u, expected 384x192", im.w, im.h);
            pt_img_free(&im);
            continue;
        }
        double worst = 0;
        for (size_t p = 0; p < patches.n; p++) {
            long x = pt_icol(&patches.rows[p], 1), y = pt_icol(&patches.rows[p], 2);
            unsigned long hex = strtoul(pt_col(&patches.rows[p], 3), NULL, 16);
            int want[3] = {(int)(hex >> 16) & 255, (int)(hex >> 8) & 255, (int)hex & 255};
            /* Mean of the 9x9 block at the centre: JPEG noise averages out, edges are far. */
            double got[3] = {0, 0, 0};
            for (long dy = -4; dy <= 4; dy++)
                for (long dx = -4; dx <= 4; dx++)
                    for (unsigned k = 0; k < 3; k++)
                        got[k] += pt_px(&im, (uint32_t)(x + dx), (uint32_t)(y + dy), k) / 81.0;
            double lg[3], lw[3];
            pt_srgb_to_lab(got[0], got[1], got[2], lg);
            pt_srgb_to_lab(want[0], want[1], want[2], lw);
            double de = pt_de76(lg, lw);
            worst = de > worst ? de : worst;
            /* The block mean, rounded as an 8-bit output value would be; PNG charts only: the
             * q95 JPEGs' own quantisation already moves a patch by 4 (patch 13 of the P3 chart
             * converts to 28,160,64 in Pillow, libvips and lcms alike), so they get DE76 only. */
            bool lossless = strstr(charts[i], ".png") != NULL;
            for (unsigned k = 0; k < 3 && lossless; k++)
                if (labs(lround(got[k]) - want[k]) > 3) {
                    PT_FAIL(nfail, charts[i],
                            "patch %zu (%ld,%ld) is %.1f,%.1f,%.1f, expected #%06lx (+/-3)", p, x,
                            y, got[0], got[1], got[2], hex);
                    break;
                }
            if (de >= PATCH_DE_LIMIT)
                PT_FAIL(nfail, charts[i], "patch %zu DE76 %.2f (limit %.1f)", p, de,
                        PATCH_DE_LIMIT);
        }
        print_message("  %-48s worst patch DE76 %.2f\n", charts[i], worst);
        pt_img_free(&im);
    }
    pt_manifest_free(&patches);
    assert_int_equal(nfail, 0);
}

/* The wide-gamut photos and their sRGB reference (manifest icc_checks). */
static void test_prep__color_icc_photos_match_srgb_reference(void **state)
{
    (void)state;
    static const struct {
        const char *file, *ref;
        bool tagged;
    } t[] = {
        {"formats/icc/crafted/displayp3.jpg", "formats/icc/crafted/reference_srgb.png", true},
        {"formats/icc/crafted/displayp3.webp", "formats/icc/crafted/reference_srgb.png", true},
        {"formats/icc/crafted/adobergb.jpg", "formats/icc/crafted/reference_srgb.png", true},
        {"formats/icc/crafted/untagged_srgb.jpg", "formats/icc/crafted/reference_srgb.png", false},
        {"formats/icc/crafted/prophoto_16bit.png", "formats/icc/crafted/reference_srgb_400px.png",
         true},
        {"formats/icc/crafted/rec2020_lzw.tif", "formats/icc/crafted/reference_srgb_400px.png",
         true},
    };
    enum { N = sizeof(t) / sizeof(t[0]) };
    struct color_case c[N];
    const char *specs[N];
    struct pt_img refs[N];
    memset(c, 0, sizeof(c));
    for (size_t i = 0; i < N; i++) {
        prepare(&c[i], t[i].file, "pilraw", t[i].ref);
        specs[i] = c[i].spec;
    }
    pt_refs(specs, N, refs);
    int nfail = 0;
    for (size_t i = 0; i < N; i++) {
        if (!c[i].ok || refs[i].px == NULL) {
            PT_FAIL(nfail, t[i].file, "does not decode, or no reference");
            continue;
        }
        if (c[i].res.icc_converted != t[i].tagged)
            PT_FAIL(nfail, t[i].file, "icc_converted is %d", c[i].res.icc_converted);
        double de = mean_de(&c[i].ours, &refs[i]), mae = pt_mae(&c[i].ours, &refs[i]);
        print_message("  %-44s mean DE76 %5.2f  MAE %5.2f vs %s\n", t[i].file, de, mae, t[i].ref);
        if (de < 0 || de >= MEAN_DE_LIMIT)
            PT_FAIL(nfail, t[i].file, "mean colour DE76 %.2f vs %s (limit %.1f)", de, t[i].ref,
                    MEAN_DE_LIMIT);
        pt_img_free(&c[i].ours);
        pt_img_free(&refs[i]);
    }
    assert_int_equal(nfail, 0);
}

/* CMYK JPEGs (Adobe inverted and plain) and CMYK JPEG-in-TIFF. */
static void test_prep__color_cmyk(void **state)
{
    (void)state;
    static const struct {
        const char *file, *twin; /* twin: the same picture in RGB, shipped by the corpus */
    } t[] = {
        {"formats/jpeg/pillow/pil_sample_cmyk.jpg", "formats/jpeg/pillow/pil_sample_rgb.jpg"},
        {"formats/jpeg/crafted/cmyk_adobe.jpg", "formats/jpeg/crafted/reference_1024x683.png"},
        {"formats/tiff/pillow/tiff_strip_cmyk_jpeg.tif", NULL},
    };
    enum { N = sizeof(t) / sizeof(t[0]) };
    struct color_case c[N];
    char twin_spec[N][1200];
    const char *specs[2 * N];
    struct pt_img refs[2 * N];
    memset(c, 0, sizeof(c));
    for (size_t i = 0; i < N; i++) {
        prepare(&c[i], t[i].file, "cmyk", NULL);
        specs[i] = c[i].spec;
        pt_fmt(twin_spec[i], sizeof(twin_spec[i]), "pil|%s/%s|%u|%u", AP_CORPUS,
               t[i].twin ? t[i].twin : t[i].file, c[i].ours.w, c[i].ours.h);
        specs[N + i] = twin_spec[i];
    }
    pt_refs(specs, 2 * N, refs);
    int nfail = 0;
    for (size_t i = 0; i < N; i++) {
        if (!c[i].ok || refs[i].px == NULL) {
            PT_FAIL(nfail, t[i].file, "does not decode, or no reference");
            continue;
        }
        if (!c[i].res.cmyk)
            PT_FAIL(nfail, t[i].file, "res.cmyk not set");
        double de = mean_de(&c[i].ours, &refs[i]), mae = pt_mae(&c[i].ours, &refs[i]);
        print_message("  %-46s vs Pillow: mean DE76 %5.2f MAE %5.2f\n", t[i].file, de, mae);
        if (de < 0 || de >= MEAN_DE_LIMIT)
            PT_FAIL(nfail, t[i].file, "mean colour DE76 %.2f vs Pillow (limit %.1f)", de,
                    MEAN_DE_LIMIT);
        if (mae < 0 || mae > 3.0)
            PT_FAIL(nfail, t[i].file, "MAE %.2f vs Pillow (limit 3)", mae);
        if (t[i].twin && refs[N + i].px) {
            de = mean_de(&c[i].ours, &refs[N + i]);
            print_message("  %-46s vs RGB twin: mean DE76 %5.2f\n", t[i].file, de);
            if (de < 0 || de >= MEAN_DE_LIMIT)
                PT_FAIL(nfail, t[i].file, "mean colour DE76 %.2f vs %s (limit %.1f)", de, t[i].twin,
                        MEAN_DE_LIMIT);
        }
    }
    for (size_t i = 0; i < N; i++)
        pt_img_free(&c[i].ours);
    for (size_t i = 0; i < 2 * N; i++)
        pt_img_free(&refs[i]);
    assert_int_equal(nfail, 0);
}

/* The metric itself: known CIELAB values (sRGB D65), so a broken helper cannot pass all. */
static void test_prep__color_lab_helper(void **state)
{
    (void)state;
    double lab[3];
    pt_srgb_to_lab(255, 255, 255, lab);
    assert_true(fabs(lab[0] - 100) < 0.01 && fabs(lab[1]) < 0.01 && fabs(lab[2]) < 0.01);
    pt_srgb_to_lab(255, 0, 0, lab); /* 53.24, 80.09, 67.20 */
    assert_true(fabs(lab[0] - 53.24) < 0.05 && fabs(lab[1] - 80.09) < 0.05 &&
                fabs(lab[2] - 67.20) < 0.05);
    pt_srgb_to_lab(0, 0, 0, lab);
    assert_true(fabs(lab[0]) < 0.01);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prep__color_lab_helper),
        cmocka_unit_test(test_prep__color_icc_matches_lcms_reference),
        cmocka_unit_test(test_prep__color_chart_patches),
        cmocka_unit_test(test_prep__color_icc_photos_match_srgb_reference),
        cmocka_unit_test(test_prep__color_cmyk),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
