// safetensors.h: read and write safetensors files (the dtypes: common/dtype.h).
//
// File format (huggingface/safetensors; spec/fp8-safetensors-perf.md §1):
//   1. [0, 8)        N, u64 little-endian: header length, at most 100,000,000
//   2. [8, 8+N)      UTF-8 JSON object: "__metadata__" (flat string->string map, optional) and,
//                    for every tensor, {"dtype", "shape": [..], "data_offsets": [begin, end]}
//   3. [8+N, EOF)    payloads, little-endian, row-major; offsets are relative to 8+N
// Rules enforced by the reader, one error message each (the official loader's rules plus
// duplicate keys): header size cap, header inside the file, UTF-8, valid JSON, known dtype,
// shape of non-negative ints, no extra/missing fields, offsets sorted and contiguous from 0
// with no gap or overlap, size = prod(shape) * bits / 8 without overflow, file ends exactly at
// the last tensor. 0-d tensors and zero-element tensors are valid.
//
// Reading is read-only (O_RDONLY, pread); nothing here ever writes to an input.
#ifndef FB_IO_SAFETENSORS_H
#define FB_IO_SAFETENSORS_H

#include "common/dtype.h"
#include "common/fb.h"

#define FB_ST_MAX_HEADER 100000000ull
#define FB_MAX_DIMS 8


typedef struct fb_st_tensor {
    char *name;
    fb_dtype dtype;
    int ndim;                       // 0 for a scalar
    int64_t shape[FB_MAX_DIMS];
    uint64_t nelem;                 // product of shape (1 for a scalar)
    uint64_t begin, end;            // data_offsets, relative to the data section
    uint64_t offset;                // absolute file offset of the first byte (8 + N + begin)
    uint64_t nbytes;                // end - begin
} fb_st_tensor;

typedef struct fb_st_file {
    char *path;
    int fd;                         // O_RDONLY, -1 for a header-only parse
    uint64_t file_size;
    uint64_t header_len;            // N
    uint64_t data_start;            // 8 + N
    size_t n_tensors;
    fb_st_tensor *tensors;          // sorted by data offset (file order)
    size_t n_meta;
    char **meta_keys, **meta_vals;  // __metadata__, in header order
    void *index_;                   // private: name -> tensor hash
} fb_st_file;

// Opens and validates a safetensors file. On success *out owns the fd and all strings;
// release with fb_st_close. Errors name the path and the rule broken (and the tensor).
int fb_st_open(const char *path, fb_st_file **out, fb_err *err);

// Validates a header given as bytes (the JSON after the 8-byte length), for a file of
// file_size bytes. Used by fb_st_open and by tests/validators on synthetic headers.
// `path` is only used in messages. The result has fd = -1.
int fb_st_parse_header(const char *path, const char *json, size_t json_len, uint64_t file_size,
                       fb_st_file **out, fb_err *err);

void fb_st_close(fb_st_file *f);

// The tensor with this name, or NULL.
const fb_st_tensor *fb_st_find(const fb_st_file *f, const char *name);

// The __metadata__ value for key, or NULL.
const char *fb_st_meta(const fb_st_file *f, const char *key);

// Reads n bytes starting at byte `off` of tensor t into buf (pread, retries short reads).
// Fails with the path and tensor name on I/O error, or if the range leaves the tensor.
int fb_st_read(const fb_st_file *f, const fb_st_tensor *t, uint64_t off, void *buf, size_t n,
               fb_err *err);

// Reads a whole tensor into a fresh malloc'ed buffer (*out, caller frees). For small tensors
// (scales, biases, norms); big weights are streamed with fb_st_read.
int fb_st_read_all(const fb_st_file *f, const fb_st_tensor *t, void **out, fb_err *err);

// Drops the page cache for the byte range [off, off+n) of the file (POSIX_FADV_DONTNEED), so
// a streaming pass over a 230 GB checkpoint does not fill memory. Best effort.
void fb_st_release(const fb_st_file *f, uint64_t off, uint64_t n);

// Bytes a tensor of this dtype and shape occupies; -1 on overflow or a sub-byte remainder.
int fb_st_nbytes(fb_dtype dt, int ndim, const int64_t *shape, uint64_t *out);

#endif
