/*
 * pipesel.h — which pipelines take a file, and why none does.
 *
 * Upload (api/upload.c) and POST /v1/files/{id}/process (api/files.c) start
 * a run for every pipeline that matches the file's sniffed MIME type and that
 * its dataset allows (datasets.pipelines, NULL: all; migration 010). A set
 * of pipelines is a bit set over app->pipelines (bit i: app->pipelines[i]);
 * SL_CONFIG_MAX_PIPELINES is at most 32. A file that no pipeline takes gets
 * the reason sl_pipesel_reason writes (files.reason, shown in its document).
 * The dataset's and the upload's switches (auto_process, ?process=) are
 * parsed here too. docs/lifecycle.md "Upload without processing" has the
 * decisions.
 */
#ifndef SL_API_PIPESEL_H
#define SL_API_PIPESEL_H

#include <jansson.h>
#include <stdint.h>

#include "api/api.h"
#include "api/validate.h"

/** Room for any reason sl_pipesel_reason writes (longer ones are cut). */
#define SL_PIPESEL_REASON_MAX 512

/** A set of app->pipelines: bit i is app->pipelines[i]. */
typedef uint32_t sl_pipeset_t;

/** Every pipeline of app. */
sl_pipeset_t sl_pipesel_all(const sl_app_t *app);

/** The pipelines of app whose match fits `mime` (borrowed; parameters ignored). */
sl_pipeset_t sl_pipesel_matching(const sl_app_t *app, const char *mime);

/**
 * The pipelines a dataset allows: those named in `names_json` (borrowed: a
 * JSON array of strings, as Postgres's to_json(datasets.pipelines) gives it),
 * or every pipeline when it is NULL or "null". A name no pipeline has any
 * more (the config changed) is ignored; text that is not such an array allows
 * none.
 */
sl_pipeset_t sl_pipesel_allowed(const sl_app_t *app, const char *names_json);

/** The index of the pipeline called `name` (borrowed) in app->pipelines, or -1. */
int sl_pipesel_index(const sl_app_t *app, const char *name);

/**
 * Why a file of `mime` (borrowed) gets no run when its dataset allows
 * `allowed`: "no pipeline matches application/zip", or "no pipeline the
 * dataset allows (file_view) matches text/plain", into out (outlen bytes,
 * NUL-terminated, cut if needed).
 */
void sl_pipesel_reason(const sl_app_t *app, const char *mime, sl_pipeset_t allowed, char *out,
                       size_t outlen);

/**
 * The upload's ?process= query parameter: *out = 1 for "true" or "1", 0 for
 * "false" or "0", -1 when it is absent. 0, or SL_EINVAL for any other value
 * (the caller answers 400).
 */
int sl_pipesel_process_param(sl_http_req_t *req, int *out);

/**
 * POST /v1/datasets's "auto_process" (true | false | null; absent or null:
 * true) and "pipelines" (null, or a non-empty array of the names of app's
 * pipelines; absent or null: every pipeline). `body` is borrowed.
 * *auto_process is 1 or 0; *pipelines_json is returned owned (a compact JSON
 * array of the distinct names, in the order given) or NULL for every
 * pipeline. Returns 0, SL_EINVAL (400 "invalid_request" for a wrong type,
 * "unknown_pipeline" for a name no pipeline has) or SL_ENOMEM (500), with *e
 * filled on error.
 */
int sl_pipesel_dataset_body(const sl_app_t *app, const json_t *body, int *auto_process,
                            char **pipelines_json, sl_api_verr_t *e);

#endif
