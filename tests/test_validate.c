// test_validate.c: the validate-ignore-list rules on a corpus of broken checkpoints built at
// test time from correct ones (tiny MiniMax-M2 shapes: hidden 256, 4 heads x 64, 2 kv heads,
// 8 experts of 256, 3 layers). One case per rule: each asserts the rule fires with its
// message/consequence and the tool's exit status; the correct checkpoints must pass.
//
// The safetensors files are written by a minimal writer below (independent of fourbit's
// writer, so a writer bug cannot hide a validator bug). Values: F32 tensors are filled with a
// per-tensor constant (global scales 2688, input scales 100, others 0), everything else zero.
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test.h"

#include "common/fb.h"
#include "quant/recipe.h"
#include "io/safetensors.h"
#include "quant/formats.h"
#include "quant/validate.h"

// ---- a tiny model description ---------------------------------------------------------------

enum { H = 256, NH = 4, NKV = 2, HD = 64, IE = 256, NE = 8, NL = 3, VOC = 512 };

typedef struct tt {
    char name[160];
    fb_dtype dt;
    int nd;
    int64_t sh[4];
    float fill;
} tt;

typedef struct model {
    tt *t;
    size_t n, cap;
    json_t *config;
    json_t *hfq;  // hf_quant_config.json or NULL
} model;

static tt *add(model *m, const char *name, fb_dtype dt, int nd, int64_t a, int64_t b) {
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 256;
        m->t = realloc(m->t, m->cap * sizeof *m->t);
    }
    tt *t = &m->t[m->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dt = dt;
    t->nd = nd;
    t->sh[0] = a;
    t->sh[1] = b;
    return t;
}

static tt *find(model *m, const char *name) {
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->t[i].name, name)) return &m->t[i];
    return NULL;
}

static int del(model *m, const char *name) {
    for (size_t i = 0; i < m->n; i++)
        if (!strcmp(m->t[i].name, name)) {
            memmove(&m->t[i], &m->t[i + 1], (m->n - i - 1) * sizeof *m->t);
            m->n--;
            return 1;
        }
    return 0;
}

static void free_model(model *m) {
    free(m->t);
    json_decref(m->config);
    json_decref(m->hfq);
    memset(m, 0, sizeof *m);
}

static json_t *base_config(void) {
    json_error_t je;
    json_t *c = json_loads(
        "{\"architectures\": [\"MiniMaxM2ForCausalLM\"], \"model_type\": \"minimax_m2\","
        " \"hidden_size\": 256, \"intermediate_size\": 256, \"num_hidden_layers\": 3,"
        " \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 64,"
        " \"num_local_experts\": 8, \"num_experts_per_tok\": 2, \"vocab_size\": 512,"
        " \"rotary_dim\": 32, \"partial_rotary_factor\": 0.5, \"scoring_func\": \"sigmoid\","
        " \"use_routing_bias\": true, \"use_qk_norm\": true, \"rms_norm_eps\": 1e-6,"
        " \"rope_theta\": 5000000, \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\"}",
        0, &je);
    FB_ASSERT(c);
    return c;
}

typedef enum { Q_BF16, Q_NVFP4, Q_NVFP4A16, Q_W4A16, Q_FP8, Q_MODELOPT, Q_GPTQ } qkind;

// Adds the tensors of one Linear [O, I] in format q.
static void linear(model *m, const char *mod, int64_t O, int64_t I, qkind q) {
    char nm[200];
#define N(suf) (snprintf(nm, sizeof nm, "%s.%s", mod, suf), nm)
    switch (q) {
    case Q_BF16: add(m, N("weight"), FB_BF16, 2, O, I); break;
    case Q_NVFP4: case Q_NVFP4A16:
        add(m, N("weight_packed"), FB_U8, 2, O, I / 2);
        add(m, N("weight_scale"), FB_F8_E4M3, 2, O, I / 16);
        add(m, N("weight_global_scale"), FB_F32, 1, 1, 0)->fill = 2688.0f;
        if (q == Q_NVFP4) add(m, N("input_global_scale"), FB_F32, 1, 1, 0)->fill = 100.0f;
        break;
    case Q_W4A16:
        add(m, N("weight_packed"), FB_I32, 2, O, I / 8);
        add(m, N("weight_scale"), FB_BF16, 2, O, I / 128);
        add(m, N("weight_shape"), FB_I64, 1, 2, 0);
        break;
    case Q_FP8:
        add(m, N("weight"), FB_F8_E4M3, 2, O, I);
        add(m, N("weight_scale_inv"), FB_F32, 2, (O + 127) / 128, (I + 127) / 128)->fill = 0.01f;
        break;
    case Q_MODELOPT:
        add(m, N("weight"), FB_U8, 2, O, I / 2);
        add(m, N("weight_scale"), FB_F8_E4M3, 2, O, I / 16);
        add(m, N("weight_scale_2"), FB_F32, 0, 0, 0)->fill = 0.001f;
        add(m, N("input_scale"), FB_F32, 0, 0, 0)->fill = 0.01f;
        break;
    case Q_GPTQ:
        add(m, N("qweight"), FB_I32, 2, I / 8, O);
        add(m, N("qzeros"), FB_I32, 2, I / 128, O / 8);
        add(m, N("scales"), FB_F16, 2, I / 128, O);
        break;
    }
#undef N
}

static const char *NVFP4_ARGS =
    "{\"actorder\": null, \"block_structure\": null, \"dynamic\": %s, \"group_size\": 16, \"num_bits\": 4,"
    " \"observer\": \"%s\", \"observer_kwargs\": {}, \"scale_dtype\": \"torch.float8_e4m3fn\","
    " \"strategy\": \"tensor_group\", \"symmetric\": true, \"type\": \"float\", \"zp_dtype\": null}";

