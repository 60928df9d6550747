"""Lean-feedback repair (Goedel-Prover-V2's self-correction, Kimina-Prover's error fixing).

Round 0 samples whole proofs as `prover.search.whole` does. Each failed attempt then goes back
to the model, up to `rounds` times: the conversation that produced it, the model's answer, and
a user turn with Lean's errors (`feedback_message`), in the format of Kimina-Prover's
`create_tool_message` (MoonshotAI/Kimina-Prover-Preview, kimina_prover_demo/utils.py): up to
three errors, each with its message and a snippet of the checked code around the error line,
numbered by the candidate's own lines (Lean reports lines of the candidate as checked: the
verifier keeps the candidate's line numbers, `lean_env.acceptance.lean_command`). The corrected
proof is read from the answer's last complete ```lean4 block and assembled on the problem's
statement like every candidate. Goedel-Prover-V2's own correction prompt is not in its public
repository's stored files, so this format serves every template.

A problem stops when a candidate is accepted or its `Budget` is spent; every sample of every
round counts towards the budget. Results are yielded in problem order, per batch of problems.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from lean_env.verdict import Rejected, TimedOut, Verdict
from lean_env.verifier import VerifyRequest
from policy.config import SamplingConfig
from policy.engines import Completion, GenerationEngine, PromptResult
from prover.problems import Problem
from prover.prompts import (
    ChatTokenizer,
    PromptTemplate,
    build_prompt,
    candidate_from_cot,
    candidate_from_output,
    get_template,
    render_messages,
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
from prover.search.whole import (
    BudgetForcing,
    VerifierFeed,
    generate,
    generate_iter,
    sampling_for,
    verify_request,
)

SNIPPET_BEFORE, SNIPPET_AFTER = 2, 2   # lines shown around an error (Kimina: line_num - 2 .. line_num + 2)


def feedback_message(candidate: str, verdict: Verdict, *, max_errors: int = 3) -> str:
    """Lean's verdict on `candidate` as the user turn of a repair round (Kimina's format).

    Errors past the candidate's last line (our appended `#print axioms` and statement check)
    keep their message without a snippet. A rejection without Lean messages (the static
    check) gives its reason and detail; a timeout says so.
    """
    if not candidate:
        return "# Error 1:\nError message: \nno complete ```lean4 code block in the answer\n\n"
    lines = candidate.splitlines()
    out = ""
    errors = [m for m in getattr(verdict, "messages", ()) if m.severity == "error"][:max_errors]
    for i, message in enumerate(errors, 1):
        out += f"# Error {i}:\nError message: \n{message.text.strip()}\n\n"
        if 1 <= message.line <= len(lines):
            at = message.line - 1
            snippet = "".join(f"{n + 1:03d}{' >' if n == at else '  '}| {lines[n]}\n"
                              for n in range(max(0, at - SNIPPET_BEFORE), min(len(lines), at + SNIPPET_AFTER + 1)))
            out += f"Lean 4 code snippet with error:\n```lean4\n{snippet}```\n"
    if not out and isinstance(verdict, Rejected):
        out = f"# Error 1:\nError message: \n{verdict.reason.value}: {verdict.detail}".rstrip() + "\n\n"
    if not out and isinstance(verdict, TimedOut):
        out = f"# Error 1:\nError message: \nLean did not finish within {verdict.limit_s:g} s\n\n"
    return out


def _assistant_turn(template: PromptTemplate, problem: Problem, output: str, candidate: str) -> str:
    """What the model said, as the conversation's assistant turn: its raw answer for chat
    templates; for completion templates (no answer of their own), the checked code as a block."""
    if template.style == "chat":
        return output
    return f"```lean4\n{problem.header}{candidate}```"


@dataclass
class _Lineage:
    """An attempt and the conversation that produced it (to be extended by its correction)."""

    problem: Problem
    attempt: Attempt
    messages: list[dict[str, str]]


def prove_repair(problems: Sequence[Problem], engine: GenerationEngine, verifier: Verifying,
                 sampling: SamplingConfig, *, template: str | PromptTemplate, rounds: int = 2,
                 tokenizer: ChatTokenizer | None = None, budget: Budget | None = None,
                 forcing: BudgetForcing | None = None, problems_per_batch: int = 8, max_errors: int = 3,
                 prompt_check: Callable[[str], str | None] | None = None,
                 on_verified: Callable[[int], None] | None = None,
                 on_round: Callable[[int, list[str]], None] | None = None,
                 stream: bool = True) -> Iterator[ProofResult]:
    """Round 0: `sampling.n` samples per problem; rounds 1..`rounds`: one correction per failed
    attempt of the round before (failures of our own machinery, `not_checked:infrastructure`,
    are not the model's to correct), until a candidate is accepted or the budget is spent.
    Within a round, each prompt's candidates go to the verifier as soon as the engine has them
    (`stream`, as `prove_whole` does; False: after the round's generation, all at once). Either
    way the same attempts are recorded, in the same order.

    `on_round(r, prompts)` sees each round's prompts (for tests and logs).
    """
    if rounds < 0 or problems_per_batch < 1:
        raise ValueError(f"rounds must be >= 0 and problems_per_batch >= 1, got {rounds}, {problems_per_batch}")
    tpl = get_template(template) if isinstance(template, str) else template
    budget = budget or Budget()
    first_sampling = sampling_for(tpl, sampling)
    # a correction is a chat turn: it must not stop at a code fence
    fix_sampling = sampling.model_copy(update={"n": 1})
    for start in range(0, len(problems), problems_per_batch):
        batch = problems[start:start + problems_per_batch]
        prompts = {p.id: build_prompt(p, tpl, tokenizer) for p in batch}
        refusals = {pid: why for pid, prompt in prompts.items() if prompt_check and (why := prompt_check(prompt))}
        meters = {p.id: BudgetMeter(budget) for p in batch}
        attempts: dict[str, list[Attempt]] = {p.id: [] for p in batch}
        # round 0
        todo: list[tuple[Problem, str, list[dict[str, str]], int | None]] = []
        for p in batch:
            left = meters[p.id].samples_left()
            for _ in range(min(sampling.n, left if left is not None else sampling.n)):
                if p.id not in refusals:
                    todo.append((p, prompts[p.id], tpl.messages(p), None))
        lineages = _run_round(0, todo, engine, verifier, tpl, first_sampling, fix_sampling, forcing, meters,
                              attempts, on_verified, on_round, from_prompt_template=True, stream=stream)
        for round_ in range(1, rounds + 1):
            todo = []
            for lineage in lineages:
                p, a = lineage.problem, lineage.attempt
                meter = meters[p.id]
                if any(x.verdict.accepted for x in attempts[p.id]) or meter.exhausted() or (
                        a.verdict.outcome == "not_checked:infrastructure"):
                    continue
                left = meter.samples_left()
                if left is not None and left <= sum(1 for t in todo if t[0].id == p.id):
                    continue
                messages = [*lineage.messages,
                            {"role": "assistant", "content": _assistant_turn(tpl, p, a.completion.text, a.candidate)},
                            {"role": "user", "content": feedback_message(a.candidate, a.verdict, max_errors=max_errors)}]
                todo.append((p, render_messages(messages, tokenizer), messages, a.sample))
            if not todo:
                break
            lineages = _run_round(round_, todo, engine, verifier, tpl, first_sampling, fix_sampling, forcing, meters,
                                  attempts, on_verified, on_round, from_prompt_template=False, stream=stream)
        for p in batch:
            if p.id in refusals:
                yield ProofResult(p, (), skipped=PROMPT_TOO_LONG, detail=refusals[p.id])
            else:
                yield ProofResult(p, tuple(attempts[p.id]), spent=meters[p.id].to_json())


def _run_round(round_: int, todo: Sequence[tuple[Problem, str, list[dict[str, str]], int | None]],
               engine: GenerationEngine, verifier: Verifying, tpl: PromptTemplate, first_sampling: SamplingConfig,
               fix_sampling: SamplingConfig, forcing: BudgetForcing | None, meters: dict[str, BudgetMeter],
               attempts: dict[str, list[Attempt]], on_verified: Callable[[int], None] | None,
               on_round: Callable[[int, list[str]], None] | None, *, from_prompt_template: bool,
               stream: bool = True) -> list[_Lineage]:
    """Generate one answer per entry of `todo` (round 0: the problem's samples in one call per
    problem) and verify them, each prompt's candidates sent to the verifier as soon as the
    engine has them (`stream`; else all at once after the round's generation); record the
    attempts in `todo` order; the new lineages."""
    if not todo:
        return []
    if on_round is not None:
        on_round(round_, [prompt for _, prompt, _, _ in todo])
    if from_prompt_template:   # the same prompt n times: one prompt with n samples
        groups: dict[str, list[int]] = {}
        for i, (p, _, _, _) in enumerate(todo):
            groups.setdefault(p.id, []).append(i)
        calls = list(groups.values())
        sampling = first_sampling.model_copy(update={"n": max(len(ix) for ix in calls)})
    else:
        calls = [[i] for i in range(len(todo))]
        sampling = fix_sampling
    prompts = [todo[ix[0]][1] for ix in calls]
    pending: dict[int, tuple[Completion, str]] = {}

    def candidates(call: int, result: PromptResult) -> list[int]:
        """The todo entries of one finished prompt, their completions metered and extracted."""
        entries = calls[call]
        for i, completion in zip(entries, result.completions, strict=False):
            p = todo[i][0]
            meters[p.id].spend(samples=1, tokens=len(completion.token_ids))
            candidate = (candidate_from_output(p, tpl, completion.text) if from_prompt_template
                         else candidate_from_cot(p, completion.text))
            pending[i] = (completion, candidate)
        return [i for i in entries if i in pending]

    def requests(entries: Sequence[int]) -> list[VerifyRequest]:
        return [verify_request(todo[i][0], pending[i][1]) for i in entries]

    judged: dict[int, Verdict] = {}
    if stream:
        with VerifierFeed(verifier, on_verified) as feed:
            sent: list[tuple[list[int], Future[list[Verdict]]]] = []
            for call, result in generate_iter(engine, prompts, sampling, tpl, forcing):
                entries = candidates(call, result)
                sent.append((entries, feed.submit(requests(entries))))
            for entries, future in sent:
                judged.update(zip(entries, future.result(), strict=True))
    else:
        for call, result in enumerate(generate(engine, prompts, sampling, tpl, forcing)):
            candidates(call, result)
        order = sorted(pending)
        judged = dict(zip(order, verifier.verify_batch(requests(order), progress=count_new(on_verified)), strict=True))
    lineages = []
    for i in sorted(pending):
        p, _, messages, parent = todo[i]
        completion, candidate = pending[i]
        attempt = Attempt(len(attempts[p.id]), completion, candidate, judged[i], round=round_, parent=parent)
        attempts[p.id].append(attempt)
        lineages.append(_Lineage(p, attempt, messages))
    return lineages

