"""Acceptance rules (REPL_PROTOCOL.md section 3) on real proofs and on every known cheat.

The real corpus: DeepSeek-Prover-V2's 221 released miniF2F-valid proofs, checked against
DeepSeek-Prover-V1.5's minif2f.jsonl. 219 pass the static checks; the two whose released
proof states a corrected theorem must be rejected as statement mismatches.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lean_env.acceptance import LeanCommand, judge, lean_command, precheck, statement_text
from lean_env.commands import commands
from lean_env.lexer import code_tokens, tokenize
from lean_env.protocol import CommandResponse, ErrorReply, Sorry, parse_command_reply
from lean_env.verdict import Accepted, LeanMessage, NotChecked, Rejected, RejectReason

BY = "static test"
HEADER = ("import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 0\n\n"
          "open BigOperators Real Nat Topology Rat\n\n")
STATEMENT = "theorem t (a b : ℕ) (h₀ : a = 2) : a + b = b + a := by\n"
PROOF = "theorem t (a b : ℕ) (h₀ : a = 2) : a + b = b + a := by\n  omega\n"
STANDARD = ("propext", "Classical.choice", "Quot.sound")


def _load(shared: Path) -> tuple[dict[str, dict], list[dict]]:
    problems = {}
    for line in (shared / "minif2f.jsonl").read_text().splitlines():
        row = json.loads(line)
        problems[row["name"]] = row
    proofs = [json.loads(line)
              for line in (shared / "minif2f_valid_proofs.jsonl").read_text().splitlines()]
    return problems, proofs


def test_released_minif2f_proofs_pass_except_the_two_corrected_statements(shared_data: Path) -> None:
    problems, proofs = _load(shared_data)
    assert len(proofs) == 221, len(proofs)
    passed, rejected = [], {}
    for row in proofs:
        p = problems[row["name"]]
        verdict = precheck(row["name"], p["header"], p["formal_statement"], row["code"],
                           checked_by=BY)
        if verdict is None:
            passed.append(row["name"])
        else:
            rejected[row["name"]] = verdict
    assert len(passed) == 219, {k: getattr(v, "detail", v) for k, v in rejected.items()}
    assert sorted(rejected) == ["induction_sum_odd", "mathd_algebra_247"], rejected
    for verdict in rejected.values():
        assert isinstance(verdict, Rejected), verdict
        assert verdict.reason is RejectReason.STATEMENT_MISMATCH, verdict
        assert "problem:" in verdict.detail and "candidate:" in verdict.detail, verdict.detail
    # The diff names what changed: the dropped `(n)` binder and the moved parenthesis.
    assert "problem has `n) (`" in rejected["mathd_algebra_247"].detail, \
        rejected["mathd_algebra_247"].detail
    assert "(2 * k + 1)" in rejected["induction_sum_odd"].detail, rejected["induction_sum_odd"].detail


def test_released_proofs_become_header_free_commands(shared_data: Path) -> None:
    problems, proofs = _load(shared_data)
    for row in proofs[:40]:
        p = problems[row["name"]]
        command = lean_command(row["name"], p["header"], row["code"], p["formal_statement"])
        cmd = command.text
        assert "import" not in cmd.split("theorem")[0], cmd[:300]
        lines = cmd.splitlines()
        assert lines[command.axioms_line - 1] == f"#print axioms _root_.{row['name']}", cmd[-300:]
        assert lines[command.statement_line - 1].startswith("example : "), cmd[-300:]
        assert lines[command.statement_line - 1].endswith(f":= @_root_.{row['name']}"), cmd[-300:]
        # Line numbers are kept: the theorem sits on the same line as in the file.
        line_in_file = row["code"][: row["code"].index("theorem ")].count("\n")
        assert cmd[: cmd.index("theorem ")].count("\n") == line_in_file, row["name"]


def test_every_proofnet_statement_round_trips(shared_data: Path) -> None:
    """371 ProofNet statements (theorems and a few data-constructing `def`s): the statement
    with a proof appended passes, and the same with a changed conclusion does not."""
    rows = [json.loads(line) for line in (shared_data / "proofnet.jsonl").read_text().splitlines()]
    assert len(rows) == 371, len(rows)
    failures = []
    for row in rows:
        name, header, stmt = row["name"], row["header"], row["formal_statement"]
        body = stmt.rstrip() + ("\n  simp\n" if stmt.rstrip().endswith("by") else " by\n  simp\n")
        same = precheck(name, header, stmt, header + body, checked_by=BY)
        weakened = statement_text(name, stmt) + " ∧ True := by\n  simp\n"
        changed = precheck(name, header, stmt, weakened, checked_by=BY)
        if same is not None or not (isinstance(changed, Rejected)
                                    and changed.reason is RejectReason.STATEMENT_MISMATCH):
            failures.append((name, same, changed))
    assert not failures, failures[:3]


# --- cheats (REPL_PROTOCOL.md section 3 rule 5, and the statement-context ones) ------------

# (id, text to insert before the theorem or None, replacement for the proof body or None)
CHEATS = [
    ("sorry", None, "  sorry"),
    ("admit", None, "  admit"),
    ("native_decide", None, "  native_decide"),
    ("decide_native", None, "  decide +native"),
    ("ofReduceBool", None, "  exact Lean.ofReduceBool _ _ rfl"),
    ("ofReduceBool_opened", "open Lean in\n", "  exact ofReduceBool _ _ rfl"),
    ("trustCompiler", None, "  have := Lean.trustCompiler\n  omega"),
    ("sorryAx", None, "  exact sorryAx _ false"),
    ("skipKernelTC", "set_option debug.skipKernelTC true in\n", None),
    ("byAsSorry", "set_option debug.byAsSorry true\n", None),
    ("skipKernelTC_tactic", None, "  set_option debug.skipKernelTC true in\n  omega"),
    ("axiom", "axiom cheat : ∀ a b : ℕ, a + b = b + a\n", "  exact cheat a b"),
    ("exit", None, "  omega\n#exit\n"),
    ("injected_import", None, "  omega\nimport Mathlib.Tactic\n"),
    ("macro_rules", "macro_rules | `(tactic| omega) => `(tactic| sorry)\n", None),
    ("macro", "macro \"done!\" : tactic => `(tactic| sorry)\n", "  done!"),
    ("syntax", "syntax \"cheat\" : tactic\n", None),
    ("elab", "elab \"cheat\" : tactic => pure ()\n", "  cheat"),
    ("notation", "notation \"ℕ\" => Unit\n", None),
    ("infix", "infix:50 \" ≃≃ \" => Eq\n", None),
    ("infixl", "infixl:65 \" +' \" => HAdd.hAdd\n", None),
    ("infixr", "infixr:67 \" ::: \" => List.cons\n", None),
    ("prefix", "prefix:max \"√\" => id\n", None),
    ("postfix", "postfix:max \"!\" => id\n", None),
    ("unsafe", "unsafe def f : ℕ := 0\n", None),
    ("implemented_by", "@[implemented_by id] def g (n : ℕ) : ℕ := n\n", None),
    ("extern", "@[extern \"c_g\"] def g (n : ℕ) : ℕ := n\n", None),
    ("run_cmd", "run_cmd Lean.logInfo \"hi\"\n", None),
    ("run_tac", None, "  run_tac Lean.Elab.Tactic.evalTactic (← `(tactic| omega))"),
    ("eval", "#eval IO.println \"hi\"\n", None),
    ("open_private", "open private foo in\n", None),
    ("instance", "instance : Add ℕ := ⟨fun _ _ => 0⟩\n", None),
    ("variable", "variable (h : False)\n", None),
    ("print", "#print \"'t' does not depend on any axioms\"\n", None),
    ("guard_msgs", "/-- warning: declaration uses 'sorry' -/\n#guard_msgs in\n", None),
]


def _with_cheat(before: str | None, body: str | None) -> str:
    proof = PROOF if body is None else PROOF.replace("  omega\n", body + "\n")
    return HEADER + (before or "") + proof


def test_genuine_proof_passes() -> None:
    assert precheck("t", HEADER, STATEMENT, HEADER + PROOF, checked_by=BY) is None
    assert precheck("t", HEADER, STATEMENT, PROOF, checked_by=BY) is None


@pytest.mark.parametrize(("before", "body"), [(b, p) for _, b, p in CHEATS],
                         ids=[c[0] for c in CHEATS])
def test_each_cheat_is_rejected(before: str | None, body: str | None) -> None:
    verdict = precheck("t", HEADER, STATEMENT, _with_cheat(before, body), checked_by=BY)
    assert isinstance(verdict, Rejected), verdict
    assert verdict.reason in (RejectReason.FORBIDDEN, RejectReason.HEADER_MISMATCH), verdict
    assert "line" in verdict.detail or "import" in verdict.detail, verdict.detail


@pytest.mark.parametrize("word", ["sorry", "native_decide", "admit", "Lean.ofReduceBool",
                                  "set_option debug.skipKernelTC true in", "axiom", "#exit",
                                  "import Foo", "macro_rules", "notation", "#eval", "unsafe",
                                  "open private"])
@pytest.mark.parametrize("wrap", ["-- {w}\n", "/- {w} -/\n", "/-- {w} -/\n", "/-! {w} -/\n",
                                  "/- outer /- nested {w} -/ still comment -/\n"])
def test_cheat_words_in_comments_pass(word: str, wrap: str) -> None:
    candidate = HEADER + wrap.format(w=word) + PROOF.replace("  omega", "  -- " + word + "\n  omega")
    verdict = precheck("t", HEADER, STATEMENT, candidate, checked_by=BY)
    assert verdict is None, (candidate, verdict)


@pytest.mark.parametrize("literal", ['"sorry"', '"a \\" sorry"', "s!\"no {0} sorry\"",
                                     'r#"native_decide "quoted" #exit"#'])
def test_cheat_words_in_strings_pass(literal: str) -> None:
    body = f"  have _s : String := {literal}\n  omega"
    candidate = HEADER + PROOF.replace("  omega", body)
    assert precheck("t", HEADER, STATEMENT, candidate, checked_by=BY) is None, candidate


def test_code_inside_interpolated_string_is_seen() -> None:
    body = "  have _s : String := s!\"{(sorry : ℕ)}\"\n  omega"
    verdict = precheck("t", HEADER, STATEMENT, HEADER + PROOF.replace("  omega", body), checked_by=BY)
    assert isinstance(verdict, Rejected) and verdict.reason is RejectReason.FORBIDDEN, verdict


def test_identifiers_containing_cheat_words_pass() -> None:
    body = "  have sorry_free : True := trivial\n  have h' := sorry_free\n  omega"
    assert precheck("t", HEADER, STATEMENT, PROOF.replace("  omega", body), checked_by=BY) is None


def test_own_print_axioms_is_fine() -> None:
    candidate = HEADER + PROOF + "\n#print axioms t\n"
    assert precheck("t", HEADER, STATEMENT, candidate, checked_by=BY) is None, candidate


def test_maxheartbeats_in_is_fine() -> None:
    candidate = HEADER + "set_option maxHeartbeats 400000 in\n" + PROOF
    assert precheck("t", HEADER, STATEMENT, candidate, checked_by=BY) is None


def test_forbidden_detail_names_construct_and_line() -> None:
    verdict = precheck("t", HEADER, STATEMENT, HEADER + PROOF.replace("omega", "native_decide"),
                       checked_by=BY)
    assert isinstance(verdict, Rejected), verdict
    assert "`native_decide` at line 9" in verdict.detail, verdict.detail


@pytest.mark.parametrize(("candidate", "reason"), [
    ("import Mathlib.Tactic\n" + PROOF, RejectReason.HEADER_MISMATCH),
    (HEADER + PROOF.replace("theorem t", "theorem t2"), RejectReason.THEOREM_MISSING),
    (HEADER + PROOF.replace("a = 2", "a = 3"), RejectReason.STATEMENT_MISMATCH),
    (HEADER + PROOF.replace("(h₀ : a = 2) ", ""), RejectReason.STATEMENT_MISMATCH),
    (HEADER + "namespace X\n" + PROOF + "end X\n", RejectReason.STATEMENT_MISMATCH),
    (HEADER + "open Polynomial\n" + PROOF, RejectReason.STATEMENT_MISMATCH),
    (HEADER + "open Polynomial in\n" + PROOF, RejectReason.STATEMENT_MISMATCH),
    (HEADER + "/- unterminated\n" + PROOF, RejectReason.FORBIDDEN),
])
def test_structural_rejections(candidate: str, reason: RejectReason) -> None:
    verdict = precheck("t", HEADER, STATEMENT, candidate, checked_by=BY)
    assert isinstance(verdict, Rejected) and verdict.reason is reason, (candidate, verdict)


@pytest.mark.parametrize("candidate", [
    HEADER + "section\nopen Polynomial\nlemma aux : True := trivial\nend\n" + PROOF,
    HEADER + "namespace X\nlemma aux : True := trivial\nend X\n" + PROOF,
    HEADER + "open Real in\n" + PROOF,
    PROOF.replace("theorem", "lemma"),
    PROOF.replace(":= by\n  omega", ":= by omega"),
    "import Mathlib\n" + PROOF,
    "theorem t (a b : ℕ)\n    (h₀ : a = 2) :\n  a + b = b + a := by\n  omega",
])
def test_structural_variants_pass(candidate: str) -> None:
    assert precheck("t", HEADER, STATEMENT, candidate, checked_by=BY) is None, candidate


def test_pattern_matching_and_abs_statements() -> None:
    stmt = "theorem m (x : ℝ) : |x| ≥ 0 := by\n"
    assert precheck("m", HEADER, stmt, "theorem m (x : ℝ) : |x| ≥ 0 := abs_nonneg x", checked_by=BY) is None
    stmt2 = "theorem f : ∀ n : ℕ, n + 0 = n := by\n"
    cand = "theorem f : ∀ n : ℕ, n + 0 = n\n  | 0 => rfl\n  | n + 1 => rfl\n"
    assert precheck("f", HEADER, stmt2, cand, checked_by=BY) is None
    changed = "theorem f : ∀ n : ℕ, n + 0 = n + 0\n  | 0 => rfl\n  | n + 1 => rfl\n"
    verdict = precheck("f", HEADER, stmt2, changed, checked_by=BY)
    assert isinstance(verdict, Rejected) and verdict.reason is RejectReason.STATEMENT_MISMATCH, verdict


@pytest.mark.parametrize("candidate", ["", "   \n", "-- just a comment\n",
                                       "I could not find a proof of this statement."])
def test_no_code_is_not_checked(candidate: str) -> None:
    verdict = precheck("t", HEADER, STATEMENT, candidate, checked_by=BY)
    assert isinstance(verdict, NotChecked) and verdict.cause == "no_code", verdict


def test_lean_command_reuses_the_candidates_tokens_only_where_they_are_the_texts() -> None:
    # lean_command blanks header lines found in the candidate's own tokens (lexed once) past
    # the header; the result must be what lexing the header-less text finds.
    after = [
        "set_option maxHeartbeats 400000\n" + PROOF,        # kept: not the header's
        "\nimport Mathlib\n" + PROOF,                      # repeated import: blanked
        "\nopen BigOperators Real Nat Topology Rat\n" + PROOF,   # repeats the header's open
        " -- same line as the header's end\n" + PROOF,
        "Foo\nimport Aesop\n" + PROOF,                     # runs the header's last word on
        '\n/- "a comment -/ import X\n' + PROOF,
    ]
    for tail in after:
        file = HEADER.rstrip() + tail
        skip = len(HEADER.rstrip())
        text = "\n" * file.count("\n", 0, skip) + file[skip:]
        header_cmds = {tuple(t.text for t in c.tokens)
                       for c in commands(code_tokens(tokenize(HEADER)))}
        for cmd in reversed(commands(code_tokens(tokenize(text, comments=True)))):
            words = tuple(t.text for t in cmd.tokens)
            if cmd.keyword == "import" or (cmd.keyword in ("open", "set_option")
                                           and words in header_cmds):
                start, end = cmd.tokens[0].start, cmd.tokens[-1].end
                text = text[:start] + "\n" * text.count("\n", start, end) + text[end:]
        got = lean_command("t", HEADER, file, STATEMENT).text
        assert got.startswith(text.rstrip() + "\n\n#print axioms"), (tail, got, text)
    assert "import" not in lean_command("t", HEADER, HEADER.rstrip() + after[1], STATEMENT).text


def test_lean_command_strips_header_and_appends_the_checks() -> None:
    file = HEADER + "set_option maxHeartbeats 400000\n" + PROOF
    command = lean_command("t", HEADER, file, STATEMENT)
    cmd = command.text
    assert "import" not in cmd and "open BigOperators" not in cmd, cmd
    assert "set_option maxHeartbeats 400000" in cmd, cmd    # not in the header: kept
    lines_before = cmd.count("\n", 0, cmd.index("theorem t"))
    assert lines_before == file.count("\n", 0, file.index("theorem t")), cmd
    bare = lean_command("t", HEADER, PROOF, STATEMENT)
    assert bare.text == (PROOF.rstrip() + "\n\n#print axioms _root_.t\n\n"
                         "example : ∀ (a b : ℕ) (h₀ : a = 2), a + b = b + a := @_root_.t\n"), bare
    assert (bare.axioms_line, bare.statement_line) == (4, 6), bare


def test_statement_check_is_built_from_the_problem_not_the_candidate() -> None:
    # The candidate's own (different) statement never reaches the appended example.
    weakened = PROOF.replace("a + b = b + a", "True")
    command = lean_command("t", HEADER, weakened, STATEMENT)
    assert command.text.splitlines()[command.statement_line - 1] == \
        "example : ∀ (a b : ℕ) (h₀ : a = 2), a + b = b + a := @_root_.t", command.text
    no_binders = lean_command("u", HEADER, "theorem u : 1 + 1 = 2 := by norm_num",
                              "theorem u : 1 + 1 = 2 := by\n")
    assert no_binders.text.splitlines()[-1] == "example : 1 + 1 = 2 := @_root_.u", no_binders


# --- judge: every reply shape of REPL_PROTOCOL.md -------------------------------------------

COMMAND = LeanCommand("(candidate)", axioms_line=12, statement_line=14)


def _info(text: str, line: int = 12) -> dict:
    return {"severity": "info", "pos": {"line": line, "column": 0},
            "endPos": {"line": line, "column": 6}, "data": text}


AX_OK = _info("'t' depends on axioms: [propext, Classical.choice, Quot.sound]")


def _judge(reply: dict | ErrorReply) -> Accepted | Rejected:
    response = reply if isinstance(reply, ErrorReply) else parse_command_reply(reply)
    assert not isinstance(response, ErrorReply) or isinstance(reply, ErrorReply), response
    return judge("t", response, command=COMMAND, allowed_axioms=STANDARD, checked_by=BY, time_s=0.5)


def test_judge_accepts_clean_reply_with_standard_axioms() -> None:
    verdict = _judge({"env": 1, "messages": [AX_OK]})
    assert isinstance(verdict, Accepted), verdict
    assert verdict.axioms == STANDARD and verdict.time_s == 0.5 and verdict.messages == (), verdict
    none = _judge({"env": 1, "messages": [_info("'t' does not depend on any axioms")]})
    assert isinstance(none, Accepted) and none.axioms == (), none
    wrapped = _judge({"env": 1, "messages": [
        _info("'t' depends on axioms: [propext,\n Classical.choice,\n Quot.sound]"),
        {"severity": "warning", "pos": {"line": 3, "column": 2}, "data": "unused variable `h`"}]})
    assert isinstance(wrapped, Accepted) and len(wrapped.messages) == 1, wrapped


@pytest.mark.parametrize(("reply", "reason"), [
    ({"env": 6, "messages": [{"severity": "error", "pos": {"line": 1, "column": 23},
                              "endPos": {"line": 1, "column": 26},
                              "data": "type mismatch\n  rfl"}, AX_OK]}, RejectReason.LEAN_ERROR),
    ({"env": 2, "sorries": [{"pos": {"line": 1, "column": 18}, "endPos": {"line": 1, "column": 23},
                             "goal": "⊢ Nat", "proofState": 0}],
      "messages": [{"severity": "warning", "pos": {"line": 1, "column": 4},
                    "data": "declaration uses 'sorry'"}, AX_OK]}, RejectReason.SORRY),
    # The bug of some builds: the warning without any `sorries` entry.
    ({"env": 2, "messages": [{"severity": "warning", "pos": {"line": 1, "column": 4},
                              "data": "declaration uses 'sorry'"}, AX_OK]}, RejectReason.SORRY),
    ({"env": 3, "messages": [_info("'t' depends on axioms: [propext, sorryAx]")]}, RejectReason.SORRY),
    ({"env": 3, "messages": [_info("'t' depends on axioms: [propext, Lean.ofReduceBool]")]},
     RejectReason.AXIOMS),
    ({"env": 3, "messages": [_info("'t' depends on axioms: [cheat]")]}, RejectReason.AXIOMS),
    ({"env": 3}, RejectReason.AXIOMS),                                     # no axioms line
    ({"env": 3, "messages": [_info("'u' does not depend on any axioms")]}, RejectReason.AXIOMS),
    # Only the answer at the appended `#print axioms` line counts: a candidate's `trace` or
    # `logInfo` elsewhere cannot stand in for a real answer that never came (`#exit`, a file
    # ending inside a namespace).
    ({"env": 3, "messages": [_info("'t' does not depend on any axioms", 2),
                             _info("'t' depends on axioms: [propext]", 13)]}, RejectReason.AXIOMS),
    ({"env": 3, "messages": [_info("'t' does not depend on any axioms", 12), AX_OK]},
     RejectReason.AXIOMS),
    # An error at the statement check's line: the proved constant's type is not the problem's.
    ({"env": 3, "messages": [AX_OK, {"severity": "error", "pos": {"line": 14, "column": 0},
                                     "data": "type mismatch\n  @t"}]},
     RejectReason.STATEMENT_MISMATCH),
])
def test_judge_rejections(reply: dict, reason: RejectReason) -> None:
    verdict = _judge(reply)
    assert isinstance(verdict, Rejected) and verdict.reason is reason, verdict
    assert verdict.detail, verdict


def test_judge_ignores_forged_answers_beside_the_real_one() -> None:
    verdict = _judge({"env": 3, "messages": [_info("'t' does not depend on any axioms", 2), AX_OK,
                                             _info("'t' depends on axioms: [cheat]", 13)]})
    assert isinstance(verdict, Accepted) and verdict.axioms == STANDARD, verdict
    assert [m.line for m in verdict.messages] == [2, 13], verdict.messages


def test_judge_error_reply_is_lean_error() -> None:
    verdict = _judge(ErrorReply("Lean error:\n<input>:1:0: unknown identifier"))
    assert isinstance(verdict, Rejected) and verdict.reason is RejectReason.LEAN_ERROR, verdict
    assert "unknown identifier" in verdict.detail, verdict


def test_judge_sorry_from_values() -> None:
    response = CommandResponse(env=1, sorries=(Sorry(line=2, column=4, goal="⊢ False", proof_state=0),),
                               messages=(LeanMessage("info", AX_OK["data"], line=12),))
    verdict = judge("t", response, command=COMMAND, allowed_axioms=STANDARD, checked_by=BY, time_s=0.0)
    assert isinstance(verdict, Rejected) and verdict.reason is RejectReason.SORRY, verdict
    assert "2:4" in verdict.detail, verdict


# --- with real Lean (runs where `prover lean setup` has been done) ---------------------------

@pytest.mark.lean
def test_real_lean_accepts_a_proof_and_rejects_what_precheck_cannot_see() -> None:
    from lean_env.config import VerifierConfig
    from lean_env.toolchain import checked_by, find_toolchain, repl_command
    from lean_env.verifier import Verifier, VerifyRequest

    tc = find_toolchain()
    if not tc.complete:
        pytest.skip("no Lean toolchain with Mathlib and the REPL (run `prover lean setup`)")
    config = VerifierConfig(repl_command=repl_command(tc), project_dir=tc.project_dir,
                            workers=1, timeout_s=120)
    wrong = PROOF.replace("omega", "simp only []")          # a Lean error, no cheat word
    helper = ("theorem t (a b : ℕ) (h₀ : a = 2) : a + b = b + a := by\n"
              "  exact Nat.add_comm a b\n")
    with Verifier(config, checked_by=checked_by(tc)) as verifier:
        verdicts = verifier.verify_batch([
            VerifyRequest("t", HEADER, STATEMENT, HEADER + PROOF),
            VerifyRequest("t", HEADER, STATEMENT, wrong),
            VerifyRequest("t", HEADER, STATEMENT, helper),
        ])
    assert isinstance(verdicts[0], Accepted), verdicts[0]
    assert set(verdicts[0].axioms) <= set(STANDARD), verdicts[0]
    assert isinstance(verdicts[1], Rejected) and verdicts[1].reason is RejectReason.LEAN_ERROR, verdicts[1]
    assert isinstance(verdicts[2], Accepted), verdicts[2]
