/*
 * test_hash.c - SHA-256, and the imagehash-compatible pHash and dHash.
 *
 * Three kinds of evidence that pHash/dHash follow Python imagehash (see docs/internals/hash.md):
 *  - its published test vectors (corpus/phash/imagehash_tests/expected.json) reproduce exactly
 *    from the PNG pixels, and within Hamming 2 through the whole pipeline (ap_prep, target none);
 *  - an independent Pillow + numpy reference (tests/tools/imagehash_ref.py, run with Debian's
 *    /usr/bin/python3 when it has PIL, else skipped) agrees on synthetic and corpus pixels;
 *  - the behaviour: the same picture re-encoded (JPEG q50-95) or rescaled stays within
 *    Hamming 6, and the different photos of corpus/phash are at least 20 apart.
 * The rest pins the small contracts: hex, Hamming, argument checks, channel layouts, strides.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <spng.h>

#include "aperture/hash.h"
#include "aperture/prep.h"
#include "hash/hash.h"

#define PHASH_DIR  AP_CORPUS "/phash"
#define REF_PYTHON "/usr/bin/python3"
#define REF_SCRIPT AP_SOURCE_DIR "/tests/tools/imagehash_ref.py"

/* The numbers. */
#define MAX_SAME_PICTURE 6  /* re-encoded (JPEG q50-95) or rescaled */
#define MIN_DIFFERENT    20 /* different photos */
#define MAX_FILTER_DIFF  2  /* vs imagehash when something other than our hash code differs */

/* ---- helpers */

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    long n = -1;

    if (f == NULL)
        fail_msg("cannot open \"%s\"", path);
    if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
        fail_msg("cannot size \"%s\"", path);
    buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    if (fread(buf, 1, (size_t)n, f) != (size_t)n)
        fail_msg("short read on \"%s\"", path);
    fclose(f);
    buf[n] = '\0'; /* so JSON files can be searched as strings */
    *len = (size_t)n;
    return buf;
}

static int imax(int a, int b)
{
    return a > b ? a : b;
}

static uint64_t parse_hex(const char *hex)
{
    uint64_t v = 0;
    if (ap_hash64_parse(hex, &v) != AP_OK)
        fail_msg("bad hash \"%s\"", hex);
    return v;
}

/* A PNG decoded to RGBA8 by libspng (no gamma, no ICC: the stored samples, as Pillow reads). */
static uint8_t *decode_png(const char *path, uint32_t *w, uint32_t *h)
{
    size_t len, size;
    uint8_t *file = read_all(path, &len), *px;
    spng_ctx *ctx = spng_ctx_new(0);
    struct spng_ihdr ihdr;

    assert_non_null(ctx);
    assert_int_equal(spng_set_png_buffer(ctx, file, len), 0);
    assert_int_equal(spng_get_ihdr(ctx, &ihdr), 0);
    assert_int_equal(spng_decoded_image_size(ctx, SPNG_FMT_RGBA8, &size), 0);
    px = malloc(size);
    assert_non_null(px);
    assert_int_equal(spng_decode_image(ctx, px, size, SPNG_FMT_RGBA8, 0), 0);
    spng_ctx_free(ctx);
    free(file);
    *w = ihdr.width;
    *h = ihdr.height;
    return px;
}

static void hashes_of(const uint8_t *px, uint32_t w, uint32_t h, size_t stride, unsigned ch,
                      uint64_t *ph, uint64_t *dh)
{
    ap_error err = {0};
    ap_status st = ap_hash_image(px, w, h, stride, ch, ph, dh, &err);
    if (st != AP_OK)
        fail_msg("hash %ux%u/%u: %s %s", w, h, ch, ap_strerror(st), err.msg);
}

/*
 * Run the pipeline on buf with target "none" (no resize unless max_edge), JPEG quality q; return
 * its hashes and, if out is not NULL, its encoded output (free()).
 */
static void prep_hashes(const uint8_t *buf, size_t len, uint32_t max_edge, int quality,
                        uint64_t *ph, uint64_t *dh, uint8_t **out, size_t *out_len)
{
    ap_prep_opts opts;
    ap_prep_result res;
    ap_error err = {0};
    ap_status st;

    ap_prep_opts_init(&opts);
    assert_int_equal(ap_prep_opts_target(&opts, "none"), AP_OK);
    opts.max_edge = max_edge;
    if (quality)
        opts.quality = quality;
    st = ap_prep(buf, len, &opts, &res, &err);
    if (st != AP_OK)
        fail_msg("ap_prep: %s %s", ap_strerror(st), err.msg);
    *ph = res.phash;
    *dh = res.dhash;
    if (out != NULL) {
        *out = malloc(res.out_len);
        assert_non_null(*out);
        memcpy(*out, res.out, res.out_len);
        *out_len = res.out_len;
    }
    ap_prep_result_release(&res);
}

