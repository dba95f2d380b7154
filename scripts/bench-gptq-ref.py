#!/usr/bin/env python3
"""Issue 16's GPTQ baseline: llm-compressor 0.14.0.1's time for one full-size synthetic MiniMax-M2
decoder layer, as `oneshot(recipe=GPTQModifier(...))` runs it (the recipe of
scripts/gen-gptq-model-golden.py: W4A16 or NVFP4A16, block 128, dampening 0.01, actorder static).

The model is the one scripts/bench-autoround-ref.py times (scripts/minimax_synth.py):
transformers' own MiniMaxM2ForCausalLM with MiniMax-M2's real layer dimensions (hidden 3072,
48 x 128 heads, 8 KV heads, 256 experts of 1536, top-8 sigmoid routing with correction bias),
random bf16 weights (seed 0) and the same random calibration ids (--nsamples x --seqlen, default
64 x 2048), batch_size 1 as the golden runs it. Only the vocabulary is small (the tokenizer's).

What llm-compressor does with it (read in its 0.14.0.1 source, checked by the CPU smoke run):
- The experts: transformers 5.17 keeps MiniMax-M2's experts as two 3-D parameters
  (mlp.experts.gate_up_proj / down_proj); linearize_moe (what load_quantizable_moe does after
  loading when no load mapping is registered) replaces them by 256 x 3 nn.Linear
  (mlp.experts.E.gate_proj / up_proj / down_proj). It builds them with the config's dtype:
  a model made from a config has config.dtype None, which gives float32 experts, and the
  calibration forward then stops (bf16 activations into fp32 weights), so the script sets
  config.dtype to bfloat16 first (from_pretrained sets it).
- Expert calibration: oneshot's moe_calibrate_all_experts defaults to True: every expert runs on
  EVERY token of the batch (its output is kept only for its routed tokens), so each expert's
  Hessian is accumulated over all 64 x 2048 tokens, and so is the propagation pass's forward.
  The script counts the tokens each module's Hessian received (hessian_tokens_min/max per layer).
  --routed-only passes moe_calibrate_all_experts=False (each expert then sees its routed tokens).
- The router gate is model.layers.L.mlp.gate, a MiniMaxM2TopKRouter holding a bare weight
  Parameter, not an nn.Linear: targets="Linear" cannot match it. The ignore list names it anyway
  (re:.*mlp\\.gate$; the golden's block_sparse_moe.gate is the checkpoint's name, which
  transformers 5.17 renames to mlp.gate on loading), and the script checks after the run that
  every gate's weight is bf16, unchanged and carries no quantization parameters.
- The pipeline: the default "independent" one picks the sequential pipeline for GPTQ. Its
  subgraphs: the first holds what precedes layer 0 (embedding, rotary, mask), then one per decoder
  layer (the last layer's also holds the final norm and lm_head, which runs on the meta device).
  Each subgraph runs twice over the cached activations (batches offloaded to the CPU in between):
  a calibration pass with the Hessian hooks, then the GPTQ solves of the layer's modules (same-
  shape modules stacked into batched solves sized to 75% of free GPU memory, a Triton kernel for
  the column updates when Triton is there; one module at a time on the CPU), then a propagation
  pass that feeds the quantized layer's outputs to the next (propagate_error). Attention is forced
  to eager during calibration. oneshot's validate_model re-reads the config from
  model.config.name_or_path, so the config is written to a temporary directory for it.

Measured, in one run: the whole oneshot wall time (CUDA synchronised; without saving the
checkpoint); its set-up (oneshot's start to the first calibration pass: applying the scheme,
the dataset, tracing); and per decoder layer: the wall time from the previous subgraph's end,
split into the calibration pass, the compression (weight observers + solves + writing back), the
time inside quantize_weight (the solves), the propagation pass; the modules quantized, the
solve calls, the tokens each module's Hessian received, and the peak GPU memory. Progress lines
go to stderr as it runs, so a run stopped by a time limit still tells something. With --layers
>= 2 the later layers are the steady state (layer 0 also pays first calls: Triton's compilation
of the GPTQ kernel, the allocator's growth). Printed as JSON and, with --json FILE, written
there. Exits 1 if a check fails (modules quantized per layer != 4 + 3 x experts, a router gate
or lm_head touched, a Linear not bf16).

Needs torch (CUDA), transformers 5.17 (minimax_m2), llmcompressor 0.14.0.1, compressed-tensors
0.19.0, datasets, and their dependencies; nothing from the network (HF_HUB_OFFLINE=1 is fine).

How to run on the GPU: from the repository root, in an environment with torch (CUDA, with
triton, which llm-compressor's GPTQ column update uses when it is there) and transformers 5.17,
plus these wheels, the versions of /work/venvs/hq where the smoke run passed, installed with
`pip install --no-deps` (llmcompressor 0.14.0.1 declares torch<=2.14.0 and auto-round, but runs
this path on torch 2.15.0 without auto-round, as that venv does):
    llmcompressor==0.14.0.1 compressed-tensors==0.19.0 datasets==5.2.0 accelerate==1.15.0
    loguru==0.7.3 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
    typing-inspection==0.4.5 psutil==7.2.2 nvidia-ml-py==13.615.71 pillow==13.0.0
    requests==2.34.2 charset-normalizer==3.5.3 urllib3==2.8.0 idna==3.21
    certifi==2026.10.19.post1 pyarrow==26.0.1 pandas==3.1.1 python-dateutil==4.0.0
    tzdata==2026.6 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0
(datasets also wants huggingface-hub>=1.31 and fsspec<=2026.9.0, pydantic typing-extensions>=4.16;
/work/venvs/hq has 1.33.0, 2026.9.0, 4.16.0). Then:
    HF_HUB_OFFLINE=1 python3 scripts/bench-gptq-ref.py --layers 2 --json gptq-ref.json
From the shapes (not measured; the run reports its measured peak): one layer of 256 experts
holds 7.25 GB of bf16 expert weights (one more layer's worth while linearize_moe copies them)
and its Hessians 21.7 GB of fp32 while it is calibrated; every layer stays on the GPU, so each
further layer adds its weights. --experts lowers both (top-8 kept). A small CPU smoke run of the
same code path:
    /work/venvs/hq/bin/python scripts/bench-gptq-ref.py --device cpu --small --nsamples 4 --seqlen 64 --layers 2
"""
import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time

