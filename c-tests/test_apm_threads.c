/*
 * test_apm_threads.c — section 3 and 5, where APM meets threads: End
 * before completion blocks (on another thread) or refuses with
 * InvalidOperation (on the loop's own thread, never a deadlock); callbacks
 * run after Begin returns, on the loop thread, exactly once, and may End
 * and Begin again without recursion or stack growth; several pending
 * operations complete in Begin order; CompletedSynchronously, IsCompleted,
 * AsyncState and wait; Begin/End from several threads at once.
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

static bool pred_rec_called(void *ctx) { return atomic_load(&((op_rec *)ctx)->calls) >= 1; }

/* ---- End before completion, from another thread: blocks until done ------- */

struct end_job {
    asock_async_result ar;
    int kind; /* 0 receive, 1 accept */
    int32_t n;
    asock_error ec;
    asock_socket accepted;
    atomic_bool done;
};

static void *end_job_main(void *arg) {
    struct end_job *j = arg;
    if (j->kind == 0)
        j->n = asock_end_receive(j->ar, &j->ec);
    else
        j->ec = asock_end_accept(j->ar, &j->accepted);
    atomic_store(&j->done, true);
    return NULL;
}

TEST(end_before_completion_blocks_on_another_thread_until_done) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c, s;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET, &c, &s));
    uint8_t buf[32];
    struct end_job j;
    memset(&j, 0, sizeof j);
    atomic_init(&j.done, false);
    j.ec = -7;
    REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, NULL, NULL, &j.ar));
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, end_job_main, &j) == 0);
    /* It is still blocked a while later (nothing was sent). */
    CHECK(!wait_bool(&j.done, 150));
    CHECK(send_all(c, "seven!!", 7));
    bool finished = wait_bool(&j.done, wait_ms());
    CHECK(finished);
    if (!finished)
        asock_socket_close(s); /* unblocks End; the checks below fail */
    pthread_join(th, NULL);
    CHECK_EQ_INT(j.n, 7);
    CHECK_ERR(j.ec, ASOCK_OK);
    CHECK(memcmp(buf, "seven!!", 7) == 0);

    /* The same for an accept: End returns when a connection comes. */
    asock_socket lst, cl;
    asock_endpoint el;
    REQUIRE(listener_new(tl.loop, ASOCK_AF_INET6, 4, &lst, &el));
    struct end_job k;
    memset(&k, 0, sizeof k);
    atomic_init(&k.done, false);
    k.kind = 1;
    k.accepted = SENTINEL_SOCKET;
    REQUIRE_OK(asock_begin_accept(lst, NULL, NULL, &k.ar));
    REQUIRE(pthread_create(&th, NULL, end_job_main, &k) == 0);
    CHECK(!wait_bool(&k.done, 150));
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET6, ASOCK_SOCK_STREAM, 0, &cl));
    asock_async_result ac;
    REQUIRE_OK(asock_begin_connect(cl, &el, NULL, NULL, &ac));
    finished = wait_bool(&k.done, wait_ms());
    CHECK(finished);
    if (!finished)
        asock_socket_close(lst);
    pthread_join(th, NULL);
    CHECK_ERR(k.ec, ASOCK_OK);
    REQUIRE(ar_done(ac, wait_ms()));
    CHECK_OK(asock_end_connect(ac));
    if (k.ec == ASOCK_OK) {
        CHECK(send_all(k.accepted, "ok", 2));
        uint8_t got[2];
        CHECK(recv_exact(cl, got, 2));
        CHECK_OK(asock_socket_close(k.accepted));
    }
    CHECK_OK(asock_socket_close(cl));
    CHECK_OK(asock_socket_close(lst));
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- ... and on the loop's own thread: InvalidOperation, no deadlock ------ */

struct on_loop_job {
    asock_async_result recv_ar, accept_ar;
    int32_t n;
    asock_error ec, wait0, waitinf, accept_ec, wait_on_done;
    bool completed, wait_out, is_completed;
    bool ran_on_loop;
    pthread_t loop_thread;
    atomic_bool done;
};

static void on_loop_fn(void *arg) {
    struct on_loop_job *j = arg;
    j->ran_on_loop = pthread_equal(pthread_self(), j->loop_thread);
    j->is_completed = asock_async_result_is_completed(j->recv_ar);
    j->n = asock_end_receive(j->recv_ar, &j->ec);
    j->wait_out = true;
    j->wait0 = asock_async_result_wait(j->recv_ar, 0, &j->wait_out);
    j->waitinf = asock_async_result_wait(j->recv_ar, -1, &j->completed);
    asock_socket acc = SENTINEL_SOCKET;
    j->accept_ec = asock_end_accept(j->accept_ar, &acc);
    atomic_store(&j->done, true);
}

/* A callback of another socket on the same loop tries to End. */
static void other_socket_cb(asock_async_result ar, void *state) {
    struct on_loop_job *j = state;
    asock_end_send_to(ar, NULL);
    j->is_completed = asock_async_result_is_completed(j->recv_ar);
    j->n = asock_end_receive(j->recv_ar, &j->ec);
    j->wait0 = asock_async_result_wait(j->recv_ar, 5, &j->wait_out);
    atomic_store(&j->done, true);
}

