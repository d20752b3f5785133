/*
 * test_flow_park.c — what a parked step holds (issue 10, "parked runs in
 * 4 KiB"): parks N steps of tests/unit/flows/parked.lua on sl.sleep, with a
 * file document that carries a dataset schema, and measures the heap they
 * hold (glibc's mallinfo2: every malloc, Lua's allocator, jansson, libevent)
 * and the Lua VM's share (sl_flowvm_memory). Also checks that flows see the
 * same file.schema values as before it was shared, and that a step that
 * changes the shared schema fails instead of changing other runs' view.
 *
 *   build/test_flow_park [N]     prints parked_step_bytes: heap and Lua, per step
 */
#include "actors/flow.h"
#include "actors/lua_api.h"
#include "core/config.h"
#include "core/curl.h"
#include "core/err.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <jansson.h>
#include <malloc.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "check.h"

#define FLOW "tests/unit/flows/parked.lua"
#define FLOW_TIKA "tests/unit/flows/parked_tika.lua"
/* The step's side of a parked run (10.2 KiB before file.schema was shared and
 * the decoded copies dropped; 3.3 KiB after; 2.4 KiB once the step borrowed
 * the run's names, ctx and path and lost its event, issue 10). The run
 * actor's own struct (actors/run.c) comes on top. */
#define STEP_BYTES_MAX 2560

static struct event_base *base;

static const char *file_json =
    "{\"id\":\"6f1c1f0e-0000-4000-8000-000000000001\",\"name\":\"park-00001.txt\","
    "\"mime\":\"text/plain\",\"size\":38,\"sha256\":"
    "\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\","
    "\"path\":\"/var/lib/sluice/blobs/9f/86/"
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15"
    "b0f00a08\",\"dataset_id\":\"6f1c1f0e-0000-4000-8000-0000000000d5\",\"schema\":"
    "{\"type\":\"object\",\"properties\":{\"title\":{\"type\":\"string\"},"
    "\"reference\":{\"type\":\"string\"},\"date\":{\"type\":\"string\"},"
    "\"total\":{\"type\":\"number\"},\"currency\":{\"type\":\"string\"},"
    "\"email\":{\"type\":\"string\"}},\"required\":[\"title\",\"reference\"]}}";

typedef struct res_s {
    int called, ok;
    char err[64];
    char detail[1024];
    char ctx[4096];
} res_t;

static void step_cb(sl_step_t *s, const sl_step_result_t *r, void *arg)
{
    res_t *res = arg;
    (void)s;
    res->called++;
    res->ok = r->ok;
    snprintf(res->err, sizeof res->err, "%s", r->err ? r->err : "");
    snprintf(res->detail, sizeof res->detail, "%s", r->detail ? r->detail : "");
    snprintf(res->ctx, sizeof res->ctx, "%s", r->ctx_json ? r->ctx_json : "");
}

static double now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec * 1000.0 + tv.tv_usec / 1000.0;
}

