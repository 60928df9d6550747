"""A stand-in for leanprover-community/repl: a test double, not Lean.

No Lean toolchain can be installed on our development machines, so the verifier layer is
tested against this process. It speaks the REPL's wire protocol exactly (REPL_PROTOCOL.md
section 1: blank-line framing, env ids, messages with pos/endPos, sorries with proof
states, `{"message": "Unknown environment."}`, imports only without env, tactic mode with
proofState/goals/proofStatus, pickling, `#print axioms` info messages) and answers from a
deterministic JSON rule table, which can also inject the failures real REPLs show: hangs,
crashes, OOM kills (exit by SIGKILL), garbage on stdout, slow header imports, the
sorry-warning-with-empty-`sorries` bug, and memory that grows with every command.

Rule tables are described in `lean_env.standin.rules`. Its verdicts are never Lean's:
everything built on its replies carries `CHECKED_BY`.

Start it like a real REPL: `python -m lean_env.standin --rules RULES.json [--state-dir DIR]`,
or take the argv from `command()`.

Two tables ship for demos where no Lean can be had (the README's main job), in `TABLES_DIR`:
`accept_unless_sorry.json` (the default behaviour: anything without `sorry` is accepted; fit
for proofs Lean is known to have accepted) and `reject_unjudged.json` (every candidate gets
an error saying a test double cannot judge it; fit for new proofs, e.g. a model's samples).
The tables for tests live under tests/lean_env/rules/.
"""

from __future__ import annotations

import sys
from pathlib import Path

CHECKED_BY = "stand-in REPL (test double, not Lean)"
TABLES_DIR = Path(__file__).resolve().parent / "tables"


def command(rules_path: Path | str, *, state_dir: Path | str | None = None) -> list[str]:
    """argv that starts the stand-in with the current interpreter.

    `state_dir` (optional) is where stand-in processes sharing a rule table count fault
    firings (`max_fires`) and append an event log (`events.jsonl`: one line per request,
    with the pid and kind, so tests can count header imports per process).
    """
    argv = [sys.executable, "-m", "lean_env.standin", "--rules", str(Path(rules_path).resolve())]
    if state_dir is not None:
        argv += ["--state-dir", str(Path(state_dir).resolve())]
    return argv


def is_standin(argv: list[str]) -> bool:
    """Whether `argv` starts the stand-in (so its verdicts must never be labelled Lean's)."""
    return "lean_env.standin" in argv
