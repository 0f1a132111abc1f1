/*
 * fetch.c - SSRF-safe image fetching: url policy, address classes, one pinned resolution per hop,
 * manual redirects, byte and time limits. The contract is in fetch.h; the reasons for each
 * choice are in docs/internals/fetch.md.
 *
 * One fetch is a loop of hops. Each hop: check the url (scheme, credentials, host, allow-list),
 * resolve the host once with getaddrinfo (on a helper thread, so the deadline holds), refuse the
 * url if any address is forbidden, hand curl the parsed url (CURLOPT_CURLU: curl connects to the
 * host we checked, never to its own reading of the string) and the checked addresses
 * (CURLOPT_RESOLVE: curl never resolves), and check every socket curl opens again in the
 * open-socket callback. A 3xx with a Location starts the next hop.
 */
#include "net/fetch.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "core/core.h"

/* DNS names are at most 253 characters; longer hosts are refused before resolution. */
#define HOST_MAX 253
/* Addresses of one host pinned in CURLOPT_RESOLVE (all are checked; curl gets the first ones). */
#define PIN_MAX 16
/* "host:port:" then PIN_MAX "[v6addr]," entries. */
#define PIN_ENTRY_MAX (HOST_MAX + 8 + PIN_MAX * (INET6_ADDRSTRLEN + 3))

/* ---- address classes ------------------------------------------------------------------------ */

/*
 * Why an address is refused: what = "a private", "the broadcast", ... (the message appends
 * " address"); form = NULL, or how an IPv6 address embeds the IPv4 address that was judged
 * ("IPv4-mapped", "NAT64", "6to4", "Teredo").
 */
struct verdict {
    const char *what;
    const char *form;
};

/* Format and arguments naming a refused address's class: "a private address in NAT64 form". */
#define VERDICT_FMT "%s address%s%s%s"
#define VERDICT_ARGS(v)                                                                            \
    (v).what, (v).form ? " in " : "", (v).form ? (v).form : "", (v).form ? " form" : ""

struct v4_range {
    uint32_t net;
    unsigned bits;
    const char *what;
};

#define V4(a, b, c, d) (((uint32_t)(a) << 24) | ((uint32_t)(b) << 16) | ((uint32_t)(c) << 8) | (d))

/* First match wins, so 255.255.255.255 is named before 240/4 takes it. */
static const struct v4_range v4_forbidden[] = {
    {V4(255, 255, 255, 255), 32, "the broadcast"},
    {V4(0, 0, 0, 0), 8, "an unspecified (this-host)"},
    {V4(10, 0, 0, 0), 8, "a private"},
    {V4(100, 64, 0, 0), 10, "a shared (carrier-grade NAT)"},
    {V4(127, 0, 0, 0), 8, "a loopback"},
    {V4(169, 254, 0, 0), 16, "a link-local/cloud-metadata"},
    {V4(172, 16, 0, 0), 12, "a private"},
    {V4(192, 0, 0, 0), 24, "an IETF protocol-assignment"},
    {V4(192, 0, 2, 0), 24, "a documentation"},
    {V4(192, 168, 0, 0), 16, "a private"},
    {V4(198, 18, 0, 0), 15, "a benchmarking"},
    {V4(198, 51, 100, 0), 24, "a documentation"},
    {V4(203, 0, 113, 0), 24, "a documentation"},
    {V4(224, 0, 0, 0), 4, "a multicast"},
    {V4(240, 0, 0, 0), 4, "a reserved"},
};

/* The class of IPv4 address a (host order), or NULL when it may be connected to. */
static const char *v4_class(uint32_t a, bool allow_loopback)
{
    for (size_t i = 0; i < sizeof(v4_forbidden) / sizeof(v4_forbidden[0]); i++) {
        const struct v4_range *r = &v4_forbidden[i];
        uint32_t mask = r->bits == 0 ? 0 : UINT32_MAX << (32 - r->bits);
        if ((a & mask) != r->net)
            continue;
        if (allow_loopback && r->net == V4(127, 0, 0, 0))
            return NULL;
        return r->what;
    }
    return NULL;
}

