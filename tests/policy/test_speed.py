"""The training-speed choices compute the same function as the plain model: every attention
kernel, and the compiled blocks and head loss (one graph each, no breaks). The GPU benchmark's
harness is run on CPU in test_model.py."""

from __future__ import annotations

import copy

import pytest
import torch

from policy.model import ATTENTION_KERNELS, Gate, ModelArgs, Transformer, attention
from policy.parallelize import SpeedConfig, parallelize
from policy.profiling import fastest_attention_kernel, significant, time_attention_kernels


def _reference_attention(q, k, v, scale, mask):
    scores = (q @ k.transpose(-1, -2)) * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


@pytest.mark.parametrize("kernel", ATTENTION_KERNELS)
@pytest.mark.parametrize("start_pos", [0, 5])
def test_attention_kernels_match_reference(kernel: str, start_pos: int) -> None:
    """MLA shapes (q/k head dim 12 > v head dim 8): output and all three gradients equal a
    hand-written softmax attention, causal from 0 or with an explicit mask after a prefix."""
    torch.manual_seed(0)
    b, h, t, dqk, dv = 2, 3, 7, 12, 8
    keys = start_pos + t
    q = torch.randn(b, h, t, dqk, dtype=torch.float64, requires_grad=True)
    k = torch.randn(b, h, keys, dqk, dtype=torch.float64, requires_grad=True)
    v = torch.randn(b, h, keys, dv, dtype=torch.float64, requires_grad=True)
    mask = torch.arange(keys)[None, :] <= (start_pos + torch.arange(t))[:, None]
    scale = dqk**-0.5
    out = attention(
        q,
        k,
        v,
        scale=scale,
        is_causal=start_pos == 0,
        mask=None if start_pos == 0 else mask,
        kernel=kernel,  # type: ignore[arg-type]
    )
    ref = _reference_attention(q, k, v, scale, mask)
    assert out.shape == (b, h, t, dv), out.shape
    assert torch.allclose(out, ref, atol=1e-10), (out - ref).abs().max()
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    for name, g, w in zip("qkv", got, want, strict=True):
        assert torch.allclose(g, w, atol=1e-10), (
            f"{kernel}: d{name} differs by {(g - w).abs().max()}"
        )


def test_attention_kernel_is_set_on_every_mla(micro_args: ModelArgs) -> None:
    torch.manual_seed(0)
    plain = Transformer(micro_args).train()
    tokens = torch.randint(0, micro_args.vocab_size, (2, 16))
    reference = plain.loss(tokens).loss
    for kernel in ATTENTION_KERNELS:
        model = parallelize(copy.deepcopy(plain), SpeedConfig(attention_kernel=kernel))
        kernels = {m.attention_kernel for m in model.modules() if hasattr(m, "attention_kernel")}
        assert kernels == {kernel}, kernels
        loss = model.loss(tokens).loss
        assert torch.allclose(loss, reference, atol=1e-6), (kernel, loss, reference)


@pytest.mark.slow
def test_compiled_model_is_one_graph_per_block_and_matches_eager(micro_args: ModelArgs) -> None:
    """bf16 (the training dtype; the native grouped GEMM): compile every block and the head
    loss with fullgraph=True, so any graph break is an error; loss and gradients match eager.

    bf16 rounding flips near-tied routing choices between any two implementations (seen: 10-20%
    gradient differences in the layer where a token flips), so gradients are compared under a
    balancing bias large enough to fix every token's experts; losses also with free routing."""
    torch.manual_seed(0)
    eager = Transformer(micro_args).to(torch.bfloat16).train()
    compiled = parallelize(copy.deepcopy(eager), SpeedConfig(compile=True, compile_fullgraph=True))
    assert list(compiled.state_dict()) == list(eager.state_dict())
    tokens = torch.randint(0, micro_args.vocab_size, (2, 32))
    gates = [[m for m in model.modules() if isinstance(m, Gate)] for model in (eager, compiled)]
    fixed = 10.0 * torch.arange(micro_args.n_routed_experts, dtype=torch.float32)
    torch._dynamo.utils.counters.clear()
    for bias in (fixed, torch.zeros_like(fixed)):
        losses = []
        for model, model_gates in zip((eager, compiled), gates, strict=True):
            for gate in model_gates:
                gate.e_score_correction_bias.copy_(bias)
            model.zero_grad(set_to_none=True)
            out = model.loss(tokens)
            out.loss.backward()
            losses.append(out)
        for field in ("loss", "main", "mtp"):
            a, b = (getattr(o, field).float() for o in losses)
            assert torch.allclose(a, b, rtol=2e-3), (field, bias[:3], a, b)
        if bias.any():  # routing fixed: every gradient agrees to bf16 precision
            worst = max(
                (
                    (p.grad.float() - q.grad.float()).norm().item()
                    / (p.grad.float().norm().item() + 1e-12),
                    n,
                )
                for (n, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True)
                if p.grad is not None and p.grad.any()
            )
            assert worst[0] < 0.03, f"largest relative gradient difference {worst}"
    breaks = torch._dynamo.utils.counters["graph_break"]
    assert sum(breaks.values()) == 0, dict(breaks)


def test_speed_config_rejects_unknown_kernel() -> None:
    with pytest.raises(ValueError, match="attention_kernel"):
        SpeedConfig(attention_kernel="fastest")  # type: ignore[arg-type]


def test_attention_timing_covers_every_kernel_and_picks_the_fastest(micro_args: ModelArgs) -> None:
    rows = time_attention_kernels(micro_args, 2, 16, device="cpu", dtype=torch.float32, calls=2)
    assert [r["kernel"] for r in rows] == [k for k in ATTENTION_KERNELS if k != "auto"], rows
    for row in rows:
        assert "error" not in row, row
        assert row["ms_fwd_bwd"] > 0 and row["tflops"] >= 0 and row["ops"], row
        assert row["max_abs_diff"] < 1e-5, row  # float32 against the float32 reference
    fastest = fastest_attention_kernel(rows)
    assert fastest == min(rows, key=lambda r: r["ms_fwd_bwd"])["kernel"], (fastest, rows)
    failed = [{"kernel": "cudnn", "error": "RuntimeError: no kernel"}]
    assert fastest_attention_kernel(failed) == "auto"
    assert fastest_attention_kernel([*failed, {"kernel": "flash", "ms_fwd_bwd": 1.0}]) == "flash"


@pytest.mark.parametrize(
    ("value", "digits", "expected"),
    [(3.1046e-6, 3, 3.1e-6), (0.000004, 4, 4e-6), (123456.7, 4, 123500.0), (0.0, 4, 0.0), (0.98765, 2, 0.99)],
)
def test_significant_keeps_small_measurements(value: float, digits: int, expected: float) -> None:
    got = significant(value, digits)
    assert got == pytest.approx(expected, rel=1e-12, abs=0.0), f"significant({value}, {digits}) = {got!r}"
