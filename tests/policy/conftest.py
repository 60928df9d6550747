"""Fixtures for the policy tests: small model configurations and offline transformers."""

from __future__ import annotations

import dataclasses

import pytest

from policy.model import ModelArgs
from policy.presets import PRESETS


@pytest.fixture(autouse=True)
def _hf_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers must never reach the network from a test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def tiny_args() -> ModelArgs:
    """The `tiny` preset with short rotary tables (tests use sequences of at most 512 tokens)."""
    return dataclasses.replace(PRESETS["tiny"], max_seq_len=512)


@pytest.fixture
def micro_args() -> ModelArgs:
    """A much smaller MLA/MoE model (head dims below vLLM's minimum) for the math tests: two MoE
    layers after one dense one, 8 experts in 4 groups (2 usable), top-2, one MTP module."""
    return ModelArgs(
        vocab_size=97,
        dim=32,
        n_layers=3,
        n_dense_layers=1,
        max_seq_len=64,
        n_heads=2,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_nope_head_dim=8,
        qk_rope_head_dim=4,
        v_head_dim=8,
        inter_dim=48,
        moe_inter_dim=16,
        n_routed_experts=8,
        n_activated_experts=2,
        n_shared_experts=1,
        n_expert_groups=4,
        n_limited_groups=2,
        n_mtp_layers=1,
    )
