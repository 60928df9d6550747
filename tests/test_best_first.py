"""Best-first tactic search (prover/search/best_first.py) on a stand-in tactic tree.

The tree is tests/lean_env/rules/tactic_tree.json (tactic rules conditioned on the state's
goals); a scripted engine proposes, for each state, chosen tactics with chosen log-probs:

    R  ⊢ b = a      symm (-1.0) -> A,  rw [eq_comm] (-1.2) -> A (merged),
                    dive1 (-0.4) -> B1,  bogus (-3.0) -> error
    B1 ⊢ dive 1     dive2 (-0.4) -> B2,  symm_b (-2.0) -> A (merged)
    B2 ⊢ dive 2     dive3 (-0.4) -> B3
    B3 ⊢ dive 3     dive4 (-0.4) -> error (a dead end)
    A  ⊢ a = b      close_bad (-0.1) -> no goals, but the assembled proof fails the full check;
                    exact h (-0.5) -> proved

The shortest proof is `symm; exact h`. Scores (length_alpha 0): B1 -0.4, B2 -0.8, A -1.0,
B3 -1.2, so the search expands R, B1, B2, A; with alpha 1 (mean per tactic) B2 and B3 score
-0.4 and go before A: R, B1, B2, B3, A.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from lean_env.config import VerifierConfig
from lean_env.pool import ReplPool
from lean_env.standin import CHECKED_BY, command
from lean_env.standin.rules import RuleTableError, load_rules
from lean_env.verdict import Rejected, RejectReason, Verdict
from lean_env.verifier import Verifier, VerifyRequest
from policy.config import SamplingConfig
from policy.engines import Completion, PromptResult
from prover.config import SearchConfig
from prover.problems import Problem
from prover.search.attempts import ProofResult
from prover.search.best_first import (
    TACTIC_TEMPLATES,
    SearchBudget,
    SearchResult,
    path_score,
    prove_best_first,
    tactic_logprob,
)

RULES = Path(__file__).resolve().parent / "lean_env" / "rules" / "tactic_tree.json"
HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\nopen BigOperators Real Nat\n\n"
A = "a b : ℕ\nh : a = b\n⊢ a = b"
TREE: dict[str, list[tuple[str, float]]] = {
    "⊢ b = a": [("symm", -1.0), ("rw [eq_comm]", -1.2), ("dive1", -0.4), ("bogus", -3.0)],
    "⊢ dive 1": [("dive2", -0.4), ("symm_b", -2.0)],
    "⊢ dive 2": [("dive3", -0.4)],
    "⊢ dive 3": [("dive4", -0.4)],
    A: [("close_bad", -0.1), ("exact h", -0.5)],
    "⊢ x = x + 0": [("close_bad", -0.1)],
    "⊢ y = y": [("loop_forever", -0.1)],
}
NAMES = {"⊢ b = a": "R", "⊢ dive 1": "B1", "⊢ dive 2": "B2", "⊢ dive 3": "B3", A: "A", "⊢ x = x + 0": "X"}
SAMPLING = SamplingConfig(n=4, max_tokens=32)


def problem(name: str, statement: str = "(a b : ℕ) (h : a = b) : b = a") -> Problem:
    return Problem(name=name, split="test", header=HEADER, id=name,
                   formal_statement=f"theorem {name} {statement} := by\n")


class TreeEngine:
    """Proposes TREE's tactics for the state in a `bfs-prover` prompt (`{state}:::`), each as a
    completion of two tokens whose log-probs sum to the chosen value; records every call and
    advances `now` (a fake clock) by `step_s` per call."""

    def __init__(self, step_s: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.now = 0.0
        self.step_s = step_s

    def clock(self) -> float:
        return self.now

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[PromptResult]:
        self.calls.append(list(prompts))
        self.now += self.step_s
        out = []
        for prompt in prompts:
            assert prompt.endswith(":::"), prompt
            proposals = TREE.get(prompt[:-3], [("nothing", -5.0)])
            picks = [proposals[i % len(proposals)] for i in range(sampling.n)]
            out.append(PromptResult(prompt, (1,), tuple(
                Completion(f" {t}\n", (7, 8), (lp / 2, lp / 2), "stop") for t, lp in picks)))
        return out

    def expanded(self) -> list[str]:
        return [NAMES.get(p[:-3], p) for call in self.calls for p in call]


@pytest.fixture(scope="module")
def verifier() -> Any:
    with Verifier(VerifierConfig(backend="standin", standin_rules=RULES, workers=2, timeout_s=20,
                                 tactic_timeout_s=10)) as v:
        yield v


def search(problems: Sequence[Problem], verifier_or_pool: Any, *, engine: TreeEngine | None = None,
           budget: SearchBudget | None = None, **config: Any) -> tuple[list[SearchResult], TreeEngine]:
    engine = engine or TreeEngine()
    results = list(prove_best_first(problems, engine, verifier_or_pool, SAMPLING,  # type: ignore[arg-type]
                                    budget=budget or SearchBudget(expansions=20),
                                    config=SearchConfig(**config), clock=engine.clock))
    return results, engine


def test_scores_by_hand() -> None:
    assert tactic_logprob(Completion("x", (1, 2, 3), (-0.5, -0.25, -0.25), "stop")) == -1.0
    assert path_score(0.0, 0, 0.5) == 0.0
    assert path_score(-1.2, 3, 0.0) == -1.2
    assert path_score(-1.2, 3, 1.0) == pytest.approx(-0.4)
    assert path_score(-2.0, 4, 0.5) == pytest.approx(-1.0)
    assert TACTIC_TEMPLATES["bfs-prover"].prompt(["⊢ p", "⊢ q"]) == "⊢ p\n\n⊢ q:::"
    assert TACTIC_TEMPLATES["gptf"].prompt(["⊢ p"]) == "[GOAL]⊢ p[PROOFSTEP]"
    with pytest.raises(ValueError, match="Input should be 'bfs-prover' or 'gptf'"):
        SearchConfig(template="nope")
    with pytest.raises(ValueError, match="expansions must be positive or None, got 0"):
        SearchBudget(expansions=0)


def test_finds_the_shortest_proof_in_score_order(verifier: Verifier) -> None:
    (result,), engine = search([problem("tree")], verifier, length_alpha=0.0)
    assert isinstance(result, ProofResult) and result.proved, result.detail
    assert result.proof == "theorem tree (a b : ℕ) (h : a = b) : b = a := by\n  symm\n  exact h\n", result.proof
    assert engine.expanded() == ["R", "B1", "B2", "A"], engine.expanded()
    stats = result.stats
    # R: dive1 symm rw bogus; B1: dive2 symm_b; B2: dive3; A: close_bad (rejected by the full check), exact h
    assert (stats.expansions, stats.tactic_calls, stats.tactic_errors, stats.merged, stats.stopped) == \
        (4, 9, 2, 2, "proved"), stats
    assert (stats.samples, stats.tokens) == (4 * SAMPLING.n, 4 * SAMPLING.n * 2), stats
    (attempt,) = result.attempts
    assert attempt.verdict.accepted and CHECKED_BY in attempt.verdict.checked_by, attempt.verdict
    assert attempt.completion.text == "symm\nexact h" and attempt.completion.logprobs == (-0.5, -0.5, -0.25, -0.25), \
        attempt.completion
    record = result.to_json()
    assert record["proved"] and record["search"]["expansions"] == 4, record


def test_length_normalisation_changes_the_order(verifier: Verifier) -> None:
    (result,), engine = search([problem("tree")], verifier, length_alpha=1.0)
    assert engine.expanded() == ["R", "B1", "B2", "B3", "A"], engine.expanded()
    assert result.proved and result.stats.expansions == 5 and result.stats.tactic_calls == 10, result.stats


def test_duplicate_states_are_merged_and_expanded_once(verifier: Verifier) -> None:
    (result,), engine = search([problem("tree")], verifier, length_alpha=0.0)
    expanded = engine.expanded()
    assert expanded.count("A") == 1 and len(expanded) == len(set(expanded)), expanded
    # R, B1, B2, B3 and A: `rw [eq_comm]` and `symm_b` reached A again and were merged into it
    assert (result.stats.states, result.stats.merged) == (5, 2), result.stats


@pytest.mark.parametrize(("budget", "expanded", "calls", "stopped"), [
    (SearchBudget(expansions=2), ["R", "B1"], 6, "expansions"),
    (SearchBudget(expansions=None, tactic_calls=3), ["R"], 3, "tactic_calls"),
    (SearchBudget(expansions=None, tactic_calls=7), ["R", "B1", "B2"], 7, "tactic_calls"),
])
def test_expansion_and_tactic_call_budgets(budget: SearchBudget, expanded: list[str], calls: int,
                                           stopped: str, tmp_path: Path) -> None:
    # A pool of our own with a state folder: the stand-in logs every tactic it really ran.
    config = VerifierConfig(backend="standin", standin_rules=RULES, workers=1)
    with ReplPool(config, command=command(RULES, state_dir=tmp_path), checked_by=CHECKED_BY) as pool:
        (result,), engine = search([problem("tree")], pool, budget=budget, length_alpha=0.0)
    ran = sum(1 for line in (tmp_path / "events.jsonl").read_text().splitlines()
              if json.loads(line)["event"] == "tactic")
    assert engine.expanded() == expanded, engine.expanded()
    assert (result.proved, result.stats.tactic_calls, ran, result.stats.stopped) == (False, calls, calls, stopped), \
        (result.stats, ran)


def test_wall_time_budget(verifier: Verifier) -> None:
    # Each engine call takes 1 s on the fake clock: at 3 s the budget of 2.5 s is spent, so
    # the third expansion (B2) runs no tactic and the search stops before a fourth.
    engine = TreeEngine(step_s=1.0)
    (result,), _ = search([problem("tree")], verifier, engine=engine,
                          budget=SearchBudget(expansions=None, wall_s=2.5), length_alpha=0.0)
    stats = result.stats
    assert engine.expanded() == ["R", "B1", "B2"], engine.expanded()
    assert (result.proved, stats.tactic_calls, stats.stopped, stats.wall_s) == (False, 6, "wall_s", 3.0), stats


def test_wall_time_budget_on_the_real_clock(verifier: Verifier) -> None:
    class Slow(TreeEngine):
        def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[PromptResult]:
            import time
            time.sleep(0.3)
            return super().generate(prompts, sampling)

    import time
    engine = Slow()
    t0 = time.monotonic()
    (result,) = list(prove_best_first([problem("tree")], engine, verifier, SAMPLING,  # type: ignore[arg-type]
                                      budget=SearchBudget(expansions=None, wall_s=0.5),
                                      config=SearchConfig(length_alpha=0.0)))
    elapsed = time.monotonic() - t0
    assert result.stats.stopped == "wall_s" and len(engine.calls) == 2, (result.stats, len(engine.calls))
    assert elapsed < 0.5 + 0.3 + 2.0, elapsed   # one engine call past the budget, plus session start


def test_a_proof_the_full_check_rejects_is_not_reported(verifier: Verifier) -> None:
    (result,), engine = search([problem("bad_tree", "(x : ℕ) : x = x + 0")], verifier)
    assert engine.expanded() == ["X"], engine.expanded()
    assert (result.proved, result.attempts, result.stats.tactic_errors, result.stats.stopped) == \
        (False, (), 1, "exhausted"), result


def test_a_proof_the_verifier_rejects_is_not_reported(verifier: Verifier) -> None:
    class Rejecting:
        """A verifier whose final judge refuses every proof (sessions use the real pool)."""

        pool = verifier.pool
        seen: list[VerifyRequest] = []

        def verify_batch(self, requests: Sequence[VerifyRequest], **_: Any) -> list[Verdict]:
            self.seen.extend(requests)
            return [Rejected(checked_by="final judge", time_s=0.0, reason=RejectReason.LEAN_ERROR,
                             detail="comparator: the types differ") for _ in requests]

    rejecting = Rejecting()
    (result,), _ = search([problem("tree")], rejecting, length_alpha=0.0)
    assert [r.candidate for r in rejecting.seen] == [
        "theorem tree (a b : ℕ) (h : a = b) : b = a := by\n  symm\n  exact h\n"], rejecting.seen
    assert not result.proved and result.stats.stopped == "rejected", result.detail
    assert result.attempts[0].verdict.outcome == "rejected:lean_error", result.attempts


def test_concurrent_problems_share_engine_calls(verifier: Verifier) -> None:
    problems = [problem("bad_tree", "(x : ℕ) : x = x + 0"), problem("tree"), problem("tree2")]
    results, engine = search(problems, verifier, length_alpha=0.0)
    by_id = {r.problem.id: r for r in results}
    assert {k: r.proved for k, r in by_id.items()} == {"tree": True, "tree2": True, "bad_tree": False}, by_id
    # Two at a time (the pool's 2 workers): bad_tree (1 expansion) ends first and frees a
    # slot for tree2; each call carries the heads of every active search.
    sizes = [len(call) for call in engine.calls]
    expansions = sum(r.stats.expansions for r in results)
    assert sum(sizes) == expansions == 9 and len(engine.calls) < expansions, (sizes, expansions)
    assert sizes == [2, 2, 2, 2, 1], sizes
    # yielded as they finish, not in problem order
    assert [r.problem.id for r in results] == ["bad_tree", "tree", "tree2"], [r.problem.id for r in results]


class TreeDojo:
    """`lean_dojo.Dojo` over TREE's transitions (same constructor and context protocol)."""

    STEPS = {("⊢ b = a", "symm"): A, ("⊢ b = a", "dive1"): "⊢ dive 1", ("⊢ dive 1", "dive2"): "⊢ dive 2",
             ("⊢ dive 2", "dive3"): "⊢ dive 3", (A, "exact h"): None}

    def __init__(self, theorem: Any, timeout: int) -> None:
        import lean_dojo
        self.lean_dojo, self.next_id = lean_dojo, 1

    def __enter__(self) -> tuple[TreeDojo, Any]:
        return self, self.lean_dojo.TacticState("⊢ b = a", 0)

    def __exit__(self, *exc: object) -> None:
        pass

    def run_tac(self, state: Any, tactic: str) -> Any:
        key = (state.pp, tactic)
        if key not in self.STEPS:
            return self.lean_dojo.LeanError(f"unknown tactic {tactic}")
        self.next_id += 1
        after = self.STEPS[key]
        return self.lean_dojo.ProofFinished(self.next_id, None) if after is None else \
            self.lean_dojo.TacticState(after, self.next_id)


