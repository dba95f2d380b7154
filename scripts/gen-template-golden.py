#!/usr/bin/env python3
"""Golden renderings of real chat templates by transformers' own apply_chat_template.

Writes tests/golden/templates/templates.golden.json from the templates committed beside it
(tests/golden/templates/*.jinja, provenance in tests/golden/templates/PROVENANCE.md), and feature
snippets that exercise each construct of the C interpreter (src/io/jinja.h). Every expected
string and every expected error comes from transformers (its jinja2 environment), never from
fourbit. Token ids are apply_chat_template(tokenize=True) with the embedded model's tokenizer
(models/tiny-minimax-m2), loaded with AutoTokenizer so that its special tokens
(bos_token, eos_token, pad_token) reach the template as transformers passes them.

Reference packages (pinned, PyPI, in a venv): transformers==5.17.0, jinja2, tokenizers.
    python3 -m venv /work/venvs/h15 && /work/venvs/h15/bin/pip install transformers==5.17.0 jinja2 tokenizers
    /work/venvs/h15/bin/python scripts/gen-template-golden.py
Needs no network and no torch.
"""
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TDIR = os.path.join(ROOT, "tests", "golden", "templates")
MODEL = os.path.join(ROOT, "models", "tiny-minimax-m2")

import jinja2  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

# The conversation set of the existing chat goldens (gen-tokenizer-golden.py), reused as is.
_spec = importlib.util.spec_from_file_location("gtg", os.path.join(ROOT, "scripts", "gen-tokenizer-golden.py"))
gtg = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gtg)

# Real templates (file name -> what it is); PROVENANCE.md says where each came from.
TEMPLATES = ["minimax-m2.jinja", "tiny-minimax-m2.jinja", "qwen3.jinja"]

WEATHER = gtg.WEATHER_TOOL

