/*
 * saea_helpers.h — what every test_saea_*.c shares: loops with a known
 * thread, callback recorders, POSIX clients and bounded waits. Static,
 * header-only: each test file is its own program. Include it after
 * defining WAIT_MS.
 */
#ifndef ASOCK_SAEA_HELPERS_H
#define ASOCK_SAEA_HELPERS_H

#include "harness.h"

#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>


typedef struct {
    atomic_int done;
    pthread_t tid;
} marker_t;

static void marker_fn(void *p) {
    marker_t *m = p;
    m->tid = pthread_self();
    atomic_store(&m->done, 1);
}

/* Posts a marker to `l` and waits for it to run: whatever the loop had queued
 * before (callbacks included) has run by then. `*tid` gets the loop thread. */
static bool loop_barrier(asock_loop l, pthread_t *tid) {
    marker_t *m = calloc(1, sizeof *m);
    if (m == NULL)
        return false;
    if (asock_loop_post(l, marker_fn, m) != ASOCK_OK) {
        free(m);
        return false;
    }
    if (!wait_atomic_eq(&m->done, 1, WAIT_MS))
        return false; /* m leaks on purpose: the marker may still run */
    if (tid != NULL)
        *tid = m->tid;
    free(m);
    return true;
}

/* A loop running on its own library thread, and that thread. */
typedef struct {
    asock_loop loop;
    pthread_t tid;
} tloop;

static bool tloop_new(tloop *t) {
    if (asock_loop_new(&t->loop) != ASOCK_OK)
        return false;
    if (asock_loop_start_thread(t->loop) != ASOCK_OK)
        return false;
    return loop_barrier(t->loop, &t->tid);
}

/* Records Completed calls; the user token is the recorder. */
typedef struct {
    atomic_int calls;
    atomic_int off_thread; /* calls not on `expect` */
    pthread_t expect;
    asock_socket sender;
    asock_event_args args;
    void *token;
    asock_event_args_info info; /* read inside the callback */
    asock_error info_err;
} rec_t;

static void rec_init(rec_t *r, pthread_t expect) {
    memset(r, 0, sizeof *r);
    r->expect = expect;
}

static void rec_cb(asock_socket sender, asock_event_args e, void *token) {
    rec_t *r = token;
    if (!pthread_equal(pthread_self(), r->expect))
        atomic_fetch_add(&r->off_thread, 1);
    r->sender = sender;
    r->args = e;
    r->token = token;
    r->info_err = asock_event_args_get_info(e, &r->info);
    atomic_fetch_add(&r->calls, 1);
}

/* Args with rec_cb and `r` as token. */
static asock_event_args new_args(rec_t *r) {
    asock_event_args e = {0};
    asock_error err = asock_event_args_new(&e);
    if (err != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_event_args_new", err, ASOCK_OK);
        return e;
    }
    CHECK_OK(asock_event_args_set_completed(e, rec_cb));
    CHECK_OK(asock_event_args_set_user_token(e, r));
    return e;
}

static asock_endpoint lo_ep(int32_t family, uint16_t port) {
    asock_endpoint ep;
    memset(&ep, 0, sizeof ep);
    asock_error e = asock_endpoint_init(family, true, port, &ep);
    if (e != ASOCK_OK)
        harness_fail_code(__FILE__, __LINE__, "asock_endpoint_init", e, ASOCK_OK);
    return ep;
}

/* A listening stream socket on `l`, bound to loopback port 0; `*port` is the port. */
static asock_socket listener_on(asock_loop l, int32_t family, uint16_t *port) {
    asock_socket s = {0};
    asock_error e = asock_socket_new(l, family, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &s);
    if (e != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_socket_new", e, ASOCK_OK);
        return s;
    }
    asock_endpoint ep = lo_ep(family, 0), got;
    CHECK_OK(asock_socket_bind(s, &ep));
    CHECK_OK(asock_socket_listen(s, 128));
    memset(&got, 0, sizeof got);
    CHECK_OK(asock_socket_local_endpoint(s, &got));
    *port = got.port;
    return s;
}

/* A blocking POSIX client connected to loopback:port, with 5 s send/receive
 * timeouts (so no read or write of a test can hang), or -1. */
