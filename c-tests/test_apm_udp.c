/*
 * test_apm_udp.c — section 5 on datagram sockets, IPv4 and IPv6: send-to /
 * receive-from round trips with the sender's endpoint, a datagram larger
 * than the buffer (MessageSize, the buffer holds its first bytes), PEEK,
 * empty datagrams, Begin order, End's out_from NULL (ArgumentNull, the
 * result stays pending), connected UDP and its ICMP errors.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

/* ==== APM test helpers (the same block heads every test_apm_*.c) ======== */

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

/* ==== end of the APM test helpers ======================================== */

static const int32_t FAMILIES[2] = {ASOCK_AF_INET, ASOCK_AF_INET6};

static bool pred_rec_called(void *ctx) { return atomic_load(&((op_rec *)ctx)->calls) >= 1; }

/* Sends one datagram from `s` to `to` and ends it (non-loop thread). */
static bool dgram(asock_socket s, const void *buf, size_t len, const asock_endpoint *to) {
    asock_async_result ar;
    asock_error e = asock_begin_send_to(s, buf, len, 0, to, NULL, NULL, &ar);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_begin_send_to", e, ASOCK_OK);
        return false;
    }
    if (!ar_done(ar, wait_ms())) {
        harness_fail_cond(__FILE__, __LINE__, "dgram: the send-to completes");
        return false;
    }
    asock_error ec = -7;
    int32_t n = asock_end_send_to(ar, &ec);
    if (n != (int32_t)len || ec != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "dgram: asock_end_send_to", ec, ASOCK_OK);
        return false;
    }
    return true;
}

TEST(send_to_receive_from_round_trip_with_the_senders_endpoint) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    for (int f = 0; f < 2; f++) {
        int32_t fam = FAMILIES[f];
        asock_socket a, b;
        asock_endpoint ea, eb;
        REQUIRE(udp_new(tl.loop, fam, &a, &ea));
        REQUIRE(udp_new(tl.loop, fam, &b, &eb));
        op_rec r[4];
        op_rec_init(r, 4);
        uint8_t bbuf[64], abuf[64];
        asock_async_result rf, st;
        REQUIRE_OK(asock_begin_receive_from(b, bbuf, sizeof bbuf, 0, rec_cb, &r[0], &rf));
        CHECK(!asock_async_result_is_completed(rf));
        REQUIRE_OK(asock_begin_send_to(a, (const uint8_t *)"question", 8, 0, &eb, rec_cb, &r[1], &st));
        REQUIRE(ar_done(st, wait_ms()));
        asock_error ec = -7;
        CHECK_EQ_INT(asock_end_send_to(st, &ec), 8);
        CHECK_ERR(ec, ASOCK_OK);
        REQUIRE(ar_done(rf, wait_ms()));
        asock_endpoint from;
        memset(&from, 0, sizeof from);
        ec = -7;
        CHECK_EQ_INT(asock_end_receive_from(rf, &from, &ec), 8);
        CHECK_ERR(ec, ASOCK_OK);
        CHECK(memcmp(bbuf, "question", 8) == 0);
        CHECK_EQ_INT(from.family, fam);
        CHECK_EQ_INT(from.port, ea.port);
        CHECK(is_loopback_ep(&from, fam));
        /* Reply to the endpoint we were given. */
        REQUIRE_OK(asock_begin_receive_from(a, abuf, sizeof abuf, 0, rec_cb, &r[2], &rf));
        REQUIRE_OK(asock_begin_send_to(b, (const uint8_t *)"answer!", 7, 0, &from, rec_cb, &r[3], &st));
        REQUIRE(ar_done(st, wait_ms()));
        CHECK_EQ_INT(asock_end_send_to(st, NULL), 7);
        REQUIRE(ar_done(rf, wait_ms()));
        memset(&from, 0, sizeof from);
        CHECK_EQ_INT(asock_end_receive_from(rf, &from, NULL), 7);
        CHECK(memcmp(abuf, "answer!", 7) == 0);
        CHECK_EQ_INT(from.port, eb.port);
        CHECK(is_loopback_ep(&from, fam));
        for (int i = 0; i < 4; i++)
            CHECK(wait_until(pred_rec_called, &r[i], wait_ms()));
        CHECK(loop_flush(tl.loop));
        for (int i = 0; i < 4; i++) {
            CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
            CHECK(pthread_equal(r[i].thread, tl.thread));
        }
        /* Plain receive works on a datagram socket too. */
        asock_async_result rr;
        REQUIRE_OK(asock_begin_receive(b, bbuf, sizeof bbuf, 0, NULL, NULL, &rr));
        CHECK(dgram(a, "plain", 5, &eb));
        REQUIRE(ar_done(rr, wait_ms()));
        CHECK_EQ_INT(asock_end_receive(rr, NULL), 5);
        CHECK(memcmp(bbuf, "plain", 5) == 0);
        CHECK_OK(asock_socket_close(a));
        CHECK_OK(asock_socket_close(b));
    }
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(receive_from_reports_each_senders_endpoint) {
    for (int f = 0; f < 2; f++) {
        int32_t fam = FAMILIES[f];
        asock_socket rx, tx[3];
        asock_endpoint erx, etx[3];
        REQUIRE(udp_new((asock_loop){0}, fam, &rx, &erx));
        for (int i = 0; i < 3; i++)
            REQUIRE(udp_new((asock_loop){0}, fam, &tx[i], &etx[i]));
        for (int i = 0; i < 3; i++) {
            uint8_t m = (uint8_t)i;
            CHECK(dgram(tx[i], &m, 1, &erx));
        }
        for (int i = 0; i < 3; i++) {
            uint8_t got = 0xFF;
            asock_async_result ar;
            REQUIRE_OK(asock_begin_receive_from(rx, &got, 1, 0, NULL, NULL, &ar));
            REQUIRE(ar_done(ar, wait_ms()));
            asock_endpoint from;
            CHECK_EQ_INT(asock_end_receive_from(ar, &from, NULL), 1);
            CHECK(got < 3);
            if (got < 3)
                CHECK_EQ_INT(from.port, etx[got].port);
        }
        CHECK_OK(asock_socket_close(rx));
        for (int i = 0; i < 3; i++)
            CHECK_OK(asock_socket_close(tx[i]));
    }
}

