/*
 * test_apm_tcp.c — section 5 on stream sockets, IPv4 and IPv6: a stream
 * send completes when the whole buffer is gone (8 MiB against a slow
 * reader); connect (refused, by name, unknown name, literal, arguments,
 * close while connecting); accept (several pending, the accepted socket
 * works, close with accepts pending); receive (0 on orderly shutdown,
 * ConnectionReset, zero-length, PEEK); a send stopped by an error.
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

#include "apm_helpers.h"

static const int32_t FAMILIES[2] = {ASOCK_AF_INET, ASOCK_AF_INET6};

static bool pred_rec_called(void *ctx) { return atomic_load(&((op_rec *)ctx)->calls) >= 1; }

static bool is_resolve_failure(asock_error e) {
    return e == ASOCK_HOST_NOT_FOUND || e == ASOCK_TRY_AGAIN || e == ASOCK_NO_RECOVERY || e == ASOCK_NO_DATA;
}

/* ---- a stream send completes when the whole buffer is gone ------------------ */

struct slow_reader {
    int fd;
    size_t want, got;
    size_t first_bad; /* SIZE_MAX: every byte as sent */
    bool eof;
    atomic_bool done;
};

static void *slow_reader_main(void *arg) {
    struct slow_reader *r = arg;
    uint8_t chunk[4096];
    size_t since_pause = 0;
    while (r->got < r->want) {
        size_t ask = r->want - r->got < sizeof chunk ? r->want - r->got : sizeof chunk;
        ssize_t n = recv(r->fd, chunk, ask, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (ssize_t i = 0; i < n; i++)
            if (r->first_bad == SIZE_MAX && chunk[i] != pattern_at(r->got + (size_t)i))
                r->first_bad = r->got + (size_t)i;
        r->got += (size_t)n;
        since_pause += (size_t)n;
        if (since_pause >= 64 * 1024) { /* a slow reader */
            harness_sleep_ms(1);
            since_pause = 0;
        }
    }
    uint8_t extra;
    r->eof = recv(r->fd, &extra, 1, 0) == 0;
    atomic_store(&r->done, true);
    return NULL;
}

static void big_send_against_slow_reader(int32_t fam) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c;
    int peer;
    REQUIRE(px_pair(tl.loop, fam, 8192, 8192, &c, &peer));
    const size_t len = 8u << 20;
    uint8_t *buf = malloc(len);
    REQUIRE(buf != NULL);
    fill_pattern(buf, len, 0);
    op_rec r;
    op_rec_init(&r, 1);
    asock_async_result ar;
    REQUIRE_OK(asock_begin_send(c, buf, len, 0, rec_cb, &r, &ar));
    /* Small buffers, nobody reading yet: it cannot be complete. */
    CHECK(!asock_async_result_is_completed(ar));
    CHECK(!asock_async_result_completed_synchronously(ar));
    struct slow_reader rd;
    memset(&rd, 0, sizeof rd);
    rd.fd = peer;
    rd.want = len;
    rd.first_bad = SIZE_MAX;
    atomic_init(&rd.done, false);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, slow_reader_main, &rd) == 0);
    bool completed = ar_done(ar, scaled(60000, 240000));
    CHECK(completed);
    if (!completed)
        asock_socket_close(c);
    asock_error ec = -7;
    CHECK_EQ_INT(asock_end_send(ar, &ec), (int32_t)len);
    CHECK_ERR(ec, ASOCK_OK);
    if (completed)
        CHECK_OK(asock_socket_shutdown(c, ASOCK_SHUTDOWN_SEND));
    CHECK(wait_bool(&rd.done, wait_ms()));
    pthread_join(th, NULL);
    CHECK_EQ_INT(rd.got, len);
    CHECK(rd.first_bad == SIZE_MAX);
    CHECK(rd.eof);
    CHECK(wait_until(pred_rec_called, &r, wait_ms()));
    CHECK(loop_flush(tl.loop));
    CHECK_EQ_INT(atomic_load(&r.calls), 1);
    free(buf);
    close(peer);
    if (completed)
        CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(send_8_mib_completes_whole_against_a_slow_reader_ipv4) { big_send_against_slow_reader(ASOCK_AF_INET); }
