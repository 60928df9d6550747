"""A pool of warm REPL processes keyed by import header (kimina-lean-server's design).

Importing Mathlib costs seconds and gigabytes, so each process imports its header once (a
command without env) and every candidate of that header then runs against the returned env
id: candidates never see each other, and none pays the import again. Headers are matched
exactly, after trailing whitespace is normalised. With `config.key_by_imports` (kimina's way),
commands are keyed by the header's import lines only: its `set_option`/`open` lines travel
with each command, on the command's first line (which `acceptance.lean_command` leaves blank
where the header was; otherwise in front of that line, and Lean's columns there are moved
back), so lines never move,
so problems whose headers differ only in those share processes. Leases (tactic sessions) always
import the whole header.

Lifecycle of a process: started and importing -> idle <-> busy -> discarded. A process is
discarded when it timed out (its group was killed), crashed, spoke garbage, served
`config.max_uses` commands, or grew above `config.max_rss_mb`; a replacement for its header
starts in the background at once (the warm spare), so a crash does not stall the queue.
At most `config.workers` processes live at a time; a request for a header no idle process
has takes a free slot, or evicts the process of another header that has been idle longest.
`prewarm(headers)` starts processes for a problem set's headers before the first request.

Crashes and garbage are retried on a fresh process up to `config.retries` times; a timeout
is not retried (the candidate had its time). Requests beyond `config.max_queue` waiting
ones raise `PoolSaturatedError` at once.

A process checked in goes straight to the first request waiting for its header (no idle
hop, no wake-up of every waiter: with hundreds of requests queued, as behind the HTTP service,
waking them all cost more CPU per request than the rest of the pool).

Concurrency: the pool lives on one asyncio event loop. Commands are written and their replies
read by the loop itself (`ReplProcess.acommand`: readiness callbacks on the pipes, no thread
hop); a process checked in goes to the waiting request at once, and the request that returned
it yields once so that the next command is on its way to the REPL before the returned reply
is judged. Starts (header imports), closes and leases' blocking calls run in the pool's own
thread pool, so the loop never blocks. Used with `async with`, it runs on the caller's
loop; used with plain `with`, it runs its loop in a thread of its own and the sync methods
(`run_sync`, `run_batch`, `lease`) submit to it. No process outlives the pool: closing it
kills every process group it started, also after errors and cancellations.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from lean_env.config import VerifierConfig
from lean_env.errors import (
    LeanEnvError,
    PoolSaturatedError,
    ReplCrashedError,
    ReplProtocolError,
    ReplStartError,
    ReplTimeoutError,
)
from lean_env.protocol import CommandResponse, ErrorReply
from lean_env.repl import ReplProcess

log = logging.getLogger(__name__)
T = TypeVar("T")


def normalise_header(header: str) -> str:
    """The pool's key for a header: trailing whitespace dropped from every line and the end."""
    return "\n".join(line.rstrip() for line in header.rstrip().splitlines())


def split_header(header: str) -> tuple[str, str]:
    """(imports, prelude): the header's import lines (normalised: the pool's key) and its
    `set_option`/`open` commands joined on one line (Lean needs no newline between commands).

    Conservative: a header holding anything else (another command, a comment after code, a
    command over several lines, `... in`) comes back whole with an empty prelude.
    """
    normalised = normalise_header(header)
    imports: list[str] = []
    prelude: list[str] = []
    for line in normalised.splitlines():
        text = line.strip()
        if not text or text.startswith("--"):
            continue   # blank, or a whole-line comment
        words = text.split()
        if words[0] == "import" and not prelude and len(words) == 2:
            imports.append(text)
        elif words[0] in ("set_option", "open") and line == text and words[-1] != "in" \
                and "--" not in text and "/-" not in text:
            prelude.append(text)
        else:
            return normalised, ""
    return "\n".join(imports), " ".join(prelude)


def _with_prelude(prelude: str, code: str) -> tuple[str, int]:
    """`code` with `prelude` (the header's `set_option`/`open` commands, one line) in front, on
    the first line, and the columns Lean's positions on that line must move back by. Lines never
    move: messages keep the candidate's own line numbers (the judge reads its answers by line,
    and repair shows Lean's errors at the candidate's lines)."""
    first, _, _ = code.partition("\n")
    if not first.strip():
        return prelude + code, 0
    return prelude + " " + code, len(prelude) + 1


