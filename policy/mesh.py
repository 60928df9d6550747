"""The learner's device-mesh layout as configuration: how many ranks shard the dense weights
(`dp_shard`), how many split the routed experts (`ep`), mixed precision and offload, and the
check of a layout against the world size and the model. Torch-free (pydantic and arithmetic),
so `prover.config` composes it without importing torch; `policy.parallelize` applies it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    from policy.model import ModelArgs

Precision = Literal["float32", "bfloat16"]


class ShardingConfig(BaseModel):
    """How the learner's weights and experts are laid out over ranks (ignored on one device)."""

    model_config = ConfigDict(extra="forbid")

    dp_shard: int = Field(
        -1,
        description="Ranks each dense parameter is sharded over with FSDP2 (ZeRO-3); the world "
        "size must be a multiple (world/dp_shard replicas, HSDP). -1 = all ranks; 1 = no "
        "sharding, every rank holds the whole dense model (DDP-like).",
    )
    ep: int = Field(
        1,
        ge=1,
        description="Expert-parallel degree: each rank holds n_routed_experts/ep routed experts "
        "and tokens reach them by all-to-all (DeepSeek-V3 trains with 64). Must divide the world "
        "size and the number of routed experts; 1 = every rank holds every expert.",
    )
    param_dtype: Precision = Field(
        "bfloat16",
        description="Dtype FSDP all-gathers parameters in for forward/backward (mixed "
        "precision); the sharded master weights and the optimizer stay float32.",
    )
    reduce_dtype: Precision = Field(
        "float32", description="Dtype of the gradient reduce-scatter / all-reduce (fp32 keeps the "
        "sum of many ranks' small gradients exact enough; torchtitan's default)."
    )
    cpu_offload: bool = Field(
        False,
        description="Keep sharded parameters, gradients and the optimizer step on the CPU "
        "(FSDP2 CPUOffloadPolicy): less GPU memory, slower steps. CUDA only.",
    )
    reshard_after_forward: bool = Field(
        True,
        description="Free each block's gathered parameters after its forward and gather again "
        "for backward (ZeRO-3); False keeps them (ZeRO-2-like: more memory, one all-gather less).",
    )

    @field_validator("dp_shard")
    @classmethod
    def _dp_shard_known(cls, value: int) -> int:
        if value != -1 and value < 1:
            raise ValueError(f"dp_shard = {value}: use -1 (all ranks) or a rank count >= 1")
        return value


def check_mesh(config: ShardingConfig, world_size: int, args: ModelArgs) -> tuple[int, int]:
    """(dp_shard, ep) resolved for `world_size` ranks, or ValueError quoting every number that
    does not fit (the mesh, the world size, the model)."""
    dp_shard = world_size if config.dp_shard == -1 else config.dp_shard
    problems = []
    if dp_shard < 1:
        problems.append(f"learner.dp_shard = {config.dp_shard} must be -1 (all ranks) or >= 1")
    elif world_size % dp_shard:
        problems.append(
            f"learner.dp_shard = {dp_shard} does not divide the world size {world_size} "
            f"(world = replicas x dp_shard)"
        )
    if world_size % config.ep:
        problems.append(f"learner.ep = {config.ep} does not divide the world size {world_size}")
    moe = args.n_layers > args.n_dense_layers or args.n_mtp_layers > 0
    if config.ep > 1 and not moe:
        problems.append(f"learner.ep = {config.ep} but the model has no MoE layer")
    elif args.n_routed_experts % config.ep:
        problems.append(
            f"n_routed_experts = {args.n_routed_experts} is not divisible by learner.ep = "
            f"{config.ep} (every rank holds the same number of experts)"
        )
    if world_size > 1 and config.ep > 1 and world_size // config.ep > 1:
        edp = world_size // config.ep
        if (2 * args.moe_inter_dim) % edp or args.dim % edp:
            problems.append(
                f"expert weights (2*moe_inter_dim = {2 * args.moe_inter_dim}, dim = {args.dim}) "
                f"cannot be split evenly over world/ep = {edp} ranks"
            )
    if problems:
        raise ValueError("device mesh does not fit: " + "; ".join(problems))
    return dp_shard, config.ep
