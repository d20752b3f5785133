/*
 * pipelines.c — the pipelines as the API shows them and changes them
 * (../shared/API.md "Pipelines", api/pipelines.h):
 *
 *   GET    /v1/pipelines                        -> {"pipelines": [pipeline, ...]}   (auth)
 *   GET    /v1/pipelines/{name}                 -> pipeline + "versions"            (auth)
 *   PUT    /v1/admin/pipelines/{name}           -> 200 pipeline (a new revision)   (admin)
 *   GET    /v1/admin/pipelines/{name}/export    -> the body PUT takes (json|yaml)  (admin)
 *   DELETE /v1/admin/pipelines/{name}           -> 204                             (admin)
 *
 * where pipeline is {"name", "match", "steps", "version", "source": "config" |
 * "api", "revision", "graph": {"nodes": [{"id"}], "edges": [{"from", "to",
 * "on"}]}}. A config pipeline's steps, version and graph come from the flow
 * the engine loaded (an HTTP process reads them from the engine's snapshot,
 * sl_api_engine_refresh_steps); an API pipeline's from Postgres, where the
 * PUT stored sl_flow_describe of the flow it checked. A PUT checks the flow
 * in a flow VM of this process's own (actors/flow_check.h: every error at
 * once), stores it (sluice_pipeline_put), tells every process
 * (actors/pipestore.h) and answers once this process has read it back, so a
 * read after the PUT on the same process sees it.
 *
 * app->pipelines is rebuilt from the config's seeds and the store at every
 * change (apply_cb), with stable slots: a pipeline keeps its index for the
 * process's life, and a deleted one's slot is SL_PIPE_GONE until a new name
 * reuses it, so the bit sets of an upload in progress (api/pipesel.h) keep
 * their meaning.
 */
#include "api/pipelines.h"

#include <libfyaml.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "actors/flow_check.h"
#include "actors/pipestore.h"
#include "api/validate.h"
#include "core/err.h"
#include "core/log.h"

typedef struct seed_s {
    char name[64];
    char *match[SL_CONFIG_MAX_MATCH + 1]; /* borrowed from config or static defaults */
} seed_t;

struct sl_api_pipes_s {
    sl_app_t *app;
    sl_pipestore_t *store; /* owned */
    sl_flowvm_t *vm;       /* owned, made at the first PUT: checks flows, runs none */
    int nseeds;
    seed_t seeds[SL_CONFIG_MAX_PIPELINES];
};

int sl_api_pipeline_name_ok(const char *name)
{
    size_t n = strlen(name);
    return n >= 1 && n <= 63 && strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_") == n;
}

static int is_seed(const struct sl_api_pipes_s *pp, const char *name)
{
    for (int i = 0; i < pp->nseeds; i++)
        if (strcmp(pp->seeds[i].name, name) == 0)
            return 1;
    return 0;
}

/* ---- app->pipelines from the seeds and the store ---- */

typedef struct want_s {
    const char *name;
    int origin, revision;
    char *const *match;
    json_t *describe; /* borrowed from the store */
} want_t;

static void set_slot(sl_pipeline_def_t *p, const want_t *w)
{
    int was = p->origin;
    snprintf(p->name, sizeof p->name, "%s", w->name);
    memset(p->match, 0, sizeof p->match);
    for (int m = 0; m < SL_CONFIG_MAX_MATCH && w->match[m] != NULL; m++)
        p->match[m] = w->match[m];
    p->origin = w->origin;
    p->revision = w->revision;
    if (w->origin == SL_PIPE_API) {
        json_decref(p->flow);
        p->flow = json_incref(w->describe);
    } else if (was != SL_PIPE_CONFIG) {
        json_decref(p->flow); /* the engine's snapshot fills it again */
        p->flow = NULL;
    }
}