TEST(send_8_mib_completes_whole_against_a_slow_reader_ipv6) { big_send_against_slow_reader(ASOCK_AF_INET6); }

/* A send stopped by an error after some bytes went: the count and the
 * error. asock_end_send_to is "as asock_end_send", and a send-to may carry
 * stream data. */
static void send_stopped_by_a_reset(bool send_to) {
    for (int f = 0; f < 2; f++) {
        asock_socket c;
        int peer;
        REQUIRE(px_pair((asock_loop){0}, FAMILIES[f], 8192, 8192, &c, &peer));
        asock_endpoint rem;
        REQUIRE_OK(asock_socket_remote_endpoint(c, &rem));
        const size_t len = 8u << 20;
        uint8_t *buf = calloc(1, len);
        REQUIRE(buf != NULL);
        op_rec r;
        op_rec_init(&r, 1);
        asock_async_result ar;
        if (send_to)
            REQUIRE_OK(asock_begin_send_to(c, buf, len, 0, &rem, rec_cb, &r, &ar));
        else
            REQUIRE_OK(asock_begin_send(c, buf, len, 0, rec_cb, &r, &ar));
        CHECK(!asock_async_result_is_completed(ar));
        px_close_reset(peer);
        bool completed = ar_done(ar, wait_ms());
        CHECK(completed); /* the reset must wake the pending send */
        if (!completed)
            asock_socket_close(c);
        asock_error ec = -7;
        int32_t n = send_to ? asock_end_send_to(ar, &ec) : asock_end_send(ar, &ec);
        if (completed) {
            CHECK(n > 0 && (size_t)n < len);
            if (ec != ASOCK_SHUTDOWN)
                CHECK_ERR(ec, ASOCK_CONNECTION_RESET);
        }
        CHECK(wait_until(pred_rec_called, &r, wait_ms()));
        free(buf);
        if (completed)
            CHECK_OK(asock_socket_close(c));
    }
}

TEST(send_stopped_by_a_reset_returns_the_count_sent_and_the_error) { send_stopped_by_a_reset(false); }
TEST(stream_send_to_stopped_by_a_reset_returns_the_count_sent_and_the_error) { send_stopped_by_a_reset(true); }

/* ---- connect --------------------------------------------------------------------- */

