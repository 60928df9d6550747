"""Pieces every CLI command shares: exit codes, the user-error types, `--json` output,
and console helpers.

Domain errors become a one-line message and an exit code at the CLI edge, never a
traceback: library code raises `prover.errors.UserError` for anything a user can fix and
`prover.errors.CannotCheck` when nothing here could judge the input.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from policy.config import SEED_MAX  # largest seed torch and vLLM take
from prover.errors import CannotCheck, UserError

__all__ = ["EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_NOT_CHECKED", "EXIT_OK", "EXIT_REJECTED",
           "EXIT_USAGE", "SEED_MAX", "CannotCheck", "ForceOption", "JsonFlag", "ResumeOption",
           "SearchBackendOption", "StandinOption", "TacticTemplateOption", "TemplateOption", "TimeoutOption", "WorkersOption", "UserError", "config_from_context",
           "console", "err_console", "exit_code_for", "print_json"]

# Exit codes: each means one thing, for every command.
EXIT_OK = 0             # yes: proved, accepted, everything found
EXIT_REJECTED = 1       # the command ran and the answer is "no" (a proof rejected, a problem not proved)
EXIT_USAGE = 2          # the user's mistake: bad option, unreadable or malformed file, bad config value
EXIT_NOT_CHECKED = 3    # could not check: no Lean toolchain or REPL, verifier server down, infrastructure
EXIT_INTERNAL = 70      # a bug in the prover (traceback shown; sysexits' EX_SOFTWARE)
EXIT_INTERRUPTED = 130  # interrupted: Ctrl-C or SIGTERM (128 + SIGINT, the shell's convention)

# Options every command that checks proofs or writes a run folder shares: one spelling each.
TimeoutOption = Annotated[float | None, typer.Option(
    "--timeout", min=0.1, help="Lean wall-clock limit per proof, seconds (default: verifier.timeout_s).")]
WorkersOption = Annotated[int | None, typer.Option(
    "--workers", min=1, help="REPL processes checking proofs (default: verifier.workers).")]
ForceOption = Annotated[bool, typer.Option(
    "--force", help="Start over in a non-empty run folder (its run files are removed).")]
ResumeOption = Annotated[bool, typer.Option(
    "--resume", help="Continue the run in --out: what results.jsonl holds is skipped (the config must match).")]
TemplateOption = Annotated[str | None, typer.Option(
    "--template", help="Prompt of a released prover (prover/prompts.py): deepseek-prover-v1.5 (default), "
    "deepseek-prover-v2, goedel-prover-v2, kimina-prover, plain (default: rollout.prompt_template).")]
SearchBackendOption = Annotated[str | None, typer.Option(
    "--search-backend", help="search: tactic sessions on the verifier's REPL pool (repl) or LeanDojo's on a traced "
    "repo (dojo: needs search.dojo_url, dojo_commit, dojo_file_path in --config); default search.backend.")]
TacticTemplateOption = Annotated[str | None, typer.Option(
    "--tactic-template", help="search: state -> tactic prompt, bfs-prover or gptf (prover/search/best_first.py); "
    "default search.template.")]
# Proving methods' sampling and budgets (prove, bench, distill).
MaxTokensOption = Annotated[int | None, typer.Option("--max-tokens", min=1, help="New tokens per sample.")]
TemperatureOption = Annotated[float | None, typer.Option("--temperature", min=0.0, help="Sampling temperature.")]
SeedOption = Annotated[int | None, typer.Option(
    "--seed", min=0, max=SEED_MAX, help="Sampling seed (default: drawn and recorded).")]
BudgetSamplesOption = Annotated[int | None, typer.Option(
    "--budget-samples", min=1, help="At most this many samples per problem, every repair round included "
    "(bench: samples not drawn count as failed in pass@k).")]
BudgetTokensOption = Annotated[int | None, typer.Option(
    "--budget-tokens", min=1, help="At most this many generated tokens per problem (checked between engine calls).")]
BudgetSecondsOption = Annotated[float | None, typer.Option(
    "--budget-seconds", min=0.001, help="Wall-time limit per problem, seconds (checked between engine calls).")]
RoundsOption = Annotated[int | None, typer.Option(
    "--rounds", min=0, help="repair: correction rounds after the first samples (default 2).")]
ThinkTokensOption = Annotated[int | None, typer.Option(
    "--think-tokens", min=1, help="CoT templates: s1 budget forcing, thinking capped at N tokens, then the answer forced.")]
WaitsOption = Annotated[int | None, typer.Option(
    "--waits", min=0, help="With --think-tokens: \"Wait\" appended to thinking that ends early, up to N times.")]
ExpansionsOption = Annotated[int | None, typer.Option(
    "--expansions", min=1, help="search: frontier expansions per problem.")]
StandinOption = Annotated[Path | None, typer.Option(
    "--standin", hidden=True, help="TEST DOUBLE: check with the stand-in REPL and this rule table instead "
    "of Lean. Its verdicts are not Lean's.")]

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print the result as one JSON document on stdout (for "
                       "programs); logs and progress go to stderr.")
]

console = Console()
err_console = Console(stderr=True)


def print_json(data: Any) -> None:
    """Machine-readable output: one JSON document on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def exit_code_for(outcomes: Iterable[str]) -> int:
    """One exit code for a set of verdict outcomes (`Verdict.outcome` strings): some could not
    be checked (infrastructure) -> 3, else all accepted -> 0, else (or none at all) -> 1."""
    seen = list(outcomes)
    if "not_checked:infrastructure" in seen:
        return EXIT_NOT_CHECKED
    return EXIT_OK if seen and all(o == "accepted" for o in seen) else EXIT_REJECTED


def config_from_context(ctx: typer.Context, overrides: dict[str, Any] | None = None,
                        config_file: Path | None = None):  # -> ProverConfig
    """Resolve the run config for a command: defaults < the config file (the command's own
    `--config`, else the global one) < `overrides` (the command's own flags, as dotted keys;
    None = flag not given)."""
    from prover.config import resolve_config  # deferred: keeps `prover --help` light

    if config_file is None:
        root = ctx.find_root()
        config_file = (root.obj or {}).get("config_file") if isinstance(root.obj, dict) else None
    return resolve_config(config_file, overrides)