static void apply_cb(sl_pipestore_t *ps, void *arg)
{
    struct sl_api_pipes_s *pp = arg;
    sl_app_t *app = pp->app;
    want_t want[SL_CONFIG_MAX_PIPELINES + SL_PIPESTORE_MAX];
    int nw = 0, used[SL_CONFIG_MAX_PIPELINES] = {0},
        placed[SL_CONFIG_MAX_PIPELINES + SL_PIPESTORE_MAX] = {0};

    for (int i = 0; i < pp->nseeds; i++) {
        const sl_pipestore_entry_t *e = sl_pipestore_find(ps, pp->seeds[i].name);
        if (e && e->deleted)
            continue;
        want[nw++] = e ? (want_t){e->name, SL_PIPE_API, e->revision, e->match, e->describe}
                       : (want_t){pp->seeds[i].name, SL_PIPE_CONFIG, 0, pp->seeds[i].match, NULL};
    }
    for (int i = 0; i < sl_pipestore_count(ps); i++) {
        const sl_pipestore_entry_t *e = sl_pipestore_at(ps, i);
        if (!e->deleted && !is_seed(pp, e->name))
            want[nw++] = (want_t){e->name, SL_PIPE_API, e->revision, e->match, e->describe};
    }
    /* the same name keeps its slot */
    for (int w = 0; w < nw; w++)
        for (int i = 0; i < app->npipelines; i++)
            if (!used[i] && strcmp(app->pipelines[i].name, want[w].name) == 0) {
                set_slot(&app->pipelines[i], &want[w]);
                used[i] = placed[w] = 1;
                break;
            }
    /* a slot nobody wants is gone: it matches nothing and is hidden */
    for (int i = 0; i < app->npipelines; i++)
        if (!used[i] && app->pipelines[i].origin != SL_PIPE_GONE) {
            memset(app->pipelines[i].match, 0, sizeof app->pipelines[i].match);
            json_decref(app->pipelines[i].flow);
            app->pipelines[i].flow = NULL;
            app->pipelines[i].origin = SL_PIPE_GONE;
            app->pipelines[i].revision = 0;
        }
    /* new names: a gone slot, else a new one */
    for (int w = 0; w < nw; w++) {
        int slot = -1;
        if (placed[w])
            continue;
        for (int i = 0; i < app->npipelines && slot < 0; i++)
            if (!used[i] && app->pipelines[i].origin == SL_PIPE_GONE)
                slot = i;
        if (slot < 0 && app->npipelines < SL_CONFIG_MAX_PIPELINES) {
            slot = app->npipelines++;
            memset(&app->pipelines[slot], 0, sizeof app->pipelines[slot]);
            app->pipelines[slot].origin = SL_PIPE_GONE;
        }
        if (slot < 0) {
            sl_log(SL_LOG_ERROR, "pipeline_no_room", "{s:s, s:i}", "pipeline", want[w].name, "max",
                   SL_CONFIG_MAX_PIPELINES);
            continue;
        }
        set_slot(&app->pipelines[slot], &want[w]);
        used[slot] = 1;
    }
}

/* ---- open, start, close ---- */

int sl_api_pipelines_open(sl_app_t *app)
{
    struct sl_api_pipes_s *pp = calloc(1, sizeof *pp);
    sl_pipestore_opts_t o = {0};
    int err;

    if (!pp)
        return SL_ENOMEM;
    pp->app = app;
    for (int i = 0; i < app->npipelines && i < SL_CONFIG_MAX_PIPELINES; i++) {
        snprintf(pp->seeds[i].name, sizeof pp->seeds[i].name, "%s", app->pipelines[i].name);
        memcpy(pp->seeds[i].match, app->pipelines[i].match, sizeof pp->seeds[i].match);
        pp->nseeds++;
    }
    o.base = app->base;
    o.pg = app->pg;
    o.publisher = app->redis;
    o.redis_url = app->cfg ? app->cfg->redis_url : NULL;
    o.sched = app->sched;
    o.vm = app->vm;
    o.on_change = apply_cb;
    o.arg = pp;
    if ((err = sl_pipestore_new(&o, &pp->store)) != 0) {
        free(pp);
        return err;
    }
    app->pipes = pp;
    return 0;
}

static void store_ready_cb(void *arg)
{
    sl_app_t *app = arg;
    if (app->sched)
        sl_sched_start(app->sched);
}

void sl_api_pipelines_start(sl_app_t *app)
{
    if (app->pipes)
        sl_pipestore_start(app->pipes->store, store_ready_cb, app);
    else if (app->sched)
        sl_sched_start(app->sched);
}

void sl_api_pipelines_close(sl_app_t *app)
{
    struct sl_api_pipes_s *pp = app->pipes;
    if (!pp)
        return;
    app->pipes = NULL;
    sl_pipestore_free(pp->store);
    if (pp->vm)
        sl_flowvm_free(pp->vm);
    free(pp);
}

/* ---- the pipeline document ---- */

static const sl_pipeline_def_t *live_slot(const sl_app_t *app, const char *name)
{
    for (int i = 0; i < app->npipelines; i++)
        if (app->pipelines[i].origin != SL_PIPE_GONE && strcmp(app->pipelines[i].name, name) == 0)
            return &app->pipelines[i];
    return NULL;
}

static json_t *match_json(const sl_pipeline_def_t *p)
{
    json_t *match = json_array();
    for (int m = 0; match && m < SL_CONFIG_MAX_MATCH && p->match[m] != NULL; m++)
        json_array_append_new(match, json_string(p->match[m]));
    return match;
}

