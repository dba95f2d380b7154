// test_prune_per_layer.c: `reap-prune --per-layer` (one ranking of the experts of every layer,
// a floor per layer, per-layer counts in config.json) on models/tiny-minimax-m2, as a user runs it.
//
// Expected values come from tests/golden/reap/per-layer.json (scripts/gen-reap-perlayer-golden.py):
// the map derived from llm-compressor's own REAP saliencies (its REAPSaliencyTracker sums and
// counts, minimax-reap.json) by the rule of src/jobs/prune.h, and the moe_sparsity_config that
// compressed-tensors 0.20.1's ExpertSparsityConfig serialises for those counts. llm-compressor
// 0.14 has no global mode; where the floor binds in every layer the per-layer map must equal its
// uniform one (llmcompressor-report-0.5.json).
//
// Checked, independently of the job's code: the retained experts per layer; config.json's
// moe_sparsity_config and expert count; router rows and bias entries are the source's rows of
// the retained experts, byte for byte; every kept expert's tensors are the source's; the
// validator's verdict ([moe.nonuniform] naming each layer's count) and its per-layer consistency
// checks; the refusal without --allow-nonuniform; --dry-run and --json; --keep of a per-layer
// map; and that every engine (calibrate, the quantizers, fp8-dequant, ref-runner, reap-prune)
// refuses a non-uniform checkpoint with a message saying why.
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "arch/arch.h"
#include "calib/stats.h"
#include "io/checkpoint.h"
#include "jobs/prune.h"
#include "cli_util.h"
#include "test.h"

#define MM "models/tiny-minimax-m2"
#define MSTATS GOLDEN_DIR "/model-quant/calib-stats.safetensors"
#define CALIB_IDS GOLDEN_DIR "/model-quant/calib-ids.jsonl"

static int nothing_left(const char *out) {
    return !cli_exists("%s/%s", cli_dir, out) && !cli_exists("%s/%s.partial", cli_dir, out);
}

static unsigned char *payload(const fb_ckpt *c, const char *name, const fb_st_tensor **t) {
    const fb_ckpt_tensor *ct = fb_ckpt_find(c, name);
    if (!ct) return NULL;
    void *p = NULL;
    fb_err err;
    if (fb_st_read_all(fb_ckpt_file(c, ct), ct->t, &p, &err)) return NULL;
    *t = ct->t;
    return p;
}

static json_t *load(const char *fmt, const char *a, const char *b) {
    char p[700];
    snprintf(p, sizeof p, fmt, a, b);
    json_error_t je;
    json_t *j = json_load_file(p, 0, &je);
    REQUIRE(j, "%s: %s", p, je.text);
    return j;
}

