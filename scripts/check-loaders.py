#!/usr/bin/env python3
"""Proof that fourbit's outputs load in the real loaders and compute the right thing.

  python3 scripts/check-loaders.py DEMO_OUT [--device cuda|cpu] [--json OUT.json]

DEMO_OUT is the directory `make demo` writes (demo-out/): bf16 (fp8-dequant), nvfp4,
nvfp4a16, w4a16 (compressed-tensors) and w4a16-autoround. For each, Hugging Face transformers
(MiniMaxM2ForCausalLM.from_pretrained, with compressed-tensors / auto-round handling the
quantization_config) loads the checkpoint; loading reports every missing / unexpected /
mismatched key (each must be empty), then the model runs the 4 reference sequences of
tests/golden/model/reference.safetensors. Reported per checkpoint: max |logit diff| of the BF16
load against the committed f32 reference, and for the quantized ones the KL divergence of
their next-token distribution from the BF16 model's (mean / max), top-1 agreement and
perplexity. Needs: torch, transformers (with MiniMax-M2), compressed-tensors 0.18 (and
auto-round for the AutoRound checkpoint; skipped when absent).
"""
import argparse
import json
import os
import sys
import time

import torch
from safetensors.torch import load_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def load(path, device, dtype):
    from transformers import AutoModelForCausalLM
    t0 = time.time()
    kw = {}
    with open(os.path.join(path, "config.json")) as f:
        qc = json.load(f).get("quantization_config") or {}
    if qc.get("quant_method") == "fp8":  # the FP8 source: transformers' own exact dequant at load
        from transformers import FineGrainedFP8Config
        kw["quantization_config"] = FineGrainedFP8Config(weight_block_size=tuple(qc.get("weight_block_size", (128, 128))),
                                                         dequantize=True)
    model, info = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, output_loading_info=True,
                                                       device_map=device, **kw)
    model.eval()
    bad = {k: sorted(map(str, v))[:8] for k, v in info.items() if v}
    return model, bad, time.time() - t0


