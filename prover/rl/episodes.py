"""What a rollout hands the learner: one `Episode` per sampled proof (or tactic dialogue).

Token-in/token-out: `prompt_ids` and `completion_ids` are exactly the tokens the engine saw and
sampled, never re-tokenised text, so the learner scores the very tokens whose logprobs the
engine returned. In a multi-turn (tactic) episode the environment's observations are spliced
into `completion_ids` with `loss_mask` False: they are context for the policy, not its actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Episode:
    """One sampled completion of one problem, judged.

    problem_id: the problem's id (one GRPO group = the episodes of one problem in one step).
    group: index of the group in its step's batch (episodes with equal `group` are compared).
    prompt_ids: the prompt's token ids as the engine saw them.
    completion_ids: every token after the prompt: sampled ones and, in tactic episodes, the
        environment's observations.
    loss_mask: per completion token, True where the policy sampled it (trained on), False for
        environment tokens.
    rollout_logprobs: per completion token, log p of the token under the engine that sampled it
        (nats; 0.0 where `loss_mask` is False). The learner's ratio and the rollout/learner
        mismatch correction start from these.
    reward: from `prover.rl.rewards` (the Lean verdict; never anything else).
    outcome: the verdict's outcome string ("accepted", "rejected", "timeout"), for metrics.
    truncated: the engine stopped at its token limit (`finish_reason == "length"`).
    policy_version: the learner step whose weights sampled it (the staleness bound uses it).
    routed_experts: for MoE routing replay (R3), the experts the engine chose for each token of
        prompt + completion, int array (tokens, layers, k) indexed by the model's layer number
        (vLLM's `CompletionOutput.routed_experts` layout, [seq_len, layer_num, topk]; dense layers'
        rows are ignored). Rows may stop short of the last token (it is never fed back); None when
        the engine did not return them.
    """

    problem_id: str
    group: int
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    loss_mask: tuple[bool, ...]
    rollout_logprobs: tuple[float, ...]
    reward: float
    outcome: str
    truncated: bool = False
    policy_version: int = 0
    routed_experts: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.completion_ids)
        if len(self.loss_mask) != n or len(self.rollout_logprobs) != n:
            raise ValueError(f"episode {self.problem_id}: {n} completion tokens but "
                             f"{len(self.loss_mask)} mask entries and {len(self.rollout_logprobs)} logprobs")

    @property
    def sampled_tokens(self) -> int:
        """Tokens the policy produced (the ones the loss sees)."""
        return sum(self.loss_mask)


def groups(episodes: Sequence[Episode]) -> dict[int, list[Episode]]:
    """Episodes by `group`, in order of first appearance."""
    out: dict[int, list[Episode]] = {}
    for e in episodes:
        out.setdefault(e.group, []).append(e)
    return out
