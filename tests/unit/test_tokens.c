/*
 * test_tokens.c - the token estimator and the price table.
 *
 * Every published example from the providers' documentation is pinned here (sources in
 * docs/internals/tokens.md), plus the edge cases: 1x1, 100000x10, zero sides, odd names.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aperture/tokens.h"

/* Estimate or fail the test; returns the tokens. */
static uint64_t est(const char *model, uint32_t w, uint32_t h, ap_tokens_detail d,
                    ap_tokens_result *res)
{
    ap_error err = {0};
    ap_status st = ap_tokens_estimate(model, w, h, d, res, &err);
    if (st != AP_OK)
        fail_msg("%s %ux%u: %s %s", model, (unsigned)w, (unsigned)h, ap_strerror(st), err.msg);
    return res->tokens;
}

static uint64_t tokens_of(const char *model, uint32_t w, uint32_t h, ap_tokens_detail d)
{
    ap_tokens_result r;
    return est(model, w, h, d, &r);
}

/* ---- OpenAI tile models -------------------------------------------------------------------- */

static void test_tokens__openai_tile_published_examples(void **state)
{
    (void)state;
    ap_tokens_result r;
    /* platform.openai.com/docs/guides/images-vision#calculating-costs */
    assert_int_equal(est("gpt-4o", 1024, 1024, AP_TOKENS_DETAIL_HIGH, &r), 765);
    assert_int_equal(r.formula, AP_TOKENS_OPENAI_TILE);
    assert_string_equal(r.formula_name, "openai-tile");
    assert_int_equal(r.units, 4);
    assert_int_equal(r.eff_width, 768);
    assert_int_equal(r.eff_height, 768);

    assert_int_equal(est("gpt-4o", 2048, 4096, AP_TOKENS_DETAIL_HIGH, &r), 1105);
    assert_int_equal(r.eff_width, 768);
    assert_int_equal(r.eff_height, 1536);
    assert_int_equal(r.units, 6);

    assert_int_equal(est("gpt-4o", 4032, 3024, AP_TOKENS_DETAIL_HIGH, &r), 765);
    assert_int_equal(r.eff_width, 1024);
    assert_int_equal(r.eff_height, 768);

    assert_int_equal(est("gpt-4o", 4032, 3024, AP_TOKENS_DETAIL_LOW, &r), 85);
    assert_int_equal(r.units, 0);
    assert_int_equal(tokens_of("gpt-4o", 1, 1, AP_TOKENS_DETAIL_LOW), 85);
}

static void test_tokens__openai_auto_is_high(void **state)
{
    (void)state;
    static const uint32_t sizes[][2] = {{1024, 1024}, {2048, 4096}, {300, 200}, {5000, 100}};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        assert_int_equal(tokens_of("gpt-4o", sizes[i][0], sizes[i][1], AP_TOKENS_DETAIL_AUTO),
                         tokens_of("gpt-4o", sizes[i][0], sizes[i][1], AP_TOKENS_DETAIL_HIGH));
    }
}

static void test_tokens__openai_tile_small_image_is_one_tile(void **state)
{
    (void)state;
    /* Never upscaled: 512x512 is exactly one tile, 513 wide is two. */
    assert_int_equal(tokens_of("gpt-4o", 512, 512, AP_TOKENS_DETAIL_HIGH), 85 + 170);
    assert_int_equal(tokens_of("gpt-4o", 513, 512, AP_TOKENS_DETAIL_HIGH), 85 + 340);
    assert_int_equal(tokens_of("gpt-4o", 1, 1, AP_TOKENS_DETAIL_HIGH), 85 + 170);
}

static void test_tokens__openai_tile_per_model_constants(void **state)
{
    (void)state;
    /* 1024x1024 high is 4 tiles everywhere. */
    assert_int_equal(tokens_of("gpt-4o-mini", 1024, 1024, AP_TOKENS_DETAIL_HIGH), 2833 + 4 * 5667);
    assert_int_equal(tokens_of("gpt-4o-mini", 1024, 1024, AP_TOKENS_DETAIL_LOW), 2833);
    assert_int_equal(tokens_of("gpt-4.1", 1024, 1024, AP_TOKENS_DETAIL_HIGH), 765);
    assert_int_equal(tokens_of("gpt-4.5-preview", 1024, 1024, AP_TOKENS_DETAIL_HIGH), 765);
    assert_int_equal(tokens_of("o1", 1024, 1024, AP_TOKENS_DETAIL_HIGH), 75 + 4 * 150);
    assert_int_equal(tokens_of("o3", 1024, 1024, AP_TOKENS_DETAIL_LOW), 75);
    assert_int_equal(tokens_of("gpt-5", 1024, 1024, AP_TOKENS_DETAIL_HIGH), 70 + 4 * 140);
    assert_int_equal(tokens_of("gpt-5-chat-latest", 1024, 1024, AP_TOKENS_DETAIL_LOW), 70);
}

/* ---- OpenAI patch models ------------------------------------------------------------------- */