# Conversations added for this set: Qwen3's own inputs (tool_response turns, string arguments,
# enable_thinking), empty content, kwargs from the record.
EXTRA = [
    ("qwen_multi_step_tools", {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "content": "{\"temp\": -3}"},
        {"role": "user", "content": "<tool_response>\nok\n</tool_response>"},
        {"role": "assistant", "content": "<think>\nfine\n</think>\n\nCold."}],
        "tools": [WEATHER]}),
    ("enable_thinking_false_genprompt", {"messages": [{"role": "user", "content": "hi"}],
                                         "add_generation_prompt": True,
                                         "kwargs": {"enable_thinking": False}}),
    ("enable_thinking_true_genprompt", {"messages": [{"role": "user", "content": "hi"}],
                                        "add_generation_prompt": True,
                                        "kwargs": {"enable_thinking": True}}),
    ("empty_contents", {"messages": [
        {"role": "system", "content": ""}, {"role": "user", "content": ""},
        {"role": "assistant", "content": ""}, {"role": "user", "content": "  "}]}),
    ("reasoning_after_last_user", {"messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a1", "reasoning_content": "r1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "\n\na2", "reasoning_content": "\nr2\n"}]}),
]

# Feature snippets: each construct of jinja.h, rendered by transformers (chat_template=...).
SNIPPETS = [
    ("ws_control", "A  {%- if true -%}  B  {%- endif -%}  C\n{{- ' D ' -}}\nE {# c #} F {#- c -#} G"),
    ("trim_lstrip_blocks", "x\n    {% if true %}\n    y\n    {% endif %}\nz\n  {# note #}\n  w\n{% for i in [1,2] %}\n{{ i }}\n{% endfor %}\n"),
    ("plus_modifiers", "a\n    {%+ if true +%}\nb\n{% endif %}\nc"),
    ("trailing_newline_kept_once", "line\n\n"),
    ("crlf_source", "a\r\n{% if true %}\r\nb\r\n{% endif %}\r\nc"),
    ("loop_vars", "{% for m in messages %}{{ loop.index }}/{{ loop.index0 }}/{{ loop.revindex }}/{{ loop.revindex0 }}/{{ loop.first }}/{{ loop.last }}/{{ loop.length }}/{{ loop.previtem is defined }};{% endfor %}"),
    ("loop_filter_else_break", "{% for m in messages if m.role == 'user' %}{{ m.content }}{% if loop.last %}!{% endif %}{% else %}none{% endfor %}|{% for i in range(10) %}{% if i == 2 %}{% continue %}{% endif %}{% if i > 4 %}{% break %}{% endif %}{{ i }}{% endfor %}|{% for x in [] %}x{% else %}empty{% endfor %}"),
    ("loop_scope", "{% set x = 1 %}{% for i in [1,2,3] %}{% set x = x + i %}{{ x }}{% endfor %}={{ x }}{% set ns = namespace(t=0) %}{% for i in [1,2,3] %}{% set ns.t = ns.t + i %}{% endfor %}={{ ns.t }}"),
    ("if_elif_else", "{% for n in [0, 1, 2, 3] %}{% if n == 0 %}zero{% elif n == 1 %}one{% elif n == 2 %}two{% else %}many{% endif %},{% endfor %}"),
    ("macros", "{% macro m(a, b='B', c=none) -%}[{{ a }}|{{ b }}|{{ c }}]{%- endmacro %}{{ m(1) }}{{ m(1, 2) }}{{ m('x', c=3) }}{{ m(b='y', a='z') }}{% set r = m(5) %}{{ r | length }}"),
    ("macro_sees_top_level", "{% set g = 'top' %}{% macro show() %}{{ g }}{{ messages | length }}{% endmacro %}{% for i in [1] %}{% set g = 'loop' %}{{ show() }}{% endfor %}"),
    ("strings_methods", "{% set s = '  Hello, World  ' %}[{{ s.strip() }}][{{ s.lstrip() }}][{{ s.rstrip() }}][{{ s.strip(' H') }}][{{ s.split(',') }}][{{ s.split() }}][{{ 'a,b,c'.split(',', 1) }}][{{ 'a,b,c'.rsplit(',', 1) }}][{{ s.startswith('  He') }}][{{ s.endswith(('x', '  ')) }}][{{ s.replace('l', 'L') }}][{{ s.replace('l', 'L', 2) }}][{{ s.upper() }}][{{ s.lower() }}][{{ 'ab cd'.title() }}][{{ 'hello'.capitalize() }}][{{ s.find('W') }}][{{ s.count('l') }}][{{ '-'.join(['a', 'b']) }}]"),
    ("slices", "{% set s = 'héllo wörld' %}{{ s[1:4] }}|{{ s[-3:] }}|{{ s[::-1] }}|{{ s[::2] }}|{{ s[0] }}{{ s[-1] }}|{{ messages[::-1] | map(attribute='role') | join(',') }}|{{ [1,2,3,4,5][1:-1] }}|{{ [1,2,3][5:] }}|{{ [1,2,3][::-2] }}"),
    ("filters", "{{ '  x  ' | trim }}|{{ 'xxaxx' | trim('x') }}|{{ [1, 'a', none, true, 2.5] | tojson }}|{{ {'k': 'é', 'n': [1]} | tojson }}|{{ 'é' | tojson(ensure_ascii=True) }}|{{ messages | length }}|{{ 'héllo' | length }}|{{ 42 | string }}|{{ 'AbC' | lower }}{{ 'AbC' | upper }}|{{ [3,1,2] | first }}{{ [3,1,2] | last }}|{{ [1,2,3] | join('-') }}|{{ undefined_var | default('dflt') }}|{{ '' | default('e', true) }}|{{ 'abc' | list }}|{{ {'a': 1, 'b': 2} | items | list }}|{{ 'aaa' | replace('a', 'b') }}|{{ '12' | int + 1 }}|{{ '1.5' | float }}|{{ -3 | abs }}|{{ [1,2] | reverse | list }}|{{ 'abc' | reverse }}|{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | join('+') }}|{{ messages | rejectattr('role', 'eq', 'user') | list | length }}|{{ [0, 1, '', 'a'] | select | list }}|{{ ['A', 'a', 'b'] | unique | list }}|{{ 'x' | safe }}|{{ [1,2,3] | count }}"),
    ("tests", "{% set d = {'a': 1} %}{{ d is mapping }}{{ 'x' is string }}{{ 1 is number }}{{ 1 is integer }}{{ 1.0 is float }}{{ none is none }}{{ zz is defined }}{{ zz is undefined }}{{ d.b is defined }}{{ [1] is iterable }}{{ 'x' is iterable }}{{ d is iterable }}{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 9 is divisibleby(4) }}{{ 1 is eq 1 }}{{ true is true }}{{ false is false }}{{ true is boolean }}{{ 2 is gt 1 }}{{ 'a' is in 'abc' }}{{ d is not none }}{{ 1 is sameas 1 }}{{ [1] is sequence }}{{ zz is iterable }}"),
    ("operators", "{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ 'a' ~ 1 ~ none ~ true }} {{ 'ab' * 3 }} {{ [1] + [2] }} {{ 1 < 2 and 2 <= 2 }} {{ 'a' < 'b' }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'b' in 'abc' }} {{ 'z' not in ['a'] }} {{ 'k' in {'k': 1} }} {{ not 0 }} {{ 0 or 'x' }} {{ 1 and 'y' }} {{ none or none }} {{ 'yes' if 1 > 0 else 'no' }} {{ 'q' if false }}. {{ -(1 - 3) }} {{ 1.5 + 1 }} {{ 10 / 4 * 2 }} {{ 0.1 + 0.2 }} {{ 1e20 * 10 }} {{ 2 ** -1 }}"),
    ("literals_repr", "{{ 'it''s' }} {{ \"d\\\"q\" }} {{ 'tab\\tnl\\nuni\\u00e9\\x41' }} {{ [1, 'two', [3.0, none], {'k': 'v', 'q': \"it's\"}, true, false] }} {{ {'a': {'b': []}} }} {{ (1, 2) }} {{ none }} {{ true }} {{ 1_000 }} {{ 1.5e3 }} {{ 0.0001 }} {{ 1e16 }} {{ 123456789.123 }}"),
    ("dict_methods", "{% set d = {'x': 1, 'y': [2]} %}{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{{ d.keys() | list }}{{ d.values() | list }}{{ d.get('x') }}{{ d.get('z') }}{{ d.get('z', 9) }}{{ d['y'][0] }}{{ d.y }}"),
    ("message_fields", "{% for m in messages %}{{ m.role }}:{{ m['content'] }}:{{ m.reasoning_content is defined }}:{{ m.tool_calls | default([]) | length }};{% endfor %}{{ tools | tojson }}{{ add_generation_prompt }}{{ bos_token }}{{ eos_token }}{{ pad_token }}{{ unk_token is defined }}"),
    ("namespace_and_set_block", "{% set ns = namespace(a=1, b='x') %}{% set ns.a = ns.a + 1 %}{% set ns.c = [1] %}{{ ns.a }}{{ ns.b }}{{ ns.c }}{% set blk %}inner {{ ns.a }}{% endset %}[{{ blk }}]{% set t = 1, 2 %}{{ t }}"),
    ("generation_tag", "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}"),
    ("raise_exception", "{% if messages | length > 1 %}{{ raise_exception('too many: ' ~ messages | length) }}{% endif %}ok"),
    ("undefined_attribute_error", "{{ nothing.here }}"),
    ("ws_edges", "   {% if true %}x{% endif %}\na {{ 1 }}   {% if true %}b{% endif %}\n{{ 2 -}}\n   {% if true %}c{% endif %}\n\t{%- if true -%}\td\t{%- endif -%}\t\n  {# c #}\ne\na\u3000\u00a0{%- if true %}f{% endif %}\n{{ 'g}}h' }}{{ \"%}\" }}\n{% if true %}  \n{% endif %}i"),
    ("nested_loops", "{% set ns = namespace(n=0) %}{% for a in messages %}{% set outer = loop %}{% for b in [1, 2] %}{% set ns.n = ns.n + 1 %}{{ outer.index }}.{{ loop.index }}{% if not loop.last %},{% endif %}{% endfor %};{% endfor %}{{ ns.n }}"),
    ("kwargs_passthrough", "{{ enable_thinking }}|{{ custom | tojson }}|{{ reasoning_effort | default('none') }}"),
]

SNIPPET_CONVS = {
    "default": {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
                             {"role": "assistant", "content": "a1", "reasoning_content": "r"},
                             {"role": "user", "content": "u2"}],
                "tools": [WEATHER], "add_generation_prompt": True,
                "kwargs": {"enable_thinking": False, "custom": {"k": [1, "é"]}}},
    "single": {"messages": [{"role": "user", "content": "only"}]},
}


