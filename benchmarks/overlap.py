"""Benchmark of generation/verification overlap in whole-proof sampling and in Lean-feedback
repair (issue 10 item 7).

Times `prover.search.whole.prove_whole` (`--method whole`) or `prover.search.repair.prove_repair`
(`--method repair`, `--rounds` correction rounds, streamed within each round) on the same
checkpoint, problems, seed and verifier twice per row: `stream=False` (each batch generated, then verified, one after the other) and
`stream=True` (each problem's candidates go to the verifier as soon as the engine has finished
its samples, while the engine samples the rest of the batch and the next ones). A row is
PROBLEMSxPER_BATCH: `8x2` runs 4 batches (overlap across batches), `4x8` runs a single batch,
where only the per-prompt stream (`GenerationEngine.generate_iter`) can overlap anything.

The verifier is the stand-in REPL with a simulated Lean time per check (a rule with
`sleep_s`), so the verification side has a known cost; the engine's own time is measured by a
timing wrapper (time inside `generate`, or inside `generate_iter` working towards its next
result). Without overlap the whole verification time adds to the generation time; with it,
only what generation cannot hide stays exposed. The report gives wall times and the exposed
verification time (wall minus time inside the engine), which does not swing with the
machine's load as generation time does.

A random tiny model runs nearly every sample to `max_tokens`, so every prompt of a call
finishes in the same engine step and nothing can stream; `--stop` (default "v", in about 5% of
the tiny tokenizer's tokens) gives the answers varied lengths, as real proofs have.

    python -m benchmarks.overlap --model runs/tiny [--engine vllm] [--rows 8x2,4x8] [--method whole|repair]
        [--out runs/bench/overlap.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import machine_info, write_json
from lean_env.config import VerifierConfig
from lean_env.verifier import Verifier
from policy.config import PolicyConfig, SamplingConfig
from policy.engines import GenerationEngine, PromptResult, make_engine
from prover.problems import load_problems
from prover.search.repair import prove_repair
from prover.search.whole import prove_whole


class TimedEngine:
    """Wraps an engine and adds up the seconds spent inside it."""

    def __init__(self, engine: GenerationEngine) -> None:
        self.engine, self.seconds = engine, 0.0

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[PromptResult]:
        start = time.perf_counter()
        try:
            return self.engine.generate(prompts, sampling)
        finally:
            self.seconds += time.perf_counter() - start

    def generate_iter(self, prompts: Sequence[str], sampling: SamplingConfig) -> Iterator[tuple[int, PromptResult]]:
        results = self.engine.generate_iter(prompts, sampling)
        while True:
            start = time.perf_counter()
            try:
                item = next(results)
            except StopIteration:
                return
            finally:
                self.seconds += time.perf_counter() - start
            yield item


def run_once(engine: GenerationEngine, verifier: Verifier, problems: Sequence[Any], sampling: SamplingConfig, *,
             stream: bool, problems_per_batch: int, method: str = "whole", rounds: int = 1) -> dict[str, Any]:
    timed = TimedEngine(engine)
    start = time.perf_counter()
    if method == "repair":
        results = list(prove_repair(problems, timed, verifier, sampling, template="deepseek-prover-v1.5",  # type: ignore[arg-type]
                                    rounds=rounds, problems_per_batch=problems_per_batch, stream=stream))
    else:
        results = list(prove_whole(problems, timed, verifier, sampling, template="deepseek-prover-v1.5",  # type: ignore[arg-type]
                                   problems_per_batch=problems_per_batch, stream=stream))
    wall = time.perf_counter() - start
    return {"stream": stream, "wall_s": round(wall, 3), "generate_s": round(timed.seconds, 3),
            "exposed_verify_s": round(wall - timed.seconds, 3),
            "samples": sum(len(r.attempts) for r in results),
            "outcomes": dict(Counter(a.verdict.outcome for r in results for a in r.attempts)),
            "rounds": max((a.round for r in results for a in r.attempts), default=0),
            "tokens": sum(len(a.completion.token_ids) for r in results for a in r.attempts)}


def parse_rows(text: str) -> list[tuple[int, int]]:
    rows = []
    for part in text.split(","):
        problems, _, per_batch = part.strip().partition("x")
        if not (problems.isdigit() and per_batch.isdigit() and int(problems) > 0 and int(per_batch) > 0):
            raise argparse.ArgumentTypeError(f"a row is PROBLEMSxPER_BATCH (e.g. 4x8), got {part!r}")
        rows.append((int(problems), int(per_batch)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder (`prover model init --preset tiny --out DIR`)")
    parser.add_argument("--engine", default="vllm", choices=["transformers", "vllm"])
    parser.add_argument("--rows", type=parse_rows, default=parse_rows("8x2,4x8"),
                        help="PROBLEMSxPER_BATCH,... (miniF2F-valid problems, problems per batch)")
    parser.add_argument("--samples", type=int, default=4, help="samples per problem")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--stop", default="v", help="stop string that varies answer lengths ('' for none)")
    parser.add_argument("--check-s", type=float, default=0.25, help="simulated Lean seconds per check")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--method", default="whole", choices=["whole", "repair"])
    parser.add_argument("--rounds", type=int, default=1, help="--method repair: correction rounds")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/overlap.json"))
    args = parser.parse_args()

    problems = load_problems("minif2f-valid", limit=max(n for n, _ in args.rows))
    sampling = SamplingConfig(n=args.samples, max_tokens=args.max_tokens, seed=0, stop=[args.stop] if args.stop else [])
    report: dict[str, Any] = {"benchmark": "overlap", "machine": machine_info(), "settings": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "runs": [], "summary": {}}
    with tempfile.TemporaryDirectory() as tmp:
        # every check takes check_s seconds; for repair it is also rejected with one error, so
        # every attempt gets its corrections (whole-proof runs are timed the same either way)
        rule: dict[str, Any] = {"regex": r"#print\s+axioms", "sleep_s": args.check_s}
        if args.method == "repair":
            rule["messages"] = [{"severity": "error", "pos": {"line": 1, "column": 0}, "data": "simulated error"}]
        rules = Path(tmp) / "rules.json"
        rules.write_text(json.dumps({"rules": [rule]}))
        config = VerifierConfig(backend="standin", standin_rules=rules, workers=args.workers)
        with make_engine(PolicyConfig(checkpoint=args.model, engine=args.engine)) as engine, Verifier(config) as verifier:
            run_once(engine, verifier, problems[:2], sampling, stream=False,
                     problems_per_batch=2)   # warm-up: first-call costs out of the numbers
            for _ in range(args.repeats):
                for count, per_batch in args.rows:
                    for stream in (False, True):
                        report["runs"].append({"row": f"{count}x{per_batch}"} | run_once(
                            engine, verifier, problems[:count], sampling, stream=stream, problems_per_batch=per_batch,
                            method=args.method, rounds=args.rounds))
                        write_json(report, args.out)

    # Generation time swings with the machine's load (shared CPUs), so the robust number is the
    # verification time left exposed: wall time minus time inside the engine.
    for count, per_batch in args.rows:
        row = f"{count}x{per_batch}"

        def median(key: str, stream: bool, row: str = row) -> float:
            return round(statistics.median(r[key] for r in report["runs"] if r["row"] == row and r["stream"] is stream), 3)

        report["summary"][row] = {
            "batches": -(-count // per_batch),
            "wall_s_sequential": median("wall_s", False), "wall_s_streaming": median("wall_s", True),
            "generate_s_sequential": median("generate_s", False), "generate_s_streaming": median("generate_s", True),
            "exposed_verify_s_sequential": median("exposed_verify_s", False),
            "exposed_verify_s_streaming": median("exposed_verify_s", True),
            "samples": statistics.median(r["samples"] for r in report["runs"] if r["row"] == row),
            "simulated_verify_s": round(statistics.median(r["samples"] for r in report["runs"] if r["row"] == row)
                                        * args.check_s / args.workers, 3),
        }
    write_json(report, args.out)
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
