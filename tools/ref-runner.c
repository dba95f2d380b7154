// ref-runner: runs a reference checkpoint and its quantized version over the same evaluation
// tokens, layer by layer, and reports how far apart they are: perplexity of each, KL
// divergence of the quantized model's next-token distribution from the reference's (mean,
// median, p99, max), top-1 agreement, per-layer cosine similarity of hidden states
// (calib/runner.h). With --max-kld / --min-top1 (or a recipe's `fourbit:` block) it is a
// check.
//
// A W4A4 checkpoint (NVFP4 with input_global_scale) is evaluated with its activations
// fake-quantized by default, as Blackwell runs it; --no-emulate-w4a4 gives the weight-only view
// of Hopper, where vLLM runs the same checkpoint through Marlin with bf16 activations. The
// report says which. --card DIR appends the measured table to DIR/README.md (src/io/card.h).
//
// Exit: 0 within the thresholds (or none given), 1 a threshold exceeded or bad input / failure
// (the message says which), 2 usage error.
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "jobs/runner.h"
#include "calib/wsrc_quant.h"
#include "common/cli.h"
#include "common/fb.h"
#include "io/card.h"
#include "io/chat.h"
#include "io/dataset.h"
#include "quant/recipe.h"
#include "io/tokenizer.h"

static const char *TOOL = "ref-runner";

typedef struct prog {
    int on;
    double t0, last;
} prog;

static void progress_cb(void *u, const char *phase, size_t done, size_t total) {
    prog *p = u;
    double now = fb_now();
    if (!p->on || (now - p->last < 0.5 && done != total)) return;
    p->last = now;
    fprintf(stderr, "\r%s: %s %zu/%zu  elapsed %.0f s   ", TOOL, phase, done, total, now - p->t0);
    fflush(stderr);
}

