"""SFT corpora: rows of a jsonl file -> (prompt, completion) pairs, prompts built exactly as
`prove`, `bench` and best-first search build them, so what is trained is what is sampled.

Formats (`sft.format`):
  lean-files         {name, code}: a complete Lean file proving a problem of `sft.problems`
                     (the shape of ../shared/data/minif2f_valid_proofs.jsonl, read by
                     prover.checking.load_proofs and matched by match_problems). The prompt is the
                     template's prompt of the *problem* (prover.prompts.build_prompt); the
                     completion is the proof written so that the template's candidate extraction
                     (prover.prompts.candidate_from_output) of it gives back the file's proof:
                     completion templates get the text after the problem's statement and the
                     closing fence; chat templates get the theorem (and any helper lemmas) in a
                     ```lean4 block.
  prompt-completion  {prompt, completion}: used as they are.
  tactic             {state (text) or goals (list of goal texts), tactic}: the state -> tactic
                     prompt of best-first search (prover.search.best_first.TACTIC_TEMPLATES); the
                     completion is the tactic (and the template's stop string, where it has one).
Malformed rows raise one-line errors naming file and line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prover.checking import ProofEntry, load_proofs, match_problems
from prover.errors import UserError
from prover.problems import Problem, ProblemSetError, load_problems, read_jsonl_rows
from prover.prompts import (
    CODE_FENCE_START,
    FENCE,
    ChatTokenizer,
    PromptTemplate,
    _declaration,
    build_prompt,
    get_template,
    top_level_assign,
)


@dataclass(frozen=True)
class SFTExample:
    """One training pair; `origin` says where it came from ("proofs.jsonl:12")."""

    prompt: str
    completion: str
    origin: str


class CorpusError(UserError):
    """A corpus row cannot become a training example; the message names file and line."""


def proof_candidate(problem: Problem, code: str) -> str | None:
    """The proof of a Lean file as the verifier would check it for `problem`: the problem's
    statement head, `:=`, and the file's proof of the theorem, preceded by the file's helper
    declarations (lines before the theorem that are not header lines, not the theorem's doc
    comment). None when the file does not declare the problem's theorem."""
    found = _declaration(problem.name).search(code)
    if found is None:
        return None
    assign = top_level_assign(code, found.end())
    if assign is None:
        return None
    header = {line.strip() for line in problem.header.splitlines() if line.strip()}
    prelude = code[:found.start()]
    comment = prelude.rstrip().rfind("/--")   # the theorem's own doc comment: not a helper
    if comment >= 0 and prelude.rstrip().endswith("-/"):
        prelude = prelude[:comment]
    kept = "".join(line for line in prelude.splitlines(keepends=True)
                   if line.strip() not in header and not line.lstrip().startswith("import "))
    head = problem.formal_statement[:top_level_assign(problem.formal_statement) or 0].rstrip()
    return (kept.strip("\n") + "\n\n" if kept.strip() else "") + head + " :=" + code[assign + 2:].rstrip() + "\n"


def proof_completion(problem: Problem, candidate: str, template: PromptTemplate) -> str | None:
    """The completion that makes `candidate_from_output(problem, template, completion)` give
    `candidate`; None when the template cannot express it (a completion template continues the
    problem's statement, so helper lemmas before it, or a statement that differs, do not fit)."""
    if template.style == "completion":
        if not candidate.startswith(problem.formal_statement):
            return None
        return candidate[len(problem.formal_statement):].rstrip() + "\n" + FENCE
    return CODE_FENCE_START + candidate.rstrip() + "\n" + FENCE


def lean_file_examples(entries: Sequence[ProofEntry], problems: Sequence[Problem], template: PromptTemplate,
                       tokenizer: ChatTokenizer | None = None) -> tuple[list[SFTExample], list[str]]:
    """Examples of proof files matched to their problems; also the origins of files skipped
    (the theorem not found, or a proof the template cannot express), with the reason."""
    examples, skipped = [], []
    for entry, problem in zip(entries, match_problems(entries, problems), strict=True):
        candidate = proof_candidate(problem, entry.code)
        if candidate is None:
            skipped.append(f"{entry.origin}: no `theorem {problem.name}` with a `:=` in the file")
            continue
        completion = proof_completion(problem, candidate, template)
        if completion is None:
            skipped.append(f"{entry.origin}: helper declarations or a restated statement, which the "
                           f"{template.name} template (it continues the problem's statement) cannot express")
            continue
        examples.append(SFTExample(build_prompt(problem, template, tokenizer), completion, entry.origin))
    return examples, skipped


def _text_field(row: Any, key: str, where: str) -> str:
    value = row.get(key) if isinstance(row, dict) else None
    if not isinstance(value, str) or not value:
        raise CorpusError(f"{where}: {'missing field' if value is None else 'empty or non-string field'} '{key}'")
    return value


def prompt_completion_examples(path: Path) -> list[SFTExample]:
    return [SFTExample(_text_field(row, "prompt", where), _text_field(row, "completion", where), where)
            for where, row in read_jsonl_rows(path)]


def tactic_examples(path: Path, template_name: str) -> list[SFTExample]:
    from prover.search.best_first import TACTIC_TEMPLATES

    if template_name not in TACTIC_TEMPLATES:
        raise CorpusError(f"sft.tactic_template: unknown {template_name!r} (known: {', '.join(TACTIC_TEMPLATES)})")
    template = TACTIC_TEMPLATES[template_name]
    examples = []
    for where, row in read_jsonl_rows(path):
        if isinstance(row, dict) and isinstance(row.get("goals"), list):
            goals = row["goals"]
            if not all(isinstance(g, str) for g in goals):
                raise CorpusError(f"{where}: 'goals' must be a list of strings")
        else:
            goals = [_text_field(row, "state", where)]
        tactic = _text_field(row, "tactic", where)
        stop = template.stop[0] if template.stop else ""
        examples.append(SFTExample(template.prompt(goals), tactic + stop, where))
    return examples


def load_corpus(corpus: Path, fmt: str, *, problems: str = "minif2f-valid", template: str = "deepseek-prover-v1.5",
                tactic_template: str = "bfs-prover", tokenizer: ChatTokenizer | None = None,
                limit: int | None = None) -> tuple[list[SFTExample], list[str]]:
    """The examples of a corpus file in format `fmt` (see the module doc), the first `limit`
    rows only if given, and the skipped rows with reasons."""
    if not corpus.is_file():
        raise CorpusError(f"{corpus}: corpus file not found")
    if fmt == "lean-files":
        entries = load_proofs(corpus)[:limit]
        try:
            problem_set = load_problems(problems)
        except ProblemSetError as exc:
            raise CorpusError(f"sft.problems: {exc}") from None
        examples, skipped = lean_file_examples(entries, problem_set, get_template(template), tokenizer)
    elif fmt == "prompt-completion":
        examples, skipped = prompt_completion_examples(corpus)[:limit], []
    elif fmt == "tactic":
        examples, skipped = tactic_examples(corpus, tactic_template)[:limit], []
    else:
        raise CorpusError(f"sft.format: unknown {fmt!r} (known: lean-files, prompt-completion, tactic)")
    if not examples:
        raise CorpusError(f"{corpus}: no training examples" + (f" ({skipped[0]})" if skipped else ""))
    return examples, skipped
