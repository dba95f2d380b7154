#!/usr/bin/env python3
"""Issue 16's baseline: auto-round 0.16.1's time for one full-size synthetic MiniMax-M2 decoder
layer, W4A16 (int4 sym, group 128), as `AutoRound(...).quantize()` runs it.

The model is transformers' own MiniMaxM2ForCausalLM with one decoder layer of MiniMax-M2's real
dimensions (hidden 3072, 48 heads x head_dim 128, 8 KV heads, 256 experts of intermediate 1536,
top-8, sigmoid router with correction bias, partial rotary 64 of 128, per-layer q/k norm) and
random bf16 weights (transformers' own initialisation, seed 0). Only the vocabulary is small
(the repo's tiny MiniMax-M2 tokenizer's 4096): embedding and lm_head are not quantized and are not part of the
layer's time. Calibration: --nsamples random token sequences of --seqlen ids (default 64 x 2048),
batch_size 8, --iters SignRound iterations (auto-round's default is 200).

Measured, in one run: the whole quantize() wall time; the time from quantize()'s start to the
first SignSGD step (input caching, wrapping, the RTN init); every iteration's time (between
consecutive optimizer steps, CUDA synchronised); the time after the last step (best-weight
restore, packing). Printed as text and, with --json FILE, as JSON. With --iters below 200 the
200-iteration time is PROJECTED as setup + 200 x the median iteration + tail, and says so.

On an 80 GB card auto-round runs out of memory at 256 experts with the batch of 8 in one piece
(76.7 GiB allocated, 2026-12-07). `--batch-size 4 --grad-acc 2` is auto-round's own memory
setting for that (gradient_accumulate_steps): the same SignSGD step on a global batch of 8, its
gradient summed over two halves of 4 (sum-reduced MSE: the signs are those of batch 8's mean, up
to rounding), in about half the activation memory; at 256 experts on the H100 that alone still
runs out (78 GiB in use in layer 0's first forward, also as 2 x 4). `--low-gpu-mem` is its
low_gpu_mem_usage (block inputs and outputs kept on the host): with it and 4 x 2 the block runs
(peak 73.7 GiB, 2026-12-07). Both are recorded in the JSON.

Needs torch with CUDA, transformers (5.x, with minimax_m2) and auto-round 0.16.1 (plus its
datasets/pydantic imports). Example (one GPU):
    python3 scripts/bench-autoround-ref.py --iters 20 --json out.json
A small CPU smoke run of the same code path:
    python3 scripts/bench-autoround-ref.py --device cpu --small --iters 2
The model and the ids come from scripts/minimax_synth.py (shared with bench-gptq-ref.py).
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

# the synthetic model and calibration ids, shared with bench-gptq-ref.py
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import minimax_synth  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--grad-acc", type=int, default=1,
                    help="auto-round's gradient_accumulate_steps (the step's batch is batch-size x this)")
    ap.add_argument("--low-gpu-mem", action="store_true", help="auto-round's low_gpu_mem_usage")
    ap.add_argument("--layers", type=int, default=1,
                    help="decoder layers (2+: the later layers' time is the steady state, after torch.compile's "
                         "first compilation, which auto-round enables and which lands in layer 0's setup)")
    ap.add_argument("--experts", type=int, default=256,
                    help="routed experts (MiniMax-M2 has 256; fewer to fit a smaller GPU, top-8 kept)")
    ap.add_argument("--tokenizer", default="models/tiny-minimax-m2",
                    help="any tokenizer (auto-round insists on one; ids are random, it is only asked for its pad id)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny dimensions (a smoke test of the script)")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()

    import auto_round
    import transformers
    from auto_round import AutoRound, SignRoundConfig
    from auto_round.algorithms.quantization.sign_round import sign_sgd

    d = minimax_synth.dims(a.experts, a.small)
    tok = transformers.AutoTokenizer.from_pretrained(a.tokenizer)
    cfg = minimax_synth.config(d, a.layers, tok, a.seqlen)
    dev = torch.device(a.device)
    model = minimax_synth.build_model(cfg, dev)
    n_param = sum(p.numel() for p in model.model.layers[0].parameters())
    data = minimax_synth.calib_ids(tok, a.nsamples, a.seqlen)

    steps = []
    orig_step = sign_sgd.SignSGD.step

    def timed_step(self, *args, **kw):
        r = orig_step(self, *args, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        steps.append(time.perf_counter())
        # as it goes, so that a run stopped by a time limit still tells its iteration times
        print(f"step {len(steps)} at {steps[-1] - t0:.3f} s", file=sys.stderr, flush=True)
        return r

    sign_sgd.SignSGD.step = timed_step

    t0 = time.perf_counter()  # re-read below; here for the progress lines of model set-up
    # gradient_accumulate_steps is a SignRoundConfig option (AutoRound's keyword arguments ignore it)
    alg = dict(alg_configs=SignRoundConfig(iters=a.iters, gradient_accumulate_steps=a.grad_acc)) if a.grad_acc != 1 \
        else dict(iters=a.iters)
    ar = AutoRound(model, tokenizer=tok, scheme="W4A16", nsamples=a.nsamples, seqlen=a.seqlen,
                   batch_size=a.batch_size, low_gpu_mem_usage=a.low_gpu_mem, dataset=data,
                   device_map=a.device if dev.type == "cuda" else "cpu", **alg)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    ar.quantize()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()

    its = [b - a_ for a_, b in zip(steps, steps[1:])]
    res = {
        "auto_round": auto_round.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "dims": d, "layer_params": n_param, "nsamples": a.nsamples, "seqlen": a.seqlen,
        "batch_size": a.batch_size, "gradient_accumulate_steps": a.grad_acc, "low_gpu_mem_usage": a.low_gpu_mem,
        "iters": a.iters, "steps_seen": len(steps),
        "quantize_s": t1 - t0,
        "setup_s": (steps[0] - t0) if steps else None,
        "first_iter_s": (steps[0] - t0) if steps else None,
        "iter_median_s": statistics.median(its) if its else None,
        "iter_min_s": min(its) if its else None, "iter_max_s": max(its) if its else None,
        "tail_s": (t1 - steps[-1]) if steps else None,
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None,
        "layers": a.layers, "steps_s": [s - t0 for s in steps],
    }
    # Per layer (auto-round tunes block by block, iters steps each): layer l's time runs from the
    # last step of layer l-1 (t0 for layer 0) to its own last step, so it holds the previous
    # layer's tail (packing) and its own setup; projected to 200 iterations with its own median.
    if a.layers > 1 and len(steps) == a.layers * a.iters and a.iters >= 2:
        per = []
        for l in range(a.layers):
            s = steps[l * a.iters:(l + 1) * a.iters]
            start = steps[l * a.iters - 1] if l else t0
            med = statistics.median([b - a_ for a_, b in zip(s, s[1:])])
            per.append({"layer": l, "wall_s": s[-1] - start, "iter_median_s": med,
                        "projected_200_s": s[-1] - start + (200 - a.iters) * med})
        res["per_layer"] = per
    # The first step's time includes everything before it (caching, wrapping, the RTN init and
    # the first forward/backward); one median iteration stands in for that first iteration.
    if its and a.iters < 200:
        res["projected_200_s"] = res["setup_s"] + 199 * res["iter_median_s"] + res["tail_s"]
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
