"""benchmarks.engines end to end on the transformers engine: the module runs as a user runs
it (`python -m benchmarks.engines` in a subprocess, fresh `tiny` checkpoint, miniF2F prompts) and writes a complete JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_transformers_row_reports_throughput(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "engines.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "VLLM_NO_USAGE_STATS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.engines", "--engines", "transformers", "--prompts", "1",
         "--samples", "2", "--max-tokens", "8", "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=120, env=env, cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    report = json.loads(out.read_text())

    assert report["config"]["prompts"] == 1 and report["config"]["samples"] == 2, report["config"]
    machine = report["machine"]
    assert machine["cpus"] == os.cpu_count() and machine["torch"] and machine["device"], machine
    assert [r["engine"] for r in report["results"]] == ["transformers"], report["results"]
    row = report["results"][0]
    assert "error" not in row, row
    assert row["tokens_per_s"] > 0 and row["start_s"] > 0 and row["load_weights_s"] > 0, row
    # 1 prompt x 2 samples x 8 tokens (ignore_eos), counted exactly from the completions.
    assert report["config"]["sampling"]["ignore_eos"] is True, report["config"]
    assert row["completions"] == 2 and row["tokens"] == 16, row
    assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["seconds"]), row
    assert len(row["repeats"]) == 1 and len(row["prompt_tokens"]) == 1, row
    assert row["same_tokens_after_reload"] is True, row
    assert report["vllm_over_transformers"] == {}, report["vllm_over_transformers"]
    assert "transformers" in proc.stdout and "wrote" in proc.stdout, proc.stdout
