/*
 * jwt.h — HS256 JSON Web Tokens (RFC 7519, RFC 7515 compact form), signed
 * and verified with OpenSSL's HMAC-SHA256 (core/crypto.h).
 *
 * A keyring holds up to SL_JWT_MAX_KEYS named secrets: the first one added
 * signs, every one verifies, and the header's "kid" picks which. That is how
 * keys rotate (docs/auth.md): add a new first key, keep the old one listed
 * until the tokens it signed have expired, then drop it.
 *
 * Verification is strict, and refuses before reading any claim: anything but
 * exactly three base64url segments in canonical form (no padding, no stray
 * bits), a header that is not {"alg":"HS256", "kid": <a key of the ring>}
 * (optionally "typ":"JWT"; "alg":"none" and every other alg are refused), a
 * signature that differs (compared in constant time), duplicate JSON keys, a
 * token longer than the caller's limit, a missing or non-integer "exp" or
 * "iat". An expired but otherwise valid token gets its own error, so the API
 * can answer `token_expired`.
 *
 * The module knows nothing of tenants or API keys: claims are a JSON object
 * the caller builds and reads (api/auth.c).
 */
#ifndef SL_JWT_H
#define SL_JWT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"

#define SL_JWT_MAX_KEYS 8
#define SL_JWT_KID_MAX 64       /* a key id's length limit (bytes) */
#define SL_JWT_SECRET_MIN 32    /* shorter secrets are refused */
#define SL_JWT_SECRET_MAX 512
/** Leeway for "iat" in the future (clock skew between instances), seconds. */
#define SL_JWT_IAT_SKEW_S 60

/** sl_jwt_verify's answer for a token that is valid but past its "exp". */
#define SL_JWT_EXPIRED SL_ETIMEDOUT

typedef struct sl_jwt_keys_s sl_jwt_keys_t;

/** A new empty keyring, owned (sl_jwt_keys_free), in *out. 0 or SL_ENOMEM. */
int sl_jwt_keys_new(sl_jwt_keys_t **out);

/** Frees the ring and wipes its secrets (takes k; NULL is a no-op). */
void sl_jwt_keys_free(sl_jwt_keys_t *k);

/**
 * Adds a key: kid (borrowed, copied; 1..SL_JWT_KID_MAX bytes of [A-Za-z0-9._-])
 * and secret (borrowed, copied; SL_JWT_SECRET_MIN..SL_JWT_SECRET_MAX bytes).
 * The first key added is the signing key. 0, SL_EINVAL (bad kid or secret
 * length), SL_EEXIST (kid already there) or SL_ETOOBIG (ring full).
 */
int sl_jwt_keys_add(sl_jwt_keys_t *k, const char *kid, const void *secret, size_t len);

/** The number of keys in the ring (borrows k; NULL: 0). */
int sl_jwt_keys_count(const sl_jwt_keys_t *k);

/**
 * Signs claims (borrowed; must be an object) with the ring's first key into
 * out (NUL-terminated compact JWT). Its length, or SL_EINVAL (no key, not an
 * object), SL_ETOOBIG (out too small) or SL_ENOMEM.
 */
int sl_jwt_sign(const sl_jwt_keys_t *k, json_t *claims, char *out, size_t outlen);

/**
 * Verifies token (borrowed, len bytes, need not be NUL-terminated) at time
 * `now` (Unix seconds). 0 and the claims (returns owned: json_decref) in
 * *claims; SL_JWT_EXPIRED (signature good, now >= exp; *claims NULL);
 * SL_ETOOBIG (len > max_len); SL_EINVAL for everything else (malformed,
 * wrong alg, unknown kid, bad signature, bad claims).
 */
int sl_jwt_verify(const sl_jwt_keys_t *k, const char *token, size_t len, size_t max_len,
                  int64_t now, json_t **claims);

/**
 * True if s (len bytes) has the shape of a compact JWS: three non-empty
 * segments of base64url characters separated by two dots. Says nothing of
 * its validity; API keys never have this shape.
 */
int sl_jwt_looks_like(const char *s, size_t len);

/**
 * base64url without padding (RFC 4648 §5): encodes len bytes into out
 * (NUL-terminated). Its length, or SL_ETOOBIG.
 */
int sl_b64url_encode(const void *in, size_t len, char *out, size_t outlen);

/**
 * Decodes canonical unpadded base64url (in, len) into out: its length, or
 * SL_EINVAL (bad character, padding, impossible length, non-zero unused
 * bits) or SL_ETOOBIG.
 */
int sl_b64url_decode(const char *in, size_t len, unsigned char *out, size_t outlen);

#endif
