"""`prover bench`: command group, not yet available. Its commands arrive with the proving stage;
until then the group says so (exit 2) instead of showing an empty list of commands."""

from __future__ import annotations

import typer

from prover.cli.common import UserError

app = typer.Typer(
    help="Benchmark pass@k on miniF2F-style suites, with a report (copy of the suite, Lean and Mathlib versions, header, timeout, acceptance rules) that others can reproduce. Not yet available: lands with the proving stage.",
    invoke_without_command=True,
)


@app.callback()
def _not_yet(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        raise UserError("`prover bench` is not yet available: it lands with the proving stage "
                        "(see the README's 'What works today')")
