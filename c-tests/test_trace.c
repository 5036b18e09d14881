/*
 * test_trace.c — section 8 of the contract: network tracing.
 *
 * The tests use loops they make themselves and never the default loop, so
 * no background thread emits records while they count.
 */
#include "harness.h"

#include <limits.h>

#define MAX_THREADS 32

struct collector {
    pthread_mutex_t mu;
    int n;
    int by_level[5]; /* 0..3, [4]: anything else */
    int cat_loop, cat_socket, cat_smtp, cat_other;
    int empty_text;
    int max_depth; /* deepest nesting of the callback on any one thread */
    pthread_t threads[MAX_THREADS];
    int n_threads;
    char last_text[256];
    char last_category[32];
    /* optional: on the first record, call back into asock */
    bool reenter;
    int reentered;
};

static void collector_init(struct collector *c) {
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
}

static void collector_destroy(struct collector *c) { pthread_mutex_destroy(&c->mu); }

static int collected(struct collector *c) {
    pthread_mutex_lock(&c->mu);
    int n = c->n;
    pthread_mutex_unlock(&c->mu);
    return n;
}

static _Thread_local int trace_depth; /* nesting of on_trace on this thread */

static void on_trace(int32_t level, const char *category, const char *text, void *userdata) {
    struct collector *c = userdata;
    trace_depth++;
    pthread_mutex_lock(&c->mu);
    if (trace_depth > c->max_depth)
        c->max_depth = trace_depth;
    c->n++;
    c->by_level[(level >= 0 && level <= 3) ? level : 4]++;
    if (category == NULL)
        c->cat_other++;
    else if (strcmp(category, "loop") == 0)
        c->cat_loop++;
    else if (strcmp(category, "socket") == 0)
        c->cat_socket++;
    else if (strcmp(category, "smtp") == 0)
        c->cat_smtp++;
    else
        c->cat_other++;
    if (text == NULL || text[0] == '\0')
        c->empty_text++;
    else
        snprintf(c->last_text, sizeof c->last_text, "%s", text);
    snprintf(c->last_category, sizeof c->last_category, "%s", category ? category : "(null)");
    pthread_t self = pthread_self();
    bool known = false;
    for (int i = 0; i < c->n_threads; i++)
        if (pthread_equal(c->threads[i], self))
            known = true;
    if (!known && c->n_threads < MAX_THREADS)
        c->threads[c->n_threads++] = self;
    bool reenter = c->reenter && c->reentered == 0;
    if (reenter)
        c->reentered++;
    pthread_mutex_unlock(&c->mu);

    if (reenter) {
        /* Calls that trace, from inside the trace callback: their records are
         * dropped (never delivered recursively, never deadlock). */
        asock_loop l;
        if (asock_loop_new(&l) == ASOCK_OK) {
            asock_socket s;
            if (asock_socket_new(l, ASOCK_AF_INET, ASOCK_SOCK_DGRAM, 0, &s) == ASOCK_OK)
                asock_socket_close(s);
            asock_loop_free(l);
        }
    }

    trace_depth--;
}

/* A second callback that only counts, to tell two sinks apart. */
static atomic_int other_sink_records;
static void on_trace_other(int32_t level, const char *category, const char *text, void *userdata) {
    (void)level;
    (void)category;
    (void)text;
    (void)userdata;
    atomic_fetch_add(&other_sink_records, 1);
}

static void trace_off(void) { CHECK_OK(asock_set_trace(NULL, ASOCK_TRACE_OFF, NULL)); }

/* Some traced work: a loop, a socket bound on it, closed, the loop freed. */
static void traced_work(void) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    asock_socket s;
    REQUIRE_OK(asock_socket_new(l, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s));
    asock_endpoint ep;
    CHECK_OK(asock_endpoint_init(ASOCK_AF_INET, true, 0, &ep));
    CHECK_OK(asock_socket_bind(s, &ep));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(l));
}

