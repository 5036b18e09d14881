/*
 * echo_apm: an echo server and clients on Begin/End (.NET's APM pattern).
 *
 * The server runs on its own loop (a library thread); it accepts with
 * asock_begin_accept and, per connection, chains Begin/End receive → send →
 * receive from the callbacks, exactly as a .NET server chains BeginReceive
 * and BeginSend. The clients run on the default loop: each connects by host
 * name ("localhost"), sends numbered messages one at a time and checks every
 * echo byte for byte.
 *
 *   echo_apm [clients] [messages per client]
 *
 * Exit status 0 when every echo came back intact.
 */
#include <asock.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BUF 4096

/* ---- server --------------------------------------------------------------- */

struct conn {
    asock_socket s;
    uint8_t buf[BUF];
};

static asock_socket listener;
static atomic_int server_connections;

static void report(const char *what, asock_error e) {
    char msg[256];
    asock_error_message(msg, sizeof msg);
    fprintf(stderr, "echo_apm: %s: %s (%d): %s\n", what, asock_error_name(e), e, msg);
}

static void server_receive(struct conn *c);

static void on_server_sent(asock_async_result ar, void *state) {
    struct conn *c = state;
    asock_error e;
    if (asock_end_send(ar, &e) < 0) {
        report("server send", e);
        asock_socket_close(c->s);
        free(c);
        return;
    }
    server_receive(c);
}

static void on_server_received(asock_async_result ar, void *state) {
    struct conn *c = state;
    asock_error e;
    int32_t n = asock_end_receive(ar, &e);
    if (n <= 0) { /* 0: the client is done; < 0: an error ends the connection */
        /* Reset by a client, or closed by the loop being freed: normal ends. */
        if (n < 0 && e != ASOCK_CONNECTION_RESET && e != ASOCK_E_OBJECT_DISPOSED)
            report("server receive", e);
        asock_socket_close(c->s);
        free(c);
        return;
    }
    asock_async_result w;
    e = asock_begin_send(c->s, c->buf, (size_t)n, ASOCK_SOCKET_FLAG_NONE, on_server_sent, c, &w);
    if (e != ASOCK_OK) {
        report("server begin send", e);
        asock_socket_close(c->s);
        free(c);
    }
}

static void server_receive(struct conn *c) {
    asock_async_result r;
    asock_error e = asock_begin_receive(c->s, c->buf, sizeof c->buf, ASOCK_SOCKET_FLAG_NONE, on_server_received, c, &r);
    if (e != ASOCK_OK) {
        report("server begin receive", e);
        asock_socket_close(c->s);
        free(c);
    }
}

static void on_accepted(asock_async_result ar, void *state) {
    (void)state;
    struct conn *c = calloc(1, sizeof *c);
    asock_error e = asock_end_accept(ar, &c->s);
    if (e != ASOCK_OK) {
        free(c);
        if (e != ASOCK_E_OBJECT_DISPOSED) /* the listener closing ends the accept loop */
            report("accept", e);
        return;
    }
    atomic_fetch_add(&server_connections, 1);
    asock_socket_set_option(c->s, ASOCK_OPT_NO_DELAY, 1);
    server_receive(c);
    asock_async_result next;
    e = asock_begin_accept(listener, on_accepted, NULL, &next);
    if (e != ASOCK_OK && e != ASOCK_E_OBJECT_DISPOSED)
        report("begin accept", e);
}

/* ---- clients -------------------------------------------------------------- */

struct client {
    asock_socket s;
    int index, sent, messages;
    char out[64];
    uint8_t in[64];
    size_t out_len, in_len;
    atomic_int finished; /* 1 ok, -1 failed */
};

static void client_next(struct client *c);

static void client_fail(struct client *c, const char *what, asock_error e) {
    report(what, e);
    atomic_store(&c->finished, -1);
}

static void on_client_received(asock_async_result ar, void *state) {
    struct client *c = state;
    asock_error e;
    int32_t n = asock_end_receive(ar, &e);
    if (n <= 0) {
        client_fail(c, "client receive", n == 0 ? ASOCK_CONNECTION_ABORTED : e);
        return;
    }
    c->in_len += (size_t)n;
    if (c->in_len < c->out_len) { /* TCP may split the echo: read the rest */
        asock_async_result r;
        e = asock_begin_receive(c->s, c->in + c->in_len, sizeof c->in - c->in_len, 0, on_client_received, c, &r);
        if (e != ASOCK_OK)
            client_fail(c, "client begin receive", e);
        return;
    }
    if (c->in_len != c->out_len || memcmp(c->in, c->out, c->out_len) != 0) {
        fprintf(stderr, "echo_apm: client %d: echo differs from message %d\n", c->index, c->sent);
        atomic_store(&c->finished, -1);
        return;
    }
    client_next(c);
}

