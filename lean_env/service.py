"""The verifier as an HTTP service (`prover lean serve`): our `Verifier` behind FastAPI/uvicorn.

Routes (JSON; every route but /health needs `Authorization: Bearer KEY` or `X-API-Key: KEY`
when the service has an API key):

  POST /v1/verify   {"requests": [{"name", "header", "formal_statement", "candidate"}]}
                    -> {"verdicts": [Verdict.to_json(), ...]} in request order: every layer,
                    the axioms, Lean's messages. `lean_env.backends.remote` speaks this.
  POST /api/check   kimina-lean-server 2.1.3's route (and `/check`, the older path our kimina
                    backend defaults to): {"snippets": [{"id", "code"}], "timeout", ...} ->
                    {"results": [{"id", "time", "response" | "error", "verdict"}]}.
  POST /verify      kimina's backward-compatible route: {"codes": [{"custom_id", "proof" |
                    "code"}]} -> {"results": [{"custom_id", "response" | "error", "verdict"}]}.
  GET  /health      liveness; GET /ready: 200 when the pool is open and has room, else 503;
  GET  /metrics     Prometheus text: requests, verdicts by outcome, queue depth, REPL
                    starts/crashes/timeouts/recycles, resident memory.

Replies are plain JSON values built here and sent as `JSONResponse` (FastAPI's generic
encoder walked every verdict again). A kimina snippet is a whole Lean file; it is checked as its own problem (the file's leading
import/set_option/open lines are the header, its last theorem the statement, as `prover lean
check` reads a file), so our acceptance rules apply: a proof we reject comes back with an error
message (or a `sorries` entry), so a kimina client counts it as failed, never as valid. A
snippet without a theorem gets an error (kimina would run it as plain Lean). The server's
`verifier.timeout_s` bounds every check; a request's `timeout` field is not honoured.

Under load (what kimina-lean-server 2.1.3 does differently is in REPL_PROTOCOL.md section 2):
at most `ServiceConfig.max_pending` snippets are admitted at once (running or queued for a
REPL); a request that would go beyond gets HTTP 503 with Retry-After at once. Replies go out
as soon as the verdicts exist (no polling); a client that disconnects has its checks cancelled
(the REPLs running them are killed and replaced, as the pool does on any cancellation). On
shutdown uvicorn stops accepting, waits `graceful_shutdown_s` for requests in flight, then the
pool closes: any check still running is answered not_checked:infrastructure and no REPL
outlives the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import psutil
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, model_validator

from lean_env.acceptance import file_theorems
from lean_env.errors import PoolSaturatedError
from lean_env.verdict import LeanMessage, NotChecked, Rejected, RejectReason, TimedOut, Verdict
from lean_env.verifier import VerifyRequest

API_PREFIX = "/v1"


class ServiceConfig(BaseModel):
    """Where the service listens and how much it admits."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", description="Address to bind. Loopback by default; any "
                      "other address needs `api_key` (kimina-lean-server binds 0.0.0.0 with none).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    api_key: str | None = Field(None, description="Required in `Authorization: Bearer KEY` or "
                                "`X-API-Key: KEY` on every route but /health. Default: none "
                                "(allowed on loopback only).")
    max_pending: int = Field(256, ge=1, description="Snippets admitted at once (checking or "
                             "waiting for a REPL); one request beyond gets HTTP 503 at once.")
    max_batch: int = Field(64, ge=1, description="Most snippets one HTTP request may carry "
                           "(HTTP 413 beyond; the kimina client sends 8).")
    graceful_shutdown_s: float = Field(30.0, ge=0, description="On shutdown, seconds requests "
                                       "in flight get to finish before their checks are failed.")

    @model_validator(mode="after")
    def _key_off_loopback(self) -> ServiceConfig:
        if self.api_key is None and not _is_loopback(self.host):
            raise ValueError(f"binding {self.host!r} (not loopback) needs an api_key "
                             "(--api-key or PROVER_SERVE_API_KEY)")
        if self.max_batch > self.max_pending:
            raise ValueError(f"max_batch ({self.max_batch}) above max_pending "
                             f"({self.max_pending}): such a request could never be admitted")
        return self


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- request and response shapes ---------------------------------------------------------------


class VerifyItem(BaseModel):
    name: str
    header: str
    formal_statement: str
    candidate: str


class VerifyBody(BaseModel):
    requests: list[VerifyItem]


