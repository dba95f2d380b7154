#!/usr/bin/env python3
"""What llm-compressor writes into config.json for a `scheme:` preset and for the equivalent
`config_groups`: tests/golden/scheme-forms/forms.json.

For NVFP4, NVFP4A16 and W4A16, runs llm-compressor 0.14.0.1's `oneshot` with each recipe form
on the embedded MiniMax-M2 (models/tiny-minimax-m2, dequantized to BF16 as in
scripts/gen-reap-golden.py, experts linearised by load_quantizable_moe so that `Linear` targets
them), on the CPU, and stores the `quantization_config` of the config.json it saves:
  - preset: recipes/minimax.yaml, recipes/minimax-nvfp4a16.yaml, recipes/minimax-w4a16.yaml;
  - config_groups: tests/golden/scheme-forms/cg-*.yaml (the preset's arguments written out).
NVFP4 (W4A4) calibrates its input observers on the 8 samples of
tests/golden/model-quant/calib-ids.jsonl; the weight-only schemes need no data.

The tests compare fourbit's `config_groups` (group names apart: llm-compressor numbers them
group_0..., fourbit keeps the recipe's) and the scalar fields with these; "version" (another
issue) and "ignore" (oneshot expands it to module names; fourbit writes the recipe's list, as
model_free_ptq does) are masked there and said so.

Venv: /work/venvs/hq (llmcompressor 0.14.0.1, compressed-tensors 0.19.0, torch 2.15.0 CPU,
transformers 5.17.0). Run from the repository root:
    /work/venvs/hq/bin/python scripts/gen-scheme-form-golden.py
"""
import json
import os
import sys
import tempfile

import compressed_tensors
import llmcompressor
import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import importlib.util  # noqa: E402

_spec = importlib.util.spec_from_file_location("reapgold", os.path.join(os.path.dirname(__file__), "gen-reap-golden.py"))
reapgold = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reapgold)

OUT = "tests/golden/scheme-forms/forms.json"
IDS = "tests/golden/model-quant/calib-ids.jsonl"
FORMS = {
    "NVFP4": {"preset": "recipes/minimax.yaml", "config_groups": "tests/golden/scheme-forms/cg-nvfp4.yaml"},
    "NVFP4A16": {"preset": "recipes/minimax-nvfp4a16.yaml", "config_groups": "tests/golden/scheme-forms/cg-nvfp4a16.yaml"},
    "W4A16": {"preset": "recipes/minimax-w4a16.yaml", "config_groups": "tests/golden/scheme-forms/cg-w4a16.yaml"},
}


def llmc_recipe(path, work):
    """The recipe without fourbit's own `fourbit:` block (llm-compressor would reject it)."""
    import yaml
    doc = yaml.safe_load(open(path))
    doc.pop("fourbit", None)
    out = os.path.join(work, os.path.basename(path))
    with open(out, "w") as f:
        yaml.safe_dump(doc, f)
    return out


def run(recipe, scheme, bf16, ids, work, tag):
    from datasets import Dataset
    from llmcompressor import oneshot
    model = reapgold.load_model(bf16, torch.float32)
    out = os.path.join(work, tag)
    kw = {}
    if scheme == "NVFP4":
        kw = dict(dataset=Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids]}),
                  num_calibration_samples=len(ids), max_seq_length=max(len(x) for x in ids), batch_size=1,
                  shuffle_calibration_samples=False, pipeline="basic")
    oneshot(model=model, recipe=llmc_recipe(recipe, work), output_dir=out, **kw)
    with open(os.path.join(out, "config.json")) as f:
        return json.load(f)["quantization_config"]


def main():
    ids = [json.loads(l)["input_ids"] for l in open(IDS) if l.strip()]
    work = tempfile.mkdtemp(prefix="fb-forms-")
    bf16 = reapgold.make_bf16(os.path.join(work, "bf16"))
    doc = {"generator": "scripts/gen-scheme-form-golden.py", "llmcompressor": llmcompressor.__version__,
           "compressed_tensors": compressed_tensors.__version__, "torch": torch.__version__,
           "transformers": transformers.__version__, "source": reapgold.SRC, "forms": {}}
    for scheme, forms in FORMS.items():
        doc["forms"][scheme] = {}
        for form, recipe in forms.items():
            qc = run(recipe, scheme, bf16, ids, work, f"{scheme}-{form}")
            doc["forms"][scheme][form] = {"recipe": recipe, "quantization_config": qc}
            print(scheme, form, json.dumps(qc["config_groups"], sort_keys=True))
    with open(OUT, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    print(OUT)


if __name__ == "__main__":
    sys.exit(main())
