// validate_pass.c: the validation pass (see validate.h for the rules and their order).
//
// The pass works on module records: every tensor name of a checkpoint is parsed into (module
// kind, layer, expert, suffix) by the module table, which comes from the architecture table
// (src/arch/: MiniMax-M2, Qwen3-MoE); a module record holds which
// suffixes are present. The scheme vLLM will build for each module comes from the declared
// quantization config (compressed-tensors, ModelOpt, FP8 block, AutoRound/GPTQ or none),
// simulating vLLM's own matching (vLLM prefixes: qkv_proj, mlp.experts, not MiniMax-M2's
// block_sparse_moe). The scheme says which suffixes are registered parameters (anything else
// is the KeyError of the family's load_weights, e.g. MiniMaxM2Model's), which are required (absent = torch.empty
// garbage), and their dtypes and shapes.
#include <fnmatch.h>
#include <math.h>
#include <stdarg.h>
#include <string.h>

#include "arch/arch.h"
#include "quant/formats.h"
#include "quant/match.h"
#include "quant/scheme.h"
#include "quant/validate_priv.h"

// ---- module kinds and suffixes ---------------------------------------------------------------

enum {
    MK_EMBED, MK_LMHEAD, MK_NORM,                                   // top level
    MK_LN_IN, MK_LN_POST, MK_Q, MK_K, MK_V, MK_O, MK_QNORM, MK_KNORM,
    MK_GATE, MK_BIAS, MK_ROTARY,                                    // per layer
    MK_W1, MK_W2, MK_W3,                                            // per expert
    MK_COUNT
};
#define MK_FIRST_LAYER MK_LN_IN
#define N_LSLOTS (MK_ROTARY - MK_LN_IN + 1)  // fixed per-layer slots

typedef struct modinfo {
    const char *path;    // checkpoint path (relative to model.layers.L. for per-layer kinds)
    int linear;          // a quantizable Linear in vLLM (q/k/v/o, experts)
} modinfo;

// MK_* -> architecture role (MK_ROTARY has none: a buffer some exports carry).
static const int MK_ROLE[MK_COUNT] = {
    [MK_EMBED] = FB_ROLE_EMBED, [MK_LMHEAD] = FB_ROLE_LM_HEAD, [MK_NORM] = FB_ROLE_FINAL_NORM,
    [MK_LN_IN] = FB_ROLE_LN_IN, [MK_LN_POST] = FB_ROLE_LN_POST,
    [MK_Q] = FB_ROLE_Q, [MK_K] = FB_ROLE_K, [MK_V] = FB_ROLE_V, [MK_O] = FB_ROLE_O,
    [MK_QNORM] = FB_ROLE_Q_NORM, [MK_KNORM] = FB_ROLE_K_NORM,
    [MK_GATE] = FB_ROLE_ROUTER, [MK_BIAS] = FB_ROLE_ROUTER_BIAS, [MK_ROTARY] = -1,
    [MK_W1] = FB_ROLE_W_GATE, [MK_W2] = FB_ROLE_W_DOWN, [MK_W3] = FB_ROLE_W_UP,
};

// The module table of a family: paths from its architecture entry (NULL: it has none).
static void mods_init(const fb_arch *a, modinfo mods[MK_COUNT]) {
    for (int k = 0; k < MK_COUNT; k++) {
        int r = MK_ROLE[k];
        mods[k].path = r >= 0 ? a->role[r].path : "self_attn.rotary_emb";
        mods[k].linear = r >= 0 && fb_role_is_linear((fb_role)r);
    }
}

enum {
    S_WEIGHT, S_BIAS, S_WPACKED, S_WSCALE, S_WGSCALE, S_IGSCALE, S_WSHAPE, S_WGIDX, S_WZP,
    S_WSCALE_INV, S_WSCALE2, S_ISCALE, S_KSCALE, S_VSCALE, S_OSCALE, S_QWEIGHT, S_QZEROS,
    S_SCALES, S_GIDX, S_INVFREQ, S_NONE /* the bias parameter itself */, S_OTHER, NSUF
};
static const char *const SUFNAME[NSUF] = {
    "weight", "bias", "weight_packed", "weight_scale", "weight_global_scale",
    "input_global_scale", "weight_shape", "weight_g_idx", "weight_zero_point",
    "weight_scale_inv", "weight_scale_2", "input_scale", "k_scale", "v_scale", "output_scale",
    "qweight", "qzeros", "scales", "g_idx", "inv_freq", "", "?",
};

// Parsed tensor name.
typedef struct pname {
    int kind;      // MK_* or -1 (not a tensor of the family)
    long layer;    // -1 for top level
    long expert;   // -1 unless an expert
    int suf;       // S_*
} pname;

static int suffix_id(const char *s) {
    for (int i = 0; i < S_NONE; i++)
        if (!strcmp(s, SUFNAME[i])) return i;
    return S_OTHER;
}

static int parse_num(const char **p, long *out) {
    const char *q = *p;
    long v = 0;
    if (*q < '0' || *q > '9') return 0;
    while (*q >= '0' && *q <= '9') {
        if (v > 100000000) return 0;
        v = v * 10 + (*q++ - '0');
    }
    *out = v;
    *p = q;
    return 1;
}

static pname parse_name(const fb_arch *a, const modinfo *MODS, const char *name) {
    pname r = {-1, -1, -1, S_OTHER};
    const char *p = name;
    size_t nl = strlen(a->layers);
    if (!strncmp(p, a->layers, nl) && p[nl] == '.') {
        p += nl + 1;
        long L;
        if (!parse_num(&p, &L) || *p != '.') return r;
        p++;
        r.layer = L;
        const char *ex = a->block[FB_BLOCK_EXPERTS];
        size_t ne = strlen(ex);
        if (!strncmp(p, ex, ne) && p[ne] == '.') {
            const char *q = p + ne + 1;
            long E;
            if (!parse_num(&q, &E) || *q != '.') return r;
            q++;
            for (int k = MK_W1; k <= MK_W3; k++) {
                size_t n = strlen(MODS[k].path);
                if (!strncmp(q, MODS[k].path, n) && q[n] == '.') {
                    r.kind = k;
                    r.expert = E;
                    r.suf = suffix_id(q + n + 1);
                    return r;
                }
            }
            return r;
        }
        for (int k = MK_FIRST_LAYER; k <= MK_ROTARY; k++) {
            if (!MODS[k].path) continue;
            size_t n = strlen(MODS[k].path);
            if (strncmp(p, MODS[k].path, n)) continue;
            if (p[n] == 0 && k == MK_BIAS) { r.kind = k; r.suf = S_NONE; return r; }
            if (p[n] == '.' && k != MK_BIAS) { r.kind = k; r.suf = suffix_id(p + n + 1); return r; }
        }
        return r;
    }
    for (int k = MK_EMBED; k <= MK_NORM; k++) {
        size_t n = strlen(MODS[k].path);
        if (!strncmp(p, MODS[k].path, n) && p[n] == '.') {
            r.kind = k;
            r.suf = suffix_id(p + n + 1);
            return r;
        }
    }
    return r;
}

// ---- schemes ---------------------------------------------------------------------------------

enum {
    SC_UNQ,          // unquantized: .weight
    SC_CT_NVFP4,     // compressed-tensors NVFP4 W4A4
    SC_CT_NVFP4A16,  // compressed-tensors NVFP4 weight-only
    SC_CT_WNA16,     // compressed-tensors pack-quantized int4/int8
    SC_FP8,          // FP8 block (weight + weight_scale_inv)
    SC_MO_NVFP4,     // ModelOpt NVFP4 (weight u8, weight_scale, weight_scale_2, input_scale)
    SC_MO_NVFP4A16,  // ModelOpt W4A16_NVFP4
    SC_GPTQ,         // AutoRound / GPTQ (qweight, qzeros, scales, g_idx)
    SC_SKIP,         // not modelled: no tensor checks for the module
};
static const char *const SCNAME[] = {"unquantized", "NVFP4 (W4A4)", "NVFP4A16", "pack-quantized int",
                                     "FP8 block", "ModelOpt NVFP4", "ModelOpt W4A16_NVFP4",
                                     "GPTQ/AutoRound int", "unmodelled"};

enum { R_NO = 0, R_REQ, R_OPT, R_DROP };

typedef struct dims {
    long H, nh, nkv, hd, Ie, E, V, nhl, mtp;
    int qk_per_head;  // q/k norm weights are [head_dim] (Qwen3), not [heads * head_dim]
} dims;

// Per-scheme parameters of the module (a vLLM Linear or FusedMoE).
typedef struct schparams {
    int bits;          // int bits (WNA16 / GPTQ)
    long group;        // group size (-1 channel)
    int actorder_group;
    int asym;
    long blk[2];       // FP8 block
} schparams;

typedef struct vctx {
    const fb_arch *arch;  // the family (MiniMax-M2 when config.json names none we know)
    modinfo MODS[MK_COUNT];
    const fb_vinput *in;
    const fb_validate_opts *o;
    fb_findings *f;
    dims d;
    int quantized;        // the declared format is a quantized one
    int fmt;              // declared format family (SC_* of the quantized Linears, SC_UNQ)
    int ct;               // compressed-tensors
    int kv_allowed;       // kv_cache_scheme / kv_cache_quant_algo configured
    int use_bias;         // use_routing_bias
    int use_qk_norm;
    int tie;
    schparams sp;         // parameters of the (single) quantized scheme
    long nL, nE;          // allocated layers / experts
    int *sc_qkv, *sc_o, *sc_moe;  // per layer scheme
    // module records
    int32_t *top;         // [3][NSUF]
    int32_t *lay;         // [nL][N_LSLOTS][NSUF]
    int32_t *exp;         // [nL][nE][3][NSUF]
    pname *pn;            // per tensor
    long max_layer, max_expert;
    int *Epl;             // [d.nhl] per-layer expert counts (moe_sparsity_config), or NULL
} vctx;

// The expert count of layer L: moe_sparsity_config's entry when the config has one, else the
// family's expert key.
static long layer_E(const vctx *v, long L) {
    if (v->Epl && L >= 0 && L < v->d.nhl && v->Epl[L] > 0) return v->Epl[L];
    return v->d.E;
}

static int32_t *mod_slot(vctx *v, int kind, long L, long E) {
    if (kind <= MK_NORM) return v->top + (size_t)kind * NSUF;
    if (L < 0 || L >= v->nL) return NULL;
    if (kind <= MK_ROTARY) return v->lay + ((size_t)L * N_LSLOTS + (kind - MK_FIRST_LAYER)) * NSUF;
    if (E < 0 || E >= v->nE) return NULL;
    return v->exp + (((size_t)L * v->nE + E) * 3 + (kind - MK_W1)) * NSUF;
}

static int module_scheme(const vctx *v, int kind, long L) {
    switch (kind) {
    case MK_Q: case MK_K: case MK_V: return L >= 0 && L < v->nL ? v->sc_qkv[L] : SC_UNQ;
    case MK_O: return L >= 0 && L < v->nL ? v->sc_o[L] : SC_UNQ;
    case MK_W1: case MK_W2: case MK_W3: return L >= 0 && L < v->nL ? v->sc_moe[L] : SC_UNQ;
    default: return SC_UNQ;
    }
}

// Is suffix `suf` a parameter vLLM registers for a module of `kind` under `sch`?
static int suffix_role(const vctx *v, int kind, int sch, int suf) {
    int moe = kind >= MK_W1;
    if (kind == MK_BIAS) return suf == S_NONE ? (v->use_bias ? R_REQ : R_NO) : R_NO;
    if (kind == MK_ROTARY) return suf == S_INVFREQ ? R_DROP : R_NO;
    if (suf == S_BIAS) return moe ? R_NO : R_DROP;
    switch (sch) {
    case SC_UNQ:
        return suf == S_WEIGHT ? R_REQ : R_NO;
    case SC_CT_NVFP4:
        return (suf == S_WPACKED || suf == S_WSCALE || suf == S_WGSCALE || suf == S_IGSCALE) ? R_REQ : R_NO;
    case SC_CT_NVFP4A16:
        if (suf == S_WPACKED || suf == S_WSCALE || suf == S_WGSCALE) return R_REQ;
        return suf == S_IGSCALE && moe ? R_OPT : R_NO;
    case SC_CT_WNA16:
        if (suf == S_WPACKED || suf == S_WSCALE || suf == S_WSHAPE) return R_REQ;
        if (suf == S_WGIDX) return v->sp.actorder_group ? R_REQ : moe ? R_OPT : R_NO;
        if (suf == S_WZP) return v->sp.asym ? R_REQ : R_NO;
        return R_NO;
    case SC_FP8:
        return (suf == S_WEIGHT || suf == S_WSCALE_INV) ? R_REQ : R_NO;
    case SC_MO_NVFP4:
        return (suf == S_WEIGHT || suf == S_WSCALE || suf == S_WSCALE2 || suf == S_ISCALE) ? R_REQ : R_NO;
    case SC_MO_NVFP4A16:
        if (suf == S_WEIGHT || suf == S_WSCALE || suf == S_WSCALE2) return R_REQ;
        return suf == S_ISCALE && moe ? R_OPT : R_NO;
    case SC_GPTQ:
        if (suf == S_QWEIGHT || suf == S_QZEROS || suf == S_SCALES) return R_REQ;
        return suf == S_GIDX ? R_OPT : R_NO;
    default:
        return R_OPT;
    }
}

