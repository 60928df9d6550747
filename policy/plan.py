"""A plan on paper: per-GPU memory and communication of one training step of a preset on a
mesh we may not have (`prover model plan`), for the layout `policy.parallelize` builds.

The layout: dense parameters FSDP-sharded over dp_shard ranks (replicated world/dp_shard
times), routed experts split E/ep per rank and FSDP-sharded over the world/ep ranks holding
the same experts; mixed precision (parameters all-gathered in bf16, float32 master weights,
gradients reduced in float32), AdamW with float32 moments. No tensor or pipeline parallelism.

Per GPU, in bytes (P_d dense parameters, P_e routed-expert parameters, MTP included):
- sharded state: 4 (fp32 weights) + 4 (fp32 gradients) + 8 (AdamW m, v) = 16 bytes per
  parameter held: P_d / dp_shard + P_e / world;
- gathered: the root (embedding, head, final norm; kept gathered through the step) in bf16 with
  its fp32 gradient, plus two blocks' gathered bf16 weights (the running one and FSDP's
  prefetch) and one block's unsharded fp32 gradients before the reduce-scatter;
- activations: what autograd saves per token, counted tensor by tensor from our
  implementation (`activation_bytes_per_token`, bf16 compute, FlashAttention with values padded
  to the query/key head dim; tests hold the count equal to the saved tensors of real blocks),
  times the micro-batch's tokens; with full activation checkpointing only each block's input
  is kept, plus one block's activations while it is recomputed.
Communication per GPU and micro-batch: the EP all-to-all moves each token's k hidden vectors
(bf16) to their experts and back, forward and backward (and again in the recompute), the
share (ep-1)/ep that leaves the GPU under uniform routing; FSDP all-gathers bf16 weights in
forward and backward and reduce-scatters fp32 gradients (each micro-batch, as FSDP2 does by
default).

What it leaves out: the CUDA context and allocator fragmentation (keep ~10% headroom), the
temporary logits of the loss beyond the saved log-probabilities, the all-to-all buffers
(about 2 k D bytes per token and MoE layer), and communication/computation overlap.
"""

from __future__ import annotations

from typing import Any, Literal

from policy.mesh import ShardingConfig, check_mesh
from policy.model import ModelArgs, count_parameters
from policy.presets import plan_preset

GIB = 2**30
BF16, FP32 = 2, 4


def activation_bytes_per_token(args: ModelArgs) -> dict[str, float]:
    """Bytes autograd saves per token for each kind of block, bf16 compute (no checkpointing).

    Counted from the tensors our implementation saves (`tests/policy/test_plan.py` compares
    with saved-tensor hooks on real blocks): an RMSNorm keeps its float32 input, the rsqrt, the
    bf16 normalised input and output (8 x + 4 bytes for width x); FlashAttention keeps q, k,
    the padded v and the output (4 H qk_head_dim bf16) and the log-sum-exp (fp32 per head).
    """
    d, h, qk = args.dim, args.n_heads, args.qk_head_dim
    norm = lambda width: 8 * width + 4  # noqa: E731
    attention = (
        2 * norm(d)  # input and post-attention norms
        + (norm(args.q_lora_rank) if args.q_lora_rank else 0)
        + norm(args.kv_lora_rank)
        + 4 * h * qk * BF16  # q, k, v padded to qk, output padded
        + h * FP32  # log-sum-exp
        + h * args.v_head_dim * BF16  # o_proj input
    )
    dense_mlp = 4 * args.inter_dim * BF16  # gate, up, silu(gate), silu(gate) * up
    e, k, g = args.n_routed_experts, args.n_activated_experts, args.n_expert_groups
    moe = (
        2 * e * FP32  # sigmoid scores, biased scores
        + d * FP32  # router input in float32
        + 2 * k * d * BF16  # the k routed copies in, the k expert outputs back
        + 4 * k * args.moe_inter_dim * BF16  # per copy: gate|up, silu(gate), product
        + 4 * args.n_shared_experts * args.moe_inter_dim * BF16  # shared experts (an MLP)
        + (17 * g + 8 * args.n_limited_groups if g > 1 else 0)  # group top-k bookkeeping
        + 30 * k  # indices, weights, sort order (int64 / float32)
        + 4
    )
    mtp_extra = 3 * norm(d) + 2 * d * BF16  # enorm, hnorm, shared-head norm; [emb; h] concat
    head = args.vocab_size * FP32 + norm(d)  # float32 log-probabilities; the final norm
    return {
        "dense_block": attention + dense_mlp,
        "moe_block": attention + moe,
        "mtp_extra": mtp_extra,
        "head": head,
        "block_input": d * BF16,
    }


