"""Our policy model: the DeepSeek-V3 architecture (MLA, DeepSeekMoE, MTP), single-device PyTorch.

Follows DeepSeek-V3's `inference/model.py` (read bottom-up: `ModelArgs`, norms, rotary/YaRN, MLA
with a naive and an absorbed path, gate, experts, MoE, block, model) and the DeepSeek-V3
technical report (arXiv:2412.19437): sec. 2.1.1 MLA, 2.1.2 DeepSeekMoE with auxiliary-loss-free
balancing and the sequence-wise balance loss, 2.2 multi-token prediction; YaRN (arXiv:2309.00071)
for context extension. Training speed follows torchtitan: experts as grouped GEMMs over
expert-sorted tokens (`policy.moe`), SDPA attention, compile and activation checkpointing applied
from outside (`policy.parallelize`), the balancing bias updated in an optimizer post-step hook
(`policy.balancing`), never in the forward pass.

Module and parameter names mirror transformers' `DeepseekV3ForCausalLM` (`self_attn.q_a_proj`,
`mlp.experts.gate_up_proj`, ...) so `policy.checkpoint` maps to DeepSeek's checkpoint names with
a prefix and a per-expert split. No distributed state lives here.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from policy.moe import routed_experts_grouped, routed_experts_loop

IGNORE_INDEX = -100  # target value that contributes no loss (prompt tokens, padding)


@dataclass(frozen=True)
class ModelArgs:
    """Architecture of a DeepSeek-V3-style model. Frozen: derive variants with
    `dataclasses.replace(args, field=value)`. Names follow DeepSeek-V3's inference ModelArgs;
    `policy.checkpoint.hf_config` gives the config.json (transformers) name of each."""

    # embedding
    vocab_size: int = 32000  # tokens; set from the tokenizer when a checkpoint is created
    dim: int = 1024  # hidden size D
    n_layers: int = 12  # transformer blocks in the main model (MTP modules not counted)
    max_seq_len: int = 4096  # longest sequence (positions) the rotary tables cover, tokens
    norm_eps: float = 1e-6  # RMSNorm epsilon
    # mla (multi-head latent attention, DeepSeek-V2 sec. 2.1)
    n_heads: int = 8
    q_lora_rank: int = 512  # query compression rank d_c'; 0 = plain query projection (V2-Lite)
    kv_lora_rank: int = 256  # joint key/value latent d_c (the only per-token cache in "absorb")
    qk_nope_head_dim: int = 128  # per-head query/key dims without rotary position
    qk_rope_head_dim: int = 64  # decoupled rotary key dim d_h^R, shared by all heads
    v_head_dim: int = 128  # per-head value dim
    # naive: expand full per-head K/V and use SDPA (training); absorb: fold kv_b_proj into the
    # query and output so attention runs over the cached latent (decoding memory)
    attn_impl: Literal["naive", "absorb"] = "naive"
    # dense ffn (the first n_dense_layers blocks; first_k_dense_replace)
    inter_dim: int = 2816  # SwiGLU hidden size of the dense MLPs
    n_dense_layers: int = 1  # leading blocks with a dense MLP instead of MoE
    # moe (DeepSeekMoE)
    n_routed_experts: int = 32  # fine-grained routed experts E
    n_shared_experts: int = 1  # always-on experts, fused into one MLP of n_shared * moe_inter_dim
    n_activated_experts: int = 4  # routed experts per token K_r (top-k)
    moe_inter_dim: int = 512  # SwiGLU hidden size of one expert
    n_expert_groups: int = 4  # experts are split into this many groups (n_group) ...
    n_limited_groups: int = 2  # ... and a token may use experts of only this many (topk_group);
    # a group's score is the sum of its top-2 biased affinities, as DeepSeek-V3 does
    route_scale: float = 2.5  # routed_scaling_factor multiplying the normalized top-k weights
    norm_topk_prob: bool = True  # normalize the k gating weights to sum to 1 (V3: yes)
    moe_impl: Literal["grouped", "loop"] = "grouped"  # grouped GEMMs (fast) or the reference loop
    bias_update_speed: float = 1e-3  # gamma of the aux-loss-free balancing bias update (V3: 0.001)
    seq_aux_loss_alpha: float = 0.0  # alpha of the sequence-wise balance loss; 0 = off (V3: 1e-4)
    # mtp (multi-token prediction)
    n_mtp_layers: int = 1  # depth D of sequential MTP modules (num_nextn_predict_layers)
    mtp_loss_weight: float = 0.3  # lambda: L = L_main + lambda/D * sum_k L_k (V3: 0.3, then 0.1)
    # yarn (RoPE and its extension; rope_factor 1 = plain RoPE)
    rope_theta: float = 10000.0  # RoPE base
    rope_factor: float = 1.0  # YaRN scale s = extended / original context; > 1 enables YaRN
    original_seq_len: int = 4096  # context length the model was pretrained with (YaRN only)
    beta_fast: int = 32  # YaRN ramp: dims rotating more than beta_fast times are kept
    beta_slow: int = 1  # YaRN ramp: dims rotating fewer than beta_slow times are interpolated
    mscale: float = 1.0  # YaRN mscale: cos/sin scaled by m(s, mscale) / m(s, mscale_all_dim)
    mscale_all_dim: float = 1.0  # softmax scale multiplied by m(s, mscale_all_dim)^2
    # init
    init_std: float = 0.02  # std of normal init for all matrices; residual-output projections
    # (o_proj, down_proj, eh_proj) use init_std / sqrt(2 * blocks) as in GPT-2

    def __post_init__(self) -> None:
        problems = []
        positive = (
            "vocab_size",
            "dim",
            "n_layers",
            "max_seq_len",
            "n_heads",
            "kv_lora_rank",
            "qk_nope_head_dim",
            "v_head_dim",
            "n_expert_groups",
            "n_limited_groups",
        )
        problems += [
            f"{n}={getattr(self, n)} must be > 0" for n in positive if getattr(self, n) <= 0
        ]
        if self.qk_rope_head_dim <= 0 or self.qk_rope_head_dim % 2:
            problems.append(f"qk_rope_head_dim={self.qk_rope_head_dim} must be positive and even")
        if not 0 <= self.n_dense_layers <= self.n_layers:
            problems.append(
                f"n_dense_layers={self.n_dense_layers} must be in [0, n_layers={self.n_layers}]"
            )
        if self.n_dense_layers < self.n_layers or self.n_mtp_layers:
            if not 1 <= self.n_activated_experts <= self.n_routed_experts:
                problems.append(
                    f"n_activated_experts={self.n_activated_experts} must be in "
                    f"[1, n_routed_experts={self.n_routed_experts}]"
                )
            if self.n_routed_experts % self.n_expert_groups:
                problems.append(
                    f"n_routed_experts={self.n_routed_experts} must be divisible by "
                    f"n_expert_groups={self.n_expert_groups}"
                )
            elif self.n_expert_groups > 1 and self.n_routed_experts // self.n_expert_groups < 2:
                problems.append(
                    f"groups of {self.n_routed_experts // self.n_expert_groups} expert: "
                    "group scores sum the top-2 experts, so each group needs >= 2"
                )
            if self.n_limited_groups > self.n_expert_groups:
                problems.append(
                    f"n_limited_groups={self.n_limited_groups} > n_expert_groups={self.n_expert_groups}"
                )
            elif (
                self.n_limited_groups * self.n_routed_experts // self.n_expert_groups
                < self.n_activated_experts
            ):
                problems.append(
                    f"n_limited_groups={self.n_limited_groups} groups hold fewer experts than "
                    f"n_activated_experts={self.n_activated_experts}"
                )
        for name in ("moe_inter_dim", "inter_dim"):
            if getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be > 0")
        for name in (
            "q_lora_rank",
            "n_shared_experts",
            "n_mtp_layers",
            "seq_aux_loss_alpha",
            "mtp_loss_weight",
            "bias_update_speed",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name}={getattr(self, name)} must be >= 0")
        if self.rope_factor < 1:
            problems.append(f"rope_factor={self.rope_factor} must be >= 1 (1 = no YaRN)")
        if self.attn_impl not in ("naive", "absorb"):
            problems.append(f"attn_impl={self.attn_impl!r} must be 'naive' or 'absorb'")
        if self.moe_impl not in ("grouped", "loop"):
            problems.append(f"moe_impl={self.moe_impl!r} must be 'grouped' or 'loop'")
        if problems:
            raise ValueError("invalid ModelArgs: " + "; ".join(problems))

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def to_dict(self) -> dict:
        return asdict(self)


class _Float32Buffers:
    """Mixin: the listed buffers stay float32 through `.to(bfloat16)` / `.half()` (their device
    still follows). Balancing-bias updates of ~1e-3 vanish in bf16, and rotary tables lose
    precision; transformers keeps e_score_correction_bias in fp32 for the same reason."""

    _float32_buffers: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        originals = {name: getattr(self, name) for name in self._float32_buffers}
        super()._apply(fn, recurse)  # type: ignore[misc]
        for name, original in originals.items():
            moved = getattr(self, name)
            if moved.dtype != torch.float32:
                setattr(self, name, original.to(device=moved.device, dtype=torch.float32))
        return self


class RMSNorm(nn.Module):
    """RMSNorm computed in float32, cast back, then scaled (transformers' DeepseekV3RMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return self.weight * normed.to(x.dtype)


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature m(s) = 0.1 * mscale * ln(s) + 1 (1 for s <= 1)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_inv_freq(args: ModelArgs) -> Tensor:
    """Rotary inverse frequencies (rope_dim/2,), YaRN-corrected when rope_factor > 1.

    YaRN (DeepSeek-V3 precompute_freqs_cis): dimensions that rotate fewer than beta_slow times
    over the original context are interpolated (freq / s), those above beta_fast kept, a linear
    ramp in between.
    """
    dim, base = args.qk_rope_head_dim, args.rope_theta
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    if args.rope_factor > 1:

        def correction_dim(rotations: float) -> float:
            return (
                dim
                * math.log(args.original_seq_len / (rotations * 2 * math.pi))
                / (2 * math.log(base))
            )

        low = max(math.floor(correction_dim(args.beta_fast)), 0)
        high = min(math.ceil(correction_dim(args.beta_slow)), dim - 1)
        ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / max(high - low, 1e-3)).clamp(
            0, 1
        )
        smooth = 1 - ramp  # 1 = keep (extrapolate), 0 = interpolate
        freqs = freqs / args.rope_factor * (1 - smooth) + freqs * smooth
    return freqs