// Logical [O, I] (2-D) or [n] (1-D, I = 0) of a module; -1 where unknown.
static void logical_shape(const dims *d, int kind, long *O, long *I) {
    long qo = d->nh > 0 && d->hd > 0 ? d->nh * d->hd : -1;
    long ko = d->nkv > 0 && d->hd > 0 ? d->nkv * d->hd : -1;
    *I = 0;
    switch (kind) {
    case MK_EMBED: case MK_LMHEAD: *O = d->V; *I = d->H; break;
    case MK_NORM: case MK_LN_IN: case MK_LN_POST: *O = d->H; break;
    case MK_Q: *O = qo; *I = d->H; break;
    case MK_K: case MK_V: *O = ko; *I = d->H; break;
    case MK_O: *O = d->H; *I = qo; break;
    case MK_QNORM: *O = d->qk_per_head ? d->hd : qo; break;
    case MK_KNORM: *O = d->qk_per_head ? d->hd : ko; break;
    case MK_GATE: *O = d->E; *I = d->H; break;
    case MK_BIAS: *O = d->E; break;
    case MK_W1: case MK_W3: *O = d->Ie; *I = d->H; break;
    case MK_W2: *O = d->H; *I = d->Ie; break;
    default: *O = -1; *I = -1; break;
    }
}

static long cdiv(long a, long b) { return a < 0 || b <= 0 ? -1 : (a + b - 1) / b; }

#define DT(x) (1u << (x))
#define DT_FLOAT (DT(FB_F32) | DT(FB_BF16) | DT(FB_F16))

// Expected dtype set and shape of a tensor. ndim -1 = a scalar (shape [] or [1]). A dim of
// -1 is not checked. Returns 0 when nothing is known to check.
static int expected(const vctx *v, int kind, int sch, int suf, uint32_t *dtm, int *nd, long sh[2]) {
    long O, I;
    logical_shape(&v->d, kind, &O, &I);
    const schparams *sp = &v->sp;
    sh[0] = sh[1] = -1;
    if (kind == MK_BIAS) { *dtm = DT_FLOAT; *nd = 1; sh[0] = O; return 1; }
    if (kind == MK_ROTARY) return 0;
    if (sch == SC_UNQ || kind == MK_GATE || !v->MODS[kind].linear) {
        if (suf != S_WEIGHT) return 0;
        *dtm = DT_FLOAT;
        *nd = I ? 2 : 1;
        sh[0] = O;
        sh[1] = I ? I : -1;
        return 1;
    }
    long g = sp->group;
    switch (sch) {
    case SC_CT_NVFP4: case SC_CT_NVFP4A16: case SC_MO_NVFP4: case SC_MO_NVFP4A16: {
        int ct = sch == SC_CT_NVFP4 || sch == SC_CT_NVFP4A16;
        if ((ct && suf == S_WPACKED) || (!ct && suf == S_WEIGHT)) {
            *dtm = DT(FB_U8); *nd = 2; sh[0] = O; sh[1] = I > 0 ? I / 2 : -1; return 1;
        }
        if (suf == S_WSCALE) {
            *dtm = DT(FB_F8_E4M3); *nd = 2; sh[0] = O; sh[1] = I > 0 ? I / 16 : -1; return 1;
        }
        if (suf == S_WGSCALE || suf == S_IGSCALE) { *dtm = DT(FB_F32); *nd = ct ? 1 : -1; sh[0] = 1; return 1; }
        if (suf == S_WSCALE2 || suf == S_ISCALE) { *dtm = DT(FB_F32); *nd = -1; return 1; }
        return 0;
    }
    case SC_CT_WNA16: {
        int pf = sp->bits > 0 ? 32 / sp->bits : 8;
        if (suf == S_WPACKED) { *dtm = DT(FB_I32); *nd = 2; sh[0] = O; sh[1] = cdiv(I, pf); return 1; }
        if (suf == S_WSCALE) {
            *dtm = DT_FLOAT; *nd = 2; sh[0] = O; sh[1] = g == -1 ? 1 : cdiv(I, g); return 1;
        }
        if (suf == S_WSHAPE) { *dtm = DT(FB_I64) | DT(FB_I32); *nd = 1; sh[0] = 2; return 1; }
        if (suf == S_WGIDX) { *dtm = DT(FB_I32); *nd = 1; sh[0] = I; return 1; }
        return 0;
    }
    case SC_FP8:
        if (suf == S_WEIGHT) { *dtm = DT(FB_F8_E4M3); *nd = 2; sh[0] = O; sh[1] = I; return 1; }
        if (suf == S_WSCALE_INV) {
            *dtm = DT(FB_F32) | DT(FB_BF16); *nd = 2; sh[0] = cdiv(O, sp->blk[0]); sh[1] = cdiv(I, sp->blk[1]);
            return 1;
        }
        return 0;
    case SC_GPTQ: {
        int pf = sp->bits > 0 ? 32 / sp->bits : 8;
        long ng = g > 0 ? cdiv(I, g) : 1;
        if (suf == S_QWEIGHT) { *dtm = DT(FB_I32); *nd = 2; sh[0] = cdiv(I, pf); sh[1] = O; return 1; }
        if (suf == S_QZEROS) { *dtm = DT(FB_I32); *nd = 2; sh[0] = ng; sh[1] = cdiv(O, pf); return 1; }
        if (suf == S_SCALES) { *dtm = DT(FB_F16) | DT(FB_BF16); *nd = 2; sh[0] = ng; sh[1] = O; return 1; }
        if (suf == S_GIDX) { *dtm = DT(FB_I32); *nd = 1; sh[0] = I; return 1; }
        return 0;
    }
    default:
        return 0;
    }
}

// ---- vLLM's name mapping (the family's load_weights, e.g. MiniMaxM2Model's) ----------------

// Replaces the first occurrence of `from` in s by `to` (in place; s has room).
static int replace_first(char *s, size_t cap, const char *from, const char *to) {
    char *p = strstr(s, from);
    if (!p) return 0;
    size_t fl = strlen(from), tl = strlen(to), rest = strlen(p + fl);
    if ((size_t)(p - s) + tl + rest + 1 > cap) return 0;
    memmove(p + tl, p + fl, rest + 1);
    memcpy(p, to, tl);
    return 1;
}

// The parameter name vLLM looks up for checkpoint tensor `name` (AutoWeightsLoader strips
// "model."), after the stacked (q/k/v -> qkv_proj) and expert (experts.E.w1. -> experts.w13_)
// replacements, as the KeyError text shows it.
static void vllm_param_name(const vctx *v, const char *name, char *out, size_t cap) {
    snprintf(out, cap, "%s", !strncmp(name, "model.", 6) ? name + 6 : name);
    static const char *const qkv[3] = {"q_proj", "k_proj", "v_proj"};
    for (int i = 0; i < 3; i++)
        if (strstr(out, qkv[i])) { replace_first(out, cap, qkv[i], "qkv_proj"); return; }
    pname p = parse_name(v->arch, v->MODS, name);
    if (p.kind >= MK_W1 && p.expert >= 0 && (v->d.E < 0 || p.expert < v->d.E)) {
        char from[64];
        snprintf(from, sizeof from, "experts.%ld.%s.", p.expert, v->MODS[p.kind].path);
        replace_first(out, cap, from, p.kind == MK_W2 ? "experts.w2_" : "experts.w13_");
    }
}

static void keyerror_text(const vctx *v, const char *name, char *out, size_t cap) {
    char pn[1024];
    if (strncmp(name, "model.", 6)) {
        // lm_head and anything outside model.*: AutoWeightsLoader on the CausalLM class.
        snprintf(out, cap, "vLLM: ValueError: There is no module or parameter named '%s' in %s", name,
                 v->arch->classes[0]);
        return;
    }
    vllm_param_name(v, name, pn, sizeof pn);
    snprintf(out, cap, "vLLM: KeyError: '%s' (%s.load_weights)", pn, v->arch->vllm_model);
}

// The fix of a quantized router, in the family's names.
static const char *router_fix(const vctx *v, char *buf, size_t cap) {
    const char *bias = v->arch->role[FB_ROLE_ROUTER_BIAS].path;
    const char *leaf = bias ? strrchr(bias, '.') : NULL;
    snprintf(buf, cap, "keep the router gate%s%s unquantized (float) and add %s to ignore",
             leaf ? " and " : "", leaf ? leaf + 1 : "", v->arch->router_ignore);
    return buf;
}

// ---- JSON helpers ----------------------------------------------------------------------------

static long jint(const json_t *o, const char *k, long dflt) {
    const json_t *x = o ? json_object_get(o, k) : NULL;
    if (json_is_integer(x)) return (long)json_integer_value(x);
    return dflt;
}
static const char *jstr(const json_t *o, const char *k) {
    const json_t *x = o ? json_object_get(o, k) : NULL;
    return json_is_string(x) ? json_string_value(x) : NULL;
}
static int jbool(const json_t *o, const char *k, int dflt) {
    const json_t *x = o ? json_object_get(o, k) : NULL;
    if (json_is_boolean(x)) return json_is_true(x);
    return dflt;
}

// ---- compressed-tensors config schema (pydantic models) ------------------------------------

static int in_list(const char *s, const char *const *list) {
    for (; *list; list++)
        if (!strcmp(s, *list)) return 1;
    return 0;
}

static int ieq(const char *a, const char *b) { return !strcasecmp(a, b); }

#define ARGS_KEYS fb_ct_args_keys
#define SCHEME_KEYS fb_ct_scheme_keys
#define CONFIG_KEYS fb_ct_config_keys
#define CONFIG_KEYS_WRITERS fb_ct_config_writer_keys
static const char *const STRATEGIES[] = {"tensor", "channel", "group", "block", "token", "tensor_group",
                                         "attn_head", NULL};
static const char *const FORMATS[] = {"dense", "sparse-bitmask", "sparse-24-bitmask", "int-quantized",
                                      "float-quantized", "naive-quantized", "pack-quantized", "marlin-24",
                                      "mixed-precision", "nvfp4-pack-quantized", "mxfp4-pack-quantized",
                                      "mxfp8-quantized", NULL};
static const char *const PRESETS[] = {"UNQUANTIZED", "W8A16", "W4A16", "W4A16_ASYM", "W8A8", "INT8", "W4A8",
                                      "W4AFP8", "FP8", "FP8_DYNAMIC", "FP8_BLOCK", "NVFP4A16", "NVFP4A16_46",
                                      "NVFP4", "NVFP4_46", "MXFP4A16", "MXFP4", "MXFP8A16", "MXFP8", NULL};

// QuantizationArgs after validation (what the scheme choice needs).
typedef struct qargs {
    int present;
    long num_bits;
    int is_float;
    int symmetric;
    long group_size;   // 0 = None
    char strategy[32];
    int dynamic;       // 0 false, 1 true, 2 local
    int actorder_group;
} qargs;

static void ct_schema(vctx *v, const char *path, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void ct_schema(vctx *v, const char *path, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    char cons[1400];
    snprintf(cons, sizeof cons, "compressed-tensors: pydantic ValidationError for %s: %s; the model does not load", path, buf);
    fb_vf_add(v->f, "ct.schema", path, cons, NULL, "%s: %s", path, buf);
}

// Validates one QuantizationArgs object as pydantic does (types, extra="forbid", the
// model validator). Fills *a (a->present = 0 for null).
static void ct_args(vctx *v, const json_t *o, const char *path, qargs *a) {
    memset(a, 0, sizeof *a);
    if (!o || json_is_null(o)) return;
    if (!json_is_object(o)) { ct_schema(v, path, "must be an object or null"); return; }
    a->present = 1;
    a->num_bits = 8;
    a->symmetric = 1;
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)o, k, x) {
        if (!in_list(k, ARGS_KEYS)) ct_schema(v, path, "unknown key \"%s\" (Extra inputs are not permitted)", k);
    }
    x = json_object_get(o, "num_bits");
    if (x && !json_is_integer(x)) ct_schema(v, path, "num_bits must be an integer");
    else if (x) a->num_bits = (long)json_integer_value(x);
    const char *t = jstr(o, "type");
    x = json_object_get(o, "type");
    if (x && !t) ct_schema(v, path, "type must be \"int\" or \"float\"");
    else if (t && !ieq(t, "int") && !ieq(t, "float")) ct_schema(v, path, "type \"%s\" is not \"int\" or \"float\"", t);
    else if (t) a->is_float = ieq(t, "float");
    x = json_object_get(o, "symmetric");
    if (x && !json_is_boolean(x)) ct_schema(v, path, "symmetric must be a boolean");
    else if (x) a->symmetric = json_is_true(x);
    x = json_object_get(o, "group_size");
    if (x && !json_is_null(x) && !json_is_integer(x)) ct_schema(v, path, "group_size must be an integer or null");
    else if (json_is_integer(x)) {
        a->group_size = (long)json_integer_value(x);
        if (a->group_size < -1) ct_schema(v, path, "Invalid group size %ld", a->group_size);
    }
    x = json_object_get(o, "strategy");
    const char *st = jstr(o, "strategy");
    if (x && !json_is_null(x) && !st) ct_schema(v, path, "strategy must be a string or null");
    else if (st) {
        char low[32];
        size_t i = 0;
        for (; st[i] && i < sizeof low - 1; i++) low[i] = (char)(st[i] >= 'A' && st[i] <= 'Z' ? st[i] + 32 : st[i]);
        low[i] = 0;
        if (!in_list(low, STRATEGIES)) ct_schema(v, path, "strategy \"%s\" is not a QuantizationStrategy", st);
        else snprintf(a->strategy, sizeof a->strategy, "%s", low);
    }
    x = json_object_get(o, "dynamic");
    if (json_is_boolean(x)) a->dynamic = json_is_true(x);
    else if (json_is_string(x) && ieq(json_string_value(x), "local")) a->dynamic = 2;
    else if (x) ct_schema(v, path, "dynamic must be a boolean or \"local\"");
    x = json_object_get(o, "actorder");
    if (json_is_string(x)) {
        const char *s = json_string_value(x);
        if (ieq(s, "group") || ieq(s, "dynamic")) a->actorder_group = 1;
        else if (!ieq(s, "weight") && !ieq(s, "static")) ct_schema(v, path, "actorder \"%s\" is not an ActivationOrdering", s);
    } else if (json_is_true(x)) a->actorder_group = 1;
    else if (x && !json_is_null(x) && !json_is_boolean(x)) ct_schema(v, path, "actorder must be a string, boolean or null");
    x = json_object_get(o, "block_structure");
    int has_block = x && !json_is_null(x);
    if (has_block && !(json_is_array(x) && json_array_size(x) == 2 && json_is_integer(json_array_get(x, 0)) &&
                       json_is_integer(json_array_get(x, 1))) && !json_is_string(x))
        ct_schema(v, path, "Invalid block_structure: must be a list of ints [rows, cols]");
    static const char *const strs[] = {"scale_dtype", "zp_dtype", "observer", NULL};
    for (int i = 0; strs[i]; i++) {
        x = json_object_get(o, strs[i]);
        if (x && !json_is_null(x) && !json_is_string(x)) ct_schema(v, path, "%s must be a string or null", strs[i]);
    }
    x = json_object_get(o, "observer_kwargs");
    if (x && !json_is_object(x)) ct_schema(v, path, "observer_kwargs must be an object");
    // validate_model_after
    if (!a->strategy[0]) {
        if (a->group_size == 0) strcpy(a->strategy, "tensor");
        else if (a->group_size > 0) strcpy(a->strategy, "group");
        else strcpy(a->strategy, "channel");
    }
    int grp = !strcmp(a->strategy, "group") || !strcmp(a->strategy, "tensor_group");
    if (!strcmp(a->strategy, "token") && !a->dynamic)
        ct_schema(v, path, "Cannot perform static token quantization, please use `dynamic=True`");
    if (grp && a->group_size <= 0)
        ct_schema(v, path, "strategy %s requires group_size to be set to a positive value", a->strategy);
    if (a->group_size > 0 && !grp) ct_schema(v, path, "group_size requires strategy to be set to 'group'");
    if ((strcmp(a->strategy, "block") == 0) != has_block)
        ct_schema(v, path, has_block ? "Block structure requires block strategy" : "Block strategy requires block structure");
    if (a->actorder_group && !grp)
        ct_schema(v, path, "Must use group or tensor_group quantization strategy in order to apply group activation ordering");
    if (a->dynamic) {
        if (strcmp(a->strategy, "token") && strcmp(a->strategy, "tensor") && strcmp(a->strategy, "tensor_group") &&
            strcmp(a->strategy, "group"))
            ct_schema(v, path, "One of (token, tensor, tensor_group, group) must be used for dynamic quant.");
        if (a->dynamic == 2 && strcmp(a->strategy, "tensor_group"))
            ct_schema(v, path, "local is only supported for strategy tensor_group");
    }
}

