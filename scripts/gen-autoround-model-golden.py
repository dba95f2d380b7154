#!/usr/bin/env python3
"""AutoRound W4A16 end-to-end reference for the embedded MiniMax-M2 (models/tiny-minimax-m2):
auto-round 0.16.1's AutoRound on the same calibration tokens fourbit is given ->
tests/golden/autoround-model/ (the reference side of issue 16's acceptance; the C test that
compares fourbit's AutoRound with it is not part of this script).

Reference packages: the venv /work/venvs/a16 (auto-round 0.16.1 installed --no-deps over
/work/venvs/hq's site-packages through a .pth: torch 2.15.0 CPU, transformers 5.17.0, accelerate,
xxhash 4.1.0).

Steps:
 1. BF16 source: scripts/minimax_bf16.py's make_bf16 (every FP8 weight BF16(float(fp8) *
    scale_inv) per 128x128 tile, fp8-dequant's formula; no quantization_config).
 2. The model loaded as a user loads it: AutoModelForCausalLM.from_pretrained(bf16,
    dtype=torch.bfloat16) plus its tokenizer.
 3. Calibration: tests/golden/gptq-model/calib-ids.jsonl (64 x 256 ids, the GPTQ golden's), given
    to AutoRound as a list of 64 int64 tensors [1, 256] in file order. auto-round 0.16.1's
    LLM calibrator (auto_round/calibration/llm.py, calib) takes any non-str dataset as the
    dataloader itself: a tensor item is the input_ids as they are (no tokenizer call, no
    filtering except "shorter than seqlen is skipped", no concatenation, no shuffle); it stops
    after nsamples. It builds the attention mask from the tokenizer's pad token (ids != pad; the
    pad is 4089, the eos, which none of these ids is: auto-round would have cached it as -100)
    and always masks the last position ("some models treat an all-1 mask as None"), as for every
    user's tensor dataset. The script checks (and prints) that 64 x 256 input_ids were cached,
    equal to the file's ids in order (the last column, which auto-round always marks -100, aside),
    and stops otherwise. SignRound's own
    IndexSampler then draws the mini-batches (a seeded shuffle per pass): that is documented
    behaviour, kept.
 4. AutoRound(model, tokenizer, scheme="W4A16" (int4 sym, group 128, fp16 scales),
    iters=200 | 0, nsamples=64, seqlen=256, batch_size=8, seed=42, lr default (1/iters = 0.005,
    minmax_lr the same), enable_torch_compile=False, device_map="cpu",
    ignore_layers=<router gates>),
    quantize_and_save(DIR, format="auto_round").
    Compute dtype: auto-round casts the model to its amp dtype, bf16 where the device supports
    bf16, else float32 with amp off ("amp is set to FALSE as the current cpu device does not
    support the 'bf16' data type", on this machine's CPU without avx512_bf16): the golden's run
    is float32 throughout (calibration, imatrix, optimized RTN's search, SignRound) on the
    bf16-rounded weights; "cpu_bf16" / "compute_dtype" in the JSON say which. On a CPU with bf16
    the bytes differ.
    What auto-round 0.16.1 quantizes on MiniMax-M2 by default (transformers 5.17's modeling):
    every nn.Linear inside the decoder blocks (model.layers.N): attention q/k/v/o_proj, and the
    routed experts, which auto-round unfuses (modeling/fused_moe: transformers keeps the
    experts as fused 3-D gate_up_proj / down_proj Parameters; auto-round replaces them by one
    nn.Linear per expert and projection, saved as experts.E.gate_proj / up_proj / down_proj =
    the checkpoint's w1 / w3 / w2): 112 Linears on this model. It skips lm_head
    (quant_lm_head=False: "quantized 112/113, unquantized layers: lm_head"), the embedding and
    the norms (not Linear), and the router gate: in transformers 5.17 block_sparse_moe is named
    mlp in the model and mlp.gate is a MiniMaxM2TopKRouter, not an nn.Linear, which
    auto-round's predefined ignore list for the model names anyway ("Using predefined
    ignore_layers: model.layers.[0-3].mlp.gate", exported as 16-bit extra_config entries); it
    is named in ignore_layers here too (the recipe's ignore list, as for GPTQ).
    e_score_correction_bias is a buffer. Recorded in the golden JSON: the gates found
    ("gates_in_model"), the 2-D weights left unquantized in the layers
    ("unquantized_2d_weights_in_layers") and the exported quantization_config.
    iters=0 is auto-round's "RTN mode": optimized RTN (opt_rtn: a per-group scale search with
    an importance matrix) for attention, and, for MoE experts, plain RTN (its default
    disables opt-RTN for experts); recorded as the second reference.
 5. Stored: per quantized module the xxh3-128 of qweight, qzeros and scales, auto-round's own
    per-block losses (the logged "loss iter 0 -> iter best", at full precision from its
    per-iteration debug records, and every iteration's) and the wall time of each block, the
    versions; the bytes of
    qweight / qzeros / scales of the modules in KEEP (layers 0 and 3: q/k/v/o and expert 0) in
    kept-<run>.safetensors. With --keep DIR the reference checkpoints stay in DIR
    (BENCHMARKS.md's KL figures use them, grafted by scripts/graft-quantized.py).

Run from the repository root (iters=200 took 10.4 and 16.8 min on the shared 2-core machine;
two runs gave identical bytes and losses):
    /work/venvs/a16/bin/python scripts/gen-autoround-model-golden.py --keep /tmp/arref
"""
import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time

