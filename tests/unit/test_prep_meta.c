/*
 * test_prep_meta.c - no EXIF/GPS/XMP/IPTC/comment/thumbnail survives ap_prep(), and
 * res.meta_removed says what was there (metadata-strip/, photos/, a few formats/ files).
 *
 * The output is checked structurally, not just by searching bytes: a JPEG may carry only
 * JFIF APP0, tables, frame and scan headers (and an ICC_PROFILE APP2, allowed by the manifest's
 * rule "an ICC profile is either dropped ... or replaced by a standard sRGB profile"), and must
 * end at its EOI; a PNG only IHDR/PLTE/IDAT/IEND and colour chunks; a WebP only image chunks.
 * On top, none of the canary strings the corpus planted ("CANARY-"), "Exif", the XMP namespace
 * or "Photoshop 3.0" (IPTC) may appear anywhere in the output.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "prep_testutil.h"

/* Byte strings that betray input metadata in any output. */
static const struct {
    const char *s;
    size_t n;
} forbidden[] = {
    {"CANARY", 6},         {"Exif\0\0", 6},    {"http://ns.adobe.com/xap", 23},
    {"Photoshop 3.0", 13}, {"<x:xmpmeta", 10}, {"THUMB", 5},
};

/* All output checks; counts failures into *nfail. */
static void check_output(const char *rel, const ap_prep_result *r, ap_encoding enc, int *nfail)
{
    char why[160];
    const char *bad = enc == AP_ENC_PNG    ? pt_png_clean(r->out, r->out_len, why, sizeof(why))
                      : enc == AP_ENC_WEBP ? pt_webp_clean(r->out, r->out_len, why, sizeof(why))
                                           : pt_jpeg_clean(r->out, r->out_len, why, sizeof(why));
    if (bad != NULL)
        PT_FAIL(*nfail, rel, "%s output not clean: %s", r->out_media_type, bad);
    for (size_t k = 0; k < sizeof(forbidden) / sizeof(forbidden[0]); k++)
        if (pt_contains(r->out, r->out_len, forbidden[k].s, forbidden[k].n))
            PT_FAIL(*nfail, rel, "%s output contains \"%s\"", r->out_media_type, forbidden[k].s);
}

static void check_meta(const char *rel, unsigned got, unsigned must, unsigned must_not, int *nfail)
{
    char g[128], w[128];
    ap_meta_describe(got, g, sizeof(g));
    if ((got & must) != must) {
        ap_meta_describe(must & ~got, w, sizeof(w));
        PT_FAIL(*nfail, rel, "meta_removed is {%s}, missing {%s}", g, w);
    }
    if (got & must_not) {
        ap_meta_describe(got & must_not, w, sizeof(w));
        PT_FAIL(*nfail, rel, "meta_removed is {%s}, but the input has no {%s}", g, w);
    }
}

