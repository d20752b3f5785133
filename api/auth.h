/*
 * auth.h — access tokens, refresh families and scopes (api/auth.c,
 * docs/auth.md), as the rest of the API sees them.
 *
 * An HTTP process owns one sl_auth_t (app->auth): the JWT keyring (from
 * `auth.token_keys`, or the one key kept in the settings table), the token
 * lifetimes, and the per-key "last used" throttle. sl_api_auth (common.c)
 * asks it whether a credential is a JWT and verifies it locally; the family
 * and key behind a token are then checked through the auth cache (api/cache.h)
 * under the ids sl_auth_cache_id makes, so a revocation published on
 * sluice:auth reaches every instance at once.
 */
#ifndef SL_API_AUTH_H
#define SL_API_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/http.h"

/* Scopes (API.md "Lifecycle and access"): bits; a key without scopes has all. */
#define SL_SCOPE_READ 1u
#define SL_SCOPE_UPLOAD 2u
#define SL_SCOPE_ADMIN 4u /* "admin-of-tenant": the tenant's keys */
#define SL_SCOPE_ALL 7u

/** The settings row holding the generated signing key when the config lists none. */
#define SL_AUTH_SETTINGS_KEY "token_signing_key"
/** The kid of that generated key. */
#define SL_AUTH_STORED_KID "settings"

typedef struct sl_auth_s sl_auth_t;

/**
 * Creates the auth state from cfg (borrowed for the call): the keyring from
 * cfg->token_keys (may be empty until sl_auth_use_stored_key). Owned in *out.
 * 0, SL_EINVAL (a key the keyring refuses) or SL_ENOMEM.
 */
int sl_auth_new(const sl_config_t *cfg, sl_auth_t **out);

/** Frees it, wiping the secrets (takes a; NULL is a no-op). */
void sl_auth_free(sl_auth_t *a);

/**
 * Adds the key stored in the settings table (secret borrowed, copied) as the
 * only key, kid SL_AUTH_STORED_KID — only when the config lists no
 * token_keys; otherwise does nothing. 0 or the keyring's error.
 */
int sl_auth_use_stored_key(sl_auth_t *a, const char *secret);

/** 1 if the config lists token_keys (then no key is kept in settings). */
int sl_auth_configured_keys(const sl_auth_t *a);

/** An access token's claims, after verification. */
typedef struct sl_auth_token_s {
    char tenant_id[37]; /* "sub" */
    char key_id[37];    /* "key": the API key it was made from */
    char family_id[37]; /* "fam": its refresh family */
    unsigned scopes;    /* "scope", as SL_SCOPE_* bits */
    int64_t exp;
} sl_auth_token_t;

/** 1 if the credential (cred, len) has the shape of a JWT (never an API key's). */
int sl_auth_is_jwt(const char *cred, size_t len);

/**
 * Verifies an access token (borrowed) now: 0 and *out; SL_ETIMEDOUT when it
 * has expired (answer 401 token_expired); SL_EINVAL otherwise (answer 401).
 */
int sl_auth_verify(const sl_auth_t *a, const char *tok, size_t len, sl_auth_token_t *out);

/**
 * Signs an access token for (tenant_id, key_id, family_id, scopes) (all
 * borrowed) into out: its length, or an SL_E* code. *expires_in gets the
 * lifetime in seconds.
 */
int sl_auth_sign(const sl_auth_t *a, const char *tenant_id, const char *key_id,
                 const char *family_id, unsigned scopes, char *out, size_t outlen,
                 int *expires_in);

/** The refresh tokens' lifetime in seconds (auth.refresh_ttl_s). */
int sl_auth_refresh_ttl(const sl_auth_t *a);

/**
 * The auth cache id (64 hex + NUL) under which the liveness of a family
 * ("family") or of a key seen through its tokens ("key") is cached: sha256 of
 * "sluice:<kind>:<id>". Publishing it on sluice:auth revokes it everywhere.
 */
void sl_auth_cache_id(const char *kind, const char *id, char out[65]);

/**
 * The scope a route needs: from its name (the router's, e.g. "keys_list")
 * and method (borrowed; either may be NULL). GET and HEAD read, other methods
 * upload, /v1/keys routes admin-of-tenant.
 */
unsigned sl_auth_route_scope(const char *route, const char *method);

/**
 * 1 if key_id (borrowed) was not marked used by this process in the last
 * minute: then it is marked now, and the caller writes last_used_at.
 */
int sl_auth_touch_due(sl_auth_t *a, const char *key_id);

/**
 * The request limiter's bucket for a credential (borrowed): "key:<sha256>"
 * for an API key (or anything that does not verify), "tok:<api key id>" for a
 * valid access token, so every token of one key shares one budget. Into out.
 */
void sl_auth_rate_id(const sl_auth_t *a, const char *cred, size_t len, char *out, size_t outlen);

/** Scope names <-> bits. A space- or comma-free name; 0 for an unknown one. */
unsigned sl_auth_scope_bit(const char *name);

#endif
