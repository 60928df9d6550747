"""Whole-proof sampling: the first proving method (DeepSeek-Prover-V1.5's recipe, and the CoT
prompts of DeepSeek-Prover-V2, Goedel-Prover-V2 and Kimina-Prover through `prover.prompts`).

For each problem the policy answers the template's prompt n times; each answer becomes a
candidate (the problem's statement + the model's proof, `prover.prompts.candidate_from_output`)
that goes through the same `Verifier` as every other caller. A problem is proved when any
candidate is Accepted.

The loop works through the problems in batches (`problems_per_batch` per engine call) and
yields each problem's `ProofResult` in problem order. Generation and verification overlap
(`stream=True`): the engine hands each prompt's samples on as soon as they are done
(`GenerationEngine.generate_iter`: vLLM finishes short answers while long ones still run), and
a problem's candidates go to the verifier the moment its last sample is in, on a background
thread (the verifier pool runs them in parallel on its own event loop), while the engine
samples the rest of the batch and the next one: neither the GPU nor the Lean workers wait
for the other, also within a single batch. The engine runs at most one batch ahead of the
verifier. Results are yielded between engine calls, as soon as they and every earlier
problem's are verified. With budget forcing, a call's results come when all its forcing
rounds are done (they are batched over the prompts), so there the overlap is per engine call.

Budgets (`prover.search.attempts.Budget`) bound each problem's samples, generated tokens and
wall time; with a token or wall-time limit, samples are drawn `samples_per_call` at a time and
drawing stops once a limit is spent. For CoT templates, s1's budget forcing (`BudgetForcing`)
caps the thinking phase and forces the answer.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from lean_env.verdict import Verdict
from lean_env.verifier import VerifyRequest
from policy.config import SamplingConfig
from policy.engines import Completion, GenerationEngine, PromptResult, results_as_finished
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


def generate_iter(engine: GenerationEngine, prompts: Sequence[str], sampling: SamplingConfig, template: PromptTemplate,
                  forcing: BudgetForcing | None = None) -> Iterator[tuple[int, PromptResult]]:
    """`generate`'s results as (prompt index, result), each as soon as its prompt is done
    (`GenerationEngine.generate_iter`). Budget forcing continues the cut thoughts in rounds
    batched over all the prompts, so a forced call hands its results on when every round is
    done, in prompt order."""
    if forcing is None or template.style != "chat":
        return results_as_finished(engine, prompts, sampling)
    return enumerate(generate(engine, prompts, sampling, template, forcing))


def verify_request(problem: Problem, candidate: str) -> VerifyRequest:
    """What the verifier is asked about one candidate of `problem`."""
    return VerifyRequest(problem.name, problem.header, problem.formal_statement, candidate)


class _Draws:
    """One problem's sampling: its prompt, budget meter and the candidates drawn so far."""

    def __init__(self, problem: Problem, prompt: str, refusal: str | None, meter: BudgetMeter) -> None:
        self.problem, self.prompt, self.refusal, self.meter = problem, prompt, refusal, meter
        self.drawn: list[tuple[Completion, str]] = []   # (completion, candidate), in sample order
        self.verdicts: Future[list[Verdict]] | None = None   # set once complete

    def wanted(self, per_call: int, n: int) -> int:
        """Samples the next engine call should draw for this problem; 0 once it is complete
        (refused, `n` drawn, or its budget spent)."""
        if self.refusal is not None or self.meter.exhausted():
            return 0
        left = self.meter.samples_left()
        return max(0, min(per_call, n - len(self.drawn), *([left] if left is not None else [])))

    def add(self, completion: Completion, template: PromptTemplate) -> None:
        self.meter.spend(samples=1, tokens=len(completion.token_ids))
        self.drawn.append((completion, candidate_from_output(self.problem, template, completion.text)))

    def requests(self) -> list[VerifyRequest]:
        return [verify_request(self.problem, candidate) for _, candidate in self.drawn]

    def result(self, verdicts: Sequence[Verdict]) -> ProofResult:
        if self.refusal is not None:
            return ProofResult(self.problem, (), skipped=PROMPT_TOO_LONG, detail=self.refusal)
        attempts = tuple(Attempt(i, completion, candidate, verdict)
                         for i, ((completion, candidate), verdict) in enumerate(zip(self.drawn, verdicts, strict=True)))
        return ProofResult(self.problem, attempts, spent=self.meter.to_json())


