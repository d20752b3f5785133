/*
 * sigv4.h — AWS Signature Version 4 (AWS4-HMAC-SHA256), computed here rather
 * than by libcurl, so that exactly the headers that go on the wire are signed
 * (libcurl 7.88 also signs curl directives such as "Expect:", which are never
 * sent: curl issue 11664). Used by core/curl.c for Textract today and by an S3
 * storage backend later (presigned URLs, UNSIGNED-PAYLOAD).
 *
 * The algorithm is AWS's "Signature Version 4 signing process" (General
 * Reference): canonical request -> string to sign -> HMAC chain over
 * date/region/service/"aws4_request" -> hex signature. The S3 differences are
 * one flag: the path is URI-encoded once and not normalised, and
 * x-amz-content-sha256 is sent and signed. See docs/internals/curl.md.
 *
 * Everything here is pure (no I/O, no clock: `now` is an argument) and
 * bounded: inputs above the named limits are SL_ETOOBIG, malformed ones
 * SL_EINVAL; nothing is truncated. The hex SHA-256 of an in-memory payload is
 * sl_sha256_hex() in core/crypto.h.
 */
#ifndef SL_SIGV4_H
#define SL_SIGV4_H

#include <stddef.h>
#include <time.h>

#define SL_SIGV4_KEY_ID_MAX 128            /* access key id bytes */
#define SL_SIGV4_SECRET_MAX 256            /* secret access key bytes */
#define SL_SIGV4_TOKEN_MAX 4096            /* session token bytes */
#define SL_SIGV4_SCOPE_PART_MAX 64         /* region, service bytes */
#define SL_SIGV4_URL_MAX 8192              /* url bytes */
#define SL_SIGV4_MAX_HEADERS 64            /* caller headers per request */
#define SL_SIGV4_MAX_QUERY_PARAMS 128      /* query parameters per url */
#define SL_SIGV4_HOST_MAX 300              /* host[:port] bytes */
#define SL_SIGV4_SIGNED_HEADERS_MAX 1024   /* "a;b;c" bytes */
#define SL_SIGV4_CANONICAL_MAX (64 * 1024) /* canonical request bytes */
#define SL_SIGV4_EXPIRES_MAX 604800L       /* presigned URL lifetime, seconds (7 days) */

/* Header lines in sl_sigv4_out_t ("Name: value" + NUL). */
#define SL_SIGV4_AUTH_LINE_MAX                                                                     \
    (256 + SL_SIGV4_KEY_ID_MAX + 2 * SL_SIGV4_SCOPE_PART_MAX + SL_SIGV4_SIGNED_HEADERS_MAX)
#define SL_SIGV4_TOKEN_LINE_MAX (32 + SL_SIGV4_TOKEN_MAX)
#define SL_SIGV4_HOST_LINE_MAX (8 + SL_SIGV4_HOST_MAX)
#define SL_SIGV4_SHORT_LINE_MAX 96 /* X-Amz-Date, X-Amz-Content-Sha256 */

/* Flags for sl_sigv4_sign() / sl_sigv4_presign(). */
#define SL_SIGV4_SINGLE_ENCODE 1u  /* path encoded once, never normalised (S3) */
#define SL_SIGV4_CONTENT_SHA256 2u /* send and sign X-Amz-Content-Sha256 */
#define SL_SIGV4_S3 (SL_SIGV4_SINGLE_ENCODE | SL_SIGV4_CONTENT_SHA256)

#define SL_SIGV4_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"
#define SL_SIGV4_EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

/**
 * Who signs, and for what scope. Every string is borrowed for the call only.
 * access_key_id: printable ASCII without space , / ; = (it goes into
 * "Credential="); region and service: [A-Za-z0-9_.-]; session_token: NULL or
 * printable ASCII (it is sent as X-Amz-Security-Token and signed).
 */
