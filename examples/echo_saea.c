/*
 * echo_saea: the pooled SocketAsyncEventArgs server .NET users know.
 *
 * One buffer block is carved into per-connection slices (a BufferManager),
 * a pool of event args owns those slices, and one more args object drives
 * the accept loop. Every operation is started with the `…_async` call; a
 * false return means "done already, no callback": the result is handled in
 * the same loop, so a stream of synchronous completions iterates instead of
 * recursing (the classic stack-overflow trap). The clients, on the default
 * loop, use event args too: connect, then send / receive numbered messages
 * and check every echo byte for byte.
 *
 *   echo_saea [clients] [messages per client]
 *
 * Exit status 0 when every echo came back intact.
 */
#include <asock.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SLICE 1024
#define MAX_CONNECTIONS 256

static void report(const char *what, asock_error e) {
    char msg[256];
    asock_error_message(msg, sizeof msg);
    fprintf(stderr, "echo_saea: %s: %s (%d): %s\n", what, asock_error_name(e), e, msg);
}

/* ---- server: buffer manager + args pool ---------------------------------- */

struct connection {
    asock_socket s;
    asock_event_args e;
    uint8_t *slice;
    struct connection *next_free;
};

static struct connection pool[MAX_CONNECTIONS];
static struct connection *free_list;
static uint8_t *buffer_block;
static asock_socket listener;
static asock_event_args accept_args;
static atomic_int served, sync_completions, pending_completions;

static void server_io_completed(asock_socket sender, asock_event_args e, void *token);

static int pool_init(void) {
    buffer_block = malloc((size_t)MAX_CONNECTIONS * SLICE);
    if (!buffer_block)
        return -1;
    for (int i = MAX_CONNECTIONS - 1; i >= 0; i--) {
        struct connection *c = &pool[i];
        c->slice = buffer_block + (size_t)i * SLICE;
        if (asock_event_args_new(&c->e) != ASOCK_OK)
            return -1;
        asock_event_args_set_completed(c->e, server_io_completed);
        asock_event_args_set_user_token(c->e, c);
        c->next_free = free_list;
        free_list = c;
    }
    return 0;
}

static void release(struct connection *c) {
    asock_socket_close(c->s);
    c->s = (asock_socket){0};
    c->next_free = free_list; /* only the server loop's thread touches the pool */
    free_list = c;
}

/* Runs the receive → send → receive cycle from `e`'s last result until an
 * operation is left pending. `e`'s callback re-enters here. */
static void server_pump(struct connection *c) {
    for (;;) {
        asock_event_args_info info;
        asock_event_args_get_info(c->e, &info);
        bool pending = false;
        asock_error r;
        if (info.socket_error != ASOCK_OK ||
            (info.last_operation == ASOCK_OP_RECEIVE && info.bytes_transferred == 0)) {
            release(c); /* the client is done, or the connection failed */
            return;
        }
        if (info.last_operation == ASOCK_OP_RECEIVE) {
            asock_event_args_set_buffer(c->e, c->slice, 0, info.bytes_transferred);
            r = asock_send_async(c->s, c->e, &pending);
        } else { /* a send finished, or the connection is new: receive */
            asock_event_args_set_buffer(c->e, c->slice, 0, SLICE);
            r = asock_receive_async(c->s, c->e, &pending);
        }
        if (r != ASOCK_OK) {
            report("server operation", r);
            release(c);
            return;
        }
        if (pending)
            return; /* server_io_completed continues */
        atomic_fetch_add(&sync_completions, 1);
    }
}

static void server_io_completed(asock_socket sender, asock_event_args e, void *token) {
    (void)sender;
    (void)e;
    atomic_fetch_add(&pending_completions, 1);
    server_pump(token);
}

static void accept_loop(void);

static void accept_completed(asock_socket sender, asock_event_args e, void *token) {
    (void)sender;
    (void)e;
    (void)token;
    accept_loop();
}