static int is_nvfp4(const qargs *a) {
    return a->present && a->is_float && a->num_bits == 4 && !strcmp(a->strategy, "tensor_group") &&
           a->group_size == 16 && a->symmetric;
}

// ---- ignore lists ----------------------------------------------------------------------------

typedef struct ignlist {
    size_t n;
    const char **text;      // entries (borrowed from the config)
    fb_target **t;          // compiled (NULL when invalid)
    fb_target **full;       // "re:(?:PAT)$" for regexes lacking "$" (Python fullmatch), or NULL
    json_t *exact;          // set of the plain entries (object: entry -> null)
} ignlist;

// Frees the list; a regex that gave up on some name (fb_target_check) is a finding, since
// every verdict it took part in counted it as "no match".
static void ign_free(vctx *v, ignlist *l) {
    for (size_t i = 0; i < l->n; i++) {
        fb_err e;
        if (l->t[i] && fb_target_check(l->t[i], &e))
            fb_vf_add(v->f, "ignore.regex-limit", l->text[i], NULL, NULL, "%s", e.msg);
        if (l->t[i]) fb_target_free(l->t[i]);
        if (l->full[i]) fb_target_free(l->full[i]);
    }
    free(l->text); free(l->t); free(l->full);
    json_decref(l->exact);
    memset(l, 0, sizeof *l);
}

// Compiles a JSON list of strings. `what` names it ("quantization_config.ignore").
static void ign_build(vctx *v, const json_t *arr, const char *what, ignlist *l) {
    memset(l, 0, sizeof *l);
    l->exact = json_object();
    if (!arr || json_is_null(arr)) return;
    if (!json_is_array(arr)) { ct_schema(v, what, "must be a list of strings"); return; }
    size_t n = json_array_size(arr);
    l->text = fb_calloc(n ? n : 1, sizeof *l->text);
    l->t = fb_calloc(n ? n : 1, sizeof *l->t);
    l->full = fb_calloc(n ? n : 1, sizeof *l->full);
    for (size_t i = 0; i < n; i++) {
        const json_t *x = json_array_get(arr, i);
        if (!json_is_string(x)) { ct_schema(v, what, "entry %zu is not a string", i); continue; }
        const char *s = json_string_value(x);
        size_t k = l->n++;
        l->text[k] = s;
        fb_err e;
        int nodollar = 0;
        l->t[k] = fb_target_compile(s, &nodollar, &e);
        if (!l->t[k]) {
            fb_vf_add(v->f, "ignore.invalid", s, NULL, NULL, "%s: entry \"%s\": %s", what, s, e.msg);
            continue;
        }
        if (!fb_target_is_regex(l->t[k])) {
            json_object_set_new(l->exact, s, json_null());
        } else if (nodollar) {
            size_t len = strlen(s) + 16;
            char *fs = fb_malloc(len);
            snprintf(fs, len, "re:(?:%s)$", s + 3);
            l->full[k] = fb_target_compile(fs, NULL, &e);
            free(fs);
        }
    }
}

// vLLM's check_equal_or_regex_match over the list (no class matching). Returns the entry
// index or -1.
static long ign_match_vllm(const ignlist *l, const char *name) {
    if (json_object_get(l->exact, name)) {
        for (size_t i = 0; i < l->n; i++)
            if (!strcmp(l->text[i], name)) return (long)i;
    }
    for (size_t i = 0; i < l->n; i++)
        if (l->t[i] && fb_target_is_regex(l->t[i]) && fb_regex_match(l->t[i], name)) return (long)i;
    return -1;
}

// compressed-tensors / transformers semantics: name (exact or regex) or class name.
static long ign_match_ct(const ignlist *l, const char *name, const char *cls) {
    long i = ign_match_vllm(l, name);
    if (i >= 0) return i;
    if (cls && json_object_get(l->exact, cls)) {
        for (size_t k = 0; k < l->n; k++)
            if (!strcmp(l->text[k], cls)) return (long)k;
    }
    return -1;
}

// ---- value reading ---------------------------------------------------------------------------

static int read_scalar_f32(vctx *v, const fb_vtensor *t, float *out) {
    if (!t->file || t->dtype != FB_F32 || t->st->nelem != 1) return 0;
    fb_err e;
    if (fb_st_read(t->file, t->st, 0, out, 4, &e) != 0) {
        fb_vf_add(v->f, "value.read", t->name, NULL, NULL, "%s", e.msg);
        return 0;
    }
    return 1;
}

// ---- the pass ------------------------------------------------------------------------------

