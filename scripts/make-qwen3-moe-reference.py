#!/usr/bin/env python3
"""Forward-pass reference for models/tiny-qwen3-moe: tests/golden/qwen3-moe/reference.safetensors.

Reference packages (venv /work/venvs/hq, from PyPI): torch == 2.15.0 (CPU), transformers ==
5.17.0, accelerate == 1.15.0 (transformers' FP8 loader requires it), safetensors == 0.8.0.

Steps (all on the CPU, one thread, deterministic):
  1. Qwen3MoeForCausalLM.from_pretrained(models/tiny-qwen3-moe,
     quantization_config=FineGrainedFP8Config(dequantize=True), dtype=torch.bfloat16,
     attn_implementation="eager", experts_implementation="eager"): transformers' own FP8
     dequantization, BF16(float32(fp8) * float32(weight_scale_inv)) per 128x128 tile, the
     weights checked bit for bit by scripts/make-tiny-qwen3-moe.py (tests/golden/qwen3-moe/bf16).
  2. model.float(): every weight is a BF16 value, exact in float32; the forward runs in float32
     (router softmax in float32 as transformers always does it).
  3. One batch of N_SEQ sequences of SEQ_LEN token ids (drawn with a fixed seed from the
     non-special ids 0..4083; sequence 0 starts with BOS 4091), positions 0..SEQ_LEN-1, no
     padding, causal mask. Forward hooks record the embedding output, each decoder layer's output
     (the residual stream after the MoE add), the final RMSNorm output and each router's
     (logits, top-k weights, top-k ids) exactly as Qwen3MoeTopKRouter returns them.

Run from the repository root: /work/venvs/hq/bin/python scripts/make-qwen3-moe-reference.py
"""
import os
import sys

import torch
from safetensors.torch import save_file

import transformers
from transformers import FineGrainedFP8Config, Qwen3MoeForCausalLM

assert transformers.__version__ == "5.17.0", transformers.__version__
torch.set_num_threads(1)

MODEL = "models/tiny-qwen3-moe"
OUT = "tests/golden/qwen3-moe/reference.safetensors"
SEED = 20261207
N_SEQ, SEQ_LEN = 4, 64
N_SPECIAL_FROM = 4084      # ids >= 4084 are the tokenizer's special / added tokens
BOS_ID = 4091
TOPK = 16


def main():
    model = Qwen3MoeForCausalLM.from_pretrained(
        MODEL, quantization_config=FineGrainedFP8Config(dequantize=True), dtype=torch.bfloat16,
        attn_implementation="eager", experts_implementation="eager")
    model = model.float().eval()
    cfg = model.config
    assert cfg._attn_implementation == "eager" and cfg._experts_implementation == "eager"
    L, E, K, H = cfg.num_hidden_layers, cfg.num_experts, cfg.num_experts_per_tok, cfg.hidden_size
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32, n

    g = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, N_SPECIAL_FROM, (N_SEQ, SEQ_LEN), generator=g)
    ids[0, 0] = BOS_ID

    rec = {"hidden": [None] * (L + 2), "router": [None] * L}
    hooks = [model.model.embed_tokens.register_forward_hook(
                 lambda m, i, o: rec["hidden"].__setitem__(0, o.detach().clone())),
             model.model.norm.register_forward_hook(
                 lambda m, i, o: rec["hidden"].__setitem__(L + 1, o.detach().clone()))]
    for l, layer in enumerate(model.model.layers):
        def layer_hook(m, i, o, l=l):
            rec["hidden"][l + 1] = (o[0] if isinstance(o, tuple) else o).detach().clone()

        def router_hook(m, i, o, l=l):
            rec["router"][l] = tuple(t.detach().clone() for t in o)
        hooks.append(layer.register_forward_hook(layer_hook))
        hooks.append(layer.mlp.gate.register_forward_hook(router_hook))

    with torch.no_grad():
        out = model(input_ids=ids, position_ids=torch.arange(SEQ_LEN).expand(N_SEQ, -1), use_cache=False)
    for h in hooks:
        h.remove()
    logits = out.logits.float()                                   # [N, T, V]
    assert logits.shape == (N_SEQ, SEQ_LEN, cfg.vocab_size)
    # the final-norm output is the lm_head input: check the recording against the logits
    assert torch.equal(torch.nn.functional.linear(rec["hidden"][L + 1], model.lm_head.weight), logits)

    lse = torch.logsumexp(logits, dim=-1)
    tv, ti = torch.topk(logits, TOPK, dim=-1)
    logp = logits - lse[..., None]
    nll = -logp[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    hidden = torch.stack(rec["hidden"], dim=1)                    # [N, L+2, T, H]
    r_logits = torch.stack([r[0].view(N_SEQ, SEQ_LEN, E) for r in rec["router"]], dim=1)
    r_w = torch.stack([r[1].view(N_SEQ, SEQ_LEN, K) for r in rec["router"]], dim=1)
    r_i = torch.stack([r[2].view(N_SEQ, SEQ_LEN, K) for r in rec["router"]], dim=1)
    assert hidden.shape == (N_SEQ, L + 2, SEQ_LEN, H)
    # the softmax top-2 gap: how far the chosen experts are from a tie (router noise margin)
    probs = torch.softmax(r_logits, dim=-1)
    srt = probs.sort(dim=-1, descending=True).values
    gap = (srt[..., K - 1] - srt[..., K]).min().item()

    tensors = {
        "input_ids": ids.to(torch.int32).contiguous(),
        "logits_seq0": logits[0].contiguous(),
        "topk_values": tv.contiguous(),
        "topk_indices": ti.to(torch.int32).contiguous(),
        "logsumexp": lse.contiguous(),
        "nll": nll.contiguous(),
        "hidden_states": hidden.contiguous(),
        "router_logits": r_logits.contiguous(),
        "router_topk_weights": r_w.float().contiguous(),
        "router_topk_ids": r_i.to(torch.int32).contiguous(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    save_file(tensors, OUT, metadata={"format": "pt"})
    os.chmod(OUT, 0o644)
    ppl = torch.exp(nll.mean()).item()
    print(f"{OUT}: {os.path.getsize(OUT)} bytes; mean nll {nll.mean().item():.4f} (ppl {ppl:.1f}, "
          f"uniform {cfg.vocab_size}); logit std {logits.std().item():.3f}; "
          f"smallest router top-{K} vs next prob gap {gap:.2e}")
    for k, v in tensors.items():
        print(f"  {k:22s} {str(v.dtype):14s} {list(v.shape)}")


if __name__ == "__main__":
    sys.exit(main())
