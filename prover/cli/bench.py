"""`prover bench`: pass@k of a proving method on a suite, written so that others can reproduce
it (`prover.bench`), and `prover bench compare` of two runs."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from prover.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    SEED_MAX,
    ForceOption,
    JsonFlag,
    ResumeOption,
    StandinOption,
    TemplateOption,
    TimeoutOption,
    UserError,
    WorkersOption,
    config_from_context,
    console,
    err_console,
    print_json,
)

app = typer.Typer(
    help="Benchmark pass@k on a suite (unbiased estimator, standard errors), with a report "
    "(model and weight hash, template, sampling, engine, Lean/Mathlib/REPL versions, header, "
    "timeout, acceptance rules, dataset sha256) that others can reproduce.",
    invoke_without_command=True,
)


def _say(text: str) -> None:
    err_console.print(text, highlight=False, markup=False, soft_wrap=True)


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--k {text!r}: give positive integers separated by commas, e.g. 1,8,32") from None
    if not ks or min(ks) < 1:
        raise UserError(f"--k {text!r}: give positive integers separated by commas, e.g. 1,8,32")
    return sorted(set(ks))


# The options of a bench-style run, spelled once: `prover bench` and `prover distill` share them.
SuiteOption = Annotated[str | None, typer.Option(
    "--suite", help="A named suite (data/suites.toml, e.g. minif2f-valid). With --problems, that file must be "
    "the copy the suite pins (same sha256) and the suite's split is used.")]
ProblemsOption = Annotated[str | None, typer.Option(
    "--problems", help="Problem file (.jsonl/.lean) or hf:owner/name, alone or as the suite's file.")]
SplitOption = Annotated[str | None, typer.Option("--split", help="Keep only this split of the set.")]
LimitOption = Annotated[int | None, typer.Option(
    "--limit", min=1, help="Only the first N problems (a smoke run; the report says so).")]
ModelOption = Annotated[str | None, typer.Option(
    "--model", help="The policy: a Hugging Face checkpoint folder or hub id (default policy.checkpoint).")]
MethodOption = Annotated[str, typer.Option(
    "--method", help="whole (whole-proof sampling), repair (Lean-feedback repair) or search (best-first "
    "tactic search).")]
EngineOption = Annotated[str | None, typer.Option("--engine", help="vllm (default) or transformers.")]
SamplesOption = Annotated[int | None, typer.Option(
    "--n", "-n", min=1, help="Samples per problem (default policy.sampling.n); every k must be at most n.")]
MaxTokensOption = Annotated[int | None, typer.Option("--max-tokens", min=1, help="New tokens per sample.")]
TemperatureOption = Annotated[float | None, typer.Option("--temperature", min=0.0, help="Sampling temperature.")]
SeedOption = Annotated[int | None, typer.Option(
    "--seed", min=0, max=SEED_MAX, help="Sampling seed (default: drawn and recorded).")]
ProblemsPerBatchOption = Annotated[int | None, typer.Option(
    "--problems-per-batch", min=1, help="Problems sampled in one engine call; each is written when its batch "
    "is verified, so an interruption loses at most one batch (default run.problems_per_batch, 8).")]


@dataclass(frozen=True)
class BenchJob:
    """What a bench-style command was asked for (its flags; None = not given)."""

    suite: str | None
    problems: str | None
    split: str | None
    limit: int | None
    model: str | None
    method: str
    engine: str | None
    n: int | None
    k: str | None
    max_tokens: int | None
    temperature: float | None
    seed: int | None
    template: str | None
    timeout: float | None
    workers: int | None
    problems_per_batch: int | None
    out: Path | None
    force: bool
    resume: bool
    standin: Path | None
    as_json: bool


@dataclass(frozen=True)
class BenchOutcome:
    """A finished (or interrupted) bench-style run: its folder, summary, records and manifest."""

    path: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    manifest: dict[str, Any]
    prefix: str                 # "[stand-in (not Lean)] " when the stand-in judged, else ""
    interrupted: str | None     # the line to print when Ctrl-C / SIGTERM stopped the run


@app.callback()
def bench(
    ctx: typer.Context,
    suite: SuiteOption = None,
    problems: ProblemsOption = None,
    split: SplitOption = None,
    limit: LimitOption = None,
    model: ModelOption = None,
    method: MethodOption = "whole",
    engine: EngineOption = None,
    n: SamplesOption = None,
    k: Annotated[str | None, typer.Option("--k", help="Values of k to report, e.g. 1,8,32 (default benchmark.k).")] = None,
    max_tokens: MaxTokensOption = None,
    temperature: TemperatureOption = None,
    seed: SeedOption = None,
    template: TemplateOption = None,
    timeout: TimeoutOption = None,
    workers: WorkersOption = None,
    problems_per_batch: ProblemsPerBatchOption = None,
    out: Annotated[Path | None, typer.Option(
        "--out", file_okay=False, help="Run folder: results.jsonl, summary.json, report.md, passk.png, "
        "config.resolved.toml (default: output_dir of the config).")] = None,
    force: ForceOption = False,
    resume: ResumeOption = False,
    standin: StandinOption = None,
    as_json: JsonFlag = False,
) -> None:
    """pass@k of --method on --suite/--problems: n samples per problem, every one Lean-checked.

    Each problem's result is appended to --out as it finishes; Ctrl-C, SIGTERM or kill -9 lose at
    most the problems in flight, and --resume continues. Exit 0 when the run completed, 2 on bad
    input, 3 when the verifier is missing, 130 when interrupted.
    """
    if ctx.invoked_subcommand is not None:
        return
    done = run_bench_job(ctx, BenchJob(
        suite=suite, problems=problems, split=split, limit=limit, model=model, method=method, engine=engine,
        n=n, k=k, max_tokens=max_tokens, temperature=temperature, seed=seed, template=template, timeout=timeout,
        workers=workers, problems_per_batch=problems_per_batch, out=out, force=force, resume=resume,
        standin=standin, as_json=as_json), command="bench")
    if done.interrupted is not None:
        _say(done.interrupted)
        raise typer.Exit(EXIT_INTERRUPTED)
    if as_json:
        print_json(done.summary)
    else:
        _print_table(done.summary, done.prefix)
        console.print(f"{done.prefix}wrote {done.path}/results.jsonl, summary.json, report.md, passk.png, "
                      "config.resolved.toml", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_OK)


def run_bench_job(ctx: typer.Context, job: BenchJob, *, command: str,
                  summary_extra: Callable[[Sequence[dict[str, Any]], dict[str, Any]], dict[str, Any]] | None = None,
                  ) -> BenchOutcome:
    """One bench-style run into its folder (`command` names it in the resolved config: "bench",
    "distill"): resolve the config, refuse a bad folder or input before any work, sample and
    verify with `run_bench`, append each problem's record, write summary and report.
    `summary_extra(records, manifest)` adds the caller's own counts to summary.json."""
    from policy.engines import make_engine
    from policy.tokenizer import load_tokenizer
    from prover.bench.report import write_report
    from prover.bench.runner import (
        build_manifest,
        load_method,
        run_bench,
        select_problems,
        summarize_bench,
    )
    from prover.checkpoints import resolve_model
    from prover.cli.lean import STANDIN_LABEL, open_verifier
    from prover.runs import RunDir, RunInterrupted, draw_seed
    from prover.search.attempts import context_length, prompt_fit

    method, suite, problems = job.method, job.suite, job.problems
    load_method(method)   # a method not in this checkout: one line, before any work
    config = config_from_context(ctx, {
        "output_dir": job.out, "policy.checkpoint": job.model, "policy.engine": job.engine,
        "policy.sampling.n": job.n, "policy.sampling.max_tokens": job.max_tokens,
        "policy.sampling.temperature": job.temperature, "policy.sampling.seed": job.seed,
        "verifier.timeout_s": job.timeout, "verifier.workers": job.workers,
        "run.problems_per_batch": job.problems_per_batch, "rollout.prompt_template": job.template,
        "benchmark.k": _parse_ks(job.k) if job.k is not None else None, "benchmark.suite": suite or problems,
        "benchmark.split": job.split, "benchmark.limit": job.limit,
    })
    recorded = config.run
    if suite is None and problems is None:   # a resolved config re-runs its own job
        if recorded.command != command:
            raise UserError("name the problems: --suite NAME (see `prover data suites`) or --problems PATH")
        suite, problems = config.benchmark.suite, recorded.problems
        problems = None if problems == suite else problems
    if config.policy.checkpoint is None:
        raise UserError("no policy checkpoint: pass --model DIR (e.g. one written by `prover model init`)")
    run = RunDir.prepare(config.output_dir, key="id", force=job.force, resume=job.resume)   # before any work
    checkpoint = resolve_model(config.policy.checkpoint)
    config = config.model_copy(update={"policy": config.policy.model_copy(update={"checkpoint": str(checkpoint)})})
    limit = job.limit if job.limit is not None else recorded.limit
    selection = select_problems(suite=suite, problems=problems,
                                split=job.split if job.split is not None else recorded.split, limit=limit)
    verifier = open_verifier(config.verifier, job.standin)   # no Lean: exit here, before loading a model
    label = STANDIN_LABEL if verifier.config.backend == "standin" else None
    if config.policy.sampling.seed is None:   # drawn once, recorded, and kept on --resume
        drawn = run.previous("policy.sampling.seed")
        config.policy.sampling.seed = drawn if isinstance(drawn, int) else draw_seed()
    config = config.model_copy(update={"verifier": verifier.config, "run": recorded.model_copy(update={
        "command": command, "argv": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "problems": problems or suite, "problems_file": selection.file, "problems_sha256": selection.sha256,
        "split": selection.split, "limit": limit})})
    manifest = build_manifest(config, checkpoint=checkpoint, selection=selection, method=method,
                              checked_by=verifier.checked_by, standin=label is not None,
                              final_judge_active=getattr(verifier, "final_judge", None) is not None)
    _refuse_other_weights(run, manifest)
    ks, samples = config.benchmark.k, config.policy.sampling.n
    def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        counts = summarize_bench(records, ks=ks, n=samples)
        return counts | (summary_extra(records, manifest) if summary_extra is not None else {})

    run.begin(config, total=len(selection.problems), summarize=summarize,
              succeeded=lambda r: bool(r["proved"]), unit="problems",
              extra={"method": method, "n": samples, "k": ks, "checked_by": verifier.checked_by}
              | ({"backend": label} if label else {}) | {"manifest": manifest})
    todo = [p for p in selection.problems if p.id not in run.done_keys]
    prefix = f"[{label}] " if label else ""
    if label:
        _say(f"{prefix}verdicts come from the stand-in REPL, a test double: these numbers are not Lean's")
    interrupted: str | None = None
    try:
        with run:
            if run.done_keys:
                _say(f"resuming {run.path}: {len(selection.problems) - len(todo)} of {len(selection.problems)} "
                     "problems already done")
            if todo:
                _say(f"starting {config.policy.engine} on {checkpoint} ...")
                tokenizer = load_tokenizer(config.policy.tokenizer or checkpoint)
                fits = prompt_fit(lambda text: len(tokenizer(text)["input_ids"]),
                                  context_length(checkpoint, config.policy.max_model_len))
                with make_engine(config.policy) as policy_engine, verifier:
                    for record in run_bench(todo, policy_engine, verifier, config, method=method, label=label,
                                            on_verified=run.verified, prompt_check=fits, tokenizer=tokenizer):
                        run.append(record)
                        if not job.as_json:
                            console.print(f"{prefix}{record['id']}: {record['correct']}/{record['samples']} "
                                          f"accepted ({record['outcome']})", markup=False, highlight=False)
    except RunInterrupted as stop:
        interrupted = str(stop)
    summary = run.summary
    assert summary is not None and run.path is not None
    write_report(run.path, summary, run.records)
    return BenchOutcome(run.path, summary, run.records, manifest, prefix, interrupted)