static void test_tokens__openai_patch_published_examples(void **state)
{
    (void)state;
    ap_tokens_result r;
    /* 1024x1024 -> 32*32 = 1024 patches; 1.62 multiplier: ceil(1658.88). */
    assert_int_equal(est("gpt-4.1-mini", 1024, 1024, AP_TOKENS_DETAIL_AUTO, &r), 1659);
    assert_int_equal(r.formula, AP_TOKENS_OPENAI_PATCH);
    assert_int_equal(r.units, 1024);
    assert_int_equal(r.eff_width, 1024);

    /* 1800x2400 -> 4275 raw -> resized 1056x1408 -> 33*44 = 1452 patches. */
    assert_int_equal(est("gpt-4.1-mini", 1800, 2400, AP_TOKENS_DETAIL_AUTO, &r), 2353);
    assert_int_equal(r.units, 1452);
    assert_int_equal(r.eff_width, 1056);
    assert_int_equal(r.eff_height, 1408);
}

static void test_tokens__openai_patch_multipliers(void **state)
{
    (void)state;
    ap_tokens_result r;
    assert_int_equal(tokens_of("gpt-4.1-nano", 1024, 1024, AP_TOKENS_DETAIL_AUTO), 2520);
    assert_int_equal(tokens_of("gpt-5-mini", 1024, 1024, AP_TOKENS_DETAIL_AUTO), 1659);
    assert_int_equal(tokens_of("gpt-5-nano", 1024, 1024, AP_TOKENS_DETAIL_AUTO), 2520);
    assert_int_equal(tokens_of("o4-mini", 1024, 1024, AP_TOKENS_DETAIL_AUTO), 1762);
    /* Exactly 1536 patches needs no resize; detail does not change a patch count. */
    est("o4-mini", 2048, 768, AP_TOKENS_DETAIL_LOW, &r);
    assert_int_equal(r.units, 1536);
    assert_int_equal(r.tokens, (1536 * 172 + 99) / 100);
}

static void test_tokens__openai_patch_large_images_stay_under_cap(void **state)
{
    (void)state;
    ap_tokens_result r;
    static const uint32_t sizes[][2] = {{4032, 3024}, {3000, 3000}, {8000, 100},
                                        {100000, 10}, {10, 100000}, {65535, 65535}};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        est("gpt-4.1-nano", sizes[i][0], sizes[i][1], AP_TOKENS_DETAIL_HIGH, &r);
        assert_true(r.units >= 1 && r.units <= 1536);
    }
    est("gpt-4.1-mini", 4032, 3024, AP_TOKENS_DETAIL_HIGH, &r);
    assert_int_equal(r.units, 1452); /* 1408x1056 */
    est("gpt-4.1-mini", 3000, 3000, AP_TOKENS_DETAIL_HIGH, &r);
    assert_int_equal(r.units, 1521); /* 1248x1248: 39*39 */
}

/* ---- Anthropic ----------------------------------------------------------------------------- */

static void test_tokens__anthropic_published_examples(void **state)
{
    (void)state;
    ap_tokens_result r;
    /* docs.anthropic.com vision: 200x200 ~54, 1000x1000 ~1334, 1092x1092 ~1590. */
    assert_int_equal(est("claude-sonnet-4-5", 200, 200, AP_TOKENS_DETAIL_AUTO, &r), 54);
    assert_int_equal(r.formula, AP_TOKENS_ANTHROPIC);
    assert_int_equal(tokens_of("claude-sonnet-4-5", 1000, 1000, AP_TOKENS_DETAIL_AUTO), 1334);
    assert_int_equal(est("claude-3-5-sonnet-20241022", 1092, 1092, AP_TOKENS_DETAIL_AUTO, &r),
                     1590);
    assert_int_equal(r.eff_width, 1092); /* not resized */
    assert_int_equal(r.eff_height, 1092);
}

static void test_tokens__anthropic_downscales_large_images(void **state)
{
    (void)state;
    ap_tokens_result r;
    est("claude-opus-4-1", 4032, 3024, AP_TOKENS_DETAIL_AUTO, &r);
    assert_true(r.tokens <= 1600 && r.tokens >= 1580);
    assert_true(r.eff_width <= 1568);
    assert_true((uint64_t)r.eff_width * r.eff_height <= 1200000);
    /* Long edge alone: 1600x400 -> 1568x392. */
    est("claude-haiku-4-5", 1600, 400, AP_TOKENS_DETAIL_AUTO, &r);
    assert_int_equal(r.eff_width, 1568);
    assert_int_equal(r.eff_height, 392);
    assert_int_equal(r.tokens, (1568 * 392 + 749) / 750);
    est("claude", 100000, 10, AP_TOKENS_DETAIL_AUTO, &r);
    assert_int_equal(r.eff_width, 1568);
    assert_int_equal(r.eff_height, 1);
    assert_int_equal(tokens_of("claude-3-haiku", 1, 1, AP_TOKENS_DETAIL_AUTO), 1);
}

/* ---- Gemini -------------------------------------------------------------------------------- */

