"""Training metrics shared by every trainer: metrics.jsonl, TensorBoard and a progress display.

    metrics = MetricsLog(run_dir, resume_step=state.step if resumed else None)
    metrics.log(step, loss=..., lr=...)     # one row, written and flushed now
    metrics.close()

`metrics.jsonl` holds one JSON object per logged step, with at least `step` (optimizer steps
done) and `time` (Unix seconds); evaluation rows carry `eval_loss` with the same `step`.
On resume from a checkpoint taken at step S, rows with step > S (logged after that checkpoint,
by a run that was then killed) are dropped before anything is appended, so no step appears
twice and the file reads as one uninterrupted run. TensorBoard events go to `tb/` through
torch.utils.tensorboard with `purge_step = S + 1`, which hides the same steps there.

`StepProgress` shows steps done, the latest loss and learning rate, elapsed time and ETA on
stderr: a rich bar on a terminal, a line every `every_s` seconds otherwise (prover.runs.Progress).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from prover.runs import Progress

METRICS_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tb"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl (a last line cut short by a crash is skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue   # the torn last line of a killed run
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


class MetricsLog:
    """Appends metric rows to `run_dir/metrics.jsonl` and TensorBoard `run_dir/tb/`.

    resume_step: None starts a new file (an old one is replaced); an int keeps only the rows with
    step <= resume_step (the checkpoint being resumed) and appends after them.
    tensorboard: False writes metrics.jsonl alone."""

    def __init__(self, run_dir: Path, *, resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step] if resume_step is not None else []
        tmp = self.path.with_name(f".{METRICS_NAME}.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.path)
        self._fh: IO[str] | None = self.path.open("a", encoding="utf-8")
        self._writer: Any = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR),
                                         purge_step=None if resume_step is None else resume_step + 1)

    def log(self, step: int, values: Mapping[str, Any]) -> dict[str, Any]:
        """Write one row {step, time, **values} (flushed) and its numbers to TensorBoard under
        their names ("train/loss" style names are fine); returns the row."""
        row = {"step": step, "time": round(time.time(), 3), **values}
        if self._fh is None:
            raise RuntimeError("metrics log is closed")
        self._fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._fh.flush()
        if self._writer is not None:
            for name, value in values.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    self._writer.add_scalar(name, value, step)
            self._writer.flush()
        return row

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StepProgress(Progress):
    """prover.runs.Progress counting optimizer steps, showing the latest loss and learning rate."""

    def __init__(self, total: int, *, done: int = 0, stream: IO[str] | None = None,
                 tty: bool | None = None, every_s: float = 10.0) -> None:
        self.latest: dict[str, float] = {}
        super().__init__(total, unit="steps", done=done, stream=stream, tty=tty, every_s=every_s)

    def _stats(self) -> str:
        return ", ".join(f"{k} {v:.4g}" for k, v in self.latest.items()) or "starting"

    def step(self, **latest: float) -> None:
        """One more optimizer step done; `latest` (loss=..., lr=...) replaces what is shown."""
        self.latest = dict(latest)
        self.item(succeeded=False)
