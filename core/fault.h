/*
 * fault.h — fault injection for tests: with the build option -DSL_FAULTS=ON a
 * seeded fraction of Postgres batches (db/pg.c), Redis commands
 * (core/redis.c) and outbound HTTP transfers (core/curl.c) fail as if the
 * dependency had dropped the connection. Without the option every call here
 * compiles to nothing (sl_fault_hit is the constant 0), so the injection
 * points cost nothing in a production build.
 *
 * Environment (read once, by sl_fault_init): SL_FAULT_RATE, the probability
 * of a fault per operation (0..1, default 0.005); SL_FAULT_SEED, a decimal
 * 64-bit seed (default: from the clock and pid). The seed and rate are logged
 * at start ("faults_enabled"), so a failing run can be replayed: the decisions
 * are a pure function of (seed, the order of calls). Each fault is counted in
 * sluice_faults_injected_total{kind}.
 *
 * SL_FAULT_PG_LOSE=<text>[:<count>] (default count 1) is a targeted fault for
 * one test: of the Postgres batches whose first statement contains <text>,
 * the first <count> that ran and returned rows lose their answer (as a
 * connection that drops after the commit). It does not depend on the rate
 * (SL_FAULT_RATE=0 leaves only it).
 */
#ifndef SL_FAULT_H
#define SL_FAULT_H

#ifdef SL_FAULTS
/**
 * Reads the environment, logs the seed and registers the metric. Call once
 * per process, from the loop thread, after the metrics registry exists; a
 * call to sl_fault_hit before it initialises with the defaults.
 */
void sl_fault_init(void);

/**
 * 1 if the operation of this kind ("pg", "redis", "curl"; a static string)
 * should fail now, else 0. Counts the hit. Thread-safe (the metric is only
 * touched from the loop thread, where every injection point runs).
 */
int sl_fault_hit(const char *kind);

/** 1 if a batch that ran and returned rows, whose first statement is `sql`, is
 * one SL_FAULT_PG_LOSE names (counted). */
int sl_fault_pg_lose(const char *sql);
#else
#define sl_fault_init() ((void)0)
#define sl_fault_hit(kind) 0
#define sl_fault_pg_lose(sql) 0
#endif

#endif
