"""`prover prove`: prove theorems from the command line and get back Lean-checked proofs.

Method today: whole-proof sampling (`prover.search.whole.prove_whole`). Lean-feedback repair and
best-first tactic search arrive with the proving stage as further `--method` values.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from prover.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_REJECTED,
    SEED_MAX,
    JsonFlag,
    UserError,
    config_from_context,
    console,
    err_console,
    exit_code_for,
    print_json,
)

app = typer.Typer(
    help="Prove theorems from the command line and get back Lean-checked proofs (whole-proof "
    "sampling today; Lean-feedback repair and best-first tactic search come next).",
    no_args_is_help=True,
)


@app.command("whole")
def whole(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(
        metavar="[NAME]...", help="Problems to prove, by name or id (default: all of --problems, up to --limit).")] = None,
    problems: Annotated[str | None, typer.Option(
        "--problems", help="Problem set: a .jsonl/.lean path (theorems with `sorry`), a suite name, or hf:owner/name "
        "(default: run.problems of --config, else minif2f-test).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Keep only this split of the set.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N problems.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="The policy: a Hugging Face checkpoint folder (ours or any causal LM) or a hub "
        "id owner/name (from the local cache, or downloaded); default policy.checkpoint.")] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="vllm (default) or transformers.")] = None,
    samples: Annotated[int | None, typer.Option("--samples", min=1, help="Proofs sampled per problem (default policy.sampling.n).")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, help="New tokens per proof.")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", min=0.0, help="Sampling temperature; 0 = greedy.")] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", min=0, max=SEED_MAX,
        help="Sampling seed (default: one is drawn and recorded in config.resolved.toml).")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1, help="Lean wall-clock limit per proof, seconds.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="REPL processes checking proofs.")] = None,
    problems_per_batch: Annotated[int | None, typer.Option(
        "--problems-per-batch", min=1, help="Problems sampled in one engine call and verified together; "
        "their results are written as soon as they are verified (default run.problems_per_batch, 8).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", file_okay=False, help="Run folder: results.jsonl (every attempt and verdict, appended as problems "
        "finish), summary.json and config.resolved.toml (default: output_dir of the config, runs/latest).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Start over in a non-empty run folder (its run files are removed).")] = False,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --out: problems already in results.jsonl are skipped (the config must match).")] = False,
    standin: Annotated[Path | None, typer.Option(
        "--standin", hidden=True, help="TEST DOUBLE: check with the stand-in REPL and this rule table instead "
        "of Lean. Its verdicts are not Lean's.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Whole-proof sampling: sample proofs for each problem and check every one with Lean.

    Results are written to the run folder as each problem finishes; progress goes to stderr.
    Exit 0 when every problem was proved, 1 when some were not, 2 on bad input, 3 when some
    samples could not be checked (verifier infrastructure), 130 when interrupted (Ctrl-C,
    SIGTERM: what was done is kept; --resume continues).
    """
    from policy.engines import make_engine
    from policy.tokenizer import load_tokenizer
    from prover.checkpoints import resolve_model
    from prover.cli.lean import STANDIN_LABEL, open_verifier
    from prover.problems import load_problems, resolve_source
    from prover.runs import RunDir, RunInterrupted, check_pinned, draw_seed
    from prover.search.attempts import context_length, prompt_fit, summarize_records
    from prover.search.whole import prove_whole

    config = config_from_context(ctx, {
        "output_dir": out, "policy.checkpoint": model, "policy.engine": engine,
        "policy.sampling.n": samples, "policy.sampling.max_tokens": max_tokens,
        "policy.sampling.temperature": temperature, "policy.sampling.seed": seed,
        "verifier.timeout_s": timeout, "verifier.workers": workers,
        "run.problems_per_batch": problems_per_batch,
    })
    if config.policy.checkpoint is None:
        raise UserError("no policy checkpoint: pass --model DIR (e.g. one written by `prover model init`)")
    run = RunDir.prepare(config.output_dir, key="id", force=force, resume=resume)   # before any work
    checkpoint = resolve_model(config.policy.checkpoint)   # a folder, or a hub id -> its local folder
    config = config.model_copy(update={"policy": config.policy.model_copy(update={"checkpoint": str(checkpoint)})})
    job = config.run   # flags first, then the [run] section of --config (a resolved config re-runs its job)
    source = problems or job.problems or "minif2f-test"
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
    config = config.model_copy(update={"verifier": verifier.config, "run": job.model_copy(update={
        "command": "prove whole", "argv": [Path(sys.argv[0]).name, *sys.argv[1:]], "problems": source,
        "problems_file": resolved.location, "problems_sha256": resolved.sha256, "split": split,
        "names": list(names) if names else None, "limit": limit})})
    run.begin(config, total=len(selected), summarize=summarize_records, succeeded=lambda r: bool(r["proved"]),
              unit="problems", extra={"problems": source, "method": "whole", "checked_by": verifier.checked_by,
                                      "samples_per_problem": config.policy.sampling.n} | (
                                          {"backend": label} if label else {}))
    todo = [p for p in selected if p.id not in run.done_keys]
    prefix = f"[{label}] " if label else ""
    try:
        with run:
            if run.done_keys:
                err_console.print(f"resuming {run.path}: {len(selected) - len(todo)} of {len(selected)} problems "
                                  "already done", highlight=False, markup=False, soft_wrap=True)
            if todo:   # a finished run resumed with nothing left starts no engine
                err_console.print(f"starting {config.policy.engine} on {checkpoint} ...", highlight=False, markup=False,
                                  soft_wrap=True)
                tokenizer = load_tokenizer(config.policy.tokenizer or checkpoint)
                fits = prompt_fit(lambda text: len(tokenizer(text)["input_ids"]),
                                  context_length(checkpoint, config.policy.max_model_len))
                with make_engine(config.policy) as policy_engine, verifier:
                    for result in prove_whole(todo, policy_engine, verifier, config.policy.sampling,
                                              template=config.rollout.prompt_template,
                                              problems_per_batch=config.run.problems_per_batch,
                                              prompt_check=fits, on_verified=run.verified):
                        run.append(result.to_json() | ({"backend": label} if label else {}))
                        if not as_json:
                            _print_result(prefix, result)
    except RunInterrupted as stop:
        err_console.print(str(stop), highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    summary = run.summary
    assert summary is not None
    if as_json:
        print_json(summary)
    else:
        console.print(f"{prefix}{summary['proved']}/{summary['total']} proved; checked by {verifier.checked_by}; "
                      f"{summary['seconds']} s; wrote {run.path}/results.jsonl, summary.json, config.resolved.toml",
                      markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_OK if summary["proved"] == summary["total"]   # else 1, or 3 if a sample could not be checked
                     else max(EXIT_REJECTED, exit_code_for(summary["samples"])))


def _print_result(prefix: str, result: Any) -> None:
    """One problem's line (and its proof) on stdout, as it finishes."""
    if result.skipped:
        line = f"{prefix}NOT CHECKED: {result.problem.id} ({result.skipped}: {result.detail})"
    else:
        tally = Counter(a.verdict.outcome for a in result.attempts)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(tally.items()))
        word = "PROVED" if result.proved else "not proved"
        line = f"{prefix}{word}: {result.problem.id} ({len(result.attempts)} samples: {counts})"
    console.print(line, markup=False, highlight=False, soft_wrap=True)
    if result.proof:
        console.print(result.proof, markup=False, highlight=False, soft_wrap=True)
