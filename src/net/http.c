/*
 * http.c - the libcurl multi loop. One thread owns the multi handle and every easy handle;
 * other threads only push onto a locked queue and wake the loop (curl_multi_wakeup).
 */
#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/core.h"
#include "net/http.h"

struct ap__http {
    CURLM *multi;
    pthread_t thread;
    pthread_mutex_t mu;
    struct ap__http_call *queue;
    struct ap__http_call *delayed; /* loop thread only: calls waiting for their due time */
    struct ap__http_call *active;  /* loop thread only */
    bool stopping;
    atomic_size_t inflight;
};

static size_t on_write(char *data, size_t size, size_t n, void *arg)
{
    struct ap__http_call *c = arg;
    size_t len = size * n;
    if (c->status == 0)
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
    if (c->on_data != NULL)
        return c->on_data(c->ctx, c->status, data, len) ? len : 0;
    if (c->len + len > c->max_body) {
        c->aborted_too_large = true;
        return 0;
    }
    if (c->len + len + 1 > c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 16384;
        while (ncap < c->len + len + 1)
            ncap *= 2;
        char *nb = realloc(c->buf, ncap);
        if (nb == NULL)
            return 0;
        c->buf = nb;
        c->cap = ncap;
    }
    memcpy(c->buf + c->len, data, len);
    c->len += len;
    c->buf[c->len] = '\0';
    return len;
}

/* Keep the one response header the gateway forwards: Retry-After (retry-after-ms too). */
static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
    struct ap__http_call *c = arg;
    size_t len = size * n;
    if (len > 12 && strncasecmp(data, "retry-after:", 12) == 0) {
        size_t i = 12, o = 0;
        while (i < len && data[i] == ' ')
            i++;
        while (i < len && o + 1 < sizeof(c->retry_after) && data[i] != '\r' && data[i] != '\n')
            c->retry_after[o++] = data[i++];
        c->retry_after[o] = '\0';
    } else if (len > 15 && strncasecmp(data, "retry-after-ms:", 15) == 0) {
        /* Kept as sent for the retry policy (ap_retry_delay_ms() prefers it); rounded up to
         * seconds as a Retry-After for a client only when the upstream sent none. */
        size_t i = 15, o = 0;
        while (i < len && data[i] == ' ')
            i++;
        while (i < len && o + 1 < sizeof(c->retry_after_ms) && data[i] != '\r' && data[i] != '\n')
            c->retry_after_ms[o++] = data[i++];
        c->retry_after_ms[o] = '\0';
        long ms = strtol(data + 15, NULL, 10);
        if (ms > 0 && !c->retry_after[0])
            snprintf(c->retry_after, sizeof(c->retry_after), "%ld", (ms + 999) / 1000);
    }
    return len;
}

static void call_free(struct ap__http_call *c)
{
    if (c->easy)
        curl_easy_cleanup(c->easy);
    curl_slist_free_all(c->slist);
    ap__upreq_release(&c->req);
    free(c->buf);
    free(c);
}

static void start_call(struct ap__http *h, struct ap__http_call *c)
{
    CURL *e = curl_easy_init();
    if (e == NULL) {
        c->on_done(c->ctx, AP_ENOMEM, 0, NULL, 0, "out of memory");
        call_free(c);
        return;
    }
    c->easy = e;
    for (size_t i = 0; i < c->req.n_headers; i++)
        c->slist = curl_slist_append(c->slist, c->req.headers[i]);
    /* No "Expect: 100-continue" round trip for large image bodies. */
    c->slist = curl_slist_append(c->slist, "Expect:");
    curl_easy_setopt(e, CURLOPT_URL, c->req.url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->slist);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->req.body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->req.body_len);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
    curl_multi_add_handle(h->multi, e);
    c->aprev = NULL;
    c->anext = h->active;
    if (h->active)
        h->active->aprev = c;
    h->active = c;
    atomic_fetch_add(&h->inflight, 1);
}

static void finish(struct ap__http *h, CURL *e, CURLcode res)
{
    struct ap__http_call *c = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&c);
    curl_multi_remove_handle(h->multi, e);
    if (c->aprev)
        c->aprev->anext = c->anext;
    else
        h->active = c->anext;
    if (c->anext)
        c->anext->aprev = c->aprev;
    atomic_fetch_sub(&h->inflight, 1);
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    ap_status rc = AP_OK;
    const char *why = "";
    if (c->aborted_too_large) {
        rc = AP_ETOOLARGE;
        why = "upstream response over the size limit";
    } else if (res == CURLE_OPERATION_TIMEDOUT) {
        rc = AP_ETIMEOUT;
        why = curl_easy_strerror(res);
    } else if (res != CURLE_OK) {
        rc = AP_ENETWORK;
        why = curl_easy_strerror(res);
    }
    c->on_done(c->ctx, rc, status, c->buf, c->len, why);
    call_free(c);
}

