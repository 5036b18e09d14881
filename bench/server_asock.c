/*
 * The asock server: idiomatic Begin/End, as a .NET server is written.
 * One loop (asock_loop_new) run by asock_loop_run on the main thread;
 * one accept pending at a time, re-begun from its callback; per
 * connection one object with its buffer, reused for every operation:
 *
 *   echo   receive callback → begin_send(the bytes) → send callback →
 *          begin_receive
 *   pump   send callback → begin_send(the next 64 KiB block)
 *   pound  begin_receive; its callback closes once 2 bytes are in
 *   idle   a pending zero-length begin_receive per connection (the .NET
 *          idiom for many idle connections: no buffer until data comes)
 *   xthread  the loop runs on a library thread (start_thread); T threads
 *          call asock_begin_send on their own connection; the send
 *          callback (on the loop thread) counts the completion
 *
 * Modes and the stdout protocol: see common.h.
 */
#include "common.h"
#include "xthread.h"

#include <asock.h>
#include <signal.h>

enum mode { M_ECHO, M_PUMP, M_POUND, M_IDLE, M_XTHREAD };

struct conn {
    asock_socket s;
    size_t got;            /* pound: bytes received */
    unsigned char buf[];   /* echo: ECHO_BUF bytes; pound: 64 */
};

static struct opts o;
static enum mode mode;
static asock_loop loop;
static asock_socket listener;
static long accepted, closed;

static void fail(const char *what, asock_error e) {
    char msg[256];
    asock_error_message(msg, sizeof msg);
    die("%s: %s (%d): %s", what, asock_error_name(e), e, msg);
}

static void conn_close(struct conn *c) {
    asock_socket_close(c->s);
    free(c);
    if (o.exit_after && ++closed >= o.exit_after)
        asock_loop_stop(loop);
}

/* A connection that ends normally: the peer closed or reset it. */
static int ended_normally(asock_error e) {
    return e == ASOCK_CONNECTION_RESET || e == ASOCK_CONNECTION_ABORTED || e == ASOCK_SHUTDOWN ||
           e == ASOCK_E_OBJECT_DISPOSED || e == ASOCK_OPERATION_ABORTED;
}

/* ---- echo ----------------------------------------------------------------- */

static void echo_receive(struct conn *c);

static void on_echo_sent(asock_async_result ar, void *state) {
    struct conn *c = state;
    asock_error e;
    if (asock_end_send(ar, &e) < 0) {
        if (!ended_normally(e))
            fail("end_send", e);
        conn_close(c);
        return;
    }
    echo_receive(c);
}

static void on_echo_received(asock_async_result ar, void *state) {
    struct conn *c = state;
    asock_error e;
    int32_t n = asock_end_receive(ar, &e);
    if (n <= 0) {
        if (n < 0 && !ended_normally(e))
            fail("end_receive", e);
        conn_close(c);
        return;
    }
    asock_async_result w;
    e = asock_begin_send(c->s, c->buf, (size_t)n, ASOCK_SOCKET_FLAG_NONE, on_echo_sent, c, &w);
    if (e != ASOCK_OK)
        fail("begin_send", e);
}

static void echo_receive(struct conn *c) {
    asock_async_result r;
    asock_error e = asock_begin_receive(c->s, c->buf, ECHO_BUF, ASOCK_SOCKET_FLAG_NONE, on_echo_received, c, &r);
    if (e != ASOCK_OK)
        fail("begin_receive", e);
}

/* ---- pump ----------------------------------------------------------------- */

static void pump_send(struct conn *c);

static void on_pump_sent(asock_async_result ar, void *state) {
    struct conn *c = state;
    asock_error e;
    if (asock_end_send(ar, &e) != PUMP_BLOCK) {
        if (!ended_normally(e))
            fail("end_send", e);
        conn_close(c);
        return;
    }
    pump_send(c);
}

static void pump_send(struct conn *c) {
    asock_async_result w;
    asock_error e = asock_begin_send(c->s, pump_block, PUMP_BLOCK, ASOCK_SOCKET_FLAG_NONE, on_pump_sent, c, &w);
    if (e != ASOCK_OK)
        fail("begin_send", e);
}

/* ---- pound and idle ------------------------------------------------------- */

static void pound_receive(struct conn *c);

static void on_pound_received(asock_async_result ar, void *state) {
    struct conn *c = state;
    asock_error e;
    int32_t n = asock_end_receive(ar, &e);
    if (n < 0 && !ended_normally(e))
        fail("end_receive", e);
    if (n > 0 && (c->got += (size_t)n) < 2) {
        pound_receive(c);
        return;
    }
    conn_close(c);
}

static void pound_receive(struct conn *c) {
    asock_async_result r;
    asock_error e = asock_begin_receive(c->s, c->buf, 64, ASOCK_SOCKET_FLAG_NONE, on_pound_received, c, &r);
    if (e != ASOCK_OK)
        fail("begin_receive", e);
}

/* The zero-length receive completes when data (or the end) arrives; the
 * benchmark's clients never send, so it completes when they close. */
static void on_idle_ready(asock_async_result ar, void *state) {
    struct conn *c = state;
    asock_error e;
    if (asock_end_receive(ar, &e) < 0 && !ended_normally(e))
        fail("end_receive", e);
    conn_close(c);
}

