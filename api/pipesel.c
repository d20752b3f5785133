/*
 * pipesel.c — which pipelines take a file, and why none does (see pipesel.h).
 *
 * Pure over app->pipelines: no I/O. The sets are bit sets over
 * app->pipelines, so the upload's per-file loop costs a few word operations
 * per part however many files a request carries.
 */
#include "api/pipesel.h"

#include <stdio.h>
#include <string.h>

#include "core/err.h"

_Static_assert(SL_CONFIG_MAX_PIPELINES <= 32, "a sl_pipeset_t holds one bit per pipeline");

/* issue 14: a deleted pipeline keeps its slot (SL_PIPE_GONE) but is in no set. */
static int live(const sl_app_t *app, int i)
{
    return app->pipelines[i].origin != SL_PIPE_GONE;
}

sl_pipeset_t sl_pipesel_all(const sl_app_t *app)
{
    sl_pipeset_t set = 0;
    for (int i = 0; i < app->npipelines && i < SL_CONFIG_MAX_PIPELINES; i++)
        if (live(app, i))
            set |= (sl_pipeset_t)1 << i;
    return set;
}

sl_pipeset_t sl_pipesel_matching(const sl_app_t *app, const char *mime)
{
    sl_pipeset_t set = 0;
    for (int i = 0; i < app->npipelines && i < SL_CONFIG_MAX_PIPELINES; i++) {
        const sl_pipeline_def_t *pl = &app->pipelines[i];
        for (int m = 0; m < SL_CONFIG_MAX_MATCH && pl->match[m] != NULL; m++) {
            if (sl_api_mime_match(pl->match[m], mime)) {
                set |= (sl_pipeset_t)1 << i;
                break;
            }
        }
    }
    return set;
}

int sl_pipesel_index(const sl_app_t *app, const char *name)
{
    for (int i = 0; i < app->npipelines && i < SL_CONFIG_MAX_PIPELINES; i++)
        if (live(app, i) && strcmp(app->pipelines[i].name, name) == 0)
            return i;
    return -1;
}

sl_pipeset_t sl_pipesel_allowed(const sl_app_t *app, const char *names_json)
{
    sl_pipeset_t set = 0;
    size_t k;
    json_t *v;
    if (names_json == NULL)
        return sl_pipesel_all(app);
    json_t *list = json_loads(names_json, JSON_DECODE_ANY, NULL);
    if (json_is_null(list)) {
        json_decref(list);
        return sl_pipesel_all(app);
    }
    json_array_foreach(list, k, v)
    {
        int i = json_is_string(v) ? sl_pipesel_index(app, json_string_value(v)) : -1;
        if (i >= 0)
            set |= (sl_pipeset_t)1 << i;
    }
    json_decref(list);
    return set;
}

/* Appends the names of `set`, comma-separated, to out at *off (cut at outlen). */
static void append_names(const sl_app_t *app, sl_pipeset_t set, char *out, size_t outlen,
                         size_t *off)
{
    const char *sep = "";
    for (int i = 0; i < app->npipelines && i < SL_CONFIG_MAX_PIPELINES; i++) {
        if (!(set & ((sl_pipeset_t)1 << i)) || !live(app, i) || *off >= outlen)
            continue;
        int n = snprintf(out + *off, outlen - *off, "%s%s", sep, app->pipelines[i].name);
        *off = n < 0 ? outlen : *off + (size_t)n;
        sep = ", ";
    }
}

void sl_pipesel_reason(const sl_app_t *app, const char *mime, sl_pipeset_t allowed, char *out,
                       size_t outlen)
{
    if (outlen == 0)
        return;
    if (sl_pipesel_matching(app, mime) == 0 || allowed == sl_pipesel_all(app)) {
        snprintf(out, outlen, "no pipeline matches %s", mime);
        return;
    }
    if (allowed == 0) {
        snprintf(out, outlen, "the dataset allows no configured pipeline");
        return;
    }
    size_t off = 0;
    int n = snprintf(out, outlen, "no pipeline the dataset allows (");
    off = n < 0 ? outlen : (size_t)n;
    append_names(app, allowed, out, outlen, &off);
    if (off < outlen)
        snprintf(out + off, outlen - off, ") matches %s", mime);
}

int sl_pipesel_process_param(sl_http_req_t *req, int *out)
{
    char buf[8];
    int n = sl_api_query_param(req, "process", buf, sizeof buf);
    *out = -1;
    if (n == -1)
        return 0;
    if (n >= 0 && (strcmp(buf, "true") == 0 || strcmp(buf, "1") == 0))
        *out = 1;
    else if (n >= 0 && (strcmp(buf, "false") == 0 || strcmp(buf, "0") == 0))
        *out = 0;
    else
        return SL_EINVAL;
    return 0;
}

static int verr(sl_api_verr_t *e, int status, const char *code, const char *msg)
{
    e->status = status;
    e->code = code;
    snprintf(e->msg, sizeof e->msg, "%s", msg);
    return status == 500 ? SL_ENOMEM : SL_EINVAL;
}

int sl_pipesel_dataset_body(const sl_app_t *app, const json_t *body, int *auto_process,
                            char **pipelines_json, sl_api_verr_t *e)
{
    const json_t *ap = json_object_get(body, "auto_process");
    const json_t *list = json_object_get(body, "pipelines");
    json_t *names = NULL;
    size_t k;
    json_t *v;

    *auto_process = 1;
    *pipelines_json = NULL;
    if (ap != NULL && !json_is_null(ap)) {
        if (!json_is_boolean(ap))
            return verr(e, 400, "invalid_request", "auto_process must be true or false");
        *auto_process = json_is_true(ap);
    }
    if (list == NULL || json_is_null(list))
        return 0;
    if (!json_is_array(list) || json_array_size(list) == 0)
        return verr(e, 400, "invalid_request",
                    "pipelines must be null or a non-empty array of pipeline names");
    if ((names = json_array()) == NULL)
        return verr(e, 500, "internal_error", "out of memory");
    sl_pipeset_t seen = 0;
    json_array_foreach(list, k, v)
    {
        if (!json_is_string(v)) {
            json_decref(names);
            return verr(e, 400, "invalid_request",
                        "pipelines must be null or a non-empty array of pipeline names");
        }
        int i = sl_pipesel_index(app, json_string_value(v));
        if (i < 0) {
            /* The name is echoed only whole (a cut one could end mid-UTF-8). */
            char msg[SL_API_PIPELINE_NAME_MAX + 64];
            if (json_string_length(v) < SL_API_PIPELINE_NAME_MAX)
                snprintf(msg, sizeof msg, "pipelines: no pipeline named \"%s\"",
                         json_string_value(v));
            else
                snprintf(msg, sizeof msg, "pipelines: no pipeline of that name");
            json_decref(names);
            return verr(e, 400, "unknown_pipeline", msg);
        }
        if (seen & ((sl_pipeset_t)1 << i))
            continue;
        seen |= (sl_pipeset_t)1 << i;
        if (json_array_append_new(names, json_string(app->pipelines[i].name)) != 0) {
            json_decref(names);
            return verr(e, 500, "internal_error", "out of memory");
        }
    }
    *pipelines_json = json_dumps(names, JSON_COMPACT);
    json_decref(names);
    if (*pipelines_json == NULL)
        return verr(e, 500, "internal_error", "out of memory");
    return 0;
}