static int posix_connect(int32_t family, uint16_t port) {
    int af = family == ASOCK_AF_INET6 ? AF_INET6 : AF_INET;
    int fd = socket(af, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    socklen_t len;
    if (af == AF_INET) {
        struct sockaddr_in *sa = (struct sockaddr_in *)&ss;
        sa->sin_family = AF_INET;
        sa->sin_port = htons(port);
        sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        len = sizeof *sa;
    } else {
        struct sockaddr_in6 *sa = (struct sockaddr_in6 *)&ss;
        sa->sin6_family = AF_INET6;
        sa->sin6_port = htons(port);
        sa->sin6_addr = in6addr_loopback;
        len = sizeof *sa;
    }
    if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Reads exactly n bytes (each read bounded by SO_RCVTIMEO); false otherwise. */
static bool recv_exact(int fd, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, (char *)buf + got, n - got, 0);
        if (r <= 0)
            return false;
        got += (size_t)r;
    }
    return true;
}


static inline bool ep_equal(const asock_endpoint *a, const asock_endpoint *b) {
    size_t n = a->family == ASOCK_AF_INET ? 4 : 16;
    return a->family == b->family && a->port == b->port && memcmp(a->addr, b->addr, n) == 0;
}

/* Waits for a pending operation's callback (when pending) and returns its
 * info; for a synchronous one reads the info at once. */
static inline asock_event_args_info result_of(asock_event_args e, rec_t *r, bool pending, int before) {
    asock_event_args_info info;
    memset(&info, 0, sizeof info);
    if (pending) {
        if (!wait_atomic_ge(&r->calls, before + 1, WAIT_MS)) {
            harness_fail_cond(__FILE__, __LINE__, "the pending operation completed");
            info.socket_error = -999999;
            return info;
        }
        return r->info;
    }
    CHECK_OK(asock_event_args_get_info(e, &info));
    return info;
}

/* Sends `len` bytes from an asock socket with fresh args; true when all went. */
static inline bool asock_send_all(asock_socket s, const void *data, int32_t len) {
    rec_t r;
    rec_init(&r, pthread_self());
    asock_event_args e = new_args(&r);
    bool pending = false;
    CHECK_OK(asock_event_args_set_buffer(e, (uint8_t *)data, 0, len));
    asock_error err = asock_send_async(s, e, &pending);
    if (err != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_send_async", err, ASOCK_OK);
        asock_event_args_free(e);
        return false;
    }
    asock_event_args_info info = result_of(e, &r, pending, 0);
    CHECK_OK(asock_event_args_free(e));
    return info.socket_error == ASOCK_OK && info.bytes_transferred == len;
}


/* Accepts one connection from a fresh POSIX client: returns the accepted
 * asock socket (on the listener's loop) and the client fd in *client. */
static inline asock_socket accept_one(asock_socket listener, int32_t family, uint16_t port, int *client) {
    asock_socket none = {0};
    *client = posix_connect(family, port);
    if (*client < 0) {
        harness_fail_cond(__FILE__, __LINE__, "posix_connect");
        return none;
    }
    rec_t r;
    rec_init(&r, pthread_self());
    asock_event_args e = new_args(&r);
    bool pending = true;
    asock_error err = asock_accept_async(listener, e, &pending);
    if (err != ASOCK_OK) {
        harness_fail_code(__FILE__, __LINE__, "asock_accept_async", err, ASOCK_OK);
        asock_event_args_free(e);
        return none;
    }
    if (pending && !wait_atomic_ge(&r.calls, 1, WAIT_MS)) {
        harness_fail_cond(__FILE__, __LINE__, "accept completed");
        asock_event_args_free(e); /* deferred; r would dangle: cannot happen unless the lib hangs */
        return none;
    }
    asock_event_args_info info;
    memset(&info, 0, sizeof info);
    CHECK_OK(asock_event_args_get_info(e, &info));
    CHECK_EQ_INT(info.socket_error, ASOCK_OK);
    CHECK(info.accept_socket.id != 0);
    CHECK_OK(asock_event_args_free(e));
    return info.accept_socket;
}


#endif /* ASOCK_SAEA_HELPERS_H */
