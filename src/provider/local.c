/*
 * local.c - the offline "local" provider: Tesseract OCR plus rules, no network, no key.
 *
 * Tasks:
 *   describe (also any other task, or none): the message content is JSON text
 *     {"task":"describe","text":...,"width":W,"height":H,"ocr_confidence":0..1|null,
 *      "lines":N,"words":N,"images":[{"width","height","grayscale","ocr_confidence","lines",
 *      "words"},...]}
 *     where text is the OCR text of every image (pages separated by a blank line), the
 *     top-level width/height are the first image's, and ocr_confidence is Tesseract's mean
 *     word confidence / 100 (null when no text was found).
 *   invoice_extraction: the content is JSON text
 *     {"vendor":s|null,"invoice_number":s|null,"date":"YYYY-MM-DD"|null,"total":n|null,
 *      "currency":"EUR"|null,"confidence":0..1}
 *     read from all images together (a multi-page invoice is one document); confidence is
 *     the share of the five fields found times the OCR confidence.
 *
 * The rules read OCR output, so they expect its slips: a letter for a digit, a stray mark, a
 * label and its value in different columns. Each field is chosen by scoring every candidate
 * rather than by the first match: labels say which of several dates is the invoice date,
 * which amount is the total, which company is the issuer and which the customer. Keyword
 * lists cover English, German, Dutch, French and Malaysian receipts, the documents the tests
 * have; they are data, meant to grow.
 *
 * Everything below works on bytes: keywords compare ASCII case-insensitively, other bytes
 * (UTF-8 sequences like the euro sign) compare exactly.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aperture/hash.h"
#include "core/core.h"
#include "provider/ocr.h"
#include "provider/provider.h"

#define NPOS ((size_t)-1)

/* ---- bytes ------------------------------------------------------------------------------ */

