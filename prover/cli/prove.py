"""`prover prove`: prove theorems from the command line and get back Lean-checked proofs.

    prover prove "theorem foo : 1 + 1 = 2 := by sorry" --model DIR          # a theorem as a string
    prover prove my_theorems.lean --model DIR --method repair               # fill a file's sorrys
    prover prove mathd_algebra_10 --problems minif2f-valid --model DIR      # a problem of a suite
    prover prove whole ...                                                  # the same command (alias)

The methods live in `prover.search` (`methods.prove_problems`): whole-proof sampling, Lean-
feedback repair, best-first tactic search. This file parses flags and prints.
"""

from __future__ import annotations

import re
import tempfile
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from prover.cli.common import (
    EXIT_OK,
    EXIT_REJECTED,
    BudgetSamplesOption,
    BudgetSecondsOption,
    BudgetTokensOption,
    ExpansionsOption,
    ForceOption,
    JsonFlag,
    MaxTokensOption,
    ResumeOption,
    RoundsOption,
    SearchBackendOption,
    SeedOption,
    StandinOption,
    TacticTemplateOption,
    TemperatureOption,
    TemplateOption,
    ThinkTokensOption,
    TimeoutOption,
    UserError,
    WaitsOption,
    WorkersOption,
    config_from_context,
    console,
    err_console,
    exit_code_for,
    print_json,
)


