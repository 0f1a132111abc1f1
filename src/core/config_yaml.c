/*
 * config_yaml.c - the YAML side of the configuration loader: a libyaml pass that checks the
 * syntax and indexes the line of every key, and the libcyaml load whose complaints it turns into
 * "NAME:LINE: PATH: why". The why and how are in config_int.h.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <yaml.h>

#include "core/config_int.h"
#include "core/core.h"

/* Paths longer or documents deeper than any valid config are not indexed (nor accepted). */
#define YPATH_MAX  256
#define YDEPTH_MAX 32

struct yent {
    char *path;
    unsigned line;
};

struct ap__yindex {
    struct yent *v;
    size_t n, cap;
};

/* One open collection during the event walk. */
struct yframe {
    bool is_map;
    bool want_key; /* mappings: the next node is a key */
    size_t base;   /* path length of the collection itself */
    unsigned next; /* sequences: index of the next entry */
};

void ap__config_yindex_free(struct ap__yindex *ix)
{
    if (ix == NULL)
        return;
    for (size_t i = 0; i < ix->n; i++)
        free(ix->v[i].path);
    free(ix->v);
    free(ix);
}

/* Record path at line. false when out of memory. */
static bool ix_add(struct ap__yindex *ix, const char *path, size_t line)
{
    if (ix->n == ix->cap) {
        size_t cap = ix->cap ? ix->cap * 2 : 64;
        struct yent *v = realloc(ix->v, cap * sizeof(*v));
        if (v == NULL)
            return false;
        ix->v = v;
        ix->cap = cap;
    }
    char *p = strdup(path);
    if (p == NULL)
        return false;
    ix->v[ix->n].path = p;
    ix->v[ix->n].line = line + 1 > UINT32_MAX ? UINT32_MAX : (unsigned)(line + 1);
    ix->n++;
    return true;
}

/* The 1-based line of byte offset off in buf (libyaml's reader errors give only an offset). */
static unsigned line_of_offset(const char *buf, size_t len, size_t off)
{
    unsigned line = 1;
    for (size_t i = 0; i < off && i < len; i++)
        if (buf[i] == '\n')
            line++;
    return line;
}

static ap_status syntax_error(const yaml_parser_t *p, const char *buf, size_t len, const char *name,
                              ap_error *err)
{
    unsigned line = p->error == YAML_READER_ERROR
                        ? line_of_offset(buf, len, p->problem_offset)
                        : (unsigned)AP_MIN(p->problem_mark.line + 1, (size_t)UINT32_MAX);
    if (p->error == YAML_MEMORY_ERROR)
        return ap_error_set(err, AP_ENOMEM, "%s: out of memory parsing yaml", name);
    /* The context says where the thing that went wrong began (an unclosed quote). */
    if (p->context != NULL && p->error != YAML_READER_ERROR)
        return ap_error_set(err, AP_EINVAL, "%s:%u: syntax error: %s (%s on line %zu)", name, line,
                            p->problem ? p->problem : "malformed yaml", p->context,
                            p->context_mark.line + 1);
    return ap_error_set(err, AP_EINVAL, "%s:%u: syntax error: %s", name, line,
                        p->problem ? p->problem : "malformed yaml");
}

/*
 * A node was finished (a scalar or alias at once, a collection at its end): move the parent
 * on. In a mapping a finished key leaves its name on the path for the value; a finished value
 * takes it off again.
 */
static void node_done(struct yframe *f, size_t *plen)
{
    if (f->is_map && f->want_key) {
        f->want_key = false;
        return;
    }
    if (f->is_map)
        f->want_key = true;
    *plen = f->base;
}

ap_status ap__config_yindex_build(const char *buf, size_t len, const char *name,
                                  struct ap__yindex **out, ap_error *err)
{
    ap_status rc = AP_OK;
    yaml_parser_t p;
    yaml_event_t ev;
    struct yframe st[YDEPTH_MAX];
    int depth = 0;
    char path[YPATH_MAX] = "";
    size_t plen = 0;
    bool indexing = true, in_doc = false;
    struct ap__yindex *ix = calloc(1, sizeof(*ix));

