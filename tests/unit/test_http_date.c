/*
 * test_http_date.c — the Date header's per-second cache (sl_http__date in
 * core/http.c): the IMF-fixdate of RFC 7231 7.1.1.1, formatted once per
 * second and reused within it, and a live server's Date matching the clock.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/http.h"

#include "check.h"

static void test_format(void)
{
    sl_http_date_t d;
    memset(&d, 0, sizeof d);
    /* RFC 7231's own example. */
    CHECK_STREQ(sl_http__date(&d, 784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
    CHECK_EQ(d.len, 29);
    CHECK_STREQ(sl_http__date(&d, 951782400), "Tue, 29 Feb 2000 00:00:00 GMT");
    CHECK_STREQ(sl_http__date(&d, 0), "Thu, 01 Jan 1970 00:00:00 GMT");
    CHECK_STREQ(sl_http__date(&d, 4102444799), "Thu, 31 Dec 2099 23:59:59 GMT");
}

static void test_cached_per_second(void)
{
    sl_http_date_t d;
    memset(&d, 0, sizeof d);
    const char *a = sl_http__date(&d, 784111777);
    /* Within the second nothing is formatted again: a mark left in the cache stays. */
    d.text[0] = 'X';
    const char *b = sl_http__date(&d, 784111777);
    CHECK(a == b);
    CHECK(b[0] == 'X');
    /* The next second is formatted afresh (the mark is gone): never a stale date. */
    CHECK_STREQ(sl_http__date(&d, 784111778), "Sun, 06 Nov 1994 08:49:38 GMT");
    /* And going back in time too (a clock step): any other second is formatted. */
    CHECK_STREQ(sl_http__date(&d, 784111770), "Sun, 06 Nov 1994 08:49:30 GMT");
}

static void test_unshowable(void)
{
    sl_http_date_t d;
    memset(&d, 0, sizeof d);
    /* Past year 9999 the format has no room: the last good value, or the epoch. */
    const char *v = sl_http__date(&d, (time_t)253402300800LL);
    CHECK_EQ(strlen(v), 29);
    sl_http__date(&d, 784111777);
    CHECK_STREQ(sl_http__date(&d, (time_t)253402300800LL), "Sun, 06 Nov 1994 08:49:37 GMT");
}

int main(void)
{
    test_format();
    test_cached_per_second();
    test_unshowable();
    return check_summary();
}
