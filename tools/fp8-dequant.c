// fp8-dequant: FP8 block-scaled checkpoint -> BF16 checkpoint, streaming, bit-exact with
// BF16(float(fp8) * scale_inv). Argument handling and messages; the job is src/jobs/dequant.c.
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "common/cli.h"
#include "common/cancel.h"
#include "common/fb.h"
#include "common/paths.h"
#include "jobs/dequant.h"

static const char *TOOL = "fp8-dequant";


int main(int argc, char **argv) {
    int threads = fb_ncpu(), force = 0, resume = 0, dry = 0, json = 0, quiet = 0, allow_nan = 0;
    int shard_index = 0, shard_count = 1, merge = 0;
    uint64_t max_shard = 5000000000ull;
    const fb_opt opts[] = {
        {"threads", 't', FB_OPT_INT, &threads, "N", "worker threads, one per CPU of this machine by default (each reads, dequantizes, writes in order)", 1, 1024},
        {"max-shard-size", 0, FB_OPT_SIZE, &max_shard, "SIZE", "largest output shard (5GB = 5e9 bytes, as Hugging Face)", 0, 0},
        {"force", 'f', FB_OPT_FLAG, &force, NULL, "replace a non-empty DST", 0, 0},
        {"resume", 0, FB_OPT_FLAG, &resume, NULL, "continue a killed run: keep shards whose manifest digest verifies", 0, 0},
        {"dry-run", 'n', FB_OPT_FLAG, &dry, NULL, "print what would be written and stop", 0, 0},
        {"json", 0, FB_OPT_FLAG, &json, NULL, "print a JSON summary on stdout", 0, 0},
        {"quiet", 'q', FB_OPT_FLAG, &quiet, NULL, "no progress or summary on stderr", 0, 0},
        {"allow-nan", 0, FB_OPT_FLAG, &allow_nan, NULL, "convert FP8 NaN codes (0x7F/0xFF) to NaN and write Inf/NaN outputs (e.g. from overflowing scales) instead of failing", 0, 0},
        {"shard-index", 0, FB_OPT_INT, &shard_index, "I", "split job I of --shard-count: write output shards s with s % N == I", 0, 1 << 20},
        {"shard-count", 0, FB_OPT_INT, &shard_count, "N", "number of split jobs sharing DST.partial (then run once with --merge)", 1, 1 << 20},
        {"merge", 0, FB_OPT_FLAG, &merge, NULL, "after split jobs: verify their shards, write the rest, index, validate, rename", 0, 0},
        {0},
    };
    const char *pos[2];
    int npos;
    int prc = fb_cli_parse(argc, argv, TOOL, "[options] SRC DST",
                           "Dequantizes an FP8 block-scaled checkpoint (weight F8_E4M3 + weight_scale_inv F32 per\n"
                           "128x128 tile, or weight_block_size from config.json) to BF16: each element is\n"
                           "BF16(float(fp8) * scale_inv). Other tensors are copied unchanged; config.json loses its\n"
                           "quantization_config; tokenizer and other files are copied. Output is staged in DST.partial\n"
                           "and renamed into place once complete and validated.",
                           opts, pos, 2, &npos);
    if (prc == 1) return 0;
    if (prc) return 2;
    if (npos != 2) {
        fprintf(stderr, "%s: need SRC and DST (see --help)\n", TOOL);
        return 2;
    }
    const char *src = pos[0], *dst = pos[1];
    fb_cancel_install();
    double t0 = fb_now();
    fb_err err = {{0}};
    {
        const char *ins[] = {src};
        if (fb_path_check_output(dst, "DST", ins, 1, &err)) {
            fprintf(stderr, "%s: %s\n", TOOL, err.msg);
            return 1;
        }
    }
    if (merge && shard_count < 2) {
        fprintf(stderr, "%s: --merge needs the --shard-count of the split jobs\n", TOOL);
        return 2;
    }
    fb_dequant_opts dopts = {.tool = TOOL, .threads = threads, .max_shard_size = max_shard, .force = force,
                         .resume = resume, .dry_run = dry, .quiet = quiet, .allow_nan = allow_nan,
                         .shard_index = shard_index, .shard_count = shard_count, .merge = merge};
    fb_dequant_result r;
    int rc = fb_dequant_run(src, dst, &dopts, dry ? stdout : stderr, &r, &err);
    if (rc) fprintf(stderr, "%s: %s\n", TOOL, err.msg);
    if (dry) return rc ? 1 : 0;
    size_t n_fp8 = r.n_fp8, n_copy = r.n_copy;
    uint64_t bytes_in = r.bytes_in, bytes_out = r.bytes_out;
    int n_shards = r.n_shards, resumed = r.n_resumed, others = r.n_other_jobs;
    json_t *left_out = r.left_out;
    double dt = fb_now() - t0;
    if (!rc) {
        if (!quiet && others)
            fprintf(stderr, "%s: %d of %d shard(s) written by this job (%d resumed), %.2f s, peak RSS %.1f MiB\n", TOOL,
                    n_shards - others - resumed, n_shards, resumed, dt, (double)fb_peak_rss() / 1048576.0);
        else if (!quiet)
            fprintf(stderr, "%s: %zu FP8 weights dequantized, %zu tensors copied, %d shard(s) (%d resumed), "
                            "%.3f GB in %.2f s (%.2f GB/s of input), peak RSS %.1f MiB\n",
                    TOOL, n_fp8, n_copy, n_shards, resumed, (double)bytes_in / 1e9, dt, (double)bytes_in / 1e9 / dt,
                    (double)fb_peak_rss() / 1048576.0);
        size_t nlo = left_out ? json_array_size(left_out) : 0;
        if (!quiet && nlo) {
            fprintf(stderr, "%s: not carried over from %s (listed in %s/README.md):\n", TOOL, src, dst);
            for (size_t i = 0; i < nlo; i++)
                fprintf(stderr, "  %-28s %s\n", json_string_value(json_object_get(json_array_get(left_out, i), "name")),
                        json_string_value(json_object_get(json_array_get(left_out, i), "why")));
        }
        if (json) {
            json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:i, s:i, s:I, s:I, s:f, s:f, s:I, s:i}", "tool", TOOL,
                                  "version", FB_VERSION, "src", src, "dst", dst, "fp8_weights", (json_int_t)n_fp8,
                                  "copied", (json_int_t)n_copy, "shards", n_shards, "resumed_shards", resumed,
                                  "bytes_in", (json_int_t)bytes_in, "bytes_out", (json_int_t)bytes_out, "seconds", dt,
                                  "gb_per_s_in", (double)bytes_in / 1e9 / dt, "peak_rss_bytes",
                                  (json_int_t)fb_peak_rss(), "threads", threads);
            json_object_set_new(o, "shards_of_other_jobs", json_integer(others));
            json_object_set_new(o, "not_carried_over", left_out ? json_incref(left_out) : json_array());
            json_dumpf(o, stdout, JSON_COMPACT);
            putchar('\n');
            json_decref(o);
        }
    }
    if (left_out) json_decref(left_out);
    return rc == 0 ? 0 : rc == -2 ? 130 : 1;  // 130: as a shell reports a SIGINT
}
