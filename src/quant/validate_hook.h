// validate_hook.h: the check every writer runs on its staging directory before renaming it
// into place (DESIGN.md: "refuse to write anything a loader would reject").
#ifndef FB_QUANT_VALIDATE_HOOK_H
#define FB_QUANT_VALIDATE_HOOK_H

#include "common/fb.h"
#include "io/checkpoint.h"

// Re-opens the finished checkpoint in `dir` with the full reader (every shard header, index
// <-> shards) and, for MiniMax-M2 checkpoints (config.json model_type "minimax_m2"), runs the
// validate-ignore-list rules on it (other architectures: the structural checks only). Returns 0 when it would load,
// -1 with err listing the first failing findings otherwise.
int fb_validate_output(const char *dir, fb_err *err);
// The same, where errors of one rule (e.g. "moe.nonuniform" for reap-prune
// --allow-nonuniform) do not count; allow NULL is fb_validate_output.
int fb_validate_output_allowing(const char *dir, const char *allow, fb_err *err);

// The same rules on what a recipe would write from src (validate-ignore-list --recipe), run by
// the quantizers before they read statistics or write anything, dry run included: a recipe
// that quantizes the router gates is refused up front, not blamed on the statistics file or
// found after the whole job. Only errors the recipe decides count (ignore, router, ct.*,
// recipe.*, quant.*, tensor.keyerror); what the source itself lacks is left to
// fb_validate_output. Families of the architecture table only (others: 0). Returns 0 or -1 with err listing
// the first failing findings, one per line.
struct fb_recipe;
int fb_validate_recipe_before_write(const fb_ckpt *src, const struct fb_recipe *r, fb_err *err);

#endif
