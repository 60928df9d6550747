"""Check a whole set of proofs against a problem set: `prover lean check-set`.

The use: re-verify released proofs (e.g. DeepSeek-Prover-V2's miniF2F solutions) under our
pinned Lean and our acceptance rules, or check a run's outputs again. A proof file is jsonl
with `name` and `code` (a whole Lean file, or the theorem and its proof) per line; each proof
is matched to its problem by id or name and goes through the same `Verifier` pipeline as
every other caller. With no verifier (static mode) only the checks that need no Lean run, and
results say so. Results come out in file order as each batch of proofs is verified, so a run
folder gets them as they arrive.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lean_env.acceptance import precheck
from lean_env.verdict import Verdict
from lean_env.verifier import Verifier, VerifyRequest
from prover.errors import CannotCheck, UserError
from prover.problems import Problem, ProblemSetError, read_jsonl_rows
from prover.runs import count_new

STATIC_LABEL = "static checks (no Lean ran)"


@dataclass(frozen=True)
class ProofEntry:
    name: str
    code: str
    origin: str   # "proofs.jsonl:12"


@dataclass(frozen=True)
class CheckResult:
    """One proof's outcome. `verdict` is None when only static checks ran and all passed."""

    entry: ProofEntry
    problem: Problem
    verdict: Verdict | None

    @property
    def passed(self) -> bool:
        return self.verdict is None or self.verdict.accepted

    @property
    def outcome(self) -> str:
        """The verdict's outcome (`accepted`, `rejected:<reason>`, ...) or `passed_static`."""
        return "passed_static" if self.verdict is None else self.verdict.outcome

    def to_json(self) -> dict[str, Any]:
        return {"name": self.entry.name, "problem_id": self.problem.id, "origin": self.entry.origin,
                "outcome": self.outcome, "passed": self.passed,
                "verdict": self.verdict.to_json() if self.verdict is not None else None}


STANDIN_LABEL = "stand-in (not Lean)"   # how every command labels the test double's verdicts


def open_verifier(config: Any, standin: Path | None, *, has_static: bool = False) -> Any:
    """`lean_env.verifier.make_verifier` for a command: `standin` (a rule table, `--standin`)
    selects the test double; no toolchain and a bad backend choice become one-line errors
    (UserError, CannotCheck), never a silent fall-back to the stand-in. `has_static`: the
    command takes `--static`, which the no-toolchain message then suggests."""
    from lean_env.errors import VerifierConfigError
    from lean_env.toolchain import ToolchainError
    from lean_env.verifier import make_verifier

    if standin is not None:
        config = config.model_copy(update={"backend": "standin", "standin_rules": standin})
    elif config.backend == "standin" and config.standin_rules is None:   # a resolved config names its table
        raise UserError("verifier.backend 'standin' is the test double; name its rule table with --standin")
    try:
        return make_verifier(config)
    except VerifierConfigError as exc:
        raise UserError(str(exc)) from None
    except ToolchainError as exc:
        hint = "; or pass --static for the checks that need no Lean" if has_static else ""
        raise CannotCheck(f"could not check: no Lean toolchain found: {exc}{hint}") from None


def load_proofs(path: Path) -> list[ProofEntry]:
    """Rows with `name` and `code`; malformed rows raise one-line errors naming file and line."""
    entries = []
    for where, row in read_jsonl_rows(path):
        if not isinstance(row, dict):
            raise ProblemSetError(f"{where}: expected a JSON object, got {type(row).__name__}")
        for key in ("name", "code"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                problem = "missing field" if row.get(key) is None else "empty or non-string field"
                raise ProblemSetError(f"{where}: {problem} '{key}'")
        entries.append(ProofEntry(name=row["name"].strip(), code=row["code"], origin=where))
    if not entries:
        raise ProblemSetError(f"{path.name}: no proofs in file")
    return entries


def match_problems(entries: Sequence[ProofEntry], problems: Sequence[Problem]) -> list[Problem]:
    """The problem of each proof, by id first, then by name (which must then be unambiguous)."""
    by_id = {p.id: p for p in problems}
    by_name: dict[str, list[Problem]] = {}
    for p in problems:
        by_name.setdefault(p.name, []).append(p)
    matched, unknown = [], []
    for entry in entries:
        if entry.name in by_id and len(by_name.get(entry.name, [])) <= 1:
            matched.append(by_id[entry.name])
        elif len(by_name.get(entry.name, [])) > 1:
            ids = ", ".join(p.id for p in by_name[entry.name])
            raise UserError(f"{entry.origin}: name {entry.name!r} is ambiguous in the problem set "
                            f"(ids {ids}); name the proof by id")
        elif entry.name in by_id:
            matched.append(by_id[entry.name])
        else:
            unknown.append(entry)
    if unknown:
        shown = ", ".join(f"{e.name} ({e.origin})" for e in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise UserError(f"{len(unknown)} proof(s) name no problem of the set: {shown}{more}")
    return matched


def check_proofs(entries: Sequence[ProofEntry], problems: Sequence[Problem], verifier: Verifier | None,
                 *, batch_size: int = 64, on_verified: Callable[[int], None] | None = None) -> Iterator[CheckResult]:
    """Verdicts for every proof, in file order, yielded batch by batch (`batch_size` proofs go
    to the verifier at once). `verifier=None`: static checks only. Every proof is matched to its
    problem here, before anything is checked (unknown names raise at once).
    `on_verified(k)`: k more proofs checked, for progress."""
    matched = match_problems(entries, problems)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return _checked(list(zip(entries, matched, strict=True)), verifier, batch_size, on_verified)


def _checked(pairs: list[tuple[ProofEntry, Problem]], verifier: Verifier | None, batch_size: int,
             on_verified: Callable[[int], None] | None) -> Iterator[CheckResult]:
    if verifier is None:
        for entry, problem in pairs:
            static = precheck(problem.name, problem.header, problem.formal_statement, entry.code,
                              checked_by=STATIC_LABEL)
            if on_verified:
                on_verified(1)
            yield CheckResult(entry, problem, static)
        return
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        requests = [VerifyRequest(p.name, p.header, p.formal_statement, e.code) for e, p in batch]
        verdicts = verifier.verify_batch(requests, progress=count_new(on_verified))
        for (entry, problem), verdict in zip(batch, verdicts, strict=True):
            yield CheckResult(entry, problem, verdict)


def summarize_records(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts over `CheckResult.to_json()` records (this process's and a resumed run's)."""
    outcomes = Counter(r["outcome"] for r in records)
    return {
        "passed": sum(bool(r["passed"]) for r in records),
        "outcomes": dict(sorted(outcomes.items())),
        "failed": [{"name": r["name"], "outcome": r["outcome"], "origin": r["origin"]}
                   for r in records if not r["passed"]],
    }
