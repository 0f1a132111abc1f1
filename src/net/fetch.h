/*
 * fetch.h (internal) - SSRF-safe fetching of image URLs with libcurl.
 *
 * A client may put any URL in a request; the gateway fetches it from inside the deployment, so a
 * careless fetch would let clients read the cloud metadata service, the admin port on loopback or
 * anything else on the private network. ap__fetch() therefore:
 *
 *   - accepts http and https only, and URLs without credentials (no "user@host");
 *   - checks the host against the optional allow-list;
 *   - resolves the host once itself and refuses the URL if ANY address is forbidden (see
 *     ap__addr_check() for the classes), then pins curl to exactly those addresses, so curl never
 *     resolves again (no DNS rebinding between the check and the connect);
 *   - checks the address of every socket curl opens a second time, as it opens it;
 *   - follows at most AP__FETCH_MAX_REDIRECTS redirects itself, re-running all of the above on
 *     each hop;
 *   - stops at max_bytes (Content-Length up front, then counted while downloading) and at one
 *     deadline, timeout_ms, covering resolution, every hop and the transfers.
 *
 * docs/internals/fetch.md explains each choice.
 *
 * Threading: ap__fetch() blocks; call it from a worker thread. It keeps no state between calls
 * and may run on many threads at once. libcurl must be initialised (curl_global_init) before
 * threads start, and SIGPIPE ignored process-wide (curl runs with CURLOPT_NOSIGNAL).
 */
#ifndef AP_NET_FETCH_H
#define AP_NET_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "aperture/status.h"

/* Redirects followed before a fetch is refused with "fetch: too many redirects". */
#define AP__FETCH_MAX_REDIRECTS 5

/* The User-Agent sent with every fetch. */
#define AP__FETCH_USER_AGENT "aperture/0.1"

struct ap__fetch_opts {
    /* Allow 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. For tests; never from user input. */
    bool allow_loopback;
    /*
     * Optional allow-list of host names (borrowed): "images.example.com" matches that host
     * exactly, "*.example.com" any name below example.com (not example.com itself). ASCII case
     * and one trailing dot are ignored. n_allow_hosts == 0 allows every host. The address checks
     * still apply to allowed hosts.
     */
    const char *const *allow_hosts;
    size_t n_allow_hosts;
    /* The whole fetch, resolution and redirects included; > 0. */
    long timeout_ms;
    /* The largest body accepted; > 0. */
    size_t max_bytes;
};

/*
 * Fetch url (http or https) and return its body.
 *
 * On success *body (transfer full, free()) holds *len bytes (never NULL, even when *len is 0) and
 * *content_type (transfer full, free(); may be NULL when the server sent none) the response's
 * Content-Type. content_type itself may be NULL when the caller does not want it. On failure
 * the outputs are untouched and err says why:
 *   AP_EINVAL     bad options, or a url that does not parse
 *   AP_EFORBIDDEN refused by policy: scheme, credentials in the url, host not in the allow-list,
 *                 a forbidden address (the message names the host, the address and its class),
 *                 more than AP__FETCH_MAX_REDIRECTS redirects
 *   AP_ETOOLARGE  the body is (or announces it is) larger than max_bytes
 *   AP_ETIMEOUT   timeout_ms passed
 *   AP_ENETWORK   the host does not resolve, the connection failed, or the answer is not 2xx
 *                 ("fetch: http 404 from \"example.com\"")
 *   AP_ENOMEM     allocation failed
 */
AP_NODISCARD ap_status ap__fetch(const struct ap__fetch_opts *o, const char *url, uint8_t **body,
                                 size_t *len, char **content_type, ap_error *err);

/*
 * AP_OK if a connection to sa is allowed, else AP_EFORBIDDEN with a message naming the address
 * and its class ("fetch: address 10.0.0.1 is a private address"). Refused (IPv4): 0.0.0.0/8,
 * 10/8, 100.64/10, 127/8 (unless allow_loopback), 169.254/16, 172.16/12, 192.0.0/24, 192.0.2/24,
 * 192.168/16, 198.18/15, 198.51.100/24, 203.0.113/24, 224/4, 240/4 and 255.255.255.255. IPv6:
 * anything outside global unicast 2000::/3 (::, ::1 unless allow_loopback, fc00::/7, fe80::/10,
 * fec0::/10, ff00::/8, ...), 2001:db8::/32, 3fff::/20, 64:ff9b:1::/48; the forms that embed an
 * IPv4 address (::ffff:0:0/96 mapped, 64:ff9b::/96 NAT64, 2002::/16 6to4, 2001::/32 Teredo)
 * are judged by that address, and ::/96 IPv4-compatible is refused outright. Families other
 * than AF_INET and AF_INET6 are refused. sa is borrowed.
 */
AP_NODISCARD ap_status ap__addr_check(const struct sockaddr *sa, bool allow_loopback,
                                      ap_error *err);

/*
 * true if host (as in the url, IPv6 without brackets) matches the allow-list (rules above in
 * struct ap__fetch_opts), or the list is empty.
 */
bool ap__host_allowed(const char *host, const char *const *allow_hosts, size_t n_allow_hosts);

#endif
