/*
 * test_router.c - routing rules (each condition alone, together, rule order), the restricted-data
 * filter over a chain, weighted deployment choice, and reading a classifier's answer.
 *
 * Configs, rules and chains are built by hand here (the YAML side of routes is tested with the
 * config), so each test states exactly the structure it exercises.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aperture/config.h"
#include "aperture/router.h"

/* ---- helpers ------------------------------------------------------------------------------ */

/* The config's strings are char * (it owns them); these literals are never written. */
#define S(lit) ((char *)(lit))

/* A rule with no condition set: every limit "any" (-1), as the YAML loader leaves them. */
static ap_route_rule rule(const char *name)
{
    ap_route_rule r;
    memset(&r, 0, sizeof(r));
    r.name = (char *)name;
    r.min_pixels = r.max_pixels = -1;
    r.min_bytes = r.max_bytes = -1;
    r.min_images = r.max_images = -1;
    return r;
}

static ap_config config(ap_route_rule *routes, size_t n)
{
    ap_config c;
    memset(&c, 0, sizeof(c));
    c.routes = routes;
    c.n_routes = n;
    return c;
}

/* Facts of a plain request: one 1000x1000 image of 200 kB, no strings set. */
static ap_route_facts facts(void)
{
    ap_route_facts f;
    memset(&f, 0, sizeof(f));
    f.n_images = 1;
    f.max_pixels = 1000000;
    f.total_bytes = 200000;
    return f;
}

/* The name of the rule cfg picks for f, or "(none)". */
static const char *match_name(const ap_config *cfg, const ap_route_facts *f)
{
    const ap_route_rule *r = ap_router_match(cfg, f);
    return r != NULL ? r->name : "(none)";
}

/* Does the single rule r match f? */
static bool matches(ap_route_rule r, const ap_route_facts *f)
{
    ap_config c = config(&r, 1);
    return ap_router_match(&c, f) != NULL;
}

static ap_provider_conf provider(const char *name, bool self_hosted)
{
    ap_provider_conf p;
    memset(&p, 0, sizeof(p));
    p.name = (char *)name;
    p.enabled = true;
    p.self_hosted = self_hosted;
    return p;
}

static void add_dep(ap_chain_step *s, const ap_provider_conf *p, const char *upstream, double w)
{
    assert_true(s->n_dep < AP_MAX_DEPLOYMENTS);
    ap_chain_deployment *d = &s->dep[s->n_dep++];
    d->provider = p;
    d->upstream = upstream;
    d->weight = w;
    snprintf(d->key, sizeof(d->key), "%s/%s", p->name, upstream);
    /* The step shows its first deployment, as ap_config_chain() makes it. */
    s->provider = s->dep[0].provider;
    s->upstream = s->dep[0].upstream;
    memcpy(s->deployment, s->dep[0].key, sizeof(s->deployment));
}

static ap_chain_step *add_step(ap_chain *c, const char *model)
{
    assert_true(c->n_steps < AP_CHAIN_MAX);
    ap_chain_step *s = &c->step[c->n_steps++];
    memset(s, 0, sizeof(*s));
    s->model = model;
    return s;
}

static void add_review(ap_chain *c)
{
    ap_chain_step *s = add_step(c, AP_REVIEW_STEP);
    s->review = true;
}

/* ---- matching: each condition alone -------------------------------------------------------- */

static void test_router__no_rules_matches_nothing(void **state)
{
    (void)state;
    ap_config c = config(NULL, 0);
    ap_route_facts f = facts();
    assert_null(ap_router_match(&c, &f));
}

static void test_router__rule_without_conditions_matches_all(void **state)
{
    (void)state;
    ap_route_facts f = facts();
    assert_true(matches(rule("any"), &f));
    f.n_images = 0;
    f.max_pixels = 0;
    f.total_bytes = 0;
    assert_true(matches(rule("any"), &f));
}