// The quantization_config a correct writer produces (spec/compressed-tensors.md §7.1/§7.2),
// with the oneshot ignore list (every gate by name, then lm_head).
static json_t *ct_config(qkind q) {
    char w[600], in[600];
    snprintf(w, sizeof w, NVFP4_ARGS, "false", "memoryless_minmax");
    snprintf(in, sizeof in, NVFP4_ARGS, "\"local\"", "static_minmax");
    const char *fmt = q == Q_W4A16 ? "pack-quantized" : "nvfp4-pack-quantized";
    char buf[4096];
    if (q == Q_W4A16)
        snprintf(buf, sizeof buf,
                 "{\"group_0\": {\"format\": \"pack-quantized\", \"input_activations\": null, \"output_activations\": null,"
                 " \"targets\": [\"Linear\"], \"weights\": {\"actorder\": null, \"block_structure\": null, \"dynamic\": false,"
                 " \"group_size\": 128, \"num_bits\": 4, \"observer\": \"memoryless_minmax\", \"observer_kwargs\": {},"
                 " \"scale_dtype\": null, \"strategy\": \"group\", \"symmetric\": true, \"type\": \"int\", \"zp_dtype\": null}}}");
    else
        snprintf(buf, sizeof buf,
                 "{\"group_0\": {\"format\": \"%s\", \"input_activations\": %s, \"output_activations\": null,"
                 " \"targets\": [\"Linear\"], \"weights\": %s}}",
                 fmt, q == Q_NVFP4 ? in : "null", w);
    json_error_t je;
    json_t *groups = json_loads(buf, 0, &je);
    FB_ASSERT(groups);
    json_t *qc = json_object();
    json_object_set_new(qc, "config_groups", groups);
    json_object_set_new(qc, "format", json_string(fmt));
    json_object_set_new(qc, "global_compression_ratio", json_null());
    json_t *ign = json_array();
    for (int L = 0; L < NL; L++) {
        char nm[100];
        snprintf(nm, sizeof nm, "model.layers.%d.block_sparse_moe.gate", L);
        json_array_append_new(ign, json_string(nm));
    }
    json_array_append_new(ign, json_string("lm_head"));
    json_object_set_new(qc, "ignore", ign);
    json_object_set_new(qc, "kv_cache_scheme", json_null());
    json_object_set_new(qc, "quant_method", json_string("compressed-tensors"));
    json_object_set_new(qc, "quantization_status", json_string("compressed"));
    json_object_set_new(qc, "sparsity_config", json_object());
    json_object_set_new(qc, "transform_config", json_object());
    json_object_set_new(qc, "version", json_string("0.18.0"));
    return qc;
}

// A complete checkpoint in format q (attention and experts quantized, router/norms/embeddings
// unquantized), with the matching config.
static void make_model(model *m, qkind q) {
    memset(m, 0, sizeof *m);
    m->config = base_config();
    add(m, "model.embed_tokens.weight", FB_BF16, 2, VOC, H);
    add(m, "model.norm.weight", FB_BF16, 1, H, 0);
    add(m, "lm_head.weight", FB_BF16, 2, VOC, H);
    char nm[200];
    for (int L = 0; L < NL; L++) {
#define P(fmt, ...) (snprintf(nm, sizeof nm, "model.layers.%d." fmt, L, ##__VA_ARGS__), nm)
        add(m, P("input_layernorm.weight"), FB_BF16, 1, H, 0);
        add(m, P("post_attention_layernorm.weight"), FB_BF16, 1, H, 0);
        linear(m, P("self_attn.q_proj"), NH * HD, H, q);
        linear(m, P("self_attn.k_proj"), NKV * HD, H, q);
        linear(m, P("self_attn.v_proj"), NKV * HD, H, q);
        linear(m, P("self_attn.o_proj"), H, NH * HD, q);
        add(m, P("self_attn.q_norm.weight"), FB_BF16, 1, NH * HD, 0);
        add(m, P("self_attn.k_norm.weight"), FB_BF16, 1, NKV * HD, 0);
        add(m, P("block_sparse_moe.gate.weight"), FB_F32, 2, NE, H);
        add(m, P("block_sparse_moe.e_score_correction_bias"), FB_F32, 1, NE, 0);
        for (int E = 0; E < NE; E++) {
            linear(m, P("block_sparse_moe.experts.%d.w1", E), IE, H, q);
            linear(m, P("block_sparse_moe.experts.%d.w2", E), H, IE, q);
            linear(m, P("block_sparse_moe.experts.%d.w3", E), IE, H, q);
        }
#undef P
    }
    json_t *qc = NULL;
    switch (q) {
    case Q_BF16: break;
    case Q_NVFP4: case Q_NVFP4A16: case Q_W4A16: qc = ct_config(q); break;
    case Q_FP8:
        qc = json_loads("{\"quant_method\": \"fp8\", \"fmt\": \"float8_e4m3fn\", \"activation_scheme\": \"dynamic\","
                        " \"weight_block_size\": [128, 128], \"modules_to_not_convert\": [\"gate\", \"e_score_correction_bias\", \"lm_head\"]}",
                        0, NULL);
        break;
    case Q_MODELOPT: {
        m->hfq = json_loads("{\"producer\": {\"name\": \"modelopt\", \"version\": \"0.29.0\"}, \"quantization\": {\"quant_algo\": \"NVFP4\","
                            " \"kv_cache_quant_algo\": null, \"group_size\": 16, \"exclude_modules\": [\"lm_head\"]}}", 0, NULL);
        json_t *ex = json_object_get(json_object_get(m->hfq, "quantization"), "exclude_modules");
        for (int L = 0; L < NL; L++) {
            snprintf(nm, sizeof nm, "model.layers.%d.block_sparse_moe.gate", L);
            json_array_append_new(ex, json_string(nm));
        }
        break;
    }
    case Q_GPTQ: {
        qc = json_loads("{\"quant_method\": \"auto-round\", \"packing_format\": \"auto_round:auto_gptq\", \"bits\": 4,"
                        " \"group_size\": 128, \"sym\": true, \"data_type\": \"int\", \"iters\": 0, \"model_free\": true,"
                        " \"autoround_version\": \"0.9.0\", \"block_name_to_quantize\": \"model.layers\", \"extra_config\": {}}",
                        0, NULL);
        json_t *ex = json_object_get(qc, "extra_config");
        for (int L = 0; L < NL; L++) {
            snprintf(nm, sizeof nm, "model.layers.%d.block_sparse_moe.gate", L);
            json_object_set_new(ex, nm, json_pack("{s:i, s:s}", "bits", 16, "data_type", "float"));
        }
        break;
    }
    }
    if (qc) json_object_set_new(m->config, "quantization_config", qc);
}

