// safetensors.c: the validating reader; see safetensors.h for the rules.
#include "io/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/strmap.h"

int fb_st_nbytes(fb_dtype dt, int ndim, const int64_t *shape, uint64_t *out) {
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(n, (uint64_t)shape[i], &n)) return -1;
    }
    uint64_t bits;
    if (__builtin_mul_overflow(n, (uint64_t)fb_dtypes[dt].bits, &bits)) return -1;
    if (bits % 8) return -1;
    *out = bits / 8;
    return 0;
}

// Strict UTF-8 check (no overlongs, no surrogates, max U+10FFFF), as Rust's from_utf8.
static long utf8_invalid_at(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t len;
        unsigned min;
        if ((c & 0xE0) == 0xC0) { len = 2; min = 0x80; c &= 0x1F; }
        else if ((c & 0xF0) == 0xE0) { len = 3; min = 0x800; c &= 0x0F; }
        else if ((c & 0xF8) == 0xF0) { len = 4; min = 0x10000; c &= 0x07; }
        else return (long)i;
        if (i + len > n) return (long)i;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return (long)i;
            c = (c << 6) | (s[i + k] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return (long)i;
        i += len;
    }
    return -1;
}

static int cmp_offsets(const void *a, const void *b) {
    const fb_st_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int get_u64(json_t *v, uint64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

void fb_st_close(fb_st_file *f) {
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    for (size_t i = 0; i < f->n_tensors; i++) free(f->tensors[i].name);
    for (size_t i = 0; i < f->n_meta; i++) {
        free(f->meta_keys[i]);
        free(f->meta_vals[i]);
    }
    if (f->index_) {
        fb_strmap_free(f->index_);
        free(f->index_);
    }
    free(f->tensors);
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->path);
    free(f);
}

int fb_st_parse_header(const char *path, const char *json, size_t json_len, uint64_t file_size,
                       fb_st_file **out, fb_err *err) {
    *out = NULL;
    long bad = utf8_invalid_at((const unsigned char *)json, json_len);
    if (bad >= 0)
        return fb_fail(err, "%s: header is not valid UTF-8 (byte %ld of the header)", path, bad);
    json_error_t je;
    json_t *root = json_loadb(json, json_len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    if (!root)
        return fb_fail(err, "%s: header is not valid JSON: %s (header line %d, column %d)", path,
                       je.text, je.line, je.column);
    if (!json_is_object(root)) {
        json_decref(root);
        return fb_fail(err, "%s: header is not a JSON object", path);
    }
    fb_st_file *f = fb_calloc(1, sizeof *f);
    f->path = fb_strdup(path);
    f->fd = -1;
    f->file_size = file_size;
    f->header_len = json_len;
    f->data_start = 8 + json_len;
    size_t cap = json_object_size(root);
    f->tensors = fb_calloc(cap ? cap : 1, sizeof *f->tensors);
    int rc = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (!json_is_object(val)) {
                rc = fb_fail(err, "%s: __metadata__ is not a string->string map", path);
                break;
            }
            size_t nm = json_object_size(val);
            f->meta_keys = fb_calloc(nm ? nm : 1, sizeof(char *));
            f->meta_vals = fb_calloc(nm ? nm : 1, sizeof(char *));
            const char *mk;
            json_t *mv;
            json_object_foreach(val, mk, mv) {
                if (!json_is_string(mv)) {
                    rc = fb_fail(err, "%s: __metadata__ value of '%s' is not a string", path, mk);
                    break;
                }
                f->meta_keys[f->n_meta] = fb_strdup(mk);
                f->meta_vals[f->n_meta] = fb_strdup(json_string_value(mv));
                f->n_meta++;
            }
            if (rc) break;
            continue;
        }
        fb_st_tensor *t = &f->tensors[f->n_tensors];
        if (!json_is_object(val)) {
            rc = fb_fail(err, "%s: tensor %s: entry is not an object", path, key);
            break;
        }
        json_t *jd = json_object_get(val, "dtype"), *js = json_object_get(val, "shape"),
               *jo = json_object_get(val, "data_offsets");
        if (!jd || !js || !jo) {
            rc = fb_fail(err, "%s: tensor %s: missing field '%s'", path, key,
                         !jd ? "dtype" : !js ? "shape" : "data_offsets");
            break;
        }
        if (json_object_size(val) != 3) {
            const char *k2;
            json_t *v2;
            json_object_foreach(val, k2, v2) {
                if (strcmp(k2, "dtype") && strcmp(k2, "shape") && strcmp(k2, "data_offsets")) break;
            }
            rc = fb_fail(err, "%s: tensor %s: unknown field '%s'", path, key, k2);
            break;
        }
        if (!json_is_string(jd) || fb_dtype_from_name(json_string_value(jd), &t->dtype) != 0) {
            rc = fb_fail(err, "%s: tensor %s: unknown dtype %s%s%s", path, key,
                         json_is_string(jd) ? "'" : "", json_is_string(jd) ? json_string_value(jd) : "(not a string)",
                         json_is_string(jd) ? "'" : "");
            break;
        }
        if (!json_is_array(js) || json_array_size(js) > FB_MAX_DIMS) {
            rc = fb_fail(err, "%s: tensor %s: shape is not an array of at most %d integers", path,
                         key, FB_MAX_DIMS);
            break;
        }
        t->ndim = (int)json_array_size(js);
        for (int d = 0; d < t->ndim; d++) {
            uint64_t v;
            if (get_u64(json_array_get(js, (size_t)d), &v) != 0) {
                rc = fb_fail(err, "%s: tensor %s: shape[%d] is not a non-negative integer", path, key, d);
                break;
            }
            t->shape[d] = (int64_t)v;
        }
        if (rc) break;
        if (!json_is_array(jo) || json_array_size(jo) != 2 ||
            get_u64(json_array_get(jo, 0), &t->begin) || get_u64(json_array_get(jo, 1), &t->end)) {
            rc = fb_fail(err, "%s: tensor %s: data_offsets is not [begin, end] of non-negative integers",
                         path, key);
            break;
        }
        if (t->end < t->begin) {
            rc = fb_fail(err, "%s: tensor %s: invalid offset: end %llu < begin %llu", path, key,
                         (unsigned long long)t->end, (unsigned long long)t->begin);
            break;
        }
        uint64_t nb;
        uint64_t ne = 1;
        int ovf = 0;
        for (int d = 0; d < t->ndim; d++) ovf |= __builtin_mul_overflow(ne, (uint64_t)t->shape[d], &ne);
        if (ovf) {
            rc = fb_fail(err, "%s: tensor %s: shape product overflows", path, key);
            break;
        }
        if (fb_st_nbytes(t->dtype, t->ndim, t->shape, &nb) != 0) {
            rc = fb_fail(err, "%s: tensor %s: size of %s %s tensor overflows or is not a whole number of bytes",
                         path, key, fb_dtypes[t->dtype].name, t->ndim ? "shaped" : "scalar");
            break;
        }
        t->nelem = ne;
        t->nbytes = t->end - t->begin;
        if (nb != t->nbytes) {
            rc = fb_fail(err, "%s: tensor %s: data_offsets span %llu bytes but dtype %s and shape need %llu",
                         path, key, (unsigned long long)t->nbytes, fb_dtypes[t->dtype].name,
                         (unsigned long long)nb);
            break;
        }
        t->name = fb_strdup(key);
        f->n_tensors++;
    }
    json_decref(root);
    if (rc) {
        fb_st_close(f);
        return -1;
    }
    qsort(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_offsets);
    uint64_t pos = 0;
    for (size_t i = 0; i < f->n_tensors; i++) {
        fb_st_tensor *t = &f->tensors[i];
        if (t->begin != pos) {
            rc = fb_fail(err, "%s: tensor %s: invalid offset: begins at %llu but the previous tensor ends at %llu (%s)",
                         path, t->name, (unsigned long long)t->begin, (unsigned long long)pos,
                         t->begin > pos ? "gap" : "overlap");
            break;
        }
        pos = t->end;
        t->offset = f->data_start + t->begin;
    }
    if (!rc && f->data_start + pos != file_size) {
        rc = fb_fail(err, "%s: file is %llu bytes but the header describes %llu (%s)", path,
                     (unsigned long long)file_size, (unsigned long long)(f->data_start + pos),
                     file_size < f->data_start + pos ? "truncated" : "trailing bytes after the last tensor");
    }
    if (rc) {
        fb_st_close(f);
        return -1;
    }
    fb_strmap *m = fb_malloc(sizeof *m);
    fb_strmap_init(m, f->n_tensors);
    for (size_t i = 0; i < f->n_tensors; i++) fb_strmap_put(m, f->tensors[i].name, (int64_t)i, NULL);
    f->index_ = m;
    *out = f;
    return 0;
}

