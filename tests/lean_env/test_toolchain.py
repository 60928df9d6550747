"""Toolchain pins, doctor and setup: what this Lean-less, offline machine must report."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from lean_env.toolchain import (
    PROJECT_DIR,
    SetupError,
    ToolchainError,
    doctor,
    find_toolchain,
    read_pins,
    repl_command,
    setup,
)
from tests.conftest import REPO_ROOT


def test_pins_agree() -> None:
    pins = read_pins()
    root_pin = (REPO_ROOT / "lean-toolchain").read_text().strip()
    assert pins.toolchain == root_pin == "leanprover/lean4:v4.19.0", (pins, root_pin)
    tag = root_pin.rsplit(":", 1)[1]
    assert pins.mathlib == tag and pins.repl == tag, pins   # the REPL must match Lean exactly


def test_doctor_reports_lean_missing(tmp_path: Path) -> None:
    report = doctor(search_path="", home=tmp_path / "elan")
    by_name = {c.name.split()[0]: c for c in report.checks}
    assert not report.ok, report
    for name in ("elan", "lean", "lake", "REPL", "Mathlib"):
        assert not by_name[name].ok and by_name[name].found == "missing", by_name[name]
        assert "prover lean setup" in by_name[name].fix, by_name[name]
    assert by_name["Lake"].ok, by_name["Lake"]
    data = report.to_json()
    assert data["ok"] is False and data["pins"]["repl"] == "v4.19.0", data


def test_repl_command_without_toolchain_says_what_to_do(tmp_path: Path) -> None:
    tc = find_toolchain(search_path="", home=tmp_path)
    with pytest.raises(ToolchainError, match="prover lean setup"):
        repl_command(tc)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_setup_offline_fails_fast_naming_what_it_could_not_fetch(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}/elan-init.sh"
    t0 = time.monotonic()
    with pytest.raises(SetupError) as err:
        setup(home=tmp_path / "elan", search_path="", installer_url=url, connect_timeout_s=2.0)
    elapsed = time.monotonic() - t0
    assert elapsed < 5.0, elapsed
    assert "could not fetch the elan installer" in str(err.value) and url in str(err.value), err.value
    assert not (tmp_path / "elan").exists(), list(tmp_path.iterdir())


def test_installed_layout_is_found(tmp_path: Path) -> None:
    """The layout `setup()` leaves behind, built by hand: doctor is happy, argv is right."""
    project = tmp_path / "lean"
    shutil.copytree(PROJECT_DIR, project, ignore=shutil.ignore_patterns(".lake"))
    home = tmp_path / "elan"
    bin_dir = home / "toolchains" / "leanprover--lean4---v4.19.0" / "bin"
    for path in (home / "bin" / "elan", bin_dir / "lean", bin_dir / "lake",
                 project / ".lake/packages/REPL/.lake/build/bin/repl"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\necho 'Lean (version 4.19.0, x86_64-unknown-linux-gnu, Release)'\n")
        path.chmod(0o755)
    olean = project / ".lake/packages/mathlib/.lake/build/lib/lean/Mathlib.olean"
    olean.parent.mkdir(parents=True)
    olean.write_bytes(b"")
    report = doctor(project_dir=project, search_path="", home=home)
    assert report.ok, report
    assert "version 4.19.0" in report.checks[1].found, report.checks[1]
    tc = find_toolchain(project_dir=project, search_path="", home=home)
    assert repl_command(tc) == [str(bin_dir / "lake"), "-d", str(project), "env",
                                str(project / ".lake/packages/REPL/.lake/build/bin/repl")]


def test_lean_of_another_version_on_path_is_not_ok(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("lean", "lake"):
        (bin_dir / name).write_text("#!/bin/sh\necho 'Lean (version 4.9.0, x86_64-unknown-linux-gnu, Release)'\n")
        (bin_dir / name).chmod(0o755)
    report = doctor(search_path=str(bin_dir), home=tmp_path / "elan")
    lean = next(c for c in report.checks if c.name.startswith("lean"))
    assert not lean.ok and "4.9.0" in lean.found and "v4.19.0" in lean.fix, lean
