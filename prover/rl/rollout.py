"""Rollouts: problems in, judged `Episode`s out, of two kinds.

Whole-proof (`prover prove`'s method, DeepSeek-Prover-V1.5's RL setting): the policy answers
the template's prompt `n` times; each answer becomes a candidate through the same pieces as
`prover.search.whole` (`build_prompt`, `sampling_for`, `candidate_from_output`) and is checked
once by the `Verifier`. Split in two halves so that the fleet can run them on different
actors: `sample_whole` (engine side) and `judge_whole` (verifier side).

Tactic-by-tactic (multi-turn, as LeanDojo frames proving: the policy proposes a tactic, the
environment answers with the new goals or Lean's error, until the proof is finished or the
budget is spent): `tactic_episodes`. The dialogue is kept as token ids, never re-tokenised:

    prompt_ids      = ids(template.prompt(goals_0))                 (with the tokenizer's bos)
    turn t          : the engine is fed  prompt_ids + completion_ids[:so far]  as token ids,
                      samples tactic tokens a_t              (loss_mask True, their logprobs)
    observation     : ids(observation_text(result))          (loss_mask False, logprob 0.0)
                      appended after a_t, without special tokens

so `prompt_ids + completion_ids` is, at every turn, exactly the sequence the engine continued
from, and the learner scores exactly the tokens the engine sampled. The observation after a
tactic that worked is the template's prompt of the new goals; after an error, Lean's message
(`[ERROR]...`) and the same goals again (the state is unchanged, the policy tries again).

Rewards: from the final verdict only. A finished tactic proof is checked once more through the
`Verifier` when one is given (final judge included, as `prove_best_first` does); an unfinished
one is `Rejected(INCOMPLETE)`; a session whose Lean process failed is `NotChecked`
(infrastructure), whose reward is None: such episodes are excluded, not scored 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from lean_env.errors import LeanEnvError
from lean_env.tactic import (
    ProofFinished,
    StatementError,
    TacticError,
    TacticResult,
    TacticSession,
    TacticState,
)
from lean_env.verdict import NotChecked, Rejected, RejectReason, Verdict
from lean_env.verifier import VerifyRequest
from policy.config import SamplingConfig
from policy.engines import Completion, GenerationEngine, PromptResult, results_as_finished
from prover.problems import Problem
from prover.prompts import (
    ChatTokenizer,
    PromptTemplate,
    build_prompt,
    candidate_from_output,
    get_template,
)
from prover.rl.episodes import Episode
from prover.rl.rewards import RewardFn
from prover.search.attempts import Verifying
from prover.search.best_first import TACTIC_TEMPLATES, TacticTemplate
from prover.search.whole import sampling_for, verify_request


class _Tokenizer(Protocol):
    def __call__(self, text: str, *, add_special_tokens: bool = ...) -> Any: ...


# -- whole-proof episodes --------------------------------------------------------------------------


@dataclass(frozen=True)
class WholeSample:
    """One sampled whole proof before judgement: what the engine saw and produced."""

    problem: Problem
    group: int
    prompt_ids: tuple[int, ...]
    completion: Completion
    candidate: str


def sample_whole(problems: Sequence[Problem], engine: GenerationEngine, sampling: SamplingConfig, *,
                 template: str | PromptTemplate, tokenizer: ChatTokenizer | None = None,
                 first_group: int = 0) -> list[WholeSample]:
    """`sampling.n` whole proofs per problem in one engine call; problem i is group
    `first_group + i`."""
    tpl = get_template(template) if isinstance(template, str) else template
    results = engine.generate([build_prompt(p, tpl, tokenizer) for p in problems], sampling_for(tpl, sampling))
    return [sample for i, (problem, result) in enumerate(zip(problems, results, strict=True))
            for sample in _samples(problem, first_group + i, result, tpl)]


def _samples(problem: Problem, group: int, result: PromptResult, tpl: PromptTemplate) -> list[WholeSample]:
    return [WholeSample(problem, group, result.prompt_token_ids, completion,
                        candidate_from_output(problem, tpl, completion.text)) for completion in result.completions]


def sample_whole_iter(problems: Sequence[Problem], engine: GenerationEngine, sampling: SamplingConfig, *,
                      template: str | PromptTemplate, tokenizer: ChatTokenizer | None = None,
                      first_group: int = 0) -> Iterator[list[WholeSample]]:
    """`sample_whole`'s samples, one problem's at a time, as soon as the engine has finished
    them (`results_as_finished`): the same samples (same seeds), in the order problems finish."""
    tpl = get_template(template) if isinstance(template, str) else template
    prompts = [build_prompt(p, tpl, tokenizer) for p in problems]
    for i, result in results_as_finished(engine, prompts, sampling_for(tpl, sampling)):
        yield _samples(problems[i], first_group + i, result, tpl)


def judge_whole(samples: Sequence[WholeSample], verifier: Verifying, *, score: RewardFn,
                policy_version: int = 0) -> list[Episode | None]:
    """Verify every sample once and make its episode, scored by `score`
    (`prover.rl.rewards.lean_reward`); None where the reward is None (not checked: excluded
    from the loss)."""
    requests = whole_requests(samples)
    verdicts = verifier.verify_batch(requests) if requests else []
    return scored(samples, verdicts, score=score, policy_version=policy_version)


def whole_requests(samples: Sequence[WholeSample]) -> list[VerifyRequest]:
    """What the verifier is asked for each sample: its candidate against its problem."""
    return [verify_request(s.problem, s.candidate) for s in samples]


def scored(samples: Sequence[WholeSample], verdicts: Sequence[Verdict], *, score: RewardFn,
           policy_version: int = 0) -> list[Episode | None]:
    """Each sample's episode from its verdict (None where `score` gives None: excluded)."""
    return [_episode(s.problem.id, s.group, s.prompt_ids, s.completion.token_ids, (True,) * len(s.completion.token_ids),
                     s.completion.logprobs, verdict, s.completion.finish_reason == "length", policy_version, score)
            for s, verdict in zip(samples, verdicts, strict=True)]


