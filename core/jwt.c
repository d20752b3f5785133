/*
 * jwt.c — HS256 JWTs (see jwt.h).
 *
 * The order of checks in sl_jwt_verify matters: nothing of the payload is
 * parsed before the signature is known good, so a forged token costs one
 * HMAC and never reaches the JSON parser with attacker-chosen claims; and
 * the header is parsed only as far as choosing the key (RFC 8725 §3.1: the
 * algorithm is ours, never the token's to choose).
 */
#include "core/jwt.h"

#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"

#define HEADER_MAX 256 /* decoded header bytes: ours is about 40 */
#define SIG_LEN 32

typedef struct jwt_key_s {
    char kid[SL_JWT_KID_MAX + 1];
    unsigned char secret[SL_JWT_SECRET_MAX];
    size_t len;
} jwt_key_t;

struct sl_jwt_keys_s {
    int n;
    jwt_key_t keys[SL_JWT_MAX_KEYS];
};

/* ---- base64url ---- */

static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

int sl_b64url_encode(const void *in, size_t len, char *out, size_t outlen)
{
    const unsigned char *p = in;
    size_t need = len / 3 * 4 + (len % 3 ? len % 3 + 1 : 0);
    size_t o = 0;

    if (need + 1 > outlen)
        return SL_ETOOBIG;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        size_t left = len - i;
        if (left > 1)
            v |= (uint32_t)p[i + 1] << 8;
        if (left > 2)
            v |= p[i + 2];
        out[o++] = B64URL[(v >> 18) & 63];
        out[o++] = B64URL[(v >> 12) & 63];
        if (left > 1)
            out[o++] = B64URL[(v >> 6) & 63];
        if (left > 2)
            out[o++] = B64URL[v & 63];
    }
    out[o] = '\0';
    return (int)o;
}

int sl_b64url_decode(const char *in, size_t len, unsigned char *out, size_t outlen)
{
    size_t o = 0;

    if (len % 4 == 1)
        return SL_EINVAL; /* no encoding ends with a single character */
    if (len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0) > outlen)
        return SL_ETOOBIG;
    for (size_t i = 0; i < len; i += 4) {
        size_t left = len - i < 4 ? len - i : 4;
        uint32_t v = 0;
        for (size_t j = 0; j < 4; j++) {
            int d = j < left ? b64url_value((unsigned char)in[i + j]) : 0;
            if (d < 0)
                return SL_EINVAL;
            v = v << 6 | (uint32_t)d;
        }
        out[o++] = (unsigned char)(v >> 16);
        if (left > 2)
            out[o++] = (unsigned char)(v >> 8);
        if (left > 3)
            out[o++] = (unsigned char)v;
        /* Canonical form: the bits past the last whole byte must be zero, so
         * each byte string has exactly one encoding (no malleable tokens). */
        if ((left == 2 && (v & 0xffff)) || (left == 3 && (v & 0xff)))
            return SL_EINVAL;
    }
    return (int)o;
}

int sl_jwt_looks_like(const char *s, size_t len)
{
    size_t dots = 0, seg = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '.') {
            if (seg == 0)
                return 0;
            dots++;
            seg = 0;
        } else if (b64url_value((unsigned char)s[i]) < 0) {
            return 0;
        } else {
            seg++;
        }
    }
    return dots == 2 && seg > 0;
}

/* ---- the keyring ---- */

int sl_jwt_keys_new(sl_jwt_keys_t **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : SL_ENOMEM;
}

void sl_jwt_keys_free(sl_jwt_keys_t *k)
{
    if (!k)
        return;
    sl_secure_zero(k, sizeof *k);
    free(k);
}

int sl_jwt_keys_count(const sl_jwt_keys_t *k)
{
    return k ? k->n : 0;
}

static int kid_ok(const char *kid)
{
    size_t n = kid ? strlen(kid) : 0;
    if (n == 0 || n > SL_JWT_KID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)kid[i];
        if (b64url_value(c) < 0 && c != '.')
            return 0;
    }
    return 1;
}

int sl_jwt_keys_add(sl_jwt_keys_t *k, const char *kid, const void *secret, size_t len)
{
    if (!k || !kid_ok(kid) || !secret || len < SL_JWT_SECRET_MIN || len > SL_JWT_SECRET_MAX)
        return SL_EINVAL;
    for (int i = 0; i < k->n; i++)
        if (strcmp(k->keys[i].kid, kid) == 0)
            return SL_EEXIST;
    if (k->n >= SL_JWT_MAX_KEYS)
        return SL_ETOOBIG;
    jwt_key_t *e = &k->keys[k->n++];
    memcpy(e->kid, kid, strlen(kid) + 1);
    memcpy(e->secret, secret, len);
    e->len = len;
    return 0;
}

static const jwt_key_t *find_key(const sl_jwt_keys_t *k, const char *kid)
{
    for (int i = 0; i < k->n; i++)
        if (strcmp(k->keys[i].kid, kid) == 0)
            return &k->keys[i];
    return NULL;
}

/* ---- sign ---- */

/* Appends the base64url of text (len bytes) at out + *o. 0 or SL_ETOOBIG. */
static int append_b64(const void *text, size_t len, char *out, size_t outlen, size_t *o)
{
    int n = sl_b64url_encode(text, len, out + *o, outlen - *o);
    if (n < 0)
        return n;
    *o += (size_t)n;
    return 0;
}

