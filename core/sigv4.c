/*
 * sigv4.c — AWS Signature Version 4 (see sigv4.h and docs/internals/curl.md).
 *
 * The four steps of AWS's "Signature Version 4 signing process":
 *   1. canonical request: METHOD \n canonical URI \n canonical query \n
 *      canonical headers (each "name:value\n") \n signed headers \n payload hash
 *   2. string to sign: "AWS4-HMAC-SHA256" \n amz date \n scope \n hex(sha256(1))
 *      with scope "YYYYMMDD/region/service/aws4_request"
 *   3. signing key: HMAC chain "AWS4"+secret -> date -> region -> service ->
 *      "aws4_request"
 *   4. signature: hex(HMAC(key, 2))
 * Every intermediate string lives in one bounded buffer (strbuf_t); running
 * past a limit is SL_ETOOBIG, never a truncation.
 */
#include "sigv4.h"
#include "crypto.h"
#include "err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define METHOD_MAX 16
#define AMZ_DATE_LEN 16 /* YYYYMMDDTHHMMSSZ */
#define ALGORITHM "AWS4-HMAC-SHA256"
#define TERMINATOR "aws4_request"

/* ---- bounded string buffer ---- */

typedef struct strbuf_s {
    char *p;
    size_t len, cap; /* cap includes the NUL */
} strbuf_t;

static int sb_add(strbuf_t *b, const char *s, size_t n)
{
    if (n >= b->cap - b->len)
        return SL_ETOOBIG;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

static int sb_str(strbuf_t *b, const char *s)
{
    return sb_add(b, s, strlen(s));
}

static int sb_ch(strbuf_t *b, char ch)
{
    return sb_add(b, &ch, 1);
}

/* ---- character classes and percent-encoding (RFC 3986, AWS UriEncode) ---- */

static int is_unreserved(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_' || ch == '~';
}

static int is_tchar(unsigned char ch) /* RFC 9110 token */
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           (ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL);
}

/* Printable ASCII without space: what a request target may carry unencoded. */
static int is_urlchar(unsigned char ch)
{
    return ch > 0x20 && ch < 0x7f;
}

/* Appends byte ch the AWS way: unreserved as is, '/' as is when keep_slash, else %XX. */
static int enc_byte(strbuf_t *b, unsigned char ch, int keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    if (is_unreserved(ch) || (keep_slash && ch == '/'))
        return sb_ch(b, (char)ch);
    char e[3] = {'%', hex[ch >> 4], hex[ch & 15]};
    return sb_add(b, e, 3);
}

/* Encodes s[0..n) byte by byte (a '%' becomes %25: the "second" encoding). */
static int enc_raw(strbuf_t *b, const char *s, size_t n, int keep_slash)
{
    for (size_t i = 0; i < n; i++) {
        int err = enc_byte(b, (unsigned char)s[i], keep_slash);
        if (err)
            return err;
    }
    return 0;
}

/*
 * Re-encodes an already percent-encoded s[0..n) in the canonical form: each
 * %XX is decoded and encoded again (so %7e becomes ~ and %2f stays %2F), each
 * other byte is encoded. The result is what AWS computes from the decoded
 * value, whatever escaping the caller chose.
 */
static int enc_normalize(strbuf_t *b, const char *s, size_t n, int keep_slash)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        int slash_ok = keep_slash;
        if (ch == '%') {
            ch = (unsigned char)(sl_hex_digit((unsigned char)s[i + 1]) * 16 +
                                 sl_hex_digit((unsigned char)s[i + 2])); /* checked by parse_url */
            i += 2;
            slash_ok = 0; /* an escaped '/' is data, not a separator */
        }
        int err = enc_byte(b, ch, slash_ok);
        if (err)
            return err;
    }
    return 0;
}

/* ---- the url ---- */

typedef struct url_s {
    int https;
    const char *auth, *path, *query; /* authority (host[:port]), path, query (after '?') */
    size_t auth_len, path_len, query_len;
} url_t;

