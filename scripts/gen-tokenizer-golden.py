#!/usr/bin/env python3
"""Golden data for the C tokenizer, chat renderer and dataset sampler (src/io/tokenizer.c,
src/io/chat.c, src/io/dataset.c), written under tests/golden/tokenizer/.

Reference packages (pinned, PyPI): tokenizers==0.23.3, transformers==5.23.0 (its chat-template
Jinja environment: jinja2==3.1.6), Python 3.11. The C side never runs Python: the test binaries
read only the files this script commits.

What it writes (all small):
  o200k-mini.json   byte-level BPE trained here: Split(GPT-4o/o200k regex, Isolated) +
                    ByteLevel(add_prefix_space=false, use_regex=false), no normalizer, the
                    MiniMax-M2 control/visible added tokens plus a few added tokens with the
                    lstrip / rstrip / single_word / normalized flags set; merges as [a, b] pairs.
  gpt2-nfc.json     GPT-2 style: NFC normalizer, ByteLevel(add_prefix_space=true, use_regex=true),
                    merges in the legacy "a b" string form, ignore_merges=true, a
                    TemplateProcessing post-processor adding <s> ... </s>.
  bytefb-mini.json  non-byte-level BPE with byte_fallback=true and an <unk> token (a 60-symbol
                    alphabet, so most of Unicode goes through <0xNN> tokens), decoder
                    Sequence[Replace, ByteFallback, Fuse, Strip]; the golden file also carries
                    pre_tokenizer variants (every Split behaviour, invert, String patterns,
                    Digits) that the C test swaps in.
  <name>.golden.json   for each tokenizer above and, when present, the embedded model's
                    models/tiny-minimax-m2/tokenizer.json: a list of cases
                    {name, text, add_special_tokens, ids, tokens, decoded, decoded_skip}.
                    The conformance set: chat markup with special tokens, Unicode (CJK, emoji with
                    ZWJ/skin tones, combining marks, RTL, Indic), digit runs, whitespace runs,
                    CRLF, code, contractions (also with the long s / Kelvin sign case-folds),
                    added-token edge cases; and a generated mixed-script text of several
                    thousand tokens (seeded).
  minimax-m2.jinja  the MiniMax-M2 hub chat template used as the reference (see TEMPLATE_NOTE).
  chat.golden.json  conversations rendered with transformers' apply_chat_template (MiniMax-M2
                    hub template, the tiny model's own copy, generic ChatML), plus the token ids
                    of each MiniMax rendering under o200k-mini.json (and tiny-minimax-m2).
  sample.jsonl, dataset.golden.json   a small JSONL dataset (messages / text / input_ids /
                    conversations lines) and the expected sample selection + ids for a few
                    (samples, seq_len, seed, skip_long) settings, from a Python re-implementation
                    of the documented shuffle (splitmix64-seeded Fisher-Yates, dataset.h).

Extra, not committed:  --sweep DIR  writes DIR/<name>.sweep.json: every assigned code point
  0x20..0x3FFFF (in 48-code-point chunks, plus each chunk preceded by ' ' and 'a') encoded by
  each tokenizer. Run the C test with FB_TOK_EXTRA_GOLDEN=DIR/<name>.sweep.json to compare.

Usage: python3 scripts/gen-tokenizer-golden.py [--out tests/golden/tokenizer] [--sweep DIR]
       python3 scripts/gen-tokenizer-golden.py --nfc-tables   (prints the C tables for NFC)
Deterministic: trainers run single-threaded, all text comes from seeded generators.
"""
import argparse
import json
import os
import random
import sys
import unicodedata

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import __version__ as tokenizers_version  # noqa: E402
from tokenizers import (  # noqa: E402
    AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors,
    trainers)

O200K_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)

