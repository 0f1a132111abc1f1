/*
 * metrics.h - Prometheus metrics for the gateway: counters, gauges and histograms with labels,
 * rendered in the text exposition format (version 0.0.4).
 *
 * Series are created on first use, keyed by family and label values. One mutex guards the
 * registry: updates are a lookup plus an add, far cheaper than anything a request does.
 */
#ifndef AP_METRICS_H
#define AP_METRICS_H

#include <stddef.h>

struct ap__metrics;

struct ap__metrics *ap__metrics_new(void);
void ap__metrics_free(struct ap__metrics *m);

/*
 * labels: "key=value,key2=value2" pairs as a NULL-terminated array of alternating keys and
 * values, e.g. (const char *[]){"model", "gpt-4o", NULL}. Values are escaped on output.
 */
void ap__metrics_add(struct ap__metrics *m, const char *name, const char *const *labels,
                     double v);
void ap__metrics_set(struct ap__metrics *m, const char *name, const char *const *labels,
                     double v);
void ap__metrics_observe(struct ap__metrics *m, const char *name, const char *const *labels,
                         double v);

/* The exposition text, malloc'd. */
char *ap__metrics_render(struct ap__metrics *m, size_t *len);

#endif
