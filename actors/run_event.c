/*
 * run_event.c — Sluice's status events: encoding and publishing (see
 * run_event.h). The JSON's field order is part of the wire format: the SSE
 * tests and clients compare bytes, and api/cache.c scans for "file_id".
 */
#include "actors/run_event.h"
#include "core/err.h"

#include <jansson.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Events of one dataset per pub/sub message at most (one PUBLISH, see core/pubsub.h). */
#define RUN_EVENT_BATCH 256

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

char *sl_run_event_json(const sl_run_event_t *ev)
{
    if (!ev || !ev->event)
        return NULL;
    json_t *o = json_object();
    if (!o)
        return NULL;
    /* Insertion order is kept by jansson: the field order is stable. */
    json_object_set_new(o, "event", json_string(ev->event));
    json_object_set_new(o, "seq", json_integer((json_int_t)ev->seq));
    json_object_set_new(o, "dataset_id", str_or_null(ev->dataset_id));
    json_object_set_new(o, "file_id", str_or_null(ev->file_id));
    json_object_set_new(o, "run_id", str_or_null(ev->run_id));
    json_object_set_new(o, "pipeline", str_or_null(ev->pipeline));
    json_object_set_new(o, "step", str_or_null(ev->step));
    json_object_set_new(o, "kind", str_or_null(ev->kind));
    json_object_set_new(o, "state", str_or_null(ev->state));
    json_object_set_new(o, "at", str_or_null(ev->at));
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
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
