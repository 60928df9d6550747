"""The stand-in REPL's request loop and state: env ids, proof states, pickles, faults.

Mirrors leanprover-community/repl's Main.lean closely enough for our client to be tested
against it: requests are JSON objects ended by a blank line on stdin, replies the same on
stdout; env ids and proof-state ids count up from 0 and stay valid for the life of the
process; empty lists are omitted from command replies. What Lean would compute (messages,
goals, axioms) comes from the rule table (`lean_env.standin.rules`) instead.

Timing (benchmarks): with `LEAN_STANDIN_TIMING=DIR` in its environment, each process appends
one line per request to `DIR/PID.tsv`: when the request's blank line was read, when the reply
was flushed (both `time.monotonic()`, comparable across processes on one machine) and the
seconds it slept on purpose (simulated Lean). A benchmark then tells the stand-in's own cost
per request (busy time minus the simulated time) from the client's (the gaps between a reply
and the next request).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import IO, Any

from lean_env.standin.rules import Rule, RuleTable

STANDARD_AXIOMS = ("propext", "Classical.choice", "Quot.sound")
_SORRY = re.compile(r"\bsorry\b")
_IMPORT = re.compile(r"^\s*import\s", re.MULTILINE)
_PRINT_AXIOMS = re.compile(r"^[ \t]*#print\s+axioms\s+(?:_root_\.)?(\S+)", re.MULTILINE)
# The verifier's statement check: `example : PROPOSITION := @_root_.NAME` on one line.
_STATEMENT_CHECK = re.compile(r"^example : (?P<prop>.*) := @_root_\.(?P<name>\S+)[ \t]*$",
                              re.MULTILINE)
_DECLARATION = re.compile(r"\b(theorem|lemma|example|def|instance)\b")
_STATEMENT = re.compile(r"\b(?:theorem|lemma)\s+\S+\s*(.*?)\s*:=", re.DOTALL)


def _position(text: str, offset: int) -> dict[str, int]:
    """REPL positions: 1-based line, 0-based column (in characters)."""
    line = text.count("\n", 0, offset) + 1
    return {"line": line, "column": offset - (text.rfind("\n", 0, offset) + 1)}


def _as_proposition(signature: str) -> str:
    """`(a : ℕ) (h : P) : Q` -> `∀ (a : ℕ) (h : P), Q`: what Lean's type of the constant is,
    written the way the verifier's statement check writes the problem's statement."""
    depth = 0
    for i, ch in enumerate(signature):
        if ch in "([{⦃⟨":
            depth += 1
        elif ch in ")]}⦄⟩":
            depth -= 1
        elif ch == ":" and depth == 0 and not signature.startswith(":=", i):
            binders, conclusion = signature[:i].strip(), signature[i + 1:].strip()
            return f"∀ {binders}, {conclusion}" if binders else conclusion
    return signature.strip()


def _statement_check(text: str) -> list[dict[str, Any]]:
    """Errors Lean would report for `example : P := @_root_.NAME`: the stand-in's stand-in for
    elaboration is comparing P with NAME's declared signature, whitespace ignored."""
    errors = []
    for check in _STATEMENT_CHECK.finditer(text):
        name = check["name"].replace("«", "").replace("»", "")
        pos = _position(text, check.start())
        # A declaration starts a line, or follows the header's `set_option`/`open` commands
        # that the pool puts in front of the first line.
        decl = re.search(r"(?:^|[ \t])(?:theorem|lemma|def)\s+«?" + re.escape(name) + r"»?\s(?P<sig>.*?):=",
                         text, re.MULTILINE | re.DOTALL)
        # Inside `namespace X` the constant is `X.NAME`, not `_root_.NAME`.
        opened = len(re.findall(r"^namespace\s", text[:decl.start()], re.MULTILINE)) if decl else 0
        closed = len(re.findall(r"^end\s+\S", text[:decl.start()], re.MULTILINE)) if decl else 0
        if decl is None or opened > closed:
            errors.append({"severity": "error", "pos": pos, "endPos": pos,
                           "data": f"unknown identifier '_root_.{name}'"})
            continue
        signature = re.sub(r"--[^\n]*", "", decl["sig"])
        have, want = _as_proposition(signature), check["prop"]
        if "".join(have.split()) != "".join(want.split()):
            errors.append({"severity": "error", "pos": pos, "endPos": pos,
                           "data": f"type mismatch\n  @{name}\nhas type\n  {have} : Prop\n"
                                   f"but is expected to have type\n  {want} : Prop"})
    return errors


