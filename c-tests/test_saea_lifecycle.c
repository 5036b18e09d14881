/*
 * test_saea_lifecycle.c — section 6, SocketAsyncEventArgs (seed 001): the
 * return value (true → Completed runs exactly once on the socket's loop
 * thread; false → no callback, the result readable at once), reuse of one
 * args object (free again before the callback, so the callback may start the
 * next operation), "in use" errors, deferred free, stale/forged handles, and
 * close or loop free with operations pending (each completes once with
 * OperationAborted).
 */
#include "harness.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#define WAIT_MS 5000

#include "saea_helpers.h"

/* ---- helpers (local to this file) ------------------------------------------------ */
/* ---- defaults, null and none handles, free ---------------------------------------- */

TEST(new_args_defaults_and_none_handle) {
    CHECK_ERR(asock_event_args_new(NULL), ASOCK_E_ARGUMENT_NULL);
    asock_event_args e;
    REQUIRE_OK(asock_event_args_new(&e));
    CHECK(e.id != 0);
    asock_event_args_info info;
    memset(&info, 0xA5, sizeof info);
    CHECK_OK(asock_event_args_get_info(e, &info));
    CHECK_EQ_INT(info.last_operation, ASOCK_OP_NONE);
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);
    CHECK_EQ_INT(info.bytes_transferred, 0);
    CHECK(info.accept_socket.id == 0);
    CHECK(info.user_token == NULL);
    CHECK_ERR(asock_event_args_get_info(e, NULL), ASOCK_E_ARGUMENT_NULL);
    asock_endpoint l, r;
    CHECK_ERR(asock_event_args_get_accept_endpoints(e, &l, &r), ASOCK_E_INVALID_OPERATION);

    /* Two args are two handles. */
    asock_event_args e2;
    REQUIRE_OK(asock_event_args_new(&e2));
    CHECK(e2.id != e.id);

    /* The none handle: every setter and op refuses it; free is a no-op. */
    const asock_event_args none = {0};
    uint8_t buf[16];
    asock_buffer list[1] = {{buf, sizeof buf}};
    asock_endpoint ep = lo_ep(ASOCK_AF_INET, 9);
    CHECK_ERR(asock_event_args_set_buffer(none, buf, 0, 16), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_event_args_set_buffer_list(none, list, 1), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_event_args_set_completed(none, rec_cb), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_event_args_set_user_token(none, buf), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_event_args_set_accept_socket(none, (asock_socket){0}), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_event_args_set_remote_endpoint(none, &ep), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_event_args_set_socket_flags(none, 0), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_event_args_get_info(none, &info), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_event_args_get_accept_endpoints(none, &l, &r), ASOCK_E_ARGUMENT_NULL);
    asock_socket s;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s));
    bool pending = true;
    CHECK_ERR(asock_receive_async(s, none, &pending), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_send_async(s, none, &pending), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_accept_async(s, none, &pending), ASOCK_E_ARGUMENT_NULL);
    CHECK(pending); /* not written */
    CHECK_OK(asock_event_args_free(none));
    CHECK_OK(asock_event_args_free(none));

    /* Free, free twice, everything after a free. */
    CHECK_OK(asock_event_args_free(e));
    CHECK_ERR(asock_event_args_free(e), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_event_args_free(e), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_event_args_get_info(e, &info), ASOCK_E_OBJECT_DISPOSED);
    /* e2 is untouched by e's free. */
    CHECK_OK(asock_event_args_set_user_token(e2, buf));
    CHECK_OK(asock_event_args_get_info(e2, &info));
    CHECK(info.user_token == buf);
    CHECK_OK(asock_event_args_free(e2));
    CHECK_OK(asock_socket_close(s));
}

/* Every function with one args handle must give one of `want`. Returns the
 * number of mismatches. */
static int every_args_function(asock_event_args e, asock_socket tcp, asock_socket listener, asock_socket udp,
                               const asock_error *want, int nwant, const char *what) {
    uint8_t buf[300];
    asock_buffer list[1] = {{buf, 4}};
    asock_endpoint ep = lo_ep(ASOCK_AF_INET, 9), l, r;
    asock_event_args_info info;
    bool pending = true;
    asock_error got[17];
    int n = 0;
    got[n++] = asock_event_args_set_buffer(e, buf, 0, (int32_t)sizeof buf);
    got[n++] = asock_event_args_set_buffer_list(e, list, 1);
    got[n++] = asock_event_args_set_completed(e, rec_cb);
    got[n++] = asock_event_args_set_user_token(e, buf);
    got[n++] = asock_event_args_set_accept_socket(e, (asock_socket){0});
    got[n++] = asock_event_args_set_remote_endpoint(e, &ep);
    got[n++] = asock_event_args_set_socket_flags(e, 0);
    got[n++] = asock_event_args_get_info(e, &info);
    got[n++] = asock_event_args_get_accept_endpoints(e, &l, &r);
    got[n++] = asock_accept_async(listener, e, &pending);
    got[n++] = asock_connect_async(tcp, e, &pending);
    got[n++] = asock_send_async(tcp, e, &pending);
    got[n++] = asock_receive_async(tcp, e, &pending);
    got[n++] = asock_send_to_async(udp, e, &pending);
    got[n++] = asock_receive_from_async(udp, e, &pending);
    got[n++] = asock_disconnect_async(tcp, e, &pending);
    got[n++] = asock_event_args_free(e);
    static const char *names[17] = {"set_buffer",   "set_buffer_list", "set_completed", "set_user_token",
                                    "set_accept_socket", "set_remote_endpoint", "set_socket_flags",
                                    "get_info",     "get_accept_endpoints", "accept_async", "connect_async",
                                    "send_async",   "receive_async",   "send_to_async", "receive_from_async",
                                    "disconnect_async", "free"};
    int bad = 0;
    for (int i = 0; i < n; i++) {
        bool ok = false;
        for (int w = 0; w < nwant; w++)
            ok = ok || got[i] == want[w];
        if (!ok) {
            if (bad < 5) {
                harness_fail_begin(__FILE__, __LINE__);
                fprintf(stderr, "%s: asock_%s with args %#" PRIx64 " gave %d %s\n", what, names[i], e.id,
                        (int)got[i], asock_error_name(got[i]));
                harness_fail_end();
            }
            bad++;
        }
    }
    if (!pending) {
        harness_fail_cond(__FILE__, __LINE__, "out_pending written by a failed call");
        bad++;
    }
    return bad;
}

