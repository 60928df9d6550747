"""The fleet's three workers, as plain classes (`prover.fleet.supervisor` makes Ray actors of
them, so each also runs, and is tested, without Ray):

- `RolloutWorker` holds one generation engine (`policy.engines.make_engine`): samples whole
  proofs (all at once, or streamed one problem's at a time as they finish), answers tactic
  prompts, takes new weights (`load_weights`, no restart);
- `VerifierWorker` holds one `lean_env` verifier (`lean_env.make_verifier`: REPL pool,
  stand-in, kimina...): judges whole-proof samples (streamed from a rollout actor: each
  problem's while the engine samples the rest) and runs tactic episodes, whose sessions live
  on its pool and whose tactics it asks a rollout actor for, turn by turn;
- `LearnerWorker` holds the learner (`Learner`: the interface `prover.rl.learner.Learner`
  provides): one optimizer step per batch of episodes, its weights, checkpoints.

Every method that does work returns the seconds it spent, so the fleet can split a step's time
into generate / verify / learn / weight sync / idle. `ping` runs in its own concurrency group
("health"), so a busy actor still answers it and only a dead one does not.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import ray
from torch import Tensor

from lean_env.config import VerifierConfig
from lean_env.verifier import make_verifier
from policy.config import PolicyConfig, SamplingConfig
from policy.engines import Prompt, PromptResult, make_engine
from prover.config import GRPOConfig, RolloutConfig
from prover.problems import Problem
from prover.rl.episodes import Episode
from prover.rl.rewards import lean_reward
from prover.rl.rollout import (
    TacticBudget,
    WholeSample,
    judge_whole,
    repl_sessions,
    sample_whole,
    sample_whole_iter,
    scored,
    tactic_episodes,
    whole_requests,
)
from prover.search.whole import VerifierFeed

HEALTH = "health"   # the concurrency group of `ping`


class Learner(Protocol):
    """What the fleet needs from a learner (`prover.rl.learner.Learner` provides it)."""

    def step(self, episodes: Sequence[Episode]) -> Mapping[str, float]:
        """One optimizer step on these episodes; its metrics."""
        ...

    def weights(self) -> Mapping[str, Tensor]:
        """The current weights under the checkpoint's names (what `load_weights` takes)."""
        ...

    def save(self, path: Path) -> None:
        """Write a checkpoint (weights, optimizer, step) to `path`."""
        ...

    def load(self, path: Path) -> None:
        """Resume from a checkpoint `save` wrote."""
        ...


def step_sampling(sampling: SamplingConfig, version: int, first_group: int) -> SamplingConfig:
    """`sampling` with its seed moved on by the weights' version and the first group: a seeded
    run stays reproducible, but no two steps (or dynamic-sampling rounds) reuse one noise
    stream, which would make a policy whose weights did not change sample the very same
    completions again (RL needs fresh samples every step)."""
    if sampling.seed is None:
        return sampling
    seed = (sampling.seed + 1_000_003 * version + sampling.n * first_group) % (2**31)
    return sampling.model_copy(update={"seed": seed})


class RolloutWorker:
    """One generation engine and the learner version of its weights."""

    def __init__(self, policy: PolicyConfig, rollout: RolloutConfig) -> None:
        self.policy = policy
        self.rollout = rollout
        self.engine = make_engine(policy)
        self.version = 0

    @ray.method(concurrency_group=HEALTH)
    def ping(self) -> int:
        return os.getpid()

    def sample_whole(self, problems: Sequence[Problem], first_group: int) -> tuple[list[WholeSample], float, int]:
        """`policy.sampling.n` whole proofs per problem: (samples, seconds, weights version)."""
        t0 = time.perf_counter()
        samples = sample_whole(problems, self.engine, step_sampling(self.policy.sampling, self.version, first_group),
                               template=self.rollout.prompt_template, first_group=first_group)
        return samples, time.perf_counter() - t0, self.version

    def sample_whole_iter(self, problems: Sequence[Problem],
                          first_group: int) -> Iterator[tuple[list[WholeSample], float, int]]:
        """`sample_whole`, one problem's samples at a time as the engine finishes them (a Ray
        streaming generator): (samples, seconds since sampling began, weights version)."""
        t0, version = time.perf_counter(), self.version
        sampling = step_sampling(self.policy.sampling, version, first_group)
        for samples in sample_whole_iter(problems, self.engine, sampling, template=self.rollout.prompt_template,
                                         first_group=first_group):
            yield samples, time.perf_counter() - t0, version

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> tuple[list[PromptResult], float, int]:
        """The engine's `generate`: (results, seconds, weights version)."""
        t0 = time.perf_counter()
        results = self.engine.generate(prompts, sampling)
        return results, time.perf_counter() - t0, self.version

    def load_weights(self, weights: Mapping[str, Tensor], version: int) -> float:
        """Push `weights` (learner version `version`) into the running engine; seconds."""
        t0 = time.perf_counter()
        self.engine.load_weights(weights)
        self.version = version
        return time.perf_counter() - t0

    def policy_version(self) -> int:
        return self.version

    def close(self) -> None:
        self.engine.close()


