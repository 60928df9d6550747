"""`prover distill`: sample proofs of a problem set from a (stronger) model with `prover bench`'s
machinery and keep the Lean-accepted ones, deduplicated, as an SFT corpus (`prover.distill`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prover.cli.bench import (
    BenchJob,
    EngineOption,
    LimitOption,
    MethodOption,
    ModelOption,
    ProblemsOption,
    ProblemsPerBatchOption,
    SamplesOption,
    SplitOption,
    SuiteOption,
    run_bench_job,
)
from prover.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    ForceOption,
    JsonFlag,
    MaxTokensOption,
    ResumeOption,
    SeedOption,
    StandinOption,
    TemperatureOption,
    TemplateOption,
    TimeoutOption,
    WorkersOption,
    console,
    err_console,
    print_json,
)

app = typer.Typer(
    help="Distil a model's Lean-accepted proofs into an SFT corpus: a `prover bench` run (same options, "
    "run folder, resume and manifest) whose accepted proofs, deduplicated per problem, are written to "
    "corpus.jsonl with their provenance (model, template, sampling, verdict).",
    invoke_without_command=True,
)


@app.callback()
def distill(
    ctx: typer.Context,
    suite: SuiteOption = None,
    problems: ProblemsOption = None,
    split: SplitOption = None,
    limit: LimitOption = None,
    model: ModelOption = None,
    method: MethodOption = None,
    engine: EngineOption = None,
    n: SamplesOption = None,
    max_tokens: MaxTokensOption = None,
    temperature: TemperatureOption = None,
    seed: SeedOption = None,
    template: TemplateOption = None,
    timeout: TimeoutOption = None,
    workers: WorkersOption = None,
    problems_per_batch: ProblemsPerBatchOption = None,
    out: Annotated[Path | None, typer.Option(
        "--out", file_okay=False, help="Run folder: corpus.jsonl (the accepted, deduplicated proofs), "
        "results.jsonl (every attempt), summary.json, report.md, passk.png, config.resolved.toml "
        "(default: output_dir of the config).")] = None,
    force: ForceOption = False,
    resume: ResumeOption = False,
    standin: StandinOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Sample --n proofs per problem of --suite/--problems from --model, check every one, and write
    the accepted ones (one row per distinct proof of a problem, comments and spacing ignored) to
    --out/corpus.jsonl.

    The run streams and resumes as `prover bench` does: Ctrl-C, SIGTERM or kill -9 lose at most the
    problems in flight, and --resume continues; corpus.jsonl is rewritten from results.jsonl after
    every run, so it always holds every proof verified so far. Its base pass rates serve `prover data
    curate --pass-rates`. Exit 0 when the run completed, 2 on bad input, 3 when the verifier is
    missing, 130 when interrupted.
    """
    from prover.distill import CORPUS_NAME, summary_counts, write_run_corpus

    done = run_bench_job(ctx, BenchJob(
        suite=suite, problems=problems, split=split, limit=limit, model=model, method=method, engine=engine,
        n=n, k=None, max_tokens=max_tokens, temperature=temperature, seed=seed, template=template, timeout=timeout,
        workers=workers, problems_per_batch=problems_per_batch, out=out, force=force, resume=resume,
        standin=standin, as_json=as_json), command="distill",
        summary_extra=summary_counts)
    stats = write_run_corpus(done.path, done.records, done.manifest)
    line = (f"{done.prefix}{stats['proofs']} distinct accepted proofs of {stats['problems_with_proofs']} problems "
            f"({stats['accepted_samples']} accepted of {stats['samples']} samples, {stats['duplicates_dropped']} "
            f"duplicates dropped) written to {done.path / CORPUS_NAME}")
    if done.interrupted is not None:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)
        err_console.print(done.interrupted, markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    if as_json:
        print_json(done.summary | {"corpus": stats})   # summary.json's counts, and where the corpus is
    else:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_OK)
