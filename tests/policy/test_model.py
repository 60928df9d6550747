"""The policy model's math: MLA paths and cache, YaRN against transformers, MTP loss by hand,
loss targets, parameter counts, dtype handling, and the training benchmark's CPU smoke run."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from policy.model import (
    ATTENTION_KERNELS,
    IGNORE_INDEX,
    ModelArgs,
    Transformer,
    count_parameters,
    rope_inv_freq,
    yarn_mscale,
)
from policy.presets import PRESETS, preset
from tests.conftest import REPO_ROOT


def _model(args: ModelArgs, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(args).eval()
    with torch.no_grad():  # a non-zero balancing bias, so routing depends on it
        for module in model.modules():
            if hasattr(module, "e_score_correction_bias"):
                module.e_score_correction_bias.normal_(0, 0.05)
    return model


@pytest.mark.parametrize("q_lora_rank", [16, 0])
def test_absorbed_attention_equals_naive(micro_args: ModelArgs, q_lora_rank: int) -> None:
    naive = _model(dataclasses.replace(micro_args, q_lora_rank=q_lora_rank, attn_impl="naive"))
    absorbed = Transformer(dataclasses.replace(naive.args, attn_impl="absorb")).eval()
    absorbed.load_state_dict(naive.state_dict())
    tokens = torch.randint(0, micro_args.vocab_size, (2, 24))
    with torch.no_grad():
        a, b = naive(tokens), absorbed(tokens)
    err = (a - b).abs().max().item()
    assert err < 1e-5 * a.abs().max().item(), f"absorbed vs naive logits differ by {err}"


@pytest.mark.parametrize("attn_impl", ["naive", "absorb"])
def test_incremental_decoding_with_cache_matches_full_forward(
    micro_args: ModelArgs, attn_impl: str
) -> None:
    model = _model(dataclasses.replace(micro_args, attn_impl=attn_impl))
    tokens = torch.randint(0, micro_args.vocab_size, (3, 20))
    with torch.no_grad():
        full = model(tokens)
        pieces = []
        with model.kv_cache(max_batch_size=4, max_seq_len=32):
            # prefill 7 tokens, then a 3-token chunk, then one token at a time
            pieces.append(model(tokens[:, :7]))
            pieces.append(model(tokens[:, 7:10], start_pos=7))
            for pos in range(10, 20):
                pieces.append(model(tokens[:, pos : pos + 1], start_pos=pos))
        assert model._caches is None, "the cache must be released when the with block ends"
    stepwise = torch.cat(pieces, dim=1)
    err = (stepwise - full).abs().max().item()
    assert err < 1e-5 * full.abs().max().item(), (
        f"{attn_impl}: cached decoding differs from full forward by {err}"
    )
    if attn_impl == "absorb":
        with model.kv_cache(max_batch_size=1, max_seq_len=8):
            cache = model._caches[0]
            assert set(vars(cache)) == {"latent", "k_pe"}, f"absorb caches {sorted(vars(cache))}"
            assert cache.latent.shape == (1, 8, micro_args.kv_lora_rank), cache.latent.shape


def test_start_pos_without_cache_is_refused(micro_args: ModelArgs) -> None:
    model = _model(micro_args)
    with pytest.raises(ValueError, match="start_pos=3 needs a cache"):
        model(torch.zeros(1, 2, dtype=torch.long), start_pos=3)


@pytest.mark.parametrize(
    "factor, mscale, mscale_all_dim", [(40.0, 1.0, 1.0), (4.0, 0.707, 1.0), (8.0, 1.0, 0.0)]
)
def test_yarn_matches_transformers_rope_init(
    factor: float, mscale: float, mscale_all_dim: float
) -> None:
    from transformers import DeepseekV3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import yarn_apply_mscale

    args = dataclasses.replace(
        PRESETS["tiny"],
        rope_factor=factor,
        original_seq_len=4096,
        max_seq_len=64,
        rope_theta=10000.0,
        mscale=mscale,
        mscale_all_dim=mscale_all_dim,
    )
    rope = {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": factor,
        "original_max_position_embeddings": 4096,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": mscale,
        "mscale_all_dim": mscale_all_dim,
    }
    config = DeepseekV3Config(
        qk_rope_head_dim=64, max_position_embeddings=int(4096 * factor), rope_parameters=rope
    )
    hf_inv_freq, hf_attention_factor = ROPE_INIT_FUNCTIONS["yarn"](config)
    ours = rope_inv_freq(args)
    assert torch.allclose(ours, hf_inv_freq, rtol=1e-6, atol=0), (
        f"inv_freq max diff {(ours - hf_inv_freq).abs().max()}"
    )
    # YaRN keeps the fastest dims and interpolates the slowest by exactly 1/factor.
    plain = rope_inv_freq(dataclasses.replace(args, rope_factor=1.0))
    assert ours[0] == plain[0] and torch.isclose(ours[-1], plain[-1] / factor), (
        ours[[0, -1]],
        plain[[0, -1]],
    )
    # cos/sin magnitude factor and softmax scale, as transformers applies them.
    model = Transformer(args)
    ours_factor = model.rope_cos[5].hypot(model.rope_sin[5])
    assert torch.allclose(ours_factor, torch.full_like(ours_factor, hf_attention_factor)), (
        ours_factor[:3],
        hf_attention_factor,
    )
    hf_scale = yarn_apply_mscale(rope, args.qk_head_dim**-0.5)
    ours_scale = model.layers[0].self_attn.softmax_scale
    assert math.isclose(ours_scale, hf_scale, rel_tol=1e-12), (ours_scale, hf_scale)
    if mscale_all_dim:
        assert ours_scale > args.qk_head_dim**-0.5, "YaRN must raise the softmax scale by mscale^2"
    assert yarn_mscale(1.0) == 1.0 and math.isclose(yarn_mscale(math.e, 2.0), 1.2)


def test_mtp_loss_matches_hand_computation(micro_args: ModelArgs) -> None:
    """DeepSeek-V3 sec. 2.2 with D = 2: depth k combines RMSNorm(h^{k-1}_i) and
    RMSNorm(Emb(t_{i+k})) by M_k, runs its block, shares the head; L = L_main + lambda/D sum L_k."""
    args = dataclasses.replace(micro_args, n_mtp_layers=2, mtp_loss_weight=0.3)
    model = _model(args)
    tokens = torch.randint(0, args.vocab_size, (2, 10))
    seqlen = tokens.shape[1]
    with torch.no_grad():
        out = model.loss(tokens)
        hidden, _ = model.trunk(tokens)
        main = F.cross_entropy(model.lm_head(hidden[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        prev = hidden
        depth_losses = []
        for k, module in enumerate(model.mtp, start=1):
            n = seqlen - k  # positions i with a token t_{i+k}; computed on the sliced sequence
            x = module.eh_proj(
                torch.cat(
                    [module.enorm(model.embed_tokens(tokens[:, k:])), module.hnorm(prev[:, :n])],
                    dim=-1,
                )
            )
            h, _ = module.block(x, model.rope_cos[:n], model.rope_sin[:n])
            prev = module.norm(h)  # (B, n, D)
            logits = model.lm_head(prev[:, : seqlen - k - 1])  # predicts t_{i+k+1}
            depth_losses.append(F.cross_entropy(logits.flatten(0, 1), tokens[:, k + 1 :].flatten()))
        expected_mtp = 0.3 / 2 * (depth_losses[0] + depth_losses[1])
    assert torch.isclose(out.main, main, atol=1e-6), (out.main, main)
    for k, (got, want) in enumerate(zip(out.mtp_depths, depth_losses, strict=True), start=1):
        assert torch.isclose(got, want, atol=1e-5), f"depth {k}: {got} vs {want}"
    assert torch.isclose(out.mtp, expected_mtp, atol=1e-6), (out.mtp, expected_mtp)
    assert torch.isclose(out.loss, main + expected_mtp, atol=1e-5), (out.loss, main + expected_mtp)
    assert out.balance is None, out.balance
    no_mtp = model.loss(tokens, mtp=False)
    assert (
        no_mtp.mtp is None
        and no_mtp.mtp_depths == ()
        and torch.isclose(no_mtp.loss, main, atol=1e-6)
    )


def test_loss_targets_ignore_positions(micro_args: ModelArgs) -> None:
    model = _model(dataclasses.replace(micro_args, n_mtp_layers=0))
    tokens = torch.randint(0, micro_args.vocab_size, (2, 8))
    targets = torch.full_like(tokens, IGNORE_INDEX)
    targets[0, 3], targets[1, 5] = 7, 11  # only two scored positions
    with torch.no_grad():
        got = model.loss(tokens, targets=targets).loss
        logits = model(tokens)
        want = (
            F.cross_entropy(logits[0, 3], torch.tensor(7))
            + F.cross_entropy(logits[1, 5], torch.tensor(11))
        ) / 2
    assert torch.isclose(got, want, atol=1e-6), (got, want)
    with pytest.raises(ValueError, match=r"targets \(2, 7\) must match tokens \(2, 8\)"):
        model.loss(tokens, targets=targets[:, :7])


def test_sequence_balance_loss_is_added_in_training(micro_args: ModelArgs) -> None:
    model = _model(dataclasses.replace(micro_args, seq_aux_loss_alpha=0.01)).train()
    out = model.loss(torch.randint(0, micro_args.vocab_size, (2, 12)))
    # 2 MoE layers + 1 MTP block; each term is alpha * sum f_i P_i with sum f_i P_i ~ 1 near balance
    assert (
        out.balance is not None and 0 < out.balance.item() < 0.01 * 3 * micro_args.n_routed_experts
    ), out.balance
    assert torch.isclose(out.loss, out.main + out.mtp + out.balance), out
    out.loss.backward()
    grad = model.layers[1].mlp.gate.weight.grad
    assert grad is not None and grad.abs().sum() > 0, (
        "the balance loss must reach the router weights"
    )
    assert model.eval().loss(torch.randint(0, micro_args.vocab_size, (2, 12))).balance is None


@pytest.mark.parametrize("q_lora_rank, n_mtp", [(16, 1), (0, 2)])
def test_count_parameters_matches_the_module(
    micro_args: ModelArgs, q_lora_rank: int, n_mtp: int
) -> None:
    args = dataclasses.replace(micro_args, q_lora_rank=q_lora_rank, n_mtp_layers=n_mtp)
    model = Transformer(args)
    counts = count_parameters(model)
    numel = sum(p.numel() for p in model.parameters())
    main = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mtp."))
    assert counts["total_with_mtp"] == numel, (counts, numel)
    assert counts["total"] == main, (counts["total"], main)
    expert = 3 * args.dim * args.moe_inter_dim
    inactive = (
        (args.n_layers - args.n_dense_layers)
        * (args.n_routed_experts - args.n_activated_experts)
        * expert
    )
    assert counts["active"] == counts["total"] - inactive, counts


def test_presets_sizes() -> None:
    small = count_parameters(PRESETS["small"])
    # ../shared/MACHINES.md: the measured transformers configuration has 684M total / 200M active
    assert round(small["total"] / 1e6) == 684 and round(small["active"] / 1e6) == 200, small
    tiny = count_parameters(PRESETS["tiny"])
    assert tiny["total_with_mtp"] < 10e6, tiny
    t = PRESETS["tiny"]
    assert (t.qk_nope_head_dim, t.qk_rope_head_dim, t.v_head_dim, t.kv_lora_rank) == (
        128,
        64,
        128,
        512,
    ), t
    assert count_parameters(PRESETS["base"])["total"] > 3 * small["total"]
    assert preset("tiny", vocab_size=300).vocab_size == 300
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")


def test_invalid_args_are_reported_with_values() -> None:
    with pytest.raises(ValueError) as info:
        ModelArgs(
            n_routed_experts=30, n_expert_groups=4, n_activated_experts=40, qk_rope_head_dim=63
        )
    message = str(info.value)
    for part in ("qk_rope_head_dim=63", "n_activated_experts=40", "n_routed_experts=30"):
        assert part in message, message


def test_bfloat16_model_keeps_float32_bias_and_rope(micro_args: ModelArgs) -> None:
    model = Transformer(micro_args).to(torch.bfloat16)
    gate = model.layers[1].mlp.gate
    dtypes = (
        gate.e_score_correction_bias.dtype,
        gate.tokens_per_expert.dtype,
        model.rope_cos.dtype,
        gate.weight.dtype,
    )
    assert dtypes == (torch.float32, torch.float32, torch.float32, torch.bfloat16), dtypes
    logits = model(torch.randint(0, micro_args.vocab_size, (1, 5)))
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all(), logits.dtype


def test_train_benchmark_reports_a_slow_machines_mfu_without_rounding_it_to_zero() -> None:
    from benchmarks.policy_train import mfu

    # The tiny preset trained on a 2-core AVX2 CPU: ~3.1M active parameters at ~165 tokens/s,
    # against the H100's 989 TFLOP/s peak, is an MFU of ~3.1e-6 (5 fixed decimals gave 0.0).
    expected = 6 * 3_100_000 * 165.0 / 989e12
    got = mfu(3_100_000, 165.0, 989.0)
    assert got > 0 and got == pytest.approx(expected, rel=1e-3), f"mfu {got!r}, expected {expected:.4g}"


@pytest.mark.slow
def test_train_benchmark_cpu_smoke(tmp_path) -> None:
    out = tmp_path / "policy_train.json"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.policy_train",
        "--device",
        "cpu",
        "--preset",
        "tiny",
        "--batch",
        "2",
        "--seq",
        "128",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--profile",
        "--profile-top",
        "5",
        "--attention-table",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    rows = {(r["model"], r["mode"]): r for r in report["results"]}
    assert set(rows) == {
        ("ours", "eager"),
        ("ours+mtp", "eager"),
        ("transformers", "eager"),
        ("torchtitan", "eager"),
    }, rows
    for name in ("ours", "ours+mtp", "transformers"):
        row = rows[(name, "eager")]
        assert "error" not in row, row
        assert row["tokens_per_s"] > 0 and row["step_s"] > 0, row
        # MFU follows from the row's own numbers at any machine speed (a slow AVX2 CPU: ~3e-6).
        expected_mfu = 6 * row["params_active"] * row["tokens_per_s"] / (989.0 * 1e12)
        assert 0 < row["mfu"] == pytest.approx(expected_mfu, rel=1e-3), (row["mfu"], expected_mfu)
        assert row["loss_last"] < row["loss_first"] + 0.5, row  # training moves, no blow-up
    assert (
        rows[("ours", "eager")]["params_total"] == rows[("transformers", "eager")]["params_total"]
    ), rows
    assert (
        rows[("ours+mtp", "eager")]["params_active"] > rows[("ours", "eager")]["params_active"]
    ), rows
    titan = rows[("torchtitan", "eager")]
    assert "tokens_per_s" in titan or titan["error"].startswith("ImportError: unavailable"), titan
    for name in ("ours", "transformers"):
        row = rows[(name, "eager")]
        assert row["tokens_per_s"] == pytest.approx(2 * 128 / row["step_s"], rel=1e-4), row
        assert 0 < len(row["profile_top"]) <= 5, row["profile_top"]
    assert report["speedup"]["ours/transformers (eager)"] == pytest.approx(
        rows[("ours", "eager")]["tokens_per_s"] / rows[("transformers", "eager")]["tokens_per_s"],
        rel=1e-2,
    ), report["speedup"]
    kernels = [a["kernel"] for a in report["attention"]]
    assert kernels == [k for k in ATTENTION_KERNELS if k != "auto"], kernels
    for row in report["attention"]:
        assert "error" not in row and row["ms_fwd_bwd"] > 0 and row["ops"], row
        assert row["max_abs_diff"] < 0.05, row  # bf16 against a float32 reference
    fastest = min(report["attention"], key=lambda r: r["ms_fwd_bwd"])["kernel"]
    assert report["config"]["attention_kernel_ours"] == f"tuned: {fastest}", report["config"]
    assert (
        report["config"]["batch"] == 2
        and report["params"]["total"] == count_parameters(PRESETS["tiny"])["total"]
    )

    # A second call resumes: measured rows and the attention table are kept, not re-run;
    # a different configuration is refused.
    again = tmp_path / "again.json"
    resumed = subprocess.run(
        [*cmd[:-1], str(again), "--resume", str(out), "--models", "ours,ours+mtp"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    second = json.loads(again.read_text())
    assert [(r["model"], r["resumed"]) for r in second["results"]] == [
        ("ours", str(out)),
        ("ours+mtp", str(out)),
    ], second["results"]
    assert second["results"][0]["tokens_per_s"] == rows[("ours", "eager")]["tokens_per_s"]
    assert second["attention"] == report["attention"], second["attention"]
    assert second["config"]["attention_kernel_ours"] == report["config"]["attention_kernel_ours"]
    other = subprocess.run(
        [*cmd[:-1], str(again), "--resume", str(out), "--batch", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )
    assert other.returncode != 0 and "configuration differs" in other.stderr, other.stderr[-500:]