static void prep_file(const char *rel, uint64_t *ph, uint64_t *dh)
{
    char path[1024];
    size_t len;
    uint8_t *buf;

    snprintf(path, sizeof(path), "%s/%s", PHASH_DIR, rel);
    buf = read_all(path, &len);
    prep_hashes(buf, len, 0, 0, ph, dh, NULL, NULL);
    free(buf);
}

/*
 * The 16-hex-digit value of "field" inside the object for "key" in one of the corpus JSON files.
 * Their layout is fixed ("key": { ... "field": "hex" ... }), so a search is enough.
 */
static uint64_t json_hash(const char *json, const char *key, const char *field)
{
    char pat[512];
    const char *obj, *end, *v;

    snprintf(pat, sizeof(pat), "\"%s\": {", key);
    obj = strstr(json, pat);
    if (obj == NULL)
        fail_msg("no \"%s\" in the expected file", key);
    end = strchr(obj, '}');
    snprintf(pat, sizeof(pat), "\"%s\": \"", field);
    v = strstr(obj, pat);
    if (v == NULL || v > end)
        fail_msg("no %s for \"%s\"", field, key);
    v += strlen(pat);
    char hex[17];
    memcpy(hex, v, 16);
    hex[16] = '\0';
    return parse_hex(hex);
}

/* ---- the reference (Pillow + numpy) */

/* Skip the calling test, saying why, when Debian's python3 lacks Pillow or numpy. */
static void need_reference(void)
{
    if (access(REF_PYTHON, X_OK) != 0 ||
        system(REF_PYTHON " -c 'import PIL, numpy' >/dev/null 2>&1") != 0) {
        print_message("[  SKIP    ] " REF_PYTHON " with PIL and numpy is not available: "
                      "the imagehash reference comparison is skipped\n");
        skip();
    }
}

struct ref_hash {
    uint64_t ph, dh;
    unsigned w, h, ch;
};

/* Run the reference script with args; read one line per input into out[0..n). */
static void run_reference(const char *args, struct ref_hash *out, size_t n)
{
    char cmd[8192], ph[32], dh[32];
    FILE *p;

    snprintf(cmd, sizeof(cmd), "%s %s %s", REF_PYTHON, REF_SCRIPT, args);
    p = popen(cmd, "r");
    assert_non_null(p);
    for (size_t i = 0; i < n; i++) {
        if (fscanf(p, "%31s %31s %u %u %u", ph, dh, &out[i].w, &out[i].h, &out[i].ch) != 5)
            fail_msg("reference gave no line %zu for: %s", i, cmd);
        out[i].ph = parse_hex(ph);
        out[i].dh = parse_hex(dh);
    }
    if (pclose(p) != 0)
        fail_msg("reference failed: %s", cmd);
}

/* The corpus/phash images, relative to PHASH_DIR. */
static const char *const corpus_images[] = {
    "imagehash_tests/imagehash.png",
    "imagehash_tests/peppers.png",
    "near-duplicates/canon_20d__brightness_plus15pct.jpg",
    "near-duplicates/canon_20d__crop_5pct_border.jpg",
    "near-duplicates/canon_20d__grayscale.jpg",
    "near-duplicates/canon_20d__half_size.jpg",
    "near-duplicates/canon_20d__mirrored.jpg",
    "near-duplicates/canon_20d__original.jpg",
    "near-duplicates/canon_20d__reencode_q40.jpg",
    "near-duplicates/canon_20d__rotate_2deg.jpg",
    "near-duplicates/canon_20d__rotate_90.jpg",
    "near-duplicates/canon_20d__text_watermark.jpg",
    "near-duplicates/iphone6__brightness_plus15pct.jpg",
    "near-duplicates/iphone6__crop_5pct_border.jpg",
    "near-duplicates/iphone6__grayscale.jpg",
    "near-duplicates/iphone6__half_size.jpg",
    "near-duplicates/iphone6__mirrored.jpg",
    "near-duplicates/iphone6__original.jpg",
    "near-duplicates/iphone6__reencode_q40.jpg",
    "near-duplicates/iphone6__rotate_2deg.jpg",
    "near-duplicates/iphone6__rotate_90.jpg",
    "near-duplicates/iphone6__text_watermark.jpg",
    "near-duplicates/iphone6_hdr_off.jpg",
    "near-duplicates/iphone6_hdr_on.jpg",
    "near-duplicates/nikon_d90__brightness_plus15pct.jpg",
    "near-duplicates/nikon_d90__crop_5pct_border.jpg",
    "near-duplicates/nikon_d90__grayscale.jpg",
    "near-duplicates/nikon_d90__half_size.jpg",
    "near-duplicates/nikon_d90__mirrored.jpg",
    "near-duplicates/nikon_d90__original.jpg",
    "near-duplicates/nikon_d90__reencode_q40.jpg",
    "near-duplicates/nikon_d90__rotate_2deg.jpg",
    "near-duplicates/nikon_d90__rotate_90.jpg",
    "near-duplicates/nikon_d90__text_watermark.jpg",
};
#define N_CORPUS (sizeof(corpus_images) / sizeof(corpus_images[0]))

