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
from prover.prompts import build_prompt, candidate_from_completion
from prover.search.attempts import prompt_fit
from prover.search.whole import prove_whole

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
        outcomes = [(a.sample, a.verdict.outcome) for a in result.attempts]
        assert outcomes == [(0, "rejected:forbidden"), (1, "rejected:lean_error"),
                            (2, "accepted"), (3, "accepted")], outcomes
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
    assert result.exit_code == 2 and "has no config.json (not a Hugging Face checkpoint folder)" in result.stderr, result.output
    result = runner.invoke(app, ["prove", "whole", "nope", "--problems", "minif2f-valid", "--model", str(tiny_checkpoint)])
    assert result.exit_code == 2 and "unknown problem name(s): nope" in result.stderr, result.output
    from lean_env.toolchain import find_toolchain

    if find_toolchain().complete:
        return  # with Lean installed the run would go ahead; the refusal below is for machines without it
    # No Lean here and no stand-in named: could not check (3), before loading a model, never fall back.
    result = runner.invoke(app, ["prove", "whole", "--problems", "minif2f-valid", "--limit", "1",
                                 "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o")])
    assert result.exit_code == 3 and "no Lean toolchain found" in result.stderr, result.output


def test_prompt_longer_than_the_context_is_a_per_problem_outcome(tmp_path: Path) -> None:
    engine = ScriptedEngine(["  omega\n```"])
    long = PROBLEM.model_copy(update={"name": "t2", "id": "t2", "informal_prefix": "/-- " + "long " * 50 + "-/\n"})
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": []}))
    fits = prompt_fit(len, context=200)   # one "token" per character
    with Verifier(VerifierConfig(backend="standin", standin_rules=rules, workers=1)) as verifier:
        results = list(prove_whole([long, PROBLEM], engine, verifier, SamplingConfig(n=1), template="plain",
                                   problems_per_batch=2, prompt_check=fits))
    assert [(r.problem.id, r.outcome) for r in results] == [("t2", "not_checked:prompt_too_long"), ("t1", "proved")], \
        [(r.problem.id, r.outcome, r.detail) for r in results]
    assert results[0].detail == f"prompt of {len(build_prompt(long, 'plain'))} tokens leaves no room for a proof " \
        "in the context of 200 tokens", results[0].detail
    assert engine.calls[0][0] == [build_prompt(PROBLEM, "plain")], "the long prompt never reaches the engine"


@pytest.mark.parametrize("stream", [False, True])
def test_prove_whole_yields_each_batch_as_it_is_verified(tmp_path: Path, stream: bool) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": []}))
    engine = ScriptedEngine(["  omega\n```", "  simp\n```"])
    problems = [PROBLEM.model_copy(update={"name": f"t{i}", "id": f"t{i}", "formal_statement": PROBLEM.formal_statement
                                           .replace("t1", f"t{i}", 1)}) for i in range(5)]
    verified: list[int] = []
    with Verifier(VerifierConfig(backend="standin", standin_rules=rules, workers=2)) as verifier:
        results = prove_whole(problems, engine, verifier, SamplingConfig(n=2), template="plain",
                              problems_per_batch=2, on_verified=verified.append, stream=stream)
        first = next(results)
        # without streaming: one batch of two problems, generated then verified, nothing more;
        # streaming: the engine samples on while the verifier checks, and a result comes once
        # it is verified (timing and overlap: tests/test_whole_stream.py)
        if stream:
            assert first.problem.id == "t0" and sum(verified) >= 2, (first.problem.id, verified)
        else:
            assert (first.problem.id, len(engine.calls)) == ("t0", 1) and sum(verified) >= 4, \
                (first.problem.id, len(engine.calls), verified)
        rest = list(results)
    assert [len(prompts) for prompts, _ in engine.calls] == [2, 2, 1], engine.calls
    assert [r.problem.id for r in [first, *rest]] == [p.id for p in problems] and sum(verified) == 10, verified


def _prove_args(checkpoint: Path, out: Path, rules: Path, *extra: str) -> list[str]:
    return ["prove", "whole", "--problems", "minif2f-valid", "--model", str(checkpoint), "--engine", "transformers",
            "--samples", "2", "--max-tokens", "8", "--out", str(out), "--standin", str(rules),
            "--problems-per-batch", "1", *extra]


@pytest.fixture()
def reject_rules(tmp_path: Path) -> Path:
    rules = tmp_path / "reject.json"
    rules.write_text(json.dumps({"rules": [{"regex": r"#print\s+axioms", "sleep_s": 0.1, "messages": [
        {"severity": "error", "data": "stand-in REPL: no rule for this proof"}]}]}))
    return rules