/* A bind that fails (address in use), on its own loop. */
static void failing_bind(void) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    asock_socket a, b;
    REQUIRE_OK(asock_socket_new(l, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &a));
    REQUIRE_OK(asock_socket_new(l, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &b));
    asock_endpoint ep, taken;
    CHECK_OK(asock_endpoint_init(ASOCK_AF_INET, true, 0, &ep));
    CHECK_OK(asock_socket_bind(a, &ep));
    CHECK_OK(asock_socket_local_endpoint(a, &taken));
    CHECK_ERR(asock_socket_bind(b, &taken), ASOCK_ADDRESS_ALREADY_IN_USE);
    CHECK_OK(asock_socket_close(a));
    CHECK_OK(asock_socket_close(b));
    CHECK_OK(asock_loop_free(l));
}

TEST(bad_levels_are_out_of_range) {
    struct collector c;
    collector_init(&c);
    CHECK_ERR(asock_set_trace(on_trace, 4, &c), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_set_trace(on_trace, -1, &c), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_set_trace(on_trace, INT_MAX, &c), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_set_trace(on_trace, INT_MIN, &c), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    /* None of those installed anything. */
    traced_work();
    CHECK_EQ_INT(collected(&c), 0);
    trace_off();
    collector_destroy(&c);
}

TEST(info_level_collects_loop_and_socket_records) {
    struct collector c;
    collector_init(&c);
    REQUIRE_OK(asock_set_trace(on_trace, ASOCK_TRACE_INFO, &c));

    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    int after_loop = collected(&c);
    CHECK(after_loop >= 1);
    CHECK(c.cat_loop >= 1);

    asock_socket s;
    REQUIRE_OK(asock_socket_new(l, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s));
    int after_create = collected(&c);
    CHECK(after_create > after_loop);
    CHECK(c.cat_socket >= 1);

    asock_endpoint ep;
    CHECK_OK(asock_endpoint_init(ASOCK_AF_INET, true, 0, &ep));
    CHECK_OK(asock_socket_bind(s, &ep));
    int after_bind = collected(&c);
    CHECK(after_bind > after_create);
    CHECK(strcmp(c.last_category, "socket") == 0);

    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(l));
    trace_off();

    pthread_mutex_lock(&c.mu);
    CHECK(c.n >= 4);
    CHECK_EQ_INT(c.by_level[0], 0);
    CHECK_EQ_INT(c.by_level[3], 0); /* nothing above INFO */
    CHECK_EQ_INT(c.by_level[4], 0);
    CHECK(c.by_level[2] >= 3);
    CHECK_EQ_INT(c.cat_other, 0);
    CHECK_EQ_INT(c.cat_smtp, 0);
    CHECK_EQ_INT(c.empty_text, 0);
    CHECK_EQ_INT(c.max_depth, 1);
    /* Delivered on the thread that did the work. */
    CHECK_EQ_INT(c.n_threads, 1);
    CHECK(c.n_threads == 1 && pthread_equal(c.threads[0], pthread_self()));
    pthread_mutex_unlock(&c.mu);
    collector_destroy(&c);
}

TEST(error_level_gets_only_failures) {
    struct collector c;
    collector_init(&c);
    REQUIRE_OK(asock_set_trace(on_trace, ASOCK_TRACE_ERROR, &c));
    /* Successful work traces nothing at ERROR level. */
    traced_work();
    CHECK_EQ_INT(collected(&c), 0);
    /* A failing bind does. */
    failing_bind();
    trace_off();
    pthread_mutex_lock(&c.mu);
    CHECK(c.n >= 1);
    CHECK_EQ_INT(c.by_level[1], c.n);
    CHECK(c.cat_socket >= 1);
    pthread_mutex_unlock(&c.mu);
    collector_destroy(&c);
}

TEST(info_level_also_gets_failures) {
    struct collector c;
    collector_init(&c);
    REQUIRE_OK(asock_set_trace(on_trace, ASOCK_TRACE_INFO, &c));
    failing_bind();
    trace_off();
    CHECK(c.by_level[1] >= 1);
    CHECK(c.by_level[2] >= 1);
    CHECK_EQ_INT(c.by_level[3], 0);
    collector_destroy(&c);
}

