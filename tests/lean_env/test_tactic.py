"""Tactic sessions against the stand-in REPL (A1's test double speaking the REPL protocol).

The stand-in's rule table decides what each tactic does; these tests check what the session
makes of every reply shape: new goals, branching from old states, Lean errors, incomplete
proof statuses, a "Completed" that the full acceptance path then rejects (the `apply t` bug),
forbidden tactics, and a hanging tactic.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from lean_env import standin
from lean_env.config import VerifierConfig
from lean_env.errors import ReplTimeoutError
from lean_env.pool import ReplPool
from lean_env.protocol import parse_tactic_reply
from lean_env.tactic import (
    ProofFinished,
    StatementError,
    TacticError,
    TacticSession,
    TacticState,
    tactic_outcome,
)
from lean_env.verdict import Accepted

HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 0\n\nopen BigOperators Real Nat\n\n"
STATEMENT = "theorem t (a b : ℕ) (h₀ : a = 2) : a + b = b + a := by\n"
RULES = {
    "rules": [
        {"on": "tactic", "substring": "intro", "goals": ["a b : ℕ\nh₀ : a = 2\n⊢ a + b = b + a"]},
        {"on": "tactic", "substring": "constructor",
         "goals": ["⊢ a ≤ b + a", "⊢ b + a ≤ a + b"]},
        {"on": "tactic", "substring": "bogus", "error": "<input>:1:0: unknown tactic"},
        {"on": "tactic", "substring": "exact?", "goals": [],
         "proof_status": "Incomplete: contains metavariable(s)"},
        {"on": "tactic", "substring": "kernel_bad", "goals": [],
         "proof_status": "Error: kernel type check failed: (kernel) declaration type mismatch"},
        # `apply t`: the REPL says Completed, but the theorem as a whole does not check.
        {"on": "command", "substring": "apply t",
         "messages": [{"severity": "error", "pos": {"line": 2, "column": 2},
                       "data": "fail to show termination for t"}]},
        {"on": "tactic", "substring": "slow_tactic", "fault": "hang"},
    ]
}


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplPool]:
    rules = tmp_path_factory.mktemp("tactic") / "rules.json"
    rules.write_text(json.dumps(RULES))
    config = VerifierConfig(backend="standin", workers=1, timeout_s=10, tactic_timeout_s=5)
    with ReplPool(config, command=standin.command(rules), checked_by=standin.CHECKED_BY) as p:
        yield p


def test_start_state_is_the_sorry_goal(pool: ReplPool) -> None:
    with TacticSession(pool, "t", HEADER, STATEMENT) as (session, s0):
        assert s0 == TacticState(0, ("⊢ a + b = b + a",)), s0
        assert session.tactics(s0) == (), session.tactics(s0)


def test_goals_branching_and_finish(pool: ReplPool) -> None:
    with TacticSession(pool, "t", HEADER, STATEMENT) as (session, s0):
        s1 = session.run(s0, "intro")
        assert isinstance(s1, TacticState) and s1.id == 1 and "h₀ : a = 2" in s1.goals[0], s1
        s2 = session.run(s1, "constructor")
        assert isinstance(s2, TacticState) and len(s2.goals) == 2, s2
        # Branch from the older state: it stays valid.
        done = session.run(s1, "omega")
        assert isinstance(done, ProofFinished), done
        assert done.tactics == ("intro", "omega"), done
        assert done.proof == ("theorem t (a b : ℕ) (h₀ : a = 2) : a + b = b + a := by\n"
                              "  intro\n  omega\n"), done.proof
        assert isinstance(done.verdict, Accepted) and "stand-in" in done.verdict.checked_by, done
        assert session.tactics(s2) == ("intro", "constructor"), session.tactics(s2)


@pytest.mark.parametrize(("tactic", "expected"), [
    ("bogus", "unknown tactic"),
    ("exact?", "contains metavariable"),
    ("kernel_bad", "kernel type check failed"),
    ("apply t", "assembled proof was rejected (lean_error)"),
    ("sorry", "forbidden: `sorry`"),
    ("native_decide", "forbidden: `native_decide`"),
    ("simp\n#eval 1", "forbidden: `#eval`"),
    ("set_option debug.skipKernelTC true in omega", "forbidden: `set_option debug.skipKernelTC`"),
])
def test_failures_are_tactic_errors_and_the_state_survives(pool: ReplPool, tactic: str,
                                                           expected: str) -> None:
    with TacticSession(pool, "t", HEADER, STATEMENT) as (session, s0):
        result = session.run(s0, tactic)
        assert isinstance(result, TacticError) and expected in result.detail, result
        after = session.run(s0, "omega")
        assert isinstance(after, ProofFinished), after


def test_bad_state_id_and_bad_statement(pool: ReplPool) -> None:
    with TacticSession(pool, "t", HEADER, STATEMENT) as (session, _), \
            pytest.raises(ValueError, match="unknown tactic state id 7"):
        session.run(7, "omega")
    with pytest.raises(ValueError, match="does not declare theorem 'u'"):
        TacticSession(pool, "u", HEADER, STATEMENT)


def test_statement_that_does_not_elaborate(tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [
        {"on": "command", "substring": "theorem t",
         "messages": [{"severity": "error", "pos": {"line": 1, "column": 30},
                       "data": "unknown identifier 'q'"}]}]}))
    config = VerifierConfig(backend="standin", workers=1)
    with ReplPool(config, command=standin.command(rules), checked_by=standin.CHECKED_BY) as p, \
            pytest.raises(StatementError, match="unknown identifier 'q'"), \
            TacticSession(p, "t", HEADER, STATEMENT):
        pass


def test_hanging_tactic_times_out_and_ends_the_session(pool: ReplPool) -> None:
    session = TacticSession(pool, "t", HEADER, STATEMENT, tactic_timeout_s=1.0)
    with pytest.raises(ReplTimeoutError), session as (s, s0):
        s.run(s0, "slow_tactic")
    # The pool replaced the killed process: a new session works.
    with TacticSession(pool, "t", HEADER, STATEMENT) as (s, s0):
        assert isinstance(s.run(s0, "omega"), ProofFinished)


@pytest.mark.parametrize(("reply", "expected"), [
    ({"proofState": 3, "goals": ["⊢ b ≤ a"], "proofStatus": "Incomplete: open goals remain"},
     ("⊢ b ≤ a",)),
    ({"proofState": 3, "goals": [], "proofStatus": "Completed"}, ()),
    # Old builds: no proofStatus. No goals only sends the proof to the full check.
    ({"proofState": 3, "goals": []}, ()),
    ({"proofState": 3, "goals": [], "proofStatus": "Incomplete: contains sorry"}, "leaves a sorry"),
    ({"proofState": 3, "goals": [], "sorries": [{"pos": {"line": 1, "column": 0}, "goal": "⊢ P",
                                                "proofState": 4}]}, "leaves a sorry"),
    ({"proofState": 3, "goals": [], "proofStatus": "Not verified: more than one initial goal"},
     "Not verified"),
    ({"proofState": 3, "goals": ["⊢ P"],
      "messages": [{"severity": "error", "pos": {"line": 1, "column": 0},
                    "data": "linarith failed to find a contradiction"}]}, "linarith failed"),
    ({"message": "Lean error:\n<input>:1:0: unknown tactic"}, "unknown tactic"),
    ({"goals": []}, "no proof state"),
])
def test_tactic_outcome_of_every_reply_shape(reply: dict, expected: object) -> None:
    outcome = tactic_outcome(parse_tactic_reply(reply))
    if isinstance(expected, str):
        assert isinstance(outcome, TacticError) and expected in outcome.detail, outcome
    else:
        assert outcome == expected, outcome


@pytest.mark.lean
def test_real_lean_tactic_session() -> None:
    from lean_env.toolchain import checked_by, find_toolchain, repl_command

    tc = find_toolchain()
    if not tc.complete:
        pytest.skip("no Lean toolchain with Mathlib and the REPL (run `prover lean setup`)")
    config = VerifierConfig(workers=1, timeout_s=120, tactic_timeout_s=60)
    with ReplPool(config, command=repl_command(tc), cwd=tc.project_dir,
                  checked_by=checked_by(tc)) as p, \
            TacticSession(p, "t", HEADER, STATEMENT) as (session, s0):
        assert "⊢ a + b = b + a" in s0.goals[0], s0
        bad = session.run(s0, "exact rfl_nonsense")
        assert isinstance(bad, TacticError), bad
        done = session.run(s0, "omega")
        assert isinstance(done, ProofFinished) and isinstance(done.verdict, Accepted), done