class _DefaultToProve(TyperGroup):
    """`prover prove TARGET...` runs the one proving command; `prover prove whole ...`, the
    older spelling, names it explicitly and stays working."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["whole", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_DefaultToProve,
    help="Prove theorems and get back Lean-checked proofs: `prover prove TARGET... --model DIR "
    "[--method whole|repair|search]`, TARGET a theorem string, a .lean file with `sorry`s or a problem "
    "name of --problems. `prover prove whole` is the same command.",
    no_args_is_help=True,
)

DEFAULT_HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 0\n\nopen BigOperators Real Nat Topology Rat\n\n"
STRING_PROBLEMS = "theorem.lean"   # a theorem given as a string is written here, in the run folder


@app.command("whole")
def prove(
    ctx: typer.Context,
    targets: Annotated[list[str] | None, typer.Argument(
        metavar="[TARGET]...", help="What to prove: a theorem as a string (`theorem foo : 1 + 1 = 2 := by sorry`, "
        "checked against --header), a .lean file whose `sorry`s are filled (each theorem a problem, the file's "
        "header its header), or problem names/ids of --problems (default: all of --problems, up to --limit).")] = None,
    problems: Annotated[str | None, typer.Option(
        "--problems", help="Problem set for names: a .jsonl/.lean path, a suite name, or hf:owner/name "
        "(default: run.problems of --config, else minif2f-test).")] = None,
    header: Annotated[str | None, typer.Option(
        "--header", help="Lean header (imports, options, opens) for a theorem given as a string "
        "(default: DeepSeek-Prover's Mathlib header).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Keep only this split of the set.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N problems.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="The policy: a Hugging Face checkpoint folder (ours or any causal LM) or a hub "
        "id owner/name (from the local cache, or downloaded); default policy.checkpoint.")] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="vllm (default) or transformers.")] = None,
    method: Annotated[str | None, typer.Option(
        "--method", help="whole (sample whole proofs), repair (whole, then up to --rounds corrections fed "
        "with Lean's errors) or search (best-first tactic search); default whole.")] = None,
    template: TemplateOption = None,   # prove applies the template's published sampling where none is set
    samples: Annotated[int | None, typer.Option(
        "--samples", min=1, help="Proofs sampled per problem in the first round (default policy.sampling.n).")] = None,
    max_tokens: MaxTokensOption = None,
    temperature: TemperatureOption = None,
    seed: SeedOption = None,
    budget_samples: BudgetSamplesOption = None,
    budget_tokens: BudgetTokensOption = None,
    budget_seconds: BudgetSecondsOption = None,
    rounds: RoundsOption = None,
    think_tokens: ThinkTokensOption = None,
    waits: WaitsOption = None,
    expansions: ExpansionsOption = None,
    search_backend: SearchBackendOption = None,
    tactic_template: TacticTemplateOption = None,
    timeout: TimeoutOption = None,
    workers: WorkersOption = None,
    problems_per_batch: Annotated[int | None, typer.Option(
        "--problems-per-batch", min=1, help="Problems sampled in one engine call and verified together (while "
        "the next batch is sampled); results are written as each batch is verified (default 8).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", file_okay=False, help="Run folder: results.jsonl (every attempt and verdict, appended as problems "
        "finish), summary.json and config.resolved.toml (default: output_dir of the config, runs/latest).")] = None,
    force: ForceOption = False,
    resume: ResumeOption = False,
    standin: StandinOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Prove each target with --method and check every candidate with Lean.

    Prints each problem's Lean-checked proof, or its best attempt with Lean's errors, and the
    budget spent. Results are written to the run folder as each problem finishes; progress goes
    to stderr. Exit 0 when every problem was proved, 1 when some were not, 2 on bad input, 3 when
    some samples could not be checked (verifier infrastructure), 130 when interrupted (Ctrl-C,
    SIGTERM: what was done is kept; --resume continues).
    """
    from policy.engines import make_engine
    from policy.tokenizer import load_tokenizer
    from prover.checking import STANDIN_LABEL, open_verifier
    from prover.checkpoints import resolve_model
    from prover.problems import load_problems, resolve_source
    from prover.runs import RunDir, check_pinned, command_line, draw_seed
    from prover.search.attempts import Budget, context_length, prompt_fit, summarize_records
    from prover.search.methods import (
        METHODS,
        MethodNotAvailable,
        MethodOptions,
        apply_published_sampling,
        ensure_available,
        prove_problems,
    )
    from prover.search.whole import BudgetForcing

    config = config_from_context(ctx, {
        "output_dir": out, "policy.checkpoint": model, "policy.engine": engine,
        "policy.sampling.n": samples, "policy.sampling.max_tokens": max_tokens,
        "policy.sampling.temperature": temperature, "policy.sampling.seed": seed,
        "verifier.timeout_s": timeout, "verifier.workers": workers,
        "run.problems_per_batch": problems_per_batch, "rollout.prompt_template": template,
        "search.backend": search_backend, "search.template": tactic_template,
    })
    if config.policy.checkpoint is None:
        raise UserError("no policy checkpoint: pass --model DIR (e.g. one written by `prover model init`)")
    run = RunDir.prepare(config.output_dir, key="id", force=force, resume=resume)   # before any work
    checkpoint = resolve_model(config.policy.checkpoint)   # a folder, or a hub id -> its local folder
    given = {k for k, v in (("n", samples), ("max_tokens", max_tokens), ("temperature", temperature)) if v is not None}
    sampling = apply_published_sampling(config.policy.sampling, config.rollout.prompt_template, given)
    config = config.model_copy(update={"policy": config.policy.model_copy(update={
        "checkpoint": str(checkpoint), "sampling": sampling,   # engines refuse a context past the model's
        "max_model_len": context_length(checkpoint, config.policy.max_model_len)})})
    job = config.run   # flags first, then the [run] section of --config (a resolved config re-runs its job)
    method = method or job.method or "whole"
    if method not in METHODS:
        raise UserError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    try:
        ensure_available(method, config.search)   # before a model loads
    except MethodNotAvailable as exc:
        raise UserError(str(exc)) from None
    budget_samples = budget_samples if budget_samples is not None else job.budget_samples
    budget_tokens = budget_tokens if budget_tokens is not None else job.budget_tokens
    budget_seconds = budget_seconds if budget_seconds is not None else job.budget_seconds
    rounds = rounds if rounds is not None else (job.rounds if job.rounds is not None else 2)
    think_tokens = think_tokens if think_tokens is not None else job.think_tokens
    waits = waits if waits is not None else (job.waits if job.waits is not None else 0)
    expansions = expansions if expansions is not None else job.expansions
    source, names = _problem_source(run.path, targets or [], problems or job.problems, header)
    names = names or job.names
    split = split if split is not None else job.split
    limit = limit if limit is not None else job.limit
    resolved = resolve_source(source)
    check_pinned("--problems", source, resolved.sha256, job.problems, job.problems_sha256)
    selected = load_problems(source, split=split, names=names or None, limit=limit)
    verifier = open_verifier(config.verifier, standin)   # exit 2 here if no Lean, before loading a model
    label = STANDIN_LABEL if verifier.config.backend == "standin" else None
    if config.policy.sampling.seed is None:   # drawn once, recorded, and kept on --resume
        drawn = run.previous("policy.sampling.seed")
        config.policy.sampling.seed = drawn if isinstance(drawn, int) else draw_seed()
    budget = Budget(samples=budget_samples, tokens=budget_tokens, wall_s=budget_seconds)
    options = MethodOptions(budget=budget, rounds=rounds, expansions=expansions,
                            forcing=BudgetForcing(think_tokens, waits) if think_tokens else None,
                            problems_per_batch=config.run.problems_per_batch, search=config.search)
    config = config.model_copy(update={"verifier": verifier.config, "run": job.model_copy(update={
        "command": "prove whole" if method == "whole" else f"prove --method {method}", "argv": command_line(), "problems": source,
        "problems_file": resolved.location, "problems_sha256": resolved.sha256, "split": split,
        "names": list(names) if names else None, "limit": limit, "method": method,
        "budget_samples": budget_samples, "budget_tokens": budget_tokens, "budget_seconds": budget_seconds,
        "rounds": rounds if method == "repair" else None, "think_tokens": think_tokens,
        "waits": waits if think_tokens else None, "expansions": expansions})})
    run.begin(config, total=len(selected), summarize=summarize_records, succeeded=lambda r: bool(r["proved"]),
              unit="problems", extra={"problems": source, "method": method, "checked_by": verifier.checked_by,
                                      "template": config.rollout.prompt_template, "budget": budget.to_json(),
                                      "rounds": rounds if method == "repair" else None,
                                      "samples_per_problem": config.policy.sampling.n} | (
                                          {"backend": label} if label else {}) | (
                                          {"search": config.search.model_dump(mode="json", exclude_none=True)}
                                          if method == "search" else {}))
    todo = [p for p in selected if p.id not in run.done_keys]
    prefix = f"[{label}] " if label else ""
    records: list[dict[str, Any]] = []
    with run:
        if run.done_keys:
            err_console.print(f"resuming {run.path}: {len(selected) - len(todo)} of {len(selected)} problems "
                              "already done", highlight=False, markup=False, soft_wrap=True)
        if todo:   # a finished run resumed with nothing left starts no engine
            err_console.print(f"starting {config.policy.engine} on {checkpoint} ({method}, template "
                              f"{config.rollout.prompt_template}) ...", highlight=False, markup=False, soft_wrap=True)
            tokenizer = load_tokenizer(config.policy.tokenizer or checkpoint)
            fits = prompt_fit(lambda text: len(tokenizer(text)["input_ids"]),
                              context_length(checkpoint, config.policy.max_model_len))
            with make_engine(config.policy) as policy_engine, verifier:
                results = prove_problems(method, todo, policy_engine, verifier, config.policy.sampling,
                                         template=config.rollout.prompt_template, options=options,
                                         tokenizer=tokenizer, prompt_check=fits, on_verified=run.verified)
                for result in results:
                    record = result.to_json() | ({"backend": label} if label else {})
                    run.append(record)
                    records.append(_brief(result))
                    if not as_json:
                        _print_result(prefix, result)
    summary = run.summary
    assert summary is not None
    if as_json:
        print_json(summary | {"results": records})
    else:
        console.print(f"{prefix}{summary['proved']}/{summary['total']} proved; checked by {verifier.checked_by}; "
                      f"{summary['seconds']} s; wrote {run.path}/results.jsonl, summary.json, config.resolved.toml",
                      markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_OK if summary["proved"] == summary["total"]   # else 1, or 3 if a sample could not be checked
                     else max(EXIT_REJECTED, exit_code_for(summary["samples"])))


