"""Prompt templates against their published text, and candidates from messy model output."""

from __future__ import annotations

import pytest

from prover.problems import Problem
from prover.prompts import (
    TEMPLATES,
    assemble,
    build_prompt,
    candidate_from_cot,
    candidate_from_output,
    forced_answer_suffix,
    get_template,
    last_lean_block,
    top_level_assign,
)

HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 0\n\nopen BigOperators Real Nat Topology Rat\n\n"
PROBLEM = Problem(name="mathd_algebra_10", split="valid", header=HEADER,
                  informal_prefix="/-- What is the positive difference? Show that it is 10.-/\n",
                  formal_statement="theorem mathd_algebra_10 : abs ((120 : ℝ) / 100 * 30 - 130 / 100 * 20) = 10 := by\n",
                  id="mathd_algebra_10")
FILE = HEADER + PROBLEM.informal_prefix + PROBLEM.formal_statement

# The published texts, copied from the sources named next to each (pinned here on purpose: a
# change to a template must be a change to this file too).
# deepseek-ai/DeepSeek-Prover-V1.5 prover/utils.py `non_cot_prompt`
V1_5 = "Complete the following Lean 4 code:\n\n```lean4\n{header}{informal_prefix}{formal_statement}"
# deepseek-ai/DeepSeek-Prover-V2 README.md "5. Quick Start" (prompt = """...""".strip())
V2 = """
Complete the following Lean 4 code:

```lean4
{}
```

Before producing the Lean 4 code to formally prove the given theorem, provide a detailed proof plan outlining the main proof steps and strategies.
The plan should highlight key ideas, intermediate lemmas, and proof structures that will guide the construction of the final formal proof.
""".strip()
# Goedel-LM/Goedel-Prover-V2 README.md "6. Quick Start"
GOEDEL = """
Complete the following Lean 4 code:

```lean4
{}```

Before producing the Lean 4 code to formally prove the given theorem, provide a detailed proof plan outlining the main proof steps and strategies.
The plan should highlight key ideas, intermediate lemmas, and proof structures that will guide the construction of the final formal proof.
""".strip()
# MoonshotAI/Kimina-Prover-Preview kimina_prover_demo/error_fix.py
KIMINA_SYSTEM = "You are an expert programmer and mathematician who helps formalizing mathematical problems in Lean 4."
KIMINA_USER = "Think about and solve the following problems step by step in Lean 4." + "\n\n" + "{}"


class FakeChatTokenizer:
    chat_template = "{{ messages }}"

    def __init__(self) -> None:
        self.seen: list[object] = []

    def apply_chat_template(self, conversation: object, **kwargs: object) -> str:
        self.seen.append((conversation, kwargs))
        return "<chat>" + "|".join(f"{m['role']}:{m['content']}" for m in conversation) + "<assistant>"  # type: ignore[attr-defined]


def test_each_template_equals_its_published_text() -> None:
    with_sorry = (FILE.rstrip() + "\n  sorry").strip()   # the README's formal_statement: `:= by\n  sorry`, stripped
    assert build_prompt(PROBLEM, "deepseek-prover-v1.5") == V1_5.format(
        header=HEADER, informal_prefix=PROBLEM.informal_prefix, formal_statement=PROBLEM.formal_statement)
    expected = {
        "deepseek-prover-v2": [{"role": "user", "content": V2.format(with_sorry)}],
        "goedel-prover-v2": [{"role": "user", "content": GOEDEL.format(with_sorry)}],
        "kimina-prover": [{"role": "system", "content": KIMINA_SYSTEM},
                          {"role": "user", "content": KIMINA_USER.format(FILE.rstrip() + " sorry")}],
    }
    for name, messages in expected.items():
        assert TEMPLATES[name].messages(PROBLEM) == messages, (name, TEMPLATES[name].messages(PROBLEM))
    assert set(TEMPLATES) == {"deepseek-prover-v1.5", "plain", *expected}, sorted(TEMPLATES)
    assert all(t.source for t in TEMPLATES.values())


def test_published_sampling_defaults() -> None:
    observed = {name: dict(t.sampling) for name, t in TEMPLATES.items()}
    assert observed == {
        "deepseek-prover-v1.5": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 2048},   # configs/sampling.py
        "plain": {},
        "deepseek-prover-v2": {"max_tokens": 8192},        # README: max_new_tokens=8192, nothing else
        "goedel-prover-v2": {"max_tokens": 8192},          # README; temperature never published
        "kimina-prover": {"temperature": 0.8, "max_tokens": 16000},   # error_fix.py
    }, observed
    assert dict(TEMPLATES["kimina-prover"].not_applied) == {"presence_penalty": 0.2}


def test_chat_templates_go_through_the_models_chat_template() -> None:
    tokenizer = FakeChatTokenizer()
    prompt = build_prompt(PROBLEM, "kimina-prover", tokenizer)
    assert prompt.startswith("<chat>system:You are an expert") and prompt.endswith("<assistant>"), prompt
    (_, kwargs), = tokenizer.seen
    assert kwargs == {"tokenize": False, "add_generation_prompt": True}, kwargs
    # a completion template never does; a tokenizer without a chat template gets the turns joined
    assert build_prompt(PROBLEM, "deepseek-prover-v1.5", tokenizer).startswith("Complete the following")
    plain = build_prompt(PROBLEM, "kimina-prover", None)
    assert plain == KIMINA_SYSTEM + "\n\n" + KIMINA_USER.format(FILE.rstrip() + " sorry") + "\n\n", plain
    with pytest.raises(ValueError, match="unknown prompt template 'chat' \\(known: deepseek-prover-v1.5"):
        get_template("chat")


