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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libfyaml.h>

#include "core/err.h"

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

/* ---- sections ---- */

static int parse_storage(ctx_t *c, struct fy_node *map, int line)
{
    sl_config_t *cfg = c->cfg;
    struct fy_node_pair *p;
    void *it = NULL;
    char path[SL_CONFIG_MAX_PATH];
    int rc;

    c->storage_line = line;
    if ((rc = want_mapping(c, map, line, "storage")) < 0 || node_is_null(map))
        return rc;
    while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
        struct fy_node *v = fy_node_pair_value(p);
        const char *key;
        int kl;
        char **dst = NULL;

        if ((rc = get_key(c, fy_node_pair_key(p), "storage", line, &key, &kl)) < 0)
            return rc;
        join_path(path, "storage", key);
        if (strcmp(key, "backend") == 0)
            dst = &cfg->storage_backend;
        else if (strcmp(key, "path") == 0)
            dst = &cfg->storage_path;
        else if (strcmp(key, "endpoint") == 0)
            dst = &cfg->s3_endpoint;
        else if (strcmp(key, "bucket") == 0)
            dst = &cfg->s3_bucket;
        else if (strcmp(key, "region") == 0)
            dst = &cfg->s3_region;
        else if (strcmp(key, "access_key_id") == 0)
            dst = &cfg->s3_access_key_id;
        else if (strcmp(key, "secret_access_key") == 0)
            dst = &cfg->s3_secret_access_key;
        else
            return unknown_key(c, kl, path);
        if ((rc = get_string(c, v, kl, path, dst)) < 0)
            return rc;
        if (dst == &cfg->storage_backend && strcmp(cfg->storage_backend, "fs") != 0 &&
            strcmp(cfg->storage_backend, "s3") != 0)
            return fail(c, node_line(v, kl, 0), path, "must be fs or s3");
    }
    return 0;
}

