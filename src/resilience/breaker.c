/*
 * breaker.c - circuit breakers, one per deployment name, in one mutex-guarded set.
 * include/aperture/resilience.h states the state machine and the contract.
 *
 * Layout: an open-addressing hash table (linear probing, FNV-1a, power-of-two capacity, at
 * most half full) of pointers to per-deployment records. Records are never removed or moved,
 * so a name pointer handed out (callbacks, ap_breaker_info) stays valid for the set's life.
 * The number of records is capped: deployment names should come from the config, and a name
 * past the cap is let through untracked rather than growing without bound.
 *
 * The error-rate window is a ring of WIN_BUCKETS counters, each window_ms / WIN_BUCKETS wide,
 * keyed by bucket number (now / width); the window is the buckets of the last WIN_BUCKETS
 * numbers, so it covers between 9/10 of window_ms and all of it. Constant memory and time,
 * no per-request log.
 *
 * State changes are captured under the lock and reported to opts.on_change after it is
 * released, so the callback may call back into the set.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "aperture/resilience.h"
#include "core/core.h"

#define WIN_BUCKETS 10

struct bucket {
    int64_t num; /* now / width when it was last written; -1 = never */
    uint32_t ok, fail;
};

struct brk {
    char *name;
    uint64_t hash;
    ap_breaker_state state;
    int consecutive; /* failures in a row while CLOSED */
    struct bucket win[WIN_BUCKETS];
    int64_t last_at;   /* the last result recorded (for the info snapshot's window) */
    int64_t opened_at; /* the last time it opened; 0 = never */
    int64_t probe_at;  /* OPEN: opened_at + cooldown */
    int issued;        /* HALF_OPEN: probes handed out this round */
    int succeeded;     /* HALF_OPEN: of which succeeded */
    int64_t last_probe_at;
    uint64_t times_opened;
};

struct ap_breaker_set {
    ap_breaker_opts o;
    int64_t width_ms; /* one window bucket */
    pthread_mutex_t mu;
    struct brk **slot;
    size_t cap, n;
};

/* A state change seen under the lock, reported after it. */
struct change {
    const char *name;
    ap_breaker_state from, to;
};

void ap_breaker_opts_init(ap_breaker_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->consecutive_failures = 5;
    o->error_rate = 0.5;
    o->window_ms = 60000;
    o->min_requests = 20;
    o->cooldown_ms = 30000;
    o->half_open_probes = 1;
}

const char *ap_breaker_state_name(ap_breaker_state s)
{
    switch (s) {
    case AP_BREAKER_CLOSED:
        return "closed";
    case AP_BREAKER_OPEN:
        return "open";
    case AP_BREAKER_HALF_OPEN:
        return "half_open";
    }
    return "unknown";
}

ap_status ap_breaker_set_new(const ap_breaker_opts *opts, ap_breaker_set **out, ap_error *err)
{
    ap_breaker_opts o;
    if (opts == NULL)
        ap_breaker_opts_init(&o);
    else
        o = *opts;
    if (o.consecutive_failures < 0)
        return ap_error_set(err, AP_EINVAL, "breaker: consecutive_failures must not be negative");
    if (!(o.error_rate >= 0 && o.error_rate <= 1))
        return ap_error_set(err, AP_EINVAL, "breaker: error_rate must be from 0 to 1");
    if (o.window_ms < 1)
        return ap_error_set(err, AP_EINVAL, "breaker: window_ms must be at least 1");
    if (o.min_requests < 1)
        return ap_error_set(err, AP_EINVAL, "breaker: min_requests must be at least 1");
    if (o.cooldown_ms < 1)
        return ap_error_set(err, AP_EINVAL, "breaker: cooldown_ms must be at least 1");
    if (o.half_open_probes < 1)
        return ap_error_set(err, AP_EINVAL, "breaker: half_open_probes must be at least 1");

    ap_breaker_set *s = ap__xcalloc(1, sizeof(*s));
    s->o = o;
    s->width_ms = AP_MAX((o.window_ms + WIN_BUCKETS - 1) / WIN_BUCKETS, 1L);
    if (pthread_mutex_init(&s->mu, NULL) != 0) {
        free(s);
        return ap_error_set(err, AP_ENOMEM, "breaker: cannot create a mutex");
    }
    s->cap = 16;
    s->slot = ap__xcalloc(s->cap, sizeof(*s->slot));
    *out = s;
    return AP_OK;
}