static int lc(int c)
{
    return c >= 'A' && c <= 'Z' ? c + 32 : c;
}
static bool is_digit(int c)
{
    return c >= '0' && c <= '9';
}
static bool is_alpha(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}
static bool is_upper(int c)
{
    return c >= 'A' && c <= 'Z';
}
static bool is_alnum(int c)
{
    return is_digit(c) || is_alpha(c);
}
/* A byte that continues a word for keyword boundaries. */
static bool is_word(int c)
{
    return is_alnum(c) || c == '_';
}
static bool is_space(int c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/*
 * Position of keyword kw in s[from..n), ASCII case-insensitive, or NPOS. Where kw begins
 * (ends) with a word character, the byte before (after) the match must not be one, so "total"
 * does not match inside "subtotal" or "totals".
 */
static size_t find_kw(const char *s, size_t n, size_t from, const char *kw)
{
    size_t k = strlen(kw);
    if (k == 0 || n < k)
        return NPOS;
    for (size_t i = from; i + k <= n; i++) {
        size_t j = 0;
        while (j < k && lc((unsigned char)s[i + j]) == lc((unsigned char)kw[j]))
            j++;
        if (j < k)
            continue;
        if (is_word((unsigned char)kw[0]) && i > 0 && is_word((unsigned char)s[i - 1]))
            continue;
        if (is_word((unsigned char)kw[k - 1]) && i + k < n && is_word((unsigned char)s[i + k]))
            continue;
        return i;
    }
    return NPOS;
}

/* The first keyword of a NULL-terminated list found in s; at and kw_end get where. */
static const char *find_any(const char *s, size_t n, const char *const *list, size_t *at,
                            size_t *kw_end)
{
    const char *best = NULL;
    size_t best_at = NPOS;
    for (size_t i = 0; list[i] != NULL; i++) {
        size_t p = find_kw(s, n, 0, list[i]);
        if (p != NPOS && (p < best_at || (p == best_at && strlen(list[i]) > strlen(best)))) {
            best = list[i];
            best_at = p;
        }
    }
    if (best != NULL) {
        if (at != NULL)
            *at = best_at;
        if (kw_end != NULL)
            *kw_end = best_at + strlen(best);
    }
    return best;
}

/* Copy s[0..n) into out (cap bytes, always terminated), cut at a UTF-8 character boundary. */
static void copy_cut(char *out, size_t cap, const char *s, size_t n)
{
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(out, s, n);
    out[n] = '\0';
}

/* ---- currencies ------------------------------------------------------------------------- */

struct cur_mark {
    const char *mark;
    const char *code;
    bool word;      /* must stand alone: no letter right before or after */
    bool fold_case; /* compare ASCII case-insensitively */
};

/* Longer marks first where one is a suffix of another ("US$" before "$"). */
/* clang-format off */
static const struct cur_mark cur_marks[] = {
    {"US$", "USD", false, false},  {"CA$", "CAD", false, false}, {"HK$", "HKD", false, false},
    {"NZ$", "NZD", false, false},  {"S$", "SGD", false, false},  {"A$", "AUD", false, false},
    {"C$", "CAD", false, false},   {"R$", "BRL", false, false},  {"$", "USD", false, false},
    {"\xe2\x82\xac", "EUR", false, false}, /* euro sign */
    {"\xc2\xa3", "GBP", false, false},     /* pound sign */
    {"\xe2\x82\xb9", "INR", false, false}, /* rupee sign */
    {"\xc2\xa5", "JPY", false, false},     /* yen sign */
    {"\xe2\x82\xa9", "KRW", false, false}, /* won sign */
    {"\xe0\xb8\xbf", "THB", false, false}, /* baht sign */
    {"RM", "MYR", true, false},    {"Rs.", "INR", true, false},  {"Rs", "INR", true, false},
    {"Rp", "IDR", true, false},    {"EUR", "EUR", true, false},  {"USD", "USD", true, false},
    {"GBP", "GBP", true, false},   {"MYR", "MYR", true, false},  {"INR", "INR", true, false},
    {"SGD", "SGD", true, false},   {"AUD", "AUD", true, false},  {"CAD", "CAD", true, false},
    {"CHF", "CHF", true, false},   {"JPY", "JPY", true, false},  {"CNY", "CNY", true, false},
    {"RMB", "CNY", true, false},   {"HKD", "HKD", true, false},  {"NZD", "NZD", true, false},
    {"SEK", "SEK", true, false},   {"NOK", "NOK", true, false},  {"DKK", "DKK", true, false},
    {"PLN", "PLN", true, false},   {"CZK", "CZK", true, false},  {"HUF", "HUF", true, false},
    {"ZAR", "ZAR", true, false},   {"BRL", "BRL", true, false},  {"MXN", "MXN", true, false},
    {"AED", "AED", true, false},   {"IDR", "IDR", true, false},  {"THB", "THB", true, false},
    {"KRW", "KRW", true, false},   {"euro", "EUR", true, true},
    {"euros", "EUR", true, true},  {"ringgit", "MYR", true, true},
    {"rupees", "INR", true, true},
};
/* clang-format on */

/* The currency marker starting exactly at s[i], or NULL; *end gets its end. */
static const char *currency_at(const char *s, size_t n, size_t i, size_t *end)
{
    for (size_t m = 0; m < sizeof(cur_marks) / sizeof(cur_marks[0]); m++) {
        const struct cur_mark *cm = &cur_marks[m];
        size_t k = strlen(cm->mark);
        if (i + k > n)
            continue;
        size_t j = 0;
        if (cm->fold_case) {
            while (j < k && lc((unsigned char)s[i + j]) == cm->mark[j])
                j++;
        } else {
            while (j < k && s[i + j] == cm->mark[j])
                j++;
        }
        if (j < k)
            continue;
        /* "$" after letters is part of a longer sign ("US$") that did not match, e.g. "X$";
         * a sign glued to a following letter is OCR misreading one ("CS0001" as a euro
         * sign and "S0001"). */
        bool alpha_start = is_alpha((unsigned char)cm->mark[0]);
        if ((cm->word || alpha_start) && i > 0 && is_alpha((unsigned char)s[i - 1]))
            continue;
        if (i + k < n && is_alpha((unsigned char)s[i + k]))
            continue;
        *end = i + k;
        return cm->code;
    }
    return NULL;
}

const char *ap__local_find_currency(const char *s, size_t len, size_t *start, size_t *end)
{
    for (size_t i = 0; i < len; i++) {
        size_t e;
        const char *code = currency_at(s, len, i, &e);
        if (code != NULL) {
            if (start != NULL)
                *start = i;
            if (end != NULL)
                *end = e;
            return code;
        }
    }
    return NULL;
}

/* A currency marker right before s[i] (spaces and '(' between allowed), or right after
 * s[e] (spaces between allowed). */
static const char *currency_next_to(const char *s, size_t n, size_t i, size_t e)
{
    size_t b = i;
    while (b > 0 && (s[b - 1] == ' ' || s[b - 1] == '(') && i - b < 3)
        b--;
    /* Try every start that would end exactly at b (marks are at most 7 bytes). */
    for (size_t k = 1; k <= 7 && k <= b; k++) {
        size_t me;
        const char *code = currency_at(s, n, b - k, &me);
        if (code != NULL && me == b)
            return code;
    }
    size_t a = e;
    while (a < n && s[a] == ' ' && a - e < 2)
        a++;
    size_t me;
    const char *code = a < n ? currency_at(s, n, a, &me) : NULL;
    /* "2014 $4.11": a sign that starts the next amount does not belong to this number. */
    if (code != NULL) {
        while (me < n && s[me] == ' ')
            me++;
        if (me < n && is_digit((unsigned char)s[me]))
            code = NULL;
    }
    return code;
}

/* ---- amounts ---------------------------------------------------------------------------- */

/*
 * Parse the number starting at s[i] (a digit at a number boundary). A valid amount has a
 * two-digit decimal part after its last separator, and any other separators group thousands
 * (first group 1-3 digits, then exactly 3, all the same character and not the decimal one);
 * or it is a whole number: no separator, or only thousands groups. *whole tells which.
 */
static bool number_at(const char *s, size_t n, size_t i, double *val, size_t *end, bool *whole)
{
    size_t j = i;
    while (j < n && (is_digit((unsigned char)s[j]) || s[j] == '.' || s[j] == ','))
        j++;
    while (j > i && (s[j - 1] == '.' || s[j - 1] == ','))
        j--;
    /* What follows must end the number: not a letter glued to it, not a percent sign, not
     * a time or a range of digits. */
    if (j < n) {
        unsigned char c = (unsigned char)s[j];
        if (is_alnum(c) || c == '%' || c == '_' || c == ':' || c == '/')
            return false;
        if ((c == '-' || c == '.' || c == ',') && j + 1 < n && is_digit((unsigned char)s[j + 1]))
            return false;
    }
    size_t seps[16], n_seps = 0;
    for (size_t k = i; k < j; k++) {
        if (s[k] == '.' || s[k] == ',') {
            if (n_seps == sizeof(seps) / sizeof(seps[0]))
                return false;
            seps[n_seps++] = k;
        }
    }
    size_t int_end = j;
    bool dec = false;
    if (n_seps > 0 && j - seps[n_seps - 1] - 1 == 2) {
        dec = true;
        int_end = seps[n_seps - 1];
        n_seps--;
        for (size_t k = 0; k < n_seps; k++) {
            if (s[seps[k]] == s[int_end])
                return false;
        }
    }
    /* Thousands groups in s[i..int_end). */
    size_t prev = i;
    for (size_t k = 0; k < n_seps; k++) {
        size_t g = seps[k] - prev;
        if (k == 0 ? (g < 1 || g > 3) : g != 3)
            return false;
        if (s[seps[k]] != s[seps[0]])
            return false;
        prev = seps[k] + 1;
    }
    if (n_seps > 0 && int_end - prev != 3)
        return false;
    if (int_end - i - n_seps > 12)
        return false;
    double v = 0;
    for (size_t k = i; k < int_end; k++) {
        if (is_digit((unsigned char)s[k]))
            v = v * 10 + (s[k] - '0');
    }
    if (dec)
        v += (s[int_end + 1] - '0') / 10.0 + (s[int_end + 2] - '0') / 100.0;
    *val = v;
    *end = j;
    *whole = !dec;
    return true;
}

/* Where a number may start: not inside a word, a longer number or after a minus sign. */
static bool number_start(const char *s, size_t i)
{
    if (i == 0)
        return true;
    unsigned char p = (unsigned char)s[i - 1];
    if (is_alnum(p) || p == '_')
        return false;
    if ((p == '.' || p == ',' || p == '-' || p == '/' || p == ':') && i >= 2 &&
        is_digit((unsigned char)s[i - 2]))
        return false;
    if (p == '-')
        return false; /* a negative amount (a credit, a discount) is never the total */
    return true;
}

/* The amount at or after s[from]: first one found. *is_whole: it has no decimal part. */
static bool amount_from(const char *s, size_t n, size_t from, double *value, size_t *start,
                        size_t *end, bool *is_marked, bool *is_whole)
{
    for (size_t i = from; i < n; i++) {
        if (!is_digit((unsigned char)s[i]) || !number_start(s, i))
            continue;
        double v;
        size_t e;
        bool whole;
        if (!number_at(s, n, i, &v, &e, &whole)) {
            while (i + 1 < n &&
                   (is_digit((unsigned char)s[i + 1]) || s[i + 1] == '.' || s[i + 1] == ','))
                i++;
            continue;
        }
        bool marked = currency_next_to(s, n, i, e) != NULL;
        if (whole && !marked) {
            i = e > i ? e - 1 : i;
            continue;
        }
        *value = v;
        if (start != NULL)
            *start = i;
        if (end != NULL)
            *end = e;
        if (is_marked != NULL)
            *is_marked = marked;
        if (is_whole != NULL)
            *is_whole = whole;
        return true;
    }
    return false;
}

bool ap__local_find_amount(const char *s, size_t len, double *value, size_t *start, size_t *end,
                           bool *is_marked)
{
    return amount_from(s, len, 0, value, start, end, is_marked, NULL);
}

/* ---- dates ------------------------------------------------------------------------------ */

/* Month names and abbreviations per month, lowercase ('|'-separated): English, German,
 * Dutch, French, Spanish, Italian, Portuguese; accented letters as lowercase UTF-8, and
 * their unaccented spellings since OCR often drops the accent. */
static const char *const month_names[12] = {
    "january|jan|januar|januari|janvier|janv|enero|gennaio|janeiro",
    "february|feb|febr|februar|februari|f\xc3\xa9vrier|fevrier|f\xc3\xa9vr|fevr|febrero|febbraio|"
    "fevereiro",
    "march|mar|m\xc3\xa4rz|maerz|marz|mrz|maart|mrt|mars|marzo|mar\xc3\xa7o|marco",
    "april|apr|avril|avr|abril|aprile",
    "may|mai|mei|mayo|maggio|maio",
    "june|jun|juni|juin|junio|giugno|junho",
    "july|jul|juli|juillet|juil|julio|luglio|julho",
    "august|aug|augustus|ao\xc3\xbbt|aout|agosto",
    "september|sep|sept|septembre|septiembre|settembre|setembro",
    "october|oct|oktober|okt|octobre|octubre|ottobre|outubro",
    "november|nov|novembre|noviembre|novembro",
    "december|dec|dezember|dez|d\xc3\xa9\x63\x65mbre|decembre|d\xc3\xa9\x63|diciembre|dicembre|"
    "dezembro",
};

/* A byte of a word for month names: ASCII letters and any UTF-8 byte (accented letters). */
static bool is_name_byte(unsigned char c)
{
    return is_alpha(c) || c >= 0x80;
}

/*
 * The month named by the word at s[i] (a word start), or 0; *end gets the end of the word
 * plus an abbreviation's '.'. Latin-1 capitals in UTF-8 (C3 80..9E) fold to lowercase.
 */
static int month_at(const char *s, size_t n, size_t i, size_t *end)
{
    char w[16];
    size_t k = 0, j = i;
    if (i > 0 && is_name_byte((unsigned char)s[i - 1]))
        return 0;
    while (j < n && is_name_byte((unsigned char)s[j])) {
        if (k + 1 >= sizeof(w))
            return 0;
        unsigned char c = (unsigned char)s[j];
        if (k > 0 && (unsigned char)w[k - 1] == 0xC3 && c >= 0x80 && c <= 0x9E)
            c += 0x20;
        w[k++] = (char)lc(c);
        j++;
    }
    w[k] = '\0';
    if (k < 3)
        return 0;
    for (int m = 0; m < 12; m++) {
        for (const char *p = month_names[m]; *p;) {
            size_t l = strcspn(p, "|");
            if (l == k && memcmp(p, w, k) == 0) {
                if (j < n && s[j] == '.')
                    j++;
                *end = j;
                return m + 1;
            }
            p += l + (p[l] == '|');
        }
    }
    return 0;
}

static bool valid_ymd(int y, int m, int d)
{
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (y < 1970 || y > 2099 || m < 1 || m > 12 || d < 1)
        return false;
    int md = mdays[m - 1];
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
        md = 29;
    return d <= md;
}

/* Read 1..max digits at s[*j]; returns the count (0: none) and the value. */
static size_t digits_at(const char *s, size_t n, size_t *j, size_t max, int *val)
{
    size_t k = 0;
    int v = 0;
    while (*j < n && k < max && is_digit((unsigned char)s[*j])) {
        v = v * 10 + (s[*j] - '0');
        (*j)++;
        k++;
    }
    *val = v;
    return k;
}

static int full_year(int y, size_t n_digits)
{
    if (n_digits == 2)
        return y >= 70 ? 1900 + y : 2000 + y;
    return y;
}

/* A numeric date at s[i]: d/m/y, m/d/y, y-m-d with one separator of / - . used twice. */
static bool numeric_date_at(const char *s, size_t n, size_t i, bool month_first, int *y, int *m,
                            int *d, size_t *end)
{
    size_t j = i;
    int a, b, c;
    size_t na = digits_at(s, n, &j, 4, &a);
    if (na == 0 || na == 3 || j >= n)
        return false;
    char sep = s[j];
    if (sep != '/' && sep != '-' && sep != '.')
        return false;
    j++;
    size_t nb = digits_at(s, n, &j, 2, &b);
    if (nb == 0 || j >= n || s[j] != sep)
        return false;
    j++;
    size_t nc = digits_at(s, n, &j, na == 4 ? 2 : 4, &c);
    if (j < n && is_digit((unsigned char)s[j]))
        return false;
    if (j < n && (is_alpha((unsigned char)s[j]) || s[j] == '_'))
        return false;
    if (j + 1 < n && (s[j] == '/' || s[j] == '.' || s[j] == ',') &&
        is_digit((unsigned char)s[j + 1]))
        return false;
    if (na == 4) {
        if (nc == 0)
            return false;
        *y = a, *m = b, *d = c;
    } else {
        if (nc != 2 && nc != 4)
            return false;
        *y = full_year(c, nc);
        if (a > 12 || (!month_first && b <= 12))
            *d = a, *m = b;
        else
            *m = a, *d = b;
    }
    *end = j;
    return valid_ymd(*y, *m, *d);
}

/* Skip spaces (and, when also is set, the characters in it); returns the new position. */
static size_t skip_set(const char *s, size_t n, size_t j, const char *also)
{
    while (j < n && (s[j] == ' ' || (also != NULL && strchr(also, s[j]) != NULL && s[j] != '\0')))
        j++;
    return j;
}

/* An ordinal suffix after a day number ("st", "nd", "rd", "th", "er", "e"), skipped. */
static size_t skip_ordinal(const char *s, size_t n, size_t j)
{
    static const char *const suf[] = {"st", "nd", "rd", "th", "er", "e", NULL};
    for (size_t k = 0; suf[k] != NULL; k++) {
        size_t l = strlen(suf[k]);
        if (j + l <= n && lc((unsigned char)s[j]) == suf[k][0] &&
            (l == 1 || lc((unsigned char)s[j + 1]) == suf[k][1]) &&
            (j + l == n || !is_alpha((unsigned char)s[j + l])))
            return j + l;
    }
    return j;
}

/* A year after a textual month: 4 digits, or 2 when the date is written with hyphens. */
static bool year_at(const char *s, size_t n, size_t j, bool hyphens, int *y, size_t *end)
{
    int v;
    size_t k = digits_at(s, n, &j, 4, &v);
    if ((k != 4 && !(k == 2 && hyphens)) || (j < n && is_digit((unsigned char)s[j])))
        return false;
    *y = full_year(v, k);
    *end = j;
    return true;
}

/* "19 april 2014", "7. Mai 2014", "3rd March, 2020", "20-Oct-15" at s[i] (a digit). */
static bool day_month_year_at(const char *s, size_t n, size_t i, int *y, int *m, int *d,
                              size_t *end)
{
    size_t j = i;
    int day;
    size_t nd = digits_at(s, n, &j, 2, &day);
    if (nd == 0 || (j < n && is_digit((unsigned char)s[j])))
        return false;
    bool hyphens = j < n && s[j] == '-';
    if (j < n && s[j] == '.')
        j++;
    j = skip_ordinal(s, n, j);
    size_t k = skip_set(s, n, j, hyphens ? "-" : NULL);
    if (k == j && !(k < n && is_name_byte((unsigned char)s[k]) && j > i + nd))
        return false;
    size_t me;
    int month = month_at(s, n, k, &me);
    if (month == 0)
        return false;
    k = skip_set(s, n, me, hyphens ? "-" : ",");
    if (k == me)
        return false;
    if (!year_at(s, n, k, hyphens, y, end))
        return false;
    *m = month, *d = day;
    return valid_ymd(*y, *m, *d);
}

/* "August 3 , 2014", "Jan 1, 2022", "March 3rd 2020" at s[i] (a word start). */
static bool month_day_year_at(const char *s, size_t n, size_t i, int *y, int *m, int *d,
                              size_t *end)
{
    size_t me;
    int month = month_at(s, n, i, &me);
    if (month == 0)
        return false;
    size_t j = skip_set(s, n, me, NULL);
    if (j == me)
        return false;
    int day;
    size_t nd = digits_at(s, n, &j, 2, &day);
    if (nd == 0 || (j < n && is_digit((unsigned char)s[j])))
        return false;
    j = skip_ordinal(s, n, j);
    size_t k = skip_set(s, n, j, ",");
    if (k == j)
        return false;
    if (!year_at(s, n, k, false, y, end))
        return false;
    *m = month, *d = day;
    return valid_ymd(*y, *m, *d);
}

bool ap__local_find_date(const char *s, size_t len, bool month_first, char iso[11], size_t *start,
                         size_t *end)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        int y, m, d;
        size_t e;
        bool ok = false;
        if (is_digit(c) && (i == 0 || !is_alnum((unsigned char)s[i - 1]))) {
            if (i > 0 &&
                (s[i - 1] == '.' || s[i - 1] == ',' || s[i - 1] == '/' || s[i - 1] == '-' ||
                 s[i - 1] == ':') &&
                i >= 2 && is_digit((unsigned char)s[i - 2]))
                continue;
            ok = numeric_date_at(s, len, i, month_first, &y, &m, &d, &e) ||
                 day_month_year_at(s, len, i, &y, &m, &d, &e);
        } else if (is_name_byte(c)) {
            ok = month_day_year_at(s, len, i, &y, &m, &d, &e);
        }
        if (ok) {
            char buf[32]; /* y, m, d are validated: exactly 10 characters */
            snprintf(buf, sizeof(buf), "%04d-%02d-%02d", y, m, d);
            memcpy(iso, buf, 11);
            if (start != NULL)
                *start = i;
            if (end != NULL)
                *end = e;
            return true;
        }
    }
    return false;
}

