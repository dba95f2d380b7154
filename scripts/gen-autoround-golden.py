#!/usr/bin/env python3
"""AutoRound goldens from auto-round 0.16.1's own functions, on the CPU.

1. Optimized RTN (iters 0, the default unless --disable_opt_rtn): auto_round.data_type.int.
   quant_tensor_opt_rtn_sym (the "opt_rtn_int_sym" that get_quant_func picks for W4A16 int4 sym
   with iters=0), per case: a weight in bf16 (what a bf16 / FP8-dequantized model holds: the
   search then runs in bf16 arithmetic) or f32, with or without an importance matrix (imatrix =
   per-input-column mean of x^2, from OptimizedRTNQuantizer's own forward hook on the inputs),
   imatrix zeros (a group with more than half zeros, one with a few), an all-zero row.
   Stored: weight, imatrix, the returned scale (f32 values of the search's dtype) and the
   fake-quantized weight.  Also the plain RTN (quant_tensor_rtn_sym, disable_opt_rtn) scales.
2. SignRound tuning (iters > 0) on a fixture MoE expert block: E SwiGLU experts
   out = sum_e rw_e(t) * down_e(silu(gate_e x) * up_e x), rw = fixed top-k routing weights (the
   router is never quantized, so within one block the routing of a sample is a constant input).
   Every Linear is wrapped by auto_round.wrapper.WrapperLinear (int_sym, group 128, minmax tuning,
   fp16 scales), optimized with auto-round's SignSGD, LinearLR(1 -> 0), IndexSampler batches of
   batch_size, MSE(mean) * 1000 backward, best iteration kept: the loop of
   SignRoundQuantizer.quantize_block, driven here on this block (the block forward is the only
   thing that is ours).  Stored: the block, inputs, routing, FP outputs, the reference's
   init/best mini-batch losses and every iteration's, and the full-set MSE of its RTN and tuned
   weights, for seeds 1..5 and 42.
Written to tests/golden/autoround/autoround_golden.safetensors (+ autoround_golden.json).
Needs torch, transformers and auto-round 0.16.1 (pip install --no-deps auto-round==0.16.1
py-cpuinfo into a venv that sees torch/transformers):
    python scripts/gen-autoround-golden.py
"""
import json
import os
import random

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import auto_round
from auto_round.algorithms.quantization.rtn.quantizer import OptimizedRTNQuantizer
from auto_round.algorithms.quantization.sign_round.sign_sgd import SignSGD
from auto_round.compressors.utils import IndexSampler, collect_best_params
from auto_round.data_type.int import quant_tensor_opt_rtn_sym, quant_tensor_rtn_sym
from auto_round.wrapper import unwrapper_block, wrapper_block

OUT = "tests/golden/autoround"


def set_scheme(lin):
    lin.bits, lin.group_size, lin.sym, lin.data_type = 4, 128, True, "int"
    lin.act_bits, lin.scale_dtype = 16, torch.float16


def imatrix_of(x, C):
    """auto-round's own imatrix hook (OptimizedRTNQuantizer._register_imatrix_hooks) on x."""
    lin = torch.nn.Linear(C, 8, bias=False)
    set_scheme(lin)
    hs = OptimizedRTNQuantizer._register_imatrix_hooks(None, lin, with_count=True)
    with torch.no_grad():
        for s in range(x.shape[0]):
            lin(x[s:s + 1])
    for h in hs:
        h.remove()
    return lin.imatrix / lin.imatrix_cnt