def rope_tables(args: ModelArgs) -> tuple[Tensor, Tensor]:
    """cos, sin tables (max_seq_len, rope_dim/2), float32, with YaRN's magnitude factor."""
    angles = torch.outer(torch.arange(args.max_seq_len, dtype=torch.float32), rope_inv_freq(args))
    factor = yarn_mscale(args.rope_factor, args.mscale) / yarn_mscale(
        args.rope_factor, args.mscale_all_dim
    )
    return angles.cos() * factor, angles.sin() * factor


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs (x0, x1), (x2, x3), ... as DeepSeek lays out its rope dims.

    x (B, T, H, R); cos/sin (T, R/2), or (B, T, R/2) when each row has its own positions
    (packed documents). Computed in float32, returned in x's dtype.
    """
    xf = x.float()
    x1, x2 = xf[..., 0::2], xf[..., 1::2]  # (B, T, H, R/2)
    c, s = cos.unsqueeze(-2), sin.unsqueeze(-2)  # (T, 1, R/2) or (B, T, 1, R/2)
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2).to(x.dtype)


@dataclass
class NaiveCache:
    """Per-layer cache of the naive path: full keys (B, S, H, qk_head) and values (B, S, H, v)."""

    k: Tensor
    v: Tensor


@dataclass
class LatentCache:
    """Per-layer cache of the absorbed path: normalized latent (B, S, kv_lora) and rope key (B, S, R)."""

    latent: Tensor
    k_pe: Tensor


def _causal_mask(n_queries: int, start_pos: int, device: torch.device) -> Tensor:
    """(T, start_pos + T) bool: query i (at position start_pos + i) sees keys 0..start_pos + i."""
    keys = torch.arange(start_pos + n_queries, device=device)
    return keys[None, :] <= (start_pos + torch.arange(n_queries, device=device))[:, None]


def document_layout(doc_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Positions and attention mask of packed documents (several sequences in one row).

    doc_ids (B, T) integer: which document each token belongs to; a document's tokens are
    contiguous (padding is one more document). Returns
      positions (B, T): each token's position inside its own document (0 at its first token),
          so rotary embeddings are those the document would get alone;
      mask (B, 1, T, T) bool: query i sees key j iff j <= i and both are in the same document
          (causal attention that never crosses a document boundary, block-diagonal).
    Together they make a packed row compute, for every document, exactly what the document
    computes alone in its own row (the SFT packing contract, tested in tests/policy).
    """
    seqlen = doc_ids.shape[1]
    index = torch.arange(seqlen, device=doc_ids.device)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    first = torch.where(starts, index, 0).cummax(dim=1).values  # (B, T) start of each token's document
    positions = index - first
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    causal = index[None, :] <= index[:, None]  # (T, T)
    return positions, (same_doc & causal).unsqueeze(1)


