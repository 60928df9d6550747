"""The GRPO learner sharded over ranks (FSDP2, expert parallelism) against the same learner on one
device: a GRPO step on the same episodes must give the same update and the same metrics.

The spec: the GRPO loss of a mini-batch is a sum over its tokens (or sequences) normalised by
the whole mini-batch's counts, so splitting the rows over ranks and summing the ranks' gradients
is the single-device gradient. Spawned CPU ranks (gloo) each hold a `Learner` on a sharded copy
of one tiny MoE policy; a single process steps an unsharded copy. Tolerances as in
tests/policy/test_parallel.py (float32 rounding of another summation order, amplified by AdamW's
first step for near-zero gradients): weights to 1e-4 absolute, metrics to 1e-4 relative.

Checkpoints: a sharded learner's checkpoint (rank 0 writes the gathered weights in HF format,
every rank its optimizer shards) resumes on one device with the same optimizer moments.
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from policy.checkpoint import checkpoint_tensors, load_pretrained, save_pretrained
from policy.launch import process_group
from policy.mesh import ShardingConfig
from policy.model import ModelArgs, Transformer
from policy.parallelize import SpeedConfig, build_mesh, parallelize
from prover.config import GRPOConfig
from prover.rl.checkpointing import Checkpointer
from prover.rl.episodes import Episode
from prover.rl.learner import Learner

ARGS = ModelArgs(
    vocab_size=97, dim=32, n_layers=3, n_dense_layers=1, max_seq_len=64, n_heads=2, q_lora_rank=16,
    kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, inter_dim=48, moe_inter_dim=16,
    n_routed_experts=8, n_activated_experts=2, n_expert_groups=4, n_limited_groups=2, n_mtp_layers=1,
)
# n_mtp_layers=1: the RL step never runs the MTP layers, so their parameters get no gradient and
# no optimizer state, and a checkpoint must resume without it
LR = 1e-3
WEIGHT_ATOL = 1e-4
METRIC_RTOL = 1e-4
# metrics that are the same function of the episodes on any layout (the rest: bookkeeping)
COMPARED = ("loss", "grad_norm", "entropy", "clip_fraction", "expert_maxvio_mean", "expert_maxvio_max",
            "reward_mean", "trained_tokens")


def _episodes(count: int) -> list[Episode]:
    """`count` episodes in groups of 4 with varied lengths and rewards (engine logprobs made up:
    the ratio starts at 1 either way, the mismatch correction sees them)."""
    g = torch.Generator().manual_seed(count)
    out = []
    for i in range(count):
        prompt = tuple(int(t) for t in torch.randint(3, 97, (3 + i % 3,), generator=g))
        completion = tuple(int(t) for t in torch.randint(3, 97, (4 + (i * 5) % 7,), generator=g))
        out.append(Episode(problem_id=f"p{i // 4}", group=i // 4, prompt_ids=prompt, completion_ids=completion,
                           loss_mask=(True,) * len(completion),
                           rollout_logprobs=tuple(-4.0 - 0.1 * (j % 3) for j in range(len(completion))),
                           reward=float((i * 7) % 3 == 0), outcome="accepted" if (i * 7) % 3 == 0 else "rejected"))
    return out


CASES = [
    # name, sharding, episodes, GRPO options, micro-batch size
    {"name": "fsdp", "dp_shard": 2, "ep": 1, "episodes": 8, "grpo": {"mini_batches": 2}, "micro": 1},
    {"name": "fsdp-ep", "dp_shard": 2, "ep": 2, "episodes": 8, "grpo": {"mini_batches": 1}, "micro": 2},
    # 5 rows over 2 ranks: rank 1's share is padded with a row that has no loss
    {"name": "padded", "dp_shard": 2, "ep": 1, "episodes": 5, "grpo": {"mini_batches": 1, "loss_agg_mode": "seq-mean-token-mean"}, "micro": 1},
]


def _learner(model: Transformer, case: dict[str, Any]) -> Learner:
    config = GRPOConfig(**case["grpo"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    return Learner(model, config, learning_rate=LR, micro_batch_size=case["micro"], max_grad_norm=1.0,
                   max_tokens=16, optimizer=optimizer)


def _rank_main(rank: int, world: int, port: int, start: str, out: str) -> None:
    torch.set_num_threads(1)
    with process_group(rank=rank, world_size=world, master_addr="127.0.0.1", master_port=port, backend="gloo"):
        for case in CASES:
            sharding = ShardingConfig(dp_shard=case["dp_shard"], ep=case["ep"], param_dtype="float32")
            model = load_pretrained(Path(start))
            parallelize(model, SpeedConfig(), build_mesh(sharding, model.args), sharding)
            learner = _learner(model, case)
            metrics = learner.step(_episodes(case["episodes"]))
            weights = learner.export_weights()   # collective; {} off rank 0
            if case["name"] == "fsdp":
                scheduler = torch.optim.lr_scheduler.LambdaLR(learner.optimizer, lambda _: 1.0)
                Checkpointer(Path(out) / "run").save(1, model=model, optimizer=learner.optimizer,
                                                     scheduler=scheduler, cursor={"step": 1})
            if rank == 0:
                torch.save({"metrics": metrics, "weights": {k: v.clone() for k, v in weights.items()}},
                           Path(out) / f"{case['name']}.pt")
            else:
                assert weights == {}, f"rank {rank} returned weights: {sorted(weights)[:3]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("sharded-learner")
    torch.manual_seed(0)
    start = out / "start"
    save_pretrained(Transformer(ARGS), start, dtype=torch.float32)
    mp.spawn(_rank_main, args=(2, _free_port(), str(start), str(out)), nprocs=2, join=True)
    results: dict[str, Any] = {"start": start, "out": out}
    for case in CASES:
        model = load_pretrained(start)
        learner = _learner(model, case)
        metrics = learner.step(_episodes(case["episodes"]))
        results[case["name"]] = {"single": {"metrics": metrics, "weights": dict(checkpoint_tensors(model)),
                                            "optimizer": learner.optimizer},
                                 "sharded": torch.load(out / f"{case['name']}.pt", weights_only=False)}
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", [c["name"] for c in CASES])
def test_sharded_grpo_step_equals_single_device_step(runs: dict[str, Any], name: str) -> None:
    single, sharded = runs[name]["single"], runs[name]["sharded"]
    start = checkpoint_tensors(load_pretrained(runs["start"]))
    assert sorted(sharded["weights"]) == sorted(single["weights"]), "gathered weights have other names"
    moved = max(float((single["weights"][k] - start[k]).abs().max()) for k in start)
    assert moved > 10 * WEIGHT_ATOL, f"the single-device step barely moved the weights ({moved}): nothing compared"
    worst = max((float((sharded["weights"][k] - single["weights"][k]).abs().max()), k) for k in start)
    assert worst[0] <= WEIGHT_ATOL, f"{name}: sharded weights differ from single-device by {worst[0]:.2e} at {worst[1]}"
    for key in COMPARED:
        if key in single["metrics"]:
            assert key in sharded["metrics"], f"{name}: sharded metrics lack {key}"
            assert sharded["metrics"][key] == pytest.approx(single["metrics"][key], rel=METRIC_RTOL, abs=1e-7), \
                f"{name}: {key} sharded {sharded['metrics'][key]} vs single {single['metrics'][key]}"


@pytest.mark.slow
def test_sharded_checkpoint_resumes_on_one_device(runs: dict[str, Any]) -> None:
    """The 2-rank checkpoint holds the gathered weights (HF format) and optimizer moments that a
    single-device learner restores: its AdamW state equals the single-device run's."""
    checkpoints = Checkpointer(runs["out"] / "run")
    folder = checkpoints.latest()
    assert folder is not None and (folder / "trainer" / "optimizer").is_dir(), list((runs["out"] / "run").rglob("*"))[:20]
    model = load_pretrained(folder)
    single = runs["fsdp"]["single"]
    worst = max(float((v - single["weights"][k]).abs().max()) for k, v in checkpoint_tensors(model).items())
    assert worst <= WEIGHT_ATOL, f"checkpoint weights differ from the single-device step by {worst:.2e}"
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    state = checkpoints.restore(folder, optimizer=optimizer, scheduler=scheduler, model=model)
    assert state.step == 1
    restored = {n: optimizer.state[p] for n, p in model.named_parameters()}
    reference = {n: single["optimizer"].state[p] for n, p in
                 zip((n for n, _ in model.named_parameters()), single["optimizer"].param_groups[0]["params"], strict=True)}
    stepped = {name for name, moments in reference.items() if moments}
    assert any(name.startswith("mtp.") for name in set(reference) - stepped), "the MTP layers got optimizer state"
    for name in set(reference) - stepped:   # never stepped: zero moments (or none) after the restore
        assert all(float(restored[name].get(k, torch.zeros(1)).abs().max()) == 0 for k in ("exp_avg", "exp_avg_sq")), name
    for name in stepped:
        moments = reference[name]
        for key in ("exp_avg", "exp_avg_sq"):
            got, want = restored[name][key], moments[key]
            scale = float(want.abs().max()) or 1.0
            assert float((got - want).abs().max()) <= 1e-3 * scale, f"{name}.{key}: restored moments differ"


def test_one_device_optimizer_is_refused_on_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A single-device checkpoint's optimizer.pt cannot be split over ranks: one clear error."""
    model = Transformer(ARGS)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    folder = Checkpointer(tmp_path).save(3, model=model, optimizer=optimizer, scheduler=scheduler, cursor={})
    import policy.distributed_checkpoint as dc

    monkeypatch.setattr(dc, "is_distributed", lambda: True)
    monkeypatch.setattr(dc, "rank", lambda: 0)
    with pytest.raises(ValueError, match="learner.ranks = 1"):
        Checkpointer(tmp_path).restore(folder, optimizer=optimizer, scheduler=scheduler, model=model)


def test_episodes_are_varied() -> None:
    """The fixture itself: several groups, mixed rewards, unequal lengths (else equal shares hide bugs)."""
    episodes = _episodes(8)
    assert len({e.group for e in episodes}) == 2
    assert 0 < sum(e.reward for e in episodes) < len(episodes)
    assert len({len(e.completion_ids) for e in episodes}) > 2
    assert dataclasses.is_dataclass(episodes[0])
