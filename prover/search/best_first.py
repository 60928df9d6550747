"""Best-first tactic search: the policy proposes tactics for one goal state at a time and a
priority queue of Lean tactic states decides which state to expand next (ReProver, Yang et al.
2023, arXiv 2306.15626; BFS-Prover, Xin et al. 2025, arXiv 2502.03438).

    for result in prove_best_first(problems, engine, verifier, SamplingConfig(n=8),
                                   budget=SearchBudget(expansions=100)):
        print(result.problem.name, result.outcome, result.stats.expansions)

One search per problem, on a `lean_env` tactic session (the REPL pool's `TacticSession`, or
LeanDojo's `DojoTacticSession` on a traced repo's theorem of the problem's name, by
`SearchConfig.backend`: the run config's [search] section, prover/config.py):

1. The frontier starts with the theorem's first state. Each expansion pops the state with the
   highest score, asks the engine for `sampling.n` tactics for it (prompt: `TACTIC_TEMPLATES`)
   and runs each distinct tactic on it, best log-probability first.
2. A tactic that errs is dropped. A new state is scored and pushed, unless a state with the same
   goals was seen before in this search (on the frontier, expanded, or an ancestor): then it is
   merged into that one (first path wins) and counted in `SearchStats.merged`.
3. A tactic that leaves no goals returns `ProofFinished` only after the whole assembled theorem
   passed the session's full acceptance check; with a `Verifier` the proof is then checked once
   more through it (every acceptance rule and the final judge), and only an accepted verdict
   makes the problem proved.

Score of a state reached by tactics t_1..t_L from the root (BFS-Prover's length-normalised
cumulative log-probability):

    score = (sum_{i=1..L} log p(t_i | s_{i-1})) / L ** alpha        (the root: 0)

where log p(t | s) is the sum of the per-token log-probabilities the engine reports for the
sampled tactic (nats; end-of-sequence token included when sampled) and alpha is
`SearchConfig.length_alpha`: 0 is ReProver's plain cumulative log-probability, which
favours shallow states; 1 is the mean log-probability per tactic; BFS-Prover uses the
normalisation to reach deeper proofs. Ties go to the state pushed first.

Budgets (`SearchBudget`, per problem) on expansions, tactic calls and wall time, checked before
every expansion and every tactic call; wall time can overrun by at most one engine call and one
tactic call, which are not interrupted.

Many problems are searched at once (`SearchConfig.concurrency`, default the pool's workers:
each session holds one REPL process). Every step pops the best state of each active search and
sends all their prompts to the engine in one `generate` call, so proposals batch across
problems; the tactics of different searches then run in parallel threads (one session, one
process, one thread at a time). Each problem's result is yielded as soon as its search ends.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from lean_env.acceptance import statement_text
from lean_env.backends.dojo import DojoTacticSession
from lean_env.errors import LeanEnvError
from lean_env.tactic import (
    ProofFinished,
    StatementError,
    TacticError,
    TacticResult,
    TacticSession,
    TacticState,
)
from lean_env.verdict import Verdict
from lean_env.verifier import VerifyRequest
from policy.config import SamplingConfig
from policy.engines import Completion, GenerationEngine
from prover.config import SearchConfig
from prover.errors import UserError
from prover.problems import Problem
from prover.search.attempts import Attempt, ProofResult

# -- prompts ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TacticTemplate:
    """A state -> tactic prompt: `text` with `{state}` (the goals, as `state_text` writes them),
    the stop strings that end a tactic, and where the format comes from."""

    name: str
    text: str
    stop: tuple[str, ...]
    source: str

    def prompt(self, goals: Sequence[str]) -> str:
        return self.text.replace("{state}", state_text(goals))


TACTIC_TEMPLATES: dict[str, TacticTemplate] = {t.name: t for t in (
    # The model card of ByteDance-Seed/BFS-Prover-V1-7B (huggingface.co): input "{state}:::",
    # where `:::` tells the model to generate a tactic for the state; the tactic ends at EOS.
    TacticTemplate("bfs-prover", "{state}:::", (),
                   "BFS-Prover-V1-7B model card (huggingface.co/ByteDance-Seed/BFS-Prover-V1-7B)"),
    # GPT-f / PACT's "[GOAL]...[PROOFSTEP]" format (Han et al. 2021, arXiv 2102.06203), as
    # llmstep sends it to its models (github.com/wellecks/llmstep: '[GOAL]%s[PROOFSTEP]%s',
    # with an empty tactic prefix here). One tactic per line.
    TacticTemplate("gptf", "[GOAL]{state}[PROOFSTEP]", ("\n",),
                   "GPT-f/PACT (arXiv 2102.06203) via llmstep (github.com/wellecks/llmstep)"),
)}


def state_text(goals: Sequence[str]) -> str:
    """A tactic state as Lean and LeanDojo print it: the goals separated by blank lines."""
    return "\n\n".join(goals)


# -- scores ----------------------------------------------------------------------------------------


def tactic_logprob(completion: Completion) -> float:
    """log p(tactic | state): the sum of the sampled tokens' log-probabilities, nats."""
    return float(sum(completion.logprobs))


