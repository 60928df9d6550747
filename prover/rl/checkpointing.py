"""Training checkpoints shared by every trainer (SFT, GRPO): atomic folders, resume, retention.

A run folder keeps its checkpoints under `checkpoints/step-00000100/`. Each one is a complete
Hugging Face model folder (config.json, safetensors weights, generation config, tokenizer) that
vLLM, transformers and `prover bench --model DIR` load as they are, plus what resuming needs:

    trainer/optimizer.pt   optimizer state_dict (AdamW moments); a learner sharded over
                           several ranks writes trainer/optimizer/ instead (DCP: every rank its
                           shards, full tensors described, so any rank count resumes it)
    trainer/scheduler.pt   LR scheduler state_dict
    trainer/rng.pt         torch (CPU and CUDA) and Python RNG states (rng-R.pt: rank R > 0)
    trainer/state.json     step, data cursor, counters (written last)
    config.resolved.toml   the run's resolved config (re-runs it: `prover --config ...`)

The trainer state sits in a subfolder so that model loaders, which look for weight files at the
top level only, never mistake optimizer.pt for weights.

Atomicity: a checkpoint is written into a hidden `.step-....tmp` folder and renamed into place
once everything is on disk; a process killed mid-write (kill -9) leaves only the hidden folder,
which is never read and is removed by the next save. So `latest()` is always a complete
checkpoint. After a new checkpoint is in place, all but the newest `keep_last` are removed.

Sharded learners (a process group is up, `policy.parallelize`): `save` and `restore` are then
collective, every rank calls them; rank 0 writes the gathered weights and the rest, every rank
its optimizer shards and RNG, and rank 0 renames the folder once all have written.

    ckpt = Checkpointer(run_dir, keep_last=2)
    if (path := ckpt.latest()) is not None:
        model = load_model(path)                         # the weights of that step
        state = ckpt.restore(path, optimizer, scheduler)  # moments, LR, RNG; state.step, .cursor
    ...
    ckpt.save(step, model=model, tokenizer=tok, optimizer=opt, scheduler=sched,
              cursor={"epoch": 1, "row": 40}, config=config)
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from prover.config import ProverConfig

CHECKPOINTS_DIR = "checkpoints"
TRAINER_DIR = "trainer"
STATE_NAME = "state.json"
OPTIMIZER_SHARDS = "optimizer"   # trainer/optimizer/: a sharded learner's optimizer (DCP)
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    """What a checkpoint records besides weights and optimizer: `step` (optimizer steps done),
    `cursor` (the trainer's position in its data, JSON), `counters` (totals such as tokens seen)."""

    step: int
    cursor: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, Any] = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def is_policy_checkpoint(folder: Path) -> bool:
    """Whether `folder` holds our policy's architecture (DeepSeek-V3, loaded by policy.checkpoint)
    rather than another Hugging Face causal LM."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "deepseek_v3"


def load_model(folder: Path, device: str | torch.device = "cpu") -> nn.Module:
    """The trainable model of a checkpoint folder, float32 on `device`: our policy through
    policy.checkpoint.load_pretrained, any other causal LM through transformers."""
    if is_policy_checkpoint(folder):
        from policy.checkpoint import load_pretrained

        return load_pretrained(Path(folder), device=device, dtype=torch.float32)
    from transformers import AutoModelForCausalLM

    model: nn.Module = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    return model.to(device)


def save_model(model: nn.Module, folder: Path, tokenizer: Any = None) -> None:
    """A Hugging Face folder of `model` (and its tokenizer): ours through policy.checkpoint
    save_pretrained (with the tokenizer's bos/eos/pad ids in config.json), others through their
    own save_pretrained."""
    from policy.model import Transformer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(model, Transformer):
        from policy.checkpoint import save_pretrained

        special = {f"{kind}_token_id": getattr(tokenizer, f"{kind}_token_id") for kind in ("bos", "eos", "pad")
                   if tokenizer is not None and getattr(tokenizer, f"{kind}_token_id", None) is not None}
        save_pretrained(model, folder, extra_config=special)
    else:
        model.save_pretrained(str(folder))  # type: ignore[operator]
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """The checkpoints of one run folder (`run_dir/checkpoints/`), newest `keep_last` kept."""

    def __init__(self, run_dir: Path, *, keep_last: int = 2) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {keep_last}")
        self.root = Path(run_dir) / CHECKPOINTS_DIR
        self.keep_last = keep_last

    def complete(self) -> list[tuple[int, Path]]:
        """(step, folder) of every complete checkpoint, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            match = _STEP_DIR.match(entry.name)
            if match and (entry / TRAINER_DIR / STATE_NAME).is_file():
                found.append((int(match.group(1)), entry))
        return sorted(found)

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        done = self.complete()
        return done[-1][1] if done else None

    def save(self, step: int, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             cursor: dict[str, Any], config: ProverConfig | None = None, tokenizer: Any = None,
             counters: dict[str, Any] | None = None) -> Path:
        """Write the checkpoint of `step` atomically (hidden folder, then one rename), then keep
        only the newest `keep_last`. Returns its folder. Collective for a sharded `model`."""
        from policy.distributed_checkpoint import (
            barrier,
            gathered_model,
            is_distributed,
            rank,
            save_optimizer,
        )

        sharded, me = is_distributed(), rank()
        final = self.root / checkpoint_name(step)
        tmp = self.root / f".{final.name}.tmp"
        trainer = tmp / TRAINER_DIR
        if me == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".step-*.tmp"):   # left by a killed save
                shutil.rmtree(stale, ignore_errors=True)
            trainer.mkdir(parents=True)
        barrier()
        whole = gathered_model(model) if sharded else model
        if whole is not None:
            save_model(whole, tmp, tokenizer)
        if sharded:
            save_optimizer(trainer / OPTIMIZER_SHARDS, model, optimizer)
        else:
            torch.save(optimizer.state_dict(), trainer / "optimizer.pt")
        torch.save(_rng_state(), trainer / _rng_name(me))
        barrier()
        if me == 0:
            torch.save(scheduler.state_dict(), trainer / "scheduler.pt")
            if config is not None:
                from prover.config import write_resolved_config

                write_resolved_config(config, tmp)
            state = TrainerState(step=step, cursor=dict(cursor), counters=dict(counters or {}))
            (trainer / STATE_NAME).write_text(json.dumps(asdict(state), indent=2) + "\n", encoding="utf-8")
            if final.exists():   # the same step saved again (an interrupt right after a save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            for _, old in self.complete()[:-self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return final

    def restore(self, folder: Path, *, optimizer: torch.optim.Optimizer, scheduler: Any,
                map_location: str | torch.device = "cpu", model: nn.Module | None = None) -> TrainerState:
        """Load the optimizer, scheduler and RNG states of checkpoint `folder` (the weights are
        `load_model(folder)`'s) and return its TrainerState. An optimizer a sharded learner wrote
        (trainer/optimizer/) needs `model`, and loads on any number of ranks, one included;
        collective when sharded."""
        from policy.distributed_checkpoint import is_distributed, load_optimizer, rank

        trainer = Path(folder) / TRAINER_DIR
        if (trainer / OPTIMIZER_SHARDS).is_dir():
            if model is None:
                raise ValueError(f"{folder}: its optimizer was written by a sharded learner; restore needs the model")
            load_optimizer(trainer / OPTIMIZER_SHARDS, model, optimizer)
        elif is_distributed():
            raise ValueError(f"{folder}: its optimizer state was written by a learner on one device and cannot be "
                             "split over several ranks; continue it with learner.ranks = 1")
        else:
            optimizer.load_state_dict(torch.load(trainer / "optimizer.pt", map_location=map_location,
                                                 weights_only=True))
        scheduler.load_state_dict(torch.load(trainer / "scheduler.pt", weights_only=False))
        own = trainer / _rng_name(rank())
        _set_rng_state(torch.load(own if own.is_file() else trainer / _rng_name(0), weights_only=False))
        raw = json.loads((trainer / STATE_NAME).read_text(encoding="utf-8"))
        return TrainerState(step=int(raw["step"]), cursor=dict(raw.get("cursor", {})),
                            counters=dict(raw.get("counters", {})))


