"""Verdicts: what the verifier says about one candidate proof, as frozen values.

Four outcomes (LeanDojo's result-type style):
  Accepted   every acceptance rule of REPL_PROTOCOL.md section 3 held;
  Rejected   a rule failed: `reason` says which, `detail` says how, `messages` are Lean's;
  TimedOut   no answer within the wall-clock limit (the process was killed);
  NotChecked Lean was never asked for a verdict: no Lean code in the candidate, or our
             infrastructure failed after its retries (`cause` tells which).

Every verdict names the backend that produced it (`checked_by`) and the layers that judged it
(`layers`: "static" = our checks that read the source without Lean, "repl" = Lean through a
REPL or kimina-lean-server, "lean_dojo" = Lean through LeanDojo's tactic interface,
"comparator" = leanprover/comparator as the final judge). A verdict
produced by the stand-in REPL is a test double's answer, never Lean's, and says so in
`checked_by`. `outcome` is the one string that names a verdict in reports and tables:
`accepted`, `rejected:<reason>`, `timed_out`, `not_checked:<cause>`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class RejectReason(StrEnum):
    """Why a candidate was rejected. Stable strings: they appear in JSON reports."""

    FORBIDDEN = "forbidden"                    # a known cheat found before Lean ran (sorry, native_decide, ...)
    HEADER_MISMATCH = "header_mismatch"        # candidate brings its own imports/header
    THEOREM_MISSING = "theorem_missing"        # the problem's theorem is not declared in the candidate
    STATEMENT_MISMATCH = "statement_mismatch"  # declared, but with a different statement
    LEAN_ERROR = "lean_error"                  # Lean reported an error message
    SORRY = "sorry"                            # Lean reported a sorry (or the sorry warning)
    AXIOMS = "axioms"                          # `#print axioms` lists more than the standard three
    INCOMPLETE = "incomplete"                  # tactic mode: proofStatus other than Completed
    FINAL_JUDGE = "final_judge"                # Comparator (type, axioms, kernel replay) said no


@dataclass(frozen=True)
class LeanMessage:
    """One message from Lean, positions 1-based lines and 0-based columns as the REPL sends them."""

    severity: Literal["trace", "info", "warning", "error"]
    text: str
    line: int = 0
    column: int = 0
    end_line: int | None = None
    end_column: int | None = None

    def __str__(self) -> str:
        return f"{self.line}:{self.column}: {self.severity}: {self.text}"


@dataclass(frozen=True)
class _VerdictBase:
    checked_by: str   # e.g. "lean 4.19.0 (repl v4.19.0)" or "stand-in REPL (test double, not Lean)"
    time_s: float     # wall-clock seconds spent on this candidate, queueing excluded
    layers: tuple[str, ...] = ()   # which layers judged it, in order: "static", "repl", "comparator"

    @property
    def accepted(self) -> bool:
        return isinstance(self, Accepted)

    @property
    def kind(self) -> str:
        return type(self).__name__.lower()

    @property
    def outcome(self) -> str:
        """`accepted`, `rejected:<reason>`, `timed_out` or `not_checked:<cause>`."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"verdict": self.kind, "outcome": self.outcome}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "messages":
                value = [dataclasses.asdict(m) for m in value]
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out


@dataclass(frozen=True)
class Accepted(_VerdictBase):
    axioms: tuple[str, ...] = ()
    messages: tuple[LeanMessage, ...] = ()   # warnings/infos that did not block acceptance

    @property
    def outcome(self) -> str:
        return "accepted"


@dataclass(frozen=True)
class Rejected(_VerdictBase):
    reason: RejectReason = RejectReason.LEAN_ERROR
    detail: str = ""
    messages: tuple[LeanMessage, ...] = field(default_factory=tuple)

    @property
    def outcome(self) -> str:
        return f"rejected:{self.reason.value}"


@dataclass(frozen=True)
class TimedOut(_VerdictBase):
    limit_s: float = 0.0

    @property
    def outcome(self) -> str:
        return "timed_out"


@dataclass(frozen=True)
class NotChecked(_VerdictBase):
    cause: Literal["no_code", "infrastructure"] = "no_code"
    detail: str = ""

    @property
    def outcome(self) -> str:
        return f"not_checked:{self.cause}"


Verdict = Accepted | Rejected | TimedOut | NotChecked
