// checkpoint.h: Hugging Face checkpoint directories (read) and sharded output (write).
//
// A checkpoint is a directory with config.json, one `*.safetensors` file or several shards
// listed in `model.safetensors.index.json` ({"metadata": {"total_size": N}, "weight_map":
// {tensor: file}}), and other files (tokenizer, templates, remote code). A bare .safetensors
// file is accepted as a checkpoint of one file without config.
//
// Reading: the index is authoritative for which files exist; every shard it names is opened
// and validated, and the index must list exactly the tensors the shards hold (no tensor
// missing from the index, none listed in the wrong file, no shard that the index omits
// among the directory's *.safetensors).
//
// Writing (fb_cw_*): the output goes to a staging directory `<dst>.partial/` beside the
// destination. The tool first declares every output tensor (name, dtype, shape); fb_cw_plan
// then cuts them into shards of at most max_shard_size bytes (greedy, in declaration order; a
// tensor larger than the limit gets its own shard) and lays each shard out with tensors
// sorted by descending alignment, then declaration order, so every tensor is naturally aligned
// and the header needs no gap. Payload bytes are then written with fb_cw_write at any position
// and in any order (pwrite, thread-safe). A shard is written to `<name>.tmp`, checked to have
// received exactly its byte count, fdatasync'ed, renamed, and its xxh3-128 recorded in
// fourbit-manifest.json. fb_cw_commit writes the index and renames the staging directory into
// place; fb_cw_abort removes it. With resume, a shard whose file already exists in the staging
// directory and whose digest matches the manifest from the killed run is kept and skipped.
#ifndef FB_IO_CHECKPOINT_H
#define FB_IO_CHECKPOINT_H

#include <jansson.h>

#include "io/safetensors.h"

typedef struct fb_ckpt_tensor {
    const fb_st_tensor *t;  // owned by files[file]
    int file;               // index into fb_ckpt.files
} fb_ckpt_tensor;

typedef struct fb_ckpt {
    char *path;             // the directory (or the single file)
    char *dir;              // the directory holding the files
    int has_index;
    size_t n_files;
    fb_st_file **files;
    char **file_names;      // base names, as in the index
    size_t n_tensors;
    fb_ckpt_tensor *tensors;  // files in index order, each in file (data offset) order
    json_t *config;         // parsed config.json (owned), NULL when absent
    json_t *index_json;     // parsed index (owned), NULL when absent
    void *by_name_;         // private: name -> tensors[] position
} fb_ckpt;

// Opens a checkpoint directory or a single .safetensors file, validating every shard and the
// index as described above. Errors name the file and tensor.
int fb_ckpt_open(const char *path, fb_ckpt **out, fb_err *err);

// Like fb_ckpt_open but the shards' headers only (no data read): for the validator on huge
// checkpoints. Same checks.
#define fb_ckpt_open_headers fb_ckpt_open

void fb_ckpt_close(fb_ckpt *c);

// The tensor with this name and its file, or NULL.
const fb_ckpt_tensor *fb_ckpt_find(const fb_ckpt *c, const char *name);

// Convenience: the file struct of a tensor.
static inline const fb_st_file *fb_ckpt_file(const fb_ckpt *c, const fb_ckpt_tensor *ct) {
    return c->files[ct->file];
}

// ---- writer ----------------------------------------------------------------------------

typedef struct fb_cw_opts {
    uint64_t max_shard_size;  // bytes of tensor payload per shard (0 = 5e9, HF's "5GB")
    int resume;               // keep verified shards from a killed run in <dst>.partial
    int force;                // allow replacing a non-empty dst at commit
    // Let NaN / Inf through in float outputs (BF16, F16, F32, F64). Off: fb_cw_write refuses
    // the first non-finite element, naming the tensor and its flat index (--allow-nan).
    int allow_nonfinite;
    // Split jobs (Slurm arrays, GNU parallel, ssh loops over a shared file system): with
    // shard_count > 1, job shard_index writes only the output shards s with
    // s % shard_count == shard_index into the shared staging directory and records them in
    // fourbit-manifest.job-<i>-of-<n>.json; nothing is renamed into place. A final run with
    // merge set (same options) verifies every shard the jobs wrote (digest and header, as
    // resume does), writes any missing one itself, then the index, validates and renames.
    int shard_index, shard_count;
    int merge;
    const char *tool;         // "fp8-dequant", ... (provenance)
    // Extra __metadata__ entries for every shard (provenance): n_meta key/value pairs.
    size_t n_meta;
    const char *const *meta_keys;
    const char *const *meta_vals;
} fb_cw_opts;