void ap_breaker_set_free(ap_breaker_set *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->cap; i++) {
        if (s->slot[i] != NULL) {
            free(s->slot[i]->name);
            free(s->slot[i]);
        }
    }
    free(s->slot);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* ---- the table (called with the lock held) --------------------------------------------------- */

static void grow(ap_breaker_set *s)
{
    size_t cap = s->cap * 2;
    struct brk **slot = ap__xcalloc(cap, sizeof(*slot));
    for (size_t i = 0; i < s->cap; i++) {
        struct brk *b = s->slot[i];
        if (b == NULL)
            continue;
        size_t j = (size_t)b->hash & (cap - 1);
        while (slot[j] != NULL)
            j = (j + 1) & (cap - 1);
        slot[j] = b;
    }
    free(s->slot);
    s->slot = slot;
    s->cap = cap;
}

/*
 * The record for name; with create, made (CLOSED) when missing. NULL when missing and not
 * created, and for names that are not tracked (NULL, too long, the set full).
 */
static struct brk *lookup(ap_breaker_set *s, const char *name, bool create)
{
    if (name == NULL)
        return NULL;
    size_t len = strnlen(name, AP_BREAKER_MAX_NAME + 1);
    if (len > AP_BREAKER_MAX_NAME)
        return NULL;
    uint64_t h = ap__fnv1a(name, len);
    size_t i = (size_t)h & (s->cap - 1);
    for (; s->slot[i] != NULL; i = (i + 1) & (s->cap - 1)) {
        struct brk *b = s->slot[i];
        if (b->hash == h && strcmp(b->name, name) == 0)
            return b;
    }
    if (!create || s->n >= AP_BREAKER_MAX_DEPLOYMENTS)
        return NULL;
    struct brk *b = ap__xcalloc(1, sizeof(*b));
    b->name = ap__xmalloc(len + 1);
    memcpy(b->name, name, len + 1);
    b->hash = h;
    b->state = AP_BREAKER_CLOSED;
    for (int k = 0; k < WIN_BUCKETS; k++)
        b->win[k].num = -1;
    s->slot[i] = b;
    s->n++;
    if (s->n * 2 > s->cap)
        grow(s);
    return b;
}

/* ---- the error-rate window ------------------------------------------------------------------- */

static void win_reset(struct brk *b)
{
    for (int k = 0; k < WIN_BUCKETS; k++)
        b->win[k] = (struct bucket){.num = -1};
}

static void win_add(const ap_breaker_set *s, struct brk *b, int64_t now, bool ok)
{
    int64_t num = now / s->width_ms;
    struct bucket *k = &b->win[num % WIN_BUCKETS];
    if (k->num != num)
        *k = (struct bucket){.num = num};
    if (ok && k->ok < UINT32_MAX)
        k->ok++;
    else if (!ok && k->fail < UINT32_MAX)
        k->fail++;
}

/* Results in the window that ends at now. */
static void win_sum(const ap_breaker_set *s, const struct brk *b, int64_t now, uint32_t *req,
                    uint32_t *fail)
{
    int64_t num = now / s->width_ms;
    uint64_t r = 0, f = 0;
    for (int k = 0; k < WIN_BUCKETS; k++) {
        const struct bucket *x = &b->win[k];
        if (x->num > num - WIN_BUCKETS && x->num <= num) {
            r += (uint64_t)x->ok + x->fail;
            f += x->fail;
        }
    }
    *req = (uint32_t)AP_MIN(r, (uint64_t)UINT32_MAX);
    *fail = (uint32_t)AP_MIN(f, (uint64_t)UINT32_MAX);
}

/* ---- transitions (lock held) ----------------------------------------------------------------- */

