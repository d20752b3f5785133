/* The unit tests' shared scaffolding: a CHECK that counts passes and
 * failures and a summary that prints "N passed, M failed" and gives the exit
 * code. Header-only (each test is one .c file); include it once, after the
 * system headers.
 *
 * A test that captures stderr defines CHECK_STREAM as stdout before including
 * this, so failure lines are not swallowed by the capture. Helpers that report
 * their own failure (with the caller's line) bump `passed`/`failed` directly. */
#ifndef SL_TESTS_UNIT_CHECK_H
#define SL_TESTS_UNIT_CHECK_H

#include <stdio.h>

#ifndef CHECK_STREAM
#define CHECK_STREAM stderr
#endif

static int passed, failed;

/* Counts `expr` as a pass or a failure; a failure prints file:line and the
 * expression. Never returns early. */
#define CHECK(expr)                                                                                \
    do {                                                                                           \
        if (expr) {                                                                                \
            passed++;                                                                              \
        } else {                                                                                   \
            failed++;                                                                              \
            fprintf(CHECK_STREAM, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #expr);         \
        }                                                                                          \
    } while (0)

/* Prints "<prefix>N passed, M failed" on stdout; returns the exit code (0 when
 * nothing failed, else 1). `prefix` is borrowed. */
static inline int check_summary_prefixed(const char *prefix)
{
    printf("%s%d passed, %d failed\n", prefix, passed, failed);
    return failed ? 1 : 0;
}

/* Prints "N passed, M failed"; returns the exit code. */
static inline int check_summary(void)
{
    return check_summary_prefixed("");
}

#endif
