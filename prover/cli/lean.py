"""`prover lean`: install and inspect the Lean toolchain, and check proofs with the verifier.

    prover lean setup                 install elan, the pinned Lean, Mathlib's cache, the REPL
    prover lean doctor [--json]       what is found and what is missing (exit 1 if anything is)
    prover lean check PROOF.lean      exit 0 accepted, 1 rejected, 2 bad input, 3 could not check
    prover lean check-set PROOFS.jsonl --problems SET   every proof of a set, with a summary

`check` runs the same pipeline as every other caller (`lean_env.verifier.Verifier`:
precheck, Lean command, judge). `--static` runs only the checks that need no Lean and says
so. Without a toolchain, `check` refuses (exit 3, could not check) rather than fall back to anything else;
the stand-in REPL is available only when asked for by name (`--standin RULES.json`), and
then every line of output says "stand-in (not Lean)".
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from prover.cli.common import (
    EXIT_OK,
    EXIT_REJECTED,
    ForceOption,
    JsonFlag,
    ResumeOption,
    TimeoutOption,
    UserError,
    WorkersOption,
    config_from_context,
    console,
    err_console,
    exit_code_for,
    print_json,
)

app = typer.Typer(
    help="Lean: set up the pinned toolchain and REPL (setup), report what is found (doctor), "
    "and check proof files against a problem's header and statement (check).",
    no_args_is_help=True,
)



@app.command()
def setup(
    connect_timeout: Annotated[float, typer.Option(
        "--connect-timeout", min=0.1,
        help="Seconds to wait when probing each download host before giving up (offline "
        "machines fail fast).")] = 5.0,
) -> None:
    """Install elan, the pinned Lean toolchain, Mathlib (with its build cache) and the REPL.

    Needs network access to GitHub. Parts already present are skipped.
    """
    from lean_env.toolchain import SetupError, checked_by
    from lean_env.toolchain import setup as run_setup

    try:
        tc = run_setup(connect_timeout_s=connect_timeout,
                       progress=lambda msg: err_console.print(f"setup: {msg}", markup=False,
                                                              highlight=False))
    except SetupError as exc:
        raise UserError(f"setup failed: {exc}") from None
    _say(f"Lean is ready: {checked_by(tc)}; REPL at {tc.repl}")


@app.command()
def doctor(as_json: JsonFlag = False) -> None:
    """Report the Lean toolchain, Mathlib cache and REPL this checkout would use (exit 1 if
    anything is missing). Never downloads anything."""
    from rich.table import Table

    from lean_env.toolchain import doctor as run_doctor

    report = run_doctor()
    if as_json:
        print_json(report.to_json())
    else:
        table = Table(title=f"Lean toolchain (pinned: {report.pins.toolchain}, "
                      f"mathlib {report.pins.mathlib}, repl {report.pins.repl})")
        for column in ("", "component", "found", "what to do"):
            table.add_column(column)
        for c in report.checks:
            status = "[green]ok[/]" if c.ok else "[red]missing[/]" if c.required else "[yellow]optional[/]"
            table.add_row(status, c.name, c.found, c.fix)
        console.print(table)
    raise typer.Exit(EXIT_OK if report.ok else EXIT_REJECTED)


def _read_proof(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read: {exc}") from None


def _target(path: Path, code: str, problem: str | None, problems: str | None,
            theorem: str | None = None) -> tuple[str, str, str]:
    """(name, header, formal_statement) the file is checked against: a problem of a set, or
    the file's own theorem (`theorem`, default its first)."""
    from lean_env.acceptance import file_problem, file_theorems

    if problem is None:
        if problems is not None:
            raise UserError("--problems needs --problem NAME (which problem of the set)")
        own = file_problem(code, theorem)
        if own is None and theorem is not None:
            names = [t.name for t in file_theorems(code)]
            raise UserError(f"{path}: no theorem named {theorem!r} (the file has: "
                            f"{', '.join(names) or 'none'})")
        if own is None:
            raise UserError(f"{path}: no theorem found (pass --problem NAME --problems SET to "
                            "check it against a problem)")
        header, name, statement = own
        return name, header, statement
    if theorem is not None:
        raise UserError("--theorem picks a theorem of the file itself; with --problem the "
                        "problem's statement is used")
    if problems is None:
        raise UserError("--problem needs --problems PATH_OR_SUITE (e.g. minif2f-valid)")
    from prover.problems import load_problems

    found = load_problems(problems, names=[problem])
    if not found:
        raise UserError(f"no problem named {problem!r} in {problems}")
    p = found[0]
    return p.name, p.header, p.formal_statement


