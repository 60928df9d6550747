"""The final judge's client (lean_env.comparator), run through the stand-in of Comparator's
process protocol (lean_env.standin.comparator: a test double, not Lean), and the toolchain's
pins and doctor lines for Comparator, lean4export and landrun. One `lean` test runs the real
Comparator where it is installed."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
import time
import tomllib
from pathlib import Path

import psutil
import pytest
from pydantic import ValidationError

from lean_env import toolchain
from lean_env.comparator import (
    CONFIG_FILE,
    Comparator,
    ComparatorResult,
    challenge_source,
    comparator_available,
    final_judge_enabled,
    read_outcome,
    solution_source,
    write_run,
)
from lean_env.config import STANDARD_AXIOMS, VerifierConfig
from lean_env.errors import (
    ComparatorCrashedError,
    ComparatorMissingError,
    ComparatorProtocolError,
    ComparatorTimeoutError,
    ReplTimeoutError,
)
from lean_env.standin import comparator as standin_comparator
from tests.lean_env.conftest import MINIF2F_HEADER

HEADER = MINIF2F_HEADER
STATEMENT = "theorem add_comm' (a b : ℕ) : a + b = b + a := by\n"
PROOF = STATEMENT + "  omega\n"
CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A Lake project like ours (lakefile, toolchain pin, a prebuilt packages folder)."""
    project = tmp_path / "lean"
    project.mkdir()
    for name in ("lakefile.toml", "lean-toolchain"):
        shutil.copyfile(toolchain.PROJECT_DIR / name, project / name)
    (project / "lake-manifest.json").write_text('{"version": "1.1.0", "packages": []}\n')
    (project / ".lake" / "packages" / "mathlib").mkdir(parents=True)
    return project


def _judge(project: Path, candidate: str, *, statement: str = STATEMENT, timeout_s: float = 60.0,
           command: list[str] | None = None) -> ComparatorResult:
    config = VerifierConfig(comparator_timeout_s=timeout_s)
    judge = Comparator(config, command=command or standin_comparator.command(), cwd=project)
    return asyncio.run(judge.judge("add_comm'", HEADER, statement, candidate))


def _runs_left(project: Path) -> list[str]:
    runs = project / ".lake" / "comparator-runs"
    return sorted(p.name for p in runs.iterdir()) if runs.is_dir() else []


# -- verdicts through the stand-in subprocess ---------------------------------------------------

def test_accepted(project: Path, no_leaked_processes: None) -> None:
    result = _judge(project, PROOF)
    assert result.ok, result
    assert standin_comparator.CHECKED_BY in result.detail, result.detail   # never passes for Lean
    assert "kernel replay accepted" in result.detail and 0 < result.time_s < 60, result
    assert _runs_left(project) == [], _runs_left(project)


def test_whole_file_candidate_keeps_its_own_header(project: Path) -> None:
    result = _judge(project, "import Mathlib\n\nopen Nat\n\n" + PROOF)
    assert result.ok, result


def test_rejected_when_the_statement_differs(project: Path) -> None:
    weakened = "theorem add_comm' (a b : ℕ) (h : a = b) : a + b = b + a := by\n  omega\n"
    result = _judge(project, weakened)
    assert not result.ok, result
    assert "Challenge and solution theorem statement do not match: 'add_comm''" in result.detail, result.detail


def test_rejected_when_the_kernel_replay_fails(project: Path) -> None:
    candidate = STATEMENT.replace(":= by\n", ":= by\n  set_option debug.skipKernelTC true in\n  omega\n")
    result = _judge(project, candidate)
    assert not result.ok, result
    assert "Lean kernel rejected the replay" in result.detail, result.detail


def test_rejected_for_an_illegal_axiom(project: Path) -> None:
    result = _judge(project, STATEMENT + "  sorry\n")
    assert not result.ok, result
    assert "Illegal axiom detected: 'sorryAx'" in result.detail and "sorryAx" in result.detail, result.detail


