"""The objective's options against numbers computed by hand from each paper's formula.

The expected values below are written out from the formulas (cited per test), not taken from
the code: e.g. a ratio of 1.5 with advantage +1 under eps_high = 0.28 gives -min(1.5, 1.28) = -1.28.
"""

from __future__ import annotations

import math
from typing import get_args

import pytest
import torch

from prover.config import (
    AdvantageEstimator,
    GRPOConfig,
    LossAggregation,
    PolicyLossName,
    RolloutCorrection,
)
from prover.rl.losses import (
    ADVANTAGE_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    ROLLOUT_CORRECTIONS,
    aggregate,
    grpo_loss,
    kl_k3,
    rollout_correction,
)

LN = math.log


def _close(got: torch.Tensor, want: list | float, atol: float = 1e-5) -> None:
    want_t = torch.tensor(want, dtype=got.dtype)
    assert torch.allclose(got, want_t, atol=atol), f"got {got.tolist()}, want {want_t.tolist()}"


def test_registries_hold_exactly_the_config_names() -> None:
    assert set(ADVANTAGE_ESTIMATORS) == set(get_args(AdvantageEstimator)), ADVANTAGE_ESTIMATORS
    assert set(POLICY_LOSSES) == set(get_args(PolicyLossName)), POLICY_LOSSES
    assert set(LOSS_AGGREGATIONS) == set(get_args(LossAggregation)), LOSS_AGGREGATIONS
    assert set(ROLLOUT_CORRECTIONS) == set(get_args(RolloutCorrection)), ROLLOUT_CORRECTIONS


# --- advantages ---------------------------------------------------------------------------------

REWARDS = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
GROUPS = torch.tensor([0, 1, 0, 0, 1, 0])  # group 0: rewards 1, 0, 0, 0; group 1: 1, 0 (interleaved)


def test_grpo_advantage_is_mean_std_normalised_within_group() -> None:
    """DeepSeekMath 4.1.2: A = (r - mean) / std. Group 0 {1,0,0,0}: mean 0.25, unbiased std
    sqrt((0.75^2 + 3 * 0.25^2) / 3) = sqrt(0.25) = 0.5 -> 1.5, -0.5. Group 1 {1,0}: mean 0.5,
    std sqrt((0.25 + 0.25) / 1) = 0.7071 -> +-0.7071."""
    got = ADVANTAGE_ESTIMATORS["grpo"](REWARDS, GROUPS, 0.0)
    _close(got, [1.5, 0.5 / math.sqrt(0.5), -0.5, -0.5, -0.5 / math.sqrt(0.5), -0.5])
    with_eps = ADVANTAGE_ESTIMATORS["grpo"](REWARDS, GROUPS, 0.1)
    _close(with_eps[0], 0.75 / 0.6)


def test_dr_grpo_advantage_drops_the_std() -> None:
    """Dr. GRPO: A = r - mean, no std scaling."""
    got = ADVANTAGE_ESTIMATORS["dr_grpo"](REWARDS, GROUPS, 1e-6)
    _close(got, [0.75, 0.5, -0.25, -0.25, -0.5, -0.25])


def test_all_equal_group_has_zero_advantage() -> None:
    """(Dynamic sampling drops such groups: prover.rl.rewards.informative_groups, tested there.)"""
    rewards, group = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5]), torch.tensor([0, 0, 1, 1, 2, 2])
    _close(ADVANTAGE_ESTIMATORS["grpo"](rewards, group, 1e-6)[[0, 1, 4, 5]], [0.0, 0.0, 0.0, 0.0])


# --- policy losses ------------------------------------------------------------------------------
# Two sequences of two tokens; ratios r = pi / pi_old: seq 0 [1.5, 0.5] with A = +1,
# seq 1 [1.1, 0.7] with A = -1.
OLD = torch.tensor([[-1.0, -2.0], [-0.5, -1.5]])
RATIOS = torch.tensor([[1.5, 0.5], [1.1, 0.7]])
ADV = torch.tensor([1.0, -1.0])
MASK = torch.ones(2, 2)


def _logp() -> torch.Tensor:
    return (OLD + RATIOS.log()).requires_grad_(True)


