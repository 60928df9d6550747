"""`prover train` (prover/rl/train.py, prover/cli/train.py): data order, flags, and the run
end to end through Ray actors, a vLLM engine and stand-in REPL processes (the stand-in's
verdicts are a test double's, not Lean's)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from prover.config import ConfigError, parse_assignments
from prover.problems import load_problems
from prover.rl.train import step_problems

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "data" / "sets" / "synthetic-tactics-rules.json"


def test_step_problems_cover_each_epoch_once_and_depend_only_on_the_step() -> None:
    problems = load_problems("synthetic-tactics", split="train")          # 96
    per_step = 10
    seen = [p.id for s in range(0, 9) for p in step_problems(problems, s, per_step, seed=3)]   # 90 positions
    assert len(set(seen)) == 90, "the first epoch repeats nothing"
    epoch = [p.id for s in range(0, 48) for p in step_problems(problems, s, 2, seed=3)]      # 96 positions
    assert Counter(epoch) == Counter(p.id for p in problems), "one epoch visits every problem once"
    assert step_problems(problems, 7, per_step, seed=3) == step_problems(problems, 7, per_step, seed=3)
    assert step_problems(problems, 7, per_step, seed=3) != step_problems(problems, 7, per_step, seed=4)
    straddle = step_problems(problems, 9, per_step, seed=3)                # positions 90..99: epochs 0 and 1
    assert len(straddle) == per_step and len({p.id for p in straddle}) == per_step, [p.id for p in straddle]


def test_set_flags_parse_toml_values_and_refuse_malformed_ones() -> None:
    parsed = parse_assignments(["grpo.kl_coef=0.01", "fleet.mode=async", "benchmark.k=[1, 8]",
                                "grpo.dynamic_sampling=true", 'rollout.problems="a b"'])
    assert parsed == {"grpo.kl_coef": 0.01, "fleet.mode": "async", "benchmark.k": [1, 8],
                      "grpo.dynamic_sampling": True, "rollout.problems": "a b"}, parsed
    for bad in ("training.steps", "=3", "a..b=1"):
        with pytest.raises(ConfigError, match="expected KEY=VALUE"):
            parse_assignments([bad])
