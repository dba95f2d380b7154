// pyjson.h: Python's json.dumps(v, ensure_ascii=False) of a JSON value, as transformers' chat
// templates print tool schemas and tool-call arguments (tojson) and Jinja prints floats:
// separators ", " and ": ", key order kept, floats as repr (shortest round-trip digits, fixed
// notation for 1e-4 <= |x| < 1e16), NaN/Infinity as Python writes them. Shared by the built-in
// chat renderers (chat.c) and the Jinja interpreter (jinja.c).
#ifndef FB_IO_PYJSON_H
#define FB_IO_PYJSON_H
#include <jansson.h>
#include <stddef.h>

#include "common/fb.h"

// *out: a new malloc'd NUL-terminated string (caller frees) of *out_len bytes.
int fb_pyjson(json_t *v, char **out, size_t *out_len, fb_err *err);

#endif