def decompress_nvfp4(qdir, outdir):
    """The checkpoint decompressed module by module by compressed-tensors' own
    NVFP4PackedCompressor.decompress, written as a plain BF16 checkpoint. This sidesteps
    transformers' fused-expert loading (see the report) and shows what the tensors hold."""
    import glob
    import shutil
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import preset_name_to_scheme
    from safetensors.torch import save_file
    scheme = preset_name_to_scheme("NVFP4A16", ["Linear"])
    sd = {}
    for f in glob.glob(os.path.join(qdir, "*.safetensors")):
        sd.update(load_file(f))
    out, mods = {}, {}
    for k, v in sd.items():
        for suf in (".weight_packed", ".weight_scale", ".weight_global_scale", ".input_global_scale"):
            if k.endswith(suf):
                mods.setdefault(k[: -len(suf)], {})[suf[1:]] = v
                break
        else:
            out[k] = v
    for m, msd in mods.items():
        msd.pop("input_global_scale", None)
        out[m + ".weight"] = NVFP4PackedCompressor.decompress(msd, scheme)["weight"].to(torch.bfloat16)
    shutil.rmtree(outdir, ignore_errors=True)
    os.makedirs(outdir)
    save_file(out, os.path.join(outdir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(qdir, "config.json")) as f:
        cfg = json.load(f)
    cfg.pop("quantization_config", None)
    with open(os.path.join(outdir, "config.json"), "w") as f:
        json.dump(cfg, f)


def run(model, ids, device):
    with torch.no_grad():
        return model(ids.to(device)).logits.float().cpu()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("demo_out")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json")
    ap.add_argument("--reference", help="source checkpoint loaded as the baseline (default DEMO_OUT/bf16, "
                    "else models/tiny-minimax-m2: transformers dequantizes the FP8 itself)")
    a = ap.parse_args()
    ref = load_file(os.path.join(ROOT, "tests/golden/model/reference.safetensors"))
    ids = ref["input_ids"].long()
    import transformers
    res = {"device": a.device, "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import compressed_tensors
        res["compressed_tensors"] = compressed_tensors.__version__
    except Exception as e:  # noqa: BLE001
        res["compressed_tensors"] = "missing: %s" % e
    refdir = a.reference or os.path.join(a.demo_out, "bf16")
    if not os.path.isdir(refdir):
        refdir = os.path.join(ROOT, "models", "tiny-minimax-m2")
    res["reference_checkpoint"] = refdir
    base, bad, dt = load(refdir, a.device, torch.bfloat16)
    base_sd = {k: v.detach().float().cpu() for k, v in base.state_dict().items()}
    lb = run(base, ids, a.device)
    # the BF16 model in f32 against the committed f32 reference (same weights)
    res["source"] = {"load_problems": bad, "load_s": round(dt, 2)}
    try:  # the source in f32 against the committed f32 reference (same weights)
        base32, _, _ = load(refdir, a.device, torch.float32)
        l32 = run(base32, ids, a.device)
        del base32
        res["source"]["f32_max_abs_logit_diff_vs_reference"] = float((l32[0, :64] - ref["logits_seq0"]).abs().max())
        res["source"]["f32_top1_vs_reference"] = float((l32.argmax(-1) == ref["topk_indices"][..., 0].long()).float().mean())
    except Exception as e:  # noqa: BLE001  (an FP8 source cannot run in f32 in some versions)
        res["source"]["f32_check"] = "skipped: %s" % str(e)[:200]
    lpb = torch.log_softmax(lb[:, :-1], -1)
    tgt = ids[:, 1:]
    res["source"]["ppl"] = float(torch.exp(-lpb.gather(-1, tgt[..., None]).mean()))
    del base
    import tempfile
    tmp = tempfile.mkdtemp()
    todo = []
    for name in ("nvfp4a16", "nvfp4", "w4a16", "w4a16-autoround"):
        p = os.path.join(a.demo_out, name)
        if os.path.isdir(p):
            todo.append((name, p))
            if name.startswith("nvfp4"):
                d = os.path.join(tmp, name)
                decompress_nvfp4(p, d)
                todo.append((name + " (compressed-tensors decompress)", d))
    for name, p in todo:
        try:
            m, bad, dt = load(p, a.device, torch.bfloat16)
        except Exception as e:  # noqa: BLE001
            res[name] = {"error": "%s: %s" % (type(e).__name__, str(e)[:400])}
            print(name, res[name], file=sys.stderr)
            continue
        lq = run(m, ids, a.device)
        # Which parameters did the loader materialize far from the source weights? (A silent
        # misload shows up here: e.g. NVFP4 experts dequantized without their global scale.)
        far = {}
        for k, v in m.state_dict().items():
            if k in base_sd and v.shape == base_sd[k].shape and v.is_floating_point():
                r = base_sd[k]
                e = float((v.detach().float().cpu() - r).norm() / (r.norm() + 1e-12))
                if e > 0.25:
                    far[k] = round(e, 3)
        del m
        lpq = torch.log_softmax(lq[:, :-1], -1)
        kl = (lpb.exp() * (lpb - lpq)).sum(-1)
        res[name] = {"load_problems": bad, "load_s": round(dt, 2), "params_far_from_source": dict(list(far.items())[:8]),
                     "n_params_far_from_source": len(far), "kl_mean": float(kl.mean()),
                     "kl_max": float(kl.max()), "top1_agreement": float((lq.argmax(-1) == lb.argmax(-1)).float().mean()),
                     "ppl": float(torch.exp(-lpq.gather(-1, tgt[..., None]).mean()))}
        print(name, res[name], file=sys.stderr)
    print(json.dumps(res, indent=2))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    ok = all(not v.get("load_problems") and "error" not in v for k, v in res.items() if isinstance(v, dict))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
