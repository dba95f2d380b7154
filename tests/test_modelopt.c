// test_modelopt.c: `nvfp4-quantize --format modelopt` (NVIDIA ModelOpt NVFP4, quant/modelopt.h)
// end to end on the embedded model (models/tiny-minimax-m2, FP8 block-scaled).
//
// Golden: tests/golden/modelopt/*.json (scripts/gen-modelopt-golden.py): per output tensor the
// dtype, shape and xxh3-128 of what nvidia-modelopt 0.47's export functions write for the same
// weights (to_quantized_weight, get_weight_scaling_factor(_2), get_activation_scaling_factor
// after preprocess_linear_fusion), and the hf_quant_config.json / quantization_config of its
// get_quant_config / convert_hf_quant_config_format. W4A4 takes its input amax from the same
// statistics file as tests/golden/model-quant.
//
// Then: the validator accepts each output and reports what vLLM's modelopt loader would reject or
// get silently wrong in altered copies (lm_head not excluded, unequal w1/w3 or q/k/v
// weight_scale_2, an input_scale of 0, W4A16_NVFP4 on an older vLLM); the weight source reads it back (every module
// dequantizes to what modelopt's NVFP4QTensor.dequantize formula gives, checked against the
// scalar kernel on the stored bytes) and ref-runner measures it (KL close to, not equal to,
// the compressed-tensors output's: the formats round differently); a W4A16
// recipe is refused with --format modelopt; an all-zero weight is refused by name.
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "calib/wsrc_quant.h"
#include "io/checkpoint.h"
#include "quant/formats.h"
#include "quant/modelopt.h"
#include "quant/nvfp4.h"
#include "cli_util.h"
#include "test.h"
#include "quant_golden.h"

#define MODEL "models/tiny-minimax-m2"
#define GOLD GOLDEN_DIR "/modelopt"

static json_t *load_gold(const char *name) {
    char p[300];
    snprintf(p, sizeof p, "%s/%s", GOLD, name);
    json_error_t je;
    json_t *g = json_load_file(p, 0, &je);
    REQUIRE(g, "%s: %s (run scripts/gen-modelopt-golden.py)", p, je.text);
    return g;
}

// Runs nvfp4-quantize with the golden's arguments into cli_dir/out and compares tensors and
// both configs with the golden.
static void golden_case(const char *file, const char *out) {
    json_t *g = load_gold(file);
    char args[1024] = "", od[400];
    size_t l = 0, i;
    json_t *a;
    json_array_foreach(json_object_get(g, "args"), i, a)
        l += (size_t)snprintf(args + l, sizeof args - l, " %s", json_string_value(a));
    snprintf(od, sizeof od, "%s/%s", cli_dir, out);
    int rc = cli_run("%s/nvfp4-quantize -q%s %s %s", cli_bin, args, MODEL, od);
    CHECK(rc == 0, "%s: nvfp4-quantize%s: exit %d", file, args, rc);
    if (rc == 0) {
        compare_tensors(file, od, g);
        json_t *hfq = load_qconfig(od, "hf_quant_config.json", NULL);
        json_t *want = json_object_get(g, "hf_quant_config");
        CHECK(hfq && json_equal(hfq, want), "%s: hf_quant_config.json equals modelopt's get_quant_config", file);
        if (!json_equal(hfq, want)) print_diff(file, "hf_quant_config.json", want, hfq);
        int budget = 3;
        note_key_order(file, "hf_quant_config.json", want, hfq, &budget);
        json_decref(hfq);
        json_t *qc = load_qconfig(od, "config.json", "quantization_config");
        want = json_object_get(g, "quantization_config");
        CHECK(qc && json_equal(qc, want), "%s: quantization_config equals modelopt's convert_hf_quant_config_format", file);
        if (!json_equal(qc, want)) print_diff(file, "quantization_config", want, qc);
        json_decref(qc);
        CHECK(cli_run("%s/validate-ignore-list %s", cli_bin, od) == 0, "%s: validate-ignore-list accepts the output", file);
        // the model card says what was written and how it is served
        CHECK(cli_run("grep -q -- '^- modelopt$' %s/README.md && grep -q -- '--quantization modelopt' %s/README.md && "
                      "! sed -n '/^## Serving/,/^## [^S]/p' %s/README.md | grep -q CompressedTensors && "
                      "grep -q 'ModelOpt NVFP4' %s/README.md", od, od, od, od) == 0,
              "%s: the card names the ModelOpt format and its vLLM serving line", file);
    }
    json_decref(g);
}

