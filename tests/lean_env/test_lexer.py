"""The Lean 4 lexer behind the static checks, tested on what Lean's own definitions decide.

Each expectation below is read off Lean's source (src/Lean/Parser/Basic.lean and Init/Meta.lean
at v4.19.0): `whitespace`/`finishCommentBlock`, `tokenFnAux`'s order, `identFnAux` with
`isIdFirst`/`isIdRest`/`isLetterLike`/`isSubScriptAlnum`, `numberFnAux`/`takeDigitsFn`,
`quotedCharCoreFn`, `charLitFnAux`, `isRawStrLitStart`. Where Lean would fail or our port
cannot decide, the token must carry an `error` (the acceptance rules then reject).
"""

from __future__ import annotations

import pytest

from lean_env.lexer import Kind, first_error, is_id_first, is_id_rest, render, tokenize


def _code(src: str) -> list[tuple[str, str]]:
    return [(t.kind.value, t.text) for t in tokenize(src) if not t.in_string]


# --- whitespace and comments ------------------------------------------------------------------

def test_nested_block_comments_and_line_comments_are_whitespace() -> None:
    src = "/- a /- b -/ sorry -/ x -- sorry\nw"
    assert _code(src) == [("ident", "x"), ("ident", "w")]


def test_doc_comments_are_tokens_with_a_nested_body() -> None:
    # `whitespace` stops at `/--` and `/-!`: they are tokens (docComment/moduleDoc); the body
    # is `finishCommentBlock` from after the three characters, nesting included.
    toks = tokenize("/-- d /- n -/ sorry -/ x /-! m -/ y", comments=True)
    assert [(t.kind.value, t.text) for t in toks] == [
        ("doc_comment", "/-- d /- n -/ sorry -/"), ("ident", "x"),
        ("doc_comment", "/-! m -/"), ("ident", "y")]


def test_doc_comment_opener_that_looks_closed() -> None:
    # `/--/` opens a doc comment whose body starts at `/`: `sorry` below is inside it. A lexer
    # that reads `/-` then `-/` would see `sorry -/` as code (harmless) and, worse, the other
    # way round for `/-!-/`: nothing. Lean: the body of `/--/ sorry -/` is `/ sorry `.
    toks = tokenize("/--/ sorry -/ x", comments=True)
    assert [(t.kind.value, t.text) for t in toks] == [("doc_comment", "/--/ sorry -/"), ("ident", "x")]


@pytest.mark.parametrize(("src", "what"), [("x\ty", "tab"), ("x\ry", "carriage return"),
                                           ("x\u00a0y", "U+00A0"), ("x\u2003y", "U+2003")])
def test_characters_lean_does_not_take_as_whitespace_are_errors(src: str, what: str) -> None:
    bad = first_error(tokenize(src, comments=True))
    assert bad is not None and what in bad.error, (src, bad)


def test_tabs_inside_comments_are_fine() -> None:
    assert first_error(tokenize("x -- a\tb\n/- \t -/ y", comments=True)) is None


@pytest.mark.parametrize("src", ["x /- open", "/- a /- b -/", "/-- doc", 'x "open'])
def test_unterminated_comments_and_strings_are_errors(src: str) -> None:
    bad = first_error(tokenize(src, comments=True))
    assert bad is not None and bad.unterminated, (src, bad)


# --- identifiers --------------------------------------------------------------------------------

@pytest.mark.parametrize(("c", "first", "rest"), [
    ("a", True, True), ("Z", True, True), ("_", True, True), ("7", False, True),
    ("'", False, True), ("!", False, True), ("?", False, True),
    ("α", True, True), ("λ", False, False), ("Π", False, False), ("Σ", False, False),
    ("ℕ", True, True), ("𝔽", True, True), ("ϰ", True, True),
    ("₀", False, True), ("ₐ", False, True), ("ᵢ", False, True),
    # `Char.isAlpha`/`isDigit` are ASCII in Lean; Python's isalpha()/isdigit() say yes here.
    ("é", False, False), ("ж", False, False), ("²", False, False), ("٣", False, False),
])
def test_identifier_characters_follow_lean(c: str, first: bool, rest: bool) -> None:
    assert (is_id_first(c), is_id_rest(c)) == (first, rest), c


