/*
 * test_apm_libuv.c — libuv's classic TCP tests carried over to Begin/End:
 * ping-pong, write a lot then shutdown, the write queue's order when the
 * socket closes partway, close while connecting, write to a half-open
 * connection (no SIGPIPE), shutdown twice, and reset (SO_LINGER 0).
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

static bool all_called(op_rec *r, size_t n) {
    int64_t deadline = now_ms() + wait_ms();
    for (size_t i = 0; i < n; i++) {
        int left = (int)(deadline - now_ms());
        if (!wait_until(pred_rec_called, &r[i], left > 0 ? left : 0))
            return false;
    }
    return true;
}

/* ---- ping-pong (libuv tcp_ping_pong) ---------------------------------------------- */

/* An echo server driven by its callbacks: receive, send back, receive ... */
struct echo {
    asock_socket s;
    uint8_t buf[4096];
    atomic_int errors;
    atomic_bool eof;
};

static void echo_recv_cb(asock_async_result ar, void *state);

static void echo_send_cb(asock_async_result ar, void *state) {
    struct echo *e = state;
    asock_error ec = -7;
    asock_async_result next;
    if (asock_end_send(ar, &ec) <= 0 || ec != ASOCK_OK ||
        asock_begin_receive(e->s, e->buf, sizeof e->buf, 0, echo_recv_cb, e, &next) != ASOCK_OK)
        atomic_fetch_add(&e->errors, 1);
}

static void echo_recv_cb(asock_async_result ar, void *state) {
    struct echo *e = state;
    asock_error ec = -7;
    int32_t n = asock_end_receive(ar, &ec);
    asock_async_result next;
    if (n > 0 && ec == ASOCK_OK) {
        /* The buffer is lent to the send until it completes; the next
         * receive starts from the send's callback. */
        if (asock_begin_send(e->s, e->buf, (size_t)n, 0, echo_send_cb, e, &next) != ASOCK_OK)
            atomic_fetch_add(&e->errors, 1);
    } else if (n == 0 && ec == ASOCK_OK) {
        atomic_store(&e->eof, true);
    } else {
        atomic_fetch_add(&e->errors, 1);
        atomic_store(&e->eof, true);
    }
}

TEST(ping_pong_1000_round_trips) {
    for (int f = 0; f < 2; f++) {
        test_loop tl;
        REQUIRE(test_loop_start(&tl));
        asock_socket c, s;
        REQUIRE(tcp_pair(tl.loop, tl.loop, FAMILIES[f], &c, &s));
        CHECK_OK(asock_socket_set_option(c, ASOCK_OPT_NO_DELAY, 1));
        CHECK_OK(asock_socket_set_option(s, ASOCK_OPT_NO_DELAY, 1));
        struct echo *e = calloc(1, sizeof *e);
        REQUIRE(e != NULL);
        e->s = s;
        atomic_init(&e->errors, 0);
        atomic_init(&e->eof, false);
        asock_async_result first;
        REQUIRE_OK(asock_begin_receive(s, e->buf, sizeof e->buf, 0, echo_recv_cb, e, &first));
        const int rounds = scaled(1000, 200);
        int pongs = 0;
        for (int i = 0; i < rounds; i++) {
            char msg[8], got[8];
            snprintf(msg, sizeof msg, "P%05d\n", i % 100000);
            if (!send_all(c, msg, 7) || !recv_exact(c, got, 7))
                break;
            if (memcmp(msg, got, 7) != 0)
                break;
            pongs++;
        }
        CHECK_EQ_INT(pongs, rounds);
        CHECK_OK(asock_socket_shutdown(c, ASOCK_SHUTDOWN_SEND));
        CHECK(wait_bool(&e->eof, wait_ms()));
        CHECK_EQ_INT(atomic_load(&e->errors), 0);
        CHECK_OK(asock_socket_close(c));
        CHECK_OK(asock_socket_close(s));
        CHECK_OK(asock_loop_free(tl.loop));
        free(e);
    }
}

/* ---- write a lot, then shutdown (libuv tcp_writealot) ---------------------------- */

struct reader {
    asock_socket s;
    uint8_t buf[65536];
    size_t total;
    size_t first_bad;
    atomic_int errors;
    atomic_bool eof;
};

