// quantize_main.h: the command line shared by nvfp4-quantize and w4a16-quantize (one table,
// one set of messages and exit codes); each tool is a main() that calls fb_quantize_main.
#ifndef FB_TOOLS_QUANTIZE_MAIN_H
#define FB_TOOLS_QUANTIZE_MAIN_H

#include <signal.h>
#include <stdatomic.h>
#include <string.h>

#include <jansson.h>

#include <sys/stat.h>

#include "common/cancel.h"
#include "common/cli.h"
#include "common/fb.h"
#include "common/paths.h"
#include "io/chat.h"
#include "io/dataset.h"
#include "jobs/quantize.h"
#include "quant/recipe.h"
#include "quant/scheme.h"


// 1 when DST.partial exists (an interrupted run left resumable shards).
static int fb_qm_staging_exists(const char *dst) {
    char p[4096];
    snprintf(p, sizeof p, "%s.partial", dst);
    struct stat st;
    return stat(p, &st) == 0;
}

// has_format: 0 no --format, 1 compressed-tensors | auto_round (W4A16), 2 compressed-tensors | modelopt (NVFP4).
static int fb_quantize_main(int argc, char **argv, const char *tool, unsigned kinds, int has_format, const char *about) {
    fb_quantize_opts o = {.tool = tool, .allowed_kinds = kinds, .threads = fb_ncpu(), .max_shard_size = 5000000000ull,
                          .shard_count = 1,
                          .cancel = fb_cancel_flag()};
    const char *recipe = NULL, *calib = NULL, *format = "compressed-tensors", *device = "cpu", *gemm = NULL;
    const char *dataset = NULL, *tokp = NULL, *tmpl = "auto", *tmplf = NULL;
    int json = 0, quiet = 0, n_samples = 128, seq_len = 2048, no_shuffle = 0;
    double seed_d = 42;
    fb_opt opts[32] = {
        {"recipe", 'r', FB_OPT_STR, &recipe, "FILE", "llm-compressor recipe YAML (required; see recipes/)", 0, 0},
        {"threads", 't', FB_OPT_INT, &o.threads, "N", "worker threads (one per CPU of this machine by default, as calibrate)", 1, 1024},
        {"max-shard-size", 0, FB_OPT_SIZE, &o.max_shard_size, "SIZE", "largest output shard (5GB = 5e9 bytes)", 0, 0},
        {"force", 'f', FB_OPT_FLAG, &o.force, NULL, "replace a non-empty DST", 0, 0},
        {"resume", 0, FB_OPT_FLAG, &o.resume, NULL, "continue a killed run: keep shards whose manifest digest verifies", 0, 0},
        {"dry-run", 'n', FB_OPT_FLAG, &o.dry_run, NULL, "print the plan (which tensors get which scheme and why) and stop", 0, 0},
        {"verbose", 'v', FB_OPT_FLAG, &o.verbose, NULL, "with --dry-run: one line per tensor", 0, 0},
        {"allow-nan", 0, FB_OPT_FLAG, &o.allow_nan, NULL, "let FP8 NaN codes through in tensors that are kept, and write Inf/NaN float outputs instead of failing", 0, 0},
        {"json", 0, FB_OPT_FLAG, &json, NULL, "print a JSON summary on stdout", 0, 0},
        {"quiet", 'q', FB_OPT_FLAG, &quiet, NULL, "no progress or summary on stderr", 0, 0},
        {"shard-index", 0, FB_OPT_INT, &o.shard_index, "I", "split job I of --shard-count: write output shards s with s % N == I", 0, 1 << 20},
        {"shard-count", 0, FB_OPT_INT, &o.shard_count, "N", "number of split jobs sharing DST.partial (then run once with --merge)", 1, 1 << 20},
        {"merge", 0, FB_OPT_FLAG, &o.merge, NULL, "after split jobs: verify their shards, write the rest, index, validate, rename", 0, 0},
    };
    int no = 13;
    // Calibration data for recipes that tune (GPTQModifier), read as calibrate reads it.
    opts[no++] = (fb_opt){"dataset", 'd', FB_OPT_STR, &dataset, "D.jsonl",
                          (kinds & (1u << FB_QK_NVFP4))
                              ? "calibration data: for a GPTQModifier recipe (required), or NVFP4 W4A4 input scales in the same pass (instead of a statistics file); JSONL as calibrate reads it (comma-separated list for several files)"
                              : "calibration data for a GPTQModifier / AutoRoundModifier recipe (required by it, refused otherwise): JSONL as calibrate reads it (comma-separated list for several files)",
                          0, 0};
    opts[no++] = (fb_opt){"samples", 0, FB_OPT_INT, &n_samples, "N", "calibration samples (with --dataset)", 1, 100000000};
    opts[no++] = (fb_opt){"seq-len", 0, FB_OPT_INT, &seq_len, "L", "tokens per sample at most (with --dataset)", 1, 1 << 24};
    if (!(kinds & (1u << FB_QK_NVFP4)))  // AutoRound tunes W4A16 only
    {
        opts[no++] = (fb_opt){"expert-group", 0, FB_OPT_INT, &o.expert_group, "N", "AutoRoundModifier: tune a layer's routed experts N at a time, attention Linears one by one (memory; default: the whole block as one unit)", 1, 1 << 20};
        opts[no++] = (fb_opt){"gemm", 0, FB_OPT_STR, &gemm, "M", "with --device cuda: the tuner's GEMMs, f32 (default: the CPU's to rounding), tf32 (tensor cores: products of inputs rounded to 10 mantissa bits, ~2.5x faster on an H100; another sample of the tuning, not the f32 one) or bf16 (as tf32, and the routed experts' GEMMs on bf16 operands, as auto-round's autocast)", 0, 0};
    }
    opts[no++] = (fb_opt){"device", 0, FB_OPT_STR, &device, "DEV",
                          (kinds & (1u << FB_QK_NVFP4))
                              ? "GPTQModifier: where each Linear's GPTQ solve runs, cpu (default) or cuda (a GPU; the same result within f32 rounding, not byte-identical to cpu; the layer passes and the Hessians still run on the CPU, --json says how long: calibrate_s, propagate_s)"
                              : "GPTQModifier / AutoRoundModifier: where each Linear's GPTQ solve or each AutoRound block is tuned, cpu (default) or cuda (a GPU; the same result within f32 rounding, not byte-identical to cpu; AutoRound's layer passes run on the GPU too, GPTQ's passes and Hessians still on the CPU; --json says how long: calibrate_s, tune_s, propagate_s)",
                          0, 0};
    opts[no++] = (fb_opt){"seed", 0, FB_OPT_DOUBLE, &seed_d, "S", "shuffle seed (with --dataset)", 0, 0};
    opts[no++] = (fb_opt){"no-shuffle", 0, FB_OPT_FLAG, &no_shuffle, NULL, "take records in file order (with --dataset)", 0, 0};
    opts[no++] = (fb_opt){"tokenizer", 0, FB_OPT_STR, &tokp, "FILE", "tokenizer.json (default: SRC/tokenizer.json; read only when a record is not input_ids)", 0, 0};
    opts[no++] = (fb_opt){"template", 0, FB_OPT_STR, &tmpl, "T", "chat template for \"messages\": auto (the checkpoint's own), minimax-m2, chatml", 0, 0};
    opts[no++] = (fb_opt){"chat-template", 0, FB_OPT_STR, &tmplf, "FILE", "render \"messages\" with this Jinja template file instead", 0, 0};
    if (kinds & (1u << FB_QK_NVFP4))  // only NVFP4 (W4A4) uses statistics
        opts[no++] = (fb_opt){"calib", 'c', FB_OPT_STR, &calib, "STATS", "calibration statistics from `calibrate` (NVFP4 W4A4 input scales; refused for weight-only schemes)", 0, 0};
    if (has_format)
        opts[no++] = (fb_opt){"format", 0, FB_OPT_STR, &format, "F",
                              has_format == 2 ? "compressed-tensors | modelopt (NVIDIA ModelOpt NVFP4, hf_quant_config.json)"
                                              : "compressed-tensors | auto_round", 0, 0};
    opts[no] = (fb_opt){0};
    const char *pos[2];
    int npos;
    int prc = fb_cli_parse(argc, argv, tool, "--recipe R [options] SRC DST", about, opts, pos, 2, &npos);
    if (prc == 1) return 0;
    if (prc) return 2;
    if (npos != 2 || !recipe) {
        fprintf(stderr, "%s: need --recipe R, SRC and DST (see --help)\n", tool);
        return 2;
    }
    if (o.merge && o.shard_count < 2) {
        fprintf(stderr, "%s: --merge needs the --shard-count of the split jobs\n", tool);
        return 2;
    }
    if (has_format == 1 && (!strcmp(format, "auto_round") || !strcmp(format, "autoround"))) o.format = FB_QOUT_AUTOROUND;
    else if (has_format == 2 && !strcmp(format, "modelopt")) o.format = FB_QOUT_MODELOPT;
    else if (strcmp(format, "compressed-tensors") != 0) {
        fprintf(stderr, "%s: --format must be compressed-tensors or %s, got '%s'\n", tool,
                has_format == 2 ? "modelopt" : "auto_round", format);
        return 2;
    }
    if (!strcmp(device, "cuda")) o.ar_cuda = 1;
    else if (strcmp(device, "cpu") != 0) {
        fprintf(stderr, "%s: --device must be cpu or cuda, got '%s'\n", tool, device);
        return 2;
    }
    if (gemm) {
        static const char *GM[] = {"f32", "tf32", "bf16"};
        o.ar_gemm = -1;
        for (int g = 0; g < 3; g++)
            if (!strcmp(gemm, GM[g])) o.ar_gemm = g;
        if (o.ar_gemm < 0) {
            fprintf(stderr, "%s: --gemm must be f32, tf32 or bf16, got '%s'\n", tool, gemm);
            return 2;
        }
        if (!o.ar_cuda) {
            fprintf(stderr, "%s: --gemm chooses the CUDA tuner's arithmetic; it needs --device cuda (the CPU computes in f32)\n", tool);
            return 2;
        }
    }
    if (o.ar_cuda && o.expert_group > 0) {
        fprintf(stderr, "%s: --device cuda tunes whole blocks; --expert-group runs on the CPU only (drop one)\n", tool);
        return 2;
    }
    o.recipe_path = recipe;
    o.calib_path = calib;
    {  // a GPTQModifier needs calibration data; nothing else uses it (a recipe that does not parse
       // is reported by the run itself)
        fb_recipe rr;
        fb_err re;
        if (fb_recipe_load(recipe, &rr, &re) == 0) {
            int need = fb_recipe_needs_data(&rr), w4a4 = 0;
            const char *rr_name = rr.tune.name ? rr.tune.name : "GPTQModifier";
            for (size_t g = 0; g < rr.cfg.n_groups; g++) w4a4 |= fb_qscheme_kind(&rr.cfg.groups[g], NULL) == FB_QK_NVFP4;
            int ar = rr.tune.present && rr.tune.algo == FB_RALGO_AUTOROUND;
            fb_recipe_free(&rr);
            if (o.ar_cuda && !need) {
                fprintf(stderr, "%s: --device cuda runs a GPTQModifier's or an AutoRoundModifier's tuning; %s has neither\n",
                        tool, recipe);
                return 2;
            }
            if (gemm && !ar) {  // GPTQ on the GPU is f32 only: its golden is the CPU's f32 arithmetic
                fprintf(stderr, "%s: --gemm chooses the AutoRound tuner's arithmetic; %s has no AutoRoundModifier (GPTQ "
                                "on the GPU computes in f32)\n", tool, recipe);
                return 2;
            }
            if (need && !dataset && !o.dry_run) {
                fprintf(stderr, "%s: %s has a %s, which tunes on calibration data: pass --dataset D.jsonl "
                                "(--samples N --seq-len L, as calibrate reads them)\n", tool, recipe, rr_name);
                return 2;
            }
            if (!need && !w4a4 && dataset) {
                fprintf(stderr, "%s: --dataset is used by recipes that tune (GPTQModifier) or quantize activations "
                                "(NVFP4 W4A4, input scales in the same pass); %s is weight-only round-to-nearest: "
                                "drop --dataset\n", tool, recipe);
                return 2;
            }
        }
    }
    if (seed_d < 0 || seed_d != (double)(uint64_t)seed_d || seed_d > 9007199254740992.0) {
        fprintf(stderr, "%s: --seed must be a non-negative integer\n", tool);
        return 2;
    }
    char *tokdef = NULL;
    if (dataset && !tokp) {
        tokdef = fb_malloc(strlen(pos[0]) + 32);
        snprintf(tokdef, strlen(pos[0]) + 32, "%s/tokenizer.json", pos[0]);
    }
    {
        fb_err perr;
        char *dbuf = NULL;
        const char **dpaths = NULL;
        size_t ndp = dataset ? fb_split_list(dataset, &dbuf, &dpaths) : 0;
        const char **ins = fb_calloc(ndp + 4, sizeof *ins);
        ins[0] = pos[0], ins[1] = recipe, ins[2] = calib, ins[3] = tokp;
        for (size_t k = 0; k < ndp; k++) ins[4 + k] = dpaths[k];
        int bad = fb_path_check_output(pos[1], "DST", ins, ndp + 4, &perr);
        free(ins);
        free(dpaths);
        free(dbuf);
        if (bad) {
            fprintf(stderr, "%s: %s\n", tool, perr.msg);
            free(tokdef);
            return 1;
        }
    }
    fb_ds_opts dso;
    fb_ds_opts_default(&dso);
    fb_chat_own own;
    memset(&own, 0, sizeof own);
    if (dataset) {
        fb_err cerr;
        int crc = fb_chat_select(tmpl, tmplf, pos[0], &dso.chat, &own, &o.template_what, &cerr);
        if (crc) {
            fprintf(stderr, "%s: %s\n", tool, cerr.msg);
            free(tokdef);
            return crc == -2 ? 2 : 1;
        }
        dso.samples = (size_t)n_samples;
        dso.seq_len = (size_t)seq_len;
        dso.seed = (uint64_t)seed_d;
        dso.no_shuffle = no_shuffle;
        dso.tokenizer_path = tokp ? tokp : tokdef;
        o.dataset = dataset;
        o.data = &dso;
    }
    o.quiet = quiet;
    fb_cancel_install();
    fb_quantize_result r;
    fb_err err = {{0}};
    int rc = fb_quantize_run(pos[0], pos[1], &o, o.dry_run ? stdout : stderr, &r, &err);
    if (dataset) fb_chat_own_free(&own);
    free(tokdef);
    if (rc && r.left_out) {  // filled before a late failure (validation, commit)
        json_decref(r.left_out);
        r.left_out = NULL;
    }
    if (rc == -2 || (rc && fb_cancelled())) {  // 130: as a shell reports a SIGINT
        if (fb_qm_staging_exists(pos[1]))
            fprintf(stderr, "%s: interrupted; finished shards are kept in %s.partial: rerun with --resume to continue\n",
                    tool, pos[1]);
        else
            fprintf(stderr, "%s: interrupted before anything was written\n", tool);
        return 130;
    }
    if (rc) {
        fprintf(stderr, "%s: %s\n", tool, err.msg);
        return 1;
    }
    if (o.dry_run) return 0;
    if (r.split_job) {
        if (!quiet)
            fprintf(stderr, "%s: split job %d of %d: %zu of %zu shard(s) written (%zu resumed) in %s.partial, %.2f s; "
                            "run again with --merge --shard-count %d when every job has finished\n",
                    tool, o.shard_index, o.shard_count, r.n_shards - r.n_other_jobs - r.n_resumed, r.n_shards, r.n_resumed,
                    pos[1], r.seconds, o.shard_count);
        return 0;
    }
    double el_per_s = r.seconds > 0 ? (double)r.elements_quantized / r.seconds : 0;
    if (!quiet)
        fprintf(stderr, "%s: %s: %zu modules quantized (%zu fused sets), %zu tensors kept, %zu shard(s) (%zu resumed), "
                        "%.3f GB -> %.3f GB in %.2f s, peak RSS %.1f MiB\n",
                tool, r.scheme, r.n_quantized, r.n_fused_sets, r.n_kept, r.n_shards, r.n_resumed, (double)r.bytes_in / 1e9,
                (double)r.bytes_out / 1e9, r.seconds, (double)fb_peak_rss() / 1048576.0);
    size_t nlo = r.left_out ? json_array_size(r.left_out) : 0;
    if (!quiet && nlo) {
        fprintf(stderr, "%s: not carried over from %s (listed in %s/README.md):\n", tool, pos[0], pos[1]);
        for (size_t i = 0; i < nlo; i++)
            fprintf(stderr, "  %-28s %s\n", json_string_value(json_object_get(json_array_get(r.left_out, i), "name")),
                    json_string_value(json_object_get(json_array_get(r.left_out, i), "why")));
    }
    if (json) {
        json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:I, s:i}",
                              "tool", tool, "version", FB_VERSION, "src", pos[0], "dst", pos[1], "scheme", r.scheme,
                              "format", o.format == FB_QOUT_AUTOROUND ? "auto_round:auto_gptq" : o.format == FB_QOUT_MODELOPT ? "modelopt" : "compressed-tensors",
                              "quantized_modules", (json_int_t)r.n_quantized, "fused_sets", (json_int_t)r.n_fused_sets,
                              "kept_tensors", (json_int_t)r.n_kept, "shards", (json_int_t)r.n_shards,
                              "resumed_shards", (json_int_t)r.n_resumed, "bytes_in", (json_int_t)r.bytes_in,
                              "bytes_out", (json_int_t)r.bytes_out, "seconds", r.seconds, "quantized_elements_per_s",
                              el_per_s, "peak_rss_bytes", (json_int_t)fb_peak_rss(), "threads", o.threads);
        json_object_set_new(j, "not_carried_over", r.left_out ? json_incref(r.left_out) : json_array());
        if (r.n_tuned || dataset) {
            int ar = r.tune_algo && !strcmp(r.tune_algo, "AutoRound");
            json_t *t = json_pack("{s:s, s:I, s:I, s:I, s:I, s:f, s:I, s:f, s:f, s:f, s:f}", "algorithm",
                                  r.tune_algo ? r.tune_algo : "none", "tuned_modules", (json_int_t)r.n_tuned,
                                  "rtn_fallbacks", (json_int_t)r.n_tune_fallback, "samples",
                                  (json_int_t)r.n_samples, "tokens", (json_int_t)r.n_tokens, "seconds",
                                  r.tune_seconds, "factorizations", (json_int_t)r.n_tune_factorized,
                                  "calibrate_s", r.tune_calib_s, "tune_s", r.tune_tune_s, "propagate_s",
                                  r.tune_propagate_s, "write_s", r.tune_write_s);
            if (ar) json_object_set_new(t, "load_s", json_real(r.tune_load_s));  // of tune_s
            json_object_set_new(j, ar ? "autoround" : "gptq", t);
        }
        json_dumpf(j, stdout, JSON_COMPACT);
        putchar('\n');
        json_decref(j);
    }
    if (r.left_out) json_decref(r.left_out);
    return 0;
}

#endif