static void set_kind(vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_kind(vctx *v, const char *fmt, ...) {
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    free(v->f->kind);
    v->f->kind = fb_strdup(buf);
}

static void read_dims(vctx *v) {
    const json_t *c = v->in->config;
    dims *d = &v->d;
    d->H = jint(c, "hidden_size", -1);
    d->nh = jint(c, "num_attention_heads", -1);
    d->nkv = jint(c, "num_key_value_heads", -1);
    d->hd = jint(c, "head_dim", -1);
    d->Ie = jint(c, v->arch->key_inter, -1);
    d->E = jint(c, v->arch->key_n_experts, -1);
    d->V = jint(c, "vocab_size", -1);
    d->nhl = jint(c, "num_hidden_layers", -1);
    d->mtp = jint(c, "num_mtp_modules", 0);
    d->qk_per_head = v->arch->qk_norm == FB_QKN_PER_HEAD;
    // Per-layer counts (reap-prune --per-layer; compressed-tensors ExpertSparsityConfig).
    v->Epl = NULL;
    if (c && d->nhl > 0 && d->nhl <= 4096) {
        int *cnt = fb_malloc(((size_t)d->nhl + 1) * sizeof *cnt);
        fb_err e;
        int r = fb_cfg_expert_counts(c, (int)d->nhl, cnt, &e);
        if (r == 1) v->Epl = cnt;
        else free(cnt);
        if (r < 0) fb_vf_add(v->f, "config.moe_sparsity", "config.json:moe_sparsity_config", NULL, NULL, "%s", e.msg);
    }
    v->use_bias = v->arch->role[FB_ROLE_ROUTER_BIAS].path && jbool(c, "use_routing_bias", 0);
    v->use_qk_norm = v->arch->qk_norm == FB_QKN_PER_HEAD || jbool(c, "use_qk_norm", 1);
    v->tie = jbool(c, "tie_word_embeddings", 0);
}

// config.json keys the loaders read without defaults.
static void check_config(vctx *v, int has_bias_tensors, long qnorm_width) {
    const json_t *c = v->in->config;
    if (!c) {
        fb_vf_add(v->f, "config.missing", "config.json", NULL, NULL, "no config.json");
        return;
    }
    const char *mt = jstr(c, "model_type");
    const json_t *arch = json_object_get(c, "architectures");
    int arch_ok = 0;
    size_t i;
    json_t *x;
    const fb_arch *a = v->arch;
    if (json_is_array(arch))
        json_array_foreach(arch, i, x) if (json_is_string(x) && !strcmp(json_string_value(x), a->classes[0])) arch_ok = 1;
    if (!arch_ok || !mt || strcmp(mt, a->name)) {
        char fix[256];
        snprintf(fix, sizeof fix, "keep \"architectures\": [\"%s\"] and \"model_type\": \"%s\"", a->classes[0], a->name);
        fb_vf_add(v->f, "config.architecture", "config.json:architectures", NULL, fix,
                  "architectures/model_type are not %s/%s (model_type %s)", a->classes[0], a->name, mt ? mt : "absent");
    }
    const char *need[] = {"hidden_size", "num_attention_heads", "num_key_value_heads", a->key_inter,
                          a->key_n_experts, "vocab_size", "num_hidden_layers", NULL};
    for (i = 0; need[i]; i++)
        if (jint(c, need[i], -1) < 0)
            fb_vf_add(v->f, "config.dims", "config.json", NULL, NULL, "config.json lacks integer \"%s\"", need[i]);
    // rotary_dim / partial_rotary_factor
    long rd = jint(c, "rotary_dim", -1);
    if (a->partial_rotary && rd < 0) fb_vf_add(v->f, "config.rotary_dim", "config.json:rotary_dim", NULL, NULL, "config.json has no \"rotary_dim\"");
    const json_t *prf = json_object_get(c, "partial_rotary_factor");
    const json_t *rp = json_object_get(c, "rope_parameters");
    if (!json_is_number(prf) && json_is_object(rp)) prf = json_object_get(rp, "partial_rotary_factor");
    if (!a->partial_rotary) {
        // Families that rotate the whole head: a partial factor would change the math.
        if (json_is_number(prf) && json_number_value(prf) != 1.0)
            fb_vf_add_sev(v->f, "config.partial_rotary_factor", FB_SEV_ERROR, "config.json:partial_rotary_factor", NULL, NULL,
                          "partial_rotary_factor %g: %s rotates the whole head", json_number_value(prf), a->label);
    } else if (!json_is_number(prf)) {
        if (rd >= 0)
            fb_vf_add(v->f, "config.partial_rotary_factor", "config.json:partial_rotary_factor", NULL, NULL,
                      "rotary_dim %ld without partial_rotary_factor", rd);
    } else if (rd >= 0 && v->d.hd > 0 && json_number_value(prf) != (double)rd / (double)v->d.hd) {
        char cons[256];
        snprintf(cons, sizeof cons, "vLLM and transformers rotate %g of each head, the model was trained with %ld/%ld: wrong attention in every layer",
                 json_number_value(prf), rd, v->d.hd);
        fb_vf_add_sev(v->f, "config.partial_rotary_factor", FB_SEV_ERROR, "config.json:partial_rotary_factor", cons, NULL,
                      "partial_rotary_factor %g disagrees with rotary_dim/head_dim = %ld/%ld", json_number_value(prf), rd, v->d.hd);
    }
    // scoring_func
    const char *sf = jstr(c, "scoring_func");
    if (a->router != FB_ROUTER_SIGMOID_BIAS) {
        // softmax routers have no scoring_func / correction bias keys
    } else if (!sf) fb_vf_add(v->f, "config.scoring_func", "config.json:scoring_func", NULL, NULL, "config.json has no \"scoring_func\"");
    else if (strcmp(sf, "sigmoid"))
        fb_vf_add(v->f, "config.scoring_func", "config.json:scoring_func",
                  "vLLM routes with the configured scoring function; MiniMax-M2 was trained with sigmoid: wrong experts chosen", NULL,
                  "scoring_func is \"%s\", MiniMax-M2 routes with \"sigmoid\"", sf);
    // use_routing_bias
    if (has_bias_tensors && !v->use_bias)
        fb_vf_add(v->f, "config.use_routing_bias", "config.json:use_routing_bias", NULL, NULL,
                  "checkpoint holds e_score_correction_bias but use_routing_bias is %s",
                  json_object_get(c, "use_routing_bias") ? "false" : "absent");
    // head_dim
    if (v->d.hd < 0) {
        long guess = v->d.H > 0 && v->d.nh > 0 ? v->d.H / v->d.nh : -1;
        int wrong = qnorm_width > 0 && v->d.nh > 0 && guess * v->d.nh != qnorm_width;
        fb_vf_add_sev(v->f, "config.head_dim", wrong ? FB_SEV_ERROR : FB_SEV_WARNING, "config.json:head_dim", NULL, NULL,
                      "config.json has no \"head_dim\" (the loaders would use hidden_size/num_attention_heads = %ld%s)", guess,
                      wrong ? ", which disagrees with the q_norm width" : "");
    }
    long k = jint(c, "num_experts_per_tok", -1);
    if (k > 0 && v->d.E > 0 && k > v->d.E)
        fb_vf_add(v->f, "config.num_experts_per_tok", "config.json:num_experts_per_tok", NULL, NULL,
                  "num_experts_per_tok %ld > %s %ld", k, a->key_n_experts, v->d.E);
    // auto_map -> remote code files
    const json_t *am = json_object_get(c, "auto_map");
    if (json_is_object(am) && v->in->extra_files) {
        const char *key;
        json_t *val;
        json_object_foreach((json_t *)am, key, val) {
            const char *s = json_is_string(val) ? json_string_value(val) : NULL;
            if (!s) continue;
            const char *dot = strrchr(s, '.');
            if (!dot || strstr(s, "--")) continue;
            char file[256];
            snprintf(file, sizeof file, "%.*s.py", (int)(dot - s), s);
            int found = 0;
            for (size_t j = 0; j < v->in->n_extra_files; j++)
                if (!strcmp(v->in->extra_files[j], file)) found = 1;
            if (!found)
                fb_vf_add(v->f, "config.auto_map", file, NULL, NULL, "auto_map.%s names %s, which is not in the directory", key, file);
        }
    }
}

// vLLM's find_matched_target for one layer: exact/regex on the name, then the class name
// (case-insensitive substring, "Linear" also standing for "FusedMoE"), then all fused
// shards. Returns the group index or -1.
typedef struct ctgroup {
    const char *name;
    ignlist targets;
    qargs w, in;
    const char *format;
    int scheme;       // SC_*
} ctgroup;

static int target_hit_name(const ignlist *tl, const char *name) { return ign_match_vllm(tl, name) >= 0; }

static int target_hit_class(const ignlist *tl, const char *cls) {
    char lc[64];
    size_t i = 0;
    for (; cls[i] && i < sizeof lc - 1; i++) lc[i] = (char)(cls[i] >= 'A' && cls[i] <= 'Z' ? cls[i] + 32 : cls[i]);
    lc[i] = 0;
    for (size_t k = 0; k < tl->n; k++) {
        if (!tl->t[k]) continue;
        if (fb_target_is_regex(tl->t[k])) {
            if (fb_regex_match(tl->t[k], cls)) return 1;
            continue;
        }
        char lt[128];
        size_t j = 0;
        for (; tl->text[k][j] && j < sizeof lt - 1; j++)
            lt[j] = (char)(tl->text[k][j] >= 'A' && tl->text[k][j] <= 'Z' ? tl->text[k][j] + 32 : tl->text[k][j]);
        lt[j] = 0;
        if (strstr(lc, lt)) return 1;
        if (!strcmp(cls, "FusedMoE") && !strcmp(lt, "linear")) return 1;  // _add_fused_moe_to_target_scheme_map
    }
    return 0;
}

static int vllm_find_group(const ctgroup *g, size_t ng, const char *name, const char *cls,
                           const char *const *shards, int nshards) {
    for (size_t i = 0; i < ng; i++)
        if (target_hit_name(&g[i].targets, name)) return (int)i;
    for (size_t i = 0; i < ng; i++)
        if (target_hit_class(&g[i].targets, cls)) return (int)i;
    for (size_t i = 0; i < ng && nshards; i++) {
        int all = 1;
        for (int s = 0; s < nshards; s++)
            if (!target_hit_name(&g[i].targets, shards[s])) all = 0;
        if (all) return (int)i;
    }
    return -1;
}

// compressed-tensors (transformers / llm-compressor) target matching: name or class.
static int ct_targeted(const ctgroup *g, size_t ng, const char *name, const char *cls) {
    for (size_t i = 0; i < ng; i++)
        if (ign_match_ct(&g[i].targets, name, cls) >= 0) return 1;
    return 0;
}

// The vLLM scheme of a compressed-tensors group, with the format findings.
static int ct_group_scheme(vctx *v, ctgroup *g, const char *topfmt, int *moe_ok) {
    const char *fmt = g->format ? g->format : topfmt;
    char where[256];
    snprintf(where, sizeof where, "quantization_config.config_groups.%s", g->name);
    *moe_ok = 1;
    if (!g->w.present && !g->in.present) return SC_UNQ;
    if (is_nvfp4(&g->w)) {
        if (g->in.present && !is_nvfp4(&g->in)) {
            fb_vf_add(v->f, "ct.scheme", where, NULL, NULL,
                      "%s: NVFP4 weights with non-NVFP4 input_activations (vLLM MoE: ValueError)", g->name);
            return SC_SKIP;
        }
        if (!fmt || strcmp(fmt, "nvfp4-pack-quantized")) {
            char cons[400];
            snprintf(cons, sizeof cons, g->in.present
                     ? "vLLM: NotImplementedError: No compressed-tensors compatible scheme was found (W4A4 NVFP4 needs an activation-quantization format); transformers decompresses with the wrong compressor"
                     : "transformers/compressed-tensors decompress with the %s compressor instead of the NVFP4 one: garbage weights", fmt ? fmt : "default");
            fb_vf_add(v->f, "ct.format", where, cons, NULL, "%s: NVFP4 group has format \"%s\", must be \"nvfp4-pack-quantized\"",
                      g->name, fmt ? fmt : "(none)");
        }
        return g->in.present ? SC_CT_NVFP4 : SC_CT_NVFP4A16;
    }
    if (g->w.present && !g->w.is_float && (g->w.num_bits == 4 || g->w.num_bits == 8) &&
        (!strcmp(g->w.strategy, "group") || !strcmp(g->w.strategy, "channel")) && !g->in.present && !g->w.dynamic) {
        if (!fmt || strcmp(fmt, "pack-quantized")) {
            fb_vf_add(v->f, "ct.format", where,
                      "vLLM: ValueError for the MoE experts (WNA16 requires format pack-quantized); Linear layers get no scheme", NULL,
                      "%s: int%ld weight-only group has format \"%s\", must be \"pack-quantized\"", g->name, g->w.num_bits,
                      fmt ? fmt : "(none)");
        }
        if (!g->w.symmetric) *moe_ok = 0;
        v->sp.bits = (int)g->w.num_bits;
        v->sp.group = !strcmp(g->w.strategy, "channel") ? -1 : g->w.group_size;
        v->sp.actorder_group = g->w.actorder_group;
        v->sp.asym = !g->w.symmetric;
        if (v->sp.group != -1 && v->sp.group != 32 && v->sp.group != 64 && v->sp.group != 128)
            fb_vf_add_sev(v->f, "ct.scheme", FB_SEV_WARNING, where,
                          "Marlin supports group sizes -1/32/64/128: vLLM falls back to a slower kernel or refuses", NULL,
                          "%s: group_size %ld is not a Marlin group size", g->name, v->sp.group);
        return SC_CT_WNA16;
    }
    fb_vf_add_sev(v->f, "ct.scheme", FB_SEV_WARNING, where,
                  "this scheme is not modelled by the validator: tensor checks for its modules are skipped", NULL,
                  "%s: scheme not modelled (weights %s%ld %s)", g->name, g->w.is_float ? "float" : "int", g->w.num_bits,
                  g->w.strategy);
    return SC_SKIP;
}

// Builds the per-layer module names vLLM uses for one layer.
static void vname(char *buf, size_t cap, long L, const char *rest) {
    snprintf(buf, cap, "model.layers.%ld.%s", L, rest);
}

// Tests an ignore entry against every expert name (checkpoint naming, vLLM's
// mlp.experts.0.*_proj naming). Returns 1 and the name reached.
static int entry_reaches_expert(const vctx *v, const ignlist *l, size_t k, char *hit, size_t cap) {
    const char *s = l->text[k];
    if (!l->t[k]) return 0;
    if (!fb_target_is_regex(l->t[k])) {
        // plain: exact equality with an expert module name
        const char *q = s;
        if (!strncmp(q, "model.layers.", 13) && strstr(q, ".experts.")) {
            char tmp[512];
            snprintf(tmp, sizeof tmp, "%s.weight", s);
            pname pw = parse_name(v->arch, v->MODS, tmp);
            if (pw.kind >= MK_W1 || strstr(s, "mlp.experts")) { snprintf(hit, cap, "%s", s); return 1; }
        }
        return 0;
    }
    static const char *const vl[3] = {"mlp.experts.0.gate_proj", "mlp.experts.0.up_proj", "mlp.experts.0.down_proj"};
    char nm[256];
    for (long L = 0; L < v->nL; L++) {
        for (int i = 0; i < 3; i++) {
            vname(nm, sizeof nm, L, vl[i]);
            if (fb_regex_match(l->t[k], nm)) { snprintf(hit, cap, "%s", nm); return 1; }
        }
        for (long E = 0; E < v->nE; E++)
            for (int w = MK_W1; w <= MK_W3; w++) {
                fb_arch_module(v->arch, (fb_role)MK_ROLE[w], (int)L, (int)E, nm, sizeof nm);
                if (fb_regex_match(l->t[k], nm)) { snprintf(hit, cap, "%s", nm); return 1; }
            }
    }
    return 0;
}

// Every module name the ignore entries could reach (checkpoint names and vLLM names), for
// the overmatch test of regexes lacking "$". Calls fn for each.
static void each_module_name(const vctx *v, void (*fn)(void *ctx, const char *name), void *ctx) {
    char nm[256];
    for (int k = MK_EMBED; k <= MK_NORM; k++) fn(ctx, v->MODS[k].path);
    static const char *const extra[] = {"self_attn.qkv_proj", "mlp.gate", "mlp.experts.0.gate_proj",
                                        "mlp.experts.0.up_proj", "mlp.experts.0.down_proj", NULL};
    for (long L = 0; L < v->nL; L++) {
        for (int k = MK_FIRST_LAYER; k <= MK_GATE; k++) {
            if (!v->MODS[k].path) continue;
            vname(nm, sizeof nm, L, v->MODS[k].path);
            fn(ctx, nm);
        }
        for (int i = 0; extra[i]; i++) { vname(nm, sizeof nm, L, extra[i]); fn(ctx, nm); }
        for (long E = 0; E < v->nE; E++)
            for (int w = MK_W1; w <= MK_W3; w++) {
                fb_arch_module(v->arch, (fb_role)MK_ROLE[w], (int)L, (int)E, nm, sizeof nm);
                fn(ctx, nm);
            }
    }
}

typedef struct overctx { vctx *v; const ignlist *l; size_t k; } overctx;
static void overmatch_cb(void *p, const char *name) {
    overctx *c = p;
    if (fb_regex_match(c->l->t[c->k], name) && !(c->l->full[c->k] && fb_regex_match(c->l->full[c->k], name))) {
        fb_vf_add(c->v->f, "ignore.regex-overmatch", name, NULL, NULL,
                  "ignore entry \"%s\" (no $) also matches %s (and every longer name)", c->l->text[c->k], name);
    }
}

// Ignore-list rules common to every format with an ignore list of regexes / names.
static void check_ignore_entries(vctx *v, const ignlist *l) {
    for (size_t k = 0; k < l->n; k++) {
        if (!l->t[k]) continue;
        if (fb_target_is_regex(l->t[k]) && l->full[k]) {
            fb_vf_add(v->f, "ignore.regex-no-dollar", l->text[k], NULL, NULL, "ignore entry \"%s\" does not end with $", l->text[k]);
            overctx oc = {v, l, k};
            each_module_name(v, overmatch_cb, &oc);
        }
        char hit[256];
        if (entry_reaches_expert(v, l, k, hit, sizeof hit))
            fb_vf_add(v->f, "ignore.expert", l->text[k], NULL, NULL, "ignore entry \"%s\" reaches the expert module %s", l->text[k], hit);
    }
}

// compressed-tensors: config schema, groups, ignore, and the per-layer vLLM schemes.
static void setup_ct(vctx *v, const json_t *qc, ctgroup **groups_out, size_t *ng_out, ignlist *ign) {
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)qc, k, x) {
        if (!in_list(k, CONFIG_KEYS) && !in_list(k, CONFIG_KEYS_WRITERS))
            fb_vf_add(v->f, "ct.schema-extra", "quantization_config", NULL, NULL, "quantization_config has unknown key \"%s\"", k);
    }
    const char *status = jstr(qc, "quantization_status");
    if (!status || strcmp(status, "compressed"))
        fb_vf_add(v->f, "ct.status", "quantization_config.quantization_status", NULL, NULL,
                  "quantization_status is %s%s%s, not \"compressed\"", status ? "\"" : "", status ? status : "absent", status ? "\"" : "");
    const char *topfmt = jstr(qc, "format");
    if (topfmt && !in_list(topfmt, FORMATS))
        fb_vf_add(v->f, "ct.format", "quantization_config.format", NULL, NULL, "format \"%s\" is not a CompressionFormat", topfmt);
    const json_t *kv = json_object_get(qc, "kv_cache_scheme");
    if (kv && !json_is_null(kv)) {
        qargs a;
        ct_args(v, kv, "quantization_config.kv_cache_scheme", &a);
        v->kv_allowed = 1;
    }
    ign_build(v, json_object_get(qc, "ignore"), "quantization_config.ignore", ign);

    const json_t *cg = json_object_get(qc, "config_groups");
    size_t ng = 0;
    ctgroup *g = NULL;
    if (!json_is_object(cg) || json_object_size(cg) == 0) {
        ct_schema(v, "quantization_config.config_groups", "missing or empty (Field required)");
    } else {
        g = fb_calloc(json_object_size(cg), sizeof *g);
        json_object_foreach((json_t *)cg, k, x) {
            ctgroup *G = &g[ng++];
            G->name = k;
            G->scheme = SC_SKIP;
            char path[300];
            snprintf(path, sizeof path, "quantization_config.config_groups.%s", k);
            if (json_is_array(x)) {
                // a preset name mapped to targets
                char up[64];
                size_t i = 0;
                for (; k[i] && i < sizeof up - 1; i++) up[i] = (char)(k[i] >= 'a' && k[i] <= 'z' ? k[i] - 32 : k[i]);
                up[i] = 0;
                if (!in_list(up, PRESETS)) ct_schema(v, path, "KeyError: Unknown preset scheme name %s", up);
                ign_build(v, x, path, &G->targets);
                G->scheme = SC_SKIP;
                if (!strcmp(up, "NVFP4")) G->scheme = SC_CT_NVFP4;
                else if (!strcmp(up, "NVFP4A16")) G->scheme = SC_CT_NVFP4A16;
                else if (!strcmp(up, "W4A16")) { G->scheme = SC_CT_WNA16; v->sp.bits = 4; v->sp.group = 128; }
                continue;
            }
            if (!json_is_object(x)) { ct_schema(v, path, "must be a QuantizationScheme object or a list of targets"); continue; }
            const char *sk;
            json_t *sx;
            json_object_foreach(x, sk, sx) {
                if (!in_list(sk, SCHEME_KEYS)) ct_schema(v, path, "unknown key \"%s\" (Extra inputs are not permitted)", sk);
            }
            const json_t *t = json_object_get(x, "targets");
            if (!json_is_array(t)) ct_schema(v, path, "targets: Field required (list of strings)");
            char sub[340];
            snprintf(sub, sizeof sub, "%s.targets", path);
            ign_build(v, t, sub, &G->targets);
            snprintf(sub, sizeof sub, "%s.weights", path);
            ct_args(v, json_object_get(x, "weights"), sub, &G->w);
            snprintf(sub, sizeof sub, "%s.input_activations", path);
            ct_args(v, json_object_get(x, "input_activations"), sub, &G->in);
            qargs out;
            snprintf(sub, sizeof sub, "%s.output_activations", path);
            ct_args(v, json_object_get(x, "output_activations"), sub, &out);
            if (G->in.present) {
                const char *s = G->in.strategy;
                if (strcmp(s, "token") && strcmp(s, "tensor") && strcmp(s, "group") && strcmp(s, "tensor_group") && strcmp(s, "attn_head"))
                    ct_schema(v, path, "Using %s strategy is not supported for activation quantization", s);
                if (G->in.actorder_group || (json_is_object(json_object_get(x, "input_activations")) &&
                                             json_is_string(json_object_get(json_object_get(x, "input_activations"), "actorder"))))
                    ct_schema(v, path, "Cannot apply actorder to input activations");
            }
            const json_t *fx = json_object_get(x, "format");
            if (fx && !json_is_null(fx)) {
                if (!json_is_string(fx) || !in_list(json_string_value(fx), FORMATS))
                    ct_schema(v, path, "format is not a CompressionFormat");
                else if (!strcmp(json_string_value(fx), "mixed-precision"))
                    ct_schema(v, path, "mixed-precision cannot be set as a format for a QuantizationScheme");
                else G->format = json_string_value(fx);
            }
            int moe_ok;
            G->scheme = ct_group_scheme(v, G, topfmt, &moe_ok);
            if (!moe_ok) G->scheme = SC_SKIP, fb_vf_add(v->f, "ct.scheme", path,
                "vLLM's Marlin MoE method asserts weight_quant.symmetric: asymmetric int experts cannot load", NULL,
                "%s: asymmetric int weights", k);
        }
        // top-level format vs groups
        const char *gf = NULL;
        int mixed = 0;
        for (size_t i = 0; i < ng; i++) {
            const char *f = g[i].format;
            if (!f) continue;
            if (gf && strcmp(gf, f)) mixed = 1;
            gf = gf ? gf : f;
        }
        if (gf && topfmt && strcmp(topfmt, mixed ? "mixed-precision" : gf))
            fb_vf_add(v->f, "ct.format-top", "quantization_config.format", NULL, NULL,
                      "top-level format \"%s\" but the groups use \"%s\"", topfmt, mixed ? "mixed-precision" : gf);
    }
    *groups_out = g;
    *ng_out = ng;

    // Per-layer schemes, as vLLM builds them.
    static const char *const qkvn[3] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
    static const char *const moen[3] = {"mlp.experts.0.gate_proj", "mlp.experts.0.up_proj", "mlp.experts.0.down_proj"};
    char fused[256], sh[3][256], on[256], mn[3][256];
    for (long L = 0; L < v->nL; L++) {
        vname(fused, sizeof fused, L, "self_attn.qkv_proj");
        const char *shp[3];
        int ig[3];
        for (int i = 0; i < 3; i++) { vname(sh[i], sizeof sh[i], L, qkvn[i]); shp[i] = sh[i]; ig[i] = ign_match_vllm(ign, sh[i]) >= 0; }
        int igq = ign_match_vllm(ign, fused) >= 0 || ig[0];
        if (ign_match_vllm(ign, fused) < 0 && (ig[0] != ig[1] || ig[1] != ig[2])) {
            char cons[512];
            snprintf(cons, sizeof cons, "vLLM: ValueError: Found a different quantization schemes for ['q_proj', 'k_proj', 'v_proj'] in %s. vLLM requires all to use the same scheme.", fused);
            fb_vf_add(v->f, "ignore.qkv-split", fused, cons, NULL, "q/k/v ignored %d/%d/%d: some but not all", ig[0], ig[1], ig[2]);
        }
        int gi = igq ? -1 : vllm_find_group(g, ng, fused, "QKVParallelLinear", shp, 3);
        v->sc_qkv[L] = igq ? SC_UNQ : gi >= 0 ? g[gi].scheme : -1;
        vname(on, sizeof on, L, "self_attn.o_proj");
        int igo = ign_match_vllm(ign, on) >= 0;
        gi = igo ? -1 : vllm_find_group(g, ng, on, "RowParallelLinear", NULL, 0);
        v->sc_o[L] = igo ? SC_UNQ : gi >= 0 ? g[gi].scheme : -1;
        int igm[3], gm[3];
        for (int i = 0; i < 3; i++) {
            vname(mn[i], sizeof mn[i], L, moen[i]);
            igm[i] = ign_match_vllm(ign, mn[i]) >= 0;
            gm[i] = igm[i] ? -1 : vllm_find_group(g, ng, mn[i], "FusedMoE", NULL, 0);
        }
        if (igm[0] != igm[1] || igm[1] != igm[2] || gm[0] != gm[1] || gm[1] != gm[2]) {
            char w[256];
            vname(w, sizeof w, L, "mlp.experts");
            fb_vf_add(v->f, "ct.scheme", w,
                      "vLLM: ValueError: All MoE projections need to have same quantization scheme but found multiple",
                      "make ignore and targets treat gate_proj, up_proj and down_proj alike (end regexes with $; never name experts)",
                      "ignore/targets give gate_proj/up_proj/down_proj of the experts different schemes");
            v->sc_moe[L] = SC_SKIP;
        } else {
            v->sc_moe[L] = igm[0] ? SC_UNQ : gm[0] >= 0 ? g[gm[0]].scheme : -1;
        }
    }
}