MINIMAX_SPECIALS = ["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "]~b]", "[e~[",
                    "]<]minimax[>[", "]~!b["]
MINIMAX_VISIBLE = ["<think>", "</think>", "<minimax:tool_call>", "</minimax:tool_call>"]

# ------------------------------------------------------------------------------------------
# Deterministic text generators

WORDS = ("the of and to in is was that for on with as by at from it this be are or an have "
         "not which but they had his her one all were we there can been has more if when will "
         "would who so no out up into than them do time some could only other new about two "
         "model layer expert tensor weight scale quantize calibrate token router gate value "
         "sigmoid matrix float block group shard header offset checkpoint activation").split()
CJK = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计"
KANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコサシスセソタチツテト"
HANGUL = "가나다라마바사아자차카타파하한국어문장입니다세계안녕하세요"
CYRILLIC = "Привет мир это тест Москва Россия язык слово данные модель".split()
GREEK = "Καλημέρα κόσμε αλφάβητο Ελληνικά λόγος".split()
ARABIC = "مرحبا بالعالم هذا اختبار اللغة العربية".split()
HEBREW = "שלום עולם זה מבחן".split()
DEVANAGARI = "नमस्ते दुनिया यह एक परीक्षण है हिन्दी".split()
THAI = "สวัสดีชาวโลก นี่คือการทดสอบ"
EMOJI = ["😀", "🚀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇫🇷", "🤖", "✨", "🙂", "🧪", "☕"]
COMBINING = ["e\u0301", "a\u0308", "n\u0303", "o\u0302\u0323", "A\u030a", "\u0915\u094d\u0937",
             "Z\u0335\u0327", "c\u0327", "\u1100\u1161\u11a8", "\u212b", "\u2126", "\u00c5",
             "\u0041\u0300\u0316", "\u0061\u0315\u0300\u05ae\u0300\u0062"]
CODE = [
    "def f(x):\n    return x**2 + 1  # square\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n}\n",
    "if __name__ == \"__main__\":\n    main()\n",
    "const x = {a: 1, 'b': [2, 3], \"c\": null}; // js\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); }\n",
    "fn main() -> Result<(), Box<dyn Error>> { Ok(()) }\n",
    "    x = np.zeros((3, 4), dtype=np.float32)\r\n",
    "<div class=\"a\"><span>hi</span></div>\n",
    "$ ls -la /usr/local/bin | grep -v '^d' && echo done\n",
]


def rand_sentence(rng):
    n = rng.randint(3, 14)
    w = [rng.choice(WORDS) for _ in range(n)]
    if rng.random() < 0.3:
        w[0] = w[0].capitalize()
    if rng.random() < 0.1:
        w[rng.randrange(n)] = w[rng.randrange(n)].upper()
    s = " ".join(w)
    return s + rng.choice([".", ".", "!", "?", ",", ":", ";", "..."])


def rand_piece(rng):
    k = rng.randrange(16)
    if k < 5:
        return rand_sentence(rng)
    if k == 5:
        return "".join(rng.choice(CJK) for _ in range(rng.randint(2, 20))) + rng.choice(["。", "，", "！", ""])
    if k == 6:
        return "".join(rng.choice(KANA) for _ in range(rng.randint(2, 12))) + " " + "".join(rng.choice(HANGUL) for _ in range(rng.randint(2, 8)))
    if k == 7:
        return " ".join(rng.choice(CYRILLIC + GREEK) for _ in range(rng.randint(1, 6)))
    if k == 8:
        return " ".join(rng.choice(ARABIC + HEBREW + DEVANAGARI) for _ in range(rng.randint(1, 5))) + " " + THAI[:rng.randint(3, len(THAI))]
    if k == 9:
        return "".join(rng.choice(EMOJI) for _ in range(rng.randint(1, 4)))
    if k == 10:
        return rng.choice(CODE)
    if k == 11:
        return str(rng.randint(0, 10 ** rng.randint(1, 25))) + rng.choice(["", ".", ",", "%", " kg", "e-5", "/", "-"]) + str(rng.randint(0, 999))
    if k == 12:
        return rng.choice([" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u3000", "\u2003", "\n\n\n  "])
    if k == 13:
        return rng.choice(COMBINING) + rng.choice(WORDS)
    if k == 14:
        return rng.choice(["I'm", "don't", "It's", "we'll", "they've", "she'd", "YOU'RE", "WE'LL", "O'Neil", "rock'n'roll", "l'été"])
    # random code points from several blocks
    blocks = [(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff), (0x900, 0x97f),
              (0x1e00, 0x1eff), (0x2000, 0x206f), (0x2100, 0x22ff), (0x3040, 0x30ff), (0x4e00, 0x9fff),
              (0xac00, 0xd7a3), (0xff00, 0xffef), (0x1f300, 0x1faff), (0x20000, 0x2a6df)]
    lo, hi = rng.choice(blocks)
    out = []
    for _ in range(rng.randint(1, 8)):
        c = chr(rng.randint(lo, hi))
        if unicodedata.category(c) in ("Cs", "Cn", "Co"):
            continue
        out.append(c)
    return "".join(out)


def rand_text(rng, npieces):
    parts = []
    for _ in range(npieces):
        parts.append(rand_piece(rng))
        parts.append(rng.choice([" ", " ", " ", "\n", "", "  ", "\n\n"]))
    return "".join(parts)


def training_corpus(seed, ndocs):
    rng = random.Random(seed)
    return [rand_text(rng, rng.randint(20, 80)) for _ in range(ndocs)]


# ------------------------------------------------------------------------------------------
# Test tokenizers


def train_o200k_mini():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(O200K_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=2000, min_frequency=2, show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(training_corpus(1, 1500), trainer=tr)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in MINIMAX_SPECIALS])
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in MINIMAX_VISIBLE])
    # Flag edge cases (tokenizers' AddedVocabulary semantics).
    tok.add_tokens([
        AddedToken("<|ls|>", lstrip=True, normalized=False, special=False),
        AddedToken("<|rs|>", rstrip=True, normalized=False, special=False),
        AddedToken("<|lrs|>", lstrip=True, rstrip=True, normalized=False, special=True),
        AddedToken("wordtok", single_word=True, normalized=False, special=False),
        AddedToken("<think>x", normalized=False, special=False),   # longest match vs <think>
        AddedToken("normtok", normalized=True, special=False),
        AddedToken("the", normalized=True, special=False),          # already in the vocab
    ])
    return json.loads(tok.to_str())


def train_gpt2_nfc():
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=1400, min_frequency=2, show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                             special_tokens=["<s>", "</s>", "<pad>"])
    tok.train_from_iterator(training_corpus(2, 900), trainer=tr)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=True),
        processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> $B:1 </s>:1",
                                      special_tokens=[("<s>", 0), ("</s>", 1)]),
    ])
    tok.add_tokens([AddedToken("Caf\u00e9Tok", normalized=True),       # NFC form matched
                    AddedToken("<sep>", normalized=False, special=True, lstrip=True, rstrip=True)])
    d = json.loads(tok.to_str())
    m = d["model"]
    m["merges"] = [a + " " + b for a, b in m["merges"]]   # legacy string form
    return d