// The weight source reads a ModelOpt module back as the format's dequantization: for every
// quantized Linear of the output, fb_wsrc's rows equal fb_modelopt_dequant_rows of the stored
// bytes, and they are within one fp4 step of the BF16 source (a wrong reader, e.g. taking the
// packed U8 weight as a plain tensor, fails both).
static void read_back(const char *out) {
    char od[400];
    snprintf(od, sizeof od, "%s/%s", cli_dir, out);
    fb_err err;
    fb_wsrc *q = fb_wsrc_open_auto(od, &err);
    REQUIRE(q, "%s", err.msg);
    CHECK(fb_wsrc_is_quant(q), "a modelopt checkpoint opens as a quantized source");
    CHECK(!strcmp(fb_wsrc_quant_format(q), "modelopt-nvfp4a16"), "format name %s", fb_wsrc_quant_format(q));
    const char *mods[] = {"model.layers.0.self_attn.q_proj", "model.layers.1.block_sparse_moe.experts.3.w2"};
    fb_ckpt *c;
    REQUIRE(fb_ckpt_open(od, &c, &err) == 0, "%s", err.msg);
    for (int m = 0; m < 2; m++) {
        CHECK(fb_wsrc_quant_kind(q, mods[m]) == FB_WQ_MODELOPT, "%s: kind modelopt", mods[m]);
        char n[300];
        snprintf(n, sizeof n, "%s.weight", mods[m]);
        int nd;
        int64_t sh[FB_MAX_DIMS];
        REQUIRE(q->shape(q, n, &nd, sh) && nd == 2, "%s: logical shape", n);
        size_t R = (size_t)sh[0], C = (size_t)sh[1];
        float *got = malloc(R * C * 4), *want = malloc(R * C * 4);
        CHECK(q->load(q, n, 0, (int64_t)R, got, &err) == 0, "%s: load: %s", n, err.msg);
        void *pk = NULL, *sc = NULL;
        float s2 = 0;
        char b[300];
        snprintf(b, sizeof b, "%s.weight_scale", mods[m]);
        const fb_ckpt_tensor *ts = fb_ckpt_find(c, b), *tp = fb_ckpt_find(c, n);
        snprintf(b, sizeof b, "%s.weight_scale_2", mods[m]);
        const fb_ckpt_tensor *t2 = fb_ckpt_find(c, b);
        REQUIRE(tp && ts && t2 && t2->t->ndim == 0, "%s: weight, weight_scale, 0-d weight_scale_2", mods[m]);
        REQUIRE(fb_st_read_all(fb_ckpt_file(c, tp), tp->t, &pk, &err) == 0 &&
                    fb_st_read_all(fb_ckpt_file(c, ts), ts->t, &sc, &err) == 0 &&
                    fb_st_read(fb_ckpt_file(c, t2), t2->t, 0, &s2, 4, &err) == 0, "%s", err.msg);
        fb_modelopt_dequant_rows(pk, sc, R, C, s2, want);
        CHECK(!memcmp(got, want, R * C * 4), "%s: rows equal the format's dequantization", n);
        free(pk);
        free(sc);
        free(got);
        free(want);
    }
    fb_ckpt_close(c);
    fb_wsrc_close(q);
}