def test_rejected_when_the_solution_does_not_build(project: Path) -> None:
    result = _judge(project, PROOF + "-- standin-comparator: build\n")
    assert not result.ok, result
    assert "Child exited with 1" in result.detail and "unknown tactic" in result.detail, result.detail


def test_timeout_kills_the_process_group(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         no_leaked_processes: None) -> None:
    pidfile = tmp_path / "pids"
    monkeypatch.setenv(standin_comparator.PIDFILE_ENV, str(pidfile))
    t0 = time.monotonic()
    with pytest.raises(ComparatorTimeoutError) as err:
        _judge(project, PROOF + "-- standin-comparator: hang\n", timeout_s=3.0)
    elapsed = time.monotonic() - t0
    assert isinstance(err.value, ReplTimeoutError) and err.value.limit_s == 3.0, err.value
    assert elapsed < 10.0, elapsed
    pids = [int(p) for p in pidfile.read_text().split()]
    assert len(pids) == 2, pids   # the stand-in and the child it started in its group
    def running() -> list[int]:
        return [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]

    # SIGKILL to the group is sent before the timeout error is raised; on a loaded machine the
    # kernel may take a moment to finish a killed process (CI once saw it 0 s after): allow 5 s.
    deadline = time.monotonic() + 5.0
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    alive = running()
    assert alive == [], f"still running 5 s after the timeout: {alive} of {pids}"
    assert _runs_left(project) == [], _runs_left(project)


def test_crash_raises_the_typed_exception(project: Path) -> None:
    with pytest.raises(ComparatorCrashedError) as err:
        _judge(project, PROOF + "-- standin-comparator: crash\n")
    assert err.value.returncode == -11, err.value.returncode   # SIGSEGV
    assert "Building Challenge" in err.value.output_tail, err.value.output_tail


def test_garbage_raises_the_protocol_error(project: Path) -> None:
    with pytest.raises(ComparatorProtocolError, match="without 'Your solution is okay!'"):
        _judge(project, PROOF + "-- standin-comparator: garbage\n")


def test_failure_on_the_challenge_is_ours_not_the_candidates(project: Path) -> None:
    with pytest.raises(ComparatorCrashedError, match="before it reached the solution") as err:
        _judge(project, PROOF + "-- standin-comparator: challenge\n")
    assert err.value.returncode == 1, err.value.returncode


def test_missing_binary(project: Path) -> None:
    with pytest.raises(ComparatorMissingError, match="/nonexistent/comparator"):
        Comparator(VerifierConfig(), command=["/nonexistent/comparator"], cwd=project)
    assert not comparator_available(VerifierConfig(comparator_command=["/nonexistent/comparator"]))
    assert comparator_available(VerifierConfig(comparator_command=standin_comparator.command()))


# -- what is written ------------------------------------------------------------------------------

