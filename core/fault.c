/*
 * fault.c — seeded fault injection (built only with -DSL_FAULTS=ON; see
 * fault.h). Decision n is splitmix64(seed + n) < rate * 2^64: the same seed
 * gives the same faults for the same sequence of operations.
 */
#include "core/fault.h"

#include <errno.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/metrics.h"

#define SL_FAULT_DEFAULT_RATE 0.005

static atomic_int g_init;
static uint64_t g_seed;
static uint64_t g_threshold; /* a draw below this is a fault */
static atomic_uint_fast64_t g_n;

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

void sl_fault_init(void)
{
    const char *s = getenv("SL_FAULT_SEED");
    const char *r = getenv("SL_FAULT_RATE");
    double rate = SL_FAULT_DEFAULT_RATE;
    char *end = NULL;
    int seeded = 0;

    if (s && *s) {
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        if (errno == 0 && end && *end == '\0') {
            g_seed = v;
            seeded = 1;
        }
    }
    if (!seeded) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        g_seed = splitmix64((uint64_t)ts.tv_sec * 1000000007ull ^ (uint64_t)ts.tv_nsec ^
                            ((uint64_t)getpid() << 32));
    }
    if (r && *r) {
        errno = 0;
        double v = strtod(r, &end);
        if (errno == 0 && end && *end == '\0' && v >= 0.0 && v <= 1.0)
            rate = v;
        else
            sl_log(SL_LOG_WARN, "fault_rate_invalid", "{s:s, s:f}", "value", r, "using", rate);
    }
    g_threshold = rate >= 1.0 ? UINT64_MAX : (uint64_t)(rate * 18446744073709551616.0);
    atomic_store(&g_n, 0);
    atomic_store(&g_init, 1);
    /* The seed as a string: JSON numbers lose precision past 2^53. */
    char seed[24];
    snprintf(seed, sizeof seed, "%llu", (unsigned long long)g_seed);
    sl_log(SL_LOG_WARN, "faults_enabled", "{s:s, s:f, s:b}", "seed", seed, "rate", rate,
           "seed_from_env", seeded);
    sl_metrics_counter("sluice_faults_injected_total", "Faults injected (SL_FAULTS builds)",
                       "kind");
}

int sl_fault_hit(const char *kind)
{
    if (!atomic_load(&g_init))
        sl_fault_init();
    uint64_t n = atomic_fetch_add(&g_n, 1);
    if (g_threshold == 0 || splitmix64(g_seed + n) >= g_threshold)
        return 0;
    sl_metric_t *m = sl_metrics_counter("sluice_faults_injected_total",
                                        "Faults injected (SL_FAULTS builds)", "kind");
    if (m)
        sl_metrics_add(m, 1, kind);
    sl_log(SL_LOG_INFO, "fault_injected", "{s:s, s:I}", "kind", kind, "n", (json_int_t)n);
    return 1;
}

int sl_fault_pg_lose(const char *sql)
{
    static atomic_int left = -1; /* -1: not read yet */
    static char text[128];
    if (atomic_load(&left) < 0) {
        const char *e = getenv("SL_FAULT_PG_LOSE");
        int n = 0;
        if (e && *e) {
            const char *colon = strrchr(e, ':');
            size_t len = colon ? (size_t)(colon - e) : strlen(e);
            n = colon ? atoi(colon + 1) : 1;
            if (len >= sizeof text)
                len = sizeof text - 1;
            memcpy(text, e, len);
            text[len] = '\0';
        }
        atomic_store(&left, n > 0 && text[0] ? n : 0);
    }
    if (!sql || atomic_load(&left) <= 0 || !strstr(sql, text))
        return 0;
    if (atomic_fetch_sub(&left, 1) <= 0)
        return 0;
    sl_log(SL_LOG_INFO, "fault_injected", "{s:s, s:s}", "kind", "pg_lose", "match", text);
    return 1;
}
