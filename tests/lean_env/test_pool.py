"""ReplPool against stand-in REPLs: header reuse, recycling, replacement, leases, no leaks.

What the processes did is read from the stand-ins' own event log (one line per request,
with its pid), not from the pool's counters alone.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from lean_env.config import VerifierConfig
from lean_env.errors import (
    LeanEnvError,
    PoolSaturatedError,
    ReplCrashedError,
    ReplStartError,
    ReplTimeoutError,
)
from lean_env.pool import ReplPool, normalise_header
from lean_env.protocol import CommandResponse
from lean_env.standin import CHECKED_BY
from tests.lean_env.conftest import MINIF2F_HEADER

pytestmark = pytest.mark.usefixtures("no_leaked_processes")
OTHER_HEADER = "import Mathlib\n\nopen Real\n"


def _pool(argv: list[str], **config) -> ReplPool:
    return ReplPool(VerifierConfig(**config), command=argv, checked_by=CHECKED_BY)


def _code(name: str) -> str:
    return f"theorem {name} : True := trivial\n#print axioms {name}"


def test_header_imported_once_per_process(make_standin):
    sim = make_standin("basic.json")

    async def main() -> list:
        async with _pool(sim.argv, workers=2) as pool:
            replies = await asyncio.gather(*(
                pool.run_command(MINIF2F_HEADER, _code(f"t{i}")) for i in range(12)))
            # Same header after trailing-whitespace normalisation: no new import.
            replies.append(await pool.run_command(MINIF2F_HEADER.rstrip() + "  \n\n\n", _code("u")))
            assert pool.stats()["started"] == 2, pool.stats()
            return replies

    replies = asyncio.run(main())
    assert all(isinstance(r, CommandResponse) and not r.errors for r in replies), replies
    imports, commands = sim.per_pid("import"), sim.per_pid("command")
    assert len(imports) == 2 and set(imports.values()) == {1}, imports
    assert sum(commands.values()) == 13 and set(commands) == set(imports), commands


def test_headers_are_keys_and_idle_processes_are_evicted(make_standin):
    sim = make_standin("basic.json")
    with _pool(sim.argv, workers=1) as pool:
        results = pool.run_batch([(MINIF2F_HEADER, _code("a")), (OTHER_HEADER, _code("b")),
                                  (OTHER_HEADER, _code("c"))])
        assert all(isinstance(r, CommandResponse) for r in results), results
        stats = pool.stats()
    assert (stats["started"], stats["evicted"], stats["served"]) == (2, 1, 3), stats
    assert len(sim.per_pid("import")) == 2, sim.events()
    assert normalise_header("a  \nb\t\n\n") == "a\nb"


def test_recycle_after_max_uses(make_standin):
    sim = make_standin("basic.json")
    with _pool(sim.argv, workers=1, max_uses=3) as pool:
        for i in range(7):
            assert isinstance(pool.run_sync(pool.run_command(MINIF2F_HEADER, _code(f"t{i}"))),
                              CommandResponse)
        stats = pool.stats()
    per_process = sorted(sim.per_pid("command").values())
    assert per_process == [1, 3, 3], per_process
    assert stats["recycled"] == 2, stats


def test_recycle_above_max_rss(make_standin):
    sim = make_standin("basic.json")
    with _pool(sim.argv, workers=1, max_rss_mb=256) as pool:
        # grow_ keeps 300 MiB in the process: above the 256 MiB threshold.
        pool.run_sync(pool.run_command(MINIF2F_HEADER, _code("grow_1")))
        pool.run_sync(pool.run_command(MINIF2F_HEADER, _code("t")))
        stats = pool.stats()
    pids = [e["pid"] for e in sim.events("command")]
    assert stats["recycled"] == 1 and len(set(pids)) == 2, (stats, pids)


def test_crash_is_retried_on_a_fresh_process(make_standin):
    sim = make_standin({"rules": [{"name": "flaky", "substring": "theorem flaky_",
                                   "fault": "crash", "max_fires": 1}]})
    with _pool(sim.argv, workers=2, retries=1) as pool:
        reply = pool.run_sync(pool.run_command(MINIF2F_HEADER, _code("flaky_1")))
        stats = pool.stats()
    assert isinstance(reply, CommandResponse) and reply.env is not None, reply
    assert (stats["crashed"], stats["retries"], stats["served"]) == (1, 1, 1), stats
    assert len(sim.events("fault")) == 1, sim.events()


def test_persistent_crash_raises_after_retries_and_pool_recovers(make_standin):
    sim = make_standin("basic.json")
    with _pool(sim.argv, workers=2, retries=2) as pool:
        with pytest.raises(ReplCrashedError):
            pool.run_sync(pool.run_command(MINIF2F_HEADER, _code("crash_1")))
        assert pool.stats()["crashed"] == 3, pool.stats()
        reply = pool.run_sync(pool.run_command(MINIF2F_HEADER, _code("t")))
        assert isinstance(reply, CommandResponse) and not reply.errors, reply


def test_timeout_is_not_retried_and_the_process_is_replaced(make_standin):
    sim = make_standin("basic.json")
    with _pool(sim.argv, workers=1, retries=2) as pool:
        start = time.monotonic()
        with pytest.raises(ReplTimeoutError):
            pool.run_sync(pool.run_command(MINIF2F_HEADER, _code("hang_1"), timeout_s=0.3))
        assert time.monotonic() - start < 2.0
        reply = pool.run_sync(pool.run_command(MINIF2F_HEADER, _code("t")))
        stats = pool.stats()
    assert isinstance(reply, CommandResponse), reply
    assert (stats["timeouts"], stats["retries"], stats["started"]) == (1, 0, 2), stats


def test_a_crash_does_not_stall_the_queue(make_standin):
    """The replacement starts in the background: clean requests queued behind a crash all
    get served, each on a process that imported its header once."""
    sim = make_standin("basic.json")

    async def main() -> list:
        async with _pool(sim.argv, workers=2, retries=0) as pool:
            tasks = [pool.run_command(MINIF2F_HEADER, _code("crash_1" if i == 0 else f"t{i}"))
                     for i in range(8)]
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert isinstance(results[0], ReplCrashedError), results[0]
    assert all(isinstance(r, CommandResponse) for r in results[1:]), results
    assert set(sim.per_pid("import").values()) == {1}, sim.per_pid("import")


def test_bad_header_is_a_start_error(make_standin):
    sim = make_standin("basic.json")
    with _pool(sim.argv, workers=1, retries=0) as pool, pytest.raises(
            ReplStartError, match="header import failed: .*unknown module prefix 'Broken'"):
        pool.run_sync(pool.run_command("import Broken", _code("t")))


def test_full_queue_raises_pool_saturated(make_standin):
    sim = make_standin("basic.json")

    async def main() -> list:
        async with _pool(sim.argv, workers=1, max_queue=1) as pool:
            tasks = [asyncio.create_task(pool.run_command(MINIF2F_HEADER, _code(f"slow_{i}")))
                     for i in range(3)]
            return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    kinds = sorted(type(r).__name__ for r in results)
    assert kinds == ["CommandResponse", "CommandResponse", "PoolSaturatedError"], results
    assert issubclass(PoolSaturatedError, LeanEnvError)


def test_lease_gives_a_dedicated_process_for_tactic_mode(make_standin):
    sim = make_standin("basic.json")
    with _pool(sim.argv, workers=1) as pool:
        with pool.lease(MINIF2F_HEADER) as (repl, env):
            leased_pid = repl.pid
            reply = repl.command("theorem t (x : Unit) : Nat := by sorry", env=env, timeout_s=5)
            assert isinstance(reply, CommandResponse) and reply.sorries, reply
            state = reply.sorries[0].proof_state
            assert state is not None
            step = repl.tactic("exact 3", state, timeout_s=5)
            assert step.proof_status == "Completed", step
            assert pool.stats()["busy"] == 1, pool.stats()
        assert pool.stats()["idle"] == 1, pool.stats()
        # The returned process serves commands again without a new import.
        pool.run_sync(pool.run_command(MINIF2F_HEADER, _code("after")))
        # A lease left by an exception discards its process; a fresh one serves the next.
        with pytest.raises(RuntimeError, match="boom"), pool.lease(MINIF2F_HEADER):
            raise RuntimeError("boom")
        pool.run_sync(pool.run_command(MINIF2F_HEADER, _code("last")))
        stats = pool.stats()
    command_pids = [e["pid"] for e in sim.events("command")]
    assert command_pids[:2] == [leased_pid, leased_pid], (leased_pid, command_pids)
    assert command_pids[2] != leased_pid, (leased_pid, command_pids)
    assert (stats["leases"], stats["started"]) == (2, 2), stats
    assert set(sim.per_pid("import").values()) == {1}, sim.events()


def test_no_process_outlives_the_pool_after_errors_and_cancellation(make_standin):
    sim = make_standin("basic.json")

    async def main() -> BaseException | None:
        slow = None
        try:
            async with _pool(sim.argv, workers=2) as pool:
                hung = asyncio.create_task(
                    pool.run_command(MINIF2F_HEADER, _code("hang_1"), timeout_s=60))
                slow = asyncio.create_task(
                    pool.run_command(MINIF2F_HEADER, _code("slow_1"), timeout_s=60))
                while len(sim.events("command")) < 2:
                    await asyncio.sleep(0.02)
                hung.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await hung
                raise RuntimeError("leaving with a request in flight")
        except RuntimeError:
            assert slow is not None
            (outcome,) = await asyncio.gather(slow, return_exceptions=True)
            return outcome
        return None

    outcome = asyncio.run(main())
    # The request in flight when the pool closed gets an infrastructure error, not a hang.
    assert isinstance(outcome, LeanEnvError), outcome
    # (the no_leaked_processes fixture checks that no process is left, zombies included)
    assert len(sim.per_pid("import")) >= 2, sim.events()