def path_score(cumulative_logprob: float, depth: int, alpha: float) -> float:
    """BFS-Prover's length-normalised score: `cumulative_logprob / depth ** alpha` (0 at the root)."""
    if depth == 0:
        return 0.0
    return cumulative_logprob / depth ** alpha


# -- LeanDojo's theorems ---------------------------------------------------------------------------
# How the search runs is `SearchConfig`, the [search] section of the run config (prover/config.py):
# backend, template, length_alpha, concurrency, and LeanDojo's repo, commit, file and timeout.


def dojo_theorems(config: SearchConfig) -> Callable[[Problem], Any]:
    """problem -> `lean_dojo.Theorem(LeanGitRepo(config.dojo_url, config.dojo_commit),
    config.dojo_file_path, problem.name)` (`{name}` in the file path is the problem's name).
    The repo is made once, at the first theorem: LeanDojo's `LeanGitRepo` asks the git host
    about the commit. A repo LeanDojo cannot open is a `UserError` naming the config keys."""
    if config.dojo_url is None or config.dojo_commit is None or config.dojo_file_path is None:
        raise ValueError("dojo_theorems needs search.dojo_url, search.dojo_commit and search.dojo_file_path")
    url, commit, file_path = config.dojo_url, config.dojo_commit, config.dojo_file_path
    repos: list[Any] = []

    def theorem(problem: Problem) -> Any:
        import lean_dojo

        if not repos:
            try:
                repos.append(lean_dojo.LeanGitRepo(url, commit))
            except Exception as exc:   # LeanDojo's ValueError, or GitHub's / git's own errors
                raise UserError(f"search.dojo_url = {url!r}, search.dojo_commit = {commit!r}: LeanDojo cannot "
                                f"open the repo ({type(exc).__name__}: {exc})") from None
        return lean_dojo.Theorem(repos[0], file_path.replace("{name}", problem.name), problem.name)

    return theorem


@dataclass(frozen=True)
class SearchBudget:
    """Per-problem limits of one search; None means no limit on that count."""

    expansions: int | None = 100      # states popped from the frontier and sent to the engine
    tactic_calls: int | None = None   # TacticSession.run calls (errors included)
    wall_s: float | None = 600.0      # seconds from the start of the problem's session

    def __post_init__(self) -> None:
        for name in ("expansions", "tactic_calls", "wall_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"SearchBudget.{name} must be positive or None, got {value!r}")


# -- results ---------------------------------------------------------------------------------------


@dataclass
class SearchStats:
    """What one search did. `stopped`: proved, exhausted (frontier empty), expansions,
    tactic_calls, wall_s (budgets), rejected (the Verifier rejected the found proof), broken
    (the session's process died mid-search: `detail` has the error), or, with no search run,
    statement_error / infrastructure (the session could not start; `ProofResult.skipped`)."""

    expansions: int = 0
    samples: int = 0                # tactics sampled from the policy (sampling.n per expansion)
    tokens: int = 0                 # tokens generated for them
    tactic_calls: int = 0
    tactic_errors: int = 0
    merged: int = 0                 # new states whose goals were already seen: merged
    states: int = 1                 # distinct states, the root included
    prompts_refused: int = 0        # states dropped because their prompt does not fit
    wall_s: float = 0.0
    stopped: str = ""
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"expansions": self.expansions, "samples": self.samples, "tokens": self.tokens,
                "tactic_calls": self.tactic_calls,
                "tactic_errors": self.tactic_errors, "merged": self.merged, "states": self.states,
                "prompts_refused": self.prompts_refused, "wall_s": round(self.wall_s, 3),
                "stopped": self.stopped} | ({"detail": self.detail} if self.detail else {})


