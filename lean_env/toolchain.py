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

The final judge (issue 8; `lean_env.comparator`) is leanprover/comparator with its two helpers,
installed under `lean/.lake/judge/` when its pins (`JUDGE_PINS`) fit the pinned Lean:
    .lake/judge/comparator/.lake/build/bin/comparator     lake build comparator
    .lake/judge/lean4export/.lake/build/bin/lean4export   lake build lean4export (tag = Lean's)
    .lake/judge/bin/landrun                               go install (Landlock sandbox)

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
GO_PROXY = "https://proxy.golang.org"
COMPARATOR_GIT = "https://github.com/leanprover/comparator"
LEAN4EXPORT_GIT = "https://github.com/leanprover/lean4export"
LANDRUN_MODULE = "github.com/zouuup/landrun/cmd/landrun"
_VERSION_TIMEOUT_S = 20.0


class ToolchainError(LeanEnvError):
    """The Lean toolchain or the REPL is missing; the message says what to run."""


class SetupError(LeanEnvError):
    """`setup()` could not finish a step; the message names the step and what failed."""


@dataclass(frozen=True)
class JudgePins:
    """Revisions of the final judge, and the one Lean release they are known to work with.

    Comparator and lean4export are Lean programs that read the project's .olean files, so they
    must be built by the project's own Lean (a mismatch fails with "incompatible header");
    lean4export tags every Lean release, Comparator does not (it is pinned by commit).
    """

    lean: str           # the Lean version these revisions are known to work with
    comparator: str     # commit of leanprover/comparator
    lean4export: str    # git rev of leanprover/lean4export (the tag of `lean`)
    landrun: str        # commit of Zouuup/landrun (Go; `go install ...@commit`)


# Why these revisions and not ones for our Lean v4.19.0: no revision of Comparator targets
# v4.19.0. Comparator reads lean4export's NDJSON export (Export.Parse, from lean4export PR #10,
# merged 2026-01), which Lean releases of 2025 such as v4.19.0 have no exporter for, and the
# toolchain bumps in Comparator's history run from v4.30.0-rc1 up (PRs #27 ... #91). The
# oldest combination we found documented as working is leanprover/lean-eval's CI
# (.github/workflows/ci.yml, pins dated 2026-05-04): comparator 71b52ec2 with lean4export
# 12581a6b (= tag v4.30.0-rc2) and landrun 5ed4a3db, for Lean v4.30.0-rc2. So `setup()` installs
# the judge only when the Lean pin is `lean` below, and `doctor()` says why it is absent
# otherwise; moving the Lean, Mathlib and REPL pins to v4.30.0-rc2 (together) enables it.
JUDGE_PINS = JudgePins(
    lean="4.30.0-rc2",
    comparator="71b52ec29e06d4b7d882726553b1ceb99a2499e0",
    lean4export="v4.30.0-rc2",
    landrun="5ed4a3db3a4ad930d577215c6b9abaa19df7f99f",
)


def judge_unsupported_reason(pins: Pins, judge: JudgePins = JUDGE_PINS) -> str | None:
    """None when the judge's pins fit the pinned Lean; otherwise why they do not."""
    if pins.lean_version == judge.lean:
        return None
    return (f"no Comparator revision is known to work with Lean {pins.lean_version}: the pinned "
            f"judge (comparator {judge.comparator[:8]}, lean4export {judge.lean4export}) is for "
            f"Lean {judge.lean} (see JUDGE_PINS in lean_env/toolchain.py)")


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
    comparator: Path | None = None     # the final judge and its two helpers
    lean4export: Path | None = None
    landrun: Path | None = None

    @property
    def complete(self) -> bool:
        return None not in (self.lean, self.lake, self.mathlib_olean, self.repl)

    @property
    def judge_complete(self) -> bool:
        return None not in (self.lake, self.lean, self.comparator, self.lean4export, self.landrun)


def _which(name: str, search_path: str | None, home: Path) -> Path | None:
    found = shutil.which(name, path=search_path)
    if found:
        return Path(found)
    candidate = home / "bin" / name
    return candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None


def _first_file(*paths: Path) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def judge_dir(project_dir: Path = PROJECT_DIR) -> Path:
    """Where `setup()` installs Comparator, lean4export and landrun."""
    return project_dir / ".lake" / "judge"


def find_toolchain(*, project_dir: Path = PROJECT_DIR, search_path: str | None = None,
                   home: Path | None = None) -> Toolchain:
    """Look for elan, the pinned Lean and Lake, Mathlib's built cache, the REPL binary, and the
    final judge (installed under `judge_dir()`, else on PATH as Comparator's README has it).

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
    judge = judge_dir(project_dir)
    mathlib_build = packages / "mathlib" / ".lake" / "build" / "lib"
    return Toolchain(
        pins=pins,
        project_dir=project_dir,
        elan=_which("elan", search_path, home),
        lean=lean,
        lake=lake,
        mathlib_olean=_first_file(mathlib_build / "lean" / "Mathlib.olean", mathlib_build / "Mathlib.olean"),
        repl=_first_file(*(packages / d / ".lake" / "build" / "bin" / "repl" for d in ("REPL", "repl"))),
        comparator=_installed_or_on_path(judge / "comparator" / ".lake" / "build" / "bin" / "comparator",
                                         search_path),
        lean4export=_installed_or_on_path(judge / "lean4export" / ".lake" / "build" / "bin" / "lean4export",
                                          search_path),
        landrun=_installed_or_on_path(judge / "bin" / "landrun", search_path),
    )


def _installed_or_on_path(installed: Path, search_path: str | None) -> Path | None:
    if installed.is_file() and os.access(installed, os.X_OK):
        return installed
    found = shutil.which(installed.name, path=search_path)
    return Path(found) if found else None


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


def comparator_command(toolchain: Toolchain | None = None) -> tuple[list[str], dict[str, str]]:
    """argv prefix and extra environment that run the installed Comparator (for
    `lean_env.comparator`): `lake env <comparator>`, with the helpers named the way Comparator's
    README documents (COMPARATOR_LEAN4EXPORT, COMPARATOR_LANDRUN) and the pinned Lean's bin
    first on PATH (Comparator runs `lean --print-prefix` and `lake build` from PATH)."""
    from lean_env.errors import ComparatorMissingError

    tc = toolchain or find_toolchain()
    reason = judge_unsupported_reason(tc.pins)
    if reason is not None:
        raise ComparatorMissingError(f"the final judge is unavailable: {reason}")
    if not tc.judge_complete:
        missing = [n for n, v in (("lean", tc.lean), ("lake", tc.lake), ("comparator", tc.comparator),
                                  ("lean4export", tc.lean4export), ("landrun", tc.landrun)) if v is None]
        raise ComparatorMissingError(f"the final judge is not installed: missing {', '.join(missing)}; "
                                     "run `prover lean setup` (needs network) or `prover lean doctor`")
    assert tc.lake and tc.lean and tc.comparator and tc.lean4export and tc.landrun
    env = {"COMPARATOR_LEAN4EXPORT": str(tc.lean4export), "COMPARATOR_LANDRUN": str(tc.landrun),
           "PATH": f"{tc.lean.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return [str(tc.lake), "env", str(tc.comparator)], env


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
    required: bool = True   # False: reported, but `DoctorReport.ok` does not depend on it


@dataclass(frozen=True)
class DoctorReport:
    pins: Pins
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

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
        *_judge_checks(tc, setup_hint),
    ]
    return DoctorReport(tc.pins, tuple(checks))


def _judge_checks(tc: Toolchain, setup_hint: str) -> list[Check]:
    """The final judge's three parts. Optional (`required=False`): without them the verifier
    runs with `final_judge = "auto"` as 'none', and only `final_judge = "comparator"` fails."""
    reason = judge_unsupported_reason(tc.pins)
    parts = (("comparator", tc.comparator, f"{JUDGE_PINS.comparator[:8]} (leanprover/comparator)"),
             ("lean4export", tc.lean4export, f"{JUDGE_PINS.lean4export} (leanprover/lean4export)"),
             ("landrun", tc.landrun, f"{JUDGE_PINS.landrun[:8]} (Zouuup/landrun)"))
    if reason is not None:   # one line: the three parts share the reason
        return [Check("final judge (comparator, lean4export, landrun)", False,
                      f"unavailable: {reason}",
                      f"move the Lean, Mathlib and REPL pins to v{JUDGE_PINS.lean} together, or "
                      "set verifier.final_judge = \"none\"", required=False)]
    checks = []
    for name, path, pin in parts:
        checks.append(Check(f"final judge: {name} {pin}", path is not None,
                            str(path) if path else "missing",
                            "" if path else f"{setup_hint} (installs the final judge)",
                            required=False))
    return checks


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
          final_judge: bool = True,
          progress: Callable[[str], None] = lambda _msg: None) -> Toolchain:
    """Install what `doctor()` finds missing: elan, the pinned toolchain, the Lake
    dependencies, Mathlib's cache, the REPL binary, and (`final_judge`) Comparator with
    lean4export and landrun where `JUDGE_PINS` fit the pinned Lean (otherwise it says why it
    skips them). Idempotent: present parts are skipped.

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
    if final_judge:
        reason = judge_unsupported_reason(tc.pins)
        if reason is not None:
            progress(f"final judge skipped: {reason}")
        elif not tc.judge_complete:
            install_judge(tc, env=env, connect_timeout_s=connect_timeout_s,
                          step_timeout_s=step_timeout_s, progress=progress)
            tc = find_toolchain(project_dir=project_dir, search_path=search_path, home=home)
            if not tc.judge_complete:
                raise SetupError("the final judge was installed but `prover lean doctor` still "
                                 "finds parts of it missing")
    return tc


def install_judge(tc: Toolchain, *, env: dict[str, str], connect_timeout_s: float = 5.0,
                  step_timeout_s: float = 3600.0, judge: JudgePins = JUDGE_PINS,
                  progress: Callable[[str], None] = lambda _msg: None) -> None:
    """Clone and build Comparator and lean4export with the project's Lean, and `go install`
    landrun, at `judge`'s pins, into `judge_dir()`. Needs git and go; each download probes its
    host first and fails fast, naming what it could not fetch."""
    root = judge_dir(tc.project_dir)
    root.mkdir(parents=True, exist_ok=True)
    tools = {name: shutil.which(name, path=env.get("PATH")) for name in ("git", "go")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        raise SetupError(f"installing the final judge needs {' and '.join(missing)} on PATH "
                         "(git clones Comparator and lean4export; go builds landrun)")
    git, go = str(tools["git"]), str(tools["go"])
    lake = str(tc.lake)
    for name, url, rev, built in (
            ("comparator", COMPARATOR_GIT, judge.comparator, tc.comparator),
            ("lean4export", LEAN4EXPORT_GIT, judge.lean4export, tc.lean4export)):
        if built is not None:
            continue
        checkout = root / name
        if not (checkout / ".git").is_dir():
            progress(f"fetching {name} {rev} ({url})")
            _probe(url, f"{name} (git clone {url})", connect_timeout_s)
            _run(f"clone {name}", [git, "clone", "--quiet", url, str(checkout)], cwd=None,
                 timeout_s=step_timeout_s, env=env)
        _run(f"checkout {name}", [git, "checkout", "--quiet", "--force", rev], cwd=checkout,
             timeout_s=step_timeout_s, env=env)
        # Built by the project's own Lean: both read the project's .olean files.
        (checkout / "lean-toolchain").write_text(tc.pins.toolchain + "\n")
        progress(f"building {name} (lake build {name})")
        _run(f"build {name}", [lake, "build", name], cwd=checkout, timeout_s=step_timeout_s, env=env)
    if tc.landrun is None:
        progress(f"building landrun {judge.landrun[:8]} (go install)")
        _probe(GO_PROXY, f"landrun ({LANDRUN_MODULE}@{judge.landrun})", connect_timeout_s)
        _run("install landrun", [go, "install", f"{LANDRUN_MODULE}@{judge.landrun}"], cwd=None,
             timeout_s=step_timeout_s, env={**env, "GOBIN": str(root / "bin")})


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
