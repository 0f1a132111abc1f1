/*
 * test_prep_bad.c - every bad input in the corpus (bad/) is refused with the right code, or
 * handled as the manifest allows; the ASan build of this binary also proves it leaks nothing.
 *
 * Driven by bad/expected.json. Per outcome:
 *   reject_before_decode  AP_ETOOLARGE (decompression bombs: refused from the header; a file
 *                         whose header no tool can read only needs a clean error)
 *   reject                a clean error: non-images and formats we do not take
 *                         -> AP_EUNSUPPORTED naming what was sniffed; truncated / corrupt /
 *                         empty files -> AP_EDECODE or AP_EUNSUPPORTED
 *   reject_or_graceful, reject_or_clip, reject_or_decode_without_inflating_text
 *                         AP_OK, or AP_EDECODE / AP_EUNSUPPORTED / AP_ETOOLARGE
 *   accept_as_X           AP_OK, sniffed as X whatever the name says, at the declared size
 *   accept_reencoded      AP_OK; a fresh JPEG that is not the input and carries none of the
 *                         payload (HTML, ZIP, PDF, PHP, script), nothing after its EOI
 *   decode_ignore_metadata AP_OK at the declared size
 * Every failure leaves the result zeroed (nothing to release) and fills ap_error with the same
 * code and a message.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "prep_testutil.h"

/* What the refusal message must name, by the manifest's "magic" (alternatives split by '|'). */
static const char *sniffed_names(const char *magic)
{
    static const struct {
        const char *magic, *names;
    } map[] = {
        {"svg/xml", "svg|xml"},   {"gzip", "gzip"},
        {"html", "html"},         {"zip", "zip"},
        {"pdf", "pdf"},           {"elf", "elf"},
        {"text", "text|mvg"},     {"pcx?", "pcx"},
        {"jp2", "jpeg 2000|jp2"}, {"dds", "dds"},
        {"qoi", "qoi"},           {"ico", "ico"},
        {"psd", "psd"},           {"postscript/eps", "postscript|eps"},
        {"empty", "empty"},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(map[i].magic, magic) == 0)
            return map[i].names;
    return NULL;
}

static bool msg_names_one_of(const char *msg, const char *names)
{
    char buf[128];
    pt_fmt(buf, sizeof(buf), "%s", names);
    for (char *save = NULL, *t = strtok_r(buf, "|", &save); t; t = strtok_r(NULL, "|", &save))
        if (strstr(msg, t) != NULL)
            return true;
    return false;
}

static bool clean_error(ap_status st)
{
    return st == AP_EDECODE || st == AP_EUNSUPPORTED || st == AP_ETOOLARGE;
}

/* Payloads hidden in the polyglots, none of which may reach the output. */
static const char *const payloads[] = {"PK\x03\x04", "PK\x05\x06", "<html",  "<HTML", "%PDF",
                                       "<?php",      "<script",    "alert(", "CANARY"};