/* The pipeline document of p. Returns owned, or NULL on no memory. */
static json_t *pipeline_json(const sl_pipeline_def_t *p)
{
    json_t *match = match_json(p), *flow = p->flow;
    json_t *steps = json_object_get(flow, "steps"), *version = json_object_get(flow, "version");
    json_t *graph = json_object_get(flow, "graph");

    if (!json_is_array(steps))
        steps = NULL;
    if (!json_is_object(graph)) {
        /* not loaded yet: the steps known, no edges */
        json_t *nodes = json_array(), *v;
        size_t i;
        json_array_foreach(steps, i, v) json_array_append_new(nodes, json_pack("{s:O}", "id", v));
        graph = json_pack("{s:o, s:[]}", "nodes", nodes ? nodes : json_array(), "edges");
    } else {
        json_incref(graph);
    }
    return json_pack("{s:s, s:o, s:O, s:O, s:s, s:o, s:o}", "name", p->name, "match",
                     match ? match : json_array(), "steps", steps ? steps : json_array(), "version",
                     json_is_string(version) ? version : json_null(), "source",
                     p->origin == SL_PIPE_API ? "api" : "config", "revision",
                     p->origin == SL_PIPE_API ? json_integer(p->revision) : json_null(), "graph",
                     graph ? graph : json_object());
}

/* A request waiting for the database: the pipeline's name and what to answer. */
typedef struct pipe_req_s {
    sl_app_t *app;
    sl_http_req_t *req;
    char name[64];
    int yaml;       /* export: as YAML */
    json_t *doc;    /* owned: PUT's answer, or export's match */
    char path[512]; /* export of a config pipeline: its flow file */
} pipe_req_t;

static pipe_req_t *pipe_req_new(sl_app_t *app, sl_http_req_t *req, const char *name)
{
    pipe_req_t *pr = calloc(1, sizeof *pr);
    if (!pr) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        return NULL;
    }
    pr->app = app;
    pr->req = req;
    snprintf(pr->name, sizeof pr->name, "%s", name);
    return pr;
}

static void pipe_req_free(pipe_req_t *pr)
{
    json_decref(pr->doc);
    free(pr);
}

/* ---- GET /v1/pipelines ---- */

static void list_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    json_t *list = json_array();
    (void)tenant_id;
    (void)arg;
    sl_api_engine_refresh_steps(app); /* an HTTP process knows config flows from the engine */
    for (int i = 0; list != NULL && i < app->npipelines; i++)
        if (app->pipelines[i].origin != SL_PIPE_GONE)
            json_array_append_new(list, pipeline_json(&app->pipelines[i]));
    sl_api_json(req, 200, json_pack("{s:o}", "pipelines", list ? list : json_array()));
}

static void pipelines_list(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, list_auth_cb, NULL);
}

/* ---- GET /v1/pipelines/{name} ---- */

static void versions_cb(const sl_pg_result_t *r, void *arg)
{
    pipe_req_t *pr = arg;
    const sl_pipeline_def_t *p = live_slot(pr->app, pr->name);
    json_t *doc = NULL, *versions = NULL;

    if (r->err) {
        sl_api_db_error(pr->req, r);
        goto out;
    }
    if (!p || (doc = pipeline_json(p)) == NULL) {
        sl_http_respond_error(pr->req, 404, "not_found", "no such pipeline", -1);
        goto out;
    }
    if (PQntuples(r->res[0]) == 1)
        versions = json_loads(PQgetvalue(r->res[0], 0, 0), 0, NULL);
    if (!json_is_array(versions)) {
        json_decref(versions);
        versions = json_array();
    }
    if (p->origin == SL_PIPE_CONFIG) /* the config's flow, before any API version */
        json_array_insert_new(versions, 0,
                              json_pack("{s:O, s:n, s:n, s:s}", "version",
                                        json_object_get(doc, "version"), "revision", "created_at",
                                        "source", "config"));
    json_object_set_new(doc, "versions", versions);
    sl_api_json(pr->req, 200, doc);
out:
    pipe_req_free(pr);
}

static void get_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    sl_http_params_t params;
    pipe_req_t *pr;
    (void)tenant_id;
    (void)arg;
    /* {name} is recovered from the path: nothing is allocated before authentication */
    if (sl_api_route_params(app, req, &params) != 0 || params.n < 1 ||
        !sl_api_pipeline_name_ok(params.values[0])) {
        sl_http_respond_error(req, 404, "not_found", "no such pipeline", -1);
        return;
    }
    sl_api_engine_refresh_steps(app);
    if (!live_slot(app, params.values[0])) {
        sl_http_respond_error(req, 404, "not_found", "no such pipeline", -1);
        return;
    }
    if ((pr = pipe_req_new(app, req, params.values[0])) == NULL)
        return;
    const char *qp[] = {pr->name};
    if (sl_pg_query(app->pg, "SELECT sluice_pipeline_versions_json($1)", 1, qp, versions_cb, pr) !=
        0) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        pipe_req_free(pr);
    }
}

static void pipelines_get(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, get_auth_cb, NULL);
}

/* ---- PUT /v1/admin/pipelines/{name}: the body ---- */

static int verr(sl_api_verr_t *e, int status, const char *code, const char *msg)
{
    e->status = status;
    e->code = code;
    snprintf(e->msg, sizeof e->msg, "%s", msg);
    return status == 500 ? SL_ENOMEM : SL_EINVAL;
}

