"""Curation, s1 style: choose a small SFT set from larger proof corpora by quality, difficulty
and diversity, and say why each row was kept or dropped (`prover data curate`).

s1 (Muennighoff et al. 2025, "s1: Simple test-time scaling", section 2 and its Algorithm 1)
built s1K from 59K questions in three stages, and so do we, for Lean proofs:

1. Quality: only Lean-accepted proofs. A row's recorded verdict (`provenance.verdict`, see
   `prover.corpus_rows`) must say `accepted`; with `verify` every row is checked again through
   the verifier, the pipeline of `prover lean check-set` (`prover.checking.check_proofs`).
   Near-duplicates go next: rows of one problem whose normalised text (Lean's tokens without
   comments and spacing) is the same; the earliest row is kept.
2. Difficulty: s1 dropped questions that either of two base models solved, and took longer
   reasoning traces as harder. Here a bench or distill run of the base model gives each
   problem's pass rate (accepted / samples): problems above `max_pass_rate` are dropped, and
   lower pass rates, then longer proofs (Lean tokens after the statement), rank as harder.
   Without a run, proof length alone ranks.
3. Diversity: s1 drew a domain uniformly at random, then one question of that domain with
   weight 2^-rank (rank 0 the hardest), until 1,000 were drawn. Our domain is the problem's
   source and its name's family (`minif2f-valid/mathd`, `.../amc`, `.../imo`); the draw is
   s1's, seeded. From a drawn problem up to `per_problem` proofs are taken, those adding the
   most tactic names not yet in the selection first (tactic variety), then the longer.

Every input row ends in exactly one bucket (rejected, duplicate, too_easy, per_problem_cap,
not_drawn, selected), with its reason; the report's counts add up to the input.
"""

from __future__ import annotations

import json
import os
import random
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prover.checking import ProofEntry, check_proofs, load_proofs, match_problems
from prover.corpus_rows import (
    STANDIN_BACKEND,
    normalized,
    proof_length,
    recorded_verdict,
    tactic_names,
    verdict_provenance,
    write_corpus,
)
from prover.errors import UserError
from prover.problems import Problem, read_jsonl_rows, sha256_of

CORPUS_NAME = "corpus.jsonl"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
BUCKETS = ("rejected", "duplicate", "too_easy", "per_problem_cap", "not_drawn", "selected")


@dataclass(frozen=True)
class InputRow:
    """One row of an input corpus, its problem, and where it was read (`path:LINE`)."""

    entry: ProofEntry
    row: dict[str, Any]
    problem: Problem
    index: int          # input order over all corpora


def load_inputs(paths: Sequence[str], problems: Sequence[Problem]) -> list[InputRow]:
    """Every row of every corpus, matched to its problem (`prover.checking.match_problems`:
    an unknown or ambiguous name is an error naming the file and line)."""
    if len(set(paths)) != len(paths):
        raise UserError(f"a corpus is given twice: {', '.join(p for p in paths if paths.count(p) > 1)}")
    if not paths:
        raise UserError("no corpus: name at least one CORPUS.jsonl")
    rows: list[InputRow] = []
    names = [Path(p).name for p in paths]
    for path in paths:
        entries = load_proofs(Path(path))
        raw = [row for _, row in read_jsonl_rows(Path(path))]
        label = Path(path).name if names.count(Path(path).name) == 1 else path   # origins tell the files apart
        entries = [replace(e, origin=f"{label}:{e.origin.rsplit(':', 1)[1]}") for e in entries]
        for entry, problem, row in zip(entries, match_problems(entries, problems), raw, strict=True):
            rows.append(InputRow(entry, row, problem, len(rows)))
    return rows