def test_files_of_a_run(project: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    config_path = write_run(run, project, name="add_comm'", header=HEADER, formal_statement=STATEMENT,
                            candidate=PROOF, permitted_axioms=STANDARD_AXIOMS)
    challenge = (run / "Challenge.lean").read_text()
    solution = (run / "Solution.lean").read_text()
    assert challenge == HEADER + "theorem add_comm' (a b : ℕ) : a + b = b + a := by\n  sorry\n", challenge
    assert solution == HEADER + PROOF, solution
    # Comparator's README, field for field.
    config = json.loads(config_path.read_text())
    assert config_path == run / CONFIG_FILE and config == {
        "challenge_module": "Challenge", "solution_module": "Solution", "theorem_names": ["add_comm'"],
        "permitted_axioms": ["propext", "Classical.choice", "Quot.sound"], "enable_nanoda": False,
        "json_output_path": "comparator-report.json"}, config
    lakefile = tomllib.loads((run / "lakefile.toml").read_text())
    ours = tomllib.loads((project / "lakefile.toml").read_text())
    assert lakefile["require"] == ours["require"], (lakefile["require"], ours["require"])
    assert [lib["name"] for lib in lakefile["lean_lib"]] == ["Challenge", "Solution"], lakefile
    assert (run / "lean-toolchain").read_text() == (project / "lean-toolchain").read_text()
    assert (run / "lake-manifest.json").read_text() == (project / "lake-manifest.json").read_text()
    packages = run / ".lake" / "packages"
    assert packages.is_symlink() and packages.resolve() == (project / ".lake" / "packages").resolve(), packages


def test_files_the_judge_hands_to_comparator(project: Path, tmp_path: Path) -> None:
    """The same files, seen by the process itself (a wrapper copies its working folder)."""
    capture = tmp_path / "capture"
    wrapper = [sys.executable, "-c",
               f"import shutil, sys; shutil.copytree('.', {str(capture)!r}, symlinks=True); "
               f"sys.path.insert(0, {str(CHECKOUT)!r}); "
               "from lean_env.standin.comparator import main; sys.exit(main())"]
    candidate = "import Mathlib\n\ntheorem add_comm' (a b : ℕ) : a + b = b + a := by\n  omega"
    result = _judge(project, candidate, command=wrapper)
    assert result.ok, result
    files = sorted(p.name for p in capture.iterdir())
    assert files == [".lake", "Challenge.lean", "Solution.lean", CONFIG_FILE, "comparator.stderr.log",
                     "comparator.stdout.log", "lake-manifest.json", "lakefile.toml", "lean-toolchain"], \
        files   # the report comes later
    assert (capture / "Solution.lean").read_text() == candidate + "\n"   # its own header, unchanged
    assert (capture / "Challenge.lean").read_text().endswith(":= by\n  sorry\n")


@pytest.mark.parametrize(("statement", "expected"), [
    ("theorem t : 1 = 1 := by\n", "theorem t : 1 = 1 := by\n  sorry\n"),
    ("theorem t : 1 = 1 :=", "theorem t : 1 = 1 := sorry\n"),
    ("theorem t : 1 = 1", "theorem t : 1 = 1 := sorry\n"),
])
def test_challenge_source(statement: str, expected: str) -> None:
    assert challenge_source("import Mathlib", statement) == "import Mathlib\n" + expected


def test_solution_source_reads_imports_in_code_only() -> None:
    commented = "-- import Foo\n/- import Bar -/\n" + PROOF
    assert solution_source(HEADER, commented) == HEADER + commented
    assert solution_source(HEADER, "import Mathlib\n" + PROOF) == "import Mathlib\n" + PROOF


# -- the documented output of the real tool -------------------------------------------------------

def test_read_outcome_of_the_real_tools_documented_messages() -> None:
    """Lines as Comparator's Main.lean prints them, without a JSON report (older revisions)."""
    stdout = ("Building Challenge\nExporting #[t] from Challenge\nBuilding Solution\n"
              "Exporting #[t] from Solution\n")
    stderr = "uncaught exception: Some targets failed:\n- t: Challenge and solution theorem statement do not match: 't'\n"
    result = read_outcome(1, stdout, stderr, None, 12.5)
    assert not result.ok and "do not match: 't'" in result.detail and result.time_s == 12.5, result
    ok = read_outcome(0, stdout + "Running Lean default kernel on solution.\n"
                      "Lean default kernel accepts the solution\nYour solution is okay!\n", "", None, 3.0)
    assert ok.ok and "stand-in" not in ok.detail, ok
    with pytest.raises(ComparatorProtocolError, match="not JSON"):
        read_outcome(1, stdout, "", "{not json", 1.0)
    with pytest.raises(ComparatorProtocolError, match="records failures"):
        read_outcome(0, "Your solution is okay!\n", "", json.dumps(
            {"reports": [{"target": "t", "failureCategory": "axioms", "failureMessage": "x"}]}), 1.0)


# -- configuration --------------------------------------------------------------------------------

def test_final_judge_field(project: Path) -> None:
    assert VerifierConfig().final_judge == "auto"
    with pytest.raises(ValidationError, match="final_judge"):
        VerifierConfig(final_judge="kernel")  # type: ignore[arg-type]
    assert final_judge_enabled(VerifierConfig(final_judge="none")) is False
    assert final_judge_enabled(VerifierConfig(final_judge="comparator",
                                              comparator_command=standin_comparator.command())) is True
    missing = VerifierConfig(final_judge="comparator", comparator_command=["/nonexistent/comparator"])
    assert final_judge_enabled(missing.model_copy(update={"final_judge": "auto"})) is False
    with pytest.raises(ComparatorMissingError, match="prover lean doctor"):
        final_judge_enabled(missing)


# -- toolchain: pins, doctor, setup ---------------------------------------------------------------

def test_judge_pins_do_not_fit_lean_v4_19(tmp_path: Path) -> None:
    """No Comparator revision is known for our Lean: doctor says so, and it stays optional."""
    reason = toolchain.judge_unsupported_reason(toolchain.read_pins())
    assert reason is not None and "4.19.0" in reason and toolchain.JUDGE_PINS.lean in reason, reason
    report = toolchain.doctor(search_path="", home=tmp_path / "elan")
    judge = [c for c in report.checks if c.name.startswith("final judge")]
    assert [c.name for c in judge] == ["final judge (comparator, lean4export, landrun)"], judge
    assert all(not c.ok and not c.required and "unavailable" in c.found and "final_judge" in c.fix
               for c in judge), judge
    assert not comparator_available(VerifierConfig(project_dir=toolchain.PROJECT_DIR))


def _fake_judge_install(tmp_path: Path) -> tuple[Path, Path]:
    """The layout `setup()` leaves for pins that fit the judge (Lean v4.30.0-rc2), by hand."""
    project = tmp_path / "lean"
    project.mkdir()
    shutil.copyfile(toolchain.PROJECT_DIR / "lakefile.toml", project / "lakefile.toml")
    (project / "lean-toolchain").write_text(f"leanprover/lean4:v{toolchain.JUDGE_PINS.lean}\n")
    home = tmp_path / "elan"
    bin_dir = home / "toolchains" / f"leanprover--lean4---v{toolchain.JUDGE_PINS.lean}" / "bin"
    judge = toolchain.judge_dir(project)
    for path in (bin_dir / "lean", bin_dir / "lake", judge / "comparator/.lake/build/bin/comparator",
                 judge / "lean4export/.lake/build/bin/lean4export", judge / "bin/landrun"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"#!/bin/sh\necho 'Lean (version {toolchain.JUDGE_PINS.lean}, x86_64, Release)'\n")
        path.chmod(0o755)
    return project, home


def test_installed_judge_is_found(tmp_path: Path) -> None:
    project, home = _fake_judge_install(tmp_path)
    report = toolchain.doctor(project_dir=project, search_path="", home=home)
    judge = [c for c in report.checks if c.name.startswith("final judge")]
    assert len(judge) == 3 and all(c.ok for c in judge), judge
    tc = toolchain.find_toolchain(project_dir=project, search_path="", home=home)
    argv, env = toolchain.comparator_command(tc)
    jd = toolchain.judge_dir(project)
    assert argv == [str(tc.lake), "env", str(jd / "comparator/.lake/build/bin/comparator")], argv
    assert env["COMPARATOR_LEAN4EXPORT"] == str(jd / "lean4export/.lake/build/bin/lean4export"), env
    assert env["COMPARATOR_LANDRUN"] == str(jd / "bin/landrun"), env
    assert env["PATH"].split(os.pathsep)[0] == str(tc.lean.parent) if tc.lean else False, env


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_judge_setup_offline_fails_fast_naming_what_it_could_not_fetch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project, home = _fake_judge_install(tmp_path)
    shutil.rmtree(toolchain.judge_dir(project))
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("git", "go"):    # present, never reached: the probe fails first
        (tools / name).write_text("#!/bin/sh\nexit 99\n")
        (tools / name).chmod(0o755)
    url = f"http://127.0.0.1:{_closed_port()}/leanprover/comparator"
    monkeypatch.setattr(toolchain, "COMPARATOR_GIT", url)
    tc = toolchain.find_toolchain(project_dir=project, search_path="", home=home)
    t0 = time.monotonic()
    with pytest.raises(toolchain.SetupError) as err:
        toolchain.install_judge(tc, env={"PATH": str(tools)}, connect_timeout_s=2.0)
    assert time.monotonic() - t0 < 5.0
    assert "could not fetch comparator" in str(err.value) and url in str(err.value), err.value


def test_judge_setup_names_missing_git_and_go(tmp_path: Path) -> None:
    project, home = _fake_judge_install(tmp_path)
    tc = toolchain.find_toolchain(project_dir=project, search_path="", home=home)
    with pytest.raises(toolchain.SetupError, match="needs git and go on PATH"):
        toolchain.install_judge(tc, env={"PATH": str(tmp_path / "empty")})


# -- the real Comparator --------------------------------------------------------------------------

@pytest.mark.lean
def test_real_comparator_on_a_trivial_theorem() -> None:
    config = VerifierConfig(final_judge="comparator", comparator_timeout_s=900)
    if not comparator_available(config):
        pytest.skip("the final judge is not installed (prover lean setup; see prover lean doctor)")
    judge = Comparator(config)
    statement = "theorem judge_smoke (a b : Nat) : a + b = b + a := by\n"
    good = asyncio.run(judge.judge("judge_smoke", "", statement, statement + "  exact Nat.add_comm a b\n"))
    assert good.ok and "stand-in" not in good.detail, good
    weakened = "theorem judge_smoke (a b : Nat) (h : a = b) : a + b = b + a := by\n  omega\n"
    bad = asyncio.run(judge.judge("judge_smoke", "", statement, weakened))
    assert not bad.ok and "judge_smoke" in bad.detail, bad


# -- the final judge inside the Verifier: every accepted verdict passes it before it counts --------

def test_verifier_runs_the_final_judge_on_accepted_candidates(project: Path, make_standin) -> None:
    from lean_env.verdict import Accepted, Rejected, RejectReason
    from lean_env.verifier import Verifier, VerifyRequest

    sim = make_standin({"rules": []})
    config = VerifierConfig(backend="standin", standin_rules=sim.rules_path, workers=1,
                            final_judge="comparator",
                            comparator_command=standin_comparator.command())
    with Verifier(config, command=sim.argv, cwd=project) as verifier:
        ok, refused, static = verifier.verify_batch([
            VerifyRequest("add_comm'", HEADER, STATEMENT, HEADER + PROOF),
            # Passes the static layer and the (stand-in) REPL; Comparator says no.
            VerifyRequest("add_comm'", HEADER, STATEMENT,
                          HEADER + PROOF + "-- standin-comparator: build\n"),
            VerifyRequest("add_comm'", HEADER, STATEMENT, HEADER + STATEMENT + "  sorry\n"),
        ])
    assert isinstance(ok, Accepted) and ok.layers == ("static", "repl", "comparator"), ok
    assert isinstance(refused, Rejected) and refused.reason is RejectReason.FINAL_JUDGE, refused
    assert refused.layers == ("static", "repl", "comparator"), refused
    assert static.layers == ("static",), static      # never reached the judge
    assert _runs_left(project) == [], _runs_left(project)


def test_final_judge_required_but_missing_is_an_error_at_start(make_standin) -> None:
    from lean_env.verifier import Verifier

    sim = make_standin({"rules": []})
    config = VerifierConfig(backend="standin", standin_rules=sim.rules_path,
                            final_judge="comparator")
    with pytest.raises(ComparatorMissingError):
        Verifier(config, command=sim.argv)
    # auto: no Comparator installed here, so no final judge and no error.
    auto = VerifierConfig(backend="standin", standin_rules=sim.rules_path)
    assert Verifier(auto, command=sim.argv).final_judge is None
