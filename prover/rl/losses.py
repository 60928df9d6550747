"""The GRPO objective as small pure functions, in registries keyed by the names verl and TRL use.

Follows verl's `trainer/ppo/core_algos.py`: advantage estimators, policy losses, loss
aggregation, the KL penalty and the rollout/learner mismatch correction are separate functions
over tensors; `grpo_loss` composes them as `prover.config.GRPOConfig` says. Nothing here knows
models, episodes or I/O; `prover.rl.learner` feeds it.

Shapes: B sequences, T completion positions (right-padded); `mask` (B, T) is 1.0 where the
policy sampled the token (trained on), 0.0 for padding and environment tokens. Log-probs are
float32 nats of the sampled tokens. Papers:
  GRPO        Shao et al. 2024, DeepSeekMath (arXiv:2402.03300), eq. 3 and sec. 4.1.2
  Dr. GRPO    Liu et al. 2025, Understanding R1-Zero-like training (arXiv:2503.20783)
  DAPO        Yu et al. 2025 (arXiv:2503.14476): clip-higher, token-level loss, dynamic
              sampling, overlong filtering and soft punishment
  CISPO       MiniMax-M1 (arXiv:2506.13585), eq. 4-5
  GSPO        Zheng et al. 2025, Group Sequence Policy Optimization (arXiv:2507.18071)
  k3 KL       Schulman 2020, "Approximating KL divergence" (blog)
  TIS / MIS   Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
              training" (blog); Liu, Yao et al. 2025, "When speed kills stability" (MIS)
  IcePop      Ling team 2025, Ring-1T / "Every step evolves" (arXiv:2510.18855)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from prover.config import GRPOConfig

Metrics = dict[str, Tensor]  # scalar tensors, detached


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


# --- advantages -------------------------------------------------------------------------------

AdvantageFn = Callable[[Tensor, Tensor, float], Tensor]
ADVANTAGE_ESTIMATORS: dict[str, AdvantageFn] = {}


def _register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    def register(fn: AdvantageFn) -> AdvantageFn:
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn

    return register


def _group_stats(rewards: Tensor, group: Tensor) -> tuple[Tensor, Tensor]:
    """Per element: its group's mean and unbiased (Bessel) std. rewards (N,), group (N,) long."""
    _, inverse, counts = torch.unique(group, return_inverse=True, return_counts=True)
    n_groups = counts.numel()
    sums = torch.zeros(n_groups, dtype=rewards.dtype, device=rewards.device).index_add_(0, inverse, rewards)
    means = sums / counts
    centred = rewards - means[inverse]
    squares = torch.zeros_like(sums).index_add_(0, inverse, centred**2)
    stds = (squares / (counts - 1).clamp(min=1)).sqrt()
    return means[inverse], stds[inverse]


@_register_advantage("grpo")
def grpo_advantages(rewards: Tensor, group: Tensor, eps: float) -> Tensor:
    """A_i = (r_i - mean_group) / (std_group + eps) (DeepSeekMath sec. 4.1.2, outcome
    supervision); std is torch.std's unbiased estimate, as verl and TRL compute it."""
    mean, std = _group_stats(rewards, group)
    return (rewards - mean) / (std + eps)


@_register_advantage("dr_grpo")
def dr_grpo_advantages(rewards: Tensor, group: Tensor, eps: float) -> Tensor:
    """A_i = r_i - mean_group: Dr. GRPO drops the std, which over-weights groups that are nearly
    all right or all wrong (Liu et al. 2025, sec. 3.2)."""
    mean, _ = _group_stats(rewards, group)
    return rewards - mean


# --- policy losses ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyLossOutput:
    """Per-token loss (B, T) before aggregation, and its metrics."""

    per_token: Tensor
    metrics: Metrics


PolicyLossFn = Callable[[Tensor, Tensor, Tensor, Tensor, float, float], PolicyLossOutput]
POLICY_LOSSES: dict[str, PolicyLossFn] = {}


def _register_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    def register(fn: PolicyLossFn) -> PolicyLossFn:
        POLICY_LOSSES[name] = fn
        return fn

    return register


