/*
 * The one client of every workload, the same program whichever server it
 * talks to: a single-threaded, level-triggered epoll loop on 127.0.0.1.
 *
 *   client -m pingpong -p PORT -c CONNS (-d SECS | -n ROUND_TRIPS) [-g GAP_US]
 *       each connection sends "PING\n" and waits for the 5-byte echo, one
 *       in flight; prints "result RT_PER_S ops RT secs S". -g pauses the
 *       client GAP_US µs before each next ping (whole client: meant for one
 *       connection), so that a server slowed by strace or callgrind still
 *       finds no data waiting when it begins its next receive, as at full
 *       speed
 *   client -m pump -p PORT -c CONNS -d SECS
 *       reads everything the server writes; prints "result GBIT_S ops BYTES secs S"
 *   client -m pound -p PORT -c CONNS (-d SECS | -n CONNECTIONS)
 *       CONNS concurrent: connect, send 2 bytes, wait for the server's
 *       close, reconnect; prints "result ACCEPTS_PER_S ops N secs S errors E"
 *   client -m idle -p PORT -c CONNS [-d HOLD_SECS]
 *       opens CONNS connections, prints "connected N", holds them (idle)
 *       until killed or HOLD_SECS pass
 *   client -m sink -p PORT -c CONNS [-d MAX_SECS]
 *       reads and discards until every connection ends
 *
 * TCP_NODELAY on every connection. -L bounds any run (default 120 s).
 */
#include "common.h"

#include <signal.h>
#include <sys/epoll.h>

static struct opts o;
static int ep;
static unsigned char rbuf[256 * 1024];

static int connect_blocking(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die_errno("socket");
    set_nodelay(fd);
    struct sockaddr_in sa = loopback(o.port);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        die_errno("connect");
    set_nonblocking(fd, 1);
    return fd;
}

static void add(int fd, uint32_t events, uint64_t tag) {
    struct epoll_event ev = {.events = events, .data.u64 = tag};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        die_errno("epoll_ctl add");
}

static void send_all(int fd, const void *p, size_t n) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w != (ssize_t)n)
        die("send of %zu bytes: %zd (%s)", n, w, w < 0 ? strerror(errno) : "short");
}

/* ---- ping-pong ------------------------------------------------------------ */

static const char PING[] = "PING\n";
#define PING_LEN 5

static int pingpong(void) {
    int n = o.conns;
    int *fds = calloc((size_t)n, sizeof *fds);
    int *have = calloc((size_t)n, sizeof *have);   /* echo bytes received */
    long *left = calloc((size_t)n, sizeof *left);   /* count mode: round trips to do */
    for (int i = 0; i < n; i++) {
        fds[i] = connect_blocking();
        add(fds[i], EPOLLIN, (uint64_t)i);
        left[i] = o.count > 0 ? o.count / n + (i < o.count % n) : -1;
    }
    long done = 0;
    int open = n;
    double t0 = now_s(), end = t0 + (o.count > 0 ? o.limit : o.secs), hard = t0 + o.limit;
    for (int i = 0; i < n; i++) {
        if (left[i] == 0) {
            close(fds[i]);
            fds[i] = -1;
            open--;
            continue;
        }
        send_all(fds[i], PING, PING_LEN);
    }
    struct epoll_event evs[256];
    int stopping = 0;
    while (open > 0) {
        double t = now_s();
        if (t >= hard) {
            if (o.count > 0)
                die("pingpong: time limit of %.0f s reached with %d connections unfinished", o.limit, open);
            break;
        }
        if (t >= end && o.count == 0)
            stopping = 1; /* no new pings; collect the echoes in flight */
        int k = epoll_wait(ep, evs, 256, 100);
        for (int e = 0; e < k; e++) {
            int i = (int)evs[e].data.u64;
            char in[64];
            ssize_t r = read(fds[i], in, sizeof in);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                die("pingpong: connection %d ended early (%s)", i, r == 0 ? "EOF" : strerror(errno));
            }
            for (ssize_t j = 0; j < r; j++)
                if (in[j] != PING[(have[i] + j) % PING_LEN])
                    die("pingpong: wrong echo byte on connection %d", i);
            have[i] += (int)r;
            if (have[i] > PING_LEN)
                die("pingpong: more than one echo on connection %d", i);
            if (have[i] < PING_LEN)
                continue;
            have[i] = 0;
            done++;
            if (left[i] > 0)
                left[i]--;
            if (left[i] == 0 || stopping) {
                close(fds[i]);
                fds[i] = -1;
                open--;
                continue;
            }
            if (o.gap_us)
                usleep((useconds_t)o.gap_us);
            send_all(fds[i], PING, PING_LEN);
        }
    }
    double secs = now_s() - t0;
    printf("result %.0f ops %ld secs %.3f\n", (double)done / secs, done, secs);
    return 0;
}

/* ---- pump ----------------------------------------------------------------- */

static int pump(void) {
    int n = o.conns;
    int *fds = calloc((size_t)n, sizeof *fds);
    for (int i = 0; i < n; i++) {
        fds[i] = connect_blocking();
        add(fds[i], EPOLLIN, (uint64_t)i);
    }
    double t0 = now_s(), end = t0 + o.secs;
    long long bytes = 0;
    struct epoll_event evs[256];
    while (now_s() < end) {
        int k = epoll_wait(ep, evs, 256, 100);
        for (int e = 0; e < k; e++) {
            int i = (int)evs[e].data.u64;
            ssize_t r = read(fds[i], rbuf, sizeof rbuf);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                die("pump: connection %d ended early (%s)", i, r == 0 ? "EOF" : strerror(errno));
            }
            bytes += r;
        }
    }
    double secs = now_s() - t0;
    for (int i = 0; i < n; i++)
        close(fds[i]);
    printf("result %.3f ops %lld secs %.3f\n", (double)bytes * 8 / secs / 1e9, bytes, secs);
    return 0;
}

