"""Generation throughput of our engines, vLLM against transformers, in one run.

For each engine row (vLLM eager, vLLM compiled, i.e. `PolicyConfig.enforce_eager` True/False,
and transformers `generate`) on the same `tiny` checkpoint (`prover model init --preset tiny`,
or --checkpoint) this measures:

  start        seconds from `make_engine` to a ready engine (model load, vLLM's profiling,
               KV-cache allocation, compilation when not eager);
  tokens/s     generated tokens / wall seconds of one `generate` call, best of --repeats
               timed calls after one untimed warm-up call; the workload is the prover's own:
               the first --prompts miniF2F-valid statements in the DeepSeek-Prover-V1.5 prompt
               (`prover.prompts.build_prompt`), n=--samples completions each, at most
               --max-tokens new tokens, temperature 1.0, top-p 0.95, a fixed seed;
  load_weights seconds to reload the checkpoint's own weights into the running engine (the
               learner's weight push of an RL loop), then whether the same seeded call
               samples the same tokens again (a reload must not change the model).

Sampling ignores end-of-sequence (`SamplingConfig.ignore_eos`), so every completion runs to
--max-tokens and both engines decode the same lengths; tokens are still counted exactly from
every `Completion.token_ids` (and the share of completions that ran to --max-tokens is
reported). vLLM/transformers tokens/s ratios are computed within the run. Each row runs in its
own try block: a failure is recorded in the JSON (error string) and the run goes on; the JSON
is rewritten after every row. dtype is "auto" (float32 on CPU, bfloat16 on CUDA), so the
same command runs on both.

    python -m benchmarks.engines [--engines vllm,transformers] [--checkpoint DIR]
        [--prompts 4] [--samples 8] [--max-tokens 64] [--repeats 3]
        [--out runs/bench/engines.json]

Engine names: `vllm` (both vLLM rows), `vllm-eager`, `vllm-compiled`, `transformers`.
vLLM starts its workers with spawn, hence everything runs under the `__main__` guard.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.common import machine_info, write_json
from policy.config import PolicyConfig, SamplingConfig
from policy.engines import PromptResult, make_engine
from prover.problems import ProblemSetError, load_problems
from prover.prompts import build_prompt

# Row name -> (PolicyConfig.engine, PolicyConfig.enforce_eager).
ROWS: dict[str, tuple[str, bool]] = {
    "vllm-eager": ("vllm", True),
    "vllm-compiled": ("vllm", False),
    "transformers": ("transformers", False),
}
ALIASES = {"vllm": ["vllm-eager", "vllm-compiled"]}
PROMPT_TEMPLATE = "deepseek-prover-v1.5"
SEED = 1234


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engines", default="vllm,transformers",
                   help="comma-separated rows: vllm (= vllm-eager,vllm-compiled), vllm-eager, "
                   "vllm-compiled, transformers")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint folder to benchmark; default: a fresh `tiny` checkpoint in a "
                   "temporary folder (deleted afterwards)")
    p.add_argument("--prompts", type=int, default=4, help="first N miniF2F-valid statements")
    p.add_argument("--samples", type=int, default=8, help="completions per prompt (n)")
    p.add_argument("--max-tokens", type=int, default=64, help="max new tokens per completion")
    p.add_argument("--repeats", type=int, default=3, help="timed generate calls (best is kept)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/engines.json"),
                   help="JSON results file (default: runs/bench/engines.json)")
    opts = p.parse_args(argv)
    rows: list[str] = []
    for name in (n.strip() for n in opts.engines.split(",") if n.strip()):
        expanded = ALIASES.get(name, [name])
        unknown = [r for r in expanded if r not in ROWS]
        if unknown:
            p.error(f"unknown engine {name!r}; choose from vllm, {', '.join(ROWS)}")
        rows += [r for r in expanded if r not in rows]
    if not rows:
        p.error("--engines names no engine")
    for flag in ("prompts", "samples", "max_tokens", "repeats"):
        if getattr(opts, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(opts, flag)}")
    if opts.checkpoint is not None and not (opts.checkpoint / "config.json").is_file():
        p.error(f"--checkpoint {opts.checkpoint} has no config.json")
    opts.rows = rows
    return opts


def _tokens(results: list[PromptResult]) -> int:
    return sum(len(c.token_ids) for r in results for c in r.completions)


def _token_ids(results: list[PromptResult]) -> list[tuple[int, ...]]:
    return [c.token_ids for r in results for c in r.completions]


def run_row(name: str, checkpoint: Path, prompts: list[str], sampling: SamplingConfig,
            repeats: int) -> dict[str, Any]:
    """Start one engine, time its generate calls and a weight reload; close it."""
    engine_name, eager = ROWS[name]
    config = PolicyConfig(checkpoint=str(checkpoint), engine=engine_name, enforce_eager=eager)
    row: dict[str, Any] = {"engine": name, "enforce_eager": eager if engine_name == "vllm" else None}
    t0 = time.perf_counter()
    with make_engine(config) as engine:
        row["start_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = engine.generate(prompts, sampling)
        row["warmup_s"] = time.perf_counter() - t0
        row["prompt_tokens"] = [len(r.prompt_token_ids) for r in warm]
        timed = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            results = engine.generate(prompts, sampling)
            seconds = time.perf_counter() - t0
            timed.append({"seconds": seconds, "tokens": _tokens(results),
                          "tokens_per_s": _tokens(results) / seconds})
        best = max(timed, key=lambda t: t["tokens_per_s"])
        completions = [c for r in results for c in r.completions]
        row.update(
            tokens_per_s=best["tokens_per_s"], seconds=best["seconds"], tokens=best["tokens"],
            completions=len(completions),
            ran_to_max_tokens=sum(c.finish_reason == "length" for c in completions) / len(completions),
            repeats=timed,
        )
        t0 = time.perf_counter()
        engine.load_weights(checkpoint)
        row["load_weights_s"] = time.perf_counter() - t0
        row["same_tokens_after_reload"] = (
            _token_ids(engine.generate(prompts, sampling)) == _token_ids(results))
    return row


def write_report(report: dict[str, Any], out: Path) -> None:
    """(Re)write the JSON with the rows so far and each vLLM row's ratio to transformers."""
    speed = {r["engine"]: r["tokens_per_s"] for r in report["results"] if "tokens_per_s" in r}
    report["vllm_over_transformers"] = {
        name: speed[name] / speed["transformers"]
        for name in speed if name.startswith("vllm") and "transformers" in speed
    }
    write_json(report, out)


