/* test_cache.c — api/cache.c: ETags, the two tables, their invalidation by
 * message, fill tickets, and (with redis-server) the cross-instance rule: once
 * a writer's publish is answered, another cache forgets the entry before its
 * next lookup answers, even if its own loop has not run since. */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The module under test is built into the server binary only: compile it here. */
#include "../../api/cache.c"

#include "check.h"
#include "looptest.h"
#include "redistmp.h"

#define HASH_A "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
#define HASH_B "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
#define TENANT "11111111-1111-4111-8111-111111111111"
#define OTHER "22222222-2222-4222-8222-222222222222"
#define FILE1 "33333333-3333-4333-8333-333333333333"
#define FILE2 "44444444-4444-4444-8444-444444444444"

static void test_etag(void)
{
    char e[SL_CACHE_ETAG_LEN], f[SL_CACHE_ETAG_LEN];
    sl_cache_etag("{}", 2, e);
    CHECK_EQ(strlen(e), 34);
    CHECK(e[0] == '"' && e[33] == '"');
    sl_cache_etag("{} ", 3, f);
    CHECK(strcmp(e, f) != 0);
    char list[128];
    snprintf(list, sizeof list, "\"x\", W/%s", e);
    CHECK(sl_cache_etag_match(e, e));
    CHECK(sl_cache_etag_match(list, e));
    CHECK(sl_cache_etag_match("*", e));
    CHECK(!sl_cache_etag_match(NULL, e));
    CHECK(!sl_cache_etag_match("", e));
    CHECK(!sl_cache_etag_match("\"x\", \"y\"", e));
    CHECK(!sl_cache_etag_match(f, e));
    /* a prefix of the tag is not the tag */
    char part[40];
    snprintf(part, sizeof part, "%.20s\"", e);
    CHECK(!sl_cache_etag_match(part, e));
}

static void test_auth(struct event_base *base)
{
    sl_cache_t *c;
    char t[64];
    CHECK(sl_cache_new(base, NULL, NULL, &c) == 0);
    /* no subscriber: never answers, never keeps */
    sl_cache_auth_put(c, HASH_A, TENANT, sl_cache_auth_ticket(c));
    CHECK(!sl_cache_auth_get(c, HASH_A, t, sizeof t));
    sl_cache__set_active(c, 1);
    sl_cache_auth_put(c, HASH_A, TENANT, sl_cache_auth_ticket(c));
    CHECK(sl_cache_auth_get(c, HASH_A, t, sizeof t));
    CHECK_STREQ(t, TENANT);
    CHECK(!sl_cache_auth_get(c, HASH_B, t, sizeof t));
    /* a revocation message forgets the key, and only it */
    sl_cache_auth_put(c, HASH_B, OTHER, sl_cache_auth_ticket(c));
    sl_cache_on_message(c, SL_CACHE_AUTH_CHANNEL, HASH_A, 64);
    CHECK(!sl_cache_auth_get(c, HASH_A, t, sizeof t));
    CHECK(sl_cache_auth_get(c, HASH_B, t, sizeof t));
    /* a query sent before a revocation cannot put its answer back */
    uint64_t ticket = sl_cache_auth_ticket(c);
    sl_cache_on_message(c, SL_CACHE_AUTH_CHANNEL, HASH_A, 64);
    sl_cache_auth_put(c, HASH_A, TENANT, ticket);
    CHECK(!sl_cache_auth_get(c, HASH_A, t, sizeof t));
    /* with a pubsub envelope in front, the same */
    sl_cache_auth_put(c, HASH_A, TENANT, sl_cache_auth_ticket(c));
    sl_cache_on_message(c, SL_CACHE_AUTH_CHANNEL, "inst 9\n" HASH_A, 7 + 64);
    CHECK(!sl_cache_auth_get(c, HASH_A, t, sizeof t));
    CHECK(sl_cache_auth_get(c, HASH_B, t, sizeof t));
    /* "*" forgets every key */
    sl_cache_on_message(c, SL_CACHE_AUTH_CHANNEL, "*", 1);
    CHECK(!sl_cache_auth_get(c, HASH_B, t, sizeof t));
    /* the TTL: an entry past it is not served */
    sl_cache_auth_put(c, HASH_A, TENANT, sl_cache_auth_ticket(c));
    c->auth[hash_str(HASH_A, 64) % SL_CACHE_AUTH_SETS][0].expires = now_s();
    CHECK(!sl_cache_auth_get(c, HASH_A, t, sizeof t));
    /* bounded: many keys fill their sets, never more */
    char h[65];
    for (int i = 0; i < 10 * SL_CACHE_AUTH_SETS * SL_CACHE_WAYS; i++) {
        snprintf(h, sizeof h, "%064d", i);
        sl_cache_auth_put(c, h, TENANT, sl_cache_auth_ticket(c));
    }
    snprintf(h, sizeof h, "%064d", 10 * SL_CACHE_AUTH_SETS * SL_CACHE_WAYS - 1);
    CHECK(sl_cache_auth_get(c, h, t, sizeof t)); /* the newest stays */
    sl_cache_free(c);
}