static uint32_t be32_at(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* true if the first `bits` bits of a equal those of net (both 16 bytes). */
static bool v6_in(const uint8_t *a, const uint8_t *net, unsigned bits)
{
    unsigned whole = bits / 8, rest = bits % 8;
    if (memcmp(a, net, whole) != 0)
        return false;
    if (rest == 0)
        return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[whole] & mask) == (net[whole] & mask);
}

/* Judge an IPv4 address embedded in an IPv6 one; true (and *v filled) when refused. */
static bool embedded_v4(uint32_t a, bool allow_loopback, const char *form, struct verdict *v)
{
    const char *what = v4_class(a, allow_loopback);
    if (what == NULL)
        return false;
    v->what = what;
    v->form = form;
    return true;
}

/*
 * true (and *v filled) if the IPv6 address b must not be connected to. Rather than list every
 * special range, anything outside global unicast 2000::/3 is refused, after the forms that
 * carry an IPv4 address have been judged by that address.
 */
static bool v6_forbidden(const uint8_t b[16], bool allow_loopback, struct verdict *v)
{
    static const uint8_t zero[16] = {0};
    static const uint8_t mapped[16] = {[10] = 0xff, [11] = 0xff};
    static const uint8_t nat64[16] = {0x00, 0x64, 0xff, 0x9b};
    static const uint8_t nat64_local[16] = {0x00, 0x64, 0xff, 0x9b, 0x00, 0x01};
    static const uint8_t aws_metadata[16] = {0xfd, 0x00, 0x0e, 0xc2, [14] = 0x02, [15] = 0x54};
    static const uint8_t ula[16] = {0xfc};
    static const uint8_t link_local[16] = {0xfe, 0x80};
    static const uint8_t site_local[16] = {0xfe, 0xc0};
    static const uint8_t multicast[16] = {0xff};
    static const uint8_t global[16] = {0x20};
    static const uint8_t doc[16] = {0x20, 0x01, 0x0d, 0xb8};
    static const uint8_t doc2[16] = {0x3f, 0xff};
    static const uint8_t six_to_four[16] = {0x20, 0x02};
    static const uint8_t teredo[16] = {0x20, 0x01, 0x00, 0x00};

    v->form = NULL;
    if (memcmp(b, zero, 16) == 0) {
        v->what = "an unspecified";
        return true;
    }
    if (memcmp(b, zero, 15) == 0 && b[15] == 1) {
        v->what = "a loopback";
        return !allow_loopback;
    }
    /* ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket, loopback included. */
    if (v6_in(b, mapped, 96))
        return embedded_v4(be32_at(b + 12), allow_loopback, "IPv4-mapped", v);
    if (v6_in(b, zero, 96)) {
        v->what = "an IPv4-compatible (deprecated)";
        return true;
    }
    /* The embedded address is reached through a translator or relay: never "our" loopback. */
    if (v6_in(b, nat64, 96))
        return embedded_v4(be32_at(b + 12), false, "NAT64", v);
    if (v6_in(b, nat64_local, 48)) {
        v->what = "a local-use NAT64";
        return true;
    }
    if (memcmp(b, aws_metadata, 16) == 0) {
        v->what = "a cloud-metadata";
        return true;
    }
    if (v6_in(b, ula, 7)) {
        v->what = "a unique-local (private)";
        return true;
    }
    if (v6_in(b, link_local, 10)) {
        v->what = "a link-local";
        return true;
    }
    if (v6_in(b, site_local, 10)) {
        v->what = "a site-local";
        return true;
    }
    if (v6_in(b, multicast, 8)) {
        v->what = "a multicast";
        return true;
    }
    if (!v6_in(b, global, 3)) {
        v->what = "a reserved (not global unicast)";
        return true;
    }
    if (v6_in(b, doc, 32) || v6_in(b, doc2, 20)) {
        v->what = "a documentation";
        return true;
    }
    if (v6_in(b, six_to_four, 16))
        return embedded_v4(be32_at(b + 2), false, "6to4", v);
    if (v6_in(b, teredo, 32)) /* the client address is stored inverted in the last 32 bits */
        return embedded_v4(~be32_at(b + 12), false, "Teredo", v);
    return false;
}

