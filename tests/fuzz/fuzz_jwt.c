/*
 * fuzz_jwt.c — libFuzzer target for the access-token check, sl_jwt_verify
 * (core/jwt.c), which every request carrying a JWT reaches before any
 * database lookup. The input is a token. It must never crash, and what it
 * accepts must be what sl_jwt_sign makes: canonical base64url (decoding and
 * encoding again gives the same bytes). A second check treats the input as a
 * JSON claims object: signed, it verifies; with one character changed, it
 * does not.
 */
#include "core/jwt.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char secret[] = "fuzz-token-key-0123456789abcdef0123456789";
static const int64_t now = 1800000000;

static sl_jwt_keys_t *ring(void)
{
    static sl_jwt_keys_t *k;
    if (!k && (sl_jwt_keys_new(&k) != 0 || sl_jwt_keys_add(k, "k1", secret, sizeof secret - 1)))
        abort();
    return k;
}

/* Each segment decodes and encodes back to itself. */
static void check_canonical(const char *tok, size_t len)
{
    const char *p = tok, *end = tok + len;
    while (p < end) {
        const char *dot = memchr(p, '.', (size_t)(end - p));
        size_t n = dot ? (size_t)(dot - p) : (size_t)(end - p);
        unsigned char *raw = malloc(n + 1);
        char *again = malloc(n + 2);
        if (!raw || !again)
            abort();
        int m = sl_b64url_decode(p, n, raw, n + 1);
        if (m < 0 || sl_b64url_encode(raw, (size_t)m, again, n + 2) != (int)n ||
            memcmp(again, p, n) != 0)
            abort();
        free(raw);
        free(again);
        p += n + 1;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *claims = NULL;
    int rc = sl_jwt_verify(ring(), (const char *)data, size, 512, now, &claims);
    if (rc == 0) {
        if (!claims)
            abort();
        check_canonical((const char *)data, size);
    } else if (claims) {
        abort();
    }
    json_decref(claims);

    /* Round trip: the input as claims. */
    json_t *c = json_loadb((const char *)data, size, JSON_REJECT_DUPLICATES, NULL);
    if (json_is_object(c)) {
        char tok[4096];
        json_object_set_new(c, "iat", json_integer(now - 10));
        json_object_set_new(c, "exp", json_integer(now + 900));
        int n = sl_jwt_sign(ring(), c, tok, sizeof tok);
        if (n > 0 && n <= 512) {
            json_t *got = NULL;
            if (sl_jwt_verify(ring(), tok, (size_t)n, 512, now, &got) != 0)
                abort();
            json_decref(got);
            size_t i = size % (size_t)n;
            if (tok[i] != '.') {
                tok[i] = tok[i] == 'A' ? 'B' : 'A';
                if (sl_jwt_verify(ring(), tok, (size_t)n, 512, now, &got) == 0)
                    abort();
                json_decref(got);
            }
        }
    }
    json_decref(c);
    return 0;
}
