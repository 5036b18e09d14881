/*
 * test_saea_io.c — section 6, the data operations of SocketAsyncEventArgs:
 * scatter/gather buffer lists (beyond IOV_MAX too), connect, send-to and
 * receive-from over UDP (IPv4 and IPv6), disconnect and reuse of the socket,
 * socket flags (PEEK), and a 10,000-message echo that handles synchronous and
 * pending completions in a loop (the classic stack-overflow trap) with no
 * growth of the stack.
 */
#include "harness.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#define WAIT_MS 5000

#include "saea_helpers.h"

/* An asock client socket on `lc` connected to an asock server socket
 * accepted on a listener (`*l`) on `ls`. */
static bool asock_pair(asock_loop lc, asock_loop ls, int32_t family, asock_socket *c, asock_socket *s,
                       asock_socket *l) {
    uint16_t port = 0;
    *l = listener_on(ls, family, &port);
    if (asock_socket_new(lc, family, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, c) != ASOCK_OK)
        return false;
    rec_t rc, ra;
    rec_init(&rc, pthread_self());
    rec_init(&ra, pthread_self());
    asock_event_args ec = new_args(&rc), ea = new_args(&ra);
    asock_endpoint to = lo_ep(family, port);
    CHECK_OK(asock_event_args_set_remote_endpoint(ec, &to));
    bool pc = false, pa = false;
    CHECK_OK(asock_connect_async(*c, ec, &pc));
    CHECK_OK(asock_accept_async(*l, ea, &pa));
    asock_event_args_info ci = result_of(ec, &rc, pc, 0);
    asock_event_args_info ai = result_of(ea, &ra, pa, 0);
    CHECK_OK(asock_event_args_free(ec));
    CHECK_OK(asock_event_args_free(ea));
    *s = ai.accept_socket;
    return ci.socket_error == ASOCK_OK && ai.socket_error == ASOCK_OK && s->id != 0;
}

/* ---- buffer lists ------------------------------------------------------------------ */

TEST(send_buffer_list_gathers_in_order) {
    static tloop tl;
    static rec_t r;
    REQUIRE(tloop_new(&tl));
    uint16_t port = 0;
    asock_socket l = listener_on(tl.loop, ASOCK_AF_INET, &port);
    int client = -1;
    asock_socket s = accept_one(l, ASOCK_AF_INET, port, &client);
    REQUIRE(s.id != 0);
    rec_init(&r, tl.tid);
    asock_event_args e = new_args(&r);
    uint8_t a[] = "abc", b[] = "defgh", c[] = "ij", z[] = "zz";
    asock_buffer list[5] = {{a, 3}, {NULL, 0}, {b, 5}, {z, 0}, {c, 2}};
    CHECK_OK(asock_event_args_set_buffer_list(e, list, 5));
    bool pending = true;
    CHECK_OK(asock_send_async(s, e, &pending));
    asock_event_args_info info = result_of(e, &r, pending, 0);
    CHECK_EQ_INT(info.last_operation, ASOCK_OP_SEND);
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);
    CHECK_EQ_INT(info.bytes_transferred, 10);
    char got[11] = {0};
    CHECK(recv_exact(client, got, 10));
    CHECK(strcmp(got, "abcdefghij") == 0);
    CHECK_OK(asock_event_args_free(e));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_socket_close(l));
    close(client);
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(receive_buffer_list_scatters_in_order) {
    static tloop tl;
    static rec_t r;
    REQUIRE(tloop_new(&tl));
    uint16_t port = 0;
    asock_socket l = listener_on(tl.loop, ASOCK_AF_INET6, &port);
    int client = -1;
    asock_socket s = accept_one(l, ASOCK_AF_INET6, port, &client);
    REQUIRE(s.id != 0);
    rec_init(&r, tl.tid);
    asock_event_args e = new_args(&r);
    uint8_t b1[3], b2[4], b3[5];
    memset(b1, '.', 3);
    memset(b2, '.', 4);
    memset(b3, '.', 5);
    asock_buffer list[3] = {{b1, 3}, {b2, 4}, {b3, 5}};
    CHECK_OK(asock_event_args_set_buffer_list(e, list, 3));
    bool pending = false;
    CHECK_OK(asock_receive_async(s, e, &pending));
    CHECK(pending);
    CHECK_EQ_INT(send(client, "0123456789", 10, 0), 10);
    asock_event_args_info info = result_of(e, &r, pending, 0);
    CHECK_EQ_INT(atomic_get_int(&r.off_thread), 0);
    CHECK_EQ_INT(info.last_operation, ASOCK_OP_RECEIVE);
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);
    CHECK_EQ_INT(info.bytes_transferred, 10);
    CHECK(memcmp(b1, "012", 3) == 0);
    CHECK(memcmp(b2, "3456", 4) == 0);
    CHECK(memcmp(b3, "789..", 5) == 0);
    CHECK_OK(asock_event_args_free(e));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_socket_close(l));
    close(client);
    CHECK_OK(asock_loop_free(tl.loop));
}

static uint8_t pattern_at(size_t i) { return (uint8_t)((i * 131u + (i >> 8) * 7u + 1u) & 0xFF); }