def render(tok, template, conv):
    kw = dict(conv.get("kwargs", {}))
    if "tools" in conv:
        kw["tools"] = conv["tools"]
    gp = conv.get("add_generation_prompt", False)
    try:
        text = tok.apply_chat_template(conv["messages"], chat_template=template, tokenize=False,
                                       add_generation_prompt=gp, **kw)
    except Exception as e:  # the reference raised: the C side must fail too
        return None, None, f"{type(e).__name__}: {e}"
    ids = tok.apply_chat_template(conv["messages"], chat_template=template, tokenize=True, return_dict=False,
                                  add_generation_prompt=gp, **kw)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return text, list(ids), None


def main():
    tok = AutoTokenizer.from_pretrained(MODEL)
    convs = list(gtg.CONVERSATIONS) + EXTRA
    out = {
        "generator": "scripts/gen-template-golden.py",
        "transformers": transformers.__version__, "jinja2": jinja2.__version__,
        "tokenizer": "models/tiny-minimax-m2 (AutoTokenizer)",
        "special_tokens": {k: v for k, v in tok.special_tokens_map.items() if isinstance(v, str)},
        "model_template_is_file": "models/tiny-minimax-m2/chat_template.jinja",
        "cases": [],
    }
    for tname in TEMPLATES:
        src = open(os.path.join(TDIR, tname), encoding="utf-8").read()
        for cname, conv in convs:
            text, ids, error = render(tok, src, conv)
            case = {"template": tname, "name": cname, "conversation": conv}
            if error is None:
                case["rendered"] = text
                case["ids"] = ids
            else:
                case["error"] = error
            out["cases"].append(case)
    for sname, src in SNIPPETS:
        for cname, conv in SNIPPET_CONVS.items():
            text, ids, error = render(tok, src, conv)
            case = {"template": None, "source": src, "name": f"{sname}/{cname}", "conversation": conv}
            if error is None:
                case["rendered"] = text
            else:
                case["error"] = error
            out["cases"].append(case)
    # The checkpoint's own template as apply_chat_template uses it (tokenizer.chat_template).
    own = []
    for cname, conv in convs:
        text, ids, error = render(tok, None, conv)
        if error is None:
            own.append({"name": cname, "conversation": conv, "rendered": text, "ids": ids})
    out["model_own_template"] = own
    # calibrate's view: each conversation as a dataset record (kwargs as chat_template_kwargs),
    # and the ids apply_chat_template(add_generation_prompt=False, tokenize=True) gives with the
    # checkpoint's own template: `calibrate --dump-tokens --no-shuffle` must print exactly these.
    recs, idl = [], []
    for cname, conv in convs:
        c2 = dict(conv, add_generation_prompt=False)
        text, ids, error = render(tok, None, c2)
        if error is not None:
            continue
        rec = {"messages": conv["messages"]}
        if "tools" in conv:
            rec["tools"] = conv["tools"]
        if conv.get("kwargs"):
            rec["chat_template_kwargs"] = conv["kwargs"]
        recs.append(json.dumps(rec, ensure_ascii=False))
        idl.append(json.dumps({"input_ids": ids}))
    with open(os.path.join(TDIR, "own-template.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(recs) + "\n")
    with open(os.path.join(TDIR, "own-template.ids.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(idl) + "\n")
    path = os.path.join(TDIR, "templates.golden.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    n_err = sum(1 for c in out["cases"] if "error" in c)
    print(f"{path}: {len(out['cases'])} cases ({n_err} errors), {len(own)} with the model's own template")


if __name__ == "__main__":
    sys.exit(main())
