// chat.h: chat-template rendering in C for calibration data: a checkpoint's own Jinja template
// (run by the interpreter of io/jinja.h, as transformers' apply_chat_template renders it) or one
// of two built-in renderers.
//
// Templates (fb_chat_template, chosen with `--template NAME` / `--chat-template FILE`):
//   jinja       a Jinja template (fb_chat_opts.jinja): the checkpoint's own (`--template auto`,
//               the default: DIR/chat_template.jinja, else the "chat_template" of
//               DIR/tokenizer_config.json, as transformers 5 picks it; a list of named templates
//               uses "default") or a file. The variables are those apply_chat_template passes:
//               the tokenizer's special tokens (bos_token, eos_token, unk_token, sep_token,
//               pad_token, cls_token, mask_token from tokenizer_config.json), messages, tools
//               (None when absent), documents (None), add_generation_prompt, then the record's
//               keyword arguments (a dataset record's "chat_template_kwargs" object, e.g.
//               {"enable_thinking": false}), which override the others.
//   minimax-m2  MiniMax-M2's own template (the hub chat_template.jinja; reference copy and
//               provenance: tests/golden/tokenizer/minimax-m2.jinja, spec
//               loaders-vllm-transformers.md section 6), byte for byte as transformers'
//               apply_chat_template renders it:
//                 ]~!b[]~b]system\n{system content, or the default identity}
//                     [\nCurrent date: D][\nCurrent location: L]
//                     [\n\n# Tools\n ... <tools>\n<tool>{function JSON}</tool>\n...</tools> ...]
//                 [e~[\n
//                 ]~b]user\n{content}[e~[\n
//                 ]~b]ai\n[<think>\n{reasoning}\n</think>\n\n]{content}
//                     [\n<minimax:tool_call>\n<invoke name="f">\n<parameter name="k">v</parameter>\n
//                      </invoke>\n</minimax:tool_call>][e~[\n
//                 ]~b]tool\n<response>{result}</response>[\n<response>...][e~[\n
//                 generation prompt: ]~b]ai\n<think>\n
//               Only the first message may be the system message (a later "system" message is
//               dropped, as the template does). Reasoning comes from `reasoning_content` or from
//               a `<think>...</think>` prefix of the content, and is rendered only for assistant
//               turns after the last user turn. Consecutive tool messages share one ]~b]tool
//               header. A tool message without an earlier assistant tool call is an error (the
//               template raises). Message keys whose value is null count as absent (as in
//               transformers); content given as a list of parts keeps the "text" parts.
//               Tool-call arguments given as a JSON string are parsed (the reference template
//               rejects them; documented extension). Values are printed as Python would (json
//               via json.dumps(ensure_ascii=False), numbers via repr, None/True/False).
//   chatml      generic ChatML for other models: <|im_start|>{role}\n{content}<|im_end|>\n per
//               message, generation prompt <|im_start|>assistant\n; no default system prompt.
//
// All functions return 0, or -1 with err naming the message index and field at fault.
#ifndef FB_IO_CHAT_H
#define FB_IO_CHAT_H

#include <jansson.h>

#include "common/fb.h"

#include "io/jinja.h"

typedef enum {
    FB_CHAT_MINIMAX_M2 = 0,
    FB_CHAT_CHATML = 1,
    FB_CHAT_JINJA = 2,
} fb_chat_template;

// The identity MiniMax-M2's template uses when there is no (or an empty) system message.
#define FB_CHAT_MINIMAX_DEFAULT_SYSTEM \
    "You are a helpful assistant. Your name is MiniMax-M2 and is built by MiniMax."

typedef struct fb_chat_opts {
    fb_chat_template tmpl;
    int add_generation_prompt;   // append the assistant header (MiniMax: "]~b]ai\n<think>\n")
    const char *default_system;  // NULL: FB_CHAT_MINIMAX_DEFAULT_SYSTEM (MiniMax only)
    const fb_jinja *jinja;       // FB_CHAT_JINJA: the template (not owned)
    json_t *special;             // FB_CHAT_JINJA: {"bos_token": "...", ...} or NULL (not owned)
} fb_chat_opts;

// Parses a template name ("minimax-m2", alias "minimax"; "chatml"). -1 with err listing the
// names on an unknown one.
int fb_chat_template_parse(const char *name, fb_chat_template *out, fb_err *err);

// The canonical name of a template ("minimax-m2", "chatml", "jinja").
const char *fb_chat_template_name(fb_chat_template t);

// Renders a conversation: `messages` is a JSON array of {role, content, ...} objects (roles
// system / user / assistant / tool; MiniMax also reads reasoning_content, tool_calls,
// current_date, current_location), `tools` an optional JSON array of {"type": "function",
// "function": {...}} (NULL or null: none). On success *out is a malloc'd NUL-terminated UTF-8
// string (caller frees) of *out_len bytes.
int fb_chat_render(const fb_chat_opts *o, json_t *messages, json_t *tools, char **out, size_t *out_len,
                   fb_err *err);

// The same with the record's extra keyword arguments (a JSON object or NULL; the Jinja template
// sees them as variables, the built-ins ignore them). Jinja errors read "TEMPLATE:LINE: ...".
int fb_chat_render_kw(const fb_chat_opts *o, json_t *messages, json_t *tools, json_t *kwargs, char **out,
                      size_t *out_len, fb_err *err);

// A checkpoint's own chat template and the special tokens transformers passes with it.
typedef struct fb_chat_own {
    fb_jinja *tmpl;   // NULL: the checkpoint has no template
    json_t *special;  // special tokens of DIR/tokenizer_config.json (an empty object without one)
    char *source;     // where tmpl came from: ".../chat_template.jinja" or ".../tokenizer_config.json"
} fb_chat_own;

// Reads DIR's template (see "jinja" above) and special tokens into *out (free with
// fb_chat_own_free). A checkpoint without a template is not an error (out->tmpl NULL); an
// unreadable file or a template the interpreter rejects is, naming the file (and line).
int fb_chat_own_load(const char *dir, fb_chat_own *out, fb_err *err);
void fb_chat_own_free(fb_chat_own *o);

// The template choice of the tools (calibrate, ref-runner): `name` is "auto" (the checkpoint's
// own template, else minimax-m2), "minimax-m2"/"minimax" or "chatml"; `file` a .jinja file
// (NULL: none; only with "auto"). Fills o (tmpl, jinja, special) and *own (which owns the parsed
// template; free it with fb_chat_own_free after the last render) and *what (a static or
// own-owned description for provenance). Returns 0, -2 for a usage error (unknown name, both
// given), -1 when the checkpoint's or the file's template cannot be read or parsed.
int fb_chat_select(const char *name, const char *file, const char *model_dir, fb_chat_opts *o, fb_chat_own *own,
                   const char **what, fb_err *err);

#endif
