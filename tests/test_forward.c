// test_forward: the MiniMax-M2 layer-wise forward (src/calib).
//  1. kernels on hand-checkable cases: RMSNorm, RoPE against the closed-form rotation,
//     softmax, routing (bias only for the choice, ties to the lower index, renormalization);
//  2. a random tiny model in memory against a naive double-precision forward written here
//     from the transformers formulas (per token, no BLAS): hidden states after every layer,
//     logits, statistics (absmax, counts, REAP saliency);
//  3. all-experts vs routed mode, 1 vs 2 threads, expert groups and token chunks: same output;
//  4. the same model written as a .safetensors checkpoint (BF16 weights, F32 router, one FP8
//     block-scaled expert weight) read through fb_wsrc_open_ckpt: bit-identical to memory;
//  5. the embedded model tests/golden/model (transformers f32 reference) when present.
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "calib/forward.h"
#include "quant/formats.h"
#include "test.h"

// ---- 1. kernels ----------------------------------------------------------------------------

static void test_kernels(void) {
    float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 2, 0.5f}, y[4];
    fb_mm_rmsnorm(x, w, 0.0f, 1, 4, y);
    double inv = 1.0 / sqrt(7.5);
    for (int i = 0; i < 4; i++)
        CHECK(fabs(y[i] - w[i] * x[i] * inv) < 1e-6, "rmsnorm[%d] %g", i, (double)y[i]);
    fb_mm_rmsnorm(x, w, 1.0f, 1, 4, y);  // eps inside the root
    CHECK(fabs(y[0] - 1.0 / sqrt(8.5)) < 1e-6, "rmsnorm eps %g", (double)y[0]);

    // RoPE: 2 heads of 8, rotary 4 (pairs (0,2), (1,3)); dims 4..7 pass through.
    float invf[2];
    fb_mm_rope_inv_freq(10000.0, 4, invf);
    CHECK(invf[0] == 1.0f && fabs(invf[1] - 0.01) < 1e-8, "inv_freq %g %g", (double)invf[0],
          (double)invf[1]);
    for (int pos = 0; pos < 200; pos += 37) {
        float q[16], q0[16];
        for (int i = 0; i < 16; i++) q0[i] = q[i] = (float)(i + 1) * (i % 3 ? 1.0f : -0.5f);
        fb_mm_rope(q, 2, 8, 4, invf, pos);
        for (int h = 0; h < 2; h++)
            for (int i = 0; i < 2; i++) {
                double a = pos * (i == 0 ? 1.0 : 0.01);
                double x1 = q0[h * 8 + i], x2 = q0[h * 8 + i + 2];
                double e1 = x1 * cos(a) - x2 * sin(a), e2 = x2 * cos(a) + x1 * sin(a);
                CHECK(fabs(q[h * 8 + i] - e1) < 1e-4 && fabs(q[h * 8 + i + 2] - e2) < 1e-4,
                      "rope pos %d head %d pair %d: %g %g want %g %g", pos, h, i,
                      (double)q[h * 8 + i], (double)q[h * 8 + i + 2], e1, e2);
            }
        int pass_ok = 1;
        for (int h = 0; h < 2; h++)
            for (int i = 4; i < 8; i++) pass_ok &= q[h * 8 + i] == q0[h * 8 + i];
        CHECK(pass_ok, "rope: dims past rotary_dim must pass through (pos %d)", pos);
    }
    float s[3] = {0, logf(2), logf(3)};
    fb_mm_softmax(s, 3);
    CHECK(fabs(s[0] - 1 / 6.) < 1e-6 && fabs(s[1] - 2 / 6.) < 1e-6 && fabs(s[2] - 3 / 6.) < 1e-6,
          "softmax %g %g %g", (double)s[0], (double)s[1], (double)s[2]);
    float big[2] = {1000, 1000};
    fb_mm_softmax(big, 2);
    CHECK(big[0] == 0.5f && big[1] == 0.5f, "softmax overflow %g", (double)big[0]);

    // Routing.
    float lg[4] = {0, 0, 0, 0}, scr[4], wt[2];
    int32_t idx[2];
    fb_mm_route(lg, NULL, 4, 2, idx, wt, scr);
    CHECK(idx[0] == 0 && idx[1] == 1 && wt[0] == 0.5f && wt[1] == 0.5f,
          "route ties: %d %d %g %g", idx[0], idx[1], (double)wt[0], (double)wt[1]);
    float b1[4] = {0, 0, 0.1f, 0.2f};
    fb_mm_route(lg, b1, 4, 2, idx, wt, scr);
    CHECK(idx[0] == 2 && idx[1] == 3 && wt[0] == 0.5f, "route bias: %d %d", idx[0], idx[1]);
    float lg2[4] = {2, 0, 0, -1}, b2[4] = {0, 0, 0, 10};
    fb_mm_route(lg2, b2, 4, 2, idx, wt, scr);
    double s0 = 1 / (1 + exp(-2.0)), s3 = 1 / (1 + exp(1.0));
    CHECK(idx[0] == 0 && idx[1] == 3, "route bias choice: %d %d", idx[0], idx[1]);
    CHECK(fabs(wt[0] - s0 / (s0 + s3)) < 1e-6 && fabs(wt[1] - s3 / (s0 + s3)) < 1e-6,
          "route weights unbiased: %g %g", (double)wt[0], (double)wt[1]);
    // Tie in the biased score between experts 1 and 2: the lower index wins.
    float lg3[4] = {0, 1, 0, -3}, b3[4] = {0, 0, 0.2310586f, 0};
    fb_mm_route(lg3, b3, 4, 1, idx, wt, scr);
    CHECK(idx[0] == 1 || idx[0] == 2, "route tie: %d", idx[0]);
    CHECK(wt[0] == 1.0f, "route top-1 weight %g", (double)wt[0]);
}

// ---- 2. a tiny random model ----------------------------------------------------------------

enum { H = 64, NI = 32, NH = 4, NKV = 2, HD = 16, RD = 8, NE = 8, K = 2, V = 50, NL = 2 };

