/*
 * keys.c - cache keys: the exact key and the shape key (the exact key without the image
 * hashes), built incrementally through OpenSSL's EVP SHA-256, and the content fingerprint of
 * normalised OCR text.
 *
 * Encoding. Both digests start with their own domain string, so an exact key never equals a
 * shape key. Every field is framed as 'F', the name's length (4 bytes), the name, the value's
 * length (8 bytes), the value; an image as 'I' and, in the exact digest only, its processed
 * SHA-256; the end as 'N' and the image count. Lengths are big-endian. With every part
 * length-framed, two different sequences of fields and images never hash the same input.
 * Changing this encoding changes every key: bump the domain strings' version when doing so.
 */
#include <string.h>

#include <openssl/evp.h>

#include "aperture/cache.h"
#include "cache/cache_int.h"
#include "core/core.h"

static const char exact_domain[] = "aperture-cache-exact-v1";
static const char shape_domain[] = "aperture-cache-shape-v1";
static const char content_domain[] = "aperture-cache-content-v1";

struct ap_cache_key_builder {
    EVP_MD_CTX *exact, *shape;
    size_t n_images;
    uint64_t phash[AP_CACHE_MAX_IMAGES];
    bool failed; /* sticky: an OpenSSL call failed */
};

static void feed(ap_cache_key_builder *b, bool to_shape, const void *p, size_t len)
{
    if (b->failed || len == 0)
        return;
    if (EVP_DigestUpdate(b->exact, p, len) != 1 ||
        (to_shape && EVP_DigestUpdate(b->shape, p, len) != 1))
        b->failed = true;
}

static void builder_free(ap_cache_key_builder *b)
{
    if (b == NULL)
        return;
    EVP_MD_CTX_free(b->exact);
    EVP_MD_CTX_free(b->shape);
    free(b);
}

ap_cache_key_builder *ap_cache_key_begin(void)
{
    ap_cache_key_builder *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->exact = EVP_MD_CTX_new();
    b->shape = EVP_MD_CTX_new();
    if (b->exact == NULL || b->shape == NULL ||
        EVP_DigestInit_ex(b->exact, EVP_sha256(), NULL) != 1 ||
        EVP_DigestInit_ex(b->shape, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(b->exact, exact_domain, sizeof(exact_domain)) != 1 ||
        EVP_DigestUpdate(b->shape, shape_domain, sizeof(shape_domain)) != 1) {
        builder_free(b);
        return NULL;
    }
    return b;
}

void ap_cache_key_field(ap_cache_key_builder *b, const char *name, const char *value, size_t len)
{
    uint8_t hdr[1 + 4], vlen[8];

    if (b == NULL)
        return;
    if (AP_NEVER(name == NULL || (value == NULL && len != 0))) {
        b->failed = true;
        return;
    }
    size_t nlen = strlen(name);
    hdr[0] = 'F';
    hdr[1] = (uint8_t)(nlen >> 24);
    hdr[2] = (uint8_t)(nlen >> 16);
    hdr[3] = (uint8_t)(nlen >> 8);
    hdr[4] = (uint8_t)nlen;
    ap__cache_put_be64(vlen, len);
    feed(b, true, hdr, sizeof(hdr));
    feed(b, true, name, nlen);
    feed(b, true, vlen, sizeof(vlen));
    feed(b, true, value, len);
}

void ap_cache_key_image(ap_cache_key_builder *b, const uint8_t sha256[32], uint64_t phash)
{
    if (b == NULL)
        return;
    if (AP_NEVER(sha256 == NULL)) {
        b->failed = true;
        return;
    }
    /* The shape sees where an image occurs, not which one. */
    feed(b, true, "I", 1);
    feed(b, false, sha256, 32);
    if (b->n_images < AP_CACHE_MAX_IMAGES)
        b->phash[b->n_images] = phash;
    b->n_images++;
}

ap_status ap_cache_key_end(ap_cache_key_builder *b, ap_cache_key *key, ap_error *err)
{
    uint8_t tail[1 + 8], exact[EVP_MAX_MD_SIZE], shape[EVP_MAX_MD_SIZE];
    unsigned exact_len = 0, shape_len = 0;
    ap_status rc = AP_OK;

    if (b == NULL)
        return ap_error_set(err, AP_ENOMEM, "cache key: out of memory starting the key");
    if (AP_NEVER(key == NULL)) {
        rc = ap_error_set(err, AP_EINVAL, "cache key: null key");
        goto out;
    }
    tail[0] = 'N';
    ap__cache_put_be64(tail + 1, b->n_images);
    feed(b, true, tail, sizeof(tail));
    if (b->failed || EVP_DigestFinal_ex(b->exact, exact, &exact_len) != 1 ||
        EVP_DigestFinal_ex(b->shape, shape, &shape_len) != 1 || exact_len != 32 ||
        shape_len != 32) {
        rc = ap_error_set(err, AP_EINTERNAL, "cache key: sha-256 failed (openssl)");
        goto out;
    }
    memset(key, 0, sizeof(*key));
    memcpy(key->exact, exact, 32);
    memcpy(key->shape, shape, 32);
    if (b->n_images <= AP_CACHE_MAX_IMAGES) {
        key->n_images = b->n_images;
        memcpy(key->phash, b->phash, b->n_images * sizeof(key->phash[0]));
    }
out:
    builder_free(b);
    return rc;
}

/* ---- content fingerprint */

static bool is_space(unsigned char c)
{
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static bool is_punct(unsigned char c)
{
    return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') ||
           (c >= '{' && c <= '~');
}

ap_status ap_cache_key_content(ap_cache_key *key, const char *ocr_text, size_t len, ap_error *err)
{
    uint8_t buf[4096], md[EVP_MAX_MD_SIZE];
    size_t n = 0, emitted = 0;
    unsigned md_len = 0;
    bool space = false;
    int last = -1; /* last byte emitted */
    ap_status rc = AP_OK;
    EVP_MD_CTX *ctx = NULL;

    if (AP_NEVER(key == NULL || (ocr_text == NULL && len != 0)))
        return ap_error_set(err, AP_EINVAL, "cache key: null key or text");
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL)
        return ap_error_set(err, AP_ENOMEM, "cache key: out of memory (openssl)");
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, content_domain, sizeof(content_domain)) != 1)
        goto fail;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)ocr_text[i];
        if (is_space(c)) {
            space = emitted > 0; /* leading whitespace vanishes */
            continue;
        }
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        if (is_punct(c) && c == last && !space)
            continue; /* "-----" is "-", "...." is "." */
        /* Room for a space and the byte; flush a full buffer. */
        if (n + 2 > sizeof(buf)) {
            if (EVP_DigestUpdate(ctx, buf, n) != 1)
                goto fail;
            n = 0;
        }
        if (space)
            buf[n++] = ' ';
        buf[n++] = c;
        space = false;
        last = c;
        emitted++;
    }
    if (n != 0 && EVP_DigestUpdate(ctx, buf, n) != 1)
        goto fail;
    if (EVP_DigestFinal_ex(ctx, md, &md_len) != 1 || md_len != 32)
        goto fail;
    key->has_content = emitted > 0;
    if (key->has_content)
        memcpy(key->content, md, 32);
    else
        memset(key->content, 0, sizeof(key->content));
    goto out;
fail:
    rc = ap_error_set(err, AP_EINTERNAL, "cache key: sha-256 failed (openssl)");
out:
    EVP_MD_CTX_free(ctx);
    return rc;
}
