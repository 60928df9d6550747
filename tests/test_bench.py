"""`prover bench`: the pass@k estimator on hand-computed values, problem selection, the run
folder (resume, refusals, kill -9), the report and manifest, and `bench compare`."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policy.config import SamplingConfig
from policy.engines import Completion, PromptResult
from prover.bench.passk import pass_at_k, pass_at_k_table
from prover.bench.runner import load_method, select_problems
from prover.cli import app
from prover.errors import UserError

REPO = Path(__file__).resolve().parents[1]
REJECT = REPO / "lean_env" / "standin" / "tables" / "reject_unjudged.json"
ACCEPT = REPO / "lean_env" / "standin" / "tables" / "accept_unless_sorry.json"
runner = CliRunner()


# --- pass@k ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("n", "c", "k", "expected"), [
    (4, 1, 1, 0.25),                 # c / n
    (4, 1, 2, 0.5),                  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    (5, 2, 3, 0.9),                  # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (10, 3, 5, 1 - 21 / 252),        # 1 - C(7,5)/C(10,5)
    (4, 0, 4, 0.0),
    (4, 1, 4, 1.0),                  # n - c < k: every draw holds the correct one
    (8, 8, 1, 1.0),
])
def test_pass_at_k_hand_computed(n: int, c: int, k: int, expected: float) -> None:
    got = pass_at_k(n, c, k)
    assert math.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-15), f"pass@{k}(n={n}, c={c}) = {got}, want {expected}"


def test_pass_at_k_product_form_matches_binomials_where_they_overflow_floats() -> None:
    n, c, k = 2000, 7, 600   # C(2000, 600) ~ 1e530: float binomials overflow, exact integers do not
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)   # Python ints, exact division to float
    got = pass_at_k(n, c, k)
    assert math.isclose(got, exact, rel_tol=1e-9), (got, exact)


def test_pass_at_k_refuses_impossible_inputs() -> None:
    with pytest.raises(ValueError, match=r"k must lie in \[1, n\]: got k=8 with n=4"):
        pass_at_k(4, 1, 8)
    with pytest.raises(ValueError, match=r"got c=5, n=4"):
        pass_at_k(4, 5, 1)


def test_pass_at_k_table_mean_and_standard_error_across_problems() -> None:
    # per-problem pass@1 = 0.25, 0, 1: mean 5/12; sample variance ((1/6)^2 + (5/12)^2 + (7/12)^2) / 2
    # = 0.2708333; SE = sqrt(0.2708333 / 3) = 0.3004626
    table = pass_at_k_table([(4, 1), (4, 0), (4, 4)], [1, 4])
    one, four = table
    assert (one.k, one.problems) == (1, 3) and math.isclose(one.mean, 5 / 12), one
    assert one.se is not None and math.isclose(one.se, 0.30046260628866578, rel_tol=1e-9), one
    # pass@4 = 1, 0, 1: mean 2/3, SE = sqrt((1/9 + 4/9 + 1/9) / 2 / 3) = 1/3
    assert math.isclose(four.mean, 2 / 3) and four.se is not None and math.isclose(four.se, 1 / 3), four
    single, = pass_at_k_table([(4, 2)], [1])
    assert (single.mean, single.se) == (0.5, None), single


# --- problems and methods ---------------------------------------------------------------------

def test_suite_with_its_file_scores_the_suite_split(shared_data: Path, tmp_path: Path) -> None:
    chosen = select_problems(suite="minif2f-valid", problems=str(shared_data / "minif2f.jsonl"), split=None, limit=3)
    assert (chosen.label, chosen.split, len(chosen.problems)) == ("minif2f-valid", "valid", 3), chosen
    assert {p.split for p in chosen.problems} == {"valid"}, [p.split for p in chosen.problems]
    other = tmp_path / "minif2f.jsonl"
    other.write_text((shared_data / "minif2f.jsonl").read_text().splitlines()[0] + "\n")
    with pytest.raises(UserError, match="is not the copy suite minif2f-valid pins") as caught:
        select_problems(suite="minif2f-valid", problems=str(other), split=None, limit=None)
    assert "sha256" in str(caught.value), caught.value
    with pytest.raises(UserError, match="--split test contradicts suite minif2f-valid"):
        select_problems(suite="minif2f-valid", problems=str(shared_data / "minif2f.jsonl"), split="test", limit=None)


def test_every_method_is_available_and_an_unknown_one_says_so_in_one_line() -> None:
    assert [load_method(m) for m in ("whole", "repair", "search")] == ["whole", "repair", "search"]
    with pytest.raises(UserError) as info:
        load_method("beam")
    message = str(info.value)
    assert message.startswith("--method beam: unknown method 'beam'") and "\n" not in message, message
    assert "whole, repair, search" in message, message


# --- the acceptance run and the run folder ----------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "tiny"
    result = runner.invoke(app, ["model", "init", "--preset", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _bench(*args: str) -> object:
    return runner.invoke(app, ["bench", *args])


def test_acceptance_run_with_transformers_and_standin(tiny: Path, tmp_path: Path, shared_data: Path) -> None:
    """The issue's acceptance command (transformers engine, the stand-in): every output file,
    the manifest, the stand-in said everywhere; then resume, a changed config, compare."""
    out = tmp_path / "run"
    args = ["--suite", "minif2f-valid", "--problems", str(shared_data / "minif2f.jsonl"), "--limit", "4",
            "--n", "4", "--k", "1,4", "--model", str(tiny), "--engine", "transformers", "--max-tokens", "16",
            "--seed", "3", "--out", str(out), "--standin", str(REJECT)]
    result = _bench(*args)
    assert result.exit_code == 0, result.output
    assert "[stand-in (not Lean)]" in result.stdout and "pass@k" in result.stdout, result.stdout
    assert "verdicts come from the stand-in REPL" in result.stderr, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["config.resolved.toml", "passk.png", "report.md",
                                                     "results.jsonl", "summary.json"], list(out.iterdir())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["backend"] == "stand-in (not Lean)" for r in rows), rows
    assert all(len(r["attempts"]) == 4 and r["samples"] == 4 and r["correct"] == 0 for r in rows), rows
    attempt = rows[0]["attempts"][0]
    assert {"candidate", "tokens", "verdict"} <= attempt.keys() and "time_s" in attempt["verdict"], attempt
    assert "messages" in attempt["verdict"] or attempt["verdict"]["outcome"] != "rejected:lean_error", attempt

    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "stand-in (not Lean)" and summary["complete"] is True, summary
    assert summary["pass_at_k"] == [{"k": 1, "mean": 0.0, "se": 0.0, "problems": 4},
                                    {"k": 4, "mean": 0.0, "se": 0.0, "problems": 4}], summary["pass_at_k"]
    manifest = summary["manifest"]
    assert manifest["model"]["path"] == str(tiny) and len(manifest["model"]["weights"]["sha256"]) == 64, manifest["model"]
    assert manifest["template"]["name"] == "deepseek-prover-v1.5" and len(manifest["template"]["sha256"]) == 64, manifest
    assert manifest["sampling"]["seed"] == 3 and manifest["sampling"]["n"] == 4, manifest["sampling"]
    assert manifest["engine"]["name"] == "transformers" and manifest["engine"]["versions"]["torch"], manifest["engine"]
    lean = manifest["lean"]
    assert lean["toolchain"].endswith("v4.19.0") and lean["mathlib"] and lean["repl"], lean
    assert lean["headers"][0]["text"].startswith("import Mathlib") and lean["headers"][0]["problems"] == 4, lean
    verifier = manifest["verifier"]
    assert verifier["standin"] is True and verifier["timeout_s"] > 0, verifier
    assert verifier["allowed_axioms"] == ["propext", "Classical.choice", "Quot.sound"], verifier
    assert "final_judge" in verifier and verifier["standin_rules_sha256"], verifier
    dataset = manifest["dataset"]
    assert (dataset["name"], dataset["split"], dataset["problems"]) == ("minif2f-valid", "valid", 4), dataset
    assert dataset["sha256"] == "d6654c88476ff14db19d57dea25bd955a240525fb52171e460f89d98f83d7dd5", dataset

    report = (out / "report.md").read_text()
    for needle in ("stand-in (not Lean)", "| 1 | 0.0% | 0.0% | 4 |", manifest["model"]["weights"]["sha256"],
                   dataset["sha256"], "Mathlib v4.19.0", "timeout", "allowed axioms", manifest["template"]["sha256"]):
        assert needle in report, f"{needle!r} not in report.md:\n{report}"
    assert (out / "passk.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 'backend = "standin"' in (out / "config.resolved.toml").read_text()

    again = _bench(*args, "--resume")   # nothing left: no engine starts, nothing counted twice
    assert again.exit_code == 0 and "4 of 4 problems already done" in again.stderr, again.output
    assert "starting transformers" not in again.stderr, again.stderr
    assert len((out / "results.jsonl").read_text().splitlines()) == 4

    changed = _bench(*[a if a != "4" or i != args.index("--n") + 1 else "2" for i, a in enumerate(args)],
                     "--k", "1", "--resume")
    assert changed.exit_code == 2, changed.output
    assert "--resume with a different config" in changed.stderr and "policy.sampling.n: 4 -> 2" in changed.stderr, \
        changed.stderr

    compared = runner.invoke(app, ["bench", "compare", str(out), str(out), "--json"])
    assert compared.exit_code == 0, compared.output
    diff = json.loads(compared.stdout)
    assert diff["common_problems"] == 4 and [r["diff"] for r in diff["pass_at_k"]] == [0.0, 0.0], diff["pass_at_k"]


class ScriptedEngine:
    """Fixed completions, `delay_s` per engine call: sample j of a prompt is a proof the
    stand-in accepts (`omega`) when j < len(prompt) % 3, else `sorry`."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s

    def __enter__(self) -> ScriptedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[PromptResult]:
        time.sleep(self.delay_s)
        return [PromptResult(p, (1,), tuple(
            Completion("  omega\n```" if j < len(p) % 3 else "  sorry\n```", (5, 6), (-0.1, -0.2), "stop")
            for j in range(sampling.n))) for p in prompts]


