/*
 * fuzz_sigv4.c — libFuzzer target for the SigV4 signer's canonicalisation
 * (core/sigv4.c): URL parsing, path normalisation and encoding, query
 * decoding/re-encoding and sorting, header name/value canonicalisation.
 *
 * Input: byte 0 = flags and payload choice, then lines: the first is the
 * url, the next ones (up to 70, past the header limit) are header lines.
 * sl_sigv4_sign and sl_sigv4_presign must never crash or overflow, return
 * only documented codes, and on success produce well-formed output
 * (a 64-hex signature that appears in the Authorization line); on error no
 * header. Signing twice gives the same signature (no hidden state; checked
 * on a quarter of the inputs).
 */
#include "core/err.h"
#include "core/sigv4.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAXH 70

static int rc_ok(int rc)
{
    return rc == 0 || rc == SL_EINVAL || rc == SL_ETOOBIG || rc == SL_ENOMEM;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const sl_sigv4_creds_t creds[2] = {
        {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", NULL, "us-east-1", "s3"},
        {"AKIDEXAMPLE", "secret", "session/token=", "eu-west-1", "textract"},
    };
    static sl_sigv4_out_t out, out2;
    if (size < 1)
        return 0;
    unsigned sel = data[0];
    char *buf = malloc(size);
    if (!buf)
        abort();
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = '\0';

    const char *headers[MAXH + 1];
    size_t nh = 0;
    char *url = buf, *p = strchr(buf, '\n');
    if (p) {
        *p++ = '\0';
        while (p && nh < MAXH) {
            headers[nh++] = p;
            if ((p = strchr(p, '\n')) != NULL)
                *p++ = '\0';
        }
    }
    headers[nh] = NULL;

    unsigned flags = sel & 3u;
    const sl_sigv4_creds_t *c = &creds[(sel >> 2) & 1u];
    const char *payload = (sel & 8u)    ? SL_SIGV4_EMPTY_SHA256
                          : (sel & 16u) ? SL_SIGV4_UNSIGNED_PAYLOAD
                                        : NULL;
    const char *method = (sel & 32u) ? "PUT" : "GET";
    time_t now = 1700000000 + (time_t)(sel >> 6) * 86399;

    int rc = sl_sigv4_sign(c, method, url, headers, payload, now, flags, &out);
    if (!rc_ok(rc))
        __builtin_trap();
    if (rc == 0) {
        if (strlen(out.signature) != 64 || strspn(out.signature, "0123456789abcdef") != 64 ||
            strstr(out.authorization, out.signature) == NULL || out.n_headers < 2 ||
            out.n_headers > 5)
            __builtin_trap();
        for (size_t i = 0; i < out.n_headers; i++)
            if (out.headers[i] == NULL || strpbrk(out.headers[i], "\r\n") != NULL)
                __builtin_trap();
        /* Determinism (no hidden state), on a quarter of the inputs: it doubles the cost. */
        if ((size & 3) == 0 &&
            (sl_sigv4_sign(c, method, url, headers, payload, now, flags, &out2) != 0 ||
             strcmp(out.signature, out2.signature) != 0))
            __builtin_trap();
    } else if (out.n_headers != 0) {
        __builtin_trap();
    }

    char pre[2048];
    rc = sl_sigv4_presign(c, method, url, 1 + (long)(sel % 3600), now, flags, pre, sizeof pre);
    if (!rc_ok(rc) || (rc == 0 && memchr(pre, '\0', sizeof pre) == NULL))
        __builtin_trap();
    free(buf);
    return 0;
}
