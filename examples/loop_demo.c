/*
 * loop_demo: what the foundation of asock makes possible.
 *
 *   - an own event loop run on a library thread, and the default loop;
 *   - posting work to a loop from several threads;
 *   - one-shot timers, one of them cancelled;
 *   - a TCP listener bound to 127.0.0.1:0 (the port read back) and a UDP
 *     socket on [::1]:0, with options set and read;
 *   - network tracing to stderr;
 *   - a clean shutdown that frees everything.
 *
 * Exit status 0 when every step did what it should.
 */
#include <asock.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define POSTERS 4
#define POSTS_EACH 2500

static atomic_int posts_run;
static atomic_int timers_fired;
static atomic_int timers_aborted;
static atomic_int trace_records;

static int fail(const char *what, asock_error e) {
    char msg[256];
    asock_error_message(msg, sizeof msg);
    fprintf(stderr, "loop_demo: %s failed: %s (%d): %s\n", what, asock_error_name(e), e, msg);
    return 1;
}

#define TRY(call)                          \
    do {                                   \
        asock_error e_ = (call);           \
        if (e_ != ASOCK_OK)                \
            return fail(#call, e_);        \
    } while (0)

static void on_trace(int32_t level, const char *category, const char *text, void *userdata) {
    (void)userdata;
    atomic_fetch_add(&trace_records, 1);
    printf("  [trace %d %s] %s\n", level, category, text);
}

static void count_post(void *state) {
    (void)state;
    atomic_fetch_add(&posts_run, 1);
}

struct poster {
    asock_loop loop;
    asock_error result;
};

static void *poster_main(void *arg) {
    struct poster *p = arg;
    p->result = ASOCK_OK;
    for (int i = 0; i < POSTS_EACH && p->result == ASOCK_OK; i++)
        p->result = asock_loop_post(p->loop, count_post, NULL);
    return NULL;
}

static void on_timer(void *state, asock_error status) {
    const char *name = state;
    if (status == ASOCK_OK) {
        atomic_fetch_add(&timers_fired, 1);
        printf("timer %s fired\n", name);
    } else {
        atomic_fetch_add(&timers_aborted, 1);
        printf("timer %s ended with %s\n", name, asock_error_name(status));
    }
}

static atomic_int hellos;

static void say_hello(void *state) {
    printf("hello from the default loop's thread (%s)\n", (const char *)state);
    atomic_fetch_add(&hellos, 1);
}

/* Waits, with a bound, until *counter reaches want. */
static int wait_for(atomic_int *counter, int want, int timeout_ms) {
    struct timespec step = {0, 1000000};
    for (int waited = 0; waited < timeout_ms; waited++) {
        if (atomic_load(counter) >= want)
            return 0;
        nanosleep(&step, NULL);
    }
    return atomic_load(counter) >= want ? 0 : -1;
}

int main(void) {
    printf("asock %s\n", asock_version());

    /* Tracing at INFO while the sockets are set up. */
    TRY(asock_set_trace(on_trace, ASOCK_TRACE_INFO, NULL));

    asock_loop loop;
    TRY(asock_loop_new(&loop));
    TRY(asock_loop_start_thread(loop));

    /* A listening TCP socket on an ephemeral loopback port. */
    asock_socket listener;
    asock_endpoint ep;
    TRY(asock_socket_new(loop, ASOCK_AF_INET, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &listener));
    TRY(asock_socket_set_option(listener, ASOCK_OPT_REUSE_ADDRESS, 1));
    TRY(asock_socket_set_option(listener, ASOCK_OPT_NO_DELAY, 1));
    TRY(asock_endpoint_parse("127.0.0.1:0", &ep));
    TRY(asock_socket_bind(listener, &ep));
    TRY(asock_socket_listen(listener, 128));
    asock_endpoint bound;
    char text[ASOCK_ENDPOINT_TEXT_MAX];
    TRY(asock_socket_local_endpoint(listener, &bound));
    asock_endpoint_format(&bound, text, sizeof text);
    printf("TCP listener on %s\n", text);

    /* A UDP socket on IPv6 loopback. */
    asock_socket udp;
    int32_t ttl = 0;
    TRY(asock_socket_new(loop, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, ASOCK_PROTO_UDP, &udp));
    TRY(asock_endpoint_init(ASOCK_AF_INET6, true, 0, &ep));
    TRY(asock_socket_bind(udp, &ep));
    TRY(asock_socket_set_option(udp, ASOCK_OPT_TTL, 42));
    TRY(asock_socket_get_option(udp, ASOCK_OPT_TTL, &ttl));
    TRY(asock_socket_local_endpoint(udp, &bound));
    asock_endpoint_format(&bound, text, sizeof text);
    printf("UDP socket on %s, hop limit %d\n", text, ttl);

    /* An error, with its .NET name and detail. */
    asock_socket clash;
    TRY(asock_socket_new(loop, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, ASOCK_PROTO_UDP, &clash));
    asock_error e = asock_socket_bind(clash, &bound);
    char msg[256];
    asock_error_message(msg, sizeof msg);
    printf("binding a second socket to %s: %s (%d): %s\n", text, asock_error_name(e), e, msg);
    if (e != ASOCK_ADDRESS_ALREADY_IN_USE)
        return fail("expecting AddressAlreadyInUse", e);
    TRY(asock_socket_close(clash));
    TRY(asock_set_trace(NULL, ASOCK_TRACE_OFF, NULL));
    printf("%d trace records\n", atomic_load(&trace_records));

    /* Timers: two fire in deadline order, one is cancelled. */
    uint64_t doomed;
    TRY(asock_loop_add_timer(loop, 30, on_timer, "B (30 ms)", NULL));
    TRY(asock_loop_add_timer(loop, 10, on_timer, "A (10 ms)", NULL));
    TRY(asock_loop_add_timer(loop, 60000, on_timer, "C (60 s)", &doomed));
    TRY(asock_loop_cancel_timer(loop, doomed));

    /* Posts from several threads, each run exactly once on the loop. */
    pthread_t threads[POSTERS];
    struct poster posters[POSTERS];
    for (int i = 0; i < POSTERS; i++) {
        posters[i].loop = loop;
        pthread_create(&threads[i], NULL, poster_main, &posters[i]);
    }
    for (int i = 0; i < POSTERS; i++) {
        pthread_join(threads[i], NULL);
        TRY(posters[i].result);
    }
    if (wait_for(&posts_run, POSTERS * POSTS_EACH, 10000) != 0 || wait_for(&timers_fired, 2, 10000) != 0 ||
        wait_for(&timers_aborted, 1, 10000) != 0) {
        fprintf(stderr, "loop_demo: the loop did not finish its work in time\n");
        return 1;
    }
    printf("%d posts from %d threads ran on the loop\n", atomic_load(&posts_run), POSTERS);

    /* The default loop needs no setup. */
    TRY(asock_loop_post((asock_loop){0}, say_hello, "posted from main"));
    if (wait_for(&hellos, 1, 10000) != 0) {
        fprintf(stderr, "loop_demo: the default loop did not run the post in time\n");
        return 1;
    }

    /* Freeing the loop closes what is left on it: the listener and udp. */
    TRY(asock_loop_free(loop));
    e = asock_socket_listen(listener, 1);
    printf("after freeing the loop, the listener says %s\n", asock_error_name(e));
    TRY(asock_socket_close(listener));
    TRY(asock_socket_close(udp));
    if (e != ASOCK_E_OBJECT_DISPOSED)
        return fail("expecting ObjectDisposed", e);
    printf("loop_demo: ok\n");
    return 0;
}
