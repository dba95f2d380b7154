#!/usr/bin/env python3
"""Golden cases for target/ignore matching (tests/golden/match/cases.json) and for the
quantization_config compressed-tensors writes (tests/golden/match/qconfig.json).

The expected answers come from compressed-tensors' own matching functions and from Python's
`re`, never from fourbit:
  compressed_tensors.utils.match.match_name   (name half: "re:" -> re.match, else equality)
  compressed_tensors.utils.match.is_match     (name or class in the module's MRO)
  compressed_tensors.utils.match.match_targets (priority: exact, regex, class)
  re.match / re.compile                        (raw regex cases, and which patterns are errors)

Pinned versions (the venv /work/venvs/hq: llmcompressor 0.14.0.1, compressed-tensors 0.19.0, torch
2.15 CPU; plus auto-round 0.16.1 --no-deps), Python 3.11.7. Until 2026-12 these goldens came from
compressed-tensors 0.18.0; regenerated with 0.19.0 every expectation is the same apart from the
"version" key (the config through llm-compressor's resolve_quantization_config, see below).

qconfig.json: a toy MiniMax-M2 module tree (same module names, classes and registration order
as the MiniMax remote code: router gate = nn.Linear, experts.E.w1/w2/w3) gets a recipe's
config (llm-compressor's QuantizationModifier.resolve_quantization_config) through
compressed-tensors' own apply_quantization_config, is marked compressed, and
ModelCompressor.from_pretrained_model(...).update_config() writes config.json exactly as the
oneshot path does. The toy's state-dict (names, shapes) is stored with it so the C test builds
its plan from the same tensors.

The AutoRound config (model-free flow) comes from auto-round's own
auto_round.utils.model_free_utils._build_quantization_config (auto-round 0.16.1, wheel
unpacked with --no-deps; pass its directory in AUTOROUND_SRC if it is not importable), fed
with the toy's quantized / kept layers exactly as its model-free compressor derives them.

Run from the repository root:  python3 scripts/gen-match-golden.py
"""
import json
import os
import re
import sys

import torch
from torch import nn

import compressed_tensors
from compressed_tensors.utils.match import is_match, match_name, match_targets

OUT = os.path.join("tests", "golden", "match", "cases.json")
OUT_QC = os.path.join("tests", "golden", "match", "qconfig.json")


class MiniMaxM2RMSNorm(nn.Module):  # same class name as the remote code / transformers
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))


def make_module(cls):
    return {"Linear": lambda: nn.Linear(1, 1, bias=False),
            "Embedding": lambda: nn.Embedding(1, 1),
            "MiniMaxM2RMSNorm": MiniMaxM2RMSNorm}[cls]()


# (module name, class, ndim of its .weight): MiniMax-M2 names (spec/loaders §0), a dense
# llama-style MLP and look-alikes that trip careless regexes.
MODULES = [
    ("model.embed_tokens", "Embedding", 2),
    ("lm_head", "Linear", 2),
    ("model.norm", "MiniMaxM2RMSNorm", 1),
    ("model.layers.0.input_layernorm", "MiniMaxM2RMSNorm", 1),
    ("model.layers.0.post_attention_layernorm", "MiniMaxM2RMSNorm", 1),
    ("model.layers.0.self_attn.q_proj", "Linear", 2),
    ("model.layers.0.self_attn.k_proj", "Linear", 2),
    ("model.layers.0.self_attn.v_proj", "Linear", 2),
    ("model.layers.0.self_attn.o_proj", "Linear", 2),
    ("model.layers.0.self_attn.q_norm", "MiniMaxM2RMSNorm", 1),
    ("model.layers.0.self_attn.k_norm", "MiniMaxM2RMSNorm", 1),
    ("model.layers.0.block_sparse_moe.gate", "Linear", 2),
    ("model.layers.0.block_sparse_moe.experts.0.w1", "Linear", 2),
    ("model.layers.0.block_sparse_moe.experts.0.w2", "Linear", 2),
    ("model.layers.0.block_sparse_moe.experts.0.w3", "Linear", 2),
    ("model.layers.12.block_sparse_moe.experts.255.w1", "Linear", 2),
    ("model.layers.61.block_sparse_moe.gate", "Linear", 2),
    ("model.layers.61.self_attn.o_proj", "Linear", 2),
    ("model.layers.3.mlp.gate", "Linear", 2),
    ("model.layers.3.mlp.gate_proj", "Linear", 2),
    ("model.layers.3.mlp.up_proj", "Linear", 2),
    ("model.layers.3.mlp.down_proj", "Linear", 2),
    ("model.layers.3.mlp.experts.7.gate_proj", "Linear", 2),
    ("model.layers.3.mlp.shared_expert_gate", "Linear", 2),
    ("model.layers.10.self_attn.q_proj", "Linear", 2),
]

