#!/usr/bin/env python3
"""Per-layer REAP golden for models/tiny-minimax-m2: tests/golden/reap/per-layer.json.

llm-compressor 0.14's REAPPruningModifier has no global / non-uniform mode (it drops
int(E * sparsity) experts in every layer), so there is no reference map to compare
`reap-prune --per-layer` with. This script derives the expected map instead, independently
of fourbit:
  - from the saliencies llm-compressor's REAPSaliencyTracker computed on the embedded model
    (tests/golden/reap/minimax-reap.json, made by scripts/gen-reap-golden.py: sums and routed
    counts per layer and expert; the mean is sum / count, 0 for an expert never routed);
  - by the rule documented in src/jobs/prune.h: one ranking of every (layer, expert), lowest
    saliency first (ties: the higher expert index, then the higher layer, first), dropped in
    that order until L * int(E * F) are gone, a layer at the floor (--min-experts, default
    num_experts_per_tok) skipping its turn;
and serialises the per-layer counts with compressed-tensors 0.20.1's own ExpertSparsityConfig
(model_dump(mode="json")), as a field of its QuantizationConfig (moe_sparsity_config), which is
what reap-prune must write into config.json.

It also records, per case, the smallest relative saliency gap between a dropped and a kept
expert across the whole ranking at the cut: fourbit's saliencies agree with the reference's
within 1.4e-7 relative, so a gap far above that means the comparison cannot flip on rounding.

Venv: /work/venvs/p13 (compressed-tensors 0.20.1 from PyPI via `pip download`; torch etc. from
/work/venvs/hq through a .pth file). Run from the repository root:
    /work/venvs/p13/bin/python scripts/gen-reap-perlayer-golden.py
"""
import json
import sys

import compressed_tensors
from compressed_tensors.config import ExpertSparsityConfig
from compressed_tensors.quantization import QuantizationConfig

REAP = "tests/golden/reap/minimax-reap.json"
OUT = "tests/golden/reap/per-layer.json"
CONFIG = "models/tiny-minimax-m2/config.json"
# (sparsity, floor): the default floor (top-k), and a floor that binds in every layer (4 of 8 at
# 0.5: the per-layer map must then equal the uniform one, llm-compressor's own at 0.5).
CASES = [(0.25, None), (0.5, None), (0.5, 4)]


def select(sal, n_layers, n_experts, n_drop, floor):
    items = [(sal[l][e], -e, -l, l, e) for l in range(n_layers) for e in range(n_experts)]
    items.sort()
    keep = [n_experts] * n_layers
    dropped = set()
    for s, _, _, l, e in items:
        if len(dropped) == n_drop:
            break
        if keep[l] <= floor:
            continue
        dropped.add((l, e))
        keep[l] -= 1
    assert len(dropped) == n_drop
    kept_s = [sal[l][e] for l in range(n_layers) for e in range(n_experts) if (l, e) not in dropped]
    drop_s = [sal[l][e] for (l, e) in dropped]
    # the closest call: the largest dropped saliency vs the smallest kept one of a layer
    # that was not at its floor when it was passed over
    gap = min(abs(k - d) / max(abs(k), abs(d), 1e-300) for k in kept_s for d in drop_s)
    retained = {l: [e for e in range(n_experts) if (l, e) not in dropped] for l in range(n_layers)}
    return keep, retained, gap


def main():
    g = json.load(open(REAP))
    cfg = json.load(open(CONFIG))
    n_layers, n_experts, top_k = cfg["num_hidden_layers"], cfg["num_local_experts"], cfg["num_experts_per_tok"]
    src = g["runs"]["0.25"]["saliency"]
    sal = []
    for l in range(n_layers):
        t = src[f"model.layers.{l}.mlp"]
        sal.append([s / c if c else 0.0 for s, c in zip(t["sum"], t["count"])])
    doc = {"generator": "scripts/gen-reap-perlayer-golden.py", "saliency_from": REAP + " runs.0.25.saliency",
           "compressed_tensors": compressed_tensors.__version__, "num_experts": n_experts,
           "num_experts_per_tok": top_k, "cases": []}
    for sp, floor in CASES:
        n_drop = n_layers * int(n_experts * sp)
        fl = floor if floor is not None else top_k
        keep, retained, gap = select(sal, n_layers, n_experts, n_drop, fl)
        esc = ExpertSparsityConfig(method="prune", num_experts=keep)
        qc = QuantizationConfig(config_groups={}, moe_sparsity_config=esc)
        doc["cases"].append({
            "sparsity": sp, "min_experts": floor, "n_drop": n_drop,
            "per_layer": keep,
            "retained": {f"model.layers.{l}.block_sparse_moe": retained[l] for l in range(n_layers)},
            "moe_sparsity_config": esc.model_dump(mode="json"),
            "quantization_config_field": qc.model_dump(mode="json")["moe_sparsity_config"],
            "closest_relative_gap": gap,
        })
        print(f"sparsity {sp} floor {fl}: {keep}, closest gap {gap:.3g}")
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(OUT)


if __name__ == "__main__":
    sys.exit(main())
