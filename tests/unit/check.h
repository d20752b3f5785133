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
#include <string.h>

#ifndef CHECK_STREAM
#define CHECK_STREAM stderr
#endif

static int passed, failed, skipped;

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

/* Counts a == b (both converted to long long) as a pass or a failure; a
 * failure prints both expressions and both values. Each argument is
 * evaluated once. */
#define CHECK_EQ(a, b)                                                                             \
    do {                                                                                           \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                            \
        if (check_a_ == check_b_) {                                                                \
            passed++;                                                                              \
        } else {                                                                                   \
            failed++;                                                                              \
            fprintf(CHECK_STREAM, "%s:%d: CHECK_EQ failed: %s == %s (%lld != %lld)\n", __FILE__,   \
                    __LINE__, #a, #b, check_a_, check_b_);                                         \
        }                                                                                          \
    } while (0)

/* Counts strcmp(a, b) == 0 as a pass or a failure (a NULL equals only NULL);
 * a failure prints both strings. Each argument is evaluated once. */
#define CHECK_STREQ(a, b)                                                                          \
    do {                                                                                           \
        const char *check_sa_ = (a), *check_sb_ = (b);                                             \
        if (check_sa_ == check_sb_ ||                                                              \
            (check_sa_ && check_sb_ && strcmp(check_sa_, check_sb_) == 0)) {                       \
            passed++;                                                                              \
        } else {                                                                                   \
            failed++;                                                                              \
            fprintf(CHECK_STREAM, "%s:%d: CHECK_STREQ failed: %s == %s (\"%s\" != \"%s\")\n",     \
                    __FILE__, __LINE__, #a, #b, check_sa_ ? check_sa_ : "(null)",                 \
                    check_sb_ ? check_sb_ : "(null)");                                             \
        }                                                                                          \
    } while (0)

/* The exit code that tells ctest a test was skipped (the tests are
 * registered with SKIP_RETURN_CODE 77). */
#define CHECK_SKIP 77

/* Records that a part of the test could not run here (a missing tool);
 * `why` is printed. check_summary then exits CHECK_SKIP instead of 0, so
 * ctest shows the test as skipped, never as a full pass. */
#define CHECK_SKIPPED(why)                                                                         \
    do {                                                                                           \
        skipped++;                                                                                 \
        fprintf(CHECK_STREAM, "%s:%d: SKIPPED: %s\n", __FILE__, __LINE__, (why));                  \
    } while (0)

/* Prints "<prefix>N passed, M failed[, K skipped]" on stdout; returns the exit
 * code: 1 when a check failed, else CHECK_SKIP when a part was skipped, else
 * 0. `prefix` is borrowed. */
static inline int check_summary_prefixed(const char *prefix)
{
    if (skipped)
        printf("%s%d passed, %d failed, %d skipped\n", prefix, passed, failed, skipped);
    else
        printf("%s%d passed, %d failed\n", prefix, passed, failed);
    return failed ? 1 : skipped ? CHECK_SKIP : 0;
}

/* Prints "N passed, M failed"; returns the exit code. */
static inline int check_summary(void)
{
    return check_summary_prefixed("");
}

#endif
