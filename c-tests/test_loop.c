/*
 * test_loop.c — section 3 of the contract: loops, threads, posting, timers.
 */
#include "harness.h"

#include <limits.h>

static pthread_t main_thread;

/* ---- common callbacks ---------------------------------------------------- */

static void cb_count(void *state) { atomic_fetch_add((atomic_int *)state, 1); }

struct where {
    atomic_int runs;
    pthread_t tid; /* written by the (single) loop thread, read after a wait */
};

static void cb_where(void *state) {
    struct where *w = state;
    w->tid = pthread_self();
    atomic_fetch_add(&w->runs, 1);
}

struct timer_rec {
    atomic_int calls;
    atomic_int ok;
    atomic_int aborted;
    atomic_int other;
    int64_t fired_ns;
    int order;
    pthread_t tid;
    atomic_int *seq; /* optional: shared firing counter, gives `order` */
    atomic_int *inside_add; /* optional: set while asock_loop_add_timer runs */
    atomic_int ran_inside_add;
};

static void timer_cb(void *state, asock_error status) {
    struct timer_rec *r = state;
    r->fired_ns = now_ns();
    r->tid = pthread_self();
    if (r->seq != NULL)
        r->order = atomic_fetch_add(r->seq, 1);
    if (r->inside_add != NULL && atomic_load(r->inside_add))
        atomic_fetch_add(&r->ran_inside_add, 1);
    if (status == ASOCK_OK)
        atomic_fetch_add(&r->ok, 1);
    else if (status == ASOCK_OPERATION_ABORTED)
        atomic_fetch_add(&r->aborted, 1);
    else
        atomic_fetch_add(&r->other, 1);
    atomic_fetch_add(&r->calls, 1);
}

static bool pred_calls_ge1(void *ctx) { return atomic_load(&((struct timer_rec *)ctx)->calls) >= 1; }

static const int WAIT_MS = 10000;

/* ---- new / free ----------------------------------------------------------- */

TEST(loop_new_and_free) {
    asock_loop a = {0}, b = {0};
    REQUIRE_OK(asock_loop_new(&a));
    REQUIRE_OK(asock_loop_new(&b));
    CHECK(a.id != 0);
    CHECK(b.id != 0);
    CHECK(a.id != b.id);
    CHECK_OK(asock_loop_free(a));
    CHECK_ERR(asock_loop_free(a), ASOCK_E_OBJECT_DISPOSED);
    CHECK_OK(asock_loop_free(b));
    CHECK_ERR(asock_loop_free(b), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_loop_new(NULL), ASOCK_E_ARGUMENT_NULL);
    /* A new loop after frees gets an id no earlier handle had. */
    asock_loop c;
    REQUIRE_OK(asock_loop_new(&c));
    CHECK(c.id != a.id && c.id != b.id);
    CHECK_ERR(asock_loop_free(a), ASOCK_E_OBJECT_DISPOSED);
    CHECK_OK(asock_loop_free(c));
}

TEST(free_none_loop_is_a_noop) {
    CHECK_OK(asock_loop_free((asock_loop){0}));
    CHECK_OK(asock_loop_free((asock_loop){0}));
    /* The default loop still works afterwards. */
    atomic_int n = 0;
    CHECK_OK(asock_loop_post((asock_loop){0}, cb_count, &n));
    CHECK(wait_atomic_ge(&n, 1, WAIT_MS));
}

/* ---- run on the caller's thread, stop ----------------------------------- */

struct stopper {
    asock_loop l;
    atomic_int *started;
    asock_error stop_result;
    bool saw_start;
};

static void *stopper_main(void *arg) {
    struct stopper *s = arg;
    s->saw_start = wait_atomic_ge(s->started, 1, WAIT_MS);
    s->stop_result = asock_loop_stop(s->l);
    return NULL;
}

TEST(run_on_caller_thread_stopped_from_another_thread) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    struct where w = {0};
    atomic_int started = 0;
    CHECK_OK(asock_loop_post(l, cb_where, &w));
    CHECK_OK(asock_loop_post(l, cb_count, &started));
    struct stopper s = {l, &started, -12345, false};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, stopper_main, &s) == 0);
    CHECK_OK(asock_loop_run(l)); /* returns once the other thread stops it */
    pthread_join(t, NULL);
    CHECK(s.saw_start);
    CHECK_OK(s.stop_result);
    CHECK_EQ_INT(atomic_load(&w.runs), 1);
    CHECK(pthread_equal(w.tid, main_thread));
    CHECK_OK(asock_loop_free(l));
}

struct stop_in_cb {
    asock_loop l;
    atomic_int runs;
    asock_error result;
};

static void cb_stop_self(void *state) {
    struct stop_in_cb *s = state;
    s->result = asock_loop_stop(s->l);
    atomic_fetch_add(&s->runs, 1);
}

TEST(run_stopped_from_a_callback) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    struct stop_in_cb s = {l, 0, -12345};
    CHECK_OK(asock_loop_post(l, cb_stop_self, &s));
    CHECK_OK(asock_loop_run(l));
    CHECK_EQ_INT(atomic_load(&s.runs), 1);
    CHECK_OK(s.result);
    /* And again: the loop can be run a second time. */
    CHECK_OK(asock_loop_post(l, cb_stop_self, &s));
    CHECK_OK(asock_loop_run(l));
    CHECK_EQ_INT(atomic_load(&s.runs), 2);
    CHECK_OK(asock_loop_free(l));
}

TEST(stop_before_run_makes_the_next_run_return) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    CHECK_OK(asock_loop_stop(l));
    atomic_int n = 0;
    CHECK_OK(asock_loop_post(l, cb_count, &n));
    CHECK_OK(asock_loop_run(l)); /* one turn, then returns */
    CHECK_EQ_INT(atomic_load(&n), 1);
    CHECK_OK(asock_loop_free(l));
}

struct runner {
    asock_loop l;
    asock_error result;
};

static void *runner_main(void *arg) {
    struct runner *r = arg;
    r->result = asock_loop_run(r->l);
    return NULL;
}

TEST(run_while_another_thread_runs_it_is_invalid) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    atomic_int started = 0;
    CHECK_OK(asock_loop_post(l, cb_count, &started));
    struct runner r = {l, -12345};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, runner_main, &r) == 0);
    CHECK(wait_atomic_ge(&started, 1, WAIT_MS));
    CHECK_ERR(asock_loop_run(l), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_loop_run_once(l, 0, NULL), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_loop_start_thread(l), ASOCK_E_INVALID_OPERATION);
    CHECK_OK(asock_loop_stop(l));
    pthread_join(t, NULL);
    CHECK_OK(r.result);
    CHECK_OK(asock_loop_free(l));
}

