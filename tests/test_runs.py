"""Run folders (`prover.runs.RunDir`): refusal, writability, appending, interrupts, resume, progress.

The commands that use them (`prove whole`, `lean check-set`) are tested end to end in
tests/test_prove.py and tests/test_checking.py; here the folder on its own, without a model.
"""

from __future__ import annotations

import io
import json
import os
import signal
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from prover.config import ProverConfig
from prover.runs import Progress, RunDir, RunDirError, RunInterrupted


def _summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"proved": sum(r["proved"] for r in records)}


def _begin(run: RunDir, config: ProverConfig | None = None, total: int = 5) -> None:
    run.begin(config or ProverConfig(), total=total, summarize=_summarize, succeeded=lambda r: r["proved"],
              unit="problems", progress_stream=io.StringIO())


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_non_empty_folder_is_refused_without_force_or_resume(tmp_path: Path) -> None:
    (tmp_path / "results.jsonl").write_text('{"id": "a", "proved": true}\n')
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError) as refused:
        RunDir.prepare(tmp_path, key="id")
    assert str(refused.value) == (f"{tmp_path}: folder is not empty (notes.txt, results.jsonl); pass --resume to "
                                  "continue that run, --force to start over, or another --out"), str(refused.value)
    with pytest.raises(RunDirError, match="pass one of them"):
        RunDir.prepare(tmp_path, key="id", force=True, resume=True)
    with pytest.raises(RunDirError, match="--resume needs the config.resolved.toml of an earlier run"):
        RunDir.prepare(tmp_path, key="id", resume=True)
    run = RunDir.prepare(tmp_path, key="id", force=True)   # start over: the run's files go, the user's stay
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"], list(tmp_path.iterdir())
    assert run.done_keys == set(), run.done_keys
    assert RunDir.prepare(tmp_path / "new" / "deeper", key="id").path == tmp_path / "new" / "deeper"


def test_unwritable_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(RunDirError, match=r"a_file/run: output folder is not writable \(") as refused:
        RunDir.prepare(blocker / "run", key="id")
    assert "Traceback" not in str(refused.value)
    with pytest.raises(RunDirError, match=r"a_file: not a folder"):
        RunDir.prepare(blocker, key="id")
    if os.geteuid() != 0:   # root writes through permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(RunDirError, match="locked: output folder is not writable"):
            RunDir.prepare(locked, key="id")


def test_records_are_written_as_they_arrive_and_an_interrupt_keeps_them(tmp_path: Path) -> None:
    run = RunDir.prepare(tmp_path / "run", key="id")
    _begin(run, ProverConfig(output_dir=tmp_path / "run"))
    written = tmp_path / "run" / "results.jsonl"
    assert (tmp_path / "run" / "config.resolved.toml").is_file(), "config is written at the start"
    with pytest.raises(RunInterrupted) as stopped, run:
        for i in range(2):
            run.append({"id": f"p{i}", "proved": i == 1})
            assert len(_lines(written)) == i + 1, f"after {i + 1} appends the file holds {written.read_text()!r}"
        raise KeyboardInterrupt
    assert str(stopped.value) == f"interrupted: 2/5 written to {tmp_path / 'run'}", str(stopped.value)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["done"], summary["total"], summary["complete"], summary["interrupted"], summary["proved"]) == (
        2, 5, False, True, 1), summary


def test_sigterm_is_an_interrupt(tmp_path: Path) -> None:
    run = RunDir.prepare(tmp_path, key="id")
    _begin(run, total=3)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted, match=r"^interrupted: 1/3 written to "), run:
        run.append({"id": "a", "proved": False})
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before, "the SIGTERM handler is restored"
    assert json.loads((tmp_path / "summary.json").read_text())["interrupted"] is True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_during_append_waits_until_the_record_is_written_and_counted(tmp_path: Path,
                                                                                  sig: int) -> None:
    """The race CI once hit: Ctrl-C between writing a line and counting it printed `0/40` while
    results.jsonl held one record. The signal now arrives inside `append` and acts after it."""
    run = RunDir.prepare(tmp_path, key="id")
    _begin(run, total=4)
    assert run._fh is not None
    real_flush = run._fh.flush

    def flush_then_signal() -> None:
        real_flush()
        run._fh.flush = real_flush         # type: ignore[union-attr,method-assign]  # once only
        os.kill(os.getpid(), sig)          # delivered before `append` has counted the record

    run._fh.flush = flush_then_signal      # type: ignore[method-assign]
    with pytest.raises(RunInterrupted) as stopped, run:
        run.append({"id": "a", "proved": True})
        raise AssertionError("the interrupt must act once append returns")
    written = _lines(tmp_path / "results.jsonl")
    assert (len(written), stopped.value.done) == (1, 1), (written, str(stopped.value))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "Ctrl-C's handler is restored"


def test_resume_skips_what_is_done_and_checks_the_config(tmp_path: Path) -> None:
    config = ProverConfig(output_dir=tmp_path)
    run = RunDir.prepare(tmp_path, key="id")
    _begin(run, config, total=3)
    with run:
        run.append({"id": "a", "proved": True})
        run.append({"id": "b", "proved": False})
    with (tmp_path / "results.jsonl").open("a") as fh:
        fh.write('{"id": "c", "pro')   # the torn last line of a crash
    with pytest.raises(RunDirError) as differs:
        changed = config.model_copy(update={"verifier": config.verifier.model_copy(
            update={"timeout_s": 7.0})})
        _begin(RunDir.prepare(tmp_path, key="id", resume=True), changed)
    assert "--resume with a different config: verifier.timeout_s: 60.0 -> 7.0" in str(differs.value), \
        str(differs.value)
    resumed = RunDir.prepare(tmp_path, key="id", resume=True)
    assert resumed.done_keys == {"a", "b"}, resumed.done_keys
    _begin(resumed, config, total=3)
    with resumed:
        resumed.append({"id": "c", "proved": True})
    assert [r["id"] for r in _lines(tmp_path / "results.jsonl")] == ["a", "b", "c"], (tmp_path / "results.jsonl").read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["done"], summary["complete"], summary["proved"]) == (3, True, 2), summary
    written = tomllib.loads((tmp_path / "config.resolved.toml").read_text())
    assert written["verifier"]["timeout_s"] == 60.0, written


def test_progress_lines_when_not_on_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(4, unit="problems", stream=stream, every_s=3600, every_items=2)
    progress.samples(3)
    progress.item(succeeded=True)
    assert stream.getvalue() == "", "no line before the interval"
    progress.item(succeeded=False)
    progress.samples(3)
    progress.item(succeeded=False)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(", ")[:3] for line in lines] == [
        ["progress: 2/4 problems", "3 samples verified", "1 proved"],
        ["progress: 3/4 problems", "6 samples verified", "1 proved"]], lines
    assert "ETA" in lines[0], lines


def test_progress_bar_on_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(3, unit="problems", stream=stream, tty=True)
    progress.samples(2)
    progress.item(succeeded=True)
    progress.item(succeeded=False)
    progress.close()
    shown = stream.getvalue()
    assert "2/3" in shown and "2 samples verified, 1 proved" in shown and "ETA" in shown, shown
