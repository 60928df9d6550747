"""The final judge: leanprover/comparator run on one candidate (issue 8).

Comparator is the Lean community's judge for untrusted proofs (its README; the Lean reference
manual's "Validating a Lean Proof"). Given a trusted challenge file (the problem's header and
statement, proved by `sorry`) and an untrusted solution file, it builds both in a landrun
sandbox, exports them with lean4export, checks that every theorem named in its configuration
has in the solution exactly the challenge's type (and every constant that type mentions is
the same), that the proof uses only permitted axioms, and replays the solution's declarations
in Lean's kernel. So a `debug.skipKernelTC` switch, a forged `#print axioms` answer or a
re-scoped statement, which fool layers that read text or messages, cannot fool it.

What this module does, for one candidate:
  1. makes a fresh Lake project in a temporary folder inside ours (`<project>/.lake/
     comparator-runs/`), with our requirements, lake-manifest.json and prebuilt packages
     (Mathlib's cache), and two libraries, `Challenge` and `Solution`;
  2. writes Challenge.lean (header + statement + `sorry`), Solution.lean (the candidate as a
     whole file when it has its own `import` lines, else header + candidate) and Comparator's
     JSON configuration, field for field as its README documents it;
  3. runs Comparator there in its own process group under a wall-clock limit (on expiry the
     whole group is killed: Comparator, lake, lean, lean4export, landrun);
  4. reads its documented outcome (`read_outcome`, the one place its output is parsed): exit 0
     with the final line "Your solution is okay!" is acceptance; a non-zero exit after the
     solution phase began is a rejection, with the reason from the JSON report Comparator
     writes (`json_output_path`) or its "uncaught exception: ..." line.
Infrastructure failures (not installed, killed by a signal, failing on the trusted challenge,
output not in the documented form) are typed exceptions from `lean_env.errors`.

Written against Comparator's README and Main.lean (no Lean can be installed on our machines);
tested through `lean_env.standin.comparator`, a stand-in of its process protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import signal
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lean_env.config import VerifierConfig
from lean_env.errors import (
    ComparatorCrashedError,
    ComparatorMissingError,
    ComparatorProtocolError,
    ComparatorTimeoutError,
    LeanEnvError,
    ReplTimeoutError,
)
from lean_env.lexer import tokenize
from lean_env.repl import _limit_address_space
from lean_env.standin.comparator import CHECKED_BY as STANDIN_CHECKED_BY
from lean_env.toolchain import PROJECT_DIR, comparator_command, find_toolchain
from lean_env.verdict import Accepted, NotChecked, Rejected, RejectReason, TimedOut, Verdict

CHALLENGE_MODULE = "Challenge"
SOLUTION_MODULE = "Solution"
CONFIG_FILE = "comparator.json"
REPORT_FILE = "comparator-report.json"
STDOUT_FILE, STDERR_FILE = "comparator.stdout.log", "comparator.stderr.log"
RUNS_DIR = Path(".lake") / "comparator-runs"     # inside the Lake project the runs share
# Comparator's documented markers (Main.lean: `compareIt`, `safeLakeBuild`; Lean's `main`).
SUCCESS_LINE = "Your solution is okay!"
SOLUTION_PHASE = f"Building {SOLUTION_MODULE}"
UNCAUGHT = "uncaught exception: "
_TAIL_CHARS = 2000


@dataclass(frozen=True)
class ComparatorResult:
    """Comparator's judgement of one candidate. `ok`: the solution proves the challenge's
    statement with permitted axioms and the kernel accepted its replay; `detail`: why not, or
    what was checked; `time_s`: wall-clock seconds of the Comparator run."""

    ok: bool
    detail: str
    time_s: float


# -- the files Comparator reads ---------------------------------------------------------------

def _ends_line(text: str) -> str:
    return text if not text or text.endswith("\n") else text + "\n"


def challenge_source(header: str, formal_statement: str) -> str:
    """The trusted challenge: our header and the problem's statement, proved by `sorry`.

    Dataset statements end in `:= by` (DeepSeek-Prover's convention) or `:=`; one that ends in
    neither gets ` := sorry`.
    """
    statement = formal_statement.rstrip()
    if re.search(r":=\s*by$", statement):
        proof = "\n  sorry\n"
    elif statement.endswith(":="):
        proof = " sorry\n"
    else:
        proof = " := sorry\n"
    return _ends_line(header) + statement + proof


def has_imports(candidate: str) -> bool:
    """Whether the candidate brings its own header (an `import` in code, not in a comment)."""
    return any(t.text == "import" for t in tokenize(candidate))


def solution_source(header: str, candidate: str) -> str:
    """The untrusted solution: the candidate as it is when it is a whole file (its own
    `import` lines), else our header followed by the candidate (theorem and proof only)."""
    return _ends_line(candidate) if has_imports(candidate) else _ends_line(header) + _ends_line(candidate)


def comparator_config(name: str, permitted_axioms: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Comparator's JSON configuration, as its README documents it (and `Config` in Main.lean
    decodes it): module names, the theorem to compare, permitted axioms, no nanoda kernel, and
    the machine-readable report's path (relative to the project folder it runs in)."""
    return {
        "challenge_module": CHALLENGE_MODULE,
        "solution_module": SOLUTION_MODULE,
        "theorem_names": [name],
        "permitted_axioms": list(permitted_axioms),
        "enable_nanoda": False,
        "json_output_path": REPORT_FILE,
    }


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)   # a TOML basic string
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} to lakefile.toml")


