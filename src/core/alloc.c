/*
 * alloc.c - aborting allocators for small, fixed-size objects. Anything sized by untrusted input
 * goes through a checked malloc and fails with AP_ENOMEM/AP_ETOOLARGE instead.
 */
#include <stdio.h>
#include <stdlib.h>

#include "core/core.h"

void *ap__xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (p == NULL) {
        fprintf(stderr, "aperture: out of memory allocating %zu bytes\n", n);
        abort();
    }
    return p;
}

void *ap__xcalloc(size_t n, size_t m)
{
    void *p = calloc(n ? n : 1, m ? m : 1);
    if (p == NULL) {
        fprintf(stderr, "aperture: out of memory allocating %zu x %zu bytes\n", n, m);
        abort();
    }
    return p;
}
