// test_prune_cli.c: reap-prune end to end on both embedded models (models/tiny-minimax-m2 and
// models/tiny-qwen3-moe, FP8 block-scaled), as a user runs it.
//
// For each pruned output, independently of the job's code:
//   - the experts kept in every layer are the n of highest saliency computed here from the
//     statistics file's expert_saliency_sum / expert_counts tensors (ties: lower index kept);
//   - every tensor of kept expert n is byte-identical to the source's tensor of the expert
//     the map says n was; no tensor of a pruned expert is left;
//   - the router gate rows and e_score_correction_bias entries are exactly the kept rows;
//   - every other tensor is byte-identical to the source's; config.json differs only in the
//     expert count; validate-ignore-list accepts the output.
// Then: prune -> quantize equals quantize -> prune tensor for tensor (NVFP4A16, W4A16, and
// NVFP4 W4A4 with the statistics that --stats-out writes); --keep reproduces a run; --dry-run
// writes nothing; split jobs + merge equal a single run; bad input (sparsity out of range,
// top-k above the experts left, statistics of another model or with a missing layer, maps
// with a bad index) refused with a message and nothing left behind.
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "arch/arch.h"
#include "calib/stats.h"
#include "io/checkpoint.h"
#include "jobs/prune.h"
#include "cli_util.h"
#include "test.h"

#define MM "models/tiny-minimax-m2"
#define QM "models/tiny-qwen3-moe"
#define MSTATS GOLDEN_DIR "/model-quant/calib-stats.safetensors"
#define CALIB_IDS GOLDEN_DIR "/model-quant/calib-ids.jsonl"

static int nothing_left(const char *out) {
    return !cli_exists("%s/%s", cli_dir, out) && !cli_exists("%s/%s.partial", cli_dir, out);
}

// Payload bytes of a tensor (malloc'ed) or NULL.
static unsigned char *payload(const fb_ckpt *c, const char *name, const fb_st_tensor **t) {
    const fb_ckpt_tensor *ct = fb_ckpt_find(c, name);
    if (!ct) return NULL;
    void *p = NULL;
    fb_err err;
    if (fb_st_read_all(fb_ckpt_file(c, ct), ct->t, &p, &err)) return NULL;
    *t = ct->t;
    return p;
}

// The kept experts expected from the statistics file: per layer the n of highest
// sum/count saliency (0 when never routed), lower index first among equals. [L * n].
static int *expected_keep(const fb_arch *a, const char *stats, int L, int E, int n) {
    fb_ckpt *s = NULL;
    fb_err err;
    REQUIRE(fb_ckpt_open(stats, &s, &err) == 0, "%s", err.msg);
    int *keep = calloc((size_t)L * (size_t)n, sizeof(int));
    for (int l = 0; l < L; l++) {
        char blk[256], nm[300];
        fb_arch_block(a, FB_BLOCK_MOE, l, blk, sizeof blk);
        const fb_st_tensor *ts, *tc;
        snprintf(nm, sizeof nm, "%s.expert_saliency_sum", blk);
        double *sum = (double *)payload(s, nm, &ts);
        snprintf(nm, sizeof nm, "%s.expert_counts", blk);
        int64_t *cnt = (int64_t *)payload(s, nm, &tc);
        REQUIRE(sum && cnt && (int)ts->nelem == E && (int)tc->nelem == E, "%s: saliency of layer %d", stats, l);
        int used[1024] = {0};
        // pick the n best one by one (strict >: the lower index wins a tie), in index order
        for (int k = 0; k < n; k++) {
            int best = -1;
            double bs = 0;
            for (int e = 0; e < E; e++) {
                if (used[e]) continue;
                double v = cnt[e] ? sum[e] / (double)cnt[e] : 0.0;
                if (best < 0 || v > bs) { best = e; bs = v; }
            }
            used[best] = 1;
        }
        int m = 0;
        for (int e = 0; e < E; e++) if (used[e]) keep[l * n + m++] = e;
        free(sum);
        free(cnt);
    }
    fb_ckpt_close(s);
    return keep;
}

// The role, layer, expert of a tensor name and the length of its module part; -1 if none.
static int parse_name(const fb_arch *a, const char *name, fb_role *r, int *l, int *e, size_t *ml) {
    if (fb_arch_parse(a, name, r, l, e) == 0) { *ml = strlen(name); return 0; }
    char buf[600];
    snprintf(buf, sizeof buf, "%s", name);
    for (char *d = strrchr(buf, '.'); d; d = strrchr(buf, '.')) {
        *d = 0;
        if (fb_arch_parse(a, buf, r, l, e) == 0) { *ml = (size_t)(d - buf); return 0; }
    }
    return -1;
}

