"""The GRPO learner: episodes in, optimizer steps out, weights out for the rollout engines.

One `Learner.step(episodes)` is one rollout batch: group-relative advantages from the rewards
(`prover.rl.losses` ADVANTAGE_ESTIMATORS), the batch split into `grpo.mini_batches` optimizer
steps, each accumulated over micro-batches of `micro_batch_size` sequences whose losses are
normalised by the whole mini-batch's counts (so accumulation changes nothing but memory),
gradient clipping, AdamW. The learner's log-probs of the sampled tokens come from
`prover.rl.logprobs` (chunked: the full logits never exist).

The ratio's denominator pi_old is the learner's own log-prob before the first update of the
step; with one mini-batch that is the current forward, detached (ratio 1: on-policy). The
engine's logprobs (`Episode.rollout_logprobs`) enter only through the mismatch correction
(TIS / MIS / IcePop) between pi_old and the engine.

For our MoE policy the aux-loss-free balancing bias is updated after every optimizer step
(`policy.balancing`, a post-step hook), and the load it used is reported as MaxVio; routing
replay (R3, `policy.routing_replay`) makes every learner forward use the engine's experts.
Works for any transformers causal LM as well (no balancing, no replay).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from policy.balancing import expert_load, max_violation, register_bias_update_hook
from policy.checkpoint import checkpoint_tensors
from policy.distributed_checkpoint import gathered_model, is_distributed
from policy.launch import clip_grad_norm
from policy.model import Gate, MoE, Transformer
from policy.routing_replay import replay_routing
from prover.config import GRPOConfig
from prover.rl.episodes import Episode
from prover.rl.logprobs import SequenceLogprobs, sequence_logprobs
from prover.rl.losses import ADVANTAGE_ESTIMATORS, grpo_loss, rollout_correction
from prover.rl.sharding import all_summed


@dataclass
class _Batch:
    """Episodes as right-padded tensors. Log-prob position t scores token t + 1."""

    tokens: Tensor  # (B, L) long, prompt + completion, padded with 0
    attention: Tensor  # (B, L) long, 1 on real tokens
    mask: Tensor  # (B, L-1) float: 1 where the scored token was sampled by the policy (trained)
    rollout_logp: Tensor  # (B, L-1) float32, the engine's logprobs at the trained positions
    advantages: Tensor  # (B,)
    routed: Tensor | None  # (B, L, n_layers, k) long, -1 = the router's own choice

    def rows(self, index: slice) -> _Batch:
        return _Batch(
            self.tokens[index], self.attention[index], self.mask[index], self.rollout_logp[index],
            self.advantages[index], None if self.routed is None else self.routed[index],
        )

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def without_loss(self) -> _Batch:
        """The same rows with an all-zero loss mask: a forward and backward that add nothing."""
        return _Batch(self.tokens, self.attention, torch.zeros_like(self.mask), self.rollout_logp, self.advantages,
                      self.routed)


@contextmanager
def _uncounted(model: nn.Module) -> Iterator[None]:
    """The MoE gates' token counts (the balancing bias's input) as they were before the block."""
    gates = [m for m in model.modules() if isinstance(m, Gate)]
    saved = [g.tokens_per_expert.clone() for g in gates]
    try:
        yield
    finally:
        for gate, counts in zip(gates, saved, strict=True):
            gate.tokens_per_expert.copy_(counts)


def _sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    names = sorted(values)
    return dict(zip(names, all_summed([values[k] for k in names]), strict=True))


def _max_positions(model: nn.Module) -> int | None:
    if isinstance(model, Transformer):
        return model.args.max_seq_len
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


class Learner:
    """Holds the policy, its optimizer and (when kl_coef > 0) a frozen reference model.

    model: our `Transformer` or a transformers causal LM, on its training device.
    max_tokens: the completion budget (`policy.sampling.max_tokens`), Dr. GRPO's normaliser.
    """

    def __init__(
        self,
        model: nn.Module,
        config: GRPOConfig,
        *,
        learning_rate: float,
        micro_batch_size: int,
        max_grad_norm: float,
        max_tokens: int,
        reference: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ):
        if config.kl_coef > 0 and reference is None:
            raise ValueError(f"grpo.kl_coef = {config.kl_coef} needs a reference model")
        self.is_moe = isinstance(model, Transformer) and any(isinstance(m, MoE) for m in model.modules())
        if config.routing_replay and not self.is_moe:
            raise ValueError(f"grpo.routing_replay needs our MoE policy, not {type(model).__name__}")
        self.model = model
        self.config = config
        self.micro_batch_size = micro_batch_size
        self.max_grad_norm = max_grad_norm
        self.max_tokens = max_tokens
        self.reference = reference
        if reference is not None:
            reference.requires_grad_(False).eval()
        # AdamW without weight decay: TRL's GRPO default; DeepSeekMath's lr 1e-6 is the caller's.
        self.optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
        self._bias_hook = register_bias_update_hook(self.optimizer, model) if self.is_moe else None
        self.steps_done = 0
        self.device = next(model.parameters()).device
        # A sharded learner (policy.parallelize under a process group): each rank trains on its
        # share of every mini-batch, and FSDP averages the gradients over the ranks.
        self.world = dist.get_world_size() if is_distributed() else 1
        self.rank = dist.get_rank() if is_distributed() else 0

    # --- batching -----------------------------------------------------------------------------

    def _advantages(self, episodes: Sequence[Episode]) -> Tensor:
        rewards = torch.tensor([e.reward for e in episodes], dtype=torch.float32)
        ids: dict[int, int] = {}
        group = torch.tensor([ids.setdefault(e.group, len(ids)) for e in episodes])
        fn = ADVANTAGE_ESTIMATORS[self.config.advantage_estimator]
        return fn(rewards, group, self.config.advantage_eps)

    def _collate(self, episodes: Sequence[Episode], advantages: Tensor) -> _Batch:
        limit = _max_positions(self.model)
        lengths = [len(e.prompt_ids) + len(e.completion_ids) for e in episodes]
        longest = max(lengths)
        if limit is not None and longest > limit:
            worst = episodes[lengths.index(longest)]
            raise ValueError(
                f"episode {worst.problem_id}: {len(worst.prompt_ids)} prompt + {len(worst.completion_ids)} "
                f"completion tokens = {longest} exceed the model's {limit} positions"
            )
        bsz = len(episodes)
        tokens = torch.zeros(bsz, longest, dtype=torch.long)
        attention = torch.zeros(bsz, longest, dtype=torch.long)
        mask = torch.zeros(bsz, longest - 1)
        rollout = torch.zeros(bsz, longest - 1)
        routed = None
        if self.config.routing_replay:
            assert isinstance(self.model, Transformer)
            a = self.model.args
            routed = torch.full((bsz, longest, a.n_layers, a.n_activated_experts), -1, dtype=torch.long)
        for i, e in enumerate(episodes):
            p, n = len(e.prompt_ids), len(e.completion_ids)
            if p == 0:
                raise ValueError(f"episode {e.problem_id}: empty prompt (the first completion token needs a prefix)")
            tokens[i, : p + n] = torch.tensor(e.prompt_ids + e.completion_ids)
            attention[i, : p + n] = 1
            if not (self.config.mask_truncated_completions and e.truncated):
                mask[i, p - 1 : p - 1 + n] = torch.tensor(e.loss_mask, dtype=torch.float32)
            rollout[i, p - 1 : p - 1 + n] = torch.tensor(e.rollout_logprobs, dtype=torch.float32)
            if routed is not None:
                if e.routed_experts is None:
                    raise ValueError(f"grpo.routing_replay is on but episode {e.problem_id} has no routed_experts")
                given = torch.as_tensor(e.routed_experts, dtype=torch.long)[: p + n]
                routed[i, : given.shape[0]] = given
        return _Batch(
            tokens.to(self.device), attention.to(self.device), mask.to(self.device),
            rollout.to(self.device), advantages.to(self.device),
            None if routed is None else routed.to(self.device),
        )

    # --- forward ------------------------------------------------------------------------------

    @contextmanager
    def _routing(self, model: nn.Module, batch: _Batch) -> Iterator[None]:
        if batch.routed is not None and isinstance(model, Transformer):
            with replay_routing(model, batch.routed):
                yield
        else:
            yield

    def _logprobs(self, model: nn.Module, batch: _Batch, *, entropy: bool = False) -> SequenceLogprobs:
        with self._routing(model, batch):
            return sequence_logprobs(model, batch.tokens, batch.attention,
                                     chunk_tokens=self.config.logprob_chunk_tokens, entropy=entropy)

    @torch.no_grad()
    def _frozen_logprobs(self, model: nn.Module, pieces: Sequence[_Batch]) -> list[Tensor]:
        """Log-probs without gradient, micro-batch by micro-batch, in eval mode (no expert counts)."""
        was_training = model.training
        model.eval()
        try:
            return [self._logprobs(model, piece).logprobs for piece in pieces]
        finally:
            model.train(was_training)

    def _micro_batches(self, mini_batch: _Batch) -> tuple[list[_Batch], int]:
        """This rank's micro-batches of a mini-batch, and how many of them (at the end) are padding.

        One device: the whole mini-batch in `micro_batch_size` rows. Sharded: rank r takes rows
        r*P .. r*P+P-1 (P = ceil(rows / ranks)); a rank with fewer rows adds one-row micro-batches
        that add nothing (no loss, their expert counts undone), so every rank makes the same
        number of forwards and backwards (the collectives of a sharded model)."""
        size = self.micro_batch_size
        if self.world == 1:
            return [mini_batch.rows(slice(s, s + size)) for s in range(0, len(mini_batch), size)], 0
        per = -(-len(mini_batch) // self.world)
        mine = mini_batch.rows(slice(self.rank * per, (self.rank + 1) * per))
        pieces = [mine.rows(slice(s, s + size)) for s in range(0, len(mine), size)]
        pad = -(-per // size) - len(pieces)
        return pieces + [mini_batch.rows(slice(0, 1)).without_loss()] * pad, pad

    # --- the step -----------------------------------------------------------------------------

    def step(self, episodes: Sequence[Episode]) -> dict[str, float]:
        """One rollout batch -> `grpo.mini_batches` optimizer steps. Returns metrics (floats).
        Sharded: every rank is given all the episodes (the advantages and the loss normalisers
        are the whole batch's) and trains on its share of each mini-batch."""
        if not episodes:
            raise ValueError("no episodes to learn from")
        cfg = self.config
        advantages = self._advantages(episodes)
        batch = self._collate(episodes, advantages)
        n = len(batch)
        if n % cfg.mini_batches:
            raise ValueError(f"{n} episodes do not split into grpo.mini_batches = {cfg.mini_batches}")
        self.model.train()
        mini = n // cfg.mini_batches
        minis = [batch.rows(slice(m * mini, (m + 1) * mini)) for m in range(cfg.mini_batches)]
        pieces = [self._micro_batches(b) for b in minis]
        old_logps = [self._frozen_logprobs(self.model, p) for p, _ in pieces] if cfg.mini_batches > 1 else None
        ref_logps = ([self._frozen_logprobs(self.reference, p) for p, _ in pieces]
                     if self.reference is not None else None)

        totals: dict[str, float] = {}    # summed over the ranks at the end
        weights: dict[str, float] = {}
        shared: dict[str, list[float]] = {}   # the same on every rank (global norms, expert load)

        def record(name: str, value: Tensor | float, weight: float = 1.0) -> None:
            totals[name] = totals.get(name, 0.0) + float(value) * weight
            weights[name] = weights.get(name, 0.0) + weight

        for m, mini_batch in enumerate(minis):
            micro_batches, padding = pieces[m]
            n_tokens = float(mini_batch.mask.sum().clamp(min=1))   # the whole mini-batch's, on every rank
            self.optimizer.zero_grad(set_to_none=True)
            for i, micro in enumerate(micro_batches):
                is_pad = i >= len(micro_batches) - padding
                with _uncounted(self.model) if is_pad else nullcontext():
                    out = self._logprobs(self.model, micro, entropy=True)
                logp = out.logprobs
                old = logp.detach() if old_logps is None else old_logps[m][i]
                is_weights, is_metrics = rollout_correction(
                    old, micro.rollout_logp, micro.mask, cfg.rollout_correction, cfg.rollout_is_level,
                    threshold=cfg.rollout_is_threshold, threshold_low=cfg.rollout_is_threshold_low,
                )
                loss, loss_metrics = grpo_loss(
                    cfg, logp=logp, old_logp=old, advantages=micro.advantages, mask=micro.mask,
                    is_weights=is_weights, ref_logp=None if ref_logps is None else ref_logps[m][i],
                    n_sequences=mini, n_tokens=n_tokens, norm_length=self.max_tokens,
                )
                if out.aux_loss is not None and not is_pad:  # sequence-wise balance loss, averaged over micro-batches
                    loss = loss + out.aux_loss * len(micro) / mini
                # The loss is this rank's part of a sum normalised by the whole mini-batch, and the
                # sharded backward averages gradients over ranks: x world makes it their sum.
                (loss * self.world if self.world > 1 else loss).backward()
                tokens = float(micro.mask.sum())
                record("loss", loss.detach())
                for name, value in {**loss_metrics, **is_metrics}.items():
                    record(name, value, tokens)
                if out.entropy is not None:
                    record("entropy", (out.entropy * micro.mask).sum() / max(tokens, 1.0), tokens)
            # listed now: a sharded root swaps its parameters while gathered (after a forward)
            grad_norm = clip_grad_norm([p for p in self.model.parameters() if p.requires_grad], self.max_grad_norm)
            shared.setdefault("grad_norm", []).append(float(grad_norm))
            if self.is_moe:
                violation = max_violation(expert_load(self.model))   # counts summed over ranks
                if violation.numel():
                    shared.setdefault("expert_maxvio_mean", []).append(float(violation.mean()))
                    shared.setdefault("expert_maxvio_max", []).append(float(violation.max()))
            self.optimizer.step()  # the balancing hook updates the expert bias here
        self.steps_done += 1
        if self.world > 1:
            totals, weights = _sum_over_ranks(totals), _sum_over_ranks(weights)
        for name, values in shared.items():
            totals[name], weights[name] = sum(values), float(len(values))

        metrics = {k: totals[k] / weights[k] if weights[k] else 0.0 for k in totals}
        metrics["loss"] = totals["loss"] / cfg.mini_batches  # sum over micro-batches, mean over steps
        rewards = [e.reward for e in episodes]
        metrics.update({
            "reward_mean": sum(rewards) / len(rewards),
            "accepted_share": sum(e.outcome == "accepted" for e in episodes) / len(episodes),
            "advantage_abs_mean": float(advantages.abs().mean()),
            "truncated_share": sum(e.truncated for e in episodes) / len(episodes),
            "response_length_mean": sum(e.sampled_tokens for e in episodes) / len(episodes),
            "response_length_max": float(max(e.sampled_tokens for e in episodes)),
            "trained_tokens": float(batch.mask.sum()),
            "sequences": float(n),
            "optimizer_steps": float(cfg.mini_batches),
            "learning_rate": float(self.optimizer.param_groups[0]["lr"]),
        })
        if any(not math.isfinite(v) for v in metrics.values()):
            bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
            raise FloatingPointError(f"non-finite learner metrics: {bad}")
        return metrics

    # --- weights and resume -------------------------------------------------------------------

    def export_weights(self) -> dict[str, Tensor]:
        """The policy's weights under the checkpoint's names, for `GenerationEngine.load_weights`
        (policy.engines.base.WeightsSource). Tensors are the live ones (no copy): the fleet moves
        or serialises them before the next step changes them. Sharded: every rank calls it, rank 0
        gets a gathered copy, the others {}."""
        if self.world > 1:   # collective: rank 0 gathers the shards, the others return nothing
            whole = gathered_model(self.model)
            return {} if whole is None else checkpoint_tensors(whole)
        if isinstance(self.model, Transformer):
            return checkpoint_tensors(self.model)
        return {name: t.detach() for name, t in self.model.state_dict().items()}

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs: model, optimizer, steps done."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "steps_done": self.steps_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps_done = int(state["steps_done"])

    def close(self) -> None:
        """Remove the balancing hook from the optimizer."""
        if self._bias_hook is not None:
            self._bias_hook.remove()
            self._bias_hook = None

