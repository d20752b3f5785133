/*
 * api.h — the REST API of ../shared/API.md, on top of core/http and db/pg.
 *
 * app.c builds one sl_app_t, registers every route file's routes into the
 * router, and dispatches each request to its route. Route files (the api/ .c files) are
 * thin: parse and validate input, run one parameterised batch in Postgres
 * (JSON documents are built by SQL functions from db/migrations/002_json.sql),
 * and answer. Every query filters on the caller's tenant_id, so another
 * tenant's object is a 404.
 */
#ifndef SL_API_H
#define SL_API_H

#include <jansson.h>
#include <event2/event.h>

#include "api/cache.h"
#include "core/config.h"
#include "core/engine_link.h"
#include "core/http.h"
#include "core/metrics.h"
#include "core/ratelimit.h"
#include "core/pubsub.h"
#include "core/redis.h"
#include "core/storage.h"
#include "core/workq.h"
#include "actors/retention.h"
#include "actors/run_event.h"
#include "actors/scheduler.h"
#include "db/pg.h"

/** A pipeline as the API knows it: name, the MIME patterns it matches, its flow. */
typedef struct sl_pipeline_def_s {
    char name[64];
    char *match[SL_CONFIG_MAX_MATCH + 1]; /* borrowed from config or static defaults */
    /* issue 14: every step, the version and the graph of its loaded flow, as
     * sl_flow_describe (actors/flow_check.h) gives them: {"steps", "version",
     * "start", "graph"}. Owned. The engine sets it when it loads the flow; an
     * HTTP process copies the engine's (sl_api_engine_refresh_steps). Before
     * that: {"steps"} of the shipped pipelines' documented steps, or NULL. */
    json_t *flow;
    /* issue 14 (pipeapi): where the pipeline comes from (SL_PIPE_*), and its
     * revision when put through the API (0 for the config's). A slot keeps its
     * index for the process's life (upload bit sets span loop turns): a
     * deleted pipeline's slot is SL_PIPE_GONE, matches nothing and is hidden
     * (api/pipelines.h). */
    int origin;
    int revision;
} sl_pipeline_def_t;

enum { SL_PIPE_CONFIG = 0, SL_PIPE_API = 1, SL_PIPE_GONE = 2 };

typedef struct sl_app_s {
    struct event_base *base;
    sl_config_t *cfg;          /* owned by app.c */
    sl_pg_t *pg;               /* owned by app.c */
    sl_workq_t *wq;            /* owned by app.c */
    sl_store_t *store;         /* owned by app.c */
    sl_http_server_t *http;    /* owned by app.c */
    sl_http_router_t *router;  /* owned by app.c */
    sl_redis_t *redis;         /* owned by app.c; NULL when redis_url is not configured */
    sl_ratelimit_t *ratelimit; /* owned by app.c: request/byte limits, upload concurrency holds */
    sl_pubsub_t *pubsub;       /* owned by app.c; status events (local fan-out + Redis) */
    sl_cache_t *cache;         /* owned by app.c; API key and file document caches (api/cache.h);
                                  NULL in the engine process */
    struct sl_auth_s *auth;    /* owned by app.c; access tokens, scopes (api/auth.h); issue 13 */
    sl_curl_t *curl;           /* owned by app.c */
    sl_flowvm_t *vm;           /* owned by app.c */
    sl_sched_t *sched;         /* owned by app.c; NULL until flows are loaded, and always
                                  NULL in an HTTP process (the engine runs apart) */
    sl_elink_t *link;          /* owned by app.c; the engine process's link, NULL inline */
    sl_retention_t *retention; /* owned by app.c: purges and (engine/inline) the sweep */
    struct sl_api_pipes_s *pipes; /* owned by app.c (sl_api_pipelines_open/close, api/pipelines.h);
                                     issue 14: pipelines put through the API */
    int role;                  /* SL_ROLE_* of core/supervise.h */
    char signing_key[129];     /* HMAC key for signed blob URLs (settings table) */
    int npipelines;
    sl_pipeline_def_t pipelines[SL_CONFIG_MAX_PIPELINES];
    int active_uploads;        /* uploads in progress in this process */
    int metrics_waits;         /* GET /metrics waiting for the engine's snapshot (<= 200 ms) */
    int redis_up;              /* 1 while the Redis connection is up (for /readyz) */
    int schema_ready;          /* migrations applied and settings loaded; /v1 answers 503 before */
    int stopping;              /* SIGTERM came: /readyz answers 503 (issue 12, docs/deploy.md) */
    const char *instance_id;   /* this process's id (lease owner, logs) */

    /* metrics families, registered in main */
    sl_metric_t *m_requests;   /* sluice_http_requests_total{route,status} */
    sl_metric_t *m_latency;    /* sluice_http_request_duration_seconds{route} */
    sl_metric_t *m_upload_bytes; /* sluice_upload_bytes_total */
    sl_metric_t *m_upload_files; /* sluice_upload_files_total */
} sl_app_t;

