"""The synthetic tactic set of the CPU training examples (scripts/make-synthetic-set): the
committed files are what the generator writes, and its stand-in rule table accepts exactly each
goal's known proof, as whole proofs and as tactic steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prover.cli import app
from prover.problems import load_problems

ROOT = Path(__file__).resolve().parents[1]
SETS = ROOT / "data" / "sets"
TACTICS = ("norm_num", "omega", "tauto", "linarith")
runner = CliRunner()


def test_committed_files_are_the_generators_output(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make-synthetic-set"), str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("synthetic-tactics.jsonl", "synthetic-tactics-proofs.jsonl", "synthetic-tactics-rules.json"):
        assert (tmp_path / name).read_bytes() == (SETS / name).read_bytes(), f"{name} differs from the generator's"


def test_suite_loads_with_both_splits_and_balanced_families() -> None:
    problems = load_problems("synthetic-tactics")
    rows = [json.loads(line) for line in (SETS / "synthetic-tactics.jsonl").read_text().splitlines()]
    assert len(problems) == 120 and {p.split for p in problems} == {"train", "test"}, len(problems)
    by_tactic = {t: sum(r["tactic"] == t for r in rows if r["split"] == "train") for t in TACTICS}
    assert by_tactic == dict.fromkeys(TACTICS, 24), by_tactic
    assert len({r["formal_statement"].split(" ", 2)[2] for r in rows}) == 120, "every goal is distinct"


@pytest.mark.parametrize("swap", range(4))
def test_rule_table_accepts_only_the_known_tactic(tmp_path: Path, swap: int) -> None:
    """swap 0: the known proofs; swap k: every proof uses the tactic of the family k places on."""
    proofs = [json.loads(line) for line in (SETS / "synthetic-tactics-proofs.jsonl").read_text().splitlines()]
    rows = {r["name"]: r for r in map(json.loads, (SETS / "synthetic-tactics.jsonl").read_text().splitlines())}
    for p in proofs:
        known = rows[p["name"]]["tactic"]
        other = TACTICS[(TACTICS.index(known) + swap) % 4]
        p["code"] = p["code"].replace(f"  {known}\n", f"  {other}\n")
    path = tmp_path / "proofs.jsonl"
    path.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in proofs))
    result = runner.invoke(app, ["lean", "check-set", str(path), "--problems", "synthetic-tactics", "--json",
                                 "--standin", str(SETS / "synthetic-tactics-rules.json"), "--workers", "1"])
    summary = json.loads(result.stdout)
    expected = {"accepted": 120} if swap == 0 else {"rejected:lean_error": 120}
    assert summary["outcomes"] == expected, (swap, summary["outcomes"])
    assert result.exit_code == (0 if swap == 0 else 1), result.output[-500:]
