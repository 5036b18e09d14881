/*
 * harness.h — a tiny header-only test harness for the asock C tests.
 *
 *   TEST(test_name) { CHECK(...); CHECK_EQ_INT(a, b); CHECK_OK(call); }
 *   int main(void) {
 *       RUN(test_name);
 *       ...
 *       return harness_finish();   // prints "N passed, M failed"
 *   }
 *
 * CHECK / CHECK_EQ_INT / CHECK_ERR / CHECK_OK record a failure (file:line,
 * the expression, both values; for codes their asock_error_name and this
 * thread's asock_error_message) and go on; REQUIRE* do the same and return
 * from the test function (use them where going on would crash or hang).
 * Checks are safe from any thread (the failure count is atomic). Each test
 * runs under a watchdog (SIGALRM; HARNESS_TEST_TIMEOUT_S seconds, default 60,
 * 300 under valgrind): a hang names the test, prints the summary line and
 * exits non-zero instead of hanging CI.
 *
 * Waiting: wait_until(pred, ctx, timeout_ms) polls a predicate with 1 ms
 * sleeps and always gives up at its timeout; wait_atomic_ge/_eq wrap it for
 * an atomic_int; run_loop_until drives a loop the test runs itself. Sleeping
 * is only done inside such bounded waits, never as synchronisation by itself.
 */
#ifndef ASOCK_TEST_HARNESS_H
#define ASOCK_TEST_HARNESS_H

#include <asock.h>

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- state -------------------------------------------------------------- */

static atomic_int harness_current_failures;
static int harness_passed;
static int harness_failed;
static const char *harness_current_name = "";
static pthread_mutex_t harness_print_lock = PTHREAD_MUTEX_INITIALIZER;

/* ---- time and bounded waits -------------------------------------------- */

/* CLOCK_MONOTONIC in nanoseconds / milliseconds. */
static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static inline int64_t now_ms(void) { return now_ns() / 1000000LL; }

/* Sleeps `ms` milliseconds. Only for use inside bounded waits. */
static inline void harness_sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Polls `pred(ctx)` with short sleeps until it is true (returns true) or
 * `timeout_ms` has passed (returns false after one last look). */
static inline bool wait_until(bool (*pred)(void *ctx), void *ctx, int timeout_ms) {
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        if (pred(ctx))
            return true;
        if (now_ms() >= deadline)
            return pred(ctx);
        harness_sleep_ms(1);
    }
}

/* ---- atomics helpers ---------------------------------------------------- */

static inline int atomic_get_int(atomic_int *p) { return atomic_load(p); }
static inline long atomic_get_long(atomic_long *p) { return atomic_load(p); }
static inline bool atomic_get_bool(atomic_bool *p) { return atomic_load(p); }

struct harness_int_target {
    atomic_int *p;
    int value;
};

static inline bool harness_pred_int_ge(void *ctx) {
    struct harness_int_target *t = ctx;
    return atomic_load(t->p) >= t->value;
}

static inline bool harness_pred_int_eq(void *ctx) {
    struct harness_int_target *t = ctx;
    return atomic_load(t->p) == t->value;
}

/* Waits until *p >= value; false on timeout. */
static inline bool wait_atomic_ge(atomic_int *p, int value, int timeout_ms) {
    struct harness_int_target t = {p, value};
    return wait_until(harness_pred_int_ge, &t, timeout_ms);
}

/* Waits until *p == value; false on timeout. */
static inline bool wait_atomic_eq(atomic_int *p, int value, int timeout_ms) {
    struct harness_int_target t = {p, value};
    return wait_until(harness_pred_int_eq, &t, timeout_ms);
}

/* Drives a loop that the test runs itself (asock_loop_run_once with short
 * timeouts) until `pred(ctx)` holds or `timeout_ms` passes. */
