// qformat_modelopt.c: NVIDIA ModelOpt's NVFP4 unified Hugging Face checkpoint
// (spec/autoround-reap-modelopt.md §C; nvidia-modelopt 0.47 export/quant_utils.py and
// qtensor/nvfp4_tensor.py), the layout vLLM loads with `--quantization modelopt`:
//   P.weight          U8  [R, C/2]  two E2M1 codes a byte, low nibble first (as compressed-tensors)
//   P.weight_scale    F8  [R, C/16] e4m3 scale of each 16-element group
//   P.weight_scale_2  F32 []        amax / 2688, shared by a fused set (q/k/v, an expert's w1/w3)
//   P.input_scale     F32 []        W4A4 (quant_algo NVFP4) only: input amax / 2688
// The arithmetic differs from compressed-tensors' (quant/nvfp4.h), which is why it is its own
// kernel here; every step is one IEEE f32 operation, in modelopt's order:
//   s2  = amax / 2688                          (get_weights_scaling_factor_2: amax.float() / (6*448))
//   per 16-group: m = max|w|; b = m / (6 * s2); b = 1 if b == 0; b = e4m3(clamp(b, 2^-9, 448))
//   per element:  y = w / (float(b) * s2); E2M1 code of y as compressed-tensors' (ties to even,
//                 saturating at 6, sign bit iff y < 0: _cast_fp4 gives the same codes)
//   dequant:      w' = BF16(e2m1 * (float(b) * s2))  (NVFP4QTensor.dequantize)
// Inputs are bf16-exact f32 rows (as for quant/nvfp4.h). An amax of 0 (an all-zero fused set)
// has no defined result in modelopt (0/0 scales): fb_modelopt_weight_scale2 returns 0 and the
// writer refuses the tensor.
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "quant/formats.h"
#include "quant/modelopt.h"
#include "quant/nvfp4.h"
#include "quant/qformat.h"
#include "quant/simd_cpu.h"

#define MO_AMAX_DIV 2688.0f  // E2M1_MAX * E4M3_MAX = 6.0 * 448.0 (a Python float product, exact)
#define MO_SCALE_MIN 0x1p-9f // _cast_per_block_scale_to_fp8's clamp: the smallest e4m3 subnormal

float fb_modelopt_weight_scale2(const float *amax, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabsf(amax[i]) > m) m = fabsf(amax[i]);  // preprocess_linear_fusion: max of the set
    return m / MO_AMAX_DIV;
}

float fb_modelopt_input_scale(float act_absmax) {
    // the input quantizer's amax is the max of bf16 activations, a bf16 value (as the
    // compressed-tensors path, fb_nvfp4_input_global_scale, takes it)
    float a = fb_bf16_to_f32(fb_f32_to_bf16(fabsf(act_absmax)));
    return a / MO_AMAX_DIV;
}

// The block scale of a group whose max |w| is m: its e4m3 code, and *t = float(code) * s2, the
// divisor of its elements. d = 6 * s2.
static inline uint8_t block_scale(float m, float d, float s2, float *t) {
    float b = m / d;
    if (b == 0.0f) b = 1.0f;
    b = fminf(fmaxf(b, MO_SCALE_MIN), FB_NVFP4_FP8_MAX);
    uint8_t code = fb_f32_to_e4m3(b);
    *t = fb_e4m3_to_f32(code) * s2;  // weights_scaling_factor.float() * wsf2
    return code;
}

void fb_modelopt_quantize_rows_ref(const float *w, size_t nrows, size_t cols, float s2, uint8_t *packed,
                                   uint8_t *scale) {
    size_t ng = cols / FB_NVFP4_GROUP;
    float d = 6.0f * s2;  // (E2M1_MAX * weights_scaling_factor_2), before the division
    for (size_t r = 0; r < nrows; r++)
        for (size_t k = 0; k < ng; k++) {
            const float *x = w + r * cols + k * FB_NVFP4_GROUP;
            float t;
            scale[r * ng + k] = block_scale(fb_nvfp4_absmax_ref(x, FB_NVFP4_GROUP), d, s2, &t);
            uint8_t *o = packed + r * (cols / 2) + k * (FB_NVFP4_GROUP / 2);
            for (int i = 0; i < FB_NVFP4_GROUP; i += 2)
                o[i / 2] = (uint8_t)(fb_nvfp4_fp4_nibble(x[i] / t) | (fb_nvfp4_fp4_nibble(x[i + 1] / t) << 4));
        }
}

#if defined(__x86_64__)
#include <immintrin.h>


