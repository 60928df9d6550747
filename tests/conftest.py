"""Fixtures shared by every test tier: where the shared data lives, skipping cleanly without it."""

from __future__ import annotations

from pathlib import Path

import pytest

from prover.paths import CHECKOUT, SHARED_DATA_DIR

REPO_ROOT = CHECKOUT
SHARED_DATA = SHARED_DATA_DIR  # ../shared/data: beside the checkout on our machines and in CI


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder with minif2f.jsonl, proofnet.jsonl, minif2f_valid_proofs.jsonl (skip without it)."""
    if not (SHARED_DATA / "minif2f.jsonl").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
