"""Whole-proof sampling: the first proving method (DeepSeek-Prover-V1.5's non-CoT recipe).

For each problem the policy continues the prompt (header, informal comment, formal statement
ending in `:= by`) n times; each continuation, cut at the closing code fence, completes the
statement into a candidate that goes through the same `Verifier` as every other caller. A
problem is proved when any candidate is Accepted.

The loop works through the problems in batches (`problems_per_batch` per engine call) and
yields each problem's `ProofResult` as soon as its samples are verified, so a caller (the
CLI's run folder, bench, RL rollouts) writes results as they arrive rather than at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from lean_env.verifier import VerifyRequest
from policy.config import SamplingConfig
from policy.engines import Completion, GenerationEngine
from prover.problems import Problem
from prover.prompts import FENCE, build_prompt, candidate_from_completion
from prover.runs import count_new
from prover.search.attempts import PROMPT_TOO_LONG, Attempt, ProofResult, Verifying


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