// Kernel edges against modelopt's formulas written out: a zero group takes block scale 1.0
// (not compressed-tensors' 0.125), scales clamp at 2^-9, ties round to even, -0.1 keeps its
// sign bit, the scalar is amax/2688.
static void kernel_edges(void) {
    float w[32] = {0};
    w[16] = 6.0f, w[17] = -0.1f, w[18] = 0.75f, w[19] = 1.25f;  // group 1: amax 6, block scale 448, t = 1
    float amax = 6.0f, s2 = fb_modelopt_weight_scale2(&amax, 1);
    CHECK(s2 == 6.0f / 2688.0f, "weight_scale_2 = amax / 2688 (%g)", (double)s2);
    uint8_t pk[16], sc[2];
    fb_modelopt_quantize_rows(w, 1, 32, s2, pk, sc);
    CHECK(sc[0] == fb_f32_to_e4m3(1.0f), "zero group: block scale 1.0 (0x%02X)", sc[0]);
    CHECK(sc[1] == fb_f32_to_e4m3(448.0f), "amax group: block scale 448 (0x%02X)", sc[1]);
    CHECK(pk[0] == 0 && pk[8] == 0x87 && pk[9] == 0x22, "codes: 6 -> 7, -0.1 -> 8 (-0), ties 0.75 -> 1.0, 1.25 -> 1.0, "
          "zeros 0 (%02X %02X %02X)", pk[0], pk[8], pk[9]);
    float tiny[16] = {1e-30f};
    float a2 = 1.0f, s2b = fb_modelopt_weight_scale2(&a2, 1);
    fb_modelopt_quantize_rows(tiny, 1, 16, s2b, pk, sc);
    CHECK(fb_e4m3_to_f32(sc[0]) == 0x1p-9f, "a block scale under 2^-9 is clamped to 2^-9 (%g)", (double)fb_e4m3_to_f32(sc[0]));
    float z[2] = {0, 0};
    CHECK(fb_modelopt_weight_scale2(z, 2) == 0, "an all-zero set has no scale (0: refused by the writer)");
    CHECK(fb_modelopt_input_scale(-2688.0f) == 1.0f, "input_scale = |amax| / 2688");
}


// Copies cli_dir/from to cli_dir/to and removes `entry` from both ignore lists (config.json's
// quantization_config.ignore and hf_quant_config.json's exclude_modules).
static void copy_without_exclude(const char *from, const char *to, const char *entry) {
    REQUIRE(cli_run("rm -rf %s/%s && cp -r %s/%s %s/%s", cli_dir, to, cli_dir, from, cli_dir, to) == 0, "copy %s", from);
    const char *files[2] = {"config.json", "hf_quant_config.json"}, *keys[2][2] = {{"quantization_config", "ignore"},
                                                                                     {"quantization", "exclude_modules"}};
    for (int f = 0; f < 2; f++) {
        char p[600];
        snprintf(p, sizeof p, "%s/%s/%s", cli_dir, to, files[f]);
        json_t *j = json_load_file(p, 0, NULL);
        REQUIRE(j, "%s", p);
        json_t *a = json_object_get(json_object_get(j, keys[f][0]), keys[f][1]);
        size_t i;
        json_t *x;
        int removed = 0;
        json_array_foreach(a, i, x)
            if (!removed && !strcmp(json_string_value(x), entry)) {
                json_array_remove(a, i);
                removed = 1;
                break;
            }
        REQUIRE(removed, "%s lists %s", p, entry);
        REQUIRE(json_dump_file(j, p, JSON_INDENT(2)) == 0, "write %s", p);
        json_decref(j);
    }
}

// Overwrites the 4-byte F32 tensor `name` of checkpoint cli_dir/dir with x.
static void poke_f32(const char *dir, const char *name, float x) {
    char d[400];
    snprintf(d, sizeof d, "%s/%s", cli_dir, dir);
    fb_ckpt *c;
    fb_err err;
    REQUIRE(fb_ckpt_open(d, &c, &err) == 0, "%s", err.msg);
    const fb_ckpt_tensor *t = fb_ckpt_find(c, name);
    REQUIRE(t && t->t->nbytes == 4, "%s: F32 scalar %s", d, name);
    FILE *f = fopen(fb_ckpt_file(c, t)->path, "r+b");
    REQUIRE(f && fseek(f, (long)t->t->offset, SEEK_SET) == 0 && fwrite(&x, 4, 1, f) == 1, "poke %s", name);
    fclose(f);
    fb_ckpt_close(c);
}

