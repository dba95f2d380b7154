// stdiff.c: the comparison behind st-diff (see stdiff.h). Tensors are read in chunks of CHUNK
// bytes (FP8 pairs: as many rows as fit), so memory stays bounded whatever the model size.
#include "jobs/stdiff.h"

#include <math.h>
#include <string.h>

#include "io/checkpoint.h"
#include "quant/formats.h"
#include "quant/source.h"

#define CHUNK (8u << 20)

// A flat element index as "[i, j, ...]" in the tensor's shape.
static void fmt_index(const fb_st_tensor *t, uint64_t flat, char *buf, size_t n) {
    uint64_t idx[FB_MAX_DIMS];
    for (int d = t->ndim - 1; d >= 0; d--) {
        uint64_t s = (uint64_t)(t->shape[d] ? t->shape[d] : 1);
        idx[d] = flat % s;
        flat /= s;
    }
    size_t k = 0;
    k += (size_t)snprintf(buf + k, n - k, "[");
    for (int d = 0; d < t->ndim && k < n; d++) k += (size_t)snprintf(buf + k, n - k, d ? ", %llu" : "%llu", (unsigned long long)idx[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

static void fmt_shape(const fb_st_tensor *t, char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "[");
    for (int d = 0; d < t->ndim && k < n; d++) k += (size_t)snprintf(buf + k, n - k, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    if (k < n) snprintf(buf + k, n - k, "]");
}

// Compares one tensor (same dtype and shape on both sides) into jt; lines go to report
// unless NULL. Returns 0 equal, 1 different, -1 I/O error.
static int diff_tensor(const fb_ckpt *a, const fb_ckpt_tensor *ta, const fb_ckpt *b, const fb_ckpt_tensor *tb,
                       const fb_stdiff_opts *o, FILE *report, json_t *jt, fb_err *err) {
    const fb_st_tensor *x = ta->t, *y = tb->t;
    const fb_st_file *fa = fb_ckpt_file(a, ta), *fb = fb_ckpt_file(b, tb);
    // Values only for the dtypes fb_load_f32 decodes; packed, complex and FNUZ types compare
    // as bytes.
    int dt_is_float = fb_dtypes[x->dtype].is_float && x->dtype != FB_C64 && x->dtype != FB_F4 &&
                      x->dtype != FB_F6_E2M3 && x->dtype != FB_F6_E3M2 && x->dtype != FB_F8_E4M3FNUZ &&
                      x->dtype != FB_F8_E5M2FNUZ;
    int use_values = o->values && dt_is_float;
    double atol = o->atol, rtol = o->rtol;
    unsigned char *ba = fb_malloc(CHUNK), *bb = fb_malloc(CHUNK);
    size_t esz = (size_t)fb_dtypes[x->dtype].bits / 8;
    if (esz == 0) esz = 1;
    size_t per = (CHUNK / esz) * esz;
    uint64_t mismatches = 0;
    double max_abs = 0, max_rel = 0;
    int reported = 0, rc = 0;
    json_t *firsts = json_array();
    for (uint64_t off = 0; off < x->nbytes; off += per) {
        size_t n = (size_t)(x->nbytes - off < per ? x->nbytes - off : per);
        if (fb_st_read(fa, x, off, ba, n, err) || fb_st_read(fb, y, off, bb, n, err)) { rc = -1; break; }
        if (!use_values) {
            if (memcmp(ba, bb, n) == 0) continue;
            for (size_t k = 0; k < n; k += esz) {
                if (memcmp(ba + k, bb + k, esz) == 0) continue;
                mismatches++;
                if (reported < o->max_report) {
                    char ib[128];
                    uint64_t flat = (off + k) / esz;
                    fmt_index(x, flat, ib, sizeof ib);
                    float va = 0, vb = 0;
                    int f = fb_load_f32(x->dtype, ba, k / esz, &va) == 0 && fb_load_f32(x->dtype, bb, k / esz, &vb) == 0;
                    if (report) {
                        if (f) fprintf(report, "    %s%s: %.9g vs %.9g\n", x->name, ib, (double)va, (double)vb);
                        else fprintf(report, "    %s%s: bytes differ\n", x->name, ib);
                    }
                    json_array_append_new(firsts, json_string(ib));
                    reported++;
                }
            }
            continue;
        }
        for (size_t k = 0; k < n / esz; k++) {
            float va, vb;
            fb_load_f32(x->dtype, ba, k, &va);
            fb_load_f32(x->dtype, bb, k, &vb);
            if (isnan(va) && isnan(vb)) continue;
            double d = fabs((double)va - (double)vb);
            if (isnan(va) || isnan(vb) || (isinf(va) || isinf(vb) ? va != vb : 0)) d = INFINITY;
            double rel = vb != 0 ? d / fabs((double)vb) : (d ? INFINITY : 0);
            if (d > max_abs) max_abs = d;
            if (rel > max_rel) max_rel = rel;
            if (d <= atol + rtol * fabs((double)vb)) continue;
            mismatches++;
            if (reported < o->max_report) {
                char ib[128];
                fmt_index(x, off / esz + k, ib, sizeof ib);
                if (report) fprintf(report, "    %s%s: %.9g vs %.9g (|diff| %.3g)\n", x->name, ib, (double)va, (double)vb, d);
                json_array_append_new(firsts, json_string(ib));
                reported++;
            }
        }
    }
    free(ba);
    free(bb);
    if (rc) {
        json_decref(firsts);
        return -1;
    }
    if (use_values) {
        json_object_set_new(jt, "max_abs", json_real(isinf(max_abs) ? -1 : max_abs));
        json_object_set_new(jt, "max_rel", json_real(isinf(max_rel) ? -1 : max_rel));
    }
    json_object_set_new(jt, "mismatches", json_integer((json_int_t)mismatches));
    json_object_set_new(jt, "first_mismatches", firsts);
    if (mismatches && report) {
        if (use_values)
            fprintf(report, "  %s: %llu of %llu elements outside atol %g rtol %g (max abs %.3g, max rel %.3g)\n",
                    x->name, (unsigned long long)mismatches, (unsigned long long)x->nelem, atol, rtol, max_abs, max_rel);
        else
            fprintf(report, "  %s: %llu of %llu elements differ\n", x->name, (unsigned long long)mismatches,
                    (unsigned long long)x->nelem);
    }
    return mismatches ? 1 : 0;
}

// FP8 weight fi of fs against BF16 tensor pt of pc (same name and shape): the FP8 side
// dequantized exactly as fp8-dequant does, compared as bytes, or as values with tolerances.
// fp8_is_a orders the printed values as A vs B. Returns 0 equal, 1 different, -1 error.
static int diff_fp8_pair(const fb_source *fs, size_t fi, const fb_ckpt *pc, const fb_ckpt_tensor *pt, int fp8_is_a,
                         const fb_stdiff_opts *o, FILE *report, json_t *jt, fb_err *err) {
    const fb_st_tensor *x = fs->ck->tensors[fi].t, *y = pt->t;
    uint64_t rows = (uint64_t)x->shape[0], cols = (uint64_t)x->shape[1];
    float *scale = NULL;
    if (fb_source_load_scale(fs, fi, &scale, err)) return -1;
    uint64_t per = CHUNK / (cols * 4) ? CHUNK / (cols * 4) : 1;
    uint16_t *d = fb_malloc(per * cols * 2), *q = fb_malloc(per * cols * 2);
    void *scratch = fb_malloc(per * cols * 4);
    uint64_t mismatches = 0;
    int reported = 0, rc = 0;
    json_t *firsts = json_array();
    for (uint64_t r = 0; r < rows && !rc; r += per) {
        size_t nr = (size_t)(rows - r < per ? rows - r : per), n = nr * (size_t)cols;
        if (fb_source_read_rows_bf16(fs, fi, scale, r, nr, d, scratch, 1, err) ||
            fb_st_read(fb_ckpt_file(pc, pt), y, r * cols * 2, q, n * 2, err)) {
            rc = -1;
            break;
        }
        for (size_t k = 0; k < n; k++) {
            float va, vb;
            fb_load_f32(FB_BF16, d, k, &va);
            fb_load_f32(FB_BF16, q, k, &vb);
            if (!fp8_is_a) { float t = va; va = vb; vb = t; }
            int bad;
            if (!o->values) bad = d[k] != q[k];
            else bad = !(isnan(va) && isnan(vb)) && !(fabs((double)va - (double)vb) <= o->atol + o->rtol * fabs((double)vb));
            if (!bad) continue;
            mismatches++;
            if (reported < o->max_report) {
                char ib[128];
                fmt_index(x, r * cols + k, ib, sizeof ib);
                if (report) fprintf(report, "    %s%s: %.9g vs %.9g\n", x->name, ib, (double)va, (double)vb);
                json_array_append_new(firsts, json_string(ib));
                reported++;
            }
        }
    }
    free(d);
    free(q);
    free(scratch);
    free(scale);
    if (rc) {
        json_decref(firsts);
        return -1;
    }
    json_object_set_new(jt, "fp8_pair", json_true());
    json_object_set_new(jt, "mismatches", json_integer((json_int_t)mismatches));
    json_object_set_new(jt, "first_mismatches", firsts);
    if (mismatches && report)
        fprintf(report, "  %s: %llu of %llu elements differ (FP8 side dequantized)\n", x->name,
                (unsigned long long)mismatches, (unsigned long long)x->nelem);
    return mismatches ? 1 : 0;
}

// 1 when tensor `name` is an FP8 block-scaled weight in `fp8` and a plain BF16 tensor of the
// same 2-D shape in `other`; *fi is then its index in fp8.
static int fp8_pair(const fb_source *fp8, const fb_ckpt *other, const char *name, size_t *fi) {
    if (!fp8 || !fp8->is_fp8) return 0;
    int64_t i = fb_source_index(fp8, name);
    const fb_ckpt_tensor *o = fb_ckpt_find(other, name);
    if (i < 0 || !o || fp8->role[i] != FB_SRC_FP8_WEIGHT || o->t->dtype != FB_BF16) return 0;
    const fb_st_tensor *x = fp8->ck->tensors[i].t;
    if (x->ndim != o->t->ndim || x->ndim != 2 || x->shape[0] != o->t->shape[0] || x->shape[1] != o->t->shape[1]) return 0;
    *fi = (size_t)i;
    return 1;
}

// 1 when tensor `name` of `fp8` is the block scale of a weight that `other` holds as BF16.
static int paired_scale(const fb_source *fp8, const fb_ckpt *other, const char *name) {
    if (!fp8 || !fp8->is_fp8) return 0;
    int64_t i = fb_source_index(fp8, name);
    size_t fi;
    return i >= 0 && fp8->role[i] == FB_SRC_FP8_SCALE && fp8->partner[i] >= 0 &&
           fp8_pair(fp8, other, fp8->ck->tensors[fp8->partner[i]].t->name, &fi);
}

void fb_stdiff_result_free(fb_stdiff_result *r) {
    if (!r) return;
    json_decref(r->only_in_a);
    json_decref(r->only_in_b);
    json_decref(r->different);
    memset(r, 0, sizeof *r);
}

int fb_stdiff_run(const char *pa, const char *pb, const fb_stdiff_opts *o, FILE *report, fb_stdiff_result *res,
                  fb_err *err) {
    memset(res, 0, sizeof *res);
    fb_ckpt *a = NULL, *b = NULL;
    if (fb_ckpt_open(pa, &a, err) || fb_ckpt_open(pb, &b, err)) {
        fb_ckpt_close(a);
        return -1;
    }
    // The FP8 view of each side, when it is an FP8 block-scaled checkpoint (else NULL): a side
    // whose FP8 pairing does not check is compared as stored, tensor by tensor.
    fb_source *src_a = NULL, *src_b = NULL;
    fb_err ignore;
    if (fb_source_open(pa, &src_a, &ignore)) src_a = NULL;
    if (fb_source_open(pb, &src_b, &ignore)) src_b = NULL;
    res->only_in_a = json_array();
    res->only_in_b = json_array();
    res->different = json_array();
    for (size_t i = 0; i < a->n_tensors; i++)
        if (!fb_ckpt_find(b, a->tensors[i].t->name)) {
            if (paired_scale(src_a, b, a->tensors[i].t->name)) continue;
            res->only_a++;
            json_array_append_new(res->only_in_a, json_string(a->tensors[i].t->name));
            if (report) fprintf(report, "only in A: %s\n", a->tensors[i].t->name);
        }
    for (size_t i = 0; i < b->n_tensors; i++)
        if (!fb_ckpt_find(a, b->tensors[i].t->name)) {
            if (paired_scale(src_b, a, b->tensors[i].t->name)) continue;
            res->only_b++;
            json_array_append_new(res->only_in_b, json_string(b->tensors[i].t->name));
            if (report) fprintf(report, "only in B: %s\n", b->tensors[i].t->name);
        }
    int io_fail = 0;
    for (size_t i = 0; i < a->n_tensors && !io_fail; i++) {
        const fb_ckpt_tensor *ta = &a->tensors[i], *tb = fb_ckpt_find(b, ta->t->name);
        if (!tb) continue;
        res->n_compared++;
        const fb_st_tensor *x = ta->t, *y = tb->t;
        json_t *jt = json_object();
        json_object_set_new(jt, "name", json_string(x->name));
        int same_shape = x->ndim == y->ndim;
        for (int d = 0; same_shape && d < x->ndim; d++) same_shape = x->shape[d] == y->shape[d];
        int r;
        size_t fi;
        if (fp8_pair(src_a, b, x->name, &fi)) {
            res->fp8_pairs++;
            r = diff_fp8_pair(src_a, fi, b, tb, 1, o, report, jt, err);
        } else if (fp8_pair(src_b, a, x->name, &fi)) {
            res->fp8_pairs++;
            r = diff_fp8_pair(src_b, fi, a, ta, 0, o, report, jt, err);
        } else if (x->dtype != y->dtype || !same_shape) {
            r = 1;
            if (report) {
                char sa[160], sb[160];
                fmt_shape(x, sa, sizeof sa);
                fmt_shape(y, sb, sizeof sb);
                fprintf(report, "  %s: %s %s vs %s %s\n", x->name, fb_dtypes[x->dtype].name, sa,
                        fb_dtypes[y->dtype].name, sb);
            }
            json_object_set_new(jt, "dtype_a", json_string(fb_dtypes[x->dtype].name));
            json_object_set_new(jt, "dtype_b", json_string(fb_dtypes[y->dtype].name));
            json_object_set_new(jt, "shape_differs", json_boolean(!same_shape));
        } else {
            r = diff_tensor(a, ta, b, tb, o, report, jt, err);
        }
        if (r < 0) io_fail = 1;
        else if (r == 1) {
            res->n_diff++;
            json_array_append(res->different, jt);
        } else res->n_equal++;
        json_decref(jt);
    }
    if (o->metadata && !io_fail) {
        for (size_t f = 0; f < a->n_files && f < b->n_files; f++) {
            const fb_st_file *fa = a->files[f], *fbb = b->files[f];
            int same = fa->n_meta == fbb->n_meta;
            for (size_t k = 0; same && k < fa->n_meta; k++) {
                const char *v = fb_st_meta(fbb, fa->meta_keys[k]);
                same = v && !strcmp(v, fa->meta_vals[k]);
            }
            if (!same) {
                res->meta_diff++;
                if (report) fprintf(report, "__metadata__ differs: %s vs %s\n", fa->path, fbb->path);
            }
        }
    }
    fb_source_close(src_a);
    fb_source_close(src_b);
    fb_ckpt_close(a);
    fb_ckpt_close(b);
    if (io_fail) {
        fb_stdiff_result_free(res);
        return -1;
    }
    res->differ = (!o->common && (res->only_a || res->only_b)) || res->n_diff || res->meta_diff;
    return 0;
}
