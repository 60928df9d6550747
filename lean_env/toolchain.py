"""The pinned Lean toolchain: find it, report on it (`doctor`), install it (`setup`).

Pins (change them together): `lean-toolchain` at the checkout root and in `lean/` name the
Lean release, and `lean/lakefile.toml` requires Mathlib and leanprover-community/repl at the
tags of that same release (`v4.19.0`). The REPL's tag must match Lean's exactly
(REPL_PROTOCOL.md section 1); v4.19.0 is a release that both Mathlib and the REPL tagged, and
its REPL has `proofStatus` in tactic mode (repl PRs #63 and #82), which tactic sessions need.

Layout after `setup()`, in the Lake project `lean/`:
    .lake/packages/mathlib/.lake/build/lib/lean/Mathlib.olean   Mathlib's cache (lake exe cache get)
    .lake/packages/REPL/.lake/build/bin/repl                    the REPL binary (lake build)
and the REPL runs as `lake -d lean env <repl>` so that it sees Mathlib (`repl_command()`).

Everything downloads from GitHub (elan, the toolchain, the Lake dependencies, the Mathlib
cache), so `setup()` probes each host with a short connect timeout first and fails fast with
a message naming what could not be fetched, instead of hanging on a machine without network.
Nothing here runs at import time; `doctor()` never touches the network (it does not run
`lean` through elan's proxy, which may try to download a toolchain).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from lean_env.errors import LeanEnvError

CHECKOUT = Path(__file__).resolve().parents[1]
PROJECT_DIR = CHECKOUT / "lean"
ELAN_INSTALLER_URL = "https://raw.githubusercontent.com/leanprover/elan/master/elan-init.sh"
# Hosts each networked step needs (probed before the step runs).
GITHUB = "https://github.com"
MATHLIB_CACHE = "https://lakecache.blob.core.windows.net"
_VERSION_TIMEOUT_S = 20.0


class ToolchainError(LeanEnvError):
    """The Lean toolchain or the REPL is missing; the message says what to run."""


class SetupError(LeanEnvError):
    """`setup()` could not finish a step; the message names the step and what failed."""


@dataclass(frozen=True)
class Pins:
    """Versions the project is pinned to."""

    toolchain: str      # e.g. leanprover/lean4:v4.19.0 (elan's name)
    mathlib: str        # git rev (a tag) of leanprover-community/mathlib4
    repl: str           # git rev (a tag) of leanprover-community/repl

    @property
    def lean_version(self) -> str:
        return self.toolchain.rsplit(":", 1)[-1].lstrip("v")


def read_pins(project_dir: Path = PROJECT_DIR) -> Pins:
    """The pins in `project_dir`'s lean-toolchain and lakefile.toml."""
    toolchain = (project_dir / "lean-toolchain").read_text().strip()
    with (project_dir / "lakefile.toml").open("rb") as fh:
        lakefile = tomllib.load(fh)
    revs = {req["name"].lower(): req.get("rev", "") for req in lakefile.get("require", [])}
    return Pins(toolchain=toolchain, mathlib=revs.get("mathlib", ""), repl=revs.get("repl", ""))


def elan_home() -> Path:
    return Path(os.environ.get("ELAN_HOME", Path.home() / ".elan"))


def toolchain_dir(pins: Pins, home: Path) -> Path:
    """Where elan keeps an installed toolchain (`leanprover/lean4:v4.19.0` ->
    `toolchains/leanprover--lean4---v4.19.0`)."""
    return home / "toolchains" / pins.toolchain.replace(":", "---").replace("/", "--")


@dataclass(frozen=True)
class Toolchain:
    """What was found on this machine (None: missing)."""

    pins: Pins
    project_dir: Path
    elan: Path | None
    lean: Path | None          # the pinned toolchain's own binary, not elan's proxy
    lake: Path | None
    mathlib_olean: Path | None
    repl: Path | None

    @property
    def complete(self) -> bool:
        return None not in (self.lean, self.lake, self.mathlib_olean, self.repl)


