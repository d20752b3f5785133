/*
 * config.c — loads sluice.yaml with libfyaml into an sl_config_t.
 *
 * The document is parsed in one go (fy_document_build_from_string) with a
 * diagnostic object that collects errors instead of printing them, so a YAML
 * syntax error becomes one "file:line: syntax error: ..." line. The tree is then
 * walked key by key: every key is known (an unknown key is a typo, so an
 * error), every scalar is ${ENV}-expanded before its type is checked, and every
 * error names the file, the line and the dotted key path. Nothing is kept from
 * the libfyaml document: every string in the result is our own copy.
 */
#include "core/config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libfyaml.h>

#include "core/err.h"
#include "core/utf8.h"

/* A config file larger than this is surely a mistake. */
#define SL_CONFIG_MAX_FILE_BYTES (4 * 1024 * 1024)
/* The longest scalar, before or after ${} expansion. */
#define SL_CONFIG_MAX_VALUE 65536
/* Longest environment variable name inside ${...}. */
#define SL_CONFIG_MAX_VARNAME 255
/* Longest dotted key path kept for messages ("services.tika.retry.max_ms"). */
#define SL_CONFIG_MAX_PATH 256

typedef struct ctx_s {
    const char *name;    /* file name used in messages */
    char *err;           /* caller's errbuf; may be NULL */
    size_t errlen;
    char *scratch;       /* SL_CONFIG_MAX_VALUE + 1 bytes: expanded scalar */
    sl_config_t *cfg;
    int storage_line;    /* where storage: was, for the s3 checks */
} ctx_t;

/* ---- messages ---- */

static int vfail(ctx_t *c, int rc, int line, const char *path, const char *fmt, va_list ap)
{
    size_t n;
    int w;

    if (c->err == NULL || c->errlen == 0)
        return rc;
    if (path != NULL && path[0] != '\0')
        w = snprintf(c->err, c->errlen, "%s:%d: %s: ", c->name, line, path);
    else
        w = snprintf(c->err, c->errlen, "%s:%d: ", c->name, line);
    n = w < 0 ? 0 : (size_t)w;
    if (n < c->errlen)
        vsnprintf(c->err + n, c->errlen - n, fmt, ap);
    return rc;
}

