"""Rollout throughput: how much of raw vLLM's generation speed survives our path to a proof.

In one run, on one checkpoint (a fresh `tiny` by default) and the same prompts (the first
--prompts miniF2F-valid statements through `prover.prompts.build_prompt`, DeepSeek-Prover-V1.5
template), generated tokens per second of

  raw_vllm        `vllm.LLM.generate` called directly, with the `SamplingParams` our engine
                  builds (n, temperature, top-p, max_tokens, seed, stop, logprobs=0);
  ours_engine     `policy.engines.make_engine(...).generate`: our vLLM engine (its logprob
                  extraction and result objects);
  ours_whole      `prover.search.whole.prove_whole` over that engine, as `prover prove` and
                  `prover bench` run it (prompt building, the stop fence, candidates,
                  attempts), with a verifier that answers at once so that Lean's time (not
                  ours to measure here) does not dilute the generation path's;
  transformers    the fallback engine (`engine = "transformers"`) through `prove_whole`.

raw_vllm and ours_* share one `vllm.LLM` (our engine's own, `engine.llm`): same weights, KV
cache and engine arguments, so the ratio isolates our code. Their timed calls are interleaved
(raw, engine, whole, raw, ...) after one warm-up each, and each row keeps its best of
--repeats. Sampling ignores end-of-sequence so completions run to --max-tokens (the stop fence
still ends one that writes it, in every row alike, since the seed is shared); tokens are
counted from the completions. Goal (issue 10): ours_whole within 10% of raw_vllm.

    python -m benchmarks.rollout [--checkpoint DIR] [--prompts 8] [--samples 8]
        [--max-tokens 64] [--repeats 3] [--skip-transformers] [--out runs/bench/rollout.json]

vLLM starts its workers with spawn, hence everything runs under the `__main__` guard.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import machine_info, write_json
from lean_env.verdict import Rejected, RejectReason, Verdict
from lean_env.verifier import VerifyRequest
from policy.config import PolicyConfig, SamplingConfig
from prover.problems import Problem, load_problems
from prover.prompts import FENCE, build_prompt

PROMPT_TEMPLATE = "deepseek-prover-v1.5"
SEED = 1234


class InstantVerifier:
    """Answers every candidate at once (rejected, no Lean): the rollout path without Lean's time."""

    def verify_batch(self, requests: Sequence[VerifyRequest], *,
                     progress: Callable[[int, int], None] | None = None) -> list[Verdict]:
        if progress is not None:
            progress(len(requests), len(requests))
        return [Rejected(checked_by="benchmark (no Lean)", time_s=0.0, reason=RejectReason.LEAN_ERROR)
                for _ in requests]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint folder; default: a fresh `tiny` checkpoint in a temporary folder")
    p.add_argument("--prompts", type=int, default=8, help="first N miniF2F-valid statements")
    p.add_argument("--samples", type=int, default=8, help="completions per prompt (n)")
    p.add_argument("--max-tokens", type=int, default=64, help="max new tokens per completion")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per row (best is kept)")
    p.add_argument("--skip-transformers", action="store_true", help="leave out the transformers row")
    p.add_argument("--out", type=Path, default=Path("runs/bench/rollout.json"), help="JSON results file")
    opts = p.parse_args(argv)
    for flag in ("prompts", "samples", "max_tokens", "repeats"):
        if getattr(opts, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(opts, flag)}")
    if opts.checkpoint is not None and not (opts.checkpoint / "config.json").is_file():
        p.error(f"--checkpoint {opts.checkpoint} has no config.json")
    return opts


def _timed(call: Callable[[], int]) -> dict[str, float]:
    """One call returning its generated token count -> seconds, tokens, tokens/s."""
    t0 = time.perf_counter()
    tokens = call()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}


def _row(name: str, timings: list[dict[str, float]]) -> dict[str, Any]:
    best = max(timings, key=lambda t: t["tokens_per_s"])
    return {"row": name, **best, "repeats": timings}


