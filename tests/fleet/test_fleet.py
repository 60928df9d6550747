"""The Ray fleet (prover/fleet): real Ray (local, small), real engines in rollout actors, the
stand-in REPL in verifier actors.

The learner here is `FakeLearner` -- FAKE, marked as such: it stands in for
`prover.rl.learner.Learner` (written in parallel, not yet on this branch) with the interface
`prover.fleet.actors.Learner` defines; its "weights" are the tiny checkpoint's own tensors with
the output head scaled by the step number, so every sync really changes the engine's weights.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from prover.config import FleetConfig, ProverConfig
from prover.problems import Problem
from prover.rl.episodes import Episode
from prover.rl.rollout import WholeSample

RULES = Path(__file__).resolve().parents[1] / "lean_env" / "rules" / "tactic_tree.json"
HEADER = "import Mathlib\nimport Aesop\n\nset_option maxHeartbeats 400000\n\nopen BigOperators Real Nat\n\n"


def problem(name: str, statement: str = "(a b : ℕ) (h : a = b) : b = a") -> Problem:
    return Problem(name=name, split="test", header=HEADER, id=name, formal_statement=f"theorem {name} {statement} := by\n")


def episode(version: int) -> Episode:
    return Episode("p", 0, (1,), (2,), (True,), (-0.1,), 1.0, "accepted", policy_version=version)


def test_staleness_bound_keeps_at_most_s_versions_behind() -> None:
    from prover.fleet import fresh

    episodes = [episode(v) for v in (0, 1, 2, 3)]
    assert [e.policy_version for e in fresh(episodes, 3, 1)] == [2, 3]
    assert [e.policy_version for e in fresh(episodes, 3, 0)] == [3]
    assert [e.policy_version for e in fresh(episodes, 3, 3)] == [0, 1, 2, 3]


def test_async_mode_needs_a_staleness_of_at_least_one() -> None:
    with pytest.raises(ValueError, match="fleet.max_staleness must be >= 1, got 0"):
        FleetConfig(mode="async", max_staleness=0)
    assert FleetConfig(mode="sync", max_staleness=0).max_staleness == 0


class FakeLearner:
    """FAKE (see the module docstring): counts steps, returns scaled checkpoint weights."""

    def __init__(self, checkpoint: str) -> None:
        from safetensors.torch import load_file

        self.base = load_file(str(Path(checkpoint) / "model.safetensors"))
        self.steps = 0
        self.seen: list[int] = []

    def step(self, episodes: Sequence[Episode]) -> Mapping[str, float]:
        self.steps += 1
        self.seen.append(len(episodes))
        rewards = [e.reward for e in episodes]
        return {"episodes": float(len(episodes)), "mean_reward": sum(rewards) / max(1, len(rewards))}

    def weights(self) -> Mapping[str, Any]:
        return {k: v * (1.0 + 0.5 * self.steps) if k == "lm_head.weight" else v for k, v in self.base.items()}

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"steps": self.steps}))

    def load(self, path: Path) -> None:
        self.steps = json.loads(path.read_text())["steps"]


class _Factory:
    def __init__(self, checkpoint: str) -> None:
        self.checkpoint = checkpoint

    def __call__(self) -> FakeLearner:
        return FakeLearner(self.checkpoint)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from prover.checkpoints import init_checkpoint

    out = tmp_path_factory.mktemp("fleet") / "tiny"
    init_checkpoint("tiny", out)
    return out


def config(tiny: Path, tmp_path: Path, *, engine: str, rules: Path = RULES, **fleet: Any) -> ProverConfig:
    return ProverConfig.model_validate({
        "policy": {"checkpoint": str(tiny), "engine": engine, "max_model_len": 256, "enforce_eager": True,
                   "kv_cache_gib": 0.5, "sampling": {"n": 2, "max_tokens": 6, "seed": 1, "temperature": 1.0}},
        "verifier": {"backend": "standin", "standin_rules": str(rules), "workers": 1, "timeout_s": 20,
                     "tactic_timeout_s": 10, "retries": 0},
        "rollout": {"prompt_template": "plain", "tactic_turns": 2},
        "fleet": {"num_cpus": 2, "actor_cpus": 0, "max_restarts": 2, **fleet},
    })


@pytest.mark.slow
def test_killed_actors_are_replaced_and_their_work_retried(tiny: Path, tmp_path: Path) -> None:
    """Done-when: kill a verifier, then a rollout actor, mid-step; each step completes on a
    replacement, and the new rollout actor serves the latest weights, not the checkpoint's."""
    import ray

    from prover.fleet import Fleet

    rules = tmp_path / "slow.json"   # each check takes a while, so the kill lands mid-step
    tree = json.loads(RULES.read_text())
    rules.write_text(json.dumps({**tree, "rules": [{"name": "slow", "substring": "theorem", "sleep_s": 0.3},
                                                   *tree["rules"]]}))
    problems = [problem("p0"), problem("p1")]
    with Fleet(config(tiny, tmp_path, engine="transformers", rules=rules)) as fleet:
        assert fleet.rollouts is not None and fleet.verifiers is not None
        whole = fleet.rollout_step(problems)
        assert sorted(e.group for e in whole.episodes) == [0, 0, 1, 1], whole.episodes

        shards = fleet.submit(problems)
        ray.kill(fleet.verifiers[0])
        batch = fleet.collect(shards)
        assert batch.retried_shards == 1 and fleet.verifiers.restarts == 1, (batch.retried_shards, fleet.verifiers.restarts)
        assert sorted(e.group for e in batch.episodes) == [0, 0, 1, 1], batch.episodes

        fleet.push_weights(FakeLearner(str(tiny)).weights(), version=3)
        shards = fleet.submit(problems)
        ray.kill(fleet.rollouts[0])
        batch = fleet.collect(shards)
        assert fleet.rollouts.restarts == 1 and batch.retried_shards == 1, (fleet.rollouts.restarts, batch.retried_shards)
        assert {e.policy_version for e in batch.episodes} == {3}, [e.policy_version for e in batch.episodes]
        assert len(batch.episodes) == 4 and all(e.outcome.startswith(("accepted", "rejected")) for e in batch.episodes)

        # tactic episodes through the fleet: dialogues on the verifier actor, tactics from the rollout actor
        tactic = fleet.rollout_step(problems, kind="tactic")
        assert sorted(e.group for e in tactic.episodes) == [0, 0, 1, 1], tactic.episodes
        assert all(not all(e.loss_mask) and e.policy_version == 3 for e in tactic.episodes), tactic.episodes


