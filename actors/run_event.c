/*
 * run_event.c — Sluice's status events: encoding and publishing (see
 * run_event.h). The JSON's field order is part of the wire format: the SSE
 * tests and clients compare bytes, and api/cache.c scans for "file_id".
 */
#include "actors/run_event.h"
#include "core/err.h"
#include "core/utf8.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Events of one dataset per pub/sub message at most (one PUBLISH, see core/pubsub.h). */
#define RUN_EVENT_BATCH 256

/* Most bytes a string of n bytes takes as JSON: quoted, every byte \u00XX. */
#define STR_MAX(n) (6 * (n) + 2)

/*
 * Writes s at o as a JSON string (null for NULL and for bytes that are not
 * UTF-8, which Postgres never returns) and returns the end; o has room for
 * STR_MAX(strlen(s)). The escapes are jansson's for its default flags, so the
 * bytes are what json_dumps made before (test_run_event compares the two):
 * `"` and `\` and the C0 controls, \b \f \n \r \t short, the others as
 * \u00XX in capitals; '/' and everything past ASCII as they are.
 */
static char *put_str(char *o, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    char *start = o;
    if (s == NULL)
        goto null;
    *o++ = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p;) {
        unsigned char c = *p;
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            *o++ = (char)*p++;
            continue;
        }
        if (c >= 0x80) {
            size_t k = sl_utf8_seq_len(p, strnlen((const char *)p, 4));
            if (k == 0)
                goto null;
            memcpy(o, p, k);
            o += k;
            p += k;
            continue;
        }
        const char *esc = c == '"'    ? "\\\""
                          : c == '\\' ? "\\\\"
                          : c == '\b'  ? "\\b"
                          : c == '\f'  ? "\\f"
                          : c == '\n'  ? "\\n"
                          : c == '\r'  ? "\\r"
                          : c == '\t'  ? "\\t"
                                       : NULL;
        if (esc) {
            memcpy(o, esc, 2);
            o += 2;
        } else {
            memcpy(o, "\\u00", 4);
            o[4] = hex[c >> 4];
            o[5] = hex[c & 15];
            o += 6;
        }
        p++;
    }
    *o++ = '"';
    return o;
null:
    memcpy(start, "null", 4);
    return start + 4;
}

/* The fields after "event" and "seq", in wire order, each with its key. */
static const char *const FIELD[] = {",\"dataset_id\":", ",\"file_id\":", ",\"run_id\":",
                                    ",\"pipeline\":",   ",\"step\":",    ",\"kind\":",
                                    ",\"state\":",      ",\"at\":"};
#define NFIELD (sizeof FIELD / sizeof FIELD[0])

char *sl_run_event_json(const sl_run_event_t *ev)
{
    if (!ev || !ev->event)
        return NULL;
    /* By hand into one buffer sized for the worst case, not through a
     * jansson object and json_dumps: that was 6 % of the engine's CPU in
     * flow_bench (perf, stop 31), one encode per timeline event, and most of
     * the upload's publishing time (a thousand events a batch). */
    const char *val[NFIELD] = {ev->dataset_id, ev->file_id, ev->run_id, ev->pipeline,
                               ev->step,       ev->kind,    ev->state,  ev->at};
    size_t cap = sizeof "{\"event\":,\"seq\":}" + 24 + STR_MAX(strlen(ev->event));
    for (size_t i = 0; i < NFIELD; i++)
        cap += strlen(FIELD[i]) + (val[i] ? STR_MAX(strlen(val[i])) : 4);
    char *s = malloc(cap), *o = s;
    if (!s)
        return NULL;
    memcpy(o, "{\"event\":", 9);
    o = put_str(o + 9, ev->event);
    o += sprintf(o, ",\"seq\":%lld", ev->seq);
    for (size_t i = 0; i < NFIELD; i++) {
        size_t k = strlen(FIELD[i]);
        memcpy(o, FIELD[i], k);
        o = put_str(o + k, val[i]);
    }
    *o++ = '}';
    *o = '\0';
    return s;
}

