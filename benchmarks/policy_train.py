"""Training throughput of our policy model against its peers on the same configuration.

Measures tokens/s, MFU and peak memory for one training step (forward, loss, backward, AdamW)
of our `Transformer` (policy/model.py), transformers' `DeepseekV3ForCausalLM` and torchtitan
0.2.2's DeepSeek-V3 (when importable; "unavailable" otherwise), all built from the same preset,
eager and with torch.compile (per transformer block for every model), in one run. The setting
of ../shared/MACHINES.md: preset small, batch 8 x 2048 tokens, bf16 weights, AdamW.

MFU = 6 * active params * tokens/s / peak bf16 FLOP/s (attention FLOPs not counted, as in that
file's baseline numbers; H100 and H200 SXM dense bf16 peak 989 TFLOP/s, `--peak-tflops`),
reported to 4 significant digits, so a slow CPU's ~3e-6 is not rounded to 0. `ours` trains
without MTP for a like-for-like comparison; `ours+mtp` adds the preset's MTP modules (its MFU
counts their parameters, not the second use of the shared head). Each (model, mode) runs in
its own try block: a failure is recorded in the JSON and the run goes on.

On CUDA the run first times MLA attention alone under each kernel choice (the `attention`
table: torch's dispatch, padded-V FlashAttention, cuDNN) and trains `ours` with the fastest
(`--attention-kernel tuned`, what a trainer does with `policy.profiling.time_attention_kernels`);
every row carries a profiler table of its top device ops and, compiled, its graph-break count.

    python -m benchmarks.policy_train --out $OUT/policy_train.json           # GPU, full run
    python -m benchmarks.policy_train --device cpu --preset tiny --batch 2 --seq 128 --steps 3

On the GPU machine (measured on the H100: Python 3.12, no pydantic, no torchtitan): `benchmarks/stage-gpu-wheels`
stages the wheels to carry and prints the one device call (the CUDA tests, then this script).
Eager runs go first and the JSON is rewritten after every run, so a run cut short by the time
limit still leaves its finished rows; `--resume` that JSON in a second call runs only the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import resource
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import machine_info, write_json
from policy.balancing import register_bias_update_hook
from policy.checkpoint import hf_config
from policy.model import ATTENTION_KERNELS, ModelArgs, Transformer, count_parameters
from policy.parallelize import SpeedConfig, parallelize
from policy.presets import PRESETS
from policy.profiling import fastest_attention_kernel, significant, time_attention_kernels, top_ops

# The strongest peer first, our MTP variant last: a run cut short keeps the key ratio.
MODELS = ("ours", "torchtitan", "transformers", "ours+mtp")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=8, help="sequences per step")
    p.add_argument("--seq", type=int, default=2048, help="tokens per sequence")
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument(
        "--warmup", type=int, default=3, help="untimed steps first (compilation happens here)"
    )
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when available)")
    p.add_argument(
        "--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weight dtype"
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="peak dense FLOP/s of the device in TFLOP/s for MFU (H100 and H200 SXM bf16: 989)",
    )
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {MODELS}")
    p.add_argument(
        "--modes",
        default=None,
        help="comma-separated subset of eager,compile (default: both on CUDA, eager on CPU)",
    )
    p.add_argument(
        "--activation-checkpointing",
        default="none",
        choices=["none", "full", "selective"],
        help="for our model only (peers run without)",
    )
    p.add_argument(
        "--fullgraph", action="store_true", help="compile our blocks with fullgraph=True"
    )
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    p.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add a torch.profiler top-kernel table per run (default: on for CUDA)",
    )
    p.add_argument(
        "--attention-kernel",
        default="tuned",
        choices=["tuned", *ATTENTION_KERNELS],
        help="SDPA kernel of our model (SpeedConfig.attention_kernel); tuned = the fastest of "
        "the attention table (auto when the table is off)",
    )
    p.add_argument(
        "--attention-table",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="time MLA attention forward+backward under each kernel choice at the run's shape "
        "first (default: on for CUDA)",
    )
    p.add_argument("--profile-top", type=int, default=15, help="rows of the profiler table")
    p.add_argument("--out", type=Path, default=Path("policy_train.json"), help="JSON output path")
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="an earlier report of the same configuration: keep its measured rows and its "
        "attention table, run only the rest (a second device call after a cut-short first)",
    )
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        p.error(f"unknown models {unknown}; choose from {list(MODELS)}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.profile is None:
        args.profile = args.device == "cuda"
    if args.attention_table is None:
        args.attention_table = args.device == "cuda"
    if args.modes is None:
        args.modes = "eager,compile" if args.device == "cuda" else "eager"
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if set(args.modes) - {"eager", "compile"}:
        p.error(f"--modes must be eager and/or compile, got {args.modes}")
    return args


# ---- model builders: each returns (model, loss_fn(tokens) -> scalar) ----


def build_ours(margs: ModelArgs, opts: argparse.Namespace, compile_: bool, mtp: bool):
    margs = dataclasses.replace(margs, n_mtp_layers=margs.n_mtp_layers if mtp else 0)
    with torch.device(opts.device):
        model = Transformer(margs)
    model.to(getattr(torch, opts.dtype))
    parallelize(
        model,
        SpeedConfig(
            activation_checkpointing=opts.activation_checkpointing,
            compile=compile_,
            compile_fullgraph=opts.fullgraph,
            attention_kernel=opts.attention_kernel,
        ),
    )
    return model, lambda tokens: model.loss(tokens, mtp=mtp).loss


def build_transformers(margs: ModelArgs, opts: argparse.Namespace, compile_: bool):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    keys = {
        k: v for k, v in hf_config(margs).items() if k not in ("policy_training", "architectures")
    }
    keys["num_nextn_predict_layers"] = 0
    config = DeepseekV3Config(**keys)
    config._attn_implementation = "sdpa"
    with torch.device(opts.device):
        model = DeepseekV3ForCausalLM(config)
    model.to(getattr(torch, opts.dtype))
    if compile_:
        for layer in model.model.layers:
            layer.compile()

    def loss_fn(tokens):
        return model(input_ids=tokens, labels=tokens).loss

    return model, loss_fn


def build_torchtitan(margs: ModelArgs, opts: argparse.Namespace, compile_: bool):
    """torchtitan 0.2.2's DeepSeek-V3, built as ../shared/MACHINES.md describes."""
    try:
        from torchtitan.models.deepseek_v3 import DeepSeekV3Model, DeepSeekV3ModelArgs
        from torchtitan.models.moe import MoEArgs
    except ImportError as exc:
        raise ImportError(f"unavailable: torchtitan not importable ({exc})") from exc
    if opts.device != "cuda":
        # Its router counts tokens with torch.histc on integers, which only CUDA implements.
        raise ImportError("unavailable: torchtitan 0.2.2's MoE runs on CUDA only (torch.histc)")

    def known(cls, **kwargs):
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in kwargs.items() if k in names})

    moe = known(
        MoEArgs,
        num_experts=margs.n_routed_experts,
        num_shared_experts=margs.n_shared_experts,
        score_func="sigmoid",
        route_norm=margs.norm_topk_prob,
        route_scale=margs.route_scale,
        top_k=margs.n_activated_experts,
        num_expert_groups=margs.n_expert_groups,
        num_limited_groups=margs.n_limited_groups,
        use_grouped_mm=opts.device == "cuda",
        load_balance_coeff=margs.bias_update_speed,
    )
    targs = known(
        DeepSeekV3ModelArgs,
        vocab_size=margs.vocab_size,
        dim=margs.dim,
        inter_dim=margs.inter_dim,
        moe_inter_dim=margs.moe_inter_dim,
        n_layers=margs.n_layers,
        n_dense_layers=margs.n_dense_layers,
        n_heads=margs.n_heads,
        norm_eps=margs.norm_eps,
        moe_args=moe,
        n_expert_groups=margs.n_expert_groups,
        n_limited_groups=margs.n_limited_groups,
        q_lora_rank=margs.q_lora_rank,
        kv_lora_rank=margs.kv_lora_rank,
        qk_nope_head_dim=margs.qk_nope_head_dim,
        qk_rope_head_dim=margs.qk_rope_head_dim,
        v_head_dim=margs.v_head_dim,
        attn_type="sdpa",
        max_seq_len=opts.seq,
        original_seq_len=max(opts.seq, margs.original_seq_len),
        rope_theta=margs.rope_theta,
    )
    targs.moe_impl = "standard"  # normally set by torchtitan's trainer
    device = torch.device(opts.device)
    with device:
        model = DeepSeekV3Model(targs)
    with torch.no_grad():
        model.init_weights(buffer_device=device)
        # Parameters only: `model.to(bf16)` would cast the complex rotary table to real
        # (discarding its imaginary part) and the float32 balancing buffers to bf16.
        for param in model.parameters():
            param.data = param.data.to(getattr(torch, opts.dtype))
    if compile_:
        blocks = model.layers.values() if hasattr(model.layers, "values") else model.layers
        for block in blocks:
            block.compile()

    def loss_fn(tokens):
        logits = model(tokens)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten())

    return model, loss_fn


