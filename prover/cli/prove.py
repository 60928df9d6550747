"""`prover prove`: prove theorems from the command line and get back Lean-checked proofs.

Method today: whole-proof sampling (`prover.prove.prove_whole`). Lean-feedback repair and
best-first tactic search arrive with the proving stage as further `--method` values.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from prover.cli.common import (
    EXIT_OK,
    SEED_MAX,
    JsonFlag,
    UserError,
    config_from_context,
    console,
    err_console,
    exit_code_for,
    print_json,
    require_writable_dir,
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
    problems: Annotated[str, typer.Option(
        "--problems", help="Problem set: a .jsonl/.lean path (theorems with `sorry`), a suite name, or hf:owner/name.")] = "minif2f-test",
    split: Annotated[str | None, typer.Option("--split", help="Keep only this split of the set.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N problems.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="The policy: a Hugging Face checkpoint folder (ours or any causal LM) or a hub "
        "id owner/name (from the local cache, or downloaded); default policy.checkpoint.")] = None,
    engine: Annotated[str | None, typer.Option("--engine", help="vllm (default) or transformers.")] = None,
    samples: Annotated[int | None, typer.Option("--samples", min=1, help="Proofs sampled per problem (default policy.sampling.n).")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", min=1, help="New tokens per proof.")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", min=0.0, help="Sampling temperature; 0 = greedy.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, max=SEED_MAX,
                                             help="Sampling seed, for reproducible runs.")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.1, help="Lean wall-clock limit per proof, seconds.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="REPL processes checking proofs.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", file_okay=False, help="Folder for results.jsonl (every attempt and verdict), summary.json and "
        "config.resolved.toml (default: output_dir of the config).")] = None,
    standin: Annotated[Path | None, typer.Option(
        "--standin", hidden=True, help="TEST DOUBLE: check with the stand-in REPL and this rule table instead "
        "of Lean. Its verdicts are not Lean's.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Whole-proof sampling: sample proofs for each problem and check every one with Lean.

    Exit 0 when every problem was proved, 1 when some were not, 2 on bad input, 3 when some
    problem's samples could not be checked (verifier infrastructure).
    """
    from policy.engines import make_engine
    from prover.checkpoints import resolve_model
    from prover.cli.lean import STANDIN_LABEL, open_verifier
    from prover.config import write_resolved_config
    from prover.problems import load_problems
    from prover.prove import prove_whole

    config = config_from_context(ctx, {
        "output_dir": out, "policy.checkpoint": model, "policy.engine": engine,
        "policy.sampling.n": samples, "policy.sampling.max_tokens": max_tokens,
        "policy.sampling.temperature": temperature, "policy.sampling.seed": seed,
        "verifier.timeout_s": timeout, "verifier.workers": workers,
    })
    if config.policy.checkpoint is None:
        raise UserError("no policy checkpoint: pass --model DIR (e.g. one written by `prover model init`)")
    require_writable_dir(config.output_dir)
    checkpoint = resolve_model(config.policy.checkpoint)   # a folder, or a hub id -> its local folder
    config = config.model_copy(update={"policy": config.policy.model_copy(update={"checkpoint": str(checkpoint)})})
    selected = load_problems(problems, split=split, names=names or None, limit=limit)
    verifier = open_verifier(config.verifier, standin)   # exit 2 here if no Lean, before loading a model
    label = STANDIN_LABEL if standin is not None else None
    config = config.model_copy(update={"verifier": verifier.config})
    config_path = write_resolved_config(config)
    started = time.perf_counter()
    err_console.print(f"starting {config.policy.engine} on {config.policy.checkpoint} ...", highlight=False)
    with make_engine(config.policy) as policy_engine, verifier:
        err_console.print(f"sampling {config.policy.sampling.n} proof(s) for {len(selected)} problem(s) ...",
                          highlight=False)
        results = prove_whole(selected, policy_engine, verifier, config.policy.sampling,
                              template=config.rollout.prompt_template)
    summary: dict[str, Any] = {
        "problems": problems, "method": "whole", "checked_by": verifier.checked_by,
        "total": len(results), "proved": sum(r.proved for r in results),
        "samples_per_problem": config.policy.sampling.n, "seconds": round(time.perf_counter() - started, 2),
        "output_dir": str(config.output_dir), "proved_names": [r.problem.id for r in results if r.proved],
    }
    if label:
        summary["backend"] = label
    with (config.output_dir / "results.jsonl").open("w", encoding="utf-8") as fh:
        for r in results:
            fh.write(json.dumps(r.to_json() | ({"backend": label} if label else {}), ensure_ascii=False) + "\n")
    (config.output_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    if as_json:
        print_json(summary)
    else:
        prefix = f"[{label}] " if label else ""
        for r in results:
            kinds: dict[str, int] = {}
            for a in r.attempts:
                kinds[a.verdict.outcome] = kinds.get(a.verdict.outcome, 0) + 1
            tally = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
            word = "PROVED" if r.proved else "not proved"
            console.print(f"{prefix}{word}: {r.problem.id} ({len(r.attempts)} samples: {tally})",
                          markup=False, highlight=False, soft_wrap=True)
            if r.proof:
                console.print(r.proof, markup=False, highlight=False, soft_wrap=True)
        console.print(f"{prefix}{summary['proved']}/{summary['total']} proved; checked by {verifier.checked_by}; "
                      f"{summary['seconds']} s; wrote {config.output_dir}/results.jsonl, summary.json, "
                      f"{config_path.name}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_OK if summary["proved"] == summary["total"] else exit_code_for(
        a.verdict.outcome for r in results if not r.proved for a in r.attempts))
