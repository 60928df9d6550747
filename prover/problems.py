"""Problem sets: the `Problem` value and its loaders.

Three sources, one validation:
  * DeepSeek-style jsonl (DeepSeek-Prover-V1.5's `datasets/minif2f.jsonl`): one JSON object a line
    with `name, split, header, formal_statement, informal_prefix, goal` (and optionally `source`);
  * `.lean` files stating theorems with `sorry` (the header is everything before the first one);
  * Hugging Face datasets (`hf:owner/name` or a suite's hub entry) with the same columns.

Named suites (`minif2f-valid`, ...) are defined in `data/suites.toml`: each names a file, its
sha256 (so a report can prove which copy it used) and optionally a hub dataset.

Every malformed input raises `ProblemSetError` (a `UserError`) with one line naming the file,
the line (or row) and the field: `minif2f.jsonl:4: missing field 'formal_statement'`.

Names are not unique in every published set (ProofNet reuses `exercise_3_3` across textbooks),
so duplicates are reported, not refused: each problem has a unique `id` (its name, or
`name#2`, `name#3`, ... for later repeats in file order) and `origin` says where it was read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from lean_env.commands import commands, statement_end
from lean_env.lexer import Kind, Token, code_tokens, tokenize
from prover.errors import UserError
from prover.paths import DATA_DIR_ENV, SUITES_FILE, data_dirs

HUB_PREFIX = "hf:"

_REQUIRED = ("name", "formal_statement", "header")
_OPTIONAL = ("split", "informal_prefix", "goal", "source")

class ProblemSetError(UserError):
    """A problem set could not be read: the message names the file, line and field."""


class Problem(BaseModel):
    """One theorem to prove. `formal_statement` is the Lean declaration up to its proof
    (e.g. ending in `:= by`), checked against `header` (imports, options, `open`s)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    split: str
    header: str
    formal_statement: str
    informal_prefix: str = ""
    goal: str = ""
    source: str = ""
    id: str = ""        # unique within its set: the name, or name#2, name#3 for repeats
    origin: str = ""    # where it was read: "minif2f.jsonl:4", "hf:owner/name[test]:17"

    def lean_prompt(self) -> str:
        """The file a whole-proof model continues: header, informal comment, statement."""
        return self.header + self.informal_prefix + self.formal_statement


@dataclass(frozen=True)
class Suite:
    """A named problem set from data/suites.toml."""

    name: str
    description: str
    file: str
    split: str | None
    sha256: str | None
    hub: str | None          # "owner/name" of a Hugging Face dataset with the same columns
    hub_split: str | None
    hub_revision: str | None


# ---------------------------------------------------------------------------------------------
# validation shared by every loader


def _problem_from_row(row: Any, *, where: str, default_split: str, default_source: str) -> Problem:
    """Validate one raw row (jsonl object or hub record); `where` is 'file:line' for messages."""
    if not isinstance(row, Mapping):
        raise ProblemSetError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for key in _REQUIRED:
        if key not in row or row[key] is None:
            raise ProblemSetError(f"{where}: missing field '{key}'")
    values: dict[str, str] = {}
    for key in _REQUIRED + _OPTIONAL:
        if key not in row or row[key] is None:
            continue
        value = row[key]
        if not isinstance(value, str):
            raise ProblemSetError(
                f"{where}: field '{key}' must be a string, got {type(value).__name__} {str(value)[:40]!r}"
            )
        values[key] = value
    name = values["name"].strip()
    if not name or any(ch.isspace() for ch in name):
        raise ProblemSetError(f"{where}: field 'name' must be a non-empty name without spaces, got {values['name']!r}")
    if not values["formal_statement"].strip():
        raise ProblemSetError(f"{where}: field 'formal_statement' is empty")
    declared = [cmd.decl_name.name for cmd in commands(code_tokens(tokenize(values["formal_statement"])))
                if cmd.decl_name is not None]
    if name not in declared:
        found = f"declares {declared[0]!r}" if declared else "declares no theorem, lemma or def"
        raise ProblemSetError(f"{where}: field 'formal_statement' {found}, expected theorem {name!r}")
    if re.search(r"^\s*import\s", values["formal_statement"], re.MULTILINE):
        raise ProblemSetError(f"{where}: field 'formal_statement' contains an import; imports belong in 'header'")
    split = values.get("split", default_split).strip()
    if not split:
        raise ProblemSetError(f"{where}: field 'split' is empty")
    return Problem(
        name=name,
        split=split,
        header=values["header"],
        formal_statement=values["formal_statement"],
        informal_prefix=values.get("informal_prefix", ""),
        goal=values.get("goal", ""),
        source=values.get("source", default_source),
        origin=where,
    )


