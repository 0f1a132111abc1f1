/*
 * review.c - the public ap_review API: URL dispatch to a backend, argument checks, ids, times,
 * and the status names. include/aperture/review.h states the contract.
 *
 * Everything a caller passes is checked here once: a malformed id is answered AP_ENOTFOUND
 * before any backend sees it, so ids are only ever "rv_" + 24 lowercase hex digits inside
 * Redis key names and SQL parameters.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sys/random.h>

#include <openssl/rand.h>

#include "core/core.h"
#include "review/review_int.h"

struct ap_review_store {
    struct ap__review_backend *b;
};

static const char *const status_names[] = {
    [AP_REVIEW_PENDING] = "pending",
    [AP_REVIEW_RESOLVED] = "resolved",
    [AP_REVIEW_REJECTED] = "rejected",
};

/* ---- shared helpers */

bool ap__review_id_valid(const char *id)
{
    if (id == NULL || strncmp(id, "rv_", 3) != 0)
        return false;
    for (int i = 3; i < AP__REVIEW_ID_LEN; i++) {
        char ch = id[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
            return false; /* also stops at a short id's NUL */
    }
    return id[AP__REVIEW_ID_LEN] == '\0';
}

int64_t ap__review_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

ap_status ap__review_strndup(const char *p, size_t len, char **out, ap_error *err)
{
    char *s = malloc(len + 1);
    if (s == NULL)
        return ap_error_set(err, AP_ENOMEM, "review: out of memory copying %zu bytes", len);
    if (len)
        memcpy(s, p, len);
    s[len] = '\0';
    *out = s;
    return AP_OK;
}

/* 12 bytes from the OS: getrandom(), or OpenSSL's generator (itself seeded by the OS) where the
 * kernel lacks it. */
static ap_status random_bytes(unsigned char *buf, size_t len, ap_error *err)
{
    ssize_t got;
    do
        got = getrandom(buf, len, 0);
    while (got < 0 && errno == EINTR);
    if (got == (ssize_t)len)
        return AP_OK;
    if (RAND_bytes(buf, (int)len) == 1)
        return AP_OK;
    return ap_error_set(err, AP_EINTERNAL, "review: no random bytes for an id");
}

static ap_status new_id(char *out, ap_error *err)
{
    static const char digits[] = "0123456789abcdef";
    unsigned char r[12];
    ap_status rc = random_bytes(r, sizeof(r), err);
    if (rc != AP_OK)
        return rc;
    memcpy(out, "rv_", 3);
    for (size_t i = 0; i < sizeof(r); i++) {
        out[3 + 2 * i] = digits[r[i] >> 4];
        out[3 + 2 * i + 1] = digits[r[i] & 15];
    }
    out[AP__REVIEW_ID_LEN] = '\0';
    return AP_OK;
}

/* ---- open, close */

ap_status ap_review_open(const char *url, ap_review_store **out, ap_error *err)
{
    static const char sqlite_scheme[] = "sqlite://", redis_scheme[] = "redis://";
    struct ap__review_backend *b = NULL;
    ap_status rc;

    if (AP_NEVER(out == NULL))
        return ap_error_set(err, AP_EINVAL, "review: null out");
    if (url == NULL)
        return ap_error_set(err, AP_EINVAL, "review: no url");
    if (strncmp(url, sqlite_scheme, sizeof(sqlite_scheme) - 1) == 0)
        rc = ap__review_sqlite_open(url + sizeof(sqlite_scheme) - 1, url, &b, err);
    else if (strncmp(url, redis_scheme, sizeof(redis_scheme) - 1) == 0)
        rc = ap__review_redis_open(url + sizeof(redis_scheme) - 1, url, &b, err);
    else
        return ap_error_set(err, AP_EINVAL,
                            "review: url \"%s\" is neither sqlite://PATH nor redis://HOST:PORT",
                            url);
    if (rc != AP_OK)
        return rc;
    ap_review_store *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        b->ops->free(b);
        return ap_error_set(err, AP_ENOMEM, "review: out of memory");
    }
    s->b = b;
    *out = s;
    return AP_OK;
}

void ap_review_close(ap_review_store *s)
{
    if (s == NULL)
        return;
    s->b->ops->free(s->b);
    free(s);
}

const char *ap_review_backend(const ap_review_store *s)
{
    return s != NULL ? s->b->ops->name : "none";
}

/* ---- the verbs */

/* Fields of one item that a caller gives us, for the size check. */
static ap_status check_field(const char *name, const char *v, ap_error *err)
{
    if (v != NULL && strlen(v) > AP__REVIEW_MAX_FIELD)
        return ap_error_set(err, AP_ETOOLARGE, "review: %s of %zu bytes is over %zu", name,
                            strlen(v), AP__REVIEW_MAX_FIELD);
    return AP_OK;
}

