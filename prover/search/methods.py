"""One entry point over the proving methods (whole, repair, search) for `prover prove`, bench
and rollouts: the same problems, engine, verifier, sampling and budgets, whichever method.

`search` is best-first tactic search (`prover.search.best_first.prove_best_first`), imported
only when asked for, so the other methods work where it is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from lean_env.verdict import Accepted, Rejected
from policy.config import SamplingConfig
from policy.engines import GenerationEngine
from prover.config import SearchConfig
from prover.problems import Problem
from prover.prompts import ChatTokenizer, PromptTemplate, get_template
from prover.search.attempts import Attempt, Budget, ProofResult, Verifying
from prover.search.repair import prove_repair
from prover.search.whole import BudgetForcing, prove_whole

Method = Literal["whole", "repair", "search"]
METHODS: tuple[Method, ...] = ("whole", "repair", "search")


class MethodNotAvailable(RuntimeError):
    """The method's module is not part of this installation."""


@dataclass(frozen=True)
class MethodOptions:
    """What a method may be told beyond problems, engine, verifier and sampling.

    rounds: repair rounds after the first samples (Goedel-Prover-V2 reports two).
    forcing: s1 budget forcing for CoT templates (None: off).
    expansions: best-first search's frontier expansions per problem (None: its default).
    search: how best-first search runs (the run config's [search] section).
    """

    budget: Budget = Budget()
    rounds: int = 2
    forcing: BudgetForcing | None = None
    expansions: int | None = None
    problems_per_batch: int = 8
    search: SearchConfig = field(default_factory=SearchConfig)


def apply_published_sampling(sampling: SamplingConfig, template: str | PromptTemplate,
                             given: set[str]) -> SamplingConfig:
    """`sampling` with the template's published defaults for every field not in `given` (the
    fields the user chose) and still at its default value."""
    tpl = get_template(template) if isinstance(template, str) else template
    defaults = SamplingConfig()
    update = {k: v for k, v in tpl.sampling.items()
              if k not in given and getattr(sampling, k) == getattr(defaults, k)}
    return sampling.model_copy(update=update)


def best_attempt(attempts: Sequence[Attempt]) -> Attempt | None:
    """The attempt to show when none was accepted: an accepted one if any; else the rejected
    one Lean got furthest with (fewest error messages, the latest of equals); else the last."""
    if not attempts:
        return None
    accepted = [a for a in attempts if isinstance(a.verdict, Accepted)]
    if accepted:
        return accepted[0]
    judged = [a for a in attempts if isinstance(a.verdict, Rejected) and a.verdict.messages]
    if judged:
        return min(reversed(judged), key=lambda a: sum(m.severity == "error" for m in getattr(a.verdict, "messages", ())))
    return attempts[-1]


def prove_problems(method: Method, problems: Sequence[Problem], engine: GenerationEngine, verifier: Verifying,
                   sampling: SamplingConfig, *, template: str | PromptTemplate, options: MethodOptions = MethodOptions(),
                   tokenizer: ChatTokenizer | None = None, prompt_check: Callable[[str], str | None] | None = None,
                   on_verified: Callable[[int], None] | None = None) -> Iterator[ProofResult]:
    """Run `method` over `problems`; yields each problem's result as it finishes."""
    if method == "whole":
        return prove_whole(problems, engine, verifier, sampling, template=template, tokenizer=tokenizer,
                           budget=options.budget, forcing=options.forcing,
                           problems_per_batch=options.problems_per_batch, prompt_check=prompt_check,
                           on_verified=on_verified)
    if method == "repair":
        return prove_repair(problems, engine, verifier, sampling, template=template, rounds=options.rounds,
                            tokenizer=tokenizer, budget=options.budget, forcing=options.forcing,
                            problems_per_batch=options.problems_per_batch, prompt_check=prompt_check,
                            on_verified=on_verified)
    if method == "search":
        best_first = _best_first()
        limits: dict[str, Any] = {}
        if options.expansions is not None:
            limits["expansions"] = options.expansions
        if options.budget.wall_s is not None:
            limits["wall_s"] = options.budget.wall_s
        result: Iterator[ProofResult] = best_first.prove_best_first(
            problems, engine, verifier, sampling, budget=best_first.SearchBudget(**limits), config=options.search,
            prompt_check=prompt_check)
        return result
    raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")


# The optional dependency of `search.backend = "dojo"` (pyproject.toml's `dojo` extra).
DOJO_INSTALL = "pip install 'lean-prover[dojo]' (lean-dojo==4.20.0)"


def ensure_available(method: str, search: SearchConfig | None = None) -> None:
    """Raise `MethodNotAvailable` (or ValueError for an unknown name) before any work starts:
    the method's module, and for `search` with `search.backend = "dojo"` the lean_dojo package
    (looked up, not imported: importing it starts Ray's machinery and logs)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    if method == "search":
        _best_first()
        if search is not None and search.backend == "dojo" and importlib.util.find_spec("lean_dojo") is None:
            raise MethodNotAvailable(f"search.backend = 'dojo' needs LeanDojo, which is not installed: {DOJO_INSTALL}")


def _best_first() -> Any:
    try:
        module = importlib.import_module("prover.search.best_first")
    except ModuleNotFoundError as exc:
        if exc.name != "prover.search.best_first":
            raise
        module = None
    if module is None or not hasattr(module, "prove_best_first"):
        raise MethodNotAvailable("method 'search' (best-first tactic search) is not available in this "
                                 "installation: prover.search.best_first.prove_best_first is missing")
    return module
