"""When is a proof accepted: the rules of REPL_PROTOCOL.md section 3, as three pure functions.

    precheck(...)      static rules, no Lean: header, theorem name and statement, forbidden
                       constructs (rules 1, 2, 5). None means "send it to Lean".
    lean_command(...)  the text sent to the REPL against the header's environment: the
                       candidate without its header lines, then `#print axioms <name>`.
    judge(...)         Lean's reply -> Accepted / Rejected (rules 3, 4).

Every backend (REPL pool, tactic sessions, kimina-lean-server) goes through these, so the
acceptance rules are the same whichever way Lean was reached. The checks read code through
`lean_env.lexer`, never comments or strings: `-- no sorry here` is fine, `sorry` is not.

The rule list follows the REPL documentation, the Lean reference manual's "Validating a Lean
Proof", and the exploits collected by LeanParanoia and the DeepSeek/Kimina verifier issues.
Beyond the listed cheats it also rejects what changes the meaning of an unchanged statement:
`variable`/`include` (extra hypotheses), new `instance`s (new meaning for `<`, `+`, ...),
`#print` (a forged axioms line), `#guard_msgs` (hidden messages), a theorem declared inside a
`namespace`, and `open`s of namespaces the problem header does not open.
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from lean_env.lexer import Kind, Token, first_unterminated, render, tokenize
from lean_env.protocol import CommandResponse, ErrorReply
from lean_env.verdict import Accepted, LeanMessage, NotChecked, Rejected, RejectReason

# Identifiers (exact, after stripping guillemets) that are rejected wherever they appear in
# code, with the reason shown to the user.
_FORBIDDEN_IDENTS: dict[str, str] = {
    "sorry": "proof left unfinished",
    "admit": "proof left unfinished",
    "sorryAx": "proof left unfinished",
    "native_decide": "trusts compiled code instead of the kernel",
    "axiom": "declares a new axiom",
    "unsafe": "unsafe code is not checked by the kernel",
    "implemented_by": "replaces a definition's code",
    "extern": "replaces a definition's code",
    "run_cmd": "runs arbitrary code on the host",
    "run_tac": "runs arbitrary code on the host",
    "run_elab": "runs arbitrary code on the host",
    "run_meta": "runs arbitrary code on the host",
    "initialize": "runs arbitrary code on the host",
    "builtin_initialize": "runs arbitrary code on the host",
    "macro_rules": "can rewrite tactics or notation",
    "macro": "can rewrite tactics or notation",
    "syntax": "can rewrite tactics or notation",
    "elab": "can rewrite tactics or notation",
    "elab_rules": "can rewrite tactics or notation",
    "declare_syntax_cat": "can rewrite tactics or notation",
    "notation": "can rewrite tactics or notation",
    "infix": "can rewrite tactics or notation",
    "infixl": "can rewrite tactics or notation",
    "infixr": "can rewrite tactics or notation",
    "prefix": "can rewrite tactics or notation",
    "postfix": "can rewrite tactics or notation",
    "simproc": "runs custom metaprograms inside simp",
    "dsimproc": "runs custom metaprograms inside simp",
    "instance": "a new instance can change the meaning of the statement's notation",
    "default_instance": "a new instance can change the meaning of the statement's notation",
    "variable": "can add hypotheses to the theorem",
    "include": "can add hypotheses to the theorem",
    "export": "changes how names in the statement resolve",
}
# Last components that are rejected with any prefix (`Lean.ofReduceBool`, or `ofReduceBool`
# after `open Lean`).
_FORBIDDEN_SUFFIXES: dict[str, str] = {
    "ofReduceBool": "trusts compiled code instead of the kernel",
    "ofReduceNat": "trusts compiled code instead of the kernel",
    "trustCompiler": "trusts compiled code instead of the kernel",
    "sorryAx": "proof left unfinished",
}
_FORBIDDEN_HASH: dict[str, str] = {
    "#exit": "stops Lean before the end of the file",
    "#eval": "runs arbitrary code on the host",
    "#eval!": "runs arbitrary code on the host",
    "#print": "can print a forged `#print axioms` line (only `#print axioms` is allowed)",
    "#guard_msgs": "can hide Lean's messages",
}
# The problem's declaration: a theorem (or Mathlib's `lemma`); ProofNet also states a few
# problems as `def`s that construct data (`def exercise_2_1_21 ... : CommGroup G :=`).
_THEOREM_KEYWORDS = ("theorem", "lemma")
_DECL_KEYWORDS = _THEOREM_KEYWORDS + ("def",)
# Brackets that nest inside a statement; `:=`, `where` or `| alt =>` end it only at depth 0.
_OPEN = {"(", "[", "{", "⟨", "⦃", "⟦", "@[", "%[", "$(", "`("}
_CLOSE = {")", "]", "}", "⟩", "⦄", "⟧"}
# Keywords that start a command (enough to tell which command an `open X in` applies to).
_COMMAND_KEYWORDS = _DECL_KEYWORDS + ("example", "open", "set_option", "namespace", "section",
                                      "end", "abbrev", "structure", "inductive", "class")


@dataclass(frozen=True)
class _Preamble:
    """The candidate's leading header-like commands: `import`, `set_option`, `open`."""

    imports: tuple[str, ...]
    commands: tuple[tuple[int, int, tuple[str, ...]], ...]  # (start, end, token names)
    end_index: int   # index of the first token after the preamble