/* Sends from `nbufs` buffers of sizes 1..maxlen; the client reads it all. */
static void send_many_buffers(int nbufs, int maxlen) {
    static tloop tl;
    static rec_t r;
    REQUIRE(tloop_new(&tl));
    uint16_t port = 0;
    asock_socket l = listener_on(tl.loop, ASOCK_AF_INET, &port);
    int client = -1;
    asock_socket s = accept_one(l, ASOCK_AF_INET, port, &client);
    REQUIRE(s.id != 0);
    asock_buffer *list = calloc((size_t)nbufs, sizeof *list);
    size_t total = 0;
    for (int i = 0; i < nbufs; i++)
        total += (size_t)(i % maxlen) + 1;
    uint8_t *data = malloc(total), *got = malloc(total);
    REQUIRE(list != NULL && data != NULL && got != NULL);
    for (size_t i = 0; i < total; i++)
        data[i] = pattern_at(i);
    /* Buffers point into `data` back to front and are listed front to back,
     * so an implementation that read one contiguous region would send the
     * wrong bytes. */
    size_t off = total;
    size_t pos = 0;
    uint8_t *shuffled = malloc(total);
    REQUIRE(shuffled != NULL);
    for (int i = 0; i < nbufs; i++) {
        size_t len = (size_t)(i % maxlen) + 1;
        off -= len;
        memcpy(shuffled + off, data + pos, len);
        list[i].data = shuffled + off;
        list[i].len = len;
        pos += len;
    }
    bool big = total > 100000;
    if (big) {
        /* Small socket buffers: the send cannot finish at once and goes on
         * in parts, across IOV_MAX windows, as the client reads. */
        CHECK_OK(asock_socket_set_option(s, ASOCK_OPT_SEND_BUFFER_SIZE, 4096));
    }
    rec_init(&r, tl.tid);
    asock_event_args e = new_args(&r);
    CHECK_OK(asock_event_args_set_buffer_list(e, list, (size_t)nbufs));
    bool pending = false;
    CHECK_OK(asock_send_async(s, e, &pending));
    if (big)
        CHECK(pending);
    /* Read while the send may still be going (it may not fit the socket buffers). */
    CHECK(recv_exact(client, got, total));
    asock_event_args_info info = result_of(e, &r, pending, 0);
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);
    CHECK_EQ_INT(info.bytes_transferred, (long long)total);
    CHECK(memcmp(got, data, total) == 0);
    printf("  %d buffers, %zu bytes: %s\n", nbufs, total, pending ? "pending" : "synchronous");
    CHECK_OK(asock_event_args_free(e));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_socket_close(l));
    close(client);
    free(list);
    free(data);
    free(got);
    free(shuffled);
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(send_more_buffers_than_iov_max) {
    send_many_buffers(3000, 1);   /* 3000 one-byte buffers */
    send_many_buffers(3000, 5);   /* small ones, synchronous */
    send_many_buffers(3000, 200); /* ~300 kB: partial sends across several IOV_MAX windows */
}