static uint64_t rng = 88172645463325252ull;
static double urand(void) {  // xorshift64*, uniform in [-1, 1)
    rng ^= rng >> 12; rng ^= rng << 25; rng ^= rng >> 27;
    return (double)((rng * 2685821657736338717ull) >> 11) / 9007199254740992.0 * 2 - 1;
}

typedef struct tensor { char name[128]; int ndim; int64_t shape[2]; float *d; fb_dtype dt; } tensor;
static tensor T[200];
static int nT;

static float *add_t(const char *name, int ndim, int64_t d0, int64_t d1, double scale, double off,
                    fb_dtype dt) {
    tensor *t = &T[nT++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim; t->shape[0] = d0; t->shape[1] = d1; t->dt = dt;
    size_t n = (size_t)(d0 * (ndim > 1 ? d1 : 1));
    t->d = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        float v = (float)(off + scale * urand());
        if (dt == FB_BF16) v = fb_bf16_to_f32(fb_f32_to_bf16(v));
        t->d[i] = v;
    }
    return t->d;
}

static const float *get(const char *fmt, int l, int e) {
    char n[128];
    snprintf(n, sizeof n, fmt, l, e);
    for (int i = 0; i < nT; i++) if (!strcmp(T[i].name, n)) return T[i].d;
    fprintf(stderr, "no tensor %s\n", n);
    exit(1);
}

// FP8 tensor: codes and its scale; its f32 values are bf16(lut[code] * scale).
static uint8_t fp8_codes[H * NI];
static const float fp8_scale = 0.0123f;
static const char *fp8_name = "model.layers.1.block_sparse_moe.experts.3.w2.weight";

static void make_model(void) {
    char n[256];
    fb_formats_init();
    add_t("model.embed_tokens.weight", 2, V, H, 1.0, 0, FB_BF16);
    for (int l = 0; l < NL; l++) {
#define N(s) (snprintf(n, sizeof n, "model.layers.%d.%s", l, s), n)
        add_t(N("input_layernorm.weight"), 1, H, 0, 0.2, 1.0, FB_BF16);
        add_t(N("post_attention_layernorm.weight"), 1, H, 0, 0.2, 1.0, FB_BF16);
        add_t(N("self_attn.q_proj.weight"), 2, NH * HD, H, 0.25, 0, FB_BF16);
        add_t(N("self_attn.k_proj.weight"), 2, NKV * HD, H, 0.25, 0, FB_BF16);
        add_t(N("self_attn.v_proj.weight"), 2, NKV * HD, H, 0.25, 0, FB_BF16);
        add_t(N("self_attn.o_proj.weight"), 2, H, NH * HD, 0.15, 0, FB_BF16);
        add_t(N("self_attn.q_norm.weight"), 1, NH * HD, 0, 0.3, 1.0, FB_BF16);
        add_t(N("self_attn.k_norm.weight"), 1, NKV * HD, 0, 0.3, 1.0, FB_BF16);
        add_t(N("block_sparse_moe.gate.weight"), 2, NE, H, 0.3, 0, FB_F32);
        add_t(N("block_sparse_moe.e_score_correction_bias"), 1, NE, 0, 0.05, 0, FB_F32);
        for (int e = 0; e < NE; e++) {
            char m[160];
            snprintf(m, sizeof m, "block_sparse_moe.experts.%d.w1.weight", e);
            add_t(N(m), 2, NI, H, 0.25, 0, FB_BF16);
            snprintf(m, sizeof m, "block_sparse_moe.experts.%d.w3.weight", e);
            add_t(N(m), 2, NI, H, 0.25, 0, FB_BF16);
            snprintf(m, sizeof m, "block_sparse_moe.experts.%d.w2.weight", e);
            float *w2 = add_t(N(m), 2, H, NI, 0.3, 0, FB_BF16);
            if (!strcmp(n, fp8_name)) {
                T[nT - 1].dt = FB_F8_E4M3;
                for (int i = 0; i < H * NI; i++) {
                    uint8_t c;
                    do c = (uint8_t)(rng = rng * 6364136223846793005ull + 1442695040888963407ull,
                                     rng >> 56);
                    while (fb_e4m3_is_nan(c) || fabsf(fb_e4m3_lut[c]) > 64);
                    fp8_codes[i] = c;
                    w2[i] = fb_bf16_to_f32(fb_f32_to_bf16(fb_e4m3_lut[c] * fp8_scale));
                }
            }
        }
#undef N
    }
    add_t("model.norm.weight", 1, H, 0, 0.2, 1.0, FB_BF16);
    add_t("lm_head.weight", 2, V, H, 0.2, 0, FB_BF16);
}

static json_t *tiny_config(void) {
    return json_pack("{s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:f,s:i,s:i,s:s,s:b,s:b,s:s,s:i,s:b}",
                     "model_type", "minimax_m2", "hidden_size", H, "intermediate_size", NI, "num_hidden_layers", NL,
                     "num_attention_heads", NH, "num_key_value_heads", NKV, "head_dim", HD,
                     "rotary_dim", RD, "rope_theta", 10000.0, "rms_norm_eps", 1e-6,
                     "num_local_experts", NE, "num_experts_per_tok", K, "scoring_func", "sigmoid",
                     "use_routing_bias", 1, "use_qk_norm", 1, "qk_norm_type", "per_layer",
                     "vocab_size", V, "tie_word_embeddings", 0);
}

static fb_wsrc *mem_source(json_t *cfg) {
    fb_wsrc *s = fb_wsrc_mem_new(cfg);
    fb_err err;
    for (int i = 0; i < nT; i++)
        if (fb_wsrc_mem_add(s, T[i].name, T[i].ndim, T[i].shape, T[i].d, &err)) {
            fprintf(stderr, "%s\n", err.msg);
            exit(1);
        }
    return s;
}

// ---- the naive double reference ------------------------------------------------------------

typedef struct ref_stats {
    double qkv_max[NL], o_max[NL], w13_max[NL], w2_max[NL][NE], sal[NL][NE];
    int64_t cnt[NL][NE];
} ref_stats;

static void ref_rms(const double *x, const float *w, int n, double *y) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double inv = 1 / sqrt(ss / n + 1e-6);
    for (int i = 0; i < n; i++) y[i] = w[i] * x[i] * inv;
}

