// calibrate: layer-by-layer MiniMax-M2 forward over a calibration set; writes the statistics
// file that `nvfp4-quantize --calib` reads (per-Linear input absmax, per-expert routed counts,
// REAP saliency, hidden-state norms; format in src/calib/stats.h).
//
// Samples: the JSONL lines are shuffled with --seed (splitmix64 + Fisher-Yates over line
// indices), then taken in that order; a sample longer than --seq-len is truncated (or skipped
// with --skip-long, as REAP's reference does); empty samples are skipped; until --samples.
// Exit: 0 success, 1 bad input or failure (message says what and where), 2 usage error.
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "calib/engine.h"
#include "cuda/cuengine.h"
#include "jobs/calibrate.h"
#include "jobs/runner.h"
#include "common/cli.h"
#include "common/cancel.h"
#include "common/fb.h"
#include "common/paths.h"
#include "io/chat.h"
#include "io/dataset.h"
#include "io/tokenizer.h"

static const char *TOOL = "calibrate";

typedef struct prog {
    int on, n_layers, cuda;
    size_t n_tok;
    double t0, last;
    int layer;
} prog;

// The CUDA engine reports no progress inside a layer: a line per layer.
static void layer_start(void *u, int layer, int n_layers) {
    prog *p = u;
    p->layer = layer;
    if (p->cuda && p->on) fprintf(stderr, "\r%s: layer %d/%d on the GPU", TOOL, layer + 1, n_layers);
}

static void progress_cb(void *u, int layer, size_t done, size_t total) {
    prog *p = u;
    double now = fb_now();
    if (!p->on || (now - p->last < 0.5 && done != total)) return;
    p->last = now;
    double frac = ((double)layer + (double)done / (double)(total ? total : 1)) / p->n_layers;
    double el = now - p->t0, eta = frac > 0 ? el / frac - el : 0;
    double tps = el > 0 ? frac * (double)p->n_layers * (double)p->n_tok / el : 0.0;
    fprintf(stderr, "\rcalibrate: layer %d/%d  experts %3.0f%%  %.1f tokens/s per layer  "
                    "elapsed %d:%02d  ETA %d:%02d:%02d   ", layer + 1, p->n_layers,
            100.0 * (double)done / (double)(total ? total : 1), tps, (int)el / 60, (int)el % 60,
            (int)eta / 3600, (int)eta / 60 % 60, (int)eta % 60);
    fflush(stderr);
}

// The outputs (-o, --dump-tokens) never overwrite an input (model directory, tokenizer, any
// dataset file) and, without --force, never an existing file: the writers refuse the same.
static int check_outputs(const char *model, const char *dataset, const char *tokp, const char *outp,
                         const char *dump, int force, fb_err *err) {
    char *buf = NULL;
    const char **dpaths = NULL;
    size_t nd = fb_split_list(dataset, &buf, &dpaths);
    const char **ins = fb_calloc(nd + 2, sizeof *ins);
    ins[0] = model;
    ins[1] = tokp;
    for (size_t i = 0; i < nd; i++) ins[2 + i] = dpaths[i];
    const char *outs[2] = {outp, dump}, *what[2] = {"-o", "--dump-tokens"};
    int rc = 0;
    for (int k = 0; k < 2 && rc == 0; k++) {
        if (!outs[k] || strcmp(outs[k], "-") == 0) continue;
        if (fb_path_check_output(outs[k], what[k], ins, nd + 2, err)) rc = -1;
        else if (!force && access(outs[k], F_OK) == 0)
            rc = fb_fail(err, "%s %s: exists (use --force to replace it)", what[k], outs[k]);
    }
    free(ins);
    free(dpaths);
    free(buf);
    return rc;
}

// ---- main ----------------------------------------------------------------------------------