TEST(receive_more_buffers_than_iov_max) {
    static tloop tl;
    static rec_t rz, r;
    enum { N = 3000 };
    REQUIRE(tloop_new(&tl));
    uint16_t port = 0;
    asock_socket l = listener_on(tl.loop, ASOCK_AF_INET, &port);
    int client = -1;
    asock_socket s = accept_one(l, ASOCK_AF_INET, port, &client);
    REQUIRE(s.id != 0);
    static uint8_t sent[N], cells[N];
    static asock_buffer list[N];
    for (int i = 0; i < N; i++) {
        sent[i] = pattern_at((size_t)i);
        list[i].data = &cells[N - 1 - i]; /* back to front */
        list[i].len = 1;
    }
    memset(cells, 0, sizeof cells);
    /* One send of 3000 bytes is one segment on loopback: once a zero-byte
     * receive says data is there, all of it is. */
    CHECK_EQ_INT(send(client, sent, N, 0), N);
    rec_init(&rz, tl.tid);
    asock_event_args ez = new_args(&rz);
    bool pending = false;
    CHECK_OK(asock_receive_async(s, ez, &pending));
    asock_event_args_info zi = result_of(ez, &rz, pending, 0);
    CHECK_EQ_INT(zi.socket_error, ASOCK_OK);
    CHECK_EQ_INT(zi.bytes_transferred, 0);

    rec_init(&r, tl.tid);
    asock_event_args e = new_args(&r);
    CHECK_OK(asock_event_args_set_buffer_list(e, list, N));
    int have = 0, receives = 0, first = -1;
    while (have < N && receives < N) {
        int before = atomic_get_int(&r.calls);
        CHECK_OK(asock_receive_async(s, e, &pending));
        asock_event_args_info info = result_of(e, &r, pending, before);
        if (info.socket_error != ASOCK_OK || info.bytes_transferred <= 0) {
            harness_fail_cond(__FILE__, __LINE__, "receive into the buffer list");
            break;
        }
        if (first < 0)
            first = info.bytes_transferred;
        /* This receive's bytes fill list[0..n) in order. */
        for (int i = 0; i < info.bytes_transferred; i++)
            if (cells[N - 1 - i] != sent[have + i]) {
                harness_fail_cond(__FILE__, __LINE__, "byte landed in its buffer, in order");
                break;
            }
        have += info.bytes_transferred;
        receives++;
    }
    CHECK_EQ_INT(have, N);
    /* All 3000 bytes were waiting: one receive fills all 3000 buffers, not
     * just the first IOV_MAX (1024) of them. */
    CHECK_EQ_INT(first, N);
    printf("  first receive into %d one-byte buffers took %d bytes (%d receives in all)\n", N, first, receives);
    CHECK_OK(asock_event_args_free(e));
    CHECK_OK(asock_event_args_free(ez));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_socket_close(l));
    close(client);
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(buffer_and_buffer_list_are_mutually_exclusive) {
    asock_event_args e;
    REQUIRE_OK(asock_event_args_new(&e));
    uint8_t buf[8];
    asock_buffer list[2] = {{buf, 4}, {buf + 4, 4}};
    CHECK_OK(asock_event_args_set_buffer(e, buf, 0, 8));
    CHECK_ERR(asock_event_args_set_buffer_list(e, list, 2), ASOCK_E_ARGUMENT);
    CHECK_OK(asock_event_args_set_buffer(e, buf, 2, 4)); /* replacing the buffer is fine */
    CHECK_OK(asock_event_args_set_buffer(e, NULL, 0, 0)); /* clears it */
    CHECK_OK(asock_event_args_set_buffer_list(e, list, 2));
    CHECK_ERR(asock_event_args_set_buffer(e, buf, 0, 8), ASOCK_E_ARGUMENT);
    CHECK_OK(asock_event_args_set_buffer_list(e, list, 1)); /* replacing the list is fine */
    CHECK_OK(asock_event_args_set_buffer_list(e, NULL, 0)); /* clears it */
    CHECK_OK(asock_event_args_set_buffer(e, buf, 0, 8));
    CHECK_OK(asock_event_args_set_buffer(e, NULL, 0, 0));

    /* NULL data with len > 0: ArgumentNull, and no list is set by it. */
    asock_buffer bad[3] = {{buf, 4}, {NULL, 1}, {buf, 4}};
    CHECK_ERR(asock_event_args_set_buffer_list(e, bad, 3), ASOCK_E_ARGUMENT_NULL);
    CHECK_OK(asock_event_args_set_buffer(e, buf, 0, 8));
    CHECK_OK(asock_event_args_set_buffer(e, NULL, 0, 0));
    CHECK_ERR(asock_event_args_set_buffer_list(e, NULL, 2), ASOCK_E_ARGUMENT_NULL);
    /* NULL data with len 0 is fine. */
    asock_buffer empty[2] = {{NULL, 0}, {buf, 1}};
    CHECK_OK(asock_event_args_set_buffer_list(e, empty, 2));
    CHECK_OK(asock_event_args_set_buffer_list(e, NULL, 0));
    /* Negative offset or count. */
    CHECK_ERR(asock_event_args_set_buffer(e, buf, -1, 4), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_event_args_set_buffer(e, buf, 0, -4), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_OK(asock_event_args_free(e));
}

TEST(buffer_list_array_is_copied) {
    static tloop tl;
    static rec_t r;
    REQUIRE(tloop_new(&tl));
    uint16_t port = 0;
    asock_socket l = listener_on(tl.loop, ASOCK_AF_INET, &port);
    int client = -1;
    asock_socket s = accept_one(l, ASOCK_AF_INET, port, &client);
    REQUIRE(s.id != 0);
    rec_init(&r, tl.tid);
    asock_event_args e = new_args(&r);
    static uint8_t one[] = "copied ", two[] = "list";
    asock_buffer *list = malloc(2 * sizeof *list);
    REQUIRE(list != NULL);
    list[0] = (asock_buffer){one, 7};
    list[1] = (asock_buffer){two, 4};
    CHECK_OK(asock_event_args_set_buffer_list(e, list, 2));
    memset(list, 0xFF, 2 * sizeof *list);
    free(list); /* the args hold their own copy (valgrind checks no one reads this) */
    bool pending = false;
    CHECK_OK(asock_send_async(s, e, &pending));
    asock_event_args_info info = result_of(e, &r, pending, 0);
    CHECK_EQ_INT(info.bytes_transferred, 11);
    char got[12] = {0};
    CHECK(recv_exact(client, got, 11));
    CHECK(strcmp(got, "copied list") == 0);
    CHECK_OK(asock_event_args_free(e));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_socket_close(l));
    close(client);
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- connect ---------------------------------------------------------------------- */

static void connect_cases(int32_t family) {
    static tloop tl;
    static rec_t r;
    REQUIRE(tloop_new(&tl));
    uint16_t port = 0;
    asock_socket l = listener_on(tl.loop, family, &port);
    asock_socket c;
    REQUIRE_OK(asock_socket_new(tl.loop, family, ASOCK_SOCK_STREAM, 0, &c));
    rec_init(&r, tl.tid);
    asock_event_args e = new_args(&r);
    bool pending = true;

    /* No remote endpoint: ArgumentNull. */
    CHECK_ERR(asock_connect_async(c, e, &pending), ASOCK_E_ARGUMENT_NULL);
    CHECK(pending);
    /* An endpoint of the other family. */
    asock_endpoint other = lo_ep(family == ASOCK_AF_INET ? ASOCK_AF_INET6 : ASOCK_AF_INET, port);
    CHECK_OK(asock_event_args_set_remote_endpoint(e, &other));
    CHECK_ERR(asock_connect_async(c, e, &pending), ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);
    /* A listening socket does not connect. */
    asock_endpoint to = lo_ep(family, port);
    CHECK_OK(asock_event_args_set_remote_endpoint(e, &to));
    CHECK_ERR(asock_connect_async(l, e, &pending), ASOCK_E_INVALID_OPERATION);
    CHECK(loop_barrier(tl.loop, NULL));
    CHECK_EQ_INT(atomic_get_int(&r.calls), 0);

    /* It connects. */
    CHECK_OK(asock_connect_async(c, e, &pending));
    asock_event_args_info info = result_of(e, &r, pending, 0);
    CHECK_EQ_INT(info.last_operation, ASOCK_OP_CONNECT);
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);
    CHECK(ep_equal(&info.remote_endpoint, &to));
    asock_endpoint peer;
    CHECK_OK(asock_socket_remote_endpoint(c, &peer));
    CHECK(ep_equal(&peer, &to));
    CHECK_EQ_INT(atomic_get_int(&r.off_thread), 0);
    /* Connecting a connected socket is refused, one way or another (.NET:
     * SocketException IsConnected). */
    int before = atomic_get_int(&r.calls);
    asock_error again = asock_connect_async(c, e, &pending);
    if (again == ASOCK_OK) {
        info = result_of(e, &r, pending, before);
        CHECK(info.socket_error != ASOCK_OK);
    }
    CHECK_OK(asock_socket_close(c));

    /* Refused: a port bound by a socket that does not listen. */
    asock_socket holder, c2;
    REQUIRE_OK(asock_socket_new(tl.loop, family, ASOCK_SOCK_STREAM, 0, &holder));
    asock_endpoint any = lo_ep(family, 0), held;
    CHECK_OK(asock_socket_bind(holder, &any));
    CHECK_OK(asock_socket_local_endpoint(holder, &held));
    REQUIRE_OK(asock_socket_new(tl.loop, family, ASOCK_SOCK_STREAM, 0, &c2));
    CHECK_OK(asock_event_args_set_remote_endpoint(e, &held));
    before = atomic_get_int(&r.calls);
    CHECK_OK(asock_connect_async(c2, e, &pending));
    info = result_of(e, &r, pending, before);
    CHECK_EQ_INT(info.last_operation, ASOCK_OP_CONNECT);
    CHECK_EQ_INT(info.socket_error, ASOCK_CONNECTION_REFUSED);
    CHECK_EQ_INT(atomic_get_int(&r.off_thread), 0);
    CHECK_ERR(asock_socket_remote_endpoint(c2, &peer), ASOCK_NOT_CONNECTED);

    /* The failed connect left the args free. */
    CHECK_OK(asock_event_args_set_user_token(e, &r));

    /* The listener's queued connection from the first connect. */
    asock_event_args ea = new_args(&r);
    before = atomic_get_int(&r.calls);
    CHECK_OK(asock_accept_async(l, ea, &pending));
    info = result_of(ea, &r, pending, before);
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);
    if (info.accept_socket.id != 0)
        CHECK_OK(asock_socket_close(info.accept_socket));

    CHECK_OK(asock_event_args_free(ea));
    CHECK_OK(asock_event_args_free(e));
    CHECK_OK(asock_socket_close(c2));
    CHECK_OK(asock_socket_close(holder));
    CHECK_OK(asock_socket_close(l));
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(connect_async_ipv4) { connect_cases(ASOCK_AF_INET); }
TEST(connect_async_ipv6) { connect_cases(ASOCK_AF_INET6); }