/* ---- run_once ------------------------------------------------------------- */

TEST(run_once_timeout_zero) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    uint32_t n = 12345;
    int64_t t0 = now_ms();
    CHECK_OK(asock_loop_run_once(l, 0, &n));
    CHECK_EQ_INT(n, 0);
    CHECK(now_ms() - t0 < 2000); /* did not wait */

    atomic_int count = 0;
    for (int i = 0; i < 3; i++)
        CHECK_OK(asock_loop_post(l, cb_count, &count));
    n = 12345;
    CHECK_OK(asock_loop_run_once(l, 0, &n));
    CHECK_EQ_INT(n, 3);
    CHECK_EQ_INT(atomic_load(&count), 3);
    n = 12345;
    CHECK_OK(asock_loop_run_once(l, 0, &n));
    CHECK_EQ_INT(n, 0);
    CHECK_EQ_INT(atomic_load(&count), 3);

    /* NULL out_dispatched is allowed. */
    CHECK_OK(asock_loop_post(l, cb_count, &count));
    CHECK_OK(asock_loop_run_once(l, 0, NULL));
    CHECK_EQ_INT(atomic_load(&count), 4);
    CHECK_OK(asock_loop_free(l));
}

struct poster {
    asock_loop l;
    atomic_int *count;
    asock_error result;
};

static void *poster_main(void *arg) {
    struct poster *p = arg;
    p->result = asock_loop_post(p->l, cb_count, p->count);
    return NULL;
}

TEST(run_once_positive_timeout) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    /* Nothing to do: returns (after at most about the timeout) with 0. */
    uint32_t n = 12345;
    int64_t t0 = now_ms();
    CHECK_OK(asock_loop_run_once(l, 30, &n));
    CHECK_EQ_INT(n, 0);
    CHECK(now_ms() - t0 < 5000);

    /* A post from another thread wakes a long wait early. */
    atomic_int count = 0;
    struct poster p = {l, &count, -12345};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, poster_main, &p) == 0);
    uint32_t total = 0;
    t0 = now_ms();
    while (atomic_load(&count) == 0 && now_ms() - t0 < WAIT_MS) {
        n = 0;
        CHECK_OK(asock_loop_run_once(l, 20000, &n));
        total += n;
    }
    pthread_join(t, NULL);
    CHECK_OK(p.result);
    CHECK_EQ_INT(atomic_load(&count), 1);
    CHECK_EQ_INT(total, 1);
    CHECK(now_ms() - t0 < WAIT_MS);

    /* A timer ends the wait: the dispatched count includes it. */
    struct timer_rec r;
    memset(&r, 0, sizeof r);
    t0 = now_ms();
    CHECK_OK(asock_loop_add_timer(l, 20, timer_cb, &r, NULL));
    total = 0;
    while (atomic_load(&r.calls) == 0 && now_ms() - t0 < WAIT_MS) {
        n = 0;
        CHECK_OK(asock_loop_run_once(l, 20000, &n));
        total += n;
    }
    CHECK_EQ_INT(atomic_load(&r.ok), 1);
    CHECK_EQ_INT(total, 1);
    CHECK(now_ms() - t0 >= 20);
    CHECK_OK(asock_loop_free(l));
}

TEST(run_once_minus_one_waits_until_something_happens) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    atomic_int count = 0;
    CHECK_OK(asock_loop_post(l, cb_count, &count));
    uint32_t n = 0;
    CHECK_OK(asock_loop_run_once(l, -1, &n));
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(atomic_load(&count), 1);
    CHECK_OK(asock_loop_free(l));
}

TEST(run_once_bad_timeout) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    uint32_t n = 777;
    CHECK_ERR(asock_loop_run_once(l, -2, &n), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_EQ_INT(n, 777); /* not written on failure */
    CHECK_ERR(asock_loop_run_once(l, -1000, &n), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_ERR(asock_loop_run_once(l, INT_MIN, NULL), ASOCK_E_ARGUMENT_OUT_OF_RANGE);
    CHECK_EQ_INT(n, 777);
    CHECK_OK(asock_loop_free(l));
}

/* ---- library thread ------------------------------------------------------- */

TEST(start_thread_runs_callbacks_on_a_library_thread) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    REQUIRE_OK(asock_loop_start_thread(l));
    struct where w = {0};
    CHECK_OK(asock_loop_post(l, cb_where, &w));
    REQUIRE(wait_atomic_ge(&w.runs, 1, WAIT_MS));
    CHECK(!pthread_equal(w.tid, main_thread));

    CHECK_ERR(asock_loop_start_thread(l), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_loop_run(l), ASOCK_E_INVALID_OPERATION);
    uint32_t n = 777;
    CHECK_ERR(asock_loop_run_once(l, 0, &n), ASOCK_E_INVALID_OPERATION);
    CHECK_EQ_INT(n, 777);
    CHECK_ERR(asock_loop_run_once(l, 10, NULL), ASOCK_E_INVALID_OPERATION);

    /* A second post runs on the same library thread. */
    struct where w2 = {0};
    CHECK_OK(asock_loop_post(l, cb_where, &w2));
    REQUIRE(wait_atomic_ge(&w2.runs, 1, WAIT_MS));
    CHECK(pthread_equal(w.tid, w2.tid));
    CHECK_OK(asock_loop_free(l));
}

struct restart_ctx {
    asock_loop l;
    asock_error last;
    int invalid;
};

static bool try_start(void *ctx) {
    struct restart_ctx *c = ctx;
    c->last = asock_loop_start_thread(c->l);
    if (c->last == ASOCK_E_INVALID_OPERATION)
        c->invalid++;
    return c->last == ASOCK_OK;
}

static bool run_once_succeeds(void *ctx) {
    asock_error e = asock_loop_run_once(*(asock_loop *)ctx, 0, NULL);
    if (e != ASOCK_OK && e != ASOCK_E_INVALID_OPERATION)
        harness_fail_code(__FILE__, __LINE__, "asock_loop_run_once(l, 0, NULL)", e, ASOCK_OK);
    return e == ASOCK_OK;
}

