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

#include "calib/forward.h"
#include "common/cli.h"
#include "common/fb.h"

static const char *TOOL = "calibrate";

// ---- samples -------------------------------------------------------------------------------

typedef struct samples {
    size_t n;           // samples
    size_t *starts;     // [n+1] into ids
    int32_t *ids;
    size_t n_tok;
    size_t lines, skipped_long, truncated, empty;
} samples;

typedef struct line_index {
    size_t n, cap;
    uint64_t *off;  // [n+1]: byte offsets of line starts, off[n] = file size
} line_index;

static int index_lines(FILE *f, const char *path, line_index *li, fb_err *err) {
    li->n = 0;
    li->cap = 1024;
    li->off = fb_malloc(li->cap * sizeof(uint64_t));
    uint64_t pos = 0, start = 0;
    int c, nonblank = 0;
    char buf[1 << 16];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, f)) > 0) {
        for (size_t i = 0; i < got; i++, pos++) {
            c = (unsigned char)buf[i];
            if (c == '\n') {
                if (li->n + 2 > li->cap) li->off = fb_realloc(li->off, (li->cap *= 2) * sizeof(uint64_t));
                li->off[li->n++] = start;
                start = pos + 1;
                nonblank = 0;
            } else if (c != ' ' && c != '\t' && c != '\r') {
                nonblank = 1;
            }
        }
    }
    if (ferror(f)) return fb_fail(err, "%s: read error", path);
    if (nonblank || start < pos) {
        if (li->n + 2 > li->cap) li->off = fb_realloc(li->off, (li->cap *= 2) * sizeof(uint64_t));
        li->off[li->n++] = start;
    }
    li->off[li->n] = pos + 1;  // one past the end (the '\n' that may be missing)
    return 0;
}

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// Token ids of one JSONL line (`input_ids`). *n = 0 for an empty sample.
static int line_tokens(const char *path, size_t lineno, const char *text, int vocab,
                       int32_t **ids, size_t *n, fb_err *err) {
    json_error_t je;
    json_t *j = json_loads(text, 0, &je);
    if (!j) return fb_fail(err, "%s:%zu: invalid JSON: %s", path, lineno, je.text);
    int rc = 0;
    const json_t *arr = json_object_get(j, "input_ids");
    if (!json_is_object(j)) {
        rc = fb_fail(err, "%s:%zu: not a JSON object", path, lineno);
    } else if (arr) {
        if (!json_is_array(arr)) {
            rc = fb_fail(err, "%s:%zu: \"input_ids\" is not an array", path, lineno);
        } else {
            size_t m = json_array_size(arr);
            *ids = fb_malloc(m * sizeof(int32_t) + 1);
            for (size_t i = 0; i < m && !rc; i++) {
                const json_t *v = json_array_get(arr, i);
                if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                    json_integer_value(v) >= vocab)
                    rc = fb_fail(err, "%s:%zu: input_ids[%zu] is not a token id in [0, %d)", path,
                                 lineno, i, vocab);
                else (*ids)[i] = (int32_t)json_integer_value(v);
            }
            *n = m;
            if (rc) { free(*ids); *ids = NULL; }
        }
    } else if (json_object_get(j, "messages") || json_object_get(j, "text")) {
        rc = fb_fail(err, "%s:%zu: \"messages\"/\"text\" samples need the tokenizer, which this "
                          "build lacks; give pre-tokenized \"input_ids\"", path, lineno);
    } else {
        rc = fb_fail(err, "%s:%zu: no \"input_ids\", \"messages\" or \"text\" field", path, lineno);
    }
    json_decref(j);
    return rc;
}