// Checks a pruned output against its source (see the header). stats: NULL to skip the
// selection check. Returns the map's retained lists ([L * n], caller frees).
static int *check_pruned(const char *src, const char *out, const char *stats, int n) {
    fb_ckpt *s = NULL, *o = NULL;
    fb_err err;
    REQUIRE(fb_ckpt_open(src, &s, &err) == 0, "%s", err.msg);
    REQUIRE(fb_ckpt_open(out, &o, &err) == 0, "%s", err.msg);
    fb_model_config mc;
    REQUIRE(fb_model_config_parse(s->config, &mc, &err) == 0, "%s", err.msg);
    const fb_arch *a = mc.arch;
    int L = mc.n_layers, E = mc.n_experts;
    // config: only the expert count differs
    json_t *want = json_deep_copy(s->config);
    json_object_set_new(want, a->key_n_experts, json_integer(n));
    CHECK(json_equal(want, o->config), "%s/config.json: not the source's with %s = %d", out, a->key_n_experts, n);
    json_decref(want);
    // the map
    char mp[600];
    snprintf(mp, sizeof mp, "%s/reap_map.json", out);
    json_error_t je;
    json_t *map = json_load_file(mp, 0, &je);
    REQUIRE(map, "%s: %s", mp, je.text);
    CHECK(json_integer_value(json_object_get(map, "num_experts_kept")) == n, "%s: num_experts_kept", mp);
    int *keep = calloc((size_t)L * (size_t)n, sizeof(int));
    for (int l = 0; l < L; l++) {
        char blk[256];
        fb_arch_block(a, FB_BLOCK_MOE, l, blk, sizeof blk);
        json_t *k = json_object_get(json_object_get(map, "retained"), blk);
        REQUIRE(json_array_size(k) == (size_t)n, "%s: %s has %zu entries, want %d", mp, blk, json_array_size(k), n);
        for (int i = 0; i < n; i++) keep[l * n + i] = (int)json_integer_value(json_array_get(k, (size_t)i));
    }
    json_decref(map);
    if (stats) {
        int *exp = expected_keep(a, stats, L, E, n);
        for (int i = 0; i < L * n; i++)
            CHECK(exp[i] == keep[i], "%s: layer %d kept[%d] = %d, the saliency ranking says %d", out, i / n, i % n,
                  keep[i], exp[i]);
        free(exp);
    }
    // every output tensor against the source
    size_t n_expert_src = 0, n_expert_kept_src = 0;
    for (size_t i = 0; i < s->n_tensors; i++) {
        fb_role r;
        int l, e;
        size_t ml;
        if (parse_name(a, s->tensors[i].t->name, &r, &l, &e, &ml) == 0 && fb_role_scope(r) == FB_SCOPE_EXPERT) {
            n_expert_src++;
            for (int k = 0; k < n; k++) n_expert_kept_src += keep[l * n + k] == e;
        }
    }
    CHECK(o->n_tensors == s->n_tensors - (n_expert_src - n_expert_kept_src), "%s: %zu tensors, want %zu", out,
          o->n_tensors, s->n_tensors - (n_expert_src - n_expert_kept_src));
    int bad = 0, sliced = 0;
    for (size_t i = 0; i < o->n_tensors && bad < 5; i++) {
        const char *name = o->tensors[i].t->name;
        fb_role r;
        int l = -1, e = -1;
        size_t ml = 0;
        char sname[700];
        snprintf(sname, sizeof sname, "%s", name);
        int parsed = parse_name(a, name, &r, &l, &e, &ml) == 0;
        if (parsed && fb_role_scope(r) == FB_SCOPE_EXPERT) {
            if (e >= n) { CHECK(0, "%s: %s: expert index %d >= %d kept", out, name, e, n); bad++; continue; }
            char mod[512];
            fb_arch_module(a, r, l, keep[l * n + e], mod, sizeof mod);
            snprintf(sname, sizeof sname, "%s%s", mod, name + ml);
        }
        const fb_st_tensor *to, *ts;
        unsigned char *po = payload(o, name, &to), *ps = payload(s, sname, &ts);
        if (!po || !ps) { CHECK(0, "%s: %s: cannot read it or its source %s", out, name, sname); bad++; free(po); free(ps); continue; }
        CHECK(to->dtype == ts->dtype && to->ndim == ts->ndim, "%s: %s: dtype/rank differ from %s", out, name, sname);
        if (parsed && (r == FB_ROLE_ROUTER || r == FB_ROLE_ROUTER_BIAS)) {
            sliced++;
            uint64_t row = ts->nbytes / (uint64_t)E;
            int ok = to->shape[0] == n && to->nbytes == row * (uint64_t)n;
            for (int k = 0; k < n && ok; k++)
                ok = !memcmp(po + (uint64_t)k * row, ps + (uint64_t)keep[l * n + k] * row, row);
            CHECK(ok, "%s: %s: not the source rows of the kept experts", out, name);
            bad += !ok;
        } else {
            int ok = to->nbytes == ts->nbytes && !memcmp(po, ps, to->nbytes);
            CHECK(ok, "%s: %s: bytes differ from the source's %s", out, name, sname);
            bad += !ok;
        }
        free(po);
        free(ps);
    }
    CHECK(sliced == (a->role[FB_ROLE_ROUTER_BIAS].path ? 2 : 1) * L, "%s: %d router tensors sliced", out, sliced);
    fb_ckpt_close(s);
    fb_ckpt_close(o);
    CHECK(cli_run("%s/validate-ignore-list %s", cli_bin, out) == 0 && cli_log_has("OK (loadable)"),
          "validate-ignore-list %s", out);
    return keep;
}

