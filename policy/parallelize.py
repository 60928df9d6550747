"""Training-speed wrappers applied to a policy `Transformer` from outside (torchtitan style):
the attention kernel, activation checkpointing, and torch.compile per transformer block and
of the head's loss. The model code stays plain.

Each block (main layers and the MTP modules' blocks) is wrapped in place, so parameter names and
state-dict keys are unchanged (checkpoint_wrapper strips its prefix from state dicts, and
`Module.compile` compiles in place) and `policy.checkpoint` saves the result as usual.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from policy.model import ATTENTION_KERNELS, MLA, AttentionKernel, ModelArgs, Transformer, attention


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
        "All compute the same function (benchmarks/policy_train.py times each).",
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
    containers = [(model.layers, i) for i in range(len(model.layers))]
    containers += [(mtp, "block") for mtp in model.mtp]
    for parent, key in containers:
        block = parent[key] if isinstance(key, int) else getattr(parent, key)
        if config.activation_checkpointing == "full":
            block = checkpoint_wrapper(block, preserve_rng_state=False)
        elif config.activation_checkpointing == "selective":
            block = checkpoint_wrapper(
                block, preserve_rng_state=False, context_fn=_selective_context
            )
        if config.compile:
            block.compile(fullgraph=config.compile_fullgraph)
        if isinstance(key, int):
            parent[key] = block
        else:
            setattr(parent, key, block)
    return model


def time_attention_kernels(
    args: ModelArgs,
    batch: int,
    seq: int,
    *,
    device: str | torch.device = "cuda",
    dtype: torch.dtype = torch.bfloat16,
    calls: int = 10,
) -> list[dict[str, Any]]:
    """Time MLA's training attention (causal, forward + backward) at (batch, n_heads, seq) under
    each concrete kernel choice; a trainer picks the fastest with `fastest_attention_kernel`.

    Rows: kernel, ms_fwd_bwd, tflops (backward counted as 2.5x forward, MLA's unpadded dims),
    max_abs_diff of the output from a float32 reference, the device ops that ran (`ops`, top 4
    by time), or `error` when the kernel choice fails here.
    """
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)

    def rand(dim: int) -> torch.Tensor:
        shape = (batch, args.n_heads, seq, dim)
        return torch.randn(*shape, device=device, dtype=dtype, generator=generator)

    q, k, v = rand(args.qk_head_dim), rand(args.qk_head_dim), rand(args.v_head_dim)
    grad = rand(args.v_head_dim)
    scale = args.qk_head_dim**-0.5
    reference = attention(
        q.float(), k.float(), v.float(), scale=scale, is_causal=True, kernel="sdpa"
    )
    flops = 3.5 * 2 * batch * args.n_heads * seq * seq * (args.qk_head_dim + args.v_head_dim) / 2

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rows: list[dict[str, Any]] = []
    for kernel in (name for name in ATTENTION_KERNELS if name != "auto"):
        row: dict[str, Any] = {"kernel": kernel}
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]

        def call(kernel: str = kernel, leaves: list[torch.Tensor] = leaves) -> torch.Tensor:
            out = attention(*leaves, scale=scale, is_causal=True, kernel=kernel)  # type: ignore[arg-type]
            out.backward(grad)
            return out

        try:
            out = call()
            row["max_abs_diff"] = float((out.detach().float() - reference).abs().max())
            call()
            sync()
            start = time.perf_counter()
            for _ in range(calls):
                call()
            sync()
            seconds = (time.perf_counter() - start) / calls
            row["ms_fwd_bwd"] = round(seconds * 1e3, 3)
            row["tflops"] = round(flops / seconds / 1e12, 1)
            row["ops"] = [op["name"][:120] for op in top_ops(call, device, 4, calls=1)]
        except Exception as exc:  # a kernel this device or build lacks is a finding
            row["error"] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        rows.append(row)
    return rows


def fastest_attention_kernel(rows: list[dict[str, Any]]) -> AttentionKernel:
    """The kernel of the fastest error-free row of `time_attention_kernels` ('auto' if none)."""
    timed = [r for r in rows if "ms_fwd_bwd" in r]
    return min(timed, key=lambda r: r["ms_fwd_bwd"])["kernel"] if timed else "auto"


def top_ops(
    call: Callable[[], Any], device: str | torch.device, top: int, calls: int = 2
) -> list[dict[str, Any]]:
    """Profile `calls` runs of `call`: the `top` ops by self device time (CPU time on CPU),
    each with ms and calls per run and its share of the profiled total."""
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    cuda = device.type == "cuda"
    with profile(
        activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    ) as prof:
        for _ in range(calls):
            call()
        if cuda:
            torch.cuda.synchronize(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [
        {
            "name": e.key,
            "self_ms_per_step": round(getattr(e, key) / 1e3 / calls, 3),
            "percent": round(100 * getattr(e, key) / total, 2),
            "calls_per_step": e.count // calls,
        }
        for e in events[:top]
    ]
