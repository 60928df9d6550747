"""`prover sft`: supervised fine-tuning of our policy or any Hugging Face causal LM.

    prover sft --config examples/sft-cpu.toml --out runs/sft          # start, or continue that run
    prover sft --model DIR --corpus proofs.jsonl --steps 200 --out runs/sft
    torchrun --nproc-per-node 2 -m prover sft --config FILE --out runs/sft   # sharded as [learner] says

The loop lives in `prover.rl.sft` (checkpoints, metrics and schedule in prover.rl, shared with
the GRPO trainer). This file parses flags and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prover.cli.common import (
    ForceOption,
    JsonFlag,
    config_from_context,
    console,
    print_json,
)


def sft(
    ctx: typer.Context,
    config_file: Annotated[Path | None, typer.Option(
        "--config", dir_okay=False, help="TOML run configuration (sections training, sft, policy, rollout); "
        "the same as `prover --config FILE sft`.")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", file_okay=False, help="Run folder: checkpoints/step-N (Hugging Face folders vLLM and `prover "
        "bench` load), metrics.jsonl, tb/ (TensorBoard), summary.json, config.resolved.toml (default: "
        "output_dir of the config). A folder holding this run is continued from its newest checkpoint.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="The model to fine-tune: a Hugging Face folder (ours or any causal LM) or hub id "
        "(default policy.checkpoint).")] = None,
    corpus: Annotated[str | None, typer.Option("--corpus", help="The corpus jsonl (default sft.corpus).")] = None,
    corpus_format: Annotated[str | None, typer.Option(
        "--format", help="Corpus rows: lean-files, prompt-completion or tactic (default sft.format).")] = None,
    problems: Annotated[str | None, typer.Option(
        "--problems", help="lean-files: the problem set the proofs belong to (default sft.problems).")] = None,
    template: Annotated[str | None, typer.Option(
        "--template", help="Prompt template of `prove`/`bench` (default rollout.prompt_template).")] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Optimizer steps (default training.steps).")] = None,
    learning_rate: Annotated[float | None, typer.Option(
        "--lr", min=0.0, help="Peak learning rate (default training.learning_rate).")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda (default training.device).")] = None,
    force: ForceOption = False,
    as_json: JsonFlag = False,
) -> None:
    """Fine-tune a model on a proof corpus (loss on completions only).

    Prompts are built with the templates of `prove` and `bench`, so what is trained is what is
    sampled. Progress goes to stderr; the summary to stdout. Killed or interrupted, the same
    command continues from the newest checkpoint. Exit 0 done, 2 bad input, 130 interrupted
    (a checkpoint of the last finished step is written). Under torchrun the ranks shard our policy
    as `[learner]` says and split each step's micro-batches; rank 0 prints.
    """
    from prover.rl.sft import run_sft
    from prover.runs import stamped

    overrides = {
        "output_dir": out, "policy.checkpoint": model, "sft.corpus": corpus, "sft.format": corpus_format,
        "sft.problems": problems, "rollout.prompt_template": template, "training.steps": steps,
        "training.learning_rate": learning_rate, "training.device": device}
    config = config_from_context(ctx, overrides, config_file)
    config = stamped(config, "sft")
    summary = run_sft(config, config.output_dir, force=force)   # Ctrl-C: SFTInterrupted, exit 130
    if summary is None:   # a rank other than 0 under torchrun: rank 0 prints
        return
    if as_json:
        print_json(summary)
        return
    held = f", held-out loss {summary['eval_loss']:.4f}" if summary["eval_loss"] is not None else ""
    train = f"train loss {summary['train_loss']:.4f}" if summary["train_loss"] is not None else "no step run"
    console.print(f"{summary['steps']} steps on {summary['examples']} examples: {train}{held}; "
                  f"{summary['seconds']} s; checkpoint {summary['checkpoint']}", markup=False, highlight=False,
                  soft_wrap=True)