/* ---- authentication ---- */

/**
 * Called with the caller's tenant id (borrowed until the callback returns;
 * copy it if an async step follows). Never called on failure: sl_api_auth
 * has then answered 401 (missing/bad key) or 503 (database down) itself.
 */
typedef void (*sl_api_auth_cb)(sl_app_t *app, sl_http_req_t *req, const char *tenant_id,
                               void *arg);

/** Longer API keys (bearer tokens, ?access_token=) are refused unread. */
#define SL_API_KEY_MAX 512

/**
 * The API key a request carries, into out (NUL-terminated): the Bearer token
 * of its Authorization header (parsed by sl_http_bearer_token, whose doc says
 * what is accepted), or — only when the request has no Authorization header
 * and allow_query_token — its ?access_token= query parameter. A malformed
 * header never falls back to the query. Its length, or -1 when there is none.
 * Authentication and the request rate limiter both read the key through this,
 * so they always agree on it (the limiter passes allow_query_token = 1).
 */
int sl_api_credentials(sl_http_req_t *req, int allow_query_token, char *out, size_t outlen);

/**
 * Authenticates `Authorization: Bearer <key>` (or, when allow_query_token,
 * `?access_token=`). An API key: looks its sha256 up in api_keys (through
 * the auth cache). An access token (a JWT, api/auth.h): verified locally,
 * 401 `token_expired` once expired, and refused once its family or key is
 * revoked. Then the route's scope (sl_auth_route_scope of the route the
 * router named) must be among the credential's: else 403 `forbidden`. The
 * callback runs on a later loop turn.
 */
void sl_api_auth(sl_app_t *app, sl_http_req_t *req, int allow_query_token, sl_api_auth_cb cb,
                 void *arg);

/**
 * What an sl_api_auth_owned / sl_api_read_json_owned call does with `arg` when
 * it answers the request itself without calling cb: release(arg) (maybe
 * inside the call). So `arg` may own heap state that lives across the call.
 */
typedef void (*sl_api_release_fn)(void *arg);

/**
 * Inside an sl_api_auth callback only (loop thread), for a response that
 * outlives the request's check (an SSE stream): the revocation tags of the
 * credential (api/cache.h sl_cache_revoke_tag: an API key's hash; an access
 * token's family and its key), 0 where unused, into ids. Returns 1 when no
 * revocation reached this process since the check began; 0 when one did,
 * or outside a callback: the answer may predate that revocation, so the
 * caller checks again (sl_api_auth) before it holds the stream open.
 */
int sl_api_auth_revocation_ids(sl_app_t *app, uint64_t ids[2]);

/** sl_api_auth; when cb is not called, release(arg) is (release may be NULL). */
void sl_api_auth_owned(sl_app_t *app, sl_http_req_t *req, int allow_query_token,
                       sl_api_auth_cb cb, void *arg, sl_api_release_fn release);

/** True if the request carries the admin key (constant-time compare). */
int sl_api_is_admin(const sl_app_t *app, sl_http_req_t *req);

/**
 * A new secret shown once (API keys "sk_", refresh tokens "rt_"): the
 * 3-character prefix then 2 * nrandom hex characters of random bytes, into out
 * (which holds 3 + 2 * nrandom + 1), and its sha256 hex (what is stored) into
 * hash. 0 or SL_EIO.
 */
int sl_api_new_secret(const char prefix[4], size_t nrandom, char *out, char hash[65]);

/* ---- responses ---- */

/**
 * Answers 200 with JSON text (borrowed; copied) and its ETag (borrowed; NULL:
 * computed from the text by sl_cache_etag), or 304 with the ETag and no body
 * when the request's If-None-Match matches it. For the reads a client polls
 * (a file, a dataset's files, its records).
 */
void sl_api_json_etag(sl_http_req_t *req, const char *text, size_t len, const char *etag);

