"""`prover iterate` (prover/iterate.py): rounds of prove -> collect -> fine-tune on the synthetic
tactic set, judged by its stand-in rule table (a test double that accepts exactly each goal's
known tactic; its verdicts are not Lean's). Fine-tuning is real (`prover sft` on the tiny
policy); resuming after kill -9 is tested on a real subprocess."""

from __future__ import annotations

import json
import os
import re
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
from prover.cli import app
from prover.corpus_rows import normalized
from prover.iterate import merge_corpus, solved_problems

REPO = Path(__file__).resolve().parents[1]
SETS = REPO / "data" / "sets"
RULES = SETS / "synthetic-tactics-rules.json"
PROBLEMS = {json.loads(line)["name"]: json.loads(line) for line in (SETS / "synthetic-tactics.jsonl").open()}
runner = CliRunner()


def _config(tmp: Path, model: Path, *, engine: str, steps: int, limit: int) -> Path:
    """A minimal iterate config: the first `limit` test problems, 2 samples each, a seed corpus of
    2 known proofs of train problems, `steps` SFT steps per round from the base model."""
    path = tmp / "iterate.toml"
    path.write_text(f"""
[policy]
checkpoint = "{model}"
engine = "{engine}"
[policy.sampling]
max_tokens = 12
seed = 3
[verifier]
backend = "standin"
standin_rules = "{RULES}"
[iterate]
problems = "synthetic-tactics"
split = "test"
limit = {limit}
samples = 2
seed_corpus = "{SETS / 'synthetic-tactics-proofs.jsonl'}"
seed_limit = 2
[sft]
eval_fraction = 0.25
max_seq_len = 512
[training]
learning_rate = 3e-3
steps = {steps}
micro_batch_size = 2
save_every = 1
keep_last = 2
eval_every = {steps}
device = "cpu"
""", encoding="utf-8")
    return path