    if (ix == NULL)
        return ap_error_set(err, AP_ENOMEM, "%s: out of memory", name);
    if (!yaml_parser_initialize(&p)) {
        free(ix);
        return ap_error_set(err, AP_ENOMEM, "%s: out of memory", name);
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);
    for (;;) {
        if (!yaml_parser_parse(&p, &ev)) {
            rc = syntax_error(&p, buf, len, name, err);
            goto out;
        }
        yaml_event_type_t t = ev.type;
        size_t line = ev.start_mark.line;
        if (t == YAML_STREAM_END_EVENT || (t == YAML_DOCUMENT_START_EVENT && in_doc) ||
            t == YAML_DOCUMENT_END_EVENT) {
            /* libcyaml reads the first document only; so do we. */
            yaml_event_delete(&ev);
            break;
        }
        if (t == YAML_DOCUMENT_START_EVENT)
            in_doc = true;
        bool node = t == YAML_SCALAR_EVENT || t == YAML_ALIAS_EVENT ||
                    t == YAML_MAPPING_START_EVENT || t == YAML_SEQUENCE_START_EVENT;
        bool opens = t == YAML_MAPPING_START_EVENT || t == YAML_SEQUENCE_START_EVENT;
        if (node && depth > 0 && st[depth - 1].is_map && st[depth - 1].want_key &&
            t != YAML_SCALAR_EVENT) {
            /* A list, mapping or alias as a key: valid YAML, but libcyaml has no words for it. */
            yaml_event_delete(&ev);
            path[st[depth - 1].base] = '\0';
            rc = ap_error_set(err, AP_EINVAL, "%s:%zu: %s%skeys must be plain names", name,
                              line + 1, path, path[0] ? ": " : "");
            goto out;
        }
        if (node && depth > 0 && indexing) {
            struct yframe *f = &st[depth - 1];
            int n = 0;
            if (f->is_map && f->want_key && t == YAML_SCALAR_EVENT) {
                n = snprintf(path + f->base, sizeof(path) - f->base, "%s%.*s", f->base ? "." : "",
                             (int)AP_MIN(ev.data.scalar.length, 255u),
                             (const char *)ev.data.scalar.value);
            } else if (!f->is_map) {
                n = snprintf(path + f->base, sizeof(path) - f->base, "[%u]", f->next);
            }
            if (indexing && (f->want_key || !f->is_map)) {
                if (n < 0 || (size_t)n >= sizeof(path) - f->base) {
                    indexing = false;
                } else {
                    plen = f->base + (size_t)n;
                    if (!ix_add(ix, path, line)) {
                        yaml_event_delete(&ev);
                        rc = ap_error_set(err, AP_ENOMEM, "%s: out of memory", name);
                        goto out;
                    }
                }
            }
        }
        if (t == YAML_ALIAS_EVENT) {
            /* libcyaml is told to refuse aliases (cyaml_cfg_init) but does not say where;
             * the index knows. */
            yaml_event_delete(&ev);
            rc = ap_error_set(err, AP_EINVAL, "%s:%zu: %s%sanchors and aliases are not supported",
                              name, line + 1, path, path[0] ? ": " : "");
            goto out;
        }
        if (node && depth > 0 && !st[depth - 1].is_map)
            st[depth - 1].next++;
        if (opens) {
            if (depth == YDEPTH_MAX) {
                yaml_event_delete(&ev);
                rc = ap_error_set(err, AP_EINVAL, "%s:%zu: nested deeper than %d levels", name,
                                  line + 1, YDEPTH_MAX);
                goto out;
            }
            st[depth++] = (struct yframe){
                .is_map = t == YAML_MAPPING_START_EVENT, .want_key = true, .base = plen};
        } else if (node && depth > 0) {
            node_done(&st[depth - 1], &plen);
        } else if (t == YAML_MAPPING_END_EVENT || t == YAML_SEQUENCE_END_EVENT) {
            if (AP_NEVER(depth == 0)) {
                yaml_event_delete(&ev);
                rc = ap_error_set(err, AP_EINTERNAL, "%s: unbalanced yaml events", name);
                goto out;
            }
            depth--;
            if (depth > 0)
                node_done(&st[depth - 1], &plen);
        }
        path[plen] = '\0';
        yaml_event_delete(&ev);
    }
out:
    yaml_parser_delete(&p);
    if (rc != AP_OK) {
        ap__config_yindex_free(ix);
        return rc;
    }
    *out = ix;
    return AP_OK;
}

bool ap__config_yindex_has(const struct ap__yindex *ix, const char *path)
{
    if (ix == NULL || path == NULL)
        return false;
    for (size_t i = 0; i < ix->n; i++)
        if (strcmp(ix->v[i].path, path) == 0)
            return true;
    return false;
}

unsigned ap__config_yindex_line(const struct ap__yindex *ix, const char *path, unsigned nth)
{
    char p[YPATH_MAX];
    if (ix == NULL || path == NULL)
        return 0;
    snprintf(p, sizeof(p), "%s", path);
    for (;;) {
        unsigned first = 0, seen = 0;
        for (size_t i = 0; i < ix->n; i++) {
            if (strcmp(ix->v[i].path, p) != 0)
                continue;
            if (seen == 0)
                first = ix->v[i].line;
            if (seen++ == nth)
                return ix->v[i].line;
        }
        if (first != 0)
            return first;
        /* Not recorded: try the parent ("a.b[2].c" -> "a.b[2]" -> "a.b" -> "a"). */
        char *dot = strrchr(p, '.'), *br = strrchr(p, '[');
        char *cut = dot > br ? dot : br;
        if (cut == NULL || cut == p)
            return 0;
        *cut = '\0';
        nth = 0;
    }
}

