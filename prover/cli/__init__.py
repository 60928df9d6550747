"""`prover`: the command-line interface, a thin typer shell over library functions.

Groups: prove, train, sft, bench, distill, lean, model, data, config. Logging is configured here (and only
here), from the global `--log-level` (`prover.logs`). stdout carries a command's result and
nothing else; logs, progress and errors go to stderr.

One guard (`_Group.main`) turns everything a user can cause into one line on stderr and an
exit code (`prover.cli.common`): 0 yes, 1 no, 2 the user's mistake (a `UserError`, a usage
error, an unreadable or undecodable input), 3 could not check (no Lean, a verifier server
down), 130 interrupted. Anything else is a bug: its traceback is shown, with a line asking
to report it, and exit 70.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer._click.exceptions import (  # typer vendors click
    ClickException,
    NoArgsIsHelpError,
    UsageError,
)
from typer.core import TyperGroup

import prover
from prover.cli import bench, data, distill, iterate, lean, model, prove, sft, train
from prover.cli import config as config_cli
from prover.cli.common import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_NOT_CHECKED,
    EXIT_OK,
    EXIT_USAGE,
    UserError,
    err_console,
)
from prover.logs import configure_logging, parse_level, stdout_reserved_for_results


def _printable(text: str) -> str:
    """`text` with undecodable bytes of path names (lone surrogates) shown as \\xNN escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _error(message: str, code: int) -> int:
    err_console.print(f"[bold red]error:[/] {escape(_printable(message))}", highlight=False, soft_wrap=True)
    return code


def _check_arguments(args: Sequence[str]) -> None:
    """Arguments with bytes that are not UTF-8 (a path name from another system) would break
    every JSON file and report that names them: refuse them before any work starts."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            raise UserError(f"argument '{_printable(arg)}' is not valid UTF-8 (undecodable bytes "
                            "in a path name?); rename the file or pass a path without them") from None


def _usage_message(exc: ClickException) -> str:
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    if isinstance(exc, UsageError) and ctx is not None:
        message += f" (see `{ctx.command_path} --help`)"
    return " ".join(message.split())   # one line


def _handle(exc: BaseException) -> int:
    """The exit code for an exception that reached the CLI edge, after saying why on stderr."""
    from lean_env.errors import LeanEnvError, VerifierConfigError
    from prover.runs import Interrupted

    if isinstance(exc, Interrupted):   # its line says what was kept and how to continue
        err_console.print(_printable(str(exc)), highlight=False, markup=False, soft_wrap=True)
        return EXIT_INTERRUPTED
    if isinstance(exc, UserError):
        return _error(str(exc), exc.exit_code)
    if isinstance(exc, NoArgsIsHelpError):   # a group called bare: its help is already printed
        return EXIT_USAGE
    if isinstance(exc, ClickException):   # usage errors, bad option values
        return _error(_usage_message(exc), EXIT_USAGE)
    if isinstance(exc, typer.Abort | KeyboardInterrupt):
        return _error("interrupted", EXIT_INTERRUPTED)
    if isinstance(exc, VerifierConfigError):
        return _error(str(exc), EXIT_USAGE)
    if isinstance(exc, LeanEnvError | ConnectionError):
        return _error(f"could not check: {exc}", EXIT_NOT_CHECKED)
    if isinstance(exc, UnicodeError | OverflowError | OSError):
        # Inputs a check missed; the traceback stays one flag away in case it is our bug.
        logging.getLogger("prover.cli").debug("traceback of the error below", exc_info=exc)
    if isinstance(exc, UnicodeDecodeError):
        return _error(f"input is not UTF-8 text ({exc.reason} at byte {exc.start})", EXIT_USAGE)
    if isinstance(exc, UnicodeEncodeError):
        return _error(f"text cannot be written as UTF-8 ({exc.reason}: {exc.object[exc.start:exc.end]!r}); "
                      "undecodable bytes in a path name?", EXIT_USAGE)
    if isinstance(exc, OverflowError):
        return _error(f"a number is too large: {exc}", EXIT_USAGE)
    if isinstance(exc, OSError) and exc.filename is not None:
        return _error(f"{_printable(str(exc.filename))}: {exc.strerror}", EXIT_USAGE)
    traceback.print_exception(exc)
    return _error(f"internal error in prover {prover.__version__} (a bug, not your input): please "
                  "report it with the command line and the traceback above", EXIT_INTERNAL)


class _Group(TyperGroup):
    """The root group: the one place where exceptions become messages and exit codes."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,  # type: ignore[override]
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        try:
            _check_arguments(argv)
            with stdout_reserved_for_results():
                code = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
            code = code if isinstance(code, int) else EXIT_OK
        except Exception as exc:   # noqa: BLE001 (the CLI edge: every exception ends here)
            code = _handle(exc)
        except KeyboardInterrupt as exc:
            code = _handle(exc)
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="prover",
    cls=_Group,
    help="Lean-integrated RL theorem prover: prove theorems, train the policy with GRPO, "
    "benchmark pass@k, and manage Lean, models and problem sets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(prove.app, name="prove")
app.add_typer(train.app, name="train")
app.command("sft")(sft.sft)
app.add_typer(bench.app, name="bench")
app.add_typer(distill.app, name="distill")
app.command("iterate")(iterate.iterate)
app.add_typer(lean.app, name="lean")
app.add_typer(model.app, name="model")
app.add_typer(data.app, name="data")
app.add_typer(config_cli.app, name="config")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"prover {prover.__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _global(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="TOML run configuration (sections policy, verifier, rollout, training, sft, grpo, learner, fleet, benchmark, curate); "
            "command-line flags override it, it overrides the defaults. See `prover config show`.",
            dir_okay=False,
        ),
    ] = None,
    log_level: Annotated[
        str,
        typer.Option(
            "--log-level",
            help="Level of library logs (vLLM, transformers, HF hub, Ray, torch) and diagnostics, "
            "all on stderr: debug, info, warning, error.",
            case_sensitive=False,
        ),
    ] = "warning",
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", is_eager=True,
                     callback=_print_version),
    ] = False,
) -> None:
    try:
        level = parse_level(log_level)
    except ValueError as exc:
        raise UserError(f"--log-level: {exc}") from None
    configure_logging(level)
    if config is not None:
        from prover.config import read_config_file

        if not config.is_file():
            raise UserError(f"--config {config}: no such file")
        read_config_file(config)   # unreadable, not UTF-8, not TOML: fails here, before any command
        # Its values are checked with the command's flags (resolve_config), which may complete them.
    ctx.obj = {"config_file": config}


def main() -> None:
    """Console-script entry point."""
    app()