static int check_escapes(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] == '%' && (i + 2 >= n || sl_hex_digit((unsigned char)s[i + 1]) < 0 ||
                            sl_hex_digit((unsigned char)s[i + 2]) < 0))
            return SL_EINVAL;
    return 0;
}

static int parse_url(const char *url, url_t *u)
{
    size_t n = strlen(url);
    if (n > SL_SIGV4_URL_MAX)
        return SL_ETOOBIG;
    for (size_t i = 0; i < n; i++)
        if (!is_urlchar((unsigned char)url[i]) || url[i] == '#')
            return SL_EINVAL;
    const char *p;
    if (strncasecmp(url, "https://", 8) == 0) {
        u->https = 1;
        p = url + 8;
    } else if (strncasecmp(url, "http://", 7) == 0) {
        u->https = 0;
        p = url + 7;
    } else {
        return SL_EINVAL;
    }
    u->auth = p;
    u->auth_len = strcspn(p, "/?");
    if (u->auth_len == 0 || memchr(p, '@', u->auth_len))
        return SL_EINVAL;
    p += u->auth_len;
    u->path = p;
    u->path_len = strcspn(p, "?");
    p += u->path_len;
    u->query = *p == '?' ? p + 1 : p;
    u->query_len = strlen(u->query);
    if (check_escapes(u->path, u->path_len) || check_escapes(u->query, u->query_len))
        return SL_EINVAL;
    return 0;
}

/* Host header value: lowercase host, ":port" unless the scheme's default. */
static int derive_host(const url_t *u, char *out, size_t cap)
{
    size_t n = u->auth_len;
    const char *a = u->auth;
    const char *colon = NULL;
    for (size_t i = n; i > 0; i--) {
        if (a[i - 1] == ']')
            break;
        if (a[i - 1] == ':') {
            colon = a + i - 1;
            break;
        }
    }
    if (colon) {
        const char *port = colon + 1;
        size_t plen = (size_t)(a + n - port);
        const char *dflt = u->https ? "443" : "80";
        if (plen == 0 || (plen == strlen(dflt) && memcmp(port, dflt, plen) == 0))
            n = (size_t)(colon - a);
    }
    if (n == 0)
        return SL_EINVAL;
    if (n >= cap)
        return SL_ETOOBIG;
    for (size_t i = 0; i < n; i++) {
        char ch = a[i];
        out[i] = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
    }
    out[n] = '\0';
    return 0;
}

/*
 * The canonical URI. Default (every service but S3): RFC 3986 dot segments
 * removed and empty segments dropped (as AWS and botocore do), then each byte
 * encoded, so an escape on the wire is encoded a second time. S3: the path as
 * sent, each escape normalised, encoded once.
 */
static int canonical_uri(strbuf_t *b, const url_t *u, unsigned flags)
{
    if (u->path_len == 0)
        return sb_ch(b, '/');
    if (flags & SL_SIGV4_SINGLE_ENCODE)
        return enc_normalize(b, u->path, u->path_len, 1);

    size_t max = u->path_len / 2 + 2, nseg = 0;
    struct seg {
        const char *s;
        size_t n;
    } *segs = calloc(max, sizeof *segs);
    if (!segs)
        return SL_ENOMEM;
    const char *p = u->path, *end = u->path + u->path_len;
    while (p < end) {
        const char *e = memchr(p, '/', (size_t)(end - p));
        if (!e)
            e = end;
        size_t n = (size_t)(e - p);
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            if (nseg)
                nseg--;
        } else if (n > 0 && !(n == 1 && p[0] == '.')) {
            segs[nseg].s = p;
            segs[nseg].n = n;
            nseg++;
        }
        p = e + 1;
    }
    int err = 0;
    if (u->path[0] == '/')
        err = sb_ch(b, '/');
    for (size_t i = 0; i < nseg && !err; i++) {
        if (i > 0)
            err = sb_ch(b, '/');
        if (!err)
            err = enc_raw(b, segs[i].s, segs[i].n, 0);
    }
    if (!err && nseg > 0 && end[-1] == '/')
        err = sb_ch(b, '/');
    free(segs);
    return err;
}

typedef struct qparam_s {
    const char *k, *v; /* canonical key and value, NUL-terminated, in the arena */
} qparam_t;