// The validator on ModelOpt outputs: vLLM's modelopt loader rules (spec/loaders-vllm-transformers.md §3).
static void validator_rules(void) {
    // W4A4 (quant_algo NVFP4): clean; weight-only W4A16_NVFP4: loadable, with the vLLM-version warning
    CHECK(cli_run("%s/validate-ignore-list %s/nvfp4", cli_bin, cli_dir) == 0 && cli_log_has("0 errors, 0 warnings"),
          "the W4A4 ModelOpt output validates without findings");
    CHECK(cli_run("%s/validate-ignore-list %s/nvfp4a16", cli_bin, cli_dir) == 0 && cli_log_has("[mo.w4a16]") &&
              cli_log_has("0 errors, 1 warning"), "W4A16_NVFP4: loadable, warned that vLLM needs PR #41769 / #42566");
    // lm_head kept bf16 but not excluded
    copy_without_exclude("nvfp4", "v-lm", "lm_head");
    CHECK(cli_run("%s/validate-ignore-list %s/v-lm", cli_bin, cli_dir) == 0 && cli_log_has("[mo.lm-head]"),
          "lm_head missing from the exclude list is reported");
    // a router gate missing from exclude_modules: vLLM builds the MiniMax-M2 gate with quant_config=None, so still loadable
    copy_without_exclude("nvfp4", "v-gate", "model.layers.0.block_sparse_moe.gate");
    CHECK(cli_run("%s/validate-ignore-list %s/v-gate", cli_bin, cli_dir) == 0, "a router gate not excluded still loads");
    // w1 and w3 of an expert with different weight_scale_2: vLLM keeps one (silently wrong)
    REQUIRE(cli_run("rm -rf %s/v-w13 && cp -r %s/nvfp4 %s/v-w13", cli_dir, cli_dir, cli_dir) == 0, "copy");
    poke_f32("v-w13", "model.layers.1.block_sparse_moe.experts.5.w3.weight_scale_2", 0.5f);
    CHECK(cli_run("%s/validate-ignore-list %s/v-w13", cli_bin, cli_dir) == 1 && cli_log_has("w13-global-scale"),
          "unequal w1/w3 weight_scale_2 is refused");
    // q/k/v with different weight_scale_2
    REQUIRE(cli_run("rm -rf %s/v-qkv && cp -r %s/nvfp4 %s/v-qkv", cli_dir, cli_dir, cli_dir) == 0, "copy");
    poke_f32("v-qkv", "model.layers.2.self_attn.k_proj.weight_scale_2", 0.5f);
    CHECK(cli_run("%s/validate-ignore-list %s/v-qkv", cli_bin, cli_dir) == 1 && cli_log_has("qkv-global-scale"),
          "unequal q/k/v weight_scale_2 is refused");
    // an input_scale of 0 (an uncalibrated expert)
    REQUIRE(cli_run("rm -rf %s/v-is && cp -r %s/nvfp4 %s/v-is", cli_dir, cli_dir, cli_dir) == 0, "copy");
    poke_f32("v-is", "model.layers.0.block_sparse_moe.experts.1.w2.input_scale", 0.0f);
    CHECK(cli_run("%s/validate-ignore-list %s/v-is", cli_bin, cli_dir) == 1 && cli_log_has("input_scale is 0"),
          "an input_scale of 0 is refused");
    // the ModelOpt config only in hf_quant_config.json (config.json without quantization_config): vLLM's legacy path
    REQUIRE(cli_run("rm -rf %s/v-legacy && cp -r %s/nvfp4 %s/v-legacy", cli_dir, cli_dir, cli_dir) == 0, "copy");
    char p[600];
    snprintf(p, sizeof p, "%s/v-legacy/config.json", cli_dir);
    json_t *j = json_load_file(p, 0, NULL);
    REQUIRE(j && json_object_del(j, "quantization_config") == 0 && json_dump_file(j, p, JSON_INDENT(2)) == 0, "%s", p);
    json_decref(j);
    CHECK(cli_run("%s/validate-ignore-list %s/v-legacy", cli_bin, cli_dir) == 0 && cli_log_has("hf_quant_config.json"),
          "hf_quant_config.json alone (legacy form) is read and accepted");
}

// ref-runner --json on cli_dir/q against the embedded model; the parsed summary (caller decrefs).
static json_t *runner(const char *q, const char *extra) {
    int rc = cli_run("(%s/ref-runner -q -r %s --quantized %s/%s -d " GOLDEN_DIR "/model-quant/calib-ids.jsonl --device cpu "
                     "--json%s > %s/rr.json)", cli_bin, MODEL, cli_dir, q, extra, cli_dir);
    CHECK(rc == 0, "ref-runner on %s: exit %d", q, rc);
    char p[400];
    snprintf(p, sizeof p, "%s/rr.json", cli_dir);
    json_t *j = json_load_file(p, 0, NULL);
    CHECK(j != NULL, "ref-runner --json output of %s parses", q);
    return j;
}

static double jnum(const json_t *j, const char *k) { return json_number_value(json_object_get(j, k)); }

