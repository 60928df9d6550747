"""Benchmarking (`prover bench`): pass@k of a proving method on a problem suite, written so that
others can reproduce it.

    passk.py     the unbiased pass@k estimator (Chen et al. 2021) and its standard error
    runner.py    problem selection, the loop over a method into a run folder, the manifest
    report.py    report.md, passk.png, and the comparison of two runs
"""
