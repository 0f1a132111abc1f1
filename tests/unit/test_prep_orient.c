/*
 * test_prep_orient.c - every EXIF orientation (and HEIF irot/imir) comes out upright.
 *
 * Driven by orientation/expected.json. For every file:
 *   - with the default target, the output has after_resize_max1568_wh (+/-1 px) and, for EXIF
 *     carriers (JPEG/PNG/WebP/TIFF), res.orientation is the stored tag (0 and absent mean 1);
 *   - at thumbnail size (PNG output) the output has displayed_wh scaled to a 512 px long edge
 *     (so the full-size displayed size is right) and its pixels match
 *       (a) reference_upright run through ap_prep the same way, when the manifest names one
 *           (HEIF/AVIF irot/imir files: rot0mir0.avif, which the manifest says is upright), and
 *       (b) an independent rendering resized to our size with Lanczos: Pillow's
 *           ImageOps.exif_transpose (JPEG/PNG/WebP), `vips autorot` (TIFF) or libvips' own
 *           HEIF loader, whose libheif applies irot/imir (AVIF),
 *     with MAE < 12 (the manifest: correct ~1-5, wrong 60-90).
 * misc/xmp_tags_orientation.png carries its orientation only in XMP: implementation-defined
 * (Pillow honours it, libvips does not), so only its size is checked.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "prep_testutil.h"

#define MAE_LIMIT 12.0
/* Pixels are compared at thumbnail size (long edge 512; smaller files at full size): a wrong
 * orientation is as obvious there, and the 12 MP AVIF and the 1800 px JPEGs stay cheap under
 * ASan. Both sides go through the same sizes: ours from ap_prep, references resized to it. */
#define CMP_TARGET "thumbnail"
#define CMP_EDGE   512

static bool exif_carrier(const char *magic)
{
    return strcmp(magic, "jpeg") == 0 || strcmp(magic, "png") == 0 || strcmp(magic, "webp") == 0 ||
           strcmp(magic, "tiff") == 0;
}

static bool xmp_only(const char *name)
{
    return strcmp(name, "misc/xmp_tags_orientation.png") == 0;
}

static void test_prep__orientation_sizes_and_tag(void **state)
{
    (void)state;
    struct pt_manifest m;
    pt_manifest_load(&m, "orientation", "orientation/expected.json");
    int nfail = 0;
    for (size_t i = 0; i < m.n; i++) {
        const struct pt_row *row = &m.rows[i];
        const char *name = pt_col(row, 0), *magic = pt_col(row, 1);
        long tag = pt_icol(row, 2), rw = pt_icol(row, 5), rh = pt_icol(row, 6);
        char rel[512];
        pt_fmt(rel, sizeof(rel), "orientation/%s", name);
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
        long want = (tag >= 1 && tag <= 8) ? tag : 1;
        if (exif_carrier(magic) && r.orientation != want)
            PT_FAIL(nfail, rel, "res.orientation %d, the file says %ld", r.orientation, tag);
        if (r.in_format != pt_format_of_magic(magic))
            PT_FAIL(nfail, rel, "sniffed %s", ap_format_name(r.in_format));
        ap_prep_result_release(&r);
    }
    pt_manifest_free(&m);
    assert_int_equal(nfail, 0);
}

/* Our pixels of rel at the comparison size, cached by name (references are shared). */
struct cache_entry {
    char name[512];
    struct pt_img img;
    bool ok;
};

static const struct pt_img *cached_pixels(struct cache_entry *cache, size_t *ncache, size_t cap,
                                          const char *rel)
{
    for (size_t i = 0; i < *ncache; i++)
        if (strcmp(cache[i].name, rel) == 0)
            return cache[i].ok ? &cache[i].img : NULL;
    if (*ncache == cap)
        return NULL;
    struct cache_entry *e = &cache[(*ncache)++];
    pt_fmt(e->name, sizeof(e->name), "%s", rel);
    e->ok = pt_pixels_at(rel, CMP_TARGET, &e->img, NULL);
    return e->ok ? &e->img : NULL;
}

/* Independent rendering of a file with its orientation applied: Pillow for EXIF in JPEG, PNG
 * and WebP; libvips for TIFF (Pillow's libtiff path already orients some TIFFs and then
 * exif_transpose turns them again) and for HEIF/AVIF (libheif applies irot/imir). */
static const char *indep_op(const char *magic)
{
    if (strcmp(magic, "tiff") == 0)
        return "vipsrot";
    return exif_carrier(magic) ? "pil" : "vips";
}

/* round_half_up(v * num / den) */
static long scale_half_up(long v, long num, long den)
{
    return (v * num * 2 + den) / (2 * den);
}

