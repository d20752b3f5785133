/*
 * utf8.h — the one UTF-8 validator (RFC 3629).
 *
 * Strict: the shortest form only (no C0/C1 leads, no E0 80..9F or F0 80..8F
 * overlongs), no UTF-16 surrogates (ED A0..BF), nothing past U+10FFFF (no F4
 * 90+ and no F5..FF leads), no stray continuation bytes, no truncated
 * sequences. Postgres and jansson refuse the same set, so whatever passes here
 * can be stored and encoded. Every place that checks UTF-8 (upload filenames,
 * the config file) uses this.
 */
#ifndef SL_UTF8_H
#define SL_UTF8_H

#include <stddef.h>

/**
 * The length (1 to 4) of the well-formed UTF-8 sequence at the start of
 * s[0..len) (borrowed), or 0 if there is none there (an invalid or truncated
 * sequence, or len == 0). NUL is a valid one-byte sequence.
 */
size_t sl_utf8_seq_len(const unsigned char *s, size_t len);

/** 1 if all of s[0..len) (borrowed) is well-formed UTF-8, else 0. */
int sl_utf8_valid(const void *s, size_t len);

#endif
