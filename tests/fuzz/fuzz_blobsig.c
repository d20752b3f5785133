/*
 * fuzz_blobsig.c — libFuzzer target for the signed blob URL check,
 * sl_api_blob_sig_verify (api/validate.c), the only check GET /v1/blobs/{id}
 * makes. Input: "id\nexpires\nsig" (pieces may hold anything). It must never
 * crash and must accept only what sl_api_blob_sig itself produced: every
 * input it accepts is re-signed and compared. A second check signs the
 * fuzzed id and expiry and verifies that the genuine signature is accepted
 * (when unexpired) and that flipping one hex digit is refused.
 */
#include "api/validate.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char key[] = "fuzz-signing-key-0123456789abcdef";
static const time_t now = 1700000000;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    if (!buf)
        abort();
    memcpy(buf, data, size);
    buf[size] = '\0';
    char *id = buf, *expires = "", *sig = "";
    char *nl = strchr(buf, '\n');
    if (nl) {
        *nl = '\0';
        expires = nl + 1;
        if ((nl = strchr(expires, '\n')) != NULL) {
            *nl = '\0';
            sig = nl + 1;
        }
    }
    if (sl_api_blob_sig_verify(key, sizeof key - 1, id, expires, sig, now)) {
        char want[65];
        long long e = strtoll(expires, NULL, 10);
        if (e <= now || sl_api_blob_sig(key, sizeof key - 1, id, e, want) != 0 ||
            memcmp(want, sig, 65) != 0)
            __builtin_trap();
    }
    /* No key: nothing verifies. */
    if (sl_api_blob_sig_verify(key, 0, id, expires, sig, now))
        __builtin_trap();
    /* Round trip with the fuzzed id and an expiry after now. */
    char good[65];
    long long e = now + 1 + (long long)(size % 1000);
    if (sl_api_blob_sig(key, sizeof key - 1, id, e, good) == 0) {
        char es[32];
        snprintf(es, sizeof es, "%lld", e);
        if (!sl_api_blob_sig_verify(key, sizeof key - 1, id, es, good, now))
            __builtin_trap();
        if (sl_api_blob_sig_verify(key, sizeof key - 1, id, es, good, (time_t)e))
            __builtin_trap(); /* expired at its own second */
        good[size % 64] = good[size % 64] == '0' ? '1' : '0';
        if (sl_api_blob_sig_verify(key, sizeof key - 1, id, es, good, now))
            __builtin_trap();
    }
    free(buf);
    return 0;
}