// ---- the writer -----------------------------------------------------------------------------

static uint64_t tsize(const tt *t) {
    uint64_t n = 1;
    for (int d = 0; d < t->nd; d++) n *= (uint64_t)t->sh[d];
    return n * (uint64_t)fb_dtypes[t->dt].bits / 8;
}

// Writes config.json (+ hf_quant_config.json) and one model.safetensors into a fresh dir.
static void write_ckpt(const char *dir, const model *m) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
    FB_ASSERT(system(cmd) == 0);
    char p[600];
    snprintf(p, sizeof p, "%s/config.json", dir);
    FB_ASSERT(json_dump_file(m->config, p, JSON_INDENT(2) | JSON_SORT_KEYS) == 0);
    if (m->hfq) {
        snprintf(p, sizeof p, "%s/hf_quant_config.json", dir);
        FB_ASSERT(json_dump_file(m->hfq, p, JSON_INDENT(2)) == 0);
    }
    json_t *hdr = json_object();
    json_object_set_new(hdr, "__metadata__", json_pack("{s:s}", "format", "pt"));
    uint64_t off = 0;
    for (size_t i = 0; i < m->n; i++) {
        const tt *t = &m->t[i];
        json_t *shape = json_array();
        for (int d = 0; d < t->nd; d++) json_array_append_new(shape, json_integer(t->sh[d]));
        uint64_t sz = tsize(t);
        json_object_set_new(hdr, t->name, json_pack("{s:s, s:o, s:[I,I]}", "dtype", fb_dtypes[t->dt].name, "shape", shape,
                                                     "data_offsets", (json_int_t)off, (json_int_t)(off + sz)));
        off += sz;
    }
    char *js = json_dumps(hdr, JSON_COMPACT);
    json_decref(hdr);
    size_t hl = strlen(js);
    size_t pad = (8 - hl % 8) % 8;
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    FILE *fp = fopen(p, "wb");
    FB_ASSERT(fp);
    uint64_t n = hl + pad;
    fwrite(&n, 8, 1, fp);
    fwrite(js, 1, hl, fp);
    for (size_t i = 0; i < pad; i++) fputc(' ', fp);
    free(js);
    for (size_t i = 0; i < m->n; i++) {
        const tt *t = &m->t[i];
        uint64_t sz = tsize(t);
        unsigned char *buf = calloc(1, sz ? sz : 1);
        if (t->dt == FB_F32)
            for (uint64_t k = 0; k < sz / 4; k++) memcpy(buf + 4 * k, &t->fill, 4);
        if (t->dt == FB_BF16) {
            uint16_t b = fb_f32_to_bf16(t->fill);
            for (uint64_t k = 0; k < sz / 2; k++) memcpy(buf + 2 * k, &b, 2);
        }
        fwrite(buf, 1, sz, fp);
        free(buf);
    }
    FB_ASSERT(fclose(fp) == 0);
}

// ---- running a case -------------------------------------------------------------------------

static char g_tmp[256];
static const char *g_bin;
static int g_case;

typedef struct result {
    fb_findings f;
    int tool_rc;
    char dir[300];
} result;

