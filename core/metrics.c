/*
 * metrics.c — the Prometheus registry behind GET /metrics.
 *
 * Families live in a singly linked list in registration order; each family
 * keeps its series in a linked list in first-use order, looked up linearly by
 * label values (a family has a handful of series; SL_METRICS_MAX_SERIES bounds
 * a runaway label). Rendering walks both lists into one growing buffer in the
 * text exposition format 0.0.4. Loop thread only: there is no locking.
 */
#include "core/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Past this many series a family ignores new label combinations. */
#define SL_METRICS_MAX_SERIES 2000
#define SL_METRICS_MAX_BUCKETS 32
/* A rendered page larger than this is a bug (a label exploding), not data. */
#define SL_METRICS_MAX_RENDER (64 * 1024 * 1024)

enum { T_COUNTER, T_GAUGE, T_HISTOGRAM };

typedef struct series_s {
    struct series_s *next;
    char *values[SL_METRICS_MAX_LABELS];
    double value;     /* counter, gauge */
    uint64_t *counts; /* histogram: per bucket, not cumulative; [nbuckets] is +Inf */
    double sum;
    uint64_t count;
} series_t;

struct sl_metric_s {
    sl_metric_t *next;
    int type;
    char *name;
    char *help;
    int nlabels;
    char *labels[SL_METRICS_MAX_LABELS];
    double *buckets;
    int nbuckets;
    sl_metrics_read_fn fn; /* gauge_fn */
    void *arg;
    series_t *series, **series_tail;
    int nseries;
};

static sl_metric_t *families;
static sl_metric_t **families_tail = &families;

static int valid_name(const char *s, int allow_colon)
{
    if (s == NULL || *s == '\0' || (*s >= '0' && *s <= '9'))
        return 0;
    for (; *s != '\0'; s++) {
        char ch = *s;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || (allow_colon && ch == ':')))
            return 0;
    }
    return 1;
}

static void series_free(series_t *s, int nlabels)
{
    for (int i = 0; i < nlabels; i++)
        free(s->values[i]);
    free(s->counts);
    free(s);
}

static void family_free(sl_metric_t *m)
{
    series_t *s, *next;

    for (s = m->series; s != NULL; s = next) {
        next = s->next;
        series_free(s, m->nlabels);
    }
    for (int i = 0; i < m->nlabels; i++)
        free(m->labels[i]);
    free(m->buckets);
    free(m->name);
    free(m->help);
    free(m);
}

static sl_metric_t *find_family(const char *name)
{
    for (sl_metric_t *m = families; m != NULL; m = m->next)
        if (strcmp(m->name, name) == 0)
            return m;
    return NULL;
}

/* Splits "a,b" into m->labels. Returns 0, or -1 on a bad or excess name. */
static int parse_labels(sl_metric_t *m, const char *labels)
{
    const char *p = labels;

    if (labels == NULL || *labels == '\0')
        return 0;
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma != NULL ? (size_t)(comma - p) : strlen(p);
        char *name;

        if (m->nlabels >= SL_METRICS_MAX_LABELS || (name = strndup(p, len)) == NULL)
            return -1;
        m->labels[m->nlabels++] = name;
        /* "le" is the histogram's own label; "__" names are reserved by Prometheus. */
        if (!valid_name(name, 0) || strncmp(name, "__", 2) == 0 ||
            (m->type == T_HISTOGRAM && strcmp(name, "le") == 0))
            return -1;
        for (int i = 0; i < m->nlabels - 1; i++)
            if (strcmp(m->labels[i], name) == 0)
                return -1;
        if (comma == NULL)
            return 0;
        p = comma + 1;
    }
}

static series_t *series_new(sl_metric_t *m, const char *const *values)
{
    series_t *s;

    if (m->nseries >= SL_METRICS_MAX_SERIES || (s = calloc(1, sizeof(*s))) == NULL)
        return NULL;
    if (m->type == T_HISTOGRAM &&
        (s->counts = calloc((size_t)m->nbuckets + 1, sizeof(*s->counts))) == NULL)
        goto fail;
    for (int i = 0; i < m->nlabels; i++)
        if ((s->values[i] = strdup(values[i])) == NULL)
            goto fail;
    *m->series_tail = s;
    m->series_tail = &s->next;
    m->nseries++;
    return s;

fail:
    series_free(s, m->nlabels);
    return NULL;
}