static const char DONE_DOC[] = "{\"id\" : \"" FILE1 "\", \"status\" : \"done\"}";
static const char QUEUED_DOC[] = "{\"id\" : \"" FILE2 "\", \"runs\" : [{\"state\" : \"queued\"}]}";

static char *event_for(const char *file_id)
{
    static char buf[512];
    snprintf(buf, sizeof buf,
             "inst 1\n{\"event\":\"run\",\"seq\":7,\"dataset_id\":\"%s\",\"file_id\":\"%s\","
             "\"run_id\":null,\"pipeline\":null,\"step\":null,\"kind\":\"done\",\"state\":\"done\","
             "\"at\":null}",
             OTHER, file_id);
    return buf;
}

static int published;
static void published_cb(void *arg)
{
    (void)arg;
    published++;
}

static void put_doc(sl_cache_t *c, const char *id, const char *doc)
{
    char e[SL_CACHE_ETAG_LEN];
    sl_cache_etag(doc, strlen(doc), e);
    sl_cache_file_put(c, TENANT, id, doc, strlen(doc), e, sl_cache_file_ticket(c));
}

static void test_files(struct event_base *base)
{
    sl_cache_t *c;
    const char *body, *etag;
    size_t len;
    CHECK(sl_cache_new(base, NULL, NULL, &c) == 0);
    sl_cache__set_active(c, 1);
    put_doc(c, FILE1, DONE_DOC);
    CHECK(sl_cache_file_get(c, TENANT, FILE1, &body, &len, &etag));
    CHECK_EQ(len, strlen(DONE_DOC));
    CHECK(memcmp(body, DONE_DOC, len) == 0);
    CHECK(etag[0] == '"');
    /* another tenant asking for the id: a miss (the database answers 404) */
    CHECK(!sl_cache_file_get(c, OTHER, FILE1, &body, &len, &etag));
    /* an event of another file leaves it; an event of this file forgets it */
    char *ev = event_for(FILE2);
    sl_cache_on_message(c, "sluice:ds:" OTHER, ev, strlen(ev));
    CHECK(sl_cache_file_get(c, TENANT, FILE1, &body, &len, &etag));
    ev = event_for(FILE1);
    sl_cache_on_message(c, "sluice:ds:" OTHER, ev, strlen(ev));
    CHECK(!sl_cache_file_get(c, TENANT, FILE1, &body, &len, &etag));
    /* an engine-forwarded event has no envelope: same */
    put_doc(c, FILE1, DONE_DOC);
    ev = strchr(event_for(FILE1), '\n') + 1;
    sl_cache_on_message(c, "sluice:ds:" OTHER, ev, strlen(ev));
    CHECK(!sl_cache_file_get(c, TENANT, FILE1, &body, &len, &etag));
    /* a batch of events (core/pubsub.h sl_pubsub_publish_many) forgets every file it names */
    put_doc(c, FILE1, DONE_DOC);
    put_doc(c, FILE2, DONE_DOC);
    {
        char e2[512], batch[1200];
        snprintf(e2, sizeof e2, "%s", strchr(event_for(FILE2), '\n') + 1);
        const char *e1 = strchr(event_for("55555555-5555-4555-8555-555555555555"), '\n') + 1;
        int bl = snprintf(batch, sizeof batch, "inst 3:2\n%zu\n%s", strlen(e1), e1);
        bl += snprintf(batch + bl, sizeof batch - (size_t)bl, "%zu\n%s", strlen(e2), e2);
        sl_cache_on_message(c, "sluice:ds:" OTHER, batch, (size_t)bl);
        CHECK(!sl_cache_file_get(c, TENANT, FILE2, &body, &len, &etag)); /* the second named */
        CHECK(sl_cache_file_get(c, TENANT, FILE1, &body, &len, &etag));
    }
    /* a document with a queued run goes with the next event of any file */
    put_doc(c, FILE2, QUEUED_DOC);
    put_doc(c, FILE1, DONE_DOC);
    CHECK(sl_cache_file_get(c, TENANT, FILE2, &body, &len, &etag));
    ev = event_for("55555555-5555-4555-8555-555555555555");
    sl_cache_on_message(c, "sluice:ds:" OTHER, ev, strlen(ev));
    CHECK(!sl_cache_file_get(c, TENANT, FILE2, &body, &len, &etag));
    CHECK(sl_cache_file_get(c, TENANT, FILE1, &body, &len, &etag));
    /* the cache's own channel */
    sl_cache_on_message(c, SL_CACHE_FILE_CHANNEL, FILE1, 36);
    CHECK(!sl_cache_file_get(c, TENANT, FILE1, &body, &len, &etag));
    /* a fill whose query started before an event is dropped */
    uint64_t ticket = sl_cache_file_ticket(c);
    ev = event_for(FILE1);
    sl_cache_on_message(c, "sluice:ds:" OTHER, ev, strlen(ev));
    char e[SL_CACHE_ETAG_LEN];
    sl_cache_etag(DONE_DOC, strlen(DONE_DOC), e);
    sl_cache_file_put(c, TENANT, FILE1, DONE_DOC, strlen(DONE_DOC), e, ticket);
    CHECK(!sl_cache_file_get(c, TENANT, FILE1, &body, &len, &etag));
    /* a put finds the file's own entry even behind a free way: never two entries */
    file_ent_t *set = c->files[hash_str(FILE1, UUID_LEN) % SL_CACHE_FILE_SETS];
    for (int w = 0; w < SL_CACHE_WAYS; w++)
        file_ent_clear(c, &set[w]);
    put_doc(c, FILE1, QUEUED_DOC);
    CHECK(set[0].body != NULL);
    set[1] = set[0]; /* the entry moves to way 1; way 0 is free */
    memset(&set[0], 0, sizeof set[0]);
    put_doc(c, FILE1, DONE_DOC);
    CHECK(set[0].id[0] == '\0');
    CHECK(sl_cache_file_get(c, TENANT, FILE1, &body, &len, &etag));
    CHECK_EQ(len, strlen(DONE_DOC));
    sl_cache_on_message(c, SL_CACHE_FILE_CHANNEL, FILE1, 36);
    CHECK(!sl_cache_file_get(c, TENANT, FILE1, &body, &len, &etag));
    /* too big a body is not kept */
    size_t big = SL_CACHE_FILE_MAX_BODY + 1;
    char *p = malloc(big);
    memset(p, 'x', big);
    sl_cache_file_put(c, TENANT, FILE1, p, big, e, sl_cache_file_ticket(c));
    CHECK(!sl_cache_file_get(c, TENANT, FILE1, &body, &len, &etag));
    free(p);
    /* publishing forgets locally at once, and calls back later even without Redis */
    put_doc(c, FILE1, DONE_DOC);
    published = 0;
    CHECK(sl_cache_publish_file(c, FILE1, published_cb, NULL) == 0);
    CHECK(!sl_cache_file_get(c, TENANT, FILE1, &body, &len, &etag));
    CHECK_EQ(published, 0);
    looptest_run_until(base, &published, 1, 2);
    CHECK_EQ(published, 1);
    CHECK(sl_cache_publish_file(c, "not-a-uuid", published_cb, NULL) == SL_EINVAL);
    sl_cache_free(c);
}