class KiminaSnippet(BaseModel):
    id: str
    code: str


class KiminaCheckBody(BaseModel):
    """kimina-ast-client's CheckRequest; `timeout`, `debug`, `reuse`, `infotree` are accepted
    and not used (the server's limits apply)."""

    snippets: list[KiminaSnippet]
    timeout: float = 30
    debug: bool = False
    reuse: bool = True
    infotree: str | None = None


class KiminaCode(BaseModel):
    custom_id: str | int
    proof: str | None = None
    code: str | None = None


class KiminaVerifyBody(BaseModel):
    codes: list[KiminaCode]
    timeout: float = 300
    infotree_type: str | None = None
    disable_cache: bool = False


def snippet_request(code: str) -> VerifyRequest | None:
    """A kimina snippet (a whole Lean file) as its own problem: header = its leading
    import/set_option/open lines, statement = its last theorem (auxiliary lemmas come first).
    None when it declares no theorem."""
    try:
        found = file_theorems(code)
    except ValueError:
        return None
    if not found:
        return None
    last = found[-1]
    return VerifyRequest(last.name, last.header, last.formal_statement, code)


def _repl_message(m: LeanMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"severity": m.severity, "pos": {"line": m.line, "column": m.column},
                           "data": m.text}
    if m.end_line is not None:
        out["endPos"] = {"line": m.end_line, "column": m.end_column or 0}
    return out


def kimina_result(verdict: Verdict) -> dict[str, Any]:
    """A verdict in kimina's per-snippet shape: {"time", "error"} or {"time", "response"} (a
    REPL command reply), plus our "verdict". A rejection always reads as failed to a kimina
    client: Lean's error, else an error of ours naming the rule, or a `sorries` entry."""
    out: dict[str, Any] = {"time": verdict.time_s, "verdict": verdict.to_json()}
    if isinstance(verdict, TimedOut):
        out["error"] = f"Lean REPL command timed out after {verdict.limit_s:g} s"
        return out
    if isinstance(verdict, NotChecked):
        out["error"] = f"not checked ({verdict.cause}): {verdict.detail}"
        return out
    messages = [_repl_message(m) for m in verdict.messages]
    response: dict[str, Any] = {"messages": messages}
    if isinstance(verdict, Rejected):
        if verdict.reason is RejectReason.SORRY:
            at = next((m for m in messages if "sorry" in m["data"]), None)
            pos = at["pos"] if at else {"line": 1, "column": 0}
            response["sorries"] = [{"pos": pos, "endPos": pos, "goal": verdict.detail}]
        elif not any(m["severity"] == "error" for m in messages):
            messages.append({"severity": "error", "pos": {"line": 1, "column": 0},
                             "endPos": {"line": 1, "column": 0},
                             "data": f"rejected by the verifier ({verdict.reason.value}): "
                                     f"{verdict.detail}"})
    out["response"] = {k: v for k, v in response.items() if v}
    return out


# -- the service ---------------------------------------------------------------------------------


class Saturated(Exception):
    """More snippets than `max_pending` would be admitted."""