@app.command()
def check(
    ctx: typer.Context,
    proof: Annotated[Path, typer.Argument(help="Lean file with the proof (whole file, or the "
                                          "theorem and its proof).")],
    problem: Annotated[str | None, typer.Option(
        "--problem", help="Check against this problem's header and statement (needs --problems). "
        "Default: the file's own header and first theorem.")] = None,
    problems: Annotated[str | None, typer.Option(
        "--problems", help="Problem set holding --problem: a .jsonl/.lean path or a suite name "
        "(minif2f-valid, ...).")] = None,
    theorem: Annotated[str | None, typer.Option(
        "--theorem", help="Which theorem of the file to check against its own statement "
        "(default: the first).")] = None,
    static: Annotated[bool, typer.Option(
        "--static", help="Only the checks that need no Lean (header, statement, forbidden "
        "constructs). Says clearly that Lean did not run.")] = False,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=0.1, help="Wall-clock limit for Lean, seconds (default: "
        "verifier.timeout_s of the config).")] = None,
    standin: Annotated[Path | None, typer.Option(
        "--standin", help="TEST DOUBLE: check with the stand-in REPL and this rule table "
        "instead of Lean. Its verdicts are not Lean's.", hidden=True)] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check one proof file: exit 0 accepted, 1 rejected, 2 bad input, 3 could not check (no
    Lean toolchain, verifier infrastructure failed)."""
    from lean_env.acceptance import precheck
    from lean_env.verdict import Accepted
    from lean_env.verifier import VerifyRequest
    from prover.checking import STANDIN_LABEL, open_verifier

    code = _read_proof(proof)
    name, header, statement = _target(proof, code, problem, problems, theorem)
    label = STANDIN_LABEL if standin is not None else None
    verifier = None if static else open_verifier(   # exit 3 without Lean
        config_from_context(ctx, {"verifier.workers": 1, "verifier.timeout_s": timeout}).verifier, standin,
        has_static=True)
    checked_by = "static checks (no Lean ran)" if verifier is None else verifier.checked_by
    try:
        verdict = precheck(name, header, statement, code, checked_by=checked_by)
    except ValueError as exc:   # the problem itself is malformed, not the proof
        raise UserError(f"problem {name}: {exc}") from None
    static_verdict = verdict is not None or verifier is None
    lean_ran = False
    if verifier is not None and verdict is None:
        with verifier:
            verdict = verifier.verify_batch([VerifyRequest(name, header, statement, code)])[0]
        lean_ran = standin is None
    passed = isinstance(verdict, Accepted) or (static and verdict is None)
    if as_json:
        out: dict[str, Any] = {"file": str(proof), "problem": name, "passed": passed,
                               "static": static, "lean_ran": lean_ran, "checked_by": checked_by,
                               "verdict": verdict.to_json() if verdict is not None else None}
        if label:
            out["backend"] = label
        print_json(out)
    else:
        _print_human(name, verdict, static=static_verdict, label=label)
    raise typer.Exit(EXIT_OK if passed else exit_code_for([verdict.outcome if verdict else "accepted"]))


def _say(text: str) -> None:
    """One line of human output, printed as is (no rich markup: `[...]` is text here)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _print_human(name: str, verdict: Any, *, static: bool, label: str | None) -> None:
    prefix = f"[{label}] " if label else ""
    if verdict is None:
        _say(f"{prefix}PASSED static checks: {name} (header, statement, no forbidden "
             "constructs). Lean did not run: this is not a verified proof.")
        return
    kind, _, what = verdict.outcome.partition(":")
    word = {"accepted": "ACCEPTED", "rejected": "REJECTED", "timed_out": "TIMED OUT",
            "not_checked": "NOT CHECKED"}[kind]
    head = f"{prefix}{word}: {name}" + (f" ({what})" if what else "")
    head += f" [checked by {verdict.checked_by}; {verdict.time_s:.2f} s]"
    _say(head)
    _say(f"{prefix}  layers: {', '.join(verdict.layers) or 'none'}"
         + ("" if "comparator" in verdict.layers or not verdict.accepted
            else " (no final judge: Comparator is not installed for this Lean)"))
    if static:
        _say(f"{prefix}  (decided by the static checks: Lean did not run)")
    detail = getattr(verdict, "detail", "")
    for line in detail.splitlines():
        _say(f"{prefix}  {line}")
    if getattr(verdict, "axioms", None) is not None and word == "ACCEPTED":
        _say(f"{prefix}  axioms: {', '.join(verdict.axioms) or 'none'}")
    for m in getattr(verdict, "messages", ()):
        for i, line in enumerate(str(m).splitlines()):
            _say(f"{prefix}  {'' if i == 0 else '  '}{line}")


