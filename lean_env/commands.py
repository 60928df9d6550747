"""A candidate file as Lean's top-level command loop would split it: commands, their prefixes
(`open X in`, `set_option o v in`, `attribute [a] x in`), modifiers and declared names.

Lean parses a file command by command (`Lean.Elab.Frontend`); where one command ends is decided
by its grammar, which we do not have (Mathlib extends it). We need no full grammar if we
demand the layout that prover output has and reject the rest: a command starts at the first
token of a line in column 0; tokens in other columns continue the command above. The checks
that make this sound live in `lean_env.acceptance`: a keyword that can only start a command
(`theorem`, `namespace`, `#eval`, ...) anywhere else is rejected, so Lean cannot start a
command where we did not, and `open`/`set_option` inside a body must be the `... in` forms,
which are terms and tactics in Lean's grammar too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lean_env.lexer import Kind, Token

# Keywords after which Lean expects a declaration: the problem's theorem and auxiliary ones.
DECL_KEYWORDS = ("theorem", "lemma", "def", "abbrev", "example", "instance", "axiom",
                 "structure", "class", "inductive", "opaque")
MODIFIERS = ("private", "protected", "noncomputable", "partial", "unsafe", "nonrec")
# Keywords that start a command in Lean or Mathlib (and `open`/`set_option`, which are also
# the term and tactic prefixes `open X in`, `set_option o v in`).
COMMAND_KEYWORDS = frozenset({
    *DECL_KEYWORDS, *MODIFIERS, "namespace", "section", "end", "mutual", "universe", "variable",
    "include", "omit", "export", "attribute", "import", "macro", "macro_rules", "syntax",
    "elab", "elab_rules", "notation", "notation3", "infix", "infixl", "infixr", "prefix",
    "postfix", "declare_syntax_cat", "binder_predicate", "simproc", "dsimproc", "simproc_decl",
    "dsimproc_decl", "set_option", "open", "initialize", "builtin_initialize", "irreducible_def",
    "alias", "unif_hint", "scoped", "local", "add_decl_doc", "library_note", "register_option",
    "register_simp_attr", "declare_aesop_rule_sets", "add_aesop_rules", "erase_aesop_rules",
    "suppress_compilation", "unseal", "seal", "compile_inductive", "assert_not_exists",
    "deriving", "run_cmd", "run_elab", "run_meta",
})


@dataclass(frozen=True)
class Prefix:
    """`open X Y in`, `set_option NAME VALUE in` or `attribute [ATTRS] NAMES in` before a
    command: in effect for that command only (Lean's `in` combinator opens a section)."""

    keyword: str
    tokens: tuple[Token, ...]      # from the keyword up to, not including, `in`


@dataclass(frozen=True)
class Command:
    """One top-level command. `tokens` are its code tokens (doc comments included, comments
    and the code inside strings excluded); `head` indexes the token after the prefixes,
    doc comment, attributes and modifiers: the keyword (`theorem`, `open`, `end`, ...)."""

    tokens: tuple[Token, ...]
    prefixes: tuple[Prefix, ...]
    doc: bool
    attributes: tuple[tuple[Token, ...], ...]   # each `@[...]` group's inner tokens
    modifiers: tuple[str, ...]
    head: int
    dangling: str = ""   # non-empty: the command ends before it has a keyword (why)

    @property
    def keyword(self) -> str:
        return self.tokens[self.head].text if self.head < len(self.tokens) else ""

    @property
    def line(self) -> int:
        return self.tokens[0].line

    @property
    def decl_name(self) -> Token | None:
        """The declared name of a declaration command (None for `example` or a non-decl)."""
        if self.keyword not in DECL_KEYWORDS or self.keyword == "example":
            return None
        nxt = self.tokens[self.head + 1] if self.head + 1 < len(self.tokens) else None
        return nxt if nxt is not None and nxt.kind is Kind.IDENT else None


def starts_command(tok: Token) -> bool:
    """Whether `tok` can only begin a command: a command keyword, a doc comment, `@[`, `#...`."""
    return ((tok.kind is Kind.IDENT and tok.text in COMMAND_KEYWORDS)
            or tok.kind in (Kind.DOC_COMMENT, Kind.HASH_CMD) or tok.text == "@[")


# Brackets that nest inside a statement; `:=`, `where` or `| alt =>` end it only at depth 0.
BRACKET_OPEN = frozenset({"(", "[", "{", "⟨", "⦃", "⟦", "@[", "%[", "$(", "`(", "``("})
BRACKET_CLOSE = frozenset({")", "]", "}", "⟩", "⦄", "⟧"})


def statement_end(toks: Sequence[Token], start: int) -> int:
    """Index just past the statement that starts at `start` (the name token)."""
    depth = 0
    for j in range(start, len(toks)):
        text = toks[j].text
        if toks[j].kind is Kind.SYMBOL and text in BRACKET_OPEN:
            depth += 1
        elif toks[j].kind is Kind.SYMBOL and text in BRACKET_CLOSE:
            depth = max(0, depth - 1)
        elif depth == 0 and (text == ":="
                             or (text == "where" and toks[j].kind is Kind.IDENT)
                             or (text == "|" and _starts_match_alt(toks, j))):
            return j
    return len(toks)


def _starts_match_alt(toks: Sequence[Token], j: int) -> bool:
    """`| pat => rhs` at the start of a line (pattern-matching proof), not `|x|` (abs)."""
    if j > 0 and toks[j - 1].line == toks[j].line:
        return False
    depth = 0
    for tok in toks[j + 1:]:
        if tok.text in BRACKET_OPEN:
            depth += 1
        elif tok.text in BRACKET_CLOSE:
            depth -= 1
        elif depth == 0 and tok.text == "|":
            return False
        elif depth == 0 and tok.text == "=>":
            return True
    return False


def split_commands(tokens: list[Token]) -> list[list[Token]]:
    """Group `tokens` (code and doc comments, in order) into top-level commands: a new one
    starts at a command keyword (`starts_command`) that is first on its line and in column 0,
    unless the command above is still waiting for its keyword (a doc comment, `@[...]`, a
    modifier or a `... in` line). Anything else continues the command above, as a statement's
    binders on their own lines or a tactic block in column 0 do in Lean."""
    groups: list[list[Token]] = []
    last_line = 0
    for tok in tokens:
        if not groups or (tok.column == 0 and tok.line != last_line and starts_command(tok)
                          and not parse_command(groups[-1]).dangling):
            groups.append([tok])
        else:
            groups[-1].append(tok)
        last_line = tok.line
    return groups


def matching_close(tokens: Sequence[Token], i: int) -> int:
    """Index of the `]` that closes the `[` or `@[` at `i` (len(tokens) when unclosed)."""
    depth = 0
    for j in range(i, len(tokens)):
        text = tokens[j].text
        if tokens[j].kind is Kind.SYMBOL and text in ("[", "@[", "%["):
            depth += 1
        elif tokens[j].kind is Kind.SYMBOL and text == "]":
            depth -= 1
            if depth == 0:
                return j
    return len(tokens)


def prefix_end(tokens: Sequence[Token], i: int) -> int | None:
    """Index of the `in` that ends an `open`/`set_option`/`attribute` prefix starting at
    `i`, or None when the command at `i` stands alone (no `in`)."""
    keyword = tokens[i].text
    j = i + 1
    if keyword == "set_option":
        j = i + 3                       # set_option NAME VALUE
    elif keyword == "attribute":
        if j < len(tokens) and tokens[j].text == "[":
            j = matching_close(tokens, j) + 1
        while j < len(tokens) and tokens[j].kind is Kind.IDENT and tokens[j].text != "in":
            j += 1
    else:                               # open [scoped] NAMES [hiding|renaming ...]
        while j < len(tokens) and tokens[j].text != "in" and not (
                tokens[j].kind is Kind.IDENT and tokens[j].text in DECL_KEYWORDS + MODIFIERS):
            if tokens[j].line != tokens[i].line and tokens[j].column == 0:
                break
            j += 1
    if j < len(tokens) and tokens[j].text == "in" and tokens[j].kind is Kind.IDENT:
        return j
    return None


def parse_command(tokens: list[Token]) -> Command:
    """Prefixes, doc comment, `@[...]` attributes and modifiers of one command, then its keyword."""
    toks = tuple(tokens)
    prefixes: list[Prefix] = []
    i = 0
    while i < len(toks) and toks[i].kind is Kind.IDENT and toks[i].text in ("open", "set_option",
                                                                            "attribute"):
        end = prefix_end(toks, i)
        if end is None:
            break
        prefixes.append(Prefix(toks[i].text, toks[i:end]))
        i = end + 1
    doc = False
    if i < len(toks) and toks[i].kind is Kind.DOC_COMMENT:
        doc, i = True, i + 1
    attributes: list[tuple[Token, ...]] = []
    while i < len(toks) and toks[i].text == "@[":
        close = matching_close(toks, i)
        attributes.append(toks[i + 1:close])
        i = close + 1
    modifiers: list[str] = []
    while i < len(toks) and toks[i].kind is Kind.IDENT and toks[i].text in MODIFIERS:
        modifiers.append(toks[i].text)
        i += 1
    dangling = ""
    if i >= len(toks):
        dangling = ("`in` with no command after it" if prefixes and not (doc or attributes)
                    else "a doc comment, attribute or modifier with no declaration after it")
    return Command(toks, tuple(prefixes), doc, tuple(attributes), tuple(modifiers), i, dangling)


def commands(tokens: list[Token]) -> list[Command]:
    """`split_commands` then `parse_command` on each."""
    return [parse_command(group) for group in split_commands(tokens)]
