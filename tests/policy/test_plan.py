"""The paper plan (`policy.plan`): its activation count equals what autograd really saves, its
parameter counts match DeepSeek-V3's published ones, and its sharding arithmetic is exact."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from policy.model import Transformer
from policy.plan import activation_bytes_per_token, plan
from policy.presets import PRESETS, plan_preset


def _saved_bytes_per_token(args, run) -> float:
    """Bytes of distinct non-parameter storages autograd saves while `run()` builds the graph."""
    torch.manual_seed(0)
    model = Transformer(args).to(torch.bfloat16)
    for module in model.modules():
        if hasattr(module, "attention_kernel"):
            module.attention_kernel = "flash"  # what training on CUDA uses ("auto")
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    # the rotary tables are slices of per-position buffers, not per-token activations
    params |= {model.rope_cos.untyped_storage().data_ptr(), model.rope_sin.untyped_storage().data_ptr()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        tokens = run(model)
    return sum(seen.values()) / tokens


@pytest.mark.parametrize("layer", [0, 1], ids=["dense_block", "moe_block"])
def test_activation_count_matches_saved_tensors(layer: int) -> None:
    args = dataclasses.replace(PRESETS["tiny"], max_seq_len=128, n_mtp_layers=0)
    bsz, seqlen = 2, 64

    def run(model: Transformer) -> int:
        x = torch.randn(bsz, seqlen, args.dim, dtype=torch.bfloat16, requires_grad=True)
        model.layers[layer](x, model.rope_cos[:seqlen], model.rope_sin[:seqlen])
        return bsz * seqlen

    measured = _saved_bytes_per_token(args, run)
    counted = activation_bytes_per_token(args)["dense_block" if layer == 0 else "moe_block"]
    assert counted == pytest.approx(measured, rel=0.01), f"plan {counted} vs saved {measured} bytes/token"


def test_deepseek_v3_parameters_match_the_published_counts() -> None:
    """DeepSeek-V3 (arXiv:2412.19437): 671B total, 37B activated per token; the released
    checkpoint's 685B adds the MTP module with its copies of the embedding and head."""
    p = plan(plan_preset("deepseek-v3-671b"), gpus=2048, gpu_memory_gib=80, ep=64)
    params = p["parameters"]
    assert params["total_without_mtp"] / 1e9 == pytest.approx(671, abs=0.5), params
    assert params["active_per_token"] / 1e9 == pytest.approx(37, abs=0.6), params
    args = plan_preset("deepseek-v3-671b")
    with_copies = params["total"] + 2 * args.vocab_size * args.dim
    assert with_copies / 1e9 == pytest.approx(685, abs=1), with_copies
    assert p["mesh"] == {"gpus": 2048, "dp_shard": 2048, "dp_replicate": 1, "ep": 64, "edp": 32, "experts_per_gpu": 4}
    # every GPU keeps 1/2048 of everything in float32 weights, gradients and AdamW (16 B each)
    held = params["total"] / 2048
    assert params["held_per_gpu"] == pytest.approx(held)
    state = sum(p["memory_gib"][k] for k in ("weights_fp32", "gradients_fp32", "adamw_fp32"))
    assert state == pytest.approx(16 * held / 2**30, abs=0.01)
    assert p["fits"] is True and p["memory_gib"]["total"] < 80, p["memory_gib"]


def test_all_to_all_volume_is_k_copies_of_each_token_there_and_back() -> None:
    args = plan_preset("deepseek-v3-671b")
    p = plan(args, gpus=64, gpu_memory_gib=80, ep=64, seq=4096, micro_batch=1, activation_checkpointing="none")
    moe_layers = args.n_layers - args.n_dense_layers + args.n_mtp_layers  # 58 + 1
    # forward dispatch + combine, backward the same: 4 moves of 8 bf16 vectors, 63/64 remote
    want = 4 * moe_layers * 4096 * 8 * 7168 * 2 * 63 / 64 / 2**30
    assert p["communication_gib_per_micro_batch"]["ep_all_to_all"] == pytest.approx(want, abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gpus": 2048, "ep": 48}, "learner.ep = 48 does not divide the world size 2048"),
        ({"gpus": 96, "ep": 96}, "n_routed_experts = 256 is not divisible by learner.ep = 96"),
        ({"gpus": 8, "seq": 200_000}, "--seq 200000 exceeds the preset's max_seq_len 163840"),
    ],
)
def test_plan_errors_quote_the_numbers(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        plan(plan_preset("deepseek-v3-671b"), gpu_memory_gib=80, **kwargs)
    assert message in str(info.value), str(info.value)