def _conclusion(signature: str) -> str:
    """The part of `(a b : ℕ) (h : a < b) : b > a` after its last top-level colon."""
    depth, cut = 0, -1
    for i, ch in enumerate(signature):
        if ch in "([{⦃":
            depth += 1
        elif ch in ")]}⦄":
            depth -= 1
        elif ch == ":" and depth == 0:
            cut = i
    return " ".join(signature[cut + 1:].split())


class StandinRepl:
    """State of one stand-in process. `handle` answers one request (or injects a fault)."""

    def __init__(self, table: RuleTable, *, state_dir: Path | None, out: IO[str]) -> None:
        self.table = table
        self.state_dir = state_dir
        self.out = out
        self.envs: set[int] = set()
        self.proof_states: dict[int, list[str]] = {}
        self._next_env = 0
        self._next_proof_state = 0
        self._hoard: list[bytearray] = []   # memory kept on purpose (grow_mb)
        self.simulated_s = 0.0              # seconds slept on purpose for the current request

    # -- helpers ------------------------------------------------------------------------------

    def _new_env(self) -> int:
        env, self._next_env = self._next_env, self._next_env + 1
        self.envs.add(env)
        return env

    def _new_proof_state(self, goals: list[str]) -> int:
        state, self._next_proof_state = self._next_proof_state, self._next_proof_state + 1
        self.proof_states[state] = goals
        return state

    def _log(self, event: str, **fields: Any) -> None:
        if self.state_dir is None:
            return
        line = json.dumps({"pid": os.getpid(), "event": event, **fields}) + "\n"
        # O_APPEND writes of one short line are atomic across processes.
        fd = os.open(self.state_dir / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def _fault_fires(self, rule: Rule) -> bool:
        """Whether the rule's fault fires now: always, or while its max_fires budget lasts."""
        if rule.fault is None:
            return False
        if rule.max_fires is None:
            return True
        if self.state_dir is None:
            raise SystemExit(f"stand-in: rule {rule.name!r} uses max_fires but no --state-dir given")
        for i in range(rule.max_fires):
            try:
                os.close(os.open(self.state_dir / f"fired.{rule.name}.{i}",
                                 os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            return True
        return False

    def _apply_effects(self, rule: Rule | None) -> str | None:
        """Sleep, grow memory and run process-level faults; returns a reply-shaping fault."""
        if rule is None:
            return None
        if rule.sleep_s:
            self.simulated_s += rule.sleep_s
            time.sleep(rule.sleep_s)
        if rule.stderr_kb:
            sys.stderr.write((("stand-in chatter " * 64)[:1023] + "\n") * rule.stderr_kb)
            sys.stderr.flush()
        if rule.grow_mb:
            # Multiplying a 1-byte array writes every page, so RSS really grows (a zeroed
            # allocation would stay virtual).
            self._hoard.append(bytearray(b"\x01") * (rule.grow_mb << 20))
        if not self._fault_fires(rule):
            return None
        self._log("fault", fault=rule.fault, rule=rule.name)
        if rule.fault == "hang":
            while True:
                time.sleep(3600)
        if rule.fault == "crash":
            self.out.write('{"env": ')
            self.out.flush()
            sys.stderr.write("stand-in: injected crash (exit 1 mid-request)\n")
            sys.stderr.flush()
            os._exit(1)
        if rule.fault == "oom":
            os.kill(os.getpid(), signal.SIGKILL)
        return rule.fault

    # -- requests -----------------------------------------------------------------------------

    def handle(self, request: dict[str, Any]) -> dict[str, Any] | str:
        """The reply to one request: a dict, or raw text (the `garbage` fault)."""
        if "cmd" in request:
            return self._command(str(request["cmd"]), request.get("env"), request)
        if "path" in request:
            try:
                text = Path(request["path"]).read_text(encoding="utf-8")
            except OSError as exc:
                return {"message": f"Lean error:\n{exc}"}
            return self._command(text, None, request)
        if "tactic" in request:
            return self._tactic(str(request["tactic"]), request.get("proofState"))
        if "pickleTo" in request:
            return self._pickle(Path(request["pickleTo"]), request)
        if "unpickleEnvFrom" in request:
            return self._unpickle_env(Path(request["unpickleEnvFrom"]))
        if "unpickleProofStateFrom" in request:
            return self._unpickle_proof_state(Path(request["unpickleProofStateFrom"]),
                                              request.get("env"))
        return {"message": f"Could not parse as a valid JSON command:\n{json.dumps(request)}"}

    def _command(self, text: str, env: int | None, request: dict[str, Any]) -> dict[str, Any] | str:
        if env is not None and env not in self.envs:
            return {"message": "Unknown environment."}
        imports = _IMPORT.search(text)
        self._log("import" if env is None and imports else "command", env=env)
        if env is None and imports and self.table.header_import_s:
            self.simulated_s += self.table.header_import_s
            time.sleep(self.table.header_import_s)
        rule = self.table.match(text, "command")
        fault = self._apply_effects(rule)
        if fault == "garbage":
            return "stand-in: injected garbage, this is not JSON"
        messages: list[dict[str, Any]] = []
        if env is not None and imports:
            pos = _position(text, imports.start())
            messages.append({"severity": "error", "pos": pos, "endPos": pos,
                             "data": "invalid 'import' command, it must be used in the "
                                     "beginning of the file"})
        if rule is not None:
            messages.extend(rule.messages)
        messages.extend(_statement_check(text))
        sorries = self._sorries(text, rule)
        uses_sorry = bool(sorries) or fault == "sorry_warning_without_sorries"
        if uses_sorry:
            decl = _DECLARATION.search(text)
            pos = _position(text, decl.start() if decl else 0)
            messages.append({"severity": "warning", "pos": pos,
                             "endPos": {"line": pos["line"], "column": pos["column"] + 7},
                             "data": "declaration uses 'sorry'"})
        if fault == "sorry_warning_without_sorries":
            sorries = []
        if rule is not None and rule.axioms is not None:
            axioms: tuple[str, ...] = rule.axioms
        else:
            axioms = ("sorryAx",) if uses_sorry else STANDARD_AXIOMS
        for match in _PRINT_AXIOMS.finditer(text):
            name = match.group(1)
            data = (f"'{name}' depends on axioms: [{', '.join(axioms)}]" if axioms
                    else f"'{name}' does not depend on any axioms")
            messages.append({"severity": "info", "pos": _position(text, match.start()),
                             "endPos": _position(text, match.end()), "data": data})
        reply: dict[str, Any] = {}
        if sorries:
            reply["sorries"] = sorries
        if messages:
            reply["messages"] = messages
        if request.get("allTactics"):
            reply["tactics"] = []  # the stand-in elaborates nothing; the key shows the option
        if not request.get("gc"):
            reply["env"] = self._new_env()
        return reply

    def _sorries(self, text: str, rule: Rule | None) -> list[dict[str, Any]]:
        if rule is not None and rule.sorries is not None:
            specs = [(s.get("pos", {"line": 1, "column": 0}), str(s.get("goal", "⊢ False")))
                     for s in rule.sorries]
        else:
            found = _SORRY.search(text)
            if not found:
                return []
            statement = _STATEMENT.search(text)
            goal = "⊢ " + (_conclusion(statement.group(1)) if statement else "False")
            specs = [(_position(text, found.start()), goal)]
        return [{"pos": pos, "endPos": {"line": pos["line"], "column": pos["column"] + 5},
                 "goal": goal, "proofState": self._new_proof_state([goal])}
                for pos, goal in specs]

    def _tactic(self, tactic: str, proof_state: Any) -> dict[str, Any] | str:
        if proof_state not in self.proof_states:
            return {"message": "Unknown proof state."}
        self._log("tactic", proofState=proof_state)
        rule = self.table.match(tactic, "tactic", "\n\n".join(self.proof_states[proof_state]))
        fault = self._apply_effects(rule)
        if fault == "garbage":
            return "stand-in: injected garbage, this is not JSON"
        if rule is not None and rule.error is not None:
            return {"message": f"Lean error:\n{rule.error}"}
        goals = list(rule.goals) if rule is not None else []
        if rule is not None and rule.proof_status is not None:
            status = rule.proof_status
        elif rule is None and _SORRY.search(tactic):
            status = "Incomplete: contains sorry"
        else:
            status = "Completed" if not goals else "Incomplete: open goals remain"
        return {"proofState": self._new_proof_state(goals), "goals": goals, "proofStatus": status}

    def _pickle(self, path: Path, request: dict[str, Any]) -> dict[str, Any]:
        if "proofState" in request:
            state = request["proofState"]
            if state not in self.proof_states:
                return {"message": "Unknown proof state."}
            path.write_text(json.dumps({"proofState": self.proof_states[state]}), encoding="utf-8")
            return {"proofState": state, "goals": self.proof_states[state]}
        env = request.get("env")
        if env not in self.envs:
            return {"message": "Unknown environment."}
        path.write_text(json.dumps({"env": env}), encoding="utf-8")
        return {"env": env}

    def _read_pickle(self, path: Path, key: str) -> Any:
        try:
            return json.loads(path.read_text(encoding="utf-8"))[key]
        except (OSError, ValueError, KeyError) as exc:
            return exc

    def _unpickle_env(self, path: Path) -> dict[str, Any]:
        found = self._read_pickle(path, "env")
        if isinstance(found, Exception):
            return {"message": f"Lean error:\ncannot unpickle {path}: {found}"}
        # Unpickling still pays the header's import (REPL_PROTOCOL.md, Pickling).
        self.simulated_s += self.table.header_import_s
        time.sleep(self.table.header_import_s)
        return {"env": self._new_env()}

    def _unpickle_proof_state(self, path: Path, env: Any) -> dict[str, Any]:
        if env is not None and env not in self.envs:
            return {"message": "Unknown environment."}
        goals = self._read_pickle(path, "proofState")
        if isinstance(goals, Exception):
            return {"message": f"Lean error:\ncannot unpickle {path}: {goals}"}
        return {"proofState": self._new_proof_state(list(goals)), "goals": goals}


def _encode(reply: dict[str, Any] | str) -> str:
    if isinstance(reply, str):
        return reply + "\n\n"
    # Lean's Json.pretty breaks long replies over several lines (never a blank one); doing
    # the same keeps the client's framing honest.
    compact = json.dumps(reply, ensure_ascii=False)
    text = compact if len(compact) <= 80 else json.dumps(reply, ensure_ascii=False, indent=1)
    return text + "\n\n"


def _timing_fd() -> int | None:
    """The file this process appends its timing lines to (LEAN_STANDIN_TIMING), if asked."""
    folder = os.environ.get("LEAN_STANDIN_TIMING")
    if not folder:
        return None
    return os.open(Path(folder) / f"{os.getpid()}.tsv", os.O_WRONLY | os.O_APPEND | os.O_CREAT)


def serve(repl: StandinRepl, stdin: IO[str]) -> None:
    """Read blank-line-separated requests until EOF and answer each (the REPL's main loop)."""
    timing = _timing_fd()
    lines: list[str] = []
    for line in stdin:
        if line.strip():
            lines.append(line)
            continue
        if not lines:
            continue
        read_at = time.monotonic()
        repl.simulated_s = 0.0
        block, lines = "".join(lines), []
        try:
            request = json.loads(block)
        except json.JSONDecodeError as exc:
            reply: dict[str, Any] | str = {"message": f"Could not parse JSON:\n{exc}"}
        else:
            reply = repl.handle(request) if isinstance(request, dict) else {
                "message": "Could not parse JSON:\nexpected an object"}
        repl.out.write(_encode(reply))
        repl.out.flush()
        if timing is not None:
            os.write(timing, f"{read_at:.6f}\t{time.monotonic():.6f}\t{repl.simulated_s:.6f}\n"
                     .encode())
