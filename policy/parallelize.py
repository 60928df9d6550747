"""Training wrappers applied to a policy `Transformer` from outside (torchtitan style): the
attention kernel, activation checkpointing, torch.compile per transformer block and of the
head's loss, and, across ranks, expert parallelism (`policy.expert_parallel`) and FSDP2
(`torch.distributed.fsdp.fully_shard`) with mixed precision. The model code stays plain and
single-device; one device without a process group is the default and applies no sharding.

The device mesh (torchtitan's layout, without tensor or pipeline parallelism):
- dense parameters (attention, norms, dense MLPs, shared experts, router, embedding, head) are
  sharded over a 2-D mesh ("dp_replicate", "dp_shard") of world/dp_shard x dp_shard ranks:
  FSDP when dp_shard = world, HSDP when 1 < dp_shard < world, plain replication (gradients
  all-reduced) when dp_shard = 1;
- routed experts are split over ("edp", "ep") of world/ep x ep ranks: consecutive groups of ep
  ranks each hold all experts, E/ep per rank (`Shard(0)` on "ep"), and the world/ep ranks that
  hold the same experts shard them once more with FSDP (`Shard(1)` on "edp").
Gradients are means over every rank's tokens: FSDP averages the dense ones over the world;
each rank's expert gradients sum the ep ranks' tokens the all-to-all brought to it, so
`ExpertParallelExperts` divides them by ep before FSDP averages them over "edp".

Each block (main layers and the MTP modules' blocks) is wrapped in place, so parameter names and
state-dict keys are unchanged (checkpoint_wrapper strips its prefix from state dicts, and
`Module.compile` compiles in place) and `policy.checkpoint` saves the result as usual.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
    register_fsdp_forward_method,
)
from torch.distributed.tensor import Shard
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from policy.expert_parallel import ExpertParallelExperts
from policy.mesh import Precision, ShardingConfig, check_mesh
from policy.model import MLA, AttentionKernel, ModelArgs, MoE, RoutedExperts, Transformer


class SpeedConfig(BaseModel):
    """How a policy model is prepared for training."""

    model_config = ConfigDict(extra="forbid")

    activation_checkpointing: Literal["none", "full", "selective"] = Field(
        "none",
        description="Recompute activations in backward: 'full' keeps only each block's input; "
        "'selective' also keeps matmul outputs (torchtitan's op-level SAC), trading memory for "
        "less recompute; 'none' stores everything (fastest when memory allows).",
    )
    compile: bool = Field(False, description="torch.compile each transformer block (inductor).")
    compile_fullgraph: bool = Field(
        False,
        description="Require one graph per block (errors on graph breaks instead of falling back).",
    )
    attention_kernel: AttentionKernel = Field(
        "auto",
        description="SDPA kernel of MLA's training path: 'flash' pads values to the query/key "
        "head dim so FlashAttention takes MLA's unequal dims; 'cudnn' prefers cuDNN's fused "
        "attention; 'sdpa' leaves it to torch's dispatch; 'auto' = flash on CUDA, sdpa on CPU. "
        "All compute the same function (`policy.profiling.time_attention_kernels` times each).",
    )


# Ops whose outputs selective checkpointing saves rather than recomputes (matmuls, the MoE's
# grouped GEMMs and attention: the expensive ones).
_SAVE_OPS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
}
if hasattr(torch.ops.aten, "_grouped_mm"):
    _SAVE_OPS.add(torch.ops.aten._grouped_mm.default)


def _selective_policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _SAVE_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context():
    return create_selective_checkpoint_contexts(_selective_policy)


@dataclass(frozen=True)
class ParallelMesh:
    """The device meshes of one learner: `dense` ("dp_replicate", "dp_shard") for the dense
    parameters, `experts` ("edp", "ep") for the routed experts."""

    dense: DeviceMesh
    experts: DeviceMesh

    @property
    def world_size(self) -> int:
        return self.dense.size()

    @property
    def ep(self) -> int:
        return self.experts["ep"].size()


def build_mesh(config: ShardingConfig, args: ModelArgs, device_type: str | None = None) -> ParallelMesh:
    """The meshes for the running process group (`init_process_group` first), checked against
    the world size and the model; ValueError quoting the numbers otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("build_mesh needs an initialised process group (policy.launch)")
    world = dist.get_world_size()
    dp_shard, ep = check_mesh(config, world, args)
    if device_type is None:
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    dense = init_device_mesh(
        device_type, (world // dp_shard, dp_shard), mesh_dim_names=("dp_replicate", "dp_shard")
    )
    experts = init_device_mesh(device_type, (world // ep, ep), mesh_dim_names=("edp", "ep"))
    return ParallelMesh(dense=dense, experts=experts)


def _dtype(name: Precision) -> torch.dtype:
    return torch.bfloat16 if name == "bfloat16" else torch.float32


def _moe_modules(model: Transformer) -> list[MoE]:
    return [m for m in model.modules() if isinstance(m, MoE)]


def apply_expert_parallel(model: Transformer, mesh: ParallelMesh) -> None:
    """Replace every MoE's `RoutedExperts` with `ExpertParallelExperts` over the "ep" mesh
    dimension (same parameter names, full shapes as DTensors, E/ep experts per rank)."""
    for moe in _moe_modules(model):
        assert isinstance(moe.experts, RoutedExperts)
        moe.experts = ExpertParallelExperts(moe.experts, mesh.experts["ep"])  # type: ignore[assignment]


def _blocks(model: Transformer) -> list[nn.Module]:
    """The transformer blocks (main layers, then each MTP module's block), wrapped or not."""
    return list(model.layers) + [mtp.get_submodule("block") for mtp in model.mtp]


def apply_fsdp(model: Transformer, mesh: ParallelMesh, config: ShardingConfig) -> None:
    """FSDP2 units: each routed-experts module (over "edp"), each block and each MTP module
    (over the dense mesh), and the root (embedding, final norm, head: used by the main model
    and every MTP depth, so they stay gathered from the root's forward to its backward)."""
    mp = MixedPrecisionPolicy(
        param_dtype=_dtype(config.param_dtype), reduce_dtype=_dtype(config.reduce_dtype)
    )
    offload: OffloadPolicy = OffloadPolicy()
    if config.cpu_offload:
        if mesh.dense.device_type != "cuda":
            raise ValueError("learner.cpu_offload needs CUDA devices (the weights already live on the CPU)")
        offload = CPUOffloadPolicy()

    def shard(module: nn.Module, on: DeviceMesh, reshard: bool, dim: int = 0) -> None:
        fully_shard(
            module,
            mesh=on,
            reshard_after_forward=reshard,
            shard_placement_fn=lambda param: Shard(dim),
            mp_policy=mp,
            offload_policy=offload,
        )

    for block in _blocks(model):
        moe = next((m for m in block.modules() if isinstance(m, MoE)), None)
        if moe is not None and isinstance(moe.experts, ExpertParallelExperts):
            # dim 0 (experts) is already split over "ep": shard the rows of each expert
            shard(moe.experts, mesh.experts["edp"], config.reshard_after_forward, dim=1)
        shard(block, mesh.dense, config.reshard_after_forward)
    for mtp in model.mtp:
        shard(mtp, mesh.dense, config.reshard_after_forward)
    shard(model, mesh.dense, reshard=False)
    # training calls `model.loss`, and the RL learner `model.trunk` (then reads lm_head.weight,
    # still gathered: the root does not reshard after forward), not forward: the root gathers
    # its parameters for those too
    register_fsdp_forward_method(model, "loss")
    register_fsdp_forward_method(model, "trunk")


def parallelize(
    model: Transformer,
    config: SpeedConfig,
    mesh: ParallelMesh | None = None,
    sharding: ShardingConfig | None = None,
) -> Transformer:
    """Prepare `model` in place for training: the attention kernel, expert parallelism (with a
    mesh whose ep > 1), activation checkpointing and compilation of every block (and of the
    head's loss), then FSDP2 (with a mesh). Without a mesh, the single-device path: no
    process group, no sharding."""
    if mesh is not None:
        sharding = sharding or ShardingConfig()
        check_mesh(
            sharding.model_copy(update={"dp_shard": mesh.dense["dp_shard"].size(), "ep": mesh.ep}),
            mesh.world_size,
            model.args,
        )
        if config.compile and config.compile_fullgraph and mesh.ep > 1:
            raise ValueError(
                f"compile_fullgraph with learner.ep = {mesh.ep}: the all-to-all splits are read "
                "on the host (one graph break per MoE layer); turn compile_fullgraph off"
            )
    for module in model.modules():
        if isinstance(module, MLA):
            module.attention_kernel = config.attention_kernel
    if mesh is not None and mesh.ep > 1:
        apply_expert_parallel(model, mesh)
    if config.compile:
        # An instance attribute shadowing the method: the head weight stays `lm_head.weight`.
        model.head_loss = torch.compile(model.head_loss, fullgraph=config.compile_fullgraph)  # type: ignore[method-assign]

    def wrap(block: nn.Module) -> nn.Module:
        if config.activation_checkpointing == "full":
            block = checkpoint_wrapper(block, preserve_rng_state=False)
        elif config.activation_checkpointing == "selective":
            block = checkpoint_wrapper(
                block, preserve_rng_state=False, context_fn=_selective_context
            )
        if config.compile:
            block.compile(fullgraph=config.compile_fullgraph)
        return block

    for i, layer in enumerate(model.layers):
        model.layers[i] = wrap(layer)
    for mtp in model.mtp:
        mtp.register_module("block", wrap(mtp.get_submodule("block")))
    if mesh is not None:
        apply_fsdp(model, mesh, sharding or ShardingConfig())
    return model