def train_bytefb_mini():
    alphabet = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,'")
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s+"), behavior="merged_with_next", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("_", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    bytes_toks = ["<0x%02X>" % b for b in range(256)]
    tr = trainers.BpeTrainer(vocab_size=700, min_frequency=2, show_progress=False, limit_alphabet=len(alphabet),
                             initial_alphabet=alphabet, special_tokens=["<unk>"] + bytes_toks)
    tok.train_from_iterator(training_corpus(3, 600), trainer=tr)
    d = json.loads(tok.to_str())
    # As in Llama: the <0xNN> tokens live in the vocab but are not added tokens.
    d["added_tokens"] = [t for t in d["added_tokens"] if t["content"] not in bytes_toks]
    return d


BYTEFB_VARIANTS = {
    "removed": {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "Removed", "invert": False},
    "isolated": {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "Isolated", "invert": False},
    "contiguous": {"type": "Split", "pattern": {"Regex": r"[aeiou]"}, "behavior": "Contiguous", "invert": False},
    "merged_prev": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False},
    "merged_next": {"type": "Split", "pattern": {"String": "."}, "behavior": "MergedWithNext", "invert": False},
    "invert_isolated": {"type": "Split", "pattern": {"Regex": r"\p{L}+"}, "behavior": "Isolated", "invert": True},
    "invert_removed": {"type": "Split", "pattern": {"Regex": r"\p{L}+"}, "behavior": "Removed", "invert": True},
    "digits": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "MergedWithNext", "invert": False},
        {"type": "Digits", "individual_digits": True}]},
    "digits_grouped": {"type": "Digits", "individual_digits": False},
}

# ------------------------------------------------------------------------------------------
# Conformance strings

CONFORMANCE = [
    ("empty", ""),
    ("space", " "),
    ("hello", "Hello world"),
    ("chat", "]~!b[]~b]system\nYou are a helpful assistant. Your name is MiniMax-M2 and is built by MiniMax.[e~[\n"
             "]~b]user\ntest[e~[\n]~b]ai\n<think>\n"),
    ("chat_reasoning", "]~b]ai\n<think>\nLet me think: 2+2=4.\n</think>\n\nThe answer is 4.[e~[\n"),
    ("specials_adjacent", "]~b]]~b][e~[[e~[]~!b[<think></think><minimax:tool_call></minimax:tool_call>"),
    ("specials_in_words", "abc]~b]def [e~[ghi <think>jkl</think>mno"),
    ("partial_specials", "]~b ]~ [e~ <think <thin </think <fim_pad"),
    ("longest_match", "<think>x <think>xy <think> x"),
    ("lstrip_rstrip", "a   <|ls|>   b   <|rs|>   c  <|lrs|>  d<|ls|><|rs|>e \t<|lrs|>\n\nf"),
    ("single_word", "wordtok xwordtok wordtokx (wordtok) wordtok_ wordtok\u00e9 \u00e9wordtok 3wordtok"),
    ("normalized_added", "normtok the them other normtokthe"),
    ("contractions", "I'm you're he's we'll they've she'd don't can't it'S WE'LL You'Re \u017fs 's 'S '\u212a"),
    ("kelvin_longs", "It'\u017f the 'D' '\u017f 'll'LL'Ll"),
    ("digits", "0 12 123 1234 12345 123456789012345678901234567890 3.14159 1,000,000 1e-10 0x1F \u0663\u0664\u0665 \u00b2\u00b3 \u2167\u2168"),
    ("whitespace_runs", "a  b   c    d\t\te\n\nf\r\ng \n \n h   \n\n\n   i\u00a0\u00a0j\u3000k\u2003\u2003l\u200bm    "),
    ("only_whitespace", "   \n\t \r\n  "),
    ("newlines", "\n\n\nline1\nline2\r\n\r\nline3\rline4\n"),
    ("trailing_spaces", "word   "),
    ("leading_spaces", "   word"),
    ("cjk", "中文测试：你好，世界！這是一個測試。日本語のテキスト、カタカナ。한국어 텍스트입니다."),
    ("emoji", "😀 🚀🚀 👍🏽 👨\u200d👩\u200d👧\u200d👦 🏳\ufe0f\u200d🌈 ❤\ufe0f 🇫🇷🇩🇪 text😀text"),
    ("combining", "e\u0301 caf\u00e9 cafe\u0301 \u00c5 A\u030a \u212b n\u0303o Z\u0335\u0327 \u0061\u0315\u0300\u05ae\u0300\u0062 \u1100\u1161\u11a8 \ud55c"),
    ("rtl_indic", "مرحبا بالعالم שלום עולם नमस्ते दुनिया สวัสดีชาวโลก"),
    ("mixed_case", "HelloWorld HTTPServer iPhone McDonald'S XMLHttpRequest ΑλφάΒήτα ǅungla ǈ"),
    ("punct", "Hello, world! (Really?) [yes] {no} <tag/> a--b a—b «quote» “smart” ‘q’ … ¿Qué? ¡Sí! @#$%^&*_+=|\\~`"),
    ("paths", "/usr/local/bin/python3 C:\\Windows\\System32 https://example.com/a/b?c=d&e=f#g"),
    ("code_py", "def foo(bar: int) -> str:\n    \"\"\"Doc.\"\"\"\n    if bar > 0:\n        return f'{bar:>10}'\n    return ''\n"),
    ("code_c", "int main(int argc, char **argv) {\n\tfor (int i = 0; i < argc; i++)\n\t\tputs(argv[i]);\n\treturn 0;\n}\n"),
    ("json", "{\"role\": \"user\", \"content\": [1, 2.5, -3e8, true, null], \"x\": {\"y\": \"\\u00e9\"}}"),
    ("long_word", "a" * 300 + " " + "ab" * 200 + " " + "\u4e2d" * 100),
    ("control_chars", "a\x00b\x01c\x7fd\x1be[0m\x0cf\x0bg\u0085h\u2028i\u2029j"),
    ("bom_nonchar", "\ufeffstart \ufffd \U0001F9FF \U00020000 \U0010FFFD end"),
    ("fim", "<fim_prefix>def f():\n<fim_suffix>\n    return 1<fim_middle>"),
    ("unk_fallback", "naïve façade 北京 ☃ ok"),
    ("byte_tokens_text", "<0x41> <0xE4> <unk> <s> </s> <pad> <sep>x <sep> y"),
    ("nfc_added", "Cafe\u0301Tok Caf\u00e9Tok caf\u00e9tok"),
]


