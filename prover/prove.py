"""Whole-proof sampling: the first proving method (DeepSeek-Prover-V1.5's non-CoT recipe).

For each problem the policy continues the prompt (header, informal comment, formal statement
ending in `:= by`) n times; each continuation, cut at the closing code fence, completes the
statement into a candidate that goes through the same `Verifier` as every other caller. A
problem is proved when any candidate is Accepted. Lean-feedback repair and best-first tactic
search build on these pieces (prompts, candidates, attempts) in the next stage.

Pure functions (prompt, candidate) are separate from the loop, which does the I/O. The loop
works through the problems in batches (`problems_per_batch` per engine call) and yields each
problem's `ProofResult` as soon as its samples are verified, so a caller (the CLI's run
folder, bench, RL rollouts) writes results as they arrive rather than at the end.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from lean_env.verdict import Verdict
from lean_env.verifier import VerifyRequest
from policy.config import SamplingConfig
from policy.engines import Completion, GenerationEngine
from prover.problems import Problem
from prover.runs import count_new

FENCE = "```"
PROMPT_TOO_LONG = "prompt_too_long"


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
    """All attempts at one problem; `proof` is the first accepted candidate, if any.

    `skipped` names why no sample was drawn (`prompt_too_long`: the prompt does not fit the
    model's context), with `detail` giving the numbers; such a problem has no attempts.
    """

    problem: Problem
    attempts: tuple[Attempt, ...]
    skipped: str | None = None
    detail: str = ""

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
                    {"detail": self.detail} if self.detail else {})


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


def prove_whole(problems: Sequence[Problem], engine: GenerationEngine, verifier: Verifying,
                sampling: SamplingConfig, *, template: str, problems_per_batch: int = 8,
                prompt_check: Callable[[str], str | None] | None = None,
                on_verified: Callable[[int], None] | None = None) -> Iterator[ProofResult]:
    """Sample `sampling.n` whole proofs per problem, verify every one, yield each problem's
    result (in problem order) as soon as its batch is verified.

    Problems go to the engine `problems_per_batch` at a time (it batches their samples), then
    the batch's candidates to the verifier in one batch (its pool runs them in parallel).
    `prompt_check(prompt)` returning a reason skips that problem (`ProofResult.skipped`).
    `on_verified(k)` is told of every k samples verified, for progress.
    """
    if problems_per_batch < 1:
        raise ValueError(f"problems_per_batch must be at least 1, got {problems_per_batch}")
    stop = list(dict.fromkeys([*sampling.stop, FENCE]))
    sampling = sampling.model_copy(update={"stop": stop})
    for start in range(0, len(problems), problems_per_batch):
        batch = problems[start:start + problems_per_batch]
        prompts = {p.id: build_prompt(p, template) for p in batch}
        refusals = {pid: why for pid, prompt in prompts.items() if prompt_check and (why := prompt_check(prompt))}
        runnable = [p for p in batch if p.id not in refusals]
        attempts = _sample_and_verify(runnable, [prompts[p.id] for p in runnable], engine, verifier, sampling,
                                      on_verified) if runnable else {}
        for problem in batch:
            if problem.id in refusals:
                yield ProofResult(problem, (), skipped=PROMPT_TOO_LONG, detail=refusals[problem.id])
            else:
                yield ProofResult(problem, tuple(attempts[problem.id]))


def _sample_and_verify(problems: Sequence[Problem], prompts: Sequence[str], engine: GenerationEngine,
                       verifier: Verifying, sampling: SamplingConfig,
                       on_verified: Callable[[int], None] | None) -> dict[str, list[Attempt]]:
    generations = engine.generate(prompts, sampling)
    pending: list[tuple[Problem, int, Completion, str]] = []
    for problem, generated in zip(problems, generations, strict=True):
        for index, completion in enumerate(generated.completions):
            pending.append((problem, index, completion, candidate_from_completion(problem, completion.text)))
    requests = [VerifyRequest(p.name, p.header, p.formal_statement, cand) for p, _, _, cand in pending]
    verdicts = verifier.verify_batch(requests, progress=count_new(on_verified))
    attempts: dict[str, list[Attempt]] = {p.id: [] for p in problems}
    for (problem, index, completion, candidate), verdict in zip(pending, verdicts, strict=True):
        attempts[problem.id].append(Attempt(index, completion, candidate, verdict))
    return attempts