// AVX2 element step: the block scale stays scalar (one per 16 elements, the same function as
// the reference); the 16 divisions and E2M1 roundings of a group run 8 lanes at a time with
// the reference's operations: one correctly rounded vdivps, then the nibble of
// fb_nvfp4_fp4_nibble (clamp to [-6, 6], the threshold count, sign bit iff y < 0).
__attribute__((target("avx2"))) static inline uint32_t nibbles8(__m256 x, __m256 t) {
    __m256 y = _mm256_div_ps(x, t);
    y = _mm256_min_ps(_mm256_max_ps(y, _mm256_set1_ps(-6.0f)), _mm256_set1_ps(6.0f));
    __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), y);
    static const float thr[7] = {0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f};
    __m256i idx = _mm256_setzero_si256();
    for (int k = 0; k < 7; k++) {  // ties: > at 0.25, 1.25, 2.5, 5; >= at 0.75, 1.75, 3.5 (round half even)
        __m256 c = (k & 1) ? _mm256_cmp_ps(a, _mm256_set1_ps(thr[k]), _CMP_GE_OQ)
                           : _mm256_cmp_ps(a, _mm256_set1_ps(thr[k]), _CMP_GT_OQ);
        idx = _mm256_sub_epi32(idx, _mm256_castps_si256(c));  // a true lane is -1
    }
    __m256i neg = _mm256_castps_si256(_mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_LT_OQ));
    idx = _mm256_or_si256(idx, _mm256_and_si256(neg, _mm256_set1_epi32(8)));
    int32_t l[8];
    _mm256_storeu_si256((__m256i *)l, idx);
    uint32_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint32_t)l[i] << (4 * i);  // lane i -> bits 4i..4i+3
    return v;
}

__attribute__((target("avx2"))) static void quantize_rows_avx2(const float *w, size_t nrows, size_t cols, float s2,
                                                                uint8_t *packed, uint8_t *scale) {
    size_t ng = cols / FB_NVFP4_GROUP;
    float d = 6.0f * s2;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    for (size_t r = 0; r < nrows; r++)
        for (size_t k = 0; k < ng; k++) {
            const float *x = w + r * cols + k * FB_NVFP4_GROUP;
            __m256 x0 = _mm256_loadu_ps(x), x1 = _mm256_loadu_ps(x + 8);
            // max |w| of the group: exact (max of magnitudes), as the reference's bit-pattern max
            __m256 mv = _mm256_max_ps(_mm256_and_ps(x0, absmask), _mm256_and_ps(x1, absmask));
            __m128 h = _mm_max_ps(_mm256_castps256_ps128(mv), _mm256_extractf128_ps(mv, 1));
            h = _mm_max_ps(h, _mm_movehl_ps(h, h));
            h = _mm_max_ss(h, _mm_movehdup_ps(h));
            float t;
            scale[r * ng + k] = block_scale(_mm_cvtss_f32(h), d, s2, &t);
            __m256 tv = _mm256_set1_ps(t);
            uint32_t lo = nibbles8(x0, tv), hi = nibbles8(x1, tv);
            uint8_t *o = packed + r * (cols / 2) + k * (FB_NVFP4_GROUP / 2);
            memcpy(o, &lo, 4);  // little-endian: element 2j in the low nibble of byte j
            memcpy(o + 4, &hi, 4);
        }
}
#endif

typedef void (*mo_quant_fn)(const float *, size_t, size_t, float, uint8_t *, uint8_t *);
static mo_quant_fn mo_quant;
static const char *mo_impl_name;
static pthread_once_t mo_once = PTHREAD_ONCE_INIT;

// The fast path follows FB_QUANT_IMPL like every kernel (quant/simd_cpu.h).
static void mo_pick(void) {
    fb_formats_init();
    mo_quant = fb_modelopt_quantize_rows_ref;
    mo_impl_name = "scalar";
#if defined(__x86_64__)
    if (fb_qsimd_allowed("avx2") && fb_qsimd_have_avx2()) {
        mo_quant = quantize_rows_avx2;
        mo_impl_name = "avx2";
    }
#endif
}

void fb_modelopt_quantize_rows(const float *w, size_t nrows, size_t cols, float s2, uint8_t *packed,
                               uint8_t *scale) {
    FB_ASSERT(cols % FB_NVFP4_GROUP == 0);
    pthread_once(&mo_once, mo_pick);
    mo_quant(w, nrows, cols, s2, packed, scale);
}

const char *fb_modelopt_impl(void) {
    pthread_once(&mo_once, mo_pick);
    return mo_impl_name;
}