static int fail(ctx_t *c, int line, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(ctx_t *c, int line, const char *path, const char *fmt, ...)
{
    va_list ap;
    int rc;

    va_start(ap, fmt);
    rc = vfail(c, SL_ECONFIG, line, path, fmt, ap);
    va_end(ap);
    return rc;
}

static int oom(ctx_t *c)
{
    if (c->err != NULL && c->errlen > 0)
        snprintf(c->err, c->errlen, "%s: out of memory", c->name);
    return SL_ENOMEM;
}

/* ---- ${NAME} / ${NAME:-default} expansion ---- */

static int put_bytes(char *out, size_t outlen, size_t *o, const char *s, size_t n)
{
    /* Keep room for the terminating NUL. */
    if (n >= outlen - *o)
        return SL_ETOOBIG;
    memcpy(out + *o, s, n);
    *o += n;
    return 0;
}

static int expand_n(const char *in, size_t inlen, char *out, size_t outlen, char *errbuf,
                    size_t errlen)
{
    size_t i = 0, o = 0;
    int rc;

    if (out == NULL || outlen == 0)
        return SL_ETOOBIG;
    if (outlen > INT_MAX)
        outlen = INT_MAX;
    while (i < inlen) {
        const char *name, *def = NULL, *val;
        size_t j, namelen, deflen = 0;
        char var[SL_CONFIG_MAX_VARNAME + 1];

        if (in[i] != '$' || i + 1 >= inlen || (in[i + 1] != '$' && in[i + 1] != '{')) {
            if ((rc = put_bytes(out, outlen, &o, in + i, 1)) < 0)
                return rc;
            i++;
            continue;
        }
        if (in[i + 1] == '$') { /* "$$" is a literal '$' */
            if ((rc = put_bytes(out, outlen, &o, "$", 1)) < 0)
                return rc;
            i += 2;
            continue;
        }
        /* "${": a variable reference. */
        name = in + i + 2;
        j = i + 2;
        while (j < inlen && (isalnum((unsigned char)in[j]) || in[j] == '_'))
            j++;
        namelen = j - (i + 2);
        if (namelen == 0 || namelen > SL_CONFIG_MAX_VARNAME || isdigit((unsigned char)name[0])) {
            if (errbuf != NULL && errlen > 0)
                snprintf(errbuf, errlen, "bad variable name in ${...}");
            return SL_EINVAL;
        }
        if (j < inlen && in[j] == '}') {
            i = j + 1;
        } else if (j + 1 < inlen && in[j] == ':' && in[j + 1] == '-') {
            const char *end;
            def = in + j + 2;
            end = memchr(def, '}', inlen - (j + 2));
            if (end == NULL) {
                if (errbuf != NULL && errlen > 0)
                    snprintf(errbuf, errlen, "unterminated ${%.*s:-", (int)namelen, name);
                return SL_EINVAL;
            }
            deflen = (size_t)(end - def);
            i = (size_t)(end - in) + 1;
        } else {
            if (errbuf != NULL && errlen > 0)
                snprintf(errbuf, errlen, "bad reference ${%.*s (expected } or :-)", (int)namelen,
                         name);
            return SL_EINVAL;
        }
        memcpy(var, name, namelen);
        var[namelen] = '\0';
        val = getenv(var);
        if (def != NULL && (val == NULL || val[0] == '\0')) {
            rc = put_bytes(out, outlen, &o, def, deflen);
        } else if (val == NULL) {
            if (errbuf != NULL && errlen > 0)
                snprintf(errbuf, errlen, "environment variable %s is not set", var);
            return SL_EINVAL;
        } else {
            rc = put_bytes(out, outlen, &o, val, strlen(val));
        }
        if (rc < 0)
            return rc;
    }
    out[o] = '\0';
    return (int)o;
}

int sl_config_expand(const char *in, char *out, size_t outlen, char *errbuf, size_t errlen)
{
    if (in == NULL)
        return SL_EINVAL;
    return expand_n(in, strlen(in), out, outlen, errbuf, errlen);
}

/* ---- node helpers ---- */

/* 1-based line of a node: its own token for scalars, else its first child. */
static int node_line(struct fy_node *n, int fallback, int depth)
{
    void *it = NULL;

    if (n == NULL || depth > 8)
        return fallback;
    if (fy_node_is_scalar(n)) {
        struct fy_token *t = fy_node_get_scalar_token(n);
        const struct fy_mark *m = t != NULL ? fy_token_start_mark(t) : NULL;
        return m != NULL ? m->line + 1 : fallback;
    }
    if (fy_node_is_mapping(n)) {
        struct fy_node_pair *p = fy_node_mapping_iterate(n, &it);
        return p != NULL ? node_line(fy_node_pair_key(p), fallback, depth + 1) : fallback;
    }
    if (fy_node_is_sequence(n))
        return node_line(fy_node_sequence_iterate(n, &it), fallback, depth + 1);
    return fallback;
}

/* A plain empty, "~" or "null" scalar, or no node at all. */
static bool node_is_null(struct fy_node *n)
{
    const char *s;
    size_t len;

    if (n == NULL)
        return true;
    if (!fy_node_is_scalar(n) || fy_node_get_style(n) != FYNS_PLAIN)
        return false;
    s = fy_node_get_scalar(n, &len);
    if (s == NULL || len == 0)
        return true;
    return (len == 1 && s[0] == '~') ||
           (len == 4 && (memcmp(s, "null", 4) == 0 || memcmp(s, "Null", 4) == 0 ||
                         memcmp(s, "NULL", 4) == 0));
}

/*
 * Key paths are labels for error messages: a path cut short at
 * SL_CONFIG_MAX_PATH is still a useful label, so truncation is accepted here.
 */
static void path_fmt(char *dst, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(dst, n, fmt, ap);
    va_end(ap);
}

static void join_path(char *dst, const char *prefix, const char *key)
{
    if (prefix == NULL || prefix[0] == '\0')
        path_fmt(dst, SL_CONFIG_MAX_PATH, "%s", key);
    else
        path_fmt(dst, SL_CONFIG_MAX_PATH, "%s.%s", prefix, key);
}

/*
 * Reads a mapping key into *key (borrowed from the document, NUL-terminated) and
 * its line. Keys are not expanded: a key is part of the schema, not a value.
 */
static int get_key(ctx_t *c, struct fy_node *k, const char *prefix, int fallback, const char **key,
                   int *line)
{
    const char *s, *s0;
    size_t len;

    *line = node_line(k, fallback, 0);
    if (k == NULL || !fy_node_is_scalar(k) || fy_node_get_style(k) == FYNS_ALIAS)
        return fail(c, *line, prefix, "keys must be plain strings");
    s = fy_node_get_scalar(k, &len);
    s0 = fy_node_get_scalar0(k);
    if (s == NULL || s0 == NULL)
        return oom(c);
    if (strlen(s0) != len || len == 0)
        return fail(c, *line, prefix, "keys must be non-empty strings without NUL bytes");
    *key = s0;
    return 0;
}

/*
 * The expanded text of a scalar value in c->scratch, or NULL in *out when the
 * value is null, or (unless keep_empty) expands to "". `what` names the
 * expected type for the message ("a string", "an integer").
 */
static int get_scalar(ctx_t *c, struct fy_node *v, int line, const char *path, const char *what,
                      bool keep_empty, const char **out)
{
    const char *s;
    size_t len;
    char ebuf[SL_CONFIG_MAX_VARNAME + 64];
    int rc;

    *out = NULL;
    if (node_is_null(v))
        return 0;
    line = node_line(v, line, 0);
    if (!fy_node_is_scalar(v))
        return fail(c, line, path, "must be %s", what);
    if (fy_node_get_style(v) == FYNS_ALIAS)
        return fail(c, line, path, "aliases are not supported");
    s = fy_node_get_scalar(v, &len);
    if (s == NULL)
        return oom(c);
    if (memchr(s, '\0', len) != NULL)
        return fail(c, line, path, "contains a NUL byte");
    if (len > SL_CONFIG_MAX_VALUE)
        return fail(c, line, path, "value longer than %d bytes", SL_CONFIG_MAX_VALUE);
    ebuf[0] = '\0';
    rc = expand_n(s, len, c->scratch, SL_CONFIG_MAX_VALUE + 1, ebuf, sizeof(ebuf));
    if (rc == SL_ETOOBIG)
        return fail(c, line, path, "value longer than %d bytes after expansion",
                    SL_CONFIG_MAX_VALUE);
    if (rc < 0)
        return fail(c, line, path, "%s", ebuf);
    if (rc == 0 && !keep_empty)
        return 0;
    *out = c->scratch;
    return 0;
}

/* A string value: replaces *dst with a copy; null or "" leave *dst as it was. */
static int get_string(ctx_t *c, struct fy_node *v, int line, const char *path, char **dst)
{
    const char *s;
    char *copy;
    int rc;

    if ((rc = get_scalar(c, v, line, path, "a string", false, &s)) < 0 || s == NULL)
        return rc;
    if ((copy = strdup(s)) == NULL)
        return oom(c);
    free(*dst);
    *dst = copy;
    return 0;
}

static int get_int64(ctx_t *c, struct fy_node *v, int line, const char *path, int64_t min,
                     int64_t max, int64_t *dst)
{
    const char *s, *p;
    char *end;
    long long n;
    int rc;

    if ((rc = get_scalar(c, v, line, path, "an integer", false, &s)) < 0 || s == NULL)
        return rc;
    line = node_line(v, line, 0);
    p = s + ((s[0] == '-' || s[0] == '+') ? 1 : 0);
    errno = 0;
    n = strtoll(s, &end, 10);
    if (!isdigit((unsigned char)*p) || *end != '\0' || errno != 0 || n < min || n > max) {
        if (min == 1 && max >= INT_MAX)
            return fail(c, line, path, "must be a positive integer");
        if (min == 0 && max >= INT_MAX)
            return fail(c, line, path, "must be a non-negative integer");
        return fail(c, line, path, "must be an integer between %lld and %lld", (long long)min,
                    (long long)max);
    }
    *dst = n;
    return 0;
}

static int get_int(ctx_t *c, struct fy_node *v, int line, const char *path, int min, int max,
                   int *dst)
{
    int64_t n = *dst;
    int rc;

    if ((rc = get_int64(c, v, line, path, min, max, &n)) < 0)
        return rc;
    *dst = (int)n;
    return 0;
}

static int get_size(ctx_t *c, struct fy_node *v, int line, const char *path, size_t *dst)
{
    int64_t n = (int64_t)*dst;
    int rc;

    if ((rc = get_int64(c, v, line, path, 1, INT64_MAX, &n)) < 0)
        return rc;
    *dst = (size_t)n;
    return 0;
}

static int get_rate(ctx_t *c, struct fy_node *v, int line, const char *path, double *dst)
{
    const char *s;
    char *end;
    double d;
    int rc;

    if ((rc = get_scalar(c, v, line, path, "a number", false, &s)) < 0 || s == NULL)
        return rc;
    line = node_line(v, line, 0);
    errno = 0;
    d = strtod(s, &end);
    /* Digits or '.' first: strtod alone would accept " 1", "inf" and "nan". */
    if ((!isdigit((unsigned char)s[0]) && s[0] != '.') || *end != '\0' || errno != 0 ||
        !isfinite(d) || d < 0)
        return fail(c, line, path, "must be a non-negative number");
    *dst = d;
    return 0;
}

/* A mapping, or null (an absent section: callers then keep the defaults). */
static int want_mapping(ctx_t *c, struct fy_node *v, int line, const char *path)
{
    if (node_is_null(v) || fy_node_is_mapping(v))
        return 0;
    return fail(c, node_line(v, line, 0), path, "must be a mapping");
}

static int want_sequence(ctx_t *c, struct fy_node *v, int line, const char *path)
{
    if (node_is_null(v) || fy_node_is_sequence(v))
        return 0;
    return fail(c, node_line(v, line, 0), path, "must be a sequence");
}

static int unknown_key(ctx_t *c, int line, const char *path)
{
    return fail(c, line, path, "unknown key");
}

/* ---- the table-driven walker ---- */

typedef enum {
    F_STR,   /* char *: get_string */
    F_INT,   /* int in [min, max]: get_int */
    F_INT64, /* int64_t in [min, max]: get_int64 */
    F_SIZE,  /* size_t >= 1: get_size */
    F_RATE,  /* double >= 0: get_rate */
    F_MAP,   /* a sub-mapping of sub[nsub], walked on the same base */
    F_HOOK,  /* parsed by hook alone */
} field_kind_t;

typedef struct field_s field_t;

/*
 * For F_HOOK, parses the whole value; for the other kinds, checks the value
 * just stored. base is the struct being filled, arg the walker caller's state
 * (borrowed). Returns 0, an error, or 1 to end the walk of the enclosing
 * mapping there (its later keys are not looked at).
 */
typedef int (*field_hook_fn)(ctx_t *c, const field_t *f, void *base, struct fy_node *v, int line,
                             const char *path, void *arg);

struct field_s {
    const char *key;
    field_kind_t kind;
    int64_t min, max;   /* F_INT, F_INT64 */
    size_t off;         /* into base: F_STR .. F_RATE */
    field_hook_fn hook; /* may be NULL */
    const field_t *sub; /* F_MAP */
    size_t nsub;
};

/* offsetof(T, m), refusing to compile unless T.m has type `type`. */
#define FIELD_OFF(T, m, type) _Generic(((T *)0)->m, type: offsetof(T, m))
#define FSTR(T, k, m, h) {.key = k, .kind = F_STR, .off = FIELD_OFF(T, m, char *), .hook = h}
#define FINT(T, k, m, lo, hi) \
    {.key = k, .kind = F_INT, .min = lo, .max = hi, .off = FIELD_OFF(T, m, int)}
#define FINT64(T, k, m, lo, hi) \
    {.key = k, .kind = F_INT64, .min = lo, .max = hi, .off = FIELD_OFF(T, m, int64_t)}
#define FSIZE(T, k, m) {.key = k, .kind = F_SIZE, .off = FIELD_OFF(T, m, size_t)}
#define FRATE(T, k, m, h) {.key = k, .kind = F_RATE, .off = FIELD_OFF(T, m, double), .hook = h}
#define FMAP(k, s) {.key = k, .kind = F_MAP, .sub = s, .nsub = sizeof(s) / sizeof((s)[0])}
#define FHOOK(k, h) {.key = k, .kind = F_HOOK, .hook = h}
#define NFIELDS(a) (sizeof(a) / sizeof((a)[0]))

/* Does this value hold anything? Used for a service's `configured`. */
static int value_present(ctx_t *c, struct fy_node *v, int line, const char *path, bool *present)
{
    const char *s;
    int rc;

    *present = false;
    if (node_is_null(v))
        return 0;
    if (fy_node_is_scalar(v)) {
        if ((rc = get_scalar(c, v, line, path, "a scalar", false, &s)) < 0)
            return rc;
        *present = s != NULL;
        return 0;
    }
    /* Mappings and sequences are checked element by element by their parsers. */
    return 0;
}

/*
 * Walks a mapping (null: keep the defaults) whose keys are all in fields[n],
 * storing each value into base. prefix is the mapping's key path, NULL at the
 * top level. When present is not NULL, it is set once a scalar value holds
 * anything.
 */
static int parse_fields(ctx_t *c, struct fy_node *map, int line, const char *prefix, void *base,
                        const field_t *fields, size_t n, bool *present, void *arg)
{
    struct fy_node_pair *p;
    void *it = NULL;
    char buf[SL_CONFIG_MAX_PATH];
    int rc;

    if ((rc = want_mapping(c, map, line, prefix)) < 0 || node_is_null(map))
        return rc;
    while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
        struct fy_node *v = fy_node_pair_value(p);
        const field_t *f = NULL;
        const char *key, *path = buf;
        void *dst;
        int kl;
        bool here;

        if ((rc = get_key(c, fy_node_pair_key(p), prefix, line, &key, &kl)) < 0)
            return rc;
        if (prefix == NULL)
            path = key; /* a top-level key is its own path, never cut short */
        else
            join_path(buf, prefix, key);
        for (size_t i = 0; i < n && f == NULL; i++)
            if (strcmp(key, fields[i].key) == 0)
                f = &fields[i];
        if (f == NULL)
            return unknown_key(c, kl, path);
        dst = (char *)base + f->off;
        switch (f->kind) {
        case F_STR:
            rc = get_string(c, v, kl, path, dst);
            break;
        case F_INT:
            rc = get_int(c, v, kl, path, (int)f->min, (int)f->max, dst);
            break;
        case F_INT64:
            rc = get_int64(c, v, kl, path, f->min, f->max, dst);
            break;
        case F_SIZE:
            rc = get_size(c, v, kl, path, dst);
            break;
        case F_RATE:
            rc = get_rate(c, v, kl, path, dst);
            break;
        case F_MAP:
            rc = parse_fields(c, v, kl, path, base, f->sub, f->nsub, NULL, NULL);
            break;
        case F_HOOK:
            rc = f->hook(c, f, base, v, kl, path, arg);
            break;
        }
        /* A string's check sees a string: null or "" leave the field as it
         * was, unset for the fields with no default (storage.path_style: ""
         * passed NULL to check_bool_str's strcmp; fuzz_config found it). */
        if (rc == 0 && f->kind != F_HOOK && f->hook != NULL &&
            !(f->kind == F_STR && *(char **)dst == NULL))
            rc = f->hook(c, f, base, v, kl, path, arg);
        if (rc < 0)
            return rc;
        if (rc > 0)
            return 0;
        if (present != NULL && fy_node_is_scalar(v)) {
            if ((rc = value_present(c, v, kl, path, &here)) < 0)
                return rc;
            *present = *present || here;
        }
    }
    return 0;
}

