/*
 * pricing.c - list prices per model, built in and overridable from a text file.
 *
 * The built-in table is a const array; an ap_pricing holds only what was loaded on top of it,
 * so a fresh table costs one small allocation and two tables never share mutable state.
 * Lookups match like the token rules (tokens/tokens.h): longest case-insensitive prefix at a
 * name boundary, so "claude-sonnet-4-5-20250929" finds "claude-sonnet-4-5" and
 * "claude-sonnet-4-20250514" finds "claude-sonnet-4".
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aperture/tokens.h"
#include "core/core.h"
#include "tokens/tokens.h"

/*
 * USD per million tokens, input and output: list prices as of late 2025 (standard tier, the
 * shortest context band where a provider has several). Override them with a price file
 * (ap_pricing_load_file, `aperture tokens --prices FILE`): prices change more often than code.
 * Sources: platform.openai.com/docs/pricing, docs.anthropic.com/en/docs/about-claude/pricing,
 * ai.google.dev/gemini-api/docs/pricing. Self-hosted models (Qwen2-VL, ...) have no list price.
 */
static const struct builtin {
    const char *model;
    double in, out;
} builtins[] = {
    {"gpt-4o", 2.50, 10.00},
    {"chatgpt-4o", 5.00, 15.00},
    {"gpt-4o-mini", 0.15, 0.60},
    {"gpt-4.1", 2.00, 8.00},
    {"gpt-4.1-mini", 0.40, 1.60},
    {"gpt-4.1-nano", 0.10, 0.40},
    {"gpt-4.5", 75.00, 150.00},
    {"gpt-5", 1.25, 10.00},
    {"gpt-5-mini", 0.25, 2.00},
    {"gpt-5-nano", 0.05, 0.40},
    {"o1", 15.00, 60.00},
    {"o1-pro", 150.00, 600.00},
    {"o3", 2.00, 8.00},
    {"o3-pro", 20.00, 80.00},
    {"o4-mini", 1.10, 4.40},
    {"computer-use-preview", 3.00, 12.00},
    {"claude-opus-4-5", 5.00, 25.00},
    {"claude-opus-4-1", 15.00, 75.00},
    {"claude-opus-4", 15.00, 75.00},
    {"claude-sonnet-4-5", 3.00, 15.00},
    {"claude-sonnet-4", 3.00, 15.00},
    {"claude-haiku-4-5", 1.00, 5.00},
    {"claude-3-7-sonnet", 3.00, 15.00},
    {"claude-3-5-sonnet", 3.00, 15.00},
    {"claude-3-5-haiku", 0.80, 4.00},
    {"claude-3-opus", 15.00, 75.00},
    {"claude-3-haiku", 0.25, 1.25},
    {"gemini-3-pro", 2.00, 12.00},
    {"gemini-2.5-pro", 1.25, 10.00},
    {"gemini-2.5-flash", 0.30, 2.50},
    {"gemini-2.5-flash-lite", 0.10, 0.40},
    {"gemini-2.0-flash", 0.10, 0.40},
    {"gemini-2.0-flash-lite", 0.075, 0.30},
};

enum {
    PRICE_FILE_MAX = 1 << 20, /* bytes */
    PRICE_LINE_MAX = 1024,    /* bytes, without the newline */
    PRICE_NAME_MAX = 127,     /* bytes */
};

struct entry {
    char *model;
    double in, out;
};

struct ap_pricing {
    struct entry *loaded; /* in file order; names unique (case-insensitive) */
    size_t n, cap;
};

ap_pricing *ap_pricing_new(void)
{
    return ap__xcalloc(1, sizeof(ap_pricing));
}

static void free_entries(struct entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(e[i].model);
    free(e);
}

void ap_pricing_free(ap_pricing *p)
{
    if (p == NULL)
        return;
    free_entries(p->loaded, p->n);
    free(p);
}

static int name_eq(const char *a, const char *b)
{
    size_t n = strlen(a);
    return n == strlen(b) && ap__tokens_prefix_match(a, b) == n;
}

/* Find a name in entries; the index, or n when absent. */
static size_t find_entry(const struct entry *e, size_t n, const char *model)
{
    for (size_t i = 0; i < n; i++) {
        if (name_eq(e[i].model, model))
            return i;
    }
    return n;
}

/* Add or replace an entry, taking ownership of model. Returns AP_ENOMEM on failure (model freed).
 */
