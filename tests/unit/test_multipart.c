/*
 * test_multipart.c — unit tests for core/multipart.c.
 *
 * Builds bodies with known parts, feeds them whole, split in two at every
 * byte, one byte at a time and in random chunks, and compares what the
 * callbacks reassemble with the originals byte for byte. Then the error
 * paths (limits, malformed delimiters and headers, cancel) and
 * sl_multipart_boundary().
 */
#include "core/err.h"
#include "core/multipart.h"

#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#define BOUNDARY "----SluiceFormBoundary7MA4YWxkTrZu0gW"

/* ---- a growable byte buffer for test bodies and recorded data ---- */

typedef struct {
    char *p;
    size_t len, cap;
} buf_t;

static void buf_add(buf_t *b, const void *d, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (np == NULL) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
        b->p = np;
        b->cap = cap;
    }
    if (n > 0)
        memcpy(b->p + b->len, d, n);
    b->len += n;
}

static void buf_str(buf_t *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void buf_free(buf_t *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* ---- what the callbacks saw ---- */

#define MAX_PARTS 16

typedef struct {
    char name[256], filename[256], ctype[256];
    int has_name, has_filename, has_ctype;
    buf_t data;
    int ended;
} rec_part_t;

typedef struct {
    rec_part_t parts[MAX_PARTS];
    int nparts;
    int begin_calls, data_calls, end_calls;
    int in_part;
    int order_errors; /* data or end outside a part, begin inside one, empty data */
    int cancel_begin; /* cancel at this begin call (1-based), 0 = never */
    int cancel_data;  /* cancel at this data call */
    int cancel_end;   /* cancel at this end call */
} rec_t;

static void copy_opt(char *dst, int *has, const char *src)
{
    *has = src != NULL;
    snprintf(dst, 256, "%s", src != NULL ? src : "");
}

static int begin_cb(void *arg, const sl_multipart_part_t *part)
{
    rec_t *r = arg;
    r->begin_calls++;
    if (r->in_part || r->nparts >= MAX_PARTS)
        r->order_errors++;
    else {
        rec_part_t *p = &r->parts[r->nparts++];
        copy_opt(p->name, &p->has_name, part->name);
        copy_opt(p->filename, &p->has_filename, part->filename);
        copy_opt(p->ctype, &p->has_ctype, part->content_type);
    }
    r->in_part = 1;
    return r->cancel_begin == r->begin_calls;
}

static int data_cb(void *arg, const char *data, size_t len)
{
    rec_t *r = arg;
    r->data_calls++;
    if (!r->in_part || len == 0)
        r->order_errors++;
    else
        buf_add(&r->parts[r->nparts - 1].data, data, len);
    return r->cancel_data == r->data_calls;
}

static int end_cb(void *arg)
{
    rec_t *r = arg;
    r->end_calls++;
    if (!r->in_part)
        r->order_errors++;
    else
        r->parts[r->nparts - 1].ended = 1;
    r->in_part = 0;
    return r->cancel_end == r->end_calls;
}

static const sl_multipart_cbs_t cbs = {begin_cb, data_cb, end_cb};

static void rec_reset(rec_t *r)
{
    for (int i = 0; i < MAX_PARTS; i++)
        buf_free(&r->parts[i].data);
    memset(r, 0, sizeof(*r));
}

/* ---- expected parts and body building ---- */

typedef struct {
    const char *name, *filename, *ctype; /* expected, NULL = absent */
    const char *headers;                 /* raw header lines, each ending CRLF */
    const char *data;
    size_t len;
} part_t;

/* Builds: preamble, delimiters (first one without CRLF if no preamble),
 * headers, data, close delimiter, epilogue. */
static void build_body(buf_t *b, const char *preamble, const part_t *parts, int n,
                       const char *epilogue)
{
    if (preamble != NULL) {
        buf_str(b, preamble);
        buf_str(b, "\r\n");
    }
    for (int i = 0; i < n; i++) {
        if (i > 0)
            buf_str(b, "\r\n");
        buf_str(b, "--" BOUNDARY);
        if (i == 1)
            buf_str(b, " \t "); /* transport padding */
        buf_str(b, "\r\n");
        buf_str(b, parts[i].headers);
        buf_str(b, "\r\n");
        buf_add(b, parts[i].data, parts[i].len);
    }
    buf_str(b, "\r\n--" BOUNDARY "--");
    if (epilogue != NULL)
        buf_str(b, epilogue);
}

static int opt_eq(int has, const char *got, const char *want)
{
    return want == NULL ? !has : (has && strcmp(got, want) == 0);
}

/* Returns NULL if r holds exactly the parts, else what differed first. */
static const char *verify(const rec_t *r, const part_t *parts, int n)
{
    if (r->order_errors != 0)
        return "callback order";
    if (r->nparts != n || r->begin_calls != n || r->end_calls != n)
        return "part count";
    for (int i = 0; i < n; i++) {
        const rec_part_t *p = &r->parts[i];
        if (!opt_eq(p->has_name, p->name, parts[i].name))
            return "name";
        if (!opt_eq(p->has_filename, p->filename, parts[i].filename))
            return "filename";
        if (!opt_eq(p->has_ctype, p->ctype, parts[i].ctype))
            return "content type";
        if (p->data.len != parts[i].len)
            return "data length";
        if (parts[i].len > 0 && memcmp(p->data.p, parts[i].data, parts[i].len) != 0)
            return "data bytes";
        if (!p->ended)
            return "not ended";
    }
    return NULL;
}

/* Feeds body in the chunks given by sizes (cycled; 0 = the rest). Returns
 * the first non-zero feed result, or 0; *done gets sl_multipart_done(). */
static int feed_chunks(rec_t *r, const char *body, size_t len, const size_t *sizes, size_t nsizes,
                       int *done)
{
    sl_multipart_t *mp = sl_multipart_new(BOUNDARY, &cbs, r);
    int rc = 0;
    size_t off = 0, k = 0;
    if (mp == NULL)
        return SL_ENOMEM;
    while (off < len && rc == 0) {
        size_t n = nsizes > 0 ? sizes[k++ % nsizes] : 0;
        if (n == 0 || n > len - off)
            n = len - off;
        rc = sl_multipart_feed(mp, body + off, n);
        off += n;
    }
    *done = sl_multipart_done(mp);
    sl_multipart_free(mp);
    return rc;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

/*
 * Binary data full of delimiter bait: random bytes skewed towards CR, LF, '-'
 * and boundary characters, plus near-miss copies of the delimiter. Ends with
 * a delimiter prefix so that the real delimiter follows a partial match.
 */
static void make_binary(buf_t *b, size_t approx)
{
    static const char *const baits[] = {
        "\r\n--" BOUNDARY,          /* 0: cut below to a strict prefix */
        "--" BOUNDARY,              /* no CRLF before it */
        "\n--" BOUNDARY,            /* no CR */
        "\r--" BOUNDARY,            /* no LF */
        "\r\n-" BOUNDARY,           /* one dash */
        "\r\n--" BOUNDARY,          /* 5: last character changed below */
        "\r\r\n\r\n-\r\n--\r\n---", /* CRs restarting matches */
    };
    while (b->len < approx) {
        uint32_t x = rnd() % 100;
        if (x < 5) {
            int k = (int)(rnd() % (sizeof(baits) / sizeof(baits[0])));
            const char *s = baits[k];
            size_t n = strlen(s);
            if (b->len > 0 && (b->p[b->len - 1] == '\r' || b->p[b->len - 1] == '\n'))
                buf_add(b, "y", 1); /* else "\r" + "\n--B" would be a real delimiter */
            if (k == 0) {
                n = 1 + rnd() % (n - 1); /* a strict prefix: "\r", "\r\n-", ..., "\r\n--BOUNDAR" */
                buf_add(b, s, n);
                buf_add(b, "x", 1);
            } else if (k == 5) {
                buf_add(b, s, n - 1); /* the delimiter with its last char changed */
                buf_add(b, "Z", 1);
            } else {
                buf_add(b, s, n);
            }
        } else if (x < 15) {
            buf_add(b, "\r", 1);
        } else if (x < 25) {
            buf_add(b, "\n", 1);
        } else if (x < 35) {
            buf_add(b, "-", 1);
        } else {
            char c = (char)(rnd() & 0xff);
            buf_add(b, &c, 1);
        }
    }
    buf_add(b, "\0\r\n--" BOUNDARY, 1 + 4 + strlen(BOUNDARY) - 1);
}

/* Offset of the first delimiter in p[0..n), or n if none. */
static size_t find_delim(const char *p, size_t n)
{
    static const char d[] = "\r\n--" BOUNDARY;
    const char *f = memmem(p, n, d, sizeof(d) - 1);
    return f != NULL ? (size_t)(f - p) : n;
}

/* ---- tests ---- */

static void test_split_everywhere(void)
{
    buf_t bin = {0}, body = {0};
    rec_t r = {0};
    int done = 0;
    make_binary(&bin, 6000);
    /* The generator must not have made a real delimiter, even with the one
     * that follows the data. */
    size_t bin_len = bin.len;
    buf_str(&bin, "\r\n--" BOUNDARY);
    CHECK(find_delim(bin.p, bin.len) == bin_len);
    bin.len = bin_len;

    static const char ext_name[] = "\xe2\x82\xac rates.txt";
    part_t parts[] = {
        {"field1", NULL, NULL, "Content-Disposition: form-data; name=\"field1\"\r\n", "value1", 6},
        {"file", "a b.pdf", "application/pdf",
         "Content-Disposition: form-data; name=\"file\"; filename=\"a b.pdf\"\r\n"
         "Content-Type: application/pdf\r\n",
         bin.p, bin.len},
        {"empty", NULL, NULL, "content-disposition: form-data; name=empty\r\n", "", 0},
        {"cr", NULL, "text/plain; charset=utf-8",
         "CONTENT-DISPOSITION: FORM-DATA; NAME=cr\r\nCONTENT-TYPE:text/plain; charset=utf-8  \r\n",
         "abc\r", 4},
        {"crlf", NULL, NULL, "Content-Disposition: form-data; name=\"crlf\"\r\n", "\r\n", 2},
        {"ext", ext_name, NULL,
         "Content-Disposition: form-data; name=\"ext\"; filename=\"fallback.txt\"; "
         "filename*=UTF-8''%E2%82%AC%20rates.txt\r\n",
         "x--" BOUNDARY "\r\n-", 6 + strlen(BOUNDARY)},
        /* data ending in CR right before the close delimiter */
        {"tail", NULL, NULL, "Content-Disposition: form-data; name=\"tail\"\r\n", "x\r", 2},
    };
    int n = (int)(sizeof(parts) / sizeof(parts[0]));
    build_body(&body, "This is the preamble. --" BOUNDARY " is not a delimiter here", parts, n,
               "\r\nThis is the epilogue. \r\n--" BOUNDARY "\r\n junk");

    /* (a) whole */
    CHECK(feed_chunks(&r, body.p, body.len, NULL, 0, &done) == 0);
    CHECK(done == 1);
    const char *why = verify(&r, parts, n);
    CHECK(why == NULL);
    if (why != NULL)
        fprintf(stderr, "  whole: %s\n", why);
    rec_reset(&r);

    /* (b) split in two at every byte */
    int bad = 0;
    for (size_t k = 0; k <= body.len && !bad; k++) {
        size_t sizes[2] = {k, body.len - k};
        int rc;
        if (k == 0 || k == body.len)
            rc = feed_chunks(&r, body.p, body.len, NULL, 0, &done);
        else
            rc = feed_chunks(&r, body.p, body.len, sizes, 2, &done);
        why = rc != 0 ? "rc" : done != 1 ? "done" : verify(&r, parts, n);
        if (why != NULL) {
            fprintf(stderr, "  split at %zu: %s\n", k, why);
            bad = 1;
        }
        rec_reset(&r);
    }
    CHECK(!bad);

    /* (c) one byte at a time */
    size_t one = 1;
    CHECK(feed_chunks(&r, body.p, body.len, &one, 1, &done) == 0);
    CHECK(done == 1);
    why = verify(&r, parts, n);
    CHECK(why == NULL);
    if (why != NULL)
        fprintf(stderr, "  bytewise: %s\n", why);
    rec_reset(&r);

    /* (d) random chunk sizes, several runs */
    bad = 0;
    for (int run = 0; run < 50 && !bad; run++) {
        size_t sizes[64];
        for (int i = 0; i < 64; i++)
            sizes[i] = 1 + rnd() % (run < 25 ? 16 : 512);
        int rc = feed_chunks(&r, body.p, body.len, sizes, 64, &done);
        why = rc != 0 ? "rc" : done != 1 ? "done" : verify(&r, parts, n);
        if (why != NULL) {
            fprintf(stderr, "  random run %d: %s\n", run, why);
            bad = 1;
        }
        rec_reset(&r);
    }
    CHECK(!bad);

    buf_free(&bin);
    buf_free(&body);
}

/* Feeds s whole; returns the feed result, records into r. */
static int feed_str(rec_t *r, const char *s, int *done)
{
    return feed_chunks(r, s, strlen(s), NULL, 0, done);
}

#define D "--" BOUNDARY
#define CD "Content-Disposition: form-data; name=\"a\"\r\n"

static void test_headers(void)
{
    rec_t r = {0};
    int done;

    /* Quoted filename with escaped quote and backslash; unknown params skipped. */
    CHECK(feed_str(&r,
                   D "\r\nContent-Disposition: form-data; foo=bar; name=\"q\"; "
                     "filename=\"a\\\"b\\\\c.txt\"; size=\"1;2\"\r\n\r\nhi\r\n" D "--",
                   &done) == 0);
    CHECK(done == 1);
    CHECK(r.nparts == 1 && strcmp(r.parts[0].name, "q") == 0);
    CHECK(strcmp(r.parts[0].filename, "a\"b\\c.txt") == 0);
    CHECK(r.parts[0].data.len == 2 && memcmp(r.parts[0].data.p, "hi", 2) == 0);
    CHECK(!r.parts[0].has_ctype);
    rec_reset(&r);

    /* filename* first, then filename: filename* still wins. */
    CHECK(feed_str(&r,
                   D "\r\nContent-Disposition: form-data; filename*=utf-8'en'na%C3%AFve%2etxt; "
                     "name=n; filename=naive.txt\r\n\r\n\r\n" D "--",
                   &done) == 0);
    CHECK(r.nparts == 1 && strcmp(r.parts[0].filename, "na\xc3\xafve.txt") == 0);
    CHECK(r.parts[0].data.len == 0 && r.data_calls == 0);
    rec_reset(&r);

    /* filename* in another charset or badly encoded: fall back to filename. */
    CHECK(feed_str(&r,
                   D "\r\nContent-Disposition: form-data; name=n; filename=\"f.txt\"; "
                     "filename*=ISO-8859-1''%E9.txt\r\n\r\nx\r\n" D "\r\n"
                     "Content-Disposition: form-data; name=m; filename=\"g.txt\"; "
                     "filename*=UTF-8''bad%zz\r\n\r\ny\r\n" D "--",
                   &done) == 0);
    CHECK(r.nparts == 2 && strcmp(r.parts[0].filename, "f.txt") == 0);
    CHECK(strcmp(r.parts[1].filename, "g.txt") == 0);
    rec_reset(&r);

    /* obs-fold continuation is joined; other headers ignored; no name. */
    CHECK(feed_str(&r,
                   D "\r\nX-Other: 1\r\nContent-Disposition: form-data;\r\n filename=\"f\"\r\n"
                     "Content-Type: image/png\r\n\r\nP\r\n" D "--",
                   &done) == 0);
    CHECK(r.nparts == 1 && !r.parts[0].has_name && strcmp(r.parts[0].filename, "f") == 0);
    CHECK(strcmp(r.parts[0].ctype, "image/png") == 0);
    rec_reset(&r);

    /* A part whose headers are followed directly by the delimiter (RFC 2046
     * body-part without the optional CRLF and data). */
    CHECK(feed_str(&r, D "\r\n" CD "\r\n" D "--", &done) == 0);
    CHECK(done == 1 && r.nparts == 1 && r.end_calls == 1 && r.parts[0].data.len == 0);
    rec_reset(&r);

    /* Data that starts with a strict prefix of "--boundary" is data... */
    CHECK(feed_str(&r, D "\r\n" CD "\r\n------SluiceFormBoundary7MA4YWxkTrZu0g\r\n" D "--",
                   &done) == 0);
    CHECK(r.nparts == 1 && r.parts[0].data.len == 1 + strlen(BOUNDARY));
    CHECK(memcmp(r.parts[0].data.p, "--" BOUNDARY, 1 + strlen(BOUNDARY)) == 0);
    rec_reset(&r);

    /* ...but the whole "--boundary" right after the blank line is a
     * delimiter (the blank line's CRLF is its CRLF), so junk after it is an
     * error, as everywhere else. */
    CHECK(feed_str(&r, D "\r\n" CD "\r\n" D "x\r\n" D "--", &done) == SL_EPROTO);
    CHECK(r.begin_calls == 1 && r.data_calls == 0 && r.end_calls == 0);
    rec_reset(&r);

    /* Errors. */
    static const char *const bad[] = {
        D "\r\n\r\ndata\r\n" D "--",                                         /* no headers at all */
        D "\r\nContent-Type: text/plain\r\n\r\ndata\r\n" D "--",             /* no disposition */
        D "\r\nContent-Disposition: attachment; name=a\r\n\r\nx\r\n" D "--", /* not form-data */
        D "\r\n" CD CD "\r\nx\r\n" D "--",                                   /* duplicate */
        D "\r\nContent-Disposition: form-data; name=a; name=b\r\n\r\nx\r\n" D "--",
        D "\r\nContent-Disposition: form-data; name=\"a\r\n\r\nx\r\n" D "--", /* open quote */
        D "\r\nContent-Disposition: form-data; name\r\n\r\nx\r\n" D "--",     /* no '=' */
        D "\r\nContent-Disposition: form-data; name=\r\n\r\nx\r\n" D "--",    /* no value */
        D "\r\nContent-Disposition: form-data; name=a b\r\n\r\nx\r\n" D "--", /* junk */
        D "\r\nContent-Disposition form-data; name=a\r\n\r\nx\r\n" D "--",    /* no colon */
        D "\r\nContent-Disposition : form-data; name=a\r\n\r\nx\r\n" D "--",  /* space before : */
        D "\r\nContent-Disposition: form-data; name=a\n\r\nx\r\n" D "--",     /* bare LF */
        D "\r\nContent-Disposition: form-data; name=a\r\n\n",                 /* bare LF */
        D "\r\nContent-Disposition: form-data;\r name=a\r\n\r\nx\r\n" D "--", /* bare CR */
        D "\r\n folded: x\r\n" CD "\r\nx\r\n" D "--",                         /* leading fold */
        D "x\r\n" CD "\r\nx\r\n" D "--",    /* garbage after delim */
        D "-x\r\n" CD "\r\nx\r\n" D "--",   /* half a close */
        D " \tx\r\n" CD "\r\nx\r\n" D "--", /* garbage after padding */
        D "\rx" CD "\r\nx\r\n" D "--",      /* CR without LF */
        D "\r\n" CD "\r\nx\r\n" D "ZZ\r\n", /* bad second delimiter */
        "preamble\r\n" D "X\r\n",           /* bad first delimiter */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = feed_str(&r, bad[i], &done);
        CHECK(rc == SL_EPROTO);
        CHECK(done == 0);
        if (rc != SL_EPROTO)
            fprintf(stderr, "  bad[%zu] gave %d\n", i, rc);
        rec_reset(&r);
    }

    /* The error is sticky, and nothing is called after it. */
    sl_multipart_t *mp = sl_multipart_new(BOUNDARY, &cbs, &r);
    CHECK(mp != NULL);
    CHECK(sl_multipart_feed(mp, "", 0) == 0);
    const char *b1 = D "\r\n" CD "\r\nok\r\n" D "!";
    CHECK(sl_multipart_feed(mp, b1, strlen(b1)) == SL_EPROTO);
    CHECK(r.begin_calls == 1 && r.data_calls == 1 && r.end_calls == 0);
    CHECK(sl_multipart_feed(mp, "\r\n", 2) == SL_EPROTO);
    CHECK(sl_multipart_feed(mp, NULL, 0) == SL_EPROTO);
    CHECK(r.begin_calls == 1 && r.data_calls == 1 && r.end_calls == 0);
    sl_multipart_free(mp);
    rec_reset(&r);
}

static void test_header_limit(void)
{
    rec_t r = {0};
    buf_t body = {0};
    int done;
    /* A block of exactly SL_MULTIPART_MAX_HEADERS bytes (with its blank line)
     * is accepted; one more byte is not. */
    for (int extra = 0; extra <= 1; extra++) {
        static const char pre[] = CD "X-Pad: ";
        size_t pad = SL_MULTIPART_MAX_HEADERS - (sizeof(pre) - 1) - 4 + (size_t)extra;
        buf_str(&body, D "\r\n" CD "X-Pad: ");
        for (size_t i = 0; i < pad; i++)
            buf_add(&body, "p", 1);
        buf_str(&body, "\r\n\r\nv\r\n" D "--");
        int rc = feed_chunks(&r, body.p, body.len, NULL, 0, &done);
        if (extra == 0) {
            CHECK(rc == 0);
            CHECK(done == 1 && r.nparts == 1 && strcmp(r.parts[0].name, "a") == 0);
        } else {
            CHECK(rc == SL_EPROTO);
            CHECK(done == 0 && r.begin_calls == 0);
        }
        /* Same, one byte at a time. */
        rec_reset(&r);
        size_t one = 1;
        rc = feed_chunks(&r, body.p, body.len, &one, 1, &done);
        CHECK(rc == (extra == 0 ? 0 : SL_EPROTO));
        rec_reset(&r);
        buf_free(&body);
    }
    /* An endless header line is cut off at the limit, not buffered. */
    sl_multipart_t *mp = sl_multipart_new(BOUNDARY, &cbs, &r);
    CHECK(mp != NULL);
    CHECK(sl_multipart_feed(mp, D "\r\nX: ", strlen(D) + 5) == 0);
    char chunk[1000];
    memset(chunk, 'y', sizeof(chunk));
    int rc = 0, feeds = 0;
    while (rc == 0 && feeds < 100) {
        rc = sl_multipart_feed(mp, chunk, sizeof(chunk));
        feeds++;
    }
    CHECK(rc == SL_EPROTO);
    CHECK(feeds == 17); /* 3 + 16*1000 > 16384 */
    sl_multipart_free(mp);
}

static void test_preamble_epilogue(void)
{
    rec_t r = {0};
    int done;

    /* Preamble with CRLFs and boundary look-alikes, first delimiter after CRLF;
     * close delimiter with padding and an epilogue containing a delimiter. */
    CHECK(feed_str(&r,
                   "\r\n\r\n--" BOUNDARY "-not\r\n-- " BOUNDARY "\r\n--" BOUNDARY "\r\n" CD
                   "\r\nA\r\n--" BOUNDARY "-- \r\nepilogue\r\n--" BOUNDARY "\r\n",
                   &done) == SL_EPROTO);
    /* ...the "\r\n--BOUNDARY-not" in the preamble is a malformed delimiter. */
    rec_reset(&r);

    CHECK(feed_str(&r,
                   "\r\n\r\nxx--" BOUNDARY "-not\r\n-- " BOUNDARY "\r\n--" BOUNDARY "\r\n" CD
                   "\r\nA\r\n--" BOUNDARY "-- \r\nepilogue\r\n--" BOUNDARY "x\r\n",
                   &done) == 0);
    CHECK(done == 1 && r.nparts == 1 && r.parts[0].data.len == 1 && r.parts[0].data.p[0] == 'A');
    CHECK(r.end_calls == 1);
    rec_reset(&r);

    /* Body that starts with CRLF then the delimiter (empty preamble). */
    CHECK(feed_str(&r, "\r\n" D "\r\n" CD "\r\nB\r\n" D "--\r\n", &done) == 0);
    CHECK(done == 1 && r.nparts == 1 && r.parts[0].data.p[0] == 'B');
    rec_reset(&r);

    /* No parts at all. */
    CHECK(feed_str(&r, D "--", &done) == 0);
    CHECK(done == 1 && r.begin_calls == 0 && r.end_calls == 0);
    rec_reset(&r);

    /* Only a preamble, ending in a delimiter prefix: nothing, not done. */
    CHECK(feed_str(&r, "just text\r\n------Sluice", &done) == 0);
    CHECK(done == 0 && r.begin_calls == 0 && r.data_calls == 0);
    rec_reset(&r);
}

static void test_truncated(void)
{
    rec_t r = {0};
    int done;
    const char *full = D "\r\n" CD "\r\nhello\r\n" D "--";
    size_t len = strlen(full);
    /* Every strict prefix: no error, not done, and data never includes bytes
     * that could still be the delimiter. */
    int bad = 0;
    for (size_t k = 0; k < len && !bad; k++) {
        int rc = feed_chunks(&r, full, k, NULL, 0, &done);
        size_t got = r.nparts > 0 ? r.parts[0].data.len : 0;
        if (rc != 0 || done != 0 || got > 5 || (got > 0 && memcmp(r.parts[0].data.p, "hello", got)))
            bad = 1;
        if (k >= len - 2 && got != 5)
            bad = 1; /* the whole delimiter was seen: all data is out */
        if (r.end_calls != 0)
            bad = 1; /* the part ends only once its delimiter line is valid */
        if (bad)
            fprintf(stderr, "  prefix %zu rc=%d done=%d got=%zu\n", k, rc, done, got);
        rec_reset(&r);
    }
    CHECK(!bad);

    /* Truncated in the middle of a delimiter: the held bytes are not data. */
    CHECK(feed_str(&r, D "\r\n" CD "\r\nhello\r\n------Sluice", &done) == 0);
    CHECK(done == 0 && r.nparts == 1 && r.parts[0].data.len == 5 && r.end_calls == 0);
    rec_reset(&r);
}

static void test_cancel(void)
{
    rec_t r = {0};
    int done;
    const char *body = D "\r\n" CD "\r\nhello\r\n" D "\r\n" CD "\r\nworld\r\n" D "--";

    r.cancel_begin = 2;
    CHECK(feed_str(&r, body, &done) == SL_ECANCELED);
    CHECK(r.begin_calls == 2 && r.data_calls == 1 && r.end_calls == 1);
    rec_reset(&r);

    r.cancel_data = 1;
    CHECK(feed_str(&r, body, &done) == SL_ECANCELED);
    CHECK(r.begin_calls == 1 && r.data_calls == 1 && r.end_calls == 0);
    rec_reset(&r);

    r.cancel_end = 1;
    CHECK(feed_str(&r, body, &done) == SL_ECANCELED);
    CHECK(r.begin_calls == 1 && r.data_calls == 1 && r.end_calls == 1);
    rec_reset(&r);

    /* Cancel from the data callback when the data is the held-back prefix,
     * fed byte by byte; then sticky. */
    r.cancel_data = 3;
    sl_multipart_t *mp = sl_multipart_new(BOUNDARY, &cbs, &r);
    CHECK(mp != NULL);
    int rc = 0;
    const char *b2 = D "\r\n" CD "\r\nab\r\n--X\r\n" D "--";
    for (size_t i = 0; b2[i] != '\0' && rc == 0; i++)
        rc = sl_multipart_feed(mp, b2 + i, 1);
    CHECK(rc == SL_ECANCELED);
    CHECK(r.data_calls == 3); /* "a", "b", then the held "\r\n--" when 'X' broke it */
    CHECK(r.parts[0].data.len == 6 && memcmp(r.parts[0].data.p, "ab\r\n--", 6) == 0);
    CHECK(sl_multipart_feed(mp, "x", 1) == SL_ECANCELED);
    CHECK(r.data_calls == 3 && r.end_calls == 0);
    CHECK(sl_multipart_done(mp) == 0);
    sl_multipart_free(mp);
    rec_reset(&r);

    /* NULL callbacks are allowed. */
    sl_multipart_cbs_t none = {NULL, NULL, NULL};
    mp = sl_multipart_new(BOUNDARY, &none, NULL);
    CHECK(mp != NULL);
    CHECK(sl_multipart_feed(mp, body, strlen(body)) == 0);
    CHECK(sl_multipart_done(mp) == 1);
    sl_multipart_free(mp);
}

static void test_new(void)
{
    rec_t r = {0};
    char b70[71], b71[72];
    memset(b70, 'b', 70);
    b70[70] = '\0';
    memset(b71, 'b', 71);
    b71[71] = '\0';
    sl_multipart_t *mp = sl_multipart_new(b70, &cbs, &r);
    CHECK(mp != NULL);
    sl_multipart_free(mp);
    CHECK(sl_multipart_new(b71, &cbs, &r) == NULL);
    CHECK(sl_multipart_new("", &cbs, &r) == NULL);
    CHECK(sl_multipart_new("abc ", &cbs, &r) == NULL);
    CHECK(sl_multipart_new("a\rb", &cbs, &r) == NULL);
    CHECK(sl_multipart_new("a@b", &cbs, &r) == NULL);
    CHECK(sl_multipart_new(NULL, &cbs, &r) == NULL);
    CHECK(sl_multipart_new("abc", NULL, &r) == NULL);
    CHECK(sl_multipart_done(NULL) == 0);
    sl_multipart_free(NULL);

    /* One-character boundary with spaces inside, fed byte by byte. */
    mp = sl_multipart_new("a b", &cbs, &r);
    CHECK(mp != NULL);
    const char *body = "--a b\r\n" CD "\r\n--a\r\n--a b--";
    int rc = 0;
    for (size_t i = 0; body[i] != '\0' && rc == 0; i++)
        rc = sl_multipart_feed(mp, body + i, 1);
    CHECK(rc == 0 && sl_multipart_done(mp) == 1);
    CHECK(r.nparts == 1 && r.parts[0].data.len == 3 && memcmp(r.parts[0].data.p, "--a", 3) == 0);
    sl_multipart_free(mp);
    rec_reset(&r);
}

static void test_boundary(void)
{
    char out[SL_MULTIPART_MAX_BOUNDARY + 1];
    char b70[128], b71[128];

    CHECK(sl_multipart_boundary("multipart/form-data; boundary=abc", out, sizeof(out)) == 3);
    CHECK(strcmp(out, "abc") == 0);
    CHECK(sl_multipart_boundary("Multipart/Form-Data;BOUNDARY=" BOUNDARY, out, sizeof(out)) ==
          (int)strlen(BOUNDARY));
    CHECK(strcmp(out, BOUNDARY) == 0);
    CHECK(sl_multipart_boundary("  multipart/form-data ; charset=\"utf-8\";\tboundary = "
                                "\"a b'()+_,-./:=?\" ; x=y",
                                out, sizeof(out)) == 15);
    CHECK(strcmp(out, "a b'()+_,-./:=?") == 0);
    CHECK(sl_multipart_boundary("multipart/form-data; boundary=\"a\\bc\"", out, sizeof(out)) == 3);
    CHECK(strcmp(out, "abc") == 0);
    CHECK(sl_multipart_boundary("multipart/form-data; boundary=abc;", out, sizeof(out)) == 3);

    snprintf(b70, sizeof(b70), "multipart/form-data; boundary=%070d", 7);
    snprintf(b71, sizeof(b71), "multipart/form-data; boundary=%071d", 7);
    CHECK(sl_multipart_boundary(b70, out, sizeof(out)) == 70);
    CHECK(strlen(out) == 70 && out[69] == '7');
    CHECK(sl_multipart_boundary(b71, out, sizeof(out)) == SL_EINVAL);

    static const char *const bad[] = {
        "multipart/form-data",
        "multipart/form-data; charset=utf-8",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=\"\"",
        "multipart/form-data; boundary=\"abc \"",
        "multipart/form-data; boundary=\"a@b\"",
        "multipart/form-data; boundary=a@b",
        "multipart/form-data; boundary=\"abc",
        "multipart/form-data; boundary=a; boundary=b",
        "multipart/form-data boundary=abc",
        "multipart/form-datax; boundary=abc",
        "multipart/mixed; boundary=abc",
        "text/plain; boundary=abc",
        "multipart /form-data; boundary=abc",
        "form-data; boundary=abc",
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = sl_multipart_boundary(bad[i], out, sizeof(out));
        CHECK(rc == SL_EINVAL);
        if (rc != SL_EINVAL)
            fprintf(stderr, "  bad[%zu] = \"%s\" gave %d\n", i, bad[i], rc);
    }
    char small[4];
    CHECK(sl_multipart_boundary("multipart/form-data; boundary=abc", small, 4) == 3);
    CHECK(sl_multipart_boundary("multipart/form-data; boundary=abcd", small, 4) == SL_EINVAL);
    CHECK(sl_multipart_boundary(NULL, out, sizeof(out)) == SL_EINVAL);
    CHECK(sl_multipart_boundary("multipart/form-data; boundary=abc", NULL, 8) == SL_EINVAL);
}

/* ---- memory: a parser inside a part's data holds no header buffer ---- */

static int null_data_cb(void *arg, const char *data, size_t len)
{
    (void)arg;
    (void)data;
    (void)len;
    return 0;
}

static void test_memory_per_parser(void)
{
    /* A thousand uploads streaming at once, each past its part's headers:
     * what they hold together must be small (it was 32 KiB each). */
    enum { N = 1000 };
    static sl_multipart_t *mps[N];
    static const sl_multipart_cbs_t quiet = {NULL, null_data_cb, NULL};
    const char *head = "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"file\"; "
                       "filename=\"a.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                       "some data";
    struct mallinfo2 before = mallinfo2();
    for (int i = 0; i < N; i++) {
        mps[i] = sl_multipart_new(BOUNDARY, &quiet, NULL);
        CHECK(mps[i] != NULL);
        CHECK(mps[i] && sl_multipart_feed(mps[i], head, strlen(head)) == 0);
    }
    struct mallinfo2 after = mallinfo2();
    size_t per = (after.uordblks - before.uordblks) / N;
    if (per > 512)
        fprintf(stderr, "a parser in a part's data holds %zu bytes\n", per);
    CHECK(per <= 512);
    for (int i = 0; i < N; i++)
        sl_multipart_free(mps[i]);
}

int main(void)
{
    test_split_everywhere();
    test_headers();
    test_header_limit();
    test_preamble_epilogue();
    test_truncated();
    test_cancel();
    test_new();
    test_boundary();
    test_memory_per_parser();
    return check_summary();
}