/* A YAML scalar as a JSON string (NULL: not a plain scalar, or not UTF-8). */
static json_t *yaml_string(struct fy_node *n)
{
    const char *s;
    size_t len;
    if (n == NULL || !fy_node_is_scalar(n) || fy_node_get_style(n) == FYNS_ALIAS ||
        (s = fy_node_get_scalar(n, &len)) == NULL)
        return NULL;
    return json_stringn(s, len);
}

/*
 * A YAML body into the JSON object a JSON body would be: match (a sequence
 * of scalars), flow (a scalar). Anything else becomes a value the shared
 * check refuses, with the same messages as for JSON.
 */
static int yaml_body(const char *body, size_t len, json_t **out, sl_api_verr_t *e)
{
    struct fy_parse_cfg pcfg;
    struct fy_document *doc;
    struct fy_node *root;
    struct fy_node_pair *p;
    void *it = NULL;
    json_t *obj;

    memset(&pcfg, 0, sizeof pcfg);
    pcfg.flags = FYPCF_QUIET; /* no RESOLVE: aliases are refused, not expanded */
    if ((doc = fy_document_build_from_string(&pcfg, body, len)) == NULL)
        return verr(e, 400, "invalid_request", "the body is not valid YAML");
    root = fy_document_root(doc);
    if (root == NULL || !fy_node_is_mapping(root)) {
        fy_document_destroy(doc);
        return verr(e, 400, "invalid_request", "the body must be a mapping {match, flow}");
    }
    if ((obj = json_object()) == NULL) {
        fy_document_destroy(doc);
        return verr(e, 500, "internal_error", "out of memory");
    }
    while ((p = fy_node_mapping_iterate(root, &it)) != NULL) {
        json_t *key = yaml_string(fy_node_pair_key(p)), *val = NULL;
        struct fy_node *v = fy_node_pair_value(p);
        const char *k = json_string_value(key);
        if (k && strcmp(k, "match") == 0 && v && fy_node_is_sequence(v)) {
            struct fy_node *item;
            void *it2 = NULL;
            val = json_array();
            while (val && (item = fy_node_sequence_iterate(v, &it2)) != NULL) {
                json_t *s = yaml_string(item);
                json_array_append_new(val, s ? s : json_null());
            }
        } else if (k && strcmp(k, "flow") == 0) {
            val = yaml_string(v);
        }
        json_object_set_new(obj, k ? k : "?", val ? val : json_null());
        json_decref(key);
    }
    fy_document_destroy(doc);
    *out = obj;
    return 0;
}

static int is_yaml(sl_http_req_t *req)
{
    static const char *const types[] = {"application/yaml", "application/x-yaml", "text/yaml",
                                        "text/x-yaml"};
    const char *ct = sl_http_req_header(req, "Content-Type");
    if (ct == NULL)
        return 0;
    while (*ct == ' ')
        ct++;
    size_t n = strcspn(ct, "; ");
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strlen(types[i]) == n && strncasecmp(ct, types[i], n) == 0)
            return 1;
    return 0;
}

/*
 * The shape PUT takes: {"match": [1..SL_CONFIG_MAX_MATCH non-empty MIME
 * patterns of printable ASCII, at most SL_API_MATCH_PATTERN_MAX bytes each],
 * "flow": "<Lua source, at most SL_API_FLOW_SOURCE_MAX bytes, no NUL>"} and
 * no other key. *src borrows from body.
 */
static int put_body_check(const json_t *body, const char **src, size_t *len, sl_api_verr_t *e)
{
    const char *key;
    json_t *v, *match = json_object_get(body, "match"), *flow = json_object_get(body, "flow");
    size_t i;
    char msg[160];

    json_object_foreach((json_t *)body, key, v)
    {
        if (strcmp(key, "match") != 0 && strcmp(key, "flow") != 0) {
            if (strlen(key) < 64)
                snprintf(msg, sizeof msg, "unknown key \"%s\" (the body is {match, flow})", key);
            else
                snprintf(msg, sizeof msg, "unknown key (the body is {match, flow})");
            return verr(e, 400, "invalid_request", msg);
        }
    }
    if (!json_is_array(match) || json_array_size(match) == 0 ||
        json_array_size(match) > SL_CONFIG_MAX_MATCH) {
        snprintf(msg, sizeof msg, "match must be a list of 1 to %d MIME patterns",
                 SL_CONFIG_MAX_MATCH);
        return verr(e, 400, "invalid_request", msg);
    }
    json_array_foreach(match, i, v)
    {
        const char *s = json_string_value(v);
        size_t n = json_is_string(v) ? json_string_length(v) : 0;
        int ok = n > 0 && n <= SL_API_MATCH_PATTERN_MAX && strlen(s) == n;
        for (size_t k = 0; ok && k < n; k++)
            ok = s[k] > 0x20 && s[k] < 0x7f;
        if (!ok) {
            snprintf(msg, sizeof msg,
                     "match[%zu] must be a MIME pattern (\"type/subtype\", \"type/*\" or \"*/*\") "
                     "of 1 to %d printable characters",
                     i, SL_API_MATCH_PATTERN_MAX);
            return verr(e, 400, "invalid_request", msg);
        }
    }
    if (!json_is_string(flow) || json_string_length(flow) == 0)
        return verr(e, 400, "invalid_request", "flow must be the flow's Lua source (a string)");
    *src = json_string_value(flow);
    *len = json_string_length(flow);
    if (*len > SL_API_FLOW_SOURCE_MAX) {
        snprintf(msg, sizeof msg, "flow is larger than %d bytes", SL_API_FLOW_SOURCE_MAX);
        return verr(e, 413, "payload_too_large", msg);
    }
    if (strlen(*src) != *len)
        return verr(e, 400, "invalid_request", "flow must not contain NUL bytes");
    return 0;
}

