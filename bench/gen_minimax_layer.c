// gen_minimax_layer: writes a synthetic full-size MiniMax-M2 layer in the official FP8 layout
// (hidden 3072, 48 q / 8 kv heads of 128, 256 experts of 1536; e4m3 weights with f32
// weight_scale_inv per 128x128 tile; f32 router gate and bias; bf16 norms), plus a small
// vocabulary (embed_tokens / lm_head of 1024 rows) so the result is a loadable checkpoint.
// About 3.7 GB in shards of --shard-size. Weights are heavy-tailed: each tile draws e4m3
// codes from a Student-t-like distribution (a few outlier columns per tile), scales vary
// log-uniformly per tile.
//   gen_minimax_layer DIR [--experts N] [--shard-size SIZE]
#include <math.h>
#include <string.h>

#include "common/cli.h"
#include "common/fb.h"
#include "io/checkpoint.h"
#include "quant/formats.h"

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static inline uint64_t rnd(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return rs;
}

// 65536 e4m3 codes of |t(3)|-distributed values scaled so the 99.99th percentile sits near 448.
static uint8_t pool[65536];
static void make_pool(void) {
    for (int i = 0; i < 65536; i++) {
        double u1 = ((double)(rnd() >> 11) + 0.5) / 9007199254740992.0;
        double u2 = ((double)(rnd() >> 11) + 0.5) / 9007199254740992.0;
        double z = sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
        double chi = 0;
        for (int k = 0; k < 3; k++) {
            double a = ((double)(rnd() >> 11) + 0.5) / 9007199254740992.0;
            double b = ((double)(rnd() >> 11) + 0.5) / 9007199254740992.0;
            double g = sqrt(-2 * log(a)) * cos(6.283185307179586 * b);
            chi += g * g;
        }
        double t = z / sqrt(chi / 3.0);
        double v = t * 20.0;
        if (v > 448) v = 448;
        if (v < -448) v = -448;
        pool[i] = fb_f32_to_e4m3((float)v);
    }
}