static char qstats[400];

static void hex128(const void *p, size_t n, char out[33]) {
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits(p, n));
    for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", c.digest[i]);
}

// Against llm-compressor 0.14.0.1's REAPPruningModifier on the same model and calibration
// tokens (tests/golden/reap/minimax-reap.json, scripts/gen-reap-golden.py): the same retained
// experts in every layer at each sparsity, and the router / correction-bias slices
// byte-identical to those of the pruned reference model. Its own report file, given to --keep,
// reproduces fourbit's run.
static void golden(void) {
    json_error_t je;
    json_t *g = json_load_file(GOLDEN_DIR "/reap/minimax-reap.json", 0, &je);
    REQUIRE(g, "reap golden: %s (run scripts/gen-reap-golden.py)", je.text);
    const fb_arch *a = fb_arch_by_name("minimax_m2");
    const char *sp;
    json_t *run;
    int n_runs = 0;
    json_object_foreach(json_object_get(g, "runs"), sp, run) {
        n_runs++;
        char out[400];
        snprintf(out, sizeof out, "%s/gold-%s", cli_dir, sp);
        REQUIRE(cli_run("%s/reap-prune -q --stats " MSTATS " --sparsity %s " MM " %s", cli_bin, sp, out) == 0,
                "reap-prune --sparsity %s", sp);
        char mp[500];
        snprintf(mp, sizeof mp, "%s/reap_map.json", out);
        json_t *map = json_load_file(mp, 0, &je);
        REQUIRE(map, "%s", mp);
        fb_ckpt *o = NULL;
        fb_err err;
        REQUIRE(fb_ckpt_open(out, &o, &err) == 0, "%s", err.msg);
        const char *blk;
        json_t *want;
        int n_layers = 0;
        json_object_foreach(json_object_get(run, "retained"), blk, want) {
            int l = atoi(blk + strlen("model.layers."));
            n_layers++;
            char mine[256];
            fb_arch_block(a, FB_BLOCK_MOE, l, mine, sizeof mine);
            json_t *got = json_object_get(json_object_get(map, "retained"), mine);
            char *ws = json_dumps(want, JSON_COMPACT), *gs = json_dumps(got, JSON_COMPACT);
            CHECK(json_equal(want, got), "sparsity %s, layer %d: llm-compressor keeps %s, reap-prune %s", sp, l, ws, gs);
            free(ws);
            free(gs);
            // router and bias slices: the reference model's bytes
            char key[16];
            snprintf(key, sizeof key, "%d", l);
            json_t *rs = json_object_get(json_object_get(run, "router_slices"), key);
            const fb_role roles[2] = {FB_ROLE_ROUTER, FB_ROLE_ROUTER_BIAS};
            const char *rk[2] = {"router", "router_bias"};
            for (int r = 0; r < 2; r++) {
                char nm[300], hex[33] = "";
                fb_arch_tensor(a, roles[r], l, -1, nm, sizeof nm);
                const fb_st_tensor *t;
                unsigned char *p = payload(o, nm, &t);
                if (p) hex128(p, t->nbytes, hex);
                const char *wh = json_string_value(json_array_get(json_object_get(rs, rk[r]), 1));
                CHECK(p && wh && !strcmp(hex, wh), "sparsity %s: %s: xxh3 %s, the reference's %s", sp, nm, hex,
                      wh ? wh : "(none)");
                free(p);
            }
        }
        CHECK(n_layers == 4, "golden lists %d layers", n_layers);
        fb_ckpt_close(o);
        json_decref(map);
        // llm-compressor's own report file as --keep
        CHECK(cli_run("%s/reap-prune -q --keep " GOLDEN_DIR "/reap/llmcompressor-report-%s.json " MM " %s-lc", cli_bin, sp,
                      out) == 0 &&
                  cli_run("%s/st-diff %s %s-lc", cli_bin, out, out) == 0,
              "--keep llmcompressor-report-%s.json reproduces the run", sp);
    }
    CHECK(n_runs == 2, "golden runs: %d", n_runs);
    // The saliency behind the choice: calibrate's routed counts equal the reference tracker's,
    // and its mean saliency agrees within 1e-6 relative (f32 forwards, f64 sums; measured
    // 1.4e-7 at worst).
    fb_calib_stats *st = NULL;
    fb_err err;
    REQUIRE(fb_calib_stats_read(MSTATS, &st, &err) == 0, "%s", err.msg);
    json_t *sal = json_object_get(json_object_get(json_object_get(g, "runs"), "0.25"), "saliency");
    const char *blk;
    json_t *v;
    double worst = 0;
    json_object_foreach(sal, blk, v) {
        int l = atoi(blk + strlen("model.layers."));
        for (int e = 0; e < st->n_experts; e++) {
            int64_t rc = (int64_t)json_integer_value(json_array_get(json_object_get(v, "count"), (size_t)e));
            double rs = json_real_value(json_array_get(json_object_get(v, "sum"), (size_t)e));
            size_t i = (size_t)l * (size_t)st->n_experts + (size_t)e;
            CHECK(rc == st->counts[i], "layer %d expert %d: %lld tokens routed, the reference %lld", l, e,
                  (long long)st->counts[i], (long long)rc);
            double mine = fb_calib_stats_saliency(st, l, e), ref = rc ? rs / (double)rc : 0.0;
            double rel = ref != 0 ? fabs(mine - ref) / fabs(ref) : fabs(mine);
            if (rel > worst) worst = rel;
        }
    }
    CHECK(json_object_size(sal) == 4 && worst < 1e-6, "saliency vs REAPSaliencyTracker: worst relative difference %.3g",
          worst);
    fb_calib_stats_free(st);
    json_decref(g);
}

