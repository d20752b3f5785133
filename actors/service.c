/*
 * service.c — per-service timeout, concurrency cap and circuit breaker for the
 * calls flows make (sl.http.request / sl.exec with `service = "name"`).
 *
 * A call asks for a slot before it starts and gives it back with its outcome.
 * Slots are granted FIFO; a waiting call is woken on a later loop turn (the
 * service's wake-up event, armed at 0, calls every granted call back), never
 * from inside the release that freed the slot, so a release never re-enters
 * another step's code. A queued call's timeout is the service's one deadline
 * timer, armed for the earliest deadline of a list kept in deadline order (a
 * call is inserted from the back: with the usual one timeout per service that
 * is O(1)); a timer per waiting call cost ~150 bytes a parked run (issue 10). The breaker is
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
 *
 * Backpressure from downstream: a hold is a pause of the limiter's key
 * "hold:<name>" (core/ratelimit: in Redis for every instance, and a local
 * copy). Every token check names it as its pause key, so for a rate-limited
 * service the hold costs nothing extra (the same script). A service without
 * limits asks the limiter synchronously (sl_ratelimit_pause_state) and goes
 * through a check only when it is held or the limiter's knowledge is stale
 * (at most one Redis round trip a second per service, or ten while pause
 * messages come in over pub/sub); otherwise it is granted as before, at once.
 * A call that finds the service held longer than its wait budget fails at
 * once (SL_EAGAIN, outcome "held") so the run can go waiting; a shorter hold
 * is waited out by the limiter's op, with the slot reserved.
 */
#include "actors/service.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/err.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/ratelimit.h"

#define RETRY_AFTER_MAX_LEN 64 /* longer values are not a Retry-After */
#define DURATION_MAX_LEN 32
#define DURATION_MAX_S 86400.0
#define COUNT_MAX 1e15 /* x-ratelimit-remaining/limit values */

/* A call holding a slot and waiting for its rate token(s). */
typedef struct tok_s {
    sl_svc_wait_t *w;
    sl_svc_t *svc;
    sl_rl_op_t *op; /* the check in progress */
    int stage;      /* next check: 0 rate, 1 tokens, 2 the hold alone, 3 done */
    int checked;    /* a check ran (it looked at the hold too) */
    double deadline;
    struct tok_s *prev, *next;
} tok_t;

struct sl_svc_s {
    sl_svcs_t *reg;
    char name[SL_SVC_NAME_MAX];
    const sl_config_service_t *cfg; /* NULL: implicit */
    int timeout_ms, cap, in_flight;
    int cap_cfg;        /* configured cap; cap is the AIMD one (1..cap_cfg) */
    int aimd_ok;        /* successes since the last change */
    double aimd_cut_at; /* when cap was last halved (0: never) */
    double tok_avg;     /* running mean of a call's tokens (the remaining-tokens floor) */
    int state, fails, probe_out;
    double open_until;
    struct sl_svc_tq_s *tqs;    /* tenants with calls queued, in serving order (a ring) */
    sl_rl_limit_t rate, tokens; /* outbound limits (rate <= 0: none) */
    char rl_name[SL_SVC_NAME_MAX + 8], rl_key[SL_SVC_NAME_MAX + 8], tok_key[SL_SVC_NAME_MAX + 8];
    char hold_key[SL_SVC_NAME_MAX + 8];
    tok_t *toks; /* calls waiting for a token */
    sl_svc_wait_t *dl_head, *dl_tail; /* queued calls by deadline (earliest first) */
    sl_svc_wait_t *rd_head, *rd_tail; /* granted calls, to be called back (FIFO) */
    struct event *dl_ev;              /* the deadline timer: pending at or before dl_head's */
    struct event *rd_ev;              /* the wake-up: pending (at 0) while rd_head is set */
};