/* ---- UDP send-to / receive-from ----------------------------------------------------- */

static void udp_cases(int32_t family) {
    static tloop tl;
    static rec_t ra, rb;
    REQUIRE(tloop_new(&tl));
    asock_socket a, b;
    REQUIRE_OK(asock_socket_new(tl.loop, family, ASOCK_SOCK_DGRAM, ASOCK_PROTO_UDP, &a));
    REQUIRE_OK(asock_socket_new(tl.loop, family, ASOCK_SOCK_DGRAM, ASOCK_PROTO_UDP, &b));
    asock_endpoint any = lo_ep(family, 0), aep, bep;
    CHECK_OK(asock_socket_bind(a, &any));
    CHECK_OK(asock_socket_bind(b, &any));
    CHECK_OK(asock_socket_local_endpoint(a, &aep));
    CHECK_OK(asock_socket_local_endpoint(b, &bep));
    rec_init(&ra, tl.tid);
    rec_init(&rb, tl.tid);
    asock_event_args ea = new_args(&ra), eb = new_args(&rb);
    uint8_t out[] = "datagram!", in[64];
    bool pending = true;

    /* Neither works without a remote endpoint. */
    CHECK_OK(asock_event_args_set_buffer(ea, out, 0, 9));
    CHECK_OK(asock_event_args_set_buffer(eb, in, 0, (int32_t)sizeof in));
    CHECK_ERR(asock_send_to_async(a, ea, &pending), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_receive_from_async(b, eb, &pending), ASOCK_E_ARGUMENT_NULL);
    CHECK(pending);
    /* Send-to an endpoint of the other family. */
    asock_endpoint other = lo_ep(family == ASOCK_AF_INET ? ASOCK_AF_INET6 : ASOCK_AF_INET, bep.port);
    CHECK_OK(asock_event_args_set_remote_endpoint(ea, &other));
    CHECK_ERR(asock_send_to_async(a, ea, &pending), ASOCK_ADDRESS_FAMILY_NOT_SUPPORTED);

    /* b waits for a datagram from anyone. */
    asock_endpoint from_any;
    CHECK_OK(asock_endpoint_init(family, false, 0, &from_any));
    CHECK_OK(asock_event_args_set_remote_endpoint(eb, &from_any));
    CHECK_OK(asock_receive_from_async(b, eb, &pending));
    CHECK(pending);
    CHECK_OK(asock_event_args_set_remote_endpoint(ea, &bep));
    CHECK_OK(asock_send_to_async(a, ea, &pending));
    asock_event_args_info si = result_of(ea, &ra, pending, 0);
    CHECK_EQ_INT(si.last_operation, ASOCK_OP_SEND_TO);
    CHECK_EQ_INT(si.socket_error, ASOCK_OK);
    CHECK_EQ_INT(si.bytes_transferred, 9);
    CHECK(wait_atomic_ge(&rb.calls, 1, WAIT_MS));
    CHECK_EQ_INT(atomic_get_int(&rb.off_thread), 0);
    CHECK_EQ_INT(rb.info.last_operation, ASOCK_OP_RECEIVE_FROM);
    CHECK_EQ_INT(rb.info.socket_error, ASOCK_OK);
    CHECK_EQ_INT(rb.info.bytes_transferred, 9);
    CHECK(memcmp(in, "datagram!", 9) == 0);
    CHECK(ep_equal(&rb.info.remote_endpoint, &aep)); /* the sender */

    /* Gather on send-to, scatter on receive-from: one datagram. */
    uint8_t p1[] = "scat", p2[] = "ter", q1[3], q2[8];
    asock_buffer outl[2] = {{p1, 4}, {p2, 3}}, inl[2] = {{q1, 3}, {q2, 8}};
    CHECK_OK(asock_event_args_set_buffer(ea, NULL, 0, 0));
    CHECK_OK(asock_event_args_set_buffer_list(ea, outl, 2));
    CHECK_OK(asock_event_args_set_buffer(eb, NULL, 0, 0));
    CHECK_OK(asock_event_args_set_buffer_list(eb, inl, 2));
    CHECK_OK(asock_event_args_set_remote_endpoint(eb, &from_any));
    CHECK_OK(asock_receive_from_async(b, eb, &pending));
    bool bpending = pending;
    CHECK_OK(asock_send_to_async(a, ea, &pending));
    si = result_of(ea, &ra, pending, 0);
    CHECK_EQ_INT(si.bytes_transferred, 7);
    asock_event_args_info ri = result_of(eb, &rb, bpending, 1);
    CHECK_EQ_INT(ri.socket_error, ASOCK_OK);
    CHECK_EQ_INT(ri.bytes_transferred, 7);
    CHECK(memcmp(q1, "sca", 3) == 0);
    CHECK(memcmp(q2, "tter", 4) == 0);
    CHECK(ep_equal(&ri.remote_endpoint, &aep));

    /* A datagram larger than the buffer: MessageSize, its first bytes kept
     * (as for asock_begin_receive). */
    uint8_t small[4];
    CHECK_OK(asock_event_args_set_buffer_list(eb, NULL, 0));
    CHECK_OK(asock_event_args_set_buffer(eb, small, 0, 4));
    CHECK_OK(asock_event_args_set_remote_endpoint(eb, &from_any));
    int before = atomic_get_int(&rb.calls);
    CHECK_OK(asock_receive_from_async(b, eb, &pending));
    bpending = pending;
    CHECK_OK(asock_event_args_set_buffer_list(ea, NULL, 0));
    CHECK_OK(asock_event_args_set_buffer(ea, out, 0, 9));
    CHECK_OK(asock_send_to_async(a, ea, &pending));
    (void)result_of(ea, &ra, pending, 0);
    ri = result_of(eb, &rb, bpending, before);
    CHECK_EQ_INT(ri.socket_error, ASOCK_MESSAGE_SIZE);
    CHECK_EQ_INT(ri.bytes_transferred, 4);
    CHECK(memcmp(small, "data", 4) == 0);

    /* Receive-from with an endpoint of the other family: refused (the doc:
     * "receive-from needs one too, of the socket's family"). */
    CHECK_OK(asock_event_args_set_remote_endpoint(eb, &other));
    before = atomic_get_int(&rb.calls);
    asock_error wrong = asock_receive_from_async(b, eb, &pending);
    CHECK(wrong != ASOCK_OK);
    if (wrong == ASOCK_OK) {
        /* let it finish so the test can clean up */
        CHECK_OK(asock_send_to_async(a, ea, &pending));
        (void)result_of(eb, &rb, true, before);
    }

    CHECK_OK(asock_event_args_free(ea));
    CHECK_OK(asock_event_args_free(eb));
    CHECK_OK(asock_socket_close(a));
    CHECK_OK(asock_socket_close(b));
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(udp_send_to_and_receive_from_ipv4) { udp_cases(ASOCK_AF_INET); }
TEST(udp_send_to_and_receive_from_ipv6) { udp_cases(ASOCK_AF_INET6); }

/* ---- disconnect -------------------------------------------------------------------- */

TEST(disconnect_then_connect_again_with_the_same_handle) {
    static tloop tl;
    static rec_t r, rr, rs;
    REQUIRE(tloop_new(&tl));
    asock_socket c, s, l;
    REQUIRE(asock_pair(tl.loop, tl.loop, ASOCK_AF_INET, &c, &s, &l));
    asock_endpoint lep;
    CHECK_OK(asock_socket_local_endpoint(l, &lep));

    /* A receive pending on c is aborted by the disconnect. */
    rec_init(&rr, tl.tid);
    asock_event_args er = new_args(&rr);
    uint8_t buf[16];
    CHECK_OK(asock_event_args_set_buffer(er, buf, 0, 16));
    bool pending = false;
    CHECK_OK(asock_receive_async(c, er, &pending));
    CHECK(pending);

    rec_init(&r, tl.tid);
    asock_event_args e = new_args(&r);
    pending = true;
    CHECK_OK(asock_disconnect_async(c, e, &pending));
    CHECK(!pending);
    asock_event_args_info info;
    CHECK_OK(asock_event_args_get_info(e, &info));
    CHECK_EQ_INT(info.last_operation, ASOCK_OP_DISCONNECT);
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);
    CHECK(wait_atomic_ge(&rr.calls, 1, WAIT_MS));
    CHECK_EQ_INT(rr.info.socket_error, ASOCK_OPERATION_ABORTED);
    CHECK_EQ_INT(atomic_get_int(&rr.off_thread), 0);
    CHECK(loop_barrier(tl.loop, NULL));
    CHECK_EQ_INT(atomic_get_int(&r.calls), 0);
    CHECK_EQ_INT(atomic_get_int(&rr.calls), 1);
    asock_endpoint peer;
    CHECK_ERR(asock_socket_remote_endpoint(c, &peer), ASOCK_NOT_CONNECTED);

    /* The server side sees the end of the stream. */
    rec_init(&rs, tl.tid);
    asock_event_args es = new_args(&rs);
    CHECK_OK(asock_event_args_set_buffer(es, buf, 0, 16));
    CHECK_OK(asock_receive_async(s, es, &pending));
    info = result_of(es, &rs, pending, 0);
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);
    CHECK_EQ_INT(info.bytes_transferred, 0);
    CHECK_OK(asock_socket_close(s));

    /* The same handle connects again, and carries data. */
    CHECK_OK(asock_event_args_set_remote_endpoint(e, &lep));
    CHECK_OK(asock_connect_async(c, e, &pending));
    info = result_of(e, &r, pending, 0);
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);
    CHECK_OK(asock_socket_remote_endpoint(c, &peer));
    CHECK(ep_equal(&peer, &lep));
    int before = atomic_get_int(&rs.calls);
    asock_event_args ea = new_args(&rs);
    CHECK_OK(asock_accept_async(l, ea, &pending));
    info = result_of(ea, &rs, pending, before);
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);
    asock_socket s2 = info.accept_socket;
    REQUIRE(s2.id != 0);
    CHECK(asock_send_all(c, "again", 5));
    before = atomic_get_int(&rs.calls);
    CHECK_OK(asock_receive_async(s2, es, &pending));
    info = result_of(es, &rs, pending, before);
    CHECK_EQ_INT(info.bytes_transferred, 5);
    CHECK(memcmp(buf, "again", 5) == 0);

    /* And disconnects again. */
    CHECK_OK(asock_disconnect_async(c, e, &pending));
    CHECK(!pending);
    CHECK_OK(asock_event_args_get_info(e, &info));
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);

    CHECK_OK(asock_event_args_free(e));
    CHECK_OK(asock_event_args_free(er));
    CHECK_OK(asock_event_args_free(es));
    CHECK_OK(asock_event_args_free(ea));
    CHECK_OK(asock_socket_close(s2));
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(l));
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(disconnect_not_connected_and_closed) {
    static tloop tl;
    static rec_t r;
    REQUIRE(tloop_new(&tl));
    rec_init(&r, tl.tid);
    asock_event_args e = new_args(&r);
    asock_socket s;
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET6, ASOCK_SOCK_STREAM, 0, &s));
    bool pending = true;
    CHECK_OK(asock_disconnect_async(s, e, &pending));
    CHECK(!pending);
    asock_event_args_info info;
    CHECK_OK(asock_event_args_get_info(e, &info));
    CHECK_EQ_INT(info.last_operation, ASOCK_OP_DISCONNECT);
    CHECK_EQ_INT(info.socket_error, ASOCK_NOT_CONNECTED);
    /* A listener is not connected either. */
    uint16_t port = 0;
    asock_socket l = listener_on(tl.loop, ASOCK_AF_INET, &port);
    pending = true;
    CHECK_OK(asock_disconnect_async(l, e, &pending));
    CHECK(!pending);
    CHECK_OK(asock_event_args_get_info(e, &info));
    CHECK_EQ_INT(info.socket_error, ASOCK_NOT_CONNECTED);
    /* It still listens. */
    int client = posix_connect(ASOCK_AF_INET, port);
    CHECK(client >= 0);
    CHECK_OK(asock_accept_async(l, e, &pending));
    info = result_of(e, &r, pending, 0);
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);
    if (info.accept_socket.id != 0)
        CHECK_OK(asock_socket_close(info.accept_socket));
    /* Closed socket: ObjectDisposed, nothing started, args free. */
    CHECK_OK(asock_socket_close(s));
    CHECK(loop_barrier(tl.loop, NULL));
    int calls = atomic_get_int(&r.calls);
    pending = true;
    CHECK_ERR(asock_disconnect_async(s, e, &pending), ASOCK_E_OBJECT_DISPOSED);
    CHECK(pending);
    CHECK_OK(asock_event_args_set_user_token(e, &r));
    CHECK(loop_barrier(tl.loop, NULL));
    CHECK_EQ_INT(atomic_get_int(&r.calls), calls);
    CHECK_OK(asock_event_args_free(e));
    CHECK_OK(asock_socket_close(l));
    if (client >= 0)
        close(client);
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- socket flags ------------------------------------------------------------------ */

