/*
 * test_fetch.c - SSRF-safe image fetching (src/net/fetch.c).
 *
 * The address classes are checked from a table (every refused class in IPv4 and IPv6, the forms
 * that embed an IPv4 address, and public neighbours of each range). The fetch path runs against
 * a small HTTP server started on 127.0.0.1 in this file; nothing here leaves the machine: refused
 * urls are refused before any connection, and no test resolves a name other than "localhost".
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <curl/curl.h>

#include "net/fetch.h"

/* ---- a tiny HTTP server on 127.0.0.1 --------------------------------------------------------- */

/*
 * One connection at a time, one request per connection ("Connection: close"). Routes:
 *   /ok               200 image/png "hello" with Content-Length
 *   /empty            200, empty body, no Content-Type
 *   /redir/N          302 to /redir/N-1; /redir/0 is /ok
 *   /to-metadata      302 to http://169.254.169.254/latest/meta-data/
 *   /to-file          302 to file:///etc/passwd
 *   /to-localhost     302 to http://localhost:PORT/ok
 *   /big              200, no Content-Length, streams 8 MiB (until the client hangs up)
 *   /biglen           200 announcing Content-Length: 100000000, then nothing
 *   /slow             waits up to 5 s (or until the client hangs up), then /ok
 *   anything else     404
 */
static int srv_fd = -1;
static int srv_port;
static pthread_t srv_thread;

static void send_all(int c, const void *p, size_t n)
{
    const char *s = p;
    while (n > 0) {
        ssize_t k = send(c, s, n, MSG_NOSIGNAL);
        if (k <= 0)
            return;
        s += k;
        n -= (size_t)k;
    }
}

static void send_str(int c, const char *s)
{
    send_all(c, s, strlen(s));
}

static void reply_ok(int c)
{
    send_str(c, "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 5\r\n"
                "Connection: close\r\n\r\nhello");
}

static void reply_redirect(int c, const char *location)
{
    char head[512];
    snprintf(head, sizeof(head),
             "HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
             location);
    send_str(c, head);
}

