"""Routed-expert compute for DeepSeekMoE: grouped matrix multiplies over tokens sorted by expert.

The fast path follows torchtitan's MoE: the (token, slot) pairs chosen by the router are sorted
by expert, each expert's rows form one contiguous group, and the two expert matmuls run as
grouped GEMMs (`torch.nn.functional.grouped_mm` / `torch._grouped_mm`: one kernel for all
experts, no host sync). Where the native grouped GEMM is not available (float32 on CUDA, float32
under compile) a padded batched matmul over experts takes its place. `routed_experts_loop` is the plain
reference (a Python loop over experts, like transformers' eager experts) that tests hold the
grouped path equal to, forward and backward.

Expert weights use transformers' fused layout: `gate_up_proj` (E, 2*I, D) with the gate rows
first, `down_proj` (E, D, I). The checkpoint code splits them into DeepSeek's per-expert names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Rows per expert group are padded to a multiple of this on CUDA: the grouped GEMM's backward
# (a 2-D x 2-D product grouped along the token dimension) needs every group to start on a
# 16-byte boundary; 16 rows covers bf16 and fp8 (torchtitan's TOKEN_GROUP_ALIGN_SIZE_M).
CUDA_GROUP_ALIGN = 16


def _native_grouped_mm():
    """torch's grouped GEMM: public `F.grouped_mm` in torch >= 2.10, `torch._grouped_mm` before."""
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def native_grouped_mm_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's grouped GEMM takes these inputs: bf16 (CPU, and CUDA, where the kernel
    targets Hopper and newer: our training GPUs), and float32 on CPU in eager mode only (eager
    CPU accepts it, checked on torch 2.13 forward and backward, but the op's compile-time shape
    function insists on bf16). Decided from dtype and device type alone so that torch.compile
    traces it without a graph break."""
    if _native_grouped_mm() is None:
        return False
    if device.type == "cpu":
        return dtype == torch.bfloat16 or not torch.compiler.is_compiling()
    return device.type == "cuda" and dtype == torch.bfloat16


def padded_grouped_mm(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """Grouped matmul by padding every group to the largest one and running one `bmm`.

    x (M, K) rows sorted by group; w (E, K, N); offs (E,) cumulative group ends (int32).
    Returns (M, N). One host sync (the largest group size) per call: the fallback's price.
    """
    counts = torch.diff(offs.long(), prepend=offs.new_zeros(1).long())  # (E,)
    starts = offs.long() - counts
    capacity = int(counts.max().item()) if x.shape[0] else 0
    if capacity == 0:
        return x.new_zeros(x.shape[0], w.shape[-1])
    rows = torch.arange(capacity, device=x.device)
    valid = rows[None, :] < counts[:, None]  # (E, C)
    index = (starts[:, None] + rows[None, :]).clamp(max=x.shape[0] - 1)  # (E, C)
    padded = x[index] * valid[..., None].to(x.dtype)  # (E, C, K)
    # Boolean indexing walks (E, C) row-major, i.e. back in sorted-row order.
    return torch.bmm(padded, w)[valid]


def grouped_mm(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """x (M, K) sorted by group, w (E, K, N), offs (E,) int32 group ends -> (M, N)."""
    if native_grouped_mm_supported(x.device, x.dtype):
        return _native_grouped_mm()(x, w, offs=offs)
    return padded_grouped_mm(x, w, offs)


class _UniqueRowGather(torch.autograd.Function):
    """`x.index_select(0, index)` for an index without repeats, whose backward writes each
    gradient row to its one source row (a scatter without accumulation) instead of
    index_select's accumulating index_add_ (atomic adds on CUDA)."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor) -> Tensor:
        ctx.save_for_backward(index)
        ctx.n_rows = x.shape[0]
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (index,) = ctx.saved_tensors
        return grad.new_zeros(ctx.n_rows, grad.shape[1]).index_copy_(0, index, grad), None