static void go(struct brk *b, ap_breaker_state to, struct change *ch)
{
    ch->name = b->name;
    ch->from = b->state;
    ch->to = to;
    b->state = to;
}

static void trip(const ap_breaker_set *s, struct brk *b, int64_t now, struct change *ch)
{
    go(b, AP_BREAKER_OPEN, ch);
    b->opened_at = now;
    b->probe_at = now + s->o.cooldown_ms;
    b->consecutive = 0;
    b->issued = b->succeeded = 0;
    b->times_opened++;
    /* The failures that opened it are spent: closing again starts from a clean window. */
    win_reset(b);
}

static void notify(const ap_breaker_set *s, const struct change *ch, int64_t now)
{
    if (ch->name != NULL && s->o.on_change != NULL)
        s->o.on_change(s->o.on_change_ctx, ch->name, ch->from, ch->to, now);
}

/* ---- the verbs ------------------------------------------------------------------------------- */

bool ap_breaker_allow(ap_breaker_set *s, const char *deployment, int64_t now_ms, bool *is_probe)
{
    struct change ch = {0};
    bool allowed = false, probe = false;
    if (is_probe != NULL)
        *is_probe = false;
    if (AP_NEVER(s == NULL))
        return true;
    if (now_ms < 0)
        now_ms = 0;

    pthread_mutex_lock(&s->mu);
    struct brk *b = lookup(s, deployment, true);
    if (b == NULL) {
        allowed = true; /* untracked */
        goto out;
    }
    switch (b->state) {
    case AP_BREAKER_CLOSED:
        allowed = true;
        break;
    case AP_BREAKER_OPEN:
        if (now_ms < b->probe_at)
            break;
        go(b, AP_BREAKER_HALF_OPEN, &ch);
        b->issued = b->succeeded = 0;
        /* The caller that notices the cooldown is over gets the first probe. */
        /* fall through */
    case AP_BREAKER_HALF_OPEN:
        if (b->issued >= s->o.half_open_probes && now_ms - b->last_probe_at >= s->o.cooldown_ms)
            b->issued = b->succeeded; /* probes silent for a cooldown are taken as lost */
        if (b->issued < s->o.half_open_probes) {
            b->issued++;
            b->last_probe_at = now_ms;
            allowed = probe = true;
        }
        break;
    }
out:
    pthread_mutex_unlock(&s->mu);
    notify(s, &ch, now_ms);
    if (is_probe != NULL)
        *is_probe = probe;
    return allowed;
}

void ap_breaker_record(ap_breaker_set *s, const char *deployment, int64_t now_ms, bool success,
                       bool was_probe)
{
    struct change ch = {0};
    if (AP_NEVER(s == NULL))
        return;
    if (now_ms < 0)
        now_ms = 0;

    pthread_mutex_lock(&s->mu);
    struct brk *b = lookup(s, deployment, true);
    if (b == NULL)
        goto out;
    switch (b->state) {
    case AP_BREAKER_CLOSED:
        /* A probe's result arriving after another probe closed it counts like any other. */
        win_add(s, b, now_ms, success);
        b->last_at = now_ms;
        if (success) {
            b->consecutive = 0;
            break;
        }
        b->consecutive++;
        if (s->o.consecutive_failures > 0 && b->consecutive >= s->o.consecutive_failures) {
            trip(s, b, now_ms, &ch);
            break;
        }
        if (s->o.error_rate > 0) {
            uint32_t req, fail;
            win_sum(s, b, now_ms, &req, &fail);
            if (req >= (uint32_t)s->o.min_requests && (double)fail >= s->o.error_rate * req)
                trip(s, b, now_ms, &ch);
        }
        break;
    case AP_BREAKER_OPEN:
        /* Requests let through before it opened, or probes after one failed: old news. */
        break;
    case AP_BREAKER_HALF_OPEN:
        if (!was_probe)
            break;
        if (!success) {
            trip(s, b, now_ms, &ch);
            break;
        }
        if (++b->succeeded >= s->o.half_open_probes) {
            go(b, AP_BREAKER_CLOSED, &ch);
            b->consecutive = 0;
            b->issued = b->succeeded = 0;
            win_reset(b);
        }
        break;
    }
out:
    pthread_mutex_unlock(&s->mu);
    notify(s, &ch, now_ms);
}

