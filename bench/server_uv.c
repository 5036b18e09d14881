/*
 * The libuv server, written the way libuv is meant to be used (and as fast
 * as that simply gets): uv_read_start once per connection with one
 * per-connection read buffer handed out by alloc_cb, uv_write for output.
 *
 *   echo   read_cb copies the bytes into a write request taken from the
 *          connection's free list (no malloc in the steady state) and
 *          calls uv_write; write_cb returns the request
 *   pump   one uv_write of the 64 KiB block in flight; write_cb writes the
 *          next; reading only to see the client's close
 *   pound  read_cb closes the handle once 2 bytes are in
 *   idle   uv_read_start on every connection; alloc_cb hands out one shared
 *          buffer only when data arrives, so an idle connection owns just
 *          its uv_tcp_t (libuv's idiom for many idle connections)
 *   xthread  uv_write is not thread-safe, so the T threads push requests
 *          onto a mutex-protected queue and uv_async_send; the async
 *          callback, on the loop thread, calls uv_write for each, and
 *          write_cb counts the completion
 *
 * Modes and the stdout protocol: see common.h.
 */
#include "common.h"
#include "xthread.h"

#include <signal.h>
#include <uv.h>

enum mode { M_ECHO, M_PUMP, M_POUND, M_IDLE, M_XTHREAD };

struct wreq {
    uv_write_t req;
    struct wreq *next;
    size_t cap;
    char *data;
};

struct conn {
    uv_tcp_t tcp; /* first: the handle's address is the connection's */
    struct wreq *free_reqs;
    size_t got;
    char *buf; /* echo and pound: the connection's read buffer */
};

static struct opts o;
static enum mode mode;
static uv_loop_t *loop;
static uv_tcp_t server;
static long accepted, closed;
static char shared_buf[PUMP_BLOCK];

static void uv_check(int r, const char *what) {
    if (r < 0)
        die("%s: %s", what, uv_strerror(r));
}

static void on_closed(uv_handle_t *h) {
    struct conn *c = (struct conn *)h;
    while (c->free_reqs) {
        struct wreq *w = c->free_reqs;
        c->free_reqs = w->next;
        free(w->data);
        free(w);
    }
    free(c->buf);
    free(c);
    if (o.exit_after && ++closed >= o.exit_after)
        uv_stop(loop);
}

static void conn_close(struct conn *c) {
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void alloc_own(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    struct conn *c = (struct conn *)h;
    *buf = uv_buf_init(c->buf, ECHO_BUF);
}

static void alloc_shared(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)h;
    (void)suggested;
    *buf = uv_buf_init(shared_buf, sizeof shared_buf);
}

/* ---- echo ----------------------------------------------------------------- */

static void on_echo_written(uv_write_t *req, int status) {
    struct wreq *w = (struct wreq *)req;
    struct conn *c = req->data;
    w->next = c->free_reqs;
    c->free_reqs = w;
    if (status < 0)
        conn_close(c);
}

static void on_echo_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    (void)buf;
    struct conn *c = (struct conn *)s;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    if (nread == 0)
        return;
    struct wreq *w = c->free_reqs;
    if (w) {
        c->free_reqs = w->next;
    } else if (!(w = calloc(1, sizeof *w))) {
        die("out of memory");
    }
    if (w->cap < (size_t)nread) {
        free(w->data);
        w->cap = ECHO_BUF;
        if (!(w->data = malloc(w->cap)))
            die("out of memory");
    }
    memcpy(w->data, c->buf, (size_t)nread);
    w->req.data = c;
    uv_buf_t out = uv_buf_init(w->data, (unsigned)nread);
    if (uv_write(&w->req, s, &out, 1, on_echo_written) < 0) {
        w->next = c->free_reqs;
        c->free_reqs = w;
        conn_close(c);
    }
}

/* ---- pump ----------------------------------------------------------------- */

static void pump_write(struct conn *c);

static void on_pump_written(uv_write_t *req, int status) {
    struct conn *c = req->data;
    if (status < 0) {
        conn_close(c);
        return;
    }
    pump_write(c);
}

static void pump_write(struct conn *c) {
    struct wreq *w = c->free_reqs;
    w->req.data = c;
    uv_buf_t out = uv_buf_init((char *)pump_block, PUMP_BLOCK);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &out, 1, on_pump_written) < 0)
        conn_close(c);
}

/* Reading in pump and idle modes only notices the client's close. */
static void on_read_end(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    (void)buf;
    if (nread < 0)
        conn_close((struct conn *)s);
}

/* ---- pound ---------------------------------------------------------------- */

static void on_pound_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    (void)buf;
    struct conn *c = (struct conn *)s;
    if (nread > 0)
        c->got += (size_t)nread;
    if (nread < 0 || c->got >= 2)
        conn_close(c);
}

/* ---- accept --------------------------------------------------------------- */

