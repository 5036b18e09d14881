/*
 * Shared by the benchmark programs of bench/: options, clocks, sockets.
 *
 * Every server program (server_asock, server_epoll, server_uv) takes the
 * same options and speaks the same line protocol on stdout, so that
 * scripts/bench drives them alike:
 *
 *   server_X -m MODE [-n N] [-x K] [-t THREADS] [-w WINDOW] [-s SIZE] [-d SECS]
 *
 *   -m echo     echo what arrives (ping-pong)
 *   -m pump     write 64 KiB blocks to every connection, forever
 *   -m pound    read 2 bytes, then close the connection
 *   -m idle     keep every connection with a pending receive; print
 *               "ready N" once N (-n) connections are accepted
 *   -m xthread  accept -t connections, then -t threads each start sends of
 *               -s bytes into one of them for -d seconds, at most -w
 *               outstanding per thread; prints "begins B secs S rate R
 *               cpu_us C"
 *   -x K        exit once K connections have closed (0: never; for the
 *               fixed-count runs under strace/perf/callgrind)
 *
 * The first line on stdout is "port P": the server listens on 127.0.0.1:P
 * (the system picks P). Servers ignore SIGPIPE; SIGTERM ends them.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#include <errno.h>
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>

#define PUMP_BLOCK 65536
#define ECHO_BUF 4096
#define LISTEN_BACKLOG 1024

struct opts {
    const char *mode;
    int conns;         /* client: connections; server idle: expected count */
    double secs;       /* duration */
    long count;        /* client: total operations (fixed-count mode) */
    int exit_after;    /* server: exit after K closed connections */
    int port;          /* client: server port */
    int threads;       /* xthread: sender threads */
    int window;        /* xthread: outstanding sends per thread */
    int size;          /* xthread: bytes per send */
    double limit;      /* hard time limit of any run, seconds */
    int gap_us;        /* client ping-pong: pause before each next ping */
};

static inline void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static inline void die_errno(const char *what) {
    die("%s: %s", what, strerror(errno));
}

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* User + system CPU of this process, microseconds. */
static inline double cpu_us(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static inline void usage(const char *prog) {
    fprintf(stderr,
            "usage: %s -m MODE [-c CONNS] [-d SECS] [-n COUNT] [-x K] [-p PORT] [-t THREADS] [-w WINDOW] [-s SIZE] "
            "[-L LIMIT_SECS] [-g GAP_US]\n",
            prog);
    exit(2);
}

static inline struct opts parse_opts(int argc, char **argv) {
    struct opts o = {.mode = NULL, .conns = 1, .secs = 2.0, .count = 0, .exit_after = 0, .port = 0,
                     .threads = 4, .window = 64, .size = 64, .limit = 120.0, .gap_us = 0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || a[1] == 0 || a[2] != 0 || i + 1 >= argc)
            usage(argv[0]);
        const char *v = argv[++i];
        switch (a[1]) {
        case 'm': o.mode = v; break;
        case 'c': o.conns = atoi(v); break;
        case 'n': o.count = atol(v); break;
        case 'd': o.secs = atof(v); break;
        case 'x': o.exit_after = atoi(v); break;
        case 'p': o.port = atoi(v); break;
        case 't': o.threads = atoi(v); break;
        case 'w': o.window = atoi(v); break;
        case 's': o.size = atoi(v); break;
        case 'L': o.limit = atof(v); break;
        case 'g': o.gap_us = atoi(v); break;
        default: usage(argv[0]);
        }
    }
    if (!o.mode || o.conns < 1 || o.threads < 1 || o.threads > 64 || o.window < 1 || o.size < 1 ||
        o.size > PUMP_BLOCK || o.secs <= 0 || o.limit <= 0 || o.gap_us < 0 || o.gap_us > 1000000)
        usage(argv[0]);
    return o;
}

static inline int mode_is(const struct opts *o, const char *m) {
    return strcmp(o->mode, m) == 0;
}

/* One 64 KiB block, the same bytes for every pump server. */
static unsigned char pump_block[PUMP_BLOCK] __attribute__((unused));

static inline void print_port(int port) {
    printf("port %d\n", port);
    fflush(stdout);
}

/* ---- raw sockets (the epoll server and the client) ---------------------- */

static inline void set_nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static inline void set_nonblocking(int fd, int on) {
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

static inline struct sockaddr_in loopback(int port) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sa;
}

/* A non-blocking listener on 127.0.0.1 with a port the system picks. */
static inline int listen_loopback(int *port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die_errno("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = loopback(0);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        die_errno("bind");
    if (listen(fd, LISTEN_BACKLOG) < 0)
        die_errno("listen");
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    *port = ntohs(sa.sin_port);
    return fd;
}

#endif
