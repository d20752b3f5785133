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

typedef struct sl_redis_s sl_redis_t;

/**
 * Parses `url` ("redis://[:password@]host[:port][/db]", copied) and starts
 * connecting; returns before the connection is up. `base` is borrowed.
 * Returns owned in *out, SL_EINVAL for a bad URL.
 */
int sl_redis_new(struct event_base *base, const char *url, sl_redis_t **out);

/** 1 while the connection is up and answered its last ping. */
int sl_redis_up(const sl_redis_t *r);

/** Disconnects and frees. */
void sl_redis_free(sl_redis_t *r);

#endif
