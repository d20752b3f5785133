/*
 * pubsub.h — publish/subscribe by channel: fan-out inside the process, and a
 * Redis bridge so that every instance sharing the Redis server sees every
 * message.
 *
 * sl_pubsub_publish() queues the message for this process's subscribers (they
 * get it on a later loop turn, never inside the call, in publish order) and,
 * while Redis is up, PUBLISHes it with an envelope naming this instance. One
 * dedicated subscriber connection PSUBSCRIBEs to the pattern given to
 * sl_pubsub_new and hands other instances' messages to the same queue; our
 * own echo is recognised by the envelope and dropped, so a subscriber sees
 * each message exactly once.
 * Redis down: messages fan out locally only (other instances miss them; SSE
 * clients recover them from Postgres with Last-Event-ID), the connections
 * reconnect with backoff and the subscriber re-subscribes by itself.
 *
 * Channels are plain strings and messages plain bytes: this module knows
 * nothing of what they mean (Sluice's status events and their channels are
 * actors/run_event.h). Single-threaded: call from the loop thread only. See
 * docs/internals/sse.md.
 */
#ifndef SL_PUBSUB_H
#define SL_PUBSUB_H

#include <event2/event.h>
#include <stddef.h>
#include <stdint.h>

#include "core/redis.h"

/** Local messages waiting for delivery at most; past it publish fails with SL_EAGAIN. */
#define SL_PUBSUB_MAX_QUEUED 100000
/** Longest channel name. */
#define SL_PUBSUB_MAX_CHANNEL 128

typedef struct sl_pubsub_s sl_pubsub_t;
typedef struct sl_pubsub_sub_s sl_pubsub_sub_t;

/**
 * A message for a subscriber: `channel` and `msg` (len bytes, NUL-terminated
 * too) are borrowed for the call. `msg_id` is the same for every subscriber
 * of one delivered message and unique within the process (for caching a
 * parse). msg == NULL (len 0, msg_id 0) means the pubsub is shutting down:
 * the subscriber should finish and unsubscribe. The callback may unsubscribe
 * any subscription (its own included) and publish; it must not free the
 * pubsub.
 */
typedef void (*sl_pubsub_msg_cb)(const char *channel, const char *msg, size_t len, uint64_t msg_id,
                                 void *arg);

/**
 * Creates the pubsub. `base` borrowed. `publisher` (borrowed, may be NULL) is
 * the command connection used to PUBLISH; `redis_url` (copied; NULL: local
 * only) is where the subscriber connection goes, and `pattern` (copied; a
 * Redis PSUBSCRIBE glob, required with redis_url) which channels it receives
 * from other instances; `instance_id` (copied) marks our envelopes. Returns
 * owned in *out, or SL_EINVAL / SL_ENOMEM.
 */
int sl_pubsub_new(struct event_base *base, sl_redis_t *publisher, const char *redis_url,
                  const char *pattern, const char *instance_id, sl_pubsub_t **out);

/**
 * Publishes msg (len bytes, copied) on channel (copied). 0, SL_EINVAL (empty
 * or too long channel), SL_EAGAIN (local queue full: dropped), SL_ENOMEM.
 * Not reaching Redis is not an error (local fan-out still happens).
 */
int sl_pubsub_publish(sl_pubsub_t *ps, const char *channel, const char *msg, size_t len);

/** Most messages in one sl_pubsub_publish_many. */
#define SL_PUBSUB_MAX_BATCH 1024

/**
 * Publishes msgs[0..count) (lens[i] bytes each, copied) on channel, as count
 * sl_pubsub_publish calls in a row would, but in one Redis PUBLISH: every
 * subscriber, here or in another instance, gets them one by one, in order,
 * each exactly once. For the rows of one commit (actors/run_event.h): one
 * command and one message per subscribing connection instead of one each.
 * 0, SL_EINVAL (bad channel, count > SL_PUBSUB_MAX_BATCH, a NULL message with
 * a length), SL_EAGAIN (local queue full: the rest dropped here), SL_ENOMEM.
 */
int sl_pubsub_publish_many(sl_pubsub_t *ps, const char *channel, const char *const *msgs,
                           const size_t *lens, size_t count);

/**
 * Subscribes cb(arg) to channel (copied); `arg` borrowed until unsubscribe.
 * Returns the subscription (owned by the pubsub; release it with
 * sl_pubsub_unsubscribe) in *out. SL_ECLOSED after sl_pubsub_shutdown.
 */
int sl_pubsub_subscribe(sl_pubsub_t *ps, const char *channel, sl_pubsub_msg_cb cb, void *arg,
                        sl_pubsub_sub_t **out);

/** Ends a subscription (no callback after it returns); `sub` is invalid afterwards. */
void sl_pubsub_unsubscribe(sl_pubsub_t *ps, sl_pubsub_sub_t *sub);

/**
 * Replaces the publishing connection (borrowed; NULL: stop publishing to
 * Redis). Call with NULL before freeing the connection the pubsub borrows.
 */
void sl_pubsub_set_publisher(sl_pubsub_t *ps, sl_redis_t *publisher);

/**
 * Called with every message this pubsub published that did not go to Redis
 * (channel, msg: borrowed for the call). The engine process hands its run
 * events to its instance's HTTP processes this way while Redis is down
 * (docs/internals/engine.md). fn NULL removes it; `arg` borrowed.
 */
typedef void (*sl_pubsub_forward_fn)(const char *channel, const char *msg, size_t len, void *arg);
void sl_pubsub_set_forward(sl_pubsub_t *ps, sl_pubsub_forward_fn fn, void *arg);

/**
 * Delivers msg (copied) to this process's subscribers of channel only, on a
 * later loop turn, never to Redis: for messages forwarded by the engine.
 * 0, SL_EINVAL, SL_EAGAIN (queue full: dropped) or SL_ENOMEM.
 */
int sl_pubsub_deliver_local(sl_pubsub_t *ps, const char *channel, const char *msg, size_t len);

/** 1 while Redis is up both ways (publisher up and the subscriber subscribed). */
int sl_pubsub_redis_up(const sl_pubsub_t *ps);

/** Subscriptions alive now. */
int sl_pubsub_subscribers(const sl_pubsub_t *ps);

/**
 * Starts shutting down: on a later loop turn every live subscription gets the
 * msg == NULL callback once; new subscriptions are refused. Publishing still
 * works. Idempotent.
 */
void sl_pubsub_shutdown(sl_pubsub_t *ps);

/** Frees everything (takes ps; NULL is a no-op); remaining subscriptions become invalid. */
void sl_pubsub_free(sl_pubsub_t *ps);

#endif