typedef struct fb_cw fb_cw;

// Checks dst (refuses a dst equal to or inside `src` when src is non-NULL, a non-empty dst
// without force) and creates the staging directory. Returns NULL with err set on failure.
fb_cw *fb_cw_create(const char *dst, const char *src, const fb_cw_opts *o, fb_err *err);

// Declares the next output tensor; returns its index (0, 1, ...) or -1 with err set
// (duplicate name, bad shape). Only before fb_cw_plan.
int fb_cw_add(fb_cw *w, const char *name, fb_dtype dt, int ndim, const int64_t *shape,
              fb_err *err);

// Fixes shards and layout. Returns the number of shards, or -1.
int fb_cw_plan(fb_cw *w, fb_err *err);

int fb_cw_n_tensors(const fb_cw *w);
int fb_cw_tensor_shard(const fb_cw *w, int idx);
int fb_cw_n_shards(const fb_cw *w);
const char *fb_cw_shard_name(const fb_cw *w, int shard);
uint64_t fb_cw_total_bytes(const fb_cw *w);  // tensor payload bytes (the index total_size)
// Tensor indices of a shard in file order (*idx borrowed from w); returns their count.
// Producing data in this order lets the writer hash as it goes and bound dirty pages.
int fb_cw_shard_tensors(const fb_cw *w, int shard, const int **idx);
// Size of a shard's file (8 + header + payload).
uint64_t fb_cw_shard_file_bytes(const fb_cw *w, int shard);

// Opens shard `shard` for writing (header written). Returns 0 when the shard must be written,
// 1 when it was verified from a previous run (resume, merge) and must be skipped, 2 when it
// belongs to another split job (skip it), -1 on error.
int fb_cw_shard_begin(fb_cw *w, int shard, fb_err *err);

// 1 when a shard must not be written by this run: verified from an earlier run (resume,
// merge) or belonging to another split job (fb_cw_shard_begin returned 1 or 2).
int fb_cw_shard_skipped(const fb_cw *w, int shard);

// Output bytes of tensor idx.
uint64_t fb_cw_tensor_bytes(const fb_cw *w, int idx);

// Writes n bytes at byte `off` of output tensor idx. Thread-safe; any order. Its shard must
// have been begun.
int fb_cw_write(fb_cw *w, int idx, uint64_t off, const void *data, size_t n, fb_err *err);

// Finishes a shard: checks every byte was written, fdatasync, rename from .tmp, digest into
// the manifest, releases its page cache.
int fb_cw_shard_end(fb_cw *w, int shard, fb_err *err);

// Path of a file inside the staging directory (for config.json, tokenizer files, recipe...).
// Returns a malloc'ed string the caller frees.
char *fb_cw_path(const fb_cw *w, const char *name);

// The staging directory (valid until commit/abort).
const char *fb_cw_staging_dir(const fb_cw *w);

// Writes model.safetensors.index.json (always, also for one shard; sorted keys, indent 2)
// and the manifest. After this the staging directory is a complete checkpoint that a
// validator can open; it is still not in place.
int fb_cw_finish(fb_cw *w, fb_err *err);

// 1 for a split job that is not the merge: after the shards, stop with fb_cw_detach (the
// merge run writes the index and renames).
int fb_cw_split_job(const fb_cw *w);

// Renames the staging directory to dst (replacing an empty dst, or any dst with force).
// Frees w.
int fb_cw_commit(fb_cw *w, fb_err *err);

// Removes the staging directory and everything in it; frees w. Use on any error. For split
// jobs and merges (shard_count > 1) the directory is shared, so only this run's unfinished
// .tmp files are removed.
void fb_cw_abort(fb_cw *w);

// Leaves the staging directory for a later --resume and frees w (on interruption).
void fb_cw_detach(fb_cw *w);

// Copies a file (config, tokenizer...) byte for byte; -1 with err naming both paths.
int fb_copy_file(const char *src, const char *dst, fb_err *err);

// Joins dir and name into a malloc'ed path.
char *fb_path_join(const char *dir, const char *name);

#endif