// The pruned output against the source and the expected map: router rows, bias entries and
// every tensor of kept expert n are the source's of the expert the map names; nothing of a
// dropped expert is left.
static void check_tensors(const char *out, json_t *retained) {
    const fb_arch *a = fb_arch_by_name("minimax_m2");
    fb_ckpt *s = NULL, *o = NULL;
    fb_err err;
    REQUIRE(fb_ckpt_open(MM, &s, &err) == 0 && fb_ckpt_open(out, &o, &err) == 0, "%s", err.msg);
    size_t expert_tensors = 0;
    for (int l = 0; l < 4; l++) {
        char blk[256];
        fb_arch_block(a, FB_BLOCK_MOE, l, blk, sizeof blk);
        json_t *keep = json_object_get(retained, blk);
        int n = (int)json_array_size(keep);
        const fb_role roles[2] = {FB_ROLE_ROUTER, FB_ROLE_ROUTER_BIAS};
        for (int r = 0; r < 2; r++) {
            char nm[300];
            fb_arch_tensor(a, roles[r], l, -1, nm, sizeof nm);
            const fb_st_tensor *ts = NULL, *to = NULL;
            unsigned char *ps = payload(s, nm, &ts), *po = payload(o, nm, &to);
            REQUIRE(ps && po, "%s: %s", out, nm);
            size_t row = ts->nbytes / 8;
            int ok = to->shape[0] == n && to->nbytes == row * (size_t)n;
            for (int i = 0; ok && i < n; i++)
                ok = !memcmp(po + (size_t)i * row, ps + (size_t)json_integer_value(json_array_get(keep, (size_t)i)) * row, row);
            CHECK(ok, "%s: %s holds the rows of the retained experts (%d)", out, nm, n);
            free(ps);
            free(po);
        }
        for (int i = 0; i < 8; i++) {
            const fb_role er[3] = {FB_ROLE_W_GATE, FB_ROLE_W_UP, FB_ROLE_W_DOWN};
            for (int r = 0; r < 3; r++) {
                char mo[300], ms[300], nm[400], ns[400];
                fb_arch_module(a, er[r], l, i, mo, sizeof mo);
                snprintf(nm, sizeof nm, "%s.weight", mo);
                if (i >= n) {
                    CHECK(!fb_ckpt_find(o, nm), "%s: %s left behind (layer keeps %d)", out, nm, n);
                    continue;
                }
                fb_arch_module(a, er[r], l, (int)json_integer_value(json_array_get(keep, (size_t)i)), ms, sizeof ms);
                snprintf(ns, sizeof ns, "%s.weight", ms);
                const fb_st_tensor *ts = NULL, *to = NULL;
                unsigned char *ps = payload(s, ns, &ts), *po = payload(o, nm, &to);
                CHECK(ps && po && ts->nbytes == to->nbytes && ts->dtype == to->dtype && !memcmp(ps, po, ts->nbytes),
                      "%s: %s is the source's %s byte for byte (FP8 kept)", out, nm, ns);
                free(ps);
                free(po);
                expert_tensors++;
            }
        }
    }
    CHECK(expert_tensors > 0, "expert tensors checked");
    fb_ckpt_close(s);
    fb_ckpt_close(o);
}