AttentionKernel = Literal["auto", "sdpa", "flash", "cudnn"]
ATTENTION_KERNELS: tuple[str, ...] = get_args(AttentionKernel)

# Backends in the order each choice tries them; the later ones are fallbacks for inputs the
# first does not take (CPU, float32, masks), so a choice never makes a call fail.
_SDPA_ORDER = {
    "flash": [
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ],
    "cudnn": [
        SDPBackend.CUDNN_ATTENTION,
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.MATH,
    ],
}


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    is_causal: bool,
    mask: Tensor | None = None,
    kernel: AttentionKernel = "auto",
) -> Tensor:
    """Scaled dot-product attention over (B, H, T, d) inputs with MLA's unequal head dims
    (q/k: qk_head_dim 192, v: v_head_dim 128 in DeepSeek-V3) -> (B, H, T, v_head_dim).

    kernel "sdpa" leaves the choice to torch's dispatch, which cannot use FlashAttention when
    the dims differ. "flash" zero-pads v to the q/k dim so FlashAttention takes it (as
    transformers does for DeepSeek with FlashAttention-2) and slices the padding off the
    output: P @ [V, 0] = [P @ V, 0], so the result and v's gradient are exact. "cudnn" puts
    cuDNN's fused attention first, which takes unequal dims natively on Hopper. "auto" is
    "flash" on CUDA and "sdpa" elsewhere (on CPU torch's dispatch picks its own kernels).
    """
    if kernel == "auto":
        kernel = "flash" if q.is_cuda else "sdpa"
    if kernel == "sdpa":
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale
        )
    v_dim = v.shape[-1]
    if kernel == "flash" and v_dim < q.shape[-1]:
        v = F.pad(v, (0, q.shape[-1] - v_dim))
    with sdpa_kernel(_SDPA_ORDER[kernel], set_priority=True):
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale
        )
    return out[..., :v_dim]


