/*
 * test_apm_lifecycle.c — sections 3 and 5, the end of things: closing a
 * socket (or freeing its loop) with many operations pending completes each
 * exactly once, End then gives ObjectDisposed, nothing leaks, and a new
 * socket that gets the same descriptor number sees no stale completion;
 * close from inside a callback; close racing completions; End blocked on
 * another thread when the loop is freed; the default loop's thread.
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

/* Waits until every record has been called at least once. */
static bool all_called(op_rec *r, size_t n) {
    int64_t deadline = now_ms() + wait_ms();
    for (size_t i = 0; i < n; i++) {
        int left = (int)(deadline - now_ms());
        if (!wait_until(pred_rec_called, &r[i], left > 0 ? left : 0))
            return false;
    }
    return true;
}

/* The set of this process's open descriptors below FD_MAX. */
enum { FD_MAX = 4096 };

static void fd_snapshot(uint8_t *open_fds) {
    memset(open_fds, 0, FD_MAX);
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return;
    int self = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (e->d_name[0] != '.' && fd >= 0 && fd < FD_MAX && fd != self)
            open_fds[fd] = 1;
    }
    closedir(d);
}

/* The one descriptor open in `after` but not in `before`, else -1. */
static int fd_new(const uint8_t *before, const uint8_t *after) {
    int found = -1;
    for (int fd = 0; fd < FD_MAX; fd++)
        if (after[fd] && !before[fd]) {
            if (found >= 0)
                return -1;
            found = fd;
        }
    return found;
}

/* asock_socket_new, and the descriptor it opened (-1 if unknown). */
static int socket_new_fd(asock_loop l, int32_t fam, asock_socket *out) {
    static uint8_t before[FD_MAX], after[FD_MAX];
    fd_snapshot(before);
    asock_error e = asock_socket_new(l, fam, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, out);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_socket_new", e, ASOCK_OK);
        return -2;
    }
    fd_snapshot(after);
    return fd_new(before, after);
}

static bool connect_to(asock_socket s, int32_t fam, uint16_t port) {
    asock_endpoint ep = lo_ep(fam, port);
    asock_async_result ar;
    asock_error e = asock_begin_connect(s, &ep, NULL, NULL, &ar);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_begin_connect", e, ASOCK_OK);
        return false;
    }
    if (!ar_done(ar, wait_ms()))
        harness_fail_cond(__FILE__, __LINE__, "connect_to: the connect completes");
    e = asock_end_connect(ar);
    if (e != ASOCK_OK)
        harness_fail_code(__FILE__, __LINE__, "asock_end_connect", e, ASOCK_OK);
    return e == ASOCK_OK;
}

/* ---- close with many operations pending -------------------------------------- */

