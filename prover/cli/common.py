"""Pieces every CLI command shares: the user-error type, `--json` output, console helpers.

Domain errors become a one-line message and an exit code at the CLI edge, never a
traceback: library code raises `prover.errors.UserError` for anything a user can fix.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from prover.errors import UserError

__all__ = ["EXIT_INTERRUPTED", "EXIT_NOT_CHECKED", "EXIT_OK", "EXIT_REJECTED", "EXIT_USAGE", "JsonFlag",
           "UserError", "config_from_context", "console", "err_console", "fail", "print_json"]

# Exit codes shared by all commands.
EXIT_OK = 0
EXIT_REJECTED = 1   # the command ran; the answer is "no" (e.g. a proof was rejected)
EXIT_USAGE = 2      # bad input: unreadable file, unknown name, invalid option
EXIT_NOT_CHECKED = 3     # could not check: infrastructure (no REPL, a kimina server down)
EXIT_INTERRUPTED = 130   # Ctrl-C or SIGTERM (128 + SIGINT, the shell's convention)


JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print the result as JSON on stdout (for programs).")
]

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Machine-readable output: one JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    """Print `message` to stderr and return the Exit to raise: `raise fail("...")`."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def config_from_context(ctx: typer.Context, overrides: dict[str, Any] | None = None):  # -> ProverConfig
    """Resolve the run config for a command: defaults < the global `--config` file < `overrides`
    (the command's own flags, as dotted keys; None = flag not given)."""
    from prover.config import resolve_config  # deferred: keeps `prover --help` light

    root = ctx.find_root()
    config_file = (root.obj or {}).get("config_file") if isinstance(root.obj, dict) else None
    return resolve_config(config_file, overrides)