static int qparam_cmp(const void *a, const void *b)
{
    const qparam_t *x = a, *y = b;
    int c = strcmp(x->k, y->k);
    return c ? c : strcmp(x->v, y->v);
}

/*
 * The canonical query: every key and value decoded and re-encoded, sorted by
 * key then value (byte order), "k=v" joined by '&'; a key without '=' gets an
 * empty value; empty pieces ("a&&b") are dropped. A literal '+' is refused:
 * some AWS services read it as a space, others as a plus, so it cannot be
 * signed unambiguously (send %2B or %20).
 */
static int canonical_query(strbuf_t *b, const char *q, size_t qlen)
{
    if (qlen == 0)
        return 0;
    if (memchr(q, '+', qlen))
        return SL_EINVAL;
    size_t count = 1;
    for (size_t i = 0; i < qlen; i++)
        count += q[i] == '&';
    if (count > SL_SIGV4_MAX_QUERY_PARAMS)
        return SL_ETOOBIG;
    int err = SL_ENOMEM;
    qparam_t *ps = calloc(count, sizeof *ps);
    strbuf_t arena = {.cap = 3 * qlen + 2 * count + 1};
    arena.p = malloc(arena.cap);
    if (!ps || !arena.p)
        goto out;
    size_t n = 0;
    const char *p = q, *end = q + qlen;
    while (p < end) {
        const char *e = memchr(p, '&', (size_t)(end - p));
        if (!e)
            e = end;
        if (e > p) {
            const char *eq = memchr(p, '=', (size_t)(e - p));
            const char *kend = eq ? eq : e, *v = eq ? eq + 1 : e;
            const char *k = arena.p + arena.len; /* the arena never moves */
            if ((err = enc_normalize(&arena, p, (size_t)(kend - p), 0)) != 0 ||
                (err = sb_ch(&arena, '\0')) != 0)
                goto out;
            const char *val = arena.p + arena.len;
            if ((err = enc_normalize(&arena, v, (size_t)(e - v), 0)) != 0 ||
                (err = sb_ch(&arena, '\0')) != 0)
                goto out;
            ps[n].k = k;
            ps[n].v = val;
            n++;
        }
        p = e + 1;
    }
    qsort(ps, n, sizeof *ps, qparam_cmp);
    err = 0;
    for (size_t i = 0; i < n && !err; i++) {
        if (i > 0)
            err = sb_ch(b, '&');
        if (!err)
            err = sb_str(b, ps[i].k);
        if (!err)
            err = sb_ch(b, '=');
        if (!err)
            err = sb_str(b, ps[i].v);
    }
out:
    free(ps);
    free(arena.p);
    return err;
}

/* ---- headers ---- */

typedef struct hdr_s {
    const char *name;  /* lowercase */
    const char *value; /* trimmed, blanks collapsed */
    size_t order;
} hdr_t;

static int hdr_cmp(const void *a, const void *b)
{
    const hdr_t *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    if (c)
        return c;
    return x->order < y->order ? -1 : x->order > y->order;
}

