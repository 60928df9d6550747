"""Sharded training checkpoints (`torch.distributed.checkpoint`) and their conversion to and
from our Hugging Face-format checkpoints (`policy.checkpoint`).

Every rank writes its own shards in parallel; the files describe full (unsharded) tensors
under the model's parameter names, so a checkpoint written by a run on N ranks with one mesh
loads on M ranks with another, or in one process without a process group (DCP reshards on
load). torchtitan and torchtune save the same way. A sharded checkpoint folder holds:

    config.json          the model (transformers' DeepseekV3 keys, as `policy.checkpoint` writes)
    tokenizer files      copied from the checkpoint the run started from, when it had them
    trainer_state.json   step, and the world size / mesh that wrote it (informative)
    dcp/                 DCP's .metadata and one __RANK_0.distcp file per writing rank:
                         "model.*" the state dict (weights, balancing biases), "optim.*" AdamW

`sharded_to_hf` turns one into a folder vLLM, transformers and `prover bench` load;
`hf_to_sharded` goes the other way (a sharded run starting from a released checkpoint).
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from policy.checkpoint import args_from_hf_config, hf_config, load_pretrained, save_pretrained
from policy.model import ModelArgs, Transformer

DCP_DIR = "dcp"
TRAINER_STATE = "trainer_state.json"
# config.json keys that describe the tokenizer, not the architecture: carried across conversions
_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
# top-level files of an HF folder that are not weights (tokenizer, generation config, ...)
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


@contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns on every save/load without a process group, even when asked for that
    (no_dist=True); one process reading or writing a whole checkpoint is intended here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _model_args(model: nn.Module) -> ModelArgs:
    args = getattr(model, "args", None)
    if not isinstance(args, ModelArgs):
        raise TypeError(f"expected a policy Transformer (possibly sharded), got {type(model).__name__}")
    return args


def _copy_side_files(source: Path, out: Path) -> dict[str, Any]:
    """Copy a checkpoint folder's non-weight files (tokenizer, generation config) into `out`;
    return the token ids of its config.json."""
    extra: dict[str, Any] = {}
    if (source / "config.json").is_file():
        config = json.loads((source / "config.json").read_text())
        extra = {k: config[k] for k in _TOKEN_KEYS if config.get(k) is not None}
    for file in source.iterdir():
        if (
            file.is_file()
            and file.name not in (*_WEIGHT_FILES, "config.json", TRAINER_STATE)
            and not file.name.endswith(".safetensors")
        ):
            shutil.copy2(file, out / file.name)
    return extra


def save_sharded(
    out: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    step: int = 0,
    source: Path | None = None,
    mesh_info: dict[str, Any] | None = None,
) -> None:
    """Write `model` (sharded by `policy.parallelize` or not) and its optimizer to `out`,
    collectively: every rank of the process group calls it. `source`: the checkpoint folder
    the run started from (its tokenizer files and token ids are copied)."""
    out = Path(out)
    args = _model_args(model)
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    if rank() == 0:
        (out / DCP_DIR).mkdir(parents=True, exist_ok=True)
        extra = _copy_side_files(Path(source), out) if source is not None else {}
        config = hf_config(args, **extra)
        (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    barrier()
    with _quiet_single_process():
        dcp.save(state, checkpoint_id=out / DCP_DIR, no_dist=not is_distributed())
    if rank() == 0:
        world = dist.get_world_size() if is_distributed() else 1
        trainer = {"step": step, "world_size": world, **(mesh_info or {})}
        # written last: a folder with trainer_state.json is complete
        (out / TRAINER_STATE).write_text(json.dumps(trainer, indent=2) + "\n")
    barrier()


def read_trainer_state(path: Path) -> dict[str, Any]:
    """trainer_state.json of a sharded checkpoint; FileNotFoundError when the folder is not a
    complete one (a save cut short writes it last)."""
    file = Path(path) / TRAINER_STATE
    if not file.is_file():
        raise FileNotFoundError(f"{path}: not a complete sharded checkpoint (no {TRAINER_STATE})")
    return json.loads(file.read_text())


def sharded_model_args(path: Path) -> ModelArgs:
    """The architecture a sharded checkpoint holds (its config.json)."""
    return args_from_hf_config(json.loads((Path(path) / "config.json").read_text()))


def _has_optimizer(path: Path) -> bool:
    metadata = dcp.FileSystemReader(str(Path(path) / DCP_DIR)).read_metadata()
    return any(key.startswith("optim.") for key in metadata.state_dict_metadata)


def load_sharded(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Load a sharded checkpoint into `model` (any mesh, or none) and, when given and saved,
    the optimizer; collectively on every rank. Returns trainer_state.json (the step)."""
    path = Path(path)
    trainer = read_trainer_state(path)
    saved = sharded_model_args(path)
    mine = _model_args(model)
    differ = [
        f"{k}: checkpoint {getattr(saved, k)} != model {getattr(mine, k)}"
        for k in ("vocab_size", "dim", "n_layers", "n_routed_experts", "n_mtp_layers")
        if getattr(saved, k) != getattr(mine, k)
    ]
    if differ:
        raise ValueError(f"{path}: another architecture ({'; '.join(differ)})")
    state: dict[str, Any] = {"model": get_model_state_dict(model)}
    with_optim = optimizer is not None and _has_optimizer(path)
    if with_optim:
        assert optimizer is not None
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=path / DCP_DIR, no_dist=not is_distributed())
    set_model_state_dict(model, state["model"])
    if with_optim:
        assert optimizer is not None
        set_optimizer_state_dict(model, optimizer, state["optim"])
    return trainer


