"""ReplProcess against stand-in REPL processes: protocol round trips and typed failures."""

from __future__ import annotations

import asyncio
import resource
import shlex
import sys
import time
from pathlib import Path

import psutil
import pytest

from lean_env.errors import ReplCrashedError, ReplProtocolError, ReplStartError, ReplTimeoutError
from lean_env.protocol import CommandResponse, ErrorReply
from lean_env.repl import ReplProcess
from lean_env.standin import CHECKED_BY
from tests.lean_env.conftest import MINIF2F_HEADER

pytestmark = pytest.mark.usefixtures("no_leaked_processes")


def _repl(argv: list[str], memory_limit_mb: int | None = None) -> ReplProcess:
    return ReplProcess(argv, memory_limit_mb=memory_limit_mb, checked_by=CHECKED_BY)


def _header_env(repl: ReplProcess) -> int:
    reply = repl.command(MINIF2F_HEADER, timeout_s=10)
    assert isinstance(reply, CommandResponse) and reply.env is not None, reply
    return reply.env


def test_command_round_trips(make_standin):
    with _repl(make_standin("basic.json").argv) as repl:
        assert repl.checked_by == CHECKED_BY and repl.alive and repl.pid is not None
        env = _header_env(repl)
        ok = repl.command("theorem t (a b : ℕ) : a + b = b + a := by\n  omega\n\n#print axioms t",
                          env=env, timeout_s=10)
        assert isinstance(ok, CommandResponse) and ok.env == env + 1, ok
        assert [(m.severity, m.text, m.line) for m in ok.messages] == [
            ("info", "'t' depends on axioms: [propext, Classical.choice, Quot.sound]", 4)], ok
        bad = repl.command("theorem bad_1 : 1 = 2 := by\n  simp", env=env, timeout_s=10)
        assert isinstance(bad, CommandResponse), bad
        assert [(m.severity, m.line, m.column, m.end_line, m.end_column) for m in bad.errors] == [
            ("error", 2, 2, 2, 7)], bad
        assert bad.errors[0].text == "unsolved goals\n⊢ False", bad
        pure = repl.command("theorem pure_1 : True := trivial\n#print axioms pure_1", env=env,
                            timeout_s=10)
        assert isinstance(pure, CommandResponse)
        assert pure.messages[0].text == "'pure_1' does not depend on any axioms", pure
        unknown = repl.command("theorem u : True := trivial", env=999, timeout_s=10)
        assert unknown == ErrorReply("Unknown environment."), unknown
        late_import = repl.command("import Mathlib", env=env, timeout_s=10)
        assert isinstance(late_import, CommandResponse) and late_import.errors, late_import
        assert "invalid 'import' command" in late_import.errors[0].text, late_import
        assert repl.uses == 6, repl.uses


def test_sorry_tactic_mode_and_pickling(make_standin, tmp_path: Path):
    with _repl(make_standin("basic.json").argv) as repl:
        env = _header_env(repl)
        reply = repl.command("theorem t (x : Unit) : Nat := by sorry", env=env, timeout_s=10)
        assert isinstance(reply, CommandResponse) and len(reply.sorries) == 1, reply
        sorry = reply.sorries[0]
        assert (sorry.line, sorry.column, sorry.goal) == (1, 33, "⊢ Nat"), sorry
        assert [m.text for m in reply.messages] == ["declaration uses 'sorry'"], reply
        assert sorry.proof_state is not None
        step = repl.tactic("apply Int.natAbs", sorry.proof_state, timeout_s=10)
        assert (step.goals, step.proof_status) == (("x : Unit\n⊢ Int",),
                                                   "Incomplete: open goals remain"), step
        assert step.proof_state is not None
        done = repl.tactic("exact -37", step.proof_state, timeout_s=10)
        assert (done.goals, done.proof_status, done.error) == ((), "Completed", None), done
        failed = repl.tactic("bad_tactic", step.proof_state, timeout_s=10)
        assert failed.error == "Lean error:\nunknown tactic" and failed.proof_state is None, failed
        assert repl.tactic("rfl", 999, timeout_s=10).error == "Unknown proof state."

        env_file, state_file = tmp_path / "env.olean", tmp_path / "state.olean"
        assert repl.pickle_env(env_file, env, timeout_s=10) == CommandResponse(env=env)
        restored = repl.unpickle_env(env_file, timeout_s=10)
        assert isinstance(restored, CommandResponse) and restored.env not in (None, env), restored
        repl.pickle_proof_state(state_file, step.proof_state, timeout_s=10)
        loaded = repl.unpickle_proof_state(state_file, env=restored.env, timeout_s=10)
        assert loaded.goals == ("x : Unit\n⊢ Int",) and loaded.proof_state not in (
            None, step.proof_state), loaded


