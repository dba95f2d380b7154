// test_pool.c: the ordered parallel loop commits strictly in item order whatever the compute
// order, stops at the first failure with its message, and stops when cancelled.
#include <unistd.h>

#include "common/pool.h"
#include "test.h"

typedef struct {
    size_t committed[512];
    size_t n_committed;
    int fail_at;        // compute of this item fails (-1: none)
    atomic_int *cancel;
    size_t cancel_at;
} ctx_t;

static int compute(void *ctx, size_t k, int tid, fb_err *err) {
    ctx_t *c = ctx;
    if (k % 7 == 0) usleep(200);  // make later items finish first now and then
    if ((int)k == c->fail_at) return fb_fail(err, "item %zu failed on thread %d", k, tid);
    if (c->cancel && k == c->cancel_at) atomic_store(c->cancel, 1);
    return 0;
}

static int commit(void *ctx, size_t k, int tid, fb_err *err) {
    ctx_t *c = ctx;
    c->committed[c->n_committed++] = k;
    return 0;
}

int main(void) {
    for (int threads = 1; threads <= 4; threads++) {
        ctx_t c = {.fail_at = -1};
        fb_ordered_job j = {.n_items = 300, .n_threads = threads, .compute = compute, .commit = commit, .ctx = &c};
        fb_err e;
        CHECK(fb_run_ordered(&j, &e) == 0, "run with %d threads", threads);
        int in_order = c.n_committed == 300;
        for (size_t i = 0; in_order && i < 300; i++) in_order = c.committed[i] == i;
        CHECK(in_order, "%d threads: %zu items committed in order", threads, c.n_committed);

        ctx_t f = {.fail_at = 123};
        j.ctx = &f;
        fb_err e2 = {{0}};
        CHECK(fb_run_ordered(&j, &e2) == -1 && strstr(e2.msg, "item 123 failed"), "failure propagated: %s", e2.msg);
        CHECK(f.n_committed <= 123, "nothing after the failed item is committed (%zu)", f.n_committed);
        for (size_t i = 0; i < f.n_committed; i++) CHECK(f.committed[i] == i, "prefix in order");

        atomic_int cancel = 0;
        ctx_t g = {.fail_at = -1, .cancel = &cancel, .cancel_at = 50};
        j.ctx = &g;
        j.cancel = &cancel;
        CHECK(fb_run_ordered(&j, &e) == -2, "cancel returns -2");
        CHECK(g.n_committed < 300, "cancel stops the loop (%zu committed)", g.n_committed);
        j.cancel = NULL;
    }
    ctx_t z = {.fail_at = -1};
    fb_ordered_job j0 = {.n_items = 0, .n_threads = 2, .compute = compute, .commit = commit, .ctx = &z};
    fb_err e;
    CHECK(fb_run_ordered(&j0, &e) == 0 && z.n_committed == 0, "empty job");
    TEST_MAIN_END();
}