TEST(stop_then_start_thread_again) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    for (int round = 0; round < 3; round++) {
        struct restart_ctx c = {l, -12345, 0};
        /* The stop is asynchronous: until the library thread has returned,
         * start_thread reports the loop as still running. */
        CHECK(wait_until(try_start, &c, WAIT_MS));
        CHECK_OK(c.last);
        struct where w = {0};
        CHECK_OK(asock_loop_post(l, cb_where, &w));
        CHECK(wait_atomic_ge(&w.runs, 1, WAIT_MS));
        CHECK(!pthread_equal(w.tid, main_thread));
        CHECK_OK(asock_loop_stop(l));
    }
    /* Once stopped (and the thread gone), the caller may run it itself. */
    CHECK(wait_until(run_once_succeeds, &l, WAIT_MS));
    struct stop_in_cb s = {l, 0, -12345};
    CHECK_OK(asock_loop_post(l, cb_stop_self, &s));
    CHECK_OK(asock_loop_run(l));
    CHECK_EQ_INT(atomic_load(&s.runs), 1);
    CHECK_OK(asock_loop_free(l));
}

static bool threads_back_to(void *ctx) { return count_threads() <= *(int *)ctx; }

struct slow_cb {
    atomic_int entered;
    atomic_int done;
};

static void cb_slow(void *state) {
    struct slow_cb *s = state;
    atomic_store(&s->entered, 1);
    /* A callback that takes a while (a bounded busy period, not a wait for
     * anything): free must wait for it to return. */
    int64_t until = now_ms() + 200;
    while (now_ms() < until) {
    }
    atomic_store(&s->done, 1);
}

TEST(free_while_library_thread_runs_it) {
    int base = count_threads();
    REQUIRE(base > 0);
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    REQUIRE_OK(asock_loop_start_thread(l));
    struct slow_cb s = {0, 0};
    CHECK_OK(asock_loop_post(l, cb_slow, &s));
    CHECK(wait_atomic_ge(&s.entered, 1, WAIT_MS));
    CHECK_OK(asock_loop_free(l));
    /* free stopped the loop and joined its thread: the callback finished,
     * and the thread is gone. */
    CHECK_EQ_INT(atomic_load(&s.done), 1);
    CHECK(wait_until(threads_back_to, &base, 5000));
    atomic_int n = 0;
    CHECK_ERR(asock_loop_post(l, cb_count, &n), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_loop_start_thread(l), ASOCK_E_OBJECT_DISPOSED);
    CHECK_EQ_INT(atomic_load(&n), 0);
}

TEST(free_while_a_user_thread_runs_it) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    atomic_int started = 0;
    CHECK_OK(asock_loop_post(l, cb_count, &started));
    struct runner r = {l, -12345};
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, runner_main, &r) == 0);
    CHECK(wait_atomic_ge(&started, 1, WAIT_MS));
    CHECK_OK(asock_loop_free(l)); /* stops it and waits for run to return */
    pthread_join(t, NULL);
    CHECK_OK(r.result);
}

/* ---- the default loop ------------------------------------------------------ */

TEST(default_loop) {
    asock_loop d = {0};
    struct where w = {0};
    CHECK_OK(asock_loop_post(d, cb_where, &w));
    REQUIRE(wait_atomic_ge(&w.runs, 1, WAIT_MS));
    CHECK(!pthread_equal(w.tid, main_thread));

    CHECK_ERR(asock_loop_run(d), ASOCK_E_INVALID_OPERATION);
    uint32_t n = 777;
    CHECK_ERR(asock_loop_run_once(d, 0, &n), ASOCK_E_INVALID_OPERATION);
    CHECK_EQ_INT(n, 777);
    CHECK_ERR(asock_loop_start_thread(d), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_loop_stop(d), ASOCK_E_INVALID_OPERATION);
    CHECK_OK(asock_loop_free(d));

    /* Still running after all that. */
    struct where w2 = {0};
    CHECK_OK(asock_loop_post(d, cb_where, &w2));
    REQUIRE(wait_atomic_ge(&w2.runs, 1, WAIT_MS));
    CHECK(pthread_equal(w.tid, w2.tid));

    /* Timers on the default loop. */
    struct timer_rec r;
    memset(&r, 0, sizeof r);
    CHECK_OK(asock_loop_add_timer(d, 5, timer_cb, &r, NULL));
    CHECK(wait_until(pred_calls_ge1, &r, WAIT_MS));
    CHECK_EQ_INT(atomic_load(&r.ok), 1);
    CHECK(pthread_equal(r.tid, w.tid));

    struct timer_rec c;
    memset(&c, 0, sizeof c);
    uint64_t id = 0;
    CHECK_OK(asock_loop_add_timer(d, 3600000, timer_cb, &c, &id));
    CHECK(id != 0);
    CHECK_OK(asock_loop_cancel_timer(d, id));
    CHECK(wait_until(pred_calls_ge1, &c, WAIT_MS));
    CHECK_EQ_INT(atomic_load(&c.aborted), 1);
    CHECK_EQ_INT(atomic_load(&c.ok), 0);
    CHECK_ERR(asock_loop_cancel_timer(d, id), ASOCK_E_INVALID_OPERATION);
}

/* ---- posting ---------------------------------------------------------------- */

#define POSTERS 4
#define POSTS_EACH 10000

struct post_stats {
    atomic_int total;
    atomic_int wrong_thread;
    atomic_int out_of_order;
    atomic_int bad_id;
    pthread_t loop_tid;
    int last_seq[POSTERS];
    unsigned char runs[POSTERS * POSTS_EACH];
};

static struct post_stats *g_stats;

static void cb_numbered(void *state) {
    uintptr_t id = (uintptr_t)state - 1;
    struct post_stats *s = g_stats;
    if (id >= (uintptr_t)POSTERS * POSTS_EACH) {
        atomic_fetch_add(&s->bad_id, 1);
        return;
    }
    int t = (int)(id / POSTS_EACH), seq = (int)(id % POSTS_EACH);
    if (!pthread_equal(pthread_self(), s->loop_tid))
        atomic_fetch_add(&s->wrong_thread, 1);
    if (seq <= s->last_seq[t])
        atomic_fetch_add(&s->out_of_order, 1);
    s->last_seq[t] = seq;
    if (s->runs[id] < 255)
        s->runs[id]++;
    atomic_fetch_add(&s->total, 1);
}

struct post_worker {
    asock_loop l;
    int index;
    int failures;
    pthread_barrier_t *go;
};

static void *post_worker_main(void *arg) {
    struct post_worker *w = arg;
    pthread_barrier_wait(w->go);
    for (int i = 0; i < POSTS_EACH; i++) {
        uintptr_t id = (uintptr_t)w->index * POSTS_EACH + (uintptr_t)i + 1;
        if (asock_loop_post(w->l, cb_numbered, (void *)id) != ASOCK_OK)
            w->failures++;
    }
    return NULL;
}

