"""Routed-expert compute alone: our grouped-GEMM MoE against transformers' on the same shapes.

Times forward + backward of the routed experts of one MoE layer (the part of DeepSeekMoE that
moves tokens: sort by expert, gather, two grouped GEMMs, un-permute, weighted sum) for
- `ours`: `policy.moe.routed_experts_grouped` (rows padded per expert to 16 on CUDA),
- `transformers`: `DeepseekV3Experts` with its `grouped_mm` experts implementation,
- `transformers-eager` and `ours-loop`: the per-expert Python loops (reference; `--loops`),
on identical weights and routing (uniform random top-k), and checks that every output equals
ours. Shapes default to the `small` preset and a training micro-batch of 8 x 2048 tokens on
CUDA (2,048 tokens on CPU, where the machine is small).

    python -m benchmarks.moe                       # writes runs/bench/moe.json
    python -m benchmarks.moe --device cpu --tokens 512 --preset tiny
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import machine_info, write_json
from policy.moe import routed_experts_grouped, routed_experts_loop
from policy.presets import PRESETS
from policy.profiling import significant

IMPLEMENTATIONS = ("ours", "transformers", "transformers-eager", "ours-loop")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", choices=sorted(PRESETS), help="expert shapes")
    p.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="tokens per call (default: 16384 on CUDA, 2048 on CPU)",
    )
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--repeats", type=int, default=10, help="timed calls; the best is reported")
    p.add_argument("--loops", action="store_true", help="also time the per-expert Python loops")
    p.add_argument("--out", type=Path, default=Path("runs/bench/moe.json"), help="JSON output path")
    opts = p.parse_args(argv)
    if opts.device == "auto":
        opts.device = "cuda" if torch.cuda.is_available() else "cpu"
    if opts.tokens is None:
        opts.tokens = 16384 if opts.device == "cuda" else 2048
    if opts.tokens < 1 or opts.repeats < 1:
        p.error("--tokens and --repeats must be positive")
    return opts


def transformers_experts(
    gate_up: torch.Tensor, down: torch.Tensor, implementation: str
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """transformers' DeepseekV3Experts holding the given weights (same fused layout as ours)."""
    from transformers import DeepseekV3Config
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3Experts

    n_experts, double_inter, dim = gate_up.shape
    config = DeepseekV3Config(
        hidden_size=dim, moe_intermediate_size=double_inter // 2, n_routed_experts=n_experts
    )
    config._experts_implementation = implementation
    with torch.device("meta"):
        module = DeepseekV3Experts(config)
    module.gate_up_proj = torch.nn.Parameter(gate_up)
    module.down_proj = torch.nn.Parameter(down)
    return lambda x, indices, weights: module(x, indices, weights)


def make_call(
    name: str,
    x: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    grad: torch.Tensor,
) -> Callable[[], torch.Tensor]:
    """One forward + backward of implementation `name` on fresh leaf copies of the inputs."""
    x, gate_up, down = (t.detach().clone().requires_grad_() for t in (x, gate_up, down))
    if name in ("ours", "ours-loop"):
        experts = routed_experts_grouped if name == "ours" else routed_experts_loop

        def forward() -> torch.Tensor:
            return experts(x, indices, weights, gate_up, down)
    else:
        module = transformers_experts(
            gate_up, down, "grouped_mm" if name == "transformers" else "eager"
        )

        def forward() -> torch.Tensor:
            return module(x, indices, weights.to(x.dtype))

    def call() -> torch.Tensor:
        out = forward()
        out.backward(grad)
        return out

    return call


def time_call(fn: Callable[[], torch.Tensor], device: str, repeats: int) -> float:
    """Best seconds of forward + backward over `repeats` calls after two warm-ups."""

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    best = float("inf")
    for i in range(repeats + 2):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        if i >= 2:
            best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = parse_args(argv)
    args = PRESETS[opts.preset]
    device, dtype = torch.device(opts.device), getattr(torch, opts.dtype)
    n, dim, inter = opts.tokens, args.dim, args.moe_inter_dim
    n_experts, top_k = args.n_routed_experts, args.n_activated_experts
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g).to(device, dtype)
    indices = torch.rand(n, n_experts, generator=g).topk(top_k, dim=-1).indices.to(device)
    weights = torch.rand(n, top_k, generator=g).to(device)
    gate_up = (torch.randn(n_experts, 2 * inter, dim, generator=g) * dim**-0.5).to(device, dtype)
    down = (torch.randn(n_experts, dim, inter, generator=g) * inter**-0.5).to(device, dtype)
    grad = torch.randn(n, dim, generator=g).to(device, dtype)

    names = [m for m in IMPLEMENTATIONS if opts.loops or "loop" not in m and "eager" not in m]
    # every FLOP of the two expert GEMMs: 3 matmuls of (tokens*k) x dim x inter, fwd + 2x bwd
    flops = 3 * 2 * 3 * n * top_k * dim * inter
    report: dict[str, Any] = {
        "benchmark": "moe",
        "config": {
            "preset": opts.preset,
            "tokens": n,
            "dim": dim,
            "moe_inter_dim": inter,
            "experts": n_experts,
            "top_k": top_k,
            "dtype": opts.dtype,
            "repeats": opts.repeats,
        },
        "environment": machine_info(opts.device),
        "results": [],
    }
    reference = None
    for name in names:
        row: dict[str, Any] = {"implementation": name}
        try:
            call = make_call(name, x, indices, weights, gate_up, down, grad)
            out = call().detach().float()
            if reference is None:
                reference = out
            row["max_abs_diff_vs_ours"] = float((out - reference).abs().max())
            row["max_rel_diff_vs_ours"] = row["max_abs_diff_vs_ours"] / float(reference.abs().max())
            seconds = time_call(call, opts.device, opts.repeats)
            row["ms_fwd_bwd"] = significant(seconds * 1e3)
            row["tokens_per_s"] = significant(n / seconds)
            row["tflops"] = significant(flops / seconds / 1e12)
        except Exception as exc:  # one failing implementation must not lose the others
            row["error"] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        report["results"].append(row)
        print(json.dumps(row), flush=True)
    timed = {r["implementation"]: r["ms_fwd_bwd"] for r in report["results"] if "ms_fwd_bwd" in r}
    report["speedup"] = {
        f"ours/{peer}": significant(timed[peer] / timed["ours"])
        for peer in timed
        if peer != "ours" and "ours" in timed
    }
    write_json(report, opts.out)
    cfg = report["config"]
    print(
        f"\n{cfg['tokens']} tokens x top-{cfg['top_k']} of {cfg['experts']} experts "
        f"(dim {cfg['dim']}, inter {cfg['moe_inter_dim']}), {cfg['dtype']}, forward + backward; "
        f"{report['environment']['device']}"
    )
    for row in report["results"]:
        if "ms_fwd_bwd" in row:
            print(
                f"  {row['implementation']:<20} {row['ms_fwd_bwd']:9.2f} ms "
                f"{row['tflops']:7.2f} TFLOP/s  max diff {row['max_rel_diff_vs_ours']:.1e} (relative)"
            )
        else:
            print(f"  {row['implementation']:<20} FAILED: {row['error']}")
    for name, ratio in report["speedup"].items():
        print(f"  {name}: {ratio:.2f}x")
    print(f"wrote {opts.out}")
    return report


if __name__ == "__main__":
    main()