static void ref_lin(const float *W, const double *x, int out, int in, double *y) {
    for (int o = 0; o < out; o++) {
        double s = 0;
        for (int i = 0; i < in; i++) s += (double)W[(size_t)o * in + i] * x[i];
        y[o] = s;
    }
}

// Runs the reference on the sequences; hl[l] = hidden after layer l, logits at the end.
static void ref_forward(const int32_t *ids, int ntok, const size_t *starts, int nseq,
                        double *hl /* [NL][ntok][H] */, double *logits, ref_stats *rs) {
    memset(rs, 0, sizeof *rs);
    double *h = malloc(sizeof(double) * ntok * H);
    const float *emb = get("model.embed_tokens.weight", 0, 0);
    for (int t = 0; t < ntok; t++)
        for (int d = 0; d < H; d++) h[t * H + d] = emb[ids[t] * H + d];
    double *q = malloc(sizeof(double) * ntok * NH * HD), *k = malloc(sizeof(double) * ntok * NKV * HD),
           *v = malloc(sizeof(double) * ntok * NKV * HD);
    for (int l = 0; l < NL; l++) {
        const float *ln1 = get("model.layers.%d.input_layernorm.weight", l, 0);
        const float *ln2 = get("model.layers.%d.post_attention_layernorm.weight", l, 0);
        double xn[H], ao[NH * HD], o[H];
        for (int t = 0; t < ntok; t++) {
            ref_rms(h + t * H, ln1, H, xn);
            for (int d = 0; d < H; d++) rs->qkv_max[l] = fmax(rs->qkv_max[l], fabs(xn[d]));
            ref_lin(get("model.layers.%d.self_attn.q_proj.weight", l, 0), xn, NH * HD, H, q + t * NH * HD);
            ref_lin(get("model.layers.%d.self_attn.k_proj.weight", l, 0), xn, NKV * HD, H, k + t * NKV * HD);
            ref_lin(get("model.layers.%d.self_attn.v_proj.weight", l, 0), xn, NKV * HD, H, v + t * NKV * HD);
            double tmp[NH * HD];
            memcpy(tmp, q + t * NH * HD, sizeof tmp);
            ref_rms(tmp, get("model.layers.%d.self_attn.q_norm.weight", l, 0), NH * HD, q + t * NH * HD);
            memcpy(tmp, k + t * NKV * HD, sizeof(double) * NKV * HD);
            ref_rms(tmp, get("model.layers.%d.self_attn.k_norm.weight", l, 0), NKV * HD, k + t * NKV * HD);
        }
        for (int s = 0; s < nseq; s++) {
            int t0 = (int)starts[s], L = (int)(starts[s + 1] - starts[s]);
            for (int p = 0; p < L; p++) {  // rope at position p
                double *qs[2] = {q + (t0 + p) * NH * HD, k + (t0 + p) * NKV * HD};
                int nh[2] = {NH, NKV};
                for (int z = 0; z < 2; z++)
                    for (int hh = 0; hh < nh[z]; hh++)
                        for (int i = 0; i < RD / 2; i++) {
                            double a = p / pow(10000.0, 2.0 * i / RD);
                            double *x = qs[z] + hh * HD;
                            double x1 = x[i], x2 = x[i + RD / 2];
                            x[i] = x1 * cos(a) - x2 * sin(a);
                            x[i + RD / 2] = x2 * cos(a) + x1 * sin(a);
                        }
            }
            for (int p = 0; p < L; p++) {
                int t = t0 + p;
                for (int hh = 0; hh < NH; hh++) {
                    int g = hh / (NH / NKV);
                    double sc[4096], mx = -1e300, sum = 0;
                    for (int j = 0; j <= p; j++) {
                        double d = 0;
                        for (int i = 0; i < HD; i++) d += q[t * NH * HD + hh * HD + i] * k[(t0 + j) * NKV * HD + g * HD + i];
                        sc[j] = d / sqrt((double)HD);
                        mx = fmax(mx, sc[j]);
                    }
                    for (int j = 0; j <= p; j++) sum += sc[j] = exp(sc[j] - mx);
                    for (int i = 0; i < HD; i++) {
                        double a = 0;
                        for (int j = 0; j <= p; j++) a += sc[j] / sum * v[(t0 + j) * NKV * HD + g * HD + i];
                        ao[hh * HD + i] = a;
                    }
                }
                for (int d = 0; d < NH * HD; d++) rs->o_max[l] = fmax(rs->o_max[l], fabs(ao[d]));
                ref_lin(get("model.layers.%d.self_attn.o_proj.weight", l, 0), ao, H, NH * HD, o);
                for (int d = 0; d < H; d++) h[t * H + d] += o[d];
            }
        }
        const float *gate = get("model.layers.%d.block_sparse_moe.gate.weight", l, 0);
        const float *bias = get("model.layers.%d.block_sparse_moe.e_score_correction_bias", l, 0);
        double *mo = calloc((size_t)ntok * H, sizeof(double));
        for (int t = 0; t < ntok; t++) {
            ref_rms(h + t * H, ln2, H, xn);
            for (int d = 0; d < H; d++) rs->w13_max[l] = fmax(rs->w13_max[l], fabs(xn[d]));
            double lg[NE], sg[NE];
            ref_lin(gate, xn, NE, H, lg);
            int ch[NE] = {0}, sel[K];
            for (int e = 0; e < NE; e++) sg[e] = 1 / (1 + exp(-lg[e]));
            for (int j = 0; j < K; j++) {
                int best = -1;
                for (int e = 0; e < NE; e++)
                    if (!ch[e] && (best < 0 || sg[e] + bias[e] > sg[best] + bias[best])) best = e;
                ch[best] = 1;
            }
            double wsum = 0;
            for (int e = 0, j = 0; e < NE; e++) if (ch[e]) { sel[j++] = e; wsum += sg[e]; }
            for (int e = 0; e < NE; e++) {  // every expert sees every token (observers)
                double g1[NI], u3[NI], y[H];
                ref_lin(get("model.layers.%d.block_sparse_moe.experts.%d.w1.weight", l, e), xn, NI, H, g1);
                ref_lin(get("model.layers.%d.block_sparse_moe.experts.%d.w3.weight", l, e), xn, NI, H, u3);
                for (int i = 0; i < NI; i++) {
                    g1[i] = g1[i] / (1 + exp(-g1[i])) * u3[i];
                    rs->w2_max[l][e] = fmax(rs->w2_max[l][e], fabs(g1[i]));
                }
                if (!ch[e]) continue;
                ref_lin(get("model.layers.%d.block_sparse_moe.experts.%d.w2.weight", l, e), g1, H, NI, y);
                double wt = sg[e] / wsum, nrm = 0;
                for (int d = 0; d < H; d++) { mo[t * H + d] += wt * y[d]; nrm += y[d] * y[d]; }
                rs->cnt[l][e]++;
                rs->sal[l][e] += wt * sqrt(nrm);
            }
            (void)sel;
        }
        for (int i = 0; i < ntok * H; i++) h[i] += mo[i];
        free(mo);
        memcpy(hl + (size_t)l * ntok * H, h, sizeof(double) * ntok * H);
    }
    const float *nw = get("model.norm.weight", 0, 0), *head = get("lm_head.weight", 0, 0);
    for (int t = 0; t < ntok; t++) {
        double xn[H];
        ref_rms(h + t * H, nw, H, xn);
        ref_lin(head, xn, V, H, logits + (size_t)t * V);
    }
    free(h); free(q); free(k); free(v);
}

