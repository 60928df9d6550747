"""`prover data`: inspect problem sets (files, named suites, Hugging Face datasets)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Problem sets: count and validate problems in a file, a named suite or a hub dataset.",
    no_args_is_help=True,
)