static void prune_both(void) {
    // MiniMax-M2: 8 experts, top-2; sparsity 0.25 drops int(8 * 0.25) = 2
    CHECK(cli_run("%s/reap-prune -q --stats " MSTATS " --sparsity 0.25 --json " MM " %s/m6", cli_bin, cli_dir) == 0 &&
              cli_log_has("\"num_experts_kept\":6"),
          "reap-prune MiniMax");
    char out[400];
    snprintf(out, sizeof out, "%s/m6", cli_dir);
    free(check_pruned(MM, out, MSTATS, 6));
    // Qwen3-MoE: statistics from calibrate on the same ids, --experts 5
    snprintf(qstats, sizeof qstats, "%s/qstats.safetensors", cli_dir);
    REQUIRE(cli_run("%s/calibrate -q -m " QM " -d " CALIB_IDS " -o %s --samples 8 --threads 1", cli_bin, qstats) == 0,
            "calibrate Qwen3-MoE");
    snprintf(out, sizeof out, "%s/q5", cli_dir);
    CHECK(cli_run("%s/reap-prune -q --stats %s --experts 5 " QM " %s", cli_bin, qstats, out) == 0, "reap-prune Qwen3");
    free(check_pruned(QM, out, qstats, 5));
    // --keep reproduces the MiniMax run
    CHECK(cli_run("%s/reap-prune -q --keep %s/m6/reap_map.json " MM " %s/m6k", cli_bin, cli_dir, cli_dir) == 0,
          "--keep");
    CHECK(cli_run("%s/st-diff %s/m6 %s/m6k", cli_bin, cli_dir, cli_dir) == 0, "--keep: tensors differ");
    CHECK(cli_run("cmp %s/m6/config.json %s/m6k/config.json", cli_dir, cli_dir) == 0, "--keep: config differs");
    CHECK(cli_run("%s/reap-prune -q --keep %s/q5/reap_map.json --stats %s " QM " %s/q5k", cli_bin, cli_dir, qstats,
                  cli_dir) == 0 && cli_run("%s/st-diff %s/q5 %s/q5k", cli_bin, cli_dir, cli_dir) == 0,
          "--keep reproduces the Qwen3 run");
    CHECK(cli_run("cmp %s/q5/reap_map.json %s/q5k/reap_map.json", cli_dir, cli_dir) == 0, "--keep --stats: same map");
}

