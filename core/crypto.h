/*
 * crypto.h — hashes, HMAC, random ids and encodings (OpenSSL libcrypto).
 */
#ifndef SL_CRYPTO_H
#define SL_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

/** Fills buf with len cryptographically random bytes. 0 or SL_EIO. */
int sl_random_bytes(void *buf, size_t len);

/** A random (v4) UUID as 36 chars + NUL into out[37]. 0 or SL_EIO. */
int sl_uuid_v4(char out[37]);

/** Lowercase hex of len bytes into out (2*len+1 bytes). */
void sl_hex(const void *data, size_t len, char *out);

/** The value of one hex digit (either case), or -1. */
int sl_hex_digit(int ch);

/** SHA-256 of data as 64 hex chars + NUL. */
void sl_sha256_hex(const void *data, size_t len, char out[65]);

/** HMAC-SHA256(key, msg) as 64 hex chars + NUL. */
void sl_hmac_sha256_hex(const void *key, size_t keylen, const void *msg, size_t msglen,
                        char out[65]);

/** HMAC-SHA256(key, msg) as 32 raw bytes into out (SigV4's key derivation chains these). */
void sl_hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                    unsigned char out[32]);

/** Overwrites len bytes at p with zeros in a way the compiler cannot drop (secrets). */
void sl_secure_zero(void *p, size_t len);

/** Constant-time comparison of two equal-length buffers: 1 if equal. */
int sl_consttime_eq(const void *a, const void *b, size_t len);

/** True if s is a canonical lowercase-or-uppercase UUID (8-4-4-4-12 hex). */
int sl_is_uuid(const char *s);

#endif