TEST(connect_refused_at_end) {
    for (int f = 0; f < 2; f++) {
        /* A port that was bound, then closed. */
        asock_socket gone, c;
        asock_endpoint ep;
        REQUIRE(listener_new((asock_loop){0}, FAMILIES[f], 1, &gone, &ep));
        CHECK_OK(asock_socket_close(gone));
        REQUIRE_OK(asock_socket_new((asock_loop){0}, FAMILIES[f], ASOCK_SOCK_STREAM, 0, &c));
        op_rec r;
        op_rec_init(&r, 1);
        asock_async_result ar;
        REQUIRE_OK(asock_begin_connect(c, &ep, rec_cb, &r, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        CHECK_ERR(asock_end_connect(ar), ASOCK_CONNECTION_REFUSED);
        CHECK(wait_until(pred_rec_called, &r, wait_ms()));
        /* The same through connect_host with the address literal. */
        const char *lit = FAMILIES[f] == ASOCK_AF_INET ? "127.0.0.1" : "::1";
        asock_socket c2;
        REQUIRE_OK(asock_socket_new((asock_loop){0}, FAMILIES[f], ASOCK_SOCK_STREAM, 0, &c2));
        REQUIRE_OK(asock_begin_connect_host(c2, lit, ep.port, NULL, NULL, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        CHECK_ERR(asock_end_connect(ar), ASOCK_CONNECTION_REFUSED);
        CHECK_OK(asock_socket_close(c));
        CHECK_OK(asock_socket_close(c2));
    }
}

/* Connects `c` with connect_host(host) to a fresh listener and checks the
 * connection carries data both ways. */
static void connect_host_and_talk(int32_t fam, const char *host) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket lst, c, s;
    asock_endpoint el;
    REQUIRE(listener_new(tl.loop, fam, 4, &lst, &el));
    REQUIRE_OK(asock_socket_new(tl.loop, fam, ASOCK_SOCK_STREAM, 0, &c));
    op_rec r;
    op_rec_init(&r, 1);
    asock_async_result ac, aa;
    REQUIRE_OK(asock_begin_accept(lst, NULL, NULL, &aa));
    REQUIRE_OK(asock_begin_connect_host(c, host, el.port, rec_cb, &r, &ac));
    REQUIRE(ar_done(ac, wait_ms()));
    CHECK_OK(asock_end_connect(ac));
    REQUIRE(ar_done(aa, wait_ms()));
    REQUIRE_OK(asock_end_accept(aa, &s));
    asock_endpoint rem, loc;
    CHECK_OK(asock_socket_remote_endpoint(c, &rem));
    CHECK_EQ_INT(rem.port, el.port);
    CHECK(is_loopback_ep(&rem, fam));
    CHECK_OK(asock_socket_local_endpoint(c, &loc));
    CHECK_OK(asock_socket_remote_endpoint(s, &rem));
    CHECK_EQ_INT(rem.port, loc.port);
    CHECK(send_all(c, "ping", 4));
    uint8_t got[4];
    CHECK(recv_exact(s, got, 4));
    CHECK(memcmp(got, "ping", 4) == 0);
    CHECK(send_all(s, "pong", 4));
    CHECK(recv_exact(c, got, 4));
    CHECK(memcmp(got, "pong", 4) == 0);
    CHECK(wait_until(pred_rec_called, &r, wait_ms()));
    CHECK(loop_flush(tl.loop));
    CHECK_EQ_INT(atomic_load(&r.calls), 1);
    CHECK(pthread_equal(r.thread, tl.thread));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(lst));
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(connect_host_by_name_localhost) { connect_host_and_talk(ASOCK_AF_INET, "localhost"); }
TEST(connect_host_by_literal_ipv4) { connect_host_and_talk(ASOCK_AF_INET, "127.0.0.1"); }
TEST(connect_host_by_literal_ipv6) { connect_host_and_talk(ASOCK_AF_INET6, "::1"); }

TEST(connect_host_unknown_name_fails_at_end_with_a_resolver_code) {
    asock_socket c;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &c));
    op_rec r;
    op_rec_init(&r, 1);
    asock_async_result ar;
    REQUIRE_OK(asock_begin_connect_host(c, "no-such-host.invalid", 80, rec_cb, &r, &ar));
    REQUIRE(ar_done(ar, scaled(30000, 90000)));
    asock_error e = asock_end_connect(ar);
    if (!is_resolve_failure(e))
        CHECK_ERR(e, ASOCK_HOST_NOT_FOUND); /* prints what came */
    CHECK(wait_until(pred_rec_called, &r, wait_ms()));
    CHECK(loop_flush((asock_loop){0}));
    CHECK_EQ_INT(atomic_load(&r.calls), 1);
    /* Nothing was connected: the socket can still connect somewhere real
     * (a loopback connect is immediate; 5 s is plenty). */
    asock_socket lst;
    asock_endpoint el;
    REQUIRE(listener_new((asock_loop){0}, ASOCK_AF_INET, 1, &lst, &el));
    REQUIRE_OK(asock_begin_connect(c, &el, NULL, NULL, &ar));
    bool connected = ar_done(ar, scaled(5000, 10000));
    CHECK(connected);
    if (!connected) {
        CHECK_OK(asock_socket_close(c)); /* completes it, so End returns */
        CHECK_ERR(asock_end_connect(ar), ASOCK_E_OBJECT_DISPOSED);
    } else {
        CHECK_OK(asock_end_connect(ar));
        CHECK_OK(asock_socket_close(c));
    }
    CHECK_OK(asock_socket_close(lst));
}

TEST(connect_argument_checks_from_begin) {
    asock_socket c4, c6;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &c4));
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET6, ASOCK_SOCK_STREAM, 0, &c6));
    op_rec r;
    op_rec_init(&r, 1);
    asock_async_result ar = SENTINEL_RESULT;
    CHECK_ERR(asock_begin_connect_host(c4, "localhost", 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_begin_connect_host(c4, "127.0.0.1", 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_begin_connect_host(c4, "", 80, rec_cb, &r, &ar), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_begin_connect_host(c4, NULL, 80, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_NULL);
    asock_endpoint e6 = lo_ep(ASOCK_AF_INET6, 80), e4 = lo_ep(ASOCK_AF_INET, 80);
    CHECK_ERR(asock_begin_connect(c4, &e6, rec_cb, &r, &ar), ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);
    CHECK_ERR(asock_begin_connect(c6, &e4, rec_cb, &r, &ar), ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);
    CHECK(ar.id == SENTINEL_RESULT.id);
    CHECK(loop_flush((asock_loop){0}));
    CHECK_EQ_INT(atomic_load(&r.calls), 0);
    CHECK_OK(asock_socket_close(c4));
    CHECK_OK(asock_socket_close(c6));
}

TEST(close_while_connecting_callback_once_end_object_disposed) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    for (int f = 0; f < 2; f++) {
        int32_t fam = FAMILIES[f];
        /* (a) a connect held pending by a full backlog */
        uint16_t port;
        int lfd = px_listen(fam, 0, 0, &port);
        REQUIRE(lfd >= 0);
        int filler = px_connect(fam, port);
        REQUIRE(filler >= 0);
        asock_socket c;
        REQUIRE_OK(asock_socket_new(tl.loop, fam, ASOCK_SOCK_STREAM, 0, &c));
        op_rec r;
        op_rec_init(&r, 1);
        asock_endpoint ep = lo_ep(fam, port);
        asock_async_result ar;
        REQUIRE_OK(asock_begin_connect(c, &ep, rec_cb, &r, &ar));
        bool c_done = true;
        CHECK_OK(asock_async_result_wait(ar, 50, &c_done));
        CHECK(!c_done); /* the premise: still connecting */
        CHECK_OK(asock_socket_close(c));
        CHECK(wait_until(pred_rec_called, &r, wait_ms()));
        CHECK_ERR(asock_end_connect(ar), ASOCK_E_OBJECT_DISPOSED);
        CHECK(loop_flush(tl.loop));
        CHECK_EQ_INT(atomic_load(&r.calls), 1);
        close(filler);
        close(lfd);

        /* (b) closed right after Begin, many times (whatever state it reached) */
        asock_socket lst;
        asock_endpoint el;
        REQUIRE(listener_new(tl.loop, fam, 128, &lst, &el));
        enum { N = 40 };
        op_rec rs[N];
        op_rec_init(rs, N);
        asock_async_result ars[N];
        for (int i = 0; i < N; i++) {
            REQUIRE_OK(asock_socket_new(tl.loop, fam, ASOCK_SOCK_STREAM, 0, &c));
            REQUIRE_OK(asock_begin_connect(c, &el, rec_cb, &rs[i], &ars[i]));
            CHECK_OK(asock_socket_close(c));
        }
        for (int i = 0; i < N; i++) {
            CHECK(wait_until(pred_rec_called, &rs[i], wait_ms()));
            CHECK_ERR(asock_end_connect(ars[i]), ASOCK_E_OBJECT_DISPOSED);
        }
        /* (c) by name, closed while resolving or connecting */
        op_rec rh[N];
        op_rec_init(rh, N);
        for (int i = 0; i < N && fam == ASOCK_AF_INET; i++) {
            REQUIRE_OK(asock_socket_new(tl.loop, fam, ASOCK_SOCK_STREAM, 0, &c));
            REQUIRE_OK(asock_begin_connect_host(c, i % 2 ? "localhost" : "no-such-host.invalid", el.port, rec_cb,
                                                &rh[i], &ars[i]));
            CHECK_OK(asock_socket_close(c));
            CHECK(wait_until(pred_rec_called, &rh[i], wait_ms()));
            CHECK_ERR(asock_end_connect(ars[i]), ASOCK_E_OBJECT_DISPOSED);
        }
        CHECK(loop_flush(tl.loop));
        for (int i = 0; i < N; i++) {
            CHECK_EQ_INT(atomic_load(&rs[i].calls), 1);
            if (fam == ASOCK_AF_INET)
                CHECK_EQ_INT(atomic_load(&rh[i].calls), 1);
        }
        CHECK_OK(asock_socket_close(lst));
    }
    /* The resolver may still answer for the closed sockets: let it, and
     * check nothing is called again. */
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- accept ------------------------------------------------------------------------ */

static void several_pending_accepts(int32_t fam) {
    test_loop tl, tc;
    REQUIRE(test_loop_start(&tl));
    REQUIRE(test_loop_start(&tc));
    asock_socket lst;
    asock_endpoint el;
    REQUIRE(listener_new(tl.loop, fam, 16, &lst, &el));
    enum { N = 4 };
    op_rec r[N];
    op_rec_init(r, N);
    asock_async_result aa[N];
    for (int i = 0; i < N; i++)
        REQUIRE_OK(asock_begin_accept(lst, rec_cb, &r[i], &aa[i]));
    asock_socket cl[N], acc[N];
    for (int i = 0; i < N; i++) {
        REQUIRE_OK(asock_socket_new(tc.loop, fam, ASOCK_SOCK_STREAM, 0, &cl[i]));
        asock_async_result ac;
        REQUIRE_OK(asock_begin_connect(cl[i], &el, NULL, NULL, &ac));
        REQUIRE(ar_done(ac, wait_ms()));
        CHECK_OK(asock_end_connect(ac));
        /* The i-th connection lands in the i-th accept. */
        CHECK(wait_until(pred_rec_called, &r[i], wait_ms()));
        for (int k = i + 1; k < N; k++)
            CHECK(!asock_async_result_is_completed(aa[k]));
    }
    CHECK(loop_flush(tl.loop));
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
        CHECK(pthread_equal(r[i].thread, tl.thread));
        acc[i] = SENTINEL_SOCKET;
        CHECK_OK(asock_end_accept(aa[i], &acc[i]));
        if (acc[i].id == SENTINEL_SOCKET.id)
            return;
        for (int k = 0; k < i; k++)
            CHECK(acc[i].id != acc[k].id);
        asock_endpoint rem, loc;
        CHECK_OK(asock_socket_remote_endpoint(acc[i], &rem));
        CHECK_OK(asock_socket_local_endpoint(cl[i], &loc));
        CHECK_EQ_INT(rem.port, loc.port);
        CHECK(is_loopback_ep(&rem, fam));
        CHECK_OK(asock_socket_local_endpoint(acc[i], &loc));
        CHECK_EQ_INT(loc.port, el.port);
    }
    /* Each accepted socket works both ways, and its operations complete on
     * the listener's loop. */
    for (int i = 0; i < N; i++) {
        uint8_t msg[2] = {'a', (uint8_t)i}, got[2];
        CHECK(send_all(cl[i], msg, 2));
        op_rec rr;
        op_rec_init(&rr, 1);
        asock_async_result ar;
        REQUIRE_OK(asock_begin_receive(acc[i], got, 2, 0, rec_cb, &rr, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        CHECK_EQ_INT(asock_end_receive(ar, NULL), 2);
        CHECK(memcmp(got, msg, 2) == 0);
        CHECK(wait_until(pred_rec_called, &rr, wait_ms()));
        CHECK(pthread_equal(rr.thread, tl.thread));
        CHECK(send_all(acc[i], "ok", 2));
        CHECK(recv_exact(cl[i], got, 2));
        CHECK(memcmp(got, "ok", 2) == 0);
    }
    for (int i = 0; i < N; i++) {
        CHECK_OK(asock_socket_close(acc[i]));
        CHECK_OK(asock_socket_close(cl[i]));
    }
    CHECK_OK(asock_socket_close(lst));
    CHECK_OK(asock_loop_free(tl.loop));
    CHECK_OK(asock_loop_free(tc.loop));
}

TEST(several_pending_accepts_each_get_one_working_connection_ipv4) { several_pending_accepts(ASOCK_AF_INET); }
TEST(several_pending_accepts_each_get_one_working_connection_ipv6) { several_pending_accepts(ASOCK_AF_INET6); }

TEST(close_listener_with_pending_accepts_callback_once_end_object_disposed) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    for (int f = 0; f < 2; f++) {
        asock_socket lst;
        asock_endpoint el;
        REQUIRE(listener_new(tl.loop, FAMILIES[f], 16, &lst, &el));
        enum { N = 8 };
        op_rec r[N];
        op_rec_init(r, N);
        asock_async_result aa[N];
        for (int i = 0; i < N; i++)
            REQUIRE_OK(asock_begin_accept(lst, rec_cb, &r[i], &aa[i]));
        CHECK_OK(asock_socket_close(lst));
        for (int i = 0; i < N; i++) {
            CHECK(wait_until(pred_rec_called, &r[i], wait_ms()));
            asock_socket acc = SENTINEL_SOCKET;
            CHECK_ERR(asock_end_accept(aa[i], &acc), ASOCK_E_OBJECT_DISPOSED);
            CHECK(acc.id == SENTINEL_SOCKET.id);
        }
        CHECK(loop_flush(tl.loop));
        for (int i = 0; i < N; i++) {
            CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
            if (i > 0)
                CHECK(r[i].order > r[i - 1].order);
        }
        CHECK_ERR(asock_begin_accept(lst, rec_cb, &r[0], &aa[0]), ASOCK_E_OBJECT_DISPOSED);
    }
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- receive ------------------------------------------------------------------------ */

TEST(receive_returns_0_on_orderly_shutdown) {
    for (int f = 0; f < 2; f++) {
        asock_socket c, s;
        REQUIRE(tcp_pair((asock_loop){0}, (asock_loop){0}, FAMILIES[f], &c, &s));
        uint8_t buf[16];
        op_rec r;
        op_rec_init(&r, 1);
        asock_async_result ar;
        REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, rec_cb, &r, &ar));
        CHECK(send_all(c, "last", 4));
        CHECK_OK(asock_socket_shutdown(c, ASOCK_SHUTDOWN_SEND));
        REQUIRE(ar_done(ar, wait_ms()));
        CHECK_EQ_INT(asock_end_receive(ar, NULL), 4);
        asock_error ec = -7;
        REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, NULL, NULL, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        CHECK_EQ_INT(asock_end_receive(ar, &ec), 0);
        CHECK_ERR(ec, ASOCK_OK);
        /* ... and again: end of stream stays end of stream */
        REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, NULL, NULL, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        ec = -7;
        CHECK_EQ_INT(asock_end_receive(ar, &ec), 0);
        CHECK_ERR(ec, ASOCK_OK);
        /* The other direction still works (half close). */
        CHECK(send_all(s, "back", 4));
        CHECK(recv_exact(c, buf, 4));
        CHECK(memcmp(buf, "back", 4) == 0);
        CHECK_OK(asock_socket_close(c));
        CHECK_OK(asock_socket_close(s));
    }
}

TEST(receive_connection_reset_when_the_peer_closes_with_linger_0) {
    for (int f = 0; f < 2; f++) {
        test_loop tl;
        REQUIRE(test_loop_start(&tl));
        asock_socket c, s;
        REQUIRE(tcp_pair(tl.loop, tl.loop, FAMILIES[f], &c, &s));
        CHECK_OK(asock_socket_set_option(c, ASOCK_OPT_LINGER_SECONDS, 0));
        uint8_t buf[16];
        op_rec r;
        op_rec_init(&r, 1);
        asock_async_result ar;
        REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, rec_cb, &r, &ar));
        CHECK_OK(asock_socket_close(c));
        REQUIRE(ar_done(ar, wait_ms()));
        asock_error ec = 0;
        CHECK_EQ_INT(asock_end_receive(ar, &ec), -1);
        CHECK_ERR(ec, ASOCK_CONNECTION_RESET);
        CHECK(wait_until(pred_rec_called, &r, wait_ms()));
        CHECK(loop_flush(tl.loop));
        CHECK_EQ_INT(atomic_load(&r.calls), 1);
        CHECK_OK(asock_socket_close(s));
        CHECK_OK(asock_loop_free(tl.loop));
    }
}