def _moved_back(reply: CommandResponse | ErrorReply, columns: int) -> CommandResponse | ErrorReply:
    """`reply` with positions on line 1 moved `columns` back (a message inside the prelude
    stays at column 0)."""
    if not columns or not isinstance(reply, CommandResponse):
        return reply

    def left(line: int, column: int) -> int:
        return max(0, column - columns) if line == 1 else column

    return dataclasses.replace(
        reply,
        messages=tuple(dataclasses.replace(
            m, column=left(m.line, m.column),
            end_column=None if m.end_column is None or m.end_line is None
            else left(m.end_line, m.end_column))
            for m in reply.messages),
        sorries=tuple(dataclasses.replace(s, column=left(s.line, s.column)) for s in reply.sorries),
        tactics=tuple(dataclasses.replace(t, column=left(t.line, t.column)) for t in reply.tactics))


@dataclass(eq=False)
class _Repl:
    """A pooled process and the env id of its imported header."""

    process: ReplProcess
    header: str
    env: int | None = None
    rss_mb: float = 0.0
    inflight: asyncio.Future[Any] | None = None   # the thread or command now using `process`
    idle_since: float = 0.0                       # time.monotonic() of the last check-in

    @property
    def commands(self) -> int:
        return max(self.process.uses - 1, 0)  # the header import is not a command