static inline bool run_loop_until(asock_loop l, bool (*pred)(void *ctx), void *ctx, int timeout_ms) {
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        if (pred(ctx))
            return true;
        if (now_ms() >= deadline)
            return pred(ctx);
        if (asock_loop_run_once(l, 10, NULL) != ASOCK_OK)
            return pred(ctx);
    }
}

/* ---- environment ------------------------------------------------------- */

/* True when running under valgrind: ctest sets ASOCK_UNDER_VALGRIND=1 for
 * the valgrind runs; a hand-started valgrind shows in LD_PRELOAD. Tests may
 * scale their load down then (never their assertions). */
static inline bool under_valgrind(void) {
    const char *e = getenv("ASOCK_UNDER_VALGRIND");
    if (e != NULL && e[0] != '\0' && strcmp(e, "0") != 0)
        return true;
    const char *p = getenv("LD_PRELOAD");
    return p != NULL && strstr(p, "vgpreload") != NULL;
}

/* Number of open descriptors of this process (entries of /proc/self/fd). */
static inline int count_open_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.')
            n++;
    }
    closedir(d);
    return n - 1; /* the directory stream's own descriptor */
}

/* Number of threads of this process (entries of /proc/self/task). */
static inline int count_threads(void) {
    DIR *d = opendir("/proc/self/task");
    if (d == NULL)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] != '.')
            n++;
    }
    closedir(d);
    return n;
}

/* ---- failure reporting -------------------------------------------------- */

static inline void harness_fail_begin(const char *file, int line) {
    atomic_fetch_add(&harness_current_failures, 1);
    pthread_mutex_lock(&harness_print_lock);
    fprintf(stderr, "%s:%d: FAIL in %s: ", file, line, harness_current_name);
}

static inline void harness_fail_end(void) {
    fflush(stderr);
    pthread_mutex_unlock(&harness_print_lock);
}

static inline void harness_fail_cond(const char *file, int line, const char *expr) {
    harness_fail_begin(file, line);
    fprintf(stderr, "CHECK(%s)\n", expr);
    harness_fail_end();
}

static inline void harness_fail_int(const char *file, int line, const char *ea, const char *eb,
                                    long long a, long long b) {
    harness_fail_begin(file, line);
    fprintf(stderr, "CHECK_EQ_INT(%s, %s): %lld != %lld\n", ea, eb, a, b);
    harness_fail_end();
}

static inline void harness_fail_code(const char *file, int line, const char *expr, asock_error got,
                                     asock_error want) {
    char msg[512];
    msg[0] = '\0';
    asock_error_message(msg, sizeof msg);
    harness_fail_begin(file, line);
    fprintf(stderr, "%s\n    got  %d %s\n    want %d %s\n    asock_error_message: \"%s\"\n", expr, (int)got,
            asock_error_name(got), (int)want, asock_error_name(want), msg);
    harness_fail_end();
}

/* ---- checks ------------------------------------------------------------- */