// Each golden case end to end.
static void golden(void) {
    json_t *g = load("%s%s", GOLDEN_DIR "/reap/per-layer.json", "");
    json_t *lc = load("%s%s", GOLDEN_DIR "/reap/llmcompressor-report-0.5.json", "");
    size_t i;
    json_t *cs;
    json_array_foreach(json_object_get(g, "cases"), i, cs) {
        double sp = json_real_value(json_object_get(cs, "sparsity"));
        json_t *mn = json_object_get(cs, "min_experts");
        json_t *pl = json_object_get(cs, "per_layer");
        int uniform = 1, mx = 0;
        for (size_t l = 0; l < json_array_size(pl); l++) {
            int c = (int)json_integer_value(json_array_get(pl, l));
            if (c != json_integer_value(json_array_get(pl, 0))) uniform = 0;
            if (c > mx) mx = c;
        }
        char flo[64] = "", out[400];
        if (json_is_integer(mn)) snprintf(flo, sizeof flo, " --min-experts %d", (int)json_integer_value(mn));
        snprintf(out, sizeof out, "%s/g%zu", cli_dir, i);
        int rc = cli_run("%s/reap-prune -q --stats " MSTATS " --sparsity %g --per-layer%s%s " MM " %s", cli_bin, sp, flo,
                         uniform ? "" : " --allow-nonuniform", out);
        REQUIRE(rc == 0, "case %zu: reap-prune --per-layer --sparsity %g%s: exit %d", i, sp, flo, rc);
        json_t *map = load("%s/%s", out, "reap_map.json");
        json_t *want = json_object_get(cs, "retained");
        char *ws = json_dumps(want, JSON_COMPACT | JSON_SORT_KEYS);
        char *gs = json_dumps(json_object_get(map, "retained"), JSON_COMPACT | JSON_SORT_KEYS);
        CHECK(json_equal(want, json_object_get(map, "retained")), "case %zu (sparsity %g%s): expected %s, reap-prune %s",
              i, sp, flo, ws, gs);
        free(ws);
        free(gs);
        json_t *cfg = load("%s/%s", out, "config.json");
        json_t *ms = json_object_get(json_object_get(cfg, "quantization_config"), "moe_sparsity_config");
        CHECK(json_equal(ms, json_object_get(cs, "quantization_config_field")),
              "case %zu: quantization_config.moe_sparsity_config is compressed-tensors' ExpertSparsityConfig", i);
        CHECK(json_integer_value(json_object_get(cfg, "num_local_experts")) == mx, "case %zu: num_local_experts = %d", i, mx);
        CHECK(json_is_string(json_object_get(json_object_get(cfg, "quantization_config"), "quant_method")),
              "case %zu: the FP8 quantization_config kept", i);
        check_tensors(out, want);
        rc = cli_run("%s/validate-ignore-list %s", cli_bin, out);
        if (uniform) {
            CHECK(rc == 0, "case %zu: equal counts validate (exit %d)", i, rc);
            // the floor binds everywhere: llm-compressor's own uniform map at 0.5
            json_t *mine = json_object_get(map, "retained");
            for (int l = 0; l < 4; l++) {
                char k[64], m[64];
                snprintf(k, sizeof k, "model.layers.%d.mlp", l);
                snprintf(m, sizeof m, "model.layers.%d.block_sparse_moe", l);
                CHECK(json_equal(json_object_get(lc, k), json_object_get(mine, m)), "case %zu layer %d: llm-compressor's map",
                      i, l);
            }
            CHECK(cli_run("%s/reap-prune -q --stats " MSTATS " --sparsity 0.5 " MM " %s/uni", cli_bin, cli_dir) == 0 &&
                      cli_run("%s/st-diff %s %s/uni", cli_bin, out, cli_dir) == 0,
                  "case %zu: the same tensors as uniform pruning at 0.5", i);
        } else {
            CHECK(rc == 1 && cli_log_has("[moe.nonuniform]") && cli_log_has("layer 0: ") && cli_log_has("layer 3: ") &&
                      cli_log_has("AssertionError"),
                  "case %zu: the validator reports the per-layer counts vLLM cannot load (exit %d)", i, rc);
        }
        json_decref(cfg);
        json_decref(map);
    }
    CHECK(json_array_size(json_object_get(g, "cases")) == 3, "golden cases");
    json_decref(lc);
    json_decref(g);
}