@pytest.mark.slow
def test_a_hung_actor_is_replaced_and_its_work_retried(tiny: Path, tmp_path: Path) -> None:
    """A verifier actor frozen mid-step (SIGSTOP: alive, but it never answers again) holds its
    shard past fleet.shard_timeout_s: the rollout and verifier actors that served it are
    replaced and the shard is retried, so the step completes with every episode."""
    import os
    import signal
    import time

    import ray

    from prover.fleet import Fleet

    rules = tmp_path / "slow.json"   # each check takes a while, so the freeze lands mid-step
    tree = json.loads(RULES.read_text())
    rules.write_text(json.dumps({**tree, "rules": [{"name": "slow", "substring": "theorem", "sleep_s": 0.3},
                                                   *tree["rules"]]}))
    problems = [problem("p0"), problem("p1")]
    with Fleet(config(tiny, tmp_path, engine="transformers", rules=rules, shard_timeout_s=8)) as fleet:
        assert fleet.rollouts is not None and fleet.verifiers is not None
        frozen = ray.get(fleet.verifiers[0].ping.remote())
        shards = fleet.submit(problems)
        os.kill(frozen, signal.SIGSTOP)
        t0 = time.monotonic()
        batch = fleet.collect(shards)
        waited = time.monotonic() - t0
        assert batch.retried_shards == 1, batch.retried_shards
        assert (fleet.rollouts.restarts, fleet.verifiers.restarts) == (1, 1), (fleet.rollouts.restarts,
                                                                              fleet.verifiers.restarts)
        assert sorted(e.group for e in batch.episodes) == [0, 0, 1, 1], batch.episodes
        assert waited >= 8, f"the shard was given up after {waited:.1f} s, before its 8 s"
        assert ray.get(fleet.verifiers[0].ping.remote()) != frozen, "the frozen verifier still serves"


@pytest.mark.slow
def test_async_training_is_one_step_off(tiny: Path, tmp_path: Path) -> None:
    from prover.fleet import Fleet

    batches = [[problem(f"s{k}")] for k in range(3)]
    cfg = config(tiny, tmp_path, engine="transformers", mode="async", max_staleness=1)
    with Fleet(cfg, learner=_Factory(str(tiny))) as fleet:
        reports = list(fleet.train(batches))
    # step 0 samples with the checkpoint (0); step s >= 1 with the weights of step s-1
    assert [r.versions for r in reports] == [{0: 2}, {0: 2}, {1: 2}], [r.versions for r in reports]
    assert [r.version for r in reports] == [1, 2, 3] and [r.dropped_stale for r in reports] == [0, 0, 0], reports
    for r in reports:
        times = r.times
        assert times.learn_s > 0 and times.generate_s > 0 and times.verify_s > 0 and times.idle_s >= 0, times
    assert reports[1].times.weight_sync_s > 0, reports[1].times   # step 0's push, measured when it landed


