"""When is a proof accepted: the rules of REPL_PROTOCOL.md section 3, as pure functions.

    precheck(...)      the static layer, no Lean: header, one declaration of the theorem with
                       the problem's statement, and an allowlist of what a proof may contain.
                       None means "send it to Lean".
    lean_command(...)  the text sent to the REPL against the header's environment: the
                       candidate without its header lines, then two commands of ours that Lean
                       answers at known lines: `#print axioms _root_.NAME` and an `example`
                       whose type is the problem's statement and whose proof is `@_root_.NAME`.
    judge(...)         Lean's reply -> Accepted / Rejected, reading only the answers at the
                       appended commands' own lines.

Every backend (REPL pool, tactic sessions, kimina-lean-server) goes through these, so the
rules are the same whichever way Lean was reached. Lean's own judges (leanprover/comparator,
lean4checker) go further and replay the kernel: `lean_env.comparator` runs as the final judge
where it is installed.

## The allowlist (static layer)

A candidate may contain only what genuine prover output contains (all 221 released
DeepSeek-Prover-V2 miniF2F proofs are header + doc comment + one theorem; Goedel-Prover-V2
adds auxiliary lemmas and `set_option ... in`):

* commands: `theorem`/`lemma`/`def`/`abbrev`/`example` (modifiers `private`,
  `noncomputable`; attributes from `ALLOWED_ATTRIBUTES`); `open` of namespaces the header
  already opens; `set_option` of `ALLOWED_OPTIONS`; `namespace`/`section`/`end` when balanced
  and not around the theorem; `attribute [simp] x`; a module doc `/-! -/`; `#print axioms X`;
  and the prefixes `open X in`, `set_option O V in`, `attribute [A] x in` before a command;
* inside bodies: no keyword that starts a command, `open`/`set_option` only as `... in`, no
  `#` command, no syntax quotation, and none of the identifiers in `_FORBIDDEN_IDENTS` (code
  that runs on the host or trusts compiled code: `run_tac`, `by_elab`, `native_decide`,
  `decide +native`, ...). Everything else is rejected with its name and line.

## Why Lean's statement check is sound under the allowlist

The appended `example : ∀ BINDERS, TYPE := @_root_.NAME` is elaborated from the problem's own
text, after the candidate, at top level. Lean accepts it only if the proved constant's type is
definitionally the problem's statement (`@` blocks implicit lambdas, so the types are compared
as they are), and the kernel checks the `example`. For this to decide the right question, the
problem's text must elaborate as it does in the bare header, and nothing the allowlist lets
through can change that: no notation, macro, syntax or elaborator (no such commands, no
quotations, no metaprogram can run); no instance, coercion, default instance or unification
hint (no such commands, no `instance`/`coe`-like attributes); no persistent `open` beyond the
header's, no `variable`/`include`, no persistent option other than heartbeat and printing
limits; every `namespace`/`section` closed, so the example sits at top level; and no
auxiliary declaration is named like any identifier of the statement, so name resolution and
dot notation in the statement find what they found before. A changed, shadowed, weakened or
re-scoped statement therefore makes the `example` an error at its own line, which `judge`
reports as a statement mismatch.
"""

from __future__ import annotations

import difflib
import functools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from lean_env.commands import BRACKET_CLOSE as _CLOSE
from lean_env.commands import BRACKET_OPEN as _OPEN
from lean_env.commands import (
    COMMAND_KEYWORDS,
    DECL_KEYWORDS,
    Command,
    commands,
    matching_close,
    prefix_end,
    statement_end,
)
from lean_env.lexer import Kind, Token, code_tokens, first_error, render, tokenize
from lean_env.protocol import CommandResponse, ErrorReply
from lean_env.verdict import Accepted, LeanMessage, NotChecked, Rejected, RejectReason

# Options a candidate may set: limits (they can only make Lean give up) and printing/linting.
ALLOWED_OPTIONS = ("maxHeartbeats", "maxRecDepth", "synthInstance.maxHeartbeats",
                   "synthInstance.maxSize", "exponentiation.threshold")
ALLOWED_OPTION_PREFIXES = ("linter.", "pp.")
# Attributes a declaration may carry: `simp` lemmas change what `simp` does in later proofs,
# never how a statement elaborates.
ALLOWED_ATTRIBUTES = ("simp", "-simp")
# Declarations a candidate may make, and the commands it may contain.
ALLOWED_DECLS = ("theorem", "lemma", "def", "abbrev", "example")
ALLOWED_MODIFIERS = ("private", "noncomputable")
_SCOPE_COMMANDS = ("namespace", "section", "end")

