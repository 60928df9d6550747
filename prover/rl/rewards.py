"""Rewards: the one place where a Lean verdict becomes a number, and where groups are kept or dropped.

The reward is Lean's acceptance and nothing else: an `Accepted` verdict (every acceptance rule
of lean_env held) scores 1, a rejected or timed-out proof 0. A `NotChecked` verdict caused by our
own infrastructure says nothing about the proof, so it is not scored at all (None): the episode
leaves the batch rather than teaching the policy that a good proof was worth 0. Optional shaping,
off by default and configured in `prover.config.GRPOConfig`:
  - format: a completion with no Lean code (not_checked:no_code) scores -format_penalty;
  - length: DAPO's soft overlong punishment (Yu et al. 2025, eq. 13) over the last
    overlong_buffer_tokens of the completion budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lean_env.verdict import Accepted, NotChecked, Verdict
from prover.config import GRPOConfig
from prover.rl.episodes import Episode, groups


def overlong_penalty(completion_tokens: int, max_tokens: int, buffer_tokens: int, factor: float) -> float:
    """DAPO eq. 13: 0 up to max_tokens - buffer; then falling linearly to -factor at max_tokens;
    -factor beyond (a completion cut at the limit). buffer_tokens = 0 turns it off."""
    if buffer_tokens <= 0:
        return 0.0
    start = max_tokens - buffer_tokens
    if completion_tokens <= start:
        return 0.0
    if completion_tokens <= max_tokens:
        return factor * (start - completion_tokens) / buffer_tokens
    return -factor


def reward(verdict: Verdict, *, completion_tokens: int, max_tokens: int, config: GRPOConfig) -> float | None:
    """The reward of one completion, or None when Lean never judged it for reasons of our own
    (`NotChecked` with cause "infrastructure"): such episodes are excluded, never scored 0."""
    if isinstance(verdict, NotChecked):
        if verdict.cause == "infrastructure":
            return None
        base = -config.format_penalty  # the policy wrote no Lean code at all
    else:
        base = 1.0 if isinstance(verdict, Accepted) else 0.0
    return base + overlong_penalty(
        completion_tokens, max_tokens, config.overlong_buffer_tokens, config.overlong_penalty_factor
    )


RewardFn = Callable[[Verdict, int], float | None]
"""(verdict, completion tokens) -> reward or None: what rollouts call to score an episode."""


def lean_reward(config: GRPOConfig, max_tokens: int) -> RewardFn:
    """`reward` with the run's shaping options bound: the one scorer every rollout uses."""
    return lambda verdict, completion_tokens: reward(verdict, completion_tokens=completion_tokens,
                                                     max_tokens=max_tokens, config=config)


def informative_groups(episodes: Sequence[Episode]) -> tuple[list[Episode], int]:
    """DAPO's dynamic-sampling filter: keep the groups whose rewards are not all equal (an
    all-equal group has zero advantage everywhere and no gradient). Returns the kept episodes and
    the number of groups dropped; the rollout side samples more prompts to refill."""
    kept: list[Episode] = []
    dropped = 0
    for members in groups(episodes).values():
        if len({e.reward for e in members}) > 1:
            kept.extend(members)
        else:
            dropped += 1
    return kept, dropped


def fill_informative(first: Sequence[Episode], draw: Callable[[int, int], Sequence[Episode]], *, want: int,
                     max_rounds: int) -> tuple[list[Episode], dict[str, float]]:
    """DAPO's dynamic sampling (Yu et al. 2025, sec. 3.2): keep the informative groups of `first`
    and, while fewer than `want`, call `draw(round, first_group)` for `want` more problems (their
    groups numbered from `first_group`), at most `max_rounds` times. Returns the first `want`
    informative groups' episodes (fewer when the rounds run out) and counts for the metrics,
    with `sampled_reward_mean`: the mean reward of `first`, before any filtering (the kept
    groups' mean leaves out the all-pass and all-fail groups, so it is no estimate of the
    policy's reward)."""
    kept, dropped = informative_groups(first)
    sampled = sum(e.reward for e in first) / len(first) if first else 0.0
    next_group = max([want - 1, *(e.group for e in first)]) + 1
    rounds = 0
    while len(groups(kept)) < want and rounds < max_rounds:
        rounds += 1
        more = draw(rounds, next_group)
        next_group = max([next_group + want - 1, *(e.group for e in more)]) + 1
        informative, none = informative_groups(more)
        kept += informative
        dropped += none
    chosen = set(list(groups(kept))[:want])
    return [e for e in kept if e.group in chosen], {
        "dynamic_refill_rounds": float(rounds), "dynamic_dropped_groups": float(dropped),
        "dynamic_informative_groups": float(len(chosen)), "sampled_reward_mean": sampled}
