"""Distillation: a stronger model's Lean-accepted proofs of a problem set, as an SFT corpus.

`prover distill` is a `prover bench` run (the same loop, `prover.bench.runner.run_bench` over
`prover.search.methods.prove_problems`, the same run folder that streams and resumes, the same
manifest) followed by this module, which turns the run's records into `corpus.jsonl` (rows as
`prover.corpus_rows` describes them): only accepted attempts, one row per distinct normalised
proof of a problem (the first sample of each kept, with how many accepted samples it stands
for), each with its provenance (model and weights, template, method, sampling and seed,
dataset, and the verdict with who judged it: Lean or the stand-in, never confused).

The corpus is a function of `results.jsonl` and the manifest alone, so it is rewritten whole
after every run, interrupted or resumed: it always holds exactly the proofs verified so far.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prover.corpus_rows import dedupe, verdict_provenance, write_corpus

if TYPE_CHECKING:
    from prover.bench.job import BenchOutcome, BenchRequest
    from prover.config import ProverConfig

CORPUS_NAME = "corpus.jsonl"


def model_name(path: Path) -> tuple[str, str | None]:
    """(name, revision) of a checkpoint folder: a Hugging Face cache snapshot
    (`.../models--owner--name/snapshots/<commit>`) gives the hub id and its commit, any other
    folder its own name and no revision."""
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.removeprefix("models--").replace("--", "/"), path.name
    return path.name, None


def corpus_rows(records: Sequence[Mapping[str, Any]], manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Corpus rows from a bench/distill run's records (`ProofResult.to_json()` plus bench's
    fields) and its manifest (`prover.bench.runner.build_manifest`), in record order."""
    model, template = manifest["model"], manifest["template"]
    dataset = manifest["dataset"]
    sampling = dict(manifest["sampling"])
    name, revision = model_name(Path(str(model["path"])))
    source = f"distill: {name} on {dataset['name']}"
    provenance_base = {
        "model": {"name": name, "path": model["path"], "weights_sha256": model["weights"]["sha256"],
                  "revision": revision},
        "template": {"name": template["name"], "sha256": template["sha256"]},
        "method": manifest["method"],
        "sampling": sampling,
        "seed": sampling.get("seed"),
        "dataset": {"name": dataset["name"], "sha256": dataset["sha256"]},
    }
    rows: list[dict[str, Any]] = []
    for record in records:
        accepted = [a for a in record.get("attempts") or [] if a["verdict"]["outcome"] == "accepted"]
        kept, first_of = dedupe([a["candidate"] for a in accepted])
        header = str(record.get("header") or "")
        for index in kept:
            attempt = accepted[index]
            rows.append({
                "name": record["id"],
                "code": header + attempt["candidate"],
                "source": source,
                "provenance": provenance_base | {
                    "sample": attempt["sample"],
                    "duplicates": sum(1 for j in first_of.values() if j == index),
                    "verdict": verdict_provenance(attempt["verdict"]),
                } | ({"round": attempt["round"]} if attempt.get("round") else {}),
            })
    return rows


def corpus_stats(records: Sequence[Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the corpus holds against what was sampled: problems, samples, accepted samples,
    distinct proofs written, duplicates dropped, problems with at least one proof."""
    accepted = sum(a["verdict"]["outcome"] == "accepted" for r in records for a in r.get("attempts") or [])
    return {"problems": len(records), "samples": sum(len(r.get("attempts") or []) for r in records),
            "accepted_samples": accepted, "proofs": len(rows), "duplicates_dropped": accepted - len(rows),
            "problems_with_proofs": len({row["name"] for row in rows}),
            "backends": sorted({row["provenance"]["verdict"]["backend"] for row in rows})}


def write_run_corpus(run_path: Path, records: Sequence[Mapping[str, Any]],
                     manifest: Mapping[str, Any]) -> dict[str, Any]:
    """`run_path/corpus.jsonl` from the run's records; returns `corpus_stats` with the path."""
    rows = corpus_rows(records, manifest)
    target = write_corpus(run_path / CORPUS_NAME, rows)
    return corpus_stats(records, rows) | {"corpus": str(target)}


def summary_counts(records: Sequence[Mapping[str, Any]], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """What a distill run adds to summary.json: its corpus counts (`corpus_stats`)."""
    return {"corpus": corpus_stats(records, corpus_rows(records, manifest))}


def run_distill(config: ProverConfig, request: BenchRequest, **job: Any) -> tuple[BenchOutcome, dict[str, Any]]:
    """A distill run into `config.output_dir` (`prover.bench.job.run_bench_job` recorded as
    command "distill", so `prover --config DIR/config.resolved.toml distill` re-runs it), then its
    corpus.jsonl; returns the outcome and the corpus counts. `job`: run_bench_job's `say`,
    `on_record`."""
    from prover.bench.job import run_bench_job

    done = run_bench_job(config, request, command="distill", summary_extra=summary_counts, **job)
    return done, write_run_corpus(done.path, done.records, done.manifest)
