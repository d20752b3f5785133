/*
 * ratelimit_bench.c — what one rate-limit check costs: the local GCRA table,
 * and the Redis script (EVALSHA) one check at a time (a request waiting for
 * its answer: the latency it adds) and 64 in flight (the throughput of one
 * instance's connection). Starts its own redis-server on a free port.
 *
 *   cmake --build build --target ratelimit_bench && build/ratelimit_bench [N]
 *
 * Prints one figure per line with its unit and what it is compared against.
 */
#include "core/err.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/ratelimit.h"
#include "core/redis.h"

#include <arpa/inet.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static struct event_base *base;
static sl_ratelimit_t *rl;
static int done, target, sent;
static sl_rl_limit_t lim = {1e9, 1e9}; /* never limits: every check is a full decision */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void send_one(void);

static void cb(int err, double retry, void *arg)
{
    (void)retry;
    (void)arg;
    if (err != 0)
        fprintf(stderr, "check failed: %d\n", err);
    done++;
    if (sent < target)
        send_one();
}

static void send_one(void)
{
    char key[32];
    snprintf(key, sizeof key, "bench:%d", sent % 100);
    sent++;
    if (sl_ratelimit_check(rl, "bench", key, &lim, 1, 0, cb, NULL, NULL) != 0) {
        fprintf(stderr, "check not started\n");
        exit(1);
    }
}

/* Runs n checks with `depth` in flight; returns microseconds per check. */
static double run(int n, int depth)
{
    done = sent = 0;
    target = n;
    double t0 = now_s();
    for (int i = 0; i < depth && sent < n; i++)
        send_one();
    while (done < n)
        event_base_loop(base, EVLOOP_ONCE);
    return (now_s() - t0) * 1e6 / n;
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        return -1;
    close(fd);
    return ntohs(a.sin_port);
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? (int)strtol(argv[1], NULL, 10) : 20000;
    if (n <= 0)
        n = 20000;
    signal(SIGPIPE, SIG_IGN);
    sl_log_set_level("error");
    base = event_base_new();

    if (sl_ratelimit_new(base, NULL, &rl) != 0)
        return 1;
    run(1000, 1); /* warm up */
    double local1 = run(n, 1);
    double local64 = run(n, 64);
    sl_ratelimit_free(rl);
    printf("ratelimit local: %.2f us/check one at a time (the loop turn each check waits for "
           "included)\n",
           local1);
    printf("ratelimit local: %.2f us/check 64 in flight\n", local64);

    int port = free_port();
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        int dn = open("/dev/null", O_WRONLY);
        dup2(dn, 1);
        dup2(dn, 2);
        execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", "/tmp", (char *)NULL);
        _exit(127);
    }
    char url[64];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/0", port);
    sl_redis_t *redis;
    if (sl_redis_new(base, url, &redis) != 0)
        return 1;
    struct event *t = evtimer_new(base, tick, NULL);
    double deadline = now_s() + 20;
    while (!sl_redis_up(redis) && now_s() < deadline) {
        struct timeval tv = {0, 20000};
        evtimer_add(t, &tv);
        event_base_loop(base, EVLOOP_ONCE);
    }
    event_free(t);
    if (!sl_redis_up(redis)) {
        fprintf(stderr, "redis-server did not come up\n");
        kill(pid, SIGTERM);
        return 1;
    }
    sl_ratelimit_new(base, redis, &rl);
    run(1000, 1); /* warm up; loads the script */
    double redis1 = run(n, 1);
    double redis64 = run(n, 64);
    int shared = sl_ratelimit_shared(rl);
    sl_ratelimit_free(rl);
    sl_redis_free(redis);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    printf("ratelimit redis: %.2f us/check one at a time (a request's added latency; "
           "loopback round trip + script)%s\n",
           redis1, shared ? "" : " [FELL BACK TO LOCAL]");
    printf("ratelimit redis: %.2f us/check 64 in flight (%.0f checks/s on one connection)\n",
           redis64, 1e6 / redis64);
    printf("ratelimit redis vs local (one at a time): %.1fx\n", redis1 / local1);
    event_base_free(base);
    sl_metrics_reset();
    return 0;
}
