/*
 * multipart.c — a streaming multipart/form-data parser (RFC 7578, RFC 2046 §5.1).
 *
 * The HTTP layer feeds a request body here in whatever chunks arrive; the
 * parser calls back per part (headers, data runs, end). Part data is never
 * buffered: the only bytes held between feeds are a prefix of the delimiter
 * "\r\n--boundary", and since that prefix is known, it is not even copied —
 * the count of matched bytes is the whole state. Design notes, the state
 * machine and the limits are in docs/internals/multipart.md.
 */
#include "multipart.h"
#include "err.h"

#include <stdlib.h>
#include <string.h>

/* "\r\n--" + boundary. */
#define DELIM_MAX (4 + SL_MULTIPART_MAX_BOUNDARY)
/* Decoded header strings (name, filename, filename*, content type) each come
 * from a disjoint region of the header block and never grow when decoded, so
 * the block size plus one NUL per string bounds them. */
#define ARENA_SLACK 8
#define HDR_CAP_MIN 512 /* the header buffer's first size; it doubles as needed */

enum {
    S_PREAMBLE,   /* before the first delimiter: bytes are discarded */
    S_DELIM_TAIL, /* just after "--boundary": "--", padding or CRLF */
    S_CLOSE_DASH, /* after "--boundary-": expect the second '-' */
    S_PADDING,    /* transport padding (SP/HT) before the CRLF */
    S_DELIM_LF,   /* after the delimiter line's CR: expect LF */
    S_HEADERS,    /* collecting a part's header block */
    S_BODY,       /* part data, scanning for the next delimiter */
    S_EPILOGUE,   /* after the close delimiter: bytes are discarded */
};

struct sl_multipart_s {
    sl_multipart_cbs_t cbs;
    void *arg;
    int state;
    int err;           /* sticky: 0 or the first SL_E* returned */
    int done;          /* the close delimiter was parsed */
    int in_part;       /* a part_begin_cb was called without its part_end_cb yet */
    size_t dlen;       /* strlen(delim) */
    size_t held;       /* bytes of delim matched at the end of the last feed */
    size_t virt;       /* of those, how many were never in the input (see scan()) */
    size_t hlen;       /* bytes in hdr */
    size_t line_start; /* offset in hdr of the line being collected */
    size_t alen;       /* bytes used in arena */
    size_t acap;       /* arena's size */
    /*
     * Owned; allocated when a header block starts and freed once its
     * part_begin_cb returned, so a parser in a part's data holds only this
     * struct. Grows by doubling up to the block's limit; at the blank line it
     * also takes the arena (decoded strings), right after the block.
     */
    char *hdr;
    size_t hcap;
    char *arena; /* hdr + hlen while the block is parsed, else NULL */
    char delim[DELIM_MAX + 1];
};

/* Makes room for `need` bytes in hdr (need <= the limit plus the arena). */
static int hdr_reserve(sl_multipart_t *mp, size_t need)
{
    if (need <= mp->hcap)
        return 0;
    size_t cap = mp->hcap ? mp->hcap : HDR_CAP_MIN;
    while (cap < need)
        cap *= 2;
    char *h = realloc(mp->hdr, cap);
    if (h == NULL)
        return SL_ENOMEM;
    mp->hdr = h;
    mp->hcap = cap;
    return 0;
}

static void hdr_release(sl_multipart_t *mp)
{
    free(mp->hdr);
    mp->hdr = mp->arena = NULL;
    mp->hcap = mp->acap = mp->alen = 0;
}

/* ---- character classes ---- */