int main(int argc, char **argv) {
    const char *refp = NULL, *qp = NULL, *data = NULL, *tokp = NULL, *tmpl = "auto", *tmplf = NULL;
    const char *recp = NULL, *devs = NULL, *cardp = NULL;
    int n_samples = 32, seq_len = 512, threads = 0, group = 32, json = 0, quiet = 0;
    int no_shuffle = 0, emulate = 0, no_emulate = 0, cuda_f32 = 0, max_layers = 0;
    double seed_d = 42, max_kld = -1, min_top1 = -1;
    const fb_opt opts[] = {
        {"reference", 'r', FB_OPT_STR, &refp, "SRC", "reference checkpoint (FP8 block-scaled or BF16 directory)", 0, 0},
        {"quantized", 0, FB_OPT_STR, &qp, "DST", "quantized checkpoint (compressed-tensors NVFP4 / NVFP4A16 / W4A16, or AutoRound)", 0, 0},
        {"data", 'd', FB_OPT_STR, &data, "D.jsonl", "evaluation data, JSONL (comma-separated list for several files): \"messages\", \"conversations\", \"text\" or \"input_ids\" per line", 0, 0},
        {"tokenizer", 0, FB_OPT_STR, &tokp, "FILE", "tokenizer.json (default: SRC/tokenizer.json; read only when a record is not input_ids)", 0, 0},
        {"template", 0, FB_OPT_STR, &tmpl, "T", "chat template for \"messages\": auto (the reference checkpoint's own, else minimax-m2), minimax-m2 or chatml", 0, 0},
        {"chat-template", 0, FB_OPT_STR, &tmplf, "FILE", "render \"messages\" with this Jinja template file instead", 0, 0},
        {"samples", 'n', FB_OPT_INT, &n_samples, "N", "evaluation samples (0 = every record)", 0, 100000000},
        {"seq-len", 'L', FB_OPT_INT, &seq_len, "L", "tokens per sample at most", 2, 1 << 24},
        {"seed", 's', FB_OPT_DOUBLE, &seed_d, "S", "shuffle seed", 0, 0},
        {"no-shuffle", 0, FB_OPT_FLAG, &no_shuffle, NULL, "take records in file order", 0, 0},
        {"device", 0, FB_OPT_STR, &devs, "DEV", "cpu or cuda (default: cuda when built with CUDA and a GPU is present, else cpu)", 0, 0},
        {"cuda-f32", 0, FB_OPT_FLAG, &cuda_f32, NULL, "CUDA: f32 GEMMs instead of bf16 inputs with f32 accumulation", 0, 0},
        {"emulate-w4a4", 0, FB_OPT_FLAG, &emulate, NULL, "fake-quantize every quantized Linear's input as vLLM's NVFP4 W4A4 path does (input_global_scale + dynamic per-16 fp8 scales); the default for a W4A4 checkpoint, an error for others", 0, 0},
        {"no-emulate-w4a4", 0, FB_OPT_FLAG, &no_emulate, NULL, "W4A4 checkpoint: bf16 activations, the weight-only view of vLLM on Hopper (Marlin)", 0, 0},
        {"card", 0, FB_OPT_STR, &cardp, "DIR", "append the measured quality table to DIR/README.md (the model card a fourbit writer made)", 0, 0},
        {"max-kld", 0, FB_OPT_DOUBLE, &max_kld, "X", "fail (exit 1) when the mean KL divergence exceeds X (default: the recipe's, else no check)", 0, 0},
        {"min-top1", 0, FB_OPT_DOUBLE, &min_top1, "Y", "fail (exit 1) when top-1 agreement is below Y, a fraction (default: the recipe's, else no check)", 0, 0},
        {"recipe", 0, FB_OPT_STR, &recp, "R", "recipe whose fourbit: max_kld / min_top1 are the thresholds", 0, 0},
        {"threads", 't', FB_OPT_INT, &threads, "T", "CPU worker threads (0 = every CPU)", 0, 256},
        {"expert-group", 0, FB_OPT_INT, &group, "G", "CPU: experts held in memory at once", 1, 1 << 20},
        {"layers", 0, FB_OPT_INT, &max_layers, "N", "run only the first N layers, then compare hidden states only (0 = all and logits)", 0, 1 << 20},
        {"json", 0, FB_OPT_FLAG, &json, NULL, "JSON report on stdout", 0, 0},
        {"quiet", 'q', FB_OPT_FLAG, &quiet, NULL, "no progress or table", 0, 0},
        {0},
    };
    const char *pos[1];
    int npos = 0;
    int prc = fb_cli_parse(argc, argv, TOOL, "--reference SRC --quantized DST --data D.jsonl [options]",
        "Runs both checkpoints over the same tokens layer by layer (one layer's weights of each in\n"
        "memory), the quantized weights dequantized exactly as their format defines, and reports\n"
        "perplexity of each, KL(reference || quantized) per position (mean, median, p99, max),\n"
        "top-1 agreement and per-layer cosine similarity of hidden states. Exit 0 ok, 1 a\n"
        "threshold exceeded or an error, 2 usage.", opts, pos, 1, &npos);
    if (prc == 1) return 0;
    if (prc) return 2;
    if (npos) { fprintf(stderr, "%s: unexpected argument %s\n", TOOL, pos[0]); return 2; }
    if (!refp || !qp || !data) {
        fprintf(stderr, "%s: --reference, --quantized and --data are required\n", TOOL);
        return 2;
    }
    if (seed_d < 0 || seed_d != floor(seed_d) || seed_d > 9007199254740992.0) {
        fprintf(stderr, "%s: --seed must be a non-negative integer\n", TOOL);
        return 2;
    }
    if (emulate && no_emulate) {
        fprintf(stderr, "%s: --emulate-w4a4 and --no-emulate-w4a4 exclude each other\n", TOOL);
        return 2;
    }
    if (max_kld != -1 && !(max_kld >= 0)) { fprintf(stderr, "%s: --max-kld must be >= 0\n", TOOL); return 2; }
    if (min_top1 != -1 && !(min_top1 >= 0 && min_top1 <= 1)) {
        fprintf(stderr, "%s: --min-top1 must be a fraction in [0, 1]\n", TOOL);
        return 2;
    }
    fb_runner_opts ro = {.threads = threads, .expert_group = group, .emulate_w4a4 = emulate,
                         .cuda_gemm_f32 = cuda_f32, .max_layers = max_layers};
    {
        fb_err derr;
        int dev = fb_runner_pick_device(devs, &derr);
        if (dev < 0) {
            fprintf(stderr, "%s: %s\n", TOOL, derr.msg);
            return dev == -1 ? 2 : 1;
        }
        ro.device = dev;
    }
    fb_err err;
    fb_ds_opts dso;
    fb_ds_opts_default(&dso);
    fb_chat_own own;
    const char *tmpl_what;
    int src_rc = fb_chat_select(tmpl, tmplf, refp, &dso.chat, &own, &tmpl_what, &err);
    if (src_rc) {
        fprintf(stderr, "%s: %s\n", TOOL, err.msg);
        return src_rc == -2 ? 2 : 1;
    }
    dso.samples = (size_t)n_samples;
    dso.seq_len = (size_t)seq_len;
    dso.seed = (uint64_t)seed_d;
    dso.no_shuffle = no_shuffle;
    dso.min_len = 2;  // a sample needs a next token to be scored
    if (recp) {
        fb_recipe r;
        if (fb_recipe_load(recp, &r, &err)) {
            fprintf(stderr, "%s: %s\n", TOOL, err.msg);
            fb_chat_own_free(&own);
            return 1;
        }
        if (max_kld == -1 && r.has_max_kld) max_kld = r.max_kld;
        if (min_top1 == -1 && r.has_min_top1) min_top1 = r.min_top1;
        fb_recipe_free(&r);
    }

    int rc = 0;
    fb_wsrc *ref = NULL, *qs = NULL;
    char *tokdef = NULL;
    fb_ds_tokens S = {0};
    memset(&S, 0, sizeof S);
    fb_runner_result res;
    memset(&res, 0, sizeof res);
    fb_model_config cfg;
    ref = fb_wsrc_open_auto(refp, &err);
    if (!ref) goto fail;
    qs = fb_wsrc_open_auto(qp, &err);
    if (!qs) goto fail;
    if (!ref->config) { fb_fail(&err, "%s: no config.json", refp); goto fail; }
    // The reference is the FP8/BF16 source; a quantized one is almost surely a swap.
    if (strcmp(fb_wsrc_quant_format(ref), "plain") != 0) {
        fb_fail(&err, "%s: --reference is a quantized checkpoint (%s); pass the FP8/BF16 source as --reference and %s as "
                      "--quantized (swapped?)", refp, fb_wsrc_quant_format(ref), refp);
        goto fail;
    }
    // W4A4 checkpoints are measured as Blackwell runs them unless asked otherwise.
    int is_w4a4 = !strcmp(fb_wsrc_quant_format(qs), "nvfp4") || !strcmp(fb_wsrc_quant_format(qs), "modelopt-nvfp4");
    if (!emulate && !no_emulate && is_w4a4) emulate = 1;
    ro.emulate_w4a4 = emulate;
    if (fb_model_config_parse(ref->config, &cfg, &err)) { fb_err_prefix(&err, "%s", refp); goto fail; }
    if (!tokp) {
        tokdef = fb_malloc(strlen(refp) + 32);
        sprintf(tokdef, "%s/tokenizer.json", refp);
        tokp = tokdef;
    }
    dso.tokenizer_path = tokp;  // loaded only if a record needs it (input_ids records do not)
    if (fb_ds_load_tokens(data, &dso, NULL, cfg.vocab, &S, &err)) goto fail;
    if (!quiet && n_samples && S.n < (size_t)n_samples)
        fprintf(stderr, "%s: warning: %zu samples of %d asked (%zu records, %zu too short)\n",
                TOOL, S.n, n_samples, S.set.n_records, S.set.n_skipped_short);
    prog pg = {.on = !quiet && isatty(2), .t0 = fb_now()};
    ro.progress = progress_cb;
    ro.progress_user = &pg;
    if (max_layers > 0 && max_layers < cfg.n_layers) {
        // Hidden states only: no logits after a partial model.
        ro.max_layers = max_layers;
    }
    if (fb_runner_run(ref, qs, S.ids, S.n_tok, S.starts, S.n, &ro, &res, &err)) {
        if (pg.on) fprintf(stderr, "\n");
        goto fail;
    }
    if (pg.on) fprintf(stderr, "\r%*s\r", 70, "");

    int kld_bad = max_kld >= 0 && !(res.kld_mean <= max_kld);
    int top1_bad = min_top1 >= 0 && !(res.top1 >= min_top1);
    int pass = !kld_bad && !top1_bad;
    const char *qfmt = fb_wsrc_quant_format(qs);
    if (json) {
        json_t *js = json_object();
        json_object_set_new(js, "reference", json_string(refp));
        json_object_set_new(js, "quantized", json_string(qp));
        json_object_set_new(js, "format", json_string(qfmt));
        json_object_set_new(js, "device", json_string(res.device));
        json_object_set_new(js, "emulate_w4a4", json_boolean(emulate));
        json_object_set_new(js, "view", json_string(emulate ? "w4a4" : is_w4a4 ? "weight-only" : "as stored"));
        json_object_set_new(js, "samples", json_integer((json_int_t)S.n));
        json_object_set_new(js, "tokens", json_integer((json_int_t)res.n_tokens));
        json_object_set_new(js, "scored", json_integer((json_int_t)res.n_scored));
        json_object_set_new(js, "layers", json_integer(res.n_layers));
        json_object_set_new(js, "ppl_reference", json_real(res.ppl_ref));
        json_object_set_new(js, "ppl_quantized", json_real(res.ppl_quant));
        json_object_set_new(js, "nll_reference", json_real(res.nll_ref));
        json_object_set_new(js, "nll_quantized", json_real(res.nll_quant));
        json_object_set_new(js, "kld_mean", json_real(res.kld_mean));
        json_object_set_new(js, "kld_median", json_real(res.kld_median));
        json_object_set_new(js, "kld_p99", json_real(res.kld_p99));
        json_object_set_new(js, "kld_max", json_real(res.kld_max));
        json_object_set_new(js, "top1", json_real(res.top1));
        json_object_set_new(js, "w4a4_blocks_emulated", json_integer((json_int_t)res.n_emulated));
        if (res.experts_quant) {  // a REAP-pruned version of the reference
            json_object_set_new(js, "experts_reference", json_integer(res.experts_ref));
            json_object_set_new(js, "experts_quantized", json_integer(res.experts_quant));
        }
        json_t *ly = json_array();
        for (int l = 0; l < res.n_layers; l++)
            json_array_append_new(ly, json_pack("{s:i,s:f,s:f,s:f}", "layer", l, "cos_mean",
                                                res.layers[l].cos_mean, "cos_min",
                                                res.layers[l].cos_min, "rel_l2",
                                                res.layers[l].rel_l2));
        json_object_set_new(js, "per_layer", ly);
        json_object_set_new(js, "max_kld", max_kld >= 0 ? json_real(max_kld) : json_null());
        json_object_set_new(js, "min_top1", min_top1 >= 0 ? json_real(min_top1) : json_null());
        json_object_set_new(js, "pass", json_boolean(pass));
        json_object_set_new(js, "seconds", json_real(res.seconds));
        json_object_set_new(js, "reference_seconds", json_real(res.ref_seconds));
        json_object_set_new(js, "quantized_seconds", json_real(res.quant_seconds));
        json_object_set_new(js, "peak_rss_bytes", json_integer((json_int_t)fb_peak_rss()));
        char *s = json_dumps(js, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        puts(s);
        free(s);
        json_decref(js);
    } else if (!quiet) {
        printf("ref-runner: %s (reference) vs %s (%s), %s\n", refp, qp, qfmt, res.device);
        if (emulate)
            printf("  activations: W4A4 emulated, as vLLM runs it on Blackwell%s\n",
                   is_w4a4 ? " (the default for W4A4; --no-emulate-w4a4 for Hopper's weight-only view)" : "");
        else if (is_w4a4)
            printf("  activations: bf16 (--no-emulate-w4a4), the weight-only view of vLLM on Hopper (Marlin)\n");
        if (res.experts_quant)
            printf("  pruned: %d of %d experts per layer kept (reap_map.json)\n", res.experts_quant, res.experts_ref);
        printf("  %zu samples, %zu tokens, %zu scored positions, %d layers, %.1f s\n", S.n,
               res.n_tokens, res.n_scored, res.n_layers, res.seconds);
        printf("  layer   cos mean    cos min     rel L2\n");
        for (int l = 0; l < res.n_layers; l++)
            printf("  %5d   %.6f   %.6f   %.5f\n", l, res.layers[l].cos_mean,
                   res.layers[l].cos_min, res.layers[l].rel_l2);
        printf("  perplexity       reference %.4f   quantized %.4f   (%+.2f%%)\n", res.ppl_ref,
               res.ppl_quant, 100.0 * (res.ppl_quant / res.ppl_ref - 1.0));
        printf("  KL divergence    mean %.6f   median %.6f   p99 %.6f   max %.6f\n",
               res.kld_mean, res.kld_median, res.kld_p99, res.kld_max);
        printf("  top-1 agreement  %.2f%%\n", 100.0 * res.top1);
        if (emulate) printf("  W4A4: %zu activation blocks of 16 fake-quantized\n", res.n_emulated);
        if (max_kld >= 0)
            printf("  check: mean KL %.6f %s %g  %s\n", res.kld_mean, kld_bad ? ">" : "<=",
                   max_kld, kld_bad ? "FAIL" : "ok");
        if (min_top1 >= 0)
            printf("  check: top-1 %.2f%% %s %.2f%%  %s\n", 100.0 * res.top1,
                   top1_bad ? "<" : ">=", 100.0 * min_top1, top1_bad ? "FAIL" : "ok");
    }
    if (cardp) {
        char *sec = NULL;
        size_t sl = 0;
        FILE *f = open_memstream(&sec, &sl);
        fprintf(f, "## Measured quality (ref-runner)\n\n");
        fprintf(f, "Against `%s` on `%s` (%zu samples, %zu tokens, %zu scored positions), %s, %s.\n\n", refp, data, S.n,
                res.n_tokens, res.n_scored, res.device,
                emulate ? "activations W4A4-emulated (vLLM on Blackwell)"
                        : is_w4a4 ? "activations bf16 (vLLM on Hopper, weight-only)" : "activations bf16");
        fprintf(f, "| metric | value |\n|---|---|\n");
        fprintf(f, "| KL divergence mean / median / p99 / max | %.6f / %.6f / %.6f / %.6f |\n", res.kld_mean,
                res.kld_median, res.kld_p99, res.kld_max);
        fprintf(f, "| top-1 agreement | %.2f%% |\n", 100.0 * res.top1);
        fprintf(f, "| perplexity reference / quantized | %.4f / %.4f (%+.2f%%) |\n", res.ppl_ref, res.ppl_quant,
                100.0 * (res.ppl_quant / res.ppl_ref - 1.0));
        if (max_kld >= 0) fprintf(f, "| check mean KL <= %g | %s |\n", max_kld, kld_bad ? "FAIL" : "pass");
        if (min_top1 >= 0) fprintf(f, "| check top-1 >= %g | %s |\n", min_top1, top1_bad ? "FAIL" : "pass");
        fprintf(f, "\nMeasured by fourbit %s `ref-runner`.\n", FB_VERSION);
        fclose(f);
        if (fb_card_append(cardp, sec, &err)) {
            free(sec);
            goto fail;
        }
        free(sec);
        if (!quiet && !json) printf("  quality table appended to %s/README.md\n", cardp);
    }
    if (!pass) {
        if (kld_bad)
            fprintf(stderr, "%s: mean KL divergence %.6f exceeds --max-kld %g\n", TOOL,
                    res.kld_mean, max_kld);
        if (top1_bad)
            fprintf(stderr, "%s: top-1 agreement %.4f is below --min-top1 %g\n", TOOL, res.top1,
                    min_top1);
        rc = 1;
    }
    goto out;
fail:
    fprintf(stderr, "%s: %s\n", TOOL, err.msg);
    rc = 1;
out:
    fb_runner_result_free(&res);
    fb_chat_own_free(&own);
    fb_ds_tokens_free(&S);
    free(tokdef);
    fb_wsrc_close(qs);
    fb_wsrc_close(ref);
    return rc;
}
