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

#include "apm_helpers.h"

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
