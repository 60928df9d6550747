"""Generation with plain transformers (`model.generate`): the fallback engine for any Hugging
Face causal LM, and the reference the vLLM engine is tested against.

Follows vLLM's output conventions (see `policy.engines.base`): `n` rows per prompt (greedy
rows are simply repeated, as vLLM does), per-token log-probabilities of the sampled tokens
under the raw distribution, stop strings cut from the text but their tokens kept.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
)
from transformers.generation.utils import GenerateDecoderOnlyOutput

from policy.config import PolicyConfig, SamplingConfig
from policy.engines.base import (
    Completion,
    GenerationEngine,
    Prompt,
    PromptResult,
    WeightsSource,
    first_stop,
    in_prompt_order,
    resolve_dtype,
    staged_weights,
)
from policy.tokenizer import load_tokenizer


class _SampledTokenLogprobs(LogitsProcessor):
    """Records log p(sampled token) under the raw logits of each step.

    Placed first in the processor list (transformers runs user processors before its
    temperature / top-p warpers), it sees each step's unmodified float32 logits; the token
    sampled from step t is only known at step t+1 (the last column of `input_ids`), so the
    previous step's log-softmax is kept and gathered then: memory is one (rows, vocab) table.
    """

    def __init__(self) -> None:
        self._previous: Tensor | None = None  # (rows, vocab) log-softmax of the last step
        self._chosen: list[Tensor] = []  # per step: (rows,) logprob of the sampled token

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self._previous is not None:
            self._chosen.append(self._previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self._previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def result(self, sequences: Tensor) -> Tensor:
        """(rows, new tokens) logprobs, given generate's final sequences (prompt + new)."""
        assert self._previous is not None, "generate ran no decoding step"
        # The last sampled token was appended after the final processor call.
        chosen = [*self._chosen, self._previous.gather(1, sequences[:, -1:]).squeeze(1)]
        return torch.stack(chosen, dim=1)