@dataclass(frozen=True)
class SearchResult(ProofResult):
    """A `ProofResult` with the search's statistics. Its attempt, if any, is the proof found:
    the candidate is the whole theorem, the completion the path's tactics joined by newlines
    (their tokens and log-probabilities concatenated), the verdict the final check's."""

    stats: SearchStats = field(default_factory=SearchStats)

    def to_json(self) -> dict[str, Any]:
        return super().to_json() | {"search": self.stats.to_json()}


# -- one problem's search --------------------------------------------------------------------------


class _Session(Protocol):
    def run(self, state: TacticState | int, tactic: str) -> TacticResult: ...


@dataclass(frozen=True)
class _Node:
    state: TacticState
    depth: int
    logprob: float                    # cumulative over the path
    score: float
    path: tuple[Completion, ...]      # the completions of the path's tactics


class _Search:
    """The frontier, the seen states and the budgets of one problem; `next_node` and `expand`
    are the two halves of an expansion (the engine call in between is shared)."""

    def __init__(self, problem: Problem, session: _Session, root: TacticState, stack: contextlib.ExitStack,
                 budget: SearchBudget, alpha: float, clock: Callable[[], float], started: float) -> None:
        self.problem, self.session, self.stack = problem, session, stack
        self.budget, self.alpha, self.clock, self.started = budget, alpha, clock, started
        self.stats = SearchStats()
        self.frontier: list[tuple[float, int, _Node]] = []
        self.order = itertools.count()
        self.seen: set[tuple[str, ...]] = {root.goals}
        self.finished: ProofFinished | None = None
        self.finished_path: tuple[Completion, ...] = ()
        self._push(_Node(root, 0, 0.0, 0.0, ()))

    def _push(self, node: _Node) -> None:
        heapq.heappush(self.frontier, (-node.score, next(self.order), node))

    def _over_budget(self) -> str | None:
        b, s = self.budget, self.stats
        if b.wall_s is not None and self.clock() - self.started >= b.wall_s:
            return "wall_s"
        if b.tactic_calls is not None and s.tactic_calls >= b.tactic_calls:
            return "tactic_calls"
        return None

    def next_node(self) -> _Node | None:
        """The best state to expand now, or None with `stats.stopped` set."""
        if self.budget.expansions is not None and self.stats.expansions >= self.budget.expansions:
            self.stats.stopped = "expansions"
        elif (why := self._over_budget()) is not None:
            self.stats.stopped = why
        elif not self.frontier:
            self.stats.stopped = "exhausted"
        else:
            return heapq.heappop(self.frontier)[2]
        return None

    def expand(self, node: _Node, completions: Sequence[Completion]) -> None:
        """Run the distinct proposed tactics on `node`, best log-probability first; push new
        states, merge seen ones, stop at a finished proof or a budget."""
        self.stats.expansions += 1
        self.stats.samples += len(completions)
        self.stats.tokens += sum(len(c.token_ids) for c in completions)
        proposals: dict[str, tuple[float, Completion]] = {}
        for completion in completions:
            tactic, lp = completion.text.strip(), tactic_logprob(completion)
            if tactic and (tactic not in proposals or lp > proposals[tactic][0]):
                proposals[tactic] = (lp, completion)
        for tactic, (lp, completion) in sorted(proposals.items(), key=lambda kv: -kv[1][0]):
            if self._over_budget() is not None:
                return
            self.stats.tactic_calls += 1
            result = self.session.run(node.state, tactic)
            if isinstance(result, TacticError):
                self.stats.tactic_errors += 1
            elif isinstance(result, ProofFinished):
                self.finished, self.finished_path = result, node.path + (completion,)
                return
            elif result.goals in self.seen:
                self.stats.merged += 1
            else:
                self.seen.add(result.goals)
                self.stats.states += 1
                depth, total = node.depth + 1, node.logprob + lp
                self._push(_Node(result, depth, total, path_score(total, depth, self.alpha),
                                 node.path + (completion,)))

    def close(self) -> None:
        self.stats.wall_s = self.clock() - self.started
        self.stack.close()


