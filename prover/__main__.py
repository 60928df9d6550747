"""`python -m prover ...`: the same as the `prover` console script (and `python -m prover.cli`)."""

from prover.cli import main

main()