/* ---- the page as lines ------------------------------------------------------------------ */

struct line {
    const char *s;
    size_t n;
};

static struct line line_at(const struct ap__ocr_page *pg, size_t i)
{
    struct line l = {pg->text + pg->lines[i].off, pg->lines[i].len};
    return l;
}

/* ---- total ------------------------------------------------------------------------------ */

struct kw_weight {
    const char *kw;
    int weight;
};

/* What labels the amount to pay. 3: says "what you pay"; 2: a plain total; 1: a header. */
/* clang-format off */
static const struct kw_weight total_kws[] = {
    {"grand total", 3},       {"amount due", 3},        {"balance due", 3},
    {"total due", 3},         {"amount payable", 3},    {"total payable", 3},
    {"total to pay", 3},      {"to pay", 3},            {"total amount", 3},
    {"total incl", 3},        {"inclusive of", 3},      {"incl. gst", 3},
    {"incl gst", 3},          {"incl. vat", 3},         {"incl. btw", 3},
    {"incl btw", 3},          {"rounded total", 3},     {"total ttc", 3},
    {"montant ttc", 3},       {"net a payer", 3},       {"net \xc3\xa0 payer", 3},
    {"a payer", 3},           {"\xc3\xa0 payer", 3},    {"te betalen", 3},
    {"gesamtbetrag", 3},      {"rechnungsbetrag", 3},   {"endbetrag", 3},
    {"zu zahlen", 3},         {"importe total", 3},     {"total a pagar", 3},
    {"total", 2},             {"totaal", 2},            {"totale", 2},
    {"summe", 2},             {"gesamt", 2},            {"amount", 1},
    {"montant", 1},           {"betrag", 1},            {"bedrag", 1},
};
/* clang-format on */

