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

#include "apm_helpers.h"

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
