"""The learner as `learner.ranks` Ray actors (`LearnerWorker`s) that act as one.

Rank 0 names an address on its node; every rank joins the process group there and builds its
learner, which shards the policy over the group (`policy.parallelize`, as `[learner]` says). Each
call goes to every rank (the sharded step, the weight gather and the checkpoint are collective)
and gives back one ObjectRef, as a single actor's method would: rank 0's answer, ready only when
every rank has finished, so a rank that fails fails the call. With one rank the group is that
actor and nothing more.

    group = LearnerGroup(factory, ranks=2, options={"num_cpus": 1})
    metrics, seconds, version = ray.get(group.step(episodes))
    weights = ray.get(group.weights())       # rank 0 gathers them; the other ranks return {}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from prover.fleet.actors import Learner, LearnerWorker
from prover.fleet.supervisor import FleetError, remote_class
from prover.rl.episodes import Episode


@ray.remote(num_cpus=0)
def _when_all(first: Any, *rest: Any) -> Any:
    """`first`, once every argument is ready (Ray resolves them first; a failed one fails this)."""
    return first


class LearnerGroup:
    """`ranks` learner actors started with `options`, each building `factory()` in the group."""

    def __init__(self, factory: Callable[[], Learner], ranks: int, *, options: dict[str, Any]) -> None:
        cls = remote_class(LearnerWorker)
        self.handles = [cls.options(**options).remote(factory, rank, ranks) for rank in range(ranks)]
        try:
            address = ray.get(self.handles[0].rendezvous.remote()) if ranks > 1 else None
            ray.get([handle.start.remote(address) for handle in self.handles])
        except (RayActorError, RayTaskError) as exc:
            self.kill()
            cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
            raise FleetError(f"the learner ({ranks} rank{'s' if ranks > 1 else ''}) failed to start: "
                             f"{type(cause).__name__}: {cause}") from exc

    def __len__(self) -> int:
        return len(self.handles)

    def _all(self, method: str, *args: Any) -> Any:
        refs = [getattr(handle, method).remote(*args) for handle in self.handles]
        return refs[0] if len(refs) == 1 else _when_all.remote(*refs)

    def step(self, episodes: Sequence[Episode]) -> Any:
        """One learner step on every rank (each is given all the episodes, stored once)."""
        return self._all("step", ray.put(list(episodes)) if len(self.handles) > 1 else list(episodes))

    def weights(self) -> Any:
        """Rank 0's gathered weights. The other ranks only take part in the gather: their refs
        are not awaited, so the weights are not copied through another task."""
        refs = [handle.weights.remote() for handle in self.handles]
        return refs[0]

    def save(self, path: str) -> Any:
        return self._all("save", path)

    def load(self, path: str, version: int) -> Any:
        return self._all("load", path, version)

    def current_version(self) -> Any:
        return self.handles[0].current_version.remote()

    def kill(self) -> None:
        """End every rank (their process group goes with them)."""
        for handle in self.handles:
            ray.kill(handle, no_restart=True)
        self.handles = []
