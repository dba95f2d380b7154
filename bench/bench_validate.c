// bench_validate: validate-ignore-list on a full-size MiniMax-M2 checkpoint layout, built as
// sparse files (real safetensors headers, payload left as holes except the scalar global
// scales, which are written so that the value rules run on real numbers).
//
//   fp8   : the official FP8 release layout, 96,103 tensors (62 x 1,550 + 3), 130 shards
//   nvfp4 : the compressed-tensors NVFP4 (W4A4) output, 4 tensors per quantized Linear
//           (~191k tensors), 130 shards
//
// Prints, per layout: tensors, shards, seconds to open the checkpoint (fb_ckpt_open: every
// header, index <-> shards) and seconds for the validation pass (default options, which read
// the ~95k scalar global scales of the NVFP4 layout), and the verdict, which must be "ok".
// Target (issue 5): open + validate < 2 s. Usage: bench_validate [DIR] (default $TMPDIR or /tmp).
// A third run leaves every scale as a hole (0.0) and quantizes every router gate: ~100k
// findings instances to group, verdict "fail" (expected), timed the same way.
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/fb.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "quant/validate.h"

enum { L = 62, E = 256, H = 3072, NH = 48, NKV = 8, HD = 128, IE = 1536, V = 200064, NSHARDS = 130 };

typedef struct bt {
    char *name;
    fb_dtype dt;
    int nd;
    int64_t sh[2];
    float val;   // F32 scalars: written value
} bt;

static bt *T;
static size_t NT, CAPT;
static int BROKEN;

static void add(const char *name, fb_dtype dt, int nd, int64_t a, int64_t b, float val) {
    if (NT == CAPT) {
        CAPT = CAPT ? CAPT * 2 : 1 << 16;
        T = fb_realloc(T, CAPT * sizeof *T);
    }
    T[NT++] = (bt){fb_strdup(name), dt, nd, {a, b}, val};
}

static void linear(const char *mod, int64_t O, int64_t I, int nvfp4) {
    char nm[200];
    if (nvfp4) {
        snprintf(nm, sizeof nm, "%s.weight_packed", mod); add(nm, FB_U8, 2, O, I / 2, 0);
        snprintf(nm, sizeof nm, "%s.weight_scale", mod); add(nm, FB_F8_E4M3, 2, O, I / 16, 0);
        snprintf(nm, sizeof nm, "%s.weight_global_scale", mod); add(nm, FB_F32, 1, 1, 0, 2688.0f);
        snprintf(nm, sizeof nm, "%s.input_global_scale", mod); add(nm, FB_F32, 1, 1, 0, 100.0f);
    } else {
        snprintf(nm, sizeof nm, "%s.weight", mod); add(nm, FB_F8_E4M3, 2, O, I, 0);
        snprintf(nm, sizeof nm, "%s.weight_scale_inv", mod); add(nm, FB_F32, 2, (O + 127) / 128, (I + 127) / 128, 0);
    }
}

static void build(int nvfp4) {
    NT = 0;
    add("model.embed_tokens.weight", FB_BF16, 2, V, H, 0);
    char nm[200];
    for (int l = 0; l < L; l++) {
#define P(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)
        add(P("model.layers.%d.input_layernorm.weight", l), FB_BF16, 1, H, 0, 0);
        add(P("model.layers.%d.post_attention_layernorm.weight", l), FB_BF16, 1, H, 0, 0);
        linear(P("model.layers.%d.self_attn.q_proj", l), NH * HD, H, nvfp4);
        linear(P("model.layers.%d.self_attn.k_proj", l), NKV * HD, H, nvfp4);
        linear(P("model.layers.%d.self_attn.v_proj", l), NKV * HD, H, nvfp4);
        linear(P("model.layers.%d.self_attn.o_proj", l), H, NH * HD, nvfp4);
        add(P("model.layers.%d.self_attn.q_norm.weight", l), FB_BF16, 1, NH * HD, 0, 0);
        add(P("model.layers.%d.self_attn.k_norm.weight", l), FB_BF16, 1, NKV * HD, 0, 0);
        if (BROKEN) linear(P("model.layers.%d.block_sparse_moe.gate", l), E, H, 1);
        else add(P("model.layers.%d.block_sparse_moe.gate.weight", l), FB_F32, 2, E, H, 0);
        add(P("model.layers.%d.block_sparse_moe.e_score_correction_bias", l), FB_F32, 1, E, 0, 0);
        for (int e = 0; e < E; e++) {
            linear(P("model.layers.%d.block_sparse_moe.experts.%d.w1", l, e), IE, H, nvfp4);
            linear(P("model.layers.%d.block_sparse_moe.experts.%d.w2", l, e), H, IE, nvfp4);
            linear(P("model.layers.%d.block_sparse_moe.experts.%d.w3", l, e), IE, H, nvfp4);
        }
#undef P
    }
    add("model.norm.weight", FB_BF16, 1, H, 0, 0);
    add("lm_head.weight", FB_BF16, 2, V, H, 0);
}