/* ---- sections ---- */

static int check_backend(ctx_t *c, const field_t *f, void *base, struct fy_node *v, int line,
                         const char *path, void *arg)
{
    const char *s = *(char **)((char *)base + f->off);

    if (strcmp(s, "fs") != 0 && strcmp(s, "s3") != 0)
        return fail(c, node_line(v, line, 0), path, "must be fs or s3");
    return 0;
}

/* s3 (issue 12): storage.path_style is true or false. */
static int check_bool_str(ctx_t *c, const field_t *f, void *base, struct fy_node *v, int line,
                          const char *path, void *arg)
{
    const char *s = *(char **)((char *)base + f->off);

    (void)arg;
    if (strcmp(s, "true") != 0 && strcmp(s, "false") != 0)
        return fail(c, node_line(v, line, 0), path, "must be true or false");
    return 0;
}

static const field_t storage_fields[] = {
    FSTR(sl_config_t, "backend", storage_backend, check_backend),
    FSTR(sl_config_t, "path", storage_path, NULL),
    FSTR(sl_config_t, "endpoint", s3_endpoint, NULL),
    FSTR(sl_config_t, "bucket", s3_bucket, NULL),
    FSTR(sl_config_t, "region", s3_region, NULL),
    FSTR(sl_config_t, "access_key_id", s3_access_key_id, NULL),
    FSTR(sl_config_t, "secret_access_key", s3_secret_access_key, NULL),
    FSTR(sl_config_t, "path_style", s3_path_style, check_bool_str), /* s3 (issue 12) */
    FSIZE(sl_config_t, "part_size", s3_part_size),                  /* s3 (issue 12) */
    FSTR(sl_config_t, "presigned_redirects", s3_presigned_redirects, check_bool_str),
    /* s3: the stale multipart upload sweeper's age, seconds; 0 = no sweeper */
    FINT64(sl_config_t, "abort_stale_uploads_after_s", s3_abort_stale_after_s, 0, INT32_MAX),
};