// Runs the engine over all layers; copies hidden states per layer and the logits.
static int run_engine(fb_wsrc *src, const fb_model_config *cfg, fb_fwd_opts *o, const int32_t *ids,
                      int ntok, const size_t *starts, int nseq, float *hl, float *logits) {
    fb_err err;
    fb_fwd *f = fb_fwd_new(src, cfg, o, &err);
    if (!f) { fprintf(stderr, "%s\n", err.msg); return -1; }
    if (fb_fwd_set_tokens(f, ids, (size_t)ntok, starts, (size_t)nseq, &err)) goto fail;
    for (int l = 0; l < cfg->n_layers; l++) {
        if (fb_fwd_layer(f, l, &err)) goto fail;
        if (hl) memcpy(hl + (size_t)l * ntok * cfg->hidden, fb_fwd_hidden(f),
                       sizeof(float) * (size_t)ntok * cfg->hidden);
    }
    if (logits && fb_fwd_logits(f, 0, (size_t)ntok, logits, &err)) goto fail;
    fb_fwd_free(f);
    return 0;
fail:
    fprintf(stderr, "engine: %s\n", err.msg);
    fb_fwd_free(f);
    return -1;
}

static double max_rel(const float *a, const double *b, size_t n) {
    double m = 0, scale = 0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(b[i]));
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i] - b[i]));
    return m / (scale > 0 ? scale : 1);
}

static double max_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m;
}

// ---- 4. write the model as a safetensors file ----------------------------------------------

static int write_st(const char *path) {
    json_t *hdr = json_object();
    uint64_t off = 0;
    size_t nb[200];
    for (int i = 0; i < nT; i++) {
        size_t n = (size_t)(T[i].shape[0] * (T[i].ndim > 1 ? T[i].shape[1] : 1));
        nb[i] = n * (size_t)fb_dtypes[T[i].dt].bits / 8;
        json_t *sh = T[i].ndim > 1 ? json_pack("[I,I]", T[i].shape[0], T[i].shape[1])
                                   : json_pack("[I]", T[i].shape[0]);
        json_object_set_new(hdr, T[i].name, json_pack("{s:s,s:o,s:[I,I]}", "dtype",
                            fb_dtypes[T[i].dt].name, "shape", sh, "data_offsets",
                            (json_int_t)off, (json_int_t)(off + nb[i])));
        off += nb[i];
    }
    char sname[160];
    snprintf(sname, sizeof sname, "%s_scale_inv", fp8_name);
    json_object_set_new(hdr, sname, json_pack("{s:s,s:[i,i],s:[I,I]}", "dtype", "F32", "shape",
                                              1, 1, "data_offsets", (json_int_t)off,
                                              (json_int_t)(off + 4)));
    char *js = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(hdr);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    uint64_t jl = strlen(js);
    fwrite(&jl, 8, 1, f);
    fwrite(js, 1, jl, f);
    free(js);
    for (int i = 0; i < nT; i++) {
        size_t n = nb[i] * 8 / (size_t)fb_dtypes[T[i].dt].bits;
        if (T[i].dt == FB_F32) fwrite(T[i].d, 4, n, f);
        else if (T[i].dt == FB_F8_E4M3) fwrite(fp8_codes, 1, n, f);
        else for (size_t j = 0; j < n; j++) {
            uint16_t b = fb_f32_to_bf16(T[i].d[j]);
            fwrite(&b, 2, 1, f);
        }
    }
    fwrite(&fp8_scale, 4, 1, f);
    return fclose(f);
}

// ---- 5. the embedded model against transformers --------------------------------------------



// ---- 5. the embedded model against transformers (scripts/make-model-reference.py) ---------
// reference.safetensors: input_ids [S, T] i32, topk_values/indices [S, T, 16], logsumexp
// [S, T], logits_seq0 [P, V]; hidden-states.safetensors: hidden_seq0 [L+2, P, H] (embeddings,
// each layer's output, final norm), router_topk_index/weight_seq0 [L, P, k].
// Tolerances (f32 forward, different summation order than torch; measured 7e-7 / 1e-12):
// hidden states max abs diff <= 2e-5 x (1 + max |h|) per layer, identical router choices,
// routing weights within 1e-5, top-1 agreement 100%, mean KL < 1e-6 (the issue asks < 1e-3),
// logsumexp within 1e-3.
#define MODEL_DIR "models/tiny-minimax-m2"
#define GOLD_MODEL GOLDEN_DIR "/model"

static void *st_tensor(fb_st_file *f, const char *name, fb_dtype dt, int ndim, int64_t *shape) {
    const fb_st_tensor *t = fb_st_find(f, name);
    if (!t || t->dtype != dt || t->ndim != ndim) {
        CHECK(0, "%s: tensor %s missing or not %s with %d dims", f->path, name, fb_dtypes[dt].name, ndim);
        return NULL;
    }
    void *p;
    fb_err err;
    if (fb_st_read_all(f, t, &p, &err)) { CHECK(0, "%s", err.msg); return NULL; }
    for (int i = 0; i < ndim; i++) shape[i] = t->shape[i];
    return p;
}