TEST(close_with_many_pending_operations_completes_each_once_and_the_fd_reuser_sees_nothing) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    uint16_t port;
    int lfd = px_listen(ASOCK_AF_INET, 16, 16384, &port);
    REQUIRE(lfd >= 0);
    asock_socket s;
    int fd_s = socket_new_fd(tl.loop, ASOCK_AF_INET, &s);
    REQUIRE(fd_s != -2);
    CHECK(fd_s >= 0);
    CHECK_OK(asock_socket_set_option(s, ASOCK_OPT_SEND_BUFFER_SIZE, 16384));
    REQUIRE(connect_to(s, ASOCK_AF_INET, port));
    int peer = px_accept(lfd, wait_ms()); /* never reads, never sends */
    REQUIRE(peer >= 0);

    const int NR = 500, NS = scaled(3000, 1000), N = NR + NS;
    op_rec *r = calloc((size_t)N, sizeof *r);
    asock_async_result *ar = calloc((size_t)N, sizeof *ar);
    uint8_t *rbufs = calloc((size_t)NR, 8);
    static uint8_t chunk[16384];
    REQUIRE(r != NULL && ar != NULL && rbufs != NULL);
    op_rec_init(r, (size_t)N);
    for (int i = 0; i < NR; i++)
        REQUIRE_OK(asock_begin_receive(s, rbufs + 8 * i, 8, 0, rec_cb, &r[i], &ar[i]));
    for (int i = NR; i < N; i++)
        REQUIRE_OK(asock_begin_send(s, chunk, sizeof chunk, 0, rec_cb, &r[i], &ar[i]));
    CHECK(!asock_async_result_is_completed(ar[N - 1])); /* the premise: sends back up */
    CHECK_OK(asock_socket_close(s));
    CHECK(all_called(r, (size_t)N));
    CHECK(loop_flush(tl.loop));
    int bad_calls = 0, bad_thread = 0, bad_end = 0;
    for (int i = 0; i < N; i++) {
        if (atomic_load(&r[i].calls) != 1)
            bad_calls++;
        if (!pthread_equal(r[i].thread, tl.thread))
            bad_thread++;
        /* Closed, not yet ended: the result is still there. */
        if (!asock_async_result_is_completed(ar[i]) || asock_async_result_state(ar[i]) != &r[i])
            bad_end++;
        asock_error ec = 0;
        int32_t n = i < NR ? asock_end_receive(ar[i], &ec) : asock_end_send(ar[i], &ec);
        if (n != -1 || ec != ASOCK_E_OBJECT_DISPOSED)
            bad_end++;
    }
    CHECK_EQ_INT(bad_calls, 0);
    CHECK_EQ_INT(bad_thread, 0);
    CHECK_EQ_INT(bad_end, 0);

    /* A new socket right away gets the freed descriptor number ... */
    asock_socket t;
    int fd_t = socket_new_fd(tl.loop, ASOCK_AF_INET, &t);
    REQUIRE(fd_t != -2);
    CHECK_EQ_INT(fd_t, fd_s);
    /* ... and only its own completions. */
    REQUIRE(connect_to(t, ASOCK_AF_INET, port));
    int peer_t = px_accept(lfd, wait_ms());
    REQUIRE(peer_t >= 0);
    op_rec rt[2];
    op_rec_init(rt, 2);
    uint8_t got[8];
    asock_async_result art[2];
    REQUIRE_OK(asock_begin_receive(t, got, sizeof got, 0, rec_cb, &rt[0], &art[0]));
    REQUIRE_OK(asock_begin_send(t, (const uint8_t *)"fresh", 5, 0, rec_cb, &rt[1], &art[1]));
    CHECK(px_write_all(peer_t, "new!", 4));
    close(peer); /* the old connection's end: nothing may reach t */
    REQUIRE(ar_done(art[0], wait_ms()));
    CHECK_EQ_INT(asock_end_receive(art[0], NULL), 4);
    CHECK(memcmp(got, "new!", 4) == 0);
    REQUIRE(ar_done(art[1], wait_ms()));
    CHECK_EQ_INT(asock_end_send(art[1], NULL), 5);
    uint8_t fresh[5];
    CHECK(px_read_exact(peer_t, fresh, 5));
    CHECK(all_called(rt, 2));
    CHECK(loop_flush(tl.loop));
    CHECK_EQ_INT(atomic_load(&rt[0].calls), 1);
    CHECK_EQ_INT(atomic_load(&rt[1].calls), 1);
    bad_calls = 0;
    for (int i = 0; i < N; i++)
        if (atomic_load(&r[i].calls) != 1)
            bad_calls++;
    CHECK_EQ_INT(bad_calls, 0);
    CHECK_OK(asock_socket_close(t));
    close(peer_t);
    close(lfd);
    free(r);
    free(ar);
    free(rbufs);
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- freeing the loop with operations pending ---------------------------------- */

