/*
 * test_handles.c — section 1 of the contract: generation-checked handles.
 * Stale (closed, freed), double-freed, forged and none handles give error
 * codes, never undefined behaviour — also when many threads create, use,
 * close and forge handles at once.
 */
#include "harness.h"

#include <limits.h>

/* A deterministic PRNG (xorshift64*), one state per thread. */
static uint64_t rnd(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static asock_endpoint loopback4(void) {
    asock_endpoint ep;
    memset(&ep, 0, sizeof ep);
    asock_endpoint_init(ASOCK_AF_INET, true, 0, &ep);
    return ep;
}

/* Calls every socket function with `s` and checks each result is one of
 * `allowed` (n codes). Returns how many were not. */
static int every_socket_function(asock_socket s, const asock_error *allowed, int n, bool report) {
    asock_endpoint ep = loopback4(), out;
    int32_t v = 777;
    asock_error got[8];
    const char *names[8] = {"bind",       "listen",     "local_endpoint", "remote_endpoint",
                            "set_option", "get_option", "shutdown",       "close"};
    got[0] = asock_socket_bind(s, &ep);
    got[1] = asock_socket_listen(s, 4);
    got[2] = asock_socket_local_endpoint(s, &out);
    got[3] = asock_socket_remote_endpoint(s, &out);
    got[4] = asock_socket_set_option(s, ASOCK_OPT_KEEP_ALIVE, 1);
    got[5] = asock_socket_get_option(s, ASOCK_OPT_KEEP_ALIVE, &v);
    got[6] = asock_socket_shutdown(s, ASOCK_SHUTDOWN_BOTH);
    got[7] = asock_socket_close(s);
    int bad = 0;
    for (int i = 0; i < 8; i++) {
        bool ok = false;
        for (int j = 0; j < n; j++)
            if (got[i] == allowed[j])
                ok = true;
        if (!ok) {
            bad++;
            if (report) {
                harness_fail_begin(__FILE__, __LINE__);
                fprintf(stderr, "asock_socket_%s({%#" PRIx64 "}) = %d %s (not an allowed code)\n", names[i], s.id,
                        (int)got[i], asock_error_name(got[i]));
                harness_fail_end();
            }
        }
    }
    if (v != 777 && report) {
        harness_fail_begin(__FILE__, __LINE__);
        fprintf(stderr, "get_option wrote through a bad handle {%#" PRIx64 "}\n", s.id);
        harness_fail_end();
        bad++;
    }
    return bad;
}

static void cb_nop(void *state) { (void)state; }
static void timer_nop(void *state, asock_error status) {
    (void)state;
    (void)status;
}

/* Every loop function except run (which would block on a valid loop). */
static int every_loop_function(asock_loop l, const asock_error *allowed, int n, bool report) {
    uint32_t d = 777;
    uint64_t id = 777;
    asock_socket s = {777};
    asock_error got[8];
    const char *names[8] = {"run_once", "start_thread", "stop",         "post",
                            "add_timer", "cancel_timer", "socket_new", "free"};
    got[0] = asock_loop_run_once(l, 0, &d);
    got[1] = asock_loop_start_thread(l);
    got[2] = asock_loop_stop(l);
    got[3] = asock_loop_post(l, cb_nop, NULL);
    got[4] = asock_loop_add_timer(l, 0, timer_nop, NULL, &id);
    got[5] = asock_loop_cancel_timer(l, 1);
    got[6] = asock_socket_new(l, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s);
    got[7] = asock_loop_free(l);
    int bad = 0;
    for (int i = 0; i < 8; i++) {
        bool ok = false;
        for (int j = 0; j < n; j++)
            if (got[i] == allowed[j])
                ok = true;
        if (!ok) {
            bad++;
            if (report) {
                harness_fail_begin(__FILE__, __LINE__);
                fprintf(stderr, "asock_loop_%s({%#" PRIx64 "}) = %d %s (not an allowed code)\n", names[i], l.id,
                        (int)got[i], asock_error_name(got[i]));
                harness_fail_end();
            }
        }
    }
    if ((d != 777 || id != 777 || s.id != 777) && report) {
        harness_fail_begin(__FILE__, __LINE__);
        fprintf(stderr, "an out parameter was written through a bad loop handle {%#" PRIx64 "}\n", l.id);
        harness_fail_end();
        bad++;
    }
    return bad;
}

static const asock_error ONLY_NULL[] = {ASOCK_E_ARGUMENT_NULL};
static const asock_error ONLY_DISPOSED[] = {ASOCK_E_OBJECT_DISPOSED};
static const asock_error FORGED[] = {ASOCK_E_ARGUMENT, ASOCK_E_OBJECT_DISPOSED};

/* ---- none handles ----------------------------------------------------------- */

TEST(none_socket_handle_is_argument_null) {
    every_socket_function((asock_socket){0}, ONLY_NULL, 1, true);
}

TEST(none_loop_free_is_ok) {
    CHECK_OK(asock_loop_free((asock_loop){0}));
    CHECK_OK(asock_loop_free((asock_loop){0}));
}

/* ---- stale handles ----------------------------------------------------------- */

TEST(closed_socket_is_disposed_everywhere) {
    asock_socket s;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s));
    CHECK_OK(asock_socket_close(s));
    every_socket_function(s, ONLY_DISPOSED, 1, true);
    CHECK_ERR(asock_socket_close(s), ASOCK_E_OBJECT_DISPOSED);
}