static void test_router__task(void **state)
{
    (void)state;
    ap_route_rule r = rule("t");
    r.task = S("invoice_extraction");
    ap_route_facts f = facts();
    assert_false(matches(r, &f)); /* no task on the request */
    f.task = "invoice_extraction";
    assert_true(matches(r, &f));
    f.task = "invoice";
    assert_false(matches(r, &f));
    f.task = "INVOICE_EXTRACTION"; /* task names are exact */
    assert_false(matches(r, &f));
}

static void test_router__model_exact(void **state)
{
    (void)state;
    ap_route_rule r = rule("m");
    r.model = S("gpt-4o");
    ap_route_facts f = facts();
    assert_false(matches(r, &f));
    f.model = "gpt-4o";
    assert_true(matches(r, &f));
    f.model = "gpt-4o-mini"; /* no '*': not a prefix */
    assert_false(matches(r, &f));
    f.model = "gpt-4";
    assert_false(matches(r, &f));
}

static void test_router__model_prefix(void **state)
{
    (void)state;
    ap_route_rule r = rule("m*");
    r.model = S("claude-*");
    ap_route_facts f = facts();
    f.model = "claude-3-5-sonnet";
    assert_true(matches(r, &f));
    f.model = "claude-";
    assert_true(matches(r, &f));
    f.model = "claude";
    assert_false(matches(r, &f));
    f.model = "gpt-4o";
    assert_false(matches(r, &f));
    f.model = NULL;
    assert_false(matches(r, &f));
    r.model = S("*"); /* every named model */
    f.model = "anything";
    assert_true(matches(r, &f));
}

static void test_router__keywords(void **state)
{
    (void)state;
    char *kw[] = {S("invoice"), S("Total Due")};
    ap_route_rule r = rule("kw");
    r.keywords = kw;
    r.n_keywords = 2;
    ap_route_facts f = facts();
    assert_false(matches(r, &f)); /* no prompt */

    const char *p1 = "Extract the fields of this INVOICE please";
    f.prompt = p1;
    f.prompt_len = strlen(p1);
    assert_true(matches(r, &f));
    const char *p2 = "what is the total due?";
    f.prompt = p2;
    f.prompt_len = strlen(p2);
    assert_true(matches(r, &f));
    const char *p3 = "describe this photo";
    f.prompt = p3;
    f.prompt_len = strlen(p3);
    assert_false(matches(r, &f));

    /* Bytes, not a C string: a NUL before the keyword does not hide it... */
    static const char p4[] = "part one\0part two: invoice";
    f.prompt = p4;
    f.prompt_len = sizeof(p4) - 1;
    assert_true(matches(r, &f));
    /* ...and nothing past prompt_len is read. */
    f.prompt_len = 20;
    assert_false(matches(r, &f));
    /* A keyword cut by the end of the prompt is not there. */
    const char *p5 = "see the invoic";
    f.prompt = p5;
    f.prompt_len = strlen(p5);
    assert_false(matches(r, &f));
}

static void test_router__pixels(void **state)
{
    (void)state;
    ap_route_rule r = rule("px");
    r.min_pixels = 500000;
    ap_route_facts f = facts();
    f.max_pixels = 499999;
    assert_false(matches(r, &f));
    f.max_pixels = 500000; /* bounds are inclusive */
    assert_true(matches(r, &f));

    r = rule("px");
    r.max_pixels = 4000000;
    f.max_pixels = 4000000;
    assert_true(matches(r, &f));
    f.max_pixels = 4000001;
    assert_false(matches(r, &f));
    f.max_pixels = UINT64_MAX;
    assert_false(matches(r, &f));

    /* 0 is a real limit (text-only requests), not "any". */
    r = rule("px");
    r.max_pixels = 0;
    f.max_pixels = 0;
    assert_true(matches(r, &f));
    f.max_pixels = 1;
    assert_false(matches(r, &f));
}

static void test_router__bytes(void **state)
{
    (void)state;
    ap_route_rule r = rule("b");
    r.min_bytes = 1000;
    r.max_bytes = 5000000;
    ap_route_facts f = facts();
    f.total_bytes = 999;
    assert_false(matches(r, &f));
    f.total_bytes = 1000;
    assert_true(matches(r, &f));
    f.total_bytes = 5000000;
    assert_true(matches(r, &f));
    f.total_bytes = 5000001;
    assert_false(matches(r, &f));
}

