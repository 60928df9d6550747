"""LeanDojo as a tactic backend: `TacticSession`'s interface over `lean_dojo.Dojo`.

    with DojoTacticSession(theorem, statement, timeout_s=600) as (session, state0):
        result = session.run(state0, "intro x")  # TacticState | ProofFinished | TacticError

LeanDojo (lean-dojo 4.20.0) runs one fresh Lean process per theorem inside a traced repo
(tracing Mathlib needs GitHub and about an hour on 32 CPUs). Its values map onto ours:

    lean_dojo.TacticState   -> TacticState (goals split as LeanDojo's `parse_goals` does)
    lean_dojo.ProofFinished -> ProofFinished (LeanDojo kernel-checks the proof and refuses
                               sorry; the tactics are prechecked by us for forbidden constructs).
                               Its `proof` is the whole theorem, as TacticSession gives it:
                               the theorem's statement (`statement`, the declaration up to
                               `:=`), `:= by`, and the tactics of the path, indented
    lean_dojo.LeanError     -> TacticError
    lean_dojo.ProofGivenUp  -> TacticError (the tactic closed the goal with sorry)

and its exceptions onto ours (`lean_env.errors`): DojoCrashError -> ReplCrashedError (keeping
`is_out_of_memory`), DojoTacticTimeoutError / DojoHardTimeoutError (older releases) ->
ReplTimeoutError, DojoInitError -> ReplStartError. Unlike the REPL path there is no
`#print axioms` here: verdicts say so in `checked_by`.

`lean_dojo` is imported only when a session starts (it pulls Ray and logs at import time).
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from lean_env.acceptance import forbidden_construct
from lean_env.errors import LeanEnvError, ReplCrashedError, ReplStartError, ReplTimeoutError
from lean_env.tactic import ProofFinished, TacticError, TacticResult, TacticState
from lean_env.verdict import Accepted

CHECKED_BY = "LeanDojo (tactic mode; proof checked by LeanDojo, no #print axioms)"


def map_result(result: Any, *, sid: int, tactics: tuple[str, ...], elapsed_s: float,
               statement: str) -> TacticResult:
    """A `lean_dojo` tactic result -> our value. `sid` is the id the new state gets,
    `tactics` the path from the start including this tactic, `statement` the theorem's
    declaration up to its `:=` (to assemble the whole theorem of a finished proof)."""
    import lean_dojo

    if isinstance(result, lean_dojo.TacticState):
        return TacticState(sid, tuple(g for g in result.pp.split("\n\n") if "⊢" in g))
    if isinstance(result, lean_dojo.ProofFinished):
        body = "\n".join("  " + line for t in tactics for line in t.splitlines())
        return ProofFinished(sid, f"{statement.rstrip()} := by\n{body}\n", tactics,
                             Accepted(checked_by=CHECKED_BY, time_s=elapsed_s,
                                      layers=("static", "lean_dojo")))
    if isinstance(result, lean_dojo.LeanError):
        return TacticError(result.error)
    if isinstance(result, lean_dojo.ProofGivenUp):
        return TacticError("proof given up: the tactic leaves a sorry")
    raise TypeError(f"not a lean_dojo tactic result: {result!r}")


def map_exception(exc: BaseException, *, timeout_s: float) -> LeanEnvError | None:
    """A `lean_dojo` exception -> ours (None: not one of LeanDojo's)."""
    from lean_dojo.interaction import dojo as dojo_module

    if isinstance(exc, dojo_module.DojoCrashError):
        return ReplCrashedError(f"LeanDojo's Lean process crashed: {exc}", returncode=None,
                                is_out_of_memory=exc.is_out_of_memory)
    timeouts = tuple(getattr(dojo_module, n) for n in ("DojoTacticTimeoutError", "DojoHardTimeoutError")
                     if hasattr(dojo_module, n))
    if isinstance(exc, timeouts):
        return ReplTimeoutError(f"LeanDojo: no answer within {timeout_s:.0f} s", limit_s=timeout_s)
    if isinstance(exc, dojo_module.DojoInitError):
        return ReplStartError(f"LeanDojo could not start the theorem: {exc}")
    return None


class DojoTacticSession:
    """One theorem in LeanDojo; the same `run` contract as `lean_env.tactic.TacticSession`.

    `theorem` is a `lean_dojo.Theorem` of a traced repo; `statement` its declaration up to the
    `:=` (`theorem name binders : type`, e.g. `lean_env.acceptance.statement_text(name,
    formal_statement)`: LeanDojo's states carry goals, not the source); `timeout_s` is
    LeanDojo's limit per interaction, seconds; `dojo_factory` replaces `lean_dojo.Dojo`.
    """

    def __init__(self, theorem: Any, statement: str, *, timeout_s: float = 600.0,
                 dojo_factory: Any = None) -> None:
        self.theorem = theorem
        self.statement = statement
        self.timeout_s = timeout_s
        self._factory = dojo_factory
        self._manager: Any = None
        self._dojo: Any = None
        self._nodes: list[tuple[Any, tuple[str, ...]]] = []   # (lean_dojo state, tactic path)

    def __enter__(self) -> tuple[DojoTacticSession, TacticState]:
        factory = self._factory
        if factory is None:
            import lean_dojo

            factory = lean_dojo.Dojo
        self._manager = factory(self.theorem, timeout=int(self.timeout_s))
        try:
            self._dojo, state0 = self._manager.__enter__()
        except Exception as exc:
            mapped = map_exception(exc, timeout_s=self.timeout_s)
            if mapped is None:
                raise
            raise mapped from exc
        first = map_result(state0, sid=0, tactics=(), elapsed_s=0.0, statement=self.statement)
        if not isinstance(first, TacticState):
            raise ReplStartError(f"LeanDojo started {self.theorem} in an unexpected state: {first}")
        self._nodes.append((state0, ()))
        return self, first

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._manager is not None:
            self._manager.__exit__(exc_type, exc, tb)
            self._manager = self._dojo = None

    def run(self, state: TacticState | int, tactic: str) -> TacticResult:
        if self._dojo is None:
            raise RuntimeError("DojoTacticSession.run outside its `with` block")
        sid = state.id if isinstance(state, TacticState) else state
        if not 0 <= sid < len(self._nodes):
            raise ValueError(f"unknown tactic state id {sid} (this session has 0..{len(self._nodes) - 1})")
        found = forbidden_construct(tactic)
        if found is not None:
            return TacticError(f"forbidden: {found}")
        dojo_state, path = self._nodes[sid]
        t0 = time.perf_counter()
        try:
            result = self._dojo.run_tac(dojo_state, tactic)
        except Exception as exc:
            mapped = map_exception(exc, timeout_s=self.timeout_s)
            if mapped is None:
                raise
            raise mapped from exc
        mapped_result = map_result(result, sid=len(self._nodes), tactics=path + (tactic,),
                                   elapsed_s=time.perf_counter() - t0, statement=self.statement)
        if isinstance(mapped_result, TacticState | ProofFinished):
            self._nodes.append((result, path + (tactic,)))
        return mapped_result
