"""Pieces every CLI command shares: exit codes, the user-error types, `--json` output,
console helpers and the checks run on options before any work starts.

Domain errors become a one-line message and an exit code at the CLI edge, never a
traceback: library code raises `prover.errors.UserError` for anything a user can fix and
`prover.errors.CannotCheck` when nothing here could judge the input.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from policy.config import SEED_MAX  # largest seed torch and vLLM take
from prover.errors import CannotCheck, UserError

__all__ = ["EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_NOT_CHECKED", "EXIT_OK", "EXIT_REJECTED",
           "EXIT_USAGE", "SEED_MAX", "CannotCheck", "JsonFlag", "UserError", "config_from_context",
           "console", "err_console", "exit_code_for", "print_json", "require_writable_dir"]

# Exit codes: each means one thing, for every command.
EXIT_OK = 0             # yes: proved, accepted, everything found
EXIT_REJECTED = 1       # the command ran and the answer is "no" (a proof rejected, a problem not proved)
EXIT_USAGE = 2          # the user's mistake: bad option, unreadable or malformed file, bad config value
EXIT_NOT_CHECKED = 3    # could not check: no Lean toolchain or REPL, verifier server down, infrastructure
EXIT_INTERNAL = 70      # a bug in the prover (traceback shown; sysexits' EX_SOFTWARE)
EXIT_INTERRUPTED = 130  # interrupted by Ctrl-C (128 + SIGINT)

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON document on stdout (for "
                       "programs); logs and progress go to stderr.")
]

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Machine-readable output: one JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def exit_code_for(outcomes: Iterable[str]) -> int:
    """One exit code for a set of verdict outcomes (`Verdict.outcome` strings): some could not
    be checked (infrastructure) -> 3, else all accepted -> 0, else (or none at all) -> 1."""
    seen = list(outcomes)
    if "not_checked:infrastructure" in seen:
        return EXIT_NOT_CHECKED
    return EXIT_OK if seen and all(o == "accepted" for o in seen) else EXIT_REJECTED


def require_writable_dir(folder: Path, option: str = "--out") -> None:
    """Refuse, before any work starts, an output folder that could not be written at the end:
    a file in the way, or a folder (or the nearest existing parent) we cannot create files in.
    Probes by creating a temporary file, which also catches read-only filesystems and root's
    permission bypass that `os.access` misses."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"has a file in its path ({existing})"
        raise UserError(f"{option} {folder}: {where}, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        what = "" if existing == folder else f" (its nearest existing parent {existing} is not)"
        raise UserError(f"{option} {folder}: not writable{what}: {os.strerror(exc.errno or 0)}") from None


def config_from_context(ctx: typer.Context, overrides: dict[str, Any] | None = None):  # -> ProverConfig
    """Resolve the run config for a command: defaults < the global `--config` file < `overrides`
    (the command's own flags, as dotted keys; None = flag not given)."""
    from prover.config import resolve_config  # deferred: keeps `prover --help` light

    root = ctx.find_root()
    config_file = (root.obj or {}).get("config_file") if isinstance(root.obj, dict) else None
    return resolve_config(config_file, overrides)
