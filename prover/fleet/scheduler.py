"""GRPO over a Ray fleet: rollout actors, verifier actors and the learner, driven from here.

    with Fleet(config, learner=make_learner) as fleet:      # ray.init here, never at import
        for report in fleet.train(problem_batches):
            print(report.version, report.metrics, report.times)

A step: the problems are split into one shard per rollout actor; each shard is sampled on its
rollout actor and judged on a verifier actor (whole-proof: the samples go from one to the
other through Ray's object store, not through the driver; with `fleet.stream_verify` the
verifier actor reads them from the rollout actor's streaming generator and judges each
problem's while the engine samples the rest; tactic: the verifier actor runs the dialogues and
asks the rollout actor for every turn's tactics). The learner takes one step on
the episodes and its new weights are pushed into every running engine (`load_weights`).

Modes (`fleet.mode`):
- sync: generate+verify, learn, sync weights, one after the other; every episode comes from
  the learner's current weights.
- async: while the learner trains on this step's episodes, the next step's are gathered (its
  refill rounds too) by the engines' current weights; the new weights are pushed when both are
  done, so episodes are one version old (one-step-off) and a step takes max(gather, learn) +
  sync instead of gather + learn + sync.
  Episodes more than `fleet.max_staleness` versions behind the learner are dropped (`fresh`).

Failures: when a shard's work fails because an actor died (`RayActorError`), the dead actors are
replaced (`prover.fleet.supervisor.ActorPool`; a new rollout actor first gets the latest
weights) and the shard is submitted again; training goes on.

Time split per step (`StepTimes`, seconds): generate and verify are the busy time of the
rollout and verifier actors (mean over actors; streamed, verify is only what was left to judge
once sampling was done), learn and weight sync the learner's step and
the engines' `load_weights` (slowest engine), idle the learner's wall time minus its own work
(waiting for episodes and for the sync).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from prover.config import ProverConfig
from prover.fleet.actors import Learner, RolloutWorker, VerifierWorker
from prover.fleet.learner_group import LearnerGroup
from prover.fleet.supervisor import ActorPool, reap_recorded, record_processes
from prover.problems import Problem
from prover.rl.episodes import Episode
from prover.rl.rewards import fill_informative

log = logging.getLogger(__name__)


def fresh(episodes: Sequence[Episode], version: int, max_staleness: int) -> list[Episode]:
    """The episodes sampled by a policy at most `max_staleness` versions behind `version`."""
    return [e for e in episodes if version - e.policy_version <= max_staleness]


@dataclass(frozen=True)
class StepTimes:
    """Where one step's wall time went, seconds (see the module docstring)."""

    wall_s: float
    generate_s: float
    verify_s: float
    learn_s: float
    weight_sync_s: float
    idle_s: float

    def to_json(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class RolloutBatch:
    """One step's episodes and what producing them cost."""

    episodes: list[Episode]
    generate_s: float
    verify_s: float
    retried_shards: int = 0


@dataclass(frozen=True)
class StepReport:
    step: int
    version: int                      # the learner's version after this step
    metrics: dict[str, float]
    times: StepTimes
    episodes: int                     # used by the learner
    dropped_stale: int                # dropped by the staleness bound
    versions: dict[int, int] = field(default_factory=dict)   # policy version -> episodes


@dataclass
class _Shard:
    problems: list[Problem]
    first_group: int
    rollout: int                      # index into the rollout pool
    kind: str                         # "whole-proof" or "tactic"
    ref: Any = None
    started: float = 0.0              # time.monotonic() of the last submission


class Fleet:
    """The fleet's actors, alive inside `with`; see the module docstring."""

    def __init__(self, config: ProverConfig, *, learner: Callable[[], Learner] | None = None,
                 process_record: Path | None = None) -> None:
        """process_record: a file (in the run folder) listing the processes this fleet started, so
        that the next fleet given the same file kills those an earlier, SIGKILLed driver left."""
        self.config = config
        self.learner_factory = learner
        self.process_record = process_record
        self.version = 0
        self._weights: Any = None          # ObjectRef of the latest weights pushed
        self._owns_ray = False
        self.rollouts: ActorPool | None = None
        self.verifiers: ActorPool | None = None
        self.learner: LearnerGroup | None = None
        self.retried_shards = 0

    def __enter__(self) -> Fleet:
        fleet = self.config.fleet
        if self.process_record is not None:
            reap_recorded(self.process_record)
        if not ray.is_initialized():
            if fleet.ray_address is not None:
                ray.init(address=fleet.ray_address, log_to_driver=False)
            else:
                ray.init(num_cpus=fleet.num_cpus, include_dashboard=False, log_to_driver=False)
            self._owns_ray = True
        try:
            cpus = {"num_cpus": fleet.actor_cpus}
            engine = {**cpus, "num_gpus": fleet.actor_gpus}
            policy, rollout = self.config.policy, self.config.rollout
            self.rollouts = ActorPool("rollout", RolloutWorker, (policy, rollout), fleet.rollout_workers,
                                      options=engine, max_restarts=fleet.max_restarts, on_replace=self._catch_up)
            self.verifiers = ActorPool("verifier", VerifierWorker,
                                       (self.config.verifier, policy, rollout, self.config.grpo),
                                       fleet.verifier_workers, options=cpus, max_restarts=fleet.max_restarts)
            if self.learner_factory is not None:
                self.learner = LearnerGroup(self.learner_factory, self.config.learner.ranks, options=engine)
            self.record()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for pool in (self.rollouts, self.verifiers):
            if pool is not None:
                pool.close()
        if self.learner is not None:
            self.learner.kill()
            self.learner = None
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False
        if self.process_record is not None:
            self.process_record.unlink(missing_ok=True)

    def record(self) -> None:
        """Refresh the process record (actors, engines and REPL pools start and restart)."""
        if self.process_record is not None:
            record_processes(self.process_record)

    # -- rollouts ----------------------------------------------------------------------------------

    def _pools(self) -> tuple[ActorPool, ActorPool]:
        if self.rollouts is None or self.verifiers is None:
            raise RuntimeError("the Fleet is used outside its `with` block")
        return self.rollouts, self.verifiers

    def _catch_up(self, i: int, handle: Any) -> None:
        """A replacement rollout actor starts from the checkpoint: give it the latest weights."""
        if self._weights is not None:
            ray.get(handle.load_weights.remote(self._weights, self.version))

    def _submit(self, shard: _Shard) -> None:
        rollouts, verifiers = self._pools()
        verifier = verifiers[shard.rollout]
        shard.started = time.monotonic()
        if shard.kind == "tactic":
            shard.ref = verifier.tactic_episodes.remote(shard.problems, rollouts[shard.rollout], shard.first_group,
                                                        self.version)
        elif self.config.fleet.stream_verify:
            shard.ref = verifier.judge_whole_streamed.remote(shard.problems, rollouts[shard.rollout],
                                                             shard.first_group)
        else:
            sampled = rollouts[shard.rollout].sample_whole.remote(shard.problems, shard.first_group)
            shard.ref = verifier.judge_whole.remote(sampled)

    def submit(self, problems: Sequence[Problem], kind: str | None = None, *, first_group: int = 0) -> list[_Shard]:
        """Start one step's rollouts (problem i is group first_group + i) of episode `kind`
        (default `rollout.episodes`); `collect` waits for them."""
        rollouts, _ = self._pools()
        kind = kind or self.config.rollout.episodes
        size = -(-len(problems) // len(rollouts))
        shards = [_Shard(list(problems[i:i + size]), first_group + i, k, kind)
                  for k, i in enumerate(range(0, len(problems), size))]
        for shard in shards:
            self._submit(shard)
        return shards

    def collect(self, shards: Sequence[_Shard]) -> RolloutBatch:
        """The shards' episodes (excluded ones left out); a shard whose actor died is retried
        on the replacement, and one not back within `fleet.shard_timeout_s` (hung) on
        replacements of both actors that served it, as often as `fleet.max_restarts` allows."""
        rollouts, verifiers = self._pools()
        limit = self.config.fleet.shard_timeout_s
        episodes: list[Episode] = []
        generate: list[float] = []
        verify: list[float] = []
        retried = 0
        for shard in shards:
            while True:
                try:
                    left = None if limit is None else max(0.0, shard.started + limit - time.monotonic())
                    got, generate_s, verify_s = ray.get(shard.ref, timeout=left)
                    break
                except RayActorError as exc:
                    log.warning("shard at group %d lost an actor (%s); replacing and retrying", shard.first_group,
                                type(exc).__name__)
                    rollouts.heal()
                    verifiers.heal()
                except GetTimeoutError:
                    log.warning("shard at group %d not back within fleet.shard_timeout_s = %g s; replacing its "
                                "rollout and verifier actors and retrying", shard.first_group, limit)
                    rollouts.replace(shard.rollout % len(rollouts), why="hung")
                    verifiers.replace(shard.rollout % len(verifiers), why="hung")
                retried += 1
                self._submit(shard)
            episodes += [e for e in got if e is not None]
            generate.append(generate_s)
            verify.append(verify_s)
        self.retried_shards += retried
        return RolloutBatch(episodes, sum(generate) / len(rollouts), sum(verify) / len(verifiers), retried)

    def rollout_step(self, problems: Sequence[Problem], version: int | None = None, *,
                     kind: str | None = None) -> RolloutBatch:
        """One step's rollouts, waited for; with `version`, episodes more than
        `fleet.max_staleness` versions behind it are dropped (sync mode: behind at all)."""
        batch = self.collect(self.submit(problems, kind))
        if version is None:
            return batch
        bound = self.config.fleet.max_staleness if self.config.fleet.mode == "async" else 0
        return RolloutBatch(fresh(batch.episodes, version, bound), batch.generate_s, batch.verify_s,
                            batch.retried_shards)

    # -- weights -----------------------------------------------------------------------------------

    def push_weights(self, weights: Any, version: int, *, wait: bool = True) -> list[Any]:
        """Send `weights` (a mapping or an ObjectRef of one) to every rollout actor; with
        `wait`, block until all loaded them. The refs of each actor's load time."""
        rollouts, _ = self._pools()
        self._weights = weights if isinstance(weights, ray.ObjectRef) else ray.put(weights)
        self.version = version
        refs = [rollouts[i].load_weights.remote(self._weights, version) for i in range(len(rollouts))]
        if wait:
            ray.get(refs)
        return refs

    # -- training ----------------------------------------------------------------------------------

    def gather(self, problems: Sequence[Problem],
               refill: Callable[[int, int], Sequence[Problem]] | None = None) -> tuple[RolloutBatch, dict[str, float]]:
        """One step's episodes, waited for: `problems` sampled and judged, then, with
        `grpo.dynamic_sampling`, all-equal groups dropped and `refill(version, round)` problems
        sampled until `rollout.prompts_per_step` informative groups are in (DAPO)."""
        batch = self.collect(self.submit(problems))
        if not self.config.grpo.dynamic_sampling:
            return batch, {}
        cost = {"generate": batch.generate_s, "verify": batch.verify_s}

        def draw(round_: int, first_group: int) -> list[Episode]:
            if refill is None:
                return []
            more = self.collect(self.submit(refill(self.version, round_), first_group=first_group))
            cost["generate"] += more.generate_s
            cost["verify"] += more.verify_s
            return more.episodes

        grpo = self.config.grpo
        kept, stats = fill_informative(batch.episodes, draw, want=self.config.rollout.prompts_per_step,
                                       max_rounds=grpo.max_refill_rounds if refill is not None else 0)
        return RolloutBatch(kept, cost["generate"], cost["verify"], batch.retried_shards), stats

    def train(self, batches: Iterable[Sequence[Problem]],
              refill: Callable[[int, int], Sequence[Problem]] | None = None) -> Iterator[StepReport]:
        """One learner step per batch of problems, in `fleet.mode`; a report per step. With
        `grpo.dynamic_sampling`, `refill(version, round)` gives the extra problems to sample.

        async: the learner's step runs while the next step's episodes are gathered, refill
        rounds included, by the engines' current weights; the new weights are pushed once both
        are done, so a step takes max(gather, learn) + sync instead of their sum."""
        if self.learner is None:
            raise RuntimeError("Fleet.train needs a learner (Fleet(config, learner=factory))")
        asynchronous = self.config.fleet.mode == "async"
        bound = self.config.fleet.max_staleness if asynchronous else 0
        queue = iter(batches)
        upcoming = next(queue, None)
        ready: tuple[RolloutBatch, dict[str, float]] | None = None
        step = 0
        while upcoming is not None:
            t0 = time.perf_counter()
            batch, dynamic = ready if ready is not None else self.gather(upcoming, refill)
            ready = None
            used = fresh(batch.episodes, self.version, bound)
            learning = self.learner.step(used)
            upcoming = next(queue, None)
            if asynchronous and upcoming is not None:   # overlaps with the learner's step
                ready = self.gather(upcoming, refill)
            metrics, learn_s, version = ray.get(learning)
            sync_s = max(ray.get(self.push_weights(self.learner.weights(), version, wait=False)),
                         default=0.0)
            wall = time.perf_counter() - t0
            versions: dict[int, int] = {}
            for e in batch.episodes:
                versions[e.policy_version] = versions.get(e.policy_version, 0) + 1
            self.record()
            yield StepReport(step, version, {**metrics, **dynamic},
                             StepTimes(wall, batch.generate_s, batch.verify_s, learn_s, sync_s,
                                       max(0.0, wall - learn_s - sync_s)),
                             len(used), len(batch.episodes) - len(used), versions)
            step += 1