TEST(freed_loop_is_disposed_everywhere) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    CHECK_OK(asock_loop_free(l));
    every_loop_function(l, ONLY_DISPOSED, 1, true);
    CHECK_ERR(asock_loop_run(l), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_loop_free(l), ASOCK_E_OBJECT_DISPOSED);
}

TEST(socket_of_a_freed_loop_is_disposed_then_closes_once) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    asock_socket s;
    REQUIRE_OK(asock_socket_new(l, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, 0, &s));
    CHECK_OK(asock_loop_free(l));
    asock_endpoint out;
    int32_t v = 777;
    CHECK_ERR(asock_socket_local_endpoint(s, &out), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_socket_get_option(s, ASOCK_OPT_BROADCAST, &v), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_socket_set_option(s, ASOCK_OPT_BROADCAST, 1), ASOCK_E_OBJECT_DISPOSED);
    CHECK_EQ_INT(v, 777);
    CHECK_OK(asock_socket_close(s));
    CHECK_ERR(asock_socket_close(s), ASOCK_E_OBJECT_DISPOSED);
}

TEST(stale_ids_never_reach_a_slot_s_next_tenant) {
    enum { N = 64 };
    asock_socket old[N], fresh[N];
    for (int i = 0; i < N; i++)
        REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &old[i]));
    for (int i = 0; i < N; i++)
        CHECK_OK(asock_socket_close(old[i]));
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &fresh[i]));
            CHECK_OK(asock_socket_set_option(fresh[i], ASOCK_OPT_KEEP_ALIVE, 1));
        }
        for (int i = 0; i < N; i++) {
            for (int j = 0; j < N; j++)
                CHECK(old[i].id != fresh[j].id);
            int32_t v = 777;
            CHECK_ERR(asock_socket_get_option(old[i], ASOCK_OPT_KEEP_ALIVE, &v), ASOCK_E_OBJECT_DISPOSED);
            CHECK_ERR(asock_socket_set_option(old[i], ASOCK_OPT_KEEP_ALIVE, 0), ASOCK_E_OBJECT_DISPOSED);
            CHECK_ERR(asock_socket_close(old[i]), ASOCK_E_OBJECT_DISPOSED);
            CHECK_EQ_INT(v, 777);
        }
        /* The stale calls did not touch the new sockets. */
        for (int i = 0; i < N; i++) {
            int32_t v = -1;
            CHECK_OK(asock_socket_get_option(fresh[i], ASOCK_OPT_KEEP_ALIVE, &v));
            CHECK_EQ_INT(v, 1);
            CHECK_OK(asock_socket_close(fresh[i]));
        }
        /* This round's sockets are stale too from now on. */
        for (int i = 0; i < N; i++) {
            int32_t v = 777;
            CHECK_ERR(asock_socket_get_option(fresh[i], ASOCK_OPT_KEEP_ALIVE, &v), ASOCK_E_OBJECT_DISPOSED);
        }
    }
}