static void test_prep__bad_inputs_refused_or_handled(void **state)
{
    (void)state;
    struct pt_manifest m;
    pt_manifest_load(&m, "bad", "bad/expected.json");
    int nfail = 0, nbombs = 0, nrejects = 0, naccepts = 0;

    for (size_t i = 0; i < m.n; i++) {
        const struct pt_row *row = &m.rows[i];
        const char *name = pt_col(row, 0), *outcome = pt_col(row, 1), *magic = pt_col(row, 2),
                   *category = pt_col(row, 3);
        long dw = pt_icol(row, 4), dh = pt_icol(row, 5);
        char rel[512];
        pt_fmt(rel, sizeof(rel), "bad/%s", name);
        ap_prep_opts o;
        ap_prep_result r;
        ap_error err;
        uint8_t *in = NULL;
        size_t in_len = 0;
        ap_prep_opts_init(&o);
        memset(&r, 0xA5, sizeof(r)); /* must be zeroed on failure, filled on success */
        ap_status st = pt_prep_corpus(rel, &o, &r, &err, &in, &in_len);

        if (st != AP_OK) {
            if (r.out != NULL || r.out_len != 0 || r.out_width != 0)
                PT_FAIL(nfail, rel, "failed with %s but the result is not zeroed", ap_strerror(st));
            if (err.code != st || err.msg[0] == '\0')
                PT_FAIL(nfail, rel, "returned %s but ap_error says %s \"%s\"", ap_strerror(st),
                        ap_strerror(err.code), err.msg);
        }

        if (strcmp(outcome, "reject_before_decode") == 0) {
            nbombs++;
            /* Where Pillow/libheif read a declared size, it is far over the pixel limit: the
             * refusal must be that one. Files whose header no tool could read (a truncated
             * TIFF directory) need only a clean error. */
            if (dw > 0 && st != AP_ETOOLARGE)
                PT_FAIL(nfail, rel, "bomb declaring %ldx%ld: expected AP_ETOOLARGE, got %s (%s)",
                        dw, dh, ap_strerror(st), err.msg);
            if (dw <= 0 && !clean_error(st))
                PT_FAIL(nfail, rel, "bomb: expected a clean error, got %s (%s)", ap_strerror(st),
                        err.msg);
        } else if (strcmp(outcome, "reject") == 0) {
            nrejects++;
            const char *names = sniffed_names(magic);
            if (names != NULL) {
                /* Not an image we take: refused for what it is, and the message says so. */
                if (st != AP_EUNSUPPORTED)
                    PT_FAIL(nfail, rel, "%s: expected AP_EUNSUPPORTED, got %s (%s)", magic,
                            ap_strerror(st), err.msg);
                else if (!msg_names_one_of(err.msg, names))
                    PT_FAIL(nfail, rel, "message \"%s\" does not name \"%s\"", err.msg, names);
            } else if (strcmp(category, "unsupported-formats") == 0) {
                if (st != AP_EUNSUPPORTED)
                    PT_FAIL(nfail, rel, "unsupported format: expected AP_EUNSUPPORTED, got %s",
                            ap_strerror(st));
            } else if (strcmp(category, "fuzz-crashers") == 0) {
                if (!clean_error(st))
                    PT_FAIL(nfail, rel, "expected a clean error, got %s (%s)", ap_strerror(st),
                            err.msg);
            } else if (st != AP_EDECODE && st != AP_EUNSUPPORTED) {
                /* truncated, corrupt-header, pngsuite-corrupt, empty */
                PT_FAIL(nfail, rel, "%s: expected AP_EDECODE or AP_EUNSUPPORTED, got %s (%s)",
                        category, ap_strerror(st), err.msg);
            }
        } else if (strncmp(outcome, "reject_or_", 10) == 0) {
            if (st != AP_OK && !clean_error(st))
                PT_FAIL(nfail, rel, "%s: got %s (%s)", outcome, ap_strerror(st), err.msg);
            if (st == AP_OK && (r.out_width == 0 || r.out_height == 0 || r.out_len == 0))
                PT_FAIL(nfail, rel, "accepted with an empty output");
        } else if (strncmp(outcome, "accept_as_", 10) == 0) {
            naccepts++;
            ap_format want = pt_format_of_magic(outcome + 10);
            if (st != AP_OK)
                PT_FAIL(nfail, rel, "expected AP_OK as %s, got %s (%s)", outcome + 10,
                        ap_strerror(st), err.msg);
            else if (r.in_format != want)
                PT_FAIL(nfail, rel, "sniffed as %s, content is %s", ap_format_name(r.in_format),
                        outcome + 10);
            else if (r.out_width != dw || r.out_height != dh)
                PT_FAIL(nfail, rel, "output %ux%u, declared %ldx%ld", r.out_width, r.out_height, dw,
                        dh);
        } else if (strcmp(outcome, "accept_reencoded") == 0) {
            naccepts++;
            if (st != AP_OK) {
                PT_FAIL(nfail, rel, "expected AP_OK (re-encoded), got %s (%s)", ap_strerror(st),
                        err.msg);
            } else {
                if (r.out_len == in_len && memcmp(r.out, in, in_len) == 0)
                    PT_FAIL(nfail, rel, "output is the input, byte for byte");
                if (r.in_format != pt_format_of_magic(magic))
                    PT_FAIL(nfail, rel, "sniffed as %s", ap_format_name(r.in_format));
                for (size_t k = 0; k < sizeof(payloads) / sizeof(payloads[0]); k++)
                    if (pt_contains(r.out, r.out_len, payloads[k], strlen(payloads[k])))
                        PT_FAIL(nfail, rel, "payload \"%s\" reached the output", payloads[k]);
                char why[160];
                const char *unclean = pt_jpeg_clean(r.out, r.out_len, why, sizeof(why));
                if (unclean != NULL)
                    PT_FAIL(nfail, rel, "output is not a bare JPEG ending at its EOI: %s", unclean);
                /* Appended payloads: the decoder saw bytes after the image and said so. */
                if (strstr(name, "appended") != NULL && !(r.warnings & AP_WARN_TRAILING_DATA))
                    PT_FAIL(nfail, rel, "AP_WARN_TRAILING_DATA not set (warnings 0x%x)",
                            r.warnings);
                if (dw > 0 && dw <= 1568 && dh <= 1568 && (r.out_width != dw || r.out_height != dh))
                    PT_FAIL(nfail, rel, "output %ux%u, declared %ldx%ld", r.out_width, r.out_height,
                            dw, dh);
            }
        } else if (strcmp(outcome, "decode_ignore_metadata") == 0) {
            if (st != AP_OK)
                PT_FAIL(nfail, rel, "expected AP_OK, got %s (%s)", ap_strerror(st), err.msg);
            else if (r.out_width != dw || r.out_height != dh)
                PT_FAIL(nfail, rel, "output %ux%u, declared %ldx%ld", r.out_width, r.out_height, dw,
                        dh);
        } else {
            PT_FAIL(nfail, rel, "unknown outcome \"%s\" in bad/expected.json", outcome);
        }
        if (st == AP_OK)
            ap_prep_result_release(&r);
        free(in);
    }
    print_message("bad: %zu files (%d bombs, %d rejects, %d accepts), %d failures\n", m.n, nbombs,
                  nrejects, naccepts, nfail);
    size_t nfiles = m.n;
    pt_manifest_free(&m);
    assert_true(nfiles >= 120 && nbombs >= 12 && nrejects >= 70 && naccepts >= 14);
    assert_int_equal(nfail, 0);
}

