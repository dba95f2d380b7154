#!/usr/bin/env python3
"""Golden data for ref-runner's W4A4 activation emulation (tests/test_runner.c).

vLLM's NVFP4 emulation path (vllm/model_executor/layers/quantization/utils/
nvfp4_emulation_utils.py: ref_nvfp4_quant, then run_nvfp4_emulations' input dequant) written
out step by step in torch, so that the fp8 rounding (torch .to(float8_e4m3fn)) and the bf16
casts are torch's own:
    x bf16 [m, n] -> [m, n/16, 16]
    vec_max = max|x| (f32); scale = gs * (vec_max * (1/6)); clamp(+-448); fp8 e4m3fn -> f32
    output_scale = recip(scale * recip(gs))         recip(v) = 0 where v == 0 else 1/v
    y = clamp(x.f32 * output_scale, -6, 6); q = FP4 grid rounding (the boundaries of
        vLLM's cast_to_fp4: <=0.25 -> 0, <0.75 -> .5, <=1.25 -> 1, <1.75 -> 1.5, <=2.5 -> 2,
        <3.5 -> 3, <=5 -> 4, else 6; sign kept)
    x_dq = (q * (scale / gs)).to(bf16)

Pinned: torch 2.15 (CPU), safetensors 0.8. Run from the repository root:
    python3 scripts/gen-runner-golden.py   -> tests/golden/runner/w4a4.safetensors
"""
import torch
from safetensors.torch import save_file


def cast_to_fp4(x):
    sign = torch.sign(x)
    a = torch.abs(x)
    out = torch.zeros_like(a)
    out = torch.where((a > 0.25) & (a < 0.75), torch.tensor(0.5), out)
    out = torch.where((a >= 0.75) & (a <= 1.25), torch.tensor(1.0), out)
    out = torch.where((a > 1.25) & (a < 1.75), torch.tensor(1.5), out)
    out = torch.where((a >= 1.75) & (a <= 2.5), torch.tensor(2.0), out)
    out = torch.where((a > 2.5) & (a < 3.5), torch.tensor(3.0), out)
    out = torch.where((a >= 3.5) & (a <= 5.0), torch.tensor(4.0), out)
    out = torch.where(a > 5.0, torch.tensor(6.0), out)
    return out * sign


def recip(t):
    return torch.where(t == 0, torch.zeros_like(t), 1.0 / t)


def emulate(x, gs):
    m, n = x.shape
    xb = x.reshape(m, n // 16, 16)
    vec_max = torch.max(torch.abs(xb), dim=-1, keepdim=True)[0].to(torch.float32)
    scale = gs * (vec_max * (1.0 / 6.0))
    scale = torch.clamp(scale, max=448, min=-448)
    scale = scale.to(torch.float8_e4m3fn).to(torch.float32)
    output_scale = recip(scale * recip(gs))
    y = torch.clamp(xb.to(torch.float32) * output_scale, -6.0, 6.0)
    q = cast_to_fp4(y)
    return (q * (scale / gs)).reshape(m, n).to(torch.bfloat16)


def main():
    g = torch.Generator().manual_seed(7)
    out = {}
    # rows of varied magnitude: normal, heavy-tailed, tiny, zeros, exact grid ties
    x = torch.randn(12, 64, generator=g) * torch.logspace(-3, 1, 12).unsqueeze(1)
    x[3, :16] = 0.0
    x[4, 16:32] = torch.tensor([6, 5, 3.5, 2.5, 1.75, 1.25, .75, .25, -6, -5, -3.5, -2.5,
                                -1.75, -1.25, -.75, -.25]) * 0.125
    x[5, :] = x[5, :] ** 3
    x = x.to(torch.bfloat16)
    amax = x.abs().max().to(torch.float32)
    cases = {
        "calibrated": (torch.tensor([2688.0]) / amax).to(torch.bfloat16).to(torch.float32),
        "small_gs": torch.tensor([0.5], dtype=torch.float32),     # scales saturate at 448?
        "large_gs": torch.tensor([1.0e6], dtype=torch.float32),   # per-block scales clamp
    }
    out["x"] = x.contiguous()
    for name, gs in cases.items():
        out[f"{name}.gs"] = gs.reshape(1).contiguous()
        out[f"{name}.x_dq"] = emulate(x, gs).contiguous()
    save_file(out, "tests/golden/runner/w4a4.safetensors",
              metadata={"generator": "scripts/gen-runner-golden.py", "torch": torch.__version__})


if __name__ == "__main__":
    main()