/* The checking VM of this process (made at the first PUT). NULL on failure (logged). */
static sl_flowvm_t *check_vm(struct sl_api_pipes_s *pp)
{
    sl_flow_host_t host = {0};
    char err[512];
    if (pp->vm)
        return pp->vm;
    host.base = pp->app->base;
    host.cfg = pp->app->cfg;
    host.lib_dir = "lua-flows/lib"; /* as the engine's (main.c start_engine) */
    host.tmp_root = "./var/tmp";
    if (sl_flowvm_new(&host, &pp->vm, err, sizeof err) != 0) {
        sl_log(SL_LOG_ERROR, "flowvm_failed", "{s:s}", "error", err);
        pp->vm = NULL;
    }
    return pp->vm;
}

/* 400 invalid_flow: every error in the message, "name:line: message", one per line. */
static void respond_invalid_flow(sl_http_req_t *req, const sl_flow_check_t *c)
{
    size_t cap = (size_t)SL_FLOW_CHECK_MAX_ERRORS * SL_FLOW_CHECK_ERROR_MAX + 64;
    char *text = malloc(cap);
    if (text)
        sl_flow_check_errors_text(c, text, cap);
    sl_http_respond_error(req, 400, "invalid_flow", text ? text : "the flow is invalid", -1);
    free(text);
}

static void put_reloaded_cb(int err, void *arg)
{
    pipe_req_t *pr = arg;
    (void)err; /* not read back (database gone meanwhile): it is stored all the same */
    sl_api_json(pr->req, 200, json_incref(pr->doc));
    pipe_req_free(pr);
}

static void put_done_cb(const sl_pg_result_t *r, void *arg)
{
    pipe_req_t *pr = arg;
    json_t *res = NULL;

    if (r->err) {
        sl_api_db_error(pr->req, r);
        pipe_req_free(pr);
        return;
    }
    if (PQntuples(r->res[0]) == 1)
        res = json_loads(PQgetvalue(r->res[0], 0, 0), 0, NULL);
    json_object_set(pr->doc, "revision", json_object_get(res, "revision"));
    json_object_set(pr->doc, "created_at", json_object_get(res, "created_at"));
    json_decref(res);
    sl_log(SL_LOG_INFO, "pipeline_put", "{s:s, s:O, s:O}", "pipeline", pr->name, "revision",
           json_object_get(pr->doc, "revision"), "version", json_object_get(pr->doc, "version"));
    if (!pr->app->pipes) {
        put_reloaded_cb(0, pr);
        return;
    }
    sl_pipestore_notify(pr->app->pipes->store, pr->name);
    if (sl_pipestore_reload(pr->app->pipes->store, put_reloaded_cb, pr) != 0)
        put_reloaded_cb(SL_ENOMEM, pr);
}

/* Live pipelines other than name: a new name must leave room (SL_CONFIG_MAX_PIPELINES). */
static int room_for(const sl_app_t *app, const char *name)
{
    int live = 0;
    for (int i = 0; i < app->npipelines; i++) {
        if (app->pipelines[i].origin == SL_PIPE_GONE)
            continue;
        if (strcmp(app->pipelines[i].name, name) == 0)
            return 1;
        live++;
    }
    return live < SL_CONFIG_MAX_PIPELINES;
}

