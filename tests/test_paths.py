"""Shipped data is found one way: `policy.paths` (and `prover.paths`, built on it)."""

from __future__ import annotations

import re

from policy.paths import CHECKOUT, DATA_DIR
from prover import paths


def test_shipped_files_are_where_the_paths_modules_say() -> None:
    from policy.tokenizer import DEFAULT_TOKENIZER_DIR

    assert (CHECKOUT / "pyproject.toml").is_file(), CHECKOUT
    assert paths.SUITES_FILE == DATA_DIR / "suites.toml" and paths.SUITES_FILE.is_file(), paths.SUITES_FILE
    assert DEFAULT_TOKENIZER_DIR.parent.parent == DATA_DIR, DEFAULT_TOKENIZER_DIR
    assert (DEFAULT_TOKENIZER_DIR / "tokenizer.json").is_file(), sorted(DEFAULT_TOKENIZER_DIR.iterdir())


def test_data_dirs_put_the_environment_first(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(paths.DATA_DIR_ENV, f"{tmp_path}/a:{tmp_path}/b")
    got = paths.data_dirs()
    assert got == [tmp_path / "a", tmp_path / "b", paths.SETS_DIR, paths.SHARED_DATA_DIR], got


def test_no_other_module_finds_the_checkout_itself() -> None:
    """Counting parent folders from `__file__` happens in policy/paths.py only (lean_env, which
    may import neither policy nor prover, finds its Lean project in lean_env/toolchain.py)."""
    allowed = {CHECKOUT / "policy" / "paths.py", CHECKOUT / "lean_env" / "toolchain.py"}
    offenders = [
        f"{path.relative_to(CHECKOUT)}:{n}: {line.strip()}"
        for folder in ("policy", "prover", "lean_env", "benchmarks")
        for path in sorted((CHECKOUT / folder).rglob("*.py"))
        if path not in allowed
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if re.search(r"__file__\)?\.resolve\(\)\.parents|sys\.path\.insert", line)
    ]
    assert offenders == [], "\n".join(offenders)
