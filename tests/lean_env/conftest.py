"""Fixtures for the REPL client, pool and verifier tests: stand-in REPLs and leak checks.

Stand-in processes are started exactly like real REPLs (`lean_env.standin.command`), with
a per-test state folder where they log every request (`events.jsonl`) and count fault
firings, so tests observe what the processes really did.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from lean_env import standin

RULES_DIR = Path(__file__).resolve().parent / "rules"
MINIF2F_HEADER = ("import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\n"
                  "open BigOperators Real Nat Topology Rat\n\n")


class Standin:
    """A rule table plus state folder; `argv` starts one stand-in REPL sharing them."""

    def __init__(self, rules_path: Path, state_dir: Path) -> None:
        self.rules_path = rules_path
        self.state_dir = state_dir
        self.argv = standin.command(rules_path, state_dir=state_dir)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        path = self.state_dir / "events.jsonl"
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return [r for r in rows if kind is None or r["event"] == kind]

    def per_pid(self, kind: str) -> Counter[int]:
        return Counter(r["pid"] for r in self.events(kind))


@pytest.fixture
def make_standin(tmp_path: Path) -> Callable[..., Standin]:
    """`make_standin("basic.json")` or `make_standin({"rules": [...]})` -> Standin."""
    counter = iter(range(1000))

    def make(rules: str | dict[str, Any]) -> Standin:
        n = next(counter)
        if isinstance(rules, str):
            path = RULES_DIR / rules
        else:
            path = tmp_path / f"rules{n}.json"
            path.write_text(json.dumps(rules), encoding="utf-8")
        return Standin(path, tmp_path / f"state{n}")

    return make


def _children() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


@pytest.fixture
def no_leaked_processes() -> Iterator[None]:
    """Fails the test if any process it started (zombies included) is still there after it."""
    before = {p.pid for p in _children()}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        leaked = [p for p in _children() if p.pid not in before]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    described = []
    for proc in leaked:
        try:
            described.append(f"{proc.pid} {proc.status()} {proc.cmdline()}")
        except psutil.Error:
            continue
    assert not described, f"processes outlived the test: {described}"
