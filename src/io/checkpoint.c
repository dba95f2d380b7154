// checkpoint.c: checkpoint directories (read) and the sharded, staged writer; see checkpoint.h.
#include "io/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "common/paths.h"
#include "common/strmap.h"

char *fb_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = fb_malloc(a + b + 2);
    memcpy(p, dir, a);
    size_t k = a;
    if (a && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

// ---- reader ---------------------------------------------------------------------------

// json_load_file reads with getc; a 10 MB index of 192k names parses much faster from memory.
static json_t *load_json(const char *path, json_error_t *je) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return json_load_file(path, 0, je);  // same error text as before
    struct stat st;
    json_t *j = NULL;
    if (fstat(fd, &st) == 0 && st.st_size >= 0) {
        size_t n = (size_t)st.st_size;
        char *buf = fb_malloc(n + 1);
        size_t got = 0;
        while (got < n) {
            ssize_t r = read(fd, buf + got, n - got);
            if (r <= 0) break;
            got += (size_t)r;
        }
        j = json_loadb(buf, got, 0, je);
        free(buf);
    }
    close(fd);
    return j;
}

void fb_ckpt_close(fb_ckpt *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n_files; i++) {
        fb_st_close(c->files[i]);
        free(c->file_names[i]);
    }
    free(c->files);
    free(c->file_names);
    free(c->tensors);
    if (c->config) json_decref(c->config);
    if (c->index_json) json_decref(c->index_json);
    if (c->by_name_) {
        fb_strmap_free(c->by_name_);
        free(c->by_name_);
    }
    free(c->path);
    free(c->dir);
    free(c);
}

static int add_file(fb_ckpt *c, const char *name, fb_err *err) {
    char *p = fb_path_join(c->dir, name);
    fb_st_file *f;
    int rc = fb_st_open(p, &f, err);
    free(p);
    if (rc) return -1;
    c->files = fb_realloc(c->files, (c->n_files + 1) * sizeof *c->files);
    c->file_names = fb_realloc(c->file_names, (c->n_files + 1) * sizeof *c->file_names);
    c->files[c->n_files] = f;
    c->file_names[c->n_files] = fb_strdup(name);
    c->n_files++;
    return 0;
}

// Lists *.safetensors in dir (sorted); caller frees.
static char **list_shards(const char *dir, size_t *n, fb_err *err) {
    DIR *d = opendir(dir);
    if (!d) {
        fb_fail(err, "%s: cannot open directory: %s", dir, strerror(errno));
        return NULL;
    }
    char **v = NULL;
    size_t k = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || !ends_with(e->d_name, ".safetensors")) continue;
        v = fb_realloc(v, (k + 1) * sizeof *v);
        v[k++] = fb_strdup(e->d_name);
    }
    closedir(d);
    if (k) qsort(v, k, sizeof *v, cmp_str);
    *n = k;
    if (!v) v = fb_calloc(1, sizeof *v);
    return v;
}