def quality_records(rows: Sequence[InputRow], verifier: Any | None, *, batch_size: int = 64,
                    on_verified: Any = None) -> Iterator[dict[str, Any]]:
    """Stage 1's verdict on each row, as a run-folder record keyed by `origin`: with a verifier
    every row is checked again (as check-set does), else the row's recorded verdict is read."""
    if verifier is not None:
        problems = list({r.problem.id: r.problem for r in rows}.values())
        results = check_proofs([r.entry for r in rows], problems, verifier,
                               batch_size=batch_size, on_verified=on_verified)
        for result in results:
            verdict = verdict_provenance(result.verdict.to_json()) if result.verdict is not None else None
            yield {"origin": result.entry.origin, "name": result.entry.name, "problem_id": result.problem.id,
                   "outcome": result.outcome, "passed": result.verdict is not None and result.verdict.accepted,
                   "quality": "verified", "verdict": verdict}
        return
    for row in rows:
        recorded = recorded_verdict(row.row)
        outcome = str(recorded.get("outcome")) if recorded else "no_recorded_verdict"
        yield {"origin": row.entry.origin, "name": row.entry.name, "problem_id": row.problem.id,
               "outcome": outcome, "passed": outcome == "accepted", "quality": "recorded",
               "verdict": verdict_provenance(recorded) if recorded else None}


def read_pass_rates(run_dir: Path) -> dict[str, float]:
    """Each problem's pass rate (accepted samples / samples) from a bench or distill run folder's
    results.jsonl. A problem with no sample drawn (its prompt did not fit) has none."""
    path = run_dir / "results.jsonl"
    if not path.is_file():
        raise UserError(f"--pass-rates {run_dir}: no results.jsonl (give a `prover bench` or `prover distill` "
                        "run folder)")
    rates: dict[str, float] = {}
    for where, record in read_jsonl_rows(path):
        if not isinstance(record, dict) or "id" not in record or not isinstance(record.get("attempts"), list):
            raise UserError(f"--pass-rates {where}: not a bench record (needs 'id' and 'attempts')")
        attempts = record["attempts"]
        if attempts:
            accepted = sum(a.get("verdict", {}).get("outcome") == "accepted" for a in attempts)
            rates[str(record["id"])] = accepted / len(attempts)
    return rates


_FAMILY = re.compile(r"[A-Za-z][a-z]*")   # `aimeII_2001_p3` -> aime, `amc12a_...` -> amc, `Rudin_...` -> Rudin


def domain_of(problem: Problem) -> str:
    """The problem's source and the leading letters of its name: `minif2f-valid/mathd`,
    `minif2f-valid/amc`, `minif2f-valid/imo` (competitions and subject prefixes of miniF2F,
    ProofNet's textbook prefixes)."""
    match = _FAMILY.match(problem.name)
    return f"{problem.source}/{match.group(0) if match else '?'}"


@dataclass(frozen=True)
class Candidate:
    """A row that passed quality and deduplication, with what the selection reads."""

    input: InputRow
    verdict: dict[str, Any] | None
    length: int
    tactics: tuple[str, ...]
    pass_rate: float | None

    @property
    def problem_id(self) -> str:
        return self.input.problem.id


@dataclass
class Curation:
    """The outcome: the selected rows (in draw order) and every row's bucket and reason."""

    selected: list[tuple[Candidate, int]] = field(default_factory=list)   # (candidate, draw number)
    buckets: dict[str, tuple[str, str, str]] = field(default_factory=dict)   # origin -> (bucket, why, detail)

    def put(self, row: InputRow, bucket: str, why: str, detail: str = "") -> None:
        """`why` is shared by rows dropped for the same reason (the report counts it); `detail`
        is this row's own (which row it duplicates, which draw chose it)."""
        self.buckets[row.entry.origin] = (bucket, why, detail)