TEST(end_on_the_loop_thread_before_completion_is_invalid_operation) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c, s, lst;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET, &c, &s));
    asock_endpoint el;
    REQUIRE(listener_new(tl.loop, ASOCK_AF_INET, 4, &lst, &el));
    uint8_t buf[16];
    struct on_loop_job j;
    memset(&j, 0, sizeof j);
    atomic_init(&j.done, false);
    j.loop_thread = tl.thread;
    REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, NULL, NULL, &j.recv_ar));
    REQUIRE_OK(asock_begin_accept(lst, NULL, NULL, &j.accept_ar));
    /* From a posted function. */
    REQUIRE_OK(asock_loop_post(tl.loop, on_loop_fn, &j));
    REQUIRE(wait_bool(&j.done, wait_ms()));
    CHECK(j.ran_on_loop);
    CHECK(!j.is_completed);
    CHECK_EQ_INT(j.n, -1);
    CHECK_ERR(j.ec, ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(j.wait0, ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(j.waitinf, ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(j.accept_ec, ASOCK_E_INVALID_OPERATION);
    /* From the callback of another socket on the same loop. */
    asock_socket u;
    asock_endpoint eu;
    REQUIRE(udp_new(tl.loop, ASOCK_AF_INET, &u, &eu));
    atomic_store(&j.done, false);
    j.n = 0;
    j.ec = 0;
    j.wait0 = 0;
    asock_async_result st;
    REQUIRE_OK(asock_begin_send_to(u, (const uint8_t *)"x", 1, 0, &eu, other_socket_cb, &j, &st));
    REQUIRE(wait_bool(&j.done, wait_ms()));
    CHECK(!j.is_completed);
    CHECK_EQ_INT(j.n, -1);
    CHECK_ERR(j.ec, ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(j.wait0, ASOCK_E_INVALID_OPERATION);
    /* Both operations can still be ended later. */
    CHECK(send_all(c, "later", 5));
    REQUIRE(ar_done(j.recv_ar, wait_ms()));
    asock_error ec = -7;
    CHECK_EQ_INT(asock_end_receive(j.recv_ar, &ec), 5);
    CHECK_ERR(ec, ASOCK_OK);
    asock_socket cl;
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &cl));
    asock_async_result ac;
    REQUIRE_OK(asock_begin_connect(cl, &el, NULL, NULL, &ac));
    REQUIRE(ar_done(j.accept_ar, wait_ms()));
    asock_socket acc = SENTINEL_SOCKET;
    CHECK_OK(asock_end_accept(j.accept_ar, &acc));
    REQUIRE(ar_done(ac, wait_ms()));
    CHECK_OK(asock_end_connect(ac));
    if (acc.id != SENTINEL_SOCKET.id)
        CHECK_OK(asock_socket_close(acc));
    CHECK_OK(asock_socket_close(cl));
    CHECK_OK(asock_socket_close(u));
    CHECK_OK(asock_socket_close(lst));
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(tl.loop));
}

/* On the thread of ANOTHER loop, End may block: only the loop that must
 * complete the operation is refused. */
struct cross_job {
    asock_async_result ar;
    int32_t n;
    asock_error ec;
    atomic_bool done;
};

static void cross_end_fn(void *arg) {
    struct cross_job *j = arg;
    j->n = asock_end_receive(j->ar, &j->ec);
    atomic_store(&j->done, true);
}

TEST(end_on_another_loops_thread_blocks_until_done) {
    test_loop ta, tb;
    REQUIRE(test_loop_start(&ta));
    REQUIRE(test_loop_start(&tb));
    asock_socket c, s;
    REQUIRE(tcp_pair(ta.loop, ta.loop, ASOCK_AF_INET, &c, &s));
    uint8_t buf[8];
    struct cross_job j;
    memset(&j, 0, sizeof j);
    atomic_init(&j.done, false);
    REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, NULL, NULL, &j.ar));
    REQUIRE_OK(asock_loop_post(tb.loop, cross_end_fn, &j));
    CHECK(!wait_bool(&j.done, 150));
    CHECK(send_all(c, "abc", 3));
    bool finished = wait_bool(&j.done, wait_ms());
    CHECK(finished);
    if (!finished)
        asock_socket_close(s);
    CHECK_EQ_INT(j.n, 3);
    CHECK_ERR(j.ec, ASOCK_OK);
    CHECK_OK(asock_socket_close(c));
    if (finished)
        CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(ta.loop));
    CHECK_OK(asock_loop_free(tb.loop));
}

/* ---- callbacks: after Begin returns, on the loop thread, exactly once ----- */

TEST(callbacks_run_on_the_loop_thread_exactly_once_for_every_kind) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    enum { SEND, RECEIVE, SEND_TO, RECEIVE_FROM, CONNECT, ACCEPT, CONNECT_HOST, NOPS };
    op_rec r[NOPS];
    op_rec_init(r, NOPS);
    asock_async_result ar[NOPS];
    asock_socket lst, cl, ch, srv, a, b;
    asock_endpoint el, ea, eb;
    REQUIRE(listener_new(tl.loop, ASOCK_AF_INET, 8, &lst, &el));
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &cl));
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &ch));
    REQUIRE_OK(asock_begin_accept(lst, rec_cb, &r[ACCEPT], &ar[ACCEPT]));
    REQUIRE_OK(asock_begin_connect(cl, &el, rec_cb, &r[CONNECT], &ar[CONNECT]));
    REQUIRE(ar_done(ar[ACCEPT], wait_ms()));
    CHECK_OK(asock_end_accept(ar[ACCEPT], &srv));
    REQUIRE(ar_done(ar[CONNECT], wait_ms()));
    CHECK_OK(asock_end_connect(ar[CONNECT]));
    REQUIRE_OK(asock_begin_connect_host(ch, "127.0.0.1", el.port, rec_cb, &r[CONNECT_HOST], &ar[CONNECT_HOST]));
    uint8_t rb[8], ub[8];
    REQUIRE_OK(asock_begin_receive(srv, rb, sizeof rb, 0, rec_cb, &r[RECEIVE], &ar[RECEIVE]));
    REQUIRE_OK(asock_begin_send(cl, (const uint8_t *)"hey", 3, 0, rec_cb, &r[SEND], &ar[SEND]));
    REQUIRE(udp_new(tl.loop, ASOCK_AF_INET6, &a, &ea));
    REQUIRE(udp_new(tl.loop, ASOCK_AF_INET6, &b, &eb));
    REQUIRE_OK(asock_begin_receive_from(b, ub, sizeof ub, 0, rec_cb, &r[RECEIVE_FROM], &ar[RECEIVE_FROM]));
    REQUIRE_OK(asock_begin_send_to(a, (const uint8_t *)"dg", 2, 0, &eb, rec_cb, &r[SEND_TO], &ar[SEND_TO]));
    for (int i = 0; i < NOPS; i++)
        CHECK(wait_until(pred_rec_called, &r[i], wait_ms()));
    CHECK(loop_flush(tl.loop));
    pthread_t me = pthread_self();
    for (int i = 0; i < NOPS; i++) {
        CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
        CHECK(pthread_equal(r[i].thread, tl.thread));
        CHECK(!pthread_equal(r[i].thread, me));
        /* The callback got this operation's handle and state, completed. */
        CHECK(r[i].ar.id == ar[i].id);
        CHECK(r[i].state_in_cb == &r[i] || (i == CONNECT || i == ACCEPT)); /* ended before it ran */
        if (i != CONNECT && i != ACCEPT)
            CHECK(r[i].completed_in_cb);
    }
    CHECK_EQ_INT(asock_end_send(ar[SEND], NULL), 3);
    CHECK_EQ_INT(asock_end_receive(ar[RECEIVE], NULL), 3);
    CHECK_EQ_INT(asock_end_send_to(ar[SEND_TO], NULL), 2);
    asock_endpoint from;
    CHECK_EQ_INT(asock_end_receive_from(ar[RECEIVE_FROM], &from, NULL), 2);
    CHECK_OK(asock_end_connect(ar[CONNECT_HOST]));
    /* The one connection from connect_host waits in the backlog: fine. */
    CHECK_OK(asock_socket_close(srv));
    CHECK_OK(asock_socket_close(cl));
    CHECK_OK(asock_socket_close(ch));
    CHECK_OK(asock_socket_close(lst));
    CHECK_OK(asock_socket_close(a));
    CHECK_OK(asock_socket_close(b));
    CHECK_OK(asock_loop_free(tl.loop));
}