/* Lines with these are about some other sum. */
static const char *const total_neg[] = {
    "subtotal",     "sub total",   "sub-total", "subtotaal",      "zwischensumme",
    "sous-total",   "sous total",  "total qty", "total quantity", "total items",
    "total item",   "no. items",   "tax total", "total tax",      "total gst",
    "totalgst",     "gst total",   "total vat", "vat total",      "excl",
    "exclusief",    "excluding",   "exclusive", "untaxed",        "before tax",
    "discount",     "savings",     "change",    "cash",           "tendered",
    "rounding",     "ohne",        "netto",     "hors taxe",      "ht",
    "total weight", "total pages", NULL,
};

struct cand {
    int score;
    double value;
    size_t line;
    size_t pos; /* byte offset of the amount in its line */
};

/* Is the rest of a line after a label only punctuation or a currency in brackets? */
static bool rest_is_empty(struct line l, size_t from)
{
    size_t letters = 0;
    for (size_t i = from; i < l.n; i++) {
        if (is_digit((unsigned char)l.s[i]))
            return false;
        if (is_alpha((unsigned char)l.s[i]))
            letters++;
    }
    return letters <= 3;
}

static bool find_total(const struct ap__ocr_page *pg, struct cand *best)
{
    bool found = false;
    for (size_t li = 0; li < pg->n_lines; li++) {
        struct line l = line_at(pg, li);
        int weight = 0;
        size_t kw_end = 0;
        for (size_t k = 0; k < sizeof(total_kws) / sizeof(total_kws[0]); k++) {
            size_t p = find_kw(l.s, l.n, 0, total_kws[k].kw);
            if (p != NPOS && total_kws[k].weight > weight) {
                weight = total_kws[k].weight;
                kw_end = p + strlen(total_kws[k].kw);
            }
        }
        if (weight == 0)
            continue;
        if (weight < 3 && find_any(l.s, l.n, total_neg, NULL, NULL) != NULL)
            continue;
        /* The largest amount after the label (totals lines often carry net, tax, gross), and
         * whole numbers only when there is no amount with cents. */
        struct cand c = {0, -1, li, 0};
        size_t from = kw_end, s, e;
        double v;
        bool whole, cents = false;
        while (amount_from(l.s, l.n, from, &v, &s, &e, NULL, &whole)) {
            if (!whole && !cents)
                c.value = -1, cents = true;
            if ((!whole || !cents) && v > c.value)
                c.value = v, c.pos = s;
            from = e;
        }
        if (c.value < 0 && rest_is_empty(l, kw_end) && li + 1 < pg->n_lines) {
            /* Label on its own line, the value under it. */
            struct line nx = line_at(pg, li + 1);
            size_t lead = 0;
            while (lead < nx.n && !is_digit((unsigned char)nx.s[lead]) && lead < 8)
                lead++;
            if (amount_from(nx.s, nx.n, 0, &v, &s, &e, NULL, NULL) && s == lead)
                c.value = v, c.line = li + 1, c.pos = s;
        }
        if (c.value < 0)
            continue;
        c.score = weight;
        if (!found || c.score > best->score || (c.score == best->score && c.value >= best->value)) {
            *best = c;
            found = true;
        }
    }
    return found;
}

/* ---- currency of the document ----------------------------------------------------------- */

/*
 * The marker nearest the total on its line, else the most frequent marker in the text (the
 * first seen on a tie).
 */
static const char *find_doc_currency(const struct ap__ocr_page *pg, const struct cand *total)
{
    if (total != NULL) {
        struct line l = line_at(pg, total->line);
        const char *code = NULL;
        size_t best_d = NPOS;
        for (size_t i = 0; i < l.n; i++) {
            size_t e;
            const char *c = currency_at(l.s, l.n, i, &e);
            if (c == NULL)
                continue;
            size_t d = i > total->pos ? i - total->pos : total->pos - i;
            if (d < best_d)
                best_d = d, code = c;
            i = e - 1;
        }
        if (code != NULL)
            return code;
    }
    struct {
        const char *code;
        int n;
    } seen[16];
    size_t n_seen = 0;
    for (size_t i = 0; i < pg->text_len; i++) {
        size_t e;
        const char *c = currency_at(pg->text, pg->text_len, i, &e);
        if (c == NULL)
            continue;
        size_t k = 0;
        while (k < n_seen && strcmp(seen[k].code, c) != 0)
            k++;
        if (k == n_seen && n_seen < sizeof(seen) / sizeof(seen[0]))
            seen[n_seen].code = c, seen[n_seen].n = 0, n_seen++;
        if (k < n_seen)
            seen[k].n++;
        i = e - 1;
    }
    const char *best = NULL;
    int best_n = 0;
    for (size_t k = 0; k < n_seen; k++) {
        if (seen[k].n > best_n)
            best = seen[k].code, best_n = seen[k].n;
    }
    return best;
}

/* ---- date ------------------------------------------------------------------------------- */

/* Words that turn a following "date" label into the issue date, or into some other date. */
static const char *const date_good_before[] = {
    "invoice", "inv",      "bill", "issue",     "issued", "receipt",
    "tax",     "document", "doc",  "statement", NULL,
};
static const char *const date_bad_before[] = {
    "due", "order", "delivery", "ship",  "shipping", "dispatch", "payment", "expiry", "start",
    "end", "print", "printed",  "birth", "service",  "value",    "valid",   "period", NULL,
};
/* One-word labels. */
/* clang-format off */
static const struct kw_weight date_labels[] = {
    {"factuurdatum", 3},  {"rechnungsdatum", 3},  {"invoice date", 3}, {"date of invoice", 3},
    {"date de facture", 3}, {"date de la facture", 3}, {"fecha de factura", 3},
    {"belegdatum", 3},    {"orderdatum", -4},     {"bestelldatum", -4}, {"lieferdatum", -4},
    {"leverdatum", -4},   {"vervaldatum", -4},    {"f\xc3\xa4lligkeitsdatum", -4},
    {"zahlungsziel", -4}, {"date limite", -4},    {"\xc3\xa9\x63h\xc3\xa9\x61nce", -4},
    {"echeance", -4},     {"date", 2},            {"dated", 2},        {"datum", 2},
    {"fecha", 2},         {"tarikh", 2},
};
/* clang-format on */

/*
 * The score of a date label occurrence at l.s[p] (label kw): compound labels carry their own
 * weight; a bare "date" looks at the word before it ("Invoice Date" vs "Due Date").
 */
static int label_score(struct line l, size_t p, const struct kw_weight *kw)
{
    if (kw->weight != 2)
        return kw->weight;
    size_t e = p;
    while (e > 0 && !is_alpha((unsigned char)l.s[e - 1]) && p - e < 3)
        e--;
    size_t b = e;
    while (b > 0 && is_alpha((unsigned char)l.s[b - 1]))
        b--;
    if (b == e)
        return 2;
    struct line w = {l.s + b, e - b};
    for (size_t k = 0; date_good_before[k] != NULL; k++) {
        if (w.n == strlen(date_good_before[k]) && find_kw(w.s, w.n, 0, date_good_before[k]) == 0)
            return 3;
    }
    for (size_t k = 0; date_bad_before[k] != NULL; k++) {
        if (w.n == strlen(date_bad_before[k]) && find_kw(w.s, w.n, 0, date_bad_before[k]) == 0)
            return -4;
    }
    return 2;
}

/* Does keyword kw occur exactly at s[p], with find_kw()'s boundary rules? */
static bool kw_at(const char *s, size_t n, size_t p, const char *kw)
{
    size_t k = strlen(kw);
    if (p + k > n)
        return false;
    for (size_t j = 0; j < k; j++) {
        if (lc((unsigned char)s[p + j]) != lc((unsigned char)kw[j]))
            return false;
    }
    if (is_word((unsigned char)kw[0]) && p > 0 && is_word((unsigned char)s[p - 1]))
        return false;
    if (is_word((unsigned char)kw[k - 1]) && p + k < n && is_word((unsigned char)s[p + k]))
        return false;
    return true;
}

/* Date labels of l.s[0..upto) in order of position: their scores into out (at most cap). */
static size_t line_labels(struct line l, size_t upto, int *out, size_t cap)
{
    size_t n = 0;
    for (size_t p = 0; p < upto && n < cap; p++) {
        const struct kw_weight *hit = NULL;
        size_t hit_len = 0;
        for (size_t k = 0; k < sizeof(date_labels) / sizeof(date_labels[0]); k++) {
            size_t kl = strlen(date_labels[k].kw);
            if (kl > hit_len && kw_at(l.s, l.n, p, date_labels[k].kw))
                hit = &date_labels[k], hit_len = kl;
        }
        if (hit != NULL) {
            out[n++] = label_score(l, p, hit);
            p += hit_len - 1;
        }
    }
    return n;
}

