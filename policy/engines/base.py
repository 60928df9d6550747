"""What every generation engine returns and promises: the `GenerationEngine` protocol.

An engine samples `n` completions per prompt and reports, for each sampled token, its id and
its log-probability under the model's own distribution (raw logits, temperature 1, before
top-p), the quantity a GRPO learner recomputes for its importance ratio; vLLM calls this
`logprobs_mode="raw_logprobs"`. `load_weights` swaps the weights of the running engine (the
learner's push in an RL loop, as in OpenRLHF / verl) without restarting it.

Conventions shared by the implementations (vLLM's, which the transformers engine copies):
- the prompt is encoded with the tokenizer's special tokens (our tokenizer adds `<|bos|>`);
- a completion ends at the end-of-sequence token (kept in `token_ids`, dropped from `text`),
  at a stop string (the tokens that produced it are kept, `text` ends just before it), or at
  `max_tokens` / the context length (`finish_reason` "length"); "stop" otherwise.

`generate_iter` hands out each prompt's result as soon as all its `n` completions are done (vLLM
finishes short requests while long ones still run), so a caller can verify or score the first
answers while the engine samples the rest; `generate` is the same results in prompt order.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

from torch import Tensor

from policy.config import SamplingConfig

# Weights to load: a checkpoint folder with *.safetensors, or tensors under the checkpoint's
# names (DeepSeek's, as `policy.checkpoint.save_pretrained` writes them).
WeightsSource = Path | str | Mapping[str, Tensor]
# A prompt: text (encoded by the engine, special tokens added), or the exact token ids to
# continue from (multi-turn rollouts: the engine must see the very tokens it sampled before,
# never a re-tokenisation of their text).
Prompt = str | Sequence[int]


@dataclass(frozen=True)
class Completion:
    """One sampled continuation of a prompt."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]  # one per token id: log p(token | prefix), nats, <= 0
    finish_reason: str  # "stop" (end-of-sequence token or stop string) or "length"


@dataclass(frozen=True)
class PromptResult:
    """A prompt, its token ids as the engine saw them, and its `n` completions. `prompt` is
    the prompt's text, or "" when the prompt was given as token ids."""

    prompt: str
    prompt_token_ids: tuple[int, ...]
    completions: tuple[Completion, ...]


class GenerationEngine(Protocol):
    """A sampler over one model whose weights can be replaced while it runs.

    Implementations subclass this protocol to inherit the context manager, which closes the
    engine (worker processes, memory) on exit.
    """

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> list[PromptResult]:
        """`sampling.n` completions for each prompt, in prompt order. A token-id prompt is
        used as given (`prompt_token_ids` equals it; nothing is added)."""
        ...

    def generate_iter(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> Iterator[tuple[int, PromptResult]]:
        """`generate`'s results as (index into `prompts`, result) in the order the prompts
        finish, each as soon as its `n` completions are done: the same results as `generate`
        (same seeds), only sooner. Run it to the end (or close it) before the next call on this
        engine. This default yields `generate`'s results in prompt order, once all are done."""
        yield from enumerate(self.generate(prompts, sampling))

    def load_weights(self, weights: WeightsSource) -> None:
        """Replace all weights in the running engine (same architecture and names). Tensors
        are pushed into the running engine without touching the disk where it can take them."""
        ...

    def close(self) -> None:
        """Release the engine; idempotent."""
        ...

    def __enter__(self) -> GenerationEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def results_as_finished(engine: GenerationEngine, prompts: Sequence[Prompt],
                        sampling: SamplingConfig) -> Iterator[tuple[int, PromptResult]]:
    """`engine.generate_iter`, also for an engine that only has `generate` (one that matches
    the protocol without subclassing it: a Ray actor's proxy, a test double): then its
    results come in prompt order once all are done."""
    stream = getattr(engine, "generate_iter", None)
    if stream is not None:
        return cast(Iterator[tuple[int, PromptResult]], stream(prompts, sampling))
    return enumerate(engine.generate(prompts, sampling))


def in_prompt_order(finished: Iterable[tuple[int, PromptResult]], count: int) -> list[PromptResult]:
    """The results of `generate_iter` over `count` prompts, back in prompt order; an error
    (not a silent gap) when a prompt's result is missing or came twice."""
    results: list[PromptResult | None] = [None] * count
    for index, result in finished:
        if results[index] is not None:
            raise RuntimeError(f"the engine returned prompt {index}'s result twice")
        results[index] = result
    missing = [i for i, r in enumerate(results) if r is None]
    if missing:
        raise RuntimeError(f"the engine returned no result for prompts {missing[:5]} of {count}")
    return cast(list[PromptResult], results)


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder; ValueError when it has none."""
    if not folder.is_dir():
        raise ValueError(f"weights folder not found: {folder}")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors weights in {folder}")
    return files


@contextmanager
def staged_weights(weights: WeightsSource, config_from: Path) -> Iterator[Path]:
    """A checkpoint folder holding `weights`: the folder itself when given one, else a
    temporary folder (deleted on exit) with `model.safetensors` and copies of `config_from`'s
    config.json and generation_config.json, so that loaders which read a folder accept it."""
    if isinstance(weights, str | Path):
        folder = Path(weights)
        safetensors_files(folder)
        yield folder
        return
    from safetensors.torch import save_file

    staging = Path(tempfile.mkdtemp(prefix="policy-weights-"))
    try:
        # safetensors refuses tensors that share storage (tied or copied MTP weights) and
        # non-contiguous views, so every tensor gets its own contiguous CPU copy.
        tensors = {name: t.detach().to("cpu").contiguous().clone() for name, t in weights.items()}
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        for name in ("config.json", "generation_config.json"):
            if (config_from / name).is_file():
                shutil.copy(config_from / name, staging / name)
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def resolve_dtype(dtype: str, on_gpu: bool) -> str:
    """`PolicyConfig.dtype` with "auto" resolved: bfloat16 on GPU, float32 on CPU (CPU
    kernels are fast in float32 and exact enough to compare engines)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if on_gpu else "float32"


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index where the earliest of `stops` begins in `text`, or None."""
    found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(found) if found else None
