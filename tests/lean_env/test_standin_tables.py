"""The two rule tables shipped for demos behave as their names say (against the stand-in)."""

from __future__ import annotations

from lean_env.config import VerifierConfig
from lean_env.standin import TABLES_DIR
from lean_env.verifier import Verifier, VerifyRequest

HEADER = "import Mathlib\n\n"
STATEMENT = "theorem t (a b : ℕ) : a + b = b + a := by\n"


def _verdicts(table: str) -> list[str]:
    config = VerifierConfig(backend="standin", standin_rules=TABLES_DIR / table, workers=1)
    with Verifier(config) as verifier:
        verdicts = verifier.verify_batch([
            VerifyRequest("t", HEADER, STATEMENT, STATEMENT + "  omega\n"),
            VerifyRequest("t", HEADER, STATEMENT, STATEMENT + "  exact?\n"),
        ])
    assert all(v.checked_by == "stand-in REPL (test double, not Lean)" for v in verdicts), verdicts
    return [v.kind + (f":{v.reason}" if hasattr(v, "reason") else "") for v in verdicts]


def test_accept_unless_sorry_accepts_sorry_free_code() -> None:
    assert _verdicts("accept_unless_sorry.json") == ["accepted", "accepted"]


def test_reject_unjudged_rejects_every_candidate() -> None:
    assert _verdicts("reject_unjudged.json") == ["rejected:lean_error", "rejected:lean_error"]
