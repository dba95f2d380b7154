#!/usr/bin/env python3
"""Reference data for the C tokenizer and forward pass on models/tiny-minimax-m2.

Reference packages (pinned): transformers==5.17.0, tokenizers==0.23.x, torch 2.11 (device) /
2.15 (CPU), safetensors==0.8.0, numpy. The model step ran on an NVIDIA H100 for the committed
files (float32, TF32 off); it also runs on the CPU for a cross-check.

  tokenizer   -> tests/golden/model/tokenizer-conformance.json
      Token ids that the `tokenizers` library (Tokenizer.from_file(tokenizer.json).encode(text,
      add_special_tokens=False)) gives for a varied conformance set; chat cases are rendered
      first with transformers' apply_chat_template (the chat template in tokenizer_config.json).
  model       -> tests/golden/model/{reference.safetensors,hidden-states.safetensors,eval.json}
      1. Reads the exported FP8 checkpoint with safetensors and dequantizes every F8_E4M3 weight
         as BF16(float(fp8) * weight_scale_inv[r/128, c/128]) (float32 product, one rounding).
      2. Maps checkpoint names to transformers' in-memory names (block_sparse_moe -> mlp;
         experts.E.w1 / w3 -> experts.gate_up_proj[E] rows [0,I) / [I,2I); w2 -> down_proj[E])
         and loads them into MiniMaxM2ForCausalLM built from the exported config.json
         (strict load), attn_implementation="eager", experts_implementation="eager".
      3. Casts the whole model to float32 (model.float(): the BF16 values are exact in f32; the
         router gate and e_score_correction_bias are F32 in the checkpoint) and runs the
         forward pass in float32 with TF32 disabled.
      4. Optional: loads the same directory with AutoModelForCausalLM.from_pretrained (the
         transformers FP8 quantizer, dequantize=True) and compares its bf16 logits with ours.

Usage:
  PYTHONPATH=<transformers 5.17> python3 scripts/make-model-reference.py tokenizer
  PYTHONPATH=<transformers 5.17> python3 scripts/make-model-reference.py model [--out DIR]
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import torch

MODEL_DIR = "models/tiny-minimax-m2"
GOLDEN = "tests/golden/model"
TOK_DIR = ".corpus-tok"
BLOCK = 128
SEQ_LEN = 128
N_SEQ = 4
TOPK = 16
FULL_POS = 64        # full logits / hidden states are stored for positions [0, FULL_POS) of seq 0
EOS_ID = 4089


# ----------------------------------------------------------------------------------------
CONFORMANCE_TEXTS = [
    ("empty", ""),
    ("ascii_sentence", "The quick brown fox jumps over the lazy dog."),
    ("contractions", "It's what they've said: we'll see, I'd guess, you're right, I'm SURE, THEY'RE here, don't."),
    ("digits", "0 1 12 123 1234 12345 123456 3.14159 1e-10 2024-11-22 +1(555)010-9999 0x7fff_ffff"),
    ("whitespace_runs", "a  b   c    d\t\te\n\nf\n\n\ng \n h  \n\n  i\r\nj\r\n\r\nk   "),
    ("leading_trailing_ws", "   leading spaces and trailing   \n"),
    ("only_newlines", "\n\n\n\n"),
    ("tabs_indent_code", "def f(x):\n\tif x:\n\t\treturn x ** 2\n\treturn None\n"),
    ("python_code", "class Foo(object):\n    def __init__(self, a=1, *args, **kw):\n        self.a = a  # comment\n        print(f\"{a!r:>10}\")\n"),
    ("c_code", "int main(int argc, char **argv) {\n    for (int i = 0; i < argc; ++i) printf(\"%s\\n\", argv[i]);\n    return 0;\n}\n"),
    ("perl_code", "my %h = (a => 1); while (<STDIN>) { s/\\s+$//; print \"$_\\n\" if /^=head\\d/; }"),
    ("punctuation", "Hello!!! What?! ... --- ((( ))) [[x]] {{y}} <<z>> @#$%^&*_+=|\\/~`"),
    ("urls_paths", "See https://docs.python.org/3/library/re.html#re.sub or /usr/share/perl/5.36.0/pod/perlre.pod"),
    ("accented_latin", "Café naïve façade Ångström Żółć señor über straße ÉCOLE"),
    ("cyrillic_greek", "Привет, мир! Ελληνικά γράμματα αβγ ΑΒΓ"),
    ("cjk", "你好，世界！日本語のテキストです。한국어 텍스트"),
    ("emoji", "I ❤️ 🍕 and 👨‍👩‍👧‍👦 family 🇫🇷 flags 👍🏽"),
    ("mixed_scripts_digits", "abc123def ４５６ 七八九 x²+y³ ½ ⅓ № ①②③"),
    ("combining_marks", "e\u0301 a\u0308 n\u0303 \u0915\u093f\u0928\u094d\u0928 \u0645\u0631\u062d\u0628\u0627"),
    ("special_tokens_inline", "]~!b[]~b]user\nhi[e~[\n]~b]ai\n<think>\nhmm\n</think>\n\nok[e~[\n"),
    ("special_tokens_adjacent_text", "x]~b]y[e~[z<think>w</think>v<minimax:tool_call>u</minimax:tool_call>"),
    ("special_like_but_not", "]~b [e~ <thinking> </think > <minimax:tool_call ]<]minimax[>["),
    ("fim_tokens", "<fim_prefix>def f():\n<fim_suffix>\n    return 1<fim_middle>"),
    ("long_word", "Pneumonoultramicroscopicsilicovolcanoconiosis antidisestablishmentarianism"),
    ("apostrophe_variants", "rock 'n' roll, O'Neil's, ’curly’ quotes, “double”"),
    ("pod_text", "=head1 NAME\n\nperlfunc - Perl builtin functions\n\n=item chomp( LIST )\n\nC<chomp> removes any trailing string that corresponds to C<$/>."),
    ("rst_text", ".. function:: re.sub(pattern, repl, string, count=0, flags=0)\n\n   Return the string obtained by replacing the leftmost *non-overlapping*\n   occurrences of ``pattern``."),
    ("control_chars", "a\x00b\x01c\x7fd\x1be[0m"),
    ("invalid_surrogate_free_unicode", "\u00a0nbsp\u2009thin\u3000ideographic\u200bzw"),
]

CHAT_CASES = [
    ("chat_default_system_gen_prompt", [{"role": "user", "content": "test"}], None, True),
    ("chat_system_user_gen_prompt",
     [{"role": "system", "content": "You are a helpful assistant. Your name is MiniMax-M2.7 and is built by MiniMax."},
      {"role": "user", "content": "test"}], None, True),
    ("chat_multi_turn_with_reasoning",
     [{"role": "system", "content": "Answer briefly."},
      {"role": "user", "content": "What does chomp do in Perl?"},
      {"role": "assistant", "content": "It removes the trailing newline."},
      {"role": "user", "content": "And in Python?"},
      {"role": "assistant", "reasoning_content": "Python has str.rstrip.", "content": "Use s.rstrip('\\n')."}],
     None, False),
    ("chat_tool_call",
     [{"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "content": "",
       "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]},
      {"role": "tool", "content": "{\"temp\": 21}"},
      {"role": "tool", "content": "{\"rain\": false}"}],
     [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather",
                                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}}}}],
     True),
    ("chat_unicode",
     [{"role": "user", "content": "翻译：你好 👋 — «Bonjour» ½"}], None, True),
]


def cmd_tokenizer(args):
    import tokenizers
    from tokenizers import Tokenizer
    import transformers
    from transformers import AutoTokenizer
    tok = Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(MODEL_DIR)
    cases = []
    for name, text in CONFORMANCE_TEXTS:
        enc = tok.encode(text, add_special_tokens=False)
        dec = tok.decode(enc.ids, skip_special_tokens=False)
        cases.append({"name": name, "text": text, "ids": enc.ids, "tokens": enc.tokens,
                      "decode_roundtrip": dec == text})
    for name, msgs, tools, gen in CHAT_CASES:
        text = hf.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=gen)
        enc = tok.encode(text, add_special_tokens=False)
        hf_ids = hf(text, add_special_tokens=False)["input_ids"]
        assert hf_ids == enc.ids, name
        cases.append({"name": name, "messages": msgs, "tools": tools, "add_generation_prompt": gen,
                      "text": text, "ids": enc.ids, "tokens": enc.tokens,
                      "decode_roundtrip": tok.decode(enc.ids, skip_special_tokens=False) == text})
    # whole-corpus style check: held-out stream prefix as one string
    out = {
        "made_by": "scripts/make-model-reference.py tokenizer",
        "tokenizers_version": tokenizers.__version__,
        "transformers_version": transformers.__version__,
        "tokenizer": MODEL_DIR + "/tokenizer.json",
        "encode_call": "Tokenizer.from_file(tokenizer.json).encode(text, add_special_tokens=False)",
        "cases": cases,
    }
    os.makedirs(GOLDEN, exist_ok=True)
    path = os.path.join(GOLDEN, "tokenizer-conformance.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    bad = [c["name"] for c in cases if not c["decode_roundtrip"]]
    print(f"{len(cases)} cases -> {path}; decode round trip fails for: {bad}")


# ----------------------------------------------------------------------------------------
def dequant(q, s):
    out_f, in_f = q.shape
    se = s.repeat_interleave(BLOCK, 0)[:out_f].repeat_interleave(BLOCK, 1)[:, :in_f]
    return (q.float() * se).to(torch.bfloat16)


def load_checkpoint(model_dir):
    """-> {checkpoint name: tensor} with every F8 weight dequantized to BF16; and dtype report."""
    from safetensors import safe_open
    idx = json.load(open(os.path.join(model_dir, "model.safetensors.index.json")))
    raw = {}
    for fn in sorted(set(idx["weight_map"].values())):
        with safe_open(os.path.join(model_dir, fn), framework="pt") as f:
            assert f.metadata() == {"format": "pt"}, f.metadata()
            for k in f.keys():
                raw[k] = f.get_tensor(k)
    assert set(raw) == set(idx["weight_map"]), "index does not match shards"
    out = {}
    for k, v in raw.items():
        if k.endswith(".weight_scale_inv"):
            continue
        if v.dtype == torch.float8_e4m3fn:
            out[k] = dequant(v, raw[k[:-len("weight")] + "weight_scale_inv"])
        else:
            out[k] = v
    return out


def to_hf_names(ck, cfg):
    L, E, I = cfg.num_hidden_layers, cfg.num_local_experts, cfg.intermediate_size
    sd = {}
    for k, v in ck.items():
        if ".block_sparse_moe.experts." in k:
            continue
        sd[k.replace(".block_sparse_moe.", ".mlp.")] = v
    for l in range(L):
        p = f"model.layers.{l}.block_sparse_moe.experts."
        gu = torch.stack([torch.cat([ck[p + f"{e}.w1.weight"], ck[p + f"{e}.w3.weight"]], 0) for e in range(E)])
        dn = torch.stack([ck[p + f"{e}.w2.weight"] for e in range(E)])
        sd[f"model.layers.{l}.mlp.experts.gate_up_proj"] = gu
        sd[f"model.layers.{l}.mlp.experts.down_proj"] = dn
    return sd


def pick_sequences(held):
    """4 windows of SEQ_LEN tokens from the held-out stream: 3 starting at document starts,
    1 straddling a document boundary (contains the EOS separator)."""
    eos = np.nonzero(held == EOS_ID)[0]
    starts = [0] + list(eos + 1)
    seqs, picked = [], []
    for s in starts:
        if len(seqs) == 3:
            break
        e = held[s:s + SEQ_LEN]
        if e.size == SEQ_LEN and EOS_ID not in e:
            seqs.append(e)
            picked.append(int(s))
    # boundary window: the EOS roughly in the middle
    for b in eos[10:]:
        s = int(b) - SEQ_LEN // 2
        if s > picked[-1] + SEQ_LEN:
            seqs.append(held[s:s + SEQ_LEN])
            picked.append(s)
            break
    return np.stack(seqs).astype(np.int64), picked


def cmd_model(args):
    from transformers import AutoConfig, MiniMaxM2ForCausalLM
    import transformers
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")

    cfg = AutoConfig.from_pretrained(args.model_dir)
    assert cfg.model_type == "minimax_m2"
    rp = cfg.rope_parameters
    assert rp.get("partial_rotary_factor") == 0.5, rp
    cfg._attn_implementation = "eager"
    cfg._experts_implementation = "eager"
    ck = load_checkpoint(args.model_dir)
    sd = to_hf_names(ck, cfg)
    model = MiniMaxM2ForCausalLM(cfg)
    missing, unexpected = model.load_state_dict(sd, strict=True), None
    model = model.float().to(device).eval()
    assert model.model.rotary_emb.inv_freq.numel() == 16
    for l in range(cfg.num_hidden_layers):
        b = model.model.layers[l].mlp.e_score_correction_bias
        assert b.abs().max() > 0, "routing bias is zero"

    held = np.fromfile(os.path.join(TOK_DIR, "heldout.u16"), dtype="<u2").astype(np.int64)
    ids_np, starts = pick_sequences(held)
    ids = torch.from_numpy(ids_np).to(device)

    # hooks: embeddings, every decoder layer, final norm (seq 0); router choices (seq 0)
    hid, router = {}, {}
    hooks = [model.model.embed_tokens.register_forward_hook(lambda m, i, o: hid.__setitem__("emb", o.detach())),
             model.model.norm.register_forward_hook(lambda m, i, o: hid.__setitem__("norm", o.detach()))]
    for li, layer in enumerate(model.model.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, li=li: hid.__setitem__(f"layer{li}", (o[0] if isinstance(o, tuple) else o).detach())))
        hooks.append(layer.mlp.gate.register_forward_hook(
            lambda m, i, o, li=li: router.__setitem__(li, (o[1].detach(), o[2].detach()))))
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    for h in hooks:
        h.remove()
    L = cfg.num_hidden_layers
    hidden = torch.stack([hid["emb"][0]] + [hid[f"layer{l}"][0] for l in range(L)] + [hid["norm"][0]])
    # router outputs are flattened over (batch, seq): take seq 0's rows
    r_idx = torch.stack([router[l][1].view(N_SEQ, SEQ_LEN, -1)[0] for l in range(L)])
    r_w = torch.stack([router[l][0].view(N_SEQ, SEQ_LEN, -1)[0] for l in range(L)])
    order = torch.argsort(r_idx, dim=-1)           # store experts sorted by id (topk(sorted=False))
    r_idx = torch.gather(r_idx, -1, order)
    r_w = torch.gather(r_w, -1, order)

    lse = torch.logsumexp(logits, dim=-1)
    logp = logits - lse[..., None]
    nll = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    topv, topi = torch.topk(logits, TOPK, dim=-1)

    ref = {
        "input_ids": ids.to(torch.int32).cpu(),
        "topk_values": topv.cpu().contiguous(),
        "topk_indices": topi.to(torch.int32).cpu().contiguous(),
        "logsumexp": lse.cpu().contiguous(),
        "nll": nll.cpu().contiguous(),
        "logits_seq0": logits[0, :FULL_POS].cpu().contiguous(),
    }
    hs = {
        "hidden_seq0": hidden[:, :FULL_POS].float().cpu().contiguous(),
        "router_topk_index_seq0": r_idx[:, :FULL_POS].to(torch.int32).cpu().contiguous(),
        "router_topk_weight_seq0": r_w[:, :FULL_POS].float().cpu().contiguous(),
    }
    meta = {"made_by": "scripts/make-model-reference.py model", "model": args.model_dir,
            "dtype": "float32 forward of BF16(float(fp8)*scale_inv) weights", "device": str(device),
            "torch": torch.__version__, "transformers": transformers.__version__, "format": "pt"}
    from safetensors.torch import save_file
    os.makedirs(args.out, exist_ok=True)
    save_file(ref, os.path.join(args.out, "reference.safetensors"), metadata=meta)
    save_file(hs, os.path.join(args.out, "hidden-states.safetensors"), metadata=meta)
    for fn in ("reference.safetensors", "hidden-states.safetensors"):
        os.chmod(os.path.join(args.out, fn), 0o644)

    # held-out perplexity, f32, 512-token windows
    seq = 512
    n = (held.size - 1) // seq
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for i in range(0, n, 16):
            js = range(i, min(n, i + 16))
            x = torch.stack([torch.from_numpy(held[j * seq:j * seq + seq]) for j in js]).to(device)
            y = torch.stack([torch.from_numpy(held[j * seq + 1:j * seq + seq + 1]) for j in js]).to(device)
            lg = model(input_ids=x).logits.float()
            tot += torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), y.reshape(-1), reduction="sum").item()
            cnt += y.numel()
    ppl = math.exp(tot / cnt)
    seq_ppl = [math.exp(float(nll[i].mean())) for i in range(N_SEQ)]
    ev = {"made_by": "scripts/make-model-reference.py model", "device": str(device),
          "device_name": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
          "torch": torch.__version__, "transformers": transformers.__version__,
          "heldout_ppl_f32_dequantized": ppl, "heldout_tokens_scored": cnt, "window": seq,
          "sequence_starts_in_heldout_stream": starts, "sequence_ppl": seq_ppl,
          "top1_seq0_first8": topi[0, :8, 0].tolist()}
    print(json.dumps(ev, indent=1))

    if args.hf_load_check:
        try:
            ev["hf_fp8_load_check"] = hf_load_check(args.model_dir, sd, cfg, ids, device)
        except Exception as e:  # report, do not fail the run
            ev["hf_fp8_load_check"] = {"error": f"{type(e).__name__}: {e}"}
        print("hf load check:", json.dumps(ev["hf_fp8_load_check"]))
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(ev, f, indent=1)
        f.write("\n")


def hf_load_check(model_dir, sd, cfg, ids, device):
    """Load the FP8 directory with transformers' own FP8 quantizer (dequantize=True) and
    compare the loaded weights and bf16 logits with our hand dequantization."""
    from transformers import AutoModelForCausalLM, FineGrainedFP8Config, MiniMaxM2ForCausalLM
    qc = FineGrainedFP8Config(dequantize=True, weight_block_size=(BLOCK, BLOCK),
                              modules_to_not_convert=["gate", "e_score_correction_bias", "lm_head"])
    hf = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=qc, dtype=torch.bfloat16,
                                              attn_implementation="eager", experts_implementation="eager").to(device).eval()
    hsd = hf.state_dict()
    res = {"rope_parameters": dict(hf.config.rope_parameters), "inv_freq_len": int(hf.model.rotary_emb.inv_freq.numel())}
    diffs = {}
    for k, v in sd.items():
        if k not in hsd:
            diffs[k] = "missing"
            continue
        d = (hsd[k].float().cpu() - v.float()).abs().max().item()
        if d != 0:
            diffs[k] = d
    res["weights_differing_from_hand_dequant"] = len(diffs)
    res["examples"] = dict(list(diffs.items())[:6])
    ours = MiniMaxM2ForCausalLM(cfg)
    ours.load_state_dict(sd, strict=True)
    ours = ours.to(torch.bfloat16)
    for name, t in list(ours.named_parameters()) + list(ours.named_buffers()):
        if name in hsd and hsd[name].dtype != t.dtype:   # e.g. the F32 router gate the quantizer keeps
            t.data = sd[name].to(hsd[name].dtype)
    hbuf = dict(hf.named_buffers())
    for name, t in ours.named_buffers():   # non-persistent rotary buffers: .to(bf16) rounded them
        if "inv_freq" in name:
            t.data = hbuf[name].detach().cpu().clone()
    res["hf_impl"] = [hf.config._attn_implementation, hf.config._experts_implementation]
    res["inv_freq_dtype"] = str(hbuf["model.rotary_emb.inv_freq"].dtype)
    ours = ours.to(device).eval()
    res["hf_dtypes"] = sorted({f"{k.split('.')[-2]}.{k.split('.')[-1]}:{str(v.dtype)[6:]}" for k, v in hsd.items() if "layers.0." in k})
    with torch.no_grad():
        a = hf(input_ids=ids).logits.float()
        b = ours(input_ids=ids).logits.float()
    res["bf16_logits_max_abs_diff"] = (a - b).abs().max().item()
    res["bf16_top1_agreement"] = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    return res


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tokenizer")
    m = sub.add_parser("model")
    m.add_argument("--model-dir", default=MODEL_DIR)
    m.add_argument("--out", default=GOLDEN)
    m.add_argument("--cpu", action="store_true")
    m.add_argument("--hf-load-check", action="store_true")
    args = ap.parse_args()
    {"tokenizer": cmd_tokenizer, "model": cmd_model}[args.cmd](args)


if __name__ == "__main__":
    main()