def curate(rows: Sequence[InputRow], quality: Mapping[str, Mapping[str, Any]], *, pass_rates: Mapping[str, float] | None,
           size: int | None, seed: int, max_pass_rate: float, per_problem: int) -> Curation:
    """The three stages over `rows`, given stage 1's records (`quality_records`, by origin)."""
    result = Curation()
    survivors: list[InputRow] = []
    for row in rows:
        record = quality[row.entry.origin]
        if record["passed"]:
            survivors.append(row)
        else:
            why = ("no recorded verdict (pass --verify to check it)" if record["outcome"] == "no_recorded_verdict"
                   else f"{'verifier' if record['quality'] == 'verified' else 'recorded verdict'}: {record['outcome']}")
            result.put(row, "rejected", why)
    first: dict[tuple[str, str], str] = {}
    candidates: dict[str, list[Candidate]] = {}
    for row in survivors:
        key = (row.problem.id, normalized(row.entry.code))
        if key in first:
            result.put(row, "duplicate", "same normalised text as an earlier row of its problem", first[key])
            continue
        first[key] = row.entry.origin
        rate = pass_rates.get(row.problem.id) if pass_rates is not None else None
        if rate is not None and rate > max_pass_rate:
            result.put(row, "too_easy", f"base pass rate above {max_pass_rate:g}", f"pass rate {rate:.3g}")
            continue
        candidates.setdefault(row.problem.id, []).append(Candidate(
            row, quality[row.entry.origin].get("verdict"), proof_length(row.entry.code),
            tuple(tactic_names(row.entry.code)), rate))
    _draw(candidates, result, size=size, seed=seed, per_problem=per_problem)
    return result


def _hardness(group: Sequence[Candidate]) -> tuple[bool, float, int]:
    """Sort key, hardest first: a known pass rate before an unknown one, lower pass rate, then
    the longer proof."""
    rate = group[0].pass_rate
    return (rate is None, rate if rate is not None else 0.0, -max(c.length for c in group))


def _draw(candidates: dict[str, list[Candidate]], result: Curation, *, size: int | None, seed: int,
          per_problem: int) -> None:
    """s1's two-stage draw: a domain uniformly at random, then a problem of it with weight
    2^-rank (rank 0 the hardest), until `size` rows are chosen or nothing is left."""
    rng = random.Random(seed)
    domains: dict[str, list[str]] = {}
    for pid in sorted(candidates, key=lambda p: (_hardness(candidates[p]), p)):
        domains.setdefault(domain_of(candidates[pid][0].input.problem), []).append(pid)
    covered: set[str] = set()
    draws = 0
    while domains and (size is None or len(result.selected) < size):
        domain = rng.choice(sorted(domains))
        ranked = domains[domain]
        pid = rng.choices(ranked, weights=[2.0 ** -rank for rank in range(len(ranked))])[0]
        ranked.remove(pid)
        if not ranked:
            del domains[domain]
        room = per_problem if size is None else min(per_problem, size - len(result.selected))
        pool = list(candidates.pop(pid))
        for _ in range(min(room, len(pool))):   # the most new tactic names, then the longer, then the earlier
            best = max(pool, key=lambda c: (len(set(c.tactics) - covered), c.length, -c.input.index))
            pool.remove(best)
            covered.update(best.tactics)
            result.selected.append((best, draws))
            result.put(best.input, "selected", "drawn", f"draw {draws}, domain {domain}")
        for left in pool:
            if room < per_problem:   # the selection filled up inside this problem
                result.put(left.input, "not_drawn", f"selection full at {size} rows")
            else:
                result.put(left.input, "per_problem_cap", f"{per_problem} proof(s) of its problem already chosen")
        draws += 1
    for group in candidates.values():
        for left in group:
            result.put(left.input, "not_drawn", f"selection full at {size} rows")


# -- outputs -----------------------------------------------------------------------------------

def selected_rows(result: Curation) -> list[dict[str, Any]]:
    """The corpus rows written: each input row as it was, named by its problem's id, with
    `curation` saying why it was chosen."""
    out = []
    for candidate, draw in result.selected:
        row = dict(candidate.input.row)
        row["name"] = candidate.problem_id
        row["curation"] = {"origin": candidate.input.entry.origin, "draw": draw,
                           "domain": domain_of(candidate.input.problem), "pass_rate": candidate.pass_rate,
                           "proof_tokens": candidate.length, "tactics": list(candidate.tactics),
                           "verdict": candidate.verdict}
        out.append(row)
    return out


