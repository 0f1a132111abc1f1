/*
 * router.h - which routing rule (config.h: ap_route_rule, YAML routes[]) decides a request,
 * and the data-class filter that keeps restricted requests on self-hosted providers.
 *
 * The facts are gathered by the caller before any image is preprocessed (the rule picks the
 * model, and the model picks the preprocessing target): image sizes come from the images'
 * headers (ap_prep_probe() in prep.h), bytes from the uploads as received.
 *
 * Pure functions over an immutable config: no I/O, no clock, no state; safe from any thread.
 * Matching is a linear walk over the rules with cheap compares first (task, model, counts)
 * and the keyword search last.
 */
#ifndef APERTURE_ROUTER_H
#define APERTURE_ROUTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aperture/config.h"
#include "aperture/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a rule may look at. Strings may be NULL (absent); a NULL string never equals a set
 * condition. */
typedef struct ap_route_facts {
    const char *task;       /* the request's task (x-aperture-task, analyze's task), or NULL */
    const char *model;      /* the model the client asked for */
    const char *prompt;     /* the request's text parts joined (any length), or NULL */
    size_t prompt_len;
    size_t n_images;
    uint64_t max_pixels;    /* the largest image's width * height (0: no images) */
    uint64_t total_bytes;   /* every image's bytes as uploaded */
    const char *client;     /* the client key's name, or NULL (no auth) */
    const char *data_class; /* the x-aperture-data-class header, or NULL */
} ap_route_facts;

/* The first rule of cfg whose every set condition holds, or NULL when none does. */
AP_API const ap_route_rule *ap_router_match(const ap_config *cfg, const ap_route_facts *f);

/* Whether a data class names restricted data: "restricted" (ASCII case-insensitive). */
AP_API bool ap_router_restricted(const char *data_class);

/*
 * Keep only self-hosted steps of chain (ap_provider_conf.self_hosted; the review step stays:
 * it stores in the gateway's own store), and within each step only its self-hosted
 * deployments. AP_EFORBIDDEN when no model step is left; the message says that restricted
 * data has no self-hosted route and names the chain's models. On failure *chain is unchanged.
 */
AP_API AP_NODISCARD ap_status ap_router_restrict(ap_chain *chain, ap_error *err);

/*
 * Pick one of a step's deployments by weight among those allowed (allowed[i]; NULL = all),
 * drawing from *rng_state (ap_retry_rand()). Returns the index, or -1 when none is allowed.
 * Weights <= 0 count as 0 unless every allowed weight is, then they count equally.
 */
AP_API int ap_router_pick(const ap_chain_step *step, const bool *allowed, uint64_t *rng_state);

/*
 * The answer a two-stage classifier gave, mapped to one of ts->classes: the class name found
 * in text (ASCII case-insensitive; whole words; the first listed class that occurs wins when
 * several do; a JSON answer {"class": "..."} is understood too). NULL when none occurs.
 */
AP_API const char *ap_router_class(const ap_two_stage_conf *ts, const char *text);

/* Whether class is one of ts->valuable. */
AP_API bool ap_router_valuable(const ap_two_stage_conf *ts, const char *cls);

#ifdef __cplusplus
}
#endif
#endif
