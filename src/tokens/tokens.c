/*
 * tokens.c - image token estimates per provider.
 *
 * Each rule below is the provider's published sizing rule, cited above its function. Where a
 * provider gives a rule in real numbers and the image it bills has whole pixels, we round to whole
 * pixels the way a resize would, and we guard ceil() against one-ulp noise (ceil_tol), so that
 * the published examples come out exactly. docs/internals/tokens.md lists every choice made where
 * the documentation is vague.
 *
 * Everything here is a pure function of its arguments: no state, no allocation.
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "aperture/tokens.h"
#include "core/core.h"
#include "tokens/tokens.h"

/* ---- name matching (shared with pricing.c) ------------------------------------------------- */

const char *ap__tokens_base_name(const char *model)
{
    const char *slash = strrchr(model, '/');
    return slash != NULL ? slash + 1 : model;
}

static int is_boundary(char c)
{
    return c == '\0' || c == '-' || c == '.' || c == '_' || c == ':' || c == '@';
}

size_t ap__tokens_prefix_match(const char *name, const char *prefix)
{
    size_t i = 0;
    if (prefix[0] == '\0')
        return 0;
    for (; prefix[i] != '\0'; i++) {
        if (tolower((unsigned char)name[i]) != tolower((unsigned char)prefix[i]))
            return 0; /* also stops at name's NUL, which never equals a prefix byte */
    }
    return is_boundary(name[i]) ? i : 0;
}

