"""The CLI shell: groups, help, `prover data`, error handling at the edge (typer's CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from prover.cli import app

runner = CliRunner()


def test_help_lists_the_six_groups() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    for group in ("prove", "train", "bench", "lean", "model", "data"):
        assert f" {group} " in result.output, f"{group} missing from:\n{result.output}"
    for group in ("prove", "train", "bench", "lean", "model", "data"):
        sub = runner.invoke(app, [group, "--help"])
        assert sub.exit_code == 0 and "Usage: prover " + group in sub.output, sub.output


def test_data_inspect_minif2f(shared_data: Path) -> None:
    result = runner.invoke(app, ["data", "inspect", str(shared_data / "minif2f.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["problems"] == 488 and report["splits"] == {"test": 244, "valid": 244}, report
    assert report["sha256"].startswith("d6654c88"), report["sha256"]
    human = runner.invoke(app, ["data", "inspect", str(shared_data / "minif2f.jsonl")])
    assert human.exit_code == 0 and "488" in human.output and "valid" in human.output, human.output


def test_data_inspect_suite_split_and_limit(shared_data: Path) -> None:
    result = runner.invoke(app, ["data", "inspect", "minif2f-test", "--limit", "10", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["problems"] == 10 and report["suite"] == "minif2f-test" and report["splits"] == {"test": 10}, report
    dup = runner.invoke(app, ["data", "inspect", "proofnet-valid"])
    assert dup.exit_code == 0 and "duplicate name" in dup.output, dup.output


def test_malformed_file_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "minif2f.jsonl"
    good = {"name": "a", "header": "import Mathlib\n", "formal_statement": "theorem a : True := by\n"}
    bad.write_text("\n".join([json.dumps(good)] * 0 + [json.dumps(good), json.dumps(good | {"name": "b"}),
                                                        json.dumps({"name": "c", "header": "x"}),
                                                        json.dumps({"name": "d"})]) + "\n")
    result = runner.invoke(app, ["data", "inspect", str(bad)])
    assert result.exit_code == 2, result.output
    # line 2 comes first: its statement declares 'a', not 'b'
    assert result.stderr.strip() == "error: minif2f.jsonl:2: field 'formal_statement' declares 'a', expected theorem 'b'", result.stderr
    assert "Traceback" not in result.output
    bad.write_text(json.dumps(good) + "\n" + json.dumps({"name": "x", "header": "h"}) + "\n")
    result = runner.invoke(app, ["data", "inspect", str(bad)])
    assert result.exit_code == 2 and result.stderr.strip() == "error: minif2f.jsonl:2: missing field 'formal_statement'", result.stderr


def test_unknown_source_and_bad_config_exit_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["data", "inspect", "not-a-suite"])
    assert result.exit_code == 2 and "not a known suite" in result.stderr, result.output
    result = runner.invoke(app, ["--config", str(tmp_path / "none.toml"), "data", "suites"])
    assert result.exit_code == 2 and "no such file" in result.output, result.output
    result = runner.invoke(app, ["--log-level", "loud", "data", "suites"])
    assert result.exit_code == 2 and "unknown log level" in result.output, result.output


def test_data_suites_json() -> None:
    result = runner.invoke(app, ["data", "suites", "--json"])
    assert result.exit_code == 0, result.output
    names = [s["name"] for s in json.loads(result.stdout)["suites"]]
    assert names == ["minif2f-valid", "minif2f-test", "proofnet-valid", "proofnet-test", "synthetic-tactics"], names
