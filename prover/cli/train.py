"""`prover train`: GRPO with Lean-verified rewards over a Ray fleet; `prover train report`.

    prover train --config examples/train-cpu-standin.toml --out runs/grpo      # start, or continue
    prover train --config FILE --set grpo.policy_loss=cispo --set training.steps=50 --out DIR
    prover train report runs/grpo                                              # curves as PNG

The loop lives in `prover.rl.train` (the fleet in `prover.fleet`, the objective in
`prover.rl.losses`/`learner`); this file parses flags and prints.
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
    print_json,
)

app = typer.Typer(
    help="Train the policy with GRPO on a Lean problem set: rollouts on vLLM engines and Lean verdicts as "
    "rewards over a Ray fleet (`prover sft` for supervised fine-tuning, `prover distill` / `prover data curate` "
    "for corpora).",
    invoke_without_command=True, no_args_is_help=False)


@app.callback()
def train(
    ctx: typer.Context,
    config_file: Annotated[Path | None, typer.Option(
        "--config", dir_okay=False, help="TOML run configuration (sections policy, rollout, grpo, training, "
        "fleet, verifier); the same as `prover --config FILE train`.")] = None,
    assignments: Annotated[list[str] | None, typer.Option(
        "--set", help="Override one config value, dotted key = TOML value (repeatable): --set grpo.kl_coef=0.01 "
        "--set fleet.mode=async.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", file_okay=False, help="Run folder: checkpoints/step-N (Hugging Face folders vLLM and `prover "
        "bench` load), metrics.jsonl, tb/, summary.json, config.resolved.toml (default: output_dir). A folder "
        "holding this run is continued from its newest checkpoint.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="The policy to start from: a Hugging Face folder or hub id (default policy.checkpoint).")] = None,
    problems: Annotated[str | None, typer.Option(
        "--problems", help="Problem set trained on: suite, .jsonl/.lean path or hf:owner/name (default "
        "rollout.problems).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Learner steps (default training.steps).")] = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", help="Join this Ray cluster ('auto', 'ray://host:10001'); default: a local Ray.")] = None,
    standin: StandinOption = None,
    force: ForceOption = False,
    as_json: JsonFlag = False,
) -> None:
    """GRPO with Lean-verified rewards (see `prover train report` for the curves).

    Progress goes to stderr; the summary to stdout. Killed or interrupted, the same command
    continues from the newest checkpoint. Exit 0 done, 2 bad input, 3 no Lean to check with, 130
    interrupted."""
    if ctx.invoked_subcommand is not None:
        return
    from prover.checking import open_verifier
    from prover.config import parse_assignments
    from prover.rl.train import preflight, run_train
    from prover.runs import stamped

    overrides = {**parse_assignments(assignments or []),
                 **{k: v for k, v in {"output_dir": out, "policy.checkpoint": model, "rollout.problems": problems,
                                      "training.steps": steps, "fleet.ray_address": ray_address}.items()
                    if v is not None}}
    config = config_from_context(ctx, overrides, config_file)
    preflight(config)
    # The verifier is built here once, before any actor starts: no Lean and no --standin is exit 3 now.
    verifier = open_verifier(config.verifier, standin).config
    config = stamped(config.model_copy(update={"verifier": verifier}), "train")
    summary = run_train(config, config.output_dir, force=force)   # Ctrl-C: TrainInterrupted, exit 130
    if as_json:
        print_json(summary)
        return
    first, last = summary["reward_first_fifth"], summary["reward_last_fifth"]
    rewards = (f"mean reward {first:.3f} (first fifth of the steps) -> {last:.3f} (last fifth)"
               if first is not None and last is not None else "no reward recorded")
    console.print(f"{summary['steps']} steps, {rewards}; judged by {summary['judged_by']}; "
                  f"{summary['seconds']} s; checkpoint {summary['checkpoint']}", markup=False, highlight=False,
                  soft_wrap=True)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(file_okay=False, help="A `prover train` (or `prover sft`) run folder.")],
    out: Annotated[Path | None, typer.Option(
        "--out", dir_okay=False, help="PNG to write (default RUN_DIR/curves.png).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Plot a run's metrics.jsonl (reward, pass rate, loss, lengths, KL, clip fraction, time split)
    as one PNG."""
    from prover.rl.report import CURVES_NAME, plot_curves

    path = plot_curves(run_dir, out or run_dir / CURVES_NAME)
    if as_json:
        print_json({"png": str(path), "run_dir": str(run_dir)})
        return
    console.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)