static void test_router__images(void **state)
{
    (void)state;
    ap_route_rule r = rule("n");
    r.min_images = 2;
    ap_route_facts f = facts();
    f.n_images = 1;
    assert_false(matches(r, &f));
    f.n_images = 2;
    assert_true(matches(r, &f));
    f.n_images = 20;
    assert_true(matches(r, &f));

    r = rule("text-only");
    r.max_images = 0;
    f.n_images = 0;
    assert_true(matches(r, &f));
    f.n_images = 1;
    assert_false(matches(r, &f));
}

static void test_router__clients(void **state)
{
    (void)state;
    char *cl[] = {S("batch"), S("mobile")};
    ap_route_rule r = rule("c");
    r.clients = cl;
    r.n_clients = 2;
    ap_route_facts f = facts();
    assert_false(matches(r, &f)); /* no auth: never a listed client */
    f.client = "mobile";
    assert_true(matches(r, &f));
    f.client = "batch";
    assert_true(matches(r, &f));
    f.client = "web";
    assert_false(matches(r, &f));
    f.client = "Batch"; /* names are exact */
    assert_false(matches(r, &f));
}

static void test_router__data_class(void **state)
{
    (void)state;
    ap_route_rule r = rule("dc");
    r.data_class = S("restricted");
    ap_route_facts f = facts();
    assert_false(matches(r, &f));
    f.data_class = "Restricted";
    assert_true(matches(r, &f));
    f.data_class = "RESTRICTED";
    assert_true(matches(r, &f));
    f.data_class = "restricted-ish";
    assert_false(matches(r, &f));
    f.data_class = "public";
    assert_false(matches(r, &f));
}

/* ---- matching: combinations and order ------------------------------------------------------ */

static void test_router__combination_needs_every_condition(void **state)
{
    (void)state;
    char *kw[] = {S("receipt")};
    char *cl[] = {S("acme")};
    ap_route_rule r = rule("all");
    r.task = S("expenses");
    r.model = S("gpt-*");
    r.keywords = kw;
    r.n_keywords = 1;
    r.min_pixels = 100;
    r.max_pixels = 2000000;
    r.min_bytes = 10;
    r.max_bytes = 1000000;
    r.min_images = 1;
    r.max_images = 3;
    r.clients = cl;
    r.n_clients = 1;
    r.data_class = S("internal");

    const char *prompt = "Read this Receipt";
    ap_route_facts ok = facts();
    ok.task = "expenses";
    ok.model = "gpt-4o-mini";
    ok.prompt = prompt;
    ok.prompt_len = strlen(prompt);
    ok.client = "acme";
    ok.data_class = "Internal";
    assert_true(matches(r, &ok));

    /* Break one condition at a time: each alone is enough to refuse. */
    for (int which = 0; which < 9; which++) {
        ap_route_facts f = ok;
        switch (which) {
        case 0:
            f.task = "describe";
            break;
        case 1:
            f.model = "claude-3-5-sonnet";
            break;
        case 2:
            f.prompt_len = 5;
            break; /* "Read " */
        case 3:
            f.max_pixels = 2000001;
            break;
        case 4:
            f.total_bytes = 5;
            break;
        case 5:
            f.n_images = 4;
            break;
        case 6:
            f.client = "other";
            break;
        case 7:
            f.data_class = NULL;
            break;
        default:
            f.n_images = 0;
            break;
        }
        if (matches(r, &f))
            fail_msg("rule matched with condition %d broken", which);
    }
}

