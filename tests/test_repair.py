"""Lean-feedback repair: Lean's messages go back to the model at the candidate's lines; budgets
count every sample of every round. Also s1 budget forcing (prover.search.whole.generate)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lean_env.config import VerifierConfig
from lean_env.verdict import LeanMessage, Rejected, RejectReason
from lean_env.verifier import Verifier
from policy.config import SamplingConfig
from policy.engines import Completion, PromptResult
from prover.cli import app
from prover.problems import Problem, load_problems
from prover.prompts import TEMPLATES
from prover.search.attempts import Budget
from prover.search.repair import feedback_message, prove_repair
from prover.search.whole import BudgetForcing, generate

HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 0\n\nopen BigOperators Real Nat Topology Rat\n\n"
PROBLEM = Problem(name="t1", split="test", header=HEADER, informal_prefix="",
                  formal_statement="theorem t1 (a b : ℕ) : a + b = b + a := by\n", id="t1")
FIRST = ("<think>try linarith</think>\n```lean4\nimport Mathlib\n\ntheorem t1 (a b : ℕ) : a + b = b + a := by\n"
         "  skip\n  linarith\n```")
FIXED = "<think>omega it is</think>\n```lean4\ntheorem t1 (a b : ℕ) : a + b = b + a := by\n  omega\n```"


class PromptEngine:
    """Answers by looking at the prompt: `answer(prompt) -> text`; records every call."""

    def __init__(self, answer: Callable[[str], str], tokens: int = 3, finish: str = "stop") -> None:
        self.answer, self.tokens, self.finish = answer, tokens, finish
        self.calls: list[tuple[list[str], SamplingConfig]] = []

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[PromptResult]:
        self.calls.append((list(prompts), sampling))
        return [PromptResult(p, (1,), tuple(Completion(self.answer(p), (7,) * self.tokens, (-0.5,) * self.tokens,
                                                       self.finish) for _ in range(sampling.n))) for p in prompts]


@pytest.fixture()
def linarith_rules(tmp_path: Path) -> Path:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"substring": "linarith", "messages": [
        {"severity": "error", "pos": {"line": 3, "column": 2}, "endPos": {"line": 3, "column": 10},
         "data": "linarith failed to find a contradiction"}]}]}))
    return rules


def test_second_round_prompt_carries_lean_messages_at_the_candidates_lines(linarith_rules: Path) -> None:
    engine = PromptEngine(lambda prompt: FIXED if "# Error 1:" in prompt else FIRST)
    rounds: list[tuple[int, list[str]]] = []
    with Verifier(VerifierConfig(backend="standin", standin_rules=linarith_rules, workers=2)) as verifier:
        result, = prove_repair([PROBLEM], engine, verifier, SamplingConfig(n=1), template="kimina-prover",
                               rounds=2, on_round=lambda r, prompts: rounds.append((r, prompts)))
    outcomes = [(a.round, a.parent, a.verdict.outcome) for a in result.attempts]
    assert outcomes == [(0, None, "rejected:lean_error"), (1, 0, "accepted")], outcomes
    assert result.attempts[0].candidate.splitlines()[2] == "  linarith", result.attempts[0].candidate
    assert [r for r, _ in rounds] == [0, 1], rounds   # proved in round 1: no round 2
    (second,) = rounds[1][1]
    # the conversation: Kimina's system prompt, the question, the model's answer, Lean's errors
    assert second.startswith(TEMPLATES["kimina-prover"].system or ""), second[:200]
    assert FIRST in second, second
    feedback = second[second.index("# Error 1:"):]
    assert "linarith failed to find a contradiction" in feedback, feedback
    assert "002  |   skip\n003 >|   linarith\n" in feedback, feedback   # line 3 of the checked candidate
    assert result.proof == "theorem t1 (a b : ℕ) : a + b = b + a := by\n  omega\n", result.proof
    assert result.spent and result.spent["samples"] == 2 and result.spent["tokens"] == 6, result.spent


def test_repair_budget_counts_every_sample(linarith_rules: Path) -> None:
    engine = PromptEngine(lambda prompt: FIRST)   # never fixes it
    with Verifier(VerifierConfig(backend="standin", standin_rules=linarith_rules, workers=2)) as verifier:
        capped, = prove_repair([PROBLEM], engine, verifier, SamplingConfig(n=2), template="kimina-prover",
                               rounds=3, budget=Budget(samples=3))
        unlimited, = prove_repair([PROBLEM], engine, verifier, SamplingConfig(n=2), template="kimina-prover", rounds=2)
        by_tokens, = prove_repair([PROBLEM], engine, verifier, SamplingConfig(n=2), template="kimina-prover",
                                  rounds=5, budget=Budget(tokens=9))
    rounds = [a.round for a in capped.attempts]
    assert rounds == [0, 0, 1], rounds   # 2 first samples + 1 correction = the budget of 3
    assert capped.spent and capped.spent["samples"] == 3 and capped.spent["exhausted"] == "samples", capped.spent
    assert [a.round for a in unlimited.attempts] == [0, 0, 1, 1, 2, 2], [a.round for a in unlimited.attempts]
    # 3 tokens a sample: 6 after round 0, 12 after round 1 (the limit of 9 is checked between rounds)
    assert [a.round for a in by_tokens.attempts] == [0, 0, 1, 1], [a.round for a in by_tokens.attempts]
    assert by_tokens.spent and by_tokens.spent["exhausted"] == "tokens", by_tokens.spent


def test_feedback_message_without_lean_messages() -> None:
    static = Rejected(checked_by="x", time_s=0.0, reason=RejectReason.FORBIDDEN, detail="line 2: `sorry` is not allowed")
    assert "forbidden: line 2: `sorry` is not allowed" in feedback_message("theorem t1 := by\n  sorry\n", static)
    assert "no complete ```lean4 code block" in feedback_message("", static)
    past_end = Rejected(checked_by="x", time_s=0.0, messages=(LeanMessage("error", "type mismatch", line=9),))
    message = feedback_message("theorem t1 := by\n  simp\n", past_end)
    assert "type mismatch" in message and "snippet" not in message, message


def test_budget_forcing_cuts_thinking_and_forces_the_answer() -> None:
    def answer(prompt: str) -> str:
        if prompt.endswith("```lean4\n"):
            return "  omega"              # the forced answer, stopped at the closing fence
        return "let me think more and more"   # thinking that never ends by itself
    engine = PromptEngine(answer, tokens=4, finish="length")
    tpl = TEMPLATES["kimina-prover"]
    result, = generate(engine, ["Q:"], SamplingConfig(n=2, max_tokens=10), tpl, BudgetForcing(think_tokens=4))
    first, forced = engine.calls
    assert first[1].max_tokens == 4 and "</think>" in first[1].stop, first[1]
    assert forced[0] == ["Q:let me think more and more\n</think>\n\n```lean4\n"] * 2, forced[0]
    assert forced[1].max_tokens == 6 and "```" in forced[1].stop and forced[1].n == 1, forced[1]
    texts = [c.text for c in result.completions]
    assert texts == ["let me think more and more\n</think>\n\n```lean4\n  omega"] * 2, texts   # "length": not closed
    assert [len(c.token_ids) for c in result.completions] == [8, 8]


def test_budget_forcing_wait_extends_early_thinking() -> None:
    seen: list[str] = []

    def answer(prompt: str) -> str:
        seen.append(prompt)
        return "short" if not prompt.endswith("Wait") else " longer"
    engine = PromptEngine(answer, tokens=1, finish="stop")
    result, = generate(engine, ["Q:"], SamplingConfig(n=1, max_tokens=10), TEMPLATES["kimina-prover"],
                       BudgetForcing(think_tokens=5, waits=1))
    assert seen[1] == "Q:shortWait", seen   # the end-of-thinking marker suppressed, "Wait" appended
    assert seen[2] == "Q:shortWait longer</think>\n", seen   # then the marker back, and the answer
    assert result.completions[0].text == "shortWait longer</think>\nshort", result.completions[0].text


runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("repair") / "tiny"
    result = runner.invoke(app, ["model", "init", "--preset", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_repair_with_the_tiny_policy(tiny_checkpoint: Path, tmp_path: Path, shared_data: Path) -> None:
    from policy.config import PolicyConfig
    from policy.engines import make_engine
    rules = tmp_path / "rules.json"   # every candidate gets an error at its first line
    rules.write_text(json.dumps({"rules": [{"regex": "theorem", "messages": [
        {"severity": "error", "pos": {"line": 1, "column": 0}, "data": "stand-in: first line is wrong"}]}]}))
    problems = load_problems("minif2f-valid", limit=1)
    rounds: list[tuple[int, list[str]]] = []
    with make_engine(PolicyConfig(checkpoint=str(tiny_checkpoint), engine="transformers")) as engine, \
            Verifier(VerifierConfig(backend="standin", standin_rules=rules, workers=1)) as verifier:
        result, = prove_repair(problems, engine, verifier, SamplingConfig(n=2, max_tokens=8, seed=0),
                               template="deepseek-prover-v1.5", rounds=1, budget=Budget(samples=3),
                               on_round=lambda r, prompts: rounds.append((r, prompts)))
    assert [a.round for a in result.attempts] == [0, 0, 1], [(a.round, a.verdict.outcome) for a in result.attempts]
    first_line = result.attempts[0].candidate.splitlines()[0]
    assert f"001 >| {first_line}\n" in rounds[1][1][0] and "stand-in: first line is wrong" in rounds[1][1][0], rounds[1]
    assert all(len(a.completion.token_ids) <= 8 for a in result.attempts)