def test_vanilla_clip_higher_per_token_values_and_gradients() -> None:
    """DAPO eq. 10 / GRPO: loss = -min(r A, clip(r, 1 - 0.2, 1 + 0.28) A) = max(-r A, -clip(r) A).
    r=1.5, A=+1: max(-1.5, -1.28) = -1.28 (clipped, no gradient); r=0.5, A=+1: max(-0.5, -0.8)
    = -0.5 (gradient -A r = -0.5); r=1.1, A=-1: max(1.1, 1.1) = 1.1 (gradient 1.1); r=0.7, A=-1:
    max(0.7, 0.8) = 0.8 (clipped). Clip fraction 2/4."""
    logp = _logp()
    out = POLICY_LOSSES["vanilla"](logp, OLD, ADV, MASK, 0.2, 0.28)
    _close(out.per_token, [[-1.28, -0.5], [1.1, 0.8]])
    _close(out.metrics["clip_fraction"], 0.5)
    out.per_token.sum().backward()
    _close(logp.grad, [[0.0, -0.5], [1.1, 0.0]])
    # symmetric clipping (PPO/GRPO eps = 0.2): the 1.5 ratio is cut at 1.2 instead
    _close(POLICY_LOSSES["vanilla"](_logp(), OLD, ADV, MASK, 0.2, 0.2).per_token[0, 0], -1.2)


def test_cispo_weights_logprob_by_clipped_stopgrad_ratio() -> None:
    """MiniMax-M1 eq. 4-5: loss = -sg(clip(r, 1 - eps_low, 1 + eps_high)) A log pi, eps_low = 1
    (no lower bound), eps_high = 0.28: weights [1.28, 0.5], [1.1, 0.7]; gradient -w A:
    [-1.28, -0.5], [1.1, 0.7]; no token loses its gradient, 1/4 of ratios lie outside."""
    logp = _logp()
    out = POLICY_LOSSES["cispo"](logp, OLD, ADV, MASK, 1.0, 0.28)
    log_pi = OLD + RATIOS.log()
    want = [[-1.28 * 1 * log_pi[0, 0].item(), -0.5 * 1 * log_pi[0, 1].item()],
            [1.1 * log_pi[1, 0].item(), 0.7 * log_pi[1, 1].item()]]
    _close(out.per_token, want)
    out.per_token.sum().backward()
    _close(logp.grad, [[-1.28, -0.5], [1.1, 0.7]])
    _close(out.metrics["clip_fraction"], 0.25)


def test_gspo_sequence_ratio_clip_and_gradient() -> None:
    """GSPO eq. 5-7: s_i = (prod_t r_t)^(1/|y_i|). Seq 0: sqrt(1.5 * 0.5) = sqrt(0.75) = 0.866025,
    A=+1, bounds [1 - 3e-4, 1 + 4e-4]: max(-0.866025, -0.9997) = -0.866025 (unclipped). Seq 1
    (third position padding): sqrt(1.1 * 0.7) = sqrt(0.77) = 0.877496, A=-1: max(0.877496, 0.9997)
    = 0.9997 (clipped). seq-mean-token-mean: (-0.866025 + 0.9997) / 2 = 0.0668375. Gradient of
    J = 1/2 sum_i -A_i s_i w.r.t. log pi of seq 0's tokens: -1/2 * s_0 / |y_0| = -0.216506 each;
    seq 1 is clipped: 0."""
    old = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -1.5, -3.0]])
    ratios = torch.tensor([[1.5, 0.5, 1.0], [1.1, 0.7, 9.0]])  # 9.0 sits on padding
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    logp = (old + ratios.log()).requires_grad_(True)
    out = POLICY_LOSSES["gspo"](logp, old, ADV, mask, 3e-4, 4e-4)
    _close(out.per_token * mask, [[-math.sqrt(0.75), -math.sqrt(0.75), 0.0], [0.9997, 0.9997, 0.0]])
    loss = aggregate(out.per_token, mask, "seq-mean-token-mean")
    _close(loss, (-math.sqrt(0.75) + 0.9997) / 2)
    loss.backward()
    _close(logp.grad, [[-0.25 * math.sqrt(0.75), -0.25 * math.sqrt(0.75), 0.0], [0.0, 0.0, 0.0]])
    _close(out.metrics["clip_fraction"], 0.5)  # one of two sequences


