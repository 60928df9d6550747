"""FSDP2, expert parallelism and sharded checkpoints against the single-device step.

The multi-rank tests spawn 2 and 4 CPU processes (gloo) that each run one AdamW step of the
tiny preset (MTP on, sequence-wise balance loss on, the aux-loss-free bias update in the
optimizer's post-step hook) on their share of a 4-sequence batch; the single process runs the
same step on the whole batch. Same loss and same updated weights are expected.

Tolerances: losses to LOSS_RTOL = 1e-5 relative. Gradients (captured inside the optimizer
step, after the reduce-scatter) to GRAD_RTOL = 1e-4 of each tensor's largest entry: float32
rounding of a different summation order. Weights to WEIGHT_ATOL = 1e-4 absolute, 10% of one
AdamW step (lr 1e-3): the first step moves every weight by lr * g / (|g| + eps), which
amplifies rounding noise for the few weights whose gradient is near eps (observed worst:
6e-5). That step is blind to a gradient's scale (a doubled gradient gives the same update),
which is why the gradients are compared too.
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from policy.balancing import register_bias_update_hook
from policy.checkpoint import load_pretrained, save_pretrained
from policy.distributed_checkpoint import (
    hf_to_sharded,
    load_sharded,
    read_trainer_state,
    save_sharded,
    sharded_to_hf,
)
from policy.launch import process_group, train_step
from policy.mesh import ShardingConfig, check_mesh
from policy.model import Transformer
from policy.parallelize import SpeedConfig, build_mesh, parallelize
from policy.presets import PRESETS

ARGS = dataclasses.replace(PRESETS["tiny"], max_seq_len=64, seq_aux_loss_alpha=1e-4)
LR = 1e-3
WEIGHT_ATOL = 1e-4
GRAD_RTOL = 1e-4
LOSS_RTOL = 1e-5
SEQUENCES, SEQ_LEN = 4, 32


def _batch(seed: int) -> torch.Tensor:
    return torch.randint(0, ARGS.vocab_size, (SEQUENCES, SEQ_LEN), generator=torch.Generator().manual_seed(seed))


def _model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ARGS)


def _optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW with the balancing-bias hook; built after sharding (FSDP2 replaces parameters)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    register_bias_update_hook(optimizer, model)
    return optimizer


def _full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return {k: v.clone() for k, v in get_model_state_dict(model, options=options).items()}


def _capture_grads(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Fill the returned dict with every full gradient when the optimizer steps (collective)."""
    from torch.distributed.tensor import DTensor

    grads: dict[str, torch.Tensor] = {}
    # names as in the plain model's state dict (activation checkpointing adds a wrapper level)
    named = [(n.replace("._checkpoint_wrapped_module", ""), p) for n, p in model.named_parameters()]

    def hook(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        for name, p in named:
            if p.grad is not None:
                grad = p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                grads[name] = grad.detach().clone()

    optimizer.register_step_pre_hook(hook)
    return grads


def _rank_main(rank: int, world: int, port: int, out: str, cases: list[dict[str, Any]]) -> None:
    """One spawned rank: every case builds, shards, steps and (rank 0) saves the full state."""
    torch.set_num_threads(1)
    out_dir = Path(out)
    share = slice(rank * SEQUENCES // world, (rank + 1) * SEQUENCES // world)
    with process_group(rank=rank, world_size=world, master_addr="127.0.0.1", master_port=port, backend="gloo"):
        for case in cases:
            sharding = ShardingConfig(dp_shard=case["dp_shard"], ep=case["ep"], param_dtype="float32")
            model = _model(seed=case.get("init_seed", 0))
            mesh = build_mesh(sharding, ARGS)
            parallelize(model, SpeedConfig(activation_checkpointing=case.get("checkpointing", "none")), mesh, sharding)
            optimizer = _optimizer(model)
            if "resume" in case:
                load_sharded(Path(case["resume"]), model, optimizer)
            grads = _capture_grads(model, optimizer)
            report = train_step(model, optimizer, _batch(case["batch_seed"])[share])
            state = _full_state(model)
            if rank == 0:
                torch.save({"report": report, "state": state, "grads": grads}, out_dir / f"{case['name']}.pt")
            if "save" in case:
                save_sharded(Path(case["save"]), model, optimizer, step=1, mesh_info={"dp_shard": case["dp_shard"], "ep": case["ep"]})
                report = train_step(model, optimizer, _batch(2)[share])
                state = _full_state(model)
                if rank == 0:
                    torch.save({"report": report, "state": state, "grads": grads}, out_dir / f"{case['name']}-continued.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(world: int, out: Path, cases: list[dict[str, Any]]) -> None:
    mp.spawn(_rank_main, args=(world, _free_port(), str(out), cases), nprocs=world, join=True)


def _single_step(model: Transformer, batch_seed: int, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    optimizer = optimizer or _optimizer(model)
    grads = _capture_grads(model, optimizer)
    report = train_step(model, optimizer, _batch(batch_seed))
    return {"report": report, "state": {k: v.clone() for k, v in model.state_dict().items()}, "grads": grads}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The single-process reference and every multi-rank run (2 spawns: 2 and 4 ranks)."""
    out = tmp_path_factory.mktemp("parallel")
    checkpoint = out / "sharded-2ranks"
    torch.manual_seed(0)
    initial = {k: v.clone() for k, v in _model().state_dict().items()}
    reference_model = _model()
    reference_optimizer = _optimizer(reference_model)
    reference = _single_step(reference_model, batch_seed=1, optimizer=reference_optimizer)
    _spawn(2, out, [
        {"name": "fsdp2", "dp_shard": 2, "ep": 1, "batch_seed": 1},
        {"name": "ep2", "dp_shard": 1, "ep": 2, "batch_seed": 1},
        {"name": "fsdp2-ep2", "dp_shard": 2, "ep": 2, "batch_seed": 1, "save": str(checkpoint)},
        # activation checkpointing on top: the recompute repeats the all-to-alls in backward
        {"name": "fsdp2-ep2-checkpointed", "dp_shard": 2, "ep": 2, "batch_seed": 1, "checkpointing": "full"},
    ])
    _spawn(4, out, [
        {"name": "fsdp4-ep2", "dp_shard": 4, "ep": 2, "batch_seed": 1},
        # resumed on another mesh (HSDP 2 x 2, 4-way EP) from a different random init
        {"name": "resumed-on-4", "dp_shard": 2, "ep": 4, "batch_seed": 2, "init_seed": 99, "resume": str(checkpoint)},
    ])
    return {
        "out": out,
        "checkpoint": checkpoint,
        "initial": initial,
        "reference": reference,
        **{p.stem: torch.load(p) for p in out.glob("*.pt")},
    }


def _assert_same(got: dict[str, Any], want: dict[str, Any], label: str) -> None:
    g_loss, w_loss = got["report"]["loss"], want["report"]["loss"]
    assert abs(g_loss - w_loss) <= LOSS_RTOL * abs(w_loss), f"{label}: loss {g_loss} vs single-process {w_loss}"
    assert set(got["state"]) == set(want["state"]), f"{label}: keys differ: {set(got['state']) ^ set(want['state'])}"
    assert set(got["grads"]) == set(want["grads"]), f"{label}: gradients of {set(got['grads']) ^ set(want['grads'])}"
    grad_errors = {
        k: ((got["grads"][k] - g).abs().max() / g.abs().max().clamp(min=1e-12)).item()
        for k, g in want["grads"].items()
    }
    worst = max(grad_errors, key=lambda k: grad_errors[k])
    assert grad_errors[worst] <= GRAD_RTOL, f"{label}: gradient of {worst} off by {grad_errors[worst]:.3g} of its max"
    diffs = {k: (got["state"][k].float() - v.float()).abs().max().item() for k, v in want["state"].items()}
    worst = max(diffs, key=lambda k: diffs[k])
    assert diffs[worst] <= WEIGHT_ATOL, f"{label}: {worst} differs by {diffs[worst]:.3g} > {WEIGHT_ATOL}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fsdp2", "ep2", "fsdp2-ep2", "fsdp2-ep2-checkpointed", "fsdp4-ep2"])
def test_sharded_step_equals_single_process_step(runs: dict[str, Any], name: str) -> None:
    _assert_same(runs[name], runs["reference"], name)


@pytest.mark.slow
def test_the_step_moved_weights_and_expert_biases(runs: dict[str, Any]) -> None:
    """The comparison is not vacuous: AdamW moved every matrix by about lr, the bias update ran
    (every expert's bias is +-gamma after one step), and the MTP loss was part of it."""
    initial, after = runs["initial"], runs["fsdp2-ep2"]["state"]
    moved = min((after[k] - initial[k]).abs().max().item() for k in initial if not k.endswith("e_score_correction_bias"))
    assert moved > 0.5 * LR, f"some tensor moved only {moved:.3g} in one AdamW step of lr {LR}"
    gamma = ARGS.bias_update_speed
    for key in (k for k in after if k.endswith("e_score_correction_bias")):
        bias = after[key]  # b = gamma * sign(mean load - load): each entry 0 or +-gamma
        steps = torch.isclose(bias.abs(), torch.tensor(gamma)) | (bias == 0)
        assert steps.all() and bias.abs().max().item() == pytest.approx(gamma), f"{key}: {bias}"
    assert runs["fsdp2-ep2"]["report"].get("mtp", 0) > 0, f"no MTP loss: {runs['fsdp2-ep2']['report']}"


@pytest.mark.slow
def test_checkpoint_saved_on_2_ranks_resumes_on_1_and_on_4(runs: dict[str, Any]) -> None:
    """Save after step 1 on 2 ranks (FSDP2 + EP2); step 2 from it on 1 process (no process
    group) and on 4 ranks (HSDP + EP4) equals step 2 of the uninterrupted 2-rank run."""
    continued = runs["fsdp2-ep2-continued"]
    assert read_trainer_state(runs["checkpoint"])["step"] == 1
    model = _model(seed=99)
    optimizer = _optimizer(model)
    trainer = load_sharded(runs["checkpoint"], model, optimizer)
    assert trainer == {"step": 1, "world_size": 2, "dp_shard": 2, "ep": 2}, trainer
    _assert_same(_single_step(model, batch_seed=2, optimizer=optimizer), continued, "resumed on 1")
    _assert_same(runs["resumed-on-4"], continued, "resumed on 4")


@pytest.mark.slow
def test_sharded_checkpoint_converts_to_hf_with_the_trained_weights(runs: dict[str, Any], tmp_path: Path) -> None:
    sharded_to_hf(runs["checkpoint"], tmp_path / "hf", dtype=None)
    loaded = load_pretrained(tmp_path / "hf").state_dict()
    want = runs["fsdp2-ep2"]["state"]
    assert set(loaded) == set(want)
    differ = [k for k in want if not torch.equal(loaded[k], want[k])]
    assert not differ, f"HF conversion changed {differ[:3]}"


def test_hf_and_sharded_formats_convert_both_ways(tmp_path: Path) -> None:
    """HF -> sharded -> HF keeps every tensor and the token ids; both load in one process."""
    model = _model(seed=3)
    save_pretrained(model, tmp_path / "hf", extra_config={"bos_token_id": 1, "eos_token_id": 2})
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    hf_to_sharded(tmp_path / "hf", tmp_path / "sharded")
    assert (tmp_path / "sharded" / "tokenizer.json").is_file()
    sharded_to_hf(tmp_path / "sharded", tmp_path / "back", dtype=None)
    back = load_pretrained(tmp_path / "back")
    differ = [k for k, v in model.state_dict().items() if not torch.equal(v, back.state_dict()[k])]
    assert not differ, f"round trip changed {differ[:3]}"
    config = (tmp_path / "back" / "config.json").read_text()
    assert '"eos_token_id": 2' in config and (tmp_path / "back" / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    ("dp_shard", "ep", "world", "message"),
    [
        (3, 1, 4, "learner.dp_shard = 3 does not divide the world size 4"),
        (-1, 3, 6, "n_routed_experts = 8 is not divisible by learner.ep = 3"),
        (2, 4, 2, "learner.ep = 4 does not divide the world size 2"),
        (0, 1, 2, "dp_shard = 0: use -1 (all ranks) or a rank count >= 1"),
    ],
)
def test_mesh_errors_quote_the_numbers(dp_shard: int, ep: int, world: int, message: str) -> None:
    with pytest.raises(ValueError) as info:
        check_mesh(ShardingConfig(dp_shard=dp_shard, ep=ep), world, ARGS)
    assert message in str(info.value), str(info.value)


def test_mesh_resolves_all_ranks() -> None:
    assert check_mesh(ShardingConfig(), 8, ARGS) == (8, 1)
    assert check_mesh(ShardingConfig(dp_shard=2, ep=4), 8, ARGS) == (2, 4)
