/*
 * exif.c - read the one EXIF fact the pipeline needs (orientation) and note which kinds of
 * metadata are present, with libexif. Nothing from the EXIF block is ever written out.
 */
#include <libexif/exif-data.h>
#include <stdlib.h>
#include <string.h>

#include "image/image.h"

static const uint8_t exif_prefix[6] = {'E', 'x', 'i', 'f', 0, 0};

/* EXIF blocks larger than this are not parsed (a JPEG APP1 segment is at most 64 KiB; WebP,
 * PNG and HEIF allow more, but an orientation tag never needs megabytes of maker notes). */
#define EXIF_PARSE_MAX (1u << 20)

int ap__exif_orientation(const uint8_t *exif, size_t len, unsigned *meta)
{
    int orientation = 1;
    uint8_t *tmp = NULL;
    ExifData *ed = NULL;

    if (exif == NULL || len < 8)
        return 1;
    *meta |= AP_META_EXIF;
    if (len > EXIF_PARSE_MAX)
        return 1;
    /* libexif wants the "Exif\0\0" prefix; PNG eXIf, WebP and HEIF blocks start at the TIFF
     * header, so give it a prefixed copy. */
    if (memcmp(exif, exif_prefix, 6) != 0) {
        tmp = malloc(len + 6);
        if (tmp == NULL)
            return 1;
        memcpy(tmp, exif_prefix, 6);
        memcpy(tmp + 6, exif, len);
        exif = tmp;
        len += 6;
    }
    ed = exif_data_new();
    if (ed == NULL)
        goto out;
    /* Read as stored: no fixing up, no maker-note rewriting. */
    exif_data_unset_option(ed, EXIF_DATA_OPTION_FOLLOW_SPECIFICATION);
    exif_data_load_data(ed, exif, (unsigned)len);

    ExifEntry *e = exif_content_get_entry(ed->ifd[EXIF_IFD_0], EXIF_TAG_ORIENTATION);
    if (e != NULL && e->format == EXIF_FORMAT_SHORT && e->components >= 1 && e->size >= 2) {
        int v = exif_get_short(e->data, exif_data_get_byte_order(ed));
        /* Values outside 1..8 are invalid and mean "as stored". */
        orientation = (v >= 1 && v <= 8) ? v : 1;
    }
    if (ed->ifd[EXIF_IFD_GPS] != NULL && ed->ifd[EXIF_IFD_GPS]->count > 0)
        *meta |= AP_META_GPS;
    if (ed->data != NULL && ed->size > 0)
        *meta |= AP_META_THUMBNAIL;
out:
    if (ed != NULL)
        exif_data_unref(ed);
    free(tmp);
    return orientation;
}

void ap_meta_describe(unsigned mask, char *buf, size_t cap)
{
    static const struct {
        unsigned bit;
        const char *name;
    } names[] = {{AP_META_EXIF, "exif"},       {AP_META_GPS, "gps"},
                 {AP_META_XMP, "xmp"},         {AP_META_IPTC, "iptc"},
                 {AP_META_ICC, "icc"},         {AP_META_COMMENT, "comment"},
                 {AP_META_THUMBNAIL, "thumbnail"}, {AP_META_OTHER, "other"}};
    size_t off = 0;
    if (cap == 0)
        return;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (!(mask & names[i].bit))
            continue;
        size_t n = strlen(names[i].name) + (off ? 1 : 0);
        if (off + n + 1 > cap)
            break;
        if (off)
            buf[off++] = ',';
        memcpy(buf + off, names[i].name, strlen(names[i].name) + 1);
        off += strlen(names[i].name);
    }
}
