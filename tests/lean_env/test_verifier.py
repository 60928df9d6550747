"""The Verifier facade: acceptance rules applied inside, one verdict per request, faults
turned into TimedOut/NotChecked, and the same paths against real Lean where it exists."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from lean_env import toolchain
from lean_env.config import VerifierConfig
from lean_env.errors import ReplStartError
from lean_env.standin import CHECKED_BY
from lean_env.verdict import Accepted, NotChecked, Rejected, RejectReason, TimedOut
from lean_env.verifier import Verifier, VerifyRequest
from tests.lean_env.conftest import MINIF2F_HEADER

pytestmark = pytest.mark.usefixtures("no_leaked_processes")
STANDARD = ("propext", "Classical.choice", "Quot.sound")


def _statement(name: str) -> str:
    return f"theorem {name} (a b : ℕ) : a + b = b + a := by\n"


def _request(name: str, proof: str = "  omega\n", statement: str | None = None) -> VerifyRequest:
    """A whole-file candidate (header + statement + proof), as a model writes it."""
    stated = statement if statement is not None else _statement(name)
    return VerifyRequest(name, MINIF2F_HEADER, _statement(name), MINIF2F_HEADER + stated + proof)


async def _verify(verifier: Verifier, request: VerifyRequest):
    return await verifier.verify(request.name, request.header, request.formal_statement,
                                 request.candidate)


def _standin_config(rules: Path, **fields) -> VerifierConfig:
    return VerifierConfig(backend="standin", standin_rules=rules, **fields)


def test_each_outcome_gets_its_verdict_in_request_order(make_standin):
    sim = make_standin("basic.json")
    config = _standin_config(sim.rules_path, workers=2, timeout_s=0.5, retries=1)
    requests = [
        _request("ok_1"),
        _request("bad_1"),
        _request("hidden_sorry_1"),
        _request("warn_only_1"),
        _request("native_1"),
        _request("cheat_1", proof="  sorry\n"),
        _request("weak_1", statement="theorem weak_1 (a b : ℕ) : a + b = a + b := by\n"),
        VerifyRequest("none_1", MINIF2F_HEADER, _statement("none_1"), "I cannot prove this."),
        _request("hang_1"),
        _request("crash_1"),
    ]
    seen: list[tuple[int, int]] = []
    with Verifier(config, command=sim.argv) as verifier:
        verdicts = verifier.verify_batch(requests, progress=lambda d, t: seen.append((d, t)))
    kinds = [(r.name, v.outcome) for r, v in zip(requests, verdicts, strict=True)]
    assert kinds == [
        ("ok_1", "accepted"),
        ("bad_1", f"rejected:{RejectReason.LEAN_ERROR}"),
        ("hidden_sorry_1", f"rejected:{RejectReason.SORRY}"),
        ("warn_only_1", f"rejected:{RejectReason.SORRY}"),
        ("native_1", f"rejected:{RejectReason.AXIOMS}"),
        ("cheat_1", f"rejected:{RejectReason.FORBIDDEN}"),
        ("weak_1", f"rejected:{RejectReason.STATEMENT_MISMATCH}"),
        ("none_1", "not_checked:no_code"),
        ("hang_1", "timed_out"),
        ("crash_1", "not_checked:infrastructure"),
    ], kinds
    accepted, timed_out = verdicts[0], verdicts[8]
    assert isinstance(accepted, Accepted) and accepted.axioms == STANDARD, accepted
    assert isinstance(timed_out, TimedOut) and timed_out.limit_s == 0.5, timed_out
    assert "Lean.ofReduceBool" in verdicts[4].detail, verdicts[4]
    assert all(v.checked_by == CHECKED_BY for v in verdicts), {v.checked_by for v in verdicts}
    assert seen == [(i, len(requests)) for i in range(1, len(requests) + 1)], seen
    # Lean (the stand-in) saw only what passed the prechecks: the crash twice (one retry).
    assert len(sim.events("command")) == 6 + 2, sim.events("command")


def test_async_verify_and_candidate_without_header(make_standin):
    sim = make_standin("basic.json")

    async def main():
        async with Verifier(_standin_config(sim.rules_path, workers=1)) as verifier:
            # A candidate may be the theorem alone: the problem's header is ours to add.
            return await verifier.verify("t", MINIF2F_HEADER, _statement("t"),
                                         _statement("t") + "  omega")

    verdict = asyncio.run(main())
    assert isinstance(verdict, Accepted) and verdict.time_s > 0, verdict


def test_verify_batch_outside_a_with_block_opens_and_closes_the_pool(make_standin):
    sim = make_standin("basic.json")
    verifier = Verifier(_standin_config(sim.rules_path, workers=1))
    verdicts = verifier.verify_batch([_request("ok_1"), _request("ok_2")])
    assert [v.kind for v in verdicts] == ["accepted", "accepted"], verdicts
    assert not verifier.pool.is_open


@pytest.mark.parametrize(("fields", "message"), [
    ({"backend": "standin"}, "needs verifier.standin_rules"),
    ({"backend": "kimina"}, "not served by the REPL pool"),
])
def test_misconfigured_backend_is_a_one_line_error(fields, message):
    with pytest.raises(ReplStartError, match=message):
        Verifier(VerifierConfig(**fields))


@pytest.mark.slow
def test_200_concurrent_requests_with_hangs_crashes_and_oom(make_standin):
    """Fault injection at scale: every request gets exactly one verdict of the kind its
    rule dictates, the pool recovers, and no process is left behind."""
    sim = make_standin("faults.json")
    kinds = ["ok"] * 6 + ["bad", "hang", "crash", "oom", "garbage", "ok"] + ["ok"] * 8
    names = [f"{kinds[i % len(kinds)]}_{i:03d}" for i in range(200)]
    expected = {"ok": "accepted", "bad": f"rejected:{RejectReason.LEAN_ERROR}", "hang": "timed_out",
                "crash": "not_checked:infrastructure", "oom": "not_checked:infrastructure",
                "garbage": "not_checked:infrastructure"}
    config = _standin_config(sim.rules_path, workers=4, timeout_s=0.5, retries=1)

    async def main():
        async with Verifier(config) as verifier:
            verdicts = await asyncio.gather(*(_verify(verifier, _request(n)) for n in names))
            after = await _verify(verifier, _request("clean_after"))
            return verdicts, after, verifier.pool.stats()

    start = time.monotonic()
    verdicts, after, stats = asyncio.run(main())
    elapsed = time.monotonic() - start
    assert len(verdicts) == len(names) == 200
    wrong = [(n, v) for n, v in zip(names, verdicts, strict=True)
             if v.outcome != expected[n.split("_")[0]]]
    assert not wrong, wrong[:5]
    oom = [v for n, v in zip(names, verdicts, strict=True) if n.startswith("oom")]
    assert all(isinstance(v, NotChecked) and "out of memory" in v.detail for v in oom), oom[:2]
    assert isinstance(after, Accepted), after
    per_kind = Counter(n.split("_")[0] for n in names)
    assert stats["timeouts"] == per_kind["hang"], stats
    assert stats["crashed"] == 2 * (per_kind["crash"] + per_kind["oom"]), stats
    assert stats["protocol_errors"] == 2 * per_kind["garbage"], stats
    assert stats["served"] == per_kind["ok"] + per_kind["bad"] + 1, stats
    print(f"200 faulty requests in {elapsed:.1f} s; pool stats {stats}")


# -- real Lean --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lean_command() -> list[str]:
    try:
        found = toolchain.find_toolchain()
        return toolchain.repl_command(found)
    except (toolchain.ToolchainError, OSError) as exc:
        pytest.skip(f"no Lean toolchain with the REPL: {exc}")


@pytest.mark.lean
def test_real_lean_verdicts(lean_command):
    config = VerifierConfig(workers=1, timeout_s=30, header_timeout_s=600)
    requests = [
        _request("lean_smoke_ok"),
        _request("lean_smoke_wrong", proof="  simp only []\n"),
        _request("lean_smoke_hang", proof="  sleep 100000\n  omega\n"),
    ]
    with Verifier(config, command=lean_command) as verifier:
        verdicts = verifier.verify_batch(requests)
    assert isinstance(verdicts[0], Accepted) and set(verdicts[0].axioms) <= set(STANDARD), verdicts[0]
    assert isinstance(verdicts[1], Rejected) and verdicts[1].reason == RejectReason.LEAN_ERROR, \
        verdicts[1]
    assert isinstance(verdicts[2], TimedOut), verdicts[2]
    assert "stand-in" not in verdicts[0].checked_by, verdicts[0].checked_by


# --- the Lean layer on its own: what the appended commands catch, through the REPL protocol ------

def _lean_layer(sim, name: str, candidate: str, statement: str):
    """Send `lean_command` to one stand-in REPL and judge the reply, skipping the static layer
    (as if it had missed something): the Lean layer must decide on its own."""
    from lean_env.acceptance import judge, lean_command
    from lean_env.repl import ReplProcess

    command = lean_command(name, MINIF2F_HEADER, candidate, statement)
    with ReplProcess(sim.argv, memory_limit_mb=1024, checked_by=CHECKED_BY) as repl:
        env = repl.command(MINIF2F_HEADER, timeout_s=10)
        reply = repl.command(command.text, env=env.env, timeout_s=10)
    return judge(name, reply, command=command, allowed_axioms=STANDARD, checked_by=CHECKED_BY,
                 time_s=0.0)


def test_lean_layer_rejects_a_changed_statement_the_static_layer_missed(make_standin):
    sim = make_standin({"rules": []})
    good = _lean_layer(sim, "s", MINIF2F_HEADER + _statement("s") + "  omega\n", _statement("s"))
    assert isinstance(good, Accepted) and good.layers == ("static", "repl"), good
    weakened = MINIF2F_HEADER + "theorem s (a b : ℕ) : a + b = a + b := by\n  rfl\n"
    verdict = _lean_layer(sim, "s", weakened, _statement("s"))
    assert isinstance(verdict, Rejected) and verdict.reason is RejectReason.STATEMENT_MISMATCH, verdict
    assert "type mismatch" in verdict.detail, verdict.detail
    # The theorem declared only inside a namespace: `_root_.s` does not exist.
    nested = MINIF2F_HEADER + "namespace X\n" + _statement("s") + "  omega\nend X\n"
    verdict = _lean_layer(sim, "s", nested, _statement("s"))
    assert isinstance(verdict, Rejected) and verdict.reason is RejectReason.STATEMENT_MISMATCH, verdict


def test_lean_layer_ignores_a_forged_axioms_line(make_standin):
    # The candidate prints a clean axioms line from inside its proof (a `trace`); the real
    # `#print axioms` reports sorryAx. Only the answer at the appended line counts.
    forged = {"severity": "info", "pos": {"line": 9, "column": 2},
              "data": "'f' does not depend on any axioms"}
    sim = make_standin({"rules": [{"substring": "forge_here", "messages": [forged],
                                   "axioms": ["sorryAx"]}]})
    candidate = MINIF2F_HEADER + _statement("f") + "  forge_here\n  omega\n"
    verdict = _lean_layer(sim, "f", candidate, _statement("f"))
    assert isinstance(verdict, Rejected) and verdict.reason is RejectReason.SORRY, verdict


def test_verdicts_name_their_layers(make_standin):
    sim = make_standin("basic.json")
    with Verifier(_standin_config(sim.rules_path, workers=1), command=sim.argv) as verifier:
        accepted, static = verifier.verify_batch([
            _request("ok_2"), _request("cheat_2", proof="  sorry\n")])
    assert accepted.layers == ("static", "repl"), accepted
    assert static.layers == ("static",) and static.outcome == "rejected:forbidden", static
    assert accepted.to_json()["layers"] == ["static", "repl"], accepted.to_json()