class _State:
    """What the routes share: the verifier, admission count and counters (event loop only)."""

    def __init__(self, verifier: Any, config: ServiceConfig) -> None:
        self.verifier = verifier
        self.config = config
        self.pending = 0
        self.open = False
        self.requests: Counter[str] = Counter()
        self.verdicts: Counter[str] = Counter()
        self.saturated = 0
        self.cancelled = 0
        self.check_s = 0.0    # total seconds of checks answered, for Retry-After
        self.checked = 0

    def retry_after_s(self) -> int:
        """Seconds until the queue ahead has likely drained: pending x mean check / workers."""
        mean = self.check_s / self.checked if self.checked else 1.0
        workers = getattr(getattr(self.verifier, "config", None), "workers", 1)
        return max(1, min(60, math.ceil(self.pending * mean / max(1, workers))))

    async def verdicts_for(self, requests: list[VerifyRequest],
                           disconnected: Callable[[], Any]) -> list[Verdict] | None:
        """Verdicts in order, or None if the client went away first (checks cancelled).
        Raises Saturated (admission) before any work starts."""
        n = len(requests)
        if self.pending + n > self.config.max_pending:
            self.saturated += 1
            raise Saturated
        self.pending += n
        try:
            # All of a request's checks queue at once (admission already bounds the total), so
            # the pool's first-come order finishes requests one after another; a bounded
            # `verify_many` per request would interleave them and finish them all together,
            # leaving the REPLs idle while the clients send their next batches.
            work = asyncio.ensure_future(asyncio.gather(*(
                self.verifier.verify(r.name, r.header, r.formal_statement, r.candidate)
                for r in requests)))
            watch = asyncio.ensure_future(disconnected())
            try:
                await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watch.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
                self.cancelled += n
                return None
            try:
                verdicts: list[Verdict] = work.result()
            except PoolSaturatedError as exc:
                self.saturated += 1
                raise Saturated from exc
        finally:
            self.pending -= n
        for v in verdicts:
            self.verdicts[v.outcome] += 1
            self.check_s += v.time_s
            self.checked += 1
        return verdicts

    def metrics(self) -> str:
        lines = ["# TYPE prover_requests_total counter"]
        lines += [f'prover_requests_total{{route="{r}"}} {n}' for r, n in sorted(self.requests.items())]
        lines.append("# TYPE prover_verdicts_total counter")
        lines += [f'prover_verdicts_total{{outcome="{o}"}} {n}' for o, n in sorted(self.verdicts.items())]
        lines += ["# TYPE prover_saturated_total counter", f"prover_saturated_total {self.saturated}",
                  "# TYPE prover_cancelled_total counter", f"prover_cancelled_total {self.cancelled}",
                  "# TYPE prover_queue_depth gauge", f"prover_queue_depth {self.pending}"]
        pool = getattr(self.verifier, "pool", None)
        if pool is not None and pool.is_open:
            stats = pool.stats()
            lines.append("# TYPE prover_repl_events_total counter")
            for key in ("started", "start_failures", "crashed", "timeouts", "protocol_errors",
                        "recycled", "evicted", "retries", "served"):
                lines.append(f'prover_repl_events_total{{event="{key}"}} {stats[key]}')
            lines.append("# TYPE prover_repls gauge")
            for key in ("live", "idle", "busy", "waiting"):
                lines.append(f'prover_repls{{state="{key}"}} {stats[key]}')
        me = psutil.Process()
        children = 0
        for child in me.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                children += child.memory_info().rss
        lines += ["# TYPE prover_rss_bytes gauge",
                  f'prover_rss_bytes{{process="server"}} {me.memory_info().rss}',
                  f'prover_rss_bytes{{process="repls"}} {children}']
        return "\n".join(lines) + "\n"