static void check_ct_transformers_ignores(vctx *v, const ctgroup *g, size_t ng, const ignlist *ign) {
    // lm_head and the router gates are nn.Linear in transformers / remote code / llm-compressor.
    if (mod_slot(v, MK_LMHEAD, -1, -1)[S_WEIGHT] >= 0 && ct_targeted(g, ng, "lm_head", "Linear") &&
        ign_match_ct(ign, "lm_head", "Linear") < 0)
        fb_vf_add(v->f, "ignore.lm_head", "lm_head", NULL, NULL, "lm_head is matched by a target and by no ignore entry");
    char nm[256];
    for (long L = 0; L < v->nL; L++) {
        int32_t *m = mod_slot(v, MK_GATE, L, -1);
        int any = 0;
        for (int s = 0; m && s < NSUF; s++) any |= m[s] >= 0;
        if (!any) continue;
        vname(nm, sizeof nm, L, v->MODS[MK_GATE].path);
        if (ct_targeted(g, ng, nm, "Linear") && ign_match_ct(ign, nm, "Linear") < 0) {
            char fix[160];
            snprintf(fix, sizeof fix, "add \"%s\" (or every exact gate name) to ignore", v->arch->router_ignore);
            fb_vf_add(v->f, "ignore.gate", nm, NULL, fix, "the router gate is matched by a target and by no ignore entry");
        }
    }
}

// FP8 block (Fp8Config): ignored_layers / modules_to_not_convert, exact matching with fused
// shards; experts skipped only if an entry contains the expert prefix.
static void setup_fp8(vctx *v, const json_t *qc) {
    const char *as = jstr(qc, "activation_scheme");
    const json_t *bs = json_object_get(qc, "weight_block_size");
    v->sp.blk[0] = v->sp.blk[1] = 128;
    if (json_is_array(bs) && json_array_size(bs) == 2) {
        v->sp.blk[0] = (long)json_integer_value(json_array_get(bs, 0));
        v->sp.blk[1] = (long)json_integer_value(json_array_get(bs, 1));
    } else {
        fb_vf_add(v->f, "quant.stale", "quantization_config.weight_block_size", "vLLM: Fp8Config requires weight_block_size of length 2 for block FP8", NULL,
                  "FP8 quantization_config without a 2-element weight_block_size");
    }
    if (as && strcmp(as, "dynamic"))
        fb_vf_add(v->f, "quant.stale", "quantization_config.activation_scheme", "vLLM: block-quantized FP8 requires activation_scheme dynamic", NULL,
                  "activation_scheme \"%s\" with block FP8", as);
    const json_t *ig = json_object_get(qc, "ignored_layers");
    if (!ig) ig = json_object_get(qc, "modules_to_not_convert");
    char nm[256];
    for (long L = 0; L < v->nL; L++) {
        int hit[3] = {0, 0, 0}, ho = 0, he = 0;
        size_t i;
        json_t *x;
        char exp[256];
        vname(exp, sizeof exp, L, "mlp.experts");
        if (json_is_array(ig))
            json_array_foreach(ig, i, x) {
                const char *s = json_string_value(x);
                if (!s) continue;
                static const char *const q[3] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
                for (int k = 0; k < 3; k++) { vname(nm, sizeof nm, L, q[k]); if (!strcmp(s, nm)) hit[k] = 1; }
                vname(nm, sizeof nm, L, "self_attn.o_proj");
                if (!strcmp(s, nm)) ho = 1;
                if (strstr(s, exp)) he = 1;
            }
        if (hit[0] != hit[1] || hit[1] != hit[2]) {
            char cons[512];
            vname(nm, sizeof nm, L, "self_attn.qkv_proj");
            snprintf(cons, sizeof cons, "vLLM: ValueError: Detected some but not all shards of %s are quantized. All shards of fused layers to have the same precision.", nm);
            fb_vf_add(v->f, "ignore.qkv-split", nm, cons, NULL, "some but not all of q/k/v are in ignored_layers");
        }
        v->sc_qkv[L] = hit[0] ? SC_UNQ : SC_FP8;
        v->sc_o[L] = ho ? SC_UNQ : SC_FP8;
        v->sc_moe[L] = he ? SC_UNQ : SC_FP8;
    }
}

// ModelOpt: exclude entries match a vLLM prefix exactly, as a substring, or as an fnmatch
// wildcard (is_layer_excluded).
static int mo_excluded(const json_t *ex, const char *prefix) {
    size_t i;
    json_t *x;
    if (!json_is_array(ex)) return 0;
    json_array_foreach(ex, i, x) {
        const char *s = json_string_value(x);
        if (!s) continue;
        if (!strcmp(s, prefix) || strstr(prefix, s) || fnmatch(s, prefix, 0) == 0) return 1;
        if (strstr(prefix, "experts") && strstr(s, "experts") && strstr(s, prefix)) return 1;
    }
    return 0;
}

