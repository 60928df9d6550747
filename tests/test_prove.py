"""Whole-proof sampling (`prover prove whole`): prompts, candidates, the loop, the CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lean_env.config import VerifierConfig
from lean_env.verifier import Verifier
from policy.config import SamplingConfig
from policy.engines import Completion, PromptResult
from prover.cli import app
from prover.problems import Problem, load_problems
from prover.prove import build_prompt, candidate_from_completion, prove_whole

runner = CliRunner()
HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 0\n\nopen BigOperators Real Nat Topology Rat\n\n"
PROBLEM = Problem(name="t1", split="test", header=HEADER, informal_prefix="/-- easy -/\n",
                  formal_statement="theorem t1 (a b : ℕ) : a + b = b + a := by\n", id="t1")


def test_prompt_templates() -> None:
    assert build_prompt(PROBLEM, "deepseek-prover-v1.5") == (
        "Complete the following Lean 4 code:\n\n```lean4\n" + HEADER + "/-- easy -/\n"
        + "theorem t1 (a b : ℕ) : a + b = b + a := by\n")
    assert build_prompt(PROBLEM, "plain") == HEADER + "/-- easy -/\ntheorem t1 (a b : ℕ) : a + b = b + a := by\n"
    with pytest.raises(ValueError, match="unknown prompt template 'chat'"):
        build_prompt(PROBLEM, "chat")


@pytest.mark.parametrize(("completion", "candidate_tail"), [
    ("  omega\n```\nSome prose after the fence", "  omega\n"),
    ("  omega", "  omega\n"),
    ("  simp [Nat.add_comm]\n\n\n", "  simp [Nat.add_comm]\n"),
    ("```", "\n"),
])
def test_candidate_is_statement_plus_completion_up_to_fence(completion: str, candidate_tail: str) -> None:
    candidate = candidate_from_completion(PROBLEM, completion)
    assert candidate == PROBLEM.formal_statement + candidate_tail, repr(candidate)


class ScriptedEngine:
    """A generation engine that returns fixed completions, to test the loop's bookkeeping
    without sampling noise (the real engines are tested in tests/policy and below)."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = list(texts)
        self.calls: list[tuple[list[str], SamplingConfig]] = []

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[PromptResult]:
        self.calls.append((list(prompts), sampling))
        return [PromptResult(p, (1,), tuple(Completion(t, (5, 6), (-0.1, -0.2), "stop") for t in self.texts[:sampling.n]))
                for p in prompts]


def test_prove_whole_bookkeeping_with_the_standin(tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"substring": "linarith", "messages": [
        {"severity": "error", "pos": {"line": 2, "column": 2}, "data": "linarith failed"}]}]}))
    engine = ScriptedEngine(["  sorry\n```", "  linarith\n```", "  omega\n```\nprose", "  omega\n"])
    other = PROBLEM.model_copy(update={"name": "t2", "id": "t2",
                                       "formal_statement": "theorem t2 (a : ℕ) : a + 0 = a := by\n"})
    with Verifier(VerifierConfig(backend="standin", standin_rules=rules, workers=2)) as verifier:
        results = list(prove_whole([PROBLEM, other], engine, verifier, SamplingConfig(n=4, stop=["\n\n\n"]),
                                   template="deepseek-prover-v1.5"))
    (prompts, sampling), = engine.calls
    assert len(prompts) == 2 and sampling.stop == ["\n\n\n", "```"], sampling
    assert [r.problem.id for r in results] == ["t1", "t2"]
    for result in results:
        outcomes = [(a.sample, a.verdict.kind, getattr(a.verdict, "reason", None)) for a in result.attempts]
        assert outcomes == [(0, "rejected", "forbidden"), (1, "rejected", "lean_error"),
                            (2, "accepted", None), (3, "accepted", None)], outcomes
        assert result.proof == result.problem.formal_statement + "  omega\n", result.proof
        assert all("stand-in" in a.verdict.checked_by for a in result.attempts)
    record = results[0].to_json()
    assert record["proved"] is True and len(record["attempts"]) == 4 and record["attempts"][2]["tokens"] == 2, record


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prove") / "tiny"
    result = runner.invoke(app, ["model", "init", "--preset", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_cli_prove_with_transformers_engine_and_standin(tiny_checkpoint: Path, tmp_path: Path,
                                                         shared_data: Path) -> None:
    rules = tmp_path / "reject.json"
    rules.write_text(json.dumps({"rules": [{"regex": r"#print\s+axioms", "messages": [
        {"severity": "error", "data": "stand-in REPL: no rule for this proof"}]}]}))
    out = tmp_path / "run"
    result = runner.invoke(app, ["prove", "whole", "--problems", "minif2f-valid", "--limit", "2",
                                 "--model", str(tiny_checkpoint), "--engine", "transformers", "--samples", "3",
                                 "--max-tokens", "16", "--seed", "1", "--out", str(out),
                                 "--standin", str(rules), "--json"])
    assert result.exit_code == 1, result.output   # an untrained model proves nothing
    summary = json.loads(result.stdout)
    assert (summary["total"], summary["proved"], summary["samples_per_problem"]) == (2, 0, 3), summary
    assert summary["backend"] == "stand-in (not Lean)" and "stand-in" in summary["checked_by"], summary
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    expected = [p.id for p in load_problems("minif2f-valid", limit=2)]
    assert [r["id"] for r in rows] == expected, rows
    assert all(len(r["attempts"]) == 3 and r["backend"] == "stand-in (not Lean)" for r in rows)
    assert all(a["tokens"] <= 16 and a["candidate"].startswith("theorem ") for r in rows for a in r["attempts"])
    resolved = (out / "config.resolved.toml").read_text()
    assert 'backend = "standin"' in resolved and 'engine = "transformers"' in resolved and "n = 3" in resolved, resolved


def test_cli_prove_bad_input(tmp_path: Path, tiny_checkpoint: Path) -> None:
    result = runner.invoke(app, ["prove", "whole", "--problems", "minif2f-valid", "--limit", "1"])
    assert result.exit_code == 2 and "no policy checkpoint: pass --model DIR" in result.stderr, result.output
    result = runner.invoke(app, ["prove", "whole", "--model", str(tmp_path), "--limit", "1"])
    assert result.exit_code == 2 and "not a checkpoint folder (no config.json)" in result.stderr, result.output
    result = runner.invoke(app, ["prove", "whole", "nope", "--problems", "minif2f-valid", "--model", str(tiny_checkpoint)])
    assert result.exit_code == 2 and "unknown problem name(s): nope" in result.stderr, result.output
    from lean_env.toolchain import find_toolchain

    if find_toolchain().complete:
        return  # with Lean installed the run would go ahead; the refusal below is for machines without it
    # No Lean here and no stand-in named: refuse before loading a model, never fall back.
    result = runner.invoke(app, ["prove", "whole", "--problems", "minif2f-valid", "--limit", "1",
                                 "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no Lean toolchain found" in result.stderr, result.output
