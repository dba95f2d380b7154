#!/usr/bin/env python3
"""Train the byte-level BPE tokenizer of models/tiny-minimax-m2 and build its corpus.

Reference packages (pinned): tokenizers==0.23.3 (PyPI), Python 3.11+.
Corpus (Debian 12 "bookworm" packages, installed with apt-get):
  perl-doc 5.36.0-7+deb12u4      /usr/share/perl/5.36.0/pod/*.pod        GPL-1+ or Artistic
  python3.11-doc 3.11.2-1        /usr/share/doc/python3.11/html/_sources/**/*.rst.txt   PSF-2.0
  (apt-get install --no-install-recommends perl-doc python3.11-doc)

What it does:
  1. Reads every corpus file (sorted paths, UTF-8, CRLF -> LF) into one document per file.
     Every 25th document (by sorted order) is held out for evaluation; the rest trains.
     Writes .corpus/train.txt and .corpus/heldout.txt (documents separated by a NUL-free
     "\n\n\n" boundary; .corpus/ is git-ignored via .git/info/exclude) and .corpus/manifest.json.
  2. Trains a byte-level BPE (tokenizers BpeTrainer) on the training documents only with the
     GPT-4o (o200k) Split regex pre-tokenizer that MiniMax-M2 uses (spec
     loaders-vllm-transformers.md section 6), no normalizer, ByteLevel decoder.
  3. Re-numbers the vocabulary so ids 0..255 are the 256 single bytes in byte order (as in
     GPT-2 / o200k / MiniMax), then the learned merges in merge order; then appends the MiniMax
     added tokens: control specials and the visible <think> / tool-call tokens. Total 4096.
  4. Writes models/tiny-minimax-m2/{tokenizer.json,tokenizer_config.json,chat_template.jinja}.

Usage: python3 scripts/train-tokenizer.py [--out models/tiny-minimax-m2] [--corpus .corpus]
Deterministic for a given corpus (the trainer is run single-threaded: RAYON_NUM_THREADS=1).
"""
import argparse
import glob
import hashlib
import json
import os
import sys

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import Regex, Tokenizer, AddedToken, decoders, models, pre_tokenizers, trainers  # noqa: E402

VOCAB_SIZE = 4096  # multiple of 128 (lm_head / embed rows)

# GPT-4o (o200k_base) split regex, as llama.cpp's MINIMAX_M2 pre-tokenizer type uses.
SPLIT_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)

# Added tokens, appended after the BPE vocabulary in this order (MiniMax-M2 keeps its specials
# after the BPE ids too). Control tokens are special (skipped when decoding with
# skip_special_tokens); the visible ones (<think> ...) are added but not special, like MiniMax.
CONTROL_TOKENS = [
    "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
    "]~b]",            # role start
    "[e~[",            # end of turn / EOS
    "]<]minimax[>[",
    "]~!b[",           # BOS (written literally by the chat template)
]
VISIBLE_TOKENS = ["<think>", "</think>", "<minimax:tool_call>", "</minimax:tool_call>"]

CORPUS_GLOBS = [
    ("perl-doc", "GPL-1+ or Artistic", "/usr/share/perl/5.36.0/pod/*.pod"),
    ("python3.11-doc", "PSF-2.0", "/usr/share/doc/python3.11/html/_sources/**/*.rst.txt"),
]
HOLDOUT_EVERY = 25
DOC_SEP = "\n\n\n"