def big_text(seed, npieces):
    return rand_text(random.Random(seed), npieces)


def golden_cases(tok, big):
    cases = []
    items = list(CONFORMANCE) + [("generated_mixed_2", big_text(777, 900))]
    if big:
        items.append(("generated_mixed", big_text(12345, 1800)))
    for name, text in items:
        for add_special in (False, True):
            if add_special and not (tok.post_processor is not None and name in ("hello", "empty", "chat", "generated_mixed_2")):
                continue
            enc = tok.encode(text, add_special_tokens=add_special)
            c = {"name": name + (" +special" if add_special else ""), "text": text,
                 "add_special_tokens": add_special, "ids": enc.ids,
                 "decoded": tok.decode(enc.ids, skip_special_tokens=False)}
            skip = tok.decode(enc.ids, skip_special_tokens=True)
            if skip != c["decoded"]:
                c["decoded_skip"] = skip
            cases.append(c)
    return cases


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")


# ------------------------------------------------------------------------------------------
# Chat templates

TEMPLATE_NOTE = """The reference MiniMax-M2 template is the hub chat_template.jinja as mirrored in
llama.cpp forks (Anemll/anemll-flash-llama.cpp models/templates/MiniMax-M2.jinja, identical with
enable_thinking undefined to pwilkin/llama.cpp's copy apart from the tool-call block's leading
newline), with the default identity of the MiniMax-M2 hub release that spec section 6 gives
("You are a helpful assistant. Your name is MiniMax-M2 and is built by MiniMax.")."""

