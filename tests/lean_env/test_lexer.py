"""The Lean 4 lexer behind the static checks: code vs comments and strings, identifiers."""

from __future__ import annotations

import pytest

from lean_env.lexer import Kind, first_unterminated, render, tokenize


def _code(src: str) -> list[tuple[str, str]]:
    return [(t.kind.value, t.text) for t in tokenize(src)]


def test_nested_block_and_doc_comments_are_comments() -> None:
    src = "/- a /- b -/ sorry -/ x /-- doc sorry -/ y /-! mod sorry -/ z -- sorry\nw"
    assert _code(src) == [("ident", "x"), ("ident", "y"), ("ident", "z"), ("ident", "w")]
    kinds = [t.kind for t in tokenize(src, comments=True)]
    assert kinds.count(Kind.COMMENT) == 4, kinds


def test_strings_with_escapes_raw_and_chars() -> None:
    toks = tokenize(r'f "a \" -- b" r#"x "y" z"# '"'a' '\\n' '\\'' h' g")
    assert [(t.kind.value, t.text) for t in toks] == [
        ("ident", "f"), ("string", r'"a \" -- b"'), ("string", 'r#"x "y" z"#'),
        ("char", "'a'"), ("char", "'\\n'"), ("char", "'\\''"), ("ident", "h'"), ("ident", "g"),
    ]


def test_interpolated_string_code_is_lexed() -> None:
    toks = tokenize('s!"v = {f x} and {"inner"}" done')
    idents = [t.text for t in toks if t.kind is Kind.IDENT]
    assert idents == ["s!", "f", "x", "done"], toks
    assert any(t.kind is Kind.STRING and t.text == '"inner"' for t in toks), toks


def test_identifiers_dotted_guillemets_subscripts() -> None:
    toks = tokenize("Lean.ofReduceBool sorry_free h₀ x.«a b».c ℕ α' h.1 Nat.succ_le_of_lt")
    assert [t.name for t in toks if t.kind is Kind.IDENT] == [
        "Lean.ofReduceBool", "sorry_free", "h₀", "x.a b.c", "ℕ", "α'", "h", "Nat.succ_le_of_lt"]
    assert tokenize("Lean.ofReduceBool")[0].parts == ("Lean", "ofReduceBool")


def test_symbols_numbers_hash_commands_and_name_literals() -> None:
    toks = tokenize("#eval 1.5e3 := 0x1F <;> `Lean.ofReduceBool ``Nat (x) ≤ y")
    assert [(t.kind.value, t.text) for t in toks] == [
        ("hash_cmd", "#eval"), ("number", "1.5e3"), ("symbol", ":="), ("number", "0x1F"),
        ("symbol", "<;>"), ("name_lit", "`Lean.ofReduceBool"), ("name_lit", "``Nat"),
        ("symbol", "("), ("ident", "x"), ("symbol", ")"), ("symbol", "≤"), ("ident", "y"),
    ]


def test_positions_are_one_based_lines_zero_based_columns() -> None:
    toks = tokenize("a\n  /- c -/ b\n\tc")
    assert [(t.text, t.line, t.column) for t in toks] == [("a", 1, 0), ("b", 2, 10), ("c", 3, 1)]


@pytest.mark.parametrize(("src", "kind"), [("x /- open", "comment"),
                                           ('x "open', "string"), ("/- a /- b -/", "comment")])
def test_unterminated_literals_are_reported(src: str, kind: str) -> None:
    tok = first_unterminated(tokenize(src, comments=True))
    assert tok is not None and tok.kind.value == kind, tok


def test_total_on_arbitrary_text() -> None:
    src = "```lean4\nSure! Here's a proof ` ' \" \\ « » ∑' ⁻¹ 🙂\n```"
    toks = tokenize(src, comments=True)
    assert toks and toks[-1].end <= len(src), toks


def test_render_collapses_whitespace_and_comments() -> None:
    src = "theorem t (a : ℕ)  :\n  a /- c -/ = a"
    assert render(tokenize(src)) == "theorem t (a : ℕ) : a = a"