/* Handles the last accept's result, then accepts again, until one pends. */
static void handle_accept(void) {
    asock_event_args_info info;
    asock_event_args_get_info(accept_args, &info);
    if (info.socket_error != ASOCK_OK) {
        if (info.socket_error != ASOCK_OPERATION_ABORTED) /* the listener closing ends the loop */
            report("accept", info.socket_error);
        return;
    }
    struct connection *c = free_list;
    if (!c) { /* pool exhausted: refuse the connection */
        asock_socket_close(info.accept_socket);
        return;
    }
    free_list = c->next_free;
    c->s = info.accept_socket;
    atomic_fetch_add(&served, 1);
    asock_socket_set_option(c->s, ASOCK_OPT_NO_DELAY, 1);
    /* A fresh connection starts with a receive (last_operation is not one). */
    asock_event_args_set_buffer(c->e, c->slice, 0, SLICE);
    bool pending;
    asock_error r = asock_receive_async(c->s, c->e, &pending);
    if (r != ASOCK_OK) {
        report("first receive", r);
        release(c);
    } else if (!pending) {
        atomic_fetch_add(&sync_completions, 1);
        server_pump(c);
    }
}

static void accept_loop(void) {
    handle_accept();
    for (;;) {
        bool pending;
        asock_error r = asock_accept_async(listener, accept_args, &pending);
        if (r != ASOCK_OK) {
            if (r != ASOCK_E_OBJECT_DISPOSED)
                report("accept_async", r);
            return;
        }
        if (pending)
            return;
        handle_accept();
    }
}

/* ---- clients --------------------------------------------------------------- */

struct client {
    asock_socket s;
    asock_event_args e;
    int index, sent, messages;
    char out[64];
    uint8_t in[64];
    int out_len, in_len;
    atomic_int finished; /* 1 ok, -1 failed */
};

static void client_completed(asock_socket sender, asock_event_args e, void *token);

/* One step per completed operation; loops while operations finish at once. */
static void client_pump(struct client *c) {
    for (;;) {
        asock_event_args_info info;
        asock_event_args_get_info(c->e, &info);
        if (info.socket_error != ASOCK_OK) {
            report("client", info.socket_error);
            atomic_store(&c->finished, -1);
            return;
        }
        bool pending = false;
        asock_error r = ASOCK_OK;
        switch (info.last_operation) {
        case ASOCK_OP_RECEIVE:
            if (info.bytes_transferred == 0) {
                atomic_store(&c->finished, -1);
                return;
            }
            c->in_len += info.bytes_transferred;
            if (c->in_len < c->out_len) { /* the echo came in pieces */
                asock_event_args_set_buffer(c->e, c->in, c->in_len, (int32_t)sizeof c->in - c->in_len);
                r = asock_receive_async(c->s, c->e, &pending);
                break;
            }
            if (c->in_len != c->out_len || memcmp(c->in, c->out, (size_t)c->out_len) != 0) {
                fprintf(stderr, "echo_saea: client %d: echo differs\n", c->index);
                atomic_store(&c->finished, -1);
                return;
            }
            /* fall through - send the next message */
        case ASOCK_OP_CONNECT:
            if (c->sent == c->messages) {
                atomic_store(&c->finished, 1);
                return;
            }
            c->out_len = snprintf(c->out, sizeof c->out, "client %d message %d", c->index, ++c->sent);
            asock_event_args_set_buffer(c->e, (uint8_t *)c->out, 0, c->out_len);
            r = asock_send_async(c->s, c->e, &pending);
            break;
        case ASOCK_OP_SEND:
            c->in_len = 0;
            asock_event_args_set_buffer(c->e, c->in, 0, (int32_t)sizeof c->in);
            r = asock_receive_async(c->s, c->e, &pending);
            break;
        default:
            atomic_store(&c->finished, -1);
            return;
        }
        if (r != ASOCK_OK) {
            report("client operation", r);
            atomic_store(&c->finished, -1);
            return;
        }
        if (pending)
            return;
    }
}