#define CHECK(cond)                                          \
    do {                                                     \
        if (!(cond))                                         \
            harness_fail_cond(__FILE__, __LINE__, #cond);    \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                  \
    do {                                                                                    \
        long long a_ = (long long)(a), b_ = (long long)(b);                                \
        if (a_ != b_)                                                                       \
            harness_fail_int(__FILE__, __LINE__, #a, #b, a_, b_);                           \
    } while (0)

/* `call` must return the asock_error `want`. */
#define CHECK_ERR(call, want)                                                                \
    do {                                                                                     \
        asock_error got_ = (call);                                                           \
        asock_error want_ = (want);                                                          \
        if (got_ != want_)                                                                   \
            harness_fail_code(__FILE__, __LINE__, #call, got_, want_);                       \
    } while (0)

#define CHECK_OK(call) CHECK_ERR(call, ASOCK_OK)

/* As CHECK / CHECK_OK / CHECK_ERR but return from the test on failure. */
#define REQUIRE(cond)                                        \
    do {                                                     \
        if (!(cond)) {                                       \
            harness_fail_cond(__FILE__, __LINE__, #cond);    \
            return;                                          \
        }                                                    \
    } while (0)

#define REQUIRE_ERR(call, want)                                                              \
    do {                                                                                     \
        asock_error got_ = (call);                                                           \
        asock_error want_ = (want);                                                          \
        if (got_ != want_) {                                                                 \
            harness_fail_code(__FILE__, __LINE__, #call, got_, want_);                       \
            return;                                                                          \
        }                                                                                    \
    } while (0)

#define REQUIRE_OK(call) REQUIRE_ERR(call, ASOCK_OK)

/* ---- running ------------------------------------------------------------ */

#define TEST(name) static void name(void)

/* Async-signal-safe decimal of a non-negative int into buf; returns length. */
static inline size_t harness_utoa(int v, char *buf) {
    char tmp[16];
    size_t n = 0;
    unsigned u = v < 0 ? 0u : (unsigned)v;
    do {
        tmp[n++] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0 && n < sizeof tmp);
    for (size_t i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    return n;
}

static inline void harness_on_alarm(int sig) {
    (void)sig;
    /* Only async-signal-safe calls: write() and _exit(). The hung test
     * counts as failed; the summary line keeps its exact form for CI. */
    static const char msg[] = "\nharness: watchdog: this test did not finish in time (hang?): ";
    char line[64];
    size_t n = 0;
    ssize_t w = write(STDERR_FILENO, msg, sizeof msg - 1);
    w = write(STDERR_FILENO, harness_current_name, strlen(harness_current_name));
    w = write(STDERR_FILENO, "\n", 1);
    n += harness_utoa(harness_passed, line + n);
    memcpy(line + n, " passed, ", 9);
    n += 9;
    n += harness_utoa(harness_failed + 1, line + n);
    memcpy(line + n, " failed\n", 8);
    n += 8;
    w = write(STDOUT_FILENO, line, n);
    (void)w;
    _exit(3);
}

/* Per-test watchdog: HARNESS_TEST_TIMEOUT_S, else 60 s (300 s under
 * valgrind) — below ctest's per-executable timeouts, so a hang names the
 * test and still prints the summary line. */
static inline unsigned harness_timeout_s(void) {
    const char *t = getenv("HARNESS_TEST_TIMEOUT_S");
    if (t != NULL && atoi(t) > 0)
        return (unsigned)atoi(t);
    return under_valgrind() ? 300 : 60;
}

static inline void harness_run(const char *name, void (*fn)(void)) {
    static bool installed;
    if (!installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = harness_on_alarm;
        sigaction(SIGALRM, &sa, NULL);
        setvbuf(stdout, NULL, _IOLBF, 0);
        installed = true;
    }
    harness_current_name = name;
    atomic_store(&harness_current_failures, 0);
    int64_t t0 = now_ms();
    alarm(harness_timeout_s());
    fn();
    alarm(0);
    int64_t dt = now_ms() - t0;
    if (atomic_load(&harness_current_failures) == 0) {
        harness_passed++;
        printf("PASS %s (%" PRId64 " ms)\n", name, dt);
    } else {
        harness_failed++;
        printf("FAIL %s (%d failed checks, %" PRId64 " ms)\n", name,
               atomic_load(&harness_current_failures), dt);
    }
    fflush(stdout);
}

#define RUN(name) harness_run(#name, name)

/* Prints the line CI parses and returns the exit status. */
static inline int harness_finish(void) {
    printf("%d passed, %d failed\n", harness_passed, harness_failed);
    fflush(stdout);
    return harness_failed == 0 ? 0 : 1;
}

/* ---- small asock helpers ------------------------------------------------ */

/* This thread's asock_error_message as a static-per-call copy. */
static inline const char *last_message(char *buf, size_t len) {
    asock_error_message(buf, len);
    return buf;
}

#endif /* ASOCK_TEST_HARNESS_H */