TEST(post_from_four_threads_each_runs_once_in_order_on_loop_thread) {
    struct post_stats *s = calloc(1, sizeof *s);
    REQUIRE(s != NULL);
    for (int i = 0; i < POSTERS; i++)
        s->last_seq[i] = -1;
    g_stats = s;
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    REQUIRE_OK(asock_loop_start_thread(l));
    struct where w = {0};
    CHECK_OK(asock_loop_post(l, cb_where, &w));
    REQUIRE(wait_atomic_ge(&w.runs, 1, WAIT_MS));
    s->loop_tid = w.tid;

    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, POSTERS);
    pthread_t t[POSTERS];
    struct post_worker pw[POSTERS];
    for (int i = 0; i < POSTERS; i++) {
        pw[i] = (struct post_worker){l, i, 0, &go};
        if (pthread_create(&t[i], NULL, post_worker_main, &pw[i]) != 0) {
            harness_fail_cond(__FILE__, __LINE__, "pthread_create");
            exit(1);
        }
    }
    for (int i = 0; i < POSTERS; i++) {
        pthread_join(t[i], NULL);
        CHECK_EQ_INT(pw[i].failures, 0);
    }
    pthread_barrier_destroy(&go);
    CHECK(wait_atomic_ge(&s->total, POSTERS * POSTS_EACH, 60000));
    CHECK_OK(asock_loop_free(l)); /* joins the loop thread: its writes are visible */

    CHECK_EQ_INT(atomic_load(&s->total), POSTERS * POSTS_EACH);
    CHECK_EQ_INT(atomic_load(&s->wrong_thread), 0);
    CHECK_EQ_INT(atomic_load(&s->out_of_order), 0);
    CHECK_EQ_INT(atomic_load(&s->bad_id), 0);
    CHECK(!pthread_equal(s->loop_tid, main_thread));
    int not_once = 0;
    for (int i = 0; i < POSTERS * POSTS_EACH; i++)
        if (s->runs[i] != 1)
            not_once++;
    CHECK_EQ_INT(not_once, 0);
    free(s);
}

TEST(post_null_fn) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    CHECK_ERR(asock_loop_post(l, NULL, NULL), ASOCK_E_ARGUMENT_NULL);
    CHECK_ERR(asock_loop_post((asock_loop){0}, NULL, &l), ASOCK_E_ARGUMENT_NULL);
    uint32_t n = 777;
    CHECK_OK(asock_loop_run_once(l, 0, &n));
    CHECK_EQ_INT(n, 0); /* nothing was queued */
    CHECK_OK(asock_loop_free(l));
}

TEST(post_passes_state_untouched) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    struct where w = {0};
    CHECK_OK(asock_loop_post(l, cb_where, &w));
    CHECK_OK(asock_loop_run_once(l, 0, NULL));
    CHECK_EQ_INT(atomic_load(&w.runs), 1);
    CHECK_OK(asock_loop_free(l));
}

struct reentry {
    asock_loop l;
    int depth;
    int max_depth;
    int runs;
    int chain;
    int ran_inside_post;
    asock_error post_result;
};

static void cb_repost(void *state) {
    struct reentry *r = state;
    r->depth++;
    if (r->depth > r->max_depth)
        r->max_depth = r->depth;
    r->runs++;
    if (r->runs < r->chain) {
        int before = r->runs;
        asock_error e = asock_loop_post(r->l, cb_repost, r);
        if (e != ASOCK_OK)
            r->post_result = e;
        if (r->runs != before)
            r->ran_inside_post++;
    }
    r->depth--;
}

TEST(callback_that_posts_more_runs_later_not_recursively) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    struct reentry r = {l, 0, 0, 0, 100, 0, ASOCK_OK};
    CHECK_OK(asock_loop_post(l, cb_repost, &r));
    int64_t t0 = now_ms();
    while (r.runs < r.chain && now_ms() - t0 < WAIT_MS)
        CHECK_OK(asock_loop_run_once(l, 100, NULL));
    CHECK_EQ_INT(r.runs, 100);
    CHECK_EQ_INT(r.max_depth, 1);
    CHECK_EQ_INT(r.ran_inside_post, 0);
    CHECK_OK(r.post_result);
    CHECK_OK(asock_loop_free(l));

    /* The same on a library thread. */
    REQUIRE_OK(asock_loop_new(&l));
    REQUIRE_OK(asock_loop_start_thread(l));
    struct reentry r2 = {l, 0, 0, 0, 100, 0, ASOCK_OK};
    CHECK_OK(asock_loop_post(l, cb_repost, &r2));
    CHECK_OK(asock_loop_free(l)); /* runs the rest of the chain, then seals */
    CHECK_EQ_INT(r2.runs, 100);
    CHECK_EQ_INT(r2.max_depth, 1);
    CHECK_EQ_INT(r2.ran_inside_post, 0);
    CHECK_OK(r2.post_result);
}

struct nested {
    asock_loop l;
    atomic_int runs;
    asock_error run, run_once, start, free_, stop;
    uint32_t dispatched;
};

static void cb_nested(void *state) {
    struct nested *n = state;
    n->run = asock_loop_run(n->l);
    n->dispatched = 777;
    n->run_once = asock_loop_run_once(n->l, 0, &n->dispatched);
    n->start = asock_loop_start_thread(n->l);
    n->free_ = asock_loop_free(n->l);
    n->stop = asock_loop_stop(n->l);
    atomic_fetch_add(&n->runs, 1);
}

