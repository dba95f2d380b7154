#!/usr/bin/env python3
"""GPTQ goldens from llm-compressor 0.14.0.1's own functions, per Linear, on the CPU.

For a few fixed [64, 256] bf16 weights and correlated bf16 inputs (16 samples x 32 tokens):
  H       llmcompressor.modifiers.gptq.helpers.accumulate_hessian over the samples, divided by
          the sample count (prepare_batch), f32
  qparams the weight observer of the scheme (initialize_quantized_linear + initialize_observer +
          observe + get_qparams: memoryless_minmax, as GPTQModifier uses it)
  out     llmcompressor.modifiers.gptq.gptq_quantize.quantize_weight(W, H, scale, zp, global_scale,
          args, blocksize=128, percdamp=0.01): the fake-quantized (dequantized) weights, f32, and
          the loss
for W4A16 (int4 symmetric group 128) and NVFP4A16 (tensor_group 16), actorder None / weight /
static. One input column is all zero (a dead column). Written to tests/golden/gptq/gptq_golden.safetensors
(+ gptq_golden.json: cases, versions). Needs torch, transformers 5.17.0, compressed-tensors 0.19.0,
llmcompressor 0.14.0.1 (e.g. the venv of scripts/gen-qwen3-moe-quant-golden.py):
    python scripts/gen-gptq-golden.py
"""
import json
import os

import torch
from safetensors.torch import save_file

import compressed_tensors
import llmcompressor
from compressed_tensors.quantization import ActivationOrdering, preset_name_to_scheme
from llmcompressor.entrypoints.model_free.lifecycle import initialize_quantized_linear
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
from llmcompressor.modifiers.gptq.helpers import accumulate_hessian
from llmcompressor.modifiers.quantization.calibration import (apply_calibration_status,
                                                              initialize_observer, observe)

OUT = "tests/golden/gptq"
R, C, NS, T = 64, 256, 16, 32


def main():
    assert llmcompressor.__version__.startswith("0.14"), llmcompressor.__version__
    g = torch.Generator().manual_seed(20261206)
    W = (torch.randn(R, C, generator=g) * 0.05).to(torch.bfloat16)
    A = torch.randn(C, C, generator=g) / C ** 0.5 + torch.eye(C)
    X = (torch.randn(NS, T, C, generator=g) @ A).to(torch.bfloat16)
    X[:, :, 7] = 0  # a dead input column
    tensors = {"weight": W.float().contiguous(), "inputs": X.float().contiguous()}
    cases = []
    for scheme_name in ("W4A16", "NVFP4A16"):
        for actorder in (None, "weight", "static"):
            scheme = preset_name_to_scheme(scheme_name, ["Linear"])
            scheme.weights.actorder = ActivationOrdering(actorder) if actorder else None
            m = initialize_quantized_linear(W.clone(), scheme, torch.device("cpu"))
            initialize_observer(m, "weight")
            apply_calibration_status(m)
            observe([m], base_name="weight")
            qp = m.weight_observer.get_qparams()
            H = torch.zeros(C, C, dtype=torch.float32)
            n = torch.zeros((), dtype=torch.int64)
            for s in range(NS):
                H, n = accumulate_hessian(X[s:s + 1], m, H, n)
            Hn = H / n
            gs = qp["global_scale"]
            q, loss, fb = quantize_weight(
                weights=m.weight.detach().float().unsqueeze(0).clone(), hessians=Hn.unsqueeze(0).clone(),
                scale=qp["scale"].unsqueeze(0), zero_point=qp["zero_point"].unsqueeze(0),
                global_scale=gs.reshape(-1)[0:1] if gs is not None else None,
                quant_args=scheme.weights, blocksize=128, percdamp=0.01)
            key = f"{scheme_name.lower()}_{actorder or 'none'}"
            tensors[f"{key}.hessian"] = Hn.contiguous()
            tensors[f"{key}.scale"] = qp["scale"].float().contiguous()
            tensors[f"{key}.out"] = q[0].float().contiguous()
            tensors[f"{key}.loss"] = loss.float().reshape(1).contiguous()
            if gs is not None:
                tensors[f"{key}.global_scale"] = gs.float().reshape(1).contiguous()
            cases.append({"key": key, "scheme": scheme_name, "actorder": actorder,
                          "scale_dtype": str(qp["scale"].dtype), "rtn_fallback": bool(fb[0]),
                          "loss": float(loss[0]), "samples": int(n)})
            print(key, "loss", float(loss[0]), "scale", tuple(qp["scale"].shape), qp["scale"].dtype)
    os.makedirs(OUT, exist_ok=True)
    save_file(tensors, os.path.join(OUT, "gptq_golden.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(OUT, "gptq_golden.json"), "w") as f:
        json.dump({"generator": "scripts/gen-gptq-golden.py", "torch": torch.__version__,
                   "llmcompressor": llmcompressor.__version__,
                   "compressed_tensors": compressed_tensors.__version__,
                   "shape": [R, C], "samples": NS, "tokens_per_sample": T, "blocksize": 128,
                   "percdamp": 0.01, "dead_column": 7, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main()