int sl_jwt_sign(const sl_jwt_keys_t *k, json_t *claims, char *out, size_t outlen)
{
    unsigned char sig[SIG_LEN];
    char *header = NULL, *payload = NULL;
    json_t *h = NULL;
    size_t o = 0;
    int err = SL_EINVAL;

    if (!k || k->n == 0 || !json_is_object(claims) || !out || outlen == 0)
        return SL_EINVAL;
    const jwt_key_t *key = &k->keys[0];
    h = json_pack("{s:s, s:s, s:s}", "alg", "HS256", "typ", "JWT", "kid", key->kid);
    if (!h || !(header = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER)) ||
        !(payload = json_dumps(claims, JSON_COMPACT | JSON_PRESERVE_ORDER))) {
        err = SL_ENOMEM;
        goto out;
    }
    if ((err = append_b64(header, strlen(header), out, outlen, &o)) != 0)
        goto out;
    if (o + 1 >= outlen) {
        err = SL_ETOOBIG;
        goto out;
    }
    out[o++] = '.';
    if ((err = append_b64(payload, strlen(payload), out, outlen, &o)) != 0)
        goto out;
    sl_hmac_sha256(key->secret, key->len, out, o, sig);
    if (o + 1 >= outlen) {
        err = SL_ETOOBIG;
        goto out;
    }
    out[o++] = '.';
    if ((err = append_b64(sig, sizeof sig, out, outlen, &o)) != 0)
        goto out;
    err = (int)o;
out:
    if (err < 0 && out && outlen > 0)
        out[0] = '\0';
    json_decref(h);
    free(header);
    free(payload);
    return err;
}

/* ---- verify ---- */

/* Decodes a segment and parses it as a JSON object (duplicate keys refused). Owned or NULL. */
static json_t *segment_object(const char *seg, size_t len, unsigned char *buf, size_t buflen)
{
    int n = sl_b64url_decode(seg, len, buf, buflen);
    if (n <= 0)
        return NULL;
    json_t *v = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    if (v && !json_is_object(v)) {
        json_decref(v);
        return NULL;
    }
    return v;
}

/* The key the header names, if the header is exactly what we sign; else NULL. */
static const jwt_key_t *header_key(const sl_jwt_keys_t *k, const char *seg, size_t len)
{
    unsigned char buf[HEADER_MAX];
    const jwt_key_t *key = NULL;
    const char *name;
    json_t *v, *h = segment_object(seg, len, buf, sizeof buf);

    if (!h)
        return NULL;
    json_object_foreach(h, name, v) {
        if (strcmp(name, "alg") == 0) {
            if (!json_is_string(v) || strcmp(json_string_value(v), "HS256") != 0)
                goto out;
        } else if (strcmp(name, "typ") == 0) {
            if (!json_is_string(v) || strcmp(json_string_value(v), "JWT") != 0)
                goto out;
        } else if (strcmp(name, "kid") != 0) {
            goto out; /* crit, jku, x5u...: nothing we honour, so nothing we accept */
        }
    }
    json_t *alg = json_object_get(h, "alg");
    json_t *kid = json_object_get(h, "kid");
    if (alg && json_is_string(kid) && json_string_length(kid) <= SL_JWT_KID_MAX)
        key = find_key(k, json_string_value(kid));
out:
    json_decref(h);
    return key;
}

int sl_jwt_verify(const sl_jwt_keys_t *k, const char *token, size_t len, size_t max_len,
                  int64_t now, json_t **claims)
{
    unsigned char sig[SIG_LEN + 2], mac[SIG_LEN];
    unsigned char *buf = NULL;
    json_t *c = NULL;
    int err = SL_EINVAL;

    *claims = NULL;
    if (len > max_len)
        return SL_ETOOBIG;
    if (!k || !token || !sl_jwt_looks_like(token, len))
        return SL_EINVAL;
    const char *d1 = memchr(token, '.', len);
    const char *d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token));
    size_t signed_len = (size_t)(d2 - token);

    const jwt_key_t *key = header_key(k, token, (size_t)(d1 - token));
    if (!key)
        return SL_EINVAL;
    if (sl_b64url_decode(d2 + 1, len - signed_len - 1, sig, sizeof sig) != SIG_LEN)
        return SL_EINVAL;
    sl_hmac_sha256(key->secret, key->len, token, signed_len, mac);
    if (!sl_consttime_eq(sig, mac, SIG_LEN))
        return SL_EINVAL;

    /* Signed by us: the claims can be read. */
    size_t plen = (size_t)(d2 - d1 - 1);
    if (!(buf = malloc(plen)))
        return SL_ENOMEM;
    if (!(c = segment_object(d1 + 1, plen, buf, plen)))
        goto out;
    json_t *exp = json_object_get(c, "exp");
    json_t *iat = json_object_get(c, "iat");
    json_t *nbf = json_object_get(c, "nbf");
    if (!json_is_integer(exp) || !json_is_integer(iat) || (nbf && !json_is_integer(nbf)))
        goto out;
    if (json_integer_value(iat) > now + SL_JWT_IAT_SKEW_S ||
        json_integer_value(iat) > json_integer_value(exp) ||
        (nbf && json_integer_value(nbf) > now + SL_JWT_IAT_SKEW_S))
        goto out;
    if (now >= json_integer_value(exp)) {
        err = SL_JWT_EXPIRED;
        goto out;
    }
    *claims = c;
    c = NULL;
    err = 0;
out:
    json_decref(c);
    free(buf);
    return err;
}