// Refusal, dry run, JSON, --keep.
static void cli(void) {
    CHECK(cli_run("%s/reap-prune --stats " MSTATS " --sparsity 0.25 --per-layer " MM " %s/ref", cli_bin, cli_dir) == 1 &&
              cli_log_has("per-layer expert counts [6, 7, 6, 5]") && cli_log_has("no vLLM release") &&
              cli_log_has("--allow-nonuniform") && nothing_left("ref"),
          "non-uniform counts refused without --allow-nonuniform, nothing written");
    CHECK(cli_run("%s/reap-prune --dry-run --json --stats " MSTATS " --sparsity 0.25 --per-layer " MM " %s/dry", cli_bin,
                  cli_dir) == 0 &&
              cli_log_has("per-layer counts 6, 7, 6, 5") && cli_log_has("model.layers.3.block_sparse_moe: keep 5, drop 4") &&
              cli_log_has("refused without --allow-nonuniform") && cli_log_has("\"experts_per_layer\":[6,7,6,5]") &&
              cli_log_has("\"nonuniform\":true") && nothing_left("dry"),
          "--dry-run --json: the per-layer counts, the dropped experts, the verdict; nothing written");
    CHECK(cli_run("%s/reap-prune -q --json --stats " MSTATS " --experts 6 " MM " %s/u6", cli_bin, cli_dir) == 0 &&
              cli_log_has("\"experts_per_layer\":[6,6,6,6]") && cli_log_has("\"nonuniform\":false"),
          "--json of a uniform run lists the counts too");
    // --experts N --per-layer: the budget of N per layer on average (= sparsity 0.25 here)
    CHECK(cli_run("%s/reap-prune -q --stats " MSTATS " --experts 6 --per-layer --allow-nonuniform " MM " %s/e6", cli_bin,
                  cli_dir) == 0 &&
              cli_run("%s/st-diff %s/g0 %s/e6", cli_bin, cli_dir, cli_dir) == 0 &&
              cli_run("cmp %s/g0/config.json %s/e6/config.json", cli_dir, cli_dir) == 0,
          "--experts 6 --per-layer equals --sparsity 0.25 --per-layer");
    // --keep of a per-layer map
    CHECK(cli_run("%s/reap-prune -q --keep %s/g0/reap_map.json " MM " %s/k", cli_bin, cli_dir, cli_dir) == 1 &&
              cli_log_has("every layer must keep the same number") && cli_log_has("--per-layer") && nothing_left("k"),
          "--keep of a per-layer map without --per-layer is refused");
    CHECK(cli_run("%s/reap-prune -q --keep %s/g0/reap_map.json --per-layer --allow-nonuniform " MM " %s/k", cli_bin, cli_dir,
                  cli_dir) == 0 &&
              cli_run("%s/st-diff %s/g0 %s/k", cli_bin, cli_dir, cli_dir) == 0 &&
              cli_run("cmp %s/g0/config.json %s/k/config.json", cli_dir, cli_dir) == 0,
          "--keep --per-layer reproduces the run");
    CHECK(cli_run("%s/reap-prune -q --keep %s/g0/reap_map.json --stats " MSTATS " --per-layer --allow-nonuniform " MM
                  " %s/k2", cli_bin, cli_dir, cli_dir) == 0 &&
              cli_run("cmp %s/g0/reap_map.json %s/k2/reap_map.json", cli_dir, cli_dir) == 0,
          "--keep --stats --per-layer: the same map file");
    struct { const char *args; int rc; const char *msg; } R[] = {
        {"--stats " MSTATS " --sparsity 0.25 --min-experts 3", 2, "need --per-layer"},
        {"--stats " MSTATS " --sparsity 0.25 --allow-nonuniform", 2, "need --per-layer"},
        {"--stats " MSTATS " --sparsity 0.25 --per-layer --stats-out SO", 2, "one expert count per model"},
        {"--stats " MSTATS " --sparsity 0.25 --per-layer --min-experts 1", 1, "num_experts_per_tok 2"},
        {"--stats " MSTATS " --sparsity 0.25 --per-layer --min-experts 7", 1, "not possible with at least 7 per layer"},
        {"--stats " MSTATS " --experts 8 --per-layer", 1, "must be in"},
    };
    for (size_t i = 0; i < sizeof R / sizeof R[0]; i++) {
        char args[600];
        snprintf(args, sizeof args, "%s", R[i].args);
        char *p = strstr(args, "SO");
        if (p) snprintf(p, sizeof args - (size_t)(p - args), "%s/so.safetensors", cli_dir);
        int rc = cli_run("%s/reap-prune %s " MM " %s/bad", cli_bin, args, cli_dir);
        CHECK(rc == R[i].rc && cli_log_has(R[i].msg) && nothing_left("bad"), "%s: exit %d (want %d), '%s'", args, rc,
              R[i].rc, R[i].msg);
    }
}

// Every engine on a non-uniform checkpoint: a clear refusal (they build one expert count per
// model, as vLLM does), nothing written.
static void engines(void) {
    const char *cmds[] = {
        "calibrate -q --model G0 --dataset " CALIB_IDS " -o OUT",
        "nvfp4-quantize -q --recipe recipes/minimax-nvfp4a16.yaml G0 OUT",
        "w4a16-quantize -q --recipe recipes/minimax-w4a16.yaml G0 OUT",
        "fp8-dequant -q G0 OUT",
        "ref-runner -r " MM " --quantized G0 -d " CALIB_IDS " --device cpu",
        "ref-runner -r G0 --quantized G0 -d " CALIB_IDS " --device cpu",
        "reap-prune -q --stats " MSTATS " --experts 4 G0 OUT",
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char c[800] = "", *d = c;
        for (const char *s = cmds[i]; *s;) {
            if (!strncmp(s, "G0", 2)) { d += sprintf(d, "%s/g0", cli_dir); s += 2; }
            else if (!strncmp(s, "OUT", 3)) { d += sprintf(d, "%s/eng", cli_dir); s += 3; }
            else *d++ = *s++;
        }
        *d = 0;
        int rc = cli_run("%s/%s", cli_bin, c);
        CHECK(rc == 1 && cli_log_has("per-layer expert counts (layer 0: 6, layer 1: 7") && cli_log_has("not supported") &&
                  nothing_left("eng"),
              "%s: exit %d, refused naming the per-layer counts", c, rc);
    }
}