static void free_list(char **v, size_t n) {
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

int fb_ckpt_open(const char *path, fb_ckpt **out, fb_err *err) {
    *out = NULL;
    fb_ckpt *c = fb_calloc(1, sizeof *c);
    c->path = fb_strdup(path);
    int rc = 0;
    if (!is_dir(path)) {
        if (!file_exists(path)) {
            fb_ckpt_close(c);
            return fb_fail(err, "%s: no such file or directory", path);
        }
        const char *slash = strrchr(path, '/');
        c->dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : fb_strdup(".");
        rc = add_file(c, slash ? slash + 1 : path, err);
    } else {
        c->dir = fb_strdup(path);
        char *cfg = fb_path_join(c->dir, "config.json");
        if (file_exists(cfg)) {
            json_error_t je;
            c->config = load_json(cfg, &je);
            if (!c->config || !json_is_object(c->config))
                rc = fb_fail(err, "%s: invalid JSON: %s (line %d)", cfg, c->config ? "not an object" : je.text, je.line);
        }
        free(cfg);
        size_t ns = 0;
        char **shards = rc ? NULL : list_shards(c->dir, &ns, err);
        if (!rc && !shards) rc = -1;
        char *idx = fb_path_join(c->dir, "model.safetensors.index.json");
        if (!rc && file_exists(idx)) {
            c->has_index = 1;
            json_error_t je;
            c->index_json = load_json(idx, &je);
            json_t *wm = c->index_json ? json_object_get(c->index_json, "weight_map") : NULL;
            if (!c->index_json) rc = fb_fail(err, "%s: invalid JSON: %s (line %d)", idx, je.text, je.line);
            else if (!json_is_object(wm)) rc = fb_fail(err, "%s: no \"weight_map\" object", idx);
            // Files in order of first appearance in the weight map.
            fb_strmap seen;
            fb_strmap_init(&seen, 64);
            const char *k;
            json_t *v;
            if (!rc) json_object_foreach(wm, k, v) {
                if (!json_is_string(v)) { rc = fb_fail(err, "%s: weight_map[%s] is not a string", idx, k); break; }
                const char *fn = json_string_value(v);
                if (strchr(fn, '/') || strcmp(fn, "..") == 0) { rc = fb_fail(err, "%s: weight_map[%s] = '%s' is not a file in the directory", idx, k, fn); break; }
                if (fb_strmap_get(&seen, fn) >= 0) continue;
                if (add_file(c, fn, err) != 0) { rc = -1; break; }
                fb_strmap_put(&seen, c->file_names[c->n_files - 1], (int64_t)c->n_files - 1, NULL);
            }
            for (size_t i = 0; !rc && i < ns; i++)
                if (fb_strmap_get(&seen, shards[i]) < 0)
                    rc = fb_fail(err, "%s: shard %s is in the directory but not in the index", idx, shards[i]);
            fb_strmap_free(&seen);
        } else if (!rc) {
            if (ns == 0) rc = fb_fail(err, "%s: no *.safetensors files", path);
            else if (ns > 1) rc = fb_fail(err, "%s: %zu *.safetensors files but no model.safetensors.index.json", path, ns);
            else rc = add_file(c, shards[0], err);
        }
        free(idx);
        if (shards) free_list(shards, ns);
    }
    if (rc) {
        fb_ckpt_close(c);
        return -1;
    }
    size_t total = 0;
    for (size_t i = 0; i < c->n_files; i++) total += c->files[i]->n_tensors;
    c->tensors = fb_calloc(total ? total : 1, sizeof *c->tensors);
    fb_strmap *m = fb_malloc(sizeof *m);
    fb_strmap_init(m, total);
    c->by_name_ = m;
    for (size_t i = 0; i < c->n_files && !rc; i++) {
        for (size_t j = 0; j < c->files[i]->n_tensors; j++) {
            const fb_st_tensor *t = &c->files[i]->tensors[j];
            int64_t prev;
            if (fb_strmap_put(m, t->name, (int64_t)c->n_tensors, &prev)) {
                rc = fb_fail(err, "%s: tensor %s is in both %s and %s", path, t->name,
                             c->file_names[c->tensors[prev].file], c->file_names[i]);
                break;
            }
            c->tensors[c->n_tensors].t = t;
            c->tensors[c->n_tensors].file = (int)i;
            c->n_tensors++;
        }
    }
    if (!rc && c->has_index) {
        json_t *wm = json_object_get(c->index_json, "weight_map");
        const char *k;
        json_t *v;
        json_object_foreach(wm, k, v) {
            int64_t i = fb_strmap_get(m, k);
            if (i < 0) {
                rc = fb_fail(err, "%s/model.safetensors.index.json: tensor %s is listed in %s but that file does not hold it",
                             c->dir, k, json_string_value(v));
                break;
            }
            if (strcmp(c->file_names[c->tensors[i].file], json_string_value(v)) != 0) {
                rc = fb_fail(err, "%s/model.safetensors.index.json: tensor %s is listed in %s but is in %s", c->dir, k,
                             json_string_value(v), c->file_names[c->tensors[i].file]);
                break;
            }
        }
        if (!rc && json_object_size(wm) != c->n_tensors) {
            for (size_t i = 0; i < c->n_tensors; i++) {
                if (!json_object_get(wm, c->tensors[i].t->name)) {
                    rc = fb_fail(err, "%s/model.safetensors.index.json: tensor %s in %s is missing from the index", c->dir,
                                 c->tensors[i].t->name, c->file_names[c->tensors[i].file]);
                    break;
                }
            }
        }
    }
    if (rc) {
        fb_ckpt_close(c);
        return -1;
    }
    *out = c;
    return 0;
}

char *fb_ckpt_shard_owner(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return NULL;
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : fb_strdup(".");
    char *a = fb_path_join(dir, "config.json"), *b = fb_path_join(dir, "model.safetensors.index.json");
    int owned = file_exists(a) || file_exists(b);
    free(a);
    free(b);
    if (owned) return dir;
    free(dir);
    return NULL;
}

const fb_ckpt_tensor *fb_ckpt_find(const fb_ckpt *c, const char *name) {
    int64_t i = fb_strmap_get(c->by_name_, name);
    return i < 0 ? NULL : &c->tensors[i];
}

// ---- writer ---------------------------------------------------------------------------

typedef struct out_tensor {
    char *name;
    fb_dtype dt;
    int ndim;
    int64_t shape[FB_MAX_DIMS];
    uint64_t nbytes;
    int shard;
    uint64_t begin;          // relative to the shard's data section
} out_tensor;

typedef struct shard {
    char *name;
    int *members;            // tensor indices in file order
    int n_members;
    uint64_t data_bytes;
    char *header;            // padded header JSON
    uint64_t header_len;
    int fd;
    int state;               // 0 not begun, 1 open, 2 done, 3 skipped (resumed), 4 another job's
    uint64_t written;        // payload bytes received
    uint64_t hashed;         // bytes of the file hashed in order so far
    uint64_t synced;         // bytes flushed and released from the page cache
    XXH3_state_t *hash;
    char digest[33];
} shard;

struct fb_cw {
    char *dst, *staging;
    fb_cw_opts o;
    char **meta_keys, **meta_vals;
    out_tensor *t;
    int n, cap;
    fb_strmap names;
    shard *shards;
    int n_shards;
    int planned;
    json_t *prev_manifest;   // from a killed run (resume), or the union of the jobs' (merge)
    char manifest_name[96];  // fourbit-manifest.json, or .job-<i>-of-<n>.json for a split job
    json_t *manifest;        // {"files": {name: {"xxh3_128":..., "bytes":...}}}
    pthread_mutex_t mu;
    char notice[1024];       // what happened to an earlier run's shards (fb_cw_notice), "" if nothing
    int n_rewritten;         // --resume: shards of the earlier run rewritten (changed)
    long kill_after_writes;  // fault injection for the kill-and-resume tests (0 = off)
    int fault_signal;        // the signal it raises (SIGKILL; FOURBIT_FAULT_SIGNAL=N for others)
    long n_writes;
    char *lock_path;         // <dst>.lock, flock'ed for the writer's lifetime (see cw_lock)
    int lock_fd;             // -1 when not held
    int lock_excl;           // held exclusively (a single run or a merge), not shared (a split job)
};

static int mkdir_p_parent_ok(const char *dst, fb_err *err) {
    char *tmp = fb_strdup(dst);
    char *slash = strrchr(tmp, '/');
    int rc = 0;
    if (slash && slash != tmp) {
        *slash = 0;
        if (!is_dir(tmp)) rc = fb_fail(err, "%s: parent directory %s does not exist", dst, tmp);
    }
    free(tmp);
    return rc;
}

static int rm_rf(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return -1;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char *p = fb_path_join(path, e->d_name);
            rm_rf(p);
            free(p);
        }
        closedir(d);
        return rmdir(path);
    }
    return unlink(path);
}

static int dir_is_empty(const char *path) {
    DIR *d = opendir(path);
    if (!d) return 0;
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) { empty = 0; break; }
    }
    closedir(d);
    return empty;
}

// Canonical absolute path of p, which may not exist yet (its parent must).
static char *canon(const char *p) {
    char buf[PATH_MAX];
    if (realpath(p, buf)) return fb_strdup(buf);
    char *tmp = fb_strdup(p);
    char *slash = strrchr(tmp, '/');
    const char *base = slash ? slash + 1 : tmp;
    char *res = NULL;
    if (slash) *slash = 0;
    if (realpath(slash ? (tmp[0] ? tmp : "/") : ".", buf)) {
        size_t n = strlen(buf) + strlen(base) + 2;
        res = fb_malloc(n);
        snprintf(res, n, "%s/%s", strcmp(buf, "/") ? buf : "", base);
    }
    free(tmp);
    return res;
}

static int path_within(const char *inner, const char *outer) {
    size_t n = strlen(outer);
    return strncmp(inner, outer, n) == 0 && (inner[n] == 0 || inner[n] == '/' || n == 1);
}