TEST(verbose_level_gets_at_least_what_info_gets) {
    struct collector info, verbose;
    collector_init(&info);
    collector_init(&verbose);
    REQUIRE_OK(asock_set_trace(on_trace, ASOCK_TRACE_INFO, &info));
    traced_work();
    REQUIRE_OK(asock_set_trace(on_trace, ASOCK_TRACE_VERBOSE, &verbose));
    traced_work();
    trace_off();
    CHECK(info.n > 0);
    CHECK(verbose.n >= info.n);
    CHECK(verbose.by_level[2] >= info.by_level[2]);
    CHECK_EQ_INT(verbose.by_level[0] + verbose.by_level[4], 0);
    collector_destroy(&info);
    collector_destroy(&verbose);
}

TEST(null_callback_and_level_off_turn_tracing_off) {
    struct collector c;
    collector_init(&c);
    REQUIRE_OK(asock_set_trace(on_trace, ASOCK_TRACE_VERBOSE, &c));
    traced_work();
    int n = collected(&c);
    CHECK(n > 0);
    CHECK_OK(asock_set_trace(NULL, ASOCK_TRACE_VERBOSE, &c));
    traced_work();
    failing_bind();
    CHECK_EQ_INT(collected(&c), n);

    /* ASOCK_TRACE_OFF with a callback is off too. */
    REQUIRE_OK(asock_set_trace(on_trace, ASOCK_TRACE_INFO, &c));
    traced_work();
    int m = collected(&c);
    CHECK(m > n);
    CHECK_OK(asock_set_trace(on_trace, ASOCK_TRACE_OFF, &c));
    traced_work();
    failing_bind();
    CHECK_EQ_INT(collected(&c), m);
    trace_off();
    collector_destroy(&c);
}

TEST(userdata_is_passed_through_and_a_new_sink_replaces_the_old) {
    struct collector a, b;
    collector_init(&a);
    collector_init(&b);
    REQUIRE_OK(asock_set_trace(on_trace, ASOCK_TRACE_INFO, &a));
    traced_work();
    int na = collected(&a);
    CHECK(na > 0);
    REQUIRE_OK(asock_set_trace(on_trace, ASOCK_TRACE_INFO, &b));
    traced_work();
    CHECK_EQ_INT(collected(&a), na); /* the old userdata gets nothing more */
    CHECK(collected(&b) > 0);
    atomic_store(&other_sink_records, 0);
    int nb = collected(&b);
    REQUIRE_OK(asock_set_trace(on_trace_other, ASOCK_TRACE_INFO, NULL));
    traced_work();
    CHECK(atomic_load(&other_sink_records) > 0);
    CHECK_EQ_INT(collected(&a), na);
    CHECK_EQ_INT(collected(&b), nb);
    trace_off();
    collector_destroy(&a);
    collector_destroy(&b);
}

TEST(records_from_inside_the_callback_are_dropped) {
    struct collector plain, reentrant;
    collector_init(&plain);
    collector_init(&reentrant);
    REQUIRE_OK(asock_set_trace(on_trace, ASOCK_TRACE_INFO, &plain));
    traced_work();
    reentrant.reenter = true;
    REQUIRE_OK(asock_set_trace(on_trace, ASOCK_TRACE_INFO, &reentrant));
    traced_work();
    trace_off();
    CHECK_EQ_INT(reentrant.reentered, 1);
    CHECK_EQ_INT(reentrant.max_depth, 1);
    /* Exactly the records of the outer work, none of the nested calls. */
    CHECK_EQ_INT(reentrant.n, plain.n);
    collector_destroy(&plain);
    collector_destroy(&reentrant);
}

#define TRACE_THREADS 4
#define TRACE_ROUNDS 100

struct trace_worker {
    pthread_barrier_t *go;
    pthread_t self;
    int failures;
};

static void *trace_worker_main(void *arg) {
    struct trace_worker *w = arg;
    w->self = pthread_self();
    pthread_barrier_wait(w->go);
    for (int i = 0; i < TRACE_ROUNDS; i++) {
        asock_loop l;
        asock_socket s;
        asock_endpoint ep;
        if (asock_loop_new(&l) != ASOCK_OK) {
            w->failures++;
            continue;
        }
        if (asock_socket_new(l, ASOCK_AF_INET, ASOCK_SOCK_STREAM, 0, &s) != ASOCK_OK)
            w->failures++;
        else {
            asock_endpoint_init(ASOCK_AF_INET, true, 0, &ep);
            if (asock_socket_bind(s, &ep) != ASOCK_OK)
                w->failures++;
            if (asock_socket_close(s) != ASOCK_OK)
                w->failures++;
        }
        if (asock_loop_free(l) != ASOCK_OK)
            w->failures++;
    }
    return NULL;
}

