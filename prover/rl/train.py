"""GRPO training (`prover train`): DeepSeek-R1's recipe on Lean, over the Ray fleet.

Each step takes `rollout.prompts_per_step` problems, samples `policy.sampling.n` episodes per
problem on the rollout actors (vLLM), has Lean judge them on the verifier actors (the reward:
`prover.rl.rewards`, accepted = 1, never anything but the acceptance rules), takes one learner
step (`prover.rl.learner.Learner`: the objective of `[grpo]`) and pushes the new weights into
the running engines (`prover.fleet`). Sync or async (one-step-off) as `fleet.mode` says.

The run folder is SFT's (prover.rl.checkpointing, prover.rl.metrics): `checkpoints/step-N/`
(Hugging Face folders that vLLM and `prover bench` load, plus optimizer, schedule, RNG and step),
`metrics.jsonl` (one row per step: reward, pass rate, lengths, loss terms, clip and IS-weight
statistics, expert load, tokens/s, the time split), `tb/` (TensorBoard), `summary.json`,
`config.resolved.toml`. Running the same command on the same folder continues from the newest
complete checkpoint; metrics rows past it are dropped, so after a kill -9 the step counter and
the metrics go on as if the run had never stopped, losing only the steps after that checkpoint.

Data order: step s trains on positions s*P .. s*P+P-1 of an endless sequence of permutations of
the problem set (epoch e drawn from `training.seed + e`), so a step's problems depend only on
the step number: resuming needs no data cursor beyond the step.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from prover.config import ProverConfig, check_grpo_run
from prover.errors import UserError
from prover.problems import Problem, load_problems
from prover.rl.checkpointing import Checkpointer, prepare_training_dir
from prover.rl.episodes import Episode
from prover.rl.metrics import METRICS_NAME, MetricsLog, StepProgress, read_metrics
from prover.rl.sharding import check_layout, sharded
from prover.runs import (
    SUMMARY_NAME,
    Interrupted,
    interrupts_held,
    sigterm_as_interrupt,
    with_absolute_paths,
)

logger = logging.getLogger(__name__)

STANDIN_LABEL = "stand-in REPL (a test double, not Lean)"
PROCESS_RECORD = ".fleet-processes.json"   # what the fleet started: reaped if a killed run left it


class TrainInterrupted(Interrupted):
    """Ctrl-C or SIGTERM stopped training; `str()` is the line to print."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        self.step, self.checkpoint = step, checkpoint
        where = f"checkpoint {checkpoint}" if checkpoint is not None else "no checkpoint yet"
        super().__init__(f"interrupted after step {step}; {where}; the same command continues")


REWARD_KEY = "sampled_reward_mean"   # with dynamic sampling, the step's reward before groups are dropped


def step_reward(row: Mapping[str, Any]) -> float:
    """A metrics row's estimate of the policy's mean reward: over everything the step sampled for
    its own problems (`sampled_reward_mean`, dynamic sampling), else over the trained episodes."""
    return float(row[REWARD_KEY] if REWARD_KEY in row else row["reward_mean"])


# -- data --------------------------------------------------------------------------------------------

def step_problems(problems: Sequence[Problem], step: int, per_step: int, seed: int) -> list[Problem]:
    """The problems of `step` (0-based): positions step*P .. step*P+P-1 of the concatenated
    per-epoch permutations (epoch e shuffled with seed + e)."""
    n = len(problems)
    out, position = [], step * per_step
    orders: dict[int, list[int]] = {}
    for p in range(position, position + per_step):
        epoch = p // n
        if epoch not in orders:
            order = list(range(n))
            random.Random(seed + epoch).shuffle(order)
            orders[epoch] = order
        out.append(problems[orders[epoch][p % n]])
    return out


def preflight(config: ProverConfig) -> list[Problem]:
    """The checks a GRPO run needs before anything starts (Ray, engines, REPLs): the config's
    cross-field rules, a policy to start from, and the problem set (loaded and returned)."""
    check_grpo_run(config)
    if config.policy.checkpoint is None:
        raise UserError("no policy to train: pass --model DIR (a Hugging Face folder or hub id; "
                        "examples/sft-cpu.toml writes a warm start)")
    return training_problems(config)