static void test_tokens__gemini2_tiles_of_768(void **state)
{
    (void)state;
    ap_tokens_result r;
    /* ai.google.dev/gemini-api/docs/tokens: <= 384 both sides is 258, else 768 px tiles. */
    assert_int_equal(est("gemini-2.0-flash", 384, 384, AP_TOKENS_DETAIL_AUTO, &r), 258);
    assert_int_equal(r.formula, AP_TOKENS_GEMINI_TILE);
    assert_string_equal(r.rule, "gemini");
    assert_int_equal(tokens_of("gemini-2.0-flash", 1, 1, AP_TOKENS_DETAIL_AUTO), 258);
    assert_int_equal(tokens_of("gemini-2.0-flash", 385, 100, AP_TOKENS_DETAIL_AUTO), 258);
    assert_int_equal(tokens_of("gemini-2.0-flash", 768, 768, AP_TOKENS_DETAIL_AUTO), 258);
    assert_int_equal(tokens_of("gemini-2.0-flash", 769, 768, AP_TOKENS_DETAIL_AUTO), 2 * 258);
    assert_int_equal(tokens_of("gemini-2.5-flash", 1024, 1024, AP_TOKENS_DETAIL_AUTO), 4 * 258);
    /* 4032x3024: 6 x 4 tiles. */
    assert_int_equal(est("gemini-2.5-pro", 4032, 3024, AP_TOKENS_DETAIL_AUTO, &r), 24 * 258);
    assert_int_equal(r.units, 24);
    assert_int_equal(tokens_of("gemini-2.0-flash", 100000, 10, AP_TOKENS_DETAIL_AUTO), 131 * 258);
}

static void test_tokens__gemini15_crop_unit_tiles(void **state)
{
    (void)state;
    ap_tokens_result r;
    /* Vertex AI, Gemini 1.5: tile = clamp(floor(min side / 1.5), 256, 768). */
    assert_int_equal(est("gemini-1.5-flash", 384, 384, AP_TOKENS_DETAIL_AUTO, &r), 258);
    assert_string_equal(r.rule, "gemini-1.5");
    /* 385x100: unit floor(100/1.5) = 66 -> clamped 256 -> 2x1 tiles. */
    assert_int_equal(tokens_of("gemini-1.5-flash", 385, 100, AP_TOKENS_DETAIL_AUTO), 516);
    /* 768x768: unit 512 -> 2x2, where the 2.x rule counts one tile. */
    assert_int_equal(tokens_of("gemini-1.5-pro", 768, 768, AP_TOKENS_DETAIL_AUTO), 4 * 258);
    /* 1024x1024: unit 682 -> 2x2. */
    assert_int_equal(tokens_of("gemini-1.5-pro", 1024, 1024, AP_TOKENS_DETAIL_AUTO), 4 * 258);
    /* 4032x3024: unit 2016 -> clamped 768 -> 6x4. */
    assert_int_equal(est("gemini-1.5-pro-002", 4032, 3024, AP_TOKENS_DETAIL_AUTO, &r), 24 * 258);
    assert_int_equal(r.units, 24);
    /* 100000x10: unit 256 -> 391 x 1. */
    assert_int_equal(tokens_of("gemini-1.5-flash", 100000, 10, AP_TOKENS_DETAIL_AUTO), 391 * 258);
}

static void test_tokens__gemini3_fixed_media_resolution(void **state)
{
    (void)state;
    ap_tokens_result r;
    ap_tokens_opts o;
    ap_error err = {0};
    assert_int_equal(est("gemini-3-pro-preview", 4032, 3024, AP_TOKENS_DETAIL_AUTO, &r), 1120);
    assert_int_equal(r.formula, AP_TOKENS_GEMINI_FIXED);
    assert_int_equal(tokens_of("gemini-3-pro-preview", 1, 1, AP_TOKENS_DETAIL_HIGH), 1120);
    assert_int_equal(tokens_of("gemini-3-flash", 1, 1, AP_TOKENS_DETAIL_LOW), 280);
    ap_tokens_opts_init(&o);
    o.media_res = AP_TOKENS_MEDIA_MEDIUM;
    assert_int_equal(ap_tokens_estimate_opts("gemini-3-pro", 800, 600, &o, &r, &err), AP_OK);
    assert_int_equal(r.tokens, 560);
    o.media_res = AP_TOKENS_MEDIA_ULTRA_HIGH;
    assert_int_equal(ap_tokens_estimate_opts("gemini-3-pro", 800, 600, &o, &r, &err), AP_OK);
    assert_int_equal(r.tokens, 2240);
    o.media_res = (ap_tokens_media_res)9;
    assert_int_equal(ap_tokens_estimate_opts("gemini-3-pro", 800, 600, &o, &r, &err), AP_EINVAL);
}

/* ---- Qwen2-VL ------------------------------------------------------------------------------ */

static void test_tokens__qwen_12mp_photo(void **state)
{
    (void)state;
    ap_tokens_result r;
    /* The issue: a 12 MP photo at the default max_pixels is ~15,000 tokens: 144 x 108. */
    assert_int_equal(est("qwen2.5-vl-7b", 4032, 3024, AP_TOKENS_DETAIL_AUTO, &r), 15552);
    assert_int_equal(r.formula, AP_TOKENS_QWEN2_VL);
    assert_int_equal(r.eff_width, 4032);
    assert_int_equal(r.eff_height, 3024);
    assert_int_equal(tokens_of("Qwen/Qwen2-VL-7B-Instruct", 4032, 3024, AP_TOKENS_DETAIL_LOW),
                     15552);
    assert_int_equal(tokens_of("qwen2.5vl:7b", 4032, 3024, AP_TOKENS_DETAIL_AUTO), 15552);
}