def _assign_ids(problems: Sequence[Problem]) -> list[Problem]:
    seen: Counter[str] = Counter()
    out = []
    for problem in problems:
        seen[problem.name] += 1
        n = seen[problem.name]
        out.append(problem.model_copy(update={"id": problem.name if n == 1 else f"{problem.name}#{n}"}))
    return out


def duplicate_names(problems: Sequence[Problem]) -> dict[str, list[str]]:
    """Names declared more than once, with the origin of each occurrence."""
    origins: dict[str, list[str]] = {}
    for problem in problems:
        origins.setdefault(problem.name, []).append(problem.origin)
    return {name: where for name, where in origins.items() if len(where) > 1}


def _read_text(path: Path) -> str:
    if not path.exists():
        raise ProblemSetError(f"{path}: no such file")
    if path.is_dir():
        raise ProblemSetError(f"{path}: is a directory, expected a .jsonl or .lean file")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ProblemSetError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ProblemSetError(f"{path}: cannot read ({exc.strerror})") from None


# ---------------------------------------------------------------------------------------------
# loaders


def read_jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, parsed row) for every non-blank line; `where` is "file.jsonl:LINE" for messages."""
    text = _read_text(path)
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name}:{lineno}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProblemSetError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None


def load_jsonl(path: Path, *, source: str | None = None) -> list[Problem]:
    """DeepSeek-style jsonl; blank lines are skipped, every other line must be a problem."""
    problems = [
        _problem_from_row(row, where=where, default_split="default", default_source=source or path.stem)
        for where, row in read_jsonl_rows(path)
    ]
    if not problems:
        raise ProblemSetError(f"{path.name}: no problems in file")
    return _assign_ids(problems)


def _sorry_proof(tokens: Sequence[Token], start: int) -> bool:
    """Whether the declaration's proof, from `:=` at `start`, is just `sorry` (or `by sorry`)."""
    rest = [t.text for t in tokens[start:]]
    return rest in ([":=", "sorry"], [":=", "by", "sorry"])


