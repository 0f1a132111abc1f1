/*
 * error.c - ap_status names and the ap_error detail writer.
 */
#include <stdio.h>
#include <string.h>

#include "aperture/status.h"

const char *ap_strerror(ap_status code)
{
    switch (code) {
    case AP_OK: return "AP_OK";
    case AP_EINVAL: return "AP_EINVAL";
    case AP_ENOMEM: return "AP_ENOMEM";
    case AP_EUNSUPPORTED: return "AP_EUNSUPPORTED";
    case AP_EDECODE: return "AP_EDECODE";
    case AP_ETOOLARGE: return "AP_ETOOLARGE";
    case AP_ETOOSMALL: return "AP_ETOOSMALL";
    case AP_EENCODE: return "AP_EENCODE";
    case AP_EIO: return "AP_EIO";
    case AP_EINTERNAL: return "AP_EINTERNAL";
    case AP_ENOTFOUND: return "AP_ENOTFOUND";
    case AP_EUPSTREAM: return "AP_EUPSTREAM";
    case AP_ETIMEOUT: return "AP_ETIMEOUT";
    case AP_EAUTH: return "AP_EAUTH";
    case AP_ERATELIMIT: return "AP_ERATELIMIT";
    case AP_EFORBIDDEN: return "AP_EFORBIDDEN";
    case AP_ENETWORK: return "AP_ENETWORK";
    case AP_EBUSY: return "AP_EBUSY";
    }
    return "AP_EUNKNOWN";
}

ap_status ap_error_setv(ap_error *err, ap_status code, const char *fmt, va_list ap)
{
    if (err == NULL)
        return code;
    /* Keep the first failure: a cleanup path must not overwrite the root cause. */
    if (err->code != AP_OK && err->msg[0] != '\0')
        return code;
    err->code = code;
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    return code;
}

ap_status ap_error_set(ap_error *err, ap_status code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ap_error_setv(err, code, fmt, ap);
    va_end(ap);
    return code;
}

void ap_error_clear(ap_error *err)
{
    if (err == NULL)
        return;
    err->code = AP_OK;
    err->msg[0] = '\0';
}
