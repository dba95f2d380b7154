// chat.h: chat-template rendering in C for calibration data (no Jinja).
//
// Templates (fb_chat_template, chosen with `--template NAME`):
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

typedef enum {
    FB_CHAT_MINIMAX_M2 = 0,
    FB_CHAT_CHATML = 1,
} fb_chat_template;

// The identity MiniMax-M2's template uses when there is no (or an empty) system message.
#define FB_CHAT_MINIMAX_DEFAULT_SYSTEM \
    "You are a helpful assistant. Your name is MiniMax-M2 and is built by MiniMax."

typedef struct fb_chat_opts {
    fb_chat_template tmpl;
    int add_generation_prompt;   // append the assistant header (MiniMax: "]~b]ai\n<think>\n")
    const char *default_system;  // NULL: FB_CHAT_MINIMAX_DEFAULT_SYSTEM (MiniMax only)
} fb_chat_opts;

// Parses a template name ("minimax-m2", alias "minimax"; "chatml"). -1 with err listing the
// names on an unknown one.
int fb_chat_template_parse(const char *name, fb_chat_template *out, fb_err *err);

// The canonical name of a template ("minimax-m2", "chatml").
const char *fb_chat_template_name(fb_chat_template t);

// Renders a conversation: `messages` is a JSON array of {role, content, ...} objects (roles
// system / user / assistant / tool; MiniMax also reads reasoning_content, tool_calls,
// current_date, current_location), `tools` an optional JSON array of {"type": "function",
// "function": {...}} (NULL or null: none). On success *out is a malloc'd NUL-terminated UTF-8
// string (caller frees) of *out_len bytes.
int fb_chat_render(const fb_chat_opts *o, json_t *messages, json_t *tools, char **out, size_t *out_len,
                   fb_err *err);

// Python's json.dumps(v, ensure_ascii=False) of a JSON value (separators ", " and ": ", key
// order kept, floats as repr): *out is a new malloc'd NUL-terminated string (caller frees) of
// *out_len bytes. Used for tool schemas and tool-call arguments; exposed for tests.
int fb_chat_pyjson(json_t *v, char **out, size_t *out_len, fb_err *err);

#endif