static int parse_storage(ctx_t *c, const field_t *f, void *base, struct fy_node *map, int line,
                         const char *path, void *arg)
{
    c->storage_line = line;
    return parse_fields(c, map, line, path, base, storage_fields, NFIELDS(storage_fields), NULL,
                        NULL);
}

static const field_t limits_fields[] = {
    FINT64(sl_config_t, "max_file_bytes", max_file_bytes, 1, INT64_MAX),
    FINT(sl_config_t, "max_files_per_request", max_files_per_request, 1, INT_MAX),
    FINT64(sl_config_t, "max_request_bytes", max_request_bytes, 0, INT64_MAX),
    FSIZE(sl_config_t, "max_json_bytes", max_json_bytes),
    FSIZE(sl_config_t, "max_header_bytes", max_header_bytes),
    FINT(sl_config_t, "max_connections", max_connections, 1, INT_MAX),
    FINT(sl_config_t, "header_timeout_ms", header_timeout_ms, 1, INT_MAX),
    FINT(sl_config_t, "idle_timeout_ms", idle_timeout_ms, 1, INT_MAX),
    FINT(sl_config_t, "body_timeout_ms", body_timeout_ms, 1, INT_MAX),
    FINT(sl_config_t, "max_uploads_in_flight", max_uploads_in_flight, 0, INT_MAX),
    FINT(sl_config_t, "max_uploads_per_tenant", max_uploads_per_tenant, 0, INT_MAX),
    FINT(sl_config_t, "max_runs_in_flight", max_runs_in_flight, 1, 1000000),
    FINT(sl_config_t, "max_runs_per_tenant", max_runs_per_tenant, 0, 1000000),
    FINT(sl_config_t, "max_runs_active", max_runs_active, 1, 1000000),
    FINT64(sl_config_t, "max_image_pixels", max_image_pixels, 0, INT64_MAX),
    FINT(sl_config_t, "max_connections_per_ip", max_connections_per_ip, 0, INT_MAX),
};

/* exec: the rlimits and the user of every tool a flow runs (actors/lua_exec.c). */
static const field_t exec_fields[] = {
    FINT64(sl_config_t, "memory_bytes", exec_memory_bytes, 16 << 20, INT64_MAX),
    FINT(sl_config_t, "cpu_s", exec_cpu_s, 1, 86400),
    FINT64(sl_config_t, "file_bytes", exec_file_bytes, 1 << 20, INT64_MAX),
    FINT(sl_config_t, "open_files", exec_open_files, 16, 1 << 20),
    FSTR(sl_config_t, "user", exec_user, NULL),
};

/* retention: the automatic sweep and the purges' batches (actors/retention.h). */
static const field_t retention_fields[] = {
    FINT(sl_config_t, "interval_s", retention_interval_s, 1, 604800),
    FINT(sl_config_t, "idempotency_hours", retention_idempotency_hours, 24, 87600),
    FINT(sl_config_t, "files_older_than_days", retention_files_days, 0, 36500),
    FINT(sl_config_t, "batch_size", retention_batch, 1, 10000),
    FINT(sl_config_t, "batch_pause_ms", retention_pause_ms, 0, 60000),
    FINT(sl_config_t, "lock_timeout_ms", retention_lock_timeout_ms, 1, 60000),
};

/* shutdown: how SIGTERM drains (issue 12, instances; docs/deploy.md). */
static const field_t shutdown_fields[] = {
    FINT(sl_config_t, "drain_timeout_s", shutdown_drain_timeout_s, 0, 3600),
    FINT(sl_config_t, "announce_s", shutdown_announce_s, 0, 600),
};

static const field_t sse_fields[] = {
    FINT(sl_config_t, "keepalive_s", sse_keepalive_s, 1, 3600),
    FSIZE(sl_config_t, "client_buffer_bytes", sse_client_buffer_bytes),
    FINT(sl_config_t, "max_streams_per_ip", sse_max_streams_per_ip, 0, INT_MAX),
};

/*
 * rate_limits: {requests_per_s: {uploads, reads, burst},
 *               upload_bytes_per_s: {per_tenant, burst}}
 */
static int check_burst(ctx_t *c, const field_t *f, void *base, struct fy_node *v, int line,
                       const char *path, void *arg)
{
    double d = *(double *)((char *)base + f->off);

    if (d != 0 && d < 1)
        return fail(c, node_line(v, line, 0), path, "must be 0 (the default) or at least 1");
    return 0;
}

static const field_t rate_requests_fields[] = {
    FRATE(sl_config_t, "uploads", rl_uploads_per_s, NULL),
    FRATE(sl_config_t, "reads", rl_reads_per_s, NULL),
    FRATE(sl_config_t, "burst", rl_requests_burst, check_burst),
};

static const field_t rate_bytes_fields[] = {
    FRATE(sl_config_t, "per_tenant", rl_upload_bytes_per_s, NULL),
    FRATE(sl_config_t, "burst", rl_upload_bytes_burst, check_burst),
};

static const field_t rate_limits_fields[] = {
    FMAP("requests_per_s", rate_requests_fields),
    FMAP("upload_bytes_per_s", rate_bytes_fields),
};

/*
 * fairness: {weights: {tenant_name_or_id: N}}. A null weights ends the walk of
 * fairness, so keys after it are not checked (kept as it always was).
 */
static int parse_weights(ctx_t *c, const field_t *f, void *base, struct fy_node *v, int line,
                         const char *path, void *arg)
{
    sl_config_t *cfg = base;
    struct fy_node_pair *q;
    void *it = NULL;
    char wpath[SL_CONFIG_MAX_PATH];
    int rc;

    if ((rc = want_mapping(c, v, line, path)) < 0)
        return rc;
    if (node_is_null(v))
        return 1;
    while ((q = fy_node_mapping_iterate(v, &it)) != NULL) {
        const char *tenant;
        int tl;

        if ((rc = get_key(c, fy_node_pair_key(q), path, line, &tenant, &tl)) < 0)
            return rc;
        join_path(wpath, path, tenant);
        if (cfg->nweights >= SL_CONFIG_MAX_WEIGHTS)
            return fail(c, tl, wpath, "more than %d weights", SL_CONFIG_MAX_WEIGHTS);
        sl_config_weight_t *w = &cfg->weights[cfg->nweights];
        w->weight = 1;
        if ((rc = get_int(c, fy_node_pair_value(q), tl, wpath, 1, 1000, &w->weight)) < 0)
            return rc;
        if ((w->tenant = strdup(tenant)) == NULL)
            return oom(c);
        cfg->nweights++;
    }
    return 0;
}

static int check_engine_process(ctx_t *c, const field_t *f, void *base, struct fy_node *v,
                                int line, const char *path, void *arg)
{
    const char *s = ((sl_config_t *)base)->engine_process;

    if (strcmp(s, "separate") != 0 && strcmp(s, "inline") != 0)
        return fail(c, node_line(v, line, 0), path, "must be separate or inline");
    return 0;
}