TEST(double_free_and_double_close) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    CHECK_OK(asock_loop_free(l));
    CHECK_ERR(asock_loop_free(l), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_loop_free(l), ASOCK_E_OBJECT_DISPOSED);
    asock_socket s;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_DGRAM, 0, &s));
    CHECK_OK(asock_socket_close(s));
    CHECK_ERR(asock_socket_close(s), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_socket_close(s), ASOCK_E_OBJECT_DISPOSED);
}

/* ---- forged handles ------------------------------------------------------------- */

static bool is_live(uint64_t id, const uint64_t *live, int n) {
    for (int i = 0; i < n; i++)
        if (live[i] == id)
            return true;
    return false;
}

TEST(forged_socket_and_loop_ids) {
    asock_loop l1, l2;
    REQUIRE_OK(asock_loop_new(&l1));
    REQUIRE_OK(asock_loop_new(&l2));
    asock_socket s1, s2, s3;
    REQUIRE_OK(asock_socket_new(l1, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s1));
    REQUIRE_OK(asock_socket_new(l2, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, 0, &s2));
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_DGRAM, 0, &s3));
    CHECK_OK(asock_socket_set_option(s1, ASOCK_OPT_REUSE_ADDRESS, 1));
    const uint64_t live_sockets[] = {s1.id, s2.id, s3.id};
    const uint64_t live_loops[] = {l1.id, l2.id};
    const uint64_t all_live[] = {s1.id, s2.id, s3.id, l1.id, l2.id};

    /* Wrong kind: a socket id passed as a loop and a loop id as a socket. */
    for (int i = 0; i < 3; i++)
        every_loop_function((asock_loop){live_sockets[i]}, FORGED, 2, true);
    for (int i = 0; i < 2; i++)
        every_socket_function((asock_socket){live_loops[i]}, FORGED, 2, true);

    /* Neighbours and altered bits of real ids. */
    const uint64_t tweaks_add[] = {1, (uint64_t)-1, 2, 0x100000000ull, (uint64_t)-0x100000000ll,
                                   0x1000000000000ull};
    const uint64_t tweaks_xor[] = {0x0000000100000000ull, 0x0000FF0000000000ull, 0x00FFFFFF00000000ull,
                                   0x0100000000000000ull, 0xFF00000000000000ull, 0x8000000000000000ull,
                                   0x0000000080000000ull, 0x00000000FFFFFFFFull};
    for (int k = 0; k < 5; k++) {
        uint64_t base = all_live[k];
        for (size_t t = 0; t < sizeof tweaks_add / sizeof tweaks_add[0] + sizeof tweaks_xor / sizeof tweaks_xor[0];
             t++) {
            uint64_t id = t < sizeof tweaks_add / sizeof tweaks_add[0]
                              ? base + tweaks_add[t]
                              : base ^ tweaks_xor[t - sizeof tweaks_add / sizeof tweaks_add[0]];
            if (id == 0 || is_live(id, all_live, 5))
                continue;
            every_socket_function((asock_socket){id}, FORGED, 2, true);
            every_loop_function((asock_loop){id}, FORGED, 2, true);
        }
    }

    /* Random bits. */
    uint64_t seed = 0x9E3779B97F4A7C15ull;
    int bad = 0;
    for (int i = 0; i < 2000; i++) {
        uint64_t id = rnd(&seed);
        if (i % 4 == 1)
            id &= 0x00000000FFFFFFFFull; /* small numbers */
        if (i % 4 == 2)
            id = (id & 0xFF000000FFFFFFFFull); /* generation 0 */
        if (id == 0 || is_live(id, all_live, 5))
            continue;
        bad += every_socket_function((asock_socket){id}, FORGED, 2, bad < 10);
        bad += every_loop_function((asock_loop){id}, FORGED, 2, bad < 10);
    }
    CHECK_EQ_INT(bad, 0);

    /* The real handles are untouched by all of that. */
    int32_t v = -1;
    CHECK_OK(asock_socket_get_option(s1, ASOCK_OPT_REUSE_ADDRESS, &v));
    CHECK_EQ_INT(v, 1);
    CHECK_OK(asock_socket_get_option(s2, ASOCK_OPT_REUSE_ADDRESS, &v));
    CHECK_OK(asock_socket_get_option(s3, ASOCK_OPT_REUSE_ADDRESS, &v));
    uint32_t d = 0;
    CHECK_OK(asock_loop_post(l1, cb_nop, NULL));
    CHECK_OK(asock_loop_run_once(l1, 0, &d));
    CHECK_EQ_INT(d, 1);
    CHECK_OK(asock_loop_run_once(l2, 0, NULL));
    CHECK_OK(asock_socket_close(s1));
    CHECK_OK(asock_socket_close(s2));
    CHECK_OK(asock_socket_close(s3));
    CHECK_OK(asock_loop_free(l1));
    CHECK_OK(asock_loop_free(l2));
}

