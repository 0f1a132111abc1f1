/*
 * router.c - routing rules, the restricted-data filter, weighted deployment choice, and the
 * two-stage classifier's answer. include/aperture/router.h is the contract.
 *
 * Everything here is a pure function of its arguments: the config is immutable, the random
 * state is the caller's, and nothing is allocated except the short-lived JSON tree of a
 * classifier answer. Text comparisons are ASCII case-folded by hand rather than with
 * strcasecmp()/tolower(), whose answers depend on the process locale: a rule must not match
 * differently because a library called setlocale().
 */
#define _GNU_SOURCE /* memmem() */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "aperture/resilience.h"
#include "aperture/router.h"
#include "core/core.h"

/* ---- ASCII text helpers ------------------------------------------------------------------- */

static inline unsigned char lower(unsigned char c)
{
    return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* Word characters for whole-word matching: what a regex \w is in the C locale. */
static inline bool word_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* a and b equal, ASCII case-insensitively. Both non-NULL. */
static bool equal_nocase(const char *a, const char *b)
{
    const unsigned char *p = (const unsigned char *)a, *q = (const unsigned char *)b;
    for (; *p != '\0' && *q != '\0'; p++, q++)
        if (lower(*p) != lower(*q))
            return false;
    return *p == *q;
}

/*
 * The first offset >= from where needle (nlen > 0 bytes) occurs in hay[0..hlen),
 * ASCII case-insensitively, or SIZE_MAX. Bytes, not strings: hay may hold NULs. A plain scan
 * on the first byte, then a compare: prompts are kilobytes and rules a handful, so a cleverer
 * search would not pay for its code.
 */
static size_t find_nocase(const unsigned char *hay, size_t hlen, size_t from,
                          const unsigned char *needle, size_t nlen)
{
    if (nlen == 0 || hlen < nlen)
        return SIZE_MAX;
    const unsigned char first = lower(needle[0]);
    for (size_t i = from; i <= hlen - nlen; i++) {
        if (lower(hay[i]) != first)
            continue;
        size_t k = 1;
        while (k < nlen && lower(hay[i + k]) == lower(needle[k]))
            k++;
        if (k == nlen)
            return i;
    }
    return SIZE_MAX;
}

/* Whether word occurs in hay[0..hlen) as a whole word (not inside a longer word). */
static bool has_word(const unsigned char *hay, size_t hlen, const char *word)
{
    const unsigned char *w = (const unsigned char *)word;
    size_t wlen = strlen(word);
    for (size_t at = find_nocase(hay, hlen, 0, w, wlen); at != SIZE_MAX;
         at = find_nocase(hay, hlen, at + 1, w, wlen)) {
        bool left = at == 0 || !word_char(hay[at - 1]);
        bool right = at + wlen == hlen || !word_char(hay[at + wlen]);
        if (left && right)
            return true;
    }
    return false;
}

/* ---- matching ----------------------------------------------------------------------------- */

/* A condition on a count, as the config spells it: lo and hi < 0 mean "any". */
static bool in_range(uint64_t v, long long lo, long long hi)
{
    if (lo >= 0 && v < (uint64_t)lo)
        return false;
    if (hi >= 0 && v > (uint64_t)hi)
        return false;
    return true;
}

/* The rule's model condition: equal, or a prefix when the rule's model ends in '*'. */
static bool model_matches(const char *want, const char *model)
{
    if (model == NULL)
        return false;
    size_t n = strlen(want);
    if (n > 0 && want[n - 1] == '*')
        return strncmp(model, want, n - 1) == 0;
    return strcmp(model, want) == 0;
}

static bool client_listed(const ap_route_rule *r, const char *client)
{
    if (client == NULL || AP_NEVER(r->clients == NULL))
        return false;
    for (size_t i = 0; i < r->n_clients; i++)
        if (r->clients[i] != NULL && strcmp(r->clients[i], client) == 0)
            return true;
    return false;
}

/*
 * The prompt folded to lower case once per ap_router_match() call, the first time a rule with
 * keywords is reached: every keyword is then one memmem() (glibc's two-way search, which skips
 * through kilobytes faster than a byte-by-byte case-folding scan: in bench/route_bench.c a
 * 16 KB prompt that matches no rule went from ~130 us to ~33 us of CPU per decision).
 */
struct folded {
    const ap_route_facts *f;
    bool done;
    char *buf; /* NULL: out of memory, fall back to the folding scan */
    char stack[4096];
};

static const char *fold(struct folded *fp)
{
    if (!fp->done) {
        fp->done = true;
        size_t n = fp->f->prompt_len;
        fp->buf = n <= sizeof(fp->stack) ? fp->stack : malloc(n ? n : 1);
        if (fp->buf != NULL)
            for (size_t i = 0; i < n; i++)
                fp->buf[i] = (char)lower((unsigned char)fp->f->prompt[i]);
    }
    return fp->buf;
}

/* Any keyword in the prompt. An empty keyword matches nothing: it would make the rule catch
 * every request with a prompt, which is never what a keyword list means. */
static bool keyword_found(const ap_route_rule *r, struct folded *fp)
{
    const ap_route_facts *f = fp->f;
    if (f->prompt == NULL || AP_NEVER(r->keywords == NULL))
        return false;
    const char *low = fold(fp);
    for (size_t i = 0; i < r->n_keywords; i++) {
        const char *k = r->keywords[i];
        size_t kl = k ? strlen(k) : 0;
        if (kl == 0 || kl > f->prompt_len)
            continue;
        char kb[256];
        if (low != NULL && kl <= sizeof(kb)) {
            for (size_t j = 0; j < kl; j++)
                kb[j] = (char)lower((unsigned char)k[j]);
            if (memmem(low, f->prompt_len, kb, kl) != NULL)
                return true;
        } else if (find_nocase((const unsigned char *)f->prompt, f->prompt_len, 0,
                               (const unsigned char *)k, kl) != SIZE_MAX) {
            return true;
        }
    }
    return false;
}

/* Whether every condition r sets holds for f: compares first, the prompt search last. */
static bool rule_matches(const ap_route_rule *r, struct folded *fp)
{
    const ap_route_facts *f = fp->f;
    if (r->task != NULL && (f->task == NULL || strcmp(r->task, f->task) != 0))
        return false;
    if (r->model != NULL && !model_matches(r->model, f->model))
        return false;
    if (!in_range(f->n_images, r->min_images, r->max_images))
        return false;
    if (!in_range(f->max_pixels, r->min_pixels, r->max_pixels))
        return false;
    if (!in_range(f->total_bytes, r->min_bytes, r->max_bytes))
        return false;
    if (r->data_class != NULL &&
        (f->data_class == NULL || !equal_nocase(r->data_class, f->data_class)))
        return false;
    if (r->n_clients > 0 && !client_listed(r, f->client))
        return false;
    if (r->n_keywords > 0 && !keyword_found(r, fp))
        return false;
    return true;
}

const ap_route_rule *ap_router_match(const ap_config *cfg, const ap_route_facts *f)
{
    if (AP_NEVER(cfg == NULL || f == NULL))
        return NULL;
    struct folded fp = {.f = f};
    const ap_route_rule *hit = NULL;
    for (size_t i = 0; i < cfg->n_routes && hit == NULL; i++)
        if (rule_matches(&cfg->routes[i], &fp))
            hit = &cfg->routes[i];
    if (fp.buf != NULL && fp.buf != fp.stack)
        free(fp.buf);
    return hit;
}

/* ---- restricted data ---------------------------------------------------------------------- */

bool ap_router_restricted(const char *data_class)
{
    return data_class != NULL && equal_nocase(data_class, "restricted");
}

static bool dep_self_hosted(const ap_chain_deployment *d)
{
    return d->provider != NULL && d->provider->self_hosted;
}

/* How many of step's deployments run in-house. A model step without a deployment list (never
 * made by ap_config_chain, but cheap to allow) is judged by its own provider. */
static size_t self_hosted_deps(const ap_chain_step *s)
{
    size_t n = AP_MIN(s->n_dep, (size_t)AP_MAX_DEPLOYMENTS), k = 0;
    if (n == 0)
        return s->provider != NULL && s->provider->self_hosted;
    for (size_t i = 0; i < n; i++)
        k += dep_self_hosted(&s->dep[i]);
    return k;
}

/* Keep s's self-hosted deployments, in order, and point the step at the first one. */
static void step_restrict(ap_chain_step *s)
{
    size_t n = AP_MIN(s->n_dep, (size_t)AP_MAX_DEPLOYMENTS), k = 0;
    if (n == 0)
        return; /* judged by its provider, which is self-hosted */
    for (size_t i = 0; i < n; i++) {
        if (!dep_self_hosted(&s->dep[i]))
            continue;
        if (k != i)
            s->dep[k] = s->dep[i];
        k++;
    }
    s->n_dep = k;
    s->provider = s->dep[0].provider;
    s->upstream = s->dep[0].upstream;
    memcpy(s->deployment, s->dep[0].key, sizeof(s->deployment));
    s->deployment[sizeof(s->deployment) - 1] = '\0';
}

ap_status ap_router_restrict(ap_chain *chain, ap_error *err)
{
    if (chain == NULL)
        return ap_error_set(err, AP_EINVAL, "router: NULL chain");
    size_t n = AP_MIN(chain->n_steps, (size_t)AP_CHAIN_MAX);

    /* Decide before touching anything, so a refusal leaves the chain as it was. */
    bool any = false;
    for (size_t i = 0; i < n && !any; i++)
        any = !chain->step[i].review && self_hosted_deps(&chain->step[i]) > 0;
    if (!any) {
        /* Name the models that were on the chain, as many as fit: the rest of the message
         * takes about 110 of AP_ERROR_MSG_MAX's 256 bytes, and its end must not be cut. */
        char models[144] = "";
        size_t used = 0;
        bool cut = false;
        for (size_t i = 0; i < n; i++) {
            const ap_chain_step *s = &chain->step[i];
            if (s->review)
                continue;
            int w = snprintf(models + used, sizeof(models) - used, "%s\"%s\"", used ? ", " : "",
                             s->model != NULL ? s->model : "?");
            if (w < 0 || (size_t)w >= sizeof(models) - used) {
                models[used] = '\0';
                cut = true;
                break;
            }
            used += (size_t)w;
        }
        return ap_error_set(err, AP_EFORBIDDEN,
                            "restricted data (x-aperture-data-class: restricted) has no "
                            "self-hosted route: %s%s run on cloud providers",
                            used ? models : "the chain's models", cut ? ", ..." : "");
    }

    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        ap_chain_step *s = &chain->step[i];
        /* The review step stores in the gateway's own store: it stays. */
        if (!s->review) {
            if (self_hosted_deps(s) == 0)
                continue;
            step_restrict(s);
        }
        if (k != i)
            chain->step[k] = *s;
        k++;
    }
    chain->n_steps = k;
    return AP_OK;
}

