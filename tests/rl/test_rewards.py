"""Rewards come from Lean's verdict alone; infrastructure failures are excluded, never scored 0;
shaping (format, DAPO's soft overlong punishment) is optional and computed by its formula."""

from __future__ import annotations

import pytest

from lean_env.verdict import Accepted, NotChecked, Rejected, RejectReason, TimedOut
from prover.config import GRPOConfig
from prover.rl.episodes import Episode
from prover.rl.rewards import fill_informative, informative_groups, overlong_penalty, reward

LEAN = "lean 4.19.0 (repl v4.19.0)"
OFF = GRPOConfig()


@pytest.mark.parametrize(("verdict", "want"), [
    (Accepted(checked_by=LEAN, time_s=1.0, axioms=("propext",)), 1.0),
    (Rejected(checked_by=LEAN, time_s=1.0, reason=RejectReason.LEAN_ERROR), 0.0),
    (Rejected(checked_by=LEAN, time_s=0.0, reason=RejectReason.FORBIDDEN, detail="sorry"), 0.0),
    (TimedOut(checked_by=LEAN, time_s=60.0, limit_s=60.0), 0.0),
    (NotChecked(checked_by=LEAN, time_s=0.0, cause="no_code"), 0.0),
    (NotChecked(checked_by=LEAN, time_s=0.0, cause="infrastructure", detail="REPL died 3 times"), None),
])
def test_reward_is_acceptance(verdict, want) -> None:
    got = reward(verdict, completion_tokens=10, max_tokens=100, config=OFF)
    assert got == want, (verdict.outcome, got, want)


def test_format_penalty_applies_only_to_completions_without_code() -> None:
    config = GRPOConfig(format_penalty=0.1)
    no_code = NotChecked(checked_by=LEAN, time_s=0.0, cause="no_code")
    rejected = Rejected(checked_by=LEAN, time_s=1.0)
    infra = NotChecked(checked_by=LEAN, time_s=0.0, cause="infrastructure")
    got = [reward(v, completion_tokens=5, max_tokens=100, config=config) for v in (no_code, rejected, infra)]
    assert got == [-0.1, 0.0, None], got


def test_soft_overlong_penalty_dapo_eq13() -> None:
    """L_max = 20, L_cache = 4: 0 up to 16 tokens; (16 - |y|) / 4 in (16, 20]; -1 beyond."""
    got = [overlong_penalty(n, 20, 4, 1.0) for n in (10, 16, 17, 18, 20, 25)]
    assert got == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0], got
    assert overlong_penalty(18, 20, 4, 0.5) == -0.25
    assert overlong_penalty(25, 20, 0, 1.0) == 0.0, "buffer 0 turns it off"
    config = GRPOConfig(overlong_buffer_tokens=4)
    accepted = Accepted(checked_by=LEAN, time_s=1.0)
    assert reward(accepted, completion_tokens=18, max_tokens=20, config=config) == 0.5


def _episode(group: int, r: float) -> Episode:
    return Episode(problem_id=f"p{group}", group=group, prompt_ids=(1,), completion_ids=(2,), loss_mask=(True,),
                   rollout_logprobs=(-0.1,), reward=r, outcome="accepted" if r == 1 else "rejected:lean_error")


def test_dynamic_sampling_drops_groups_with_equal_rewards() -> None:
    episodes = [_episode(0, 1.0), _episode(0, 1.0), _episode(1, 0.0), _episode(1, 1.0), _episode(2, 0.0),
                _episode(2, 0.0)]
    kept, dropped = informative_groups(episodes)
    assert [e.group for e in kept] == [1, 1] and dropped == 2, ([e.group for e in kept], dropped)


def _group(group: int, rewards: list[float]) -> list[Episode]:
    return [Episode(f"p{group}", group, (1,), (2,), (True,), (-0.1,), r, "accepted" if r else "rejected")
            for r in rewards]


def test_dynamic_sampling_refills_until_enough_informative_groups() -> None:
    """DAPO's dynamic sampling: all-equal groups are dropped and more prompts drawn, numbered after
    every group seen so far, until `want` informative groups are in; at most `want` are kept."""
    first = _group(0, [1, 0]) + _group(1, [0, 0]) + _group(2, [1, 1])       # 1 informative of 3
    calls: list[tuple[int, int]] = []

    def draw(round_: int, first_group: int) -> list[Episode]:
        calls.append((round_, first_group))
        if round_ == 1:
            return _group(first_group, [0, 0]) + _group(first_group + 1, [1, 0]) + _group(first_group + 2, [0, 0])
        return _group(first_group, [0, 1]) + _group(first_group + 1, [1, 0]) + _group(first_group + 2, [1, 0])

    kept, stats = fill_informative(first, draw, want=3, max_rounds=8)
    assert calls == [(1, 3), (2, 6)], calls
    assert sorted({e.group for e in kept}) == [0, 4, 6], sorted({e.group for e in kept})
    assert stats == {"dynamic_refill_rounds": 2.0, "dynamic_dropped_groups": 4.0,
                     "dynamic_informative_groups": 3.0, "sampled_reward_mean": 0.5}, stats


def test_dynamic_sampling_stops_after_its_rounds() -> None:
    kept, stats = fill_informative(_group(0, [1, 1]), lambda r, g: _group(g, [0, 0]), want=2, max_rounds=3)
    assert kept == [] and stats["dynamic_refill_rounds"] == 3.0 and stats["dynamic_dropped_groups"] == 4.0, stats
