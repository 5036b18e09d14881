/*
 * The limit: a hand-written, level-triggered epoll server, as fast as it can
 * simply be. One thread; one epoll_wait per turn; per echo round trip one
 * read and one write (a short read is never followed by a read that would
 * block, because level-triggered readiness will say when there is more).
 *
 * Modes and the stdout protocol: see common.h. Extra mode "xraw": the
 * cross-thread workload with plain write() from the sender threads and no
 * completion delivery at all (the upper bound of any Begin).
 */
#include "common.h"
#include "xthread.h"

#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>

enum mode { M_ECHO, M_PUMP, M_POUND, M_IDLE, M_XTHREAD, M_XRAW };

struct conn {
    int fd;
    uint32_t events;  /* current epoll interest */
    size_t out_off;   /* echo: bytes of buf already echoed */
    size_t out_len;   /* echo: bytes of buf to echo */
    size_t got;       /* pound: bytes read */
    unsigned char buf[]; /* echo only */
};

static struct opts o;
static enum mode mode;
static int ep, lfd;
static long accepted, closed;
static unsigned char scratch[PUMP_BLOCK];

static void conn_close(struct conn *c) {
    close(c->fd); /* also leaves the epoll set */
    free(c);
    if (o.exit_after && ++closed >= o.exit_after)
        exit(0);
}

static void set_interest(struct conn *c, uint32_t events) {
    if (c->events == events)
        return;
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die_errno("epoll_ctl mod");
    c->events = events;
}

static void on_accept(void) {
    for (int i = 0; i < 64; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == ECONNABORTED || errno == EINTR)
                return;
            die_errno("accept4");
        }
        set_nodelay(fd);
        struct conn *c = calloc(1, sizeof *c + (mode == M_ECHO ? ECHO_BUF : 0));
        if (!c)
            die("out of memory");
        c->fd = fd;
        c->events = mode == M_PUMP ? EPOLLIN | EPOLLOUT : EPOLLIN;
        struct epoll_event ev = {.events = c->events, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0)
            die_errno("epoll_ctl add");
        accepted++;
        if (mode == M_IDLE && accepted == o.conns) {
            printf("ready %ld\n", accepted);
            fflush(stdout);
        }
    }
}

/* Echo: returns 0 when the connection was closed. */
static int echo_flush(struct conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t w = send(c->fd, c->buf + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                set_interest(c, EPOLLOUT);
                return 1;
            }
            conn_close(c);
            return 0;
        }
        c->out_off += (size_t)w;
    }
    c->out_off = c->out_len = 0;
    set_interest(c, EPOLLIN);
    return 1;
}

static void on_conn(struct conn *c, uint32_t events) {
    switch (mode) {
    case M_ECHO:
        if (c->out_len) {
            echo_flush(c);
            return;
        }
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
            ssize_t n = read(c->fd, c->buf, ECHO_BUF);
            if (n <= 0) {
                if (n < 0 && (errno == EAGAIN || errno == EINTR))
                    return;
                conn_close(c);
                return;
            }
            c->out_off = 0;
            c->out_len = (size_t)n;
            echo_flush(c);
        }
        return;
    case M_PUMP:
        if (events & EPOLLIN) {
            ssize_t n = read(c->fd, scratch, sizeof scratch);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                conn_close(c);
                return;
            }
        }
        if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
            for (;;) {
                ssize_t w = send(c->fd, pump_block, PUMP_BLOCK, MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno == EAGAIN)
                        break;
                    if (errno == EINTR)
                        continue;
                    conn_close(c);
                    return;
                }
            }
        }
        return;
    case M_POUND:
    case M_IDLE: {
        ssize_t n = read(c->fd, scratch, sizeof scratch);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        if (n > 0 && mode == M_POUND)
            c->got += (size_t)n;
        if (n <= 0 || (mode == M_POUND && c->got >= 2))
            conn_close(c);
        return;
    }
    default:
        return;
    }
}

/* ---- cross-thread: write() on the caller, completion via a mutex queue ---- */

