// paths.c: refusing outputs that overlap inputs (see paths.h).
#include "common/paths.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// The canonical absolute form of p (malloc'ed): realpath of p, or of its longest existing
// ancestor with the rest appended when p does not exist yet. NULL when nothing resolves.
static char *resolve(const char *p) {
    char *r = realpath(p, NULL);
    if (r) return r;
    if (errno != ENOENT && errno != ENOTDIR) return NULL;
    size_t n = strlen(p);
    while (n > 1 && p[n - 1] == '/') n--;  // "dir/" -> "dir"
    size_t cut = n;
    while (cut > 0 && p[cut - 1] != '/') cut--;
    const char *base = p + cut;
    size_t bl = n - cut;
    if (bl == 0 || (bl == 1 && base[0] == '.') || (bl == 2 && base[0] == '.' && base[1] == '.'))
        return NULL;  // nothing left to peel off
    char *parent;
    if (cut == 0) parent = fb_strdup(".");
    else {
        size_t pl = cut > 1 ? cut - 1 : 1;  // keep "/" for a top-level name
        parent = fb_malloc(pl + 1);
        memcpy(parent, p, pl);
        parent[pl] = 0;
    }
    char *rp = resolve(parent);
    free(parent);
    if (!rp) return NULL;
    size_t rl = strlen(rp);
    char *out = fb_malloc(rl + bl + 2);
    snprintf(out, rl + bl + 2, "%s%s%.*s", rp, strcmp(rp, "/") ? "/" : "", (int)bl, base);
    free(rp);
    return out;
}

// 1 when a equals b or lies below it.
static int within(const char *a, const char *b) {
    if (strcmp(b, "/") == 0) return 1;
    size_t n = strlen(b);
    return strncmp(a, b, n) == 0 && (a[n] == 0 || a[n] == '/');
}

int fb_path_check_output(const char *out, const char *what, const char *const *inputs, size_t n,
                         fb_err *err) {
    if (!out || strcmp(out, "-") == 0) return 0;
    char *ro = resolve(out);
    if (!ro) return fb_fail(err, "%s %s: cannot resolve the path: %s", what, out, strerror(errno));
    struct stat so;
    int have_out = stat(out, &so) == 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const char *in = inputs[i];
        if (!in || strcmp(in, "-") == 0) continue;
        char *ri = resolve(in);
        if (!ri) continue;  // an input that does not exist is reported by whoever opens it
        struct stat si;
        if (strcmp(ro, ri) == 0)
            rc = fb_fail(err, "%s %s is the input %s (resolved: %s): an output must not be "
                              "inside (or equal to) an input", what, out, in, ri);
        else if (have_out && stat(in, &si) == 0 && si.st_dev == so.st_dev && si.st_ino == so.st_ino)
            rc = fb_fail(err, "%s %s is the same file as the input %s (a hard link): refusing to "
                              "overwrite an input", what, out, in);
        else if (within(ro, ri))
            rc = fb_fail(err, "%s %s lies inside the input %s (resolved: %s inside %s): refusing "
                              "to write into an input", what, out, in, ro, ri);
        else if (within(ri, ro))
            rc = fb_fail(err, "the input %s lies inside %s %s (resolved: %s inside %s): writing "
                              "%s would destroy it", in, what, out, ri, ro, what);
        free(ri);
    }
    free(ro);
    return rc;
}

int fb_fsync_parent(const char *path, fb_err *err) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    while (n > 0 && path[n - 1] != '/') n--;
    char *dir = n == 0 ? fb_strdup(".") : strndup(path, n > 1 ? n - 1 : 1);
    FB_ASSERT(dir);
    int rc = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) rc = fb_fail(err, "%s: cannot open the directory to sync it: %s", dir, strerror(errno));
    else {
        if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS)
            rc = fb_fail(err, "%s: fsync of the directory failed: %s", dir, strerror(errno));
        close(fd);
    }
    free(dir);
    return rc;
}