/* With a loop the test runs itself, a callback could only ever run inside
 * Begin (a bug) or inside run_once: `in_begin` tells which. */
struct manual {
    atomic_int calls;
    atomic_int inside_begin;
    bool in_begin;
};

static void manual_cb(asock_async_result ar, void *state) {
    (void)ar;
    struct manual *m = state;
    if (m->in_begin)
        atomic_fetch_add(&m->inside_begin, 1);
    atomic_fetch_add(&m->calls, 1);
}

struct manual_target {
    struct manual *m;
    int n;
};

static bool pred_manual(void *ctx) {
    struct manual_target *t = ctx;
    return atomic_load(&t->m->calls) >= t->n;
}

TEST(callbacks_never_run_inside_begin_even_when_it_completes_synchronously) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l)); /* run by this thread only */
    struct manual m;
    memset(&m, 0, sizeof m);
    atomic_init(&m.calls, 0);
    atomic_init(&m.inside_begin, 0);
    asock_socket lst, c, s, u;
    asock_endpoint el, eu;
    REQUIRE(listener_new(l, ASOCK_AF_INET, 4, &lst, &el));
    REQUIRE_OK(asock_socket_new(l, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &c));
    asock_async_result aa, ac;
    m.in_begin = true;
    REQUIRE_OK(asock_begin_accept(lst, manual_cb, &m, &aa));
    REQUIRE_OK(asock_begin_connect(c, &el, manual_cb, &m, &ac));
    m.in_begin = false;
    struct manual_target t = {&m, 2};
    REQUIRE(run_loop_until(l, pred_manual, &t, wait_ms()));
    CHECK_OK(asock_end_connect(ac));
    REQUIRE_OK(asock_end_accept(aa, &s));
    /* A small send and a datagram finish inside Begin; their callbacks
     * still wait for the loop. */
    REQUIRE(udp_new(l, ASOCK_AF_INET, &u, &eu));
    asock_async_result as, at;
    m.in_begin = true;
    REQUIRE_OK(asock_begin_send(c, (const uint8_t *)"sync", 4, 0, manual_cb, &m, &as));
    REQUIRE_OK(asock_begin_send_to(u, (const uint8_t *)"sync", 4, 0, &eu, manual_cb, &m, &at));
    m.in_begin = false;
    CHECK(asock_async_result_is_completed(as));
    CHECK(asock_async_result_completed_synchronously(as));
    CHECK(asock_async_result_completed_synchronously(at));
    CHECK_EQ_INT(atomic_load(&m.calls), 2); /* not yet */
    /* End may be called before the callback ran: it completed. */
    CHECK_EQ_INT(asock_end_send(as, NULL), 4);
    t.n = 4;
    CHECK(run_loop_until(l, pred_manual, &t, wait_ms()));
    /* A receive whose data is already there. */
    uint8_t buf[8];
    asock_async_result zr, rr;
    m.in_begin = true;
    REQUIRE_OK(asock_begin_receive(s, NULL, 0, 0, manual_cb, &m, &zr)); /* wait for the data */
    m.in_begin = false;
    t.n = 5;
    CHECK(run_loop_until(l, pred_manual, &t, wait_ms()));
    CHECK_EQ_INT(asock_end_receive(zr, NULL), 0);
    m.in_begin = true;
    REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, manual_cb, &m, &rr));
    m.in_begin = false;
    t.n = 6;
    CHECK(run_loop_until(l, pred_manual, &t, wait_ms()));
    CHECK_EQ_INT(asock_end_receive(rr, NULL), 4);
    CHECK_EQ_INT(asock_end_send_to(at, NULL), 4);
    /* Operations that fail inside Begin: a send after shutdown(SEND), a
     * connect to a closed port. */
    CHECK_OK(asock_socket_shutdown(c, ASOCK_SHUTDOWN_SEND));
    asock_socket gone, cr;
    asock_endpoint eg;
    REQUIRE(listener_new(l, ASOCK_AF_INET, 1, &gone, &eg));
    CHECK_OK(asock_socket_close(gone));
    REQUIRE_OK(asock_socket_new(l, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &cr));
    asock_async_result fs, fc;
    m.in_begin = true;
    REQUIRE_OK(asock_begin_send(c, (const uint8_t *)"no", 2, 0, manual_cb, &m, &fs));
    REQUIRE_OK(asock_begin_connect(cr, &eg, manual_cb, &m, &fc));
    m.in_begin = false;
    t.n = 8;
    CHECK(run_loop_until(l, pred_manual, &t, wait_ms()));
    asock_error ec = 0;
    CHECK_EQ_INT(asock_end_send(fs, &ec), -1);
    CHECK_ERR(ec, ASOCK_SHUTDOWN);
    CHECK_ERR(asock_end_connect(fc), ASOCK_CONNECTION_REFUSED);
    CHECK_OK(asock_socket_close(cr));
    /* Let any stray duplicate show up. */
    for (int i = 0; i < 5; i++)
        asock_loop_run_once(l, 0, NULL);
    CHECK_EQ_INT(atomic_load(&m.calls), 8);
    CHECK_EQ_INT(atomic_load(&m.inside_begin), 0);
    CHECK_OK(asock_socket_close(u));
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_socket_close(lst));
    CHECK_OK(asock_loop_free(l));
}