static int pread_full(int fd, void *buf, size_t n, uint64_t off) {
    unsigned char *p = buf;
    while (n) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) {
            errno = EIO;  // shorter than its size said: truncated under us
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

int fb_st_open(const char *path, fb_st_file **out, fb_err *err) {
    *out = NULL;
    // O_NONBLOCK: opening a FIFO (or a device) put in place of a shard must not wait for a
    // writer; it is refused just below. It does nothing to reads of a regular file.
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return fb_fail(err, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return fb_fail(err, "%s: cannot stat: %s", path, strerror(errno));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return fb_fail(err, "%s: not a regular file (%s)", path,
                       S_ISFIFO(st.st_mode) ? "a FIFO" : S_ISDIR(st.st_mode) ? "a directory" : "a device or socket");
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size < 8) {
        close(fd);
        return fb_fail(err, "%s: header too small: file is %llu bytes, need at least 8", path,
                       (unsigned long long)size);
    }
    unsigned char lenb[8];
    if (pread_full(fd, lenb, 8, 0) != 0) {
        close(fd);
        return fb_fail(err, "%s: read error: %s", path, strerror(errno));
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | lenb[i];
    if (n > FB_ST_MAX_HEADER) {
        close(fd);
        return fb_fail(err, "%s: header too large: %llu bytes (limit %llu)", path,
                       (unsigned long long)n, (unsigned long long)FB_ST_MAX_HEADER);
    }
    if (8 + n > size) {
        close(fd);
        return fb_fail(err, "%s: invalid header length: %llu bytes declared but the file has only %llu after the length",
                       path, (unsigned long long)n, (unsigned long long)(size - 8));
    }
    char *hdr = fb_malloc((size_t)n + 1);
    if (pread_full(fd, hdr, (size_t)n, 8) != 0) {
        free(hdr);
        close(fd);
        return fb_fail(err, "%s: read error in header: %s", path, strerror(errno));
    }
    hdr[n] = 0;
    fb_st_file *f;
    int rc = fb_st_parse_header(path, hdr, (size_t)n, size, &f, err);
    free(hdr);
    if (rc) {
        close(fd);
        return -1;
    }
#ifdef POSIX_FADV_SEQUENTIAL
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
    f->fd = fd;
    *out = f;
    return 0;
}

const fb_st_tensor *fb_st_find(const fb_st_file *f, const char *name) {
    int64_t i = fb_strmap_get(f->index_, name);
    return i < 0 ? NULL : &f->tensors[i];
}

const char *fb_st_meta(const fb_st_file *f, const char *key) {
    for (size_t i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_vals[i];
    return NULL;
}

int fb_st_read(const fb_st_file *f, const fb_st_tensor *t, uint64_t off, void *buf, size_t n,
               fb_err *err) {
    if (off > t->nbytes || n > t->nbytes - off)
        return fb_fail(err, "%s: tensor %s: read of %zu bytes at %llu leaves the tensor (%llu bytes)",
                       f->path, t->name, n, (unsigned long long)off, (unsigned long long)t->nbytes);
    if (f->fd < 0) return fb_fail(err, "%s: tensor %s: file opened header-only", f->path, t->name);
    if (pread_full(f->fd, buf, n, t->offset + off) != 0)
        return fb_fail(err, "%s: tensor %s: read error at byte %llu: %s", f->path, t->name,
                       (unsigned long long)(t->offset + off), strerror(errno));
    return 0;
}

int fb_st_read_all(const fb_st_file *f, const fb_st_tensor *t, void **out, fb_err *err) {
    void *buf = fb_malloc(t->nbytes ? t->nbytes : 1);
    if (fb_st_read(f, t, 0, buf, t->nbytes, err) != 0) {
        free(buf);
        *out = NULL;
        return -1;
    }
    *out = buf;
    return 0;
}

void fb_st_release(const fb_st_file *f, uint64_t off, uint64_t n) {
#ifdef POSIX_FADV_DONTNEED
    if (f->fd >= 0) posix_fadvise(f->fd, (off_t)off, (off_t)n, POSIX_FADV_DONTNEED);
#endif
}