def test_large_request_and_stderr_flood_do_not_deadlock(make_standin):
    with _repl(make_standin("basic.json").argv) as repl:
        env = _header_env(repl)
        # 1 MiB request: more than a pipe buffer, written while the REPL reads.
        big = "-- " + "x" * (1 << 20) + "\ntheorem big : True := trivial"
        assert isinstance(repl.command(big, env=env, timeout_s=10), CommandResponse)
        # 512 KiB on stderr before the reply: only a drained pipe lets the reply through.
        chatty = repl.command("theorem chatty_1 : True := trivial", env=env, timeout_s=10)
        assert isinstance(chatty, CommandResponse) and chatty.env is not None, chatty
        assert "stand-in chatter" in repl.stderr_tail


def test_timeout_kills_the_whole_process_group(make_standin):
    argv = make_standin("basic.json").argv
    # A grandchild in the REPL's process group, like the `repl` under `lake env`.
    wrapped = ["sh", "-c", f"sleep 300 & exec {shlex.join(argv)}"]
    with _repl(wrapped) as repl:
        env = _header_env(repl)
        group = [repl.pid, *(c.pid for c in psutil.Process(repl.pid).children())]
        assert len(group) == 2, group
        start = time.monotonic()
        with pytest.raises(ReplTimeoutError) as info:
            repl.command("theorem hang_1 : True := trivial", env=env, timeout_s=0.3)
        elapsed = time.monotonic() - start
        assert info.value.limit_s == 0.3 and 0.3 <= elapsed < 2.0, (info.value.limit_s, elapsed)
        assert not repl.alive
        deadline = time.monotonic() + 3
        while any(_running(pid) for pid in group) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not any(_running(pid) for pid in group), [
            (pid, _running(pid)) for pid in group]


def _running(pid: int | None) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize(("name", "returncode", "oom", "stderr"), [
    ("crash_1", 1, False, "injected crash"),
    ("oom_1", -9, True, ""),
])
def test_crash_is_typed(make_standin, name, returncode, oom, stderr):
    with _repl(make_standin("basic.json").argv) as repl:
        env = _header_env(repl)
        with pytest.raises(ReplCrashedError) as info:
            repl.command(f"theorem {name} : True := trivial", env=env, timeout_s=10)
        err = info.value
        assert (err.returncode, err.is_out_of_memory) == (returncode, oom), (err, err.returncode)
        assert stderr in err.stderr_tail, err.stderr_tail
        assert not repl.alive


def test_garbage_makes_the_process_unusable(make_standin):
    with _repl(make_standin("basic.json").argv) as repl:
        env = _header_env(repl)
        with pytest.raises(ReplProtocolError, match="non-JSON"):
            repl.command("theorem garbage_1 : True := trivial", env=env, timeout_s=10)
        assert not repl.alive
        with pytest.raises(ReplProtocolError, match="unusable after an earlier failure"):
            repl.command("theorem t : True := trivial", env=env, timeout_s=10)


def test_rlimit_as_is_applied_and_exceeding_it_is_out_of_memory(make_standin):
    with _repl(make_standin("basic.json").argv, memory_limit_mb=256) as repl:
        limit = psutil.Process(repl.pid).rlimit(psutil.RLIMIT_AS)
        assert limit == (256 << 20, 256 << 20), limit
        env = _header_env(repl)
        # The rule keeps 300 MiB: beyond the cap, Python's allocation fails (MemoryError).
        with pytest.raises(ReplCrashedError) as info:
            repl.command("theorem grow_1 : True := trivial", env=env, timeout_s=10)
        assert info.value.is_out_of_memory, (info.value, info.value.stderr_tail)
    # The cap is the child's alone.
    assert resource.getrlimit(resource.RLIMIT_AS)[0] != 256 << 20


def test_unstartable_command_is_a_start_error(tmp_path: Path):
    with pytest.raises(ReplStartError, match="cannot start REPL"):
        _repl([str(tmp_path / "no-such-repl")]).start()


