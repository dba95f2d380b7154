// fp8-dequant: FP8 block-scaled checkpoint -> BF16 checkpoint, streaming, bit-exact with
// BF16(float(fp8) * scale_inv). A thin tool: the work is in src/quant/source.c (reading and
// dequantizing), src/io/checkpoint.c (staged sharded writing) and src/common/pool.c (the
// ordered parallel pipeline).
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

#include "common/cli.h"
#include "common/cancel.h"
#include "common/fb.h"
#include "common/paths.h"
#include "common/pool.h"
#include "common/progress.h"
#include "io/checkpoint.h"
#include "quant/source.h"
#include "quant/validate_hook.h"

static const char *TOOL = "fp8-dequant";


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

int main(int argc, char **argv) {
    int threads = fb_ncpu(), force = 0, resume = 0, dry = 0, json = 0, quiet = 0, allow_nan = 0;
    int shard_index = 0, shard_count = 1, merge = 0;
    uint64_t max_shard = 5000000000ull;
    const fb_opt opts[] = {
        {"threads", 't', FB_OPT_INT, &threads, "N", "worker threads (each reads, dequantizes, writes in order)", 1, 1024},
        {"max-shard-size", 0, FB_OPT_SIZE, &max_shard, "SIZE", "largest output shard (5GB = 5e9 bytes, as Hugging Face)", 0, 0},
        {"force", 'f', FB_OPT_FLAG, &force, NULL, "replace a non-empty DST", 0, 0},
        {"resume", 0, FB_OPT_FLAG, &resume, NULL, "continue a killed run: keep shards whose manifest digest verifies", 0, 0},
        {"dry-run", 'n', FB_OPT_FLAG, &dry, NULL, "print what would be written and stop", 0, 0},
        {"json", 0, FB_OPT_FLAG, &json, NULL, "print a JSON summary on stdout", 0, 0},
        {"quiet", 'q', FB_OPT_FLAG, &quiet, NULL, "no progress or summary on stderr", 0, 0},
        {"allow-nan", 0, FB_OPT_FLAG, &allow_nan, NULL, "convert FP8 NaN codes (0x7F/0xFF) to NaN and write Inf/NaN outputs (e.g. from overflowing scales) instead of failing", 0, 0},
        {"shard-index", 0, FB_OPT_INT, &shard_index, "I", "split job I of --shard-count: write output shards s with s % N == I", 0, 1 << 20},
        {"shard-count", 0, FB_OPT_INT, &shard_count, "N", "number of split jobs sharing DST.partial (then run once with --merge)", 1, 1 << 20},
        {"merge", 0, FB_OPT_FLAG, &merge, NULL, "after split jobs: verify their shards, write the rest, index, validate, rename", 0, 0},
        {0},
    };
    const char *pos[2];
    int npos;
    int prc = fb_cli_parse(argc, argv, TOOL, "[options] SRC DST",
                           "Dequantizes an FP8 block-scaled checkpoint (weight F8_E4M3 + weight_scale_inv F32 per\n"
                           "128x128 tile, or weight_block_size from config.json) to BF16: each element is\n"
                           "BF16(float(fp8) * scale_inv). Other tensors are copied unchanged; config.json loses its\n"
                           "quantization_config; tokenizer and other files are copied. Output is staged in DST.partial\n"
                           "and renamed into place once complete and validated.",
                           opts, pos, 2, &npos);
    if (prc == 1) return 0;
    if (prc) return 2;
    if (npos != 2) {
        fprintf(stderr, "%s: need SRC and DST (see --help)\n", TOOL);
        return 2;
    }
    const char *src = pos[0], *dst = pos[1];
    fb_cancel_install();
    double t0 = fb_now();
    fb_err err = {{0}};
    {
        const char *ins[] = {src};
        if (fb_path_check_output(dst, "DST", ins, 1, &err)) {
            fprintf(stderr, "%s: %s\n", TOOL, err.msg);
            return 1;
        }
    }
    fb_source *s = NULL;
    if (fb_source_open(src, &s, &err)) {
        fprintf(stderr, "%s: %s\n", TOOL, err.msg);
        return 1;
    }
    if (!s->is_fp8) {
        fprintf(stderr, "%s: %s: not an FP8 block-scaled checkpoint (no quantization_config with quant_method \"fp8\" and no *_scale_inv tensors)\n",
                TOOL, src);
        fb_source_close(s);
        return 1;
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
    if (dry) {
        printf("%s: %s -> %s (dry run)\n", TOOL, src, dst);
        printf("  dequantize %zu FP8 weights (%zux%zu blocks) to BF16, copy %zu tensors, drop %zu scales\n", n_fp8, s->bm,
               s->bn, n_copy, n_fp8);
        printf("  read %.3f GB, write %.3f GB in shards of at most %.3f GB\n", (double)bytes_in / 1e9,
               (double)bytes_out / 1e9, (double)max_shard / 1e9);
        fb_source_close(s);
        return 0;
    }

    const char *mk[] = {"fourbit.source", "fourbit.operation"};
    char opbuf[128];
    snprintf(opbuf, sizeof opbuf, "fp8 block dequant %zux%zu -> bf16 (f32 product, RNE)", s->bm, s->bn);
    const char *mv[] = {src, opbuf};
    if (merge && shard_count < 2) {
        fprintf(stderr, "%s: --merge needs the --shard-count of the split jobs\n", TOOL);
        fb_source_close(s);
        return 2;
    }
    fb_cw_opts wo = {.max_shard_size = max_shard, .resume = resume, .force = force, .allow_nonfinite = allow_nan, .tool = TOOL,
                     .shard_index = shard_index, .shard_count = shard_count, .merge = merge,
                     .n_meta = 2, .meta_keys = mk, .meta_vals = mv};
    fb_cw *w = fb_cw_create(dst, src, &wo, &err);
    if (!w) {
        fprintf(stderr, "%s: %s\n", TOOL, err.msg);
        fb_source_close(s);
        return 1;
    }

    int rc = 0;
    size_t *src_of = fb_malloc((c->n_tensors + 1) * sizeof *src_of);
    for (size_t i = 0; i < c->n_tensors && !rc; i++) {
        if (s->role[i] == FB_SRC_FP8_SCALE) continue;
        const fb_st_tensor *t = c->tensors[i].t;
        int idx = fb_cw_add(w, t->name, fb_source_logical_dtype(s, i), t->ndim, t->shape, &err);
        if (idx < 0) rc = -1;
        else src_of[idx] = i;
    }
    int n_shards = rc ? -1 : fb_cw_plan(w, &err);
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
        int b = fb_cw_shard_begin(w, sh, &err);
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
                if (fb_source_load_scale(s, i, &j.scales[i], &err)) { rc = -1; break; }
                uint64_t rows = (uint64_t)t->shape[0], cols = (uint64_t)t->shape[1];
                uint64_t per = s->bm * (CHUNK_BYTES / (s->bm * cols) ? CHUNK_BYTES / (s->bm * cols) : 1);
                for (uint64_t r = 0; r < rows; r += per) {
                    if (j.n_chunks == cap) { cap = cap ? 2 * cap : 1024; j.chunks = fb_realloc(j.chunks, cap * sizeof *j.chunks); }
                    uint64_t nr = rows - r < per ? rows - r : per;
                    j.chunks[j.n_chunks++] = (chunk){members[m], i, 1, r, nr, r * cols * 2, nr * cols * 2};
                }
            } else {
                for (uint64_t o = 0; o < t->nbytes || (o == 0 && t->nbytes == 0); o += CHUNK_BYTES) {
                    if (j.n_chunks == cap) { cap = cap ? 2 * cap : 1024; j.chunks = fb_realloc(j.chunks, cap * sizeof *j.chunks); }
                    uint64_t n = t->nbytes - o < CHUNK_BYTES ? t->nbytes - o : CHUNK_BYTES;
                    j.chunks[j.n_chunks++] = (chunk){members[m], i, 0, 0, 0, o, n};
                    if (t->nbytes == 0) break;
                }
            }
        }
        if (!rc) {
            fb_ordered_job oj = {.n_items = j.n_chunks, .n_threads = threads, .compute = compute, .commit = commit,
                                 .ctx = &j, .cancel = fb_cancel_flag()};
            int r = fb_run_ordered(&oj, &err);
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
        if (!rc && fb_cw_shard_end(w, sh, &err)) rc = -1;
    }
    fb_progress_finish(j.prog);

    if (!rc && fb_cw_split_job(w)) {  // the merge run writes the rest
        if (!quiet)
            fprintf(stderr, "%s: split job %d of %d done in %s.partial; run again with --merge --shard-count %d when every job has finished\n",
                    TOOL, shard_index, shard_count, dst, shard_count);
        fb_cw_detach(w);
        w = NULL;
    }
    // Side files and config.json without quantization_config.
    if (!rc && w) {
        if (fb_copy_side_files(s, fb_cw_staging_dir(w), &err) < 0) rc = -1;
    }
    if (!rc && w && c->config) {
        json_t *cfg = json_deep_copy(c->config);
        json_object_del(cfg, "quantization_config");
        char *p = fb_cw_path(w, "config.json");
        if (json_dump_file(cfg, p, JSON_INDENT(2)) != 0) rc = fb_fail(&err, "%s: cannot write: %s", p, strerror(errno));
        free(p);
        json_decref(cfg);
    }
    if (!rc && w && fb_cw_finish(w, &err)) rc = -1;
    if (!rc && w && fb_validate_output(fb_cw_staging_dir(w), &err)) rc = -1;
    if (!w) {
        // a split job: its shards are in place, nothing to commit
    } else if (rc == -2 || (rc && fb_cancelled())) {
        rc = -2;
        fprintf(stderr, "%s: interrupted; finished shards are kept in %s.partial: rerun with --resume to continue\n", TOOL,
                dst);
        fb_cw_detach(w);
    } else if (rc) {
        fprintf(stderr, "%s: %s\n", TOOL, err.msg);
        fb_cw_abort(w);
    } else if (fb_cw_commit(w, &err)) {
        fprintf(stderr, "%s: %s\n", TOOL, err.msg);
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
    double dt = fb_now() - t0;
    if (!rc) {
        if (!quiet && others)
            fprintf(stderr, "%s: %d of %d shard(s) written by this job (%d resumed), %.2f s, peak RSS %.1f MiB\n", TOOL,
                    n_shards - others - resumed, n_shards, resumed, dt, (double)fb_peak_rss() / 1048576.0);
        else if (!quiet)
            fprintf(stderr, "%s: %zu FP8 weights dequantized, %zu tensors copied, %d shard(s) (%d resumed), "
                            "%.3f GB in %.2f s (%.2f GB/s of input), peak RSS %.1f MiB\n",
                    TOOL, n_fp8, n_copy, n_shards, resumed, (double)bytes_in / 1e9, dt, (double)bytes_in / 1e9 / dt,
                    (double)fb_peak_rss() / 1048576.0);
        if (json) {
            json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:i, s:i, s:I, s:I, s:f, s:f, s:I, s:i}", "tool", TOOL,
                                  "version", FB_VERSION, "src", src, "dst", dst, "fp8_weights", (json_int_t)n_fp8,
                                  "copied", (json_int_t)n_copy, "shards", n_shards, "resumed_shards", resumed,
                                  "bytes_in", (json_int_t)bytes_in, "bytes_out", (json_int_t)bytes_out, "seconds", dt,
                                  "gb_per_s_in", (double)bytes_in / 1e9 / dt, "peak_rss_bytes",
                                  (json_int_t)fb_peak_rss(), "threads", threads);
            json_object_set_new(o, "shards_of_other_jobs", json_integer(others));
            json_dumpf(o, stdout, JSON_COMPACT);
            putchar('\n');
            json_decref(o);
        }
    }
    fb_source_close(s);
    return rc == 0 ? 0 : rc == -2 ? 130 : 1;  // 130: as a shell reports a SIGINT
}