#define STAGING_MARK ".fourbit-staging"

// Finished shards (*.safetensors, not .tmp) in a staging directory.
static int count_shards(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) n += e->d_name[0] != '.' && ends_with(e->d_name, ".safetensors");
    closedir(d);
    return n;
}

// Two runs on one DST would delete each other's staging directory. A writer holds an advisory
// flock on <dst>.lock (beside DST.partial, which is itself removed and renamed): exclusive
// for a single run or a merge, shared for split jobs (they write disjoint shards of one
// staging directory). The holder writes its pid into the file for the message. The file is
// removed by an exclusive holder when it is done; a waiter that locked a file unlinked under
// it (the inode no longer at the path) starts again.
static int cw_lock(fb_cw *w, fb_err *err) {
    size_t n = strlen(w->dst) + 8;
    w->lock_path = fb_malloc(n);
    snprintf(w->lock_path, n, "%s.lock", w->dst);
    w->lock_excl = !(w->o.shard_count > 1 && !w->o.merge);
    for (int tries = 0; tries < 100; tries++) {
        int fd = open(w->lock_path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0) return fb_fail(err, "%s: cannot create the lock file: %s", w->lock_path, strerror(errno));
        if (flock(fd, (w->lock_excl ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0) {
            int e = errno;
            char pid[32] = "";
            ssize_t r = pread(fd, pid, sizeof pid - 1, 0);
            close(fd);
            if (e != EWOULDBLOCK) return fb_fail(err, "%s: flock: %s", w->lock_path, strerror(e));
            pid[r > 0 ? r : 0] = 0;
            pid[strcspn(pid, "\n")] = 0;
            return fb_fail(err, "%s.partial is in use by another fourbit run (process %s, lock %s): wait for it to "
                                "finish or stop it; split jobs need --shard-count on every run",
                           w->dst, pid[0] ? pid : "unknown", w->lock_path);
        }
        struct stat a, b;
        if (fstat(fd, &a) == 0 && stat(w->lock_path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
            char pid[32];
            int k = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
            if (w->lock_excl && ftruncate(fd, 0) == 0) (void)!pwrite(fd, pid, (size_t)k, 0);
            else if (!w->lock_excl) (void)!pwrite(fd, pid, (size_t)k, 0);
            w->lock_fd = fd;
            return 0;
        }
        close(fd);  // unlinked by the previous holder while we waited: take the new file
    }
    return fb_fail(err, "%s: the lock file keeps being replaced", w->lock_path);
}

static void cw_unlock(fb_cw *w) {
    if (w->lock_fd >= 0) {
        if (w->lock_excl) unlink(w->lock_path);  // still ours: we hold it exclusively
        close(w->lock_fd);
        w->lock_fd = -1;
    }
    free(w->lock_path);
    w->lock_path = NULL;
}

fb_cw *fb_cw_create(const char *dst, const char *src, const fb_cw_opts *o, fb_err *err) {
    size_t dl = strlen(dst);
    while (dl > 1 && dst[dl - 1] == '/') dl--;
    char *d = strndup(dst, dl);
    if (mkdir_p_parent_ok(d, err)) { free(d); return NULL; }
    if (src) {
        char *cs = canon(src), *cd = canon(d);
        int bad = cs && cd && (path_within(cd, cs) || path_within(cs, cd));
        int same_in = cs && cd && path_within(cd, cs);
        free(cs);
        free(cd);
        if (bad) {
            fb_fail(err, same_in ? "%s: the output would be inside (or equal to) the input %s; choose another directory"
                                 : "%s: the input %s is inside the output directory; choose another directory", d, src);
            free(d);
            return NULL;
        }
    }
    struct stat st;
    if (stat(d, &st) == 0) {
        if (!S_ISDIR(st.st_mode)) { fb_fail(err, "%s: exists and is not a directory", d); free(d); return NULL; }
        if (!dir_is_empty(d) && !o->force) {
            fb_fail(err, "%s: exists and is not empty (use --force to replace it)", d);
            free(d);
            return NULL;
        }
    }
    fb_cw *w = fb_calloc(1, sizeof *w);
    w->dst = d;
    w->lock_fd = -1;
    size_t n = strlen(d) + 16;
    w->staging = fb_malloc(n);
    snprintf(w->staging, n, "%s.partial", d);
    w->o = *o;
    if (!w->o.max_shard_size) w->o.max_shard_size = 5000000000ull;
    w->meta_keys = fb_calloc(o->n_meta + 1, sizeof(char *));
    w->meta_vals = fb_calloc(o->n_meta + 1, sizeof(char *));
    for (size_t i = 0; i < o->n_meta; i++) {
        w->meta_keys[i] = fb_strdup(o->meta_keys[i]);
        w->meta_vals[i] = fb_strdup(o->meta_vals[i]);
    }
    w->o.meta_keys = (const char *const *)w->meta_keys;
    w->o.meta_vals = (const char *const *)w->meta_vals;
    w->o.tool = fb_strdup(o->tool ? o->tool : "fourbit");
    fb_strmap_init(&w->names, 1024);
    pthread_mutex_init(&w->mu, NULL);
    w->manifest = json_object();
    json_object_set_new(w->manifest, "files", json_object());
    // Test-only fault injection: FOURBIT_FAULT_KILL_AFTER_WRITES=K makes the process SIGKILL
    // itself on the K-th payload write, a real kill at a reproducible point.
    const char *fk = getenv("FOURBIT_FAULT_KILL_AFTER_WRITES");
    w->kill_after_writes = fk ? strtol(fk, NULL, 10) : 0;
    // FOURBIT_FAULT_SIGNAL=2 raises SIGINT instead, once: a user's ^C at the same point.
    const char *fs = getenv("FOURBIT_FAULT_SIGNAL");
    w->fault_signal = fs ? (int)strtol(fs, NULL, 10) : SIGKILL;

    if (o->shard_count > 1 && (o->shard_index < 0 || o->shard_index >= o->shard_count)) {
        fb_fail(err, "shard index %d is outside [0, %d)", o->shard_index, o->shard_count);
        fb_cw_detach(w);
        return NULL;
    }
    if (o->shard_count > 1 && !o->merge)
        snprintf(w->manifest_name, sizeof w->manifest_name, "fourbit-manifest.job-%d-of-%d.json", o->shard_index,
                 o->shard_count);
    else
        snprintf(w->manifest_name, sizeof w->manifest_name, "fourbit-manifest.json");
    if (cw_lock(w, err)) {
        fb_cw_detach(w);
        return NULL;
    }
    char *mark = fb_path_join(w->staging, STAGING_MARK);
    if (o->merge && !is_dir(w->staging)) {
        fb_fail(err, "%s: no staging directory to merge: run the split jobs (--shard-index i --shard-count n) first",
                w->staging);
        free(mark);
        fb_cw_detach(w);
        return NULL;
    }
    if (is_dir(w->staging)) {
        if (!file_exists(mark)) {
            fb_fail(err, "%s: exists and was not made by fourbit; remove it or choose another output", w->staging);
            free(mark);
            fb_cw_detach(w);
            return NULL;
        }
        if (o->merge) {
            // The union of every job's manifest: shards they finished are verified, not redone.
            w->prev_manifest = json_object();
            json_t *files = json_object();
            json_object_set_new(w->prev_manifest, "files", files);
            for (int j = 0; j < o->shard_count; j++) {
                char nm[96];
                snprintf(nm, sizeof nm, "fourbit-manifest.job-%d-of-%d.json", j, o->shard_count);
                char *mp = fb_path_join(w->staging, nm);
                json_t *m = json_load_file(mp, 0, NULL);
                free(mp);
                if (m) json_object_update(files, json_object_get(m, "files"));
                json_decref(m);
            }
        } else if (o->resume || o->shard_count > 1) {  // split jobs share the directory
            char *mp = fb_path_join(w->staging, w->manifest_name);
            w->prev_manifest = o->resume ? json_load_file(mp, 0, NULL) : NULL;  // absent: nothing finished
            free(mp);
        } else if (count_shards(w->staging) > 0 &&
                   (snprintf(w->notice, sizeof w->notice,
                             "%s held %d finished shard(s) of an interrupted run: started over without them (rerun "
                             "with --resume to keep verified shards)", w->staging, count_shards(w->staging)),
                    rm_rf(w->staging) != 0)) {
            fb_fail(err, "%s: cannot remove the staging directory of an earlier run: %s", w->staging, strerror(errno));
            free(mark);
            fb_cw_detach(w);
            return NULL;
        } else if (rm_rf(w->staging) != 0) {
            fb_fail(err, "%s: cannot remove the staging directory of an earlier run: %s", w->staging, strerror(errno));
            free(mark);
            fb_cw_detach(w);
            return NULL;
        }
    }
    if (!is_dir(w->staging) && mkdir(w->staging, 0755) != 0 && errno != EEXIST) {  // jobs race here
        fb_fail(err, "%s: cannot create: %s", w->staging, strerror(errno));
        free(mark);
        fb_cw_detach(w);
        return NULL;
    }
    int fd = open(mark, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) close(fd);
    free(mark);
    return w;
}

int fb_cw_add(fb_cw *w, const char *name, fb_dtype dt, int ndim, const int64_t *shape, fb_err *err) {
    FB_ASSERT(!w->planned);
    if (ndim < 0 || ndim > FB_MAX_DIMS) return fb_fail(err, "output tensor %s: %d dimensions", name, ndim);
    uint64_t nb;
    if (fb_st_nbytes(dt, ndim, shape, &nb) != 0) return fb_fail(err, "output tensor %s: size overflows", name);
    if (w->n == w->cap) {
        w->cap = w->cap ? 2 * w->cap : 256;
        w->t = fb_realloc(w->t, (size_t)w->cap * sizeof *w->t);
    }
    out_tensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = fb_strdup(name);
    if (fb_strmap_put(&w->names, t->name, w->n, NULL)) {
        free(t->name);
        return fb_fail(err, "output tensor %s declared twice", name);
    }
    t->dt = dt;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->nbytes = nb;
    return w->n++;
}

static void json_escape(char **buf, size_t *len, size_t *cap, const char *s) {
    for (; *s; s++) {
        char tmp[8];
        const char *piece = tmp;
        unsigned char c = (unsigned char)*s;
        if (c == '"') piece = "\\\"";
        else if (c == '\\') piece = "\\\\";
        else if (c < 0x20) snprintf(tmp, sizeof tmp, "\\u%04x", c);
        else { tmp[0] = (char)c; tmp[1] = 0; }
        size_t k = strlen(piece);
        if (*len + k + 1 > *cap) { *cap = (*cap + k + 1) * 2; *buf = fb_realloc(*buf, *cap); }
        memcpy(*buf + *len, piece, k + 1);
        *len += k;
    }
}

static void sb_add(char **buf, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void sb_add(char **buf, size_t *len, size_t *cap, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(*buf + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if ((size_t)k < *cap - *len) { *len += (size_t)k; return; }
        *cap = (*cap + (size_t)k + 1) * 2;
        *buf = fb_realloc(*buf, *cap);
    }
}

// qsort's comparator gets no context argument and qsort_r's signature differs between glibc
// and the BSDs: the writer being sorted is passed per thread instead. The order is total
// (ties broken by index), so any sort gives the same layout.
static _Thread_local const fb_cw *cmp_layout_w;
static int cmp_layout(const void *a, const void *b) {
    const fb_cw *w = cmp_layout_w;
    const out_tensor *x = &w->t[*(const int *)a], *y = &w->t[*(const int *)b];
    int bx = fb_dtypes[x->dt].bits, by = fb_dtypes[y->dt].bits;
    if (bx != by) return bx > by ? -1 : 1;  // larger alignment first
    return *(const int *)a - *(const int *)b;
}

int fb_cw_plan(fb_cw *w, fb_err *err) {
    FB_ASSERT(!w->planned);
    // Greedy cut in declaration order.
    int ns = 0;
    uint64_t cur = 0;
    for (int i = 0; i < w->n; i++) {
        if (ns == 0 || (cur > 0 && cur + w->t[i].nbytes > w->o.max_shard_size)) {
            ns++;
            cur = 0;
        }
        w->t[i].shard = ns - 1;
        cur += w->t[i].nbytes;
    }
    if (ns == 0) return fb_fail(err, "%s: no tensors to write", w->dst);
    w->n_shards = ns;
    w->shards = fb_calloc((size_t)ns, sizeof *w->shards);
    for (int s = 0; s < ns; s++) {
        shard *sh = &w->shards[s];
        sh->fd = -1;
        char nm[64];
        snprintf(nm, sizeof nm, "model-%05d-of-%05d.safetensors", s + 1, ns);
        sh->name = fb_strdup(nm);
    }
    for (int i = 0; i < w->n; i++) {
        shard *sh = &w->shards[w->t[i].shard];
        sh->members = fb_realloc(sh->members, (size_t)(sh->n_members + 1) * sizeof(int));
        sh->members[sh->n_members++] = i;
    }
    for (int s = 0; s < ns; s++) {
        shard *sh = &w->shards[s];
        cmp_layout_w = w;
        qsort(sh->members, (size_t)sh->n_members, sizeof(int), cmp_layout);
        size_t cap = 4096, len = 0;
        char *b = fb_malloc(cap);
        b[0] = 0;
        sb_add(&b, &len, &cap, "{\"__metadata__\":{\"format\":\"pt\",\"fourbit.tool\":\"");
        json_escape(&b, &len, &cap, w->o.tool);
        sb_add(&b, &len, &cap, "\",\"fourbit.version\":\"%s\"", FB_VERSION);
        for (size_t m = 0; m < w->o.n_meta; m++) {
            sb_add(&b, &len, &cap, ",\"");
            json_escape(&b, &len, &cap, w->o.meta_keys[m]);
            sb_add(&b, &len, &cap, "\":\"");
            json_escape(&b, &len, &cap, w->o.meta_vals[m]);
            sb_add(&b, &len, &cap, "\"");
        }
        sb_add(&b, &len, &cap, "}");
        uint64_t pos = 0;
        for (int k = 0; k < sh->n_members; k++) {
            out_tensor *t = &w->t[sh->members[k]];
            t->begin = pos;
            sb_add(&b, &len, &cap, ",\"");
            json_escape(&b, &len, &cap, t->name);
            sb_add(&b, &len, &cap, "\":{\"dtype\":\"%s\",\"shape\":[", fb_dtypes[t->dt].name);
            for (int d = 0; d < t->ndim; d++) sb_add(&b, &len, &cap, d ? ",%lld" : "%lld", (long long)t->shape[d]);
            sb_add(&b, &len, &cap, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)pos,
                   (unsigned long long)(pos + t->nbytes));
            pos += t->nbytes;
        }
        sb_add(&b, &len, &cap, "}");
        while (len % 8) sb_add(&b, &len, &cap, " ");
        if (len > FB_ST_MAX_HEADER) {
            free(b);
            return fb_fail(err, "%s: shard %s header would be %zu bytes (limit %llu)", w->dst, sh->name, len,
                           (unsigned long long)FB_ST_MAX_HEADER);
        }
        sh->header = b;
        sh->header_len = len;
        sh->data_bytes = pos;
    }
    w->planned = 1;
    return ns;
}

int fb_cw_n_tensors(const fb_cw *w) { return w->n; }
int fb_cw_tensor_shard(const fb_cw *w, int idx) { return w->t[idx].shard; }
int fb_cw_n_shards(const fb_cw *w) { return w->n_shards; }
const char *fb_cw_shard_name(const fb_cw *w, int s) { return w->shards[s].name; }

int fb_cw_shard_tensors(const fb_cw *w, int s, const int **idx) {
    *idx = w->shards[s].members;
    return w->shards[s].n_members;
}

uint64_t fb_cw_total_bytes(const fb_cw *w) {
    uint64_t s = 0;
    for (int i = 0; i < w->n; i++) s += w->t[i].nbytes;
    return s;
}

uint64_t fb_cw_shard_file_bytes(const fb_cw *w, int s) {
    return 8 + w->shards[s].header_len + w->shards[s].data_bytes;
}

const char *fb_cw_notice(const fb_cw *w) {
    if (!w->notice[0]) return NULL;
    if (w->n_rewritten > 1 && !strstr(w->notice, " (and ")) {
        size_t l = strlen(w->notice);
        snprintf((char *)w->notice + l, sizeof w->notice - l, " (and %d more)", w->n_rewritten - 1);
    }
    return w->notice;
}

int fb_cw_shard_skipped(const fb_cw *w, int s) { return w->shards[s].state >= 3; }
int fb_cw_split_job(const fb_cw *w) { return w->o.shard_count > 1 && !w->o.merge; }
uint64_t fb_cw_tensor_bytes(const fb_cw *w, int idx) { return w->t[idx].nbytes; }

char *fb_cw_path(const fb_cw *w, const char *name) { return fb_path_join(w->staging, name); }
const char *fb_cw_staging_dir(const fb_cw *w) { return w->staging; }

static int write_full(int fd, const void *buf, size_t n, uint64_t off) {
    const unsigned char *p = buf;
    while (n) {
        ssize_t r = pwrite(fd, p, n, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static int write_manifest(fb_cw *w, fb_err *err) {
    char tmpn[110];
    snprintf(tmpn, sizeof tmpn, "%s.tmp", w->manifest_name);
    char *p = fb_path_join(w->staging, tmpn);
    char *q = fb_path_join(w->staging, w->manifest_name);
    json_object_set_new(w->manifest, "tool", json_string(w->o.tool));
    json_object_set_new(w->manifest, "version", json_string(FB_VERSION));
    int rc = 0;
    if (json_dump_file(w->manifest, p, JSON_INDENT(2) | JSON_SORT_KEYS) != 0 || rename(p, q) != 0)
        rc = fb_fail(err, "%s: cannot write: %s", q, strerror(errno));
    else if (fb_fsync_parent(q, err))  // the manifest promises what the directory must keep
        rc = -1;
    free(p);
    free(q);
    return rc;
}

static int record_digest(fb_cw *w, const char *name, const char *hex, uint64_t bytes, fb_err *err) {
    json_t *e = json_object();
    json_object_set_new(e, "xxh3_128", json_string(hex));
    json_object_set_new(e, "bytes", json_integer((json_int_t)bytes));
    pthread_mutex_lock(&w->mu);
    json_object_set_new(json_object_get(w->manifest, "files"), name, e);
    int rc = write_manifest(w, err);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int fb_cw_shard_begin(fb_cw *w, int s, fb_err *err) {
    FB_ASSERT(w->planned && s >= 0 && s < w->n_shards);
    shard *sh = &w->shards[s];
    FB_ASSERT(sh->state == 0);
    if (w->o.shard_count > 1 && !w->o.merge && s % w->o.shard_count != w->o.shard_index) {
        sh->state = 4;
        return 2;
    }
    char *final = fb_path_join(w->staging, sh->name);
    if (w->prev_manifest && file_exists(final)) {
        json_t *e = json_object_get(json_object_get(w->prev_manifest, "files"), sh->name);
        const char *want = json_string_value(json_object_get(e, "xxh3_128"));
        struct stat st;
        int same_size = stat(final, &st) == 0 && (uint64_t)st.st_size == fb_cw_shard_file_bytes(w, s);
        // The header must be the one this run would write: same plan, same provenance.
        int same_header = 0;
        if (want && same_size) {
            int fd = open(final, O_RDONLY | O_CLOEXEC);
            if (fd >= 0) {
                char *h = fb_malloc(sh->header_len + 8);
                same_header = pread(fd, h, sh->header_len + 8, 0) == (ssize_t)(sh->header_len + 8) &&
                              memcmp(h + 8, sh->header, sh->header_len) == 0;
                free(h);
                close(fd);
            }
        }
        char hex[33];
        int same_data = same_header && fb_file_xxh128(final, hex, NULL) == 0 && want && strcmp(hex, want) == 0;
        if (same_data) {
            memcpy(sh->digest, hex, 33);
            sh->state = 3;
            free(final);
            return record_digest(w, sh->name, hex, fb_cw_shard_file_bytes(w, s), err) ? -1 : 1;
        }
        // Say why the earlier shard is not kept: the first reason, and how many.
        pthread_mutex_lock(&w->mu);
        if (w->n_rewritten++ == 0 && !w->notice[0])
            snprintf(w->notice, sizeof w->notice, "--resume: %s of the earlier run is rewritten: %s", sh->name,
                     !want ? "it is not in the earlier run's manifest (unfinished)"
                     : !same_size ? "its size differs (another plan: recipe, source or --max-shard-size changed)"
                     : !same_header ? "its header differs (the recipe, calibration statistics, tool version or "
                                      "options changed)"
                                    : "its digest does not match the manifest (the file changed on disk)");
        pthread_mutex_unlock(&w->mu);
        unlink(final);
    }
    free(final);
    char *tmp = fb_path_join(w->staging, sh->name);
    tmp = fb_realloc(tmp, strlen(tmp) + 5);
    strcat(tmp, ".tmp");
    sh->fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (sh->fd < 0) {
        int e = errno;
        free(tmp);
        return fb_fail(err, "%s/%s.tmp: cannot create: %s", w->staging, sh->name, strerror(e));
    }
    unsigned char lb[8];
    for (int i = 0; i < 8; i++) lb[i] = (unsigned char)(sh->header_len >> (8 * i));
    int rc = 0;
    if (write_full(sh->fd, lb, 8, 0) || write_full(sh->fd, sh->header, sh->header_len, 8))
        rc = fb_fail(err, "%s: write error: %s", tmp, strerror(errno));
    // Reserve the whole file so a full disk is found now, not after minutes of work.
    // (posix_fallocate is POSIX's optional Advisory Information: where it is absent, as on
    // macOS, a full disk is found at the first failing write instead.)
#if defined(_POSIX_ADVISORY_INFO) && _POSIX_ADVISORY_INFO > 0
    if (!rc) {
        int e = posix_fallocate(sh->fd, 0, (off_t)fb_cw_shard_file_bytes(w, s));
        if (e == ENOSPC || e == EDQUOT) rc = fb_fail(err, "%s: no space left on device for %llu bytes", tmp,
                                                     (unsigned long long)fb_cw_shard_file_bytes(w, s));
    }
#endif
    free(tmp);
    if (rc) return -1;
    sh->hash = XXH3_createState();
    XXH3_128bits_reset(sh->hash);
    XXH3_128bits_update(sh->hash, lb, 8);
    XXH3_128bits_update(sh->hash, sh->header, sh->header_len);
    sh->hashed = 8 + sh->header_len;
    sh->synced = 0;
    sh->state = 1;
    return 0;
}

#define SYNC_WINDOW (64ull << 20)

// Float dtypes an output may hold, with the mask of their exponent field: an element whose
// exponent bits are all set is Inf or NaN.
static const struct { fb_dtype dt; unsigned size; uint64_t exp_mask; } FLOAT_EXP[] = {
    {FB_BF16, 2, 0x7F80u},
    {FB_F16, 2, 0x7C00u},
    {FB_F32, 4, 0x7F800000u},
    {FB_F64, 8, 0x7FF0000000000000ull},
};

// 1 when any of the es-byte little-endian elements of p[0, n) has every bit of its exponent
// mask m set (Inf or NaN). Eight bytes at a time: x = (w & M) ^ M has a zero lane exactly where
// an element is non-finite, and the lane-wise zero test (x - ONES) & ~x & HIGHS is exact for
// "some lane is zero" (the bits of x lie inside the exponent mask, below each lane's sign bit).
static int any_nonfinite(const unsigned char *p, size_t n, unsigned es, uint64_t m) {
    uint64_t M = 0, ONES = 0, HIGHS = 0;
    for (unsigned l = 0; l < 8 / es; l++) {
        M |= m << (8 * es * l);
        ONES |= (uint64_t)1 << (8 * es * l);
        HIGHS |= (uint64_t)1 << (8 * es * l + 8 * es - 1);
    }
    uint64_t acc = 0;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        uint64_t x = (w & M) ^ M;
        acc |= (x - ONES) & ~x & HIGHS;
    }
    if (acc) return 1;
    for (; i + es <= n; i += es) {  // the tail
        uint64_t v = 0;
        memcpy(&v, p + i, es);
        if ((v & m) == m) return 1;
    }
    return 0;
}

// Flat index of the first Inf/NaN element in bytes [off, off+n) of a tensor of dtype dt, or
// -1 (also for dtypes that are not floats). Elements cut by a misaligned chunk are skipped.
int64_t fb_first_nonfinite_bytes(fb_dtype dt, const void *data, uint64_t off, size_t n) {
    const unsigned char *p = data;
    for (size_t k = 0; k < sizeof FLOAT_EXP / sizeof FLOAT_EXP[0]; k++) {
        if (FLOAT_EXP[k].dt != dt) continue;
        unsigned es = FLOAT_EXP[k].size;
        uint64_t m = FLOAT_EXP[k].exp_mask;
        size_t skip = (size_t)((es - off % es) % es);
        if (n < skip) return -1;
        const unsigned char *b = p + skip;
        size_t cnt = (n - skip) / es;
        // Every output byte passes here: a branch-free pass with fixed-size loads (vectorized)
        // finds whether any element is non-finite; only then the second pass says which.
        // Little-endian host (as the writer assumes throughout).
#define FB_SCAN(T)                                                                         \
    do {                                                                                   \
        const T mm = (T)m;                                                                 \
        if (!any_nonfinite(b, cnt * sizeof(T), sizeof(T), m)) return -1;                  \
        for (size_t i = 0; i < cnt; i++) {                                                 \
            T v;                                                                           \
            memcpy(&v, b + i * sizeof(T), sizeof(T));                                      \
            if ((v & mm) == mm) return (int64_t)((off + skip + i * sizeof(T)) / sizeof(T)); \
        }                                                                                  \
        return -1;                                                                         \
    } while (0)
        switch (es) {
        case 2: FB_SCAN(uint16_t);
        case 4: FB_SCAN(uint32_t);
        case 8: FB_SCAN(uint64_t);
        default: break;
        }
#undef FB_SCAN
        for (size_t i = 0; i < cnt; i++) {  // other sizes (none today)
            uint64_t v = 0;
            memcpy(&v, b + i * es, es);
            if ((v & m) == m) return (int64_t)((off + skip + i * es) / es);
        }
        return -1;
    }
    return -1;
}

int fb_cw_write(fb_cw *w, int idx, uint64_t off, const void *data, size_t n, fb_err *err) {
    FB_ASSERT(idx >= 0 && idx < w->n);
    out_tensor *t = &w->t[idx];
    if (!w->o.allow_nonfinite) {
        int64_t bad = fb_first_nonfinite_bytes(t->dt, data, off, n);
        if (bad >= 0)
            return fb_fail(err, "output tensor %s: element %lld is %s (finite inputs can overflow, e.g. a "
                                "huge scale); nothing was renamed into place (--allow-nan writes it anyway)",
                           t->name, (long long)bad, "Inf or NaN");
    }
    shard *sh = &w->shards[t->shard];
    FB_ASSERT(sh->state == 1);
    if (off > t->nbytes || n > t->nbytes - off)
        return fb_fail(err, "output tensor %s: write of %zu bytes at %llu past its %llu bytes", t->name, n,
                       (unsigned long long)off, (unsigned long long)t->nbytes);
    uint64_t pos = 8 + sh->header_len + t->begin + off;
    if (write_full(sh->fd, data, n, pos) != 0)
        return fb_fail(err, "%s/%s.tmp: tensor %s: write error: %s", w->staging, sh->name, t->name,
                       strerror(errno == ENOSPC ? ENOSPC : errno));
    pthread_mutex_lock(&w->mu);
    if (w->kill_after_writes && ++w->n_writes == w->kill_after_writes) raise(w->fault_signal);
    sh->written += n;
    if (pos == sh->hashed) {  // in file order: hash as we go, and keep dirty pages bounded
        XXH3_128bits_update(sh->hash, data, n);
        sh->hashed += n;
        if (sh->hashed - sh->synced >= SYNC_WINDOW) {
            uint64_t a = sh->synced, len = sh->hashed - sh->synced;
#ifdef SYNC_FILE_RANGE_WRITE
            sync_file_range(sh->fd, (off_t)a, (off_t)len,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
#else
            fdatasync(sh->fd);  // sync_file_range is Linux's: flush the whole file instead
#endif
#ifdef POSIX_FADV_DONTNEED
            posix_fadvise(sh->fd, (off_t)a, (off_t)len, POSIX_FADV_DONTNEED);
#endif
            sh->synced = sh->hashed;
        }
    }
    pthread_mutex_unlock(&w->mu);
    return 0;
}

int fb_cw_shard_end(fb_cw *w, int s, fb_err *err) {
    shard *sh = &w->shards[s];
    if (sh->state >= 3) return 0;
    FB_ASSERT(sh->state == 1);
    char *final = fb_path_join(w->staging, sh->name);
    size_t fl = strlen(final);
    char *tmp = fb_malloc(fl + 5);
    memcpy(tmp, final, fl);
    memcpy(tmp + fl, ".tmp", 5);
    int rc = 0;
    if (sh->written != sh->data_bytes)
        rc = fb_fail(err, "%s: %llu of %llu payload bytes were written", tmp, (unsigned long long)sh->written,
                     (unsigned long long)sh->data_bytes);
    uint64_t total = fb_cw_shard_file_bytes(w, s);
    if (!rc && sh->hashed < total) {  // hash the part written out of order from the file
        size_t bs = 8u << 20;
        unsigned char *b = fb_malloc(bs);
        for (uint64_t p = sh->hashed; p < total && !rc;) {
            size_t k = (size_t)(total - p < bs ? total - p : bs);
            ssize_t r = pread(sh->fd, b, k, (off_t)p);
            if (r <= 0) rc = fb_fail(err, "%s: read-back error: %s", tmp, r < 0 ? strerror(errno) : "short file");
            else { XXH3_128bits_update(sh->hash, b, (size_t)r); p += (uint64_t)r; }
        }
        free(b);
        sh->hashed = total;
    }
    if (!rc && fdatasync(sh->fd) != 0) rc = fb_fail(err, "%s: fdatasync: %s", tmp, strerror(errno));
#ifdef POSIX_FADV_DONTNEED
    if (!rc) posix_fadvise(sh->fd, 0, 0, POSIX_FADV_DONTNEED);
#endif
    if (close(sh->fd) != 0 && !rc) rc = fb_fail(err, "%s: close: %s", tmp, strerror(errno));
    sh->fd = -1;
    if (!rc && rename(tmp, final) != 0) rc = fb_fail(err, "%s: rename: %s", tmp, strerror(errno));
    if (!rc && fb_fsync_parent(final, err)) rc = -1;  // the rename survives a power cut
    if (!rc) {
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits_digest(sh->hash));
        for (int i = 0; i < 16; i++) snprintf(sh->digest + 2 * i, 3, "%02x", c.digest[i]);
        rc = record_digest(w, sh->name, sh->digest, total, err);
    }
    XXH3_freeState(sh->hash);
    sh->hash = NULL;
    sh->state = rc ? 0 : 2;
    free(tmp);
    free(final);
    return rc;
}

int fb_cw_finish(fb_cw *w, fb_err *err) {
    FB_ASSERT(!fb_cw_split_job(w));
    if (w->o.merge)  // the jobs' manifests are folded into fourbit-manifest.json
        for (int j = 0; j < w->o.shard_count; j++) {
            char nm[96];
            snprintf(nm, sizeof nm, "fourbit-manifest.job-%d-of-%d.json", j, w->o.shard_count);
            char *mp = fb_path_join(w->staging, nm);
            unlink(mp);
            free(mp);
        }
    for (int s = 0; s < w->n_shards; s++)
        if (w->shards[s].state != 2 && w->shards[s].state != 3)
            return fb_fail(err, "%s: shard %s was not written", w->staging, w->shards[s].name);
    json_t *idx = json_object(), *meta = json_object(), *wm = json_object();
    json_object_set_new(meta, "total_size", json_integer((json_int_t)fb_cw_total_bytes(w)));
    json_object_set_new(idx, "metadata", meta);
    for (int i = 0; i < w->n; i++)
        json_object_set_new(wm, w->t[i].name, json_string(w->shards[w->t[i].shard].name));
    json_object_set_new(idx, "weight_map", wm);
    char *p = fb_path_join(w->staging, "model.safetensors.index.json");
    int rc = 0;
    if (json_dump_file(idx, p, JSON_INDENT(2) | JSON_SORT_KEYS) != 0)
        rc = fb_fail(err, "%s: cannot write: %s", p, strerror(errno));
    json_decref(idx);
    free(p);
    // Digests of every other file (config, tokenizer, recipe...) too.
    DIR *d = rc ? NULL : opendir(w->staging);
    struct dirent *e;
    while (d && (e = readdir(d)) && !rc) {
        if (e->d_name[0] == '.' || ends_with(e->d_name, ".safetensors") ||
            !strncmp(e->d_name, "fourbit-manifest", 16) || ends_with(e->d_name, ".tmp") ||
            !strcmp(e->d_name, "README.md"))  // the card: dated, and ref-runner --card appends to it
            continue;
        char *fp = fb_path_join(w->staging, e->d_name);
        char hex[33];
        struct stat st;
        if (stat(fp, &st) == 0 && S_ISREG(st.st_mode)) {
            if (fb_file_xxh128(fp, hex, err) != 0) rc = -1;
            else rc = record_digest(w, e->d_name, hex, (uint64_t)st.st_size, err);
        }
        free(fp);
    }
    if (d) closedir(d);
    return rc;
}

static void cw_free(fb_cw *w) {
    cw_unlock(w);
    for (int i = 0; i < w->n; i++) free(w->t[i].name);
    free(w->t);
    for (int s = 0; s < w->n_shards; s++) {
        shard *sh = &w->shards[s];
        if (sh->fd >= 0) close(sh->fd);
        if (sh->hash) XXH3_freeState(sh->hash);
        free(sh->name);
        free(sh->members);
        free(sh->header);
    }
    free(w->shards);
    for (size_t i = 0; i < w->o.n_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_vals[i]);
    }
    free(w->meta_keys);
    free(w->meta_vals);
    free((char *)w->o.tool);
    fb_strmap_free(&w->names);
    if (w->prev_manifest) json_decref(w->prev_manifest);
    json_decref(w->manifest);
    pthread_mutex_destroy(&w->mu);
    free(w->dst);
    free(w->staging);
    free(w);
}

int fb_cw_commit(fb_cw *w, fb_err *err) {
    char *mark = fb_path_join(w->staging, STAGING_MARK);
    unlink(mark);
    free(mark);
    int rc = 0;
    struct stat st;
    char *old = NULL;
    if (stat(w->dst, &st) == 0) {
        if (dir_is_empty(w->dst)) {
            if (rmdir(w->dst) != 0) rc = fb_fail(err, "%s: cannot replace: %s", w->dst, strerror(errno));
        } else if (w->o.force) {
            // Move the old DST aside under a name nobody else uses (a fixed DST.replaced
            // could be somebody's directory), then delete it once the new one is in place.
            size_t n = strlen(w->dst) + 48;
            old = fb_malloc(n);
            for (unsigned k = 0;; k++) {
                snprintf(old, n, "%s.replaced-%ld-%u", w->dst, (long)getpid(), k);
                struct stat ls;
                if (lstat(old, &ls) != 0) break;
            }
            if (rename(w->dst, old) != 0) {
                rc = fb_fail(err, "%s: cannot move aside: %s", w->dst, strerror(errno));
                free(old);
                old = NULL;
            }
        } else {
            rc = fb_fail(err, "%s: appeared and is not empty (use --force to replace it)", w->dst);
        }
    }
    if (!rc && rename(w->staging, w->dst) != 0) {
        rc = fb_fail(err, "%s: cannot rename %s into place: %s", w->dst, w->staging, strerror(errno));
        if (old && rename(old, w->dst) == 0) {  // put the old one back
            free(old);
            old = NULL;
        }
    }
    if (!rc && fb_fsync_parent(w->dst, err)) rc = -1;
    if (!rc && old) rm_rf(old);
    free(old);
    if (rc) {
        fb_cw_abort(w);
        return -1;
    }
    cw_free(w);
    return 0;
}

void fb_cw_abort(fb_cw *w) {
    if (!w) return;
    for (int s = 0; s < w->n_shards; s++) {
        shard *sh = &w->shards[s];
        if (sh->fd < 0) continue;
        close(sh->fd);
        sh->fd = -1;
        if (w->o.shard_count > 1) {  // the staging directory is shared: remove only our .tmp
            size_t l = strlen(sh->name) + 5;
            char *t = fb_malloc(l);
            snprintf(t, l, "%s.tmp", sh->name);
            char *p = fb_path_join(w->staging, t);
            unlink(p);
            free(p);
            free(t);
        }
    }
    if (w->o.shard_count <= 1) rm_rf(w->staging);
    cw_free(w);
}

void fb_cw_detach(fb_cw *w) {
    if (w) cw_free(w);
}

int fb_copy_file(const char *src, const char *dst, fb_err *err) {
    int in = open(src, O_RDONLY | O_CLOEXEC);
    if (in < 0) return fb_fail(err, "%s: cannot open: %s", src, strerror(errno));
    int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        close(in);
        return fb_fail(err, "%s: cannot create: %s", dst, strerror(errno));
    }
    char buf[1 << 16];
    int rc = 0;
    for (;;) {
        ssize_t r = read(in, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) { rc = fb_fail(err, "%s: read error: %s", src, strerror(errno)); break; }
        if (r == 0) break;
        for (ssize_t k = 0; k < r;) {
            ssize_t q = write(out, buf + k, (size_t)(r - k));
            if (q < 0 && errno == EINTR) continue;
            if (q < 0) { rc = fb_fail(err, "%s: write error: %s", dst, strerror(errno)); break; }
            k += q;
        }
        if (rc) break;
    }
    close(in);
    if (close(out) != 0 && !rc) rc = fb_fail(err, "%s: close: %s", dst, strerror(errno));
    return rc;
}