int ap__tokens_contains(const char *haystack, const char *needle)
{
    size_t n = strlen(needle);
    for (const char *h = haystack; *h != '\0'; h++) {
        size_t i = 0;
        while (i < n && h[i] != '\0' &&
               tolower((unsigned char)h[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (i == n)
            return 1;
    }
    return 0;
}

/* ---- the rule table ------------------------------------------------------------------------ */

/*
 * For AP_TOKENS_OPENAI_TILE a = base tokens, b = tokens per 512 px tile.
 * For AP_TOKENS_OPENAI_PATCH a = the token multiplier in hundredths (1.62 -> 162), kept integral
 * so that ceil(patches * 1.62) is exact.
 * Source for both: https://platform.openai.com/docs/guides/images-vision#calculating-costs
 * ("GPT-4o, GPT-4.1, GPT-4o-mini, CUA, and o-series (except o4-mini)" table and the
 * "gpt-5-mini, gpt-5-nano, gpt-4.1-mini, gpt-4.1-nano, o4-mini" patch multipliers).
 */
struct rule {
    const char *prefix;
    ap_tokens_formula formula;
    uint32_t a, b;
};

static const struct rule rules[] = {
    {"gpt-4o", AP_TOKENS_OPENAI_TILE, 85, 170},
    {"chatgpt-4o", AP_TOKENS_OPENAI_TILE, 85, 170},
    {"gpt-4o-mini", AP_TOKENS_OPENAI_TILE, 2833, 5667},
    {"gpt-4.1", AP_TOKENS_OPENAI_TILE, 85, 170},
    {"gpt-4.1-mini", AP_TOKENS_OPENAI_PATCH, 162, 0},
    {"gpt-4.1-nano", AP_TOKENS_OPENAI_PATCH, 246, 0},
    {"gpt-4.5", AP_TOKENS_OPENAI_TILE, 85, 170},
    {"gpt-5", AP_TOKENS_OPENAI_TILE, 70, 140},
    {"gpt-5-mini", AP_TOKENS_OPENAI_PATCH, 162, 0},
    {"gpt-5-nano", AP_TOKENS_OPENAI_PATCH, 246, 0},
    {"o1", AP_TOKENS_OPENAI_TILE, 75, 150},
    {"o3", AP_TOKENS_OPENAI_TILE, 75, 150},
    {"o4-mini", AP_TOKENS_OPENAI_PATCH, 172, 0},
    {"computer-use-preview", AP_TOKENS_OPENAI_TILE, 65, 129},
    {"claude", AP_TOKENS_ANTHROPIC, 0, 0},
    {"gemini", AP_TOKENS_GEMINI_TILE, 0, 0},     /* a = 0: 768 px tiles (Gemini 2.x) */
    {"gemini-1.5", AP_TOKENS_GEMINI_TILE, 1, 0}, /* a = 1: the crop-unit rule */
    {"gemini-3", AP_TOKENS_GEMINI_FIXED, 0, 0},
};

/* Substrings naming Qwen2-VL / Qwen2.5-VL checkpoints, as HF, vLLM and Ollama spell them. */
static const char *const qwen_names[] = {"qwen2-vl",   "qwen2.5-vl", "qwen2_vl",
                                         "qwen2_5_vl", "qwen2vl",    "qwen2.5vl"};

/* The longest rule whose prefix matches; NULL when none does. */
static const struct rule *find_rule(const char *name)
{
    const struct rule *best = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < sizeof(rules) / sizeof(rules[0]); i++) {
        size_t n = ap__tokens_prefix_match(name, rules[i].prefix);
        if (n > best_len) {
            best = &rules[i];
            best_len = n;
        }
    }
    return best;
}

static int is_qwen(const char *name)
{
    for (size_t i = 0; i < sizeof(qwen_names) / sizeof(qwen_names[0]); i++) {
        if (ap__tokens_contains(name, qwen_names[i]))
            return 1;
    }
    return 0;
}

/* The formula for a name without its routing prefix; *rule is set for table rules, else NULL. */
static ap_tokens_formula classify(const char *name, const struct rule **rule)
{
    *rule = find_rule(name);
    if (*rule != NULL)
        return (*rule)->formula;
    return is_qwen(name) ? AP_TOKENS_QWEN2_VL : AP_TOKENS_GENERIC_PATCH;
}

/* ---- arithmetic helpers -------------------------------------------------------------------- */

static uint64_t ceil_div(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

/*
 * ceil() that ignores a sliver above an integer: x computed as 1056.0000000000002 / 32 must count
 * 33 patches, as the exact arithmetic of the published rule does.
 */
static double ceil_tol(double x)
{
    return ceil(x - 1e-9);
}

/* Round a scaled side to whole pixels, at least 1. */
static uint32_t px_round(double x)
{
    double r = floor(x + 0.5);
    return r < 1.0 ? 1u : (uint32_t)r;
}

static uint32_t px_floor(double x)
{
    double r = floor(x);
    return r < 1.0 ? 1u : (uint32_t)r;
}

/* Scale (w, h) down so that the side `side` (the longer when longer != 0) becomes target. */
static void fit_side(uint32_t *w, uint32_t *h, uint32_t target, int longer)
{
    int w_is_pick = longer ? (*w >= *h) : (*w <= *h);
    if (w_is_pick) {
        *h = px_round((double)*h * target / *w);
        *w = target;
    } else {
        *w = px_round((double)*w * target / *h);
        *h = target;
    }
}

static void set_result(ap_tokens_result *res, ap_tokens_formula f, const char *rule,
                       uint64_t tokens, uint32_t w, uint32_t h, uint64_t units)
{
    res->tokens = tokens;
    res->formula = f;
    res->formula_name = ap_tokens_formula_name(f);
    res->rule = rule;
    res->eff_width = w;
    res->eff_height = h;
    res->units = units;
}

/* ---- OpenAI -------------------------------------------------------------------------------- */

/*
 * Tile models (platform.openai.com/docs/guides/images-vision#calculating-costs): "low" costs the
 * base tokens. "high" scales to fit 2048x2048, then so the shortest side is 768 (downscale only:
 * the worked examples never enlarge), then counts 512 px tiles: base + tile * n_tiles.
 * "auto" is estimated as "high": the model picks, and for anything above 512x512 it picks high.
 */
static void openai_tile(uint32_t w, uint32_t h, ap_tokens_detail detail, const struct rule *r,
                        ap_tokens_result *res)
{
    if (detail == AP_TOKENS_DETAIL_LOW) {
        /* The model gets a 512x512-bounded copy; the count does not depend on it. */
        if (w > 512 || h > 512)
            fit_side(&w, &h, 512, 1);
        set_result(res, AP_TOKENS_OPENAI_TILE, r->prefix, r->a, w, h, 0);
        snprintf(res->how, sizeof(res->how), "low detail: %u base tokens", (unsigned)r->a);
        return;
    }
    if (w > 2048 || h > 2048)
        fit_side(&w, &h, 2048, 1);
    if (AP_MIN(w, h) > 768)
        fit_side(&w, &h, 768, 0);
    uint64_t tiles = ceil_div(w, 512) * ceil_div(h, 512);
    set_result(res, AP_TOKENS_OPENAI_TILE, r->prefix, r->a + (uint64_t)r->b * tiles, w, h, tiles);
    snprintf(res->how, sizeof(res->how), "%u + %u x %llu tiles (%ux%u)", (unsigned)r->a,
             (unsigned)r->b, (unsigned long long)tiles, (unsigned)w, (unsigned)h);
}

/*
 * Patch models (same page, "gpt-4.1-mini, gpt-4.1-nano, o4-mini ..."):
 *   A. patches = ceil(w/32) * ceil(h/32)
 *   B. if > 1536: r = sqrt(32*32*1536 / (w*h));
 *                 r = r * min(floor(w*r/32) / (w*r/32), floor(h*r/32) / (h*r/32))
 *      then patches = ceil(w*r/32) * ceil(h*r/32)
 *   C. capped at 1536
 *   D. tokens = patches * multiplier (ceil: billing is in whole tokens)
 * Published: 1024x1024 -> 1024 patches; 1800x2400 -> 1056x1408 -> 1452 patches.
 * The detail field is not part of this rule, so it is ignored here.
 */
enum { PATCH_PX = 32, PATCH_CAP = 1536 };

static void openai_patch(uint32_t w, uint32_t h, const struct rule *r, ap_tokens_result *res)
{
    uint64_t patches = ceil_div(w, PATCH_PX) * ceil_div(h, PATCH_PX);
    uint32_t ew = w, eh = h;
    if (patches > PATCH_CAP) {
        double fw = w, fh = h;
        double s = sqrt((double)PATCH_PX * PATCH_PX * PATCH_CAP / (fw * fh));
        double pw = fw * s / PATCH_PX, ph = fh * s / PATCH_PX;
        /* A side under one patch (extreme aspect) would make the factor 0: keep one patch. */
        double kw = AP_MAX(floor(pw), 1.0), kh = AP_MAX(floor(ph), 1.0);
        s *= fmin(kw / pw, kh / ph);
        double rw = fw * s, rh = fh * s;
        patches = (uint64_t)ceil_tol(rw / PATCH_PX) * (uint64_t)ceil_tol(rh / PATCH_PX);
        if (patches > PATCH_CAP)
            patches = PATCH_CAP;
        ew = px_round(rw);
        eh = px_round(rh);
    }
    uint64_t tokens = ceil_div(patches * r->a, 100);
    set_result(res, AP_TOKENS_OPENAI_PATCH, r->prefix, tokens, ew, eh, patches);
    snprintf(res->how, sizeof(res->how), "%llu patches (%ux%u) x %u.%02u",
             (unsigned long long)patches, (unsigned)ew, (unsigned)eh, (unsigned)(r->a / 100),
             (unsigned)(r->a % 100));
}

/* ---- Anthropic ----------------------------------------------------------------------------- */

/*
 * docs.anthropic.com/en/docs/build-with-claude/vision ("Evaluate image size", "Calculate image
 * costs"): an image whose long edge is over 1568 px, or that is over ~1600 tokens, is first
 * scaled down, aspect kept; then tokens = (width px * height px) / 750. 1600 tokens is
 * 1,200,000 px, which lets the published 1092x1092 (~1590 tokens) through unresized; the
 * published 200x200 is ~54. We round tokens up and scaled sides down (so both caps hold).
 */
enum { ANTHROPIC_MAX_EDGE = 1568 };
#define ANTHROPIC_MAX_PIXELS   1200000.0
#define ANTHROPIC_PX_PER_TOKEN 750

static void anthropic(uint32_t w, uint32_t h, ap_tokens_result *res)
{
    double area = (double)w * h;
    uint32_t longest = AP_MAX(w, h);
    double s = longest > ANTHROPIC_MAX_EDGE ? (double)ANTHROPIC_MAX_EDGE / longest : 1.0;
    if (area * s * s > ANTHROPIC_MAX_PIXELS) {
        s = sqrt(ANTHROPIC_MAX_PIXELS / area);
        w = px_floor(w * s);
        h = px_floor(h * s);
    } else if (s < 1.0) {
        /* Only the edge binds: make it exactly 1568, in integers (1568/1600*1600 is 1567.99..). */
        uint64_t shorter = (uint64_t)AP_MIN(w, h) * ANTHROPIC_MAX_EDGE / longest;
        uint32_t sh = shorter < 1 ? 1u : (uint32_t)shorter;
        if (w >= h) {
            w = ANTHROPIC_MAX_EDGE;
            h = sh;
        } else {
            h = ANTHROPIC_MAX_EDGE;
            w = sh;
        }
    }
    uint64_t px = (uint64_t)w * h;
    set_result(res, AP_TOKENS_ANTHROPIC, "claude", ceil_div(px, ANTHROPIC_PX_PER_TOKEN), w, h, 0);
    snprintf(res->how, sizeof(res->how), "%ux%u px / 750", (unsigned)w, (unsigned)h);
}

/* ---- Gemini -------------------------------------------------------------------------------- */

/*
 * Gemini 1.5 / 2.x: both sides <= 384 px cost 258 tokens; anything larger is cut into tiles of
 * 258 tokens each. How big a tile is in source pixels is published twice:
 *  - Gemini 2.x, ai.google.dev/gemini-api/docs/tokens: "With Gemini 2.0, image inputs with both
 *    dimensions <= 384 pixels are counted as 258 tokens. Images larger in one or both dimensions
 *    are cropped and scaled as needed into tiles of 768x768 pixels, each counted as 258 tokens."
 *    We count ceil(w/768) * ceil(h/768).
 *  - Gemini 1.5, cloud.google.com/vertex-ai/generative-ai/docs/multimodal/send-multimodal-prompts
 *    (image requirements): "Each tile size defaults to the smallest dimension (width or height)
 *    divided by 1.5 ... not smaller than 256 and not greater than 768. Each tile is then resized
 *    to 768x768". We count ceil(w/unit) * ceil(h/unit), unit = clamp(floor(min/1.5), 256, 768).
 * The two disagree for mid-sized images (768x768: 1 tile vs 4); see docs/internals/tokens.md.
 */
enum { GEMINI_TILE_TOKENS = 258, GEMINI_SMALL = 384, GEMINI_UNIT_MIN = 256, GEMINI_UNIT_MAX = 768 };

static void gemini_tile(uint32_t w, uint32_t h, const struct rule *r, ap_tokens_result *res)
{
    if (w <= GEMINI_SMALL && h <= GEMINI_SMALL) {
        set_result(res, AP_TOKENS_GEMINI_TILE, r->prefix, GEMINI_TILE_TOKENS, w, h, 1);
        snprintf(res->how, sizeof(res->how), "both sides <= 384: 258");
        return;
    }
    uint64_t unit = GEMINI_UNIT_MAX;
    if (r->a == 1) {
        unit = (uint64_t)AP_MIN(w, h) * 2 / 3; /* floor(min / 1.5), exactly */
        unit = AP_MAX(unit, GEMINI_UNIT_MIN);
        unit = AP_MIN(unit, GEMINI_UNIT_MAX);
    }
    uint64_t tiles = ceil_div(w, unit) * ceil_div(h, unit);
    set_result(res, AP_TOKENS_GEMINI_TILE, r->prefix, tiles * GEMINI_TILE_TOKENS, w, h, tiles);
    snprintf(res->how, sizeof(res->how), "258 x %llu tiles of %llu px", (unsigned long long)tiles,
             (unsigned long long)unit);
}

/*
 * Gemini 3: ai.google.dev/gemini-api/docs/media-resolution ("Token counts"): images cost a fixed
 * 280 / 560 / 1120 / 2240 tokens at media_resolution low / medium / high / ultra high, whatever
 * their size; unspecified means high for images.
 */
static void gemini_fixed(uint32_t w, uint32_t h, ap_tokens_detail detail, ap_tokens_media_res m,
                         ap_tokens_result *res)
{
    static const uint32_t tokens[] = {0, 280, 560, 1120, 2240};
    static const char *const names[] = {"", "low", "medium", "high", "ultra high"};
    if (m == AP_TOKENS_MEDIA_DEFAULT)
        m = detail == AP_TOKENS_DETAIL_LOW ? AP_TOKENS_MEDIA_LOW : AP_TOKENS_MEDIA_HIGH;
    set_result(res, AP_TOKENS_GEMINI_FIXED, "gemini-3", tokens[m], w, h, 0);
    snprintf(res->how, sizeof(res->how), "media resolution %s: %u", names[m], (unsigned)tokens[m]);
}

/* ---- Qwen2-VL / Qwen2.5-VL ----------------------------------------------------------------- */

/*
 * smart_resize as the Qwen2-VL processor (qwen_vl_utils vision_process.py, and transformers'
 * Qwen2VLImageProcessor) does it, factor 28 = 14 px patch * 2x2 merge:
 *   refuse aspect ratio > 200
 *   h' = max(28, round(h / 28) * 28), w' likewise         (Python round: half to even)
 *   if h'*w' > max_pixels: beta = sqrt(h*w / max_pixels); h' = floor(h / beta / 28) * 28, ...
 *   elif h'*w' < min_pixels: beta = sqrt(min_pixels / (h*w)); h' = ceil(h * beta / 28) * 28, ...
 *   tokens = (h'/28) * (w'/28)
 * The floating-point steps use the same operations in the same order as the Python, so they
 * round the same. The two vision start/end marker tokens are not counted.
 */
enum { QWEN_FACTOR = 28, QWEN_MAX_RATIO = 200 };
#define QWEN_MIN_PIXELS_DEFAULT (4ull * 28 * 28)
#define QWEN_MAX_PIXELS_DEFAULT (16384ull * 28 * 28)

/* round(x / 28) * 28 with Python's round-half-to-even, in integers. */
static uint64_t round_by_factor(uint64_t x)
{
    uint64_t q = x / QWEN_FACTOR, r = x % QWEN_FACTOR;
    if (r * 2 > QWEN_FACTOR || (r * 2 == QWEN_FACTOR && (q & 1)))
        q++;
    return q * QWEN_FACTOR;
}

static ap_status qwen2_vl(uint32_t w, uint32_t h, const ap_tokens_opts *o, ap_tokens_result *res,
                          ap_error *err)
{
    uint64_t min_px = o->qwen_min_pixels ? o->qwen_min_pixels : QWEN_MIN_PIXELS_DEFAULT;
    uint64_t max_px = o->qwen_max_pixels ? o->qwen_max_pixels : QWEN_MAX_PIXELS_DEFAULT;
    if (min_px > max_px)
        return ap_error_set(err, AP_EINVAL, "qwen2-vl: min_pixels %llu above max_pixels %llu",
                            (unsigned long long)min_px, (unsigned long long)max_px);
    if ((double)AP_MAX(w, h) / AP_MIN(w, h) > QWEN_MAX_RATIO)
        return ap_error_set(err, AP_EINVAL,
                            "qwen2-vl: aspect ratio of %ux%u is over 200, which the processor "
                            "refuses",
                            (unsigned)w, (unsigned)h);
    uint64_t hb = AP_MAX(QWEN_FACTOR, round_by_factor(h));
    uint64_t wb = AP_MAX(QWEN_FACTOR, round_by_factor(w));
    double fh = h, fw = w;
    if (hb * wb > max_px) {
        double beta = sqrt(fh * fw / (double)max_px);
        hb = (uint64_t)floor(fh / beta / QWEN_FACTOR) * QWEN_FACTOR;
        wb = (uint64_t)floor(fw / beta / QWEN_FACTOR) * QWEN_FACTOR;
        /* Newer processors clamp to one factor; only a tiny max_pixels can get here. */
        hb = AP_MAX(hb, QWEN_FACTOR);
        wb = AP_MAX(wb, QWEN_FACTOR);
    } else if (hb * wb < min_px) {
        double beta = sqrt((double)min_px / (fh * fw));
        hb = (uint64_t)ceil(fh * beta / QWEN_FACTOR) * QWEN_FACTOR;
        wb = (uint64_t)ceil(fw * beta / QWEN_FACTOR) * QWEN_FACTOR;
    }
    uint64_t grid = (hb / QWEN_FACTOR) * (wb / QWEN_FACTOR);
    set_result(res, AP_TOKENS_QWEN2_VL, "qwen2-vl", grid, (uint32_t)wb, (uint32_t)hb, grid);
    snprintf(res->how, sizeof(res->how), "smart_resize %llux%llu / 28x28", (unsigned long long)wb,
             (unsigned long long)hb);
    return AP_OK;
}

/* ---- generic per-patch --------------------------------------------------------------------- */

ap_tokens_patch_formula ap_tokens_generic_default(void)
{
    /* 14 px ViT patches, 2x2 merged, up to 1280 merged tokens (Qwen2-VL's own fallback). */
    ap_tokens_patch_formula f = {
        .patch_px = 14, .max_pixels = 1003520, .tokens_per_patch = 0.25, .extra_tokens = 0};
    return f;
}

static ap_status generic_patch(uint32_t w, uint32_t h, const ap_tokens_patch_formula *f,
                               ap_tokens_result *res, ap_error *err)
{
    if (f->patch_px == 0 || !(f->tokens_per_patch > 0) || !isfinite(f->tokens_per_patch))
        return ap_error_set(err, AP_EINVAL,
                            "generic formula: patch_px must be >= 1 and tokens_per_patch > 0");
    double area = (double)w * h;
    if (f->max_pixels != 0 && area > (double)f->max_pixels) {
        double s = sqrt((double)f->max_pixels / area);
        w = px_floor(w * s);
        h = px_floor(h * s);
    }
    uint64_t patches = ceil_div(w, f->patch_px) * ceil_div(h, f->patch_px);
    double t = ceil_tol((double)patches * f->tokens_per_patch);
    if (t > 1e18)
        return ap_error_set(err, AP_EINVAL, "generic formula: token count overflows");
    uint64_t tokens = (uint64_t)t + f->extra_tokens;
    set_result(res, AP_TOKENS_GENERIC_PATCH, "generic", tokens, w, h, patches);
    snprintf(res->how, sizeof(res->how), "%llu patches of %u px (%ux%u) x %g + %u",
             (unsigned long long)patches, (unsigned)f->patch_px, (unsigned)w, (unsigned)h,
             f->tokens_per_patch, (unsigned)f->extra_tokens);
    return AP_OK;
}

/* ---- public -------------------------------------------------------------------------------- */

void ap_tokens_opts_init(ap_tokens_opts *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->detail = AP_TOKENS_DETAIL_AUTO;
    opts->media_res = AP_TOKENS_MEDIA_DEFAULT;
}

const char *ap_tokens_formula_name(ap_tokens_formula f)
{
    switch (f) {
    case AP_TOKENS_OPENAI_TILE:
        return "openai-tile";
    case AP_TOKENS_OPENAI_PATCH:
        return "openai-patch";
    case AP_TOKENS_ANTHROPIC:
        return "anthropic";
    case AP_TOKENS_GEMINI_TILE:
        return "gemini-tile";
    case AP_TOKENS_GEMINI_FIXED:
        return "gemini-fixed";
    case AP_TOKENS_QWEN2_VL:
        return "qwen2-vl";
    case AP_TOKENS_GENERIC_PATCH:
        return "generic-patch";
    }
    return "unknown";
}

const char *ap_tokens_detail_name(ap_tokens_detail d)
{
    switch (d) {
    case AP_TOKENS_DETAIL_AUTO:
        return "auto";
    case AP_TOKENS_DETAIL_LOW:
        return "low";
    case AP_TOKENS_DETAIL_HIGH:
        return "high";
    }
    return "unknown";
}

ap_status ap_tokens_detail_parse(const char *s, ap_tokens_detail *out)
{
    static const ap_tokens_detail all[] = {AP_TOKENS_DETAIL_AUTO, AP_TOKENS_DETAIL_LOW,
                                           AP_TOKENS_DETAIL_HIGH};
    if (s == NULL)
        return AP_EINVAL;
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        if (strcmp(s, ap_tokens_detail_name(all[i])) == 0) {
            *out = all[i];
            return AP_OK;
        }
    }
    return AP_EINVAL;
}

ap_status ap_tokens_estimate(const char *model, uint32_t width, uint32_t height,
                             ap_tokens_detail detail, ap_tokens_result *res, ap_error *err)
{
    ap_tokens_opts o;
    ap_tokens_opts_init(&o);
    o.detail = detail;
    return ap_tokens_estimate_opts(model, width, height, &o, res, err);
}

ap_status ap_tokens_estimate_opts(const char *model, uint32_t width, uint32_t height,
                                  const ap_tokens_opts *opts, ap_tokens_result *res, ap_error *err)
{
    ap_tokens_opts defaults;
    ap_tokens_result r;
    ap_status st = AP_OK;

    if (AP_NEVER(res == NULL))
        return ap_error_set(err, AP_EINVAL, "tokens: no result to fill");
    if (model == NULL || model[0] == '\0')
        return ap_error_set(err, AP_EINVAL, "tokens: no model name");
    if (width == 0 || height == 0)
        return ap_error_set(err, AP_EINVAL, "tokens: image size %ux%u has a zero side",
                            (unsigned)width, (unsigned)height);
    if (opts == NULL) {
        ap_tokens_opts_init(&defaults);
        opts = &defaults;
    }
    if ((unsigned)opts->detail > AP_TOKENS_DETAIL_HIGH ||
        (unsigned)opts->media_res > AP_TOKENS_MEDIA_ULTRA_HIGH)
        return ap_error_set(err, AP_EINVAL, "tokens: detail or media resolution out of range");

    memset(&r, 0, sizeof(r));
    const struct rule *rule = NULL;
    switch (classify(ap__tokens_base_name(model), &rule)) {
    case AP_TOKENS_OPENAI_TILE:
        openai_tile(width, height, opts->detail, rule, &r);
        break;
    case AP_TOKENS_OPENAI_PATCH:
        openai_patch(width, height, rule, &r);
        break;
    case AP_TOKENS_ANTHROPIC:
        anthropic(width, height, &r);
        break;
    case AP_TOKENS_GEMINI_TILE:
        gemini_tile(width, height, rule, &r);
        break;
    case AP_TOKENS_GEMINI_FIXED:
        gemini_fixed(width, height, opts->detail, opts->media_res, &r);
        break;
    case AP_TOKENS_QWEN2_VL:
        st = qwen2_vl(width, height, opts, &r, err);
        break;
    case AP_TOKENS_GENERIC_PATCH: {
        ap_tokens_patch_formula def = ap_tokens_generic_default();
        st = generic_patch(width, height, opts->generic ? opts->generic : &def, &r, err);
        break;
    }
    }
    if (st != AP_OK)
        return st;
    *res = r;
    return AP_OK;
}

ap_tokens_formula ap_tokens_model_formula(const char *model)
{
    const struct rule *rule;
    if (model == NULL || model[0] == '\0')
        return AP_TOKENS_GENERIC_PATCH;
    return classify(ap__tokens_base_name(model), &rule);
}
