"""Prompts and candidates: what the policy is asked, and how its answer becomes the code Lean
checks. One home for every method (whole-proof, repair, best-first), bench and RL rollouts.

Templates reproduce released provers: each carries its authors' text (cited next to it, and
pinned in tests/test_prompts.py) and the sampling defaults they published. Chat templates
are rendered through the model's own chat template when its tokenizer has one.

The header and the statement of a candidate always come from the problem, never from the
model: the model supplies the proof only. A CoT answer's last complete ```lean4 block is
read; if it restates the theorem (altered or not), only what follows its `:=` is kept and
put after the problem's own statement.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from prover.problems import Problem

FENCE = "```"
CODE_FENCE_START = "```lean4\n"


class ChatTokenizer(Protocol):
    """What rendering needs of a Hugging Face tokenizer."""

    chat_template: Any

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class PromptTemplate:
    """A released prover's prompt.

    style: 'completion' (the model continues the Lean file; its continuation is the proof
    body) or 'chat' (messages through the chat template; the answer holds the code in a
    ```lean4 block, usually after a proof plan or thinking).
    user: the completion prefix or the user message, with `{code}` standing for the problem's
    Lean text (header + informal comment + statement, with `sorry_suffix` appended).
    sampling: the SamplingConfig fields the authors published (what `prove` and `bench` use
    unless overridden); unpublished values are absent, not guessed.
    not_applied: published sampling values our engines have no field for (kept for reports).
    think_end: the marker that ends the thinking phase, for budget forcing (None: no marker;
    forcing then appends only the code fence).
    source: where the text and the numbers come from.
    """

    name: str
    style: Literal["completion", "chat"]
    user: str
    source: str
    system: str | None = None
    sorry_suffix: str = ""
    sampling: Mapping[str, Any] = field(default_factory=dict)
    not_applied: Mapping[str, Any] = field(default_factory=dict)
    think_end: str | None = None

    def code(self, problem: Problem) -> str:
        text = problem.lean_prompt()
        return (text.rstrip() + self.sorry_suffix).strip() if self.sorry_suffix else text

    def messages(self, problem: Problem) -> list[dict[str, str]]:
        """The conversation (chat style): optional system message, then the user's."""
        user = self.user.replace("{code}", self.code(problem))
        return ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": user}]


# --- the templates -------------------------------------------------------------------------

DEEPSEEK_PROVER_V1_5 = PromptTemplate(
    name="deepseek-prover-v1.5",
    style="completion",
    # deepseek-ai/DeepSeek-Prover-V1.5, prover/utils.py (commit da2a54b), `non_cot_prompt`:
    # "Complete the following Lean 4 code:\n\n```lean4\n{header}{informal_prefix}{formal_statement}"
    user="Complete the following Lean 4 code:\n\n```lean4\n{code}",
    # configs/sampling.py (commit 2c4ba91): temperature=1, max_tokens=2048, top_p=0.95.
    sampling={"temperature": 1.0, "top_p": 0.95, "max_tokens": 2048},
    source="https://github.com/deepseek-ai/DeepSeek-Prover-V1.5/blob/main/prover/utils.py (non_cot_prompt); "
           "configs/sampling.py (sampling)",
)

PLAIN = PromptTemplate(
    name="plain", style="completion", user="{code}",
    source="ours: the Lean file alone, for models trained on raw Lean (no published text)",
)

_PROOF_PLAN = (
    "Before producing the Lean 4 code to formally prove the given theorem, provide a detailed proof plan "
    "outlining the main proof steps and strategies.\nThe plan should highlight key ideas, intermediate lemmas, "
    "and proof structures that will guide the construction of the final formal proof."
)

DEEPSEEK_PROVER_V2 = PromptTemplate(
    name="deepseek-prover-v2",
    style="chat",
    # deepseek-ai/DeepSeek-Prover-V2, README.md section 5 "Quick Start" (commit 24ec082): the
    # prompt, `.strip()`ed, formatted with the file ending in `:= by\n  sorry` (also `.strip()`ed),
    # sent as one user message through the tokenizer's chat template.
    user="Complete the following Lean 4 code:\n\n```lean4\n{code}\n```\n\n" + _PROOF_PLAN,
    sorry_suffix="\n  sorry",
    # The README's example passes only max_new_tokens=8192; temperature and top_p are not
    # published there, so ours apply.
    sampling={"max_tokens": 8192},
    source="https://github.com/deepseek-ai/DeepSeek-Prover-V2/blob/main/README.md (5. Quick Start)",
)

