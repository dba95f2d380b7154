// cancel.h: stopping a run on SIGINT / SIGTERM.
//
// A tool calls fb_cancel_install() once; the handler only sets a process-wide flag (a second
// signal ends the process at once with status 130). The library polls the flag in every loop
// that can run long — YAML events, the plan (one check per tensor, which also bounds regex
// matching), validation, dataset indexing and sample selection, the forward pass (per layer
// and per expert group) and the writers' ordered loops — and fails with an error whose
// message starts with "interrupted". Writers keep their DST.partial for --resume; nothing
// else is written. Tools then exit 130 (fb_cancelled() tells an interruption from a failure).
#ifndef FB_COMMON_CANCEL_H
#define FB_COMMON_CANCEL_H

#include <stdatomic.h>

#include "common/fb.h"

// Installs the SIGINT / SIGTERM handlers (and ignores SIGPIPE). Idempotent.
void fb_cancel_install(void);

// The flag itself, for loops that take an atomic_int * (fb_ordered_job.cancel,
// fb_quantize_opts.cancel).
atomic_int *fb_cancel_flag(void);

// 1 once a cancellation was requested.
int fb_cancelled(void);

// 0, or -1 with err "interrupted (<where>)" once a cancellation was requested.
int fb_cancel_check(const char *where, fb_err *err);

// Requests / clears a cancellation without a signal (tests).
void fb_cancel_request(void);
void fb_cancel_reset(void);

#endif