static void check_nested(struct nested *n) {
    CHECK_EQ_INT(atomic_load(&n->runs), 1);
    CHECK_ERR(n->run, ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(n->run_once, ASOCK_E_INVALID_OPERATION);
    CHECK_EQ_INT(n->dispatched, 777);
    CHECK_ERR(n->start, ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(n->free_, ASOCK_E_INVALID_OPERATION);
    CHECK_OK(n->stop);
}

TEST(run_and_free_from_inside_a_callback_are_invalid) {
    /* Loop run by the caller. */
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    struct nested n;
    memset(&n, 0, sizeof n);
    n.l = l;
    CHECK_OK(asock_loop_post(l, cb_nested, &n));
    CHECK_OK(asock_loop_run(l)); /* the callback's stop ends the run */
    check_nested(&n);
    /* The loop survived the refused free. */
    atomic_int c = 0;
    CHECK_OK(asock_loop_post(l, cb_count, &c));
    CHECK_OK(asock_loop_run_once(l, 0, NULL));
    CHECK_EQ_INT(atomic_load(&c), 1);

    /* Loop run by run_once. */
    struct nested n2;
    memset(&n2, 0, sizeof n2);
    n2.l = l;
    CHECK_OK(asock_loop_post(l, cb_nested, &n2));
    CHECK_OK(asock_loop_run_once(l, 0, NULL));
    check_nested(&n2);
    CHECK_OK(asock_loop_stop(l)); /* nobody runs it: clears with the next turn */
    CHECK_OK(asock_loop_run(l));
    CHECK_OK(asock_loop_free(l));

    /* Loop on a library thread. */
    REQUIRE_OK(asock_loop_new(&l));
    REQUIRE_OK(asock_loop_start_thread(l));
    struct nested n3;
    memset(&n3, 0, sizeof n3);
    n3.l = l;
    CHECK_OK(asock_loop_post(l, cb_nested, &n3));
    CHECK(wait_atomic_ge(&n3.runs, 1, WAIT_MS));
    check_nested(&n3);
    CHECK_OK(asock_loop_free(l));
}

/* ---- free drains ------------------------------------------------------------ */

struct drain {
    asock_loop l;
    atomic_int posts;
    atomic_int reposted_runs;
    int wrong_thread;
    asock_error add_timer_during_free;
};

static void cb_drain_repost_target(void *state) {
    struct drain *d = state;
    atomic_fetch_add(&d->reposted_runs, 1);
}

static void cb_drain(void *state) {
    struct drain *d = state;
    if (!pthread_equal(pthread_self(), main_thread))
        d->wrong_thread++;
    if (atomic_fetch_add(&d->posts, 1) == 0) {
        /* Posting while free drains the loop: accepted posts still run. */
        asock_error e = asock_loop_post(d->l, cb_drain_repost_target, d);
        if (e != ASOCK_OK)
            atomic_store(&d->reposted_runs, -1000);
    }
}

TEST(free_runs_pending_posts_and_aborts_timers_once) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    struct drain d;
    memset(&d, 0, sizeof d);
    d.l = l;
    for (int i = 0; i < 5; i++)
        CHECK_OK(asock_loop_post(l, cb_drain, &d));
    struct timer_rec r[3];
    memset(r, 0, sizeof r);
    uint64_t ids[3] = {0, 0, 0};
    CHECK_OK(asock_loop_add_timer(l, 3600000, timer_cb, &r[0], &ids[0]));
    CHECK_OK(asock_loop_add_timer(l, 100000, timer_cb, &r[1], &ids[1]));
    CHECK_OK(asock_loop_add_timer(l, 0, timer_cb, &r[2], &ids[2]));
    CHECK(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);

    CHECK_OK(asock_loop_free(l));

    CHECK_EQ_INT(atomic_load(&d.posts), 5);
    CHECK_EQ_INT(atomic_load(&d.reposted_runs), 1);
    CHECK_EQ_INT(d.wrong_thread, 0); /* drained on the calling thread */
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
        CHECK_EQ_INT(atomic_load(&r[i].aborted), 1);
        CHECK_EQ_INT(atomic_load(&r[i].ok), 0);
        CHECK(pthread_equal(r[i].tid, main_thread));
    }

    /* Everything after free is refused and runs nothing. */
    atomic_int n = 0;
    struct timer_rec late;
    memset(&late, 0, sizeof late);
    CHECK_ERR(asock_loop_post(l, cb_count, &n), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_loop_add_timer(l, 0, timer_cb, &late, NULL), ASOCK_E_OBJECT_DISPOSED);
    CHECK_ERR(asock_loop_cancel_timer(l, ids[0]), ASOCK_E_OBJECT_DISPOSED);
    CHECK_EQ_INT(atomic_load(&n), 0);
    CHECK_EQ_INT(atomic_load(&late.calls), 0);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(atomic_load(&r[i].calls), 1);
}

/* ---- timers -------------------------------------------------------------------- */

TEST(timer_fires_after_at_least_its_delay) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    REQUIRE_OK(asock_loop_start_thread(l));
    const uint32_t delays[] = {0, 1, 25, 60};
    for (size_t i = 0; i < sizeof delays / sizeof delays[0]; i++) {
        struct timer_rec r;
        memset(&r, 0, sizeof r);
        uint64_t id = 0;
        int64_t t0 = now_ns();
        CHECK_OK(asock_loop_add_timer(l, delays[i], timer_cb, &r, &id));
        CHECK(id != 0);
        CHECK(wait_until(pred_calls_ge1, &r, WAIT_MS));
        CHECK_EQ_INT(atomic_load(&r.ok), 1);
        CHECK_EQ_INT(atomic_load(&r.aborted), 0);
        CHECK_EQ_INT(atomic_load(&r.other), 0);
        int64_t elapsed = r.fired_ns - t0;
        if (elapsed < (int64_t)delays[i] * 1000000LL) {
            harness_fail_begin(__FILE__, __LINE__);
            fprintf(stderr, "timer of %u ms fired after %.3f ms\n", delays[i], elapsed / 1e6);
            harness_fail_end();
        }
        CHECK(!pthread_equal(r.tid, main_thread));
        /* Fired: cancelling is too late. */
        CHECK_ERR(asock_loop_cancel_timer(l, id), ASOCK_E_INVALID_OPERATION);
    }
    CHECK_OK(asock_loop_free(l));
}

/* Timer i must fire before timer j whenever i's deadline is surely earlier:
 * its latest possible deadline (added by `after`, plus its delay) is before
 * j's earliest (added no earlier than `before`, plus its delay). */
struct timed_add {
    int64_t before_ns, after_ns;
    uint32_t delay_ms;
};

static int count_order_violations(const struct timed_add *a, const struct timer_rec *r, int n, int *comparable) {
    int bad = 0;
    *comparable = 0;
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            int64_t latest_i = a[i].after_ns + (int64_t)a[i].delay_ms * 1000000LL;
            int64_t earliest_j = a[j].before_ns + (int64_t)a[j].delay_ms * 1000000LL;
            if (i != j && latest_i < earliest_j) {
                (*comparable)++;
                if (r[i].order > r[j].order)
                    bad++;
            }
        }
    }
    return bad;
}

TEST(timers_fire_in_deadline_order) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    const uint32_t delays[] = {160, 40, 100, 0, 130, 70, 10};
    enum { N = sizeof delays / sizeof delays[0] };
    struct timer_rec r[N];
    struct timed_add a[N];
    memset(r, 0, sizeof r);
    atomic_int seq = 0;
    for (int i = 0; i < N; i++) {
        r[i].seq = &seq;
        a[i].delay_ms = delays[i];
        a[i].before_ns = now_ns();
        CHECK_OK(asock_loop_add_timer(l, delays[i], timer_cb, &r[i], NULL));
        a[i].after_ns = now_ns();
    }
    struct harness_int_target all = {&seq, N};
    CHECK(run_loop_until(l, harness_pred_int_ge, &all, WAIT_MS));
    for (int i = 0; i < N; i++)
        CHECK_EQ_INT(atomic_load(&r[i].ok), 1);
    int comparable;
    CHECK_EQ_INT(count_order_violations(a, r, N, &comparable), 0);
    CHECK(comparable > 0);
    CHECK_OK(asock_loop_free(l));
}