def test_identifiers_dotted_guillemets_subscripts() -> None:
    toks = tokenize("Lean.ofReduceBool sorry_free h₀ x.«a b».c ℕ α' h.1 Nat.succ_le_of_lt")
    assert [t.name for t in toks if t.kind is Kind.IDENT] == [
        "Lean.ofReduceBool", "sorry_free", "h₀", "x.a b.c", "ℕ", "α'", "h", "Nat.succ_le_of_lt"]


def test_escaped_components_are_not_dotted_names() -> None:
    # `«Nat.Prime»` is one component; `Nat.Prime` is two (identFnAux's `.str r part`).
    assert tokenize("«Nat.Prime»")[0].parts == ("Nat.Prime",)
    assert tokenize("Nat.Prime")[0].parts == ("Nat", "Prime")
    assert tokenize("«native_decide»")[0].parts == ("native_decide",)


def test_superscript_ends_an_identifier() -> None:
    # `²` is not `isIdRest`: `sorry²` is `sorry` and then `²`.
    toks = tokenize("sorry²")
    assert [(t.kind.value, t.text) for t in toks] == [("ident", "sorry"), ("symbol", "²")]


@pytest.mark.parametrize("c", ["é", "Ā", "ⱼ"])
def test_version_dependent_identifier_characters_are_errors(c: str) -> None:
    bad = first_error(tokenize(f"x{c}y"))
    assert bad is not None and "version" in bad.error, (c, bad)


def test_dot_continues_a_name_only_before_an_identifier_start() -> None:
    assert _code("h.le x.1 a.«b»") == [("ident", "h.le"), ("ident", "x"), ("symbol", "."),
                                        ("number", "1"), ("ident", "a.«b»")]


# --- numbers ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("src", "tokens"), [
    ("1_000", [("number", "1_000")]),
    ("1__0", [("number", "1__0")]),
    ("0b12", [("number", "0b1"), ("number", "2")]),
    ("0o78", [("number", "0o7"), ("number", "8")]),
    ("0xFFg", [("number", "0xFF"), ("ident", "g")]),
    ("2x", [("number", "2"), ("ident", "x")]),
    ("1.5e3", [("number", "1.5e3")]),
    ("2.", [("number", "2.")]),
    ("2.foo", [("number", "2."), ("ident", "foo")]),
    ("3e-2", [("number", "3e-2")]),
])
def test_numbers_end_where_their_base_ends(src: str, tokens: list[tuple[str, str]]) -> None:
    toks = tokenize(src)
    assert [(t.kind.value, t.text) for t in toks] == tokens, toks
    assert first_error(toks) is None, toks


@pytest.mark.parametrize("src", ["0x", "0b2", "1_", "1e", "1.5e+", "0o_"])
def test_numbers_lean_rejects_are_errors(src: str) -> None:
    assert first_error(tokenize(src)) is not None, src


# --- strings, chars, name literals --------------------------------------------------------------

def test_strings_with_escapes_raw_and_chars() -> None:
    toks = tokenize(r'f "a \" -- b" r#"x "y" z"# '"'a' '\\n' '\\'' h' g")
    assert [(t.kind.value, t.text) for t in toks] == [
        ("ident", "f"), ("string", r'"a \" -- b"'), ("string", 'r#"x "y" z"#'),
        ("char", "'a'"), ("char", "'\\n'"), ("char", "'\\''"), ("ident", "h'"), ("ident", "g"),
    ]


@pytest.mark.parametrize("src", [r'"\q"', r'"\u{41}"', r'"\x4"', r"'\u00e'", "'ab'", "'"])
def test_escapes_lean_rejects_are_errors(src: str) -> None:
    assert first_error(tokenize(src)) is not None, src


@pytest.mark.parametrize("src", [r'"\u0041 \x41 \t \\"', "'\\x41'", "'\\u03B1'"])
def test_escapes_lean_accepts(src: str) -> None:
    assert first_error(tokenize(src)) is None, src


