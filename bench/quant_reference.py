#!/usr/bin/env python3
"""Reference timing for bench/bench_quant.c: the Python tools quantizing one [1536, 3072] bf16
tensor (heavy-tailed: Student-t with 3 degrees of freedom, two outlier columns) on ONE CPU
thread (torch.set_num_threads(1)), best of N runs.

    pip install compressed-tensors==0.18.0 auto-round==0.16.1
    python3 bench/quant_reference.py [reps]

Per kernel, the work a quantizer does for one weight, with the same calls as
scripts/gen-quant-golden.py:
  nvfp4           generate_gparam(amin, amax) + calculate_qparams(per-16 min/max, global
                  scale) + NVFP4PackedCompressor.compress (quantize + pack_fp4_to_uint8)
  w4a16_ct        calculate_qparams(per-128 min/max) + PackedQuantizationCompressor.compress
  w4a16_autoround auto_round model-free quantize_weight_rtn (auto_round:auto_gptq packing)
Prints M elements/s per thread, and a JSON line at the end.
"""
import json
import sys
import time

import torch

torch.set_num_threads(1)

from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor  # noqa: E402
from compressed_tensors.compressors.pack_quantized.base import (  # noqa: E402
    PackedQuantizationCompressor,
)
from compressed_tensors.quantization import preset_name_to_scheme  # noqa: E402
from compressed_tensors.quantization.utils.helpers import (  # noqa: E402
    calculate_qparams,
    generate_gparam,
)

ROWS, COLS = 1536, 3072
NVFP4 = preset_name_to_scheme("NVFP4A16", ["Linear"])
W4A16 = preset_name_to_scheme("W4A16", ["Linear"])


def weight():
    g = torch.Generator().manual_seed(1234)
    z = torch.randn(ROWS, COLS, generator=g, dtype=torch.float64)
    c = (torch.randn(ROWS, COLS, 3, generator=g, dtype=torch.float64) ** 2).sum(-1)
    w = 0.02 * z / torch.sqrt(c / 3)
    w[:, 17] *= 40
    w[:, 1000] *= 40
    return w.to(torch.bfloat16)


def nvfp4(w):
    g = generate_gparam(w.amin(), w.amax())
    grp = w.reshape(ROWS, COLS // 16, 16)
    scale, _ = calculate_qparams(grp.amin(-1), grp.amax(-1), NVFP4.weights, global_scale=g)
    return NVFP4PackedCompressor.compress(
        {"weight": w, "weight_scale": scale.to(w.dtype), "weight_global_scale": g}, NVFP4)


def w4a16_ct(w):
    grp = w.reshape(ROWS, COLS // 128, 128)
    scale, zp = calculate_qparams(grp.amin(-1), grp.amax(-1), W4A16.weights)
    return PackedQuantizationCompressor.compress(
        {"weight": w, "weight_scale": scale.to(w.dtype), "weight_zero_point": zp.to(torch.int8)},
        W4A16)


def w4a16_autoround(w):
    from auto_round.utils.model_free_utils import quantize_weight_rtn
    return quantize_weight_rtn(w, bits=4, group_size=128, sym=True,
                               packing="auto_round:auto_gptq")


def best_rate(fn, w, reps):
    fn(w)  # warm-up (lazy imports, allocator)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(w)
        best = min(best, time.perf_counter() - t0)
    return ROWS * COLS / best / 1e6


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    w = weight()
    res = {}
    print(f"quant_reference: [{ROWS}, {COLS}] heavy-tailed bf16, torch {torch.__version__}, "
          f"1 thread, best of {reps}")
    for name, fn in (("nvfp4", nvfp4), ("w4a16_ct", w4a16_ct),
                     ("w4a16_autoround", w4a16_autoround)):
        res[name + "_meps"] = round(best_rate(fn, w, reps), 1)
        print(f"  {name:<16} {res[name + '_meps']:8.1f} M el/s")
    print(json.dumps({"bench": "quant_reference", "rows": ROWS, "cols": COLS, **res}))


if __name__ == "__main__":
    main()
