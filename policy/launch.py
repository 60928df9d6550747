"""Running the policy's training step on several processes: the process group, the sharded
model, one optimizer step, and a torchrun entry point that exercises them end to end.

Processes join a group in one of two ways:
- under `torchrun`, which sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT:
  `process_group()` reads them;
- as Ray actors (the fleet's learner), which are given their rank, the world size and the
  address of rank 0: `process_group(rank=r, world_size=w, master_addr=a, master_port=p)`.
The backend is NCCL on CUDA and gloo on CPU (what the tests use).

Check the whole path on this machine (2 ranks on CPU, gloo):

    torchrun --nproc-per-node 2 -m policy.launch --checkpoint runs/tiny --dp-shard 2 --ep 2 \\
        --steps 2 --out runs/tiny-sharded

It loads the HF checkpoint, shards it (FSDP2 + EP), runs optimizer steps on random tokens
(with the MTP loss and the balancing-bias update), writes a sharded checkpoint per step under
--out and converts the last to HF format (--out/hf), which vLLM and `prover bench` load.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from policy.model import LossOutput, Transformer

logger = logging.getLogger(__name__)


@contextmanager
def process_group(
    *,
    rank: int | None = None,
    world_size: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    backend: str | None = None,
    timeout_s: float = 600.0,
) -> Iterator[torch.device]:
    """Join the process group for the duration of the block; yields this rank's device.

    Without arguments the torchrun environment is used; Ray actors pass rank, world_size and
    rank 0's master_addr / master_port. backend: "nccl" with CUDA, else "gloo". On CUDA the
    device is `cuda:LOCAL_RANK` (env) or `cuda:rank % device_count`."""
    explicit = rank is not None
    if explicit != (world_size is not None) or explicit != (master_addr is not None) or explicit != (
        master_port is not None
    ):
        raise ValueError("give all of rank, world_size, master_addr, master_port, or none (torchrun)")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if explicit:
        assert world_size is not None and rank is not None
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        init = f"tcp://{master_addr}:{master_port}"
        dist.init_process_group(backend, init_method=init, rank=rank, world_size=world_size, timeout=timeout)
    else:
        missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise RuntimeError(f"not under torchrun: {', '.join(missing)} unset; pass rank/world_size/...")
        dist.init_process_group(backend, timeout=timeout)
    try:
        if backend == "nccl":
            local = int(os.environ.get("LOCAL_RANK", dist.get_rank() % torch.cuda.device_count()))
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        yield device
    finally:
        dist.destroy_process_group()


def grad_norm(parameters: Sequence[nn.Parameter]) -> Tensor:
    """Global L2 norm of the gradients, sharded (DTensors on any meshes) or not: per mesh the
    squared norm of the local shards, reduced by DTensor, then summed."""
    groups: dict[Any, list[Tensor]] = {}
    for p in parameters:
        if p.grad is not None:
            key = p.grad.device_mesh if isinstance(p.grad, DTensor) else None
            groups.setdefault(key, []).append(p.grad)
    total = torch.zeros((), dtype=torch.float32)
    for grads in groups.values():
        norm = torch.nn.utils.get_total_norm(grads, 2.0)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        total = total + norm.float().cpu() ** 2
    return total.sqrt()


def clip_grad_norm(parameters: Sequence[nn.Parameter], max_norm: float) -> Tensor:
    """Scale gradients so their global norm is at most max_norm; returns the norm before."""
    norm = grad_norm(parameters)
    scale = max_norm / (float(norm) + 1e-6)
    if scale < 1:
        for p in parameters:
            if p.grad is not None:
                p.grad.mul_(scale)
    return norm


def _mean_over_ranks(value: Tensor) -> float:
    value = value.detach().float().reshape(1).clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return float(value)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tokens: Tensor,
    *,
    targets: Tensor | None = None,
    max_grad_norm: float | None = None,
) -> dict[str, float]:
    """One optimizer step of the language-model loss (main + MTP + balance) on this rank's
    tokens (B, T); sharded or not. With equal B and T on every rank the update equals the
    single-device step on all ranks' sequences together. Returns the loss terms averaged over
    ranks and the gradient norm (before clipping)."""
    assert isinstance(model, Transformer)
    out: LossOutput = model.loss(tokens, targets=targets)
    out.loss.backward()
    params = [p for p in model.parameters() if p.requires_grad]
    norm = clip_grad_norm(params, max_grad_norm) if max_grad_norm else grad_norm(params)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    report = {"loss": _mean_over_ranks(out.loss), "main": _mean_over_ranks(out.main)}
    if out.mtp is not None:
        report["mtp"] = _mean_over_ranks(out.mtp)
    report["grad_norm"] = float(norm)
    return report


def _main(argv: list[str] | None = None) -> None:
    from policy.balancing import register_bias_update_hook
    from policy.checkpoint import load_pretrained
    from policy.distributed_checkpoint import load_sharded, save_sharded, sharded_to_hf
    from policy.mesh import ShardingConfig
    from policy.parallelize import SpeedConfig, build_mesh, parallelize

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="HF-format checkpoint to start from")
    p.add_argument("--resume", type=Path, help="sharded checkpoint to resume (model, AdamW, step)")
    p.add_argument("--out", type=Path, required=True, help="folder for the sharded checkpoints")
    p.add_argument("--dp-shard", type=int, default=-1, help="learner.dp_shard (-1: all ranks)")
    p.add_argument("--ep", type=int, default=1, help="learner.ep")
    p.add_argument("--param-dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=2, help="sequences per rank and step")
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    sharding = ShardingConfig(dp_shard=a.dp_shard, ep=a.ep, param_dtype=a.param_dtype)
    with process_group() as device:
        rank = dist.get_rank()
        model = load_pretrained(a.checkpoint, device=device, dtype=torch.float32)
        mesh = build_mesh(sharding, model.args)
        parallelize(model, SpeedConfig(), mesh, sharding)
        optimizer = torch.optim.AdamW(model.parameters(), lr=a.lr)
        register_bias_update_hook(optimizer, model)
        step = load_sharded(a.resume, model, optimizer)["step"] if a.resume else 0
        mesh_info = {"dp_shard": mesh.dense["dp_shard"].size(), "ep": mesh.ep}
        last = None
        for _ in range(a.steps):
            step += 1
            generator = torch.Generator().manual_seed(a.seed * 1_000_003 + step * 1009 + rank)
            tokens = torch.randint(0, model.args.vocab_size, (a.batch, a.seq), generator=generator)
            report = train_step(model, optimizer, tokens.to(device), max_grad_norm=1.0)
            last = a.out / f"step-{step:06d}"
            save_sharded(last, model, optimizer, step=step, source=a.checkpoint, mesh_info=mesh_info)
            if rank == 0:
                print(json.dumps({"step": step, **report, "checkpoint": str(last)}), flush=True)
        if rank == 0 and last is not None:
            sharded_to_hf(last, a.out / "hf")
            print(json.dumps({"hf_checkpoint": str(a.out / "hf")}), flush=True)


if __name__ == "__main__":
    _main()
