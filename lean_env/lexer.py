r"""A Lean 4 lexer for the static acceptance checks, ported from Lean's own token rules.

Lean has no separate lexer: its parser reads tokens with `tokenFn` (src/Lean/Parser/Basic.lean
at tag v4.19.0; the functions named below are from that file unless said otherwise). This
module follows those functions, so that the checks in `lean_env.acceptance` see the same code
Lean sees, and it marks every place where it cannot be sure (`Token.error`): the acceptance
rules reject such a candidate instead of guessing.

* `whitespace`: spaces and newlines; `--` to end of line; `/-` block comments, nested
  (`finishCommentBlock`). A tab, a carriage return or any other character (U+00A0, ...) where
  whitespace is expected is an error token: Lean rejects tabs and isolated CRs, and treats no
  other character as whitespace.
* `/--` and `/-!` are tokens, not whitespace: a doc comment (`docComment`, `moduleDoc`) whose
  body runs to the matching `-/`, nested the same way (`commentBody`).
* `tokenFnAux` decides by the first character, in this order: `"` string (`strLitFnAux`), `'`
  not followed by `'` char literal (`charLitFnAux`), digit number (`numberFnAux`), `` ` ``
  followed by an identifier name literal (`nameLitAux`), `r` followed by `#*"` raw string
  (`rawStrLitFnAux`), else the longest of an identifier (`identFnAux`) and a symbol token.
* identifiers: `isIdFirst`/`isIdRest` (Init/Meta.lean): ASCII letters, `_`, letter-like
  ranges (`isLetterLike`), subscripts (`isSubScriptAlnum`), and `'`, `!`, `?` after the first
  character; `«...»` escapes; `.` continues a name only before an identifier start (`isIdCont`).
  `Char.isAlpha` is ASCII in Lean: `é` is not a letter there (Python says it is). Later Lean
  versions add Latin-1 letters and `ⱼ`; those characters are version-dependent and reported
  as errors.
* numbers (`numberFnAux`, `decimalNumberFn`, `takeDigitsFn`): `0b`/`0o`/`0x` need at least one
  digit of their base; `_` separates digits (`1_000`) and must be followed by a digit; a
  decimal may take `.digits` or a bare `.`, then `e[+-]digits` (a scientific literal). The
  number ends at the first character its base does not accept: `0b12` is `0b1` then `2`.
* escapes (`quotedCharCoreFn`): `\\ \" \' \r \n \t`, `\xHH`, `\uHHHH` (exactly four hex
  digits), and in strings a gap (backslash, newline, indentation). Anything else is an error.
* `#eval`: Lean matches the longest token of its token table at a `#`, so `#evalfoo` is `#eval`
  followed by `foo`. The table is not known here (Mathlib adds `#` commands), so a `#`-word
  glued to a letter is an error token; a `#`-word followed by a non-identifier character is
  read as that command.
* strings: whether a string is interpolated depends on the grammar around it (`s!`, `m!`,
  `f!`, but also `throwError "{x}"`, `dbg_trace`, `trace[...]`), not on the lexer. A string
  holding `{` is therefore lexed both ways: the string token, then the code between its
  braces as tokens marked `in_string`, so a check sees that code whichever way Lean reads it.
* syntax quotations (`` `( ``, `` `(tactic| ``) are symbols here; the acceptance rules reject
  them, since their contents are code for macros.

The lexer is total: any input yields tokens, and trouble is reported through `Token.error`.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import NamedTuple


class Kind(StrEnum):
    IDENT = "ident"
    NUMBER = "number"
    STRING = "string"          # a whole string literal
    CHAR = "char"
    NAME_LIT = "name_lit"      # `foo
    HASH_CMD = "hash_cmd"      # #eval, #exit, #print, ...
    SYMBOL = "symbol"
    COMMENT = "comment"        # `--` and `/- -/`: whitespace to Lean
    DOC_COMMENT = "doc_comment"  # `/-- -/` and `/-! -/`: tokens to Lean
    ERROR = "error"            # something Lean would reject, or that this lexer cannot decide


class Token(NamedTuple):
    """One lexeme. `start`/`end` are character offsets into the source; `line` is 1-based and
    `column` 0-based (the REPL's convention). `parts` holds an identifier's components (the
    text inside guillemets, unescaped), so `«Nat.Prime»` is one part and `Nat.Prime` two.
    `error` says why Lean would not accept this token as lexed, or why we cannot tell.
    `in_string`: lexed from between the braces of a string that may be interpolated.
    (A NamedTuple: lexing creates one per token, and this is the cheapest immutable value.)"""

    kind: Kind
    text: str
    start: int
    end: int
    line: int
    column: int
    parts: tuple[str, ...] = ()
    error: str = ""
    in_string: bool = False

    @property
    def name(self) -> str:
        """Identifier without guillemets (`Lean.«ofReduceBool»` -> `Lean.ofReduceBool`).
        Compare `parts`, not `name`, where `«A.B»` and `A.B` must differ."""
        return ".".join(self.parts) if self.parts else self.text

    @property
    def unterminated(self) -> bool:
        return self.error.startswith("unterminated")


# Multi-character tokens of Lean 4 core and Mathlib spelled with symbol characters, matched
# longest first. A missing entry only splits a symbol in two, never merges two tokens, and no
# check depends on a symbol other than those listed.
_MULTI_SYMBOLS_ALL = sorted(
    {
        ":=", "::", "=>", "->", "<-", "<->", "<;>", "<|>", "<|", "|>.", "|>", "<=", ">=", "!=",
        "==", "&&", "||", "++", "^^", "..", "...", "@[", "%[", "⁻¹", "×ˢ", "≠", "<<<",
        ">>>", ">>=", "=<<", ">>", "<*>", "<$>", "//", "/\\", "\\/", "?_", "·.", "∑'", "∏'",
        "%>", "<%", "=?", "$(", "`(", "``(", "``", "''", "⁻¹'",
    },
    key=len,
    reverse=True,
)
_MULTI_SYMBOLS: dict[str, list[str]] = {}
for _sym in _MULTI_SYMBOLS_ALL:
    _MULTI_SYMBOLS.setdefault(_sym[0], []).append(_sym)
# `#` tokens of Lean core (Lean.Parser.Command); Mathlib adds more, all rejected anyway.
_HASH_COMMANDS = ("#eval", "#exit", "#print", "#check", "#check_failure", "#reduce", "#synth",
                  "#guard_msgs", "#guard", "#help", "#version", "#where", "#find", "#lint")
_ASCII_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_'!?]*")   # the common case of `identFnAux`, fast
_SPACES = re.compile(r"[ \n]+")                        # Lean's whitespace, minus the errors


def is_letter_like(c: str) -> bool:
    """`Lean.isLetterLike` (Init/Meta.lean, v4.19.0)."""
    o = ord(c)
    return (
        (0x3B1 <= o <= 0x3C9 and o != 0x3BB)                     # α-ω except λ
        or (0x391 <= o <= 0x3A9 and o not in (0x3A0, 0x3A3))    # Α-Ω except Π Σ
        or 0x3CA <= o <= 0x3FB                                  # Coptic
        or 0x1F00 <= o <= 0x1FFE                                # polytonic Greek
        or 0x2100 <= o <= 0x214F                                # letter-like block (ℕ ℤ ℝ ℂ ...)
        or 0x1D49C <= o <= 0x1D59F                              # script, double-struck, fraktur
    )


def is_subscript_alnum(c: str) -> bool:
    """`Lean.isSubScriptAlnum`: ₀-₉, ₐ-ₜ, ᵢ-ᵪ."""
    o = ord(c)
    return 0x2080 <= o <= 0x2089 or 0x2090 <= o <= 0x209C or 0x1D62 <= o <= 0x1D6A


def is_version_dependent_id_char(c: str) -> bool:
    """Characters that later Lean versions accept in identifiers and v4.19.0 does not (or the
    other way round, depending on the toolchain): Latin-1 and Latin Extended-A letters, `ⱼ`."""
    o = ord(c)
    return (0xC0 <= o <= 0x17F and o not in (0xD7, 0xF7)) or o == 0x2C7C


def _is_ascii_alpha(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z")


def is_id_first(c: str) -> bool:
    """`Lean.isIdFirst`: `Char.isAlpha` (ASCII only), `_`, or letter-like."""
    return _is_ascii_alpha(c) or c == "_" or is_letter_like(c)


def is_id_rest(c: str) -> bool:
    """`Lean.isIdRest`: `Char.isAlphanum` (ASCII only), `_ ' ! ?`, letter-like, subscripts."""
    return (is_id_first(c) or ("0" <= c <= "9") or c in "'!?" or is_subscript_alnum(c))


def _is_digit(c: str) -> bool:
    return "0" <= c <= "9"     # `Char.isDigit` is ASCII; Python's isdigit() takes '²'


_HEX = set("0123456789abcdefABCDEF")
_QUOTABLE = set("\\\"'rnt")


class _Lexer:
    def __init__(self, source: str) -> None:
        self.src = source
        self.n = len(source)
        self.line_starts = [0] + [i + 1 for i, ch in enumerate(source) if ch == "\n"]

    def position(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.line_starts, offset)
        return line, offset - self.line_starts[line - 1]

    def token(self, kind: Kind, start: int, end: int, *, parts: tuple[str, ...] = (),
              error: str = "", in_string: bool = False) -> Token:
        line, column = self.position(start)
        return Token(kind, self.src[start:end], start, end, line, column, parts, error, in_string)

    def at(self, i: int) -> str:
        return self.src[i] if i < self.n else ""

    # -- comments ------------------------------------------------------------------------

    def comment_body_end(self, i: int) -> int | None:
        """`finishCommentBlock` with nesting 1, from just after the opener; None if the input
        ends first."""
        src, n, depth = self.src, self.n, 1
        while i < n:
            c = src[i]
            if c == "-" and i + 1 < n and src[i + 1] == "/":
                depth -= 1
                i += 2
                if depth == 0:
                    return i
            elif c == "/" and i + 1 < n and src[i + 1] == "-":
                depth += 1
                i += 2
            else:
                i += 1
        return None

    # -- literals ------------------------------------------------------------------------

    def escape_end(self, i: int, *, in_string: bool) -> tuple[int, str]:
        """`quotedCharCoreFn`: `i` points just after a backslash. (end, error)."""
        c = self.at(i)
        if c in _QUOTABLE and c:
            return i + 1, ""
        if c == "x":
            ok = all(self.at(i + k) in _HEX and self.at(i + k) for k in (1, 2))
            return (i + 3, "") if ok else (i + 1, "invalid \\x escape (needs two hex digits)")
        if c == "u":
            ok = all(self.at(i + k) in _HEX and self.at(i + k) for k in (1, 2, 3, 4))
            return (i + 5, "") if ok else (i + 1, "invalid \\u escape (needs four hex digits)")
        if in_string and c == "\n":
            # `stringGapFn`: exactly one newline, then indentation.
            j = i + 1
            while j < self.n and self.src[j] in " \t\r":
                j += 1
            if self.at(j) == "\n":
                return j, "a string gap with more than one newline"
            return j, ""
        return i + 1, "invalid escape sequence"

    def string_end(self, i: int) -> tuple[int, str]:
        """`strLitFnAux`: `i` points at the opening quote. (end, error)."""
        i += 1
        error = ""
        while i < self.n:
            c = self.src[i]
            if c == "\\":
                i, err = self.escape_end(i + 1, in_string=True)
                error = error or err
            elif c == '"':
                return i + 1, error
            else:
                i += 1
        return self.n, "unterminated string literal"

    def raw_string_end(self, i: int) -> tuple[int, str] | None:
        """`isRawStrLitStart` + `rawStrLitFnAux`: `i` points at `r`; None if not a raw string."""
        j = i + 1
        while j < self.n and self.src[j] == "#":
            j += 1
        if self.at(j) != '"':
            return None
        closing = '"' + "#" * (j - i - 1)
        k = self.src.find(closing, j + 1)
        return (self.n, "unterminated raw string literal") if k < 0 else (k + len(closing), "")

    def char_end(self, i: int) -> tuple[int, str]:
        """`charLitFnAux`: `i` points at `'` (not followed by `'`). (end, error)."""
        j = i + 1
        if j >= self.n:
            return self.n, "unterminated character literal"
        error = ""
        if self.src[j] == "\\":
            j, error = self.escape_end(j + 1, in_string=False)
        else:
            j += 1
        if self.at(j) == "'":
            return j + 1, error
        return j, "missing end of character literal"

    def number_end(self, i: int) -> tuple[int, str]:
        """`numberFnAux`. (end, error)."""
        src = self.src
        if src[i] == "0" and self.at(i + 1) in ("b", "B", "o", "O", "x", "X") and self.at(i + 1):
            base = self.at(i + 1).lower()
            digit = {"b": lambda c: c in "01", "o": lambda c: "0" <= c <= "7",
                     "x": lambda c: c in _HEX}[base]
            return self.digits_end(i + 2, digit, need_digit=True)
        j, error = self.digits_end(i + 1, _is_digit, need_digit=False)
        if error or self.at(j) not in (".", "e", "E") or not self.at(j):
            return j, error
        if self.at(j) == ".":                      # `parseOptDot`: `2.` is a literal too
            j += 1
            if _is_digit(self.at(j)):
                j, error = self.digits_end(j, _is_digit, need_digit=False)
        if self.at(j) in ("e", "E") and self.at(j):   # `parseOptExp`
            k = j + 1
            if self.at(k) in ("+", "-") and self.at(k):
                k += 1
            if not _is_digit(self.at(k)):
                return k, "missing exponent digits in scientific literal"
            j, error = self.digits_end(k, _is_digit, need_digit=False)
        return j, error

    def digits_end(self, i: int, digit: Callable[[str], bool], *,
                   need_digit: bool) -> tuple[int, str]:
        """`takeDigitsFn`: `many (many '_' >> many1 digit)`; after a `_` a digit is required."""
        while i < self.n:
            c = self.src[i]
            if c == "_":
                need_digit = True
            elif digit(c):
                need_digit = False
            else:
                break
            i += 1
        return i, ("a number ends without a digit" if need_digit else "")

    def ident_end(self, i: int) -> tuple[int, tuple[str, ...], str]:
        """`identFnAux` from an id-first character or `«`. (end, parts, error)."""
        parts: list[str] = []
        src, n = self.src, self.n
        while True:
            if src[i] == "«":
                close = src.find("»", i + 1)
                if close < 0:
                    return n, tuple(parts), "unterminated identifier escape"
                parts.append(src[i + 1:close])
                i = close + 1
            else:
                m = _ASCII_ID.match(src, i)
                j = m.end() if m else i + 1
                while j < n and is_id_rest(src[j]):
                    j += 1
                parts.append(src[i:j])
                i = j
            # `isIdCont`: `.` continues the name only before an id-first char or `«`.
            if i + 1 < n and src[i] == "." and (is_id_first(src[i + 1]) or src[i + 1] == "«"):
                i += 1
                continue
            return i, tuple(parts), ""

    # -- main loop -----------------------------------------------------------------------

    def run(self, i: int = 0, *, stop_at_brace: bool = False,
            in_string: bool = False) -> Iterator[Token]:
        """Lex from `i`. With `stop_at_brace` (the code between the braces of a string) stop
        before the `}` that closes it; `self.resume` says where lexing stopped."""
        src, n = self.src, self.n
        depth = 0
        while i < n:
            c = src[i]
            if c == " " or c == "\n":
                i = _SPACES.match(src, i).end()  # type: ignore[union-attr]
                continue
            tok: Token
            if c == "\t" or c == "\r" or (c.isspace() and c not in " \n"):
                what = {"\t": "a tab", "\r": "a carriage return"}.get(c, f"U+{ord(c):04X}")
                tok = self.token(Kind.ERROR, i, i + 1,
                                 error=f"{what} where Lean expects whitespace (Lean rejects tabs "
                                 "and carriage returns, and no other character is whitespace)")
            elif src.startswith("--", i):
                end = src.find("\n", i)
                tok = self.token(Kind.COMMENT, i, n if end < 0 else end)
            elif src.startswith("/-", i):
                doc = self.at(i + 2) in ("-", "!") and bool(self.at(i + 2))
                body = i + 3 if doc else i + 2
                end_c = self.comment_body_end(body)
                tok = self.token(Kind.DOC_COMMENT if doc else Kind.COMMENT, i,
                                 n if end_c is None else end_c,
                                 error="unterminated comment" if end_c is None else "")
            elif c == '"':
                end, err = self.string_end(i)
                tok = self.token(Kind.STRING, i, end, error=err, in_string=in_string)
                yield tok
                if "{" in tok.text:
                    yield from self.string_code(tok)
                i = tok.end
                continue
            elif c == "'" and self.at(i + 1) != "'":
                end, err = self.char_end(i)
                tok = self.token(Kind.CHAR, i, end, error=err, in_string=in_string)
            elif _is_digit(c):
                end, err = self.number_end(i)
                tok = self.token(Kind.NUMBER, i, end, error=err, in_string=in_string)
            elif c == "`" and i + 1 >= n:
                # Lean's `getNext` past the end reads `default : Char`, 'A', an id-first
                # character: it takes the name-literal branch and fails (end of input).
                tok = self.token(Kind.NAME_LIT, i, n, error="a name literal without a name ends the input",
                                 in_string=in_string)
            elif c == "`" and (is_id_first(src[i + 1]) or src[i + 1] == "«"):
                end, parts, err = self.ident_end(i + 1)
                tok = self.token(Kind.NAME_LIT, i, end, parts=parts, error=err, in_string=in_string)
            elif c == "r" and (raw := self.raw_string_end(i)) is not None:
                end, err = raw
                tok = self.token(Kind.STRING, i, end, error=err, in_string=in_string)
            elif c == "#" and i + 1 < n and is_id_first(src[i + 1]):
                j = i + 1
                while j < n and (_is_ascii_alpha(src[j]) or src[j] == "_"):
                    j += 1
                word = src[i:j]
                glued = j < n and is_id_rest(src[j]) or (
                    word not in _HASH_COMMANDS and any(word.startswith(k) for k in _HASH_COMMANDS))
                tok = self.token(Kind.HASH_CMD, i, j, in_string=in_string,
                                 error=(f"`{src[i:j + 1]}`: a `#` command glued to more "
                                        "identifier characters (Lean splits it by its token "
                                        "table, which is not known here)") if glued else "")
            elif is_id_first(c) or c == "«":
                end, parts, err = self.ident_end(i)
                tok = self.token(Kind.IDENT, i, end, parts=parts, error=err, in_string=in_string)
            elif is_version_dependent_id_char(c):
                tok = self.token(Kind.ERROR, i, i + 1, in_string=in_string,
                                 error=f"`{c}` (U+{ord(c):04X}) is an identifier character in some "
                                 "Lean versions and not in others")
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
                tok = self.token(Kind.SYMBOL, i, i + len(sym), in_string=in_string)
            yield tok
            i = tok.end
        self.resume = n

    def string_code(self, string: Token) -> Iterator[Token]:
        """The code between the braces of `string`, as `interpolatedStrFn` would read it if
        the string is interpolated (each `{` opens code up to its matching `}`)."""
        i, end = string.start + 1, string.end - 1
        while i < end:
            c = self.src[i]
            if c == "\\":
                i, _ = self.escape_end(i + 1, in_string=True)
            elif c == "{":
                inner = _Lexer.__new__(_Lexer)
                inner.src, inner.n, inner.line_starts = self.src[:end], end, self.line_starts
                yield from inner.run(i + 1, stop_at_brace=True, in_string=True)
                i = inner.resume + 1
            else:
                i += 1

    resume: int = 0


def tokenize(source: str, *, comments: bool = False) -> list[Token]:
    """All tokens of `source`, including the code between the braces of strings (marked
    `in_string`); comments (and doc comments) only when asked for.

    A source is lexed once: the checks of one candidate (the service's snippet split,
    `precheck`, `lean_command`) and every candidate of one problem header ask for the same
    texts, so the last `_LEXED_CACHE` sources' tokens are kept (tokens are immutable; each
    call gets a list of its own)."""
    toks = _lexed(source)
    if comments:
        return list(toks)
    return [t for t in toks if t.kind is not Kind.COMMENT and t.kind is not Kind.DOC_COMMENT]


_LEXED_CACHE = 256


@functools.lru_cache(maxsize=_LEXED_CACHE)
def _lexed(source: str) -> tuple[Token, ...]:
    return tuple(_Lexer(source).run())


def code_tokens(tokens: list[Token]) -> list[Token]:
    """The tokens Lean's grammar reads as code for certain: no comments, no tokens from
    inside strings."""
    return [t for t in tokens if not t.in_string and t.kind not in (Kind.COMMENT, Kind.DOC_COMMENT)]


def first_error(tokens: list[Token]) -> Token | None:
    """The first token Lean would reject or this lexer cannot decide (`Token.error`)."""
    return next((t for t in tokens if t.error), None)


def render(tokens: list[Token]) -> str:
    """Tokens as one line: a single space where the source had whitespace or a comment."""
    out: list[str] = []
    for k, tok in enumerate(tokens):
        if k and tokens[k - 1].end != tok.start:
            out.append(" ")
        out.append(tok.text)
    return "".join(out)