def whole_proof_episodes(problems: Sequence[Problem], engine: GenerationEngine, verifier: Verifying,
                         sampling: SamplingConfig, *, template: str | PromptTemplate, score: RewardFn,
                         tokenizer: ChatTokenizer | None = None, policy_version: int = 0) -> list[Episode]:
    """`sample_whole` then `judge_whole`, in one process; excluded episodes left out."""
    samples = sample_whole(problems, engine, sampling, template=template, tokenizer=tokenizer)
    return [e for e in judge_whole(samples, verifier, score=score, policy_version=policy_version) if e is not None]


def _episode(problem_id: str, group: int, prompt_ids: Sequence[int], completion_ids: Sequence[int],
             loss_mask: Sequence[bool], logprobs: Sequence[float], verdict: Verdict, truncated: bool,
             policy_version: int, score: RewardFn) -> Episode | None:
    value = score(verdict, sum(loss_mask))
    if value is None:
        return None
    return Episode(problem_id, group, tuple(prompt_ids), tuple(completion_ids), tuple(loss_mask),
                   tuple(float(x) for x in logprobs), value, verdict.outcome, truncated, policy_version)


# -- tactic episodes -------------------------------------------------------------------------------


SessionFactory = Callable[[Problem], contextlib.AbstractContextManager[tuple[Any, TacticState]]]

ERROR_MARK = "[ERROR]"
ERROR_CHARS = 400   # an error observation keeps Lean's first line, at most this many characters


def repl_sessions(verifier_or_pool: Any) -> SessionFactory:
    """Sessions on a REPL pool (`lean_env.tactic.TacticSession`), given the pool or a
    `Verifier` over one. (LeanDojo: pass `lambda p: DojoTacticSession(...)` instead.)"""
    pool = getattr(verifier_or_pool, "pool", verifier_or_pool)
    if not hasattr(pool, "lease"):
        raise ValueError(f"tactic episodes need a REPL pool or a Verifier over one, got {type(verifier_or_pool).__name__}")
    return lambda p: TacticSession(pool, p.name, p.header, p.formal_statement)