MINIMAX_TEMPLATE = r"""{# ----------‑‑‑ special token variables ‑‑‑---------- #}
{%- set toolcall_begin_token   = '<minimax:tool_call>'         -%}
{%- set toolcall_end_token     = '</minimax:tool_call>'        -%}
{#- Tool Rendering Functions ============================================== -#}
{%- macro render_tool_namespace(namespace_name, tool_list) -%}
{%- for tool in tool_list -%}
<tool>{{ tool.function | tojson(ensure_ascii=False) }}</tool>
{% endfor -%}
{%- endmacro -%}
{%- macro visible_text(content) -%}
    {%- if content is string -%}
        {{ content }}
    {%- elif content is iterable and content is not mapping -%}
        {%- for item in content -%}
            {%- if item is mapping and item.type == 'text' -%}
                {{- item.text }}
            {%- elif item is string -%}
                {{- item }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{- content }}
    {%- endif -%}
{%- endmacro -%}
{#- System Message Construction ============================================ -#}
{%- macro build_system_message(system_message) -%}
    {%- if system_message and system_message.content -%}
        {{- visible_text(system_message.content) }}
    {%- else -%}
        {%- if model_identity is not defined -%}
            {%- set model_identity = "You are a helpful assistant. Your name is MiniMax-M2 and is built by MiniMax." -%}
        {%- endif -%}
        {{- model_identity }}
    {%- endif -%}
    
    {#- Handle current_date -#}
    {%- if system_message and system_message.current_date -%}
        {{- '\n' ~ 'Current date: ' + system_message.current_date }}
    {%- endif -%}
    {#- Handle current_location -#}
    {%- if system_message and system_message.current_location -%}
        {{- '\n' ~ 'Current location: ' + system_message.current_location }}
    {%- endif -%}
{%- endmacro -%}
{#- Main Template Logic ================================================= -#}
{#- Extract system message (only first message if it's system) -#}
{%- set system_message = none -%}
{%- set conversation_messages = messages -%}
{%- if messages and messages[0].role == "system" -%}
    {%- set system_message = messages[0] -%}
    {%- set conversation_messages = messages[1:] -%}
{%- endif -%}
{#- Get the last user message turn, for interleved thinking -#}
{%- set ns = namespace(last_user_index=-1) %}
{% for m in conversation_messages %}
    {%- if m.role == 'user' %}
        {% set ns.last_user_index = loop.index0 -%}
    {%- endif %}
{%- endfor %}
{#- Render system message -#}
{{- ']~!b[' ~ ']~b]system' ~ '\n' }}
{{- build_system_message(system_message) }}
{#- Render tools if available -#}
{%- if tools -%}
    {{- '\n\n' ~ '# Tools' ~ '\n' ~ 'You may call one or more tools to assist with the user query.\nHere are the tools available in JSONSchema format:' ~ '\n' }}
    {{- '\n' ~ '<tools>' ~ '\n' }}
    {{- render_tool_namespace("functions", tools) }}
    {{- '</tools>' ~ '\n\n' }}
{{- 'When making tool calls, use XML format to invoke tools and pass parameters:' ~ '\n' }}
{{- '\n' ~ toolcall_begin_token }}
<invoke name="tool-name-1">
<parameter name="param-key-1">param-value-1</parameter>
<parameter name="param-key-2">param-value-2</parameter>
...
</invoke>
{{- '\n' ~ toolcall_end_token }}
{%- endif -%}
{{- '[e~[\n' }}

{#- Render messages -#}
{%- set last_tool_call = namespace(name=none) -%}
{%- for message in conversation_messages -%}
    {%- if message.role == 'assistant' -%}
        {#- Only render reasoning_content if no user message follows -#}
        {{- ']~b]ai' ~ '\n' }}

        {%- set reasoning_content = '' %}
        {%- set content = visible_text(message.content) %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].strip('\n').split('<think>')[-1].strip('\n') %}
                {%- set content = content.split('</think>')[-1].strip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if reasoning_content and loop.index0 > ns.last_user_index -%}
            {{- '<think>' ~ '\n' ~ reasoning_content ~ '\n' ~ '</think>' ~ '\n\n' }}
        {%- endif -%}
        {%- if content -%}
            {{- content }}
        {%- endif -%}
        {%- if message.tool_calls -%}
            {{- '\n' ~ toolcall_begin_token ~ '\n' }}

            {%- for tool_call in message.tool_calls -%}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<invoke name="' + tool_call.name + '">' }}
                {% set _args = tool_call.arguments %}
                {%- for k, v in _args.items() %}
                {{- '<parameter name="' + k + '">' }}
                {{- v | tojson(ensure_ascii=False) if v is not string else v }}
                {{- '</parameter>' }}
                {% endfor %}
                {{- '</invoke>' ~ '\n' }}
            {%- endfor -%}
            
            {{- toolcall_end_token}}
            {%- set last_tool_call.name = message.tool_calls[-1].function.name -%}
        {%- else -%}
            {%- set last_tool_call.name = none -%}
        {%- endif -%}
        {{- '[e~[' ~ '\n' }}
        
    {%- elif message.role == 'tool' -%}
    {%- if last_tool_call.name is none -%}
        {{- raise_exception("Message has tool role, but there was no previous assistant message with a tool call!") }}
    {%- endif -%}
    {%- if loop.first or (conversation_messages[loop.index0 - 1].role != 'tool') -%}
        {{- ']~b]tool' }}
    {%- endif -%}
    {%- if message.content is string -%}
        {{- '\n<response>' }}
        {{- message.content }}
        {{- '</response>' }}
    {%- else -%}
        {%- for tr in message.content -%}
            {{- '\n<response>' }}
            {{- tr.output if tr.output is defined else (tr.text if tr.type == 'text' and tr.text is defined else tr) }}
            {{- '\n</response>' }}
        {%- endfor -%}
    {%- endif -%}
    {%- if loop.last or (conversation_messages[loop.index0 + 1].role != 'tool') -%}
        {{- '[e~[\n' -}}
    {%- endif -%}
        
    {%- elif message.role == 'user' -%}
        {{- ']~b]user' ~ '\n' }}
        {{- visible_text(message.content) }}
        {{- '[e~[' ~ '\n' }}
    {%- endif -%}
{%- endfor -%}

{#- Generation prompt -#}
{%- if add_generation_prompt -%}
{{- ']~b]ai' ~ '\n' ~ '<think>' ~ '\n' }}
{%- endif -%}
"""

# The canonical ChatML template (transformers' chat-templating docs / Qwen-style without a
# default system prompt).
CHATML_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
                   "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the weather for a city. Unicode: é 中",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "days": {"type": "integer", "minimum": 1}},
                   "required": ["city"]}}}

