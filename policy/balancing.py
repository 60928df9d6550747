"""Auxiliary-loss-free load balancing (DeepSeek-V3 sec. 2.1.2; Wang et al., arXiv:2408.15664).

Each MoE gate has a bias b_i added to the expert affinities only when choosing experts. After
every optimizer step, b_i += gamma * sign(mean_load - load_i): under-loaded experts become more
likely to be chosen, over-loaded ones less. As in torchtitan, the update runs in an optimizer
post-step hook, never in the forward pass; the forward pass only counts tokens per expert
(`Gate.tokens_per_expert`, training mode only). Under torch.distributed the counts are summed
over ranks first so every rank applies the same update.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from policy.model import Gate, Transformer


def _gates(model: nn.Module) -> list[Gate]:
    return [m for m in model.modules() if isinstance(m, Gate)]


def expert_load(model: nn.Module) -> Tensor:
    """Tokens routed to each expert since the last update: (n_moe_layers, E) float32, summed
    over the ranks under torch.distributed (collective then: every rank calls it)."""
    gates = _gates(model)
    if not gates:
        return torch.zeros(0, 0)
    load = torch.stack([g.tokens_per_expert for g in gates])
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(load)
    return load


def max_violation(load: Tensor) -> Tensor:
    """MaxVio per layer (Wang et al.): max_i load_i / mean(load) - 1; 0 = perfectly balanced.
    load (L, E) -> (L',): the layers that saw tokens (MaxVio is undefined for the others, such
    as the MTP layers in an RL step, which never run)."""
    load = load[load.sum(dim=-1) > 0]
    return load.max(dim=-1).values / load.mean(dim=-1) - 1


@torch.no_grad()
def update_expert_bias(model: nn.Module, gamma: float | None = None) -> Tensor:
    """Apply b += gamma * sign(mean_load - load) to every gate and reset its counts.

    gamma defaults to the model's `bias_update_speed`. Layers that saw no tokens are left
    alone. Returns the load (L, E) the update used (for logging MaxVio).
    """
    gates = _gates(model)
    if not gates:
        return torch.zeros(0, 0)
    if gamma is None:
        if not isinstance(model, Transformer):
            raise ValueError("gamma is required when the model is not a policy Transformer")
        gamma = model.args.bias_update_speed
    load = expert_load(model)  # (L, E), every rank's tokens
    seen = load.sum(dim=-1, keepdim=True) > 0
    step = gamma * torch.sign(load.mean(dim=-1, keepdim=True) - load) * seen
    for gate, delta in zip(gates, step, strict=True):
        gate.e_score_correction_bias.add_(delta)
        gate.tokens_per_expert.zero_()
    return load


def register_bias_update_hook(
    optimizer: torch.optim.Optimizer, model: nn.Module, gamma: float | None = None
) -> RemovableHandle:
    """Run `update_expert_bias(model, gamma)` after every `optimizer.step()`; returns the handle
    (`handle.remove()` stops it)."""
    if gamma is None and not isinstance(model, Transformer):
        raise ValueError("gamma is required when the model is not a policy Transformer")

    def hook(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        update_expert_bias(model, gamma)

    return optimizer.register_step_post_hook(hook)