# Identifiers (compared by their last component, so `Lean.ofReduceBool`, `ofReduceBool` after
# `open Lean`, and `«native_decide»` are all caught) rejected wherever they appear in code,
# with the reason shown to the user.
_FORBIDDEN_IDENTS: dict[str, str] = {
    "sorry": "proof left unfinished",
    "admit": "proof left unfinished",
    "sorryAx": "proof left unfinished",
    "stop": "`stop` is `repeat sorry`: the proof is left unfinished",
    "native_decide": "trusts compiled code instead of the kernel",
    "ofReduceBool": "trusts compiled code instead of the kernel",
    "ofReduceNat": "trusts compiled code instead of the kernel",
    "trustCompiler": "trusts compiled code instead of the kernel",
    "implemented_by": "replaces a definition's code",
    "extern": "replaces a definition's code",
    "unsafe": "unsafe code is not checked by the kernel",
    "run_cmd": "runs arbitrary code on the host",
    "run_tac": "runs arbitrary code on the host",
    "run_elab": "runs arbitrary code on the host",
    "run_meta": "runs arbitrary code on the host",
    "by_elab": "runs arbitrary code on the host",
    "dbg_trace": "runs arbitrary code on the host",
    "initialize": "runs arbitrary code on the host",
    "builtin_initialize": "runs arbitrary code on the host",
    "deriving": "derives instances, which can change the meaning of the statement's notation",
}
_THEOREM_KEYWORDS = ("theorem", "lemma")
_STATEMENT_KEYWORDS = ("theorem", "lemma", "def")


@dataclass(frozen=True)
class LeanCommand:
    """What `lean_command` sends, and the 1-based lines (in `text`) where Lean answers the two
    appended commands: `#print axioms` at `axioms_line`, the statement check at
    `statement_line`. A message elsewhere is the candidate's, whatever it says."""

    text: str
    axioms_line: int
    statement_line: int

    def shifted(self, lines: int) -> LeanCommand:
        """The same command sent after `lines` more lines (kimina: header + command)."""
        return LeanCommand(self.text, self.axioms_line + lines, self.statement_line + lines)


def _find_decls(toks: list[Token], name: str) -> list[int]:
    """Indices of every `theorem`/`lemma`/`def` keyword declaring exactly `name`, compared
    component by component (`«Nat.Prime»` is one component, `Nat.Prime` two)."""
    want = _parts(name)
    return [i for i, tok in enumerate(toks[:-1])
            if tok.kind is Kind.IDENT and tok.text in _STATEMENT_KEYWORDS
            and toks[i + 1].kind is Kind.IDENT and toks[i + 1].parts == want]


def _parts(name: str) -> tuple[str, ...]:
    toks = tokenize(name)
    if len(toks) == 1 and toks[0].kind is Kind.IDENT:
        return toks[0].parts
    return (name,)


def _problem_statement(name: str, formal_statement: str) -> list[Token]:
    """The problem's statement tokens (binders, `:`, type), between its name and `:=`."""
    return list(_statement_tokens(name, formal_statement))


@functools.lru_cache(maxsize=256)
def _statement_tokens(name: str, formal_statement: str) -> tuple[Token, ...]:
    """`_problem_statement`, found once per problem: `precheck` and `lean_command` both ask
    (tokens are immutable; each caller gets a list of its own)."""
    toks = tokenize(formal_statement)
    found = _find_decls(toks, name)
    if not found:
        raise ValueError(f"the formal statement does not declare theorem {name!r}")
    return tuple(toks[found[0] + 2:statement_end(toks, found[0] + 1)])


def _key(tok: Token) -> tuple[str, object]:
    return tok.kind.value, tok.parts if tok.kind is Kind.IDENT else tok.text


def _statement_diff(problem: list[Token], candidate: list[Token]) -> str:
    """A readable difference of two statements: each changed span with a little context."""
    a, b = [_key(t) for t in problem], [_key(t) for t in candidate]
    lines = [f"problem:   {render(problem)}", f"candidate: {render(candidate)}"]
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        before = render(problem[max(0, i1 - 3):i1])
        lines.append(
            f"  after `{before}`: problem has `{render(problem[i1:i2]) or '(nothing)'}`, "
            f"candidate has `{render(candidate[j1:j2]) or '(nothing)'}`"
        )
    return "\n".join(lines)


# --- the allowlist ----------------------------------------------------------------------------

def _option_allowed(name: str) -> bool:
    return name in ALLOWED_OPTIONS or name.startswith(ALLOWED_OPTION_PREFIXES)


def _at(tok: Token) -> str:
    return f"at line {tok.line}"