// The other family (Qwen3-MoE: num_experts, mlp.gate) and a source without quantization_config
// (the BF16 dequant): the counts go to the family's key and to a top-level moe_sparsity_config.
static void families(void) {
    char qs[400];
    snprintf(qs, sizeof qs, "%s/qstats.safetensors", cli_dir);
    REQUIRE(cli_run("%s/calibrate -q -m models/tiny-qwen3-moe -d " CALIB_IDS " -o %s --samples 8 --threads 1", cli_bin, qs) == 0,
            "calibrate Qwen3");
    REQUIRE(cli_run("%s/reap-prune --stats %s --sparsity 0.25 --per-layer --dry-run models/tiny-qwen3-moe %s/qd", cli_bin, qs,
                    cli_dir) == 0, "dry run Qwen3");
    // the counts the dry run announces, then the real run
    int n[4] = {0, 0, 0, 0};
    for (int l = 0; l < 4; l++) {
        char want[64];
        for (int k = 8; k >= 2; k--) {
            snprintf(want, sizeof want, "model.layers.%d.mlp: keep %d, drop", l, k);
            if (cli_log_has_(want, 0)) { n[l] = k; break; }
        }
    }
    CHECK(n[0] + n[1] + n[2] + n[3] == 4 * 6, "Qwen3 dry run: %d %d %d %d kept, 24 in all", n[0], n[1], n[2], n[3]);
    int mx = 0;
    for (int l = 0; l < 4; l++) mx = n[l] > mx ? n[l] : mx;
    CHECK(cli_run("%s/reap-prune -q --stats %s --sparsity 0.25 --per-layer --allow-nonuniform models/tiny-qwen3-moe %s/q",
                  cli_bin, qs, cli_dir) == 0, "Qwen3 --per-layer");
    json_t *c = load("%s/%s", cli_dir, "q/config.json");
    json_t *ne = json_object_get(json_object_get(json_object_get(c, "quantization_config"), "moe_sparsity_config"),
                                 "num_experts");
    int ok = json_array_size(ne) == 4 && json_integer_value(json_object_get(c, "num_experts")) == mx;
    for (int l = 0; ok && l < 4; l++) ok = json_integer_value(json_array_get(ne, (size_t)l)) == n[l];
    CHECK(ok, "Qwen3: num_experts = %d, moe_sparsity_config = the dry run's counts", mx);
    json_decref(c);
    CHECK(cli_run("%s/validate-ignore-list %s/q", cli_bin, cli_dir) == 1 && cli_log_has("[moe.nonuniform]") &&
              cli_log_has("Qwen3MoeModel"),
          "Qwen3: the validator names vLLM's model");
    // BF16 source: no quantization_config, so a top-level moe_sparsity_config
    REQUIRE(cli_run("%s/fp8-dequant -q " MM " %s/bf16", cli_bin, cli_dir) == 0, "fp8-dequant");
    CHECK(cli_run("%s/reap-prune -q --stats " MSTATS " --sparsity 0.25 --per-layer --allow-nonuniform %s/bf16 %s/b", cli_bin,
                  cli_dir, cli_dir) == 0, "BF16 --per-layer");
    json_t *g = load("%s%s", GOLDEN_DIR "/reap/per-layer.json", "");
    c = load("%s/%s", cli_dir, "b/config.json");
    json_t *want = json_object_get(json_array_get(json_object_get(g, "cases"), 0), "moe_sparsity_config");
    CHECK(!json_object_get(c, "quantization_config") && json_equal(json_object_get(c, "moe_sparsity_config"), want),
          "BF16 source: top-level moe_sparsity_config as compressed-tensors serialises it");
    json_decref(c);
    json_decref(g);
    CHECK(cli_run("%s/validate-ignore-list %s/b", cli_bin, cli_dir) == 1 && cli_log_has("[moe.nonuniform]") &&
              !cli_log_has_("[moe.experts]", 0) && !cli_log_has_("[tensor.shape]", 0),
          "BF16 per-layer: only the loading verdict, the per-layer tensors are consistent");
}

