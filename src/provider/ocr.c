/*
 * ocr.c - the Tesseract handle and one-image recognition (see ocr.h).
 *
 * Text is rebuilt from Tesseract's result iterator at text-line level instead of taken from
 * TessBaseAPIGetUTF8Text(), so that every line of the text has its box and confidence at the
 * same index: the rules in local.c want both.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <leptonica/allheaders.h>
#include <tesseract/capi.h>

#include "core/core.h"
#include "provider/ocr.h"

struct ap__ocr {
    TessBaseAPI *api;
};

/*
 * Tesseract keeps "debug_file" (and a few more parameters) as process-wide globals that
 * TessBaseAPISetVariable() writes without a lock, so handles are set up one at a time. This
 * is the only static state in the module and it guards Tesseract's, not ours.
 */
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;

ap_status ap__ocr_new(const char *lang, struct ap__ocr **out, ap_error *err)
{
    struct ap__ocr *ocr = NULL;
    ap_status st = AP_OK;

    if (lang == NULL || lang[0] == '\0')
        lang = "eng";
    ocr = ap__xcalloc(1, sizeof(*ocr));
    pthread_mutex_lock(&init_lock);
    ocr->api = TessBaseAPICreate();
    if (ocr->api == NULL) {
        pthread_mutex_unlock(&init_lock);
        st = ap_error_set(err, AP_ENOMEM, "tesseract: cannot create a handle");
        goto out;
    }
    /* Before Init, so that "Error opening data file" and friends go there too. */
    TessBaseAPISetVariable(ocr->api, "debug_file", "/dev/null");
    int rc = TessBaseAPIInit3(ocr->api, NULL, lang);
    pthread_mutex_unlock(&init_lock);
    if (rc != 0) {
        st = ap_error_set(err, AP_ENOTFOUND,
                          "tesseract: cannot load language \"%s\" (is tesseract-ocr-%s installed?)",
                          lang, lang);
        goto out;
    }
    /* The API's default is a single uniform block; documents need layout analysis. */
    TessBaseAPISetPageSegMode(ocr->api, PSM_AUTO);
    *out = ocr;
    ocr = NULL;
out:
    ap__ocr_free(ocr);
    return st;
}

void ap__ocr_free(struct ap__ocr *ocr)
{
    if (ocr == NULL)
        return;
    if (ocr->api != NULL) {
        TessBaseAPIEnd(ocr->api);
        TessBaseAPIDelete(ocr->api);
    }
    free(ocr);
}

/* ---- building a page ---------------------------------------------------------------------- */

/* Growable text + line arrays. Sizes are bounded by what OCR can find on a capped image. */
struct builder {
    char *text;
    size_t len, cap;
    struct ap__ocr_line *lines;
    size_t n_lines, cap_lines;
    int block;
    bool oom;
};

static bool reserve_text(struct builder *b, size_t more)
{
    if (b->oom)
        return false;
    if (b->cap - b->len > more)
        return true;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len <= more)
        cap *= 2;
    char *t = realloc(b->text, cap);
    if (t == NULL) {
        b->oom = true;
        return false;
    }
    b->text = t;
    b->cap = cap;
    return true;
}

/*
 * Append one line (s/n, trimmed of surrounding whitespace here). new_block puts a blank line
 * before it when the text is not empty. Lines that are only whitespace are dropped.
 */
static void add_line(struct builder *b, const char *s, size_t n, bool new_block, int x, int y,
                     int w, int h, float conf)
{
    while (n > 0 && (s[0] == ' ' || s[0] == '\t' || s[0] == '\n' || s[0] == '\r'))
        s++, n--;
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        n--;
    if (new_block && b->n_lines > 0)
        b->block++;
    if (n == 0)
        return;
    if (!reserve_text(b, n + 2))
        return;
    if (b->n_lines > 0) {
        if (b->lines[b->n_lines - 1].block != b->block)
            b->text[b->len++] = '\n';
    }
    if (b->n_lines == b->cap_lines) {
        size_t cap = b->cap_lines ? b->cap_lines * 2 : 64;
        struct ap__ocr_line *l = realloc(b->lines, cap * sizeof(*l));
        if (l == NULL) {
            b->oom = true;
            return;
        }
        b->lines = l;
        b->cap_lines = cap;
    }
    struct ap__ocr_line *l = &b->lines[b->n_lines++];
    l->off = b->len;
    l->len = n;
    l->x = x, l->y = y, l->w = w, l->h = h;
    l->conf = conf;
    l->block = b->block;
    memcpy(b->text + b->len, s, n);
    b->len += n;
    b->text[b->len++] = '\n';
    b->text[b->len] = '\0';
}

static size_t count_words(const char *s)
{
    size_t n = 0;
    bool in = false;
    for (; *s; s++) {
        bool space = *s == ' ' || *s == '\t' || *s == '\n' || *s == '\r';
        if (!space && !in)
            n++;
        in = !space;
    }
    return n;
}

