// fuzz_chat_template.c: libFuzzer harness for the chat-template interpreter (src/io/jinja.h).
// The input is template source; it is parsed and, when it parses, rendered over a fixed
// conversation (system / user / assistant with reasoning and tool calls / tool, tools,
// add_generation_prompt, special tokens) the way calibrate renders a record. Any outcome is
// fine except a crash, a sanitizer report, a leak or a runaway: the interpreter's own limits
// bound the work (steps, output size, macro depth, nesting), lowered here so that one input
// takes milliseconds. Seeds: tests/fuzz/corpus/chat_template/ (the real templates and snippets).
#include <stdint.h>
#include <string.h>

#include "io/jinja.h"

static const char VARS[] =
    "{\"bos_token\": \"]~!b[\", \"eos_token\": \"[e~[\", \"add_generation_prompt\": true, \"documents\": null,"
    " \"enable_thinking\": false,"
    " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"parameters\": "
    "{\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}}}}],"
    " \"messages\": [{\"role\": \"system\", \"content\": \"S\"}, {\"role\": \"user\", \"content\": \"q \\u00e9\"},"
    " {\"role\": \"assistant\", \"content\": \"<think>r</think>a\", \"reasoning_content\": \"r\", \"tool_calls\": "
    "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\", \"n\": [1, 2.5, null]}}}]},"
    " {\"role\": \"tool\", \"content\": \"{\\\"t\\\": 3}\"}, {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"p\"}]}]}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static json_t *vars;
    if (!vars) vars = json_loads(VARS, 0, NULL);
    if (size > 65536) return 0;  // templates are small; longer inputs only slow the search
    fb_jinja *t = NULL;
    fb_err err;
    if (fb_jinja_parse((const char *)data, size, "fuzz.jinja", &t, &err) == 0) {
        fb_jinja_set_limits(t, (size_t)1 << 20, 200000);
        char *out = NULL;
        size_t n = 0;
        if (fb_jinja_render(t, vars, &out, &n, &err) == 0 && strlen(out) > n) __builtin_trap();  // length is exact
        free(out);
        fb_jinja_free(t);
    }
    return 0;
}