static void test_router__first_matching_rule_wins(void **state)
{
    (void)state;
    char *kw[] = {S("invoice")};
    ap_route_rule rules[3];
    rules[0] = rule("big");
    rules[0].min_pixels = 10000000;
    rules[1] = rule("invoices");
    rules[1].keywords = kw;
    rules[1].n_keywords = 1;
    rules[2] = rule("catch-all");
    ap_config c = config(rules, 3);

    const char *prompt = "an invoice";
    ap_route_facts f = facts();
    assert_string_equal(match_name(&c, &f), "catch-all");
    f.prompt = prompt;
    f.prompt_len = strlen(prompt);
    assert_string_equal(match_name(&c, &f), "invoices");
    f.max_pixels = 12000000; /* both "big" and "invoices" hold: the earlier one decides */
    assert_string_equal(match_name(&c, &f), "big");
    /* The pointer is into cfg->routes, not a copy. */
    assert_ptr_equal(ap_router_match(&c, &f), &rules[0]);

    c.n_routes = 2; /* without the catch-all, a plain request matches nothing */
    f = facts();
    assert_null(ap_router_match(&c, &f));
}

/* ---- restricted data ----------------------------------------------------------------------- */

static void test_router__restricted(void **state)
{
    (void)state;
    assert_true(ap_router_restricted("restricted"));
    assert_true(ap_router_restricted("RESTRICTED"));
    assert_true(ap_router_restricted("ReStRiCtEd"));
    assert_false(ap_router_restricted(NULL));
    assert_false(ap_router_restricted(""));
    assert_false(ap_router_restricted("public"));
    assert_false(ap_router_restricted("restricted "));
    assert_false(ap_router_restricted("unrestricted"));
}

static void test_router__restrict_mixed_chain(void **state)
{
    (void)state;
    ap_provider_conf openai = provider("openai", false), vllm = provider("vllm", true),
                     local = provider("local", true);
    ap_chain c;
    memset(&c, 0, sizeof(c));
    c.fallbacks_from = "task";
    add_dep(add_step(&c, "gpt-4o"), &openai, "gpt-4o", 1);
    add_dep(add_step(&c, "qwen-vl"), &vllm, "Qwen2-VL-7B", 1);
    add_dep(add_step(&c, "claude-3-5-sonnet"), &openai, "x", 1);
    add_dep(add_step(&c, "local"), &local, "local", 1);
    add_review(&c);

    ap_error err = {0};
    assert_int_equal(ap_router_restrict(&c, &err), AP_OK);
    assert_int_equal(c.n_steps, 3);
    assert_string_equal(c.step[0].model, "qwen-vl");
    assert_ptr_equal(c.step[0].provider, &vllm);
    assert_string_equal(c.step[0].deployment, "vllm/Qwen2-VL-7B");
    assert_string_equal(c.step[1].model, "local");
    assert_ptr_equal(c.step[1].provider, &local);
    assert_true(c.step[2].review);
    assert_string_equal(c.step[2].model, AP_REVIEW_STEP);
    assert_string_equal(c.fallbacks_from, "task");
}

static void test_router__restrict_filters_deployments_within_a_step(void **state)
{
    (void)state;
    ap_provider_conf azure = provider("openai", false), vllm_a = provider("vllm-a", true),
                     vllm_b = provider("vllm-b", true);
    ap_chain c;
    memset(&c, 0, sizeof(c));
    ap_chain_step *s = add_step(&c, "llama-vision");
    add_dep(s, &azure, "llama-hosted", 5); /* dep[0], cloud: the step shows it before */
    add_dep(s, &vllm_a, "llama-a", 2);
    add_dep(s, &azure, "llama-hosted-2", 1);
    add_dep(s, &vllm_b, "llama-b", 3);
    assert_ptr_equal(s->provider, &azure);

    ap_error err = {0};
    assert_int_equal(ap_router_restrict(&c, &err), AP_OK);
    assert_int_equal(c.n_steps, 1);
    s = &c.step[0];
    assert_int_equal(s->n_dep, 2);
    assert_ptr_equal(s->dep[0].provider, &vllm_a);
    assert_string_equal(s->dep[0].key, "vllm-a/llama-a");
    assert_true(s->dep[0].weight == 2);
    assert_ptr_equal(s->dep[1].provider, &vllm_b);
    assert_string_equal(s->dep[1].upstream, "llama-b");
    assert_true(s->dep[1].weight == 3);
    /* The step now shows its first self-hosted deployment. */
    assert_ptr_equal(s->provider, &vllm_a);
    assert_string_equal(s->upstream, "llama-a");
    assert_string_equal(s->deployment, "vllm-a/llama-a");
    /* A pick can only land on what is left. */
    uint64_t rng = 7;
    for (int i = 0; i < 100; i++) {
        int k = ap_router_pick(s, NULL, &rng);
        assert_true(k == 0 || k == 1);
    }
}

