/*
 * lua_http.c — sl.http.request{...}: an outbound HTTP call from a step, over
 * core/curl (non-blocking, on the loop), under the named service's policy
 * (timeout, concurrency slot, circuit breaker; actors/service.h).
 *
 * Credentials come from the service's config section, never from Lua: a call
 * with `service = name` whose section has an api_key gets "Authorization:
 * Bearer <key>"; one whose section has AWS keys is signed with SigV4 for
 * service <name> in the section's region. They are only sent to the
 * section's `url` when it has one (a flow cannot send them elsewhere).
 *
 * Every answer is shown to the service's policy (sl_svc_observe_headers:
 * Retry-After and rate-limit headers hold the service, 429s shrink its
 * concurrency), and a token-limited service's charge is corrected from the
 * answer's usage.total_tokens.
 *
 * The request is copied into the op, because a call may wait for a slot and
 * start later. The response reaches the coroutine through
 * sl_flow__resume_with, so the body counts against the step's memory budget.
 */
#include "actors/lua_api.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/err.h"

#define HDR_NAME_MAX 256
#define SL_FLOW_AWS_REGION "us-east-1" /* a SigV4 section without a region */

typedef struct http_op_s {
    sl_flow_svcop_t so; /* first; so.svc NULL: no service policy */
    void *xfer;         /* in flight: the effects' handle (a transfer in the engine) */
    char *method, *url, *body_file; /* owned; body_file: unless body_file_step */
    int body_file_step; /* body_file is the step's file.path (borrowed: it is only read
                           when the op starts, and an op that has not started dies
                           with its step): a parked run keeps one copy, issue 10 */
    const sl_config_service_t
        *auth_cfg; /* SigV4: borrowed (the config outlives the VM); NULL: unsigned */
    char **headers;
    size_t n_headers;
    char *body;
    size_t body_len;
    long timeout_ms;
    size_t max_bytes;
} http_op_t;

static void op_free(sl_flow_svcop_t *so)
{
    http_op_t *op = (http_op_t *)so;
    for (size_t i = 0; i < op->n_headers; i++)
        free(op->headers[i]);
    free(op->headers);
    free(op->method);
    free(op->url);
    if (!op->body_file_step)
        free(op->body_file);
    free(op->body);
    free(op);
}

/* ---- the response, pushed in protected mode ---- */

static int push_response(lua_State *L)
{
    const sl_curl_result_t *res = lua_touserdata(L, 1);
    char name[HDR_NAME_MAX];

    if (res->err != 0) {
        lua_pushnil(L);
        lua_pushstring(L, sl_strerror(res->err));
        return 2;
    }
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, res->status);
    lua_setfield(L, -2, "status");
    lua_createtable(L, 0, (int)res->n_headers);
    for (size_t i = 0; i < res->n_headers; i++) {
        size_t n = strlen(res->headers[i].name);
        if (n >= sizeof(name))
            n = sizeof(name) - 1;
        for (size_t k = 0; k < n; k++) {
            char c = res->headers[i].name[k];
            name[k] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
        }
        name[n] = '\0';
        /* a repeated header: values joined with ", " (RFC 9110 5.3) */
        if (lua_getfield(L, -1, name) == LUA_TSTRING) {
            lua_pushliteral(L, ", ");
            lua_pushstring(L, res->headers[i].value);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushstring(L, res->headers[i].value);
        }
        lua_setfield(L, -2, name);
    }
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, res->body, res->body_len);
    lua_setfield(L, -2, "body");
    return 1;
}

static const char *outcome_of(const sl_curl_result_t *res)
{
    if (res->err != 0)
        return sl_strerror(res->err);
    if (res->status == 429)
        return "rate_limited";
    if (res->status >= 500)
        return "server_error";
    return "ok";
}

/*
 * usage.total_tokens of a JSON answer (OpenAI's chat completions), or -1.
 * Only parsed for a call that was charged tokens, so other services' answers
 * cost nothing here.
 */
static double usage_tokens(const sl_curl_result_t *res)
{
    json_t *doc = json_loadb(res->body, res->body_len, 0, NULL);
    json_t *t = json_object_get(json_object_get(doc, "usage"), "total_tokens");
    double n = json_is_number(t) ? json_number_value(t) : -1;
    json_decref(doc);
    return n;
}

static void http_done(const sl_curl_result_t *res, void *arg)
{
    http_op_t *op = arg;
    sl_svc_t *svc = op->so.svc;

    op->xfer = NULL;
    if (svc != NULL && res->err == 0) {
        /* backpressure: Retry-After, x-ratelimit-*, AIMD (actors/service.h) */
        sl_svc_observe_headers(svc, (int)res->status, res->headers, res->n_headers);
        double charged = sl_svc_wait_tokens(&op->so.wait);
        if (charged > 0 && res->status >= 200 && res->status < 300)
            sl_svc_charge_tokens(svc, usage_tokens(res), charged);
        if ((res->status == 429 || res->status == 503) && op->so.hdr.step != NULL)
            sl_flow__note_hold(op->so.hdr.step, svc, NULL); /* the run waits if the step fails */
    }
    sl_flow__svcop_done(&op->so, outcome_of(res), push_response, (void *)res);
}

