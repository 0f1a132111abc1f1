/*
 * core.h - internal helpers shared by every module: assertions, aborting small allocations,
 * monotonic clock.
 */
#ifndef AP_CORE_H
#define AP_CORE_H

#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "aperture/status.h"

#ifdef NDEBUG
#define AP_ASSERT(x) ((void)0)
#else
#include <assert.h>
#define AP_ASSERT(x) assert(x)
#endif
/* Defensive checks that also run in release builds: if (AP_NEVER(p == NULL)) return ...; */
#define AP_ALWAYS(x) (__builtin_expect(!!(x), 1))
#define AP_NEVER(x)  (__builtin_expect(!!(x), 0))

#define AP_MIN(a, b) ((a) < (b) ? (a) : (b))
#define AP_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Small fixed-size allocations: abort on failure (input-sized ones must use checked paths). */
void *ap__xmalloc(size_t n);
void *ap__xcalloc(size_t n, size_t m);

/* FNV-1a, 64-bit: the hash of the small name tables (breakers, limiter keys, cache tasks). */
static inline uint64_t ap__fnv1a(const void *p, size_t len)
{
    const unsigned char *s = p;
    uint64_t h = UINT64_C(0xcbf29ce484222325);
    for (size_t i = 0; i < len; i++) {
        h ^= s[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

static inline double ap__now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

#endif
