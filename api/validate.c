/*
 * validate.c — pure request validation shared by the API handlers and the
 * fuzz targets (see validate.h). Messages are the ones API.md documents.
 */
#include "api/validate.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "core/err.h"
#include "core/jschema.h"

static int verr(sl_api_verr_t *e, int status, const char *code, const char *msg)
{
    e->status = status;
    e->code = code;
    snprintf(e->msg, sizeof e->msg, "%s", msg);
    return status == 500 ? SL_ENOMEM : SL_EINVAL;
}

/* Code points in a UTF-8 string (jansson has already checked it is UTF-8). */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s != '\0'; s++)
        if (((unsigned char)*s & 0xC0) != 0x80)
            n++;
    return n;
}

int sl_api_json_object(const char *body, size_t len, json_t **out, sl_api_verr_t *e)
{
    json_error_t jerr;
    *out = NULL;
    json_t *v = json_loadb(body, len, 0, &jerr);
    if (v == NULL) {
        char msg[256];
        snprintf(msg, sizeof msg, "invalid JSON: %s", jerr.text);
        return verr(e, 400, "invalid_json", msg);
    }
    if (!json_is_object(v)) {
        json_decref(v);
        return verr(e, 400, "invalid_json", "body must be a JSON object");
    }
    *out = v;
    return 0;
}

static int name_ok(const json_t *name)
{
    return json_is_string(name) && json_string_length(name) > 0 &&
           utf8_chars(json_string_value(name)) <= SL_API_NAME_MAX;
}

/* 1 if s is a JSON object with "type": "object" and an object "properties". */
static int schema_shape_ok(const json_t *s)
{
    const json_t *type = json_object_get(s, "type");
    return json_is_object(s) && json_is_string(type) &&
           strcmp(json_string_value(type), "object") == 0 &&
           json_is_object(json_object_get(s, "properties"));
}

int sl_api_dataset_body(const json_t *body, const char **name, char **schema_text, sl_api_verr_t *e)
{
    const json_t *jname = json_object_get(body, "name");
    json_t *schema = json_object_get(body, "record_schema");
    char jerr[320];
    int rc;

    *name = NULL;
    *schema_text = NULL;
    if (!name_ok(jname))
        return verr(e, 400, "invalid_request",
                    "name must be a non-empty string of at most 200 characters");
    if (schema != NULL && !json_is_null(schema)) {
        if (!schema_shape_ok(schema))
            return verr(e, 400, "invalid_schema",
                        "record_schema must be a JSON object with \"type\": \"object\" "
                        "and an object \"properties\"");
        if ((rc = sl_jschema_check(schema, jerr, sizeof jerr)) == SL_ENOMEM)
            return verr(e, 500, "internal_error", "out of memory");
        if (rc != 0) {
            char msg[sizeof jerr + 32];
            snprintf(msg, sizeof msg, "record_schema: %s", jerr);
            return verr(e, 400, "invalid_schema", msg);
        }
        *schema_text = json_dumps(schema, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (*schema_text == NULL)
            return verr(e, 500, "internal_error", "out of memory");
    }
    *name = json_string_value(jname);
    return 0;
}

int sl_api_tenant_body(const json_t *body, const char **name, sl_api_verr_t *e)
{
    const json_t *jname = json_object_get(body, "name");
    *name = NULL;
    if (!name_ok(jname))
        return verr(e, 400, "invalid_request",
                    "name must be a non-empty string of at most 200 characters");
    *name = json_string_value(jname);
    return 0;
}

static int listed(char names[][SL_API_PIPELINE_NAME_MAX], int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(names[i], name) == 0)
            return 1;
    return 0;
}

int sl_api_process_body(const char *body, size_t len, const char *const *known, int nknown,
                        char names[][SL_API_PIPELINE_NAME_MAX], int *n, int *explicit_list,
                        sl_api_verr_t *e)
{
    size_t i = 0;
    json_error_t jerr;
    json_t *root = NULL;
    int rc = SL_EINVAL;

    *n = 0;
    *explicit_list = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n'))
        i++;
    if (i == len)
        return 0; /* empty: every matching pipeline */
    root = json_loadb(body, len, 0, &jerr);
    if (!root || !json_is_object(root)) {
        verr(e, 400, "invalid_json", "the body is not a JSON object");
        goto out;
    }
    json_t *list = json_object_get(root, "pipelines");
    if (!list || json_is_null(list)) {
        rc = 0;
        goto out;
    }
    if (!json_is_array(list) || json_array_size(list) == 0) {
        verr(e, 400, "invalid_request", "pipelines must be a non-empty array of pipeline names");
        goto out;
    }
    size_t idx;
    json_t *v;
    json_array_foreach(list, idx, v)
    {
        const char *name = json_string_value(v);
        int k = 0;
        if (!name) {
            verr(e, 400, "invalid_request",
                 "pipelines must be a non-empty array of pipeline names");
            goto out;
        }
        while (k < nknown && strcmp(known[k], name) != 0)
            k++;
        if (k == nknown) {
            verr(e, 400, "unknown_pipeline", "no pipeline of that name");
            goto out;
        }
        if (!listed(names, *n, name) && *n < SL_CONFIG_MAX_PIPELINES)
            snprintf(names[(*n)++], SL_API_PIPELINE_NAME_MAX, "%s", name);
    }
    *explicit_list = 1;
    rc = 0;
out:
    json_decref(root);
    if (rc != 0)
        *n = 0;
    return rc;
}

/* ---- signed blob URLs ---- */

int sl_api_blob_sig(const char *key, size_t klen, const char *artifact_id, long long expires,
                    char out[65])
{
    char msg[256];
    if (klen == 0)
        return SL_EINVAL;
    int n = snprintf(msg, sizeof msg, "%s\n%lld", artifact_id, expires);
    if (n < 0 || (size_t)n >= sizeof msg)
        return SL_ETOOBIG;
    sl_hmac_sha256_hex(key, klen, msg, (size_t)n, out);
    return 0;
}

int sl_api_blob_sig_verify(const char *key, size_t klen, const char *artifact_id,
                           const char *expires, const char *sig, time_t now)
{
    char want[65];
    char *end = NULL;

    if (artifact_id == NULL || expires == NULL || sig == NULL ||
        !isdigit((unsigned char)expires[0]))
        return 0;
    long long e = strtoll(expires, &end, 10);
    if (end == NULL || *end != '\0' || e <= (long long)now)
        return 0;
    if (strlen(sig) != 64 || sl_api_blob_sig(key, klen, artifact_id, e, want) != 0)
        return 0;
    return sl_consttime_eq(want, sig, 64);
}
