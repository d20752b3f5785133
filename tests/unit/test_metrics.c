/*
 * test_metrics.c — unit tests for core/metrics.c: the exact text a small
 * registry renders to, plus the registry's rules (same name, arity, reset).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/metrics.h"

#include "check.h"

/* Renders and compares the whole page; prints both on a mismatch. */
static void expect_render(const char *want, int line)
{
    size_t len = 0;
    char *got = sl_metrics_render(&len);

    if (got == NULL || strcmp(got, want) != 0 || len != strlen(want)) {
        failed++;
        fprintf(stderr, "%s:%d: render mismatch\n--- want\n%s--- got\n%s---\n", __FILE__, line,
                want, got != NULL ? got : "(null)");
    } else {
        passed++;
    }
    free(got);
}
#define EXPECT_RENDER(want) expect_render((want), __LINE__)

static double queue_depth(void *arg)
{
    return (double)*(int *)arg;
}

static void test_render(void)
{
    static const double buckets[] = {0.005, 0.1, 1};
    sl_metric_t *req, *inflight, *lat, *depth;
    int q = 7;

    req = sl_metrics_counter("sl_http_requests_total", "HTTP requests.\nBy route\\status",
                             "route,status");
    inflight = sl_metrics_gauge("sl_inflight", "Requests in flight", NULL);
    lat = sl_metrics_histogram("sl_latency_seconds", "Latency", "route", buckets, 3);
    depth = sl_metrics_gauge_fn("sl_queue_depth", "Queued runs", queue_depth, &q);
    CHECK(req != NULL && inflight != NULL && lat != NULL && depth != NULL);

    sl_metrics_add(req, 1, "/v1/files", "200");
    sl_metrics_add(req, 2, "/v1/files", "200");
    sl_metrics_add(req, 1, "/v1/\"x\"\\\n", "404");
    sl_metrics_add(inflight, 3);
    sl_metrics_add(inflight, -1.5);
    sl_metrics_observe(lat, 0.001, "/a");  /* le 0.005 */
    sl_metrics_observe(lat, 0.005, "/a");  /* le 0.005 (bounds are inclusive) */
    sl_metrics_observe(lat, 0.5, "/a");    /* le 1 */
    sl_metrics_observe(lat, 2.25, "/a");   /* +Inf */
    q = 9; /* read at render time, not at registration */

    EXPECT_RENDER("# HELP sl_http_requests_total HTTP requests.\\nBy route\\\\status\n"
                  "# TYPE sl_http_requests_total counter\n"
                  "sl_http_requests_total{route=\"/v1/files\",status=\"200\"} 3\n"
                  "sl_http_requests_total{route=\"/v1/\\\"x\\\"\\\\\\n\",status=\"404\"} 1\n"
                  "# HELP sl_inflight Requests in flight\n"
                  "# TYPE sl_inflight gauge\n"
                  "sl_inflight 1.5\n"
                  "# HELP sl_latency_seconds Latency\n"
                  "# TYPE sl_latency_seconds histogram\n"
                  "sl_latency_seconds_bucket{route=\"/a\",le=\"0.005\"} 2\n"
                  "sl_latency_seconds_bucket{route=\"/a\",le=\"0.1\"} 2\n"
                  "sl_latency_seconds_bucket{route=\"/a\",le=\"1\"} 3\n"
                  "sl_latency_seconds_bucket{route=\"/a\",le=\"+Inf\"} 4\n"
                  "sl_latency_seconds_sum{route=\"/a\"} 2.756\n"
                  "sl_latency_seconds_count{route=\"/a\"} 4\n"
                  "# HELP sl_queue_depth Queued runs\n"
                  "# TYPE sl_queue_depth gauge\n"
                  "sl_queue_depth 9\n");
    sl_metrics_reset();
}

