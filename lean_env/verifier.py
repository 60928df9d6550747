"""The verifier: the one entry point callers use to check candidate proofs.

`Verifier.verify(name, header, formal_statement, candidate) -> Verdict` runs the whole
pipeline of REPL_PROTOCOL.md section 3 for one candidate, so no caller can skip a rule:

  1. `acceptance.precheck`: static rules (header, theorem and statement, forbidden cheats);
     a Rejected/NotChecked verdict there is final and Lean never runs;
  2. `acceptance.lean_command`: the candidate without its header, then `#print axioms`,
     run on a warm REPL of the header's pool (`lean_env.pool`) under `config.timeout_s`;
  3. `acceptance.judge`: Lean's reply -> Accepted or Rejected;
  4. the final judge (`lean_env.comparator`, when installed or required by
     `config.final_judge`): every Accepted verdict must also pass Comparator.

Infrastructure outcomes become verdicts here, once: a wall-clock timeout is TimedOut; a
crash, garbage or failed start that survived the pool's retries is
NotChecked(cause="infrastructure"). Pool saturation (PoolSaturatedError) is back-pressure,
not a verdict, and propagates. `verify_batch` returns exactly one verdict per request, in
request order. The design follows DeepSeek-Prover's verifier (whole-proof checking with
`#print axioms`) on kimina-lean-server's header-keyed REPL pool.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from lean_env import acceptance, standin, toolchain
from lean_env.comparator import Comparator, final_judge_enabled, final_judgement
from lean_env.config import VerifierConfig
from lean_env.errors import (
    LeanEnvError,
    PoolSaturatedError,
    ReplStartError,
    ReplTimeoutError,
    VerifierConfigError,
)
from lean_env.pool import ReplPool, gather_bounded
from lean_env.standin.rules import RuleTableError, load_rules
from lean_env.verdict import NotChecked, TimedOut, Verdict


@dataclass(frozen=True)
class VerifyRequest:
    """One candidate proof of problem `name` (its header and formal statement)."""

    name: str
    header: str
    formal_statement: str
    candidate: str


def _resolve_command(config: VerifierConfig) -> tuple[list[str], str]:
    """argv of one REPL and the default `checked_by` label, from the config's backend."""
    if config.backend == "standin":
        if config.standin_rules is None:
            raise ReplStartError("backend 'standin' needs verifier.standin_rules (a rule table)")
        return standin.command(config.standin_rules), standin.CHECKED_BY
    if config.backend != "repl":
        raise ReplStartError(f"backend {config.backend!r} is not served by the REPL pool; use "
                             "lean_env.backends.kimina.KiminaVerifier (kimina) or "
                             "lean_env.backends.dojo (dojo)")
    if config.repl_command:
        return list(config.repl_command), f"Lean REPL ({' '.join(config.repl_command)})"
    # The pinned toolchain of `prover lean setup`; ToolchainError says what is missing.
    found = toolchain.find_toolchain(project_dir=config.project_dir or toolchain.PROJECT_DIR)
    return toolchain.repl_command(found), toolchain.checked_by(found)