class FamilyEngine:
    """A scripted policy whose skill depends on the checkpoint it was started on: the base model
    knows the `arith` family's tactic, a model fine-tuned in round 1 also `subst`'s. Per prompt:
    sample 0 the tactic it knows (or a wrong one), sample 1 the same proof spelled with a comment
    (a duplicate the corpus must drop). Records which checkpoint and problems it saw."""

    seen: list[tuple[str, list[str]]] = []

    def __init__(self, checkpoint: str) -> None:
        self.checkpoint = checkpoint
        self.families = {"arith", "subst"} if "round-01" in checkpoint else {"arith"}

    def __enter__(self) -> FamilyEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def generate(self, prompts: Sequence[str], sampling: SamplingConfig) -> list[PromptResult]:
        names = [re.findall(r"theorem (syn_\w+)", p)[-1] for p in prompts]
        FamilyEngine.seen.append((self.checkpoint, names))
        results = []
        for prompt, name in zip(prompts, names, strict=True):
            problem = PROBLEMS[name]
            tactic = problem["tactic"] if problem["family"] in self.families else "simp"
            texts = [f"  {tactic}\n```", f"  -- {tactic} closes it\n  {tactic}\n```"][:sampling.n]
            results.append(PromptResult(prompt, (1,), tuple(Completion(t, (5, 6), (-0.1, -0.2), "stop") for t in texts)))
        return results


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("iterate") / "tiny"
    result = runner.invoke(app, ["model", "init", "--preset", "tiny", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_merge_corpus_keeps_one_row_per_problem_and_normalised_proof() -> None:
    a = {"name": "p", "code": "theorem p : 1 = 1 := by\n  rfl\n"}
    a_again = {"name": "p", "code": "theorem p : 1 = 1 := by -- again\n    rfl\n"}
    b = {"name": "q", "code": "theorem q : 1 = 1 := by\n  rfl\n"}
    merged = merge_corpus([a], [a_again, b, b])
    assert [r["name"] for r in merged] == ["p", "q"], merged
    assert merged[0]["code"] == a["code"], "the earliest spelling is kept"
    records = [{"id": "p", "attempts": [{"verdict": {"outcome": "rejected:lean_error"}},
                                        {"verdict": {"outcome": "accepted"}}]},
               {"id": "q", "attempts": [{"verdict": {"outcome": "rejected:lean_error"}}]}, {"id": "r", "attempts": []}]
    assert solved_problems(records) == {"p"}, solved_problems(records)


def test_bad_input_is_one_line_and_exit_2(tiny: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, tiny, engine="transformers", steps=2, limit=4)
    no_set = runner.invoke(app, ["iterate", "--config", str(config), "--problems", "no-such-set",
                                 "--out", str(tmp_path / "a")])
    assert no_set.exit_code == 2 and "no-such-set" in no_set.stderr and "Traceback" not in no_set.output, \
        no_set.output
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    taken = runner.invoke(app, ["iterate", "--config", str(config), "--out", str(tmp_path / "b")])
    assert taken.exit_code == 2 and "not empty" in taken.stderr, taken.output
    assert len(taken.stderr.strip().splitlines()) == 1, taken.stderr


@pytest.mark.slow
def test_two_rounds_count_new_proofs_and_train_on_the_accumulated_corpus(
        tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FamilyEngine.seen = []
    monkeypatch.setattr("policy.engines.make_engine", lambda config: FamilyEngine(str(config.checkpoint)))
    config = _config(tmp_path, tiny, engine="transformers", steps=2, limit=8)
    out = tmp_path / "run"
    result = runner.invoke(app, ["iterate", "--config", str(config), "--rounds", "2", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == json.loads((out / "report.json").read_text()), "stdout and report.json differ"
    first, second = report["rounds"]
    families = {n: PROBLEMS[n]["family"] for n in sorted(PROBLEMS) if n.startswith("syn_test_")}
    chosen = sorted(families)[:8]
    arith = [n for n in chosen if families[n] == "arith"]
    subst = [n for n in chosen if families[n] == "subst"]
    assert arith and subst, families
    # round 1: the base model proves every problem once, solving the arith ones
    assert FamilyEngine.seen[0][0] == str(tiny), FamilyEngine.seen
    assert (first["attempted"], first["newly_solved_ids"], first["total_solved"]) == (8, arith, len(arith)), first
    # round 2: round 1's fine-tuned model, on the unsolved problems only: the subst ones are new
    round2_calls = [c for c in FamilyEngine.seen if "round-01" in c[0]]
    assert round2_calls and round2_calls[0][0] == first["model_out"] == first["sft"]["checkpoint"], FamilyEngine.seen
    attempted2 = sorted(n for _, names in round2_calls for n in names)
    assert attempted2 == sorted(set(chosen) - set(arith)), attempted2
    assert second["attempted"] == 8 - len(arith), second
    assert second["newly_solved_ids"] == subst and not set(subst) & set(first["newly_solved_ids"]), second
    assert second["total_solved"] == first["total_solved"] + second["newly_solved"] == len(arith) + len(subst), second
    # the corpus: 2 seed proofs + one row per solved problem (the commented respelling dropped)
    corpus1, corpus2 = _rows(out / "round-01" / "corpus.jsonl"), _rows(out / "round-02" / "corpus.jsonl")
    assert first["corpus"]["rows"] == len(corpus1) == 2 + len(arith), first["corpus"]
    assert second["corpus"]["rows"] == len(corpus2) == 2 + len(arith) + len(subst), second["corpus"]
    assert second["corpus"]["new_rows"] == len(subst) and corpus2[:len(corpus1)] == corpus1, second["corpus"]
    accepted = {(r["id"], normalized(r["header"] + a["candidate"])) for k in ("01", "02")
                for r in _rows(out / f"round-{k}" / "prove" / "results.jsonl") for a in r["attempts"]
                if a["verdict"]["outcome"] == "accepted"}
    assert {(r["name"], normalized(r["code"])) for r in corpus2[2:]} == accepted, "corpus != distinct accepted proofs"
    assert all(r["provenance"]["verdict"]["backend"] == "stand-in" for r in corpus2[2:]), corpus2
    # fine-tuning: real sft runs from the base model on each round's corpus
    for r, corpus in ((first, corpus1), (second, corpus2)):
        sft = json.loads((out / f"round-0{r['round']}" / "sft" / "summary.json").read_text())
        assert sft["complete"] and sft["steps"] == 2 and sft["model"] == str(tiny), sft
        assert sft["examples"] + sft["held_out"] == len(corpus), (sft, len(corpus))
        assert r["sft"]["from"] == str(tiny) and r["sft"]["train_loss"] == sft["train_loss"] > 0, r["sft"]
        assert (Path(r["model_out"]) / "config.json").is_file(), r["model_out"]
    assert report["verdicts"] == "stand-in (not Lean)" and report["standin"] is True, report
    md = (out / "report.md").read_text()
    assert "test double, not Lean" in md and f"| 2 | {second['attempted']} | {len(subst)} |" in md, md

    # the same command again: nothing is redone; one more round continues from round 2's model
    FamilyEngine.seen = []
    again = runner.invoke(app, ["iterate", "--config", str(config), "--rounds", "2", "--out", str(out), "--json"])
    assert again.exit_code == 0 and FamilyEngine.seen == [], (again.output, FamilyEngine.seen)
    assert [r["total_solved"] for r in json.loads(again.stdout)["rounds"]] == [len(arith), len(arith) + len(subst)]
    third = runner.invoke(app, ["iterate", "--config", str(config), "--rounds", "3", "--out", str(out), "--json"])
    assert third.exit_code == 0, third.output
    r3 = json.loads(third.stdout)["rounds"][2]
    assert FamilyEngine.seen[0][0] == second["model_out"], FamilyEngine.seen
    # round 2's model knows what round 1's did: nothing new, the corpus is unchanged, no fine-tuning
    assert (r3["attempted"], r3["newly_solved"], r3["corpus"]["new_rows"], r3["sft"]) == (
        8 - len(arith) - len(subst), 0, 0, None), r3
    assert r3["model_out"] == second["model_out"] and not (out / "round-03" / "sft").exists(), r3
    changed = runner.invoke(app, ["iterate", "--config", str(config), "--steps", "3", "--out", str(out)])
    assert changed.exit_code == 2 and "training.steps: 2 -> 3" in changed.stderr, changed.output


@pytest.mark.slow
def test_kill_9_inside_fine_tuning_then_the_same_command_finishes_each_round_once(tiny: Path, tmp_path: Path) -> None:
    """The real engine (transformers) on the untrained tiny policy; SIGKILL as soon as round 1's
    fine-tuning has written its first checkpoint; the same command completes the run."""
    config = _config(tmp_path, tiny, engine="transformers", steps=4, limit=3)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "prover.cli", "iterate", "--config", str(config), "--rounds", "2",
               "--out", str(out), "--json"]
    env = os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    first_checkpoint = out / "round-01" / "sft" / "checkpoints" / "step-00000001"
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not first_checkpoint.is_dir() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert process.poll() is None, f"finished before the kill: {process.communicate()[1].decode()[-2000:]}"
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    assert process.returncode == -signal.SIGKILL, process.returncode
    assert not (out / "round-01" / "round.json").exists(), "round 1 finished before the kill"
    assert (out / "round-01" / "prove" / "summary.json").is_file(), "the kill came before proving ended"

    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert [r["round"] for r in report["rounds"]] == [1, 2] and report["complete"], report["rounds"]
    assert "round 1: proving already done" in done.stderr, done.stderr[-2000:]
    for k in ("01", "02"):
        ids = [r["id"] for r in _rows(out / f"round-{k}" / "prove" / "results.jsonl")]
        assert len(ids) == len(set(ids)), f"round {k}: a problem was proved twice: {ids}"
    first = report["rounds"][0]
    assert first["attempted"] == 3 and first["corpus"]["rows"] == 2 + first["newly_solved"], first
    sft = json.loads((out / "round-01" / "sft" / "summary.json").read_text())
    steps = [row["step"] for row in _rows(out / "round-01" / "sft" / "metrics.jsonl") if "loss" in row]
    assert steps == [1, 2, 3, 4] and sft["resumed_from"] is not None, (steps, sft)
    assert first["sft"]["steps"] == 4 and first["model_out"] == sft["checkpoint"], first
    for r in report["rounds"]:
        assert set(r) >= {"attempted", "newly_solved", "total_solved", "corpus", "sft", "model", "model_out",
                          "seconds"}, sorted(r)
        assert r["total_solved"] == sum(x["newly_solved"] for x in report["rounds"][:r["round"]]), report["rounds"]
