/*
 * apm_helpers.h — what every test_apm_*.c shares: bounded waits, socket
 * pairs (asock and POSIX peers), operation records and loop flushing.
 * Static, header-only: each test file is its own program.
 */
#ifndef ASOCK_APM_HELPERS_H
#define ASOCK_APM_HELPERS_H

#include "harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>


/* Bound of every wait for something that must happen: never reached when
 * things work. */
static inline int wait_ms(void) { return under_valgrind() ? 90000 : 15000; }
/* Load for a normal run, and for a run under valgrind (same assertions). */
static inline int scaled(int normal, int valgrind) { return under_valgrind() ? valgrind : normal; }

#define SENTINEL_SOCKET ((asock_socket){0x5A5A5A5A5A5A5A5Aull})
#define SENTINEL_RESULT ((asock_async_result){0xA5A5A5A5A5A5A5A5ull})

static inline asock_endpoint lo_ep(int32_t family, uint16_t port) {
    asock_endpoint ep;
    memset(&ep, 0, sizeof ep);
    asock_error e = asock_endpoint_init(family, true, port, &ep);
    if (e != ASOCK_OK)
        harness_fail_code(__FILE__, __LINE__, "asock_endpoint_init", e, ASOCK_OK);
    return ep;
}

static inline bool is_loopback_ep(const asock_endpoint *ep, int32_t family) {
    static const uint8_t v6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    if (ep->family != family)
        return false;
    if (family == ASOCK_AF_INET)
        return ep->addr[0] == 127 && ep->addr[1] == 0 && ep->addr[2] == 0 && ep->addr[3] == 1;
    return memcmp(ep->addr, v6, 16) == 0;
}

/* Bounded wait for an operation to complete (does not end it). */
static inline bool ar_done(asock_async_result ar, int ms) {
    bool c = false;
    asock_error e = asock_async_result_wait(ar, ms, &c);
    return e == ASOCK_OK && c;
}

static inline bool harness_pred_bool(void *ctx) { return atomic_load((atomic_bool *)ctx); }
static inline bool wait_bool(atomic_bool *b, int ms) { return wait_until(harness_pred_bool, b, ms); }

/* What a callback saw: how often it ran, on which thread, with what. */
typedef struct op_rec {
    atomic_int calls;
    int order; /* completion sequence number (from op_rec_seq) */
    pthread_t thread;
    asock_async_result ar;
    void *state_in_cb; /* asock_async_result_state(ar) inside the callback */
    bool completed_in_cb;
} op_rec;

static atomic_int op_rec_seq;

static void rec_cb(asock_async_result ar, void *state) {
    op_rec *r = state;
    r->thread = pthread_self();
    r->ar = ar;
    r->state_in_cb = asock_async_result_state(ar);
    r->completed_in_cb = asock_async_result_is_completed(ar);
    r->order = atomic_fetch_add(&op_rec_seq, 1);
    atomic_fetch_add(&r->calls, 1);
}

static inline void op_rec_init(op_rec *r, size_t n) {
    for (size_t i = 0; i < n; i++) {
        memset(&r[i], 0, sizeof r[i]);
        atomic_init(&r[i].calls, 0);
        r[i].order = -1;
    }
}

/* An own loop running on a library thread, and that thread's id. */
typedef struct test_loop {
    asock_loop loop;
    pthread_t thread;
    atomic_bool got;
} test_loop;

static void test_loop_capture(void *s) {
    test_loop *t = s;
    t->thread = pthread_self();
    atomic_store(&t->got, true);
}

static inline bool test_loop_start(test_loop *t) {
    memset(t, 0, sizeof *t);
    atomic_init(&t->got, false);
    asock_error e = asock_loop_new(&t->loop);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_loop_new", e, ASOCK_OK);
        return false;
    }
    e = asock_loop_start_thread(t->loop);
    if (e == ASOCK_OK)
        e = asock_loop_post(t->loop, test_loop_capture, t);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_loop_start_thread/post", e, ASOCK_OK);
        return false;
    }
    if (!wait_bool(&t->got, wait_ms())) {
        harness_fail_cond(__FILE__, __LINE__, "the loop thread ran a posted function");
        return false;
    }
    return true;
}

static void flush_mark(void *s) { atomic_store((atomic_bool *)s, true); }

/* Posts a marker and waits until the loop ran it: every callback queued on
 * the loop before this call has run by then. */
static inline bool loop_flush(asock_loop l) {
    atomic_bool *done = malloc(sizeof *done); /* leaked only if the loop never runs it */
    if (done == NULL)
        return false;
    atomic_init(done, false);
    if (asock_loop_post(l, flush_mark, done) != ASOCK_OK) {
        free(done);
        return false;
    }
    bool ok = wait_bool(done, wait_ms());
    if (ok)
        free(done);
    return ok;
}

