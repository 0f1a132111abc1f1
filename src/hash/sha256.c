/*
 * sha256.c - SHA-256 through OpenSSL's EVP interface, and the hex spelling of digests.
 *
 * EVP rather than the deprecated SHA256() so the digest comes from whatever provider the process
 * configured (FIPS builds included); the one-shot EVP_Digest() allocates a context per call, which
 * is noise next to the encode it follows.
 */
#include <string.h>

#include <openssl/err.h>
#include <openssl/evp.h>

#include "core/core.h"
#include "hash/hash.h"

static const char hex_digits[] = "0123456789abcdef";

ap_status ap_sha256(const uint8_t *buf, size_t len, uint8_t out[AP_SHA256_LEN], ap_error *err)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;

    if (AP_NEVER(out == NULL || (buf == NULL && len > 0)))
        return ap_error_set(err, AP_EINVAL, "sha256: null buffer");
    if (EVP_Digest(buf, len, md, &md_len, EVP_sha256(), NULL) != 1 || md_len != AP_SHA256_LEN) {
        /* The error queue is per thread; take our entry off it so it cannot leak into the next
         * OpenSSL user's report. */
        unsigned long e = ERR_get_error();
        char why[120];

        ERR_error_string_n(e, why, sizeof(why));
        ERR_clear_error();
        if (ERR_GET_REASON(e) == ERR_R_MALLOC_FAILURE)
            return ap_error_set(err, AP_ENOMEM, "sha256: openssl is out of memory");
        return ap_error_set(err, AP_EINTERNAL, "sha256: openssl digest failed: %s",
                            e ? why : "no reason given");
    }
    memcpy(out, md, AP_SHA256_LEN);
    return AP_OK;
}

void ap_sha256_hex(const uint8_t digest[AP_SHA256_LEN], char out[65])
{
    for (size_t i = 0; i < AP_SHA256_LEN; i++) {
        out[2 * i] = hex_digits[digest[i] >> 4];
        out[2 * i + 1] = hex_digits[digest[i] & 15];
    }
    out[2 * AP_SHA256_LEN] = '\0';
}