def _which(name: str, search_path: str | None, home: Path) -> Path | None:
    found = shutil.which(name, path=search_path)
    if found:
        return Path(found)
    candidate = home / "bin" / name
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def _first_file(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def find_toolchain(*, project_dir: Path = PROJECT_DIR, search_path: str | None = None,
                   home: Path | None = None) -> Toolchain:
    """Look for elan, the pinned Lean and Lake, Mathlib's built cache and the REPL binary.

    `search_path` replaces $PATH and `home` replaces $ELAN_HOME (~/.elan) for the lookup.
    """
    home = home or elan_home()
    pins = read_pins(project_dir)
    bin_dir = toolchain_dir(pins, home) / "bin"
    lean = _first_file(bin_dir / "lean")
    lake = _first_file(bin_dir / "lake")
    on_path = shutil.which("lean", path=search_path)
    if lean is None and on_path is not None \
            and Path(on_path).resolve().parent != (home / "bin").resolve():
        # A toolchain installed without elan (e.g. a container image): accept it on PATH.
        # elan's own `lean` is a proxy that may download a toolchain when run: never that.
        lean, lake = Path(on_path), _which("lake", search_path, home)
    packages = project_dir / ".lake" / "packages"
    mathlib_build = packages / "mathlib" / ".lake" / "build" / "lib"
    return Toolchain(
        pins=pins,
        project_dir=project_dir,
        elan=_which("elan", search_path, home),
        lean=lean,
        lake=lake,
        mathlib_olean=_first_file(mathlib_build / "lean" / "Mathlib.olean", mathlib_build / "Mathlib.olean"),
        repl=_first_file(*(packages / d / ".lake" / "build" / "bin" / "repl" for d in ("REPL", "repl"))),
    )


def repl_command(toolchain: Toolchain | None = None) -> list[str]:
    """argv that starts one REPL inside the pinned Lake project (for `ReplPool`)."""
    tc = toolchain or find_toolchain()
    if not tc.complete:
        missing = [n for n, v in (("lean", tc.lean), ("lake", tc.lake),
                                  ("Mathlib cache", tc.mathlib_olean), ("REPL binary", tc.repl))
                   if v is None]
        raise ToolchainError(f"no usable Lean REPL: missing {', '.join(missing)}; run "
                             "`prover lean setup` (needs network) or `prover lean doctor`")
    assert tc.lake is not None and tc.repl is not None
    return [str(tc.lake), "-d", str(tc.project_dir), "env", str(tc.repl)]


def checked_by(toolchain: Toolchain) -> str:
    """The label verdicts carry, e.g. `lean 4.19.0 (repl v4.19.0, mathlib v4.19.0)`."""
    p = toolchain.pins
    return f"lean {p.lean_version} (repl {p.repl}, mathlib {p.mathlib})"


# -- doctor ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One line of the doctor's report."""

    name: str
    ok: bool
    found: str          # path and version, or "missing"
    fix: str = ""       # what to do when not ok


@dataclass(frozen=True)
class DoctorReport:
    pins: Pins
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "pins": asdict(self.pins),
                "checks": [asdict(c) for c in self.checks]}