static sl_metric_t *family_new(int type, const char *name, const char *help, const char *labels,
                               const double *buckets, int n)
{
    sl_metric_t *m = find_family(name != NULL ? name : "");

    if (m != NULL)
        return m->type == type ? m : NULL;
    if (!valid_name(name, 1) || n < 0 || n > SL_METRICS_MAX_BUCKETS || (n > 0 && buckets == NULL))
        return NULL;
    for (int i = 0; i < n; i++)
        if (!isfinite(buckets[i]) || (i > 0 && buckets[i] <= buckets[i - 1]))
            return NULL;
    if ((m = calloc(1, sizeof(*m))) == NULL)
        return NULL;
    m->type = type;
    m->series_tail = &m->series;
    if ((m->name = strdup(name)) == NULL || (m->help = strdup(help != NULL ? help : "")) == NULL ||
        parse_labels(m, labels) < 0)
        goto fail;
    if (n > 0) {
        if ((m->buckets = malloc((size_t)n * sizeof(double))) == NULL)
            goto fail;
        memcpy(m->buckets, buckets, (size_t)n * sizeof(double));
    }
    m->nbuckets = n;
    /* An unlabelled family has exactly one series: create it so it renders as 0. */
    if (m->nlabels == 0 && series_new(m, NULL) == NULL)
        goto fail;
    *families_tail = m;
    families_tail = &m->next;
    return m;

fail:
    family_free(m);
    return NULL;
}

sl_metric_t *sl_metrics_counter(const char *name, const char *help, const char *labels)
{
    return family_new(T_COUNTER, name, help, labels, NULL, 0);
}

sl_metric_t *sl_metrics_gauge(const char *name, const char *help, const char *labels)
{
    return family_new(T_GAUGE, name, help, labels, NULL, 0);
}

sl_metric_t *sl_metrics_histogram(const char *name, const char *help, const char *labels,
                                  const double *buckets, int n)
{
    return family_new(T_HISTOGRAM, name, help, labels, buckets, n);
}

sl_metric_t *sl_metrics_gauge_fn(const char *name, const char *help, sl_metrics_read_fn fn,
                                 void *arg)
{
    sl_metric_t *m;

    if (fn == NULL)
        return NULL;
    if ((m = family_new(T_GAUGE, name, help, NULL, NULL, 0)) == NULL)
        return NULL;
    if (m->nlabels != 0)
        return NULL;
    m->fn = fn;
    m->arg = arg;
    return m;
}

/*
 * Reads the label values that follow the fixed arguments, up to the NULL the
 * header's macros append, and finds (or creates) their series. NULL when the
 * count differs from the family's label count: wrong arity is ignored.
 */
static series_t *series_lookup(sl_metric_t *m, va_list ap)
{
    const char *values[SL_METRICS_MAX_LABELS + 1];
    int n = 0;
    series_t *s;

    /* Never read past the sentinel: stop at NULL or one past the maximum. */
    while (n <= SL_METRICS_MAX_LABELS && (values[n] = va_arg(ap, const char *)) != NULL)
        n++;
    if (n != m->nlabels)
        return NULL;
    for (s = m->series; s != NULL; s = s->next) {
        int i;
        for (i = 0; i < n && strcmp(s->values[i], values[i]) == 0; i++)
            ;
        if (i == n)
            return s;
    }
    return series_new(m, values);
}

void (sl_metrics_add)(sl_metric_t *m, double delta, ...)
{
    series_t *s;
    va_list ap;

    if (m == NULL || m->type == T_HISTOGRAM || m->fn != NULL || isnan(delta))
        return;
    /* A counter only goes up (a reset is a process restart). */
    if (m->type == T_COUNTER && delta < 0)
        return;
    va_start(ap, delta);
    s = series_lookup(m, ap);
    va_end(ap);
    if (s != NULL)
        s->value += delta;
}

void (sl_metrics_set)(sl_metric_t *m, double value, ...)
{
    series_t *s;
    va_list ap;

    if (m == NULL || m->type != T_GAUGE || m->fn != NULL)
        return;
    va_start(ap, value);
    s = series_lookup(m, ap);
    va_end(ap);
    if (s != NULL)
        s->value = value;
}

void (sl_metrics_observe)(sl_metric_t *m, double value, ...)
{
    series_t *s;
    va_list ap;
    int b;

    if (m == NULL || m->type != T_HISTOGRAM || isnan(value))
        return;
    va_start(ap, value);
    s = series_lookup(m, ap);
    va_end(ap);
    if (s == NULL)
        return;
    /* Buckets are "less than or equal" upper bounds. */
    for (b = 0; b < m->nbuckets && value > m->buckets[b]; b++)
        ;
    s->counts[b]++;
    s->sum += value;
    s->count++;
}

/* ---- rendering ---- */

typedef struct buf_s {
    char *p;
    size_t len, cap;
    int failed;
} buf_t;

static int buf_reserve(buf_t *b, size_t more)
{
    size_t cap;
    char *p;

    if (b->failed)
        return -1;
    if (b->len + more + 1 <= b->cap)
        return 0;
    if (b->len + more + 1 > SL_METRICS_MAX_RENDER)
        goto fail;
    for (cap = b->cap ? b->cap : 4096; cap < b->len + more + 1; cap *= 2)
        ;
    if (cap > SL_METRICS_MAX_RENDER)
        cap = SL_METRICS_MAX_RENDER;
    if ((p = realloc(b->p, cap)) == NULL)
        goto fail;
    b->p = p;
    b->cap = cap;
    return 0;
fail:
    b->failed = 1;
    return -1;
}