static void spin(int ms)
{
    double end = now_ms() + ms;
    while (now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
}

static int start_doc(sl_flowvm_t *vm, sl_flow_t *f, const char *step, const char *dataset,
                     const char *doc, res_t *res, sl_step_t **out);

static int start(sl_flowvm_t *vm, sl_flow_t *f, const char *step, const char *dataset, res_t *res,
                 sl_step_t **out)
{
    return start_doc(vm, f, step, dataset, file_json, res, out);
}

static int start_doc(sl_flowvm_t *vm, sl_flow_t *f, const char *step, const char *dataset,
                     const char *doc, res_t *res, sl_step_t **out)
{
    sl_step_input_t in;
    memset(&in, 0, sizeof in);
    memset(res, 0, sizeof *res);
    in.run_id = "6f1c1f0e-0000-4000-8000-0000000000a1";
    in.tenant_id = "6f1c1f0e-0000-4000-8000-0000000000b2";
    in.dataset_id = dataset;
    in.file_id = "6f1c1f0e-0000-4000-8000-000000000001";
    in.pipeline = "ai_record";
    in.step = step;
    in.attempt = 1;
    in.ctx_json = "{}";
    in.file_json = doc;
    in.tmpdir = "/tmp/sluice-park-test/6f1c1f0e-0000-4000-8000-0000000000a1.1234.1";
    in.borrow = 1; /* as the run actor does: literals, they outlive the step */
    in.file_path = "/var/lib/sluice/blobs/9f/86/"
                   "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"; /* file_json's */
    return sl_step_start(vm, f, &in, step_cb, res, out);
}

static int run_one(sl_flowvm_t *vm, sl_flow_t *f, const char *step, res_t *res)
{
    if (start(vm, f, step, "6f1c1f0e-0000-4000-8000-0000000000d5", res, NULL) != 0)
        return 0;
    double end = now_ms() + 5000;
    while (res->called == 0 && now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    return res->called == 1;
}

/*
 * A step has no event of its own: the VM keeps one deadline list per step
 * timeout and one due list. A step with a short timeout started after
 * long-timeout steps still times out on time, each at its own deadline; a
 * step cancelled before it began is delivered once, "cancelled".
 */
static void test_deadlines(void)
{
    char err[512];
    sl_flowvm_t *vm = NULL;
    sl_flow_t *basic = NULL, *parked = NULL;
    sl_flow_host_t host;
    res_t held, nap1, nap2, early;
    sl_step_t *holder = NULL, *e = NULL;
    sl_step_input_t in;

    memset(&host, 0, sizeof host);
    host.base = base;
    host.lib_dir = "tests/unit/flows/lib"; /* basic.lua's helper */
    CHECK(sl_flowvm_new(&host, &vm, err, sizeof err) == 0);
    CHECK(sl_flow_load(vm, "basic", "tests/unit/flows/basic.lua", &basic, err, sizeof err) == 0);
    CHECK(sl_flow_load(vm, "parked", FLOW, &parked, err, sizeof err) == 0);
    if (basic == NULL || parked == NULL) {
        fprintf(stderr, "%s\n", err);
        goto out;
    }
    CHECK(start(vm, parked, "park", "6f1c1f0e-0000-4000-8000-0000000000d5", &held, &holder) == 0);
    spin(30);
    memset(&in, 0, sizeof in);
    in.step = "long_nap"; /* sleeps 5 s, times out after 0.2 s */
    in.ctx_json = "{}";
    in.file_json = "{}";
    memset(&nap1, 0, sizeof nap1);
    memset(&nap2, 0, sizeof nap2);
    memset(&early, 0, sizeof early);
    double t0 = now_ms();
    CHECK(sl_step_start(vm, basic, &in, step_cb, &nap1, NULL) == 0);
    spin(100);
    CHECK(sl_step_start(vm, basic, &in, step_cb, &nap2, NULL) == 0);
    CHECK(sl_step_start(vm, basic, &in, step_cb, &early, &e) == 0);
    sl_step_cancel(e); /* before it began */
    double end = now_ms() + 3000, at1 = 0, at2 = 0;
    while ((nap1.called == 0 || nap2.called == 0) && now_ms() < end) {
        event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        if (nap1.called && at1 == 0)
            at1 = now_ms() - t0;
        if (nap2.called && at2 == 0)
            at2 = now_ms() - t0;
    }
    CHECK(nap1.called == 1 && strcmp(nap1.err, "timeout") == 0);
    CHECK(nap2.called == 1 && strcmp(nap2.err, "timeout") == 0);
    CHECK(at1 >= 190 && at1 < 290);
    CHECK(at2 >= 290 && at2 < 400);
    CHECK(early.called == 1 && strcmp(early.err, "cancelled") == 0);
    CHECK(held.called == 0); /* its deadline is two hours away */
    sl_step_cancel(holder);
    spin(30);
    CHECK(held.called == 1 && strcmp(held.err, "cancelled") == 0 && early.called == 1);
out:
    sl_flow_unref(basic);
    sl_flow_unref(parked);
    sl_flowvm_free(vm);
}

/*
 * The bench's case: N runs of ai_record's tika step (lua-flows/lib/tika.lua)
 * on a Tika that accepts and never answers, its service capped at 8 calls:
 * 8 steps in curl, the rest waiting for a slot. Prints the heap per step.
 */
static void measure_tika(int n)
{
    char err[512], yaml[512], dir[64], path[128], doc[1024];
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    sl_config_t *cfg = NULL;
    sl_curl_t *curl = NULL;
    sl_flowvm_t *vm = NULL;
    sl_flow_t *f = NULL;
    sl_flow_host_t host;
    res_t *res = calloc((size_t)n, sizeof *res);
    sl_step_t **steps = calloc((size_t)n, sizeof *steps);
    int fd = socket(AF_INET, SOCK_STREAM, 0), started = 0;
    FILE *fp;

    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(res != NULL && steps != NULL && fd >= 0);
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && listen(fd, 64) == 0 &&
          getsockname(fd, (struct sockaddr *)&a, &alen) == 0);
    snprintf(dir, sizeof dir, "/tmp/sl_park_XXXXXX");
    CHECK(mkdtemp(dir) != NULL);
    snprintf(path, sizeof path, "%s/doc.txt", dir);
    if ((fp = fopen(path, "w")) != NULL) {
        fputs("Document 1\nReference: REF-00001\n", fp);
        fclose(fp);
    }
    snprintf(doc, sizeof doc,
             "{\"id\":\"6f1c1f0e-0000-4000-8000-000000000001\",\"name\":\"park-00001.txt\","
             "\"mime\":\"text/plain\",\"size\":33,\"sha256\":"
             "\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\","
             "\"path\":\"%s\",\"dataset_id\":\"6f1c1f0e-0000-4000-8000-0000000000d5\","
             "\"schema\":{\"type\":\"object\",\"properties\":{\"title\":{\"type\":\"string\"},"
             "\"total\":{\"type\":\"number\"}}}}",
             path);
    snprintf(yaml, sizeof yaml,
             "database_url: x\nservices:\n"
             "  tika: {url: \"http://127.0.0.1:%d\", timeout_ms: 3600000}\n",
             ntohs(a.sin_port));
    CHECK(sl_config_load_string(yaml, strlen(yaml), "t.yaml", &cfg, err, sizeof err) == 0);
    CHECK(sl_curl_new(base, &curl) == 0);
    memset(&host, 0, sizeof host);
    host.base = base;
    host.curl = curl;
    host.cfg = cfg;
    host.lib_dir = "lua-flows/lib";
    CHECK(sl_flowvm_new(&host, &vm, err, sizeof err) == 0);
    CHECK(sl_flow_load(vm, "parked_tika", FLOW_TIKA, &f, err, sizeof err) == 0);
    if (f == NULL || res == NULL || steps == NULL) {
        fprintf(stderr, "%s\n", err);
        goto out;
    }
    spin(50);
    struct mallinfo2 m0 = mallinfo2();
    size_t l0 = sl_flowvm_memory(vm);
    for (int i = 0; i < n; i++) {
        sl_step_input_t in;
        memset(&in, 0, sizeof in);
        in.run_id = "6f1c1f0e-0000-4000-8000-0000000000a1";
        in.tenant_id = "6f1c1f0e-0000-4000-8000-0000000000b2";
        in.dataset_id = "6f1c1f0e-0000-4000-8000-0000000000d5";
        in.file_id = "6f1c1f0e-0000-4000-8000-000000000001";
        in.pipeline = "ai_record";
        in.step = "tika";
        in.attempt = 1;
        in.ctx_json = "{}";
        in.file_json = doc;
        in.tmpdir = dir;
        in.borrow = 1; /* dir, doc and path outlive the steps */
        in.file_path = path;
        if (sl_step_start(vm, f, &in, step_cb, &res[i], &steps[i]) == 0)
            started++;
    }
    CHECK(started == n);
    spin(500);
    CHECK(sl_flowvm_running(vm) == n);
    struct mallinfo2 m1 = mallinfo2();
    size_t l1 = sl_flowvm_memory(vm);
    printf("parked_tika_step_bytes: %.0f heap (%.0f of it Lua) per step, %d tika steps parked "
           "(8 in curl, the rest waiting for the service's slot)\n",
           ((double)m1.uordblks - (double)m0.uordblks) / n, ((double)l1 - (double)l0) / n, n);
    for (int i = 0; i < n; i++)
        sl_step_cancel(steps[i]);
    spin(100);
    int called = 0;
    for (int i = 0; i < n; i++)
        called += res[i].called;
    CHECK(called == n);
out:
    sl_flow_unref(f);
    sl_flowvm_free(vm);
    sl_curl_free(curl);
    sl_config_free(cfg);
    close(fd);
    unlink(path);
    rmdir(dir);
    free(res);
    free(steps);
}

/* The decoded schemas are one per dataset and schema, the schema's member
 * order included (sl.schema.openai keeps it): parked steps of one dataset
 * share an entry, another dataset or the same members in another order get
 * their own, and the last step out frees it. */
static void test_schema_entries(sl_flowvm_t *vm, sl_flow_t *f)
{
    static const char *const D1 = "6f1c1f0e-0000-4000-8000-0000000000d5",
                             *D2 = "6f1c1f0e-0000-4000-8000-0000000000d6";
    static const char *const ab = "{\"id\":\"6f1c1f0e-0000-4000-8000-000000000001\","
                                  "\"name\":\"a.txt\",\"mime\":\"text/plain\",\"schema\":"
                                  "{\"type\":\"object\",\"properties\":{\"a\":{\"type\":"
                                  "\"string\"},\"b\":{\"type\":\"string\"}},\"required\":[]}}";
    static const char *const ba = "{\"id\":\"6f1c1f0e-0000-4000-8000-000000000001\","
                                  "\"name\":\"a.txt\",\"mime\":\"text/plain\",\"schema\":"
                                  "{\"type\":\"object\",\"properties\":{\"b\":{\"type\":"
                                  "\"string\"},\"a\":{\"type\":\"string\"}},\"required\":[]}}";
    struct {
        const char *ds, *doc;
        int want;
    } steps[] = {{D1, ab, 1}, {D1, ab, 1}, {D2, ab, 2}, {D1, ba, 3}, {D2, ab, 3}};
    res_t res[5];
    sl_step_t *held[5] = {NULL};
    int base0 = vm->nschemas;
    for (int i = 0; i < 5; i++) {
        CHECK(start_doc(vm, f, "park", steps[i].ds, steps[i].doc, &res[i], &held[i]) == 0);
        spin(20);
        CHECK(vm->nschemas - base0 == steps[i].want);
    }
    for (int i = 0; i < 5; i++)
        sl_step_cancel(held[i]);
    spin(50);
    CHECK(vm->nschemas == base0);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 1000;
    char err[512];
    sl_flowvm_t *vm = NULL;
    sl_flow_t *f = NULL;
    sl_flow_host_t host;
    res_t *res;
    sl_step_t **steps;

    if (n < 10)
        n = 10;
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    memset(&host, 0, sizeof host);
    host.base = base;
    CHECK(sl_flowvm_new(&host, &vm, err, sizeof err) == 0);
    CHECK(sl_flow_load(vm, "parked", FLOW, &f, err, sizeof err) == 0);
    if (f == NULL) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }

    /* Behaviour: the values a flow sees of file.schema. */
    res_t one;
    CHECK(run_one(vm, f, "look", &one));
    CHECK(one.ok);
    json_t *ctx = json_loads(one.ctx, 0, NULL);
    CHECK(ctx != NULL);
    CHECK(strcmp(json_string_value(json_object_get(ctx, "kind")), "table") == 0);
    CHECK(strcmp(json_string_value(json_object_get(ctx, "type")), "object") == 0);
    CHECK(strcmp(json_string_value(json_object_get(ctx, "raw")), "object") == 0);
    CHECK(strcmp(json_string_value(json_object_get(ctx, "title")), "string") == 0);
    CHECK(json_integer_value(json_object_get(ctx, "nprops")) == 6);
    CHECK(json_array_size(json_object_get(ctx, "required")) == 2);
    CHECK(json_is_true(json_object_get(ctx, "after")));
    CHECK(strcmp(json_string_value(json_object_get(ctx, "name")), "park-00001.txt") == 0);
    json_t *enc = json_loads(json_string_value(json_object_get(ctx, "json")), 0, NULL);
    json_t *doc = json_loads(file_json, 0, NULL);
    json_t *want = json_object_get(doc, "schema");
    CHECK(enc != NULL && json_equal(enc, want));
    /* sl.schema.openai keeps the schema's own property order */
    const char *oa = json_string_value(json_object_get(ctx, "openai"));
    CHECK(oa != NULL && strstr(oa, "\"title\"") != NULL && strstr(oa, "\"email\"") != NULL &&
          strstr(oa, "\"title\"") < strstr(oa, "\"email\""));
    json_decref(enc);
    json_decref(doc);
    json_decref(ctx);

    /* Changing the shared schema fails the step, and the next step sees it
     * unchanged: the same shared table (a parked step keeps it alive), put back. */
    res_t held;
    sl_step_t *holder = NULL;
    CHECK(start(vm, f, "park", "6f1c1f0e-0000-4000-8000-0000000000d5", &held, &holder) == 0);
    spin(50);
    CHECK(held.called == 0);
    CHECK(run_one(vm, f, "poke", &one));
    CHECK(!one.ok && strcmp(one.err, "lua_error") == 0 && strstr(one.detail, "read-only") != NULL);
    CHECK(run_one(vm, f, "add", &one));
    CHECK(!one.ok && strcmp(one.err, "lua_error") == 0 && strstr(one.detail, "read-only") != NULL);
    static const char *const more[] = {"drop", "swap", "meta", "copy"};
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) {
        CHECK(run_one(vm, f, more[i], &one));
        CHECK(!one.ok && strcmp(one.err, "lua_error") == 0 &&
              strstr(one.detail, "read-only") != NULL);
    }
    CHECK(run_one(vm, f, "look", &one));
    CHECK(one.ok && strstr(one.ctx, "\"title\":\"string\"") != NULL &&
          strstr(one.ctx, "extra") == NULL);
    sl_step_cancel(holder);
    spin(50);
    CHECK(held.called == 1 && strcmp(held.err, "cancelled") == 0);

    test_deadlines();
    test_schema_entries(vm, f);

    /* Measure: N steps parked on sl.sleep(3600). */
    res = calloc((size_t)n, sizeof *res);
    steps = calloc((size_t)n, sizeof *steps);
    CHECK(res != NULL && steps != NULL);
    spin(50);
    struct mallinfo2 m0 = mallinfo2();
    size_t l0 = sl_flowvm_memory(vm);
    int started = 0;
    for (int i = 0; i < n; i++)
        if (start(vm, f, "park", "6f1c1f0e-0000-4000-8000-0000000000d5", &res[i], &steps[i]) == 0)
            started++;
    CHECK(started == n);
    spin(300); /* every step begins and parks */
    CHECK(sl_flowvm_running(vm) == n);
    struct mallinfo2 m1 = mallinfo2();
    size_t l1 = sl_flowvm_memory(vm);
    double heap = ((double)m1.uordblks - (double)m0.uordblks) / n;
    double lua = ((double)l1 - (double)l0) / n;
    printf("parked_step_bytes: %.0f heap (%.0f of it Lua) per step, %d steps parked on sl.sleep\n",
           heap, lua, n);
    CHECK(heap <= STEP_BYTES_MAX);
    for (int i = 0; i < n; i++)
        sl_step_cancel(steps[i]);
    spin(100);
    int called = 0;
    for (int i = 0; i < n; i++)
        called += res[i].called;
    CHECK(called == n);
    CHECK(res[0].ok == 0 && strcmp(res[0].err, "cancelled") == 0);
    CHECK(strstr(res[0].ctx, "\"props\":2") != NULL && strstr(res[0].ctx, "text/plain") != NULL);
    free(res);
    free(steps);
    sl_flow_unref(f);
    sl_flowvm_free(vm);
    measure_tika(n);
    event_base_free(base);
    return check_summary();
}