CONVERSATIONS = [
    ("user_only", {"messages": [{"role": "user", "content": "test"}]}),
    ("user_only_genprompt", {"messages": [{"role": "user", "content": "test"}], "add_generation_prompt": True}),
    ("system_user_ai", {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."}]}),
    ("empty_system", {"messages": [
        {"role": "system", "content": ""},
        {"role": "user", "content": "Hi"}]}),
    ("multi_turn_think", {"messages": [
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "<think>\nreason one\n</think>\n\nA1"},
        {"role": "user", "content": "Q2 with  spaces\nand lines"},
        {"role": "assistant", "content": "<think>reason two</think>A2"}]}),
    ("reasoning_content_field", {"messages": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "Answer", "reasoning_content": "field reasoning"},
        {"role": "assistant", "content": "More", "reasoning_content": ""}]}),
    ("think_no_open", {"messages": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "\n\nthoughts\n\n</think>\n\nfinal\n\n</think>\n\ntail\n"}]}),
    ("think_multiple_open", {"messages": [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "<think>a<think>\nb\n</think>c"}]}),
    ("list_content", {"messages": [
        {"role": "system", "content": [{"type": "text", "text": "Sys "}, {"type": "text", "text": "parts"}]},
        {"role": "user", "content": [{"type": "text", "text": "Look: "}, {"type": "image", "url": "x.png"}, "plain"]},
        {"role": "assistant", "content": [{"type": "text", "text": "Seen."}]}]}),
    ("tools_and_calls", {"messages": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": "<think>Need the tool.</think>Checking.", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "東京", "opts": {"unit": "C", "x": [1, 2.5, None, True]}}}}]},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "tool", "content": "{\"temp\": 18}"},
        {"role": "assistant", "content": "Paris 21, Tokyo 18."}],
        "tools": [WEATHER_TOOL]}),
    ("tool_list_content", {"messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": {}}}]},
        {"role": "tool", "content": [{"type": "text", "text": "out1"}, {"output": "out2"}]},
        {"role": "user", "content": "thanks"}]}),
    ("assistant_null_content", {"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"type": "function", "function": {"name": "g", "arguments": {"q": "s p a c e"}}}]},
        {"role": "tool", "content": "r"}]}),
    ("system_date_location", {"messages": [
        {"role": "system", "content": "S", "current_date": "2025-01-02", "current_location": "Paris"},
        {"role": "user", "content": "u"}]}),
    ("second_system_ignored", {"messages": [
        {"role": "user", "content": "u1"},
        {"role": "system", "content": "ignored"},
        {"role": "assistant", "content": "a1"}]}),
    ("unicode_content", {"messages": [
        {"role": "user", "content": "中文 😀 e\u0301 \u00a0 tabs\tand\r\nCRLF"},
        {"role": "assistant", "content": "<think>\n\n多行\n推理\n\n</think>\n\n答案 ✓"}]}),
    ("special_tokens_in_content", {"messages": [
        {"role": "user", "content": "literal ]~b]ai and [e~[ and <think> inside"},
        {"role": "assistant", "content": "ok"}]}),
    ("ends_with_assistant_genprompt", {"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        "add_generation_prompt": True}),
]

CHATML_CONVERSATIONS = ["user_only", "user_only_genprompt", "system_user_ai", "empty_system",
                        "multi_turn_think", "unicode_content", "special_tokens_in_content",
                        "ends_with_assistant_genprompt"]


def render_with_transformers(tokenizer_file, template, conv):
    from transformers import PreTrainedTokenizerFast
    t = PreTrainedTokenizerFast(tokenizer_file=tokenizer_file)
    kw = {}
    if "tools" in conv:
        kw["tools"] = conv["tools"]
    text = t.apply_chat_template(conv["messages"], chat_template=template, tokenize=False,
                                 add_generation_prompt=conv.get("add_generation_prompt", False), **kw)
    ids = t.apply_chat_template(conv["messages"], chat_template=template, tokenize=True, return_dict=False,
                                add_generation_prompt=conv.get("add_generation_prompt", False), **kw)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return text, list(ids)


# ------------------------------------------------------------------------------------------
# Dataset sampler reference (mirrors src/io/dataset.h)

M64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.s = seed & M64

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)


def shuffled(n, seed):
    idx = list(range(n))
    rng = SplitMix64(seed)
    for i in range(n - 1, 0, -1):
        j = rng.next() % (i + 1)
        idx[i], idx[j] = idx[j], idx[i]
    return idx


def sample_records(rng):
    recs = []
    for i in range(40):
        k = i % 5
        if k == 0:
            msgs = [{"role": "user", "content": rand_sentence(rng)}]
            for _ in range(rng.randint(0, 3)):
                msgs.append({"role": "assistant", "content": rand_text(rng, rng.randint(1, 12))})
                msgs.append({"role": "user", "content": rand_text(rng, rng.randint(1, 6))})
            if rng.random() < 0.5:
                msgs.insert(0, {"role": "system", "content": rand_sentence(rng)})
            recs.append({"messages": msgs})
        elif k == 1:
            recs.append({"text": rand_text(rng, rng.randint(1, 40))})
        elif k == 2:
            recs.append({"input_ids": [rng.randrange(0, 1900) for _ in range(rng.randint(1, 90))]})
        elif k == 3:
            recs.append({"conversations": [{"from": "human", "value": rand_sentence(rng)},
                                           {"from": "gpt", "value": "<think>r</think>" + rand_text(rng, rng.randint(1, 10))}],
                         "id": i})
        else:
            recs.append({"messages": [{"role": "user", "content": rand_text(rng, 3)},
                                      {"role": "assistant", "content": rand_text(rng, rng.randint(5, 60)),
                                       "reasoning_content": rand_sentence(rng)}], "source": "x"})
    return recs


def record_messages(rec):
    if "messages" in rec:
        return rec["messages"]
    if "conversations" in rec:
        rmap = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                "system": "system", "tool": "tool"}
        return [{"role": rmap[m["from"]], "content": m["value"]} for m in rec["conversations"]]
    return None


