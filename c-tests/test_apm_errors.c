/*
 * test_apm_errors.c — section 5, the conditions of seed 000's EndSend as
 * codes, for every End*: the none result (ArgumentNull), a result of
 * another Begin kind (Argument; the result stays usable), End twice
 * (InvalidOperation), the socket closed before End (ObjectDisposed), a
 * socket failure (its SocketError through error_code, which may be NULL);
 * and the argument checks of every Begin*, which start nothing.
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

/* ---- fixtures ------------------------------------------------------------ */

/* A full-backlog POSIX listener: a connect to it stays pending. */
typedef struct full_listener {
    int lfd, filler;
    uint16_t port;
} full_listener;

static inline bool full_listener_open(int32_t fam, full_listener *f) {
    f->lfd = px_listen(fam, 0, 0, &f->port);
    if (f->lfd < 0)
        return false;
    f->filler = px_connect(fam, f->port); /* takes the one accept-queue place */
    return f->filler >= 0;
}

static inline void full_listener_close(full_listener *f) {
    if (f->filler >= 0)
        close(f->filler);
    if (f->lfd >= 0)
        close(f->lfd);
}

/* Waits until every record has been called at least `n` times. */
static bool recs_called(op_rec *r, size_t count, int n) {
    int64_t deadline = now_ms() + wait_ms();
    for (size_t i = 0; i < count; i++) {
        struct harness_int_target t = {&r[i].calls, n};
        int left = (int)(deadline - now_ms());
        if (!wait_until(harness_pred_int_ge, &t, left > 0 ? left : 0))
            return false;
    }
    return true;
}

static bool pred_rec_called_once(void *ctx) { return atomic_load(&((op_rec *)ctx)->calls) >= 1; }

/* ---- the none result ---------------------------------------------------- */

