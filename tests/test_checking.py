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