/* The refusal of a non-image is decided by the sniffer and names what it saw. */
static void test_prep__bad_unsupported_message_names_sniffed_type(void **state)
{
    (void)state;
    static const struct {
        const char *bytes;
        size_t len;
        const char *name;
    } cases[] = {
        {"%PDF-1.7\n", 9, "pdf"},
        {"PK\x03\x04\x14\x00", 6, "zip"},
        {"<!DOCTYPE html><html><body>hi</body></html>", 44, "html"},
        {"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"/>", 63, "svg"},
        {"\x7F"
         "ELF\x02\x01\x01",
         7, "elf"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ap_prep_opts o;
        ap_prep_result r;
        ap_error err = {0};
        ap_prep_opts_init(&o);
        ap_status st = ap_prep((const uint8_t *)cases[i].bytes, cases[i].len, &o, &r, &err);
        assert_int_equal(st, AP_EUNSUPPORTED);
        assert_int_equal(err.code, AP_EUNSUPPORTED);
        if (strstr(err.msg, cases[i].name) == NULL)
            fail_msg("message \"%s\" does not name %s", err.msg, cases[i].name);
        assert_null(r.out);
        assert_int_equal(ap_sniff((const uint8_t *)cases[i].bytes, cases[i].len),
                         AP_FORMAT_UNKNOWN);
    }
    /* Zero bytes: refused, "empty". */
    ap_prep_result r;
    ap_error err = {0};
    assert_int_equal(ap_prep((const uint8_t *)"", 0, NULL, &r, &err), AP_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "empty"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_prep__bad_inputs_refused_or_handled),
        cmocka_unit_test(test_prep__bad_unsupported_message_names_sniffed_type),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