static void setup_modelopt(vctx *v, const json_t *q, const char *where, int legacy) {
    const char *algo = jstr(q, "quant_algo");
    if (legacy) {
        static const char *const req[] = {"quant_algo", "group_size", "kv_cache_quant_algo", "exclude_modules", NULL};
        for (int i = 0; req[i]; i++)
            if (!json_object_get(q, req[i]))
                fb_vf_add(v->f, "quant.unknown-method", where,
                          "vLLM: ValueError: NVFP4 quantization requires the following fields in hf_quant_config.json: ['group_size', 'kv_cache_quant_algo', 'exclude_modules']",
                          "write quant_algo, group_size, kv_cache_quant_algo (null or \"FP8\") and exclude_modules", "%s lacks \"%s\"", where, req[i]);
    }
    int sc = SC_SKIP;
    if (algo && !strcasecmp(algo, "NVFP4")) sc = SC_MO_NVFP4;
    else if (algo && !strcasecmp(algo, "W4A16_NVFP4")) sc = SC_MO_NVFP4A16;
    else fb_vf_add_sev(v->f, "ct.scheme", FB_SEV_WARNING, where, "this ModelOpt algorithm is not modelled: tensor checks skipped", NULL,
                       "ModelOpt quant_algo \"%s\" not modelled", algo ? algo : "(none)");
    if (sc == SC_MO_NVFP4A16) fb_vf_add(v->f, "mo.w4a16", where, NULL, NULL, "quant_algo \"%s\" (weight-only ModelOpt NVFP4)", algo);
    long gs = jint(q, "group_size", 16);
    if (gs != 16) fb_vf_add(v->f, "ct.scheme", where, "vLLM's ModelOpt NVFP4 supports group_size 16 only", NULL, "group_size %ld", gs);
    const json_t *kv = json_object_get(q, "kv_cache_quant_algo");
    v->kv_allowed = json_is_string(kv);
    const json_t *ex = json_object_get(q, legacy ? "exclude_modules" : "ignore");
    if (!ex) ex = json_object_get(q, "exclude_modules");
    // lm_head stored unquantized (a float lm_head.weight) but not excluded
    int32_t *lm = mod_slot(v, MK_LMHEAD, -1, -1);
    if (sc != SC_SKIP && lm && lm[S_WEIGHT] >= 0 && fb_dtypes[v->in->tensors[lm[S_WEIGHT]].dtype].is_float &&
        v->in->tensors[lm[S_WEIGHT]].dtype != FB_F8_E4M3 && !mo_excluded(ex, v->MODS[MK_LMHEAD].path))
        fb_vf_add(v->f, "mo.lm-head", where, NULL, NULL, "%s.weight is %s and %s does not exclude it", v->MODS[MK_LMHEAD].path,
                  fb_dtypes[v->in->tensors[lm[S_WEIGHT]].dtype].name, legacy ? "exclude_modules" : "ignore");
    char nm[256], sh[256];
    static const char *const qn[3] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
    for (long L = 0; L < v->nL; L++) {
        vname(nm, sizeof nm, L, "self_attn.qkv_proj");
        int e = mo_excluded(ex, nm), es[3];
        for (int k = 0; k < 3; k++) { vname(sh, sizeof sh, L, qn[k]); es[k] = mo_excluded(ex, sh); }
        if (!e && (es[0] != es[1] || es[1] != es[2])) {
            char cons[512];
            snprintf(cons, sizeof cons, "vLLM: ValueError: Detected some but not all shards of %s are quantized.", nm);
            fb_vf_add(v->f, "ignore.qkv-split", nm, cons, NULL, "some but not all of q/k/v are excluded");
        }
        v->sc_qkv[L] = e || es[0] ? SC_UNQ : sc;
        vname(nm, sizeof nm, L, "self_attn.o_proj");
        v->sc_o[L] = mo_excluded(ex, nm) ? SC_UNQ : sc;
        vname(nm, sizeof nm, L, "mlp.experts");
        v->sc_moe[L] = mo_excluded(ex, nm) ? SC_UNQ : sc;
    }
}

static void setup_gptq(vctx *v, const json_t *qc, const char *method) {
    long bits = jint(qc, "bits", -1), gs = jint(qc, "group_size", -1);
    if (bits != 4 && bits != 8)
        fb_vf_add(v->f, "gptq.config", "quantization_config.bits", NULL, NULL, "bits is %ld (4 or 8 expected)", bits);
    if (gs == 0 || gs < -1) fb_vf_add(v->f, "gptq.config", "quantization_config.group_size", NULL, NULL, "group_size is %ld", gs);
    const char *pf = jstr(qc, "packing_format");
    if (!strcmp(method, "auto-round") && pf && strncmp(pf, "auto_round", 10))
        fb_vf_add(v->f, "gptq.config", "quantization_config.packing_format", NULL, NULL, "packing_format \"%s\"", pf);
    v->sp.bits = bits > 0 ? (int)bits : 4;
    v->sp.group = gs;
    const json_t *extra = json_object_get(qc, "extra_config");
    char nm[256];
    for (long L = 0; L < v->nL; L++) {
        vname(nm, sizeof nm, L, "self_attn.q_proj");
        const json_t *e = json_object_get(extra, nm);
        v->sc_qkv[L] = e && jint(e, "bits", 4) >= 16 ? SC_UNQ : SC_GPTQ;
        vname(nm, sizeof nm, L, "self_attn.o_proj");
        e = json_object_get(extra, nm);
        v->sc_o[L] = e && jint(e, "bits", 4) >= 16 ? SC_UNQ : SC_GPTQ;
        v->sc_moe[L] = SC_GPTQ;
    }
}

// What the tensors of the Linear modules are, whatever the config says.
static int tensor_family(const vctx *v) {
    size_t cnt[SC_SKIP + 1] = {0};
    for (size_t i = 0; i < v->in->n; i++) {
        const pname *p = &v->pn[i];
        if (p->kind < 0 || !v->MODS[p->kind].linear) continue;
        const fb_vtensor *t = &v->in->tensors[i];
        switch (p->suf) {
        case S_WPACKED: cnt[t->dtype == FB_U8 ? SC_CT_NVFP4 : SC_CT_WNA16]++; break;
        case S_WSCALE_INV: cnt[SC_FP8]++; break;
        case S_WSCALE2: cnt[SC_MO_NVFP4]++; break;
        case S_QWEIGHT: cnt[SC_GPTQ]++; break;
        case S_WEIGHT: if (fb_dtypes[t->dtype].is_float && t->dtype != FB_F8_E4M3) cnt[SC_UNQ]++; break;
        default: break;
        }
    }
    int best = SC_UNQ;
    for (int s = 0; s <= SC_SKIP; s++)
        if (cnt[s] > cnt[best]) best = s;
    return best;
}

static const char *family_name(int s) {
    switch (s) {
    case SC_UNQ: return "unquantized (BF16/F32)";
    case SC_CT_NVFP4: return "compressed-tensors NVFP4";
    case SC_CT_WNA16: return "compressed-tensors pack-quantized int";
    case SC_FP8: return "FP8 block";
    case SC_MO_NVFP4: return "ModelOpt NVFP4";
    case SC_GPTQ: return "GPTQ/AutoRound int";
    default: return "unknown";
    }
}

static int family_matches(int declared, int fam) {
    if (declared == fam) return 1;
    if ((declared == SC_CT_NVFP4 || declared == SC_CT_NVFP4A16) && fam == SC_CT_NVFP4) return 1;
    if ((declared == SC_MO_NVFP4 || declared == SC_MO_NVFP4A16) && fam == SC_MO_NVFP4) return 1;
    return 0;
}

// Shape/dtype check of one tensor against what its scheme needs.
static void check_tensor_shape(vctx *v, const fb_vtensor *t, const pname *p, int sch) {
    uint32_t dtm;
    int nd;
    long sh[2];
    if (!expected(v, p->kind, sch, p->suf, &dtm, &nd, sh)) return;
    // The router's rows are the layer's experts (per-layer counts: moe_sparsity_config).
    if ((p->kind == MK_GATE || p->kind == MK_BIAS) && sh[0] >= 0) sh[0] = layer_E(v, p->layer);
    if (!(dtm & DT(t->dtype))) {
        char want[128] = "";
        for (int d = 0; d < FB_DTYPE_COUNT; d++)
            if (dtm & DT(d)) { strcat(want, want[0] ? "/" : ""); strcat(want, fb_dtypes[d].name); }
        int router = p->kind == MK_GATE || p->kind == MK_BIAS;
        char fix[256];
        fb_vf_add(v->f, router ? "router.quantized" : "tensor.dtype", t->name, NULL, router ? router_fix(v, fix, sizeof fix) : NULL,
                  "%s is %s, the %s scheme needs %s", SUFNAME[p->suf][0] ? SUFNAME[p->suf] : "tensor",
                  fb_dtypes[t->dtype].name, SCNAME[sch], want);
        return;
    }
    if (p->kind == MK_BIAS && t->dtype != FB_F32)
        fb_vf_add(v->f, "router.bias-dtype", t->name, NULL, NULL, "e_score_correction_bias is %s, not F32", fb_dtypes[t->dtype].name);
    int ok = 1;
    if (nd == -1) ok = t->ndim == 0 || (t->ndim == 1 && t->shape[0] == 1);
    else {
        if (t->ndim != nd) ok = 0;
        for (int d = 0; ok && d < nd && d < 2; d++)
            if (sh[d] >= 0 && t->shape[d] != sh[d]) ok = 0;
    }
    if (ok) return;
    char got[96] = "[", want[96] = "[";
    for (int d = 0; d < t->ndim; d++) {
        char b[24];
        snprintf(b, sizeof b, "%s%lld", d ? ", " : "", (long long)t->shape[d]);
        strcat(got, b);
    }
    strcat(got, "]");
    if (nd == -1) strcpy(want, "[] or [1]");
    else {
        for (int d = 0; d < nd; d++) {
            char b[24];
            if (sh[d] >= 0) snprintf(b, sizeof b, "%s%ld", d ? ", " : "", sh[d]);
            else snprintf(b, sizeof b, "%s*", d ? ", " : "");
            strcat(want, b);
        }
        strcat(want, "]");
    }
    // Expert-count mismatches of the router (REAP) get their own rule.
    if ((p->kind == MK_GATE || p->kind == MK_BIAS) && layer_E(v, p->layer) > 0 && t->ndim >= 1 &&
        t->shape[0] != layer_E(v, p->layer)) {
        char cons[256];
        snprintf(cons, sizeof cons, "vLLM: AssertionError in the weight loader of %s (param.size() != loaded_weight.size())",
                 p->kind == MK_BIAS ? "e_score_correction_bias" : "the gate (ReplicatedLinear)");
        fb_vf_add(v->f, "moe.experts", t->name, cons,
                  "slice the gate rows and e_score_correction_bias to the experts kept (REAP: retained indices, spec §B.3)",
                  "%s has %lld entries, %s is %ld", p->kind == MK_BIAS ? "e_score_correction_bias" : "gate.weight",
                  (long long)t->shape[0], v->Epl ? "moe_sparsity_config.num_experts[layer]" : v->arch->key_n_experts,
                  layer_E(v, p->layer));
        return;
    }
    fb_vf_add(v->f, "tensor.shape", t->name, NULL, NULL, "%s has shape %s %s, the %s scheme needs %s",
              SUFNAME[p->suf][0] ? SUFNAME[p->suf] : "tensor", got, fb_dtypes[t->dtype].name, SCNAME[sch], want);
}

// Scans a tensor in chunks: NaN/Inf for float tensors; negative or NaN block scales.
static int deep_scan(vctx *v, const fb_vtensor *t, const pname *p, fb_err *err) {
    if (!t->file) return 0;
    int is_block_scale = p->suf == S_WSCALE || p->suf == S_WSCALE_INV;
    if (!fb_dtypes[t->dtype].is_float) return 0;
    size_t esz = (size_t)fb_dtypes[t->dtype].bits / 8;
    if (esz == 0) return 0;
    size_t chunk = (4u << 20) / esz * esz;
    uint8_t *buf = fb_malloc(chunk);
    uint64_t off = 0, total = t->st->nbytes;
    while (off < total) {
        size_t n = total - off < chunk ? (size_t)(total - off) : chunk;
        fb_err e;
        if (fb_st_read(t->file, t->st, off, buf, n, &e) != 0) {
            fb_vf_add(v->f, "value.read", t->name, NULL, NULL, "%s", e.msg);
            break;
        }
        int64_t bad = fb_find_nonfinite(t->dtype, buf, n / esz, 1);
        if (bad >= 0) {
            fb_vf_add(v->f, is_block_scale ? "value.block-scale" : "value.nonfinite", t->name, NULL, NULL,
                      "NaN/Inf at element %lld", (long long)(off / esz + (uint64_t)bad));
            break;
        }
        if (is_block_scale) {
            int64_t neg = -1;
            for (size_t i = 0; i < n / esz && neg < 0; i++) {
                float x;
                if (fb_load_f32(t->dtype, buf, i, &x) == 0 && x < 0) neg = (int64_t)i;
            }
            if (neg >= 0) {
                fb_vf_add(v->f, "value.block-scale", t->name, NULL, NULL, "negative block scale at element %lld",
                          (long long)(off / esz + (uint64_t)neg));
                break;
            }
        }
        fb_st_release(t->file, t->st->offset + off, n);
        off += n;
    }
    free(buf);
    (void)err;
    return 0;
}

static void check_global(vctx *v, const char *name, float x, int input, int ct) {
    if (!isfinite(x) || x <= 0) {
        fb_vf_add(v->f, "value.global-scale", name, NULL, NULL, "%s is %g (must be finite and > 0)%s",
                  input ? (ct ? "input_global_scale" : "input_scale") : (ct ? "weight_global_scale" : "weight_scale_2"), x,
                  input && x == 0 ? ": an amax of 0, uncalibrated" : "");
        return;
    }
    if (!input) return;
    // compressed-tensors stores 2688/amax: amax 0 gives inf (old CT) or 1.0 (nan_to_num);
    // an implausible activation range marks an uncalibrated expert. ModelOpt: amax/2688.
    double amax = ct ? 2688.0 / x : (double)x * 2688.0;
    if (amax < 1e-20)
        fb_vf_add_sev(v->f, "value.uncalibrated", FB_SEV_ERROR, name, NULL, NULL,
                      "input scale %g means an activation amax of %g: never calibrated", x, amax);
    else if (x == 1.0f)
        fb_vf_add(v->f, "value.uncalibrated", name, NULL, NULL,
                  "input scale is exactly 1.0 (the placeholder written for amax 0 / no calibration)");
}

