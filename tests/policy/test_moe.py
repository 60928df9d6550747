"""DeepSeekMoE: grouped vs reference experts (forward and backward), the group-limited router,
the balancing bias (choice only, moved toward under-loaded experts by the post-step hook) and
the sequence-wise balance loss."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch

from policy.balancing import (
    expert_load,
    max_violation,
    register_bias_update_hook,
    update_expert_bias,
)
from policy.model import Gate, ModelArgs, Transformer, sequence_balance_loss
from policy.moe import padded_grouped_mm, routed_experts_grouped, routed_experts_loop
from policy.parallelize import SpeedConfig, parallelize


def _routing(n_tokens: int, n_experts: int, top_k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    indices = torch.stack(
        [torch.randperm(n_experts - 1, generator=g)[:top_k] for _ in range(n_tokens)]
    )
    weights = torch.rand(
        n_tokens, top_k, generator=g
    )  # expert n_experts-1 never chosen: an empty group
    return indices, weights


def _experts(n_experts: int, dim: int, inter: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    gate_up = (torch.randn(n_experts, 2 * inter, dim, generator=g) * 0.2).to(dtype).requires_grad_()
    down = (torch.randn(n_experts, dim, inter, generator=g) * 0.2).to(dtype).requires_grad_()
    return gate_up, down


def _forward_backward(fn, x, indices, weights, gate_up, down):
    x = x.detach().clone().requires_grad_()
    weights = weights.detach().clone().requires_grad_()
    gate_up = gate_up.detach().clone().requires_grad_()
    down = down.detach().clone().requires_grad_()
    out = fn(x, indices, weights, gate_up, down)
    grad = torch.linspace(-1, 1, out.numel()).view_as(out).to(out.dtype)
    (out * grad).sum().backward()
    return out.detach(), x.grad, weights.grad, gate_up.grad, down.grad


@pytest.mark.parametrize("align", [1, 16])
def test_grouped_experts_equal_loop_forward_and_backward(align: int) -> None:
    """Several routings in one process: the allocator then hands back used memory, so a read
    of rows the GEMMs never wrote shows up as garbage (a fresh process gets zeroed pages)."""
    n_tokens, n_experts, top_k, dim, inter = 37, 8, 3, 24, 16
    gate_up, down = _experts(n_experts, dim, inter)
    for seed in range(6):
        x = torch.randn(n_tokens, dim, generator=torch.Generator().manual_seed(seed))
        indices, weights = _routing(n_tokens, n_experts, top_k, seed=seed)
        grouped = _forward_backward(
            lambda *a: routed_experts_grouped(*a, align=align), x, indices, weights, gate_up, down
        )
        loop = _forward_backward(routed_experts_loop, x, indices, weights, gate_up, down)
        for name, got, want in zip(
            ("out", "d_x", "d_weights", "d_gate_up", "d_down"), grouped, loop, strict=True
        ):
            err = (got - want).abs().max().item()
            assert err < 1e-5 * max(want.abs().max().item(), 1.0), (
                f"align={align} seed={seed} {name}: max diff {err}"
            )
        assert loop[3][n_experts - 1].abs().max() == 0, "the unused expert must get no gradient"


def test_padded_fallback_equals_loop_and_bf16_grouped_is_close() -> None:
    torch.manual_seed(0)
    n_tokens, n_experts, top_k, dim, inter = 29, 8, 2, 16, 8
    x = torch.randn(n_tokens, dim)
    indices, weights = _routing(n_tokens, n_experts, top_k, seed=1)
    gate_up, down = _experts(n_experts, dim, inter, seed=1)
    rows = torch.randn(40, dim)
    offs = torch.tensor([5, 5, 12, 30, 31, 31, 40, 40], dtype=torch.int32)
    w = torch.randn(n_experts, dim, inter)
    starts = [0, *offs.tolist()[:-1]]
    want = torch.cat(
        [rows[s:e] @ w[i] for i, (s, e) in enumerate(zip(starts, offs.tolist(), strict=True))]
    )
    got = padded_grouped_mm(rows, w, offs)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    ref = routed_experts_loop(x, indices, weights, gate_up.detach(), down.detach())
    bf16 = routed_experts_grouped(
        x.bfloat16(), indices, weights, gate_up.detach().bfloat16(), down.detach().bfloat16()
    )
    err = (bf16.float() - ref).abs().max().item()
    assert err < 0.03 * ref.abs().max().item(), (
        f"bf16 grouped vs fp32 loop: {err} (scale {ref.abs().max().item()})"
    )


def test_whole_model_grouped_equals_loop(micro_args: ModelArgs) -> None:
    args = dataclasses.replace(micro_args, seq_aux_loss_alpha=1e-2)
    torch.manual_seed(0)
    grouped = Transformer(args).train()
    loop = Transformer(dataclasses.replace(args, moe_impl="loop")).train()
    loop.load_state_dict(grouped.state_dict())
    tokens = torch.randint(0, args.vocab_size, (2, 16))
    results = []
    for model in (grouped, loop):
        out = model.loss(tokens)
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (l1, g1), (l2, g2) = results
    assert torch.isclose(l1, l2, atol=1e-6), (l1, l2)
    worst = max(((g1[n] - g2[n]).abs().max().item(), n) for n in g1)
    assert worst[0] < 1e-6, f"largest gradient difference {worst}"


def test_activation_checkpointing_keeps_loss_and_gradients(micro_args: ModelArgs) -> None:
    torch.manual_seed(0)
    plain = Transformer(micro_args).train()
    tokens = torch.randint(0, micro_args.vocab_size, (2, 16))
    for mode in ("full", "selective"):
        wrapped = parallelize(copy.deepcopy(plain), SpeedConfig(activation_checkpointing=mode))
        assert list(wrapped.state_dict()) == list(plain.state_dict()), (
            "wrapping must keep state-dict names"
        )
        losses, grads = [], []
        for model in (plain, wrapped):
            model.zero_grad()
            loss = model.loss(tokens).loss
            loss.backward()
            losses.append(loss.detach())
            grads.append([p.grad for p in model.parameters()])
        assert torch.equal(losses[0], losses[1]), (mode, losses)
        diff = max((a - b).abs().max().item() for a, b in zip(*grads, strict=True))
        assert diff < 1e-6, f"{mode}: gradient difference {diff}"


def _reference_route(scores: torch.Tensor, bias: torch.Tensor, args: ModelArgs):
    """Brute force over every allowed group set: DeepSeek-V3's routing spelled out per token."""
    per_group = args.n_routed_experts // args.n_expert_groups
    chosen = []
    for row in scores + bias:
        group_score = [
            sorted(row[g * per_group : (g + 1) * per_group].tolist())[-2:]
            for g in range(args.n_expert_groups)
        ]
        best_groups = max(
            itertools.combinations(range(args.n_expert_groups), args.n_limited_groups),
            key=lambda gs: sum(sum(group_score[g]) for g in gs),
        )
        allowed = [e for g in best_groups for e in range(g * per_group, (g + 1) * per_group)]
        chosen.append(
            sorted(sorted(allowed, key=lambda e: -row[e].item())[: args.n_activated_experts])
        )
    return chosen