def print_table(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(f"{cfg['prompts']} prompts x n={cfg['samples']} x <= {cfg['max_tokens']} tokens, "
          f"best of {cfg['repeats']}; {report['machine']['device']}, {report['machine']['cpus']} CPUs")
    print(f"{'engine':<14} {'start s':>8} {'tok/s':>9} {'tokens':>7} {'gen s':>7} {'full':>5} "
          f"{'reload s':>9} {'same':>5} {'vs HF':>6}")
    ratios = report["vllm_over_transformers"]
    for r in report["results"]:
        if "error" in r:
            print(f"{r['engine']:<14} FAILED: {r['error']}")
            continue
        ratio = f"{ratios[r['engine']]:.2f}x" if r["engine"] in ratios else "-"
        print(f"{r['engine']:<14} {r['start_s']:>8.1f} {r['tokens_per_s']:>9.0f} {r['tokens']:>7} "
              f"{r['seconds']:>7.3f} {r['ran_to_max_tokens']:>5.2f} {r['load_weights_s']:>9.3f} "
              f"{'yes' if r['same_tokens_after_reload'] else 'NO':>5} {ratio:>6}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    opts = parse_args(argv)
    import transformers

    # transformers prints a load report for every checkpoint load (the MTP layer's weights,
    # which it has no module for, are listed as unexpected): noise between the table's rows.
    transformers.logging.set_verbosity_error()
    try:
        problems = load_problems("minif2f-valid", limit=opts.prompts)
    except ProblemSetError as exc:
        sys.exit(f"cannot load the benchmark prompts: {exc}")
    prompts = [build_prompt(p, PROMPT_TEMPLATE) for p in problems]
    # ignore_eos: every completion runs to max_tokens, so both engines decode the same lengths.
    sampling = SamplingConfig(
        n=opts.samples, temperature=1.0, max_tokens=opts.max_tokens, seed=SEED, ignore_eos=True
    )
    report: dict[str, Any] = {
        "benchmark": "engines",
        "config": {
            "engines": opts.rows, "prompts": len(prompts), "samples": opts.samples,
            "max_tokens": opts.max_tokens, "repeats": opts.repeats,
            "problems": [p.name for p in problems], "prompt_template": PROMPT_TEMPLATE,
            "sampling": sampling.model_dump(), "dtype": "auto",
        },
        "machine": machine_info(),
        "results": [],
    }
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        checkpoint = opts.checkpoint
        if checkpoint is None:
            from prover.checkpoints import init_checkpoint

            checkpoint = Path(tmp) / "tiny"
            init_checkpoint("tiny", checkpoint)
            report["config"]["checkpoint"] = "fresh tiny preset (seed 0, float32)"
        else:
            report["config"]["checkpoint"] = str(checkpoint)
        for name in opts.rows:
            try:
                row = run_row(name, checkpoint, prompts, sampling, opts.repeats)
            except Exception as exc:  # one failing engine must not lose the others' numbers
                message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                row = {"engine": name, "error": f"{type(exc).__name__}: {message}"[:500],
                       "traceback_tail": traceback.format_exc().splitlines()[-6:]}
            report["results"].append(row)
            write_report(report, opts.out)
    print_table(report)
    print(f"wrote {opts.out}")
    return report


if __name__ == "__main__":
    main()