/*
 * A remote decision: no on_change (the sync that calls this must not echo it back), and the
 * same bookkeeping as a local opening so /metrics counts it. HALF_OPEN is never forced.
 */
void ap_breaker_force(ap_breaker_set *s, const char *deployment, ap_breaker_state state,
                      int64_t now_ms, int64_t probe_at_ms)
{
    if (AP_NEVER(s == NULL))
        return;
    if (state != AP_BREAKER_OPEN && state != AP_BREAKER_CLOSED)
        return;
    if (now_ms < 0)
        now_ms = 0;

    pthread_mutex_lock(&s->mu);
    struct brk *b = lookup(s, deployment, true);
    if (b == NULL)
        goto out;
    if (state == AP_BREAKER_OPEN && b->state == AP_BREAKER_OPEN) {
        /* Two gateways opened it: the later cooldown end wins, so neither probes early. */
        b->probe_at = AP_MAX(b->probe_at, probe_at_ms);
    } else if (state == AP_BREAKER_OPEN) {
        b->state = AP_BREAKER_OPEN;
        b->opened_at = now_ms;
        b->probe_at = probe_at_ms;
        b->times_opened++;
        b->consecutive = 0;
        /* Probes handed out while HALF_OPEN report into OPEN, where they are ignored. */
        b->issued = b->succeeded = 0;
        win_reset(b);
    } else {
        b->state = AP_BREAKER_CLOSED;
        b->consecutive = 0;
        b->issued = b->succeeded = 0;
        win_reset(b);
    }
out:
    pthread_mutex_unlock(&s->mu);
}

ap_breaker_state ap_breaker_state_get(ap_breaker_set *s, const char *deployment)
{
    if (AP_NEVER(s == NULL))
        return AP_BREAKER_CLOSED;
    pthread_mutex_lock(&s->mu);
    const struct brk *b = lookup(s, deployment, false);
    ap_breaker_state st = b ? b->state : AP_BREAKER_CLOSED;
    pthread_mutex_unlock(&s->mu);
    return st;
}

long ap_breaker_wait_ms(ap_breaker_set *s, const char *deployment, int64_t now_ms)
{
    if (AP_NEVER(s == NULL))
        return 0;
    int64_t wait = 0;
    pthread_mutex_lock(&s->mu);
    const struct brk *b = lookup(s, deployment, false);
    if (b != NULL && b->state == AP_BREAKER_OPEN)
        wait = b->probe_at - now_ms;
    else if (b != NULL && b->state == AP_BREAKER_HALF_OPEN && b->issued >= s->o.half_open_probes)
        wait = b->last_probe_at + s->o.cooldown_ms - now_ms;
    pthread_mutex_unlock(&s->mu);
    return wait > 0 ? (long)AP_MIN(wait, (int64_t)INT32_MAX) : 0;
}

void ap_breaker_foreach(ap_breaker_set *s, void (*fn)(const ap_breaker_info *info, void *ctx),
                        void *ctx)
{
    if (AP_NEVER(s == NULL || fn == NULL))
        return;
    pthread_mutex_lock(&s->mu);
    size_t n = 0;
    ap_breaker_info *v = ap__xcalloc(s->n ? s->n : 1, sizeof(*v));
    for (size_t i = 0; i < s->cap; i++) {
        const struct brk *b = s->slot[i];
        if (b == NULL)
            continue;
        ap_breaker_info *x = &v[n++];
        x->deployment = b->name;
        x->state = b->state;
        x->consecutive_failures = b->consecutive;
        win_sum(s, b, b->last_at, &x->window_requests, &x->window_failures);
        x->opened_at_ms = b->opened_at;
        x->probe_at_ms = b->state == AP_BREAKER_OPEN ? b->probe_at : 0;
        x->times_opened = b->times_opened;
    }
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < n; i++)
        fn(&v[i], ctx);
    free(v);
}
