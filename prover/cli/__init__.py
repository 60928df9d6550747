"""`prover`: the command-line interface, a thin typer shell over library functions.

Groups: prove, train, bench, lean, model, data. Logging is configured here (and only here),
from the global `--log-level`. Domain errors (`UserError`) become a one-line message and
exit code 2; nothing a user can cause ends in a traceback.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from prover.cli import bench, data, lean, model, prove, train
from prover.cli.common import UserError, err_console


class _Group(TyperGroup):
    """Turns a `UserError` raised anywhere below into one red line on stderr and its exit code."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    name="prover",
    cls=_Group,
    help="Lean-integrated RL theorem prover: prove theorems, train the policy with GRPO, "
    "benchmark pass@k, and manage Lean, models and problem sets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(prove.app, name="prove")
app.add_typer(train.app, name="train")
app.add_typer(bench.app, name="bench")
app.add_typer(lean.app, name="lean")
app.add_typer(model.app, name="model")
app.add_typer(data.app, name="data")


@app.callback()
def _global(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML run configuration ([policy], [verifier], [rollout], [training], [benchmark]); "
            "command-line flags override it, it overrides the defaults.",
            dir_okay=False,
        ),
    ] = None,
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level",
            help="Logging level for progress and diagnostics on stderr: debug, info, warning, error.",
            case_sensitive=False,
        ),
    ] = "warning",
) -> None:
    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        raise UserError(f"--log-level: unknown log level {log_level!r} (use debug, info, warning or error)")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config is not None and not config.is_file():
        raise UserError(f"--config {config}: no such file")
    ctx.obj = {"config_file": config}


def main() -> None:
    """Console-script entry point."""
    app()