/* ---- SHA-256 and the small helpers */

static void test_hash__sha256_known_vectors(void **state)
{
    (void)state;
    static const struct {
        const char *msg, *hex;
    } v[] = {
        /* FIPS 180-2 appendix B */
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        uint8_t d[AP_SHA256_LEN];
        char hex[65];
        assert_int_equal(ap_sha256((const uint8_t *)v[i].msg, strlen(v[i].msg), d, NULL), AP_OK);
        ap_sha256_hex(d, hex);
        assert_string_equal(hex, v[i].hex);
    }
    /* A NULL buffer is fine when empty. */
    uint8_t d[AP_SHA256_LEN];
    assert_int_equal(ap_sha256(NULL, 0, d, NULL), AP_OK);
    assert_int_equal(d[0], 0xe3);
}

static void test_hash__hex_prints_and_parses_like_imagehash(void **state)
{
    (void)state;
    char hex[17];
    uint64_t v = 0;

    ap_hash64_hex(0x0026273b2b19550eull, hex);
    assert_string_equal(hex, "0026273b2b19550e"); /* leading zeros kept, lowercase */
    ap_hash64_hex(0, hex);
    assert_string_equal(hex, "0000000000000000");
    assert_int_equal(ap_hash64_parse("BA8C84536BD3C366", &v), AP_OK);
    assert_true(v == 0xba8c84536bd3c366ull);
    v = 42;
    assert_int_equal(ap_hash64_parse("ba8c84536bd3c36", &v), AP_EINVAL);   /* short */
    assert_int_equal(ap_hash64_parse("ba8c84536bd3c3660", &v), AP_EINVAL); /* long */
    assert_int_equal(ap_hash64_parse("ba8c84536bd3c36g", &v), AP_EINVAL);
    assert_int_equal(ap_hash64_parse("", &v), AP_EINVAL);
    assert_int_equal(ap_hash64_parse(NULL, &v), AP_EINVAL);
    assert_true(v == 42); /* untouched on failure */

    /* imagehash tests/test_hex_conversions.py: the 64-bit vectors, bits row-major MSB first. */
    static const char *const bits_hex[][2] = {
        {"1001111000111100110000011111000011110000110000111110011111000000", "9e3cc1f0f0c3e7c0"},
        {"1000111100001111000011110000111100001111000010110000101101111010", "8f0f0f0f0f0b0b7a"},
    };
    for (size_t i = 0; i < 2; i++) {
        uint64_t h = 0;
        for (int b = 0; b < 64; b++)
            h = (h << 1) | (uint64_t)(bits_hex[i][0][b] == '1');
        ap_hash64_hex(h, hex);
        assert_string_equal(hex, bits_hex[i][1]);
    }
}

static void test_hash__hamming_counts_differing_bits(void **state)
{
    (void)state;
    assert_int_equal(ap_hamming64(0, 0), 0);
    assert_int_equal(ap_hamming64(0, ~0ull), 64);
    assert_int_equal(ap_hamming64(0x8000000000000001ull, 1), 1);
    /* expected.json: phash of imagehash.png vs the same picture rotated by -1 degree. */
    assert_int_equal(ap_hamming64(0xba8c84536bd3c366ull, 0xbacc84534bd3c366ull), 2);
}