/* true (and *v filled) if sa must not be connected to. */
static bool addr_forbidden(const struct sockaddr *sa, bool allow_loopback, struct verdict *v)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        v->form = NULL;
        v->what = v4_class(ntohl(in->sin_addr.s_addr), allow_loopback);
        return v->what != NULL;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        return v6_forbidden(in6->sin6_addr.s6_addr, allow_loopback, v);
    }
    v->what = "a non-IP";
    v->form = NULL;
    return true;
}

/* The numeric form of sa in buf (INET6_ADDRSTRLEN bytes); "?" for other families. */
static const char *addr_str(const struct sockaddr *sa, char *buf)
{
    const void *a = NULL;
    if (sa->sa_family == AF_INET)
        a = &((const struct sockaddr_in *)sa)->sin_addr;
    else if (sa->sa_family == AF_INET6)
        a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    if (a == NULL || inet_ntop(sa->sa_family, a, buf, INET6_ADDRSTRLEN) == NULL)
        snprintf(buf, INET6_ADDRSTRLEN, "?");
    return buf;
}

ap_status ap__addr_check(const struct sockaddr *sa, bool allow_loopback, ap_error *err)
{
    if (AP_NEVER(sa == NULL))
        return ap_error_set(err, AP_EINVAL, "fetch: no address");
    struct verdict v;
    if (!addr_forbidden(sa, allow_loopback, &v))
        return AP_OK;
    char buf[INET6_ADDRSTRLEN];
    return ap_error_set(err, AP_EFORBIDDEN, "fetch: address %s is " VERDICT_FMT, addr_str(sa, buf),
                        VERDICT_ARGS(v));
}

/* ---- host allow-list ------------------------------------------------------------------------ */

static bool ascii_eq_n(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
        if (x >= 'A' && x <= 'Z')
            x = (unsigned char)(x - 'A' + 'a');
        if (y >= 'A' && y <= 'Z')
            y = (unsigned char)(y - 'A' + 'a');
        if (x != y)
            return false;
    }
    return true;
}

/* strlen without one trailing dot: "example.com." names the same host as "example.com". */
static size_t name_len(const char *s)
{
    size_t n = strlen(s);
    return n > 0 && s[n - 1] == '.' ? n - 1 : n;
}

bool ap__host_allowed(const char *host, const char *const *allow_hosts, size_t n_allow_hosts)
{
    if (n_allow_hosts == 0)
        return true;
    if (AP_NEVER(host == NULL || allow_hosts == NULL))
        return false;
    size_t hl = name_len(host);
    if (hl == 0)
        return false;
    for (size_t i = 0; i < n_allow_hosts; i++) {
        const char *e = allow_hosts[i];
        if (e == NULL)
            continue;
        size_t el = name_len(e);
        if (el >= 3 && e[0] == '*' && e[1] == '.') {
            /* "*.example.com": a proper suffix ".example.com", so never example.com itself */
            const char *suffix = e + 1;
            size_t sl = el - 1;
            if (hl > sl && ascii_eq_n(host + hl - sl, suffix, sl))
                return true;
        } else if (el == hl && ascii_eq_n(host, e, hl)) {
            return true;
        }
    }
    return false;
}

/* ---- resolution with a deadline ------------------------------------------------------------- */

/*
 * getaddrinfo() cannot be cancelled and its own timeouts (resolv.conf) are long, so it runs on a
 * detached helper thread and the caller waits only until the deadline. The job is shared: each
 * side drops its reference, the last one frees it, so a resolver that finishes after the caller
 * gave up cleans up after itself.
 */
struct resolve_job {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    int refs;
    bool done;
    int rc;
    struct addrinfo *res;
    char host[HOST_MAX + 1];
};

