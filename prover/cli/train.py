"""`prover train`: GRPO, SFT and distillation. Its commands arrive with the training stage."""

from __future__ import annotations

from prover.cli.common import not_yet_available

app = not_yet_available(
    "train", "training",
    "Train the policy on Lean problem sets: GRPO with Lean-verified rewards over a Ray rollout "
    "fleet, SFT and distillation.")