// ref-runner reads ModelOpt outputs through the weight source. The quality is close to the
// compressed-tensors output's but not equal: the two formats round differently (ModelOpt's
// weight_scale_2 = amax/2688 in f32 against compressed-tensors' bf16 2688/amax divisor, so
// about 2% of the packed bytes differ on this model).
static void runner_reads(void) {
    REQUIRE(cli_run("%s/nvfp4-quantize -q --recipe recipes/minimax-nvfp4a16.yaml %s %s/ct16", cli_bin, MODEL, cli_dir) == 0,
            "compressed-tensors NVFP4A16 output");
    json_t *ct = runner("ct16", ""), *mo = runner("nvfp4a16", ""), *mo4 = runner("nvfp4", "");
    if (ct && mo && mo4) {
        CHECK(!strcmp(json_string_value(json_object_get(mo, "format")), "modelopt-nvfp4a16"), "format modelopt-nvfp4a16");
        double a = jnum(ct, "kld_mean"), b = jnum(mo, "kld_mean");
        printf("  ref-runner mean KL: compressed-tensors NVFP4A16 %.6f, ModelOpt W4A16_NVFP4 %.6f; top-1 %.4f / %.4f\n", a, b,
               jnum(ct, "top1"), jnum(mo, "top1"));
        CHECK(b > 0 && fabs(a - b) <= 0.05 * a, "ModelOpt's KL within 5%% of compressed-tensors' (%g vs %g)", b, a);
        CHECK(fabs(jnum(ct, "top1") - jnum(mo, "top1")) <= 0.03, "top-1 within 3 points");
        // W4A4: measured as Blackwell runs it by default, activations fake-quantized with 1/input_scale
        CHECK(json_is_true(json_object_get(mo4, "emulate_w4a4")) && jnum(mo4, "w4a4_blocks_emulated") > 0,
              "a ModelOpt NVFP4 (W4A4) checkpoint is emulated W4A4 by default");
        CHECK(jnum(mo4, "kld_mean") > b, "W4A4 emulation costs more KL than weight-only (%g > %g)", jnum(mo4, "kld_mean"), b);
    }
    json_decref(ct);
    json_decref(mo);
    json_decref(mo4);
}

static uint32_t rng_state = 12345u;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 17, rng_state ^= rng_state << 5;
    return rng_state;
}
static float bf16_of(float x) { return fb_bf16_to_f32(fb_f32_to_bf16(x)); }

// The fast path gives the scalar reference's bytes: random, heavy-tailed, all-zero and
// subnormal-scale groups, exact E2M1 ties (values k/4 * t of each block), negative values
// that round to zero, and every bf16 bit pattern of a wide range.
static void fast_equals_ref(void) {
    size_t R = 96, C = 256, n = R * C;
    float *w = malloc(n * 4);
    uint8_t *p0 = malloc(n / 2), *p1 = malloc(n / 2), *s0 = malloc(n / 16), *s1 = malloc(n / 16);
    int bad = 0;
    for (int kind = 0; kind < 6; kind++) {
        for (size_t i = 0; i < n; i++) {
            float u = (float)(rnd() & 0xFFFFFF) / 16777216.0f - 0.5f;
            switch (kind) {
            case 0: w[i] = u * 0.2f; break;                                         // uniform
            case 1: w[i] = u * u * u * 1e3f; break;                                 // heavy tail
            case 2: w[i] = (i / 16) % 3 == 0 ? 0.0f : u * 1e-6f; break;             // zero and tiny groups
            case 3: w[i] = (float)((int)(rnd() % 33) - 16) * 0.125f; break;         // exact ties after scaling
            case 4: w[i] = (i % 16 == 0) ? 6.0f : (rnd() & 1 ? -1.0f : 1.0f) * 0.01f * (float)(rnd() % 40); break;
            default: w[i] = fb_bits_f32((rnd() & 0x807FFFFFu) | ((rnd() % 40 + 100) << 23)); break;  // wide exponents
            }
            w[i] = bf16_of(w[i]);
        }
        float a = fb_nvfp4_absmax(w, n), s2 = fb_modelopt_weight_scale2(&a, 1);
        fb_modelopt_quantize_rows_ref(w, R, C, s2, p0, s0);
        fb_modelopt_quantize_rows(w, R, C, s2, p1, s1);
        if (memcmp(p0, p1, n / 2) || memcmp(s0, s1, n / 16)) {
            bad++;
            for (size_t i = 0; i < n / 2; i++)
                if (p0[i] != p1[i]) {
                    fprintf(stderr, "    kind %d: packed byte %zu: reference 0x%02X, %s 0x%02X\n", kind, i, p0[i],
                            fb_modelopt_impl(), p1[i]);
                    break;
                }
        }
    }
    CHECK(bad == 0, "ModelOpt fast path (%s) == scalar reference on %d of 6 input kinds", fb_modelopt_impl(), 6 - bad);
    free(w), free(p0), free(p1), free(s0), free(s1);
}