static void put_body_cb(sl_http_req_t *req, int err, const char *body, size_t len, void *arg)
{
    pipe_req_t *pr = arg;
    struct sl_api_pipes_s *pp = pr->app->pipes;
    sl_api_verr_t e;
    json_t *obj = NULL, *describe = NULL;
    sl_flow_check_t *c = NULL;
    sl_flow_t *f = NULL;
    sl_flowvm_t *vm;
    const char *src = NULL;
    size_t srclen = 0;
    char *match_text = NULL, *describe_text = NULL, errbuf[256];
    int rc;

    if (err == SL_ETOOBIG || err == SL_EPROTO)
        goto out; /* the http layer answered 413 / 400 itself */
    if (err != 0) {
        sl_http_respond_error(req, 499, "client_closed", "client went away", /* as common.c */
                              -1);
        goto out;
    }
    rc = pr->yaml ? yaml_body(body, len, &obj, &e) : sl_api_json_object(body, len, &obj, &e);
    if (rc != 0 || put_body_check(obj, &src, &srclen, &e) != 0) {
        sl_http_respond_error(req, e.status, e.code, e.msg, -1);
        goto out;
    }
    if (!pp || (vm = check_vm(pp)) == NULL) {
        sl_http_respond_error(req, 503, "unavailable", "flows cannot be checked here", 1);
        goto out;
    }
    if (!room_for(pr->app, pr->name)) {
        snprintf(e.msg, sizeof e.msg, "at most %d pipelines", SL_CONFIG_MAX_PIPELINES);
        sl_http_respond_error(req, 409, "too_many_pipelines", e.msg, -1);
        goto out;
    }
    /* the check the engine makes, labelled with the pipeline's name: every error at once */
    rc = sl_flow_check_source(vm, pr->name, src, srclen, &c);
    if (rc == SL_EINVAL && c != NULL) {
        respond_invalid_flow(req, c);
        goto out;
    }
    if (rc != 0 ||
        sl_flow_load_source(vm, pr->name, pr->name, src, srclen, &f, errbuf, sizeof errbuf) != 0 ||
        (describe = sl_flow_describe(f)) == NULL) {
        sl_http_respond_error(req, 500, "internal_error", "the flow could not be loaded", -1);
        goto out;
    }
    match_text = json_dumps(json_object_get(obj, "match"), JSON_COMPACT);
    describe_text = json_dumps(describe, JSON_COMPACT);
    pr->doc = json_pack("{s:s, s:O, s:O, s:s, s:s, s:n, s:O}", "name", pr->name, "match",
                        json_object_get(obj, "match"), "steps", json_object_get(describe, "steps"),
                        "version", sl_flow_version(f), "source", "api", "revision", "graph",
                        json_object_get(describe, "graph"));
    if (!match_text || !describe_text || !pr->doc) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        goto out;
    }
    const char *params[] = {pr->name, match_text, sl_flow_version(f), src, describe_text};
    if (sl_pg_query(pr->app->pg, "SELECT sluice_pipeline_put($1, $2::jsonb, $3, $4, $5::jsonb)", 5,
                    params, put_done_cb, pr) != 0) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        goto out;
    }
    pr = NULL; /* put_done_cb has it */
out:
    if (f)
        sl_flow_unref(f);
    sl_flow_check_free(c);
    json_decref(describe);
    json_decref(obj);
    free(match_text);
    free(describe_text);
    if (pr)
        pipe_req_free(pr);
}

/* The admin routes' common start: the admin key, then a valid {name}. NULL: answered. */
static pipe_req_t *admin_start(sl_app_t *app, sl_http_req_t *req, const sl_http_params_t *params,
                               int bad_name_status)
{
    if (!sl_api_is_admin(app, req)) {
        sl_http_respond_error(req, 401, "unauthorized", "missing or invalid admin key", -1);
        return NULL;
    }
    if (params->n < 1 || !sl_api_pipeline_name_ok(params->values[0])) {
        if (bad_name_status == 404)
            sl_http_respond_error(req, 404, "not_found", "no such pipeline", -1);
        else
            sl_http_respond_error(req, 400, "invalid_name",
                                  "a pipeline name is 1 to 63 characters of a-z, 0-9 and _", -1);
        return NULL;
    }
    return pipe_req_new(app, req, params->values[0]);
}

static void pipelines_put(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    pipe_req_t *pr = admin_start(arg, req, params, 400);
    if (!pr)
        return;
    pr->yaml = is_yaml(req);
    if (sl_http_req_read_body(req, SL_API_PIPELINE_BODY_MAX, put_body_cb, pr) != 0) {
        sl_http_respond_error(req, 500, "internal_error", "could not read the body", -1);
        pipe_req_free(pr);
    }
}

/* ---- DELETE /v1/admin/pipelines/{name} ---- */

static void deleted_reloaded_cb(int err, void *arg)
{
    pipe_req_t *pr = arg;
    (void)err;
    sl_http_respond(pr->req, 204, NULL, NULL, 0);
    pipe_req_free(pr);
}

