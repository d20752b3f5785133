/*
 * sniff.h — an object's type from its bytes, with libmagic (DESIGN.md:
 * "content sniffed with libmagic", never the client's claim).
 *
 * A libmagic cookie is not thread-safe, and one magic_buffer over a small
 * text walks the whole magic database twice (0.35-0.55 ms here: the binary
 * tests, then the text tests): under one cookie, a store's worker threads
 * took turns, and an upload of a thousand small files sniffed on one core
 * while the others waited. An sl_sniff_t holds up to one cookie per online
 * CPU, at most SL_SNIFF_MAX (2), each loaded on first need: a sniff takes a
 * free cookie, loads a new one when all are busy and there is room, and
 * waits for one otherwise. A cookie costs about 8 MiB of RSS (2.3
 * anonymous, the rest the database's mapped file), so the second is loaded
 * only when two sniffs meet, and there is no third: issue 11 asked for one
 * shared handle because four (one per worker thread) cost ~40 MiB; two
 * cover both cores of the machines this runs on, for 8 MiB more at most.
 *
 * Blocking: sl_sniff_mime runs libmagic (CPU, and its first use per cookie
 * reads the database file): worker threads only, never an event loop.
 * Thread-safe.
 */
#ifndef SL_SNIFF_H
#define SL_SNIFF_H

#include <stddef.h>

#define SL_SNIFF_MAX 2 /* cookies at most, whatever the CPU count */

typedef struct sl_sniff_s sl_sniff_t;

/** A sniffer with room for min(online CPUs, SL_SNIFF_MAX) cookies, none loaded; NULL on ENOMEM. */
sl_sniff_t *sl_sniff_new(void);

/** Closes its cookies; no thread may be inside sl_sniff_mime. NULL is a no-op. */
void sl_sniff_free(sl_sniff_t *s);

/**
 * The MIME type of buf[0..len) ("application/x-empty" for no bytes,
 * "application/octet-stream" when libmagic cannot load or answers nothing),
 * written to out[0..outlen) NUL-terminated (truncated to fit).
 */
void sl_sniff_mime(sl_sniff_t *s, const void *buf, size_t len, char *out, size_t outlen);

/** Cookies loaded so far (tests). */
int sl_sniff_loaded(sl_sniff_t *s);

#endif