/* A listening TCP socket on loopback port 0; *ep gets its endpoint. */
static inline bool listener_new(asock_loop l, int32_t fam, int32_t backlog, asock_socket *out, asock_endpoint *ep) {
    asock_socket s;
    asock_error e = asock_socket_new(l, fam, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &s);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_socket_new(listener)", e, ASOCK_OK);
        return false;
    }
    asock_endpoint any = lo_ep(fam, 0);
    if ((e = asock_socket_bind(s, &any)) != ASOCK_OK || (e = asock_socket_listen(s, backlog)) != ASOCK_OK ||
        (e = asock_socket_local_endpoint(s, ep)) != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "bind/listen/local_endpoint", e, ASOCK_OK);
        asock_socket_close(s);
        return false;
    }
    *out = s;
    return true;
}

/* A connected TCP pair made with Begin/End: *client on loop lc, *server
 * (accepted) on loop ls. */
static inline bool tcp_pair(asock_loop lc, asock_loop ls, int32_t fam, asock_socket *client, asock_socket *server) {
    asock_socket lst, c, s = SENTINEL_SOCKET;
    asock_endpoint ep;
    asock_async_result aa, ac;
    if (!listener_new(ls, fam, 16, &lst, &ep))
        return false;
    asock_error e = asock_socket_new(lc, fam, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &c);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "tcp_pair: asock_socket_new", e, ASOCK_OK);
        asock_socket_close(lst);
        return false;
    }
    if ((e = asock_begin_accept(lst, NULL, NULL, &aa)) != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "tcp_pair: asock_begin_accept", e, ASOCK_OK);
        asock_socket_close(c);
        asock_socket_close(lst);
        return false;
    }
    if ((e = asock_begin_connect(c, &ep, NULL, NULL, &ac)) != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "tcp_pair: asock_begin_connect", e, ASOCK_OK);
        asock_socket_close(lst); /* completes the accept */
        asock_end_accept(aa, &s);
        asock_socket_close(c);
        return false;
    }
    bool done = ar_done(ac, wait_ms()) && ar_done(aa, wait_ms());
    if (!done) {
        harness_fail_cond(__FILE__, __LINE__, "tcp_pair: connect and accept complete");
        asock_socket_close(c); /* completes both, so the Ends below return */
        asock_socket_close(lst);
    }
    asock_error ec = asock_end_connect(ac);
    asock_error ea = asock_end_accept(aa, &s);
    if (done) {
        asock_socket_close(lst);
        if (ec != ASOCK_OK)
            harness_fail_code(__FILE__, __LINE__, "tcp_pair: asock_end_connect", ec, ASOCK_OK);
        if (ea != ASOCK_OK)
            harness_fail_code(__FILE__, __LINE__, "tcp_pair: asock_end_accept", ea, ASOCK_OK);
    }
    if (!done || ec != ASOCK_OK || ea != ASOCK_OK) {
        if (s.id != SENTINEL_SOCKET.id)
            asock_socket_close(s);
        asock_socket_close(c);
        return false;
    }
    *client = c;
    *server = s;
    return true;
}

/* Sends all of buf with Begin/End from this (non-loop) thread. */
static inline bool send_all(asock_socket s, const void *buf, size_t len) {
    asock_async_result ar;
    asock_error e = asock_begin_send(s, buf, len, 0, NULL, NULL, &ar);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_begin_send", e, ASOCK_OK);
        return false;
    }
    if (!ar_done(ar, wait_ms())) {
        harness_fail_cond(__FILE__, __LINE__, "send_all: the send completes");
        return false;
    }
    asock_error ec = -7;
    int32_t n = asock_end_send(ar, &ec);
    if (ec != ASOCK_OK || n != (int32_t)len) {
        harness_fail_code(__FILE__, __LINE__, "send_all: asock_end_send", ec, ASOCK_OK);
        return false;
    }
    return true;
}

/* Receives exactly len bytes with Begin/End from this (non-loop) thread. */
static inline bool recv_exact(asock_socket s, void *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        asock_async_result ar;
        asock_error e = asock_begin_receive(s, (uint8_t *)buf + got, len - got, 0, NULL, NULL, &ar);
        if (e != ASOCK_OK) {
            harness_fail_code(__FILE__, __LINE__, "asock_begin_receive", e, ASOCK_OK);
            return false;
        }
        if (!ar_done(ar, wait_ms())) {
            harness_fail_cond(__FILE__, __LINE__, "recv_exact: the receive completes");
            return false;
        }
        asock_error ec = -7;
        int32_t n = asock_end_receive(ar, &ec);
        if (ec != ASOCK_OK || n <= 0) {
            harness_fail_code(__FILE__, __LINE__, "recv_exact: asock_end_receive (n <= 0 is EOF)", ec, ASOCK_OK);
            return false;
        }
        got += (size_t)n;
    }
    return true;
}

/* ---- POSIX peers (blocking, with timeouts) ------------------------------ */

static inline socklen_t px_addr(int32_t fam, uint16_t port, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof *ss);
    if (fam == ASOCK_AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)ss;
        a->sin_family = AF_INET;
        a->sin_port = htons(port);
        a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        return sizeof *a;
    }
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    a->sin6_addr = in6addr_loopback;
    return sizeof *a;
}

