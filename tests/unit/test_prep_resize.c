/*
 * test_prep_resize.c - resize quality: PSNR >= 38 dB against an independent Lanczos resize.
 *
 * For each file, ap_prep() runs with PNG output (no JPEG loss in what is measured) and the
 * reference is made at test time by Pillow (Debian's): a FULL decode, EXIF orientation applied,
 * then Image.resize(..., LANCZOS) - a true Lanczos-3 convolution over the whole image - to
 * exactly our output size. Our side shrinks JPEGs on load (libjpeg DCT scaling) before its own
 * Lanczos pass, so for the camera photos this also measures the shrink-on-load path; the test
 * checks that it was taken (decode_scale > 1). The PNG, WebP and GIF cases run the resampler on
 * full-size rows.
 *
 * 38 dB: two good Lanczos implementations differ by rounding, kernel support at the edges and
 * the window maths, typically 40-50 dB apart; a bilinear or box-filter resize of a detailed photo
 * scores around 30-35 dB against Lanczos, and a shifted (half-pixel misaligned) one lower still.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "prep_testutil.h"

#define PSNR_MIN 38.0

struct resize_case {
    const char *rel;
    uint32_t max_edge;
    bool shrink_on_load; /* a JPEG big enough that DCT scaling must be used */
};

static void test_prep__resize_psnr_vs_pillow_lanczos(void **state)
{
    (void)state;
    static const struct resize_case cases[] = {
        {"photos/Canon_EOS_5D_Mark_III_Issue_266.jpg", 1568, true}, /* 5760x3840, 4:4:4 */
        {"photos/Apple_iPhone_4S.jpg", 1568, true},                 /* orientation 6 */
        {"photos/Samsung_Galaxy_S7_Edge.jpg", 1568, true},          /* 4:2:2 */
        {"photos/Leica_T_Typ_701.jpg", 768, true},                  /* orientation 8, /6.4 */
        {"formats/jpeg/crafted/reference_1024x683.png", 512, false},
        {"documents/invoices/AmazonWebServices.png", 1568, false}, /* text page, 2975x3850 */
        {"formats/webp/drewnoakes/webpvp8.webp", 1568, false},     /* 1600 -> 1568: near 1:1 */
        {"formats/webp/crafted/lossless_1024x683.webp", 700, false},
    };
    enum { N = sizeof(cases) / sizeof(cases[0]) };
    struct pt_img ours[N];
    char spec[N][1200];
    const char *specs[N];
    struct pt_img refs[N];
    int nfail = 0;
    memset(ours, 0, sizeof(ours));

    for (size_t i = 0; i < N; i++) {
        ap_prep_opts o;
        ap_prep_result r;
        ap_error err;
        ap_prep_opts_init(&o);
        o.max_edge = cases[i].max_edge;
        o.encoding = AP_ENC_PNG;
        o.no_hash = true;
        ap_status st = pt_prep_corpus(cases[i].rel, &o, &r, &err, NULL, NULL);
        specs[i] = spec[i];
        pt_fmt(spec[i], sizeof(spec[i]), "pil|%s/%s|0|0", AP_CORPUS, cases[i].rel);
        if (st != AP_OK) {
            PT_FAIL(nfail, cases[i].rel, "%s: %s", ap_strerror(st), err.msg);
            continue;
        }
        if (!pt_decode_png(r.out, r.out_len, &ours[i]))
            PT_FAIL(nfail, cases[i].rel, "our PNG does not decode");
        if (cases[i].shrink_on_load && r.decode_scale < 2)
            PT_FAIL(nfail, cases[i].rel, "decode_scale %u: shrink-on-load not used",
                    r.decode_scale);
        uint32_t lo = r.out_width > r.out_height ? r.out_width : r.out_height;
        if (lo != cases[i].max_edge && lo != 0 && !(cases[i].max_edge > 1568))
            PT_FAIL(nfail, cases[i].rel, "long edge %u, expected %u", lo, cases[i].max_edge);
        pt_fmt(spec[i], sizeof(spec[i]), "pil|%s/%s|%u|%u", AP_CORPUS, cases[i].rel, r.out_width,
               r.out_height);
        ap_prep_result_release(&r);
    }
    pt_refs(specs, N, refs);
    for (size_t i = 0; i < N; i++) {
        if (ours[i].px == NULL)
            continue;
        if (refs[i].px == NULL) {
            PT_FAIL(nfail, cases[i].rel, "Pillow could not make a reference");
            continue;
        }
        double psnr = pt_psnr(&ours[i], &refs[i]);
        print_message("  %-46s %4ux%-4u PSNR %6.2f dB vs Pillow LANCZOS\n", cases[i].rel, ours[i].w,
                      ours[i].h, psnr);
        if (psnr < PSNR_MIN)
            PT_FAIL(nfail, cases[i].rel, "PSNR %.2f dB (size %ux%u vs %ux%u), minimum %.0f", psnr,
                    ours[i].w, ours[i].h, refs[i].w, refs[i].h, PSNR_MIN);
        pt_img_free(&ours[i]);
        pt_img_free(&refs[i]);
    }
    assert_int_equal(nfail, 0);
}

/* The metric is discriminating: a crude nearest-neighbour shrink of the same picture scores far
 * below the threshold against the same reference. */
static void test_prep__resize_psnr_rejects_nearest_neighbour(void **state)
{
    (void)state;
    struct pt_img full = {0}, ref = {0};
    assert_true(pt_pixels_of("formats/jpeg/crafted/reference_1024x683.png", &full, NULL));
    char spec[1200];
    pt_fmt(spec, sizeof(spec), "pil|%s/formats/jpeg/crafted/reference_1024x683.png|341|228",
           AP_CORPUS);
    const char *specs[] = {spec};
    assert_int_equal(pt_refs(specs, 1, &ref), 1);
    struct pt_img nn = {malloc((size_t)341 * 228 * 3), 341, 228, 3};
    assert_non_null(nn.px);
    for (uint32_t y = 0; y < nn.h; y++)
        for (uint32_t x = 0; x < nn.w; x++)
            for (unsigned k = 0; k < 3; k++)
                nn.px[((size_t)y * nn.w + x) * 3 + k] =
                    (uint8_t)pt_px(&full, x * full.w / nn.w, y * full.h / nn.h, k);
    double psnr = pt_psnr(&nn, &ref);
    print_message("  nearest-neighbour 1024x683 -> 341x228: PSNR %.2f dB\n", psnr);
    assert_true(psnr < PSNR_MIN - 5);
    pt_img_free(&nn);
    pt_img_free(&full);
    pt_img_free(&ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prep__resize_psnr_vs_pillow_lanczos),
        cmocka_unit_test(test_prep__resize_psnr_rejects_nearest_neighbour),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