static void test_hash__rejects_bad_arguments(void **state)
{
    (void)state;
    uint8_t px[64 * 3] = {0};
    uint64_t h = 7;
    ap_error err = {0};

    assert_int_equal(ap_phash(NULL, 8, 8, 8, 1, &h, &err), AP_EINVAL);
    assert_true(err.msg[0] != '\0');
    assert_int_equal(ap_phash(px, 0, 8, 8, 1, &h, NULL), AP_EINVAL);
    assert_int_equal(ap_dhash(px, 8, 0, 8, 1, &h, NULL), AP_EINVAL);
    assert_int_equal(ap_dhash(px, 8, 8, 8, 0, &h, NULL), AP_EINVAL);
    assert_int_equal(ap_dhash(px, 8, 8, 40, 5, &h, NULL), AP_EINVAL);
    assert_int_equal(ap_phash(px, 8, 8, 23, 3, &h, NULL), AP_EINVAL); /* stride < 24 */
    assert_int_equal(ap_phash(px, 8, 8, 8, 1, NULL, NULL), AP_EINVAL);
    assert_int_equal(ap_phash(px, AP_HASH_MAX_SIDE + 1, 1, AP_HASH_MAX_SIDE + 1, 1, &h, NULL),
                     AP_ETOOLARGE);
    assert_true(h == 7); /* out untouched on failure */
}

/* ---- the definition, on synthetic pixels */

static void test_hash__gray_matches_pillow_convert_l(void **state)
{
    (void)state;
    /* Pillow: L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16. */
    static const uint8_t rgb[] = {255, 255, 255, 0, 0, 0,   255, 0,  0,
                                  0,   255, 0,   0, 0, 255, 10,  20, 30};
    static const uint8_t want[] = {255, 0, 76, 150, 29, 18};
    uint8_t out[6];
    ap__hash_gray_row(rgb, 6, 3, out);
    assert_memory_equal(out, want, 6);

    /* imagehash tests: md5 of peppers.png convert("L").tobytes() with Pillow >= 7. */
    uint32_t w, h;
    uint8_t *px = decode_png(PHASH_DIR "/imagehash_tests/peppers.png", &w, &h);
    uint8_t *gray = malloc((size_t)w * h);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    char hex[33];

    assert_non_null(gray);
    for (uint32_t y = 0; y < h; y++)
        ap__hash_gray_row(px + (size_t)y * w * 4, w, 4, gray + (size_t)y * w);
    assert_int_equal(EVP_Digest(gray, (size_t)w * h, md, &md_len, EVP_md5(), NULL), 1);
    for (unsigned i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    assert_string_equal(hex, "61db06218cc8b9aba14812d965869120");
    free(gray);
    free(px);
}

static void test_hash__layouts_and_strides_agree(void **state)
{
    (void)state;
    enum { W = 97, H = 61, PAD = 13 };
    uint8_t *g = malloc(W * H), *rgb = malloc(W * H * 3), *rgba = malloc(W * H * 4);
    uint8_t *ga = malloc(W * H * 2), *padded = malloc((W + PAD) * H);
    uint64_t ph1, dh1, ph, dh;
    unsigned seed = 12345;

    assert_non_null(g);
    assert_non_null(rgb);
    assert_non_null(rgba);
    assert_non_null(ga);
    assert_non_null(padded);
    for (int i = 0; i < W * H; i++) {
        seed = seed * 1103515245u + 12345u;
        g[i] = (uint8_t)((i % W) * 2 + (i / W) + (seed >> 28)); /* ramps plus a little noise */
        rgb[3 * i] = rgb[3 * i + 1] = rgb[3 * i + 2] = g[i];    /* gray in RGB: L is exact */
        memcpy(rgba + 4 * i, rgb + 3 * i, 3);
        rgba[4 * i + 3] = (uint8_t)(seed >> 20); /* alpha is ignored, as by convert("L") */
        ga[2 * i] = g[i];
        ga[2 * i + 1] = (uint8_t)(seed >> 12);
    }
    for (int y = 0; y < H; y++) {
        memcpy(padded + y * (W + PAD), g + y * W, W);
        memset(padded + y * (W + PAD) + W, 0xff, PAD);
    }
    hashes_of(g, W, H, W, 1, &ph1, &dh1);
    assert_true(ph1 != 0 && dh1 != 0);
    hashes_of(rgb, W, H, W * 3, 3, &ph, &dh);
    assert_true(ph == ph1 && dh == dh1);
    hashes_of(rgba, W, H, W * 4, 4, &ph, &dh);
    assert_true(ph == ph1 && dh == dh1);
    hashes_of(ga, W, H, W * 2, 2, &ph, &dh);
    assert_true(ph == ph1 && dh == dh1);
    hashes_of(padded, W, H, W + PAD, 1, &ph, &dh);
    assert_true(ph == ph1 && dh == dh1);
    /* The one-pass function and the single ones agree. */
    assert_int_equal(ap_phash(rgb, W, H, W * 3, 3, &ph, NULL), AP_OK);
    assert_int_equal(ap_dhash(rgb, W, H, W * 3, 3, &dh, NULL), AP_OK);
    assert_true(ph == ph1 && dh == dh1);
    free(g);
    free(rgb);
    free(rgba);
    free(ga);
    free(padded);
}

static void test_hash__dhash_reads_horizontal_gradients(void **state)
{
    (void)state;
    enum { W = 300, H = 200 };
    uint8_t *up = malloc(W * H), *down = malloc(W * H);
    uint64_t ph, dh;

    assert_non_null(up);
    assert_non_null(down);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            up[y * W + x] = (uint8_t)(x * 255 / (W - 1));
            down[y * W + x] = (uint8_t)(255 - x * 255 / (W - 1));
        }
    hashes_of(up, W, H, W, 1, &ph, &dh);
    assert_true(dh == ~0ull); /* every right neighbour is brighter */
    hashes_of(down, W, H, W, 1, &ph, &dh);
    assert_true(dh == 0);
    free(up);
    free(down);
}

