"""`prover bench`: pass@k on miniF2F-style suites. Its commands arrive with the proving stage."""

from __future__ import annotations

from prover.cli.common import not_yet_available

app = not_yet_available(
    "bench", "proving",
    "Benchmark pass@k on miniF2F-style suites, with a report (copy of the suite, Lean and Mathlib "
    "versions, header, timeout, acceptance rules) that others can reproduce.")
