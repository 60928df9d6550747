"""`prover lean check-set`: a whole proof file against a problem set (static, stand-in)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prover.checking import check_proofs, load_proofs, match_problems
from prover.cli import app
from prover.errors import UserError
from prover.problems import ProblemSetError, load_problems

runner = CliRunner()


def test_released_proofs_static(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["lean", "check-set", str(shared_data / "minif2f_valid_proofs.jsonl"),
                                 "--problems", "minif2f-valid", "--static", "--out", str(out), "--json"])
    assert result.exit_code == 1, result.output  # two proofs state corrected theorems
    summary = json.loads(result.stdout)
    assert summary["outcomes"] == {"passed_static": 219, "rejected:statement_mismatch": 2}, summary["outcomes"]
    assert sorted(f["name"] for f in summary["failed"]) == ["induction_sum_odd", "mathd_algebra_247"], summary
    assert summary["checked_by"] == "static checks (no Lean ran)" and summary["static"] is True
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 221 and rows[0]["name"] == "aimeII_2001_p3" and rows[0]["verdict"] is None, rows[0]
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "config.resolved.toml").is_file()


@pytest.mark.slow
def test_released_proofs_through_the_standin_are_labelled(shared_data: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    # One proof gets a Lean error from the stand-in; everything else takes the default (accepted).
    rules.write_text(json.dumps({"rules": [{"regex": r"theorem mathd_algebra_10\b", "messages": [
        {"severity": "error", "pos": {"line": 9, "column": 2}, "data": "linarith failed"}]}]}))
    out = tmp_path / "out"
    result = runner.invoke(app, ["lean", "check-set", str(shared_data / "minif2f_valid_proofs.jsonl"),
                                 "--problems", "minif2f-valid", "--standin", str(rules), "--workers", "2",
                                 "--out", str(out)])
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.stdout.splitlines() if ln.strip() and not ln.startswith(("┏", "┃", "┡", "└"))]
    unlabelled = [ln for ln in lines if "stand-in" not in ln and not ln.startswith("wrote ")]
    assert unlabelled == [], f"output lines without the stand-in label: {unlabelled}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outcomes"] == {"accepted": 218, "rejected:lean_error": 1, "rejected:statement_mismatch": 2}, summary
    assert summary["backend"] == "stand-in (not Lean)", summary
    written = tomllib.loads((out / "config.resolved.toml").read_text())
    assert written["verifier"]["backend"] == "standin" and written["verifier"]["workers"] == 2, written["verifier"]


def test_malformed_proof_files(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"name": "a", "code": "theorem a : True := trivial"}\n{"name": "b"}\n')
    with pytest.raises(ProblemSetError, match=r"^p.jsonl:2: missing field 'code'$"):
        load_proofs(path)
    path.write_text('{"name": "a", "code": ""}\n')
    with pytest.raises(ProblemSetError, match=r"^p.jsonl:1: empty or non-string field 'code'$"):
        load_proofs(path)
    path.write_text('["a"]\n')
    with pytest.raises(ProblemSetError, match=r"^p.jsonl:1: expected a JSON object, got list$"):
        load_proofs(path)
    result = runner.invoke(app, ["lean", "check-set", str(tmp_path / "none.jsonl"), "--problems", "x", "--static"])
    assert result.exit_code == 2 and "none.jsonl: no such file" in result.stderr, result.output


def test_unknown_and_ambiguous_names(shared_data: Path, tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"name": "not_a_problem", "code": "theorem x : True := trivial"}) + "\n")
    result = runner.invoke(app, ["lean", "check-set", str(path), "--problems", "minif2f-valid", "--static"])
    assert result.exit_code == 2, result.output
    assert "1 proof(s) name no problem of the set: not_a_problem (p.jsonl:1)" in result.stderr, result.stderr
    proofnet = load_problems(str(shared_data / "proofnet.jsonl"))
    ambiguous = [e for e in load_proofs(_write(tmp_path, "exercise_3_3"))]
    with pytest.raises(UserError, match=r"ambiguous in the problem set \(ids exercise_3_3, exercise_3_3#2\)"):
        match_problems(ambiguous, proofnet)
    (by_id,) = match_problems(load_proofs(_write(tmp_path, "exercise_3_3#2")), proofnet)
    assert by_id.origin == "proofnet.jsonl:41", by_id.origin


def test_static_results_in_file_order(shared_data: Path, tmp_path: Path) -> None:
    rows = [json.loads(x) for x in (shared_data / "minif2f_valid_proofs.jsonl").read_text().splitlines()[:3]]
    rows[1]["code"] = rows[1]["code"].replace(":= by", ":= by\n  sorry\n", 1)
    path = tmp_path / "three.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = list(check_proofs(load_proofs(path), load_problems("minif2f-valid"), None))
    assert [(r.entry.name, r.outcome) for r in results] == [
        (rows[0]["name"], "passed_static"), (rows[1]["name"], "rejected:forbidden"), (rows[2]["name"], "passed_static")
    ], [(r.entry.name, r.outcome) for r in results]


def _write(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name.replace('#', '_')}.jsonl"
    path.write_text(json.dumps({"name": name, "code": "theorem t : True := trivial"}) + "\n")
    return path


def test_check_set_run_folder_refuses_resumes_and_reruns_from_its_config(shared_data: Path, tmp_path: Path) -> None:
    rows = [json.loads(x) for x in (shared_data / "minif2f_valid_proofs.jsonl").read_text().splitlines()[:3]]
    rows[1]["code"] = rows[1]["code"].replace(":= by", ":= by\n  sorry\n", 1)
    proofs = tmp_path / "three.jsonl"
    proofs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"regex": rf"theorem {rows[2]['name']}\b", "messages": [
        {"severity": "error", "pos": {"line": 9, "column": 2}, "data": "linarith failed"}]}]}))
    out = tmp_path / "out"
    args = ["lean", "check-set", str(proofs), "--problems", "minif2f-valid", "--standin", str(rules),
            "--workers", "1", "--out", str(out), "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 1, first.output
    summary = json.loads(first.stdout)   # stdout: the JSON alone; progress lines went to stderr
    assert summary["outcomes"] == {"accepted": 1, "rejected:forbidden": 1, "rejected:lean_error": 1}, summary
    assert "progress: 3/3 proofs, 3 samples verified, 1 passed" in first.stderr, first.stderr

    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and f"{out}: folder is not empty" in refused.stderr, refused.output
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text(lines[0] + "\n")   # as if stopped after the first proof
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 1, resumed.output
    def outcomes(text: str) -> list[tuple[str, str]]:
        return [(r["origin"], r["outcome"]) for r in map(json.loads, text.splitlines())]

    assert outcomes((out / "results.jsonl").read_text()) == outcomes("\n".join(lines)), (out / "results.jsonl").read_text()
    assert {k: v for k, v in json.loads(resumed.stdout).items() if k != "seconds"} == {
        k: v for k, v in summary.items() if k != "seconds"}, resumed.stdout

    again = runner.invoke(app, ["--config", str(out / "config.resolved.toml"), "lean", "check-set",
                                "--out", str(tmp_path / "again"), "--json"])
    assert again.exit_code == 1, again.output
    assert json.loads(again.stdout)["outcomes"] == summary["outcomes"], again.stdout
    assert json.loads(again.stdout)["backend"] == "stand-in (not Lean)", again.stdout
    proofs.write_text(proofs.read_text() + proofs.read_text().splitlines()[0] + "\n")
    changed = runner.invoke(app, ["--config", str(out / "config.resolved.toml"), "lean", "check-set",
                                  "--out", str(tmp_path / "changed")])
    assert changed.exit_code == 2 and "differs from" in changed.stderr, changed.output