static void test_hash__flat_and_tiny_images_hash_deterministically(void **state)
{
    (void)state;
    uint8_t flat[40 * 30], one = 200;
    uint8_t tiny[5 * 3 * 3];
    uint64_t ph, dh;

    /* A flat image: every AC coefficient is 0 in exact arithmetic, only DC is above the median.
     * (imagehash's bits here are FFT rounding noise; ours are the exact answer.) */
    memset(flat, 90, sizeof(flat));
    hashes_of(flat, 40, 30, 40, 1, &ph, &dh);
    assert_true(ph == 0x8000000000000000ull);
    assert_true(dh == 0);
    /* Images under 32x32 (and under 9x8) are upscaled, as imagehash does. */
    hashes_of(&one, 1, 1, 1, 1, &ph, &dh);
    assert_true(ph == 0x8000000000000000ull);
    assert_true(dh == 0);
    for (size_t i = 0; i < sizeof(tiny); i++)
        tiny[i] = (uint8_t)(i * 37);
    hashes_of(tiny, 5, 3, 15, 3, &ph, &dh);
}

static void test_hash__published_vectors_exact_on_png_pixels(void **state)
{
    (void)state;
    size_t len;
    char *json = (char *)read_all(PHASH_DIR "/imagehash_tests/expected.json", &len);
    /* published: imagehash tests/test_hash_is_constant.py; peppers: reproduced with imagehash */
    static const struct {
        const char *file, *group;
    } v[] = {{"imagehash.png", "published"}, {"peppers.png", "reproduced_here"}};

    for (size_t i = 0; i < 2; i++) {
        char path[512];
        uint32_t w, h;
        uint64_t ph, dh;
        snprintf(path, sizeof(path), "%s/imagehash_tests/%s", PHASH_DIR, v[i].file);
        uint8_t *px = decode_png(path, &w, &h);
        const char *at = strstr(json, v[i].file);
        assert_non_null(at);
        hashes_of(px, w, h, (size_t)w * 4, 4, &ph, &dh);
        assert_true(ph == json_hash(at, v[i].group, "phash"));
        assert_true(dh == json_hash(at, v[i].group, "dhash"));
        free(px);
    }
    free(json);
}

/* A synthetic image: kind 0 is noise, kind 1 smooth ramps and blocks plus a little noise. */
static uint8_t *synthetic(uint32_t w, uint32_t h, unsigned ch, int kind, unsigned *seed)
{
    size_t bytes = (size_t)w * h * ch;
    uint8_t *px = malloc(bytes);

    assert_non_null(px);
    for (size_t i = 0; i < bytes; i++) {
        size_t x = (i / ch) % w, y = (i / ch) / w;
        *seed = *seed * 1103515245u + 12345u;
        px[i] = kind == 0 ? (uint8_t)(*seed >> 24)
                          : (uint8_t)((x * 7 + y * 3) % 200 + ((x / 20 + y / 15) % 3) * 20 +
                                      (*seed >> 29) + (i % ch) * 5);
    }
    return px;
}