def test_ctrl_c_keeps_every_finished_problem(tiny_checkpoint: Path, tmp_path: Path, reject_rules: Path,
                                             shared_data: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    results = out / "results.jsonl"
    root = Path(__file__).resolve().parents[1]
    process = subprocess.Popen(
        [sys.executable, "-c", "from prover.cli import main; main()",
         *_prove_args(tiny_checkpoint, out, reject_rules, "--limit", "40")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))   # a background shell ignores SIGINT
    deadline = time.monotonic() + 120
    while not (results.is_file() and results.read_text().count("\n") >= 1) and process.poll() is None:
        assert time.monotonic() < deadline, "no result written within 120 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, (process.returncode, stderr[-2000:])
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert 1 <= len(rows) < 40 and all(len(r["attempts"]) == 2 for r in rows), rows
    assert f"interrupted: {len(rows)}/40 written to {out}" in stderr.splitlines(), stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["total"], summary["complete"], summary["interrupted"]) == (
        len(rows), 40, False, True), summary
    assert stdout.count("not proved: ") == len(rows), stdout   # stdout: one line per written result


def test_resume_skips_finished_problems_and_completes_the_run(tiny_checkpoint: Path, tmp_path: Path,
                                                              reject_rules: Path, shared_data: Path) -> None:
    out = tmp_path / "run"
    args = _prove_args(tiny_checkpoint, out, reject_rules, "--limit", "3", "--json")
    first = runner.invoke(app, args)
    assert first.exit_code == 1, first.output
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(lines[0] + "\n" + lines[1][:40])   # as if killed while writing the second
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "folder is not empty" in refused.stderr, refused.output
    assert (out / "results.jsonl").read_text().startswith(lines[0]), "a refused run writes nothing"
    different = runner.invoke(app, [*args, "--resume", "--samples", "3"])
    assert different.exit_code == 2 and "policy.sampling.n: 2 -> 3" in different.stderr, different.output
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 1, resumed.output
    assert "resuming" in resumed.stderr and "1 of 3 problems already done" in resumed.stderr, resumed.stderr
    rows = (out / "results.jsonl").read_text().splitlines()
    assert len(rows) == 3 and rows[0] == lines[0], rows
    summary = json.loads(resumed.stdout)
    assert (summary["done"], summary["total"], summary["complete"]) == (3, 3, True), summary
    # An untrained model's samples are rejected, by the static layer or the stand-in (which one
    # depends on the random text): 2 samples x 3 problems, none lost or counted twice.
    assert sum(summary["samples"].values()) == 6, summary
    assert all(k.startswith("rejected:") for k in summary["samples"]), summary
    forced = runner.invoke(app, [*args, "--force", "--limit", "1"])
    assert forced.exit_code == 1 and len((out / "results.jsonl").read_text().splitlines()) == 1, forced.output