TEST(end_none_result_is_argument_null_for_every_end) {
    const asock_async_result none = {0};
    asock_error ec = 12345;
    CHECK_EQ_INT(asock_end_send(none, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT_NULL);
    ec = 12345;
    CHECK_EQ_INT(asock_end_receive(none, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT_NULL);
    ec = 12345;
    CHECK_EQ_INT(asock_end_send_to(none, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT_NULL);
    ec = 12345;
    asock_endpoint from;
    memset(&from, 0x77, sizeof from);
    CHECK_EQ_INT(asock_end_receive_from(none, &from, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT_NULL);
    CHECK_EQ_INT(from.family, 0x77777777); /* not written on failure */
    CHECK_ERR(asock_end_connect(none), ASOCK_E_ARGUMENT_NULL);
    asock_socket acc = SENTINEL_SOCKET;
    CHECK_ERR(asock_end_accept(none, &acc), ASOCK_E_ARGUMENT_NULL);
    CHECK(acc.id == SENTINEL_SOCKET.id);
    /* error_code may be NULL: the return value still says -1. */
    CHECK_EQ_INT(asock_end_send(none, NULL), -1);
    CHECK_EQ_INT(asock_end_receive(none, NULL), -1);
    CHECK_EQ_INT(asock_end_send_to(none, NULL), -1);
    CHECK_EQ_INT(asock_end_receive_from(none, &from, NULL), -1);
    /* The detail names the problem. */
    char msg[256];
    CHECK(asock_error_message(msg, sizeof msg) > 0);
    /* The accessors on the none result. */
    CHECK(!asock_async_result_is_completed(none));
    CHECK(!asock_async_result_completed_synchronously(none));
    CHECK(asock_async_result_state(none) == NULL);
    bool done = true;
    CHECK_ERR(asock_async_result_wait(none, 0, &done), ASOCK_E_ARGUMENT_NULL);
    CHECK(done); /* not written */
}

TEST(end_forged_result_is_argument_for_every_end) {
    asock_socket s;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s));
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    /* Another kind's handle is "not returned by a Begin". */
    const asock_async_result forged[2] = {{s.id}, {l.id}};
    for (int i = 0; i < 2; i++) {
        asock_async_result f = forged[i];
        asock_error ec = 0;
        CHECK_EQ_INT(asock_end_send(f, &ec), -1);
        CHECK_ERR(ec, ASOCK_E_ARGUMENT);
        ec = 0;
        CHECK_EQ_INT(asock_end_receive(f, &ec), -1);
        CHECK_ERR(ec, ASOCK_E_ARGUMENT);
        ec = 0;
        CHECK_EQ_INT(asock_end_send_to(f, &ec), -1);
        CHECK_ERR(ec, ASOCK_E_ARGUMENT);
        ec = 0;
        asock_endpoint from;
        CHECK_EQ_INT(asock_end_receive_from(f, &from, &ec), -1);
        CHECK_ERR(ec, ASOCK_E_ARGUMENT);
        CHECK_ERR(asock_end_connect(f), ASOCK_E_ARGUMENT);
        asock_socket acc = SENTINEL_SOCKET;
        CHECK_ERR(asock_end_accept(f, &acc), ASOCK_E_ARGUMENT);
        CHECK(acc.id == SENTINEL_SOCKET.id);
        CHECK(!asock_async_result_is_completed(f));
        CHECK(asock_async_result_state(f) == NULL);
    }
    /* The socket and loop were not touched by any of it. */
    int32_t v = -1;
    CHECK_OK(asock_socket_get_option(s, ASOCK_OPT_REUSE_ADDRESS, &v));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(l));
}

/* ---- a result from another Begin kind: Argument, and it stays usable ---- */

TEST(end_send_of_a_receive_result_is_argument_and_the_receive_still_ends) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c, s;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET, &c, &s));
    op_rec r;
    op_rec_init(&r, 1);
    uint8_t buf[16];
    asock_async_result ar;
    REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, rec_cb, &r, &ar));
    /* Pending: every wrong End answers at once, without blocking. */
    asock_error ec = 0;
    CHECK_EQ_INT(asock_end_send(ar, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT);
    ec = 0;
    CHECK_EQ_INT(asock_end_send_to(ar, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT);
    ec = 0;
    asock_endpoint from;
    CHECK_EQ_INT(asock_end_receive_from(ar, &from, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_end_connect(ar), ASOCK_E_ARGUMENT);
    asock_socket acc = SENTINEL_SOCKET;
    CHECK_ERR(asock_end_accept(ar, &acc), ASOCK_E_ARGUMENT);
    CHECK(acc.id == SENTINEL_SOCKET.id);
    CHECK_EQ_INT(asock_end_send(ar, NULL), -1);
    /* Still the same pending operation. */
    CHECK(!asock_async_result_is_completed(ar));
    CHECK(asock_async_result_state(ar) == &r);
    CHECK(send_all(c, "hello", 5));
    REQUIRE(ar_done(ar, wait_ms()));
    /* Completed: the wrong End is still refused and changes nothing. */
    ec = 0;
    CHECK_EQ_INT(asock_end_send(ar, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT);
    ec = -7;
    CHECK_EQ_INT(asock_end_receive(ar, &ec), 5);
    CHECK_ERR(ec, ASOCK_OK);
    CHECK(memcmp(buf, "hello", 5) == 0);
    CHECK(wait_atomic_ge(&r.calls, 1, wait_ms()));
    CHECK(loop_flush(tl.loop));
    CHECK_EQ_INT(atomic_load(&r.calls), 1);
    CHECK(r.ar.id == ar.id);
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(end_receive_of_a_send_result_is_argument_and_the_send_still_ends) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c, s;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET6, &c, &s));
    op_rec r;
    op_rec_init(&r, 1);
    static const uint8_t msg[7] = "abcdefg";
    asock_async_result ar;
    REQUIRE_OK(asock_begin_send(c, msg, sizeof msg, 0, rec_cb, &r, &ar));
    asock_error ec = 0;
    CHECK_EQ_INT(asock_end_receive(ar, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT);
    ec = 0;
    asock_endpoint from;
    CHECK_EQ_INT(asock_end_receive_from(ar, &from, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT);
    ec = 0;
    CHECK_EQ_INT(asock_end_send_to(ar, &ec), -1); /* a send is not a send-to */
    CHECK_ERR(ec, ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_end_connect(ar), ASOCK_E_ARGUMENT);
    asock_socket acc = SENTINEL_SOCKET;
    CHECK_ERR(asock_end_accept(ar, &acc), ASOCK_E_ARGUMENT);
    CHECK(asock_async_result_state(ar) == &r);
    REQUIRE(ar_done(ar, wait_ms()));
    ec = -7;
    CHECK_EQ_INT(asock_end_send(ar, &ec), 7);
    CHECK_ERR(ec, ASOCK_OK);
    uint8_t got[7];
    CHECK(recv_exact(s, got, sizeof got));
    CHECK(memcmp(got, msg, sizeof got) == 0);
    CHECK(wait_atomic_ge(&r.calls, 1, wait_ms()));
    CHECK(loop_flush(tl.loop));
    CHECK_EQ_INT(atomic_load(&r.calls), 1);
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(udp_results_to_the_wrong_end_are_argument_and_stay_usable) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket a, b;
    asock_endpoint ea, eb;
    REQUIRE(udp_new(tl.loop, ASOCK_AF_INET, &a, &ea));
    REQUIRE(udp_new(tl.loop, ASOCK_AF_INET, &b, &eb));
    op_rec r[2];
    op_rec_init(r, 2);
    uint8_t buf[32];
    asock_async_result rf, st;
    REQUIRE_OK(asock_begin_receive_from(b, buf, sizeof buf, 0, rec_cb, &r[0], &rf));
    REQUIRE_OK(asock_begin_send_to(a, (const uint8_t *)"datagram", 8, 0, &eb, rec_cb, &r[1], &st));
    asock_error ec = 0;
    /* send-to result: not a send, not a receive-from */
    CHECK_EQ_INT(asock_end_send(st, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT);
    ec = 0;
    asock_endpoint from;
    CHECK_EQ_INT(asock_end_receive_from(st, &from, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT);
    ec = 0;
    CHECK_EQ_INT(asock_end_receive(st, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_end_connect(st), ASOCK_E_ARGUMENT);
    /* receive-from result: not a receive, not a send-to */
    ec = 0;
    CHECK_EQ_INT(asock_end_receive(rf, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT);
    ec = 0;
    CHECK_EQ_INT(asock_end_send_to(rf, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT);
    asock_socket acc = SENTINEL_SOCKET;
    CHECK_ERR(asock_end_accept(rf, &acc), ASOCK_E_ARGUMENT);
    /* The right Ends work. */
    REQUIRE(ar_done(st, wait_ms()));
    REQUIRE(ar_done(rf, wait_ms()));
    ec = -7;
    CHECK_EQ_INT(asock_end_send_to(st, &ec), 8);
    CHECK_ERR(ec, ASOCK_OK);
    ec = -7;
    memset(&from, 0, sizeof from);
    CHECK_EQ_INT(asock_end_receive_from(rf, &from, &ec), 8);
    CHECK_ERR(ec, ASOCK_OK);
    CHECK(memcmp(buf, "datagram", 8) == 0);
    CHECK_EQ_INT(from.port, ea.port);
    CHECK(recs_called(r, 2, 1));
    CHECK(loop_flush(tl.loop));
    CHECK_EQ_INT(atomic_load(&r[0].calls), 1);
    CHECK_EQ_INT(atomic_load(&r[1].calls), 1);
    CHECK_OK(asock_socket_close(a));
    CHECK_OK(asock_socket_close(b));
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(connect_and_accept_results_to_the_wrong_end_are_argument_and_stay_usable) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket lst, c;
    asock_endpoint ep;
    REQUIRE(listener_new(tl.loop, ASOCK_AF_INET, 8, &lst, &ep));
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &c));
    op_rec r[2];
    op_rec_init(r, 2);
    asock_async_result aa, ac;
    REQUIRE_OK(asock_begin_accept(lst, rec_cb, &r[0], &aa));
    REQUIRE_OK(asock_begin_connect(c, &ep, rec_cb, &r[1], &ac));
    asock_socket acc = SENTINEL_SOCKET;
    CHECK_ERR(asock_end_accept(ac, &acc), ASOCK_E_ARGUMENT);
    CHECK(acc.id == SENTINEL_SOCKET.id);
    asock_error ec = 0;
    CHECK_EQ_INT(asock_end_send(ac, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_end_connect(aa), ASOCK_E_ARGUMENT);
    ec = 0;
    CHECK_EQ_INT(asock_end_receive(aa, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT);
    REQUIRE(ar_done(ac, wait_ms()));
    REQUIRE(ar_done(aa, wait_ms()));
    CHECK_OK(asock_end_connect(ac));
    CHECK_OK(asock_end_accept(aa, &acc));
    CHECK(acc.id != SENTINEL_SOCKET.id && acc.id != 0);
    CHECK(recs_called(r, 2, 1));
    CHECK(loop_flush(tl.loop));
    CHECK_EQ_INT(atomic_load(&r[0].calls), 1);
    CHECK_EQ_INT(atomic_load(&r[1].calls), 1);
    if (acc.id != SENTINEL_SOCKET.id)
        CHECK_OK(asock_socket_close(acc));
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(lst));
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- End called twice: InvalidOperation ------------------------------------ */

TEST(end_twice_is_invalid_operation_for_every_end) {
    asock_socket c, s;
    REQUIRE(tcp_pair((asock_loop){0}, (asock_loop){0}, ASOCK_AF_INET, &c, &s));
    asock_async_result ar;
    asock_error ec;
    /* send */
    REQUIRE_OK(asock_begin_send(c, (const uint8_t *)"xy", 2, 0, NULL, NULL, &ar));
    REQUIRE(ar_done(ar, wait_ms()));
    CHECK_EQ_INT(asock_end_send(ar, NULL), 2);
    ec = 0;
    CHECK_EQ_INT(asock_end_send(ar, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_INVALID_OPERATION);
    CHECK_EQ_INT(asock_end_send(ar, NULL), -1);
    /* receive */
    uint8_t buf[4];
    REQUIRE_OK(asock_begin_receive(s, buf, 2, 0, NULL, NULL, &ar));
    REQUIRE(ar_done(ar, wait_ms()));
    ec = -7;
    CHECK_EQ_INT(asock_end_receive(ar, &ec), 2);
    CHECK_ERR(ec, ASOCK_OK);
    ec = 0;
    CHECK_EQ_INT(asock_end_receive(ar, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_INVALID_OPERATION);
    /* An ended result is gone for the accessors too. */
    CHECK(!asock_async_result_is_completed(ar));
    CHECK(!asock_async_result_completed_synchronously(ar));
    CHECK(asock_async_result_state(ar) == NULL);
    bool done = true;
    CHECK_ERR(asock_async_result_wait(ar, 0, &done), ASOCK_E_INVALID_OPERATION);
    /* ... and for an End of another kind. */
    ec = 0;
    CHECK_EQ_INT(asock_end_send(ar, &ec), -1);
    CHECK(ec == ASOCK_E_INVALID_OPERATION || ec == ASOCK_E_ARGUMENT);
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));

    /* send-to and receive-from */
    asock_socket a, b;
    asock_endpoint ea, eb;
    REQUIRE(udp_new((asock_loop){0}, ASOCK_AF_INET6, &a, &ea));
    REQUIRE(udp_new((asock_loop){0}, ASOCK_AF_INET6, &b, &eb));
    asock_async_result rf;
    REQUIRE_OK(asock_begin_receive_from(b, buf, sizeof buf, 0, NULL, NULL, &rf));
    REQUIRE_OK(asock_begin_send_to(a, (const uint8_t *)"dg", 2, 0, &eb, NULL, NULL, &ar));
    REQUIRE(ar_done(ar, wait_ms()));
    CHECK_EQ_INT(asock_end_send_to(ar, NULL), 2);
    ec = 0;
    CHECK_EQ_INT(asock_end_send_to(ar, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_INVALID_OPERATION);
    REQUIRE(ar_done(rf, wait_ms()));
    asock_endpoint from;
    CHECK_EQ_INT(asock_end_receive_from(rf, &from, NULL), 2);
    ec = 0;
    CHECK_EQ_INT(asock_end_receive_from(rf, &from, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_INVALID_OPERATION);
    CHECK_OK(asock_socket_close(a));
    CHECK_OK(asock_socket_close(b));

    /* connect and accept */
    asock_socket lst, cl;
    asock_endpoint ep;
    REQUIRE(listener_new((asock_loop){0}, ASOCK_AF_INET, 8, &lst, &ep));
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &cl));
    asock_async_result aa, ac;
    REQUIRE_OK(asock_begin_accept(lst, NULL, NULL, &aa));
    REQUIRE_OK(asock_begin_connect(cl, &ep, NULL, NULL, &ac));
    REQUIRE(ar_done(ac, wait_ms()));
    REQUIRE(ar_done(aa, wait_ms()));
    CHECK_OK(asock_end_connect(ac));
    CHECK_ERR(asock_end_connect(ac), ASOCK_E_INVALID_OPERATION);
    asock_socket acc = SENTINEL_SOCKET;
    CHECK_OK(asock_end_accept(aa, &acc));
    asock_socket acc2 = SENTINEL_SOCKET;
    CHECK_ERR(asock_end_accept(aa, &acc2), ASOCK_E_INVALID_OPERATION);
    CHECK(acc2.id == SENTINEL_SOCKET.id);
    if (acc.id != SENTINEL_SOCKET.id)
        CHECK_OK(asock_socket_close(acc));
    CHECK_OK(asock_socket_close(cl));
    CHECK_OK(asock_socket_close(lst));
}

TEST(an_ended_result_stays_dead_after_its_slot_is_reused) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c, s;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET, &c, &s));
    uint8_t b1[4], b2[4];
    asock_async_result first, second;
    REQUIRE_OK(asock_begin_receive(s, b1, 1, 0, NULL, NULL, &first));
    CHECK(send_all(c, "1", 1));
    REQUIRE(ar_done(first, wait_ms()));
    CHECK_EQ_INT(asock_end_receive(first, NULL), 1);
    /* Many Begins: one of them very likely takes the freed slot. */
    enum { N = 64 };
    asock_async_result more[N];
    for (int i = 0; i < N; i++)
        REQUIRE_OK(asock_begin_receive(s, b2, 0, 0, NULL, NULL, &more[i]));
    second = more[0];
    for (int i = 0; i < N; i++)
        CHECK(more[i].id != first.id);
    /* The old id reaches none of them. */
    asock_error ec = 0;
    CHECK_EQ_INT(asock_end_receive(first, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_INVALID_OPERATION);
    CHECK(!asock_async_result_is_completed(first));
    CHECK(!asock_async_result_is_completed(second));
    CHECK(asock_async_result_state(first) == NULL);
    /* The zero-length receives complete when data arrives, taking none. */
    CHECK(send_all(c, "2", 1));
    for (int i = 0; i < N; i++) {
        REQUIRE(ar_done(more[i], wait_ms()));
        ec = -7;
        CHECK_EQ_INT(asock_end_receive(more[i], &ec), 0);
        CHECK_ERR(ec, ASOCK_OK);
    }
    CHECK(recv_exact(s, b1, 1));
    CHECK_EQ_INT(b1[0], '2');
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- socket closed before End: ObjectDisposed ---------------------------- */

TEST(socket_closed_before_completion_end_is_object_disposed_for_every_end) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    op_rec r[6];
    op_rec_init(r, 6);
    asock_async_result ar[6];
    /* 0: receive, 1: send (8 MiB against a peer that does not read) */
    asock_socket c;
    int peer;
    REQUIRE(px_pair(tl.loop, ASOCK_AF_INET, 8192, 8192, &c, &peer));
    static uint8_t big[8 << 20];
    uint8_t rbuf[16];
    REQUIRE_OK(asock_begin_receive(c, rbuf, sizeof rbuf, 0, rec_cb, &r[0], &ar[0]));
    REQUIRE_OK(asock_begin_send(c, big, sizeof big, 0, rec_cb, &r[1], &ar[1]));
    /* 2: receive-from */
    asock_socket u;
    asock_endpoint eu;
    REQUIRE(udp_new(tl.loop, ASOCK_AF_INET6, &u, &eu));
    uint8_t ubuf[16];
    REQUIRE_OK(asock_begin_receive_from(u, ubuf, sizeof ubuf, 0, rec_cb, &r[2], &ar[2]));
    /* 3: accept */
    asock_socket lst;
    asock_endpoint el;
    REQUIRE(listener_new(tl.loop, ASOCK_AF_INET6, 4, &lst, &el));
    REQUIRE_OK(asock_begin_accept(lst, rec_cb, &r[3], &ar[3]));
    /* 4: connect to a listener whose backlog is full (stays pending) */
    full_listener fl;
    REQUIRE(full_listener_open(ASOCK_AF_INET, &fl));
    asock_socket cc;
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &cc));
    asock_endpoint efl = lo_ep(ASOCK_AF_INET, fl.port);
    REQUIRE_OK(asock_begin_connect(cc, &efl, rec_cb, &r[4], &ar[4]));
    /* 5: a connect by name, closed while (or right after) resolving */
    asock_socket ch;
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &ch));
    REQUIRE_OK(asock_begin_connect_host(ch, "localhost", fl.port, rec_cb, &r[5], &ar[5]));

    for (int i = 0; i < 5; i++)
        CHECK(!asock_async_result_is_completed(ar[i]));
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(u));
    CHECK_OK(asock_socket_close(lst));
    CHECK_OK(asock_socket_close(cc));
    CHECK_OK(asock_socket_close(ch));
    CHECK(recs_called(r, 6, 1));
    for (int i = 0; i < 6; i++)
        CHECK(pthread_equal(r[i].thread, tl.thread));
    asock_error ec = 0;
    CHECK_EQ_INT(asock_end_receive(ar[0], &ec), -1);
    CHECK_ERR(ec, ASOCK_E_OBJECT_DISPOSED);
    ec = 0;
    CHECK_EQ_INT(asock_end_send(ar[1], &ec), -1);
    CHECK_ERR(ec, ASOCK_E_OBJECT_DISPOSED);
    ec = 0;
    asock_endpoint from;
    CHECK_EQ_INT(asock_end_receive_from(ar[2], &from, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_OBJECT_DISPOSED);
    asock_socket acc = SENTINEL_SOCKET;
    CHECK_ERR(asock_end_accept(ar[3], &acc), ASOCK_E_OBJECT_DISPOSED);
    CHECK(acc.id == SENTINEL_SOCKET.id);
    CHECK_ERR(asock_end_connect(ar[4]), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_end_connect(ar[5]), ASOCK_E_OBJECT_DISPOSED);
    CHECK(loop_flush(tl.loop));
    for (int i = 0; i < 6; i++)
        CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
    close(peer);
    full_listener_close(&fl);
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(socket_closed_after_completion_before_end_is_object_disposed_for_every_end) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    op_rec r[6];
    op_rec_init(r, 6);
    asock_async_result ar[6];
    asock_socket c, s;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET, &c, &s));
    uint8_t rbuf[8];
    REQUIRE_OK(asock_begin_send(c, (const uint8_t *)"abc", 3, 0, rec_cb, &r[0], &ar[0]));
    REQUIRE_OK(asock_begin_receive(s, rbuf, sizeof rbuf, 0, rec_cb, &r[1], &ar[1]));
    asock_socket a, b;
    asock_endpoint ea, eb;
    REQUIRE(udp_new(tl.loop, ASOCK_AF_INET, &a, &ea));
    REQUIRE(udp_new(tl.loop, ASOCK_AF_INET, &b, &eb));
    uint8_t ubuf[8];
    REQUIRE_OK(asock_begin_receive_from(b, ubuf, sizeof ubuf, 0, rec_cb, &r[3], &ar[3]));
    REQUIRE_OK(asock_begin_send_to(a, (const uint8_t *)"dg", 2, 0, &eb, rec_cb, &r[2], &ar[2]));
    asock_socket lst, cl;
    asock_endpoint el;
    REQUIRE(listener_new(tl.loop, ASOCK_AF_INET, 4, &lst, &el));
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &cl));
    REQUIRE_OK(asock_begin_accept(lst, rec_cb, &r[4], &ar[4]));
    REQUIRE_OK(asock_begin_connect(cl, &el, rec_cb, &r[5], &ar[5]));
    /* Everything completes (and its callback runs) before anything closes. */
    CHECK(recs_called(r, 6, 1));
    for (int i = 0; i < 6; i++)
        CHECK(asock_async_result_is_completed(ar[i]));
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_socket_close(a));
    CHECK_OK(asock_socket_close(b));
    CHECK_OK(asock_socket_close(lst));
    CHECK_OK(asock_socket_close(cl));
    asock_error ec = 0;
    CHECK_EQ_INT(asock_end_send(ar[0], &ec), -1);
    CHECK_ERR(ec, ASOCK_E_OBJECT_DISPOSED);
    ec = 0;
    CHECK_EQ_INT(asock_end_receive(ar[1], &ec), -1);
    CHECK_ERR(ec, ASOCK_E_OBJECT_DISPOSED);
    ec = 0;
    CHECK_EQ_INT(asock_end_send_to(ar[2], &ec), -1);
    CHECK_ERR(ec, ASOCK_E_OBJECT_DISPOSED);
    ec = 0;
    asock_endpoint from;
    CHECK_EQ_INT(asock_end_receive_from(ar[3], &from, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_OBJECT_DISPOSED);
    asock_socket acc = SENTINEL_SOCKET;
    CHECK_ERR(asock_end_accept(ar[4], &acc), ASOCK_E_OBJECT_DISPOSED);
    CHECK(acc.id == SENTINEL_SOCKET.id);
    CHECK_ERR(asock_end_connect(ar[5]), ASOCK_E_OBJECT_DISPOSED);
    CHECK(loop_flush(tl.loop));
    for (int i = 0; i < 6; i++)
        CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- a socket failure: its SocketError through error_code ---------------- */

TEST(socket_errors_come_through_error_code) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    /* receive, then send, after the peer reset the connection */
    asock_socket c;
    int peer;
    REQUIRE(px_pair(tl.loop, ASOCK_AF_INET, 0, 0, &c, &peer));
    uint8_t buf[16];
    asock_async_result ar;
    REQUIRE_OK(asock_begin_receive(c, buf, sizeof buf, 0, NULL, NULL, &ar));
    px_close_reset(peer);
    REQUIRE(ar_done(ar, wait_ms()));
    asock_error ec = 0;
    CHECK_EQ_INT(asock_end_receive(ar, &ec), -1);
    CHECK_ERR(ec, ASOCK_CONNECTION_RESET);
    REQUIRE_OK(asock_begin_send(c, (const uint8_t *)"late", 4, 0, NULL, NULL, &ar));
    REQUIRE(ar_done(ar, wait_ms()));
    ec = 0;
    CHECK_EQ_INT(asock_end_send(ar, &ec), -1);
    if (ec != ASOCK_SHUTDOWN)
        CHECK_ERR(ec, ASOCK_CONNECTION_RESET);
    /* error_code NULL: the count still says -1 */
    REQUIRE_OK(asock_begin_send(c, (const uint8_t *)"late", 4, 0, NULL, NULL, &ar));
    REQUIRE(ar_done(ar, wait_ms()));
    CHECK_EQ_INT(asock_end_send(ar, NULL), -1);
    CHECK_OK(asock_socket_close(c));

    /* connect refused: a port that was bound, then closed */
    asock_socket gone, cr;
    asock_endpoint eg;
    REQUIRE(listener_new(tl.loop, ASOCK_AF_INET, 1, &gone, &eg));
    CHECK_OK(asock_socket_close(gone));
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &cr));
    REQUIRE_OK(asock_begin_connect(cr, &eg, NULL, NULL, &ar));
    REQUIRE(ar_done(ar, wait_ms()));
    CHECK_ERR(asock_end_connect(ar), ASOCK_CONNECTION_REFUSED);
    CHECK_OK(asock_socket_close(cr));

    /* send-to a datagram larger than any IPv4 datagram: MessageSize */
    asock_socket a, b;
    asock_endpoint ea, eb;
    REQUIRE(udp_new(tl.loop, ASOCK_AF_INET, &a, &ea));
    REQUIRE(udp_new(tl.loop, ASOCK_AF_INET, &b, &eb));
    static uint8_t huge[70000];
    REQUIRE_OK(asock_begin_send_to(a, huge, sizeof huge, 0, &eb, NULL, NULL, &ar));
    REQUIRE(ar_done(ar, wait_ms()));
    ec = 0;
    CHECK_EQ_INT(asock_end_send_to(ar, &ec), -1);
    CHECK_ERR(ec, ASOCK_MESSAGE_SIZE);
    /* receive-from a datagram larger than the buffer: MessageSize */
    uint8_t small[4];
    asock_async_result rf;
    REQUIRE_OK(asock_begin_receive_from(b, small, sizeof small, 0, NULL, NULL, &rf));
    REQUIRE_OK(asock_begin_send_to(a, (const uint8_t *)"0123456789", 10, 0, &eb, NULL, NULL, &ar));
    REQUIRE(ar_done(ar, wait_ms()));
    CHECK_EQ_INT(asock_end_send_to(ar, NULL), 10);
    REQUIRE(ar_done(rf, wait_ms()));
    ec = 0;
    asock_endpoint from;
    CHECK_EQ_INT(asock_end_receive_from(rf, &from, &ec), -1);
    CHECK_ERR(ec, ASOCK_MESSAGE_SIZE);
    CHECK(memcmp(small, "0123", 4) == 0);
    CHECK_OK(asock_socket_close(a));
    CHECK_OK(asock_socket_close(b));
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- Begin's own checks: an error starts nothing -------------------------- */

