"""`prover lean`: install and inspect the Lean toolchain, and check proofs with the verifier."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Lean: set up the pinned toolchain and REPL (setup), report what is found (doctor), "
    "and check proof files against a problem's header and statement (check).",
    no_args_is_help=True,
)