static void buf_putn(buf_t *b, const char *s, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_puts(buf_t *b, const char *s)
{
    buf_putn(b, s, strlen(s));
}

/* Escapes backslash and newline (HELP), plus '"' for label values. */
static void buf_escaped(buf_t *b, const char *s, int quote)
{
    for (; *s != '\0'; s++) {
        if (*s == '\\')
            buf_puts(b, "\\\\");
        else if (*s == '\n')
            buf_puts(b, "\\n");
        else if (quote && *s == '"')
            buf_puts(b, "\\\"");
        else
            buf_putn(b, s, 1);
    }
}

/* Prometheus floats: NaN, +Inf, -Inf; whole numbers without an exponent. */
static void format_value(char *tmp, size_t len, double v)
{
    if (isnan(v))
        snprintf(tmp, len, "NaN");
    else if (isinf(v))
        snprintf(tmp, len, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 1e18)
        snprintf(tmp, len, "%.0f", v == 0 ? 0.0 : v); /* no "-0" */
    else
        snprintf(tmp, len, "%.15g", v);
}

static void buf_value(buf_t *b, double v)
{
    char tmp[64];

    format_value(tmp, sizeof(tmp), v);
    buf_puts(b, tmp);
}

static void buf_u64(buf_t *b, uint64_t v)
{
    char tmp[32];
    snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)v);
    buf_puts(b, tmp);
}

/* name{l1="v1",...,le="x"} — `le` NULL for non-bucket lines. */
static void buf_series_name(buf_t *b, const sl_metric_t *m, const char *suffix, const series_t *s,
                            const char *le)
{
    int any = 0;

    buf_puts(b, m->name);
    buf_puts(b, suffix);
    for (int i = 0; i < m->nlabels; i++) {
        buf_puts(b, any ? "," : "{");
        buf_puts(b, m->labels[i]);
        buf_puts(b, "=\"");
        buf_escaped(b, s->values[i], 1);
        buf_puts(b, "\"");
        any = 1;
    }
    if (le != NULL) {
        buf_puts(b, any ? ",le=\"" : "{le=\"");
        buf_puts(b, le);
        buf_puts(b, "\"");
        any = 1;
    }
    if (any)
        buf_puts(b, "}");
    buf_puts(b, " ");
}

static void render_family(buf_t *b, const sl_metric_t *m)
{
    static const char *const type_names[] = {"counter", "gauge", "histogram"};

    buf_puts(b, "# HELP ");
    buf_puts(b, m->name);
    buf_puts(b, " ");
    buf_escaped(b, m->help, 0);
    buf_puts(b, "\n# TYPE ");
    buf_puts(b, m->name);
    buf_puts(b, " ");
    buf_puts(b, type_names[m->type]);
    buf_puts(b, "\n");

    for (const series_t *s = m->series; s != NULL; s = s->next) {
        if (m->type != T_HISTOGRAM) {
            buf_series_name(b, m, "", s, NULL);
            buf_value(b, m->fn != NULL ? m->fn(m->arg) : s->value);
            buf_puts(b, "\n");
            continue;
        }
        uint64_t cum = 0;
        for (int i = 0; i <= m->nbuckets; i++) {
            char le[64];

            if (i < m->nbuckets)
                format_value(le, sizeof(le), m->buckets[i]);
            else
                snprintf(le, sizeof(le), "+Inf");
            cum += s->counts[i];
            buf_series_name(b, m, "_bucket", s, le);
            buf_u64(b, cum);
            buf_puts(b, "\n");
        }
        buf_series_name(b, m, "_sum", s, NULL);
        buf_value(b, s->sum);
        buf_puts(b, "\n");
        buf_series_name(b, m, "_count", s, NULL);
        buf_u64(b, s->count);
        buf_puts(b, "\n");
    }
}

char *sl_metrics_render(size_t *len)
{
    buf_t b = {0};

    if (buf_reserve(&b, 0) == 0)
        b.p[0] = '\0'; /* an empty registry renders as "" */
    for (const sl_metric_t *m = families; m != NULL; m = m->next)
        render_family(&b, m);
    if (b.failed) {
        free(b.p);
        if (len != NULL)
            *len = 0;
        return NULL;
    }
    if (len != NULL)
        *len = b.len;
    return b.p;
}

void sl_metrics_reset(void)
{
    sl_metric_t *m, *next;

    for (m = families; m != NULL; m = next) {
        next = m->next;
        family_free(m);
    }
    families = NULL;
    families_tail = &families;
}
