"""The `remote` verifier backend: a fleet of `prover lean serve` servers behind our calling
convention (`verify`, `verify_many`, `verify_batch`, `with` / `async with`).

Requests go in chunks of `config.remote_batch_size` to `POST <url>/v1/verify`
(`lean_env.service`); each chunk goes to the server with the fewest snippets in flight from
this client (ties: round robin), so a fleet of unequal servers is spread by load. The server
runs the same `Verifier` as the local pool, so the verdicts are the same; they travel as
`Verdict.to_json()` and are rebuilt here (`verdict_from_json`).

Failures: a server that cannot be reached, drops the connection (killed mid-batch), or answers
5xx is set aside for `_COOLDOWN_S` and the chunk is resent to another server; HTTP 503
(saturated) is retried after its Retry-After, preferring another server. Checks are
idempotent, so a resend is safe. After `config.remote_retries` resends a chunk is answered
NotChecked(cause="infrastructure"); a fleet still saturated after them raises
`RemoteSaturatedError` (back-pressure, like the pool's `PoolSaturatedError`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any

from lean_env.config import VerifierConfig
from lean_env.errors import LeanEnvError, PoolSaturatedError
from lean_env.verdict import (
    Accepted,
    LeanMessage,
    NotChecked,
    Rejected,
    RejectReason,
    TimedOut,
    Verdict,
)
from lean_env.verifier import VerifyRequest

_KINDS: dict[str, type[Any]] = {"accepted": Accepted, "rejected": Rejected,
                                "timedout": TimedOut, "notchecked": NotChecked}
_COOLDOWN_S = 5.0   # how long a server that failed is passed over while others are up


class RemoteError(LeanEnvError):
    """A server answered something that is not the /v1/verify API."""


class RemoteSaturatedError(PoolSaturatedError):
    """Every server answered HTTP 503 through all retries: slow down and resubmit."""


def verdict_from_json(data: dict[str, Any]) -> Verdict:
    """The inverse of `Verdict.to_json()`."""
    cls = _KINDS.get(str(data.get("verdict")))
    if cls is None:
        raise RemoteError(f"not a verdict: {str(data)[:200]}")
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name == "messages":
            value = tuple(LeanMessage(**m) for m in value)
        elif f.name == "reason":
            value = RejectReason(value)
        elif isinstance(value, list):
            value = tuple(value)
        fields[f.name] = value
    result: Verdict = cls(**fields)
    return result


class _Server:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.inflight = 0
        self.down_until = 0.0


class RemoteVerifier:
    """Checks candidates on `config.remote_urls` (see the module docstring)."""

    def __init__(self, config: VerifierConfig, *, http_timeout_s: float | None = None) -> None:
        if not config.remote_urls:
            raise ValueError("backend 'remote' needs verifier.remote_urls")
        self.config = config
        self.servers = [_Server(u) for u in config.remote_urls]
        # A chunk may wait behind the server's queue: allow several check times.
        self.http_timeout_s = http_timeout_s or 4 * config.timeout_s + 30
        self.checked_by = f"prover lean serve at {', '.join(s.url for s in self.servers)}"
        self._turn = itertools.count()
        self._client: Any = None
        self.resent = 0   # chunks sent again after a server failed them

    # -- lifecycle --------------------------------------------------------------------------------

    async def __aenter__(self) -> RemoteVerifier:
        self._client = self._new_client()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def __enter__(self) -> RemoteVerifier:
        return self   # sync calls open a client per batch, on their own event loop

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    def _new_client(self) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {self.config.remote_api_key}"} \
            if self.config.remote_api_key else {}
        return httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(
            self.http_timeout_s, connect=5.0), limits=httpx.Limits(max_keepalive_connections=64))

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[Any]:
        if self._client is not None:
            yield self._client
            return
        client = self._new_client()
        try:
            yield client
        finally:
            await client.aclose()

    # -- the calling convention ---------------------------------------------------------------------

    async def verify(self, name: str, header: str, formal_statement: str, candidate: str) -> Verdict:
        """The verdict on one candidate, as `Verifier.verify` gives it."""
        return (await self.verify_many([VerifyRequest(name, header, formal_statement, candidate)]))[0]

    async def verify_many(self, requests: Sequence[VerifyRequest], *,
                          progress: Callable[[int, int], None] | None = None) -> list[Verdict]:
        """Verdicts for `requests`, in order; chunks in flight on every server at once."""
        size = self.config.remote_batch_size
        chunks = [list(requests[i:i + size]) for i in range(0, len(requests), size)]
        done = 0

        async def one(chunk: list[VerifyRequest], client: Any) -> list[Verdict]:
            nonlocal done
            verdicts = await self._send(client, chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, len(requests))
            return verdicts

        async with self._session() as client:
            # In flight at once: 4 chunks per server, enough to keep a server's REPLs busy
            # while replies travel; more would only queue there (and meet its 503s).
            sem = asyncio.Semaphore(4 * len(self.servers))

            async def bounded(chunk: list[VerifyRequest]) -> list[Verdict]:
                async with sem:
                    return await one(chunk, client)

            results = await asyncio.gather(*(bounded(c) for c in chunks))
        return [v for chunk in results for v in chunk]

    def verify_batch(self, requests: Sequence[VerifyRequest], *,
                     progress: Callable[[int, int], None] | None = None) -> list[Verdict]:
        """Synchronous `verify_many` (on an event loop of its own)."""
        return asyncio.run(self.verify_many(requests, progress=progress))

    # -- internals ----------------------------------------------------------------------------------

    def _pick(self, avoid: _Server | None) -> _Server:
        """Least loaded server that is up (not `avoid` if another is up); ties round robin."""
        now = time.monotonic()
        up = [s for s in self.servers if s.down_until <= now] or list(self.servers)
        if avoid is not None and len(up) > 1:
            up = [s for s in up if s is not avoid]
        least = min(s.inflight for s in up)
        ties = [s for s in up if s.inflight == least]
        return ties[next(self._turn) % len(ties)]

    async def _send(self, client: Any, chunk: list[VerifyRequest]) -> list[Verdict]:
        import httpx

        payload = {"requests": [dataclasses.asdict(r) for r in chunk]}
        last: _Server | None = None
        problem = "no server tried"
        saturated = True
        for attempt in range(self.config.remote_retries + 1):
            if attempt:
                self.resent += 1
            server = self._pick(last)
            last = server
            server.inflight += len(chunk)
            start = time.perf_counter()
            try:
                reply = await client.post(server.url + "/v1/verify", json=payload)
            except httpx.HTTPError as exc:
                server.down_until = time.monotonic() + _COOLDOWN_S
                problem = f"{server.url}: {type(exc).__name__}: {exc or 'no detail'}"
                saturated = False
                continue
            finally:
                server.inflight -= len(chunk)
            if reply.status_code == 503:
                problem = f"{server.url}: HTTP 503 (saturated)"
                await asyncio.sleep(self._retry_after(reply.headers.get("Retry-After"), attempt))
                continue
            saturated = False
            if reply.status_code >= 500:
                server.down_until = time.monotonic() + _COOLDOWN_S
                problem = f"{server.url}: HTTP {reply.status_code}: {reply.text[:200]}"
                continue
            if reply.status_code != 200:   # 401, 413, 422: resending cannot help
                problem = f"{server.url}: HTTP {reply.status_code}: {reply.text[:200]}"
                break
            try:
                verdicts = [verdict_from_json(v) for v in reply.json()["verdicts"]]
            except (ValueError, KeyError, TypeError, RemoteError) as exc:
                problem = f"{server.url}: unexpected reply: {exc}"
                continue
            if len(verdicts) != len(chunk):
                problem = f"{server.url}: {len(verdicts)} verdicts for {len(chunk)} requests"
                continue
            return verdicts
        if saturated:
            raise RemoteSaturatedError(f"every server saturated through "
                                       f"{self.config.remote_retries + 1} tries: {problem}")
        elapsed = time.perf_counter() - start
        return [NotChecked(checked_by=self.checked_by, time_s=elapsed, cause="infrastructure",
                           detail=f"remote verifier: {problem}") for _ in chunk]

    def _retry_after(self, header: str | None, attempt: int) -> float:
        """Another server may have room now: wait only when all were tried recently."""
        if attempt + 1 < len(self.servers):
            return 0.0
        try:
            return min(30.0, max(0.0, float(header))) if header else min(30.0, 0.1 * 2 ** attempt)
        except ValueError:
            return min(30.0, 0.1 * 2 ** attempt)
