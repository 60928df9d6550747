"""Step-by-step proving: a LeanDojo-style tactic session over the REPL's tactic mode.

    with TacticSession(pool, name, header, formal_statement) as (session, state0):
        result = session.run(state0, "intro x")   # TacticState | ProofFinished | TacticError

The session leases one REPL process from the pool (header already imported), sends the
theorem with `:= by sorry` and starts from that sorry's proof state (REPL_PROTOCOL.md,
"Tactic mode"). States are ids; old states stay valid, so a search may branch from any of
them. Results are values, as in LeanDojo (`TacticState`, `ProofFinished`, `TacticError`);
failures of the machinery are exceptions from `lean_env.errors` (a tactic that runs past
`tactic_timeout_s` kills the process: `ReplTimeoutError`, and the session is over).

A proof is finished only when it survives the whole acceptance path: the REPL must report
`proofStatus: Completed` (an old REPL bug accepted `apply t`, the theorem applied to itself;
without a `proofStatus` at all, no goals is not enough), and then the assembled proof, the
statement followed by the tactics along the path, must pass `precheck`, run as a command in
the header's environment with the appended checks and pass `judge` (errors, sorries, the
statement check, `#print axioms` at its own line). Tactics are checked for forbidden
constructs before they reach Lean. The final judge (Comparator) is not run here: a search
that reports a proof verifies it again through the `Verifier`, where it is.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from lean_env.acceptance import forbidden_construct, judge, lean_command, precheck, statement_text
from lean_env.config import VerifierConfig
from lean_env.errors import LeanEnvError
from lean_env.protocol import CommandResponse, ErrorReply, TacticResponse
from lean_env.verdict import Accepted, LeanMessage, NotChecked, Rejected


@dataclass(frozen=True)
class TacticState:
    """Open goals after some tactics. `id` names the state in this session only."""

    id: int
    goals: tuple[str, ...]


@dataclass(frozen=True)
class ProofFinished:
    """No goals left and the assembled proof was accepted: `proof` is the whole theorem."""

    id: int
    proof: str
    tactics: tuple[str, ...]
    verdict: Accepted


@dataclass(frozen=True)
class TacticError:
    """The tactic failed (Lean error, forbidden construct, incomplete proof status, or a
    finished-looking proof that the full check rejected). The state it ran on stays valid."""

    detail: str
    messages: tuple[LeanMessage, ...] = ()


TacticResult = TacticState | ProofFinished | TacticError


class StatementError(LeanEnvError):
    """The problem's statement does not elaborate with `:= by sorry` in its header's env."""


def tactic_outcome(reply: TacticResponse) -> TacticError | tuple[str, ...]:
    """What one tactic reply means, before any proof is assembled: a TacticError, the open
    goals, or () when no goal is left and the REPL says `Completed` or, in builds without
    `proofStatus`, says nothing (then only the full check of the assembled proof decides)."""
    if reply.error is not None:
        return TacticError(reply.error)
    if reply.errors:
        return TacticError(str(reply.errors[0]), reply.messages)
    status = reply.proof_status
    if reply.sorries or (status is not None and "sorry" in status):
        return TacticError(f"the tactic leaves a sorry (proofStatus: {status})", reply.messages)
    if reply.proof_state is None:
        return TacticError(f"no proof state in the REPL's reply: {reply.raw}")
    if status is not None and status.startswith(("Error", "Not verified")):
        return TacticError(f"proofStatus: {status}", reply.messages)
    if reply.goals:
        return reply.goals
    if status is not None and status != "Completed":
        return TacticError(f"no goals left, but proofStatus is {status!r}", reply.messages)
    return ()


class _Process(Protocol):
    """What a session needs from a REPL process (`lean_env.repl.ReplProcess` has it)."""

    def command(self, cmd: str, *, env: int | None = ..., timeout_s: float,
                **options: object) -> CommandResponse | ErrorReply: ...

    def tactic(self, tactic: str, proof_state: int, *, timeout_s: float) -> TacticResponse: ...


class _Pool(Protocol):
    config: VerifierConfig
    checked_by: str

    def lease(self, header: str, *, timeout_s: float | None = None,
              ) -> contextlib.AbstractContextManager[tuple[_Process, int]]: ...


@dataclass(frozen=True)
class _Node:
    proof_state: int
    tactics: tuple[str, ...]      # the path from the root, to assemble the proof


class TacticSession:
    """One theorem in tactic mode on a leased REPL; see the module docstring."""

    def __init__(self, pool: _Pool, name: str, header: str, formal_statement: str, *,
                 tactic_timeout_s: float | None = None) -> None:
        self.pool = pool
        self.name = name
        self.header = header
        self.formal_statement = formal_statement
        self.statement = statement_text(name, formal_statement)
        self.config = pool.config
        self.checked_by = pool.checked_by
        self.tactic_timeout_s = tactic_timeout_s or pool.config.tactic_timeout_s
        self._stack = contextlib.ExitStack()
        self._process: _Process | None = None
        self._env = -1
        self._nodes: list[_Node] = []
        self._broken: LeanEnvError | None = None

    def __enter__(self) -> tuple[TacticSession, TacticState]:
        try:
            self._process, self._env = self._stack.enter_context(self.pool.lease(self.header))
            reply = self._process.command(f"{self.statement} := by sorry", env=self._env,
                                          timeout_s=self.config.timeout_s)
            if isinstance(reply, ErrorReply) or reply.errors or not reply.sorries \
                    or reply.sorries[0].proof_state is None:
                detail = reply.message if isinstance(reply, ErrorReply) else "; ".join(
                    str(m) for m in reply.errors) or "no sorry with a proof state in the reply"
                raise StatementError(f"statement of {self.name} does not elaborate: {detail}")
        except BaseException as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        sorry = reply.sorries[0]
        assert sorry.proof_state is not None
        self._nodes.append(_Node(sorry.proof_state, ()))
        return self, TacticState(0, (sorry.goal,))

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._process = None
        self._stack.__exit__(exc_type, exc, tb)

    def tactics(self, state: TacticState | int) -> tuple[str, ...]:
        """The tactics from the start to `state`."""
        return self._node(state).tactics

    def assemble(self, tactics: tuple[str, ...]) -> str:
        """The whole theorem: statement, `:= by`, each tactic on its own indented lines."""
        body = "\n".join("  " + line for tactic in tactics for line in tactic.splitlines())
        return f"{self.statement} := by\n{body}\n"

    def _node(self, state: TacticState | int) -> _Node:
        sid = state.id if isinstance(state, TacticState) else state
        if not 0 <= sid < len(self._nodes):
            raise ValueError(f"unknown tactic state id {sid} (this session has 0..{len(self._nodes) - 1})")
        return self._nodes[sid]

    def run(self, state: TacticState | int, tactic: str) -> TacticResult:
        """Apply `tactic` to `state`."""
        if self._broken is not None:
            raise self._broken
        if self._process is None:
            raise RuntimeError("TacticSession.run outside its `with` block")
        node = self._node(state)
        found = forbidden_construct(tactic)
        if found is not None:
            return TacticError(f"forbidden: {found}")
        try:
            reply = self._process.tactic(tactic, node.proof_state, timeout_s=self.tactic_timeout_s)
        except LeanEnvError as exc:
            self._broken = exc   # the process is dead or unusable: so is every state
            raise
        return self._result(node, tactic, reply)

    def _result(self, node: _Node, tactic: str, reply: TacticResponse) -> TacticResult:
        outcome = tactic_outcome(reply)
        if isinstance(outcome, TacticError):
            return outcome
        assert reply.proof_state is not None
        child = _Node(reply.proof_state, node.tactics + (tactic,))
        self._nodes.append(child)
        sid = len(self._nodes) - 1
        if outcome:
            return TacticState(sid, outcome)
        verdict = self._verify(child.tactics)
        if isinstance(verdict, Accepted):
            return ProofFinished(sid, self.assemble(child.tactics), child.tactics, verdict)
        return TacticError(f"the REPL closed every goal, but the assembled proof was rejected "
                           f"({verdict.outcome.partition(':')[2]}): {verdict.detail}",
                           verdict.messages if isinstance(verdict, Rejected) else ())

    def _verify(self, tactics: tuple[str, ...]) -> Accepted | Rejected | NotChecked:
        """The whole acceptance path on the assembled proof, in this session's process."""
        assert self._process is not None
        proof = self.assemble(tactics)
        early = precheck(self.name, self.header, self.formal_statement, proof,
                         checked_by=self.checked_by)
        if early is not None:
            return early
        t0 = time.perf_counter()
        try:
            command = lean_command(self.name, self.header, proof, self.formal_statement)
            reply = self._process.command(command.text, env=self._env,
                                          timeout_s=self.config.timeout_s)
        except LeanEnvError as exc:
            self._broken = exc
            raise
        return judge(self.name, reply, command=command, allowed_axioms=self.config.allowed_axioms,
                     checked_by=self.checked_by, time_s=time.perf_counter() - t0)
