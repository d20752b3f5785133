/*
 * test_jwt.c — core/jwt.c: a token signed here verifies; every way of
 * tampering with one is refused (changed payload, alg none and others,
 * another key, an unknown kid, truncation, garbage, non-canonical base64url,
 * oversize); an expired token gets its own error; rotation (a token signed
 * by the old first key still verifies once a new key signs).
 */
#include <string.h>

#include "check.h"
#include "core/crypto.h"
#include "core/jwt.h"

#define SECRET_A "0123456789abcdef0123456789abcdef-a"
#define SECRET_B "0123456789abcdef0123456789abcdef-b"
#define NOW 1800000000

static sl_jwt_keys_t *ring(const char *kid, const char *secret)
{
    sl_jwt_keys_t *k = NULL;
    CHECK(sl_jwt_keys_new(&k) == 0);
    CHECK(sl_jwt_keys_add(k, kid, secret, strlen(secret)) == 0);
    return k;
}

static json_t *claims(long long iat, long long exp)
{
    return json_pack("{s:s, s:s, s:s, s:I, s:I, s:s}", "sub", "tenant-1", "fam", "family-1",
                     "scope", "read upload", "iat", iat, "exp", exp, "jti", "j1");
}

static int verify(const sl_jwt_keys_t *k, const char *tok)
{
    json_t *c = NULL;
    int rc = sl_jwt_verify(k, tok, strlen(tok), 512, NOW, &c);
    CHECK((rc == 0) == (c != NULL));
    json_decref(c);
    return rc;
}

/* Re-signs "header.payload" (given as JSON texts) with secret: a token an attacker could make. */
static void forge(const char *header, const char *payload, const char *secret, char *out,
                  size_t outlen)
{
    unsigned char mac[32];
    char *o = out;
    int n = sl_b64url_encode(header, strlen(header), o, outlen);
    CHECK(n > 0);
    o += n;
    *o++ = '.';
    n = sl_b64url_encode(payload, strlen(payload), o, outlen - (size_t)(o - out));
    CHECK(n > 0);
    o += n;
    if (secret) {
        sl_hmac_sha256(secret, strlen(secret), out, (size_t)(o - out), mac);
        *o++ = '.';
        n = sl_b64url_encode(mac, sizeof mac, o, outlen - (size_t)(o - out));
        CHECK(n > 0);
    } else {
        *o++ = '.';
        *o = '\0';
    }
}

static void test_b64url(void)
{
    char enc[64];
    unsigned char dec[64];
    CHECK(sl_b64url_encode("f", 1, enc, sizeof enc) == 2);
    CHECK_STREQ(enc, "Zg");
    CHECK(sl_b64url_encode("fo", 2, enc, sizeof enc) == 3);
    CHECK_STREQ(enc, "Zm8");
    CHECK(sl_b64url_encode("foo", 3, enc, sizeof enc) == 4);
    CHECK_STREQ(enc, "Zm9v");
    CHECK(sl_b64url_encode("\xfb\xff", 2, enc, sizeof enc) == 3);
    CHECK_STREQ(enc, "-_8");
    CHECK(sl_b64url_decode("-_8", 3, dec, sizeof dec) == 2 && dec[0] == 0xfb && dec[1] == 0xff);
    CHECK(sl_b64url_decode("Zm9v", 4, dec, sizeof dec) == 3 && memcmp(dec, "foo", 3) == 0);
    /* not canonical: padding, standard alphabet, stray bits, impossible length */
    CHECK(sl_b64url_decode("Zg==", 4, dec, sizeof dec) == SL_EINVAL);
    CHECK(sl_b64url_decode("+/8", 3, dec, sizeof dec) == SL_EINVAL);
    CHECK(sl_b64url_decode("Zh", 2, dec, sizeof dec) == SL_EINVAL);  /* "Zg" with a stray bit */
    CHECK(sl_b64url_decode("Zm8", 3, dec, sizeof dec) == 2);
    CHECK(sl_b64url_decode("Zm9", 3, dec, sizeof dec) == SL_EINVAL); /* "fo" with stray bits */
    CHECK(sl_b64url_decode("Zm-", 3, dec, sizeof dec) == SL_EINVAL); /* stray bits */
    CHECK(sl_b64url_decode("Zm9vY", 5, dec, sizeof dec) == SL_EINVAL);
    CHECK(sl_b64url_encode("foo", 3, enc, 4) == SL_ETOOBIG);
}