static void test_tokens__qwen_smart_resize_bounds(void **state)
{
    (void)state;
    ap_tokens_result r;
    ap_tokens_opts o;
    ap_error err = {0};
    /* Over max_pixels: beta = sqrt(3e8 / 12845056) -> 4116x3080 = 147 x 110 (checked in Python). */
    assert_int_equal(est("qwen2-vl-2b", 20000, 15000, AP_TOKENS_DETAIL_AUTO, &r), 16170);
    assert_int_equal(r.eff_width, 4116);
    assert_int_equal(r.eff_height, 3080);
    /* Under min_pixels: 1x1 -> 56x56 -> 4 tokens. */
    assert_int_equal(est("qwen2-vl-2b", 1, 1, AP_TOKENS_DETAIL_AUTO, &r), 4);
    assert_int_equal(r.eff_width, 56);
    /* A side rounding to 0 is lifted to 28: 10x2000 -> 28x1988 -> 71. */
    assert_int_equal(tokens_of("qwen2-vl-2b", 10, 2000, AP_TOKENS_DETAIL_AUTO), 71);
    /* Custom bounds: 1280 tokens max. 1024x1024 -> round 1036 -> over -> 980x980 = 35*35. */
    ap_tokens_opts_init(&o);
    o.qwen_max_pixels = 1280 * 28 * 28;
    assert_int_equal(ap_tokens_estimate_opts("qwen2.5-vl-72b", 1024, 1024, &o, &r, &err), AP_OK);
    assert_int_equal(r.tokens, 1225);
    o.qwen_min_pixels = o.qwen_max_pixels + 1;
    assert_int_equal(ap_tokens_estimate_opts("qwen2.5-vl-72b", 1024, 1024, &o, &r, &err),
                     AP_EINVAL);
}

static void test_tokens__qwen_rounds_half_to_even(void **state)
{
    (void)state;
    ap_tokens_result r;
    /* 70 / 28 = 2.5 rounds to 2 (Python), not 3: 280x70 -> 280x56 -> 10 x 2. */
    assert_int_equal(est("qwen2-vl-7b", 280, 70, AP_TOKENS_DETAIL_AUTO, &r), 20);
    assert_int_equal(r.eff_height, 56);
    /* 98 / 28 = 3.5 rounds to 4: 98x280 -> 112x280 -> 4 x 10. */
    assert_int_equal(est("qwen2-vl-7b", 98, 280, AP_TOKENS_DETAIL_AUTO, &r), 40);
    assert_int_equal(r.eff_width, 112);
}

static void test_tokens__qwen_refuses_extreme_aspect(void **state)
{
    (void)state;
    ap_tokens_result r;
    ap_error err = {0};
    assert_int_equal(
        ap_tokens_estimate("qwen2.5-vl-7b", 100000, 10, AP_TOKENS_DETAIL_AUTO, &r, &err),
        AP_EINVAL);
    assert_non_null(strstr(err.msg, "aspect ratio"));
    /* 200:1 exactly is allowed. */
    assert_int_equal(tokens_of("qwen2.5-vl-7b", 2000, 10, AP_TOKENS_DETAIL_AUTO), 71);
}

/* ---- generic ------------------------------------------------------------------------------- */

static void test_tokens__generic_default_and_custom(void **state)
{
    (void)state;
    ap_tokens_result r;
    ap_tokens_opts o;
    ap_error err = {0};
    /* Unknown model: 14 px, 2x2 merged, within 1,003,520 px. 1024x1024 -> 1001x1001 -> 72^2/4. */
    assert_int_equal(est("llava-v1.6-mistral-7b", 1024, 1024, AP_TOKENS_DETAIL_AUTO, &r), 1296);
    assert_int_equal(r.formula, AP_TOKENS_GENERIC_PATCH);
    assert_int_equal(r.eff_width, 1001);
    assert_int_equal(tokens_of("llava", 1, 1, AP_TOKENS_DETAIL_AUTO), 1);

    ap_tokens_patch_formula f = {
        .patch_px = 16, .max_pixels = 0, .tokens_per_patch = 1.0, .extra_tokens = 2};
    ap_tokens_opts_init(&o);
    o.generic = &f;
    assert_int_equal(ap_tokens_estimate_opts("pixtral-12b", 64, 48, &o, &r, &err), AP_OK);
    assert_int_equal(r.tokens, 4 * 3 + 2);
    assert_int_equal(ap_tokens_estimate_opts("pixtral-12b", 100000, 10, &o, &r, &err), AP_OK);
    assert_int_equal(r.units, 6250);

    f.patch_px = 0;
    assert_int_equal(ap_tokens_estimate_opts("pixtral-12b", 64, 48, &o, &r, &err), AP_EINVAL);
    f.patch_px = 16;
    f.tokens_per_patch = NAN;
    assert_int_equal(ap_tokens_estimate_opts("pixtral-12b", 64, 48, &o, &r, &err), AP_EINVAL);
    /* A formula for unknown models does not touch known ones. */
    assert_int_equal(ap_tokens_estimate_opts("gpt-4o", 1024, 1024, &o, &r, &err), AP_OK);
    assert_int_equal(r.tokens, 765);
}