static int load_samples(const char *path, size_t want, size_t seq_len, uint64_t seed,
                        int skip_long, int vocab, samples *S, fb_err *err) {
    memset(S, 0, sizeof *S);
    FILE *f = fopen(path, "rb");
    if (!f) return fb_fail(err, "%s: cannot open the dataset", path);
    line_index li = {0};
    int rc = index_lines(f, path, &li, err);
    size_t *order = NULL;
    char *buf = NULL;
    size_t bufcap = 0, cap = 0;
    if (rc) goto done;
    S->lines = li.n;
    order = fb_malloc((li.n + 1) * sizeof(size_t));
    for (size_t i = 0; i < li.n; i++) order[i] = i;
    uint64_t st = seed;
    for (size_t i = li.n; i > 1; i--) {
        size_t j = (size_t)(splitmix64(&st) % i);
        size_t t = order[i - 1]; order[i - 1] = order[j]; order[j] = t;
    }
    S->starts = fb_malloc((want + 1) * sizeof(size_t));
    S->starts[0] = 0;
    for (size_t k = 0; k < li.n && S->n < want; k++) {
        size_t ln = order[k];
        uint64_t a = li.off[ln], b = li.off[ln + 1] - 1;  // without the newline
        if (b < a) b = a;
        size_t len = (size_t)(b - a);
        if (len + 1 > bufcap) buf = fb_realloc(buf, bufcap = len + 1);
        if (fseeko(f, (off_t)a, SEEK_SET) != 0 || fread(buf, 1, len, f) != len) {
            rc = fb_fail(err, "%s:%zu: read error", path, ln + 1);
            goto done;
        }
        buf[len] = 0;
        size_t sp = 0;
        while (sp < len && (buf[sp] == ' ' || buf[sp] == '\t' || buf[sp] == '\r')) sp++;
        if (sp == len) { S->empty++; continue; }
        int32_t *ids = NULL;
        size_t n = 0;
        if ((rc = line_tokens(path, ln + 1, buf, vocab, &ids, &n, err))) goto done;
        if (n == 0) { S->empty++; free(ids); continue; }
        if (n > seq_len) {
            if (skip_long) { S->skipped_long++; free(ids); continue; }
            n = seq_len;
            S->truncated++;
        }
        if (S->n_tok + n > cap) S->ids = fb_realloc(S->ids, (cap = 2 * (S->n_tok + n)) * sizeof(int32_t));
        memcpy(S->ids + S->n_tok, ids, n * sizeof(int32_t));
        free(ids);
        S->n_tok += n;
        S->starts[++S->n] = S->n_tok;
    }
    if (S->n == 0) rc = fb_fail(err, "%s: no usable sample among %zu lines", path, li.n);
done:
    fclose(f);
    free(li.off);
    free(order);
    free(buf);
    return rc;
}

static int dump_tokens(const char *path, const samples *S, fb_err *err) {
    FILE *f = strcmp(path, "-") ? fopen(path, "w") : stdout;
    if (!f) return fb_fail(err, "%s: cannot create", path);
    for (size_t s = 0; s < S->n; s++) {
        fputs("{\"input_ids\": [", f);
        for (size_t t = S->starts[s]; t < S->starts[s + 1]; t++)
            fprintf(f, t > S->starts[s] ? ", %d" : "%d", S->ids[t]);
        fputs("]}\n", f);
    }
    if (f != stdout ? fclose(f) != 0 : fflush(f) != 0) return fb_fail(err, "%s: write error", path);
    return 0;
}

// ---- progress ------------------------------------------------------------------------------

typedef struct prog {
    int on, n_layers;
    size_t n_tok;
    double t0, last;
    int layer;
} prog;

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

// ---- main ----------------------------------------------------------------------------------