class MLA(nn.Module):
    """Multi-head latent attention: low-rank query, joint low-rank key/value, decoupled rope key."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        h, qk, r = args.n_heads, args.qk_head_dim, args.qk_rope_head_dim
        if args.q_lora_rank:
            self.q_a_proj = nn.Linear(args.dim, args.q_lora_rank, bias=False)
            self.q_a_layernorm = RMSNorm(args.q_lora_rank, args.norm_eps)
            self.q_b_proj = nn.Linear(args.q_lora_rank, h * qk, bias=False)
        else:
            self.q_proj = nn.Linear(args.dim, h * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(args.dim, args.kv_lora_rank + r, bias=False)
        self.kv_a_layernorm = RMSNorm(args.kv_lora_rank, args.norm_eps)
        self.kv_b_proj = nn.Linear(
            args.kv_lora_rank, h * (args.qk_nope_head_dim + args.v_head_dim), bias=False
        )
        self.o_proj = nn.Linear(h * args.v_head_dim, args.dim, bias=False)
        # YaRN raises the softmax temperature by m(s)^2 (DeepSeek-V3's softmax_scale).
        self.softmax_scale = qk**-0.5 * yarn_mscale(args.rope_factor, args.mscale_all_dim) ** 2
        # Which SDPA kernel the naive path asks for (a speed choice, not architecture: every
        # choice computes the same function); `policy.parallelize` sets it for training.
        self.attention_kernel: AttentionKernel = "auto"

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        start_pos: int,
        cache: NaiveCache | LatentCache | None,
        doc_mask: Tensor | None = None,
    ) -> Tensor:
        """x (B, T, D) at positions start_pos..start_pos+T-1; cos/sin (T, R/2) -> (B, T, D).

        doc_mask (B, 1, T, T) bool (packed documents, `document_layout`; cos/sin then
        (B, T, R/2)): replaces the plain causal mask, so no token attends across a document
        boundary. Training only: no cache, start_pos 0."""
        a = self.args
        bsz, seqlen, _ = x.shape
        end = start_pos + seqlen
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if a.q_lora_rank else self.q_proj(x)
        q = q.view(bsz, seqlen, a.n_heads, a.qk_head_dim)
        q_nope, q_pe = q.split([a.qk_nope_head_dim, a.qk_rope_head_dim], dim=-1)
        q_pe = apply_rotary(q_pe, cos, sin)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split(
            [a.kv_lora_rank, a.qk_rope_head_dim], dim=-1
        )
        latent = self.kv_a_layernorm(latent)  # (B, T, C)
        k_pe = apply_rotary(k_pe.unsqueeze(2), cos, sin)  # (B, T, 1, R): one rope key for all heads

        if a.attn_impl == "naive":
            kv = self.kv_b_proj(latent).view(
                bsz, seqlen, a.n_heads, a.qk_nope_head_dim + a.v_head_dim
            )
            k_nope, v = kv.split([a.qk_nope_head_dim, a.v_head_dim], dim=-1)
            q = torch.cat([q_nope, q_pe], dim=-1)
            k = torch.cat([k_nope, k_pe.expand(-1, -1, a.n_heads, -1)], dim=-1)
            if cache is not None:
                assert isinstance(cache, NaiveCache)
                cache.k[:bsz, start_pos:end] = k
                cache.v[:bsz, start_pos:end] = v
                k, v = cache.k[:bsz, :end], cache.v[:bsz, :end]
            # From position 0 the keys are exactly the queries' positions: plain causal.
            mask = doc_mask
            if mask is None and start_pos > 0 and seqlen > 1:
                mask = _causal_mask(seqlen, start_pos, x.device)
            out = attention(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                scale=self.softmax_scale,
                is_causal=start_pos == 0 and doc_mask is None,
                mask=mask,
                kernel=self.attention_kernel,
            ).transpose(1, 2)  # (B, T, H, v)
        else:
            # Absorb kv_b_proj: q_nope . (W_uk c) = (W_uk^T q_nope) . c, and the output
            # W_uv (sum p c) is applied after attention, so keys/values stay the latent c.
            w_kv = self.kv_b_proj.weight.view(
                a.n_heads, a.qk_nope_head_dim + a.v_head_dim, a.kv_lora_rank
            )
            w_uk, w_uv = w_kv.split([a.qk_nope_head_dim, a.v_head_dim], dim=1)
            q_latent = torch.einsum("bthd,hdc->bthc", q_nope, w_uk)  # (B, T, H, C)
            k_pe = k_pe.squeeze(2)  # (B, T, R)
            if cache is not None:
                assert isinstance(cache, LatentCache)
                cache.latent[:bsz, start_pos:end] = latent
                cache.k_pe[:bsz, start_pos:end] = k_pe
                latent, k_pe = cache.latent[:bsz, :end], cache.k_pe[:bsz, :end]
            scores = (
                torch.einsum("bthc,bsc->bhts", q_latent, latent)
                + torch.einsum("bthr,bsr->bhts", q_pe, k_pe)
            ) * self.softmax_scale
            if seqlen > 1:
                allowed = _causal_mask(seqlen, start_pos, x.device) if doc_mask is None else doc_mask
                scores = scores.masked_fill(~allowed, float("-inf"))
            probs = scores.softmax(dim=-1, dtype=torch.float32).to(x.dtype)  # (B, H, T, S)
            out = torch.einsum("bhts,bsc->bthc", probs, latent)
            out = torch.einsum("bthc,hdc->bthd", out, w_uv)  # (B, T, H, v)
        return self.o_proj(out.flatten(2))


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x)). Dense layers and shared experts."""

    def __init__(self, dim: int, inter_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, inter_dim, bias=False)
        self.up_proj = nn.Linear(dim, inter_dim, bias=False)
        self.down_proj = nn.Linear(inter_dim, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(_Float32Buffers, nn.Module):
    """DeepSeek-V3 router: sigmoid affinities, group-limited top-k, aux-loss-free bias.

    `e_score_correction_bias` (E,) is added to the affinities only to *choose* experts; combine
    weights come from the unbiased affinities. The bias is updated outside the forward pass
    (`policy.balancing`); in training mode the forward pass only adds the chosen experts'
    token counts to `tokens_per_expert` (with activation checkpointing the recompute counts a
    second time, which scales all counts alike and leaves the sign-based update unchanged).
    """

    _float32_buffers = ("e_score_correction_bias", "tokens_per_expert")
    e_score_correction_bias: Tensor  # (E,) float32, a checkpointed buffer
    tokens_per_expert: Tensor  # (E,) float32, reset after each bias update; not checkpointed

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.weight = nn.Parameter(torch.empty(args.n_routed_experts, args.dim))
        self.register_buffer("e_score_correction_bias", torch.zeros(args.n_routed_experts))
        self.register_buffer(
            "tokens_per_expert", torch.zeros(args.n_routed_experts), persistent=False
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (N, D) -> weights (N, k) float32, indices (N, k), affinities (N, E) float32."""
        a = self.args
        scores = F.linear(x.float(), self.weight.float()).sigmoid()  # s_{i,t}
        biased = scores + self.e_score_correction_bias  # for selection only
        if a.n_expert_groups > 1:
            grouped = biased.view(-1, a.n_expert_groups, a.n_routed_experts // a.n_expert_groups)
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # (N, G)
            keep = group_scores.topk(a.n_limited_groups, dim=-1).indices
            group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
            biased = grouped.masked_fill(~group_mask[..., None], float("-inf")).flatten(1)
        indices = biased.topk(a.n_activated_experts, dim=-1).indices  # (N, k)
        weights = scores.gather(1, indices)
        if a.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        weights = weights * a.route_scale
        if self.training:
            with torch.no_grad():
                flat = indices.flatten()
                self.tokens_per_expert.scatter_add_(
                    0, flat, torch.ones_like(flat, dtype=torch.float32)
                )
        return weights, indices, scores


class RoutedExperts(nn.Module):
    """E SwiGLU experts stored as stacked weights: gate_up_proj (E, 2I, D), down_proj (E, D, I)."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        e, d, i = args.n_routed_experts, args.dim, args.moe_inter_dim
        self.gate_up_proj = nn.Parameter(torch.empty(e, 2 * i, d))
        self.down_proj = nn.Parameter(torch.empty(e, d, i))

    def forward(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        impl = routed_experts_grouped if self.args.moe_impl == "grouped" else routed_experts_loop
        return impl(x, indices, weights, self.gate_up_proj, self.down_proj)


def sequence_balance_loss(scores: Tensor, indices: Tensor, n_experts: int, top_k: int) -> Tensor:
    """DeepSeek-V3 eq. 17-20 without alpha: mean over sequences of sum_i f_i * P_i.

    scores (B, T, E) sigmoid affinities; indices (B, T, k) chosen experts.
    f_i = E / (k T) * #tokens choosing i; P_i = mean_t of the affinities normalized per token.
    """
    bsz, seqlen, _ = scores.shape
    probs = (scores / scores.sum(dim=-1, keepdim=True)).mean(dim=1)  # (B, E)
    counts = torch.zeros(bsz, n_experts, device=scores.device, dtype=scores.dtype)
    counts.scatter_add_(
        1, indices.reshape(bsz, -1), torch.ones_like(indices.reshape(bsz, -1), dtype=scores.dtype)
    )
    load = counts * n_experts / (top_k * seqlen)  # f_i, no gradient
    return (load * probs).sum(dim=1).mean()


class MoE(nn.Module):
    """DeepSeekMoE: shared experts plus routed experts combined by the gate's weights."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.gate = Gate(args)
        self.experts = RoutedExperts(args)
        self.shared_experts = (
            MLP(args.dim, args.n_shared_experts * args.moe_inter_dim)
            if args.n_shared_experts
            else None
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """x (B, T, D) -> output (B, T, D), sequence-wise balance loss (alpha applied) or None."""
        bsz, seqlen, dim = x.shape
        flat = x.reshape(-1, dim)
        weights, indices, scores = self.gate(flat)
        out = self.experts(flat, indices, weights).view(bsz, seqlen, dim)
        if self.shared_experts is not None:
            out = out + self.shared_experts(x)
        balance = None
        if self.training and self.args.seq_aux_loss_alpha > 0:
            balance = self.args.seq_aux_loss_alpha * sequence_balance_loss(
                scores.view(bsz, seqlen, -1),
                indices.view(bsz, seqlen, -1),
                self.args.n_routed_experts,
                self.args.n_activated_experts,
            )
        return out, balance


class Block(nn.Module):
    """Pre-norm transformer block: x + MLA(norm(x)), then + MLP or MoE (layer_id >= n_dense_layers)."""

    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.self_attn = MLA(args)
        self.mlp: MLP | MoE = (
            MLP(args.dim, args.inter_dim) if layer_id < args.n_dense_layers else MoE(args)
        )
        self.input_layernorm = RMSNorm(args.dim, args.norm_eps)
        self.post_attention_layernorm = RMSNorm(args.dim, args.norm_eps)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        start_pos: int = 0,
        cache: NaiveCache | LatentCache | None = None,
        doc_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, start_pos, cache, doc_mask)
        if isinstance(self.mlp, MoE):
            out, balance = self.mlp(self.post_attention_layernorm(x))
            return x + out, balance
        return x + self.mlp(self.post_attention_layernorm(x)), None


class MTPModule(nn.Module):
    """Depth-k multi-token prediction module (DeepSeek-V3 sec. 2.2).

    h'_i = M_k [RMSNorm(Emb(t_{i+k})); RMSNorm(h_i^{k-1})], h^k = TRM_k(h'), then the shared
    output head after this module's own final norm. The concatenation puts the embedding first,
    as DeepSeek's released weights (eh_proj) and vLLM's loader expect (the paper writes h first).
    """

    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.enorm = RMSNorm(args.dim, args.norm_eps)
        self.hnorm = RMSNorm(args.dim, args.norm_eps)
        self.eh_proj = nn.Linear(2 * args.dim, args.dim, bias=False)
        self.block = Block(layer_id, args)
        self.norm = RMSNorm(args.dim, args.norm_eps)  # stored as shared_head.norm

    def forward(
        self, prev: Tensor, emb: Tensor, cos: Tensor, sin: Tensor, doc_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """prev (B, S, D) hidden of depth k-1, emb (B, S, D) embeddings of the tokens k ahead
        -> hidden (B, S, D) after this module's final norm (what the head reads), balance loss.
        doc_mask: packed documents' attention mask (`document_layout`), as in the trunk."""
        h = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(prev)], dim=-1))
        h, balance = self.block(h, cos, sin, doc_mask=doc_mask)
        return self.norm(h), balance


