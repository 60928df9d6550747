"""`prover iterate`: expert iteration, rounds of prove -> collect accepted proofs -> fine-tune.

    prover iterate --config examples/iterate-cpu.toml --rounds 2 --out runs/iterate   # start or continue

The rounds live in `prover.iterate` (proving is `prover distill`'s run, fine-tuning `prover
sft`'s). This file parses flags and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prover.cli.common import (
    ForceOption,
    JsonFlag,
    StandinOption,
    config_from_context,
    console,
    err_console,
    print_json,
)


def iterate(
    ctx: typer.Context,
    config_file: Annotated[Path | None, typer.Option(
        "--config", dir_okay=False, help="TOML run configuration (sections iterate, policy, verifier, rollout, "
        "sft, training); the same as `prover --config FILE iterate`.")] = None,
    rounds: Annotated[int | None, typer.Option(
        "--rounds", min=1, help="Rounds to run (default iterate.rounds); a finished run given more continues.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", file_okay=False, help="Run folder: round-NN/{prove/, corpus.jsonl, sft/, round.json}, report.json, "
        "report.md, config.resolved.toml (default: output_dir of the config). A folder holding this run is "
        "continued.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="The base policy: a Hugging Face folder or hub id (default policy.checkpoint).")] = None,
    problems: Annotated[str | None, typer.Option(
        "--problems", help="Problem set proved each round: suite name or .jsonl/.lean path (default iterate.problems).")
    ] = None,
    split: Annotated[str | None, typer.Option("--split", help="Only this split (default iterate.split).")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Only the first N problems.")] = None,
    engine: Annotated[str | None, typer.Option(
        "--engine", help="Generation engine of the proving phases: vllm or transformers (default policy.engine).")
    ] = None,
    samples: Annotated[int | None, typer.Option(
        "--n", "-n", min=1, help="Samples per problem in each proving phase (default iterate.samples).")] = None,
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", min=1, help="New tokens per sample (default policy.sampling.max_tokens).")] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", min=1, help="Fine-tuning steps per round (default training.steps).")] = None,
    standin: StandinOption = None,
    force: ForceOption = False,
    as_json: JsonFlag = False,
) -> None:
    """Expert iteration: each round proves the problem set with the current policy (a `prover distill`
    run), adds the newly accepted proofs to the accumulated, deduplicated corpus, and fine-tunes on it
    (a `prover sft` run), whose final checkpoint proves in the next round.

    Progress goes to stderr; the per-round report (attempted, newly solved, total solved, corpus size,
    SFT losses, models, seconds) to stdout and DIR/report.md. Killed or interrupted (even kill -9), the
    same command continues: finished rounds are read back, an interrupted phase resumes. Exit 0 done,
    2 bad input, 3 no verifier, 130 interrupted.
    """
    from prover.iterate import run_iterate
    from prover.runs import stamped

    overrides = {
        "output_dir": out, "policy.checkpoint": model, "policy.engine": engine, "iterate.rounds": rounds, "iterate.problems": problems,
        "iterate.split": split, "iterate.limit": limit, "iterate.samples": samples,
        "policy.sampling.max_tokens": max_tokens, "training.steps": steps,
        "verifier.backend": "standin" if standin is not None else None, "verifier.standin_rules": standin}
    config = config_from_context(ctx, overrides, config_file)
    config = stamped(config, "iterate")

    def say(text: str) -> None:
        err_console.print(text, highlight=False, markup=False, soft_wrap=True)

    report = run_iterate(config, config.output_dir, force=force, say=say)   # Ctrl-C: IterateInterrupted, exit 130
    if as_json:
        print_json(report)
        return
    from rich.table import Table

    prefix = f"[{report['verdicts']}] " if report["standin"] else ""
    table = Table(title=f"{prefix}expert iteration on {report['problems']}, {report['rounds_done']} rounds")
    for column in ("round", "attempted", "newly solved", "total solved", "corpus", "SFT train loss",
                   "SFT eval loss", "seconds"):
        table.add_column(column, justify="right")
    for r in report["rounds"]:
        sft = r.get("sft") or {}
        table.add_row(str(r["round"]), str(r["attempted"]), str(r["newly_solved"]),
                      f"{r['total_solved']}/{r['problems']}", str(r["corpus"]["rows"]),
                      "-" if sft.get("train_loss") is None else f"{sft['train_loss']:.4f}",
                      "-" if sft.get("eval_loss") is None else f"{sft['eval_loss']:.4f}", str(r["seconds"]["total"]))
    console.print(table)
    console.print(f"{prefix}final model {report['final_model']}; report {report['output_dir']}/report.md",
                  markup=False, highlight=False, soft_wrap=True)