static void resolve_job_free(struct resolve_job *j)
{
    if (j->res != NULL)
        freeaddrinfo(j->res);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

/* Drop one reference; frees the job when it was the last. Called with j->mu held. */
static void resolve_job_unref_locked(struct resolve_job *j)
{
    bool last = --j->refs == 0;
    pthread_mutex_unlock(&j->mu);
    if (last)
        resolve_job_free(j);
}

static void *resolve_main(void *arg)
{
    struct resolve_job *j = arg;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(j->host, NULL, &hints, &res);
    pthread_mutex_lock(&j->mu);
    j->rc = rc;
    j->res = rc == 0 ? res : NULL;
    j->done = true;
    pthread_cond_signal(&j->cv);
    resolve_job_unref_locked(j);
    return NULL;
}

/*
 * Resolve host (TCP, IPv4 and IPv6) before deadline_ms (ap__now_ms() clock). On success *out
 * (transfer full, freeaddrinfo()) is non-empty. Numeric hosts are answered inline; names go
 * through a helper thread.
 */
static ap_status resolve(const char *host, double deadline_ms, struct addrinfo **out, ap_error *err)
{
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST};
    struct addrinfo *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) == 0) {
        *out = res;
        return AP_OK;
    }

    struct resolve_job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return ap_error_set(err, AP_ENOMEM, "fetch: out of memory resolving \"%s\"", host);
    snprintf(j->host, sizeof(j->host), "%s", host);
    j->refs = 2;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);

    pthread_attr_t ta;
    pthread_t tid;
    pthread_attr_init(&ta);
    pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
    int prc = pthread_create(&tid, &ta, resolve_main, j);
    pthread_attr_destroy(&ta);
    if (prc != 0) {
        resolve_job_free(j);
        return ap_error_set(err, AP_ENOMEM, "fetch: cannot start a resolver for \"%s\": %s", host,
                            strerror(prc));
    }

    /* ap__now_ms() reads CLOCK_MONOTONIC too, so the deadline converts directly. */
    struct timespec until;
    until.tv_sec = (time_t)(deadline_ms / 1e3);
    until.tv_nsec = (long)((deadline_ms - (double)until.tv_sec * 1e3) * 1e6);
    if (until.tv_nsec < 0)
        until.tv_nsec = 0;
    if (until.tv_nsec > 999999999L)
        until.tv_nsec = 999999999L;

    pthread_mutex_lock(&j->mu);
    while (!j->done) {
        if (pthread_cond_timedwait(&j->cv, &j->mu, &until) == ETIMEDOUT)
            break;
    }
    bool done = j->done;
    int rc = j->rc;
    res = j->res;
    j->res = NULL; /* ours now, or NULL */
    resolve_job_unref_locked(j);

    if (!done)
        return ap_error_set(err, AP_ETIMEOUT, "fetch: resolving \"%s\" timed out", host);
    if (rc == EAI_MEMORY)
        return ap_error_set(err, AP_ENOMEM, "fetch: out of memory resolving \"%s\"", host);
    if (rc != 0)
        return ap_error_set(err, AP_ENETWORK, "fetch: \"%s\" does not resolve: %s", host,
                            gai_strerror(rc));
    if (res == NULL)
        return ap_error_set(err, AP_ENETWORK, "fetch: \"%s\" has no addresses", host);
    *out = res;
    return AP_OK;
}

/* ---- one fetch ------------------------------------------------------------------------------ */

struct fetch {
    const struct ap__fetch_opts *o;
    double deadline_ms;
    CURL *curl; /* the current hop's handle */
    char host[HOST_MAX + 1];
    /* The body of the current hop (a capped buffer: never more than o->max_bytes). */
    uint8_t *buf;
    size_t len, cap;
    bool too_large, oom;
    /* Set by the open-socket callback when it refused an address. */
    bool refused;
    struct verdict refused_why;
    char refused_addr[INET6_ADDRSTRLEN];
};

