// stdiff.h: tensor-by-tensor comparison of two safetensors files or checkpoint directories, the
// job behind st-diff (the golden-regression tool).
//
// Order of the comparison:
//   1. names: every tensor of A absent from B ("only in A"), then every tensor of B absent
//      from A ("only in B"), each in its checkpoint's tensor order;
//   2. every tensor present in both, in A's order: dtype and shape, then the data, either
//      - bytes (the default): element by element, memcmp of the stored bytes; or
//      - values (opts.values, float dtypes only; others fall back to bytes): element a of A
//        and b of B are equal when |a - b| <= atol + rtol * |b| (in f64), NaN equal to NaN,
//        an infinity equal only to itself;
//   3. with opts.metadata: the __metadata__ of the i-th file of A against the i-th file of B
//      (the same keys with the same values), for i below both file counts.
// FP8 pairs: an FP8 block-scaled weight (F8_E4M3 + weight_scale_inv, quant/source.h) on one
// side and a BF16 tensor of the same name and 2-D shape on the other -- a source and its
// fp8-dequant copy -- is compared dequantized (bf16(fp8 * scale_inv), as fp8-dequant writes
// it): bf16 bytes, or values with the tolerances. Its weight_scale_inv is then not reported
// as a tensor missing from the other side.
//
// Verdict: different when a tensor differs, a __metadata__ differs, or (unless opts.common)
// a tensor is present on one side only.
#ifndef FB_JOBS_STDIFF_H
#define FB_JOBS_STDIFF_H

#include <stdio.h>

#include <jansson.h>

#include "common/fb.h"

typedef struct fb_stdiff_opts {
    int values;          // 1: compare values with the tolerances; 0: exact bytes
    double atol, rtol;   // tolerances of values mode (>= 0; unused in bytes mode)
    int max_report;      // mismatching indices reported per tensor (>= 0)
    int common;          // tensors present on one side only do not make the verdict "different"
    int metadata;        // also compare each file's __metadata__ (step 3 above)
} fb_stdiff_opts;

typedef struct fb_stdiff_result {
    size_t n_compared;   // tensors present in both
    size_t n_equal, n_diff;
    size_t only_a, only_b;   // tensors on one side only (paired FP8 scales not counted)
    size_t meta_diff;        // file pairs whose __metadata__ differs
    size_t fp8_pairs;        // FP8 weights compared dequantized against BF16
    int differ;              // the verdict (header above)
    // JSON views (owned; fb_stdiff_result_free):
    json_t *only_in_a, *only_in_b;  // arrays of tensor names
    json_t *different;   // array, one object per differing tensor, keys in this order:
                         //   "name";
                         //   dtype or shape differs: "dtype_a", "dtype_b", "shape_differs" (bool);
                         //   FP8 pair: "fp8_pair" (true), "mismatches", "first_mismatches";
                         //   else: "max_abs", "max_rel" (values mode only; -1 when infinite),
                         //         "mismatches", "first_mismatches";
                         // mismatches: the count of elements that differ; first_mismatches:
                         // the first max_report of their indices as strings "[i, j]".
} fb_stdiff_result;

// Compares checkpoints (or .safetensors files) a and b. `report`, when not NULL, receives the
// text listing as the comparison goes: "only in A: NAME" / "only in B: NAME" lines, for each
// differing tensor its first max_report mismatches ("    NAME[i, j]: A vs B") and a summary
// line ("  NAME: ..."), or its dtypes and shapes, and "__metadata__ differs: FILE vs FILE" lines.
// NULL: nothing is written. Inputs are opened read-only and never modified.
// Returns 0 with res filled (free with fb_stdiff_result_free) whatever the verdict; -1 with err
// naming the file and tensor when an input cannot be opened or read (res then holds nothing to
// free; lines already written to report stay written).
int fb_stdiff_run(const char *a, const char *b, const fb_stdiff_opts *o, FILE *report, fb_stdiff_result *res,
                  fb_err *err);

// Frees what a result owns (and clears it).
void fb_stdiff_result_free(fb_stdiff_result *r);

#endif