class HFEngine(GenerationEngine):
    """`transformers` engine: one model in this process, on CUDA when available."""

    def __init__(self, config: PolicyConfig):
        if config.checkpoint is None:
            raise ValueError("PolicyConfig.checkpoint is not set: no model to generate with")
        self.config = config
        self.checkpoint = Path(config.checkpoint)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = getattr(torch, resolve_dtype(config.dtype, self.device.type == "cuda"))
        self.tokenizer = load_tokenizer(config.tokenizer or self.checkpoint)
        self._model: PreTrainedModel | None = self._load(self.checkpoint)
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is not None and config.max_model_len > context:  # vLLM refuses this too
            raise ValueError(
                f"max_model_len={config.max_model_len} exceeds the context of {self.checkpoint} "
                f"(max_position_embeddings={context})"
            )
        self.model.to(self.device).eval()  # type: ignore[arg-type]  # transformers' decorated `to` hides Module.to's signature
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = {self.tokenizer.eos_token_id} | set(eos if isinstance(eos, list) else [eos])
        self.eos_ids.discard(None)
        if not self.eos_ids:
            raise ValueError(f"{self.checkpoint}: neither the tokenizer nor the model names an eos token")
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else min(self.eos_ids)

    @property
    def model(self) -> PreTrainedModel:
        if self._model is None:
            raise RuntimeError("the transformers engine is closed")
        return self._model

    def _load(self, folder: Path) -> PreTrainedModel:
        model, info = cast(
            tuple[PreTrainedModel, dict[str, Any]],
            AutoModelForCausalLM.from_pretrained(
                folder, dtype=self.dtype, local_files_only=True, output_loading_info=True
            ),
        )
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise ValueError(f"{folder}: weights missing for {len(missing)} tensors, e.g. {missing[:3]}")
        return model

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> list[PromptResult]:
        return in_prompt_order(self.generate_iter(prompts, sampling), len(prompts))

    def generate_iter(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> Iterator[tuple[int, PromptResult]]:
        """Rows (prompt x sample) are generated in chunks of `hf_batch_size`, in prompt order; a
        prompt's result is handed on after the chunk that holds its last row."""
        encoded = [list(self.tokenizer(p)["input_ids"]) if isinstance(p, str) else list(p) for p in prompts]
        for prompt_ids in encoded:
            if len(prompt_ids) >= self.config.max_model_len:
                raise ValueError(
                    f"prompt of {len(prompt_ids)} tokens leaves no room in max_model_len="
                    f"{self.config.max_model_len}"
                )
        rows = [p for p in range(len(prompts)) for _ in range(sampling.n)]
        completions: list[list[Completion]] = [[] for _ in prompts]
        size = self.config.hf_batch_size
        done = 0   # prompts handed on so far
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            seed = None if sampling.seed is None else sampling.seed + start
            for p, completion in zip(chunk, self._generate_rows([encoded[p] for p in chunk], sampling, seed), strict=True):
                completions[p].append(completion)
            while done < len(prompts) and len(completions[done]) == sampling.n:
                prompt = prompts[done]
                yield done, PromptResult(prompt=prompt if isinstance(prompt, str) else "",
                                         prompt_token_ids=tuple(encoded[done]), completions=tuple(completions[done]))
                done += 1

    @torch.no_grad()
    def _generate_rows(self, rows: list[list[int]], sampling: SamplingConfig, seed: int | None) -> list[Completion]:
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, ids in enumerate(rows):  # left padding: every prompt ends in the last column
            input_ids[r, width - len(ids) :] = torch.tensor(ids)
            attention_mask[r, width - len(ids) :] = 1
        budgets = [min(sampling.max_tokens, self.config.max_model_len - len(ids)) for ids in rows]
        greedy = sampling.temperature == 0
        generation_config = GenerationConfig(
            max_new_tokens=max(budgets),
            do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p,
            top_k=None if greedy else 0,  # transformers' default of 50 would differ from vLLM's "no top-k"
            eos_token_id=[] if sampling.ignore_eos else sorted(self.eos_ids),
            pad_token_id=self.pad_id,
            stop_strings=list(sampling.stop) or None,
            return_dict_in_generate=True,
        )
        recorder = _SampledTokenLogprobs()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        # A private RNG stream: seeding must not reset the caller's global generator.
        with torch.random.fork_rng(devices=devices):
            if seed is not None:
                torch.manual_seed(seed)
            # `generate` comes from GenerationMixin, which PreTrainedModel's type does not show.
            out: GenerateDecoderOnlyOutput = cast(Any, self.model).generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=generation_config,
                logits_processor=LogitsProcessorList([recorder]),
                tokenizer=self.tokenizer if sampling.stop else None,
            )
        new_tokens = out.sequences[:, width:].tolist()
        logprobs = recorder.result(out.sequences).tolist()
        return [
            self._completion(ids, lps, budget, sampling.stop, sampling.ignore_eos)
            for ids, lps, budget in zip(new_tokens, logprobs, budgets, strict=True)
        ]

    def _completion(
        self, ids: list[int], logprobs: list[float], budget: int, stops: Sequence[str], ignore_eos: bool = False
    ) -> Completion:
        """Cut one generated row where it ended (eos unless ignored, stop string, budget) and decode it."""
        ids, logprobs = ids[:budget], logprobs[:budget]
        end = None if ignore_eos else next((i + 1 for i, t in enumerate(ids) if t in self.eos_ids), None)
        if end is None and stops and first_stop(self._decode(ids), stops) is not None:
            # Shortest prefix whose text contains a stop string (monotone in the length).
            low, high = 1, len(ids)
            while low < high:
                mid = (low + high) // 2
                if first_stop(self._decode(ids[:mid]), stops) is None:
                    low = mid + 1
                else:
                    high = mid
            end = low
        finish = "length" if end is None else "stop"
        ids, logprobs = ids[: end or len(ids)], logprobs[: end or len(ids)]
        text = self._decode(ids)
        cut = first_stop(text, stops)
        return Completion(
            text=text if cut is None else text[:cut],
            token_ids=tuple(ids),
            logprobs=tuple(logprobs),
            finish_reason=finish,
        )

    def _decode(self, ids: list[int]) -> str:
        return cast(str, self.tokenizer.decode(ids, skip_special_tokens=True))

    def load_weights(self, weights: WeightsSource) -> None:
        """Tensors named as in `model.state_dict()` go straight into `load_state_dict`; a
        folder or checkpoint-named tensors are read by `from_pretrained` first (it converts
        DeepSeek's per-expert names to transformers' fused experts)."""
        current = self.model.state_dict()
        if isinstance(weights, Mapping) and set(weights) == set(current):
            state: Mapping[str, Tensor] = weights
        else:
            with staged_weights(weights, config_from=self.checkpoint) as folder:
                state = self._load(folder).state_dict()
        self.model.load_state_dict(state, strict=True)

    def close(self) -> None:
        if getattr(self, "_model", None) is None:
            return
        self._model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