static void test_registry_rules(void)
{
    static const double buckets[] = {1, 2};
    static const double bad_buckets[] = {2, 1};
    sl_metric_t *a, *b, *g, *h;

    a = sl_metrics_counter("sl_things_total", "Things", "kind");
    b = sl_metrics_counter("sl_things_total", "Other help", "kind");
    CHECK(a != NULL && a == b);
    /* Same name, other type: refused. */
    CHECK(sl_metrics_gauge("sl_things_total", "x", NULL) == NULL);

    /* Bad names, labels and buckets. */
    CHECK(sl_metrics_counter("9lives", "x", NULL) == NULL);
    CHECK(sl_metrics_counter("bad-name", "x", NULL) == NULL);
    CHECK(sl_metrics_counter(NULL, "x", NULL) == NULL);
    CHECK(sl_metrics_counter("sl_l1", "x", "a,b,c,d,e") == NULL);
    CHECK(sl_metrics_counter("sl_l2", "x", "a,,b") == NULL);
    CHECK(sl_metrics_counter("sl_l3", "x", "a,a") == NULL);
    CHECK(sl_metrics_counter("sl_l4", "x", "__x") == NULL);
    CHECK(sl_metrics_histogram("sl_h1", "x", "le", buckets, 2) == NULL);
    CHECK(sl_metrics_histogram("sl_h2", "x", NULL, bad_buckets, 2) == NULL);
    CHECK(sl_metrics_histogram("sl_h3", "x", NULL, buckets, 33) == NULL);
    CHECK(sl_metrics_gauge_fn("sl_g0", "x", NULL, NULL) == NULL);

    /* Wrong arity is ignored; so are updates of the wrong kind. */
    sl_metrics_add(a, 1);
    sl_metrics_add(a, 1, "x", "y");
    sl_metrics_add(a, 1, "a", "b", "c", "d", "e", "f");
    sl_metrics_add(a, -5, "x"); /* counters never go down */
    sl_metrics_set(a, 42, "x"); /* set is for gauges */
    sl_metrics_observe(a, 1, "x");
    sl_metrics_add(a, 2, "x");
    sl_metrics_add(NULL, 1);

    g = sl_metrics_gauge("sl_temp", "Temp", "room,floor");
    sl_metrics_set(g, 20.5, "kitchen", "1");
    sl_metrics_set(g, 19, "kitchen");
    sl_metrics_set(g, 18, "kitchen", "1");
    sl_metrics_add(g, -0.25, "kitchen", "1");

    h = sl_metrics_histogram("sl_size_bytes", "Size", NULL, buckets, 2);
    sl_metrics_observe(h, 1.5, "extra");
    sl_metrics_observe(h, 1.5);
    sl_metrics_add(h, 1);

    EXPECT_RENDER("# HELP sl_things_total Things\n"
                  "# TYPE sl_things_total counter\n"
                  "sl_things_total{kind=\"x\"} 2\n"
                  "# HELP sl_temp Temp\n"
                  "# TYPE sl_temp gauge\n"
                  "sl_temp{room=\"kitchen\",floor=\"1\"} 17.75\n"
                  "# HELP sl_size_bytes Size\n"
                  "# TYPE sl_size_bytes histogram\n"
                  "sl_size_bytes_bucket{le=\"1\"} 0\n"
                  "sl_size_bytes_bucket{le=\"2\"} 1\n"
                  "sl_size_bytes_bucket{le=\"+Inf\"} 1\n"
                  "sl_size_bytes_sum 1.5\n"
                  "sl_size_bytes_count 1\n");
    sl_metrics_reset();
}

static void test_values_and_reset(void)
{
    sl_metric_t *c, *u;
    size_t len = 99;
    char *out;

    /* An unlabelled family renders 0 before first use; a labelled one has no series. */
    c = sl_metrics_counter("sl_big_total", "Big", NULL);
    u = sl_metrics_counter("sl_unused_total", "Unused", "l");
    CHECK(c != NULL && u != NULL);
    EXPECT_RENDER("# HELP sl_big_total Big\n# TYPE sl_big_total counter\nsl_big_total 0\n"
                  "# HELP sl_unused_total Unused\n# TYPE sl_unused_total counter\n");
    sl_metrics_add(c, 1e15);
    sl_metrics_add(c, 1e15);
    sl_metrics_add(c, 7);
    EXPECT_RENDER("# HELP sl_big_total Big\n# TYPE sl_big_total counter\n"
                  "sl_big_total 2000000000000007\n"
                  "# HELP sl_unused_total Unused\n# TYPE sl_unused_total counter\n");
    sl_metrics_reset();

    c = sl_metrics_gauge("sl_frac", "", NULL);
    sl_metrics_set(c, 0.1);
    sl_metrics_add(c, 0.2);
    EXPECT_RENDER("# HELP sl_frac \n# TYPE sl_frac gauge\nsl_frac 0.3\n");
    sl_metrics_set(c, -0.0);
    EXPECT_RENDER("# HELP sl_frac \n# TYPE sl_frac gauge\nsl_frac 0\n");
    sl_metrics_set(c, INFINITY);
    EXPECT_RENDER("# HELP sl_frac \n# TYPE sl_frac gauge\nsl_frac +Inf\n");
    sl_metrics_reset();

    /* After reset the registry is empty and names can be reused with another type. */
    out = sl_metrics_render(&len);
    CHECK(out != NULL && len == 0 && out[0] == '\0');
    free(out);
    CHECK(sl_metrics_gauge("sl_big_total", "now a gauge", NULL) != NULL);

    /* Many series: created on first use, found again afterwards. */
    u = sl_metrics_counter("sl_many_total", "Many", "i");
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 300; i++) {
            char v[16];
            snprintf(v, sizeof(v), "%d", i);
            sl_metrics_add(u, 1, v);
        }
    }
    out = sl_metrics_render(&len);
    CHECK(out != NULL && strstr(out, "sl_many_total{i=\"0\"} 2\n") != NULL);
    CHECK(out != NULL && strstr(out, "sl_many_total{i=\"299\"} 2\n") != NULL);
    free(out);
    sl_metrics_reset();
}

int main(void)
{
    test_render();
    test_registry_rules();
    test_values_and_reset();
    sl_metrics_reset();
    return check_summary();
}