static void reader_cb(asock_async_result ar, void *state) {
    struct reader *r = state;
    asock_error ec = -7;
    int32_t n = asock_end_receive(ar, &ec);
    if (n > 0 && ec == ASOCK_OK) {
        for (int32_t i = 0; i < n; i++)
            if (r->first_bad == SIZE_MAX && r->buf[i] != pattern_at(r->total + (size_t)i))
                r->first_bad = r->total + (size_t)i;
        r->total += (size_t)n;
        asock_async_result next;
        if (asock_begin_receive(r->s, r->buf, sizeof r->buf, 0, reader_cb, r, &next) != ASOCK_OK)
            atomic_fetch_add(&r->errors, 1);
    } else {
        if (n != 0 || ec != ASOCK_OK)
            atomic_fetch_add(&r->errors, 1);
        atomic_store(&r->eof, true);
    }
}

struct write_rec {
    atomic_int calls;
    int32_t n;
    asock_error ec;
};

static void write_end_cb(asock_async_result ar, void *state) {
    struct write_rec *w = state;
    w->n = asock_end_send(ar, &w->ec);
    atomic_fetch_add(&w->calls, 1);
}

TEST(write_a_lot_then_shutdown_peer_reads_everything_then_0) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c, s;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET, &c, &s));
    const int writes = scaled(1000, 200);
    const size_t chunk = 16 * 1024, total = (size_t)writes * chunk;
    uint8_t *data = malloc(total);
    struct write_rec *w = calloc((size_t)writes, sizeof *w);
    struct reader *r = calloc(1, sizeof *r);
    REQUIRE(data != NULL && w != NULL && r != NULL);
    fill_pattern(data, total, 0);
    r->s = s;
    r->first_bad = SIZE_MAX;
    atomic_init(&r->errors, 0);
    atomic_init(&r->eof, false);
    asock_async_result ar;
    REQUIRE_OK(asock_begin_receive(s, r->buf, sizeof r->buf, 0, reader_cb, r, &ar));
    for (int i = 0; i < writes; i++) {
        atomic_init(&w[i].calls, 0);
        REQUIRE_OK(asock_begin_send(c, data + (size_t)i * chunk, chunk, 0, write_end_cb, &w[i], &ar));
    }
    int bad = 0;
    for (int i = 0; i < writes; i++) {
        struct harness_int_target t = {&w[i].calls, 1};
        if (!wait_until(harness_pred_int_ge, &t, wait_ms()) || w[i].n != (int32_t)chunk || w[i].ec != ASOCK_OK)
            bad++;
    }
    CHECK_EQ_INT(bad, 0);
    /* Every write is done: now the end of the stream. */
    CHECK_OK(asock_socket_shutdown(c, ASOCK_SHUTDOWN_SEND));
    CHECK(wait_bool(&r->eof, wait_ms()));
    CHECK(loop_flush(tl.loop));
    CHECK_EQ_INT(r->total, total);
    CHECK(r->first_bad == SIZE_MAX);
    CHECK_EQ_INT(atomic_load(&r->errors), 0);
    for (int i = 0; i < writes; i++)
        if (atomic_load(&w[i].calls) != 1)
            bad++;
    CHECK_EQ_INT(bad, 0);
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(tl.loop));
    free(data);
    free(w);
    free(r);
}

/* ---- the write queue's order when the socket closes partway ---------------------- */

struct ordered_write {
    atomic_int calls;
    int order;
    int32_t n;
    asock_error ec;
};

static atomic_int write_seq;

static void ordered_write_cb(asock_async_result ar, void *state) {
    struct ordered_write *w = state;
    w->n = asock_end_send(ar, &w->ec);
    w->order = atomic_fetch_add(&write_seq, 1);
    atomic_fetch_add(&w->calls, 1);
}