ENTRIES = [
    # plain entries: exact names and classes
    "lm_head", "model.embed_tokens", "embed_tokens", "Linear", "Embedding", "MiniMaxM2RMSNorm",
    "Module", "linear", "gate", "model.layers.0.block_sparse_moe.gate", "LinearBase",
    # regexes from recipes and loaders
    r"re:.*block_sparse_moe\.gate$", r"re:.*block_sparse_moe.gate", r"re:.*mlp.gate",
    r"re:.*mlp\.gate$", r"re:.*gate$", r"re:.*gate", r"re:.*lm_head", r"re:lm_head$",
    r"re:^lm_head$", r"re:^model\.embed_tokens$", r"re:.*embed_tokens$",
    r"re:.*self_attn\.(q|k|v|o)_proj$", r"re:.*self_attn\.[qkv]_proj$",
    r"re:model.layers.\d+.self_attn.(q|k|v|o)_proj$",
    r"re:model.layers.\d+.block_sparse_moe.experts.\d+.w[1-3]$",
    r"re:.*(gate_up|gate|up|down)_proj$", r"re:.*experts.*", r"re:.*experts\.\d+\.w[13]$",
    r"re:model\.layers\.[0-9]\.", r"re:model\.layers\.\d{2}\.", r"re:model\.layers\.(?:1\d|61)\.",
    r"re:.*(?<!shared_expert_)gate$", r"re:.*\.gate(?!_)", r"re:.*\bgate\b", r"re:.*norm$",
    r"re:.*_proj\Z", r"re:(?i).*LM_HEAD", r"re:model", r"re:layers", r"re:", r"re:.*",
    r"re:.*\.(w1|w3)$|lm_head", r"re:.*[^_]gate$", r"re:.*q_proj$|.*k_proj$",
    r"re:model\.layers\.0\.self_attn\.q_proj", r"re:.*experts\.\d{1,3}\.w2$",
    r"re:(model\.)?layers\.3\.mlp\.(gate|up)_proj$", r"re:.*\x2egate$", r"re:.*\u002egate$",
    r"re:.*layers\.\d{,1}\.self", r"re:.*?_proj$", r"re:.*(?P<p>[qk])_proj$",
    r"re:.*(?P<a>\d)\.(?P=a)", r"re:(?x) .* gate $", r"re:[.]*model", r"re:[]a-z.]*$",
    r"re:.*\.gate$\n",
]

# Patterns Python rejects (fourbit must reject them too; the message is ours).
BAD_ENTRIES = [
    r"re:(", r"re:[a-z", r"re:*a", r"re:a{2,1}", r"re:\p{L}", r"re:.*\K", r"re:(?<name>a)",
    r"re:a(?i)b", r"re:\x4", r"re:.*\Qa\E", r"re:a**", r"re:\h", r"re:(?P<1>a)", "re:\\",
]

# Raw re.match cases on arbitrary subjects (newlines, Unicode).
RAW = [
    (r"abc$", "abc\n"), (r"abc$", "abc\n\n"), (r"abc\Z", "abc\n"), (r"abc", "abcdef"),
    (r"a.c", "a\nc"), (r"\d+$", "\u0663\u0664"), (r"\w+$", "\u00e9t\u00e9"), (r"[\d]+$", "12"),
    (r"x{,2}y$", "xxy"), (r"x{,2}y$", "xxxy"), (r"a\x62c", "abc"), (r"a\u0062c", "abc"),
    (r"\bgate\b", "gate_proj"), (r"\bgate\b", "gate.x"), (r"(?s)a.c", "a\nc"),
    (r"^abc$", "abc"), (r"a$|b", "b"), (r"\v", "\x0b"), (r"\v", "\n"), (r"[\v]", "\x0b"),
    (r"\s", "\u00a0"), (r"a\$", "a$"), (r".*\.gate$", "m.gate"), (r"(?m)^b", "a\nb"),
    (r".*mlp.gate", "m.mlp.gate_proj"), (r".*mlp.gate", "m.mlp.gate"), (r"abc$", "abc\n"),
    (r"a|ab", "ab"), (r"(?:a|ab)", "ab"),
]


