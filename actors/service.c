/*
 * service.c — per-service timeout, concurrency cap and circuit breaker for the
 * calls flows make (sl.http.request / sl.exec with `service = "name"`).
 *
 * A call asks for a slot before it starts and gives it back with its outcome.
 * Slots are granted FIFO; a waiting call is woken on a later loop turn (its
 * own timer, re-armed at 0), never from inside the release that freed the
 * slot, so a release never re-enters another step's code. The breaker is
 * checked both when a call asks and when a queued call is finally granted.
 *
 * Outbound rate limits (services.X.rate_per_s, services.openai.tokens_per_min)
 * come after the slot: a call that holds a slot then waits for its token from
 * the process's limiter (core/ratelimit: GCRA in Redis, shared by every
 * instance, burst 1 so calls are spaced evenly), so at most rate_per_s calls
 * a second start whatever the number of runs. Taking the token first would
 * let calls that then queued for a slot start in a bunch. A call that cannot
 * get its token within its timeout fails with "busy" (transient: the step is
 * retried, then the run waits with the reason in its timeline).
 */
#include "actors/service.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/err.h"
#include "core/metrics.h"
#include "core/ratelimit.h"

/*
 * What one OpenAI call is charged against tokens_per_min: the calls do not
 * tell the registry their prompt size, so this is a typical record request
 * (a few pages of text in, a small JSON object out).
 */
#define TOKENS_PER_CALL 1000

/* A call holding a slot and waiting for its rate token(s). */
typedef struct tok_s {
    sl_svc_wait_t *w;
    sl_svc_t *svc;
    sl_rl_op_t *op;  /* the check in progress */
    int stage;       /* next limit to check: 0 rate, 1 tokens, 2 done */
    double deadline;
    struct tok_s *prev, *next;
} tok_t;