TEST(loop_free_completes_every_pending_operation_once) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c, s, u, lst, cc;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET6, &c, &s));
    asock_endpoint eu, el;
    REQUIRE(udp_new(tl.loop, ASOCK_AF_INET, &u, &eu));
    REQUIRE(listener_new(tl.loop, ASOCK_AF_INET, 4, &lst, &el));
    uint16_t fport;
    int flfd = px_listen(ASOCK_AF_INET, 0, 0, &fport);
    REQUIRE(flfd >= 0);
    int filler = px_connect(ASOCK_AF_INET, fport); /* fills the backlog */
    REQUIRE(filler >= 0);
    REQUIRE_OK(asock_socket_new(tl.loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &cc));
    enum { NOPS = 6 };
    op_rec r[NOPS];
    op_rec_init(r, NOPS);
    asock_async_result ar[NOPS];
    uint8_t b0[8], b1[8], b2[8];
    static uint8_t big[4 << 20];
    REQUIRE_OK(asock_begin_receive(s, b0, sizeof b0, 0, rec_cb, &r[0], &ar[0]));
    REQUIRE_OK(asock_begin_receive(c, b1, sizeof b1, 0, rec_cb, &r[1], &ar[1]));
    REQUIRE_OK(asock_begin_receive_from(u, b2, sizeof b2, 0, rec_cb, &r[2], &ar[2]));
    REQUIRE_OK(asock_begin_accept(lst, rec_cb, &r[3], &ar[3]));
    asock_endpoint ef = lo_ep(ASOCK_AF_INET, fport);
    REQUIRE_OK(asock_begin_connect(cc, &ef, rec_cb, &r[4], &ar[4]));
    /* s does not read b0 fast enough for 4 MiB: a send that stays pending */
    REQUIRE_OK(asock_begin_send(c, big, sizeof big, 0, rec_cb, &r[5], &ar[5]));
    CHECK_OK(asock_loop_free(tl.loop));
    /* Every callback has run by the time free returns. */
    for (int i = 0; i < NOPS; i++)
        CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
    asock_error ec = 0;
    CHECK_EQ_INT(asock_end_receive(ar[0], &ec), -1);
    CHECK_ERR(ec, ASOCK_E_OBJECT_DISPOSED);
    ec = 0;
    CHECK_EQ_INT(asock_end_receive(ar[1], &ec), -1);
    /* (c's receive might have seen nothing but the close) */
    CHECK_ERR(ec, ASOCK_E_OBJECT_DISPOSED);
    ec = 0;
    asock_endpoint from;
    CHECK_EQ_INT(asock_end_receive_from(ar[2], &from, &ec), -1);
    CHECK_ERR(ec, ASOCK_E_OBJECT_DISPOSED);
    asock_socket acc = SENTINEL_SOCKET;
    CHECK_ERR(asock_end_accept(ar[3], &acc), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_end_connect(ar[4]), ASOCK_E_OBJECT_DISPOSED);
    ec = 0;
    CHECK_EQ_INT(asock_end_send(ar[5], &ec), -1);
    CHECK_ERR(ec, ASOCK_E_OBJECT_DISPOSED);
    /* The sockets are closed; each handle still closes once. */
    asock_socket all[5] = {c, s, u, lst, cc};
    asock_async_result x;
    for (int i = 0; i < 5; i++) {
        CHECK_ERR(asock_begin_receive(all[i], b0, 1, 0, rec_cb, &r[0], &x), ASOCK_E_OBJECT_DISPOSED);
        CHECK_OK(asock_socket_close(all[i]));
        CHECK_ERR(asock_socket_close(all[i]), ASOCK_E_OBJECT_DISPOSED);
    }
    CHECK_EQ_INT(atomic_load(&r[0].calls), 1);
    close(filler);
    close(flfd);
}

struct blocked_end {
    asock_async_result ar;
    int32_t n;
    asock_error ec;
    atomic_bool done;
};

static void *blocked_end_main(void *arg) {
    struct blocked_end *b = arg;
    b->n = asock_end_receive(b->ar, &b->ec);
    atomic_store(&b->done, true);
    return NULL;
}

TEST(loop_free_releases_an_end_blocked_on_another_thread) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c, s;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET, &c, &s));
    uint8_t buf[8];
    struct blocked_end b;
    memset(&b, 0, sizeof b);
    atomic_init(&b.done, false);
    REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, NULL, NULL, &b.ar));
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, blocked_end_main, &b) == 0);
    CHECK(!wait_bool(&b.done, 100));
    CHECK_OK(asock_loop_free(tl.loop));
    bool released = wait_bool(&b.done, wait_ms());
    CHECK(released);
    if (!released) {
        asock_socket_close(s);
        wait_bool(&b.done, wait_ms());
    }
    pthread_join(th, NULL);
    CHECK_EQ_INT(b.n, -1);
    CHECK_ERR(b.ec, ASOCK_E_OBJECT_DISPOSED);
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
}

/* ---- close from inside a callback ----------------------------------------------- */

