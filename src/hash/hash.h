/*
 * hash.h (internal) - pieces of the hash module other modules and the unit tests reach into.
 * The public API is include/aperture/hash.h.
 */
#ifndef AP_HASH_INTERNAL_H
#define AP_HASH_INTERNAL_H

#include <stdint.h>

#include "aperture/hash.h"

/*
 * One row of w pixels of 1..4 interleaved 8-bit channels to 8-bit gray, exactly as Pillow's
 * convert("L"): gray and gray+alpha keep the gray sample, RGB(A) becomes
 * (19595 R + 38470 G + 7471 B + 0x8000) >> 16 (ITU-R 601-2 luma in 16-bit fixed point, rounded).
 * Alpha is ignored. out holds w bytes and must not overlap px.
 */
void ap__hash_gray_row(const uint8_t *px, uint32_t w, unsigned channels, uint8_t *out);

#endif
