/*
 * slab.c — size-class pools without block headers (see slab.h).
 */
#include "core/slab.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NCLASS (SL_SLAB_MAX / 8)

#if defined(__SANITIZE_ADDRESS__)
#define SLAB_PASSTHROUGH 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SLAB_PASSTHROUGH 1
#endif
#endif
#ifndef SLAB_PASSTHROUGH
#define SLAB_PASSTHROUGH 0
#endif

typedef struct slab_s {
    struct slab_s *next; /* the pool's list of slabs, to free them */
} slab_t;

typedef struct free_s {
    struct free_s *next;
} free_t;

typedef struct class_s {
    free_t *free; /* freed blocks of this class */
    char *bump;   /* the rest of the newest slab, not handed out yet */
    char *end;
} class_t;

struct sl_slab_s {
    class_t cls[NCLASS];
    slab_t *slabs;
    size_t reserved;
};

sl_slab_t *sl_slab_new(void)
{
    return calloc(1, sizeof(sl_slab_t));
}

void sl_slab_free(sl_slab_t *p)
{
    if (!p)
        return;
    for (slab_t *s = p->slabs, *n; s; s = n) {
        n = s->next;
        free(s);
    }
    free(p);
}

int sl_slab_pooling(void)
{
    return !SLAB_PASSTHROUGH;
}

size_t sl_slab_reserved(const sl_slab_t *p)
{
    return p->reserved;
}

/* Class of a small size (1..SL_SLAB_MAX): blocks of (k + 1) * 8 bytes. */
static size_t class_of(size_t n)
{
    return (n - 1) / 8;
}

static int small(size_t n)
{
    return !SLAB_PASSTHROUGH && n > 0 && n <= SL_SLAB_MAX;
}

static void *class_alloc(sl_slab_t *p, size_t k)
{
    class_t *c = &p->cls[k];
    size_t bsize = (k + 1) * 8;
    if (c->free) {
        free_t *f = c->free;
        c->free = f->next;
        return f;
    }
    if (c->bump == NULL || (size_t)(c->end - c->bump) < bsize) {
        /* A new slab: the header, then blocks (8-byte aligned; Lua's objects
         * need no more than the alignment of a pointer, a double or a
         * long long, all 8 on this ABI). */
        slab_t *s = malloc(SL_SLAB_BYTES);
        if (!s)
            return NULL;
        s->next = p->slabs;
        p->slabs = s;
        p->reserved += SL_SLAB_BYTES;
        c->bump = (char *)s + sizeof(slab_t);
        c->end = (char *)s + SL_SLAB_BYTES;
    }
    void *b = c->bump;
    c->bump += bsize;
    return b;
}

static void class_release(sl_slab_t *p, void *b, size_t k)
{
    free_t *f = b;
    f->next = p->cls[k].free;
    p->cls[k].free = f;
}

void *sl_slab_realloc(sl_slab_t *p, void *ptr, size_t osize, size_t nsize)
{
    if (ptr == NULL)
        osize = 0; /* Lua passes the object's type there: not a size */
    if (nsize == 0) {
        if (ptr) {
            if (small(osize))
                class_release(p, ptr, class_of(osize));
            else
                free(ptr);
        }
        return NULL;
    }
    if (ptr && small(osize) && small(nsize) && class_of(osize) == class_of(nsize))
        return ptr; /* the block has room already */
    if (ptr && !small(osize) && !small(nsize))
        return realloc(ptr, nsize);
    void *n = small(nsize) ? class_alloc(p, class_of(nsize)) : malloc(nsize);
    if (!n) {
        /* a shrink must not fail: keep the larger block */
        return ptr && nsize <= osize ? ptr : NULL;
    }
    if (ptr) {
        memcpy(n, ptr, osize < nsize ? osize : nsize);
        if (small(osize))
            class_release(p, ptr, class_of(osize));
        else
            free(ptr);
    }
    return n;
}
