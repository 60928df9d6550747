"""Typed requests and replies of leanprover-community/repl (../shared/lean/REPL_PROTOCOL.md).

Transport: one JSON object per request, terminated by a blank line; the reply is one JSON
object terminated by a blank line. This module turns raw reply dicts into frozen values and
is the only place that reads the REPL's JSON shapes. It does no I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lean_env.errors import ReplProtocolError
from lean_env.verdict import LeanMessage

_SEVERITIES = ("trace", "info", "warning", "error")


@dataclass(frozen=True)
class Sorry:
    """A `sorry` Lean saw; `proof_state` lets tactic mode continue from it."""

    line: int
    column: int
    goal: str
    proof_state: int | None


@dataclass(frozen=True)
class TacticInfo:
    """One entry of `"tactics"` (command option `allTactics`)."""

    tactic: str
    goals: str
    proof_state: int | None
    line: int
    column: int


@dataclass(frozen=True)
class CommandResponse:
    """Reply to a command (`{"cmd": ..., "env": ...}`) or file request."""

    env: int | None
    messages: tuple[LeanMessage, ...] = ()
    sorries: tuple[Sorry, ...] = ()
    tactics: tuple[TacticInfo, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def errors(self) -> tuple[LeanMessage, ...]:
        return tuple(m for m in self.messages if m.severity == "error")


@dataclass(frozen=True)
class TacticResponse:
    """Reply to `{"tactic": ..., "proofState": n}`.

    `proof_status` is absent in older REPL builds; `Completed` means the root proof was
    kernel-checked. `error` holds the text of a protocol-level `{"message": "Lean error:..."}`.
    """

    proof_state: int | None
    goals: tuple[str, ...] = ()
    proof_status: str | None = None
    messages: tuple[LeanMessage, ...] = ()
    sorries: tuple[Sorry, ...] = ()
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def errors(self) -> tuple[LeanMessage, ...]:
        return tuple(m for m in self.messages if m.severity == "error")


@dataclass(frozen=True)
class ErrorReply:
    """A protocol-level failure: `{"message": "Unknown environment."}`, `"Lean error:\\n..."`, ..."""

    message: str


def encode_request(payload: dict[str, Any]) -> bytes:
    """One request on the wire: compact JSON, then a blank line."""
    return (json.dumps(payload, ensure_ascii=False) + "\n\n").encode("utf-8")


def decode_reply(text: str) -> dict[str, Any]:
    """Parse one reply block; anything that is not a JSON object is a protocol error."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReplProtocolError(f"REPL wrote non-JSON output: {text[:200]!r}") from exc
    if not isinstance(obj, dict):
        raise ReplProtocolError(f"REPL reply is not a JSON object: {text[:200]!r}")
    return obj


def _pos(obj: dict[str, Any] | None) -> tuple[int, int]:
    if not obj:
        return 0, 0
    return int(obj.get("line", 0)), int(obj.get("column", 0))


def parse_message(obj: dict[str, Any]) -> LeanMessage:
    severity = obj.get("severity", "error")
    if severity not in _SEVERITIES:
        raise ReplProtocolError(f"unknown message severity {severity!r} in {obj!r}")
    line, column = _pos(obj.get("pos"))
    end = obj.get("endPos")
    end_line, end_column = _pos(end) if end else (None, None)
    return LeanMessage(severity=severity, text=str(obj.get("data", "")), line=line, column=column,
                       end_line=end_line, end_column=end_column)


def _sorries(reply: dict[str, Any]) -> tuple[Sorry, ...]:
    out = []
    for s in reply.get("sorries", []):
        line, column = _pos(s.get("pos"))
        out.append(Sorry(line=line, column=column, goal=str(s.get("goal", "")),
                         proof_state=s.get("proofState")))
    return tuple(out)


def parse_command_reply(reply: dict[str, Any]) -> CommandResponse | ErrorReply:
    if "message" in reply and "env" not in reply:
        return ErrorReply(str(reply["message"]))
    tactics = []
    for t in reply.get("tactics", []):
        line, column = _pos(t.get("pos"))
        tactics.append(TacticInfo(tactic=str(t.get("tactic", "")), goals=str(t.get("goals", "")),
                                  proof_state=t.get("proofState"), line=line, column=column))
    return CommandResponse(
        env=reply.get("env"),
        messages=tuple(parse_message(m) for m in reply.get("messages", [])),
        sorries=_sorries(reply),
        tactics=tuple(tactics),
        raw=reply,
    )


def parse_tactic_reply(reply: dict[str, Any]) -> TacticResponse:
    if "message" in reply and "proofState" not in reply:
        return TacticResponse(proof_state=None, error=str(reply["message"]), raw=reply)
    return TacticResponse(
        proof_state=reply.get("proofState"),
        goals=tuple(str(g) for g in reply.get("goals", [])),
        proof_status=reply.get("proofStatus"),
        messages=tuple(parse_message(m) for m in reply.get("messages", [])),
        sorries=_sorries(reply),
        raw=reply,
    )