TEST(stale_and_forged_args_handles) {
    asock_socket tcp, listener, udp;
    uint16_t port = 0;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &tcp));
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_DGRAM, 0, &udp));
    listener = listener_on((asock_loop){0}, ASOCK_AF_INET, &port);
    REQUIRE(listener.id != 0);

    /* Stale: freed args. */
    asock_event_args e;
    REQUIRE_OK(asock_event_args_new(&e));
    CHECK_OK(asock_event_args_free(e));
    static const asock_error DISPOSED[] = {ASOCK_E_OBJECT_DISPOSED};
    CHECK_EQ_INT(every_args_function(e, tcp, listener, udp, DISPOSED, 1, "freed"), 0);

    /* A new args object may reuse the slot: the stale id must not reach it. */
    asock_event_args e2;
    REQUIRE_OK(asock_event_args_new(&e2));
    CHECK(e2.id != e.id);
    CHECK_EQ_INT(every_args_function(e, tcp, listener, udp, DISPOSED, 1, "freed, slot reused"), 0);
    asock_event_args_info info;
    CHECK_OK(asock_event_args_get_info(e2, &info));
    CHECK(info.user_token == NULL); /* none of the stale calls reached e2 */

    /* Wrong kind: a socket's id as args, args' id as a socket. */
    static const asock_error FORGED[] = {ASOCK_E_ARGUMENT, ASOCK_E_OBJECT_DISPOSED};
    CHECK_EQ_INT(every_args_function((asock_event_args){tcp.id}, tcp, listener, udp, FORGED, 1, "socket id"), 0);
    bool pending = true;
    CHECK_ERR(asock_receive_async((asock_socket){e2.id}, e2, &pending), ASOCK_E_ARGUMENT);
    CHECK_ERR(asock_accept_async((asock_socket){e2.id}, e2, &pending), ASOCK_E_ARGUMENT);

    /* Neighbours of a live id and random bits. */
    uint64_t seed = 0x243F6A8885A308D3ull;
    int bad = 0;
    for (int i = 0; i < 300; i++) {
        uint64_t id;
        if (i < 8) {
            const uint64_t tweak[8] = {1, 2, 0x100000000ull, 0x0000FF0000000000ull, 0x8000000000000000ull,
                                       0x00000000FFFFFFFFull, 0x0100000000000000ull, 0x00FFFFFF00000000ull};
            id = e2.id ^ tweak[i];
        } else {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            id = seed;
            if (i % 3 == 0)
                id &= 0xFFFFFFFFull;
        }
        if (id == 0 || id == e2.id)
            continue;
        bad += every_args_function((asock_event_args){id}, tcp, listener, udp, FORGED, 2, "forged");
    }
    CHECK_EQ_INT(bad, 0);

    /* NULL out_pending: ArgumentNull from every operation, nothing started. */
    CHECK_ERR(asock_accept_async(listener, e2, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_connect_async(tcp, e2, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_send_async(tcp, e2, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_receive_async(tcp, e2, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_send_to_async(udp, e2, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_receive_from_async(udp, e2, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_disconnect_async(tcp, e2, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_OK(asock_event_args_get_info(e2, &info));
    CHECK_EQ_INT(info.last_operation, ASOCK_OP_NONE);
    /* ... and e2 is not in use: a setter works. */
    CHECK_OK(asock_event_args_set_user_token(e2, &info));

    CHECK_OK(asock_event_args_free(e2));
    CHECK_OK(asock_socket_close(tcp));
    CHECK_OK(asock_socket_close(udp));
    CHECK_OK(asock_socket_close(listener));
}

/* ---- the return value ------------------------------------------------------------ */

TEST(pending_true_runs_completed_once_on_the_loop_thread) {
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
    uint8_t buf[64];
    memset(buf, 0, sizeof buf);
    CHECK_OK(asock_event_args_set_buffer(e, buf, 0, (int32_t)sizeof buf));
    bool pending = false;
    CHECK_OK(asock_receive_async(s, e, &pending));
    CHECK(pending); /* nothing to read yet */
    /* Not before data: a bounded look. */
    harness_sleep_ms(50);
    CHECK_EQ_INT(atomic_get_int(&r.calls), 0);
    asock_event_args_info info;
    CHECK_OK(asock_event_args_get_info(e, &info));
    CHECK_EQ_INT(info.last_operation, ASOCK_OP_RECEIVE);

    CHECK_EQ_INT(send(client, "hello", 5, 0), 5);
    CHECK(wait_atomic_ge(&r.calls, 1, WAIT_MS));
    CHECK(loop_barrier(tl.loop, NULL));
    CHECK(loop_barrier(tl.loop, NULL));
    CHECK_EQ_INT(atomic_get_int(&r.calls), 1);
    CHECK_EQ_INT(atomic_get_int(&r.off_thread), 0);
    CHECK(r.sender.id == s.id);
    CHECK(r.args.id == e.id);
    CHECK(r.token == &r);
    CHECK_OK(r.info_err);
    CHECK_EQ_INT(r.info.last_operation, ASOCK_OP_RECEIVE);
    CHECK_EQ_INT(r.info.socket_error, ASOCK_OK);
    CHECK_EQ_INT(r.info.bytes_transferred, 5);
    CHECK(r.info.user_token == &r);
    CHECK(memcmp(buf, "hello", 5) == 0);
    CHECK_EQ_INT(buf[5], 0);

    CHECK_OK(asock_event_args_free(e));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_socket_close(l));
    close(client);
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(sync_false_no_callback_and_info_at_once) {
    static tloop tl;
    static rec_t rz, rs, rr;
    REQUIRE(tloop_new(&tl));
    uint16_t port = 0;
    asock_socket l = listener_on(tl.loop, ASOCK_AF_INET, &port);
    int client = -1;
    asock_socket s = accept_one(l, ASOCK_AF_INET, port, &client);
    REQUIRE(s.id != 0);

    /* A zero-byte receive (no buffer) is pending until data is there. */
    rec_init(&rz, tl.tid);
    asock_event_args ez = new_args(&rz);
    bool pending = false;
    CHECK_OK(asock_receive_async(s, ez, &pending));
    CHECK(pending);
    CHECK_EQ_INT(send(client, "hello", 5, 0), 5);
    CHECK(wait_atomic_ge(&rz.calls, 1, WAIT_MS));
    CHECK_EQ_INT(rz.info.socket_error, ASOCK_OK);
    CHECK_EQ_INT(rz.info.bytes_transferred, 0);
    CHECK_EQ_INT(atomic_get_int(&rz.off_thread), 0);

    /* The data is there now: a receive finishes inside the call. */
    rec_init(&rr, tl.tid);
    asock_event_args er = new_args(&rr);
    uint8_t buf[32];
    memset(buf, 0, sizeof buf);
    CHECK_OK(asock_event_args_set_buffer(er, buf, 4, 16));
    pending = true;
    CHECK_OK(asock_receive_async(s, er, &pending));
    CHECK(!pending);
    asock_event_args_info info;
    memset(&info, 0xA5, sizeof info);
    CHECK_OK(asock_event_args_get_info(er, &info));
    CHECK_EQ_INT(info.last_operation, ASOCK_OP_RECEIVE);
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);
    CHECK_EQ_INT(info.bytes_transferred, 5);
    CHECK(info.user_token == &rr);
    CHECK(memcmp(buf + 4, "hello", 5) == 0);
    CHECK_EQ_INT(buf[3], 0);

    /* A small send on an idle connection finishes inside the call. */
    rec_init(&rs, tl.tid);
    asock_event_args es = new_args(&rs);
    uint8_t out[6] = "world";
    CHECK_OK(asock_event_args_set_buffer(es, out, 0, 5));
    pending = true;
    CHECK_OK(asock_send_async(s, es, &pending));
    CHECK(!pending);
    memset(&info, 0xA5, sizeof info);
    CHECK_OK(asock_event_args_get_info(es, &info));
    CHECK_EQ_INT(info.last_operation, ASOCK_OP_SEND);
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);
    CHECK_EQ_INT(info.bytes_transferred, 5);
    char got[5];
    CHECK(recv_exact(client, got, 5));
    CHECK(memcmp(got, "world", 5) == 0);

    /* The callbacks never run: everything the loop had queued has run after
     * two barriers (callbacks share the FIFO with posts), and a bounded wait. */
    CHECK(loop_barrier(tl.loop, NULL));
    harness_sleep_ms(50);
    CHECK(loop_barrier(tl.loop, NULL));
    CHECK_EQ_INT(atomic_get_int(&rr.calls), 0);
    CHECK_EQ_INT(atomic_get_int(&rs.calls), 0);
    CHECK_EQ_INT(atomic_get_int(&rz.calls), 1);

    /* Args that finished synchronously are free again at once. */
    CHECK_OK(asock_event_args_set_user_token(er, NULL));
    CHECK_OK(asock_event_args_set_buffer(es, out, 1, 4));

    CHECK_OK(asock_event_args_free(ez));
    CHECK_OK(asock_event_args_free(er));
    CHECK_OK(asock_event_args_free(es));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_socket_close(l));
    close(client);
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- in use ------------------------------------------------------------------------- */

TEST(args_in_use_refuse_setters_and_operations) {
    static tloop tl;
    static rec_t r;
    REQUIRE(tloop_new(&tl));
    uint16_t port = 0;
    asock_socket l = listener_on(tl.loop, ASOCK_AF_INET, &port);
    asock_socket other, udp;
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &other));
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET, ASOCK_SOCK_DGRAM, 0, &udp));
    asock_endpoint udp_ep = lo_ep(ASOCK_AF_INET, 0);
    CHECK_OK(asock_socket_bind(udp, &udp_ep));

    rec_init(&r, tl.tid);
    asock_event_args e = new_args(&r);
    asock_endpoint target = lo_ep(ASOCK_AF_INET, port);
    /* A remote endpoint set beforehand, so connect/send-to/receive-from get
     * past their ArgumentNull check and meet the in-use check. */
    CHECK_OK(asock_event_args_set_remote_endpoint(e, &target));
    bool pending = false;
    CHECK_OK(asock_accept_async(l, e, &pending));
    REQUIRE(pending); /* no client yet */

    uint8_t buf[300];
    asock_buffer list[1] = {{buf, 4}};
    CHECK_ERR(asock_event_args_set_buffer(e, buf, 0, 300), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_event_args_set_buffer(e, NULL, 0, 0), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_event_args_set_buffer_list(e, list, 1), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_event_args_set_buffer_list(e, NULL, 0), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_event_args_set_completed(e, NULL), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_event_args_set_user_token(e, NULL), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_event_args_set_accept_socket(e, other), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_event_args_set_accept_socket(e, (asock_socket){0}), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_event_args_set_remote_endpoint(e, NULL), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_event_args_set_socket_flags(e, ASOCK_SOCKET_FLAG_PEEK), ASOCK_E_INVALID_OPERATION);

    pending = true;
    CHECK_ERR(asock_accept_async(l, e, &pending), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_connect_async(other, e, &pending), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_send_async(other, e, &pending), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_receive_async(other, e, &pending), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_send_to_async(udp, e, &pending), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_receive_from_async(udp, e, &pending), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_disconnect_async(other, e, &pending), ASOCK_E_INVALID_OPERATION);
    CHECK(pending); /* not written by failed calls */

    /* Reading is allowed while in use, and the refused calls changed nothing. */
    asock_event_args_info info;
    CHECK_OK(asock_event_args_get_info(e, &info));
    CHECK_EQ_INT(info.last_operation, ASOCK_OP_ACCEPT);
    CHECK(info.user_token == &r);
    asock_endpoint le, re;
    CHECK_ERR(asock_event_args_get_accept_endpoints(e, &le, &re), ASOCK_E_INVALID_OPERATION);

    /* The pending accept is unharmed: it completes once, with the callback
     * and token set before it started. */
    int client = posix_connect(ASOCK_AF_INET, port);
    CHECK(client >= 0);
    CHECK(wait_atomic_ge(&r.calls, 1, WAIT_MS));
    CHECK(loop_barrier(tl.loop, NULL));
    CHECK_EQ_INT(atomic_get_int(&r.calls), 1);
    CHECK_EQ_INT(atomic_get_int(&r.off_thread), 0);
    CHECK_EQ_INT(r.info.socket_error, ASOCK_OK);
    CHECK_EQ_INT(r.info.last_operation, ASOCK_OP_ACCEPT);
    CHECK(r.info.accept_socket.id != 0);
    if (r.info.accept_socket.id != 0)
        CHECK_OK(asock_socket_close(r.info.accept_socket));

    /* Free again: every setter works. */
    CHECK_OK(asock_event_args_set_buffer(e, buf, 0, 300));
    CHECK_OK(asock_event_args_set_buffer(e, NULL, 0, 0));
    CHECK_OK(asock_event_args_set_buffer_list(e, list, 1));
    CHECK_OK(asock_event_args_set_buffer_list(e, NULL, 0));
    CHECK_OK(asock_event_args_set_completed(e, rec_cb));
    CHECK_OK(asock_event_args_set_user_token(e, &r));
    CHECK_OK(asock_event_args_set_accept_socket(e, other));
    CHECK_OK(asock_event_args_set_accept_socket(e, (asock_socket){0}));
    CHECK_OK(asock_event_args_set_remote_endpoint(e, NULL));
    CHECK_OK(asock_event_args_set_socket_flags(e, ASOCK_SOCKET_FLAG_PEEK));

    if (client >= 0)
        close(client);
    CHECK_OK(asock_event_args_free(e));
    CHECK_OK(asock_socket_close(other));
    CHECK_OK(asock_socket_close(udp));
    CHECK_OK(asock_socket_close(l));
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- reuse inside the callback ------------------------------------------------------- */

#define CHAIN_N 50

static struct {
    asock_socket s;
    asock_event_args e;
    uint8_t buf[8];
    uint8_t got[CHAIN_N];
    atomic_int received;
    atomic_int start_errors;
    atomic_int callbacks;
    atomic_int sync;
    pthread_t loop_tid;
    atomic_int off_thread;
} chain;

/* Handles the result in the args, then starts the next receive; loops while
 * the next one finishes synchronously. */
static void chain_drive(void) {
    for (;;) {
        asock_event_args_info info;
        if (asock_event_args_get_info(chain.e, &info) != ASOCK_OK || info.socket_error != ASOCK_OK ||
            info.bytes_transferred <= 0) {
            atomic_fetch_add(&chain.start_errors, 1);
            return;
        }
        for (int i = 0; i < info.bytes_transferred; i++) {
            int k = atomic_load(&chain.received);
            if (k < CHAIN_N)
                chain.got[k] = chain.buf[i];
            atomic_fetch_add(&chain.received, 1);
        }
        if (atomic_load(&chain.received) >= CHAIN_N)
            return;
        bool pending = false;
        asock_error err = asock_receive_async(chain.s, chain.e, &pending);
        if (err != ASOCK_OK) {
            atomic_fetch_add(&chain.start_errors, 1);
            return;
        }
        if (pending)
            return;
        atomic_fetch_add(&chain.sync, 1);
    }
}

static void chain_cb(asock_socket sender, asock_event_args e, void *token) {
    (void)sender;
    (void)e;
    (void)token;
    if (!pthread_equal(pthread_self(), chain.loop_tid))
        atomic_fetch_add(&chain.off_thread, 1);
    atomic_fetch_add(&chain.callbacks, 1);
    chain_drive();
}

TEST(completed_callback_may_start_the_next_operation_with_the_same_args) {
    static tloop tl;
    REQUIRE(tloop_new(&tl));
    uint16_t port = 0;
    asock_socket l = listener_on(tl.loop, ASOCK_AF_INET, &port);
    int client = -1;
    memset(&chain, 0, sizeof chain);
    chain.loop_tid = tl.tid;
    chain.s = accept_one(l, ASOCK_AF_INET, port, &client);
    REQUIRE(chain.s.id != 0);
    REQUIRE_OK(asock_event_args_new(&chain.e));
    CHECK_OK(asock_event_args_set_completed(chain.e, chain_cb));
    CHECK_OK(asock_event_args_set_buffer(chain.e, chain.buf, 0, (int32_t)sizeof chain.buf));
    bool pending = false;
    CHECK_OK(asock_receive_async(chain.s, chain.e, &pending));
    CHECK(pending);
    for (int i = 0; i < CHAIN_N; i++) {
        uint8_t b = (uint8_t)(i + 1);
        CHECK_EQ_INT(send(client, &b, 1, 0), 1);
        if (!wait_atomic_ge(&chain.received, i + 1, WAIT_MS)) {
            harness_fail_cond(__FILE__, __LINE__, "the chained receive got the byte");
            break;
        }
    }
    CHECK(loop_barrier(tl.loop, NULL));
    CHECK_EQ_INT(atomic_get_int(&chain.received), CHAIN_N);
    CHECK_EQ_INT(atomic_get_int(&chain.start_errors), 0);
    CHECK_EQ_INT(atomic_get_int(&chain.off_thread), 0);
    /* Every byte came through one completion, each either a callback or a
     * synchronous finish inside the previous callback. */
    CHECK_EQ_INT(atomic_get_int(&chain.callbacks) + atomic_get_int(&chain.sync), CHAIN_N);
    for (int i = 0; i < CHAIN_N; i++)
        CHECK_EQ_INT(chain.got[i], i + 1);

    CHECK_OK(asock_event_args_free(chain.e));
    CHECK_OK(asock_socket_close(chain.s));
    CHECK_OK(asock_socket_close(l));
    close(client);
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- deferred free ----------------------------------------------------------------- */

TEST(free_while_pending_is_deferred_until_the_completion) {
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
    CHECK_OK(asock_event_args_set_buffer(e, buf, 0, (int32_t)sizeof buf));
    bool pending = false;
    CHECK_OK(asock_receive_async(s, e, &pending));
    REQUIRE(pending);

    CHECK_OK(asock_event_args_free(e));
    CHECK_ERR(asock_event_args_free(e), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_event_args_set_user_token(e, NULL), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_event_args_set_buffer(e, buf, 0, 4), ASOCK_E_OBJECT_DISPOSED);
    pending = true;
    CHECK_ERR(asock_receive_async(s, e, &pending), ASOCK_E_OBJECT_DISPOSED);
    CHECK(pending);
    asock_event_args_info info;
    CHECK_OK(asock_event_args_get_info(e, &info)); /* readable until it goes */
    CHECK_EQ_INT(info.last_operation, ASOCK_OP_RECEIVE);
    harness_sleep_ms(20);
    CHECK_EQ_INT(atomic_get_int(&r.calls), 0);

    /* The operation still completes, with its callback, once. */
    CHECK_EQ_INT(send(client, "abc", 3, 0), 3);
    CHECK(wait_atomic_ge(&r.calls, 1, WAIT_MS));
    CHECK(loop_barrier(tl.loop, NULL));
    CHECK_EQ_INT(atomic_get_int(&r.calls), 1);
    CHECK_EQ_INT(atomic_get_int(&r.off_thread), 0);
    CHECK_OK(r.info_err); /* the callback could read its results */
    CHECK_EQ_INT(r.info.bytes_transferred, 3);
    CHECK_EQ_INT(r.info.socket_error, ASOCK_OK);
    CHECK(memcmp(buf, "abc", 3) == 0);
    /* Then the handle is gone. */
    CHECK_ERR(asock_event_args_get_info(e, &info), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_event_args_free(e), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_receive_async(s, e, &pending), ASOCK_E_OBJECT_DISPOSED);

    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_socket_close(l));
    close(client);
    CHECK_OK(asock_loop_free(tl.loop));
}

/* Blocks a loop's thread until released: lets a test queue callbacks behind it. */
typedef struct {
    atomic_int entered, release;
} gate_t;

static void gate_fn(void *p) {
    gate_t *g = p;
    atomic_store(&g->entered, 1);
    int64_t deadline = now_ms() + 10000; /* never hold the loop forever */
    while (!atomic_load(&g->release) && now_ms() < deadline)
        harness_sleep_ms(1);
}

TEST(free_after_completion_but_before_the_callback_is_still_deferred) {
    /* The operation has completed (a close aborted it) but its callback is
     * still queued behind a busy loop when the args are freed: the callback
     * must still run and read its results ("the free waits for it: the
     * operation still completes (its callback runs), then the args go";
     * get_info "works on args whose free is pending, so a Completed callback
     * can read them"). */
    static tloop tl;
    static rec_t r;
    static gate_t gate;
    REQUIRE(tloop_new(&tl));
    uint16_t port = 0;
    asock_socket l = listener_on(tl.loop, ASOCK_AF_INET, &port);
    int client = -1;
    asock_socket s = accept_one(l, ASOCK_AF_INET, port, &client);
    REQUIRE(s.id != 0);
    rec_init(&r, tl.tid);
    asock_event_args e = new_args(&r);
    uint8_t buf[16];
    CHECK_OK(asock_event_args_set_buffer(e, buf, 0, 16));
    bool pending = false;
    CHECK_OK(asock_receive_async(s, e, &pending));
    REQUIRE(pending);

    memset(&gate, 0, sizeof gate);
    CHECK_OK(asock_loop_post(tl.loop, gate_fn, &gate));
    CHECK(wait_atomic_eq(&gate.entered, 1, WAIT_MS));
    CHECK_OK(asock_socket_close(s)); /* completes the receive; its callback queues behind the gate */
    CHECK_OK(asock_event_args_free(e));
    CHECK_EQ_INT(atomic_get_int(&r.calls), 0);
    atomic_store(&gate.release, 1);
    CHECK(wait_atomic_ge(&r.calls, 1, WAIT_MS));
    CHECK(loop_barrier(tl.loop, NULL));
    CHECK_EQ_INT(atomic_get_int(&r.calls), 1);
    CHECK(r.args.id == e.id);
    CHECK_OK(r.info_err); /* the callback could read its results */
    CHECK_EQ_INT(r.info.socket_error, ASOCK_OPERATION_ABORTED);
    asock_event_args_info info;
    CHECK_ERR(asock_event_args_get_info(e, &info), ASOCK_E_OBJECT_DISPOSED);

    CHECK_OK(asock_socket_close(l));
    close(client);
    CHECK_OK(asock_loop_free(tl.loop));
}

/* A callback that frees its own args (a common pattern for one-shot args). */
static atomic_int self_free_calls, self_free_result;
static void self_free_cb(asock_socket sender, asock_event_args e, void *token) {
    (void)sender;
    (void)token;
    atomic_store(&self_free_result, asock_event_args_free(e));
    atomic_fetch_add(&self_free_calls, 1);
}

TEST(free_while_pending_then_close_aborts_once_and_callback_may_free) {
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
    CHECK_OK(asock_event_args_set_buffer(e, buf, 0, (int32_t)sizeof buf));
    bool pending = false;
    CHECK_OK(asock_receive_async(s, e, &pending));
    REQUIRE(pending);
    CHECK_OK(asock_event_args_free(e));
    CHECK_OK(asock_socket_close(s));
    CHECK(wait_atomic_ge(&r.calls, 1, WAIT_MS));
    CHECK(loop_barrier(tl.loop, NULL));
    CHECK_EQ_INT(atomic_get_int(&r.calls), 1);
    CHECK_EQ_INT(r.info.socket_error, ASOCK_OPERATION_ABORTED);
    CHECK_EQ_INT(atomic_get_int(&r.off_thread), 0);
    asock_event_args_info info;
    CHECK_ERR(asock_event_args_get_info(e, &info), ASOCK_E_OBJECT_DISPOSED);
    close(client);

    /* A callback freeing its own (idle by then) args: freed at once. */
    int client2 = -1;
    asock_socket s2 = accept_one(l, ASOCK_AF_INET, port, &client2);
    REQUIRE(s2.id != 0);
    atomic_store(&self_free_calls, 0);
    atomic_store(&self_free_result, 12345);
    asock_event_args e2;
    REQUIRE_OK(asock_event_args_new(&e2));
    CHECK_OK(asock_event_args_set_completed(e2, self_free_cb));
    CHECK_OK(asock_event_args_set_buffer(e2, buf, 0, (int32_t)sizeof buf));
    CHECK_OK(asock_receive_async(s2, e2, &pending));
    REQUIRE(pending);
    CHECK_EQ_INT(send(client2, "z", 1, 0), 1);
    CHECK(wait_atomic_ge(&self_free_calls, 1, WAIT_MS));
    CHECK(loop_barrier(tl.loop, NULL));
    CHECK_EQ_INT(atomic_get_int(&self_free_calls), 1);
    CHECK_EQ_INT(atomic_get_int(&self_free_result), ASOCK_OK);
    CHECK_ERR(asock_event_args_get_info(e2, &info), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_event_args_free(e2), ASOCK_E_OBJECT_DISPOSED);

    CHECK_OK(asock_socket_close(s2));
    close(client2);
    CHECK_OK(asock_socket_close(l));
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- close and loop free with operations pending ------------------------------------ */

#define NSOCK 4

TEST(close_with_operations_pending_aborts_each_exactly_once) {
    static tloop tl;
    static rec_t rr[NSOCK], ra;
    REQUIRE(tloop_new(&tl));
    uint16_t port = 0;
    asock_socket l = listener_on(tl.loop, ASOCK_AF_INET, &port);
    asock_socket s[NSOCK];
    int client[NSOCK];
    asock_event_args e[NSOCK];
    uint8_t buf[NSOCK][16];
    for (int i = 0; i < NSOCK; i++) {
        s[i] = accept_one(l, ASOCK_AF_INET, port, &client[i]);
        REQUIRE(s[i].id != 0);
    }
    for (int i = 0; i < NSOCK; i++) {
        rec_init(&rr[i], tl.tid);
        e[i] = new_args(&rr[i]);
        CHECK_OK(asock_event_args_set_buffer(e[i], buf[i], 0, 16));
        bool pending = false;
        CHECK_OK(asock_receive_async(s[i], e[i], &pending));
        CHECK(pending);
    }
    rec_init(&ra, tl.tid);
    asock_event_args ea = new_args(&ra);
    bool pending = false;
    CHECK_OK(asock_accept_async(l, ea, &pending));
    CHECK(pending);

    for (int i = 0; i < NSOCK; i++)
        CHECK_OK(asock_socket_close(s[i]));
    CHECK_OK(asock_socket_close(l));
    for (int i = 0; i < NSOCK; i++)
        CHECK(wait_atomic_ge(&rr[i].calls, 1, WAIT_MS));
    CHECK(wait_atomic_ge(&ra.calls, 1, WAIT_MS));
    CHECK(loop_barrier(tl.loop, NULL));
    harness_sleep_ms(20);
    CHECK(loop_barrier(tl.loop, NULL));
    for (int i = 0; i < NSOCK; i++) {
        CHECK_EQ_INT(atomic_get_int(&rr[i].calls), 1);
        CHECK_EQ_INT(atomic_get_int(&rr[i].off_thread), 0);
        CHECK_EQ_INT(rr[i].info.socket_error, ASOCK_OPERATION_ABORTED);
        CHECK_EQ_INT(rr[i].info.last_operation, ASOCK_OP_RECEIVE);
        CHECK_EQ_INT(rr[i].info.bytes_transferred, 0);
        CHECK(rr[i].sender.id == s[i].id);
        /* The peer sees the connection end. */
        char c;
        CHECK_EQ_INT(recv(client[i], &c, 1, 0), 0);
        close(client[i]);
        CHECK_OK(asock_event_args_free(e[i]));
    }
    CHECK_EQ_INT(atomic_get_int(&ra.calls), 1);
    CHECK_EQ_INT(atomic_get_int(&ra.off_thread), 0);
    CHECK_EQ_INT(ra.info.socket_error, ASOCK_OPERATION_ABORTED);
    CHECK_EQ_INT(ra.info.last_operation, ASOCK_OP_ACCEPT);
    CHECK(ra.info.accept_socket.id == 0);
    CHECK(ra.sender.id == l.id);
    CHECK_OK(asock_event_args_free(ea));
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(loop_free_with_operations_pending_aborts_each_exactly_once) {
    static tloop tl;
    static rec_t rr, ra;
    REQUIRE(tloop_new(&tl));
    uint16_t port = 0;
    asock_socket l = listener_on(tl.loop, ASOCK_AF_INET6, &port);
    int client = -1;
    asock_socket s = accept_one(l, ASOCK_AF_INET6, port, &client);
    REQUIRE(s.id != 0);
    rec_init(&rr, tl.tid);
    rec_init(&ra, tl.tid);
    asock_event_args er = new_args(&rr), ea = new_args(&ra);
    uint8_t buf[16];
    CHECK_OK(asock_event_args_set_buffer(er, buf, 0, 16));
    bool pending = false;
    CHECK_OK(asock_receive_async(s, er, &pending));
    CHECK(pending);
    CHECK_OK(asock_accept_async(l, ea, &pending));
    CHECK(pending);

    CHECK_OK(asock_loop_free(tl.loop));
    CHECK(wait_atomic_ge(&rr.calls, 1, WAIT_MS));
    CHECK(wait_atomic_ge(&ra.calls, 1, WAIT_MS));
    harness_sleep_ms(50);
    CHECK_EQ_INT(atomic_get_int(&rr.calls), 1);
    CHECK_EQ_INT(atomic_get_int(&ra.calls), 1);
    CHECK_EQ_INT(rr.info.socket_error, ASOCK_OPERATION_ABORTED);
    CHECK_EQ_INT(ra.info.socket_error, ASOCK_OPERATION_ABORTED);
    CHECK(ra.info.accept_socket.id == 0);
    /* The args are free again and the sockets' handles close once. */
    CHECK_OK(asock_event_args_set_user_token(er, NULL));
    CHECK_OK(asock_socket_close(s));
    CHECK_ERR(asock_socket_close(s), ASOCK_E_OBJECT_DISPOSED);
    CHECK_OK(asock_socket_close(l));
    pending = true;
    CHECK_ERR(asock_receive_async(s, er, &pending), ASOCK_E_OBJECT_DISPOSED);
    CHECK(pending);
    CHECK_OK(asock_event_args_free(er));
    CHECK_OK(asock_event_args_free(ea));
    close(client);
}

/* ---- user token, callback changes, last_operation -------------------------------------- */

static atomic_int other_cb_calls;
static void other_cb(asock_socket sender, asock_event_args e, void *token) {
    (void)sender;
    (void)e;
    (void)token;
    atomic_fetch_add(&other_cb_calls, 1);
}

TEST(user_token_and_callback_are_those_set_when_the_operation_started) {
    static tloop tl;
    static rec_t r1, r2;
    REQUIRE(tloop_new(&tl));
    uint16_t port = 0;
    asock_socket l = listener_on(tl.loop, ASOCK_AF_INET, &port);
    int client = -1;
    asock_socket s = accept_one(l, ASOCK_AF_INET, port, &client);
    REQUIRE(s.id != 0);
    rec_init(&r1, tl.tid);
    rec_init(&r2, tl.tid);
    asock_event_args e = new_args(&r1);
    uint8_t buf[8];
    CHECK_OK(asock_event_args_set_buffer(e, buf, 0, 8));
    bool pending = false;
    CHECK_OK(asock_receive_async(s, e, &pending));
    CHECK(pending);
    CHECK_EQ_INT(send(client, "1", 1, 0), 1);
    CHECK(wait_atomic_ge(&r1.calls, 1, WAIT_MS));
    CHECK(r1.info.user_token == &r1);

    /* A new token: the next callback gets it. */
    CHECK_OK(asock_event_args_set_user_token(e, &r2));
    CHECK_OK(asock_receive_async(s, e, &pending));
    CHECK(pending);
    CHECK_EQ_INT(send(client, "2", 1, 0), 1);
    CHECK(wait_atomic_ge(&r2.calls, 1, WAIT_MS));
    CHECK(r2.token == &r2);
    CHECK(r2.info.user_token == &r2);
    CHECK_EQ_INT(atomic_get_int(&r1.calls), 1);

    /* Another callback, then none at all: the operation completes silently. */
    atomic_store(&other_cb_calls, 0);
    CHECK_OK(asock_event_args_set_completed(e, other_cb));
    CHECK_OK(asock_receive_async(s, e, &pending));
    CHECK(pending);
    CHECK_EQ_INT(send(client, "3", 1, 0), 1);
    CHECK(wait_atomic_ge(&other_cb_calls, 1, WAIT_MS));
    CHECK_OK(asock_event_args_set_completed(e, NULL));
    CHECK_OK(asock_receive_async(s, e, &pending));
    CHECK(pending);
    CHECK_EQ_INT(send(client, "4", 1, 0), 1);
    /* No callback to wait on: wait until the args are free again. */
    int64_t deadline = now_ms() + WAIT_MS;
    while (asock_event_args_set_user_token(e, NULL) == ASOCK_E_INVALID_OPERATION && now_ms() < deadline)
        harness_sleep_ms(1);
    asock_event_args_info info;
    CHECK_OK(asock_event_args_get_info(e, &info));
    CHECK_EQ_INT(info.bytes_transferred, 1);
    CHECK_EQ_INT(buf[0], '4');
    CHECK(info.user_token == NULL);
    CHECK(loop_barrier(tl.loop, NULL));
    CHECK_EQ_INT(atomic_get_int(&r1.calls), 1);
    CHECK_EQ_INT(atomic_get_int(&r2.calls), 1);
    CHECK_EQ_INT(atomic_get_int(&other_cb_calls), 1);

    CHECK_OK(asock_event_args_free(e));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_socket_close(l));
    close(client);
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(socket_flags_values) {
    asock_event_args e;
    REQUIRE_OK(asock_event_args_new(&e));
    CHECK_OK(asock_event_args_set_socket_flags(e, ASOCK_SOCKET_FLAG_NONE));
    CHECK_OK(asock_event_args_set_socket_flags(e, ASOCK_SOCKET_FLAG_PEEK));
    CHECK_OK(asock_event_args_set_socket_flags(e, ASOCK_SOCKET_FLAG_OUT_OF_BAND));
    CHECK_OK(asock_event_args_set_socket_flags(e, ASOCK_SOCKET_FLAG_DONT_ROUTE));
    CHECK_OK(asock_event_args_set_socket_flags(
        e, ASOCK_SOCKET_FLAG_PEEK | ASOCK_SOCKET_FLAG_OUT_OF_BAND | ASOCK_SOCKET_FLAG_DONT_ROUTE));
    const int32_t bad[] = {8, 0x10, 0x100, 0x8000, 0x40000000, -1, INT_MIN, ASOCK_SOCKET_FLAG_PEEK | 8};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK_ERR(asock_event_args_set_socket_flags(e, bad[i]), ASOCK_E_ARGUMENT);
    CHECK_OK(asock_event_args_free(e));
}

int main(void) {
    RUN(new_args_defaults_and_none_handle);
    RUN(stale_and_forged_args_handles);
    RUN(pending_true_runs_completed_once_on_the_loop_thread);
    RUN(sync_false_no_callback_and_info_at_once);
    RUN(args_in_use_refuse_setters_and_operations);
    RUN(completed_callback_may_start_the_next_operation_with_the_same_args);
    RUN(free_while_pending_is_deferred_until_the_completion);
    RUN(free_while_pending_then_close_aborts_once_and_callback_may_free);
    RUN(free_after_completion_but_before_the_callback_is_still_deferred);
    RUN(close_with_operations_pending_aborts_each_exactly_once);
    RUN(loop_free_with_operations_pending_aborts_each_exactly_once);
    RUN(user_token_and_callback_are_those_set_when_the_operation_started);
    RUN(socket_flags_values);
    return harness_finish();
}