/* ---- with Redis ---- */

static void wait_active(struct event_base *base, sl_cache_t *c, double secs)
{
    double deadline = looptest_now_s() + secs;
    struct event *t = evtimer_new(base, looptest_tick_cb, NULL);
    while (!sl_cache_active(c) && looptest_now_s() < deadline) {
        struct timeval tv = {0, 20000};
        evtimer_add(t, &tv);
        event_base_loop(base, EVLOOP_ONCE);
    }
    event_free(t);
}

static void wait_redis(struct event_base *base, sl_redis_t *r, double secs)
{
    double deadline = looptest_now_s() + secs;
    struct event *t = evtimer_new(base, looptest_tick_cb, NULL);
    while (!sl_redis_up(r) && looptest_now_s() < deadline) {
        struct timeval tv = {0, 20000};
        evtimer_add(t, &tv);
        event_base_loop(base, EVLOOP_ONCE);
    }
    event_free(t);
}

static void test_redis(void)
{
    char url[64];
    int port = -1;
    pid_t pid = redistmp_open(url, sizeof url, &port);
    if (pid == 0) {
        CHECK_SKIPPED("redis-server not installed: the Redis tests did not run");
        return;
    }
    CHECK(pid > 0);

    /* Two instances, each with its own loop: A's loop does not run while B writes. */
    struct event_base *ba = event_base_new(), *bb = event_base_new();
    sl_redis_t *pubb;
    sl_cache_t *a, *b;
    CHECK(sl_redis_new(bb, url, &pubb) == 0);
    CHECK(sl_cache_new(ba, NULL, url, &a) == 0);
    CHECK(sl_cache_new(bb, pubb, url, &b) == 0);
    wait_active(ba, a, 20);
    wait_active(bb, b, 20);
    wait_redis(bb, pubb, 20);
    CHECK(sl_cache_active(a) && sl_cache_active(b) && sl_redis_up(pubb));

    const char *body, *etag;
    size_t len;
    char t[64];
    for (int round = 0; round < 20; round++) {
        put_doc(a, FILE1, DONE_DOC);
        sl_cache_auth_put(a, HASH_A, TENANT, sl_cache_auth_ticket(a));
        CHECK(sl_cache_file_get(a, TENANT, FILE1, &body, &len, &etag));
        CHECK(sl_cache_auth_get(a, HASH_A, t, sizeof t));
        published = 0;
        CHECK(sl_cache_publish_file(b, FILE1, published_cb, NULL) == 0);
        CHECK(sl_cache_publish_revoke(b, HASH_A, published_cb, NULL) == 0);
        CHECK_EQ(published, 0); /* never inside the call */
        looptest_run_until(bb, &published, 2, 5);
        CHECK_EQ(published, 2);
        /* Redis has answered B: A's next lookups see it, with A's loop never run. */
        CHECK(!sl_cache_file_get(a, TENANT, FILE1, &body, &len, &etag));
        CHECK(!sl_cache_auth_get(a, HASH_A, t, sizeof t));
    }

    /* Redis goes away: nothing is served; back: what was kept before is gone. */
    put_doc(a, FILE1, DONE_DOC);
    redistmp_stop(pid);
    for (int i = 0; i < 50 && sl_cache_active(a); i++) {
        struct timeval tv = {0, 20000};
        event_base_loopexit(ba, &tv);
        event_base_dispatch(ba);
    }
    CHECK(!sl_cache_active(a));
    CHECK(!sl_cache_file_get(a, TENANT, FILE1, &body, &len, &etag));
    uint64_t stale = sl_cache_file_ticket(a);
    pid = redistmp_start(port);
    wait_active(ba, a, 20);
    CHECK(sl_cache_active(a));
    put_doc(a, FILE2, DONE_DOC);
    CHECK(!sl_cache_file_get(a, TENANT, FILE1, &body, &len, &etag));
    CHECK(sl_cache_file_get(a, TENANT, FILE2, &body, &len, &etag));
    /* a ticket taken while down never fills */
    char e[SL_CACHE_ETAG_LEN];
    sl_cache_etag(DONE_DOC, strlen(DONE_DOC), e);
    sl_cache_file_put(a, TENANT, FILE1, DONE_DOC, strlen(DONE_DOC), e, stale);
    CHECK(!sl_cache_file_get(a, TENANT, FILE1, &body, &len, &etag));

    sl_cache_free(a);
    sl_cache_free(b);
    sl_redis_free(pubb);
    redistmp_stop(pid);
    event_base_free(ba);
    event_base_free(bb);
}

