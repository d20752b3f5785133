/*
 * flow.h — `sluice flow`: tools for flow authors that need no server.
 *
 *   sluice flow check [--lib DIR] FILE...
 *   sluice flow test FLOW --file SAMPLE [--replay DIR] [--record DIR] ...
 *   sluice flow test --cases DIR
 *
 * Checks each flow file the way the engine does before it runs one
 * (actors/flow_check.h: loaded in the same sandbox; start, transitions,
 * reachability, a way to end from every step, required modules, option
 * ranges), offline: no configuration, Postgres, Redis or server. Every error
 * of every file is printed on stderr as "FILE:LINE: message", one per line,
 * the form editors and CI annotate; a valid file prints "FILE: ok" on stdout.
 * `require "x"` finds x.lua in --lib DIR, else in the lib/ folder next to the
 * file when there is one, else in lua-flows/lib (docs/flows.md).
 */
#ifndef SL_CLI_FLOW_H
#define SL_CLI_FLOW_H

/** Exit codes of `sluice flow check`. */
enum {
    SL_FLOW_CLI_OK = 0,      /* every file is valid */
    SL_FLOW_CLI_INVALID = 1, /* some file has errors (or cannot be read) */
    SL_FLOW_CLI_USAGE = 2,   /* bad arguments */
};

/**
 * Runs the subcommand. argv (borrowed) starts at "flow". Returns one of the
 * SL_FLOW_CLI_* exit codes; never calls exit().
 */
int sl_cli_flow_main(int argc, char **argv);

/**
 * `sluice flow test` (cli/flowtest.c): a flow run offline, or a folder of
 * cases (actors/flow_offline.h). argv (borrowed) starts at "test". Returns
 * SL_FLOW_CLI_OK (passed), SL_FLOW_CLI_INVALID (failed), SL_FLOW_CLI_USAGE.
 */
int sl_cli_flow_test_main(int argc, char **argv);

#endif