TEST(many_timers_each_fire_exactly_once_in_order) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    enum { N = 500 };
    struct timer_rec *r = calloc(N, sizeof *r);
    struct timed_add *a = calloc(N, sizeof *a);
    REQUIRE(r != NULL && a != NULL);
    atomic_int seq = 0;
    for (int i = 0; i < N; i++) {
        r[i].seq = &seq;
        /* Delays 0..99 ms in a scrambled order. */
        a[i].delay_ms = (uint32_t)((i * 37) % N) / 5;
        a[i].before_ns = now_ns();
        CHECK_OK(asock_loop_add_timer(l, a[i].delay_ms, timer_cb, &r[i], NULL));
        a[i].after_ns = now_ns();
    }
    struct harness_int_target all = {&seq, N};
    CHECK(run_loop_until(l, harness_pred_int_ge, &all, 30000));
    int not_once = 0;
    for (int i = 0; i < N; i++)
        if (atomic_load(&r[i].calls) != 1 || atomic_load(&r[i].ok) != 1)
            not_once++;
    CHECK_EQ_INT(not_once, 0);
    int comparable;
    CHECK_EQ_INT(count_order_violations(a, r, N, &comparable), 0);
    CHECK(comparable > 0);
    CHECK_OK(asock_loop_free(l));
    free(r);
    free(a);
}

TEST(cancel_timer_reports_aborted_once_never_ok) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    struct timer_rec c, later;
    memset(&c, 0, sizeof c);
    memset(&later, 0, sizeof later);
    uint64_t id = 0, later_id = 0;
    CHECK_OK(asock_loop_add_timer(l, 30, timer_cb, &c, &id));
    CHECK(id != 0);
    CHECK_OK(asock_loop_cancel_timer(l, id));
    /* The callback runs on the loop thread, not inside cancel. */
    CHECK_EQ_INT(atomic_load(&c.calls), 0);
    CHECK_ERR(asock_loop_cancel_timer(l, id), ASOCK_E_INVALID_OPERATION);

    /* Run the loop past the cancelled timer's deadline (until a later timer
     * fires): it was called exactly once, with ABORTED. */
    CHECK_OK(asock_loop_add_timer(l, 80, timer_cb, &later, &later_id));
    CHECK(id != later_id);
    CHECK(run_loop_until(l, pred_calls_ge1, &later, WAIT_MS));
    CHECK_EQ_INT(atomic_load(&later.ok), 1);
    CHECK_EQ_INT(atomic_load(&c.calls), 1);
    CHECK_EQ_INT(atomic_load(&c.aborted), 1);
    CHECK_EQ_INT(atomic_load(&c.ok), 0);
    CHECK(pthread_equal(c.tid, main_thread)); /* the thread running the loop */

    CHECK_ERR(asock_loop_cancel_timer(l, id), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_loop_cancel_timer(l, later_id), ASOCK_E_INVALID_OPERATION);
    CHECK_ERR(asock_loop_cancel_timer(l, 0), ASOCK_E_ARGUMENT_NULL);
    /* An id this loop never issued is not a timer to cancel. */
    asock_error e = asock_loop_cancel_timer(l, 0xDEADBEEFCAFEull);
    CHECK(e == ASOCK_E_INVALID_OPERATION || e == ASOCK_E_ARGUMENT);
    CHECK_OK(asock_loop_free(l));
    CHECK_EQ_INT(atomic_load(&c.calls), 1);
    CHECK_EQ_INT(atomic_load(&later.calls), 1);
}

struct canceller {
    asock_loop l;
    uint64_t id;
    asock_error result;
};

static void *canceller_main(void *arg) {
    struct canceller *c = arg;
    c->result = asock_loop_cancel_timer(c->l, c->id);
    return NULL;
}

TEST(cancel_timer_from_another_thread_while_loop_runs) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    REQUIRE_OK(asock_loop_start_thread(l));
    struct timer_rec r;
    memset(&r, 0, sizeof r);
    struct canceller c = {l, 0, -12345};
    CHECK_OK(asock_loop_add_timer(l, 3600000, timer_cb, &r, &c.id));
    pthread_t t;
    REQUIRE(pthread_create(&t, NULL, canceller_main, &c) == 0);
    pthread_join(t, NULL);
    CHECK_OK(c.result);
    CHECK(wait_until(pred_calls_ge1, &r, WAIT_MS));
    CHECK_EQ_INT(atomic_load(&r.aborted), 1);
    CHECK_EQ_INT(atomic_load(&r.ok), 0);
    CHECK(!pthread_equal(r.tid, main_thread));
    CHECK(!pthread_equal(r.tid, t));
    CHECK_OK(asock_loop_free(l));
    CHECK_EQ_INT(atomic_load(&r.calls), 1);
}

TEST(add_timer_null_callback_and_null_out) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    uint64_t id = 777;
    CHECK_ERR(asock_loop_add_timer(l, 0, NULL, NULL, &id), ASOCK_E_ARGUMENT_NULL);
    CHECK_EQ_INT(id, 777);
    CHECK_ERR(asock_loop_add_timer((asock_loop){0}, 0, NULL, NULL, NULL), ASOCK_E_ARGUMENT_NULL);
    /* NULL out_timer is allowed: the timer still fires. */
    struct timer_rec r;
    memset(&r, 0, sizeof r);
    CHECK_OK(asock_loop_add_timer(l, 0, timer_cb, &r, NULL));
    CHECK(run_loop_until(l, pred_calls_ge1, &r, WAIT_MS));
    CHECK_EQ_INT(atomic_load(&r.ok), 1);
    /* Nothing ran for the refused timers. */
    uint32_t n = 777;
    CHECK_OK(asock_loop_run_once(l, 0, &n));
    CHECK_EQ_INT(n, 0);
    CHECK_OK(asock_loop_free(l));
}

struct add_in_cb {
    asock_loop l;
    atomic_int inside_add;
    struct timer_rec r;
    asock_error result;
};

