/*
 * prep.h - the image preprocessing pipeline.
 *
 * ap_prep() turns untrusted image bytes into the smallest correct image a vision model needs:
 *
 *   sniff magic bytes -> header limits (bytes, pixels) -> decode, shrunk on load where the codec
 *   can -> colour to sRGB 8-bit, alpha flattened -> resample (Lanczos-3) -> EXIF orientation
 *   -> encode (JPEG q78 by default) -> SHA-256, pHash, dHash.
 *
 * The input format is decided by magic bytes only. All metadata (EXIF incl. GPS, XMP, IPTC,
 * comments, thumbnails, text chunks) is dropped: the output is re-encoded from pixels, so no byte
 * of the input container reaches it. Grayscale input stays single-channel.
 *
 * Orientation is applied after resampling: Lanczos is separable and symmetric, so resizing in
 * stored orientation and then transposing gives the same pixels as the other order, for a
 * fraction of the work (the transposition touches output pixels only).
 *
 * Threading: ap_prep is reentrant; it keeps no state between calls. Run one call per thread.
 */
#ifndef APERTURE_PREP_H
#define APERTURE_PREP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aperture/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Input formats, as sniffed. Stable numbering. */
typedef enum ap_format {
    AP_FORMAT_UNKNOWN = 0,
    AP_FORMAT_JPEG = 1,
    AP_FORMAT_PNG = 2,
    AP_FORMAT_WEBP = 3,
    AP_FORMAT_GIF = 4,
    AP_FORMAT_BMP = 5,
    AP_FORMAT_TIFF = 6,
    AP_FORMAT_HEIF = 7,
    AP_FORMAT_AVIF = 8,
} ap_format;

/* Output encodings. */
typedef enum ap_encoding {
    AP_ENC_JPEG = 0,
    AP_ENC_PNG = 1,
    AP_ENC_WEBP = 2,
} ap_encoding;

/* Metadata found in (and removed from) the input: bits of ap_prep_result.meta_removed. */
enum {
    AP_META_EXIF = 1u << 0,
    AP_META_GPS = 1u << 1,
    AP_META_XMP = 1u << 2,
    AP_META_IPTC = 1u << 3,
    AP_META_ICC = 1u << 4,
    AP_META_COMMENT = 1u << 5, /* JPEG COM, PNG tEXt/zTXt/iTXt, GIF comment extensions */
    AP_META_THUMBNAIL = 1u << 6,
    AP_META_OTHER = 1u << 7, /* maker notes, APPn segments we do not name, unknown chunks */
};

/* Warnings: bits of ap_prep_result.warnings. The image was processed. */
enum {
    AP_WARN_SMALL = 1u << 0,        /* width or height below opts.warn_min_side */
    AP_WARN_ICC_IGNORED = 1u << 1,  /* an ICC profile was present but unusable; assumed sRGB */
    AP_WARN_MULTI_FRAME = 1u << 2,  /* animated/multi-page input: the first frame was used */
    AP_WARN_TRAILING_DATA = 1u << 3 /* bytes after the image's end were ignored (polyglots) */
};

typedef struct ap_prep_opts {
    /* Limits, checked before pixels are allocated. 0 means "no limit" only where noted. */
    size_t max_input_bytes;  /* default 20 MiB */
    uint64_t max_pixels;     /* width*height from the header; default 100,000,000 */
    uint32_t min_side;       /* refuse (AP_ETOOSMALL) below this; default 1 */
    uint32_t warn_min_side;  /* warn below this; default 100 */
    /* Geometry of the output (displayed orientation). Never upscales. 0 = no constraint. */
    uint32_t max_edge;       /* long edge; default 1568 */
    uint32_t max_width;      /* bounding box, e.g. 2048x2048 for openai-high */
    uint32_t max_height;
    uint32_t max_short_edge; /* e.g. 768 for openai-high */
    uint64_t max_out_pixels; /* e.g. 1,150,000 for anthropic */
    /* Encoding. */
    ap_encoding encoding;    /* default JPEG */
    int quality;             /* 1..100, default 78 (JPEG and lossy WebP) */
    /* Normalisation. */
    uint8_t background[3];   /* alpha is flattened onto this sRGB colour; default white */
    bool trim;               /* crop uniform borders (document margins) */
    uint8_t trim_tolerance;  /* max per-channel difference from the border colour; default 16 */
    bool gray;               /* convert to single-channel grayscale */
    bool no_hash;            /* skip pHash/dHash (SHA-256 is always computed) */
} ap_prep_opts;

/* Fill opts with the defaults listed above (target "default": long edge 1568). */
AP_API void ap_prep_opts_init(ap_prep_opts *opts);

