"""Named model sizes for `ModelArgs`, like torchtitan's flavors: one for CPU tests, one in the
configuration of the H100 baselines (transformers and torchtitan, ../shared/MACHINES.md), one
for real runs.

Counts (`policy.model.count_parameters`, main model / plus MTP):
- tiny:  3.7M total, 3.1M active (+2.0M MTP), vocab 1024; dims vLLM's CPU MLA backend accepts
  (qk_nope 128, qk_rope 64, v 128, kv_lora 512; smaller head dims are rejected there).
- small: 684M total, 200M active (+57M MTP), the configuration of ../shared/MACHINES.md (hidden
  1024, 12 layers, 32 routed experts top-4 + 1 shared, kv_lora 256, q_lora 512, 4 groups / 2).
- base:  3.75B total, 0.67B active (+0.25B MTP); bf16 weights and AdamW state fit one 80 GB GPU.
The vocabulary is a default: `prover model init` sets it from the tokenizer.
"""

from __future__ import annotations

from dataclasses import replace

from policy.model import ModelArgs

PRESETS: dict[str, ModelArgs] = {
    "tiny": ModelArgs(
        vocab_size=1024,
        dim=256,
        n_layers=2,
        n_dense_layers=1,
        max_seq_len=4096,
        n_heads=4,
        q_lora_rank=128,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        inter_dim=512,
        moe_inter_dim=128,
        n_routed_experts=8,
        n_activated_experts=2,
        n_shared_experts=1,
        n_expert_groups=2,
        n_limited_groups=1,
        n_mtp_layers=1,
    ),
    # ModelArgs' defaults are this preset; spelled out so the preset never drifts with them.
    "small": ModelArgs(
        vocab_size=32000,
        dim=1024,
        n_layers=12,
        n_dense_layers=1,
        max_seq_len=4096,
        n_heads=8,
        q_lora_rank=512,
        kv_lora_rank=256,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        inter_dim=2816,
        moe_inter_dim=512,
        n_routed_experts=32,
        n_activated_experts=4,
        n_shared_experts=1,
        n_expert_groups=4,
        n_limited_groups=2,
        n_mtp_layers=1,
    ),
    "base": ModelArgs(
        vocab_size=32000,
        dim=1536,
        n_layers=16,
        n_dense_layers=1,
        max_seq_len=8192,
        n_heads=12,
        q_lora_rank=768,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        inter_dim=4096,
        moe_inter_dim=768,
        n_routed_experts=64,
        n_activated_experts=6,
        n_shared_experts=2,
        n_expert_groups=8,
        n_limited_groups=4,
        n_mtp_layers=1,
    ),
}


def preset(name: str, **overrides) -> ModelArgs:
    """The named preset with fields replaced, e.g. `preset("tiny", vocab_size=tok.vocab_size)`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