def _version(binary: Path, *args: str) -> str:
    try:
        out = subprocess.run([str(binary), *args], capture_output=True, text=True,
                             timeout=_VERSION_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(version unknown: {exc})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def doctor(*, project_dir: Path = PROJECT_DIR, search_path: str | None = None,
           home: Path | None = None) -> DoctorReport:
    """What is installed, what is missing, and what to run. Never uses the network."""
    tc = find_toolchain(project_dir=project_dir, search_path=search_path, home=home)
    setup_hint = "run `prover lean setup` (downloads from GitHub)"
    lean_version = _version(tc.lean, "--version") if tc.lean else ""
    # `Lean (version 4.19.0, x86_64-unknown-linux-gnu, commit ..., Release)`
    lean_ok = f"version {tc.pins.lean_version}," in lean_version
    checks = [
        Check("elan", tc.elan is not None,
              f"{tc.elan} ({_version(tc.elan, '--version')})" if tc.elan else "missing",
              "" if tc.elan else setup_hint),
        Check(f"lean {tc.pins.toolchain}", lean_ok,
              f"{tc.lean} ({lean_version})" if tc.lean else "missing",
              "" if lean_ok else f"{setup_hint} (elan toolchain install {tc.pins.toolchain})"),
        Check("lake", tc.lake is not None, str(tc.lake) if tc.lake else "missing",
              "" if tc.lake else setup_hint),
        Check(f"Lake project ({project_dir})", (project_dir / "lakefile.toml").is_file(),
              f"mathlib {tc.pins.mathlib}, repl {tc.pins.repl}",
              "" if (project_dir / "lakefile.toml").is_file() else "restore lean/ from the checkout"),
        Check(f"Mathlib {tc.pins.mathlib} cache", tc.mathlib_olean is not None,
              str(tc.mathlib_olean) if tc.mathlib_olean else "missing",
              "" if tc.mathlib_olean else f"{setup_hint} (lake update; lake exe cache get)"),
        Check(f"REPL {tc.pins.repl}", tc.repl is not None, str(tc.repl) if tc.repl else "missing",
              "" if tc.repl else f"{setup_hint} (lake build in .lake/packages/REPL)"),
    ]
    return DoctorReport(tc.pins, tuple(checks))


# -- setup -------------------------------------------------------------------------------------

def _probe(url: str, what: str, timeout_s: float) -> None:
    """Fail fast when `url`'s host cannot be reached (DNS or TCP connect), before a long step."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as exc:
        raise SetupError(f"could not fetch {what} from {url}: cannot reach {host}:{port} "
                         f"({exc or type(exc).__name__}); is this machine offline?") from None


def _run(step: str, argv: list[str], *, cwd: Path | None, timeout_s: float,
         env: dict[str, str] | None = None) -> None:
    try:
        out = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                             timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise SetupError(f"{step}: `{' '.join(argv)}` ran past {timeout_s:.0f} s") from None
    except OSError as exc:
        raise SetupError(f"{step}: cannot run `{argv[0]}`: {exc}") from None
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-5:]
        raise SetupError(f"{step}: `{' '.join(argv)}` exited {out.returncode}: " + " | ".join(tail))


def setup(*, project_dir: Path = PROJECT_DIR, home: Path | None = None,
          search_path: str | None = None, installer_url: str = ELAN_INSTALLER_URL,
          connect_timeout_s: float = 5.0, step_timeout_s: float = 3600.0,
          progress: Callable[[str], None] = lambda _msg: None) -> Toolchain:
    """Install what `doctor()` finds missing: elan, the pinned toolchain, the Lake
    dependencies, Mathlib's cache, the REPL binary. Idempotent: present parts are skipped.

    Each networked step probes its host first (`connect_timeout_s`) and raises `SetupError`
    at once when it is unreachable; `step_timeout_s` bounds each long step (downloads, build).
    """
    home = home or elan_home()
    tc = find_toolchain(project_dir=project_dir, search_path=search_path, home=home)
    env = {**os.environ, "ELAN_HOME": str(home)}
    env["PATH"] = f"{home / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    if tc.elan is None:
        progress(f"installing elan into {home} (from {installer_url})")
        _install_elan(installer_url, home, env, connect_timeout_s, step_timeout_s)
    elan = _which("elan", search_path, home) or home / "bin" / "elan"
    if tc.lean is None:
        progress(f"installing {tc.pins.toolchain}")
        _probe(GITHUB, f"the Lean toolchain {tc.pins.toolchain}", connect_timeout_s)
        _run("toolchain install", [str(elan), "toolchain", "install", tc.pins.toolchain],
             cwd=project_dir, timeout_s=step_timeout_s, env=env)
        tc = find_toolchain(project_dir=project_dir, search_path=search_path, home=home)
    if tc.lake is None:
        raise SetupError(f"the toolchain {tc.pins.toolchain} was installed but has no `lake`")
    lake = str(tc.lake)
    if not (project_dir / ".lake" / "packages" / "mathlib").is_dir():
        progress(f"fetching Mathlib {tc.pins.mathlib} and the REPL {tc.pins.repl} (lake update)")
        _probe(GITHUB, "Mathlib and the REPL (git clone)", connect_timeout_s)
        _run("lake update", [lake, "update"], cwd=project_dir, timeout_s=step_timeout_s, env=env)
    if tc.mathlib_olean is None:
        progress("downloading Mathlib's build cache (lake exe cache get)")
        _probe(MATHLIB_CACHE, "Mathlib's build cache", connect_timeout_s)
        _run("lake exe cache get", [lake, "exe", "cache", "get"], cwd=project_dir,
             timeout_s=step_timeout_s, env=env)
    tc = find_toolchain(project_dir=project_dir, search_path=search_path, home=home)
    if tc.repl is None:
        repl_dir = next((project_dir / ".lake" / "packages" / d for d in ("REPL", "repl")
                         if (project_dir / ".lake" / "packages" / d).is_dir()), None)
        if repl_dir is None:
            raise SetupError("lake update did not fetch the REPL package (.lake/packages/REPL)")
        progress("building the REPL (lake build)")
        _run("build REPL", [lake, "build"], cwd=repl_dir, timeout_s=step_timeout_s, env=env)
        tc = find_toolchain(project_dir=project_dir, search_path=search_path, home=home)
    if not tc.complete:
        raise SetupError("setup finished but `prover lean doctor` still finds parts missing")
    return tc


def _install_elan(url: str, home: Path, env: dict[str, str], connect_timeout_s: float,
                  step_timeout_s: float) -> None:
    import httpx  # only setup() needs HTTP

    _probe(url, "the elan installer", connect_timeout_s)
    try:
        response = httpx.get(url, timeout=httpx.Timeout(60.0, connect=connect_timeout_s),
                             follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise SetupError(f"could not fetch the elan installer from {url}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="elan-init-") as tmp:
        script = Path(tmp) / "elan-init.sh"
        script.write_bytes(response.content)
        _run("install elan", ["sh", str(script), "-y", "--no-modify-path",
                              "--default-toolchain", "none"],
             cwd=None, timeout_s=step_timeout_s, env=env)
    if not (home / "bin" / "elan").is_file():
        raise SetupError(f"the elan installer ran but {home / 'bin' / 'elan'} is missing")
