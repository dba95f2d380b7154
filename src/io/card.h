// card.h: the model card (README.md) every writer puts in its output directory.
//
// A Hugging Face model card is a Markdown file that opens with YAML front matter between two
// "---" lines; the Hub reads base_model, base_model_relation, library_name, tags and license
// from it. The source's own README.md describes the source (an FP8 release, its benchmarks)
// and is never copied: the card written here states what was done, from values the writer
// knows (nothing typed by hand):
//   front matter  base_model (config `_name_or_path` when it is an "org/name" id, else the
//                 source directory's name), base_model_relation: quantized (not for a BF16
//                 dequant, which is the same model in another dtype), library_name, tags,
//                 license copied from the source card's front matter when present;
//   body          tool and version, output format, scheme per module group (the plan), the
//                 ignore list as applied, the recipe (embedded), calibration data (from the
//                 statistics file's metadata: dataset file, digest, samples, sequence length,
//                 template), UTC date and wall time, sizes, files of the source not carried
//                 over, and how to serve it (vLLM on Hopper / on Blackwell, transformers).
// `ref-runner --card DST` appends the measured quality table (fb_card_append).
// README.md is documentation, not payload: it is not in fourbit-manifest.json (the appended
// quality table would otherwise break the digest), and the date and time in it differ run to
// run while every shard stays byte-identical.
#ifndef FB_IO_CARD_H
#define FB_IO_CARD_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/fb.h"

typedef struct fb_card_info {
    const char *tool;             // the writer: "nvfp4-quantize", "fp8-dequant", ...
    const char *src;              // the source path as given
    const char *src_dir;          // its directory (the source card's license is read there)
    const json_t *src_config;     // the source config.json, or NULL
    const char *scheme;           // "NVFP4", "NVFP4A16", "W4A16", "BF16" (dequant)
    const char *format;           // "compressed-tensors nvfp4-pack-quantized", ...
    const char *plan;             // the plan, one line per module group ("" or NULL: none)
    const char *const *ignore;    // the recipe's ignore list as applied
    size_t n_ignore;
    const char *recipe_path;      // NULL for fp8-dequant
    const char *recipe_text;      // embedded verbatim
    size_t recipe_len;
    const char *calib_path;       // statistics file, or NULL (its metadata is read here)
    double seconds;               // wall time of the run
    uint64_t bytes_in, bytes_out; // tensor payload (BF16 equivalent in, written out)
    size_t n_shards;
    const json_t *left_out;       // fb_side_files_left_out: [{"name", "why"}], or NULL
    int has_auto_map;             // the output config has auto_map: --trust-remote-code
} fb_card_info;

// Writes dir/README.md (via README.md.tmp + rename). Fails naming the file on I/O errors or an
// unreadable statistics file.
int fb_card_write(const char *dir, const fb_card_info *c, fb_err *err);

// Appends a Markdown section (text, ending in a newline) to dir/README.md, replacing an
// earlier section that starts with the same first line (so a second `ref-runner --card`
// replaces its table instead of adding another). Fails when dir has no README.md written by
// fourbit (a card of unknown origin is not edited).
int fb_card_append(const char *dir, const char *section, fb_err *err);

#endif