TEST(peek_leaves_the_data_for_the_next_receive) {
    static tloop tl;
    static rec_t r;
    REQUIRE(tloop_new(&tl));
    uint16_t port = 0;
    asock_socket l = listener_on(tl.loop, ASOCK_AF_INET, &port);
    int client = -1;
    asock_socket s = accept_one(l, ASOCK_AF_INET, port, &client);
    REQUIRE(s.id != 0);
    rec_init(&r, tl.tid);
    asock_event_args e = new_args(&r);
    uint8_t buf[16];
    memset(buf, 0, sizeof buf);
    CHECK_OK(asock_event_args_set_buffer(e, buf, 0, 16));
    CHECK_OK(asock_event_args_set_socket_flags(e, ASOCK_SOCKET_FLAG_PEEK));
    bool pending = false;
    CHECK_OK(asock_receive_async(s, e, &pending));
    CHECK(pending);
    CHECK_EQ_INT(send(client, "peekaboo", 8, 0), 8);
    asock_event_args_info info = result_of(e, &r, pending, 0);
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);
    CHECK_EQ_INT(info.bytes_transferred, 8);
    CHECK(memcmp(buf, "peekaboo", 8) == 0);
    /* Peek again: the same bytes. */
    memset(buf, 0, sizeof buf);
    CHECK_OK(asock_receive_async(s, e, &pending));
    info = result_of(e, &r, pending, 1);
    CHECK_EQ_INT(info.bytes_transferred, 8);
    CHECK(memcmp(buf, "peekaboo", 8) == 0);
    /* Without the flag: the data, taken. */
    memset(buf, 0, sizeof buf);
    CHECK_OK(asock_event_args_set_socket_flags(e, ASOCK_SOCKET_FLAG_NONE));
    int before = atomic_get_int(&r.calls);
    CHECK_OK(asock_receive_async(s, e, &pending));
    info = result_of(e, &r, pending, before);
    CHECK_EQ_INT(info.bytes_transferred, 8);
    CHECK(memcmp(buf, "peekaboo", 8) == 0);
    /* Now nothing is left: the next receive waits. */
    before = atomic_get_int(&r.calls);
    CHECK_OK(asock_receive_async(s, e, &pending));
    CHECK(pending);
    harness_sleep_ms(30);
    CHECK_EQ_INT(atomic_get_int(&r.calls), before);
    CHECK_EQ_INT(send(client, "!", 1, 0), 1);
    info = result_of(e, &r, pending, before);
    CHECK_EQ_INT(info.bytes_transferred, 1);
    CHECK_EQ_INT(buf[0], '!');
    /* Bad flags. */
    CHECK_ERR(asock_event_args_set_socket_flags(e, 0x8), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_event_args_set_socket_flags(e, -1), ASOCK_E_ARGUMENT);
    CHECK_OK(asock_event_args_free(e));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_socket_close(l));
    close(client);
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- echo: synchronous and pending completions in a loop ------------------------------ */