def _command_tokens(toks: list[Token], i: int) -> int:
    """End index (exclusive) of a one-line `set_option`/`open` command starting at `i`."""
    line = toks[i].line
    j = i + 1
    while j < len(toks) and toks[j].line == line and toks[j].text != "in":
        j += 1
    return j


def _preamble(toks: list[Token]) -> _Preamble:
    imports: list[str] = []
    commands: list[tuple[int, int, tuple[str, ...]]] = []
    i = 0
    while i < len(toks):
        tok = toks[i]
        if tok.kind is Kind.IDENT and tok.text == "import" and i + 1 < len(toks):
            imports.append(toks[i + 1].name)
            commands.append((tok.start, toks[i + 1].end, ("import", toks[i + 1].name)))
            i += 2
        elif tok.kind is Kind.IDENT and tok.text in ("set_option", "open") and tok.column == 0:
            j = _command_tokens(toks, i)
            if j < len(toks) and toks[j].text == "in":
                break  # `open X in <decl>` belongs to the declaration, not the header
            commands.append((tok.start, toks[j - 1].end, tuple(t.name for t in toks[i:j])))
            i = j
        else:
            break
    return _Preamble(tuple(imports), tuple(commands), i)


def _find_theorem(toks: list[Token], name: str) -> int | None:
    """Index of the `theorem`/`lemma` keyword declaring `name`, or None."""
    for i, tok in enumerate(toks[:-1]):
        if tok.kind is Kind.IDENT and tok.text in _DECL_KEYWORDS and toks[i + 1].name == name:
            return i
    return None


def _statement_end(toks: list[Token], start: int) -> int:
    """Index just past the statement that starts at `start` (the name token)."""
    depth = 0
    for j in range(start, len(toks)):
        text = toks[j].text
        if toks[j].kind is Kind.SYMBOL and text in _OPEN:
            depth += 1
        elif toks[j].kind is Kind.SYMBOL and text in _CLOSE:
            depth = max(0, depth - 1)
        elif depth == 0 and (text == ":="
                             or (text == "where" and toks[j].kind is Kind.IDENT)
                             or (text == "|" and _starts_match_alt(toks, j))):
            return j
    return len(toks)


def _starts_match_alt(toks: list[Token], j: int) -> bool:
    """`| pat => rhs` at the start of a line (pattern-matching proof), not `|x|` (abs)."""
    if j > 0 and toks[j - 1].line == toks[j].line:
        return False
    depth = 0
    for tok in toks[j + 1:]:
        if tok.text in _OPEN:
            depth += 1
        elif tok.text in _CLOSE:
            depth -= 1
        elif depth == 0 and tok.text == "|":
            return False
        elif depth == 0 and tok.text == "=>":
            return True
    return False


def _key(tok: Token) -> tuple[str, str]:
    return tok.kind.value, tok.name if tok.kind is Kind.IDENT else tok.text


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


