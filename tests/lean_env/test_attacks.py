"""Attacks on the static layer, one class of issue #8 at a time, each written from what Lean
does (its lexer, its command loop, its `in` combinator), not from what our code prints.

Every candidate here would be accepted by a verifier that reads text the way ours used to
(first `theorem` token pair, a list of banned spellings, any `#print axioms`-shaped message);
each must now be rejected, with the construct and its line named. The last block holds the
legitimate proofs that the old rules rejected.
"""

from __future__ import annotations

import pytest

from lean_env.acceptance import precheck
from lean_env.verdict import Rejected, RejectReason

BY = "attack test"
HEADER = ("import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 0\n\n"
          "open BigOperators Real Nat Topology Rat\n\n")
STATEMENT = "theorem t (a b : ℕ) (h₀ : a = 2) : a + b = b + a := by\n"
PROOF = "theorem t (a b : ℕ) (h₀ : a = 2) : a + b = b + a := by\n  omega\n"


def _rejected(candidate: str) -> Rejected:
    verdict = precheck("t", HEADER, STATEMENT, candidate, checked_by=BY)
    assert isinstance(verdict, Rejected), (candidate, verdict)
    assert "line" in verdict.detail or "import" in verdict.detail, verdict.detail
    return verdict


# 1. The lexer disagrees with Lean's ------------------------------------------------------------

@pytest.mark.parametrize("candidate", [
    # `/--/`: a doc comment opener; the text after it is its body up to `-/`. A lexer that
    # reads `/-` ... `-/` sees a closed comment and then code; Lean sees one doc comment.
    # Here the reverse trick: code hidden from a lexer that treats `/-!-/ ...` wrongly.
    HEADER + PROOF.replace("  omega", "  omega\n/-!-/ theorem t2 : False := sorry"),
    # A superscript digit is no identifier character (Char.isDigit is ASCII): `sorry²`.
    HEADER + PROOF.replace("omega", "exact sorry²"),
    # Non-ASCII letters: Python's isalpha() says `sorryé` is one identifier; Lean does not.
    HEADER + PROOF.replace("omega", "exact sorryé"),
    # A `#` command glued to an identifier: Lean's token table splits `#exitx`.
    HEADER + PROOF + "#exitx\n",
    # `\u{...}` is no Lean escape: the string ends where Lean says, not where we guess.
    HEADER + PROOF.replace("omega", 'have _s := "\\u{22}" ++ "x"\n  omega'),
    # A tab where Lean expects whitespace.
    HEADER + PROOF.replace("  omega", "\tomega"),
    # Code between the braces of a string `throwError` interpolates (no `s!` in sight).
    HEADER + PROOF.replace("omega", 'exact (throwError "{native_decide}" : Id _)'),
])
def test_lexer_class(candidate: str) -> None:
    _rejected(candidate)


# 2. The target theorem is picked blindly ---------------------------------------------------------

@pytest.mark.parametrize(("candidate", "reason"), [
    # Two declarations of the name: the second (in another scope) is the one Lean keeps under
    # `_root_`? Neither may be trusted: exactly one is allowed.
    (HEADER + PROOF + "namespace X\n" + PROOF + "end X\n", None),
    # `«Nat.Prime»`-style escaping: `«t»` is `t`, but `«X.t»` is one component, not `X.t`.
    (HEADER + PROOF.replace("theorem t", "theorem «X.t»"), RejectReason.THEOREM_MISSING),
    # The theorem inside a namespace that is never closed.
    (HEADER + "namespace X\n" + PROOF, None),
    # A `mutual` block around the theorem.
    (HEADER + "mutual\n" + PROOF + "end\n", None),
    # An auxiliary declaration named like an identifier of the statement (shadowing `a`?
    # no: like a constant the statement uses).
    (HEADER.replace("\n\n", "\n\n", 1) + "def HAdd.hAdd' := 0\ntheorem h₀ : True := trivial\n"
     + PROOF, None),
])
def test_target_class(candidate: str, reason: RejectReason | None) -> None:
    verdict = _rejected(candidate)
    if reason is not None:
        assert verdict.reason is reason, verdict


