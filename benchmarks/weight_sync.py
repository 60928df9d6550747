"""Weight sync into a running vLLM engine: our push against vLLM's own reload, same weights.

An RL loop pushes the learner's weights into the running engines every step. This measures,
on one running `VLLMEngine` over the `tiny` checkpoint (`prover model init --preset tiny`, or
--checkpoint), seconds per sync for:

  push           `VLLMEngine.load_weights(tensors)`: the tensors in memory go to the engine's
                 worker as raw bytes inside vLLM's RPC and into `reload_weights` as its
                 weights iterator (no file), with the CPU MoE repacking (what the fleet does);
  vllm_reload    vLLM's own `reload_weights(weights_path=checkpoint)` (collective_rpc), the
                 same weights read from the checkpoint folder (in the page cache after the
                 warm-up: its best case);
  folder         `VLLMEngine.load_weights(folder)`: vLLM's reload from disk plus the repair.

Each is timed --repeats times after one untimed warm-up; median and min are reported, and the
ratio push / vllm_reload (goal: at most 2). Greedy outputs after each kind of sync are
compared with the engine's outputs before any sync (the weights are the same, so any change
is a sync bug; vLLM's own reload skips the CPU MoE repacking, see policy/engines/vllm_engine.py).

    python -m benchmarks.weight_sync [--checkpoint DIR] [--repeats 5] [--out runs/bench/weight_sync.json]

vLLM starts its workers with spawn, hence everything runs under the `__main__` guard.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.common import machine_info, write_json

PROMPTS = ["theorem foo (n : ℕ) (h₀ : n ≠ 0) : n + 0 = n := by\n", "example : (1 : ℤ) + 1 = 2 := by"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None, help="HF checkpoint folder (default: a fresh tiny one)")
    p.add_argument("--repeats", type=int, default=5, help="timed syncs per method (median and min kept)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/weight_sync.json"), help="JSON report")
    return p.parse_args(argv)


def _timed(fn: Callable[[], None], repeats: int) -> list[float]:
    fn()   # warm-up: first-call costs (allocations, page cache) are not the steady state
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from safetensors.torch import load_file

    from policy.config import PolicyConfig, SamplingConfig
    from policy.engines.vllm_engine import VLLMEngine

    with tempfile.TemporaryDirectory(prefix="weight-sync-") as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            from prover.checkpoints import init_checkpoint

            checkpoint = Path(tmp) / "tiny"
            init_checkpoint("tiny", checkpoint)
        weights = load_file(str(checkpoint / "model.safetensors"))
        report: dict[str, Any] = {
            "benchmark": "weight_sync",
            "machine": machine_info(),
            "checkpoint": str(checkpoint),
            "tensors": len(weights),
            "bytes": sum(t.numel() * t.element_size() for t in weights.values()),
            "repeats": args.repeats,
            "command": " ".join(["python -m benchmarks.weight_sync", *(argv if argv is not None else sys.argv[1:])]),
        }
        greedy = SamplingConfig(temperature=0.0, max_tokens=16)
        config = PolicyConfig(checkpoint=str(checkpoint), engine="vllm", enforce_eager=True, max_model_len=512,
                              kv_cache_gib=1)
        with VLLMEngine(config) as engine:
            def outputs() -> list[tuple[int, ...]]:
                return [r.completions[0].token_ids for r in engine.generate(PROMPTS, greedy)]

            before = outputs()
            methods: dict[str, Callable[[], None]] = {
                "push": lambda: engine.load_weights(weights),
                "vllm_reload": lambda: engine.reload_from_disk(checkpoint),
                "folder": lambda: engine.load_weights(checkpoint),
            }
            rows: dict[str, Any] = {}
            for name, fn in methods.items():
                times = _timed(fn, args.repeats)
                rows[name] = {"median_s": statistics.median(times), "min_s": min(times), "times_s": times,
                              "same_outputs": outputs() == before}
                engine.load_weights(weights)   # a known-good state for the next method
                report["methods"] = rows
                write_json(report, args.out)
        ratio = rows["push"]["median_s"] / rows["vllm_reload"]["median_s"]
        report["push_over_vllm_reload"] = ratio
        report["goal_met"] = ratio <= 2.0
        write_json(report, args.out)
    for name, row in rows.items():
        print(f"{name:12s} median {row['median_s'] * 1e3:8.1f} ms  min {row['min_s'] * 1e3:8.1f} ms  "
              f"same outputs: {row['same_outputs']}", file=sys.stderr)
    print(f"push / vllm_reload = {ratio:.2f} (goal <= 2)", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