TEST(zero_length_receive_completes_when_data_arrives_and_takes_none) {
    for (int f = 0; f < 2; f++) {
        asock_socket c, s;
        REQUIRE(tcp_pair((asock_loop){0}, (asock_loop){0}, FAMILIES[f], &c, &s));
        op_rec r;
        op_rec_init(&r, 1);
        uint8_t dummy[4];
        asock_async_result ar;
        REQUIRE_OK(asock_begin_receive(s, dummy, 0, 0, rec_cb, &r, &ar));
        bool done = true;
        CHECK_OK(asock_async_result_wait(ar, 50, &done));
        CHECK(!done); /* no data: it waits */
        CHECK(send_all(c, "12345", 5));
        REQUIRE(ar_done(ar, wait_ms()));
        asock_error ec = -7;
        CHECK_EQ_INT(asock_end_receive(ar, &ec), 0);
        CHECK_ERR(ec, ASOCK_OK);
        /* Nothing was taken. */
        uint8_t got[5];
        CHECK(recv_exact(s, got, 5));
        CHECK(memcmp(got, "12345", 5) == 0);
        CHECK(wait_until(pred_rec_called, &r, wait_ms()));
        CHECK_OK(asock_socket_close(c));
        CHECK_OK(asock_socket_close(s));
    }
}

