"""What every proving method yields: attempts (a sample and Lean's verdict on it) and each
problem's result, with the summary counts that the CLI, bench and RL rollouts share."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lean_env.verdict import Verdict
from lean_env.verifier import VerifyRequest
from policy.engines import Completion
from prover.problems import Problem

PROMPT_TOO_LONG = "prompt_too_long"


@dataclass(frozen=True)
class Budget:
    """What one problem may spend, for every method (whole, repair, best-first); None = no limit.

    samples: completions drawn from the policy (every repair round's samples count);
    tokens: generated tokens summed over those completions (prompt tokens not counted);
    wall_s: seconds of wall time from the problem's first request. A method checks
    `BudgetMeter.exhausted()` before each new request, so a request in flight finishes and
    the spend may pass a limit by at most one request's worth.
    """

    samples: int | None = None
    tokens: int | None = None
    wall_s: float | None = None

    def __post_init__(self) -> None:
        for field, value in (("samples", self.samples), ("tokens", self.tokens), ("wall_s", self.wall_s)):
            if value is not None and not value > 0:
                raise ValueError(f"Budget.{field} must be positive or None, got {value!r}")

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "tokens": self.tokens, "wall_s": self.wall_s}


class BudgetMeter:
    """Tracks one problem's spend against a `Budget`; `clock` is injectable for tests."""

    def __init__(self, budget: Budget, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self.samples = 0
        self.tokens = 0
        self._clock = clock
        self._start = clock()

    @property
    def elapsed_s(self) -> float:
        return self._clock() - self._start

    def spend(self, samples: int = 0, tokens: int = 0) -> None:
        self.samples += samples
        self.tokens += tokens

    def samples_left(self) -> int | None:
        """Samples that may still be drawn (None: unlimited)."""
        return None if self.budget.samples is None else max(0, self.budget.samples - self.samples)

    def exhausted(self) -> str | None:
        """None while every limit has room, else which limit is spent (`samples`, `tokens`, `wall_s`)."""
        b = self.budget
        if b.samples is not None and self.samples >= b.samples:
            return "samples"
        if b.tokens is not None and self.tokens >= b.tokens:
            return "tokens"
        if b.wall_s is not None and self.elapsed_s >= b.wall_s:
            return "wall_s"
        return None

    def to_json(self) -> dict[str, Any]:
        """The spend, as reports print it."""
        return {"samples": self.samples, "tokens": self.tokens, "wall_s": round(self.elapsed_s, 3),
                "budget": self.budget.to_json(), "exhausted": self.exhausted()}


@dataclass(frozen=True)
class Attempt:
    """One sampled proof and Lean's verdict on it."""

    sample: int
    completion: Completion
    candidate: str
    verdict: Verdict
    round: int = 0              # repair: 0 for a first attempt, r for the r-th correction
    parent: int | None = None   # repair: the `sample` this attempt corrects

    def to_json(self) -> dict[str, Any]:
        return {"sample": self.sample, "candidate": self.candidate,
                "finish_reason": self.completion.finish_reason,
                "tokens": len(self.completion.token_ids), "verdict": self.verdict.to_json()} | (
                    {"round": self.round, "parent": self.parent} if self.round else {})


@dataclass(frozen=True)
class ProofResult:
    """All attempts at one problem; `proof` is the first accepted candidate, if any.

    `skipped` names why no sample was drawn (`prompt_too_long`: the prompt does not fit the
    model's context), with `detail` giving the numbers; such a problem has no attempts.
    `spent` is what the method spent on the problem against its budget.
    """

    problem: Problem
    attempts: tuple[Attempt, ...]
    skipped: str | None = None
    detail: str = ""
    spent: dict[str, Any] | None = None   # BudgetMeter.to_json(): samples, tokens, wall_s, budget

    @property
    def proof(self) -> str | None:
        return next((a.candidate for a in self.attempts if a.verdict.accepted), None)

    @property
    def proved(self) -> bool:
        return self.proof is not None

    @property
    def outcome(self) -> str:
        """`proved`, `not_proved`, or `not_checked:<why>` when no sample was drawn."""
        if self.skipped:
            return f"not_checked:{self.skipped}"
        return "proved" if self.proved else "not_proved"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.problem.id, "name": self.problem.name, "origin": self.problem.origin,
                "outcome": self.outcome, "proved": self.proved, "proof": self.proof,
                "header": self.problem.header, "attempts": [a.to_json() for a in self.attempts]} | (
                    {"detail": self.detail} if self.detail else {}) | ({"spent": self.spent} if self.spent else {})


def summarize_records(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts over `ProofResult.to_json()` records (those of this process and of a resumed run):
    problems per outcome, samples per verdict outcome, the proved ids."""
    return {
        "proved": sum(bool(r["proved"]) for r in records),
        "outcomes": dict(sorted(Counter(r["outcome"] for r in records).items())),
        "samples": dict(sorted(Counter(a["verdict"]["outcome"] for r in records for a in r["attempts"]).items())),
        "proved_names": [r["id"] for r in records if r["proved"]],
    }


def context_length(checkpoint: Path, max_model_len: int) -> int:
    """Tokens a prompt and its completion share: the engine's `max_model_len`, capped by the
    checkpoint's `max_position_embeddings` (config.json) when it names one."""
    try:
        positions = json.loads((checkpoint / "config.json").read_text(encoding="utf-8")).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        positions = None
    return min(max_model_len, positions) if isinstance(positions, int) and positions > 0 else max_model_len


def prompt_fit(count_tokens: Callable[[str], int], context: int) -> Callable[[str], str | None]:
    """A check for `prove_whole`: None when the prompt leaves room for at least one new token
    in `context`, else why not. Both engines refuse such a prompt (vLLM raises for the whole
    batch), so it becomes a per-problem outcome here instead of ending the run."""
    def check(prompt: str) -> str | None:
        tokens = count_tokens(prompt)
        if tokens >= context:
            return f"prompt of {tokens} tokens leaves no room for a proof in the context of {context} tokens"
        return None
    return check


class Verifying(Protocol):
    """What the loop needs of a verifier (`lean_env.verifier.Verifier` and the kimina client)."""

    def verify_batch(self, requests: Sequence[VerifyRequest], *,
                     progress: Callable[[int, int], None] | None = None) -> list[Verdict]: ...