/* ---- a callback may End and Begin again: long chains, flat stack ---------- */

static uint8_t byte_values[256];

struct chain {
    asock_socket a, b;
    int target;
    int count; /* loop thread only */
    uint8_t abuf[1], bbuf[1];
    uintptr_t sp_min, sp_max;
    int depth, max_depth;
    pthread_t loop_thread;
    atomic_int errors;
    atomic_int wrong_thread;
    atomic_int callbacks;
    atomic_bool done;
    atomic_bool b_eof;
};

static void chain_enter(struct chain *ch, void *local) {
    uintptr_t sp = (uintptr_t)local;
    if (ch->sp_min == 0 || sp < ch->sp_min)
        ch->sp_min = sp;
    if (sp > ch->sp_max)
        ch->sp_max = sp;
    if (++ch->depth > ch->max_depth)
        ch->max_depth = ch->depth;
    if (!pthread_equal(pthread_self(), ch->loop_thread))
        atomic_fetch_add(&ch->wrong_thread, 1);
    atomic_fetch_add(&ch->callbacks, 1);
}

static void chain_send_cb(asock_async_result ar, void *state) {
    struct chain *ch = state;
    volatile int local = 0;
    chain_enter(ch, (void *)&local);
    asock_error ec = -7;
    if (asock_end_send(ar, &ec) != 1 || ec != ASOCK_OK)
        atomic_fetch_add(&ch->errors, 1);
    ch->depth--;
}

static void chain_b_recv_cb(asock_async_result ar, void *state) {
    struct chain *ch = state;
    volatile int local = 0;
    chain_enter(ch, (void *)&local);
    asock_error ec = -7;
    int32_t n = asock_end_receive(ar, &ec);
    asock_async_result next;
    if (n == 1 && ec == ASOCK_OK) {
        /* Echo from constant memory: the receive buffer is lent again. */
        if (asock_begin_send(ch->b, &byte_values[ch->bbuf[0]], 1, 0, chain_send_cb, ch, &next) != ASOCK_OK)
            atomic_fetch_add(&ch->errors, 1);
        if (asock_begin_receive(ch->b, ch->bbuf, 1, 0, chain_b_recv_cb, ch, &next) != ASOCK_OK)
            atomic_fetch_add(&ch->errors, 1);
    } else if (n == 0 && ec == ASOCK_OK) {
        atomic_store(&ch->b_eof, true);
    } else {
        atomic_fetch_add(&ch->errors, 1);
    }
    ch->depth--;
}

static void chain_a_recv_cb(asock_async_result ar, void *state) {
    struct chain *ch = state;
    volatile int local = 0;
    chain_enter(ch, (void *)&local);
    asock_error ec = -7;
    int32_t n = asock_end_receive(ar, &ec);
    if (n != 1 || ec != ASOCK_OK || ch->abuf[0] != (uint8_t)ch->count) {
        atomic_fetch_add(&ch->errors, 1);
        atomic_store(&ch->done, true);
        ch->depth--;
        return;
    }
    ch->count++;
    if (ch->count == ch->target) {
        atomic_store(&ch->done, true);
    } else {
        asock_async_result next;
        if (asock_begin_receive(ch->a, ch->abuf, 1, 0, chain_a_recv_cb, ch, &next) != ASOCK_OK ||
            asock_begin_send(ch->a, &byte_values[(uint8_t)ch->count], 1, 0, chain_send_cb, ch, &next) != ASOCK_OK)
            atomic_fetch_add(&ch->errors, 1);
    }
    ch->depth--;
}

TEST(callbacks_chain_end_and_begin_20000_exchanges_without_stack_growth) {
    for (int i = 0; i < 256; i++)
        byte_values[i] = (uint8_t)i;
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    struct chain *ch = calloc(1, sizeof *ch);
    REQUIRE(ch != NULL);
    atomic_init(&ch->errors, 0);
    atomic_init(&ch->wrong_thread, 0);
    atomic_init(&ch->callbacks, 0);
    atomic_init(&ch->done, false);
    atomic_init(&ch->b_eof, false);
    ch->target = scaled(20000, 2000);
    ch->loop_thread = tl.thread;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET, &ch->a, &ch->b));
    CHECK_OK(asock_socket_set_option(ch->a, ASOCK_OPT_NO_DELAY, 1));
    CHECK_OK(asock_socket_set_option(ch->b, ASOCK_OPT_NO_DELAY, 1));
    asock_async_result x;
    REQUIRE_OK(asock_begin_receive(ch->b, ch->bbuf, 1, 0, chain_b_recv_cb, ch, &x));
    REQUIRE_OK(asock_begin_receive(ch->a, ch->abuf, 1, 0, chain_a_recv_cb, ch, &x));
    REQUIRE_OK(asock_begin_send(ch->a, &byte_values[0], 1, 0, chain_send_cb, ch, &x));
    int64_t t0 = now_ms();
    bool done = wait_bool(&ch->done, scaled(60000, 240000));
    CHECK(done);
    int64_t dt = now_ms() - t0;
    /* B's pending receive gets 0 when A shuts down its side. */
    CHECK_OK(asock_socket_shutdown(ch->a, ASOCK_SHUTDOWN_SEND));
    CHECK(wait_bool(&ch->b_eof, wait_ms()));
    CHECK(loop_flush(tl.loop));
    CHECK_EQ_INT(ch->count, ch->target);
    CHECK_EQ_INT(atomic_load(&ch->errors), 0);
    CHECK_EQ_INT(atomic_load(&ch->wrong_thread), 0);
    /* 4 callbacks per exchange (two sends, two receives), plus B's last. */
    CHECK_EQ_INT(atomic_load(&ch->callbacks), 4 * ch->target + 1);
    CHECK_EQ_INT(ch->max_depth, 1);
    uintptr_t spread = ch->sp_max - ch->sp_min;
    CHECK(spread < 64 * 1024);
    printf("    %d exchanges in %" PRId64 " ms, callback stack spread %zu bytes\n", ch->count, dt, (size_t)spread);
    CHECK_OK(asock_socket_close(ch->a));
    CHECK_OK(asock_socket_close(ch->b));
    CHECK_OK(asock_loop_free(tl.loop));
    free(ch);
}