static void client_completed(asock_socket sender, asock_event_args e, void *token) {
    (void)sender;
    (void)e;
    client_pump(token);
}

int main(int argc, char **argv) {
    int clients = argc > 1 ? atoi(argv[1]) : 8;
    int messages = argc > 2 ? atoi(argv[2]) : 1000;
    if (clients < 1 || clients > MAX_CONNECTIONS || messages < 1) {
        fprintf(stderr, "usage: echo_saea [clients 1..%d] [messages per client]\n", MAX_CONNECTIONS);
        return 2;
    }
    asock_loop server_loop;
    asock_endpoint ep;
    asock_error e;
    if (pool_init() != 0 || (e = asock_loop_new(&server_loop)) != ASOCK_OK)
        return fprintf(stderr, "echo_saea: setup failed\n"), 1;
    if ((e = asock_socket_new(server_loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &listener)) != ASOCK_OK ||
        (e = asock_endpoint_init(ASOCK_AF_INET, true, 0, &ep)) != ASOCK_OK ||
        (e = asock_socket_bind(listener, &ep)) != ASOCK_OK || (e = asock_socket_listen(listener, 512)) != ASOCK_OK ||
        (e = asock_socket_local_endpoint(listener, &ep)) != ASOCK_OK || (e = asock_event_args_new(&accept_args)) != ASOCK_OK ||
        (e = asock_event_args_set_completed(accept_args, accept_completed)) != ASOCK_OK)
        return report("listener", e), 1;

    /* The accept loop starts on the server loop's thread, which owns the
     * pool; then the loop runs on its library thread. */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    bool pending;
    if ((e = asock_accept_async(listener, accept_args, &pending)) != ASOCK_OK)
        return report("accept_async", e), 1;
    if (!pending)
        accept_loop();
    if ((e = asock_loop_start_thread(server_loop)) != ASOCK_OK)
        return report("server loop", e), 1;
    printf("echo server on 127.0.0.1:%u (pool of %d event args); %d clients x %d messages\n", ep.port, MAX_CONNECTIONS,
           clients, messages);

    struct client *cs = calloc((size_t)clients, sizeof *cs);
    for (int i = 0; i < clients; i++) {
        struct client *c = &cs[i];
        c->index = i;
        c->messages = messages;
        if ((e = asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &c->s)) != ASOCK_OK ||
            (e = asock_event_args_new(&c->e)) != ASOCK_OK ||
            (e = asock_event_args_set_completed(c->e, client_completed)) != ASOCK_OK ||
            (e = asock_event_args_set_user_token(c->e, c)) != ASOCK_OK ||
            (e = asock_event_args_set_remote_endpoint(c->e, &ep)) != ASOCK_OK)
            return report("client", e), 1;
        if ((e = asock_connect_async(c->s, c->e, &pending)) != ASOCK_OK)
            return report("connect_async", e), 1;
        if (!pending)
            client_pump(c); /* runs on this thread; later steps on the default loop */
    }

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
    printf("%d clients finished, %d failed, %d connections served; %.0f round trips/s; server completions: %d synchronous, "
           "%d through the callback\n",
           ok, failed, atomic_load(&served), (double)ok * messages / secs, atomic_load(&sync_completions),
           atomic_load(&pending_completions));

    for (int i = 0; i < clients; i++) {
        asock_socket_close(cs[i].s);
        asock_event_args_free(cs[i].e);
    }
    free(cs);
    /* Stop the server loop first: the pool belongs to its thread. */
    asock_socket_close(listener);
    asock_loop_free(server_loop);
    asock_event_args_free(accept_args);
    for (int i = 0; i < MAX_CONNECTIONS; i++) {
        asock_socket_close(pool[i].s); /* {0} for slices not in use: ignored */
        asock_event_args_free(pool[i].e);
    }
    free(buffer_block);
    if (ok != clients) {
        fprintf(stderr, "echo_saea: FAILED\n");
        return 1;
    }
    printf("echo_saea: ok\n");
    return 0;
}