static void test_hash__matches_reference_on_synthetic_pixels(void **state)
{
    (void)state;
    need_reference();
    /* Sizes that reduce a lot, a little, not at all, enlarge, and are lopsided. Tiny images
     * (1x1, 3x2) are left out: their pHash bits are rounding noise in imagehash (see phash.c). */
    static const uint32_t sizes[][2] = {{1568, 1045}, {640, 480}, {257, 513}, {100, 37},
                                        {33, 31},     {32, 32},   {9, 8},     {4000, 30},
                                        {30, 4000},   {17, 250}};
    enum { N = sizeof(sizes) / sizeof(sizes[0]) * 4 * 2 };
    char dir[] = "/tmp/test_hash.XXXXXX", path[256];
    char *args = malloc(64 * 1024);
    struct ref_hash ref[N];
    unsigned seed = 777;
    size_t off = 0;
    int worst_p = 0, worst_d = 0, n = 0;

    assert_non_null(args);
    assert_non_null(mkdtemp(dir));
    /* Write every image, run the reference once (Python starts slowly), then compare. */
    for (int pass = 0; pass < 2; pass++) {
        n = 0;
        seed = 777;
        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++)
            for (unsigned ch = 1; ch <= 4; ch++)
                for (int kind = 0; kind < 2; kind++, n++) {
                    uint32_t w = sizes[s][0], h = sizes[s][1];
                    uint8_t *px = synthetic(w, h, ch, kind, &seed);
                    uint64_t ph, dh;

                    snprintf(path, sizeof(path), "%s/%d.raw", dir, n);
                    if (pass == 0) {
                        FILE *f = fopen(path, "wb");
                        assert_non_null(f);
                        assert_int_equal(fwrite(px, 1, (size_t)w * h * ch, f), (size_t)w * h * ch);
                        fclose(f);
                        off += (size_t)snprintf(args + off, 64 * 1024 - off, " --raw %ux%ux%u %s",
                                                w, h, ch, path);
                    } else {
                        hashes_of(px, w, h, (size_t)w * ch, ch, &ph, &dh);
                        if (ap_hamming64(ph, ref[n].ph) > MAX_FILTER_DIFF ||
                            ap_hamming64(dh, ref[n].dh) > MAX_FILTER_DIFF)
                            fail_msg("%ux%ux%u kind %d: phash distance %d, dhash %d", w, h, ch,
                                     kind, ap_hamming64(ph, ref[n].ph),
                                     ap_hamming64(dh, ref[n].dh));
                        worst_p = imax(worst_p, ap_hamming64(ph, ref[n].ph));
                        worst_d = imax(worst_d, ap_hamming64(dh, ref[n].dh));
                        unlink(path);
                    }
                    free(px);
                }
        if (pass == 0)
            run_reference(args, ref, N);
    }
    print_message("reference, %d synthetic images: worst phash distance %d, dhash %d\n", n, worst_p,
                  worst_d);
    rmdir(dir);
    free(args);
}

/*
 * The corpus through the reference twice: on the pixels Pillow decoded (dumped by the script),
 * which isolates our hash code, and through ap_prep (our decoders, colour management, alpha
 * flattening), within Hamming 2.
 */
static void test_hash__matches_reference_on_corpus(void **state)
{
    (void)state;
    need_reference();
    char dir[] = "/tmp/test_hash.XXXXXX", path[256];
    char *args = malloc(64 * 1024);
    struct ref_hash ref[N_CORPUS];
    int worst[4] = {0}, same_pixels_exact = 0;

    assert_non_null(args);
    assert_non_null(mkdtemp(dir));
    size_t off = (size_t)snprintf(args, 64 * 1024, "--dump %s", dir);
    for (size_t i = 0; i < N_CORPUS; i++)
        off += (size_t)snprintf(args + off, 64 * 1024 - off, " %s/%s", PHASH_DIR, corpus_images[i]);
    run_reference(args, ref, N_CORPUS);
    for (size_t i = 0; i < N_CORPUS; i++) {
        size_t len;
        uint64_t ph, dh;
        int d[4];

        snprintf(path, sizeof(path), "%s/%zu.raw", dir, i);
        uint8_t *px = read_all(path, &len);
        assert_int_equal(len, (size_t)ref[i].w * ref[i].h * ref[i].ch);
        hashes_of(px, ref[i].w, ref[i].h, (size_t)ref[i].w * ref[i].ch, ref[i].ch, &ph, &dh);
        free(px);
        unlink(path);
        d[0] = ap_hamming64(ph, ref[i].ph);
        d[1] = ap_hamming64(dh, ref[i].dh);
        same_pixels_exact += d[0] == 0 && d[1] == 0;
        prep_file(corpus_images[i], &ph, &dh);
        d[2] = ap_hamming64(ph, ref[i].ph);
        d[3] = ap_hamming64(dh, ref[i].dh);
        for (int k = 0; k < 4; k++) {
            if (d[k] > MAX_FILTER_DIFF)
                fail_msg("%s: %s %s distance %d from the reference", corpus_images[i],
                         k < 2 ? "same pixels" : "ap_prep", k % 2 ? "dhash" : "phash", d[k]);
            worst[k] = imax(worst[k], d[k]);
        }
    }
    print_message("reference, %zu corpus images: same pixels %d/%zu identical (worst phash %d, "
                  "dhash %d); through ap_prep worst phash %d, dhash %d\n",
                  N_CORPUS, same_pixels_exact, N_CORPUS, worst[0], worst[1], worst[2], worst[3]);
    rmdir(dir);
    free(args);
}

