"""Benchmarks, each run from the checkout as a module (`python -m benchmarks.NAME`); they print
a table and write a JSON report. Shared helpers: `benchmarks.common`."""
