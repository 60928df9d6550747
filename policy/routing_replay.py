"""Routing replay (R3) for our MoE: a forward pass that uses experts chosen elsewhere.

In RL the rollout engine (vLLM, bf16, its own kernels) and the learner route some tokens to
different experts; the learner then computes the ratio and the gradient for a network the
sampler never ran, and MoE RL has collapsed from it. Rollout Routing Replay (R3; Ma et al. 2025,
"Stabilizing MoE reinforcement learning by aligning training and inference routers",
arXiv:2510.11370) records the experts the engine chose per token and layer and makes the
learner's forward use them. The gating weights are still the learner's own (the unbiased
sigmoid affinities of the replayed experts, normalised and scaled exactly as `Gate` does), so the
router keeps its gradient. Applied from outside the model with forward hooks on each `Gate`, as
`policy.parallelize` applies its wrappers; the model code does not change.

The gate still counts its own choices in `tokens_per_expert`, so the aux-loss-free balancing
bias keeps steering the router (whose choices the engine, sharing its weights, makes too).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from policy.model import MoE, Transformer


def moe_layer_ids(model: Transformer) -> list[int]:
    """Layer numbers of the main model's MoE blocks (MTP modules are not replayed)."""
    return [i for i, layer in enumerate(model.layers) if isinstance(layer.mlp, MoE)]


@contextmanager
def replay_routing(model: Transformer, experts: Tensor) -> Iterator[None]:
    """Inside the block, the main model's MoE layers route token t of row b to experts[b, t, layer].

    experts: (B, T, n_layers, k) long, indexed by layer number (dense layers' entries are
    ignored); -1 in a (b, t) row keeps the router's own choice there (padding, or the last
    token the engine never fed back). The forward must see exactly (B, T) tokens.
    """
    a = model.args
    bsz, seqlen, n_layers, top_k = experts.shape
    if n_layers != a.n_layers or top_k != a.n_activated_experts:
        raise ValueError(
            f"routed experts of shape {tuple(experts.shape)}: expected (B, T, n_layers={a.n_layers}, "
            f"k={a.n_activated_experts})"
        )
    if int(experts.max()) >= a.n_routed_experts:
        raise ValueError(f"routed expert id {int(experts.max())} >= n_routed_experts={a.n_routed_experts}")
    handles = []

    def make_hook(layer: int):
        replay = experts[:, :, layer].reshape(bsz * seqlen, top_k)  # (N, k)
        known = (replay >= 0).all(dim=-1, keepdim=True)  # (N, 1)

        def hook(gate: torch.nn.Module, inputs: tuple[Tensor], output: tuple[Tensor, Tensor, Tensor]):
            _, own, scores = output
            if own.shape[0] != replay.shape[0]:
                raise ValueError(f"layer {layer}: {own.shape[0]} tokens in the forward, "
                                 f"{replay.shape[0]} replayed")
            indices = torch.where(known, replay.to(own.device), own)
            weights = scores.gather(1, indices)  # unbiased affinities of the chosen experts
            if a.norm_topk_prob:
                weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
            return weights * a.route_scale, indices, scores

        return hook

    for layer in moe_layer_ids(model):
        mlp = model.layers[layer].mlp
        assert isinstance(mlp, MoE)
        handles.append(mlp.gate.register_forward_hook(make_hook(layer)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
