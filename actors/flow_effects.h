/*
 * flow_effects.h — the seam where a step's effects leave the flow runtime.
 *
 * Everything a step does to the world outside its VM goes through this table
 * of functions: the rows it writes and reads (an artifact's row, the record,
 * the file's text source) and the calls it makes (sl.http.request, sl.exec).
 * The engine's implementation (sl_flow_effects_engine, actors/flow_effects.c)
 * is Postgres, libcurl and core/exec; `sluice flow test`'s
 * (actors/flow_offline.c) keeps rows in memory and answers calls from
 * recorded cassettes (or runs tools for real). The runtime above it — the
 * sandbox, the budgets, the service policy (slots, circuit breaker, holds),
 * the pending-op protocol — is the same in both, so a flow that passes
 * offline ran the same code it runs in the engine.
 *
 * Contract of every function that takes a callback: 0 and the callback fires
 * exactly once, on a later loop turn, never from inside the call; or a
 * negative SL_E* code and it never fires. The row functions cannot be
 * cancelled (their callback always fires; the caller checks whether its op
 * was detached). Every pointer argument is borrowed for the call (copied).
 */
#ifndef SL_FLOW_EFFECTS_H
#define SL_FLOW_EFFECTS_H

#include <stdint.h>

#include "core/curl.h"
#include "core/exec.h"

/** Whose row: the step's run. Strings borrowed for the call. */
typedef struct sl_flow_fx_ids_s {
    const char *tenant_id, *dataset_id, *file_id, *run_id;
    const char *pipeline;
} sl_flow_fx_ids_t;

/** A row operation's result, borrowed until the callback returns. */
typedef struct sl_flow_fx_res_s {
    int err;         /* 0, or SL_E*: SL_ENOTFOUND = no such row (the file is gone) */
    const char *id;  /* artifact_put: the artifact's id */
    const char *replaced; /* artifact_put: the store key the row pointed at before and no longer
                             does (a rewrite of the kind), for the caller to delete; else NULL */
    const char *key; /* artifact_get: its storage key; NULL when the row holds the bytes */
    long long n;     /* artifact_get: its size in bytes; record_put: the record's version */
    const char *data; /* artifact_get: the bytes (n of them) when the row holds them, else NULL */
} sl_flow_fx_res_t;

typedef void (*sl_flow_fx_cb)(const sl_flow_fx_res_t *res, void *arg);

/*
 * An artifact's bytes of at most this many, given as data with a mime, go in
 * its row (artifacts.data, migration 018) when the host takes them
 * (sl_flow_effects_t.inline_max), not in the store.
 */
#define SL_ARTIFACT_INLINE_MAX (32 * 1024)

/**
 * An artifact whose row is to be written: its bytes stored under key (data
 * NULL), or in the row itself (data: size bytes, borrowed for the call; key NULL).
 */
typedef struct sl_flow_fx_artifact_s {
    const char *id; /* a new uuid (the row keeps its old id on a rewrite) */
    const char *kind, *mime, *sha256_hex, *key;
    const char *data;
    uint64_t size;
} sl_flow_fx_artifact_t;

typedef struct sl_flow_effects_s {
    /** 1 when rows can be written and read at all (else the primitives say not_configured). */
    int (*rows_ready)(void *self);
    /** Upserts the run's artifact of a->kind (one per run and kind); res.id. */
    int (*artifact_put)(void *self, const sl_flow_fx_ids_t *ids, const sl_flow_fx_artifact_t *a,
                        sl_flow_fx_cb cb, void *arg);
    /**
     * The run's artifact of `kind`: res.n (size) and res.key, or res.data when
     * the row holds the bytes; SL_ENOTFOUND when none.
     */
    int (*artifact_get)(void *self, const sl_flow_fx_ids_t *ids, const char *kind, sl_flow_fx_cb cb,
                        void *arg);
    /** A new version of the file's record for this run (record and prov are JSON text); res.n. */
    int (*record_put)(void *self, const sl_flow_fx_ids_t *ids, const char *record_json,
                      const char *prov_json, sl_flow_fx_cb cb, void *arg);
    /** Sets the file's text_source; SL_ENOTFOUND when the file is gone. */
    int (*text_source)(void *self, const sl_flow_fx_ids_t *ids, const char *name, sl_flow_fx_cb cb,
                       void *arg);
    /**
     * An outbound HTTP request for `service` (NULL: none named), as
     * sl_curl_request; *handle is what http_cancel takes (the callback then
     * fires with SL_ECANCELED, later).
     */
    int (*http)(void *self, const char *service, const sl_curl_req_opts_t *o, sl_curl_cb cb,
                void *arg, void **handle);
    void (*http_cancel)(void *self, void *handle);
    /** A tool run, as sl_exec_start (the callback's sl_exec_t may be NULL); cancel as above. */
    int (*exec)(void *self, const sl_exec_opts_t *o, sl_exec_cb cb, void *arg, void **handle);
    void (*exec_cancel)(void *self, void *handle);
    /**
     * Artifacts given as data with a mime, of at most this many bytes, are
     * written in their row (artifact_put with data): SL_ARTIFACT_INLINE_MAX
     * for the engine; 0 = every artifact goes to the store (`sluice flow
     * test`, whose report names each artifact's file).
     */
    size_t inline_max;
} sl_flow_effects_t;

/**
 * The engine's effects: Postgres (self's pg), libcurl (self's curl), core/exec
 * (self's base). self is the VM's sl_flow_host_t (flow.h), borrowed.
 */
extern const sl_flow_effects_t sl_flow_effects_engine;

#endif