static void test_keys(void)
{
    sl_jwt_keys_t *k = NULL;
    CHECK(sl_jwt_keys_new(&k) == 0);
    CHECK(sl_jwt_keys_add(k, "k1", "short", 5) == SL_EINVAL); /* < 32 bytes */
    CHECK(sl_jwt_keys_add(k, "", SECRET_A, strlen(SECRET_A)) == SL_EINVAL);
    CHECK(sl_jwt_keys_add(k, "bad kid", SECRET_A, strlen(SECRET_A)) == SL_EINVAL);
    CHECK(sl_jwt_keys_add(k, "k1", SECRET_A, strlen(SECRET_A)) == 0);
    CHECK(sl_jwt_keys_add(k, "k1", SECRET_B, strlen(SECRET_B)) == SL_EEXIST);
    CHECK(sl_jwt_keys_count(k) == 1);
    sl_jwt_keys_free(k);
    /* an empty ring signs nothing */
    CHECK(sl_jwt_keys_new(&k) == 0);
    char tok[512];
    json_t *c = claims(NOW, NOW + 900);
    CHECK(sl_jwt_sign(k, c, tok, sizeof tok) == SL_EINVAL);
    json_decref(c);
    sl_jwt_keys_free(k);
}

static void test_roundtrip_and_tampering(void)
{
    sl_jwt_keys_t *a = ring("k1", SECRET_A);
    sl_jwt_keys_t *b = ring("k1", SECRET_B); /* same kid, another secret */
    sl_jwt_keys_t *other_kid = ring("k2", SECRET_A);
    char tok[512], bad[600];
    json_t *c = claims(NOW - 10, NOW + 900);
    int n = sl_jwt_sign(a, c, tok, sizeof tok);
    json_decref(c);
    CHECK(n > 0 && (size_t)n == strlen(tok));
    CHECK(sl_jwt_looks_like(tok, strlen(tok)));
    CHECK(!sl_jwt_looks_like("sk_0123456789abcdef", 19));

    json_t *got = NULL;
    CHECK(sl_jwt_verify(a, tok, strlen(tok), 512, NOW, &got) == 0);
    CHECK(got && strcmp(json_string_value(json_object_get(got, "sub")), "tenant-1") == 0);
    json_decref(got);

    /* the header says what we sign */
    unsigned char hdr[128];
    const char *dot = strchr(tok, '.');
    int hl = sl_b64url_decode(tok, (size_t)(dot - tok), hdr, sizeof hdr);
    CHECK(hl > 0 && memcmp(hdr, "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"k1\"}", (size_t)hl) == 0);

    /* another key (same kid), an unknown kid */
    CHECK(verify(b, tok) == SL_EINVAL);
    CHECK(verify(other_kid, tok) == SL_EINVAL);

    /* a changed payload, signature kept */
    const char *pay = "{\"sub\":\"tenant-2\",\"fam\":\"family-1\",\"scope\":\"read upload\","
                      "\"iat\":1799999990,\"exp\":1800000900,\"jti\":\"j1\"}";
    forge("{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"k1\"}", pay, SECRET_A, bad, sizeof bad);
    CHECK(verify(a, bad) == 0); /* control: the forger with our secret succeeds */
    {
        char mixed[600];
        const char *sig = strrchr(tok, '.');
        const char *bsig = strrchr(bad, '.');
        snprintf(mixed, sizeof mixed, "%.*s%s", (int)(bsig - bad), bad, sig);
        CHECK(verify(a, mixed) == SL_EINVAL);
    }
    /* signed with a secret we do not hold */
    forge("{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"k1\"}", pay, SECRET_B, bad, sizeof bad);
    CHECK(verify(a, bad) == SL_EINVAL);
    /* alg none (empty signature), and none with our real signature */
    forge("{\"alg\":\"none\",\"typ\":\"JWT\",\"kid\":\"k1\"}", pay, NULL, bad, sizeof bad);
    CHECK(verify(a, bad) == SL_EINVAL);
    forge("{\"alg\":\"none\",\"typ\":\"JWT\",\"kid\":\"k1\"}", pay, SECRET_A, bad, sizeof bad);
    CHECK(verify(a, bad) == SL_EINVAL);
    /* other algs, a missing alg, a missing kid, extra header params, duplicate keys */
    forge("{\"alg\":\"HS512\",\"kid\":\"k1\"}", pay, SECRET_A, bad, sizeof bad);
    CHECK(verify(a, bad) == SL_EINVAL);
    forge("{\"alg\":\"hs256\",\"kid\":\"k1\"}", pay, SECRET_A, bad, sizeof bad);
    CHECK(verify(a, bad) == SL_EINVAL);
    forge("{\"kid\":\"k1\"}", pay, SECRET_A, bad, sizeof bad);
    CHECK(verify(a, bad) == SL_EINVAL);
    forge("{\"alg\":\"HS256\"}", pay, SECRET_A, bad, sizeof bad);
    CHECK(verify(a, bad) == SL_EINVAL);
    forge("{\"alg\":\"HS256\",\"kid\":\"k1\",\"crit\":[\"exp\"]}", pay, SECRET_A, bad, sizeof bad);
    CHECK(verify(a, bad) == SL_EINVAL);
    forge("{\"alg\":\"HS256\",\"kid\":\"k1\",\"alg\":\"HS256\"}", pay, SECRET_A, bad, sizeof bad);
    CHECK(verify(a, bad) == SL_EINVAL);
    forge("{\"alg\":\"HS256\",\"kid\":\"k1\"}", pay, SECRET_A, bad, sizeof bad);
    CHECK(verify(a, bad) == 0); /* control: no typ is fine */
    /* claims: exp and iat required and integers; duplicate claims */
    forge("{\"alg\":\"HS256\",\"kid\":\"k1\"}", "{\"sub\":\"t\",\"iat\":1799999990}", SECRET_A,
          bad, sizeof bad);
    CHECK(verify(a, bad) == SL_EINVAL);
    forge("{\"alg\":\"HS256\",\"kid\":\"k1\"}", "{\"sub\":\"t\",\"exp\":1800000900}", SECRET_A,
          bad, sizeof bad);
    CHECK(verify(a, bad) == SL_EINVAL);
    forge("{\"alg\":\"HS256\",\"kid\":\"k1\"}",
          "{\"sub\":\"t\",\"iat\":1799999990,\"exp\":\"1800000900\"}", SECRET_A, bad, sizeof bad);
    CHECK(verify(a, bad) == SL_EINVAL);
    forge("{\"alg\":\"HS256\",\"kid\":\"k1\"}",
          "{\"sub\":\"t\",\"iat\":1799999990,\"exp\":1800000900,\"exp\":1900000000}", SECRET_A,
          bad, sizeof bad);
    CHECK(verify(a, bad) == SL_EINVAL);
    /* issued in the future (past the skew) */
    forge("{\"alg\":\"HS256\",\"kid\":\"k1\"}", "{\"sub\":\"t\",\"iat\":1800000500,\"exp\":1800000900}",
          SECRET_A, bad, sizeof bad);
    CHECK(verify(a, bad) == SL_EINVAL);
    /* payload not an object */
    forge("{\"alg\":\"HS256\",\"kid\":\"k1\"}", "[1,2]", SECRET_A, bad, sizeof bad);
    CHECK(verify(a, bad) == SL_EINVAL);

    /* truncated: each prefix of the token is refused */
    size_t len = strlen(tok);
    int refused = 1;
    for (size_t i = 0; i < len; i++) {
        json_t *x = NULL;
        if (sl_jwt_verify(a, tok, i, 512, NOW, &x) == 0)
            refused = 0;
        json_decref(x);
    }
    CHECK(refused);
    /* a flipped character anywhere is refused */
    int flipped_ok = 0;
    for (size_t i = 0; i < len; i++) {
        char t2[512];
        memcpy(t2, tok, len + 1);
        if (t2[i] == '.')
            continue;
        t2[i] = t2[i] == 'A' ? 'B' : 'A';
        if (verify(a, t2) == 0)
            flipped_ok++;
    }
    CHECK(flipped_ok == 0);
    /* padding added to the signature; garbage; empty; oversize */
    snprintf(bad, sizeof bad, "%s=", tok);
    CHECK(verify(a, bad) == SL_EINVAL);
    CHECK(verify(a, "garbage") == SL_EINVAL);
    CHECK(verify(a, "a.b.c") == SL_EINVAL);
    CHECK(verify(a, "..") == SL_EINVAL);
    CHECK(verify(a, "") == SL_EINVAL);
    CHECK(verify(a, "\xff\xfe.\x01.x") == SL_EINVAL);
    json_t *x = NULL;
    CHECK(sl_jwt_verify(a, tok, strlen(tok), strlen(tok) - 1, NOW, &x) == SL_ETOOBIG && !x);

    sl_jwt_keys_free(a);
    sl_jwt_keys_free(b);
    sl_jwt_keys_free(other_kid);
}