static void idle_receive(struct conn *c) {
    asock_async_result r;
    asock_error e = asock_begin_receive(c->s, NULL, 0, ASOCK_SOCKET_FLAG_NONE, on_idle_ready, c, &r);
    if (e != ASOCK_OK)
        fail("begin_receive", e);
}

/* ---- accept --------------------------------------------------------------- */

static void on_accepted(asock_async_result ar, void *state) {
    (void)state;
    asock_socket s;
    asock_error e = asock_end_accept(ar, &s);
    if (e != ASOCK_OK) {
        if (e == ASOCK_E_OBJECT_DISPOSED)
            return; /* the listener closed */
        fail("end_accept", e);
    }
    if ((e = asock_socket_set_option(s, ASOCK_OPT_NO_DELAY, 1)) != ASOCK_OK)
        fail("set_option", e);
    if (mode == M_XTHREAD) {
        xt_senders[accepted].index = (int)accepted;
        xt_senders[accepted].conn = (void *)(uintptr_t)s.id;
        __atomic_store_n(&accepted, accepted + 1, __ATOMIC_RELEASE); /* read by the main thread */
    } else {
        accepted++;
        size_t extra = mode == M_ECHO ? ECHO_BUF : mode == M_POUND ? 64 : 0;
        struct conn *c = calloc(1, sizeof *c + extra);
        if (!c)
            die("out of memory");
        c->s = s;
        switch (mode) {
        case M_ECHO: echo_receive(c); break;
        case M_PUMP: pump_send(c); break;
        case M_POUND: pound_receive(c); break;
        default: idle_receive(c); break;
        }
        if (mode == M_IDLE && accepted == o.conns) {
            printf("ready %ld\n", accepted);
            fflush(stdout);
        }
    }
    if (mode == M_XTHREAD && accepted == o.threads)
        return; /* all the connections this workload needs */
    asock_async_result next;
    if ((e = asock_begin_accept(listener, on_accepted, NULL, &next)) != ASOCK_OK)
        fail("begin_accept", e);
}

/* ---- cross-thread --------------------------------------------------------- */

static void on_xt_sent(asock_async_result ar, void *state) {
    struct xt_sender *s = state;
    asock_error e;
    if (asock_end_send(ar, &e) < 0)
        fail("end_send (xthread)", e);
    xt_complete(s->index);
}

static int xt_begin(struct xt_sender *s, int size) {
    asock_socket sock = {(uint64_t)(uintptr_t)s->conn};
    asock_async_result w;
    asock_error e = asock_begin_send(sock, xt_msg, (size_t)size, ASOCK_SOCKET_FLAG_NONE, on_xt_sent, s, &w);
    if (e != ASOCK_OK)
        fail("begin_send (xthread)", e);
    return 0;
}

static void run_xthread(void) {
    asock_error e;
    if ((e = asock_loop_start_thread(loop)) != ASOCK_OK)
        fail("loop_start_thread", e);
    double deadline = now_s() + o.limit;
    /* The accepts run on the loop thread; `accepted` is written there. */
    while (__atomic_load_n(&accepted, __ATOMIC_ACQUIRE) < o.threads) {
        if (now_s() > deadline)
            die("xthread: only %ld connections", accepted);
        usleep(1000);
    }
    xt_run(&o);
    for (int i = 0; i < o.threads; i++)
        asock_socket_close((asock_socket){(uint64_t)(uintptr_t)xt_senders[i].conn});
}

int main(int argc, char **argv) {
    o = parse_opts(argc, argv);
    if (mode_is(&o, "echo"))
        mode = M_ECHO;
    else if (mode_is(&o, "pump"))
        mode = M_PUMP;
    else if (mode_is(&o, "pound"))
        mode = M_POUND;
    else if (mode_is(&o, "idle"))
        mode = M_IDLE;
    else if (mode_is(&o, "xthread"))
        mode = M_XTHREAD;
    else
        usage(argv[0]);
    signal(SIGPIPE, SIG_IGN);

    asock_error e;
    asock_endpoint ep;
    if ((e = asock_loop_new(&loop)) != ASOCK_OK)
        fail("loop_new", e);
    if ((e = asock_socket_new(loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &listener)) != ASOCK_OK ||
        (e = asock_socket_set_option(listener, ASOCK_OPT_REUSE_ADDRESS, 1)) != ASOCK_OK ||
        (e = asock_endpoint_init(ASOCK_AF_INET, true, 0, &ep)) != ASOCK_OK ||
        (e = asock_socket_bind(listener, &ep)) != ASOCK_OK ||
        (e = asock_socket_listen(listener, LISTEN_BACKLOG)) != ASOCK_OK ||
        (e = asock_socket_local_endpoint(listener, &ep)) != ASOCK_OK)
        fail("listener", e);
    asock_async_result a;
    if ((e = asock_begin_accept(listener, on_accepted, NULL, &a)) != ASOCK_OK)
        fail("begin_accept", e);
    print_port(ep.port);

    if (mode == M_XTHREAD) {
        run_xthread();
    } else if ((e = asock_loop_run(loop)) != ASOCK_OK) {
        fail("loop_run", e);
    }
    asock_socket_close(listener);
    asock_loop_free(loop);
    return 0;
}
