"""Benchmark of `prover lean serve`: what HTTP costs on top of the in-process pool.

Same stand-in REPL, same simulated Lean time per check and header import, same number of REPL
processes; for each REPL count (default 1, 2, 4):

  pool          `Verifier.verify_many` in this process (no HTTP);
  http_kimina   a `prover lean serve` subprocess driven the way kimina-ast-client drives
                kimina-lean-server: its defaults of 8 snippets per POST /api/check and 5
                requests in flight (the client itself when installed, else the same requests
                from httpx);
  http_remote   the same server through our `remote` backend (POST /v1/verify, 8 per request);
  kimina_server kimina-ast-server 2.1.3 with the same stand-in as its REPL and the same
                number of REPLs, driven like http_kimina; only with `--kimina-site DIR`, a
                folder it was installed into with `pip install --target DIR --no-deps
                kimina-ast-server==2.1.3 prisma google-cloud-logging ...` (see `_KIMINA_LAUNCH`
                for the shims it needs here: Python 3.11, no Prisma CLI, uvloop).

Reported per row: requests/s, the ideal (REPLs / simulated check time), and the overhead per
request: REPLs x wall time / requests - simulated check time (time a REPL slot spends per
request on anything but the check: pool, acceptance, JSON, HTTP, idle gaps), and the CPU
seconds per request of the process that serves (this one for `pool`, the server process for
HTTP; REPL processes excluded everywhere), and for HTTP rows the client's CPU per request (this
process: kimina's client opens a new `httpx.Client` for every request, which on a loaded
2-core machine can be what limits both servers' rows at 4 REPLs).

The stand-in is not free either (it parses JSON, matches its rules, oversleeps), and its cost
is neither ours nor kimina's: every stand-in of a row logs when it read each request and
flushed its reply (`LEAN_STANDIN_TIMING`, see `lean_env.standin.server`), so each row also
carries `standin_ms` (the stand-in's own time per request: busy time minus the simulated
check), `server_ms` = overhead_ms - standin_ms (what the side under test costs: the figure
the goals are about), and the idle gap at the REPL between a reply and the next request
(`gap_median_ms`, `gap_mean_ms`).

    python -m benchmarks.serve [--out runs/bench/serve.json] [--requests 200] [--lean-ms 20]
                               [--kimina-site /tmp/kimina-site]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import importlib.util
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.common import machine_info, write_json
from lean_env import standin
from lean_env.backends.remote import RemoteVerifier
from lean_env.config import VerifierConfig
from lean_env.toolchain import CHECKOUT
from lean_env.verifier import Verifier, VerifyRequest
from prover.runs import package_version

HEADER = ("import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\n"
          "open BigOperators Real Nat Topology Rat\n\n")
REPO = CHECKOUT   # the checkout, as lean_env finds it (servers run from it)
KIMINA_BATCH, KIMINA_IN_FLIGHT = 8, 5   # kimina-ast-client's check() defaults


def _requests(n: int, tag: str) -> list[VerifyRequest]:
    out = []
    for i in range(n):
        statement = f"theorem bench_{tag}_{i} (a b : ℕ) : a + b = b + a := by\n"
        out.append(VerifyRequest(f"bench_{tag}_{i}", HEADER, statement,
                                 HEADER + statement + "  omega\n"))
    return out


class StandinTiming:
    """The stand-ins' own timing lines (LEAN_STANDIN_TIMING) for one row's window. Creating
    one points the stand-ins started from now on (also by servers we start) at `folder`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        os.environ["LEAN_STANDIN_TIMING"] = str(folder)
        self.start = self.end = 0.0

    def window(self) -> StandinTiming:
        """Another window over the same stand-ins."""
        other = StandinTiming.__new__(StandinTiming)
        other.folder, other.start, other.end = self.folder, 0.0, 0.0
        return other

    def begin(self) -> None:
        self.start = time.monotonic()

    def finish(self) -> None:
        self.end = time.monotonic()

    def summary(self) -> dict[str, Any]:
        """Per request in the window: the stand-in's own ms (busy minus simulated), and the
        idle gaps at each REPL between a reply and the next request."""
        own: list[float] = []
        gaps: list[float] = []
        for path in self.folder.glob("*.tsv"):
            rows = sorted(tuple(map(float, line.split("\t")))
                          for line in path.read_text().splitlines() if line.count("\t") == 2)
            inside = [r for r in rows if r[0] >= self.start and r[1] <= self.end]
            own += [done - read - slept for read, done, slept in inside]
            gaps += [b[0] - a[1] for a, b in zip(inside, inside[1:], strict=False)]
        return {"repl_commands": len(own),
                "standin_ms": 1e3 * statistics.fmean(own) if own else None,
                "gap_median_ms": 1e3 * statistics.median(gaps) if gaps else None,
                "gap_mean_ms": 1e3 * statistics.fmean(gaps) if gaps else None}


