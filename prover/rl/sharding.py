"""The trainers' model over their process group (`prover train`'s learner ranks, `prover sft`
under torchrun): the layout check made before any work, the sharding itself, and the helpers a
loop needs when one rank does the run folder's bookkeeping for all.

The layout is `[learner]`'s (FSDP2 over `dp_shard` ranks, expert parallelism over `ep`:
policy/mesh.py, applied by policy/parallelize.py). Only our DeepSeek-V3 policy shards; any
other causal LM trains on one device."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from prover.config import ConfigError, ProverConfig
from prover.errors import UserError

T = TypeVar("T")


def check_layout(config: ProverConfig, checkpoint: Path, ranks: int, what: str) -> None:
    """With `ranks` > 1, the policy must be ours (only it shards) and `[learner]`'s mesh must fit
    the ranks and the model: ConfigError quoting the numbers, before anything starts. `what`
    names where the ranks come from in the message ("learner.ranks = 2")."""
    if ranks == 1:
        return
    from policy.checkpoint import args_from_hf_config
    from policy.mesh import check_mesh
    from prover.rl.checkpointing import is_policy_checkpoint

    if not is_policy_checkpoint(checkpoint):
        raise ConfigError(f"{what}: only our DeepSeek-V3 policy can be sharded, and {checkpoint} holds another "
                          "model; train it on one rank")
    args = args_from_hf_config(json.loads((checkpoint / "config.json").read_text(encoding="utf-8")))
    try:
        check_mesh(config.learner, ranks, args)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def sharded(model: Any, config: ProverConfig) -> Any:
    """`model` sharded over the current process group as `[learner]` says; unchanged without one."""
    from policy.distributed_checkpoint import is_distributed

    if not is_distributed():
        return model
    import torch.distributed as dist

    from policy.model import Transformer
    from policy.parallelize import SpeedConfig, build_mesh, parallelize

    if not isinstance(model, Transformer):
        raise ValueError(f"{dist.get_world_size()} ranks: sharding needs our DeepSeek-V3 policy, "
                         f"not {type(model).__name__}; train it on one rank")
    parallelize(model, SpeedConfig(), build_mesh(config.learner, model.args), config.learner)
    return model


class OtherRankStopped(SystemExit):
    """Raised on ranks > 0 when rank 0's preflight failed: rank 0 prints the one line, the others
    exit with the same code and say nothing."""


def rank0_first(work: Callable[[], T]) -> T:
    """Run `work` on rank 0 only and hand its result to every rank (one process: just run it).
    A failure there is raised on rank 0 and ends the other ranks quietly (exit 2 for a user
    mistake, else 1), so a mistake is one line, not one per rank."""
    from policy.distributed_checkpoint import is_distributed, rank

    if not is_distributed():
        return work()
    import torch.distributed as dist

    box: list[Any] = [None]
    error: BaseException | None = None
    if rank() == 0:
        try:
            box[0] = ("ok", work())
        except BaseException as exc:   # the others must hear of any failure, or they wait forever
            error, box[0] = exc, ("user-error" if isinstance(exc, UserError) else "failed", None)
    dist.broadcast_object_list(box, src=0)
    if error is not None:
        raise error
    status, value = box[0]
    if status != "ok":
        raise OtherRankStopped(2 if status == "user-error" else 1)
    return value


def all_summed(values: list[float]) -> list[float]:
    """`values` summed over the ranks of the process group (unchanged on one process)."""
    from policy.distributed_checkpoint import is_distributed

    if not is_distributed():
        return list(values)
    import torch
    import torch.distributed as dist

    total = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(total)
    return [float(v) for v in total]
