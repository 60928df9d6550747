"""The learner, observed: GRPO steps raise the rewarded completion's log-prob, gradient accumulation
changes nothing but memory, the MoE balancing keeps running, routing replay uses the given experts."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from policy.checkpoint import load_pretrained, save_pretrained
from policy.model import Gate, ModelArgs, Transformer
from policy.routing_replay import moe_layer_ids, replay_routing
from prover.config import GRPOConfig
from prover.rl.episodes import Episode
from prover.rl.learner import Learner
from prover.rl.logprobs import sequence_logprobs

ARGS = ModelArgs(
    vocab_size=97, dim=32, n_layers=3, n_dense_layers=1, max_seq_len=64, n_heads=2, q_lora_rank=16,
    kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, inter_dim=48, moe_inter_dim=16,
    n_routed_experts=8, n_activated_experts=2, n_expert_groups=4, n_limited_groups=2, n_mtp_layers=0,
)
PROMPT = (1, 5, 9, 13)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MoE policy saved as an HF-format checkpoint, as the learner starts from one."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("policy") / "ckpt"
    save_pretrained(Transformer(ARGS), path)
    return path


_LOADED: dict[Path, Transformer] = {}


def _policy(checkpoint: Path) -> Transformer:
    """A fresh copy of the checkpoint's model (loaded once per module)."""
    if checkpoint not in _LOADED:
        _LOADED[checkpoint] = load_pretrained(checkpoint)
    return copy.deepcopy(_LOADED[checkpoint])


@torch.no_grad()
def _completion_logprobs(model: torch.nn.Module, completion: tuple[int, ...]) -> torch.Tensor:
    was = model.training
    model.eval()
    tokens = torch.tensor([PROMPT + completion])
    logp = sequence_logprobs(model, tokens).logprobs[0, len(PROMPT) - 1:]
    model.train(was)
    return logp


def _group(model: torch.nn.Module, completions: list[tuple[int, ...]], rewards: list[float], group: int = 0,
           routed=None) -> list[Episode]:
    """Episodes as a rollout would hand them over: the engine's logprobs are the model's own."""
    return [
        Episode(problem_id=f"p{group}", group=group, prompt_ids=PROMPT, completion_ids=c,
                loss_mask=(True,) * len(c), rollout_logprobs=tuple(_completion_logprobs(model, c).tolist()),
                reward=r, outcome="accepted" if r == 1 else "rejected:lean_error",
                routed_experts=None if routed is None else routed[i])
        for i, (c, r) in enumerate(zip(completions, rewards, strict=True))
    ]


COMPLETIONS = [(20, 21, 22, 23, 2), (30, 31, 32, 2), (40, 41, 42, 43, 44, 2), (50, 51, 2)]


@pytest.mark.slow
@pytest.mark.parametrize("policy_loss", ["vanilla", "cispo", "gspo"])
def test_grpo_steps_raise_the_rewarded_completion(checkpoint: Path, policy_loss: str) -> None:
    model = _policy(checkpoint)
    bias_before = [g.e_score_correction_bias.clone() for g in model.modules() if isinstance(g, Gate)]
    config = GRPOConfig(policy_loss=policy_loss, mini_batches=2, clip_ratio_low=1.0 if policy_loss == "cispo" else 0.2)
    learner = Learner(model, config, learning_rate=3e-3, micro_batch_size=1, max_grad_norm=1.0, max_tokens=16)
    rewarded, others = COMPLETIONS[0], COMPLETIONS[1:]
    before = _completion_logprobs(model, rewarded).sum().item()
    before_others = [_completion_logprobs(model, c).sum().item() for c in others]
    metrics = {}
    for _ in range(3):
        metrics = learner.step(_group(model, COMPLETIONS, [1.0, 0.0, 0.0, 0.0]))
    after = _completion_logprobs(model, rewarded).sum().item()
    after_others = [_completion_logprobs(model, c).sum().item() for c in others]
    assert after > before + 0.5, f"{policy_loss}: log p(rewarded) {before:.3f} -> {after:.3f}"
    assert all(a < b for a, b in zip(after_others, before_others, strict=True)), (before_others, after_others)
    bias_after = [g.e_score_correction_bias for g in model.modules() if isinstance(g, Gate)]
    assert any((a != b).any() for a, b in zip(bias_after, bias_before, strict=True)), "balancing bias never moved"
    for key in ("loss", "clip_fraction", "is_masked_share", "is_weight_mean", "entropy", "grad_norm",
                "expert_maxvio_max", "reward_mean"):
        assert key in metrics, sorted(metrics)
    assert metrics["reward_mean"] == 0.25 and metrics["optimizer_steps"] == 2.0, metrics
    # The engine's logprobs are the learner's own here: no token is masked, weights are 1.
    assert metrics["is_masked_share"] == 0.0 and abs(metrics["is_weight_mean"] - 1) < 1e-4, metrics
    learner.close()


