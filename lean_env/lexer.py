"""A Lean 4 lexer for the static acceptance checks: it tells code from comments and strings.

It follows the token rules of Lean 4's own parser (`Lean.Parser.Basic`: `whitespace`,
`identFn`, `strLitFn`, `charLitFn`, `numberFnAux`, `nameLitAux`) closely enough that the
checks in `lean_env.acceptance` look only at code:

* comments: `--` to end of line; `/- ... -/` block comments, nested to any depth, including
  doc comments `/-- -/` and module docs `/-! -/`;
* string literals with escapes (`"a\\"b"`), raw strings (`r"..."`, `r#"..."#`), and
  interpolated strings (`s!"x = {x}"`, `m!`, `f!`): the text is a string, but the code inside
  `{ }` is lexed as code (a cheat hidden there is still seen);
* char literals (`'a'`, `'\\n'`, `'\\x41'`, `'\\u{3B1}'`), told apart from the `'` that ends
  identifiers such as `h'` or `induction'`;
* identifiers: dotted names (`Lean.ofReduceBool`), `«guillemet»` parts, subscripts (`h₀`),
  Greek and letter-like symbols (`ℕ`); `ident.parts` are the components without guillemets,
  so `sorry_free` is one identifier and never `sorry`;
* name literals `` `foo `` and ```` ``foo ````, numbers, `#commands` (`#eval`, `#exit`), and
  symbols by longest match over Lean's common multi-character tokens.

The lexer is total: any input yields tokens; an unterminated comment or string is reported
through `Token.unterminated` instead of an exception, so a caller can reject it.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from enum import StrEnum
from typing import NamedTuple


class Kind(StrEnum):
    IDENT = "ident"
    NUMBER = "number"
    STRING = "string"          # whole literal (for interpolated strings: one piece between codes)
    CHAR = "char"
    NAME_LIT = "name_lit"      # `foo / ``foo
    HASH_CMD = "hash_cmd"      # #eval, #exit, #print, ...
    SYMBOL = "symbol"
    COMMENT = "comment"        # line, block and doc comments


class Token(NamedTuple):
    """One lexeme. `start`/`end` are character offsets into the source; `line` is 1-based and
    `column` 0-based (the REPL's convention). `parts` holds an identifier's components.
    (A NamedTuple: lexing creates one per token, and this is the cheapest immutable value.)"""

    kind: Kind
    text: str
    start: int
    end: int
    line: int
    column: int
    parts: tuple[str, ...] = ()
    unterminated: bool = False

    @property
    def name(self) -> str:
        """Identifier without guillemets (`Lean.«ofReduceBool»` -> `Lean.ofReduceBool`)."""
        return ".".join(self.parts) if self.parts else self.text


# Multi-character tokens of Lean 4 core and Mathlib that are spelled with symbol characters,
# longest first at lexing time. Anything else is lexed one character at a time, so a missing
# entry only splits a token, never merges two.
_MULTI_SYMBOLS_ALL = sorted(
    {
        ":=", "::", "=>", "->", "<-", "<->", "<;>", "<|>", "<|", "|>.", "|>", "<=", ">=", "!=",
        "==", "&&", "||", "++", "^^", "..", "...", "@[", "%[", "⁻¹", "×ˢ", "∘", "≠", "<<<",
        ">>>", ">>=", "=<<", ">>", "<*>", "<$>", "//", "/\\", "\\/", "?_", "·.", "∑'", "∏'",
        "%>", "<%", "=?", "$(", "`(",
    },
    key=len,
    reverse=True,
)
# By first character, longest first: one dict lookup per symbol instead of a scan of all.
_MULTI_SYMBOLS: dict[str, list[str]] = {}
for _sym in _MULTI_SYMBOLS_ALL:
    _MULTI_SYMBOLS.setdefault(_sym[0], []).append(_sym)
_WHITESPACE = re.compile(r"\s+")
_ASCII_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_'!?]*")   # the common case of `identFn`, fast

_SUBSCRIPTS = set("₀₁₂₃₄₅₆₇₈₉ₐₑₒₓₔₕₖₗₘₙₚₛₜᵢᵣᵤᵥᵦᵧᵨᵩᵪⱼ")


def _is_letter_like(c: str) -> bool:
    """Lean's `isLetterLike`: Greek (minus λ Π Σ), Coptic, letter-like symbols, script letters."""
    o = ord(c)
    return (
        (0x3B1 <= o <= 0x3C9 and o != 0x3BB)            # α-ω except λ
        or (0x391 <= o <= 0x3A9 and o not in (0x3A0, 0x3A3))  # Α-Ω except Π Σ
        or 0x3CA <= o <= 0x3FB                          # Coptic
        or 0x1F00 <= o <= 0x1FFE                        # polytonic Greek
        or 0x2100 <= o <= 0x214F                        # letter-like block (ℕ ℤ ℝ ℂ ...)
        or 0x1D49C <= o <= 0x1D59F                      # script, double-struck, fraktur letters
    )


def is_id_first(c: str) -> bool:
    return c.isalpha() or c == "_" or _is_letter_like(c)


def is_id_rest(c: str) -> bool:
    return is_id_first(c) or c.isdigit() or c in "'!?" or c in _SUBSCRIPTS


class _Lexer:
    def __init__(self, source: str) -> None:
        self.src = source
        self.n = len(source)
        self.resume = 0  # where the last `run`/`interpolated` stopped (an offset)
        # Offsets of line starts, to turn offsets into (line, column).
        self.line_starts = [0] + [i + 1 for i, ch in enumerate(source) if ch == "\n"]

    def position(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.line_starts, offset)
        return line, offset - self.line_starts[line - 1]

    def token(self, kind: Kind, start: int, end: int, *, parts: tuple[str, ...] = (),
              unterminated: bool = False) -> Token:
        line, column = self.position(start)
        return Token(kind, self.src[start:end], start, end, line, column, parts, unterminated)

    # -- scanning helpers; each returns the offset just past what it consumed --------------

    def block_comment_end(self, i: int) -> tuple[int, bool]:
        """`i` points at `/-`. Nested comments; returns (end, terminated)."""
        depth = 0
        while i < self.n:
            if self.src.startswith("/-", i):
                depth += 1
                i += 2
            elif self.src.startswith("-/", i):
                depth -= 1
                i += 2
                if depth == 0:
                    return i, True
            else:
                i += 1
        return self.n, False

    def escape_end(self, i: int) -> int:
        """`i` points just after a backslash inside a string or char literal."""
        if i >= self.n:
            return i
        c = self.src[i]
        if c == "x":
            return min(i + 3, self.n)
        if c == "u" and self.src.startswith("{", i + 1):
            close = self.src.find("}", i)
            return self.n if close < 0 else close + 1
        if c == "u":
            return min(i + 5, self.n)
        if c == "\n":  # line continuation: backslash-newline and the next line's indentation
            i += 1
            while i < self.n and self.src[i] in " \t":
                i += 1
            return i
        return i + 1

    def string_end(self, i: int) -> tuple[int, bool]:
        """`i` points at the opening quote of a plain string."""
        i += 1
        while i < self.n:
            c = self.src[i]
            if c == "\\":
                i = self.escape_end(i + 1)
            elif c == '"':
                return i + 1, True
            else:
                i += 1
        return self.n, False

    def raw_string_end(self, i: int) -> tuple[int, bool] | None:
        """`i` points at `r`; None when this is not a raw string (`r#"..."#`)."""
        j = i + 1
        while j < self.n and self.src[j] == "#":
            j += 1
        if j >= self.n or self.src[j] != '"':
            return None
        closing = '"' + "#" * (j - i - 1)
        k = self.src.find(closing, j + 1)
        return (self.n, False) if k < 0 else (k + len(closing), True)

    def char_end(self, i: int) -> int | None:
        """`i` points at `'`; the end of a char literal there, or None if it is not one."""
        j = i + 1
        if j >= self.n or self.src[j] == "\n":
            return None
        if self.src[j] == "\\":
            j = self.escape_end(j + 1)
        else:
            j += 1
        return j + 1 if j < self.n and self.src[j] == "'" else None

    def ident_end(self, i: int) -> tuple[int, tuple[str, ...]] | None:
        """Dotted identifier starting at `i` (an id-first char or `«`)."""
        parts: list[str] = []
        while True:
            if i < self.n and self.src[i] == "«":
                close = self.src.find("»", i + 1)
                if close < 0:
                    return None if not parts else (i, tuple(parts))
                parts.append(self.src[i + 1:close])
                i = close + 1
            elif i < self.n and is_id_first(self.src[i]):
                ascii_run = _ASCII_ID.match(self.src, i)
                j = ascii_run.end() if ascii_run else i + 1
                while j < self.n and is_id_rest(self.src[j]):
                    j += 1
                parts.append(self.src[i:j])
                i = j
            else:
                return None if not parts else (i, tuple(parts))
            # Continue with `.part` only when the next part starts an identifier.
            if (i + 1 < self.n and self.src[i] == "."
                    and (is_id_first(self.src[i + 1]) or self.src[i + 1] == "«")):
                i += 1
                continue
            return i, tuple(parts)

    def number_end(self, i: int) -> int:
        src, n = self.src, self.n
        if src.startswith(("0x", "0X", "0b", "0B", "0o", "0O"), i):
            j = i + 2
            while j < n and (src[j].isalnum() or src[j] == "_"):
                j += 1
            return j
        j = i
        while j < n and src[j].isdigit():
            j += 1
        if j + 1 < n and src[j] == "." and src[j + 1].isdigit():
            j += 1
            while j < n and src[j].isdigit():
                j += 1
        if j < n and src[j] in "eE":
            k = j + 1
            if k < n and src[k] in "+-":
                k += 1
            if k < n and src[k].isdigit():
                j = k
                while j < n and src[j].isdigit():
                    j += 1
        return j

    # -- main loop -----------------------------------------------------------------------

    def run(self, i: int = 0, stop_at_brace: bool = False) -> Iterator[Token]:
        """Lex from `i`. With `stop_at_brace` (code inside `{ }` of an interpolated string)
        stop before the `}` that closes it; `self.resume` tells where lexing stopped."""
        src, n = self.src, self.n
        depth = 0
        prev: Token | None = None
        while i < n:
            c = src[i]
            if c.isspace():
                i = _WHITESPACE.match(src, i).end()  # type: ignore[union-attr]
                continue
            tok: Token
            if src.startswith("--", i):
                end = src.find("\n", i)
                end = n if end < 0 else end
                tok = self.token(Kind.COMMENT, i, end)
            elif src.startswith("/-", i):
                end, ok = self.block_comment_end(i)
                tok = self.token(Kind.COMMENT, i, end, unterminated=not ok)
            elif c == '"':
                if prev is not None and prev.end == i and prev.kind is Kind.IDENT \
                        and prev.text.endswith("!"):
                    yield from self.interpolated(i)
                    i = self.resume
                    prev = None
                    continue
                end, ok = self.string_end(i)
                tok = self.token(Kind.STRING, i, end, unterminated=not ok)
            elif c == "r" and (raw := self.raw_string_end(i)) is not None:
                end, ok = raw
                tok = self.token(Kind.STRING, i, end, unterminated=not ok)
            elif c == "'" and (end_c := self.char_end(i)) is not None:
                tok = self.token(Kind.CHAR, i, end_c)
            elif c == "`" and (lit := self.name_literal(i)) is not None:
                tok = lit
            elif c == "#" and i + 1 < n and is_id_first(src[i + 1]):
                j = i + 1
                while j < n and is_id_rest(src[j]):
                    j += 1
                tok = self.token(Kind.HASH_CMD, i, j)
            elif (is_id_first(c) or c == "«") and (ident := self.ident_end(i)) is not None:
                end, parts = ident
                tok = self.token(Kind.IDENT, i, end, parts=parts)
            elif c.isdigit():
                tok = self.token(Kind.NUMBER, i, self.number_end(i))
            else:
                if stop_at_brace:
                    if c == "{":
                        depth += 1
                    elif c == "}":
                        if depth == 0:
                            self.resume = i
                            return
                        depth -= 1
                sym = next((s for s in _MULTI_SYMBOLS.get(c, ()) if src.startswith(s, i)), c)
                tok = self.token(Kind.SYMBOL, i, i + len(sym))
            yield tok
            prev = tok
            i = tok.end
        self.resume = n

    def name_literal(self, i: int) -> Token | None:
        j = i + 2 if self.src.startswith("``", i) else i + 1
        ident = self.ident_end(j) if j < self.n else None
        if ident is None:
            return None
        end, parts = ident
        return self.token(Kind.NAME_LIT, i, end, parts=parts)

    def interpolated(self, i: int) -> Iterator[Token]:
        """`i` points at the quote of `s!"..."`: string pieces and the code between braces."""
        start = i
        i += 1
        while i < self.n:
            c = self.src[i]
            if c == "\\":
                i = self.escape_end(i + 1)
            elif c == '"':
                yield self.token(Kind.STRING, start, i + 1)
                self.resume = i + 1
                return
            elif c == "{":
                yield self.token(Kind.STRING, start, i + 1)
                inner = _Lexer(self.src)
                inner.line_starts = self.line_starts
                yield from inner.run(i + 1, stop_at_brace=True)
                i = inner.resume
                start = i
                i += 1
            else:
                i += 1
        yield self.token(Kind.STRING, start, self.n, unterminated=True)
        self.resume = self.n


def tokenize(source: str, *, comments: bool = False) -> list[Token]:
    """All tokens of `source`; comments only when asked for."""
    toks = _Lexer(source).run()
    return [t for t in toks if comments or t.kind is not Kind.COMMENT]


def first_unterminated(tokens: list[Token]) -> Token | None:
    """The first comment or string literal that runs to the end of the input, if any
    (`tokens` must include comments)."""
    return next((t for t in tokens if t.unterminated), None)


def render(tokens: list[Token]) -> str:
    """Tokens as one line: a single space where the source had whitespace or a comment."""
    out: list[str] = []
    for k, tok in enumerate(tokens):
        if k and tokens[k - 1].end != tok.start:
            out.append(" ")
        out.append(tok.text)
    return "".join(out)