def dataset_golden(out_dir, tok_file):
    from transformers import PreTrainedTokenizerFast
    rng = random.Random(99)
    recs = sample_records(rng)
    lines = []
    for i, r in enumerate(recs):
        lines.append(json.dumps(r, ensure_ascii=(i % 2 == 0)))
        if i % 9 == 4:
            lines.append("   ")  # blank lines are skipped
    with open(os.path.join(out_dir, "sample.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    t = PreTrainedTokenizerFast(tokenizer_file=tok_file)
    raw = Tokenizer.from_file(tok_file)
    full = []
    for r in recs:  # the kinds in dataset.h's order: input_ids, messages, conversations, text
        msgs = record_messages(r)
        if "input_ids" in r:
            full.append(r["input_ids"])
        elif msgs is not None:
            ids = t.apply_chat_template(msgs, chat_template=MINIMAX_TEMPLATE, tokenize=True, return_dict=False)
            if hasattr(ids, "keys"):
                ids = ids["input_ids"]
            full.append(list(ids))
        else:
            full.append(raw.encode(r["text"], add_special_tokens=True).ids)
    settings = [
        {"samples": 0, "seq_len": 0, "seed": 42, "skip_long": False, "shuffle": True},
        {"samples": 10, "seq_len": 64, "seed": 42, "skip_long": False, "shuffle": True},
        {"samples": 10, "seq_len": 64, "seed": 42, "skip_long": True, "shuffle": True},
        {"samples": 7, "seq_len": 128, "seed": 0, "skip_long": True, "shuffle": True},
        {"samples": 5, "seq_len": 32, "seed": 123456789012345, "skip_long": False, "shuffle": False},
        {"samples": 1000, "seq_len": 100, "seed": 7, "skip_long": True, "shuffle": True},
    ]
    out = {"tokenizer": os.path.basename(tok_file), "template": "minimax-m2", "n_records": len(recs),
           "shuffle_check": {"n": 10, "seed": 42, "order": shuffled(10, 42)}, "settings": []}
    for s in settings:
        order = shuffled(len(recs), s["seed"]) if s["shuffle"] else list(range(len(recs)))
        picked, n_long, n_trunc = [], 0, 0
        for i in order:
            if s["samples"] and len(picked) >= s["samples"]:
                break
            ids = full[i]
            if s["seq_len"] and len(ids) > s["seq_len"]:
                if s["skip_long"]:
                    n_long += 1
                    continue
                ids = ids[:s["seq_len"]]
                n_trunc += 1
            picked.append({"record": i, "ids": ids})
        out["settings"].append(dict(s, picked=picked, skipped_long=n_long, truncated=n_trunc))
    write_json(os.path.join(out_dir, "dataset.golden.json"), out)


# ------------------------------------------------------------------------------------------
# NFC tables for src/io/tokenizer.c


def nfc_tables():
    """C tables for NFC. Source: Python's unicodedata, restricted to what the reference NFC
    (tokenizers' normalizers.NFC, the unicode-normalization-alignments crate, an older Unicode
    version) knows: a combining class or decomposition the reference ignores is left out."""
    ref = normalizers.NFC().normalize_str
    decomp = []   # (cp, a, b) canonical, single step
    for cp in range(0x110000):
        if 0xAC00 <= cp <= 0xD7A3:
            continue  # Hangul: algorithmic
        d = unicodedata.decomposition(chr(cp))
        if not d or d.startswith("<"):
            continue
        nfd = unicodedata.normalize("NFD", chr(cp))
        if ref(chr(cp)) != unicodedata.normalize("NFC", chr(cp)) or ref(nfd) != unicodedata.normalize("NFC", nfd):
            continue  # unknown to the reference
        parts = [int(x, 16) for x in d.split()]
        a, b = parts[0], (parts[1] if len(parts) > 1 else 0)
        # Full composition exclusion: singletons, non-starter decompositions, and the
        # CompositionExclusions list (detected: NFC of the decomposition is not cp).
        excl = 1 if unicodedata.normalize("NFC", chr(cp)) != chr(cp) else 0
        decomp.append((cp, a, b, excl))
    def ref_ccc(cp):
        c = unicodedata.combining(chr(cp))
        if not c:
            return 0
        # Known to the reference iff it reorders cp against a mark of another class.
        t = "x" + chr(cp) + "\u0334" if c > 1 else "x\u0301" + chr(cp)
        return c if ref(t) != t else 0

    ccc = []
    cp = 0
    while cp < 0x110000:
        c = ref_ccc(cp) if not 0xD800 <= cp <= 0xDFFF else 0
        if c:
            start = cp
            while cp + 1 < 0x110000 and not 0xD800 <= cp + 1 <= 0xDFFF and ref_ccc(cp + 1) == c:
                cp += 1
            ccc.append((start, cp, c))
        cp += 1
    print("// Generated by scripts/gen-tokenizer-golden.py --nfc-tables (Python unicodedata %s, limited to"
          % unicodedata.unidata_version)
    print("// what tokenizers %s's NFC knows)." % tokenizers_version)
    print("// {code point, first, second (0 if singleton), 1 if excluded from composition}")
    print("static const uint32_t nfc_decomp[][4] = {")
    for i in range(0, len(decomp), 4):
        print("    " + " ".join("{0x%X,0x%X,0x%X,%d}," % e for e in decomp[i:i + 4]))
    print("};")
    print("// {first, last, canonical combining class}")
    print("static const uint32_t nfc_ccc[][3] = {")
    for i in range(0, len(ccc), 5):
        print("    " + " ".join("{0x%X,0x%X,%d}," % e for e in ccc[i:i + 5]))
    print("};")


# ------------------------------------------------------------------------------------------


def sweep(tok, tok_path, path):
    chunks = []
    cps = [c for c in range(0x20, 0x40000)
           if unicodedata.category(chr(c)) not in ("Cs", "Cn", "Co")]
    for i in range(0, len(cps), 48):
        s = "".join(chr(c) for c in cps[i:i + 48])
        chunks.append(("u%05X" % cps[i], s))
        chunks.append(("u%05X_sp" % cps[i], " " + s))
        chunks.append(("u%05X_a" % cps[i], "a" + " ".join(s)))
    cases = []
    for name, text in chunks:
        enc = tok.encode(text, add_special_tokens=False)
        cases.append({"name": name, "text": text, "add_special_tokens": False, "ids": enc.ids})
    write_json(path, {"tokenizer": tok_path, "cases": cases})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/golden/tokenizer")
    ap.add_argument("--model", default="models/tiny-minimax-m2")
    ap.add_argument("--sweep", default=None)
    ap.add_argument("--nfc-tables", action="store_true")
    a = ap.parse_args()
    if a.nfc_tables:
        nfc_tables()
        return
    os.makedirs(a.out, exist_ok=True)

    toks = {}
    for name, fn in (("o200k-mini", train_o200k_mini), ("gpt2-nfc", train_gpt2_nfc),
                     ("bytefb-mini", train_bytefb_mini)):
        d = fn()
        path = os.path.join(a.out, name + ".json")
        write_json(path, d)
        toks[name] = path
    model_tok = os.path.join(a.model, "tokenizer.json")
    have_model = os.path.exists(model_tok)

    for name, path in list(toks.items()) + ([("tiny-minimax-m2", model_tok)] if have_model else []):
        tok = Tokenizer.from_file(path)
        g = {"tokenizer": os.path.relpath(path),
             "cases": golden_cases(tok, name in ("o200k-mini", "tiny-minimax-m2"))}
        if name == "bytefb-mini":
            base = json.load(open(path, encoding="utf-8"))
            g["variants"] = []
            for vname, pt in BYTEFB_VARIANTS.items():
                vd = dict(base, pre_tokenizer=pt)
                vt = Tokenizer.from_str(json.dumps(vd))
                vc = []
                for cname, text in CONFORMANCE:  # texts: the base cases of the same name
                    enc = vt.encode(text, add_special_tokens=False)
                    c = {"name": cname, "ids": enc.ids, "decoded": vt.decode(enc.ids, skip_special_tokens=False)}
                    skip = vt.decode(enc.ids, skip_special_tokens=True)
                    if skip != c["decoded"]:
                        c["decoded_skip"] = skip
                    vc.append(c)
                g["variants"].append({"name": vname, "pre_tokenizer": pt, "cases": vc})
        write_json(os.path.join(a.out, name + ".golden.json"), g)
        if a.sweep:
            os.makedirs(a.sweep, exist_ok=True)
            sweep(tok, os.path.relpath(path), os.path.join(a.sweep, name + ".sweep.json"))
        ntok = sum(len(c["ids"]) for c in g["cases"])
        print("%s: %d cases, %d tokens" % (name, len(g["cases"]), ntok), file=sys.stderr)

    # Chat templates
    with open(os.path.join(a.out, "minimax-m2.jinja"), "w", encoding="utf-8") as f:
        f.write(MINIMAX_TEMPLATE)
    chat = {"note": TEMPLATE_NOTE, "cases": []}
    model_template = None
    if have_model and os.path.exists(os.path.join(a.model, "chat_template.jinja")):
        model_template = open(os.path.join(a.model, "chat_template.jinja"), encoding="utf-8").read()
    for cname, conv in CONVERSATIONS:
        text, ids = render_with_transformers(toks["o200k-mini"], MINIMAX_TEMPLATE, conv)
        case = {"name": cname, "conversation": conv, "template": "minimax-m2", "rendered": text,
                "ids_o200k_mini": ids}
        if have_model:
            _, mids = render_with_transformers(model_tok, MINIMAX_TEMPLATE, conv)
            case["ids_tiny_minimax_m2"] = mids
        if model_template is not None:
            try:
                mt, _ = render_with_transformers(model_tok, model_template, conv)
                case["tiny_model_template_equal"] = (mt == text)
            except Exception as e:  # noqa: BLE001
                case["tiny_model_template_equal"] = "error: %s" % e
        chat["cases"].append(case)
        if cname in CHATML_CONVERSATIONS:
            text, _ = render_with_transformers(toks["o200k-mini"], CHATML_TEMPLATE, conv)
            chat["cases"].append({"name": cname, "conversation": conv, "template": "chatml",
                                  "rendered": text})
    # Conversations the reference template rejects (raise_exception).
    for cname, conv in [("tool_without_call", {"messages": [{"role": "user", "content": "u"},
                                                            {"role": "tool", "content": "r"}]}),
                        ("tool_after_plain_ai", {"messages": [{"role": "user", "content": "u"},
                                                              {"role": "assistant", "content": "a"},
                                                              {"role": "tool", "content": "r"}]})]:
        try:
            render_with_transformers(toks["o200k-mini"], MINIMAX_TEMPLATE, conv)
            raise SystemExit("expected the reference template to reject " + cname)
        except Exception as e:  # noqa: BLE001
            if isinstance(e, SystemExit):
                raise
            chat["cases"].append({"name": cname, "conversation": conv, "template": "minimax-m2",
                                  "error": str(e)})
    # Python json.dumps(ensure_ascii=False) of values (the template's tojson filter).
    values = [1.0, 1e20, 1.5e20, 1e16, 1e15, 1.2345678901234568e17, 0.0001, 1e-05, 1.2345e-07, -0.0, 0.1,
              2.5, 1 / 3, 5e-324, 1.7976931348623157e308, 100.0, 12345.678, 0.5e-4, 123456789.125, 7, -3,
              {"a": [1, "\u00e9\n\"\u0001\u007f\\/\t"], "b": None, "c": True, "d": False, "e": {}, "f": []}]
    chat["pyjson"] = [{"value": v, "dumps": json.dumps(v, ensure_ascii=False)} for v in values]
    write_json(os.path.join(a.out, "chat.golden.json"), chat)
    diff = [c["name"] for c in chat["cases"] if c.get("tiny_model_template_equal") not in (None, True)]
    print("chat: %d cases; tiny model's own template differs on: %s" % (len(chat["cases"]), diff),
          file=sys.stderr)

    dataset_golden(a.out, toks["o200k-mini"])


if __name__ == "__main__":
    main()
