"""The prover's shipped and shared files, found from the checkout (`policy.paths`, the one
place that knows the layout).

`PROVER_DATA_DIR` (colon-separated folders) comes first when problem files are looked up;
then `data/sets/` in the checkout, then `../shared/data` beside it (our development machines
and CI keep the large problem sets and released proofs there).
"""

from __future__ import annotations

import os
from pathlib import Path

from policy.paths import CHECKOUT, DATA_DIR

SUITES_FILE = DATA_DIR / "suites.toml"
SETS_DIR = DATA_DIR / "sets"
SHARED_DATA_DIR = CHECKOUT.parent / "shared" / "data"
DATA_DIR_ENV = "PROVER_DATA_DIR"

__all__ = ["CHECKOUT", "DATA_DIR", "DATA_DIR_ENV", "SETS_DIR", "SHARED_DATA_DIR", "SUITES_FILE", "data_dirs"]


def data_dirs() -> list[Path]:
    """Folders searched for problem files, in order: $PROVER_DATA_DIR, data/sets, ../shared/data."""
    dirs = [Path(p) for p in os.environ.get(DATA_DIR_ENV, "").split(os.pathsep) if p]
    return dirs + [SETS_DIR, SHARED_DATA_DIR]