def load_lean(path: Path, *, split: str | None = None) -> list[Problem]:
    """A .lean file of theorems (or lemmas) each proved by `sorry`, read as Lean would: through
    `lean_env`'s lexer and command splitter, so comments (a commented-out theorem), strings
    and doc comments are what Lean says they are.

    * Each top-level `theorem`/`lemma` (or data `def`) proved by `sorry` is a problem; its doc
      comment becomes its `informal_prefix`, its statement ends in `:= by` and a newline.
    * The header is everything before the first problem (imports, options, `open`s, helper
      definitions), without that problem's doc comment. Helper commands between problems
      (a `def` with a body, an `open`) join the header of the problems after them, as they
      are in scope there in Lean.
    * A theorem proved by something else is an error (a problem file states theorems), and so
      is a problem inside a `namespace` or `section` (its name would not be its own).
    """
    text = _read_text(path)
    label = path.name
    tokens = [t for t in tokenize(text, comments=True)
              if t.kind is not Kind.COMMENT and not t.in_string]
    problems: list[Problem] = []
    header_parts: list[str] = []
    scopes: list[str] = []
    rows: list[tuple[dict[str, str], str]] = []
    helpers: list[str] = []         # commands after the first problem that are context
    for cmd in commands(tokens):
        kw, decl = cmd.keyword, cmd.decl_name
        start = cmd.tokens[0].start
        is_problem = (kw in ("theorem", "lemma", "def") and decl is not None
                      and _sorry_proof(cmd.tokens, statement_end(cmd.tokens, cmd.head + 1)))
        if rows and not is_problem and kw not in ("theorem", "lemma"):
            helpers.append(text[start:cmd.tokens[-1].end])
        if kw in ("namespace", "section"):
            scopes.append(f"{kw} {cmd.tokens[cmd.head + 1].text}" if len(cmd.tokens) > cmd.head + 1 else kw)
        elif kw == "end" and scopes:
            scopes.pop()
        if kw not in ("theorem", "lemma", "def") or decl is None:
            continue
        where = f"{label}:{decl.line}"
        end = statement_end(cmd.tokens, cmd.head + 1)
        if not _sorry_proof(cmd.tokens, end):
            if kw == "def":
                continue            # a helper definition: context for what follows
            raise ProblemSetError(
                f"{where}: theorem {decl.text!r} must end in `:= by sorry` or `:= sorry` "
                "(a problem file states theorems; it does not prove them)")
        if scopes:
            raise ProblemSetError(f"{where}: theorem {decl.text!r} is inside `{scopes[-1]}`; state "
                                  "problems at top level (their names must be their own)")
        doc_start = start if not cmd.doc else None
        prefix = ""
        if cmd.doc:
            doc = next(t for t in cmd.tokens if t.kind is Kind.DOC_COMMENT)
            prefix = doc.text + "\n"
            doc_start = start
        if not rows:
            header_parts.append(text[:doc_start])
        else:
            header_parts.extend(h + "\n\n" for h in helpers)
            helpers.clear()
        keyword_start = cmd.tokens[cmd.head].start
        statement = text[keyword_start:cmd.tokens[end - 1].end] + " := by\n"
        rows.append(({"name": decl.name, "formal_statement": statement, "informal_prefix": prefix,
                      "header": "".join(header_parts).rstrip() + "\n\n"}, where))
    if not rows:
        raise ProblemSetError(f"{label}: no `theorem`, `lemma` or `def` declarations found")
    if not rows[0][0]["header"].strip():
        raise ProblemSetError(f"{label}: no header before the first theorem (expected e.g. `import Mathlib`)")
    problems = [_problem_from_row(row, where=where, default_split=split or path.stem,
                                  default_source=path.stem) for row, where in rows]
    return _assign_ids(problems)


def load_hub(dataset: str, *, split: str | None = None, revision: str | None = None,
             source: str | None = None) -> list[Problem]:
    """A Hugging Face dataset whose rows have the jsonl fields. `split` selects the dataset
    split when the dataset has several; rows without a `split` column get the split name."""
    try:
        import datasets  # optional extra `hub`; imported here so nothing loads at import time
    except ImportError:
        raise ProblemSetError(
            f"{HUB_PREFIX}{dataset}: loading from the Hugging Face hub needs the `datasets` package "
            "(pip install 'lean-prover[hub]')"
        ) from None
    try:
        loaded = datasets.load_dataset(dataset, revision=revision)
    except Exception as exc:  # the hub client raises many types; all mean "could not load"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ProblemSetError(f"{HUB_PREFIX}{dataset}: cannot load dataset ({first_line})") from None
    splits = [split] if split and split in loaded else list(loaded)
    problems = []
    for split_name in splits:
        for index, row in enumerate(loaded[split_name]):
            where = f"{HUB_PREFIX}{dataset}[{split_name}]:{index}"
            problems.append(_problem_from_row(row, where=where, default_split=split_name,
                                              default_source=source or dataset))
    if not problems:
        raise ProblemSetError(f"{HUB_PREFIX}{dataset}: no problems in dataset")
    return _assign_ids(problems)


# ---------------------------------------------------------------------------------------------
# suites


def load_suites(path: Path = SUITES_FILE) -> dict[str, Suite]:
    with path.open("rb") as fh:
        raw = tomllib.load(fh)
    suites = {}
    for name, entry in raw.items():
        suites[name] = Suite(
            name=name,
            description=entry["description"],
            file=entry["file"],
            split=entry.get("split"),
            sha256=entry.get("sha256"),
            hub=entry.get("hub"),
            hub_split=entry.get("hub_split"),
            hub_revision=entry.get("hub_revision"),
        )
    return suites


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class ResolvedSource:
    """Where a problem set came from, for reports: enough to reproduce the exact copy."""

    label: str            # what the user typed
    kind: str             # "file" | "hub"
    location: str         # file path or hub dataset id
    sha256: str | None    # of the file, when it is a file
    suite: Suite | None