/* ---- load balancing ----------------------------------------------------------------------- */

/* A weight as the pick counts it: non-positive and non-finite ones are 0. */
static double usable_weight(double w)
{
    return isfinite(w) && w > 0 ? w : 0;
}

int ap_router_pick(const ap_chain_step *step, const bool *allowed, uint64_t *rng_state)
{
    if (AP_NEVER(step == NULL || rng_state == NULL))
        return -1;
    size_t n = AP_MIN(step->n_dep, (size_t)AP_MAX_DEPLOYMENTS), count = 0;
    double total = 0;
    for (size_t i = 0; i < n; i++) {
        if (allowed != NULL && !allowed[i])
            continue;
        count++;
        total += usable_weight(step->dep[i].weight);
    }
    if (count == 0)
        return -1;
    uint64_t r = ap_retry_rand(rng_state);
    bool equal = !(total > 0) || !isfinite(total);
    if (equal) {
        /* Every allowed weight is 0: they count equally. The modulo bias over 2^64 draws for
         * at most AP_MAX_DEPLOYMENTS choices is far below anything measurable. */
        uint64_t nth = r % count;
        for (size_t i = 0; i < n; i++) {
            if (allowed != NULL && !allowed[i])
                continue;
            if (nth-- == 0)
                return (int)i;
        }
        return -1; /* not reached */
    }
    /* A uniform draw in [0, total) from the top 53 bits, then the cumulative weights. */
    double u = (double)(r >> 11) * 0x1.0p-53 * total, cum = 0;
    int last = -1;
    for (size_t i = 0; i < n; i++) {
        if (allowed != NULL && !allowed[i])
            continue;
        double w = usable_weight(step->dep[i].weight);
        if (w <= 0)
            continue;
        cum += w;
        last = (int)i;
        if (u < cum)
            return (int)i;
    }
    return last; /* rounding left u at the very top of the range */
}