def test_dojo_backend() -> None:
    # The config names a traced repo (a made-up commit: `dojo_theorem` replaces the lookup here;
    # tests/test_search_config.py follows the config's values into LeanDojo's constructors).
    config = SearchConfig(backend="dojo", length_alpha=0.0, dojo_url="https://github.com/yangky11/miniF2F-lean4",
                          dojo_commit="0" * 40, dojo_file_path="MiniF2F/Valid.lean")
    engine = TreeEngine()
    (result,) = list(prove_best_first([problem("tree")], engine, None, SAMPLING,  # type: ignore[arg-type]
                                      budget=SearchBudget(expansions=10), config=config,
                                      dojo_theorem=lambda p: p.name, dojo_factory=TreeDojo))
    assert result.proof == "theorem tree (a b : ℕ) (h : a = b) : b = a := by\n  symm\n  exact h\n", result.detail
    assert engine.expanded() == ["R", "B1", "B2", "A"], engine.expanded()
    assert "LeanDojo" in result.attempts[0].verdict.checked_by, result.attempts[0].verdict


def test_a_hanging_tactic_ends_that_search_only() -> None:
    config = VerifierConfig(backend="standin", standin_rules=RULES, workers=2, tactic_timeout_s=1.0)
    with ReplPool(config, command=command(RULES), checked_by=CHECKED_BY) as pool:
        results, _ = search([problem("hang_tree", "(y : ℕ) : y = y"), problem("tree")], pool, length_alpha=0.0)
    by_id = {r.problem.id: r for r in results}
    hung = by_id["hang_tree"]
    assert (hung.proved, hung.stats.stopped) == (False, "broken") and "ReplTimeoutError" in hung.detail, hung.detail
    assert by_id["tree"].proved, by_id["tree"].detail