static int efd;
static pthread_mutex_t q_mu = PTHREAD_MUTEX_INITIALIZER;
static int *q_items;
static size_t q_head, q_len, q_cap;
static int q_wake_pending;
static atomic_int loop_stop;

static int write_all(int fd, const unsigned char *p, size_t len) {
    while (len > 0) {
        ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                struct pollfd pfd = {.fd = fd, .events = POLLOUT};
                poll(&pfd, 1, 100);
                continue;
            }
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

static int xt_begin(struct xt_sender *s, int size) {
    int fd = (int)(intptr_t)s->conn;
    if (write_all(fd, xt_msg, (size_t)size) < 0)
        return -1;
    if (mode == M_XRAW) {
        xt_complete(s->index); /* no completion delivery: the bound */
        return 0;
    }
    pthread_mutex_lock(&q_mu);
    q_items[(q_head + q_len) % q_cap] = s->index;
    q_len++;
    int wake = !q_wake_pending;
    q_wake_pending = 1;
    pthread_mutex_unlock(&q_mu);
    if (wake) {
        uint64_t one = 1;
        if (write(efd, &one, sizeof one) < 0)
            die_errno("eventfd write");
    }
    return 0;
}

static void *xt_loop_main(void *arg) {
    (void)arg;
    int *batch = malloc(q_cap * sizeof *batch);
    struct epoll_event evs[8];
    while (!atomic_load(&loop_stop)) {
        int n = epoll_wait(ep, evs, 8, -1);
        if (n < 0 && errno != EINTR)
            die_errno("epoll_wait");
        for (int i = 0; i < n; i++) {
            uint64_t v;
            if (read(efd, &v, sizeof v) < 0 && errno != EAGAIN)
                die_errno("eventfd read");
            pthread_mutex_lock(&q_mu);
            size_t k = q_len;
            for (size_t j = 0; j < k; j++)
                batch[j] = q_items[(q_head + j) % q_cap];
            q_head = (q_head + k) % q_cap;
            q_len = 0;
            q_wake_pending = 0;
            pthread_mutex_unlock(&q_mu);
            for (size_t j = 0; j < k; j++)
                xt_complete(batch[j]); /* the completion "callback" */
        }
    }
    free(batch);
    return NULL;
}

static void run_xthread(void) {
    set_nonblocking(lfd, 0);
    for (int i = 0; i < o.threads; i++) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            die_errno("accept4");
        set_nodelay(fd);
        xt_senders[i].index = i;
        xt_senders[i].conn = (void *)(intptr_t)fd;
    }
    q_cap = (size_t)o.threads * (size_t)o.window + 1;
    q_items = malloc(q_cap * sizeof *q_items);
    efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
    pthread_t loop;
    pthread_create(&loop, NULL, xt_loop_main, NULL);
    xt_run(&o);
    atomic_store(&loop_stop, 1);
    uint64_t one = 1;
    if (write(efd, &one, sizeof one) < 0)
        die_errno("eventfd write");
    pthread_join(loop, NULL);
    for (int i = 0; i < o.threads; i++)
        close((int)(intptr_t)xt_senders[i].conn);
}

int main(int argc, char **argv) {
    o = parse_opts(argc, argv);
    if (mode_is(&o, "echo"))
        mode = M_ECHO;
    else if (mode_is(&o, "pump"))
        mode = M_PUMP;
    else if (mode_is(&o, "pound"))
        mode = M_POUND;
    else if (mode_is(&o, "idle"))
        mode = M_IDLE;
    else if (mode_is(&o, "xthread"))
        mode = M_XTHREAD;
    else if (mode_is(&o, "xraw"))
        mode = M_XRAW;
    else
        usage(argv[0]);
    signal(SIGPIPE, SIG_IGN);
    int port;
    lfd = listen_loopback(&port);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        die_errno("epoll_create1");
    print_port(port);
    if (mode == M_XTHREAD || mode == M_XRAW) {
        run_xthread();
        return 0;
    }
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die_errno("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL)
                on_accept();
            else
                on_conn(evs[i].data.ptr, evs[i].events);
        }
    }
}