static int is_alnum(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* RFC 7230 tchar. */
static int is_tchar(unsigned char c)
{
    return is_alnum(c) || (c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/* RFC 2046 bchars (space included; it may not be last). */
static int is_bchar(unsigned char c)
{
    return is_alnum(c) || (c != 0 && strchr("'()+_,-./:=? ", c) != NULL);
}

static int is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static int lower(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

/* Case-insensitive compare of s[0..n) with the NUL-terminated lowercase lit. */
static int ieq(const char *s, size_t n, const char *lit)
{
    size_t i;
    for (i = 0; i < n; i++) {
        if (lit[i] == '\0' || lower((unsigned char)s[i]) != (unsigned char)lit[i])
            return 0;
    }
    return lit[i] == '\0';
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (unsigned char)lower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static int boundary_valid(const char *b, size_t n)
{
    if (n < 1 || n > SL_MULTIPART_MAX_BOUNDARY || b[n - 1] == ' ')
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_bchar((unsigned char)b[i]))
            return 0;
    }
    return 1;
}

/* ---- a tiny cursor over a header value (s[pos..end)) ---- */

typedef struct {
    const char *s;
    size_t pos, end;
} cur_t;

static void skip_ows(cur_t *c)
{
    while (c->pos < c->end && is_ows((unsigned char)c->s[c->pos]))
        c->pos++;
}

/* Reads a token; returns its length (0 if none). */
static size_t read_token(cur_t *c, const char **tok)
{
    size_t start = c->pos;
    while (c->pos < c->end && is_tchar((unsigned char)c->s[c->pos]))
        c->pos++;
    *tok = c->s + start;
    return c->pos - start;
}

/*
 * Reads a token or a quoted-string (RFC 7230 §3.2.6: backslash quotes the next
 * byte) into out[0..outlen) without a NUL; returns the decoded length, or -1
 * if the value is missing, unterminated or longer than outlen.
 */
static long read_value(cur_t *c, char *out, size_t outlen)
{
    size_t n = 0;
    if (c->pos < c->end && c->s[c->pos] == '"') {
        c->pos++;
        for (;;) {
            if (c->pos >= c->end)
                return -1;
            char ch = c->s[c->pos++];
            if (ch == '"')
                break;
            if (ch == '\\') {
                if (c->pos >= c->end)
                    return -1;
                ch = c->s[c->pos++];
            }
            if (n >= outlen)
                return -1;
            out[n++] = ch;
        }
        return (long)n;
    }
    const char *tok;
    size_t tlen = read_token(c, &tok);
    if (tlen == 0 || tlen > outlen)
        return -1;
    memcpy(out, tok, tlen);
    return (long)tlen;
}

/*
 * Walks "; name=value" parameters (RFC 7231 §3.1.1.1, also the shape of
 * Content-Disposition parameters, RFC 6266 §4.1). Each value is decoded into
 * sink->buf (at most sink->len - 1 bytes, leaving room for a NUL the callee
 * may add), then fn(ctx, name, nlen, value, vlen) is called; fn may advance
 * the sink to keep the value. Returns 0, or -1 on a syntax error or if fn
 * returns non-zero. A trailing ';' is tolerated.
 */
typedef struct {
    char *buf;
    size_t len;
} sink_t;

typedef int (*param_fn)(void *ctx, const char *name, size_t nlen, char *val, size_t vlen);

static int walk_params(cur_t *c, sink_t *sink, param_fn fn, void *ctx)
{
    for (;;) {
        skip_ows(c);
        if (c->pos >= c->end)
            return 0;
        if (c->s[c->pos] != ';')
            return -1;
        c->pos++;
        skip_ows(c);
        if (c->pos >= c->end)
            return 0;
        const char *name;
        size_t nlen = read_token(c, &name);
        if (nlen == 0)
            return -1;
        skip_ows(c);
        if (c->pos >= c->end || c->s[c->pos] != '=')
            return -1;
        c->pos++;
        skip_ows(c);
        if (sink->len == 0)
            return -1;
        long vlen = read_value(c, sink->buf, sink->len - 1);
        if (vlen < 0)
            return -1;
        if (fn(ctx, name, nlen, sink->buf, (size_t)vlen) != 0)
            return -1;
    }
}

/* ---- sl_multipart_boundary ---- */

typedef struct {
    char *out;
    size_t outlen;
    long len; /* -1 until seen */
} bparam_t;

static int boundary_param(void *ctx, const char *name, size_t nlen, char *val, size_t vlen)
{
    bparam_t *bp = ctx;
    if (!ieq(name, nlen, "boundary"))
        return 0;
    if (bp->len >= 0 || !boundary_valid(val, vlen) || vlen + 1 > bp->outlen)
        return -1;
    memcpy(bp->out, val, vlen);
    bp->out[vlen] = '\0';
    bp->len = (long)vlen;
    return 0;
}

int sl_multipart_boundary(const char *content_type, char *out, size_t outlen)
{
    if (content_type == NULL || out == NULL || outlen == 0)
        return SL_EINVAL;
    cur_t c = {content_type, 0, strlen(content_type)};
    const char *tok;
    size_t n;
    /* Parameter values are at most a header long; 256 covers any valid
     * boundary (70) with room for other parameters we skip. Longer values of
     * other parameters are rejected rather than silently truncated. */
    char val[256];
    bparam_t bp = {out, outlen, -1};

    skip_ows(&c);
    n = read_token(&c, &tok);
    if (!ieq(tok, n, "multipart") || c.pos >= c.end || c.s[c.pos] != '/')
        goto fail;
    c.pos++;
    n = read_token(&c, &tok);
    if (!ieq(tok, n, "form-data"))
        goto fail;
    sink_t sink = {val, sizeof(val)};
    if (walk_params(&c, &sink, boundary_param, &bp) != 0 || bp.len < 0)
        goto fail;
    return (int)bp.len;
fail:
    out[0] = '\0';
    return SL_EINVAL;
}

/* ---- parser lifetime ---- */

sl_multipart_t *sl_multipart_new(const char *boundary, const sl_multipart_cbs_t *cbs, void *arg)
{
    if (boundary == NULL || cbs == NULL)
        return NULL;
    size_t blen = strnlen(boundary, SL_MULTIPART_MAX_BOUNDARY + 1);
    if (!boundary_valid(boundary, blen))
        return NULL;
    sl_multipart_t *mp = calloc(1, sizeof(*mp));
    if (mp == NULL)
        return NULL;
    mp->cbs = *cbs;
    mp->arg = arg;
    memcpy(mp->delim, "\r\n--", 4);
    memcpy(mp->delim + 4, boundary, blen);
    mp->dlen = 4 + blen;
    mp->delim[mp->dlen] = '\0';
    /* RFC 2046 §5.1.1: the first delimiter may open the body without a
     * preceding CRLF. Pretend the CRLF was seen; virt marks it as not data. */
    mp->state = S_PREAMBLE;
    mp->held = 2;
    mp->virt = 2;
    return mp;
}

void sl_multipart_free(sl_multipart_t *mp)
{
    if (mp)
        free(mp->hdr);
    free(mp);
}

int sl_multipart_done(const sl_multipart_t *mp)
{
    return mp != NULL && mp->done;
}

/* ---- callbacks ---- */

static int emit_data(sl_multipart_t *mp, const char *d, size_t n)
{
    if (n == 0 || mp->state == S_PREAMBLE)
        return 0;
    if (mp->cbs.part_data_cb != NULL && mp->cbs.part_data_cb(mp->arg, d, n) != 0)
        return SL_ECANCELED;
    return 0;
}

static int end_part(sl_multipart_t *mp)
{
    if (!mp->in_part)
        return 0;
    mp->in_part = 0;
    if (mp->cbs.part_end_cb != NULL && mp->cbs.part_end_cb(mp->arg) != 0)
        return SL_ECANCELED;
    return 0;
}

/* ---- body / preamble scanning ---- */

/*
 * Scans p[0..len) for the delimiter, emitting data (or discarding preamble)
 * up to it. The delimiter is the only place '\r' can start a match, and '\r'
 * occurs nowhere else in "\r\n--boundary" (bchars exclude it), so a failed
 * partial match never hides a second candidate inside it: the matched bytes
 * are plain data and the scan resumes at the byte that broke the match.
 * Sets *used to the bytes consumed.
 */
static int scan(sl_multipart_t *mp, const char *p, size_t len, size_t *used)
{
    const char *delim = mp->delim;
    size_t dlen = mp->dlen;
    size_t i = 0;
    int rc;

    if (mp->held > 0) {
        while (mp->held < dlen && i < len && p[i] == delim[mp->held]) {
            mp->held++;
            i++;
        }
        if (mp->held == dlen) {
            mp->held = mp->virt = 0;
            mp->state = S_DELIM_TAIL;
            *used = i;
            return 0;
        }
        if (i == len) {
            *used = len;
            return 0;
        }
        /* Mismatch: the held bytes were data after all (p[i] is rescanned). */
        size_t h = mp->held, v = mp->virt;
        mp->held = mp->virt = 0;
        if ((rc = emit_data(mp, delim + v, h - v)) != 0)
            return rc;
    }

    /*
     * A whole delimiter first, with memmem (a skip search: it looks at a
     * fraction of the bytes, where stopping at every '\r' of binary data
     * meant a memchr and a memcmp per ~256 bytes). Without one, only the
     * last dlen-1 bytes can hold the start of a delimiter cut by the feed's
     * end; a candidate starts with '\r'.
     */
    size_t start = i;
    const char *hit = len - i >= dlen ? memmem(p + i, len - i, delim, dlen) : NULL;
    if (hit) {
        size_t j = (size_t)(hit - p);
        if ((rc = emit_data(mp, p + start, j - start)) != 0)
            return rc;
        mp->state = S_DELIM_TAIL;
        *used = j + dlen;
        return 0;
    }
    if (len - i > dlen - 1)
        i = len - (dlen - 1);
    while (i < len) {
        const char *cr = memchr(p + i, '\r', len - i);
        if (cr == NULL)
            break;
        size_t j = (size_t)(cr - p);
        size_t m = len - j; /* < dlen: no whole delimiter is left */
        if (memcmp(p + j, delim, m) == 0) {
            if ((rc = emit_data(mp, p + start, j - start)) != 0)
                return rc;
            mp->held = m; /* a delimiter prefix ends the feed: hold it */
            *used = len;
            return 0;
        }
        i = j + 1;
    }
    *used = len;
    return emit_data(mp, p + start, len - start);
}

/* ---- part headers ---- */

typedef struct {
    sl_multipart_t *mp;
    sink_t sink; /* the arena's free tail */
    char *name, *filename, *filename_ext;
} disp_t;

/* Copies s[0..n) into the arena, NUL-terminated. */
static const char *arena_put(sl_multipart_t *mp, const char *s, size_t n)
{
    if (n + 1 > mp->acap - mp->alen)
        return NULL; /* cannot happen given the arena's size; checked anyway */
    char *d = mp->arena + mp->alen;
    memcpy(d, s, n);
    d[n] = '\0';
    mp->alen += n + 1;
    return d;
}

/* Keeps name, filename and filename* (decoded straight into the arena's free
 * tail, then committed); other parameters are parsed and dropped. */
static int disp_param(void *ctx, const char *name, size_t nlen, char *val, size_t vlen)
{
    disp_t *d = ctx;
    char **slot;
    if (ieq(name, nlen, "name"))
        slot = &d->name;
    else if (ieq(name, nlen, "filename"))
        slot = &d->filename;
    else if (ieq(name, nlen, "filename*"))
        slot = &d->filename_ext;
    else
        return 0;
    if (*slot != NULL)
        return -1;    /* a repeated parameter is ambiguous: reject */
    val[vlen] = '\0'; /* walk_params left room */
    *slot = val;
    d->mp->alen += vlen + 1;
    d->sink.buf += vlen + 1;
    d->sink.len -= vlen + 1;
    return 0;
}

/*
 * Decodes an RFC 5987 ext-value ("UTF-8'lang'percent%20encoded") in place.
 * Returns it, or NULL if the charset is not UTF-8 or the encoding is bad; the
 * caller then falls back to filename= (RFC 6266 §4.3).
 */
static const char *decode_ext_value(char *s)
{
    char *q1 = strchr(s, '\'');
    if (q1 == NULL || !ieq(s, (size_t)(q1 - s), "utf-8"))
        return NULL;
    char *q2 = strchr(q1 + 1, '\'');
    if (q2 == NULL)
        return NULL;
    char *in = q2 + 1, *out = s;
    while (*in != '\0') {
        if (*in == '%') {
            int hi = hexval((unsigned char)in[1]);
            int lo = hi < 0 ? -1 : hexval((unsigned char)in[2]);
            if (lo < 0 || (hi == 0 && lo == 0))
                return NULL;
            *out++ = (char)(hi * 16 + lo);
            in += 3;
        } else {
            *out++ = *in++;
        }
    }
    *out = '\0';
    return s;
}

/* Content-Disposition: form-data *( ";" param ) (RFC 7578 §4.2). */
static int parse_disposition(sl_multipart_t *mp, const char *v, size_t n, sl_multipart_part_t *part)
{
    cur_t c = {v, 0, n};
    const char *tok;
    size_t tlen = read_token(&c, &tok);
    disp_t d = {mp, {mp->arena + mp->alen, mp->acap - mp->alen}, NULL, NULL, NULL};

    if (!ieq(tok, tlen, "form-data"))
        return SL_EPROTO;
    if (walk_params(&c, &d.sink, disp_param, &d) != 0)
        return SL_EPROTO;
    part->name = d.name;
    part->filename = d.filename;
    if (d.filename_ext != NULL) {
        const char *ext = decode_ext_value(d.filename_ext);
        if (ext != NULL)
            part->filename = ext;
    }
    return 0;
}

/*
 * Parses the complete header block hdr[0..hlen), which ends with an empty
 * line. Every line ends in CRLF (checked as lines arrived); obs-fold
 * continuation lines are joined to the previous line (RFC 7230 §3.2.4).
 */
static int parse_headers(sl_multipart_t *mp, sl_multipart_part_t *part)
{
    size_t n = mp->hlen;
    int have_disp = 0, have_type = 0;

    memset(part, 0, sizeof(*part));
    if (hdr_reserve(mp, n + n + ARENA_SLACK) != 0)
        return SL_ENOMEM;
    char *h = mp->hdr;
    mp->arena = h + n;
    mp->acap = n + ARENA_SLACK;
    mp->alen = 0;
    if (memchr(h, '\0', n) != NULL)
        return SL_EPROTO;
    if (is_ows((unsigned char)h[0]))
        return SL_EPROTO; /* a continuation with nothing to continue */
    for (size_t i = 0; i + 2 < n; i++) {
        if (h[i] == '\r' && h[i + 1] != '\n')
            return SL_EPROTO; /* bare CR */
        if (h[i] == '\r' && is_ows((unsigned char)h[i + 2])) {
            h[i] = ' ';
            h[i + 1] = ' ';
        }
    }

    size_t pos = 0;
    while (pos < n) {
        const char *eol = memchr(h + pos, '\r', n - pos);
        size_t end = (size_t)(eol - h); /* every line ends in CRLF */
        if (end == pos)
            break; /* the empty line that ends the block */
        const char *colon = memchr(h + pos, ':', end - pos);
        if (colon == NULL)
            return SL_EPROTO;
        size_t nlen = (size_t)(colon - (h + pos));
        cur_t nc = {h + pos, 0, nlen};
        const char *name;
        if (read_token(&nc, &name) != nlen || nlen == 0)
            return SL_EPROTO; /* no space allowed before ':' (RFC 7230 §3.2.4) */
        size_t vs = (size_t)(colon - h) + 1, ve = end;
        while (vs < ve && is_ows((unsigned char)h[vs]))
            vs++;
        while (ve > vs && is_ows((unsigned char)h[ve - 1]))
            ve--;
        if (ieq(name, nlen, "content-disposition")) {
            if (have_disp++)
                return SL_EPROTO;
            if (parse_disposition(mp, h + vs, ve - vs, part) != 0)
                return SL_EPROTO;
        } else if (ieq(name, nlen, "content-type")) {
            if (have_type++)
                return SL_EPROTO;
            part->content_type = arena_put(mp, h + vs, ve - vs);
            if (part->content_type == NULL)
                return SL_EPROTO;
        }
        pos = end + 2;
    }
    return have_disp ? 0 : SL_EPROTO;
}

/*
 * Collects header lines into hdr until the empty line. Lines are found with
 * memchr('\n') and copied whole, so this is not byte-at-a-time.
 */
static int headers(sl_multipart_t *mp, const char *p, size_t len, size_t *used)
{
    size_t i = 0;
    while (i < len) {
        const char *nl = memchr(p + i, '\n', len - i);
        size_t end = nl != NULL ? (size_t)(nl - p) + 1 : len;
        size_t n = end - i;
        if (n > SL_MULTIPART_MAX_HEADERS - mp->hlen)
            return SL_EPROTO; /* header block too large */
        if (hdr_reserve(mp, mp->hlen + n) != 0)
            return SL_ENOMEM;
        memcpy(mp->hdr + mp->hlen, p + i, n);
        mp->hlen += n;
        i = end;
        if (nl == NULL)
            break;
        if (mp->hlen - mp->line_start < 2 || mp->hdr[mp->hlen - 2] != '\r')
            return SL_EPROTO; /* bare LF: CRLF is required */
        if (mp->hlen - mp->line_start > 2) {
            mp->line_start = mp->hlen;
            continue;
        }
        /* The empty line: the block is complete. */
        sl_multipart_part_t part;
        int rc = parse_headers(mp, &part);
        if (rc != 0)
            return rc;
        mp->in_part = 1;
        mp->state = S_BODY;
        /* The CRLF that ended the headers may double as the delimiter's own
         * CRLF when the part has no data at all (RFC 2046 body-part :=
         * MIME-part-headers [CRLF *OCTET]); held the same virtual way. */
        mp->held = 2;
        mp->virt = 2;
        *used = i;
        rc = mp->cbs.part_begin_cb != NULL ? mp->cbs.part_begin_cb(mp->arg, &part) : 0;
        hdr_release(mp); /* the part's strings were borrowed until here */
        return rc != 0 ? SL_ECANCELED : 0;
    }
    *used = i;
    return 0;
}

/* ---- the delimiter line and the driver ---- */

static int delim_line_done(sl_multipart_t *mp)
{
    int rc = end_part(mp);
    mp->state = S_HEADERS;
    mp->hlen = 0;
    mp->line_start = 0;
    return rc;
}

int sl_multipart_feed(sl_multipart_t *mp, const char *data, size_t len)
{
    if (mp == NULL)
        return SL_EINVAL;
    if (mp->err != 0)
        return mp->err;
    if (data == NULL && len > 0)
        return SL_EINVAL;

    size_t i = 0;
    int rc = 0;
    while (i < len && rc == 0) {
        size_t used = 1;
        unsigned char c = (unsigned char)data[i];
        switch (mp->state) {
        case S_PREAMBLE:
        case S_BODY:
            rc = scan(mp, data + i, len - i, &used);
            break;
        case S_HEADERS:
            rc = headers(mp, data + i, len - i, &used);
            break;
        case S_DELIM_TAIL:
            if (c == '-')
                mp->state = S_CLOSE_DASH;
            else if (is_ows(c))
                mp->state = S_PADDING;
            else if (c == '\r')
                mp->state = S_DELIM_LF;
            else
                rc = SL_EPROTO;
            break;
        case S_CLOSE_DASH:
            if (c != '-') {
                rc = SL_EPROTO;
                break;
            }
            /* "--boundary--": the rest (padding, CRLF, epilogue) is ignored,
             * which also makes a missing final CRLF harmless. */
            mp->state = S_EPILOGUE;
            mp->done = 1;
            rc = end_part(mp);
            break;
        case S_PADDING:
            if (c == '\r')
                mp->state = S_DELIM_LF;
            else if (!is_ows(c))
                rc = SL_EPROTO;
            break;
        case S_DELIM_LF:
            rc = c == '\n' ? delim_line_done(mp) : SL_EPROTO;
            break;
        case S_EPILOGUE:
        default:
            used = len - i;
            break;
        }
        i += used;
    }
    if (rc != 0)
        mp->err = rc;
    return rc;
}