def test_gate_routes_group_limited_top_k(micro_args: ModelArgs) -> None:
    torch.manual_seed(3)
    gate = Gate(micro_args).eval()
    torch.nn.init.normal_(gate.weight, std=0.5)
    gate.e_score_correction_bias.normal_(0, 0.1)
    x = torch.randn(64, micro_args.dim)
    weights, indices, scores = gate(x)
    want = _reference_route(scores, gate.e_score_correction_bias, micro_args)
    got = [sorted(row) for row in indices.tolist()]
    assert got == want, [
        (i, g, w) for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w
    ][:3]
    picked = scores.gather(1, indices)
    expected = picked / picked.sum(-1, keepdim=True) * micro_args.route_scale
    assert torch.allclose(weights, expected, atol=1e-7), (weights[:2], expected[:2])


def test_bias_changes_choices_not_weights(micro_args: ModelArgs) -> None:
    torch.manual_seed(4)
    gate = Gate(micro_args).eval()
    torch.nn.init.normal_(gate.weight, std=0.5)
    x = torch.randn(32, micro_args.dim)
    w0, i0, s0 = gate(x)
    # A uniform bias keeps every choice: the weights must be bit-identical (unbiased scores).
    gate.e_score_correction_bias.fill_(0.3)
    w1, i1, _ = gate(x)
    assert torch.equal(i0.sort(-1).values, i1.sort(-1).values) and torch.equal(
        w0.gather(1, i0.argsort(-1)), w1.gather(1, i1.argsort(-1))
    ), "same choices must give identical weights"
    # A large bias on expert 5 forces it in; its weight still comes from its unbiased score.
    gate.e_score_correction_bias.zero_()
    gate.e_score_correction_bias[5] = 10.0
    w2, i2, s2 = gate(x)
    assert (i2 == 5).any(-1).all(), "every token must now choose expert 5"
    picked = s2.gather(1, i2)
    assert torch.allclose(w2, picked / picked.sum(-1, keepdim=True) * micro_args.route_scale), (
        "weights must ignore the bias"
    )
    assert not (i0 == 5).any(-1).all(), "expert 5 was not chosen by every token before the bias"


