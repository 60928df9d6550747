"""`prover distill`: a bench run whose accepted proofs become an SFT corpus. Only accepted
proofs are written, one per distinct normalised text of a problem, each with its provenance;
an interrupted run keeps what was verified and --resume completes the corpus."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from policy.config import SamplingConfig
from policy.engines import Completion, PromptResult
from prover.checking import load_proofs, match_problems
from prover.cli import app
from prover.corpus_rows import normalized, tactic_names
from prover.distill import model_name
from prover.problems import load_problems

REPO = Path(__file__).resolve().parents[1]
ACCEPT = REPO / "lean_env" / "standin" / "tables" / "accept_unless_sorry.json"
runner = CliRunner()

# Samples per prompt, in order: two spellings of one proof (comment, spacing), a proof the
# stand-in rejects (`sorry`), and a second distinct proof.
COMPLETIONS = ("  omega\n```", "  -- the same proof, spelled differently\n    omega   \n```", "  sorry\n```",
               "  simp\n  linarith\n```")


class ScriptedEngine:
    """Fixed completions (COMPLETIONS, cycled); raises KeyboardInterrupt (a Ctrl-C) on call
    number `interrupt_on` (1-based), after the earlier calls' problems were written."""

    def __init__(self, interrupt_on: int | None = None) -> None:
        self.calls, self.interrupt_on = 0, interrupt_on

    def __enter__(self) -> ScriptedEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[PromptResult]:
        self.calls += 1
        if self.calls == self.interrupt_on:
            raise KeyboardInterrupt
        return [PromptResult(p, (1,), tuple(Completion(COMPLETIONS[j % len(COMPLETIONS)], (5, 6), (-0.1, -0.2), "stop")
                                            for j in range(sampling.n))) for p in prompts]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("distill") / "tiny"
    result = runner.invoke(app, ["model", "init", "--preset", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _args(tiny: Path, out: Path, *extra: str) -> list[str]:
    return ["distill", "--suite", "minif2f-valid", "--limit", "4", "-n", "4", "--model", str(tiny),
            "--problems-per-batch", "1", "--seed", "7", "--max-tokens", "8", "--out", str(out),
            "--standin", str(ACCEPT), *extra]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_normalised_text_ignores_comments_and_spacing_only() -> None:
    a = "theorem t : 1 + 1 = 2 := by\n  norm_num -- done\n"
    b = "theorem t : 1 + 1 = 2 := by /- block\n comment -/\n      norm_num\n"
    assert normalized(a) == normalized(b) == "theorem t : 1 + 1 = 2 := by norm_num", (normalized(a), normalized(b))
    assert normalized(a) != normalized(a.replace("norm_num", "simp")), "a different tactic must differ"
    assert normalized('theorem t : s = "a  b" := rfl') != normalized('theorem t : s = "a b" := rfl'), \
        "spacing inside a string is part of the proof"


def test_model_name_of_a_hub_snapshot_names_the_repository_and_commit(tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--deepseek-ai--DeepSeek-Prover-V2-7B" / "snapshots" / "abc123"
    assert model_name(snapshot) == ("deepseek-ai/DeepSeek-Prover-V2-7B", "abc123"), model_name(snapshot)
    assert model_name(tmp_path / "tiny") == ("tiny", None), model_name(tmp_path / "tiny")


def test_tactic_names_at_tactic_positions_not_terms() -> None:
    code = ("theorem t (a b : ℝ) (h : a = b) : a ≤ b + 1 := by\n"
            "  have h2 : a - b = 0 := by linarith\n"
            "  nlinarith [sq_nonneg (a - b),\n"
            "    sq_nonneg (a + b)]\n"
            "  calc a = b := h\n"
            "    _ ≤ b + 1 := by norm_num\n"
            "  constructor <;> simp; ring_nf\n"
            "  · exact le_refl _\n")
    assert tactic_names(code) == ["have", "linarith", "nlinarith", "calc", "norm_num", "constructor", "simp",
                                  "ring_nf", "exact"], tactic_names(code)


def test_distill_writes_only_accepted_distinct_proofs_with_provenance(tiny: Path, tmp_path: Path, shared_data: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("policy.engines.make_engine", lambda config: ScriptedEngine())
    out = tmp_path / "run"
    result = runner.invoke(app, _args(tiny, out, "--json"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    corpus = summary["corpus"]
    # per problem: 4 samples, 3 accepted (two spellings of omega, simp+linarith), 2 distinct
    assert (corpus["problems"], corpus["samples"], corpus["accepted_samples"], corpus["proofs"],
            corpus["duplicates_dropped"], corpus["problems_with_proofs"]) == (4, 16, 12, 8, 4, 4), corpus
    assert corpus["backends"] == ["stand-in"], corpus
    stored = json.loads((out / "summary.json").read_text())["corpus"]
    assert stored == {k: v for k, v in corpus.items() if k != "corpus"}, (stored, corpus)
    rows = _rows(out / "corpus.jsonl")
    assert len(rows) == 8, [r["name"] for r in rows]
    assert not any("sorry" in r["code"] for r in rows), "a rejected proof was written"
    by_problem: dict[str, list[dict]] = {}
    for row in rows:
        by_problem.setdefault(row["name"], []).append(row)
    for name, group in by_problem.items():
        assert [r["provenance"]["sample"] for r in group] == [0, 3], (name, [r["provenance"] for r in group])
        assert [r["provenance"]["duplicates"] for r in group] == [2, 1], (name, [r["provenance"] for r in group])
        assert len({normalized(r["code"]) for r in group}) == len(group), f"{name}: duplicates kept"
    row = rows[0]
    provenance = row["provenance"]
    assert row["code"].startswith("import Mathlib") and "omega" in row["code"], row["code"]
    assert row["source"] == f"distill: {tiny.name} on minif2f-valid", row["source"]
    assert provenance["model"]["path"] == str(tiny) and len(provenance["model"]["weights_sha256"]) == 64, provenance
    assert provenance["template"]["name"] == "deepseek-prover-v1.5" and len(provenance["template"]["sha256"]) == 64
    assert provenance["seed"] == 7 and provenance["sampling"]["n"] == 4 and provenance["method"] == "whole", provenance
    verdict = provenance["verdict"]
    assert verdict["outcome"] == "accepted" and verdict["backend"] == "stand-in", verdict
    assert "test double" in verdict["checked_by"] and verdict["layers"][0] == "static", verdict
    assert verdict["axioms"] == ["propext", "Classical.choice", "Quot.sound"], verdict
    # the corpus joins its problem set as `prover lean check-set` and `prover sft` read it
    entries = load_proofs(out / "corpus.jsonl")
    problems = match_problems(entries, load_problems("minif2f-valid"))
    assert [p.id for p in problems] == [r["name"] for r in rows], [p.id for p in problems]
    checked = runner.invoke(app, ["lean", "check-set", str(out / "corpus.jsonl"), "--problems", "minif2f-valid",
                                  "--standin", str(ACCEPT), "--json"])
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["passed"] == 8, checked.stdout
    # the run folder is a bench run: its pass rates feed `prover data curate --pass-rates`
    results = _rows(out / "results.jsonl")
    assert [(r["samples"], r["correct"]) for r in results] == [(4, 3)] * 4, results
    assert 'command = "distill"' in (out / "config.resolved.toml").read_text()
    again = runner.invoke(app, ["--config", str(out / "config.resolved.toml"), "distill", "--out", str(tmp_path / "again"),
                                "--standin", str(ACCEPT)])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again" / "corpus.jsonl").read_text() == (out / "corpus.jsonl").read_text(), \
        "the resolved config did not re-run the same job"

    # distill -> curate: the rows' recorded verdicts are trusted, the run's pass rates (3/4) rank
    curated = runner.invoke(app, ["data", "curate", str(out / "corpus.jsonl"), "--problems", "minif2f-valid",
                                  "--pass-rates", str(out), "--out", str(tmp_path / "easy"), "--json"])
    assert curated.exit_code == 0, curated.output
    counts = json.loads(curated.stdout)["counts"]
    assert (counts["too_easy"], counts["selected"]) == (8, 0), counts   # 0.75 > the default 0.5
    curated = runner.invoke(app, ["data", "curate", str(out / "corpus.jsonl"), "--problems", "minif2f-valid",
                                  "--pass-rates", str(out), "--max-pass-rate", "0.8", "--out", str(tmp_path / "c"),
                                  "--json"])
    assert curated.exit_code == 0, curated.output
    counts = json.loads(curated.stdout)["counts"]
    assert (counts["selected"], counts["per_problem_cap"], counts["rejected"]) == (4, 4, 0), counts
    chosen = _rows(tmp_path / "c" / "corpus.jsonl")
    assert {r["curation"]["pass_rate"] for r in chosen} == {0.75}, [r["curation"] for r in chosen]
    # tactic variety: the first problem drawn takes the proof with two new names (simp, linarith),
    # the second `omega` (the one new name left); then neither adds a name and the longer wins
    assert [r["curation"]["tactics"] for r in chosen] == [["simp", "linarith"], ["omega"], ["simp", "linarith"],
                                                          ["simp", "linarith"]], \
        [r["curation"]["tactics"] for r in chosen]
    assert all(r["provenance"]["verdict"]["backend"] == "stand-in" for r in chosen), "provenance was lost"


def test_interrupted_distill_keeps_its_corpus_and_resume_completes_it(tiny: Path, tmp_path: Path, shared_data: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    monkeypatch.setattr("policy.engines.make_engine", lambda config: ScriptedEngine(interrupt_on=3))
    stopped = runner.invoke(app, _args(tiny, out))
    assert stopped.exit_code == 130, stopped.output
    done = len(_rows(out / "results.jsonl"))
    assert 1 <= done < 4, f"{done} problems written before the interrupt"
    assert f"interrupted: {done}/4 written to {out}" in stopped.stderr, stopped.stderr
    partial = _rows(out / "corpus.jsonl")
    assert len(partial) == 2 * done and len({r["name"] for r in partial}) == done, [r["name"] for r in partial]

    monkeypatch.setattr("policy.engines.make_engine", lambda config: ScriptedEngine())
    resumed = runner.invoke(app, _args(tiny, out, "--resume", "--json"))
    assert resumed.exit_code == 0, resumed.output
    assert f"{done} of 4 problems already done" in resumed.stderr, resumed.stderr
    rows = _rows(out / "corpus.jsonl")
    assert rows[:len(partial)] == partial, "rows written before the interrupt changed on resume"
    names = [r["name"] for r in rows]
    assert len(rows) == 8 and all(names.count(n) == 2 for n in names), names
    assert json.loads(resumed.stdout)["corpus"]["proofs"] == 8, resumed.stdout


@pytest.mark.slow
def test_distill_with_the_tiny_model_and_transformers(tiny: Path, tmp_path: Path, shared_data: Path) -> None:
    """The real engine: whatever the untrained model samples, the corpus holds exactly the
    accepted samples (deduplicated), and nothing else."""
    out = tmp_path / "run"
    result = runner.invoke(app, ["distill", "--suite", "minif2f-valid", "--limit", "2", "-n", "2", "--model", str(tiny),
                                 "--engine", "transformers", "--max-tokens", "8", "--seed", "7", "--out", str(out),
                                 "--standin", str(ACCEPT), "--json"])
    assert result.exit_code == 0, result.output
    records = _rows(out / "results.jsonl")
    accepted = {(r["id"], normalized(r["header"] + a["candidate"])) for r in records for a in r["attempts"]
                if a["verdict"]["outcome"] == "accepted"}
    rows = _rows(out / "corpus.jsonl")
    assert {(r["name"], normalized(r["code"])) for r in rows} == accepted and len(rows) == len(accepted), \
        (len(rows), len(accepted))
    assert sum(len(r["attempts"]) for r in records) == 4, [len(r["attempts"]) for r in records]
    assert json.loads(result.stdout)["corpus"]["samples"] == 4, result.stdout