#define MSG 16

typedef struct {
    asock_socket s;
    asock_event_args e;
    bool client;
    pthread_t tid;
    int target;
    uint8_t buf[MSG];
    int have;    /* bytes of the current message received */
    bool sending;
    int count;   /* messages finished */
    atomic_int started, sync_n, pending_n, callbacks, errors, done;
    intptr_t stack_lo, stack_hi;
    int steps_on_loop;
} side_t;

static void fill_msg(uint8_t *p, int i) {
    for (int k = 0; k < MSG; k++)
        p[k] = (uint8_t)(i * 31 + k * 7 + (i >> 8));
    memcpy(p, &i, sizeof i);
}

static void side_fail(side_t *sd) {
    atomic_fetch_add(&sd->errors, 1);
    atomic_store(&sd->done, 1);
}

/* Starts the side's next operation; returns false when there is none. */
static bool side_start_next(side_t *sd, bool *pending) {
    asock_error err;
    if (sd->sending) {
        err = asock_event_args_set_buffer(sd->e, sd->buf, 0, MSG);
        if (err == ASOCK_OK)
            err = asock_send_async(sd->s, sd->e, pending);
    } else {
        err = asock_event_args_set_buffer(sd->e, sd->buf, sd->have, MSG - sd->have);
        if (err == ASOCK_OK)
            err = asock_receive_async(sd->s, sd->e, pending);
    }
    if (err != ASOCK_OK) {
        side_fail(sd);
        return false;
    }
    atomic_fetch_add(&sd->started, 1);
    return true;
}