TEST(begin_argument_checks_start_nothing) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    op_rec r;
    op_rec_init(&r, 1);
    asock_socket t, u, closed;
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &t));
    asock_endpoint eu;
    REQUIRE(udp_new(tl.loop, ASOCK_AF_INET, &u, &eu));
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &closed));
    CHECK_OK(asock_socket_close(closed));
    const asock_socket none = {0};
    uint8_t buf[16];
    asock_endpoint to = eu, to6 = lo_ep(ASOCK_AF_INET6, eu.port);
    asock_async_result ar = SENTINEL_RESULT;
    const size_t too_long = (size_t)INT32_MAX + 1;

    /* out NULL */
    CHECK_ERR(asock_begin_send(t, buf, 1, 0, rec_cb, &r, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_receive(t, buf, 1, 0, rec_cb, &r, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_send_to(u, buf, 1, 0, &to, rec_cb, &r, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_receive_from(u, buf, 1, 0, rec_cb, &r, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_connect(t, &to, rec_cb, &r, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_connect_host(t, "127.0.0.1", 9, rec_cb, &r, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_accept(t, rec_cb, &r, NULL), ASOCK_E_ARGUMENT_NULL);
    /* the none socket */
    CHECK_ERR(asock_begin_send(none, buf, 1, 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_receive(none, buf, 1, 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_send_to(none, buf, 1, 0, &to, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_receive_from(none, buf, 1, 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_connect(none, &to, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_accept(none, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_NULL);
    /* a closed socket */
    CHECK_ERR(asock_begin_send(closed, buf, 1, 0, rec_cb, &r, &ar), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_begin_receive(closed, buf, 1, 0, rec_cb, &r, &ar), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_begin_send_to(closed, buf, 1, 0, &to, rec_cb, &r, &ar), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_begin_receive_from(closed, buf, 1, 0, rec_cb, &r, &ar), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_begin_connect(closed, &to, rec_cb, &r, &ar), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_begin_connect_host(closed, "localhost", 9, rec_cb, &r, &ar), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_begin_accept(closed, rec_cb, &r, &ar), ASOCK_E_OBJECT_DISPOSED);
    /* bad flags */
    const int32_t bad_flags[] = {0x8, 0x100, 0x40, -1, INT32_MIN};
    for (size_t i = 0; i < sizeof bad_flags / sizeof bad_flags[0]; i++) {
        CHECK_ERR(asock_begin_send(t, buf, 1, bad_flags[i], rec_cb, &r, &ar), ASOCK_E_ARGUMENT);
        CHECK_ERR(asock_begin_receive(t, buf, 1, bad_flags[i], rec_cb, &r, &ar), ASOCK_E_ARGUMENT);
        CHECK_ERR(asock_begin_send_to(u, buf, 1, bad_flags[i], &to, rec_cb, &r, &ar), ASOCK_E_ARGUMENT);
        CHECK_ERR(asock_begin_receive_from(u, buf, 1, bad_flags[i], rec_cb, &r, &ar), ASOCK_E_ARGUMENT);
    }
    /* NULL buffer with a length */
    CHECK_ERR(asock_begin_send(t, NULL, 1, 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_receive(t, NULL, 1, 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_send_to(u, NULL, 1, 0, &to, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_receive_from(u, NULL, 1, 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_NULL);
    /* length above INT32_MAX (the sockets are unconnected: nothing could
     * be written even if a Begin wrongly started) */
    CHECK_ERR(asock_begin_send(t, buf, too_long, 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_begin_receive(t, buf, too_long, 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_begin_send(t, buf, SIZE_MAX, 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_begin_send_to(u, buf, too_long, 0, &to, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_begin_receive_from(u, buf, too_long, 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    /* endpoints: NULL, other family, bad family */
    CHECK_ERR(asock_begin_send_to(u, buf, 1, 0, NULL, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_send_to(u, buf, 1, 0, &to6, rec_cb, &r, &ar), ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);
    CHECK_ERR(asock_begin_connect(t, NULL, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_connect(t, &to6, rec_cb, &r, &ar), ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);
    asock_endpoint badfam = to;
    badfam.family = 99;
    CHECK_ERR(asock_begin_connect(t, &badfam, rec_cb, &r, &ar), ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);
    CHECK_ERR(asock_begin_send_to(u, buf, 1, 0, &badfam, rec_cb, &r, &ar), ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);
    /* host arguments */
    CHECK_ERR(asock_begin_connect_host(t, NULL, 80, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_begin_connect_host(t, "", 80, rec_cb, &r, &ar), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_begin_connect_host(t, "localhost", 0, rec_cb, &r, &ar), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    /* accept on a socket that is not listening (stream or datagram) */
    CHECK_ERR(asock_begin_accept(t, rec_cb, &r, &ar), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_begin_accept(u, rec_cb, &r, &ar), ASOCK_E_INVALID_OPERATION);
    /* connect on a listening socket */
    asock_socket lst;
    asock_endpoint el;
    REQUIRE(listener_new(tl.loop, ASOCK_AF_INET, 1, &lst, &el));
    CHECK_ERR(asock_begin_connect(lst, &el, rec_cb, &r, &ar), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_begin_connect_host(lst, "127.0.0.1", el.port, rec_cb, &r, &ar), ASOCK_E_INVALID_OPERATION);

    /* Nothing was started: *out untouched, no callback ever. */
    CHECK(ar.id == SENTINEL_RESULT.id);
    CHECK(loop_flush(tl.loop));
    CHECK_EQ_INT(atomic_load(&r.calls), 0);
    /* The sockets still work: a NULL buffer with length 0 is fine. */
    asock_async_result ok;
    REQUIRE_OK(asock_begin_send_to(u, NULL, 0, 0, &eu, rec_cb, &r, &ok));
    REQUIRE(ar_done(ok, wait_ms()));
    CHECK_EQ_INT(asock_end_send_to(ok, NULL), 0);
    CHECK(wait_atomic_ge(&r.calls, 1, wait_ms()));
    CHECK_OK(asock_socket_close(lst));
    CHECK_OK(asock_socket_close(t));
    CHECK_OK(asock_socket_close(u));
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- out pointers of End: NULL is refused and the result stays pending --- */

struct end_from_job {
    asock_async_result ar;
    int32_t n;
    asock_error ec;
    atomic_bool done;
};

static void *end_from_null_main(void *arg) {
    struct end_from_job *j = arg;
    j->n = asock_end_receive_from(j->ar, NULL, &j->ec);
    atomic_store(&j->done, true);
    return NULL;
}

TEST(end_receive_from_and_end_accept_with_null_out_stay_pending) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket a, b;
    asock_endpoint ea, eb;
    REQUIRE(udp_new(tl.loop, ASOCK_AF_INET, &a, &ea));
    REQUIRE(udp_new(tl.loop, ASOCK_AF_INET, &b, &eb));
    op_rec r[2];
    op_rec_init(r, 2);
    uint8_t buf[16];
    asock_async_result rf;
    REQUIRE_OK(asock_begin_receive_from(b, buf, sizeof buf, 0, rec_cb, &r[0], &rf));
    /* Before completion, from another thread: answers at once (no block). */
    struct end_from_job j = {rf, 0, 0, false};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, end_from_null_main, &j) == 0);
    bool answered = wait_bool(&j.done, wait_ms());
    CHECK(answered);
    if (!answered) {
        asock_socket_close(b); /* unblocks it */
        wait_bool(&j.done, wait_ms());
    }
    pthread_join(th, NULL);
    CHECK_EQ_INT(j.n, -1);
    CHECK_ERR(j.ec, ASOCK_E_ARGUMENT_NULL);
    CHECK(!asock_async_result_is_completed(rf));
    CHECK(asock_async_result_state(rf) == &r[0]);
    /* Completed: still refused, still there. */
    asock_async_result st;
    REQUIRE_OK(asock_begin_send_to(a, (const uint8_t *)"udp!", 4, 0, &eb, NULL, NULL, &st));
    REQUIRE(ar_done(st, wait_ms()));
    CHECK_EQ_INT(asock_end_send_to(st, NULL), 4);
    REQUIRE(ar_done(rf, wait_ms()));
    asock_error ec = 0;
    CHECK_EQ_INT(asock_end_receive_from(rf, NULL, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_ARGUMENT_NULL);
    CHECK_EQ_INT(asock_end_receive_from(rf, NULL, NULL), -1);
    asock_endpoint from;
    memset(&from, 0, sizeof from);
    ec = -7;
    CHECK_EQ_INT(asock_end_receive_from(rf, &from, &ec), 4);
    CHECK_ERR(ec, ASOCK_OK);
    CHECK_EQ_INT(from.port, ea.port);
    CHECK(memcmp(buf, "udp!", 4) == 0);

    /* end_accept with out_accepted NULL */
    asock_socket lst, cl;
    asock_endpoint el;
    REQUIRE(listener_new(tl.loop, ASOCK_AF_INET6, 4, &lst, &el));
    asock_async_result aa, ac;
    REQUIRE_OK(asock_begin_accept(lst, rec_cb, &r[1], &aa));
    CHECK_ERR(asock_end_accept(aa, NULL), ASOCK_E_ARGUMENT_NULL); /* pending: no block */
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET6, ASOCK_SOCK_STREAM, 0, &cl));
    REQUIRE_OK(asock_begin_connect(cl, &el, NULL, NULL, &ac));
    REQUIRE(ar_done(aa, wait_ms()));
    CHECK_ERR(asock_end_accept(aa, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK(asock_async_result_is_completed(aa));
    asock_socket acc = SENTINEL_SOCKET;
    CHECK_OK(asock_end_accept(aa, &acc));
    REQUIRE(ar_done(ac, wait_ms()));
    CHECK_OK(asock_end_connect(ac));
    if (acc.id != SENTINEL_SOCKET.id) {
        CHECK(send_all(acc, "hi", 2));
        uint8_t got[2];
        CHECK(recv_exact(cl, got, 2));
        CHECK(memcmp(got, "hi", 2) == 0);
        CHECK_OK(asock_socket_close(acc));
    }
    CHECK(recs_called(r, 2, 1));
    CHECK(loop_flush(tl.loop));
    CHECK_EQ_INT(atomic_load(&r[0].calls), 1);
    CHECK_EQ_INT(atomic_load(&r[1].calls), 1);
    CHECK_OK(asock_socket_close(cl));
    CHECK_OK(asock_socket_close(lst));
    CHECK_OK(asock_socket_close(a));
    CHECK_OK(asock_socket_close(b));
    CHECK_OK(asock_loop_free(tl.loop));
}

/* An accept that fails in the system call (EMFILE: no descriptor left)
 * reports the SocketError at End; the connection stays queued and the next
 * accept takes it. */
TEST(accept_failure_comes_through_end_accept_and_the_next_accept_works) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket lst;
    asock_endpoint el;
    REQUIRE(listener_new(tl.loop, ASOCK_AF_INET, 4, &lst, &el));
    op_rec r;
    op_rec_init(&r, 1);
    asock_async_result aa;
    REQUIRE_OK(asock_begin_accept(lst, rec_cb, &r, &aa));
    int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0); /* made before the limit */
    REQUIRE(cfd >= 0);
    px_timeouts(cfd, wait_ms());
    /* No descriptor left: the limit just above the highest open one, and
     * every hole below it filled. */
    struct rlimit old;
    REQUIRE(getrlimit(RLIMIT_NOFILE, &old) == 0);
    int highest = 0;
    DIR *d = opendir("/proc/self/fd");
    REQUIRE(d != NULL);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] != '.' && (rlim_t)fd < old.rlim_cur && fd > highest)
            highest = fd;
    }
    closedir(d);
    struct rlimit low = old;
    low.rlim_cur = (rlim_t)highest + 1;
    REQUIRE(setrlimit(RLIMIT_NOFILE, &low) == 0);
    int fillers[1024], nfill = 0;
    while (nfill < 1024) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            break;
        fillers[nfill++] = fd;
    }
    struct sockaddr_storage ss;
    socklen_t len = px_addr(ASOCK_AF_INET, el.port, &ss);
    bool connected = connect(cfd, (struct sockaddr *)&ss, len) == 0;
    bool failed = ar_done(aa, wait_ms());
    /* Descriptors again. */
    for (int i = 0; i < nfill; i++)
        close(fillers[i]);
    REQUIRE(setrlimit(RLIMIT_NOFILE, &old) == 0);
    CHECK(connected);
    CHECK(failed);
    asock_socket acc = SENTINEL_SOCKET;
    if (failed) {
        CHECK_ERR(asock_end_accept(aa, &acc), ASOCK_TOO_MANY_OPEN_SOCKETS);
        CHECK(acc.id == SENTINEL_SOCKET.id);
        CHECK(wait_until(pred_rec_called_once, &r, wait_ms()));
        /* The connection is still there for the next accept. (Not under
         * valgrind: it enforces the limit itself, after a real accept4,
         * by closing the descriptor it got — the connection is gone.) */
        if (under_valgrind()) {
            close(cfd);
            CHECK_OK(asock_socket_close(lst));
            CHECK_OK(asock_loop_free(tl.loop));
            return;
        }
        REQUIRE_OK(asock_begin_accept(lst, NULL, NULL, &aa));
        REQUIRE(ar_done(aa, wait_ms()));
        CHECK_OK(asock_end_accept(aa, &acc));
        if (acc.id != SENTINEL_SOCKET.id) {
            CHECK(px_write_all(cfd, "emfile", 6));
            uint8_t got[6];
            CHECK(recv_exact(acc, got, 6));
            CHECK(memcmp(got, "emfile", 6) == 0);
            CHECK_OK(asock_socket_close(acc));
        }
    }
    close(cfd);
    CHECK_OK(asock_socket_close(lst));
    if (!failed)
        asock_end_accept(aa, &acc);
    CHECK_OK(asock_loop_free(tl.loop));
}

/* End from the loop thread after completion (outside the callback) works. */
struct late_end {
    asock_async_result ar;
    int32_t n;
    asock_error ec;
    atomic_bool done;
};

static void late_end_fn(void *arg) {
    struct late_end *l = arg;
    l->n = asock_end_receive(l->ar, &l->ec);
    atomic_store(&l->done, true);
}

TEST(end_on_the_loop_thread_after_completion_works) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c, s;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET, &c, &s));
    uint8_t buf[8];
    struct late_end l;
    memset(&l, 0, sizeof l);
    atomic_init(&l.done, false);
    l.ec = -7;
    REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, NULL, NULL, &l.ar));
    CHECK(send_all(c, "late", 4));
    REQUIRE(ar_done(l.ar, wait_ms()));
    REQUIRE_OK(asock_loop_post(tl.loop, late_end_fn, &l));
    CHECK(wait_bool(&l.done, wait_ms()));
    CHECK_EQ_INT(l.n, 4);
    CHECK_ERR(l.ec, ASOCK_OK);
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(tl.loop));
}

int main(void) {
    signal(SIGPIPE, SIG_DFL); /* a send must never raise it */
    RUN(end_none_result_is_argument_null_for_every_end);
    RUN(end_forged_result_is_argument_for_every_end);
    RUN(end_send_of_a_receive_result_is_argument_and_the_receive_still_ends);
    RUN(end_receive_of_a_send_result_is_argument_and_the_send_still_ends);
    RUN(udp_results_to_the_wrong_end_are_argument_and_stay_usable);
    RUN(connect_and_accept_results_to_the_wrong_end_are_argument_and_stay_usable);
    RUN(end_twice_is_invalid_operation_for_every_end);
    RUN(an_ended_result_stays_dead_after_its_slot_is_reused);
    RUN(socket_closed_before_completion_end_is_object_disposed_for_every_end);
    RUN(socket_closed_after_completion_before_end_is_object_disposed_for_every_end);
    RUN(socket_errors_come_through_error_code);
    RUN(begin_argument_checks_start_nothing);
    RUN(end_receive_from_and_end_accept_with_null_out_stay_pending);
    RUN(accept_failure_comes_through_end_accept_and_the_next_accept_works);
    RUN(end_on_the_loop_thread_after_completion_works);
    return harness_finish();
}
