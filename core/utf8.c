/*
 * utf8.c — the strict UTF-8 validator of utf8.h.
 *
 * RFC 3629 §4's table of well-formed byte sequences, written out: the lead
 * byte fixes the sequence length and the range of the second byte (which is
 * where overlongs, surrogates and code points past U+10FFFF show); every later
 * byte is 80..BF.
 */
#include "core/utf8.h"

size_t sl_utf8_seq_len(const unsigned char *s, size_t len)
{
    unsigned char c, lo = 0x80, hi = 0xbf;
    size_t n;

    if (len == 0)
        return 0;
    c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0; /* E0 80..9F: overlong */
        else if (c == 0xed)
            hi = 0x9f; /* ED A0..BF: UTF-16 surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90; /* F0 80..8F: overlong */
        else if (c == 0xf4)
            hi = 0x8f; /* F4 90..: past U+10FFFF */
    } else {
        return 0; /* 80..C1 (continuation, overlong lead) and F5..FF */
    }
    if (len < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return n;
}

int sl_utf8_valid(const void *s, size_t len)
{
    const unsigned char *p = s;
    size_t i = 0;

    while (i < len) {
        size_t n = sl_utf8_seq_len(p + i, len - i);
        if (n == 0)
            return 0;
        i += n;
    }
    return 1;
}
