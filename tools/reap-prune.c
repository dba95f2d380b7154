// reap-prune: REAP expert pruning of a MoE checkpoint as stored (FP8, BF16 or quantized),
// every kept byte copied as it is. Thin: the job is src/jobs/prune.c (contract in prune.h).
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "common/cancel.h"
#include "common/cli.h"
#include "common/fb.h"
#include "common/paths.h"
#include "jobs/prune.h"

static const char *TOOL = "reap-prune";

// 1 when DST.partial exists (an interrupted run left resumable shards).
static int staging_exists(const char *dst) {
    char p[4096];
    snprintf(p, sizeof p, "%s.partial", dst);
    struct stat st;
    return stat(p, &st) == 0;
}

int main(int argc, char **argv) {
    fb_prune_opts o = {.tool = TOOL, .threads = fb_ncpu(), .max_shard_size = 5000000000ull, .shard_count = 1,
                       .cancel = fb_cancel_flag()};
    int json = 0;
    const fb_opt opts[] = {
        {"stats", 's', FB_OPT_STR, &o.stats_path, "STATS", "statistics file from `calibrate` (REAP saliency per expert)", 0, 0},
        {"sparsity", 0, FB_OPT_DOUBLE, &o.sparsity, "F", "fraction of experts removed in every layer, in (0, 1): E - floor(E*F) kept", 0, 0},
        {"experts", 'e', FB_OPT_INT, &o.n_keep, "N", "experts kept in every layer (instead of --sparsity)", 0, 1 << 20},
        {"per-layer", 0, FB_OPT_FLAG, &o.per_layer, NULL, "rank experts of all layers together (same total as uniform pruning), each layer keeping at least --min-experts; writes per-layer counts", 0, 0},
        {"min-experts", 0, FB_OPT_INT, &o.min_experts, "N", "with --per-layer: the fewest experts a layer keeps (default num_experts_per_tok, the least the router can pick its top-k from)", 0, 1 << 20},
        {"allow-nonuniform", 0, FB_OPT_FLAG, &o.allow_nonuniform, NULL, "write per-layer counts although no vLLM release (nor transformers, nor fourbit's engines) can load them", 0, 0},
        {"keep", 'k', FB_OPT_STR, &o.keep_path, "FILE", "reproduce the retained experts of a map (DST/" FB_PRUNE_MAP_NAME " of an earlier run, or llm-compressor's REAP report_path file)", 0, 0},
        {"stats-out", 0, FB_OPT_STR, &o.stats_out, "FILE", "also write the pruned model's statistics (kept experts renumbered) for nvfp4-quantize --calib", 0, 0},
        {"threads", 't', FB_OPT_INT, &o.threads, "N", "worker threads", 1, 1024},
        {"max-shard-size", 0, FB_OPT_SIZE, &o.max_shard_size, "SIZE", "largest output shard (5GB = 5e9 bytes)", 0, 0},
        {"force", 'f', FB_OPT_FLAG, &o.force, NULL, "replace a non-empty DST (and an existing --stats-out file)", 0, 0},
        {"resume", 0, FB_OPT_FLAG, &o.resume, NULL, "continue a killed run: keep shards whose manifest digest verifies", 0, 0},
        {"dry-run", 'n', FB_OPT_FLAG, &o.dry_run, NULL, "print which experts go (saliency, routed tokens) and the size saved; write nothing", 0, 0},
        {"allow-nan", 0, FB_OPT_FLAG, &o.allow_nan, NULL, "copy float tensors that hold NaN / Inf instead of failing", 0, 0},
        {"json", 0, FB_OPT_FLAG, &json, NULL, "print a JSON summary on stdout", 0, 0},
        {"quiet", 'q', FB_OPT_FLAG, &o.quiet, NULL, "no progress or summary on stderr", 0, 0},
        {"shard-index", 0, FB_OPT_INT, &o.shard_index, "I", "split job I of --shard-count: write output shards s with s % N == I", 0, 1 << 20},
        {"shard-count", 0, FB_OPT_INT, &o.shard_count, "N", "number of split jobs sharing DST.partial (then run once with --merge)", 1, 1 << 20},
        {"merge", 0, FB_OPT_FLAG, &o.merge, NULL, "after split jobs: verify their shards, write the rest, index, validate, rename", 0, 0},
        {0},
    };
    const char *pos[2];
    int npos;
    int prc = fb_cli_parse(
        argc, argv, TOOL, "--stats STATS (--sparsity F | --experts N) [options] SRC DST\n       reap-prune --keep MAP.json [options] SRC DST",
        "Removes the least salient routed experts of every MoE layer (REAP, arXiv 2510.13999), the same\n"
        "number in each layer, from SRC as stored: FP8 block-scaled, BF16 or already quantized tensors are\n"
        "copied byte for byte. Saliency of expert j = mean over the calibration tokens routed to j (its\n"
        "model's own top-k) of g_j x ||expert output||_2, where g_j is the combine weight of the forward\n"
        "(MiniMax-M2: sigmoid scores, top-k chosen with e_score_correction_bias, weights renormalised over\n"
        "the top-k without it; Qwen3-MoE: softmax, renormalised when norm_topk_prob); `calibrate` computes\n"
        "it. Ties: the higher index goes first. Kept experts are renumbered densely in their original order;\n"
        "the router gate rows and e_score_correction_bias are sliced with the same indices; the expert count\n"
        "in config.json (num_local_experts / num_experts) is updated and num_experts_per_tok checked. The map\n"
        "used is always written to DST/" FB_PRUNE_MAP_NAME ". Output is staged in DST.partial, validated\n"
        "and renamed into place.\n"
        "--per-layer: one ranking over all layers removes the same total as uniform pruning, no layer going\n"
        "below --min-experts; config.json gets the largest count and compressed-tensors' moe_sparsity_config\n"
        "{\"method\": \"prune\", \"num_experts\": [per layer]}. No vLLM release loads different counts per\n"
        "layer: such a result is refused unless --allow-nonuniform (--dry-run shows it either way).",
        opts, pos, 2, &npos);
    if (prc == 1) return 0;
    if (prc) return 2;
    if (npos != 2) {
        fprintf(stderr, "%s: need SRC and DST (see --help)\n", TOOL);
        return 2;
    }
    int modes = (o.sparsity != 0.0) + (o.n_keep != 0) + (o.keep_path != NULL);
    if (modes != 1) {
        fprintf(stderr, "%s: give exactly one of --sparsity F, --experts N and --keep FILE\n", TOOL);
        return 2;
    }
    if (o.sparsity != 0.0 && !(o.sparsity > 0.0 && o.sparsity < 1.0)) {
        fprintf(stderr, "%s: --sparsity must be in (0, 1), got %g\n", TOOL, o.sparsity);
        return 2;
    }
    if (!o.keep_path && !o.stats_path) {
        fprintf(stderr, "%s: --stats STATS is needed to rank the experts (or --keep MAP.json)\n", TOOL);
        return 2;
    }
    if (o.stats_out && !o.stats_path) {
        fprintf(stderr, "%s: --stats-out needs --stats\n", TOOL);
        return 2;
    }
    if ((o.min_experts || o.allow_nonuniform) && !o.per_layer) {
        fprintf(stderr, "%s: --min-experts and --allow-nonuniform need --per-layer\n", TOOL);
        return 2;
    }
    if (o.per_layer && o.stats_out) {
        fprintf(stderr, "%s: --stats-out with --per-layer: the statistics table holds one expert count per model\n", TOOL);
        return 2;
    }
    if (o.merge && o.shard_count < 2) {
        fprintf(stderr, "%s: --merge needs the --shard-count of the split jobs\n", TOOL);
        return 2;
    }
    fb_err err = {{0}};
    {
        // No output may replace or lie inside an input (or contain one).
        const char *ins[] = {pos[0], o.stats_path, o.keep_path};
        if (fb_path_check_output(pos[1], "DST", ins, 3, &err) ||
            (o.stats_out && fb_path_check_output(o.stats_out, "--stats-out", ins, 3, &err))) {
            fprintf(stderr, "%s: %s\n", TOOL, err.msg);
            return 1;
        }
        if (o.stats_out && !o.force && !o.dry_run && access(o.stats_out, F_OK) == 0) {
            fprintf(stderr, "%s: --stats-out %s: exists (use --force to replace it)\n", TOOL, o.stats_out);
            return 1;
        }
    }
    fb_cancel_install();
    fb_prune_result r;
    int rc = fb_prune_run(pos[0], pos[1], &o, o.dry_run ? stdout : stderr, &r, &err);
    if (rc == -2 || (rc && fb_cancelled())) {  // 130: as a shell reports a SIGINT
        if (staging_exists(pos[1]))
            fprintf(stderr, "%s: interrupted; finished shards are kept in %s.partial: rerun with --resume to continue\n",
                    TOOL, pos[1]);
        else
            fprintf(stderr, "%s: interrupted before anything was written\n", TOOL);
        fb_prune_result_free(&r);
        return 130;
    }
    if (rc) {
        fprintf(stderr, "%s: %s\n", TOOL, err.msg);
        fb_prune_result_free(&r);
        return 1;
    }
    if (o.dry_run && r.nonuniform)
        printf("  per-layer counts: %s\n", o.allow_nonuniform ? "would be written (--allow-nonuniform); no vLLM release loads them"
                                                              : "no vLLM release loads them: the run is refused without --allow-nonuniform");
    if (r.split_job && !o.quiet)
        fprintf(stderr, "%s: split job %d of %d: %zu of %zu shard(s) written (%zu resumed) in %s.partial; run again with "
                        "--merge --shard-count %d when every job has finished\n",
                TOOL, o.shard_index, o.shard_count, r.n_shards - r.n_other_jobs - r.n_resumed, r.n_shards, r.n_resumed,
                pos[1], o.shard_count);
    else if (!o.dry_run && !o.quiet && r.nonuniform) {
        fprintf(stderr, "%s: %d experts -> per-layer counts", TOOL, r.n_experts);
        for (int l = 0; l < r.n_layers; l++) fprintf(stderr, "%s%d", l ? ", " : " ", r.layer_keep[l]);
        fprintf(stderr, " (written with --allow-nonuniform: no vLLM release loads them); %zu tensors copied, %zu sliced, "
                        "%zu dropped, %.3f GB -> %.3f GB in %.2f s\n",
                r.n_copied, r.n_sliced, r.n_dropped, (double)r.bytes_in / 1e9, (double)r.bytes_out / 1e9, r.seconds);
    } else if (!o.dry_run && !o.quiet)
        fprintf(stderr, "%s: %d -> %d experts in %d layers: %zu tensors copied, %zu sliced, %zu dropped, %zu shard(s) "
                        "(%zu resumed), %.3f GB -> %.3f GB in %.2f s (%.2f GB/s of output), peak RSS %.1f MiB\n",
                TOOL, r.n_experts, r.n_keep, r.n_layers, r.n_copied, r.n_sliced, r.n_dropped, r.n_shards, r.n_resumed,
                (double)r.bytes_in / 1e9, (double)r.bytes_out / 1e9, r.seconds,
                r.seconds > 0 ? (double)r.bytes_out / 1e9 / r.seconds : 0.0, (double)fb_peak_rss() / 1048576.0);
    if (json) {
        json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:I, s:b, s:b}",
                              "tool", TOOL, "version", FB_VERSION, "src", pos[0], "dst", pos[1], "num_experts",
                              r.n_experts, "num_experts_kept", r.n_keep, "layers", r.n_layers, "copied",
                              (json_int_t)r.n_copied, "sliced", (json_int_t)r.n_sliced, "dropped",
                              (json_int_t)r.n_dropped, "shards", (json_int_t)r.n_shards, "resumed_shards",
                              (json_int_t)r.n_resumed, "bytes_in", (json_int_t)r.bytes_in, "bytes_out",
                              (json_int_t)r.bytes_out, "seconds", r.seconds, "peak_rss_bytes",
                              (json_int_t)fb_peak_rss(), "dry_run", o.dry_run, "split_job", r.split_job);
        // Per-layer counts (always: uniform runs list the same count in every layer).
        json_t *pl = json_array();
        for (int l = 0; l < r.n_layers && r.layer_keep; l++) json_array_append_new(pl, json_integer(r.layer_keep[l]));
        json_object_set_new(j, "experts_per_layer", pl);
        json_object_set_new(j, "nonuniform", json_boolean(r.nonuniform));
        json_dumpf(j, stdout, JSON_COMPACT);
        putchar('\n');
        json_decref(j);
    }
    fb_prune_result_free(&r);
    return 0;
}