def routed_experts_grouped(
    x: Tensor,
    indices: Tensor,
    weights: Tensor,
    gate_up_proj: Tensor,
    down_proj: Tensor,
    *,
    align: int | None = None,
) -> Tensor:
    """SwiGLU experts over routed tokens as two grouped GEMMs.

    x (N, D) tokens; indices (N, k) chosen experts; weights (N, k) combine weights (float32);
    gate_up_proj (E, 2I, D); down_proj (E, D, I). Returns (N, D) = sum_j w_j * FFN_{e_j}(x).
    `align` pads each expert's row group to a multiple of it (default: 16 on CUDA, 1 elsewhere).
    """
    n_tokens, dim = x.shape
    top_k = indices.shape[1]
    n_experts = gate_up_proj.shape[0]
    if align is None:
        align = CUDA_GROUP_ALIGN if x.is_cuda else 1

    flat = indices.reshape(-1)  # (S,) expert of each (token, slot), S = N*k
    n_slots = flat.numel()
    order = torch.argsort(flat, stable=True)  # sorted position -> slot
    counts = torch.zeros(n_experts, dtype=torch.long, device=x.device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))  # (E,) no host sync, unlike bincount
    if align > 1:
        # Every expert's group starts at a multiple of `align` in a buffer whose size is a
        # static upper bound (shapes stay fixed under torch.compile). `row` maps each sorted
        # position to its buffer row; the padding rows read token 0, compute values nobody
        # reads back, and so receive zero gradient.
        padded_counts = (counts + align - 1) // align * align
        shift = (padded_counts.cumsum(0) - padded_counts) - (counts.cumsum(0) - counts)  # (E,)
        row = torch.arange(n_slots, device=x.device) + shift[flat[order]]
        # Rounded up so the last group, which absorbs the slack, is a multiple of `align` too.
        capacity = (n_slots + n_experts * (align - 1) + align - 1) // align * align
        token_of_row = torch.zeros(capacity, dtype=torch.long, device=x.device)
        token_of_row.index_copy_(0, row, order // top_k)
        # The last group runs to the end of the buffer, so the GEMMs define every row (their
        # backward leaves rows past the last offset unwritten, and every row's gradient flows
        # back into x here).
        offs = padded_counts.cumsum(0)
        offs[-1] = capacity
        offs = offs.to(torch.int32)
    else:
        row = torch.arange(n_slots, device=x.device)
        token_of_row = order // top_k
        offs = counts.cumsum(0).to(torch.int32)
    # Index tensors are small; the (rows, D) activations move once in and once out. In: one
    # index_select, whose backward accumulates the k copies of each token with index_add_
    # (atomic adds on CUDA, not x[...]'s sort-based accumulating index_put). Out: one gather
    # whose backward is a plain scatter, the index having no repeats.
    rows = x.index_select(0, token_of_row)  # (rows, D) grouped by expert
    gate, up = grouped_mm(rows, gate_up_proj.transpose(1, 2), offs).chunk(2, dim=-1)
    out = grouped_mm(F.silu(gate) * up, down_proj.transpose(1, 2), offs)  # (rows, D)
    # Back to (token, slot) order in one gather: slot order[i] sits at buffer row row[i].
    row_of_slot = torch.empty_like(row).index_copy_(0, order, row)
    out = _UniqueRowGather.apply(out, row_of_slot)  # (S, D)
    # The weighted sum over the k slots as one batched matmul: (N, 1, k) @ (N, k, D).
    combined = torch.bmm(weights.to(out.dtype).unsqueeze(1), out.view(n_tokens, top_k, dim))
    return combined.squeeze(1)


def routed_experts_loop(
    x: Tensor, indices: Tensor, weights: Tensor, gate_up_proj: Tensor, down_proj: Tensor
) -> Tensor:
    """Reference: the same experts as a Python loop over experts (host syncs, one matmul each)."""
    out = torch.zeros_like(x)
    for expert in range(gate_up_proj.shape[0]):
        token, slot = torch.where(indices == expert)
        if token.numel() == 0:
            continue
        gate, up = F.linear(x[token], gate_up_proj[expert]).chunk(2, dim=-1)
        y = F.linear(F.silu(gate) * up, down_proj[expert])
        out.index_add_(0, token, (y * weights[token, slot, None]).to(out.dtype))
    return out