/* Starts the transfer; 0 or an SL_E* code. */
static int start(sl_flow_svcop_t *so)
{
    http_op_t *op = (http_op_t *)so;
    sl_curl_req_opts_t o;
    int rc;
    sl_sigv4_creds_t creds = {0}; /* borrows the config's strings; curl signs in the call */

    memset(&o, 0, sizeof(o));
    o.method = op->method;
    o.url = op->url;
    o.headers = (const char *const *)op->headers;
    o.n_headers = op->n_headers;
    o.body = op->body;
    o.body_len = op->body_len;
    o.body_path = op->body_file;
    o.timeout_ms = op->timeout_ms;
    o.max_response_bytes = op->max_bytes;
    if (op->auth_cfg != NULL) {
        creds.access_key_id = op->auth_cfg->access_key_id;
        creds.secret_access_key = op->auth_cfg->secret_access_key;
        creds.region = op->auth_cfg->region && op->auth_cfg->region[0] ? op->auth_cfg->region
                                                                       : SL_FLOW_AWS_REGION;
        creds.service = op->auth_cfg->name;
        o.sigv4 = &creds;
    }
    const sl_flow_host_t *h = &op->so.vm->host;
    rc = h->fx->http(h->fx_self, op->so.svc ? sl_svc_name(op->so.svc) : NULL, &o, http_done, op,
                     &op->xfer);
    if (rc != 0)
        op->xfer = NULL;
    return rc;
}

static int abort_http(sl_flow_svcop_t *so)
{
    const sl_flow_host_t *h = &so->vm->host;
    h->fx->http_cancel(h->fx_self, ((http_op_t *)so)->xfer); /* the callback (ECANCELED) frees it */
    return 0;
}

static const sl_flow_svcop_ops_t http_ops = {start, abort_http, op_free};

/* ---- argument parsing ---- */

/* The length of url's origin ("scheme://host[:port]"), or 0 when it has none. */
static size_t origin_len(const char *url)
{
    const char *p = strstr(url, "://");
    if (p == NULL)
        return 0;
    p += 3;
    return (size_t)(p - url) + strcspn(p, "/?#");
}

/* Whether url goes to the origin of the section's configured url (any url when it has none). */
static int url_allowed(const char *url, const sl_config_service_t *c)
{
    if (c->url == NULL || c->url[0] == '\0')
        return 1;
    size_t n = origin_len(c->url);
    return n > 0 && origin_len(url) == n && strncasecmp(url, c->url, n) == 0;
}

static int has_header(const http_op_t *op, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < op->n_headers; i++)
        if (strncasecmp(op->headers[i], name, n) == 0 && op->headers[i][n] == ':')
            return 1;
    return 0;
}

/*
 * The service's credentials for this call (see the file comment); raises when
 * the flow set its own Authorization header or the url leaves the service.
 * op->headers has room for one more line.
 */
static void add_credentials(lua_State *L, http_op_t *op, const sl_config_service_t *c)
{
    sl_flow_auth_t auth = sl_flow__svc_auth(c);
    if (auth == SL_FLOW_AUTH_NONE)
        return;
    if (!url_allowed(op->url, c))
        luaL_error(L, "sl.http.request: %s's credentials are only sent to its url", c->name);
    if (has_header(op, "Authorization"))
        luaL_error(L, "sl.http.request: %s's Authorization comes from its config", c->name);
    if (auth == SL_FLOW_AUTH_BEARER) {
        size_t len = strlen(c->api_key) + sizeof("Authorization: Bearer ");
        char *line = malloc(len);
        if (line == NULL)
            luaL_error(L, "sl.http.request: out of memory");
        snprintf(line, len, "Authorization: Bearer %s", c->api_key);
        op->headers[op->n_headers++] = line;
        return;
    }
    op->auth_cfg = c;
}