static void on_connection(uv_stream_t *srv, int status) {
    uv_check(status, "connection");
    struct conn *c = calloc(1, sizeof *c);
    if (!c)
        die("out of memory");
    uv_check(uv_tcp_init(loop, &c->tcp), "uv_tcp_init");
    uv_check(uv_accept(srv, (uv_stream_t *)&c->tcp), "uv_accept");
    uv_tcp_nodelay(&c->tcp, 1);
    accepted++;
    switch (mode) {
    case M_ECHO:
        c->buf = malloc(ECHO_BUF);
        uv_check(uv_read_start((uv_stream_t *)&c->tcp, alloc_own, on_echo_read), "uv_read_start");
        break;
    case M_PUMP:
        c->free_reqs = calloc(1, sizeof *c->free_reqs);
        uv_check(uv_read_start((uv_stream_t *)&c->tcp, alloc_shared, on_read_end), "uv_read_start");
        pump_write(c);
        break;
    case M_POUND:
        c->buf = malloc(ECHO_BUF);
        uv_check(uv_read_start((uv_stream_t *)&c->tcp, alloc_own, on_pound_read), "uv_read_start");
        break;
    default:
        uv_check(uv_read_start((uv_stream_t *)&c->tcp, alloc_shared, on_read_end), "uv_read_start");
        if (accepted == o.conns) {
            printf("ready %ld\n", accepted);
            fflush(stdout);
        }
        break;
    }
}

/* ---- cross-thread: a mutex queue, uv_async_send, uv_write on the loop ---- */

struct xt_req {
    uv_write_t req;
    int index;
};

static uv_async_t xt_async;
static uv_mutex_t q_mu;
static struct xt_req **q_items;
static size_t q_head, q_len, q_cap;
static struct xt_req *xt_reqs; /* threads × window, slot seq % window per thread */
static long xt_seq[64];
static struct conn *xt_conns[64];
static int xt_accepted_all;
static int xt_size;

static void on_xt_written(uv_write_t *req, int status) {
    uv_check(status, "xthread write");
    xt_complete(((struct xt_req *)req)->index);
}

static void on_xt_async(uv_async_t *a) {
    (void)a;
    struct xt_req *batch[4096];
    for (;;) {
        uv_mutex_lock(&q_mu);
        size_t k = q_len < 4096 ? q_len : 4096;
        for (size_t j = 0; j < k; j++)
            batch[j] = q_items[(q_head + j) % q_cap];
        q_head = (q_head + k) % q_cap;
        q_len -= k;
        uv_mutex_unlock(&q_mu);
        if (k == 0)
            return;
        for (size_t j = 0; j < k; j++) {
            uv_buf_t out = uv_buf_init((char *)xt_msg, (unsigned)xt_size);
            uv_check(uv_write(&batch[j]->req, (uv_stream_t *)&xt_conns[batch[j]->index]->tcp, &out, 1, on_xt_written),
                     "uv_write");
        }
    }
}

/* Runs on a sender thread. Completions are FIFO per connection and at most
 * `window` are outstanding, so slot seq % window is free again. */
static int xt_begin(struct xt_sender *s, int size) {
    (void)size;
    struct xt_req *r = &xt_reqs[s->index * xt_window + (int)(xt_seq[s->index]++ % xt_window)];
    r->index = s->index;
    uv_mutex_lock(&q_mu);
    q_items[(q_head + q_len) % q_cap] = r;
    q_len++;
    uv_mutex_unlock(&q_mu);
    uv_async_send(&xt_async); /* libuv coalesces the wake-ups */
    return 0;
}

static void on_xt_connection(uv_stream_t *srv, int status) {
    uv_check(status, "connection");
    struct conn *c = calloc(1, sizeof *c);
    uv_check(uv_tcp_init(loop, &c->tcp), "uv_tcp_init");
    uv_check(uv_accept(srv, (uv_stream_t *)&c->tcp), "uv_accept");
    uv_tcp_nodelay(&c->tcp, 1);
    xt_conns[accepted] = c;
    xt_senders[accepted].index = (int)accepted;
    accepted++;
    if (accepted == o.threads) {
        uv_close((uv_handle_t *)srv, NULL);
        __atomic_store_n(&xt_accepted_all, 1, __ATOMIC_RELEASE);
    }
}

static void xt_loop_main(void *arg) {
    (void)arg;
    uv_run(loop, UV_RUN_DEFAULT);
}

static void run_xthread(void) {
    xt_size = o.size;
    q_cap = (size_t)o.threads * (size_t)o.window + 1;
    q_items = calloc(q_cap, sizeof *q_items);
    xt_reqs = calloc((size_t)o.threads * (size_t)o.window, sizeof *xt_reqs);
    xt_window = o.window;
    uv_check(uv_mutex_init(&q_mu), "uv_mutex_init");
    uv_check(uv_async_init(loop, &xt_async, on_xt_async), "uv_async_init");
    uv_thread_t t;
    uv_check(uv_thread_create(&t, xt_loop_main, NULL), "uv_thread_create");
    double deadline = now_s() + o.limit;
    while (!__atomic_load_n(&xt_accepted_all, __ATOMIC_ACQUIRE)) {
        if (now_s() > deadline)
            die("xthread: the connections did not come");
        usleep(1000);
    }
    xt_run(&o);
    /* Leave without tearing the loop down: it is another thread's. */
    fflush(stdout);
    _exit(0);
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
    loop = uv_default_loop();
    struct sockaddr_in sa = loopback(0);
    uv_check(uv_tcp_init(loop, &server), "uv_tcp_init");
    uv_check(uv_tcp_bind(&server, (struct sockaddr *)&sa, 0), "uv_tcp_bind");
    uv_check(uv_listen((uv_stream_t *)&server, LISTEN_BACKLOG, mode == M_XTHREAD ? on_xt_connection : on_connection),
             "uv_listen");
    int len = sizeof sa;
    uv_check(uv_tcp_getsockname(&server, (struct sockaddr *)&sa, &len), "uv_tcp_getsockname");
    print_port(ntohs(sa.sin_port));
    if (mode == M_XTHREAD) {
        run_xthread();
        return 0;
    }
    uv_run(loop, UV_RUN_DEFAULT);
    return 0;
}
