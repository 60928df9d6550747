"""Corpus rows -> (prompt, completion): prompts are prove/bench's, and the project's candidate
extraction of each completion gives back the proof the file holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prover.checking import load_proofs, match_problems
from prover.errors import UserError
from prover.problems import load_problems
from prover.prompts import build_prompt, candidate_from_output, get_template
from prover.rl.corpus import load_corpus, proof_candidate
from prover.search.best_first import TACTIC_TEMPLATES


class _ChatTokenizer:
    """A chat template that writes each message as 'role: content' (enough to render chat prompts)."""

    chat_template = "role: content"

    def apply_chat_template(self, conversation, tokenize=False, add_generation_prompt=True):  # noqa: ANN001, ANN201
        return "".join(f"{m['role']}: {m['content']}\n" for m in conversation) + "assistant: "


@pytest.mark.parametrize("template", ["deepseek-prover-v1.5", "deepseek-prover-v2", "kimina-prover"])
def test_every_shared_proof_comes_back_from_its_completion(shared_data: Path, template: str) -> None:
    proofs = shared_data / "minif2f_valid_proofs.jsonl"
    entries = load_proofs(proofs)
    problems = match_problems(entries, load_problems("minif2f-valid"))
    tokenizer = _ChatTokenizer()
    examples, skipped = load_corpus(proofs, "lean-files", template=template, tokenizer=tokenizer)
    assert not skipped and len(examples) == len(entries) == 221, (len(examples), skipped[:3])
    verbatim = 0
    for example, entry, problem in zip(examples, entries, problems, strict=True):
        assert example.prompt == build_prompt(problem, template, tokenizer), example.origin
        candidate = candidate_from_output(problem, template, example.completion)
        assert candidate == proof_candidate(problem, entry.code), (example.origin, candidate[:300])
        if problem.formal_statement in entry.code:   # the file states the problem as the set does
            verbatim += 1
            from_file = entry.code[entry.code.index(problem.formal_statement):].rstrip() + "\n"
            if get_template(template).style == "completion":
                assert candidate == from_file, (example.origin, candidate[:200], from_file[:200])
            else:   # the chat block also carries the theorem's doc comment's absence: same code
                assert candidate.endswith(from_file), (example.origin, candidate[-200:], from_file[-200:])
    assert verbatim >= 200, f"only {verbatim} of 221 files state their problem verbatim"


def test_completion_ends_with_the_closing_fence_for_completion_templates(shared_data: Path) -> None:
    examples, _ = load_corpus(shared_data / "minif2f_valid_proofs.jsonl", "lean-files", limit=3)
    for e in examples:
        assert e.prompt.startswith("Complete the following Lean 4 code:\n\n```lean4\n"), e.prompt[:80]
        assert e.completion.endswith("\n```"), e.completion[-40:]


def test_helper_lemmas_are_kept_for_chat_templates_and_refused_by_completion_ones(tmp_path: Path,
                                                                                   shared_data: Path) -> None:
    problem = load_problems("minif2f-valid")[0]
    head = problem.formal_statement[:problem.formal_statement.rindex(":=")]
    code = problem.header + "lemma helper : True := trivial\n\n" + head + ":= by\n  exact helper.elim\n"
    corpus = tmp_path / "proofs.jsonl"
    corpus.write_text(json.dumps({"name": problem.name, "code": code}) + "\n")
    with pytest.raises(UserError, match="no training examples .*cannot express"):
        load_corpus(corpus, "lean-files")
    examples, skipped = load_corpus(corpus, "lean-files", template="deepseek-prover-v2", tokenizer=_ChatTokenizer())
    candidate = candidate_from_output(problem, "deepseek-prover-v2", examples[0].completion)
    assert candidate.startswith("lemma helper : True := trivial\n\n") and candidate.endswith("exact helper.elim\n"), candidate


def test_prompt_completion_and_tactic_rows(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "P", "completion": "C"}) + "\n")
    examples, _ = load_corpus(pairs, "prompt-completion")
    assert [(e.prompt, e.completion, e.origin) for e in examples] == [("P", "C", "pairs.jsonl:1")], examples
    tactics = tmp_path / "tactics.jsonl"
    tactics.write_text(json.dumps({"goals": ["x : ℕ\n⊢ x = x", "⊢ True"], "tactic": "rfl"}) + "\n"
                       + json.dumps({"state": "⊢ 1 = 1", "tactic": "norm_num"}) + "\n")
    for name, template in TACTIC_TEMPLATES.items():
        examples, _ = load_corpus(tactics, "tactic", tactic_template=name)
        assert examples[0].prompt == template.prompt(["x : ℕ\n⊢ x = x", "⊢ True"]), examples[0].prompt
        assert examples[1].completion == "norm_num" + (template.stop[0] if template.stop else ""), examples[1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"state": "⊢ True"}) + "\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1: missing field 'tactic'"):
        load_corpus(bad, "tactic")