def test_standin_tactic_rules_conditioned_on_goals(tmp_path: Path) -> None:
    table = load_rules(RULES)
    matched = [(r.name if r else None) for r in (table.match("symm", "tactic", "⊢ b = a"),
                                                  table.match("symm", "tactic", A),
                                                  table.match("exact h", "tactic", A))]
    assert matched == ["R_symm", "no_rule", "A_exact"], matched
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rules": [{"substring": "x", "goal": "⊢ p"}]}))
    with pytest.raises(RuleTableError, match="'goal' applies to tactic rules only"):
        load_rules(bad)
    bad.write_text(json.dumps({"rules": [{"on": "tactic", "substring": "x", "goal": "("}]}))
    with pytest.raises(RuleTableError, match=r"rules\[0\]\.goal: bad pattern"):
        load_rules(bad)


def test_statement_that_does_not_declare_the_theorem(verifier: Verifier) -> None:
    bad = Problem(name="missing", split="test", header=HEADER, id="missing",
                  formal_statement="theorem other : True := by\n")
    (result,), engine = search([bad], verifier)
    assert (result.outcome, engine.calls) == ("not_checked:statement_error", []), result


def test_a_process_that_dies_on_the_statement_ends_only_that_problem(verifier: Verifier) -> None:
    results, _ = search([problem("crash_tree"), problem("tree")], verifier, length_alpha=0.0)
    outcomes = {r.problem.id: r.outcome for r in results}
    assert outcomes == {"crash_tree": "not_checked:infrastructure", "tree": "proved"}, (outcomes, results[0].detail)


