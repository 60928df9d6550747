"""Benchmark of the verifier's own cost: client + pool overhead, throughput, recycle cost.

Runs against the stand-in REPL with a known simulated Lean time per command and a known
header-import time, so everything above those is ours:

  throughput   requests/s through `Verifier.verify_many` at 1, 2 and 4 workers, against
               the ideal workers / lean_s;
  latency      one request at a time: end-to-end latency minus the simulated Lean time,
               split into the REPL round trip (pipe, JSON) and the rest (acceptance checks,
               pool, event loop); the stand-in's own time per command (JSON, rule matching,
               sleep overshoot, logged by the stand-in: `benchmarks.serve.StandinTiming`) is not
               ours and is reported apart (`overhead_standin_ms`, `overhead_ours_ms`);
  recycle      replacing a process: start + header import (known duration) + close;
  baseline     the peer style (DeepSeek-Prover / Goedel-Prover verifiers): one fresh REPL
               process per proof, header imported every time, same acceptance checks and
               same number of parallel workers; our speed is reported as a ratio to it.

The stand-in's header import (default 0.5 s) is far cheaper than a Mathlib import (seconds
and ~6.5 GB), so the measured ratio understates what the warm pool saves with real Lean.

    python -m benchmarks.verifier [--out runs/bench/verifier.json] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine_info, write_json
from benchmarks.serve import StandinTiming
from lean_env import acceptance, standin
from lean_env.config import VerifierConfig
from lean_env.protocol import ErrorReply
from lean_env.repl import ReplProcess
from lean_env.verdict import Verdict
from lean_env.verifier import Verifier, VerifyRequest

HEADER = ("import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\n"
          "open BigOperators Real Nat Topology Rat\n\n")


def _requests(n: int, tag: str) -> list[VerifyRequest]:
    out = []
    for i in range(n):
        statement = f"theorem bench_{tag}_{i} (a b : ℕ) : a + b = b + a := by\n"
        out.append(VerifyRequest(f"bench_{tag}_{i}", HEADER, statement,
                                 HEADER + statement + "  omega\n"))
    return out


def _check_accepted(verdicts: list[Verdict]) -> None:
    bad = [v for v in verdicts if not v.accepted]
    if bad:
        raise SystemExit(f"benchmark candidates were not accepted: {bad[:3]}")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _pool_run(config: VerifierConfig, argv: list[str], workers: int, n: int,
                    lean_s: float, timing: StandinTiming) -> dict[str, float]:
    """Throughput with `workers` processes, then sequential latency, in one warm pool."""
    async with Verifier(config.model_copy(update={"workers": workers}), command=argv) as verifier:
        # Warm-up: every process started and its header imported before timing.
        _check_accepted(await asyncio.gather(*(
            verifier.verify(r.name, r.header, r.formal_statement, r.candidate)
            for r in _requests(workers, f"warm{workers}"))))
        start = time.perf_counter()
        verdicts = await verifier.verify_many(_requests(n, f"tp{workers}"))
        elapsed = time.perf_counter() - start
        _check_accepted(verdicts)
        latencies, round_trips = [], []
        timing.begin()
        for r in _requests(max(20, n // 4), f"lat{workers}"):
            t0 = time.perf_counter()
            verdict = await verifier.verify(r.name, r.header, r.formal_statement, r.candidate)
            latencies.append(time.perf_counter() - t0)
            round_trips.append(verdict.time_s)
            _check_accepted([verdict])
        timing.finish()
        stats = verifier.pool.stats()
    standin_ms = timing.summary()["standin_ms"] or 0.0
    mean_latency = statistics.fmean(latencies)
    mean_round_trip = statistics.fmean(round_trips)
    return {
        "workers": workers,
        "requests": n,
        "seconds": elapsed,
        "requests_per_s": n / elapsed,
        "ideal_requests_per_s": workers / lean_s,
        "efficiency": (n / elapsed) / (workers / lean_s),
        "latency_mean_ms": 1e3 * mean_latency,
        "latency_p95_ms": 1e3 * _pct(latencies, 0.95),
        "overhead_mean_ms": 1e3 * (mean_latency - lean_s),
        "overhead_standin_ms": standin_ms,
        "overhead_ours_ms": 1e3 * (mean_latency - lean_s) - standin_ms,
        "overhead_repl_round_trip_ms": 1e3 * (mean_round_trip - lean_s),
        "overhead_pool_and_checks_ms": 1e3 * (mean_latency - mean_round_trip),
        "processes_started": stats["started"],
    }


def _fresh_process_check(argv: list[str], config: VerifierConfig, r: VerifyRequest) -> Verdict:
    """The peer style: a new REPL per proof, importing the header each time."""
    rejection = acceptance.precheck(r.name, r.header, r.formal_statement, r.candidate,
                                    checked_by=standin.CHECKED_BY)
    if rejection is not None:
        return rejection
    with ReplProcess(argv, memory_limit_mb=config.memory_limit_mb,
                     checked_by=standin.CHECKED_BY) as repl:
        env = repl.command(r.header, timeout_s=config.header_timeout_s)
        assert not isinstance(env, ErrorReply) and env.env is not None, env
        t0 = time.perf_counter()
        command = acceptance.lean_command(r.name, r.header, r.candidate, r.formal_statement)
        reply = repl.command(command.text, env=env.env, timeout_s=config.timeout_s)
        return acceptance.judge(r.name, reply, command=command,
                                allowed_axioms=config.allowed_axioms,
                                checked_by=standin.CHECKED_BY, time_s=time.perf_counter() - t0)


def _baseline_run(config: VerifierConfig, argv: list[str], workers: int,
                  n: int) -> dict[str, float]:
    requests = _requests(n, f"fresh{workers}")
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        verdicts = list(pool.map(lambda r: _fresh_process_check(argv, config, r), requests))
    elapsed = time.perf_counter() - start
    _check_accepted(verdicts)
    return {"workers": workers, "requests": n, "seconds": elapsed, "requests_per_s": n / elapsed}


def _recycle_cost(config: VerifierConfig, argv: list[str], header_import_s: float,
                  repeats: int) -> dict[str, float]:
    """Replacing one process: start + header import + close, timed on the bare client."""
    starts, closes = [], []
    for _ in range(repeats):
        repl = ReplProcess(argv, memory_limit_mb=config.memory_limit_mb,
                           checked_by=standin.CHECKED_BY)
        t0 = time.perf_counter()
        repl.start()
        repl.command(HEADER, timeout_s=config.header_timeout_s)
        t1 = time.perf_counter()
        repl.close()
        closes.append(time.perf_counter() - t1)
        starts.append(t1 - t0)
    replace = statistics.fmean(starts) + statistics.fmean(closes)
    return {"repeats": repeats, "header_import_s": header_import_s,
            "start_and_import_s": statistics.fmean(starts), "close_s": statistics.fmean(closes),
            "replace_s": replace, "replace_overhead_s": replace - header_import_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench/verifier.json"),
                        help="JSON results file (default: runs/bench/verifier.json).")
    parser.add_argument("--requests", type=int, default=200, help="Requests per pool run.")
    parser.add_argument("--baseline-requests", type=int, default=16,
                        help="Proofs per fresh-process baseline run.")
    parser.add_argument("--lean-ms", type=float, default=20.0,
                        help="Simulated Lean time per candidate, ms.")
    parser.add_argument("--header-import-s", type=float, default=0.5,
                        help="Simulated header import time, s (a Mathlib import takes seconds).")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    lean_s = args.lean_ms / 1e3

    with tempfile.TemporaryDirectory(prefix="bench-verifier-") as tmp:
        rules = Path(tmp) / "rules.json"
        rules.write_text(json.dumps({"header_import_s": args.header_import_s, "rules": [
            {"name": "lean_time", "substring": "theorem bench_", "sleep_s": lean_s}]}))
        argv = standin.command(rules)
        config = VerifierConfig(backend="standin", standin_rules=rules, max_uses=10_000)
        pooled = [asyncio.run(_pool_run(config, argv, w, args.requests, lean_s,
                                        StandinTiming(Path(tmp) / f"timing-{w}")))
                  for w in args.workers]
        fresh = [_baseline_run(config, argv, w, args.baseline_requests) for w in args.workers]
        recycle = _recycle_cost(config, argv, args.header_import_s, repeats=5)

    for ours, peer in zip(pooled, fresh, strict=True):
        ours["speedup_vs_fresh_process"] = ours["requests_per_s"] / peer["requests_per_s"]
    result = {
        "benchmark": "verifier",
        "backend": standin.CHECKED_BY,
        "machine": machine_info("cpu", torch_stack=False),
        "lean_ms": args.lean_ms, "header_import_s": args.header_import_s,
        "pool": pooled, "fresh_process_baseline": fresh, "recycle": recycle,
    }
    write_json(result, args.out)

    print(f"stand-in REPL: {args.lean_ms:g} ms simulated Lean per candidate, "
          f"{args.header_import_s:g} s header import; {os.cpu_count()} CPUs")
    print(f"{'workers':>7} {'req/s':>8} {'ideal':>7} {'eff':>5} {'lat ms':>7} {'p95 ms':>7} "
          f"{'ovh ms':>7} {'(rt':>6} {'+pool)':>7} {'stand-in':>8} {'ours':>6} "
          f"{'fresh req/s':>11} {'ratio':>6}")
    for ours, peer in zip(pooled, fresh, strict=True):
        print(f"{ours['workers']:>7} {ours['requests_per_s']:>8.1f} "
              f"{ours['ideal_requests_per_s']:>7.1f} {ours['efficiency']:>5.2f} "
              f"{ours['latency_mean_ms']:>7.2f} {ours['latency_p95_ms']:>7.2f} "
              f"{ours['overhead_mean_ms']:>7.2f} {ours['overhead_repl_round_trip_ms']:>6.2f} "
              f"{ours['overhead_pool_and_checks_ms']:>7.2f} {ours['overhead_standin_ms']:>8.2f} "
              f"{ours['overhead_ours_ms']:>6.2f} {peer['requests_per_s']:>11.2f} "
              f"{ours['speedup_vs_fresh_process']:>5.1f}x")
    print(f"recycle: replace a process in {recycle['replace_s']:.3f} s "
          f"(start+import {recycle['start_and_import_s']:.3f} s incl. {args.header_import_s:g} s "
          f"simulated import, close {recycle['close_s'] * 1e3:.1f} ms; "
          f"our overhead {recycle['replace_overhead_s'] * 1e3:.0f} ms)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