struct closer {
    asock_socket s;
    op_rec rec;
    int32_t n;
    asock_error ec, close_ec;
};

static void closer_cb(asock_async_result ar, void *state) {
    struct closer *k = state;
    k->n = asock_end_receive(ar, &k->ec);
    k->close_ec = asock_socket_close(k->s);
    rec_cb(ar, &k->rec);
}

TEST(close_inside_a_callback_completes_the_other_pending_operations_once) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c, s;
    REQUIRE(tcp_pair(tl.loop, tl.loop, ASOCK_AF_INET, &c, &s));
    CHECK_OK(asock_socket_set_option(s, ASOCK_OPT_SEND_BUFFER_SIZE, 8192));
    struct closer k;
    memset(&k, 0, sizeof k);
    op_rec_init(&k.rec, 1);
    k.s = s;
    k.ec = k.close_ec = -7;
    enum { NR = 20, NS = 20 };
    op_rec r[NR + NS];
    op_rec_init(r, NR + NS);
    asock_async_result ar[NR + NS], first;
    uint8_t b0[4], bufs[NR][4];
    static uint8_t big[1 << 20];
    REQUIRE_OK(asock_begin_receive(s, b0, sizeof b0, 0, closer_cb, &k, &first));
    for (int i = 0; i < NR; i++)
        REQUIRE_OK(asock_begin_receive(s, bufs[i], 4, 0, rec_cb, &r[i], &ar[i]));
    for (int i = NR; i < NR + NS; i++) /* c does not read: these back up */
        REQUIRE_OK(asock_begin_send(s, big, sizeof big, 0, rec_cb, &r[i], &ar[i]));
    CHECK(send_all(c, "go", 2));
    CHECK(wait_until(pred_rec_called, &k.rec, wait_ms()));
    CHECK(all_called(r, NR + NS));
    CHECK(loop_flush(tl.loop));
    CHECK_EQ_INT(k.n, 2);
    CHECK_ERR(k.ec, ASOCK_OK);
    CHECK_ERR(k.close_ec, ASOCK_OK);
    CHECK_EQ_INT(atomic_load(&k.rec.calls), 1);
    for (int i = 0; i < NR + NS; i++) {
        CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
        CHECK(r[i].order > k.rec.order || i >= NR); /* aborted after the close (receives) */
        asock_error ec = 0;
        int32_t n = i < NR ? asock_end_receive(ar[i], &ec) : asock_end_send(ar[i], &ec);
        CHECK_EQ_INT(n, -1);
        CHECK_ERR(ec, ASOCK_E_OBJECT_DISPOSED);
    }
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- close racing completions --------------------------------------------------- */

TEST(close_racing_a_completion_calls_back_exactly_once) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    const int rounds = scaled(200, 30);
    int bad = 0;
    for (int i = 0; i < rounds; i++) {
        asock_socket c, s;
        REQUIRE(tcp_pair(tl.loop, tl.loop, i % 2 ? ASOCK_AF_INET6 : ASOCK_AF_INET, &c, &s));
        op_rec r[2];
        op_rec_init(r, 2);
        uint8_t buf[4];
        asock_async_result rr, sr;
        REQUIRE_OK(asock_begin_receive(s, buf, sizeof buf, 0, rec_cb, &r[0], &rr));
        REQUIRE_OK(asock_begin_send(c, (const uint8_t *)"race", 4, 0, rec_cb, &r[1], &sr));
        /* The loop thread is completing the receive right now. */
        CHECK_OK(asock_socket_close(s));
        CHECK_OK(asock_socket_close(c));
        CHECK(all_called(r, 2));
        CHECK(loop_flush(tl.loop));
        asock_error ec = 0;
        if (asock_end_receive(rr, &ec) != -1 || ec != ASOCK_E_OBJECT_DISPOSED)
            bad++;
        ec = 0;
        if (asock_end_send(sr, &ec) != -1 || ec != ASOCK_E_OBJECT_DISPOSED)
            bad++;
        if (atomic_load(&r[0].calls) != 1 || atomic_load(&r[1].calls) != 1)
            bad++;
    }
    CHECK_EQ_INT(bad, 0);
    CHECK_OK(asock_loop_free(tl.loop));
}