// prune -> quantize == quantize -> prune, tensor for tensor, and the same config.json.
static void orders(void) {
    struct { const char *model; int mm; const char *tool, *recipe; int w4a4; } C[] = {
        {MM, 1, "nvfp4-quantize", "recipes/minimax-nvfp4a16.yaml", 0},
        {MM, 1, "w4a16-quantize", "recipes/minimax-w4a16.yaml", 0},
        {MM, 1, "nvfp4-quantize", "recipes/minimax.yaml", 1},
        {QM, 0, "nvfp4-quantize", "recipes/qwen3-moe-nvfp4a16.yaml", 0},
        {QM, 0, "w4a16-quantize", "recipes/qwen3-moe-w4a16.yaml", 0},
    };
    for (size_t i = 0; i < sizeof C / sizeof C[0]; i++) {
        const char *st = C[i].mm ? MSTATS : qstats;
        int n = C[i].mm ? 6 : 5;
        char cal[500] = "", calp[500] = "";
        if (C[i].w4a4) {
            snprintf(cal, sizeof cal, "--calib %s", st);
            snprintf(calp, sizeof calp, "--calib %s/ps%zu.safetensors", cli_dir, i);
        }
        int rc = cli_run("%s/reap-prune -q --stats %s --experts %d --stats-out %s/ps%zu.safetensors %s %s/pr%zu", cli_bin,
                         st, n, cli_dir, i, C[i].model, cli_dir, i);
        rc = rc ? rc : cli_run("%s/%s -q --recipe %s %s %s/pr%zu %s/prq%zu", cli_bin, C[i].tool, C[i].recipe, calp, cli_dir, i, cli_dir, i);
        if (C[i].w4a4)  // --stats-out records the pruned checkpoint's identity: nothing to warn about
            CHECK(rc == 0 && !cli_log_has_("identity", 0) && !cli_log_has_("warning", 0),
                  "%s: the pruned statistics carry the pruned checkpoint's identity", C[i].model);
        rc = rc ? rc : cli_run("%s/%s -q --recipe %s %s %s %s/qu%zu", cli_bin, C[i].tool, C[i].recipe, cal, C[i].model, cli_dir, i);
        rc = rc ? rc : cli_run("%s/reap-prune -q --keep %s/pr%zu/reap_map.json %s/qu%zu %s/qup%zu", cli_bin, cli_dir, i, cli_dir, i, cli_dir, i);
        CHECK(rc == 0, "%s %s: a step failed", C[i].model, C[i].recipe);
        CHECK(cli_run("%s/st-diff %s/prq%zu %s/qup%zu", cli_bin, cli_dir, i, cli_dir, i) == 0,
              "%s %s: prune->quantize != quantize->prune", C[i].model, C[i].recipe);
        char pa[500], pb[500];
        snprintf(pa, sizeof pa, "%s/prq%zu/config.json", cli_dir, i);
        snprintf(pb, sizeof pb, "%s/qup%zu/config.json", cli_dir, i);
        json_error_t je;
        json_t *ja = json_load_file(pa, 0, &je), *jb = json_load_file(pb, 0, &je);
        CHECK(ja && jb && json_equal(ja, jb), "%s %s: configs differ between the orders", C[i].model, C[i].recipe);
        json_decref(ja);
        json_decref(jb);
        CHECK(cli_run("%s/validate-ignore-list %s/qup%zu", cli_bin, cli_dir, i) == 0, "validate %s %s", C[i].model,
              C[i].recipe);
        if (C[i].w4a4)  // the unpruned statistics would give renumbered experts other experts' input scales
            CHECK(cli_run("%s/%s -q --recipe %s %s %s/pr%zu %s/prq-wrong%zu", cli_bin, C[i].tool, C[i].recipe, cal,
                          cli_dir, i, cli_dir, i) == 1 &&
                      cli_log_has("reap-prune --stats-out") && nothing_left("prq-wrong2"),
                  "W4A4 on the pruned model with the unpruned statistics is refused");
    }
}

static void dry_run_and_split(void) {
    CHECK(cli_run("%s/reap-prune --dry-run --stats " MSTATS " --experts 6 " MM " %s/dry", cli_bin, cli_dir) == 0 &&
              cli_log_has("drop") && cli_log_has("saliency") && cli_log_has("saved"),
          "--dry-run lists the experts that go");
    CHECK(nothing_left("dry"), "--dry-run wrote something");
    // split jobs over a shared staging directory, then the merge: equal to one run
    int rc = 0;
    for (int i = 0; i < 3 && !rc; i++)
        rc = cli_run("%s/reap-prune -q --stats " MSTATS " --experts 6 --max-shard-size 2MB --shard-index %d --shard-count 3 " MM
                     " %s/split", cli_bin, i, cli_dir);
    rc = rc ? rc : cli_run("%s/reap-prune -q --stats " MSTATS " --experts 6 --max-shard-size 2MB --merge --shard-count 3 " MM " %s/split",
                           cli_bin, cli_dir);
    rc = rc ? rc : cli_run("%s/reap-prune -q --stats " MSTATS " --experts 6 --max-shard-size 2MB " MM " %s/single", cli_bin, cli_dir);
    CHECK(rc == 0, "split jobs");
    CHECK(cli_run("cd %s && for f in single/*.safetensors single/*.json; do cmp $f split/${f#single/} || exit 1; done",
                  cli_dir) == 0,
          "split + merge differs from a single run");
}

