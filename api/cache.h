/*
 * cache.h — the read caches of an HTTP process: API key -> tenant, and
 * (tenant, file id) -> the file's JSON document with its ETag. Both are kept
 * exact across instances through Redis pub/sub; docs/internals/caching.md has
 * the reasoning (why a read right after a write on another instance never
 * sees the old document).
 *
 * In short: the cache owns a subscriber connection (PSUBSCRIBE
 * SL_CACHE_PATTERN) that sees every run/file event every instance publishes
 * (the "sluice:ds:<dataset>" channels of actors/run_event.h) and the cache's own
 * channels, and forgets what each message makes stale. A writer forgets
 * locally and publishes, and answers its client only once Redis replied to
 * the PUBLISH (sl_cache_publish_file / sl_cache_publish_revoke). A reader
 * first reads whatever is already on its subscriber socket (sl_cache_sync,
 * called by the lookups), so a message Redis sent before the reader's request
 * arrived is applied before the answer. The cache answers only while its
 * subscriber is subscribed, and drops everything when it was down meanwhile;
 * entries also expire (the TTLs below) as a safety net for writes that publish
 * nothing (a key revoked by SQL by hand).
 *
 * Fills are guarded: take a ticket before the database query, pass it to the
 * put; a put whose ticket is older than the last invalidation (or than a
 * subscriber reconnect) is dropped, so a slow query can never write back a
 * document that a message already declared stale.
 *
 * Negative answers (unknown key, no such file) are never cached. Every
 * function accepts c == NULL (no cache: lookups miss, puts do nothing), so
 * the engine process and tests run the same route code. Loop thread only.
 */
#ifndef SL_API_CACHE_H
#define SL_API_CACHE_H

#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>

#include "core/redis.h"

/** A cached API key is trusted this long without a revocation message (safety net). */
#define SL_CACHE_AUTH_TTL_S 60
/** A cached file document is served this long at most without an event (safety net). */
#define SL_CACHE_FILE_TTL_S 60
/** Entries: sets x ways (each set is LRU); bodies above SL_CACHE_FILE_MAX_BODY are not kept. */
#define SL_CACHE_AUTH_SETS 256
#define SL_CACHE_FILE_SETS 1024
#define SL_CACHE_WAYS 4
#define SL_CACHE_FILE_MAX_BODY (64 * 1024)
/** All cached bodies together stay under this. */
#define SL_CACHE_FILE_MAX_BYTES (32 * 1024 * 1024)

/*
 * Revocations: the message is the key's SHA-256 (64 hex), or "*" for every key.
 * On both channels the message may also come inside core/pubsub.h's envelope
 * (sent with sl_pubsub_publish).
 */
#define SL_CACHE_AUTH_CHANNEL "sluice:auth"
/** File documents: the message is the file id, or "*" for every file. */
#define SL_CACHE_FILE_CHANNEL "sluice:cache"
/** What the cache's subscriber listens to: the above and the dataset event channels. */
#define SL_CACHE_PATTERN "sluice:*"

/** An ETag: a double-quoted 32-hex-digit digest of the body, NUL-terminated. */
#define SL_CACHE_ETAG_LEN 35

typedef struct sl_cache_s sl_cache_t;

/**
 * Creates the cache. `base` borrowed; `publisher` borrowed (may be NULL: the
 * publish calls then only forget locally) and must outlive the cache;
 * `redis_url` copied (NULL: no subscriber, so the cache never answers).
 * Returns owned in *out, or SL_EINVAL / SL_ENOMEM.
 */
int sl_cache_new(struct event_base *base, sl_redis_t *publisher, const char *redis_url,
                 sl_cache_t **out);

/** Frees everything (takes c; NULL is a no-op). Publishes in flight still call back. */
void sl_cache_free(sl_cache_t *c);

/** 1 while the cache may answer (its subscriber is subscribed). */
int sl_cache_active(sl_cache_t *c);

/** Reads, without waiting, the messages already on the subscriber socket, and applies them. */
void sl_cache_sync(sl_cache_t *c);

/* ---- API keys ---- */

/**
 * What the auth cache keeps per credential id (an API key's SHA-256 hex, or
 * an access token's family or key id as api/auth.h's sl_auth_cache_id makes
 * it): the tenant, the API key's id and its scopes (opaque bits to the cache).
 */
typedef struct sl_cache_cred_s {
    char tenant_id[64];
    char key_id[37];
    unsigned scopes;
} sl_cache_cred_t;

