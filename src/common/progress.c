// progress.c: see progress.h.
#include "common/progress.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

#include "common/fb.h"

struct fb_progress {
    const char *label;
    uint64_t total_bytes, total_items;
    _Atomic uint64_t bytes, items;
    atomic_int stop;
    int enabled;
    double t0;
    pthread_t th;
};

static void draw(fb_progress *p) {
    double dt = fb_now() - p->t0;
    uint64_t b = atomic_load(&p->bytes), it = atomic_load(&p->items);
    double rate = dt > 0 ? (double)b / dt : 0;
    double eta = rate > 0 && p->total_bytes > b ? (double)(p->total_bytes - b) / rate : 0;
    fprintf(stderr, "\r%s: %llu/%llu tensors  %.2f/%.2f GB  %.2f GB/s  ETA %d:%02d   ", p->label,
            (unsigned long long)it, (unsigned long long)p->total_items, (double)b / 1e9,
            (double)p->total_bytes / 1e9, rate / 1e9, (int)eta / 60, (int)eta % 60);
    fflush(stderr);
}

static void *loop(void *arg) {
    fb_progress *p = arg;
    while (!atomic_load(&p->stop)) {
        usleep(500000);
        if (!atomic_load(&p->stop)) draw(p);
    }
    return NULL;
}

fb_progress *fb_progress_start(const char *label, uint64_t total_bytes, uint64_t total_items, int quiet) {
    fb_progress *p = fb_calloc(1, sizeof *p);
    p->label = label;
    p->total_bytes = total_bytes;
    p->total_items = total_items;
    p->t0 = fb_now();
    p->enabled = !quiet && isatty(2);
    if (p->enabled && pthread_create(&p->th, NULL, loop, p) != 0) p->enabled = 0;
    return p;
}

void fb_progress_add(fb_progress *p, uint64_t bytes, uint64_t items) {
    atomic_fetch_add(&p->bytes, bytes);
    atomic_fetch_add(&p->items, items);
}

void fb_progress_finish(fb_progress *p) {
    if (!p) return;
    if (p->enabled) {
        atomic_store(&p->stop, 1);
        pthread_join(p->th, NULL);
        fprintf(stderr, "\r%*s\r", 100, "");
    }
    free(p);
}
