/*
 * test_run_event.c — unit tests for actors/run_event.c: the status event's
 * exact JSON (the wire format SSE clients and api/cache.c read), its dataset
 * channel, and publishing database rows through a local pubsub.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <jansson.h>

#include "actors/run_event.h"
#include "core/err.h"
#include "core/pubsub.h"

#define CHECK_STREAM stdout
#include "check.h"

static void test_event_json(void)
{
    sl_run_event_t ev = {"run",     12,
                         "d",       "f",
                         "r",       "ai_record",
                         "tika",    "step_started",
                         "running", "2024-01-01T00:00:00.000Z"};
    char *s = sl_run_event_json(&ev);
    CHECK(s && strcmp(s, "{\"event\":\"run\",\"seq\":12,\"dataset_id\":\"d\",\"file_id\":\"f\","
                         "\"run_id\":\"r\",\"pipeline\":\"ai_record\",\"step\":\"tika\","
                         "\"kind\":\"step_started\",\"state\":\"running\","
                         "\"at\":\"2024-01-01T00:00:00.000Z\"}") == 0);
    free(s);
    sl_run_event_t f = {"file", 13, "d", "f", NULL, NULL, NULL, "deleted", "deleted", NULL};
    s = sl_run_event_json(&f);
    CHECK(s && strstr(s, "\"run_id\":null") && strstr(s, "\"seq\":13"));
    free(s);
    sl_run_event_t none = {0};
    CHECK(sl_run_event_json(&none) == NULL); /* no event name */
    CHECK(sl_run_event_json(NULL) == NULL);

    char ch[SL_PUBSUB_MAX_CHANNEL];
    CHECK(sl_run_event_channel("abc", ch, sizeof ch) == 13 && strcmp(ch, "sluice:ds:abc") == 0);
    CHECK(sl_run_event_channel("abc", ch, 5) == SL_ETOOBIG);
    CHECK(strcmp(SL_RUN_EVENT_PATTERN, "sluice:ds:*") == 0);
}

/* What the encoder made before it was written by hand: a jansson object, dumped. */
static char *jansson_json(const sl_run_event_t *ev)
{
    json_t *o = json_object();
    const char *k[] = {"dataset_id", "file_id", "run_id", "pipeline", "step", "kind", "state", "at"};
    const char *v[] = {ev->dataset_id, ev->file_id, ev->run_id, ev->pipeline,
                       ev->step,       ev->kind,    ev->state,  ev->at};
    json_object_set_new(o, "event", json_string(ev->event));
    json_object_set_new(o, "seq", json_integer((json_int_t)ev->seq));
    for (int i = 0; i < 8; i++)
        json_object_set_new(o, k[i], v[i] ? json_string(v[i]) : json_null());
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

/* The hand-written encoder makes jansson's bytes: every ASCII byte, C0
 * controls and escapes included, UTF-8 of 2 to 4 bytes, '/', big and
 * negative seqs. Bytes that are not UTF-8 (Postgres never returns them)
 * become null, where jansson dropped the field. */
static void test_event_json_escapes(void)
{
    char all[128];
    for (int i = 1; i < 128; i++)
        all[i - 1] = (char)i;
    all[127] = '\0';
    const char *strs[] = {all, "", "a/b", "\xc3\xa9t\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "\"\\\"",
                          "line\nbreak\ttab\x7f"};
    const long long seqs[] = {0, -1, 9223372036854775807LL, 42};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++) {
        sl_run_event_t ev = {"run", seqs[i % 4], strs[i], "f", NULL, strs[i], strs[i], "kind",
                             NULL, strs[i]};
        char *mine = sl_run_event_json(&ev), *theirs = jansson_json(&ev);
        CHECK(mine && theirs && strcmp(mine, theirs) == 0);
        json_t *back = mine ? json_loads(mine, 0, NULL) : NULL;
        CHECK(back && strcmp(json_string_value(json_object_get(back, "step")), strs[i]) == 0);
        json_decref(back);
        free(mine);
        free(theirs);
    }
    sl_run_event_t bad = {"run", 1, "d", "f\xff", NULL, NULL, NULL, "k", "s", NULL};
    char *s = sl_run_event_json(&bad);
    CHECK(s && strstr(s, "\"file_id\":null,") != NULL);
    free(s);
}

typedef struct rec_s {
    int calls;
    char channel[SL_PUBSUB_MAX_CHANNEL];
    char last[512];
} rec_t;

static void rec_cb(const char *channel, const char *msg, size_t len, uint64_t msg_id, void *arg)
{
    rec_t *r = arg;
    (void)msg_id;
    if (!msg)
        return;
    r->calls++;
    snprintf(r->channel, sizeof r->channel, "%s", channel);
    snprintf(r->last, sizeof r->last, "%.*s", (int)len, msg);
}

static void test_publish_values(void)
{
    struct event_base *base = event_base_new();
    sl_pubsub_t *ps = NULL;
    CHECK(sl_pubsub_new(base, NULL, NULL, NULL, "inst-a", &ps) == 0);
    rec_t r = {0};
    sl_pubsub_sub_t *sub = NULL;
    CHECK(sl_pubsub_subscribe(ps, "sluice:ds:d1", rec_cb, &r, &sub) == 0);

    /* a row of SL_RUN_EVENT_COLUMNS, as text, NULL for SQL NULL */
    const char *v[SL_RUN_EVENT_NCOLS] = {
        "7", "d1", "f1", NULL, NULL, NULL, "uploaded", "queued", "2024-01-01T00:00:00.000Z"};
    CHECK(sl_run_event_publish_values(ps, "file", v) == 0);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK(r.calls == 1);
    CHECK(strcmp(r.channel, "sluice:ds:d1") == 0);
    CHECK(strcmp(r.last, "{\"event\":\"file\",\"seq\":7,\"dataset_id\":\"d1\",\"file_id\":\"f1\","
                         "\"run_id\":null,\"pipeline\":null,\"step\":null,\"kind\":\"uploaded\","
                         "\"state\":\"queued\",\"at\":\"2024-01-01T00:00:00.000Z\"}") == 0);

    /* refused: a seq that is not a number, no seq, no dataset; nothing published */
    const char *bad[SL_RUN_EVENT_NCOLS] = {"7x", "d1", "f1", NULL, NULL, NULL, "k", "s", NULL};
    CHECK(sl_run_event_publish_values(ps, "run", bad) == SL_EINVAL);
    bad[0] = NULL;
    CHECK(sl_run_event_publish_values(ps, "run", bad) == SL_EINVAL);
    bad[0] = "";
    CHECK(sl_run_event_publish_values(ps, "run", bad) == SL_EINVAL);
    sl_run_event_t nods = {"run", 8, NULL, "f1", NULL, NULL, NULL, "k", "s", NULL};
    CHECK(sl_run_event_publish(ps, &nods) == SL_EINVAL);
    event_base_loop(base, EVLOOP_NONBLOCK);
    CHECK(r.calls == 1);

    /* no pubsub: a no-op */
    CHECK(sl_run_event_publish_values(NULL, "run", v) == 0);
    CHECK(sl_run_event_publish(NULL, &nods) == 0);

    sl_pubsub_unsubscribe(ps, sub);
    sl_pubsub_free(ps);
    event_base_free(base);
}

int main(void)
{
    test_event_json();
    test_event_json_escapes();
    test_publish_values();
    return check_summary_prefixed("test_run_event: ");
}