import torch
import xxhash
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from minimax_bf16 import make_bf16  # noqa: E402

import auto_round  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

SRC = "models/tiny-minimax-m2"
OUT = "tests/golden/autoround-model"
IDS = "tests/golden/gptq-model/calib-ids.jsonl"
# transformers 5.17 names MiniMax-M2's block_sparse_moe "mlp" in the model (auto-round writes the
# checkpoint name back on export): the router gate is model.layers.N.mlp.gate there
GATE = r".*(block_sparse_moe|mlp)\.gate$"
KEEP = [f"model.layers.{l}.{m}" for l in (0, 3) for m in
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "block_sparse_moe.experts.0.w1", "block_sparse_moe.experts.0.w2", "block_sparse_moe.experts.0.w3")]
SUFFIXES = (".qweight", ".qzeros", ".scales")
RUNS = {"iters200": 200, "iters0": 0}


def xxh(b):
    return xxhash.xxh3_128_hexdigest(b)


class LossLog(logging.Handler):
    """Collects auto-round's per-iteration debug records ("iter %d loss: %.3e lr: %s", whose
    args hold the float itself) and the per-block info line, with the time of each."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.blocks, self.cur, self.t0 = [], [], time.time()

    def emit(self, r):
        msg = r.getMessage()
        if r.levelno == logging.DEBUG and isinstance(r.msg, str) and r.msg.startswith("iter %d loss"):
            self.cur.append(float(r.args[1]))
        elif "layers in the block" in msg:
            now = time.time()
            b = {"message": msg, "wall_s": round(now - self.t0, 1)}
            if self.cur:
                best = min(range(len(self.cur)), key=lambda i: (self.cur[i], i))
                b.update({"init_loss": self.cur[0], "best_iter": best, "best_loss": self.cur[best],
                          "iters_run": len(self.cur), "iter_losses": self.cur})
            self.blocks.append(b)
            self.cur, self.t0 = [], now


def run(bf16, out, iters, ids, threads):
    from auto_round import AutoRound
    from auto_round.calibration.llm import LLMCalibrator
    torch.set_num_threads(threads)
    seen = []
    calib = LLMCalibrator.calib

    def calib_seen(self, nsamples, bs):  # what calibration cached, before auto-round clears it
        r = calib(self, nsamples, bs)
        seen.extend(self.inputs.get("input_ids", []))
        return r
    LLMCalibrator.calib = calib_seen
    log = logging.getLogger("autoround")
    for h in log.handlers:  # the console keeps auto-round's own level; only ours sees DEBUG
        h.setLevel(max(log.level, logging.INFO))
    cap = LossLog()
    log.addHandler(cap)
    log.setLevel(logging.DEBUG)

    model = AutoModelForCausalLM.from_pretrained(bf16, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(bf16)
    gates = [n for n, _ in model.named_modules() if re.match(GATE, n)]
    data = [torch.tensor([x], dtype=torch.int64) for x in ids]
    ar = AutoRound(model, tokenizer=tok, scheme="W4A16", dataset=data, iters=iters, nsamples=len(ids), seqlen=len(ids[0]),
                   batch_size=8, seed=42, enable_torch_compile=False, device_map="cpu",
                   ignore_layers=",".join(gates))
    t0 = time.time()
    ar.quantize_and_save(out + ".tmp", format="auto_round")
    total = time.time() - t0
    log.removeHandler(cap)
    LLMCalibrator.calib = calib
    # auto-round writes into a subfolder named after the scheme (bf16-w4g128): moved up to out
    sub = [d for d in os.listdir(out + ".tmp") if os.path.exists(os.path.join(out + ".tmp", d, "config.json"))]
    assert len(sub) == 1, sub
    os.rename(os.path.join(out + ".tmp", sub[0]), out)
    shutil.rmtree(out + ".tmp")

    # what calibration actually cached: the ids handed over, in order, not re-tokenized
    c = torch.cat(seen, 0)
    want = torch.tensor(ids)
    same = c.shape == want.shape and bool(torch.equal(c[:, :-1], want[:, :-1]))  # last id: -100
    print(f"calibration cached input_ids {tuple(c.shape)}, equal to {IDS} in order: {same}")
    if not same:
        sys.exit("auto-round did not calibrate on the ids given")
    info = {"wall_s": round(total, 1), "blocks": cap.blocks, "gates_in_model": gates,
            "cached_input_ids": [list(c.shape), same]}
    qcfg = json.load(open(os.path.join(out, "config.json"))).get("quantization_config", {})
    info["quantization_config"] = qcfg
    return info


def read_all(d):
    t = {}
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".safetensors"):
            with safe_open(os.path.join(d, fn), framework="pt") as f:
                for k in f.keys():
                    t[k] = f.get_tensor(k)
    return t


def ckpt_name(k):  # auto-round's unfused experts -> the checkpoint's w1 / w3 / w2
    if ".experts." in k:
        for a, b in ((".gate_proj.", ".w1."), (".up_proj.", ".w3."), (".down_proj.", ".w2.")):
            k = k.replace(a, b)
    return k


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="keep the BF16 source and the reference checkpoints here")
    ap.add_argument("--reuse", action="store_true", help="with --keep: use the checkpoints already there")
    ap.add_argument("--samples", type=int, default=64, help="first N samples of calib-ids.jsonl")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", default=",".join(RUNS), help="which of " + ",".join(RUNS))
    ap.add_argument("--no-golden", action="store_true", help="only make the reference checkpoints (--keep)")
    args = ap.parse_args()
    assert auto_round.__version__ == "0.16.1", auto_round.__version__
    ids = [json.loads(l)["input_ids"] for l in open(IDS) if l.strip()][:args.samples]
    assert len(ids) == args.samples and all(len(x) == len(ids[0]) for x in ids)
    print(f"calibration ids: {len(ids)} x {len(ids[0])} from {IDS}")
    work = args.keep or tempfile.mkdtemp(prefix="fb-autoround-model-")
    os.makedirs(work, exist_ok=True)
    bf16 = os.path.join(work, "bf16")
    if not (args.reuse and os.path.exists(os.path.join(bf16, "config.json"))):
        make_bf16(SRC, bf16)
    jpath = os.path.join(OUT, "autoround-model.json")
    doc = json.load(open(jpath)) if os.path.exists(jpath) else {}
    doc.update({"generator": "scripts/gen-autoround-model-golden.py", "source": SRC, "calibration_ids": IDS,
                "auto_round": auto_round.__version__, "torch": torch.__version__,
                "transformers": transformers.__version__, "scheme": "W4A16", "format": "auto_round",
                "model_dtype": "bfloat16", "samples": len(ids), "seqlen": len(ids[0]), "batch_size": 8,
                "seed": 42, "lr": "default: 1/iters (0.005 for 200), minmax_lr the same", "device": "cpu", "threads": args.threads,
                "ignore": ["lm_head (auto-round default)", GATE]})
    # the test can tell a retrained model from a wrong quantizer
    doc["source_files"] = {fn: xxh(open(os.path.join(SRC, fn), "rb").read()) for fn in sorted(os.listdir(SRC))
                           if fn.endswith(".safetensors")}
    doc["calibration_ids_xxh3"] = xxh(open(IDS, "rb").read())
    # auto-round 0.16.1 casts the model to its amp dtype: bf16 where the device supports it, else
    # float32 with amp off (this machine's CPU has no avx512_bf16: the whole run, calibration,
    # optimized RTN and SignRound, is float32 on the bf16-rounded weights). A machine with bf16
    # gives other bytes.
    from auto_round.utils.device import CpuInfo
    doc["cpu_bf16"] = bool(CpuInfo().bf16)
    doc["compute_dtype"] = "bfloat16 (amp)" if doc["cpu_bf16"] else "float32 (amp off: no bf16 on this CPU)"
    doc.setdefault("runs", {})
    for rname in args.runs.split(","):
        iters = RUNS[rname]
        out = os.path.join(work, f"ar-w4a16-{rname}")
        info = None
        if not (args.reuse and os.path.exists(os.path.join(out, "config.json"))):
            info = run(bf16, out, iters, ids, args.threads)
            with open(os.path.join(out, "fb-run-info.json"), "w") as f:
                json.dump(info, f, indent=1)
        else:
            info = json.load(open(os.path.join(out, "fb-run-info.json")))
        if args.no_golden:
            continue
        t = read_all(out)
        mods = sorted({k[:-len(".qweight")] for k in t if k.endswith(".qweight")})
        per, blobs = {}, {}
        for m in mods:
            per[ckpt_name(m + ".")[:-1]] = {s: xxh(t[m + s].contiguous().view(torch.uint8).numpy().tobytes())
                                             for s in SUFFIXES if m + s in t}
            if ckpt_name(m + ".")[:-1] in KEEP:
                for s in SUFFIXES:
                    if m + s in t:
                        blobs[ckpt_name(m + s)] = t[m + s].contiguous().clone()
        os.makedirs(OUT, exist_ok=True)
        save_file(blobs, os.path.join(OUT, f"kept-{rname}.safetensors"), metadata={"format": "pt"})
        unq = sorted(k for k in t if k.endswith(".weight") and "layers." in k and t[k].dim() == 2)
        doc["runs"][rname] = {"iters": iters, "wall_s": info["wall_s"], "blocks": info["blocks"],
                              "cached_input_ids": info.get("cached_input_ids"),
                              "gates_in_model": info["gates_in_model"],
                              "quantization_config": info["quantization_config"],
                              "quantized_modules": len(mods), "unquantized_2d_weights_in_layers": unq,
                              "modules": per}
        print(f"{rname}: {len(mods)} quantized modules, {info['wall_s']} s")
    if not args.no_golden:
        with open(jpath, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    sys.exit(main())
