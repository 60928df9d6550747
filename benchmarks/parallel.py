"""Sharded training step: time and memory per rank for 1, 2, ... ranks, against `policy.plan`.

Each row runs one layout in fresh processes (torch.multiprocessing, gloo on CPU, NCCL on CUDA):
`unsharded` is the single-device path (no process group, no FSDP); `fsdp` shards with FSDP2
(`learner.dp_shard` = all ranks) and `fsdp+ep` adds expert parallelism over all ranks. Every
rank builds the same model, runs `--warmup` then `--steps` AdamW steps of the language-model
loss (MTP included) on its own `--batch` x `--seq` random tokens, and reports:
- `step_s`: median wall time of a step (rank 0; on CPU the ranks share the cores, so expect no
  speed-up: the point of the CPU rows is memory per rank);
- `state_mib`: bytes this rank holds for weights, gradients and AdamW moments, counted from
  its local shards, next to the plan's prediction (`plan_state_mib`, 16 bytes per parameter
  held: the same layout on paper);
- `peak_mib`: CUDA's peak allocated memory, or on CPU the growth of the process's peak
  resident set from before the model was built (weights, activations, gathered shards and
  allocator slack); `plan_total_mib` is the plan's whole-step estimate (bf16 compute).

    python -m benchmarks.parallel --device cpu --preset tiny --ranks 1 2 --layouts unsharded fsdp fsdp+ep
    python -m benchmarks.parallel --device cuda --preset small --ranks 1 --batch 8 --seq 2048 \\
        --layouts unsharded fsdp --precision bfloat16 --out $OUT/parallel.json   # GPU row

On one GPU, `fsdp` against `unsharded` is FSDP2's overhead (`overhead_ratio` = step time ratio,
computed on CUDA when both rows ran). --precision float32 trains everything in float32 (sharded and
not); bfloat16 gives the unsharded model bf16 weights (as benchmarks/policy_train) and FSDP2
bf16 compute over float32 master weights. The JSON is rewritten after every row.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from benchmarks.common import machine_info, write_json
from policy.model import ModelArgs
from policy.plan import plan
from policy.presets import PRESETS

LAYOUTS = ("unsharded", "fsdp", "fsdp+ep")
MIB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="world sizes to run")
    p.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    p.add_argument("--layers", type=int, help="override the preset's n_layers (same widths; fewer layers "
                   "keep a wide preset within a small machine's memory)")
    p.add_argument("--batch", type=int, default=2, help="sequences per rank and step")
    p.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/parallel.json"))
    return p.parse_args(argv)


def _model_args(opts: dict[str, Any]) -> ModelArgs:
    args = dataclasses.replace(PRESETS[opts["preset"]], max_seq_len=max(opts["seq"], 64))
    if opts.get("layers"):
        args = dataclasses.replace(args, n_layers=opts["layers"], n_dense_layers=min(args.n_dense_layers, opts["layers"] - 1))
    return args


def _rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _rss_now_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def _local_bytes(t: torch.Tensor) -> int:
    from torch.distributed.tensor import DTensor

    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def _worker(rank: int, world: int, port: int, layout: str, opts: dict[str, Any], out: str) -> None:
    from policy.launch import process_group, train_step
    from policy.mesh import ShardingConfig
    from policy.model import Transformer
    from policy.parallelize import SpeedConfig, build_mesh, parallelize

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    args = _model_args(opts)
    bf16 = opts["precision"] == "bfloat16"
    cuda = opts["device"] == "cuda"
    sharded = layout != "unsharded"
    backend = "nccl" if cuda else "gloo"
    group = (
        process_group(rank=rank, world_size=world, master_addr="127.0.0.1", master_port=port, backend=backend)
        if sharded
        else contextlib.nullcontext()
    )
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    with group:
        base_rss = _rss_now_mib()
        torch.manual_seed(0)
        with torch.device(device):
            model = Transformer(args)
        if sharded:
            sharding = ShardingConfig(ep=world if layout == "fsdp+ep" else 1, param_dtype=opts["precision"])
            parallelize(model, SpeedConfig(), build_mesh(sharding, args, device.type), sharding)
        else:
            parallelize(model, SpeedConfig())
            if bf16:
                model.to(torch.bfloat16)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        generator = torch.Generator().manual_seed(1 + rank)
        times, state_bytes = [], 0
        for i in range(opts["warmup"] + opts["steps"]):
            tokens = torch.randint(0, args.vocab_size, (opts["batch"], opts["seq"]), generator=generator).to(device)
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            train_step(model, optimizer, tokens)
            if cuda:
                torch.cuda.synchronize()
            if i >= opts["warmup"]:
                times.append(time.perf_counter() - start)
            if i == 0:
                params = sum(_local_bytes(p) for p in model.parameters())
                moments = sum(_local_bytes(v) for s in optimizer.state.values() for v in s.values() if v.dim() > 0)
                state_bytes = 2 * params + moments  # gradients: one per weight, same shard and dtype
        peak = torch.cuda.max_memory_allocated(device) / MIB if cuda else _rss_peak_mib() - base_rss
        if rank == 0:
            result = {"step_s": statistics.median(times), "state_mib": state_bytes / MIB, "peak_mib": peak}
            Path(out).write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_row(layout: str, world: int, opts: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        mp.spawn(_worker, args=(world, _free_port(), layout, opts, str(out)), nprocs=world, join=True)
        measured = json.loads(out.read_text())
    args = _model_args(opts)
    paper = plan(args, gpus=world, gpu_memory_gib=1e6, ep=world if layout == "fsdp+ep" else 1,
                 seq=opts["seq"], micro_batch=opts["batch"], activation_checkpointing="none")
    memory = paper["memory_gib"]
    state = sum(memory[k] for k in ("weights_fp32", "gradients_fp32", "adamw_fp32"))  # GiB
    return {
        "layout": layout,
        "ranks": world,
        **{k: round(v, 4) for k, v in measured.items()},
        "plan_state_mib": round(state * 1024, 2),
        "plan_total_mib": round(memory["total"] * 1024, 2),
    }


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()}
    report: dict[str, Any] = {"benchmark": "parallel", "settings": settings,
                              "machine": machine_info(opts.device), "rows": []}
    for world in opts.ranks:
        for layout in opts.layouts:
            if layout == "unsharded" and world > 1:
                continue  # the single-device path has one rank
            if layout == "fsdp+ep" and (world == 1 or PRESETS[opts.preset].n_routed_experts % world):
                continue
            try:
                row = run_row(layout, world, vars(opts))
            except Exception as exc:  # a failed row is recorded, the others still run
                row = {"layout": layout, "ranks": world, "error": f"{type(exc).__name__}: {exc}"}
            report["rows"].append(row)
            print(json.dumps(row), flush=True)
            write_json(report, opts.out)
    by = {(r["layout"], r["ranks"]): r for r in report["rows"] if "error" not in r}
    # On CPU the ranks share a few cores with whatever else runs: no meaningful time ratio.
    if opts.device == "cuda" and ("unsharded", 1) in by and ("fsdp", 1) in by:
        report["overhead_ratio"] = round(by[("fsdp", 1)]["step_s"] / by[("unsharded", 1)]["step_s"], 3)
        print(f"FSDP2 on one rank / unsharded step time: {report['overhead_ratio']}")
    write_json(report, opts.out)


if __name__ == "__main__":
    main()