class WaitingLearner(FakeLearner):
    """FAKE, as FakeLearner; its first step marks that it started, waits (at most 120 s) for the
    driver's refill callback to mark that it ran meanwhile, and marks that it ended."""

    def __init__(self, checkpoint: str, folder: Path) -> None:
        super().__init__(checkpoint)
        self.folder = folder

    def step(self, episodes: Sequence[Episode]) -> Mapping[str, float]:
        import time

        saw = 1.0
        if self.steps == 0:
            (self.folder / "learner-started").touch()
            deadline = time.monotonic() + 120
            while not (self.folder / "refilled-meanwhile").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            saw = float((self.folder / "refilled-meanwhile").exists())
            (self.folder / "learner-ended").touch()
        return {**super().step(episodes), "saw_refill": saw}


class _WaitingFactory(_Factory):
    def __init__(self, checkpoint: str, folder: Path) -> None:
        super().__init__(checkpoint)
        self.folder = folder

    def __call__(self) -> FakeLearner:
        return WaitingLearner(self.checkpoint, self.folder)


@pytest.mark.slow
def test_async_gathers_the_next_step_refills_included_while_the_learner_steps(tiny: Path, tmp_path: Path) -> None:
    """Async mode overlaps the learner's step with *all* of the next step's gathering, DAPO's
    refill rounds included (refills run in the driver; they used to wait for the learner). The
    untrained policy fails every problem, so every group is all-equal and each step refills."""
    import time

    from prover.fleet import Fleet

    calls: list[tuple[int, int, bool]] = []

    def refill(version: int, round_: int) -> list[Problem]:
        started, ended = tmp_path / "learner-started", tmp_path / "learner-ended"
        if calls:   # step 1's refill (step 0's comes before any learning): let the learner's actor get going
            deadline = time.monotonic() + 60
            while not (started.exists() or ended.exists()) and time.monotonic() < deadline:
                time.sleep(0.05)
        during = started.exists() and not ended.exists()
        calls.append((version, round_, during))
        if during:
            (tmp_path / "refilled-meanwhile").touch()
        return [problem(f"r{len(calls)}")]

    cfg = config(tiny, tmp_path, engine="transformers", mode="async", max_staleness=1).model_copy(deep=True)
    cfg = ProverConfig.model_validate({**cfg.model_dump(), "grpo": {"dynamic_sampling": True, "max_refill_rounds": 1},
                                       "rollout": {**cfg.rollout.model_dump(), "prompts_per_step": 1}})
    with Fleet(cfg, learner=_WaitingFactory(str(tiny), tmp_path)) as fleet:
        reports = list(fleet.train([[problem("a0")], [problem("a1")]], refill))
    assert [r.metrics["saw_refill"] for r in reports] == [1.0, 1.0], (reports, calls)
    assert [c[2] for c in calls] == [False, True], f"(version, round, during the learner's step 0): {calls}"
    assert [r.version for r in reports] == [1, 2], reports


@pytest.mark.slow
def test_vllm_rollout_actor_sync_training(tiny: Path, tmp_path: Path) -> None:
    """One vLLM engine in a Ray actor: sync mode samples every step with the current weights,
    which reach the running engine without a restart; tactic turns are fed as token ids."""
    pytest.importorskip("vllm")
    from prover.fleet import Fleet

    batches = [[problem("v0"), problem("v1")], [problem("v2")]]
    import ray

    with Fleet(config(tiny, tmp_path, engine="vllm"), learner=_Factory(str(tiny))) as fleet:
        assert fleet.rollouts is not None
        pid = ray.get(fleet.rollouts[0].ping.remote())
        reports = list(fleet.train(batches))
        tactic = fleet.rollout_step([problem("v3")], version=fleet.version, kind="tactic")
        after = ray.get(fleet.rollouts[0].ping.remote())
        assert (after, fleet.rollouts.restarts) == (pid, 0), f"the engine's actor was restarted: pid {pid} -> {after}"
    assert [r.versions for r in reports] == [{0: 4}, {1: 2}], [r.versions for r in reports]
    assert all(r.times.weight_sync_s > 0 and r.times.learn_s > 0 for r in reports), [r.times for r in reports]
    assert len(tactic.episodes) == 2 and {e.policy_version for e in tactic.episodes} == {2}, tactic.episodes


