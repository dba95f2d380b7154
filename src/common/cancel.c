// cancel.c: the SIGINT / SIGTERM flag (see cancel.h).
#include "common/cancel.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

// Process-wide by nature: a signal is delivered to the process, not to a job.
static atomic_int g_cancel;

static void on_signal(int sig) {
    (void)sig;
    if (atomic_exchange(&g_cancel, 1)) _exit(130);  // a second ^C: stop now (staging is resumable)
}

void fb_cancel_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;  // reads and writes go on; the loops poll the flag
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

atomic_int *fb_cancel_flag(void) { return &g_cancel; }

int fb_cancelled(void) { return atomic_load_explicit(&g_cancel, memory_order_relaxed) != 0; }

int fb_cancel_check(const char *where, fb_err *err) {
    if (!fb_cancelled()) return 0;
    return fb_fail(err, "interrupted (%s)", where);
}

void fb_cancel_request(void) { atomic_store(&g_cancel, 1); }

void fb_cancel_reset(void) { atomic_store(&g_cancel, 0); }
