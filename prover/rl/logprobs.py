"""Per-token log-probabilities (and entropies) of given tokens, without the full logits in memory.

A GRPO learner needs log pi(y_t | prefix) of the sampled tokens only, but the output head makes
V logits per position: at B x T x V float32 (129k vocab x 16k tokens: 8 GiB) the logits, and
autograd's saved copy of them, would dwarf the model's activations. `chunked_token_logprobs`
runs the head over `chunk_tokens` positions at a time and keeps only each position's
log-sum-exp; its backward recomputes each chunk's logits to form the gradient
(softmax - onehot), so at most chunk_tokens x V logits exist at once, forward or backward.
`naive_token_logprobs` is the plain reference the tests hold it equal to.

Works for our policy (`policy.model.Transformer`: `forward(tokens, return_hidden=True)` and
`lm_head`) and for any transformers causal LM (its base model's last hidden state and its
output embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policy.model import Transformer


class _ChunkedLogprobs(torch.autograd.Function):
    """hidden (N, D), weight (V, D), bias (V,) or None, targets (N,) -> log p(target) (N,) float32."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                chunk: int) -> Tensor:
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = F.linear(hidden[rows], weight, bias).float()  # (c, V)
            lse[rows] = torch.logsumexp(logits, dim=-1)
            out[rows] = logits.gather(1, targets[rows, None]).squeeze(1) - lse[rows]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        grad_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) \
            if bias is not None and ctx.needs_input_grad[2] else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(start, start + ctx.chunk)
            logits = F.linear(hidden[rows], weight, bias).float()
            # d log p(y) / d logits = onehot(y) - softmax(logits)
            grad_logits = -torch.exp(logits - lse[rows, None])
            grad_logits.scatter_add_(1, targets[rows, None], torch.ones_like(lse[rows, None]))
            grad_logits *= grad_out[rows, None]  # (c, V)
            if grad_hidden is not None:
                grad_hidden[rows] = (grad_logits.to(weight.dtype) @ weight).to(hidden.dtype)
            if grad_weight is not None:
                grad_weight += grad_logits.T @ hidden[rows].float()
            if grad_bias is not None:
                grad_bias += grad_logits.sum(dim=0)
        return (
            grad_hidden,
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None or bias is None else grad_bias.to(bias.dtype),
            None,
            None,
        )


@torch.no_grad()
def _chunked_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None, chunk: int) -> Tensor:
    """Entropy (nats) of the head's distribution at each of hidden's N rows -> (N,) float32."""
    out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        logp = torch.log_softmax(F.linear(hidden[rows], weight, bias).float(), dim=-1)
        out[rows] = -(logp.exp() * logp).sum(dim=-1)
    return out


def chunked_token_logprobs(
    hidden: Tensor,
    weight: Tensor,
    targets: Tensor,
    *,
    bias: Tensor | None = None,
    chunk_tokens: int = 1024,
    entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """hidden (B, T, D) final-normed states, weight (V, D) the output head, targets (B, T) the
    token each position predicts -> log p(target) (B, T) float32 with gradient into hidden and
    weight, and (with entropy=True) the entropy (B, T) of each position's distribution, no
    gradient (a metric)."""
    bsz, seqlen, dim = hidden.shape
    flat, flat_targets = hidden.reshape(-1, dim), targets.reshape(-1)
    logp = _ChunkedLogprobs.apply(flat, weight, bias, flat_targets, chunk_tokens)
    ent = _chunked_entropy(flat.detach(), weight.detach(), None if bias is None else bias.detach(),
                           chunk_tokens) if entropy else None
    return logp.view(bsz, seqlen), None if ent is None else ent.view(bsz, seqlen)


def naive_token_logprobs(hidden: Tensor, weight: Tensor, targets: Tensor, bias: Tensor | None = None) -> Tensor:
    """Reference: the full (B, T, V) float32 logits, log_softmax, gather."""
    logits = F.linear(hidden, weight, bias).float()
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None]).squeeze(-1)


def final_hidden(model: nn.Module, tokens: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """The final-normed hidden states (B, T, D) that the output head reads, and our MoE's
    sequence-wise balance loss (alpha applied; None when off or for other models)."""
    if isinstance(model, Transformer):
        return model.trunk(tokens)  # causal: right padding cannot leak into earlier positions
    base = getattr(model, "base_model", None)
    if base is None or base is model:
        raise TypeError(f"{type(model).__name__} is neither our Transformer nor a transformers causal LM")
    return base(input_ids=tokens, attention_mask=attention_mask).last_hidden_state, None


def output_head(model: nn.Module) -> tuple[Tensor, Tensor | None]:
    """(weight (V, D), bias or None) of the model's output head."""
    head = model.lm_head if isinstance(model, Transformer) else getattr(model, "get_output_embeddings", lambda: None)()
    if not isinstance(head, nn.Linear):
        raise TypeError(f"output head of {type(model).__name__} is {type(head).__name__}, not nn.Linear")
    return head.weight, head.bias


@dataclass
class SequenceLogprobs:
    """logprobs (B, T-1) float32: position t scores token t + 1, with gradient; entropy (B, T-1)
    or None, no gradient; aux_loss: the model's balance loss for this forward, or None."""

    logprobs: Tensor
    entropy: Tensor | None
    aux_loss: Tensor | None


def sequence_logprobs(
    model: nn.Module,
    tokens: Tensor,
    attention_mask: Tensor | None = None,
    *,
    chunk_tokens: int = 1024,
    entropy: bool = False,
) -> SequenceLogprobs:
    """tokens (B, T) -> log p(tokens[:, t+1] | tokens[:, :t+1]) for t < T - 1, with gradient into
    the model (and the per-position entropies with entropy=True)."""
    hidden, aux = final_hidden(model, tokens, attention_mask)
    weight, bias = output_head(model)
    logp, ent = chunked_token_logprobs(hidden[:, :-1], weight, tokens[:, 1:], bias=bias,
                                       chunk_tokens=chunk_tokens, entropy=entropy)
    return SequenceLogprobs(logp, ent, aux)