/* Takes the result in the args and decides what is next: true to start it. */
static bool side_handle(side_t *sd) {
    asock_event_args_info info;
    if (asock_event_args_get_info(sd->e, &info) != ASOCK_OK || info.socket_error != ASOCK_OK) {
        side_fail(sd);
        return false;
    }
    if (sd->sending) {
        if (info.last_operation != ASOCK_OP_SEND || info.bytes_transferred != MSG) {
            side_fail(sd);
            return false;
        }
        if (!sd->client && ++sd->count == sd->target) {
            atomic_store(&sd->done, 1);
            return false;
        }
        sd->sending = false;
        sd->have = 0;
        return true;
    }
    if (info.last_operation != ASOCK_OP_RECEIVE || info.bytes_transferred <= 0) {
        side_fail(sd);
        return false;
    }
    sd->have += info.bytes_transferred;
    if (sd->have < MSG)
        return true; /* the rest of this message */
    if (sd->client) {
        uint8_t want[MSG];
        fill_msg(want, sd->count);
        if (memcmp(want, sd->buf, MSG) != 0) {
            side_fail(sd);
            return false;
        }
        if (++sd->count == sd->target) {
            atomic_store(&sd->done, 1);
            return false;
        }
        fill_msg(sd->buf, sd->count);
    }
    sd->sending = true; /* client: the next message; server: echo this one */
    return true;
}

static void note_stack(side_t *sd) {
    volatile char probe = 0;
    intptr_t at = (intptr_t)&probe;
    if (!pthread_equal(pthread_self(), sd->tid))
        return;
    if (sd->steps_on_loop++ == 0 || at < sd->stack_lo)
        sd->stack_lo = at;
    if (sd->steps_on_loop == 1 || at > sd->stack_hi)
        sd->stack_hi = at;
}

/* After a completion: handle it, start the next, and loop while the next
 * finishes synchronously — never recurse. */
