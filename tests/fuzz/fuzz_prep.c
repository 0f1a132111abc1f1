/*
 * fuzz_prep.c - libFuzzer target over ap_prep(), the parser of every untrusted image.
 *
 * Input layout. The image bytes are passed on untouched whenever they sniff as an image, so a
 * corpus of real files (and libFuzzer's mutations of them) runs with the default options. When
 * they do not, but the bytes after the first one do, that first byte is an option selector:
 *
 *   bits 0-2  geometry target (ap_prep_targets(), wrapping)
 *   bits 3-4  encoding: 0 jpeg, 1 png, 2 webp, 3 jpeg at quality 1
 *   bit  5    trim
 *   bit  6    gray
 *   bit  7    no_hash, and min_side 2 / warn_min_side 0
 *
 * libFuzzer reaches the option paths by inserting one byte in front of a seed; the corpus holds
 * a few seeds that start with a selector.
 *
 * Limits are small (4 MP, 2 MiB) so that a pixel bomb is refused, not decoded, and one run stays
 * well under a second. Besides the sanitizers, the documented contract of ap_prep is checked:
 * on success an output within the input's size with 1 or 3 channels; on failure a zeroed result
 * and an error carrying the returned code. A broken contract aborts, which libFuzzer reports as
 * a crash.
 *
 * Under gcc the same file is linked with replay_main.c, so CTest replays the corpus every run.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aperture/prep.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_PIXELS      4000000u
#define FUZZ_MAX_INPUT_BYTES (2u << 20)

static void contract_failed(const char *what, ap_status rc, const ap_error *err)
{
    fprintf(stderr, "fuzz_prep: contract broken: %s (rc %s, err %s \"%s\")\n", what,
            ap_strerror(rc), ap_strerror(err->code), err->msg);
    abort();
}

/* Apply the option selector byte sel to o. */
static void select_options(ap_prep_opts *o, uint8_t sel)
{
    const char *const *targets = ap_prep_targets();
    size_t n_targets = 0;
    while (targets[n_targets] != NULL)
        n_targets++;
    if (ap_prep_opts_target(o, targets[(sel & 7u) % n_targets]) != AP_OK)
        abort(); /* every listed name must be accepted */
    switch ((sel >> 3) & 3u) {
    case 0:
        o->encoding = AP_ENC_JPEG;
        break;
    case 1:
        o->encoding = AP_ENC_PNG;
        break;
    case 2:
        o->encoding = AP_ENC_WEBP;
        break;
    default:
        o->encoding = AP_ENC_JPEG;
        o->quality = 1;
        break;
    }
    o->trim = (sel & 0x20u) != 0;
    o->gray = (sel & 0x40u) != 0;
    if (sel & 0x80u) {
        o->no_hash = true;
        o->min_side = 2;
        o->warn_min_side = 0;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ap_prep_opts opts;
    ap_prep_result res;
    ap_error err;
    const uint8_t *img = data;
    size_t len = size;

    ap_prep_opts_init(&opts);
    opts.max_pixels = FUZZ_MAX_PIXELS;
    opts.max_input_bytes = FUZZ_MAX_INPUT_BYTES;
    if (size > 1 && ap_sniff(data, size) == AP_FORMAT_UNKNOWN &&
        ap_sniff(data + 1, size - 1) != AP_FORMAT_UNKNOWN) {
        select_options(&opts, data[0]);
        img = data + 1;
        len = size - 1;
    }

    /* The header probe (routing reads it before any preprocessing) must never fail worse than
     * ap_prep and, when both succeed, must agree on the format and the displayed size. */
    ap_probe_info pin;
    ap_error_clear(&err);
    ap_status prc = ap_prep_probe(img, len, &pin, &err);
    if (prc == AP_EINTERNAL)
        contract_failed("probe: internal error (a decoder read past its header)", prc, &err);
    if (prc != AP_OK && (err.code != prc || err.msg[0] == '\0'))
        contract_failed("probe: failure without a matching error message", prc, &err);

    ap_error_clear(&err);
    ap_status rc = ap_prep(img, len, &opts, &res, &err);
    if (rc == AP_OK && prc == AP_OK && !opts.trim) {
        bool swap = res.orientation >= 5;
        uint32_t dw = swap ? res.in_height : res.in_width, dh = swap ? res.in_width : res.in_height;
        /* Pixels, not sides: a PNG with its EXIF after the pixels probes unrotated. */
        if (pin.format != res.in_format || (uint64_t)pin.width * pin.height != (uint64_t)dw * dh)
            contract_failed("probe disagrees with ap_prep on format or pixel count", rc, &err);
    }
    if (rc == AP_OK) {
        if (res.out == NULL || res.out_len == 0 || res.out_media_type == NULL)
            contract_failed("success without output bytes", rc, &err);
        if (res.out_width == 0 || res.out_height == 0)
            contract_failed("success with an empty output size", rc, &err);
        if ((uint64_t)res.out_width * res.out_height > (uint64_t)res.in_width * res.in_height)
            contract_failed("output larger than the input (upscaled)", rc, &err);
        if (res.out_channels != 1 && res.out_channels != 3)
            contract_failed("output channels not 1 or 3", rc, &err);
        if (opts.gray && res.out_channels != 1)
            contract_failed("gray requested, colour output", rc, &err);
        if (res.orientation < 1 || res.orientation > 8)
            contract_failed("orientation outside 1..8", rc, &err);
        if (strlen(res.sha256_hex) != 64)
            contract_failed("sha256_hex is not 64 characters", rc, &err);
        if (res.in_bytes != len)
            contract_failed("in_bytes differs from the input length", rc, &err);
        ap_prep_result_release(&res);
    } else {
        static const ap_prep_result zero;
        if (memcmp(&res, &zero, sizeof(res)) != 0)
            contract_failed("failure left a non-zero result", rc, &err);
        if (err.code != rc || err.msg[0] == '\0')
            contract_failed("failure without a matching error message", rc, &err);
        if (rc == AP_EINTERNAL)
            contract_failed("internal error (an invariant did not hold)", rc, &err);
    }
    return 0;
}