static int is_blank(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* Headers sl_sigv4 adds itself: the caller may not pass them. */
static int is_reserved(const char *lname)
{
    static const char *const names[] = {"authorization", "x-amz-date", "x-amz-security-token",
                                        "x-amz-content-sha256", NULL};
    for (size_t i = 0; names[i]; i++)
        if (strcmp(lname, names[i]) == 0)
            return 1;
    return 0;
}

/* Parses "Name: value" into h (strings in arena). */
static int parse_header(const char *line, strbuf_t *arena, hdr_t *h)
{
    const char *colon = strchr(line, ':');
    if (!colon || colon == line)
        return SL_EINVAL;
    size_t nlen = (size_t)(colon - line);
    for (size_t i = 0; i < nlen; i++)
        if (!is_tchar((unsigned char)line[i]))
            return SL_EINVAL;
    const char *v = colon + 1;
    if (strpbrk(v, "\r\n"))
        return SL_EINVAL;
    h->name = arena->p + arena->len; /* the arena is sized up front and never moves */
    for (size_t i = 0; i < nlen; i++) {
        char ch = line[i];
        int err = sb_ch(arena, (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch);
        if (err)
            return err;
    }
    int err = sb_ch(arena, '\0');
    if (err)
        return err;
    h->value = arena->p + arena->len;
    while (is_blank(*v))
        v++;
    int pending_space = 0;
    for (; *v; v++) {
        if (is_blank(*v)) {
            pending_space = 1;
            continue;
        }
        if (pending_space && (err = sb_ch(arena, ' ')) != 0)
            return err;
        pending_space = 0;
        if ((err = sb_ch(arena, *v)) != 0)
            return err;
    }
    if ((err = sb_ch(arena, '\0')) != 0)
        return err;
    return 0;
}

/* ---- credentials and scope ---- */

static int check_part(const char *s, size_t max, int (*ok)(unsigned char))
{
    if (!s || !*s)
        return SL_EINVAL;
    size_t n = strlen(s);
    if (n > max)
        return SL_ETOOBIG;
    for (size_t i = 0; i < n; i++)
        if (!ok((unsigned char)s[i]))
            return SL_EINVAL;
    return 0;
}

static int keyid_char(unsigned char ch)
{
    return is_urlchar(ch) && !strchr(",/;=", ch);
}

static int scope_char(unsigned char ch)
{
    return is_unreserved(ch) && ch != '~';
}

static int printable(unsigned char ch)
{
    return ch >= 0x20 && ch < 0x7f;
}

static int check_creds(const sl_sigv4_creds_t *c)
{
    int err;
    if (!c)
        return SL_EINVAL;
    if ((err = check_part(c->access_key_id, SL_SIGV4_KEY_ID_MAX, keyid_char)) != 0 ||
        (err = check_part(c->secret_access_key, SL_SIGV4_SECRET_MAX, printable)) != 0 ||
        (err = check_part(c->region, SL_SIGV4_SCOPE_PART_MAX, scope_char)) != 0 ||
        (err = check_part(c->service, SL_SIGV4_SCOPE_PART_MAX, scope_char)) != 0)
        return err;
    if (c->session_token &&
        (err = check_part(c->session_token, SL_SIGV4_TOKEN_MAX, printable)) != 0)
        return err;
    return 0;
}

static int check_method(const char *m)
{
    size_t n = m ? strlen(m) : 0;
    if (n == 0 || n > METHOD_MAX)
        return SL_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (m[i] < 'A' || m[i] > 'Z')
            return SL_EINVAL;
    return 0;
}

static int check_payload(const char *h)
{
    if (strcmp(h, SL_SIGV4_UNSIGNED_PAYLOAD) == 0)
        return 0;
    if (strlen(h) != 64)
        return SL_EINVAL;
    for (size_t i = 0; i < 64; i++)
        if (!((h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f')))
            return SL_EINVAL;
    return 0;
}

static int amz_date(time_t now, char out[AMZ_DATE_LEN + 1])
{
    struct tm tm;
    if (!gmtime_r(&now, &tm) || tm.tm_year + 1900 < 1970 || tm.tm_year + 1900 > 9999)
        return SL_EINVAL;
    return strftime(out, AMZ_DATE_LEN + 1, "%Y%m%dT%H%M%SZ", &tm) == AMZ_DATE_LEN ? 0 : SL_EINVAL;
}

/* scope "YYYYMMDD/region/service/aws4_request" */
static void make_scope(const sl_sigv4_creds_t *c, const char *date, char *out, size_t cap)
{
    snprintf(out, cap, "%.8s/%s/%s/" TERMINATOR, date, c->region, c->service);
}

/* Steps 2-4: from the canonical request to the hex signature. */
static void finish_signature(const sl_sigv4_creds_t *c, const char *date, const char *scope,
                             const strbuf_t *creq, char sig[65])
{
    char creq_hash[65], sts[512]; /* at most 17 + 16 + 1 + scope (151) + 1 + 64 */
    unsigned char k[32];
    unsigned char secret[4 + SL_SIGV4_SECRET_MAX];
    size_t slen = strlen(c->secret_access_key);

    sl_sha256_hex(creq->p, creq->len, creq_hash);
    int n = snprintf(sts, sizeof sts, ALGORITHM "\n%s\n%s\n%s", date, scope, creq_hash);

    memcpy(secret, "AWS4", 4);
    memcpy(secret + 4, c->secret_access_key, slen);
    sl_hmac_sha256(secret, 4 + slen, date, 8, k);
    sl_hmac_sha256(k, sizeof k, c->region, strlen(c->region), k);
    sl_hmac_sha256(k, sizeof k, c->service, strlen(c->service), k);
    sl_hmac_sha256(k, sizeof k, TERMINATOR, strlen(TERMINATOR), k);
    sl_hmac_sha256_hex(k, sizeof k, sts, (size_t)n, sig);
    sl_secure_zero(secret, sizeof secret);
    sl_secure_zero(k, sizeof k);
}

/*
 * Step 1 for header auth, then 2-4. `extra` are the headers added here
 * ("name", "value" pairs, NULL-terminated). Writes the signature and the
 * signed-headers list.
 */
static int sign_request(const sl_sigv4_creds_t *c, const char *method, const url_t *u,
                        const char *query, size_t query_len, const char *const *headers,
                        size_t n_headers, const char *const *extra, const char *payload,
                        const char *date, unsigned flags, char sig[65],
                        char signed_hdrs[SL_SIGV4_SIGNED_HEADERS_MAX + 1], int *host_given)
{
    int err = SL_ENOMEM;
    size_t n_extra = 0, total_in = 0;
    while (extra[2 * n_extra])
        n_extra++;
    for (size_t i = 0; i < n_headers; i++)
        total_in += strlen(headers[i]) + 2;
    strbuf_t creq = {.cap = SL_SIGV4_CANONICAL_MAX + 1};
    strbuf_t arena = {.cap = total_in + 1};
    hdr_t *hs = calloc(n_headers + n_extra + 1, sizeof *hs);
    creq.p = malloc(creq.cap);
    arena.p = malloc(arena.cap);
    if (!hs || !creq.p || !arena.p)
        goto out;

    size_t nh = 0;
    *host_given = 0;
    for (size_t i = 0; i < n_headers; i++, nh++) {
        if ((err = parse_header(headers[i], &arena, &hs[nh])) != 0)
            goto out;
    }
    for (size_t i = 0; i < nh; i++) {
        hs[i].order = i;
        err = SL_EINVAL;
        if (is_reserved(hs[i].name))
            goto out;
        if (strcmp(hs[i].name, "host") == 0) {
            if (*host_given || hs[i].value[0] == '\0')
                goto out; /* two Hosts, or an empty one, cannot be what AWS checks */
            *host_given = 1;
        }
    }
    for (size_t i = 0; i < n_extra; i++, nh++) {
        if (*host_given && strcmp(extra[2 * i], "host") == 0) {
            nh--;
            continue;
        }
        hs[nh].name = extra[2 * i];
        hs[nh].value = extra[2 * i + 1];
        hs[nh].order = nh;
    }
    qsort(hs, nh, sizeof *hs, hdr_cmp);

    /* 1. the canonical request */
    if ((err = sb_str(&creq, method)) != 0 || (err = sb_ch(&creq, '\n')) != 0 ||
        (err = canonical_uri(&creq, u, flags)) != 0 || (err = sb_ch(&creq, '\n')) != 0 ||
        (err = canonical_query(&creq, query, query_len)) != 0 || (err = sb_ch(&creq, '\n')) != 0)
        goto out;
    strbuf_t sh = {.p = signed_hdrs, .cap = SL_SIGV4_SIGNED_HEADERS_MAX + 1};
    signed_hdrs[0] = '\0';
    for (size_t i = 0; i < nh; i++) {
        int first = i == 0 || strcmp(hs[i - 1].name, hs[i].name) != 0;
        int last = i + 1 == nh || strcmp(hs[i + 1].name, hs[i].name) != 0;
        if (first) {
            if ((sh.len && (err = sb_ch(&sh, ';')) != 0) || (err = sb_str(&sh, hs[i].name)) != 0 ||
                (err = sb_str(&creq, hs[i].name)) != 0 || (err = sb_ch(&creq, ':')) != 0)
                goto out;
        } else if ((err = sb_ch(&creq, ',')) != 0) {
            goto out;
        }
        if ((err = sb_str(&creq, hs[i].value)) != 0 || (last && (err = sb_ch(&creq, '\n')) != 0))
            goto out;
    }
    if ((err = sb_ch(&creq, '\n')) != 0 || (err = sb_str(&creq, signed_hdrs)) != 0 ||
        (err = sb_ch(&creq, '\n')) != 0 || (err = sb_str(&creq, payload)) != 0)
        goto out;

    /* 2-4 */
    char scope[3 * SL_SIGV4_SCOPE_PART_MAX];
    make_scope(c, date, scope, sizeof scope);
    finish_signature(c, date, scope, &creq, sig);
    err = 0;
out:
    free(hs);
    free(creq.p);
    free(arena.p);
    return err;
}

static int count_headers(const char *const *headers, size_t *n)
{
    *n = 0;
    if (!headers)
        return 0;
    while (headers[*n]) {
        if (++*n > SL_SIGV4_MAX_HEADERS)
            return SL_ETOOBIG;
    }
    return 0;
}

int sl_sigv4_sign(const sl_sigv4_creds_t *c, const char *method, const char *url,
                  const char *const *headers, const char *payload_sha256_hex, time_t now,
                  unsigned flags, sl_sigv4_out_t *out)
{
    if (!out)
        return SL_EINVAL;
    memset(out, 0, sizeof *out);
    const char *payload = payload_sha256_hex ? payload_sha256_hex : SL_SIGV4_EMPTY_SHA256;
    url_t u;
    size_t nh;
    char date[AMZ_DATE_LEN + 1], host[SL_SIGV4_HOST_MAX + 1];
    char signed_hdrs[SL_SIGV4_SIGNED_HEADERS_MAX + 1];
    int err, host_given = 0;
    if (!url || (flags & ~(unsigned)SL_SIGV4_S3))
        return SL_EINVAL;
    if ((err = check_creds(c)) != 0 || (err = check_method(method)) != 0 ||
        (err = check_payload(payload)) != 0 || (err = count_headers(headers, &nh)) != 0 ||
        (err = parse_url(url, &u)) != 0 || (err = derive_host(&u, host, sizeof host)) != 0 ||
        (err = amz_date(now, date)) != 0)
        return err;

    const char *extra[11];
    size_t e = 0;
    extra[e++] = "host";
    extra[e++] = host;
    extra[e++] = "x-amz-date";
    extra[e++] = date;
    if (flags & SL_SIGV4_CONTENT_SHA256) {
        extra[e++] = "x-amz-content-sha256";
        extra[e++] = payload;
    }
    if (c->session_token) {
        extra[e++] = "x-amz-security-token";
        extra[e++] = c->session_token;
    }
    extra[e++] = NULL;
    extra[e] = NULL;
    err = sign_request(c, method, &u, u.query, u.query_len, headers, nh, extra, payload, date,
                       flags, out->signature, signed_hdrs, &host_given);
    if (err) {
        memset(out, 0, sizeof *out);
        return err;
    }

    char scope[3 * SL_SIGV4_SCOPE_PART_MAX];
    make_scope(c, date, scope, sizeof scope);
    int n =
        snprintf(out->authorization, sizeof out->authorization,
                 "Authorization: " ALGORITHM " Credential=%s/%s, SignedHeaders=%s, Signature=%s",
                 c->access_key_id, scope, signed_hdrs, out->signature);
    if (n < 0 || (size_t)n >= sizeof out->authorization) { /* sized to fit: a bug if hit */
        memset(out, 0, sizeof *out);
        return SL_ETOOBIG;
    }
    snprintf(out->amz_date, sizeof out->amz_date, "X-Amz-Date: %s", date);
    out->headers[out->n_headers++] = out->authorization;
    out->headers[out->n_headers++] = out->amz_date;
    if (!host_given) {
        snprintf(out->host, sizeof out->host, "Host: %s", host);
        out->headers[out->n_headers++] = out->host;
    }
    if (flags & SL_SIGV4_CONTENT_SHA256) {
        snprintf(out->content_sha256, sizeof out->content_sha256, "X-Amz-Content-Sha256: %s",
                 payload);
        out->headers[out->n_headers++] = out->content_sha256;
    }
    if (c->session_token) {
        snprintf(out->security_token, sizeof out->security_token, "X-Amz-Security-Token: %s",
                 c->session_token);
        out->headers[out->n_headers++] = out->security_token;
    }
    return 0;
}

int sl_sigv4_presign(const sl_sigv4_creds_t *c, const char *method, const char *url, long expires_s,
                     time_t now, unsigned flags, char *out, size_t cap)
{
    url_t u;
    char date[AMZ_DATE_LEN + 1], host[SL_SIGV4_HOST_MAX + 1], sig[65];
    char signed_hdrs[SL_SIGV4_SIGNED_HEADERS_MAX + 1];
    char scope[3 * SL_SIGV4_SCOPE_PART_MAX];
    int err, host_given = 0;
    if (!url || !out || cap == 0 || (flags & ~(unsigned)SL_SIGV4_S3) || expires_s < 1 ||
        expires_s > SL_SIGV4_EXPIRES_MAX)
        return SL_EINVAL;
    out[0] = '\0';
    if ((err = check_creds(c)) != 0 || (err = check_method(method)) != 0 ||
        (err = parse_url(url, &u)) != 0 || (err = derive_host(&u, host, sizeof host)) != 0 ||
        (err = amz_date(now, date)) != 0)
        return err;
    if (u.query_len && strstr(u.query, "X-Amz-"))
        return SL_EINVAL;

    /* the url with the auth parameters (all but the signature), encoded */
    strbuf_t b = {.cap = SL_SIGV4_URL_MAX + SL_SIGV4_TOKEN_MAX * 3 + 1024};
    b.p = malloc(b.cap);
    if (!b.p)
        return SL_ENOMEM;
    char cred[SL_SIGV4_KEY_ID_MAX + 4 * SL_SIGV4_SCOPE_PART_MAX];
    make_scope(c, date, scope, sizeof scope);
    snprintf(cred, sizeof cred, "%s/%s", c->access_key_id, scope);
    char num[32];
    snprintf(num, sizeof num, "%ld", expires_s);
    if ((err = sb_str(&b, url)) != 0 || (err = sb_ch(&b, u.query_len ? '&' : '?')) != 0 ||
        (err = sb_str(&b, "X-Amz-Algorithm=" ALGORITHM "&X-Amz-Credential=")) != 0 ||
        (err = enc_raw(&b, cred, strlen(cred), 0)) != 0 ||
        (err = sb_str(&b, "&X-Amz-Date=")) != 0 || (err = sb_str(&b, date)) != 0 ||
        (err = sb_str(&b, "&X-Amz-Expires=")) != 0 || (err = sb_str(&b, num)) != 0)
        goto out;
    if (c->session_token && ((err = sb_str(&b, "&X-Amz-Security-Token=")) != 0 ||
                             (err = enc_raw(&b, c->session_token, strlen(c->session_token), 0))))
        goto out;
    if ((err = sb_str(&b, "&X-Amz-SignedHeaders=host")) != 0)
        goto out;
    const char *q = strchr(b.p, '?') + 1;
    const char *extra[] = {"host", host, NULL, NULL};
    err = sign_request(c, method, &u, q, strlen(q), NULL, 0, extra, SL_SIGV4_UNSIGNED_PAYLOAD, date,
                       flags, sig, signed_hdrs, &host_given);
    if (err)
        goto out;
    if ((err = sb_str(&b, "&X-Amz-Signature=")) != 0 || (err = sb_str(&b, sig)) != 0)
        goto out;
    if (b.len >= cap) {
        err = SL_ETOOBIG;
        goto out;
    }
    memcpy(out, b.p, b.len + 1);
out:
    free(b.p);
    return err;
}