# The MiniMax-M2 chat template (format as in spec section 6: ]~!b[]~b]system ... [e~[\n,
# ]~b]user, ]~b]ai with <think> for reasoning after the last user turn, tool calls in
# <minimax:tool_call>, ]~b]tool with <response>; generation prompt "]~b]ai\n<think>\n").
CHAT_TEMPLATE = r"""{#- MiniMax-M2 chat format (tiny-minimax-m2 copy) -#}
{%- set toolcall_begin_token = '<minimax:tool_call>' -%}
{%- set toolcall_end_token = '</minimax:tool_call>' -%}
{%- macro visible_text(content) -%}
    {%- if content is string -%}{{- content -}}
    {%- elif content is iterable and content is not mapping -%}
        {%- for item in content -%}
            {%- if item is mapping and item.type == 'text' -%}{{- item.text -}}
            {%- elif item is string -%}{{- item -}}
            {%- endif -%}
        {%- endfor -%}
    {%- elif content is none -%}
    {%- else -%}{{- content -}}
    {%- endif -%}
{%- endmacro -%}
{%- set system_message = none -%}
{%- set conversation_messages = messages -%}
{%- if messages and messages[0].role == 'system' -%}
    {%- set system_message = messages[0] -%}
    {%- set conversation_messages = messages[1:] -%}
{%- endif -%}
{%- set ns = namespace(last_user_index=-1) -%}
{%- for m in conversation_messages -%}
    {%- if m.role == 'user' -%}{%- set ns.last_user_index = loop.index0 -%}{%- endif -%}
{%- endfor -%}
{{- ']~!b[' ~ ']~b]system' ~ '\n' -}}
{%- if system_message and system_message.content -%}
    {{- visible_text(system_message.content) -}}
{%- else -%}
    {{- 'You are a helpful assistant. Your name is MiniMax-M2 and is built by MiniMax.' -}}
{%- endif -%}
{%- if tools -%}
    {{- '\n\n# Tools\nYou may call one or more tools to assist with the user query.\nHere are the tools available in JSONSchema format:\n' -}}
    {{- '\n<tools>\n' -}}
    {%- for tool in tools -%}
        {{- '<tool>' ~ (tool.function | tojson) ~ '</tool>\n' -}}
    {%- endfor -%}
    {{- '</tools>\n\n' -}}
    {{- 'When making tool calls, use XML format to invoke tools and pass parameters:\n' -}}
    {{- '\n' ~ toolcall_begin_token ~ '\n<invoke name="tool-name-1">\n<parameter name="param-key-1">param-value-1</parameter>\n<parameter name="param-key-2">param-value-2</parameter>\n...\n</invoke>\n' ~ toolcall_end_token -}}
{%- endif -%}
{{- '[e~[\n' -}}
{%- set last_tool_call = namespace(name=none) -%}
{%- for message in conversation_messages -%}
    {%- if message.role == 'assistant' -%}
        {{- ']~b]ai\n' -}}
        {%- set reasoning_content = '' -%}
        {%- set content = visible_text(message.content) -%}
        {%- if message.reasoning_content is string -%}
            {%- set reasoning_content = message.reasoning_content -%}
        {%- elif '</think>' in content -%}
            {%- set reasoning_content = content.split('</think>')[0].strip('\n').split('<think>')[-1].strip('\n') -%}
            {%- set content = content.split('</think>')[-1].strip('\n') -%}
        {%- endif -%}
        {%- if reasoning_content and loop.index0 > ns.last_user_index -%}
            {{- '<think>\n' ~ reasoning_content ~ '\n</think>\n\n' -}}
        {%- endif -%}
        {%- if content -%}{{- content -}}{%- endif -%}
        {%- if message.tool_calls -%}
            {{- '\n' ~ toolcall_begin_token ~ '\n' -}}
            {%- for tool_call in message.tool_calls -%}
                {%- if tool_call.function -%}{%- set tool_call = tool_call.function -%}{%- endif -%}
                {{- '<invoke name="' ~ tool_call.name ~ '">' -}}
                {%- for k, v in tool_call.arguments.items() -%}
                    {{- '<parameter name="' ~ k ~ '">' -}}
                    {{- (v | tojson) if v is not string else v -}}
                    {{- '</parameter>' -}}
                {%- endfor -%}
                {{- '</invoke>\n' -}}
            {%- endfor -%}
            {{- toolcall_end_token -}}
            {%- set last_tool_call.name = 'called' -%}
        {%- else -%}
            {%- set last_tool_call.name = none -%}
        {%- endif -%}
        {{- '[e~[\n' -}}
    {%- elif message.role == 'tool' -%}
        {%- if loop.first or (conversation_messages[loop.index0 - 1].role != 'tool') -%}
            {{- ']~b]tool' -}}
        {%- endif -%}
        {{- '\n<response>' ~ visible_text(message.content) ~ '</response>' -}}
        {%- if loop.last or (conversation_messages[loop.index0 + 1].role != 'tool') -%}
            {{- '[e~[\n' -}}
        {%- endif -%}
    {%- elif message.role == 'user' -%}
        {{- ']~b]user\n' ~ visible_text(message.content) ~ '[e~[\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- ']~b]ai\n<think>\n' -}}
{%- endif -%}
"""