def build_report(rows: Sequence[InputRow], quality: Mapping[str, Mapping[str, Any]], result: Curation, *,
                 settings: Mapping[str, Any], inputs: Sequence[Mapping[str, Any]], problems: Mapping[str, Any],
                 pass_rates: Mapping[str, float] | None, checked_by: str | None) -> dict[str, Any]:
    """report.json: per bucket how many rows and why, the domains, difficulty and tactics of
    the pool against the selection, the seed and settings, and every row's fate."""
    counts = Counter(bucket for bucket, _, _ in result.buckets.values())
    reasons: dict[str, Counter[str]] = {b: Counter() for b in BUCKETS}
    for bucket, why, _ in result.buckets.values():
        reasons[bucket][why] += 1
    chosen = [c for c, _ in result.selected]
    pool = [_pool_row(r) for r in rows if result.buckets[r.entry.origin][0] in ("selected", "per_problem_cap",
                                                                                   "not_drawn")]
    backends = Counter((quality[r.entry.origin].get("verdict") or {}).get("backend") for r in rows
                       if result.buckets[r.entry.origin][0] == "selected")
    tactic_pool: Counter[str] = Counter(t for p in pool for t in p["tactics"])
    tactic_chosen: Counter[str] = Counter(t for c in chosen for t in c.tactics)
    return {
        "settings": dict(settings),
        "seed": settings.get("seed"),
        "inputs": list(inputs),
        "problems": dict(problems),
        "quality": {"mode": "verified" if settings.get("verify") else "recorded", "checked_by": checked_by,
                    "selected_by_backend": {str(k): v for k, v in sorted(backends.items(), key=lambda kv: str(kv[0]))},
                    "standin": backends.get(STANDIN_BACKEND, 0) > 0},
        "counts": {"input": len(rows), **{b: counts.get(b, 0) for b in BUCKETS}},
        "reasons": {b: dict(sorted(c.items())) for b, c in reasons.items() if c},
        "domains": _domain_table(pool, chosen),
        "difficulty": {
            "pass_rates": None if pass_rates is None else {
                "problems_with_rate": len(pass_rates),
                "selected_with_rate": sum(c.pass_rate is not None for c in chosen),
                "selected_mean": _mean([c.pass_rate for c in chosen if c.pass_rate is not None])},
            "proof_tokens": {"pool_median": _median([p["length"] for p in pool]),
                             "selected_median": _median([c.length for c in chosen])}},
        "tactics": {"pool_distinct": len(tactic_pool), "selected_distinct": len(tactic_chosen),
                    "selected": dict(tactic_chosen.most_common()),
                    "not_selected": sorted(set(tactic_pool) - set(tactic_chosen))},
        "selection": [{"draw": draw, "name": c.problem_id, "origin": c.input.entry.origin,
                       "domain": domain_of(c.input.problem), "pass_rate": c.pass_rate, "proof_tokens": c.length,
                       "tactics": list(c.tactics)} for c, draw in result.selected],
        "rows": [dict(zip(("origin", "name", "bucket", "reason", "detail"),
                          (r.entry.origin, r.problem.id, *result.buckets[r.entry.origin]), strict=True)) for r in rows],
    }


def _pool_row(row: InputRow) -> dict[str, Any]:
    return {"domain": domain_of(row.problem), "length": proof_length(row.entry.code),
            "tactics": tactic_names(row.entry.code)}


