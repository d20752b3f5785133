/*
 * service.c — per-service timeout, concurrency cap and circuit breaker for the
 * calls flows make (sl.http.request / sl.exec with `service = "name"`).
 *
 * A call asks for a slot before it starts and gives it back with its outcome.
 * Slots are granted FIFO; a waiting call is woken on a later loop turn (its
 * own timer, re-armed at 0), never from inside the release that freed the
 * slot, so a release never re-enters another step's code. The breaker is
 * checked both when a call asks and when a queued call is finally granted.
 */
#include "actors/service.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/err.h"
#include "core/metrics.h"

struct sl_svc_s {
    sl_svcs_t *reg;
    char name[SL_SVC_NAME_MAX];
    const sl_config_service_t *cfg; /* NULL: implicit */
    int timeout_ms, cap, in_flight;
    int state, fails, probe_out;
    double open_until;
    sl_svc_wait_t *head, *tail; /* queued, not yet granted */
};

struct sl_svcs_s {
    struct event_base *base;
    const sl_config_t *cfg;
    int open_ms;
    int n;
    sl_svc_t *svcs[SL_SVC_MAX];
    sl_metric_t *m_calls, *m_seconds, *m_state, *m_inflight;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int name_ok(const char *n)
{
    size_t len = n ? strlen(n) : 0;
    if (len == 0 || len >= SL_SVC_NAME_MAX)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = n[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int sl_svcs_new(struct event_base *base, const sl_config_t *cfg, int open_ms, sl_svcs_t **out)
{
    static const double buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                     1,     2.5,  5,     10,   30,  60,   120};
    sl_svcs_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return SL_ENOMEM;
    r->base = base;
    r->cfg = cfg;
    r->open_ms = open_ms > 0 ? open_ms : SL_SVC_OPEN_MS;
    /* Registration returns the existing family on a second VM; NULL families are no-ops. */
    r->m_calls = sl_metrics_counter("sluice_service_calls_total",
                                    "Outbound service calls by outcome", "service,outcome");
    r->m_seconds =
        sl_metrics_histogram("sluice_service_call_seconds", "Outbound service call duration",
                             "service", buckets, (int)(sizeof(buckets) / sizeof(buckets[0])));
    r->m_state = sl_metrics_gauge(
        "sluice_circuit_state", "Circuit breaker state (0 closed, 1 open, 2 half-open)", "service");
    r->m_inflight =
        sl_metrics_gauge("sluice_service_in_flight", "Outbound service calls in flight", "service");
    *out = r;
    return 0;
}

static void set_state(sl_svc_t *s, int state)
{
    s->state = state;
    if (s->reg->m_state)
        sl_metrics_set(s->reg->m_state, (double)state, s->name);
}

static void set_inflight(sl_svc_t *s, int delta)
{
    s->in_flight += delta;
    if (s->reg->m_inflight)
        sl_metrics_set(s->reg->m_inflight, (double)s->in_flight, s->name);
}

static void count_call(sl_svc_t *s, const char *outcome)
{
    if (s->reg->m_calls)
        sl_metrics_add(s->reg->m_calls, 1, s->name, outcome);
}

sl_svc_t *sl_svcs_get(sl_svcs_t *r, const char *name)
{
    if (!name_ok(name))
        return NULL;
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->svcs[i]->name, name) == 0)
            return r->svcs[i];
    if (r->n >= SL_SVC_MAX)
        return NULL;
    sl_svc_t *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->reg = r;
    memcpy(s->name, name, strlen(name) + 1);
    s->cfg = sl_config_service(r->cfg, name);
    s->timeout_ms =
        s->cfg && s->cfg->timeout_ms > 0 ? s->cfg->timeout_ms : SL_SVC_DEFAULT_TIMEOUT_MS;
    s->cap = s->cfg && s->cfg->concurrency > 0 ? s->cfg->concurrency : SL_SVC_DEFAULT_CONCURRENCY;
    r->svcs[r->n++] = s;
    set_state(s, SL_SVC_CLOSED);
    set_inflight(s, 0);
    return s;
}

int sl_svc_timeout_ms(const sl_svc_t *s)
{
    return s->timeout_ms;
}

const sl_config_service_t *sl_svc_config(const sl_svc_t *s)
{
    return s->cfg;
}

const char *sl_svc_name(const sl_svc_t *s)
{
    return s->name;
}

int sl_svc_state(const sl_svc_t *s)
{
    return s->state;
}

int sl_svc_in_flight(const sl_svc_t *s)
{
    return s->in_flight;
}

/*
 * May this call go to the service now? Open turns half-open once its interval
 * passed; half-open lets exactly one call (the probe) through at a time.
 */
static int admit(sl_svc_t *s, sl_svc_wait_t *w)
{
    if (s->state == SL_SVC_OPEN) {
        if (now_s() < s->open_until)
            return SL_EUNAVAIL;
        set_state(s, SL_SVC_HALF_OPEN);
        s->probe_out = 0;
    }
    if (s->state == SL_SVC_HALF_OPEN) {
        if (s->probe_out)
            return SL_EUNAVAIL;
        s->probe_out = 1;
        w->probe = 1;
    }
    return 0;
}