/* issue 13: a credential's key id and scopes ride along; a revocation by id forgets them. */
static void test_cred(struct event_base *base)
{
    sl_cache_t *c;
    sl_cache_cred_t in, out;
    CHECK(sl_cache_new(base, NULL, NULL, &c) == 0);
    sl_cache__set_active(c, 1);
    memset(&in, 0, sizeof in);
    memcpy(in.tenant_id, TENANT, sizeof TENANT);
    memcpy(in.key_id, FILE1, sizeof FILE1);
    in.scopes = 5;
    sl_cache_cred_put(c, HASH_A, &in, sl_cache_auth_ticket(c));
    memset(&out, 0, sizeof out);
    CHECK(sl_cache_cred_get(c, HASH_A, &out));
    CHECK_STREQ(out.tenant_id, TENANT);
    CHECK_STREQ(out.key_id, FILE1);
    CHECK(out.scopes == 5);
    CHECK(!sl_cache_cred_get(c, HASH_B, &out));
    /* a stale ticket is dropped; a message forgets */
    uint64_t ticket = sl_cache_auth_ticket(c);
    sl_cache_on_message(c, SL_CACHE_AUTH_CHANNEL, HASH_B, 64);
    sl_cache_cred_put(c, HASH_B, &in, ticket);
    CHECK(!sl_cache_cred_get(c, HASH_B, &out));
    sl_cache_on_message(c, SL_CACHE_AUTH_CHANNEL, HASH_A, 64);
    CHECK(!sl_cache_cred_get(c, HASH_A, &out));
    sl_cache_free(c);
}