def _forbidden(toks: list[Token]) -> str | None:
    """The first forbidden construct in code, as 'what at line N: why'."""
    for i, tok in enumerate(toks):
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        prev = toks[i - 1] if i else None
        why: str | None = None
        what = tok.text
        if tok.kind is Kind.IDENT:
            if tok.name in _FORBIDDEN_IDENTS:
                why = _FORBIDDEN_IDENTS[tok.name]
            elif tok.parts and tok.parts[-1] in _FORBIDDEN_SUFFIXES:
                why = _FORBIDDEN_SUFFIXES[tok.parts[-1]]
            elif tok.text == "open" and nxt is not None and nxt.text == "private":
                what, why = "open private", "exposes private declarations"
            elif tok.text == "set_option" and nxt is not None and nxt.name.startswith("debug"):
                what, why = f"set_option {nxt.name}", "debug options can skip kernel checks"
            elif tok.text == "native" and (
                (prev is not None and prev.text == "+" and prev.end == tok.start)
                or (nxt is not None and nxt.text == ":=")
            ):
                what, why = "decide +native", "trusts compiled code instead of the kernel"
        elif tok.kind is Kind.NAME_LIT and tok.parts and tok.parts[-1] in _FORBIDDEN_SUFFIXES:
            why = _FORBIDDEN_SUFFIXES[tok.parts[-1]]
        elif tok.kind is Kind.HASH_CMD and tok.text in _FORBIDDEN_HASH and not (
                # `#print axioms c` prints Lean's real answer: harmless, and a common habit.
                tok.text == "#print" and nxt is not None and nxt.text == "axioms"):
            why = _FORBIDDEN_HASH[tok.text]
        if why is not None:
            return f"`{what}` at line {tok.line}: {why}"
    return None


def _scope_problem(toks: list[Token], decl: int, header_opens: set[str]) -> str | None:
    """Whether the theorem at `decl` is elaborated in a different scope than the header's:
    inside a namespace (another name, other name resolution) or under extra `open`s."""
    scopes: list[tuple[str, str, set[str]]] = []   # (namespace|section, name, opened)
    extra: set[str] = set()
    i = 0
    while i < decl:
        tok = toks[i]
        if tok.kind is Kind.IDENT and tok.text in ("namespace", "section"):
            named = i + 1 < decl and toks[i + 1].line == tok.line and toks[i + 1].kind is Kind.IDENT
            scopes.append((tok.text, toks[i + 1].name if named else "", set()))
        elif tok.kind is Kind.IDENT and tok.text == "end" and scopes:
            scopes.pop()
        elif tok.kind is Kind.IDENT and tok.text == "open" and tok.column == 0:
            j = _command_tokens(toks, i)
            names = {t.name for t in toks[i + 1:j] if t.kind is Kind.IDENT}
            if j < len(toks) and toks[j].text == "in":
                # `open X in <command>`: in effect only if that command is the theorem.
                if not any(t.kind is Kind.IDENT and t.text in _COMMAND_KEYWORDS
                           for t in toks[j + 1:decl]):
                    extra |= names - header_opens
            elif scopes:
                scopes[-1][2].update(names)
            else:
                extra |= names - header_opens
            i = j
            continue
        i += 1
    namespaces = [name for kind, name, _ in scopes if kind == "namespace"]
    if namespaces:
        return (f"the theorem is declared inside `namespace {'.'.join(namespaces)}`, so its name "
                "and the meaning of the names in its statement change")
    extra |= {n for _, _, opened in scopes for n in opened} - header_opens
    if extra:
        return (f"the theorem is stated under `open {' '.join(sorted(extra))}`, which the problem "
                "header does not open: names in the statement could resolve differently")
    return None


def forbidden_construct(code: str) -> str | None:
    """Rule 5 alone, for snippets such as single tactics: the first forbidden construct (an
    `import` counts, and so does an unterminated comment or string), or None."""
    all_toks = tokenize(code, comments=True)
    open_tok = first_unterminated(all_toks)
    if open_tok is not None:
        return f"unterminated {open_tok.kind.value} starting at line {open_tok.line}"
    toks = [t for t in all_toks if t.kind is not Kind.COMMENT]
    imported = next((t for t in toks if t.kind is Kind.IDENT and t.text == "import"), None)
    if imported is not None:
        return f"`import` at line {imported.line}: imports belong to the header only"
    return _forbidden(toks)


def statement_text(name: str, formal_statement: str) -> str:
    """The declaration of `name` up to its proof: `theorem name binders : type` (source text,
    without the `:=`). Raises ValueError when `formal_statement` does not declare `name`."""
    toks = tokenize(formal_statement)
    decl = _find_theorem(toks, name)
    if decl is None:
        raise ValueError(f"the formal statement does not declare theorem {name!r}")
    end = _statement_end(toks, decl + 1)
    last = toks[end - 1]
    return formal_statement[toks[decl].start:last.end]


