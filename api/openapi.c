/*
 * openapi.c — GET /v1/openapi.json: the OpenAPI 3.1 document of every route.
 *
 * The document is docs/openapi.json, written by hand and embedded in the
 * binary at build time (api/embed_openapi.cmake), so a server always serves
 * the description of the routes it was built with, from any directory. No
 * API key is needed: the document describes the API, it holds no tenant's
 * data. It carries an ETag (the same digest as every other ETag of the API),
 * and If-None-Match gets 304.
 *
 * How the document is kept in step with the router (docs/api.md): `sluice
 * routes` prints every route main.c registers, and
 * tests/blackbox/test_openapi.py checks that each one is in the document and
 * that the document passes a real OpenAPI validator.
 */
#include "api/api.h"

#include <stddef.h>

/* The embedded docs/openapi.json (NUL-terminated) and its length without the NUL. */
extern const char sl_api__openapi_doc[];
extern const size_t sl_api__openapi_doc_len;

/* Computed once, at registration: the document never changes while we run. */
static char g_etag[SL_CACHE_ETAG_LEN];

static void openapi_get(sl_http_req_t *req, const sl_http_params_t *params, void *arg)
{
    (void)params;
    (void)arg;
    sl_api_json_etag(req, sl_api__openapi_doc, sl_api__openapi_doc_len, g_etag);
}

void sl_api_register_openapi(sl_app_t *app)
{
    sl_cache_etag(sl_api__openapi_doc, sl_api__openapi_doc_len, g_etag);
    sl_http_router_add(app->router, "GET", "/v1/openapi.json", "openapi", openapi_get, app);
}