static void test_prep__orientation_pixels_upright(void **state)
{
    (void)state;
    struct pt_manifest m;
    pt_manifest_load(&m, "orientation", "orientation/expected.json");
    struct pt_img *ours = calloc(m.n, sizeof(*ours)), *indep = calloc(m.n, sizeof(*indep));
    char **specs = calloc(m.n, sizeof(*specs));
    assert_non_null(ours);
    assert_non_null(indep);
    assert_non_null(specs);
    int nfail = 0, ncompared = 0;

    /* 1. Ours, at the comparison size. Its size follows from displayed_wh. */
    for (size_t i = 0; i < m.n; i++) {
        const struct pt_row *row = &m.rows[i];
        const char *name = pt_col(row, 0), *magic = pt_col(row, 1);
        long dw = pt_icol(row, 3), dh = pt_icol(row, 4), lo = dw > dh ? dw : dh;
        long ew = lo > CMP_EDGE ? scale_half_up(dw, CMP_EDGE, lo) : dw;
        long eh = lo > CMP_EDGE ? scale_half_up(dh, CMP_EDGE, lo) : dh;
        char rel[512];
        pt_fmt(rel, sizeof(rel), "orientation/%s", name);
        specs[i] = malloc(1024);
        assert_non_null(specs[i]);
        if (!pt_pixels_at(rel, CMP_TARGET, &ours[i], NULL)) {
            PT_FAIL(nfail, rel, "does not decode");
            pt_fmt(specs[i], 1024, "%s|%s/%s|0|0", indep_op(magic), AP_CORPUS, rel);
            continue;
        }
        if (!pt_near(ours[i].w, ew, 1) || !pt_near(ours[i].h, eh, 1))
            PT_FAIL(nfail, rel, "%s output %ux%u, expected %ldx%ld from displayed %ldx%ld",
                    CMP_TARGET, ours[i].w, ours[i].h, ew, eh, dw, dh);
        pt_fmt(specs[i], 1024, "%s|%s/%s|%u|%u", indep_op(magic), AP_CORPUS, rel, ours[i].w,
               ours[i].h);
    }

    /* 2. Independent references, resized (Lanczos) to exactly our size, in one run. */
    pt_refs((const char *const *)specs, m.n, indep);

    /* 3. Compare with reference_upright (through ap_prep) and with the independent rendering. */
    struct cache_entry cache[16];
    size_t ncache = 0;
    for (size_t i = 0; i < m.n; i++) {
        const struct pt_row *row = &m.rows[i];
        const char *name = pt_col(row, 0), *upright = pt_col(row, 7);
        char rel[512], ref_rel[512];
        pt_fmt(rel, sizeof(rel), "orientation/%s", name);
        if (ours[i].px == NULL)
            continue;
        if (strcmp(upright, "-") == 0 && strncmp(name, "pillow-avif-irot-imir/", 22) == 0)
            upright = "pillow-avif-irot-imir/rot0mir0.avif";
        double mae_ref = -2, mae_ind = -2;
        if (strcmp(upright, "-") != 0 && strcmp(upright, name) != 0) {
            pt_fmt(ref_rel, sizeof(ref_rel), "orientation/%s", upright);
            const struct pt_img *ref = cached_pixels(cache, &ncache, 16, ref_rel);
            if (ref == NULL) {
                PT_FAIL(nfail, rel, "reference %s does not decode", ref_rel);
            } else {
                mae_ref = pt_mae(&ours[i], ref);
                ncompared++;
                if (mae_ref < 0 || mae_ref >= MAE_LIMIT)
                    PT_FAIL(nfail, rel, "MAE %.2f vs %s (limit %.0f): not upright", mae_ref,
                            upright, MAE_LIMIT);
            }
        }
        if (!xmp_only(name)) {
            if (indep[i].px == NULL) {
                PT_FAIL(nfail, rel, "no independent reference (%s)", specs[i]);
            } else {
                mae_ind = pt_mae(&ours[i], &indep[i]);
                ncompared++;
                if (mae_ind < 0 || mae_ind >= MAE_LIMIT)
                    PT_FAIL(nfail, rel, "MAE %.2f vs %s (limit %.0f): not upright", mae_ind,
                            specs[i], MAE_LIMIT);
            }
        }
        print_message("  %-44s MAE vs reference_upright %6.2f, vs Pillow/vips %6.2f\n", name,
                      mae_ref, mae_ind);
    }
    for (size_t i = 0; i < ncache; i++)
        pt_img_free(&cache[i].img);
    for (size_t i = 0; i < m.n; i++) {
        pt_img_free(&ours[i]);
        pt_img_free(&indep[i]);
        free(specs[i]);
    }
    free(ours);
    free(indep);
    free(specs);
    pt_manifest_free(&m);
    assert_true(ncompared >= 90);
    assert_int_equal(nfail, 0);
}

/* Each transform is distinguishable: a wrong one is far off (guards the threshold above). */
static void test_prep__orientation_wrong_transform_is_detected(void **state)
{
    (void)state;
    struct pt_img up = {0}, six = {0};
    assert_true(pt_pixels_at("orientation/crafted/upright_reference.jpg", CMP_TARGET, &up, NULL));
    /* exif 3 (180 degrees) is the same size as upright: its raw stored pixels must be far off. */
    char spec[1024];
    pt_fmt(spec, sizeof(spec), "pilraw|%s/orientation/crafted/exif_be_orientation_3.jpg|%u|%u",
           AP_CORPUS, up.w, up.h);
    const char *specs[] = {spec};
    assert_int_equal(pt_refs(specs, 1, &six), 1);
    double mae = pt_mae(&up, &six);
    print_message("  stored (unrotated) orientation 3 vs upright: MAE %.2f\n", mae);
    assert_true(mae > 3 * MAE_LIMIT);
    pt_img_free(&up);
    pt_img_free(&six);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prep__orientation_sizes_and_tag),
        cmocka_unit_test(test_prep__orientation_pixels_upright),
        cmocka_unit_test(test_prep__orientation_wrong_transform_is_detected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