int main(int argc, char **argv) {
    int experts = 256;
    uint64_t shard = 2000000000ull;
    const fb_opt opts[] = {
        {"experts", 'e', FB_OPT_INT, &experts, "N", "routed experts", 1, 4096},
        {"shard-size", 0, FB_OPT_SIZE, &shard, "SIZE", "shard size", 0, 0},
        {0},
    };
    const char *pos[1];
    int np;
    int prc = fb_cli_parse(argc, argv, "gen_minimax_layer", "DIR", "Writes a synthetic full-size MiniMax-M2 FP8 layer.",
                           opts, pos, 1, &np);
    if (prc == 1) return 0;
    if (prc || np != 1) return 2;
    fb_formats_init();
    make_pool();
    fb_err err;
    fb_cw_opts wo = {.max_shard_size = shard, .tool = "gen_minimax_layer", .force = 1};
    fb_cw *w = fb_cw_create(pos[0], NULL, &wo, &err);
    if (!w) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    enum { H = 3072, Q = 6144, KV = 1024, I = 1536, V = 1024 };
    typedef struct { char name[128]; fb_dtype dt; int64_t r, c; int fp8; } decl;
    decl *d = fb_calloc((size_t)experts * 6 + 32, sizeof *d);
    int n = 0;
#define ADD(nm, dtype, R, C, F) do { snprintf(d[n].name, sizeof d[n].name, "%s", nm); d[n].dt = dtype; d[n].r = R; d[n].c = C; d[n].fp8 = F; n++; } while (0)
    char nm[160];
    ADD("model.embed_tokens.weight", FB_BF16, V, H, 0);
    const char *attn[] = {"q_proj", "k_proj", "v_proj", "o_proj"};
    int64_t ar[] = {Q, KV, KV, H}, ac[] = {H, H, H, Q};
    for (int k = 0; k < 4; k++) {
        snprintf(nm, sizeof nm, "model.layers.0.self_attn.%s.weight", attn[k]);
        ADD(nm, FB_F8_E4M3, ar[k], ac[k], 1);
        snprintf(nm, sizeof nm, "model.layers.0.self_attn.%s.weight_scale_inv", attn[k]);
        ADD(nm, FB_F32, (ar[k] + 127) / 128, (ac[k] + 127) / 128, 2);
    }
    ADD("model.layers.0.self_attn.q_norm.weight", FB_BF16, 0, Q, 0);
    ADD("model.layers.0.self_attn.k_norm.weight", FB_BF16, 0, KV, 0);
    ADD("model.layers.0.input_layernorm.weight", FB_BF16, 0, H, 0);
    ADD("model.layers.0.post_attention_layernorm.weight", FB_BF16, 0, H, 0);
    ADD("model.layers.0.block_sparse_moe.gate.weight", FB_F32, experts, H, 0);
    ADD("model.layers.0.block_sparse_moe.e_score_correction_bias", FB_F32, 0, experts, 0);
    for (int e = 0; e < experts; e++) {
        const char *ww[] = {"w1", "w2", "w3"};
        int64_t wr[] = {I, H, I}, wc[] = {H, I, H};
        for (int k = 0; k < 3; k++) {
            snprintf(nm, sizeof nm, "model.layers.0.block_sparse_moe.experts.%d.%s.weight", e, ww[k]);
            ADD(nm, FB_F8_E4M3, wr[k], wc[k], 1);
            snprintf(nm, sizeof nm, "model.layers.0.block_sparse_moe.experts.%d.%s.weight_scale_inv", e, ww[k]);
            ADD(nm, FB_F32, (wr[k] + 127) / 128, (wc[k] + 127) / 128, 2);
        }
    }
    ADD("model.norm.weight", FB_BF16, 0, H, 0);
    ADD("lm_head.weight", FB_BF16, V, H, 0);
    for (int i = 0; i < n; i++) {
        int64_t shape[2] = {d[i].r, d[i].c};
        int nd = d[i].r ? 2 : 1;
        if (fb_cw_add(w, d[i].name, d[i].dt, nd, nd == 2 ? shape : shape + 1, &err) < 0) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
    }
    int ns = fb_cw_plan(w, &err);
    size_t bufsz = 8u << 20;
    unsigned char *buf = fb_malloc(bufsz);
    for (int s = 0; s < ns; s++) {
        if (fb_cw_shard_begin(w, s, &err) < 0) { fprintf(stderr, "%s\n", err.msg); return 1; }
        const int *idx;
        int m = fb_cw_shard_tensors(w, s, &idx);
        for (int k = 0; k < m; k++) {
            decl *t = &d[idx[k]];
            uint64_t nb = fb_cw_tensor_bytes(w, idx[k]);
            for (uint64_t off = 0; off < nb; off += bufsz) {
                size_t len = (size_t)(nb - off < bufsz ? nb - off : bufsz);
                if (t->fp8 == 1) {
                    for (size_t b = 0; b < len; b += 4) {
                        uint64_t x = rnd();
                        for (int q = 0; q < 4 && b + (size_t)q < len; q++) buf[b + (size_t)q] = pool[(x >> (16 * q)) & 0xFFFF];
                    }
                } else if (t->fp8 == 2 || t->dt == FB_F32) {
                    for (size_t b = 0; b + 4 <= len; b += 4) {
                        float v = t->fp8 == 2 ? (float)exp(-7.0 - 3.0 * (double)(rnd() >> 40) / 16777216.0)
                                              : (float)(((double)(rnd() >> 40) / 16777216.0 - 0.5) * 0.05);
                        memcpy(buf + b, &v, 4);
                    }
                } else {
                    for (size_t b = 0; b + 2 <= len; b += 2) {
                        float v = (float)(((double)(rnd() >> 40) / 16777216.0 - 0.5) * 0.1) + (strstr(t->name, "norm") ? 1.0f : 0.0f);
                        uint16_t h = fb_f32_to_bf16(v);
                        memcpy(buf + b, &h, 2);
                    }
                }
                if (fb_cw_write(w, idx[k], off, buf, len, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
            }
        }
        if (fb_cw_shard_end(w, s, &err)) { fprintf(stderr, "%s\n", err.msg); return 1; }
    }
    char *cp = fb_cw_path(w, "config.json");
    FILE *f = fopen(cp, "w");
    fprintf(f,
            "{\n  \"architectures\": [\"MiniMaxM2ForCausalLM\"],\n  \"model_type\": \"minimax_m2\",\n"
            "  \"hidden_size\": 3072,\n  \"intermediate_size\": 1536,\n  \"num_hidden_layers\": 1,\n"
            "  \"num_attention_heads\": 48,\n  \"num_key_value_heads\": 8,\n  \"head_dim\": 128,\n  \"rotary_dim\": 64,\n"
            "  \"num_local_experts\": %d,\n  \"num_experts_per_tok\": 8,\n  \"scoring_func\": \"sigmoid\",\n"
            "  \"use_routing_bias\": true,\n  \"use_qk_norm\": true,\n  \"qk_norm_type\": \"per_layer\",\n"
            "  \"rms_norm_eps\": 1e-06,\n  \"rope_theta\": 5000000,\n  \"max_position_embeddings\": 196608,\n"
            "  \"vocab_size\": 1024,\n  \"tie_word_embeddings\": false,\n  \"torch_dtype\": \"bfloat16\",\n"
            "  \"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": \"float8_e4m3fn\", \"activation_scheme\": \"dynamic\",\n"
            "    \"weight_block_size\": [128, 128], \"modules_to_not_convert\": [\"gate\", \"e_score_correction_bias\", \"lm_head\"]}\n}\n",
            experts);
    fclose(f);
    free(cp);
    if (fb_cw_finish(w, &err) || fb_cw_commit(w, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    free(buf);
    free(d);
    printf("wrote %s: %d tensors in %d shard(s)\n", pos[0], n, ns);
    return 0;
}
