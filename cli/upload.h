/*
 * upload.h — `sluice upload`: the command-line uploader.
 *
 *   sluice upload [--url URL] [--key KEY] --dataset ID [--batch N] [--no-follow]
 *                 [--timeout SECONDS] FILES_OR_DIRS...
 *
 * Walks the directories it is given, uploads the files in batches of N per
 * request (multipart, streamed from disk by libcurl), with a progress bar on
 * stderr, then follows the dataset's live events (SSE, resuming with
 * Last-Event-ID; polling when the stream is unavailable) until every uploaded
 * file is done or failed, and prints a summary on stdout.
 *
 * It is a client of the public API only (../shared/API.md) and runs outside
 * the server's event loop, so it uses blocking libcurl. docs/ui.md describes
 * its output; main.c dispatches to it before any server configuration is read.
 */
#ifndef SL_CLI_UPLOAD_H
#define SL_CLI_UPLOAD_H

/** Exit codes of `sluice upload`. */
enum {
    SL_UPLOAD_OK = 0,      /* every file uploaded and (unless --no-follow) done */
    SL_UPLOAD_FAILED = 1,  /* every file reached a final state; some failed */
    SL_UPLOAD_USAGE = 2,   /* bad arguments, or the server refused or was unreachable */
    SL_UPLOAD_TIMEOUT = 3, /* --timeout passed with files still processing */
};

/**
 * Runs the subcommand. argv (borrowed) starts at "upload"; SLUICE_URL and
 * SLUICE_API_KEY supply --url and --key when they are not given. Returns one
 * of the SL_UPLOAD_* exit codes; never calls exit().
 */
int sl_cli_upload_main(int argc, char **argv);

#endif
