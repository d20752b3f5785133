/*
 * validate.h — the pure halves of some API handlers: request body → struct
 * validation and the signed blob URL check. No I/O, no clock, no sl_app_t:
 * the handlers in api/ call these and answer with the code and message
 * they give; the fuzz targets (tests/fuzz/fuzz_bodies.c, fuzz_blobsig.c) call
 * them on arbitrary bytes.
 */
#ifndef SL_API_VALIDATE_H
#define SL_API_VALIDATE_H

#include <jansson.h>
#include <stddef.h>
#include <time.h>

#define SL_API_NAME_MAX 200 /* characters in a dataset or tenant name */
#include "core/config.h"    /* SL_CONFIG_MAX_PIPELINES: names kept from a process body */
#define SL_API_PIPELINE_NAME_MAX 64

/* Why a body was refused: HTTP status (400, or 500 for SL_ENOMEM), a stable
 * code (static string) and a message for the client. */
typedef struct sl_api_verr_s {
    int status;
    const char *code;
    char msg[384];
} sl_api_verr_t;

/**
 * Parses `body` (len bytes, borrowed) as a JSON object, as every JSON route
 * does. Returns owned in *out, or SL_EINVAL with *e filled (invalid_json).
 */
int sl_api_json_object(const char *body, size_t len, json_t **out, sl_api_verr_t *e);

/**
 * POST /v1/datasets: {"name": non-empty string of at most SL_API_NAME_MAX
 * characters, "record_schema": optional object the schema translator accepts}.
 * `body` is borrowed; *name borrows from it; *schema_text is returned owned
 * (NULL when no schema was given). Returns 0, SL_EINVAL (400) or SL_ENOMEM
 * (500), with *e filled on error.
 */
int sl_api_dataset_body(const json_t *body, const char **name, char **schema_text,
                        sl_api_verr_t *e);

/** POST /v1/admin/tenants: {"name": as for datasets}. *name borrows from body. */
int sl_api_tenant_body(const json_t *body, const char **name, sl_api_verr_t *e);

/**
 * POST /v1/files/{id}/process: empty (only blanks), or {"pipelines": null |
 * non-empty array of known names}. known: borrowed, nknown names. Fills
 * names[0..*n-1] (deduplicated, first SL_CONFIG_MAX_PIPELINES kept); *explicit_list
 * is 1 when the body named pipelines. Returns 0 or SL_EINVAL with *e filled.
 */
int sl_api_process_body(const char *body, size_t len, const char *const *known, int nknown,
                        char names[][SL_API_PIPELINE_NAME_MAX], int *n, int *explicit_list,
                        sl_api_verr_t *e);

/**
 * The signed blob URL check: HMAC-SHA256(key, "<id>\n<expires>") as 64 hex
 * chars in `sig`, and `expires` decimal seconds after `now`. All borrowed.
 * Returns 1 when valid, 0 otherwise (also for a malformed argument).
 */
int sl_api_blob_sig_verify(const char *key, size_t klen, const char *artifact_id,
                           const char *expires, const char *sig, time_t now);

/** The signature itself into out[65]; 0, SL_EINVAL (no key) or SL_ETOOBIG. */
int sl_api_blob_sig(const char *key, size_t klen, const char *artifact_id, long long expires,
                    char out[65]);

#endif