int main(int argc, char **argv) {
    const char *model = NULL, *dataset = NULL, *outp = NULL, *dump = NULL, *tmpl = "auto", *tmplf = NULL;
    const char *tokp = NULL, *devs = NULL, *dump_text = NULL, *prec = "f32";
    int n_samples = 128, seq_len = 2048, threads = 0, group = 32, chunk = 0, skip_long = 0;
    int cuda_f32 = 0;
    int routed = 0, json = 0, quiet = 0, max_layers = 0, no_shuffle = 0, force = 0;
    double seed_d = 42;
    const fb_opt opts[] = {
        {"model", 'm', FB_OPT_STR, &model, "SRC", "source checkpoint (FP8 block-scaled or BF16 directory)", 0, 0},
        {"dataset", 'd', FB_OPT_STR, &dataset, "D.jsonl", "calibration data, JSONL (comma-separated list for several files): per line \"messages\" (+ \"tools\"), \"conversations\", \"text\" or \"input_ids\"", 0, 0},
        {"tokenizer", 0, FB_OPT_STR, &tokp, "FILE", "tokenizer.json (default: SRC/tokenizer.json; read only when a record is not input_ids)", 0, 0},
        {"output", 'o', FB_OPT_STR, &outp, "STATS", "statistics file to write (safetensors)", 0, 0},
        {"force", 'f', FB_OPT_FLAG, &force, NULL, "replace an existing -o / --dump-tokens file", 0, 0},
        {"samples", 'n', FB_OPT_INT, &n_samples, "N", "calibration samples", 1, 100000000},
        {"seq-len", 'L', FB_OPT_INT, &seq_len, "L", "tokens per sample at most", 1, 1 << 24},
        {"seed", 's', FB_OPT_DOUBLE, &seed_d, "S", "shuffle seed", 0, 0},
        {"no-shuffle", 0, FB_OPT_FLAG, &no_shuffle, NULL, "take records in file order", 0, 0},
        {"skip-long", 0, FB_OPT_FLAG, &skip_long, NULL, "skip samples longer than --seq-len instead of truncating them (REAP)", 0, 0},
        {"template", 0, FB_OPT_STR, &tmpl, "T", "chat template for \"messages\": auto (the checkpoint's own chat_template.jinja / tokenizer_config.json template, else minimax-m2), or the built-ins minimax-m2, chatml", 0, 0},
        {"chat-template", 0, FB_OPT_STR, &tmplf, "FILE", "render \"messages\" with this Jinja template file instead (as transformers' apply_chat_template)", 0, 0},
        {"dump-tokens", 0, FB_OPT_STR, &dump, "FILE", "write the selected samples' token ids as JSONL (\"-\" = stdout) and stop", 0, 0},
        {"dump-text", 0, FB_OPT_STR, &dump_text, "FILE", "write the selected samples as the model sees them (template rendered, special tokens shown, cut to --seq-len) as JSONL {record, tokens, text} (\"-\" = stdout) and stop", 0, 0},
        {"threads", 't', FB_OPT_INT, &threads, "T", "worker threads (0 = every CPU)", 0, 256},
        {"expert-group", 0, FB_OPT_INT, &group, "G", "experts held in memory at once (f32: G x 3 x inter x hidden x 4 bytes)", 1, 1 << 20},
        {"token-chunk", 0, FB_OPT_INT, &chunk, "C", "token rows per expert GEMM (0 = 512)", 0, 1 << 24},
        {"routed-only", 0, FB_OPT_FLAG, &routed, NULL, "observe experts on their routed tokens only (old llm-compressor) instead of all tokens", 0, 0},
        {"layers", 0, FB_OPT_INT, &max_layers, "N", "run only the first N layers (0 = all)", 0, 1 << 20},
        {"device", 0, FB_OPT_STR, &devs, "DEV", "cpu or cuda (default: cuda when built with CUDA and a GPU is present, else cpu)", 0, 0},
        {"precision", 0, FB_OPT_STR, &prec, "P", "activations: f32 (default), or bf16 as a bf16 transformers model computes them (llm-compressor's oneshot on a bf16 model: its input_global_scale values byte for byte; CPU engine)", 0, 0},
        {"cuda-f32", 0, FB_OPT_FLAG, &cuda_f32, NULL, "with --device cuda: f32 GEMMs (follow the CPU engine) instead of bf16 ones (as a bf16 model runs)", 0, 0},
        {"json", 0, FB_OPT_FLAG, &json, NULL, "JSON summary on stdout", 0, 0},
        {"quiet", 'q', FB_OPT_FLAG, &quiet, NULL, "no progress or summary text", 0, 0},
        {0},
    };
    const char *pos[1];
    int npos = 0;
    int prc = fb_cli_parse(argc, argv, TOOL, "--model SRC --dataset D.jsonl -o STATS [options]",
        "Runs the MiniMax-M2 model layer by layer over the calibration samples (one layer's weights\n"
        "in memory at a time, FP8 dequantized as fp8-dequant does) and records, per quantizable\n"
        "Linear, the input absmax (for NVFP4 input_global_scale), per expert the routed-token\n"
        "count and REAP saliency, per layer hidden-state norms. Experts are observed on all tokens\n"
        "(llm-compressor's moe_calibrate_all_experts) unless --routed-only. Exit 0 ok, 1 error,\n"
        "2 usage.", opts, pos, 1, &npos);
    if (prc == 1) return 0;
    if (prc) return 2;
    if (npos) { fprintf(stderr, "%s: unexpected argument %s\n", TOOL, pos[0]); return 2; }
    int bf16 = 0;
    if (!strcmp(prec, "bf16")) bf16 = 1;
    else if (strcmp(prec, "f32")) { fprintf(stderr, "%s: --precision %s: expected f32 or bf16\n", TOOL, prec); return 2; }
    if (bf16 && devs && strcmp(devs, "cpu")) {
        fprintf(stderr, "%s: --precision bf16 runs on the CPU engine (--device cpu); the CUDA engine's bf16 mode rounds GEMM inputs only\n", TOOL);
        return 2;
    }
    if (bf16) devs = "cpu";
    int use_cuda = 0;
    // --dump-tokens / --dump-text only tokenize: no default device is looked for then. The probe
    // initialises the CUDA driver, which a tokenize-only run has no use for; on an H100 machine
    // t_hardening's tokenize-only runs under `ulimit -v 2000000` ran out of memory or hung.
    if (devs || (!dump && !dump_text)) {
        fb_err derr;
        int dev = fb_runner_pick_device(devs, &derr);
        if (dev < 0) {
            fprintf(stderr, "%s: %s\n", TOOL, derr.msg);
            return dev == -1 ? 2 : 1;
        }
        use_cuda = dev == FB_DEV_CUDA;
    }
    if (!model || !dataset) { fprintf(stderr, "%s: --model and --dataset are required\n", TOOL); return 2; }
    if (!outp && !dump && !dump_text) {
        fprintf(stderr, "%s: -o STATS (or --dump-tokens FILE / --dump-text FILE) is required\n", TOOL);
        return 2;
    }
    fb_cancel_install();
    fb_err err;
    if (check_outputs(model, dataset, tokp, outp, dump, force, &err) ||
        (dump_text && check_outputs(model, dataset, tokp, NULL, dump_text, force, &err))) {
        fprintf(stderr, "%s: %s\n", TOOL, err.msg);
        return 1;
    }
    fb_ds_opts dso;
    fb_ds_opts_default(&dso);
    fb_chat_own own;
    const char *tmpl_what;
    int src_rc = fb_chat_select(tmpl, tmplf, model, &dso.chat, &own, &tmpl_what, &err);
    if (src_rc) {
        fprintf(stderr, "%s: %s\n", TOOL, err.msg);
        return src_rc == -2 ? 2 : 1;
    }
    if (seed_d < 0 || seed_d != floor(seed_d) || seed_d > 9007199254740992.0) {
        fprintf(stderr, "%s: --seed must be a non-negative integer\n", TOOL);
        fb_chat_own_free(&own);
        return 2;
    }
    uint64_t seed = (uint64_t)seed_d;
    dso.samples = (size_t)n_samples;
    dso.seq_len = (size_t)seq_len;
    dso.seed = seed;
    dso.no_shuffle = no_shuffle;
    dso.skip_long = skip_long;

    fb_wsrc *src = fb_wsrc_open_ckpt(model, &err);
    if (!src) { fprintf(stderr, "%s: %s\n", TOOL, err.msg); fb_chat_own_free(&own); return 1; }
    fb_model_config cfg;
    if (!src->config) {
        fprintf(stderr, "%s: %s: no config.json\n", TOOL, model);
        fb_wsrc_close(src);
        fb_chat_own_free(&own);
        return 1;
    }
    if (fb_model_config_parse(src->config, &cfg, &err)) {
        fprintf(stderr, "%s: %s: %s\n", TOOL, model, err.msg);
        fb_wsrc_close(src);
        fb_chat_own_free(&own);
        return 1;
    }
    // Positions past the model's trained context give statistics of inputs it never sees.
    json_t *mpe = json_object_get(src->config, "max_position_embeddings");
    // (Only when the model runs: --dump-tokens / --dump-text just tokenize.)
    if (outp && !dump && !dump_text && json_is_integer(mpe) && json_integer_value(mpe) > 0 &&
        seq_len > json_integer_value(mpe)) {
        fprintf(stderr, "%s: --seq-len %d exceeds max_position_embeddings %lld of %s/config.json\n", TOOL, seq_len,
                (long long)json_integer_value(mpe), model);
        fb_wsrc_close(src);
        fb_chat_own_free(&own);
        return 2;
    }
    char *tokdef = NULL;
    fb_ds_tokens S = {0};
    memset(&S, 0, sizeof S);
    int rc = 0;
    if (!tokp) {
        tokdef = fb_malloc(strlen(model) + 32);
        sprintf(tokdef, "%s/tokenizer.json", model);
        tokp = tokdef;
    }
    dso.tokenizer_path = tokp;  // loaded only if a record needs it (input_ids records do not)
    if (fb_ds_load_tokens(dataset, &dso, NULL, cfg.vocab, &S, &err)) {
        fprintf(stderr, "%s: %s\n", TOOL, err.msg);
        rc = 1;
        goto out_src;
    }
    if (!quiet && S.n < (size_t)n_samples)
        fprintf(stderr, "%s: warning: %zu samples of %d asked (%zu records, %zu too long, "
                        "%zu too short)\n", TOOL, S.n, n_samples, S.set.n_records,
                S.set.n_skipped_long, S.set.n_skipped_short);
    if (!quiet && S.set.n_truncated)
        fprintf(stderr, "%s: warning: %zu of %zu samples truncated to --seq-len %d tokens (their ends are not "
                        "calibrated on; raise --seq-len, or --skip-long to drop them)\n", TOOL, S.set.n_truncated, S.n,
                seq_len);
    if (dump_text) {
        FILE *df = strcmp(dump_text, "-") ? fopen(dump_text, "w") : stdout;
        if (!df) {
            fprintf(stderr, "%s: %s: cannot create\n", TOOL, dump_text);
            rc = 1;
            goto out_src;
        }
        fb_tok *tok = NULL;  // the samples were encoded with it (or are input_ids): decode with it
        if (fb_tok_load(tokp, &tok, &err)) {
            fprintf(stderr, "%s: %s\n", TOOL, err.msg);
            rc = 1;
        }
        for (size_t i = 0; i < S.set.n && !rc; i++) {
            const fb_ds_sample *sm = &S.set.s[i];
            char *txt = NULL;
            size_t tl = 0;
            if (fb_tok_decode(tok, sm->ids, sm->n, 0, &txt, &tl, &err)) {
                fprintf(stderr, "%s: %s\n", TOOL, err.msg);
                rc = 1;
                break;
            }
            // record: its index over the dataset's records (the line number for one file without
            // blank lines, 0-based)
            json_t *j = json_pack("{s:I, s:I, s:s%}", "record", (json_int_t)sm->record, "tokens", (json_int_t)sm->n,
                                  "text", txt, tl);
            char *line_s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII);
            fprintf(df, "%s\n", line_s);
            free(line_s);
            json_decref(j);
            free(txt);
        }
        fb_tok_free(tok);
        if (df != stdout ? fclose(df) != 0 : fflush(df) != 0) {
            fprintf(stderr, "%s: %s: write error\n", TOOL, dump_text);
            rc = 1;
        }
        goto out_src;
    }
    if (dump) {
        FILE *df = strcmp(dump, "-") ? fopen(dump, "w") : stdout;
        if (!df) {
            fprintf(stderr, "%s: %s: cannot create\n", TOOL, dump);
            rc = 1;
        } else {
            if (fb_ds_write_jsonl(&S.set, df, dump, &err)) {
                fprintf(stderr, "%s: %s\n", TOOL, err.msg);
                rc = 1;
            }
            if (df != stdout ? fclose(df) != 0 : fflush(df) != 0) {
                fprintf(stderr, "%s: %s: write error\n", TOOL, dump);
                rc = 1;
            }
        }
        goto out_src;
    }
    int n_layers = max_layers > 0 && max_layers < cfg.n_layers ? max_layers : cfg.n_layers;
    prog pg = {.on = !quiet && isatty(2), .n_layers = n_layers, .n_tok = S.n_tok, .t0 = fb_now(), .cuda = use_cuda};
    // The job (src/jobs/calibrate.c): the engine (CPU, or the device engine with the same math
    // and statistics, bf16 GEMMs unless --cuda-f32), then the statistics file.
    fb_calibrate_opts co = {.tool = TOOL, .model = model, .dataset = dataset, .out = outp,
                            .template_name = tmpl_what, .seq_len = seq_len, .skip_long = skip_long, .seed = seed,
                            .max_layers = max_layers, .use_cuda = use_cuda,
                            .engine = {.threads = threads, .all_experts = !routed, .expert_group = group,
                                       .token_chunk = chunk, .gemm_f32 = cuda_f32, .bf16 = bf16, .progress = progress_cb,
                                       .progress_user = &pg},
                            .layer_start = layer_start, .layer_user = &pg};
    fb_calibrate_result cres;
    if (fb_calibrate_run(src, &cfg, &S, &co, &cres, &err)) goto fail;
    fb_calib_stats *st = cres.stats;
    if (pg.on) fprintf(stderr, "\r%*s\r", 110, "");
    double secs = cres.seconds;

    // Summary.
    double load_s = cres.timing.load_s, expert_gflops = cres.timing.gemm_gflops;
    json_t *js = json_object();
    json_object_set_new(js, "stats", json_string(outp));
    json_object_set_new(js, "samples", json_integer((json_int_t)S.n));
    json_object_set_new(js, "tokens", json_integer((json_int_t)S.n_tok));
    json_object_set_new(js, "records", json_integer((json_int_t)S.set.n_records));
    json_object_set_new(js, "truncated", json_integer((json_int_t)S.set.n_truncated));
    json_object_set_new(js, "skipped_long", json_integer((json_int_t)S.set.n_skipped_long));
    json_object_set_new(js, "layers", json_integer(n_layers));
    json_object_set_new(js, "experts_mode", json_string(routed ? "routed" : "all"));
    json_object_set_new(js, "seconds", json_real(secs));
    json_object_set_new(js, "tokens_per_s_per_layer", json_real(secs > 0 ? (double)S.n_tok * n_layers / secs : 0));
    json_object_set_new(js, "device", json_string(use_cuda ? "cuda" : "cpu"));
    json_object_set_new(js, "precision", json_string(bf16 ? "bf16" : "f32"));
    json_object_set_new(js, "load_seconds", json_real(load_s));
    json_object_set_new(js, use_cuda ? "gemm_gflops" : "expert_gflops", json_real(expert_gflops));
    json_object_set_new(js, "peak_rss_bytes", json_integer((json_int_t)fb_peak_rss()));
    json_t *never = json_array(), *layers = json_array();
    size_t n_never = 0;
    size_t E = (size_t)cfg.n_experts;
    for (int l = 0; l < n_layers; l++) {
        int smin = 0, smax = 0;
        float w2max = 0, w13max = 0;
        for (size_t e = 0; e < E; e++) {
            size_t i = (size_t)l * E + e;
            if (!st->counts[i]) { json_array_append_new(never, json_pack("{s:i,s:i}", "layer", l, "expert", (int)e)); n_never++; }
            double s = fb_calib_stats_saliency(st, l, (int)e);
            if (s < fb_calib_stats_saliency(st, l, smin)) smin = (int)e;
            if (s > fb_calib_stats_saliency(st, l, smax)) smax = (int)e;
            if (st->w2_absmax[i] > w2max) w2max = st->w2_absmax[i];
            if (st->w13_absmax[i] > w13max) w13max = st->w13_absmax[i];
        }
        json_array_append_new(layers, json_pack("{s:i,s:f,s:f,s:f,s:f,s:{s:i,s:f},s:{s:i,s:f},s:f,s:f}",
            "layer", l, "qkv_absmax", (double)st->qkv_absmax[l], "o_absmax", (double)st->o_absmax[l],
            "w13_absmax_max", (double)w13max, "w2_absmax_max", (double)w2max,
            "saliency_min", "expert", smin, "value", fb_calib_stats_saliency(st, l, smin),
            "saliency_max", "expert", smax, "value", fb_calib_stats_saliency(st, l, smax),
            "hidden_norm_mean", st->n_tokens ? st->norm_sum[l] / (double)st->n_tokens : 0.0,
            "hidden_absmax", (double)st->h_absmax[l]));
    }
    json_object_set_new(js, "experts_never_routed", never);
    json_object_set_new(js, "per_layer", layers);
    if (json) {
        char *s = json_dumps(js, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        puts(s);
        free(s);
    } else if (!quiet) {
        printf("calibrate: %zu samples, %zu tokens, %d layers in %.1f s (%.1f tokens/s per layer)\n",
               S.n, S.n_tok, n_layers, secs, secs > 0 ? (double)S.n_tok * n_layers / secs : 0.0);
        printf("  samples truncated to --seq-len %d: %zu; dropped as too long: %zu, too short: %zu\n", seq_len,
               S.set.n_truncated, S.set.n_skipped_long, S.set.n_skipped_short);
        printf("  experts never routed: %zu of %zu; peak RSS %.2f GB\n", n_never,
               E * (size_t)n_layers, (double)fb_peak_rss() / 1e9);
        printf("  statistics: %s\n", outp);
    }
    json_decref(js);
    fb_calib_stats_free(st);
    goto out_src;
fail:
    if (pg.on) fprintf(stderr, "\n");
    fprintf(stderr, "%s: %s\n", TOOL, err.msg);
    rc = 1;
out_src:
    fb_ds_tokens_free(&S);
    free(tokdef);
    fb_wsrc_close(src);
    fb_chat_own_free(&own);
    if (rc && fb_cancelled()) {  // nothing was written: the statistics file comes last
        fprintf(stderr, "%s: interrupted; no statistics written\n", TOOL);
        return 130;
    }
    return rc;
}
