"""`prover model`: create and inspect policy checkpoints (Hugging Face format)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Policy checkpoints: write a fresh DeepSeek-V3-architecture checkpoint from a preset "
    "(init) and print its parameters and layout (info).",
    no_args_is_help=True,
)