def main():
    cases = []
    for ent in ENTRIES:
        for name, cls, ndim in MODULES:
            mod = make_module(cls)
            cases.append({"entry": ent, "name": name, "class": cls,
                          "match_name": bool(match_name(name, ent)),
                          "is_match": bool(is_match(name, mod, ent))})
    bad = []
    for ent in BAD_ENTRIES:
        try:
            re.compile(ent[3:])
            sys.exit(f"expected {ent!r} to be rejected by Python re")
        except re.error as e:
            bad.append({"entry": ent, "python_error": str(e)})
    raw = [{"pattern": p, "subject": s, "match": re.match(p, s) is not None,
            "fullmatch": re.fullmatch(p, s) is not None} for p, s in RAW]
    # match_targets: the first element is the scheme llm-compressor picks
    lists = [
        ["Linear", r"re:.*self_attn\..*", "model.layers.0.self_attn.q_proj"],
        ["Linear", r"re:.*self_attn\..*"],
        [r"re:.*w1$", r"re:.*experts.*", "Linear"],
        [r"re:.*experts.*", r"re:.*w1$", "Linear"],
        ["Module", "Linear"],
        ["Linear", "Module"],
        ["Embedding", "lm_head"],
    ]
    ranked = []
    for tl in lists:
        for name, cls, ndim in MODULES:
            mt = match_targets(name, make_module(cls), tl)
            ranked.append({"targets": tl, "name": name, "class": cls,
                           "first": mt[0] if mt else None})
    doc = {"generator": "scripts/gen-match-golden.py",
           "compressed_tensors": compressed_tensors.__version__,
           "python": sys.version.split()[0],
           "modules": [{"name": n, "class": c, "ndim": d} for n, c, d in MODULES],
           "cases": cases, "bad": bad, "raw": raw, "ranked": ranked}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=0, ensure_ascii=True)
        f.write("\n")
    print(f"{OUT}: {len(cases)} cases, {len(bad)} bad, {len(raw)} raw, {len(ranked)} ranked")


# ---- quantization_config goldens ---------------------------------------------------------

HID, INTER, NQ, NKV, NEXP, NLAYER, VOCAB = 256, 128, 512, 128, 2, 3, 64


