// progress.h: progress line on stderr for long jobs ("tensors, GB, GB/s, ETA"), drawn by a
// background thread twice a second, only when stderr is a terminal and not quiet.
// Counters are atomic: workers call fb_progress_add from any thread.
#ifndef FB_COMMON_PROGRESS_H
#define FB_COMMON_PROGRESS_H

#include <stdint.h>

typedef struct fb_progress fb_progress;

// Starts a progress display for `total_bytes` of work over `total_items` items. Returns a
// handle (never NULL); when disabled (quiet or not a tty) nothing is printed.
fb_progress *fb_progress_start(const char *label, uint64_t total_bytes, uint64_t total_items, int quiet);
void fb_progress_add(fb_progress *p, uint64_t bytes, uint64_t items);
// Stops the thread, clears the line, frees p.
void fb_progress_finish(fb_progress *p);

#endif