def _attribute_problem(attrs: Sequence[Token], where: Token) -> str | None:
    """An `@[...]`/`attribute [...]` list (inner tokens) with an attribute not allowed."""
    groups: list[list[Token]] = [[]]
    for tok in attrs:
        if tok.text == ",":
            groups.append([])
        else:
            groups[-1].append(tok)
    for group in groups:
        text = " ".join(t.text for t in group)
        if text.replace("- ", "-") not in ALLOWED_ATTRIBUTES:
            return (f"attribute `{text}` {_at(where)}: only {', '.join(ALLOWED_ATTRIBUTES)} are "
                    "allowed (others can register elaborators, instances or compiled code)")
    return None


def _prefix_problem(keyword: str, toks: Sequence[Token], header_opens: set[tuple[str, ...]],
                    *, persistent: bool) -> str | None:
    """An `open`/`set_option`/`attribute` command (or `... in` prefix) that is not allowed.
    `persistent`: in effect to the end of the file (no `in`, not inside a section)."""
    head = toks[0]
    if keyword == "set_option":
        name = toks[1].name if len(toks) > 1 else ""
        if not _option_allowed(name):
            return (f"`set_option {name}` {_at(head)}: options other than "
                    f"{', '.join(ALLOWED_OPTIONS)}, linter.* and pp.* can change what Lean "
                    "checks (debug.skipKernelTC, debug.byAsSorry, ...)")
        return None
    if keyword == "attribute":
        if len(toks) < 2 or toks[1].text != "[":
            return f"`attribute` {_at(head)}: expected `attribute [...]`"
        return _attribute_problem(toks[2:matching_close(list(toks), 1)], head)
    # open
    words = [t for t in toks[1:]]
    if any(t.text == "private" for t in words):
        return f"`open private` {_at(head)}: exposes private declarations"
    if any(t.kind is not Kind.IDENT for t in words):
        return f"`open` {_at(head)}: only plain `open A B` and `open scoped A` are allowed"
    if persistent:
        names = [t.parts for t in words if t.text != "scoped"]
        extra = [".".join(n) for n in names if n not in header_opens]
        if extra:
            return (f"`open {' '.join(extra)}` {_at(head)} stays in effect for the rest of the "
                    "file, which the problem header does not open: names in the statement "
                    "could resolve differently (use `open ... in` before one declaration)")
    return None


def _body_problem(toks: Sequence[Token], start: int) -> str | None:
    """Inside one command, from `start`: no command keyword (except the `open ... in` and
    `set_option ... in` term/tactic forms), no `#` command, no syntax quotation."""
    i = start
    while i < len(toks):
        tok = toks[i]
        if tok.kind is Kind.HASH_CMD:
            return f"`{tok.text}` {_at(tok)}: a command inside a declaration"
        if tok.kind is Kind.DOC_COMMENT:
            return (f"doc comment {_at(tok)} inside a declaration: Lean may start a new "
                    "command there")
        if tok.kind is Kind.SYMBOL and tok.text in ("`(", "``("):
            return f"syntax quotation `{tok.text}` {_at(tok)}: code for macros"
        if tok.kind is Kind.IDENT and tok.text in ("open", "set_option"):
            end = prefix_end(toks, i)
            if end is None:
                return (f"`{tok.text}` {_at(tok)} inside a declaration without `in`: Lean would "
                        "read it as a new command")
            found = _prefix_problem(tok.text, toks[i:end], set(), persistent=False)
            if found is not None:
                return found
            i = end + 1
            continue
        if tok.kind is Kind.IDENT and tok.text in COMMAND_KEYWORDS:
            return (f"`{tok.text}` {_at(tok)}: a command keyword inside a declaration (put each "
                    "command on its own line, starting in column 0)")
        i += 1
    return None


def _forbidden(toks: Sequence[Token]) -> str | None:
    """The first forbidden identifier or native-code switch in code (strings' braces
    included), as 'what at line N: why'."""
    for i, tok in enumerate(toks):
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        prev = toks[i - 1] if i else None
        if tok.kind in (Kind.IDENT, Kind.NAME_LIT) and tok.parts:
            last = tok.parts[-1]
            if last in _FORBIDDEN_IDENTS and not (last == "stop" and not _tactic_position(toks, i)):
                return f"`{tok.text}` {_at(tok)}: {_FORBIDDEN_IDENTS[last]}"
            if last == "native" and tok.kind is Kind.IDENT and _native_switch(prev, nxt, tok):
                return f"`{tok.text}` {_at(tok)}: native evaluation trusts compiled code"
        if tok.text == "config" and nxt is not None and nxt.text == ":=" \
                and i + 2 < len(toks) and _anonymous_config(toks, i + 2):
            return (f"an anonymous configuration {_at(tok)}: its fields cannot be read "
                    "statically (it could switch on native evaluation)")
        if tok.kind is Kind.IDENT and tok.text == "set_option" and nxt is not None \
                and not _option_allowed(nxt.name):
            return (f"`set_option {nxt.name}` {_at(tok)}: options other than "
                    f"{', '.join(ALLOWED_OPTIONS)}, linter.* and pp.* can change what Lean checks")
    return None


