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

from prover.errors import UserError
from prover.paths import DATA_DIR_ENV, SUITES_FILE, data_dirs

HUB_PREFIX = "hf:"

_REQUIRED = ("name", "formal_statement", "header")
_OPTIONAL = ("split", "informal_prefix", "goal", "source")
# A declaration keyword at the start of a line, then the name (Lean identifiers may be dotted
# or «quoted»).
_DECL_RE = re.compile(r"^(?:@\[[^\]]*\]\s*)?(?:private\s+|protected\s+)?(?:noncomputable\s+)?(theorem|lemma|def)\s+(«[^»]+»|[^\s:({\[]+)",
                      re.MULTILINE)


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
    declared = [m.group(2) for m in _DECL_RE.finditer(values["formal_statement"])]
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


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _strip_trailing_comments(code: str) -> str:
    """Drop trailing whitespace and `--` line comments after the last code token."""
    lines = code.rstrip().splitlines()
    while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("--")):
        lines.pop()
    return "\n".join(lines).rstrip()


def load_lean(path: Path, *, split: str | None = None) -> list[Problem]:
    """A .lean file of theorems (or lemmas) each proved by `sorry`.

    The header is the text before the first declaration (imports, options, `open`s), minus a
    doc comment attached to that declaration; each declaration's doc comment becomes its
    `informal_prefix`, and its statement is normalised to end in `:= by` followed by a newline.
    """
    text = _read_text(path)
    label = path.name
    matches = list(_DECL_RE.finditer(text))
    if not matches:
        raise ProblemSetError(f"{label}: no `theorem`, `lemma` or `def` declarations found")
    problems, wheres = [], []
    header_end = matches[0].start()
    for i, match in enumerate(matches):
        start = match.start()
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        where = f"{label}:{_line_of(text, start)}"
        block = text[start:end]
        # A doc comment right before the *next* declaration belongs to it, not to this one.
        next_doc = re.search(r"/--(?:(?!/--).)*?-/\s*$", block, re.DOTALL)
        if next_doc and i + 1 < len(matches):
            block = block[: next_doc.start()]
        decl = _strip_trailing_comments(block)
        body = re.sub(r"(:=\s*(?:by\s+)?)sorry$", r"\1", decl)
        if body == decl:
            raise ProblemSetError(
                f"{where}: theorem {match.group(2)!r} must end in `:= by sorry` or `:= sorry` "
                "(a problem file states theorems; it does not prove them)"
            )
        statement = re.sub(r":=\s*(?:by\s*)?$", "", body.rstrip()).rstrip() + " := by\n"
        prefix = ""
        preceding = text[: start] if i == 0 else text[matches[i - 1].end():start]
        doc = re.search(r"(/--(?:(?!/--).)*?-/)\s*$", preceding, re.DOTALL)
        if doc:
            prefix = doc.group(1) + "\n"
            if i == 0:
                header_end = doc.start()
        row = {"name": match.group(2), "formal_statement": statement, "informal_prefix": prefix,
               "header": ""}
        problems.append(row)
        wheres.append(where)
    header = text[:header_end].rstrip() + "\n\n"
    if not header.strip():
        raise ProblemSetError(f"{label}: no header before the first theorem (expected e.g. `import Mathlib`)")
    return _assign_ids([
        _problem_from_row({**row, "header": header}, where=where, default_split=split or path.stem,
                          default_source=path.stem)
        for row, where in zip(problems, wheres, strict=True)
    ])


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