static void on_client_sent(asock_async_result ar, void *state) {
    struct client *c = state;
    asock_error e;
    if (asock_end_send(ar, &e) != (int32_t)c->out_len) {
        client_fail(c, "client send", e);
        return;
    }
    asock_async_result r;
    c->in_len = 0;
    e = asock_begin_receive(c->s, c->in, sizeof c->in, 0, on_client_received, c, &r);
    if (e != ASOCK_OK)
        client_fail(c, "client begin receive", e);
}

static void client_next(struct client *c) {
    if (c->sent == c->messages) {
        atomic_store(&c->finished, 1);
        return;
    }
    c->out_len = (size_t)snprintf(c->out, sizeof c->out, "client %d message %d", c->index, ++c->sent);
    asock_async_result w;
    asock_error e = asock_begin_send(c->s, (const uint8_t *)c->out, c->out_len, 0, on_client_sent, c, &w);
    if (e != ASOCK_OK)
        client_fail(c, "client begin send", e);
}

static void on_connected(asock_async_result ar, void *state) {
    struct client *c = state;
    asock_error e = asock_end_connect(ar);
    if (e != ASOCK_OK) {
        client_fail(c, "connect", e);
        return;
    }
    asock_socket_set_option(c->s, ASOCK_OPT_NO_DELAY, 1);
    client_next(c);
}

int main(int argc, char **argv) {
    int clients = argc > 1 ? atoi(argv[1]) : 8;
    int messages = argc > 2 ? atoi(argv[2]) : 1000;
    if (clients < 1 || clients > 1000 || messages < 1) {
        fprintf(stderr, "usage: echo_apm [clients 1..1000] [messages per client]\n");
        return 2;
    }

    asock_loop server_loop;
    asock_endpoint ep;
    asock_error e;
    if ((e = asock_loop_new(&server_loop)) != ASOCK_OK || (e = asock_loop_start_thread(server_loop)) != ASOCK_OK)
        return report("server loop", e), 1;
    if ((e = asock_socket_new(server_loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &listener)) != ASOCK_OK ||
        (e = asock_endpoint_init(ASOCK_AF_INET, true, 0, &ep)) != ASOCK_OK ||
        (e = asock_socket_bind(listener, &ep)) != ASOCK_OK || (e = asock_socket_listen(listener, 512)) != ASOCK_OK ||
        (e = asock_socket_local_endpoint(listener, &ep)) != ASOCK_OK)
        return report("listener", e), 1;
    asock_async_result a;
    if ((e = asock_begin_accept(listener, on_accepted, NULL, &a)) != ASOCK_OK)
        return report("begin accept", e), 1;
    printf("echo server on 127.0.0.1:%u (own loop); %d clients x %d messages on the default loop\n", ep.port, clients, messages);

    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct client *cs = calloc((size_t)clients, sizeof *cs);
    for (int i = 0; i < clients; i++) {
        cs[i].index = i;
        cs[i].messages = messages;
        asock_async_result c;
        if ((e = asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &cs[i].s)) != ASOCK_OK ||
            (e = asock_begin_connect_host(cs[i].s, "localhost", ep.port, on_connected, &cs[i], &c)) != ASOCK_OK)
            return report("client", e), 1;
    }

    /* Wait (bounded) for every client to finish. */
    int ok = 0, failed = 0;
    for (int waited_ms = 0; waited_ms < 60000; waited_ms++) {
        ok = failed = 0;
        for (int i = 0; i < clients; i++) {
            int f = atomic_load(&cs[i].finished);
            ok += f == 1;
            failed += f == -1;
        }
        if (ok + failed == clients)
            break;
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%d clients finished, %d failed, %d server connections; %.0f round trips/s\n", ok, failed,
           atomic_load(&server_connections), (double)ok * messages / secs);

    for (int i = 0; i < clients; i++)
        asock_socket_close(cs[i].s);
    free(cs);
    /* Closing the listener completes its pending accept (ObjectDisposed);
     * freeing the loop closes the connections still open on it. */
    asock_socket_close(listener);
    asock_loop_free(server_loop);
    if (ok != clients) {
        fprintf(stderr, "echo_apm: FAILED\n");
        return 1;
    }
    printf("echo_apm: ok\n");
    return 0;
}