def _tactic_position(toks: Sequence[Token], i: int) -> bool:
    """Whether token `i` starts a tactic: first on its line, or after `by`, `;`, `<;>`, `·`."""
    prev = toks[i - 1] if i else None
    return prev is None or prev.line != toks[i].line or prev.text in ("by", ";", "<;>", "·", "(")


def _native_switch(prev: Token | None, nxt: Token | None, tok: Token) -> bool:
    """`+native`/`-native` (glued), or `native :=` as a configuration field (after `{`, `(`,
    `,` or `with`); a hypothesis named `native` (`have native : ...`, `intro native`) is fine."""
    if prev is not None and prev.text in ("+", "-") and prev.end == tok.start:
        return True
    return (nxt is not None and nxt.text == ":=" and prev is not None
            and prev.text in ("{", "(", ",", "with"))


def _anonymous_config(toks: Sequence[Token], j: int) -> bool:
    """A configuration value given positionally: `⟨...⟩`, `.mk ...`, `X.mk ...`."""
    value = toks[j]
    if value.text == "⟨":
        return True
    if value.text == "." and j + 1 < len(toks) and toks[j + 1].text == "mk":
        return True
    return value.kind is Kind.IDENT and value.parts[-1:] == ("mk",)


def _statement_idents(statement: list[Token]) -> set[str]:
    return {part for t in statement if t.kind is Kind.IDENT for part in t.parts}