def _problem_source(run_path: Path | None, targets: list[str], problems: str | None,
                    header: str | None) -> tuple[str, list[str]]:
    """The problem set and the names to take from it. Theorem strings are written, with the
    header, to the run folder's theorem.lean (read back by the .lean loader, so a string is
    parsed exactly as a file is); one .lean file is the set itself; other targets are names."""
    statements = [t for t in targets if re.match(r"\s*(theorem|lemma)\s", t)]
    files = [t for t in targets if t.endswith(".lean") and t not in statements]
    names = [t for t in targets if t not in statements and t not in files]
    if sum(map(bool, (statements, files))) > 1 or len(files) > 1 or ((statements or files) and names):
        raise UserError("give theorem strings, or one .lean file, or problem names of --problems: not a mix")
    if header is not None and not statements:
        raise UserError("--header applies only to a theorem given as a string")
    if files:
        if not Path(files[0]).is_file():
            raise UserError(f"{files[0]}: no such file")
        return files[0], []
    if statements:
        text = (header if header is not None else DEFAULT_HEADER).rstrip("\n") + "\n\n"
        path = (run_path or Path(tempfile.mkdtemp(prefix="prover-"))) / STRING_PROBLEMS
        path.write_text(text + "\n\n".join(s.strip() for s in statements) + "\n", encoding="utf-8")
        return str(path), []
    return problems or "minif2f-test", names