/* ---- names and edge cases ------------------------------------------------------------------ */

static void test_tokens__model_names_match_by_prefix(void **state)
{
    (void)state;
    ap_tokens_result r;
    est("gpt-4o-mini-2024-07-18", 1024, 1024, AP_TOKENS_DETAIL_LOW, &r);
    assert_string_equal(r.rule, "gpt-4o-mini");
    est("GPT-4o-2024-08-06", 1024, 1024, AP_TOKENS_DETAIL_LOW, &r);
    assert_string_equal(r.rule, "gpt-4o");
    est("openai/gpt-4.1-mini", 1024, 1024, AP_TOKENS_DETAIL_LOW, &r);
    assert_string_equal(r.rule, "gpt-4.1-mini");
    est("gpt-4.1-2025-04-14", 1024, 1024, AP_TOKENS_DETAIL_LOW, &r);
    assert_string_equal(r.rule, "gpt-4.1");
    est("gpt-5.1", 1024, 1024, AP_TOKENS_DETAIL_LOW, &r);
    assert_string_equal(r.rule, "gpt-5");
    est("gpt-5-nano-2025-08-07", 1024, 1024, AP_TOKENS_DETAIL_LOW, &r);
    assert_string_equal(r.rule, "gpt-5-nano");
    est("O3", 1024, 1024, AP_TOKENS_DETAIL_LOW, &r);
    assert_string_equal(r.rule, "o3");
    est("claude-sonnet-4-5@20250929", 1024, 1024, AP_TOKENS_DETAIL_LOW, &r);
    assert_int_equal(r.formula, AP_TOKENS_ANTHROPIC);
    est("gemini-3.0-pro", 1024, 1024, AP_TOKENS_DETAIL_AUTO, &r);
    assert_int_equal(r.formula, AP_TOKENS_GEMINI_FIXED);
    /* Not a boundary: these are not the models they start like. */
    est("gpt-4omni", 1024, 1024, AP_TOKENS_DETAIL_LOW, &r);
    assert_int_equal(r.formula, AP_TOKENS_GENERIC_PATCH);
    est("o10", 1024, 1024, AP_TOKENS_DETAIL_LOW, &r);
    assert_int_equal(r.formula, AP_TOKENS_GENERIC_PATCH);
    est("gemini", 1024, 1024, AP_TOKENS_DETAIL_LOW, &r);
    assert_int_equal(r.formula, AP_TOKENS_GEMINI_TILE);

    /* The classification alone, as the CLI uses it to pick a preprocessing target. */
    assert_int_equal(ap_tokens_model_formula("gpt-4o"), AP_TOKENS_OPENAI_TILE);
    assert_int_equal(ap_tokens_model_formula("gpt-4.1-mini"), AP_TOKENS_OPENAI_PATCH);
    assert_int_equal(ap_tokens_model_formula("claude-sonnet-4-5"), AP_TOKENS_ANTHROPIC);
    assert_int_equal(ap_tokens_model_formula("gemini-2.0-flash"), AP_TOKENS_GEMINI_TILE);
    assert_int_equal(ap_tokens_model_formula("gemini-3-pro"), AP_TOKENS_GEMINI_FIXED);
    assert_int_equal(ap_tokens_model_formula("qwen2.5-vl-7b"), AP_TOKENS_QWEN2_VL);
    assert_int_equal(ap_tokens_model_formula("llava"), AP_TOKENS_GENERIC_PATCH);
    assert_int_equal(ap_tokens_model_formula(""), AP_TOKENS_GENERIC_PATCH);
    assert_int_equal(ap_tokens_model_formula(NULL), AP_TOKENS_GENERIC_PATCH);
}

static const char *const all_models[] = {
    "gpt-4o",           "gpt-4o-mini",  "gpt-4.1-mini",  "o4-mini",  "claude-sonnet-4-5",
    "gemini-2.0-flash", "gemini-3-pro", "qwen2.5-vl-7b", "some-vlm",
};

static void test_tokens__zero_size_is_einval(void **state)
{
    (void)state;
    ap_tokens_result r;
    ap_error err = {0};
    for (size_t i = 0; i < sizeof(all_models) / sizeof(all_models[0]); i++) {
        memset(&r, 0xAB, sizeof(r));
        assert_int_equal(ap_tokens_estimate(all_models[i], 0, 10, AP_TOKENS_DETAIL_AUTO, &r, &err),
                         AP_EINVAL);
        assert_int_equal(ap_tokens_estimate(all_models[i], 10, 0, AP_TOKENS_DETAIL_AUTO, &r, NULL),
                         AP_EINVAL);
        assert_int_equal(r.tokens, 0xABABABABABABABABull); /* untouched on failure */
    }
    assert_int_equal(err.code, AP_EINVAL);
    assert_non_null(strstr(err.msg, "zero side"));
    assert_int_equal(ap_tokens_estimate(NULL, 10, 10, AP_TOKENS_DETAIL_AUTO, &r, NULL), AP_EINVAL);
    assert_int_equal(ap_tokens_estimate("", 10, 10, AP_TOKENS_DETAIL_AUTO, &r, NULL), AP_EINVAL);
    assert_int_equal(ap_tokens_estimate("gpt-4o", 10, 10, (ap_tokens_detail)7, &r, NULL),
                     AP_EINVAL);
}