def _allowlist(cmds: list[Command], name: str, header_opens: set[tuple[str, ...]],
               header_imports: set[str], statement: list[Token]) -> tuple[str | None, int]:
    """Walk the commands: (the first problem found, or None; count of declarations of `name`
    at top level). Also enforces one top-level scope discipline."""
    scopes: list[tuple[str, str]] = []   # (namespace|section, name)
    opened_at: list[int] = []
    want = _parts(name)
    declared = 0
    used_names = _statement_idents(statement)
    in_preamble = True
    for cmd in cmds:
        toks = cmd.tokens
        if cmd.dangling:
            return f"{cmd.dangling} at line {cmd.line}", declared
        kw_tok = toks[cmd.head]
        kw = kw_tok.text
        if kw == "import" and kw_tok.kind is Kind.IDENT:
            if not in_preamble or cmd.prefixes or len(toks) != 2:
                return f"`import` {_at(kw_tok)}: imports belong to the header only", declared
            if toks[1].name not in header_imports:
                return (f"the candidate imports {toks[1].name}, which the problem header does not "
                        f"(header imports: {', '.join(sorted(header_imports)) or 'none'})"), declared
            continue
        in_preamble = False
        for pre in cmd.prefixes:
            found = _prefix_problem(pre.keyword, pre.tokens, header_opens, persistent=False)
            if found is not None:
                return found, declared
        if cmd.attributes and kw not in ALLOWED_DECLS:
            return f"`@[...]` {_at(toks[0])} before `{kw}`", declared
        for attrs in cmd.attributes:
            found = _attribute_problem(attrs, toks[0])
            if found is not None:
                return found, declared
        bad_mod = [m for m in cmd.modifiers if m not in ALLOWED_MODIFIERS]
        if bad_mod:
            return (f"`{bad_mod[0]}` {_at(toks[0])}: only the modifiers "
                    f"{', '.join(ALLOWED_MODIFIERS)} are allowed"), declared
        if kw_tok.kind is Kind.DOC_COMMENT or (kw_tok.kind is Kind.IDENT and kw in ALLOWED_DECLS):
            if kw_tok.kind is Kind.DOC_COMMENT:   # a module doc `/-! -/` standing alone
                if not kw_tok.text.startswith("/-!") or len(toks) != cmd.head + 1:
                    return f"doc comment {_at(kw_tok)} with no declaration after it", declared
                continue
            decl = cmd.decl_name
            if kw != "example" and decl is None:
                return f"`{kw}` {_at(kw_tok)} without a name", declared
            if decl is not None and decl.parts == want:
                if scopes:
                    kinds = ", ".join(f"{k} {n}".strip() for k, n in scopes)
                    return (f"the theorem {_at(decl)} is declared inside `{kinds}`: its name and "
                            "the meaning of the names in its statement change"), declared
                if "private" in cmd.modifiers:
                    return f"the theorem {_at(decl)} is private: it is not `{name}`", declared
                opened = {p for pre in cmd.prefixes if pre.keyword == "open"
                          for p in [t.parts for t in pre.tokens[1:] if t.text != "scoped"]}
                extra = opened - header_opens
                if extra:
                    return (f"the theorem is stated under `open {' '.join('.'.join(e) for e in sorted(extra))}`"
                            ", which the problem header does not open: names in the statement "
                            "could resolve differently"), declared
                declared += 1
            elif decl is not None:
                clash = used_names & set(decl.parts[-1:])
                if clash:
                    return (f"auxiliary declaration `{decl.text}` {_at(decl)} is named like "
                            f"`{clash.pop()}` in the problem's statement, which could change "
                            "what the statement means"), declared
            found = _body_problem(toks, cmd.head + 1)
            if found is not None:
                return found, declared
            continue
        if kw_tok.kind is Kind.HASH_CMD:
            if kw == "#print" and len(toks) == cmd.head + 3 and toks[cmd.head + 1].text == "axioms" \
                    and toks[cmd.head + 2].kind is Kind.IDENT and not cmd.prefixes:
                continue
            return (f"`{kw}` {_at(kw_tok)}: `#` commands are not allowed (only "
                    "`#print axioms NAME`)"), declared
        if kw_tok.kind is Kind.IDENT and kw in ("open", "set_option", "attribute"):
            if cmd.prefixes and kw != "attribute":
                return f"`{kw}` {_at(kw_tok)} after `... in`", declared
            rest = list(toks[cmd.head:])
            persistent = not scopes
            found = _prefix_problem(kw, rest, header_opens, persistent=persistent)
            if found is not None:
                return found, declared
            if kw == "open":
                continue
            if kw == "set_option" and len(rest) != 3:
                return f"`set_option` {_at(kw_tok)}: expected `set_option NAME VALUE`", declared
            if kw == "attribute":
                names = rest[matching_close(rest, 1) + 1:]
                if not names or any(t.kind is not Kind.IDENT for t in names):
                    return f"`attribute` {_at(kw_tok)}: expected `attribute [...] NAMES`", declared
            continue
        if kw_tok.kind is Kind.IDENT and kw in _SCOPE_COMMANDS and not cmd.prefixes \
                and (not cmd.modifiers or (kw == "section" and cmd.modifiers == ("noncomputable",))):
            label = toks[cmd.head + 1].name if len(toks) > cmd.head + 1 else ""
            if len(toks) > cmd.head + 2 or (label and toks[cmd.head + 1].kind is not Kind.IDENT):
                return f"`{kw}` {_at(kw_tok)}: expected `{kw} [NAME]`", declared
            if kw == "end":
                if not scopes or scopes[-1][1] != label:
                    return (f"`end {label}` {_at(kw_tok)} does not close the innermost scope "
                            f"({' '.join(scopes[-1]) if scopes else 'none is open'})"), declared
                scopes.pop()
                opened_at.pop()
            else:
                scopes.append((kw, label))
                opened_at.append(kw_tok.line)
            continue
        allowed = ", ".join(ALLOWED_DECLS + ("open", "set_option", "attribute", "namespace",
                                             "section", "end", "#print axioms"))
        return (f"`{kw}` {_at(kw_tok)}: not a command a proof may contain (allowed: {allowed})"), declared
    if scopes:
        return (f"`{' '.join(scopes[-1]).strip()}` at line {opened_at[-1]} is never closed: every "
                "namespace and section must end before the end of the file"), declared
    return None, declared


def forbidden_construct(code: str) -> str | None:
    """The static rules for a snippet such as one tactic: the first thing Lean would lex
    differently or that is forbidden (an `import` and any command keyword count), or None."""
    all_toks = tokenize(code, comments=True)
    bad = first_error(all_toks)
    if bad is not None:
        return f"{bad.error} at line {bad.line}"
    toks = [t for t in all_toks if t.kind is not Kind.COMMENT]
    found = _forbidden(toks)
    if found is not None:
        return found
    return _body_problem(code_tokens(toks), 0)


def statement_text(name: str, formal_statement: str) -> str:
    """The declaration of `name` up to its proof: `theorem name binders : type` (source text,
    without the `:=`). Raises ValueError when `formal_statement` does not declare `name`."""
    toks = tokenize(formal_statement)
    found = _find_decls(toks, name)
    if not found:
        raise ValueError(f"the formal statement does not declare theorem {name!r}")
    end = statement_end(toks, found[0] + 1)
    return formal_statement[toks[found[0]].start:toks[end - 1].end]


