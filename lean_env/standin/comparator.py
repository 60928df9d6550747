"""A stand-in for leanprover/comparator: a test double, not Lean, and no judge of proofs.

It speaks Comparator's process protocol (its README and Main.lean): run in a Lake project
folder as `python -m lean_env.standin.comparator CONFIG.json`, it reads the same JSON
configuration (`challenge_module`, `solution_module`, `theorem_names`, `permitted_axioms`,
`enable_nanoda`, optional `definition_names` and `json_output_path`) and the two modules'
.lean files, prints the same phase lines ("Building Challenge", "Exporting ... from
Challenge", "Building Solution", ..., "Running Lean default kernel on solution.", "Lean
default kernel accepts the solution", "Your solution is okay!"), writes the same JSON report,
and ends the way Lean's `main` does: exit 0, or "uncaught exception: MESSAGE" on stderr and
exit 1. Its first line is `CHECKED_BY`, so nothing built on it can pass for Lean's verdict.

It decides by these rules, on code tokens (`lean_env.lexer`; comments and strings ignored):
  1. comparison: for each theorem name, the tokens from the name to the first `:=` must be the
     same in both files ("Challenge and solution theorem statement do not match: 'NAME'"), and
     the solution must declare it;
  2. axioms: `sorry` or `admit` in the solution uses `sorryAx`; each `axiom X` declares X; any
     of them not in `permitted_axioms` is "Illegal axiom detected: 'X'";
  3. kernel replay: a solution that mentions `debug.skipKernelTC` fails the replay (real Lean
     would find the unchecked declaration ill-typed; this double only sees the switch).
Fault injection, for the client's tests, by a marker anywhere in the solution file
(comments included), `standin-comparator: FAULT`:
  hang       prints the first phase, starts a child in its process group (as lake and lean
             would be: the client must kill the whole group) and sleeps; both pids go to the
             file named by $STANDIN_COMPARATOR_PIDFILE when it is set;
  crash      prints the first phase and kills itself with SIGSEGV;
  garbage    prints text that is not the protocol and exits 0;
  challenge  fails while building the challenge (exit 1 before the solution phase: the
             client's cue that the infrastructure, not the candidate, failed);
  build      the solution fails to build (lake's error line, exit 1 after the solution phase).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lean_env.lexer import tokenize

CHECKED_BY = "stand-in comparator (test double, not Lean)"
PIDFILE_ENV = "STANDIN_COMPARATOR_PIDFILE"
_FAULT = re.compile(r"standin-comparator:\s*(hang|crash|garbage|challenge|build)\b")
_REQUIRED = ("challenge_module", "solution_module", "theorem_names", "permitted_axioms", "enable_nanoda")


def command() -> list[str]:
    """argv prefix that starts the stand-in from any folder (Comparator runs inside the run's
    Lake project; the package is importable there as installed, or through PYTHONPATH, which
    the child inherits); the configuration's path follows."""
    return [sys.executable, "-m", "lean_env.standin.comparator"]


class _Uncaught(Exception):
    """What the real tool's `main` would throw: printed as `uncaught exception: ...`, exit 1."""


def _statement(tokens: list[str], name: str) -> list[str] | None:
    """Tokens of `theorem|lemma NAME ... :=` up to (not including) the `:=`."""
    for i in range(len(tokens) - 1):
        if tokens[i] in ("theorem", "lemma") and tokens[i + 1] == name:
            end = next((j for j in range(i + 2, len(tokens)) if tokens[j] == ":="), len(tokens))
            return tokens[i + 1:end]
    return None


def _axioms_used(tokens: list[str]) -> list[str]:
    used = ["sorryAx"] if {"sorry", "admit"} & set(tokens) else []
    used += [tokens[i + 1] for i in range(len(tokens) - 1) if tokens[i] == "axiom"]
    return used


def _module_file(module: str) -> Path:
    return Path(*module.split(".")).with_suffix(".lean")


