"""Benchmark of `prover train` on the CPU example: does it learn (over several seeds), and what
does the asynchronous (one-step-off) fleet gain over the synchronous one?

Each row is one `prover train` run of examples/train-cpu-standin.toml (the tiny policy, its
warm start from examples/sft-cpu.toml, the synthetic tactic set, the stand-in rule table: a
test double, not Lean) with a given `fleet.mode` and seed. To make the verifier's share of a
step realistic, every command the stand-in answers sleeps `--lean-ms` (real Lean takes tens of
milliseconds to seconds per check; the stand-in alone takes ~1 ms). Reported per row: mean
reward over the first and last fifth of the steps, the median step time and its split (generate /
verify / learn / weight sync / idle), wall time; the median step time ratio sync/async on the
same seeds.

    python -m benchmarks.grpo_cpu --warm-start runs/sft-cpu/checkpoints/step-00000040 \
        [--seeds 0 1 2] [--modes sync async] [--steps 30] [--lean-ms 100] [--out runs/bench/grpo_cpu.json]
        [--set grpo.dynamic_sampling=false ...]

With dynamic sampling (the example's setting) a step's work depends on the policy: 1 + its
refill rounds of sampling, so two runs whose policies drift apart do different work. Each row
also gives the steps' total time and the sampling rounds in it; `--set
grpo.dynamic_sampling=false` gives every step the same work (one round), which isolates what
the asynchronous pipeline gains.
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
from prover.config import parse_assignments
from prover.rl.train import step_reward

ROOT = CHECKOUT   # the checkout, as lean_env finds it
EXAMPLE = ROOT / "examples" / "train-cpu-standin.toml"
RULES = ROOT / "data" / "sets" / "synthetic-tactics-rules.json"
TIMES = ("wall_s", "generate_s", "verify_s", "learn_s", "weight_sync_s", "idle_s")


def slow_rules(lean_ms: float, out: Path) -> Path:
    """The synthetic rule table with `lean_ms` of simulated Lean time on every command rule."""
    table = json.loads(RULES.read_text(encoding="utf-8"))
    for rule in table["rules"]:
        if rule.get("on", "command") == "command":
            rule["sleep_s"] = lean_ms / 1000
    out.write_text(json.dumps(table, ensure_ascii=False), encoding="utf-8")
    return out


def run(mode: str, seed: int, args: argparse.Namespace, work: Path, rules: Path) -> dict[str, Any]:
    tree = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    tree["policy"]["checkpoint"] = str(Path(args.warm_start).resolve())
    tree["policy"]["sampling"]["seed"] = seed
    tree["training"].update(seed=seed, steps=args.steps, save_every=args.steps)
    tree["fleet"]["mode"] = mode
    tree["verifier"]["standin_rules"] = str(rules)
    for key, value in parse_assignments(args.set).items():   # --set: as `prover train --set`
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    config = work / f"{mode}-{seed}.toml"
    config.write_text(tomli_w.dumps(tree), encoding="utf-8")
    out = work / f"{mode}-{seed}"
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "prover.cli", "train", "--config", str(config), "--out", str(out),
                           "--force", "--json"], capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - started
    row: dict[str, Any] = {"mode": mode, "seed": seed, "exit_code": done.returncode, "wall_s": round(wall, 1)}
    if done.returncode != 0:
        row["error"] = done.stderr[-2000:]
        return row
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rewards = [step_reward(r) for r in metrics]   # dynamic sampling: before any group is dropped
    fifth = max(1, len(rewards) // 5)
    row |= {"steps": len(metrics), "reward_first_fifth": round(sum(rewards[:fifth]) / fifth, 4),
            "reward_last_fifth": round(sum(rewards[-fifth:]) / fifth, 4),
            "rewards": [round(r, 4) for r in rewards]}
    row["margin"] = round(row["reward_last_fifth"] - row["reward_first_fifth"], 4)
    steady = metrics[1:] or metrics   # step 1 carries the engines' start-up
    row["step_time_median_s"] = {t: round(statistics.median(float(r[f"time_{t}"]) for r in steady), 3) for t in TIMES}
    # Dynamic sampling makes a step's work depend on the policy (1 + refill rounds of sampling):
    # the steps' total time and the sampling rounds in it tell the pipeline from the work.
    row["steps_wall_s"] = round(sum(float(r["time_wall_s"]) for r in steady), 2)
    row["sampling_rounds"] = int(sum(1 + float(r.get("dynamic_refill_rounds", 0)) for r in steady))
    row["s_per_sampling_round"] = round(row["steps_wall_s"] / row["sampling_rounds"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm-start", required=True, help="the cold-start checkpoint (examples/sft-cpu.toml's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=["sync", "async"], choices=["sync", "async"])
    parser.add_argument("--async-seeds", type=int, nargs="+", default=[0], help="seeds run in async mode")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lean-ms", type=float, default=100.0,
                        help="simulated Lean time per stand-in command (a small theorem against Mathlib: ~0.1-1 s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override the example's config, as `prover train --set` (repeatable), e.g. "
                        "grpo.dynamic_sampling=false for the same work in every step")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "grpo_cpu.json")
    args = parser.parse_args()
    work = args.out.parent / "grpo_cpu"
    work.mkdir(parents=True, exist_ok=True)
    rules = slow_rules(args.lean_ms, work / "rules.json")
    report: dict[str, Any] = {"benchmark": "grpo_cpu", "machine": machine_info(), "example": str(EXAMPLE),
                              "judge": "stand-in REPL (a test double, not Lean)", "lean_ms": args.lean_ms,
                              "steps": args.steps, "overrides": args.set, "rows": []}
    plan = [("sync", s) for s in args.seeds if "sync" in args.modes]
    plan += [("async", s) for s in args.async_seeds if "async" in args.modes]
    for mode, seed in plan:
        row = run(mode, seed, args, work, rules)
        report["rows"].append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "rewards"}), flush=True)
        write_json(report, args.out)   # rewritten after every row: a cut run keeps what it measured
    rows = {(r["mode"], r["seed"]): r for r in report["rows"] if "step_time_median_s" in r}
    pairs = [(rows[("sync", s)], rows[("async", s)]) for s in args.async_seeds
             if ("sync", s) in rows and ("async", s) in rows]   # same seed: the same problems per step
    if pairs:   # sync time / async time, median over seeds: per step (median), all steps, per sampling round
        report["async_speedup"] = round(statistics.median(
            s["step_time_median_s"]["wall_s"] / a["step_time_median_s"]["wall_s"] for s, a in pairs), 3)
        report["async_speedup_all_steps"] = round(statistics.median(s["steps_wall_s"] / a["steps_wall_s"]
                                                                    for s, a in pairs), 3)
        report["async_speedup_per_sampling_round"] = round(statistics.median(
            s["s_per_sampling_round"] / a["s_per_sampling_round"] for s, a in pairs), 3)
    learned = [r["margin"] for r in report["rows"] if r["mode"] == "sync" and "margin" in r]
    report["sync_margins"] = learned
    report["learns_on_every_seed"] = bool(learned) and all(m >= 0.2 for m in learned)
    write_json(report, args.out)
    print(json.dumps({k: report[k] for k in ("async_speedup", "async_speedup_all_steps", "async_speedup_per_sampling_round",
                                             "sync_margins", "learns_on_every_seed") if k in report}))


if __name__ == "__main__":
    main()