static void delete_done_cb(const sl_pg_result_t *r, void *arg)
{
    pipe_req_t *pr = arg;
    if (r->err) {
        sl_api_db_error(pr->req, r);
        pipe_req_free(pr);
        return;
    }
    if (PQntuples(r->res[0]) != 1 || PQgetvalue(r->res[0], 0, 0)[0] != 't') {
        sl_http_respond_error(pr->req, 404, "not_found", "no such pipeline", -1);
        pipe_req_free(pr);
        return;
    }
    sl_log(SL_LOG_INFO, "pipeline_delete", "{s:s}", "pipeline", pr->name);
    if (!pr->app->pipes) {
        deleted_reloaded_cb(0, pr);
        return;
    }
    sl_pipestore_notify(pr->app->pipes->store, pr->name);
    if (sl_pipestore_reload(pr->app->pipes->store, deleted_reloaded_cb, pr) != 0)
        deleted_reloaded_cb(SL_ENOMEM, pr);
}

static void pipelines_delete(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    sl_app_t *app = arg;
    pipe_req_t *pr = admin_start(app, req, params, 404);
    if (!pr)
        return;
    const char *qp[] = {pr->name, app->pipes && is_seed(app->pipes, pr->name) ? "true" : "false"};
    if (sl_pg_query(app->pg, "SELECT sluice_pipeline_delete($1, $2::boolean)", 2, qp,
                    delete_done_cb, pr) != 0) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        pipe_req_free(pr);
    }
}

/* ---- GET /v1/admin/pipelines/{name}/export ---- */

/* Can src go in a YAML literal block as it is? (printable, no line breaks but \n) */
static int literal_ok(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len; i++) {
        if (u[i] == '\r' || (u[i] < 0x20 && u[i] != '\t' && u[i] != '\n') || u[i] == 0x7f)
            return 0;
        if (u[i] == 0xC2 && i + 1 < len && u[i + 1] >= 0x80 && u[i + 1] <= 0x9f)
            return 0; /* C1 controls, NEL among them */
        if (u[i] == 0xE2 && i + 2 < len && u[i + 1] == 0x80 &&
            (u[i + 2] == 0xA8 || u[i + 2] == 0xA9))
            return 0; /* U+2028, U+2029: line breaks to YAML 1.1 */
        if (u[i] == 0xEF && i + 2 < len &&
            ((u[i + 1] == 0xBB && u[i + 2] == 0xBF) || (u[i + 1] == 0xBF && u[i + 2] >= 0xBE)))
            return 0; /* BOM, U+FFFE, U+FFFF */
    }
    return 1;
}

/*
 * {match, flow} as YAML: match as double-quoted strings (JSON's escapes are
 * YAML's), flow as a literal block with an explicit indentation indicator
 * and the chomping that gives back its trailing newlines exactly; a source a
 * literal block cannot hold goes double-quoted. Returns owned, or NULL.
 */
static char *yaml_export(const json_t *match, const char *src, size_t len, size_t *outlen)
{
    size_t cap = 64 + len * 2 + 16, off = 0, i;
    json_t *v;
    char *out, *q;

    json_array_foreach(match, i, v) cap += json_string_length(v) * 6 + 16;
    for (size_t k = 0; k < len; k++)
        cap += src[k] == '\n' ? 2 : 0;
    if ((out = malloc(cap)) == NULL)
        return NULL;
    off += (size_t)snprintf(out + off, cap - off, "match:\n");
    json_array_foreach(match, i, v)
    {
        if ((q = json_dumps(v, JSON_ENCODE_ANY)) == NULL)
            goto fail;
        off += (size_t)snprintf(out + off, cap - off, "  - %s\n", q);
        free(q);
    }
    if (!literal_ok(src, len)) {
        json_t *s = json_stringn(src, len);
        q = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
        json_decref(s);
        if (!q || strlen(q) + off + 16 > cap) {
            size_t need = off + (q ? strlen(q) : 0) + 16;
            char *bigger = q ? realloc(out, need) : NULL;
            if (!bigger) {
                free(q);
                goto fail;
            }
            out = bigger;
            cap = need;
        }
        off += (size_t)snprintf(out + off, cap - off, "flow: %s\n", q);
        free(q);
        *outlen = off;
        return out;
    }
    /* chomping: "-" no final newline, "" exactly one, "+" more */
    const char *chomp = len == 0 || src[len - 1] != '\n'   ? "-"
                        : len >= 2 && src[len - 2] == '\n' ? "+"
                                                           : "";
    size_t body = len > 0 && src[len - 1] == '\n' ? len - 1 : len;
    off += (size_t)snprintf(out + off, cap - off, "flow: |2%s\n", chomp);
    for (size_t start = 0;;) {
        const char *nl = memchr(src + start, '\n', body - start);
        size_t end = nl ? (size_t)(nl - src) : body;
        if (end > start) {
            memcpy(out + off, "  ", 2);
            off += 2;
            memcpy(out + off, src + start, end - start);
            off += end - start;
        }
        out[off++] = '\n';
        if (!nl)
            break;
        start = end + 1;
    }
    out[off] = '\0';
    *outlen = off;
    return out;
fail:
    free(out);
    return NULL;
}