GOEDEL_PROVER_V2 = PromptTemplate(
    name="goedel-prover-v2",
    style="chat",
    # Goedel-LM/Goedel-Prover-V2, README.md section 6 "Quick Start" (commit 357c1fa): DeepSeek-
    # Prover-V2's prompt except that the closing fence follows the code directly ("{}```").
    user="Complete the following Lean 4 code:\n\n```lean4\n{code}```\n\n" + _PROOF_PLAN,
    sorry_suffix="\n  sorry",
    # Only max_new_tokens=8192 is published (README); temperature/top_p were never published
    # (Goedel-Prover-V2 issue #8). Its self-correction prompt lives in scripts we could not
    # read (scripts/pipeline.sh is not in the stored repository): repair uses Kimina's format.
    sampling={"max_tokens": 8192},
    # The README names no thinking marker; Goedel-Prover-V2 is trained from Qwen3, whose chat
    # template closes thinking with </think>.
    think_end="</think>",
    source="https://github.com/Goedel-LM/Goedel-Prover-V2/blob/main/README.md (6. Quick Start)",
)

KIMINA_PROVER = PromptTemplate(
    name="kimina-prover",
    style="chat",
    # MoonshotAI/Kimina-Prover-Preview, kimina_prover_demo/error_fix.py (commit d31a49e):
    # SYSTEM, and the first turn's prompt "Think about and solve the following problems step by
    # step in Lean 4." + "\n\n" + the statement file ending in `:= by sorry`.
    system="You are an expert programmer and mathematician who helps formalizing mathematical problems in Lean 4.",
    user="Think about and solve the following problems step by step in Lean 4.\n\n{code}",
    sorry_suffix=" sorry",
    # error_fix.py: temperature=0.8, max_tokens=16000 (MAX_TOKENS), presence_penalty=0.2.
    sampling={"temperature": 0.8, "max_tokens": 16000},
    not_applied={"presence_penalty": 0.2},
    # Kimina's answers are <think>...</think> then a ```lean4 block (Kimina-Prover blog).
    # The Hugging Face model cards show another user text ("# Problem: ... # Formal statement:")
    # and system prompt; we could not read the cards' text here, so that variant is not included.
    think_end="</think>",
    source="https://github.com/MoonshotAI/Kimina-Prover-Preview/blob/main/kimina_prover_demo/error_fix.py",
)

TEMPLATES: dict[str, PromptTemplate] = {t.name: t for t in (
    DEEPSEEK_PROVER_V1_5, PLAIN, DEEPSEEK_PROVER_V2, GOEDEL_PROVER_V2, KIMINA_PROVER)}


def get_template(name: str) -> PromptTemplate:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown prompt template {name!r} (known: {', '.join(TEMPLATES)})") from None