def test_a_quote_not_followed_by_a_quote_starts_a_char_literal() -> None:
    # tokenFnAux: `'` with another `'` after it is a symbol (Mathlib's `''`, image).
    assert _code("f '' s") == [("ident", "f"), ("symbol", "''"), ("ident", "s")]
    # `⁻¹'` (preimage) is one token: its quote is no char literal.
    assert _code("f ⁻¹' {0}")[:2] == [("ident", "f"), ("symbol", "⁻¹'")]


def test_braces_of_any_string_are_lexed_as_code_too() -> None:
    # Whether `"{x}"` is interpolated depends on the grammar (`s!`, `throwError`, ...): the
    # code between the braces is lexed either way, marked `in_string`.
    for src in ('s!"v = {f x}"', 'throwError "v = {f x}"', '"v = {f x}"'):
        inner = [t.text for t in tokenize(src) if t.in_string and t.kind is Kind.IDENT]
        assert inner == ["f", "x"], (src, tokenize(src))


def test_hash_commands_glued_to_identifier_characters_are_errors() -> None:
    # Lean takes the longest token of its table at `#`: `#evalfoo` is `#eval` then `foo`.
    bad = first_error(tokenize("#evalfoo 1"))
    assert bad is not None and "glued" in bad.error, bad
    assert _code("#eval (1)") == [("hash_cmd", "#eval"), ("symbol", "("), ("number", "1"),
                                  ("symbol", ")")]


def test_symbols_numbers_hash_commands_and_name_literals() -> None:
    toks = tokenize("#eval 1.5e3 := 0x1F <;> `Lean.ofReduceBool (x) ≤ y")
    assert [(t.kind.value, t.text) for t in toks] == [
        ("hash_cmd", "#eval"), ("number", "1.5e3"), ("symbol", ":="), ("number", "0x1F"),
        ("symbol", "<;>"), ("name_lit", "`Lean.ofReduceBool"),
        ("symbol", "("), ("ident", "x"), ("symbol", ")"), ("symbol", "≤"), ("ident", "y"),
    ]


def test_positions_are_one_based_lines_zero_based_columns() -> None:
    toks = tokenize("a\n  /- c -/ b\n c")
    assert [(t.text, t.line, t.column) for t in toks] == [("a", 1, 0), ("b", 2, 10), ("c", 3, 1)]


def test_total_on_arbitrary_text() -> None:
    src = "```lean4\nSure! Here's a proof ` ' \" \\ « » ∑' ⁻¹ 🙂\n```"
    toks = tokenize(src, comments=True)
    assert toks and toks[-1].end <= len(src), toks


def test_render_collapses_whitespace_and_comments() -> None:
    src = "theorem t (a : ℕ)  :\n  a /- c -/ = a"
    assert render(tokenize(src)) == "theorem t (a : ℕ) : a = a"


@pytest.mark.parametrize("src", ["`", "rfl\n`", "x #", "#", "simp`", "`«", "'", "0x", "2e", "/-", "\"\\", "r#\""])
def test_any_input_ending_anywhere_lexes_without_an_exception(src: str) -> None:
    """A policy's tactic can end at any character (a fence cut short: "rfl\\n`"); the lexer is
    the first acceptance layer, so it answers every input with tokens (errors marked), never an
    exception. Lean's `getNext` past the end reads `default : Char` ('A'), so a trailing
    backtick takes the name-literal branch and fails: an error token here too."""
    toks = tokenize(src, comments=True)
    assert "".join(src[t.start:t.end] for t in toks).replace(" ", "").replace("\n", "") \
        == src.replace(" ", "").replace("\n", ""), toks
    if src.endswith("`"):
        assert toks[-1].error, toks


def test_random_inputs_never_raise() -> None:
    import random

    rng = random.Random(0)
    alphabet = "`#'\"«»r0x.eE+-/!{}()_aZ₁ℕα \n\t\\"
    for _ in range(3000):
        src = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        tokenize(src, comments=True)   # must not raise: an error token, never an exception