static void side_run(side_t *sd) {
    for (;;) {
        note_stack(sd);
        if (!side_handle(sd))
            return;
        bool pending = false;
        if (!side_start_next(sd, &pending))
            return;
        if (pending) {
            atomic_fetch_add(&sd->pending_n, 1);
            return;
        }
        atomic_fetch_add(&sd->sync_n, 1);
    }
}

static void side_cb(asock_socket sender, asock_event_args e, void *token) {
    (void)sender;
    (void)e;
    side_t *sd = token;
    atomic_fetch_add(&sd->callbacks, 1);
    side_run(sd);
}

/* Posted to the side's loop: the first operation. */
static void side_begin(void *p) {
    side_t *sd = p;
    note_stack(sd);
    bool pending = false;
    if (!side_start_next(sd, &pending))
        return;
    if (pending) {
        atomic_fetch_add(&sd->pending_n, 1);
        return;
    }
    atomic_fetch_add(&sd->sync_n, 1);
    side_run(sd);
}

TEST(echo_10000_messages_sync_and_pending_in_a_loop) {
    static tloop la, lb;
    static side_t cl, sv;
    const int n = under_valgrind() ? 1000 : 10000;
    REQUIRE(tloop_new(&la));
    REQUIRE(tloop_new(&lb));
    asock_socket c, s, l;
    REQUIRE(asock_pair(la.loop, lb.loop, ASOCK_AF_INET, &c, &s, &l));
    CHECK_OK(asock_socket_set_option(c, ASOCK_OPT_NO_DELAY, 1));
    CHECK_OK(asock_socket_set_option(s, ASOCK_OPT_NO_DELAY, 1));

    memset(&cl, 0, sizeof cl);
    memset(&sv, 0, sizeof sv);
    cl.s = c;
    cl.client = true;
    cl.tid = la.tid;
    cl.target = n;
    cl.sending = true;
    fill_msg(cl.buf, 0);
    sv.s = s;
    sv.client = false;
    sv.tid = lb.tid;
    sv.target = n;
    sv.sending = false;
    REQUIRE_OK(asock_event_args_new(&cl.e));
    REQUIRE_OK(asock_event_args_new(&sv.e));
    CHECK_OK(asock_event_args_set_completed(cl.e, side_cb));
    CHECK_OK(asock_event_args_set_completed(sv.e, side_cb));
    CHECK_OK(asock_event_args_set_user_token(cl.e, &cl));
    CHECK_OK(asock_event_args_set_user_token(sv.e, &sv));

    int64_t t0 = now_ms();
    CHECK_OK(asock_loop_post(lb.loop, side_begin, &sv));
    CHECK_OK(asock_loop_post(la.loop, side_begin, &cl));
    CHECK(wait_atomic_eq(&cl.done, 1, under_valgrind() ? 240000 : 30000));
    CHECK(wait_atomic_eq(&sv.done, 1, WAIT_MS));
    int64_t dt = now_ms() - t0;
    CHECK(loop_barrier(la.loop, NULL));
    CHECK(loop_barrier(lb.loop, NULL));

    CHECK_EQ_INT(atomic_get_int(&cl.errors), 0);
    CHECK_EQ_INT(atomic_get_int(&sv.errors), 0);
    CHECK_EQ_INT(cl.count, n);
    CHECK_EQ_INT(sv.count, n);
    side_t *sides[2] = {&cl, &sv};
    for (int i = 0; i < 2; i++) {
        side_t *sd = sides[i];
        int sync_n = atomic_get_int(&sd->sync_n), pend = atomic_get_int(&sd->pending_n);
        /* Every operation started is counted once, as one or the other... */
        CHECK_EQ_INT(sync_n + pend, atomic_get_int(&sd->started));
        /* ... a message is a send and at least one receive ... */
        CHECK(atomic_get_int(&sd->started) >= 2 * n);
        /* ... and every pending one got exactly one callback. */
        CHECK_EQ_INT(atomic_get_int(&sd->callbacks), pend);
        CHECK(sync_n > 0);
        CHECK(pend > 0);
        /* No recursion: the handler ran at the same stack depth throughout. */
        CHECK(sd->steps_on_loop > 0);
        CHECK(sd->stack_hi - sd->stack_lo < 4096);
        printf("  %s: %d operations, %d synchronous, %d pending, stack spread %ld bytes\n",
               sd->client ? "client" : "server", atomic_get_int(&sd->started), sync_n, pend,
               (long)(sd->stack_hi - sd->stack_lo));
    }
    printf("  %d round trips in %lld ms\n", n, (long long)dt);

    CHECK_OK(asock_event_args_free(cl.e));
    CHECK_OK(asock_event_args_free(sv.e));
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_socket_close(l));
    CHECK_OK(asock_loop_free(la.loop));
    CHECK_OK(asock_loop_free(lb.loop));
}

int main(void) {
    RUN(send_buffer_list_gathers_in_order);
    RUN(receive_buffer_list_scatters_in_order);
    RUN(send_more_buffers_than_iov_max);
    RUN(receive_more_buffers_than_iov_max);
    RUN(buffer_and_buffer_list_are_mutually_exclusive);
    RUN(buffer_list_array_is_copied);
    RUN(connect_async_ipv4);
    RUN(connect_async_ipv6);
    RUN(udp_send_to_and_receive_from_ipv4);
    RUN(udp_send_to_and_receive_from_ipv6);
    RUN(disconnect_then_connect_again_with_the_same_handle);
    RUN(disconnect_not_connected_and_closed);
    RUN(peek_leaves_the_data_for_the_next_receive);
    RUN(echo_10000_messages_sync_and_pending_in_a_loop);
    return harness_finish();
}
