/*
 * app.h — one serving process of an instance, built in parts and torn down
 * in parts: `sluice serve` (main.c parses the arguments and calls sl_app_run).
 *
 * Each process has a role (core/supervise.h, docs/internals/engine.md): the
 * supervisor forks an engine (scheduler, run actors, flow VM: no listener)
 * and HTTP processes (the API, SSE, /metrics: no Lua); inline, one process is
 * both. sl_app_serve builds what its role needs, in this order, and undoes it
 * on the way out:
 *
 *   sl_app_open_backends   every role: worker pool, storage, Postgres, Redis,
 *                          limiter, pubsub, read caches, pipelines, auth,
 *                          retention (purges; the sweep where it is not HTTP)
 *   sl_app_open_flows      not HTTP: curl, flow VM, scheduler, flows, and the
 *                          engine's link to the HTTP processes
 *   (migrations)           every role: on the worker pool, retried with backoff;
 *                          /v1 answers 503 until they are done
 *   sl_app_open_http       not the engine: router, every route, the listener
 *   (signals)              SIGTERM/SIGINT drain and stop; SIGHUP reloads flows
 *
 * The sl_app_t (api/api.h) is the process's one app: every pointer in it is
 * owned by the part that opened it and freed by that part's close. Close
 * functions accept a part that is partly open (after a failed open) or not
 * open at all, and leave the pointers they free NULL.
 */
#ifndef SL_APP_H
#define SL_APP_H

#include "api/api.h"

#define SLUICE_VERSION "0.1.0"

/**
 * The backends every role needs, on app->base (which the caller made):
 * app->wq, app->store, app->pg, app->redis (NULL without redis_url),
 * app->ratelimit, app->pubsub, app->cache (NULL in the engine),
 * app->pipelines, app->auth, app->retention. app->cfg, app->role and
 * app->link are set (app->link borrowed). 0 or an SL_E* code; on error what
 * was opened stays for sl_app_close_backends.
 */
int sl_app_open_backends(sl_app_t *app);

/**
 * Frees what sl_app_open_backends opened, in the order that lets pending
 * operations end cleanly (retention before the pool; limiter and caches
 * before Redis; pubsub after the callbacks of cancelled operations have run
 * on app->base). Call after sl_app_close_flows and sl_app_close_http;
 * app->base stays (the caller's).
 */
void sl_app_close_backends(sl_app_t *app);

/**
 * The engine's part (not in an HTTP process): app->curl, app->vm,
 * app->sched, every pipeline's flow loaded (a bad flow fails the start), and
 * in the engine process its link (messages in, snapshots out). 0 or an SL_E*
 * code; on error what was opened stays for sl_app_close_flows.
 */
int sl_app_open_flows(sl_app_t *app);

/**
 * Frees what sl_app_open_flows opened: the snapshot timer, the link's events
 * on app->base (in an HTTP process too: the forwarded run events), the
 * scheduler, the flow VM, curl. Before sl_app_close_backends.
 */
void sl_app_close_flows(sl_app_t *app);

/**
 * Every route into app->router (which the caller made). Only adds routes and
 * metrics families, connects to nothing: `sluice routes` runs it with a
 * config and nothing else.
 */
void sl_app_register_routes(sl_app_t *app);

/**
 * HTTP (not in the engine process): app->router with every route, and the
 * listener app->http on cfg->listen. 0 or an SL_E* code (listen_failed is
 * logged); on error what was opened stays for sl_app_close_http.
 */
int sl_app_open_http(sl_app_t *app);

/**
 * Frees the listener (if a stop signal has not already) and the router.
 * First of the closes.
 */
void sl_app_close_http(sl_app_t *app);

/**
 * Runs one process of the given role (SL_ROLE_* of core/supervise.h) until
 * it is stopped (SIGTERM/SIGINT), then tears it down. cfg is borrowed; link
 * is borrowed (NULL inline). 0 or an SL_E* code.
 */
int sl_app_serve(sl_config_t *cfg, int role, sl_elink_t *link);

/**
 * `sluice serve`: with engine.process separate, the supervisor and its
 * children (each serving its role); inline, `workers` forked processes (or
 * this one) serving both roles. cfg is borrowed. Returns the process's exit
 * status (0 or 1).
 */
int sl_app_run(sl_config_t *cfg);

#endif