typedef struct sl_sigv4_creds_s {
    const char *access_key_id;
    const char *secret_access_key;
    const char *session_token; /* NULL: long-term keys */
    const char *region;        /* e.g. "us-east-1" */
    const char *service;       /* e.g. "textract", "s3" */
} sl_sigv4_creds_t;

/**
 * What sl_sigv4_sign() produced: the header lines to send in addition to the
 * caller's, each "Name: value", "" when not needed. headers[0..n_headers-1]
 * point at the non-empty ones (into this struct: do not copy the struct and
 * use the copy's pointers).
 */
typedef struct sl_sigv4_out_s {
    char authorization[SL_SIGV4_AUTH_LINE_MAX];   /* always */
    char amz_date[SL_SIGV4_SHORT_LINE_MAX];       /* always: "X-Amz-Date: YYYYMMDDTHHMMSSZ" */
    char host[SL_SIGV4_HOST_LINE_MAX];            /* when the caller gave no Host */
    char content_sha256[SL_SIGV4_SHORT_LINE_MAX]; /* with SL_SIGV4_CONTENT_SHA256 */
    char security_token[SL_SIGV4_TOKEN_LINE_MAX]; /* when creds->session_token */
    const char *headers[5];
    size_t n_headers;
    char signature[65]; /* lowercase hex, also inside authorization */
} sl_sigv4_out_t;

/**
 * Signs one request (header-based auth).
 *
 * url: borrowed; "http(s)://host[:port]/path?query", exactly as it will be
 * sent: printable ASCII only (no space, no raw UTF-8: percent-encode them),
 * no userinfo, no "#fragment", valid %XX escapes. The sender must not rewrite
 * the path (libcurl: set CURLOPT_PATH_AS_IS). The canonical query is built by
 * decoding and re-encoding every key and value the AWS way (RFC 3986
 * unreserved kept, everything else %XX, '+' is a literal plus) and sorting by
 * key, then value.
 *
 * headers: borrowed, NULL-terminated "Name: value" lines: exactly the headers
 * that will be sent, never a transport directive (curl's "Expect:"). Names
 * are RFC 9110 tokens; values without CR/LF; all are signed (names
 * lowercased, values trimmed and inner runs of blanks collapsed, repeated
 * names joined with ','). Host is derived from the url (lowercase, port only
 * when not the scheme's default) and returned in out->host when absent.
 * Authorization, X-Amz-Date, X-Amz-Security-Token and X-Amz-Content-Sha256
 * are added here and refused in `headers` (SL_EINVAL).
 *
 * payload_sha256_hex: 64 lowercase hex chars of the body's SHA-256
 * (sl_sha256_hex), SL_SIGV4_UNSIGNED_PAYLOAD (S3 only), or NULL for an empty
 * body. now: the signing time (UTC seconds). flags: SL_SIGV4_*.
 *
 * Returns 0 and fills *out (borrowed, owned by the caller); SL_EINVAL for a
 * malformed argument, SL_ETOOBIG past a limit above, SL_ENOMEM. On error *out
 * holds no header (n_headers 0).
 */
int sl_sigv4_sign(const sl_sigv4_creds_t *c, const char *method, const char *url,
                  const char *const *headers, const char *payload_sha256_hex, time_t now,
                  unsigned flags, sl_sigv4_out_t *out);

/**
 * A presigned URL (query-string auth, UNSIGNED-PAYLOAD, signed header: host)
 * valid for expires_s seconds (1..SL_SIGV4_EXPIRES_MAX) from now. url as in
 * sl_sigv4_sign(), without X-Amz-* parameters of its own; it is sent with the
 * Host derived from it. Writes "url?[its query&]X-Amz-Algorithm=...&
 * X-Amz-Signature=<hex>" into out[cap] (borrowed). 0, SL_EINVAL, SL_ETOOBIG
 * (cap too small or a limit), SL_ENOMEM.
 */
int sl_sigv4_presign(const sl_sigv4_creds_t *c, const char *method, const char *url, long expires_s,
                     time_t now, unsigned flags, char *out, size_t cap);

#endif
