"""Training-speed wrappers applied to a policy `Transformer` from outside (torchtitan style):
the attention kernel, activation checkpointing, and torch.compile per transformer block and
of the head's loss. The model code stays plain.

Each block (main layers and the MTP modules' blocks) is wrapped in place, so parameter names and
state-dict keys are unchanged (checkpoint_wrapper strips its prefix from state dicts, and
`Module.compile` compiles in place) and `policy.checkpoint` saves the result as usual.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from policy.model import MLA, AttentionKernel, Transformer


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


def parallelize(model: Transformer, config: SpeedConfig) -> Transformer:
    """Set the attention kernel, apply activation checkpointing, then compilation, to every
    block of `model` in place; with compile, also compile the output head's loss."""
    for module in model.modules():
        if isinstance(module, MLA):
            module.attention_kernel = config.attention_kernel
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
    return model