def render_messages(messages: Sequence[Mapping[str, str]], tokenizer: ChatTokenizer | None = None) -> str:
    """A conversation as the text the engine continues: through the tokenizer's own chat
    template (with the generation prompt) when it has one; otherwise each message's content,
    separated by blank lines, so a model without a chat template still sees every turn."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        assert isinstance(text, str), type(text)
        return text
    return "".join(m["content"] + "\n\n" for m in messages)


def build_prompt(problem: Problem, template: str | PromptTemplate, tokenizer: ChatTokenizer | None = None) -> str:
    """The text the policy continues, for `template` (a name of TEMPLATES or a PromptTemplate)."""
    tpl = get_template(template) if isinstance(template, str) else template
    if tpl.style == "completion":
        return tpl.user.replace("{code}", tpl.code(problem))
    return render_messages(tpl.messages(problem), tokenizer)


# --- from the model's answer to the candidate -----------------------------------------------

def candidate_from_completion(problem: Problem, completion: str) -> str:
    """Completion style: statement + the model's continuation up to the closing fence.

    The header is not repeated: the verifier checks the candidate against the problem's
    header, so a continuation that adds imports is rejected there, not silently dropped.
    """
    cut = completion.find(FENCE)
    body = completion if cut < 0 else completion[:cut]
    return problem.formal_statement + body.rstrip() + "\n"


_OPENING = re.compile(r"^[ \t]*```lean4?[ \t]*$")


def last_lean_block(text: str) -> str | None:
    """The last complete ```lean4 (or ```lean) block of `text`, read line by line: a fence
    line opens a block, a line that is or ends with ``` closes it. A block still open when
    another opens, or at the end (an unclosed fence), is not complete and is ignored."""
    last: str | None = None
    current: list[str] | None = None
    for line in text.splitlines():
        if _OPENING.match(line):
            current = []
        elif current is not None and line.rstrip().endswith(FENCE):
            current.append(line.rstrip()[:-len(FENCE)])
            last, current = "\n".join(current).rstrip() + "\n", None
        elif current is not None:
            current.append(line)
    return last


_OPEN, _CLOSE = "([{⦃⟨", ")]}⦄⟩"


def top_level_assign(text: str, start: int = 0) -> int | None:
    """Index of the first `:=` at bracket depth 0 from `start`, outside comments and strings:
    the end of a declaration's signature (a binder's default value sits inside brackets)."""
    depth, i = 0, start
    while i < len(text):
        if text.startswith("--", i):
            i = text.find("\n", i)
            if i < 0:
                return None
        elif text.startswith("/-", i):
            nest, i = 1, i + 2
            while i < len(text) and nest:
                if text.startswith("/-", i):
                    nest, i = nest + 1, i + 2
                elif text.startswith("-/", i):
                    nest, i = nest - 1, i + 2
                else:
                    i += 1
            continue
        elif text[i] == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif text[i] in _OPEN:
            depth += 1
        elif text[i] in _CLOSE:
            depth = max(0, depth - 1)
        elif depth == 0 and text.startswith(":=", i):
            return i
        i += 1
    return None


def statement_head(problem: Problem) -> str:
    """The problem's statement up to (not including) its `:=`."""
    cut = top_level_assign(problem.formal_statement)
    if cut is None:
        raise ValueError(f"{problem.id}: formal_statement has no top-level ':=': {problem.formal_statement!r}")
    return problem.formal_statement[:cut].rstrip()


def _declaration(name: str) -> re.Pattern[str]:
    return re.compile(r"(?m)^[ \t]*(?:@\[[^\]]*\][ \t]*)?(?:theorem|lemma)[ \t]+«?" + re.escape(name)
                      + r"»?(?=[\s:(\[{⦃])")


def assemble(problem: Problem, code: str) -> str:
    """The candidate from a block of the model's Lean code: the problem's statement, then the
    model's proof. If the block declares the problem's theorem (restated, perhaps altered),
    its signature is dropped and what follows its `:=` is kept; what precedes the declaration
    (helper lemmas) is kept, except lines the problem's header already has (imports, options,
    opens), which the verifier would refuse. A block without the declaration is taken as the
    tactic proof of the problem's `:= by`."""
    header_lines = {line.strip() for line in problem.header.splitlines() if line.strip()}
    found = _declaration(problem.name).search(code)
    if found is None:
        body = code.rstrip("\n")
        if not problem.formal_statement.rstrip().endswith("by"):
            return f"{statement_head(problem)} := {body.strip()}\n"
        lines = [line if line.startswith((" ", "\t")) or not line.strip() else "  " + line
                 for line in body.splitlines()]
        return problem.formal_statement.rstrip() + "\n" + "\n".join(lines).rstrip() + "\n"
    assign = top_level_assign(code, found.end())
    if assign is None:
        return ""
    prelude = "".join(line for line in code[:found.start()].splitlines(keepends=True)
                      if line.strip() not in header_lines and not line.lstrip().startswith("import "))
    return prelude.lstrip("\n") + statement_head(problem) + " :=" + code[assign + 2:].rstrip() + "\n"


def candidate_from_cot(problem: Problem, output: str) -> str:
    """Chat/CoT style: the proof in the answer's last complete ```lean4 block, assembled on
    the problem's statement (`assemble`); "" when the answer has no complete block (the
    verifier reports it as not checked: no code)."""
    block = last_lean_block(output)
    return "" if block is None else assemble(problem, block)


def candidate_from_output(problem: Problem, template: str | PromptTemplate, output: str) -> str:
    """The code Lean checks, from the model's output for `template`."""
    tpl = get_template(template) if isinstance(template, str) else template
    return candidate_from_completion(problem, output) if tpl.style == "completion" else candidate_from_cot(problem, output)


# --- s1 budget forcing ---------------------------------------------------------------------

WAIT = "Wait"


def forced_answer_suffix(template: PromptTemplate) -> str:
    """What s1's budget forcing (Muennighoff et al., 2025, "s1: Simple test-time scaling")
    appends to a thinking trace cut at its token budget so the model must answer now: the
    template's end-of-thinking marker (if any), then the opening of the code block."""
    return (f"\n{template.think_end}\n\n" if template.think_end else "\n\n") + CODE_FENCE_START
