/*
 * redis_testutil.h - a real redis-server for the suites that talk to Redis (tests/unit/
 * test_cache.c, test_review.c, test_breaker_sync.c).
 *
 * Header-only (every function static inline, so a suite that does not call one of them still
 * builds with -Werror=unused-function) so that each suite stays one .c file, and one CTest,
 * without touching tests/CMakeLists.txt.
 *
 * A server is a struct ap_test_redis the suite owns (zero it first): ap_test_redis_find() fills
 * bin, the suite picks a port (ap_test_free_port()), ap_test_redis_start() runs redis-server on
 * it in the foreground, without persistence, and waits until it accepts connections;
 * ap_test_redis_kill() stops it (SIGKILL, then reaped). The same struct can be started again on
 * the same port, which is how the suites test reconnecting. What a suite does beyond that
 * (flushing a database, several servers) stays in the suite.
 */
#ifndef REDIS_TESTUTIL_H
#define REDIS_TESTUTIL_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/wait.h>

struct ap_test_redis {
    pid_t pid;     /* the running server, 0 when none */
    int port;      /* loopback port, set by the suite before ap_test_redis_start() */
    char bin[256]; /* the redis-server executable, set by ap_test_redis_find() */
};

static inline void ap_test_sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* A loopback TCP port free right now (bound to port 0, then released); -1 on failure. */
static inline int ap_test_free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
    if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
        port = ntohs(a.sin_port);
    if (fd >= 0)
        close(fd);
    return port;
}

/* True when something accepts TCP connections on 127.0.0.1:port. */
static inline bool ap_test_port_open(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    bool ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Looks for an executable redis-server in the usual directories and puts its path in r->bin.
 * False when there is none (the suites then skip their Redis cases). */
static inline bool ap_test_redis_find(struct ap_test_redis *r)
{
    static const char *const dirs[] = {"/usr/bin", "/usr/local/bin", "/usr/sbin",
                                       "/opt/homebrew/bin"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        snprintf(r->bin, sizeof(r->bin), "%s/redis-server", dirs[i]);
        if (access(r->bin, X_OK) == 0)
            return true;
    }
    return false;
}

/* Starts r->bin on 127.0.0.1:r->port (no RDB, no AOF, output to /dev/null) and waits up to 5 s
 * until it accepts connections. False when fork fails, the server exits (r->pid is then 0) or
 * it is not accepting after 5 s (r->pid is still set: ap_test_redis_kill() it). */
static inline bool ap_test_redis_start(struct ap_test_redis *r)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", r->port);
    r->pid = fork();
    if (r->pid < 0)
        return false;
    if (r->pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) {
            dup2(devnull, STDOUT_FILENO);
            dup2(devnull, STDERR_FILENO);
        }
        execl(r->bin, r->bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly",
              "no", "--daemonize", "no", "--protected-mode", "no", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 500; i++) { /* 5 s */
        if (ap_test_port_open(r->port))
            return true;
        if (waitpid(r->pid, NULL, WNOHANG) == r->pid) {
            r->pid = 0;
            return false;
        }
        ap_test_sleep_ms(10);
    }
    return false;
}

/* Kills the server (SIGKILL) and reaps it; r->pid is 0 afterwards. A no-op when none runs. */
static inline void ap_test_redis_kill(struct ap_test_redis *r)
{
    if (r->pid > 0) {
        kill(r->pid, SIGKILL);
        waitpid(r->pid, NULL, 0);
        r->pid = 0;
    }
}

#endif /* REDIS_TESTUTIL_H */