class Expert(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Linear(HID, INTER, bias=False)
        self.w2 = nn.Linear(INTER, HID, bias=False)
        self.w3 = nn.Linear(HID, INTER, bias=False)


class SparseMoe(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(HID, NEXP, bias=False)
        self.experts = nn.ModuleList([Expert() for _ in range(NEXP)])
        self.register_buffer("e_score_correction_bias", torch.zeros(NEXP))


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(HID, NQ, bias=False)
        self.k_proj = nn.Linear(HID, NKV, bias=False)
        self.v_proj = nn.Linear(HID, NKV, bias=False)
        self.o_proj = nn.Linear(NQ, HID, bias=False)
        self.q_norm = MiniMaxM2RMSNorm()
        self.k_norm = MiniMaxM2RMSNorm()


class DecoderLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn = Attention()
        self.block_sparse_moe = SparseMoe()
        self.input_layernorm = MiniMaxM2RMSNorm()
        self.post_attention_layernorm = MiniMaxM2RMSNorm()


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, HID)
        self.layers = nn.ModuleList([DecoderLayer() for _ in range(NLAYER)])
        self.norm = MiniMaxM2RMSNorm()


class ToyMiniMax(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = Inner()
        self.lm_head = nn.Linear(HID, VOCAB, bias=False)


GATE = r"re:.*block_sparse_moe\.gate$"
STD_IGNORE = ["lm_head", "model.embed_tokens", GATE]
RECIPES = {
    "nvfp4": {"scheme": "NVFP4", "ignore": STD_IGNORE},
    "nvfp4a16": {"scheme": "NVFP4A16", "ignore": STD_IGNORE},
    "w4a16": {"scheme": "W4A16", "ignore": STD_IGNORE},
    "experts_only": {"scheme": "NVFP4A16",
                     "ignore": STD_IGNORE + [r"re:.*self_attn\.(q|k|v|o)_proj$"]},
    "lm_head_only_ignored": {"scheme": "W4A16", "ignore": ["lm_head"]},
    # explicit config_groups: attention W4A16, experts NVFP4A16 (mixed precision)
    "mixed": {"config_groups": {
        "attn": {"targets": [r"re:.*self_attn\.(q|k|v|o)_proj$"],
                 "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                             "strategy": "group", "group_size": 128}},
        "experts": {"targets": ["Linear"],
                    "weights": {"num_bits": 4, "type": "float", "symmetric": True,
                                "strategy": "tensor_group", "group_size": 16,
                                "dynamic": False, "scale_dtype": "float8_e4m3fn"}}},
        "ignore": STD_IGNORE},
}


def autoround_config(model, recipe):
    if os.environ.get("AUTOROUND_SRC"):
        sys.path.insert(0, os.environ["AUTOROUND_SRC"])
    import auto_round
    from auto_round.utils.model_free_utils import _build_quantization_config
    qcfg = quant_config_for(recipe, model_out=model)
    sd = model.state_dict()
    quantized = [n for n, m in model.named_modules()
                 if getattr(m, "quantization_scheme", None) is not None]
    layers = [k[:-len(".weight")] for k, v in sd.items() if k.endswith(".weight") and v.dim() > 1]
    ignored = [l for l in layers if l not in set(quantized)]
    prefixes = []
    for name in quantized:  # model_free.py::_write_config_files
        parts = name.split(".")
        for i, part in enumerate(parts):
            if part.isdigit() and i > 0:
                prefixes.append(".".join(parts[:i]))
                break
    block = ",".join(dict.fromkeys(prefixes)) or None
    cfg = _build_quantization_config({"bits": 4, "group_size": 128, "sym": True,
                                      "data_type": "int"}, {}, [], quantized, ignored, block)
    return auto_round.__version__, cfg, json.dumps(cfg, indent=2)


def quant_config_for(recipe, model_out=None):
    import tempfile
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationConfig, QuantizationScheme,
                                                 QuantizationStatus, apply_quantization_config,
                                                 preset_name_to_scheme)
    torch.manual_seed(0)
    model = model_out if model_out is not None else ToyMiniMax()
    # llm-compressor's own QuantizationModifier.resolve_quantization_config (what oneshot applies):
    # from compressed-tensors 0.19 the presets leave weights.observer unset and llm-compressor
    # fills its default ("memoryless_minmax"), which is what a oneshot config.json says
    from llmcompressor.modifiers.quantization import QuantizationModifier
    if "scheme" in recipe:
        mod = QuantizationModifier(targets=["Linear"], scheme=recipe["scheme"], ignore=recipe["ignore"])
    else:
        mod = QuantizationModifier(config_groups={k: QuantizationScheme.model_validate(v)
                                                  for k, v in recipe["config_groups"].items()},
                                   ignore=recipe["ignore"])
    cfg = mod.resolve_quantization_config()
    apply_quantization_config(model, cfg, show_progress=False)
    for m in model.modules():
        if getattr(m, "quantization_scheme", None) is not None:
            m.quantization_status = QuantizationStatus.COMPRESSED
    mc = ModelCompressor.from_pretrained_model(model)
    with tempfile.TemporaryDirectory() as d:
        mc.update_config(d)
        with open(os.path.join(d, "config.json")) as f:
            qc = json.load(f)["quantization_config"]
    return qc


def main_qconfig():
    model = ToyMiniMax()
    tensors = [{"name": k, "shape": list(v.shape)} for k, v in model.state_dict().items()]
    out = {"generator": "scripts/gen-match-golden.py",
           "compressed_tensors": compressed_tensors.__version__,
           "tensors": tensors, "recipes": {}}
    for name, r in RECIPES.items():
        qc = quant_config_for(r)
        out["recipes"][name] = {"recipe": r, "quantization_config": qc,
                                "dump": json.dumps(qc, indent=2, sort_keys=True)}
    out["autoround"] = {}
    for name in ("w4a16", "lm_head_only_ignored"):
        ver, cfg, dump = autoround_config(ToyMiniMax(), RECIPES[name])
        out["autoround"][name] = {"version": ver, "config": cfg, "dump": dump}
    with open(OUT_QC, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"{OUT_QC}: {len(tensors)} tensors, {len(RECIPES)} recipes")


if __name__ == "__main__":
    main()
    main_qconfig()
