/*
 * status.h - stable error codes and the per-call error detail.
 *
 * Every fallible aperture function returns an ap_status (AP_OK is 0) and, when the caller passes a
 * non-NULL ap_error, fills it with the code and a one-line message ("what went wrong first,
 * lowercase, no full stop"). Codes are part of the ABI: never renumber, only append.
 *
 * Threading: ap_error is a plain caller-owned struct; no global state is touched.
 */
#ifndef APERTURE_STATUS_H
#define APERTURE_STATUS_H

#include <stdarg.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(AP_BUILDING_LIBRARY)
#define AP_API __attribute__((visibility("default")))
#else
#define AP_API
#endif
#define AP_NODISCARD __attribute__((warn_unused_result))
#define AP_PRINTF(f, a) __attribute__((format(printf, f, a)))

typedef enum ap_status {
    AP_OK = 0,
    AP_EINVAL = 1,       /* bad argument or option */
    AP_ENOMEM = 2,       /* allocation failed */
    AP_EUNSUPPORTED = 3, /* input is not an accepted image format */
    AP_EDECODE = 4,      /* truncated or corrupt image data */
    AP_ETOOLARGE = 5,    /* over a byte or pixel limit */
    AP_ETOOSMALL = 6,    /* under the minimum width/height */
    AP_EENCODE = 7,      /* the encoder failed */
    AP_EIO = 8,          /* reading or writing a file failed */
    AP_EINTERNAL = 9,    /* a bug: an invariant did not hold */
    AP_ENOTFOUND = 10,   /* a named thing (model, target) is unknown */
    AP_EUPSTREAM = 11,   /* the upstream provider answered with an error */
    AP_ETIMEOUT = 12,    /* a deadline passed (upstream call, fetch) */
    AP_EAUTH = 13,       /* missing or wrong credentials */
    AP_ERATELIMIT = 14,  /* over a rate limit */
    AP_EFORBIDDEN = 15,  /* refused by policy (SSRF: private address, host not allowed) */
    AP_ENETWORK = 16,    /* could not connect / connection dropped */
    AP_EBUSY = 17,       /* not now: queued, the answer comes later (limiter.h) */
} ap_status;

#define AP_ERROR_MSG_MAX 256

typedef struct ap_error {
    ap_status code;
    char msg[AP_ERROR_MSG_MAX];
} ap_error;

/* The stable short name of a code: "AP_EDECODE". Never NULL. */
AP_API const char *ap_strerror(ap_status code);

/*
 * Record a failure in err (which may be NULL) and return code, so a failure is one line:
 *     return ap_error_set(err, AP_EDECODE, "jpeg: truncated scan");
 */
AP_API ap_status ap_error_set(ap_error *err, ap_status code, const char *fmt, ...) AP_PRINTF(3, 4);
AP_API ap_status ap_error_setv(ap_error *err, ap_status code, const char *fmt, va_list ap)
    AP_PRINTF(3, 0);

/* Reset err to AP_OK with an empty message. err may be NULL. */
AP_API void ap_error_clear(ap_error *err);

#ifdef __cplusplus
}
#endif
#endif