def lakefile_source(project_dir: Path) -> str:
    """lakefile.toml of one run: our project's requirements (so our lake-manifest.json and
    prebuilt packages apply unchanged) plus the `Challenge` and `Solution` libraries that
    Comparator builds with `lake build <module>`."""
    lines = ['name = "prover_judge"', "defaultTargets = []", ""]
    lakefile = project_dir / "lakefile.toml"
    if lakefile.is_file():
        with lakefile.open("rb") as fh:
            requires = tomllib.load(fh).get("require", [])
        for req in requires:
            lines.append("[[require]]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in req.items()]
            lines.append("")
    for module in (CHALLENGE_MODULE, SOLUTION_MODULE):
        lines += ["[[lean_lib]]", f'name = "{module}"', ""]
    return "\n".join(lines)


def write_run(run_dir: Path, project_dir: Path, *, name: str, header: str, formal_statement: str,
              candidate: str, permitted_axioms: tuple[str, ...] | list[str]) -> Path:
    """Lay out one run's Lake project in `run_dir`; returns the configuration's path."""
    (run_dir / "lakefile.toml").write_text(lakefile_source(project_dir), encoding="utf-8")
    for shared in ("lean-toolchain", "lake-manifest.json"):
        if (project_dir / shared).is_file():
            shutil.copyfile(project_dir / shared, run_dir / shared)
    packages = project_dir / ".lake" / "packages"
    if packages.is_dir():
        # Prebuilt dependencies (Mathlib's cache) are shared, not copied: Comparator's sandbox
        # lets lake write only to this run's .lake, and nothing under packages needs a rebuild.
        (run_dir / ".lake").mkdir(exist_ok=True)
        (run_dir / ".lake" / "packages").symlink_to(packages.resolve(), target_is_directory=True)
    (run_dir / f"{CHALLENGE_MODULE}.lean").write_text(challenge_source(header, formal_statement),
                                                      encoding="utf-8")
    (run_dir / f"{SOLUTION_MODULE}.lean").write_text(solution_source(header, candidate), encoding="utf-8")
    config_path = run_dir / CONFIG_FILE
    config_path.write_text(json.dumps(comparator_config(name, permitted_axioms), indent=2) + "\n",
                           encoding="utf-8")
    return config_path


# -- reading Comparator's outcome (the one place its output is parsed) ------------------------

def _report_failures(report: dict[str, Any]) -> list[str]:
    """Failures the JSON report records: per target (comparison, axioms), then the kernels."""
    failures = []
    for target in report["reports"]:
        if target.get("failureCategory"):
            axioms = target.get("unpermittedAxioms") or []
            extra = f" (unpermitted axioms: {', '.join(map(str, axioms))})" if axioms else ""
            failures.append(f"{target['failureCategory']}: {target.get('target')}: "
                            f"{target.get('failureMessage') or ''}{extra}")
    for kernel, accepted, message in (("Lean kernel", "kernelAccepted", "kernelFailureMessage"),
                                      ("nanoda kernel", "nanodaAccepted", "nanodaFailureMessage")):
        if report.get(accepted) is False:
            failures.append(f"{kernel} rejected the replay: {report.get(message) or ''}")
    return failures


def _parse_report(text: str) -> dict[str, Any]:
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ComparatorProtocolError(f"comparator's JSON report is not JSON ({exc}): {text[:200]!r}") from None
    if not isinstance(report, dict) or not isinstance(report.get("reports"), list) \
            or not all(isinstance(r, dict) and "target" in r for r in report["reports"]):
        raise ComparatorProtocolError(f"comparator's JSON report has not the documented shape: {text[:200]!r}")
    return report


def _uncaught(stderr: str) -> str:
    """The message of Lean's `uncaught exception: ...` (what Comparator's `main` throws)."""
    at = stderr.rfind(UNCAUGHT)
    return stderr[at + len(UNCAUGHT):].strip() if at >= 0 else ""


def read_outcome(returncode: int, stdout: str, stderr: str, report_text: str | None,
                 time_s: float) -> ComparatorResult:
    """Comparator's exit status, output and JSON report -> its judgement, or a typed exception
    when the run says nothing about the candidate (a crash, a failure on the trusted
    challenge, output not in the documented form). Fails closed: only a clean exit 0 with the
    success line, and no failure in the report, is acceptance."""
    tail = (stdout + stderr)[-_TAIL_CHARS:]
    if returncode < 0:
        raise ComparatorCrashedError(f"comparator was killed by signal {-returncode}",
                                     returncode=returncode, output_tail=tail)
    report = _parse_report(report_text) if report_text is not None else None
    failures = _report_failures(report) if report is not None else []
    label = f"{STANDIN_CHECKED_BY}: " if STANDIN_CHECKED_BY in stdout else ""
    if returncode == 0:
        if SUCCESS_LINE not in stdout.splitlines():
            raise ComparatorProtocolError(f"comparator exited 0 without {SUCCESS_LINE!r}: {tail[-300:]!r}")
        if failures:
            raise ComparatorProtocolError(f"comparator exited 0 but its report records failures: {failures}")
        axioms = sorted({str(a) for r in (report or {}).get("reports", []) for a in r.get("transitiveAxioms") or []})
        used = f"; axioms: {', '.join(axioms)}" if report is not None else ""
        return ComparatorResult(True, f"{label}statement matches the challenge, axioms permitted, "
                                      f"kernel replay accepted{used}", time_s)
    if failures:
        return ComparatorResult(False, label + "; ".join(failures), time_s)
    message = _uncaught(stderr)
    if SOLUTION_PHASE in stdout.splitlines():
        # The trusted challenge built and exported; what failed is the candidate's (it did not
        # build, could not be exported, or failed a check the report does not itemise).
        phase = stdout[stdout.index(SOLUTION_PHASE):]
        errors = [ln for ln in phase.splitlines() if ln.startswith("error")][:5]
        detail = "; ".join([message or f"comparator exited {returncode}", *errors])
        return ComparatorResult(False, label + detail, time_s)
    raise ComparatorCrashedError(
        f"comparator exited {returncode} before it reached the solution (the trusted challenge "
        f"failed to build or export: our setup, not the candidate): {message or tail[-300:]!r}",
        returncode=returncode, output_tail=tail)


# -- the client --------------------------------------------------------------------------------

def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class Comparator:
    """Runs Comparator on candidates, one fresh Lake project per candidate.

    `command` (argv prefix, the configuration's path is appended) overrides
    `config.comparator_command`, which overrides the installed Comparator found by
    `lean_env.toolchain` (`lake env <comparator>`); `cwd` is the Lake project the runs are made
    in (default `config.project_dir`, else ./lean of the checkout). Raises
    `ComparatorMissingError` at once when no Comparator can be found.
    """

    def __init__(self, config: VerifierConfig, command: list[str] | None = None,
                 cwd: Path | None = None) -> None:
        self.config = config
        self.project_dir = Path(cwd or config.project_dir or PROJECT_DIR).resolve()
        self.env: dict[str, str] = {}
        if command or config.comparator_command:
            self.command = list(command or config.comparator_command or [])
        else:
            self.command, self.env = comparator_command(find_toolchain(project_dir=self.project_dir))
        if not _resolvable(self.command[0]):
            raise ComparatorMissingError(f"cannot run the final judge: {self.command[0]!r} not found")

    async def judge(self, name: str, header: str, formal_statement: str, candidate: str) -> ComparatorResult:
        """Comparator's judgement of `candidate` as a proof of `name : formal_statement`."""
        runs = self.project_dir / RUNS_DIR
        runs.mkdir(parents=True, exist_ok=True)
        run_dir = Path(tempfile.mkdtemp(prefix="judge-", dir=runs))
        try:
            config_path = write_run(run_dir, self.project_dir, name=name, header=header,
                                    formal_statement=formal_statement, candidate=candidate,
                                    permitted_axioms=self.config.allowed_axioms)
            returncode, stdout, stderr, time_s = await self._run([*self.command, str(config_path)], run_dir)
            report = run_dir / REPORT_FILE
            report_text = report.read_text(encoding="utf-8", errors="replace") if report.is_file() else None
            return read_outcome(returncode, stdout, stderr, report_text, time_s)
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)

    async def _run(self, argv: list[str], run_dir: Path) -> tuple[int, str, str, float]:
        """Run Comparator in `run_dir`, in its own process group, under the wall-clock limit.

        Its output goes to files, not pipes: a process that left the group (or outlived it)
        holding a pipe would keep asyncio waiting past the limit; a file holds nobody up.
        """
        limit_s = self.config.comparator_timeout_s
        out_path, err_path = run_dir / STDOUT_FILE, run_dir / STDERR_FILE
        t0 = time.monotonic()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, cwd=run_dir, env={**os.environ, **self.env},
                    stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                    preexec_fn=functools.partial(_limit_address_space, self.config.memory_limit_mb << 20))
            except OSError as exc:
                raise ComparatorMissingError(f"cannot start the final judge `{' '.join(argv)}`: {exc}") from None
            try:
                returncode = await asyncio.wait_for(proc.wait(), timeout=limit_s)
            except TimeoutError:
                raise ComparatorTimeoutError(f"comparator ran past {limit_s:g} s; its process group "
                                             "was killed", limit_s=limit_s) from None
            finally:
                # Always, also after a clean exit: whatever it left behind in its group goes too.
                _kill_group(proc.pid)
                if proc.returncode is None:
                    await proc.wait()
        time_s = time.monotonic() - t0
        return (returncode, out_path.read_text(encoding="utf-8", errors="replace"),
                err_path.read_text(encoding="utf-8", errors="replace"), time_s)


