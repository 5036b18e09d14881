/*
 * The cross-thread Begin workload, shared by the three servers: T sender
 * threads, each owning one accepted connection, start sends of SIZE bytes
 * for SECS seconds, with at most WINDOW started but not yet completed per
 * thread (the completion runs on the loop thread, which decrements the
 * count). Each server supplies xt_begin(), which starts one send whose
 * completion must end in xt_complete(index) on its loop thread.
 */
#ifndef BENCH_XTHREAD_H
#define BENCH_XTHREAD_H

#include "common.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

struct xt_sender {
    int index;
    atomic_int outstanding;
    long begins;
    void *conn; /* the server's connection object */
    pthread_t thread;
};

static struct xt_sender xt_senders[64];
static int xt_threads, xt_window;
static double xt_secs;
static const unsigned char xt_msg[PUMP_BLOCK];

/* Starts one send of `size` bytes of xt_msg on `s`; 0 on success. */
static int xt_begin(struct xt_sender *s, int size);

static inline void xt_complete(int index) {
    atomic_fetch_sub_explicit(&xt_senders[index].outstanding, 1, memory_order_release);
}

static struct opts xt_opts;
static double xt_t0;

static void *xt_sender_main(void *arg) {
    struct xt_sender *s = arg;
    double end = xt_t0 + xt_secs;
    long n = 0;
    for (unsigned long spin = 0;; spin++) {
        if ((spin & 63) == 0 && now_s() >= end)
            break;
        if (atomic_load_explicit(&s->outstanding, memory_order_acquire) >= xt_window) {
            sched_yield();
            continue;
        }
        atomic_fetch_add_explicit(&s->outstanding, 1, memory_order_relaxed);
        if (xt_begin(s, xt_opts.size) != 0) {
            atomic_fetch_sub(&s->outstanding, 1);
            break;
        }
        n++;
    }
    s->begins = n;
    return NULL;
}

/* Runs the senders (the connections are in xt_senders[i].conn), waits for
 * every completion, prints the result line. */
static void xt_run(const struct opts *o) {
    xt_opts = *o;
    xt_threads = o->threads;
    xt_window = o->window;
    xt_secs = o->secs;
    double c0 = cpu_us();
    xt_t0 = now_s();
    for (int i = 0; i < xt_threads; i++)
        if (pthread_create(&xt_senders[i].thread, NULL, xt_sender_main, &xt_senders[i]) != 0)
            die("pthread_create");
    long total = 0;
    for (int i = 0; i < xt_threads; i++) {
        pthread_join(xt_senders[i].thread, NULL);
        total += xt_senders[i].begins;
    }
    /* Wait (bounded) for the outstanding completions. */
    double deadline = now_s() + 10;
    for (;;) {
        int left = 0;
        for (int i = 0; i < xt_threads; i++)
            left += atomic_load(&xt_senders[i].outstanding);
        if (left == 0)
            break;
        if (now_s() > deadline)
            die("xthread: %d sends still outstanding after 10 s", left);
        usleep(1000);
    }
    double secs = now_s() - xt_t0;
    double c1 = cpu_us();
    printf("begins %ld secs %.3f rate %.0f cpu_us %.0f\n", total, secs, (double)total / secs, c1 - c0);
    fflush(stdout);
}

#endif