/* ---- the default loop --------------------------------------------------------------- */

TEST(default_loop_callbacks_run_on_its_one_library_thread) {
    test_loop dl; /* only for capturing the default loop's thread */
    memset(&dl, 0, sizeof dl);
    atomic_init(&dl.got, false);
    REQUIRE_OK(asock_loop_post((asock_loop){0}, test_loop_capture, &dl));
    REQUIRE(wait_bool(&dl.got, wait_ms()));
    CHECK(!pthread_equal(dl.thread, pthread_self()));
    asock_socket c, s, a, b;
    asock_endpoint ea, eb;
    REQUIRE(tcp_pair((asock_loop){0}, (asock_loop){0}, ASOCK_AF_INET, &c, &s));
    REQUIRE(udp_new((asock_loop){0}, ASOCK_AF_INET6, &a, &eb));
    REQUIRE(udp_new((asock_loop){0}, ASOCK_AF_INET6, &b, &ea));
    op_rec r[4];
    op_rec_init(r, 4);
    asock_async_result ar[4];
    uint8_t b1[4], b2[4];
    REQUIRE_OK(asock_begin_receive(s, b1, sizeof b1, 0, rec_cb, &r[0], &ar[0]));
    REQUIRE_OK(asock_begin_send(c, (const uint8_t *)"dflt", 4, 0, rec_cb, &r[1], &ar[1]));
    REQUIRE_OK(asock_begin_receive_from(b, b2, sizeof b2, 0, rec_cb, &r[2], &ar[2]));
    REQUIRE_OK(asock_begin_send_to(a, (const uint8_t *)"dflt", 4, 0, &ea, rec_cb, &r[3], &ar[3]));
    CHECK(all_called(r, 4));
    CHECK(loop_flush((asock_loop){0}));
    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
        CHECK(pthread_equal(r[i].thread, dl.thread));
    }
    CHECK_EQ_INT(asock_end_receive(ar[0], NULL), 4);
    CHECK_EQ_INT(asock_end_send(ar[1], NULL), 4);
    asock_endpoint from;
    CHECK_EQ_INT(asock_end_receive_from(ar[2], &from, NULL), 4);
    CHECK_EQ_INT(asock_end_send_to(ar[3], NULL), 4);
    CHECK_OK(asock_socket_close(c));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_socket_close(a));
    CHECK_OK(asock_socket_close(b));
}

/* ---- Begin racing close from other threads ------------------------------------------ */

static void count_cb(asock_async_result ar, void *state) {
    (void)ar;
    atomic_fetch_add((atomic_int *)state, 1);
}

enum { RACE_MAX = 60000 };

struct racer {
    asock_socket s;
    bool receive;
    atomic_int *calls;          /* RACE_MAX */
    asock_async_result *ars;    /* RACE_MAX */
    uint8_t *bufs;              /* RACE_MAX, one byte each for receives */
    int started;                /* Begins that returned ASOCK_OK */
    int attempts;
    asock_error stop_code;      /* the error that ended the run */
    atomic_int progress;
};

static void *racer_main(void *arg) {
    struct racer *r = arg;
    static const uint8_t one = 1;
    /* valgrind runs one thread at a time and switches rarely: without a
     * yield the racers can use up RACE_MAX before the closer runs. */
    bool yield = under_valgrind();
    while (r->attempts < RACE_MAX) {
        if (yield)
            sched_yield();
        int i = r->attempts++;
        asock_error e = r->receive
                            ? asock_begin_receive(r->s, &r->bufs[i], 1, 0, count_cb, &r->calls[i], &r->ars[i])
                            : asock_begin_send(r->s, &one, 1, 0, count_cb, &r->calls[i], &r->ars[i]);
        if (e != ASOCK_OK) {
            r->stop_code = e;
            break;
        }
        r->started = i + 1;
        atomic_store(&r->progress, i + 1);
    }
    return NULL;
}

/* Racers Begin on one socket until a Begin fails; `close_socket` ends the
 * race with asock_socket_close, else with asock_loop_free. */