/* engine: {process: separate | inline, lease_s} (docs/internals/engine.md) */
static const field_t engine_fields[] = {
    FSTR(sl_config_t, "process", engine_process, check_engine_process),
    FINT(sl_config_t, "lease_s", engine_lease_s, 3, 3600),
};

/* fairness.shares: false claims oldest first (no shares; for benchmarks). */
static const field_t fairness_fields[] = {
    FSTR(sl_config_t, "shares", fairness_shares, check_bool_str),
    FHOOK("weights", parse_weights),
};

/* The state of one service's walk. */
typedef struct svc_walk_s {
    const char *prefix;  /* "services.NAME" (borrowed) */
    const char *url_key; /* which spelling of url was seen (borrowed from the document) */
    bool present;        /* anything configured at all */
} svc_walk_t;

static const field_t retry_fields[] = {
    FINT(sl_config_service_t, "max_attempts", retry_max_attempts, 1, 1000),
    FINT(sl_config_service_t, "base_ms", retry_base_ms, 0, INT_MAX),
    FINT(sl_config_service_t, "max_ms", retry_max_ms, 0, INT_MAX),
};

static int parse_retry(ctx_t *c, const field_t *f, void *base, struct fy_node *map, int line,
                       const char *path, void *arg)
{
    sl_config_service_t *svc = base;
    svc_walk_t *w = arg;
    int rc;

    if ((rc = parse_fields(c, map, line, path, svc, retry_fields, NFIELDS(retry_fields),
                           &w->present, NULL)) < 0 ||
        node_is_null(map))
        return rc;
    if (svc->retry_max_ms < svc->retry_base_ms)
        return fail(c, line, path, "max_ms must be >= base_ms");
    return 0;
}

/*
 * A sequence of string scalars (null: none) into dst[0..max), copies owned by
 * dst; *n is how many. noun names them in the "more than" message. An empty
 * string is kept when keep_empty, else it is an error like null.
 */
static int parse_strings(ctx_t *c, struct fy_node *seq, int line, const char *prefix, char **dst,
                         int max, const char *noun, bool keep_empty, int *n)
{
    struct fy_node *item;
    void *it = NULL;
    char path[SL_CONFIG_MAX_PATH];
    int rc;

    *n = 0;
    if ((rc = want_sequence(c, seq, line, prefix)) < 0 || node_is_null(seq))
        return rc;
    while ((item = fy_node_sequence_iterate(seq, &it)) != NULL) {
        const char *s;

        path_fmt(path, sizeof(path), "%s[%d]", prefix, *n);
        if (*n >= max)
            return fail(c, node_line(item, line, 0), path, "more than %d %s", max, noun);
        if ((rc = get_scalar(c, item, line, path, "a string", keep_empty, &s)) < 0)
            return rc;
        if (s == NULL)
            return fail(c, node_line(item, line, 0), path, "must be %s",
                        keep_empty ? "a string" : "a non-empty string");
        if ((dst[*n] = strdup(s)) == NULL)
            return oom(c);
        (*n)++;
    }
    return 0;
}

static int parse_command(ctx_t *c, const field_t *f, void *base, struct fy_node *seq, int line,
                         const char *path, void *arg)
{
    sl_config_service_t *svc = base;
    svc_walk_t *w = arg;
    int n, rc;

    /* An argument may be "" on purpose: keep it, but it alone does not configure. */
    rc = parse_strings(c, seq, line, path, svc->command, SL_CONFIG_MAX_ARGV, "arguments", true, &n);
    for (int i = 0; i < n; i++)
        if (svc->command[i][0] != '\0')
            w->present = true;
    return rc;
}

/* url, base_url, endpoint: three spellings of one field (tika/openai/textract). */
static int parse_url(ctx_t *c, const field_t *f, void *base, struct fy_node *v, int line,
                     const char *path, void *arg)
{
    sl_config_service_t *svc = base;
    svc_walk_t *w = arg;

    /* Two spellings would be ambiguous. */
    if (w->url_key != NULL)
        return fail(c, line, path, "conflicts with %s.%s", w->prefix, w->url_key);
    w->url_key = f->key;
    return get_string(c, v, line, path, &svc->url);
}

static const field_t service_fields[] = {
    FHOOK("url", parse_url),
    FHOOK("base_url", parse_url),
    FHOOK("endpoint", parse_url),
    FSTR(sl_config_service_t, "region", region, NULL),
    FSTR(sl_config_service_t, "access_key_id", access_key_id, NULL),
    FSTR(sl_config_service_t, "secret_access_key", secret_access_key, NULL),
    FSTR(sl_config_service_t, "api_key", api_key, NULL),
    FSTR(sl_config_service_t, "model", model, NULL),
    FHOOK("command", parse_command),
    FHOOK("retry", parse_retry),
    FINT(sl_config_service_t, "timeout_ms", timeout_ms, 1, INT_MAX),
    FINT(sl_config_service_t, "concurrency", concurrency, 1, 100000),
    FRATE(sl_config_service_t, "rate_per_s", rate_per_s, NULL),
    FRATE(sl_config_service_t, "tokens_per_min", tokens_per_min, NULL),
};

static int parse_service(ctx_t *c, const char *name, struct fy_node *map, int line)
{
    sl_config_t *cfg = c->cfg;
    sl_config_service_t *svc;
    char prefix[SL_CONFIG_MAX_PATH];
    svc_walk_t w = {.prefix = prefix};
    int rc;

    snprintf(prefix, sizeof(prefix), "services.%s", name);
    if (cfg->nservices >= SL_CONFIG_MAX_SERVICES)
        return fail(c, line, prefix, "more than %d services", SL_CONFIG_MAX_SERVICES);
    svc = &cfg->services[cfg->nservices++];
    svc->timeout_ms = 30000;
    svc->concurrency = 8;
    svc->rate_per_s = 0;
    svc->retry_max_attempts = 3;
    svc->retry_base_ms = 500;
    svc->retry_max_ms = 30000;
    if ((svc->name = strdup(name)) == NULL)
        return oom(c);
    if ((rc = parse_fields(c, map, line, prefix, svc, service_fields, NFIELDS(service_fields),
                           &w.present, &w)) < 0)
        return rc;
    svc->configured = w.present ? 1 : 0;
    return 0;
}

static int parse_services(ctx_t *c, const field_t *f, void *base, struct fy_node *map, int line,
                          const char *path, void *arg)
{
    struct fy_node_pair *p;
    void *it = NULL;
    int rc;

    if ((rc = want_mapping(c, map, line, "services")) < 0 || node_is_null(map))
        return rc;
    while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
        const char *key;
        int kl;

        if ((rc = get_key(c, fy_node_pair_key(p), "services", line, &key, &kl)) < 0 ||
            (rc = parse_service(c, key, fy_node_pair_value(p), kl)) < 0)
            return rc;
    }
    return 0;
}

/* arg: the pipeline's have_match flag. */
static int parse_match(ctx_t *c, const field_t *f, void *base, struct fy_node *seq, int line,
                       const char *path, void *arg)
{
    sl_config_pipeline_t *pl = base;
    int n, rc;

    *(bool *)arg = true;
    if ((rc = parse_strings(c, seq, line, path, pl->match, SL_CONFIG_MAX_MATCH, "patterns", false,
                            &n)) < 0)
        return rc;
    if (n == 0)
        return fail(c, line, path, "must list at least one MIME pattern");
    return 0;
}

