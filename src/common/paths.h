// paths.h: where a tool may write. Every output path (a DST directory, a statistics file, a
// token dump) is checked against every input (model directory, dataset files, tokenizer,
// recipe, statistics) before anything is opened for writing: a typo such as
// `calibrate -o MODEL/model-00001-of-00002.safetensors` must not replace an input.
#ifndef FB_COMMON_PATHS_H
#define FB_COMMON_PATHS_H

#include "common/fb.h"

// Returns 0 when `out` and each of the n `inputs` are disjoint, -1 with err otherwise. Paths
// are compared after resolving symlinks, "." and ".." (realpath; an output that does not
// exist yet is resolved through its longest existing ancestor). Refused: out equal to an
// input, out inside an input directory, or an input inside out (a writer replaces its DST
// directory, so an input inside it would be deleted); and an existing out that is the same
// file (device and inode: a hard link) as an input. NULL entries in `inputs` and the paths
// "-" (stdin/stdout) are skipped. `what` names the output in the message ("-o", "DST").
int fb_path_check_output(const char *out, const char *what, const char *const *inputs, size_t n,
                         fb_err *err);

// fsyncs the directory holding `path`, so that a rename or creation of `path` survives a
// power cut (the file's own fsync does not cover its directory entry). Returns 0, or -1 with
// err naming the directory; file systems that cannot fsync a directory (EINVAL) count as done.
int fb_fsync_parent(const char *path, fb_err *err);

#endif