TEST(write_queue_order_when_closed_partway) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c;
    int peer;
    REQUIRE(px_pair(tl.loop, ASOCK_AF_INET, 16384, 16384, &c, &peer));
    const int N = scaled(10000, 2000);
    const size_t chunk = 4096, total = (size_t)N * chunk;
    uint8_t *data = malloc(total);
    struct ordered_write *w = calloc((size_t)N, sizeof *w);
    REQUIRE(data != NULL && w != NULL);
    fill_pattern(data, total, 0);
    atomic_store(&write_seq, 0);
    for (int i = 0; i < N; i++) {
        atomic_init(&w[i].calls, 0);
        asock_async_result ar;
        REQUIRE_OK(asock_begin_send(c, data + (size_t)i * chunk, chunk, 0, ordered_write_cb, &w[i], &ar));
    }
    /* The peer takes a part, then the writer closes. */
    const size_t part = 256 * 1024;
    uint8_t *in = malloc(total);
    REQUIRE(in != NULL);
    CHECK(px_read_exact(peer, in, part));
    /* The writes whose bytes the peer has read are done: let their
     * callbacks (which End them) run before the close, so they count as
     * successes. Later ones race the close: either outcome is fine. */
    const int read_writes = (int)(part / chunk) - 1;
    struct harness_int_target t0 = {&w[read_writes - 1].calls, 1};
    CHECK(wait_until(harness_pred_int_ge, &t0, wait_ms()));
    CHECK_OK(asock_socket_close(c));
    /* What was sent before the close still arrives, then the end. */
    size_t got = part;
    for (;;) {
        ssize_t n = recv(peer, in + got, total - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
        if (got == total)
            break;
    }
    CHECK(memcmp(in, data, got) == 0);
    int bad_calls = 0, bad_order = 0, other = 0;
    for (int i = 0; i < N; i++) {
        struct harness_int_target t = {&w[i].calls, 1};
        if (!wait_until(harness_pred_int_ge, &t, wait_ms()))
            bad_calls++;
    }
    CHECK(loop_flush(tl.loop));
    int ok = 0, aborted = 0;
    bool prefix = true;
    for (int i = 0; i < N; i++) {
        if (atomic_load(&w[i].calls) != 1)
            bad_calls++;
        if (i > 0 && w[i].order != w[i - 1].order + 1)
            bad_order++;
        if (w[i].n == (int32_t)chunk && w[i].ec == ASOCK_OK) {
            ok++;
            if (aborted > 0)
                prefix = false;
        } else if (w[i].n == -1 && w[i].ec == ASOCK_E_OBJECT_DISPOSED) {
            aborted++;
        } else {
            other++;
        }
    }
    CHECK_EQ_INT(bad_calls, 0);
    CHECK_EQ_INT(bad_order, 0);
    CHECK_EQ_INT(other, 0);
    CHECK_EQ_INT(ok + aborted, N);
    CHECK(prefix);                                  /* the successes are a prefix */
    CHECK(ok >= read_writes && ok < N);            /* some went, not all */
    CHECK(got >= (size_t)ok * chunk);               /* every success arrived */
    printf("    %d writes completed, %d aborted, %zu bytes arrived\n", ok, aborted, got);
    close(peer);
    free(in);
    free(data);
    free(w);
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- close while connecting (libuv tcp_close_while_connecting) ------------------- */

struct timed_close {
    asock_socket s;
    asock_error e;
    atomic_bool done;
};

static void timed_close_cb(void *state, asock_error status) {
    struct timed_close *t = state;
    t->e = status == ASOCK_OK ? asock_socket_close(t->s) : status;
    atomic_store(&t->done, true);
}

TEST(close_while_connecting_from_a_timer_on_the_loop) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    for (int f = 0; f < 2; f++) {
        uint16_t port;
        int lfd = px_listen(FAMILIES[f], 0, 0, &port);
        REQUIRE(lfd >= 0);
        int filler = px_connect(FAMILIES[f], port);
        REQUIRE(filler >= 0);
        asock_socket c;
        REQUIRE_OK(asock_socket_new(tl.loop, FAMILIES[f], ASOCK_SOCK_STREAM, 0, &c));
        op_rec r;
        op_rec_init(&r, 1);
        asock_endpoint ep = lo_ep(FAMILIES[f], port);
        asock_async_result ar;
        REQUIRE_OK(asock_begin_connect(c, &ep, rec_cb, &r, &ar));
        struct timed_close t = {c, -7, false};
        atomic_init(&t.done, false);
        REQUIRE_OK(asock_loop_add_timer(tl.loop, 20, timed_close_cb, &t, NULL));
        CHECK(wait_bool(&t.done, wait_ms()));
        CHECK_OK(t.e);
        CHECK(wait_until(pred_rec_called, &r, wait_ms()));
        CHECK_ERR(asock_end_connect(ar), ASOCK_E_OBJECT_DISPOSED);
        CHECK(loop_flush(tl.loop));
        CHECK_EQ_INT(atomic_load(&r.calls), 1);
        CHECK(pthread_equal(r.thread, tl.thread));
        close(filler);
        close(lfd);
    }
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- write to a half-open connection: no SIGPIPE, each send once ---------------- */

/* Sends `len` bytes once, waits, ends: the count (or -1) and *ec. */
static int32_t send_once(asock_socket s, const uint8_t *buf, size_t len, asock_error *ec, op_rec *r) {
    asock_async_result ar;
    asock_error e = asock_begin_send(s, buf, len, 0, rec_cb, r, &ar);
    if (e != ASOCK_OK) {
        *ec = e;
        return -2;
    }
    if (!ar_done(ar, wait_ms())) {
        harness_fail_cond(__FILE__, __LINE__, "send_once: the send completes");
        asock_socket_close(s);
    }
    return asock_end_send(ar, ec);
}

static void write_to_half_open(int32_t fam, bool peer_shut_rd) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c;
    int peer;
    REQUIRE(px_pair(tl.loop, fam, 0, 0, &c, &peer));
    static uint8_t buf[1024];
    enum { MAXSENDS = 100 };
    op_rec r[MAXSENDS];
    op_rec_init(r, MAXSENDS);
    int used = 0;
    if (peer_shut_rd) {
        CHECK(shutdown(peer, SHUT_RD) == 0);
        /* A little data: it completes, or fails with Shutdown/Reset. */
        for (int i = 0; i < 4; i++) {
            asock_error ec = -7;
            int32_t n = send_once(c, buf, sizeof buf, &ec, &r[used++]);
            if (n != (int32_t)sizeof buf && ec != ASOCK_SHUTDOWN)
                CHECK_ERR(ec, ASOCK_CONNECTION_RESET);
        }
    }
    /* The peer goes away (with unread data after SHUT_RD: a reset). */
    close(peer);
    asock_error first_error = ASOCK_OK;
    int errors = 0;
    while (used < MAXSENDS) {
        asock_error ec = -7;
        int32_t n = send_once(c, buf, sizeof buf, &ec, &r[used++]);
        if (n == (int32_t)sizeof buf && ec == ASOCK_OK)
            continue;
        if (ec != ASOCK_SHUTDOWN)
            CHECK_ERR(ec, ASOCK_CONNECTION_RESET);
        if (first_error == ASOCK_OK)
            first_error = ec;
        if (++errors == 3)
            break;
    }
    CHECK(first_error != ASOCK_OK); /* writing to a closed peer fails */
    CHECK(all_called(r, (size_t)used));
    CHECK(loop_flush(tl.loop));
    for (int i = 0; i < used; i++)
        CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(write_to_a_closed_peer_fails_once_without_sigpipe) {
    write_to_half_open(ASOCK_AF_INET, false);
    write_to_half_open(ASOCK_AF_INET6, false);
}

TEST(write_to_a_peer_that_shut_down_receiving_then_closed) {
    write_to_half_open(ASOCK_AF_INET, true);
    write_to_half_open(ASOCK_AF_INET6, true);
}

/* ---- shutdown twice (libuv shutdown_twice) ------------------------------------------ */

TEST(shutdown_twice_is_ok_or_not_connected) {
    for (int f = 0; f < 2; f++) {
        asock_socket c, s;
        REQUIRE(tcp_pair((asock_loop){0}, (asock_loop){0}, FAMILIES[f], &c, &s));
        uint8_t buf[4];
        asock_async_result ar;
        REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, NULL, NULL, &ar));
        CHECK_OK(asock_socket_shutdown(c, ASOCK_SHUTDOWN_SEND));
        asock_error e = asock_socket_shutdown(c, ASOCK_SHUTDOWN_SEND);
        if (e != ASOCK_OK)
            CHECK_ERR(e, ASOCK_NOT_CONNECTED);
        e = asock_socket_shutdown(c, ASOCK_SHUTDOWN_BOTH);
        if (e != ASOCK_OK)
            CHECK_ERR(e, ASOCK_NOT_CONNECTED);
        REQUIRE(ar_done(ar, wait_ms()));
        asock_error ec = -7;
        CHECK_EQ_INT(asock_end_receive(ar, &ec), 0);
        CHECK_ERR(ec, ASOCK_OK);
        /* A send after shutdown(SEND) fails with Shutdown, once. */
        op_rec r;
        op_rec_init(&r, 1);
        ec = -7;
        CHECK_EQ_INT(send_once(c, (const uint8_t *)"no", 2, &ec, &r), -1);
        CHECK_ERR(ec, ASOCK_SHUTDOWN);
        CHECK(wait_until(pred_rec_called, &r, wait_ms()));
        CHECK_OK(asock_socket_close(c));
        CHECK_OK(asock_socket_close(s));
    }
    /* Never connected. */
    asock_socket n;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &n));
    CHECK_ERR(asock_socket_shutdown(n, ASOCK_SHUTDOWN_SEND), ASOCK_NOT_CONNECTED);
    CHECK_OK(asock_socket_close(n));
}