@dataclass(frozen=True)
class FileTheorem:
    """A theorem of a Lean file read as a problem: its header, name and statement."""

    header: str
    name: str
    formal_statement: str
    line: int


def file_theorems(code: str) -> list[FileTheorem]:
    """Every top-level theorem/lemma of a Lean file, read as Lean would (comments and strings
    are not code; declarations inside `namespace X` get the name `X.name`). The header is the
    file's leading `import`/`set_option`/`open` commands."""
    toks = code_tokens(tokenize(code, comments=True))
    cmds = commands([t for t in tokenize(code, comments=True) if t.kind is not Kind.COMMENT
                     and not t.in_string])
    header_end = 0
    for cmd in cmds:
        if cmd.prefixes or cmd.keyword not in ("import", "open", "set_option"):
            break
        header_end = cmd.tokens[-1].end
    header = code[:header_end].rstrip() + "\n\n" if header_end else ""
    out: list[FileTheorem] = []
    namespaces: list[str] = []
    del toks
    for cmd in cmds:
        kw = cmd.keyword
        if kw == "namespace" and len(cmd.tokens) > cmd.head + 1:
            namespaces.append(cmd.tokens[cmd.head + 1].name)
        elif kw == "section":
            namespaces.append("")
        elif kw == "end" and namespaces:
            namespaces.pop()
        elif kw in _THEOREM_KEYWORDS and cmd.decl_name is not None:
            decl = cmd.decl_name
            body = list(cmd.tokens)
            end = statement_end(body, cmd.head + 1)
            text = code[body[cmd.head].start:body[end - 1].end]
            prefix = ".".join(n for n in namespaces if n)
            full = f"{prefix}.{decl.name}" if prefix else decl.name
            out.append(FileTheorem(header, full, text + " := by\n", decl.line))
    return out


def file_problem(code: str, theorem: str | None = None) -> tuple[str, str, str] | None:
    """A whole Lean file read as its own problem: (header, theorem name, formal statement) of
    `theorem` (default: the file's first theorem). None when there is no such theorem."""
    found = file_theorems(code)
    pick = next((t for t in found if theorem is None or t.name == theorem), None)
    if pick is None:
        return None
    return pick.header, pick.name, pick.formal_statement


def _has_code(toks: list[Token]) -> bool:
    """Lean code, as opposed to prose or an empty answer: some declaration or command."""
    return any(t.kind is Kind.IDENT and t.text in DECL_KEYWORDS + ("import",) for t in toks)


def _header_scope(header: str) -> tuple[set[str], set[tuple[str, ...]]]:
    """(imports, opened namespaces) of a problem header."""
    imports: set[str] = set()
    opens: set[tuple[str, ...]] = set()
    for cmd in commands(code_tokens(tokenize(header, comments=True))):
        if cmd.keyword == "import" and len(cmd.tokens) > 1:
            imports.add(cmd.tokens[1].name)
        elif cmd.keyword == "open":
            opens |= {t.parts for t in cmd.tokens[cmd.head + 1:]
                      if t.kind is Kind.IDENT and t.text != "scoped"}
    return imports, opens