static void export_respond(pipe_req_t *pr, const char *src, size_t len)
{
    if (pr->yaml) {
        size_t n = 0;
        char *text = yaml_export(pr->doc, src, len, &n);
        if (!text) {
            sl_http_respond_error(pr->req, 500, "internal_error", "out of memory", -1);
            return;
        }
        sl_http_respond(pr->req, 200, "application/yaml", text, n);
        free(text);
        return;
    }
    json_t *flow = json_stringn(src, len);
    if (!flow) {
        sl_http_respond_error(pr->req, 500, "internal_error", "the flow is not UTF-8", -1);
        return;
    }
    sl_api_json(pr->req, 200, json_pack("{s:O, s:o}", "match", pr->doc, "flow", flow));
}

/* A config pipeline's flow file, read now (bounded). */
static void export_file(pipe_req_t *pr)
{
    FILE *fp = fopen(pr->path, "rb");
    char *buf = malloc(SL_API_FLOW_SOURCE_MAX + 1);
    size_t n = 0;
    if (fp && buf) {
        n = fread(buf, 1, SL_API_FLOW_SOURCE_MAX + 1, fp);
        if (n <= SL_API_FLOW_SOURCE_MAX && !ferror(fp))
            export_respond(pr, buf, n);
        else
            sl_http_respond_error(pr->req, 500, "internal_error", "the flow file is too large", -1);
    } else {
        sl_http_respond_error(pr->req, 404, "not_found", "the pipeline's flow file is not readable",
                              -1);
    }
    if (fp)
        fclose(fp);
    free(buf);
}

static void export_source_cb(const sl_pg_result_t *r, void *arg)
{
    pipe_req_t *pr = arg;
    if (r->err)
        sl_api_db_error(pr->req, r);
    else if (PQntuples(r->res[0]) == 1)
        export_respond(pr, PQgetvalue(r->res[0], 0, 0), (size_t)PQgetlength(r->res[0], 0, 0));
    else if (pr->path[0])
        export_file(pr);
    else
        sl_http_respond_error(pr->req, 404, "not_found", "the pipeline's flow is not stored", -1);
    pipe_req_free(pr);
}

static void pipelines_export(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    sl_app_t *app = arg;
    const sl_pipeline_def_t *p;
    const char *version = NULL;
    char format[8];
    pipe_req_t *pr = admin_start(app, req, params, 404);
    int n;

    if (!pr)
        return;
    n = sl_api_query_param(req, "format", format, sizeof format);
    if (n == -2 || (n >= 0 && strcmp(format, "json") != 0 && strcmp(format, "yaml") != 0)) {
        sl_http_respond_error(req, 400, "invalid_request", "format must be json or yaml", -1);
        goto fail;
    }
    pr->yaml = n >= 0 && strcmp(format, "yaml") == 0;
    sl_api_engine_refresh_steps(app);
    if ((p = live_slot(app, pr->name)) == NULL) {
        sl_http_respond_error(req, 404, "not_found", "no such pipeline", -1);
        goto fail;
    }
    if ((pr->doc = match_json(p)) == NULL) {
        sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
        goto fail;
    }
    version = json_string_value(json_object_get(p->flow, "version"));
    if (p->origin == SL_PIPE_CONFIG) {
        /* the config's file, when the version the engine loaded is not known here */
        const char *path = NULL;
        for (int k = 0; app->cfg && k < app->cfg->npipelines; k++)
            if (strcmp(app->cfg->pipelines[k].name, pr->name) == 0)
                path = app->cfg->pipelines[k].flow;
        if (path)
            snprintf(pr->path, sizeof pr->path, "%s", path);
        else
            snprintf(pr->path, sizeof pr->path, "lua-flows/%s.lua", pr->name);
        if (!version) {
            export_file(pr);
            goto fail;
        }
    }
    if (!version) {
        sl_http_respond_error(req, 404, "not_found", "the pipeline's flow is not stored", -1);
        goto fail;
    }
    const char *qp[] = {version};
    if (sl_pg_query(app->pg, "SELECT source FROM flow_versions WHERE version = $1", 1, qp,
                    export_source_cb, pr) == 0)
        return;
    sl_http_respond_error(req, 500, "internal_error", "out of memory", -1);
fail:
    pipe_req_free(pr);
}

void sl_api_register_pipelines(sl_app_t *app)
{
    sl_http_router_add(app->router, "GET", "/v1/pipelines", "pipelines_list", pipelines_list, app);
    sl_http_router_add(app->router, "GET", "/v1/pipelines/{name}", "pipelines_get", pipelines_get,
                       app);
    sl_http_router_add(app->router, "PUT", "/v1/admin/pipelines/{name}", "pipelines_put",
                       pipelines_put, app);
    sl_http_router_add(app->router, "DELETE", "/v1/admin/pipelines/{name}", "pipelines_delete",
                       pipelines_delete, app);
    sl_http_router_add(app->router, "GET", "/v1/admin/pipelines/{name}/export", "pipelines_export",
                       pipelines_export, app);
}
