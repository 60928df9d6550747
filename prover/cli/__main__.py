"""`python -m prover.cli ...`: the same as the `prover` console script."""

from prover.cli import main

main()
