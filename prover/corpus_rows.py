"""SFT corpus rows: the one description of the format that `prover distill` and `prover data
curate` write and `prover sft` reads, and the readings of a proof both of them need (its text
normalised for deduplication, its length, the tactics it uses), all through `lean_env`'s lexer.

A corpus is jsonl, one Lean-accepted proof a line. Every row is also a row of `prover lean
check-set`'s proof files (`prover.checking.load_proofs`: `name` and `code`), so a corpus can be
checked again as it is, and it joins a problem set through `prover.checking.match_problems`:

    {"name": "mathd_algebra_10",        # the problem's id (or an unambiguous name) in its set
     "code": "import Mathlib\\n...theorem mathd_algebra_10 ... := by\\n  norm_num\\n",
                                          # the whole Lean file: header, theorem, proof
     "source": "distill: DeepSeek-Prover-V2-7B on minif2f-valid",   # where the proof came from
     "provenance": {                      # what made it and who accepted it (distill writes all)
        "model": {"name": "owner/name", "path": ..., "weights_sha256": ...,
                  "revision": ...},         # the hub commit of a cached snapshot, else null
        "template": {"name": "deepseek-prover-v1.5", "sha256": ...},
        "method": "whole",
        "sampling": {...},                # policy.sampling as the run used it
        "seed": 1234,                     # the sampling seed (also in "sampling")
        "sample": 3,                      # which of the problem's samples this is
        "duplicates": 2,                  # accepted samples of the problem with this normalised text
        "dataset": {"name": "minif2f-valid", "sha256": ...},
        "verdict": {"outcome": "accepted", "axioms": [...], "layers": ["static", "repl"],
                    "checked_by": "...", "backend": "lean" | "stand-in"}},
     "curation": {"origin": "corpus.jsonl:12", "draw": 4, "domain": "minif2f-valid/mathd",
                  "pass_rate": 0.25, "proof_tokens": 212, "tactics": ["have", "nlinarith"],
                  "verdict": {...}}}      # curate adds why it chose the row (prover.curate), and
                                          # the verdict of its own check with --verify

Rows of other origins (a released prover's proofs) may carry only `name`, `code` and `source`.
`provenance.verdict.backend` is "stand-in" whenever the stand-in REPL (a test double) judged
the proof: such a row is never a Lean-accepted proof, and every report says so.

Normalised text (`normalized`): Lean's tokens without comments, one space wherever the source
had whitespace or a comment. Two proofs that differ only in comments, spacing or layout are
one proof here (layout can matter to Lean's tactic blocks; both versions were accepted, so
keeping one loses nothing the corpus needs).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from lean_env.lexer import Kind, Token, code_tokens, render, tokenize

STANDIN_BACKEND = "stand-in"
LEAN_BACKEND = "lean"

_OPEN = {"(", "[", "{", "⟨", "⦃"}
_CLOSE = {")", "]", "}", "⟩", "⦄"}
# A tactic follows these tokens directly (`by simp`, `a <;> simp`, `· simp`, `simp; ring`).
_TACTIC_AFTER = {"by", ";", "<;>", "·"}
# Declarations end a tactic block; words that begin a line of a tactic block but are no tactic.
_DECLARATIONS = {"theorem", "lemma", "def", "example", "abbrev", "instance", "noncomputable", "private"}
_NOT_TACTICS = _DECLARATIONS | {"fun", "at", "with", "then", "else", "from", "using", "do", "in", "_"}
# A word followed by one of these is a term (a `calc` step, a continued formula), not a tactic.
_TERM_FOLLOWERS = {"=", "≠", "≤", "<", "≥", ">", "+", "-", "*", "/", "^", "∣", "↔", "→", "∧", "∨", ",",
                   ")", "]", "}", "⟩", "%", "•", "∘", "∈", "∉", "⊆", ":"}


@lru_cache(maxsize=4096)
def _code_tokens(code: str) -> tuple[Token, ...]:
    """Lean's code tokens of `code`, lexed once: deduplication, length and tactic names of one
    proof all read them (a long proof takes milliseconds to lex)."""
    return tuple(code_tokens(tokenize(code)))


def normalized(code: str) -> str:
    """`code` as Lean reads it, on one line: comments dropped, whitespace collapsed to one space."""
    return render(list(_code_tokens(code)))


def _proof_tokens(code: str) -> Sequence[Token]:
    """The code tokens after the file's first `:=` (the first declaration's statement ends
    there): the proof, with any helper lemma after it; header and statement excluded."""
    tokens = _code_tokens(code)
    start = next((i + 1 for i, t in enumerate(tokens) if t.text == ":=" and t.kind == Kind.SYMBOL), len(tokens))
    return tokens[start:]


def proof_length(code: str) -> int:
    """Lean tokens of the proof (after the first `:=`), comments excluded: a difficulty signal
    in the spirit of s1's reasoning-trace length."""
    return len(_proof_tokens(code))