def bytes_to_unicode():
    """GPT-2 byte -> printable unicode char table (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def collect_corpus():
    docs = []
    for pkg, lic, pattern in CORPUS_GLOBS:
        paths = sorted(glob.glob(pattern, recursive=True))
        if not paths:
            sys.exit(f"corpus: no files match {pattern} (apt-get install {pkg})")
        for p in paths:
            with open(p, "rb") as f:
                raw = f.read()
            text = raw.decode("utf-8", errors="replace").replace("\r\n", "\n").strip("\n")
            if len(text) < 200:
                continue
            docs.append({"package": pkg, "license": lic, "path": p, "text": text,
                         "sha256": hashlib.sha256(raw).hexdigest()})
    return docs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/tiny-minimax-m2")
    ap.add_argument("--corpus", default=".corpus")
    args = ap.parse_args()

    docs = collect_corpus()
    train_docs = [d for i, d in enumerate(docs) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
    held_docs = [d for i, d in enumerate(docs) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    os.makedirs(args.corpus, exist_ok=True)
    with open(os.path.join(args.corpus, "train.txt"), "w", encoding="utf-8") as f:
        f.write(DOC_SEP.join(d["text"] for d in train_docs))
    with open(os.path.join(args.corpus, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write(DOC_SEP.join(d["text"] for d in held_docs))
    manifest = {
        "holdout_every": HOLDOUT_EVERY,
        "train": [[d["package"], d["path"], d["sha256"]] for d in train_docs],
        "heldout": [[d["package"], d["path"], d["sha256"]] for d in held_docs],
        "train_chars": sum(len(d["text"]) for d in train_docs),
        "heldout_chars": sum(len(d["text"]) for d in held_docs),
    }
    with open(os.path.join(args.corpus, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(f"corpus: {len(train_docs)} train docs ({manifest['train_chars']} chars), "
          f"{len(held_docs)} held-out docs ({manifest['heldout_chars']} chars)")

    n_added = len(CONTROL_TOKENS) + len(VISIBLE_TOKENS)
    n_bpe = VOCAB_SIZE - n_added

    # --- train ---
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=n_bpe, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator((d["text"] for d in train_docs), trainer=trainer)
    trained = json.loads(tok.to_str())
    vocab = trained["model"]["vocab"]
    merges = trained["model"]["merges"]
    if len(vocab) != n_bpe:
        sys.exit(f"trainer produced {len(vocab)} tokens, wanted {n_bpe}")

    # --- renumber: bytes in byte order, then tokens by original id (= merge order) ---
    b2u = bytes_to_unicode()
    new_vocab = {}
    for b in range(256):
        new_vocab[b2u[b]] = b
    for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]):
        if t not in new_vocab:
            new_vocab[t] = len(new_vocab)
    assert len(new_vocab) == n_bpe, len(new_vocab)
    merges_t = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]

    final = Tokenizer(models.BPE(vocab=new_vocab, merges=merges_t, fuse_unk=False,
                                 byte_fallback=False, ignore_merges=False))
    final.normalizer = None
    final.pre_tokenizer = tok.pre_tokenizer
    final.post_processor = None
    final.decoder = decoders.ByteLevel()
    final.add_special_tokens([AddedToken(t, special=True, normalized=False, lstrip=False,
                                         rstrip=False, single_word=False) for t in CONTROL_TOKENS])
    final.add_tokens([AddedToken(t, special=False, normalized=False, lstrip=False, rstrip=False,
                                 single_word=False) for t in VISIBLE_TOKENS])
    assert final.get_vocab_size() == VOCAB_SIZE, final.get_vocab_size()
    for i, t in enumerate(CONTROL_TOKENS + VISIBLE_TOKENS):
        assert final.token_to_id(t) == n_bpe + i, (t, final.token_to_id(t))

    os.makedirs(args.out, exist_ok=True)
    final.save(os.path.join(args.out, "tokenizer.json"), pretty=True)

    # sanity: round trip and byte ids
    s = "Hello, world! 12345 \u4f60\u597d \U0001F600\n\tdef f(x):\n        return x"
    enc = final.encode(s)
    assert final.decode(enc.ids) == s
    assert final.encode("\n").ids == [10] and final.encode(".").ids == [46]

    added_decoder = {}
    for i, t in enumerate(CONTROL_TOKENS + VISIBLE_TOKENS):
        added_decoder[str(n_bpe + i)] = {"content": t, "lstrip": False, "normalized": False,
                                         "rstrip": False, "single_word": False,
                                         "special": t in CONTROL_TOKENS}
    tcfg = {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_decoder,
        "additional_special_tokens": ["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>",
                                      "]~b]", "]<]minimax[>["],
        "bos_token": "]~!b[",
        "clean_up_tokenization_spaces": False,
        "eos_token": "[e~[",
        "model_max_length": 2048,
        "pad_token": "[e~[",
        "tokenizer_class": "GPT2Tokenizer",
        "unk_token": None,
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump(tcfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(args.out, "chat_template.jinja"), "w") as f:
        f.write(CHAT_TEMPLATE)
    ids = {t: final.token_to_id(t) for t in CONTROL_TOKENS + VISIBLE_TOKENS}
    print("added token ids:", json.dumps(ids))
    # tokens per char on held-out text
    held = DOC_SEP.join(d["text"] for d in held_docs)
    n = len(final.encode(held).ids)
    print(f"held-out: {len(held)} chars -> {n} tokens ({len(held)/n:.2f} chars/token)")


if __name__ == "__main__":
    main()