/* Fills the newest of a section's items from its mapping; prefix is "section[i]". */
typedef int (*item_fn)(ctx_t *c, struct fy_node *item, int line, const char *prefix);

/*
 * A sequence (null: none) of at most max mappings (keys listed in `shape` for
 * the message), each counted in *count before fn fills it, so that
 * sl_config_free frees what a failed item holds.
 */
static int parse_items(ctx_t *c, struct fy_node *seq, int line, const char *section, int *count,
                       int max, const char *shape, item_fn fn)
{
    struct fy_node *item;
    void *it = NULL;
    char prefix[SL_CONFIG_MAX_PATH];
    int rc;

    if ((rc = want_sequence(c, seq, line, section)) < 0 || node_is_null(seq))
        return rc;
    while ((item = fy_node_sequence_iterate(seq, &it)) != NULL) {
        int il = node_line(item, line, 0);

        snprintf(prefix, sizeof(prefix), "%s[%d]", section, *count);
        if (*count >= max)
            return fail(c, il, prefix, "more than %d %s", max, section);
        if (node_is_null(item) || !fy_node_is_mapping(item))
            return fail(c, il, prefix, "must be a mapping {%s}", shape);
        (*count)++;
        if ((rc = fn(c, item, il, prefix)) < 0)
            return rc;
    }
    return 0;
}

static const field_t pipeline_fields[] = {
    FSTR(sl_config_pipeline_t, "name", name, NULL),
    FSTR(sl_config_pipeline_t, "flow", flow, NULL),
    FHOOK("match", parse_match),
};

static int parse_pipeline(ctx_t *c, struct fy_node *item, int il, const char *prefix)
{
    sl_config_t *cfg = c->cfg;
    sl_config_pipeline_t *pl = &cfg->pipelines[cfg->npipelines - 1];
    bool have_match = false;
    int rc;

    pl->line = il;
    if ((rc = parse_fields(c, item, il, prefix, pl, pipeline_fields, NFIELDS(pipeline_fields),
                           NULL, &have_match)) < 0)
        return rc;
    if (pl->name == NULL)
        return fail(c, il, prefix, "name is required");
    for (int i = 0; i < cfg->npipelines - 1; i++)
        if (strcmp(cfg->pipelines[i].name, pl->name) == 0)
            return fail(c, il, prefix, "duplicate pipeline name \"%s\" (first on line %d)",
                        pl->name, cfg->pipelines[i].line);
    if (pl->flow == NULL)
        return fail(c, il, prefix, "flow is required");
    if (!have_match)
        return fail(c, il, prefix, "match is required");
    return 0;
}

static int parse_pipelines(ctx_t *c, const field_t *f, void *base, struct fy_node *seq, int line,
                           const char *path, void *arg)
{
    sl_config_t *cfg = c->cfg;

    cfg->has_pipelines = 1;
    return parse_items(c, seq, line, "pipelines", &cfg->npipelines, SL_CONFIG_MAX_PIPELINES,
                       "name, flow, match", parse_pipeline);
}

static const field_t tenant_fields[] = {
    FSTR(sl_config_tenant_t, "name", name, NULL),
    FSTR(sl_config_tenant_t, "api_key", api_key, NULL),
};

static int parse_tenant(ctx_t *c, struct fy_node *item, int il, const char *prefix)
{
    sl_config_t *cfg = c->cfg;
    sl_config_tenant_t *t = &cfg->tenants[cfg->ntenants - 1];
    int rc;

    if ((rc = parse_fields(c, item, il, prefix, t, tenant_fields, NFIELDS(tenant_fields), NULL,
                           NULL)) < 0)
        return rc;
    if (t->name == NULL)
        return fail(c, il, prefix, "name is required");
    if (t->api_key == NULL)
        return fail(c, il, prefix, "api_key is required");
    for (int i = 0; i < cfg->ntenants - 1; i++)
        if (strcmp(cfg->tenants[i].name, t->name) == 0)
            return fail(c, il, prefix, "duplicate tenant name \"%s\"", t->name);
    return 0;
}

static int parse_tenants(ctx_t *c, const field_t *f, void *base, struct fy_node *seq, int line,
                         const char *path, void *arg)
{
    return parse_items(c, seq, line, "tenants", &c->cfg->ntenants, SL_CONFIG_MAX_TENANTS,
                       "name, api_key", parse_tenant);
}

/* ---- auth: {access_ttl_s, refresh_ttl_s, token_keys: [{id, secret}]} (docs/auth.md) ---- */

static const field_t token_key_fields[] = {
    FSTR(sl_config_token_key_t, "id", id, NULL),
    FSTR(sl_config_token_key_t, "secret", secret, NULL),
};