/* ---- several pending operations complete in Begin order ------------------- */

TEST(pending_receives_complete_in_begin_order) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c, s;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET6, &c, &s));
    enum { N = 100 };
    op_rec r[N];
    op_rec_init(r, N);
    uint8_t got[N];
    memset(got, 0xEE, sizeof got);
    asock_async_result ar[N];
    for (int i = 0; i < N; i++)
        REQUIRE_OK(asock_begin_receive(s, &got[i], 1, 0, rec_cb, &r[i], &ar[i]));
    for (int i = 0; i < N; i++)
        CHECK(!asock_async_result_is_completed(ar[i]));
    uint8_t data[N];
    for (int i = 0; i < N; i++)
        data[i] = (uint8_t)i;
    CHECK(send_all(c, data, N));
    for (int i = 0; i < N; i++)
        CHECK(wait_until(pred_rec_called, &r[i], wait_ms()));
    CHECK(loop_flush(tl.loop));
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
        CHECK_EQ_INT(got[i], i);
        if (i > 0)
            CHECK(r[i].order > r[i - 1].order);
        asock_error ec = -7;
        CHECK_EQ_INT(asock_end_receive(ar[i], &ec), 1);
        CHECK_ERR(ec, ASOCK_OK);
    }
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(tl.loop));
}

struct px_reader {
    int fd;
    uint8_t *buf;
    size_t want;
    bool ok;
    bool eof;
    atomic_bool go;
    atomic_bool done;
};

static void *px_reader_main(void *arg) {
    struct px_reader *p = arg;
    while (!atomic_load(&p->go))
        harness_sleep_ms(1);
    p->ok = px_read_exact(p->fd, p->buf, p->want);
    uint8_t extra;
    p->eof = p->ok && recv(p->fd, &extra, 1, 0) == 0;
    atomic_store(&p->done, true);
    return NULL;
}

TEST(pending_sends_complete_in_begin_order) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c;
    int peer;
    REQUIRE(px_pair(tl.loop, ASOCK_AF_INET, 16384, 16384, &c, &peer));
    enum { N = 100, BLOCK = 64 * 1024 };
    size_t total = (size_t)N * BLOCK;
    uint8_t *out = malloc(total), *in = malloc(total);
    REQUIRE(out != NULL && in != NULL);
    fill_pattern(out, total, 0);
    op_rec r[N];
    op_rec_init(r, N);
    asock_async_result ar[N];
    for (int i = 0; i < N; i++)
        REQUIRE_OK(asock_begin_send(c, out + (size_t)i * BLOCK, BLOCK, 0, rec_cb, &r[i], &ar[i]));
    /* The peer has not read: the last ones are still queued. */
    CHECK(!asock_async_result_is_completed(ar[N - 1]));
    struct px_reader rd = {peer, in, total, false, false, false, false};
    atomic_init(&rd.go, true);
    atomic_init(&rd.done, false);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, px_reader_main, &rd) == 0);
    for (int i = 0; i < N; i++)
        CHECK(wait_until(pred_rec_called, &r[i], wait_ms()));
    CHECK_OK(asock_socket_shutdown(c, ASOCK_SHUTDOWN_SEND));
    CHECK(wait_bool(&rd.done, wait_ms()));
    pthread_join(th, NULL);
    CHECK(rd.ok);
    CHECK(rd.eof);
    CHECK(memcmp(in, out, total) == 0);
    CHECK(loop_flush(tl.loop));
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
        if (i > 0)
            CHECK(r[i].order > r[i - 1].order);
        asock_error ec = -7;
        CHECK_EQ_INT(asock_end_send(ar[i], &ec), BLOCK);
        CHECK_ERR(ec, ASOCK_OK);
    }
    free(out);
    free(in);
    close(peer);
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- CompletedSynchronously, IsCompleted, AsyncState, wait ---------------- */

TEST(completed_synchronously_for_an_immediate_send_not_for_a_waiting_receive) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c, s;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET, &c, &s));
    op_rec r[3];
    op_rec_init(r, 3);
    uint8_t buf[8];
    asock_async_result rr, sr, zr;
    REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, rec_cb, &r[0], &rr));
    CHECK(!asock_async_result_is_completed(rr));
    CHECK(!asock_async_result_completed_synchronously(rr));
    REQUIRE_OK(asock_begin_send(c, (const uint8_t *)"small", 5, 0, rec_cb, &r[1], &sr));
    CHECK(asock_async_result_is_completed(sr));
    CHECK(asock_async_result_completed_synchronously(sr));
    CHECK(asock_async_result_state(sr) == &r[1]);
    CHECK(wait_until(pred_rec_called, &r[0], wait_ms()));
    CHECK(wait_until(pred_rec_called, &r[1], wait_ms()));
    CHECK(asock_async_result_is_completed(rr));
    CHECK(!asock_async_result_completed_synchronously(rr));
    CHECK(asock_async_result_state(rr) == &r[0]);
    CHECK(pthread_equal(r[0].thread, tl.thread));
    CHECK(pthread_equal(r[1].thread, tl.thread));
    CHECK_EQ_INT(asock_end_send(sr, NULL), 5);
    CHECK_EQ_INT(asock_end_receive(rr, NULL), 5);
    /* A zero-length receive whose data is already there finishes inside Begin. */
    CHECK(send_all(c, "more", 4));
    asock_async_result w;
    REQUIRE_OK(asock_begin_receive(s, NULL, 0, 0, NULL, NULL, &w)); /* waits for it */
    REQUIRE(ar_done(w, wait_ms()));
    CHECK_EQ_INT(asock_end_receive(w, NULL), 0);
    REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, rec_cb, &r[2], &zr));
    CHECK(asock_async_result_completed_synchronously(zr));
    CHECK(wait_until(pred_rec_called, &r[2], wait_ms()));
    CHECK_EQ_INT(asock_end_receive(zr, NULL), 4);
    CHECK(loop_flush(tl.loop));
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(tl.loop));
}

struct waiter {
    asock_async_result ar;
    int32_t timeout;
    asock_error e;
    bool completed;
    atomic_bool done;
};

static void *waiter_main(void *arg) {
    struct waiter *w = arg;
    w->e = asock_async_result_wait(w->ar, w->timeout, &w->completed);
    atomic_store(&w->done, true);
    return NULL;
}