static void begins_racing_the_end(bool close_socket) {
    test_loop tl;
    REQUIRE(test_loop_start(&tl));
    asock_socket c;
    int peer;
    REQUIRE(px_pair(tl.loop, ASOCK_AF_INET, 0, 0, &c, &peer)); /* peer: reads nothing, sends nothing */
    enum { T = 4 };
    struct racer rc[T];
    pthread_t th[T];
    for (int i = 0; i < T; i++) {
        memset(&rc[i], 0, sizeof rc[i]);
        rc[i].s = c;
        rc[i].receive = i % 2 == 1;
        rc[i].calls = calloc(RACE_MAX, sizeof *rc[i].calls);
        rc[i].ars = calloc(RACE_MAX, sizeof *rc[i].ars);
        rc[i].bufs = calloc(RACE_MAX, 1);
        REQUIRE(rc[i].calls != NULL && rc[i].ars != NULL && rc[i].bufs != NULL);
        for (int k = 0; k < RACE_MAX; k++)
            atomic_init(&rc[i].calls[k], 0);
        atomic_init(&rc[i].progress, 0);
    }
    for (int i = 0; i < T; i++)
        REQUIRE(pthread_create(&th[i], NULL, racer_main, &rc[i]) == 0);
    for (int i = 0; i < T; i++)
        CHECK(wait_atomic_ge(&rc[i].progress, scaled(500, 50), wait_ms()));
    if (close_socket)
        CHECK_OK(asock_socket_close(c));
    else
        CHECK_OK(asock_loop_free(tl.loop));
    for (int i = 0; i < T; i++)
        pthread_join(th[i], NULL);
    if (close_socket)
        CHECK(loop_flush(tl.loop));
    for (int i = 0; i < T; i++) {
        /* every racer ran into the end */
        CHECK(rc[i].attempts < RACE_MAX);
        CHECK_ERR(rc[i].stop_code, ASOCK_E_OBJECT_DISPOSED);
        int missing = 0, extra = 0, bad_end = 0;
        for (int k = 0; k < rc[i].started; k++) {
            struct harness_int_target t = {&rc[i].calls[k], 1};
            if (!wait_until(harness_pred_int_ge, &t, missing ? 0 : wait_ms()))
                missing++;
        }
        if (close_socket)
            CHECK(loop_flush(tl.loop));
        for (int k = 0; k < rc[i].started; k++) {
            if (atomic_load(&rc[i].calls[k]) > 1)
                extra++;
            asock_error ec = 0;
            int32_t n = rc[i].receive ? asock_end_receive(rc[i].ars[k], &ec) : asock_end_send(rc[i].ars[k], &ec);
            if (n != -1 || ec != ASOCK_E_OBJECT_DISPOSED)
                bad_end++;
        }
        /* The Begin that failed started nothing. */
        for (int k = rc[i].started; k < rc[i].attempts; k++)
            if (atomic_load(&rc[i].calls[k]) != 0)
                extra++;
        CHECK_EQ_INT(missing, 0);
        CHECK_EQ_INT(extra, 0);
        CHECK_EQ_INT(bad_end, 0);
        free(rc[i].calls);
        free(rc[i].ars);
        free(rc[i].bufs);
    }
    close(peer);
    if (close_socket)
        CHECK_OK(asock_loop_free(tl.loop));
    else
        CHECK_OK(asock_socket_close(c)); /* closed by the free; the handle closes once */
}

TEST(begins_racing_a_close_each_call_back_once_and_failed_ones_never) { begins_racing_the_end(true); }
TEST(begins_racing_a_loop_free_each_call_back_once_and_failed_ones_never) { begins_racing_the_end(false); }

int main(void) {
    signal(SIGPIPE, SIG_DFL);
    RUN(close_with_many_pending_operations_completes_each_once_and_the_fd_reuser_sees_nothing);
    RUN(loop_free_completes_every_pending_operation_once);
    RUN(loop_free_releases_an_end_blocked_on_another_thread);
    RUN(close_inside_a_callback_completes_the_other_pending_operations_once);
    RUN(close_racing_a_completion_calls_back_exactly_once);
    RUN(default_loop_callbacks_run_on_its_one_library_thread);
    RUN(begins_racing_a_close_each_call_back_once_and_failed_ones_never);
    RUN(begins_racing_a_loop_free_each_call_back_once_and_failed_ones_never);
    return harness_finish();
}