/* ---- two-stage classification ------------------------------------------------------------- */

/* The first listed class occurring as a whole word in text[0..len), or NULL. */
static const char *class_in(const ap_two_stage_conf *ts, const char *text, size_t len)
{
    for (size_t i = 0; i < ts->n_classes; i++) {
        const char *c = ts->classes[i];
        if (c != NULL && c[0] != '\0' && has_word((const unsigned char *)text, len, c))
            return c;
    }
    return NULL;
}

/*
 * The "class" member of a JSON object in text, found between the first '{' and the last '}'
 * (models like to wrap JSON in prose or ``` fences). (transfer full): json_decref() the
 * returned root; *cls points into it. NULL when there is no such object or member.
 */
static json_t *json_class(const char *text, const char **cls)
{
    const char *a = strchr(text, '{'), *b = strrchr(text, '}');
    if (a == NULL || b == NULL || b < a)
        return NULL;
    json_t *root = json_loadb(a, (size_t)(b - a + 1), 0, NULL);
    json_t *v = json_is_object(root) ? json_object_get(root, "class") : NULL;
    if (!json_is_string(v)) {
        json_decref(root);
        return NULL;
    }
    *cls = json_string_value(v);
    return root;
}

const char *ap_router_class(const ap_two_stage_conf *ts, const char *text)
{
    if (AP_NEVER(ts == NULL) || text == NULL)
        return NULL;
    /* A JSON answer names its class in one member: only that member is read, so a class name
     * in another member ("reason": "not an invoice") cannot win. */
    const char *cls = NULL;
    json_t *root = json_class(text, &cls);
    if (root != NULL) {
        const char *found = class_in(ts, cls, strlen(cls));
        json_decref(root);
        return found;
    }
    return class_in(ts, text, strlen(text));
}

bool ap_router_valuable(const ap_two_stage_conf *ts, const char *cls)
{
    if (AP_NEVER(ts == NULL) || cls == NULL)
        return false;
    for (size_t i = 0; i < ts->n_valuable; i++)
        if (ts->valuable[i] != NULL && equal_nocase(ts->valuable[i], cls))
            return true;
    return false;
}