// Copies dir src to cli_dir/name and sets config.json key to val (integer).
static void copy_with_key(const char *src, const char *name, const char *key, long val) {
    REQUIRE(cli_run("rm -rf %s/%s && cp -r %s %s/%s", cli_dir, name, src, cli_dir, name) == 0, "copy %s", src);
    char p[600];
    snprintf(p, sizeof p, "%s/%s/config.json", cli_dir, name);
    json_error_t je;
    json_t *c = json_load_file(p, 0, &je);
    REQUIRE(c, "%s", p);
    json_object_set_new(c, key, json_integer(val));
    REQUIRE(json_dump_file(c, p, JSON_INDENT(2)) == 0, "%s", p);
    json_decref(c);
}

// The validator on pruned checkpoints with the mistakes a pruner can make, in the family's
// own config key: expert count not updated, router / bias / experts not sliced, top-k above
// the experts left.
static void validator(void) {
    struct { const char *src; const char *key; long val; const char *msg; } V[] = {
        {"m6", "num_local_experts", 8, "gate.weight has 6 entries, num_local_experts is 8"},
        {"m6", "num_local_experts", 8, "e_score_correction_bias has 6 entries"},
        {"m6", "num_experts_per_tok", 7, "num_experts_per_tok 7 > num_local_experts 6"},
        {"q5", "num_experts", 8, "gate.weight has 5 entries, num_experts is 8"},
        {"q5", "num_experts_per_tok", 6, "num_experts_per_tok 6 > num_experts 5"},
        {MM, "num_local_experts", 6, "gate.weight has 8 entries, num_local_experts is 6"},
        {MM, "num_local_experts", 6, "num_local_experts is 6 but the layers hold experts 0..7"},
        {QM, "num_experts", 5, "num_experts is 5 but the layers hold experts 0..7"},
    };
    for (size_t i = 0; i < sizeof V / sizeof V[0]; i++) {
        char src[500];  // the outputs of prune_both, or an unpruned model
        if (strchr(V[i].src, '/')) snprintf(src, sizeof src, "%s", V[i].src);
        else snprintf(src, sizeof src, "%s/%s", cli_dir, V[i].src);
        copy_with_key(src, "vbad", V[i].key, V[i].val);
        int rc = cli_run("%s/validate-ignore-list %s/vbad", cli_bin, cli_dir);
        CHECK(rc == 1, "%s with %s = %ld: validate exit %d, want 1", V[i].src, V[i].key, V[i].val, rc);
        CHECK(cli_log_has(V[i].msg), "%s with %s = %ld: no '%s'", V[i].src, V[i].key, V[i].val, V[i].msg);
    }
}

// ref-runner compares a pruned model (and a pruned + quantized one) with the unpruned
// reference and says so; without the map the expert counts are a different model.
static void runner(void) {
    CHECK(cli_run("%s/ref-runner -r " MM " --quantized %s/m6 -d " CALIB_IDS " --device cpu --json", cli_bin, cli_dir) == 0 &&
              cli_log_has("\"experts_reference\": 8") && cli_log_has("\"experts_quantized\": 6"),
          "ref-runner: reference vs pruned");
    CHECK(cli_run("%s/ref-runner -r " MM " --quantized %s/qup2 -d " CALIB_IDS " --device cpu --emulate-w4a4", cli_bin,
                  cli_dir) == 0 && cli_log_has("pruned: 6 of 8 experts per layer kept"),
          "ref-runner: reference vs pruned + NVFP4");
    CHECK(cli_run("%s/ref-runner -r " QM " --quantized %s/q5 -d " CALIB_IDS " --device cpu", cli_bin, cli_dir) == 0 &&
              cli_log_has("pruned: 5 of 8 experts per layer kept"),
          "ref-runner: Qwen3 reference vs pruned");
    CHECK(cli_run("%s/ref-runner -r %s/m6 --quantized %s/m6k -d " CALIB_IDS " --device cpu --json", cli_bin, cli_dir, cli_dir) == 0 &&
              cli_log_has("\"kld_max\": 0.0") && !cli_log_has_("experts_reference", 0),
          "ref-runner: pruned vs the same pruned model (KL 0, nothing reported)");
    REQUIRE(cli_run("rm -rf %s/nomap && cp -r %s/m6 %s/nomap && rm %s/nomap/reap_map.json", cli_dir, cli_dir, cli_dir,
                    cli_dir) == 0, "copy");
    CHECK(cli_run("%s/ref-runner -r " MM " --quantized %s/nomap -d " CALIB_IDS " --device cpu", cli_bin, cli_dir) == 1 &&
              cli_log_has("not a pruned version"),
          "ref-runner: fewer experts without a map is refused");
}