def file_problem(code: str) -> tuple[str, str, str] | None:
    """A whole Lean file read as its own problem: (header, theorem name, formal statement).

    The header is the file's leading `import`/`set_option`/`open` commands; the theorem is its
    first `theorem`/`lemma`. None when the file declares no theorem.
    """
    toks = tokenize(code)
    pre = _preamble(toks)
    decls = [i for i, t in enumerate(toks[:-1])
             if t.kind is Kind.IDENT and t.text in _DECL_KEYWORDS and toks[i + 1].kind is Kind.IDENT]
    # The first theorem; a file of helper defs and no theorem is read as its first def.
    decl = next((i for i in decls if toks[i].text in _THEOREM_KEYWORDS), decls[0] if decls else None)
    if decl is None:
        return None
    name = toks[decl + 1].name
    header = code[:toks[pre.end_index - 1].end] + "\n\n" if pre.end_index else ""
    return header, name, statement_text(name, code) + " := by\n"


def _has_code(toks: list[Token]) -> bool:
    """Lean code, as opposed to prose or an empty answer: some declaration or command."""
    return any(t.kind is Kind.IDENT and t.text in _DECL_KEYWORDS + ("example", "import")
               for t in toks)


def precheck(name: str, header: str, formal_statement: str, candidate: str, *,
             checked_by: str) -> Rejected | NotChecked | None:
    """Static acceptance rules (REPL_PROTOCOL.md section 3, rules 1, 2 and 5), no Lean.

    `candidate` is a whole file (header + theorem + proof) or the theorem and its proof
    alone. Returns None when the candidate should be sent to Lean.
    """
    t0 = time.perf_counter()

    def rejected(reason: RejectReason, detail: str) -> Rejected:
        return Rejected(checked_by=checked_by, time_s=time.perf_counter() - t0, reason=reason,
                        detail=detail)

    all_toks = tokenize(candidate, comments=True)
    toks = [t for t in all_toks if t.kind is not Kind.COMMENT]
    if not _has_code(toks):
        return NotChecked(checked_by=checked_by, time_s=time.perf_counter() - t0, cause="no_code",
                          detail="no Lean declaration found (the candidate is empty, comments "
                          "or prose)")
    open_tok = first_unterminated(all_toks)
    if open_tok is not None:
        return rejected(RejectReason.FORBIDDEN,
                        f"unterminated {open_tok.kind.value} starting at line {open_tok.line}: it "
                        "would swallow the rest of the file")

    header_toks = tokenize(header)
    header_pre = _preamble(header_toks)
    pre = _preamble(toks)
    extra_imports = [m for m in pre.imports if m not in header_pre.imports]
    if extra_imports:
        return rejected(RejectReason.HEADER_MISMATCH,
                        f"the candidate imports {', '.join(extra_imports)}, which the problem "
                        f"header does not (header imports: {', '.join(header_pre.imports) or 'none'})")
    for tok in toks[pre.end_index:]:
        if tok.kind is Kind.IDENT and tok.text == "import":
            return rejected(RejectReason.FORBIDDEN,
                            f"`import` at line {tok.line}: imports belong to the header only")

    found = _forbidden(toks)
    if found is not None:
        return rejected(RejectReason.FORBIDDEN, found)

    decl = _find_theorem(toks, name)
    if decl is None:
        declared = [toks[i + 1].name for i, t in enumerate(toks[:-1])
                    if t.kind is Kind.IDENT and t.text in _DECL_KEYWORDS]
        return rejected(RejectReason.THEOREM_MISSING,
                        f"no `theorem {name}` in the candidate"
                        + (f" (it declares: {', '.join(declared)})" if declared else ""))

    stmt_toks = tokenize(formal_statement)
    p_decl = _find_theorem(stmt_toks, name)
    if p_decl is None:
        raise ValueError(f"the problem's formal_statement does not declare theorem {name!r}")
    problem_stmt = stmt_toks[p_decl + 1:_statement_end(stmt_toks, p_decl + 1)]
    cand_stmt = toks[decl + 1:_statement_end(toks, decl + 1)]
    if [_key(t) for t in problem_stmt] != [_key(t) for t in cand_stmt]:
        return rejected(RejectReason.STATEMENT_MISMATCH,
                        "the theorem's statement differs from the problem's:\n"
                        + _statement_diff(problem_stmt, cand_stmt))

    header_opens = {n for _, _, names in header_pre.commands if names[0] == "open"
                    for n in names[1:]}
    scope = _scope_problem(toks, decl, header_opens)
    if scope is not None:
        return rejected(RejectReason.STATEMENT_MISMATCH, scope)
    return None


