"""`prover prove`: command group. Its commands arrive with later stages of the project."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Prove a theorem from the command line and get back a Lean-checked proof (whole-proof sampling, Lean-feedback repair, best-first tactic search). Lands with the proving stage.",
    no_args_is_help=True,
)