/* Move the builder's buffers into page (text "" when empty). */
static ap_status finish(struct builder *b, struct ap__ocr_page *page, ap_error *err)
{
    if (b->oom || !reserve_text(b, 1)) {
        free(b->text);
        free(b->lines);
        memset(b, 0, sizeof(*b));
        return ap_error_set(err, AP_ENOMEM, "ocr: out of memory building the page text");
    }
    b->text[b->len] = '\0';
    page->text = b->text;
    page->text_len = b->len;
    page->lines = b->lines;
    page->n_lines = b->n_lines;
    page->n_words = count_words(b->text);
    memset(b, 0, sizeof(*b));
    return AP_OK;
}

ap_status ap__ocr_page_from_text(const char *text, struct ap__ocr_page *page, ap_error *err)
{
    struct builder b = {0};
    bool new_block = false;

    memset(page, 0, sizeof(*page));
    for (const char *s = text; *s;) {
        const char *e = strchr(s, '\n');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        size_t k = 0;
        while (k < n && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r'))
            k++;
        if (k == n)
            new_block = true;
        else
            add_line(&b, s, n, new_block, 0, 0, 0, 0, -1.0f);
        if (k != n)
            new_block = false;
        s += n + (e != NULL);
    }
    ap_status st = finish(&b, page, err);
    if (st == AP_OK)
        page->mean_conf = -1.0;
    return st;
}

void ap__ocr_page_release(struct ap__ocr_page *page)
{
    if (page == NULL)
        return;
    free(page->text);
    free(page->lines);
    memset(page, 0, sizeof(*page));
}

/* ---- recognition -------------------------------------------------------------------------- */

ap_status ap__ocr_image(struct ap__ocr *ocr, const uint8_t *buf, size_t len,
                        struct ap__ocr_page *page, ap_error *err)
{
    PIX *pix = NULL;
    TessResultIterator *ri = NULL;
    struct builder b = {0};
    struct ap__ocr_page res = {0};
    ap_status st = AP_OK;
    l_int32 format = 0, w = 0, h = 0, bps = 0, spp = 0, iscmap = 0;

    if (AP_NEVER(ocr == NULL || ocr->api == NULL || buf == NULL))
        return ap_error_set(err, AP_EINVAL, "ocr: no handle or no image");
    /* The caller already capped the image; this is the last line before a large allocation. */
    if (pixReadHeaderMem(buf, len, &format, &w, &h, &bps, &spp, &iscmap) != 0 || w <= 0 || h <= 0)
        return ap_error_set(err, AP_EDECODE, "ocr: cannot read the image header");
    if ((uint64_t)w * (uint64_t)h > AP_OCR_MAX_PIXELS)
        return ap_error_set(err, AP_ETOOLARGE, "ocr: image of %dx%d px is over the %u px limit",
                            (int)w, (int)h, AP_OCR_MAX_PIXELS);
    pix = pixReadMem(buf, len);
    if (pix == NULL)
        return ap_error_set(err, AP_EDECODE, "ocr: cannot decode the image");
    res.width = (uint32_t)pixGetWidth(pix);
    res.height = (uint32_t)pixGetHeight(pix);
    res.depth = (unsigned)pixGetDepth(pix);

    TessBaseAPISetImage2(ocr->api, pix);
    if (TessBaseAPIRecognize(ocr->api, NULL) != 0) {
        st = ap_error_set(err, AP_EINTERNAL, "tesseract: recognition failed");
        goto out;
    }
    ri = TessBaseAPIGetIterator(ocr->api);
    if (ri != NULL) {
        TessPageIterator *pi = TessResultIteratorGetPageIterator(ri);
        do {
            char *t = TessResultIteratorGetUTF8Text(ri, RIL_TEXTLINE);
            if (t == NULL)
                continue;
            int l = 0, top = 0, r = 0, bot = 0;
            TessPageIteratorBoundingBox(pi, RIL_TEXTLINE, &l, &top, &r, &bot);
            bool new_block = TessPageIteratorIsAtBeginningOf(pi, RIL_PARA) != 0;
            add_line(&b, t, strlen(t), new_block, l, top, r - l, bot - top,
                     TessResultIteratorConfidence(ri, RIL_TEXTLINE));
            TessDeleteText(t);
        } while (TessPageIteratorNext(pi, RIL_TEXTLINE));
    }
    st = finish(&b, &res, err);
    if (st != AP_OK)
        goto out;
    res.mean_conf = res.n_words > 0 ? (double)TessBaseAPIMeanTextConf(ocr->api) : -1.0;
    *page = res;
    memset(&res, 0, sizeof(res));
out:
    if (ri != NULL)
        TessResultIteratorDelete(ri);
    /* Drop the page's results and Tesseract's reference to the image; keep the model. */
    TessBaseAPIClear(ocr->api);
    pixDestroy(&pix);
    free(b.text);
    free(b.lines);
    ap__ocr_page_release(&res);
    return st;
}
