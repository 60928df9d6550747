"""`prover sft` under torchrun: two CPU ranks (gloo) shard our policy (FSDP2 + expert
parallelism) and split each step's micro-batches, and the run is the one-device run.

The spec: a step's loss is the mean over all its completion tokens, so splitting its
`gradient_accumulation` micro-batches over ranks and summing the ranks' gradients is the
one-device gradient; the data order is the one cursor every rank follows. Tolerances as in
tests/rl/test_learner_sharded.py (float32 rounding of another summation order, amplified by
AdamW for near-zero gradients): weights to 1e-4 absolute, losses to 1e-4 relative.

A checkpoint the ranks wrote (gathered weights, sharded optimizer) continues on one device to
the same weights; a mistake found before the work is one line from rank 0, not one per rank.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
import torch

from prover.config import ProverConfig
from prover.rl.checkpointing import load_model
from prover.rl.metrics import read_metrics
from prover.rl.sft import run_sft
from prover.runs import stamped
from tests.conftest import REPO_ROOT
from tests.rl.conftest import shortest_proofs

WEIGHT_ATOL = 1e-4
LOSS_RTOL = 1e-4
STEPS = 4


def _config(policy: Path, corpus: Path, **training: object) -> ProverConfig:
    return ProverConfig.model_validate({
        "policy": {"checkpoint": str(policy)},
        "sft": {"corpus": str(corpus), "eval_fraction": 0.25, "max_seq_len": 1024, "mtp": True},
        "training": {"learning_rate": 1e-3, "warmup_steps": 1, "micro_batch_size": 1, "gradient_accumulation": 2,
                     "steps": STEPS, "save_every": 2, "eval_every": 2, "keep_last": 3, "device": "cpu"} | training,
        "learner": {"dp_shard": 2, "ep": 2, "param_dtype": "float32"}})


def _torchrun(config: ProverConfig, folder: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    config_file = folder / "sft.toml"
    config_file.write_text(tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "prover", "sft", "--config", str(config_file), "--out", str(out), *extra]
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.detach().float() for k, v in load_model(folder).state_dict().items()}


def _assert_same_weights(got: Path, want: Path) -> None:
    a, b = _weights(got), _weights(want)
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
    worst = max(((k, float((a[k] - b[k]).abs().max())) for k in a), key=lambda kv: kv[1])
    assert worst[1] <= WEIGHT_ATOL, f"{got} vs {want}: largest difference {worst[1]:.2e} in {worst[0]}"


def _losses(run: Path, name: str) -> dict[int, float]:
    return {r["step"]: r[name] for r in read_metrics(run / "metrics.jsonl") if name in r}


@pytest.mark.slow
def test_two_ranks_train_as_one_device_and_their_checkpoint_continues_on_one(mini_policy: Path,
                                                                              tmp_path: Path) -> None:
    corpus = shortest_proofs(5, tmp_path)   # 4 train + 1 held out
    config = _config(mini_policy, corpus)

    ranks = _torchrun(config, tmp_path, tmp_path / "ranks", "--json")
    assert ranks.returncode == 0, ranks.stderr[-4000:]
    summary = json.loads(ranks.stdout)   # rank 0's summary is the only thing on stdout
    assert summary["ranks"] == 2 and summary["steps"] == STEPS, summary

    single = run_sft(config, tmp_path / "single")
    assert single is not None and single["ranks"] == 1

    for name in ("loss", "mtp_loss", "eval_loss", "grad_norm"):
        got, want = _losses(tmp_path / "ranks", name), _losses(tmp_path / "single", name)
        assert got.keys() == want.keys() and got, (name, got, want)
        for step in want:
            assert got[step] == pytest.approx(want[step], rel=LOSS_RTOL), (name, step, got, want)
    assert summary["tokens_seen"] == single["tokens_seen"], (summary, single)
    final = f"checkpoints/step-{STEPS:08d}"
    _assert_same_weights(tmp_path / "ranks" / final, tmp_path / "single" / final)

    # The ranks' step-2 checkpoint continues on one device to the same step-4 weights.
    cont = tmp_path / "continued"
    shutil.copytree(tmp_path / "ranks", cont)
    shutil.rmtree(cont / final)
    assert (cont / "checkpoints/step-00000002/trainer/optimizer").is_dir(), "the ranks wrote no sharded optimizer"
    resumed = run_sft(stamped(config, "sft"), cont)   # as `prover sft` without torchrun
    assert resumed is not None and resumed["resumed_from"].endswith("step-00000002"), resumed
    _assert_same_weights(cont / final, tmp_path / "single" / final)
    assert _losses(cont, "loss") == pytest.approx(_losses(tmp_path / "single", "loss"), rel=LOSS_RTOL)


@pytest.mark.slow
def test_a_mistake_under_torchrun_is_one_line_from_rank_0(mini_policy: Path, tmp_path: Path) -> None:
    """gradient_accumulation = 3 cannot split over 2 ranks: refused before any work, by rank 0
    alone (rank 1 ends with the same exit code and says nothing), and no checkpoint is written."""
    config = _config(mini_policy, shortest_proofs(5, tmp_path), gradient_accumulation=3)
    run = _torchrun(config, tmp_path, tmp_path / "run")
    assert run.returncode != 0 and run.stdout == "", (run.returncode, run.stdout)
    said = [line for line in run.stderr.splitlines() if "gradient_accumulation = 3" in line]
    assert len(said) == 1, run.stderr[-4000:]
    assert "do not split over 2 ranks" in said[0], said
    assert "exitcode  : 2" in run.stderr or "exitcode: 2" in run.stderr.replace(" ", ""), run.stderr[-4000:]
    assert not (tmp_path / "run" / "checkpoints").exists()