DRIVER = """
import sys, time
sys.path.append({tests!r})   # after the checkout: tests/policy must not shadow policy
import policy.engines
from test_bench import ScriptedEngine
policy.engines.make_engine = lambda config: ScriptedEngine(delay_s=0.6)
from prover.cli import app
app({args!r})
"""


def test_kill_9_mid_run_loses_only_problems_in_flight_and_resume_counts_each_once(
        tiny: Path, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    args = ["bench", "--suite", "minif2f-valid", "--limit", "8", "--n", "4", "--k", "1,2,4", "--model", str(tiny),
            "--problems-per-batch", "1", "--seed", "5", "--out", str(out), "--standin", str(ACCEPT), "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", DRIVER.format(tests=str(REPO / "tests"), args=args)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if results.is_file() and len(results.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert process.poll() is None, f"the run ended before it was killed: {process.stderr.read()[-2000:]}"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    before = results.read_text().splitlines()
    assert 3 <= len(before) < 8, f"{len(before)} problems written before kill -9"
    assert not (out / "summary.json").exists() or not json.loads((out / "summary.json").read_text())["complete"]

    monkeypatch.setattr("policy.engines.make_engine", lambda config: ScriptedEngine())
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert f"{len(before)} of 8 problems already done" in resumed.stderr, resumed.stderr
    after = results.read_text().splitlines()
    assert after[:len(before)] == before, "records written before the kill changed on resume"
    ids = [json.loads(line)["id"] for line in after]
    assert len(ids) == 8 and len(set(ids)) == 8, f"ids after resume: {ids}"
    summary = json.loads(resumed.stdout)
    assert (summary["done"], summary["total"], summary["complete"]) == (8, 8, True), summary
    rows = [json.loads(line) for line in after]
    expected = pass_at_k_table([(r["samples"], r["correct"]) for r in rows], [1, 2, 4])
    assert summary["pass_at_k"] == [row.to_json() for row in expected], (summary["pass_at_k"], expected)
    assert any(r["correct"] for r in rows) and not all(r["correct"] == 4 for r in rows), \
        [r["correct"] for r in rows]   # a table that tells the estimator's values apart


def test_sigterm_mid_run_exits_130_with_a_partial_summary_and_report(tiny: Path, tmp_path: Path,
                                                                       shared_data: Path) -> None:
    out = tmp_path / "run"
    args = ["bench", "--suite", "minif2f-valid", "--limit", "8", "--n", "2", "--k", "1", "--model", str(tiny),
            "--problems-per-batch", "1", "--seed", "5", "--out", str(out), "--standin", str(ACCEPT)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", DRIVER.format(tests=str(REPO / "tests"), args=args)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    results = out / "results.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if results.is_file() and len(results.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, f"exit {process.returncode}: {stderr[-2000:]}"
    done = len(results.read_text().splitlines())
    assert f"interrupted: {done}/8 written to {out}" in stderr, stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["done"], summary["complete"], summary["interrupted"]) == (done, False, True), summary
    assert summary["pass_at_k"][0]["problems"] == done, summary["pass_at_k"]
    report = (out / "report.md").read_text()
    assert f"Partial run: {done}/8 problems done" in report and "stand-in (not Lean)" in report, report[:600]


@pytest.mark.slow
def test_rollout_benchmark_rows_share_one_workload(shared_data: Path, tmp_path: Path) -> None:
    """`python -m benchmarks.rollout` as a user runs it: raw vLLM, our engine and prove_whole
    generate the same tokens (one seed, one LLM), and the JSON holds each row's ratio."""
    out = tmp_path / "rollout.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.rollout", "--prompts", "1", "--samples", "2",
                           "--max-tokens", "8", "--repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=400, env=env, cwd=REPO)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    report = json.loads(out.read_text())
    rows = {r["row"]: r for r in report["results"]}
    assert list(rows) == ["raw_vllm", "ours_engine", "ours_whole", "transformers"], list(rows)
    tokens = {name: row["tokens"] for name, row in rows.items()}
    assert tokens["raw_vllm"] == tokens["ours_engine"] == tokens["ours_whole"] > 0, tokens
    assert all(row["tokens_per_s"] == pytest.approx(row["tokens"] / row["seconds"]) for row in rows.values()), rows
    assert report["over_raw_vllm"]["raw_vllm"] == 1.0 and set(report["over_raw_vllm"]) == set(rows), report
    assert "ours_whole" in done.stdout and "/ raw vLLM" in done.stdout, done.stdout[-2000:]


# --- best-first search is one trial per problem (audit of issue 10) ---------------------------

def test_a_search_counts_as_one_trial_per_problem_whatever_n() -> None:
    """A proved search's record holds one attempt (the proof found); an unproved one holds none.
    Counted as n samples (failed) or 1 (proved), pass@k mixed the two and crashed for k > 1."""
    from prover.bench.runner import counts, summarize_bench

    proved = {"id": "a", "proved": True, "outcome": "proved", "method": "search", "search": {"expansions": 3},
              "attempts": [{"verdict": {"outcome": "accepted"}}]}
    failed = {"id": "b", "proved": False, "outcome": "not_proved", "method": "search", "search": {"expansions": 9},
              "attempts": []}
    assert (counts(proved, 4), counts(failed, 4)) == ((1, 1), (1, 0)), (counts(proved, 4), counts(failed, 4))
    table = summarize_bench([proved, failed], ks=[1], n=4)["pass_at_k"]
    assert table == [{"k": 1, "mean": 0.5, "se": 0.5, "problems": 2}], table


def test_bench_search_with_k_above_one_is_refused_before_any_work(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _bench("--suite", "minif2f-valid", "--limit", "2", "--n", "4", "--k", "1,4", "--method", "search",
                    "--model", str(tiny), "--out", str(out), "--standin", str(REJECT))
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "--method search runs one search per problem" in message and "--k 1" in message, message
    assert "\n" not in message and "Traceback" not in result.output, result.output
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_the_method_is_recorded_kept_by_a_rerun_and_a_changed_one_refused_on_resume(
        tiny: Path, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--method` is part of the job: before, bench never recorded it, so `--resume --method
    repair` appended to a whole-proof run (and relabelled it), and a re-run from
    config.resolved.toml scored `whole` whatever the first run used."""
    monkeypatch.setattr("policy.engines.make_engine", lambda config: ScriptedEngine())
    out = tmp_path / "run"
    args = ["--suite", "minif2f-valid", "--limit", "2", "--n", "2", "--k", "1", "--model", str(tiny),
            "--seed", "5", "--out", str(out), "--standin", str(ACCEPT)]
    first = _bench(*args, "--method", "repair", "--json")
    assert first.exit_code == 0, first.output
    assert 'method = "repair"' in (out / "config.resolved.toml").read_text()
    changed = _bench(*args, "--method", "whole", "--resume")
    assert changed.exit_code == 2, changed.output
    assert "run.method: 'repair' -> 'whole'" in changed.stderr, changed.stderr
    again = runner.invoke(app, ["--config", str(out / "config.resolved.toml"), "bench", "--out", str(tmp_path / "again"),
                                "--standin", str(ACCEPT), "--json"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["method"] == "repair" and summary["manifest"]["method"] == "repair", summary["method"]


def test_a_template_brings_its_published_sampling_where_none_is_set(
        tiny: Path, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in `prover prove`: Kimina-Prover's published temperature 0.8 and 16000 tokens apply
    unless the user sets them (README: "the template supplies those that are published")."""
    seen: list[SamplingConfig] = []

    class Recording(ScriptedEngine):
        def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[PromptResult]:
            seen.append(sampling)
            return super().generate(prompts, sampling)

    monkeypatch.setattr("policy.engines.make_engine", lambda config: Recording())
    args = ["--suite", "minif2f-valid", "--limit", "1", "--n", "2", "--k", "1", "--model", str(tiny), "--seed", "5",
            "--template", "kimina-prover", "--standin", str(ACCEPT), "--json"]
    published = _bench(*args, "--out", str(tmp_path / "published"))
    assert published.exit_code == 0, published.output
    sampling = json.loads(published.stdout)["manifest"]["sampling"]
    assert (sampling["temperature"], sampling["max_tokens"], sampling["n"]) == (0.8, 16000, 2), sampling
    assert seen and (seen[0].temperature, seen[0].max_tokens) == (0.8, 16000), seen
    chosen = _bench(*args, "--temperature", "0.5", "--max-tokens", "64", "--out", str(tmp_path / "chosen"))
    assert chosen.exit_code == 0, chosen.output
    sampling = json.loads(chosen.stdout)["manifest"]["sampling"]
    assert (sampling["temperature"], sampling["max_tokens"]) == (0.5, 64), sampling


def test_bench_budgets_reach_the_method_are_recorded_and_undrawn_samples_count_as_failed(
        tiny: Path, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 10 items 4 and 6: bench takes the budgets every method has. --budget-samples 2 with
    --n 4 draws 2 samples per problem; pass@k is then over n = 4 with the 2 undrawn failed."""
    monkeypatch.setattr("policy.engines.make_engine", lambda config: ScriptedEngine())
    out = tmp_path / "run"
    result = _bench("--suite", "minif2f-valid", "--limit", "3", "--n", "4", "--k", "1,4", "--model", str(tiny),
                    "--seed", "5", "--budget-samples", "2", "--out", str(out), "--standin", str(ACCEPT), "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [len(r["attempts"]) for r in rows] == [2, 2, 2], [len(r["attempts"]) for r in rows]
    assert all(r["samples"] == 4 and r["spent"]["samples"] == 2 for r in rows), rows
    summary = json.loads(result.stdout)
    expected = pass_at_k_table([(4, r["correct"]) for r in rows], [1, 4])
    assert summary["pass_at_k"] == [row.to_json() for row in expected], (summary["pass_at_k"], expected)
    options = summary["manifest"]["method_options"]
    assert options["budget"] == {"samples": 2, "tokens": None, "wall_s": None}, options
    assert "budget_samples = 2" in (out / "config.resolved.toml").read_text()

    repair = _bench("--suite", "minif2f-valid", "--limit", "1", "--n", "1", "--k", "1", "--model", str(tiny),
                    "--seed", "5", "--method", "repair", "--rounds", "1", "--out", str(tmp_path / "repair"),
                    "--standin", str(REJECT), "--json")
    assert repair.exit_code == 0, repair.output
    row = json.loads((tmp_path / "repair" / "results.jsonl").read_text().splitlines()[0])
    assert [a.get("round", 0) for a in row["attempts"]] == [0, 1], row["attempts"]   # one correction round, not two
    assert json.loads(repair.stdout)["manifest"]["method_options"]["rounds"] == 1
    report = (tmp_path / "repair" / "report.md").read_text()
    assert "- method options: budget = " in report and "rounds = 1" in report, report[:1500]


def test_the_manifest_pins_the_tokenizer_files_the_chat_template_renders_through(
        tiny: Path, tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chat templates go through the model's own chat template (tokenizer_config.json or
    chat_template.jinja): two checkpoints with the same weights and another chat template sent
    other prompts, yet their manifests were equal (only the weights were hashed)."""
    import shutil

    monkeypatch.setattr("policy.engines.make_engine", lambda config: ScriptedEngine())
    other = tmp_path / "other"
    shutil.copytree(tiny, other)
    (other / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    digests = []
    for model in (tiny, other):
        result = _bench("--suite", "minif2f-valid", "--limit", "1", "--n", "1", "--k", "1", "--model", str(model),
                        "--seed", "5", "--out", str(tmp_path / model.name / "run"), "--standin", str(ACCEPT), "--json")
        assert result.exit_code == 0, result.output
        model_entry = json.loads(result.stdout)["manifest"]["model"]
        digests.append(model_entry["tokenizer_files"])
        report = (tmp_path / model.name / "run" / "report.md").read_text()
        assert model_entry["tokenizer_files"]["sha256"] in report, report[:1200]
    assert set(digests[0]["files"]) == {"tokenizer.json", "tokenizer_config.json"}, digests[0]
    assert set(digests[1]["files"]) == {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"}, digests[1]
    assert len(digests[0]["sha256"]) == 64 and digests[0]["sha256"] != digests[1]["sha256"], digests
    changed = tmp_path / "other" / "chat_template.jinja"
    changed.write_text("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}{% endfor %}")
    resumed = _bench("--suite", "minif2f-valid", "--limit", "1", "--n", "1", "--k", "1", "--model", str(other),
                     "--seed", "5", "--out", str(tmp_path / "other" / "run"), "--standin", str(ACCEPT), "--resume")
    assert resumed.exit_code == 2 and "--resume with different tokenizer files" in resumed.stderr, resumed.output
