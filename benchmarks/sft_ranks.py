"""Benchmark of `prover sft` on one process against the same run under torchrun on several CPU
ranks (gloo; FSDP2 and expert parallelism as `[learner]` says): is it the same run, and what
does a step cost?

Each row is one `prover sft` run of the SFT example (examples/sft-cpu.toml by default) with the
step's rows split into `--ranks`-divisible micro-batches (micro_batch_size x
gradient_accumulation = the example's rows per step, the same for every row) and float32
parameters, so every row trains the same steps on the same data. Reported per row: the median
and total step time from metrics.jsonl, the wall time of the command (process start, loading,
sharding and checkpoints included), the final training and held-out losses; and per rank count
the largest relative loss difference to the one-process row and the step-time ratio.

    python -m benchmarks.sft_ranks [--config examples/sft-cpu.toml] [--ranks 1 2] [--steps 40]
        [--ep 2] [--out benchmarks/results/sft-cpu-ranks.json]

On our 2-core CPU machine two ranks share the two cores with torch's own threads (one thread
per rank under torchrun), so the ratio says what the sharded path costs here, not what two
devices would gain.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from benchmarks.common import machine_info, write_json
from lean_env.toolchain import CHECKOUT
from prover.rl.metrics import read_metrics

EXAMPLE = CHECKOUT / "examples" / "sft-cpu.toml"


def config_for(base: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The example with the step's rows in micro-batches every rank count splits evenly."""
    training = dict(base.get("training", {}))
    rows = int(training.get("micro_batch_size", 1)) * int(training.get("gradient_accumulation", 1))
    split = max(args.ranks)
    if rows % split:
        raise SystemExit(f"{args.config}: {rows} rows per step do not split over {split} ranks")
    training |= {"micro_batch_size": rows // split, "gradient_accumulation": split, "steps": args.steps,
                 "save_every": args.steps, "eval_every": args.steps}
    learner = {"ep": args.ep, "param_dtype": "float32", "reduce_dtype": "float32"}
    return base | {"training": training, "learner": learner}


def run(ranks: int, config_file: Path, out: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(CHECKOUT)}
    sft = ["-m", "prover", "sft", "--config", str(config_file), "--out", str(out), "--force", "--json"]
    launcher = [] if ranks == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *launcher, *sft], cwd=CHECKOUT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"ranks": ranks, "error": done.stderr[-2000:], "wall_s": round(wall, 2)}
    summary = json.loads(done.stdout)
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    steps = [r["step_s"] for r in rows]
    return {"ranks": ranks, "wall_s": round(wall, 2), "step_s_median": statistics.median(steps),
            "steps_s_total": round(sum(steps), 3), "train_loss": summary["train_loss"],
            "eval_loss": summary["eval_loss"], "losses": [r["loss"] for r in rows]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=EXAMPLE)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--ep", type=int, default=1, help="expert-parallel degree on the sharded rows")
    parser.add_argument("--work", type=Path, default=CHECKOUT / "runs" / "bench" / "sft-ranks")
    parser.add_argument("--out", type=Path, default=CHECKOUT / "runs" / "bench" / "sft-ranks.json")
    args = parser.parse_args(argv)
    if 1 not in args.ranks:
        parser.error("--ranks must include 1 (the row the others are compared with)")
    base = tomllib.loads(args.config.read_text(encoding="utf-8"))
    config = config_for(base, args)
    args.work.mkdir(parents=True, exist_ok=True)
    config_file = args.work / "sft.toml"
    config_file.write_text(tomli_w.dumps(config), encoding="utf-8")
    report: dict[str, Any] = {
        "benchmark": "sft_ranks", "command": " ".join([sys.executable, "-m", "benchmarks.sft_ranks", *sys.argv[1:]]),
        "machine": machine_info("cpu"), "config": str(args.config), "training": config["training"],
        "learner": config["learner"], "rows": []}
    for ranks in sorted(args.ranks):
        row = run(ranks, config_file, args.work / f"ranks-{ranks}")
        report["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "losses"}), file=sys.stderr, flush=True)
        write_json(report, args.out)
    one = next(r for r in report["rows"] if r["ranks"] == 1)
    for row in report["rows"]:
        if row["ranks"] == 1 or "error" in row or "error" in one:
            continue
        row["loss_rel_diff_max"] = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(row["losses"], one["losses"],
                                                                                         strict=True))
        row["step_time_ratio_vs_1"] = round(one["step_s_median"] / row["step_s_median"], 3)
    write_json(report, args.out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