/* metadata-strip/: what each file carries, from its "input_has" list in expected.json. */
static unsigned canary_meta(const char *name)
{
    static const struct {
        const char *name;
        unsigned meta;
    } t[] = {
        {"jpeg_all_metadata_canary.jpg", AP_META_EXIF | AP_META_GPS | AP_META_THUMBNAIL |
                                             AP_META_XMP | AP_META_IPTC | AP_META_COMMENT},
        {"png_text_itxt_exif_canary.png", AP_META_COMMENT | AP_META_XMP | AP_META_EXIF},
        {"webp_exif_xmp_canary.webp", AP_META_EXIF | AP_META_GPS | AP_META_THUMBNAIL | AP_META_XMP},
        {"tiff_metadata_canary.tif", AP_META_GPS | AP_META_XMP},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (strcmp(t[i].name, name) == 0)
            return t[i].meta;
    return ~0u; /* unknown file: the table needs a row */
}

static void test_prep__meta_canaries_never_reach_output(void **state)
{
    (void)state;
    static const ap_encoding encs[] = {AP_ENC_JPEG, AP_ENC_PNG, AP_ENC_WEBP};
    struct pt_manifest m;
    pt_manifest_load(&m, "metadata", "metadata-strip/expected.json");
    int nfail = 0;
    for (size_t i = 0; i < m.n; i++) {
        const struct pt_row *row = &m.rows[i];
        const char *name = pt_col(row, 0), *canary = pt_col(row, 3);
        long sw = pt_icol(row, 1), sh = pt_icol(row, 2);
        char rel[512];
        pt_fmt(rel, sizeof(rel), "metadata-strip/%s", name);
        unsigned want = canary_meta(name);
        if (want == ~0u) {
            PT_FAIL(nfail, rel, "no expectation row in canary_meta()");
            continue;
        }
        size_t in_len;
        uint8_t *in = pt_read_corpus(rel, &in_len);
        if (!pt_contains(in, in_len, canary, strlen(canary)))
            PT_FAIL(nfail, rel, "input does not contain its canary \"%s\" (test is blind)", canary);
        for (size_t e = 0; e < sizeof(encs) / sizeof(encs[0]); e++) {
            ap_prep_opts o;
            ap_prep_result r;
            ap_error err = {0};
            ap_prep_opts_init(&o);
            o.encoding = encs[e];
            ap_status st = ap_prep(in, in_len, &o, &r, &err);
            if (st != AP_OK) {
                PT_FAIL(nfail, rel, "%s", err.msg);
                break;
            }
            if (r.out_width != sw || r.out_height != sh)
                PT_FAIL(nfail, rel, "output %ux%u, stored %ldx%ld", r.out_width, r.out_height, sw,
                        sh);
            if (pt_contains(r.out, r.out_len, canary, strlen(canary)))
                PT_FAIL(nfail, rel, "canary \"%s\" in the output", canary);
            check_output(rel, &r, encs[e], &nfail);
            if (e == 0)
                check_meta(rel, r.meta_removed, want, 0, &nfail);
            ap_prep_result_release(&r);
        }
        free(in);
    }
    pt_manifest_free(&m);
    assert_int_equal(nfail, 0);
}

static void test_prep__meta_photos_stripped_and_sized(void **state)
{
    (void)state;
    struct pt_manifest m;
    pt_manifest_load(&m, "photos", "photos/expected.json");
    int nfail = 0;
    for (size_t i = 0; i < m.n; i++) {
        const struct pt_row *row = &m.rows[i];
        const char *name = pt_col(row, 0), *icc = pt_col(row, 8);
        long orient = pt_icol(row, 1), rw = pt_icol(row, 4), rh = pt_icol(row, 5);
        bool gps = pt_icol(row, 6) == 1, thumb = pt_icol(row, 7) == 1;
        char rel[512];
        pt_fmt(rel, sizeof(rel), "photos/%s", name);
        ap_prep_opts o;
        ap_prep_result r;
        ap_error err;
        ap_prep_opts_init(&o);
        ap_status st = pt_prep_corpus(rel, &o, &r, &err, NULL, NULL);
        if (st != AP_OK) {
            PT_FAIL(nfail, rel, "%s: %s", ap_strerror(st), err.msg);
            continue;
        }
        if (!pt_near(r.out_width, rw, 1) || !pt_near(r.out_height, rh, 1))
            PT_FAIL(nfail, rel, "output %ux%u, expected %ldx%ld (+/-1)", r.out_width, r.out_height,
                    rw, rh);
        if (r.orientation != (orient >= 1 && orient <= 8 ? orient : 1))
            PT_FAIL(nfail, rel, "res.orientation %d, EXIF says %ld", r.orientation, orient);
        unsigned must = AP_META_EXIF | (gps ? AP_META_GPS : 0) | (thumb ? AP_META_THUMBNAIL : 0) |
                        (strcmp(icc, "-") != 0 ? AP_META_ICC : 0);
        check_meta(rel, r.meta_removed, must, gps ? 0 : AP_META_GPS, &nfail);
        check_output(rel, &r, AP_ENC_JPEG, &nfail);
        ap_prep_result_release(&r);
    }
    pt_manifest_free(&m);
    assert_int_equal(nfail, 0);
}

/* Other inputs with known metadata, named by metadata-strip/expected.json (_also_check) and by
 * formats/expected.json's "exercises". */
static void test_prep__meta_other_carriers(void **state)
{
    (void)state;
    static const struct {
        const char *rel;
        unsigned must;
    } cases[] = {
        {"formats/heic-avif/ianare/IMG_5195.HEIC", AP_META_EXIF | AP_META_GPS | AP_META_ICC},
        {"formats/heic-avif/drewnoakes/exif-at-eof.heic", AP_META_EXIF | AP_META_ICC},
        {"formats/jpeg/pillow/iptc.jpg", AP_META_IPTC},
        {"formats/jpeg/pillow/app13-multiple.jpg", AP_META_IPTC},
        {"formats/png/pillow/exif.png", AP_META_EXIF},
        {"formats/png/pillow/itxt_chunks.png", AP_META_COMMENT},
        {"formats/webp/drewnoakes/nikon_d1x_exif.webp", AP_META_EXIF},
        {"formats/heic-avif/pillow/exif.avif", AP_META_EXIF},
        {"formats/jpeg/libvips/ultra-hdr.jpg", AP_META_ICC},
    };
    int nfail = 0;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ap_prep_opts o;
        ap_prep_result r;
        ap_error err;
        ap_prep_opts_init(&o);
        ap_status st = pt_prep_corpus(cases[i].rel, &o, &r, &err, NULL, NULL);
        if (st != AP_OK) {
            PT_FAIL(nfail, cases[i].rel, "%s: %s", ap_strerror(st), err.msg);
            continue;
        }
        check_meta(cases[i].rel, r.meta_removed, cases[i].must, 0, &nfail);
        check_output(cases[i].rel, &r, AP_ENC_JPEG, &nfail);
        ap_prep_result_release(&r);
    }
    assert_int_equal(nfail, 0);
}

/* The meta bit names, as the CLI prints them. */
static void test_prep__meta_describe(void **state)
{
    (void)state;
    char buf[128];
    ap_meta_describe(AP_META_EXIF | AP_META_GPS | AP_META_COMMENT, buf, sizeof(buf));
    assert_string_equal(buf, "exif,gps,comment");
    ap_meta_describe(0, buf, sizeof(buf));
    assert_string_equal(buf, "");
    ap_meta_describe(0xFF, buf, 8); /* truncated, still terminated */
    assert_true(strlen(buf) < 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prep__meta_canaries_never_reach_output),
        cmocka_unit_test(test_prep__meta_photos_stripped_and_sized),
        cmocka_unit_test(test_prep__meta_other_carriers),
        cmocka_unit_test(test_prep__meta_describe),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