/* Parses the request table into op; raises on bad arguments (the op is in a box). */
static void parse(lua_State *L, sl_step_t *s, http_op_t *op)
{
    static const char *const known[] = {"method",  "url",       "headers", "body", "body_file",
                                        "timeout", "max_bytes", "service", NULL};
    int t = 1;

    sl_flow__check_fields(L, t, known, "sl.http.request");
    op->method = sl_flow__opt_str(L, t, "method", "sl.http.request");
    op->url = sl_flow__opt_str(L, t, "url", "sl.http.request");
    if (op->url == NULL)
        luaL_error(L, "sl.http.request: url is required");
    op->body_file = sl_flow__opt_str(L, t, "body_file", "sl.http.request");
    if (op->body_file != NULL && s->file_path != NULL && strcmp(op->body_file, s->file_path) == 0) {
        free(op->body_file);
        op->body_file = (char *)s->file_path;
        op->body_file_step = 1;
    }

    int ty = lua_getfield(L, t, "body");
    if (ty == LUA_TSTRING) {
        size_t n;
        const char *b = lua_tolstring(L, -1, &n);
        if ((op->body = malloc(n ? n : 1)) == NULL)
            luaL_error(L, "sl.http.request: out of memory");
        memcpy(op->body, b, n);
        op->body_len = n;
    } else if (ty != LUA_TNIL) {
        luaL_error(L, "sl.http.request: body must be a string");
    }
    lua_pop(L, 1);

    ty = lua_getfield(L, t, "headers");
    if (ty == LUA_TTABLE) {
        int h = lua_gettop(L);
        size_t n = 0;
        lua_pushnil(L);
        while (lua_next(L, h) != 0) {
            n++;
            lua_pop(L, 1);
        }
        if (n > SL_CURL_MAX_REQ_HEADERS - 1)
            luaL_error(L, "sl.http.request: more than %d headers", SL_CURL_MAX_REQ_HEADERS - 1);
        /* one more for the service's Authorization header */
        if ((op->headers = calloc(n + 1, sizeof(char *))) == NULL)
            luaL_error(L, "sl.http.request: out of memory");
        lua_pushnil(L);
        while (lua_next(L, h) != 0) {
            if (lua_type(L, -2) != LUA_TSTRING ||
                (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER))
                luaL_error(L, "sl.http.request: headers must be {name = value}");
            const char *k = lua_tostring(L, -2);
            const char *v = lua_tostring(L, -1); /* a number value becomes a string in place */
            size_t len = strlen(k) + strlen(v) + 3;
            char *line = malloc(len);
            if (line == NULL)
                luaL_error(L, "sl.http.request: out of memory");
            snprintf(line, len, "%s: %s", k, v);
            op->headers[op->n_headers++] = line;
            lua_pop(L, 1);
        }
    } else if (ty != LUA_TNIL) {
        luaL_error(L, "sl.http.request: headers must be a table");
    } else if ((op->headers = calloc(1, sizeof(char *))) == NULL) {
        luaL_error(L, "sl.http.request: out of memory");
    }
    lua_pop(L, 1);

    if (lua_getfield(L, t, "timeout") != LUA_TNIL) {
        lua_Number secs = lua_tonumber(L, -1);
        if (!lua_isnumber(L, -1) || secs <= 0 || secs > 86400)
            luaL_error(L, "sl.http.request: timeout must be seconds in (0, 86400]");
        op->timeout_ms = (long)(secs * 1000);
        if (op->timeout_ms < 1)
            op->timeout_ms = 1;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, t, "max_bytes") != LUA_TNIL) {
        lua_Integer n = lua_tointeger(L, -1);
        if (!lua_isinteger(L, -1) || n < 1 || (lua_Unsigned)n > SL_CURL_MAX_RESPONSE_LIMIT)
            luaL_error(L, "sl.http.request: max_bytes must be an integer 1..%u",
                       (unsigned)SL_CURL_MAX_RESPONSE_LIMIT);
        op->max_bytes = (size_t)n;
    }
    lua_pop(L, 1);
    if (lua_getfield(L, t, "service") != LUA_TNIL) {
        const char *name = lua_tostring(L, -1);
        if (lua_type(L, -1) != LUA_TSTRING ||
            (op->so.svc = sl_svcs_get(op->so.vm->svcs, name)) == NULL)
            luaL_error(L, "sl.http.request: bad service name");
    }
    lua_pop(L, 1);
    /* model tokens, for a token-limited service: about 4 bytes each */
    op->so.est_tokens = (double)op->body_len / 4.0;
    if (op->so.svc != NULL)
        add_credentials(L, op, sl_svc_config(op->so.svc));
}

static int l_request(lua_State *L)
{
    sl_flowvm_t *vm = lua_touserdata(L, lua_upvalueindex(1));
    sl_flow_svcop_t **box;
    http_op_t *op;
    sl_step_t *s;

    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    s = sl_flow__check_step(L, "sl.http.request");
    box = sl_flow__svcop_box(L, sizeof(*op), &http_ops, vm, "sl.http.request");
    op = (http_op_t *)*box;
    parse(L, s, op);
    *box = NULL; /* ours from here on */
    lua_settop(L, 1);

    if (vm->host.fx == &sl_flow_effects_engine && vm->host.curl == NULL) {
        op_free(&op->so);
        lua_pushnil(L);
        lua_pushliteral(L, "not_configured");
        return 2;
    }
    if (op->timeout_ms == 0)
        op->timeout_ms = op->so.svc ? sl_svc_timeout_ms(op->so.svc) : SL_SVC_DEFAULT_TIMEOUT_MS;
    return sl_flow__svcop_begin(L, s, &op->so, (int)op->timeout_ms);
}

void sl_lua_inject_http(lua_State *L, sl_flowvm_t *vm)
{
    lua_newtable(L);
    lua_pushlightuserdata(L, vm);
    lua_pushcclosure(L, l_request, 1);
    lua_setfield(L, -2, "request");
    lua_setfield(L, -2, "http");
}