TEST(receive_from_null_out_from_is_argument_null_and_stays_pending) {
    for (int f = 0; f < 2; f++) {
        asock_socket a, b;
        asock_endpoint ea, eb;
        REQUIRE(udp_new((asock_loop){0}, FAMILIES[f], &a, &ea));
        REQUIRE(udp_new((asock_loop){0}, FAMILIES[f], &b, &eb));
        op_rec r;
        op_rec_init(&r, 1);
        uint8_t buf[8];
        asock_async_result rf;
        REQUIRE_OK(asock_begin_receive_from(b, buf, sizeof buf, 0, rec_cb, &r, &rf));
        CHECK(dgram(a, "abc", 3, &eb));
        REQUIRE(ar_done(rf, wait_ms()));
        asock_error ec = 0;
        CHECK_EQ_INT(asock_end_receive_from(rf, NULL, &ec), -1);
        CHECK_ERR(ec, ASOCK_E_ARGUMENT_NULL);
        CHECK(asock_async_result_is_completed(rf));
        CHECK(asock_async_result_state(rf) == &r);
        asock_endpoint from;
        memset(&from, 0, sizeof from);
        ec = -7;
        CHECK_EQ_INT(asock_end_receive_from(rf, &from, &ec), 3);
        CHECK_ERR(ec, ASOCK_OK);
        CHECK_EQ_INT(from.port, ea.port);
        CHECK(wait_until(pred_rec_called, &r, wait_ms()));
        CHECK_OK(asock_socket_close(a));
        CHECK_OK(asock_socket_close(b));
    }
}

