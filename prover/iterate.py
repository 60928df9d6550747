"""Expert iteration (`prover iterate`): prove, collect, fine-tune, for N rounds.

Round r (Polu et al. 2022, "Formal mathematics statement curriculum learning"; Anthony et al.
2017's expert iteration):
  1. prove: a `prover distill` run (prover.distill: bench's loop, run folder, resume, manifest)
     of the round's model on the problem set, `iterate.samples` samples per problem (only the
     problems no earlier round solved, unless `iterate.attempt = "all"`);
  2. collect: the accumulated corpus = the previous round's (or `iterate.seed_corpus`) plus this
     round's accepted proofs, one row per distinct normalised proof of a problem
     (prover.corpus_rows);
  3. fine-tune: a `prover sft` run (prover.rl.sft) on that corpus, from the base model or the
     last round's (`iterate.sft_from`); its final checkpoint proves in round r + 1.

    DIR/config.resolved.toml     the resolved config (`iterate.rounds` may grow on a re-run)
    DIR/round-01/prove/          a distill run folder (results.jsonl, corpus.jsonl, summary.json, ...)
    DIR/round-01/corpus.jsonl    the accumulated, deduplicated corpus after round 1
    DIR/round-01/sft/            an sft run folder (checkpoints/step-N: Hugging Face folders)
    DIR/round-01/round.json      written last: the round's counts; its presence marks it done
    DIR/report.json, report.md   per round: problems attempted, newly solved, total solved, corpus
                                 size, SFT train/eval loss, the models, seconds

Every phase resumes (bench's results.jsonl, sft's checkpoints), so resuming is running the same
command again: finished rounds (round.json) and finished phases (a complete summary.json) are
read, not redone, and an interrupted phase continues where it stopped, even after kill -9. The
corpus is a function of finished proving runs, so it is simply rebuilt. Verdicts from the
stand-in REPL are labelled so in every report: they are a test double's, not Lean's.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prover.config import ProverConfig, read_config_file, write_resolved_config
from prover.corpus_rows import normalized, write_corpus
from prover.errors import UserError
from prover.runs import (
    CONFIG_NAME,
    RESULTS_NAME,
    SUMMARY_NAME,
    Interrupted,
    RunConfig,
    RunDirError,
    config_differences,
    sigterm_as_interrupt,
    with_absolute_paths,
)

ROUND_NAME = "round.json"
CORPUS_NAME = "corpus.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PROVE_DIR, SFT_DIR = "prove", "sft"
# A re-run may add rounds, and says so on its command line; nothing else may change.
RERUN_IGNORED = ("iterate.rounds", "run.argv", "output_dir")


class IterateInterrupted(Interrupted):
    """Ctrl-C or SIGTERM stopped a round; what was done is kept. `str()` is the line to print."""

    def __init__(self, round_: int, phase: str, detail: str) -> None:
        self.round, self.phase = round_, phase
        super().__init__(f"interrupted in round {round_} ({phase}): {detail}; run the same command to continue")


def round_dir(out: Path, round_: int) -> Path:
    return out / f"round-{round_:02d}"


def _stderr(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file written whole (os.replace), or None when absent or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _complete(folder: Path) -> dict[str, Any] | None:
    """The folder's summary.json when it says the run completed, else None."""
    summary = _read_json(folder / SUMMARY_NAME)
    return summary if summary is not None and summary.get("complete") is True else None


# -- pure parts: what a round adds ----------------------------------------------------------------

def solved_problems(records: Sequence[Mapping[str, Any]]) -> set[str]:
    """Ids of the problems with at least one accepted attempt in a proving run's records."""
    return {str(r["id"]) for r in records
            if any(a["verdict"]["outcome"] == "accepted" for a in r.get("attempts") or [])}


