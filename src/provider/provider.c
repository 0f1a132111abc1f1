/*
 * provider.c - the provider table and the upstream request's lifecycle.
 */
#include <stdlib.h>
#include <string.h>

#include "provider/provider.h"

const struct ap__provider_ops *ap__provider_ops_for(ap_provider_type t)
{
    switch (t) {
    case AP_PROVIDER_OPENAI:
    case AP_PROVIDER_OPENAI_COMPAT:
        return &ap__openai_ops;
    case AP_PROVIDER_ANTHROPIC:
        return &ap__anthropic_ops;
    case AP_PROVIDER_GEMINI:
        return &ap__gemini_ops;
    case AP_PROVIDER_LOCAL:
        return NULL; /* in-process: ap__local_answer() */
    }
    return NULL;
}

void ap__upreq_release(struct ap__upreq *r)
{
    if (r == NULL)
        return;
    for (size_t i = 0; i < r->n_headers; i++) {
        /* A header may hold the key: wipe it before the memory goes back. */
        if (r->headers[i] != NULL) {
            volatile char *h = r->headers[i];
            while (*h)
                *h++ = '\0';
        }
        free(r->headers[i]);
    }
    free(r->headers);
    free(r->url);
    free(r->body);
    memset(r, 0, sizeof(*r));
}
