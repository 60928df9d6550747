"""`prover train`: command group, not yet available. Its commands arrive with the training stage;
until then the group says so (exit 2) instead of showing an empty list of commands."""

from __future__ import annotations

import typer

from prover.cli.common import UserError

app = typer.Typer(
    help="Train the policy on Lean problem sets: GRPO with Lean-verified rewards over a Ray rollout fleet, SFT and distillation. Not yet available: lands with the training stage.",
    invoke_without_command=True,
)


@app.callback()
def _not_yet(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand is None:
        raise UserError("`prover train` is not yet available: it lands with the training stage "
                        "(see the README's 'What works today')")