def tactic_names(code: str) -> list[str]:
    """Distinct tactic names of a proof, in order of first use.

    A heuristic over Lean's tokens, not an elaboration: inside a `by` block, the first word of
    a line outside any bracket, and the word right after `by`, `;`, `<;>` or `·`, or after
    `=>` on a line that begins with `|`, `case` or `next`, is a tactic, when it is a plain
    lower-case identifier (`nlinarith`, `norm_num`, `exact?`) not followed by an operator
    (a `calc` step such as `_ = c` or `a ≤ b` is a term)."""
    tokens = _proof_tokens(code)
    names: dict[str, None] = {}
    depth, in_tactics, line_head = 0, False, ""
    for i, tok in enumerate(tokens):
        previous = tokens[i - 1] if i else None
        starts_line = previous is None or previous.line != tok.line
        if starts_line:
            line_head = tok.text
        after_arrow = previous is not None and previous.text == "=>" and line_head in ("|", "case", "next")
        position = (starts_line and depth == 0 and in_tactics) or after_arrow or (
            previous is not None and previous.text in _TACTIC_AFTER)
        if tok.text in _OPEN:
            depth += 1
        elif tok.text in _CLOSE:
            depth = max(0, depth - 1)
        elif tok.text == "by":
            in_tactics = True
        elif starts_line and depth == 0 and tok.text in _DECLARATIONS:
            in_tactics = False
        if not position or tok.kind != Kind.IDENT or len(tok.parts) != 1 or tok.text in _NOT_TACTICS:
            continue
        if not ("a" <= tok.text[0] <= "z"):
            continue
        following = tokens[i + 1].text if i + 1 < len(tokens) else ""
        if following in _TERM_FOLLOWERS:
            continue
        names.setdefault(tok.text, None)
    return list(names)


def verdict_provenance(verdict: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a verdict (`Verdict.to_json()`) a corpus row keeps: outcome, axioms, layers,
    who checked it, and whether that was Lean or the stand-in (a test double)."""
    checked_by = str(verdict.get("checked_by", ""))
    standin = "stand-in" in checked_by or "test double" in checked_by
    return {"outcome": verdict.get("outcome"), "axioms": list(verdict.get("axioms") or []),
            "layers": list(verdict.get("layers") or []), "checked_by": checked_by,
            "backend": STANDIN_BACKEND if standin else LEAN_BACKEND}


def recorded_verdict(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """The verdict a corpus row carries: `provenance.verdict` (who made it accepted it), else
    `curation.verdict` (curate checked it again); None when it has neither."""
    for part in ("provenance", "curation"):
        section = row.get(part)
        verdict = section.get("verdict") if isinstance(section, Mapping) else None
        if isinstance(verdict, Mapping):
            return dict(verdict)
    return None


def dedupe(codes: Sequence[str]) -> tuple[list[int], dict[int, int]]:
    """Indices of the first of each normalised text, in order, and for every index the first
    index it duplicates (itself for a kept one)."""
    first: dict[str, int] = {}
    of: dict[int, int] = {}
    for i, code in enumerate(codes):
        of[i] = first.setdefault(normalized(code), i)
    return sorted(set(first.values())), of


def write_corpus(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write rows as jsonl in one rename (a reader or a crash never sees half a corpus)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