TEST(records_from_several_threads_are_all_delivered) {
    /* Baseline: the records of one round on one thread. */
    struct collector one;
    collector_init(&one);
    REQUIRE_OK(asock_set_trace(on_trace, ASOCK_TRACE_INFO, &one));
    traced_work();
    trace_off();
    int per_round = one.n;
    CHECK(per_round > 0);
    collector_destroy(&one);

    struct collector c;
    collector_init(&c);
    REQUIRE_OK(asock_set_trace(on_trace, ASOCK_TRACE_INFO, &c));
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, TRACE_THREADS);
    pthread_t t[TRACE_THREADS];
    struct trace_worker w[TRACE_THREADS];
    for (int i = 0; i < TRACE_THREADS; i++) {
        w[i] = (struct trace_worker){&go, 0, 0};
        if (pthread_create(&t[i], NULL, trace_worker_main, &w[i]) != 0) {
            harness_fail_cond(__FILE__, __LINE__, "pthread_create");
            exit(1);
        }
    }
    for (int i = 0; i < TRACE_THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&go);
    trace_off();

    for (int i = 0; i < TRACE_THREADS; i++)
        CHECK_EQ_INT(w[i].failures, 0);
    CHECK_EQ_INT(c.n, TRACE_THREADS * TRACE_ROUNDS * per_round);
    CHECK_EQ_INT(c.max_depth, 1);
    CHECK_EQ_INT(c.cat_other, 0);
    /* Each worker thread delivered its own records. */
    for (int i = 0; i < TRACE_THREADS; i++) {
        bool seen = false;
        for (int k = 0; k < c.n_threads; k++)
            if (pthread_equal(c.threads[k], w[i].self))
                seen = true;
        CHECK(seen);
    }
    collector_destroy(&c);
}

struct loop_thread_probe {
    atomic_int ran;
};

static void cb_ran(void *state) { atomic_fetch_add(&((struct loop_thread_probe *)state)->ran, 1); }

TEST(library_thread_records_arrive_and_tracing_turns_off_cleanly) {
    /* A loop on its own library thread traces from there; turning tracing
     * off while it runs is safe and stops the records. */
    struct collector c;
    collector_init(&c);
    REQUIRE_OK(asock_set_trace(on_trace, ASOCK_TRACE_VERBOSE, &c));
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    REQUIRE_OK(asock_loop_start_thread(l));
    struct loop_thread_probe p = {0};
    CHECK_OK(asock_loop_post(l, cb_ran, &p));
    CHECK(wait_atomic_ge(&p.ran, 1, 10000));
    trace_off();
    int n = collected(&c);
    CHECK(n >= 2); /* at least "created" and the thread's start */
    pthread_mutex_lock(&c.mu);
    CHECK(c.n_threads >= 2); /* the caller's and the library thread's */
    pthread_mutex_unlock(&c.mu);
    CHECK_OK(asock_loop_free(l));
    CHECK_EQ_INT(collected(&c), n);
    collector_destroy(&c);
}

int main(void) {
    RUN(bad_levels_are_out_of_range);
    RUN(info_level_collects_loop_and_socket_records);
    RUN(error_level_gets_only_failures);
    RUN(info_level_also_gets_failures);
    RUN(verbose_level_gets_at_least_what_info_gets);
    RUN(null_callback_and_level_off_turn_tracing_off);
    RUN(userdata_is_passed_through_and_a_new_sink_replaces_the_old);
    RUN(records_from_inside_the_callback_are_dropped);
    RUN(records_from_several_threads_are_all_delivered);
    RUN(library_thread_records_arrive_and_tracing_turns_off_cleanly);
    int status = harness_finish();
    asock_set_trace(NULL, ASOCK_TRACE_OFF, NULL);
    return status;
}
