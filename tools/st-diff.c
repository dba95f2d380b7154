// st-diff: tensor-by-tensor comparison of two safetensors files or checkpoint directories.
// Names, then dtypes and shapes, then bytes (exact, the default) or values (--atol/--rtol:
// |a - b| <= atol + rtol * |b|, NaN equal to NaN). Exit 0 equal, 1 different, 2 usage error
// or unreadable input (like diff(1)).
// An FP8 block-scaled weight (F8_E4M3 + weight_scale_inv) on one side and a BF16 tensor of the
// same name and shape on the other -- a source and its fp8-dequant copy -- is compared
// dequantized (bf16(fp8 * scale_inv), as fp8-dequant writes it), and its weight_scale_inv is
// not reported as a tensor missing from the other side.
// Argument handling, the text summary and --json; the comparison is src/jobs/stdiff.c.
#include "common/cli.h"
#include "common/fb.h"
#include "jobs/stdiff.h"

static const char *TOOL = "st-diff";

int main(int argc, char **argv) {
    double atol = -1, rtol = -1;
    int json = 0, quiet = 0, max_report = 5, meta = 0, common = 0;
    const fb_opt opts[] = {
        {"atol", 0, FB_OPT_DOUBLE, &atol, "X", "compare values with absolute tolerance X (default: exact bytes)", 0, 0},
        {"rtol", 0, FB_OPT_DOUBLE, &rtol, "X", "compare values with relative tolerance X (default: exact bytes)", 0, 0},
        {"max-report", 0, FB_OPT_INT, &max_report, "N", "mismatching indices printed per tensor", 0, 1000000},
        {"common", 0, FB_OPT_FLAG, &common, NULL, "compare only the tensors present in both (names on one side are listed, not counted)", 0, 0},
        {"metadata", 0, FB_OPT_FLAG, &meta, NULL, "also compare each file's __metadata__ (provenance)", 0, 0},
        {"json", 0, FB_OPT_FLAG, &json, NULL, "print a JSON report on stdout instead of text", 0, 0},
        {"quiet", 'q', FB_OPT_FLAG, &quiet, NULL, "print nothing; only the exit status", 0, 0},
        {0},
    };
    const char *pos[2];
    int npos;
    int prc = fb_cli_parse(argc, argv, TOOL, "[options] A B",
                           "Compares two safetensors files or checkpoint directories tensor by tensor: names,\n"
                           "dtypes, shapes, then bytes (exact) or values (--atol/--rtol; NaN equals NaN). Prints the\n"
                           "first mismatching indices with both values. Exit 0 equal, 1 different, 2 usage error or\n"
                           "unreadable input.",
                           opts, pos, 2, &npos);
    if (prc == 1) return 0;
    if (prc) return 2;
    if (npos != 2) {
        fprintf(stderr, "%s: need A and B (see --help)\n", TOOL);
        return 2;
    }
    // A negative tolerance means "not given": values mode when either is given, the other 0.
    int values = atol >= 0 || rtol >= 0;
    if (atol < 0) atol = 0;
    if (rtol < 0) rtol = 0;
    int text = !json && !quiet;
    fb_stdiff_opts o = {.values = values, .atol = atol, .rtol = rtol, .max_report = max_report, .common = common,
                        .metadata = meta};
    fb_stdiff_result r;
    fb_err err = {{0}};
    if (fb_stdiff_run(pos[0], pos[1], &o, text ? stdout : NULL, &r, &err)) {
        fprintf(stderr, "%s: %s\n", TOOL, err.msg);
        return 2;
    }
    if (json) {
        json_t *jr = json_object();
        json_object_set_new(jr, "equal", json_boolean(!r.differ));
        json_object_set_new(jr, "compared", json_integer((json_int_t)r.n_compared));
        json_object_set_new(jr, "fp8_pairs", json_integer((json_int_t)r.fp8_pairs));
        json_object_set_new(jr, "mode", json_string(values ? "values" : "bytes"));
        json_object_set(jr, "only_in_a", r.only_in_a);
        json_object_set(jr, "only_in_b", r.only_in_b);
        json_object_set(jr, "different", r.different);
        json_dumpf(jr, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(jr);
    } else if (text) {
        printf("%s: %zu tensors compared (%s), %zu equal, %zu different, %zu only in A, %zu only in B\n",
               r.differ ? "DIFFERENT" : "EQUAL", r.n_compared, values ? "values" : "bytes", r.n_equal, r.n_diff,
               r.only_a, r.only_b);
        if (r.fp8_pairs)
            printf("  %zu FP8 block-scaled weights compared dequantized with their BF16 counterparts (their "
                   "weight_scale_inv consumed, not listed)\n", r.fp8_pairs);
    }
    int differ = r.differ;
    fb_stdiff_result_free(&r);
    return differ ? 1 : 0;
}