static void test_tokens__tiny_and_huge_images(void **state)
{
    (void)state;
    ap_tokens_result r;
    ap_error err = {0};
    for (size_t i = 0; i < sizeof(all_models) / sizeof(all_models[0]); i++) {
        assert_int_equal(ap_tokens_estimate(all_models[i], 1, 1, AP_TOKENS_DETAIL_AUTO, &r, &err),
                         AP_OK);
        assert_true(r.tokens > 0);
        assert_true(r.eff_width >= 1 && r.eff_height >= 1);
        assert_true(r.how[0] != '\0');

        ap_status st =
            ap_tokens_estimate(all_models[i], 100000, 10, AP_TOKENS_DETAIL_HIGH, &r, &err);
        if (strstr(all_models[i], "qwen") != NULL) {
            assert_int_equal(st, AP_EINVAL); /* the processor refuses 10000:1 */
            continue;
        }
        assert_int_equal(st, AP_OK);
        assert_true(r.tokens > 0 && r.tokens < 200000);
        assert_true(r.eff_width >= 1 && r.eff_height >= 1);
    }
    /* 100000x10 on the tile rule: fit 2048 -> 2048x1 -> 4 tiles. */
    assert_int_equal(tokens_of("gpt-4o", 100000, 10, AP_TOKENS_DETAIL_HIGH), 85 + 4 * 170);
    /* The largest sides an API could name do not overflow. */
    assert_int_equal(
        ap_tokens_estimate("some-vlm", UINT32_MAX, UINT32_MAX, AP_TOKENS_DETAIL_AUTO, &r, &err),
        AP_OK);
    assert_int_equal(
        ap_tokens_estimate("gpt-4.1-mini", UINT32_MAX, 1, AP_TOKENS_DETAIL_AUTO, &r, &err), AP_OK);
    assert_true(r.units <= 1536);
}

static void test_tokens__names_of_enums(void **state)
{
    (void)state;
    ap_tokens_detail d = AP_TOKENS_DETAIL_AUTO;
    assert_int_equal(ap_tokens_detail_parse("low", &d), AP_OK);
    assert_int_equal(d, AP_TOKENS_DETAIL_LOW);
    assert_int_equal(ap_tokens_detail_parse("high", &d), AP_OK);
    assert_int_equal(d, AP_TOKENS_DETAIL_HIGH);
    assert_int_equal(ap_tokens_detail_parse("auto", &d), AP_OK);
    assert_int_equal(d, AP_TOKENS_DETAIL_AUTO);
    assert_int_equal(ap_tokens_detail_parse("HIGH", &d), AP_EINVAL);
    assert_int_equal(ap_tokens_detail_parse(NULL, &d), AP_EINVAL);
    assert_string_equal(ap_tokens_detail_name(AP_TOKENS_DETAIL_LOW), "low");
    assert_string_equal(ap_tokens_formula_name(AP_TOKENS_QWEN2_VL), "qwen2-vl");
    assert_string_equal(ap_tokens_formula_name((ap_tokens_formula)99), "unknown");
}

/* ---- pricing ------------------------------------------------------------------------------- */

static void test_tokens__pricing_builtin_lookup(void **state)
{
    (void)state;
    ap_price pr;
    ap_error err = {0};
    assert_int_equal(ap_pricing_lookup(NULL, "gpt-4o", &pr, &err), AP_OK);
    assert_true(pr.usd_per_mtok_input == 2.50);
    assert_true(pr.builtin);
    assert_int_equal(ap_pricing_lookup(NULL, "gpt-4o-mini-2024-07-18", &pr, &err), AP_OK);
    assert_string_equal(pr.model, "gpt-4o-mini");
    assert_int_equal(ap_pricing_lookup(NULL, "claude-sonnet-4-5-20250929", &pr, &err), AP_OK);
    assert_string_equal(pr.model, "claude-sonnet-4-5");
    assert_int_equal(ap_pricing_lookup(NULL, "claude-opus-4-20250514", &pr, &err), AP_OK);
    assert_string_equal(pr.model, "claude-opus-4");
    assert_int_equal(ap_pricing_lookup(NULL, "gemini-2.0-flash-lite-001", &pr, &err), AP_OK);
    assert_string_equal(pr.model, "gemini-2.0-flash-lite");
    assert_int_equal(ap_pricing_lookup(NULL, "qwen2.5-vl-7b", &pr, &err), AP_ENOTFOUND);
    assert_non_null(strstr(err.msg, "qwen2.5-vl-7b"));
    assert_int_equal(ap_pricing_lookup(NULL, "", &pr, NULL), AP_EINVAL);

    /* Every model the CLI shows by default, bar the self-hosted one, has a price. */
    ap_pricing *p = ap_pricing_new();
    static const char *const priced[] = {"gpt-4o", "gpt-4.1-mini", "claude-sonnet-4-5",
                                         "gemini-2.0-flash"};
    for (size_t i = 0; i < sizeof(priced) / sizeof(priced[0]); i++) {
        assert_int_equal(ap_pricing_lookup(p, priced[i], &pr, NULL), AP_OK);
        assert_true(pr.usd_per_mtok_input > 0 && pr.usd_per_mtok_output > 0);
    }
    ap_pricing_free(p);
    ap_pricing_free(NULL);
}