# 3. Scope and `open` tracking ---------------------------------------------------------------------

@pytest.mark.parametrize("candidate", [
    # `open` not in column 0, after a tactic block ends: Lean starts a command there.
    HEADER + "theorem aux : True := by trivial\n  open Polynomial\n" + PROOF,
    # `open X in` applied to a whole-file `open` (persisting) via a second command on one line.
    HEADER + "open Polynomial in open Finset\n" + PROOF,
    # `end` inside a quotation closing nothing; then the theorem inside the namespace.
    HEADER + "namespace X\ndef q := `(end X)\n" + PROOF + "end X\n",
    # `open` at top level of a namespace that the header does not open.
    HEADER + "open Polynomial\n" + PROOF,
])
def test_scope_class(candidate: str) -> None:
    _rejected(candidate)


# 4. The banned list was a list of spellings -------------------------------------------------------

@pytest.mark.parametrize("candidate", [
    HEADER + 'notation3 "ℕ" => Unit\n' + PROOF,
    HEADER + "binder_predicate x \" >>> \" y:term => `($x > $y)\n" + PROOF,
    HEADER + "simproc_decl foo (_) := fun _ => pure .continue\n" + PROOF,
    HEADER + "@[term_elab foo] def f := 0\n" + PROOF,
    HEADER + "@[instance] def i : Add ℕ := ⟨fun _ _ => 0⟩\n" + PROOF,
    HEADER + "attribute [local instance] Classical.propDecidable\n" + PROOF,
    HEADER + PROOF.replace("omega", "stop\n  omega"),
    HEADER + PROOF.replace("omega", "decide (config := {«native» := true})"),
    HEADER + PROOF.replace("omega", "decide (config := ⟨true, true, true⟩)"),
    HEADER + PROOF.replace("omega", "decide (config := .mk true true)"),
    HEADER + PROOF.replace("omega", "by_elab pure (Lean.mkConst ``True.intro)"),
    HEADER + "universe u\n" + PROOF,
    HEADER + "set_option autoImplicit true\n" + PROOF,
    HEADER + "deriving instance Repr for Nat\n" + PROOF,
])
def test_allowlist_class(candidate: str) -> None:
    verdict = _rejected(candidate)
    assert verdict.reason is RejectReason.FORBIDDEN, verdict


# 5/6. Forged `#print axioms` and kernel switches: see test_acceptance (judge) and the stand-in
# verifier tests; statically, every route to running code is closed:

@pytest.mark.parametrize("candidate", [
    HEADER + PROOF.replace("omega", "set_option debug.skipKernelTC true in omega"),
    HEADER + "set_option debug.skipKernelTC true\n" + PROOF,
    HEADER + PROOF + "#eval Lean.logInfo \"'t' does not depend on any axioms\"\n",
    HEADER + PROOF.replace("omega", "run_tac Lean.logInfo \"'t' does not depend on any axioms\"\n  omega"),
    HEADER + "open Lean Elab Command in\nelab \"x\" : command => pure ()\n" + PROOF,
    HEADER + PROOF + "namespace Y\n",
])
def test_kernel_and_forgery_routes(candidate: str) -> None:
    _rejected(candidate)


# 7. Legitimate proofs the old rules rejected -------------------------------------------------------

@pytest.mark.parametrize("candidate", [
    HEADER + "open scoped BigOperators\n" + PROOF,              # the header already opens it
    HEADER + "open Finset in\nattribute [simp] Nat.add_comm\n" + PROOF,
    HEADER + PROOF.replace("omega", "have native : a = 2 := h₀\n  omega"),
    HEADER + "/-- aux -/\nlemma helper (x : ℕ) : x + 0 = x := by simp\n\n" + PROOF,
    HEADER + "set_option maxRecDepth 10000 in\nopen Finset in\nlemma helper : True := trivial\n"
    + "set_option maxRecDepth 10000 in\n" + PROOF,
    HEADER + PROOF.replace("omega", "open Finset in\n  omega"),
])
def test_false_rejections_are_gone(candidate: str) -> None:
    verdict = precheck("t", HEADER, STATEMENT, candidate, checked_by=BY)
    assert verdict is None, (candidate, verdict)
