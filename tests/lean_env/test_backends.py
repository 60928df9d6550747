"""The optional backends: kimina-lean-server client and the LeanDojo adapter.

kimina: against a real HTTP server started here on 127.0.0.1 (a test double of the server's
API: `POST /check` with snippets, REPL-shaped responses, HTTP 429 when "saturated", a
snippet-level timeout error, and a reply slower than the client's HTTP timeout).
LeanDojo: the mapping of lean_dojo's own result classes and exceptions onto ours; a real
run needs a traced repo and a toolchain (`lean` marker).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from lean_env.backends.dojo import DojoTacticSession, map_exception, map_result
from lean_env.backends.kimina import KiminaSaturatedError, KiminaVerifier
from lean_env.config import VerifierConfig
from lean_env.errors import ReplCrashedError, ReplStartError, ReplTimeoutError
from lean_env.tactic import ProofFinished, TacticError, TacticState
from lean_env.toolchain import find_toolchain
from lean_env.verdict import Accepted, NotChecked, Rejected, RejectReason, TimedOut
from lean_env.verifier import VerifyRequest

HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 0\n\nopen BigOperators Real Nat\n\n"


def _statement(name: str) -> str:
    return f"theorem {name} (a b : ℕ) : a + b = b + a := by\n"


def _request(name: str, body: str = "omega") -> VerifyRequest:
    return VerifyRequest(name, HEADER, _statement(name), HEADER + _statement(name) + f"  {body}\n")


class _KiminaDouble(BaseHTTPRequestHandler):
    """Speaks kimina-lean-server's /check API; behaviour chosen by words in the snippet."""

    state: dict[str, Any] = {}

    def log_message(self, *args: Any) -> None:  # keep pytest output clean
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.state["requests"].append(body)
        if self.path != "/check":
            return self._send(404, {"detail": "Not Found"})
        if self.state["busy"] > 0:
            self.state["busy"] -= 1
            return self._send(429, {"detail": "server saturated"}, {"Retry-After": "0.05"})
        results = []
        for snippet in body["snippets"]:
            code, sid = snippet["code"], snippet["id"]
            found = re.search(r"^#print axioms (?:_root_\.)?(\S+)", code, re.MULTILINE)
            name = found.group(1)
            axioms_line = code.count("\n", 0, found.start()) + 1   # Lean answers at the command
            if "sleepy" in code:
                time.sleep(2.0)
            if "slow_" in code:
                results.append({"id": sid, "time": body["timeout"], "error": "Lean REPL command timed out"})
                continue
            messages = []
            axioms = "propext, Classical.choice, Quot.sound"
            if "linarith" in code:
                messages.append({"severity": "error", "pos": {"line": 9, "column": 2},
                                 "data": "linarith failed to find a contradiction"})
            if "trust_me" in code:
                axioms += ", Lean.ofReduceBool"
            messages.append({"severity": "info", "pos": {"line": axioms_line, "column": 0},
                             "data": f"'{name}' depends on axioms: [{axioms}]"})
            results.append({"id": sid, "time": 0.25, "response": {"env": 0, "messages": messages}})
        self._send(200, results)

    def _send(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def kimina() -> Iterator[tuple[str, dict[str, Any]]]:
    state: dict[str, Any] = {"requests": [], "busy": 0}
    handler = type("Handler", (_KiminaDouble,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True   # a handler still sleeping must not hold up the teardown
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_kimina_batch_verdicts_go_through_precheck_and_judge(kimina: tuple[str, dict]) -> None:
    url, state = kimina
    config = VerifierConfig(backend="kimina", kimina_url=url, timeout_s=20)
    requests = [_request("good"), _request("bad", "linarith"), _request("native", "exact trust_me"),
                _request("cheat", "native_decide"), _request("slow_one")]
    with KiminaVerifier(config) as kv:
        verdicts = kv.verify_batch(requests)
    assert isinstance(verdicts[0], Accepted) and verdicts[0].time_s == 0.25, verdicts[0]
    assert isinstance(verdicts[1], Rejected) and verdicts[1].reason is RejectReason.LEAN_ERROR, verdicts[1]
    assert isinstance(verdicts[2], Rejected) and verdicts[2].reason is RejectReason.AXIOMS, verdicts[2]
    assert isinstance(verdicts[3], Rejected) and verdicts[3].reason is RejectReason.FORBIDDEN, verdicts[3]
    assert isinstance(verdicts[4], TimedOut) and verdicts[4].limit_s == 20, verdicts[4]
    # One HTTP request for the four candidates that passed precheck; the header travels with
    # each snippet and `#print axioms` ends it.
    assert len(state["requests"]) == 1, state["requests"]
    sent = state["requests"][0]
    assert sent["timeout"] == 20 and sent["reuse"] is True and len(sent["snippets"]) == 4, sent
    code = sent["snippets"][0]["code"]
    assert code.startswith("import Mathlib") and code.endswith("example : ∀ (a b : ℕ), a + b = b + a := @_root_.good\n"), code


def test_kimina_backs_off_on_429_then_succeeds(kimina: tuple[str, dict]) -> None:
    url, state = kimina
    state["busy"] = 3
    with KiminaVerifier(VerifierConfig(kimina_url=url)) as kv:
        verdict = asyncio.run(kv.verify(*_request("good").__dict__.values()))
    assert isinstance(verdict, Accepted), verdict
    assert len(state["requests"]) == 4, len(state["requests"])


def test_kimina_saturated_after_retries_raises(kimina: tuple[str, dict]) -> None:
    url, state = kimina
    state["busy"] = 100
    with KiminaVerifier(VerifierConfig(kimina_url=url), retries_429=2, backoff_s=0.01) as kv, \
            pytest.raises(KiminaSaturatedError, match="429 3 times"):
        kv.verify_batch([_request("good")])
    assert len(state["requests"]) == 3, len(state["requests"])


def test_kimina_http_timeout_and_unreachable_are_not_checked(kimina: tuple[str, dict]) -> None:
    url, _ = kimina
    with KiminaVerifier(VerifierConfig(kimina_url=url), http_timeout_s=0.5) as kv:
        verdict = kv.verify_batch([_request("sleepy")])[0]
    assert isinstance(verdict, NotChecked) and verdict.cause == "infrastructure", verdict
    assert "Timeout" in verdict.detail, verdict
    with KiminaVerifier(VerifierConfig(kimina_url=url), path="/api/check") as kv:
        wrong = kv.verify_batch([_request("good")])[0]
    assert isinstance(wrong, NotChecked) and "HTTP 404" in wrong.detail, wrong


# --- LeanDojo ------------------------------------------------------------------------------------

def test_dojo_results_map_to_our_values() -> None:
    import lean_dojo

    pp = "a b : ℕ\n⊢ a ≤ b\n\na b : ℕ\n⊢ b ≤ a"
    stmt = "theorem t (a b : ℕ) : a ≤ b ∧ b ≤ a"
    state = map_result(lean_dojo.TacticState(pp, 4), sid=2, tactics=("constructor",), elapsed_s=0.1,
                       statement=stmt)
    assert state == TacticState(2, ("a b : ℕ\n⊢ a ≤ b", "a b : ℕ\n⊢ b ≤ a")), state
    done = map_result(lean_dojo.ProofFinished(5, None), sid=3, tactics=("intro", "omega"), elapsed_s=0.1,
                      statement=stmt)
    assert isinstance(done, ProofFinished) and done.tactics == ("intro", "omega"), done
    # The whole theorem, as TacticSession's ProofFinished gives it (the ProofFinished contract).
    assert done.proof == stmt + " := by\n  intro\n  omega\n", done.proof
    assert "LeanDojo" in done.verdict.checked_by and done.verdict.layers == ("static", "lean_dojo"), done
    err = map_result(lean_dojo.LeanError("unknown tactic"), sid=4, tactics=("x",), elapsed_s=0.0,
                     statement=stmt)
    assert err == TacticError("unknown tactic"), err
    given_up = map_result(lean_dojo.ProofGivenUp(), sid=4, tactics=("x",), elapsed_s=0.0,
                          statement=stmt)
    assert isinstance(given_up, TacticError) and "sorry" in given_up.detail, given_up


def test_dojo_exceptions_map_to_ours() -> None:
    from lean_dojo.interaction.dojo import DojoCrashError, DojoInitError, DojoTacticTimeoutError

    oom = map_exception(DojoCrashError("OOM"), timeout_s=60)
    assert isinstance(oom, ReplCrashedError) and oom.is_out_of_memory, oom
    crash = map_exception(DojoCrashError("Unexpected EOF"), timeout_s=60)
    assert isinstance(crash, ReplCrashedError) and not crash.is_out_of_memory, crash
    timeout = map_exception(DojoTacticTimeoutError(), timeout_s=60)
    assert isinstance(timeout, ReplTimeoutError) and timeout.limit_s == 60, timeout
    init = map_exception(DojoInitError("Cannot find the *.ast.json"), timeout_s=60)
    assert isinstance(init, ReplStartError) and "ast.json" in str(init), init
    assert map_exception(KeyError("x"), timeout_s=60) is None


class _ScriptedDojo:
    """Stands in for `lean_dojo.Dojo` (same constructor and context protocol), answering from
    a script of lean_dojo result values, so the adapter's branching can be exercised."""

    def __init__(self, theorem: Any, timeout: int) -> None:
        import lean_dojo

        self.theorem, self.timeout, self.lean_dojo = theorem, timeout, lean_dojo

    def __enter__(self) -> tuple[_ScriptedDojo, Any]:
        if self.theorem == "broken":
            from lean_dojo.interaction.dojo import DojoInitError
            raise DojoInitError("Cannot find the *.ast.json file")
        return self, self.lean_dojo.TacticState("x : ℕ\n⊢ x = x", 0)

    def __exit__(self, *exc: object) -> None:
        pass

    def run_tac(self, state: Any, tactic: str) -> Any:
        from lean_dojo.interaction.dojo import DojoTacticTimeoutError

        if tactic == "rfl":
            return self.lean_dojo.ProofFinished(state.id + 1, None)
        if tactic == "loop":
            raise DojoTacticTimeoutError()
        return self.lean_dojo.LeanError(f"unknown tactic {tactic}")


def test_dojo_session_plumbing() -> None:
    stmt = "theorem thm (x : ℕ) : x = x"
    with DojoTacticSession("thm", stmt, timeout_s=5, dojo_factory=_ScriptedDojo) as (session, s0):
        assert s0 == TacticState(0, ("x : ℕ\n⊢ x = x",)), s0
        assert isinstance(session.run(s0, "blah"), TacticError)
        assert session.run(s0, "sorry") == TacticError(
            "forbidden: `sorry` at line 1: proof left unfinished")
        done = session.run(s0, "rfl")
        assert isinstance(done, ProofFinished) and done.id == 1 and done.tactics == ("rfl",), done
        assert done.proof == "theorem thm (x : ℕ) : x = x := by\n  rfl\n", done.proof
        with pytest.raises(ReplTimeoutError):
            session.run(s0, "loop")
    with pytest.raises(ReplStartError, match="ast.json"), \
            DojoTacticSession("broken", stmt, dojo_factory=_ScriptedDojo):
        pass


@pytest.mark.lean
def test_dojo_real_run() -> None:
    if not find_toolchain().complete:
        pytest.skip("needs a Lean toolchain (prover lean setup) and network to trace a repo")
    import lean_dojo

    repo = lean_dojo.LeanGitRepo("https://github.com/yangky11/lean4-example",
                                 "7b6ecb9ad4829e4e73600a3329baeb3b5df8d23f")
    theorem = lean_dojo.Theorem(repo, "Lean4Example.lean", "hello_world")
    statement = "theorem hello_world (a b c : Nat) : a + b + c = a + c + b"
    with DojoTacticSession(theorem, statement, timeout_s=120) as (session, s0):
        result = session.run(s0, "rw [add_assoc, add_comm b, ←add_assoc]")
        assert isinstance(result, ProofFinished | TacticState), result


def test_kimina_backend_through_the_cli_config(kimina: tuple[str, dict], tmp_path) -> None:
    """`verifier.backend = "kimina"` in a run config routes `prover lean check-set` to the server."""
    from typer.testing import CliRunner

    from prover.cli import app

    url, state = kimina
    config = tmp_path / "run.toml"
    config.write_text(f'[verifier]\nbackend = "kimina"\nkimina_url = "{url}"\ntimeout_s = 20\n')
    problems = tmp_path / "problems.jsonl"
    proofs = tmp_path / "proofs.jsonl"
    problems.write_text("".join(json.dumps({"name": n, "header": HEADER, "formal_statement": _statement(n)}) + "\n"
                                for n in ("good", "bad")))
    proofs.write_text("".join(json.dumps({"name": r.name, "code": r.candidate}) + "\n"
                              for r in (_request("good"), _request("bad", "linarith"))))
    result = CliRunner().invoke(app, ["--config", str(config), "lean", "check-set", str(proofs),
                                      "--problems", str(problems), "--json"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout)
    assert summary["outcomes"] == {"accepted": 1, "rejected:lean_error": 1}, summary
    assert summary["checked_by"] == f"kimina-lean-server at {url}", summary
    assert len(state["requests"]) == 1 and len(state["requests"][0]["snippets"]) == 2, state["requests"]


def test_kimina_has_the_verifiers_calling_convention(kimina: tuple[str, dict]) -> None:
    """async with / await verify / await verify_many, as `lean_env.verifier.Verifier`."""
    url, _ = kimina
    requests = [_request("good"), _request("bad", "linarith")]

    async def run() -> list:
        async with KiminaVerifier(VerifierConfig(kimina_url=url)) as kv:
            one = await kv.verify(*requests[0].__dict__.values())
            many = await kv.verify_many(requests)
        return [one, *many]

    one, good, bad = asyncio.run(run())
    assert isinstance(one, Accepted) and isinstance(good, Accepted), (one, good)
    assert isinstance(bad, Rejected) and bad.reason is RejectReason.LEAN_ERROR, bad