def test_whole_sample_travels_as_a_value() -> None:
    """What crosses between actors pickles (Ray's object store holds it)."""
    import pickle

    from policy.engines import Completion

    sample = WholeSample(problem("x"), 0, (1, 2), Completion("t", (3,), (-0.5,), "stop"), "cand")
    assert pickle.loads(pickle.dumps(sample)) == sample


def test_each_step_and_round_samples_with_its_own_seed() -> None:
    """A seeded run stays reproducible, but no two steps (or dynamic-sampling rounds) share a
    noise stream: with frozen weights they would sample the very same completions."""
    from policy.config import SamplingConfig
    from prover.fleet.actors import step_sampling

    base = SamplingConfig(n=8, seed=5)
    seeds = {step_sampling(base, v, g).seed for v in range(4) for g in (0, 8, 16)}
    assert len(seeds) == 12, seeds
    assert step_sampling(base, 2, 8).seed == step_sampling(base, 2, 8).seed
    assert step_sampling(SamplingConfig(n=8), 3, 8).seed is None, "unseeded stays unseeded"


class _Recording:
    """A verifier that notes the problems of every `verify_batch` call, then delegates."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.calls = inner, []

    def verify_batch(self, requests: Sequence[Any], **kwargs: Any) -> Any:
        self.calls.append(sorted({r.name for r in requests}))
        return self.inner.verify_batch(requests, **kwargs)


class _StubStream:
    """Stands in for a rollout actor handle: `sample_whole_iter.remote` streams the given
    problems' samples as Ray object refs, last group first; before handing on each one after
    the first it waits (at most 60 s) until the verifier has been asked about everything handed
    on so far, and notes whether it was."""

    def __init__(self, batches: list[list[WholeSample]], recording: _Recording) -> None:
        self.batches, self.recording, self.judged_in_time = batches, recording, []
        self.sample_whole_iter = self

    def remote(self, problems: Sequence[Problem], first_group: int) -> Any:
        import time

        import ray

        handed: set[str] = set()
        for k, samples in enumerate(self.batches):
            if k:
                deadline = time.monotonic() + 60
                while not handed <= {n for call in self.recording.calls for n in call} and time.monotonic() < deadline:
                    time.sleep(0.01)
                self.judged_in_time.append(handed <= {n for call in self.recording.calls for n in call})
            handed.add(samples[0].problem.name)
            yield ray.put((samples, 0.5 * (k + 1), 7))


def test_streamed_judging_starts_while_sampling_goes_on(tmp_path: Path) -> None:
    """`fleet.stream_verify`: the verifier actor judges a problem's samples while the rollout
    actor has not yet handed on the next problem's; episodes come back in group order whatever
    order problems finished in, with the rollout's weights version and its generate time."""
    import ray

    from policy.config import PolicyConfig
    from policy.engines import Completion
    from prover.config import GRPOConfig, RolloutConfig
    from prover.fleet.actors import VerifierWorker

    cfg = config(tmp_path, tmp_path, engine="transformers")
    worker = VerifierWorker(cfg.verifier, PolicyConfig(), RolloutConfig(), GRPOConfig())
    recording = _Recording(worker.verifier)
    worker.verifier = recording
    batches = [[WholeSample(problem(name), group, (1, 2), Completion(f"c{group}{j}", (3, 4), (-0.5, -0.25), "stop"),
                            f"theorem {name} (a b : ℕ) (h : a = b) : b = a := by\n  exact h.symm\n")
                for j in range(2)] for group, name in ((2, "p2"), (0, "p0"), (1, "p1"))]
    stub = _StubStream(batches, recording)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        episodes, generate_s, verify_s = worker.judge_whole_streamed([], stub, 0)
    finally:
        ray.shutdown()
        worker.verifier = recording.inner
        worker.close()
    assert stub.judged_in_time == [True, True], (stub.judged_in_time, recording.calls)
    assert recording.calls[0] == ["p2"], recording.calls   # the first problem was judged alone, at once
    assert [(e.group if e else None) for e in episodes] == [0, 0, 1, 1, 2, 2], episodes
    assert all(e is not None and e.policy_version == 7 for e in episodes), episodes
    assert generate_s == 1.5 and verify_s >= 0, (generate_s, verify_s)