# ---- measurement ----


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def mfu(active_params: int, tokens_per_s: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation, 6 * active params * tokens/s over the device's peak, to 4
    significant digits: a slow CPU's 3e-6 is reported, not rounded to 0."""
    return significant(6 * active_params * tokens_per_s / (peak_tflops * 1e12))


def run_one(name: str, mode: str, margs: ModelArgs, opts: argparse.Namespace) -> dict[str, Any]:
    compile_ = mode == "compile"
    row: dict[str, Any] = {"model": name, "mode": mode}
    counts = count_parameters(margs)
    active = counts["active"] + (counts["mtp_active"] if name == "ours+mtp" else 0)
    row["params_active"] = active
    if opts.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    if name in ("ours", "ours+mtp"):
        model, loss_fn = build_ours(margs, opts, compile_, mtp=name == "ours+mtp")
    elif name == "transformers":
        model, loss_fn = build_transformers(margs, opts, compile_)
        row["experts_implementation"] = getattr(model.config, "_experts_implementation", None)
    else:
        model, loss_fn = build_torchtitan(margs, opts, compile_)
    model.train()
    row["params_total"] = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=opts.lr, fused=opts.device == "cuda")
    if name.startswith("ours"):
        register_bias_update_hook(optimizer, model)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, margs.vocab_size, (opts.batch, opts.seq), generator=generator).to(
        opts.device
    )
    losses: list[float] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(tokens)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())

    start = time.perf_counter()
    for _ in range(opts.warmup):
        step()
    sync(opts.device)
    row["warmup_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    for _ in range(opts.steps):
        step()
    sync(opts.device)
    elapsed = time.perf_counter() - start
    tokens_per_s = opts.batch * opts.seq * opts.steps / elapsed
    row.update(
        {
            "step_s": significant(elapsed / opts.steps, 6),
            "tokens_per_s": significant(tokens_per_s, 6),
            "mfu": mfu(active, tokens_per_s, opts.peak_tflops),
            "loss_first": round(float(losses[0]), 4),
            "loss_last": round(float(losses[-1]), 4),
        }
    )
    if opts.device == "cuda":
        row["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
    else:  # process-wide high-water mark: it only grows across runs
        row["peak_rss_gb_process"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3
        )
    if compile_:
        breaks = torch._dynamo.utils.counters["graph_break"]
        row["graph_breaks"] = sum(breaks.values())
        row["graph_break_reasons"] = [str(reason)[:200] for reason, _ in breaks.most_common(3)]
    if opts.profile:
        row["profile_top"] = top_ops(step, opts.device, opts.profile_top)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = parse_args(argv)
    margs = PRESETS[opts.preset]
    if opts.seq > margs.max_seq_len:
        margs = dataclasses.replace(margs, max_seq_len=opts.seq)
    report: dict[str, Any] = {
        "benchmark": "policy_train",
        "config": {
            "preset": opts.preset,
            "batch": opts.batch,
            "seq": opts.seq,
            "steps": opts.steps,
            "warmup": opts.warmup,
            "dtype": opts.dtype,
            "optimizer": f"AdamW(lr={opts.lr})",
            "activation_checkpointing_ours": opts.activation_checkpointing,
            "attention_kernel_ours": opts.attention_kernel,
            "peak_tflops": opts.peak_tflops,
            "model_args": margs.to_dict(),
        },
        "params": count_parameters(margs),
        "environment": machine_info(opts.device),
        "results": [],
    }
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if opts.resume is not None:
        earlier = json.loads(opts.resume.read_text())
        mine = {k: v for k, v in report["config"].items() if k != "attention_kernel_ours"}
        theirs = {k: v for k, v in earlier["config"].items() if k in mine}
        if theirs != mine:
            raise SystemExit(f"--resume {opts.resume}: its configuration differs from this run's")
        done = {(r["model"], r["mode"]): r for r in earlier["results"] if "tokens_per_s" in r}
        if "attention" in earlier:
            report["attention"] = earlier["attention"]
            report["config"]["attention_kernel_ours"] = earlier["config"]["attention_kernel_ours"]
            if opts.attention_kernel == "tuned":
                opts.attention_kernel = fastest_attention_kernel(earlier["attention"])
            opts.attention_table = False
    if opts.attention_table:
        rows = time_attention_kernels(
            margs, opts.batch, opts.seq, device=opts.device, dtype=getattr(torch, opts.dtype)
        )
        for row in rows:
            print(json.dumps({"attention": row}), flush=True)
        report["attention"] = rows
        if opts.attention_kernel == "tuned":
            opts.attention_kernel = fastest_attention_kernel(rows)
            report["config"]["attention_kernel_ours"] = f"tuned: {opts.attention_kernel}"
        write_report(report, opts)
    elif opts.attention_kernel == "tuned":
        opts.attention_kernel = "auto"
    for mode in opts.modes:
        for name in opts.models:
            if (name, mode) in done:
                report["results"].append({**done[(name, mode)], "resumed": str(opts.resume)})
                write_report(report, opts)
                continue
            try:
                row = run_one(name, mode, margs, opts)
            except Exception as exc:  # one failing model must not lose the others' numbers
                message = (
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                )
                row = {
                    "model": name,
                    "mode": mode,
                    "error": f"{type(exc).__name__}: {message}"[:500],
                }
                if not message.startswith("unavailable"):
                    row["traceback_tail"] = traceback.format_exc().splitlines()[-6:]
            finally:
                if mode == "compile":
                    torch._dynamo.reset()  # drop compiled graphs (and the weights they guard)
                gc.collect()
                if opts.device == "cuda":
                    torch.cuda.empty_cache()
            report["results"].append(row)
            print(
                json.dumps(
                    {k: v for k, v in row.items() if k not in ("profile_top", "traceback_tail")}
                ),
                flush=True,
            )
            write_report(report, opts)
    print_table(report)
    print(f"wrote {opts.out}")
    return report


def print_table(report: dict[str, Any]) -> None:
    """The run for people: one line per row, then the ratios (the JSON has everything)."""
    cfg, env = report["config"], report["environment"]
    print(
        f"\n{cfg['preset']}: batch {cfg['batch']} x {cfg['seq']} tokens, {cfg['dtype']}, "
        f"{cfg['steps']} timed steps; {env['device']}, torch {env['torch']}; "
        f"our attention kernel: {cfg['attention_kernel_ours']}"
    )
    for row in report.get("attention", []):
        timing = (
            f"{row['ms_fwd_bwd']:8.2f} ms  {row['tflops']:6.1f} TFLOP/s"
            if "ms_fwd_bwd" in row
            else f"FAILED: {row.get('error', '?')}"
        )
        print(f"  attention {row['kernel']:<6} {timing}")
    print(f"{'model':<14} {'mode':<8} {'tok/s':>10} {'MFU':>7} {'step s':>8} {'memory GB':>10}")
    for row in report["results"]:
        if "tokens_per_s" not in row:
            print(f"{row['model']:<14} {row['mode']:<8} {row.get('error', '?')}")
            continue
        memory = row.get("peak_memory_gb", row.get("peak_rss_gb_process", float("nan")))
        print(
            f"{row['model']:<14} {row['mode']:<8} {row['tokens_per_s']:>10,.0f} "
            f"{100 * row['mfu']:>6.3g}% {row['step_s']:>8.4g} {memory:>10.2f}"
        )
    for name, ratio in report.get("speedup", {}).items():
        print(f"  {name}: {ratio:.2f}x")


def write_report(report: dict[str, Any], opts: argparse.Namespace) -> None:
    """(Re)write the JSON with the rows so far and ours/peer tokens-per-second ratios."""
    ok = {
        (r["model"], r["mode"]): r["tokens_per_s"] for r in report["results"] if "tokens_per_s" in r
    }
    report["speedup"] = {
        f"ours/{peer} ({mode})": round(ok[("ours", mode)] / ok[(peer, mode)], 3)
        for peer in ("transformers", "torchtitan")
        for mode in opts.modes
        if ("ours", mode) in ok and (peer, mode) in ok
    }
    write_json(report, opts.out)


if __name__ == "__main__":
    main()