TEST(datagram_larger_than_the_buffer_is_message_size_with_its_first_bytes) {
    for (int f = 0; f < 2; f++) {
        asock_socket a, b;
        asock_endpoint ea, eb;
        REQUIRE(udp_new((asock_loop){0}, FAMILIES[f], &a, &ea));
        REQUIRE(udp_new((asock_loop){0}, FAMILIES[f], &b, &eb));
        uint8_t big[100];
        fill_pattern(big, sizeof big, 7);
        uint8_t buf[32];
        /* receive */
        memset(buf, 0xEE, sizeof buf);
        asock_async_result ar;
        REQUIRE_OK(asock_begin_receive(b, buf, 10, 0, NULL, NULL, &ar));
        CHECK(dgram(a, big, sizeof big, &eb));
        REQUIRE(ar_done(ar, wait_ms()));
        asock_error ec = 0;
        CHECK_EQ_INT(asock_end_receive(ar, &ec), -1);
        CHECK_ERR(ec, ASOCK_MESSAGE_SIZE);
        CHECK(memcmp(buf, big, 10) == 0);
        for (int i = 10; i < 32; i++)
            CHECK_EQ_INT(buf[i], 0xEE); /* nothing past len */
        /* receive-from */
        memset(buf, 0xEE, sizeof buf);
        REQUIRE_OK(asock_begin_receive_from(b, buf, 16, 0, NULL, NULL, &ar));
        CHECK(dgram(a, big, sizeof big, &eb));
        REQUIRE(ar_done(ar, wait_ms()));
        ec = 0;
        asock_endpoint from;
        CHECK_EQ_INT(asock_end_receive_from(ar, &from, &ec), -1);
        CHECK_ERR(ec, ASOCK_MESSAGE_SIZE);
        CHECK(memcmp(buf, big, 16) == 0);
        for (int i = 16; i < 32; i++)
            CHECK_EQ_INT(buf[i], 0xEE);
        /* The rest of a cut datagram is gone: the next receive gets the
         * next datagram. */
        CHECK(dgram(a, "next", 4, &eb));
        REQUIRE_OK(asock_begin_receive_from(b, buf, sizeof buf, 0, NULL, NULL, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        CHECK_EQ_INT(asock_end_receive_from(ar, &from, NULL), 4);
        CHECK(memcmp(buf, "next", 4) == 0);
        CHECK_OK(asock_socket_close(a));
        CHECK_OK(asock_socket_close(b));
    }
}

TEST(peek_leaves_the_datagram_for_the_next_receive) {
    for (int f = 0; f < 2; f++) {
        asock_socket a, b;
        asock_endpoint ea, eb;
        REQUIRE(udp_new((asock_loop){0}, FAMILIES[f], &a, &ea));
        REQUIRE(udp_new((asock_loop){0}, FAMILIES[f], &b, &eb));
        CHECK(dgram(a, "first", 5, &eb));
        CHECK(dgram(a, "second", 6, &eb));
        uint8_t buf[16];
        asock_endpoint from;
        asock_async_result ar;
        for (int i = 0; i < 2; i++) {
            memset(buf, 0, sizeof buf);
            REQUIRE_OK(asock_begin_receive_from(b, buf, sizeof buf, ASOCK_SOCKET_FLAG_PEEK, NULL, NULL, &ar));
            REQUIRE(ar_done(ar, wait_ms()));
            memset(&from, 0, sizeof from);
            CHECK_EQ_INT(asock_end_receive_from(ar, &from, NULL), 5);
            CHECK(memcmp(buf, "first", 5) == 0);
            CHECK_EQ_INT(from.port, ea.port);
        }
        REQUIRE_OK(asock_begin_receive_from(b, buf, sizeof buf, 0, NULL, NULL, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        CHECK_EQ_INT(asock_end_receive_from(ar, &from, NULL), 5);
        CHECK(memcmp(buf, "first", 5) == 0);
        REQUIRE_OK(asock_begin_receive(b, buf, sizeof buf, 0, NULL, NULL, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        CHECK_EQ_INT(asock_end_receive(ar, NULL), 6);
        CHECK(memcmp(buf, "second", 6) == 0);
        CHECK_OK(asock_socket_close(a));
        CHECK_OK(asock_socket_close(b));
    }
}

TEST(empty_datagram_is_received_as_0_bytes_with_its_sender) {
    for (int f = 0; f < 2; f++) {
        asock_socket a, b;
        asock_endpoint ea, eb;
        REQUIRE(udp_new((asock_loop){0}, FAMILIES[f], &a, &ea));
        REQUIRE(udp_new((asock_loop){0}, FAMILIES[f], &b, &eb));
        uint8_t buf[8];
        asock_async_result ar;
        REQUIRE_OK(asock_begin_receive_from(b, buf, sizeof buf, 0, NULL, NULL, &ar));
        CHECK(dgram(a, NULL, 0, &eb));
        REQUIRE(ar_done(ar, wait_ms()));
        asock_endpoint from;
        memset(&from, 0, sizeof from);
        asock_error ec = -7;
        CHECK_EQ_INT(asock_end_receive_from(ar, &from, &ec), 0);
        CHECK_ERR(ec, ASOCK_OK);
        CHECK_EQ_INT(from.port, ea.port);
        CHECK(dgram(a, "x", 1, &eb));
        REQUIRE_OK(asock_begin_receive_from(b, buf, sizeof buf, 0, NULL, NULL, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        CHECK_EQ_INT(asock_end_receive_from(ar, &from, NULL), 1);
        CHECK_OK(asock_socket_close(a));
        CHECK_OK(asock_socket_close(b));
    }
}

TEST(pending_receive_froms_complete_in_begin_order) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    for (int f = 0; f < 2; f++) {
        asock_socket a, b;
        asock_endpoint ea, eb;
        REQUIRE(udp_new(tl.loop, FAMILIES[f], &a, &ea));
        REQUIRE(udp_new(tl.loop, FAMILIES[f], &b, &eb));
        enum { N = 50 };
        op_rec r[N];
        op_rec_init(r, N);
        uint8_t got[N][4];
        asock_async_result ar[N];
        for (int i = 0; i < N; i++)
            REQUIRE_OK(asock_begin_receive_from(b, got[i], 4, 0, rec_cb, &r[i], &ar[i]));
        for (int i = 0; i < N; i++) {
            uint8_t m[4] = {'d', (uint8_t)i, 0, 0};
            CHECK(dgram(a, m, 2, &eb));
        }
        for (int i = 0; i < N; i++)
            CHECK(wait_until(pred_rec_called, &r[i], wait_ms()));
        CHECK(loop_flush(tl.loop));
        for (int i = 0; i < N; i++) {
            CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
            if (i > 0)
                CHECK(r[i].order > r[i - 1].order);
            asock_endpoint from;
            CHECK_EQ_INT(asock_end_receive_from(ar[i], &from, NULL), 2);
            CHECK_EQ_INT(got[i][1], i);
            CHECK_EQ_INT(from.port, ea.port);
        }
        CHECK_OK(asock_socket_close(a));
        CHECK_OK(asock_socket_close(b));
    }
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(send_to_larger_than_a_datagram_is_message_size_at_end) {
    for (int f = 0; f < 2; f++) {
        asock_socket a, b;
        asock_endpoint ea, eb;
        REQUIRE(udp_new((asock_loop){0}, FAMILIES[f], &a, &ea));
        REQUIRE(udp_new((asock_loop){0}, FAMILIES[f], &b, &eb));
        static uint8_t huge[70000];
        op_rec r;
        op_rec_init(&r, 1);
        asock_async_result ar;
        REQUIRE_OK(asock_begin_send_to(a, huge, sizeof huge, 0, &eb, rec_cb, &r, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        asock_error ec = 0;
        CHECK_EQ_INT(asock_end_send_to(ar, &ec), -1);
        CHECK_ERR(ec, ASOCK_MESSAGE_SIZE);
        CHECK(wait_until(pred_rec_called, &r, wait_ms()));
        /* The socket goes on working. */
        uint8_t buf[4];
        asock_async_result rf;
        REQUIRE_OK(asock_begin_receive_from(b, buf, sizeof buf, 0, NULL, NULL, &rf));
        CHECK(dgram(a, "ok", 2, &eb));
        REQUIRE(ar_done(rf, wait_ms()));
        asock_endpoint from;
        CHECK_EQ_INT(asock_end_receive_from(rf, &from, NULL), 2);
        CHECK_OK(asock_socket_close(a));
        CHECK_OK(asock_socket_close(b));
    }
}

TEST(connected_udp_send_receive_and_icmp_refused) {
    for (int f = 0; f < 2; f++) {
        int32_t fam = FAMILIES[f];
        asock_socket a, b;
        asock_endpoint ea, eb;
        REQUIRE(udp_new((asock_loop){0}, fam, &a, &ea));
        REQUIRE(udp_new((asock_loop){0}, fam, &b, &eb));
        asock_async_result ar;
        REQUIRE_OK(asock_begin_connect(a, &eb, NULL, NULL, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        CHECK_OK(asock_end_connect(ar));
        asock_endpoint rem;
        CHECK_OK(asock_socket_remote_endpoint(a, &rem));
        CHECK_EQ_INT(rem.port, eb.port);
        /* send (no address) on the connected socket */
        REQUIRE_OK(asock_begin_send(a, (const uint8_t *)"conn", 4, 0, NULL, NULL, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        CHECK_EQ_INT(asock_end_send(ar, NULL), 4);
        uint8_t buf[8];
        asock_endpoint from;
        REQUIRE_OK(asock_begin_receive_from(b, buf, sizeof buf, 0, NULL, NULL, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        CHECK_EQ_INT(asock_end_receive_from(ar, &from, NULL), 4);
        CHECK_EQ_INT(from.port, ea.port);
        /* b goes away: the next datagram draws an ICMP port unreachable,
         * which a connected socket's pending receive reports. */
        CHECK_OK(asock_socket_close(b));
        op_rec r;
        op_rec_init(&r, 1);
        asock_async_result rr;
        REQUIRE_OK(asock_begin_receive(a, buf, sizeof buf, 0, rec_cb, &r, &rr));
        REQUIRE_OK(asock_begin_send(a, (const uint8_t *)"lost", 4, 0, NULL, NULL, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        asock_error ec = -7;
        int32_t n = asock_end_send(ar, &ec);
        /* the send itself may already see the refusal */
        if (n != 4)
            CHECK_ERR(ec, ASOCK_CONNECTION_REFUSED);
        bool done = ar_done(rr, wait_ms());
        CHECK(done); /* the error must wake the pending receive */
        if (!done)
            CHECK_OK(asock_socket_close(a));
        ec = -7;
        CHECK_EQ_INT(asock_end_receive(rr, &ec), -1);
        CHECK_ERR(ec, done ? ASOCK_CONNECTION_REFUSED : ASOCK_E_OBJECT_DISPOSED);
        CHECK(wait_until(pred_rec_called, &r, wait_ms()));
        if (done)
            CHECK_OK(asock_socket_close(a));
    }
}

TEST(send_on_an_unconnected_datagram_socket_needs_a_destination) {
    for (int f = 0; f < 2; f++) {
        asock_socket u;
        asock_endpoint eu;
        REQUIRE(udp_new((asock_loop){0}, FAMILIES[f], &u, &eu));
        op_rec r;
        op_rec_init(&r, 1);
        asock_async_result ar;
        REQUIRE_OK(asock_begin_send(u, (const uint8_t *)"where?", 6, 0, rec_cb, &r, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        asock_error ec = 0;
        CHECK_EQ_INT(asock_end_send(ar, &ec), -1);
        CHECK_ERR(ec, ASOCK_DESTINATION_ADDRESS_REQUIRED);
        CHECK(wait_until(pred_rec_called, &r, wait_ms()));
        CHECK_OK(asock_socket_close(u));
    }
}

int main(void) {
    signal(SIGPIPE, SIG_DFL);
    RUN(send_to_receive_from_round_trip_with_the_senders_endpoint);
    RUN(receive_from_reports_each_senders_endpoint);
    RUN(receive_from_null_out_from_is_argument_null_and_stays_pending);
    RUN(datagram_larger_than_the_buffer_is_message_size_with_its_first_bytes);
    RUN(peek_leaves_the_datagram_for_the_next_receive);
    RUN(empty_datagram_is_received_as_0_bytes_with_its_sender);
    RUN(pending_receive_froms_complete_in_begin_order);
    RUN(send_to_larger_than_a_datagram_is_message_size_at_end);
    RUN(connected_udp_send_receive_and_icmp_refused);
    RUN(send_on_an_unconnected_datagram_socket_needs_a_destination);
    return harness_finish();
}