// Copies cli_dir/g0 to cli_dir/v and edits its config.json.
static json_t *vcopy(void) {
    REQUIRE(cli_run("rm -rf %s/v && cp -r %s/g0 %s/v", cli_dir, cli_dir, cli_dir) == 0, "copy");
    return load("%s/%s", cli_dir, "v/config.json");
}
static void vsave(json_t *c) {
    char p[400];
    snprintf(p, sizeof p, "%s/v/config.json", cli_dir);
    REQUIRE(json_dump_file(c, p, JSON_INDENT(2)) == 0, "%s", p);
    json_decref(c);
}

// The validator's per-layer consistency: counts against router rows, bias length and expert
// tensors of each layer; the family's key against the largest count; top-k against the
// smallest; a malformed list.
static void validator(void) {
    struct { int layer; long val; const char *msg; } E[] = {
        {1, 6, "gate.weight has 7 entries, moe_sparsity_config.num_experts[layer] is 6"},
        {1, 6, "e_score_correction_bias has 7 entries"},
        {1, 6, "layer holds 7 experts, moe_sparsity_config.num_experts[1] is 6"},
        {1, 5, "expert 5 >= moe_sparsity_config.num_experts[layer] 5"},
    };
    for (size_t i = 0; i < sizeof E / sizeof E[0]; i++) {
        json_t *c = vcopy();
        json_t *ne = json_object_get(json_object_get(json_object_get(c, "quantization_config"), "moe_sparsity_config"),
                                     "num_experts");
        json_array_set_new(ne, (size_t)E[i].layer, json_integer(E[i].val));
        vsave(c);
        int rc = cli_run("%s/validate-ignore-list %s/v", cli_bin, cli_dir);
        CHECK(rc == 1 && cli_log_has(E[i].msg), "counts edited (%zu): exit %d, '%s'", i, rc, E[i].msg);
    }
    json_t *c = vcopy();
    json_object_set_new(c, "num_local_experts", json_integer(8));
    vsave(c);
    CHECK(cli_run("%s/validate-ignore-list %s/v", cli_bin, cli_dir) == 1 && cli_log_has("[config.moe_sparsity]") &&
              cli_log_has("num_local_experts is 8, the largest count of moe_sparsity_config.num_experts is 7"),
          "the expert key must be the largest count");
    c = vcopy();
    json_object_set_new(c, "num_experts_per_tok", json_integer(6));
    vsave(c);
    CHECK(cli_run("%s/validate-ignore-list %s/v", cli_bin, cli_dir) == 1 &&
              cli_log_has("num_experts_per_tok 6 > 5 experts of the smallest layer"),
          "top-k above the smallest layer");
    c = vcopy();
    json_array_remove(json_object_get(json_object_get(json_object_get(c, "quantization_config"), "moe_sparsity_config"),
                                      "num_experts"), 3);
    vsave(c);
    CHECK(cli_run("%s/validate-ignore-list %s/v", cli_bin, cli_dir) == 1 && cli_log_has("[config.moe_sparsity]") &&
              cli_log_has("a list of 4 entries"),
          "a list of the wrong length");
}

