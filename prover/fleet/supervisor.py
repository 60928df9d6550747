"""Keeping the fleet's actors alive: `ActorPool` starts N actors of one worker class, tells the
dead from the busy (`ping`, which runs in its own concurrency group, so a busy actor answers),
replaces the dead (and the hung ones the scheduler names: work past `fleet.shard_timeout_s`),
and gives up after `max_restarts` replacements. The scheduler retries the
work a dead actor held on its replacement (`prover.fleet.scheduler`).

Ray's own `max_restarts` would restart an actor too, but silently and with its constructor's
old arguments; here a replacement is counted and reported, and `on_replace` brings it up to
date (a new rollout actor gets the learner's latest weights before any work).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
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

    def replace(self, i: int, why: str = "died") -> None:
        """End actor `i` (dead already, or hung: `why` says which) and start its replacement."""
        if self.restarts >= self.max_restarts:
            raise FleetError(f"{self.role} actor {i} {why} and the {self.max_restarts} replacements allowed "
                             f"(fleet.max_restarts) are spent")
        self.restarts += 1
        old = self.handles[i]
        with contextlib.suppress(Exception):   # already gone: killing is only to be sure
            ray.kill(old, no_restart=True)
        log.warning("%s actor %d %s; starting replacement %d of %d", self.role, i, why, self.restarts,
                    self.max_restarts)
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


# -- what a killed driver leaves behind ---------------------------------------------------------------
#
# A driver killed with SIGKILL cannot stop the local Ray it started. Ray's head processes follow it,
# but some of their children do not (its dashboard and runtime-env agents wait on a dead GCS for
# minutes; they rename themselves, so no command line names the run). So the fleet writes down every
# process it started (pid and start time, refreshed after every step), and the next fleet started
# with the same record kills what is still alive of it before starting its own.

def _descendants() -> list[tuple[int, float]]:
    import psutil

    found = []
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found.append((proc.pid, proc.create_time()))
    return found


def record_processes(path: Path) -> None:
    """Write this process's descendants (pid, start time) to `path`, atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"driver": os.getpid(), "processes": _descendants()}), encoding="utf-8")
    os.replace(tmp, path)


def reap_recorded(path: Path) -> int:
    """Kill the processes of an earlier fleet recorded in `path` that are still alive (same pid
    and start time: never a reused pid) when that fleet's driver is gone; how many were killed."""
    import psutil

    if not path.is_file():
        return 0
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        driver, processes = int(record["driver"]), [(int(p), float(t)) for p, t in record["processes"]]
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("%s: unreadable process record; nothing reaped", path)
        return 0
    if driver != os.getpid() and psutil.pid_exists(driver):
        with contextlib.suppress(psutil.Error):
            if psutil.Process(driver).is_running():
                raise FleetError(f"{path}: the run's earlier driver (pid {driver}) is still running; stop it first")
    killed = []
    for pid, started in processes:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if abs(proc.create_time() - started) < 1e-3:
                proc.kill()
                killed.append(proc)
    psutil.wait_procs(killed, timeout=10)
    path.unlink(missing_ok=True)
    if killed:
        log.warning("killed %d process(es) left behind by an earlier run (%s)", len(killed), path)
    return len(killed)