/* Words that make a date on the line something else, whatever the label says. */
static const char *const date_neg[] = {
    "period", "billing period", "from",    "until", "valid", "expires", "expiry",
    "due",    "order date",     "printed", NULL,
};

static bool find_invoice_date(const struct ap__ocr_page *pg, bool month_first, char iso[11])
{
    int best = -100;
    bool found = false;
    for (size_t li = 0; li < pg->n_lines; li++) {
        struct line l = line_at(pg, li);
        size_t from = 0, k = 0;
        char d[11];
        size_t s, e;
        while (ap__local_find_date(l.s + from, l.n - from, month_first, d, &s, &e)) {
            s += from, e += from;
            int labels[8];
            size_t nl = line_labels(l, s, labels, 8);
            int score = 0;
            if (nl > 0) {
                score = labels[nl - 1];
            } else if (li > 0) {
                /* Values under a row of labels: the k-th date under the k-th label. Only a
                 * pure header row counts; a line with dates of its own used its labels. */
                struct line pv = line_at(pg, li - 1);
                char pd[11];
                size_t np = line_labels(pv, pv.n, labels, 8);
                if (k < np && !ap__local_find_date(pv.s, pv.n, month_first, pd, NULL, NULL))
                    score = labels[k];
            }
            size_t neg_at;
            if (score < 3 && find_any(l.s, s, date_neg, &neg_at, NULL) != NULL)
                score -= 2;
            if (score > best) {
                best = score;
                memcpy(iso, d, 11);
                found = true;
            }
            from = e;
            k++;
        }
    }
    return found;
}

/* ---- invoice number --------------------------------------------------------------------- */

/* Labels followed by the number. Tier 1 name the number; tier 2 is the bare document word. */
/* clang-format off */
static const char *const number_tier1[] = {
    "invoice number", "invoice no.", "invoice no", "invoice nr.", "invoice nr", "invoice #",
    "invoice num", "invoice id", "inv. no.", "inv. no", "inv no.", "inv no", "inv. #", "inv #",
    "bill no.", "bill no", "bill number", "bill #", "receipt no.", "receipt no",
    "receipt number", "receipt #", "document no.", "document no", "document number", "doc no.",
    "doc no", "doc. no.", "tax invoice no", "factuurnummer", "factuurnr.", "factuurnr",
    "factuur nr.", "factuur nr", "rechnungsnummer", "rechnungsnr.", "rechnungsnr",
    "rechnung nr.", "rechnung nr", "facture n\xc2\xb0", "facture n\xc2\xba", "facture no",
    "facture n.", "num\xc3\xa9ro de facture", "numero de facture", "n\xc2\xb0 de facture",
    "factura no", "factura n\xc2\xb0", "n\xc3\xbamero de factura", "numero de factura",
    NULL,
};
/* clang-format on */
static const char *const number_tier2[] = {
    "invoice", "factuur", "rechnung", "facture", "factura", "fattura", NULL,
};

/*
 * The number token at l.s[from]: after separators (: . # = - and the degree/ordinal signs),
 * a run of letters, digits and / _ . - that holds a digit, is 3..63 bytes and is not a date.
 */
static bool number_token(struct line l, size_t from, char *out, size_t cap)
{
    size_t i = from;
    for (;;) {
        if (i < l.n && (l.s[i] == ' ' || l.s[i] == ':' || l.s[i] == '.' || l.s[i] == '#' ||
                        l.s[i] == '=' || l.s[i] == '-' || l.s[i] == '\t'))
            i++;
        else if (i + 1 < l.n && (unsigned char)l.s[i] == 0xC2 &&
                 ((unsigned char)l.s[i + 1] == 0xB0 || (unsigned char)l.s[i + 1] == 0xBA))
            i += 2;
        else
            break;
    }
    size_t j = i;
    while (j < l.n && (is_alnum((unsigned char)l.s[j]) || l.s[j] == '/' || l.s[j] == '_' ||
                       l.s[j] == '.' || l.s[j] == '-'))
        j++;
    while (j > i && (l.s[j - 1] == '.' || l.s[j - 1] == '-' || l.s[j - 1] == '/'))
        j--;
    size_t digits = 0;
    for (size_t k = i; k < j; k++)
        digits += is_digit((unsigned char)l.s[k]);
    if (digits == 0 || j - i < 3 || j - i >= cap)
        return false;
    char iso[11];
    size_t ds, de;
    if (ap__local_find_date(l.s + i, j - i, false, iso, &ds, &de) && ds == 0 && de == j - i)
        return false;
    copy_cut(out, cap, l.s + i, j - i);
    return true;
}

static bool find_invoice_number(const struct ap__ocr_page *pg, char *out, size_t cap)
{
    /* Tier 1, on the line or, when the label stands alone, on one of the next lines. */
    for (size_t li = 0; li < pg->n_lines; li++) {
        struct line l = line_at(pg, li);
        size_t at, end;
        if (find_any(l.s, l.n, number_tier1, &at, &end) == NULL)
            continue;
        if (number_token(l, end, out, cap))
            return true;
        if (!rest_is_empty(l, end))
            continue;
        for (size_t k = li + 1; k < pg->n_lines && k <= li + 3; k++) {
            struct line nx = line_at(pg, k);
            if (number_token(nx, 0, out, cap))
                return true;
        }
    }
    /* Tier 2: "Invoice INV/2023/03/0008"; then a line that is just "# <number>". */
    for (size_t li = 0; li < pg->n_lines; li++) {
        struct line l = line_at(pg, li);
        size_t at, end;
        if (find_any(l.s, l.n, number_tier2, &at, &end) != NULL && end < l.n &&
            (l.s[end] == ' ' || l.s[end] == ':' || l.s[end] == '#') &&
            number_token(l, end, out, cap) && strlen(out) >= 4)
            return true;
    }
    for (size_t li = 0; li < pg->n_lines; li++) {
        struct line l = line_at(pg, li);
        if (l.n > 2 && l.s[0] == '#' && number_token(l, 1, out, cap)) {
            /* The whole rest of the line is the number. */
            size_t k = 1;
            while (k < l.n && l.s[k] == ' ')
                k++;
            if (strlen(out) == l.n - k)
                return true;
        }
    }
    out[0] = '\0';
    return false;
}

/* ---- vendor ----------------------------------------------------------------------------- */

/* Lines that introduce the customer: they and the rest of their block are not the vendor. */
/* clang-format off */
static const char *const customer_labels[] = {
    "bill to", "billed to", "billing address", "ship to", "shipping address", "sold to",
    "deliver to", "delivery address", "invoice to", "invoiced to", "customer", "client",
    "attn", "attention", "recipient", "buyer", "kunde", "klant", "destinataire",
    "factuuradres", "rechnungsadresse", "lieferadresse", "cliente", NULL,
};
/* clang-format on */
/* Labels that introduce the vendor. */
static const char *const vendor_labels[] = {
    "sold by",          "vendor",      "supplier",    "seller",  "issued by", "merchant",
    "verk\xc3\xa4ufer", "leverancier", "fournisseur", "vendeur", NULL,
};
/* Legal-form words that end a company name. Matched as whole words, case as written. */
static const char *const company_suffixes[] = {
    "SDN BHD",    "SDN. BHD.",   "Sdn Bhd",     "Sdn. Bhd.",   "BHD",     "Bhd",
    "BERHAD",     "Berhad",      "B.V.",        "BV",          "N.V.",    "GmbH",
    "GMBH",       "AG",          "Ltd",         "Ltd.",        "LTD",     "LTD.",
    "Limited",    "LIMITED",     "Inc",         "Inc.",        "INC",     "INC.",
    "LLC",        "L.L.C.",      "LLP",         "PLC",         "Plc",     "S.A.",
    "SAS",        "S.A.S.",      "SARL",        "S.r.l.",      "SRL",     "S.L.",
    "S.p.A.",     "Pvt",         "Pvt.",        "PVT",         "Pty",     "PTY",
    "Co.",        "CO",          "CO.",         "Company",     "COMPANY", "Corp",
    "Corp.",      "CORP",        "Corporation", "CORPORATION", "KG",      "OHG",
    "e.K.",       "Oy",          "AB",          "A/S",         "ApS",     "ENTERPRISE",
    "Enterprise", "ENTERPRISES", "Enterprises", NULL,
};
/* Words that name the document, not its issuer. */
static const char *const generic_words[] = {
    "invoice",   "invoices",  "tax",      "simplified", "receipt",   "official", "cash",
    "bill",      "factuur",   "rechnung", "facture",    "factura",   "fattura",  "quittung",
    "kassenbon", "beleg",     "ticket",   "statement",  "quotation", "quote",    "estimate",
    "proforma",  "pro-forma", "original", "copy",       "duplicate", "credit",   "note",
    "page",      "summary",   "retail",   NULL,
};