def _row(mode: str, workers: int, n: int, seconds: float, cpu_s: float, lean_s: float,
         accepted: int, timing: StandinTiming, client_cpu_s: float | None = None) -> dict[str, Any]:
    if accepted != n:
        raise SystemExit(f"{mode} at {workers} REPLs: {accepted}/{n} accepted")
    overhead = 1e3 * (workers * seconds / n - lean_s)
    stand_in = timing.summary()
    # The stand-in's cost per request, as seen from the REPL slots: its commands' own time
    # spread over the requests (kimina may send more than one command per request).
    standin_ms = (stand_in["standin_ms"] or 0.0) * stand_in["repl_commands"] / n
    return {"mode": mode, "repls": workers, "requests": n, "seconds": seconds,
            "requests_per_s": n / seconds, "ideal_requests_per_s": workers / lean_s,
            "overhead_ms": overhead, "standin_ms_per_request": standin_ms,
            "server_ms": overhead - standin_ms, **stand_in,
            "cpu_ms_per_request": 1e3 * cpu_s / n,
            "client_cpu_ms_per_request": None if client_cpu_s is None else 1e3 * client_cpu_s / n}


def _goals(rows: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    """The issue's goals at one REPL count, on the server-side figures (stand-in excluded): at
    most 1 ms in-process, and over HTTP (kimina's client) at most half of kimina-ast-server's."""
    mine = {r["mode"]: r for r in rows if r["repls"] == workers}
    kimina = mine.get("kimina_server")
    ratio = (mine["http_kimina"]["server_ms"] / kimina["server_ms"]
             if kimina is not None and kimina["server_ms"] > 0 else None)
    return {"repls": workers, "pool_server_ms": mine["pool"]["server_ms"],
            "pool_goal_met": mine["pool"]["server_ms"] <= 1.0,
            "http_vs_kimina": ratio, "http_goal_met": None if ratio is None else ratio <= 0.5}


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _pool(config: VerifierConfig, workers: int, n: int, lean_s: float,
                timing: StandinTiming) -> dict[str, Any]:
    async with Verifier(config.model_copy(update={"workers": workers})) as verifier:
        await verifier.verify_many(_requests(2 * workers, f"warm{workers}"))
        requests = _requests(n, f"pool{workers}")
        timing.begin()
        cpu, start = _self_cpu(), time.perf_counter()
        verdicts = await verifier.verify_many(requests)
        seconds, cpu_s = time.perf_counter() - start, _self_cpu() - cpu
        timing.finish()
    return _row("pool", workers, n, seconds, cpu_s, lean_s, sum(v.accepted for v in verdicts),
                timing)


class _Server:
    """`prover lean serve --standin` as a subprocess on a free loopback port."""

    def __init__(self, rules: Path, workers: int) -> None:
        # No recycling during the run, as in the in-process rows (and kimina's default).
        config = rules.parent / "serve.toml"
        config.write_text("[verifier]\nmax_uses = 100000\n")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "prover.cli", "--config", str(config), "lean", "serve",
             "--port", "0", "--workers",
             str(workers), "--max-pending", "4096", "--standin", str(rules)],
            cwd=REPO, stderr=subprocess.PIPE, text=True, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        if "serving" not in line:
            self.close()
            raise SystemExit(f"server did not start: {line!r}")
        self.url = line.split()[-1]
        self.ps = psutil.Process(self.proc.pid)

    def cpu(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


# kimina-ast-server 2.1.3 here: pydantic on 3.11 needs typing_extensions.TypedDict; its Prisma
# client (generated at import, which downloads the Prisma CLI) is used only with a database URL,
# so a stub stands in; uvloop's subprocess_exec rejects the env=os.environ kimina passes.
_KIMINA_LAUNCH = """import runpy, sys, types, typing, typing_extensions
typing.TypedDict = typing_extensions.TypedDict
stub = types.ModuleType("server.prisma_client")
stub.prisma = None
sys.modules["server.prisma_client"] = stub
sys.modules["uvloop"] = None
runpy.run_module("server", run_name="__main__")
"""


class _KiminaServer(_Server):
    """kimina-ast-server with the stand-in as `lake env <repl>` (a `lake` that runs its args)."""

    def __init__(self, site: Path, rules: Path, workers: int, tmp: Path) -> None:
        (tmp / "bin").mkdir(exist_ok=True)
        lake, repl, launch = tmp / "bin" / "lake", tmp / "repl.sh", tmp / "launch.py"
        lake.write_text('#!/bin/sh\n[ "$1" = env ] && shift\nexec "$@"\n')
        repl.write_text(f'#!/bin/sh\nexec {sys.executable} -m lean_env.standin --rules {rules}\n')
        launch.write_text(_KIMINA_LAUNCH)
        for script in (lake, repl):
            script.chmod(0o755)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {**os.environ, "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}",
               "PYTHONPATH": f"{site}:{REPO}", "LEAN_SERVER_REPL_PATH": str(repl),
               "LEAN_SERVER_PROJECT_DIR": str(tmp), "LEAN_SERVER_SKIP_VALIDATION": "1",
               "LEAN_SERVER_HOST": "127.0.0.1", "LEAN_SERVER_PORT": str(port),
               "LEAN_SERVER_MAX_REPLS": str(workers), "LEAN_SERVER_LOG_LEVEL": "WARNING"}
        self.proc = subprocess.Popen([sys.executable, str(launch)], cwd=tmp, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise SystemExit(f"kimina-ast-server did not start (exit {self.proc.poll()})")
            time.sleep(0.2)
        self.ps = psutil.Process(self.proc.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)   # its REPLs are in their own groups
        self.proc.wait(timeout=60)


def _kimina_server(site: Path, rules: Path, workers: int, n: int, lean_s: float,
                   tmp: Path, timing: StandinTiming) -> dict[str, Any]:
    server = _KiminaServer(site, rules, workers, tmp)
    try:
        _kimina_style(server.url, _requests(2 * workers, f"kwarm{workers}"))
        requests = _requests(n, f"kserver{workers}")
        timing.begin()
        cpu, client, start = server.cpu(), _self_cpu(), time.perf_counter()
        valid = _kimina_style(server.url, requests)
        seconds = time.perf_counter() - start
        timing.finish()
        return _row("kimina_server", workers, n, seconds, server.cpu() - cpu, lean_s, valid,
                    timing, _self_cpu() - client)
    finally:
        server.close()


def _kimina_client(url: str) -> Any:
    """kimina-ast-client's KiminaClient when installed (with the 3.11 TypedDict shim), else None."""
    if importlib.util.find_spec("kimina_client") is None:
        return None
    import typing

    import typing_extensions

    original = typing.TypedDict
    typing.TypedDict = typing_extensions.TypedDict  # type: ignore[misc]
    try:
        import kimina_client
    finally:
        typing.TypedDict = original  # type: ignore[misc]
    return kimina_client.KiminaClient(api_url=url, n_retries=1)


def _kimina_style(url: str, requests: list[VerifyRequest]) -> int:
    """The requests as kimina-ast-client sends them; returns how many came back valid."""
    snippets = [{"id": r.name, "code": r.candidate} for r in requests]
    client = _kimina_client(url)
    if client is not None:
        from kimina_client import Snippet

        reply = client.check([Snippet(**s) for s in snippets], batch_size=KIMINA_BATCH,
                             max_workers=KIMINA_IN_FLIGHT, show_progress=False)
        return sum(r.analyze().status.value == "valid" for r in reply.results)
    batches = [snippets[i:i + KIMINA_BATCH] for i in range(0, len(snippets), KIMINA_BATCH)]

    def post(batch: list[dict[str, str]]) -> int:
        with httpx.Client(timeout=600) as http:   # a client per request, as kimina's does
            body = http.post(url + "/api/check", json={"snippets": batch}).json()
        return sum(r["verdict"]["outcome"] == "accepted" for r in body["results"])

    with concurrent.futures.ThreadPoolExecutor(KIMINA_IN_FLIGHT) as pool:
        return sum(pool.map(post, batches))


def _http(rules: Path, workers: int, n: int, lean_s: float,
          timing: StandinTiming) -> list[dict[str, Any]]:
    server = _Server(rules, workers)
    try:
        _kimina_style(server.url, _requests(2 * workers, f"warm{workers}"))
        requests = _requests(n, f"kimina{workers}")
        timing.begin()
        cpu, client, start = server.cpu(), _self_cpu(), time.perf_counter()
        accepted = _kimina_style(server.url, requests)
        seconds = time.perf_counter() - start
        timing.finish()
        rows = [_row("http_kimina", workers, n, seconds, server.cpu() - cpu, lean_s, accepted,
                     timing, _self_cpu() - client)]
        remote = RemoteVerifier(VerifierConfig(backend="remote", remote_urls=[server.url],
                                               remote_batch_size=KIMINA_BATCH))
        requests = _requests(n, f"remote{workers}")
        timing = timing.window()
        timing.begin()
        cpu, client, start = server.cpu(), _self_cpu(), time.perf_counter()
        verdicts = remote.verify_batch(requests)
        seconds = time.perf_counter() - start
        timing.finish()
        rows.append(_row("http_remote", workers, n, seconds, server.cpu() - cpu, lean_s,
                         sum(v.accepted for v in verdicts), timing, _self_cpu() - client))
        return rows
    finally:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/serve.json"),
                        help="JSON results file (default: runs/bench/serve.json).")
    parser.add_argument("--requests", type=int, default=200, help="Requests per row.")
    parser.add_argument("--lean-ms", type=float, default=20.0,
                        help="Simulated Lean time per check, ms.")
    parser.add_argument("--header-import-s", type=float, default=0.5,
                        help="Simulated header import, s (paid at warm-up, not timed).")
    parser.add_argument("--repls", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--kimina-site", type=Path, default=None,
                        help="Folder kimina-ast-server 2.1.3 was pip-installed into (--target); "
                        "adds its rows.")
    args = parser.parse_args()
    lean_s = args.lean_ms / 1e3
    report: dict[str, Any] = {
        "benchmark": "serve", "backend": standin.CHECKED_BY,
        "machine": machine_info("cpu", torch_stack=False),
        "lean_ms": args.lean_ms, "header_import_s": args.header_import_s,
        "kimina_client": package_version("kimina-ast-client"),
        "kimina_server": (f"kimina-ast-server from {args.kimina_site}" if args.kimina_site
                          else "not measured (no --kimina-site)"),
        "rows": [], "goals": []}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        rules = Path(tmp) / "rules.json"
        rules.write_text(json.dumps({"header_import_s": args.header_import_s, "rules": [
            {"name": "lean_time", "substring": "theorem bench_", "sleep_s": lean_s}]}))
        config = VerifierConfig(backend="standin", standin_rules=rules, max_uses=100_000)
        for workers in args.repls:
            timing = Path(tmp) / f"timing-{workers}"
            report["rows"].append(asyncio.run(_pool(config, workers, args.requests, lean_s,
                                                    StandinTiming(timing / "pool"))))
            write_json(report, args.out)
            report["rows"] += _http(rules, workers, args.requests, lean_s,
                                    StandinTiming(timing / "http"))
            write_json(report, args.out)
            if args.kimina_site is not None:
                report["rows"].append(_kimina_server(args.kimina_site.resolve(), rules, workers,
                                                     args.requests, lean_s, Path(tmp),
                                                     StandinTiming(timing / "kimina")))
            report["goals"].append(_goals(report["rows"], workers))
            write_json(report, args.out)

    print(f"stand-in REPL: {args.lean_ms:g} ms simulated check; {os.cpu_count()} CPUs; "
          f"kimina-ast-server: {report['kimina_server']}")
    print(f"{'mode':>13} {'REPLs':>5} {'req/s':>7} {'ideal':>6} {'ovh ms':>7} {'stand-in':>8} "
          f"{'server':>7} {'gap med':>7} {'cpu ms/req':>10} {'client cpu':>10}")
    for row in report["rows"]:
        print(f"{row['mode']:>13} {row['repls']:>5} {row['requests_per_s']:>7.1f} "
              f"{row['ideal_requests_per_s']:>6.1f} {row['overhead_ms']:>7.2f} "
              f"{row['standin_ms_per_request']:>8.2f} {row['server_ms']:>7.2f} "
              f"{row['gap_median_ms'] or 0:>7.2f} {row['cpu_ms_per_request']:>10.2f} "
              f"{row['client_cpu_ms_per_request'] or 0:>10.2f}")
    for goal in report["goals"]:
        print(f"{goal['repls']} REPLs: in-process {goal['pool_server_ms']:.2f} ms (goal <= 1 ms)"
              + (f", HTTP {goal['http_vs_kimina']:.2f}x kimina-ast-server's (goal <= 0.5x)"
                 if goal["http_vs_kimina"] is not None else ""))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