def check_learner_layout(config: ProverConfig, checkpoint: Path) -> None:
    """`[learner]`'s layout against learner.ranks and the model (prover.rl.sharding.check_layout)."""
    check_layout(config, checkpoint, config.learner.ranks, f"learner.ranks = {config.learner.ranks}")


def training_problems(config: ProverConfig) -> list[Problem]:
    if config.rollout.problems is None:
        raise UserError("no problems to train on: set rollout.problems (a suite, a .jsonl/.lean path or "
                        "hf:owner/name) or pass --problems")
    problems = load_problems(config.rollout.problems, split=config.rollout.split)
    if not problems:
        raise UserError(f"rollout.problems = {config.rollout.problems!r} (split {config.rollout.split!r}) is empty")
    return problems


# -- the learner inside its actor -----------------------------------------------------------------

class GRPOLearner:
    """`prover.fleet.actors.Learner` for a run folder: our `Learner` (the objective), AdamW with
    `[training]`'s schedule (one scheduler step per learner step), and the run's checkpoints.
    Built inside the learner actor from `start` (the model to begin from, or the checkpoint to
    continue: then optimizer, schedule, RNG and step come back too)."""

    def __init__(self, config: ProverConfig, out: Path, start: Path, *, resume: bool) -> None:
        import torch

        from policy.tokenizer import load_tokenizer
        from prover.rl.checkpointing import load_model
        from prover.rl.learner import Learner
        from prover.rl.schedule import make_scheduler
        from prover.rl.sft import resolve_device

        train = config.training
        self.config, self.out = config, out
        device = resolve_device(train.device)
        torch.manual_seed(train.seed)
        self.model = sharded(load_model(start, device), config)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=train.learning_rate, betas=train.adam_betas,
                                           weight_decay=train.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, train)
        reference = None
        if config.grpo.kl_coef > 0:   # the reference is the model the run began from
            initial = Path(str(config.policy.checkpoint))
            reference = sharded(load_model(initial, device), config)
        self.learner = Learner(self.model, config.grpo, learning_rate=train.learning_rate,
                               micro_batch_size=train.micro_batch_size, max_grad_norm=train.max_grad_norm,
                               max_tokens=config.policy.sampling.max_tokens, reference=reference,
                               optimizer=self.optimizer)
        self.tokenizer = load_tokenizer(config.policy.tokenizer or str(start))
        self.checkpoints = Checkpointer(out, keep_last=train.keep_last)
        self.version = 0
        if resume:
            state = self.checkpoints.restore(start, optimizer=self.optimizer, scheduler=self.scheduler,
                                             map_location=device, model=self.model)
            self.version = state.step

    def step(self, episodes: Sequence[Episode]) -> Mapping[str, float]:
        if not episodes:   # every episode excluded or stale: nothing to learn from, the step still counts
            self.scheduler.step()
            self.version += 1
            return {"episodes_trained": 0.0}
        metrics = dict(self.learner.step(episodes))
        self.scheduler.step()
        self.version += 1
        return {**metrics, "episodes_trained": float(len(episodes))}

    def weights(self) -> Mapping[str, Any]:
        return self.learner.export_weights()

    def save(self, path: Path) -> None:
        self.checkpoints.save(self.version, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                              cursor={"step": self.version}, config=self.config, tokenizer=self.tokenizer)

    def load(self, path: Path) -> None:
        state = self.checkpoints.restore(path, optimizer=self.optimizer, scheduler=self.scheduler, model=self.model)
        self.version = state.step


# -- the run ---------------------------------------------------------------------------------------

