/*
 * test_crypto.c — unit tests for core/crypto.c with published vectors:
 * SHA-256 (FIPS 180-4 examples), HMAC-SHA256 (RFC 4231 §4.2, §4.3, §4.7),
 * hex encoding, the constant-time compare, UUID v4 shape (RFC 4122 §4.4),
 * UUID syntax checks and the CSPRNG's output.
 */
#include <string.h>

#include "check.h"
#include "core/crypto.h"

static void test_sha256(void)
{
    char out[65];
    sl_sha256_hex("", 0, out);
    CHECK_STREQ(out, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sl_sha256_hex("abc", 3, out);
    CHECK_STREQ(out, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sl_sha256_hex(two, strlen(two), out);
    CHECK_STREQ(out, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    /* binary input: the length counts, not a NUL */
    sl_sha256_hex("a\0b", 3, out);
    CHECK(strcmp(out, "ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb") != 0);
}

static void test_hmac(void)
{
    char out[65];
    unsigned char key1[20], key6[131];
    memset(key1, 0x0b, sizeof key1);
    memset(key6, 0xaa, sizeof key6);
    /* RFC 4231 test case 1 */
    sl_hmac_sha256_hex(key1, sizeof key1, "Hi There", 8, out);
    CHECK_STREQ(out, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    /* test case 2: a key shorter than the block */
    const char *m2 = "what do ya want for nothing?";
    sl_hmac_sha256_hex("Jefe", 4, m2, strlen(m2), out);
    CHECK_STREQ(out, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    /* test case 6: a key longer than the block is hashed first */
    const char *m6 = "Test Using Larger Than Block-Size Key - Hash Key First";
    sl_hmac_sha256_hex(key6, sizeof key6, m6, strlen(m6), out);
    CHECK_STREQ(out, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

static void test_hex(void)
{
    static const unsigned char in[] = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xff};
    char out[2 * sizeof in + 1];
    sl_hex(in, sizeof in, out);
    CHECK_STREQ(out, "00017f80abff");
    sl_hex(in, 0, out);
    CHECK_STREQ(out, "");
}

static void test_consttime_eq(void)
{
    CHECK_EQ(sl_consttime_eq("abcdef", "abcdef", 6), 1);
    CHECK_EQ(sl_consttime_eq("abcdef", "abcdeg", 6), 0);
    CHECK_EQ(sl_consttime_eq("xbcdef", "abcdef", 6), 0);
    CHECK_EQ(sl_consttime_eq("ab\0d", "ab\0e", 4), 0); /* past a NUL too */
    CHECK_EQ(sl_consttime_eq("abc", "xyz", 0), 1);
}

static void test_uuid(void)
{
    char a[37], b[37];
    CHECK_EQ(sl_uuid_v4(a), 0);
    CHECK_EQ(sl_uuid_v4(b), 0);
    CHECK_EQ(strlen(a), 36);
    CHECK_EQ(sl_is_uuid(a), 1);
    CHECK(strcmp(a, b) != 0);
    CHECK_EQ(a[14], '4');                 /* version 4 */
    CHECK(strchr("89ab", a[19]) != NULL); /* variant 10xx */
    CHECK(a[8] == '-' && a[13] == '-' && a[18] == '-' && a[23] == '-');

    CHECK_EQ(sl_is_uuid("123e4567-e89b-12d3-a456-426614174000"), 1);
    CHECK_EQ(sl_is_uuid("123E4567-E89B-12D3-A456-426614174000"), 1);
    CHECK_EQ(sl_is_uuid("123e4567e89b12d3a456426614174000"), 0);      /* no dashes */
    CHECK_EQ(sl_is_uuid("123e4567-e89b-12d3-a456-42661417400"), 0);   /* short */
    CHECK_EQ(sl_is_uuid("123e4567-e89b-12d3-a456-4266141740000"), 0); /* long */
    CHECK_EQ(sl_is_uuid("123e4567-e89b-12d3-a456-42661417400g"), 0);  /* not hex */
    CHECK_EQ(sl_is_uuid("123e4567-e89b-12d3-a4564-26614174000"), 0);  /* dash moved */
    CHECK_EQ(sl_is_uuid(""), 0);
}

static void test_random(void)
{
    unsigned char a[32], b[32], zero[32] = {0};
    CHECK_EQ(sl_random_bytes(a, sizeof a), 0);
    CHECK_EQ(sl_random_bytes(b, sizeof b), 0);
    CHECK(memcmp(a, b, sizeof a) != 0);
    CHECK(memcmp(a, zero, sizeof a) != 0);
    /* every byte value shows up in 64 KiB of output, and no value dominates */
    static unsigned char buf[65536];
    int counts[256] = {0}, min = 1 << 30, max = 0;
    CHECK_EQ(sl_random_bytes(buf, sizeof buf), 0);
    for (size_t i = 0; i < sizeof buf; i++)
        counts[buf[i]]++;
    for (int v = 0; v < 256; v++) {
        if (counts[v] < min)
            min = counts[v];
        if (counts[v] > max)
            max = counts[v];
    }
    /* expected 256 each; 5 sigma is 80 */
    CHECK(min > 256 - 100);
    CHECK(max < 256 + 100);
    CHECK_EQ(sl_random_bytes(a, 0), 0);
}

int main(void)
{
    test_sha256();
    test_hmac();
    test_hex();
    test_consttime_eq();
    test_uuid();
    test_random();
    return check_summary();
}