struct wait_in_cb {
    asock_error e;
    bool completed;
    atomic_int calls;
};

static void wait_in_cb_fn(asock_async_result ar, void *state) {
    struct wait_in_cb *w = state;
    w->e = asock_async_result_wait(ar, -1, &w->completed); /* completed: no refusal */
    asock_end_receive(ar, NULL);
    atomic_fetch_add(&w->calls, 1);
}

TEST(wait_and_is_completed_as_documented) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c, s;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET, &c, &s));
    uint8_t buf[8];
    int marker;
    asock_async_result ar;
    REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, NULL, &marker, &ar));
    CHECK(asock_async_result_state(ar) == &marker);
    CHECK(!asock_async_result_is_completed(ar));
    bool completed = true;
    CHECK_OK(asock_async_result_wait(ar, 0, &completed));
    CHECK(!completed);
    completed = true;
    int64_t t0 = now_ms();
    CHECK_OK(asock_async_result_wait(ar, 60, &completed));
    CHECK(!completed);
    CHECK(now_ms() - t0 >= 50);
    completed = true;
    CHECK_ERR(asock_async_result_wait(ar, -2, &completed), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_async_result_wait(ar, INT32_MIN, &completed), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK(completed); /* not written */
    CHECK_ERR(asock_async_result_wait(ar, 0, NULL), ASOCK_E_ARGUMENT_NULL);
    /* wait -1 on another thread returns true once it completes. */
    struct waiter w;
    memset(&w, 0, sizeof w);
    w.ar = ar;
    w.timeout = -1;
    atomic_init(&w.done, false);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, waiter_main, &w) == 0);
    CHECK(!wait_bool(&w.done, 100));
    CHECK(send_all(c, "done", 4));
    bool finished = wait_bool(&w.done, wait_ms());
    CHECK(finished);
    if (!finished)
        asock_socket_close(s);
    pthread_join(th, NULL);
    CHECK_OK(w.e);
    CHECK(w.completed);
    CHECK(asock_async_result_is_completed(ar));
    completed = false;
    CHECK_OK(asock_async_result_wait(ar, 0, &completed));
    CHECK(completed);
    /* wait did not end it. */
    CHECK(asock_async_result_state(ar) == &marker);
    CHECK_EQ_INT(asock_end_receive(ar, NULL), 4);
    /* On the loop thread, waiting for a completed operation is fine. */
    struct wait_in_cb wc;
    memset(&wc, 0, sizeof wc);
    wc.e = -7;
    atomic_init(&wc.calls, 0);
    REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, wait_in_cb_fn, &wc, &ar));
    CHECK(send_all(c, "x", 1));
    CHECK(wait_atomic_ge(&wc.calls, 1, wait_ms()));
    CHECK_OK(wc.e);
    CHECK(wc.completed);
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(tl.loop));
}

/* The callback and another thread both End the same result: exactly one
 * gets the count, the other InvalidOperation. */
struct race {
    atomic_int wins, invalid, other, calls;
};

static void race_cb(asock_async_result ar, void *state) {
    struct race *r = state;
    asock_error ec = -7;
    int32_t n = asock_end_receive(ar, &ec);
    if (n == 1 && ec == ASOCK_OK)
        atomic_fetch_add(&r->wins, 1);
    else if (n == -1 && ec == ASOCK_E_INVALID_OPERATION)
        atomic_fetch_add(&r->invalid, 1);
    else
        atomic_fetch_add(&r->other, 1);
    atomic_fetch_add(&r->calls, 1);
}

TEST(end_racing_the_callbacks_end_exactly_one_wins) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c, s;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET, &c, &s));
    struct race r;
    atomic_init(&r.wins, 0);
    atomic_init(&r.invalid, 0);
    atomic_init(&r.other, 0);
    atomic_init(&r.calls, 0);
    const int rounds = scaled(300, 50);
    uint8_t buf[1];
    for (int i = 0; i < rounds; i++) {
        asock_async_result ar;
        REQUIRE_OK(asock_begin_receive(s, buf, 1, 0, race_cb, &r, &ar));
        REQUIRE(send_all(c, "r", 1));
        asock_error ec = -7;
        int32_t n = asock_end_receive(ar, &ec); /* blocks until done, then races the callback */
        if (n == 1 && ec == ASOCK_OK)
            atomic_fetch_add(&r.wins, 1);
        else if (n == -1 && ec == ASOCK_E_INVALID_OPERATION)
            atomic_fetch_add(&r.invalid, 1);
        else
            atomic_fetch_add(&r.other, 1);
        REQUIRE(wait_atomic_ge(&r.calls, i + 1, wait_ms()));
    }
    CHECK(loop_flush(tl.loop));
    CHECK_EQ_INT(atomic_load(&r.calls), rounds);
    CHECK_EQ_INT(atomic_load(&r.wins), rounds);
    CHECK_EQ_INT(atomic_load(&r.invalid), rounds);
    CHECK_EQ_INT(atomic_load(&r.other), 0);
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- Begin/End from several threads at once --------------------------------- */

/* Records of REC_SIZE bytes: a header {sender, seq, check, ~seq}, then
 * bytes derived from it. Big enough, with small socket buffers, that sends
 * also go partial and complete on the loop thread while others Begin. */
enum { REC_SIZE = 1024 };
#define REC_MAGIC 0xA5C3E1F0u

static uint8_t rec_byte(uint32_t id, uint32_t seq, size_t k) { return (uint8_t)(id * 31u + seq * 7u + (uint32_t)k); }

struct sender {
    asock_socket s;
    uint32_t id;
    int count;
    int bad_ends;
    uint8_t rec[REC_SIZE]; /* one record in flight at a time */
};

