/*
 * cache.c — the API key and file document caches (see cache.h and
 * docs/internals/caching.md).
 *
 * Both tables are set-associative: a key hashes to one set of SL_CACHE_WAYS
 * entries, a put replaces the least recently used entry of its set, so the
 * size is fixed and no entry is ever found by a scan. Validity is checked at
 * lookup: the subscriber is up, the entry was filled in the current
 * subscriber epoch (no drop since), its TTL has not passed, and a document
 * showing a queued run was filled since the last event of any file.
 *
 * Generations: auth_gen and file_gen count the invalidations seen (and every
 * subscriber reconnect bumps both); a ticket is the generation when the query
 * was sent, and a put with an older ticket is dropped.
 */
#include "api/cache.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "actors/run_event.h"
#include "core/crypto.h"
#include "core/err.h"
#include "core/log.h"

#define HASH_HEX 64
#define UUID_LEN 36
#define TENANT_MAX 64
#define DS_PREFIX SL_RUN_EVENT_CHANNEL_PREFIX /* the status events' channels */

typedef struct auth_ent_s {
    char hash[HASH_HEX + 1]; /* "" = free */
    char tenant[TENANT_MAX];
    char key_id[UUID_LEN + 1]; /* the API key behind the credential ("" if unknown) */
    unsigned scopes;
    time_t expires;
    unsigned long epoch;
    uint64_t used;
} auth_ent_t;

typedef struct file_ent_s {
    char id[UUID_LEN + 1]; /* "" = free */
    char tenant[TENANT_MAX];
    char etag[SL_CACHE_ETAG_LEN];
    char *body; /* owned */
    size_t len;
    time_t expires;
    unsigned long epoch;
    int queued;    /* the document shows a queued run */
    uint64_t qgen; /* ... and was filled at this queue generation */
    uint64_t used;
} file_ent_t;

struct sl_cache_s {
    struct event_base *base;
    sl_redis_t *pub; /* borrowed; may be NULL */
    sl_redis_t *sub; /* owned; NULL without a redis_url */
    int forced;      /* tests: active without a subscriber (sl_cache__set_active) */
    unsigned long seen_epoch;
    uint64_t auth_gen, file_gen, qgen;
    uint64_t clock; /* LRU stamps */
    size_t bytes;   /* bodies held */
    sl_cache_revoke_fn on_revoke; /* the listener (sl_cache_on_revoke), or NULL */
    void *on_revoke_arg;
    auth_ent_t auth[SL_CACHE_AUTH_SETS][SL_CACHE_WAYS];
    file_ent_t files[SL_CACHE_FILE_SETS][SL_CACHE_WAYS];
};

static time_t now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return ts.tv_sec;
}

