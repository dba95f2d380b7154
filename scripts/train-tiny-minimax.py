#!/usr/bin/env python3
"""Train models/tiny-minimax-m2 from scratch and export it in the official MiniMax-M2 FP8 layout.

Reference packages (pinned; the device image has exactly these):
  torch==2.11.0 (CUDA), transformers==5.17.0 (MiniMaxM2ForCausalLM), tokenizers==0.23.2,
  safetensors==0.8.0, numpy. Also runs on the CPU (slowly; use --steps 20 for a smoke test).

Steps
  prepare  (CPU, here): tokenize .corpus/{train,heldout}.txt (made by scripts/train-tokenizer.py)
           with models/tiny-minimax-m2/tokenizer.json into .corpus-tok/{train,heldout}.u16
           (little-endian uint16 token ids; documents joined by the EOS token "[e~[").
  train    (GPU): MiniMaxM2ForCausalLM from scratch, f32 master weights, bf16 autocast, AdamW,
           cosine schedule, random 512-token windows of the training stream. The router's
           e_score_correction_bias (a buffer, never updated by training) is set to N(0, 0.05)
           with a fixed seed so that expert selection depends on it.
  export   FP8 block checkpoint exactly like MiniMaxAI/MiniMax-M2 (spec
           loaders-vllm-transformers.md section 0): per-expert w1/w2/w3 names, F8_E4M3 Linear
           weights with F32 weight_scale_inv per 128x128 tile (scale = amax/448 of the
           bf16-rounded weight tile, q = (w/scale).clamp(+-448).to(float8_e4m3fn)), F32 router
           gate + e_score_correction_bias, BF16 embeddings / norms / lm_head, 2 shards + index,
           config.json with the real MiniMax-M2 keys, generation_config.json.

Usage
  python3 scripts/train-tiny-minimax.py prepare
  python3 scripts/train-tiny-minimax.py train --out /tmp/run [--steps N] [--max-seconds S]
  (train also exports to --export-dir, default models/tiny-minimax-m2, and writes
   --out/train-log.json with the loss curve.)
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

MODEL_DIR = "models/tiny-minimax-m2"
TOK_DIR = ".corpus-tok"
BLOCK = 128
FP8_MAX = 448.0

# Architecture: MiniMax-M2 wiring at small size. Every Linear dimension is a multiple of 128.
ARCH = dict(
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=256,        # per expert
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    rotary_dim=32,                # = head_dim / 2, like MiniMax-M2 (64 of 128)
    rope_theta=5000000.0,
    num_local_experts=8,
    num_experts_per_tok=2,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
)
BOS_ID, ROLE_ID, EOS_ID = 4091, 4088, 4089


def hf_config_kwargs():
    a = ARCH
    return dict(
        vocab_size=a["vocab_size"], hidden_size=a["hidden_size"],
        intermediate_size=a["intermediate_size"], num_hidden_layers=a["num_hidden_layers"],
        num_attention_heads=a["num_attention_heads"], num_key_value_heads=a["num_key_value_heads"],
        head_dim=a["head_dim"], max_position_embeddings=a["max_position_embeddings"],
        rms_norm_eps=a["rms_norm_eps"], num_local_experts=a["num_local_experts"],
        num_experts_per_tok=a["num_experts_per_tok"], rope_theta=a["rope_theta"],
        partial_rotary_factor=a["rotary_dim"] / a["head_dim"], rotary_dim=a["rotary_dim"],
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, tie_word_embeddings=False,
        router_aux_loss_coef=0.001, router_jitter_noise=0.0,
    )


def release_config():
    """config.json in the key set of the official MiniMax-M2 release (sizes scaled down)."""
    a = ARCH
    L = a["num_hidden_layers"]
    return {
        "architectures": ["MiniMaxM2ForCausalLM"],
        "attention_dropout": 0.0,
        "attn_type_list": [1] * L,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "head_dim": a["head_dim"],
        "hidden_act": "silu",
        "hidden_size": a["hidden_size"],
        "initializer_range": 0.02,
        "intermediate_size": a["intermediate_size"],
        "max_position_embeddings": a["max_position_embeddings"],
        "model_type": "minimax_m2",
        "mtp_transformer_layers": 1,
        "num_attention_heads": a["num_attention_heads"],
        "num_experts_per_tok": a["num_experts_per_tok"],
        "num_hidden_layers": L,
        "num_key_value_heads": a["num_key_value_heads"],
        "num_local_experts": a["num_local_experts"],
        "num_mtp_modules": 3,
        "output_router_logits": False,
        "partial_rotary_factor": a["rotary_dim"] / a["head_dim"],
        "qk_norm_type": "per_layer",
        "quantization_config": {
            "activation_scheme": "dynamic",
            "fmt": "float8_e4m3fn",
            "quant_method": "fp8",
            "weight_block_size": [BLOCK, BLOCK],
            "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"],
        },
        "rms_norm_eps": a["rms_norm_eps"],
        "rope_theta": a["rope_theta"],
        "rotary_dim": a["rotary_dim"],
        "router_aux_loss_coef": 0.001,
        "router_jitter_noise": 0.0,
        "scoring_func": "sigmoid",
        "shared_intermediate_size": 0,
        "shared_moe_mode": "sigmoid",
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "5.17.0",
        "use_cache": True,
        "use_mtp": True,
        "use_qk_norm": True,
        "use_routing_bias": True,
        "vocab_size": a["vocab_size"],
    }


GENERATION_CONFIG = {
    "bos_token_id": BOS_ID,
    "do_sample": True,
    "eos_token_id": [EOS_ID],
    "temperature": 1.0,
    "top_k": 40,
    "top_p": 0.95,
    "transformers_version": "5.17.0",
}


# ----------------------------------------------------------------------------------------
def cmd_prepare(args):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))
    assert tok.token_to_id("[e~[") == EOS_ID and tok.token_to_id("]~!b[") == BOS_ID
    os.makedirs(TOK_DIR, exist_ok=True)
    for split in ("train", "heldout"):
        text = open(os.path.join(args.corpus, f"{split}.txt"), encoding="utf-8").read()
        docs = text.split("\n\n\n")  # DOC_SEP of train-tokenizer.py (also splits a few docs; harmless)
        encs = tok.encode_batch(docs, add_special_tokens=False)
        out = []
        for e in encs:
            out.extend(e.ids)
            out.append(EOS_ID)
        arr = np.asarray(out, dtype="<u2")
        arr.tofile(os.path.join(TOK_DIR, f"{split}.u16"))
        print(f"{split}: {len(docs)} docs, {arr.size} tokens")


# ----------------------------------------------------------------------------------------
def build_model(experts_impl, attn_impl):
    from transformers import MiniMaxM2Config, MiniMaxM2ForCausalLM
    cfg = MiniMaxM2Config(**hf_config_kwargs())
    cfg._experts_implementation = experts_impl
    cfg._attn_implementation = attn_impl
    model = MiniMaxM2ForCausalLM(cfg)
    return model


def set_routing_bias(model, seed=1234, std=0.05):
    g = torch.Generator().manual_seed(seed)
    for layer in model.model.layers:
        b = torch.randn(ARCH["num_local_experts"], generator=g) * std
        layer.mlp.e_score_correction_bias.copy_(b)


def check_partial_rotary(model):
    """Only the first rotary_dim (=head_dim/2) dims of each head rotate; the rest pass through."""
    from transformers.models.minimax_m2 import modeling_minimax_m2 as mm
    rd, hd = ARCH["rotary_dim"], ARCH["head_dim"]
    rot = model.model.rotary_emb
    assert rot.inv_freq.numel() == rd // 2, f"inv_freq has {rot.inv_freq.numel()} entries, want {rd // 2}"
    x = torch.randn(1, 2, 8, hd, device=rot.inv_freq.device)
    pos = torch.arange(8, device=x.device)[None]
    cos, sin = rot(x, pos)
    assert cos.shape[-1] == rd, cos.shape
    q, k = mm.apply_rotary_pos_emb(x, x, cos, sin)
    assert torch.equal(q[..., rd:], x[..., rd:]), "pass-through half changed"
    assert not torch.allclose(q[..., 1:, :rd], x[..., 1:, :rd]), "rotary half did not rotate"
    assert torch.equal(q[..., 0, :], x[..., 0, :]) or torch.allclose(q[..., 0, :], x[..., 0, :]), "pos 0 must be identity"
    return {"inv_freq_len": int(rot.inv_freq.numel()), "cos_last_dim": int(cos.shape[-1]),
            "pass_through_dims_unchanged": True}


def param_counts(model):
    sd = model.state_dict()
    tot = sum(v.numel() for k, v in sd.items() if "e_score_correction_bias" not in k)
    experts = sum(v.numel() for k, v in sd.items() if ".experts." in k)
    attn = sum(v.numel() for k, v in sd.items() if k.endswith("_proj.weight") and "self_attn" in k)
    emb = sd["model.embed_tokens.weight"].numel()
    head = sd["lm_head.weight"].numel()
    per_tok_experts = experts * ARCH["num_experts_per_tok"] // ARCH["num_local_experts"]
    return {"total": tot, "experts": experts, "attention_linear": attn, "embed_tokens": emb,
            "lm_head": head, "active_per_token": tot - experts + per_tok_experts}


def lr_at(step, total, peak, warmup, floor=0.1):
    if step < warmup:
        return peak * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


@torch.no_grad()
def eval_ppl(model, data, seq, device, max_windows=None, autocast=True):
    model.eval()
    n = (data.size - 1) // seq
    if max_windows:
        n = min(n, max_windows)
    tot_nll, tot_tok = 0.0, 0
    bs = 16
    for i in range(0, n, bs):
        idx = range(i, min(n, i + bs))
        x = torch.stack([torch.from_numpy(data[j * seq:j * seq + seq].astype(np.int64)) for j in idx]).to(device)
        y = torch.stack([torch.from_numpy(data[j * seq + 1:j * seq + seq + 1].astype(np.int64)) for j in idx]).to(device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(input_ids=x).logits
        nll = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
        tot_nll += nll.item()
        tot_tok += y.numel()
    model.train()
    return math.exp(tot_nll / tot_tok), tot_tok


def cmd_train(args):
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = np.fromfile(os.path.join(TOK_DIR, "train.u16"), dtype="<u2")
    held = np.fromfile(os.path.join(TOK_DIR, "heldout.u16"), dtype="<u2")
    print(f"device {device}; train tokens {train.size}, held-out tokens {held.size}", flush=True)

    impl = args.experts_impl
    model = build_model(impl, "sdpa")
    set_routing_bias(model)
    model.to(device)
    rot = check_partial_rotary(model)
    pc = param_counts(model)
    print("params", json.dumps(pc), "rotary", json.dumps(rot), flush=True)
    bias0 = [l.mlp.e_score_correction_bias.detach().cpu().clone() for l in model.model.layers]

    # Load balancing on the experts actually chosen (sigmoid + e_score_correction_bias): the
    # transformers aux loss ranks softmax(router_logits) and never sees the bias, so it cannot
    # balance the biased choice. This is the DeepSeek-V3 style balance loss:
    #   E * sum_i f_i * P_i, f_i = share of chosen (token, slot) pairs routed to expert i
    #   (no gradient), P_i = mean over tokens of the normalised sigmoid score of expert i.
    E = ARCH["num_local_experts"]
    bal = []

    def balance_hook(mod, inp, out):
        if not mod.training:
            return
        logits, _, top_idx = out
        sc = torch.sigmoid(logits.float())
        P = (sc / sc.sum(-1, keepdim=True)).mean(0)
        f = torch.bincount(top_idx.reshape(-1), minlength=E).float() / top_idx.numel()
        bal.append(E * (f.detach() * P).sum())

    for layer in model.model.layers:
        layer.mlp.gate.register_forward_hook(balance_hook)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in n else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")
    seq, bs = args.seq, args.batch
    rng = np.random.default_rng(args.seed)
    log = {"steps": [], "loss": [], "aux": [], "lr": [], "eval": []}
    t0 = time.time()
    model.train()
    step = 0
    total = args.steps
    while step < total:
        if step == 10:
            t10 = time.time()
        if args.max_seconds and step == 50:
            # fit the whole cosine schedule into the time budget (evals included, roughly)
            per = (time.time() - t10) / 40
            fit = int(args.max_seconds / (per * 1.08))
            if fit < total:
                print(f"step time {per * 1000:.1f} ms: {total} steps -> {fit}", flush=True)
                total = fit
        lr = lr_at(step, total, args.lr, args.warmup)
        for g in opt.param_groups:
            g["lr"] = lr
        starts = rng.integers(0, train.size - seq - 1, size=bs)
        xb = np.stack([train[s:s + seq + 1] for s in starts]).astype(np.int64)
        xb = torch.from_numpy(xb).to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            out = model(input_ids=xb[:, :-1])
            logits = out.logits
            lm_loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1))
            aux = torch.stack(bal).mean()
            bal.clear()
            loss = lm_loss + args.aux_coef * aux
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == total - 1:
            l = lm_loss.item()
            log["steps"].append(step)
            log["loss"].append(round(l, 4))
            log["aux"].append(round(float(aux.detach()), 4))
            log["lr"].append(lr)
            print(f"step {step} loss {l:.4f} aux {float(aux.detach()):.3f} lr {lr:.2e} t {time.time() - t0:.1f}s", flush=True)
        if args.eval_every and step > 0 and step % args.eval_every == 0:
            ppl, _ = eval_ppl(model, held, seq, device, max_windows=64)
            log["eval"].append([step, round(ppl, 3)])
            print(f"  eval ppl (64 windows) {ppl:.3f}", flush=True)
        if args.max_seconds and time.time() - t0 > 1.15 * args.max_seconds:
            print(f"stopping at step {step}: time limit", flush=True)
            break
        step += 1
    step = min(step, total - 1)
    train_s = time.time() - t0
    for l, b in zip(model.model.layers, bias0):
        assert torch.equal(l.mlp.e_score_correction_bias.cpu(), b), "routing bias changed in training"
    ppl_master, ntok = eval_ppl(model, held, seq, device)
    print(f"held-out ppl (f32 master weights, bf16 autocast, {ntok} tokens): {ppl_master:.3f}", flush=True)

    # expert load on held-out text (fraction of routed token slots per expert, per layer)
    load = expert_load(model, held[:seq * 16], seq, device)

    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    os.makedirs(args.out, exist_ok=True)
    export(sd, args.export_dir)
    log.update({"final_step": step, "planned_steps": total, "train_seconds": round(train_s, 1), "ppl_master_bf16_autocast": ppl_master,
                "heldout_eval_tokens": ntok, "params": pc, "rotary_check": rot, "expert_load": load,
                "batch": bs, "seq": seq, "peak_lr": args.lr, "aux_coef": args.aux_coef, "tokens_seen": (step + 1) * bs * seq,
                "train_tokens": int(train.size), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                "experts_implementation": impl, "torch": torch.__version__})
    import transformers
    log["transformers"] = transformers.__version__
    with open(os.path.join(args.out, "train-log.json"), "w") as f:
        json.dump(log, f, indent=1)
    print("done", flush=True)


@torch.no_grad()
def expert_load(model, data, seq, device):
    counts = [torch.zeros(ARCH["num_local_experts"]) for _ in model.model.layers]
    hooks = []
    for li, layer in enumerate(model.model.layers):
        def hook(mod, inp, out, li=li):
            _, _, idx = out
            counts[li] += torch.bincount(idx.reshape(-1).cpu(), minlength=ARCH["num_local_experts"]).float()
        hooks.append(layer.mlp.gate.register_forward_hook(hook))
    model.eval()
    x = torch.from_numpy(data[: (data.size // seq) * seq].astype(np.int64)).view(-1, seq).to(device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        model(input_ids=x)
    model.train()
    for h in hooks:
        h.remove()
    return [[round(float(c) / float(cs.sum()), 4) for c in cs] for cs in counts]


# ----------------------------------------------------------------------------------------
def quant_fp8_block(w):
    """w: f32 [out, in] -> (F8_E4M3 [out, in], F32 scale_inv [ceil(out/128), ceil(in/128)])."""
    w = w.to(torch.bfloat16).float()
    out_f, in_f = w.shape
    ro, ci = -(-out_f // BLOCK), -(-in_f // BLOCK)
    pad = torch.zeros(ro * BLOCK, ci * BLOCK)
    pad[:out_f, :in_f] = w
    tiles = pad.view(ro, BLOCK, ci, BLOCK)
    amax = tiles.abs().amax(dim=(1, 3))
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax)).float()
    q = (tiles / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    q = q.view(ro * BLOCK, ci * BLOCK)[:out_f, :in_f].contiguous()
    return q, scale.contiguous()


def dequant_fp8_block(q, s):
    """BF16(float(fp8) * scale_inv): f32 product, one rounding."""
    out_f, in_f = q.shape
    se = s.repeat_interleave(BLOCK, 0)[:out_f].repeat_interleave(BLOCK, 1)[:, :in_f]
    return (q.float() * se).to(torch.bfloat16)


def to_checkpoint_tensors(sd):
    """transformers in-memory state dict (f32) -> ordered {checkpoint name: tensor} per layer group."""
    L, E, I = ARCH["num_hidden_layers"], ARCH["num_local_experts"], ARCH["intermediate_size"]
    groups = []
    head = {"model.embed_tokens.weight": sd["model.embed_tokens.weight"].to(torch.bfloat16)}
    groups.append(head)
    for l in range(L):
        p = f"model.layers.{l}."
        g = {}
        g[p + "input_layernorm.weight"] = sd[p + "input_layernorm.weight"].to(torch.bfloat16)
        g[p + "post_attention_layernorm.weight"] = sd[p + "post_attention_layernorm.weight"].to(torch.bfloat16)
        for nm in ("q_proj", "k_proj", "v_proj", "o_proj"):
            q, s = quant_fp8_block(sd[p + f"self_attn.{nm}.weight"])
            g[p + f"self_attn.{nm}.weight"] = q
            g[p + f"self_attn.{nm}.weight_scale_inv"] = s
        g[p + "self_attn.q_norm.weight"] = sd[p + "self_attn.q_norm.weight"].to(torch.bfloat16)
        g[p + "self_attn.k_norm.weight"] = sd[p + "self_attn.k_norm.weight"].to(torch.bfloat16)
        g[p + "block_sparse_moe.gate.weight"] = sd[p + "mlp.gate.weight"].float().contiguous()
        g[p + "block_sparse_moe.e_score_correction_bias"] = sd[p + "mlp.e_score_correction_bias"].float().contiguous()
        gu = sd[p + "mlp.experts.gate_up_proj"]  # [E, 2I, H]: gate (w1) rows first, then up (w3)
        dn = sd[p + "mlp.experts.down_proj"]     # [E, H, I]
        assert gu.shape == (E, 2 * I, ARCH["hidden_size"]) and dn.shape == (E, ARCH["hidden_size"], I)
        for e in range(E):
            for wn, w in (("w1", gu[e, :I]), ("w2", dn[e]), ("w3", gu[e, I:])):
                q, s = quant_fp8_block(w.contiguous())
                g[p + f"block_sparse_moe.experts.{e}.{wn}.weight"] = q
                g[p + f"block_sparse_moe.experts.{e}.{wn}.weight_scale_inv"] = s
        groups.append(g)
    groups.append({"model.norm.weight": sd["model.norm.weight"].to(torch.bfloat16),
                   "lm_head.weight": sd["lm_head.weight"].to(torch.bfloat16)})
    return groups


def export(sd, out_dir):
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    groups = to_checkpoint_tensors(sd)
    L = ARCH["num_hidden_layers"]
    # shard 1: embeddings + first half of the layers; shard 2: the rest + norm + lm_head
    half = 1 + L // 2
    shards = [{k: v for g in groups[:half] for k, v in g.items()},
              {k: v for g in groups[half:] for k, v in g.items()}]
    n = len(shards)
    weight_map, total = {}, 0
    for i, sh in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file(sh, os.path.join(out_dir, fn), metadata={"format": "pt"})
        os.chmod(os.path.join(out_dir, fn), 0o644)
        for k, v in sh.items():
            weight_map[k] = fn
            total += v.numel() * v.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(release_config(), f, indent=2)
        f.write("\n")
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump(GENERATION_CONFIG, f, indent=2)
        f.write("\n")
    print(f"exported {len(weight_map)} tensors, {total} bytes, {n} shards -> {out_dir}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--corpus", default=".corpus")
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--export-dir", default=MODEL_DIR)
    t.add_argument("--steps", type=int, default=1600)
    t.add_argument("--max-seconds", type=float, default=0)
    t.add_argument("--batch", type=int, default=32)
    t.add_argument("--seq", type=int, default=512)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--warmup", type=int, default=100)
    t.add_argument("--eval-every", type=int, default=400)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--experts-impl", default="eager")
    t.add_argument("--aux-coef", type=float, default=0.02, help="load-balancing aux loss weight while training")
    args = ap.parse_args()
    {"prepare": cmd_prepare, "train": cmd_train}[args.cmd](args)


if __name__ == "__main__":
    main()