static void test_expiry(void)
{
    sl_jwt_keys_t *a = ring("k1", SECRET_A);
    char tok[512];
    json_t *c = claims(NOW - 900, NOW);
    CHECK(sl_jwt_sign(a, c, tok, sizeof tok) > 0);
    json_decref(c);
    json_t *got = NULL;
    CHECK(sl_jwt_verify(a, tok, strlen(tok), 512, NOW, &got) == SL_JWT_EXPIRED && !got);
    CHECK(sl_jwt_verify(a, tok, strlen(tok), 512, NOW - 1, &got) == 0 && got);
    json_decref(got);
    /* an expired token with a bad signature is "invalid", not "expired" */
    tok[strlen(tok) - 2] = tok[strlen(tok) - 2] == 'A' ? 'B' : 'A';
    CHECK(verify(a, tok) == SL_EINVAL);
    sl_jwt_keys_free(a);
}

static void test_rotation(void)
{
    sl_jwt_keys_t *old = ring("k1", SECRET_A);
    sl_jwt_keys_t *rotated = ring("k2", SECRET_B);
    CHECK(sl_jwt_keys_add(rotated, "k1", SECRET_A, strlen(SECRET_A)) == 0);
    sl_jwt_keys_t *dropped = ring("k2", SECRET_B);
    char t_old[512], t_new[512];
    json_t *c = claims(NOW, NOW + 900);
    CHECK(sl_jwt_sign(old, c, t_old, sizeof t_old) > 0);
    CHECK(sl_jwt_sign(rotated, c, t_new, sizeof t_new) > 0);
    json_decref(c);
    CHECK(verify(rotated, t_old) == 0); /* old key still listed */
    CHECK(verify(rotated, t_new) == 0);
    CHECK(verify(old, t_new) == SL_EINVAL); /* k2 unknown there */
    CHECK(verify(dropped, t_old) == SL_EINVAL);
    CHECK(verify(dropped, t_new) == 0);
    sl_jwt_keys_free(old);
    sl_jwt_keys_free(rotated);
    sl_jwt_keys_free(dropped);
}

int main(void)
{
    test_b64url();
    test_keys();
    test_roundtrip_and_tampering();
    test_expiry();
    test_rotation();
    return check_summary();
}