static ap_status put_entry(struct entry **e, size_t *n, size_t *cap, char *model, double in,
                           double out)
{
    size_t i = find_entry(*e, *n, model);
    if (i < *n) {
        free((*e)[i].model);
        (*e)[i] = (struct entry){model, in, out};
        return AP_OK;
    }
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        struct entry *ne = realloc(*e, ncap * sizeof(*ne));
        if (ne == NULL) {
            free(model);
            return AP_ENOMEM;
        }
        *e = ne;
        *cap = ncap;
    }
    (*e)[(*n)++] = (struct entry){model, in, out};
    return AP_OK;
}

/*
 * Parse a price: a finite, non-negative decimal using the whole token. Returns 0 on success.
 * strtod follows LC_NUMERIC; aperture never calls setlocale, so the decimal point is '.'.
 */
static int parse_price(const char *tok, double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(tok, &end);
    if (end == tok || *end != '\0' || errno == ERANGE || !isfinite(v) || v < 0)
        return -1;
    *out = v;
    return 0;
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

/*
 * Split line (NUL-terminated, writable) into at most max blank-separated fields, cutting at '#'.
 * Returns the number of fields, or max + 1 when there are more.
 */
static size_t split_fields(char *line, char **fields, size_t max)
{
    size_t n = 0;
    char *hash = strchr(line, '#');
    if (hash != NULL)
        *hash = '\0';
    char *s = line;
    for (;;) {
        while (is_blank(*s))
            s++;
        if (*s == '\0')
            return n;
        if (n == max)
            return max + 1;
        fields[n++] = s;
        while (*s != '\0' && !is_blank(*s))
            s++;
        if (*s != '\0')
            *s++ = '\0';
    }
}

ap_status ap_pricing_load_buffer(ap_pricing *p, const char *buf, size_t len, const char *name,
                                 ap_error *err)
{
    struct entry *staged = NULL;
    size_t n = 0, cap = 0;
    ap_status st = AP_OK;
    char line[PRICE_LINE_MAX + 1];

    if (name == NULL)
        name = "prices";
    if (p == NULL || (buf == NULL && len != 0))
        return ap_error_set(err, AP_EINVAL, "%s: no table or no buffer", name);
    if (len > PRICE_FILE_MAX)
        return ap_error_set(err, AP_ETOOLARGE, "%s: %zu bytes is over the %d byte limit", name, len,
                            PRICE_FILE_MAX);

    /* Stage the file's entries so a bad line leaves p untouched. */
    size_t pos = 0;
    for (unsigned long lineno = 1; pos < len; lineno++) {
        const char *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl != NULL ? (size_t)(nl - buf) : len;
        size_t llen = end - pos;
        if (llen > PRICE_LINE_MAX) {
            st = ap_error_set(err, AP_ETOOLARGE, "%s:%lu: line longer than %d bytes", name, lineno,
                              PRICE_LINE_MAX);
            goto out;
        }
        memcpy(line, buf + pos, llen);
        line[llen] = '\0';
        pos = end + 1;
        if (memchr(line, '\0', llen) != NULL) {
            st = ap_error_set(err, AP_EINVAL, "%s:%lu: NUL byte in line", name, lineno);
            goto out;
        }

        char *f[3];
        size_t nf = split_fields(line, f, 3);
        if (nf == 0)
            continue;
        if (nf == 1 || nf > 3) {
            st = ap_error_set(err, AP_EINVAL,
                              "%s:%lu: %s; expected \"model usd_per_mtok_input "
                              "[usd_per_mtok_output]\"",
                              name, lineno, nf == 1 ? "no input price" : "too many fields");
            goto out;
        }
        const char *model = ap__tokens_base_name(f[0]);
        if (model[0] == '\0' || strlen(model) > PRICE_NAME_MAX) {
            st = ap_error_set(err, model[0] ? AP_ETOOLARGE : AP_EINVAL,
                              "%s:%lu: model name \"%.40s\" is empty or over %d bytes", name,
                              lineno, f[0], PRICE_NAME_MAX);
            goto out;
        }
        double in = 0, outp = -1;
        if (parse_price(f[1], &in) != 0) {
            st = ap_error_set(err, AP_EINVAL, "%s:%lu: bad input price \"%.40s\"", name, lineno,
                              f[1]);
            goto out;
        }
        if (nf == 3 && parse_price(f[2], &outp) != 0) {
            st = ap_error_set(err, AP_EINVAL, "%s:%lu: bad output price \"%.40s\"", name, lineno,
                              f[2]);
            goto out;
        }
        char *copy = strdup(model);
        if (copy == NULL) {
            st = ap_error_set(err, AP_ENOMEM, "%s:%lu: out of memory", name, lineno);
            goto out;
        }
        st = put_entry(&staged, &n, &cap, copy, in, outp);
        if (st != AP_OK) {
            ap_error_set(err, st, "%s:%lu: out of memory", name, lineno);
            goto out;
        }
    }

    /* Commit: merge the staged entries into p in order (later ones replace earlier ones). */
    {
        size_t need = p->n + n;
        if (need > p->cap) {
            struct entry *ne = realloc(p->loaded, need * sizeof(*ne));
            if (ne == NULL) {
                st = ap_error_set(err, AP_ENOMEM, "%s: out of memory", name);
                goto out;
            }
            p->loaded = ne;
            p->cap = need;
        }
        /* Capacity is reserved, so put_entry cannot fail from here on. */
        for (size_t i = 0; i < n; i++) {
            ap_status pst =
                put_entry(&p->loaded, &p->n, &p->cap, staged[i].model, staged[i].in, staged[i].out);
            AP_ASSERT(pst == AP_OK);
            (void)pst;
            staged[i].model = NULL;
        }
    }

out:
    free_entries(staged, n);
    return st;
}

ap_status ap_pricing_load_file(ap_pricing *p, const char *path, ap_error *err)
{
    FILE *fp = NULL;
    char *buf = NULL;
    ap_status st = AP_OK;

    if (p == NULL || path == NULL)
        return ap_error_set(err, AP_EINVAL, "prices: no table or no path");
    fp = fopen(path, "rb");
    if (fp == NULL)
        return ap_error_set(err, AP_EIO, "%s: cannot open: %s", path, strerror(errno));
    buf = malloc(PRICE_FILE_MAX + 1);
    if (buf == NULL) {
        st = ap_error_set(err, AP_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    /* Read one byte past the cap to tell "exactly at the limit" from "over it". */
    size_t len = fread(buf, 1, PRICE_FILE_MAX + 1, fp);
    if (ferror(fp)) {
        st = ap_error_set(err, AP_EIO, "%s: read failed", path);
        goto out;
    }
    if (len > PRICE_FILE_MAX) {
        st = ap_error_set(err, AP_ETOOLARGE, "%s: over the %d byte limit", path, PRICE_FILE_MAX);
        goto out;
    }
    st = ap_pricing_load_buffer(p, buf, len, path, err);

out:
    free(buf);
    if (fp != NULL)
        fclose(fp);
    return st;
}

ap_status ap_pricing_lookup(const ap_pricing *p, const char *model, ap_price *out, ap_error *err)
{
    if (model == NULL || model[0] == '\0')
        return ap_error_set(err, AP_EINVAL, "prices: no model name");
    if (AP_NEVER(out == NULL))
        return ap_error_set(err, AP_EINVAL, "prices: no result to fill");

    const char *name = ap__tokens_base_name(model);
    size_t best_len = 0;
    ap_price best = {0, -1, NULL, 0};

    /* Loaded entries first: on equal length a loaded entry keeps its place over a built-in. */
    if (p != NULL) {
        for (size_t i = 0; i < p->n; i++) {
            size_t m = ap__tokens_prefix_match(name, p->loaded[i].model);
            if (m > best_len) {
                best_len = m;
                best = (ap_price){p->loaded[i].in, p->loaded[i].out, p->loaded[i].model, 0};
            }
        }
    }
    for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++) {
        size_t m = ap__tokens_prefix_match(name, builtins[i].model);
        if (m > best_len) {
            best_len = m;
            best = (ap_price){builtins[i].in, builtins[i].out, builtins[i].model, 1};
        }
    }
    if (best_len == 0)
        return ap_error_set(err, AP_ENOTFOUND, "prices: no price for model \"%s\"", model);
    *out = best;
    return AP_OK;
}

double ap_tokens_usd(uint64_t tokens, double usd_per_mtok)
{
    return (double)tokens * usd_per_mtok / 1e6;
}

ap_status ap_tokens_cost(const ap_pricing *p, const char *model, uint64_t tokens, double *usd,
                         ap_error *err)
{
    ap_price price;
    ap_status st = ap_pricing_lookup(p, model, &price, err);
    if (st != AP_OK)
        return st;
    *usd = ap_tokens_usd(tokens, price.usd_per_mtok_input);
    return AP_OK;
}
