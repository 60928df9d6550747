"""Expert parallelism for DeepSeekMoE's routed experts: each rank of an `ep`-sized group holds
E/ep experts, and tokens travel to their experts and back with all-to-all.

Follows DeepSeek-V3 (arXiv:2412.19437 sec. 3.2.2, EP across nodes with all-to-all dispatch and
combine) and torchtitan's `ExpertParallel` style: the stacked expert weights become DTensors
sharded on the expert dimension over the mesh's "ep" dimension, so checkpoints see the full
(E, ...) tensors and FSDP can shard them further over the remaining ranks. The model code is
untouched: `parallelize` swaps each `RoutedExperts` for an `ExpertParallelExperts` holding the
same parameter names (`gate_up_proj`, `down_proj`).

Per MoE layer and rank (N local tokens, k experts each, S = N*k routed slots):
1. sort the S slots by expert (experts are numbered so that rank r holds r*E/ep .. (r+1)*E/ep-1,
   so sorted by expert = sorted by destination rank) and exchange per-expert counts;
2. dispatch: all-to-all of the (S, D) sorted rows -> the rows this rank's experts must process,
   ordered by source rank, then by local expert;
3. run the local experts with the single-device grouped GEMMs (`policy.moe`);
4. combine: the reverse all-to-all brings each output row back to the rank of its token, where
   the k outputs are weighted and summed as on one device.
The all-to-alls are differentiable (backward sends gradients the opposite way). Splits are
data-dependent, so each layer costs one host sync (the counts), as in torchtitan.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed._functional_collectives import all_to_all_single_autograd
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from policy.model import RoutedExperts
from policy.moe import routed_experts_grouped


def expert_parallel_routed(
    x: Tensor,
    indices: Tensor,
    weights: Tensor,
    gate_up_proj: Tensor,
    down_proj: Tensor,
    group: dist.ProcessGroup,
) -> Tensor:
    """Routed experts over an expert-parallel group: the same function as
    `policy.moe.routed_experts_grouped` with all E experts on one device.

    x (N, D) this rank's tokens; indices (N, k) global expert ids; weights (N, k) float32;
    gate_up_proj (E_l, 2I, D) and down_proj (E_l, D, I): this rank's E_l = E/ep experts, i.e.
    global experts rank*E_l .. (rank+1)*E_l - 1 of the group. Returns (N, D).
    """
    n_tokens, dim = x.shape
    top_k = indices.shape[1]
    ep = dist.get_world_size(group)
    n_local = gate_up_proj.shape[0]
    n_experts = n_local * ep

    flat = indices.reshape(-1)  # (S,)
    order = torch.argsort(flat, stable=True)  # sorted position -> slot
    counts = torch.zeros(n_experts, dtype=torch.long, device=x.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # (E,) slots per global expert
    # received[s * E_l + e] = slots rank s sends to my local expert e
    received = torch.empty_like(counts)
    dist.all_to_all_single(received, counts, group=group)
    received = received.view(ep, n_local)
    send_splits = counts.view(ep, n_local).sum(dim=1).tolist()
    recv_splits = received.sum(dim=1).tolist()  # the one host sync per layer

    rows = x.index_select(0, order // top_k)  # (S, D) sorted by expert = by destination rank
    inbound = all_to_all_single_autograd(rows, recv_splits, send_splits, group)  # (M, D)
    # Local expert of every inbound row: source-major, then expert, as the senders sorted them.
    local_expert = torch.repeat_interleave(
        torch.arange(n_local, device=x.device).repeat(ep), received.flatten()
    )
    # Each inbound row is one (token, expert) pair: top-1 routing with weight 1 (exact).
    processed = routed_experts_grouped(
        inbound,
        local_expert[:, None],
        torch.ones(inbound.shape[0], 1, device=x.device),
        gate_up_proj,
        down_proj,
    )
    outbound = all_to_all_single_autograd(processed, send_splits, recv_splits, group)  # (S, D)
    # Back to (token, slot) order: sorted position i holds slot order[i].
    inverse = torch.empty_like(order).index_copy_(0, order, torch.arange(order.numel(), device=x.device))
    out = outbound.index_select(0, inverse).view(n_tokens, top_k, dim)
    # The weighted sum over the k slots; a fresh tensor, not a view (FSDP hooks the output).
    return (weights.to(out.dtype).unsqueeze(-1) * out).sum(dim=1)


class _ScaleGrad(torch.autograd.Function):
    """Identity whose backward multiplies the gradient by `scale`."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.scale, None


class ExpertParallelExperts(nn.Module):
    """`RoutedExperts` whose weights are sharded over the mesh's expert dimension: DTensors of
    the full shapes (E, 2I, D) / (E, D, I) placed `Shard(0)` on `ep_mesh`, so this rank
    computes with its E/ep local experts and state dicts name the same full tensors.

    Gradients: the all-to-all brings every ep rank's tokens to these experts, so the local
    gradient sums ep ranks' losses; it is divided by ep here, and the data-parallel average
    over the other world/ep ranks (FSDP over "edp") then gives the mean over all ranks, like
    every dense gradient. (Scaling here rather than with FSDP's gradient divide factor works
    on every backend: gloo has no PREMUL_SUM.)"""

    def __init__(self, experts: RoutedExperts, ep_mesh: DeviceMesh):
        super().__init__()
        ep = ep_mesh.size()
        n_experts = experts.args.n_routed_experts
        if n_experts % ep:
            raise ValueError(
                f"n_routed_experts={n_experts} is not divisible by ep={ep}: each rank must hold "
                "the same number of experts"
            )
        self.args = experts.args
        self.ep_mesh = ep_mesh
        # distribute_tensor takes rank 0's values (src_data_rank=0), so every rank agrees.
        self.gate_up_proj = nn.Parameter(distribute_tensor(experts.gate_up_proj.data, ep_mesh, [Shard(0)]))
        self.down_proj = nn.Parameter(distribute_tensor(experts.down_proj.data, ep_mesh, [Shard(0)]))

    def _local(self, weight: Tensor) -> Tensor:
        local = weight.to_local() if isinstance(weight, DTensor) else weight
        return _ScaleGrad.apply(local, 1.0 / self.ep_mesh.size())

    def forward(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        """x (N, D), indices (N, k), weights (N, k) -> (N, D), as `RoutedExperts.forward`."""
        return expert_parallel_routed(
            x,
            indices,
            weights,
            self._local(self.gate_up_proj),
            self._local(self.down_proj),
            self.ep_mesh.get_group(),
        )