def observation_text(template: TacticTemplate, result: TacticResult, goals: Sequence[str]) -> str:
    """What the environment says after a tactic: the prompt of the new goals, or Lean's error
    and the prompt of the unchanged `goals` (nothing after a finished proof)."""
    if isinstance(result, TacticState):
        return template.prompt(result.goals)
    if isinstance(result, TacticError):
        first = (result.detail.strip().splitlines() or [""])[0][:ERROR_CHARS]
        return f"{ERROR_MARK}{first}\n{template.prompt(goals)}"
    return ""


@dataclass
class _Trajectory:
    """One tactic dialogue in progress (one future episode)."""

    problem: Problem
    group: int
    session: Any
    state: TacticState
    prompt_ids: tuple[int, ...]
    completion_ids: list[int] = field(default_factory=list)
    loss_mask: list[bool] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    turns: int = 0
    truncated: bool = False
    finished: ProofFinished | None = None
    verdict: Verdict | None = None

    def fed(self) -> tuple[int, ...]:
        return self.prompt_ids + tuple(self.completion_ids)

    def add(self, ids: Sequence[int], logprobs: Sequence[float] | None) -> None:
        self.completion_ids += ids
        self.loss_mask += [logprobs is not None] * len(ids)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)


@dataclass(frozen=True)
class TacticBudget:
    """Per episode: at most `turns` tactic calls, and the dialogue must fit `max_tokens`
    (prompt + completion: the engine's context)."""

    turns: int = 8
    max_tokens: int = 2048

    def __post_init__(self) -> None:
        if self.turns < 1 or self.max_tokens < 2:
            raise ValueError(f"TacticBudget needs turns >= 1 and max_tokens >= 2, got {self.turns}, {self.max_tokens}")


def tactic_episodes(problems: Sequence[Problem], engine: GenerationEngine, sessions: SessionFactory,
                    tokenizer: _Tokenizer, sampling: SamplingConfig, *, score: RewardFn,
                    template: str | TacticTemplate = "gptf",
                    budget: TacticBudget | None = None, verifier: Verifying | None = None,
                    concurrency: int | None = None, policy_version: int = 0,
                    on_feed: Callable[[tuple[int, ...]], None] | None = None) -> list[Episode]:
    """`sampling.n` tactic dialogues per problem (group i = problem i), advanced together:
    each turn, one engine call for every open dialogue, fed as token ids; dialogues with equal
    token prefixes share one prompt (n = how many), so equal prefixes are never sampled with
    the same seed. `sampling.max_tokens` bounds one tactic. One session per problem (the
    group's dialogues branch from its states), `concurrency` problems at a time (default: the
    verifier pool's workers, one REPL process per session; else all). `on_feed(ids)` sees
    every sequence fed to the engine (tests). Excluded episodes (reward None) are left out."""
    tpl = TACTIC_TEMPLATES[template] if isinstance(template, str) else template
    budget = budget or TacticBudget()
    sampling = sampling.model_copy(update={"stop": list(dict.fromkeys([*sampling.stop, *tpl.stop]))})
    at_once = concurrency or getattr(getattr(getattr(verifier, "pool", None), "config", None), "workers", None) \
        or len(problems) or 1
    indexed = list(enumerate(problems))
    trajectories: list[_Trajectory] = []
    for i in range(0, len(indexed), at_once):
        trajectories += _dialogues(indexed[i:i + at_once], engine, sessions, tokenizer, sampling, tpl, budget, on_feed)
    _final_check([t for t in trajectories if t.finished is not None], verifier)
    episodes = [_episode(t.problem.id, t.group, t.prompt_ids, t.completion_ids, t.loss_mask, t.logprobs,
                         t.verdict, t.truncated, policy_version, score) for t in trajectories if t.verdict is not None]
    return [e for e in episodes if e is not None]