def _path_completion(path: Sequence[Completion]) -> Completion:
    return Completion("\n".join(c.text.strip() for c in path),
                      tuple(t for c in path for t in c.token_ids),
                      tuple(lp for c in path for lp in c.logprobs), "stop")


# -- the driver ------------------------------------------------------------------------------------


def prove_best_first(problems: Sequence[Problem], engine: GenerationEngine, verifier_or_pool: Any,
                     sampling: SamplingConfig, *, budget: SearchBudget,
                     config: SearchConfig | None = None,
                     dojo_theorem: Callable[[Problem], Any] | None = None, dojo_factory: Any = None,
                     prompt_check: Callable[[str], str | None] | None = None,
                     clock: Callable[[], float] = time.monotonic) -> Iterator[SearchResult]:
    """Best-first search on every problem, `config.concurrency` at a time; yields each
    problem's `SearchResult` (a `ProofResult`) as soon as its search ends.

    `verifier_or_pool`: a `lean_env.verifier.Verifier` (sessions lease from its pool, and a
    found proof is verified again through it, final judge included) or a `ReplPool` (the
    session's own full acceptance check is the last word); either must be open (`with`).
    The 'dojo' backend's sessions are LeanDojo's (a Verifier given still checks the proofs they
    find): `dojo_theorem(problem)` gives the `lean_dojo.Theorem` (default: `dojo_theorems(config)`,
    from the config's repo, commit and file), `dojo_factory` replaces `lean_dojo.Dojo` (tests).
    `sampling.n` tactics are sampled per expansion; the template's stop strings are added.
    `prompt_check(prompt)` returning a reason drops that state unexpanded (e.g.
    `attempts.prompt_fit`). `clock` measures the wall-time budget.
    """
    config = config or SearchConfig()
    template = TACTIC_TEMPLATES[config.template]
    sampling = sampling.model_copy(update={"stop": list(dict.fromkeys([*sampling.stop, *template.stop]))})
    verifier = verifier_or_pool if hasattr(verifier_or_pool, "verify_batch") else None
    pool = getattr(verifier_or_pool, "pool", verifier_or_pool)
    if config.backend == "repl" and not hasattr(pool, "lease"):
        raise ValueError(f"backend 'repl' needs a REPL pool or a Verifier over one, got {type(verifier_or_pool).__name__}")
    if config.backend == "dojo" and dojo_theorem is None:
        dojo_theorem = dojo_theorems(config)
    concurrency = config.concurrency or (pool.config.workers if config.backend == "repl" else 1)

    def open_search(problem: Problem) -> _Search | SearchResult:
        started = clock()
        stack = contextlib.ExitStack()
        try:
            if config.backend == "repl":
                manager: Any = TacticSession(pool, problem.name, problem.header, problem.formal_statement)
            else:
                assert dojo_theorem is not None
                manager = DojoTacticSession(dojo_theorem(problem),
                                            statement_text(problem.name, problem.formal_statement),
                                            timeout_s=config.dojo_timeout_s, dojo_factory=dojo_factory)
            session, root = stack.enter_context(manager)
        except (StatementError, ValueError) as exc:
            stack.close()
            return SearchResult(problem, (), skipped="statement_error", detail=str(exc),
                                stats=SearchStats(stopped="statement_error", detail=str(exc)))
        except LeanEnvError as exc:   # the process died or hung on the statement: not the search's fault
            stack.close()
            why = f"{type(exc).__name__}: {exc}"
            return SearchResult(problem, (), skipped="infrastructure", detail=why,
                                stats=SearchStats(stopped="infrastructure", detail=why))
        except BaseException:
            stack.close()
            raise
        return _Search(problem, session, root, stack, budget, config.length_alpha, clock, started)

    pending = deque(problems)
    active: list[_Search] = []
    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="best-first") as threads:
            while pending or active:
                # Every active search gives its best state; a search that has none left ends
                # here and its slot goes to the next problem before the engine is called.
                heads: list[tuple[_Search, _Node, str]] = []
                while True:
                    while pending and len(active) < concurrency:
                        opened = open_search(pending.popleft())
                        if isinstance(opened, SearchResult):
                            yield opened
                        else:
                            active.append(opened)
                    done: list[_Search] = []
                    for search in active:
                        if any(search is s for s, _, _ in heads):
                            continue
                        while (node := search.next_node()) is not None:
                            prompt = template.prompt(node.state.goals)
                            if prompt_check is None or prompt_check(prompt) is None:
                                heads.append((search, node, prompt))
                                break
                            search.stats.prompts_refused += 1
                        else:
                            done.append(search)
                    if not done:
                        break
                    active = [s for s in active if s not in done]
                    yield from _finish(done, verifier)
                if heads:
                    generated = engine.generate([prompt for _, _, prompt in heads], sampling)
                    futures: list[tuple[_Search, Future[None]]] = [
                        (search, threads.submit(search.expand, node, result.completions))
                        for (search, node, _), result in zip(heads, generated, strict=True)]
                    ended: list[_Search] = []
                    for search, future in futures:
                        try:
                            future.result()
                        except LeanEnvError as exc:
                            search.stats.stopped, search.stats.detail = "broken", f"{type(exc).__name__}: {exc}"
                        if search.finished is not None or search.stats.stopped == "broken":
                            ended.append(search)
                    if ended:
                        active = [s for s in active if s not in ended]
                        yield from _finish(ended, verifier)
    finally:
        for search in active:
            search.close()


