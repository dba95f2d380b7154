"""A synthetic MiniMax-M2 for the reference-tool benchmarks (scripts/bench-autoround-ref.py,
scripts/bench-gptq-ref.py): transformers' own MiniMaxM2ForCausalLM with MiniMax-M2's real layer
dimensions, random bf16 weights and random calibration ids, so that both benchmarks time the same
model on the same tokens.

Only the vocabulary is small (the tokenizer's, 4096 for the repo's tiny MiniMax-M2): embedding
and lm_head are not quantized by either tool and are not part of a layer's time.

Needs torch and transformers 5.x (with minimax_m2); imported by the scripts beside it.
"""
import torch


def dims(experts=256, small=False):
    """MiniMax-M2's layer dimensions (hidden 3072, 48 heads x head_dim 128, 8 KV heads, `experts`
    routed experts of intermediate 1536, top-8, partial rotary 64 of 128); with small, tiny ones
    for a CPU smoke test of a script (8 experts, top-2)."""
    if small:
        return dict(hidden_size=256, num_attention_heads=4, head_dim=64, num_key_value_heads=2,
                    num_local_experts=8, intermediate_size=256, num_experts_per_tok=2, rotary_dim=32)
    return dict(hidden_size=3072, num_attention_heads=48, head_dim=128, num_key_value_heads=8,
                num_local_experts=experts, intermediate_size=1536, num_experts_per_tok=8, rotary_dim=64)


def config(d, layers, tok, seqlen):
    """MiniMaxM2Config for `layers` decoder layers of dims `d` over tokenizer `tok`'s vocabulary.
    partial_rotary_factor is written out because transformers' MiniMax-M2 ignores rotary_dim
    without it; sigmoid routing with the correction bias and per-layer q/k norm as MiniMax-M2."""
    import transformers
    return transformers.MiniMaxM2Config(
        **d, num_hidden_layers=layers, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, max_position_embeddings=max(seqlen, 2048),
        partial_rotary_factor=d["rotary_dim"] / d["head_dim"], rms_norm_eps=1e-6, rope_theta=5e6,
        scoring_func="sigmoid", use_routing_bias=True, use_qk_norm=True, qk_norm_type="per_layer",
        tie_word_embeddings=False, use_cache=False)


def build_model(cfg, dev):
    """The bf16 model of `cfg`, built directly on device `dev` (no host copy of a 7 GB layer),
    with transformers' own initialisation under seed 0, in eval mode."""
    import transformers
    torch.manual_seed(0)
    with torch.device(dev):
        model = transformers.MiniMaxM2ForCausalLM(cfg).to(torch.bfloat16)
    model.eval()
    return model


def calib_ids(tok, nsamples, seqlen):
    """`nsamples` tensors [1, seqlen] of random ids (generator seed 1), all below the tokenizer's
    special tokens: auto-round masks the pad id as padding, and it also reads an id repeated at a
    sequence's end as padding, so the second-last id is made to differ from the last. The same
    ids go to every tool, so the benchmarks calibrate on the same tokens."""
    top = min(i for i in tok.all_special_ids) if tok.all_special_ids else len(tok)
    g = torch.Generator().manual_seed(1)
    data = []
    for _ in range(nsamples):
        ids = torch.randint(0, top, (1, seqlen), generator=g)
        ids[0, -2] = (ids[0, -1] + 1) % top
        data.append(ids)
    return data