@dataclass
class LossOutput:
    """Training loss and its terms (all scalars). `loss` = main + mtp + balance."""

    loss: Tensor
    main: Tensor  # next-token cross-entropy, mean over non-ignored targets
    mtp: Tensor | None  # lambda / D * sum_k mtp_depths[k]; None when no MTP ran
    mtp_depths: tuple[Tensor, ...]  # unweighted cross-entropy L_k of each MTP depth
    balance: Tensor | None  # sum over MoE layers of the sequence-wise balance loss (alpha applied)


def _cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean token cross-entropy in float32 over targets != IGNORE_INDEX (0 when all ignored)."""
    total = F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def _add(total: Tensor | None, term: Tensor | None) -> Tensor | None:
    if term is None:
        return total
    return term if total is None else total + term


class Transformer(_Float32Buffers, nn.Module):
    """The DeepSeek-V3-architecture causal LM: embedding, blocks, final norm, head, MTP modules."""

    _float32_buffers = ("rope_cos", "rope_sin")
    rope_cos: Tensor  # (max_seq_len, R/2) float32, recomputed on load (not checkpointed)
    rope_sin: Tensor

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.dim)
        self.layers = nn.ModuleList(Block(i, args) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.lm_head = nn.Linear(args.dim, args.vocab_size, bias=False)
        self.mtp = nn.ModuleList(
            MTPModule(args.n_layers + k, args) for k in range(args.n_mtp_layers)
        )
        cos, sin = rope_tables(args)
        self.register_buffer("rope_cos", cos, persistent=False)  # (max_seq_len, R/2)
        self.register_buffer("rope_sin", sin, persistent=False)
        self._caches: list[NaiveCache | LatentCache] | None = None
        self.init_weights()

    @torch.no_grad()
    def init_weights(self, prefix: str = "") -> None:
        """Normal(0, init_std) matrices, residual-output projections scaled by 1/sqrt(2 * blocks),
        unit norms, zero balancing bias; only modules whose names start with `prefix`."""
        std = self.args.init_std
        out_std = std / math.sqrt(2 * (self.args.n_layers + self.args.n_mtp_layers))
        for name, module in self.named_modules():
            if not name.startswith(prefix):
                continue
            if isinstance(module, nn.Linear | nn.Embedding):
                last = name.rsplit(".", 1)[-1]
                nn.init.normal_(
                    module.weight,
                    std=out_std if last in ("o_proj", "down_proj", "eh_proj") else std,
                )
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, Gate):
                nn.init.normal_(module.weight, std=std)
                module.e_score_correction_bias.zero_()
                module.tokens_per_expert.zero_()
            elif isinstance(module, RoutedExperts):
                nn.init.normal_(module.gate_up_proj, std=std)
                nn.init.normal_(module.down_proj, std=out_std)

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Recompute what checkpoints do not hold (rotary tables, token counts), e.g. after
        `to_empty` on a model built on the meta device."""
        cos, sin = rope_tables(self.args)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)
        for module in self.modules():
            if isinstance(module, Gate):
                module.tokens_per_expert.zero_()

    @contextmanager
    def kv_cache(self, max_batch_size: int, max_seq_len: int | None = None) -> Iterator[None]:
        """Allocate per-layer caches for incremental decoding (`forward(..., start_pos=n)`)
        for the duration of the block. naive caches full K/V; absorb caches latent + rope key."""
        a = self.args
        seqlen = max_seq_len or a.max_seq_len
        if seqlen > a.max_seq_len:
            raise ValueError(f"kv cache of {seqlen} tokens exceeds max_seq_len={a.max_seq_len}")
        ref = self.embed_tokens.weight

        def empty(*shape: int) -> Tensor:
            return torch.zeros(max_batch_size, seqlen, *shape, device=ref.device, dtype=ref.dtype)

        if a.attn_impl == "naive":
            self._caches = [
                NaiveCache(empty(a.n_heads, a.qk_head_dim), empty(a.n_heads, a.v_head_dim))
                for _ in self.layers
            ]
        else:
            self._caches = [
                LatentCache(empty(a.kv_lora_rank), empty(a.qk_rope_head_dim)) for _ in self.layers
            ]
        try:
            yield
        finally:
            self._caches = None

    def _layout(
        self, tokens: Tensor, start_pos: int, doc_ids: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Rotary tables and attention mask for tokens (B, T): cos/sin (T, R/2) and no mask
        (plain causal) for one sequence per row; with doc_ids (packed documents) cos/sin
        (B, T, R/2) at each token's position in its document and the block-diagonal causal
        mask of `document_layout`."""
        seqlen = tokens.shape[1]
        if start_pos + seqlen > self.args.max_seq_len:
            raise ValueError(
                f"positions up to {start_pos + seqlen} exceed max_seq_len={self.args.max_seq_len}"
            )
        if start_pos and self._caches is None:
            raise ValueError(
                f"start_pos={start_pos} needs a cache: run inside `with model.kv_cache(...)`"
            )
        if doc_ids is None:
            return (
                self.rope_cos[start_pos : start_pos + seqlen],
                self.rope_sin[start_pos : start_pos + seqlen],
                None,
            )
        if start_pos or self._caches is not None:
            raise ValueError("packed documents (doc_ids) are for training: no kv cache, start_pos 0")
        if doc_ids.shape != tokens.shape:
            raise ValueError(
                f"doc_ids {tuple(doc_ids.shape)} must match tokens {tuple(tokens.shape)}"
            )
        positions, doc_mask = document_layout(doc_ids)
        return self.rope_cos[positions], self.rope_sin[positions], doc_mask

    def _trunk(
        self, tokens: Tensor, cos: Tensor, sin: Tensor, start_pos: int, doc_mask: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        h = self.embed_tokens(tokens)
        balance = None
        for i, layer in enumerate(self.layers):
            cache = None if self._caches is None else self._caches[i]
            h, layer_balance = layer(h, cos, sin, start_pos, cache, doc_mask)
            balance = _add(balance, layer_balance)
        return self.norm(h), balance

    def trunk(
        self, tokens: Tensor, start_pos: int = 0, doc_ids: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """tokens (B, T) -> final-normed hidden (B, T, D), summed balance loss (or None).
        doc_ids (B, T): packed documents (`document_layout`); None: one sequence per row."""
        cos, sin, doc_mask = self._layout(tokens, start_pos, doc_ids)
        return self._trunk(tokens, cos, sin, start_pos, doc_mask)

    def forward(
        self,
        tokens: Tensor,
        *,
        start_pos: int = 0,
        return_hidden: bool = False,
        doc_ids: Tensor | None = None,
    ) -> Tensor:
        """tokens (B, T) -> logits (B, T, V), or the final-normed hidden (B, T, D) with
        return_hidden (for chunked log-probs). start_pos > 0 continues a `kv_cache` block.
        doc_ids (B, T): several documents packed per row, each computed as if alone."""
        hidden, _ = self.trunk(tokens, start_pos, doc_ids)
        return hidden if return_hidden else self.lm_head(hidden)

    def head_loss(self, hidden: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy of the output head on final-normed hidden (B, T, D) against
        targets (B, T). Its own method so `policy.parallelize` can compile it: fused, the
        float32 logits (B*T*V) never round-trip through memory."""
        return _cross_entropy(self.lm_head(hidden), targets)

    def loss(
        self,
        tokens: Tensor,
        *,
        targets: Tensor | None = None,
        mtp: bool = True,
        doc_ids: Tensor | None = None,
    ) -> LossOutput:
        """Training loss on tokens (B, T).

        targets (B, T): the token each position should predict (IGNORE_INDEX = no loss); default
        tokens shifted left. MTP depth k at position i combines h_i^{k-1} with Emb(t_{i+k}) and
        predicts targets[i + k]; L_MTP = lambda / D * sum_k L_k (DeepSeek-V3 eq. 21-25).

        doc_ids (B, T): packed documents (`document_layout`): attention and positions stay
        inside each document, the default targets never cross a boundary, and an MTP depth k
        whose token k ahead lies in another document gets the padding embedding and no target,
        exactly as the last k positions of a sequence alone. So a packed row's summed token
        losses equal those of its documents run one per row.
        """
        if targets is None:
            targets = F.pad(tokens[:, 1:], (0, 1), value=IGNORE_INDEX)
            if doc_ids is not None:
                boundary = F.pad(doc_ids[:, 1:] != doc_ids[:, :-1], (0, 1), value=True)
                targets = targets.masked_fill(boundary, IGNORE_INDEX)
        if targets.shape != tokens.shape:
            raise ValueError(
                f"targets {tuple(targets.shape)} must match tokens {tuple(tokens.shape)}"
            )
        cos, sin, doc_mask = self._layout(tokens, 0, doc_ids)
        hidden, balance = self._trunk(tokens, cos, sin, 0, doc_mask)
        main = self.head_loss(hidden, targets)
        depth_losses: list[Tensor] = []
        if mtp and len(self.mtp):
            # Every depth runs on all T positions (one shape for every block under compile):
            # the last k positions have no token k ahead, get a padding embedding and ignored
            # targets, and causal attention keeps them from affecting earlier positions.
            prev = hidden
            for k, module in enumerate(self.mtp, start=1):
                ahead = F.pad(tokens[:, k:], (0, k), value=0)  # t_{i+k}
                depth_targets = F.pad(targets[:, k:], (0, k), value=IGNORE_INDEX)
                if doc_ids is not None:  # t_{i+k} in another document: as past the end
                    crossed = F.pad(doc_ids[:, k:] != doc_ids[:, : max(doc_ids.shape[1] - k, 0)],
                                    (0, k), value=True)
                    ahead = ahead.masked_fill(crossed, 0)
                    depth_targets = depth_targets.masked_fill(crossed, IGNORE_INDEX)
                prev, depth_balance = module(prev, self.embed_tokens(ahead), cos, sin, doc_mask)
                depth_losses.append(self.head_loss(prev, depth_targets))
                balance = _add(balance, depth_balance)
        mtp_loss = (
            self.args.mtp_loss_weight / len(depth_losses) * torch.stack(depth_losses).sum()
            if depth_losses
            else None
        )
        total = main
        for term in (mtp_loss, balance):
            if term is not None:
                total = total + term
        return LossOutput(
            loss=total, main=main, mtp=mtp_loss, mtp_depths=tuple(depth_losses), balance=balance
        )


def count_parameters(args_or_model: ModelArgs | Transformer) -> dict[str, int]:
    """Parameter counts from the architecture (no allocation).

    `total` / `active` cover the main model (what inference runs and 6*N*tokens FLOPs use);
    `active` = per token: embeddings, head, attention, norms, router, dense MLPs, shared experts
    and k of the E routed experts. The MTP modules (training only) are `mtp_total` /
    `mtp_active`; `total_with_mtp` is everything in the model and its checkpoint.
    """
    a = args_or_model.args if isinstance(args_or_model, Transformer) else args_or_model
    d = a.dim
    q = (
        d * a.q_lora_rank + a.q_lora_rank + a.q_lora_rank * a.n_heads * a.qk_head_dim
        if a.q_lora_rank
        else d * a.n_heads * a.qk_head_dim
    )
    attention = (
        q
        + d * (a.kv_lora_rank + a.qk_rope_head_dim)
        + a.kv_lora_rank
        + a.kv_lora_rank * a.n_heads * (a.qk_nope_head_dim + a.v_head_dim)
        + a.n_heads * a.v_head_dim * d
    )
    expert = 3 * d * a.moe_inter_dim
    moe_layers = a.n_layers - a.n_dense_layers
    counts = {
        "embedding": a.vocab_size * d,
        "head": a.vocab_size * d,
        "attention": a.n_layers * attention,
        "dense_mlp": a.n_dense_layers * 3 * d * a.inter_dim,
        "router": moe_layers * a.n_routed_experts * d,
        "shared_experts": moe_layers * a.n_shared_experts * expert,
        "routed_experts": moe_layers * a.n_routed_experts * expert,
        "routed_experts_active": moe_layers * a.n_activated_experts * expert,
        "norms": a.n_layers * 2 * d + d,
    }
    counts["total"] = sum(v for k, v in counts.items() if k != "routed_experts_active")
    counts["active"] = counts["total"] - counts["routed_experts"] + counts["routed_experts_active"]
    mtp_block = attention + 2 * d + a.n_routed_experts * d + a.n_shared_experts * expert
    mtp_fixed = 3 * d + 2 * d * d + mtp_block
    counts["mtp_total"] = a.n_mtp_layers * (mtp_fixed + a.n_routed_experts * expert)
    counts["mtp_active"] = a.n_mtp_layers * (mtp_fixed + a.n_activated_experts * expert)
    counts["total_with_mtp"] = counts["total"] + counts["mtp_total"]
    return counts