def _judge(config: dict[str, Any], fault: str | None) -> dict[str, Any]:
    challenge_module, solution_module = config["challenge_module"], config["solution_module"]
    names = [str(n) for n in config["theorem_names"]]
    permitted = [str(a) for a in config["permitted_axioms"]]
    exported = names + permitted
    print(f"Building {challenge_module}", flush=True)
    if fault == "challenge":
        print(f"error: {_module_file(challenge_module)}: unknown package 'Mathlib'", flush=True)
        raise _Uncaught("Child exited with 1")
    challenge = [t.text for t in tokenize(_module_file(challenge_module).read_text(encoding="utf-8"))]
    print(f"Exporting #[{', '.join(exported)}] from {challenge_module}", flush=True)
    print(f"Building {solution_module}", flush=True)
    if fault == "build":
        print(f"error: {_module_file(solution_module)}:3:2: unknown tactic", flush=True)
        raise _Uncaught("Child exited with 1")
    solution = [t.text for t in tokenize(_module_file(solution_module).read_text(encoding="utf-8"))]
    print(f"Exporting #[{', '.join(exported)}] from {solution_module}", flush=True)

    used = _axioms_used(solution)
    reports = []
    for name in names:
        expected, found = _statement(challenge, name), _statement(solution, name)
        category = message = None
        if found is None or expected is None:
            category, message = "comparison", f"'{name}' is not declared in both modules"
        elif found != expected:
            category, message = "comparison", f"Challenge and solution theorem statement do not match: '{name}'"
        elif illegal := [a for a in used if a not in permitted]:
            category, message = "axioms", f"Illegal axiom detected: '{illegal[0]}'"
        reports.append({"target": name, "targetKind": "theorem", "failureCategory": category,
                        "failureMessage": message,
                        "unpermittedAxioms": [a for a in used if a not in permitted],
                        "transitiveAxioms": used})
    result: dict[str, Any] = {"reports": reports}
    if any(r["failureCategory"] for r in reports):
        return result
    print("Running Lean default kernel on solution.", flush=True)
    if "debug.skipKernelTC" in solution:
        result.update(kernelAccepted=False, kernelFailureMessage=(
            "(kernel) declaration type mismatch (stand-in rule: the solution mentions debug.skipKernelTC)"))
        return result
    print("Lean default kernel accepts the solution", flush=True)
    result.update(kernelAccepted=True)
    return result


def _hang() -> None:
    print("Building Challenge", flush=True)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    if path := os.environ.get(PIDFILE_ENV):
        Path(path).write_text(f"{os.getpid()}\n{child.pid}\n", encoding="utf-8")
    time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    print(CHECKED_BY, flush=True)
    try:
        if not args:
            raise _Uncaught("Expected config file path as first argument.")
        try:
            config = json.loads(Path(args[0]).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise _Uncaught(str(exc)) from None
        missing = [f for f in _REQUIRED if f not in config]
        if missing:
            raise _Uncaught(f"Config: property not found: {missing[0]}")
        solution_path = _module_file(config["solution_module"])
        text = solution_path.read_text(encoding="utf-8") if solution_path.is_file() else ""
        fault = m.group(1) if (m := _FAULT.search(text)) else None
        if fault == "hang":
            _hang()
        elif fault == "crash":
            print("Building Challenge", flush=True)
            os.kill(os.getpid(), signal.SIGSEGV)
        elif fault == "garbage":
            print("\x00\x1b[2J%%% not comparator output %%%", flush=True)
            return 0
        result = _judge(config, fault)
        if config.get("json_output_path"):
            Path(config["json_output_path"]).write_text(json.dumps(result), encoding="utf-8")
        failed = [r for r in result["reports"] if r["failureCategory"]]
        if failed:
            raise _Uncaught("Some targets failed:\n" + "".join(
                f"- {r['target']}: {r['failureMessage']}\n" for r in failed))
        if result.get("kernelAccepted") is False:
            raise _Uncaught(result["kernelFailureMessage"])
    except _Uncaught as exc:
        print(f"uncaught exception: {exc}", file=sys.stderr, flush=True)
        return 1
    print("Your solution is okay!", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