static void handle(int c)
{
    char req[4096];
    size_t n = 0;
    while (n < sizeof(req) - 1) {
        ssize_t k = recv(c, req + n, sizeof(req) - 1 - n, 0);
        if (k <= 0)
            return;
        n += (size_t)k;
        req[n] = '\0';
        if (strstr(req, "\r\n\r\n") != NULL)
            break;
    }
    char path[256] = "";
    if (sscanf(req, "GET %255s HTTP/1.1", path) != 1)
        return;

    char loc[256];
    int hops = 0;
    if (strcmp(path, "/ok") == 0) {
        reply_ok(c);
    } else if (strcmp(path, "/empty") == 0) {
        send_str(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    } else if (sscanf(path, "/redir/%d", &hops) == 1) {
        if (hops <= 0) {
            reply_ok(c);
        } else {
            snprintf(loc, sizeof(loc), "/redir/%d", hops - 1);
            reply_redirect(c, loc);
        }
    } else if (strcmp(path, "/to-metadata") == 0) {
        reply_redirect(c, "http://169.254.169.254/latest/meta-data/");
    } else if (strcmp(path, "/to-file") == 0) {
        reply_redirect(c, "file:///etc/passwd");
    } else if (strcmp(path, "/to-localhost") == 0) {
        snprintf(loc, sizeof(loc), "http://localhost:%d/ok", srv_port);
        reply_redirect(c, loc);
    } else if (strcmp(path, "/big") == 0) {
        send_str(c, "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nConnection: close\r\n\r\n");
        static char chunk[65536];
        memset(chunk, 'x', sizeof(chunk));
        for (int i = 0; i < 128; i++) {
            ssize_t k = send(c, chunk, sizeof(chunk), MSG_NOSIGNAL);
            if (k <= 0)
                break;
        }
    } else if (strcmp(path, "/biglen") == 0) {
        send_str(c, "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000000\r\n"
                    "Connection: close\r\n\r\n");
    } else if (strcmp(path, "/slow") == 0) {
        struct pollfd p = {.fd = c, .events = POLLIN};
        if (poll(&p, 1, 5000) == 0) /* readable means the client gave up */
            reply_ok(c);
    } else {
        send_str(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    }
}

static void *server_main(void *arg)
{
    (void)arg;
    for (;;) {
        int c = accept(srv_fd, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return NULL; /* shutdown() by the teardown */
        }
        struct timeval tv = {.tv_sec = 5};
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        handle(c);
        shutdown(c, SHUT_WR);
        close(c);
    }
}

static int server_start(void **state)
{
    (void)state;
    srv_fd = socket(AF_INET, SOCK_STREAM, 0);
    if (srv_fd < 0)
        return -1;
    int one = 1;
    setsockopt(srv_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof(a);
    if (bind(srv_fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(srv_fd, 16) != 0 ||
        getsockname(srv_fd, (struct sockaddr *)&a, &alen) != 0)
        return -1;
    srv_port = ntohs(a.sin_port);
    return pthread_create(&srv_thread, NULL, server_main, NULL) == 0 ? 0 : -1;
}

static int server_stop(void **state)
{
    (void)state;
    shutdown(srv_fd, SHUT_RDWR);
    pthread_join(srv_thread, NULL);
    close(srv_fd);
    return 0;
}

/* ---- helpers -------------------------------------------------------------------------------- */

static const char *url_of(char *buf, size_t n, const char *path)
{
    snprintf(buf, n, "http://127.0.0.1:%d%s", srv_port, path);
    return buf;
}

/* Options for the local server: loopback allowed, generous limits. */
static struct ap__fetch_opts local_opts(void)
{
    struct ap__fetch_opts o = {.allow_loopback = true, .timeout_ms = 5000, .max_bytes = 1 << 20};
    return o;
}

/* Fetch and expect a failure with code want whose message contains needle (if not NULL). */
static void expect_fail(const struct ap__fetch_opts *o, const char *url, ap_status want,
                        const char *needle)
{
    uint8_t *body = (uint8_t *)"untouched";
    size_t len = 1234;
    char *ct = (char *)"untouched";
    ap_error err = {0};
    ap_status st = ap__fetch(o, url, &body, &len, &ct, &err);
    if (st != want)
        fail_msg("%s: got %s \"%s\", want %s", url, ap_strerror(st), err.msg, ap_strerror(want));
    assert_int_equal(err.code, want);
    if (needle != NULL && strstr(err.msg, needle) == NULL)
        fail_msg("%s: message \"%s\" lacks \"%s\"", url, err.msg, needle);
    /* outputs are set only on success */
    assert_string_equal((const char *)body, "untouched");
    assert_int_equal(len, 1234);
    assert_string_equal(ct, "untouched");
}

/* Fetch and expect success; returns the body (caller frees) and checks nothing else. */
static uint8_t *expect_ok(const struct ap__fetch_opts *o, const char *url, size_t *len, char **ct)
{
    uint8_t *body = NULL;
    ap_error err = {0};
    ap_status st = ap__fetch(o, url, &body, len, ct, &err);
    if (st != AP_OK)
        fail_msg("%s: %s \"%s\"", url, ap_strerror(st), err.msg);
    assert_non_null(body);
    return body;
}

/* ---- address classes ------------------------------------------------------------------------ */

struct addr_case {
    const char *addr;
    bool allow_loopback;
    ap_status want;
    const char *needle; /* in the message, when refused; NULL = any */
};

static const struct addr_case addr_cases[] = {
    /* IPv4: every refused class */
    {"0.0.0.0", false, AP_EFORBIDDEN, "unspecified"},
    {"0.1.2.3", false, AP_EFORBIDDEN, "unspecified"},
    {"10.0.0.1", false, AP_EFORBIDDEN, "a private address"},
    {"10.255.255.255", false, AP_EFORBIDDEN, "private"},
    {"100.64.0.1", false, AP_EFORBIDDEN, "carrier-grade NAT"},
    {"100.100.100.200", false, AP_EFORBIDDEN, "carrier-grade NAT"}, /* Alibaba metadata */
    {"100.127.255.255", false, AP_EFORBIDDEN, "carrier-grade NAT"},
    {"127.0.0.1", false, AP_EFORBIDDEN, "a loopback address"},
    {"127.255.255.254", false, AP_EFORBIDDEN, "loopback"},
    {"169.254.169.254", false, AP_EFORBIDDEN, "a link-local/cloud-metadata address"},
    {"169.254.0.1", false, AP_EFORBIDDEN, "link-local"},
    {"172.16.0.1", false, AP_EFORBIDDEN, "private"},
    {"172.31.255.255", false, AP_EFORBIDDEN, "private"},
    {"192.0.0.8", false, AP_EFORBIDDEN, "protocol-assignment"},
    {"192.0.2.1", false, AP_EFORBIDDEN, "documentation"},
    {"192.168.1.1", false, AP_EFORBIDDEN, "private"},
    {"198.18.0.1", false, AP_EFORBIDDEN, "benchmarking"},
    {"198.19.255.255", false, AP_EFORBIDDEN, "benchmarking"},
    {"198.51.100.7", false, AP_EFORBIDDEN, "documentation"},
    {"203.0.113.9", false, AP_EFORBIDDEN, "documentation"},
    {"224.0.0.1", false, AP_EFORBIDDEN, "multicast"},
    {"239.255.255.250", false, AP_EFORBIDDEN, "multicast"},
    {"240.0.0.1", false, AP_EFORBIDDEN, "reserved"},
    {"255.255.255.254", false, AP_EFORBIDDEN, "reserved"},
    {"255.255.255.255", false, AP_EFORBIDDEN, "broadcast"},
    /* IPv4: public, including the neighbours of each range */
    {"93.184.216.34", false, AP_OK, NULL},
    {"8.8.8.8", false, AP_OK, NULL},
    {"1.0.0.1", false, AP_OK, NULL},
    {"9.255.255.255", false, AP_OK, NULL},
    {"11.0.0.0", false, AP_OK, NULL},
    {"100.63.255.255", false, AP_OK, NULL},
    {"100.128.0.0", false, AP_OK, NULL},
    {"126.255.255.255", false, AP_OK, NULL},
    {"128.0.0.0", false, AP_OK, NULL},
    {"169.253.255.255", false, AP_OK, NULL},
    {"169.255.0.0", false, AP_OK, NULL},
    {"172.15.255.255", false, AP_OK, NULL},
    {"172.32.0.0", false, AP_OK, NULL},
    {"192.0.1.255", false, AP_OK, NULL},
    {"192.0.3.0", false, AP_OK, NULL},
    {"192.167.255.255", false, AP_OK, NULL},
    {"192.169.0.0", false, AP_OK, NULL},
    {"198.17.255.255", false, AP_OK, NULL},
    {"198.20.0.0", false, AP_OK, NULL},
    {"198.51.101.0", false, AP_OK, NULL},
    {"203.0.114.0", false, AP_OK, NULL},
    {"223.255.255.255", false, AP_OK, NULL},
    /* IPv6: refused */
    {"::", false, AP_EFORBIDDEN, "unspecified"},
    {"::1", false, AP_EFORBIDDEN, "loopback"},
    {"::ffff:127.0.0.1", false, AP_EFORBIDDEN, "loopback address in IPv4-mapped form"},
    {"::ffff:169.254.169.254", false, AP_EFORBIDDEN, "link-local/cloud-metadata address in IPv4"},
    {"::ffff:10.1.2.3", false, AP_EFORBIDDEN, "private address in IPv4-mapped form"},
    {"::ffff:0.0.0.0", false, AP_EFORBIDDEN, "unspecified"},
    {"::127.0.0.1", false, AP_EFORBIDDEN, "IPv4-compatible"},
    {"::8.8.8.8", false, AP_EFORBIDDEN, "IPv4-compatible"},
    {"64:ff9b::a9fe:a9fe", false, AP_EFORBIDDEN, "link-local/cloud-metadata address in NAT64"},
    {"64:ff9b::10.0.0.1", false, AP_EFORBIDDEN, "private address in NAT64 form"},
    {"64:ff9b:1::1", false, AP_EFORBIDDEN, "local-use NAT64"},
    {"fc00::1", false, AP_EFORBIDDEN, "unique-local"},
    {"fdff:ffff::1", false, AP_EFORBIDDEN, "unique-local"},
    {"fd00:ec2::254", false, AP_EFORBIDDEN, "cloud-metadata"},
    {"fe80::1", false, AP_EFORBIDDEN, "link-local"},
    {"febf:ffff::1", false, AP_EFORBIDDEN, "link-local"},
    {"fec0::1", false, AP_EFORBIDDEN, "site-local"},
    {"ff02::1", false, AP_EFORBIDDEN, "multicast"},
    {"ff0e::101", false, AP_EFORBIDDEN, "multicast"},
    {"2001:db8::1", false, AP_EFORBIDDEN, "documentation"},
    {"2001:db8:ffff::1", false, AP_EFORBIDDEN, "documentation"},
    {"3fff::1", false, AP_EFORBIDDEN, "documentation"},
    {"100::1", false, AP_EFORBIDDEN, "not global unicast"},
    {"4000::1", false, AP_EFORBIDDEN, "not global unicast"},
    {"2002:7f00:1::1", false, AP_EFORBIDDEN, "loopback address in 6to4 form"},
    {"2002:a9fe:a9fe::", false, AP_EFORBIDDEN, "6to4"},
    /* Teredo: client 127.0.0.1 stored inverted (80ff:fffe) */
    {"2001:0:4136:e378:8000:63bf:80ff:fffe", false, AP_EFORBIDDEN, "Teredo"},
    /* IPv6: public */
    {"2606:2800::1", false, AP_OK, NULL},
    {"2606:2800:220:1:248:1893:25c8:1946", false, AP_OK, NULL},
    {"2001:4860:4860::8888", false, AP_OK, NULL},
    {"2001:db9::1", false, AP_OK, NULL},
    {"::ffff:93.184.216.34", false, AP_OK, NULL},
    {"64:ff9b::5db8:d822", false, AP_OK, NULL}, /* NAT64 of 93.184.216.34 */
    {"2002:5db8:d822::1", false, AP_OK, NULL},  /* 6to4 of 93.184.216.34 */
    /* allow_loopback opens loopback and nothing else */
    {"127.0.0.1", true, AP_OK, NULL},
    {"127.1.2.3", true, AP_OK, NULL},
    {"::1", true, AP_OK, NULL},
    {"::ffff:127.0.0.1", true, AP_OK, NULL},
    {"0.0.0.0", true, AP_EFORBIDDEN, "unspecified"},
    {"::", true, AP_EFORBIDDEN, "unspecified"},
    {"10.0.0.1", true, AP_EFORBIDDEN, "private"},
    {"169.254.169.254", true, AP_EFORBIDDEN, "cloud-metadata"},
    {"::127.0.0.1", true, AP_EFORBIDDEN, "IPv4-compatible"},
    {"64:ff9b::127.0.0.1", true, AP_EFORBIDDEN, "loopback address in NAT64 form"},
    {"2002:7f00:1::1", true, AP_EFORBIDDEN, "6to4"},
};

static void test_fetch__addr_check_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(addr_cases) / sizeof(addr_cases[0]); i++) {
        const struct addr_case *c = &addr_cases[i];
        struct sockaddr_storage ss;
        memset(&ss, 0, sizeof(ss));
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        if (inet_pton(AF_INET, c->addr, &in->sin_addr) == 1) {
            in->sin_family = AF_INET;
        } else if (inet_pton(AF_INET6, c->addr, &in6->sin6_addr) == 1) {
            in6->sin6_family = AF_INET6;
        } else {
            fail_msg("bad test address %s", c->addr);
        }
        ap_error err = {0};
        ap_status st = ap__addr_check((const struct sockaddr *)&ss, c->allow_loopback, &err);
        if (st != c->want)
            fail_msg("%s (allow_loopback=%d): got %s \"%s\", want %s", c->addr,
                     (int)c->allow_loopback, ap_strerror(st), err.msg, ap_strerror(c->want));
        if (st != AP_OK && c->needle != NULL && strstr(err.msg, c->needle) == NULL)
            fail_msg("%s: message \"%s\" lacks \"%s\"", c->addr, err.msg, c->needle);
    }
}

static void test_fetch__addr_check_message_names_address_and_class(void **state)
{
    (void)state;
    struct sockaddr_in in = {.sin_family = AF_INET};
    inet_pton(AF_INET, "10.0.0.1", &in.sin_addr);
    ap_error err = {0};
    assert_int_equal(ap__addr_check((struct sockaddr *)&in, false, &err), AP_EFORBIDDEN);
    assert_string_equal(err.msg, "fetch: address 10.0.0.1 is a private address");
}

static void test_fetch__addr_check_refuses_other_families(void **state)
{
    (void)state;
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    ap_error err = {0};
    assert_int_equal(ap__addr_check((struct sockaddr *)&un, true, &err), AP_EFORBIDDEN);
    assert_non_null(strstr(err.msg, "non-IP"));
}

/* ---- allow-list ----------------------------------------------------------------------------- */

static void test_fetch__host_allowed_rules(void **state)
{
    (void)state;
    const char *const list[] = {"images.example.com", "*.cdn.example.net", "127.0.0.1",
                                "Upper.Example.ORG."};
    const size_t n = sizeof(list) / sizeof(list[0]);
    assert_true(ap__host_allowed("images.example.com", list, n));
    assert_true(ap__host_allowed("IMAGES.Example.com", list, n));
    assert_true(ap__host_allowed("images.example.com.", list, n));
    assert_true(ap__host_allowed("upper.example.org", list, n));
    assert_true(ap__host_allowed("a.cdn.example.net", list, n));
    assert_true(ap__host_allowed("a.b.cdn.example.net", list, n));
    assert_true(ap__host_allowed("127.0.0.1", list, n));
    assert_false(ap__host_allowed("cdn.example.net", list, n)); /* the wildcard wants a label */
    assert_false(ap__host_allowed("evilcdn.example.net", list, n));
    assert_false(ap__host_allowed("example.com", list, n));
    assert_false(ap__host_allowed("images.example.com.evil.test", list, n));
    assert_false(ap__host_allowed("ximages.example.com", list, n));
    assert_false(ap__host_allowed("127.0.0.2", list, n));
    assert_false(ap__host_allowed("", list, n));
    assert_false(ap__host_allowed(".", list, n));
    /* an empty list allows every host */
    assert_true(ap__host_allowed("anything.test", NULL, 0));
}

/* ---- url policy ----------------------------------------------------------------------------- */

static void test_fetch__refuses_other_schemes(void **state)
{
    (void)state;
    struct ap__fetch_opts o = local_opts();
    expect_fail(&o, "file:///etc/passwd", AP_EFORBIDDEN, "scheme \"file\" is not allowed");
    expect_fail(&o, "ftp://127.0.0.1/x.png", AP_EFORBIDDEN, "scheme \"ftp\"");
    expect_fail(&o, "gopher://127.0.0.1:70/_x", AP_EFORBIDDEN, "scheme \"gopher\"");
    expect_fail(&o, "data:image/png;base64,iVBORw0KGgo=", AP_EFORBIDDEN, "scheme \"data\"");
    expect_fail(&o, "dict://127.0.0.1:11211/stat", AP_EFORBIDDEN, "scheme \"dict\"");
    expect_fail(&o, "httpx://127.0.0.1/", AP_EFORBIDDEN, "scheme \"httpx\"");
    expect_fail(&o, "//127.0.0.1/x.png", AP_EINVAL, "no scheme");
    expect_fail(&o, "127.0.0.1/x.png", AP_EINVAL, "no scheme");
    expect_fail(&o, "", AP_EINVAL, "no scheme");
    expect_fail(&o, "http://", AP_EINVAL, NULL);
}

static void test_fetch__refuses_credentials_in_url(void **state)
{
    (void)state;
    struct ap__fetch_opts o = local_opts();
    char url[256];
    /* Refused even with loopback allowed: the userinfo is the trick, not the address. */
    snprintf(url, sizeof(url), "http://example.com@127.0.0.1:%d/ok", srv_port);
    expect_fail(&o, url, AP_EFORBIDDEN, "credentials");
    snprintf(url, sizeof(url), "http://user:pass@127.0.0.1:%d/ok", srv_port);
    expect_fail(&o, url, AP_EFORBIDDEN, "credentials");
    o.allow_loopback = false;
    expect_fail(&o, "http://example.com@127.0.0.1/", AP_EFORBIDDEN, "credentials");
    expect_fail(&o, "http://example.com:80@169.254.169.254/", AP_EFORBIDDEN, "credentials");
}

static void test_fetch__refuses_forbidden_literal_hosts(void **state)
{
    (void)state;
    struct ap__fetch_opts o = local_opts();
    o.allow_loopback = false;
    expect_fail(&o, "http://169.254.169.254/latest/meta-data/", AP_EFORBIDDEN,
                "fetch: \"169.254.169.254\" resolves to 169.254.169.254, a "
                "link-local/cloud-metadata address");
    expect_fail(&o, "http://10.0.0.1/x.png", AP_EFORBIDDEN, "private");
    expect_fail(&o, "https://192.168.0.1/x.png", AP_EFORBIDDEN, "private");
    expect_fail(&o, "http://[::1]/", AP_EFORBIDDEN, "loopback");
    expect_fail(&o, "http://[::ffff:127.0.0.1]/", AP_EFORBIDDEN, "IPv4-mapped");
    expect_fail(&o, "http://[::ffff:a9fe:a9fe]/", AP_EFORBIDDEN, "cloud-metadata");
    expect_fail(&o, "http://[fd00:ec2::254]/", AP_EFORBIDDEN, "cloud-metadata");
    expect_fail(&o, "http://[fe80::1%25eth0]/", AP_EFORBIDDEN, NULL);
    expect_fail(&o, "http://0.0.0.0/", AP_EFORBIDDEN, "unspecified");
    /* numeric spellings of 127.0.0.1 (decimal, hex, octal, short forms) */
    expect_fail(&o, "http://2130706433/", AP_EFORBIDDEN, "loopback");
    expect_fail(&o, "http://0x7f.1/", AP_EFORBIDDEN, "loopback");
    expect_fail(&o, "http://017700000001/", AP_EFORBIDDEN, "loopback");
    expect_fail(&o, "http://0x7f000001/", AP_EFORBIDDEN, "loopback");
    expect_fail(&o, "http://127.1/", AP_EFORBIDDEN, "loopback");
    expect_fail(&o, "http://0/", AP_EFORBIDDEN, "unspecified");
    /* and of 169.254.169.254 */
    expect_fail(&o, "http://2852039166/", AP_EFORBIDDEN, "cloud-metadata");
    expect_fail(&o, "http://0xA9FEA9FE/", AP_EFORBIDDEN, "cloud-metadata");
}

static void test_fetch__bad_options(void **state)
{
    (void)state;
    char url[256];
    url_of(url, sizeof(url), "/ok");
    struct ap__fetch_opts o = local_opts();
    o.timeout_ms = 0;
    expect_fail(&o, url, AP_EINVAL, "timeout_ms");
    o = local_opts();
    o.max_bytes = 0;
    expect_fail(&o, url, AP_EINVAL, "max_bytes");
    o = local_opts();
    o.n_allow_hosts = 1;
    expect_fail(&o, url, AP_EINVAL, "allow_hosts");
}

/* ---- against the local server --------------------------------------------------------------- */

static void test_fetch__loopback_fetch_when_allowed(void **state)
{
    (void)state;
    struct ap__fetch_opts o = local_opts();
    char url[256];
    size_t len = 0;
    char *ct = NULL;
    uint8_t *body = expect_ok(&o, url_of(url, sizeof(url), "/ok"), &len, &ct);
    assert_int_equal(len, 5);
    assert_memory_equal(body, "hello", 5);
    assert_string_equal(ct, "image/png");
    free(body);
    free(ct);

    /* by name (resolved from /etc/hosts), and with the scheme in capitals */
    snprintf(url, sizeof(url), "http://localhost:%d/ok", srv_port);
    body = expect_ok(&o, url, &len, NULL);
    assert_int_equal(len, 5);
    free(body);
    snprintf(url, sizeof(url), "HTTP://127.0.0.1:%d/ok", srv_port);
    body = expect_ok(&o, url, &len, NULL);
    free(body);
}

static void test_fetch__loopback_refused_by_default(void **state)
{
    (void)state;
    struct ap__fetch_opts o = local_opts();
    o.allow_loopback = false;
    char url[256];
    char want[128];
    snprintf(want, sizeof(want), "fetch: \"127.0.0.1\" resolves to 127.0.0.1, a loopback address");
    expect_fail(&o, url_of(url, sizeof(url), "/ok"), AP_EFORBIDDEN, want);
    snprintf(url, sizeof(url), "http://localhost:%d/ok", srv_port);
    expect_fail(&o, url, AP_EFORBIDDEN, "\"localhost\" resolves to");
    snprintf(url, sizeof(url), "http://2130706433:%d/ok", srv_port);
    expect_fail(&o, url, AP_EFORBIDDEN, "loopback");
}

static void test_fetch__empty_body(void **state)
{
    (void)state;
    struct ap__fetch_opts o = local_opts();
    char url[256];
    size_t len = 99;
    char *ct = (char *)"unset";
    uint8_t *body = expect_ok(&o, url_of(url, sizeof(url), "/empty"), &len, &ct);
    assert_int_equal(len, 0);
    assert_null(ct);
    free(body);
}

static void test_fetch__follows_five_redirects(void **state)
{
    (void)state;
    struct ap__fetch_opts o = local_opts();
    char url[256];
    size_t len = 0;
    uint8_t *body = expect_ok(&o, url_of(url, sizeof(url), "/redir/5"), &len, NULL);
    assert_int_equal(len, 5);
    assert_memory_equal(body, "hello", 5);
    free(body);
}

static void test_fetch__refuses_more_than_five_redirects(void **state)
{
    (void)state;
    struct ap__fetch_opts o = local_opts();
    char url[256];
    expect_fail(&o, url_of(url, sizeof(url), "/redir/6"), AP_EFORBIDDEN,
                "fetch: too many redirects");
    expect_fail(&o, url_of(url, sizeof(url), "/redir/100"), AP_EFORBIDDEN, "too many redirects");
}

static void test_fetch__redirect_to_metadata_refused(void **state)
{
    (void)state;
    struct ap__fetch_opts o = local_opts();
    char url[256];
    expect_fail(&o, url_of(url, sizeof(url), "/to-metadata"), AP_EFORBIDDEN,
                "\"169.254.169.254\" resolves to 169.254.169.254, a link-local/cloud-metadata "
                "address (after 1 redirect)");
}

static void test_fetch__redirect_to_other_scheme_refused(void **state)
{
    (void)state;
    struct ap__fetch_opts o = local_opts();
    char url[256];
    expect_fail(&o, url_of(url, sizeof(url), "/to-file"), AP_EFORBIDDEN, "\"file\"");
}

static void test_fetch__redirect_rechecks_allow_list(void **state)
{
    (void)state;
    /* The first hop is allowed by the list, the second (localhost) is not. */
    const char *const list[] = {"127.0.0.1"};
    struct ap__fetch_opts o = local_opts();
    o.allow_hosts = list;
    o.n_allow_hosts = 1;
    char url[256];
    expect_fail(&o, url_of(url, sizeof(url), "/to-localhost"), AP_EFORBIDDEN,
                "host \"localhost\" is not in the allow-list");
    /* without the list, the same chain is fine */
    o.n_allow_hosts = 0;
    size_t len = 0;
    uint8_t *body = expect_ok(&o, url, &len, NULL);
    assert_int_equal(len, 5);
    free(body);
}

static void test_fetch__allow_list(void **state)
{
    (void)state;
    const char *const other[] = {"images.example.com", "*.example.com"};
    struct ap__fetch_opts o = local_opts();
    o.allow_hosts = other;
    o.n_allow_hosts = 2;
    char url[256];
    expect_fail(&o, url_of(url, sizeof(url), "/ok"), AP_EFORBIDDEN,
                "fetch: host \"127.0.0.1\" is not in the allow-list");

    const char *const mine[] = {"images.example.com", "127.0.0.1"};
    o.allow_hosts = mine;
    size_t len = 0;
    uint8_t *body = expect_ok(&o, url, &len, NULL);
    free(body);

    /* the list never overrides the address checks */
    o.allow_loopback = false;
    expect_fail(&o, url, AP_EFORBIDDEN, "loopback");
}

static void test_fetch__streamed_body_stops_at_max_bytes(void **state)
{
    (void)state;
    struct ap__fetch_opts o = local_opts();
    o.max_bytes = 100000;
    char url[256];
    expect_fail(&o, url_of(url, sizeof(url), "/big"), AP_ETOOLARGE, "larger than 100000 bytes");
}

static void test_fetch__content_length_over_max_refused(void **state)
{
    (void)state;
    struct ap__fetch_opts o = local_opts();
    char url[256];
    expect_fail(&o, url_of(url, sizeof(url), "/biglen"), AP_ETOOLARGE, "larger than");
    /* the limit is inclusive: 5 bytes fit in 5, not in 4 */
    o.max_bytes = 4;
    expect_fail(&o, url_of(url, sizeof(url), "/ok"), AP_ETOOLARGE, "larger than 4 bytes");
    o.max_bytes = 5;
    size_t len = 0;
    uint8_t *body = expect_ok(&o, url, &len, NULL);
    assert_int_equal(len, 5);
    free(body);
}

static void test_fetch__slow_server_times_out(void **state)
{
    (void)state;
    struct ap__fetch_opts o = local_opts();
    o.timeout_ms = 300;
    char url[256];
    expect_fail(&o, url_of(url, sizeof(url), "/slow"), AP_ETIMEOUT, "timed out after 300 ms");
}

static void test_fetch__http_error_status(void **state)
{
    (void)state;
    struct ap__fetch_opts o = local_opts();
    char url[256];
    expect_fail(&o, url_of(url, sizeof(url), "/missing"), AP_ENETWORK,
                "fetch: http 404 from \"127.0.0.1\"");
}

static void test_fetch__connection_refused_is_network_error(void **state)
{
    (void)state;
    /* A port nobody listens on: bind one, note it, close it. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof(a);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &alen), 0);
    close(fd);
    struct ap__fetch_opts o = local_opts();
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/ok", ntohs(a.sin_port));
    expect_fail(&o, url, AP_ENETWORK, "\"127.0.0.1\"");
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fetch__addr_check_table),
        cmocka_unit_test(test_fetch__addr_check_message_names_address_and_class),
        cmocka_unit_test(test_fetch__addr_check_refuses_other_families),
        cmocka_unit_test(test_fetch__host_allowed_rules),
        cmocka_unit_test(test_fetch__refuses_other_schemes),
        cmocka_unit_test(test_fetch__refuses_credentials_in_url),
        cmocka_unit_test(test_fetch__refuses_forbidden_literal_hosts),
        cmocka_unit_test(test_fetch__bad_options),
        cmocka_unit_test(test_fetch__loopback_fetch_when_allowed),
        cmocka_unit_test(test_fetch__loopback_refused_by_default),
        cmocka_unit_test(test_fetch__empty_body),
        cmocka_unit_test(test_fetch__follows_five_redirects),
        cmocka_unit_test(test_fetch__refuses_more_than_five_redirects),
        cmocka_unit_test(test_fetch__redirect_to_metadata_refused),
        cmocka_unit_test(test_fetch__redirect_to_other_scheme_refused),
        cmocka_unit_test(test_fetch__redirect_rechecks_allow_list),
        cmocka_unit_test(test_fetch__allow_list),
        cmocka_unit_test(test_fetch__streamed_body_stops_at_max_bytes),
        cmocka_unit_test(test_fetch__content_length_over_max_refused),
        cmocka_unit_test(test_fetch__slow_server_times_out),
        cmocka_unit_test(test_fetch__http_error_status),
        cmocka_unit_test(test_fetch__connection_refused_is_network_error),
    };
    int rc = cmocka_run_group_tests(tests, server_start, server_stop);
    curl_global_cleanup();
    return rc;
}