void fb_modelopt_dequant_rows(const uint8_t *packed, const uint8_t *scale, size_t nrows, size_t cols,
                              float s2, float *out) {
    size_t ng = cols / FB_NVFP4_GROUP;
    for (size_t r = 0; r < nrows; r++)
        for (size_t k = 0; k < ng; k++) {
            float t = fb_e4m3_to_f32(scale[r * ng + k]) * s2, lut[16];
            for (int n = 0; n < 16; n++)
                lut[n] = fb_bf16_to_f32(fb_f32_to_bf16(fb_nvfp4_fp4_value((uint8_t)n) * t));
            const uint8_t *p = packed + r * (cols / 2) + k * (FB_NVFP4_GROUP / 2);
            float *o = out + r * cols + k * FB_NVFP4_GROUP;
            for (int i = 0; i < FB_NVFP4_GROUP / 2; i++) {
                o[2 * i] = lut[p[i] & 15];
                o[2 * i + 1] = lut[p[i] >> 4];
            }
        }
}

// ---- the format entry ----------------------------------------------------------------------------

static void shape(int k, int64_t R, int64_t C, int64_t G, int64_t sh[2]) {
    (void)G;
    switch (k) {
    case 0: sh[0] = R, sh[1] = C / 2; break;
    case 1: sh[0] = R, sh[1] = C / FB_NVFP4_GROUP; break;
    default: sh[0] = 1, sh[1] = 0; break;  // 0-d scalars
    }
}

static void quantize_rows(const float *rows, size_t nr, size_t R, size_t C, size_t G, size_t r0,
                          float s2, void *const out[]) {
    (void)R, (void)G;
    fb_modelopt_quantize_rows(rows, nr, C, s2, (uint8_t *)out[0] + r0 * C / 2,
                              (uint8_t *)out[1] + r0 * C / FB_NVFP4_GROUP);
}

static void finish(size_t R, size_t C, size_t G, float s2, float is, void *const out[]) {
    (void)R, (void)C, (void)G;
    memcpy(out[2], &s2, 4);
    if (out[3]) memcpy(out[3], &is, 4);
}

// A ModelOpt module: P.weight is U8 (packed) and P.weight_scale_2 exists. A plain U8 weight
// without the second scale is not one (and not any format's).
static int detect(const fb_qfmt_read *rd, const char *p) {
    char b[512];
    const fb_st_tensor *t = fb_qf_part(rd, p, ".weight", NULL, b, sizeof b);
    return t && t->dtype == FB_U8 && fb_qf_part(rd, p, ".weight_scale_2", NULL, b, sizeof b);
}

static int logical_shape(const fb_qfmt_read *rd, const char *p, int64_t *R, int64_t *C, fb_err *err) {
    char b[512];
    const fb_st_file *f;
    const fb_st_tensor *t = fb_qf_part(rd, p, ".weight", &f, b, sizeof b);
    if (!t || t->ndim != 2) return t ? fb_qf_check_2d(f, t, FB_U8, 0, 0, err) : -1;
    *R = t->shape[0];
    *C = t->shape[1] * 2;
    return 0;
}

static int load_rows(const fb_qfmt_read *rd, const char *p, const char *name, int64_t r0,
                     int64_t nrows, float *out, fb_err *err) {
    static const char *const sfx[3] = {".weight", ".weight_scale", ".weight_scale_2"};
    return fb_qf_fp4_rows(rd, p, name, sfx, "ModelOpt NVFP4", fb_modelopt_dequant_rows, r0, nrows, out,
                          err);
}

const fb_qfmt fb_qfmt_modelopt = {
    .name = "modelopt",
    .n_out = 4,
    .out = {
        {".weight", FB_U8, 2, 0},
        {".weight_scale", FB_F8_E4M3, 2, 0},
        {".weight_scale_2", FB_F32, 0, 0},
        {".input_scale", FB_F32, 0, 1},
    },
    .global_scale = 1,
    .fixed_group = FB_NVFP4_GROUP,
    .fused_scale = fb_modelopt_weight_scale2,
    .input_scale = fb_modelopt_input_scale,
    .shape = shape,
    .quantize_rows = quantize_rows,
    .finish = finish,
    .detect = detect,
    .logical_shape = logical_shape,
    .load_rows = load_rows,
};

// ---- hf_quant_config.json and quantization_config ------------------------------------------------

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

