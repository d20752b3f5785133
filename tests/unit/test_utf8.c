/*
 * test_utf8.c — unit tests for core/utf8.c: every class of RFC 3629's
 * ill-formed sequences is refused, every boundary of the well-formed ones
 * accepted.
 */
#include <string.h>

#include "check.h"
#include "core/utf8.h"

#define SEQ(s) (const unsigned char *)(s), sizeof(s) - 1
#define VALID(s) sl_utf8_valid((s), sizeof(s) - 1)

static void test_well_formed(void)
{
    CHECK_EQ(sl_utf8_seq_len(SEQ("a")), 1);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\x7f")), 1);
    CHECK_EQ(sl_utf8_seq_len((const unsigned char *)"", 1), 1); /* NUL */
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xc2\x80")), 2);              /* U+0080 */
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xdf\xbf")), 2);              /* U+07FF */
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xe0\xa0\x80")), 3);          /* U+0800 */
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xed\x9f\xbf")), 3);          /* U+D7FF */
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xee\x80\x80")), 3);          /* U+E000 */
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xef\xbf\xbd")), 3);          /* U+FFFD */
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xf0\x90\x80\x80")), 4);      /* U+10000 */
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xf4\x8f\xbf\xbf")), 4);      /* U+10FFFF */
    CHECK_EQ(VALID("gr\xc3\xbc\xc3\x9f dich \xe2\x82\xac \xf0\x9f\x98\x80"), 1);
    CHECK_EQ(sl_utf8_valid("", 0), 1);
}

static void test_ill_formed(void)
{
    /* stray continuation bytes */
    CHECK_EQ(sl_utf8_seq_len(SEQ("\x80")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xbf")), 0);
    /* overlong two-byte forms: C0, C1 leads */
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xc0\xaf")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xc0\x80")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xc1\xbf")), 0);
    /* overlong three-byte forms: E0 80..9F */
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xe0\x80\xaf")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xe0\x9f\xbf")), 0);
    /* UTF-16 surrogates: ED A0..BF */
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xed\xa0\x80")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xed\xbf\xbf")), 0);
    CHECK_EQ(VALID("\xed\xa0\xbd\xed\xb8\x80"), 0); /* a CESU-8 pair */
    /* overlong four-byte forms: F0 80..8F */
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xf0\x80\x80\xaf")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xf0\x8f\xbf\xbf")), 0);
    /* past U+10FFFF: F4 90+, F5..FF leads */
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xf4\x90\x80\x80")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xf4\xbf\xbf\xbf")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xf5\x80\x80\x80")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xf7\xbf\xbf\xbf")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xf8\x88\x80\x80\x80")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xfc\x84\x80\x80\x80\x80")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xfe")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xff")), 0);
    /* truncated sequences, and a lead followed by a non-continuation */
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xc3")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xe2\x82")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xf0\x9f\x98")), 0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xc3"
                                 "a")),
             0);
    CHECK_EQ(sl_utf8_seq_len(SEQ("\xe2\x82"
                                 "a")),
             0);
    CHECK_EQ(sl_utf8_seq_len((const unsigned char *)"\xe2\x82\xac", 2), 0); /* len bounds it */
    CHECK_EQ(sl_utf8_seq_len((const unsigned char *)"a", 0), 0);
    /* one bad byte anywhere spoils the whole string */
    CHECK_EQ(VALID("abc\xed\xa0\x80"), 0);
    CHECK_EQ(VALID("\xc0\xafpasswd"), 0);
    CHECK_EQ(VALID("ok \xe2\x82\xac then \xf4\x90\x80\x80"), 0);
}

/* Every two-byte and three-byte prefix against a plain decoder's verdict. */
static void test_exhaustive_small(void)
{
    int mismatches = 0;
    for (unsigned a = 0x80; a <= 0xff; a++) {
        for (unsigned b = 0; b <= 0xff; b++) {
            for (unsigned c = 0x80; c <= 0xbf; c += 0x3f) {
                unsigned char s[4] = {(unsigned char)a, (unsigned char)b, (unsigned char)c, 0x80};
                size_t n = sl_utf8_seq_len(s, 4);
                /* reference: decode by the bit patterns, then range-check */
                size_t want = 0;
                unsigned long cp = 0;
                if (a >= 0xc0 && a < 0xe0 && (b & 0xc0) == 0x80) {
                    cp = ((a & 0x1fUL) << 6) | (b & 0x3f);
                    want = cp >= 0x80 ? 2 : 0;
                } else if (a >= 0xe0 && a < 0xf0 && (b & 0xc0) == 0x80) {
                    cp = ((a & 0x0fUL) << 12) | ((b & 0x3fUL) << 6) | (c & 0x3f);
                    want = cp >= 0x800 && (cp < 0xd800 || cp > 0xdfff) ? 3 : 0;
                } else if (a >= 0xf0 && a < 0xf8 && (b & 0xc0) == 0x80) {
                    cp = ((a & 0x07UL) << 18) | ((b & 0x3fUL) << 12) | ((c & 0x3fUL) << 6) | 0;
                    want = cp >= 0x10000 && cp <= 0x10ffff ? 4 : 0;
                }
                if (n != want)
                    mismatches++;
            }
        }
    }
    CHECK_EQ(mismatches, 0);
}

int main(void)
{
    test_well_formed();
    test_ill_formed();
    test_exhaustive_small();
    return check_summary();
}
