"""Named model sizes for `ModelArgs`, like torchtitan's flavors: one for CPU tests, one in the
configuration of the H100 baselines (transformers and torchtitan, ../shared/MACHINES.md), one
for real runs.

Counts (`policy.model.count_parameters`, main model / plus MTP):
- tiny:  3.7M total, 3.1M active (+2.0M MTP), vocab 1024; dims vLLM's CPU MLA backend accepts
  (qk_nope 128, qk_rope 64, v 128, kv_lora 512; smaller head dims are rejected there).
- small: 684M total, 200M active (+57M MTP), the configuration of ../shared/MACHINES.md (hidden
  1024, 12 layers, 32 routed experts top-4 + 1 shared, kv_lora 256, q_lora 512, 4 groups / 2).
- base:  3.75B total, 0.67B active (+0.25B MTP); bf16 weights and AdamW state fit one 80 GB GPU.
- deepseek-v3-671b: DeepSeek-V3's published configuration (its config.json on the Hugging Face
  hub, deepseek-ai/DeepSeek-V3, and arXiv:2412.19437 sec. 4.2): 671.0B total, 37.6B active
  (+11.6B MTP; the report's 671B / 37B, and 685B with the MTP module and its copies of the
  embedding and head). In REFERENCE_PRESETS: for `prover model plan`, never built here.
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

# Published configurations to plan with (`policy.plan`, `prover model plan`), never built here:
# `prover model init` and `preset()` only know PRESETS.
REFERENCE_PRESETS: dict[str, ModelArgs] = {
    "deepseek-v3-671b": ModelArgs(
        vocab_size=129280,
        dim=7168,
        n_layers=61,
        n_dense_layers=3,
        max_seq_len=163840,
        n_heads=128,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
        inter_dim=18432,
        moe_inter_dim=2048,
        n_routed_experts=256,
        n_activated_experts=8,
        n_shared_experts=1,
        n_expert_groups=8,
        n_limited_groups=4,
        route_scale=2.5,
        bias_update_speed=1e-3,
        seq_aux_loss_alpha=1e-4,
        n_mtp_layers=1,
        mtp_loss_weight=0.3,
        rope_theta=10000.0,
        rope_factor=40.0,
        original_seq_len=4096,
        beta_fast=32,
        beta_slow=1,
        mscale=1.0,
        mscale_all_dim=1.0,
        init_std=0.006,
    ),
}


def plan_preset(name: str) -> ModelArgs:
    """A preset to plan with: PRESETS and the published REFERENCE_PRESETS."""
    known = {**PRESETS, **REFERENCE_PRESETS}
    if name not in known:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(known)}")
    return known[name]


def preset(name: str, **overrides) -> ModelArgs:
    """The named preset with fields replaced, e.g. `preset("tiny", vocab_size=tok.vocab_size)`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