static void test_router__restrict_all_cloud_is_forbidden_and_unchanged(void **state)
{
    (void)state;
    ap_provider_conf openai = provider("openai", false), anthropic = provider("anthropic", false);
    ap_chain c;
    memset(&c, 0, sizeof(c));
    add_dep(add_step(&c, "gpt-4o"), &openai, "gpt-4o", 1);
    ap_chain_step *s = add_step(&c, "claude-3-5-sonnet");
    add_dep(s, &anthropic, "claude-3-5-sonnet-latest", 1);
    add_dep(s, &openai, "other", 1);
    add_review(&c);

    ap_chain before;
    memcpy(&before, &c, sizeof(c));
    ap_error err = {0};
    assert_int_equal(ap_router_restrict(&c, &err), AP_EFORBIDDEN);
    assert_int_equal(err.code, AP_EFORBIDDEN);
    assert_memory_equal(&c, &before, sizeof(c));
    /* The message says what and why, and names the chain's models (not the review step). */
    assert_non_null(strstr(err.msg, "restricted data (x-aperture-data-class: restricted) has no "
                                    "self-hosted route"));
    assert_non_null(strstr(err.msg, "\"gpt-4o\""));
    assert_non_null(strstr(err.msg, "\"claude-3-5-sonnet\""));
    assert_non_null(strstr(err.msg, "run on cloud providers"));
    assert_null(strstr(err.msg, "review"));
}

static void test_router__restrict_review_alone_is_not_a_route(void **state)
{
    (void)state;
    ap_provider_conf openai = provider("openai", false);
    ap_chain c;
    memset(&c, 0, sizeof(c));
    add_dep(add_step(&c, "gpt-4o"), &openai, "gpt-4o", 1);
    add_review(&c);
    ap_chain before;
    memcpy(&before, &c, sizeof(c));
    assert_int_equal(ap_router_restrict(&c, NULL), AP_EFORBIDDEN);
    assert_memory_equal(&c, &before, sizeof(c));

    /* A long chain of cloud models still gives a bounded, terminated message. */
    memset(&c, 0, sizeof(c));
    static char names[AP_CHAIN_MAX][48];
    for (int i = 0; i < AP_CHAIN_MAX; i++) {
        snprintf(names[i], sizeof(names[i]), "a-rather-long-cloud-model-name-%02d", i);
        add_dep(add_step(&c, names[i]), &openai, names[i], 1);
    }
    ap_error err = {0};
    assert_int_equal(ap_router_restrict(&c, &err), AP_EFORBIDDEN);
    assert_true(strlen(err.msg) < sizeof(err.msg));
    assert_non_null(strstr(err.msg, "\"a-rather-long-cloud-model-name-00\""));
    assert_non_null(strstr(err.msg, "run on cloud providers"));
}

/* ---- load balancing ------------------------------------------------------------------------ */

static void test_router__pick_follows_weights(void **state)
{
    (void)state;
    ap_provider_conf a = provider("a", true), b = provider("b", true);
    ap_chain_step s;
    memset(&s, 0, sizeof(s));
    add_dep(&s, &a, "m", 3);
    add_dep(&s, &b, "m", 1);
    enum { DRAWS = 100000 };
    int hits[2] = {0, 0};
    uint64_t rng = 12345;
    for (int i = 0; i < DRAWS; i++) {
        int k = ap_router_pick(&s, NULL, &rng);
        assert_true(k == 0 || k == 1);
        hits[k]++;
    }
    /* 3:1 is 75% / 25%; the standard error over 100k draws is 0.14%. */
    double share = (double)hits[0] / DRAWS;
    if (share < 0.73 || share > 0.77)
        fail_msg("deployment 0 got %.2f%% of the draws, expected 75%%", share * 100);
}