static void *sender_main(void *arg) {
    struct sender *sd = arg;
    for (int i = 0; i < sd->count; i++) {
        uint32_t f[4] = {sd->id, (uint32_t)i, REC_MAGIC ^ sd->id ^ (uint32_t)i, ~(uint32_t)i};
        memcpy(sd->rec, f, sizeof f);
        for (size_t k = sizeof f; k < REC_SIZE; k++)
            sd->rec[k] = rec_byte(sd->id, (uint32_t)i, k);
        asock_async_result ar;
        if (asock_begin_send(sd->s, sd->rec, REC_SIZE, 0, NULL, NULL, &ar) != ASOCK_OK) {
            sd->bad_ends++;
            continue;
        }
        if (!ar_done(ar, wait_ms())) {
            sd->bad_ends++;
            break; /* the buffer is still lent: stop here */
        }
        asock_error ec = -7;
        if (asock_end_send(ar, &ec) != REC_SIZE || ec != ASOCK_OK)
            sd->bad_ends++;
    }
    return NULL;
}

/* Checks a stream of records: every sender's records whole, in sequence. */
static void check_records(const uint8_t *buf, size_t len, int nsenders, int per_sender, const uint32_t *ids) {
    CHECK_EQ_INT(len, (size_t)nsenders * per_sender * REC_SIZE);
    int next[16] = {0};
    int bad = 0;
    for (size_t off = 0; off + REC_SIZE <= len; off += REC_SIZE) {
        uint32_t f[4];
        memcpy(f, buf + off, sizeof f);
        int k = -1;
        for (int i = 0; i < nsenders; i++)
            if (ids[i] == f[0])
                k = i;
        bool whole = k >= 0 && f[1] == (uint32_t)next[k] && f[2] == (REC_MAGIC ^ f[0] ^ f[1]) && f[3] == ~f[1];
        for (size_t b = sizeof f; whole && b < REC_SIZE; b++)
            whole = buf[off + b] == rec_byte(f[0], f[1], b);
        if (!whole) {
            bad++;
            continue;
        }
        next[k]++;
    }
    CHECK_EQ_INT(bad, 0);
    for (int i = 0; i < nsenders; i++)
        CHECK_EQ_INT(next[i], per_sender);
}

TEST(four_threads_begin_and_end_sends_on_one_socket) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c;
    int peer;
    REQUIRE(px_pair(tl.loop, ASOCK_AF_INET, 8192, 8192, &c, &peer));
    enum { T = 4 };
    const int per = scaled(2000, 300);
    size_t total = (size_t)T * per * REC_SIZE;
    uint8_t *in = malloc(total);
    REQUIRE(in != NULL);
    struct px_reader rd = {peer, in, total, false, false, false, false};
    atomic_init(&rd.go, true);
    atomic_init(&rd.done, false);
    pthread_t reader;
    REQUIRE(pthread_create(&reader, NULL, px_reader_main, &rd) == 0);
    struct sender sd[T];
    pthread_t th[T];
    uint32_t ids[T];
    for (int i = 0; i < T; i++) {
        memset(&sd[i], 0, sizeof sd[i]);
        sd[i].s = c;
        sd[i].id = ids[i] = 0x1000u + (uint32_t)i;
        sd[i].count = per;
        REQUIRE(pthread_create(&th[i], NULL, sender_main, &sd[i]) == 0);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(sd[i].bad_ends, 0);
    }
    CHECK_OK(asock_socket_shutdown(c, ASOCK_SHUTDOWN_SEND));
    CHECK(wait_bool(&rd.done, wait_ms()));
    pthread_join(reader, NULL);
    CHECK(rd.ok);
    CHECK(rd.eof); /* exactly the bytes sent, nothing more */
    if (rd.ok)
        check_records(in, total, T, per, ids);
    free(in);
    close(peer);
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_loop_free(tl.loop));
}

TEST(four_threads_begin_and_end_sends_on_four_sockets) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    enum { T = 4 };
    const int per = scaled(2000, 300);
    size_t total = (size_t)per * REC_SIZE;
    asock_socket c[T];
    int peer[T];
    struct px_reader rd[T];
    pthread_t readers[T], th[T];
    struct sender sd[T];
    uint8_t *in[T];
    for (int i = 0; i < T; i++) {
        REQUIRE(px_pair(i % 2 ? (asock_loop){0} : tl.loop, i < 2 ? ASOCK_AF_INET : ASOCK_AF_INET6, 8192, 8192,
                        &c[i], &peer[i]));
        in[i] = malloc(total);
        REQUIRE(in[i] != NULL);
        struct px_reader init = {peer[i], in[i], total, false, false, false, false};
        rd[i] = init;
        atomic_init(&rd[i].go, true);
        atomic_init(&rd[i].done, false);
        REQUIRE(pthread_create(&readers[i], NULL, px_reader_main, &rd[i]) == 0);
    }
    for (int i = 0; i < T; i++) {
        memset(&sd[i], 0, sizeof sd[i]);
        sd[i].s = c[i];
        sd[i].id = 0x2000u + (uint32_t)i;
        sd[i].count = per;
        REQUIRE(pthread_create(&th[i], NULL, sender_main, &sd[i]) == 0);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        CHECK_EQ_INT(sd[i].bad_ends, 0);
        CHECK_OK(asock_socket_shutdown(c[i], ASOCK_SHUTDOWN_SEND));
    }
    for (int i = 0; i < T; i++) {
        CHECK(wait_bool(&rd[i].done, wait_ms()));
        pthread_join(readers[i], NULL);
        CHECK(rd[i].ok);
        CHECK(rd[i].eof);
        if (rd[i].ok)
            check_records(in[i], total, 1, per, &sd[i].id);
        free(in[i]);
        close(peer[i]);
        CHECK_OK(asock_socket_close(c[i]));
    }
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- many connections on several loops at once ----------------------------------- */

enum { MSG = 64 };

/* Echo side: receive, send it back, receive again. */
struct echo {
    asock_socket s;
    uint8_t buf[MSG * 4];
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
        if (asock_begin_send(e->s, e->buf, (size_t)n, 0, echo_send_cb, e, &next) != ASOCK_OK)
            atomic_fetch_add(&e->errors, 1);
    } else {
        if (n != 0 || ec != ASOCK_OK)
            atomic_fetch_add(&e->errors, 1);
        atomic_store(&e->eof, true);
    }
}

/* Pinging side: send a message, collect its echo (in pieces if need be),
 * check it, send the next. */
struct pinger {
    asock_socket s;
    int target, count;
    uint8_t out[2][MSG]; /* alternate: a buffer stays lent until its send's callback */
    uint8_t in[MSG];
    size_t got;
    pthread_t loop_thread;
    atomic_int errors;
    atomic_int sends_done;
    atomic_bool done;
};

