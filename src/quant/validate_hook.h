// validate_hook.h: the check every writer runs on its staging directory before renaming it
// into place (DESIGN.md: "refuse to write anything a loader would reject").
#ifndef FB_QUANT_VALIDATE_HOOK_H
#define FB_QUANT_VALIDATE_HOOK_H

#include "common/fb.h"

// Re-opens the finished checkpoint in `dir` with the full reader (every shard header, index
// <-> shards) and, for MiniMax-M2 checkpoints (config.json model_type "minimax_m2"), runs the
// validate-ignore-list rules on it (other architectures: the structural checks only). Returns 0 when it would load,
// -1 with err listing the first failing findings otherwise.
int fb_validate_output(const char *dir, fb_err *err);

#endif