@pytest.mark.slow
def test_gradient_accumulation_equals_one_big_batch(checkpoint: Path) -> None:
    """The same step with micro-batches of 1 and of 4 sequences gives the same parameters: every
    micro-batch loss is normalised by the whole mini-batch's counts."""
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        results = []
        for micro in (1, 4):
            model = _policy(checkpoint)
            episodes = _group(model, COMPLETIONS, [1.0, 0.0, 1.0, 0.0])
            config = GRPOConfig(loss_agg_mode=mode)
            learner = Learner(model, config, learning_rate=0.1, micro_batch_size=micro, max_grad_norm=1e9,
                              max_tokens=16, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
            learner.step(episodes)
            results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        diff = (results[0] - results[1]).abs().max().item()
        assert diff < 1e-5, f"{mode}: micro-batch 1 vs 4 parameters differ by {diff}"


def test_truncated_completions_are_masked(checkpoint: Path) -> None:
    model = _policy(checkpoint)
    episodes = _group(model, COMPLETIONS, [1.0, 0.0, 0.0, 0.0])
    cut = [Episode(**{**e.__dict__, "truncated": i == 2}) for i, e in enumerate(episodes)]
    learner = Learner(model, GRPOConfig(mask_truncated_completions=True), learning_rate=1e-3, micro_batch_size=4,
                      max_grad_norm=1.0, max_tokens=16)
    metrics = learner.step(cut)
    want = sum(len(c) for i, c in enumerate(COMPLETIONS) if i != 2)
    assert metrics["trained_tokens"] == want, (metrics["trained_tokens"], want)


def test_too_long_episode_is_refused_with_numbers(checkpoint: Path) -> None:
    model = _policy(checkpoint)
    long = (7,) * 70
    episode = Episode(problem_id="long", group=0, prompt_ids=PROMPT, completion_ids=long, loss_mask=(True,) * 70,
                      rollout_logprobs=(0.0,) * 70, reward=1.0, outcome="accepted")
    learner = Learner(model, GRPOConfig(), learning_rate=1e-3, micro_batch_size=2, max_grad_norm=1.0, max_tokens=80)
    with pytest.raises(ValueError, match="4 prompt \\+ 70 completion tokens = 74 exceed the model's 64 positions"):
        learner.step([episode, episode])


def test_kl_needs_reference_and_reports_k3(checkpoint: Path) -> None:
    model = _policy(checkpoint)
    with pytest.raises(ValueError, match="kl_coef = 0.1 needs a reference model"):
        Learner(model, GRPOConfig(kl_coef=0.1), learning_rate=1e-3, micro_batch_size=2, max_grad_norm=1.0,
                max_tokens=16)
    reference = _policy(checkpoint)
    learner = Learner(model, GRPOConfig(kl_coef=0.1), learning_rate=1e-2, micro_batch_size=2, max_grad_norm=1.0,
                      max_tokens=16, reference=reference)
    first = learner.step(_group(model, COMPLETIONS, [1.0, 0.0, 0.0, 0.0]))
    second = learner.step(_group(model, COMPLETIONS, [1.0, 0.0, 0.0, 0.0]))
    assert abs(first["kl_k3"]) < 1e-6 < second["kl_k3"], (first["kl_k3"], second["kl_k3"])


def test_export_weights_load_into_a_fresh_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    model = _policy(checkpoint)
    learner = Learner(model, GRPOConfig(), learning_rate=1e-2, micro_batch_size=4, max_grad_norm=1.0, max_tokens=16)
    learner.step(_group(model, COMPLETIONS, [1.0, 0.0, 0.0, 0.0]))
    weights = learner.export_weights()
    assert "model.layers.1.mlp.experts.0.gate_proj.weight" in weights, sorted(weights)[:5]
    from safetensors.torch import save_file
    (tmp_path / "pushed").mkdir()
    save_file({k: v.contiguous().clone() for k, v in weights.items()}, str(tmp_path / "pushed" / "model.safetensors"))
    (tmp_path / "pushed" / "config.json").write_text((checkpoint / "config.json").read_text())
    reloaded = load_pretrained(tmp_path / "pushed")
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_routing_replay_uses_the_given_experts(checkpoint: Path) -> None:
    model = _policy(checkpoint).eval()
    tokens = torch.tensor([PROMPT + COMPLETIONS[0]])
    chosen: dict[int, torch.Tensor] = {}
    handles = [model.layers[i].mlp.gate.register_forward_hook(
        lambda m, i_, out, layer=i: chosen.__setitem__(layer, out[1].clone())) for i in moe_layer_ids(model)]
    with torch.no_grad():
        own = model(tokens)
    for h in handles:
        h.remove()
    T = tokens.shape[1]
    routed = torch.zeros(1, T, ARGS.n_layers, ARGS.n_activated_experts, dtype=torch.long)
    for layer, idx in chosen.items():
        routed[0, :, layer] = idx.view(T, -1)
    with torch.no_grad(), replay_routing(model, routed):
        replayed_own = model(tokens)
    assert torch.allclose(own, replayed_own, atol=1e-6), (own - replayed_own).abs().max()
    # Replaying other experts changes the output; -1 rows keep the router's own choice.
    other = (routed + 1) % ARGS.n_routed_experts
    other[0, 0] = -1
    with torch.no_grad(), replay_routing(model, other):
        replayed_other = model(tokens)
    assert not torch.allclose(own[0, 1:], replayed_other[0, 1:], atol=1e-4), "replay had no effect"
    assert torch.allclose(own[0, 0], replayed_other[0, 0], atol=1e-6), "-1 row must keep the router's choice"
    with pytest.raises(ValueError, match="expected \\(B, T, n_layers=3, k=2\\)"), \
            replay_routing(model, routed[..., :1]):
        pass


def _own_routing(model: Transformer, completion: tuple[int, ...]) -> np.ndarray:
    """The experts the model itself picks for prompt + completion, in vLLM's layout
    (tokens - 1, n_layers, k): the last token is never fed back, dense layers' rows stay 0."""
    tokens = torch.tensor([PROMPT + completion])
    chosen: dict[int, torch.Tensor] = {}
    handles = [model.layers[i].mlp.gate.register_forward_hook(
        lambda m, i_, out, layer=i: chosen.__setitem__(layer, out[1].clone())) for i in moe_layer_ids(model)]
    with torch.no_grad():
        model(tokens)
    for h in handles:
        h.remove()
    routed = np.zeros((tokens.shape[1] - 1, ARGS.n_layers, ARGS.n_activated_experts), dtype=np.uint8)
    for layer, idx in chosen.items():
        routed[:, layer] = idx[:-1].numpy()
    return routed


def test_learner_with_routing_replay_uses_the_engine_experts(checkpoint: Path) -> None:
    """Episodes carry the engine's experts; the engine's logprobs were computed with the model's own
    routing. Replaying that same routing, learner and engine agree (mismatch 0); replaying other
    experts, the learner's forward differs from the engine's, which the mismatch metric shows."""
    model = _policy(checkpoint).eval()
    own = [_own_routing(model, c) for c in COMPLETIONS]
    other = [((r.astype(np.int64) + 3) % ARGS.n_routed_experts) for r in own]
    model.train()
    config = GRPOConfig(routing_replay=True)
    learner = Learner(model, config, learning_rate=1e-4, micro_batch_size=2, max_grad_norm=1.0, max_tokens=16)
    same = learner.step(_group(model, COMPLETIONS, [1.0, 0.0, 0.0, 0.0], routed=own))
    shifted = learner.step(_group(model, COMPLETIONS, [1.0, 0.0, 0.0, 0.0], routed=other))
    assert same["mismatch_k3"] < 1e-8 < shifted["mismatch_k3"], (same["mismatch_k3"], shifted["mismatch_k3"])
    assert same["grad_norm"] > 0, same
    with pytest.raises(ValueError, match="has no routed_experts"):
        learner.step(_group(model, COMPLETIONS, [1.0, 0.0, 0.0, 0.0]))


def test_hf_causal_lm_learns_too() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))
    learner = Learner(model, GRPOConfig(), learning_rate=1e-2, micro_batch_size=4, max_grad_norm=1.0, max_tokens=16)
    before = _completion_logprobs(model, COMPLETIONS[0]).sum().item()
    for _ in range(3):
        learner.step(_group(model, COMPLETIONS, [1.0, 0.0, 0.0, 0.0]))
    after = _completion_logprobs(model, COMPLETIONS[0]).sum().item()
    assert after > before + 0.5, (before, after)
    assert "model.layers.0.mlp.down_proj.weight" in learner.export_weights()