static void refusals(void) {
    char shortst[400], badmap[400];
    // statistics with layer 3 missing
    fb_calib_stats *s = NULL;
    fb_err err;
    REQUIRE(fb_calib_stats_read(MSTATS, &s, &err) == 0, "%s", err.msg);
    s->done[3] = 0;
    snprintf(shortst, sizeof shortst, "%s/short.safetensors", cli_dir);
    REQUIRE(fb_calib_stats_write(s, shortst, 0, NULL, NULL, &err) == 0, "%s", err.msg);
    fb_calib_stats_free(s);
    struct { const char *args; int rc; const char *msg; } R[] = {
        {"--stats " MSTATS " --sparsity 1.5", 2, "(0, 1)"},
        {"--stats " MSTATS " --sparsity 0", 2, "exactly one"},
        {"--stats " MSTATS " --sparsity 0.1", 1, "drops no expert"},
        {"--stats " MSTATS " --experts 1", 1, "num_experts_per_tok 2 > 1"},
        {"--stats " MSTATS " --experts 8", 1, "must be in"},
        {"--stats " MSTATS " --experts 6 --sparsity 0.25", 2, "exactly one"},
        {"--experts 6", 2, "--stats"},
        {"--stats QSTATS --experts 6", 1, "statistics of a Qwen3-MoE model"},
        {"--stats SHORT --experts 6", 1, "layer 3"},
        {"--stats /nonexistent.safetensors --experts 6", 1, "nonexistent"},
        {"--keep MAP9", 1, "not an expert index"},
        {"--keep MAPUNSORTED", 1, "strictly increasing"},
        {"--keep MAPMISSING", 1, "model.layers.3"},
        {"--keep MAPUNEVEN", 1, "the same number"},
    };
    const char *maps[][2] = {
        {"MAP9", "[0,1,2,3,4,9]"}, {"MAPUNSORTED", "[1,0,2,3,4,5]"}, {"MAPMISSING", NULL}, {"MAPUNEVEN", "[0,1,2,3,4]"}};
    for (size_t i = 0; i < sizeof R / sizeof R[0]; i++) {
        char args[1200];
        snprintf(args, sizeof args, "%s", R[i].args);
        char *p;
        if ((p = strstr(args, "QSTATS"))) { char t[1200]; snprintf(t, sizeof t, "%.*s%s%s", (int)(p - args), args, qstats, p + 6); strcpy(args, t); }
        if ((p = strstr(args, "SHORT"))) { char t[1200]; snprintf(t, sizeof t, "%.*s%s%s", (int)(p - args), args, shortst, p + 5); strcpy(args, t); }
        for (size_t k = 0; k < 4; k++) {
            size_t nl = strlen(maps[k][0]);
            if (!(p = strstr(args, maps[k][0])) || (p[nl] != 0 && p[nl] != ' ')) continue;
            // layer 0..3 of the MiniMax map; the bad entry in layer 2 (layer 3 absent for MISSING)
            snprintf(badmap, sizeof badmap, "%s/%s.json", cli_dir, maps[k][0]);
            FILE *f = fopen(badmap, "w");
            REQUIRE(f, "%s", badmap);
            fprintf(f, "{\"retained\": {");
            for (int l = 0; l < 4; l++) {
                char blk[256];
                fb_arch_block(fb_arch_by_name("minimax_m2"), FB_BLOCK_MOE, l, blk, sizeof blk);
                if (!maps[k][1] && l == 3) break;
                fprintf(f, "%s\"%s\": %s", l ? ", " : "", blk, l == 2 && maps[k][1] ? maps[k][1] : "[0,1,2,3,4,5]");
            }
            fprintf(f, "}}\n");
            fclose(f);
            char t[1200];
            snprintf(t, sizeof t, "%.*s%s%s", (int)(p - args), args, badmap, p + nl);
            strcpy(args, t);
        }
        int rc = cli_run("%s/reap-prune %s " MM " %s/bad", cli_bin, args, cli_dir);
        CHECK(rc == R[i].rc, "%s: exit %d, want %d", args, rc, R[i].rc);
        CHECK(cli_log_has(R[i].msg), "%s: message lacks '%s'", args, R[i].msg);
        CHECK(nothing_left("bad"), "%s: left something behind", args);
    }
}