def _domain_table(pool: Iterable[Mapping[str, Any]], chosen: Sequence[Candidate]) -> dict[str, dict[str, int]]:
    in_pool = Counter(p["domain"] for p in pool)
    taken = Counter(domain_of(c.input.problem) for c in chosen)
    return {d: {"pool": in_pool[d], "selected": taken.get(d, 0)} for d in sorted(in_pool)}


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _mean(values: Sequence[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def input_files(paths: Sequence[str], rows: Sequence[InputRow]) -> list[dict[str, Any]]:
    """Each corpus as the report names it: path, sha256, rows read."""
    per = Counter(r.entry.origin.rsplit(":", 1)[0] for r in rows)
    names = [Path(p).name for p in paths]
    return [{"path": os.path.abspath(p), "sha256": sha256_of(Path(p)),
             "rows": per[Path(p).name if names.count(Path(p).name) == 1 else p]} for p in paths]


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md: the report for people."""
    counts, settings = report["counts"], report["settings"]
    quality = report["quality"]
    lines = ["# Curation report", ""]
    if quality["standin"]:
        lines += ["**Some selected rows were judged by the stand-in REPL, a test double: they are not "
                  "Lean-accepted proofs.**", ""]
    lines += [f"Seed {report['seed']}; size {settings.get('size') or 'all'}; at most {settings.get('per_problem')} "
              f"proof(s) per problem; maximum base pass rate {settings.get('max_pass_rate')}.",
              f"Problems: {report['problems'].get('source')} (sha256 {report['problems'].get('sha256')}).",
              f"Quality: {quality['mode']} verdicts"
              + (f", checked by {quality['checked_by']}" if quality.get("checked_by") else "") + ".", "",
              "| input | sha256 | rows |", "|---|---|---|"]
    lines += [f"| {i['path']} | {i['sha256'][:12]}... | {i['rows']} |" for i in report["inputs"]]
    lines += ["", "## Rows by stage", "", "| stage | rows | why |", "|---|---|---|"]
    for bucket in BUCKETS:
        why = "; ".join(f"{k}: {v}" for k, v in report["reasons"].get(bucket, {}).items())
        lines.append(f"| {bucket} | {counts[bucket]} | {why} |")
    lines += [f"| **input** | **{counts['input']}** | |", "", "## Domains", "", "| domain | pool | selected |",
              "|---|---|---|"]
    lines += [f"| {d} | {v['pool']} | {v['selected']} |" for d, v in report["domains"].items()]
    tactics, difficulty = report["tactics"], report["difficulty"]
    lines += ["", "## Difficulty and variety", "",
              f"Median proof length (Lean tokens): pool {difficulty['proof_tokens']['pool_median']}, selected "
              f"{difficulty['proof_tokens']['selected_median']}."]
    if difficulty["pass_rates"] is not None:
        rates = difficulty["pass_rates"]
        lines.append(f"Base pass rates known for {rates['problems_with_rate']} problems; {rates['selected_with_rate']} "
                     f"selected rows have one (mean {rates['selected_mean']}).")
    lines += [f"Distinct tactic names: pool {tactics['pool_distinct']}, selected {tactics['selected_distinct']}"
              + (f" (not selected: {', '.join(tactics['not_selected'])})" if tactics["not_selected"] else "") + ".",
              "", "## Selection", "", "| draw | problem | domain | pass rate | proof tokens | tactics | origin |",
              "|---|---|---|---|---|---|---|"]
    for s in report["selection"]:
        rate = "-" if s["pass_rate"] is None else f"{s['pass_rate']:.2f}"
        lines.append(f"| {s['draw']} | {s['name']} | {s['domain']} | {rate} | {s['proof_tokens']} | "
                     f"{', '.join(s['tactics'])} | {s['origin']} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, rows: Sequence[Mapping[str, Any]], report: Mapping[str, Any]) -> None:
    """corpus.jsonl, report.json and report.md, each replaced in one rename."""
    write_corpus(out / CORPUS_NAME, rows)
    for name, text in ((REPORT_JSON, json.dumps(report, indent=2, ensure_ascii=False) + "\n"),
                       (REPORT_MD, render_markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)
