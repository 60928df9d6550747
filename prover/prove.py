"""Whole-proof sampling: the first proving method (DeepSeek-Prover-V1.5's non-CoT recipe).

For each problem the policy continues the prompt (header, informal comment, formal statement
ending in `:= by`) n times; each continuation, cut at the closing code fence, completes the
statement into a candidate that goes through the same `Verifier` as every other caller. A
problem is proved when any candidate is Accepted. Lean-feedback repair and best-first tactic
search build on these pieces (prompts, candidates, attempts) in the next stage.

Pure functions (prompt, candidate) are separate from the loop, which does the I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lean_env.verdict import Verdict
from lean_env.verifier import VerifyRequest
from policy.config import SamplingConfig
from policy.engines import Completion, GenerationEngine
from prover.problems import Problem

FENCE = "```"


def build_prompt(problem: Problem, template: str) -> str:
    """The text the policy continues.

    'deepseek-prover-v1.5': "Complete the following Lean 4 code:\\n\\n```lean4\\n" + header +
    informal_prefix + formal_statement, the field's standard non-CoT prompt (REPL_PROTOCOL.md
    section 4); 'plain': the Lean file alone, for models trained on raw Lean.
    """
    if template == "deepseek-prover-v1.5":
        return "Complete the following Lean 4 code:\n\n```lean4\n" + problem.lean_prompt()
    if template == "plain":
        return problem.lean_prompt()
    raise ValueError(f"unknown prompt template {template!r}")


def candidate_from_completion(problem: Problem, completion: str) -> str:
    """Statement + the model's continuation up to the closing fence: the code Lean checks.

    The header is not repeated: the verifier checks the candidate against the problem's
    header, so a continuation that adds imports is rejected there, not silently dropped.
    """
    cut = completion.find(FENCE)
    body = completion if cut < 0 else completion[:cut]
    return problem.formal_statement + body.rstrip() + "\n"


@dataclass(frozen=True)
class Attempt:
    """One sampled proof and Lean's verdict on it."""

    sample: int
    completion: Completion
    candidate: str
    verdict: Verdict

    def to_json(self) -> dict[str, Any]:
        return {"sample": self.sample, "candidate": self.candidate,
                "finish_reason": self.completion.finish_reason,
                "tokens": len(self.completion.token_ids), "verdict": self.verdict.to_json()}


@dataclass(frozen=True)
class ProofResult:
    """All attempts at one problem; `proof` is the first accepted candidate, if any."""

    problem: Problem
    attempts: tuple[Attempt, ...]

    @property
    def proof(self) -> str | None:
        return next((a.candidate for a in self.attempts if a.verdict.accepted), None)

    @property
    def proved(self) -> bool:
        return self.proof is not None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.problem.id, "name": self.problem.name, "origin": self.problem.origin,
                "proved": self.proved, "proof": self.proof, "header": self.problem.header,
                "attempts": [a.to_json() for a in self.attempts]}


class Verifying(Protocol):
    """What the loop needs of a verifier (`lean_env.verifier.Verifier` and the kimina client)."""

    def verify_batch(self, requests: Sequence[VerifyRequest], *,
                     progress: Callable[[int, int], None] | None = None) -> list[Verdict]: ...


def prove_whole(problems: Sequence[Problem], engine: GenerationEngine, verifier: Verifying,
                sampling: SamplingConfig, *, template: str,
                progress: Callable[[str, int, int], None] | None = None) -> list[ProofResult]:
    """Sample `sampling.n` whole proofs per problem and verify every one of them.

    All prompts go to the engine in one call (it batches), then all candidates to the
    verifier in one batch (its pool runs them in parallel). `progress(stage, done, total)`
    reports "verify" progress.
    """
    stop = list(dict.fromkeys([*sampling.stop, FENCE]))
    sampling = sampling.model_copy(update={"stop": stop})
    generations = engine.generate([build_prompt(p, template) for p in problems], sampling)
    pending: list[tuple[Problem, int, Completion, str]] = []
    for problem, generated in zip(problems, generations, strict=True):
        for index, completion in enumerate(generated.completions):
            pending.append((problem, index, completion, candidate_from_completion(problem, completion.text)))
    requests = [VerifyRequest(p.name, p.header, p.formal_statement, cand) for p, _, _, cand in pending]
    verdicts = verifier.verify_batch(
        requests, progress=(lambda done, total: progress("verify", done, total)) if progress else None)
    attempts: dict[str, list[Attempt]] = {p.id: [] for p in problems}
    for (problem, index, completion, candidate), verdict in zip(pending, verdicts, strict=True):
        attempts[problem.id].append(Attempt(index, completion, candidate, verdict))
    return [ProofResult(p, tuple(attempts[p.id])) for p in problems]