ap_status ap_review_add(ap_review_store *s, const ap_review_item *item, char *id_out, ap_error *err)
{
    char id[AP_REVIEW_ID_MAX];
    ap_status rc;

    if (AP_NEVER(s == NULL || item == NULL || id_out == NULL))
        return ap_error_set(err, AP_EINVAL, "review: null store, item or id");
    if (item->request == NULL)
        return ap_error_set(err, AP_EINVAL, "review: an item needs its request");
    const struct {
        const char *name, *v;
    } fields[] = {{"task", item->task},       {"model", item->model},
                  {"client", item->client},   {"reason", item->reason},
                  {"request", item->request}, {"candidate", item->candidate}};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if ((rc = check_field(fields[i].name, fields[i].v, err)) != AP_OK)
            return rc;
    if ((rc = new_id(id, err)) != AP_OK)
        return rc;
    rc = s->b->ops->add(s->b, id, ap__review_wall_ms(), item, err);
    if (rc == AP_OK)
        memcpy(id_out, id, AP__REVIEW_ID_LEN + 1);
    return rc;
}

ap_status ap_review_get(ap_review_store *s, const char *id, bool with_request, ap_review_item *out,
                        ap_error *err)
{
    ap_review_item it;
    ap_status rc;

    if (AP_NEVER(s == NULL || out == NULL))
        return ap_error_set(err, AP_EINVAL, "review: null store or item");
    if (!ap__review_id_valid(id))
        return ap_error_set(err, AP_ENOTFOUND, "review: no item \"%.40s\"", id ? id : "(null)");
    memset(&it, 0, sizeof(it));
    rc = s->b->ops->get(s->b, id, with_request, &it, err);
    if (rc != AP_OK) {
        ap_review_item_release(&it);
        return rc;
    }
    *out = it;
    return AP_OK;
}

static bool status_ok(ap_review_status st)
{
    return st == AP_REVIEW_PENDING || st == AP_REVIEW_RESOLVED || st == AP_REVIEW_REJECTED;
}

ap_status ap_review_list(ap_review_store *s, ap_review_status status, size_t offset, size_t limit,
                         ap_review_item **items, size_t *n, ap_error *err)
{
    ap_review_item *v = NULL;
    size_t got = 0;
    ap_status rc;

    if (AP_NEVER(s == NULL || items == NULL || n == NULL))
        return ap_error_set(err, AP_EINVAL, "review: null store or list");
    if (!status_ok(status))
        return ap_error_set(err, AP_EINVAL, "review: status %d is unknown", (int)status);
    if (limit > 0 && (rc = s->b->ops->list(s->b, status, offset, limit, &v, &got, err)) != AP_OK)
        return rc;
    *items = v;
    *n = got;
    return AP_OK;
}

ap_status ap_review_count(ap_review_store *s, ap_review_status status, size_t *n, ap_error *err)
{
    size_t got = 0;
    ap_status rc;

    if (AP_NEVER(s == NULL || n == NULL))
        return ap_error_set(err, AP_EINVAL, "review: null store or count");
    if (!status_ok(status))
        return ap_error_set(err, AP_EINVAL, "review: status %d is unknown", (int)status);
    if ((rc = s->b->ops->count(s->b, status, &got, err)) != AP_OK)
        return rc;
    *n = got;
    return AP_OK;
}

ap_status ap_review_resolve(ap_review_store *s, const char *id, ap_review_status status,
                            const char *answer, const char *reviewer, ap_error *err)
{
    ap_status rc;

    if (AP_NEVER(s == NULL))
        return ap_error_set(err, AP_EINVAL, "review: null store");
    if (status != AP_REVIEW_RESOLVED && status != AP_REVIEW_REJECTED)
        return ap_error_set(err, AP_EINVAL, "review: resolve to \"%s\": only resolved or rejected",
                            ap_review_status_name(status));
    if (status == AP_REVIEW_RESOLVED && answer == NULL)
        return ap_error_set(err, AP_EINVAL, "review: resolving needs an answer");
    if ((rc = check_field("answer", answer, err)) != AP_OK ||
        (rc = check_field("reviewer", reviewer, err)) != AP_OK)
        return rc;
    if (!ap__review_id_valid(id))
        return ap_error_set(err, AP_ENOTFOUND, "review: no item \"%.40s\"", id ? id : "(null)");
    return s->b->ops->resolve(s->b, id, status, answer, reviewer, ap__review_wall_ms(), err);
}

ap_status ap_review_purge(ap_review_store *s, int64_t older_than_unix_ms, size_t *removed,
                          ap_error *err)
{
    size_t n = 0;
    ap_status rc;

    if (AP_NEVER(s == NULL))
        return ap_error_set(err, AP_EINVAL, "review: null store");
    if ((rc = s->b->ops->purge(s->b, older_than_unix_ms, &n, err)) != AP_OK)
        return rc;
    if (removed != NULL)
        *removed = n;
    return AP_OK;
}

void ap_review_item_release(ap_review_item *item)
{
    if (item == NULL)
        return;
    free(item->task);
    free(item->model);
    free(item->client);
    free(item->reason);
    free(item->request);
    free(item->candidate);
    free(item->answer);
    free(item->reviewer);
    memset(item, 0, sizeof(*item));
}

const char *ap_review_status_name(ap_review_status s)
{
    return status_ok(s) ? status_names[s] : "unknown";
}

ap_status ap_review_status_parse(const char *name, ap_review_status *out)
{
    for (int i = AP_REVIEW_PENDING; name != NULL && i <= AP_REVIEW_REJECTED; i++) {
        if (strcmp(name, status_names[i]) == 0) {
            *out = (ap_review_status)i;
            return AP_OK;
        }
    }
    return AP_EINVAL;
}