/* ---- concurrent close / free of one handle ----------------------------------------- */

#define RACERS 6

struct racer {
    pthread_barrier_t *go;
    uint64_t id;
    bool loop;
    asock_error result;
};

static void *racer_main(void *arg) {
    struct racer *r = arg;
    pthread_barrier_wait(r->go);
    r->result = r->loop ? asock_loop_free((asock_loop){r->id}) : asock_socket_close((asock_socket){r->id});
    return NULL;
}

static void race_release(uint64_t id, bool loop) {
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, RACERS);
    pthread_t t[RACERS];
    struct racer r[RACERS];
    for (int i = 0; i < RACERS; i++) {
        r[i] = (struct racer){&go, id, loop, -12345};
        if (pthread_create(&t[i], NULL, racer_main, &r[i]) != 0) {
            harness_fail_cond(__FILE__, __LINE__, "pthread_create");
            exit(1);
        }
    }
    int ok = 0, disposed = 0;
    for (int i = 0; i < RACERS; i++) {
        pthread_join(t[i], NULL);
        if (r[i].result == ASOCK_OK)
            ok++;
        else if (r[i].result == ASOCK_E_OBJECT_DISPOSED)
            disposed++;
        else
            harness_fail_code(__FILE__, __LINE__, loop ? "concurrent asock_loop_free" : "concurrent asock_socket_close",
                              r[i].result, ASOCK_E_OBJECT_DISPOSED);
    }
    pthread_barrier_destroy(&go);
    CHECK_EQ_INT(ok, 1);
    CHECK_EQ_INT(disposed, RACERS - 1);
}

TEST(concurrent_close_and_free_of_one_handle_succeed_exactly_once) {
    for (int round = 0; round < 20; round++) {
        asock_socket s;
        REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s));
        race_release(s.id, false);
        asock_loop l;
        REQUIRE_OK(asock_loop_new(&l));
        if (round % 2)
            REQUIRE_OK(asock_loop_start_thread(l));
        race_release(l.id, true);
    }
}

/* ---- use while another thread closes ------------------------------------------------ */

#define USERS 3

struct user {
    pthread_barrier_t *go;
    asock_socket s;
    int ok_after_disposed;
    int unexpected;
    int oks;
    bool saw_disposed;
};

static void *user_main(void *arg) {
    struct user *u = arg;
    pthread_barrier_wait(u->go);
    int64_t deadline = now_ms() + 10000;
    int after = 0; /* calls made after the first ObjectDisposed */
    for (long i = 0; after < 100 && now_ms() < deadline; i++) {
        int32_t v = 0;
        asock_error e = (i % 2) ? asock_socket_set_option(u->s, ASOCK_OPT_KEEP_ALIVE, (int32_t)(i % 4 == 1))
                                : asock_socket_get_option(u->s, ASOCK_OPT_KEEP_ALIVE, &v);
        if (e == ASOCK_OK) {
            u->oks++;
            if (u->saw_disposed)
                u->ok_after_disposed++;
        } else if (e == ASOCK_E_OBJECT_DISPOSED) {
            u->saw_disposed = true;
        } else {
            u->unexpected++;
        }
        if (u->saw_disposed)
            after++;
    }
    return NULL;
}

TEST(calls_racing_a_close_see_ok_then_only_disposed) {
    for (int round = 0; round < 20; round++) {
        asock_socket s;
        REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s));
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, USERS + 1);
        pthread_t t[USERS];
        struct user u[USERS];
        for (int i = 0; i < USERS; i++) {
            u[i] = (struct user){&go, s, 0, 0, 0, false};
            if (pthread_create(&t[i], NULL, user_main, &u[i]) != 0) {
                harness_fail_cond(__FILE__, __LINE__, "pthread_create");
                exit(1);
            }
        }
        pthread_barrier_wait(&go);
        CHECK_OK(asock_socket_close(s));
        for (int i = 0; i < USERS; i++) {
            pthread_join(t[i], NULL);
            CHECK(u[i].saw_disposed);
            CHECK_EQ_INT(u[i].ok_after_disposed, 0);
            CHECK_EQ_INT(u[i].unexpected, 0);
        }
        pthread_barrier_destroy(&go);
    }
}