def create_app(verifier: Any, config: ServiceConfig, *, prewarm: Sequence[str] = (),
               on_ready: Callable[[], None] | None = None) -> Any:
    """The ASGI app: `verifier` (a `Verifier` or anything with its calling convention) is
    opened with `async with` on the server's event loop for the app's lifetime; REPLs for the
    `prewarm` headers (a problem set's) start before the first request is taken."""
    state = _State(verifier, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with verifier:
            if prewarm and hasattr(verifier, "prewarm"):
                await verifier.prewarm(prewarm)
            state.open = True
            if on_ready is not None:
                on_ready()
            try:
                yield
            finally:
                state.open = False

    app = FastAPI(title="prover lean serve", lifespan=lifespan,
                  description="Lean proof checking with every acceptance rule applied; "
                  "kimina-lean-server compatible routes.")

    def authorised(request: Request) -> None:
        if config.api_key is None:
            return
        given = request.headers.get("x-api-key")
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        if given is None or not secrets.compare_digest(given, config.api_key):
            raise HTTPException(401, "missing or wrong API key", {"WWW-Authenticate": "Bearer"})

    async def until_disconnected(request: Request) -> None:
        # The body has been read: the next ASGI message is the client going away.
        while (await request.receive())["type"] != "http.disconnect":
            pass

    async def run(route: str, request: Request, requests: list[VerifyRequest | None],
                  ) -> list[Verdict | None] | Response:
        state.requests[route] += 1
        if len(requests) > config.max_batch:
            return JSONResponse({"detail": f"{len(requests)} snippets in one request; at most "
                                 f"{config.max_batch}"}, status_code=413)
        todo = [r for r in requests if r is not None]
        try:
            got = await state.verdicts_for(todo, lambda: until_disconnected(request))
        except Saturated:
            return JSONResponse({"detail": f"saturated: {state.pending} snippets pending "
                                 f"(max_pending={config.max_pending})"}, status_code=503,
                                headers={"Retry-After": str(state.retry_after_s())})
        if got is None:
            return Response(status_code=499)   # nobody is listening; nginx's "client closed"
        it = iter(got)
        return [None if r is None else next(it) for r in requests]

    guard = [Depends(authorised)]

    @app.post(API_PREFIX + "/verify", dependencies=guard)
    async def verify(body: VerifyBody, request: Request) -> Any:
        requests = [VerifyRequest(r.name, r.header, r.formal_statement, r.candidate)
                    for r in body.requests]
        out = await run("/v1/verify", request, list(requests))
        if isinstance(out, Response):
            return out
        return JSONResponse({"verdicts": [v.to_json() for v in out if v is not None],
                             "checked_by": getattr(verifier, "checked_by", None)})

    def no_theorem() -> dict[str, Any]:
        return {"time": 0.0, "error": "no theorem or lemma to check in this snippet (this "
                "server checks proofs: every acceptance rule is applied to the last theorem)"}

    async def check(body: KiminaCheckBody, request: Request) -> Any:
        out = await run(request.url.path, request, [snippet_request(s.code) for s in body.snippets])
        if isinstance(out, Response):
            return out
        return JSONResponse({"results": [
            {"id": s.id, **(no_theorem() if v is None else kimina_result(v))}
            for s, v in zip(body.snippets, out, strict=True)]})

    app.post("/api/check", dependencies=guard)(check)
    app.post("/check", dependencies=guard)(check)

    @app.post("/verify", dependencies=guard)
    async def kimina_verify(body: KiminaVerifyBody, request: Request) -> Any:
        codes = [c.proof if c.proof is not None else (c.code or "") for c in body.codes]
        out = await run("/verify", request, [snippet_request(c) for c in codes])
        if isinstance(out, Response):
            return out
        results = []
        for c, v in zip(body.codes, out, strict=True):
            one = no_theorem() if v is None else kimina_result(v)
            row: dict[str, Any] = {"custom_id": str(c.custom_id)}
            if "error" in one:
                row["error"] = one["error"]
            else:
                row["response"] = {**one["response"], "time": one["time"]}
            if "verdict" in one:
                row["verdict"] = one["verdict"]
            results.append(row)
        return JSONResponse({"results": results})

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok" if state.open else "starting",
                "checked_by": getattr(verifier, "checked_by", None)}

    @app.get("/ready", dependencies=guard)
    async def ready() -> Any:
        room = config.max_pending - state.pending
        ok = state.open and room > 0
        return JSONResponse({"ready": ok, "pending": state.pending, "room": room},
                            status_code=200 if ok else 503)

    @app.get("/metrics", dependencies=guard)
    async def metrics() -> Any:
        return PlainTextResponse(state.metrics())

    app.state.service = state
    return app


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app: Any, config: ServiceConfig) -> Any:
    import uvicorn

    return uvicorn.Server(uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="on",
        timeout_graceful_shutdown=int(math.ceil(config.graceful_shutdown_s)) or None))


def serve(verifier: Any, config: ServiceConfig, *, prewarm: Sequence[str] = (),
          on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (blocking). `on_ready(url)` once the pool is open (and the
    `prewarm` headers' REPLs started) and the socket listens (with port 0, the URL names the
    port picked)."""
    sock = _bind(config.host, config.port)
    url = f"http://{config.host}:{sock.getsockname()[1]}"
    app = create_app(verifier, config, prewarm=prewarm,
                     on_ready=(lambda: on_ready(url)) if on_ready else None)
    try:
        _uvicorn_server(app, config).run(sockets=[sock])
    finally:
        sock.close()


@contextlib.contextmanager
def serve_in_thread(verifier: Any, config: ServiceConfig | None = None) -> Iterator[str]:
    """The service on a background thread of this process (tests, benchmarks): yields its URL
    once ready; on exit shuts down gracefully and joins (the pool is closed by then)."""
    config = config or ServiceConfig(port=0)
    sock = _bind(config.host, config.port)
    url = f"http://{config.host}:{sock.getsockname()[1]}"
    ready = threading.Event()
    app = create_app(verifier, config, on_ready=ready.set)
    server = _uvicorn_server(app, config)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="lean-serve", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.wait(0.05):
            if time.monotonic() > deadline:
                raise TimeoutError(f"service at {url} did not start within 60 s")
        if failure or not thread.is_alive():
            raise RuntimeError(f"service at {url} failed to start: {failure}")
        yield url
    finally:
        server.should_exit = True
        thread.join()
        sock.close()