static void refusals(void) {
    CHECK(cli_run("%s/w4a16-quantize -q --recipe recipes/minimax-w4a16.yaml --format modelopt %s %s/bad1", cli_bin, MODEL,
                  cli_dir) == 2, "w4a16-quantize has no --format modelopt (usage error)");
    CHECK(cli_run("%s/nvfp4-quantize -q --recipe recipes/minimax-nvfp4a16.yaml --format modelop %s %s/bad2", cli_bin, MODEL,
                  cli_dir) == 2 && cli_log_has("--format must be compressed-tensors or modelopt"), "unknown --format");
    // an all-zero expert weight: modelopt's export divides 0 by 0; refused by tensor name
    char src[400];
    snprintf(src, sizeof src, "%s/zero-src", cli_dir);
    REQUIRE(cli_run("%s/fp8-dequant -q %s %s", cli_bin, MODEL, src) == 0, "BF16 copy of the model");
    fb_err err;
    fb_ckpt *c;
    REQUIRE(fb_ckpt_open(src, &c, &err) == 0, "%s", err.msg);
    const char *n1 = "model.layers.0.block_sparse_moe.experts.2.w1.weight", *n3 = "model.layers.0.block_sparse_moe.experts.2.w3.weight";
    const fb_ckpt_tensor *t1 = fb_ckpt_find(c, n1), *t3 = fb_ckpt_find(c, n3);
    REQUIRE(t1 && t3, "expert tensors");
    char f1[600], f3[600];
    snprintf(f1, sizeof f1, "%s", fb_ckpt_file(c, t1)->path);
    snprintf(f3, sizeof f3, "%s", fb_ckpt_file(c, t3)->path);
    uint64_t o1 = t1->t->offset, o3 = t3->t->offset, b1 = t1->t->nbytes, b3 = t3->t->nbytes;
    fb_ckpt_close(c);
    CHECK(cli_run("dd if=/dev/zero of=%s bs=1 seek=%llu count=%llu conv=notrunc status=none && "
                  "dd if=/dev/zero of=%s bs=1 seek=%llu count=%llu conv=notrunc status=none",
                  f1, (unsigned long long)o1, (unsigned long long)b1, f3, (unsigned long long)o3, (unsigned long long)b3) == 0,
          "zero the expert's w1 and w3");
    CHECK(cli_run("%s/nvfp4-quantize -q --recipe recipes/minimax-nvfp4a16.yaml --format modelopt %s %s/bad3", cli_bin, src,
                  cli_dir) == 1 && cli_log_has("experts.2.w1.weight: the weights of its fused set are all zero"),
          "an all-zero fused set is refused, naming the tensor");
    CHECK(!cli_exists("%s/bad3", cli_dir) && !cli_exists("%s/bad3.partial", cli_dir), "nothing left behind");
    // compressed-tensors handles the same source (its scale of an all-zero set is defined: 1.0)
    CHECK(cli_run("%s/nvfp4-quantize -q --recipe recipes/minimax-nvfp4a16.yaml %s %s/ok3", cli_bin, src, cli_dir) == 0,
          "compressed-tensors output of the same source");
}

int main(void) {
    const char *b = getenv("BUILD");
    snprintf(cli_bin, sizeof cli_bin, "%s/bin", b ? b : "build");
    snprintf(cli_dir, sizeof cli_dir, "/tmp/fb-test-modelopt-XXXXXX");
    REQUIRE(mkdtemp(cli_dir), "mkdtemp");
    fb_formats_init();
    REQUIRE(cli_exists("%s/model.safetensors.index.json", MODEL), "the embedded model %s", MODEL);
    kernel_edges();
    fast_equals_ref();
    golden_case("nvfp4a16.json", "nvfp4a16");
    golden_case("nvfp4.json", "nvfp4");
    golden_case("experts-only.json", "experts-only");
    read_back("nvfp4a16");
    validator_rules();
    runner_reads();
    refusals();
    if (getenv("FB_KEEP")) printf("outputs kept in %s\n", cli_dir);
    else cli_run("rm -rf %s", cli_dir);
    TEST_MAIN_END();
}