static int parse_limits(ctx_t *c, struct fy_node *map, int line)
{
    sl_config_t *cfg = c->cfg;
    struct fy_node_pair *p;
    void *it = NULL;
    char path[SL_CONFIG_MAX_PATH];
    int rc;

    if ((rc = want_mapping(c, map, line, "limits")) < 0 || node_is_null(map))
        return rc;
    while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
        struct fy_node *v = fy_node_pair_value(p);
        const char *key;
        int kl;

        if ((rc = get_key(c, fy_node_pair_key(p), "limits", line, &key, &kl)) < 0)
            return rc;
        join_path(path, "limits", key);
        if (strcmp(key, "max_file_bytes") == 0)
            rc = get_int64(c, v, kl, path, 1, INT64_MAX, &cfg->max_file_bytes);
        else if (strcmp(key, "max_files_per_request") == 0)
            rc = get_int(c, v, kl, path, 1, INT_MAX, &cfg->max_files_per_request);
        else if (strcmp(key, "max_request_bytes") == 0)
            rc = get_int64(c, v, kl, path, 0, INT64_MAX, &cfg->max_request_bytes);
        else if (strcmp(key, "max_json_bytes") == 0)
            rc = get_size(c, v, kl, path, &cfg->max_json_bytes);
        else if (strcmp(key, "max_header_bytes") == 0)
            rc = get_size(c, v, kl, path, &cfg->max_header_bytes);
        else if (strcmp(key, "max_connections") == 0)
            rc = get_int(c, v, kl, path, 1, INT_MAX, &cfg->max_connections);
        else if (strcmp(key, "header_timeout_ms") == 0)
            rc = get_int(c, v, kl, path, 1, INT_MAX, &cfg->header_timeout_ms);
        else if (strcmp(key, "idle_timeout_ms") == 0)
            rc = get_int(c, v, kl, path, 1, INT_MAX, &cfg->idle_timeout_ms);
        else if (strcmp(key, "body_timeout_ms") == 0)
            rc = get_int(c, v, kl, path, 1, INT_MAX, &cfg->body_timeout_ms);
        else if (strcmp(key, "max_uploads_in_flight") == 0)
            rc = get_int(c, v, kl, path, 0, INT_MAX, &cfg->max_uploads_in_flight);
        else if (strcmp(key, "max_uploads_per_tenant") == 0)
            rc = get_int(c, v, kl, path, 0, INT_MAX, &cfg->max_uploads_per_tenant);
        else if (strcmp(key, "max_runs_in_flight") == 0)
            rc = get_int(c, v, kl, path, 1, 1000000, &cfg->max_runs_in_flight);
        else if (strcmp(key, "max_runs_per_tenant") == 0)
            rc = get_int(c, v, kl, path, 1, 1000000, &cfg->max_runs_per_tenant);
        else
            rc = unknown_key(c, kl, path);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int parse_sse(ctx_t *c, struct fy_node *map, int line)
{
    sl_config_t *cfg = c->cfg;
    struct fy_node_pair *p;
    void *it = NULL;
    char path[SL_CONFIG_MAX_PATH];
    int rc;

    if ((rc = want_mapping(c, map, line, "sse")) < 0 || node_is_null(map))
        return rc;
    while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
        struct fy_node *v = fy_node_pair_value(p);
        const char *key;
        int kl;

        if ((rc = get_key(c, fy_node_pair_key(p), "sse", line, &key, &kl)) < 0)
            return rc;
        join_path(path, "sse", key);
        if (strcmp(key, "keepalive_s") == 0)
            rc = get_int(c, v, kl, path, 1, 3600, &cfg->sse_keepalive_s);
        else if (strcmp(key, "client_buffer_bytes") == 0)
            rc = get_size(c, v, kl, path, &cfg->sse_client_buffer_bytes);
        else
            rc = unknown_key(c, kl, path);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/*
 * rate_limits: {requests_per_s: {uploads, reads, burst},
 *               upload_bytes_per_s: {per_tenant, burst}}
 */
static int parse_rate_group(ctx_t *c, struct fy_node *map, int line, const char *prefix)
{
    sl_config_t *cfg = c->cfg;
    struct fy_node_pair *p;
    void *it = NULL;
    char path[SL_CONFIG_MAX_PATH];
    int bytes = strcmp(prefix, "rate_limits.upload_bytes_per_s") == 0;
    int rc;

    if ((rc = want_mapping(c, map, line, prefix)) < 0 || node_is_null(map))
        return rc;
    while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
        struct fy_node *v = fy_node_pair_value(p);
        const char *key;
        int kl;
        double *dst = NULL;

        if ((rc = get_key(c, fy_node_pair_key(p), prefix, line, &key, &kl)) < 0)
            return rc;
        join_path(path, prefix, key);
        if (!bytes && strcmp(key, "uploads") == 0)
            dst = &cfg->rl_uploads_per_s;
        else if (!bytes && strcmp(key, "reads") == 0)
            dst = &cfg->rl_reads_per_s;
        else if (!bytes && strcmp(key, "burst") == 0)
            dst = &cfg->rl_requests_burst;
        else if (bytes && strcmp(key, "per_tenant") == 0)
            dst = &cfg->rl_upload_bytes_per_s;
        else if (bytes && strcmp(key, "burst") == 0)
            dst = &cfg->rl_upload_bytes_burst;
        else
            return unknown_key(c, kl, path);
        if ((rc = get_rate(c, v, kl, path, dst)) < 0)
            return rc;
        if (dst == (bytes ? &cfg->rl_upload_bytes_burst : &cfg->rl_requests_burst) && *dst != 0 &&
            *dst < 1)
            return fail(c, node_line(v, kl, 0), path, "must be 0 (the default) or at least 1");
    }
    return 0;
}

static int parse_rate_limits(ctx_t *c, struct fy_node *map, int line)
{
    struct fy_node_pair *p;
    void *it = NULL;
    char path[SL_CONFIG_MAX_PATH];
    int rc;

    if ((rc = want_mapping(c, map, line, "rate_limits")) < 0 || node_is_null(map))
        return rc;
    while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
        const char *key;
        int kl;

        if ((rc = get_key(c, fy_node_pair_key(p), "rate_limits", line, &key, &kl)) < 0)
            return rc;
        join_path(path, "rate_limits", key);
        if (strcmp(key, "requests_per_s") == 0 || strcmp(key, "upload_bytes_per_s") == 0)
            rc = parse_rate_group(c, fy_node_pair_value(p), kl, path);
        else
            rc = unknown_key(c, kl, path);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* fairness: {weights: {tenant_name_or_id: N}} */
static int parse_fairness(ctx_t *c, struct fy_node *map, int line)
{
    sl_config_t *cfg = c->cfg;
    struct fy_node_pair *p, *q;
    void *it = NULL, *it2;
    char path[SL_CONFIG_MAX_PATH], wpath[SL_CONFIG_MAX_PATH];
    int rc;

    if ((rc = want_mapping(c, map, line, "fairness")) < 0 || node_is_null(map))
        return rc;
    while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
        struct fy_node *v = fy_node_pair_value(p);
        const char *key;
        int kl;

        if ((rc = get_key(c, fy_node_pair_key(p), "fairness", line, &key, &kl)) < 0)
            return rc;
        join_path(path, "fairness", key);
        if (strcmp(key, "weights") != 0)
            return unknown_key(c, kl, path);
        if ((rc = want_mapping(c, v, kl, path)) < 0 || node_is_null(v))
            return rc;
        it2 = NULL;
        while ((q = fy_node_mapping_iterate(v, &it2)) != NULL) {
            const char *tenant;
            int tl;

            if ((rc = get_key(c, fy_node_pair_key(q), path, kl, &tenant, &tl)) < 0)
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
    }
    return 0;
}

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

static int parse_retry(ctx_t *c, sl_config_service_t *svc, struct fy_node *map, int line,
                       const char *prefix, bool *present)
{
    struct fy_node_pair *p;
    void *it = NULL;
    char path[SL_CONFIG_MAX_PATH];
    int rc;

    if ((rc = want_mapping(c, map, line, prefix)) < 0 || node_is_null(map))
        return rc;
    while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
        struct fy_node *v = fy_node_pair_value(p);
        const char *key;
        int kl;
        bool here;

        if ((rc = get_key(c, fy_node_pair_key(p), prefix, line, &key, &kl)) < 0)
            return rc;
        join_path(path, prefix, key);
        if (strcmp(key, "max_attempts") == 0)
            rc = get_int(c, v, kl, path, 1, 1000, &svc->retry_max_attempts);
        else if (strcmp(key, "base_ms") == 0)
            rc = get_int(c, v, kl, path, 0, INT_MAX, &svc->retry_base_ms);
        else if (strcmp(key, "max_ms") == 0)
            rc = get_int(c, v, kl, path, 0, INT_MAX, &svc->retry_max_ms);
        else
            rc = unknown_key(c, kl, path);
        if (rc < 0 || (rc = value_present(c, v, kl, path, &here)) < 0)
            return rc;
        *present = *present || here;
    }
    if (svc->retry_max_ms < svc->retry_base_ms)
        return fail(c, line, prefix, "max_ms must be >= base_ms");
    return 0;
}

static int parse_command(ctx_t *c, sl_config_service_t *svc, struct fy_node *seq, int line,
                         const char *prefix, bool *present)
{
    struct fy_node *item;
    void *it = NULL;
    char path[SL_CONFIG_MAX_PATH];
    int n = 0, rc;

    if ((rc = want_sequence(c, seq, line, prefix)) < 0 || node_is_null(seq))
        return rc;
    while ((item = fy_node_sequence_iterate(seq, &it)) != NULL) {
        const char *s;

        path_fmt(path, sizeof(path), "%s[%d]", prefix, n);
        if (n >= SL_CONFIG_MAX_ARGV)
            return fail(c, node_line(item, line, 0), path, "more than %d arguments",
                        SL_CONFIG_MAX_ARGV);
        /* An argument may be "" on purpose: keep it, but it alone does not configure. */
        if ((rc = get_scalar(c, item, line, path, "a string", true, &s)) < 0)
            return rc;
        if (s == NULL)
            return fail(c, node_line(item, line, 0), path, "must be a string");
        if ((svc->command[n] = strdup(s)) == NULL)
            return oom(c);
        if (s[0] != '\0')
            *present = true;
        n++;
    }
    return 0;
}

static int parse_service(ctx_t *c, const char *name, struct fy_node *map, int line)
{
    sl_config_t *cfg = c->cfg;
    sl_config_service_t *svc;
    struct fy_node_pair *p;
    void *it = NULL;
    char prefix[SL_CONFIG_MAX_PATH], path[SL_CONFIG_MAX_PATH];
    const char *url_key = NULL;
    bool present = false;
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
    if ((rc = want_mapping(c, map, line, prefix)) < 0 || node_is_null(map))
        return rc;
    while ((p = fy_node_mapping_iterate(map, &it)) != NULL) {
        struct fy_node *v = fy_node_pair_value(p);
        const char *key;
        char **dst = NULL;
        int kl;
        bool here = false;

        if ((rc = get_key(c, fy_node_pair_key(p), prefix, line, &key, &kl)) < 0)
            return rc;
        join_path(path, prefix, key);
        if (strcmp(key, "url") == 0 || strcmp(key, "base_url") == 0 ||
            strcmp(key, "endpoint") == 0) {
            /* Three spellings of one field (tika/openai/textract); two would be ambiguous. */
            if (url_key != NULL)
                return fail(c, kl, path, "conflicts with %s.%s", prefix, url_key);
            url_key = key;
            dst = &svc->url;
        } else if (strcmp(key, "region") == 0) {
            dst = &svc->region;
        } else if (strcmp(key, "access_key_id") == 0) {
            dst = &svc->access_key_id;
        } else if (strcmp(key, "secret_access_key") == 0) {
            dst = &svc->secret_access_key;
        } else if (strcmp(key, "api_key") == 0) {
            dst = &svc->api_key;
        } else if (strcmp(key, "model") == 0) {
            dst = &svc->model;
        }
        if (dst != NULL)
            rc = get_string(c, v, kl, path, dst);
        else if (strcmp(key, "command") == 0)
            rc = parse_command(c, svc, v, kl, path, &here);
        else if (strcmp(key, "retry") == 0)
            rc = parse_retry(c, svc, v, kl, path, &here);
        else if (strcmp(key, "timeout_ms") == 0)
            rc = get_int(c, v, kl, path, 1, INT_MAX, &svc->timeout_ms);
        else if (strcmp(key, "concurrency") == 0)
            rc = get_int(c, v, kl, path, 1, 100000, &svc->concurrency);
        else if (strcmp(key, "rate_per_s") == 0)
            rc = get_rate(c, v, kl, path, &svc->rate_per_s);
        else if (strcmp(key, "tokens_per_min") == 0)
            rc = get_rate(c, v, kl, path, &svc->tokens_per_min);
        else
            rc = unknown_key(c, kl, path);
        if (rc < 0)
            return rc;
        if (fy_node_is_scalar(v) && (rc = value_present(c, v, kl, path, &here)) < 0)
            return rc;
        present = present || here;
    }
    svc->configured = present ? 1 : 0;
    return 0;
}

static int parse_services(ctx_t *c, struct fy_node *map, int line)
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

static int parse_match(ctx_t *c, sl_config_pipeline_t *pl, struct fy_node *seq, int line,
                       const char *prefix)
{
    struct fy_node *item;
    void *it = NULL;
    char path[SL_CONFIG_MAX_PATH];
    int n = 0, rc;

    if ((rc = want_sequence(c, seq, line, prefix)) < 0)
        return rc;
    while (!node_is_null(seq) && (item = fy_node_sequence_iterate(seq, &it)) != NULL) {
        const char *s;

        path_fmt(path, sizeof(path), "%s[%d]", prefix, n);
        if (n >= SL_CONFIG_MAX_MATCH)
            return fail(c, node_line(item, line, 0), path, "more than %d patterns",
                        SL_CONFIG_MAX_MATCH);
        if ((rc = get_scalar(c, item, line, path, "a string", false, &s)) < 0)
            return rc;
        if (s == NULL)
            return fail(c, node_line(item, line, 0), path, "must be a non-empty string");
        if ((pl->match[n] = strdup(s)) == NULL)
            return oom(c);
        n++;
    }
    if (n == 0)
        return fail(c, line, prefix, "must list at least one MIME pattern");
    return 0;
}

static int parse_pipelines(ctx_t *c, struct fy_node *seq, int line)
{
    sl_config_t *cfg = c->cfg;
    struct fy_node *item;
    void *it = NULL;
    char prefix[SL_CONFIG_MAX_PATH], path[SL_CONFIG_MAX_PATH];
    int rc;

    cfg->has_pipelines = 1;
    if ((rc = want_sequence(c, seq, line, "pipelines")) < 0 || node_is_null(seq))
        return rc;
    while ((item = fy_node_sequence_iterate(seq, &it)) != NULL) {
        sl_config_pipeline_t *pl;
        struct fy_node_pair *p;
        void *it2 = NULL;
        int il = node_line(item, line, 0);
        bool have_match = false;

        snprintf(prefix, sizeof(prefix), "pipelines[%d]", cfg->npipelines);
        if (cfg->npipelines >= SL_CONFIG_MAX_PIPELINES)
            return fail(c, il, prefix, "more than %d pipelines", SL_CONFIG_MAX_PIPELINES);
        if (node_is_null(item) || !fy_node_is_mapping(item))
            return fail(c, il, prefix, "must be a mapping {name, flow, match}");
        pl = &cfg->pipelines[cfg->npipelines++];
        pl->line = il;
        while ((p = fy_node_mapping_iterate(item, &it2)) != NULL) {
            struct fy_node *v = fy_node_pair_value(p);
            const char *key;
            int kl;

            if ((rc = get_key(c, fy_node_pair_key(p), prefix, il, &key, &kl)) < 0)
                return rc;
            join_path(path, prefix, key);
            if (strcmp(key, "name") == 0) {
                rc = get_string(c, v, kl, path, &pl->name);
            } else if (strcmp(key, "flow") == 0) {
                rc = get_string(c, v, kl, path, &pl->flow);
            } else if (strcmp(key, "match") == 0) {
                rc = parse_match(c, pl, v, kl, path);
                have_match = true;
            } else {
                rc = unknown_key(c, kl, path);
            }
            if (rc < 0)
                return rc;
        }
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
    }
    return 0;
}

static int parse_tenants(ctx_t *c, struct fy_node *seq, int line)
{
    sl_config_t *cfg = c->cfg;
    struct fy_node *item;
    void *it = NULL;
    char prefix[SL_CONFIG_MAX_PATH], path[SL_CONFIG_MAX_PATH];
    int rc;

    if ((rc = want_sequence(c, seq, line, "tenants")) < 0 || node_is_null(seq))
        return rc;
    while ((item = fy_node_sequence_iterate(seq, &it)) != NULL) {
        sl_config_tenant_t *t;
        struct fy_node_pair *p;
        void *it2 = NULL;
        int il = node_line(item, line, 0);

        snprintf(prefix, sizeof(prefix), "tenants[%d]", cfg->ntenants);
        if (cfg->ntenants >= SL_CONFIG_MAX_TENANTS)
            return fail(c, il, prefix, "more than %d tenants", SL_CONFIG_MAX_TENANTS);
        if (node_is_null(item) || !fy_node_is_mapping(item))
            return fail(c, il, prefix, "must be a mapping {name, api_key}");
        t = &cfg->tenants[cfg->ntenants++];
        while ((p = fy_node_mapping_iterate(item, &it2)) != NULL) {
            struct fy_node *v = fy_node_pair_value(p);
            const char *key;
            int kl;

            if ((rc = get_key(c, fy_node_pair_key(p), prefix, il, &key, &kl)) < 0)
                return rc;
            join_path(path, prefix, key);
            if (strcmp(key, "name") == 0)
                rc = get_string(c, v, kl, path, &t->name);
            else if (strcmp(key, "api_key") == 0)
                rc = get_string(c, v, kl, path, &t->api_key);
            else
                rc = unknown_key(c, kl, path);
            if (rc < 0)
                return rc;
        }
        if (t->name == NULL)
            return fail(c, il, prefix, "name is required");
        if (t->api_key == NULL)
            return fail(c, il, prefix, "api_key is required");
        for (int i = 0; i < cfg->ntenants - 1; i++)
            if (strcmp(cfg->tenants[i].name, t->name) == 0)
                return fail(c, il, prefix, "duplicate tenant name \"%s\"", t->name);
    }
    return 0;
}

static int parse_root(ctx_t *c, struct fy_node *root)
{
    sl_config_t *cfg = c->cfg;
    struct fy_node_pair *p;
    void *it = NULL;
    int rc;

    if (!node_is_null(root) && !fy_node_is_mapping(root))
        return fail(c, node_line(root, 1, 0), NULL, "the top level must be a mapping");
    while (!node_is_null(root) && (p = fy_node_mapping_iterate(root, &it)) != NULL) {
        struct fy_node *v = fy_node_pair_value(p);
        const char *key;
        int kl;

        if ((rc = get_key(c, fy_node_pair_key(p), NULL, 1, &key, &kl)) < 0)
            return rc;
        if (strcmp(key, "listen") == 0)
            rc = get_string(c, v, kl, key, &cfg->listen);
        else if (strcmp(key, "workers") == 0)
            rc = get_int(c, v, kl, key, 1, 1024, &cfg->workers);
        else if (strcmp(key, "database_url") == 0)
            rc = get_string(c, v, kl, key, &cfg->database_url);
        else if (strcmp(key, "database_pool") == 0)
            rc = get_int(c, v, kl, key, 1, 64, &cfg->database_pool);
        else if (strcmp(key, "redis_url") == 0)
            rc = get_string(c, v, kl, key, &cfg->redis_url);
        else if (strcmp(key, "admin_key") == 0)
            rc = get_string(c, v, kl, key, &cfg->admin_key);
        else if (strcmp(key, "public_url") == 0)
            rc = get_string(c, v, kl, key, &cfg->public_url);
        else if (strcmp(key, "web_root") == 0)
            rc = get_string(c, v, kl, key, &cfg->web_root);
        else if (strcmp(key, "log_level") == 0) {
            rc = get_string(c, v, kl, key, &cfg->log_level);
            if (rc == 0 && strcmp(cfg->log_level, "debug") != 0 &&
                strcmp(cfg->log_level, "info") != 0 && strcmp(cfg->log_level, "warn") != 0 &&
                strcmp(cfg->log_level, "error") != 0)
                rc = fail(c, node_line(v, kl, 0), key, "must be debug, info, warn or error");
        } else if (strcmp(key, "storage") == 0)
            rc = parse_storage(c, v, kl);
        else if (strcmp(key, "limits") == 0)
            rc = parse_limits(c, v, kl);
        else if (strcmp(key, "rate_limits") == 0)
            rc = parse_rate_limits(c, v, kl);
        else if (strcmp(key, "fairness") == 0)
            rc = parse_fairness(c, v, kl);
        else if (strcmp(key, "sse") == 0)
            rc = parse_sse(c, v, kl);
        else if (strcmp(key, "services") == 0)
            rc = parse_services(c, v, kl);
        else if (strcmp(key, "pipelines") == 0)
            rc = parse_pipelines(c, v, kl);
        else if (strcmp(key, "tenants") == 0)
            rc = parse_tenants(c, v, kl);
        else
            rc = unknown_key(c, kl, key);
        if (rc < 0)
            return rc;
    }

    /* Cross-key checks, once everything is read. */
    if (cfg->database_url == NULL)
        return fail(c, 1, "database_url", "is required");
    if (strcmp(cfg->storage_backend, "s3") == 0) {
        if (cfg->s3_endpoint == NULL)
            return fail(c, c->storage_line, "storage.endpoint", "is required for backend s3");
        if (cfg->s3_bucket == NULL)
            return fail(c, c->storage_line, "storage.bucket", "is required for backend s3");
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
    cfg->database_pool = 4;
    cfg->max_file_bytes = 104857600;
    cfg->max_files_per_request = 1000;
    cfg->max_request_bytes = 0;
    cfg->max_json_bytes = 1024 * 1024;
    cfg->max_header_bytes = 65536;
    cfg->max_connections = 10000;
    cfg->max_runs_in_flight = 10000;
    cfg->max_runs_per_tenant = 16;
    cfg->header_timeout_ms = 30000;
    cfg->idle_timeout_ms = 60000;
    cfg->body_timeout_ms = 60000;
    cfg->listen = strdup("127.0.0.1:8080");
    cfg->storage_backend = strdup("fs");
    cfg->storage_path = strdup("./var/blobs");
    cfg->log_level = strdup("info");
    cfg->web_root = strdup("web");
    if (cfg->listen == NULL || cfg->storage_backend == NULL || cfg->storage_path == NULL ||
        cfg->log_level == NULL || cfg->web_root == NULL)
        return SL_ENOMEM;
    return 0;
}

/*
 * Checks that text is UTF-8 (no overlong forms, surrogates or code points past
 * U+10FFFF). A config file has no business being anything else, and libfyaml
 * 0.7.12 loops forever on a directive line ("%...") holding an invalid byte
 * (found by tests/fuzz/fuzz_config.c), so bad bytes must never reach it.
 * Returns 0, or the 1-based line of the first bad byte.
 */
static int utf8_bad_line(const unsigned char *s, size_t len)
{
    size_t i = 0;
    int line = 1;

    while (i < len) {
        unsigned char ch = s[i];
        size_t n;
        uint32_t cp;

        if (ch < 0x80) {
            line += ch == '\n';
            i++;
            continue;
        }
        if (ch >= 0xc2 && ch <= 0xdf) {
            n = 1;
            cp = ch & 0x1f;
        } else if (ch >= 0xe0 && ch <= 0xef) {
            n = 2;
            cp = ch & 0x0f;
        } else if (ch >= 0xf0 && ch <= 0xf4) {
            n = 3;
            cp = ch & 0x07;
        } else {
            return line;
        }
        if (len - i - 1 < n)
            return line;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return line;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
            (n == 3 && (cp < 0x10000 || cp > 0x10ffff)))
            return line;
        i += n + 1;
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
    free(cfg->log_level);
    free(cfg->web_root);
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
    free(cfg);
}