STATEMENT = PROBLEM.formal_statement.rstrip()   # ends in ":= by"


@pytest.mark.parametrize(("output", "expected"), [
    # several blocks: the last complete one (the CoT's sketch with sorry is ignored)
    ("Plan:\n```lean4\ntheorem mathd_algebra_10 : False := by\n  sorry\n```\nNow the proof.\n"
     "```lean4\ntheorem mathd_algebra_10 : abs ((120 : ℝ) / 100 * 30 - 130 / 100 * 20) = 10 := by\n  norm_num [abs_of_nonneg]\n```",
     STATEMENT + "\n  norm_num [abs_of_nonneg]\n"),
    # an unclosed final fence is not complete: the earlier block counts
    ("```lean4\n  simp\n```\nthen\n```lean4\ntheorem mathd_algebra_10 : 1 = 1 := by\n  rfl",
     STATEMENT + "\n  simp\n"),
    # the unclosed fence in the middle swallows nothing
    ("```lean4\nbroken start\nprose\n```lean4\n  norm_num\n```", STATEMENT + "\n  norm_num\n"),
    # an altered statement in the output is ignored: only its proof after `:=` is kept
    ("<think>easy</think>\n```lean4\nimport Mathlib\nimport Aesop\nopen BigOperators Real Nat Topology Rat\n\n"
     "theorem mathd_algebra_10 (h : (1 : ℝ) = 0) : abs ((120 : ℝ) / 100 * 30 - 130 / 100 * 20) = 10 := by\n"
     "  simp at h\n```", STATEMENT + "\n  simp at h\n"),
    # helper lemmas before the theorem are kept; header lines the problem already has are not
    ("```lean4\nimport Mathlib\nset_option maxHeartbeats 0\nlemma helper : (2 : ℝ) = 1 + 1 := by norm_num\n\n"
     "theorem mathd_algebra_10 : abs ((120 : ℝ) / 100 * 30 - 130 / 100 * 20) = 10 := by\n  norm_num\n```",
     "lemma helper : (2 : ℝ) = 1 + 1 := by norm_num\n\n" + STATEMENT + "\n  norm_num\n"),
    # a `:=` inside a binder's default value or a comment is not the signature's end
    ("```lean4\ntheorem mathd_algebra_10 (x : ℕ := 1) -- not := here\n  : True := by trivial\n```",
     STATEMENT[:-len(" := by")] + " := by trivial\n"),
    # CoT text with code in it but no lean4 block at all: nothing to check
    ("I would write `norm_num` here, ```tactics\nnorm_num\n``` but stop.", ""),
    ("", ""),
])
def test_candidate_from_messy_cot_output(output: str, expected: str) -> None:
    candidate = candidate_from_cot(PROBLEM, output)
    assert candidate == expected, candidate
    if candidate:   # the statement and the header always come from the problem
        assert STATEMENT[:-len(" := by")] in candidate and "import" not in candidate, candidate


def test_assembly_never_takes_statement_or_header_from_the_model() -> None:
    restated = ("import Mathlib\nimport Evil\n\ntheorem mathd_algebra_10 : (10 : ℝ) = 10 := by\n  rfl\n"
                "theorem other : True := trivial\n")
    candidate = assemble(PROBLEM, restated)
    assert candidate.startswith("theorem mathd_algebra_10 : abs ((120"), candidate
    assert "(10 : ℝ) = 10" not in candidate and "import" not in candidate, candidate
    # a block with only tactics is the proof of the problem's `:= by`
    assert assemble(PROBLEM, "nlinarith [sq_nonneg 2]\n") == STATEMENT + "\n  nlinarith [sq_nonneg 2]\n"
    # a block that restates the theorem with no `:=` at all gives no candidate
    assert assemble(PROBLEM, "theorem mathd_algebra_10 : 1 = 1\n") == ""
    # completion templates: the statement is the problem's, the model's text is the body
    assert candidate_from_output(PROBLEM, "deepseek-prover-v1.5", "  norm_num\n```\ntheorem x") == \
        PROBLEM.formal_statement + "  norm_num\n"


def test_last_lean_block_and_top_level_assign() -> None:
    assert last_lean_block("```lean\na\n```\n```lean4\nb\n  c```\n") == "b\n  c\n"
    assert last_lean_block("```lean4\nopen") is None
    text = 'theorem x (h : f "a := b" = 1) /- := -/ {y : ℕ := 2} : y = 2 := rfl'
    assert text[top_level_assign(text) or 0:] == ":= rfl", top_level_assign(text)


def test_budget_forcing_suffix() -> None:
    assert forced_answer_suffix(TEMPLATES["kimina-prover"]) == "\n</think>\n\n```lean4\n"
    assert forced_answer_suffix(TEMPLATES["deepseek-prover-v2"]) == "\n\n```lean4\n"