def vllm_rows(checkpoint: Path, problems: list[Problem], sampling: SamplingConfig, repeats: int) -> list[dict[str, Any]]:
    """raw_vllm, ours_engine and ours_whole on one vLLM instance, timed calls interleaved."""
    from vllm import SamplingParams

    from policy.engines import make_engine
    from policy.engines.vllm_engine import VLLMEngine
    from prover.search.whole import prove_whole

    prompts = [build_prompt(p, PROMPT_TEMPLATE) for p in problems]
    stop = list(dict.fromkeys([*sampling.stop, FENCE]))   # what prove_whole asks for
    sampling = sampling.model_copy(update={"stop": stop})
    t0 = time.perf_counter()
    with make_engine(PolicyConfig(checkpoint=str(checkpoint), engine="vllm", enforce_eager=True)) as engine:
        start_s = time.perf_counter() - t0
        assert isinstance(engine, VLLMEngine)
        params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                max_tokens=sampling.max_tokens, seed=sampling.seed, stop=stop,
                                ignore_eos=sampling.ignore_eos, logprobs=0)   # = VLLMEngine.generate's

        def raw() -> int:
            outputs = engine.llm.generate(prompts, params, use_tqdm=False)
            return sum(len(c.token_ids) for out in outputs for c in out.outputs)

        def ours_engine() -> int:
            return sum(len(c.token_ids) for r in engine.generate(prompts, sampling) for c in r.completions)

        def ours_whole() -> int:
            results = prove_whole(problems, engine, InstantVerifier(), sampling, template=PROMPT_TEMPLATE,
                                  problems_per_batch=len(problems))
            return sum(len(a.completion.token_ids) for r in results for a in r.attempts)

        calls = {"raw_vllm": raw, "ours_engine": ours_engine, "ours_whole": ours_whole}
        warmup = {name: _timed(call) for name, call in calls.items()}
        timings: dict[str, list[dict[str, float]]] = {name: [] for name in calls}
        for _ in range(repeats):
            for name, call in calls.items():
                timings[name].append(_timed(call))
    rows = [_row(name, timed) | {"warmup": warmup[name]} for name, timed in timings.items()]
    rows[0]["start_s"] = start_s
    return rows


def transformers_row(checkpoint: Path, problems: list[Problem], sampling: SamplingConfig,
                     repeats: int) -> dict[str, Any]:
    from policy.engines import make_engine
    from prover.search.whole import prove_whole

    t0 = time.perf_counter()
    with make_engine(PolicyConfig(checkpoint=str(checkpoint), engine="transformers")) as engine:
        start_s = time.perf_counter() - t0

        def whole() -> int:
            results = prove_whole(problems, engine, InstantVerifier(), sampling, template=PROMPT_TEMPLATE,
                                  problems_per_batch=len(problems))
            return sum(len(a.completion.token_ids) for r in results for a in r.attempts)

        warmup = _timed(whole)
        return _row("transformers", [_timed(whole) for _ in range(repeats)]) | {"warmup": warmup, "start_s": start_s}


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """tokens/s of each row over raw vLLM's."""
    speed = {r["row"]: r["tokens_per_s"] for r in rows}
    return {name: value / speed["raw_vllm"] for name, value in speed.items() if "raw_vllm" in speed}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()   # the MTP layer's load report, between the rows
    problems = load_problems("minif2f-valid", limit=opts.prompts)
    sampling = SamplingConfig(n=opts.samples, temperature=1.0, top_p=0.95, max_tokens=opts.max_tokens,
                              seed=SEED, ignore_eos=True)
    report: dict[str, Any] = {
        "benchmark": "rollout",
        "config": {"prompts": len(problems), "samples": opts.samples, "max_tokens": opts.max_tokens,
                   "repeats": opts.repeats, "problems": [p.name for p in problems],
                   "prompt_template": PROMPT_TEMPLATE, "sampling": sampling.model_dump(), "enforce_eager": True},
        "machine": machine_info(),
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        checkpoint = opts.checkpoint
        if checkpoint is None:
            from prover.checkpoints import init_checkpoint

            checkpoint = Path(tmp) / "tiny"
            init_checkpoint("tiny", checkpoint)
            report["config"]["checkpoint"] = "fresh tiny preset (seed 0)"
        else:
            report["config"]["checkpoint"] = str(checkpoint)
        report["results"] = vllm_rows(checkpoint, problems, sampling, opts.repeats)
        report["over_raw_vllm"] = ratios(report["results"])
        write_json(report, opts.out)
        if not opts.skip_transformers:
            report["results"].append(transformers_row(checkpoint, problems, sampling, opts.repeats))
            report["over_raw_vllm"] = ratios(report["results"])
            write_json(report, opts.out)
    cfg = report["config"]
    print(f"{cfg['prompts']} prompts x n={cfg['samples']} x <= {cfg['max_tokens']} tokens, best of {cfg['repeats']}; "
          f"{report['machine']['device']}, {report['machine']['cpus']} CPUs")
    print(f"{'row':<14} {'tok/s':>9} {'tokens':>7} {'s':>7} {'/ raw vLLM':>11}")
    for r in report["results"]:
        print(f"{r['row']:<14} {r['tokens_per_s']:>9.0f} {r['tokens']:>7} {r['seconds']:>7.3f} "
              f"{report['over_raw_vllm'][r['row']]:>10.3f}x")
    print(f"wrote {opts.out}")
    return report


if __name__ == "__main__":
    main()
