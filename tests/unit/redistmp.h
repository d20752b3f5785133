/* A throwaway redis-server for the unit tests that need one (test_ratelimit,
 * test_service): on a free loopback port, no persistence, output to
 * /dev/null. Header-only, like pgtmp.h.
 *
 *     int port = redistmp_free_port();
 *     pid_t pid = redistmp_start(port);   // > 0, or -1
 *     ...
 *     redistmp_stop(pid);
 *
 * or, with the check that redis-server is installed and the URL made:
 *
 *     char url[64];
 *     pid_t pid = redistmp_open(url, sizeof url, &port);  // 0: not installed
 */
#ifndef SL_TESTS_UNIT_REDISTMP_H
#define SL_TESTS_UNIT_REDISTMP_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* A loopback TCP port that was free a moment ago, or -1. */
static int redistmp_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* Starts redis-server on 127.0.0.1:port; its pid (not yet listening), or -1. */
static pid_t redistmp_start(int port)
{
    char p[16];
    snprintf(p, sizeof p, "%d", port);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execlp("redis-server", "redis-server", "--port", p, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--dir", "/tmp", (char *)NULL);
        _exit(127);
    }
    return pid;
}

/*
 * A redis-server for one test: 0 when none is installed (the caller skips),
 * else its pid (-1: it could not start) with its URL in url and its port in
 * *port (may be NULL; for a restart with redistmp_start).
 */
static pid_t redistmp_open(char *url, size_t len, int *port)
{
    if (system("command -v redis-server >/dev/null 2>&1") != 0)
        return 0;
    int p = redistmp_free_port();
    if (p <= 0)
        return -1;
    snprintf(url, len, "redis://127.0.0.1:%d/0", p);
    if (port)
        *port = p;
    return redistmp_start(p);
}

static void redistmp_stop(pid_t pid)
{
    int st;
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    waitpid(pid, &st, 0);
}

#endif