/*
 * Apply a named geometry preset: "default" (long edge 1568), "anthropic" (long edge 1568 and
 * <= 1.15 MP, so the provider does not resize again), "openai-high" (fit 2048x2048, short side
 * <= 768), "openai-low" and "thumbnail" (long edge 512), "gemini" (fit 768x768: one tile),
 * "none" (normalise only, no resize). Only the geometry fields change.
 * Returns AP_ENOTFOUND for an unknown name.
 */
AP_API AP_NODISCARD ap_status ap_prep_opts_target(ap_prep_opts *opts, const char *name);

/* The names ap_prep_opts_target accepts, NULL-terminated. */
AP_API const char *const *ap_prep_targets(void);

typedef struct ap_prep_timings {
    double decode_ms, orient_ms, color_ms, resample_ms, encode_ms, hash_ms, total_ms;
} ap_prep_timings;

typedef struct ap_prep_result {
    /* Input. */
    ap_format in_format;
    uint32_t in_width, in_height;   /* stored size, before orientation */
    size_t in_bytes;
    /* Output. out is (transfer full): released by ap_prep_result_release(). */
    uint8_t *out;
    size_t out_len;
    uint32_t out_width, out_height; /* displayed orientation */
    unsigned out_channels;          /* 1 (gray) or 3 */
    const char *out_media_type;     /* static string: "image/jpeg", "image/png", "image/webp" */
    uint8_t sha256[32];             /* of the out bytes */
    char sha256_hex[65];
    uint64_t phash, dhash;          /* imagehash-compatible, of the output pixels */
    /* What normalisation did. */
    int orientation;                /* EXIF orientation applied, 1..8 (1 = none) */
    unsigned meta_removed;          /* AP_META_* found in the input and not carried over */
    bool icc_converted;             /* an embedded ICC profile was converted to sRGB */
    char icc_description[64];       /* the profile's description, "" when none */
    bool cmyk;                      /* the input was CMYK/YCCK */
    bool had_alpha;                 /* transparency was flattened */
    bool trimmed;
    unsigned decode_scale;          /* shrink-on-load denominator (JPEG 8 / N), 1 when none */
    unsigned warnings;              /* AP_WARN_* */
    ap_prep_timings ms;
} ap_prep_result;

/*
 * Preprocess one image. buf/len are borrowed. On success res is filled and res->out must be
 * released with ap_prep_result_release(); on failure res is left zeroed (nothing to release)
 * and err says why: AP_EUNSUPPORTED (not an accepted format; the message names what was
 * sniffed), AP_ETOOLARGE (byte or pixel limit), AP_ETOOSMALL, AP_EDECODE (truncated/corrupt),
 * AP_EENCODE, AP_ENOMEM, AP_EINVAL (bad options).
 */
AP_API AP_NODISCARD ap_status ap_prep(const uint8_t *buf, size_t len, const ap_prep_opts *opts,
                                      ap_prep_result *res, ap_error *err);

/* Free res->out and zero res. res may be NULL; releasing twice is harmless. */
AP_API void ap_prep_result_release(ap_prep_result *res);

/* What an image's header says, read without decoding any pixel (ap_prep_probe()). */
typedef struct ap_probe_info {
    ap_format format;
    uint32_t width, height; /* as displayed: EXIF orientation 5..8 swaps the stored size */
    int orientation;        /* EXIF 1..8 (1 when absent) */
} ap_probe_info;

/*
 * Read the format and size from buf's header alone, through the same decoders as ap_prep()
 * but stopping before any pixel is decoded or allocated: microseconds for JPEG/PNG/WebP/GIF,
 * a container parse for HEIF. No limit is applied (a bomb reports its declared size; ap_prep()
 * refuses it later). AP_EUNSUPPORTED when the bytes are not an accepted format (the message
 * names what was sniffed), AP_EDECODE when the header is broken.
 */
AP_API AP_NODISCARD ap_status ap_prep_probe(const uint8_t *buf, size_t len, ap_probe_info *out,
                                            ap_error *err);

/* Identify the format from the first bytes. Never reads past len. */
AP_API ap_format ap_sniff(const uint8_t *buf, size_t len);

/*
 * Describe bytes that are not an accepted image ("svg", "pdf", "html", "zip", "ico", "psd",
 * "empty", "unknown", ...). For messages; the result is a static string.
 */
AP_API const char *ap_sniff_describe(const uint8_t *buf, size_t len);

/* "jpeg", "png", ... ; "unknown" for AP_FORMAT_UNKNOWN. */
AP_API const char *ap_format_name(ap_format f);

/* Names of the AP_META_* bits set in mask, comma-separated, into buf (always terminated). */
AP_API void ap_meta_describe(unsigned mask, char *buf, size_t cap);

/*
 * Standard base64 (RFC 4648, with padding) of buf, as a NUL-terminated string, (transfer full):
 * free() it. Returns NULL when len is too large to encode or allocation fails.
 */
AP_API char *ap_base64_encode(const uint8_t *buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