class ReplPool:
    """`config.workers` warm REPLs keyed by header; see the module docstring.

    `command` starts one REPL (argv), `cwd` is its working directory, `checked_by` the label
    carried into verdicts.
    """

    def __init__(self, config: VerifierConfig, *, command: list[str], cwd: Path | None = None,
                 checked_by: str) -> None:
        self.config = config
        self.command = list(command)
        self.cwd = cwd
        self.checked_by = checked_by
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Requests waiting for a process, first come first served: (key, whole, future). A
        # check-in hands its process straight to the first waiter that can use it; a freed
        # slot or an evictable idle process wakes one waiter (future result None) to retry.
        self._waiters: collections.deque[tuple[str, str | None, asyncio.Future[_Repl | None]]] = \
            collections.deque()
        self._closing = False
        self._idle: dict[str, list[_Repl]] = {}
        self._live: set[_Repl] = set()               # starting, idle and busy: at most `workers`
        self._processes: set[ReplProcess] = set()    # every process not yet closed
        self._in_worker: set[asyncio.Future[Any]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiting = 0
        self._counts = dict.fromkeys(
            ("started", "start_failures", "recycled", "crashed", "protocol_errors", "timeouts",
             "retries", "evicted", "served", "leases"), 0)

    # -- async lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> ReplPool:
        self._open(asyncio.get_running_loop())
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None:
            raise RuntimeError("ReplPool is already open")
        self._loop = loop
        self._closing = False
        # Starts and commands block in these threads: one per process, plus room for the
        # closes of discarded processes and the starts of their replacements.
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=2 * self.config.workers + 2, thread_name_prefix="repl-pool")

    async def aclose(self) -> None:
        """Kill every process, wait for the worker threads, reap everything (idempotent)."""
        if self._loop is None or self._closing:
            return
        self._closing = True
        try:
            while self._waiters:
                _, _, waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
            # Killing first makes every blocked read return at once (EOF).
            for process in list(self._processes):
                process.kill()
            while self._in_worker or self._tasks:
                await asyncio.gather(*self._in_worker, *self._tasks, return_exceptions=True)
            processes = list(self._processes)
            await asyncio.gather(*(self._to_thread(p.close) for p in processes),
                                 return_exceptions=True)
        finally:
            for process in list(self._processes):
                process.close()  # only reached with threads gone; close() then is quick
            self._processes.clear()
            self._live.clear()
            self._idle.clear()
            if self._executor is not None:
                self._executor.shutdown(wait=True)
            self._executor = None
            self._loop = None

    # -- sync lifecycle (the pool's own loop in a thread) -------------------------------------------

    def __enter__(self) -> ReplPool:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="repl-pool-loop", daemon=True)
        thread.start()
        self._loop_thread = thread
        try:
            asyncio.run_coroutine_threadsafe(self._open_async(), loop).result()
        except BaseException:
            self._stop_loop(loop, thread)
            raise
        return self

    async def _open_async(self) -> None:
        self._open(asyncio.get_running_loop())

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        loop, thread = self._loop, self._loop_thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result()
        finally:
            self._stop_loop(loop, thread)

    def _stop_loop(self, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        self._loop_thread = None
        self._loop = None

    @property
    def is_open(self) -> bool:
        return self._loop is not None and not self._closing

    def run_sync(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the pool's loop from synchronous code and return its result."""
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("ReplPool is not open: use it in a `with` or `async with` block")
        if threading.current_thread() is self._loop_thread or _running_loop() is loop:
            coro.close()
            raise RuntimeError("sync ReplPool call from inside its event loop: await the async API")
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: do not leave the request running
            raise

    # -- commands ---------------------------------------------------------------------------------

    async def run_command(self, header: str, code: str, *, timeout_s: float | None = None,
                          **options: Any) -> CommandResponse | ErrorReply:
        """Run `code` in the env of `header` on a warm process; see `run_command_timed`."""
        reply, _ = await self.run_command_timed(header, code, timeout_s=timeout_s, **options)
        return reply

    async def run_command_timed(self, header: str, code: str, *, timeout_s: float | None = None,
                                **options: Any) -> tuple[CommandResponse | ErrorReply, float]:
        """Run `code` against `header`'s env; also return the seconds Lean took (no queueing).

        `timeout_s` defaults to `config.timeout_s`. Returns Lean's reply: a CommandResponse, or
        an ErrorReply such as `"Lean error:..."`. Raises ReplTimeoutError (the process was
        killed and is being replaced), PoolSaturatedError, or after `config.retries` retries
        of crashes, garbage and failed starts, the last LeanEnvError.
        """
        whole = normalise_header(header)
        key, prelude = split_header(header) if self.config.key_by_imports else (whole, "")
        limit = self.config.timeout_s if timeout_s is None else timeout_s
        last_error: LeanEnvError | None = None
        for attempt in range(self.config.retries + 1):
            if attempt:
                self._counts["retries"] += 1
            try:
                # A process that imported the whole header (a lease's) serves it as is.
                repl = await self._checkout(key, whole=whole if prelude else None)
            except (ReplStartError, ReplCrashedError, ReplProtocolError) as exc:
                last_error = exc
                self._raise_if_closing()
                continue
            env = repl.env
            text, moved = _with_prelude(prelude, code) if prelude and repl.header == key \
                else (code, 0)
            try:
                reply, seconds = await self._run_on(repl, text, env, limit, options)
            except ReplTimeoutError:
                self._counts["timeouts"] += 1
                self._discard(repl)
                raise
            except (ReplCrashedError, ReplProtocolError) as exc:
                self._counts["crashed" if isinstance(exc, ReplCrashedError)
                             else "protocol_errors"] += 1
                self._discard(repl)
                last_error = exc
                continue
            if isinstance(reply, ErrorReply) and reply.message == "Unknown environment.":
                # Our own env id was refused: the process lost its state. Never the candidate's fault.
                self._counts["protocol_errors"] += 1
                self._discard(repl)
                last_error = ReplProtocolError(f"REPL forgot header env {env}: {reply.message}")
                continue
            self._counts["served"] += 1
            if self._checkin(repl):
                # Handed to a waiting request: let it send its command before this one's
                # reply is judged (and before the caller's next static checks run).
                await asyncio.sleep(0)
            return _moved_back(reply, moved), seconds
        assert last_error is not None
        raise last_error

    def run_batch(self, items: Sequence[tuple[str, str]], *, timeout_s: float | None = None,
                  ) -> list[CommandResponse | ErrorReply | LeanEnvError]:
        """Sync batch API: run (header, code) pairs; failures come back as LeanEnvError values."""

        async def one(header: str, code: str) -> CommandResponse | ErrorReply | LeanEnvError:
            try:
                return await self.run_command(header, code, timeout_s=timeout_s)
            except LeanEnvError as exc:
                return exc

        async def run_all() -> list[CommandResponse | ErrorReply | LeanEnvError]:
            return await gather_bounded([functools.partial(one, h, c) for h, c in items],
                                        limit=self.config.workers * 2)

        return self.run_sync(run_all())

    # -- leases (tactic sessions) -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def alease(self, header: str, *, timeout_s: float | None = None,
                     ) -> AsyncIterator[tuple[ReplProcess, int]]:
        """A process of its own with `header` imported, and the header's env id.

        The holder may send any requests (tactic mode, pickling) from one thread at a time.
        `timeout_s` bounds the header import (default `config.header_timeout_s`). On a clean
        exit the process goes back to the pool (recycled if worn out); after an exception,
        or if it died, it is discarded and replaced.
        """
        key = normalise_header(header)
        repl = await self._checkout(key, import_timeout_s=timeout_s)
        self._counts["leases"] += 1
        assert repl.env is not None
        clean = False
        try:
            yield repl.process, repl.env
            clean = True
        finally:
            if clean and repl.process.alive:
                repl.rss_mb = await self._to_thread(repl.process.rss_mb)
                self._checkin(repl)
            else:
                self._discard(repl)

    @contextlib.contextmanager
    def lease(self, header: str, *, timeout_s: float | None = None,
              ) -> Iterator[tuple[ReplProcess, int]]:
        """Synchronous `alease`, for code outside the pool's event loop."""
        manager = self.alease(header, timeout_s=timeout_s)
        leased = self.run_sync(manager.__aenter__())
        try:
            yield leased
        except BaseException as exc:
            self.run_sync(manager.__aexit__(type(exc), exc, exc.__traceback__))
            raise
        self.run_sync(manager.__aexit__(None, None, None))

    # -- pre-warming ------------------------------------------------------------------------------

    async def prewarm(self, headers: Sequence[str]) -> int:
        """Start processes for `headers` (e.g. a problem set's) before any request needs them:
        one per distinct key while slots are free, then more for the most common keys, up to
        `config.workers` in all, all at once. Returns how many started; a header that fails to
        import is logged and skipped (its requests then fail as they would have)."""
        self._raise_if_closing()
        keys = [split_header(h)[0] if self.config.key_by_imports else normalise_header(h)
                for h in headers]
        ranked = [k for k, _ in collections.Counter(keys).most_common()]
        free = self.config.workers - len(self._live)
        repls = [self._new_repl(ranked[i % len(ranked)]) for i in range(free if ranked else 0)]

        async def start(repl: _Repl) -> bool:
            try:
                await self._start(repl, None)
            except LeanEnvError as exc:
                log.warning("pre-warming a REPL for %r failed: %s", repl.header[:80], exc)
                self._discard(repl, replace=False)
                return False
            self._checkin(repl)
            return True

        return sum(await asyncio.gather(*(start(r) for r in repls)))

    # -- statistics ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Counters since open, and the pool's shape right now.

        started/start_failures: processes started (header imported) / that failed to;
        recycled: retired after max_uses or max_rss_mb; crashed, protocol_errors, timeouts:
        processes lost to each; retries: extra attempts; evicted: idle processes closed for
        another header; served: commands answered; leases; live/idle/busy: processes now;
        waiting: requests queued for a process.
        """
        loop = self._loop
        if loop is not None and self._loop_thread is not None \
                and threading.current_thread() is not self._loop_thread:
            # Read on the loop's thread, where the pool's state changes.
            return asyncio.run_coroutine_threadsafe(self._stats_now(), loop).result()
        return self._snapshot()

    async def _stats_now(self) -> dict[str, int]:
        return self._snapshot()

    def _snapshot(self) -> dict[str, int]:
        idle = sum(len(v) for v in self._idle.values())
        return {**self._counts, "live": len(self._live), "idle": idle,
                "busy": len(self._live) - idle, "waiting": self._waiting}

    # -- internals ----------------------------------------------------------------------------------

    def _raise_if_closing(self) -> None:
        if self._closing or self._loop is None:
            raise ReplStartError("REPL pool is closed")

    async def _to_thread(self, fn: Callable[[], T], *, repl: _Repl | None = None) -> T:
        """Run blocking `fn` in the pool's threads, recording it as `repl`'s user.

        Shielded: a cancelled caller leaves the thread running (its process is killed, so it
        returns at once); `aclose` and `_close_and_replace` wait for it before closing pipes.
        """
        assert self._loop is not None
        future = self._loop.run_in_executor(self._executor, fn)
        self._in_worker.add(future)
        future.add_done_callback(self._in_worker.discard)
        # A cancelled caller never reads the outcome (the killed process's crash): mark it
        # read, or asyncio logs "Future exception was never retrieved" for each cancellation.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        if repl is not None:
            repl.inflight = future
        return await asyncio.shield(future)

    async def _run_on(self, repl: _Repl, text: str, env: int | None, limit: float,
                      options: dict[str, Any]) -> tuple[CommandResponse | ErrorReply, float]:
        """One command on `repl`'s process, on the loop; its reply and the seconds it took."""
        assert self._loop is not None
        using = self._loop.create_future()   # done when nothing touches the pipes any more
        self._in_worker.add(using)
        repl.inflight = using
        start = time.perf_counter()
        try:
            reply = await repl.process.acommand(text, env=env, timeout_s=limit, **options)
            seconds = time.perf_counter() - start
        except asyncio.CancelledError:
            repl.process.kill()
            self._discard(repl)
            raise
        finally:
            using.set_result(None)
            self._in_worker.discard(using)
        # Resident memory, for max_rss_mb: two small /proc reads (the process tree was
        # listed after the header import, in a thread).
        repl.rss_mb = repl.process.rss_mb()
        return reply, seconds

    async def _checkout(self, header: str, *, import_timeout_s: float | None = None,
                        whole: str | None = None) -> _Repl:
        """An idle process with `header` imported (or, first, one with `whole` imported):
        reuse one, start one, or evict and start."""
        # No lock: everything below runs on the pool's loop, and nothing awaits between a
        # decision and the state change it makes.
        while True:
            self._raise_if_closing()
            idle = (whole is not None and self._idle.get(whole)) or self._idle.get(header)
            if idle:
                return idle.pop()
            if len(self._live) < self.config.workers:
                break
            victim = self._evictable(header)
            if victim is not None:
                self._counts["evicted"] += 1
                self._discard(victim, replace=False)
                break
            if self._waiting >= self.config.max_queue:
                raise PoolSaturatedError(
                    f"{self._waiting} requests already wait for a REPL "
                    f"(max_queue={self.config.max_queue})")
            assert self._loop is not None
            entry = (header, whole, self._loop.create_future())
            self._waiters.append(entry)
            self._waiting += 1
            try:
                handed = await entry[2]
            except asyncio.CancelledError:
                waiter = entry[2]
                if waiter.done() and not waiter.cancelled():
                    given = waiter.result()
                    if given is not None:
                        self._checkin(given)    # handed over as we were cancelled: pass it on
                    else:
                        self._wake_one()        # the wake was ours: pass it on
                raise
            finally:
                self._waiting -= 1
                waiter = entry[2]
                if not (waiter.done() and not waiter.cancelled() and waiter.result() is not None):
                    # A handed-over entry was removed by _checkin; a failed remove would cost
                    # its error message, which formats the future (~30 us a request).
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(entry)
            if handed is not None:
                return handed
        repl = self._new_repl(header)
        try:
            await self._start(repl, import_timeout_s)
        except BaseException:
            self._discard(repl, replace=False)
            raise
        return repl

    def _evictable(self, header: str) -> _Repl | None:
        """The idle process of another header that has been idle longest, if any."""
        oldest: _Repl | None = None
        for other, idle in self._idle.items():
            if other != header and idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]   # each list is in check-in order
        if oldest is not None:
            self._idle[oldest.header].pop(0)
        return oldest

    def _new_repl(self, header: str) -> _Repl:
        process = ReplProcess(self.command, cwd=self.cwd, memory_limit_mb=self.config.memory_limit_mb,
                              checked_by=self.checked_by)
        repl = _Repl(process=process, header=header)
        self._live.add(repl)
        self._processes.add(process)
        return repl

    async def _start(self, repl: _Repl, import_timeout_s: float | None) -> None:
        """Start the process and import the header (a command without env) in a worker thread.

        Every failure is a ReplStartError (a slow import is not the candidate's timeout) or
        the crash/protocol error that caused it.
        """
        limit = self.config.header_timeout_s if import_timeout_s is None else import_timeout_s

        def start_and_import() -> CommandResponse | ErrorReply:
            repl.process.start()
            reply = repl.process.command(repl.header, timeout_s=limit)
            repl.rss_mb = repl.process.rss_mb()   # lists the process tree, off the loop
            return reply

        try:
            try:
                reply = await self._to_thread(start_and_import, repl=repl)
            except ReplTimeoutError as exc:
                raise ReplStartError(f"header import took longer than {limit:g} s") from exc
            if isinstance(reply, ErrorReply):
                raise ReplStartError(f"header import failed: {reply.message[:300]}")
            if reply.errors or reply.env is None:
                problem = "; ".join(str(m) for m in reply.errors) or "no env id in the reply"
                raise ReplStartError(f"header import failed: {problem[:300]}")
        except LeanEnvError:
            self._counts["start_failures"] += 1
            raise
        repl.env = reply.env
        self._counts["started"] += 1

    def _checkin(self, repl: _Repl) -> bool:
        """Back to idle, or retired (and replaced) if worn out. True when it went straight
        to a waiting request."""
        if self._closing:
            self._discard(repl, replace=False)
            return False
        if repl.commands >= self.config.max_uses or repl.rss_mb > self.config.max_rss_mb:
            self._counts["recycled"] += 1
            self._discard(repl)
            return False
        for entry in self._waiters:
            key, whole, waiter = entry
            if repl.header in (key, whole) and not waiter.done():
                self._waiters.remove(entry)
                waiter.set_result(repl)   # straight to the first waiter for it: never idle
                return True
        repl.idle_since = time.monotonic()
        self._idle.setdefault(repl.header, []).append(repl)
        self._wake_one()   # a waiter of another header may evict it
        return False

    def _discard(self, repl: _Repl, *, replace: bool = True) -> None:
        """Retire a process: close it in the background and, unless closing, start a spare."""
        self._live.discard(repl)
        idle = self._idle.get(repl.header)
        if idle and repl in idle:
            idle.remove(repl)
        repl.process.kill()
        self._spawn(self._close_and_replace(repl, replace))

    async def _close_and_replace(self, repl: _Repl, replace: bool) -> None:
        if repl.inflight is not None:
            # The killed process's thread returns at once; only then may its pipes close.
            await asyncio.wait([repl.inflight])
        await self._to_thread(repl.process.close)
        self._processes.discard(repl.process)
        if not replace or self._closing or len(self._live) >= self.config.workers:
            self._wake_one()   # a slot is free
            return
        spare = self._new_repl(repl.header)
        try:
            await self._start(spare, None)
        except LeanEnvError as exc:
            if not self._closing:
                log.warning("spare REPL failed to start: %s", exc)
            self._discard(spare, replace=False)
            return
        self._checkin(spare)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wake_one(self) -> None:
        """Wake the first waiting request to look again (a slot or an idle process is free)."""
        for _, _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
                return


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def gather_bounded(factories: Sequence[Callable[[], Awaitable[T]]], *, limit: int) -> list[T]:
    """Await `factories[i]()` with at most `limit` in flight; results in input order.

    Keeps the pool's queue short (so `max_queue` is never hit by our own batches) and
    creates coroutines only when they can start.
    """
    results: list[Any] = [None] * len(factories)
    counter = itertools.count()

    async def drain() -> None:
        while (i := next(counter)) < len(factories):
            results[i] = await factories[i]()

    await asyncio.gather(*(drain() for _ in range(max(1, min(limit, len(factories))))))
    return results
