// dataset.h: JSONL calibration datasets -> token id sequences (what `calibrate` runs the model
// on, and what `calibrate --dump-tokens` prints).
//
// Input: one or more JSONL files, one JSON object per line (blank lines are skipped; a UTF-8
// BOM at the start of a file is skipped). A record is, by the first key present:
//   input_ids      [int, ...]                 pre-tokenized; used as is (ids checked against
//                                             the tokenizer's range when one is given, and
//                                             against the model's vocabulary by
//                                             fb_ds_load_tokens); needs no tokenizer
//   messages       [{role, content, ...}]     chat; roles system / user / assistant / tool;
//                                             rendered with the chosen chat template (chat.h),
//                                             the record's `tools` list and its
//                                             `chat_template_kwargs` object passed along
//   conversations  [{from, value}]            ShareGPT style; from human|user -> user,
//                                             gpt|assistant -> assistant, system, tool
//   text           "..."                      plain text, encoded with add_special_tokens
//                                             (fb_ds_opts.text_add_special, default 1, as
//                                             `tokenizer(text)` does)
// The tokenizer is needed only by records that are not input_ids: fb_ds_build and
// fb_ds_record_ids take t = NULL and then load fb_ds_opts.tokenizer_path when the first such
// record is met (a missing or bad tokenizer is then an error naming that record).
// Chat renderings are encoded without the post-processor, as apply_chat_template(tokenize=True)
// does (the MiniMax template writes its BOS itself). Every line is parsed and checked when the
// dataset is opened, so a bad line is an error naming the file and line number whatever the
// sampling options; only line offsets stay in memory (24 bytes a line), records are re-read
// with pread when selected.
//
// Selection (fb_ds_build), deterministic for a given seed:
//   1. order: record indices 0..n-1 over all files in the order given, shuffled unless
//      no_shuffle with Fisher-Yates driven by splitmix64:
//        state = seed
//        next(): state += 0x9E3779B97F4A7C15; z = state;
//                z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9; z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
//                return z ^ (z >> 31)                               (all mod 2^64)
//        for i = n-1 down to 1: j = next() % (i + 1); swap(idx[i], idx[j])
//   2. walk the order, tokenizing each record: fewer than min_len ids -> skipped; more than
//      seq_len ids -> skipped with skip_long (REAP's truncate=False), else cut to the first
//      seq_len ids; stop when `samples` are kept (0: keep all). Sampling is without replacement;
//      fewer records than asked is not an error (the counts say what happened).
#ifndef FB_IO_DATASET_H
#define FB_IO_DATASET_H

#include <jansson.h>

#include "common/fb.h"
#include "io/chat.h"
#include "io/tokenizer.h"

typedef struct fb_ds_opts {
    size_t samples;        // N: samples to keep; 0 = all that qualify
    size_t seq_len;        // L: max ids per sample; 0 = no limit
    uint64_t seed;         // S: shuffle seed
    int no_shuffle;        // 1: take records in file order
    int skip_long;         // 1: drop samples longer than L instead of truncating them
    size_t min_len;        // drop samples with fewer ids (default 1: drop empty ones)
    int text_add_special;  // `text` records: apply the tokenizer's post-processor (default 1)
    fb_chat_opts chat;     // template for `messages` / `conversations` (default minimax-m2)
    const char *tokenizer_path;  // loaded on first need when no tokenizer is passed (NULL: none)
} fb_ds_opts;

// Defaults: samples 0, seq_len 0, seed 42, shuffle on, truncate, min_len 1, text_add_special 1,
// MiniMax-M2 template without generation prompt.
void fb_ds_opts_default(fb_ds_opts *o);

typedef struct fb_dataset fb_dataset;

// Opens and indexes JSONL files (every line parsed and checked). Returns 0 and *out (close
// with fb_ds_close), or -1 with err "FILE:LINE: what is wrong".
int fb_ds_open(const char *const *paths, size_t npaths, fb_dataset **out, fb_err *err);

// Closes the files and frees the index (NULL is fine).
void fb_ds_close(fb_dataset *ds);

// Number of records (non-blank lines) over all files.
size_t fb_ds_count(const fb_dataset *ds);

// Where record i comes from: its file path (owned by ds) and 1-based line number.
void fb_ds_where(const fb_dataset *ds, size_t i, const char **path, size_t *line);

// Reads and parses record i; *out is a new reference (json_decref it). -1 on I/O errors.
int fb_ds_record(fb_dataset *ds, size_t i, json_t **out, fb_err *err);

// Token ids of record i (rendered and encoded per o; not cut to seq_len), appended to *out.
// -1 with err "FILE:LINE: ..." when the record cannot be rendered or tokenized.
int fb_ds_record_ids(fb_dataset *ds, size_t i, const fb_ds_opts *o, fb_tok *t, fb_ids *out, fb_err *err);

// Fills idx[0..n) with 0..n-1 shuffled as described above.
void fb_ds_shuffle(size_t *idx, size_t n, uint64_t seed);

typedef struct fb_ds_sample {
    int32_t *ids;   // [n] owned by the set
    size_t n;
    size_t record;  // index of the record it came from (fb_ds_where names it)
} fb_ds_sample;

typedef struct fb_ds_set {
    fb_ds_sample *s;  // [n] in selection order
    size_t n;
    size_t total_tokens;
    size_t n_records;       // records in the dataset
    size_t n_visited;       // records tokenized before the selection was complete
    size_t n_skipped_long;  // dropped by skip_long
    size_t n_skipped_short; // dropped by min_len
    size_t n_truncated;     // cut to seq_len
} fb_ds_set;

// Builds the calibration set from an open dataset (see "Selection"). Returns 0 and *out (free
// with fb_ds_set_free), or -1 with err naming the file and line of the failing record.
int fb_ds_build(fb_dataset *ds, const fb_ds_opts *o, fb_tok *t, fb_ds_set *out, fb_err *err);

// Frees the samples and zeroes the set.
void fb_ds_set_free(fb_ds_set *s);

// Writes the set as JSONL, one `{"input_ids": [1, 2, 3]}` line per sample (json.dumps style),
// to f; `name` names the output in errors. -1 on a write error.
int fb_ds_write_jsonl(const fb_ds_set *s, FILE *f, const char *name, fb_err *err);

// The selected samples packed for a forward pass (calibrate, ref-runner): the ids of every
// sample back to back, sample i at ids[starts[i] .. starts[i+1]).
typedef struct fb_ds_tokens {
    size_t n;            // samples
    size_t *starts;      // [n + 1]
    int32_t *ids;        // [n_tok]
    size_t n_tok;
    fb_ds_set set;       // the samples as built (records, counts of skipped / truncated)
} fb_ds_tokens;

// Opens the comma-separated list of JSONL files `path_list`, builds the samples (fb_ds_build)
// and packs them. Fails naming file:line for a token id outside [0, vocab), and when no record
// gives a usable sample. *out is owned by the caller (fb_ds_tokens_free), empty on failure.
int fb_ds_load_tokens(const char *path_list, const fb_ds_opts *o, fb_tok *tok, int vocab,
                      fb_ds_tokens *out, fb_err *err);
void fb_ds_tokens_free(fb_ds_tokens *t);

// Splits a comma-separated list in place of a copy: *buf owns the strings, *items (malloc'ed)
// points into it. Returns the count. Free both with free().
size_t fb_split_list(const char *list, char **buf, const char ***items);

#endif