static bool is_generic_word(const char *w, size_t n)
{
    /* Compare on letters only: "INVOICE." and "-TAX" are generic too. */
    char buf[24];
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < sizeof(buf); i++) {
        if (is_alpha((unsigned char)w[i]) || w[i] == '-')
            buf[k++] = (char)lc((unsigned char)w[i]);
    }
    while (k > 0 && buf[k - 1] == '-')
        k--;
    size_t b = 0;
    while (b < k && buf[b] == '-')
        b++;
    buf[k] = '\0';
    if (k == b)
        return false;
    for (size_t i = 0; generic_words[i] != NULL; i++) {
        if (strcmp(buf + b, generic_words[i]) == 0)
            return true;
    }
    return false;
}

static bool is_suffix_word(const char *w, size_t n)
{
    for (size_t i = 0; company_suffixes[i] != NULL; i++) {
        if (strlen(company_suffixes[i]) == n && memcmp(w, company_suffixes[i], n) == 0)
            return true;
    }
    return false;
}

struct tok {
    size_t b, e; /* byte range in the line */
};

static size_t tokenize(struct line l, struct tok *t, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < l.n && n < cap;) {
        while (i < l.n && is_space((unsigned char)l.s[i]))
            i++;
        if (i == l.n)
            break;
        size_t b = i;
        while (i < l.n && !is_space((unsigned char)l.s[i]))
            i++;
        t[n].b = b, t[n].e = i;
        n++;
    }
    return n;
}

static size_t count_letters(const char *s, size_t n, size_t *upper, size_t *digits)
{
    size_t k = 0;
    if (upper != NULL)
        *upper = 0;
    if (digits != NULL)
        *digits = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_alpha(c))
            k++;
        if (upper != NULL && is_upper(c))
            (*upper)++;
        if (digits != NULL && is_digit(c))
            (*digits)++;
    }
    return k;
}

/*
 * Tidy a candidate name s[0..n) into out: cut at a column or field separator (" - ", "|",
 * " — ", a tab), drop leading marks and single characters, drop document words at either end,
 * and trailing one- or two-character debris that OCR leaves from logos and rules (legal forms
 * like "AG" or "CO" stay). false when fewer than 3 letters are left.
 */
static bool clean_name(const char *s, size_t n, char *out, size_t cap)
{
    static const char *const cuts[] = {" - ", " | ", "|", " \xe2\x80\x94 ", "\t", " _ ", NULL};
    for (size_t k = 0; cuts[k] != NULL; k++) {
        size_t p = find_kw(s, n, 0, cuts[k]);
        if (p != NPOS && p > 0)
            n = p;
    }
    struct line l = {s, n};
    struct tok t[24];
    size_t nt = tokenize(l, t, 24);
    size_t a = 0, z = nt;
    while (a < z) {
        const char *w = s + t[a].b;
        size_t wn = t[a].e - t[a].b;
        if (count_letters(w, wn, NULL, NULL) + (size_t)(is_digit((unsigned char)w[0])) == 0 ||
            wn == 1 || is_generic_word(w, wn))
            a++;
        else
            break;
    }
    while (z > a) {
        const char *w = s + t[z - 1].b;
        size_t wn = t[z - 1].e - t[z - 1].b;
        while (wn > 0 && (w[wn - 1] == ',' || w[wn - 1] == ';' || w[wn - 1] == ':'))
            wn--;
        if (is_generic_word(w, wn) ||
            (wn <= 2 && !is_suffix_word(w, wn) && !(wn == 1 && w[0] == '&')) ||
            count_letters(w, wn, NULL, NULL) == 0)
            z--;
        else
            break;
    }
    if (a >= z)
        return false;
    size_t b = t[a].b, e = t[z - 1].e;
    while (e > b && (s[e - 1] == ',' || s[e - 1] == ';' || s[e - 1] == ':'))
        e--;
    if (count_letters(s + b, e - b, NULL, NULL) < 3)
        return false;
    copy_cut(out, cap, s + b, e - b);
    return true;
}

/* Mark the lines that belong to the customer (see customer_labels). */
static void mark_customer(const struct ap__ocr_page *pg, bool *cust)
{
    for (size_t li = 0; li < pg->n_lines; li++) {
        struct line l = line_at(pg, li);
        size_t at, end;
        if (find_any(l.s, l.n, customer_labels, &at, &end) == NULL)
            continue;
        cust[li] = true;
        int block = pg->lines[li].block;
        bool label_only = rest_is_empty(l, end) && count_letters(l.s, l.n, NULL, NULL) < 24;
        size_t k = li + 1;
        for (; k < pg->n_lines && pg->lines[k].block == block; k++)
            cust[k] = true;
        /* A label alone at the end of its block ("Bill to:"): the address is the next one. */
        if (label_only && k == li + 1 && k < pg->n_lines) {
            int next = pg->lines[k].block;
            for (; k < pg->n_lines && pg->lines[k].block == next; k++)
                cust[k] = true;
        }
    }
}

/* Case-insensitive count of needle in the page text. */
static int count_in_text(const struct ap__ocr_page *pg, const char *needle, size_t nn)
{
    int c = 0;
    if (nn == 0)
        return 0;
    for (size_t i = 0; i + nn <= pg->text_len; i++) {
        size_t j = 0;
        while (j < nn && lc((unsigned char)pg->text[i + j]) == lc((unsigned char)needle[j]))
            j++;
        if (j == nn)
            c++, i += nn - 1;
    }
    return c;
}

/* Particles that may sit inside a company name in lowercase. */
static bool is_particle(const char *w, size_t n)
{
    static const char *const p[] = {"&",   "and", "of", "de", "du", "van", "der",
                                    "den", "und", "et", "y",  "e",  "for", NULL};
    for (size_t i = 0; p[i] != NULL; i++) {
        if (strlen(p[i]) == n && memcmp(w, p[i], n) == 0)
            return true;
    }
    return false;
}

/*
 * A company name ending in a legal form on line l: walk back from the suffix over capitalised
 * words, brackets and particles, stopping at a label (word ending in ':'), a document word, a
 * lowercase word or the start of the line, at most 6 words. Returns the name (with its
 * suffix) in out and the core (without the suffix) length in *core_len.
 */
static bool suffix_name(struct line l, char *out, size_t cap, size_t *core_b, size_t *core_e)
{
    struct tok t[48];
    size_t nt = tokenize(l, t, 48);
    for (size_t i = 1; i < nt; i++) {
        size_t sb = t[i].b, se = t[i].e;
        /* Two-word suffixes first ("SDN BHD"), then one word, trailing ',' or ';' dropped. */
        bool hit = false;
        if (i + 1 < nt) {
            size_t e2 = t[i + 1].e;
            while (e2 > sb && (l.s[e2 - 1] == ',' || l.s[e2 - 1] == ';'))
                e2--;
            for (size_t k = 0; company_suffixes[k] != NULL && !hit; k++) {
                if (strchr(company_suffixes[k], ' ') != NULL &&
                    strlen(company_suffixes[k]) == e2 - sb &&
                    memcmp(l.s + sb, company_suffixes[k], e2 - sb) == 0)
                    hit = true, se = e2;
            }
        }
        if (!hit) {
            while (se > sb && (l.s[se - 1] == ',' || l.s[se - 1] == ';'))
                se--;
            hit = is_suffix_word(l.s + sb, se - sb);
            /* "Denver, CO" and "Zug, AG" are addresses: a two-letter form right after a
             * comma is a state or canton. */
            const char *pw = l.s + t[i - 1].b;
            size_t pn = t[i - 1].e - t[i - 1].b;
            if (hit && se - sb == 2 && pw[pn - 1] == ',')
                hit = false;
        }
        if (!hit)
            continue;
        size_t first = i, words = 0;
        while (first > 0 && words < 6) {
            const char *w = l.s + t[first - 1].b;
            size_t wn = t[first - 1].e - t[first - 1].b;
            if (wn > 0 && w[wn - 1] == ':')
                break;
            if (is_generic_word(w, wn))
                break;
            unsigned char c0 = (unsigned char)(w[0] == '(' && wn > 1 ? w[1] : w[0]);
            if (!(is_upper(c0) || is_digit(c0) || c0 >= 0x80 || is_particle(w, wn)))
                break;
            /* The word right before the suffix may end in ',' ("Services, Inc."), others
             * end the name ("Seattle, WA ..."). */
            if (first < i && (w[wn - 1] == ',' || w[wn - 1] == ';'))
                break;
            first--;
            words++;
        }
        if (first == i)
            continue;
        size_t b = t[first].b;
        *core_b = b;
        *core_e = t[i - 1].e;
        while (*core_e > b && (l.s[*core_e - 1] == ',' || l.s[*core_e - 1] == ';'))
            (*core_e)--;
        if (count_letters(l.s + b, *core_e - b, NULL, NULL) < 2)
            continue;
        if (clean_name(l.s + b, se - b, out, cap))
            return true;
    }
    return false;
}

