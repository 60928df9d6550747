"""One leanprover-community/repl process, driven synchronously (LeanDojo's `Dojo` style) or
from an asyncio event loop (`acommand`: the pool's way).

`ReplProcess` owns one REPL subprocess inside a `with` block: it starts it in its own
process group (so a kill reaches `lake env`'s child too), caps its address space with
RLIMIT_AS, and speaks the REPL's framing (REPL_PROTOCOL.md section 1): a JSON request ended
by a blank line, a JSON reply read up to the next blank line.

The REPL has no per-command timeout, so the wall-clock limit is ours: the reply is awaited
with `selectors` on the pipes (never `signal.alarm`, which is process-global and breaks
pools and threads), and on expiry the whole process group gets SIGKILL. stderr is drained
while waiting, so a chatty REPL cannot deadlock on a full pipe. No thread is started here.
`arequest`/`acommand` do the same on the running event loop: the request is written and the
reply read by the loop's own readiness callbacks on the pipes (no thread hop per request; only
describing a crash, which waits for the exit, runs in a thread), and a timer kills on expiry.

Outcomes of Lean are values (`CommandResponse`, `TacticResponse`, `ErrorReply`); failures of
the process are typed exceptions (`lean_env.errors`): `ReplTimeoutError`, `ReplCrashedError`
(with `is_out_of_memory`), `ReplProtocolError`, `ReplStartError`. After any of them the
process is dead or considered unusable (`alive` is False).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import selectors
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

from lean_env.errors import ReplCrashedError, ReplProtocolError, ReplStartError, ReplTimeoutError
from lean_env.protocol import (
    CommandResponse,
    ErrorReply,
    TacticResponse,
    decode_reply,
    encode_request,
    parse_command_reply,
    parse_tactic_reply,
)

_READ_CHUNK = 1 << 16
_STDERR_TAIL_BYTES = 8192
# Exit statuses that look like the OOM killer or our RLIMIT_AS cap: SIGKILL seen directly
# (-9) or through a shell / `lake env` wrapper (128 + 9).
_OOM_RETURNCODES = (-signal.SIGKILL, 128 + signal.SIGKILL)
_OOM_STDERR_MARKERS = ("memory", "bad_alloc")
_REAP_WAIT_S = 5.0
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _limit_address_space(limit_bytes: int) -> None:
    """Runs in the child between fork and exec: cap virtual memory (RLIMIT_AS)."""
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))


class ReplProcess:
    """A REPL subprocess with a wall-clock limit per request.

    `command` is the argv that starts one REPL (e.g. `lake env .../repl`, or
    `lean_env.standin.command(rules)`); `cwd` its working directory; `memory_limit_mb` its
    RLIMIT_AS in MiB (None: no cap); `env` extra environment variables laid over ours;
    `checked_by` the label verdicts built from its replies carry.

    `uses` counts the requests answered, the header import included. Not thread-safe for
    concurrent requests: one caller at a time. `kill()` alone may be called from any thread.
    """

    def __init__(self, command: list[str], *, cwd: Path | None = None,
                 memory_limit_mb: int | None, env: dict[str, str] | None = None,
                 checked_by: str) -> None:
        if not command:
            raise ReplStartError("empty REPL command")
        self.command_line = list(command)
        self.cwd = cwd
        self.memory_limit_mb = memory_limit_mb
        self.env = env
        self.checked_by = checked_by
        self.uses = 0
        self._popen: subprocess.Popen[bytes] | None = None
        self._stdout_buf = bytearray()
        self._scan_from = 0          # where the reply delimiter may start in _stdout_buf
        self._stderr_tail = bytearray()
        self._unusable = False       # set after a protocol violation or a kill
        self._killed_by_client = False
        self._tree: list[psutil.Process] | None = None  # for rss_mb
        self._statm: list[int] = []   # open /proc/PID/statm of the tree (Linux), for rss_mb
        self._lock = threading.Lock()  # orders start() against kill() from another thread

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> ReplProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def start(self) -> None:
        """Start the process (idempotent). Raises ReplStartError if it cannot be executed."""
        with self._lock:
            if self._popen is not None:
                return
            if self._killed_by_client:
                raise ReplStartError("REPL was closed before it started")
            preexec = None
            if self.memory_limit_mb is not None:
                preexec = functools.partial(_limit_address_space, self.memory_limit_mb << 20)
            env = None if self.env is None else {**os.environ, **self.env}
            try:
                self._popen = subprocess.Popen(
                    self.command_line, cwd=self.cwd, env=env, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                    start_new_session=True, preexec_fn=preexec, close_fds=True,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise ReplStartError(f"cannot start REPL {self.command_line[0]!r}: {exc}") from exc
            assert self._popen.stdin is not None
            # Non-blocking stdin: a large request is written piecewise as the pipe drains.
            os.set_blocking(self._popen.stdin.fileno(), False)

    def kill(self) -> None:
        """SIGKILL the whole process group. Safe from any thread, also before start()."""
        with self._lock:
            self._killed_by_client = True
            self._unusable = True
            if self._popen is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self._popen.pid, signal.SIGKILL)

    def close(self) -> None:
        """Kill the process group, reap the process, close the pipes (idempotent).

        Must not run while another thread is inside `request`; use `kill()` for that.
        """
        self.kill()
        popen = self._popen
        if popen is None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=_REAP_WAIT_S)
        for pipe in (popen.stdin, popen.stdout, popen.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        with self._lock:
            statm, self._statm = self._statm, []
        for fd in statm:
            with contextlib.suppress(OSError):
                os.close(fd)

    @property
    def pid(self) -> int | None:
        return None if self._popen is None else self._popen.pid

    @property
    def alive(self) -> bool:
        """True while the process runs and has not spoken out of protocol."""
        return self._popen is not None and not self._unusable and self._popen.poll() is None

    def rss_mb(self) -> float:
        """Resident memory of the whole process tree (lake env + repl), MiB; 0 if gone.

        The tree is listed once, on the first call (listing children scans all of /proc);
        the pool first asks after the header import, when `lake env` has started the REPL.
        On Linux each process's /proc/PID/statm stays open and is re-read (a few microseconds;
        the pool asks after every command), elsewhere psutil asks.
        """
        if self._popen is None:
            return 0.0
        if self._tree is None:
            try:
                root = psutil.Process(self._popen.pid)
                self._tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                return 0.0
            with self._lock:
                if not self._killed_by_client:
                    for proc in self._tree:
                        with contextlib.suppress(OSError):
                            self._statm.append(os.open(f"/proc/{proc.pid}/statm", os.O_RDONLY))
        if self._statm:
            pages = 0
            for fd in self._statm:
                with contextlib.suppress(OSError, ValueError, IndexError):
                    pages += int(os.pread(fd, 256, 0).split()[1])   # resident pages
            return pages * _PAGE_SIZE / 2**20
        total = 0
        for proc in self._tree:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total / 2**20

    @property
    def stderr_tail(self) -> str:
        return self._stderr_tail.decode("utf-8", errors="replace")

    # -- requests -----------------------------------------------------------------------------

    def _begin(self) -> subprocess.Popen[bytes]:
        """Checks before a request: started, usable, nothing unasked-for on stdout."""
        popen = self._popen
        if popen is None:
            raise ReplStartError("REPL not started")
        if self._unusable:
            raise ReplProtocolError("REPL is closed, or unusable after an earlier failure")
        if self._stdout_buf.strip():
            self.kill()
            raise ReplProtocolError(
                f"REPL wrote output between requests: {bytes(self._stdout_buf[:200])!r}")
        self._stdout_buf.clear()
        self._scan_from = 0
        return popen

    def _reply_end(self) -> int:
        """Offset of the blank line that ends the reply in `_stdout_buf`, or -1."""
        if self._stdout_buf[:1].isspace():
            # Newlines left over from the previous reply's terminator.
            self._stdout_buf[:] = self._stdout_buf.lstrip()
            self._scan_from = 0
        end = self._stdout_buf.find(b"\n\n", self._scan_from)
        if end < 0:
            # The delimiter may straddle two reads: rescan from one byte back.
            self._scan_from = max(len(self._stdout_buf) - 1, 0)
        return end

    def _finish(self, end: int) -> dict[str, Any]:
        """The reply that ends at `end`, decoded; the buffer keeps what follows it."""
        text = bytes(self._stdout_buf[:end])
        del self._stdout_buf[:end + 2]
        # Lean may end a reply with more than one newline; what follows is only whitespace.
        if not self._stdout_buf.strip():
            self._stdout_buf.clear()
        try:
            reply = decode_reply(text.decode("utf-8"))
        except (UnicodeDecodeError, ReplProtocolError) as exc:
            self.kill()
            raise ReplProtocolError(f"REPL wrote non-JSON output: {text[:200]!r}") from exc
        self.uses += 1
        return reply

    def _timed_out(self, timeout_s: float) -> ReplTimeoutError:
        self.kill()
        return ReplTimeoutError(f"REPL gave no reply within {timeout_s:g} s; process group killed",
                                limit_s=timeout_s)

    def request(self, payload: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """Send one request and return the raw reply dict.

        Raises ReplTimeoutError (no reply within `timeout_s` seconds; the group was killed),
        ReplCrashedError (the process exited mid-request), ReplProtocolError (not a JSON
        object; the process is killed, as its stream can no longer be trusted).
        """
        popen = self._begin()
        assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
        pending = memoryview(encode_request(payload))
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(popen.stdin, selectors.EVENT_WRITE)
            sel.register(popen.stdout, selectors.EVENT_READ)
            sel.register(popen.stderr, selectors.EVENT_READ)
            while True:
                end = self._reply_end()
                if end >= 0:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timed_out(timeout_s)
                for key, _ in sel.select(remaining):
                    if key.fileobj is popen.stdin:
                        try:
                            written = os.write(popen.stdin.fileno(), pending[:_READ_CHUNK])
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            # Died before reading it all: its exit shows up as EOF on stdout.
                            written = len(pending)
                        pending = pending[written:]
                        if not pending:
                            sel.unregister(popen.stdin)
                    elif key.fileobj is popen.stdout:
                        chunk = os.read(popen.stdout.fileno(), _READ_CHUNK)
                        if not chunk:
                            stderr_open = any(k.fileobj is popen.stderr
                                              for k in sel.get_map().values())
                            raise self._crashed(stderr_open)
                        self._stdout_buf += chunk
                    else:
                        chunk = os.read(popen.stderr.fileno(), _READ_CHUNK)
                        if chunk:
                            self._keep_stderr(chunk)
                        else:
                            sel.unregister(popen.stderr)
        return self._finish(end)

    async def arequest(self, payload: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """`request` on the running event loop: same reply, same exceptions.

        The loop's reader callbacks collect the reply as it arrives (stderr is drained the
        same way) and a timer kills the group at `timeout_s`. Cancelling the caller leaves
        the process mid-request: the caller must kill or discard it (the pool does).
        """
        popen = self._begin()
        assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
        loop = asyncio.get_running_loop()
        in_fd, out_fd, err_fd = popen.stdin.fileno(), popen.stdout.fileno(), popen.stderr.fileno()
        done: asyncio.Future[int] = loop.create_future()
        stderr_open = True
        writing = False     # a writer callback is registered (the request outgrew the pipe)
        pending = memoryview(encode_request(payload))

        def write() -> None:
            nonlocal pending, writing
            try:
                written = os.write(in_fd, pending[:_READ_CHUNK])
            except BlockingIOError:
                written = 0
            except BrokenPipeError:
                written = len(pending)   # its exit shows up as EOF on stdout
            pending = pending[written:]
            if not pending and writing:
                loop.remove_writer(in_fd)
                writing = False

        def read_stdout() -> None:
            if done.done():
                return
            try:
                chunk = os.read(out_fd, _READ_CHUNK)
            except BlockingIOError:
                return
            if not chunk:
                done.set_result(-1)        # EOF: the process is gone
                return
            self._stdout_buf += chunk
            end = self._reply_end()
            if end >= 0:
                done.set_result(end)

        def read_stderr() -> None:
            nonlocal stderr_open
            try:
                chunk = os.read(err_fd, _READ_CHUNK)
            except BlockingIOError:
                return
            if chunk:
                self._keep_stderr(chunk)
            else:
                stderr_open = False
                loop.remove_reader(err_fd)

        def expire() -> None:
            if not done.done():
                done.set_exception(self._timed_out(timeout_s))

        # (Registering only what is needed: asyncio's add/remove of an fd it does not know
        # goes through a KeyError, tens of microseconds per command.)
        loop.add_reader(out_fd, read_stdout)
        loop.add_reader(err_fd, read_stderr)
        timer = loop.call_later(timeout_s, expire)
        try:
            write()
            if pending:
                loop.add_writer(in_fd, write)
                writing = True
            end = await done
        finally:
            timer.cancel()
            loop.remove_reader(out_fd)
            if stderr_open:
                loop.remove_reader(err_fd)
            if writing:
                loop.remove_writer(in_fd)
        if end < 0:
            # Describing the crash waits for the exit: in a thread. This request ends only
            # after it (it reads our stderr pipe, which must not be closed under it).
            describe = loop.run_in_executor(None, self._crashed, stderr_open)
            try:
                crash = await asyncio.shield(describe)
            except asyncio.CancelledError:
                await asyncio.wait([describe])
                raise
            raise crash
        return self._finish(end)

    def command(self, cmd: str, *, env: int | None = None, timeout_s: float,
                **options: Any) -> CommandResponse | ErrorReply:
        """Run Lean commands; `env=None` starts from scratch (the only way to `import`).

        `options` are passed through under their protocol names, e.g. `allTactics=True`.
        """
        payload: dict[str, Any] = {"cmd": cmd, **options}
        if env is not None:
            payload["env"] = env
        return parse_command_reply(self.request(payload, timeout_s=timeout_s))

    async def acommand(self, cmd: str, *, env: int | None = None, timeout_s: float,
                       **options: Any) -> CommandResponse | ErrorReply:
        """`command` on the running event loop (see `arequest`)."""
        payload: dict[str, Any] = {"cmd": cmd, **options}
        if env is not None:
            payload["env"] = env
        return parse_command_reply(await self.arequest(payload, timeout_s=timeout_s))

    def tactic(self, tactic: str, proof_state: int, *, timeout_s: float) -> TacticResponse:
        """Run one tactic against a proof state (tactic mode)."""
        return parse_tactic_reply(
            self.request({"tactic": tactic, "proofState": proof_state}, timeout_s=timeout_s))

    def pickle_env(self, path: Path, env: int, *, timeout_s: float) -> CommandResponse | ErrorReply:
        """Write environment `env` to an .olean file."""
        return parse_command_reply(
            self.request({"pickleTo": str(path), "env": env}, timeout_s=timeout_s))

    def unpickle_env(self, path: Path, *, timeout_s: float) -> CommandResponse | ErrorReply:
        """Load an environment pickled by `pickle_env`; the reply carries its new env id."""
        return parse_command_reply(
            self.request({"unpickleEnvFrom": str(path)}, timeout_s=timeout_s))

    def pickle_proof_state(self, path: Path, proof_state: int, *,
                           timeout_s: float) -> TacticResponse:
        """Write a proof state to an .olean file."""
        return parse_tactic_reply(
            self.request({"pickleTo": str(path), "proofState": proof_state}, timeout_s=timeout_s))

    def unpickle_proof_state(self, path: Path, *, env: int | None = None,
                             timeout_s: float) -> TacticResponse:
        """Load a pickled proof state (optionally into `env`); the reply carries its new id."""
        payload: dict[str, Any] = {"unpickleProofStateFrom": str(path)}
        if env is not None:
            payload["env"] = env
        return parse_tactic_reply(self.request(payload, timeout_s=timeout_s))

    # -- failure handling ---------------------------------------------------------------------

    def _keep_stderr(self, chunk: bytes) -> None:
        self._stderr_tail += chunk
        del self._stderr_tail[:-_STDERR_TAIL_BYTES]

    def _crashed(self, stderr_open: bool) -> ReplCrashedError:
        """stdout closed mid-request: reap the process, collect stderr (while `stderr_open`),
        describe the exit. Blocks up to a few seconds (waits for the exit)."""
        popen = self._popen
        assert popen is not None and popen.stderr is not None
        killed_by_client = self._killed_by_client
        try:
            returncode = popen.wait(timeout=_REAP_WAIT_S)
        except subprocess.TimeoutExpired:
            returncode = None
        self.kill()  # grandchildren of the group, and mark unusable
        if stderr_open:
            # Whatever the process said on its way out (std::bad_alloc, a Lean panic).
            with selectors.DefaultSelector() as err_sel:
                err_sel.register(popen.stderr, selectors.EVENT_READ)
                while err_sel.select(0.2):
                    chunk = os.read(popen.stderr.fileno(), _READ_CHUNK)
                    if not chunk:
                        break
                    self._keep_stderr(chunk)
        stderr = self.stderr_tail
        if killed_by_client:
            return ReplCrashedError("REPL was killed by the client mid-request",
                                    returncode=returncode, stderr_tail=stderr)
        oom = returncode in _OOM_RETURNCODES or any(
            marker in stderr.lower() for marker in _OOM_STDERR_MARKERS)
        last_line = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        return ReplCrashedError(
            f"REPL exited mid-request with status {returncode}"
            + (" (looks out of memory)" if oom else "")
            + (f": {last_line[:200]}" if last_line else ""),
            returncode=returncode, stderr_tail=stderr, is_out_of_memory=oom)