static void pinger_send_cb(asock_async_result ar, void *state) {
    struct pinger *p = state;
    asock_error ec = -7;
    if (asock_end_send(ar, &ec) != MSG || ec != ASOCK_OK)
        atomic_fetch_add(&p->errors, 1);
    if (!pthread_equal(pthread_self(), p->loop_thread))
        atomic_fetch_add(&p->errors, 1);
    atomic_fetch_add(&p->sends_done, 1);
}

static void pinger_recv_cb(asock_async_result ar, void *state);

static bool pinger_next(struct pinger *p) {
    uint8_t *o = p->out[p->count & 1];
    for (int k = 0; k < MSG; k++)
        o[k] = (uint8_t)(p->count * 13 + k);
    p->got = 0;
    asock_async_result x;
    return asock_begin_receive(p->s, p->in, MSG, 0, pinger_recv_cb, p, &x) == ASOCK_OK &&
           asock_begin_send(p->s, o, MSG, 0, pinger_send_cb, p, &x) == ASOCK_OK;
}

static void pinger_recv_cb(asock_async_result ar, void *state) {
    struct pinger *p = state;
    asock_error ec = -7;
    int32_t n = asock_end_receive(ar, &ec);
    asock_async_result x;
    if (n <= 0 || ec != ASOCK_OK || !pthread_equal(pthread_self(), p->loop_thread)) {
        atomic_fetch_add(&p->errors, 1);
        atomic_store(&p->done, true);
        return;
    }
    p->got += (size_t)n;
    if (p->got < MSG) {
        if (asock_begin_receive(p->s, p->in + p->got, MSG - p->got, 0, pinger_recv_cb, p, &x) != ASOCK_OK)
            atomic_fetch_add(&p->errors, 1);
        return;
    }
    if (memcmp(p->in, p->out[p->count & 1], MSG) != 0)
        atomic_fetch_add(&p->errors, 1);
    p->count++;
    if (p->count == p->target)
        atomic_store(&p->done, true);
    else if (!pinger_next(p))
        atomic_fetch_add(&p->errors, 1);
}

TEST(many_connections_on_several_loops_exchange_at_once) {
    enum { LOOPS = 4, PER_LOOP = 8, N = LOOPS * PER_LOOP };
    const int rounds = scaled(300, 40);
    test_loop tl[LOOPS];
    for (int i = 0; i < LOOPS; i++)
        REQUIRE(test_loop_start(&tl[i]));
    struct pinger *p = calloc(N, sizeof *p);
    struct echo *e = calloc(N, sizeof *e);
    REQUIRE(p != NULL && e != NULL);
    for (int i = 0; i < N; i++) {
        int li = i % LOOPS;
        /* client on one loop, accepted side on the next */
        REQUIRE(tcp_pair(tl[li].loop, tl[(li + 1) % LOOPS].loop, i % 3 ? ASOCK_AF_INET : ASOCK_AF_INET6, &p[i].s,
                         &e[i].s));
        p[i].target = rounds;
        p[i].loop_thread = tl[li].thread;
        atomic_init(&p[i].errors, 0);
        atomic_init(&p[i].sends_done, 0);
        atomic_init(&p[i].done, false);
        atomic_init(&e[i].errors, 0);
        atomic_init(&e[i].eof, false);
    }
    for (int i = 0; i < N; i++) {
        asock_async_result x;
        REQUIRE_OK(asock_begin_receive(e[i].s, e[i].buf, sizeof e[i].buf, 0, echo_recv_cb, &e[i], &x));
    }
    /* Start every pinger (Begin from this thread; the rest runs in callbacks). */
    for (int i = 0; i < N; i++)
        REQUIRE(pinger_next(&p[i]));
    int64_t t0 = now_ms();
    for (int i = 0; i < N; i++)
        CHECK(wait_bool(&p[i].done, scaled(60000, 240000)));
    int64_t dt = now_ms() - t0;
    for (int i = 0; i < N; i++) {
        CHECK_OK(asock_socket_shutdown(p[i].s, ASOCK_SHUTDOWN_SEND));
        CHECK(wait_bool(&e[i].eof, wait_ms()));
        CHECK(wait_atomic_ge(&p[i].sends_done, rounds, wait_ms()));
    }
    for (int i = 0; i < LOOPS; i++)
        CHECK(loop_flush(tl[i].loop));
    int errors = 0, short_runs = 0;
    for (int i = 0; i < N; i++) {
        errors += atomic_load(&p[i].errors) + atomic_load(&e[i].errors);
        if (p[i].count != rounds || atomic_load(&p[i].sends_done) != rounds)
            short_runs++;
    }
    CHECK_EQ_INT(errors, 0);
    CHECK_EQ_INT(short_runs, 0);
    printf("    %d connections x %d exchanges on %d loops in %" PRId64 " ms\n", N, rounds, LOOPS, dt);
    for (int i = 0; i < N; i++) {
        CHECK_OK(asock_socket_close(p[i].s));
        CHECK_OK(asock_socket_close(e[i].s));
    }
    for (int i = 0; i < LOOPS; i++)
        CHECK_OK(asock_loop_free(tl[i].loop));
    free(p);
    free(e);
}

int main(void) {
    signal(SIGPIPE, SIG_DFL);
    RUN(end_before_completion_blocks_on_another_thread_until_done);
    RUN(end_on_the_loop_thread_before_completion_is_invalid_operation);
    RUN(end_on_another_loops_thread_blocks_until_done);
    RUN(callbacks_run_on_the_loop_thread_exactly_once_for_every_kind);
    RUN(callbacks_never_run_inside_begin_even_when_it_completes_synchronously);
    RUN(callbacks_chain_end_and_begin_20000_exchanges_without_stack_growth);
    RUN(pending_receives_complete_in_begin_order);
    RUN(pending_sends_complete_in_begin_order);
    RUN(completed_synchronously_for_an_immediate_send_not_for_a_waiting_receive);
    RUN(wait_and_is_completed_as_documented);
    RUN(end_racing_the_callbacks_end_exactly_one_wins);
    RUN(four_threads_begin_and_end_sends_on_one_socket);
    RUN(four_threads_begin_and_end_sends_on_four_sockets);
    RUN(many_connections_on_several_loops_exchange_at_once);
    return harness_finish();
}