@_register_loss("vanilla")
def vanilla_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_low: float, clip_high: float
) -> PolicyLossOutput:
    """PPO's clipped surrogate per token, -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) with
    r = pi / pi_old (GRPO, DeepSeekMath eq. 3; separate bounds = DAPO's clip-higher, eq. 10).
    logp, old_logp, mask (B, T); advantages (B,)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    was_clipped = (clipped > unclipped).float()
    return PolicyLossOutput(per_token, {
        "clip_fraction": _masked_mean(was_clipped, mask).detach(),
        "ratio_mean": _masked_mean(ratio, mask).detach(),
    })


@_register_loss("cispo")
def cispo_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_low: float, clip_high: float
) -> PolicyLossOutput:
    """CISPO (MiniMax-M1 eq. 4-5): -sg(clip(r, 1 - eps_low, 1 + eps_high)) * A * log pi. The
    clipped weight has no gradient, so a token outside the bounds still trains (with a capped
    weight) instead of being dropped as in PPO's clip. The paper sets no lower bound
    (clip_low = 1) and tunes only the upper one."""
    ratio = torch.exp(logp - old_logp)
    weight = ratio.clamp(1 - clip_low, 1 + clip_high).detach()
    per_token = -weight * advantages[:, None] * logp
    outside = ((ratio < 1 - clip_low) | (ratio > 1 + clip_high)).float()
    return PolicyLossOutput(per_token, {
        "clip_fraction": _masked_mean(outside, mask).detach(),
        "ratio_mean": _masked_mean(ratio, mask).detach(),
    })


@_register_loss("gspo")
def gspo_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_low: float, clip_high: float
) -> PolicyLossOutput:
    """GSPO (Zheng et al. 2025, eq. 5-7, and its GSPO-token form eq. 13-14): one ratio per
    sequence s_i = exp(mean_t log(pi / pi_old)), clipped per sequence. The per-token value is
    s_i with gradient s_i * grad log pi_t (sg[s_i] * pi_t / sg[pi_t]), so with
    'seq-mean-token-mean' aggregation the gradient is exactly GSPO's sequence-level one."""
    lengths = mask.sum(dim=-1).clamp(min=1)
    log_seq_ratio = ((logp - old_logp) * mask).sum(dim=-1) / lengths  # (B,)
    log_ratio = log_seq_ratio.detach()[:, None] + logp - logp.detach()  # value s_i, per token
    ratio = torch.exp(log_ratio)
    adv = advantages[:, None]
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    has_tokens = (mask.sum(dim=-1) > 0).float()
    seq_ratio = log_seq_ratio.detach().exp()
    seq_clipped = (clipped > unclipped).any(dim=-1).float()
    return PolicyLossOutput(per_token, {
        "clip_fraction": _masked_mean(seq_clipped, has_tokens).detach(),  # share of sequences
        "ratio_mean": _masked_mean(seq_ratio, has_tokens),
    })


# --- aggregation ------------------------------------------------------------------------------


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: str,
    *,
    n_sequences: int | None = None,
    n_tokens: float | None = None,
    norm_length: int | None = None,
) -> Tensor:
    """Per-token losses (B, T) -> scalar.

    token-mean: sum over trained tokens / their count (DAPO eq. 8);
    seq-mean-token-mean: mean over each sequence's tokens, then over sequences (GRPO eq. 3);
    seq-mean-token-sum-norm: each sequence's token sum / norm_length, mean over sequences
    (Dr. GRPO: a constant, the generation budget, instead of |o_i|).
    n_sequences / n_tokens: the denominators of the whole mini-batch when this call sees one
    micro-batch of it, so that the micro-batch losses sum to the mini-batch loss.
    """
    masked = per_token * mask
    if mode == "token-mean":
        return masked.sum() / (n_tokens if n_tokens is not None else mask.sum().clamp(min=1))
    sequences = n_sequences if n_sequences is not None else per_token.shape[0]
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)
        return per_seq.sum() / sequences
    if mode == "seq-mean-token-sum-norm":
        if norm_length is None:
            raise ValueError("seq-mean-token-sum-norm needs norm_length (the completion budget, tokens)")
        return masked.sum() / (sequences * norm_length)
    raise ValueError(f"unknown loss aggregation {mode!r}")


LOSS_AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


# --- KL to a reference policy -----------------------------------------------------------------