/* ---- the behaviour, through the pipeline */

static void test_hash__published_vectors_through_prep(void **state)
{
    (void)state;
    size_t len;
    char *json = (char *)read_all(PHASH_DIR "/imagehash_tests/expected.json", &len);
    char *nd = (char *)read_all(PHASH_DIR "/expected_near_duplicates.json", &len);
    int worst_p = 0, worst_d = 0, n = 0;

    for (size_t i = 0; i < N_CORPUS; i++) {
        const char *rel = corpus_images[i], *at;
        uint64_t ph, dh, want_p, want_d;

        if (strncmp(rel, "imagehash_tests/", 16) == 0) {
            at = strstr(json, rel + 16);
            assert_non_null(at);
            want_p =
                json_hash(at, strstr(rel, "peppers") ? "reproduced_here" : "published", "phash");
            want_d =
                json_hash(at, strstr(rel, "peppers") ? "reproduced_here" : "published", "dhash");
        } else {
            want_p = json_hash(nd, rel, "phash");
            want_d = json_hash(nd, rel, "dhash");
        }
        prep_file(rel, &ph, &dh);
        if (ap_hamming64(ph, want_p) > MAX_FILTER_DIFF ||
            ap_hamming64(dh, want_d) > MAX_FILTER_DIFF)
            fail_msg("%s: phash distance %d, dhash %d from the expected values", rel,
                     ap_hamming64(ph, want_p), ap_hamming64(dh, want_d));
        worst_p = imax(worst_p, ap_hamming64(ph, want_p));
        worst_d = imax(worst_d, ap_hamming64(dh, want_d));
        n++;
    }
    print_message("expected vectors, %d images through ap_prep: worst phash %d, dhash %d\n", n,
                  worst_p, worst_d);
    free(json);
    free(nd);
}

static const char *const originals[] = {
    "near-duplicates/nikon_d90__original.jpg", "near-duplicates/canon_20d__original.jpg",
    "near-duplicates/iphone6__original.jpg",   "near-duplicates/iphone6_hdr_off.jpg",
    "imagehash_tests/imagehash.png",           "imagehash_tests/peppers.png",
};
#define N_ORIGINALS (sizeof(originals) / sizeof(originals[0]))