# --- aggregation --------------------------------------------------------------------------------


def test_aggregation_modes() -> None:
    """per-token [[1, 2, 3], [4, pad, pad]]: token-mean (1+2+3+4)/4 = 2.5 (DAPO); seq-mean-token-mean
    (6/3 + 4/1)/2 = 3.0 (GRPO); seq-mean-token-sum-norm (6 + 4)/(2 * 10) = 0.5 with budget 10
    (Dr. GRPO)."""
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    _close(aggregate(per_token, mask, "token-mean"), 2.5)
    _close(aggregate(per_token, mask, "seq-mean-token-mean"), 3.0)
    _close(aggregate(per_token, mask, "seq-mean-token-sum-norm", norm_length=10), 0.5)
    # Micro-batches with the whole batch's denominators add up to the whole batch's loss.
    for mode in LOSS_AGGREGATIONS:
        whole = aggregate(per_token, mask, mode, norm_length=10)
        parts = sum(aggregate(per_token[i:i + 1], mask[i:i + 1], mode, n_sequences=2, n_tokens=4.0, norm_length=10)
                    for i in range(2))
        _close(parts, whole.item())
    with pytest.raises(ValueError, match="norm_length"):
        aggregate(per_token, mask, "seq-mean-token-sum-norm")


# --- KL -----------------------------------------------------------------------------------------


def test_k3_kl() -> None:
    """Schulman's k3 with x = log(pi_ref / pi): exp(x) - x - 1. pi = 0.5, pi_ref = 0.25: 0.5 + ln 2 - 1
    = 0.193147; pi = 0.25, pi_ref = 0.5: 2 - ln 2 - 1 = 0.306853; equal: 0."""
    logp = torch.tensor([LN(0.5), LN(0.25), LN(0.3)])
    ref = torch.tensor([LN(0.25), LN(0.5), LN(0.3)])
    _close(kl_k3(logp, ref), [0.193147, 0.306853, 0.0])


def test_grpo_loss_adds_beta_k3_and_is_weights() -> None:
    """On-policy (r = 1), A = [+1, -1], token-mean: policy term per token -A; times IS weights
    [[2, 0], [1, 1]]; plus 0.1 * k3 with the reference at half / double the probability:
    [[-2 + 0.1*0.193147, 0 + 0.1*0.193147], [1 + 0.1*0.306853, 1 + 0.1*0.306853]] / 4."""
    logp = torch.tensor([[LN(0.5), LN(0.5)], [LN(0.25), LN(0.25)]], requires_grad=True)
    ref = torch.tensor([[LN(0.25), LN(0.25)], [LN(0.5), LN(0.5)]])
    weights = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    loss, metrics = grpo_loss(GRPOConfig(kl_coef=0.1), logp=logp, old_logp=logp.detach(), advantages=ADV,
                              mask=MASK, is_weights=weights, ref_logp=ref)
    want = (-2 + 0.1 * 0.193147 + 0.1 * 0.193147 + 2 * (1 + 0.1 * 0.306853)) / 4
    _close(loss, want)
    _close(metrics["kl_k3"], (2 * 0.193147 + 2 * 0.306853) / 4)
    with pytest.raises(ValueError, match="kl_coef = 0.1 needs the reference"):
        grpo_loss(GRPOConfig(kl_coef=0.1), logp=logp, old_logp=logp.detach(), advantages=ADV, mask=MASK)


# --- rollout/learner mismatch -------------------------------------------------------------------
# w = pi_learner / pi_engine per token: seq 0 [3.0, 1.5], seq 1 [0.4, 1.0, (padding 50)].
ROLLOUT = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]])
W = torch.tensor([[3.0, 1.5, 1.0], [0.4, 1.0, 50.0]])
PAD_MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])


def _correct(mode: str, level: str) -> tuple[torch.Tensor, dict]:
    return rollout_correction(ROLLOUT + W.log(), ROLLOUT, PAD_MASK, mode, level, threshold=2.0, threshold_low=0.5)


