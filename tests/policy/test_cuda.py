"""The CUDA paths of the training stack, for a machine with a GPU (`pytest -m gpu`): torch's
native grouped GEMM with 16-row group alignment, every attention kernel in bf16, and a compiled
training step against eager. CPU tests hold the same functions equal on CPU; these check that
the CUDA kernels compute them too. Skipped without CUDA."""

from __future__ import annotations

import copy

import pytest
import torch

from policy.model import ATTENTION_KERNELS, Gate, ModelArgs, Transformer, attention
from policy.moe import native_grouped_mm_supported, routed_experts_grouped, routed_experts_loop
from policy.parallelize import SpeedConfig, parallelize
from policy.presets import PRESETS
from policy.profiling import time_attention_kernels
from tests.policy.test_moe import _experts, _forward_backward, _routing

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _close(got: torch.Tensor, want: torch.Tensor) -> float:
    """Relative error in norm (robust to bf16's per-element noise)."""
    return ((got.float() - want.float()).norm() / (want.float().norm() + 1e-12)).item()


def test_native_grouped_gemm_matches_loop_in_bf16() -> None:
    torch.manual_seed(0)
    n_tokens, n_experts, top_k, dim, inter = 1000, 16, 4, 256, 128
    assert native_grouped_mm_supported(torch.device("cuda"), torch.bfloat16)
    x = torch.randn(n_tokens, dim)
    indices, weights = _routing(n_tokens, n_experts, top_k)
    gate_up, down = _experts(n_experts, dim, inter)
    want = _forward_backward(routed_experts_loop, x, indices, weights, gate_up, down)  # CPU f32
    got = _forward_backward(
        routed_experts_grouped,  # CUDA picks align=16 itself
        x.cuda().bfloat16(),
        indices.cuda(),
        weights.cuda(),
        gate_up.cuda().bfloat16(),
        down.cuda().bfloat16(),
    )
    for name, g, w in zip(
        ("out", "d_x", "d_weights", "d_gate_up", "d_down"), got, want, strict=True
    ):
        err = _close(g.cpu(), w)
        assert err < 0.02, f"{name}: relative error {err:.4f}"


@pytest.mark.parametrize("kernel", ATTENTION_KERNELS)
def test_attention_kernels_in_bf16_match_float32(kernel: str) -> None:
    torch.manual_seed(0)
    b, h, t, dqk, dv = 2, 8, 1024, 192, 128
    q, k = (torch.randn(b, h, t, dqk, device="cuda") for _ in range(2))
    v = torch.randn(b, h, t, dv, device="cuda")
    grad = torch.randn(b, h, t, dv, device="cuda")
    leaves32 = [x.clone().requires_grad_() for x in (q, k, v)]
    want = attention(*leaves32, scale=dqk**-0.5, is_causal=True, kernel="sdpa")
    want.backward(grad)
    leaves16 = [x.bfloat16().requires_grad_() for x in (q, k, v)]
    got = attention(*leaves16, scale=dqk**-0.5, is_causal=True, kernel=kernel)  # type: ignore[arg-type]
    got.backward(grad.bfloat16())
    assert got.shape == want.shape, (got.shape, want.shape)
    assert _close(got, want) < 0.02, (kernel, _close(got, want))
    for name, a, b_ in zip("qkv", leaves16, leaves32, strict=True):
        err = _close(a.grad, b_.grad)
        assert err < 0.03, f"{kernel}: d{name} relative error {err:.4f}"


def test_attention_timing_runs_every_kernel_on_the_small_preset_shape() -> None:
    rows = time_attention_kernels(PRESETS["small"], 2, 2048, calls=3)
    assert [r["kernel"] for r in rows] == [k for k in ATTENTION_KERNELS if k != "auto"], rows
    for row in rows:
        assert "error" not in row, row
        assert row["max_abs_diff"] < 0.05 and row["ms_fwd_bwd"] > 0, row


def test_compiled_training_step_matches_eager_on_cuda() -> None:
    """The tiny preset in bf16 on CUDA: fullgraph compile (grouped GEMM, padded-V flash, fused
    head loss) against eager, routing fixed by a large balancing bias as in the CPU test."""
    torch.manual_seed(0)
    args: ModelArgs = PRESETS["tiny"]
    with torch.device("cuda"):
        eager = Transformer(args).to(torch.bfloat16).train()
    compiled = parallelize(copy.deepcopy(eager), SpeedConfig(compile=True, compile_fullgraph=True))
    tokens = torch.randint(0, args.vocab_size, (2, 256), device="cuda")
    fixed = 10.0 * torch.arange(args.n_routed_experts, dtype=torch.float32, device="cuda")
    torch._dynamo.utils.counters.clear()
    outs = []
    for model in (eager, compiled):
        for gate in (m for m in model.modules() if isinstance(m, Gate)):
            gate.e_score_correction_bias.copy_(fixed)
        out = model.loss(tokens)
        out.loss.backward()
        outs.append(out.loss.float().item())
    assert outs[0] == pytest.approx(outs[1], rel=5e-3), outs
    assert sum(torch._dynamo.utils.counters["graph_break"].values()) == 0
    worst = max(
        (_close(q.grad, p.grad), n)
        for (n, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True)
        if p.grad is not None and p.grad.any()
    )
    assert worst[0] < 0.05, f"largest relative gradient difference {worst}"


def test_vllm_engine_generates_and_reloads_on_cuda(tmp_path) -> None:
    """vLLM on the GPU (carried there with ../shared/scripts/device-vllm-prepare; skipped
    without it): a `tiny` checkpoint samples with logprobs, and a reload of the same weights
    repeats a seeded call token for token."""
    pytest.importorskip("vllm")
    from policy.config import PolicyConfig, SamplingConfig
    from policy.engines import make_engine
    from prover.checkpoints import init_checkpoint

    folder = tmp_path / "tiny"
    init_checkpoint("tiny", folder, dtype="bfloat16")
    sampling = SamplingConfig(n=4, temperature=1.0, max_tokens=32, seed=0, ignore_eos=True)
    prompts = ["theorem t (a b : Nat) : a + b = b + a := by", "example : 2 + 2 = 4 := by"]
    config = PolicyConfig(checkpoint=str(folder), engine="vllm", gpu_memory_utilization=0.3)
    with make_engine(config) as engine:
        first = engine.generate(prompts, sampling)
        for result in first:
            assert len(result.completions) == 4, result
            for c in result.completions:
                assert len(c.token_ids) == len(c.logprobs) == 32, c
                assert all(lp <= 0.0 for lp in c.logprobs), c.logprobs
        engine.load_weights(folder)
        again = engine.generate(prompts, sampling)
    tokens = [[c.token_ids for c in r.completions] for r in first]
    assert tokens == [[c.token_ids for c in r.completions] for r in again], "reload changed outputs"
