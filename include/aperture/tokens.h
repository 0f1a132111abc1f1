/*
 * tokens.h - how many input tokens an image costs at each provider, and what that costs in USD.
 *
 * ap_tokens_estimate() applies the provider's published sizing rule to a width x height (the
 * displayed orientation, i.e. after EXIF rotation) and says which rule it used. The rules, their
 * sources and the choices made where a provider is vague are in docs/internals/tokens.md:
 *
 *   openai-tile     gpt-4o, gpt-4o-mini, gpt-4.1, gpt-4.5, o1, o3, gpt-5, computer-use-preview:
 *                   fit 2048x2048, short side <= 768, base + tile * (512 px tiles)
 *   openai-patch    gpt-4.1-mini/nano, gpt-5-mini/nano, o4-mini: 32 px patches capped at 1536,
 *                   times a per-model multiplier
 *   anthropic       claude*: long edge <= 1568 and <= ~1600 tokens, then ceil(w*h / 750)
 *   gemini-tile     gemini-1.5/2.x: 258 when both sides <= 384, else 258 per tile (768 px
 *                   tiles for 2.x, min-side/1.5 crops for 1.5)
 *   gemini-fixed    gemini-3*: media resolution low/medium/high/ultra = 280/560/1120/2240
 *   qwen2-vl        Qwen2-VL / Qwen2.5-VL smart_resize: 28 px grid within [min, max] pixels
 *   generic-patch   anything else: a configurable per-patch formula (ap_tokens_patch_formula)
 *
 * Model names match case-insensitively, by the longest known prefix that ends at a name boundary
 * ("gpt-4o-2024-08-06" is gpt-4o, "gpt-4o-mini" is not); a routing prefix up to the last '/' is
 * ignored ("openai/gpt-4o"). Qwen models match on a substring anywhere ("Qwen/Qwen2.5-VL-7B").
 * Every name gets an estimate: unknown names fall through to generic-patch.
 *
 * Pricing: ap_pricing is a table of list prices (USD per million tokens) built in and overridable
 * from a small text file. The built-in table is constant; a loaded file adds entries that take
 * precedence over it.
 *
 * Threading: the estimate and cost functions are pure and reentrant. An ap_pricing may be read
 * (lookup, cost) from many threads at once; loading into it needs exclusive access.
 */
#ifndef APERTURE_TOKENS_H
#define APERTURE_TOKENS_H

#include <stddef.h>
#include <stdint.h>

#include "aperture/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* OpenAI's "detail" field. AUTO is estimated as HIGH (see docs/internals/tokens.md). */
typedef enum ap_tokens_detail {
    AP_TOKENS_DETAIL_AUTO = 0,
    AP_TOKENS_DETAIL_LOW = 1,
    AP_TOKENS_DETAIL_HIGH = 2,
} ap_tokens_detail;

/*
 * Gemini 3's media_resolution. DEFAULT follows the detail: LOW for AP_TOKENS_DETAIL_LOW, else
 * HIGH (the API's default for images). ULTRA_HIGH is accepted per part only by the API.
 */
typedef enum ap_tokens_media_res {
    AP_TOKENS_MEDIA_DEFAULT = 0,
    AP_TOKENS_MEDIA_LOW = 1,
    AP_TOKENS_MEDIA_MEDIUM = 2,
    AP_TOKENS_MEDIA_HIGH = 3,
    AP_TOKENS_MEDIA_ULTRA_HIGH = 4,
} ap_tokens_media_res;

/* Which rule produced an estimate. Stable numbering. */
typedef enum ap_tokens_formula {
    AP_TOKENS_OPENAI_TILE = 1,
    AP_TOKENS_OPENAI_PATCH = 2,
    AP_TOKENS_ANTHROPIC = 3,
    AP_TOKENS_GEMINI_TILE = 4,
    AP_TOKENS_GEMINI_FIXED = 5,
    AP_TOKENS_QWEN2_VL = 6,
    AP_TOKENS_GENERIC_PATCH = 7,
} ap_tokens_formula;

/*
 * A self-hosted model's per-patch rule: if width*height > max_pixels the image is scaled down
 * (aspect kept) to fit; then patches = ceil(w / patch_px) * ceil(h / patch_px) and
 * tokens = ceil(patches * tokens_per_patch) + extra_tokens.
 */
typedef struct ap_tokens_patch_formula {
    uint32_t patch_px;       /* >= 1 */
    uint64_t max_pixels;     /* 0 = no limit */
    double tokens_per_patch; /* > 0; 0.25 for a 2x2 token merge */
    uint32_t extra_tokens;   /* per image: start/end markers and the like */
} ap_tokens_patch_formula;

/*
 * The built-in generic formula: 14 px patches merged 2x2 (0.25 tokens per patch) within
 * 1,003,520 pixels (1280 tokens), no extra tokens - the shape of most current open ViT-based
 * VLMs. A guess for models we do not know: pass your own for real numbers.
 */
AP_API ap_tokens_patch_formula ap_tokens_generic_default(void);

