"""Rule tables of the stand-in REPL: what it answers, and which failures it injects.

A rule table is a JSON file:

    {
      "header_import_s": 0.0,   // seconds every importing command (no env) sleeps, like a
                                // Mathlib import; also paid by unpickleEnvFrom
      "rules": [                // first match wins; no match: the default behaviour below
        {
          "name": "hang",                 // optional; names its max_fires counter
          "substring": "theorem hang_",   // or "regex": "..."; exactly one of the two
          "on": "command",                // "command" (cmd text) or "tactic" (tactic text)
          "goal": "⊢ A",                  // tactic rules only, optional: a regex that must
                                          // also occur in the goals of the proof state the
                                          // tactic runs on (joined by blank lines), so a
                                          // table can describe a tactic tree
          "sleep_s": 0.0,                 // simulated Lean time before replying, seconds
          "grow_mb": 0,                   // allocate and keep this many MiB (RSS grows)
          "stderr_kb": 0,                 // write this many KiB to stderr first (a chatty
                                          // REPL: the client must drain the pipe)
          "fault": null,                  // "hang" | "crash" | "oom" | "garbage" |
                                          // "sorry_warning_without_sorries"
          "max_fires": null,              // the fault fires only this many times, counted
                                          // across processes in --state-dir
          "messages": [{"severity": "error", "data": "...", "pos": {...}, "endPos": {...}}],
          "sorries": [{"goal": "⊢ False"}],   // replaces the default sorry detection
          "axioms": ["propext", "sorryAx"],   // what `#print axioms` lists in this command
          "goals": ["⊢ Int"],             // tactic rules: goals after the tactic
          "proof_status": "Completed",    // tactic rules: proofStatus (default from goals)
          "error": "unknown tactic"       // tactic rules: reply {"message": "Lean error:\n..."}
        }
      ]
    }

Faults: `hang` never replies; `crash` writes half a reply and exits 1; `oom` kills itself
with SIGKILL (status -9/137, like the OOM killer); `garbage` writes a non-JSON block;
`sorry_warning_without_sorries` reports "declaration uses 'sorry'" with no `sorries` entry
(a bug some REPL builds have).

Default behaviour (no matching rule): a command containing the word `sorry` gets one sorry
(with a proof state) and the "declaration uses 'sorry'" warning, and `#print axioms` lists
`sorryAx`; anything else is accepted with no messages and the three standard axioms.
`#print axioms X` is answered at its own line. The verifier's statement check (`example :
P := @_root_.NAME`, one line) is an error at its line unless `NAME` is declared in the same
command with a signature that reads as `P` (whitespace ignored): a string comparison standing
in for Lean's type check. Rule messages are added to all of this. A
tactic closes the goal (`Completed`), unless it is `sorry` (`Incomplete: contains sorry`).

Parsing uses only the standard library: every stand-in process pays for its imports at
start-up, and the pool restarts them often in tests.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAULTS = ("hang", "crash", "oom", "garbage", "sorry_warning_without_sorries")
_RULE_KEYS = {"name", "substring", "regex", "goal", "on", "sleep_s", "grow_mb", "stderr_kb", "fault",
              "max_fires",
              "messages", "sorries", "axioms", "goals", "proof_status", "error"}
_SEVERITIES = ("trace", "info", "warning", "error")


class RuleTableError(ValueError):
    """A rule table that cannot be used; the message names the file, rule and field."""


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[str]
    on: str
    goal: re.Pattern[str] | None = None     # tactic rules: must occur in the state's goals
    sleep_s: float = 0.0
    grow_mb: int = 0
    stderr_kb: int = 0
    fault: str | None = None
    max_fires: int | None = None
    messages: tuple[dict[str, Any], ...] = ()
    sorries: tuple[dict[str, Any], ...] | None = None
    axioms: tuple[str, ...] | None = None
    goals: tuple[str, ...] = ()
    proof_status: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class RuleTable:
    header_import_s: float
    rules: tuple[Rule, ...]

    def match(self, text: str, on: str, goals: str = "") -> Rule | None:
        """First rule for this request kind whose pattern occurs in `text` and, for a rule
        with a `goal` pattern, whose goal pattern occurs in `goals` (the proof state's goals)."""
        for rule in self.rules:
            if rule.on == on and rule.pattern.search(text) and (
                    rule.goal is None or rule.goal.search(goals)):
                return rule
        return None


def _number(where: str, value: Any, *, integer: bool = False) -> Any:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < 0:
        raise RuleTableError(f"{where}: expected a non-negative {'integer' if integer else 'number'}, "
                             f"got {value!r}")
    return value


def _message(where: str, obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict) or obj.get("severity") not in _SEVERITIES or \
            not isinstance(obj.get("data"), str):
        raise RuleTableError(f"{where}: a message needs severity in {_SEVERITIES} and data text, "
                             f"got {obj!r}")
    return {"severity": obj["severity"], "pos": obj.get("pos", {"line": 1, "column": 0}),
            **({"endPos": obj["endPos"]} if "endPos" in obj else {}), "data": obj["data"]}


def _rule(where: str, index: int, obj: Any) -> Rule:
    if not isinstance(obj, dict):
        raise RuleTableError(f"{where}: a rule is a JSON object, got {obj!r}")
    unknown = set(obj) - _RULE_KEYS
    if unknown:
        raise RuleTableError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(_RULE_KEYS)}")
    if ("substring" in obj) == ("regex" in obj):
        raise RuleTableError(f"{where}: give exactly one of 'substring' and 'regex'")
    try:
        pattern = re.compile(obj["regex"]) if "regex" in obj else re.compile(re.escape(obj["substring"]))
    except (re.error, TypeError) as exc:
        raise RuleTableError(f"{where}: bad pattern: {exc}") from exc
    on = obj.get("on", "command")
    if on not in ("command", "tactic"):
        raise RuleTableError(f"{where}: 'on' must be 'command' or 'tactic', got {on!r}")
    goal = obj.get("goal")
    if goal is not None and on != "tactic":
        raise RuleTableError(f"{where}: 'goal' applies to tactic rules only (this rule is on {on!r})")
    try:
        goal_pattern = None if goal is None else re.compile(goal)
    except (re.error, TypeError) as exc:
        raise RuleTableError(f"{where}.goal: bad pattern: {exc}") from exc
    fault = obj.get("fault")
    if fault is not None and fault not in FAULTS:
        raise RuleTableError(f"{where}: unknown fault {fault!r}; known: {FAULTS}")
    max_fires = obj.get("max_fires")
    if max_fires is not None:
        _number(f"{where}.max_fires", max_fires, integer=True)
    sorries = obj.get("sorries")
    if sorries is not None and not (isinstance(sorries, list)
                                    and all(isinstance(s, dict) for s in sorries)):
        raise RuleTableError(f"{where}.sorries: expected a list of objects, got {sorries!r}")
    for key in ("axioms", "goals"):
        value = obj.get(key, [])
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise RuleTableError(f"{where}.{key}: expected a list of strings, got {value!r}")
    return Rule(
        name=str(obj.get("name", f"rule{index}")), pattern=pattern, on=on, goal=goal_pattern,
        sleep_s=float(_number(f"{where}.sleep_s", obj.get("sleep_s", 0.0))),
        grow_mb=_number(f"{where}.grow_mb", obj.get("grow_mb", 0), integer=True),
        stderr_kb=_number(f"{where}.stderr_kb", obj.get("stderr_kb", 0), integer=True),
        fault=fault, max_fires=max_fires,
        messages=tuple(_message(f"{where}.messages", m) for m in obj.get("messages", [])),
        sorries=None if sorries is None else tuple(sorries),
        axioms=None if "axioms" not in obj else tuple(obj["axioms"]),
        goals=tuple(obj.get("goals", [])), proof_status=obj.get("proof_status"),
        error=obj.get("error"),
    )


def load_rules(path: Path) -> RuleTable:
    """Read and validate a rule table; RuleTableError says what is wrong, in one line."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RuleTableError(f"cannot read rule table {path}: {exc}") from exc
    if not isinstance(data, dict) or set(data) - {"header_import_s", "rules"}:
        raise RuleTableError(f"{path}: expected an object with 'header_import_s' and 'rules'")
    rules = data.get("rules", [])
    if not isinstance(rules, list):
        raise RuleTableError(f"{path}: 'rules' must be a list")
    return RuleTable(
        header_import_s=float(_number(f"{path}: header_import_s", data.get("header_import_s", 0.0))),
        rules=tuple(_rule(f"{path}: rules[{i}]", i, r) for i, r in enumerate(rules)),
    )