/* Is this line a plausible letterhead (name) line? */
static bool heading_ok(const struct ap__ocr_page *pg, size_t li)
{
    struct line l = line_at(pg, li);
    size_t upper, digits;
    size_t letters = count_letters(l.s, l.n, &upper, &digits);
    if (letters < 3 || upper == 0 || digits * 2 > letters)
        return false;
    if (pg->lines[li].conf >= 0 && pg->lines[li].conf < 60)
        return false;
    /* Below the top third of the page it is body text, not a letterhead. */
    if (pg->height > 0 && pg->lines[li].h > 0 && (double)pg->lines[li].y > pg->height / 3.0)
        return false;
    if (memchr(l.s, '@', l.n) != NULL || memchr(l.s, ':', l.n) != NULL ||
        memchr(l.s, '%', l.n) != NULL || find_kw(l.s, l.n, 0, "www") != NPOS ||
        find_kw(l.s, l.n, 0, "http") != NPOS)
        return false;
    char iso[11];
    double v;
    if (ap__local_find_date(l.s, l.n, false, iso, NULL, NULL) ||
        ap__local_find_amount(l.s, l.n, &v, NULL, NULL, NULL) ||
        ap__local_find_currency(l.s, l.n, NULL, NULL) != NULL)
        return false;
    /* Only document words ("TAX INVOICE") is not a name. */
    struct tok t[24];
    size_t nt = tokenize(l, t, 24), generic = 0, wordy = 0;
    for (size_t k = 0; k < nt; k++) {
        const char *w = l.s + t[k].b;
        size_t wn = t[k].e - t[k].b;
        if (count_letters(w, wn, NULL, NULL) == 0)
            continue;
        wordy++;
        generic += is_generic_word(w, wn);
    }
    /* Names are short; a longer line is a sentence or a table header. */
    return wordy > generic && nt <= 6;
}

static bool find_vendor(const struct ap__ocr_page *pg, char *out, size_t cap)
{
    bool *cust = NULL;
    bool found = false;
    if (pg->n_lines == 0)
        goto out;
    cust = calloc(pg->n_lines, sizeof(*cust));
    if (cust == NULL)
        goto out;
    mark_customer(pg, cust);

    /* 1. A label: "Sold By: WS Retail Services Pvt. Ltd.". */
    for (size_t li = 0; li < pg->n_lines && !found; li++) {
        struct line l = line_at(pg, li);
        size_t at, end;
        if (find_any(l.s, l.n, vendor_labels, &at, &end) == NULL)
            continue;
        while (end < l.n && (l.s[end] == ' ' || l.s[end] == ':' || l.s[end] == '-'))
            end++;
        const char *v = l.s + end;
        size_t vn = l.n - end, digits;
        size_t letters = count_letters(v, vn, NULL, &digits);
        if (letters >= 3 && digits * 2 <= letters && memchr(v, ':', vn) == NULL)
            found = clean_name(v, vn, out, cap);
    }
    /* 2. A company with its legal form, outside the customer's lines; the name the page
     * repeats most (letterhead, footer, legal line) wins, the earliest on a tie. */
    int best = -1;
    char name[128];
    for (size_t li = 0; li < pg->n_lines && !found; li++) {
        if (cust[li])
            continue;
        struct line l = line_at(pg, li);
        size_t cb, ce;
        if (!suffix_name(l, name, sizeof(name), &cb, &ce))
            continue;
        int score = 2 * count_in_text(pg, l.s + cb, ce - cb) + (li < pg->n_lines / 4 ? 1 : 0);
        if (score > best) {
            best = score;
            copy_cut(out, cap, name, strlen(name));
        }
    }
    if (best >= 0)
        found = true;
    /* 3. The letterhead: the first plausible line among the first ones, or a clearly taller
     * one just after it. */
    if (!found) {
        size_t first = NPOS, pick = NPOS, seen = 0;
        for (size_t li = 0; li < pg->n_lines && li < 8 && seen < 4; li++) {
            if (cust[li] || !heading_ok(pg, li))
                continue;
            seen++;
            if (first == NPOS) {
                first = pick = li;
            } else if (pg->lines[li].h * 2 >= pg->lines[first].h * 3 &&
                       pg->lines[li].h > pg->lines[pick].h) {
                pick = li;
            }
        }
        if (pick != NPOS) {
            struct line l = line_at(pg, pick);
            found = clean_name(l.s, l.n, out, cap);
        }
    }
out:
    free(cust);
    if (!found)
        out[0] = '\0';
    return found;
}

/* ---- all fields ------------------------------------------------------------------------- */

void ap__local_extract_invoice(const struct ap__ocr_page *pg, struct ap__invoice_fields *out)
{
    memset(out, 0, sizeof(*out));
    if (pg == NULL || pg->n_lines == 0)
        return;
    struct cand total = {0};
    bool has_total = find_total(pg, &total);
    if (has_total) {
        out->has_total = true;
        out->total = total.value;
    }
    const char *cur = find_doc_currency(pg, has_total ? &total : NULL);
    if (cur != NULL)
        copy_cut(out->currency, sizeof(out->currency), cur, strlen(cur));
    /* US documents write month/day. */
    find_invoice_date(pg, strcmp(out->currency, "USD") == 0, out->date);
    find_invoice_number(pg, out->invoice_number, sizeof(out->invoice_number));
    find_vendor(pg, out->vendor, sizeof(out->vendor));

    int n = (out->vendor[0] != '\0') + (out->invoice_number[0] != '\0') + (out->date[0] != '\0') +
            out->has_total + (out->currency[0] != '\0');
    double ocr = pg->mean_conf >= 0 ? pg->mean_conf / 100.0 : 1.0;
    out->confidence = round(100.0 * n / 5.0 * ocr) / 100.0;
}

/* ---- the provider ----------------------------------------------------------------------- */

/* One page of all the pages' text and lines, as if they were one document. */
static ap_status merge_pages(const struct ap__ocr_page *pages, size_t n, struct ap__ocr_page *out,
                             ap_error *err)
{
    size_t len = 0, lines = 0, words = 0;
    double conf_sum = 0;
    size_t conf_words = 0;
    for (size_t i = 0; i < n; i++) {
        len += pages[i].text_len + 1;
        lines += pages[i].n_lines;
        words += pages[i].n_words;
        if (pages[i].mean_conf >= 0) {
            conf_sum += pages[i].mean_conf * (double)pages[i].n_words;
            conf_words += pages[i].n_words;
        }
    }
    memset(out, 0, sizeof(*out));
    out->text = malloc(len + 1);
    out->lines = calloc(lines ? lines : 1, sizeof(*out->lines));
    if (out->text == NULL || out->lines == NULL) {
        ap__ocr_page_release(out);
        return ap_error_set(err, AP_ENOMEM, "local: out of memory joining %zu pages", n);
    }
    int block_base = 0;
    for (size_t i = 0; i < n; i++) {
        const struct ap__ocr_page *p = &pages[i];
        if (p->text_len == 0)
            continue;
        if (out->text_len > 0)
            out->text[out->text_len++] = '\n';
        size_t base = out->text_len;
        memcpy(out->text + base, p->text, p->text_len);
        out->text_len += p->text_len;
        int max_block = 0;
        for (size_t k = 0; k < p->n_lines; k++) {
            struct ap__ocr_line l = p->lines[k];
            l.off += base;
            max_block = AP_MAX(max_block, l.block);
            l.block += block_base;
            out->lines[out->n_lines++] = l;
        }
        block_base += max_block + 1;
    }
    out->text[out->text_len] = '\0';
    out->n_words = words;
    out->mean_conf = conf_words > 0 ? conf_sum / (double)conf_words : -1.0;
    if (n > 0)
        out->width = pages[0].width, out->height = pages[0].height, out->depth = pages[0].depth;
    return AP_OK;
}