def gathered_model(model: nn.Module) -> Transformer | None:
    """The whole of a sharded `model` as an unsharded float32 `Transformer` on rank 0's CPU
    (None on the other ranks), collectively: every rank calls it. What a sharded learner saves
    in HF format and pushes to the rollout engines. Needs the full model's memory on rank 0."""
    args = _model_args(model)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank() != 0:
        return None
    with torch.device("meta"):
        whole = Transformer(args)
    whole.to_empty(device="cpu")
    tensors = {k: v for k, v in full.items() if isinstance(v, torch.Tensor)}
    whole.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    whole.reset_buffers()
    return whole


def save_optimizer(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write `optimizer`'s state (of `model`, sharded or not) as a DCP folder at `path`,
    collectively; the files describe full tensors, so any mesh (or one process) loads them."""
    with _quiet_single_process():
        dcp.save({"optim": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=Path(path),
                 no_dist=not is_distributed())


def load_optimizer(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load what `save_optimizer` wrote into `optimizer`, resharded to `model`'s mesh; collectively.
    Parameters the saved optimizer never stepped (no gradient yet: the MTP layers in RL) have
    no state there and start from zero moments, as they would have."""
    state = {"optim": get_optimizer_state_dict(model, optimizer)}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=Path(path), no_dist=not is_distributed(),
                 planner=DefaultLoadPlanner(allow_partial_load=True))
    set_optimizer_state_dict(model, optimizer, state["optim"])


def sharded_to_hf(path: Path, out: Path, *, dtype: torch.dtype | None = torch.bfloat16) -> None:
    """Convert a sharded checkpoint into an HF-format folder (config, safetensors, tokenizer
    files) in one process, without a process group; weights cast to `dtype` (None: float32
    as trained). Needs the full model's memory on the CPU."""
    path, out = Path(path), Path(out)
    read_trainer_state(path)
    args = sharded_model_args(path)
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device="cpu")
    state = {"model": model.state_dict()}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=path / DCP_DIR, no_dist=True)
    model.load_state_dict(state["model"])
    model.reset_buffers()
    out.mkdir(parents=True, exist_ok=True)
    extra = _copy_side_files(path, out)
    save_pretrained(model, out, dtype=dtype, extra_config=extra)


def hf_to_sharded(path: Path, out: Path) -> None:
    """Convert an HF-format checkpoint into a sharded one (float32 weights, no optimizer
    state, step 0) that a run on any number of ranks loads with `load_sharded`."""
    model = load_pretrained(Path(path), dtype=torch.float32)
    save_sharded(Path(out), model, step=0, source=Path(path))


def is_sharded_checkpoint(path: Path) -> bool:
    """Whether `path` is a (complete) sharded checkpoint folder."""
    return (Path(path) / TRAINER_STATE).is_file() and (Path(path) / DCP_DIR).is_dir()


def convert(path: Path, out: Path, *, dtype: torch.dtype | None = torch.bfloat16) -> str:
    """Convert a sharded checkpoint to HF format or an HF-format one to a sharded one, whichever
    `path` is; returns "sharded -> hf" or "hf -> sharded". `dtype` applies to HF output.
    FileNotFoundError when `path` is neither."""
    path = Path(path)
    if is_sharded_checkpoint(path):
        sharded_to_hf(path, out, dtype=dtype)
        return "sharded -> hf"
    if (path / "config.json").is_file():
        hf_to_sharded(path, out)
        return "hf -> sharded"
    raise FileNotFoundError(
        f"{path}: neither a sharded checkpoint ({TRAINER_STATE} and {DCP_DIR}/) nor an HF-format "
        "one (config.json and safetensors)"
    )
