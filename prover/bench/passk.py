"""pass@k: the unbiased estimator of Chen et al. (2021, "Evaluating Large Language Models
Trained on Code", the Codex paper, section 2.1) and its standard error across problems.

From n samples of one problem, c of them correct, the chance that at least one of k samples
drawn without replacement is correct is

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n-c+1}^{n} (1 - k / i)

The product form (the paper's numpy snippet) never forms the binomials, which overflow
floats for n in the hundreds. A suite's pass@k is the mean over its problems; its standard
error is the sample standard deviation of the per-problem values over sqrt(problems): the
uncertainty from which problems were drawn and from sampling, as in Miller (2024, "Adding
Error Bars to Evals").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `c` correct among `n` samples (0 <= c <= n, 1 <= k <= n)."""
    if not 0 <= c <= n:
        raise ValueError(f"correct samples must lie in [0, n]: got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"k must lie in [1, n]: got k={k} with n={n} samples")
    if n - c < k:   # every draw of k samples holds a correct one
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@dataclass(frozen=True)
class PassAtK:
    """A suite's pass@k: the mean over `problems` and its standard error (None below 2 problems)."""

    k: int
    mean: float
    se: float | None
    problems: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pass_at_k_table(counts: Sequence[tuple[int, int]], ks: Sequence[int]) -> list[PassAtK]:
    """pass@k for each k over problems given as (n, c) pairs, each problem weighted equally."""
    if not counts:
        return [PassAtK(k, 0.0, None, 0) for k in ks]
    table = []
    for k in ks:
        values = [pass_at_k(n, c, k) for n, c in counts]
        mean = sum(values) / len(values)
        se = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
              if len(values) > 1 else None)
        table.append(PassAtK(k, mean, se, len(values)))
    return table