def precheck(name: str, header: str, formal_statement: str, candidate: str, *,
             checked_by: str) -> Rejected | NotChecked | None:
    """The static layer (REPL_PROTOCOL.md section 3, rules 1, 2 and 5, as an allowlist; see
    the module docstring). `candidate` is a whole file (header + theorem + proof) or the
    theorem and its proof alone. Returns None when the candidate should be sent to Lean."""
    t0 = time.perf_counter()

    def rejected(reason: RejectReason, detail: str) -> Rejected:
        return Rejected(checked_by=checked_by, time_s=time.perf_counter() - t0, reason=reason,
                        detail=detail, layers=("static",))

    all_toks = tokenize(candidate, comments=True)
    code = code_tokens(all_toks)
    if not _has_code(code):
        return NotChecked(checked_by=checked_by, time_s=time.perf_counter() - t0, cause="no_code",
                          detail="no Lean declaration found (the candidate is empty, comments "
                          "or prose)", layers=("static",))
    # A candidate that repeats the problem's header verbatim is judged on what follows it
    # (ProofNet headers declare helper `def`s and set options that the statement needs).
    skip = _header_length(header, candidate)
    all_toks = [t for t in all_toks if t.start >= skip]
    code = [t for t in code if t.start >= skip]
    bad = first_error(all_toks)
    if bad is not None:
        return rejected(RejectReason.FORBIDDEN,
                        f"{bad.error} at line {bad.line}: Lean would not read this as we do")
    found = _forbidden([t for t in all_toks if t.kind is not Kind.COMMENT])
    if found is not None:
        return rejected(RejectReason.FORBIDDEN, found)

    statement = _problem_statement(name, formal_statement)
    imports, opens = _header_scope(header)
    structure = [t for t in all_toks if t.kind is not Kind.COMMENT and not t.in_string]
    problem, declared = _allowlist(commands(structure), name, opens, imports, statement)
    if problem is not None:
        reason = (RejectReason.HEADER_MISMATCH if "imports" in problem
                  else RejectReason.STATEMENT_MISMATCH if "statement" in problem
                  else RejectReason.FORBIDDEN)
        return rejected(reason, problem)
    decls = _find_decls(code, name)
    if not decls or declared == 0:
        declared_names = [f"{code[i + 1].text} (line {code[i + 1].line})"
                          for i, t in enumerate(code[:-1])
                          if t.kind is Kind.IDENT and t.text in _STATEMENT_KEYWORDS]
        return rejected(RejectReason.THEOREM_MISSING,
                        f"no top-level `theorem {name}` in the candidate"
                        + (f" (it declares: {', '.join(declared_names)})" if declared_names else ""))
    if len(decls) > 1 or declared > 1:
        lines = ", ".join(str(code[i].line) for i in decls)
        return rejected(RejectReason.STATEMENT_MISMATCH,
                        f"`{name}` is declared {max(len(decls), declared)} times (lines {lines}): "
                        "exactly one declaration is allowed")
    cand_stmt = code[decls[0] + 2:statement_end(code, decls[0] + 1)]
    if [_key(t) for t in statement] != [_key(t) for t in cand_stmt]:
        return rejected(RejectReason.STATEMENT_MISMATCH,
                        "the theorem's statement differs from the problem's:\n"
                        + _statement_diff(statement, cand_stmt))
    return None


def _header_length(header: str, candidate: str) -> int:
    """Length of the problem header at the start of `candidate` (0 when it does not start
    with the whole header, whitespace at its end aside)."""
    head = header.rstrip()
    return len(head) if head and candidate.startswith(head) else 0


def _as_proposition(statement: list[Token]) -> str:
    """`(a b : ℕ) (h : P) : Q` -> `∀ (a b : ℕ) (h : P), Q` on one line (comments dropped)."""
    depth = 0
    for j, tok in enumerate(statement):
        if tok.kind is Kind.SYMBOL and tok.text in _OPEN:
            depth += 1
        elif tok.kind is Kind.SYMBOL and tok.text in _CLOSE:
            depth -= 1
        elif depth == 0 and tok.kind is Kind.SYMBOL and tok.text == ":":
            binders, conclusion = render(statement[:j]), render(statement[j + 1:])
            return f"∀ {binders}, {conclusion}" if binders else conclusion
    raise ValueError(f"no `:` in the statement {render(statement)!r}")


def _lean_name(name: str) -> str:
    parts = _parts(name)
    return ".".join(p if tokenize(p) and len(tokenize(p)) == 1
                    and tokenize(p)[0].kind is Kind.IDENT and "«" not in p else f"«{p}»"
                    for p in parts)


def lean_command(name: str, header: str, candidate: str, formal_statement: str) -> LeanCommand:
    """The text to run against the header's environment (see the module docstring).

    The candidate's own `import` lines are blanked out, keeping their newlines so that Lean's
    line numbers are the candidate file's, and so are its `set_option`/`open` lines that
    repeat the problem header's. Then, each on its own line: `#print axioms _root_.NAME`
    (rule 4) and `example : STATEMENT := @_root_.NAME` (the statement, from the problem).
    """
    header_cmds = {tuple(t.text for t in c.tokens) for c in commands(code_tokens(tokenize(header)))}
    skip = _header_length(header, candidate)
    lines = candidate.count("\n", 0, skip)
    text = "\n" * lines + candidate[skip:]
    # The candidate's own tokens (lexed once, for precheck) past the header are text's, moved
    # by `shift` characters: the lexer has no look-behind, and the lines and every column
    # that decides where a command starts are the same. Unless a token runs across the
    # header's end: then text is lexed as it is.
    toks = tokenize(candidate, comments=True)
    if any(t.start < skip < t.end for t in toks):
        toks, shift = tokenize(text, comments=True), 0
    else:
        toks, shift = [t for t in toks if t.start >= skip], lines - skip
    for cmd in reversed(commands(code_tokens(toks))):
        words = tuple(t.text for t in cmd.tokens)
        if cmd.keyword == "import" or (cmd.keyword in ("open", "set_option") and words in header_cmds):
            start, end = cmd.tokens[0].start + shift, cmd.tokens[-1].end + shift
            text = text[:start] + "\n" * text.count("\n", start, end) + text[end:]
    text = text.rstrip() + "\n\n"
    target = f"_root_.{_lean_name(name)}"
    axioms_line = text.count("\n") + 1
    text += f"#print axioms {target}\n\n"
    statement_line = text.count("\n") + 1
    text += f"example : {_as_proposition(_problem_statement(name, formal_statement))} := @{target}\n"
    return LeanCommand(text, axioms_line, statement_line)