static int parse_token_key(ctx_t *c, struct fy_node *item, int il, const char *prefix)
{
    sl_config_t *cfg = c->cfg;
    sl_config_token_key_t *k = &cfg->token_keys[cfg->ntoken_keys - 1];
    int rc;

    if ((rc = parse_fields(c, item, il, prefix, k, token_key_fields, NFIELDS(token_key_fields),
                           NULL, NULL)) < 0)
        return rc;
    if (k->id == NULL || k->id[0] == '\0' || strlen(k->id) > 64)
        return fail(c, il, prefix, "id is required (1 to 64 characters)");
    for (const char *p = k->id; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' && *p != '-')
            return fail(c, il, prefix, "id may hold only letters, digits, '.', '_' and '-'");
    if (k->secret == NULL || strlen(k->secret) < SL_CONFIG_TOKEN_SECRET_MIN)
        return fail(c, il, prefix, "secret is required and must be at least %d bytes",
                    SL_CONFIG_TOKEN_SECRET_MIN);
    if (strlen(k->secret) > 512)
        return fail(c, il, prefix, "secret must be at most 512 bytes");
    for (int i = 0; i < cfg->ntoken_keys - 1; i++)
        if (strcmp(cfg->token_keys[i].id, k->id) == 0)
            return fail(c, il, prefix, "duplicate token key id \"%s\"", k->id);
    return 0;
}

static int parse_token_keys(ctx_t *c, const field_t *f, void *base, struct fy_node *seq, int line,
                            const char *path, void *arg)
{
    return parse_items(c, seq, line, "auth.token_keys", &c->cfg->ntoken_keys,
                       SL_CONFIG_MAX_TOKEN_KEYS, "id, secret", parse_token_key);
}

static const field_t auth_fields[] = {
    FINT(sl_config_t, "access_ttl_s", auth_access_ttl_s, 1, 86400),
    FINT(sl_config_t, "refresh_ttl_s", auth_refresh_ttl_s, 1, 31536000),
    FHOOK("token_keys", parse_token_keys),
};

static int check_log_level(ctx_t *c, const field_t *f, void *base, struct fy_node *v, int line,
                           const char *path, void *arg)
{
    const char *s = ((sl_config_t *)base)->log_level;

    if (strcmp(s, "debug") != 0 && strcmp(s, "info") != 0 && strcmp(s, "warn") != 0 &&
        strcmp(s, "error") != 0)
        return fail(c, node_line(v, line, 0), path, "must be debug, info, warn or error");
    return 0;
}

/* runlife (issue 13): `log: {level: info}`; the older top-level `log_level` still works. */
static const field_t log_fields[] = {
    FSTR(sl_config_t, "level", log_level, check_log_level),
};

static const field_t root_fields[] = {
    FSTR(sl_config_t, "listen", listen, NULL),
    FINT(sl_config_t, "workers", workers, 1, 1024),
    FSTR(sl_config_t, "database_url", database_url, NULL),
    FINT(sl_config_t, "database_pool", database_pool, 1, 64),
    FINT(sl_config_t, "database_statement_timeout_ms", database_statement_timeout_ms, 100,
         3600000),
    FSTR(sl_config_t, "redis_url", redis_url, NULL),
    FSTR(sl_config_t, "admin_key", admin_key, NULL),
    FSTR(sl_config_t, "public_url", public_url, NULL),
    FSTR(sl_config_t, "web_root", web_root, NULL),
    FSTR(sl_config_t, "log_level", log_level, check_log_level),
    FMAP("log", log_fields), /* runlife (issue 13) */
    FHOOK("storage", parse_storage),
    FMAP("limits", limits_fields),
    FMAP("rate_limits", rate_limits_fields),
    FMAP("exec", exec_fields),
    FMAP("fairness", fairness_fields),
    FMAP("sse", sse_fields),
    FMAP("retention", retention_fields),
    FMAP("shutdown", shutdown_fields), /* issue 12 (instances) */
    FMAP("engine", engine_fields),
    FHOOK("services", parse_services),
    FHOOK("pipelines", parse_pipelines),
    FHOOK("tenants", parse_tenants),
    FMAP("auth", auth_fields),
};

static int parse_root(ctx_t *c, struct fy_node *root)
{
    sl_config_t *cfg = c->cfg;
    int rc;

    if (!node_is_null(root) && !fy_node_is_mapping(root))
        return fail(c, node_line(root, 1, 0), NULL, "the top level must be a mapping");
    if ((rc = parse_fields(c, root, 1, NULL, cfg, root_fields, NFIELDS(root_fields), NULL, NULL)) <
        0)
        return rc;

    /* Cross-key checks, once everything is read. */
    if (cfg->database_url == NULL)
        return fail(c, 1, "database_url", "is required");
    if (strcmp(cfg->storage_backend, "s3") == 0) {
        if (cfg->s3_endpoint == NULL)
            return fail(c, c->storage_line, "storage.endpoint", "is required for backend s3");
        if (cfg->s3_bucket == NULL)
            return fail(c, c->storage_line, "storage.bucket", "is required for backend s3");
        if (cfg->s3_part_size != 0 && (cfg->s3_part_size < 5 * 1024 * 1024 ||
                                       cfg->s3_part_size > 64 * 1024 * 1024))
            return fail(c, c->storage_line, "storage.part_size", "must be 5 MiB to 64 MiB");
    } else if (cfg->s3_presigned_redirects && strcmp(cfg->s3_presigned_redirects, "true") == 0) {
        return fail(c, c->storage_line, "storage.presigned_redirects",
                    "needs backend s3 (the filesystem has no URL of its own)");
    }
    if (cfg->admin_key == NULL) {
        const char *env = getenv("SLUICE_ADMIN_KEY");
        if (env != NULL && env[0] != '\0' && (cfg->admin_key = strdup(env)) == NULL)
            return oom(c);
    }
    return 0;
}

/* ---- load / free ---- */

static int set_defaults(sl_config_t *cfg)
{
    cfg->workers = 1;
    cfg->auth_access_ttl_s = SL_CONFIG_ACCESS_TTL_S;
    cfg->auth_refresh_ttl_s = SL_CONFIG_REFRESH_TTL_S;
    cfg->database_pool = 4;
    cfg->database_statement_timeout_ms = 30000;
    cfg->max_file_bytes = 104857600;
    cfg->s3_abort_stale_after_s = 24 * 3600;
    cfg->max_files_per_request = 1000;
    cfg->max_request_bytes = 0;
    cfg->max_json_bytes = 1024 * 1024;
    cfg->max_header_bytes = 65536;
    cfg->max_connections = 10000;
    cfg->max_runs_in_flight = 10000;
    cfg->max_runs_active = 64; /* SL_SCHED_MAX_ACTIVE */
    cfg->max_runs_per_tenant = 0; /* no ceiling: shares (actors/scheduler.h) */
    cfg->retention_interval_s = 3600; /* retention (actors/retention.h) */
    cfg->retention_idempotency_hours = 24;
    cfg->retention_batch = 500;
    cfg->retention_lock_timeout_ms = 2000;
    cfg->shutdown_drain_timeout_s = 30; /* issue 12 (instances) */
    cfg->max_image_pixels = SL_CONFIG_MAX_IMAGE_PIXELS;
    cfg->max_connections_per_ip = SL_CONFIG_MAX_CONNECTIONS_PER_IP;
    cfg->sse_max_streams_per_ip = SL_CONFIG_SSE_MAX_STREAMS_PER_IP;
    cfg->exec_memory_bytes = SL_CONFIG_EXEC_MEMORY_BYTES;
    cfg->exec_cpu_s = SL_CONFIG_EXEC_CPU_S;
    cfg->exec_file_bytes = SL_CONFIG_EXEC_FILE_BYTES;
    cfg->exec_open_files = SL_CONFIG_EXEC_OPEN_FILES;
    cfg->rl_uploads_per_s = SL_CONFIG_RL_UPLOADS_PER_S;
    cfg->rl_reads_per_s = SL_CONFIG_RL_READS_PER_S;
    cfg->exec_user = strdup(SL_CONFIG_EXEC_USER);
    cfg->header_timeout_ms = 30000;
    cfg->idle_timeout_ms = 60000;
    cfg->body_timeout_ms = 60000;
    cfg->listen = strdup("127.0.0.1:8080");
    cfg->storage_backend = strdup("fs");
    cfg->storage_path = strdup("./var/blobs");
    cfg->log_level = strdup("info");
    cfg->web_root = strdup("web");
    cfg->engine_process = strdup("separate");
    cfg->engine_lease_s = 30;
    if (cfg->listen == NULL || cfg->storage_backend == NULL || cfg->storage_path == NULL ||
        cfg->log_level == NULL || cfg->web_root == NULL || cfg->exec_user == NULL ||
        cfg->engine_process == NULL)
        return SL_ENOMEM;
    return 0;
}

/*
 * Checks that text is UTF-8 (sl_utf8_seq_len: no overlong forms, surrogates or
 * code points past U+10FFFF). A config file has no business being anything
 * else, and libfyaml 0.7.12 loops forever on a directive line ("%...") holding
 * an invalid byte (found by tests/fuzz/fuzz_config.c), so bad bytes must never
 * reach it. Returns 0, or the 1-based line of the first bad byte.
 */
static int utf8_bad_line(const unsigned char *s, size_t len)
{
    size_t i = 0;
    int line = 1;

    while (i < len) {
        size_t n = sl_utf8_seq_len(s + i, len - i);
        if (n == 0)
            return line;
        line += s[i] == '\n';
        i += n;
    }
    return 0;
}

/*
 * Turns the first collected libfyaml error (lines are 1-based there) into our
 * one-line message. Returns 0 when nothing was collected: libfyaml builds no
 * document for an empty stream (only blanks and comments) but collects no
 * error either, and an empty file is an empty mapping to us.
 */
static int syntax_error(ctx_t *c, struct fy_diag *diag)
{
    struct fy_diag_error *e;
    void *it = NULL;

    while ((e = fy_diag_errors_iterate(diag, &it)) != NULL) {
        if (e->type >= FYET_ERROR)
            return fail(c, e->line > 0 ? e->line : 1, NULL, "syntax error: %s",
                        e->msg != NULL ? e->msg : "invalid YAML");
    }
    return 0;
}

int sl_config_load_string(const char *yaml, size_t len, const char *name, sl_config_t **out,
                          char *errbuf, size_t errlen)
{
    ctx_t c = {0};
    struct fy_diag_cfg dcfg;
    struct fy_diag *diag = NULL;
    struct fy_parse_cfg pcfg;
    struct fy_document *doc = NULL;
    sl_config_t *cfg = NULL;
    int rc;

    c.name = name != NULL ? name : "<config>";
    c.err = errbuf;
    c.errlen = errlen;
    if (errbuf != NULL && errlen > 0)
        errbuf[0] = '\0';
    *out = NULL;
    if (yaml == NULL)
        return fail(&c, 1, NULL, "no configuration text");
    if ((c.scratch = malloc(SL_CONFIG_MAX_VALUE + 1)) == NULL ||
        (cfg = calloc(1, sizeof(*cfg))) == NULL) {
        rc = oom(&c);
        goto out;
    }
    c.cfg = cfg;
    if (set_defaults(cfg) < 0 || (cfg->path = strdup(c.name)) == NULL) {
        rc = oom(&c);
        goto out;
    }

    if ((rc = utf8_bad_line((const unsigned char *)yaml, len)) > 0) {
        rc = fail(&c, rc, NULL, "not valid UTF-8");
        goto out;
    }

    /* Collect errors instead of printing them to stderr; we report the first. */
    fy_diag_cfg_default(&dcfg);
    dcfg.fp = NULL;
    dcfg.output_fn = NULL;
    dcfg.colorize = false;
    if ((diag = fy_diag_create(&dcfg)) == NULL) {
        rc = oom(&c);
        goto out;
    }
    fy_diag_set_collect_errors(diag, true);
    memset(&pcfg, 0, sizeof(pcfg));
    pcfg.flags = FYPCF_QUIET; /* no RESOLVE: aliases are rejected, not expanded */
    pcfg.diag = diag;
    doc = fy_document_build_from_string(&pcfg, yaml, len);
    if (doc == NULL && (rc = syntax_error(&c, diag)) < 0)
        goto out;
    rc = parse_root(&c, doc != NULL ? fy_document_root(doc) : NULL);

out:
    if (doc != NULL)
        fy_document_destroy(doc);
    if (diag != NULL)
        fy_diag_destroy(diag);
    free(c.scratch);
    if (rc < 0) {
        sl_config_free(cfg);
        return rc;
    }
    *out = cfg;
    return 0;
}

int sl_config_load(const char *path, sl_config_t **out, char *errbuf, size_t errlen)
{
    FILE *fp = NULL;
    char *buf = NULL;
    size_t n = 0;
    int rc;

    *out = NULL;
    if (errbuf != NULL && errlen > 0)
        errbuf[0] = '\0';
    if (path == NULL)
        return SL_EINVAL;
    if ((fp = fopen(path, "rb")) == NULL) {
        if (errbuf != NULL && errlen > 0)
            snprintf(errbuf, errlen, "%s: cannot open: %s", path, strerror(errno));
        return SL_EIO;
    }
    /* One byte more than the limit tells "exactly at the limit" from "over". */
    if ((buf = malloc(SL_CONFIG_MAX_FILE_BYTES + 1)) == NULL) {
        rc = SL_ENOMEM;
        if (errbuf != NULL && errlen > 0)
            snprintf(errbuf, errlen, "%s: out of memory", path);
        goto out;
    }
    n = fread(buf, 1, SL_CONFIG_MAX_FILE_BYTES + 1, fp);
    if (ferror(fp)) {
        rc = SL_EIO;
        if (errbuf != NULL && errlen > 0)
            snprintf(errbuf, errlen, "%s: read error", path);
        goto out;
    }
    if (n > SL_CONFIG_MAX_FILE_BYTES) {
        rc = SL_ECONFIG;
        if (errbuf != NULL && errlen > 0)
            snprintf(errbuf, errlen, "%s: larger than %d bytes", path, SL_CONFIG_MAX_FILE_BYTES);
        goto out;
    }
    rc = sl_config_load_string(buf, n, path, out, errbuf, errlen);

out:
    free(buf);
    fclose(fp);
    return rc;
}

const sl_config_service_t *sl_config_service(const sl_config_t *cfg, const char *name)
{
    if (cfg == NULL || name == NULL)
        return NULL;
    for (int i = 0; i < cfg->nservices; i++)
        if (cfg->services[i].name != NULL && strcmp(cfg->services[i].name, name) == 0)
            return &cfg->services[i];
    return NULL;
}

void sl_config_free(sl_config_t *cfg)
{
    if (cfg == NULL)
        return;
    free(cfg->path);
    free(cfg->listen);
    free(cfg->database_url);
    free(cfg->redis_url);
    free(cfg->admin_key);
    free(cfg->public_url);
    free(cfg->storage_backend);
    free(cfg->storage_path);
    free(cfg->s3_endpoint);
    free(cfg->s3_bucket);
    free(cfg->s3_region);
    free(cfg->s3_access_key_id);
    free(cfg->s3_secret_access_key);
    free(cfg->s3_path_style);
    free(cfg->s3_presigned_redirects);
    free(cfg->fairness_shares);
    free(cfg->log_level);
    free(cfg->web_root);
    free(cfg->exec_user);
    free(cfg->engine_process);
    for (int i = 0; i < cfg->nservices; i++) {
        sl_config_service_t *s = &cfg->services[i];
        free(s->name);
        free(s->url);
        free(s->region);
        free(s->access_key_id);
        free(s->secret_access_key);
        free(s->api_key);
        free(s->model);
        for (int j = 0; j < SL_CONFIG_MAX_ARGV && s->command[j] != NULL; j++)
            free(s->command[j]);
    }
    for (int i = 0; i < cfg->npipelines; i++) {
        free(cfg->pipelines[i].name);
        free(cfg->pipelines[i].flow);
        for (int j = 0; j < SL_CONFIG_MAX_MATCH && cfg->pipelines[i].match[j] != NULL; j++)
            free(cfg->pipelines[i].match[j]);
    }
    for (int i = 0; i < cfg->ntenants; i++) {
        free(cfg->tenants[i].name);
        free(cfg->tenants[i].api_key);
    }
    for (int i = 0; i < cfg->nweights; i++)
        free(cfg->weights[i].tenant);
    for (int i = 0; i < cfg->ntoken_keys; i++) {
        free(cfg->token_keys[i].id);
        if (cfg->token_keys[i].secret)
            explicit_bzero(cfg->token_keys[i].secret, strlen(cfg->token_keys[i].secret));
        free(cfg->token_keys[i].secret);
    }
    free(cfg);
}
