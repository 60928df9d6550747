"""`prover bench`: command group. Its commands arrive with later stages of the project."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Benchmark pass@k on miniF2F-style suites, with a report (copy of the suite, Lean and Mathlib versions, header, timeout, acceptance rules) that others can reproduce. Lands with the proving stage.",
    no_args_is_help=True,
)