def test_resolved_config_reruns_the_same_job(tiny_checkpoint: Path, tmp_path: Path, reject_rules: Path,
                                             shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil
    import tomllib

    first_dir = tmp_path / "a"
    first_dir.mkdir()
    shutil.copy(reject_rules, first_dir / "rules.json")
    monkeypatch.chdir(first_dir)   # relative paths on the command line: the config records absolute ones
    first = runner.invoke(app, ["prove", "whole", "mathd_algebra_10", "amc12a_2019_p21", "--problems",
                                str(shared_data / "minif2f.jsonl"),
                                "--split", "valid", "--model", str(tiny_checkpoint), "--engine", "transformers",
                                "--samples", "2", "--max-tokens", "8", "--out", "run", "--standin", "rules.json",
                                "--json"])
    assert first.exit_code == 1, first.output
    json.loads(first.stdout)   # stdout is one JSON document: progress went to stderr
    assert "progress: 2/2 problems, 4 samples verified, 0 proved" in first.stderr, first.stderr
    written = tomllib.loads((first_dir / "run" / "config.resolved.toml").read_text())
    job = written["run"]
    assert (job["command"], job["problems"], job["split"], job["names"]) == (
        "prove whole", str(shared_data / "minif2f.jsonl"), "valid", ["mathd_algebra_10", "amc12a_2019_p21"]), job
    assert job["problems_file"].endswith("minif2f.jsonl") and len(job["problems_sha256"]) == 64, job
    assert job["argv"] and all(isinstance(a, str) for a in job["argv"]), job   # this process's (pytest's) here
    assert written["verifier"]["standin_rules"] == str(first_dir / "rules.json"), written["verifier"]
    assert isinstance(written["policy"]["sampling"]["seed"], int), "a drawn seed is recorded"

    monkeypatch.chdir(tmp_path)
    again = runner.invoke(app, ["--config", str(first_dir / "run" / "config.resolved.toml"), "prove", "whole",
                                "--out", "b", "--json"])
    assert again.exit_code == 1, again.output

    def attempts(folder: Path) -> list[tuple[str, list[tuple[str, str]]]]:
        rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
        return [(r["id"], [(a["candidate"], a["verdict"]["outcome"]) for a in r["attempts"]]) for r in rows]

    assert attempts(tmp_path / "b") == attempts(first_dir / "run"), (attempts(tmp_path / "b"), attempts(first_dir / "run"))
    rerun = tomllib.loads((tmp_path / "b" / "config.resolved.toml").read_text())
    assert {k: v for k, v in rerun.items() if k not in ("output_dir", "run")} == {
        k: v for k, v in written.items() if k not in ("output_dir", "run")}, (rerun, written)


def test_cli_prompt_too_long_does_not_abort_the_run(tiny_checkpoint: Path, tmp_path: Path, reject_rules: Path) -> None:
    problems = tmp_path / "two.jsonl"
    short = {"name": "short", "split": "test", "header": "import Mathlib\n", "informal_prefix": "",
             "formal_statement": "theorem short : True := by\n", "goal": ""}
    long = short | {"name": "long", "informal_prefix": "/-- " + "a long comment " * 100 + "-/\n",
                    "formal_statement": "theorem long : True := by\n"}
    problems.write_text(json.dumps(long) + "\n" + json.dumps(short) + "\n")
    config = tmp_path / "small.toml"
    config.write_text("[policy]\nmax_model_len = 64\n")
    result = runner.invoke(app, ["--config", str(config), "prove", "whole", "--problems", str(problems),
                                 "--model", str(tiny_checkpoint), "--engine", "transformers", "--samples", "1",
                                 "--max-tokens", "4", "--out", str(tmp_path / "run"), "--standin", str(reject_rules)])
    assert result.exit_code == 1, result.output
    assert "NOT CHECKED: long (prompt_too_long: prompt of" in result.stdout, result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["outcomes"] == {"not_checked:prompt_too_long": 1, "not_proved": 1}, summary


def test_budget_meter_reports_which_limit_is_spent():
    from prover.search.attempts import Budget, BudgetMeter
    now = [0.0]
    meter = BudgetMeter(Budget(samples=4, tokens=100, wall_s=2.0), clock=lambda: now[0])
    assert meter.exhausted() is None, meter.to_json()
    meter.spend(samples=3, tokens=100)
    assert meter.exhausted() == "tokens", meter.to_json()
    meter.spend(samples=1)
    assert meter.exhausted() == "samples", meter.to_json()
    assert meter.samples_left() == 0, meter.samples_left()
    only_time = BudgetMeter(Budget(wall_s=2.0), clock=lambda: now[0])
    now[0] = 2.5
    assert only_time.exhausted() == "wall_s", only_time.to_json()
    with pytest.raises(ValueError, match="got 0"):
        Budget(samples=0)


def test_cli_prove_theorem_string_with_repair(tiny_checkpoint: Path, tmp_path: Path) -> None:
    rules = tmp_path / "reject.json"
    rules.write_text(json.dumps({"rules": [{"regex": r"#print\s+axioms", "messages": [
        {"severity": "error", "pos": {"line": 2, "column": 2}, "data": "stand-in: no rule"}]}]}))
    out = tmp_path / "run"
    result = runner.invoke(app, ["prove", "theorem foo : 1 + 1 = 2 := by sorry", "--model", str(tiny_checkpoint),
                                 "--engine", "transformers", "--method", "repair", "--rounds", "1", "--samples", "2",
                                 "--max-tokens", "8", "--budget-samples", "3", "--seed", "1", "--out", str(out),
                                 "--standin", str(rules), "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert (summary["method"], summary["total"], summary["budget"]["samples"]) == ("repair", 1, 3), summary
    brief, = summary["results"]
    assert brief["id"] == "foo" and brief["spent"]["samples"] == 3, brief   # 2 samples + 1 correction
    assert brief["best_attempt"]["messages"][0] == "2:2: error: stand-in: no rule", brief
    assert (out / "theorem.lean").read_text().startswith("import Mathlib\nimport Aesop\n"), "the default header"
    row = json.loads((out / "results.jsonl").read_text())
    assert [a.get("round", 0) for a in row["attempts"]] == [0, 0, 1], row["attempts"]


def test_cli_prove_lean_file_and_bad_targets(tiny_checkpoint: Path, tmp_path: Path) -> None:
    rules = tmp_path / "accept.json"
    rules.write_text(json.dumps({"rules": []}))
    lean = tmp_path / "two.lean"
    lean.write_text("import Mathlib\n\ntheorem a1 : 1 = 1 := by\n  sorry\n\ntheorem a2 : 2 = 2 := by sorry\n")
    result = runner.invoke(app, ["prove", str(lean), "--model", str(tiny_checkpoint), "--engine", "transformers",
                                 "--samples", "1", "--max-tokens", "4", "--out", str(tmp_path / "run"),
                                 "--standin", str(rules)])
    assert result.exit_code in (0, 1), result.output
    assert "a1" in result.stdout and "a2" in result.stdout and "[stand-in (not Lean)]" in result.stdout, result.stdout
    mixed = runner.invoke(app, ["prove", str(lean), "mathd_algebra_10", "--model", str(tiny_checkpoint),
                                "--out", str(tmp_path / "run2")])
    assert mixed.exit_code == 2 and "not a mix" in mixed.stderr, mixed.output
    header = runner.invoke(app, ["prove", "mathd_algebra_10", "--header", "import Mathlib", "--model",
                                 str(tiny_checkpoint), "--out", str(tmp_path / "run3")])
    assert header.exit_code == 2 and "--header applies only" in header.stderr, header.output
    method = runner.invoke(app, ["prove", "x", "--method", "mcts", "--model", str(tiny_checkpoint)])
    assert method.exit_code == 2 and "expected one of whole, repair, search, got 'mcts'" in method.stderr, method.output


def test_cli_prove_search_runs_best_first_or_says_it_is_not_available(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import importlib.util
    args = ["prove", "theorem foo : 1 + 1 = 2 := by sorry", "--method", "search", "--expansions", "2",
            "--samples", "2", "--max-tokens", "8", "--engine", "transformers", "--model", str(tiny_checkpoint),
            "--out", str(tmp_path / "run"), "--standin", str(Path(__file__).parent / "lean_env/rules/basic.json")]
    result = runner.invoke(app, args)
    if importlib.util.find_spec("prover.search.best_first") is None:
        assert result.exit_code == 2 and "method 'search' (best-first tactic search) is not available" in \
            result.stderr, result.output
    else:   # the stand-in closes every goal with any tactic: the first expansion proves it
        assert result.exit_code == 0 and "PROVED: foo" in result.stdout, result.output


def test_resolved_config_keeps_the_method_and_its_budgets(tiny_checkpoint: Path, tmp_path: Path,
                                                          reject_rules: Path) -> None:
    """`prover --config DIR/config.resolved.toml prove` re-runs the same method with the same
    budgets (before, a re-run from the file fell back to whole-proof sampling)."""
    import tomllib

    first = runner.invoke(app, ["prove", "mathd_algebra_10", "--problems", "minif2f-valid", "--model",
                                str(tiny_checkpoint), "--engine", "transformers", "--samples", "1",
                                "--max-tokens", "8", "--method", "repair", "--rounds", "1",
                                "--budget-samples", "2", "--out", str(tmp_path / "a"),
                                "--standin", str(reject_rules), "--json"])
    assert first.exit_code == 1, first.output
    job = tomllib.loads((tmp_path / "a" / "config.resolved.toml").read_text())["run"]
    assert (job["method"], job["rounds"], job["budget_samples"]) == ("repair", 1, 2), job
    again = runner.invoke(app, ["--config", str(tmp_path / "a" / "config.resolved.toml"), "prove",
                                "--out", str(tmp_path / "b"), "--json"])
    assert again.exit_code == 1, again.output
    rerun = tomllib.loads((tmp_path / "b" / "config.resolved.toml").read_text())["run"]
    assert (rerun["method"], rerun["rounds"], rerun["budget_samples"]) == ("repair", 1, 2), rerun
    rows = [json.loads(line) for line in (tmp_path / "b" / "results.jsonl").read_text().splitlines()]
    rounds = sorted({a.get("round", 0) for r in rows for a in r["attempts"]})
    assert rounds == [0, 1] and sum(len(r["attempts"]) for r in rows) == 2, rows


def test_cli_prove_search_reports_what_the_search_spent(tiny_checkpoint: Path, tmp_path: Path,
                                                        reject_rules: Path) -> None:
    """Item 5: a problem not proved shows the budget spent. A search has no attempts and no
    budget meter, so before it printed `not proved: foo (0 samples: )` and `"spent": null`."""
    args = ["prove", "theorem foo : 1 + 1 = 2 := by sorry", "--method", "search", "--expansions", "2",
            "--samples", "2", "--max-tokens", "8", "--engine", "transformers", "--model", str(tiny_checkpoint),
            "--standin", str(reject_rules)]
    shown = runner.invoke(app, [*args, "--out", str(tmp_path / "a")])
    assert shown.exit_code == 1, shown.output
    line = next(x for x in shown.stdout.splitlines() if "not proved: foo" in x)
    assert "best-first:" in line and "expansions" in line and "tactic calls" in line and "; spent " in line, line
    as_json = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--json"])
    assert as_json.exit_code == 1, as_json.output
    spent = json.loads(as_json.stdout)["results"][0]["spent"]
    assert spent is not None and 1 <= spent["expansions"] <= 2 and spent["samples"] == 2 * spent["expansions"], spent