class Verifier:
    """Checks candidates against Lean through a pool of warm REPLs; use it in a `with` block.

    `command` overrides the REPL argv the config implies (`config.repl_command`, else the
    pinned toolchain's REPL; the stand-in's for backend 'standin'); `cwd` defaults to
    `config.project_dir`; `checked_by` labels every verdict (default: the Lean and REPL
    versions, the REPL command, or the stand-in's label).
    """

    def __init__(self, config: VerifierConfig, *, command: list[str] | None = None,
                 cwd: Path | None = None, checked_by: str | None = None) -> None:
        self.config = config
        if command is None:
            command, default_label = _resolve_command(config)
        elif standin.is_standin(command):
            default_label = standin.CHECKED_BY
        else:
            default_label = f"Lean REPL ({' '.join(command)})"
        self.checked_by = checked_by or default_label
        self.pool = ReplPool(config, command=command, cwd=cwd or config.project_dir,
                             checked_by=self.checked_by)
        # The final judge (Comparator), when installed or required: see lean_env.comparator.
        self.final_judge = Comparator(config, cwd=cwd) if final_judge_enabled(config) else None

    async def __aenter__(self) -> Verifier:
        await self.pool.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.pool.__aexit__(exc_type, exc, tb)

    def __enter__(self) -> Verifier:
        self.pool.__enter__()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.pool.__exit__(exc_type, exc, tb)

    async def verify(self, name: str, header: str, formal_statement: str,
                     candidate: str) -> Verdict:
        """The verdict on one candidate (see the module docstring for the pipeline)."""
        rejection = acceptance.precheck(name, header, formal_statement, candidate,
                                        checked_by=self.checked_by)
        if rejection is not None:
            return rejection
        command = acceptance.lean_command(name, header, candidate, formal_statement)
        start = time.perf_counter()
        try:
            response, lean_s = await self.pool.run_command_timed(
                header, command.text, timeout_s=self.config.timeout_s,
                **({"gc": True} if self.config.gc_commands else {}))
        except ReplTimeoutError as exc:
            return TimedOut(checked_by=self.checked_by, time_s=exc.limit_s, limit_s=exc.limit_s,
                            layers=("static", "repl"))
        except PoolSaturatedError:
            raise
        except LeanEnvError as exc:
            return NotChecked(checked_by=self.checked_by, time_s=time.perf_counter() - start,
                              cause="infrastructure", detail=f"{type(exc).__name__}: {exc}",
                              layers=("static", "repl"))
        verdict = acceptance.judge(name, response, command=command,
                                   allowed_axioms=self.config.allowed_axioms,
                                   checked_by=self.checked_by, time_s=lean_s)
        return await final_judgement(self.final_judge, verdict, name=name, header=header,
                                     formal_statement=formal_statement, candidate=candidate)

    async def verify_many(self, requests: Sequence[VerifyRequest], *,
                          progress: Callable[[int, int], None] | None = None) -> list[Verdict]:
        """Verdicts for `requests`, in order; at most 2 x workers in flight at a time.

        `progress(done, total)` is called after each verdict, on the pool's event loop.
        """
        done = 0

        async def one(request: VerifyRequest) -> Verdict:
            nonlocal done
            verdict = await self.verify(request.name, request.header, request.formal_statement,
                                        request.candidate)
            done += 1
            if progress is not None:
                progress(done, len(requests))
            return verdict

        return await gather_bounded([functools.partial(one, r) for r in requests],
                                    limit=2 * self.config.workers)

    def verify_batch(self, requests: Sequence[VerifyRequest], *,
                     progress: Callable[[int, int], None] | None = None) -> list[Verdict]:
        """Synchronous `verify_many`. Outside a `with` block it opens (and closes) the pool."""
        if not self.pool.is_open:
            with self:
                return self.verify_batch(requests, progress=progress)
        return self.pool.run_sync(self.verify_many(requests, progress=progress))

    async def prewarm(self, headers: Sequence[str]) -> int:
        """Start REPLs for these problem headers now (`ReplPool.prewarm`); how many started."""
        return await self.pool.prewarm(headers)


def make_verifier(config: VerifierConfig) -> Any:
    """The verifier `config` asks for, behind one calling convention (`verify`, `verify_many`,
    `verify_batch`, `with`/`async with`): the REPL pool for 'repl' (the pinned toolchain
    unless `repl_command` is set) and 'standin' (the test double, `standin_rules` required),
    kimina-lean-server's client for 'kimina', a fleet of `prover lean serve` servers for 'remote'.

    Raises `VerifierConfigError` for a configuration that names no usable backend (a user's
    mistake) and `ToolchainError` when the pinned Lean toolchain is missing (nothing can check).
    """
    if config.backend == "standin":
        if config.standin_rules is None:
            raise VerifierConfigError("verifier.backend 'standin' is the test double: name its "
                                      "rule table in verifier.standin_rules (--standin)")
        if not Path(config.standin_rules).is_file():
            raise VerifierConfigError(f"verifier.standin_rules: {config.standin_rules}: no such "
                                      "rule table")
        try:   # a malformed table is the user's mistake, not a REPL that crashed on every proof
            load_rules(Path(config.standin_rules))
        except RuleTableError as exc:
            raise VerifierConfigError(f"verifier.standin_rules: {exc}") from None
        return Verifier(config)
    if config.backend == "kimina":
        from lean_env.backends.kimina import KiminaVerifier  # imports this module

        return KiminaVerifier(config)
    if config.backend == "remote":
        if not config.remote_urls:
            raise VerifierConfigError("verifier.backend 'remote' needs verifier.remote_urls "
                                      "(servers started with `prover lean serve`)")
        from lean_env.backends.remote import RemoteVerifier  # imports this module

        return RemoteVerifier(config)
    if config.backend == "dojo":
        raise VerifierConfigError("verifier.backend 'dojo' serves tactic sessions only (LeanDojo); "
                                  "checking whole proofs needs backend 'repl' or 'kimina'")
    if config.repl_command:
        return Verifier(config)
    found = toolchain.find_toolchain(project_dir=config.project_dir or toolchain.PROJECT_DIR)
    command = toolchain.repl_command(found)   # ToolchainError names what is missing
    config = config.model_copy(update={"repl_command": command,
                                       "project_dir": found.project_dir})
    return Verifier(config, checked_by=toolchain.checked_by(found))