def test_process_exiting_on_its_own_is_a_crash():
    # A "REPL" that exits at once: the request meets a closed pipe, not a hang.
    with _repl([sys.executable, "-c", "pass"]) as repl, pytest.raises(ReplCrashedError) as info:
        repl.command("theorem t : True := trivial", timeout_s=10)
    assert info.value.returncode == 0, info.value


def test_framing_tolerates_multiline_json_and_extra_blank_lines():
    # Replies like Lean's Json.pretty: broken over lines, with surplus newlines around them.
    script = (
        "import sys\n"
        "block, n = [], 0\n"
        "for line in sys.stdin:\n"
        "    if line.strip():\n"
        "        block.append(line)\n"
        "    elif block:\n"
        "        block = []\n"
        "        sys.stdout.write('\\n{\"env\":\\n %d}\\n\\n\\n' % n)\n"
        "        sys.stdout.flush()\n"
        "        n += 1\n"
    )
    with _repl([sys.executable, "-c", script]) as repl:
        envs = [repl.command(f"theorem t{i} : True := trivial", env=0, timeout_s=10)
                for i in range(3)]
    assert envs == [CommandResponse(env=i) for i in range(3)], envs


# -- the event-loop path (`acommand`, what the pool uses): same replies, same failures ----------


def test_acommand_round_trips_floods_and_framing(make_standin):
    async def run() -> None:
        with _repl(make_standin("basic.json").argv) as repl:
            env = _header_env(repl)
            ok = await repl.acommand("theorem t (a : ℕ) : a = a := rfl\n\n#print axioms t",
                                     env=env, timeout_s=10)
            assert isinstance(ok, CommandResponse) and ok.env == env + 1, ok
            assert [(m.severity, m.line) for m in ok.messages] == [("info", 3)], ok
            big = "-- " + "x" * (1 << 20) + "\ntheorem big : True := trivial"
            assert isinstance(await repl.acommand(big, env=env, timeout_s=10), CommandResponse)
            chatty = await repl.acommand("theorem chatty_1 : True := trivial", env=env,
                                         timeout_s=10)
            assert isinstance(chatty, CommandResponse) and chatty.env is not None, chatty
            assert "stand-in chatter" in repl.stderr_tail
            # Sync and async requests share one framing state.
            assert repl.command("theorem s : True := trivial", env=env, timeout_s=10).env \
                == env + 4
            assert repl.uses == 5, repl.uses

    asyncio.run(run())


def test_acommand_timeout_crash_and_garbage_are_typed(make_standin):
    argv = make_standin("basic.json").argv

    async def run() -> None:
        with _repl(argv) as repl:
            env = _header_env(repl)
            start = time.monotonic()
            with pytest.raises(ReplTimeoutError) as timeout:
                await repl.acommand("theorem hang_1 : True := trivial", env=env, timeout_s=0.3)
            elapsed = time.monotonic() - start
            assert timeout.value.limit_s == 0.3 and 0.3 <= elapsed < 2.0, elapsed
            assert not repl.alive
        with _repl(argv) as repl:
            env = _header_env(repl)
            with pytest.raises(ReplCrashedError) as crash:
                await repl.acommand("theorem crash_1 : True := trivial", env=env, timeout_s=10)
            assert crash.value.returncode == 1 and "injected crash" in crash.value.stderr_tail, \
                (crash.value, crash.value.stderr_tail)
        with _repl(argv) as repl:
            env = _header_env(repl)
            with pytest.raises(ReplProtocolError, match="non-JSON"):
                await repl.acommand("theorem garbage_1 : True := trivial", env=env, timeout_s=10)
            assert not repl.alive

    asyncio.run(run())


def test_cancelled_acommand_leaves_no_callbacks_on_the_loop(make_standin):
    async def run() -> None:
        with _repl(make_standin("basic.json").argv) as repl:
            env = _header_env(repl)
            task = asyncio.ensure_future(
                repl.acommand("theorem hang_1 : True := trivial", env=env, timeout_s=30))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            loop = asyncio.get_running_loop()
            fds = [p.fileno() for p in (repl._popen.stdin, repl._popen.stdout,  # type: ignore[union-attr]
                                        repl._popen.stderr)]  # type: ignore[union-attr]
            # The loop's selector knows none of the pipes any more (remove_* says False).
            assert not any(loop.remove_reader(fd) or loop.remove_writer(fd) for fd in fds), fds
            repl.kill()

    asyncio.run(run())