/* ---- libcyaml ------------------------------------------------------------------------- */

/* libcyaml's error output, captured instead of going to stderr. */
struct capture {
    char text[2048];
    size_t len;
};

AP_PRINTF(3, 0)
static void capture_log(cyaml_log_t level, void *ctx, const char *fmt, va_list ap)
{
    struct capture *c = ctx;
    if (level < CYAML_LOG_ERROR || c->len + 1 >= sizeof(c->text))
        return;
    int n = vsnprintf(c->text + c->len, sizeof(c->text) - c->len, fmt, ap);
    if (n > 0)
        c->len = AP_MIN(c->len + (size_t)n, sizeof(c->text) - 1);
}

/* One line of libcyaml's backtrace, innermost first. */
struct bt_frame {
    enum { BT_FIELD, BT_ENTRY, BT_MAPPING } kind;
    char key[64];
    unsigned entry; /* libcyaml counts entries from 1 */
    unsigned line;
};

#define BT_MAX 16

/* "(line: 5, column: 11)" somewhere in s -> 5; 0 when absent. */
static unsigned bt_line(const char *s)
{
    const char *l = strstr(s, "(line: ");
    return l ? (unsigned)strtoul(l + 7, NULL, 10) : 0;
}

/* Parse "  in mapping field 'x' (line..)", "  in sequence entry '2' (..)", "  in mapping (..)". */
static bool bt_parse(const char *s, struct bt_frame *f)
{
    memset(f, 0, sizeof(*f));
    f->line = bt_line(s);
    if (strncmp(s, "  in mapping field '", 20) == 0) {
        const char *k = s + 20, *q = strchr(k, '\'');
        if (q == NULL)
            return false;
        f->kind = BT_FIELD;
        snprintf(f->key, sizeof(f->key), "%.*s", (int)AP_MIN((size_t)(q - k), 63u), k);
        return true;
    }
    if (strncmp(s, "  in sequence entry '", 21) == 0) {
        f->kind = BT_ENTRY;
        f->entry = (unsigned)strtoul(s + 21, NULL, 10);
        return true;
    }
    if (strncmp(s, "  in mapping", 12) == 0) {
        f->kind = BT_MAPPING;
        return true;
    }
    return false;
}

/* The path named by frames[skip..n) (outermost last in the array). */
static void bt_path(const struct bt_frame *fr, int n, int skip, char *out, size_t cap)
{
    size_t len = 0;
    out[0] = '\0';
    for (int i = n - 1; i >= skip && len < cap; i--) {
        int w = 0;
        if (fr[i].kind == BT_FIELD)
            w = snprintf(out + len, cap - len, "%s%s", len ? "." : "", fr[i].key);
        else if (fr[i].kind == BT_ENTRY)
            w = snprintf(out + len, cap - len, "[%u]", fr[i].entry ? fr[i].entry - 1 : 0);
        if (w > 0)
            len = AP_MIN(len + (size_t)w, cap - 1);
    }
}

/* libcyaml's schema vocabulary and event names in words. */
static const char *kind_words(const char *s)
{
    if (strncmp(s, "STRING", 6) == 0 || strncmp(s, "SCALAR", 6) == 0)
        return "a single value";
    if (strncmp(s, "SEQUENCE", 8) == 0)
        return "a list";
    if (strncmp(s, "MAPPING", 7) == 0)
        return "a mapping";
    if (strncmp(s, "ALIAS", 5) == 0)
        return "an alias";
    return "something else";
}

/*
 * Turn what libcyaml logged into "NAME:LINE: PATH: why" in err. Its own lines are those of the
 * last event it handled (for an unknown key, the value before it), so positions come from ix
 * and libcyaml's are the fallback.
 */
