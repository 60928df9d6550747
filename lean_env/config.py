"""Configuration of the verifier: which backend, how many REPLs, and the limits that keep
Lean from eating the machine (REPL_PROTOCOL.md, "Known failure modes").

Every field is documented with its unit and where its default comes from. `prover.config`
composes this model into the run configuration; lean_env reads only this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

STANDARD_AXIOMS: tuple[str, ...] = ("propext", "Classical.choice", "Quot.sound")


# Longest wall-clock limit accepted, seconds (a day): beyond it a "limit" is a mistake, and
# inf or 1e308 would overflow the selectors' millisecond arithmetic.
MAX_TIMEOUT_S = 86400.0


def _check_http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected http://HOST[:PORT] or https://..., got {url!r}")
    return url


class VerifierConfig(BaseModel):
    """How candidate proofs are checked."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["repl", "standin", "kimina", "dojo", "remote"] = Field(
        "repl",
        description="Which Lean backend checks proofs: 'repl' (leanprover-community/repl processes "
        "we manage), 'standin' (the test double; its verdicts are not Lean's), 'kimina' (a running "
        "kimina-lean-server), 'dojo' (LeanDojo, tactic mode on traced repos).",
    )
    repl_command: list[str] | None = Field(
        None,
        description="Command that starts one REPL process. Default: found by `prover lean doctor` "
        "(`lake env <repl>/.lake/build/bin/repl` inside the pinned Lake project).",
    )
    project_dir: Path | None = Field(
        None, description="Lake project (with Mathlib) the REPL runs in. Default: ./lean of the checkout."
    )
    workers: int = Field(
        4, ge=1, description="REPL processes in the pool (one core each, ~6.5 GB RSS each with Mathlib)."
    )
    timeout_s: float = Field(
        60.0, gt=0, le=MAX_TIMEOUT_S,
        description="Wall-clock limit per candidate, seconds. 60 s follows DeepSeek-Prover-V1.5's "
        "verifier; on expiry the REPL process group is killed and the verdict is TimedOut.",
    )
    header_timeout_s: float = Field(
        600.0, gt=0, le=MAX_TIMEOUT_S, description="Wall-clock limit for importing a header (Mathlib import: seconds to minutes), seconds."
    )
    memory_limit_mb: int = Field(
        16384, ge=256,
        description="RLIMIT_AS per REPL process, MiB. 16 GiB: 8 GiB is reported too small for a "
        "Mathlib REPL, 12-16 GiB works (REPL_PROTOCOL.md).",
    )
    tactic_timeout_s: float = Field(
        10.0, gt=0, le=MAX_TIMEOUT_S,
        description="Wall-clock limit per tactic in tactic mode (TacticSession.run), seconds. On "
        "expiry the REPL process is killed and the session ends with ReplTimeoutError.",
    )
    max_uses: int = Field(
        200, ge=1, description="Recycle a REPL after this many commands (memory grows with every env kept)."
    )
    max_rss_mb: int = Field(
        12288, ge=256, description="Recycle a REPL whose resident memory exceeds this, MiB."
    )
    max_queue: int = Field(
        4096, ge=0,
        description="Requests that may wait for a free REPL at once; one more raises "
        "PoolSaturatedError at once (back-pressure, like kimina-lean-server's HTTP 429). "
        "`Verifier.verify_batch` feeds the pool at its own pace and never hits it.",
    )
    key_by_imports: bool = Field(
        True,
        description="Key the pool's REPLs by the header's import lines only; its set_option/open "
        "lines travel with each command (kimina-lean-server's way), so problems whose headers "
        "differ only in those share REPLs. The acceptance checks still see the whole header. "
        "Headers holding other commands are keyed whole. False: key by the whole header.",
    )
    gc_commands: bool = Field(
        True,
        description="Send each candidate with `\"gc\": true`, so the REPL drops the environment "
        "the candidate created (kimina-lean-server's way): its memory stays flat between "
        "recycles. REPL builds without the option ignore it (and grow, as before).",
    )
    retries: int = Field(
        2, ge=0, description="Retries of a candidate after an infrastructure failure (crash, garbage) before NotChecked."
    )
    allowed_axioms: tuple[str, ...] = Field(
        STANDARD_AXIOMS,
        description="Axioms a proof may depend on (`#print axioms`). Default: Lean's three standard ones.",
    )
    standin_rules: Path | None = Field(
        None,
        description="Rule table of the stand-in REPL (backend 'standin'); see "
        "lean_env.standin.rules for its format. Its verdicts are a test double's, not Lean's.",
    )
    kimina_url: str = Field(
        "http://127.0.0.1:8000", description="Base URL of a running kimina-lean-server (backend 'kimina')."
    )

    # remote backend (servers started with `prover lean serve`; lean_env/backends/remote.py)
    remote_urls: list[str] = Field(
        default_factory=list,
        description="Base URLs of `prover lean serve` servers (backend 'remote'), e.g. "
        "['http://10.0.0.5:8000', 'http://10.0.0.6:8000']. Each batch chunk goes to the server "
        "with the fewest snippets in flight; a server that fails is set aside and the chunk resent.",
    )
    remote_api_key: str | None = Field(
        None, description="API key the servers require (`prover lean serve --api-key`); sent as "
        "`Authorization: Bearer KEY`. Default: none (servers bound to loopback).",
    )
    remote_batch_size: int = Field(
        8, ge=1, le=1024,
        description="Candidates per HTTP request to a server. 8 is kimina-ast-client's default "
        "batch; larger batches cost less HTTP per proof but resend more when a server dies.",
    )
    remote_retries: int = Field(
        3, ge=0, description="Resends of a chunk to another server after a connection failure, "
        "HTTP 5xx or 503 before its candidates are NotChecked (or, all saturated, an error).",
    )

    # final judge (leanprover/comparator; lean_env/comparator.py)
    final_judge: Literal["auto", "none", "comparator"] = Field(
        "auto",
        description="Who judges a candidate the other layers accepted: 'comparator' "
        "(leanprover/comparator: Lean compares the proved constant's type with the challenge's "
        "and replays every declaration of the solution in the kernel; required, so a missing "
        "install is an error), 'none' (the static and REPL layers only), 'auto' (comparator "
        "when `prover lean doctor` finds it installed and usable with the pinned Lean, else none).",
    )
    comparator_command: list[str] | None = Field(
        None,
        description="argv prefix that runs Comparator; the path of its JSON configuration is "
        "appended and it runs in a fresh Lake project holding Challenge.lean and Solution.lean. "
        "Default: `lake env <comparator>` as installed by `prover lean setup` (with lean4export "
        "and landrun passed in COMPARATOR_LEAN4EXPORT / COMPARATOR_LANDRUN, as Comparator's "
        "README documents).",
    )
    comparator_timeout_s: float = Field(
        600.0, gt=0, le=MAX_TIMEOUT_S,
        description="Wall-clock limit of one Comparator run, seconds; on expiry its process group "
        "is killed (ComparatorTimeoutError). A run builds the challenge and the solution (each "
        "imports the header, e.g. Mathlib), exports both with lean4export and replays the "
        "solution's dependency closure in the kernel. 600 s is about 3x the longest runs "
        "reported publicly for Mathlib-sized solutions (82-191 s); not measured here (no Lean).",
    )

    @field_validator("kimina_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        return _check_http_url(url)

    @field_validator("remote_urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        return [_check_http_url(u) for u in urls]