def opt_rtn_cases(t):
    g = torch.Generator().manual_seed(20261207)
    cases = []
    for R, C in ((64, 256), (32, 384), (16, 128)):
        W = torch.randn(R, C, generator=g) * 0.02
        W[1] *= 8  # a row with larger weights
        W[2, :5] = 0.3  # an outlier group
        W[3] = 0  # an all-zero row
        W[4, :128] = -W[4, :128].abs()  # a group of one sign
        X = torch.randn(4, 16, C, generator=g) * (1 + torch.rand(C, generator=g) * 3)
        X[:, :, 3] = 0  # an input column that is always zero
        imat = imatrix_of(X, C)
        imz = imat.clone()
        imz[:100] = 0  # first group: more than half zeros (fallback weights)
        imz[130:133] = 0  # second group: a few zeros (mean fill)
        for dt in ("bf16", "f32"):
            w = W.to(torch.bfloat16) if dt == "bf16" else W.clone()
            for im_name, im in (("none", None), ("imatrix", imat), ("zeros", imz)):
                key = f"optrtn_{R}x{C}_{dt}_{im_name}"
                q, s, _ = quant_tensor_opt_rtn_sym(w.clone(), bits=4, group_size=128, v=0, q_scale_thresh=1e-5,
                                                   imatrix=None if im is None else im.clone())
                t[f"{key}.weight"] = w.float().contiguous()
                if im is not None:
                    t[f"{key}.imatrix"] = im.float().contiguous()
                t[f"{key}.scale"] = s.float().reshape(R, C // 128).contiguous()
                t[f"{key}.out"] = q.float().contiguous()
                cases.append({"key": key, "shape": [R, C], "dtype": dt, "imatrix": im_name})
        t[f"imatrix_{R}x{C}.inputs"] = X.float().contiguous()
        t[f"imatrix_{R}x{C}.imatrix"] = imat.float().contiguous()
        # plain RTN (disable_opt_rtn): fp16 scales
        q, s, _ = quant_tensor_rtn_sym(W.to(torch.bfloat16).clone(), bits=4, group_size=128)
        t[f"rtn_{R}x{C}.scale"] = s.float().reshape(R, C // 128).contiguous()
        t[f"rtn_{R}x{C}.out"] = q.float().contiguous()
        t[f"rtn_{R}x{C}.weight"] = W.to(torch.bfloat16).float().contiguous()
    return cases


class Expert(torch.nn.Module):
    def __init__(self, H, I):
        super().__init__()
        self.gate_proj = torch.nn.Linear(H, I, bias=False)
        self.up_proj = torch.nn.Linear(H, I, bias=False)
        self.down_proj = torch.nn.Linear(I, H, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(torch.nn.Module):
    def __init__(self, E, H, I):
        super().__init__()
        self.experts = torch.nn.ModuleList(Expert(H, I) for _ in range(E))

    def forward(self, x, rw):
        out = torch.zeros_like(x)
        for e, ex in enumerate(self.experts):
            out = out + rw[..., e:e + 1] * ex(x)
        return out


def tuning_case(t, iters, batch_size, seed):
    E, H, I, K, S, T = 4, 256, 256, 2, 32, 16
    g = torch.Generator().manual_seed(20261208)
    blk = Block(E, H, I)
    with torch.no_grad():
        for p in blk.parameters():
            p.copy_((torch.randn(p.shape, generator=g) * 0.04).to(torch.bfloat16).float())
    X = (torch.randn(S, T, H, generator=g) * (0.5 + torch.rand(H, generator=g))).to(torch.bfloat16).float()
    logits = torch.randn(S, T, E, generator=g)
    top = torch.topk(torch.sigmoid(logits), K, dim=-1)
    rw = torch.zeros(S, T, E)
    rw.scatter_(-1, top.indices, top.values / top.values.sum(-1, keepdim=True))
    with torch.no_grad():
        fp_out = [blk(X[s:s + 1], rw[s:s + 1]) for s in range(S)]
    for e in range(E):
        for n in ("gate_proj", "up_proj", "down_proj"):
            t[f"block.{e}.{n}"] = getattr(blk.experts[e], n).weight.detach().clone().contiguous()
            set_scheme(getattr(blk.experts[e], n))
    t["block.inputs"] = X.contiguous()
    t["block.routing"] = rw.contiguous()
    t["block.fp_out"] = torch.cat(fp_out).contiguous()

    def full_mse():
        with torch.no_grad():
            return float(F.mse_loss(blk(X, rw), torch.cat(fp_out)))

    random.seed(seed)
    torch.manual_seed(seed)
    wrapper_block(blk, True, False, enable_torch_compile=False, device="cpu")
    rtn_full = full_mse()  # V = 0, min/max scale 1: plain RTN
    round_p, minmax_p = [], []
    for _, m in blk.named_modules():
        if hasattr(m, "orig_layer"):
            for k, p in m.params.items():
                (minmax_p if "min" in k or "max" in k else round_p).append(p)
    lr = 1.0 / iters
    opt = SignSGD([{"params": round_p, "lr": torch.tensor(lr)}, {"params": minmax_p, "lr": torch.tensor(lr)}],
                  lr=torch.tensor(lr), weight_decay=0)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=iters)
    mse = torch.nn.MSELoss(reduction="mean")
    sampler = IndexSampler(S, min(S, batch_size))
    best_loss, best_params, init_loss, best_iter = torch.finfo(torch.float).max, {}, None, 0
    losses = []
    for i in range(iters):
        idx = sampler.next_batch()
        pred = blk(torch.cat([X[j:j + 1] for j in idx]), torch.cat([rw[j:j + 1] for j in idx]))
        loss = mse(pred.float(), torch.cat([fp_out[j] for j in idx]).float())
        total = loss.item()
        losses.append(total)
        (loss * 1000).backward()
        if i == 0:
            init_loss = total
        if total < best_loss:
            best_loss, best_iter = total, i
            best_params = collect_best_params(blk, "cpu")
        opt.step()
        opt.zero_grad()
        sched.step()
    with torch.no_grad():
        unwrapper_block(blk, best_params)
    tuned_full = full_mse()
    for e in range(E):
        for n in ("gate_proj", "up_proj", "down_proj"):
            lin = getattr(blk.experts[e], n)
            t[f"tuned.{e}.{n}.out"] = lin.weight.detach().float().contiguous()
            t[f"tuned.{e}.{n}.scale"] = lin.scale.float().reshape(lin.weight.shape[0], -1).contiguous()
    info = {"experts": E, "hidden": H, "intermediate": I, "top_k": K, "samples": S, "tokens": T,
            "iters": iters, "batch_size": batch_size, "lr": lr, "seed": seed, "init_loss": init_loss,
            "best_loss": best_loss, "best_iter": best_iter, "rtn_full_mse": rtn_full,
            "tuned_full_mse": tuned_full}
    t["tuning.losses"] = torch.tensor(losses, dtype=torch.float64).float()
    t["tuning.ref"] = torch.tensor([iters, batch_size, init_loss, best_loss, rtn_full, tuned_full],
                                   dtype=torch.float64).float()
    print("tuning", info)
    return info


def main():
    assert auto_round.__version__ == "0.16.1", auto_round.__version__
    t = {}
    cases = opt_rtn_cases(t)
    # The mini-batch order and the rounding of near-zero gradients make the trajectory chaotic after
    # some iterations: the final loss of several seeds is stored (the last run, seed 42, keeps the
    # tensors and the loss trace).
    by_seed = []
    for seed in (1, 2, 3, 4, 5, 42):
        info = tuning_case(t, iters=100, batch_size=8, seed=seed)
        by_seed.append([seed, info["tuned_full_mse"]])
    t["tuning.seeds"] = torch.tensor(by_seed, dtype=torch.float64).float()
    info["by_seed"] = by_seed
    os.makedirs(OUT, exist_ok=True)
    t = {k: v.clone().contiguous() for k, v in t.items()}
    save_file(t, os.path.join(OUT, "autoround_golden.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(OUT, "autoround_golden.json"), "w") as f:
        json.dump({"generator": "scripts/gen-autoround-golden.py", "torch": torch.__version__,
                   "auto_round": auto_round.__version__, "group_size": 128, "bits": 4,
                   "opt_rtn_cases": cases, "tuning": info}, f, indent=1)


if __name__ == "__main__":
    main()