static void unqueue(sl_svc_wait_t *w)
{
    sl_svc_t *s = w->svc;
    if (!w->queued)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        s->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        s->tail = w->prev;
    w->next = w->prev = NULL;
    w->queued = 0;
}

static void wait_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_svc_wait_t *w = arg;
    sl_svc_t *s = w->svc;
    int err = 0;

    event_free(w->ev);
    w->ev = NULL;
    if (w->granted) {
        /* The slot was reserved at release time; the breaker may have opened since. */
        err = admit(s, w);
        if (err == 0) {
            w->holds = 1;
        } else {
            set_inflight(s, -1);
            count_call(s, "circuit_open");
        }
    } else {
        unqueue(w);
        err = SL_EAGAIN;
        count_call(s, "busy");
    }
    w->granted = 0;
    w->cb(w, err, w->arg);
}

/* Hands free slots to the queue head(s); their callbacks run on a later turn. */
static void grant_waiters(sl_svc_t *s)
{
    static const struct timeval zero = {0, 0};
    while (s->head && s->in_flight < s->cap) {
        sl_svc_wait_t *w = s->head;
        unqueue(w);
        w->granted = 1;
        set_inflight(s, 1);
        evtimer_add(w->ev, &zero);
    }
}

int sl_svc_acquire(sl_svc_t *s, sl_svc_wait_t *w, int wait_ms, sl_svc_ready_cb cb, void *arg)
{
    memset(w, 0, sizeof(*w));
    w->svc = s;
    if (s->state != SL_SVC_CLOSED || s->head == NULL) {
        /* Nobody waiting ahead (or the breaker decides anyway): check it now. */
        if (s->state != SL_SVC_CLOSED && admit(s, w) != 0) {
            count_call(s, "circuit_open");
            return SL_EUNAVAIL;
        }
        if (s->in_flight < s->cap && s->head == NULL) {
            set_inflight(s, 1);
            w->holds = 1;
            return 1;
        }
        if (w->probe) {
            /* The probe must not wait behind the cap: give it a slot over the cap. */
            set_inflight(s, 1);
            w->holds = 1;
            return 1;
        }
    }
    if ((w->ev = evtimer_new(s->reg->base, wait_cb, w)) == NULL)
        return SL_ENOMEM;
    struct timeval tv = {wait_ms / 1000, (wait_ms % 1000) * 1000};
    evtimer_add(w->ev, &tv);
    w->cb = cb;
    w->arg = arg;
    w->queued = 1;
    w->prev = s->tail;
    if (s->tail)
        s->tail->next = w;
    else
        s->head = w;
    s->tail = w;
    return 0;
}

void sl_svc_cancel_wait(sl_svc_wait_t *w)
{
    if (w->ev == NULL)
        return;
    event_free(w->ev);
    w->ev = NULL;
    unqueue(w);
    if (w->granted) {
        w->granted = 0;
        set_inflight(w->svc, -1);
        grant_waiters(w->svc);
    }
}

static int is_transient(const char *o)
{
    return strcmp(o, "timeout") == 0 || strcmp(o, "unavailable") == 0 ||
           strcmp(o, "server_error") == 0 || strcmp(o, "rate_limited") == 0;
}

void sl_svc_release(sl_svc_wait_t *w, const char *outcome, double seconds)
{
    sl_svc_t *s = w->svc;
    int cancelled = strcmp(outcome, "cancelled") == 0;

    if (!w->holds)
        return;
    w->holds = 0;
    set_inflight(s, -1);
    count_call(s, outcome);
    if (!cancelled && s->reg->m_seconds)
        sl_metrics_observe(s->reg->m_seconds, seconds, s->name);

    if (w->probe) {
        w->probe = 0;
        s->probe_out = 0;
        if (s->state == SL_SVC_HALF_OPEN && !cancelled) {
            if (is_transient(outcome)) {
                s->open_until = now_s() + s->reg->open_ms / 1000.0;
                set_state(s, SL_SVC_OPEN);
            } else {
                s->fails = 0;
                set_state(s, SL_SVC_CLOSED);
            }
        }
    } else if (!cancelled && s->state == SL_SVC_CLOSED) {
        /* Calls started before the circuit opened do not move it once it is open. */
        if (is_transient(outcome)) {
            if (++s->fails >= SL_SVC_TRIP) {
                s->open_until = now_s() + s->reg->open_ms / 1000.0;
                set_state(s, SL_SVC_OPEN);
            }
        } else {
            s->fails = 0;
        }
    }
    grant_waiters(s);
}

void sl_svcs_free(sl_svcs_t *r)
{
    if (r == NULL)
        return;
    for (int i = 0; i < r->n; i++) {
        sl_svc_t *s = r->svcs[i];
        while (s->head) {
            sl_svc_wait_t *w = s->head;
            unqueue(w);
            event_free(w->ev);
            w->ev = NULL;
            w->cb(w, SL_ECANCELED, w->arg);
        }
        free(s);
    }
    free(r);
}
