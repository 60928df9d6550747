"""`prover data`: inspect problem sets (files, named suites, Hugging Face datasets)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from prover.cli.common import JsonFlag, console, print_json
from prover.problems import data_dirs, load_problems, load_suites, resolve_source, summarize

app = typer.Typer(
    help="Problem sets: count and validate problems in a file, a named suite or a hub dataset, "
    "and list the named suites.",
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