// 1 when some name of the sorted list starts with the first n bytes of s (then s[:n] + "*"
// is a prefix wildcard of a quantized module).
static int any_prefixed(const char *const *sorted, size_t ns, const char *s, size_t n) {
    size_t lo = 0, hi = ns;
    while (lo < hi) {  // first name >= s[:n]
        size_t mid = lo + (hi - lo) / 2;
        if (strncmp(sorted[mid], s, n) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo < ns && strncmp(sorted[lo], s, n) == 0;
}

// 1 when s[:n] is itself a name of the sorted list.
static int is_quantized(const char *const *sorted, size_t ns, const char *s, size_t n) {
    char *k = fb_malloc(n + 1);
    memcpy(k, s, n);
    k[n] = 0;
    int hit = bsearch(&k, sorted, ns, sizeof *sorted, cmp_str) != NULL;
    free(k);
    return hit;
}

// modelopt's _prefix_wildcard_summarize_exclude_modules: each unquantized module is listed by
// its shortest dot-bounded prefix wildcard that matches no quantized module ("a*", or the pair
// {"a", "a.*"} written as "a.*"), else by its own name. The result is sorted.
static json_t *summarize_excludes(const char *const *quantized, size_t nq, const char *const *unq, size_t nu) {
    const char **q = fb_malloc((nq ? nq : 1) * sizeof *q);
    memcpy(q, quantized, nq * sizeof *q);
    qsort(q, nq, sizeof *q, cmp_str);
    char **res = fb_malloc((nu ? nu : 1) * sizeof *res);
    size_t nr = 0;
    for (size_t u = 0; u < nu; u++) {
        const char *s = unq[u];
        size_t n = strlen(s);
        char *pick = NULL;
        for (size_t i = 0; i < n && !pick; i++) {
            if (s[i] != '.') continue;
            if (!any_prefixed(q, nq, s, i)) {  // "s[:i]*"
                pick = fb_malloc(i + 2);
                memcpy(pick, s, i);
                memcpy(pick + i, "*", 2);
            } else if (!is_quantized(q, nq, s, i) && !any_prefixed(q, nq, s, i + 1)) {  // {s[:i], s[:i]+".*"}
                pick = fb_malloc(i + 3);
                memcpy(pick, s, i);
                memcpy(pick + i, ".*", 3);
            }
        }
        if (!pick) pick = fb_strdup(s);
        int dup = 0;
        for (size_t k = 0; k < nr && !dup; k++) dup = !strcmp(res[k], pick);
        if (dup) free(pick);
        else res[nr++] = pick;
    }
    qsort(res, nr, sizeof *res, cmp_str);
    json_t *a = json_array();
    for (size_t k = 0; k < nr; k++) {
        json_array_append_new(a, json_string(res[k]));
        free(res[k]);
    }
    free(res);
    free(q);
    return a;
}

json_t *fb_modelopt_config_json(const char *const *quantized, size_t nq, const char *const *unquantized, size_t nu,
                                int w4a4, json_t **hf_quant_config) {
    const char *algo = w4a4 ? "NVFP4" : "W4A16_NVFP4";
    json_t *ex = summarize_excludes(quantized, nq, unquantized, nu);
    json_t *prod = json_pack("{s:s, s:s}", "name", "modelopt", "version", FB_MODELOPT_VERSION);
    // hf_quant_config.json: get_quant_config's key order
    json_t *q = json_object();
    json_object_set_new(q, "quant_algo", json_string(algo));
    json_object_set_new(q, "kv_cache_quant_algo", json_null());
    json_object_set_new(q, "group_size", json_integer(FB_NVFP4_GROUP));
    json_object_set(q, "exclude_modules", ex);
    *hf_quant_config = json_pack("{s:O, s:o}", "producer", prod, "quantization", q);
    // config.json quantization_config: convert_hf_quant_config_format's
    json_t *grp = json_object();
    if (w4a4)
        json_object_set_new(grp, "input_activations", json_pack("{s:b, s:i, s:s, s:i}", "dynamic", 0, "num_bits", 4, "type",
                                                                "float", "group_size", FB_NVFP4_GROUP));
    json_object_set_new(grp, "weights", json_pack("{s:b, s:i, s:s, s:i}", "dynamic", 0, "num_bits", 4, "type", "float",
                                                  "group_size", FB_NVFP4_GROUP));
    json_object_set_new(grp, "targets", json_pack("[s]", "Linear"));
    json_t *qc = json_object();
    json_object_set_new(qc, "config_groups", json_pack("{s:o}", "group_0", grp));
    json_object_set_new(qc, "ignore", ex);
    json_object_set_new(qc, "quant_algo", json_string(algo));
    json_object_set_new(qc, "producer", prod);
    json_object_set_new(qc, "quant_method", json_string("modelopt"));
    return qc;
}