static void test_tokens__cost(void **state)
{
    (void)state;
    double usd = -1;
    assert_int_equal(ap_tokens_cost(NULL, "gpt-4o", 765, &usd, NULL), AP_OK);
    assert_true(fabs(usd - 765 * 2.50 / 1e6) < 1e-12);
    assert_int_equal(ap_tokens_cost(NULL, "claude-sonnet-4-5", 1590, &usd, NULL), AP_OK);
    assert_true(fabs(usd - 0.00477) < 1e-12);
    usd = -1;
    assert_int_equal(ap_tokens_cost(NULL, "qwen2.5-vl-7b", 100, &usd, NULL), AP_ENOTFOUND);
    assert_true(usd == -1);
    assert_true(ap_tokens_usd(1000000, 3.0) == 3.0);
    assert_true(ap_tokens_usd(0, 3.0) == 0.0);
}

static void test_tokens__pricing_file_overrides(void **state)
{
    (void)state;
    static const char text[] = "# house prices\n"
                               "\n"
                               "gpt-4o 1.25 5   # negotiated\n"
                               "qwen2.5-vl-7b\t0.05\r\n"
                               "Qwen/Qwen2-VL-72B 0.40 0.40\n"
                               "qwen2.5-vl-7b 0.07 0.07\n"
                               "gpt-4o 1.0"; /* no final newline; replaces line 3 */
    ap_pricing *p = ap_pricing_new();
    ap_price pr;
    ap_error err = {0};
    double usd = 0;
    assert_int_equal(ap_pricing_load_buffer(p, text, strlen(text), "house.txt", &err), AP_OK);

    assert_int_equal(ap_pricing_lookup(p, "gpt-4o-2024-08-06", &pr, &err), AP_OK);
    assert_true(pr.usd_per_mtok_input == 1.0);
    assert_true(pr.usd_per_mtok_output < 0); /* the later line had none */
    assert_false(pr.builtin);
    /* A loaded short prefix does not hide a longer built-in one. */
    assert_int_equal(ap_pricing_lookup(p, "gpt-4o-mini", &pr, &err), AP_OK);
    assert_string_equal(pr.model, "gpt-4o-mini");
    assert_true(pr.builtin);
    assert_int_equal(ap_pricing_lookup(p, "Qwen/Qwen2.5-VL-7B", &pr, &err), AP_OK);
    assert_true(pr.usd_per_mtok_input == 0.07);
    assert_int_equal(ap_pricing_lookup(p, "qwen2-vl-72b-instruct", &pr, &err), AP_OK);
    assert_string_equal(pr.model, "Qwen2-VL-72B");
    assert_int_equal(ap_tokens_cost(p, "qwen2.5-vl-7b", 15552, &usd, &err), AP_OK);
    assert_true(fabs(usd - 15552 * 0.07 / 1e6) < 1e-12);
    /* The built-in table is not changed by another table's load. */
    assert_int_equal(ap_pricing_lookup(NULL, "gpt-4o", &pr, &err), AP_OK);
    assert_true(pr.usd_per_mtok_input == 2.50);
    ap_pricing_free(p);
}

static void expect_bad(const char *text, ap_status code, const char *needle)
{
    ap_pricing *p = ap_pricing_new();
    ap_error err = {0};
    ap_price pr;
    assert_int_equal(ap_pricing_load_buffer(p, text, strlen(text), "bad.txt", &err), code);
    assert_int_equal(err.code, code);
    if (strstr(err.msg, needle) == NULL)
        fail_msg("message \"%s\" lacks \"%s\"", err.msg, needle);
    /* All or nothing: the good line before the bad one was not kept. */
    assert_int_equal(ap_pricing_lookup(p, "house-model", &pr, NULL), AP_ENOTFOUND);
    ap_pricing_free(p);
}

static void test_tokens__pricing_bad_lines_name_the_line(void **state)
{
    (void)state;
    expect_bad("house-model 1\ngpt-4o abc\n", AP_EINVAL, "bad.txt:2: bad input price \"abc\"");
    expect_bad("house-model 1\n\n# c\ngpt-4o 1 x\n", AP_EINVAL, "bad.txt:4: bad output price");
    expect_bad("house-model 1\ngpt-4o\n", AP_EINVAL, "bad.txt:2: no input price");
    expect_bad("house-model 1\ngpt-4o 1 2 3\n", AP_EINVAL, "bad.txt:2: too many fields");
    expect_bad("house-model 1\ngpt-4o -1\n", AP_EINVAL, "bad.txt:2:");
    expect_bad("house-model 1\ngpt-4o nan\n", AP_EINVAL, "bad.txt:2:");
    expect_bad("house-model 1\ngpt-4o inf\n", AP_EINVAL, "bad.txt:2:");
    expect_bad("house-model 1\ngpt-4o 1e999\n", AP_EINVAL, "bad.txt:2:");
    expect_bad("house-model 1\nx/ 1\n", AP_EINVAL, "bad.txt:2: model name");

    char big[1200];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    char text[1300];
    snprintf(text, sizeof(text), "house-model 1\n%s 1\n", big);
    expect_bad(text, AP_ETOOLARGE, "bad.txt:2: line longer");
    snprintf(text, sizeof(text), "house-model 1\n%.200s 1\n", big);
    expect_bad(text, AP_ETOOLARGE, "bad.txt:2: model name");

    /* A NUL inside a line is refused rather than silently cutting it. */
    static const char nul[] = "house-model 1\ngpt\0-4o 1\n";
    ap_pricing *p = ap_pricing_new();
    ap_error err = {0};
    assert_int_equal(ap_pricing_load_buffer(p, nul, sizeof(nul) - 1, "bad.txt", &err), AP_EINVAL);
    assert_non_null(strstr(err.msg, "bad.txt:2: NUL"));
    ap_pricing_free(p);
}