/** Looks a credential id (borrowed, 64 hex) up, after sl_cache_sync: 1 and *out, or 0. */
int sl_cache_cred_get(sl_cache_t *c, const char *id, sl_cache_cred_t *out);

/** Remembers id -> *cred (both borrowed, copied) unless `ticket` is stale. */
void sl_cache_cred_put(sl_cache_t *c, const char *id, const sl_cache_cred_t *cred, uint64_t ticket);

/** The fill ticket for an auth query: take it before sending the query. */
uint64_t sl_cache_auth_ticket(sl_cache_t *c);

/*
 * Revocations, for what outlives one request (an SSE stream): a credential id
 * is reduced to its tag, the first 64 bits of its 64 hex digits (never 0).
 * Each revocation this process applies (a message on SL_CACHE_AUTH_CHANNEL, or
 * its own sl_cache_publish_revoke) calls the listener with its tag, or with 0
 * for "*" (every credential). One listener per cache (a later call replaces
 * it; fn NULL removes it); `arg` borrowed. c NULL: nothing is ever called.
 */
typedef void (*sl_cache_revoke_fn)(uint64_t tag, void *arg);
void sl_cache_on_revoke(sl_cache_t *c, sl_cache_revoke_fn fn, void *arg);
/** The tag of a credential id (borrowed, 64 hex; anything else: 0). */
uint64_t sl_cache_revoke_tag(const char *id);

/**
 * Looks the key's SHA-256 hex (borrowed) up, after sl_cache_sync. 1 and the
 * tenant id in tenant_id (NUL-terminated), or 0 on a miss.
 */
int sl_cache_auth_get(sl_cache_t *c, const char *key_hash, char *tenant_id, size_t tenant_len);

/** Remembers key_hash -> tenant_id (both borrowed, copied) unless `ticket` is stale
 *  (sl_cache_cred_put with no key id and no scopes). */
void sl_cache_auth_put(sl_cache_t *c, const char *key_hash, const char *tenant_id, uint64_t ticket);

/* ---- file documents ---- */

/** The fill ticket for a file document query: take it before sending the query. */
uint64_t sl_cache_file_ticket(sl_cache_t *c);

/**
 * Looks (tenant_id, file_id) up (borrowed), after sl_cache_sync. 1 with
 * *body (len bytes) and *etag borrowed until the next sl_cache_* call or loop
 * turn, or 0 on a miss.
 */
int sl_cache_file_get(sl_cache_t *c, const char *tenant_id, const char *file_id, const char **body,
                      size_t *len, const char **etag);

/**
 * Remembers the document (all borrowed, copied) unless `ticket` is stale, the
 * body is too big, or it shows a queued run: its queue_position depends on
 * other files' runs, so it is kept only until the next event of any file.
 */
void sl_cache_file_put(sl_cache_t *c, const char *tenant_id, const char *file_id, const char *body,
                       size_t len, const char *etag, uint64_t ticket);

/* ---- invalidation ---- */

/**
 * A publish's end: called exactly once, on a later loop turn, after Redis
 * replied to the PUBLISH, or when it could not be sent or the connection went
 * away (then other instances rely on their TTL or on not caching while down).
 */
typedef void (*sl_cache_done_cb)(void *arg);

/**
 * Forgets file_id (borrowed; "*": every file) here at once and publishes it on
 * SL_CACHE_FILE_CHANNEL for every other process; done(arg) as above. Call it
 * after the write committed and answer the client from `done`. 0, or
 * SL_ENOMEM / SL_EINVAL without a callback.
 */
int sl_cache_publish_file(sl_cache_t *c, const char *file_id, sl_cache_done_cb done, void *arg);

/** The same for a revoked API key: key_hash (borrowed) on SL_CACHE_AUTH_CHANNEL. */
int sl_cache_publish_revoke(sl_cache_t *c, const char *key_hash, sl_cache_done_cb done, void *arg);

/**
 * Applies one message of the subscriber (channel and data borrowed): what the
 * subscriber calls; exposed for the unit tests.
 */
void sl_cache_on_message(sl_cache_t *c, const char *channel, const char *data, size_t len);

/* ---- ETags ---- */

/** The ETag of a body (borrowed) into out. */
void sl_cache_etag(const char *body, size_t len, char out[SL_CACHE_ETAG_LEN]);

/**
 * 1 if an If-None-Match header value (borrowed; NULL: absent) matches etag:
 * "*", or one of its comma-separated entity tags compared weakly (W/ ignored).
 */
int sl_cache_etag_match(const char *if_none_match, const char *etag);

#endif