@app.command("check-set")
def check_set(
    ctx: typer.Context,
    proofs: Annotated[Path | None, typer.Argument(
        help="jsonl file, one proof a line: {\"name\": ..., \"code\": whole Lean file or theorem + proof} "
        "(default: run.proofs of --config).")] = None,
    problems: Annotated[str | None, typer.Option(
        "--problems", help="Problem set the proofs belong to: a .jsonl/.lean path or a suite "
        "name (minif2f-valid, ...); default: run.problems of --config.")] = None,
    static: Annotated[bool, typer.Option(
        "--static", help="Only the checks that need no Lean. Says clearly that Lean did not run.")] = False,
    timeout: TimeoutOption = None,
    workers: WorkersOption = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Run folder: results.jsonl (appended as proofs are checked), summary.json and "
        "config.resolved.toml.", file_okay=False)] = None,
    force: ForceOption = False,
    resume: ResumeOption = False,
    standin: Annotated[Path | None, typer.Option(
        "--standin", help="TEST DOUBLE: check with the stand-in REPL and this rule table "
        "instead of Lean. Its verdicts are not Lean's.", hidden=True)] = None,
    as_json: JsonFlag = False,
) -> None:
    """Check every proof of a jsonl file against its problem: a table of outcomes, the failures,
    and with --out the per-proof results. Exit 0 if all passed, 1 if any failed, 2 bad input,
    3 if some could not be checked (infrastructure), 130 interrupted (what was checked is kept;
    --resume continues)."""
    from contextlib import nullcontext

    from rich.markup import escape
    from rich.table import Table

    from prover.checking import (
        STANDIN_LABEL,
        STATIC_LABEL,
        check_proofs,
        load_proofs,
        open_verifier,
        summarize_records,
    )
    from prover.problems import load_problems, resolve_source, sha256_of
    from prover.runs import RunDir, check_pinned, command_line

    run_config = config_from_context(ctx, {"verifier.timeout_s": timeout, "verifier.workers": workers,
                                           "output_dir": out})
    run = RunDir.prepare(out, key="origin", force=force, resume=resume)   # before any work
    job = run_config.run   # flags first, then the [run] section of --config (a resolved config re-runs its job)
    proofs = proofs if proofs is not None else (Path(job.proofs) if job.proofs else None)
    problems = problems or job.problems
    static = static or job.static
    if proofs is None or problems is None:
        raise UserError("check-set needs a PROOFS.jsonl file and --problems SET (or a --config naming them)")
    entries = load_proofs(proofs)
    proofs_sha256 = sha256_of(proofs)
    check_pinned("proofs file", str(proofs), proofs_sha256, job.proofs, job.proofs_sha256)
    resolved = resolve_source(problems)
    check_pinned("--problems", problems, resolved.sha256, job.problems, job.problems_sha256)
    problem_set = load_problems(problems)
    verifier = None if static else open_verifier(run_config.verifier, standin, has_static=True)
    checked_by = STATIC_LABEL if verifier is None else verifier.checked_by
    label = STANDIN_LABEL if verifier is not None and verifier.config.backend == "standin" else None
    if verifier is not None:   # what actually ran (backend, REPL command) rather than the defaults
        run_config = run_config.model_copy(update={"verifier": verifier.config})
    run_config = run_config.model_copy(update={"run": job.model_copy(update={
        "command": "lean check-set", "argv": command_line(), "proofs": str(proofs),
        "proofs_sha256": proofs_sha256, "problems": problems, "problems_file": resolved.location,
        "problems_sha256": resolved.sha256, "static": static})})
    todo = [e for e in entries if e.origin not in run.done_keys]   # --resume: the rest
    results = check_proofs(todo, problem_set, verifier,   # matches every proof first (exit 2 on unknown names)
                           batch_size=4 * run_config.verifier.workers, on_verified=run.verified)
    run.begin(run_config, total=len(entries), summarize=summarize_records, succeeded=lambda r: bool(r["passed"]),
              unit="proofs", success_word="passed",
              extra={"checked_by": checked_by, "proofs": str(proofs), "problems": problems,
                     "static": verifier is None} | ({"backend": label} if label else {}))
    with run, verifier if verifier is not None else nullcontext():
        for result in results:
            run.append(result.to_json())
    summary = run.summary
    assert summary is not None
    if as_json:
        print_json(summary)
    else:
        prefix = f"[{label}] " if label else ""
        _say(f"{prefix}{summary['passed']}/{summary['total']} passed; checked by {checked_by}")
        table = Table(show_header=True, header_style="bold")
        table.add_column("outcome")
        table.add_column("proofs", justify="right")
        for outcome, count in summary["outcomes"].items():
            table.add_row(escape(f"{prefix}{outcome}"), str(count))
        console.print(table)
        for failure in summary["failed"][:20]:
            _say(f"{prefix}  {failure['outcome']}: {failure['name']} ({failure['origin']})")
        if len(summary["failed"]) > 20:
            _say(f"{prefix}  ... and {len(summary['failed']) - 20} more (see --out or --json)")
        if verifier is None:
            _say("Lean did not run: `passed_static` proofs are not verified proofs.")
        if out is not None:
            _say(f"wrote {out}/results.jsonl, summary.json, config.resolved.toml")
    raise typer.Exit(EXIT_OK if summary["passed"] == summary["total"] else exit_code_for(summary["outcomes"]))


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(
        "--host", help="Address to bind. Anything but loopback needs --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535,
                                      help="TCP port (0: pick a free one and print it).")] = 8000,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="PROVER_SERVE_API_KEY",
        help="Key clients send as `Authorization: Bearer KEY` (kimina-ast-client's api_key).")] = None,
    workers: Annotated[int | None, typer.Option(
        "--workers", min=1, help="REPL processes (default: verifier.workers of the config).")] = None,
    timeout: Annotated[float | None, typer.Option(
        "--timeout", min=0.1, help="Wall-clock limit per proof, seconds (default: verifier.timeout_s).")] = None,
    max_pending: Annotated[int, typer.Option(
        "--max-pending", min=1, help="Snippets admitted at once; beyond, HTTP 503 with Retry-After.")] = 256,
    prewarm: Annotated[str | None, typer.Option(
        "--prewarm", help="Problem set (a .jsonl/.lean path or a suite name) whose headers get "
        "warm REPLs before the first request.")] = None,
    standin: Annotated[Path | None, typer.Option(
        "--standin", help="TEST DOUBLE: serve the stand-in REPL with this rule table instead of "
        "Lean. Its verdicts are not Lean's.", hidden=True)] = None,
) -> None:
    """Serve the verifier over HTTP: our verdicts at POST /v1/verify, kimina-lean-server's
    /api/check and /verify, /health, /ready, /metrics (see lean_env.service). Stops on Ctrl-C
    after finishing the requests in flight."""
    from pydantic import ValidationError

    from lean_env.service import ServiceConfig
    from lean_env.service import serve as run_service
    from prover.checking import STANDIN_LABEL, open_verifier

    try:
        service = ServiceConfig(host=host, port=port, api_key=api_key, max_pending=max_pending,
                                max_batch=min(64, max_pending))
    except ValidationError as exc:
        raise UserError(f"serve: {exc.errors()[0]['msg']}") from None
    verifier = open_verifier(config_from_context(
        ctx, {"verifier.workers": workers, "verifier.timeout_s": timeout}).verifier, standin)
    headers = []
    if prewarm is not None:
        from prover.problems import load_problems

        headers = [p.header for p in load_problems(prewarm)]
    label = f"[{STANDIN_LABEL}] " if standin is not None else ""
    run_service(verifier, service, prewarm=headers, on_ready=lambda url: err_console.print(
        f"{label}serving {verifier.checked_by} on {url}", markup=False, highlight=False,
        soft_wrap=True))