static void cb_add_timer_from_loop(void *state) {
    struct add_in_cb *a = state;
    a->r.inside_add = &a->inside_add;
    atomic_store(&a->inside_add, 1);
    a->result = asock_loop_add_timer(a->l, 0, timer_cb, &a->r, NULL);
    atomic_store(&a->inside_add, 0);
}

TEST(timer_callback_never_runs_inside_add_timer) {
    /* From the loop's own thread, delay 0: still not inside the call. */
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    struct add_in_cb a;
    memset(&a, 0, sizeof a);
    a.l = l;
    CHECK_OK(asock_loop_post(l, cb_add_timer_from_loop, &a));
    CHECK(run_loop_until(l, pred_calls_ge1, &a.r, WAIT_MS));
    CHECK_OK(a.result);
    CHECK_EQ_INT(atomic_load(&a.r.calls), 1);
    CHECK_EQ_INT(atomic_load(&a.r.ok), 1);
    CHECK_EQ_INT(atomic_load(&a.r.ran_inside_add), 0);

    /* From a thread that does not run the loop: nothing runs until the loop
     * turns. */
    struct timer_rec r;
    memset(&r, 0, sizeof r);
    atomic_int inside = 1;
    r.inside_add = &inside;
    CHECK_OK(asock_loop_add_timer(l, 0, timer_cb, &r, NULL));
    atomic_store(&inside, 0);
    CHECK_EQ_INT(atomic_load(&r.calls), 0);
    CHECK(run_loop_until(l, pred_calls_ge1, &r, WAIT_MS));
    CHECK_EQ_INT(atomic_load(&r.ran_inside_add), 0);
    CHECK_OK(asock_loop_free(l));

    /* With a library thread: the callback runs there, never on the caller. */
    REQUIRE_OK(asock_loop_new(&l));
    REQUIRE_OK(asock_loop_start_thread(l));
    for (int i = 0; i < 20; i++) {
        struct timer_rec q;
        memset(&q, 0, sizeof q);
        CHECK_OK(asock_loop_add_timer(l, 0, timer_cb, &q, NULL));
        CHECK(wait_until(pred_calls_ge1, &q, WAIT_MS));
        CHECK(!pthread_equal(q.tid, main_thread));
    }
    CHECK_OK(asock_loop_free(l));
}

/* ---- calls racing asock_loop_free ------------------------------------------------ */

/* Threads post, add timers, or add and cancel timers while another thread
 * frees the loop. Every call that returned ASOCK_OK started something that
 * must complete exactly once (a post runs, a timer calls back, with
 * ABORTED at the latest when free drains the loop); every other call must
 * be refused with ASOCK_E_OBJECT_DISPOSED (or, for a cancel that came after
 * free's drain already aborted the timer, ASOCK_E_INVALID_OPERATION). */

enum race_mode { RACE_POST, RACE_ADD_TIMER, RACE_CANCEL_TIMER };

#define RACE_THREADS 3
#define RACE_MAX_PER_THREAD 3000

struct race {
    asock_loop l;
    enum race_mode mode;
    atomic_int accepted;  /* calls that returned OK and must call back */
    atomic_int callbacks; /* callbacks that ran */
    atomic_int refused_wrongly;
    atomic_int stop;
    pthread_barrier_t *go;
};

static void race_post_cb(void *state) { atomic_fetch_add(&((struct race *)state)->callbacks, 1); }

static void race_timer_cb(void *state, asock_error status) {
    struct race *r = state;
    if (status != ASOCK_OPERATION_ABORTED && status != ASOCK_OK)
        atomic_fetch_add(&r->refused_wrongly, 1);
    atomic_fetch_add(&r->callbacks, 1);
}

static void *race_main(void *arg) {
    struct race *r = arg;
    pthread_barrier_wait(r->go);
    for (int i = 0; i < RACE_MAX_PER_THREAD && !atomic_load(&r->stop); i++) {
        asock_error e;
        uint64_t id = 0;
        if (r->mode == RACE_POST)
            e = asock_loop_post(r->l, race_post_cb, r);
        else
            e = asock_loop_add_timer(r->l, 3600000, race_timer_cb, r, &id);
        if (e != ASOCK_OK) {
            if (e != ASOCK_E_OBJECT_DISPOSED)
                atomic_fetch_add(&r->refused_wrongly, 1);
            break;
        }
        atomic_fetch_add(&r->accepted, 1);
        if (r->mode == RACE_CANCEL_TIMER) {
            e = asock_loop_cancel_timer(r->l, id);
            if (e != ASOCK_OK && e != ASOCK_E_OBJECT_DISPOSED && e != ASOCK_E_INVALID_OPERATION)
                atomic_fetch_add(&r->refused_wrongly, 1);
        }
    }
    return NULL;
}

static void race_with_free(enum race_mode mode, int rounds) {
    int lost_rounds = 0, extra_rounds = 0;
    for (int round = 0; round < rounds; round++) {
        struct race r;
        memset(&r, 0, sizeof r);
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, RACE_THREADS + 1);
        r.mode = mode;
        r.go = &go;
        REQUIRE_OK(asock_loop_new(&r.l));
        if (round % 2)
            REQUIRE_OK(asock_loop_start_thread(r.l));
        pthread_t t[RACE_THREADS];
        for (int i = 0; i < RACE_THREADS; i++) {
            if (pthread_create(&t[i], NULL, race_main, &r) != 0) {
                harness_fail_cond(__FILE__, __LINE__, "pthread_create");
                exit(1);
            }
        }
        pthread_barrier_wait(&go);
        /* Free once the others are under way (a bounded wait). */
        CHECK(wait_atomic_ge(&r.accepted, 1 + round % 50, WAIT_MS));
        CHECK_OK(asock_loop_free(r.l));
        atomic_store(&r.stop, 1);
        for (int i = 0; i < RACE_THREADS; i++)
            pthread_join(t[i], NULL);
        pthread_barrier_destroy(&go);
        CHECK_EQ_INT(atomic_load(&r.refused_wrongly), 0);
        int accepted = atomic_load(&r.accepted), callbacks = atomic_load(&r.callbacks);
        if (callbacks < accepted) {
            if (lost_rounds++ < 3) {
                harness_fail_begin(__FILE__, __LINE__);
                fprintf(stderr, "%s racing asock_loop_free: %d calls returned ASOCK_OK, only %d callbacks ran\n",
                        mode == RACE_POST ? "asock_loop_post"
                        : mode == RACE_ADD_TIMER ? "asock_loop_add_timer"
                                                  : "asock_loop_add_timer + asock_loop_cancel_timer",
                        accepted, callbacks);
                harness_fail_end();
            } else {
                atomic_fetch_add(&harness_current_failures, 1);
            }
        } else if (callbacks > accepted) {
            extra_rounds++;
        }
    }
    CHECK_EQ_INT(lost_rounds, 0);
    CHECK_EQ_INT(extra_rounds, 0);
}