static uint64_t tbytes(const bt *t) {
    uint64_t n = 1;
    for (int d = 0; d < t->nd; d++) n *= (uint64_t)t->sh[d];
    return n * (uint64_t)fb_dtypes[t->dt].bits / 8;
}

static int is_scalar(const bt *t) { return t->dt == FB_F32 && t->nd == 1 && t->sh[0] == 1; }

// Writes shards [a, b) of the tensor list as one file: scalars first (written), the rest holes.
static int write_shard(const char *path, size_t a, size_t b, json_t *wmap, const char *fname, uint64_t *total) {
    json_t *hdr = json_object();
    json_object_set_new(hdr, "__metadata__", json_pack("{s:s}", "format", "pt"));
    uint64_t off = 0;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = a; i < b; i++) {
            if (is_scalar(&T[i]) != (pass == 0)) continue;
            json_t *sh = json_array();
            for (int d = 0; d < T[i].nd; d++) json_array_append_new(sh, json_integer(T[i].sh[d]));
            uint64_t n = tbytes(&T[i]);
            json_object_set_new(hdr, T[i].name, json_pack("{s:s,s:o,s:[I,I]}", "dtype", fb_dtypes[T[i].dt].name, "shape", sh,
                                                          "data_offsets", (json_int_t)off, (json_int_t)(off + n)));
            json_object_set_new(wmap, T[i].name, json_string(fname));
            off += n;
        }
    char *js = json_dumps(hdr, JSON_COMPACT);
    json_decref(hdr);
    size_t hl = strlen(js), pad = (8 - hl % 8) % 8;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) { free(js); return -1; }
    uint64_t n = hl + pad;
    int ok = write(fd, &n, 8) == 8 && write(fd, js, hl) == (ssize_t)hl && write(fd, "        ", pad) == (ssize_t)pad;
    free(js);
    uint64_t data = 8 + n;
    for (size_t i = a; i < b && ok; i++)
        if (is_scalar(&T[i])) {
            float val = BROKEN ? 0.0f : T[i].val;
            ok = write(fd, &val, 4) == 4;
        }
    ok = ok && ftruncate(fd, (off_t)(data + off)) == 0;
    close(fd);
    *total += off;
    return ok ? 0 : -1;
}

static const char *CONFIG =
    "{\"architectures\": [\"MiniMaxM2ForCausalLM\"], \"model_type\": \"minimax_m2\", \"hidden_size\": 3072,"
    " \"intermediate_size\": 1536, \"num_hidden_layers\": 62, \"num_attention_heads\": 48, \"num_key_value_heads\": 8,"
    " \"head_dim\": 128, \"num_local_experts\": 256, \"num_experts_per_tok\": 8, \"vocab_size\": 200064,"
    " \"rotary_dim\": 64, \"partial_rotary_factor\": 0.5, \"scoring_func\": \"sigmoid\", \"use_routing_bias\": true,"
    " \"use_qk_norm\": true, \"rope_theta\": 5000000, \"rms_norm_eps\": 1e-06, \"tie_word_embeddings\": false,"
    " \"use_mtp\": true, \"num_mtp_modules\": 3}";

static const char *QC_FP8 =
    "{\"quant_method\": \"fp8\", \"fmt\": \"float8_e4m3fn\", \"activation_scheme\": \"dynamic\", \"weight_block_size\": [128, 128],"
    " \"modules_to_not_convert\": [\"gate\", \"e_score_correction_bias\", \"lm_head\"]}";

