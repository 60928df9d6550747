"""`prover train`: command group. Its commands arrive with later stages of the project."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Train the policy on Lean problem sets: GRPO with Lean-verified rewards over a Ray rollout fleet, SFT and distillation. Lands with the training stage.",
    no_args_is_help=True,
)