def _resolvable(program: str) -> bool:
    return shutil.which(program) is not None or Path(program).is_file()


def comparator_available(config: VerifierConfig) -> bool:
    """Whether the final judge is installed and usable: the configured command resolves, or
    `lean_env.toolchain` finds Comparator, lean4export and landrun for the pinned Lean."""
    if config.comparator_command:
        return _resolvable(config.comparator_command[0])
    try:
        comparator_command(find_toolchain(project_dir=Path(config.project_dir or PROJECT_DIR)))
    except (LeanEnvError, OSError, ValueError):
        return False
    return True


def final_judge_enabled(config: VerifierConfig) -> bool:
    """`config.final_judge` resolved: 'none' -> False, 'auto' -> whether Comparator is
    available, 'comparator' -> True, or `ComparatorMissingError` when it is not available."""
    if config.final_judge == "none":
        return False
    available = comparator_available(config)
    if config.final_judge == "comparator" and not available:
        raise ComparatorMissingError("verifier.final_judge = 'comparator' but Comparator is not installed "
                                     "or not usable with the pinned Lean; see `prover lean doctor`")
    return available


async def final_judgement(judge: Comparator | None, verdict: Verdict, *, name: str, header: str,
                          formal_statement: str, candidate: str) -> Verdict:
    """`verdict` after the final judge: every Accepted verdict goes through `judge` (when
    there is one) before it counts; other verdicts pass unchanged. Comparator's "no" is
    Rejected(final_judge); its timeout is TimedOut and its failures NotChecked(infrastructure),
    never an acceptance."""
    if judge is None or not isinstance(verdict, Accepted):
        return verdict
    layers = (*verdict.layers, "comparator")
    try:
        result = await judge.judge(name, header, formal_statement, candidate)
    except ReplTimeoutError as exc:
        return TimedOut(checked_by=verdict.checked_by, time_s=verdict.time_s + exc.limit_s,
                        limit_s=exc.limit_s, layers=layers)
    except LeanEnvError as exc:
        return NotChecked(checked_by=verdict.checked_by, time_s=verdict.time_s,
                          cause="infrastructure", detail=f"final judge: {type(exc).__name__}: {exc}",
                          layers=layers)
    if not result.ok:
        return Rejected(checked_by=verdict.checked_by, time_s=verdict.time_s + result.time_s,
                        reason=RejectReason.FINAL_JUDGE, detail=f"Comparator: {result.detail}",
                        messages=verdict.messages, layers=layers)
    return dataclasses.replace(verdict, time_s=verdict.time_s + result.time_s, layers=layers)