static const char *QC_NVFP4 =
    "{\"config_groups\": {\"group_0\": {\"format\": \"nvfp4-pack-quantized\", \"input_activations\": {\"actorder\": null,"
    " \"block_structure\": null, \"dynamic\": \"local\", \"group_size\": 16, \"num_bits\": 4, \"observer\": \"static_minmax\","
    " \"observer_kwargs\": {}, \"scale_dtype\": \"torch.float8_e4m3fn\", \"strategy\": \"tensor_group\", \"symmetric\": true,"
    " \"type\": \"float\", \"zp_dtype\": null}, \"output_activations\": null, \"targets\": [\"Linear\"], \"weights\": {\"actorder\": null,"
    " \"block_structure\": null, \"dynamic\": false, \"group_size\": 16, \"num_bits\": 4, \"observer\": \"memoryless_minmax\","
    " \"observer_kwargs\": {}, \"scale_dtype\": \"torch.float8_e4m3fn\", \"strategy\": \"tensor_group\", \"symmetric\": true,"
    " \"type\": \"float\", \"zp_dtype\": null}}}, \"format\": \"nvfp4-pack-quantized\", \"global_compression_ratio\": null,"
    " \"ignore\": [\"lm_head\", \"re:.*block_sparse_moe\\\\.gate$\"], \"kv_cache_scheme\": null, \"quant_method\": \"compressed-tensors\","
    " \"quantization_status\": \"compressed\", \"sparsity_config\": {}, \"transform_config\": {}, \"version\": \"0.18.0\"}";

static int run(const char *base, int nvfp4) {
    char dir[600], p[700];
    snprintf(dir, sizeof dir, "%s/bench-validate-%s-%d", base, nvfp4 ? "nvfp4" : "fp8", (int)getpid());
    if (mkdir(dir, 0755) != 0) { perror(dir); return 1; }
    build(nvfp4);
    double t0 = fb_now();
    json_t *wmap = json_object();
    uint64_t total = 0;
    for (int s = 0; s < NSHARDS; s++) {
        size_t a = NT * (size_t)s / NSHARDS, b = NT * (size_t)(s + 1) / NSHARDS;
        char fname[64];
        snprintf(fname, sizeof fname, "model-%05d-of-%05d.safetensors", s + 1, NSHARDS);
        snprintf(p, sizeof p, "%s/%s", dir, fname);
        if (write_shard(p, a, b, wmap, fname, &total)) { perror(p); return 1; }
    }
    json_t *idx = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total, "weight_map", wmap);
    snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
    json_dump_file(idx, p, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(idx);
    json_t *cfg = json_loads(CONFIG, 0, NULL);
    json_object_set_new(cfg, "quantization_config", json_loads(nvfp4 ? QC_NVFP4 : QC_FP8, 0, NULL));
    snprintf(p, sizeof p, "%s/config.json", dir);
    json_dump_file(cfg, p, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(cfg);
    double t_gen = fb_now() - t0;

    fb_err err;
    fb_ckpt *c;
    t0 = fb_now();
    int rc = fb_ckpt_open(dir, &c, &err);
    double t_open = fb_now() - t0;
    if (rc) { fprintf(stderr, "open: %s\n", err.msg); return 1; }
    fb_findings f;
    fb_findings_init(&f);
    fb_validate_opts o = {0};
    t0 = fb_now();
    rc = fb_validate_ckpt(c, &o, &f, &err);
    double t_val = fb_now() - t0;
    int ok = rc == 0 && fb_findings_ok(&f, 0) != BROKEN;
    printf("%s%-6s %6zu tensors %3d shards (%.0f GB apparent): generate %.2f s, open %.3f s, validate %.3f s, total %.3f s: %s (%zu errors, %zu warnings)%s\n",
           BROKEN ? "broken " : "", nvfp4 ? "nvfp4" : "fp8", c->n_tensors, NSHARDS, (double)total / 1e9, t_gen, t_open, t_val, t_open + t_val,
           fb_findings_ok(&f, 0) ? "ok" : "fail", f.n_errors, f.n_warnings, t_open + t_val < 2.0 ? "" : "  [over the 2 s target]");
    if (!ok || BROKEN) fb_findings_print(&f, dir, 0, BROKEN ? stdout : stderr);
    fb_findings_free(&f);
    fb_ckpt_close(c);
    snprintf(p, sizeof p, "rm -rf '%s'", dir);
    if (system(p) != 0) fprintf(stderr, "could not remove %s\n", dir);
    for (size_t i = 0; i < NT; i++) free(T[i].name);
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    const char *base = argc > 1 ? argv[1] : getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    int rc = run(base, 0);
    rc |= run(base, 1);
    BROKEN = 1;
    rc |= run(base, 1);
    free(T);
    return rc;
}
