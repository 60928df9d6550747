"""Generation engines behind one interface (`GenerationEngine`): vLLM (default) and transformers.

`make_engine(config)` builds the one `config.engine` names; each engine module imports its
heavy library only when this factory asks for it.
"""

from __future__ import annotations

from policy.config import PolicyConfig
from policy.engines.base import (
    Completion,
    GenerationEngine,
    Prompt,
    PromptResult,
    WeightsSource,
    in_prompt_order,
    results_as_finished,
)

__all__ = ["Completion", "GenerationEngine", "Prompt", "PromptResult", "WeightsSource", "in_prompt_order",
           "make_engine", "results_as_finished"]


def make_engine(config: PolicyConfig) -> GenerationEngine:
    """Start the engine `config.engine` names on `config.checkpoint`; use it as a context manager."""
    if config.engine == "vllm":
        from policy.engines.vllm_engine import VLLMEngine

        return VLLMEngine(config)
    from policy.engines.hf_engine import HFEngine

    return HFEngine(config)
