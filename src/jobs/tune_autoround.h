// tune_autoround.h: the AutoRound layer loop (jobs/tune.h describes its passes), beside
// fb_tune_run's per-Linear loop (GPTQ): same arguments; o->algo is FB_TUNE_AUTOROUND, the ar_*
// options and expert_group apply, o->absmax must be NULL (it gathers no W4A4 input scales), every
// Linear int4 group 128 in a format with pack_scaled. Returns 0, -1 with err, -2 when cancelled.
#ifndef FB_JOBS_TUNE_AUTOROUND_H
#define FB_JOBS_TUNE_AUTOROUND_H

#include "jobs/tune.h"

int fb_tune_run_autoround(fb_wsrc *base, fb_wsrc *overlay, const fb_model_config *cfg, const fb_ds_tokens *S,
                          const fb_tune_linear *lin, size_t n, const fb_tune_opts *o, fb_tune_result *res,
                          fb_err *err);

#endif