static void test_tokens__pricing_load_file(void **state)
{
    (void)state;
    char path[] = "/tmp/test_tokens_prices_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *fp = fdopen(fd, "w");
    assert_non_null(fp);
    fputs("# list\nclaude-sonnet-4-5 2.5 12\nbroken line here x\n", fp);
    fclose(fp);

    ap_pricing *p = ap_pricing_new();
    ap_error err = {0};
    ap_price pr;
    assert_int_equal(ap_pricing_load_file(p, path, &err), AP_EINVAL);
    assert_non_null(strstr(err.msg, ":3: too many fields"));
    assert_non_null(strstr(err.msg, path));
    assert_int_equal(ap_pricing_lookup(p, "claude-sonnet-4-5", &pr, NULL), AP_OK);
    assert_true(pr.builtin); /* nothing from the failed load */

    fp = fopen(path, "w");
    assert_non_null(fp);
    fputs("# list\nclaude-sonnet-4-5 2.5 12\n", fp);
    fclose(fp);
    ap_error_clear(&err);
    assert_int_equal(ap_pricing_load_file(p, path, &err), AP_OK);
    assert_int_equal(ap_pricing_lookup(p, "claude-sonnet-4-5-20250929", &pr, NULL), AP_OK);
    assert_true(pr.usd_per_mtok_input == 2.5);
    assert_true(pr.usd_per_mtok_output == 12);
    unlink(path);

    ap_error_clear(&err);
    assert_int_equal(ap_pricing_load_file(p, path, &err), AP_EIO);
    assert_non_null(strstr(err.msg, "cannot open"));
    ap_pricing_free(p);
}

static void test_tokens__pricing_file_too_large(void **state)
{
    (void)state;
    size_t len = (1u << 20) + 1;
    char *buf = malloc(len);
    assert_non_null(buf);
    memset(buf, '\n', len);
    ap_pricing *p = ap_pricing_new();
    ap_error err = {0};
    assert_int_equal(ap_pricing_load_buffer(p, buf, len, "huge.txt", &err), AP_ETOOLARGE);
    assert_int_equal(ap_pricing_load_buffer(p, buf, len - 1, "huge.txt", &err), AP_OK);
    free(buf);
    ap_pricing_free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tokens__openai_tile_published_examples),
        cmocka_unit_test(test_tokens__openai_auto_is_high),
        cmocka_unit_test(test_tokens__openai_tile_small_image_is_one_tile),
        cmocka_unit_test(test_tokens__openai_tile_per_model_constants),
        cmocka_unit_test(test_tokens__openai_patch_published_examples),
        cmocka_unit_test(test_tokens__openai_patch_multipliers),
        cmocka_unit_test(test_tokens__openai_patch_large_images_stay_under_cap),
        cmocka_unit_test(test_tokens__anthropic_published_examples),
        cmocka_unit_test(test_tokens__anthropic_downscales_large_images),
        cmocka_unit_test(test_tokens__gemini2_tiles_of_768),
        cmocka_unit_test(test_tokens__gemini15_crop_unit_tiles),
        cmocka_unit_test(test_tokens__gemini3_fixed_media_resolution),
        cmocka_unit_test(test_tokens__qwen_12mp_photo),
        cmocka_unit_test(test_tokens__qwen_smart_resize_bounds),
        cmocka_unit_test(test_tokens__qwen_rounds_half_to_even),
        cmocka_unit_test(test_tokens__qwen_refuses_extreme_aspect),
        cmocka_unit_test(test_tokens__generic_default_and_custom),
        cmocka_unit_test(test_tokens__model_names_match_by_prefix),
        cmocka_unit_test(test_tokens__zero_size_is_einval),
        cmocka_unit_test(test_tokens__tiny_and_huge_images),
        cmocka_unit_test(test_tokens__names_of_enums),
        cmocka_unit_test(test_tokens__pricing_builtin_lookup),
        cmocka_unit_test(test_tokens__cost),
        cmocka_unit_test(test_tokens__pricing_file_overrides),
        cmocka_unit_test(test_tokens__pricing_bad_lines_name_the_line),
        cmocka_unit_test(test_tokens__pricing_load_file),
        cmocka_unit_test(test_tokens__pricing_file_too_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