// fb_prune_select on a hand-made table: the lowest saliency goes, an expert never routed
// (saliency 0) goes first, among equal saliencies the higher index goes; sparsity arithmetic
// is Python's int(E * F).
static void selection_rule(void) {
    fb_calib_stats *s = fb_calib_stats_new(1, 6);
    s->arch = fb_arch_by_name("minimax_m2");
    s->done[0] = 1;
    // saliency: e0 2.0, e1 1.0, e2 never routed, e3 1.0, e4 3.0, e5 1.0
    double sum[6] = {4.0, 1.0, 0.0, 3.0, 3.0, 2.0};
    int64_t cnt[6] = {2, 1, 0, 3, 1, 2};
    for (int e = 0; e < 6; e++) { s->sal_sum[e] = sum[e]; s->counts[e] = cnt[e]; }
    fb_prune_map *m = NULL;
    fb_err err;
    REQUIRE(fb_prune_select(s, 3, &m, &err) == 0, "%s", err.msg);
    // drop e2 (0), then of the tied e1/e3/e5 (1.0) the higher indices e5 and e3
    CHECK(m->keep[0] == 0 && m->keep[1] == 1 && m->keep[2] == 4, "kept %d %d %d, want 0 1 4", m->keep[0], m->keep[1],
          m->keep[2]);
    fb_prune_map_free(m);
    CHECK(fb_prune_select(s, 6, &m, &err) == -1, "keeping every expert is refused");
    fb_calib_stats_free(s);
    CHECK(fb_prune_keep_for_sparsity(256, 0.25, &err) == 192, "256 x 0.25");
    CHECK(fb_prune_keep_for_sparsity(256, 0.4, &err) == 154, "256 x 0.4: int(102.4) = 102 dropped");
    CHECK(fb_prune_keep_for_sparsity(8, 0.3, &err) == 6, "8 x 0.3: int(2.4) = 2 dropped");
    CHECK(fb_prune_keep_for_sparsity(8, 0.1, &err) == -1, "8 x 0.1 drops none");
    CHECK(fb_prune_keep_for_sparsity(8, 1.0, &err) == -1, "sparsity 1");
}

// Outputs never replace or enter an input.
static void paths(void) {
    CHECK(cli_run("%s/reap-prune --stats " MSTATS " --experts 6 " MM " " MM "/pruned", cli_bin) == 1 &&
              cli_log_has("DST") && !cli_exists(MM "/pruned") && !cli_exists(MM "/pruned.partial"),
          "DST inside the source is refused");
    CHECK(cli_run("%s/reap-prune --stats " MSTATS " --experts 6 --stats-out " MSTATS " " MM " %s/bad", cli_bin, cli_dir) == 1 &&
              cli_log_has("--stats-out") && nothing_left("bad"),
          "--stats-out onto the input statistics is refused");
    REQUIRE(cli_run("touch %s/exists.safetensors", cli_dir) == 0, "touch");
    CHECK(cli_run("%s/reap-prune --stats " MSTATS " --experts 6 --stats-out %s/exists.safetensors " MM " %s/bad", cli_bin,
                  cli_dir, cli_dir) == 1 && cli_log_has("exists") && nothing_left("bad"),
          "an existing --stats-out file is refused without --force");
}

int main(void) {
    const char *b = getenv("BUILD");
    snprintf(cli_bin, sizeof cli_bin, "%s/bin", b ? b : "build");
    snprintf(cli_dir, sizeof cli_dir, "/tmp/fb-test-prune-XXXXXX");
    REQUIRE(mkdtemp(cli_dir), "mkdtemp");
    REQUIRE(cli_exists("%s/model.safetensors.index.json", MM) && cli_exists("%s/model.safetensors.index.json", QM),
            "the embedded models");
    CHECK(cli_run("%s/reap-prune --help", cli_bin) == 0 && cli_log_has("--sparsity") && cli_log_has("e_score_correction_bias"),
          "--help");
    selection_rule();
    golden();
    prune_both();
    orders();
    dry_run_and_split();
    validator();
    runner();
    refusals();
    paths();
    if (getenv("FB_KEEP")) printf("outputs kept in %s\n", cli_dir);
    else cli_run("rm -rf %s", cli_dir);
    TEST_MAIN_END();
}