def _finish(searches: Sequence[_Search], verifier: Any) -> Iterator[SearchResult]:
    """Close the sessions (their processes go back to the pool, where the verifier can use
    them), verify the proofs found in one batch, and make the results."""
    for search in searches:
        search.close()
    proved = [s for s in searches if s.finished is not None]
    verdicts: list[Verdict] = [s.finished.verdict for s in proved if s.finished is not None]
    if verifier is not None and proved:
        verdicts = verifier.verify_batch([
            VerifyRequest(s.problem.name, s.problem.header, s.problem.formal_statement, s.finished.proof)
            for s in proved if s.finished is not None])
    by_search = dict(zip((id(s) for s in proved), verdicts, strict=True))
    for search in searches:
        attempts: tuple[Attempt, ...] = ()
        if search.finished is not None:
            verdict = by_search[id(search)]
            attempts = (Attempt(search.stats.tactic_calls - 1, _path_completion(search.finished_path),
                                search.finished.proof, verdict),)
            search.stats.stopped = "proved" if verdict.accepted else "rejected"
            if not verdict.accepted:
                search.stats.detail = f"the found proof was rejected by the verifier: {verdict.outcome}"
        s = search.stats
        detail = (f"best-first: {s.expansions} expansions, {s.tactic_calls} tactic calls, "
                  f"{s.merged} duplicate states merged, {s.states} states; stopped: {s.stopped}"
                  + (f" ({s.detail})" if s.detail else ""))
        yield SearchResult(search.problem, attempts, detail=detail, stats=s)
