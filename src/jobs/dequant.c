// dequant.c: the FP8 -> BF16 job (see dequant.h). The work is in quant/source.c (reading and
// dequantizing), io/checkpoint.c (staged sharded writing) and common/pool.c (the ordered
// parallel pipeline).
#include "jobs/dequant.h"

#include <errno.h>
#include <string.h>

#include "common/cancel.h"
#include "common/pool.h"
#include "common/progress.h"
#include "io/card.h"
#include "io/checkpoint.h"
#include "quant/source.h"
#include "quant/validate_hook.h"

// One unit of work: rows [r0, r0+nrows) of an FP8 weight, or bytes [off, off+n) of a tensor
// copied as stored.
typedef struct chunk {
    int out;          // output tensor index
    size_t src;       // source tensor index
    int fp8;
    uint64_t r0, nrows;
    uint64_t off, n;  // output byte range
} chunk;

typedef struct job {
    fb_source *s;
    fb_cw *w;
    chunk *chunks;
    size_t n_chunks;
    float **scales;        // per source tensor (only FP8 weights of the current shard)
    unsigned char **in;    // per thread
    uint16_t **outb;       // per thread
    int allow_nan;
    fb_progress *prog;
} job;

static int compute(void *ctx, size_t k, int tid, fb_err *err) {
    job *j = ctx;
    chunk *c = &j->chunks[k];
    if (c->fp8)
        return fb_source_read_rows_bf16(j->s, c->src, j->scales[c->src], c->r0, c->nrows, j->outb[tid], j->in[tid],
                                        j->allow_nan, err);
    const fb_ckpt_tensor *ct = &j->s->ck->tensors[c->src];
    const fb_st_file *f = j->s->ck->files[ct->file];
    if (fb_st_read(f, ct->t, c->off, j->outb[tid], c->n, err)) return -1;
    fb_st_release(f, ct->t->offset + c->off, c->n);
    return 0;
}

static int commit(void *ctx, size_t k, int tid, fb_err *err) {
    job *j = ctx;
    chunk *c = &j->chunks[k];
    if (fb_cw_write(j->w, c->out, c->off, j->outb[tid], c->n, err)) return -1;
    int last = k + 1 == j->n_chunks || j->chunks[k + 1].out != c->out;
    fb_progress_add(j->prog, c->n, last ? 1 : 0);
    return 0;
}

#define CHUNK_BYTES (4u << 20)  // input bytes per work item (FP8 rows are grouped to tile rows)

