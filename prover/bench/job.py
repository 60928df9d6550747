"""One bench-style run into its folder: the body `prover bench`, `prover distill` and `prover
iterate`'s proving phase share. From a resolved config and the problems asked for, it refuses a
bad folder or input before any work, opens the verifier (the stand-in only when asked, always
labelled), records the manifest, samples and verifies with `prover.bench.runner.run_bench`,
appends each problem's record as it finishes (`prover.runs.RunDir`: resumable, kill -9 loses
only the problems in flight), and writes summary.json, report.md and passk.png.

    outcome = run_bench_job(config, BenchRequest(suite="minif2f-valid", problems=None, split=None,
                                                 limit=8, method="whole"), command="bench")
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prover.errors import UserError

if TYPE_CHECKING:
    from prover.config import ProverConfig

SummaryExtra = Callable[[Sequence[dict[str, Any]], dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class BenchRequest:
    """The problems and method of a bench-style run, and how to treat its folder (the rest of
    the job, model, sampling, verifier and output folder, is the resolved config's)."""

    suite: str | None
    problems: str | None
    split: str | None
    limit: int | None
    method: str | None = None              # None: the [run] method of the config, else whole
    names: tuple[str, ...] | None = None   # only these problems (names or ids), recorded as run.names
    force: bool = False
    resume: bool = False
    standin: Path | None = None            # the stand-in's rule table (`--standin`): a test double


@dataclass(frozen=True)
class BenchOutcome:
    """A finished (or interrupted) bench-style run: its folder, summary, records and manifest."""

    path: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    manifest: dict[str, Any]
    prefix: str                 # "[stand-in (not Lean)] " when the stand-in judged, else ""
    interrupted: str | None     # the line to print when Ctrl-C / SIGTERM stopped the run


def _stderr(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def run_bench_job(config: ProverConfig, request: BenchRequest, *, command: str,
                  summary_extra: SummaryExtra | None = None, say: Callable[[str], None] = _stderr,
                  on_record: Callable[[str, dict[str, Any]], None] | None = None) -> BenchOutcome:
    """One bench-style run into `config.output_dir` (`command` names it in the resolved config:
    "bench", "distill", "iterate"). `summary_extra(records, manifest)` adds the caller's counts to
    summary.json; `say` gets the diagnostics (stderr); `on_record(line, record)` each problem's
    record as it is written, with its one-line description."""
    from policy.engines import make_engine
    from policy.tokenizer import load_tokenizer
    from prover.bench.report import write_report
    from prover.bench.runner import (
        build_manifest,
        check_ks,
        load_method,
        run_bench,
        select_problems,
        summarize_bench,
    )
    from prover.checking import STANDIN_LABEL, open_verifier
    from prover.checkpoints import resolve_model
    from prover.runs import RunDir, RunInterrupted, command_line, draw_seed
    from prover.search.attempts import context_length, prompt_fit

    recorded = config.run
    method = request.method or recorded.method or "whole"   # recorded in [run]: a re-run and --resume keep it
    suite, problems = request.suite, request.problems
    load_method(method, config.search)   # a method (or its backend) not installed: one line, before any work
    check_ks(method, config.benchmark.k)
    if suite is None and problems is None:   # a resolved config re-runs its own job
        if recorded.command != command:
            raise UserError("name the problems: --suite NAME (see `prover data suites`) or --problems PATH")
        suite, problems = config.benchmark.suite, recorded.problems
        problems = None if problems == suite else problems
        names = request.names if request.names is not None else (
            tuple(recorded.names) if recorded.names is not None else None)
    else:
        names = request.names
    if config.policy.checkpoint is None:
        raise UserError("no policy checkpoint: pass --model DIR (e.g. one written by `prover model init`)")
    run = RunDir.prepare(config.output_dir, key="id", force=request.force, resume=request.resume)   # before any work
    checkpoint = resolve_model(config.policy.checkpoint)
    config = config.model_copy(update={"policy": config.policy.model_copy(update={
        "checkpoint": str(checkpoint),   # engines refuse a context past the model's
        "max_model_len": context_length(checkpoint, config.policy.max_model_len)})})
    limit = request.limit if request.limit is not None else recorded.limit
    selection = select_problems(suite=suite, problems=problems,
                                split=request.split if request.split is not None else recorded.split,
                                limit=limit, names=names)
    verifier = open_verifier(config.verifier, request.standin)   # no Lean: exit here, before loading a model
    label = STANDIN_LABEL if verifier.config.backend == "standin" else None
    if config.policy.sampling.seed is None:   # drawn once, recorded, and kept on --resume
        drawn = run.previous("policy.sampling.seed")
        config.policy.sampling.seed = drawn if isinstance(drawn, int) else draw_seed()
    config = config.model_copy(update={"verifier": verifier.config, "run": recorded.model_copy(update={
        "command": command, "argv": command_line(),
        "problems": problems or suite, "problems_file": selection.file, "problems_sha256": selection.sha256,
        "split": selection.split, "limit": limit, "names": list(names) if names is not None else None,
        "method": method})})
    manifest = build_manifest(config, checkpoint=checkpoint, selection=selection, method=method,
                              checked_by=verifier.checked_by, standin=label is not None,
                              final_judge_active=getattr(verifier, "final_judge", None) is not None)
    _refuse_other_weights(run, manifest)
    ks, samples = config.benchmark.k, config.policy.sampling.n

    def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        counts = summarize_bench(records, ks=ks, n=samples)
        return counts | (summary_extra(records, manifest) if summary_extra is not None else {})

    run.begin(config, total=len(selection.problems), summarize=summarize,
              succeeded=lambda r: bool(r["proved"]), unit="problems",
              extra={"method": method, "n": samples, "k": ks, "checked_by": verifier.checked_by}
              | ({"backend": label} if label else {}) | {"manifest": manifest})
    todo = [p for p in selection.problems if p.id not in run.done_keys]
    prefix = f"[{label}] " if label else ""
    if label:
        say(f"{prefix}verdicts come from the stand-in REPL, a test double: these numbers are not Lean's")
    interrupted: str | None = None
    try:
        with run:
            if run.done_keys:
                say(f"resuming {run.path}: {len(selection.problems) - len(todo)} of {len(selection.problems)} "
                    "problems already done")
            if todo:
                say(f"starting {config.policy.engine} on {checkpoint} ...")
                tokenizer = load_tokenizer(config.policy.tokenizer or checkpoint)
                fits = prompt_fit(lambda text: len(tokenizer(text)["input_ids"]),
                                  context_length(checkpoint, config.policy.max_model_len))
                with make_engine(config.policy) as policy_engine, verifier:
                    for record in run_bench(todo, policy_engine, verifier, config, method=method, label=label,
                                            on_verified=run.verified, prompt_check=fits, tokenizer=tokenizer):
                        run.append(record)
                        if on_record is not None:
                            on_record(f"{prefix}{record['id']}: {record['correct']}/{record['samples']} "
                                      f"accepted ({record['outcome']})", record)
    except RunInterrupted as stop:
        interrupted = str(stop)
    summary = run.summary
    assert summary is not None and run.path is not None
    write_report(run.path, summary, run.records)
    return BenchOutcome(run.path, summary, run.records, manifest, prefix, interrupted)


def _refuse_other_weights(run: Any, manifest: dict[str, Any]) -> None:
    """--resume must score the same weights and tokenizer (its chat template renders the
    prompts): the checkpoint path alone could hold new ones."""
    if not run.resume or run.path is None or not (run.path / "summary.json").is_file():
        return
    try:
        model = json.loads((run.path / "summary.json").read_text(encoding="utf-8"))["manifest"]["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    for what, key in (("weights", "weights"), ("tokenizer files", "tokenizer_files")):
        before = (model.get(key) or {}).get("sha256") if isinstance(model, dict) else None
        now = manifest["model"][key]["sha256"]
        if key in model and before != now:   # a run recorded before the key existed is not refused
            raise UserError(f"{run.path}: --resume with different {what}: sha256 {str(before)[:12]}... -> "
                            f"{str(now)[:12]}...; pass --force to start over")