static uint64_t heard[8];
static int nheard;

static void heard_cb(uint64_t tag, void *arg)
{
    CHECK(arg == &nheard);
    if (nheard < 8)
        heard[nheard++] = tag;
}

/* Revocations reach the listener (api/events.c ends streams with them): a
 * message's tag, 0 for "*" or an unreadable message, and a local publish. */
static void test_revoke_listener(struct event_base *base)
{
    sl_cache_t *c;
    CHECK(sl_cache_revoke_tag(HASH_A) == 0xaaaaaaaaaaaaaaaaull);
    char zeros[65];
    memcpy(zeros, HASH_A, sizeof zeros);
    memset(zeros, '0', 16);
    CHECK(sl_cache_revoke_tag(zeros) == 1); /* never 0 */
    CHECK(sl_cache_revoke_tag("short") == 0);
    CHECK(sl_cache_revoke_tag(NULL) == 0);
    CHECK(sl_cache_new(base, NULL, NULL, &c) == 0);
    sl_cache_on_message(c, SL_CACHE_AUTH_CHANNEL, HASH_B, 64); /* no listener yet */
    sl_cache_on_revoke(c, heard_cb, &nheard);
    sl_cache_on_message(c, SL_CACHE_AUTH_CHANNEL, HASH_A, 64);
    sl_cache_on_message(c, SL_CACHE_AUTH_CHANNEL, "inst 9\n" HASH_B, 7 + 64);
    sl_cache_on_message(c, SL_CACHE_AUTH_CHANNEL, "*", 1);
    sl_cache_on_message(c, SL_CACHE_AUTH_CHANNEL, "x", 1);
    sl_cache_on_message(c, SL_CACHE_FILE_CHANNEL, FILE1, 36); /* not a revocation */
    CHECK(sl_cache_publish_revoke(c, HASH_A, (sl_cache_done_cb)free, malloc(1)) == 0);
    CHECK_EQ(nheard, 5);
    CHECK(heard[0] == 0xaaaaaaaaaaaaaaaaull && heard[1] == 0xbbbbbbbbbbbbbbbbull);
    CHECK(heard[2] == 0 && heard[3] == 0 && heard[4] == 0xaaaaaaaaaaaaaaaaull);
    sl_cache_on_revoke(c, NULL, NULL);
    sl_cache_on_message(c, SL_CACHE_AUTH_CHANNEL, HASH_A, 64);
    CHECK_EQ(nheard, 5);
    event_base_loop(base, EVLOOP_NONBLOCK); /* the publish's callback (no Redis) */
    sl_cache_free(c);
}

int main(void)
{
    struct event_base *base = event_base_new();
    test_etag();
    test_auth(base);
    test_cred(base);
    test_revoke_listener(base);
    test_files(base);
    test_redis();
    event_base_free(base);
    return check_summary();
}