struct sl_svc_s {
    sl_svcs_t *reg;
    char name[SL_SVC_NAME_MAX];
    const sl_config_service_t *cfg; /* NULL: implicit */
    int timeout_ms, cap, in_flight;
    int state, fails, probe_out;
    double open_until;
    sl_svc_wait_t *head, *tail; /* queued, not yet granted */
    sl_rl_limit_t rate, tokens;  /* outbound limits (rate <= 0: none) */
    char rl_name[SL_SVC_NAME_MAX + 8], rl_key[SL_SVC_NAME_MAX + 8], tok_key[SL_SVC_NAME_MAX + 8];
    tok_t *toks;                 /* calls waiting for a token */
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
    if (s->cfg && s->cfg->rate_per_s > 0) {
        s->rate.rate = s->cfg->rate_per_s;
        s->rate.burst = 1;
    }
    if (s->cfg && s->cfg->tokens_per_min > 0) {
        s->tokens.rate = s->cfg->tokens_per_min / 60.0;
        s->tokens.burst = s->cfg->tokens_per_min / 6.0; /* ten seconds' worth */
        if (s->tokens.burst < TOKENS_PER_CALL)
            s->tokens.burst = TOKENS_PER_CALL;
    }
    snprintf(s->rl_name, sizeof s->rl_name, "service_%s", name);
    snprintf(s->rl_key, sizeof s->rl_key, "svc:%s", name);
    snprintf(s->tok_key, sizeof s->tok_key, "tok:%s", name);
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

/* ---- rate tokens ---- */

static int limited(const sl_svc_t *s)
{
    return (s->rate.rate > 0 || s->tokens.rate > 0) && sl_ratelimit_default() != NULL;
}

static void grant_waiters(sl_svc_t *s);
static void tok_cb(int err, double retry_after_s, void *arg);

/* Starts the next limit's check: 0 started, 1 nothing left to check, < 0 error. */
static int tok_next(tok_t *t)
{
    sl_svc_t *s = t->svc;
    while (t->stage < 2) {
        int st = t->stage++;
        const sl_rl_limit_t *lim = st == 0 ? &s->rate : &s->tokens;
        if (lim->rate <= 0)
            continue;
        int wait_ms = (int)((t->deadline - now_s()) * 1000.0);
        if (wait_ms < 1)
            wait_ms = 1;
        return sl_ratelimit_check(sl_ratelimit_default(), s->rl_name,
                                  st == 0 ? s->rl_key : s->tok_key, lim,
                                  st == 0 ? 1 : TOKENS_PER_CALL, wait_ms, tok_cb, t, &t->op);
    }
    return 1;
}

static void tok_unlink(tok_t *t)
{
    sl_svc_t *s = t->svc;
    if (t->prev)
        t->prev->next = t->next;
    else
        s->toks = t->next;
    if (t->next)
        t->next->prev = t->prev;
}

/* Gives back the slot reserved for a call that will not start. */
static void unreserve(sl_svc_t *s, sl_svc_wait_t *w)
{
    set_inflight(s, -1);
    if (w->probe) {
        w->probe = 0;
        s->probe_out = 0;
    }
    grant_waiters(s);
}

/*
 * The call `w` has a slot reserved (counted in in_flight): wait for its
 * token(s), at most wait_ms. Returns 0 (w->cb fires later), 1 (no limit to
 * wait for: the slot is the caller's now), or an error (slot still reserved).
 */
static int tok_start(sl_svc_wait_t *w, int wait_ms)
{
    sl_svc_t *s = w->svc;
    tok_t *t = calloc(1, sizeof *t);
    if (!t)
        return SL_ENOMEM;
    t->w = w;
    t->svc = s;
    t->deadline = now_s() + wait_ms / 1000.0;
    int rc = tok_next(t);
    if (rc != 0) {
        free(t);
        return rc;
    }
    t->next = s->toks;
    if (s->toks)
        s->toks->prev = t;
    s->toks = t;
    return 0;
}

static void tok_cb(int err, double retry_after_s, void *arg)
{
    tok_t *t = arg;
    sl_svc_t *s = t->svc;
    sl_svc_wait_t *w = t->w;
    (void)retry_after_s;
    t->op = NULL;
    if (err == 0) {
        int rc = tok_next(t);
        if (rc == 0)
            return; /* the next limit is being checked */
        if (rc < 0)
            err = rc;
    }
    tok_unlink(t);
    free(t);
    if (err == 0) {
        w->holds = 1;
        w->cb(w, 0, w->arg);
        return;
    }
    unreserve(s, w);
    count_call(s, err == SL_EAGAIN ? "busy" : "cancelled");
    w->cb(w, err == SL_EAGAIN ? SL_EAGAIN : SL_ECANCELED, w->arg);
}

/* Cancels w's token wait if it has one; returns 1 if it had. */
static int tok_cancel(sl_svc_wait_t *w)
{
    if (!w->svc)
        return 0;
    for (tok_t *t = w->svc->toks; t; t = t->next) {
        if (t->w != w)
            continue;
        sl_ratelimit_cancel(t->op);
        tok_unlink(t);
        free(t);
        unreserve(w->svc, w);
        return 1;
    }
    return 0;
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
        if (err == 0 && limited(s)) {
            w->granted = 0;
            int rc = tok_start(w, s->timeout_ms);
            if (rc == 0)
                return; /* w->cb fires once the token comes */
            if (rc < 0) {
                unreserve(s, w);
                w->cb(w, rc, w->arg);
                return;
            }
        }
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
        if ((s->in_flight < s->cap && s->head == NULL) || w->probe) {
            /* (The probe must not wait behind the cap: it gets a slot over the cap.) */
            set_inflight(s, 1);
            if (limited(s)) {
                w->cb = cb;
                w->arg = arg;
                int rc = tok_start(w, wait_ms);
                if (rc == 0)
                    return 0; /* queued behind the rate limit */
                if (rc < 0) {
                    unreserve(s, w);
                    return rc;
                }
            }
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
    if (tok_cancel(w))
        return;
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
        while (s->toks) {
            tok_t *t = s->toks;
            sl_svc_wait_t *w = t->w;
            sl_ratelimit_cancel(t->op);
            tok_unlink(t);
            free(t);
            set_inflight(s, -1);
            w->cb(w, SL_ECANCELED, w->arg);
        }
        free(s);
    }
    free(r);
}
