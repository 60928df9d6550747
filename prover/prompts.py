"""Prompts and candidates: what the policy is asked, and how its answer becomes the code Lean
checks. One home for every method (whole-proof, repair, best-first), bench and RL rollouts.

The header and the statement of a candidate always come from the problem, never from the
model: the model supplies the proof only.
"""

from __future__ import annotations

from prover.problems import Problem

FENCE = "```"


def build_prompt(problem: Problem, template: str) -> str:
    """The text the policy continues.

    'deepseek-prover-v1.5': "Complete the following Lean 4 code:\\n\\n```lean4\\n" + header +
    informal_prefix + formal_statement, the field's standard non-CoT prompt (REPL_PROTOCOL.md
    section 4); 'plain': the Lean file alone, for models trained on raw Lean.
    """
    if template == "deepseek-prover-v1.5":
        return "Complete the following Lean 4 code:\n\n```lean4\n" + problem.lean_prompt()
    if template == "plain":
        return problem.lean_prompt()
    raise ValueError(f"unknown prompt template {template!r}")


def candidate_from_completion(problem: Problem, completion: str) -> str:
    """Statement + the model's continuation up to the closing fence: the code Lean checks.

    The header is not repeated: the verifier checks the candidate against the problem's
    header, so a continuation that adds imports is rejected there, not silently dropped.
    """
    cut = completion.find(FENCE)
    body = completion if cut < 0 else completion[:cut]
    return problem.formal_statement + body.rstrip() + "\n"