/** sl_api_json_etag for any content type (borrowed; copied). */
void sl_api_respond_etag(sl_http_req_t *req, const char *content_type, const char *text,
                         size_t len, const char *etag);

/** Answers with a JSON value (takes `v`, encodes compactly). */
void sl_api_json(sl_http_req_t *req, int status, json_t *v);

/** Answers with JSON text already encoded (borrowed; copied). */
void sl_api_json_text(sl_http_req_t *req, int status, const char *text, size_t len);

/**
 * Answers a failed database batch: 503 "database_unavailable" with Retry-After
 * when Postgres is down, 503 "database_busy" with Retry-After 1 for a
 * serialization failure or deadlock (40001, 40P01) that db/pg.c's re-runs did
 * not get past, 500 "internal_error" otherwise (logged with the request id).
 */
void sl_api_db_error(sl_http_req_t *req, const sl_pg_result_t *r);

/**
 * Reads a JSON object body (up to cfg->max_json_bytes) and calls cb with it
 * (borrowed; cb may json_incref). Answers 400 "invalid_json" / 413 itself,
 * without calling cb, for a malformed or oversized body or one that is not an
 * object.
 */
typedef void (*sl_api_json_body_cb)(sl_app_t *app, sl_http_req_t *req, json_t *body, void *arg);
void sl_api_read_json(sl_app_t *app, sl_http_req_t *req, sl_api_json_body_cb cb, void *arg);
/** sl_api_read_json; when cb is not called, release(arg) is (release may be NULL). */
void sl_api_read_json_owned(sl_app_t *app, sl_http_req_t *req, sl_api_json_body_cb cb, void *arg,
                            sl_api_release_fn release);

/**
 * The route callback's params are borrowed for the call only: copy the values
 * you keep. Route callbacks are registered with arg = the sl_app_t.
 */

/**
 * Matches the request's method and path against app->router again and fills
 * *out with the route's params (e.g. {id}). Lets an sl_api_auth callback
 * recover the path params without allocating before authentication (which may
 * answer 401 without calling back). 0, or SL_ENOTFOUND if no route matches.
 */
int sl_api_route_params(sl_app_t *app, sl_http_req_t *req, sl_http_params_t *out);

/* ---- request parameters ---- */

/**
 * The {id} of the route req matched, into out: 0 if it is a UUID, -1
 * otherwise (a malformed id is answered like a missing object: 404).
 */
int sl_api_route_uuid(sl_app_t *app, sl_http_req_t *req, char out[37]);

/**
 * A query parameter, percent-decoded into buf: its length, -1 when absent,
 * -2 when present but longer than buf holds (so "too long" is never "absent").
 */
int sl_api_query_param(sl_http_req_t *req, const char *name, char *buf, size_t buflen);

/** Parses a decimal of digits only (no sign, no spaces) in [min, max]: 0 or -1. */
int sl_api_parse_long(const char *s, long min, long max, long *out);

/** Counts the UTF-8 code points of s (borrowed; NUL-terminated, already validated UTF-8). */
size_t sl_api_utf8_chars(const char *s);

/* ---- pipelines ---- */

/**
 * True if `mime` (parameters after ';' ignored) matches `pattern`: an exact type
 * ("text/plain"), a whole top-level type ("image/" followed by a star) or any
 * type (star slash star). Case-insensitive.
 */
int sl_api_mime_match(const char *pattern, const char *mime);

/** Fills app->pipelines from config (or the shipped defaults). */
int sl_api_load_pipelines(sl_app_t *app);

/* ---- the engine (docs/internals/engine.md) ---- */

/**
 * Asks the engine to claim now (after runs were queued): sl_sched_kick in an
 * inline process, a "kick" message to the engine process otherwise. Never
 * blocks; a lost message costs at most the engine's poll interval.
 */
void sl_api_engine_kick(sl_app_t *app);

/** Stops this instance's actors of a file (borrowed; its rows were deleted). */
void sl_api_engine_cancel_file(sl_app_t *app, const char *file_id);

/**
 * Copies each pipeline's flow description (steps, version, graph) from the
 * engine's last snapshot into app->pipelines[i].flow (an HTTP process loads
 * no flows). No-op inline.
 */
void sl_api_engine_refresh_steps(sl_app_t *app);

/**
 * The engine's state for /readyz: "ok", "down" (no engine process, or it has
 * not loaded its flows yet) or "stalled" (no heartbeat for 2 s: a step is
 * holding its loop). Returns a static string.
 */
