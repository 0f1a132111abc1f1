/*
 * ocr.h - Tesseract OCR over one encoded image, for the local provider.
 *
 * An ap__ocr wraps one TessBaseAPI handle with the language data loaded (loading "eng" takes
 * a noticeable fraction of a second, so a worker keeps its handle for its lifetime). The input
 * is the encoded bytes ap_prep() produced for OCR: normalised (oriented, sRGB, no metadata)
 * and capped at cfg->ocr_max_edge rather than shrunk for a model, because Tesseract loses a
 * lot on dense pages below ~200 dpi. PNG or high-quality JPEG; anything Leptonica decodes works.
 *
 * The result is the page's text rebuilt line by line from Tesseract's layout analysis
 * (page segmentation "auto"): one text line per '\n'-terminated line, a blank line between
 * blocks/paragraphs, and, per line, its bounding box and confidence, so rules can tell a
 * letterhead (tall line near the top) from body text.
 *
 * Threading: a handle is not thread-safe (Tesseract's are not): one per thread, never shared.
 * Creating handles from several threads at once is fine. Tesseract's OpenMP build spins extra
 * threads per page; in a server with its own worker pool run with OMP_THREAD_LIMIT=1.
 */
#ifndef AP_OCR_H
#define AP_OCR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "aperture/config.h"
#include "aperture/status.h"

struct ap__ocr;

/* One text line of a page: text[off .. off+len) in ap__ocr_page.text (no '\n'). */
struct ap__ocr_line {
    size_t off, len;
    int x, y, w, h; /* bounding box in image pixels; all 0 for a page built from text */
    float conf;     /* Tesseract's line confidence, 0..100; -1 when unknown */
    int block;      /* index of the block (paragraph) the line belongs to */
};

/* What OCR found on one image. Released with ap__ocr_page_release(). */
struct ap__ocr_page {
    char *text; /* UTF-8, NUL-terminated; "" when nothing was recognised */
    size_t text_len;
    struct ap__ocr_line *lines; /* n_lines, in reading order; blank lines are not listed */
    size_t n_lines;
    size_t n_words;
    double mean_conf;       /* Tesseract's mean word confidence 0..100; -1 when no text */
    uint32_t width, height; /* of the image OCR ran on */
    unsigned depth;         /* bits per pixel of the decoded image (1, 8, 32) */
};

/*
 * Load Tesseract for lang ("eng"; "eng+deu" and the like work when the data is installed;
 * NULL means "eng") from the system tessdata directory, with page segmentation "auto" and
 * Tesseract's debug chatter sent to /dev/null. *out is (transfer full): ap__ocr_free().
 * Fails with AP_ENOTFOUND when the language data cannot be loaded (the message names the
 * Debian package to install).
 */
AP_NODISCARD ap_status ap__ocr_new(const char *lang, struct ap__ocr **out, ap_error *err);

/* Free a handle. NULL is a no-op. */
void ap__ocr_free(struct ap__ocr *ocr);

/*
 * Recognise the text of one encoded image (buf/len borrowed). On success *page is filled and
 * owns its memory. Fails with AP_EDECODE when Leptonica cannot decode the bytes,
 * AP_ETOOLARGE above AP_OCR_MAX_PIXELS (checked from the header, before decoding), and
 * AP_EINTERNAL when Tesseract itself fails. An image without text succeeds with text "".
 */
#define AP_OCR_MAX_PIXELS 40000000u
AP_NODISCARD ap_status ap__ocr_image(struct ap__ocr *ocr, const uint8_t *buf, size_t len,
                                     struct ap__ocr_page *page, ap_error *err);

/*
 * A page from plain text, without geometry (every box 0, conf -1): one line per '\n'-separated
 * non-blank line; a blank line starts a new block. For rules run on text that did not come
 * from OCR, and for tests. Copies text. AP_ENOMEM on allocation failure.
 */
AP_NODISCARD ap_status ap__ocr_page_from_text(const char *text, struct ap__ocr_page *page,
                                              ap_error *err);

/* Free what a page owns and zero it. NULL and a zeroed page are fine. */
void ap__ocr_page_release(struct ap__ocr_page *page);

/* ---- the local provider's rules (local.c) ---------------------------------------------------
 *
 * Rule-based reading of OCR text, declared here rather than in provider.h because only the
 * local provider and its tests use them. All of them are pure functions of their input: no
 * allocation, no state, safe from any thread.
 */

/* Invoice/receipt fields; a field that was not found is "" (strings) or has_total false. */
struct ap__invoice_fields {
    char vendor[128];        /* the issuer as printed, UTF-8, cut at a character boundary */
    char invoice_number[64]; /* as printed, without a leading '#' */
    char date[11];           /* ISO 8601 "YYYY-MM-DD" */
    bool has_total;
    double total;      /* the amount to pay, >= 0 */
    char currency[4];  /* ISO 4217 code, e.g. "EUR" */
    double confidence; /* 0..1: share of the five fields found x OCR confidence */
};

/* Read the fields off a page (from ap__ocr_image() or ap__ocr_page_from_text()). */
void ap__local_extract_invoice(const struct ap__ocr_page *page, struct ap__invoice_fields *out);

/*
 * Find the first date in s[0..len): numeric (25/12/2018, 29-12-2017, 17-03-18, 01.05.14,
 * 2014-08-03) or with a month name in English, German, Dutch, French, Spanish, Italian or
 * Portuguese (August 3, 2014; 19 april 2014; 7. Mai 2014; 02 Juillet 2015; 3rd Mar 2020;
 * 20-Oct-15). A numeric date whose day and month are both <= 12 is read day-first unless
 * month_first (US documents). Two-digit years are 19xx from 70 up, else 20xx; only years
 * 1970..2099 and real calendar days count. On success iso gets "YYYY-MM-DD" and
 * [*start, *end) the matched bytes.
 */
bool ap__local_find_date(const char *s, size_t len, bool month_first, char iso[11], size_t *start,
                         size_t *end);

/*
 * Find the first money amount in s[0..len): digits with an optional thousands separator and a
 * two-digit decimal part in either convention (1,234.56 and 1.234,56; 717,97; 4.11), or a
 * whole number written next to a currency sign or code ($120, 35 EUR). Percentages, negative
 * numbers, times, phone numbers and dates do not count. *is_marked tells whether a currency
 * sign or code is next to it (may be NULL).
 */
bool ap__local_find_amount(const char *s, size_t len, double *value, size_t *start, size_t *end,
                           bool *is_marked);

/*
 * The first currency marker in s[0..len): a sign (EUR sign, $, US$, S$, GBP sign, INR sign,
 * ...), a local abbreviation (RM, Rs.) or an ISO 4217 code written as a word (EUR, MYR).
 * Returns the ISO code (a static string) or NULL; [*start, *end) is the marker.
 */
const char *ap__local_find_currency(const char *s, size_t len, size_t *start, size_t *end);

/*
 * ap__local_answer() with a caller-owned handle (borrowed; the calling thread's), so a worker
 * pays Tesseract's start-up (~0.1 s for "eng") once instead of per request;
 * ap__local_answer() itself creates and frees a handle per call. The task alone picks the
 * behaviour: "invoice_extraction", else describe. cfg and req are not read yet (the prompt
 * text cannot steer rules) and may be NULL. On success *resp is (transfer full).
 */
AP_NODISCARD ap_status ap__local_answer_ocr(const ap_config *cfg, struct ap__ocr *ocr,
                                            const char *task, const json_t *req,
                                            const uint8_t *const *images, const size_t *lens,
                                            size_t n_images, json_t **resp, ap_error *err);

#endif