def resolve_source(source: str) -> ResolvedSource:
    """Map a path, `hf:owner/name` or suite name to where it is read from."""
    if source.startswith(HUB_PREFIX):
        return ResolvedSource(source, "hub", source[len(HUB_PREFIX):], None, None)
    path = Path(source).expanduser()
    if path.suffix in (".jsonl", ".lean") or path.exists() or os.sep in source:
        return ResolvedSource(source, "file", str(path), sha256_of(path) if path.is_file() else None, None)
    suites = load_suites()
    if source not in suites:
        raise ProblemSetError(
            f"{source}: not a file and not a known suite (known: {', '.join(sorted(suites))}; "
            f"or give a path to a .jsonl/.lean file, or {HUB_PREFIX}owner/name)"
        )
    suite = suites[source]
    searched = data_dirs()
    for folder in searched:
        candidate = folder / suite.file
        if candidate.is_file():
            return ResolvedSource(source, "file", str(candidate), sha256_of(candidate), suite)
    if suite.hub:
        return ResolvedSource(source, "hub", suite.hub, None, suite)
    raise ProblemSetError(
        f"{source}: file {suite.file} not found in {', '.join(str(d) for d in searched)}; "
        f"put it in one of them or set {DATA_DIR_ENV}"
    )


def load_problems(
    source: str,
    *,
    split: str | None = None,
    names: Iterable[str] | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """Load a problem set from a path, `hf:owner/name` or suite name, then select.

    Selection happens in this order: the suite's own split, `split`, `names` (all must exist),
    then the first `limit` problems in file order.
    """
    resolved = resolve_source(source)
    suite = resolved.suite
    if resolved.kind == "hub":
        problems = load_hub(resolved.location, split=(suite.hub_split if suite else split),
                            revision=suite.hub_revision if suite else None,
                            source=suite.name if suite else None)
    else:
        path = Path(resolved.location)
        if path.suffix == ".lean":
            problems = load_lean(path)
        else:
            problems = load_jsonl(path)
        if suite and suite.sha256 and resolved.sha256 != suite.sha256:
            raise ProblemSetError(
                f"{source}: {path} has sha256 {resolved.sha256[:12] if resolved.sha256 else '?'}..., "
                f"but the suite pins {suite.sha256[:12]}...: a different copy would give numbers "
                "that do not compare; pass the file path instead to use it anyway"
            )
    return select(problems, split=suite.split if suite and suite.split else split, names=names,
                  limit=limit, label=source)


def select(problems: Sequence[Problem], *, split: str | None = None, names: Iterable[str] | None = None,
           limit: int | None = None, label: str = "problem set") -> list[Problem]:
    out = list(problems)
    if split is not None:
        available = sorted({p.split for p in out})
        out = [p for p in out if p.split == split]
        if not out:
            raise ProblemSetError(f"{label}: no problems in split {split!r} (splits: {', '.join(available)})")
    if names is not None:
        # A name selects every problem of that name; an id (name#2) selects exactly one.
        wanted = list(dict.fromkeys(names))
        known = {p.name for p in out} | {p.id for p in out}
        missing = [n for n in wanted if n not in known]
        if missing:
            raise ProblemSetError(f"{label}: unknown problem name(s): {', '.join(missing[:5])}"
                                  + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        chosen = set(wanted)
        out = [p for p in out if p.name in chosen or p.id in chosen]
    if limit is not None:
        if limit < 1:
            raise ProblemSetError(f"--limit must be at least 1, got {limit}")
        out = out[:limit]
    return out


def summarize(problems: Sequence[Problem]) -> dict[str, Any]:
    """Counts per split, per source and per header, for `prover data inspect`."""
    headers = Counter(p.header for p in problems)
    return {
        "problems": len(problems),
        "splits": dict(sorted(Counter(p.split for p in problems).items())),
        "sources": dict(sorted(Counter(p.source for p in problems).items())),
        "distinct_headers": len(headers),
        "with_informal_prefix": sum(1 for p in problems if p.informal_prefix.strip()),
        "duplicate_names": duplicate_names(problems),
    }