const char *sl_api_engine_state(const sl_app_t *app);

/* ---- route registration: one per route file ---- */
void sl_api_register_tenants(sl_app_t *app);   /* POST /v1/admin/tenants */
void sl_api_register_datasets(sl_app_t *app);  /* /v1/datasets, /v1/datasets/{id} */
void sl_api_register_upload(sl_app_t *app);    /* POST /v1/datasets/{id}/files */
void sl_api_register_files(sl_app_t *app);     /* file get/list/delete/process/events */
void sl_api_register_records(sl_app_t *app);   /* GET /v1/datasets/{id}/records */
void sl_api_register_artifacts(sl_app_t *app); /* artifacts, signed URLs, blobs */
void sl_api_register_ops(sl_app_t *app);       /* healthz, readyz, metrics, UI */
void sl_api_register_pipelines(sl_app_t *app); /* GET /v1/pipelines, /v1/pipelines/{name} */
void sl_api_register_events(sl_app_t *app);    /* GET /v1/datasets/{id}/events (SSE) */
void sl_api_register_auth(sl_app_t *app);      /* POST /v1/auth/token, /v1/auth/refresh */
void sl_api_register_keys(sl_app_t *app);      /* GET/POST /v1/keys, DELETE /v1/keys/{id} */
void sl_api_register_retention(sl_app_t *app); /* DELETE /v1/datasets/{id}, POST /v1/admin/cleanup */
/* issue 13 (openapi): GET /v1/openapi.json, docs/openapi.json embedded (no auth) */
void sl_api_register_openapi(sl_app_t *app);

/* ---- idempotency (shared by upload and process) ---- */

/**
 * Idempotency-Key handling. sl_api_idem_begin() reserves (tenant, key): the
 * callback gets SL_IDEM_NEW (go on; finish with sl_api_idem_store_stmt in the
 * same batch as the work), SL_IDEM_REPLAYED (the stored first response was sent
 * already; do nothing more), or the request was answered with 400
 * "invalid_idempotency_key" (empty or longer than 255 bytes), 409
 * "idempotency_key_reused" / "idempotency_in_progress", 500 or 503 and the
 * callback is not called: then release(arg) is, exactly once (maybe inside the
 * call). There is no variant without `release`: a caller whose arg owns
 * nothing passes NULL explicitly, so no caller can forget that a refusal is an
 * end of the request (an upload that forgot it kept its slot forever). A
 * request without the header gets SL_IDEM_NONE at once (on a later turn).
 */
enum { SL_IDEM_NONE = 0, SL_IDEM_NEW = 1, SL_IDEM_REPLAYED = 2 };
typedef void (*sl_api_idem_cb)(sl_app_t *app, sl_http_req_t *req, int outcome, void *arg);
void sl_api_idem_begin(sl_app_t *app, sl_http_req_t *req, const char *tenant_id,
                       const char *endpoint, sl_api_idem_cb cb, void *arg,
                       sl_api_release_fn release);
/** Adds to batch b the statement recording the response (status, body) for the key. */
int sl_api_idem_store_stmt(sl_pg_batch_t *b, const char *tenant_id, const char *key, int status,
                           const char *body);
/** Releases a reservation after a failed request (fire and forget). */
void sl_api_idem_release(sl_app_t *app, const char *tenant_id, const char *key);

/* ---- signed URLs ---- */

/** Signs "/v1/blobs/{artifact_id}?expires=...&sig=..." valid for ttl_s; into out. */
int sl_api_sign_blob_url(const sl_app_t *app, const char *artifact_id, long ttl_s, char *out,
                         size_t outlen, char *expires_at_rfc3339, size_t exlen);
/** 1 if sig is valid for (artifact_id, expires) and expires is in the future. */
int sl_api_check_blob_sig(const sl_app_t *app, const char *artifact_id, const char *expires,
                          const char *sig);

/* ---- blob downloads (api/artifacts.c) ---- */

/**
 * Answers 200 with the object at storage_key (borrowed; copied) as the body,
 * Content-Type `mime` (borrowed; copied) and Content-Length `size`, streamed
 * from storage in 256 KiB reads, each started only when the previous chunk
 * has drained to the client, so memory stays bounded. Stops early if the
 * client goes away. Finishes the request (404/503 if the object cannot be
 * read before the headers are sent).
 */
void sl_api_stream_blob(sl_app_t *app, sl_http_req_t *req, const char *storage_key,
                        const char *mime, uint64_t size);

#endif