static double log_softmax_at(const float *lg, size_t V_, size_t i, double *lse_out) {
    double m = -INFINITY, s = 0;
    for (size_t v = 0; v < V_; v++) m = fmax(m, lg[v]);
    for (size_t v = 0; v < V_; v++) s += exp(lg[v] - m);
    double lse = m + log(s);
    if (lse_out) *lse_out = lse;
    return lg[i] - lse;
}

static void test_golden_model(void) {
    if (access(MODEL_DIR "/config.json", R_OK) || access(GOLD_MODEL "/reference.safetensors", R_OK) ||
        access(GOLD_MODEL "/hidden-states.safetensors", R_OK)) {
        printf("golden model: %s or %s not present yet: skipped\n", MODEL_DIR, GOLD_MODEL);
        return;
    }
    fb_err err;
    fb_wsrc *src = fb_wsrc_open_ckpt(MODEL_DIR, &err);
    REQUIRE(src, "%s", err.msg);
    fb_model_config c;
    REQUIRE(src->config && fb_model_config_parse(src->config, &c, &err) == 0, "%s", err.msg);
    fb_st_file *rf, *hf;
    REQUIRE(fb_st_open(GOLD_MODEL "/reference.safetensors", &rf, &err) == 0, "%s", err.msg);
    REQUIRE(fb_st_open(GOLD_MODEL "/hidden-states.safetensors", &hf, &err) == 0, "%s", err.msg);
    int64_t si[3], stv[3], sti[3], sl[2], slg[2], sh[3], sri[3], srw[3];
    int32_t *ids = st_tensor(rf, "input_ids", FB_I32, 2, si);
    float *topv = st_tensor(rf, "topk_values", FB_F32, 3, stv);
    int32_t *topi = st_tensor(rf, "topk_indices", FB_I32, 3, sti);
    float *lse = st_tensor(rf, "logsumexp", FB_F32, 2, sl);
    float *lg0 = st_tensor(rf, "logits_seq0", FB_F32, 2, slg);
    float *hid = st_tensor(hf, "hidden_seq0", FB_F32, 3, sh);
    int32_t *ridx = st_tensor(hf, "router_topk_index_seq0", FB_I32, 3, sri);
    float *rwt = st_tensor(hf, "router_topk_weight_seq0", FB_F32, 3, srw);
    REQUIRE(ids && topv && topi && lse && lg0 && hid && ridx && rwt, "golden tensors");
    size_t S = (size_t)si[0], Tn = (size_t)si[1], KK = (size_t)stv[2], P = (size_t)slg[0];
    size_t Hh = (size_t)c.hidden, Vv = (size_t)c.vocab, L = (size_t)c.n_layers, k = (size_t)c.top_k;
    REQUIRE(sh[0] == (int64_t)L + 2 && sh[1] == (int64_t)P && sh[2] == (int64_t)Hh &&
            slg[1] == (int64_t)Vv && sri[0] == (int64_t)L && sri[2] == (int64_t)k, "golden shapes");
    size_t *starts = malloc((S + 1) * sizeof(size_t));
    for (size_t s = 0; s <= S; s++) starts[s] = s * Tn;
    fb_fwd_opts o = {.threads = 2, .all_experts = 1};
    fb_fwd *f = fb_fwd_new(src, &c, &o, &err);
    REQUIRE(f && fb_fwd_set_tokens(f, ids, S * Tn, starts, S, &err) == 0, "%s", err.msg);
    // Embeddings, then every layer: seq 0's first P positions against the reference.
    double worst = 0;
    for (size_t l = 0; l <= L; l++) {
        if (l > 0) {
            REQUIRE(fb_fwd_layer(f, (int)l - 1, &err) == 0, "%s", err.msg);
            // Router choices of seq 0 (sorted by expert id on both sides).
            const int32_t *ei = fb_fwd_route_idx(f);
            const float *ew = fb_fwd_route_w(f);
            size_t mism = 0;
            double wd = 0;
            for (size_t p = 0; p < P; p++)
                for (size_t j = 0; j < k; j++) {
                    size_t gi = ((l - 1) * P + p) * k + j;
                    if (ei[p * k + j] != ridx[gi]) mism++;
                    else wd = fmax(wd, fabs(ew[p * k + j] - rwt[gi]));
                }
            CHECK(mism == 0, "layer %zu: %zu router choices differ from transformers", l - 1, mism);
            CHECK(wd < 1e-5, "layer %zu: routing weights max diff %.3g", l - 1, wd);
        }
        const float *h = fb_fwd_hidden(f), *ref = hid + l * P * Hh;
        double md = 0, mx = 0;
        for (size_t i = 0; i < P * Hh; i++) {
            md = fmax(md, fabs((double)h[i] - ref[i]));
            mx = fmax(mx, fabs(ref[i]));
        }
        double rel = md / (1 + mx);
        worst = fmax(worst, rel);
        CHECK(rel < 2e-5, "%s %zu: hidden max abs diff %.3g (max |h| %.3g)",
              l ? "layer" : "embeddings", l ? l - 1 : 0, md, mx);
        if (l == 0) CHECK(md == 0, "embeddings must be exact: %.3g", md);
    }
    // Logits of every position: top-1 agreement, logsumexp, top-k values; full-vocab KL on
    // seq 0's first P positions, KL on (top-k + rest) elsewhere (a lower bound of the true KL).
    float *lg = malloc(sizeof(float) * Tn * Vv);
    size_t agree = 0, npos = 0;
    double kl_full = 0, kl_coarse = 0, lse_d = 0, topv_d = 0;
    size_t n_full = 0, n_coarse = 0;
    for (size_t s = 0; s < S; s++) {
        REQUIRE(fb_fwd_logits(f, s * Tn, Tn, lg, &err) == 0, "%s", err.msg);
        for (size_t t = 0; t < Tn; t++) {
            const float *x = lg + t * Vv;
            size_t g = (s * Tn + t);
            size_t am = 0;
            for (size_t v = 1; v < Vv; v++) if (x[v] > x[am]) am = v;
            agree += (int32_t)am == topi[g * KK];
            npos++;
            double mylse;
            log_softmax_at(x, Vv, 0, &mylse);
            lse_d = fmax(lse_d, fabs(mylse - lse[g]));
            for (size_t j = 0; j < KK; j++)
                topv_d = fmax(topv_d, fabs(x[topi[g * KK + j]] - topv[g * KK + j]));
            if (s == 0 && t < P) {
                const float *r = lg0 + t * Vv;
                double rl;
                log_softmax_at(r, Vv, 0, &rl);
                double kl = 0;
                for (size_t v = 0; v < Vv; v++) {
                    double lp = r[v] - rl, lq = x[v] - mylse;
                    kl += exp(lp) * (lp - lq);
                }
                kl_full += kl;
                n_full++;
            } else {
                double kl = 0, pr = 0, qr = 0;
                for (size_t j = 0; j < KK; j++) {
                    double lp = topv[g * KK + j] - lse[g], lq = x[topi[g * KK + j]] - mylse;
                    kl += exp(lp) * (lp - lq);
                    pr += exp(lp);
                    qr += exp(lq);
                }
                if (1 - pr > 1e-12 && 1 - qr > 1e-12) kl += (1 - pr) * log((1 - pr) / (1 - qr));
                kl_coarse += kl;
                n_coarse++;
            }
        }
    }
    double mkl = kl_full / (double)(n_full ? n_full : 1);
    CHECK(agree == npos, "top-1 agreement %zu / %zu", agree, npos);
    CHECK(mkl < 1e-6, "mean KL (full vocabulary, seq 0) %.3g", mkl);
    CHECK(kl_coarse / (double)(n_coarse ? n_coarse : 1) < 1e-6, "mean KL (top-%zu + rest) %.3g", KK,
          kl_coarse / (double)(n_coarse ? n_coarse : 1));
    CHECK(lse_d < 1e-3, "logsumexp max diff %.3g", lse_d);
    printf("golden model: top-1 %zu/%zu, mean KL full %.3g (%zu pos), top-%zu+rest %.3g (%zu pos), "
           "logsumexp max diff %.3g, top-k logit max diff %.3g, hidden worst rel %.3g\n", agree, npos,
           mkl, n_full, KK, kl_coarse / (double)(n_coarse ? n_coarse : 1), n_coarse, lse_d, topv_d, worst);
    fb_fwd_free(f);
    free(lg); free(starts); free(ids); free(topv); free(topi); free(lse); free(lg0); free(hid);
    free(ridx); free(rwt);
    fb_st_close(rf);
    fb_st_close(hf);
    fb_wsrc_close(src);
}

