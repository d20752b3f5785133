/*
 * pipelines.c — the pipelines as the API shows them (../shared/API.md
 * "Pipelines"):
 *
 *   GET /v1/pipelines        -> {"pipelines": [pipeline, ...]}           (auth)
 *   GET /v1/pipelines/{name} -> pipeline, or 404 not_found               (auth)
 *
 * where pipeline is {"name", "match", "steps", "version", "source", "graph":
 * {"nodes": [{"id"}], "edges": [{"from", "to", "on"}]}}. Name and match come
 * from the config (or the shipped defaults); steps, version (the sha256 of
 * the flow's source, as flow_versions stores it) and graph from the flow the
 * engine loaded (sl_flow_describe, actors/flow_check.h), which an HTTP
 * process reads from the engine's snapshot (sl_api_engine_refresh_steps): it
 * loads no flow itself. Until the engine has published them, version is null
 * and the graph has the steps known so far and no edges. Every pipeline
 * comes from the config file for now: "source": "config".
 */
#include "api/api.h"

#include <string.h>

/* The pipeline document of p. Returns owned, or NULL on no memory. */
static json_t *pipeline_json(const sl_pipeline_def_t *p)
{
    json_t *match = json_array(), *flow = p->flow;
    json_t *steps = json_object_get(flow, "steps"), *version = json_object_get(flow, "version");
    json_t *graph = json_object_get(flow, "graph");

    for (int m = 0; match && m < SL_CONFIG_MAX_MATCH && p->match[m] != NULL; m++)
        json_array_append_new(match, json_string(p->match[m]));
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
    return json_pack("{s:s, s:o, s:O, s:O, s:s, s:o}", "name", p->name, "match",
                     match ? match : json_array(), "steps", steps ? steps : json_array(), "version",
                     json_is_string(version) ? version : json_null(), "source", "config", "graph",
                     graph ? graph : json_object());
}

/* ---- GET /v1/pipelines ---- */

static void list_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    json_t *list = json_array();
    (void)tenant_id;
    (void)arg;
    sl_api_engine_refresh_steps(app); /* an HTTP process knows flows from the engine */
    for (int i = 0; list != NULL && i < app->npipelines; i++)
        json_array_append_new(list, pipeline_json(&app->pipelines[i]));
    sl_api_json(req, 200, json_pack("{s:o}", "pipelines", list ? list : json_array()));
}

static void pipelines_list(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, list_auth_cb, NULL);
}

/* ---- GET /v1/pipelines/{name} ---- */

static void get_auth_cb(sl_app_t *app, sl_http_req_t *req, const char *tenant_id, void *arg)
{
    sl_http_params_t params;
    (void)tenant_id;
    (void)arg;
    /* {name} is recovered from the path: nothing is allocated before authentication */
    if (sl_api_route_params(app, req, &params) == 0 && params.n >= 1) {
        sl_api_engine_refresh_steps(app);
        for (int i = 0; i < app->npipelines; i++)
            if (strcmp(app->pipelines[i].name, params.values[0]) == 0) {
                json_t *doc = pipeline_json(&app->pipelines[i]);
                if (doc == NULL)
                    break;
                sl_api_json(req, 200, doc);
                return;
            }
    }
    sl_http_respond_error(req, 404, "not_found", "no such pipeline", -1);
}

static void pipelines_get(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    sl_api_auth(arg, req, 0, get_auth_cb, NULL);
}

void sl_api_register_pipelines(sl_app_t *app)
{
    sl_http_router_add(app->router, "GET", "/v1/pipelines", "pipelines_list", pipelines_list, app);
    sl_http_router_add(app->router, "GET", "/v1/pipelines/{name}", "pipelines_get", pipelines_get,
                       app);
}
