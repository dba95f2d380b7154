// pool.c: see pool.h.
#include "common/pool.h"

#include <pthread.h>
#include <string.h>
#include <time.h>

typedef struct {
    const fb_ordered_job *j;
    atomic_size_t next;
    size_t turn;            // next item to commit (under mu)
    int failed;             // under mu
    fb_err err;             // first failure
    pthread_mutex_t mu;
    pthread_cond_t cv;
} run_state;

typedef struct {
    run_state *st;
    int tid;
} worker_arg;

static int stopped(run_state *st) {
    return st->failed || (st->j->cancel && atomic_load(st->j->cancel));
}

static void fail(run_state *st, const fb_err *e) {
    pthread_mutex_lock(&st->mu);
    if (!st->failed) {
        st->failed = 1;
        st->err = *e;
    }
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
}

static void *worker(void *arg) {
    worker_arg *wa = arg;
    run_state *st = wa->st;
    const fb_ordered_job *j = st->j;
    fb_err e;
    for (;;) {
        size_t k = atomic_fetch_add(&st->next, 1);
        if (k >= j->n_items) break;
        pthread_mutex_lock(&st->mu);
        int stop = stopped(st);
        pthread_mutex_unlock(&st->mu);
        if (stop) break;
        e.msg[0] = 0;
        if (j->compute(j->ctx, k, wa->tid, &e) != 0) {
            fail(st, &e);
            break;
        }
        pthread_mutex_lock(&st->mu);
        // A cancel flag set from a signal handler cannot signal the condition variable, so
        // the wait wakes up every 50 ms to look at it.
        while (st->turn != k && !stopped(st)) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 50000000L;
            if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
            pthread_cond_timedwait(&st->cv, &st->mu, &ts);
        }
        if (stopped(st)) {
            pthread_cond_broadcast(&st->cv);  // wake the others: they must stop too
            pthread_mutex_unlock(&st->mu);
            break;
        }
        pthread_mutex_unlock(&st->mu);
        // Only this thread can be at turn k: commit outside the lock, then advance.
        int rc = j->commit(j->ctx, k, wa->tid, &e);
        if (rc != 0) {
            fail(st, &e);
            break;
        }
        pthread_mutex_lock(&st->mu);
        st->turn = k + 1;
        pthread_cond_broadcast(&st->cv);
        pthread_mutex_unlock(&st->mu);
    }
    return NULL;
}

int fb_run_ordered(const fb_ordered_job *j, fb_err *err) {
    run_state st;
    memset(&st, 0, sizeof st);
    st.j = j;
    atomic_init(&st.next, 0);
    pthread_mutex_init(&st.mu, NULL);
    pthread_cond_init(&st.cv, NULL);
    int nt = j->n_threads < 1 ? 1 : j->n_threads;
    pthread_t *th = fb_calloc((size_t)nt, sizeof *th);
    worker_arg *wa = fb_calloc((size_t)nt, sizeof *wa);
    int started = 0;
    for (int t = 0; t < nt; t++) {
        wa[t].st = &st;
        wa[t].tid = t;
        if (t == 0) continue;  // thread 0 is the caller
        if (pthread_create(&th[t], NULL, worker, &wa[t]) != 0) break;
        started = t;
    }
    worker(&wa[0]);
    for (int t = 1; t <= started; t++) pthread_join(th[t], NULL);
    free(th);
    free(wa);
    pthread_mutex_destroy(&st.mu);
    pthread_cond_destroy(&st.cv);
    if (st.failed) {
        if (err) *err = st.err;
        return -1;
    }
    if (j->cancel && atomic_load(j->cancel)) return -2;
    return 0;
}