def prove_whole(problems: Sequence[Problem], engine: GenerationEngine, verifier: Verifying,
                sampling: SamplingConfig, *, template: str | PromptTemplate, tokenizer: ChatTokenizer | None = None,
                budget: Budget | None = None, samples_per_call: int | None = None,
                forcing: BudgetForcing | None = None, problems_per_batch: int = 8, stream: bool = True,
                prompt_check: Callable[[str], str | None] | None = None,
                on_verified: Callable[[int], None] | None = None) -> Iterator[ProofResult]:
    """Sample up to `sampling.n` whole proofs per problem (fewer if `budget` runs out), verify
    every one, yield each problem's result in problem order.

    `tokenizer` renders chat templates through the model's chat template. `samples_per_call`
    draws that many samples per problem per engine call (default: all at once, or 1 when the
    budget limits tokens or wall time, so the limit is checked between samples). `stream`
    sends each problem's candidates to the verifier as soon as its samples are complete, while
    the engine samples the rest, and yields results as they are verified (False: each batch of
    `problems_per_batch` generated, then verified, no overlap: the reference the overlap
    benchmark compares against). `prompt_check(prompt)` returning a reason skips that problem
    (`ProofResult.skipped`). `on_verified(k)` is told of every k samples verified.
    """
    if problems_per_batch < 1:
        raise ValueError(f"problems_per_batch must be at least 1, got {problems_per_batch}")
    tpl = get_template(template) if isinstance(template, str) else template
    budget = budget or Budget()
    per_call = samples_per_call or (1 if budget.tokens is not None or budget.wall_s is not None else sampling.n)
    sampling = sampling_for(tpl, sampling)

    def start(batch: Sequence[Problem]) -> list[_Draws]:
        prompts = [build_prompt(p, tpl, tokenizer) for p in batch]
        return [_Draws(p, prompt, prompt_check(prompt) if prompt_check else None, BudgetMeter(budget))
                for p, prompt in zip(batch, prompts, strict=True)]

    def draw(batch: list[_Draws], complete: Callable[[_Draws], None]) -> Iterator[None]:
        """Sample the batch; `complete(d)` the moment problem d needs no more samples (once
        per problem). Yields after each engine call, when no engine call is in progress."""
        open_ = list(batch)
        while True:
            want: dict[int, list[_Draws]] = {}   # samples this call -> problems that want that many
            for d in list(open_):
                if k := d.wanted(per_call, sampling.n):
                    want.setdefault(k, []).append(d)
                else:
                    open_.remove(d)
                    complete(d)
            if not want:
                return
            for k, group in want.items():
                for i, result in generate_iter(engine, [d.prompt for d in group], sampling.model_copy(update={"n": k}),
                                               tpl, forcing):
                    d = group[i]
                    for completion in result.completions:
                        d.add(completion, tpl)
                    if not d.wanted(per_call, sampling.n):
                        open_.remove(d)
                        complete(d)
                yield

    batches = [problems[i:i + problems_per_batch] for i in range(0, len(problems), problems_per_batch)]
    if not stream:
        for problem_batch in batches:
            batch = start(problem_batch)
            for _ in draw(batch, complete=lambda d: None):
                pass
            requests = [r for d in batch for r in d.requests()]
            verdicts = verifier.verify_batch(requests, progress=count_new(on_verified)) if requests else []
            for d in batch:
                yield d.result(verdicts[:len(d.drawn)])
                verdicts = verdicts[len(d.drawn):]
        return
    with VerifierFeed(verifier, on_verified) as feed:
        order: deque[_Draws] = deque()   # problems started and not yet yielded, in problem order

        def complete(d: _Draws) -> None:
            d.verdicts = feed.submit(d.requests())

        def finished(quiet: bool = False) -> Iterator[ProofResult]:
            """The results verified so far that are next in problem order (not waiting); a
            verifier error is raised here (`quiet`: stops there instead)."""
            while order and (verdicts := order[0].verdicts) is not None and verdicts.done():
                if verdicts.cancelled() or (quiet and verdicts.exception() is not None):
                    return
                yield order.popleft().result(verdicts.result())

        def oldest() -> ProofResult:
            d = order.popleft()
            assert d.verdicts is not None, f"{d.problem.id} was never sent to the verifier"
            return d.result(d.verdicts.result())   # waits for its verdicts

        try:
            previous: list[_Draws] = []
            for problem_batch in batches:
                # At most one batch ahead of the verifier: batch i+2 starts once batch i is
                # yielded. The engine waits only when the verifier is the slower side (which then
                # sets the pace anyway), and results, memory and what a Ctrl-C can lose stay bounded.
                while len(order) > len(previous):
                    yield oldest()
                batch = previous = start(problem_batch)
                order.extend(batch)
                for _ in draw(batch, complete):
                    yield from finished()   # between engine calls: the caller may take its time
        except GeneratorExit:
            raise
        except BaseException:
            # Ctrl-C or an engine error: what is verified is not lost. The check in progress
            # finishes (it cannot be cut short), what waits is dropped, and the results done
            # by then go to the caller before the error does.
            feed.stop()
            yield from finished(quiet=True)
            raise
        while order:
            yield oldest()


