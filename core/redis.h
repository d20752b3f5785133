/*
 * redis.h — a Redis connection on the event loop (hiredis async + its libevent
 * adapter) that keeps itself up: it connects in the background, pings every few
 * seconds, and reconnects with exponential backoff (100 ms .. 5 s) after a drop.
 * Sluice works without Redis (local fallbacks); this module says whether it is
 * up right now and carries the commands of the modules built on it.
 */
#ifndef SL_REDIS_H
#define SL_REDIS_H

#include <event2/event.h>
#include <stddef.h>

typedef struct sl_redis_s sl_redis_t;

/**
 * Parses `url` ("redis://[:password@]host[:port][/db]", copied) and starts
 * connecting; returns before the connection is up. `base` is borrowed.
 * Returns owned in *out, SL_EINVAL for a bad URL.
 */
int sl_redis_new(struct event_base *base, const char *url, sl_redis_t **out);

/** 1 while the connection is up and answered its last ping (a subscriber: subscribed). */
int sl_redis_up(const sl_redis_t *r);

/**
 * A message received by a subscriber connection: `channel` (NUL-terminated)
 * and `data` (len bytes, binary-safe) are borrowed for the call. Called from
 * the loop as hiredis reads the message, never inside an sl_redis_* call.
 */
typedef void (*sl_redis_message_cb)(const char *channel, const char *data, size_t len, void *arg);

/**
 * Like sl_redis_new, but a subscriber connection (a subscribed Redis
 * connection can run no other command): after every (re)connect it sends
 * PSUBSCRIBE `pattern` (copied) and counts as up once Redis confirmed it.
 * Messages on matching channels go to cb(arg) (`arg` borrowed). It sends no
 * pings (not allowed in subscribed RESP2 mode); TCP keepalive and the peer's
 * close detect a dead server. Returns owned in *out, SL_EINVAL for a bad URL.
 */
int sl_redis_new_subscriber(struct event_base *base, const char *url, const char *pattern,
                            sl_redis_message_cb cb, void *arg, sl_redis_t **out);

/**
 * Sends one command (argv[i] is lens[i] bytes, binary-safe; all borrowed and
 * copied) without waiting for its reply: fire and forget, e.g. PUBLISH.
 * Returns 0 once queued, SL_EUNAVAIL while the connection is down (nothing is
 * queued), SL_EINVAL on a subscriber connection or bad arguments.
 */
int sl_redis_command(sl_redis_t *r, int argc, const char *const *argv, const size_t *lens);

/**
 * A command's answer: `reply` is the hiredis `redisReply *` (borrowed for the
 * call), or NULL when the connection went away (or the module is being freed)
 * before the answer came. Called exactly once, from the event loop, never from
 * inside the call that sent the command.
 */
typedef void (*sl_redis_reply_cb)(void *reply, void *arg);

/**
 * Sends one command (like sl_redis_command: argv[i] is lens[i] bytes, all
 * borrowed and copied) and hands its reply to cb(arg). Returns 0 (cb fires
 * once), SL_EUNAVAIL while the connection is down, SL_EINVAL on a subscriber
 * connection or bad arguments, SL_ENOMEM: no callback then. `arg` is borrowed
 * until the callback.
 */
int sl_redis_request(sl_redis_t *r, sl_redis_reply_cb cb, void *arg, int argc,
                     const char *const *argv, const size_t *lens);

/**
 * Reads whatever the server has already sent on this connection, without
 * waiting (one non-blocking read), and runs the callbacks of what it holds:
 * for a subscriber, the messages already delivered to the socket reach msg_cb
 * before this returns. No-op while down. For readers that must not answer
 * from state a message already on the wire has made stale (api/cache.c).
 * Must not be called from inside a callback of this connection.
 */
void sl_redis_poll(sl_redis_t *r);

/**
 * Counts the connection's ups: it changes whenever the connection comes up
 * (a subscriber: when Redis confirms the subscription), so a reader can tell
 * that a drop happened since it last looked, even if it is up again.
 */
unsigned long sl_redis_epoch(const sl_redis_t *r);

/** Disconnects and frees; pending requests' callbacks get reply NULL inside this call. */
void sl_redis_free(sl_redis_t *r);

#endif