@pytest.mark.slow
def test_tiny_checkpoint_through_the_transformers_engine(tmp_path: Path, verifier: Verifier) -> None:
    from policy.config import PolicyConfig
    from policy.engines import make_engine
    from prover.checkpoints import init_checkpoint

    init_checkpoint("tiny", tmp_path / "tiny")
    config = PolicyConfig(checkpoint=str(tmp_path / "tiny"), engine="transformers", max_model_len=512)
    calls: list[list[PromptResult]] = []
    with make_engine(config) as real:
        class Counting:
            def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[PromptResult]:
                calls.append(real.generate(prompts, sampling))
                return calls[-1]

        results = list(prove_best_first(
            [problem("tree"), problem("tree2")], Counting(), verifier,  # type: ignore[arg-type]
            SamplingConfig(n=2, max_tokens=8, seed=1), budget=SearchBudget(expansions=2)))
    # both roots went to the engine together, each with 2 sampled tactics and their log-probs
    assert len(calls[0]) == 2 and all(len(r.completions) == 2 for r in calls[0]), calls[0]
    assert all(len(c.logprobs) == len(c.token_ids) > 0 for r in calls[0] for c in r.completions), calls[0]
    for result in results:   # an untrained model proposes noise: the tree's catch-all rejects it
        stats = result.stats
        assert not result.proved and 1 <= stats.expansions <= 2 and stats.tactic_calls >= 1, stats
        assert stats.stopped in ("expansions", "exhausted"), stats
    assert math.isfinite(sum(r.stats.wall_s for r in results))