def _dialogues(indexed: Sequence[tuple[int, Problem]], engine: GenerationEngine, sessions: SessionFactory,
               tokenizer: _Tokenizer, sampling: SamplingConfig, tpl: TacticTemplate, budget: TacticBudget,
               on_feed: Callable[[tuple[int, ...]], None] | None) -> list[_Trajectory]:
    """The dialogues of these (group, problem)s, each session open until all of them end."""
    trajectories: list[_Trajectory] = []
    with contextlib.ExitStack() as stack:
        for group, problem in indexed:
            try:
                session, root = stack.enter_context(sessions(problem))
            except (StatementError, LeanEnvError):   # no dialogue possible: nothing to learn from
                continue
            prompt_ids = tuple(tokenizer(tpl.prompt(root.goals))["input_ids"])
            trajectories += [_Trajectory(problem, group, session, root, prompt_ids) for _ in range(sampling.n)]
        for turn in range(budget.turns):
            active = [t for t in trajectories if t.verdict is None]
            if not active:
                break
            for t in active:
                if len(t.fed()) >= budget.max_tokens:
                    t.truncated = True
                    _give_up(t, f"context of {budget.max_tokens} tokens spent after {t.turns} tactics")
            by_prefix: dict[tuple[int, ...], list[_Trajectory]] = {}
            for t in active:
                if t.verdict is None:
                    by_prefix.setdefault(t.fed(), []).append(t)
            calls: dict[int, list[tuple[int, ...]]] = {}   # n -> prefixes that want n samples
            for ids, group_of in by_prefix.items():
                if on_feed is not None:
                    on_feed(ids)
                calls.setdefault(len(group_of), []).append(ids)
            for n, prefixes in calls.items():
                seed = None if sampling.seed is None else sampling.seed + turn
                room = min(budget.max_tokens - len(ids) for ids in prefixes)
                turn_sampling = sampling.model_copy(update={"n": n, "seed": seed,
                                                            "max_tokens": max(1, min(sampling.max_tokens, room))})
                results = engine.generate(prefixes, turn_sampling)
                for ids, result in zip(prefixes, results, strict=True):
                    for t, completion in zip(by_prefix[ids], result.completions, strict=True):
                        _step(t, completion, tpl, tokenizer)
        for t in trajectories:
            if t.verdict is None and t.finished is None:
                _give_up(t, f"no proof after {t.turns} tactics")
    return trajectories


def _step(t: _Trajectory, completion: Completion, tpl: TacticTemplate, tokenizer: _Tokenizer) -> None:
    """Record the sampled tactic, run it, append the environment's answer."""
    t.add(completion.token_ids, completion.logprobs)
    t.turns += 1
    if completion.finish_reason == "length" and tpl.stop:   # cut at max_tokens: run as it is, marked
        t.truncated = True
    try:
        result = t.session.run(t.state, completion.text.strip())
    except LeanEnvError as exc:
        t.verdict = NotChecked(checked_by=getattr(t.session, "checked_by", ""), time_s=0.0,
                               cause="infrastructure", detail=f"{type(exc).__name__}: {exc}")
        return
    if isinstance(result, ProofFinished):
        t.finished, t.verdict = result, result.verdict
        return
    observation = observation_text(tpl, result, t.state.goals)
    if isinstance(result, TacticState):
        t.state = result
    t.add(tuple(tokenizer(observation, add_special_tokens=False)["input_ids"]), None)


def _give_up(t: _Trajectory, why: str) -> None:
    t.verdict = Rejected(checked_by=getattr(t.session, "checked_by", ""), time_s=0.0,
                         reason=RejectReason.INCOMPLETE, detail=f"{why}; goals left: {len(t.state.goals)}")


def _final_check(done: Sequence[_Trajectory], verifier: Verifying | None) -> None:
    """Finished proofs through the Verifier (every rule and the final judge), as best-first does."""
    if verifier is None or not done:
        return
    verdicts = verifier.verify_batch([VerifyRequest(t.problem.name, t.problem.header, t.problem.formal_statement,
                                                    t.finished.proof) for t in done if t.finished is not None])
    for t, verdict in zip(done, verdicts, strict=True):
        t.verdict = verdict