int fb_dequant_run(const char *src, const char *dst, const fb_dequant_opts *o, FILE *report,
                   fb_dequant_result *res, fb_err *err) {
    memset(res, 0, sizeof *res);
    const char *TOOL = o->tool;
    int threads = o->threads > 0 ? o->threads : fb_ncpu(), quiet = o->quiet, allow_nan = o->allow_nan;
    int resume = o->resume, force = o->force, merge = o->merge;
    int shard_index = o->shard_index, shard_count = o->shard_count > 0 ? o->shard_count : 1;
    uint64_t max_shard = o->max_shard_size ? o->max_shard_size : 5000000000ull;
    double t0 = fb_now();
    fb_source *s = NULL;
    if (fb_source_open(src, &s, err)) {
        return -1;
    }
    if (!s->is_fp8) {
        fb_fail(err, "%s: not an FP8 block-scaled checkpoint (no quantization_config with quant_method \"fp8\" "
                     "and no *_scale_inv tensors)", src);
        fb_source_close(s);
        return -1;
    }
    fb_ckpt *c = s->ck;
    uint64_t bytes_in = 0, bytes_out = 0;
    size_t n_fp8 = 0, n_copy = 0;
    for (size_t i = 0; i < c->n_tensors; i++) {
        bytes_in += c->tensors[i].t->nbytes;
        if (s->role[i] == FB_SRC_FP8_SCALE) continue;
        if (s->role[i] == FB_SRC_FP8_WEIGHT) { n_fp8++; bytes_out += 2 * c->tensors[i].t->nelem; }
        else { n_copy++; bytes_out += c->tensors[i].t->nbytes; }
    }
    res->n_fp8 = n_fp8, res->n_copy = n_copy, res->bytes_in = bytes_in, res->bytes_out = bytes_out;
    res->block_m = s->bm, res->block_n = s->bn;
    if (o->dry_run) {
        fprintf(report, "%s: %s -> %s (dry run)\n", TOOL, src, dst);
        fprintf(report, "  dequantize %zu FP8 weights (%zux%zu blocks) to BF16, copy %zu tensors, drop %zu scales\n", n_fp8, s->bm,
               s->bn, n_copy, n_fp8);
        fprintf(report, "  read %.3f GB, write %.3f GB in shards of at most %.3f GB\n", (double)bytes_in / 1e9,
               (double)bytes_out / 1e9, (double)max_shard / 1e9);
        fb_source_close(s);
        return 0;
    }

    const char *mk[] = {"fourbit.source", "fourbit.operation"};
    char opbuf[128];
    snprintf(opbuf, sizeof opbuf, "fp8 block dequant %zux%zu -> bf16 (f32 product, RNE)", s->bm, s->bn);
    const char *mv[] = {src, opbuf};
    if (merge && shard_count < 2) {
        fb_source_close(s);
        return fb_fail(err, "--merge needs the --shard-count of the split jobs");
    }
    fb_cw_opts wo = {.max_shard_size = max_shard, .resume = resume, .force = force, .allow_nonfinite = allow_nan, .tool = TOOL,
                     .shard_index = shard_index, .shard_count = shard_count, .merge = merge,
                     .n_meta = 2, .meta_keys = mk, .meta_vals = mv};
    fb_cw *w = fb_cw_create(dst, src, &wo, err);
    if (!w) {
        fb_source_close(s);
        return -1;
    }

    int rc = 0;
    size_t *src_of = fb_malloc((c->n_tensors + 1) * sizeof *src_of);
    for (size_t i = 0; i < c->n_tensors && !rc; i++) {
        if (s->role[i] == FB_SRC_FP8_SCALE) continue;
        const fb_st_tensor *t = c->tensors[i].t;
        int idx = fb_cw_add(w, t->name, fb_source_logical_dtype(s, i), t->ndim, t->shape, err);
        if (idx < 0) rc = -1;
        else src_of[idx] = i;
    }
    int n_shards = rc ? -1 : fb_cw_plan(w, err);
    if (n_shards < 0) rc = -1;

    // Per-thread buffers sized for the largest chunk.
    size_t max_in = CHUNK_BYTES, max_out = CHUNK_BYTES;
    for (size_t i = 0; i < c->n_tensors; i++) {
        if (s->role[i] != FB_SRC_FP8_WEIGHT) continue;
        uint64_t cols = (uint64_t)c->tensors[i].t->shape[1];
        uint64_t rows_per = s->bm * (CHUNK_BYTES / (s->bm * cols) ? CHUNK_BYTES / (s->bm * cols) : 1);
        if (rows_per * cols * 4 > max_in) max_in = rows_per * cols * 4;
        if (rows_per * cols * 2 > max_out) max_out = rows_per * cols * 2;
    }
    job j = {.s = s, .w = w, .allow_nan = allow_nan};
    j.scales = fb_calloc(c->n_tensors + 1, sizeof *j.scales);
    j.in = fb_calloc((size_t)threads, sizeof *j.in);
    j.outb = fb_calloc((size_t)threads, sizeof *j.outb);
    for (int t = 0; t < threads; t++) {
        j.in[t] = fb_aligned_alloc(max_in);
        j.outb[t] = fb_aligned_alloc(max_out);
    }
    j.prog = fb_progress_start(TOOL, bytes_out, n_fp8 + n_copy, quiet);
    int resumed = 0, others = 0;
    for (int sh = 0; sh < n_shards && !rc; sh++) {
        int b = fb_cw_shard_begin(w, sh, err);
        if (b < 0) { rc = -1; break; }
        const int *members;
        int nm = fb_cw_shard_tensors(w, sh, &members);
        if (b == 1 || b == 2) {  // verified from an earlier run / written by another split job
            resumed += b == 1;
            others += b == 2;
            for (int m = 0; m < nm; m++) fb_progress_add(j.prog, fb_cw_tensor_bytes(w, members[m]), 1);
            continue;
        }
        // Chunks in file order; scales of this shard's FP8 weights.
        j.n_chunks = 0;
        size_t cap = 0;
        j.chunks = NULL;
        for (int m = 0; m < nm && !rc; m++) {
            size_t i = src_of[members[m]];
            const fb_st_tensor *t = c->tensors[i].t;
            if (s->role[i] == FB_SRC_FP8_WEIGHT) {
                if (fb_source_load_scale(s, i, &j.scales[i], err)) { rc = -1; break; }
                uint64_t rows = (uint64_t)t->shape[0], cols = (uint64_t)t->shape[1];
                uint64_t per = s->bm * (CHUNK_BYTES / (s->bm * cols) ? CHUNK_BYTES / (s->bm * cols) : 1);
                for (uint64_t r = 0; r < rows; r += per) {
                    if (j.n_chunks == cap) { cap = cap ? 2 * cap : 1024; j.chunks = fb_realloc(j.chunks, cap * sizeof *j.chunks); }
                    uint64_t nr = rows - r < per ? rows - r : per;
                    j.chunks[j.n_chunks++] = (chunk){members[m], i, 1, r, nr, r * cols * 2, nr * cols * 2};
                }
            } else {
                for (uint64_t off = 0; off < t->nbytes || (off == 0 && t->nbytes == 0); off += CHUNK_BYTES) {
                    if (j.n_chunks == cap) { cap = cap ? 2 * cap : 1024; j.chunks = fb_realloc(j.chunks, cap * sizeof *j.chunks); }
                    uint64_t n = t->nbytes - off < CHUNK_BYTES ? t->nbytes - off : CHUNK_BYTES;
                    j.chunks[j.n_chunks++] = (chunk){members[m], i, 0, 0, 0, off, n};
                    if (t->nbytes == 0) break;
                }
            }
        }
        if (!rc) {
            fb_ordered_job oj = {.n_items = j.n_chunks, .n_threads = threads, .compute = compute, .commit = commit,
                                 .ctx = &j, .cancel = fb_cancel_flag()};
            int r = fb_run_ordered(&oj, err);
            if (r == -2) rc = -2;
            else if (r) rc = -1;
        }
        for (int m = 0; m < nm; m++) {
            size_t i = src_of[members[m]];
            free(j.scales[i]);
            j.scales[i] = NULL;
        }
        free(j.chunks);
        j.chunks = NULL;
        if (!rc && fb_cw_shard_end(w, sh, err)) rc = -1;
    }
    fb_progress_finish(j.prog);
    if (w && fb_cw_notice(w)) fprintf(report, "%s: %s\n", TOOL, fb_cw_notice(w));

    if (!rc && fb_cw_split_job(w)) {  // the merge run writes the rest
        res->split_job = 1;
        if (!quiet)
            fprintf(report, "%s: split job %d of %d done in %s.partial; run again with --merge --shard-count %d when every job has finished\n",
                    TOOL, shard_index, shard_count, dst, shard_count);
        fb_cw_detach(w);
        w = NULL;
    }
    // Side files and config.json without quantization_config.
    if (!rc && w) {
        if (fb_copy_side_files(s, fb_cw_staging_dir(w), err) < 0) rc = -1;
    }
    if (!rc && w && c->config) {
        json_t *cfg = json_deep_copy(c->config);
        json_object_del(cfg, "quantization_config");
        char *p = fb_cw_path(w, "config.json");
        if (json_dump_file(cfg, p, JSON_INDENT(2)) != 0) rc = fb_fail(err, "%s: cannot write: %s", p, strerror(errno));
        free(p);
        json_decref(cfg);
    }
    json_t *left_out = w ? fb_side_files_left_out(s) : NULL;
    if (!rc && w) {  // the model card (src/io/card.h), never the source's README.md
        fb_card_info ci = {.tool = TOOL, .src = src, .src_dir = c->dir, .src_config = c->config, .scheme = "BF16",
                           .format = "BF16 safetensors (FP8 block scales applied)", .seconds = fb_now() - t0,
                           .bytes_in = bytes_out, .bytes_out = bytes_out, .n_shards = (size_t)n_shards,
                           .left_out = left_out, .has_auto_map = c->config && json_object_get(c->config, "auto_map")};
        if (fb_card_write(fb_cw_staging_dir(w), &ci, err)) rc = -1;
    }
    if (!rc && w && fb_cw_finish(w, err)) rc = -1;
    if (!rc && w && fb_validate_output(fb_cw_staging_dir(w), err)) rc = -1;
    if (!w) {
        // a split job: its shards are in place, nothing to commit
    } else if (rc == -2 || (rc && fb_cancelled())) {
        rc = -2;
        fb_fail(err, "interrupted; finished shards are kept in %s.partial: rerun with --resume to continue", dst);
        fb_cw_detach(w);
    } else if (rc) {
        fb_cw_abort(w);
    } else if (fb_cw_commit(w, err)) {
        rc = -1;
    }
    for (int t = 0; t < threads; t++) {
        free(j.in[t]);
        free(j.outb[t]);
    }
    free(j.in);
    free(j.outb);
    free(j.scales);
    free(src_of);
    res->n_shards = n_shards;
    res->n_resumed = resumed;
    res->n_other_jobs = others;
    res->left_out = left_out;
    fb_source_close(s);
    return rc;
}