struct sl_svcs_s {
    struct event_base *base;
    const sl_config_t *cfg;
    int open_ms;
    int aimd_cooldown_ms, aimd_every;
    sl_ratelimit_t *rl; /* borrowed; NULL: no limits and no holds */
    int n;
    sl_svc_t *svcs[SL_SVC_MAX];
    sl_metric_t *m_calls, *m_seconds, *m_state, *m_inflight, *m_cap, *m_hold, *m_holds, *m_tokens;
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

int sl_svcs_new(struct event_base *base, const sl_config_t *cfg, sl_ratelimit_t *rl, int open_ms,
                sl_svcs_t **out)
{
    static const double buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                     1,     2.5,  5,     10,   30,  60,   120};
    sl_svcs_t *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return SL_ENOMEM;
    r->base = base;
    r->cfg = cfg;
    r->rl = rl;
    r->open_ms = open_ms > 0 ? open_ms : SL_SVC_OPEN_MS;
    r->aimd_cooldown_ms = SL_SVC_AIMD_COOLDOWN_MS;
    r->aimd_every = SL_SVC_AIMD_INCREASE_EVERY;
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
    r->m_cap = sl_metrics_gauge("sluice_service_concurrency_limit",
                                "Effective concurrency cap per service (AIMD on 429s)", "service");
    r->m_hold = sl_metrics_gauge("sluice_service_hold_seconds",
                                 "Seconds the service is held back (set when a hold starts, "
                                 "refreshed as calls ask)",
                                 "service");
    r->m_holds = sl_metrics_counter("sluice_service_holds_total",
                                    "Holds set on a service by source", "service,source");
    r->m_tokens = sl_metrics_counter("sluice_service_tokens_total",
                                     "Model tokens the service's answers reported using (usage)",
                                     "service");
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

static void set_cap(sl_svc_t *s, int cap)
{
    s->cap = cap;
    if (s->reg->m_cap)
        sl_metrics_set(s->reg->m_cap, (double)cap, s->name);
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
    s->cap_cfg =
        s->cfg && s->cfg->concurrency > 0 ? s->cfg->concurrency : SL_SVC_DEFAULT_CONCURRENCY;
    if (s->cfg && s->cfg->rate_per_s > 0) {
        s->rate.rate = s->cfg->rate_per_s;
        s->rate.burst = 1;
    }
    if (s->cfg && s->cfg->tokens_per_min > 0) {
        s->tokens.rate = s->cfg->tokens_per_min / 60.0;
        s->tokens.burst = s->cfg->tokens_per_min / 6.0; /* ten seconds' worth */
        if (s->tokens.burst < SL_SVC_DEFAULT_TOKEN_ESTIMATE)
            s->tokens.burst = SL_SVC_DEFAULT_TOKEN_ESTIMATE;
    }
    snprintf(s->rl_name, sizeof s->rl_name, "service_%s", name);
    snprintf(s->rl_key, sizeof s->rl_key, "svc:%s", name);
    snprintf(s->tok_key, sizeof s->tok_key, "tok:%s", name);
    snprintf(s->hold_key, sizeof s->hold_key, "hold:%s", name);
    r->svcs[r->n++] = s;
    set_state(s, SL_SVC_CLOSED);
    set_inflight(s, 0);
    set_cap(s, s->cap_cfg);
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

int sl_svc_concurrency_limit(const sl_svc_t *s)
{
    return s->cap;
}

void sl_svcs_set_aimd(sl_svcs_t *r, int cooldown_ms, int increase_every)
{
    r->aimd_cooldown_ms = cooldown_ms >= 0 ? cooldown_ms : 0;
    r->aimd_every = increase_every >= 1 ? increase_every : 1;
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

/*
 * The calls of one tenant queued for a slot, FIFO. The service's tqs is a
 * ring of them in serving order: grant_waiters takes the first queue's head
 * and moves that queue to the back, so tenants take turns (O(1) a grant;
 * finding a tenant's queue on enqueue scans the tenants that have calls
 * queued). A queue is freed once empty.
 */
typedef struct sl_svc_tq_s {
    char tenant[37];
    sl_svc_wait_t *head, *tail;
    struct sl_svc_tq_s *prev, *next; /* the ring (circular) */
} tq_t;

static void ring_remove(sl_svc_t *s, tq_t *q)
{
    if (q->next == q) {
        s->tqs = NULL;
    } else {
        q->prev->next = q->next;
        q->next->prev = q->prev;
        if (s->tqs == q)
            s->tqs = q->next;
    }
    q->prev = q->next = q;
}

/* Appends q at the back of the ring (just before its first). */
static void ring_append(sl_svc_t *s, tq_t *q)
{
    if (!s->tqs) {
        q->prev = q->next = q;
        s->tqs = q;
        return;
    }
    q->next = s->tqs;
    q->prev = s->tqs->prev;
    s->tqs->prev->next = q;
    s->tqs->prev = q;
}

static void unqueue(sl_svc_wait_t *w)
{
    sl_svc_t *s = w->svc;
    tq_t *q = w->tq;
    if (!w->queued)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        q->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        q->tail = w->prev;
    w->next = w->prev = NULL;
    if (w->dprev)
        w->dprev->dnext = w->dnext;
    else
        s->dl_head = w->dnext;
    if (w->dnext)
        w->dnext->dprev = w->dprev;
    else
        s->dl_tail = w->dprev;
    w->dnext = w->dprev = NULL;
    w->queued = 0;
    w->tq = NULL;
    if (!q->head) {
        ring_remove(s, q);
        free(q);
    }
}

/* Arms s's deadline timer for the first queued call's deadline. */
static void arm_deadline(sl_svc_t *s)
{
    double left = s->dl_head->deadline - now_s();
    long us = left > 0 ? (long)(left * 1e6) + 1 : 0;
    struct timeval tv = {us / 1000000, us % 1000000};
    evtimer_add(s->dl_ev, &tv);
}

/*
 * Queues w at the back of its tenant's queue, and in the deadline list (from
 * its back: calls that wait as long as the ones before them go last), with
 * the timer re-armed if it is now the first. 0 or SL_ENOMEM.
 */
static int enqueue(sl_svc_t *s, sl_svc_wait_t *w, const char *tenant_in)
{
    char tenant[sizeof(((tq_t *)0)->tenant)]; /* as its queue keeps it */
    snprintf(tenant, sizeof tenant, "%s", tenant_in);
    tq_t *q = s->tqs;
    if (q) {
        do {
            if (strcmp(q->tenant, tenant) == 0)
                break;
            q = q->next;
        } while (q != s->tqs);
        if (strcmp(q->tenant, tenant) != 0)
            q = NULL;
    }
    if (!q) {
        if ((q = calloc(1, sizeof *q)) == NULL)
            return SL_ENOMEM;
        memcpy(q->tenant, tenant, sizeof q->tenant);
        ring_append(s, q);
    }
    w->tq = q;
    w->queued = 1;
    w->next = NULL;
    w->prev = q->tail;
    if (q->tail)
        q->tail->next = w;
    else
        q->head = w;
    q->tail = w;
    sl_svc_wait_t *after = s->dl_tail;
    while (after && after->deadline > w->deadline)
        after = after->dprev;
    w->dprev = after;
    w->dnext = after ? after->dnext : s->dl_head;
    if (w->dnext)
        w->dnext->dprev = w;
    else
        s->dl_tail = w;
    if (after)
        after->dnext = w;
    else
        s->dl_head = w;
    if (s->dl_head == w)
        arm_deadline(s);
    return 0;
}

/* ---- holds ---- */

static sl_ratelimit_t *limiter(const sl_svc_t *s)
{
    return s->reg->rl;
}

/* Seconds the service is held as far as this process knows (0: not), and why. */
static double hold_left(const sl_svc_t *s, char *why, size_t whylen)
{
    double left = 0;
    sl_ratelimit_t *rl = limiter(s);
    if (whylen > 0)
        why[0] = '\0';
    if (rl && sl_ratelimit_pause_state(rl, s->hold_key, &left, why, whylen) == SL_RL_PAUSED)
        return left;
    return 0;
}

double sl_svc_hold_remaining_s(const sl_svc_t *s, char *reason, size_t reasonlen)
{
    char why[SL_RL_PAUSE_WHY_MAX];
    double left = hold_left(s, why, sizeof why);
    if (reasonlen > 0) {
        if (left > 0)
            snprintf(reason, reasonlen, "%s: %s", s->name, why[0] ? why : "held");
        else
            reason[0] = '\0';
    }
    return left;
}

static void show_hold(sl_svc_t *s, double left)
{
    if (s->reg->m_hold)
        sl_metrics_set(s->reg->m_hold, left, s->name);
}

/*
 * Holds the service for `secs` on every instance (a pause of hold_key). `why`
 * is what the run's timeline shows, `source` what the log and metric say.
 * `loud`: a warn line when the hold starts or grows by a second or more
 * (pacing holds are short and frequent: debug).
 */
static void hold(sl_svc_t *s, double secs, const char *why, const char *source, int loud)
{
    sl_ratelimit_t *rl = limiter(s);
    if (!rl || !(secs > 0))
        return;
    if (secs > SL_SVC_HOLD_MAX_S)
        secs = SL_SVC_HOLD_MAX_S;
    double before = hold_left(s, NULL, 0);
    if (secs <= before || sl_ratelimit_pause(rl, s->hold_key, secs, why) != 0)
        return; /* an equal or longer hold is in place (and was shared when it was set) */
    show_hold(s, secs);
    if (s->reg->m_holds)
        sl_metrics_add(s->reg->m_holds, 1, s->name, source);
    sl_log(loud && secs - before >= 1.0 ? SL_LOG_WARN : SL_LOG_DEBUG, "service_hold",
           "{s:s, s:f, s:s, s:s}", "service", s->name, "seconds", secs, "source", source, "reason",
           why);
}

/* ---- rate tokens ---- */

/*
 * Must a call go through the limiter? Yes with a rate or token limit (the
 * hold is checked in the same script), and without one only while the
 * service is held or the limiter does not know whether it is.
 */
static int limited(const sl_svc_t *s)
{
    sl_ratelimit_t *rl = limiter(s);
    if (!rl)
        return 0;
    if (s->rate.rate > 0 || s->tokens.rate > 0)
        return 1;
    return sl_ratelimit_pause_state(rl, s->hold_key, NULL, NULL, 0) != SL_RL_CLEAR;
}

static void grant_waiters(sl_svc_t *s);
static void tok_cb(int err, double retry_after_s, void *arg);

/* Starts the next check: 0 started, 1 nothing left to check, < 0 error. */
static int tok_next(tok_t *t)
{
    sl_svc_t *s = t->svc;
    while (t->stage < 3) {
        int st = t->stage++;
        sl_rl_check_t c = {0};
        c.name = s->rl_name;
        c.pause_key = s->hold_key;
        if (st == 0) {
            if (s->rate.rate <= 0)
                continue;
            c.key = s->rl_key;
            c.lim = s->rate;
            c.cost = 1;
        } else if (st == 1) {
            if (s->tokens.rate <= 0 || t->w->tokens <= 0)
                continue;
            c.key = s->tok_key;
            c.lim = s->tokens;
            c.cost = t->w->tokens;
        } else if (t->checked) {
            continue; /* the hold was looked at with the limits */
        }
        int wait_ms = (int)((t->deadline - now_s()) * 1000.0);
        if (wait_ms < 1)
            wait_ms = 1;
        t->checked = 1;
        c.max_wait_ms = wait_ms;
        return sl_ratelimit_check_ex(limiter(s), &c, tok_cb, t, &t->op);
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
    if (err == SL_EAGAIN) {
        double left = hold_left(s, NULL, 0);
        show_hold(s, left);
        count_call(s, left > 0 ? "held" : "busy");
    } else {
        count_call(s, "cancelled");
    }
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

/* A granted call's wake-up (w is off every list): it starts, or fails. */
static void wait_granted(sl_svc_wait_t *w)
{
    sl_svc_t *s = w->svc;
    /* The slot was reserved at release time; the breaker may have opened since. */
    int err = admit(s, w);

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
    w->granted = 0;
    w->cb(w, err, w->arg);
}

/* The wake-up: calls back the granted calls (their callbacks may grant more:
 * those are called back in this same turn, still not inside a release). */
static void ready_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_svc_t *s = arg;
    (void)fd;
    (void)what;
    while (s->rd_head) {
        sl_svc_wait_t *w = s->rd_head;
        s->rd_head = w->next;
        if (s->rd_head)
            s->rd_head->prev = NULL;
        else
            s->rd_tail = NULL;
        w->next = w->prev = NULL;
        wait_granted(w);
    }
}

/* The deadline timer: the queued calls whose time is up fail with "busy". */
static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    sl_svc_t *s = arg;
    (void)fd;
    (void)what;
    double now = now_s();
    while (s->dl_head && s->dl_head->deadline <= now) {
        sl_svc_wait_t *w = s->dl_head;
        unqueue(w);
        count_call(s, "busy");
        w->cb(w, SL_EAGAIN, w->arg); /* may queue or cancel other calls: re-read the head */
    }
    if (s->dl_head)
        arm_deadline(s);
}

/* Removes a granted call from the wake-up list. */
static void ready_remove(sl_svc_t *s, sl_svc_wait_t *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        s->rd_head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        s->rd_tail = w->prev;
    w->next = w->prev = NULL;
}

/* Hands free slots to the queue head(s); their callbacks run on a later turn. */
static void grant_waiters(sl_svc_t *s)
{
    static const struct timeval zero = {0, 0};
    while (s->tqs && s->in_flight < s->cap) {
        tq_t *q = s->tqs;
        sl_svc_wait_t *w = q->head;
        s->tqs = q->next; /* this tenant's turn is taken: the next one is first */
        unqueue(w);       /* (frees q if that was its last call) */
        w->granted = 1;
        set_inflight(s, 1);
        w->prev = s->rd_tail;
        if (s->rd_tail)
            s->rd_tail->next = w;
        else
            s->rd_head = w;
        s->rd_tail = w;
        evtimer_add(s->rd_ev, &zero);
    }
}

int sl_svc_acquire(sl_svc_t *s, sl_svc_wait_t *w, int wait_ms, sl_svc_ready_cb cb, void *arg)
{
    return sl_svc_acquire_est(s, w, wait_ms, 0, cb, arg);
}

double sl_svc_wait_tokens(const sl_svc_wait_t *w)
{
    return w->tokens;
}

int sl_svc_acquire_est(sl_svc_t *s, sl_svc_wait_t *w, int wait_ms, double est_tokens,
                       sl_svc_ready_cb cb, void *arg)
{
    return sl_svc_acquire_for(s, w, NULL, wait_ms, est_tokens, cb, arg);
}

int sl_svc_acquire_for(sl_svc_t *s, sl_svc_wait_t *w, const char *tenant, int wait_ms,
                       double est_tokens, sl_svc_ready_cb cb, void *arg)
{
    memset(w, 0, sizeof(*w));
    w->svc = s;
    if (!tenant)
        tenant = ""; /* only its queue keeps it (copied): the call needs no copy */
    if (s->tokens.rate > 0) {
        double est = est_tokens > 0 ? est_tokens : SL_SVC_DEFAULT_TOKEN_ESTIMATE;
        /* the limiter charges a cost above the burst as the burst */
        w->tokens = est > s->tokens.burst ? s->tokens.burst : est;
        s->tok_avg = s->tok_avg > 0 ? 0.8 * s->tok_avg + 0.2 * est : est;
    }
    /* Held for longer than this call would wait: fail now, the run goes waiting. */
    double left = hold_left(s, NULL, 0);
    show_hold(s, left);
    if (left > 0 && left * 1000.0 > wait_ms) {
        count_call(s, "held");
        return SL_EAGAIN;
    }
    if (s->state != SL_SVC_CLOSED || s->tqs == NULL) {
        /* Nobody waiting ahead (or the breaker decides anyway): check it now. */
        if (s->state != SL_SVC_CLOSED && admit(s, w) != 0) {
            count_call(s, "circuit_open");
            return SL_EUNAVAIL;
        }
        if ((s->in_flight < s->cap && s->tqs == NULL) || w->probe) {
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
    /* The service's two events, made by its first queued call. */
    if (!s->dl_ev && (s->dl_ev = evtimer_new(s->reg->base, deadline_cb, s)) == NULL)
        return SL_ENOMEM;
    if (!s->rd_ev && (s->rd_ev = evtimer_new(s->reg->base, ready_cb, s)) == NULL)
        return SL_ENOMEM;
    w->deadline = now_s() + (wait_ms > 0 ? wait_ms : 0) / 1000.0;
    if (enqueue(s, w, tenant) != 0)
        return SL_ENOMEM;
    w->cb = cb;
    w->arg = arg;
    return 0;
}

void sl_svc_cancel_wait(sl_svc_wait_t *w)
{
    if (tok_cancel(w))
        return;
    if (w->queued) {
        unqueue(w); /* the deadline timer may fire once for nothing */
        return;
    }
    if (w->granted) {
        ready_remove(w->svc, w);
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

/* ---- parsers ---- */

static int is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Trims optional whitespace into [*b, *e); 0, or SL_EINVAL if empty or too long. */
static int trim(const char *v, size_t max, const char **b, const char **e)
{
    if (!v)
        return SL_EINVAL;
    size_t n = strnlen(v, max + 1);
    if (n > max)
        return SL_EINVAL;
    const char *p = v, *q = v + n;
    while (p < q && is_ows(*p))
        p++;
    while (q > p && is_ows(q[-1]))
        q--;
    if (p == q)
        return SL_EINVAL;
    *b = p;
    *e = q;
    return 0;
}

/* Reads exactly `n` digits at *p; -1 if they are not digits. */
static long digits(const char **p, const char *e, int n)
{
    long v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (*p >= e || **p < '0' || **p > '9')
            return -1;
        v = v * 10 + (**p - '0');
    }
    return v;
}

static int lit(const char **p, const char *e, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(e - *p) < n || memcmp(*p, s, n) != 0)
        return 0;
    *p += n;
    return 1;
}

/* A day name (short or, `long_form`, long); 1 if found. */
static int day_name(const char **p, const char *e, int long_form)
{
    static const char *const shrt[] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
    static const char *const lng[] = {"Monday", "Tuesday",  "Wednesday", "Thursday",
                                      "Friday", "Saturday", "Sunday"};
    for (int i = 0; i < 7; i++)
        if (lit(p, e, long_form ? lng[i] : shrt[i]))
            return 1;
    return 0;
}

/* A month name; 1..12, or 0. */
static int month_name(const char **p, const char *e)
{
    static const char *const m[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    for (int i = 0; i < 12; i++)
        if (lit(p, e, m[i]))
            return i + 1;
    return 0;
}

/* "hh:mm:ss" -> seconds of the day, or -1. */
static long time_of_day(const char **p, const char *e)
{
    long h = digits(p, e, 2);
    if (h < 0 || !lit(p, e, ":"))
        return -1;
    long m = digits(p, e, 2);
    if (m < 0 || !lit(p, e, ":"))
        return -1;
    long sec = digits(p, e, 2);
    if (sec < 0 || h > 23 || m > 59 || sec > 60)
        return -1;
    return h * 3600 + m * 60 + sec;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil). */
static long days_from_civil(long y, long m, long d)
{
    y -= m <= 2;
    long era = (y >= 0 ? y : y - 399) / 400;
    long yoe = y - era * 400;
    long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(long y, long m)
{
    static const int dm[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : dm[m - 1];
}

/*
 * An HTTP-date (RFC 9110 5.6.7) in [p, e) -> Unix seconds in *out; 0 or -1.
 *   IMF-fixdate  Sun, 06 Nov 1994 08:49:37 GMT
 *   rfc850-date  Sunday, 06-Nov-94 08:49:37 GMT  (two-digit year: the most
 *                recent past year with those digits, if it would be more
 *                than 50 years after `now`)
 *   asctime      Sun Nov  6 08:49:37 1994
 */
static int http_date(const char *p, const char *e, double now, double *out)
{
    const char *q = p;
    long y, mon, d, tod;
    if (day_name(&q, e, 0) && lit(&q, e, ", ")) { /* IMF-fixdate */
        if ((d = digits(&q, e, 2)) < 0 || !lit(&q, e, " ") || !(mon = month_name(&q, e)) ||
            !lit(&q, e, " ") || (y = digits(&q, e, 4)) < 0 || !lit(&q, e, " ") ||
            (tod = time_of_day(&q, e)) < 0 || !lit(&q, e, " GMT") || q != e)
            return -1;
    } else if ((q = p, day_name(&q, e, 1)) && lit(&q, e, ", ")) { /* rfc850-date */
        if ((d = digits(&q, e, 2)) < 0 || !lit(&q, e, "-") || !(mon = month_name(&q, e)) ||
            !lit(&q, e, "-") || (y = digits(&q, e, 2)) < 0 || !lit(&q, e, " ") ||
            (tod = time_of_day(&q, e)) < 0 || !lit(&q, e, " GMT") || q != e)
            return -1;
        time_t t = (time_t)now;
        struct tm tm;
        if (!gmtime_r(&t, &tm))
            return -1;
        long cur = tm.tm_year + 1900;
        y += cur / 100 * 100;
        if (y > cur + 50)
            y -= 100;
    } else if ((q = p, day_name(&q, e, 0)) && lit(&q, e, " ")) { /* asctime */
        if (!(mon = month_name(&q, e)) || !lit(&q, e, " "))
            return -1;
        if (q < e && *q == ' ') {
            q++;
            d = digits(&q, e, 1);
        } else {
            d = digits(&q, e, 2);
        }
        if (d < 0 || !lit(&q, e, " ") || (tod = time_of_day(&q, e)) < 0 || !lit(&q, e, " ") ||
            (y = digits(&q, e, 4)) < 0 || q != e)
            return -1;
    } else {
        return -1;
    }
    if (d < 1 || d > days_in_month(y, mon))
        return -1;
    *out = (double)days_from_civil(y, mon, d) * 86400.0 + (double)tod;
    return 0;
}

int sl_svc_parse_retry_after(const char *v, double now, double *out_s)
{
    const char *p, *e;
    if (trim(v, RETRY_AFTER_MAX_LEN, &p, &e) != 0)
        return SL_EINVAL;
    if (*p >= '0' && *p <= '9') { /* delay-seconds = 1*DIGIT */
        double secs = 0;
        for (const char *q = p; q < e; q++) {
            if (*q < '0' || *q > '9')
                return SL_EINVAL;
            if (secs <= SL_SVC_HOLD_MAX_S) /* past the bound the digits only add to it */
                secs = secs * 10 + (*q - '0');
        }
        *out_s = secs > SL_SVC_HOLD_MAX_S ? SL_SVC_HOLD_MAX_S : secs;
        return 0;
    }
    double at;
    if (http_date(p, e, now, &at) != 0)
        return SL_EINVAL;
    double secs = at - now;
    *out_s = secs < 0 ? 0 : secs > SL_SVC_HOLD_MAX_S ? SL_SVC_HOLD_MAX_S : secs;
    return 0;
}

int sl_svc_parse_duration(const char *v, double *out_s)
{
    static const struct {
        const char *unit;
        double secs;
    } units[] = {{"h", 3600},  {"ms", 1e-3},        {"m", 60},   {"s", 1},
                 {"us", 1e-6}, {"\xc2\xb5s", 1e-6}, {"ns", 1e-9}};
    static const int rank[] = {0, 3, 1, 2, 4, 4, 5}; /* the order units must come in */
    const char *p, *e;
    double total = 0;
    int last = -1;
    if (trim(v, DURATION_MAX_LEN, &p, &e) != 0)
        return SL_EINVAL;
    if (e - p == 1 && *p == '0') { /* Go writes a zero duration as "0" */
        *out_s = 0;
        return 0;
    }
    while (p < e) {
        double n = 0, scale = 1;
        int nd = 0, frac = 0;
        for (; p < e && ((*p >= '0' && *p <= '9') || *p == '.'); p++) {
            if (*p == '.') {
                if (frac)
                    return SL_EINVAL;
                frac = 1;
                continue;
            }
            if (++nd > 15)
                return SL_EINVAL;
            if (frac) {
                scale /= 10;
                n += (*p - '0') * scale;
            } else {
                n = n * 10 + (*p - '0');
            }
        }
        if (nd == 0)
            return SL_EINVAL;
        int u = -1;
        for (int i = 0; i < (int)(sizeof units / sizeof units[0]); i++) {
            const char *q = p;
            if (lit(&q, e, units[i].unit)) {
                u = i;
                p = q;
                break;
            }
        }
        if (u < 0 || rank[u] <= last)
            return SL_EINVAL; /* no unit, an unknown one, or out of order */
        last = rank[u];
        total += n * units[u].secs;
    }
    if (total > DURATION_MAX_S)
        return SL_EINVAL;
    *out_s = total;
    return 0;
}

/* A non-negative integer header value (x-ratelimit-remaining/limit-*); 0 or SL_EINVAL. */
static int parse_count(const char *v, double *out)
{
    const char *p, *e;
    double n = 0;
    if (trim(v, 24, &p, &e) != 0)
        return SL_EINVAL;
    for (; p < e; p++) {
        if (*p < '0' || *p > '9')
            return SL_EINVAL;
        n = n * 10 + (*p - '0');
    }
    if (n > COUNT_MAX)
        return SL_EINVAL;
    *out = n;
    return 0;
}

/* ---- backpressure from answers ---- */

/*
 * One limit's headers: `unit` is what one call uses of it (1 request, or a
 * call's tokens). Below one call's worth left: hold until the reset. Else
 * pace: the window holds `limit` units until the reset (what remains plus
 * what refills meanwhile; OpenAI's reset is when the bucket is full again),
 * or, without the limit header, only what remains; a call may start every
 * reset * unit / that seconds. Paces under SL_SVC_PACE_MIN_S are not set.
 */
static void observe_limit(sl_svc_t *s, const char *limit, const char *remaining, const char *reset,
                          double unit)
{
    double rem, rst, lim = 0;
    if (!remaining || !reset || parse_count(remaining, &rem) != 0 ||
        sl_svc_parse_duration(reset, &rst) != 0 || rst <= 0)
        return;
    if (limit && parse_count(limit, &lim) != 0)
        lim = 0;
    if (rem < unit) {
        hold(s, rst, "rate limit reached", "ratelimit_headers", 1);
        return;
    }
    double per_window = lim >= rem ? lim : rem;
    double pace = rst * unit / per_window;
    if (pace >= SL_SVC_PACE_MIN_S)
        hold(s, pace, "paced by rate limit headers", "ratelimit_headers", 0);
}

/*
 * AIMD on this process's cap: a 429 halves it (min 1) unless it was halved
 * within the cooldown (the 429s of one burst count once); every aimd_every
 * answers that are not 429 or 5xx add one, up to the configured cap.
 */
static void aimd(sl_svc_t *s, int status)
{
    if (status == 429) {
        double now = now_s();
        s->aimd_ok = 0;
        if (s->aimd_cut_at > 0 && (now - s->aimd_cut_at) * 1000.0 < s->reg->aimd_cooldown_ms)
            return;
        s->aimd_cut_at = now;
        int cap = s->cap / 2 > 1 ? s->cap / 2 : 1;
        if (cap != s->cap) {
            set_cap(s, cap);
            sl_log(SL_LOG_INFO, "service_concurrency", "{s:s, s:i, s:i, s:s}", "service", s->name,
                   "limit", cap, "configured", s->cap_cfg, "why", "429");
        }
        return;
    }
    if (status < 200 || status >= 500 || s->cap >= s->cap_cfg)
        return;
    if (++s->aimd_ok >= s->reg->aimd_every) {
        s->aimd_ok = 0;
        set_cap(s, s->cap + 1);
        grant_waiters(s);
    }
}

void sl_svc_observe(sl_svc_t *s, int status, const char *retry_after, const sl_svc_rl_headers_t *rl)
{
    double secs;
    if (!s)
        return;
    if ((status == 429 || status == 503) && retry_after &&
        sl_svc_parse_retry_after(retry_after, (double)time(NULL), &secs) == 0 && secs > 0)
        hold(s, secs, status == 429 ? "rate limited" : "unavailable", "retry_after", 1);
    if (rl) {
        observe_limit(s, rl->limit_requests, rl->remaining_requests, rl->reset_requests, 1);
        observe_limit(s, rl->limit_tokens, rl->remaining_tokens, rl->reset_tokens,
                      s->tok_avg > 0 ? s->tok_avg : SL_SVC_DEFAULT_TOKEN_ESTIMATE);
    }
    aimd(s, status);
}

void sl_svc_observe_headers(sl_svc_t *s, int status, const sl_curl_header_t *h, size_t n)
{
    sl_svc_rl_headers_t rl = {0};
    const char *retry_after = NULL;
    int any = 0;
    static const char X[] = "x-ratelimit-";
    for (size_t i = 0; i < n; i++) {
        const char *name = h[i].name;
        if (strcasecmp(name, "retry-after") == 0) {
            retry_after = h[i].value;
            continue;
        }
        if (strncasecmp(name, X, sizeof X - 1) != 0)
            continue;
        name += sizeof X - 1;
        const char **slot = strcasecmp(name, "limit-requests") == 0       ? &rl.limit_requests
                            : strcasecmp(name, "remaining-requests") == 0 ? &rl.remaining_requests
                            : strcasecmp(name, "reset-requests") == 0     ? &rl.reset_requests
                            : strcasecmp(name, "limit-tokens") == 0       ? &rl.limit_tokens
                            : strcasecmp(name, "remaining-tokens") == 0   ? &rl.remaining_tokens
                            : strcasecmp(name, "reset-tokens") == 0       ? &rl.reset_tokens
                                                                          : NULL;
        if (slot) {
            *slot = h[i].value;
            any = 1;
        }
    }
    sl_svc_observe(s, status, retry_after, any ? &rl : NULL);
}

void sl_svc_charge_tokens(sl_svc_t *s, double actual, double estimated)
{
    sl_ratelimit_t *rl = s ? limiter(s) : NULL;
    if (!rl || s->tokens.rate <= 0 || !(actual >= 0))
        return;
    if (s->reg->m_tokens)
        sl_metrics_add(s->reg->m_tokens, actual, s->name);
    s->tok_avg = s->tok_avg > 0 ? 0.8 * s->tok_avg + 0.2 * actual : actual;
    double d = actual - (estimated > 0 ? estimated : 0);
    if (fabs(d) >= 1)
        sl_ratelimit_charge(rl, s->tok_key, &s->tokens, d);
}

void sl_svcs_free(sl_svcs_t *r)
{
    if (r == NULL)
        return;
    for (int i = 0; i < r->n; i++) {
        sl_svc_t *s = r->svcs[i];
        while (s->tqs) {
            sl_svc_wait_t *w = s->tqs->head;
            unqueue(w);
            w->cb(w, SL_ECANCELED, w->arg);
        }
        while (s->rd_head) { /* granted, not yet called back: their slots go with s */
            sl_svc_wait_t *w = s->rd_head;
            ready_remove(s, w);
            w->granted = 0;
            set_inflight(s, -1);
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
        if (s->dl_ev)
            event_free(s->dl_ev);
        if (s->rd_ev)
            event_free(s->rd_ev);
        free(s);
    }
    free(r);
}
