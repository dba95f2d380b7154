// cuengine.h: the CUDA engine (cuda/cufwd.cu) behind the engine interface (calib/engine.h).
// Always compiled: in a build without CUDA both functions answer "not built".
#ifndef FB_CUDA_CUENGINE_H
#define FB_CUDA_CUENGINE_H

#include "calib/engine.h"

// 1 when this build has CUDA and a GPU is usable (name filled), else 0 with the reason in why.
int fb_engine_cuda_available(char *name, size_t name_sz, char *why, size_t why_sz);

// The CUDA engine. NULL with err when CUDA is not built, no GPU is usable or the options are
// invalid. opts->gemm_f32 selects f32 GEMMs; opts->progress is not reported.
fb_engine *fb_engine_cuda_new(fb_wsrc *src, const fb_model_config *cfg, const fb_engine_opts *o,
                              fb_err *err);

#endif
