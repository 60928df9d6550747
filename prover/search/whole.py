"""Whole-proof sampling: the first proving method (DeepSeek-Prover-V1.5's recipe, and the CoT
prompts of DeepSeek-Prover-V2, Goedel-Prover-V2 and Kimina-Prover through `prover.prompts`).

For each problem the policy answers the template's prompt n times; each answer becomes a
candidate (the problem's statement + the model's proof, `prover.prompts.candidate_from_output`)
that goes through the same `Verifier` as every other caller. A problem is proved when any
candidate is Accepted.

The loop works through the problems in batches (`problems_per_batch` per engine call) and
yields each problem's `ProofResult`, in problem order, as soon as its batch is verified.
Generation and verification overlap (`stream=True`): batch i's candidates are verified on a
background thread (the verifier pool runs them in parallel on its own event loop) while the
engine samples batch i+1, so neither the GPU nor the Lean workers wait for the other.

Budgets (`prover.search.attempts.Budget`) bound each problem's samples, generated tokens and
wall time; with a token or wall-time limit, samples are drawn `samples_per_call` at a time and
drawing stops once a limit is spent. For CoT templates, s1's budget forcing (`BudgetForcing`)
caps the thinking phase and forces the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from lean_env.verdict import Verdict
from lean_env.verifier import VerifyRequest
from policy.config import SamplingConfig
from policy.engines import Completion, GenerationEngine, PromptResult
from prover.problems import Problem
from prover.prompts import (
    FENCE,
    WAIT,
    ChatTokenizer,
    PromptTemplate,
    build_prompt,
    candidate_from_output,
    forced_answer_suffix,
    get_template,
    last_lean_block,
)
from prover.runs import count_new
from prover.search.attempts import (
    PROMPT_TOO_LONG,
    Attempt,
    Budget,
    BudgetMeter,
    ProofResult,
    Verifying,
)


@dataclass(frozen=True)
class BudgetForcing:
    """s1's budget forcing (Muennighoff et al., 2025) for CoT templates.

    think_tokens: the thinking phase gets at most this many tokens. A completion cut there
    (finish_reason 'length') is continued once with the template's end-of-thinking marker and
    the opening ```lean4 fence appended (`prover.prompts.forced_answer_suffix`), so the model
    must write its code now; that continuation stops at the closing fence (re-added) or at
    the remaining `max_tokens`.
    waits: when the model ends its thinking (the marker) before `think_tokens`, the marker is
    suppressed and "Wait" appended, up to this many times, to make it think longer (s1's
    extension); 0 leaves early answers alone. Needs a template with a `think_end` marker.
    Every token generated in every phase counts towards the token budget; a forced sample is
    still one sample.
    """

    think_tokens: int
    waits: int = 0

    def __post_init__(self) -> None:
        if self.think_tokens < 1 or self.waits < 0:
            raise ValueError(f"BudgetForcing needs think_tokens >= 1 and waits >= 0, got {self.think_tokens}, {self.waits}")


def sampling_for(template: PromptTemplate, sampling: SamplingConfig) -> SamplingConfig:
    """Completion templates stop at the closing code fence (the continuation is the proof);
    chat templates must not (their answer holds fences of its own)."""
    if template.style != "completion":
        return sampling
    return sampling.model_copy(update={"stop": list(dict.fromkeys([*sampling.stop, FENCE]))})


@dataclass
class _Trace:
    """One completion being budget-forced: its prompt and what was generated so far."""

    prompt: str
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: str
    waits_left: int

    def extend(self, added: str, completion: Completion, closing: str = "") -> None:
        self.text += added + completion.text + closing
        self.token_ids += completion.token_ids
        self.logprobs += completion.logprobs
        self.finish_reason = completion.finish_reason


def generate(engine: GenerationEngine, prompts: Sequence[str], sampling: SamplingConfig, template: PromptTemplate,
             forcing: BudgetForcing | None = None) -> list[PromptResult]:
    """`engine.generate`, with s1 budget forcing applied when `forcing` is given (chat templates)."""
    if forcing is None or template.style != "chat":
        return engine.generate(prompts, sampling)
    marker = template.think_end
    thinking_stop = [*sampling.stop, marker] if marker else sampling.stop
    first = engine.generate(prompts, sampling.model_copy(update={
        "max_tokens": min(forcing.think_tokens, sampling.max_tokens), "stop": thinking_stop}))
    traces = [_Trace(r.prompt, c.text, c.token_ids, c.logprobs, c.finish_reason, forcing.waits)
              for r in first for c in r.completions]
    one = sampling.model_copy(update={"n": 1})

    def continue_(group: list[tuple[_Trace, str]], max_tokens: int, stop: list[str], close: bool) -> None:
        if not group:
            return
        more = engine.generate([t.prompt + t.text + added for t, added in group],
                               one.model_copy(update={"max_tokens": max(1, max_tokens), "stop": stop}))
        for (trace, added), result in zip(group, more, strict=True):
            completion = result.completions[0]
            trace.extend(added, completion, "\n" + FENCE if close and completion.finish_reason == "stop" else "")

    # "Wait": thinking ended early (the marker stopped it): suppress the marker and think on.
    for _ in range(forcing.waits if marker else 0):
        early = [t for t in traces if t.finish_reason == "stop" and t.waits_left > 0
                 and len(t.token_ids) < forcing.think_tokens and last_lean_block(t.text) is None]
        for t in early:
            t.waits_left -= 1
        continue_([(t, WAIT) for t in early], forcing.think_tokens - min((len(t.token_ids) for t in early), default=0),
                  thinking_stop, close=False)
    # Answer: thinking ended by itself (no code yet) -> the marker back, answer freely; cut at
    # the budget -> force the answer (marker + opening fence), stop at the closing fence.
    left = sampling.max_tokens - max(len(t.token_ids) for t in traces)
    free = [(t, f"{marker}\n") for t in traces if marker and t.finish_reason == "stop"
            and last_lean_block(t.text) is None]
    forced = [(t, forced_answer_suffix(template)) for t in traces if t.finish_reason == "length"]
    continue_(free, left, sampling.stop, close=False)
    continue_(forced, left, [*sampling.stop, FENCE], close=True)
    out, i = [], 0
    for r in first:
        k = len(r.completions)
        out.append(PromptResult(r.prompt, r.prompt_token_ids, tuple(
            Completion(t.text, t.token_ids, t.logprobs, t.finish_reason) for t in traces[i:i + k])))
        i += k
    return out


def verify_request(problem: Problem, candidate: str) -> VerifyRequest:
    """What the verifier is asked about one candidate of `problem`."""
    return VerifyRequest(problem.name, problem.header, problem.formal_statement, candidate)


@dataclass
class _Batch:
    """One batch of problems after generation: what goes to the verifier, and the meters."""

    problems: Sequence[Problem]
    refusals: dict[str, str]
    pending: list[tuple[Problem, int, Completion, str]]
    meters: dict[str, BudgetMeter]

    def requests(self) -> list[VerifyRequest]:
        return [verify_request(p, cand) for p, _, _, cand in self.pending]

    def results(self, verdicts: Sequence[Verdict]) -> Iterator[ProofResult]:
        attempts: dict[str, list[Attempt]] = {p.id: [] for p in self.problems}
        for (problem, index, completion, candidate), verdict in zip(self.pending, verdicts, strict=True):
            attempts[problem.id].append(Attempt(index, completion, candidate, verdict))
        for problem in self.problems:
            if problem.id in self.refusals:
                yield ProofResult(problem, (), skipped=PROMPT_TOO_LONG, detail=self.refusals[problem.id])
            else:
                yield ProofResult(problem, tuple(attempts[problem.id]), spent=self.meters[problem.id].to_json())


def prove_whole(problems: Sequence[Problem], engine: GenerationEngine, verifier: Verifying,
                sampling: SamplingConfig, *, template: str | PromptTemplate, tokenizer: ChatTokenizer | None = None,
                budget: Budget | None = None, samples_per_call: int | None = None,
                forcing: BudgetForcing | None = None, problems_per_batch: int = 8, stream: bool = True,
                prompt_check: Callable[[str], str | None] | None = None,
                on_verified: Callable[[int], None] | None = None) -> Iterator[ProofResult]:
    """Sample up to `sampling.n` whole proofs per problem (fewer if `budget` runs out), verify
    every one, yield each problem's result (in problem order) as soon as its batch is verified.

    `tokenizer` renders chat templates through the model's chat template. `samples_per_call`
    draws that many samples per problem per engine call (default: all at once, or 1 when the
    budget limits tokens or wall time, so the limit is checked between samples). `stream`
    verifies batch i while batch i+1 is generated (False: one after the other, the reference
    the overlap benchmark compares against). `prompt_check(prompt)` returning a reason skips
    that problem (`ProofResult.skipped`). `on_verified(k)` is told of every k samples verified.
    """
    if problems_per_batch < 1:
        raise ValueError(f"problems_per_batch must be at least 1, got {problems_per_batch}")
    tpl = get_template(template) if isinstance(template, str) else template
    budget = budget or Budget()
    per_call = samples_per_call or (1 if budget.tokens is not None or budget.wall_s is not None else sampling.n)
    sampling = sampling_for(tpl, sampling)

    def generate_batch(batch: Sequence[Problem]) -> _Batch:
        prompts = {p.id: build_prompt(p, tpl, tokenizer) for p in batch}
        refusals = {pid: why for pid, prompt in prompts.items() if prompt_check and (why := prompt_check(prompt))}
        meters = {p.id: BudgetMeter(budget) for p in batch}
        drawn = dict.fromkeys(prompts, 0)
        pending: list[tuple[Problem, int, Completion, str]] = []
        while True:
            want: dict[int, list[Problem]] = {}   # samples this call -> problems that want that many
            for p in batch:
                left = meters[p.id].samples_left()
                k = min(per_call, sampling.n - drawn[p.id], *([left] if left is not None else []))
                if p.id not in refusals and k > 0 and not meters[p.id].exhausted():
                    want.setdefault(k, []).append(p)
            if not want:
                break
            for k, group in want.items():
                results = generate(engine, [prompts[p.id] for p in group], sampling.model_copy(update={"n": k}), tpl, forcing)
                for problem, generated in zip(group, results, strict=True):
                    for completion in generated.completions:
                        meters[problem.id].spend(samples=1, tokens=len(completion.token_ids))
                        pending.append((problem, drawn[problem.id], completion,
                                        candidate_from_output(problem, tpl, completion.text)))
                        drawn[problem.id] += 1
        return _Batch(batch, refusals, pending, meters)

    def verify(batch: _Batch) -> list[Verdict]:
        requests = batch.requests()
        return verifier.verify_batch(requests, progress=count_new(on_verified)) if requests else []

    batches = [problems[i:i + problems_per_batch] for i in range(0, len(problems), problems_per_batch)]
    if not stream:
        for problem_batch in batches:
            generated = generate_batch(problem_batch)
            yield from generated.results(verify(generated))
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify") as pool:
        in_flight: tuple[_Batch, Future[list[Verdict]]] | None = None
        try:
            for problem_batch in batches:
                generated = generate_batch(problem_batch)   # meanwhile the previous batch is verified
                submitted = (generated, pool.submit(verify, generated))
                if in_flight is not None:
                    yield from in_flight[0].results(in_flight[1].result())
                in_flight = submitted
            if in_flight is not None:
                yield from in_flight[0].results(in_flight[1].result())
        finally:
            if in_flight is not None:
                in_flight[1].cancel()