static int race_rounds(void) { return under_valgrind() ? 40 : 200; }

TEST(post_racing_free_runs_every_accepted_post_once) { race_with_free(RACE_POST, race_rounds()); }

TEST(add_timer_racing_free_calls_every_accepted_timer_back_once) {
    race_with_free(RACE_ADD_TIMER, race_rounds());
}

TEST(cancel_timer_racing_free_calls_every_accepted_timer_back_once) {
    race_with_free(RACE_CANCEL_TIMER, race_rounds());
}

/* ---- bad and stale loop handles ------------------------------------------------ */

static void check_every_loop_function(asock_loop l, bool forged) {
    atomic_int n = 0;
    struct timer_rec r;
    memset(&r, 0, sizeof r);
    uint32_t d = 777;
    uint64_t id = 777;
    asock_error got[8];
    const char *names[8] = {"run",  "run_once",  "start_thread", "stop",
                            "post", "add_timer", "cancel_timer", "free"};
    got[0] = asock_loop_run(l);
    got[1] = asock_loop_run_once(l, 0, &d);
    got[2] = asock_loop_start_thread(l);
    got[3] = asock_loop_stop(l);
    got[4] = asock_loop_post(l, cb_count, &n);
    got[5] = asock_loop_add_timer(l, 0, timer_cb, &r, &id);
    got[6] = asock_loop_cancel_timer(l, 1);
    got[7] = asock_loop_free(l);
    for (int i = 0; i < 8; i++) {
        bool ok = forged ? (got[i] == ASOCK_E_ARGUMENT || got[i] == ASOCK_E_OBJECT_DISPOSED)
                         : got[i] == ASOCK_E_OBJECT_DISPOSED;
        if (!ok) {
            harness_fail_begin(__FILE__, __LINE__);
            fprintf(stderr, "asock_loop_%s({%#" PRIx64 "}) = %d %s, want %s\n", names[i], l.id, (int)got[i],
                    asock_error_name(got[i]), forged ? "Argument or ObjectDisposed" : "ObjectDisposed");
            harness_fail_end();
        }
    }
    CHECK_EQ_INT(d, 777);
    CHECK_EQ_INT(id, 777);
    CHECK_EQ_INT(atomic_load(&n), 0);
    CHECK_EQ_INT(atomic_load(&r.calls), 0);
}

TEST(stale_loop_handle_for_every_function) {
    asock_loop l;
    REQUIRE_OK(asock_loop_new(&l));
    CHECK_OK(asock_loop_free(l));
    check_every_loop_function(l, false);
    /* Also a loop freed while running on its library thread. */
    REQUIRE_OK(asock_loop_new(&l));
    REQUIRE_OK(asock_loop_start_thread(l));
    CHECK_OK(asock_loop_free(l));
    check_every_loop_function(l, false);
}

TEST(forged_loop_handles_for_every_function) {
    asock_loop live;
    REQUIRE_OK(asock_loop_new(&live));
    asock_socket s;
    REQUIRE_OK(asock_socket_new(live, ASOCK_AF_INET, ASOCK_SOCK_STREAM, ASOCK_PROTO_TCP, &s));
    const uint64_t forged[] = {
        s.id,                                   /* a socket's id used as a loop */
        live.id + 1,                            /* the next slot */
        live.id + 0x100000000ull,               /* a generation it never had */
        live.id ^ 0x00FF000000000000ull,        /* other generation bits */
        live.id ^ 0xFF00000000000000ull,        /* other kind bits */
        0xFFFFFFFFFFFFFFFFull,
        0x8000000000000000ull,
        1,
        0x123456789ABCDEFull,
        0xA5A5A5A5A5A5A5A5ull,
    };
    for (size_t i = 0; i < sizeof forged / sizeof forged[0]; i++) {
        if (forged[i] == live.id)
            continue;
        check_every_loop_function((asock_loop){forged[i]}, true);
    }
    /* The real loop and socket are untouched by all that. */
    atomic_int n = 0;
    CHECK_OK(asock_loop_post(live, cb_count, &n));
    CHECK_OK(asock_loop_run_once(live, 0, NULL));
    CHECK_EQ_INT(atomic_load(&n), 1);
    int32_t v = -1;
    CHECK_OK(asock_socket_get_option(s, ASOCK_OPT_KEEP_ALIVE, &v));
    CHECK_OK(asock_socket_close(s));
    CHECK_OK(asock_loop_free(live));
}

int main(void) {
    main_thread = pthread_self();
    RUN(loop_new_and_free);
    RUN(free_none_loop_is_a_noop);
    RUN(run_on_caller_thread_stopped_from_another_thread);
    RUN(run_stopped_from_a_callback);
    RUN(stop_before_run_makes_the_next_run_return);
    RUN(run_while_another_thread_runs_it_is_invalid);
    RUN(run_once_timeout_zero);
    RUN(run_once_positive_timeout);
    RUN(run_once_minus_one_waits_until_something_happens);
    RUN(run_once_bad_timeout);
    RUN(start_thread_runs_callbacks_on_a_library_thread);
    RUN(stop_then_start_thread_again);
    RUN(free_while_library_thread_runs_it);
    RUN(free_while_a_user_thread_runs_it);
    RUN(default_loop);
    RUN(post_from_four_threads_each_runs_once_in_order_on_loop_thread);
    RUN(post_null_fn);
    RUN(post_passes_state_untouched);
    RUN(callback_that_posts_more_runs_later_not_recursively);
    RUN(run_and_free_from_inside_a_callback_are_invalid);
    RUN(free_runs_pending_posts_and_aborts_timers_once);
    RUN(timer_fires_after_at_least_its_delay);
    RUN(timers_fire_in_deadline_order);
    RUN(many_timers_each_fire_exactly_once_in_order);
    RUN(cancel_timer_reports_aborted_once_never_ok);
    RUN(cancel_timer_from_another_thread_while_loop_runs);
    RUN(add_timer_null_callback_and_null_out);
    RUN(timer_callback_never_runs_inside_add_timer);
    RUN(post_racing_free_runs_every_accepted_post_once);
    RUN(add_timer_racing_free_calls_every_accepted_timer_back_once);
    RUN(cancel_timer_racing_free_calls_every_accepted_timer_back_once);
    RUN(stale_loop_handle_for_every_function);
    RUN(forged_loop_handles_for_every_function);
    return harness_finish();
}