int fb_validate(const fb_vinput *in, const fb_validate_opts *o, fb_findings *f, fb_err *err) {
    static const fb_validate_opts dflt = {0};
    if (!o) o = &dflt;
    vctx V;
    memset(&V, 0, sizeof V);
    vctx *v = &V;
    v->in = in;
    v->o = o;
    v->f = f;
    // The family from config.json; MiniMax-M2's rules when it names none we know (the
    // config check then reports the architecture).
    v->arch = in->config ? fb_arch_from_config(in->config, NULL) : NULL;
    if (!v->arch) v->arch = fb_arch_by_name("minimax_m2");
    mods_init(v->arch, v->MODS);
    read_dims(v);
    f->n_tensors += in->n;
    fb_formats_init();

    // Parse every name; size the module tables.
    v->pn = fb_malloc((in->n ? in->n : 1) * sizeof *v->pn);
    v->max_layer = v->max_expert = -1;
    int has_bias_tensors = 0;
    long qnorm_width = -1;
    for (size_t i = 0; i < in->n; i++) {
        v->pn[i] = parse_name(v->arch, v->MODS, in->tensors[i].name);
        const pname *p = &v->pn[i];
        if (p->layer > v->max_layer && p->kind >= 0) v->max_layer = p->layer;
        if (p->expert > v->max_expert) v->max_expert = p->expert;
        if (p->kind == MK_BIAS) has_bias_tensors = 1;
        if (p->kind == MK_QNORM && p->suf == S_WEIGHT && in->tensors[i].ndim == 1) qnorm_width = (long)in->tensors[i].shape[0];
    }
    long nL = v->d.nhl > 0 ? v->d.nhl : v->max_layer + 1;
    long nE = v->d.E > 0 ? v->d.E : v->max_expert + 1;
    if (nL < 0) nL = 0;
    if (nE < 0) nE = 0;
    if (nL > 4096) nL = 4096;
    if (nE > 4096) nE = 4096;
    v->nL = nL;
    v->nE = nE;
    f->n_layers = v->d.nhl > 0 ? (int)v->d.nhl : (int)nL;
    f->n_experts = v->d.E > 0 ? (int)v->d.E : (int)nE;
    v->top = fb_malloc(3 * NSUF * sizeof(int32_t));
    v->lay = fb_malloc(((size_t)nL * N_LSLOTS + 1) * NSUF * sizeof(int32_t));
    v->exp = fb_malloc(((size_t)nL * nE * 3 + 1) * NSUF * sizeof(int32_t));
    memset(v->top, 0xff, 3 * NSUF * sizeof(int32_t));
    memset(v->lay, 0xff, ((size_t)nL * N_LSLOTS + 1) * NSUF * sizeof(int32_t));
    memset(v->exp, 0xff, ((size_t)nL * nE * 3 + 1) * NSUF * sizeof(int32_t));
    v->sc_qkv = fb_calloc((size_t)nL + 1, sizeof(int));
    v->sc_o = fb_calloc((size_t)nL + 1, sizeof(int));
    v->sc_moe = fb_calloc((size_t)nL + 1, sizeof(int));
    for (size_t i = 0; i < in->n; i++) {
        const pname *p = &v->pn[i];
        if (p->kind < 0 || p->suf == S_OTHER) continue;
        int32_t *m = mod_slot(v, p->kind, p->layer, p->expert);
        if (m && (p->layer < 0 || v->d.nhl < 0 || p->layer < v->d.nhl)) m[p->suf] = (int32_t)i;
    }

    // 1. declared quantization and the per-layer schemes
    const json_t *qc = in->config ? json_object_get(in->config, "quantization_config") : NULL;
    if (qc && !json_is_object(qc)) qc = NULL;
    const char *method = jstr(qc, "quant_method");
    int fam = tensor_family(v);
    ctgroup *groups = NULL;
    size_t ng = 0;
    ignlist ign;
    memset(&ign, 0, sizeof ign);
    int declared = SC_UNQ;
    if (qc && !method) {
        fb_vf_add(v->f, "quant.unknown-method", "quantization_config", NULL, NULL, "quantization_config has no quant_method");
    } else if (qc && !strcmp(method, "compressed-tensors")) {
        v->ct = 1;
        setup_ct(v, qc, &groups, &ng, &ign);
        declared = SC_SKIP;
        for (size_t i = 0; i < ng; i++)
            if (groups[i].scheme != SC_SKIP && groups[i].scheme != SC_UNQ) { declared = groups[i].scheme; break; }
        const char *sub = declared == SC_CT_NVFP4 ? "NVFP4 (W4A4)" : declared == SC_CT_NVFP4A16 ? "NVFP4A16"
                        : declared == SC_CT_WNA16 ? "W4A16 (pack-quantized)" : "(scheme not modelled)";
        set_kind(v, "compressed-tensors %s", sub);
        if (in->hf_quant_config)
            fb_vf_add(v->f, fam == SC_MO_NVFP4 ? "quant.shadowed" : "quant.stale-file", "hf_quant_config.json", NULL, NULL,
                      "hf_quant_config.json next to a compressed-tensors quantization_config");
    } else if (qc && !strcmp(method, "modelopt")) {
        setup_modelopt(v, qc, "quantization_config", 0);
        declared = v->sc_moe[0];
        set_kind(v, "ModelOpt %s", jstr(qc, "quant_algo") ? jstr(qc, "quant_algo") : "?");
    } else if (qc && strstr(method, "fp8")) {
        setup_fp8(v, qc);
        declared = SC_FP8;
        set_kind(v, "FP8 block %ldx%ld", v->sp.blk[0], v->sp.blk[1]);
        if (in->hf_quant_config)
            fb_vf_add(v->f, "quant.shadowed", "hf_quant_config.json", NULL, NULL,
                      "hf_quant_config.json is shadowed by an FP8 quantization_config in config.json");
    } else if (qc && (!strcmp(method, "auto-round") || !strcmp(method, "gptq"))) {
        setup_gptq(v, qc, method);
        declared = SC_GPTQ;
        set_kind(v, "%s int%d", method, v->sp.bits);
    } else if (qc) {
        fb_vf_add(v->f, "quant.unknown-method", "quantization_config.quant_method", NULL, NULL,
                  "quant_method \"%s\" is not one the validator knows", method);
        for (long L = 0; L < nL; L++) v->sc_qkv[L] = v->sc_o[L] = v->sc_moe[L] = SC_SKIP;
        declared = SC_SKIP;
        set_kind(v, "quantization %s", method);
    } else if (in->hf_quant_config) {
        const json_t *prod = json_object_get(in->hf_quant_config, "producer");
        const json_t *q = json_object_get(in->hf_quant_config, "quantization");
        const char *pn = jstr(prod, "name");
        if (!pn || strcmp(pn, "modelopt") || !json_is_object(q)) {
            fb_vf_add(v->f, "quant.unknown-method", "hf_quant_config.json", NULL, NULL,
                      "hf_quant_config.json without producer.name \"modelopt\" and a quantization object");
            for (long L = 0; L < nL; L++) v->sc_qkv[L] = v->sc_o[L] = v->sc_moe[L] = SC_SKIP;
            declared = SC_SKIP;
        } else {
            setup_modelopt(v, q, "hf_quant_config.json", 1);
            declared = v->sc_moe[0];
        }
        set_kind(v, "ModelOpt %s (hf_quant_config.json)", jstr(q, "quant_algo") ? jstr(q, "quant_algo") : "?");
    } else {
        declared = SC_UNQ;
        set_kind(v, "unquantized");
    }
    v->quantized = declared != SC_UNQ;
    v->fmt = declared;
    if (declared != SC_SKIP && !family_matches(declared, fam)) {
        char msg[256];
        snprintf(msg, sizeof msg, "the config declares %s%s%s but the Linear tensors are %s", qc ? "quant_method " : "no quantization",
                 qc && method ? method : "", qc ? "" : "", family_name(fam));
        fb_vf_add(v->f, "quant.stale", "config.json:quantization_config", NULL,
                  fam == SC_UNQ ? "remove quantization_config from config.json (the tensors are unquantized)" : NULL, "%s", msg);
    }
    if (in->qc_file && !(method && (!strcmp(method, "auto-round") || !strcmp(method, "gptq"))))
        fb_vf_add(v->f, "quant.stale-file", "quantization_config.json", NULL, NULL,
                  "quantization_config.json does not belong to the declared %s", method ? method : "unquantized checkpoint");

    // 2. ignore lists
    if (v->ct) {
        check_ignore_entries(v, &ign);
        check_ct_transformers_ignores(v, groups, ng, &ign);
        char nm[256];
        for (long L = 0; L < nL; L++) {
            int any = 0;
            for (int k = MK_Q; k <= MK_O; k++) {
                int32_t *m = mod_slot(v, k, L, -1);
                for (int s = 0; m && s < NSUF; s++) if (m[s] >= 0) any = 1;
            }
            if (any && (v->sc_qkv[L] < 0 || v->sc_o[L] < 0)) {
                vname(nm, sizeof nm, L, v->sc_qkv[L] < 0 ? "self_attn.qkv_proj" : "self_attn.o_proj");
                fb_vf_add(v->f, "ct.targets", nm, NULL, NULL, "no config group targets this module and no ignore entry matches it");
            }
            if (v->sc_moe[L] < 0 && nE > 0) {
                vname(nm, sizeof nm, L, "mlp.experts");
                fb_vf_add(v->f, "ct.targets", nm, NULL, NULL, "no config group targets the experts (vLLM tests %s.0.gate_proj)", nm);
            }
            if (v->sc_qkv[L] < 0) v->sc_qkv[L] = SC_SKIP;
            if (v->sc_o[L] < 0) v->sc_o[L] = SC_SKIP;
            if (v->sc_moe[L] < 0) v->sc_moe[L] = SC_SKIP;
        }
    }

    // The recipe's own ignore entries (preview): a regex lacking $ or reaching an expert is
    // caught before anything is written, even though the output lists expanded names.
    if (in->n_extra_ignore) {
        json_t *arr = json_array();
        for (size_t i = 0; i < in->n_extra_ignore; i++) json_array_append_new(arr, json_string(in->extra_ignore[i]));
        ignlist ri;
        ign_build(v, arr, "recipe.ignore", &ri);
        check_ignore_entries(v, &ri);
        ign_free(v, &ri);
        json_decref(arr);
    }

    // 3. every tensor: lands in a parameter, right dtype and shape
    char cons[1400], msg[256], nm[512], fix[256];
    for (size_t i = 0; i < in->n; i++) {
        const fb_vtensor *t = &in->tensors[i];
        const pname *p = &v->pn[i];
        if (p->kind < 0 || p->suf == S_OTHER) {
            keyerror_text(v, t->name, cons, sizeof cons);
            // transformers 5 / llm-compressor 0.14 save MoE experts as experts.N.gate_proj/up_proj/down_proj;
            // a family whose checkpoints say w1/w3/w2 (MiniMax-M2) has a loader that maps only its own names
            const char *fx = NULL;
            static const char *const HF[3] = {".gate_proj.", ".up_proj.", ".down_proj."}, *const HN[3] = {"gate_proj", "up_proj", "down_proj"};
            static const int MK_OF[3] = {MK_W1, MK_W3, MK_W2};
            for (int k = 0; k < 3 && !fx; k++)
                if (strstr(t->name, ".experts.") && strstr(t->name, HF[k]) && strcmp(v->MODS[MK_OF[k]].path, HN[k]) != 0) {
                    snprintf(fix, sizeof fix, "expert names of transformers 5 (llm-compressor 0.14 writes them); %s's loader maps "
                             "experts.N.%s/%s/%s (gate/up/down): rename gate_proj -> %s, up_proj -> %s, down_proj -> %s",
                             v->arch->classes[0], v->MODS[MK_W1].path, v->MODS[MK_W3].path, v->MODS[MK_W2].path,
                             v->MODS[MK_W1].path, v->MODS[MK_W3].path, v->MODS[MK_W2].path);
                    fx = fix;
                }
            fb_vf_add(f, "tensor.keyerror", t->name, cons, fx, "tensor is not a parameter of %s", v->arch->classes[0]);
            continue;
        }
        if (p->layer >= 0 && v->d.nhl > 0 && p->layer >= v->d.nhl) {
            // get_spec_layer_idx_from_weight_name tests "model.layers.N." but AutoWeightsLoader
            // has already stripped "model.", so in the vLLM read (01d99586) MTP layers are not
            // skipped either: every layer past num_hidden_layers is a KeyError.
            keyerror_text(v, t->name, cons, sizeof cons);
            if (v->d.mtp > 0 && p->layer < v->d.nhl + v->d.mtp) {
                size_t cl = strlen(cons);
                snprintf(cons + cl, sizeof cons - cl, "; the MTP skip in load_weights compares against \"model.layers.N.\" after the prefix was stripped, so it does not fire; transformers reports the keys as unexpected");
            }
            fb_vf_add(f, "layer.beyond", t->name, cons, NULL, "layer %ld >= num_hidden_layers %ld%s", p->layer, v->d.nhl,
                      v->d.mtp > 0 && p->layer < v->d.nhl + v->d.mtp ? " (an MTP layer)" : "");
            continue;
        }
        if (p->expert >= 0 && layer_E(v, p->layer) > 0 && p->expert >= layer_E(v, p->layer)) {
            keyerror_text(v, t->name, cons, sizeof cons);
            fb_vf_add(f, "moe.experts", t->name, cons, NULL, "expert %ld >= %s %ld", p->expert,
                      v->Epl ? "moe_sparsity_config.num_experts[layer]" : v->arch->key_n_experts, layer_E(v, p->layer));
            continue;
        }
        if (p->suf == S_KSCALE || p->suf == S_VSCALE) {
            if (p->kind == MK_K || p->kind == MK_V) {
                char pn2[512];
                vllm_param_name(v, t->name, pn2, sizeof pn2);
                snprintf(cons, sizeof cons, "vLLM before PR #37214: KeyError: '%s'%s", pn2,
                         v->kv_allowed ? "" : "; no kv-cache quantization is configured, so the scale is meaningless");
                fb_vf_add_sev(f, "tensor.kv-scale", v->kv_allowed ? FB_SEV_WARNING : FB_SEV_ERROR, t->name, cons, NULL,
                              "kv-cache scale %s", v->kv_allowed ? "(needs vLLM with PR #37214)" : "without a kv-cache scheme");
                continue;
            }
        }
        int sch = module_scheme(v, p->kind, p->layer);
        int role = suffix_role(v, p->kind, sch, p->suf);
        if (role == R_NO) {
            if (p->kind == MK_BIAS && p->suf == S_NONE) continue;  // no use_routing_bias: config.use_routing_bias says it
            keyerror_text(v, t->name, cons, sizeof cons);
            if (p->kind == MK_GATE || p->kind == MK_BIAS) {
                char rn[128];
                snprintf(rn, sizeof rn, "%s.%s", v->MODS[p->kind].path, "*");
                snprintf(nm, sizeof nm, "%s.%ld.%s", v->arch->layers, p->layer, rn);
                fb_vf_add(f, "router.quantized", nm, cons, router_fix(v, fix, sizeof fix),
                          "the router holds quantized tensors (%s, ...); it may only hold .weight", SUFNAME[p->suf]);
            }
            else if (p->suf == S_IGSCALE && sch == SC_CT_NVFP4A16)
                fb_vf_add(f, "tensor.keyerror", t->name, cons, "drop input_global_scale: NVFP4A16 (no input_activations) has none",
                          "input_global_scale in an NVFP4A16 checkpoint");
            else {
                snprintf(msg, sizeof msg, "%s is not a parameter of the %s scheme vLLM builds for this module",
                         SUFNAME[p->suf][0] ? SUFNAME[p->suf] : "tensor", SCNAME[sch]);
                fb_vf_add(f, "tensor.keyerror", t->name, cons, NULL, "%s", msg);
            }
            continue;
        }
        if (role == R_DROP) {
            fb_vf_add(f, "tensor.dropped", t->name, NULL, NULL, "%s has no parameter in vLLM and is skipped", SUFNAME[p->suf]);
            continue;
        }
        if (sch == SC_CT_NVFP4A16 && p->suf == S_IGSCALE)
            fb_vf_add_sev(f, "tensor.keyerror", FB_SEV_WARNING, t->name,
                          "vLLM's NVFP4 MoE method registers input scales even for A16 (ignored there); other versions and loaders may reject it",
                          "drop input_global_scale: NVFP4A16 has none", "input_global_scale on an NVFP4A16 expert");
        check_tensor_shape(v, t, p, sch);
    }

    // 4. completeness: every layer, every expert, every required parameter
    const char *missing_cons = v->quantized
        ? NULL
        : "vLLM: ValueError: Following weights were not initialized from checkpoint (unquantized models are checked)";
    long expect_layers = v->d.nhl > 0 ? v->d.nhl : nL;
    for (int k = MK_EMBED; k <= MK_NORM; k++) {
        if (k == MK_LMHEAD && v->tie) continue;
        if (mod_slot(v, k, -1, -1)[S_WEIGHT] < 0) {
            snprintf(nm, sizeof nm, "%s.weight", v->MODS[k].path);
            fb_vf_add(f, "tensor.missing", nm, missing_cons, NULL, "weight missing");
        }
    }
    long *ecount = fb_calloc((size_t)nL + 1, sizeof(long));
    for (long L = 0; L < expect_layers && L < nL; L++) {
        int layer_any = 0;
        for (int k = MK_FIRST_LAYER; k <= MK_ROTARY && !layer_any; k++)
            for (int s = 0; s < NSUF; s++) if (mod_slot(v, k, L, -1)[s] >= 0) layer_any = 1;
        for (long E = 0; E < nE; E++) {
            int any = 0;
            for (int k = MK_W1; k <= MK_W3; k++)
                for (int s = 0; s < NSUF; s++) if (mod_slot(v, k, L, E)[s] >= 0) any = 1;
            ecount[L] += any;
            layer_any |= any;
        }
        if (!layer_any) {
            snprintf(nm, sizeof nm, "model.layers.%ld", L);
            fb_vf_add(f, "config.layers", nm, NULL, NULL, "layer %ld has no tensors (num_hidden_layers %ld)", L, expect_layers);
            continue;
        }
        for (int k = MK_FIRST_LAYER; k <= MK_BIAS; k++) {
            if (!v->MODS[k].path) continue;
            if ((k == MK_QNORM || k == MK_KNORM) && !v->use_qk_norm) continue;
            if (k == MK_BIAS && !v->use_bias) continue;
            int sch = module_scheme(v, k, L);
            int32_t *m = mod_slot(v, k, L, -1);
            for (int s = 0; s < S_OTHER; s++) {
                if (suffix_role(v, k, sch, s) != R_REQ || m[s] >= 0) continue;
                if (k == MK_BIAS) fb_arch_tensor(v->arch, FB_ROLE_ROUTER_BIAS, (int)L, -1, nm, sizeof nm);
                else snprintf(nm, sizeof nm, "%s.%ld.%s.%s", v->arch->layers, L, v->MODS[k].path, SUFNAME[s]);
                fb_vf_add(f, "tensor.missing", nm, missing_cons, NULL, "%s missing (%s scheme)", k == MK_BIAS ? "e_score_correction_bias" : SUFNAME[s], SCNAME[sch]);
            }
        }
        if (ecount[L] == 0) continue;  // counted below
        int sch = module_scheme(v, MK_W1, L);
        for (long E = 0; E < nE && E < layer_E(v, L); E++)
            for (int k = MK_W1; k <= MK_W3; k++) {
                int32_t *m = mod_slot(v, k, L, E);
                for (int s = 0; s < S_OTHER; s++) {
                    if (suffix_role(v, k, sch, s) != R_REQ || m[s] >= 0) continue;
                    char mn[384];
                    fb_arch_module(v->arch, (fb_role)MK_ROLE[k], (int)L, (int)E, mn, sizeof mn);
                    snprintf(nm, sizeof nm, "%s.%s", mn, SUFNAME[s]);
                    fb_vf_add(f, "tensor.missing", nm, missing_cons, NULL, "%s missing (%s scheme)", SUFNAME[s], SCNAME[sch]);
                }
            }
    }
    // experts present per layer vs num_local_experts (REAP)
    if (v->Epl && expect_layers > 0) {
        // Per-layer counts: each layer against its own entry; the family's key must be the
        // largest (what a loader that reads the counts allocates); and the verdict on loading.
        long mx = 0, mn = -1;
        for (long L = 0; L < v->d.nhl; L++) {
            if (v->Epl[L] > mx) mx = v->Epl[L];
            if (v->Epl[L] > 0 && (mn < 0 || v->Epl[L] < mn)) mn = v->Epl[L];
        }
        for (long L = 0; L < expect_layers && L < nL; L++)
            if (ecount[L] > 0 && v->Epl[L] > 0 && ecount[L] != v->Epl[L]) {
                fb_arch_block(v->arch, FB_BLOCK_EXPERTS, (int)L, nm, sizeof nm);
                fb_vf_add(f, "moe.experts", nm, NULL, NULL, "layer holds %ld experts, moe_sparsity_config.num_experts[%ld] is %d",
                          ecount[L], L, v->Epl[L]);
            }
        char where[96];
        snprintf(where, sizeof where, "config.json:%s", v->arch->key_n_experts);
        if (v->d.E > 0 && mx != v->d.E)
            fb_vf_add(f, "config.moe_sparsity", where, NULL, NULL,
                      "%s is %ld, the largest count of moe_sparsity_config.num_experts is %ld", v->arch->key_n_experts, v->d.E, mx);
        long k = jint(v->in->config, "num_experts_per_tok", -1);
        if (k > 0 && mn > 0 && k > mn)
            fb_vf_add(f, "config.num_experts_per_tok", "config.json:num_experts_per_tok", NULL, NULL,
                      "num_experts_per_tok %ld > %ld experts of the smallest layer (moe_sparsity_config)", k, mn);
        if (mn > 0 && mn != mx) {
            // One finding naming every layer and its count (runs of equal counts merged).
            char list[1024];
            size_t n = 0;
            for (long L = 0; L < v->d.nhl && n < sizeof list - 48; L++) {
                if (v->Epl[L] <= 0) continue;
                n += (size_t)snprintf(list + n, sizeof list - n, "%slayer %ld: %d", n ? ", " : "", L, v->Epl[L]);
            }
            char ncons[512];
            snprintf(ncons, sizeof ncons, "vLLM (%s) builds %s = %ld experts and gate rows in every layer and reads no per-layer "
                     "counts: AssertionError in the gate's weight loader (param.size() != loaded_weight.size()) for the first "
                     "smaller layer; transformers likewise", v->arch->vllm_model, v->arch->key_n_experts, v->d.E);
            fb_vf_add(f, "moe.nonuniform", "config.json:moe_sparsity_config", ncons, NULL,
                      "per-layer expert counts (%s), from %ld to %ld", list, mn, mx);
        }
    } else if (v->d.E > 0 && expect_layers > 0) {
        long present_max = 0;
        for (long L = 0; L < expect_layers && L < nL; L++) present_max = ecount[L] > present_max ? ecount[L] : present_max;
        long beyond = v->max_expert + 1;
        if (beyond > v->d.E && beyond > present_max) present_max = beyond;
        int uniform = 1;
        for (long L = 0; L < expect_layers && L < nL; L++) if (ecount[L] != ecount[0]) uniform = 0;
        char where[96];
        snprintf(where, sizeof where, "config.json:%s", v->arch->key_n_experts);
        if (uniform && v->max_expert + 1 != v->d.E && v->max_expert >= 0)
            fb_vf_add(f, "config.num_local_experts", where, NULL, NULL, "%s is %ld but the layers hold experts 0..%ld",
                      v->arch->key_n_experts, v->d.E, v->max_expert);
        else
            for (long L = 0; L < expect_layers && L < nL; L++)
                if (ecount[L] > 0 && ecount[L] != v->d.E) {
                    fb_arch_block(v->arch, FB_BLOCK_EXPERTS, (int)L, nm, sizeof nm);
                    fb_vf_add(f, "moe.experts", nm, NULL, NULL, "layer holds %ld experts, %s is %ld", ecount[L], v->arch->key_n_experts, v->d.E);
                }
    }
    free(ecount);

    // 5. values
    int rc = 0;
    if (!o->no_values) {
        int ct = v->ct;
        int gsuf = ct ? S_WGSCALE : S_WSCALE2, isuf = ct ? S_IGSCALE : S_ISCALE;
        for (long L = 0; L < expect_layers && L < nL; L++) {
            float gq[3], iq[3];
            int hg[3] = {0, 0, 0}, hi[3] = {0, 0, 0};
            for (int k = MK_Q; k <= MK_O; k++) {
                int32_t *m = mod_slot(v, k, L, -1);
                float x;
                if (m[gsuf] >= 0 && read_scalar_f32(v, &in->tensors[m[gsuf]], &x)) {
                    check_global(v, in->tensors[m[gsuf]].name, x, 0, ct);
                    if (k != MK_O) { gq[k - MK_Q] = x; hg[k - MK_Q] = 1; }
                }
                if (m[isuf] >= 0 && read_scalar_f32(v, &in->tensors[m[isuf]], &x)) {
                    check_global(v, in->tensors[m[isuf]].name, x, 1, ct);
                    if (k != MK_O) { iq[k - MK_Q] = x; hi[k - MK_Q] = 1; }
                }
            }
            if (hg[0] && hg[1] && hg[2] && (fb_f32_bits(gq[0]) != fb_f32_bits(gq[1]) || fb_f32_bits(gq[1]) != fb_f32_bits(gq[2]))) {
                snprintf(nm, sizeof nm, "model.layers.%ld.self_attn.qkv_proj.%s", L, SUFNAME[gsuf]);
                fb_vf_add(f, "value.qkv-global-scale", nm, NULL, NULL, "%s differs across q/k/v: %.9g / %.9g / %.9g",
                          SUFNAME[gsuf], gq[0], gq[1], gq[2]);
            }
            if (hi[0] && hi[1] && hi[2] && (fb_f32_bits(iq[0]) != fb_f32_bits(iq[1]) || fb_f32_bits(iq[1]) != fb_f32_bits(iq[2]))) {
                snprintf(nm, sizeof nm, "model.layers.%ld.self_attn.qkv_proj.%s", L, SUFNAME[isuf]);
                fb_vf_add(f, "value.qkv-input-scale", nm, NULL, NULL, "%s differs across q/k/v: %.9g / %.9g / %.9g",
                          SUFNAME[isuf], iq[0], iq[1], iq[2]);
            }
            for (long E = 0; E < nE; E++) {
                float g13[2];
                int h13[2] = {0, 0};
                for (int k = MK_W1; k <= MK_W3; k++) {
                    int32_t *m = mod_slot(v, k, L, E);
                    float x;
                    if (m[gsuf] >= 0 && read_scalar_f32(v, &in->tensors[m[gsuf]], &x)) {
                        check_global(v, in->tensors[m[gsuf]].name, x, 0, ct);
                        if (k != MK_W2) { g13[k == MK_W1 ? 0 : 1] = x; h13[k == MK_W1 ? 0 : 1] = 1; }
                    }
                    if (m[isuf] >= 0 && read_scalar_f32(v, &in->tensors[m[isuf]], &x)) check_global(v, in->tensors[m[isuf]].name, x, 1, ct);
                }
                if (h13[0] && h13[1] && fb_f32_bits(g13[0]) != fb_f32_bits(g13[1])) {
                    char eb[256];
                    fb_arch_block(v->arch, FB_BLOCK_EXPERTS, (int)L, eb, sizeof eb);
                    snprintf(nm, sizeof nm, "%s.%ld.w13.%s", eb, E, SUFNAME[gsuf]);
                    fb_vf_add(f, "value.w13-global-scale", nm, NULL, NULL, "%s of w1 and w3 differ: %.9g vs %.9g", SUFNAME[gsuf],
                              g13[0], g13[1]);
                }
            }
        }
    }
    if (o->deep) {
        for (size_t i = 0; i < in->n && rc == 0; i++) {
            const pname *p = &v->pn[i];
            if (p->kind < 0) continue;
            rc = deep_scan(v, &in->tensors[i], p, err);
        }
    }

    // 6. config.json
    check_config(v, has_bias_tensors, qnorm_width);

    for (size_t i = 0; i < ng; i++) ign_free(v, &groups[i].targets);
    free(groups);
    ign_free(v, &ign);
    free(v->pn); free(v->top); free(v->lay); free(v->exp); free(v->Epl);
    free(v->sc_qkv); free(v->sc_o); free(v->sc_moe);
    return rc;
}
