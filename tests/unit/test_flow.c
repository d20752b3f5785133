/*
 * test_flow.c — actors/flow.c and friends: loading and checking flows, the
 * sandbox and budgets, steps as coroutines (ok, failure, error, timeout,
 * cancel), the primitives (exec, sleep, http against an in-test evhttp peer,
 * json/hash utilities), the service policy (circuit breaker, concurrency cap),
 * and the database primitives (artifact, read_artifact, record,
 * set_text_source) against a real Postgres: SL_TEST_DATABASE_URL, or a
 * throwaway cluster started here the way test_pg.c does.
 *
 * Flows live in tests/unit/flows/ (run from the repository root).
 */
#include "actors/flow.h"
#include "core/config.h"
#include "core/crypto.h"
#include "core/err.h"
#include "core/metrics.h"
#include "core/workq.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <fcntl.h>
#include <glob.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "pgtmp.h"

#define FLOWS "tests/unit/flows"

static struct event_base *base;
static struct event *tick;
static sl_flowvm_t *vm;
static sl_flow_t *basic;
static char tmpdir[64];

static double now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec * 1000.0 + tv.tv_usec / 1000.0;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
}

static int wait_int(const int *flag, int want, int timeout_ms)
{
    double end = now_ms() + timeout_ms;
    while (*flag < want && now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    return *flag >= want;
}

static void spin_ms(int ms)
{
    double end = now_ms() + ms;
    while (now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
}

/* ---- running a step and recording its result ---- */

typedef struct res_s {
    int returned;
    int sync_call;
    int called;
    int ok;
    char err[64];
    int transient;
    char detail[4096];
    char ctx[16384];
    double dur;
} res_t;

static void step_cb(sl_step_t *s, const sl_step_result_t *r, void *arg)
{
    res_t *res = arg;
    if (!res->returned)
        res->sync_call = 1;
    res->called++;
    res->ok = r->ok;
    snprintf(res->err, sizeof(res->err), "%s", r->err ? r->err : "");
    res->transient = r->transient;
    snprintf(res->detail, sizeof(res->detail), "%s", r->detail ? r->detail : "");
    snprintf(res->ctx, sizeof(res->ctx), "%s", r->ctx_json ? r->ctx_json : "");
    res->dur = r->duration_s;
}

static const char *file_json =
    "{\"id\":\"f\",\"name\":\"doc.pdf\",\"mime\":\"application/pdf\",\"size\":3}";

/* ids used for the step inputs; real UUIDs once the database part sets them */
static char t_id[37] = "t", d_id[37] = "d", f_id[37] = "f", r_id[37] = "r";

/* The scratch dir and its "made" flag the steps get: tmpdir and none unless a
 * test sets them (test_scratch_lazy). */
static const char *step_tmpdir;
static int *step_tmpdir_made;

static sl_step_t *start_step(sl_flow_t *f, const char *step, const char *ctx, res_t *res)
{
    sl_step_input_t in;
    sl_step_t *s = NULL;
    memset(res, 0, sizeof(*res));
    memset(&in, 0, sizeof(in));
    in.run_id = r_id;
    in.tenant_id = t_id;
    in.dataset_id = d_id;
    in.file_id = f_id;
    in.pipeline = "test";
    in.step = step;
    in.attempt = 1;
    in.ctx_json = ctx;
    in.file_json = file_json;
    in.tmpdir = step_tmpdir ? step_tmpdir : tmpdir;
    in.tmpdir_made = step_tmpdir_made;
    int rc = sl_step_start(vm, f, &in, step_cb, res, &s);
    res->returned = 1;
    CHECK(rc == 0);
    CHECK(res->called == 0);
    return rc == 0 ? s : NULL;
}

static void run_step(sl_flow_t *f, const char *step, const char *ctx, res_t *res, int timeout_ms)
{
    if (start_step(f, step, ctx, res) == NULL)
        return;
    CHECK(wait_int(&res->called, 1, timeout_ms));
    CHECK(res->sync_call == 0);
}

/* The value of key in the result's ctx, as compact JSON text ("" if missing). */
static const char *ctx_get(const res_t *res, const char *key)
{
    static char out[4096];
    json_t *j = json_loads(res->ctx, 0, NULL), *v;
    out[0] = '\0';
    if (j && (v = json_object_get(j, key)) != NULL) {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        snprintf(out, sizeof(out), "%s", s ? s : "");
        free(s);
    }
    json_decref(j);
    return out;
}

/* ---- the in-test HTTP peer ---- */

static struct evhttp *peer;
static int peer_port;
static int peer_inflight, peer_max, peer_hits;

typedef struct slow_s {
    struct evhttp_request *req;
    struct event *ev;
} slow_t;

static void slow_cb(evutil_socket_t fd, short what, void *arg)
{
    slow_t *sl = arg;
    struct evbuffer *b = evbuffer_new();
    evbuffer_add_printf(b, "slow");
    evhttp_send_reply(sl->req, 200, "OK", b);
    evbuffer_free(b);
    peer_inflight--;
    event_free(sl->ev);
    free(sl);
}

static void peer_cb(struct evhttp_request *req, void *arg)
{
    const char *uri = evhttp_request_get_uri(req);
    struct evbuffer *b = evbuffer_new();
    peer_hits++;
    if (strncmp(uri, "/slow", 5) == 0) {
        slow_t *sl = calloc(1, sizeof(*sl));
        struct timeval tv = {0, 200000};
        sl->req = req;
        sl->ev = evtimer_new(base, slow_cb, sl);
        evtimer_add(sl->ev, &tv);
        if (++peer_inflight > peer_max)
            peer_max = peer_inflight;
        evbuffer_free(b);
        return;
    }
    if (strncmp(uri, "/fail", 5) == 0) {
        evbuffer_add_printf(b, "down");
        evhttp_send_reply(req, 503, "Service Unavailable", b);
    } else {
        const char *xr = evhttp_find_header(evhttp_request_get_input_headers(req), "X-Req");
        evhttp_add_header(evhttp_request_get_output_headers(req), "X-Test", xr ? xr : "none");
        evbuffer_add_printf(b, "hello");
        evhttp_send_reply(req, 200, "OK", b);
    }
    evbuffer_free(b);
}

static int peer_start(void)
{
    struct evhttp_bound_socket *h;
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    peer = evhttp_new(base);
    if (!peer || (h = evhttp_bind_socket_with_handle(peer, "127.0.0.1", 0)) == NULL)
        return -1;
    evhttp_set_gencb(peer, peer_cb, NULL);
    if (getsockname(evhttp_bound_socket_get_fd(h), (struct sockaddr *)&sa, &sl) != 0)
        return -1;
    peer_port = ntohs(sa.sin_port);
    return 0;
}

/* A port nobody listens on: bound, then closed. */
static int refused_port(void)
{
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    close(fd);
    return ntohs(sa.sin_port);
}

/* ---- tests: loading ---- */

static void expect_load_error(const char *file, const char *want)
{
    char path[256], err[1024];
    sl_flow_t *f = NULL;
    snprintf(path, sizeof(path), FLOWS "/%s", file);
    int rc = sl_flow_load(vm, "t", path, &f, err, sizeof(err));
    CHECK(rc != 0);
    CHECK(f == NULL);
    if (strstr(err, want) == NULL) {
        fprintf(stderr, "  %s: got \"%s\", want \"%s\"\n", file, err, want);
        CHECK(!"load error message");
    } else {
        passed++;
    }
}

static void test_load(void)
{
    char err[1024];
    CHECK(sl_flow_load(vm, "basic", FLOWS "/basic.lua", &basic, err, sizeof(err)) == 0);
    if (basic == NULL) {
        fprintf(stderr, "basic.lua: %s\n", err);
        return;
    }
    CHECK(strcmp(sl_flow_start(basic), "ok") == 0);
    CHECK(strcmp(sl_flow_name(basic), "basic") == 0);
    CHECK(sl_flow_nsteps(basic) >= 20);
    CHECK(strlen(sl_flow_version(basic)) == 64);
    /* definition order = line order */
    CHECK(strcmp(sl_flow_step_at(basic, 0)->name, "ok") == 0);
    CHECK(strcmp(sl_flow_step_at(basic, 1)->name, "no_text") == 0);
    const sl_flow_step_t *ln = sl_flow_step(basic, "long_nap");
    CHECK(ln != NULL && ln->timeout_ms == 200);
    const sl_flow_step_t *ok = sl_flow_step(basic, "ok");
    CHECK(ok != NULL && strcmp(ok->next, "no_text") == 0 && ok->fallback == NULL);
    CHECK(ok != NULL && ok->timeout_ms == 300000 && ok->retry_attempts == 3 &&
          ok->retry_base_ms == 500 && ok->retry_max_ms == 30000);
    CHECK(ok != NULL && ok->line == 9);
    CHECK(sl_flow_step(basic, "nope") == NULL);

    expect_load_error("err_nostart.lua", FLOWS "/err_nostart.lua:2: flow: start is missing");
    expect_load_error("err_transition.lua",
                      FLOWS "/err_transition.lua:5: step 'a': fallback 'ocrr' is not a step");
    expect_load_error("err_unreachable.lua",
                      FLOWS "/err_unreachable.lua:7: step 'b': unreachable from start 'a'");
    expect_load_error("err_runnotfn.lua",
                      FLOWS "/err_runnotfn.lua:5: step 'b': run must be a function");
    expect_load_error("err_syntax.lua", FLOWS "/err_syntax.lua:5:");
    expect_load_error("err_unknownkey.lua",
                      FLOWS "/err_unknownkey.lua:5: step 'a': unknown key 'nxt'");
    expect_load_error("err_noflow.lua", "err_noflow.lua:1: the file must return flow{...}");
    expect_load_error("err_leaky.lua", "assignment to undeclared global 'oops'");
    expect_load_error("err_leaky.lua", "leaky.lua:2:");
    expect_load_error("err_loop.lua", "instruction budget exceeded");
    expect_load_error("no_such_file.lua", "no_such_file.lua");
}

/* ---- tests: outcomes, sandbox, budgets ---- */

static void test_outcomes(void)
{
    res_t r;
    sl_step_t *s;

    run_step(basic, "ok", "{\"input\":\"hi\",\"arr_in\":[],\"null_in\":null}", &r, 5000);
    CHECK(r.ok == 1);
    CHECK(strcmp(ctx_get(&r, "a"), "1") == 0);
    CHECK(strcmp(ctx_get(&r, "list"), "[1,2,3]") == 0);
    CHECK(strcmp(ctx_get(&r, "nested"), "{\"x\":\"y\",\"f\":1.5}") == 0 ||
          strcmp(ctx_get(&r, "nested"), "{\"f\":1.5,\"x\":\"y\"}") == 0);
    CHECK(strcmp(ctx_get(&r, "seen"), "\"hi\"") == 0);
    CHECK(strcmp(ctx_get(&r, "file_name"), "\"doc.pdf\"") == 0);
    CHECK(strcmp(ctx_get(&r, "greeting"), "\"hi flow\"") == 0);
    CHECK(strcmp(ctx_get(&r, "empty_arr"), "[]") == 0);
    CHECK(strcmp(ctx_get(&r, "null_in"), "null") == 0);
    CHECK(strcmp(ctx_get(&r, "null_kept"), "true") == 0);

    run_step(basic, "no_text", "{}", &r, 5000);
    CHECK(r.ok == 0 && strcmp(r.err, "no_text") == 0 && r.transient == 0);

    run_step(basic, "falsy", "{}", &r, 5000);
    CHECK(r.ok == 0 && strcmp(r.err, "failed") == 0);

    run_step(basic, "boom", "{}", &r, 5000);
    CHECK(r.ok == 0 && strcmp(r.err, "lua_error") == 0);
    CHECK(strstr(r.detail, "kaboom") != NULL);
    CHECK(strstr(r.detail, "stack traceback") != NULL);
    CHECK(strstr(r.detail, "basic.lua") != NULL);
    CHECK(strcmp(ctx_get(&r, "before_boom"), "true") == 0); /* ctx even on failure */

    /* an unknown step: an error, and no callback */
    sl_step_input_t in = {.step = "nope", .ctx_json = "{}"};
    sl_step_t *none = NULL;
    CHECK(sl_step_start(vm, basic, &in, step_cb, &r, &none) == SL_ENOTFOUND);

    double t0 = now_ms();
    run_step(basic, "loop", "{}", &r, 20000);
    CHECK(r.ok == 0 && strcmp(r.err, "budget_exceeded") == 0);
    CHECK(strstr(r.detail, "instruction budget exceeded") != NULL);
    CHECK(now_ms() - t0 < 10000);

    run_step(basic, "pcall_loop", "{}", &r, 20000);
    CHECK(r.ok == 0 && strstr(r.detail, "instruction budget exceeded") != NULL);

    run_step(basic, "hog", "{}", &r, 20000);
    CHECK(r.ok == 0 && strcmp(r.err, "budget_exceeded") == 0);
    CHECK(strstr(r.detail, "memory") != NULL);
    fprintf(stderr, "info: after the hog the VM holds %zu KiB\n", sl_flowvm_memory(vm) / 1024);

    run_step(basic, "hog_pcall", "{}", &r, 20000);
    CHECK(r.ok == 0 && strstr(r.detail, "memory budget exceeded") != NULL);

    run_step(basic, "small", "{}", &r, 5000); /* the VM still works */
    CHECK(r.ok == 1 && strcmp(ctx_get(&r, "small"), "\"zzzzzzzzzz\"") == 0);

    run_step(basic, "os_execute", "{}", &r, 5000);
    CHECK(r.ok == 0 && strcmp(r.err, "lua_error") == 0 && strstr(r.detail, "execute") != NULL);
    run_step(basic, "io_open", "{}", &r, 5000);
    CHECK(r.ok == 0 && strcmp(r.err, "lua_error") == 0 && strstr(r.detail, "'io'") != NULL);
    run_step(basic, "use_load", "{}", &r, 5000);
    CHECK(r.ok == 0 && strcmp(r.err, "lua_error") == 0 && strstr(r.detail, "'load'") != NULL);
    run_step(basic, "new_global", "{}", &r, 5000);
    CHECK(r.ok == 0 && strstr(r.detail, "assignment to undeclared global 'leaked'") != NULL);
    run_step(basic, "string_dump", "{}", &r, 5000);
    CHECK(r.ok == 0 && strstr(r.detail, "dump") != NULL);
    run_step(basic, "gc_meta", "{}", &r, 5000);
    CHECK(r.ok == 0 && strstr(r.detail, "__gc") != NULL);
    run_step(basic, "bad_ctx", "{\"keep\":1}", &r, 5000);
    CHECK(r.ok == 0 && strcmp(r.err, "lua_error") == 0);
    CHECK(strstr(r.detail, "ctx holds a value that is not JSON") != NULL);
    CHECK(strcmp(ctx_get(&r, "keep"), "1") == 0);

    /* ctx that is not JSON fails the step, not the server */
    run_step(basic, "ok", "not json", &r, 5000);
    CHECK(r.ok == 0 && strcmp(r.err, "lua_error") == 0 && strstr(r.detail, "ctx") != NULL);

    /* timeout: the step sleeps 5 s with a 0.2 s timeout */
    run_step(basic, "long_nap", "{}", &r, 5000);
    CHECK(r.ok == 0 && strcmp(r.err, "timeout") == 0 && r.transient == 1);
    CHECK(r.dur >= 0.19 && r.dur < 2);
    CHECK(strcmp(ctx_get(&r, "started"), "true") == 0);
    CHECK(sl_flowvm_parked(vm) == 0); /* the timed-out sleep is no longer parked */

    /* cancel */
    s = start_step(basic, "long_nap", "{}", &r);
    spin_ms(30);
    CHECK(r.called == 0);
    CHECK(sl_flowvm_parked(vm) == 1); /* parked on sl.sleep (admission's count) */
    r.returned = 0;
    sl_step_cancel(s);
    CHECK(r.called == 0); /* never from inside the cancel */
    r.returned = 1;
    CHECK(wait_int(&r.called, 1, 2000));
    CHECK(r.ok == 0 && strcmp(r.err, "cancelled") == 0 && r.transient == 0);
    CHECK(sl_flowvm_parked(vm) == 0);

    /* cancel before it even began */
    s = start_step(basic, "ok", "{}", &r);
    sl_step_cancel(s);
    CHECK(r.called == 0);
    CHECK(wait_int(&r.called, 1, 2000));
    CHECK(strcmp(r.err, "cancelled") == 0);
    CHECK(sl_flowvm_running(vm) == 0);
}

static void test_primitives(void)
{
    res_t r;
    char ctx[256];

    run_step(basic, "echo", "{}", &r, 5000);
    CHECK(r.ok == 1);
    CHECK(strcmp(ctx_get(&r, "out"), "\"hello world\\n\"") == 0);
    CHECK(strcmp(ctx_get(&r, "status"), "0") == 0);

    run_step(basic, "no_such_tool", "{}", &r, 5000);
    CHECK(r.ok == 0 && strcmp(r.err, "not_found") == 0);

    double t0 = now_ms();
    run_step(basic, "nap", "{}", &r, 5000);
    double el = now_ms() - t0;
    CHECK(r.ok == 1 && strcmp(ctx_get(&r, "napped"), "true") == 0);
    CHECK(el >= 45 && el < 1000);

    run_step(basic, "pcall_sleep", "{}", &r, 5000);
    CHECK(r.ok == 1);
    CHECK(strcmp(ctx_get(&r, "pcall_v"), "\"inside\"") == 0);
    CHECK(strcmp(ctx_get(&r, "caught"), "\"caught\"") == 0);

    run_step(basic, "util", "{}", &r, 5000);
    CHECK(r.ok == 1);
    CHECK(strcmp(ctx_get(&r, "sha"),
                 "\"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"") == 0);
    CHECK(strcmp(ctx_get(&r, "hmac"),
                 "\"f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8\"") == 0);
    CHECK(strcmp(ctx_get(&r, "dec_null"), "true") == 0);
    CHECK(strcmp(ctx_get(&r, "enc"), "\"[1,2,3]\"") == 0);
    CHECK(strcmp(ctx_get(&r, "enc_empty"), "\"[]\"") == 0);
    CHECK(strcmp(ctx_get(&r, "bad_json"), "\"bad_json\"") == 0);
    CHECK(strcmp(ctx_get(&r, "svc"), "true") == 0);
    CHECK(strcmp(ctx_get(&r, "svc_missing"), "false") == 0);
    snprintf(ctx, sizeof(ctx), "\"%s\"", tmpdir);
    CHECK(strcmp(ctx_get(&r, "tmp"), ctx) == 0);

    run_step(basic, "late_require", "{}", &r, 5000);
    CHECK(r.ok == 0 && strcmp(r.err, "lua_error") == 0);
    CHECK(strstr(r.detail, "must be required when the flow loads") != NULL);
    CHECK(strcmp(ctx_get(&r, "cached"), "\"hi again\"") == 0);

    /* http against the peer, headers both ways */
    snprintf(ctx, sizeof(ctx), "{\"url\":\"http://127.0.0.1:%d/ok\"}", peer_port);
    run_step(basic, "http", ctx, &r, 5000);
    CHECK(r.ok == 1);
    CHECK(strcmp(ctx_get(&r, "status"), "200") == 0);
    CHECK(strcmp(ctx_get(&r, "body"), "\"hello\"") == 0);
    CHECK(strcmp(ctx_get(&r, "hdr"), "\"1\"") == 0);

    snprintf(ctx, sizeof(ctx), "{\"url\":\"http://127.0.0.1:%d/fail\",\"service\":\"flaky\"}",
             peer_port);
    run_step(basic, "http", ctx, &r, 5000);
    CHECK(r.ok == 0 && strcmp(r.err, "server_error") == 0 && r.transient == 1);
    CHECK(strcmp(ctx_get(&r, "status"), "503") == 0);
}

/* 1000 steps at once, each sleeping 50 ms */
static int many_called, many_ok;

static void many_cb(sl_step_t *s, const sl_step_result_t *r, void *arg)
{
    many_called++;
    if (r->ok && strstr(r->ctx_json, "\"done\":true"))
        many_ok++;
}

/* A run's scratch dir is made at a step's first need of it (sl.tmpdir here;
 * sl.exec too), not for every run (a mkdir and a removal per run cost a
 * fifth of the engine's CPU in flow_bench): a step that asks for none
 * leaves none, and the flag tells the run it has nothing to remove. The tmp
 * root is made again if it went away. */
static void test_scratch_lazy(void)
{
    char dir[128], want[160];
    struct stat st;
    int made = 0;
    res_t r;

    snprintf(dir, sizeof dir, "%s/lazy-root/run1", tmpdir); /* its parent is not there either */
    step_tmpdir = dir;
    step_tmpdir_made = &made;
    run_step(basic, "ok", "{}", &r, 5000);
    CHECK(r.ok == 1);
    CHECK(made == 0);
    CHECK(stat(dir, &st) != 0 && errno == ENOENT);

    run_step(basic, "util", "{}", &r, 5000);
    CHECK(r.ok == 1);
    snprintf(want, sizeof want, "\"%s\"", dir);
    CHECK(strcmp(ctx_get(&r, "tmp"), want) == 0);
    CHECK(made == 1);
    CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700);

    /* made once: a later step finds it */
    run_step(basic, "util", "{}", &r, 5000);
    CHECK(r.ok == 1 && made == 1);

    /* sl.exec makes it too (its cwd; right under the tmp root, as the engine's
     * are: as root the tool runs as exec.user, who may only traverse the root) */
    snprintf(dir, sizeof dir, "%s/lazy-run2", tmpdir);
    made = 0;
    run_step(basic, "echo", "{}", &r, 5000);
    CHECK(r.ok == 1 && made == 1);
    CHECK(stat(dir, &st) == 0 && S_ISDIR(st.st_mode));

    /* one that cannot be made (its parent is a file): the tool is refused,
     * never run elsewhere, and sl.tmpdir raises */
    snprintf(want, sizeof want, "%s/lazy-file", tmpdir);
    FILE *fp = fopen(want, "w");
    CHECK(fp != NULL);
    if (fp)
        fclose(fp);
    snprintf(dir, sizeof dir, "%s/lazy-file/run3", tmpdir);
    made = 0;
    run_step(basic, "echo", "{}", &r, 5000);
    CHECK(r.ok == 0 && strcmp(r.err, "unavailable") == 0 && made == 0);
    run_step(basic, "util", "{}", &r, 5000);
    CHECK(r.ok == 0 && strcmp(r.err, "lua_error") == 0 &&
          strstr(r.detail, "cannot make the scratch directory") != NULL);
    step_tmpdir = NULL;
    step_tmpdir_made = NULL;
}

static void test_many(void)
{
    char err[512];
    sl_flow_t *f = NULL;
    size_t before;
    int started = 0;

    CHECK(sl_flow_load(vm, "sleepy", FLOWS "/sleepy.lua", &f, err, sizeof(err)) == 0);
    if (f == NULL)
        return;
    before = sl_flowvm_memory(vm);
    double t0 = now_ms();
    for (int i = 0; i < 1000; i++) {
        sl_step_input_t in = {
            .run_id = "r", .tenant_id = "t", .step = "nap", .ctx_json = "{}", .file_json = "{}"};
        if (sl_step_start(vm, f, &in, many_cb, NULL, NULL) == 0)
            started++;
    }
    CHECK(started == 1000);
    CHECK(sl_flowvm_running(vm) == 1000);
    event_base_loop(base, EVLOOP_ONCE); /* every step begins and yields in sl.sleep */
    CHECK(sl_flowvm_parked(vm) == 1000);
    fprintf(stderr, "info: 1000 suspended steps: %zu bytes of Lua memory each\n",
            (sl_flowvm_memory(vm) - before) / 1000);
    CHECK(wait_int(&many_called, 1000, 10000));
    CHECK(many_ok == 1000);
    CHECK(sl_flowvm_parked(vm) == 0);
    fprintf(stderr, "info: 1000 concurrent 50 ms steps took %.0f ms\n", now_ms() - t0);
    CHECK(sl_flowvm_running(vm) == 0);
    sl_flow_unref(f); /* the steps' references are gone already */
}

static void test_circuit(void)
{
    res_t r;
    char bad[256], good[256];
    int port = refused_port();

    snprintf(bad, sizeof(bad), "{\"url\":\"http://127.0.0.1:%d/\",\"service\":\"dead\"}", port);
    snprintf(good, sizeof(good), "{\"url\":\"http://127.0.0.1:%d/ok\",\"service\":\"dead\"}",
             peer_port);
    for (int i = 0; i < 5; i++) {
        run_step(basic, "http", bad, &r, 5000);
        CHECK(r.ok == 0 && strcmp(r.err, "unavailable") == 0 && r.transient == 1);
    }
    int hits = peer_hits;
    double t0 = now_ms();
    run_step(basic, "http", good, &r, 5000);
    CHECK(r.ok == 0 && strcmp(r.err, "circuit_open") == 0 && r.transient == 1);
    CHECK(now_ms() - t0 < 100);
    CHECK(peer_hits == hits); /* the peer never saw it */

    char *m = sl_metrics_render(NULL);
    CHECK(m && strstr(m, "sluice_circuit_state{service=\"dead\"} 1") != NULL);
    CHECK(m &&
          strstr(m, "sluice_service_calls_total{service=\"dead\",outcome=\"circuit_open\"} 1"));
    CHECK(m && strstr(m, "sluice_service_calls_total{service=\"dead\",outcome=\"unavailable\"} 5"));
    free(m);

    /* after the open interval (300 ms here), one probe: it fails, the circuit reopens */
    spin_ms(350);
    run_step(basic, "http", bad, &r, 5000);
    CHECK(strcmp(r.err, "unavailable") == 0);
    run_step(basic, "http", good, &r, 5000);
    CHECK(strcmp(r.err, "circuit_open") == 0);

    /* next interval: the probe succeeds and the circuit closes */
    spin_ms(350);
    run_step(basic, "http", good, &r, 5000);
    CHECK(r.ok == 1);
    run_step(basic, "http", good, &r, 5000);
    CHECK(r.ok == 1);
    m = sl_metrics_render(NULL);
    CHECK(m && strstr(m, "sluice_circuit_state{service=\"dead\"} 0") != NULL);
    free(m);
}

static void test_concurrency(void)
{
    res_t r[5];
    char ctx[256];

    peer_max = 0;
    snprintf(ctx, sizeof(ctx), "{\"url\":\"http://127.0.0.1:%d/slow\",\"service\":\"capped\"}",
             peer_port);
    for (int i = 0; i < 5; i++)
        start_step(basic, "http", ctx, &r[i]);
    int all = 0;
    double end = now_ms() + 5000;
    while (all < 5 && now_ms() < end) {
        event_base_loop(base, EVLOOP_ONCE);
        all = 0;
        for (int i = 0; i < 5; i++)
            all += r[i].called;
    }
    CHECK(all == 5);
    for (int i = 0; i < 5; i++)
        CHECK(r[i].ok == 1 && strcmp(ctx_get(&r[i], "body"), "\"slow\"") == 0);
    CHECK(peer_max == 2);

    /* two hold the slots for 200 ms; a third willing to wait 50 ms is "busy" */
    char quick[256];
    snprintf(quick, sizeof(quick),
             "{\"url\":\"http://127.0.0.1:%d/slow\",\"service\":\"capped\",\"timeout\":0.05}",
             peer_port);
    start_step(basic, "http", ctx, &r[0]);
    start_step(basic, "http", ctx, &r[1]);
    spin_ms(40); /* both hold their slots */
    CHECK(peer_inflight == 2);
    CHECK(sl_flowvm_parked(vm) == 2); /* calls in flight park their steps */
    start_step(basic, "http", quick, &r[2]);
    spin_ms(10);
    CHECK(r[2].called == 0);
    CHECK(sl_flowvm_parked(vm) == 2); /* waiting for a slot is not parked (admission) */
    CHECK(wait_int(&r[2].called, 1, 3000));
    CHECK(r[2].ok == 0 && strcmp(r[2].err, "busy") == 0 && r[2].transient == 1);
    if (strcmp(r[2].err, "busy") != 0)
        fprintf(stderr, "  got %s (%s)\n", r[2].err, r[2].detail);
    CHECK(wait_int(&r[0].called, 1, 3000) && wait_int(&r[1].called, 1, 3000));
    CHECK(r[0].ok == 1 && r[1].ok == 1);
    CHECK(sl_flowvm_parked(vm) == 0);
}

/* ---- the database primitives ---- */

#define TEST_DIR "/tmp/sl_flow_pg_XXXXXX"
#define TEST_PORT "55437"
static char conninfo[512];
static pgtmp_t pgt;

/* Blocking helper: the first value of the first row, "<null>", "<ok>" or "<error: ...>". */
static void sql_scalar(const char *sql, char *out, size_t cap)
{
    pgtmp_sql_scalar(conninfo, sql, out, cap);
}

static void test_db(sl_flow_host_t *host)
{
    char err[512], sql[1024], v[256], ctx[512];
    res_t r;
    const char *url = getenv("SL_TEST_DATABASE_URL");

    if (url && *url) {
        snprintf(conninfo, sizeof conninfo, "%s", url);
    } else if (pgtmp_setup(&pgt, TEST_DIR, TEST_PORT, conninfo, sizeof conninfo) != 0) {
        fprintf(stderr, "could not start a throwaway Postgres\n");
        CHECK(!"postgres");
        return;
    }
    CHECK(sl_pg_migrate(conninfo, sl_pg_migrations, sl_pg_nmigrations, err, sizeof err) == 0);
    if (err[0])
        fprintf(stderr, "migrate: %s\n", err);
    sl_uuid_v4(t_id);
    sl_uuid_v4(d_id);
    sl_uuid_v4(f_id);
    sl_uuid_v4(r_id);
    snprintf(sql, sizeof sql, "INSERT INTO tenants (id, name) VALUES ('%s', 'flowtest')", t_id);
    sql_scalar(sql, v, sizeof v);
    CHECK(strcmp(v, "<ok>") == 0);
    snprintf(sql, sizeof sql,
             "INSERT INTO datasets (id, tenant_id, name, record_schema) VALUES ('%s', '%s', 'd', "
             "'{}')",
             d_id, t_id);
    sql_scalar(sql, v, sizeof v);
    snprintf(sql, sizeof sql,
             "INSERT INTO files (id, tenant_id, dataset_id, batch_id, name, size, sha256, mime, "
             "storage_key) VALUES ('%s', '%s', '%s', '%s', 'doc.pdf', 3, 'x', 'application/pdf', "
             "'k')",
             f_id, t_id, d_id, r_id);
    sql_scalar(sql, v, sizeof v);
    snprintf(sql, sizeof sql,
             "INSERT INTO runs (id, tenant_id, dataset_id, file_id, batch_id, pipeline) VALUES "
             "('%s', '%s', '%s', '%s', '%s', 'test')",
             r_id, t_id, d_id, f_id, r_id);
    sql_scalar(sql, v, sizeof v);
    CHECK(strcmp(v, "<ok>") == 0);

    sl_pg_t *pg = NULL;
    CHECK(sl_pg_new(base, conninfo, 2, 5000, &pg) == 0);
    host->pg = pg;
    sl_flowvm_t *dbvm = NULL;
    CHECK(sl_flowvm_new(host, &dbvm, err, sizeof err) == 0);
    sl_flowvm_t *saved = vm;
    sl_flow_t *f = NULL;
    vm = dbvm;
    CHECK(sl_flow_load(vm, "basic", FLOWS "/basic.lua", &f, err, sizeof(err)) == 0);
    if (f == NULL)
        goto out;

    /* read_artifact of nothing */
    run_step(f, "read_back", "{\"kind\":\"text\"}", &r, 10000);
    CHECK(r.ok == 0 && strcmp(r.err, "not_found") == 0);

    /* an artifact from data, twice: one row, same id */
    run_step(f, "artifact", "{\"data\":\"hello artifact\"}", &r, 10000);
    CHECK(r.ok == 1);
    char id1[64];
    snprintf(id1, sizeof id1, "%s", ctx_get(&r, "artifact_id"));
    CHECK(strlen(id1) == 38);
    run_step(f, "artifact", "{\"data\":\"hello again!\"}", &r, 10000);
    CHECK(r.ok == 1 && strcmp(ctx_get(&r, "artifact_id"), id1) == 0);
    snprintf(sql, sizeof sql,
             "SELECT count(*)::text || ' ' || min(size)::text || ' ' || min(mime) "
             "FROM artifacts WHERE run_id = '%s'",
             r_id);
    sql_scalar(sql, v, sizeof v);
    CHECK(strcmp(v, "1 12 text/plain") == 0);
    run_step(f, "read_back", "{\"kind\":\"text\"}", &r, 10000);
    CHECK(r.ok == 1 && strcmp(ctx_get(&r, "read_len"), "12") == 0);
    char want[80], hex[65];
    sl_sha256_hex("hello again!", 12, hex);
    snprintf(want, sizeof want, "\"%s\"", hex);
    CHECK(strcmp(ctx_get(&r, "read_sha"), want) == 0);

    /* an artifact from a file (read on the worker pool, several chunks) */
    char path[128];
    snprintf(path, sizeof path, "%s/big.bin", tmpdir);
    size_t big = 1300 * 1000;
    char *data = malloc(big);
    for (size_t i = 0; i < big; i++)
        data[i] = (char)('a' + i % 23);
    FILE *fp = fopen(path, "wb");
    fwrite(data, 1, big, fp);
    fclose(fp);
    sl_sha256_hex(data, big, hex);
    free(data);
    snprintf(ctx, sizeof ctx, "{\"kind\":\"bigfile\",\"path\":\"%s\"}", path);
    run_step(f, "artifact", ctx, &r, 20000);
    CHECK(r.ok == 1);
    if (!r.ok)
        fprintf(stderr, "artifact path: %s %s\n", r.err, r.detail);
    run_step(f, "read_back", "{\"kind\":\"bigfile\"}", &r, 20000);
    CHECK(r.ok == 1 && strcmp(ctx_get(&r, "read_len"), "1300000") == 0);
    snprintf(want, sizeof want, "\"%s\"", hex);
    CHECK(strcmp(ctx_get(&r, "read_sha"), want) == 0);
    snprintf(sql, sizeof sql,
             "SELECT sha256 FROM artifacts WHERE run_id = '%s' AND kind = "
             "'bigfile'",
             r_id);
    sql_scalar(sql, v, sizeof v);
    CHECK(strcmp(v, hex) == 0);

    /* a missing file */
    snprintf(ctx, sizeof ctx, "{\"kind\":\"gone\",\"path\":\"%s/nope\"}", tmpdir);
    run_step(f, "artifact", ctx, &r, 10000);
    CHECK(r.ok == 0 && strcmp(r.err, "not_found") == 0);

    /* the record, twice: one row, replaced; and the text source */
    run_step(f, "record", "{\"title\":\"first\",\"source\":\"tika\"}", &r, 10000);
    CHECK(r.ok == 1);
    if (!r.ok)
        fprintf(stderr, "record: %s %s\n", r.err, r.detail);
    run_step(f, "record", "{\"title\":\"second\",\"source\":\"ocr\"}", &r, 10000);
    CHECK(r.ok == 1);
    snprintf(sql, sizeof sql,
             "SELECT count(*)::text || ' ' || min(data->>'title') || ' ' || "
             "min(data->'tags'->>1) FROM records WHERE file_id = '%s'",
             f_id);
    sql_scalar(sql, v, sizeof v);
    CHECK(strcmp(v, "1 second b") == 0);
    snprintf(sql, sizeof sql, "SELECT text_source FROM files WHERE id = '%s'", f_id);
    sql_scalar(sql, v, sizeof v);
    CHECK(strcmp(v, "ocr") == 0);

    /* Provenance (migration 011): the same run again keeps its version 1; run_id,
     * pipeline and flow_version come from the step, text_source from the file row,
     * extractor and model from the flow. */
    run_step(f, "record",
             "{\"title\":\"third\",\"source\":\"ocr\","
             "\"prov\":{\"extractor\":\"tesseract\",\"model\":\"local\"}}",
             &r, 10000);
    CHECK(r.ok == 1 && strcmp(ctx_get(&r, "version"), "1") == 0);
    snprintf(sql, sizeof sql,
             "SELECT count(*)::text || ' ' || min(version) || ' ' || bool_and(latest) || ' ' || "
             "min(data->>'title') || ' ' || min(provenance::text) FROM records WHERE file_id = '%s'",
             f_id);
    sql_scalar(sql, v, sizeof v);
    char vwant[200]; /* jsonb orders keys by length, then bytes */
    snprintf(vwant, sizeof vwant, "1 1 true third {\"model\": \"local\", \"run_id\": \"%s\", ",
             r_id);
    CHECK(strncmp(v, vwant, strlen(vwant)) == 0);
    if (strncmp(v, vwant, strlen(vwant)) != 0)
        fprintf(stderr, "record: %s\n", v);
    snprintf(sql, sizeof sql,
             "SELECT (provenance->>'pipeline') || ' ' || (provenance->>'extractor') || ' ' || "
             "(provenance->>'text_source') || ' ' || (provenance->>'flow_version') "
             "FROM records WHERE file_id = '%s'",
             f_id);
    sql_scalar(sql, v, sizeof v);
    char pwant[160];
    snprintf(pwant, sizeof pwant, "test tesseract ocr %s", sl_flow_version(f));
    CHECK(strcmp(v, pwant) == 0);
    if (strcmp(v, pwant) != 0)
        fprintf(stderr, "provenance: %s\n", v);

    /* Lua cannot pass anything else: unknown keys, non-strings, long or control characters */
    static const char *const bad_prov[] = {
        "{\"prov\":{\"run_id\":\"x\"}}", "{\"prov\":{\"model\":5}}",
        "{\"prov\":{\"model\":\"\"}}", "{\"prov\":{\"extractor\":\"a\\nb\"}}",
        "{\"prov\":{\"model\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}}"};
    for (size_t i = 0; i < sizeof bad_prov / sizeof bad_prov[0]; i++) {
        run_step(f, "record", bad_prov[i], &r, 10000);
        CHECK(r.ok == 0 && strcmp(r.err, "lua_error") == 0);
        if (r.ok || strcmp(r.err, "lua_error") != 0)
            fprintf(stderr, "bad provenance %zu accepted: %s\n", i, r.err);
    }

    /* another run of the file: version 2, now the latest; version 1 unchanged */
    char r_first[37];
    snprintf(r_first, sizeof r_first, "%s", r_id);
    sl_uuid_v4(r_id);
    run_step(f, "record", "{\"title\":\"fourth\",\"source\":\"ocr\"}", &r, 10000);
    CHECK(r.ok == 1 && strcmp(ctx_get(&r, "version"), "2") == 0);
    snprintf(sql, sizeof sql,
             "SELECT string_agg(version || ':' || latest || ':' || (data->>'title') || ':' || "
             "(run_id = '%s'), ',' ORDER BY version) FROM records WHERE file_id = '%s'",
             r_first, f_id);
    sql_scalar(sql, v, sizeof v);
    CHECK(strcmp(v, "1:false:third:true,2:true:fourth:false") == 0);
    if (strcmp(v, "1:false:third:true,2:true:fourth:false") != 0)
        fprintf(stderr, "versions: %s\n", v);
    snprintf(r_id, sizeof r_id, "%s", r_first);

out:
    sl_flow_unref(f);
    sl_flowvm_free(dbvm);
    vm = saved;
    sl_pg_free(pg);
    host->pg = NULL;
    event_base_loop(base, EVLOOP_NONBLOCK);
    snprintf(sql, sizeof sql, "DELETE FROM tenants WHERE id = '%s'", t_id);
    sql_scalar(sql, v, sizeof v);
    snprintf(sql, sizeof sql, "DELETE FROM files WHERE id = '%s'", f_id);
    sql_scalar(sql, v, sizeof v);
    pgtmp_teardown(&pgt);
}

/* freeing the VM with steps in flight: each reports "cancelled" before it returns */
static int free_called;
static char free_err[32];

static void free_cb(sl_step_t *s, const sl_step_result_t *r, void *arg)
{
    free_called++;
    snprintf(free_err, sizeof free_err, "%s", r->err ? r->err : "");
}

static void test_free_with_steps(sl_flow_host_t *host)
{
    char err[256];
    sl_flowvm_t *v2 = NULL;
    sl_flow_t *f = NULL;
    CHECK(sl_flowvm_new(host, &v2, err, sizeof err) == 0);
    CHECK(sl_flow_load(v2, "basic", FLOWS "/basic.lua", &f, err, sizeof err) == 0);
    sl_step_input_t in = {.step = "long_nap", .ctx_json = "{}", .file_json = "{}"};
    CHECK(sl_step_start(v2, f, &in, free_cb, NULL, NULL) == 0);
    CHECK(sl_step_start(v2, f, &in, free_cb, NULL, NULL) == 0);
    spin_ms(20);
    sl_flowvm_free(v2);
    CHECK(free_called == 2);
    CHECK(strcmp(free_err, "cancelled") == 0);
    sl_flow_unref(f); /* outlives the VM harmlessly */
    spin_ms(20);
}

int main(void)
{
    char err[512];
    sl_config_t *cfg = NULL;
    sl_workq_t *wq = NULL;
    sl_store_t *store = NULL;
    sl_curl_t *curl = NULL;
    char storedir[128];

    signal(SIGPIPE, SIG_IGN);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sl_flow_test_XXXXXX");
    if (!mkdtemp(tmpdir))
        return 1;
    snprintf(storedir, sizeof storedir, "%s/store", tmpdir);
    base = event_base_new();
    tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 20000};
    event_add(tick, &tv);

    static const char yaml[] = "database_url: x\n"
                               "services:\n"
                               "  capped: {url: \"http://127.0.0.1\", concurrency: 2}\n";
    CHECK(sl_config_load_string(yaml, strlen(yaml), "t.yaml", &cfg, err, sizeof err) == 0);
    CHECK(sl_workq_new(base, 2, &wq) == 0);
    CHECK(sl_store_fs_open(wq, storedir, &store) == 0);
    CHECK(sl_curl_new(base, &curl) == 0);
    CHECK(peer_start() == 0);

    sl_flow_host_t host = {
        .base = base,
        .curl = curl,
        .store = store,
        .cfg = cfg,
        .lib_dir = FLOWS "/lib",
        .tmp_root = tmpdir,
        .step_instructions = 20000000,
        .step_memory = 32u * 1024 * 1024,
        .wq = wq,
        .circuit_open_ms = 300,
    };
    if (sl_flowvm_new(&host, &vm, err, sizeof err) != 0) {
        fprintf(stderr, "vm: %s\n", err);
        return 1;
    }
    test_load();
    if (basic != NULL) {
        test_outcomes();
        test_primitives();
        test_scratch_lazy();
        test_many();
        test_circuit();
        test_concurrency();
        test_free_with_steps(&host);
        test_db(&host);
    }
    sl_flow_unref(basic);
    sl_flowvm_free(vm);
    evhttp_free(peer);
    sl_curl_free(curl);
    sl_store_free(store);
    sl_workq_free(wq);
    event_base_loop(base, EVLOOP_NONBLOCK);
    sl_config_free(cfg);
    sl_metrics_reset();
    event_free(tick);
    event_base_free(base);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    return check_summary();
}