def lean_command(name: str, header: str, candidate: str) -> str:
    """The text to run against the header's environment.

    The candidate's own header lines (its `import`s, and `set_option`/`open` commands the
    problem header already has) are blanked out, keeping their newlines so that Lean's line
    numbers are the candidate file's. Then `#print axioms <name>` for rule 4.
    """
    header_cmds = {texts for _, _, texts in _preamble(tokenize(header)).commands}
    text = candidate
    for start, end, texts in reversed(_preamble(tokenize(candidate)).commands):
        if texts[0] == "import" or texts in header_cmds:
            text = text[:start] + "\n" * text.count("\n", start, end) + text[end:]
    return text.rstrip() + f"\n\n#print axioms {name}\n"


_AXIOMS_RE = re.compile(r"^'(?P<name>.+?)' depends on axioms: \[(?P<axioms>.*)\]\s*$", re.DOTALL)
_NO_AXIOMS_RE = re.compile(r"^'(?P<name>.+?)' does not depend on any axioms\s*$")
_SORRY_WARNING = "declaration uses 'sorry'"


def _plain(lean_name: str) -> str:
    return lean_name.replace("«", "").replace("»", "")


def _axioms_reported(name: str, messages: Sequence[LeanMessage]) -> list[tuple[str, ...]]:
    """Every `#print axioms <name>` answer among the messages."""
    out = []
    for m in messages:
        if m.severity != "info":
            continue
        text = m.text.strip()
        if (hit := _AXIOMS_RE.match(text)) and _plain(hit["name"]) == _plain(name):
            out.append(tuple(a.strip() for a in hit["axioms"].split(",") if a.strip()))
        elif (hit := _NO_AXIOMS_RE.match(text)) and _plain(hit["name"]) == _plain(name):
            out.append(())
    return out


def judge(name: str, response: CommandResponse | ErrorReply, *, allowed_axioms: Sequence[str],
          checked_by: str, time_s: float) -> Accepted | Rejected:
    """Lean's reply to `lean_command(...)` -> the verdict (REPL_PROTOCOL.md section 3, rules 3-4)."""
    def rejected(reason: RejectReason, detail: str, messages: tuple[LeanMessage, ...] = ()) -> Rejected:
        return Rejected(checked_by=checked_by, time_s=time_s, reason=reason, detail=detail,
                        messages=messages)

    if isinstance(response, ErrorReply):
        return rejected(RejectReason.LEAN_ERROR, response.message)
    msgs = response.messages
    if response.errors:
        return rejected(RejectReason.LEAN_ERROR, str(response.errors[0]), msgs)
    if response.sorries:
        s = response.sorries[0]
        return rejected(RejectReason.SORRY, f"Lean reports a sorry at {s.line}:{s.column}", msgs)
    warning = next((m for m in msgs if _SORRY_WARNING in m.text), None)
    if warning is not None:
        return rejected(RejectReason.SORRY, str(warning), msgs)
    reported = _axioms_reported(name, msgs)
    if not reported:
        return rejected(RejectReason.AXIOMS,
                        f"no `#print axioms {name}` answer in Lean's reply: the command did not run "
                        "to its end", msgs)
    if len(set(reported)) > 1:
        return rejected(RejectReason.AXIOMS,
                        f"conflicting `#print axioms {name}` answers: {reported}", msgs)
    axioms = reported[-1]
    bad = [a for a in axioms if a not in allowed_axioms]
    if "sorryAx" in bad:
        return rejected(RejectReason.SORRY, f"{name} depends on sorryAx", msgs)
    if bad:
        return rejected(RejectReason.AXIOMS,
                        f"{name} depends on axioms beyond {', '.join(allowed_axioms)}: "
                        f"{', '.join(bad)}", msgs)
    kept = tuple(m for m in msgs if not (_AXIOMS_RE.match(m.text.strip())
                                         or _NO_AXIOMS_RE.match(m.text.strip())))
    return Accepted(checked_by=checked_by, time_s=time_s, axioms=axioms, messages=kept)