static void test_hash__reencode_and_rescale_stay_within_6(void **state)
{
    (void)state;
    static const int qualities[] = {50, 65, 78, 95};
    static const uint32_t edges[] = {1024, 512, 256};
    int worst_q[2] = {0}, worst_s[2] = {0};

    for (size_t o = 0; o < N_ORIGINALS; o++) {
        char path[512];
        size_t len, out_len;
        uint8_t *buf, *out;
        uint64_t ph0, dh0, ph, dh;

        snprintf(path, sizeof(path), "%s/%s", PHASH_DIR, originals[o]);
        buf = read_all(path, &len);
        prep_hashes(buf, len, 0, 0, &ph0, &dh0, NULL, NULL);
        for (size_t q = 0; q < sizeof(qualities) / sizeof(qualities[0]); q++) {
            /* Re-encode at full size, then hash the re-encoded file. */
            prep_hashes(buf, len, 0, qualities[q], &ph, &dh, &out, &out_len);
            prep_hashes(out, out_len, 0, 0, &ph, &dh, NULL, NULL);
            free(out);
            if (ap_hamming64(ph, ph0) > MAX_SAME_PICTURE ||
                ap_hamming64(dh, dh0) > MAX_SAME_PICTURE)
                fail_msg("%s at q%d: phash distance %d, dhash %d", originals[o], qualities[q],
                         ap_hamming64(ph, ph0), ap_hamming64(dh, dh0));
            worst_q[0] = imax(worst_q[0], ap_hamming64(ph, ph0));
            worst_q[1] = imax(worst_q[1], ap_hamming64(dh, dh0));
        }
        for (size_t e = 0; e < sizeof(edges) / sizeof(edges[0]); e++) {
            /* Rescale (and re-encode at the default quality), then hash the file. */
            prep_hashes(buf, len, edges[e], 0, &ph, &dh, &out, &out_len);
            prep_hashes(out, out_len, 0, 0, &ph, &dh, NULL, NULL);
            free(out);
            if (ap_hamming64(ph, ph0) > MAX_SAME_PICTURE ||
                ap_hamming64(dh, dh0) > MAX_SAME_PICTURE)
                fail_msg("%s at long edge %u: phash distance %d, dhash %d", originals[o], edges[e],
                         ap_hamming64(ph, ph0), ap_hamming64(dh, dh0));
            worst_s[0] = imax(worst_s[0], ap_hamming64(ph, ph0));
            worst_s[1] = imax(worst_s[1], ap_hamming64(dh, dh0));
        }
        free(buf);
    }
    /* The corpus's own re-encoded and half-size variants (made with Pillow). */
    static const char *const variants[][2] = {
        {"near-duplicates/nikon_d90__original.jpg", "near-duplicates/nikon_d90__reencode_q40.jpg"},
        {"near-duplicates/nikon_d90__original.jpg", "near-duplicates/nikon_d90__half_size.jpg"},
        {"near-duplicates/canon_20d__original.jpg", "near-duplicates/canon_20d__reencode_q40.jpg"},
        {"near-duplicates/canon_20d__original.jpg", "near-duplicates/canon_20d__half_size.jpg"},
        {"near-duplicates/iphone6__original.jpg", "near-duplicates/iphone6__reencode_q40.jpg"},
        {"near-duplicates/iphone6__original.jpg", "near-duplicates/iphone6__half_size.jpg"},
    };
    for (size_t i = 0; i < sizeof(variants) / sizeof(variants[0]); i++) {
        uint64_t ph0, dh0, ph, dh;
        prep_file(variants[i][0], &ph0, &dh0);
        prep_file(variants[i][1], &ph, &dh);
        if (ap_hamming64(ph, ph0) > MAX_SAME_PICTURE || ap_hamming64(dh, dh0) > MAX_SAME_PICTURE)
            fail_msg("%s: phash distance %d, dhash %d", variants[i][1], ap_hamming64(ph, ph0),
                     ap_hamming64(dh, dh0));
        int *worst = strstr(variants[i][1], "half") ? worst_s : worst_q;
        worst[0] = imax(worst[0], ap_hamming64(ph, ph0));
        worst[1] = imax(worst[1], ap_hamming64(dh, dh0));
    }
    print_message("re-encoded: worst phash %d, dhash %d; rescaled: worst phash %d, dhash %d\n",
                  worst_q[0], worst_q[1], worst_s[0], worst_s[1]);
}

static void test_hash__different_photos_are_20_apart(void **state)
{
    (void)state;
    uint64_t ph[N_ORIGINALS], dh[N_ORIGINALS];
    int min_p = 64, min_d = 64;

    for (size_t i = 0; i < N_ORIGINALS; i++)
        prep_file(originals[i], &ph[i], &dh[i]);
    for (size_t i = 0; i < N_ORIGINALS; i++)
        for (size_t j = i + 1; j < N_ORIGINALS; j++) {
            int dp = ap_hamming64(ph[i], ph[j]), dd = ap_hamming64(dh[i], dh[j]);
            if (dp < MIN_DIFFERENT || dd < MIN_DIFFERENT)
                fail_msg("%s vs %s: phash distance %d, dhash %d", originals[i], originals[j], dp,
                         dd);
            min_p = dp < min_p ? dp : min_p;
            min_d = dd < min_d ? dd : min_d;
        }
    print_message("%zu different photos: closest pair phash %d, dhash %d\n", N_ORIGINALS, min_p,
                  min_d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash__sha256_known_vectors),
        cmocka_unit_test(test_hash__hex_prints_and_parses_like_imagehash),
        cmocka_unit_test(test_hash__hamming_counts_differing_bits),
        cmocka_unit_test(test_hash__rejects_bad_arguments),
        cmocka_unit_test(test_hash__gray_matches_pillow_convert_l),
        cmocka_unit_test(test_hash__layouts_and_strides_agree),
        cmocka_unit_test(test_hash__dhash_reads_horizontal_gradients),
        cmocka_unit_test(test_hash__flat_and_tiny_images_hash_deterministically),
        cmocka_unit_test(test_hash__published_vectors_exact_on_png_pixels),
        cmocka_unit_test(test_hash__matches_reference_on_synthetic_pixels),
        cmocka_unit_test(test_hash__matches_reference_on_corpus),
        cmocka_unit_test(test_hash__published_vectors_through_prep),
        cmocka_unit_test(test_hash__reencode_and_rescale_stay_within_6),
        cmocka_unit_test(test_hash__different_photos_are_20_apart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