class VerifierFeed:
    """Sends candidates to the verifier from a background thread as they come, so that neither
    the engine nor the Lean workers wait for the other. What is submitted while a check runs
    goes into the next `verify_batch` call, all together: the verifier gets as much to run in
    parallel as there is, from one thread, one call at a time (as `prove_whole` always called
    it, so any `Verifying` backend works). Use it in a `with` block: leaving it drops what was
    not started and waits for the call in progress."""

    def __init__(self, verifier: Verifying, on_verified: Callable[[int], None] | None) -> None:
        self._verifier, self._on_verified = verifier, on_verified
        self._queue: queue.SimpleQueue[tuple[list[VerifyRequest], Future[list[Verdict]]] | None] = queue.SimpleQueue()
        self._submitted: list[Future[list[Verdict]]] = []
        self._thread = threading.Thread(target=self._run, name="verify", daemon=True)

    def __enter__(self) -> VerifierFeed:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Drop what waits (never checked), wait for the call in progress, end the thread."""
        for future in self._submitted:
            future.cancel()   # only those the thread has not taken
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def submit(self, requests: list[VerifyRequest]) -> Future[list[Verdict]]:
        """The verdicts on `requests`, in order, once the verifier has them."""
        future: Future[list[Verdict]] = Future()
        if not requests:
            future.set_result([])
            return future
        self._submitted = [f for f in self._submitted if not f.done()]
        self._submitted.append(future)
        self._queue.put((requests, future))
        return future

    def _run(self) -> None:
        stopping = False
        while not stopping:
            taken = [self._queue.get()]   # wait for work, then take everything waiting
            while not self._queue.empty():
                taken.append(self._queue.get())
            stopping = None in taken
            live = [item for item in taken if item is not None and item[1].set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                verdicts = self._verifier.verify_batch([r for requests, _ in live for r in requests],
                                                       progress=count_new(self._on_verified))
            except BaseException as exc:   # the caller gets it from the futures; a dead thread would hang it
                for _, future in live:
                    future.set_exception(exc)
                continue
            for requests, future in live:
                future.set_result(verdicts[:len(requests)])
                verdicts = verdicts[len(requests):]
