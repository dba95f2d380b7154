// pool.h: an ordered parallel loop — the pipeline every streaming tool runs.
//
// Items 0..n-1 are computed by n_threads threads in any order (each thread reads its input
// with pread and computes into its own buffers), then committed strictly in item order
// (writing the output sequentially), one at a time. A thread that finished item k waits for
// k-1 to be committed before committing k, so each thread holds at most one item: memory is
// n_threads x (one item's buffers), whatever the model size. The first failure (or a set
// cancel flag) stops the loop; its message is returned.
#ifndef FB_COMMON_POOL_H
#define FB_COMMON_POOL_H

#include <stdatomic.h>
#include <stddef.h>

#include "common/fb.h"

typedef struct fb_ordered_job {
    size_t n_items;
    int n_threads;
    // Computes item k on thread tid (0..n_threads-1). 0 or -1 with err set.
    int (*compute)(void *ctx, size_t k, int tid, fb_err *err);
    // Commits item k (called in order 0, 1, 2, ..., never concurrently). 0 or -1.
    int (*commit)(void *ctx, size_t k, int tid, fb_err *err);
    void *ctx;
    atomic_int *cancel;  // optional: set non-zero (e.g. by a signal handler) to stop
} fb_ordered_job;

// Runs the job. Returns 0, -1 with err on the first failure, or -2 when cancelled.
int fb_run_ordered(const fb_ordered_job *j, fb_err *err);

#endif