class _RemoteEngine:
    """A rollout actor seen as a `GenerationEngine` (for tactic episodes run on the verifier
    side); keeps the generation seconds and the oldest weights version it was served by."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor
        self.seconds = 0.0
        self.version: int | None = None

    def generate(self, prompts: Sequence[Prompt], sampling: SamplingConfig) -> list[PromptResult]:
        results, seconds, version = ray.get(self.actor.generate.remote(list(prompts), sampling))
        self.seconds += seconds
        self.version = version if self.version is None else min(self.version, version)
        return list(results)


class VerifierWorker:
    """One `lean_env` verifier, open for the actor's lifetime."""

    def __init__(self, verifier: VerifierConfig, policy: PolicyConfig, rollout: RolloutConfig,
                 grpo: GRPOConfig) -> None:
        self.policy = policy
        self.rollout = rollout
        self.score = lean_reward(grpo, policy.sampling.max_tokens)
        self.verifier = make_verifier(verifier)
        self.verifier.__enter__()
        self._tokenizer: Any = None

    @ray.method(concurrency_group=HEALTH)
    def ping(self) -> int:
        return os.getpid()

    def judge_whole(self, sampled: tuple[list[WholeSample], float, int]) -> tuple[list[Episode | None], float, float]:
        """`RolloutWorker.sample_whole`'s output judged: (episodes, generate seconds, verify seconds)."""
        samples, generate_s, version = sampled
        t0 = time.perf_counter()
        episodes = judge_whole(samples, self.verifier, score=self.score, policy_version=version)
        return episodes, generate_s, time.perf_counter() - t0

    def judge_whole_streamed(self, problems: Sequence[Problem], rollout_actor: Any,
                             first_group: int) -> tuple[list[Episode | None], float, float]:
        """Whole proofs that `rollout_actor` samples, each problem's judged here as soon as they
        arrive, while the engine samples the rest (`RolloutWorker.sample_whole_iter`):
        (episodes in group order, as `judge_whole` gives them; generate seconds; verify seconds
        left once sampling was done)."""
        t0 = time.perf_counter()
        generate_s, pending = 0.0, []
        with VerifierFeed(self.verifier, None) as feed:
            for ref in rollout_actor.sample_whole_iter.remote(problems, first_group):
                samples, generate_s, version = ray.get(ref)
                pending.append((samples, version, feed.submit(whole_requests(samples))))
            pending.sort(key=lambda p: p[0][0].group if p[0] else 0)   # finishing order varies; groups do not
            episodes = [e for samples, version, verdicts in pending
                        for e in scored(samples, verdicts.result(), score=self.score, policy_version=version)]
        return episodes, generate_s, max(0.0, time.perf_counter() - t0 - generate_s)

    def tactic_episodes(self, problems: Sequence[Problem], rollout_actor: Any, first_group: int,
                        version: int = 0) -> tuple[list[Episode], float, float]:
        """Tactic episodes on this verifier's pool, tactics from `rollout_actor`: (episodes,
        generate seconds, verify seconds: the rest of the wall time)."""
        from policy.tokenizer import load_tokenizer

        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.policy.tokenizer or str(self.policy.checkpoint))
        t0 = time.perf_counter()
        engine = _RemoteEngine(rollout_actor)
        sampling = step_sampling(self.policy.sampling, version, first_group)
        episodes = tactic_episodes(problems, engine, repl_sessions(self.verifier), self._tokenizer,  # type: ignore[arg-type]
                                   sampling, score=self.score, template=self.rollout.tactic_template,
                                   verifier=self.verifier,
                                   budget=TacticBudget(turns=self.rollout.tactic_turns, max_tokens=self.policy.max_model_len))
        version = engine.version or 0
        episodes = [_regroup(e, first_group, version) for e in episodes]
        return episodes, engine.seconds, time.perf_counter() - t0 - engine.seconds

    def close(self) -> None:
        self.verifier.__exit__(None, None, None)


def _regroup(e: Episode, first_group: int, version: int) -> Episode:
    return replace(e, group=e.group + first_group, policy_version=version)


class LearnerWorker:
    """One rank of the learner: the learner `factory()` builds, and its version (optimizer
    steps taken). With several ranks (`learner.ranks`), `start` first joins their process group
    (rank 0's `rendezvous` address), so the learner the factory builds can shard itself."""

    def __init__(self, factory: Callable[[], Learner], rank: int = 0, world: int = 1) -> None:
        self.factory, self.rank, self.world = factory, rank, world
        self.learner: Any = None
        self.version = 0
        self._group = contextlib.ExitStack()

    @ray.method(concurrency_group=HEALTH)
    def ping(self) -> int:
        return os.getpid()

    def rendezvous(self) -> tuple[str, int]:
        """This node's address and a free port on it: where rank 0 hosts the process group."""
        with socket.socket() as probe:
            probe.bind(("", 0))
            port = probe.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def start(self, address: tuple[str, int] | None = None) -> int:
        """Join the learner's process group (several ranks), then build the learner; its version."""
        if self.world > 1:
            from policy.launch import process_group

            if address is None:
                raise ValueError(f"learner rank {self.rank} of {self.world} needs rank 0's address")
            host, port = address
            self._group.enter_context(process_group(rank=self.rank, world_size=self.world,
                                                    master_addr=host, master_port=port))
        self.learner = self.factory()
        self.version = int(getattr(self.learner, "version", 0))   # a resumed learner knows its step
        return self.version

    def step(self, episodes: Sequence[Episode]) -> tuple[dict[str, float], float, int]:
        """One learner step: (metrics, seconds, the new version)."""
        t0 = time.perf_counter()
        metrics = dict(self.learner.step(episodes))
        self.version += 1
        return metrics, time.perf_counter() - t0, self.version

    def weights(self) -> Mapping[str, Tensor]:
        """The current weights; with several ranks every rank takes part and rank 0 returns them."""
        return self.learner.weights()

    def current_version(self) -> int:
        """The learner's version once every call queued before this one has run."""
        return self.version

    def save(self, path: str) -> None:
        self.learner.save(Path(path))

    def load(self, path: str, version: int) -> None:
        self.learner.load(Path(path))
        self.version = version

    def close(self) -> None:
        self._group.close()
