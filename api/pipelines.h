/*
 * pipelines.h — pipelines through the API (issue 14; ../shared/API.md
 * "Pipelines", docs/flows.md "Pipelines through the API").
 *
 * api/pipelines.c serves GET /v1/pipelines[/{name}] and the admin routes
 * PUT/DELETE /v1/admin/pipelines/{name} and GET .../{name}/export, and keeps
 * app->pipelines in step with Postgres through a store (actors/pipestore.h):
 * the config's pipelines are the seed, an API version of the same name
 * replaces it, a DELETE hides it. Every process of every role opens one;
 * with a scheduler (engine, inline) the store also loads the flows into it.
 *
 * main wires it in three places:
 *   sl_api_pipelines_open(app)   after sl_api_load_pipelines and the engine's
 *                                pieces (app->sched, app->vm), before serving;
 *   sl_api_pipelines_start(app)  once the schema is ready, instead of
 *                                sl_sched_start: the scheduler starts after the
 *                                first read, so no run is claimed before the
 *                                API pipelines are known;
 *   sl_api_pipelines_close(app)  at stop (before the scheduler is freed) and
 *                                at exit; idempotent.
 */
#ifndef SL_API_PIPELINES_H
#define SL_API_PIPELINES_H

#include "api/api.h"

/** Longest flow source a PUT takes (bytes), and longest request body. */
#define SL_API_FLOW_SOURCE_MAX (256 * 1024)
#define SL_API_PIPELINE_BODY_MAX (512 * 1024)
/** Longest MIME pattern in a PUT's match (bytes). */
#define SL_API_MATCH_PATTERN_MAX 127

/** Creates app->pipes (owned by app until sl_api_pipelines_close). 0 or SL_E*. */
int sl_api_pipelines_open(sl_app_t *app);

/** Starts reading Postgres; then starts app->sched (when there is one). */
void sl_api_pipelines_start(sl_app_t *app);

/** Frees app->pipes (NULL afterwards). No-op when already closed. */
void sl_api_pipelines_close(sl_app_t *app);

/** 1 if name (borrowed) is a pipeline name: 1..63 bytes of [a-z0-9_]. */
int sl_api_pipeline_name_ok(const char *name);

#endif