import torch

# the synthetic model and calibration ids, shared with bench-autoround-ref.py
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import minimax_synth  # noqa: E402

IGNORE = ["lm_head", r"re:.*mlp\.gate$"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=1,
                    help="decoder layers (2+: the later layers' time is the steady state; layer 0's also holds "
                         "first calls, e.g. Triton's compilation of the GPTQ kernel)")
    ap.add_argument("--experts", type=int, default=256,
                    help="routed experts (MiniMax-M2 has 256; fewer to fit a smaller GPU, top-8 kept)")
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=2048)
    ap.add_argument("--scheme", default="W4A16", choices=["W4A16", "NVFP4A16"])
    ap.add_argument("--actorder", default="static", choices=["static", "none"],
                    help="GPTQ activation ordering (fourbit's recipes: static, compressed-tensors' alias of weight)")
    ap.add_argument("--routed-only", action="store_true",
                    help="moe_calibrate_all_experts=False: each expert calibrated on its routed tokens only "
                         "(llm-compressor's default, kept without this flag, runs every expert on every token)")
    ap.add_argument("--tokenizer", default="models/tiny-minimax-m2",
                    help="any tokenizer (the ids are random; oneshot wants a processor)")
    ap.add_argument("--device", default="cuda",
                    help="cuda or cpu (llm-compressor calibrates on its main device, cuda:0 when there is a GPU: "
                         "pick the card with CUDA_VISIBLE_DEVICES)")
    ap.add_argument("--small", action="store_true", help="tiny dimensions (a smoke test of the script)")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args()

    # llm-compressor's logger writes to the sys.stdout it finds when llmcompressor is first
    # imported (and logs already then); the JSON goes to stdout, so its lines go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        import llmcompressor

    import compressed_tensors
    import transformers
    from compressed_tensors.utils.triton import HAS_TRITON
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modeling.moe.linearize import linearize_moe
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.gptq import base as gptq_base
    from llmcompressor.pipelines.sequential import pipeline as seq_pipeline

    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    if cuda and dev.index is not None:
        torch.cuda.set_device(dev)
    if not cuda and not a.small:
        print("warning: a full-size layer on the CPU takes hours; --small is the smoke test", file=sys.stderr)

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    def gib(n):
        return n / 2**30

    d = minimax_synth.dims(a.experts, a.small)
    tok = transformers.AutoTokenizer.from_pretrained(a.tokenizer)
    cfg = minimax_synth.config(d, a.layers, tok, a.seqlen)
    model = minimax_synth.build_model(cfg, dev)
    n_param = sum(p.numel() for p in model.model.layers[0].parameters())
    data = minimax_synth.calib_ids(tok, a.nsamples, a.seqlen)
    gates = [layer.mlp.gate for layer in model.model.layers]
    gates_before = [g.weight.detach().clone() for g in gates]

    # linearize_moe builds the expert Linears with config.dtype, None for a model made from a config
    # (float32 experts, and oneshot stops on bf16 inputs into them); from_pretrained would set it.
    model.config.dtype = torch.bfloat16
    t = time.perf_counter()
    with torch.device(dev):  # the new Linears are made on the device, not copied through the host
        linearize_moe(model)
    sync()
    linearize_s = time.perf_counter() - t
    # the model's build and linearize_moe's two copies of the experts, before oneshot's own reset
    peak_build = gib(torch.cuda.max_memory_allocated(dev)) if cuda else None
    n_experts = d["num_local_experts"]
    per_layer_expected = 4 + 3 * n_experts
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    print(f"linearized in {linearize_s:.2f} s: {len(linears)} Linears, e.g. "
          f"{[n for n in linears if '.experts.0.' in n][:3]}", file=sys.stderr, flush=True)

    # oneshot's validate_model re-reads the config from name_or_path ("" for a model made from a config)
    cfg_dir = tempfile.mkdtemp(prefix="bench-gptq-cfg-")
    model.config.save_pretrained(cfg_dir)
    model.config._name_or_path = cfg_dir

    ds = Dataset.from_dict({"input_ids": [x[0].tolist() for x in data],
                            "attention_mask": [[1] * a.seqlen for _ in data]})
    recipe = GPTQModifier(targets="Linear", scheme=a.scheme, ignore=list(IGNORE), block_size=128,
                          dampening_frac=0.01, actorder=None if a.actorder == "none" else a.actorder)

    # One record per subgraph of the sequential pipeline, filled by the wrappers below (which
    # layer a subgraph is, is read from the modules it quantizes; see the checks further down).
    subgraphs = {}
    cur = {"rec": None}
    t0 = None

    def rec(i):
        if i not in subgraphs:
            subgraphs[i] = {"subgraph": i, "modules_quantized": 0, "solve_calls": 0, "solve_s": 0.0,
                            "layers_seen": set(), "hessian_tokens": {}}
        return subgraphs[i]

    # The pipeline iterates the cached batches through _get_batches, once to calibrate and once
    # to propagate, with a tqdm label "(i/N): Calibrating" / "(i/N): Propagating": its start and
    # its exhaustion bound each pass; between the two lies the compression (sequential_epoch_end).
    orig_get_batches = seq_pipeline._get_batches
    label = re.compile(r"\((\d+)/(\d+)\): (Calibrating|Propagating)")

    def timed_get_batches(activations, num_batches, input_names, desc, *args, **kw):
        m = label.fullmatch(desc)
        assert m, f"llm-compressor's sequential pipeline changed its labels: {desc!r}"
        i, n, phase = int(m.group(1)) - 1, int(m.group(2)), m.group(3)
        r = rec(i)
        r["of"] = n
        cur["rec"] = r
        sync()
        if phase == "Calibrating":
            if cuda:
                # the peak so far (oneshot's set-up, earlier layers) is kept before the per-layer reset
                r["peak_before_gib"] = gib(torch.cuda.max_memory_allocated(dev))
                torch.cuda.reset_peak_memory_stats(dev)
            r["calib_start"] = time.perf_counter()
        else:
            r["prop_start"] = time.perf_counter()
        yield from orig_get_batches(activations, num_batches, input_names, desc, *args, **kw)
        sync()
        now = time.perf_counter()
        if phase == "Calibrating":
            r["calib_end"] = now
            print(f"subgraph {i + 1}/{n}: calibrated in {now - r['calib_start']:.2f} s, "
                  f"at {now - t0:.2f} s", file=sys.stderr, flush=True)
        else:
            r["prop_end"] = now
            if cuda:
                r["peak_gpu_mem_gib"] = gib(torch.cuda.max_memory_allocated(dev))
            print(f"subgraph {i + 1}/{n}: compressed {r['modules_quantized']} modules in "
                  f"{r['prop_start'] - r['calib_end']:.2f} s (solves {r['solve_s']:.2f} s), propagated in "
                  f"{now - r['prop_start']:.2f} s, at {now - t0:.2f} s", file=sys.stderr, flush=True)

    seq_pipeline._get_batches = timed_get_batches

    # quantize_weight is the batched GPTQ solve (weights [batch, rows, cols]); base.py imported it
    # by name, so its reference there is the one to replace.
    orig_quantize_weight = gptq_base.quantize_weight

    def timed_quantize_weight(*args, **kw):
        w = kw["weights"] if "weights" in kw else args[0]
        nb, shape = w.shape[0], tuple(w.shape[1:])
        sync()
        ts = time.perf_counter()
        out = orig_quantize_weight(*args, **kw)
        sync()
        dt = time.perf_counter() - ts
        r = cur["rec"]
        r["modules_quantized"] += nb
        r["solve_calls"] += 1
        r["solve_s"] += dt
        print(f"  solve {nb} x {list(shape)} in {dt:.3f} s", file=sys.stderr, flush=True)
        return out

    gptq_base.quantize_weight = timed_quantize_weight

    # Which layers a subgraph's compression quantized (tells which layer a subgraph is).
    orig_compress_list = GPTQModifier.compress_module_list

    def named_compress_list(self, module_list):
        for mod in module_list:
            m = re.search(r"\blayers\.(\d+)\.", self._module_names.get(mod, ""))
            cur["rec"]["layers_seen"].add(int(m.group(1)) if m else -1)
        return orig_compress_list(self, module_list)

    GPTQModifier.compress_module_list = named_compress_list

    # The tokens each module's Hessian receives (all of them for every expert when every expert
    # is calibrated on every token).
    orig_accumulate = gptq_base.accumulate_hessian

    def counted_accumulate(inp, module, *args, **kw):
        h = cur["rec"]["hessian_tokens"]
        h[module] = h.get(module, 0) + inp.numel() // inp.shape[-1]
        return orig_accumulate(inp, module, *args, **kw)

    gptq_base.accumulate_hessian = counted_accumulate

    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    oneshot(model=model, processor=tok, recipe=recipe, dataset=ds, num_calibration_samples=a.nsamples,
            max_seq_length=a.seqlen, batch_size=1, shuffle_calibration_samples=False,
            moe_calibrate_all_experts=not a.routed_only)
    sync()
    t1 = time.perf_counter()
    # since the last subgraph's reset, so with oneshot's finalisation
    peak_end = gib(torch.cuda.max_memory_allocated(dev)) if cuda else None
    shutil.rmtree(cfg_dir, ignore_errors=True)

    # Checks: the router gates untouched, lm_head not quantized, every Linear still bf16.
    gate_ok = all(g.weight.dtype == torch.bfloat16 and torch.equal(g.weight, w0)
                  and not any(n.startswith("weight_") for n, _ in g.named_parameters())
                  and getattr(g, "quantization_scheme", None) is None
                  for g, w0 in zip(gates, gates_before))
    lm_head_ok = (getattr(model.lm_head, "quantization_scheme", None) is None
                  and not hasattr(model.lm_head, "weight_scale"))
    quantized = [n for n, m in model.named_modules() if hasattr(m, "weight_scale")]
    bad_dtype = [n for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and m.weight.dtype != torch.bfloat16]

    # Subgraph 0 is what precedes layer 0 (embedding, rotary, mask); subgraph L+1 is layer L, the
    # last one with the final norm and lm_head. Which layer a subgraph is comes from the names of
    # the modules it quantized, not from its index.
    per, other, ok = [], [], gate_ok and lm_head_ok and not bad_dtype
    prev_end = t0
    for i in sorted(subgraphs):
        r = subgraphs[i]
        end = r.get("prop_end", r.get("calib_end"))
        toks = list(r["hessian_tokens"].values())
        seen = sorted(r["layers_seen"])
        e = {"subgraph": i, "layer": seen[0] if len(seen) == 1 and seen[0] >= 0 else None,
             "wall_s": end - prev_end,
             "calibrate_s": r["calib_end"] - r["calib_start"],
             "compress_s": r["prop_start"] - r["calib_end"] if "prop_start" in r else None,
             "solve_s": r["solve_s"],
             "propagate_s": r["prop_end"] - r["prop_start"] if "prop_end" in r else None,
             "modules_quantized": r["modules_quantized"], "solve_calls": r["solve_calls"],
             "hessian_tokens_min": min(toks) if toks else None, "hessian_tokens_max": max(toks) if toks else None,
             "peak_gpu_mem_gib": r.get("peak_gpu_mem_gib")}
        if e["layer"] is None:
            e["layers_quantized"] = seen
            ok = ok and not seen and e["modules_quantized"] == 0
            other.append(e)
        else:
            ok = ok and e["modules_quantized"] == per_layer_expected
            per.append(e)
        prev_end = end
    ok = (ok and [e["layer"] for e in per] == list(range(a.layers)) and len(subgraphs) == a.layers + 1
          and len(quantized) == a.layers * per_layer_expected)
    # oneshot's peak: the per-subgraph peaks, what came before each reset, and the end
    peaks = [r[k] for r in subgraphs.values() for k in ("peak_before_gib", "peak_gpu_mem_gib") if k in r]
    peaks += [peak_end] if peak_end is not None else []

    res = {
        "llmcompressor": llmcompressor.__version__, "compressed_tensors": compressed_tensors.__version__,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "dims": d, "layer_params": n_param, "nsamples": a.nsamples, "seqlen": a.seqlen, "batch_size": 1,
        "scheme": a.scheme, "actorder": a.actorder, "block_size": 128, "dampening_frac": 0.01,
        "ignore": IGNORE, "moe_calibrate_all_experts": not a.routed_only, "layers": a.layers,
        # the Hessian accumulation is a float32 matmul: TF32 ("high") would change its time
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "triton": HAS_TRITON and os.environ.get("LLMCOMPRESSOR_DISABLE_GPTQ_TRITON", "0") != "1",
        "linearize_s": linearize_s, "peak_gpu_mem_build_gib": peak_build,
        "oneshot_s": t1 - t0,
        "setup_s": subgraphs[min(subgraphs)]["calib_start"] - t0 if subgraphs else None,
        "finalize_s": t1 - prev_end,
        "peak_gpu_mem_gib": max(peaks) if peaks else None,
        "modules_quantized": len(quantized), "modules_expected": a.layers * per_layer_expected,
        "router_gate": {"name": "model.layers.0.mlp.gate", "type": type(gates[0]).__name__,
                        "is_linear": isinstance(gates[0], torch.nn.Linear),
                        "weight_dtype": str(gates[0].weight.dtype), "untouched": gate_ok},
        "lm_head_unquantized": lm_head_ok, "non_bf16_linears": bad_dtype,
        "per_layer": per, "other_subgraphs": other,
        "checks_ok": ok,
    }
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
