// jinja.h: a Jinja2 subset interpreter for Hugging Face chat templates, rendering as
// transformers' apply_chat_template does (jinja2 3.1 ImmutableSandboxedEnvironment with
// trim_blocks=True, lstrip_blocks=True, the loopcontrols extension, transformers' own `tojson`,
// `raise_exception` and the `{% generation %}` tag).
//
// Source handling (jinja2's lexer): \r\n and \r become \n; one trailing newline is dropped;
// `{%-`/`{{-`/`{#-` strip all whitespace before the tag, `-%}`/`-}}`/`-#}` all whitespace after
// it; trim_blocks drops the newline right after a `%}` or `#}`; lstrip_blocks drops spaces and
// tabs from the start of a line up to a `{%` or `{#` (`{%+` / `+%}` turn those off).
//
// Supported subset:
//   statements  if / elif / else, for (one or two targets, `if` filter, else, loop.index,
//               index0, revindex, revindex0, first, last, length, previtem, nextitem),
//               break / continue, set NAME = expr, set NS.ATTR = expr, set NAME ... endset,
//               macro (positional and keyword arguments, defaults), generation (rendered as
//               its body), comments. Scopes as in jinja2: a for body's assignments stay in
//               that iteration, a macro sees its arguments and the template's top level.
//   expressions literals (strings with Python escapes, ints, floats, true/false/none in both
//               cases, lists, tuples, dicts), names, a.b, a[i], slices a[i:j:k], calls,
//               `x if c else y`, or / and / not, == != < <= > >=, in / not in, + - * / // % **,
//               ~, unary - and +, filters (`|`), tests (`is [not]`).
//   filters     abs capitalize count d default first float int items join last length list
//               lower map(attribute=) reject rejectattr replace reverse safe select selectattr
//               string title tojson(ensure_ascii, indent=None) trim unique upper
//   tests       boolean callable defined divisibleby eq equalto even false float ge gt in
//               integer iterable le lt mapping ne none number odd sameas sequence string true
//               undefined
//   methods     str: strip lstrip rstrip split rsplit startswith endswith replace upper lower
//               title capitalize find join count; dict: items keys values get
//   globals     raise_exception(msg), namespace(...), range(...), dict(...)
// Values follow Python: str() of None/True/False/lists/dicts/tuples is their Python repr,
// integers are 64-bit (overflow is an error), floats print as repr() (inf and nan are errors),
// strings index and slice by code point. Undefined values print as "", are false, iterate as
// empty, and fail on attribute access, as jinja2's default Undefined does. A method named
// without a call (`d.items`), case mapping of non-ASCII text and `sameas` on values whose
// identity is a CPython detail are errors.
// Anything else (unknown statement, filter, test, method or global such as strftime_now,
// `{% raw %}`, `{% include %}`, call blocks, recursive loops) is an error naming the template
// line, never a different rendering.
//
// Bounds (documented errors, so a hostile template cannot run away): rendered output at most
// FB_JINJA_MAX_OUTPUT bytes, at most FB_JINJA_MAX_STEPS evaluation steps, macro calls nested
// at most FB_JINJA_MAX_DEPTH deep, expressions and blocks nested at most FB_JINJA_MAX_NEST deep
// in the source and evaluation at most FB_JINJA_MAX_RDEPTH deep (so the C stack stays small).
//
// Errors: parse and render failures return -1 with err "NAME:LINE: what" (NAME as given to
// fb_jinja_parse); raise_exception(msg) gives "NAME:LINE: raise_exception: msg".
#ifndef FB_IO_JINJA_H
#define FB_IO_JINJA_H

#include <jansson.h>

#include "common/fb.h"

#define FB_JINJA_MAX_OUTPUT ((size_t)64 << 20)
#define FB_JINJA_MAX_STEPS 50000000ull
#define FB_JINJA_MAX_DEPTH 64
#define FB_JINJA_MAX_NEST 256
#define FB_JINJA_MAX_RDEPTH 1024

typedef struct fb_jinja fb_jinja;

// Parses template source (UTF-8, len bytes). Returns 0 and *out (free with fb_jinja_free), or
// -1 with err "NAME:LINE: ..." for a syntax error or an unsupported construct.
int fb_jinja_parse(const char *src, size_t len, const char *name, fb_jinja **out, fb_err *err);

// Reads and parses a template file (NAME in messages is the path).
int fb_jinja_load(const char *path, fb_jinja **out, fb_err *err);

// Frees a template (NULL is fine).
void fb_jinja_free(fb_jinja *t);

// Lowers the output and step limits of this template (0 keeps one; never above the defaults):
// for fuzzing and for callers with tighter budgets.
void fb_jinja_set_limits(fb_jinja *t, size_t max_output, unsigned long long max_steps);

// The name given at parse time.
const char *fb_jinja_name(const fb_jinja *t);

// Renders with the variables of the JSON object `vars` (e.g. messages, tools,
// add_generation_prompt, bos_token, eos_token and extra keyword arguments; a JSON null is
// Python's None). The template is not modified, so one fb_jinja may render on several threads.
// On success *out is a malloc'd NUL-terminated string (caller frees) of *out_len bytes.
int fb_jinja_render(const fb_jinja *t, json_t *vars, char **out, size_t *out_len, fb_err *err);

#endif
