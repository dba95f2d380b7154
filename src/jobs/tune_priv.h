// tune_priv.h: what tune.c gives the other layer loops (jobs/tune_autoround.c): loading a weight,
// the layer-boundary states.
#ifndef FB_JOBS_TUNE_PRIV_H
#define FB_JOBS_TUNE_PRIV_H

#include "jobs/tune.h"

// Loads the whole 2-D weight `name` [R, C] as f32; fails naming it on a NaN / Inf.
int fb_tune_load_weight(fb_wsrc *s, const char *name, int64_t R, int64_t C, float *W, fb_err *err);

// Layer-boundary states (tune.h: state_dir): stage layer l's input chains (each n_tok x
// hidden), load them back (checked against the key and digest), drop those below keep_from.
int fb_tune_state_save(const fb_tune_opts *o, int layer, const float *const *chains, int nchains, size_t n_tok,
                       size_t hidden, fb_err *err);
int fb_tune_state_load(const fb_tune_opts *o, int layer, float *const *chains, int nchains, size_t n_tok,
                       size_t hidden, fb_err *err);
void fb_tune_state_prune(const fb_tune_opts *o, int n_layers);
// The end of layer l in either loop (rc: the layer's status so far): when all went well, first
// stages layer l + 1's input chains (next[0..nchains), the layer's outputs), then hands the
// overlay to o->layer_done (which may finish shards), then drops the states no longer needed;
// clears the overlay. So whenever the shards hold layers 0..k-1, layer k's input is staged: a
// run killed at any point, even between two layers, resumes where it stopped.
int fb_tune_layer_end(const fb_tune_opts *o, int l, fb_wsrc *overlay, int n_layers, int rc, const float *const *next,
                      int nchains, size_t n_tok, size_t hidden, fb_err *err);


#endif
