"""What a rollout hands the learner: one `Episode` per sampled proof (or tactic dialogue).

Token-in/token-out: `prompt_ids` and `completion_ids` are exactly the tokens the engine saw and
sampled, never re-tokenised text, so the learner scores the very tokens whose logprobs the
engine returned. In a multi-turn (tactic) episode the environment's observations are spliced
into `completion_ids` with `loss_mask` False: they are context for the policy, not its actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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