def plan(
    model: ModelArgs | str,
    *,
    gpus: int,
    gpu_memory_gib: float,
    ep: int = 1,
    dp_shard: int = -1,
    seq: int = 4096,
    micro_batch: int = 1,
    activation_checkpointing: Literal["none", "full"] = "full",
) -> dict[str, Any]:
    """Memory and communication per GPU of one micro-batch step of `model` (ModelArgs or a
    preset name, `policy.presets.plan_preset`); ValueError quoting the numbers when the mesh
    does not fit the model or the GPU count."""
    args = plan_preset(model) if isinstance(model, str) else model
    if gpus < 1 or gpu_memory_gib <= 0 or seq < 1 or micro_batch < 1:
        raise ValueError(
            f"gpus = {gpus}, gpu memory = {gpu_memory_gib} GiB, seq = {seq}, micro-batch = "
            f"{micro_batch}: each must be positive"
        )
    if seq > args.max_seq_len:
        raise ValueError(f"--seq {seq} exceeds the preset's max_seq_len {args.max_seq_len}")
    dp_shard, ep = check_mesh(ShardingConfig(dp_shard=dp_shard, ep=ep), gpus, args)
    counts = count_parameters(args)
    expert_per_layer = args.n_routed_experts * 3 * args.dim * args.moe_inter_dim
    routed = counts["routed_experts"] + args.n_mtp_layers * expert_per_layer
    total = counts["total_with_mtp"]
    dense = total - routed
    held = dense / dp_shard + routed / gpus  # parameters whose fp32 shard lives on this GPU

    moe_layers = args.n_layers - args.n_dense_layers + args.n_mtp_layers
    dense_block_params = (counts["attention"] + counts["dense_mlp"]) / max(args.n_layers, 1)
    moe_block_params = (
        counts["attention"] / args.n_layers
        + args.n_routed_experts * args.dim
        + args.n_shared_experts * 3 * args.dim * args.moe_inter_dim
        + expert_per_layer / ep  # a block gathers its experts only over "edp"
    )
    largest_block = max(moe_block_params if moe_layers else 0, dense_block_params)
    root = 2 * args.vocab_size * args.dim + args.dim
    gathered = root * (BF16 + FP32) + largest_block * (2 * BF16 + FP32)

    per_token = activation_bytes_per_token(args)
    tokens = seq * micro_batch
    blocks = (
        [per_token["dense_block"]] * args.n_dense_layers
        + [per_token["moe_block"]] * (args.n_layers - args.n_dense_layers)
        + [per_token["moe_block"] + per_token["mtp_extra"]] * args.n_mtp_layers
    )
    heads = (1 + args.n_mtp_layers) * per_token["head"]
    if activation_checkpointing == "none":
        activations = tokens * (sum(blocks) + heads)
    else:
        activations = tokens * (len(blocks) * per_token["block_input"] + max(blocks) + heads)

    state = {
        "weights_fp32": held * FP32,
        "gradients_fp32": held * FP32,
        "adamw_fp32": held * 2 * FP32,
        "gathered_bf16_and_unsharded_grads": gathered,
        "activations": activations,
    }
    memory = {k: v / GIB for k, v in state.items()}
    memory["total"] = sum(memory.values())

    passes = 3 if activation_checkpointing == "full" else 2  # forward, backward (+ recompute)
    a2a = 2 * passes * moe_layers * tokens * args.n_activated_experts * args.dim * BF16 * (ep - 1) / ep
    edp = gpus // ep
    fsdp_gather = (dense * (dp_shard - 1) / dp_shard + routed / ep * (edp - 1) / edp) * BF16 * 2
    fsdp_reduce = (dense * (dp_shard - 1) / dp_shard + routed / ep * (edp - 1) / edp) * FP32
    active = counts["active"] + counts["mtp_active"]
    flops = (8 if activation_checkpointing == "full" else 6) * active * tokens
    return {
        "mesh": {
            "gpus": gpus,
            "dp_shard": dp_shard,
            "dp_replicate": gpus // dp_shard,
            "ep": ep,
            "edp": edp,
            "experts_per_gpu": args.n_routed_experts // ep,
        },
        "preset": model if isinstance(model, str) else None,
        "step": {
            "seq": seq,
            "micro_batch": micro_batch,
            "tokens_per_gpu": tokens,
            "activation_checkpointing": activation_checkpointing,
        },
        "parameters": {
            "total": total,
            "total_without_mtp": counts["total"],
            "active_per_token": counts["active"],
            "dense": dense,
            "routed_experts": routed,
            "held_per_gpu": held,
        },
        "memory_gib": {k: round(v, 6) for k, v in memory.items()},
        "gpu_memory_gib": gpu_memory_gib,
        "fits": memory["total"] <= gpu_memory_gib,
        "headroom_gib": round(gpu_memory_gib - memory["total"], 6),
        "communication_gib_per_micro_batch": {
            "ep_all_to_all": round(a2a / GIB, 3),
            "fsdp_all_gather": round(fsdp_gather / GIB, 3),
            "fsdp_reduce_scatter": round(fsdp_reduce / GIB, 3),
        },
        "tflop_per_micro_batch": round(flops / 1e12, 3),
    }
