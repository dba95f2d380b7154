#!/usr/bin/env python3
"""PyTorch's reference FP8 block dequant (compressed-tensors FP8BlockDequantizer /
DeepSeek weight_dequant arithmetic: f32 product, one bf16 rounding) on one [1536, 3072]
weight, one CPU thread. Prints one JSON line: elements/s (best of 5)."""
import json, sys, time
try:
    import torch
except ImportError:
    print(json.dumps({"reference": "torch not installed"}))
    sys.exit(0)
torch.set_num_threads(1)
R, C = 1536, 3072
w = torch.randint(0, 126, (R, C), dtype=torch.uint8).view(torch.float8_e4m3fn)
s = torch.rand(R // 128, C // 128, dtype=torch.float32) * 1e-3
best = 1e9
for _ in range(5):
    t0 = time.perf_counter()
    full = s.repeat_interleave(128, 0).repeat_interleave(128, 1)
    out = (w.to(torch.float32) * full).to(torch.bfloat16)
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"reference": "torch %s" % torch.__version__, "elements_per_s": R * C / best}))