static unsigned hash_str(const char *s, size_t n)
{
    unsigned h = 2166136261u;
    for (size_t i = 0; i < n && s[i]; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

static void file_ent_clear(sl_cache_t *c, file_ent_t *e)
{
    if (e->body) {
        c->bytes -= e->len;
        free(e->body);
    }
    memset(e, 0, sizeof *e);
}

static void flush_auth(sl_cache_t *c)
{
    memset(c->auth, 0, sizeof c->auth);
    c->auth_gen++;
}

static void flush_files(sl_cache_t *c)
{
    for (int s = 0; s < SL_CACHE_FILE_SETS; s++)
        for (int w = 0; w < SL_CACHE_WAYS; w++)
            file_ent_clear(c, &c->files[s][w]);
    c->file_gen++;
    c->qgen++;
}

static unsigned long epoch_of(const sl_cache_t *c)
{
    return c->forced ? c->seen_epoch : sl_redis_epoch(c->sub);
}

/*
 * 1 while the cache may answer. A subscriber that came up again since we last
 * looked may have missed messages while it was down: everything goes.
 */
int sl_cache_active(sl_cache_t *c)
{
    if (!c)
        return 0;
    if (c->forced)
        return 1;
    if (!c->sub || !sl_redis_up(c->sub))
        return 0;
    unsigned long e = sl_redis_epoch(c->sub);
    if (e != c->seen_epoch) {
        flush_auth(c);
        flush_files(c);
        c->seen_epoch = e;
    }
    return 1;
}

void sl_cache_sync(sl_cache_t *c)
{
    if (c && c->sub)
        sl_redis_poll(c->sub);
}

/* ---- messages ---- */

static void forget_auth(sl_cache_t *c, const char *hash)
{
    auth_ent_t *set = c->auth[hash_str(hash, HASH_HEX) % SL_CACHE_AUTH_SETS];
    for (int w = 0; w < SL_CACHE_WAYS; w++)
        if (strncmp(set[w].hash, hash, HASH_HEX) == 0)
            memset(&set[w], 0, sizeof set[w]);
    c->auth_gen++;
}

uint64_t sl_cache_revoke_tag(const char *id)
{
    uint64_t tag = 0;
    if (!id || strnlen(id, HASH_HEX + 1) != HASH_HEX)
        return 0;
    for (int i = 0; i < 16; i++) {
        int v = sl_hex_digit((unsigned char)id[i]);
        if (v < 0)
            return 0;
        tag = tag << 4 | (uint64_t)v;
    }
    return tag ? tag : 1;
}

void sl_cache_on_revoke(sl_cache_t *c, sl_cache_revoke_fn fn, void *arg)
{
    if (!c)
        return;
    c->on_revoke = fn;
    c->on_revoke_arg = arg;
}

/* A revocation applied here: tell the listener (tag 0: every credential). */
static void revoked(sl_cache_t *c, const char *hash)
{
    if (c->on_revoke)
        c->on_revoke(hash ? sl_cache_revoke_tag(hash) : 0, c->on_revoke_arg);
}

static void forget_file(sl_cache_t *c, const char *id)
{
    file_ent_t *set = c->files[hash_str(id, UUID_LEN) % SL_CACHE_FILE_SETS];
    for (int w = 0; w < SL_CACHE_WAYS; w++)
        if (strncmp(set[w].id, id, UUID_LEN) == 0)
            file_ent_clear(c, &set[w]);
    c->file_gen++;
}

/*
 * The value of the next "file_id" in events (sl_run_event_json's compact
 * text) at or after *at, into id; *at moves past it. 0, or -1 when none is
 * left. A batch of events (core/pubsub.h) names one per event: inside a JSON
 * string a quote is escaped, so the key's text is only ever a key.
 */
static int event_file_id(const char *data, size_t len, size_t *at, char id[UUID_LEN + 1])
{
    static const char key[] = "\"file_id\":\"";
    const size_t kl = sizeof key - 1;
    for (size_t i = *at; i + kl + UUID_LEN < len; i++) {
        if (data[i] == '"' && memcmp(data + i, key, kl) == 0) {
            *at = i + kl;
            if (data[i + kl + UUID_LEN] != '"')
                continue;
            memcpy(id, data + i + kl, UUID_LEN);
            id[UUID_LEN] = '\0';
            return 0;
        }
    }
    *at = len;
    return -1;
}

void sl_cache_on_message(sl_cache_t *c, const char *channel, const char *data, size_t len)
{
    char buf[HASH_HEX + 1];
    if (!c || !channel || !data)
        return;
    /* Sent through sl_pubsub_publish: "<instance> <n>\n" comes first. */
    int ds = strncmp(channel, DS_PREFIX, sizeof DS_PREFIX - 1) == 0;
    const char *nl = !ds ? memchr(data, '\n', len) : NULL;
    if (nl) {
        len -= (size_t)(nl + 1 - data);
        data = nl + 1;
    }
    if (strcmp(channel, SL_CACHE_AUTH_CHANNEL) == 0) {
        buf[0] = '\0'; /* a tag only for 64 hex digits (sl_cache_revoke_tag) */
        if (len == HASH_HEX) {
            memcpy(buf, data, HASH_HEX);
            buf[HASH_HEX] = '\0';
        }
        if (sl_cache_revoke_tag(buf) != 0) {
            forget_auth(c, buf);
            revoked(c, buf);
        } else {
            flush_auth(c); /* "*", or unreadable: be safe */
            revoked(c, NULL);
        }
    } else if (strcmp(channel, SL_CACHE_FILE_CHANNEL) == 0) {
        if (len == UUID_LEN) {
            memcpy(buf, data, UUID_LEN);
            buf[UUID_LEN] = '\0';
            forget_file(c, buf);
        } else {
            flush_files(c); /* "*", or unreadable */
        }
    } else if (ds) {
        /* Any event: its file changed, and queue positions of every queued run may have. */
        c->qgen++;
        size_t at = 0;
        int named = 0;
        while (event_file_id(data, len, &at, buf) == 0) {
            forget_file(c, buf);
            named++;
        }
        if (!named)
            c->file_gen++; /* no file named: fills in flight are still suspect */
    }
}

static void sub_message_cb(const char *channel, const char *data, size_t len, void *arg)
{
    sl_cache_on_message(arg, channel, data, len);
}

/* ---- lifecycle ---- */

int sl_cache_new(struct event_base *base, sl_redis_t *publisher, const char *redis_url,
                 sl_cache_t **out)
{
    if (!base || !out)
        return SL_EINVAL;
    sl_cache_t *c = calloc(1, sizeof *c);
    if (!c)
        return SL_ENOMEM;
    c->base = base;
    c->pub = publisher;
    if (redis_url) {
        int err =
            sl_redis_new_subscriber(base, redis_url, SL_CACHE_PATTERN, sub_message_cb, c, &c->sub);
        if (err) {
            free(c);
            return err;
        }
    }
    *out = c;
    return 0;
}

void sl_cache_free(sl_cache_t *c)
{
    if (!c)
        return;
    if (c->sub)
        sl_redis_free(c->sub);
    for (int s = 0; s < SL_CACHE_FILE_SETS; s++)
        for (int w = 0; w < SL_CACHE_WAYS; w++)
            free(c->files[s][w].body);
    free(c);
}

/* Tests only: makes the cache answer without a subscriber (cache.h does not list it). */
void sl_cache__set_active(sl_cache_t *c, int on);
void sl_cache__set_active(sl_cache_t *c, int on)
{
    if (c)
        c->forced = on;
}

/* ---- API keys ---- */

uint64_t sl_cache_auth_ticket(sl_cache_t *c)
{
    if (!sl_cache_active(c))
        return UINT64_MAX; /* never matches: nothing filled while down */
    return c->auth_gen;
}

int sl_cache_cred_get(sl_cache_t *c, const char *id, sl_cache_cred_t *out)
{
    if (!id || strlen(id) != HASH_HEX)
        return 0;
    sl_cache_sync(c);
    if (!sl_cache_active(c))
        return 0;
    auth_ent_t *set = c->auth[hash_str(id, HASH_HEX) % SL_CACHE_AUTH_SETS];
    time_t now = now_s();
    for (int w = 0; w < SL_CACHE_WAYS; w++) {
        auth_ent_t *e = &set[w];
        if (e->hash[0] == '\0' || memcmp(e->hash, id, HASH_HEX) != 0)
            continue;
        if (e->epoch != epoch_of(c) || now >= e->expires) {
            memset(e, 0, sizeof *e);
            return 0;
        }
        memcpy(out->tenant_id, e->tenant, sizeof out->tenant_id);
        memcpy(out->key_id, e->key_id, sizeof out->key_id);
        out->scopes = e->scopes;
        e->used = ++c->clock;
        return 1;
    }
    return 0;
}

int sl_cache_auth_get(sl_cache_t *c, const char *key_hash, char *tenant_id, size_t tenant_len)
{
    sl_cache_cred_t cred;
    if (!sl_cache_cred_get(c, key_hash, &cred))
        return 0;
    size_t tl = strlen(cred.tenant_id);
    if (tl >= tenant_len)
        return 0;
    memcpy(tenant_id, cred.tenant_id, tl + 1);
    return 1;
}

void sl_cache_cred_put(sl_cache_t *c, const char *id, const sl_cache_cred_t *cred, uint64_t ticket)
{
    const char *key_hash = id;
    if (!key_hash || !cred || strlen(key_hash) != HASH_HEX ||
        strnlen(cred->tenant_id, TENANT_MAX) >= TENANT_MAX ||
        strnlen(cred->key_id, UUID_LEN + 1) > UUID_LEN || !sl_cache_active(c) ||
        ticket != c->auth_gen)
        return;
    auth_ent_t *set = c->auth[hash_str(key_hash, HASH_HEX) % SL_CACHE_AUTH_SETS];
    /* The key's own entry, else a free one, else the least recently used. */
    auth_ent_t *victim = NULL, *lru = &set[0];
    for (int w = 0; w < SL_CACHE_WAYS && !victim; w++)
        if (memcmp(set[w].hash, key_hash, HASH_HEX) == 0)
            victim = &set[w];
    for (int w = 0; w < SL_CACHE_WAYS && !victim; w++) {
        if (set[w].hash[0] == '\0')
            victim = &set[w];
        else if (set[w].used < lru->used)
            lru = &set[w];
    }
    if (!victim)
        victim = lru;
    memcpy(victim->hash, key_hash, HASH_HEX + 1);
    memcpy(victim->tenant, cred->tenant_id, strlen(cred->tenant_id) + 1);
    memcpy(victim->key_id, cred->key_id, strlen(cred->key_id) + 1);
    victim->scopes = cred->scopes;
    victim->expires = now_s() + SL_CACHE_AUTH_TTL_S;
    victim->epoch = epoch_of(c);
    victim->used = ++c->clock;
}

void sl_cache_auth_put(sl_cache_t *c, const char *key_hash, const char *tenant_id, uint64_t ticket)
{
    sl_cache_cred_t cred;
    memset(&cred, 0, sizeof cred);
    if (!tenant_id || strlen(tenant_id) >= sizeof cred.tenant_id)
        return;
    memcpy(cred.tenant_id, tenant_id, strlen(tenant_id) + 1);
    sl_cache_cred_put(c, key_hash, &cred, ticket);
}

/* ---- file documents ---- */

uint64_t sl_cache_file_ticket(sl_cache_t *c)
{
    if (!sl_cache_active(c))
        return UINT64_MAX;
    return c->file_gen;
}

int sl_cache_file_get(sl_cache_t *c, const char *tenant_id, const char *file_id, const char **body,
                      size_t *len, const char **etag)
{
    if (!file_id || !tenant_id || strlen(file_id) != UUID_LEN)
        return 0;
    sl_cache_sync(c);
    if (!sl_cache_active(c))
        return 0;
    file_ent_t *set = c->files[hash_str(file_id, UUID_LEN) % SL_CACHE_FILE_SETS];
    time_t now = now_s();
    for (int w = 0; w < SL_CACHE_WAYS; w++) {
        file_ent_t *e = &set[w];
        if (e->id[0] == '\0' || memcmp(e->id, file_id, UUID_LEN) != 0)
            continue;
        if (e->epoch != epoch_of(c) || now >= e->expires || (e->queued && e->qgen != c->qgen)) {
            file_ent_clear(c, e);
            return 0;
        }
        if (strcmp(e->tenant, tenant_id) != 0)
            return 0; /* another tenant's file: the database says 404 */
        e->used = ++c->clock;
        *body = e->body;
        *len = e->len;
        *etag = e->etag;
        return 1;
    }
    return 0;
}

void sl_cache_file_put(sl_cache_t *c, const char *tenant_id, const char *file_id, const char *body,
                       size_t len, const char *etag, uint64_t ticket)
{
    if (!tenant_id || !file_id || !body || !etag || strlen(file_id) != UUID_LEN ||
        strlen(tenant_id) >= TENANT_MAX || strlen(etag) >= SL_CACHE_ETAG_LEN ||
        len > SL_CACHE_FILE_MAX_BODY || !sl_cache_active(c) || ticket != c->file_gen)
        return;
    file_ent_t *set = c->files[hash_str(file_id, UUID_LEN) % SL_CACHE_FILE_SETS];
    /* The file's own entry, else a free one, else the least recently used. */
    file_ent_t *victim = NULL, *lru = &set[0];
    for (int w = 0; w < SL_CACHE_WAYS && !victim; w++)
        if (memcmp(set[w].id, file_id, UUID_LEN) == 0)
            victim = &set[w];
    for (int w = 0; w < SL_CACHE_WAYS && !victim; w++) {
        if (set[w].id[0] == '\0')
            victim = &set[w];
        else if (set[w].used < lru->used)
            lru = &set[w];
    }
    if (!victim)
        victim = lru;
    file_ent_clear(c, victim);
    if (c->bytes + len > SL_CACHE_FILE_MAX_BYTES)
        return;
    char *copy = malloc(len + 1);
    if (!copy)
        return;
    memcpy(copy, body, len);
    copy[len] = '\0';
    memcpy(victim->id, file_id, UUID_LEN + 1);
    memcpy(victim->tenant, tenant_id, strlen(tenant_id) + 1);
    memcpy(victim->etag, etag, strlen(etag) + 1);
    victim->body = copy;
    victim->len = len;
    c->bytes += len;
    victim->expires = now_s() + SL_CACHE_FILE_TTL_S;
    victim->epoch = epoch_of(c);
    /* A queued run's queue_position moves with other files' runs. */
    victim->queued = memmem(body, len, "\"queued\"", 8) != NULL;
    victim->qgen = c->qgen;
    victim->used = ++c->clock;
}

/* ---- publishing ---- */

typedef struct pub_ctx_s {
    sl_cache_t *c; /* borrowed: outlives its requests (freed after the loop ends) */
    sl_cache_done_cb done;
    void *arg;
    int pinged; /* the PING after the PUBLISH has been answered, or was not sent */
} pub_ctx_t;

/*
 * The PUBLISH is answered: send one PING and call back on its answer. Redis
 * replies to the publisher in the same write pass (beforeSleep) as it writes
 * the message to every subscriber, and that pass may write the publisher's
 * reply first; by the time Redis answers a command sent after that reply, the
 * pass has ended, so the message is on every subscriber's socket (and, on
 * loopback, in its receive buffer) before the writer answers its client. A
 * reader drains its socket before answering from cache (sl_redis_poll), which
 * closes the loop: test_cache's cross-instance rule failed without the PING
 * once in a few thousand rounds on a busy machine.
 */
static void pub_reply_cb(void *reply, void *arg)
{
    pub_ctx_t *p = arg;
    if (reply && !p->pinged) {
        p->pinged = 1;
        const char *argv[] = {"PING"};
        size_t lens[] = {4};
        if (p->c->pub && sl_redis_request(p->c->pub, pub_reply_cb, p, 1, argv, lens) == 0)
            return;
    }
    /* An answer, or NULL (connection gone): the caller goes on either way. */
    sl_cache_done_cb done = p->done;
    void *darg = p->arg;
    free(p);
    done(darg);
}

static void pub_later_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pub_reply_cb(NULL, arg);
}

static int publish(sl_cache_t *c, struct event_base *base, const char *channel, const char *msg,
                   sl_cache_done_cb done, void *arg)
{
    if (!done || !base)
        return SL_EINVAL;
    pub_ctx_t *p = malloc(sizeof *p);
    if (!p)
        return SL_ENOMEM;
    p->c = c;
    p->done = done;
    p->arg = arg;
    p->pinged = 0;
    const char *argv[] = {"PUBLISH", channel, msg};
    size_t lens[] = {7, strlen(channel), strlen(msg)};
    if (c->pub && sl_redis_request(c->pub, pub_reply_cb, p, 3, argv, lens) == 0)
        return 0;
    /* Not sent: other instances rely on their TTL (or on not caching while down). */
    sl_log(SL_LOG_WARN, "cache_publish_failed", "{s:s}", "channel", channel);
    static const struct timeval zero = {0, 0};
    if (event_base_once(base, -1, EV_TIMEOUT, pub_later_cb, p, &zero) != 0) {
        free(p);
        return SL_ENOMEM;
    }
    return 0;
}

int sl_cache_publish_file(sl_cache_t *c, const char *file_id, sl_cache_done_cb done, void *arg)
{
    int all = file_id && strcmp(file_id, "*") == 0; /* retention: a dataset's files at once */
    if (!c || !file_id || (!all && strlen(file_id) != UUID_LEN))
        return SL_EINVAL;
    if (all)
        flush_files(c);
    else
        forget_file(c, file_id);
    return publish(c, c->base, SL_CACHE_FILE_CHANNEL, file_id, done, arg);
}

int sl_cache_publish_revoke(sl_cache_t *c, const char *key_hash, sl_cache_done_cb done, void *arg)
{
    if (!c || !key_hash || strlen(key_hash) != HASH_HEX)
        return SL_EINVAL;
    forget_auth(c, key_hash);
    revoked(c, key_hash); /* here at once, Redis or not; the echo finds nothing more */
    return publish(c, c->base, SL_CACHE_AUTH_CHANNEL, key_hash, done, arg);
}

/* ---- ETags ---- */

void sl_cache_etag(const char *body, size_t len, char out[SL_CACHE_ETAG_LEN])
{
    char hex[65];
    sl_sha256_hex(body, len, hex);
    out[0] = '"';
    memcpy(out + 1, hex, 32);
    out[33] = '"';
    out[34] = '\0';
}

int sl_cache_etag_match(const char *inm, const char *etag)
{
    if (!inm || !etag)
        return 0;
    size_t el = strlen(etag);
    const char *p = inm;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == '\0')
            break;
        if (*p == '*' && (p[1] == '\0' || p[1] == ' ' || p[1] == ',' || p[1] == '\t'))
            return 1;
        if (p[0] == 'W' && p[1] == '/')
            p += 2;
        const char *start = p;
        if (*p == '"') { /* a quoted tag: up to its closing quote */
            p++;
            while (*p && *p != '"')
                p++;
            if (*p == '"')
                p++;
        } else {
            while (*p && *p != ',' && *p != ' ' && *p != '\t')
                p++;
        }
        if ((size_t)(p - start) == el && memcmp(start, etag, el) == 0)
            return 1;
    }
    return 0;
}