@pytest.mark.parametrize(("mode", "level", "want", "masked", "truncated"), [
    # TIS (Yao et al.): min(w, 2)
    ("tis", "token", [[2.0, 1.5, 0.0], [0.4, 1.0, 0.0]], 0.0, 0.25),
    # MIS: w if w <= 2 else 0
    ("mis", "token", [[0.0, 1.5, 0.0], [0.4, 1.0, 0.0]], 0.25, 0.0),
    # IcePop: w if 0.5 <= w <= 2 else 0
    ("icepop", "token", [[0.0, 1.5, 0.0], [0.0, 1.0, 0.0]], 0.5, 0.0),
    # sequence level: products 3 * 1.5 = 4.5 and 0.4 * 1 = 0.4 (padding excluded)
    ("tis", "sequence", [[2.0, 2.0, 0.0], [0.4, 0.4, 0.0]], 0.0, 0.5),
    ("mis", "sequence", [[0.0, 0.0, 0.0], [0.4, 0.4, 0.0]], 0.5, 0.0),
    ("icepop", "sequence", [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], 1.0, 0.0),
    ("none", "token", [[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]], 0.0, 0.0),
])
def test_rollout_correction_modes(mode: str, level: str, want: list, masked: float, truncated: float) -> None:
    weights, metrics = _correct(mode, level)
    _close(weights, want)
    _close(metrics["is_masked_share"], masked)
    _close(metrics["is_truncated_share"], truncated)
    assert not weights.requires_grad


def test_rollout_correction_metrics() -> None:
    """Raw weight mean over trained tokens (3 + 1.5 + 0.4 + 1) / 4 = 1.475; the mismatch k3 with
    x = log w: (3 - ln 3 - 1) + (1.5 - ln 1.5 - 1) + (0.4 - ln 0.4 - 1) + 0, over 4."""
    _, metrics = _correct("tis", "token")
    _close(metrics["is_weight_mean"], 1.475)
    k3 = (2 - LN(3)) + (0.5 - LN(1.5)) + (-0.6 - LN(0.4))
    _close(metrics["mismatch_k3"], k3 / 4)


def test_sequence_weight_of_a_long_sequence_stays_finite() -> None:
    old = torch.zeros(1, 400)
    rollout = torch.full((1, 400), -0.5)  # product of ratios e^200: would overflow float32
    weights, metrics = rollout_correction(old, rollout, torch.ones(1, 400), "tis", "sequence", threshold=2.0,
                                          threshold_low=0.5)
    _close(weights, torch.full((1, 400), 2.0).tolist())
    assert math.isfinite(float(metrics["is_weight_mean"])), metrics


# --- configuration ------------------------------------------------------------------------------


def test_grpo_run_checks_quote_the_numbers() -> None:
    from prover.config import ConfigError, ProverConfig, check_grpo_run

    def config(n: int, prompts: int, minis: int, micro: int) -> ProverConfig:
        return ProverConfig.model_validate({"policy": {"sampling": {"n": n}}, "rollout": {"prompts_per_step": prompts},
                                            "grpo": {"mini_batches": minis}, "training": {"micro_batch_size": micro}})

    with pytest.raises(ConfigError, match="policy.sampling.n = 1: .* group size must be >= 2"):
        check_grpo_run(config(1, 4, 1, 4))
    with pytest.raises(ConfigError, match=r"3 x 4 = 12 sequences .*mini_batches = 2 .*micro_batch_size = 4 "
                                          r"\(2 x 4 = 8 must divide 12\)"):
        check_grpo_run(config(4, 3, 2, 4))
    check_grpo_run(config(4, 4, 2, 4))  # 16 sequences = 2 mini-batches x 2 micro-batches of 4


def test_grpo_config_field_checks() -> None:
    from pydantic import ValidationError

    from prover.config import ProverConfig

    with pytest.raises(ValidationError, match="clip_ratio_low = 1.0 puts the ratio's lower bound at 0"):
        GRPOConfig(clip_ratio_low=1.0)
    assert GRPOConfig(policy_loss="cispo", clip_ratio_low=1.0).clip_ratio_low == 1.0
    with pytest.raises(ValidationError, match="overlong_buffer_tokens = 2048 must be below policy.sampling.max_tokens"
                                              " = 2048"):
        ProverConfig.model_validate({"grpo": {"overlong_buffer_tokens": 2048}})