/*
 * The second check: curl calls this for every socket it opens (each address it tries), with the
 * address it is about to connect to. With CURLOPT_RESOLVE these are addresses already checked,
 * so a refusal here means the pinning failed; it is enforced all the same.
 */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    struct fetch *f = clientp;
    struct verdict v = {"an unexpected (non-connect)", NULL};
    if (purpose != CURLSOCKTYPE_IPCXN || addr_forbidden(&a->addr, f->o->allow_loopback, &v)) {
        if (!f->refused) {
            f->refused = true;
            f->refused_why = v;
            addr_str(&a->addr, f->refused_addr);
        }
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* The write callback: append to the capped buffer; returning short aborts the transfer. */
static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    struct fetch *f = userp;
    size_t n = size * nmemb; /* size is always 1 for body data */
    if (n > f->o->max_bytes - f->len) {
        f->too_large = true;
        return 0;
    }
    if (f->len + n > f->cap) {
        /* Size for the announced length when there is one, else double (capped). */
        curl_off_t announced = -1;
        size_t want = f->cap < 16384 ? 16384 : f->cap * 2;
        if (curl_easy_getinfo(f->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &announced) ==
                CURLE_OK &&
            announced > 0 && (uint64_t)announced <= f->o->max_bytes)
            want = AP_MAX(want, (size_t)announced);
        want = AP_MIN(AP_MAX(want, f->len + n), f->o->max_bytes);
        uint8_t *p = realloc(f->buf, want);
        if (p == NULL) {
            f->oom = true;
            return 0;
        }
        f->buf = p;
        f->cap = want;
    }
    memcpy(f->buf + f->len, data, n);
    f->len += n;
    return n;
}

/* The length of url's scheme ("http" in "http://..."), 0 when it does not start with one. */
static size_t scheme_len(const char *url)
{
    size_t i = 0;
    if (!((url[0] >= 'a' && url[0] <= 'z') || (url[0] >= 'A' && url[0] <= 'Z')))
        return 0;
    for (i = 1; url[i] != '\0' && url[i] != ':'; i++) {
        char c = url[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '+' || c == '-' || c == '.';
        if (!ok)
            return 0;
    }
    return url[i] == ':' ? i : 0;
}

static bool is_http_scheme(const char *s, size_t n)
{
    return (n == 4 && ascii_eq_n(s, "http", 4)) || (n == 5 && ascii_eq_n(s, "https", 5));
}

/*
 * Parse and police url: http(s) only (as written and as parsed), no credentials, no IPv6 zone id,
 * a host of at most HOST_MAX bytes that the allow-list accepts. On AP_OK *out (transfer full,
 * curl_url_cleanup()) is the parsed url, f->host its host (IPv6 without brackets, IDN as
 * punycode), *port its port and *ip6_literal whether the host is a bracketed IPv6 literal.
 */
static ap_status check_url(struct fetch *f, const char *url, CURLU **out, long *port,
                           bool *ip6_literal, ap_error *err)
{
    ap_status st = AP_OK;
    CURLU *u = NULL;
    char *part = NULL;

    /* The scheme as written, before any parser guesses: refuses file:, data:, gopher:, ... */
    size_t sl = scheme_len(url);
    if (sl == 0) {
        st = ap_error_set(err, AP_EINVAL, "fetch: url has no scheme");
        goto out;
    }
    if (!is_http_scheme(url, sl)) {
        st = ap_error_set(err, AP_EFORBIDDEN,
                          "fetch: scheme \"%.*s\" is not allowed (http and https only)",
                          (int)AP_MIN(sl, 32), url);
        goto out;
    }

    u = curl_url();
    if (u == NULL) {
        st = ap_error_set(err, AP_ENOMEM, "fetch: out of memory");
        goto out;
    }
    CURLUcode uc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (uc != CURLUE_OK) {
        st = ap_error_set(err, AP_EINVAL, "fetch: bad url: %s", curl_url_strerror(uc));
        goto out;
    }
    /* And as curl parsed it, which is what it will act on. */
    if (curl_url_get(u, CURLUPART_SCHEME, &part, 0) != CURLUE_OK ||
        !is_http_scheme(part, strlen(part))) {
        st = ap_error_set(err, AP_EFORBIDDEN, "fetch: scheme is not allowed (http and https only)");
        goto out;
    }
    curl_free(part);
    part = NULL;

    /* "http://example.com@10.0.0.1/" goes to 10.0.0.1; no image url needs credentials. */
    if (curl_url_get(u, CURLUPART_USER, &part, 0) == CURLUE_OK ||
        curl_url_get(u, CURLUPART_PASSWORD, &part, 0) == CURLUE_OK) {
        st = ap_error_set(err, AP_EFORBIDDEN, "fetch: credentials in the url are not allowed");
        goto out;
    }
    if (curl_url_get(u, CURLUPART_ZONEID, &part, 0) == CURLUE_OK) {
        st = ap_error_set(err, AP_EFORBIDDEN, "fetch: ipv6 zone ids are not allowed");
        goto out;
    }

    if (curl_url_get(u, CURLUPART_HOST, &part, CURLU_PUNYCODE) != CURLUE_OK) {
        st = ap_error_set(err, AP_EINVAL, "fetch: url has no usable host");
        goto out;
    }
    /* IPv6 literals come bracketed; getaddrinfo and the allow-list want them bare. */
    const char *h = part;
    size_t hl = strlen(h);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl > HOST_MAX) {
        st = ap_error_set(err, AP_EINVAL, "fetch: url host is empty or longer than %d bytes",
                          HOST_MAX);
        goto out;
    }
    memcpy(f->host, h, hl);
    f->host[hl] = '\0';
    *ip6_literal = h != part;
    curl_free(part);
    part = NULL;

    if (curl_url_get(u, CURLUPART_PORT, &part, CURLU_DEFAULT_PORT) != CURLUE_OK) {
        st = ap_error_set(err, AP_EINVAL, "fetch: url \"%s\" has no usable port", f->host);
        goto out;
    }
    *port = strtol(part, NULL, 10);

    if (!ap__host_allowed(f->host, f->o->allow_hosts, f->o->n_allow_hosts)) {
        st = ap_error_set(err, AP_EFORBIDDEN, "fetch: host \"%s\" is not in the allow-list",
                          f->host);
        goto out;
    }
    *out = u;
    u = NULL;

out:
    curl_free(part);
    curl_url_cleanup(u);
    return st;
}

