"""The prover: CLI, configuration, problem sets, search, benchmarks, GRPO learner and Ray fleet.

Depends on `policy` (the model and its engines) and `lean_env` (the verifier); neither of
those imports this package.
"""

__version__ = "0.1.0"