def merge_corpus(previous: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`previous` then the rows of `new` that are not already there: one row per (problem,
    normalised proof), the earliest kept (a proof found again adds nothing)."""
    seen: set[tuple[str, str]] = set()
    merged: list[dict[str, Any]] = []
    for row in [*previous, *new]:
        key = (str(row["name"]), normalized(str(row["code"])))
        if key not in seen:
            seen.add(key)
            merged.append(dict(row))
    return merged


def seed_rows(config: ProverConfig) -> list[dict[str, Any]]:
    """`iterate.seed_corpus` (its first `seed_limit` rows), deduplicated; [] when none is set."""
    it = config.iterate
    if it.seed_corpus is None:
        return []
    path = Path(it.seed_corpus)
    if not path.is_file():
        raise UserError(f"iterate.seed_corpus {it.seed_corpus}: no such file")
    try:
        rows = _read_rows(path)
    except ValueError as exc:
        raise UserError(f"iterate.seed_corpus {it.seed_corpus}: not jsonl ({exc})") from None
    bad = next((i for i, r in enumerate(rows, 1) if not isinstance(r, dict) or "name" not in r or "code" not in r), None)
    if bad is not None:
        raise UserError(f"iterate.seed_corpus {it.seed_corpus}: line {bad} has no name and code (corpus rows, "
                        "prover/corpus_rows.py)")
    return merge_corpus([], rows[:it.seed_limit] if it.seed_limit else rows)


# -- the run folder -------------------------------------------------------------------------------

def prepare_iterate_dir(out: Path, config: ProverConfig, *, force: bool = False) -> bool:
    """Make `out` ready; True when it holds an earlier run of this config (continued). A
    different config (rounds aside) is refused, as is a non-empty folder that is no iterate run,
    unless `force` (the whole folder's rounds and reports are removed)."""
    import shutil

    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: not a folder (the output folder of a run)")
    if force and out.is_dir():
        for child in out.iterdir():
            if child.name.startswith("round-") and child.is_dir():
                shutil.rmtree(child)
            elif child.name in (CONFIG_NAME, REPORT_JSON, REPORT_MD):
                child.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
    if not os.access(out, os.W_OK):
        raise RunDirError(f"{out}: output folder is not writable")
    if (out / CONFIG_NAME).is_file():
        stored = read_config_file(out / CONFIG_NAME)
        if (stored.get("run") or {}).get("command") != "iterate":
            raise RunDirError(f"{out}: holds a run of another command; pass --force or another --out")
        current = config.model_dump(mode="json", exclude_none=True)
        differences = config_differences(stored, current, ignored=RERUN_IGNORED)
        if differences:
            shown = "; ".join(differences[:3]) + (f" (and {len(differences) - 3} more)" if len(differences) > 3 else "")
            raise RunDirError(f"{out}: holds an iterate run with a different config: {shown}; pass the same "
                              "options to continue it (only --rounds may change), --force to start over, or "
                              "another --out")
        return True
    present = sorted(p.name for p in out.iterdir())
    if present:
        shown = ", ".join(present[:4]) + (f" and {len(present) - 4} more" if len(present) > 4 else "")
        raise RunDirError(f"{out}: folder is not empty ({shown}) and holds no iterate run; pass --force or "
                          "another --out")
    return False


def _phase_folder(folder: Path) -> tuple[bool, bool]:
    """(resume, force) for a phase's run folder: continue one that recorded its config; start over
    in one that a kill left without it (nothing in it was done)."""
    resume = (folder / CONFIG_NAME).is_file()
    force = not resume and folder.is_dir() and any(folder.iterdir())
    return resume, force


# -- one round ------------------------------------------------------------------------------------

def _prove(config: ProverConfig, folder: Path, model: str, round_: int, attempt: Sequence[str] | None,
           say: Callable[[str], None]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The proving phase: a distill run of `model` into `folder` (continued if begun); returns its
    records and summary. `attempt`: only these problem ids (None: the whole selection)."""
    from prover.bench.job import BenchRequest
    from prover.distill import run_distill

    it = config.iterate
    done = _complete(folder)
    if done is not None:
        say(f"round {round_}: proving already done ({folder})")
        return _read_rows(folder / RESULTS_NAME), done
    sampling = config.policy.sampling
    seed = None if sampling.seed is None else sampling.seed + round_ - 1   # other samples each round
    phase = config.model_copy(update={
        "output_dir": folder, "run": RunConfig(),
        "policy": config.policy.model_copy(update={
            "checkpoint": model, "sampling": sampling.model_copy(update={"n": it.samples, "seed": seed})}),
        "benchmark": config.benchmark.model_copy(update={"k": [1], "suite": it.problems, "split": it.split,
                                                         "limit": it.limit})})
    resume, force = _phase_folder(folder)
    request = BenchRequest(suite=None, problems=it.problems, split=it.split,
                           limit=None if attempt is not None else it.limit, method=it.method,
                           names=tuple(attempt) if attempt is not None else None, resume=resume, force=force)
    outcome, _stats = run_distill(phase, request, say=say,
                                  on_record=lambda line, record: say(f"round {round_}: {line}"))
    if outcome.interrupted is not None:
        raise IterateInterrupted(round_, "prove", outcome.interrupted)
    return outcome.records, outcome.summary


def _finetune(config: ProverConfig, folder: Path, start: str, corpus: Path, round_: int,
              say: Callable[[str], None]) -> dict[str, Any]:
    """The fine-tuning phase: an sft run from `start` on `corpus` into `folder` (continued from
    its newest checkpoint if begun); returns its summary."""
    from prover.rl.sft import SFTInterrupted, run_sft

    done = _complete(folder)
    if done is not None:
        say(f"round {round_}: fine-tuning already done ({folder})")
        return done
    it = config.iterate
    assert it.problems is not None
    phase = config.model_copy(update={
        "output_dir": folder, "run": RunConfig(command="sft"),
        "policy": config.policy.model_copy(update={"checkpoint": start}),
        "sft": config.sft.model_copy(update={"corpus": str(corpus), "format": "lean-files",
                                             "problems": it.problems})})
    _resume, force = _phase_folder(folder)
    say(f"round {round_}: fine-tuning {start} on {corpus} ({config.training.steps} steps)")
    try:
        summary = run_sft(phase, folder, force=force)
    except SFTInterrupted as stop:
        raise IterateInterrupted(round_, "sft", str(stop)) from None
    assert summary is not None, "prover iterate runs on one process (its SFT phase is not under torchrun)"
    return summary


def run_round(config: ProverConfig, out: Path, round_: int, *, model: str, solved_before: set[str],
              corpus_before: Sequence[Mapping[str, Any]], selection_ids: Sequence[str],
              say: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """One round into `out/round-NN` (continuing what a killed run left); returns round.json."""
    it = config.iterate
    folder = round_dir(out, round_)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    attempt = [p for p in selection_ids if p not in solved_before] if it.attempt == "unsolved" else list(selection_ids)
    if attempt:
        records, prove_summary = _prove(config, folder / PROVE_DIR, model, round_,
                                        attempt if it.attempt == "unsolved" and solved_before else None, say)
    else:
        say(f"round {round_}: every problem is solved; nothing to prove")
        records, prove_summary = [], {}
    prove_s = time.perf_counter() - started
    proved = solved_problems(records)
    newly = sorted(proved - solved_before)
    found = _read_rows(folder / PROVE_DIR / CORPUS_NAME) if attempt else []
    corpus = merge_corpus(corpus_before, found)
    corpus_path = write_corpus(folder / CORPUS_NAME, corpus)
    tick = time.perf_counter()
    sft_summary: dict[str, Any] | None = None
    base = str(config.policy.checkpoint)
    start: str | None = base if it.sft_from == "base" else model
    if corpus and it.sft_from == "base" and model != base and corpus == list(corpus_before):
        # The same corpus from the same base with the same seeds: the last round's model again.
        say(f"round {round_}: no new proof; the corpus is unchanged, so fine-tuning would repeat the last "
            f"round's: the model stays {model}")
        start, model_out = None, model
    elif corpus:
        assert start is not None
        sft_summary = _finetune(config, folder / SFT_DIR, start, corpus_path, round_, say)
        model_out = str(sft_summary["checkpoint"])
    else:
        say(f"round {round_}: the corpus is empty; no fine-tuning, the model stays {model}")
        start, model_out = None, model
    sft_s = time.perf_counter() - tick
    total = solved_before | proved
    verdicts = prove_summary.get("backend") or ("lean" if prove_summary else None)
    record = {
        "round": round_, "complete": True,
        "model": model,                           # the policy that proved this round
        "attempted": len(attempt), "proved": len(proved), "newly_solved": len(newly),
        "newly_solved_ids": newly, "total_solved": len(total), "solved_ids": sorted(total),
        "problems": len(selection_ids),
        "samples": sum(int(r.get("samples") or 0) for r in records),
        "accepted_samples": sum(int(r.get("correct") or 0) for r in records),
        "corpus": {"rows": len(corpus), "new_rows": len(corpus) - len(corpus_before),
                   "from_this_round": len(found), "path": str(corpus_path)},
        "sft": None if sft_summary is None else {
            "from": start, "steps": sft_summary.get("steps"), "train_loss": sft_summary.get("train_loss"),
            "eval_loss": sft_summary.get("eval_loss"), "examples": sft_summary.get("examples"),
            "held_out": sft_summary.get("held_out"), "checkpoint": model_out},
        "model_out": model_out,                   # the policy the next round proves with
        "verdicts": verdicts,
        "seconds": {"prove": round(prove_s, 2), "sft": round(sft_s, 2),
                    "total": round(time.perf_counter() - started, 2)},
    }
    _write_json(folder / ROUND_NAME, record)
    return record


# -- the whole run --------------------------------------------------------------------------------

def _selection_ids(config: ProverConfig) -> list[str]:
    from prover.bench.runner import select_problems

    it = config.iterate
    return [p.id for p in select_problems(suite=None, problems=it.problems, split=it.split, limit=it.limit).problems]


def _resolved(config: ProverConfig, out: Path) -> ProverConfig:
    """The config as the run records it: paths absolute, output folder `out`, command iterate."""
    from prover.checkpoints import resolve_model

    it = config.iterate
    if it.problems is None:
        raise UserError("iterate.problems: name the problem set (--problems SET or [iterate] problems)")
    if config.policy.checkpoint is None:
        raise UserError("no policy to start from: pass --model DIR (e.g. one written by `prover model init`)")

    def local(value: str | None) -> str | None:
        return os.path.abspath(value) if value is not None and Path(value).exists() else value

    base = str(resolve_model(str(config.policy.checkpoint)))
    config = config.model_copy(update={
        "output_dir": out,
        "policy": config.policy.model_copy(update={"checkpoint": base}),
        "iterate": it.model_copy(update={"problems": local(it.problems), "seed_corpus": local(it.seed_corpus)}),
        "run": config.run.model_copy(update={"command": "iterate"})})
    return with_absolute_paths(config)


def run_iterate(config: ProverConfig, out: Path, *, force: bool = False,
                say: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Expert iteration into `out` for `config.iterate.rounds` rounds, continuing an earlier run
    there; returns the report (also out/report.json and report.md). Raises IterateInterrupted on
    Ctrl-C / SIGTERM (what was done is kept; the same call continues)."""
    out = Path(os.path.abspath(out))   # the models the report names are found from any folder
    config = _resolved(config, out)
    selection_ids = _selection_ids(config)   # a bad problem set fails here, before any work
    seeds = seed_rows(config)
    resumed = prepare_iterate_dir(out, config, force=force)
    write_resolved_config(config, out)
    if resumed:
        say(f"continuing {out}")
    model, solved, corpus = str(config.policy.checkpoint), set[str](), seeds
    rounds: list[dict[str, Any]] = []
    started = time.perf_counter()
    current = 0
    try:
        with sigterm_as_interrupt():
            for current in range(1, config.iterate.rounds + 1):
                folder = round_dir(out, current)
                record = _read_json(folder / ROUND_NAME)
                if record is not None and record.get("complete") is True:
                    say(f"round {current}: already done ({record['newly_solved']} newly solved)")
                    record = record | {"resumed": True}
                else:
                    record = run_round(config, out, current, model=model, solved_before=solved,
                                       corpus_before=corpus, selection_ids=selection_ids, say=say)
                    say(f"round {current}: {record['attempted']} attempted, {record['newly_solved']} newly solved, "
                        f"{record['total_solved']} solved in all, corpus {record['corpus']['rows']} proofs")
                rounds.append(record)
                model, solved = record["model_out"], set(record["solved_ids"])
                corpus = _read_rows(folder / CORPUS_NAME)
                write_report(out, config, rounds, seeds=len(seeds))
    except KeyboardInterrupt:
        raise IterateInterrupted(current, "between phases", "nothing in flight was lost") from None
    return write_report(out, config, rounds, seeds=len(seeds), seconds=time.perf_counter() - started)


# -- the report -----------------------------------------------------------------------------------

def write_report(out: Path, config: ProverConfig, rounds: Sequence[Mapping[str, Any]], *, seeds: int,
                 seconds: float | None = None) -> dict[str, Any]:
    """report.json and report.md from the rounds done so far; returns the report."""
    from prover.checking import STANDIN_LABEL

    it = config.iterate
    standin = config.verifier.backend == "standin"
    report = {
        "command": "iterate", "complete": len(rounds) >= it.rounds, "rounds_requested": it.rounds,
        "rounds_done": len(rounds), "base_model": str(config.policy.checkpoint),
        "problems": it.problems, "split": it.split, "limit": it.limit, "samples_per_problem": it.samples,
        "attempt": it.attempt, "sft_from": it.sft_from, "sft_steps_per_round": config.training.steps,
        "seed_corpus": it.seed_corpus, "seed_rows": seeds,
        "verdicts": STANDIN_LABEL if standin else f"Lean ({config.verifier.backend} backend)",
        "standin": standin,
        "final_model": rounds[-1]["model_out"] if rounds else str(config.policy.checkpoint),
        "rounds": [{k: v for k, v in r.items() if k not in ("solved_ids",)} for r in rounds],
        "output_dir": str(out),
    } | ({"seconds": round(seconds, 2)} if seconds is not None else {})
    _write_json(out / REPORT_JSON, report)
    tmp = out / f".{REPORT_MD}.tmp"
    tmp.write_text(render_report(report), encoding="utf-8")
    os.replace(tmp, out / REPORT_MD)
    return report


def _loss(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def render_report(report: Mapping[str, Any]) -> str:
    """report.md's text: one table row per round."""
    lines = [f"# prover iterate: {report['problems']}" + (f" ({report['split']})" if report.get("split") else ""), ""]
    if report["standin"]:
        lines += [f"> **Verdicts from the {report['verdicts']}: a test double, not Lean. These counts say nothing "
                  "about proofs.**", ""]
    if not report["complete"]:
        lines += [f"> **{report['rounds_done']} of {report['rounds_requested']} rounds done** (run the same "
                  "command to continue).", ""]
    lines += [f"Base model `{report['base_model']}`; {report['samples_per_problem']} samples per problem, "
              f"attempting {report['attempt']} problems; fine-tuning {report['sft_steps_per_round']} steps per round "
              f"from the {report['sft_from']} model; seed corpus {report['seed_rows']} proofs. Verdicts: "
              f"{report['verdicts']}.", "",
              "| round | attempted | newly solved | total solved | corpus | SFT train loss | SFT eval loss "
              "| proved with | seconds |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rounds"]:
        sft = r.get("sft") or {}
        lines.append(f"| {r['round']} | {r['attempted']} | {r['newly_solved']} | {r['total_solved']} / {r['problems']} "
                     f"| {r['corpus']['rows']} (+{r['corpus']['new_rows']}) | {_loss(sft.get('train_loss'))} "
                     f"| {_loss(sft.get('eval_loss'))} | `{r['model']}` | {r['seconds']['total']} |")
    if report["rounds"]:
        lines += ["", f"Final model: `{report['final_model']}`."]
    lines += ["", "Newly solved per round:"]
    lines += [f"- round {r['round']}: {', '.join(r['newly_solved_ids']) or 'none'}" for r in report["rounds"]]
    return "\n".join(lines) + "\n"