/* ---- pound ---------------------------------------------------------------- */

struct slot {
    int fd;
    int state; /* 0 connecting, 1 waiting for the server's close */
};

static long pound_errors;

static void pound_start(struct slot *s, int i) {
    for (int attempt = 0;; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            die_errno("socket");
        set_nodelay(fd);
        struct sockaddr_in sa = loopback(o.port);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 || errno == EINPROGRESS) {
            s->fd = fd;
            s->state = 0;
            add(fd, EPOLLOUT, (uint64_t)i);
            return;
        }
        int err = errno;
        close(fd);
        pound_errors++;
        if (attempt > 1000)
            die("pound: connect keeps failing: %s", strerror(err));
        usleep(1000);
    }
}

static int pound(void) {
    int n = o.conns;
    struct slot *slots = calloc((size_t)n, sizeof *slots);
    long started = 0, done = 0;
    for (int i = 0; i < n; i++)
        slots[i].fd = -1;
    for (int i = 0; i < n && (o.count == 0 || started < o.count); i++, started++)
        pound_start(&slots[i], i);
    int open = (int)started;
    double t0 = now_s(), end = t0 + (o.count > 0 ? o.limit : o.secs);
    struct epoll_event evs[256];
    while (open > 0 && now_s() < end) {
        int k = epoll_wait(ep, evs, 256, 100);
        for (int e = 0; e < k; e++) {
            int i = (int)evs[e].data.u64;
            struct slot *s = &slots[i];
            if (s->state == 0) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err == 0 && send(s->fd, "hi", 2, MSG_NOSIGNAL) == 2) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = (uint64_t)i};
                    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                    s->state = 1;
                    continue;
                }
                pound_errors++;
            } else {
                ssize_t r = read(s->fd, rbuf, 64);
                if (r < 0 && errno == EAGAIN)
                    continue;
                if (r > 0)
                    die("pound: the server sent data");
                if (r == 0)
                    done++;
                else
                    pound_errors++; /* reset */
            }
            close(s->fd);
            s->fd = -1;
            if (o.count > 0 && started >= o.count) {
                open--;
                continue;
            }
            pound_start(s, i);
            started++;
        }
    }
    if (o.count > 0 && open > 0)
        die("pound: time limit of %.0f s reached with %d connections unfinished", o.limit, open);
    double secs = now_s() - t0;
    for (int i = 0; i < n; i++)
        if (slots[i].fd >= 0)
            close(slots[i].fd);
    printf("result %.0f ops %ld secs %.3f errors %ld\n", (double)done / secs, done, secs, pound_errors);
    return 0;
}

/* ---- idle ----------------------------------------------------------------- */

static int idle(void) {
    int n = o.conns;
    int *fds = calloc((size_t)n, sizeof *fds);
    int inflight = 0, opened = 0, connected = 0;
    double hard = now_s() + o.limit;
    struct epoll_event evs[256];
    while (connected < n) {
        while (opened < n && inflight < 128) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0)
                die_errno("socket (raise ulimit -n)");
            set_nodelay(fd);
            struct sockaddr_in sa = loopback(o.port);
            if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS)
                die_errno("connect");
            fds[opened] = fd;
            add(fd, EPOLLOUT, (uint64_t)opened);
            opened++;
            inflight++;
        }
        if (now_s() > hard)
            die("idle: only %d of %d connections after %.0f s", connected, n, o.limit);
        int k = epoll_wait(ep, evs, 256, 100);
        for (int e = 0; e < k; e++) {
            int i = (int)evs[e].data.u64;
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &len);
            if (err)
                die("idle: connect: %s", strerror(err));
            epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
            inflight--;
            connected++;
        }
    }
    printf("connected %d\n", connected);
    fflush(stdout);
    /* Hold until killed, or -d seconds. */
    double until = now_s() + o.secs;
    while (now_s() < until)
        usleep(100000);
    for (int i = 0; i < n; i++)
        close(fds[i]);
    return 0;
}

/* ---- sink ----------------------------------------------------------------- */

static int sink(void) {
    int n = o.conns;
    int *fds = calloc((size_t)n, sizeof *fds);
    for (int i = 0; i < n; i++) {
        fds[i] = connect_blocking();
        add(fds[i], EPOLLIN, (uint64_t)i);
    }
    int open = n;
    long long bytes = 0;
    double hard = now_s() + o.limit;
    struct epoll_event evs[64];
    while (open > 0 && now_s() < hard) {
        int k = epoll_wait(ep, evs, 64, 100);
        for (int e = 0; e < k; e++) {
            int i = (int)evs[e].data.u64;
            ssize_t r = read(fds[i], rbuf, sizeof rbuf);
            if (r > 0) {
                bytes += r;
            } else if (r == 0 || errno != EAGAIN) {
                close(fds[i]);
                open--;
            }
        }
    }
    printf("result 0 ops %lld secs 0\n", bytes);
    return 0;
}

int main(int argc, char **argv) {
    o = parse_opts(argc, argv);
    if (o.port <= 0 || o.port > 65535)
        die("client: -p PORT is required");
    signal(SIGPIPE, SIG_IGN);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die_errno("epoll_create1");
    if (mode_is(&o, "pingpong"))
        return pingpong();
    if (mode_is(&o, "pump"))
        return pump();
    if (mode_is(&o, "pound"))
        return pound();
    if (mode_is(&o, "idle"))
        return idle();
    if (mode_is(&o, "sink"))
        return sink();
    usage(argv[0]);
    return 2;
}
