"""Keeping the fleet's actors alive: `ActorPool` starts N actors of one worker class, tells the
dead from the busy (`ping`, which runs in its own concurrency group, so a busy actor answers),
replaces the dead, and gives up after `max_restarts` replacements. The scheduler retries the
work a dead actor held on its replacement (`prover.fleet.scheduler`).

Ray's own `max_restarts` would restart an actor too, but silently and with its constructor's
old arguments; here a replacement is counted and reported, and `on_replace` brings it up to
date (a new rollout actor gets the learner's latest weights before any work).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from prover.fleet.actors import HEALTH

log = logging.getLogger(__name__)

PING_TIMEOUT_S = 30.0   # a live actor answers `ping` within this (it runs beside any busy method)


def remote_class(worker_cls: type) -> Any:
    """`worker_cls` as a Ray actor class whose `ping` runs in its own thread (group HEALTH)."""
    return ray.remote(concurrency_groups={HEALTH: 1})(worker_cls)  # type: ignore[call-overload]


class FleetError(RuntimeError):
    """The fleet cannot go on: an actor role ran out of replacements, or an actor failed to start."""


class ActorPool:
    """`size` Ray actors of `worker_cls(*args)`, replaced when they die."""

    def __init__(self, role: str, worker_cls: type, args: tuple[Any, ...], size: int, *, options: dict[str, Any],
                 max_restarts: int, on_replace: Callable[[int, Any], None] | None = None) -> None:
        self.role = role
        self.remote_cls = remote_class(worker_cls)
        self.args = args
        self.options = options
        self.max_restarts = max_restarts
        self.on_replace = on_replace
        self.restarts = 0
        self.handles: list[Any] = [self._start(i) for i in range(size)]
        self._wait_ready(range(size))

    def __len__(self) -> int:
        return len(self.handles)

    def __getitem__(self, i: int) -> Any:
        return self.handles[i % len(self.handles)]

    def _start(self, i: int) -> Any:
        return self.remote_cls.options(**self.options).remote(*self.args)

    def _wait_ready(self, indices: Any) -> None:
        """Constructors ran (an engine loaded, a pool opened): a failure here is the fleet's."""
        for i in indices:
            try:
                ray.get(self.handles[i].ping.remote())
            except RayActorError as exc:
                raise FleetError(f"{self.role} actor {i} failed to start: {exc}") from exc

    def alive(self, i: int) -> bool:
        try:
            ray.get(self.handles[i].ping.remote(), timeout=PING_TIMEOUT_S)
        except RayActorError:
            return False
        except GetTimeoutError:
            return True   # unreachable for now but not known dead: its work will tell
        return True

    def heal(self) -> list[int]:
        """Replace every dead actor; the indices replaced."""
        dead = [i for i in range(len(self.handles)) if not self.alive(i)]
        for i in dead:
            self.replace(i)
        return dead

    def replace(self, i: int) -> None:
        if self.restarts >= self.max_restarts:
            raise FleetError(f"{self.role} actor {i} died and the {self.max_restarts} replacements allowed "
                             f"(fleet.max_restarts) are spent")
        self.restarts += 1
        old = self.handles[i]
        with contextlib.suppress(Exception):   # already gone: killing is only to be sure
            ray.kill(old, no_restart=True)
        log.warning("%s actor %d died; starting replacement %d of %d", self.role, i, self.restarts, self.max_restarts)
        self.handles[i] = self._start(i)
        self._wait_ready([i])
        if self.on_replace is not None:
            self.on_replace(i, self.handles[i])

    def close(self, method: str | None = "close") -> None:
        """Ask each actor to release what it holds (`method`), then end it."""
        for handle in self.handles:
            try:
                if method is not None:
                    ray.get(getattr(handle, method).remote(), timeout=60)
            except Exception as exc:   # a dead or stuck actor: ending it is all that is left
                log.warning("%s actor did not close cleanly: %s", self.role, exc)
            ray.kill(handle, no_restart=True)
        self.handles = []