static void test_router__pick_respects_allowed(void **state)
{
    (void)state;
    ap_provider_conf a = provider("a", true), b = provider("b", true), c = provider("c", true);
    ap_chain_step s;
    memset(&s, 0, sizeof(s));
    add_dep(&s, &a, "m", 10);
    add_dep(&s, &b, "m", 1);
    add_dep(&s, &c, "m", 1);
    bool allowed[3] = {false, true, true};
    int hits[3] = {0, 0, 0};
    uint64_t rng = 99;
    for (int i = 0; i < 10000; i++) {
        int k = ap_router_pick(&s, allowed, &rng);
        assert_true(k >= 0 && k < 3);
        hits[k]++;
    }
    assert_int_equal(hits[0], 0);
    assert_true(hits[1] > 4500 && hits[2] > 4500);

    bool only_c[3] = {false, false, true};
    for (int i = 0; i < 100; i++)
        assert_int_equal(ap_router_pick(&s, only_c, &rng), 2);

    bool none[3] = {false, false, false};
    assert_int_equal(ap_router_pick(&s, none, &rng), -1);

    ap_chain_step empty;
    memset(&empty, 0, sizeof(empty));
    assert_int_equal(ap_router_pick(&empty, NULL, &rng), -1);
}

static void test_router__pick_zero_weights(void **state)
{
    (void)state;
    ap_provider_conf a = provider("a", true), b = provider("b", true), c = provider("c", true);
    ap_chain_step s;
    memset(&s, 0, sizeof(s));
    add_dep(&s, &a, "m", 0);
    add_dep(&s, &b, "m", 2);
    add_dep(&s, &c, "m", -1);
    uint64_t rng = 1;
    /* Weights <= 0 count as 0 while a positive one is allowed. */
    for (int i = 0; i < 1000; i++)
        assert_int_equal(ap_router_pick(&s, NULL, &rng), 1);

    /* Every allowed weight is <= 0: they count equally. */
    bool no_b[3] = {true, false, true};
    int hits[3] = {0, 0, 0};
    for (int i = 0; i < 10000; i++) {
        int k = ap_router_pick(&s, no_b, &rng);
        assert_true(k == 0 || k == 2);
        hits[k]++;
    }
    assert_true(hits[0] > 4500 && hits[2] > 4500);
}

static void test_router__pick_is_replayable(void **state)
{
    (void)state;
    ap_provider_conf a = provider("a", true), b = provider("b", true);
    ap_chain_step s;
    memset(&s, 0, sizeof(s));
    add_dep(&s, &a, "m", 1);
    add_dep(&s, &b, "m", 1);
    uint64_t r1 = 42, r2 = 42;
    for (int i = 0; i < 64; i++)
        assert_int_equal(ap_router_pick(&s, NULL, &r1), ap_router_pick(&s, NULL, &r2));
    assert_true(r1 == r2 && r1 != 42); /* the state advanced */
}

/* ---- two-stage classes --------------------------------------------------------------------- */

static char *ts_classes[] = {S("invoice"), S("receipt"), S("photo"), S("other")};
static char *ts_valuable[] = {S("invoice"), S("receipt")};

static ap_two_stage_conf two_stage(void)
{
    ap_two_stage_conf ts;
    memset(&ts, 0, sizeof(ts));
    ts.model = S("gpt-4o-mini");
    ts.classes = ts_classes;
    ts.n_classes = 4;
    ts.valuable = ts_valuable;
    ts.n_valuable = 2;
    return ts;
}