TEST(peek_leaves_the_data_for_the_next_receive) {
    for (int f = 0; f < 2; f++) {
        asock_socket c, s;
        REQUIRE(tcp_pair((asock_loop){0}, (asock_loop){0}, FAMILIES[f], &c, &s));
        CHECK(send_all(c, "peekaboo", 8));
        uint8_t p1[8], p2[8], got[8];
        asock_async_result ar;
        REQUIRE_OK(asock_begin_receive(s, p1, sizeof p1, ASOCK_SOCKET_FLAG_PEEK, NULL, NULL, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        int32_t n = asock_end_receive(ar, NULL);
        CHECK(n >= 1 && n <= 8);
        CHECK(n > 0 && memcmp(p1, "peekaboo", (size_t)n) == 0);
        REQUIRE_OK(asock_begin_receive(s, p2, sizeof p2, ASOCK_SOCKET_FLAG_PEEK, NULL, NULL, &ar));
        REQUIRE(ar_done(ar, wait_ms()));
        n = asock_end_receive(ar, NULL);
        CHECK(n > 0 && memcmp(p2, "peekaboo", (size_t)n) == 0);
        CHECK(recv_exact(s, got, 8));
        CHECK(memcmp(got, "peekaboo", 8) == 0);
        /* Nothing left: the next receive waits. */
        REQUIRE_OK(asock_begin_receive(s, got, sizeof got, 0, NULL, NULL, &ar));
        bool done = true;
        CHECK_OK(asock_async_result_wait(ar, 30, &done));
        CHECK(!done);
        CHECK_OK(asock_socket_close(s));
        CHECK_EQ_INT(asock_end_receive(ar, NULL), -1);
        CHECK_OK(asock_socket_close(c));
    }
}

TEST(receive_argument_checks_from_begin) {
    asock_socket c, s;
    REQUIRE(tcp_pair((asock_loop){0}, (asock_loop){0}, ASOCK_AF_INET, &c, &s));
    op_rec r;
    op_rec_init(&r, 1);
    uint8_t buf[8];
    asock_async_result ar = SENTINEL_RESULT;
    CHECK_ERR(asock_begin_receive(s, buf, sizeof buf, 0x100, rec_cb, &r, &ar), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_begin_receive(s, buf, sizeof buf, ASOCK_SOCKET_FLAG_PEEK | 0x100, rec_cb, &r, &ar),
              ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_begin_receive(s, NULL, sizeof buf, 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_NULL);
    /* (no data is sent while these could be wrongly pending) */
    CHECK_ERR(asock_begin_receive(s, buf, (size_t)INT32_MAX + 1, 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_begin_receive(s, buf, SIZE_MAX, 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK(ar.id == SENTINEL_RESULT.id);
    CHECK(loop_flush((asock_loop){0}));
    CHECK_EQ_INT(atomic_load(&r.calls), 0);
    /* The socket is untouched: the next receive gets the next data. */
    CHECK(send_all(c, "z", 1));
    CHECK(recv_exact(s, buf, 1));
    CHECK_EQ_INT(buf[0], 'z');
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
}

TEST(receive_from_on_a_stream_socket_reports_the_peer) {
    for (int f = 0; f < 2; f++) {
        asock_socket c, s;
        REQUIRE(tcp_pair((asock_loop){0}, (asock_loop){0}, FAMILIES[f], &c, &s));
        uint8_t buf[8];
        asock_async_result ar;
        REQUIRE_OK(asock_begin_receive_from(s, buf, sizeof buf, 0, NULL, NULL, &ar));
        CHECK(send_all(c, "abc", 3));
        REQUIRE(ar_done(ar, wait_ms()));
        asock_endpoint from, cl;
        memset(&from, 0x77, sizeof from);
        asock_error ec = -7;
        int32_t n = asock_end_receive_from(ar, &from, &ec);
        /* A success must say who sent it: the connected peer. */
        CHECK_EQ_INT(n, 3);
        CHECK_ERR(ec, ASOCK_OK);
        CHECK_OK(asock_socket_local_endpoint(c, &cl));
        CHECK_EQ_INT(from.family, FAMILIES[f]);
        CHECK_EQ_INT(from.port, cl.port);
        CHECK(is_loopback_ep(&from, FAMILIES[f]));
        CHECK_OK(asock_socket_close(c));
        CHECK_OK(asock_socket_close(s));
    }
}

TEST(zero_length_send_on_a_stream_completes_with_0_and_sends_nothing) {
    asock_socket c, s;
    REQUIRE(tcp_pair((asock_loop){0}, (asock_loop){0}, ASOCK_AF_INET, &c, &s));
    op_rec r;
    op_rec_init(&r, 1);
    asock_async_result ar;
    REQUIRE_OK(asock_begin_send(c, NULL, 0, 0, rec_cb, &r, &ar));
    REQUIRE(ar_done(ar, wait_ms()));
    asock_error ec = -7;
    CHECK_EQ_INT(asock_end_send(ar, &ec), 0);
    CHECK_ERR(ec, ASOCK_OK);
    CHECK(wait_until(pred_rec_called, &r, wait_ms()));
    CHECK(send_all(c, "after", 5));
    uint8_t got[5];
    CHECK(recv_exact(s, got, 5));
    CHECK(memcmp(got, "after", 5) == 0);
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
}

int main(void) {
    signal(SIGPIPE, SIG_DFL);
    RUN(send_8_mib_completes_whole_against_a_slow_reader_ipv4);
    RUN(send_8_mib_completes_whole_against_a_slow_reader_ipv6);
    RUN(send_stopped_by_a_reset_returns_the_count_sent_and_the_error);
    RUN(stream_send_to_stopped_by_a_reset_returns_the_count_sent_and_the_error);
    RUN(connect_refused_at_end);
    RUN(connect_host_by_name_localhost);
    RUN(connect_host_by_literal_ipv4);
    RUN(connect_host_by_literal_ipv6);
    RUN(connect_host_unknown_name_fails_at_end_with_a_resolver_code);
    RUN(connect_argument_checks_from_begin);
    RUN(close_while_connecting_callback_once_end_object_disposed);
    RUN(several_pending_accepts_each_get_one_working_connection_ipv4);
    RUN(several_pending_accepts_each_get_one_working_connection_ipv6);
    RUN(close_listener_with_pending_accepts_callback_once_end_object_disposed);
    RUN(receive_returns_0_on_orderly_shutdown);
    RUN(receive_connection_reset_when_the_peer_closes_with_linger_0);
    RUN(zero_length_receive_completes_when_data_arrives_and_takes_none);
    RUN(peek_leaves_the_data_for_the_next_receive);
    RUN(receive_argument_checks_from_begin);
    RUN(receive_from_on_a_stream_socket_reports_the_peer);
    RUN(zero_length_send_on_a_stream_completes_with_0_and_sends_nothing);
    return harness_finish();
}