/*
 * A JSON string of s[0..n). Tesseract writes UTF-8, but jansson refuses a string with one bad
 * sequence outright, so should one appear its bytes become '?' rather than the answer losing
 * the field.
 */
static json_t *json_text(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    if (j != NULL)
        return j;
    char *c = malloc(n + 1);
    if (c == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++)
        c[i] = ((unsigned char)s[i] < 0x80 && s[i] != '\0') ? s[i] : '?';
    j = json_stringn(c, n);
    free(c);
    return j;
}

/* Tesseract's 0..100 as 0..1 with two decimals, or JSON null when there was no text. */
static json_t *conf_json(double mean_conf)
{
    return mean_conf >= 0 ? json_real(round(mean_conf) / 100.0) : json_null();
}

static json_t *describe_json(const struct ap__ocr_page *pages, size_t n,
                             const struct ap__ocr_page *all)
{
    json_t *o = json_object();
    json_t *imgs = json_array();
    if (o == NULL || imgs == NULL) {
        json_decref(o);
        json_decref(imgs);
        return NULL;
    }
    /* The text without its final newline. */
    size_t tl = all->text_len;
    while (tl > 0 && all->text[tl - 1] == '\n')
        tl--;
    json_object_set_new(o, "task", json_string("describe"));
    json_object_set_new(o, "text", json_text(all->text, tl));
    json_object_set_new(o, "width", json_integer(n ? pages[0].width : 0));
    json_object_set_new(o, "height", json_integer(n ? pages[0].height : 0));
    json_object_set_new(o, "ocr_confidence", conf_json(all->mean_conf));
    json_object_set_new(o, "lines", json_integer((json_int_t)all->n_lines));
    json_object_set_new(o, "words", json_integer((json_int_t)all->n_words));
    for (size_t i = 0; i < n; i++) {
        json_t *im = json_object();
        if (im == NULL)
            continue;
        json_object_set_new(im, "width", json_integer(pages[i].width));
        json_object_set_new(im, "height", json_integer(pages[i].height));
        json_object_set_new(im, "grayscale", json_boolean(pages[i].depth <= 8));
        json_object_set_new(im, "ocr_confidence", conf_json(pages[i].mean_conf));
        json_object_set_new(im, "lines", json_integer((json_int_t)pages[i].n_lines));
        json_object_set_new(im, "words", json_integer((json_int_t)pages[i].n_words));
        json_array_append_new(imgs, im);
    }
    json_object_set_new(o, "images", imgs);
    return o;
}

static json_t *str_or_null(const char *s)
{
    return s[0] != '\0' ? json_text(s, strlen(s)) : json_null();
}

static json_t *invoice_json(const struct ap__invoice_fields *f)
{
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    json_object_set_new(o, "vendor", str_or_null(f->vendor));
    json_object_set_new(o, "invoice_number", str_or_null(f->invoice_number));
    json_object_set_new(o, "date", str_or_null(f->date));
    json_object_set_new(o, "total", f->has_total ? json_real(f->total) : json_null());
    json_object_set_new(o, "currency", str_or_null(f->currency));
    json_object_set_new(o, "confidence", json_real(f->confidence));
    return o;
}

/* "chatcmpl-local-" + 24 hex digits from the content and the clocks: unique enough for an id,
 * and no state is kept to make it so. */
static void make_id(char *out, size_t cap, const char *content)
{
    struct timespec rt, mt;
    clock_gettime(CLOCK_REALTIME, &rt);
    clock_gettime(CLOCK_MONOTONIC, &mt);
    size_t cl = strlen(content);
    uint8_t *buf = malloc(cl + 2 * sizeof(struct timespec) + sizeof(void *));
    uint8_t dig[AP_SHA256_LEN] = {0};
    char hex[65];
    if (buf != NULL) {
        size_t k = 0;
        memcpy(buf + k, &rt, sizeof(rt)), k += sizeof(rt);
        memcpy(buf + k, &mt, sizeof(mt)), k += sizeof(mt);
        const void *self = &cl;
        memcpy(buf + k, &self, sizeof(self)), k += sizeof(self);
        memcpy(buf + k, content, cl), k += cl;
        if (ap_sha256(buf, k, dig, NULL) != AP_OK)
            memcpy(dig, &rt, AP_MIN(sizeof(rt), sizeof(dig)));
        free(buf);
    } else {
        memcpy(dig, &rt, AP_MIN(sizeof(rt), sizeof(dig)));
    }
    ap_sha256_hex(dig, hex);
    snprintf(out, cap, "chatcmpl-local-%.24s", hex);
}

/* The canonical chat.completion around content (borrowed). NULL on allocation failure. */
static json_t *completion(const char *content)
{
    char id[64];
    make_id(id, sizeof(id), content);
    json_t *msg = json_pack("{s:s, s:s}", "role", "assistant", "content", content);
    json_t *choice = msg ? json_pack("{s:i, s:o, s:n, s:s}", "index", 0, "message", msg, "logprobs",
                                     "finish_reason", "stop")
                         : NULL;
    json_t *usage =
        json_pack("{s:i, s:i, s:i}", "prompt_tokens", 0, "completion_tokens", 0, "total_tokens", 0);
    if (choice == NULL || usage == NULL) {
        json_decref(choice);
        json_decref(usage);
        return NULL;
    }
    return json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o}", "id", id, "object", "chat.completion",
                     "created", (json_int_t)time(NULL), "model", "local", "choices", choice,
                     "usage", usage);
}

ap_status ap__local_answer_ocr(const ap_config *cfg, struct ap__ocr *ocr, const char *task,
                               const json_t *req, const uint8_t *const *images, const size_t *lens,
                               size_t n_images, json_t **resp, ap_error *err)
{
    struct ap__ocr_page *pages = NULL;
    struct ap__ocr_page all = {0};
    struct ap__invoice_fields fields;
    json_t *body = NULL, *out = NULL;
    char *content = NULL;
    ap_status st = AP_OK;

    (void)cfg;
    (void)req;
    if (n_images == 0 || images == NULL || lens == NULL)
        return ap_error_set(err, AP_EINVAL, "local: the local provider needs an image");
    if (AP_NEVER(ocr == NULL))
        return ap_error_set(err, AP_EINVAL, "local: no ocr handle");
    pages = calloc(n_images, sizeof(*pages));
    if (pages == NULL)
        return ap_error_set(err, AP_ENOMEM, "local: out of memory for %zu images", n_images);
    for (size_t i = 0; i < n_images; i++) {
        st = ap__ocr_image(ocr, images[i], lens[i], &pages[i], err);
        if (st != AP_OK)
            goto out;
    }
    st = merge_pages(pages, n_images, &all, err);
    if (st != AP_OK)
        goto out;
    if (task != NULL && strcmp(task, "invoice_extraction") == 0) {
        ap__local_extract_invoice(&all, &fields);
        body = invoice_json(&fields);
    } else {
        body = describe_json(pages, n_images, &all);
    }
    if (body == NULL) {
        st = ap_error_set(err, AP_ENOMEM, "local: out of memory building the answer");
        goto out;
    }
    /* Amounts print as written (4.11, not 4.1100000000000003). */
    content = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(12));
    out = content ? completion(content) : NULL;
    if (out == NULL) {
        st = ap_error_set(err, AP_ENOMEM, "local: out of memory building the answer");
        goto out;
    }
    *resp = out;
    out = NULL;
out:
    for (size_t i = 0; i < n_images; i++)
        ap__ocr_page_release(&pages[i]);
    free(pages);
    ap__ocr_page_release(&all);
    json_decref(body);
    json_decref(out);
    free(content);
    return st;
}

ap_status ap__local_answer(const ap_config *cfg, const char *task, const json_t *req,
                           const uint8_t *const *images, const size_t *lens, size_t n_images,
                           json_t **resp, ap_error *err)
{
    struct ap__ocr *ocr = NULL;
    if (n_images == 0 || images == NULL || lens == NULL)
        return ap_error_set(err, AP_EINVAL, "local: the local provider needs an image");
    ap_status st = ap__ocr_new("eng", &ocr, err);
    if (st == AP_OK)
        st = ap__local_answer_ocr(cfg, ocr, task, req, images, lens, n_images, resp, err);
    ap__ocr_free(ocr);
    return st;
}