/*
 * Resolve f->host once and check every address: curl may try any of them, so one forbidden
 * address refuses the url. On AP_OK *out (transfer full, curl_slist_free_all(); NULL for IPv6
 * literals) is the CURLOPT_RESOLVE entry "host:port:addr,[addr6],..." that pins curl to them.
 */
static ap_status pin_host(struct fetch *f, long port, bool ip6_literal, struct curl_slist **out,
                          ap_error *err)
{
    struct addrinfo *addrs = NULL;
    ap_status st = resolve(f->host, f->deadline_ms, &addrs, err);
    if (st != AP_OK)
        return st;

    char pin[PIN_ENTRY_MAX];
    int pn = snprintf(pin, sizeof(pin), "%s:%ld:", f->host, port);
    size_t n_pinned = 0;
    for (const struct addrinfo *ai = addrs; ai != NULL; ai = ai->ai_next) {
        struct verdict v;
        char abuf[INET6_ADDRSTRLEN];
        if (addr_forbidden(ai->ai_addr, f->o->allow_loopback, &v)) {
            st = ap_error_set(err, AP_EFORBIDDEN, "fetch: \"%s\" resolves to %s, " VERDICT_FMT,
                              f->host, addr_str(ai->ai_addr, abuf), VERDICT_ARGS(v));
            goto out;
        }
        if (n_pinned == PIN_MAX)
            continue;
        addr_str(ai->ai_addr, abuf);
        bool v6 = ai->ai_family == AF_INET6;
        pn += snprintf(pin + pn, sizeof(pin) - (size_t)pn, "%s%s%s%s", n_pinned ? "," : "",
                       v6 ? "[" : "", abuf, v6 ? "]" : "");
        n_pinned++;
    }
    if (AP_NEVER(pn < 0 || (size_t)pn >= sizeof(pin))) {
        st = ap_error_set(err, AP_EINTERNAL, "fetch: address list of \"%s\" does not fit", f->host);
        goto out;
    }
    /*
     * curl never resolves an IP literal, and an IPv6 literal cannot be written as a
     * CURLOPT_RESOLVE host; names (and IPv4 literals, harmlessly) are pinned.
     */
    *out = NULL;
    if (!ip6_literal) {
        *out = curl_slist_append(NULL, pin);
        if (*out == NULL)
            st = ap_error_set(err, AP_ENOMEM, "fetch: out of memory");
    }

out:
    freeaddrinfo(addrs);
    return st;
}