def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) from tokens sampled by pi: with
    x = log(pi_ref / pi), k3 = exp(x) - x - 1 >= 0, unbiased and low-variance (Schulman 2020;
    DeepSeekMath eq. 4; verl's low_var_kl without its clamp)."""
    x = ref_logp - logp
    return torch.exp(x) - x - 1


# --- rollout/learner mismatch correction ------------------------------------------------------

ROLLOUT_CORRECTIONS = ("none", "tis", "mis", "icepop")


def rollout_correction(
    old_logp: Tensor,
    rollout_logp: Tensor,
    mask: Tensor,
    mode: str,
    level: str,
    *,
    threshold: float,
    threshold_low: float,
) -> tuple[Tensor, Metrics]:
    """Weights (B, T), no gradient, that correct for the engine sampling from a slightly
    different distribution than the learner's: w = pi_learner_old / pi_engine, per token or per
    sequence (product of the token ratios, broadcast to the tokens).

    tis: min(w, C) (truncated IS, Yao et al. 2025); mis: w where w <= C, else 0 (masked IS);
    icepop: w where threshold_low <= w <= C, else 0 (IcePop, two-sided). 'none': all ones.
    Metrics: is_weight_mean (raw w over trained tokens), is_masked_share (share of trained tokens
    given weight 0), is_truncated_share (TIS: share capped), mismatch_k3 (k3 estimate of
    KL(engine || learner) per token: how far apart the two engines are).
    """
    log_w = (old_logp - rollout_logp).detach() * mask
    if level == "sequence":
        log_w = log_w.sum(dim=-1, keepdim=True).expand_as(mask)
    elif level != "token":
        raise ValueError(f"unknown correction level {level!r}")
    log_c = torch.log(torch.tensor(threshold, dtype=log_w.dtype, device=log_w.device))
    log_lo = torch.log(torch.tensor(threshold_low, dtype=log_w.dtype, device=log_w.device))
    # exp of a clamped log: a long sequence's product of ratios cannot overflow to inf.
    raw = torch.exp(log_w.clamp(max=log_c + 20))
    zero = torch.zeros_like(raw)
    truncated = zero
    if mode == "none":
        weights = torch.ones_like(raw)
        masked = zero
    elif mode == "tis":
        weights = torch.exp(log_w.clamp(max=log_c))
        truncated = (log_w > log_c).float()
        masked = zero
    elif mode == "mis":
        keep = log_w <= log_c
        weights = torch.where(keep, raw, zero)
        masked = (~keep).float()
    elif mode == "icepop":
        keep = (log_w <= log_c) & (log_w >= log_lo)
        weights = torch.where(keep, raw, zero)
        masked = (~keep).float()
    else:
        raise ValueError(f"unknown rollout correction {mode!r}")
    x = (old_logp - rollout_logp).detach()  # log(pi_learner / pi_engine) per token
    metrics = {
        "is_weight_mean": _masked_mean(raw, mask),
        "is_masked_share": _masked_mean(masked, mask),
        "is_truncated_share": _masked_mean(truncated, mask),
        "mismatch_k3": _masked_mean(torch.exp(x) - x - 1, mask),
    }
    return weights * mask, metrics


# --- the composed objective -------------------------------------------------------------------


def grpo_loss(
    config: GRPOConfig,
    *,
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    is_weights: Tensor | None = None,
    ref_logp: Tensor | None = None,
    n_sequences: int | None = None,
    n_tokens: float | None = None,
    norm_length: int | None = None,
) -> tuple[Tensor, Metrics]:
    """The configured objective on one (micro-)batch: policy loss per token, times the mismatch
    weights, plus kl_coef * k3 per token, aggregated. Returns the scalar loss and metrics."""
    out = POLICY_LOSSES[config.policy_loss](
        logp, old_logp, advantages, mask, config.clip_ratio_low, config.clip_ratio_high
    )
    per_token = out.per_token if is_weights is None else out.per_token * is_weights
    metrics = dict(out.metrics)
    if config.kl_coef > 0:
        if ref_logp is None:
            raise ValueError(f"kl_coef = {config.kl_coef} needs the reference model's logprobs")
        kl = kl_k3(logp, ref_logp)
        per_token = per_token + config.kl_coef * kl
        metrics["kl_k3"] = _masked_mean(kl, mask).detach()
    loss = aggregate(
        per_token, mask, config.loss_agg_mode,
        n_sequences=n_sequences, n_tokens=n_tokens, norm_length=norm_length,
    )
    return loss, metrics
