/*
 * fuzz_auth.c — libFuzzer target for the Authorization header parser,
 * sl_http_bearer_token (core/http.c). Byte 0 picks the output buffer size
 * (so the "token longer than the buffer" edge is reached); the rest is the
 * header value. A token it returns must be what RFC 6750 allows here:
 * non-empty, printable ASCII without blanks, found verbatim in the value
 * after "Bearer ", and shorter than the buffer.
 */
#include "core/http.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t outlen = data[0] % 80; /* 0..79: 0 must be refused */
    char *value = malloc(size);
    char *out = malloc(outlen ? outlen : 1);
    if (!value || !out)
        abort();
    memcpy(value, data + 1, size - 1);
    value[size - 1] = '\0';
    int n = sl_http_bearer_token(value, outlen ? out : NULL, outlen);
    if (n >= 0) {
        if (n == 0 || (size_t)n >= outlen || strlen(out) != (size_t)n)
            __builtin_trap();
        for (int i = 0; i < n; i++)
            if ((unsigned char)out[i] <= 0x20 || (unsigned char)out[i] >= 0x7f)
                __builtin_trap();
        if (strstr(value, out) == NULL || strncasecmp(value + strspn(value, " \t"), "bearer ", 7))
            __builtin_trap();
    } else if (n != -1 || (outlen > 0 && out[0] != '\0')) {
        __builtin_trap(); /* a refusal leaves an empty string */
    }
    free(out);
    free(value);
    return 0;
}
