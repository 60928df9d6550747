"""`prover bench`: pass@k of a proving method on a suite, written so that others can reproduce
it (`prover.bench`), and `prover bench compare` of two runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from prover.bench.job import BenchOutcome, SummaryExtra
from prover.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    BudgetSamplesOption,
    BudgetSecondsOption,
    BudgetTokensOption,
    ExpansionsOption,
    ForceOption,
    JsonFlag,
    MaxTokensOption,
    ResumeOption,
    RoundsOption,
    SearchBackendOption,
    SeedOption,
    StandinOption,
    TacticTemplateOption,
    TemperatureOption,
    TemplateOption,
    ThinkTokensOption,
    TimeoutOption,
    UserError,
    WaitsOption,
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
MethodOption = Annotated[str | None, typer.Option(
    "--method", help="whole (whole-proof sampling), repair (Lean-feedback repair) or search (best-first "
    "tactic search); default: the [run] method of --config, else whole.")]
EngineOption = Annotated[str | None, typer.Option("--engine", help="vllm (default) or transformers.")]
SamplesOption = Annotated[int | None, typer.Option(
    "--n", "-n", min=1, help="Samples per problem (default policy.sampling.n); every k must be at most n.")]
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
    method: str | None
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
    budget_samples: int | None = None   # method budgets and options (recorded in [run]; None = not given)
    budget_tokens: int | None = None
    budget_seconds: float | None = None
    rounds: int | None = None
    think_tokens: int | None = None
    waits: int | None = None
    expansions: int | None = None
    search_backend: str | None = None   # [search] (None = not given)
    tactic_template: str | None = None


@app.callback()
def bench(
    ctx: typer.Context,
    suite: SuiteOption = None,
    problems: ProblemsOption = None,
    split: SplitOption = None,
    limit: LimitOption = None,
    model: ModelOption = None,
    method: MethodOption = None,
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
    budget_samples: BudgetSamplesOption = None,
    budget_tokens: BudgetTokensOption = None,
    budget_seconds: BudgetSecondsOption = None,
    rounds: RoundsOption = None,
    think_tokens: ThinkTokensOption = None,
    waits: WaitsOption = None,
    expansions: ExpansionsOption = None,
    search_backend: SearchBackendOption = None,
    tactic_template: TacticTemplateOption = None,
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
        standin=standin, as_json=as_json, budget_samples=budget_samples, budget_tokens=budget_tokens,
        budget_seconds=budget_seconds, rounds=rounds, think_tokens=think_tokens, waits=waits,
        expansions=expansions, search_backend=search_backend, tactic_template=tactic_template), command="bench")
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
                  summary_extra: SummaryExtra | None = None) -> BenchOutcome:
    """A bench-style command's run (`command`: "bench", "distill"): its flags over the config,
    then `prover.bench.job.run_bench_job`, each problem's line printed as it is written."""
    from prover.bench.job import BenchRequest
    from prover.bench.job import run_bench_job as run_job
    from prover.search.methods import apply_published_sampling

    config = config_from_context(ctx, {
        "output_dir": job.out, "policy.checkpoint": job.model, "policy.engine": job.engine,
        "policy.sampling.n": job.n, "policy.sampling.max_tokens": job.max_tokens,
        "policy.sampling.temperature": job.temperature, "policy.sampling.seed": job.seed,
        "verifier.timeout_s": job.timeout, "verifier.workers": job.workers,
        "run.problems_per_batch": job.problems_per_batch, "rollout.prompt_template": job.template,
        "benchmark.k": _parse_ks(job.k) if job.k is not None else None, "benchmark.suite": job.suite or job.problems,
        "benchmark.split": job.split, "benchmark.limit": job.limit,
        "run.budget_samples": job.budget_samples, "run.budget_tokens": job.budget_tokens,
        "run.budget_seconds": job.budget_seconds, "run.rounds": job.rounds, "run.think_tokens": job.think_tokens,
        "run.waits": job.waits, "run.expansions": job.expansions,
        "search.backend": job.search_backend, "search.template": job.tactic_template,
    })
    # The template's published sampling applies wherever the user set none (as `prover prove` does).
    given = {k for k, v in (("n", job.n), ("max_tokens", job.max_tokens), ("temperature", job.temperature))
             if v is not None}
    sampling = apply_published_sampling(config.policy.sampling, config.rollout.prompt_template, given)
    config = config.model_copy(update={"policy": config.policy.model_copy(update={"sampling": sampling})})
    request = BenchRequest(suite=job.suite, problems=job.problems, split=job.split, limit=job.limit,
                           method=job.method, force=job.force, resume=job.resume, standin=job.standin)

    def show(line: str, record: dict[str, Any]) -> None:
        console.print(line, markup=False, highlight=False)

    return run_job(config, request, command=command, summary_extra=summary_extra, say=_say,
                   on_record=None if job.as_json else show)


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
