/*
 * hash.h - content hashes of images: SHA-256 of bytes, and the perceptual pHash and dHash of
 * pixels.
 *
 * SHA-256 keys caches on exact bytes (the pipeline hashes its encoded output). pHash and dHash are
 * 64-bit perceptual hashes for near-duplicate detection: the same picture re-encoded or rescaled
 * lands within a few bits (compare with ap_hamming64()), different pictures some 20-40 bits apart.
 *
 * Compatibility: ap_phash() and ap_dhash() follow the definitions of the Python `imagehash`
 * library (phash(), dhash(), hash_size 8) over Pillow, bit for bit when given the pixels Pillow
 * decodes, so hashes users already store can be compared with ours. ap_hash64_hex() prints what
 * imagehash's str() prints. The definitions, and why our resize is a Pillow-exact one, are in
 * docs/internals/hash.md.
 *
 * Pixels are 8-bit, interleaved, rows stride bytes apart: 1 channel (gray), 2 (gray + alpha),
 * 3 (RGB) or 4 (RGBA). Alpha is ignored, as Pillow's convert("L") ignores it: flatten first if
 * transparent areas matter (the pipeline does).
 *
 * Threading: every function is reentrant; none keeps state between calls.
 */
#ifndef APERTURE_HASH_H
#define APERTURE_HASH_H

#include <stddef.h>
#include <stdint.h>

#include "aperture/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define AP_SHA256_LEN 32

/* Longest side ap_phash()/ap_dhash() accept (their memory is ~50 bytes per pixel of w + h). */
#define AP_HASH_MAX_SIDE (1u << 20)

/*
 * SHA-256 of buf/len (buf may be NULL when len is 0) into out. Uses OpenSSL's libcrypto.
 * Fails only if OpenSSL does (AP_ENOMEM: it could not allocate its context, AP_EINTERNAL:
 * anything else); out is then untouched.
 */
AP_API AP_NODISCARD ap_status ap_sha256(const uint8_t *buf, size_t len, uint8_t out[AP_SHA256_LEN],
                                        ap_error *err);

/* Lowercase hex of a digest into out (64 digits and a NUL). */
AP_API void ap_sha256_hex(const uint8_t digest[AP_SHA256_LEN], char out[65]);

/*
 * imagehash's phash(): gray (Pillow convert("L")), Lanczos resize to 32x32, 2-D DCT-II, the
 * top-left 8x8 coefficients, bit = coefficient > their median; row-major, first bit in the most
 * significant position. On success *out is the hash.
 *
 * Fails with AP_EINVAL (px NULL, w or h 0, channels not 1..4, stride < w * channels),
 * AP_ETOOLARGE (a side over AP_HASH_MAX_SIDE), AP_ENOMEM. Images smaller than 32x32 are
 * upscaled, as imagehash does.
 */
AP_API AP_NODISCARD ap_status ap_phash(const uint8_t *px, uint32_t w, uint32_t h, size_t stride,
                                       unsigned channels, uint64_t *out, ap_error *err);

/*
 * imagehash's dhash(): gray, Lanczos resize to 9 columns x 8 rows, bit = px[r][c + 1] > px[r][c]
 * for c in 0..7; row-major, most significant first. Fails as ap_phash().
 */
AP_API AP_NODISCARD ap_status ap_dhash(const uint8_t *px, uint32_t w, uint32_t h, size_t stride,
                                       unsigned channels, uint64_t *out, ap_error *err);

/*
 * Both hashes in one pass over the pixels (what the pipeline calls): the same values as
 * ap_phash() and ap_dhash(), in about half the time. Either out-pointer may be NULL.
 */
AP_API AP_NODISCARD ap_status ap_hash_image(const uint8_t *px, uint32_t w, uint32_t h,
                                            size_t stride, unsigned channels, uint64_t *phash,
                                            uint64_t *dhash, ap_error *err);

/* Number of differing bits, 0..64. */
AP_API int ap_hamming64(uint64_t a, uint64_t b);

/* The hash as 16 lowercase hex digits and a NUL: imagehash's str() of an 8x8 hash. */
AP_API void ap_hash64_hex(uint64_t h, char out[17]);

/*
 * Parse what ap_hash64_hex() (or imagehash's str()) prints: exactly 16 hex digits, either case.
 * Returns AP_EINVAL for anything else, leaving *out untouched.
 */
AP_API AP_NODISCARD ap_status ap_hash64_parse(const char *hex, uint64_t *out);

#ifdef __cplusplus
}
#endif
#endif