/* ---- the hammer -------------------------------------------------------------------- */

#define HAMMER_THREADS 4
#define HAMMER_ITERS 2000
#define SHARED 32
#define STALE_KEEP 64

static _Atomic uint64_t shared_sockets[SHARED];
static atomic_int hammer_unexpected;
static asock_loop hammer_loop; /* runs on a library thread during the hammer */

struct hammer {
    int index;
    uint64_t seed;
    uint64_t stale[STALE_KEEP];
    int n_stale;
    long calls;
    pthread_barrier_t *go;
};

static void unexpected(const char *what, uint64_t id, asock_error e) {
    if (atomic_fetch_add(&hammer_unexpected, 1) < 20) {
        harness_fail_begin(__FILE__, __LINE__);
        fprintf(stderr, "hammer: %s({%#" PRIx64 "}) = %d %s (not an allowed code)\n", what, id, (int)e,
                asock_error_name(e));
        harness_fail_end();
    } else {
        atomic_fetch_add(&harness_current_failures, 1);
    }
}

static bool in(asock_error e, const asock_error *set, int n) {
    for (int i = 0; i < n; i++)
        if (e == set[i])
            return true;
    return false;
}

#define EXPECT_IN(call, id, ...)                                                   \
    do {                                                                           \
        const asock_error set_[] = {__VA_ARGS__};                                  \
        asock_error e_ = (call);                                                   \
        h->calls++;                                                                \
        if (!in(e_, set_, (int)(sizeof set_ / sizeof set_[0])))                    \
            unexpected(#call, (id), e_);                                           \
    } while (0)

static void remember_stale(struct hammer *h, uint64_t id) {
    h->stale[h->n_stale % STALE_KEEP] = id;
    h->n_stale++;
}

/* Use a shared handle that any thread may close at any moment. */
static void use_shared(struct hammer *h, asock_socket s) {
    asock_endpoint ep = loopback4(), out;
    int32_t v;
    switch (rnd(&h->seed) % 8) {
    case 0:
        EXPECT_IN(asock_socket_bind(s, &ep), s.id, ASOCK_OK, ASOCK_INVALID_ARGUMENT, ASOCK_E_OBJECT_DISPOSED);
        break;
    case 1:
        EXPECT_IN(asock_socket_listen(s, 8), s.id, ASOCK_OK, ASOCK_E_OBJECT_DISPOSED);
        break;
    case 2:
        EXPECT_IN(asock_socket_local_endpoint(s, &out), s.id, ASOCK_OK, ASOCK_E_INVALID_OPERATION,
                  ASOCK_E_OBJECT_DISPOSED);
        break;
    case 3:
        EXPECT_IN(asock_socket_remote_endpoint(s, &out), s.id, ASOCK_NOT_CONNECTED, ASOCK_E_OBJECT_DISPOSED);
        break;
    case 4:
        EXPECT_IN(asock_socket_set_option(s, ASOCK_OPT_NO_DELAY, 1), s.id, ASOCK_OK, ASOCK_E_OBJECT_DISPOSED);
        break;
    case 5:
        v = -1;
        EXPECT_IN(asock_socket_get_option(s, ASOCK_OPT_ACCEPT_RECEIVE_TIMEOUT_MS, &v), s.id, ASOCK_OK,
                  ASOCK_E_OBJECT_DISPOSED);
        if (v != -1 && v != 30000)
            unexpected("get_option(ACCEPT_RECEIVE_TIMEOUT_MS) value", s.id, v);
        break;
    case 6:
        /* Linux lets a listening socket shut down its receive side. */
        EXPECT_IN(asock_socket_shutdown(s, ASOCK_SHUTDOWN_BOTH), s.id, ASOCK_OK, ASOCK_NOT_CONNECTED,
                  ASOCK_E_OBJECT_DISPOSED);
        break;
    default:
        EXPECT_IN(asock_socket_set_option(s, ASOCK_OPT_TTL, 0), s.id, ASOCK_E_ARGUMENT_OUT_OF_RANGE,
                  ASOCK_E_OBJECT_DISPOSED);
        break;
    }
}

static void close_shared(struct hammer *h, int slot) {
    uint64_t id = atomic_exchange(&shared_sockets[slot], 0);
    if (id == 0)
        return;
    asock_error e = asock_socket_close((asock_socket){id});
    h->calls++;
    /* This thread took the id out of the table: nobody else closes it. */
    if (e != ASOCK_OK)
        unexpected("asock_socket_close(own)", id, e);
    else
        remember_stale(h, id);
}

static void hammer_step(struct hammer *h, int i) {
    uint64_t r = rnd(&h->seed);
    int slot = (int)((r >> 32) % SHARED);
    int action = (int)(r % 100);
    if (h->index == 0 && action < 60)
        action = 95; /* thread 0 mostly closes what the others use */

    if (action < 25) {
        /* create and publish */
        asock_socket s;
        asock_loop l = (r & 0x100) ? hammer_loop : (asock_loop){0};
        asock_error e = asock_socket_new(l, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s);
        h->calls++;
        if (e != ASOCK_OK) {
            unexpected("asock_socket_new", 0, e);
            return;
        }
        uint64_t old = atomic_exchange(&shared_sockets[slot], s.id);
        if (old != 0) {
            e = asock_socket_close((asock_socket){old});
            h->calls++;
            if (e != ASOCK_OK)
                unexpected("asock_socket_close(replaced)", old, e);
            else
                remember_stale(h, old);
        }
    } else if (action < 60) {
        /* use a shared one (another thread may be closing it right now) */
        uint64_t id = atomic_load(&shared_sockets[slot]);
        if (id != 0)
            use_shared(h, (asock_socket){id});
    } else if (action < 75) {
        /* a stale handle this thread closed: always disposed */
        if (h->n_stale > 0) {
            int n = h->n_stale < STALE_KEEP ? h->n_stale : STALE_KEEP;
            uint64_t id = h->stale[rnd(&h->seed) % (uint64_t)n];
            int32_t v = 777;
            EXPECT_IN(asock_socket_get_option((asock_socket){id}, ASOCK_OPT_KEEP_ALIVE, &v), id,
                      ASOCK_E_OBJECT_DISPOSED);
            EXPECT_IN(asock_socket_close((asock_socket){id}), id, ASOCK_E_OBJECT_DISPOSED);
            if (v != 777)
                unexpected("stale get_option wrote its out value", id, v);
        }
    } else if (action < 85) {
        /* forged: random bits, and the none handle */
        uint64_t id = rnd(&h->seed);
        int32_t v = 777;
        EXPECT_IN(asock_socket_get_option((asock_socket){id}, ASOCK_OPT_KEEP_ALIVE, &v), id, ASOCK_E_ARGUMENT,
                  ASOCK_E_OBJECT_DISPOSED);
        EXPECT_IN(asock_socket_close((asock_socket){id}), id, ASOCK_E_ARGUMENT, ASOCK_E_OBJECT_DISPOSED);
        EXPECT_IN(asock_loop_post((asock_loop){id}, cb_nop, NULL), id, ASOCK_E_ARGUMENT, ASOCK_E_OBJECT_DISPOSED);
        EXPECT_IN(asock_socket_close((asock_socket){0}), 0, ASOCK_E_ARGUMENT_NULL);
        if (v != 777)
            unexpected("forged get_option wrote its out value", id, v);
    } else if (action < 90 || i % 97 == 0) {
        /* a loop's whole life with a socket on it */
        asock_loop l;
        asock_socket s;
        asock_error e = asock_loop_new(&l);
        h->calls++;
        if (e != ASOCK_OK) {
            unexpected("asock_loop_new", 0, e);
            return;
        }
        e = asock_socket_new(l, ASOCK_AF_INET6, ASOCK_SOCK_DGRAM, 0, &s);
        h->calls++;
        if (e != ASOCK_OK)
            unexpected("asock_socket_new(own loop)", l.id, e);
        if (r & 0x200)
            EXPECT_IN(asock_loop_start_thread(l), l.id, ASOCK_OK);
        EXPECT_IN(asock_loop_free(l), l.id, ASOCK_OK);
        EXPECT_IN(asock_loop_free(l), l.id, ASOCK_E_OBJECT_DISPOSED);
        EXPECT_IN(asock_loop_post(l, cb_nop, NULL), l.id, ASOCK_E_OBJECT_DISPOSED);
        if (e == ASOCK_OK) {
            int32_t v = 777;
            EXPECT_IN(asock_socket_get_option(s, ASOCK_OPT_BROADCAST, &v), s.id, ASOCK_E_OBJECT_DISPOSED);
            EXPECT_IN(asock_socket_close(s), s.id, ASOCK_OK);
            EXPECT_IN(asock_socket_close(s), s.id, ASOCK_E_OBJECT_DISPOSED);
        }
    } else {
        close_shared(h, slot);
    }
}

static void *hammer_main(void *arg) {
    struct hammer *h = arg;
    pthread_barrier_wait(h->go);
    for (int i = 0; i < HAMMER_ITERS; i++)
        hammer_step(h, i);
    return NULL;
}

TEST(hammer_many_threads_create_use_close_and_forge) {
    /* Warm up the default loop so the descriptor count below is stable. */
    asock_socket warm;
    REQUIRE_OK(asock_socket_new((asock_loop){0}, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &warm));
    CHECK_OK(asock_socket_close(warm));
    int fds_before = count_open_fds();

    REQUIRE_OK(asock_loop_new(&hammer_loop));
    REQUIRE_OK(asock_loop_start_thread(hammer_loop));
    for (int i = 0; i < SHARED; i++)
        atomic_store(&shared_sockets[i], 0);
    atomic_store(&hammer_unexpected, 0);

    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, HAMMER_THREADS);
    pthread_t t[HAMMER_THREADS];
    struct hammer *h = calloc(HAMMER_THREADS, sizeof *h);
    REQUIRE(h != NULL);
    for (int i = 0; i < HAMMER_THREADS; i++) {
        h[i].index = i;
        h[i].seed = 0x1234567ull * (uint64_t)(i + 1) + 0xABCDEFull;
        h[i].go = &go;
        if (pthread_create(&t[i], NULL, hammer_main, &h[i]) != 0) {
            harness_fail_cond(__FILE__, __LINE__, "pthread_create");
            exit(1);
        }
    }
    long calls = 0;
    for (int i = 0; i < HAMMER_THREADS; i++) {
        pthread_join(t[i], NULL);
        calls += h[i].calls;
    }
    pthread_barrier_destroy(&go);
    CHECK(calls >= HAMMER_THREADS * HAMMER_ITERS / 2);
    CHECK_EQ_INT(atomic_load(&hammer_unexpected), 0);

    /* Everything stale stays stale. */
    for (int i = 0; i < HAMMER_THREADS; i++) {
        int n = h[i].n_stale < STALE_KEEP ? h[i].n_stale : STALE_KEEP;
        for (int k = 0; k < n; k++)
            CHECK_ERR(asock_socket_close((asock_socket){h[i].stale[k]}), ASOCK_E_OBJECT_DISPOSED);
    }
    /* Close what is left: each exactly once. */
    for (int i = 0; i < SHARED; i++) {
        uint64_t id = atomic_exchange(&shared_sockets[i], 0);
        if (id != 0) {
            CHECK_OK(asock_socket_close((asock_socket){id}));
            CHECK_ERR(asock_socket_close((asock_socket){id}), ASOCK_E_OBJECT_DISPOSED);
        }
    }
    CHECK_OK(asock_loop_free(hammer_loop));
    CHECK_EQ_INT(count_open_fds(), fds_before);
    free(h);
}

int main(void) {
    RUN(none_socket_handle_is_argument_null);
    RUN(none_loop_free_is_ok);
    RUN(closed_socket_is_disposed_everywhere);
    RUN(freed_loop_is_disposed_everywhere);
    RUN(socket_of_a_freed_loop_is_disposed_then_closes_once);
    RUN(stale_ids_never_reach_a_slot_s_next_tenant);
    RUN(double_free_and_double_close);
    RUN(forged_socket_and_loop_ids);
    RUN(concurrent_close_and_free_of_one_handle_succeed_exactly_once);
    RUN(calls_racing_a_close_see_ok_then_only_disposed);
    RUN(hammer_many_threads_create_use_close_and_forge);
    return harness_finish();
}
