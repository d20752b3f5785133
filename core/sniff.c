/*
 * sniff.c — a small pool of libmagic cookies (sniff.h).
 *
 * Each slot has its own mutex; a sniff tries every loaded slot's lock
 * without waiting, then claims an unloaded slot the same way (its trylock
 * is the claim: no other lock is needed), and only when every slot is
 * loaded and busy waits on one, chosen round robin. A slot whose load
 * failed stays unloaded and is tried again by the next sniff that needs
 * one.
 */
#include "sniff.h"

#include <magic.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct {
    pthread_mutex_t mu; /* guards cookie's use */
    magic_t cookie;     /* NULL until loaded; closed by sl_sniff_free */
    atomic_int loaded;  /* cookie is set (read without mu to pick a slot) */
} slot_t;

struct sl_sniff_s {
    int nslots;       /* min(online CPUs, SL_SNIFF_MAX), >= 1 */
    atomic_uint next; /* round robin among busy slots */
    slot_t slot[SL_SNIFF_MAX];
};

sl_sniff_t *sl_sniff_new(void)
{
    sl_sniff_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    s->nslots = n < 1 ? 1 : n > SL_SNIFF_MAX ? SL_SNIFF_MAX : (int)n;
    for (int i = 0; i < s->nslots; i++) {
        if (pthread_mutex_init(&s->slot[i].mu, NULL) != 0) {
            while (i-- > 0)
                pthread_mutex_destroy(&s->slot[i].mu);
            free(s);
            return NULL;
        }
    }
    return s;
}

void sl_sniff_free(sl_sniff_t *s)
{
    if (!s)
        return;
    for (int i = 0; i < s->nslots; i++) {
        if (s->slot[i].cookie)
            magic_close(s->slot[i].cookie);
        pthread_mutex_destroy(&s->slot[i].mu);
    }
    free(s);
}

/* Loads sl's cookie; called with sl->mu held. */
static void slot_load(slot_t *sl)
{
    magic_t m = magic_open(MAGIC_MIME_TYPE);
    if (m && magic_load(m, NULL) != 0) {
        magic_close(m);
        m = NULL;
    }
    sl->cookie = m;
    atomic_store(&sl->loaded, m != NULL);
}

/* Returns a slot whose mu this thread holds. */
static slot_t *slot_take(sl_sniff_t *s)
{
    for (int i = 0; i < s->nslots; i++) {
        slot_t *sl = &s->slot[i];
        if (atomic_load(&sl->loaded) && pthread_mutex_trylock(&sl->mu) == 0)
            return sl;
    }
    /* every loaded slot is busy: load another if there is room (another
     * thread may have loaded it since the check: then it is used as is) */
    for (int i = 0; i < s->nslots; i++) {
        slot_t *sl = &s->slot[i];
        if (!atomic_load(&sl->loaded) && pthread_mutex_trylock(&sl->mu) == 0) {
            if (!sl->cookie)
                slot_load(sl);
            return sl;
        }
    }
    slot_t *sl = &s->slot[atomic_fetch_add(&s->next, 1) % (unsigned)s->nslots];
    pthread_mutex_lock(&sl->mu);
    if (!sl->cookie) /* a slot that failed to load: try once more */
        slot_load(sl);
    return sl;
}

void sl_sniff_mime(sl_sniff_t *s, const void *buf, size_t len, char *out, size_t outlen)
{
    if (len == 0) {
        snprintf(out, outlen, "application/x-empty");
        return;
    }
    slot_t *sl = slot_take(s);
    const char *mime = sl->cookie ? magic_buffer(sl->cookie, buf, len) : NULL;
    /* The string lives in the cookie: copied before letting go of it. */
    snprintf(out, outlen, "%s", mime && *mime ? mime : "application/octet-stream");
    pthread_mutex_unlock(&sl->mu);
}

int sl_sniff_loaded(sl_sniff_t *s)
{
    int n = 0;
    for (int i = 0; i < s->nslots; i++)
        n += atomic_load(&s->slot[i].loaded);
    return n;
}
