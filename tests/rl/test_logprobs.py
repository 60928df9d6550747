"""Chunked log-probs equal the naive full-logits computation, values and gradients, for our policy
and for a transformers causal LM."""

from __future__ import annotations

import pytest
import torch

from policy.model import ModelArgs, Transformer
from prover.rl.logprobs import chunked_token_logprobs, naive_token_logprobs, sequence_logprobs


def _micro_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelArgs(
        vocab_size=97, dim=32, n_layers=2, n_dense_layers=1, max_seq_len=64, n_heads=2, q_lora_rank=16,
        kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, inter_dim=48, moe_inter_dim=16,
        n_routed_experts=8, n_activated_experts=2, n_expert_groups=4, n_limited_groups=2, n_mtp_layers=0,
    ))


@pytest.mark.parametrize("chunk", [1, 5, 1000])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_matches_naive_values_and_gradients(chunk: int, with_bias: bool) -> None:
    torch.manual_seed(1)
    hidden = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(50, dtype=torch.float64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 50, (3, 7))
    upstream = torch.randn(3, 7, dtype=torch.float32)

    got, ent = chunked_token_logprobs(hidden, weight, targets, bias=bias, chunk_tokens=chunk, entropy=True)
    (got * upstream).sum().backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias) if t is not None]
    for t in (hidden, weight, bias):
        if t is not None:
            t.grad = None
    want = naive_token_logprobs(hidden, weight, targets, bias)
    (want * upstream).sum().backward()
    want_grads = [t.grad for t in (hidden, weight, bias) if t is not None]

    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()
    for g, w in zip(grads, want_grads, strict=True):
        assert torch.allclose(g, w, atol=1e-6), (g - w).abs().max()
    logits = torch.nn.functional.linear(hidden, weight, bias).float()
    p = logits.softmax(-1)
    want_ent = -(p * p.log()).sum(-1)
    assert ent is not None and torch.allclose(ent, want_ent, atol=1e-5), (ent - want_ent).abs().max()


def test_policy_sequence_logprobs_equal_log_softmax_of_forward() -> None:
    model = _micro_model()
    tokens = torch.randint(0, 97, (2, 11))
    got = sequence_logprobs(model, tokens, chunk_tokens=4).logprobs
    want = torch.log_softmax(model(tokens).float(), -1)[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
    assert got.shape == (2, 10) and torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    got.sum().backward()
    assert model.layers[0].self_attn.o_proj.weight.grad is not None, "gradient reaches the trunk"
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def test_hf_causal_lm_sequence_logprobs() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=61, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32))
    tokens = torch.randint(0, 61, (2, 9))
    mask = torch.ones_like(tokens)
    got = sequence_logprobs(model, tokens, mask, chunk_tokens=3).logprobs
    logits = model(input_ids=tokens, attention_mask=mask).logits.float()
    want = torch.log_softmax(logits, -1)[:, :-1].gather(-1, tokens[:, 1:, None]).squeeze(-1)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    got.sum().backward()
    assert model.model.layers[0].mlp.down_proj.weight.grad is not None