_AXIOMS_RE = re.compile(r"^'(?P<name>.+?)' depends on axioms: \[(?P<axioms>.*)\]\s*$", re.DOTALL)
_NO_AXIOMS_RE = re.compile(r"^'(?P<name>.+?)' does not depend on any axioms\s*$")
_SORRY_WARNING = "declaration uses 'sorry'"


def _plain(lean_name: str) -> str:
    """A printed constant name compared without guillemets and without a `_root_.` prefix
    (we ask for `_root_.NAME`; Lean prints the constant's own name)."""
    plain = lean_name.replace("«", "").replace("»", "")
    return plain.removeprefix("_root_.")


def judge(name: str, response: CommandResponse | ErrorReply, *, command: LeanCommand,
          allowed_axioms: Sequence[str], checked_by: str, time_s: float) -> Accepted | Rejected:
    """Lean's reply to `command` -> the verdict (rules 3 and 4, and the statement check).

    Only a message at `command.axioms_line` can be the `#print axioms` answer and only an
    error at `command.statement_line` is the statement check's: a message the candidate
    produced (a `trace`, a `logInfo`) cannot stand in for either.
    """
    layers = ("static", "repl")

    def rejected(reason: RejectReason, detail: str, messages: tuple[LeanMessage, ...] = ()) -> Rejected:
        return Rejected(checked_by=checked_by, time_s=time_s, reason=reason, detail=detail,
                        messages=messages, layers=layers)

    if isinstance(response, ErrorReply):
        return rejected(RejectReason.LEAN_ERROR, response.message)
    msgs = response.messages
    statement_errors = [m for m in response.errors if m.line == command.statement_line]
    other_errors = [m for m in response.errors if m.line != command.statement_line]
    if other_errors:
        return rejected(RejectReason.LEAN_ERROR, str(other_errors[0]), msgs)
    if statement_errors:
        return rejected(RejectReason.STATEMENT_MISMATCH,
                        f"Lean: `_root_.{name}` does not prove the problem's statement: "
                        f"{statement_errors[0].text}", msgs)
    if response.sorries:
        s = response.sorries[0]
        return rejected(RejectReason.SORRY, f"Lean reports a sorry at {s.line}:{s.column}", msgs)
    warning = next((m for m in msgs if _SORRY_WARNING in m.text), None)
    if warning is not None:
        return rejected(RejectReason.SORRY, str(warning), msgs)
    answers: list[tuple[str, ...]] = []
    for m in msgs:
        if m.severity != "info" or m.line != command.axioms_line:
            continue
        text = m.text.strip()
        if (hit := _AXIOMS_RE.match(text)) and _plain(hit["name"]) == _plain(name):
            answers.append(tuple(a.strip() for a in hit["axioms"].split(",") if a.strip()))
        elif (hit := _NO_AXIOMS_RE.match(text)) and _plain(hit["name"]) == _plain(name):
            answers.append(())
    if len(answers) != 1:
        return rejected(RejectReason.AXIOMS,
                        (f"no `#print axioms {name}` answer at line {command.axioms_line} of "
                         "Lean's reply: the appended command did not run") if not answers else
                        f"{len(answers)} answers at the `#print axioms` line: {answers}", msgs)
    axioms = answers[0]
    bad = [a for a in axioms if a not in allowed_axioms]
    if "sorryAx" in bad:
        return rejected(RejectReason.SORRY, f"{name} depends on sorryAx", msgs)
    if bad:
        return rejected(RejectReason.AXIOMS,
                        f"{name} depends on axioms beyond {', '.join(allowed_axioms)}: "
                        f"{', '.join(bad)}", msgs)
    kept = tuple(m for m in msgs if m.line not in (command.axioms_line, command.statement_line))
    return Accepted(checked_by=checked_by, time_s=time_s, axioms=axioms, messages=kept,
                    layers=layers)
