"""Checking proofs through a running kimina-lean-server (project-numina/kimina-lean-server).

The server keeps its own pool of leanprover-community/repl processes keyed by import header,
with RLIMIT_AS and a kill on timeout (REPL_PROTOCOL.md section 2). Its API:

    POST <url><path>  {"snippets": [{"id": "0", "code": "..."}], "timeout": 60, "reuse": true}
    -> [{"id": "0", "time": 1.2, "error": null, "response": {<a REPL command reply>}}, ...]

(recent server versions serve `/api/check` and wrap the list as `{"results": [...]}`; both
shapes are read). HTTP 429 means the server is saturated: the client backs off
(`Retry-After` when given, else exponentially) and retries.

Acceptance is identical to our own REPL pool: `precheck` before sending, the snippet is the
header plus `lean_command(...)` (so `#print axioms` runs in the same env), and the REPL-shaped
`response` goes through `protocol.parse_command_reply` and `judge`. A snippet-level `error`
mentioning a timeout is TimedOut; any other server error, or an HTTP failure after the
retries, is NotChecked(cause="infrastructure"). Saturation that outlasts the retries raises
`KiminaSaturatedError` (back-pressure, like the pool's `PoolSaturatedError`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from lean_env.acceptance import LeanCommand, judge, lean_command, precheck
from lean_env.comparator import Comparator, final_judge_enabled, final_judgement
from lean_env.config import VerifierConfig
from lean_env.errors import LeanEnvError, PoolSaturatedError, ReplProtocolError
from lean_env.protocol import parse_command_reply
from lean_env.verdict import Accepted, NotChecked, TimedOut, Verdict
from lean_env.verifier import VerifyRequest


class KiminaError(LeanEnvError):
    """The server could not be reached or answered something that is not its API."""


class KiminaSaturatedError(PoolSaturatedError):
    """HTTP 429 after every retry: the server is saturated; slow down and resubmit."""


class KiminaVerifier:
    """Verifier over a kimina-lean-server; use it in a `with` block (it owns an HTTP client).

    `path`: the check endpoint (`/check`; `/api/check` on recent servers).
    `http_timeout_s`: how long one HTTP request may take; default twice the Lean timeout
    plus 30 s (the server queues snippets behind its REPLs).
    `retries_429`, `backoff_s`: retries on HTTP 429 and the first back-off, seconds (doubling,
    capped at 30 s). `batch_size`: snippets per HTTP request in `verify_batch`.
    """

    def __init__(self, config: VerifierConfig, *, path: str = "/check",
                 http_timeout_s: float | None = None, retries_429: int = 8,
                 backoff_s: float = 0.5, batch_size: int = 32) -> None:
        self.config = config
        self.url = config.kimina_url.rstrip("/") + "/" + path.lstrip("/")
        self.http_timeout_s = http_timeout_s or 2 * config.timeout_s + 30
        self.retries_429 = retries_429
        self.backoff_s = backoff_s
        self.batch_size = batch_size
        self.checked_by = f"kimina-lean-server at {config.kimina_url}"
        self._client: Any = None
        # The same final judge as the REPL pool's (lean_env.comparator), run here on this host.
        self.final_judge = Comparator(config) if final_judge_enabled(config) else None

    async def __aenter__(self) -> KiminaVerifier:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)

    def __enter__(self) -> KiminaVerifier:
        import httpx  # optional dependency of this backend only

        self._client = httpx.Client(timeout=httpx.Timeout(self.http_timeout_s, connect=10.0))
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def check(self, snippets: Sequence[tuple[str, str]]) -> dict[str, dict[str, Any]]:
        """POST (id, code) snippets; the server's result per id. Retries HTTP 429."""
        import httpx

        if self._client is None:
            raise RuntimeError("KiminaVerifier.check outside its `with` block")
        payload = {"snippets": [{"id": sid, "code": code} for sid, code in snippets],
                   "timeout": self.config.timeout_s, "reuse": True}
        for attempt in range(self.retries_429 + 1):
            try:
                reply = self._client.post(self.url, json=payload)
            except httpx.HTTPError as exc:
                raise KiminaError(f"kimina-lean-server at {self.url}: {type(exc).__name__}: "
                                  f"{exc or 'no detail'}") from exc
            if reply.status_code != 429:
                break
            if attempt == self.retries_429:
                raise KiminaSaturatedError(f"kimina-lean-server at {self.url} answered HTTP 429 "
                                           f"{self.retries_429 + 1} times")
            time.sleep(self._retry_after(reply.headers.get("Retry-After"), attempt))
        if reply.status_code != 200:
            raise KiminaError(f"kimina-lean-server at {self.url}: HTTP {reply.status_code}: "
                              f"{reply.text[:200]}")
        try:
            body = reply.json()
        except ValueError as exc:
            raise KiminaError(f"kimina-lean-server at {self.url} sent non-JSON: "
                              f"{reply.text[:200]!r}") from exc
        results = body.get("results") if isinstance(body, dict) else body
        if not isinstance(results, list) or not all(isinstance(r, dict) and "id" in r
                                                    for r in results):
            raise KiminaError(f"kimina-lean-server at {self.url}: unexpected reply {str(body)[:200]}")
        return {str(r["id"]): r for r in results}

    def _retry_after(self, header: str | None, attempt: int) -> float:
        if header is not None:
            try:
                return min(30.0, max(0.0, float(header)))
            except ValueError:
                pass
        return min(30.0, self.backoff_s * 2 ** attempt)

    async def verify(self, name: str, header: str, formal_statement: str, candidate: str) -> Verdict:
        """The verdict on one candidate, as `Verifier.verify` gives it (the HTTP call runs in
        a worker thread, so the event loop stays free)."""
        request = VerifyRequest(name, header, formal_statement, candidate)
        return (await asyncio.to_thread(self.verify_batch, [request]))[0]

    async def verify_many(self, requests: Sequence[VerifyRequest], *,
                          progress: Callable[[int, int], None] | None = None) -> list[Verdict]:
        """Verdicts for `requests`, in order, as `Verifier.verify_many` gives them."""
        return await asyncio.to_thread(self.verify_batch, requests, progress=progress)

    def verify_batch(self, requests: Sequence[VerifyRequest], *,
                     progress: Callable[[int, int], None] | None = None) -> list[Verdict]:
        """One verdict per request, in order; `progress(done, total)` after each HTTP batch.
        Outside a `with` block it opens (and closes) its HTTP client, like `Verifier`."""
        if self._client is None:
            with self:
                return self.verify_batch(requests, progress=progress)
        verdicts: list[Verdict | None] = [
            precheck(r.name, r.header, r.formal_statement, r.candidate, checked_by=self.checked_by)
            for r in requests]
        todo = [i for i, v in enumerate(verdicts) if v is None]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            commands = {i: lean_command(requests[i].name, requests[i].header,
                                        requests[i].candidate, requests[i].formal_statement)
                        for i in chunk}
            # The header travels with each snippet, so Lean's lines are shifted by its lines.
            snippets = [(str(i), requests[i].header + commands[i].text) for i in chunk]
            t0 = time.perf_counter()
            try:
                results = self.check(snippets)
            except KiminaSaturatedError:
                raise
            except KiminaError as exc:
                for i in chunk:
                    verdicts[i] = NotChecked(checked_by=self.checked_by,
                                             time_s=time.perf_counter() - t0,
                                             cause="infrastructure", detail=str(exc))
                continue
            for i in chunk:
                verdicts[i] = self._verdict(requests[i].name, results.get(str(i)),
                                            commands[i].shifted(requests[i].header.count("\n")))
            if progress is not None:
                progress(len(requests) - len(todo) + start + len(chunk), len(requests))
        assert all(v is not None for v in verdicts)
        return [self._final(r, v) for r, v in zip(requests, verdicts, strict=True) if v is not None]

    def _final(self, request: VerifyRequest, verdict: Verdict) -> Verdict:
        if self.final_judge is None or not isinstance(verdict, Accepted):
            return verdict
        return asyncio.run(final_judgement(
            self.final_judge, verdict, name=request.name, header=request.header,
            formal_statement=request.formal_statement, candidate=request.candidate))

    def _verdict(self, name: str, result: dict[str, Any] | None, command: LeanCommand) -> Verdict:
        if result is None:
            return NotChecked(checked_by=self.checked_by, time_s=0.0, cause="infrastructure",
                              detail="kimina-lean-server returned no result for this snippet")
        elapsed = float(result.get("time") or 0.0)
        error, response = result.get("error"), result.get("response")
        if error and any(w in str(error).lower() for w in ("timeout", "timed out")):
            return TimedOut(checked_by=self.checked_by, time_s=elapsed, limit_s=self.config.timeout_s)
        if error or not isinstance(response, dict):
            return NotChecked(checked_by=self.checked_by, time_s=elapsed, cause="infrastructure",
                              detail=f"kimina-lean-server: {error or 'no REPL response'}")
        try:
            parsed = parse_command_reply(response)
        except ReplProtocolError as exc:
            return NotChecked(checked_by=self.checked_by, time_s=elapsed, cause="infrastructure",
                              detail=str(exc))
        return judge(name, parsed, command=command, allowed_axioms=self.config.allowed_axioms,
                     checked_by=self.checked_by, time_s=elapsed)