def test_balancing_hook_moves_bias_toward_underloaded_experts(micro_args: ModelArgs) -> None:
    args = dataclasses.replace(micro_args, bias_update_speed=0.02)
    torch.manual_seed(5)
    model = Transformer(args)
    gate = model.layers[1].mlp.gate
    gate.e_score_correction_bias[0] = (
        0.3  # start far from balance: nearly every token picks expert 0
    )
    tokens = torch.randint(0, args.vocab_size, (4, 32))
    model.eval()
    model(tokens)
    assert expert_load(model).sum() == 0, "eval forward passes must not count tokens"
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # weights fixed: only the bias moves
    handle = register_bias_update_hook(optimizer, model)
    model(tokens)
    load = expert_load(model)[0].clone()
    assert load.sum() == tokens.numel() * args.n_activated_experts, load
    optimizer.step()
    expected = 0.02 * torch.sign(load.mean() - load)
    expected[0] += 0.3
    assert torch.allclose(gate.e_score_correction_bias, expected), (
        gate.e_score_correction_bias,
        load,
    )
    assert load[0] == load.max() and gate.e_score_correction_bias[0] < 0.3, (
        "the busiest expert's bias must fall"
    )
    assert expert_load(model).sum() == 0, "the hook must reset the counts"
    first = max_violation(load[None])[0].item()
    late_load = torch.zeros_like(load)
    with torch.no_grad():  # counting needs training mode, not gradients
        for step in range(50):
            model(tokens)
            if (
                step >= 40
            ):  # the sign update oscillates by +-gamma: judge the average of the last steps
                late_load += expert_load(model)[0]
            optimizer.step()
    last = max_violation(late_load[None])[0].item()
    assert last < first / 3, f"MaxVio {first:.2f} -> {last:.2f}: balancing did not balance"
    handle.remove()
    model(tokens)
    optimizer.step()
    assert expert_load(model).sum() > 0, "after handle.remove() the hook must no longer run"
    before = gate.e_score_correction_bias.clone()
    update_expert_bias(model, gamma=0.0)
    assert torch.equal(before, gate.e_score_correction_bias) and expert_load(model).sum() == 0


def test_sequence_balance_loss_by_hand() -> None:
    # One sequence, T=2 tokens, E=4, k=1: s' rows sum to 1 already.
    scores = torch.tensor([[[0.2, 0.2, 0.4, 0.2], [0.1, 0.3, 0.3, 0.3]]])
    indices = torch.tensor([[[2], [1]]])
    # P = [0.15, 0.25, 0.35, 0.25]; f = E/(k T) * counts = 2 * [0, 1, 1, 0]; sum f P = 1.2
    got = sequence_balance_loss(scores, indices, n_experts=4, top_k=1)
    assert torch.isclose(got, torch.tensor(1.2)), got
    # Unnormalized affinities are normalized per token first: doubling them changes nothing.
    assert torch.isclose(sequence_balance_loss(2 * scores, indices, 4, 1), got)


@pytest.mark.slow
def test_moe_benchmark_times_every_implementation_on_equal_outputs(tmp_path) -> None:
    import json
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    out = tmp_path / "moe.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.moe", "--device", "cpu",
         "--preset", "tiny", "--tokens", "64", "--repeats", "1", "--loops", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {r["implementation"]: r for r in report["results"]}
    assert list(rows) == ["ours", "transformers", "transformers-eager", "ours-loop"], rows
    for row in rows.values():
        assert "error" not in row and row["ms_fwd_bwd"] > 0, row
        assert row["max_rel_diff_vs_ours"] < 0.02, row  # bf16 rounding only
    assert set(report["speedup"]) == {f"ours/{n}" for n in rows if n != "ours"}, report["speedup"]
    assert report["config"]["tokens"] == 64 and report["config"]["experts"] == 8, report["config"]


def test_max_violation_by_hand_leaves_out_layers_without_tokens() -> None:
    """MaxVio = max load / mean load - 1 per layer (Wang et al.); a layer that routed no token
    (an MTP layer during an RL step) has none, rather than a meaningless -1."""
    load = torch.tensor([[3.0, 1.0], [0.0, 0.0], [2.0, 2.0]])
    got = max_violation(load)
    assert got.tolist() == [0.5, 0.0], got
    assert max_violation(torch.zeros(2, 4)).numel() == 0