/* ---- reset (libuv tcp_reset) ----------------------------------------------------------- */

TEST(close_with_linger_0_resets_the_peers_pending_receive) {
    for (int f = 0; f < 2; f++) {
        test_loop tl;
        REQUIRE(test_loop_start(&tl));
        asock_socket c, s;
        REQUIRE(tcp_pair(tl.loop, tl.loop, FAMILIES[f], &c, &s));
        CHECK_OK(asock_socket_set_option(c, ASOCK_OPT_LINGER_SECONDS, 0));
        int32_t v = -7;
        CHECK_OK(asock_socket_get_option(c, ASOCK_OPT_LINGER_SECONDS, &v));
        CHECK_EQ_INT(v, 0);
        op_rec r[2];
        op_rec_init(r, 2);
        uint8_t bs[8], bc[8];
        asock_async_result rs, rc;
        REQUIRE_OK(asock_begin_receive(s, bs, sizeof bs, 0, rec_cb, &r[0], &rs));
        REQUIRE_OK(asock_begin_receive(c, bc, sizeof bc, 0, rec_cb, &r[1], &rc));
        CHECK_OK(asock_socket_close(c));
        CHECK(all_called(r, 2));
        asock_error ec = 0;
        CHECK_EQ_INT(asock_end_receive(rs, &ec), -1);
        CHECK_ERR(ec, ASOCK_CONNECTION_RESET);
        ec = 0;
        CHECK_EQ_INT(asock_end_receive(rc, &ec), -1);
        CHECK_ERR(ec, ASOCK_E_OBJECT_DISPOSED);
        /* The reset side's sends fail too. */
        op_rec r2;
        op_rec_init(&r2, 1);
        ec = -7;
        CHECK_EQ_INT(send_once(s, (const uint8_t *)"gone", 4, &ec, &r2), -1);
        if (ec != ASOCK_SHUTDOWN)
            CHECK_ERR(ec, ASOCK_CONNECTION_RESET);
        CHECK(wait_until(pred_rec_called, &r2, wait_ms()));
        CHECK(loop_flush(tl.loop));
        CHECK_EQ_INT(atomic_load(&r[0].calls), 1);
        CHECK_EQ_INT(atomic_load(&r[1].calls), 1);
        CHECK_EQ_INT(atomic_load(&r2.calls), 1);
        CHECK_OK(asock_socket_close(s));
        CHECK_OK(asock_loop_free(tl.loop));
    }
}

int main(void) {
    signal(SIGPIPE, SIG_DFL); /* a send to a dead peer must never raise it */
    RUN(ping_pong_1000_round_trips);
    RUN(write_a_lot_then_shutdown_peer_reads_everything_then_0);
    RUN(write_queue_order_when_closed_partway);
    RUN(close_while_connecting_from_a_timer_on_the_loop);
    RUN(write_to_a_closed_peer_fails_once_without_sigpipe);
    RUN(write_to_a_peer_that_shut_down_receiving_then_closed);
    RUN(shutdown_twice_is_ok_or_not_connected);
    RUN(close_with_linger_0_resets_the_peers_pending_receive);
    return harness_finish();
}