int sl_run_event_channel(const char *dataset_id, char *buf, size_t buflen)
{
    int n = snprintf(buf, buflen, SL_RUN_EVENT_CHANNEL_PREFIX "%s", dataset_id ? dataset_id : "");
    if (n < 0 || (size_t)n >= buflen)
        return SL_ETOOBIG;
    return n;
}

int sl_run_event_publish(sl_pubsub_t *ps, const sl_run_event_t *ev)
{
    if (!ps)
        return 0;
    char channel[SL_PUBSUB_MAX_CHANNEL];
    if (!ev || !ev->dataset_id || sl_run_event_channel(ev->dataset_id, channel, sizeof channel) < 0)
        return SL_EINVAL;
    char *msg = sl_run_event_json(ev);
    if (!msg)
        return SL_ENOMEM;
    int err = sl_pubsub_publish(ps, channel, msg, strlen(msg));
    free(msg);
    return err;
}

int sl_run_event_from_values(const char *event, const char *const v[SL_RUN_EVENT_NCOLS],
                             sl_run_event_t *ev)
{
    if (!v[0])
        return SL_EINVAL;
    char *end = NULL;
    long long seq = strtoll(v[0], &end, 10);
    if (!end || *end || end == v[0])
        return SL_EINVAL;
    *ev = (sl_run_event_t){event, seq, v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]};
    return 0;
}

int sl_run_event_publish_values(sl_pubsub_t *ps, const char *event,
                                const char *const v[SL_RUN_EVENT_NCOLS])
{
    if (!ps)
        return 0;
    sl_run_event_t ev;
    int err = sl_run_event_from_values(event, v, &ev);
    return err ? err : sl_run_event_publish(ps, &ev);
}

void sl_run_event_row_values(const PGresult *res, int i, const char *v[SL_RUN_EVENT_NCOLS])
{
    for (int k = 0; k < SL_RUN_EVENT_NCOLS; k++)
        v[k] = PQgetisnull(res, i, k) ? NULL : PQgetvalue(res, i, k);
}

/* Rows [from, to) of res, all of one dataset, as one batch on its channel. */
static void publish_batch(sl_pubsub_t *ps, const char *event, const PGresult *res, int from,
                          int to)
{
    char channel[SL_PUBSUB_MAX_CHANNEL];
    const char *msgs[RUN_EVENT_BATCH];
    size_t lens[RUN_EVENT_BATCH];
    size_t n = 0;
    const char *ds = PQgetisnull(res, from, 1) ? NULL : PQgetvalue(res, from, 1);
    if (!ds || sl_run_event_channel(ds, channel, sizeof channel) < 0)
        return;
    for (int i = from; i < to; i++) {
        const char *v[SL_RUN_EVENT_NCOLS];
        sl_run_event_t ev;
        sl_run_event_row_values(res, i, v);
        char *msg = sl_run_event_from_values(event, v, &ev) == 0 ? sl_run_event_json(&ev) : NULL;
        if (msg) {
            msgs[n] = msg;
            lens[n++] = strlen(msg);
        }
    }
    (void)sl_pubsub_publish_many(ps, channel, msgs, lens, n);
    for (size_t i = 0; i < n; i++)
        free((char *)msgs[i]);
}

void sl_run_event_publish_rows(sl_pubsub_t *ps, const char *event, const PGresult *res)
{
    if (!ps)
        return;
    int rows = PQntuples(res);
    for (int from = 0; from < rows;) {
        /* a run of rows of one dataset (the same channel), at most RUN_EVENT_BATCH */
        const char *ds = PQgetisnull(res, from, 1) ? NULL : PQgetvalue(res, from, 1);
        int to = from + 1;
        while (to < rows && to - from < RUN_EVENT_BATCH && ds && !PQgetisnull(res, to, 1) &&
               strcmp(PQgetvalue(res, to, 1), ds) == 0)
            to++;
        publish_batch(ps, event, res, from, to);
        from = to;
    }
}
