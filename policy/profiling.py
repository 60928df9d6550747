"""Timing and profiling helpers for training speed: MLA attention timed under each kernel
choice (`SpeedConfig.attention_kernel`), the fastest one picked, and a profiler's table of the
ops where a step's time goes. `benchmarks.policy_train` uses all three; a trainer can call
`time_attention_kernels` + `fastest_attention_kernel` to tune its kernel before it starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from policy.model import ATTENTION_KERNELS, AttentionKernel, ModelArgs, attention


def significant(value: float, digits: int = 4) -> float:
    """`value` rounded to `digits` significant digits: a measurement keeps its precision at
    any scale (0.0000031 stays 3.1e-06 where rounding to fixed decimals would report 0.0)."""
    return float(f"{value:.{digits}g}")


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
            row["ms_fwd_bwd"] = significant(seconds * 1e3)
            row["tflops"] = significant(flops / seconds / 1e12)
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
            "self_ms_per_step": significant(getattr(e, key) / 1e3 / calls),
            "percent": significant(100 * getattr(e, key) / total, 3),
            "calls_per_step": e.count // calls,
        }
        for e in events[:top]
    ]