static void *loop(void *arg)
{
    struct ap__http *h = arg;
    for (;;) {
        pthread_mutex_lock(&h->mu);
        struct ap__http_call *q = h->queue;
        h->queue = NULL;
        bool stopping = h->stopping;
        pthread_mutex_unlock(&h->mu);
        double now = ap__now_ms();
        while (q) {
            struct ap__http_call *next = q->next;
            if (q->due_ms > now && !stopping) {
                q->next = h->delayed;
                h->delayed = q;
            } else {
                start_call(h, q);
            }
            q = next;
        }
        /* Start the delayed calls that are due; note when the next one is. */
        double next_due = now + 1000;
        for (struct ap__http_call **pp = &h->delayed; *pp;) {
            struct ap__http_call *d = *pp;
            if (d->due_ms <= now || stopping) {
                *pp = d->next;
                start_call(h, d);
            } else {
                next_due = AP_MIN(next_due, d->due_ms);
                pp = &d->next;
            }
        }
        int running = 0;
        curl_multi_perform(h->multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(h->multi, &left)) != NULL)
            if (m->msg == CURLMSG_DONE)
                finish(h, m->easy_handle, m->data.result);
        if (stopping) {
            /* Abort what is left: every caller hears back exactly once. */
            while (h->active)
                finish(h, h->active->easy, CURLE_ABORTED_BY_CALLBACK);
            return NULL;
        }
        int wait = (int)AP_MAX(0.0, AP_MIN(1000.0, next_due - ap__now_ms()));
        curl_multi_poll(h->multi, NULL, 0, wait, NULL);
    }
}

struct ap__http *ap__http_new(void)
{
    struct ap__http *h = ap__xcalloc(1, sizeof(*h));
    h->multi = curl_multi_init();
    if (h->multi == NULL)
        abort();
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, 1024L);
    pthread_mutex_init(&h->mu, NULL);
    atomic_init(&h->inflight, 0);
    if (pthread_create(&h->thread, NULL, loop, h) != 0)
        abort();
    return h;
}

int ap__http_submit_after(struct ap__http *h, struct ap__http_call *c, long delay_ms)
{
    c->due_ms = ap__now_ms() + (double)(delay_ms > 0 ? delay_ms : 0);
    return ap__http_submit(h, c);
}

int ap__http_submit(struct ap__http *h, struct ap__http_call *c)
{
    c->next = NULL;
    c->max_body = c->max_body ? c->max_body : (64u << 20);
    pthread_mutex_lock(&h->mu);
    if (h->stopping) {
        pthread_mutex_unlock(&h->mu);
        c->on_done(c->ctx, AP_ENETWORK, 0, NULL, 0, "gateway is shutting down");
        call_free(c);
        return -1;
    }
    /* LIFO is fine: the loop starts everything queued in one pass. */
    c->next = h->queue;
    h->queue = c;
    pthread_mutex_unlock(&h->mu);
    curl_multi_wakeup(h->multi);
    return 0;
}

size_t ap__http_inflight(struct ap__http *h)
{
    return atomic_load(&h->inflight);
}

void ap__http_stop(struct ap__http *h)
{
    if (h == NULL)
        return;
    pthread_mutex_lock(&h->mu);
    bool was = h->stopping;
    h->stopping = true;
    pthread_mutex_unlock(&h->mu);
    if (was)
        return;
    curl_multi_wakeup(h->multi);
    pthread_join(h->thread, NULL);
    /* Calls queued after the loop's last pass (no more can join: submit refuses now). */
    struct ap__http_call *q = h->queue;
    h->queue = NULL;
    while (q) {
        struct ap__http_call *next = q->next;
        q->on_done(q->ctx, AP_ENETWORK, 0, NULL, 0, "gateway is shutting down");
        call_free(q);
        q = next;
    }
}

void ap__http_free(struct ap__http *h)
{
    if (h == NULL)
        return;
    ap__http_stop(h);
    curl_multi_cleanup(h->multi);
    pthread_mutex_destroy(&h->mu);
    free(h);
}