// `test_forward --write-fixture DIR`: writes the random tiny model as a checkpoint directory
// (config.json + model.safetensors) for tests/t_calibrate.sh, and exits.
static int write_fixture(const char *dir) {
    char p[1024];
    make_model();
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    if (write_st(p)) { fprintf(stderr, "cannot write %s\n", p); return 1; }
    json_t *cj = tiny_config();
    json_object_set_new(cj, "model_type", json_string("minimax_m2"));
    json_object_set_new(cj, "quantization_config",
                        json_pack("{s:s,s:s,s:s,s:[i,i]}", "quant_method", "fp8", "fmt",
                                  "float8_e4m3fn", "activation_scheme", "dynamic",
                                  "weight_block_size", 128, 128));
    snprintf(p, sizeof p, "%s/config.json", dir);
    int rc = json_dump_file(cj, p, JSON_INDENT(2));
    json_decref(cj);
    return rc ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--write-fixture")) return write_fixture(argv[2]);
    test_kernels();

    {   // the overlay: put (copied) and put_owned (taken: no copy), replace in place, read back
        fb_wsrc *base = fb_wsrc_mem_new(NULL), *ov = fb_wsrc_overlay_new(base);
        int64_t sh[2] = {2, 3}, sh6[1] = {6}, sh4[1] = {4};
        float a[6] = {1, 2, 3, 4, 5, 6}, got[6];
        fb_err e2;
        REQUIRE(fb_wsrc_mem_add(base, "w", 2, sh, a, &e2) == 0, "%s", e2.msg);
        float *own = fb_malloc(6 * sizeof(float));
        for (int i = 0; i < 6; i++) own[i] = -(float)i;
        CHECK(fb_wsrc_overlay_put_owned(ov, "w", 2, sh, &own, &e2) == 0 && own == NULL, "put_owned takes the buffer");
        CHECK(fb_wsrc_load_full(ov, "w", 2, sh, got, &e2) == 0 && got[5] == -5.0f && got[0] == 0.0f,
              "the overlay's taken tensor replaces the base's: %g", (double)got[5]);
        own = fb_malloc(6 * sizeof(float));
        for (int i = 0; i < 6; i++) own[i] = 10.0f + (float)i;
        CHECK(fb_wsrc_overlay_put_owned(ov, "w", 1, sh6, &own, &e2) == 0 && own == NULL, "put_owned replaces in place");
        CHECK(fb_wsrc_load_full(ov, "w", 2, sh, got, &e2) == 0 && got[1] == 11.0f, "replaced: %g", (double)got[1]);
        own = fb_malloc(4 * sizeof(float));
        CHECK(fb_wsrc_overlay_put_owned(ov, "w", 1, sh4, &own, &e2) != 0 && own != NULL && strstr(e2.msg, "changes size"),
              "a size change is refused and the buffer stays the caller's: %s", e2.msg);
        free(own);
        CHECK(fb_wsrc_overlay_put(ov, "w", 2, sh, a, &e2) == 0 && fb_wsrc_load_full(ov, "w", 2, sh, got, &e2) == 0 &&
              got[2] == 3.0f, "put copies over a taken tensor");
        fb_wsrc_overlay_clear(ov);
        CHECK(fb_wsrc_load_full(ov, "w", 2, sh, got, &e2) == 0 && got[4] == 5.0f, "cleared: the base's again");
        // gather: repeated, unsorted ids, some within one 64-row read and some apart
        static float tab[200 * 3];
        for (int i = 0; i < 600; i++) tab[i] = (float)i;
        int64_t ts[2] = {200, 3};
        REQUIRE(fb_wsrc_mem_add(base, "emb", 2, ts, tab, &e2) == 0, "%s", e2.msg);
        const int32_t gi[] = {5, 199, 5, 0, 70, 63, 64, 130, 199, 1};
        float gout[10 * 3];
        CHECK(fb_wsrc_gather_rows(ov, "emb", 3, gi, 10, gout, &e2) == 0, "gather: %s", e2.msg);
        int same = 1;
        for (int t = 0; t < 10; t++)
            for (int c = 0; c < 3; c++) same &= gout[t * 3 + c] == tab[gi[t] * 3 + c];
        CHECK(same, "gathered rows are the ids' rows in token order");
        fb_wsrc_close(ov);
        fb_wsrc_close(base);
    }

    make_model();
    json_t *cj = tiny_config();
    fb_model_config cfg;
    fb_err err;
    REQUIRE(fb_model_config_parse(cj, &cfg, &err) == 0, "%s", err.msg);
    CHECK(cfg.rotary_dim == RD && cfg.n_kv_heads == NKV && cfg.use_routing_bias, "config parse");
    {   // config refusals
        json_t *bad = json_deep_copy(cj);
        json_object_set_new(bad, "partial_rotary_factor", json_real(0.25));
        CHECK(fb_model_config_parse(bad, &cfg, &err) != 0 && strstr(err.msg, "rotary"),
              "rotary_dim vs partial_rotary_factor: %s", err.msg);
        json_object_del(bad, "rotary_dim");
        CHECK(fb_model_config_parse(bad, &cfg, &err) == 0 && cfg.rotary_dim == 4,
              "partial_rotary_factor alone -> %d", cfg.rotary_dim);
        static const double wild[] = {3.76889e45, 1.5, -0.5, 0};   // fuzzer's 3.77e45 overflowed (int)
        for (size_t w = 0; w < sizeof wild / sizeof *wild; w++) {
            json_object_set_new(bad, "partial_rotary_factor", json_real(wild[w]));
            CHECK(fb_model_config_parse(bad, &cfg, &err) != 0 && strstr(err.msg, "partial_rotary_factor"),
                  "partial_rotary_factor %g refused: %s", wild[w], err.msg);
        }
        json_object_set_new(bad, "partial_rotary_factor", json_real(0.25));
        json_t *qc = json_pack("{s:s, s:[I, i]}", "quant_method", "fp8", "weight_block_size",
                               (json_int_t)1 << 40, 128);
        json_object_set_new(bad, "quantization_config", qc);
        CHECK(fb_model_config_parse(bad, &cfg, &err) != 0 && strstr(err.msg, "weight_block_size"),
              "weight_block_size 2^40 refused: %s", err.msg);
        json_object_del(bad, "quantization_config");
        json_object_set_new(bad, "scoring_func", json_string("softmax"));
        CHECK(fb_model_config_parse(bad, &cfg, &err) != 0 && strstr(err.msg, "scoring_func"),
              "softmax scoring refused: %s", err.msg);
        json_decref(bad);
        REQUIRE(fb_model_config_parse(cj, &cfg, &err) == 0, "%s", err.msg);
    }
    fb_wsrc *mem = mem_source(cj);

    // Three sequences of different lengths (one longer than the query block of 4 used below).
    enum { NTOK = 23 };
    int32_t ids[NTOK];
    for (int i = 0; i < NTOK; i++) ids[i] = (int32_t)((i * 7 + 3) % V);
    size_t starts[4] = {0, 11, 14, NTOK};
    double *rh = malloc(sizeof(double) * NL * NTOK * H), *rl = malloc(sizeof(double) * NTOK * V);
    ref_stats rs;
    ref_forward(ids, NTOK, starts, 3, rh, rl, &rs);

    float *hA = malloc(sizeof(float) * NL * NTOK * H), *lA = malloc(sizeof(float) * NTOK * V);
    float *hB = malloc(sizeof(float) * NL * NTOK * H), *lB = malloc(sizeof(float) * NTOK * V);
    fb_calib_stats *st = fb_calib_stats_new(NL, NE);
    fb_fwd_opts o = {.threads = 1, .all_experts = 1, .stats = st, .q_block = 4};
    REQUIRE(run_engine(mem, &cfg, &o, ids, NTOK, starts, 3, hA, lA) == 0, "engine run");
    for (int l = 0; l < NL; l++) {
        double d = max_rel(hA + (size_t)l * NTOK * H, rh + (size_t)l * NTOK * H, NTOK * H);
        CHECK(d < 2e-5, "layer %d hidden vs double reference: max rel %.3g", l, d);
    }
    double dl = max_rel(lA, rl, NTOK * V);
    CHECK(dl < 2e-5, "logits vs double reference: max rel %.3g", dl);
    printf("tiny model vs f64 reference: logits max rel diff %.3g\n", dl);

    // Statistics against the reference.
    for (int l = 0; l < NL; l++) {
        int64_t tot = 0;
        CHECK(fabs(st->qkv_absmax[l] - rs.qkv_max[l]) < 1e-5 * rs.qkv_max[l], "qkv absmax L%d %g %g",
              l, (double)st->qkv_absmax[l], rs.qkv_max[l]);
        CHECK(fabs(st->o_absmax[l] - rs.o_max[l]) < 1e-4 * rs.o_max[l], "o absmax L%d %g %g", l,
              (double)st->o_absmax[l], rs.o_max[l]);
        for (int e = 0; e < NE; e++) {
            size_t i = (size_t)l * NE + e;
            tot += st->counts[i];
            CHECK(st->counts[i] == rs.cnt[l][e], "count L%d E%d %lld %lld", l, e,
                  (long long)st->counts[i], (long long)rs.cnt[l][e]);
            CHECK(fabs(st->w13_absmax[i] - rs.w13_max[l]) < 1e-5 * rs.w13_max[l],
                  "w13 absmax L%d E%d", l, e);
            CHECK(fabs(st->w2_absmax[i] - rs.w2_max[l][e]) < 1e-4 * rs.w2_max[l][e],
                  "w2 absmax L%d E%d %g %g", l, e, (double)st->w2_absmax[i], rs.w2_max[l][e]);
            CHECK(fabs(st->sal_sum[i] - rs.sal[l][e]) < 1e-4 * (rs.sal[l][e] + 1e-9),
                  "saliency L%d E%d %g %g", l, e, st->sal_sum[i], rs.sal[l][e]);
        }
        CHECK(tot == (int64_t)NTOK * K, "routed total L%d %lld", l, (long long)tot);
        CHECK(st->done[l] && st->h_absmax[l] > 0 && st->norm_max[l] > 0, "hidden norms L%d", l);
    }
    CHECK(st->n_tokens == NTOK && st->all_experts == 1, "stats header");

    // 3. Routed mode, 2 threads, groups of 3 experts, chunks of 5 tokens, query blocks of 256.
    fb_calib_stats *st2 = fb_calib_stats_new(NL, NE);
    fb_fwd_opts o2 = {.threads = 2, .all_experts = 0, .stats = st2, .expert_group = 3,
                      .token_chunk = 5};
    REQUIRE(run_engine(mem, &cfg, &o2, ids, NTOK, starts, 3, hB, lB) == 0, "engine run 2");
    double dh = max_diff(hA, hB, (size_t)NL * NTOK * H);
    CHECK(dh < 1e-5, "routed/2 threads/groups vs all-experts: hidden max diff %.3g", dh);
    CHECK(max_diff(lA, lB, NTOK * V) < 1e-5, "routed vs all-experts logits");
    for (int l = 0; l < NL; l++)
        for (int e = 0; e < NE; e++) {
            size_t i = (size_t)l * NE + e;
            CHECK(st2->counts[i] == st->counts[i], "routed-mode counts");
            // Routed mode observes routed tokens only: never more than all-experts mode.
            CHECK(st2->w13_absmax[i] <= st->w13_absmax[i] && st2->w2_absmax[i] <= st->w2_absmax[i] * (1 + 1e-6),
                  "routed absmax <= all-experts absmax L%d E%d", l, e);
            CHECK(fabs(st2->sal_sum[i] - st->sal_sum[i]) <= 1e-5 * (st->sal_sum[i] + 1e-9), "routed saliency");
        }

    // Statistics file round trip.
    char sp[] = "/tmp/fourbit-test-stats-XXXXXX";
    int fd = mkstemp(sp);
    REQUIRE(fd >= 0, "mkstemp");
    close(fd);
    const char *mk[] = {"tool", "seed"}, *mv[] = {"test_forward", "7"};
    REQUIRE(fb_calib_stats_write(st, sp, 2, mk, mv, &err) == 0, "%s", err.msg);
    fb_calib_stats *rd = NULL;
    REQUIRE(fb_calib_stats_read(sp, &rd, &err) == 0, "%s", err.msg);
    int same = rd->n_tokens == st->n_tokens && rd->all_experts == 1;
    for (int i = 0; i < NL * NE; i++)
        same &= rd->counts[i] == st->counts[i] && rd->sal_sum[i] == st->sal_sum[i] &&
                rd->w13_absmax[i] == st->w13_absmax[i] && rd->w2_absmax[i] == st->w2_absmax[i];
    for (int l = 0; l < NL; l++)
        same &= rd->qkv_absmax[l] == st->qkv_absmax[l] && rd->o_absmax[l] == st->o_absmax[l] &&
                rd->done[l] && rd->norm_max[l] == st->norm_max[l];
    CHECK(same, "statistics file round trip");
    float v;
    CHECK(fb_calib_stats_absmax(rd, "model.layers.1.self_attn.k_proj", &v) == 0 &&
          v == st->qkv_absmax[1], "absmax lookup k_proj");
    CHECK(fb_calib_stats_absmax(rd, "model.layers.1.block_sparse_moe.experts.5.w2", &v) == 0 &&
          v == st->w2_absmax[NE + 5], "absmax lookup w2");
    CHECK(fb_calib_stats_absmax(rd, "model.layers.1.block_sparse_moe.gate", &v) != 0,
          "no absmax for the router gate");
    CHECK(fb_calib_stats_absmax(rd, "model.layers.1.self_attn.q_proj.weight", &v) != 0,
          "module names only");
    fb_calib_stats_free(rd);
    CHECK(fb_calib_stats_merge(st, st2, &err) != 0, "merge refuses all-experts + routed");
    unlink(sp);

    // 4. The same model from a safetensors file (BF16 + F32 router + one FP8 tensor).
    char cp[] = "/tmp/fourbit-test-model-XXXXXX.safetensors";
    fd = mkstemps(cp, 12);
    REQUIRE(fd >= 0, "mkstemps");
    close(fd);
    REQUIRE(write_st(cp) == 0, "write %s", cp);
    fb_wsrc *ck = fb_wsrc_open_ckpt(cp, &err);
    REQUIRE(ck, "open checkpoint: %s", err.msg);
    fb_fwd_opts o3 = {.threads = 1, .all_experts = 1, .q_block = 4};
    REQUIRE(run_engine(ck, &cfg, &o3, ids, NTOK, starts, 3, hB, lB) == 0, "engine run ckpt");
    CHECK(memcmp(hA, hB, sizeof(float) * NL * NTOK * H) == 0 &&
          memcmp(lA, lB, sizeof(float) * NTOK * V) == 0,
          "checkpoint source (BF16/F32/FP8) bit-identical to memory: max diff %.3g",
          max_diff(lA, lB, NTOK * V));
    {   // a bad token id is an error naming it
        fb_fwd *f = fb_fwd_new(ck, &cfg, &o3, &err);
        int32_t bad[2] = {1, V + 5};
        size_t bs[2] = {0, 2};
        CHECK(fb_fwd_set_tokens(f, bad, 2, bs, 1, &err) != 0 && strstr(err.msg, "vocabulary"),
              "bad id: %s", err.msg);
        fb_fwd_free(f);
    }
    fb_wsrc_close(ck);
    unlink(cp);

    test_golden_model();
    fb_wsrc_close(mem);
    json_decref(cj);
    fb_calib_stats_free(st);
    fb_calib_stats_free(st2);
    free(rh); free(rl); free(hA); free(lA); free(hB); free(lB);
    for (int i = 0; i < nT; i++) free(T[i].d);
    TEST_MAIN_END();
}