def _refuse_other_weights(run: Any, manifest: dict[str, Any]) -> None:
    """--resume must score the same weights: the checkpoint path alone could hold new ones."""
    if not run.resume or run.path is None or not (run.path / "summary.json").is_file():
        return
    try:
        before = json.loads((run.path / "summary.json").read_text(encoding="utf-8"))["manifest"]["model"]["weights"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    now = manifest["model"]["weights"]["sha256"]
    if before != now:
        raise UserError(f"{run.path}: --resume with different weights: sha256 {str(before)[:12]}... -> "
                        f"{str(now)[:12]}...; pass --force to start over")


def _print_table(summary: dict[str, Any], prefix: str) -> None:
    from rich.table import Table

    table = Table(title=f"{prefix}pass@k, {summary['done']} problems, n = {summary['n']}")
    for column in ("k", "pass@k", "standard error", "problems"):
        table.add_column(column, justify="right")
    for row in summary["pass_at_k"]:
        se = "-" if row["se"] is None else f"{100 * row['se']:.1f}%"
        table.add_row(str(row["k"]), f"{100 * row['mean']:.1f}%", se, str(row["problems"]))
    console.print(table)


@app.command("compare")
def compare(
    first: Annotated[Path, typer.Argument(metavar="DIR1", help="A bench run folder (A).")],
    second: Annotated[Path, typer.Argument(metavar="DIR2", help="Another bench run folder (B).")],
    as_json: JsonFlag = False,
) -> None:
    """B - A per problem and per k: pass@k of both runs on their common problems, the difference
    and its paired standard error."""
    from rich.table import Table

    from prover.bench.report import compare_runs

    diff = compare_runs(first, second)
    if as_json:
        print_json(diff)
        raise typer.Exit(EXIT_OK)

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    per_k = Table(title=f"pass@k, B - A over {diff['common_problems']} common problems")
    for column in ("k", "A", "B", "B - A (points)", "SE"):
        per_k.add_column(column, justify="right")
    for row in diff["pass_at_k"]:
        per_k.add_row(str(row["k"]), pct(row["a"]), pct(row["b"]),
                      "-" if row["diff"] is None else f"{100 * row['diff']:+.1f}", pct(row["se"]))
    console.print(per_k)
    changed = [p for p in diff["problems"] if p["changed"]]
    problems = Table(title=f"problems that changed ({len(changed)} of {diff['common_problems']})")
    for column in ("problem", "A correct", "B correct", *(f"pass@{r['k']} B - A (points)" for r in diff["pass_at_k"])):
        problems.add_column(column)
    for p in changed:
        problems.add_row(p["id"], p["a"], p["b"], *(
            "-" if v["diff"] is None else f"{100 * v['diff']:+.1f}" for v in p["pass_at_k"].values()))
    console.print(problems)
    for side in ("a", "b"):
        if diff[f"only_{side}"]:
            console.print(f"only in {side.upper()}: {', '.join(diff[f'only_{side}'])}", markup=False, highlight=False)
        if diff["standin"][side]:
            console.print(f"{side.upper()}: verdicts from the {diff['standin'][side]}", markup=False, highlight=False)
    raise typer.Exit(EXIT_OK)