def _rng_name(rank: int) -> str:
    return "rng.pt" if rank == 0 else f"rng-{rank}.pt"


def prepare_training_dir(out: Path, config: ProverConfig, *, force: bool = False) -> bool:
    """Make a trainer's run folder (`prover sft`, `prover train`) ready before any work; True
    when an earlier run there is continued.

    A folder with an earlier run of the same config is continued (its newest complete
    checkpoint); a different config is refused, naming the differences, as is a non-empty
    folder that is not a run, unless `force` (the run's own files are removed first)."""
    from prover.config import read_config_file
    from prover.rl.metrics import METRICS_NAME, TENSORBOARD_DIR
    from prover.rl.report import CURVES_NAME
    from prover.runs import (
        CONFIG_NAME,
        SUMMARY_NAME,
        RunDirError,
        config_differences,
        folder_listing,
        make_writable_folder,
        shown_names,
        with_absolute_paths,
    )

    present = folder_listing(out)
    if force:
        for name in (CONFIG_NAME, SUMMARY_NAME, METRICS_NAME, CURVES_NAME):
            (out / name).unlink(missing_ok=True)
        for name in (CHECKPOINTS_DIR, TENSORBOARD_DIR):
            shutil.rmtree(out / name, ignore_errors=True)
        present = folder_listing(out)
    make_writable_folder(out)
    if (out / CONFIG_NAME).is_file():
        stored = read_config_file(out / CONFIG_NAME)
        current = with_absolute_paths(config).model_dump(mode="json", exclude_none=True)
        differences = config_differences(stored, current)
        if differences:
            shown = "; ".join(differences[:3]) + (f" (and {len(differences) - 3} more)" if len(differences) > 3 else "")
            raise RunDirError(f"{out}: holds a run with a different config: {shown}; pass the same options to "
                              "continue it, --force to start over, or another --out")
        return True
    if present:
        raise RunDirError(f"{out}: folder is not empty ({shown_names(present)}) and holds no run; pass --force "
                          "or another --out")
    return False
