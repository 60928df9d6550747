"""One leanprover-community/repl process, driven synchronously (LeanDojo's `Dojo` style).

`ReplProcess` owns one REPL subprocess inside a `with` block: it starts it in its own
process group (so a kill reaches `lake env`'s child too), caps its address space with
RLIMIT_AS, and speaks the REPL's framing (REPL_PROTOCOL.md section 1): a JSON request ended
by a blank line, a JSON reply read up to the next blank line.

The REPL has no per-command timeout, so the wall-clock limit is ours: the reply is awaited
with `selectors` on the pipes (never `signal.alarm`, which is process-global and breaks
pools and threads), and on expiry the whole process group gets SIGKILL. stderr is drained
while waiting, so a chatty REPL cannot deadlock on a full pipe. No thread is started here.

Outcomes of Lean are values (`CommandResponse`, `TacticResponse`, `ErrorReply`); failures of
the process are typed exceptions (`lean_env.errors`): `ReplTimeoutError`, `ReplCrashedError`
(with `is_out_of_memory`), `ReplProtocolError`, `ReplStartError`. After any of them the
process is dead or considered unusable (`alive` is False).
"""

from __future__ import annotations

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
        self._stderr_tail = bytearray()
        self._unusable = False       # set after a protocol violation or a kill
        self._killed_by_client = False
        self._tree: list[psutil.Process] | None = None  # for rss_mb
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
        """
        if self._popen is None:
            return 0.0
        if self._tree is None:
            try:
                root = psutil.Process(self._popen.pid)
                self._tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                return 0.0
        total = 0
        for proc in self._tree:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total / 2**20

    @property
    def stderr_tail(self) -> str:
        return self._stderr_tail.decode("utf-8", errors="replace")

    # -- requests -----------------------------------------------------------------------------

    def request(self, payload: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """Send one request and return the raw reply dict.

        Raises ReplTimeoutError (no reply within `timeout_s` seconds; the group was killed),
        ReplCrashedError (the process exited mid-request), ReplProtocolError (not a JSON
        object; the process is killed, as its stream can no longer be trusted).
        """
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
        assert popen.stdin is not None and popen.stdout is not None and popen.stderr is not None
        pending = memoryview(encode_request(payload))
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as sel:
            sel.register(popen.stdin, selectors.EVENT_WRITE)
            sel.register(popen.stdout, selectors.EVENT_READ)
            sel.register(popen.stderr, selectors.EVENT_READ)
            scan_from = 0
            while True:
                if self._stdout_buf[:1].isspace():
                    # Newlines left over from the previous reply's terminator.
                    self._stdout_buf[:] = self._stdout_buf.lstrip()
                    scan_from = 0
                end = self._stdout_buf.find(b"\n\n", scan_from)
                if end >= 0:
                    break
                # The delimiter may straddle two reads: rescan from one byte back.
                scan_from = max(len(self._stdout_buf) - 1, 0)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.kill()
                    raise ReplTimeoutError(
                        f"REPL gave no reply within {timeout_s:g} s; process group killed",
                        limit_s=timeout_s)
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
                            raise self._crashed(sel)
                        self._stdout_buf += chunk
                    else:
                        chunk = os.read(popen.stderr.fileno(), _READ_CHUNK)
                        if chunk:
                            self._keep_stderr(chunk)
                        else:
                            sel.unregister(popen.stderr)
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

    def command(self, cmd: str, *, env: int | None = None, timeout_s: float,
                **options: Any) -> CommandResponse | ErrorReply:
        """Run Lean commands; `env=None` starts from scratch (the only way to `import`).

        `options` are passed through under their protocol names, e.g. `allTactics=True`.
        """
        payload: dict[str, Any] = {"cmd": cmd, **options}
        if env is not None:
            payload["env"] = env
        return parse_command_reply(self.request(payload, timeout_s=timeout_s))

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

    def _crashed(self, sel: selectors.BaseSelector) -> ReplCrashedError:
        """stdout closed mid-request: reap the process, collect stderr, describe the exit."""
        popen = self._popen
        assert popen is not None and popen.stderr is not None
        killed_by_client = self._killed_by_client
        try:
            returncode = popen.wait(timeout=_REAP_WAIT_S)
        except subprocess.TimeoutExpired:
            returncode = None
        self.kill()  # grandchildren of the group, and mark unusable
        if any(key.fileobj is popen.stderr for key in sel.get_map().values()):
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