static ap_status explain(const struct capture *c, cyaml_err_t e, const char *name,
                         const struct ap__yindex *ix, ap_error *err)
{
    ap_status code = e == CYAML_ERR_OOM ? AP_ENOMEM : AP_EINVAL;
    struct bt_frame fr[BT_MAX] = {0};
    int n = 0;
    char msg[256] = "", why[256], path[YPATH_MAX];
    bool in_bt = false;

    /* Lines: "Load: <message>", "Load: Backtrace:", then frames. */
    for (const char *s = c->text; *s != '\0';) {
        const char *nl = strchr(s, '\n');
        size_t l = nl ? (size_t)(nl - s) : strlen(s);
        char line[256];
        snprintf(line, sizeof(line), "%.*s", (int)AP_MIN(l, 255u), s);
        if (strcmp(line, "Load: Backtrace:") == 0)
            in_bt = msg[0] != '\0';
        else if (in_bt && n < BT_MAX && bt_parse(line, &fr[n]))
            n++;
        else if (msg[0] == '\0' && strncmp(line, "Load: ", 6) == 0)
            snprintf(msg, sizeof(msg), "%s", line + 6);
        else if (in_bt)
            break; /* only the first error's backtrace */
        s += l + (nl ? 1 : 0);
    }

    unsigned nth = 0;
    bt_path(fr, n, 0, path, sizeof(path));
    if (e == CYAML_ERR_ALIAS) {
        snprintf(why, sizeof(why), "anchors and aliases are not supported");
    } else if (strncmp(msg, "Unexpected key: ", 16) == 0) {
        size_t pl = strlen(path);
        snprintf(path + pl, sizeof(path) - pl, "%s%s", pl ? "." : "", msg + 16);
        snprintf(why, sizeof(why), "unknown key");
    } else if (strncmp(msg, "Missing required mapping field: ", 32) == 0) {
        /* The innermost frame is the mapping's last field, not the missing one. */
        bt_path(fr, n, n > 0 && fr[0].kind == BT_FIELD ? 1 : 0, path, sizeof(path));
        size_t pl = strlen(path);
        snprintf(path + pl, sizeof(path) - pl, "%s%s", pl ? "." : "", msg + 32);
        snprintf(why, sizeof(why), "missing (required)");
    } else if (strncmp(msg, "Mapping field already seen: ", 28) == 0) {
        snprintf(why, sizeof(why), "duplicate key");
        nth = 1;
    } else if (strncmp(msg, "Expecting ", 10) == 0) {
        const char *got = strstr(msg, "got event: ");
        if (path[0] == '\0')
            snprintf(why, sizeof(why), "the file must be a mapping of settings, not %s",
                     got ? kind_words(got + 11) : "this");
        else
            snprintf(why, sizeof(why), "expected %s, got %s", kind_words(msg + 10),
                     got ? kind_words(got + 11) : "something else");
    } else if (msg[0] != '\0') {
        snprintf(why, sizeof(why), "%s", msg);
        if (why[0] >= 'A' && why[0] <= 'Z')
            why[0] = (char)(why[0] - 'A' + 'a');
    } else {
        snprintf(why, sizeof(why), "%s", cyaml_strerror(e));
    }

    unsigned line = path[0] ? ap__config_yindex_line(ix, path, nth) : 0;
    if (line == 0 && n > 0)
        line = fr[0].line;
    if (line == 0 && path[0] == '\0')
        line = 1;
    if (path[0] == '\0')
        return ap_error_set(err, code, "%s:%u: %s", name, line, why);
    if (line == 0)
        return ap_error_set(err, code, "%s: %s: %s", name, path, why);
    return ap_error_set(err, code, "%s:%u: %s: %s", name, line, path, why);
}

static void cyaml_cfg_init(cyaml_config_t *cfg, struct capture *c)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->log_fn = c ? capture_log : NULL;
    cfg->log_ctx = c;
    cfg->mem_fn = cyaml_mem;
    cfg->log_level = CYAML_LOG_ERROR;
    /* No anchors: nothing in this config needs them, and expanding aliases is how a small
     * YAML file becomes a large allocation. */
    cfg->flags = CYAML_CFG_NO_ALIAS;
}

ap_status ap__config_cyaml_load(const char *buf, size_t len, const char *name,
                                const struct ap__yindex *ix, const cyaml_schema_value_t *schema,
                                void **out, ap_error *err)
{
    struct capture *c = calloc(1, sizeof(*c));
    cyaml_config_t cfg;
    cyaml_data_t *data = NULL;

    if (c == NULL)
        return ap_error_set(err, AP_ENOMEM, "%s: out of memory", name);
    cyaml_cfg_init(&cfg, c);
    cyaml_err_t e = cyaml_load_data((const uint8_t *)buf, len, &cfg, schema, &data, NULL);
    if (e != CYAML_OK) {
        ap_status rc = explain(c, e, name, ix, err);
        free(c);
        return rc;
    }
    free(c);
    *out = data;
    return AP_OK;
}

void ap__config_cyaml_free(const cyaml_schema_value_t *schema, void *data)
{
    cyaml_config_t cfg;
    if (data == NULL)
        return;
    cyaml_cfg_init(&cfg, NULL);
    (void)cyaml_free(&cfg, schema, data, 0);
}
