"""`prover data`: inspect problem sets (files, named suites, Hugging Face datasets), and curate
proof corpora into small SFT sets (`prover.curate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from prover.cli.common import (
    SEED_MAX,
    ForceOption,
    JsonFlag,
    ResumeOption,
    StandinOption,
    TimeoutOption,
    UserError,
    WorkersOption,
    config_from_context,
    console,
    print_json,
)
from prover.problems import data_dirs, load_problems, load_suites, resolve_source, summarize

app = typer.Typer(
    help="Problem sets: count and validate problems in a file, a named suite or a hub dataset, "
    "list the named suites, and curate proof corpora into small SFT sets.",
    no_args_is_help=True,
)

SourceArg = Annotated[
    str,
    typer.Argument(
        metavar="PATH_OR_SUITE",
        help="A .jsonl file (DeepSeek-style rows), a .lean file of theorems with `sorry`, "
        "a suite name (see `prover data suites`), or hf:owner/name for a Hugging Face dataset.",
    ),
]
SplitOpt = Annotated[str | None, typer.Option("--split", help="Keep only this split (e.g. valid, test).")]
NamesOpt = Annotated[
    list[str] | None,
    typer.Option("--name", help="Keep only problems with this name or id (repeatable)."),
]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Keep only the first N problems, in file order.")]


@app.command()
def inspect(source: SourceArg, split: SplitOpt = None, name: NamesOpt = None, limit: LimitOpt = None,
            json_out: JsonFlag = False) -> None:
    """Validate a problem set and print counts per split and source.

    A malformed file exits with status 2 and one line naming the file, line and field.
    """
    resolved = resolve_source(source)
    problems = load_problems(source, split=split, names=name, limit=limit)
    summary = summarize(problems)
    origin = {"source": source, "kind": resolved.kind, "location": resolved.location,
              "sha256": resolved.sha256, "suite": resolved.suite.name if resolved.suite else None}
    if json_out:
        print_json({**origin, **summary})
        return
    console.print(f"[bold]{source}[/] ({resolved.kind}: {resolved.location})", highlight=False)
    if resolved.sha256:
        console.print(f"sha256 {resolved.sha256}", highlight=False)
    table = Table(show_header=True, header_style="bold")
    table.add_column("split")
    table.add_column("problems", justify="right")
    for split_name, count in summary["splits"].items():
        table.add_row(split_name, str(count))
    table.add_row("[bold]total[/]", f"[bold]{summary['problems']}[/]")
    console.print(table)
    sources = ", ".join(f"{k}: {v}" for k, v in summary["sources"].items())
    console.print(f"sources: {sources}; distinct headers: {summary['distinct_headers']}", highlight=False)
    duplicates = summary["duplicate_names"]
    if duplicates:
        shown = "; ".join(f"{n} ({', '.join(w)})" for n, w in list(duplicates.items())[:5])
        more = f"; and {len(duplicates) - 5} more" if len(duplicates) > 5 else ""
        console.print(
            f"[yellow]warning:[/] {len(duplicates)} duplicate name(s), told apart by id (name#2, ...): "
            f"{shown}{more}", highlight=False)


@app.command()
def suites(json_out: JsonFlag = False) -> None:
    """List the named suites, where each is looked for, and whether it is found here."""
    rows = []
    for suite in load_suites().values():
        found = next((str(d / suite.file) for d in data_dirs() if (d / suite.file).is_file()), None)
        rows.append({"name": suite.name, "description": suite.description, "file": suite.file,
                     "split": suite.split, "sha256": suite.sha256, "hub": suite.hub, "found": found})
    if json_out:
        print_json({"suites": rows, "searched": [str(d) for d in data_dirs()]})
        return
    table = Table(show_header=True, header_style="bold")
    for col in ("suite", "description", "found at"):
        table.add_column(col)
    for row in rows:
        where = row["found"] or (f"hub: {row['hub']}" if row["hub"] else "[red]not found[/]")
        table.add_row(row["name"], row["description"], where)
    console.print(table)
    console.print("searched: " + ", ".join(str(d) for d in data_dirs()), highlight=False)


@app.command()
def curate(
    ctx: typer.Context,
    corpora: Annotated[list[Path] | None, typer.Argument(
        metavar="CORPUS...", help="Corpus jsonl files, one proof a line (name, code; provenance from `prover "
        "distill`), read in order (default: curate.corpora of --config).")] = None,
    problems: Annotated[str | None, typer.Option(
        "--problems", help="The problem set the rows belong to: a suite name or a .jsonl/.lean path.")] = None,
    size: Annotated[int | None, typer.Option("--size", min=1, help="Rows to select (default: all that pass).")] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", min=0, max=SEED_MAX, help="Seed of the diversity draw (default curate.seed, 0).")] = None,
    pass_rates: Annotated[Path | None, typer.Option(
        "--pass-rates", file_okay=False, help="A `prover bench` / `prover distill` run folder of the base "
        "model: each problem's pass rate is its difficulty.")] = None,
    max_pass_rate: Annotated[float | None, typer.Option(
        "--max-pass-rate", min=0.0, max=1.0, help="Drop problems whose base pass rate is above this "
        "(default curate.max_pass_rate, 0.5).")] = None,
    per_problem: Annotated[int | None, typer.Option(
        "--per-problem", min=1, help="Proofs kept per problem (default 1, as s1).")] = None,
    verify: Annotated[bool, typer.Option(
        "--verify", help="Check every row again with the verifier (as `prover lean check-set`) instead of "
        "trusting its recorded verdict.")] = False,
    timeout: TimeoutOption = None,
    workers: WorkersOption = None,
    out: Annotated[Path | None, typer.Option(
        "--out", file_okay=False, help="Output folder: corpus.jsonl (the selection), report.json, report.md, "
        "and the quality stage's results.jsonl, summary.json, config.resolved.toml.")] = None,
    force: ForceOption = False,
    resume: ResumeOption = False,
    standin: StandinOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Choose a small SFT set from corpora, s1 style: Lean-accepted rows only, near-duplicates
    removed, problems the base model finds easy dropped, then a seeded draw over domains that
    favours hard problems and new tactics. Writes the selection and a report of every row's fate.

    The quality stage (with --verify, a verifier run) streams into --out/results.jsonl: Ctrl-C
    keeps what was checked and --resume continues. Exit 0 done, 2 bad input, 3 no verifier, 130
    interrupted.
    """
    import os
    from contextlib import nullcontext

    from rich.markup import escape

    from prover.checking import STANDIN_LABEL, open_verifier, summarize_records
    from prover.curate import (
        build_report,
        input_files,
        load_inputs,
        quality_records,
        read_pass_rates,
        selected_rows,
        write_outputs,
    )
    from prover.curate import curate as run_curation
    from prover.runs import RunDir, check_pinned, command_line

    config = config_from_context(ctx, {
        "output_dir": out, "verifier.timeout_s": timeout, "verifier.workers": workers,
        "curate.corpora": [os.path.abspath(p) for p in corpora] if corpora else None,   # re-run from anywhere
        "curate.pass_rates": os.path.abspath(pass_rates) if pass_rates is not None else None, "curate.size": size,
        "curate.seed": seed, "curate.max_pass_rate": max_pass_rate, "curate.per_problem": per_problem,
        "curate.verify": True if verify else None})
    if out is None and config.run.command != "data curate":
        raise UserError("name the output folder: --out DIR")
    settings, job = config.curate, config.run
    problems = problems or job.problems
    if problems is None:
        raise UserError("name the problem set the rows belong to: --problems SUITE_OR_FILE")
    run = RunDir.prepare(config.output_dir, key="origin", force=force, resume=resume)   # before any work
    resolved = resolve_source(problems)
    check_pinned("--problems", problems, resolved.sha256, job.problems, job.problems_sha256)
    problem_set = load_problems(problems)
    rows = load_inputs(settings.corpora, problem_set)
    rates = read_pass_rates(Path(settings.pass_rates)) if settings.pass_rates else None
    verifier = open_verifier(config.verifier, standin) if settings.verify else None
    label = STANDIN_LABEL if verifier is not None and verifier.config.backend == "standin" else None
    if verifier is not None:
        config = config.model_copy(update={"verifier": verifier.config})
    config = config.model_copy(update={"run": job.model_copy(update={
        "command": "data curate", "argv": command_line(), "problems": problems,
        "problems_file": resolved.location, "problems_sha256": resolved.sha256})})
    todo = [r for r in rows if r.entry.origin not in run.done_keys]
    run.begin(config, total=len(rows), summarize=summarize_records, succeeded=lambda r: bool(r["passed"]),
              unit="rows", success_word="accepted",
              extra={"stage": "quality", "verify": settings.verify} | ({"backend": label} if label else {}))
    with run, verifier if verifier is not None else nullcontext():
        for record in quality_records(todo, verifier, batch_size=4 * config.verifier.workers,
                                      on_verified=run.verified):
            run.append(record)
    assert run.path is not None
    quality = {str(r["origin"]): r for r in run.records}
    result = run_curation(rows, quality, pass_rates=rates, size=settings.size, seed=settings.seed,
                          max_pass_rate=settings.max_pass_rate, per_problem=settings.per_problem)
    report = build_report(rows, quality, result, settings=settings.model_dump(mode="json"),
                          inputs=input_files(settings.corpora, rows),
                          problems={"source": problems, "file": resolved.location, "sha256": resolved.sha256},
                          pass_rates=rates, checked_by=verifier.checked_by if verifier is not None else None)
    write_outputs(run.path, selected_rows(result), report)
    counts = report["counts"]
    if as_json:
        print_json({key: report[key] for key in ("counts", "reasons", "seed", "quality", "domains", "tactics")}
                   | {"output_dir": str(run.path)})
        return
    prefix = f"[{label}] " if label else ""
    table = Table(show_header=True, header_style="bold", title=escape(f"{prefix}curation, seed {settings.seed}"))
    for column in ("stage", "rows", "why"):
        table.add_column(column)
    for bucket, count in counts.items():
        why = "; ".join(f"{k}: {v}" for k, v in report["reasons"].get(bucket, {}).items())
        table.add_row(bucket, str(count), why)
    console.print(table)
    console.print(f"{prefix}wrote {run.path}/corpus.jsonl ({counts['selected']} rows), report.json, report.md",
                  markup=False, highlight=False, soft_wrap=True)