static void test_router__class_from_text(void **state)
{
    (void)state;
    ap_two_stage_conf ts = two_stage();
    /* The pointer returned is the configured class, whatever the answer's case. */
    assert_ptr_equal(ap_router_class(&ts, "Invoice."), ts_classes[0]);
    assert_ptr_equal(ap_router_class(&ts, "This is an INVOICE"), ts_classes[0]);
    assert_ptr_equal(ap_router_class(&ts, "receipt"), ts_classes[1]);
    assert_ptr_equal(ap_router_class(&ts, "  photo\n"), ts_classes[2]);
    /* Whole words only. */
    assert_null(ap_router_class(&ts, "invoices"));
    assert_null(ap_router_class(&ts, "photograph of a cat"));
    assert_null(ap_router_class(&ts, "invoice_total"));
    assert_ptr_equal(ap_router_class(&ts, "invoices, or rather a receipt"), ts_classes[1]);
    /* Several classes: the first listed wins, not the first in the text. */
    assert_ptr_equal(ap_router_class(&ts, "a photo of an invoice"), ts_classes[0]);
    /* None. */
    assert_null(ap_router_class(&ts, "I cannot tell"));
    assert_null(ap_router_class(&ts, ""));
    assert_null(ap_router_class(&ts, NULL));
}

static void test_router__class_from_json(void **state)
{
    (void)state;
    ap_two_stage_conf ts = two_stage();
    assert_ptr_equal(ap_router_class(&ts, "{\"class\": \"Receipt\"}"), ts_classes[1]);
    assert_ptr_equal(ap_router_class(&ts, "```json\n{\"class\":\"photo\"}\n```"), ts_classes[2]);
    /* Only the class member counts: another member naming a class does not. */
    assert_ptr_equal(
        ap_router_class(&ts, "{\"reason\": \"looks like an invoice\", \"class\": \"other\"}"),
        ts_classes[3]);
    assert_null(ap_router_class(&ts, "{\"class\": \"unknown\", \"note\": \"not an invoice\"}"));
    /* JSON without a class member, or broken JSON, is read as text. */
    assert_ptr_equal(ap_router_class(&ts, "{\"label\": \"invoice\"}"), ts_classes[0]);
    assert_ptr_equal(ap_router_class(&ts, "{\"class\": \"receipt\""), ts_classes[1]);
    assert_ptr_equal(ap_router_class(&ts, "{\"class\": 3} receipt"), ts_classes[1]);
}

static void test_router__valuable(void **state)
{
    (void)state;
    ap_two_stage_conf ts = two_stage();
    assert_true(ap_router_valuable(&ts, "invoice"));
    assert_true(ap_router_valuable(&ts, "Receipt"));
    assert_false(ap_router_valuable(&ts, "photo"));
    assert_false(ap_router_valuable(&ts, "other"));
    assert_false(ap_router_valuable(&ts, NULL));
    assert_true(ap_router_valuable(&ts, ap_router_class(&ts, "an invoice")));
    assert_false(ap_router_valuable(&ts, ap_router_class(&ts, "a photo")));
    assert_false(ap_router_valuable(&ts, ap_router_class(&ts, "no idea")));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_router__no_rules_matches_nothing),
        cmocka_unit_test(test_router__rule_without_conditions_matches_all),
        cmocka_unit_test(test_router__task),
        cmocka_unit_test(test_router__model_exact),
        cmocka_unit_test(test_router__model_prefix),
        cmocka_unit_test(test_router__keywords),
        cmocka_unit_test(test_router__pixels),
        cmocka_unit_test(test_router__bytes),
        cmocka_unit_test(test_router__images),
        cmocka_unit_test(test_router__clients),
        cmocka_unit_test(test_router__data_class),
        cmocka_unit_test(test_router__combination_needs_every_condition),
        cmocka_unit_test(test_router__first_matching_rule_wins),
        cmocka_unit_test(test_router__restricted),
        cmocka_unit_test(test_router__restrict_mixed_chain),
        cmocka_unit_test(test_router__restrict_filters_deployments_within_a_step),
        cmocka_unit_test(test_router__restrict_all_cloud_is_forbidden_and_unchanged),
        cmocka_unit_test(test_router__restrict_review_alone_is_not_a_route),
        cmocka_unit_test(test_router__pick_follows_weights),
        cmocka_unit_test(test_router__pick_respects_allowed),
        cmocka_unit_test(test_router__pick_zero_weights),
        cmocka_unit_test(test_router__pick_is_replayable),
        cmocka_unit_test(test_router__class_from_text),
        cmocka_unit_test(test_router__class_from_json),
        cmocka_unit_test(test_router__valuable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