int main(int argc, char **argv) {
    const char *model = NULL, *dataset = NULL, *outp = NULL, *dump = NULL, *tmpl = "minimax";
    int n_samples = 128, seq_len = 2048, threads = 0, group = 32, chunk = 0, skip_long = 0;
    int routed = 0, json = 0, quiet = 0, max_layers = 0;
    double seed_d = 42;
    const fb_opt opts[] = {
        {"model", 'm', FB_OPT_STR, &model, "SRC", "source checkpoint (FP8 block-scaled or BF16 directory)", 0, 0},
        {"dataset", 'd', FB_OPT_STR, &dataset, "D.jsonl", "calibration data: one JSON object per line with \"input_ids\" (or \"messages\"/\"text\" with a tokenizer)", 0, 0},
        {"output", 'o', FB_OPT_STR, &outp, "STATS", "statistics file to write (safetensors)", 0, 0},
        {"samples", 'n', FB_OPT_INT, &n_samples, "N", "calibration samples", 1, 100000000},
        {"seq-len", 'L', FB_OPT_INT, &seq_len, "L", "tokens per sample at most", 1, 1 << 24},
        {"seed", 's', FB_OPT_DOUBLE, &seed_d, "S", "shuffle seed", 0, 0},
        {"skip-long", 0, FB_OPT_FLAG, &skip_long, NULL, "skip samples longer than --seq-len instead of truncating them (REAP)", 0, 0},
        {"template", 0, FB_OPT_STR, &tmpl, "T", "chat template for \"messages\": minimax or chatml", 0, 0},
        {"dump-tokens", 0, FB_OPT_STR, &dump, "FILE", "write the selected samples' token ids as JSONL (\"-\" = stdout) and stop", 0, 0},
        {"threads", 't', FB_OPT_INT, &threads, "T", "worker threads (0 = every CPU)", 0, 256},
        {"expert-group", 0, FB_OPT_INT, &group, "G", "experts held in memory at once (f32: G x 3 x inter x hidden x 4 bytes)", 1, 1 << 20},
        {"token-chunk", 0, FB_OPT_INT, &chunk, "C", "token rows per expert GEMM (0 = 512)", 0, 1 << 24},
        {"routed-only", 0, FB_OPT_FLAG, &routed, NULL, "observe experts on their routed tokens only (old llm-compressor) instead of all tokens", 0, 0},
        {"layers", 0, FB_OPT_INT, &max_layers, "N", "run only the first N layers (0 = all)", 0, 1 << 20},
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
    if (!model || !dataset) { fprintf(stderr, "%s: --model and --dataset are required\n", TOOL); return 2; }
    if (!outp && !dump) { fprintf(stderr, "%s: -o STATS (or --dump-tokens FILE) is required\n", TOOL); return 2; }
    if (strcmp(tmpl, "minimax") && strcmp(tmpl, "chatml")) {
        fprintf(stderr, "%s: --template must be minimax or chatml\n", TOOL);
        return 2;
    }
    if (seed_d < 0 || seed_d != floor(seed_d) || seed_d > 9007199254740992.0) {
        fprintf(stderr, "%s: --seed must be a non-negative integer\n", TOOL);
        return 2;
    }
    uint64_t seed = (uint64_t)seed_d;

    fb_err err;
    fb_wsrc *src = fb_wsrc_open_ckpt(model, &err);
    if (!src) { fprintf(stderr, "%s: %s\n", TOOL, err.msg); return 1; }
    fb_mm_config cfg;
    if (!src->config) {
        fprintf(stderr, "%s: %s: no config.json\n", TOOL, model);
        fb_wsrc_close(src);
        return 1;
    }
    if (fb_mm_config_parse(src->config, &cfg, &err)) {
        fprintf(stderr, "%s: %s: %s\n", TOOL, model, err.msg);
        fb_wsrc_close(src);
        return 1;
    }
    samples S;
    if (load_samples(dataset, (size_t)n_samples, (size_t)seq_len, seed, skip_long, cfg.vocab, &S,
                     &err)) {
        fprintf(stderr, "%s: %s\n", TOOL, err.msg);
        fb_wsrc_close(src);
        return 1;
    }
    if (!quiet && S.n < (size_t)n_samples)
        fprintf(stderr, "%s: warning: %zu samples of %d asked (%zu lines, %zu too long, %zu empty)\n",
                TOOL, S.n, n_samples, S.lines, S.skipped_long, S.empty);
    int rc = 0;
    if (dump) {
        if (dump_tokens(dump, &S, &err)) { fprintf(stderr, "%s: %s\n", TOOL, err.msg); rc = 1; }
        goto out_src;
    }
    int n_layers = max_layers > 0 && max_layers < cfg.n_layers ? max_layers : cfg.n_layers;
    fb_calib_stats *st = fb_calib_stats_new(cfg.n_layers, cfg.n_experts);
    prog pg = {.on = !quiet && isatty(2), .n_layers = n_layers, .n_tok = S.n_tok, .t0 = fb_now()};
    fb_fwd_opts fo = {.threads = threads, .all_experts = !routed, .expert_group = group,
                      .token_chunk = chunk, .stats = st, .progress = progress_cb,
                      .progress_user = &pg};
    fb_fwd *f = fb_fwd_new(src, &cfg, &fo, &err);
    double t0 = fb_now();
    if (!f || fb_fwd_set_tokens(f, S.ids, S.n_tok, S.starts, S.n, &err)) goto fail;
    for (int l = 0; l < n_layers; l++) {
        pg.layer = l;
        if (fb_fwd_layer(f, l, &err)) goto fail;
    }
    if (pg.on) fprintf(stderr, "\r%*s\r", 110, "");
    double secs = fb_now() - t0;

    // Provenance.
    char digest[33] = "", s_samples[32], s_len[32], s_seed[32], s_tokh[32];
    if (fb_file_xxh128(dataset, digest, &err)) goto fail;
    uint64_t h = 1469598103934665603ull;  // FNV-1a 64 of the token ids (little-endian int32)
    for (size_t i = 0; i < S.n_tok; i++)
        for (int b = 0; b < 4; b++) h = (h ^ ((uint32_t)S.ids[i] >> (8 * b) & 0xFF)) * 1099511628211ull;
    snprintf(s_samples, sizeof s_samples, "%zu", S.n);
    snprintf(s_len, sizeof s_len, "%d", seq_len);
    snprintf(s_seed, sizeof s_seed, "%llu", (unsigned long long)seed);
    snprintf(s_tokh, sizeof s_tokh, "%016llx", (unsigned long long)h);
    const char *mk[] = {"tool", "version", "model", "dataset", "dataset_xxh128", "samples",
                        "seq_len", "seed", "skip_long", "template", "tokens_fnv1a64"};
    const char *mv[] = {TOOL, FB_VERSION, model, dataset, digest, s_samples, s_len, s_seed,
                        skip_long ? "true" : "false", tmpl, s_tokh};
    if (fb_calib_stats_write(st, outp, sizeof mk / sizeof mk[0], mk, mv, &err)) goto fail;

    // Summary.
    const fb_fwd_timing *tm = fb_fwd_get_timing(f);
    json_t *js = json_object();
    json_object_set_new(js, "stats", json_string(outp));
    json_object_set_new(js, "samples", json_integer((json_int_t)S.n));
    json_object_set_new(js, "tokens", json_integer((json_int_t)S.n_tok));
    json_object_set_new(js, "truncated", json_integer((json_int_t)S.truncated));
    json_object_set_new(js, "skipped_long", json_integer((json_int_t)S.skipped_long));
    json_object_set_new(js, "layers", json_integer(n_layers));
    json_object_set_new(js, "experts_mode", json_string(routed ? "routed" : "all"));
    json_object_set_new(js, "seconds", json_real(secs));
    json_object_set_new(js, "tokens_per_s_per_layer", json_real(secs > 0 ? (double)S.n_tok * n_layers / secs : 0));
    json_object_set_new(js, "load_seconds", json_real(tm->load_s));
    json_object_set_new(js, "expert_gflops", json_real(tm->expert_s > 0 ? tm->expert_flops / tm->expert_s / 1e9 : 0));
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
        printf("  experts never routed: %zu of %zu; peak RSS %.2f GB\n", n_never,
               E * (size_t)n_layers, (double)fb_peak_rss() / 1e9);
        printf("  statistics: %s\n", outp);
    }
    json_decref(js);
    goto out;
fail:
    if (pg.on) fprintf(stderr, "\n");
    fprintf(stderr, "%s: %s\n", TOOL, err.msg);
    rc = 1;
out:
    fb_fwd_free(f);
    fb_calib_stats_free(st);
out_src:
    free(S.ids);
    free(S.starts);
    fb_wsrc_close(src);
    return rc;
}