typedef struct ap_tokens_opts {
    ap_tokens_detail detail;                /* OpenAI tile models; default AUTO */
    ap_tokens_media_res media_res;          /* Gemini 3; default DEFAULT */
    uint64_t qwen_min_pixels;               /* Qwen2-VL processor; 0 = 3136 (4*28*28) */
    uint64_t qwen_max_pixels;               /* 0 = 12845056 (16384*28*28) */
    const ap_tokens_patch_formula *generic; /* borrowed; NULL = ap_tokens_generic_default() */
} ap_tokens_opts;

/* Fill opts with the defaults listed above. */
AP_API void ap_tokens_opts_init(ap_tokens_opts *opts);

typedef struct ap_tokens_result {
    uint64_t tokens; /* input tokens billed for the image */
    ap_tokens_formula formula;
    const char *formula_name; /* static: "openai-tile", "anthropic", ... */
    const char *rule;         /* static: the table entry matched, e.g. "gpt-4o-mini" */
    uint32_t eff_width;       /* the size the provider counts after its own resize */
    uint32_t eff_height;
    uint64_t units; /* tiles or patches counted; 0 for fixed-cost rules */
    char how[128];  /* one line, e.g. "85 + 170 x 4 tiles (768x768)" */
} ap_tokens_result;

/*
 * Estimate the input tokens of one width x height image sent to model. res is (out), set only
 * on success. Fails with AP_EINVAL for a NULL/empty model, a zero side, bad opts, or a size the
 * provider's own processor refuses (Qwen2-VL: aspect ratio above 200).
 */
AP_API AP_NODISCARD ap_status ap_tokens_estimate(const char *model, uint32_t width, uint32_t height,
                                                 ap_tokens_detail detail, ap_tokens_result *res,
                                                 ap_error *err);

/* The same with every knob: opts may be NULL for the defaults. */
AP_API AP_NODISCARD ap_status ap_tokens_estimate_opts(const char *model, uint32_t width,
                                                      uint32_t height, const ap_tokens_opts *opts,
                                                      ap_tokens_result *res, ap_error *err);

/* The rule ap_tokens_estimate would apply to model. Unknown or empty names: GENERIC_PATCH. */
AP_API ap_tokens_formula ap_tokens_model_formula(const char *model);

/* "openai-tile", ... ; "unknown" for a value outside the enum. Never NULL. */
AP_API const char *ap_tokens_formula_name(ap_tokens_formula f);

/* "low", "high", "auto" <-> enum. parse returns AP_EINVAL for anything else. */
AP_API const char *ap_tokens_detail_name(ap_tokens_detail d);
AP_API AP_NODISCARD ap_status ap_tokens_detail_parse(const char *s, ap_tokens_detail *out);

/* ---- pricing ---------------------------------------------------------------------------- */

typedef struct ap_pricing ap_pricing;

typedef struct ap_price {
    double usd_per_mtok_input;
    double usd_per_mtok_output; /* < 0 when not known */
    const char *model;          /* the entry matched; borrowed from the table (valid until free) */
    int builtin;                /* 1 from the built-in table, 0 from a loaded file */
} ap_price;

/* A table holding the built-in list prices. (transfer full): ap_pricing_free(). Aborts on OOM. */
AP_API ap_pricing *ap_pricing_new(void);

/* Free p and its entries. p may be NULL. */
AP_API void ap_pricing_free(ap_pricing *p);

/*
 * Add the entries of a price file: one "model usd_per_mtok_input [usd_per_mtok_output]" per
 * line, separated by blanks; '#' starts a comment; blank lines are skipped. A later entry for a
 * name replaces an earlier one, and any loaded entry beats a built-in one of the same name.
 * All or nothing: on failure p is unchanged. Errors: AP_EIO (cannot read), AP_ETOOLARGE (over
 * 1 MiB, a line over 1024 bytes, a name over 127 bytes), AP_EINVAL (a bad line; the message
 * starts "path:LINE: "), AP_ENOMEM.
 */
AP_API AP_NODISCARD ap_status ap_pricing_load_file(ap_pricing *p, const char *path, ap_error *err);

/* The same from memory; name labels messages ("prices.txt:3: ..."). buf need not be NUL-ended. */
AP_API AP_NODISCARD ap_status ap_pricing_load_buffer(ap_pricing *p, const char *buf, size_t len,
                                                     const char *name, ap_error *err);

/*
 * The price for model, matched like the token rules (case-insensitive longest prefix at a name
 * boundary, routing prefix ignored; loaded entries first). p may be NULL: built-ins only.
 * out is (out). AP_ENOTFOUND when nothing matches.
 */
AP_API AP_NODISCARD ap_status ap_pricing_lookup(const ap_pricing *p, const char *model,
                                                ap_price *out, ap_error *err);

/* USD for tokens at usd_per_mtok (per million). */
AP_API double ap_tokens_usd(uint64_t tokens, double usd_per_mtok);

/*
 * USD of tokens input tokens for model: lookup + ap_tokens_usd. p may be NULL (built-ins).
 * usd is (out). AP_ENOTFOUND for a model without a price.
 */
AP_API AP_NODISCARD ap_status ap_tokens_cost(const ap_pricing *p, const char *model,
                                             uint64_t tokens, double *usd, ap_error *err);

#ifdef __cplusplus
}
#endif
#endif