def _spent(result: Any) -> dict[str, Any] | None:
    """What the method spent on a problem: the budget meter's counts (whole, repair), or a
    best-first search's statistics (expansions, tactic calls, samples, tokens, wall time)."""
    stats = getattr(result, "stats", None)
    return result.spent or (stats.to_json() if stats is not None else None)


def _brief(result: Any) -> dict[str, Any]:
    """A problem's result for --json: the proof, or the best attempt with Lean's messages, and the spend."""
    from prover.search.methods import best_attempt

    best = best_attempt(result.attempts)
    return {"id": result.problem.id, "outcome": result.outcome, "proof": result.proof, "spent": _spent(result),
            "best_attempt": None if best is None or result.proved else {
                "candidate": best.candidate, "outcome": best.verdict.outcome,
                "messages": [str(m) for m in getattr(best.verdict, "messages", ())],
                "detail": getattr(best.verdict, "detail", "")}}


def _print_result(prefix: str, result: Any) -> None:
    """One problem's line on stdout as it finishes: its proof, or its best attempt with Lean's
    errors, and the budget spent."""
    from prover.search.methods import best_attempt

    if result.skipped:
        line = f"{prefix}NOT CHECKED: {result.problem.id} ({result.skipped}: {result.detail})"
    else:
        tally = Counter(a.verdict.outcome for a in result.attempts)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(tally.items()))
        word = "PROVED" if result.proved else "not proved"
        spent = _spent(result) or {}
        spend = f"; spent {spent.get('samples')} samples, {spent.get('tokens')} tokens, {spent.get('wall_s')} s" if spent else ""
        line = f"{prefix}{word}: {result.problem.id} ({len(result.attempts)} samples: {counts}{spend})"
        if getattr(result, "stats", None) is not None:   # a search: what it did, and why it stopped
            line = f"{prefix}{word}: {result.problem.id} ({result.detail}{spend})"
    console.print(line, markup=False, highlight=False, soft_wrap=True)
    if result.proof:
        console.print(result.proof, markup=False, highlight=False, soft_wrap=True)
        return
    best = best_attempt(result.attempts)
    if best is not None:
        console.print(f"best attempt ({best.verdict.outcome}):\n{best.candidate.rstrip()}", markup=False,
                      highlight=False, soft_wrap=True)
        # Lean's errors and warnings (its info lines, e.g. the axioms answer, are not news here);
        # the verdict's detail only when it says something the messages do not.
        shown = [str(m) for m in getattr(best.verdict, "messages", ()) if m.severity != "info"]
        for message in shown:
            console.print(f"  {message}", markup=False, highlight=False, soft_wrap=True)
        detail = getattr(best.verdict, "detail", "")
        if detail and detail not in shown:
            console.print(f"  {detail}", markup=False, highlight=False, soft_wrap=True)