// Writes the model, validates it through the library and through the tool.
static void run(model *m, result *r, const char *flags) {
    snprintf(r->dir, sizeof r->dir, "%s/case%02d", g_tmp, g_case++);
    write_ckpt(r->dir, m);
    fb_findings_init(&r->f);
    fb_validate_opts o = {0};
    o.deep = flags && strstr(flags, "--deep") != NULL;
    fb_err e;
    int rc = fb_validate_dir(r->dir, &o, &r->f, &e);
    CHECK(rc == 0, "%s: validation pass failed: %s", r->dir, e.msg);
    char cmd[800];
    snprintf(cmd, sizeof cmd, "%s --quiet %s '%s'", g_bin, flags ? flags : "", r->dir);
    int st = system(cmd);
    r->tool_rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void dump(const result *r) {
    fb_findings_print(&r->f, r->dir, 0, stderr);
}

// The case passes when `rule` fired with severity sev (if rule != NULL), its message or
// consequence contains `text`, and the tool exited with want_rc.
static void expect(const char *what, model *m, const char *flags, const char *rule, const char *text, int want_rc) {
    result r;
    int fails0 = t_fail_;
    run(m, &r, flags);
    if (rule) {
        const fb_finding *x = fb_findings_get(&r.f, rule);
        CHECK(x != NULL, "%s: rule %s did not fire", what, rule);
        if (x && text)
            CHECK(strstr(x->message, text) || strstr(x->consequence, text) || strstr(x->where, text),
                  "%s: rule %s: \"%s\" not in message \"%s\" / consequence \"%s\"", what, rule, text, x->message, x->consequence);
    } else {
        CHECK(r.f.n_errors == 0 && r.f.n_warnings == 0, "%s: expected a clean checkpoint, got %zu errors, %zu warnings", what,
              r.f.n_errors, r.f.n_warnings);
    }
    CHECK(r.tool_rc == want_rc, "%s: tool exit %d, want %d", what, r.tool_rc, want_rc);
    if (t_fail_ > fails0) dump(&r);
    fb_findings_free(&r.f);
    free_model(m);
}

static void set_fill(model *m, const char *name, float v) {
    tt *t = find(m, name);
    FB_ASSERT(t);
    t->fill = v;
}

static json_t *qcfg(model *m) { return json_object_get(m->config, "quantization_config"); }

static void set_ignore(model *m, const char *const *entries) {
    json_t *a = json_array();
    for (; *entries; entries++) json_array_append_new(a, json_string(*entries));
    json_object_set_new(qcfg(m), "ignore", a);
}

// Quantizes the router gate of every layer (what the published NVFP4 MiniMax did).
static void quantize_gates(model *m) {
    char nm[200];
    for (int L = 0; L < NL; L++) {
        snprintf(nm, sizeof nm, "model.layers.%d.block_sparse_moe.gate.weight", L);
        FB_ASSERT(del(m, nm));
        snprintf(nm, sizeof nm, "model.layers.%d.block_sparse_moe.gate", L);
        linear(m, nm, NE, H, Q_NVFP4);
    }
}

int main(void) {
    const char *bdir = getenv("BUILD");
    static char bin[300];
    snprintf(bin, sizeof bin, "%s/bin/validate-ignore-list", bdir ? bdir : "build");
    g_bin = bin;
    REQUIRE(access(g_bin, X_OK) == 0, "%s not built", g_bin);
    snprintf(g_tmp, sizeof g_tmp, "%s/fourbit-validate-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    REQUIRE(mkdtemp(g_tmp) != NULL, "mkdtemp");
    model m;

    // --- correct checkpoints pass ---
    make_model(&m, Q_BF16); expect("bf16", &m, NULL, NULL, NULL, 0);
    make_model(&m, Q_NVFP4); expect("nvfp4 w4a4", &m, NULL, NULL, NULL, 0);
    make_model(&m, Q_NVFP4A16); expect("nvfp4a16", &m, NULL, NULL, NULL, 0);
    make_model(&m, Q_W4A16); expect("w4a16", &m, NULL, NULL, NULL, 0);
    make_model(&m, Q_FP8); expect("fp8 source", &m, NULL, NULL, NULL, 0);
    make_model(&m, Q_MODELOPT); expect("modelopt legacy", &m, NULL, NULL, NULL, 0);
    make_model(&m, Q_GPTQ); expect("autoround", &m, NULL, NULL, NULL, 0);
    make_model(&m, Q_MODELOPT);
    {
        // ModelOpt >= 0.31: quant_method "modelopt" in config.json (and the legacy file beside it)
        json_t *q = json_pack("{s:s, s:s, s:i, s:n, s:O}", "quant_method", "modelopt", "quant_algo", "NVFP4", "group_size", 16,
                              "kv_cache_quant_algo", "ignore",
                              json_object_get(json_object_get(m.hfq, "quantization"), "exclude_modules"));
        json_object_set_new(m.config, "quantization_config", q);
    }
    expect("modelopt in config.json", &m, NULL, NULL, NULL, 0);
    make_model(&m, Q_MODELOPT);
    json_object_set_new(json_object_get(m.hfq, "quantization"), "kv_cache_quant_algo", json_string("FP8"));
    add(&m, "model.layers.0.self_attn.k_proj.k_scale", FB_F32, 0, 0, 0)->fill = 1.0f;
    add(&m, "model.layers.0.self_attn.v_proj.v_scale", FB_F32, 0, 0, 0)->fill = 1.0f;
    expect("modelopt FP8 kv scales (warning)", &m, NULL, "tensor.kv-scale", "PR #37214", 0);
    make_model(&m, Q_MODELOPT);
    set_fill(&m, "model.layers.1.block_sparse_moe.experts.0.w1.weight_scale_2", 0.002f);
    expect("modelopt w1/w3 weight_scale_2", &m, NULL, "value.w13-global-scale", "weight_scale_2 of w1 and w3 differ", 1);
    make_model(&m, Q_MODELOPT);
    json_object_del(json_object_get(m.hfq, "quantization"), "kv_cache_quant_algo");
    expect("modelopt legacy without kv_cache_quant_algo", &m, NULL, "quant.unknown-method", "kv_cache_quant_algo", 1);
    make_model(&m, Q_MODELOPT);
    json_object_set_new(json_object_get(m.hfq, "quantization"), "quant_algo", json_string("W4A16_NVFP4"));
    for (size_t i = 0; i < m.n; i++)
        if (strstr(m.t[i].name, ".input_scale")) m.t[i--] = m.t[--m.n];
    expect("modelopt W4A16_NVFP4 (warning: vLLM PR #41769/#42566)", &m, NULL, "mo.w4a16", "W4A16_NVFP4", 0);
    {
        // transformers 5 / llm-compressor 0.14 expert names in a MiniMax-M2 checkpoint: KeyError, and the fix says the rename
        make_model(&m, Q_BF16);
        static const char *const from[3] = {".w1.", ".w3.", ".w2."}, *const to[3] = {".gate_proj.", ".up_proj.", ".down_proj."};
        for (size_t i = 0; i < m.n; i++)
            for (int k = 0; k < 3; k++) {
                char *at = strstr(m.t[i].name, from[k]);
                if (!at || !strstr(m.t[i].name, ".experts.")) continue;
                char rest[160];
                snprintf(rest, sizeof rest, "%s", at + 4);
                snprintf(at, sizeof m.t[i].name - (size_t)(at - m.t[i].name), "%s%s", to[k], rest);
            }
        result r;
        run(&m, &r, NULL);
        const fb_finding *x = fb_findings_get(&r.f, "tensor.keyerror");
        CHECK(x && strstr(x->where, "experts") && strstr(x->fix, "rename gate_proj -> w1, up_proj -> w3, down_proj -> w2"),
              "gate_proj/up_proj/down_proj experts: KeyError with the rename as the fix (%s)", x ? x->fix : "no finding");
        CHECK(r.tool_rc == 1, "gate_proj experts: exit 1");
        fb_findings_free(&r.f);
        free_model(&m);
    }
    make_model(&m, Q_NVFP4); expect("nvfp4 deep", &m, "--deep", NULL, NULL, 0);

    // --- the quantized-router case: ignore ["lm_head"] only, gates quantized ---
    make_model(&m, Q_NVFP4);
    set_ignore(&m, (const char *[]){"lm_head", NULL});
    quantize_gates(&m);
    expect("quantized router", &m, NULL, "router.quantized", "KeyError: 'layers.0.block_sparse_moe.gate.weight_", 1);
    make_model(&m, Q_NVFP4);
    set_ignore(&m, (const char *[]){"lm_head", NULL});
    quantize_gates(&m);
    expect("quantized router: gate not ignored", &m, NULL, "ignore.gate", "block_sparse_moe.gate", 1);
    make_model(&m, Q_NVFP4);
    set_ignore(&m, (const char *[]){"lm_head", NULL});
    quantize_gates(&m);
    expect("quantized router: gate.weight missing", &m, NULL, "tensor.missing", "block_sparse_moe.gate.weight", 1);

    // --- scale ties ---
    make_model(&m, Q_NVFP4);
    set_fill(&m, "model.layers.1.block_sparse_moe.experts.5.w3.weight_global_scale", 2000.0f);
    expect("unequal w1/w3 global scales", &m, NULL, "value.w13-global-scale", "w1 and w3 differ: 2688 vs 2000", 1);
    make_model(&m, Q_NVFP4);
    set_fill(&m, "model.layers.2.self_attn.k_proj.weight_global_scale", 1344.0f);
    expect("unequal q/k/v global scales", &m, NULL, "value.qkv-global-scale", "differs across q/k/v", 1);
    make_model(&m, Q_NVFP4);
    set_fill(&m, "model.layers.0.self_attn.v_proj.input_global_scale", 50.0f);
    expect("unequal q/k/v input scales", &m, NULL, "value.qkv-input-scale", "differs across q/k/v", 1);
    make_model(&m, Q_NVFP4);
    set_fill(&m, "model.layers.0.block_sparse_moe.experts.2.w2.weight_global_scale", INFINITY);
    expect("infinite global scale", &m, NULL, "value.global-scale", "must be finite and > 0", 1);
    make_model(&m, Q_NVFP4);
    set_fill(&m, "model.layers.0.block_sparse_moe.experts.2.w2.input_global_scale", 0.0f);
    expect("zero input scale", &m, NULL, "value.global-scale", "amax of 0", 1);
    make_model(&m, Q_NVFP4);
    set_fill(&m, "model.layers.0.block_sparse_moe.experts.2.w2.input_global_scale", 1.0f);
    expect("placeholder input scale (warning)", &m, NULL, "value.uncalibrated", "exactly 1.0", 0);
    make_model(&m, Q_NVFP4);
    set_fill(&m, "model.layers.0.block_sparse_moe.experts.2.w2.input_global_scale", 1.0f);
    expect("placeholder input scale --strict", &m, "--strict", "value.uncalibrated", NULL, 1);

    // --- tensor sets ---
    make_model(&m, Q_NVFP4);
    FB_ASSERT(del(&m, "model.layers.1.block_sparse_moe.experts.3.w2.weight_global_scale"));
    expect("missing weight_global_scale", &m, NULL, "tensor.missing", "weight_global_scale missing", 1);
    make_model(&m, Q_NVFP4A16);
    add(&m, "model.layers.0.self_attn.q_proj.input_global_scale", FB_F32, 1, 1, 0)->fill = 100.0f;
    expect("NVFP4A16 with input_global_scale", &m, NULL, "tensor.keyerror",
           "KeyError: 'layers.0.self_attn.qkv_proj.input_global_scale'", 1);
    make_model(&m, Q_NVFP4);
    add(&m, "model.layers.0.self_attn.k_proj.k_scale", FB_F32, 0, 0, 0)->fill = 1.0f;
    expect("stray k_scale", &m, NULL, "tensor.kv-scale", "KeyError: 'layers.0.self_attn.qkv_proj.k_scale'", 1);
    make_model(&m, Q_NVFP4);
    add(&m, "model.layers.3.input_layernorm.weight", FB_BF16, 1, H, 0);
    expect("layer beyond num_hidden_layers", &m, NULL, "layer.beyond", "KeyError: 'layers.3.input_layernorm.weight'", 1);
    make_model(&m, Q_NVFP4);
    json_object_set_new(m.config, "num_mtp_modules", json_integer(1));
    add(&m, "model.layers.3.self_attn.q_proj.weight", FB_BF16, 2, NH * HD, H);
    expect("MTP layer", &m, NULL, "layer.beyond", "KeyError: 'layers.3.self_attn.qkv_proj.weight'", 1);
    make_model(&m, Q_NVFP4);
    find(&m, "model.layers.0.block_sparse_moe.experts.0.w1.weight_scale")->sh[1] = H / 32;
    expect("weight_scale shape", &m, NULL, "tensor.shape", "[256, 8] F8_E4M3", 1);
    make_model(&m, Q_NVFP4);
    find(&m, "model.layers.0.self_attn.o_proj.weight_global_scale")->dt = FB_BF16;
    expect("global scale dtype", &m, NULL, "tensor.dtype", "needs F32", 1);
    make_model(&m, Q_W4A16);
    find(&m, "model.layers.2.block_sparse_moe.experts.7.w2.weight_packed")->dt = FB_U8;
    expect("w4a16 packed dtype", &m, NULL, "tensor.dtype", "needs I32", 1);
    make_model(&m, Q_NVFP4);
    add(&m, "model.layers.0.mlp.shared_expert.weight", FB_BF16, 2, H, H);
    expect("unknown tensor", &m, NULL, "tensor.keyerror", "KeyError: 'layers.0.mlp.shared_expert.weight'", 1);
    make_model(&m, Q_GPTQ);
    find(&m, "model.layers.1.self_attn.q_proj.qweight")->sh[0] = NH * HD;
    expect("gptq qweight transposed", &m, NULL, "tensor.shape", "qweight", 1);
    make_model(&m, Q_FP8);
    find(&m, "model.layers.1.block_sparse_moe.experts.1.w1.weight_scale_inv")->sh[0] = 3;
    expect("fp8 scale_inv shape", &m, NULL, "tensor.shape", "weight_scale_inv", 1);
    make_model(&m, Q_MODELOPT);
    del(&m, "model.layers.2.block_sparse_moe.experts.6.w3.weight_scale_2");
    expect("modelopt missing weight_scale_2", &m, NULL, "tensor.missing", "weight_scale_2", 1);

    // --- ignore list ---
    make_model(&m, Q_NVFP4);
    set_ignore(&m, (const char *[]){"lm_head", "re:.*block_sparse_moe\\.gate", NULL});
    expect("regex without $ (warning)", &m, NULL, "ignore.regex-no-dollar", "does not end with $", 0);
    make_model(&m, Q_NVFP4);
    set_ignore(&m, (const char *[]){"lm_head", "re:.*block_sparse_moe\\.gate", NULL});
    expect("regex without $ --strict", &m, "--strict", "ignore.regex-no-dollar", NULL, 1);
    make_model(&m, Q_NVFP4);
    set_ignore(&m, (const char *[]){"lm_head", "re:.*gate", NULL});
    expect("regex without $ hitting gate_proj", &m, NULL, "ignore.regex-overmatch", "mlp.experts.0.gate_proj", 1);
    make_model(&m, Q_NVFP4);
    set_ignore(&m, (const char *[]){"lm_head", "re:.*block_sparse_moe\\.gate$", "model.layers.1.self_attn.q_proj", NULL});
    expect("q/k/v split", &m, NULL, "ignore.qkv-split", "Found a different quantization schemes for ['q_proj', 'k_proj', 'v_proj']", 1);
    make_model(&m, Q_NVFP4);
    set_ignore(&m, (const char *[]){"lm_head", "re:.*block_sparse_moe\\.gate$", "model.layers.0.block_sparse_moe.experts.3.w1", NULL});
    expect("ignore entry naming an expert", &m, NULL, "ignore.expert", "experts.3.w1", 1);
    make_model(&m, Q_NVFP4);
    set_ignore(&m, (const char *[]){"lm_head", "re:.*block_sparse_moe\\.gate$", "re:.*experts\\.7\\..*$", NULL});
    expect("ignore regex reaching an expert", &m, NULL, "ignore.expert", "experts.7", 1);
    make_model(&m, Q_NVFP4);
    set_ignore(&m, (const char *[]){"re:.*block_sparse_moe\\.gate$", NULL});
    expect("lm_head not ignored", &m, NULL, "ignore.lm_head", "lm_head", 1);
    make_model(&m, Q_NVFP4);
    set_ignore(&m, (const char *[]){"lm_head", "re:.*block_sparse_moe\\.gate$", "re:(unclosed", NULL});
    expect("invalid regex", &m, NULL, "ignore.invalid", "(unclosed", 1);
    make_model(&m, Q_NVFP4);
    set_ignore(&m, (const char *[]){"lm_head", "re:.*block_sparse_moe\\.gate$", "re:.*self_attn\\.(q|k|v|o)_proj$", NULL});
    expect("attention ignored but quantized", &m, NULL, "tensor.keyerror", "KeyError: 'layers.0.self_attn.qkv_proj.weight_packed'", 1);

    // --- compressed-tensors schema / format ---
    make_model(&m, Q_NVFP4);
    json_object_set_new(json_object_get(json_object_get(json_object_get(qcfg(&m), "config_groups"), "group_0"), "weights"),
                        "scale_type", json_string("fp8"));
    expect("unknown QuantizationArgs key", &m, NULL, "ct.schema", "unknown key \"scale_type\"", 1);
    make_model(&m, Q_NVFP4);
    json_object_set_new(json_object_get(json_object_get(qcfg(&m), "config_groups"), "group_0"), "ignore", json_array());
    expect("unknown QuantizationScheme key", &m, NULL, "ct.schema", "unknown key \"ignore\"", 1);
    make_model(&m, Q_NVFP4);
    json_object_set_new(qcfg(&m), "producer", json_string("fourbit"));
    expect("unknown top-level key (warning)", &m, NULL, "ct.schema-extra", "producer", 0);
    make_model(&m, Q_NVFP4);
    json_object_set_new(json_object_get(json_object_get(qcfg(&m), "config_groups"), "group_0"), "format", json_string("pack-quantized"));
    expect("NVFP4 group with pack-quantized", &m, NULL, "ct.format", "must be \"nvfp4-pack-quantized\"", 1);
    make_model(&m, Q_NVFP4);
    json_object_set_new(qcfg(&m), "quantization_status", json_string("frozen"));
    expect("quantization_status", &m, NULL, "ct.status", "frozen", 1);
    make_model(&m, Q_NVFP4);
    json_object_set_new(json_object_get(json_object_get(json_object_get(qcfg(&m), "config_groups"), "group_0"), "weights"),
                        "group_size", json_null());
    expect("tensor_group without group_size", &m, NULL, "ct.schema", "requires group_size", 1);

    // --- config.json ---
    make_model(&m, Q_NVFP4);
    json_object_del(m.config, "use_routing_bias");
    expect("use_routing_bias dropped", &m, NULL, "config.use_routing_bias", "KeyError: 'layers.0.block_sparse_moe.e_score_correction_bias'", 1);
    make_model(&m, Q_NVFP4);
    json_object_del(m.config, "rotary_dim");
    expect("rotary_dim dropped", &m, NULL, "config.rotary_dim", "rotary_dim", 1);
    make_model(&m, Q_NVFP4);
    json_object_del(m.config, "partial_rotary_factor");
    expect("partial_rotary_factor missing (warning)", &m, NULL, "config.partial_rotary_factor", "without partial_rotary_factor", 0);
    make_model(&m, Q_NVFP4);
    json_object_set_new(m.config, "partial_rotary_factor", json_real(1.0));
    expect("partial_rotary_factor wrong", &m, NULL, "config.partial_rotary_factor", "disagrees", 1);
    make_model(&m, Q_NVFP4);
    json_object_del(m.config, "scoring_func");
    expect("scoring_func dropped", &m, NULL, "config.scoring_func", "scoring_func", 1);
    make_model(&m, Q_BF16);
    json_object_del(m.config, "head_dim");
    expect("head_dim dropped, hidden/heads == head_dim (warning)", &m, NULL, "config.head_dim", "hidden_size/num_attention_heads = 64", 0);
    make_model(&m, Q_BF16);
    {
        // 8 heads of 64 (q 512 wide) on hidden 256, like MiniMax-M2 (48 x 128 on 3072)
        char nm[200];
        for (int L = 0; L < NL; L++) {
            snprintf(nm, sizeof nm, "model.layers.%d.self_attn.q_norm.weight", L); find(&m, nm)->sh[0] = 512;
            snprintf(nm, sizeof nm, "model.layers.%d.self_attn.q_proj.weight", L); find(&m, nm)->sh[0] = 512;
            snprintf(nm, sizeof nm, "model.layers.%d.self_attn.o_proj.weight", L); find(&m, nm)->sh[1] = 512;
        }
        json_object_set_new(m.config, "num_attention_heads", json_integer(8));
    }
    json_object_del(m.config, "head_dim");
    expect("head_dim dropped, hidden/heads != head_dim", &m, NULL, "config.head_dim", "disagrees with the q_norm width", 1);
    make_model(&m, Q_BF16);
    json_object_set_new(m.config, "quantization_config",
                        json_loads("{\"quant_method\": \"fp8\", \"activation_scheme\": \"dynamic\", \"weight_block_size\": [128, 128]}", 0, NULL));
    expect("stale FP8 quantization_config on BF16", &m, NULL, "quant.stale", "declares quant_method fp8 but the Linear tensors are unquantized", 1);
    make_model(&m, Q_MODELOPT);
    json_object_set_new(m.config, "quantization_config",
                        json_loads("{\"quant_method\": \"fp8\", \"activation_scheme\": \"dynamic\", \"weight_block_size\": [128, 128]}", 0, NULL));
    expect("hf_quant_config.json shadowed", &m, NULL, "quant.shadowed", "shadowed", 1);

    // --- REAP pruning: 4 experts kept, e_score_correction_bias left at 8 entries ---
    make_model(&m, Q_NVFP4);
    {
        char nm[200];
        for (int L = 0; L < NL; L++)
            for (int E = 4; E < NE; E++)
                for (int w = 1; w <= 3; w++) {
                    static const char *const sfx[] = {"weight_packed", "weight_scale", "weight_global_scale", "input_global_scale"};
                    for (int s = 0; s < 4; s++) {
                        snprintf(nm, sizeof nm, "model.layers.%d.block_sparse_moe.experts.%d.w%d.%s", L, E, w, sfx[s]);
                        FB_ASSERT(del(&m, nm));
                    }
                }
        for (int L = 0; L < NL; L++) {
            snprintf(nm, sizeof nm, "model.layers.%d.block_sparse_moe.gate.weight", L);
            find(&m, nm)->sh[0] = 4;
        }
        json_object_set_new(m.config, "num_local_experts", json_integer(4));
    }
    expect("REAP bias kept 8 entries", &m, NULL, "moe.experts", "e_score_correction_bias has 8 entries, num_local_experts is 4", 1);
    make_model(&m, Q_NVFP4);
    {
        char nm[200];
        for (int L = 0; L < NL; L++)
            for (int E = 4; E < NE; E++)
                for (int w = 1; w <= 3; w++) {
                    static const char *const sfx[] = {"weight_packed", "weight_scale", "weight_global_scale", "input_global_scale"};
                    for (int s = 0; s < 4; s++) {
                        snprintf(nm, sizeof nm, "model.layers.%d.block_sparse_moe.experts.%d.w%d.%s", L, E, w, sfx[s]);
                        FB_ASSERT(del(&m, nm));
                    }
                }
    }
    expect("REAP: num_local_experts not updated", &m, NULL, "config.num_local_experts", "num_local_experts is 8", 1);

    // --- deep scan ---
    make_model(&m, Q_BF16);
    set_fill(&m, "model.layers.1.block_sparse_moe.gate.weight", NAN);
    expect("NaN router (--deep)", &m, "--deep", "value.nonfinite", "NaN/Inf at element 0", 1);
    make_model(&m, Q_BF16);
    set_fill(&m, "model.layers.1.block_sparse_moe.gate.weight", NAN);
    expect("NaN router without --deep is not read", &m, NULL, NULL, NULL, 0);
    make_model(&m, Q_FP8);
    set_fill(&m, "model.layers.0.self_attn.o_proj.weight_scale_inv", -1.0f);
    expect("negative fp8 block scale (--deep)", &m, "--deep", "value.block-scale", "negative block scale", 1);

    // --- grouping across layers: one finding for all 3 layers' gates ---
    {
        make_model(&m, Q_NVFP4);
        set_ignore(&m, (const char *[]){"lm_head", NULL});
        quantize_gates(&m);
        result r;
        run(&m, &r, NULL);
        const fb_finding *x = fb_findings_get(&r.f, "router.quantized");
        CHECK(x && x->count == 12, "router.quantized groups 4 tensors x 3 layers: count %zu", x ? x->count : 0);
        json_t *j = fb_findings_json(&r.f, r.dir, 0);
        CHECK(!strcmp(json_string_value(json_object_get(j, "verdict")), "fail"), "json verdict");
        json_decref(j);
        CHECK(x && !strcmp(x->layers, "0-2"), "layers summarised as 0-2: '%s'", x ? x->layers : "");
        fb_findings_free(&r.f);
        free_model(&m);
    }

    // --- an index that disagrees with the shards ---
    {
        make_model(&m, Q_BF16);
        result r;
        snprintf(r.dir, sizeof r.dir, "%s/case-index", g_tmp);
        write_ckpt(r.dir, &m);
        char p[400];
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", r.dir);
        FILE *fp = fopen(p, "w");
        fprintf(fp, "{\"metadata\": {\"total_size\": 1}, \"weight_map\": {\"lm_head.weight\": \"model.safetensors\", "
                    "\"model.ghost.weight\": \"model.safetensors\"}}");
        fclose(fp);
        fb_findings_init(&r.f);
        fb_err e;
        CHECK(fb_validate_dir(r.dir, NULL, &r.f, &e) == 0, "pass ran");
        CHECK(fb_findings_get(&r.f, "ckpt.unreadable") != NULL, "index mismatch reported");
        fb_findings_free(&r.f);
        free_model(&m);
    }

    // --- recipe preview on the BF16 source ---
    {
        make_model(&m, Q_BF16);
        result r;
        snprintf(r.dir, sizeof r.dir, "%s/case-src", g_tmp);
        write_ckpt(r.dir, &m);
        free_model(&m);
        fb_ckpt *c;
        fb_err e;
        REQUIRE(fb_ckpt_open(r.dir, &c, &e) == 0, "open: %s", e.msg);
        json_t *good = ct_config(Q_NVFP4);
        json_object_set_new(good, "ignore", json_pack("[s,s]", "lm_head", "re:.*block_sparse_moe\\.gate$"));
        fb_findings_init(&r.f);
        size_t nq = 0, nk = 0;
        CHECK(fb_validate_preview(c, good, NULL, &r.f, &nq, &nk, &e) == 0, "preview: %s", e.msg);
        CHECK(r.f.n_errors == 0, "good recipe previews clean (%zu errors)", r.f.n_errors);
        if (r.f.n_errors) fb_findings_print(&r.f, "preview", 0, stderr);
        CHECK(nq == (size_t)NL * (4 + 3 * NE), "quantized modules %zu", nq);
        CHECK(nk == (size_t)NL + 1, "kept modules %zu (gates + lm_head)", nk);
        fb_findings_free(&r.f);
        json_object_set_new(good, "ignore", json_pack("[s]", "lm_head"));
        fb_findings_init(&r.f);
        CHECK(fb_validate_preview(c, good, NULL, &r.f, &nq, &nk, &e) == 0, "preview: %s", e.msg);
        const fb_finding *x = fb_findings_get(&r.f, "router.quantized");
        CHECK(x && strstr(x->consequence, "KeyError: 'layers.0.block_sparse_moe.gate.weight_"),
              "recipe without the gate ignore predicts the router KeyError");
        fb_findings_free(&r.f);
        json_decref(good);

        // llm-compressor YAML recipes through fb_recipe_load and the tool's --recipe
        static const struct {
            const char *what, *yaml, *rule, *text;
            int rc;
        } RC[] = {
            {"recipe: NVFP4, gate ignored", "default_stage:\n  default_modifiers:\n    QuantizationModifier:\n"
             "      targets: [Linear]\n      scheme: NVFP4\n      ignore: [lm_head, 're:.*block_sparse_moe\\.gate$']\n",
             NULL, NULL, 0},
            {"recipe: W4A16, gate ignored", "default_stage:\n  default_modifiers:\n    QuantizationModifier:\n"
             "      targets: [Linear]\n      scheme: W4A16\n      ignore: [lm_head, 're:.*block_sparse_moe\\.gate$']\n",
             NULL, NULL, 0},
            {"recipe: gate not ignored", "default_stage:\n  default_modifiers:\n    QuantizationModifier:\n"
             "      targets: [Linear]\n      scheme: NVFP4\n      ignore: [lm_head]\n",
             "router.quantized", "KeyError: 'layers.0.block_sparse_moe.gate.weight_", 1},
            {"recipe: regex without $", "default_stage:\n  default_modifiers:\n    QuantizationModifier:\n"
             "      targets: [Linear]\n      scheme: NVFP4A16\n      ignore: [lm_head, 're:.*gate']\n",
             "ignore.regex-overmatch", "mlp.experts.0.gate_proj", 1},
            {"recipe: q_proj alone ignored", "default_stage:\n  default_modifiers:\n    QuantizationModifier:\n"
             "      targets: [Linear]\n      scheme: NVFP4\n      ignore: [lm_head, 're:.*block_sparse_moe\\.gate$', 're:.*q_proj$']\n",
             "recipe.unwritable", NULL, 1},
        };
        for (size_t i = 0; i < sizeof RC / sizeof RC[0]; i++) {
            char rp[400];
            snprintf(rp, sizeof rp, "%s/recipe%zu.yaml", g_tmp, i);
            FILE *fp = fopen(rp, "w");
            REQUIRE(fp, "write %s", rp);
            fputs(RC[i].yaml, fp);
            fclose(fp);
            fb_recipe rec;
            REQUIRE(fb_recipe_load(rp, &rec, &e) == 0, "%s: %s", RC[i].what, e.msg);
            fb_findings_init(&r.f);
            CHECK(fb_validate_recipe(c, &rec, NULL, &r.f, &nq, &nk, &e) == 0, "%s: %s", RC[i].what, e.msg);
            if (RC[i].rule) {
                const fb_finding *y = fb_findings_get(&r.f, RC[i].rule);
                CHECK(y != NULL, "%s: rule %s did not fire", RC[i].what, RC[i].rule);
                if (y && RC[i].text)
                    CHECK(strstr(y->message, RC[i].text) || strstr(y->consequence, RC[i].text) || strstr(y->where, RC[i].text),
                          "%s: \"%s\" not in \"%s\" / \"%s\"", RC[i].what, RC[i].text, y->message, y->consequence);
            } else {
                CHECK(r.f.n_errors == 0, "%s: %zu errors", RC[i].what, r.f.n_errors);
            }
            if (t_fail_) fb_findings_print(&r.f, RC[i].what, 0, stderr);
            fb_findings_free(&r.f);
            fb_recipe_free(&rec);
            char cmd[900];
            snprintf(cmd, sizeof cmd, "%s --quiet --recipe '%s' '%s'", g_bin, rp, r.dir);
            int st = system(cmd);
            CHECK(WIFEXITED(st) && WEXITSTATUS(st) == RC[i].rc, "%s: tool exit %d, want %d", RC[i].what, WEXITSTATUS(st), RC[i].rc);
        }
        fb_ckpt_close(c);
    }

    char cmd[600];
    snprintf(cmd, sizeof cmd, "%s --help >/dev/null", g_bin);
    CHECK(WEXITSTATUS(system(cmd)) == 0, "--help exits 0");
    snprintf(cmd, sizeof cmd, "%s >/dev/null 2>&1", g_bin);
    CHECK(WEXITSTATUS(system(cmd)) == 2, "no argument: exit 2");
    snprintf(cmd, sizeof cmd, "%s --bogus x >/dev/null 2>&1", g_bin);
    CHECK(WEXITSTATUS(system(cmd)) == 2, "unknown option: exit 2");

    if (!t_fail_ && !getenv("FB_TEST_KEEP")) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
        CHECK(system(cmd) == 0, "cleanup");
    } else {
        fprintf(stderr, "cases kept in %s\n", g_tmp);
    }
    TEST_MAIN_END();
}
