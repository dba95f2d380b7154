// mm.c: the scalar f32 kernels of one decoder layer (see mm.h).
#include "calib/mm.h"
#include "quant/formats.h"

#include <math.h>
#include <string.h>

// ---- kernels -------------------------------------------------------------------------------

void fb_mm_rmsnorm(const float *x, const float *w, float eps, size_t rows, size_t n, float *y) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        double ss = 0;
        for (size_t i = 0; i < n; i++) ss += (double)xr[i] * xr[i];
        float var = (float)(ss / (double)n);
        float inv = 1.0f / sqrtf(var + eps);
        for (size_t i = 0; i < n; i++) yr[i] = w[i] * (xr[i] * inv);
    }
}

void fb_mm_rope_inv_freq(double theta, int rotary_dim, float *inv_freq) {
    // torch: 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), all f32.
    float base = (float)theta;
    for (int i = 0; i < rotary_dim / 2; i++) {
        float e = (float)(2 * i) / (float)rotary_dim;
        inv_freq[i] = 1.0f / powf(base, e);
    }
}

void fb_mm_rope(float *x, int n_heads, int head_dim, int rotary_dim, const float *inv_freq,
                int64_t pos) {
    int half = rotary_dim / 2;
    float p = (float)pos;
    for (int i = 0; i < half; i++) {
        float a = p * inv_freq[i];
        float c = cosf(a), s = sinf(a);
        for (int h = 0; h < n_heads; h++) {
            float *xh = x + (size_t)h * head_dim;
            float x1 = xh[i], x2 = xh[i + half];
            // q*cos + rotate_half(q)*sin, rotate_half = cat(-x2, x1)
            xh[i] = x1 * c + (-x2) * s;
            xh[i + half] = x2 * c + x1 * s;
        }
    }
}

void fb_mm_softmax(float *x, size_t n) {
    float m = -INFINITY;
    for (size_t i = 0; i < n; i++) if (x[i] > m) m = x[i];
    float sum = 0;
    for (size_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - m);
        sum += x[i];
    }
    for (size_t i = 0; i < n; i++) x[i] /= sum;
}

void fb_mm_route(const float *logits, const float *bias, int E, int k, int32_t *idx,
                 float *weight, float *scratch) {
    float *s = scratch;
    for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-logits[e]));
    // Selection by s + bias: k passes of an argmax (k is 8; E is 256): strict '>' keeps the
    // lower index on ties. Chosen experts are marked by NaN-free sentinel via a bitmap.
    unsigned char chosen[1024];
    unsigned char *ch = E <= 1024 ? chosen : fb_calloc((size_t)E, 1);
    memset(ch, 0, (size_t)E);
    for (int j = 0; j < k; j++) {
        int best = -1;
        float bv = 0;
        for (int e = 0; e < E; e++) {
            if (ch[e]) continue;
            float v = bias ? s[e] + bias[e] : s[e];
            if (best < 0 || v > bv) { best = e; bv = v; }
        }
        ch[best] = 1;
    }
    int n = 0;
    for (int e = 0; e < E && n < k; e++)
        if (ch[e]) idx[n++] = e;
    float sum = 0;
    for (int j = 0; j < k; j++) sum += s[idx[j]];
    for (int j = 0; j < k; j++) weight[j] = s[idx[j]] / sum;
    if (ch != chosen) free(ch);
}

void fb_mm_route_softmax(const float *logits, int E, int k, int norm, int32_t *idx,
                         float *weight, float *scratch) {
    float *p = scratch;
    memcpy(p, logits, (size_t)E * sizeof(float));
    fb_mm_softmax(p, (size_t)E);
    unsigned char chosen[1024];
    unsigned char *ch = E <= 1024 ? chosen : fb_calloc((size_t)E, 1);
    memset(ch, 0, (size_t)E);
    float top[64], sum = 0;
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (!ch[e] && (best < 0 || p[e] > p[best])) best = e;
        ch[best] = 1;
        if (j < 64) top[j] = p[best];
    }
    // torch: router_top_value.sum(-1) over the values in topk's (descending) order.
    for (int j = 0; j < k && j < 64; j++) sum += top[j];
    int n = 0;
    for (int e = 0; e < E && n < k; e++)
        if (ch[e]) idx[n++] = e;
    for (int j = 0; j < k; j++) weight[j] = norm ? p[idx[j]] / sum : p[idx[j]];
    if (ch != chosen) free(ch);
}

void fb_mm_swiglu(const float *g, const float *u, size_t n, float *out) {
    for (size_t i = 0; i < n; i++) {
        float x = g[i];
        out[i] = (x / (1.0f + expf(-x))) * u[i];
    }
}

// ---- bf16 activations ------------------------------------------------------------------------

static inline float bf(float x) { return fb_bf16_to_f32(fb_f32_to_bf16(x)); }

void fb_mm_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = bf(x[i]);
}

void fb_mm_rmsnorm_bf16(const float *x, const float *w, float eps, size_t rows, size_t n, float *y) {
    for (size_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *yr = y + r * n;
        // torch sums the f32 squares in its own (vectorised) order; the f64 sum rounded once is
        // the value every order approximates, and the bf16 rounding below absorbs the rest.
        double ss = 0;
        for (size_t i = 0; i < n; i++) ss += (double)xr[i] * xr[i];
        float var = (float)(ss / (double)n);
        float inv = 1.0f / sqrtf(var + eps);
        for (size_t i = 0; i < n; i++) yr[i] = bf(w[i] * bf(xr[i] * inv));
    }
}

void fb_mm_rope_bf16(float *x, int n_heads, int head_dim, int rotary_dim, const float *inv_freq,
                     int64_t pos) {
    int half = rotary_dim / 2;
    float p = (float)pos;
    for (int i = 0; i < half; i++) {
        float a = p * inv_freq[i];
        float c = bf(cosf(a)), s = bf(sinf(a));
        for (int h = 0; h < n_heads; h++) {
            float *xh = x + (size_t)h * head_dim;
            float x1 = xh[i], x2 = xh[i + half];
            xh[i] = bf(bf(x1 * c) + bf((-x2) * s));
            xh[i + half] = bf(bf(x2 * c) + bf(x1 * s));
        }
    }
}

void fb_mm_swiglu_bf16(const float *g, const float *u, size_t n, float *out) {
    for (size_t i = 0; i < n; i++) {
        float x = g[i];
        out[i] = bf(bf(x / (1.0f + expf(-x))) * u[i]);
    }
}