// fb_prune_select_global on a hand-made table: the globally lowest go first, a layer at its
// floor is skipped, ties go by the higher expert index then the higher layer.
static void rule(void) {
    fb_calib_stats *s = fb_calib_stats_new(2, 4);
    s->arch = fb_arch_by_name("minimax_m2");
    s->done[0] = s->done[1] = 1;
    // layer 0: 1 1 5 6; layer 1: 2 1 0(never routed) 7
    double sum[8] = {1, 1, 5, 6, 2, 1, 0, 7};
    int64_t cnt[8] = {1, 1, 1, 1, 1, 1, 0, 1};
    for (int i = 0; i < 8; i++) { s->sal_sum[i] = sum[i]; s->counts[i] = cnt[i]; }
    fb_prune_map *m = NULL;
    fb_err err;
    // 3 go with floor 2: (1,2) saliency 0; then the ties at 1.0: (1,1) [expert 1, layer 1] before
    // (0,1) [expert 1, layer 0] before (0,0) -> layer 1 is at its floor after two, so (0,1) goes.
    REQUIRE(fb_prune_select_global(s, 3, 2, &m, &err) == 0, "%s", err.msg);
    CHECK(m->layer_keep[0] == 3 && m->layer_keep[1] == 2, "counts %d %d, want 3 2", m->layer_keep[0], m->layer_keep[1]);
    CHECK(m->keep[0] == 0 && m->keep[1] == 2 && m->keep[2] == 3, "layer 0 keeps %d %d %d, want 0 2 3", m->keep[0],
          m->keep[1], m->keep[2]);
    CHECK(m->keep[m->n_keep + 0] == 0 && m->keep[m->n_keep + 1] == 3, "layer 1 keeps %d %d, want 0 3",
          m->keep[m->n_keep], m->keep[m->n_keep + 1]);
    CHECK(fb_prune_map_nonuniform(m), "non-uniform");
    fb_prune_map_free(m);
    // 2 go: (1,2), then of the tie (1,1) / (0,1) the higher layer's
    REQUIRE(fb_prune_select_global(s, 2, 2, &m, &err) == 0, "%s", err.msg);
    CHECK(m->layer_keep[0] == 4 && m->layer_keep[1] == 2, "tie across layers: counts %d %d, want 4 2", m->layer_keep[0],
          m->layer_keep[1]);
    fb_prune_map_free(m);
    // floor 3: layer 1 stops at 3, so the next lowest of layer 0 go
    REQUIRE(fb_prune_select_global(s, 2, 3, &m, &err) == 0, "%s", err.msg);
    CHECK(m->layer_keep[0] == 3 && m->layer_keep[1] == 3 && m->keep[0] == 0 && m->keep[1] == 2,
          "floor 3: %d %d, layer 0 keeps %d %d ...", m->layer_keep[0], m->layer_keep[1], m->keep[0], m->keep[1]);
    fb_prune_map_free(m);
    CHECK(fb_prune_select_global(s, 5, 2, &m, &err) == -1 && strstr(err.msg, "at most 4"), "budget above the floor refused");
    CHECK(fb_prune_select_global(s, 1, 5, &m, &err) == -1, "floor above the experts refused");
    fb_calib_stats_free(s);
}

int main(void) {
    const char *b = getenv("BUILD");
    snprintf(cli_bin, sizeof cli_bin, "%s/bin", b ? b : "build");
    snprintf(cli_dir, sizeof cli_dir, "/tmp/fb-test-perlayer-XXXXXX");
    REQUIRE(mkdtemp(cli_dir), "mkdtemp");
    CHECK(cli_run("%s/reap-prune --help", cli_bin) == 0 && cli_log_has("--per-layer") && cli_log_has("--min-experts") &&
              cli_log_has("--allow-nonuniform"),
          "--help");
    rule();
    golden();
    cli();
    engines();
    validator();
    families();
    if (getenv("FB_KEEP")) printf("outputs kept in %s\n", cli_dir);
    else cli_run("rm -rf %s", cli_dir);
    TEST_MAIN_END();
}
