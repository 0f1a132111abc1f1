/*
 * sniff.c - decide what the bytes are from their magic numbers, never from a file name or a
 * declared media type. Also names common non-image payloads so a refusal can say what it saw.
 */
#include <string.h>

#include "image/image.h"

static int starts(const uint8_t *buf, size_t len, const char *magic, size_t n)
{
    return len >= n && memcmp(buf, magic, n) == 0;
}

/* ISO-BMFF "ftyp" brands: the major brand, then compatible brands, decide HEIF vs AVIF. */
static ap_format sniff_ftyp(const uint8_t *buf, size_t len)
{
    if (len < 16 || memcmp(buf + 4, "ftyp", 4) != 0)
        return AP_FORMAT_UNKNOWN;
    size_t box = ((size_t)buf[0] << 24) | ((size_t)buf[1] << 16) | ((size_t)buf[2] << 8) | buf[3];
    if (box < 16 || box > len)
        box = len < 64 ? len : 64;
    static const char *const heif[] = {"heic", "heix", "hevc", "hevx", "heim",
                                       "heis", "hevm", "hevs", "mif1", "msf1"};
    bool is_heif = false, is_avif = false;
    /* Major brand at 8, minor version at 12, compatible brands from 16 in 4-byte steps. */
    for (size_t off = 8; off + 4 <= box; off += 4) {
        if (off == 12)
            continue;
        const uint8_t *b = buf + off;
        if (memcmp(b, "avif", 4) == 0 || memcmp(b, "avis", 4) == 0)
            is_avif = true;
        for (size_t i = 0; i < sizeof(heif) / sizeof(heif[0]); i++)
            if (memcmp(b, heif[i], 4) == 0)
                is_heif = true;
    }
    /* "mif1" alone is generic HEIF; an "avif" brand anywhere means the AV1 flavour. */
    if (is_avif)
        return AP_FORMAT_AVIF;
    return is_heif ? AP_FORMAT_HEIF : AP_FORMAT_UNKNOWN;
}

ap_format ap_sniff(const uint8_t *buf, size_t len)
{
    if (buf == NULL || len == 0)
        return AP_FORMAT_UNKNOWN;
    if (starts(buf, len, "\xFF\xD8\xFF", 3))
        return AP_FORMAT_JPEG;
    if (starts(buf, len, "\x89PNG\r\n\x1A\n", 8))
        return AP_FORMAT_PNG;
    if (starts(buf, len, "GIF87a", 6) || starts(buf, len, "GIF89a", 6))
        return AP_FORMAT_GIF;
    if (len >= 12 && memcmp(buf, "RIFF", 4) == 0 && memcmp(buf + 8, "WEBP", 4) == 0)
        return AP_FORMAT_WEBP;
    if (starts(buf, len, "II*\0", 4) || starts(buf, len, "MM\0*", 4) ||
        starts(buf, len, "II+\0", 4) || starts(buf, len, "MM\0+", 4))
        return AP_FORMAT_TIFF;
    if (len >= 18 && buf[0] == 'B' && buf[1] == 'M') {
        /* "BM" alone is two ASCII letters; require a known DIB header size as well. */
        uint32_t dib = buf[14] | (uint32_t)buf[15] << 8 | (uint32_t)buf[16] << 16 |
                       (uint32_t)buf[17] << 24;
        if (dib == 12 || dib == 16 || dib == 40 || dib == 52 || dib == 56 || dib == 64 ||
            dib == 108 || dib == 124)
            return AP_FORMAT_BMP;
    }
    return sniff_ftyp(buf, len);
}

const char *ap_format_name(ap_format f)
{
    switch (f) {
    case AP_FORMAT_JPEG: return "jpeg";
    case AP_FORMAT_PNG: return "png";
    case AP_FORMAT_WEBP: return "webp";
    case AP_FORMAT_GIF: return "gif";
    case AP_FORMAT_BMP: return "bmp";
    case AP_FORMAT_TIFF: return "tiff";
    case AP_FORMAT_HEIF: return "heif";
    case AP_FORMAT_AVIF: return "avif";
    case AP_FORMAT_UNKNOWN: break;
    }
    return "unknown";
}

/* Case-insensitive search for needle in the first n bytes of buf. */
static int contains_ci(const uint8_t *buf, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++) {
        size_t j = 0;
        while (j < m) {
            uint8_t c = buf[i + j];
            if (c >= 'A' && c <= 'Z')
                c = (uint8_t)(c - 'A' + 'a');
            if (c != (uint8_t)needle[j])
                break;
            j++;
        }
        if (j == m)
            return 1;
    }
    return 0;
}

const char *ap_sniff_describe(const uint8_t *buf, size_t len)
{
    if (buf == NULL || len == 0)
        return "empty";
    ap_format f = ap_sniff(buf, len);
    if (f != AP_FORMAT_UNKNOWN)
        return ap_format_name(f);
    if (starts(buf, len, "%PDF", 4))
        return "pdf";
    if (starts(buf, len, "PK\x03\x04", 4) || starts(buf, len, "PK\x05\x06", 4))
        return "zip";
    if (starts(buf, len, "\x1F\x8B", 2))
        return "gzip (svgz?)";
    if (starts(buf, len, "\x7F" "ELF", 4))
        return "elf executable";
    if (starts(buf, len, "8BPS", 4))
        return "psd";
    if (starts(buf, len, "\0\0\1\0", 4))
        return "ico";
    if (starts(buf, len, "\0\0\2\0", 4))
        return "cur";
    if (starts(buf, len, "qoif", 4))
        return "qoi";
    if (starts(buf, len, "DDS ", 4))
        return "dds";
    if (starts(buf, len, "\0\0\0\x0CjP  ", 8) || starts(buf, len, "\xFF\x4F\xFF\x51", 4))
        return "jpeg 2000";
    if (starts(buf, len, "%!PS", 4) || starts(buf, len, "\xC5\xD0\xD3\xC6", 4))
        return "postscript/eps";
    if (starts(buf, len, "GIF8", 4))
        return "gif (unknown version)";
    if (starts(buf, len, "RIFF", 4))
        return "riff (not webp)";
    if (len >= 8 && memcmp(buf + 4, "ftyp", 4) == 0)
        return "iso-bmff (not heif/avif)";
    if (len >= 2 && buf[0] == 0x0A && buf[1] <= 5)
        return "pcx";
    size_t n = len < 1024 ? len : 1024;
    if (contains_ci(buf, n, "<svg"))
        return "svg";
    if (contains_ci(buf, n, "<html") || contains_ci(buf, n, "<!doctype html"))
        return "html";
    if (contains_ci(buf, n, "<?xml"))
        return "xml";
    if (contains_ci(buf, n, "push graphic-context") || contains_ci(buf, n, "viewbox"))
        return "mvg (imagemagick vector)";
    if (starts(buf, len, "BM", 2))
        return "bmp (unknown header)";
    size_t printable = 0;
    for (size_t i = 0; i < n; i++)
        if ((buf[i] >= 0x20 && buf[i] < 0x7F) || buf[i] == '\n' || buf[i] == '\r' ||
            buf[i] == '\t')
            printable++;
    if (printable == n)
        return "text";
    return "unknown binary";
}
