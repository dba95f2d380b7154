#!/usr/bin/env python3
"""Grafts the quantized Linears of a reference checkpoint (llm-compressor's GPTQ output, or
auto-round's `auto_round` export) into a copy of a fourbit checkpoint of the same scheme and
format, so that ref-runner measures the two implementations' weights with everything else
identical (embeddings, norms, and the router gate and correction bias, which llm-compressor's bf16
model stores in bf16 while the source and fourbit keep them in float32, and which auto-round 0.16.1
writes in float32 along with the norms, embeddings and lm_head that fourbit keeps in bf16:
differences that are not the quantizer's).

    python scripts/graft-quantized.py FOURBIT_DIR REFERENCE_DIR OUT_DIR

Every `*.weight_packed`, `*.weight_scale`, `*.weight_global_scale` (compressed-tensors) or
`*.qweight`, `*.qzeros`, `*.scales` (auto_round's GPTQ packing) of FOURBIT_DIR is replaced by
the reference's tensor of the same name, dtype and shape (a missing or different one is an
error); the rest of FOURBIT_DIR is copied as it is. Needs torch + safetensors.
"""
import os
import shutil
import sys

from safetensors import safe_open
from safetensors.torch import save_file

SUFFIXES = (".weight_packed", ".weight_scale", ".weight_global_scale", ".qweight", ".qzeros", ".scales")


def name(k):  # llm-compressor 0.14 and auto-round 0.16.1 save MiniMax-M2 experts as gate_proj / up_proj / down_proj
    if ".experts." in k:
        for a, b in ((".gate_proj.", ".w1."), (".up_proj.", ".w3."), (".down_proj.", ".w2.")):
            k = k.replace(a, b)
    return k


def tensors(d):
    out = {}
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".safetensors"):
            with safe_open(os.path.join(d, fn), framework="pt") as f:
                for k in f.keys():
                    out[name(k)] = (fn, f.get_tensor(k))
    return out


def main():
    src, ref, out = sys.argv[1:4]
    shutil.copytree(src, out)
    a, b = tensors(src), tensors(ref)
    shards = {}
    n = 0
    for k, (fn, t) in a.items():
        if k.endswith(SUFFIXES):
            if k not in b or b[k][1].dtype != t.dtype or b[k][1].shape != t.shape:
                sys.exit(f"{k}: missing or different in {ref}")
            t = b[k][1]
            n += 1
        shards.setdefault(fn, {})[k] = t.contiguous()
    for fn, ts in shards.items():
        with safe_open(os.path.join(src, fn), framework="pt") as f:
            meta = f.metadata()
        save_file(ts, os.path.join(out, fn), metadata=meta)
    # the manifest digests of fourbit's files no longer hold
    for fn in os.listdir(out):
        if fn.startswith(".fourbit") or fn == "fourbit-manifest.json":
            os.remove(os.path.join(out, fn))
    print(f"{out}: {n} tensors from {ref}")


if __name__ == "__main__":
    main()
