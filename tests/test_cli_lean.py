"""`prover lean check / doctor` through typer's CliRunner: exit codes, output, --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lean_env.toolchain import find_toolchain
from prover.cli import app

runner = CliRunner()
PASSING = ("aimeII_2001_p3", "mathd_algebra_10", "amc12a_2019_p21")
CORRECTED = ("induction_sum_odd", "mathd_algebra_247")


@pytest.fixture(scope="module")
def proofs(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> dict[str, Path]:
    """A few released miniF2F proofs written as .lean files."""
    out = tmp_path_factory.mktemp("proofs")
    files = {}
    for line in (shared_data / "minif2f_valid_proofs.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["name"] in PASSING + CORRECTED:
            files[row["name"]] = out / f"{row['name']}.lean"
            files[row["name"]].write_text(row["code"])
    assert sorted(files) == sorted(PASSING + CORRECTED), sorted(files)
    return files


@pytest.mark.parametrize("name", PASSING)
def test_released_proofs_pass_static_checks_against_their_problem(proofs: dict[str, Path],
                                                                   name: str) -> None:
    result = runner.invoke(app, ["lean", "check", str(proofs[name]), "--static",
                                 "--problem", name, "--problems", "minif2f-valid"])
    assert result.exit_code == 0, result.output
    assert "PASSED static checks" in result.stdout and "Lean did not run" in result.stdout, result.stdout


@pytest.mark.parametrize("name", CORRECTED)
def test_corrected_statements_are_rejected(proofs: dict[str, Path], name: str) -> None:
    args = ["lean", "check", str(proofs[name]), "--static", "--problem", name,
            "--problems", "minif2f-valid"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "REJECTED" in result.stdout and "statement_mismatch" in result.stdout, result.stdout
    assert "problem:" in result.stdout and "candidate:" in result.stdout, result.stdout
    # Against its own statement (no --problem) the same file passes.
    own = runner.invoke(app, ["lean", "check", str(proofs[name]), "--static"])
    assert own.exit_code == 0, own.output


def test_json_shape(proofs: dict[str, Path]) -> None:
    result = runner.invoke(app, ["lean", "check", str(proofs["mathd_algebra_247"]), "--static",
                                 "--problem", "mathd_algebra_247", "--problems", "minif2f-valid",
                                 "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["passed"] is False and data["static"] is True and data["lean_ran"] is False, data
    assert data["problem"] == "mathd_algebra_247" and data["file"].endswith(".lean"), data
    assert data["verdict"]["verdict"] == "rejected", data
    assert data["verdict"]["reason"] == "statement_mismatch", data
    ok = json.loads(runner.invoke(app, ["lean", "check", str(proofs[PASSING[0]]), "--static",
                                        "--json"]).stdout)
    assert ok["passed"] is True and ok["verdict"] is None and ok["lean_ran"] is False, ok


def test_cheat_rejected_with_reason(tmp_path: Path, proofs: dict[str, Path]) -> None:
    cheat = tmp_path / "cheat.lean"
    cheat.write_text(proofs[PASSING[0]].read_text().replace(":= by\n", ":= by\n  native_decide\n", 1))
    result = runner.invoke(app, ["lean", "check", str(cheat), "--static"])
    assert result.exit_code == 1, result.output
    assert "forbidden" in result.stdout and "`native_decide` at line" in result.stdout, result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["lean", "check", "/nonexistent/proof.lean", "--static"], "no such file"),
    (["lean", "check", "{good}", "--static", "--problem", "no_such_problem", "--problems",
      "minif2f-valid"], "no_such_problem"),
    (["lean", "check", "{good}", "--static", "--problem", "mathd_algebra_247"], "--problems"),
    (["lean", "check", "{empty}", "--static"], "no theorem found"),
])
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, proofs: dict[str, Path],
                                           args: list[str], message: str) -> None:
    empty = tmp_path / "empty.lean"
    empty.write_text("-- nothing here\n")
    args = [a.format(good=proofs[PASSING[0]], empty=empty) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "Traceback" not in result.output, result.output


def test_without_lean_check_refuses_and_points_at_setup(proofs: dict[str, Path]) -> None:
    if find_toolchain().complete:
        pytest.skip("a Lean toolchain is installed here")
    result = runner.invoke(app, ["lean", "check", str(proofs[PASSING[0]])])
    assert result.exit_code == 3, f"exit {result.exit_code} (want 3, could not check): {result.output}"
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "prover lean setup" in result.stderr and "--static" in result.stderr, result.stderr


def test_doctor_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["lean", "doctor", "--json"])
    data = json.loads(result.stdout)
    assert result.exit_code == (0 if data["ok"] else 1), (result.exit_code, data)
    assert data["pins"]["toolchain"] == "leanprover/lean4:v4.19.0", data
    assert {c["name"].split()[0] for c in data["checks"]} >= {"elan", "lean", "lake", "REPL"}, data


def test_standin_is_labelled_on_every_line(tmp_path: Path, proofs: dict[str, Path]) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [
        {"substring": "theorem mathd_algebra_10",
         "messages": [{"severity": "error", "pos": {"line": 9, "column": 2},
                       "data": "linarith failed"}]}]}))
    base = ["lean", "check", "--standin", str(rules)]
    good = runner.invoke(app, [*base, str(proofs["aimeII_2001_p3"])])
    assert good.exit_code == 0, good.output
    assert "ACCEPTED" in good.stdout, good.stdout
    bad = runner.invoke(app, [*base, str(proofs["mathd_algebra_10"])])
    assert bad.exit_code == 1 and "linarith failed" in bad.stdout, bad.output
    for out in (good.stdout, bad.stdout):
        lines = [line for line in out.splitlines() if line.strip()]
        assert lines and all("stand-in (not Lean)" in line for line in lines), out
    data = json.loads(runner.invoke(app, [*base, "--json", str(proofs["aimeII_2001_p3"])]).stdout)
    assert data["backend"] == "stand-in (not Lean)" and data["lean_ran"] is False, data
    assert "not Lean" in data["verdict"]["checked_by"], data