static inline void px_timeouts(int fd, int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

/* A POSIX listener on loopback (rcvbuf > 0: SO_RCVBUF, inherited by the
 * accepted connections); *port gets its port. */
static inline int px_listen(int32_t fam, int backlog, int rcvbuf, uint16_t *port) {
    int fd = socket(fam == ASOCK_AF_INET ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    struct sockaddr_storage ss;
    socklen_t len = px_addr(fam, 0, &ss);
    if (bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, backlog) != 0 ||
        getsockname(fd, (struct sockaddr *)&ss, &len) != 0) {
        close(fd);
        return -1;
    }
    *port = fam == ASOCK_AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                                 : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return fd;
}

/* accept with a bounded wait; the connection gets timeouts too. */
static inline int px_accept(int lfd, int ms) {
    struct pollfd p = {lfd, POLLIN, 0};
    if (poll(&p, 1, ms) != 1)
        return -1;
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0)
        px_timeouts(fd, wait_ms());
    return fd;
}

static inline int px_connect(int32_t fam, uint16_t port) {
    int fd = socket(fam == ASOCK_AF_INET ? AF_INET : AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    px_timeouts(fd, wait_ms());
    struct sockaddr_storage ss;
    socklen_t len = px_addr(fam, port, &ss);
    if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static inline bool px_read_exact(int fd, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, (uint8_t *)buf + got, n - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        got += (size_t)r;
    }
    return true;
}

static inline bool px_write_all(int fd, const void *buf, size_t n) {
    size_t put = 0;
    while (put < n) {
        ssize_t r = send(fd, (const uint8_t *)buf + put, n - put, MSG_NOSIGNAL);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return false;
        put += (size_t)r;
    }
    return true;
}

/* close() that resets the connection (SO_LINGER 0). */
static inline void px_close_reset(int fd) {
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* An asock client (on loop l) connected to a POSIX peer (*peer). sndbuf >
 * 0 sets the client's ASOCK_OPT_SEND_BUFFER_SIZE, rcvbuf > 0 the peer's
 * SO_RCVBUF. */
static inline bool px_pair(asock_loop l, int32_t fam, int sndbuf, int rcvbuf, asock_socket *client, int *peer) {
    uint16_t port = 0;
    int lfd = px_listen(fam, 16, rcvbuf, &port);
    if (lfd < 0) {
        harness_fail_cond(__FILE__, __LINE__, "px_listen");
        return false;
    }
    asock_socket c;
    asock_error e = asock_socket_new(l, fam, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &c);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_socket_new", e, ASOCK_OK);
        close(lfd);
        return false;
    }
    if (sndbuf > 0 && (e = asock_socket_set_option(c, ASOCK_OPT_SEND_BUFFER_SIZE, sndbuf)) != ASOCK_OK)
        harness_fail_code(__FILE__, __LINE__, "set SEND_BUFFER_SIZE", e, ASOCK_OK);
    asock_endpoint ep = lo_ep(fam, port);
    asock_async_result ar;
    if ((e = asock_begin_connect(c, &ep, NULL, NULL, &ar)) != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_begin_connect", e, ASOCK_OK);
        asock_socket_close(c);
        close(lfd);
        return false;
    }
    int fd = px_accept(lfd, wait_ms());
    close(lfd);
    if (!ar_done(ar, wait_ms()))
        harness_fail_cond(__FILE__, __LINE__, "px_pair: the connect completes");
    e = asock_end_connect(ar);
    if (e != ASOCK_OK || fd < 0) {
        harness_fail_code(__FILE__, __LINE__, "px_pair: asock_end_connect / accept", e, ASOCK_OK);
        asock_socket_close(c);
        if (fd >= 0)
            close(fd);
        return false;
    }
    *client = c;
    *peer = fd;
    return true;
}

/* A UDP socket bound to loopback port 0 on loop l; *ep gets its endpoint. */
static inline bool udp_new(asock_loop l, int32_t fam, asock_socket *out, asock_endpoint *ep) {
    asock_socket s;
    asock_error e = asock_socket_new(l, fam, ASOCK_SOCK_DGRAM, ASOCK_PROTO_UDP, &s);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_socket_new(udp)", e, ASOCK_OK);
        return false;
    }
    asock_endpoint any = lo_ep(fam, 0);
    if ((e = asock_socket_bind(s, &any)) != ASOCK_OK || (e = asock_socket_local_endpoint(s, ep)) != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "udp bind/local_endpoint", e, ASOCK_OK);
        asock_socket_close(s);
        return false;
    }
    *out = s;
    return true;
}

/* A deterministic, non-periodic byte pattern. */
static inline uint8_t pattern_at(size_t i) { return (uint8_t)((i * 2654435761u) >> 13 ^ (i >> 8) ^ i); }

static inline void fill_pattern(uint8_t *buf, size_t len, size_t offset) {
    for (size_t i = 0; i < len; i++)
        buf[i] = pattern_at(offset + i);
}


#endif /* ASOCK_APM_HELPERS_H */
