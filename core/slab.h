/*
 * slab.h — size-class pools for small blocks whose size the caller gives
 * back when it frees them (Lua's allocator does: lua_Alloc's osize), so a
 * block needs no header. glibc's malloc adds 8 bytes to each block and rounds
 * to 16 (32 at least): a 25-byte Lua string costs it 48 bytes, a pool of
 * 8-byte classes 32. A parked run holds a few dozen small Lua objects (its
 * coroutine, call frames, the file table and its strings, ctx), so that
 * overhead was a sizeable part of its ~4 KiB (issue 10; docs/internals/flow.md
 * "Memory of a parked run").
 *
 * Blocks of 1..SL_SLAB_MAX bytes come from slabs of SL_SLAB_BYTES, one class
 * per 8 bytes; a freed block goes on its class's free list and is reused
 * first. A slab is carved as blocks are needed (never ahead), so pages are
 * touched only when used. Slabs are returned only by sl_slab_free: a pool
 * keeps its peak (the blocks are reused, not given back to the system).
 * Not thread-safe: one pool per owner thread (the flow VM's loop).
 *
 * Under AddressSanitizer (SL_SANITIZE builds) the pool hands every request to
 * malloc/free, so the sanitizer still sees each block of the Lua heap.
 */
#ifndef SL_SLAB_H
#define SL_SLAB_H

#include <stddef.h>

#define SL_SLAB_MAX 256          /* larger blocks go to malloc */
#define SL_SLAB_BYTES (16 * 1024) /* one slab of a class */

typedef struct sl_slab_s sl_slab_t;

/** A new, empty pool (owned: sl_slab_free), or NULL without memory. */
sl_slab_t *sl_slab_new(void);

/** Frees the pool and every slab: no block of it may be used after. NULL: no-op. */
void sl_slab_free(sl_slab_t *p);

/**
 * lua_Alloc's contract over the pool: `ptr` NULL allocates `nsize`; nsize 0
 * frees ptr, a block of `osize` bytes; otherwise resizes ptr (osize bytes) to
 * nsize, keeping min(osize, nsize) bytes. Blocks up to SL_SLAB_MAX come from
 * the pool, larger ones from malloc; a block moves between them as its size
 * crosses SL_SLAB_MAX. Returns the block, NULL for a free, or NULL when out of
 * memory (then ptr is unchanged; a shrink never fails).
 */
void *sl_slab_realloc(sl_slab_t *p, void *ptr, size_t osize, size_t nsize);

/** 1 if blocks come from pools, 0 if every request goes to malloc (ASan builds). */
int sl_slab_pooling(void);

/** Bytes the pool holds in slabs (what it took from malloc), used or free. */
size_t sl_slab_reserved(const sl_slab_t *p);

#endif