#define SETOPT(opt, val)                                                                           \
    do {                                                                                           \
        if (curl_easy_setopt(f->curl, (opt), (val)) != CURLE_OK) {                                 \
            st = ap_error_set(err, AP_EINTERNAL, "fetch: libcurl refused option " #opt);           \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)

/*
 * One request to the checked url u, pinned by pins, no redirects followed. On AP_OK either
 * *next (transfer full) is the redirect target, or *next stays NULL, f->buf/f->len hold the 2xx
 * body and *content_type (transfer full) its type or NULL.
 */
static ap_status transfer(struct fetch *f, CURLU *u, struct curl_slist *pins, char **next,
                          char **content_type, ap_error *err)
{
    ap_status st = AP_OK;
    char errbuf[CURL_ERROR_SIZE] = "";

    double remaining_ms = f->deadline_ms - ap__now_ms();
    if (remaining_ms < 1)
        return ap_error_set(err, AP_ETIMEOUT, "fetch: \"%s\" timed out after %ld ms", f->host,
                            f->o->timeout_ms);
    f->curl = curl_easy_init();
    if (f->curl == NULL)
        return ap_error_set(err, AP_ENOMEM, "fetch: out of memory");

    curl_off_t max_size =
        f->o->max_bytes > (size_t)INT64_MAX ? (curl_off_t)INT64_MAX : (curl_off_t)f->o->max_bytes;
    SETOPT(CURLOPT_CURLU, u); /* the url we checked, not curl's own reading of the string */
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(CURLOPT_PROXY, ""); /* never a proxy from http_proxy and friends */
    SETOPT(CURLOPT_USERAGENT, AP__FETCH_USER_AGENT);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_TIMEOUT_MS, (long)remaining_ms);
    SETOPT(CURLOPT_MAXFILESIZE_LARGE, max_size); /* refuses a large Content-Length up front */
    SETOPT(CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(CURLOPT_WRITEDATA, f);
    SETOPT(CURLOPT_OPENSOCKETFUNCTION, open_socket);
    SETOPT(CURLOPT_OPENSOCKETDATA, f);
    SETOPT(CURLOPT_ERRORBUFFER, errbuf);
    if (pins != NULL)
        SETOPT(CURLOPT_RESOLVE, pins);

    CURLcode rc = curl_easy_perform(f->curl);
    if (f->refused) {
        st = ap_error_set(err, AP_EFORBIDDEN, "fetch: \"%s\" connects to %s, " VERDICT_FMT, f->host,
                          f->refused_addr, VERDICT_ARGS(f->refused_why));
        goto out;
    }
    if (f->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
        st = ap_error_set(err, AP_ETOOLARGE, "fetch: body from \"%s\" is larger than %zu bytes",
                          f->host, f->o->max_bytes);
        goto out;
    }
    if (f->oom || rc == CURLE_OUT_OF_MEMORY) {
        st = ap_error_set(err, AP_ENOMEM, "fetch: out of memory reading \"%s\"", f->host);
        goto out;
    }
    if (rc == CURLE_OPERATION_TIMEDOUT) {
        st = ap_error_set(err, AP_ETIMEOUT, "fetch: \"%s\" timed out after %ld ms", f->host,
                          f->o->timeout_ms);
        goto out;
    }
    if (rc != CURLE_OK) {
        st =
            ap_error_set(err, rc == CURLE_UNSUPPORTED_PROTOCOL ? AP_EFORBIDDEN : AP_ENETWORK,
                         "fetch: \"%s\": %s", f->host, errbuf[0] ? errbuf : curl_easy_strerror(rc));
        goto out;
    }

    long code = 0;
    curl_easy_getinfo(f->curl, CURLINFO_RESPONSE_CODE, &code);
    if (code == 301 || code == 302 || code == 303 || code == 307 || code == 308) {
        /* curl resolves a relative Location against u; the next hop checks the result */
        const char *loc = NULL;
        curl_easy_getinfo(f->curl, CURLINFO_REDIRECT_URL, &loc);
        if (loc == NULL) {
            st = ap_error_set(err, AP_ENETWORK,
                              "fetch: http %ld from \"%s\" without a usable location", code,
                              f->host);
            goto out;
        }
        *next = strdup(loc);
        if (*next == NULL)
            st = ap_error_set(err, AP_ENOMEM, "fetch: out of memory");
        goto out;
    }
    if (code < 200 || code > 299) {
        st = ap_error_set(err, AP_ENETWORK, "fetch: http %ld from \"%s\"", code, f->host);
        goto out;
    }
    const char *ct = NULL;
    curl_easy_getinfo(f->curl, CURLINFO_CONTENT_TYPE, &ct);
    if (ct != NULL) {
        *content_type = strdup(ct);
        if (*content_type == NULL)
            st = ap_error_set(err, AP_ENOMEM, "fetch: out of memory");
    }

out:
    curl_easy_cleanup(f->curl);
    f->curl = NULL;
    return st;
}

#undef SETOPT

/*
 * One hop: check the url, pin its host, transfer. Outputs as transfer(); the body of a redirect
 * is discarded (f->len is reset on every hop).
 */
static ap_status fetch_hop(struct fetch *f, const char *url, char **next, char **content_type,
                           ap_error *err)
{
    CURLU *u = NULL;
    struct curl_slist *pins = NULL;
    long port = 0;
    bool ip6_literal = false;

    f->len = 0;
    f->too_large = f->oom = f->refused = false;
    f->host[0] = '\0';

    ap_status st = check_url(f, url, &u, &port, &ip6_literal, err);
    if (st == AP_OK)
        st = pin_host(f, port, ip6_literal, &pins, err);
    if (st == AP_OK)
        st = transfer(f, u, pins, next, content_type, err);
    curl_slist_free_all(pins);
    curl_url_cleanup(u);
    return st;
}

ap_status ap__fetch(const struct ap__fetch_opts *o, const char *url, uint8_t **body, size_t *len,
                    char **content_type, ap_error *err)
{
    ap_error_clear(err);
    if (AP_NEVER(o == NULL || url == NULL || body == NULL || len == NULL))
        return ap_error_set(err, AP_EINVAL, "fetch: missing argument");
    if (o->timeout_ms <= 0 || o->max_bytes == 0)
        return ap_error_set(err, AP_EINVAL, "fetch: timeout_ms and max_bytes must be positive");
    if (o->n_allow_hosts > 0 && o->allow_hosts == NULL)
        return ap_error_set(err, AP_EINVAL, "fetch: allow_hosts is NULL");

    ap_status st = AP_OK;
    struct fetch f = {.o = o, .deadline_ms = ap__now_ms() + (double)o->timeout_ms};
    char *cur = NULL, *next = NULL, *ct = NULL;

    int hop = 0;
    for (;; hop++) {
        st = fetch_hop(&f, cur != NULL ? cur : url, &next, &ct, err);
        if (st != AP_OK || next == NULL)
            break;
        if (hop == AP__FETCH_MAX_REDIRECTS) {
            st = ap_error_set(err, AP_EFORBIDDEN,
                              "fetch: too many redirects (more than %d), "
                              "the last from \"%s\"",
                              AP__FETCH_MAX_REDIRECTS, f.host);
            break;
        }
        free(cur);
        cur = next;
        next = NULL;
    }
    if (st != AP_OK) {
        /* A refusal on a later hop is puzzling without knowing a redirect led there. */
        if (hop > 0 && err != NULL && err->code == st) {
            size_t n = strlen(err->msg);
            snprintf(err->msg + n, sizeof(err->msg) - n, " (after %d redirect%s)", hop,
                     hop == 1 ? "" : "s");
        }
        goto out;
    }

    if (f.buf == NULL) { /* an empty body is still a non-NULL pointer */
        f.buf = malloc(1);
        if (f.buf == NULL) {
            st = ap_error_set(err, AP_ENOMEM, "fetch: out of memory");
            goto out;
        }
    }
    *body = f.buf;
    *len = f.len;
    f.buf = NULL;
    if (content_type != NULL) {
        *content_type = ct;
        ct = NULL;
    }

out:
    free(f.buf);
    free(ct);
    free(next);
    free(cur);
    return st;
}