def run_train(config: ProverConfig, out: Path, *, force: bool = False, progress_stream: IO[str] | None = None,
              tty: bool | None = None) -> dict[str, Any]:
    """GRPO from `config.policy.checkpoint` on `config.rollout.problems` into run folder `out`
    (continuing an earlier run there); the summary (also out/summary.json). Raises
    TrainInterrupted on Ctrl-C / SIGTERM."""
    import ray

    from prover.checkpoints import resolve_model
    from prover.config import write_resolved_config
    from prover.fleet import Fleet

    problems = preflight(config)
    source = resolve_model(str(config.policy.checkpoint))
    check_learner_layout(config, Path(source))
    config = with_absolute_paths(config.model_copy(update={
        "output_dir": out, "policy": config.policy.model_copy(update={"checkpoint": source})}))
    resumed = prepare_training_dir(out, config, force=force)
    checkpoints = Checkpointer(out, keep_last=config.training.keep_last)
    latest = checkpoints.latest() if resumed else None
    write_resolved_config(config, out)
    start = checkpoints.complete()[-1][0] if latest is not None else 0
    steps, per_step = config.training.steps, config.rollout.prompts_per_step
    standin = config.verifier.backend == "standin"
    if standin:
        logger.warning("rewards come from the %s; no Lean verdict is involved", STANDIN_LABEL)
    # Engines start from the weights the learner starts from.
    engines = config.model_copy(update={"policy": config.policy.model_copy(update={"checkpoint": latest or source})})

    def make_learner() -> GRPOLearner:
        return GRPOLearner(config, out, latest or Path(str(source)), resume=latest is not None)

    started = time.perf_counter()
    progress = StepProgress(steps, done=start, stream=progress_stream or sys.stderr, tty=tty)
    metrics = MetricsLog(out, resume_step=start if latest is not None else None)
    logged, saved = start, start if latest is not None else None
    batches: Iterator[list[Problem]] = (step_problems(problems, s, per_step, config.training.seed)
                                        for s in range(start, steps))
    try:
        with sigterm_as_interrupt(), Fleet(engines, learner=make_learner,
                                                    process_record=out / PROCESS_RECORD) as fleet:
            learner = fleet.learner
            assert learner is not None
            if latest is not None:   # the engines' weights are the checkpoint's: say which version they are
                fleet.push_weights(learner.weights(), start)
            try:
                def refill(version: int, round_: int) -> list[Problem]:   # dynamic sampling's extra draws
                    return step_problems(problems, version, per_step, config.training.seed + 1_000_003 * round_)

                for report in fleet.train(batches, refill):
                    step = report.version
                    t = report.times
                    row = {**report.metrics, "episodes": report.episodes, "stale_dropped": report.dropped_stale,
                           **{f"time_{k}": v for k, v in t.to_json().items()},
                           "retried_shards": fleet.retried_shards}
                    if "trained_tokens" in row and t.wall_s > 0:
                        row["tokens_per_s"] = row["trained_tokens"] / t.wall_s
                    with interrupts_held():   # the row and the counter that says it is written go together
                        metrics.log(step, row)
                        logged = step
                    progress.step(reward=float(row.get(REWARD_KEY, row.get("reward_mean", float("nan")))))
                    if step % config.training.save_every == 0 or step == steps:
                        ray.get(learner.save(str(out)))
                        saved = step
            except KeyboardInterrupt:
                checkpoint = checkpoints.latest()
                # Save only when the learner is at the last step whose metrics are written (an
                # interrupted ray.get leaves a step running; its row would be missing).
                if saved != logged and ray.get(learner.current_version()) == logged:
                    ray.get(learner.save(str(out)))
                    checkpoint = checkpoints.latest()
                raise TrainInterrupted(logged, checkpoint) from None
    finally:
        progress.close()
        metrics.close()
    history = [step_reward(r) for r in read_metrics(out / METRICS_NAME) if "reward_mean" in r or REWARD_KEY in r]
    fifth = max(1, len(history) // 5)   # over the whole run, the steps before a resume included
    first_rewards, last_rewards = history[:fifth], history[-fifth:]
    summary = {
        "command": "train", "complete": True, "steps": steps, "resumed_from_step": start if latest else None,
        "checkpoint": str(checkpoints.latest()), "problems": len(problems), "prompts_per_step": per_step,
        "group_size": config.policy.sampling.n, "mode": config.fleet.mode,
        "reward_first_fifth": sum(first_rewards) / len(first_rewards) if first_rewards else None,
        "reward_last_fifth": sum(last_rewards) / len(last_rewards) if last_rewards else None,
        "judged_by": STANDIN_LABEL if standin else f"Lean ({config.verifier.backend} backend)",
        "seconds": round(time.perf_counter() - started, 2), "output_dir": str(out)}
    tmp = out / f".{SUMMARY_NAME}.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / SUMMARY_NAME)
    return summary
