/*
 * pool.h - a fixed pool of worker threads for CPU work (decode, resample, OCR). Jobs run in
 * submission order on whichever worker is free. The HTTP front end never runs CPU work on its
 * event thread; it suspends the connection and hands the job here.
 */
#ifndef AP_POOL_H
#define AP_POOL_H

#include <stddef.h>

struct ap__pool;

/* Start n workers (n <= 0: one per online CPU). Aborts if no thread can be started. */
struct ap__pool *ap__pool_new(int n);

/* Queue fn(arg). Returns 0, or -1 when the pool is stopping (the job is not run). */
int ap__pool_submit(struct ap__pool *p, void (*fn)(void *arg), void *arg);

/* Jobs waiting (not yet started). */
size_t ap__pool_pending(struct ap__pool *p);

/* Stop accepting, run what is queued, join the workers, free. NULL is a no-op. */
void ap__pool_free(struct ap__pool *p);

#endif
