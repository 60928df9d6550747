"""The trainer parts GRPO reuses: schedule, metrics log, checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from prover.config import TrainingConfig
from prover.rl.checkpointing import Checkpointer, load_model
from prover.rl.metrics import MetricsLog, StepProgress, read_metrics
from prover.rl.schedule import lr_factor, make_scheduler


def test_warmup_then_cosine_to_the_floor() -> None:
    f = [lr_factor(s, warmup_steps=4, steps=14, min_lr_ratio=0.1) for s in range(14)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0], f[:4]
    # after warm-up: r + (1 - r)(1 + cos(pi p))/2 with p = (s - 4) / 10
    for s in range(4, 14):
        p = (s - 4) / 10
        assert f[s] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p))), (s, f[s])
    assert lr_factor(3, warmup_steps=0, steps=10, schedule="constant") == 1.0


def test_scheduler_drives_the_optimizer() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=2.0)
    sched = make_scheduler(opt, TrainingConfig(learning_rate=2.0, warmup_steps=2, steps=4, min_lr_ratio=0.0))
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1.0, 2.0, 2.0, 1.0]), seen


def test_metrics_resume_drops_rows_past_the_checkpoint(tmp_path: Path) -> None:
    with MetricsLog(tmp_path) as log:
        for step in range(1, 6):
            log.log(step, {"loss": 1.0 / step})
    with (tmp_path / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 6, "loss"')   # torn by a kill -9
    with MetricsLog(tmp_path, resume_step=3) as log:
        log.log(4, {"loss": 0.9})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 1.0), (2, 0.5), (3, 1.0 / 3), (4, 0.9)], (tmp_path / "metrics.jsonl").read_text()
    assert any((tmp_path / "tb").iterdir()), "TensorBoard events written"
    with MetricsLog(tmp_path, tensorboard=False) as log:   # a new run replaces the file
        log.log(1, {"loss": 2.0})
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]


def test_step_progress_lines(tmp_path: Path) -> None:
    import io

    stream = io.StringIO()
    progress = StepProgress(4, done=2, stream=stream, tty=False, every_s=0.0)
    progress.step(loss=1.25, lr=0.001)
    progress.close()
    assert "progress: 3/4 steps, loss 1.25, lr 0.001" in stream.getvalue(), stream.getvalue()


def test_checkpoints_are_atomic_kept_last_and_restore_state(tmp_path: Path, mini_policy: Path) -> None:
    model = load_model(mini_policy)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = make_scheduler(opt, TrainingConfig(learning_rate=1e-3, warmup_steps=2, steps=10))
    ckpt = Checkpointer(tmp_path, keep_last=2)
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()
    sched.step()
    for step in (1, 2, 3):
        ckpt.save(step, model=model, optimizer=opt, scheduler=sched, cursor={"epoch": 0, "row": step})
    (tmp_path / "checkpoints" / ".step-00000004.tmp").mkdir()   # a save killed midway
    assert [s for s, _ in ckpt.complete()] == [2, 3], ckpt.complete()
    latest = ckpt.latest()
    assert latest is not None and latest.name == "step-00000003"
    assert json.loads((latest / "config.json").read_text())["model_type"] == "deepseek_v3"
    assert not list(latest.glob("*.pt")), "trainer state must not sit beside the weights"
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    ckpt.save(4, model=model, optimizer=opt, scheduler=sched, cursor={"epoch": 1, "row": 0})
    torch.manual_seed(123)
    after_save = torch.rand(3)   # the draw right after saving step 4 ...
    assert torch.equal(expected_draw, after_save)
    torch.rand(5)
    opt2 = torch.optim.AdamW(load_model(ckpt.latest()).parameters(), lr=1e-3)   # type: ignore[arg-type]
    sched2 = make_scheduler(opt2, TrainingConfig(learning_rate=1e-3, warmup_steps=2, steps=10))
    state = ckpt.restore(ckpt.latest(), optimizer=opt2, scheduler=sched2)   # type: ignore[arg-type]
    assert (state.step, state.cursor) == (4, {"epoch": 1, "row": 0}), state
    assert sched2.last_epoch == sched.last_epoch and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    moments = [s["exp_avg"] for s in opt2.state_dict()["state"].values()]
    assert moments and all(torch.equal(a, b["exp_avg"]) for a, b in zip(
        moments, opt.state_dict()["state"].values(), strict=True))
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] != [], "stale tmp folder removed"
    assert not (tmp_path / "checkpoints" / ".step-00000004.tmp").exists()


def test_training_dir_continues_the_same_run_and_refuses_others(tmp_path: Path) -> None:
    """`prover sft`/`prover train`'s folder rules: a fresh folder starts; the same config continues;
    a different one is refused naming the field and both values; a folder that is not a run is
    refused naming what is in it; --force removes the run's own files only."""
    from prover.config import ProverConfig, write_resolved_config
    from prover.rl.checkpointing import prepare_training_dir
    from prover.runs import RunDirError, with_absolute_paths

    out = tmp_path / "run"
    config = with_absolute_paths(ProverConfig(output_dir=out))
    assert prepare_training_dir(out, config) is False and out.is_dir()
    write_resolved_config(config, out)
    (out / "metrics.jsonl").write_text("{}\n")
    assert prepare_training_dir(out, config) is True

    other = config.model_copy(update={"training": config.training.model_copy(update={"steps": 7})})
    with pytest.raises(RunDirError) as refused:
        prepare_training_dir(out, other)
    assert "training.steps" in str(refused.value) and "7" in str(refused.value), str(refused.value)

    (out / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError) as stray:   # --force removes the run's files, then finds a folder that is no run
        prepare_training_dir(out, other, force=True)
    assert "notes.txt" in str(stray.value) and "holds no run" in str(stray.value), str(stray.value)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"], "the run's own files are gone, the user's kept"
    (out / "notes.txt").unlink()
    assert prepare_training_dir(out, other, force=True) is False
    (tmp_path / "file").write_text("")
    with pytest.raises(RunDirError, match="not a folder"):
        prepare_training_dir(tmp_path / "file", config)
