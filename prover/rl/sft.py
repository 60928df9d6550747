"""Supervised fine-tuning (`prover sft`): our policy, or any Hugging Face causal LM, on a corpus.

The loop is plain (nanoGPT's shape): each optimizer step takes `gradient_accumulation`
micro-batches of `micro_batch_size` rows, backpropagates the mean cross-entropy over the
step's completion tokens (the prompt is never a target: prover.rl.packing), clips the global
gradient norm, steps AdamW and the warm-up + cosine schedule (prover.rl.schedule), and for our
policy adds the MTP loss and lets the aux-loss-free balancing bias move after each step
(policy.balancing, an optimizer post-step hook). Every `eval_every` steps the mean loss on a
held-out split is logged; every `save_every` steps (and at the end, and on Ctrl-C / SIGTERM) an
atomic checkpoint is written (prover.rl.checkpointing), which vLLM and `prover bench` load.

Running the same command on the same folder continues from the newest complete checkpoint:
weights, optimizer moments, schedule, RNG and the data cursor are restored, metrics.jsonl rows
past that checkpoint are dropped (prover.rl.metrics), so after a kill -9 the run goes on as if
it had never stopped, losing only the steps after its last checkpoint.

Data order: epoch e trains on the training examples in a permutation drawn from
`training.seed + e`, packed into rows in that order (or one per row); the cursor is (epoch,
row). The held-out split is a seeded draw of `sft.eval_fraction` of the examples.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from policy.model import IGNORE_INDEX, Transformer
from prover.config import ConfigError, ProverConfig
from prover.errors import UserError
from prover.rl.checkpointing import Checkpointer, load_model, prepare_training_dir
from prover.rl.corpus import load_corpus
from prover.rl.metrics import MetricsLog, StepProgress
from prover.rl.packing import (
    Batch,
    Row,
    TokenizedExample,
    collate,
    pack,
    tokenize_example,
    unpacked,
)
from prover.rl.schedule import make_scheduler
from prover.rl.sharding import all_summed, check_layout, rank0_first, sharded
from prover.runs import (
    SUMMARY_NAME,
    Interrupted,
    interrupts_held,
    sigterm_as_interrupt,
    with_absolute_paths,
)

logger = logging.getLogger(__name__)

class SFTInterrupted(Interrupted):
    """Ctrl-C or SIGTERM stopped training; on one device a checkpoint of the last finished step
    was written, on several ranks the newest periodic one stands."""

    def __init__(self, step: int, checkpoint: Path | None, *, saved: bool = True) -> None:
        self.step, self.checkpoint = step, checkpoint
        if saved:
            super().__init__(f"interrupted after step {step}; checkpoint {checkpoint} (run the same command to "
                             "continue)")
        else:   # several ranks: no save on an interrupt
            newest = f"the newest checkpoint is {checkpoint}" if checkpoint else "no checkpoint yet"
            super().__init__(f"interrupted after step {step}; {newest} (run the same command to continue from it)")


# -- data ------------------------------------------------------------------------------------------

@dataclass
class SFTData:
    """Tokenized examples: `train` and `held_out`, and what was left out (with reasons)."""

    train: list[TokenizedExample]
    held_out: list[TokenizedExample]
    skipped: list[str] = field(default_factory=list)
    too_long: int = 0


def split_held_out(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, held out): a seeded draw of round(fraction * n) held-out examples (at least
    one when fraction > 0 and n > 1), each list in corpus order."""
    n_eval = 0 if fraction <= 0 or n < 2 else min(n - 1, max(1, round(fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = sorted(order[:n_eval])
    chosen = set(held)
    return [i for i in range(n) if i not in chosen], held


def prepare_data(config: ProverConfig, tokenizer: Any) -> SFTData:
    """The corpus of `config.sft`, as token sequences, split, too-long examples dropped."""
    sft = config.sft
    if sft.corpus is None:
        raise UserError("sft.corpus: no corpus given (pass --corpus FILE or set [sft] corpus in the config)")
    examples, skipped = load_corpus(Path(sft.corpus), sft.format, problems=sft.problems,
                                    template=config.rollout.prompt_template, tactic_template=sft.tactic_template,
                                    tokenizer=tokenizer, limit=sft.limit)
    tokenized = [tokenize_example(tokenizer, e.prompt, e.completion) for e in examples]
    fits = [i for i, t in enumerate(tokenized) if len(t.tokens) <= sft.max_seq_len]
    if not fits:
        longest = min(len(t.tokens) for t in tokenized)
        raise UserError(f"sft.max_seq_len = {sft.max_seq_len}: every example is longer (the shortest has "
                        f"{longest} tokens)")
    train_idx, held_idx = split_held_out(len(fits), sft.eval_fraction, config.training.seed)
    return SFTData(train=[tokenized[fits[i]] for i in train_idx], held_out=[tokenized[fits[i]] for i in held_idx],
                   skipped=skipped, too_long=len(tokenized) - len(fits))


def epoch_rows(examples: Sequence[TokenizedExample], epoch: int, seed: int, max_len: int, packed: bool) -> list[Row]:
    """The rows of one epoch: the examples in the permutation of `seed + epoch`, packed or not."""
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    shuffled = [examples[i] for i in order]
    return pack(shuffled, max_len) if packed else unpacked(shuffled)


class BatchStream:
    """Micro-batches over epochs from a cursor {epoch, row} (the next row to train on)."""

    def __init__(self, examples: Sequence[TokenizedExample], *, micro_batch_size: int, seed: int, max_len: int,
                 packed: bool, pad_id: int, cursor: dict[str, Any] | None = None) -> None:
        self.examples, self.micro_batch_size = examples, micro_batch_size
        self.seed, self.max_len, self.packed, self.pad_id = seed, max_len, packed, pad_id
        self.epoch = int((cursor or {}).get("epoch", 0))
        self.row = int((cursor or {}).get("row", 0))
        self._rows = epoch_rows(examples, self.epoch, seed, max_len, packed)

    @property
    def cursor(self) -> dict[str, int]:
        return {"epoch": self.epoch, "row": self.row}

    def next_batch(self) -> Batch:
        if self.row >= len(self._rows):
            self.epoch, self.row = self.epoch + 1, 0
            self._rows = epoch_rows(self.examples, self.epoch, self.seed, self.max_len, self.packed)
        rows = self._rows[self.row:self.row + self.micro_batch_size]
        self.row += len(rows)
        return collate(rows, self.pad_id)


# -- loss ------------------------------------------------------------------------------------------

@dataclass
class MicroLoss:
    """A micro-batch's losses: `loss` to backpropagate (mean per trained token, with MTP and
    balance terms for our policy), `main_sum` the summed next-token cross-entropy, `mtp` the
    weighted MTP term (or None), `tokens` the trained tokens."""

    loss: Tensor
    main_sum: float
    mtp: float | None
    tokens: int


def micro_batch_loss(model: nn.Module, batch: Batch, *, packed: bool, mtp: bool) -> MicroLoss:
    """Loss of one micro-batch. Our policy: its own `loss` (document-aware with `packed`); any
    other causal LM: cross-entropy of its logits (padding masked by the attention mask)."""
    tokens = batch.trained_tokens
    if isinstance(model, Transformer):
        out = model.loss(batch.tokens, targets=batch.targets, mtp=mtp, doc_ids=batch.doc_ids if packed else None)
        return MicroLoss(out.loss, float(out.main.detach()) * tokens,
                         None if out.mtp is None else float(out.mtp.detach()), tokens)
    logits = model(input_ids=batch.tokens, attention_mask=batch.attention_mask.long()).logits
    total = F.cross_entropy(logits.flatten(0, 1).float(), batch.targets.flatten(), ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return MicroLoss(total / max(tokens, 1), float(total.detach()), None, tokens)


@torch.no_grad()
def evaluate(model: nn.Module, examples: Sequence[TokenizedExample], *, micro_batch_size: int, max_len: int,
             packed: bool, pad_id: int, device: torch.device) -> float:
    """Mean next-token cross-entropy (nats per completion token) over `examples`, in eval mode."""
    was_training = model.training
    model.eval()
    rows = pack(examples, max_len) if packed else unpacked(examples)
    total, count = 0.0, 0
    try:
        for start in range(0, len(rows), micro_batch_size):
            batch = collate(rows[start:start + micro_batch_size], pad_id).to(device)
            with _autocast(device):
                out = micro_batch_loss(model, batch, packed=packed, mtp=False)
            total, count = total + out.main_sum, count + out.tokens
    finally:
        model.train(was_training)
    return total / max(count, 1)


def _autocast(device: torch.device) -> Any:
    """bf16 autocast on CUDA (float32 master weights); nothing on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"training.device = {name!r}, but torch sees no CUDA device")
    return device


# -- the loop --------------------------------------------------------------------------------------

def torchrun_world() -> int:
    """The world size torchrun gave this process; 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def run_sft(config: ProverConfig, out: Path, *, force: bool = False, progress_stream: IO[str] | None = None,
            tty: bool | None = None) -> dict[str, Any] | None:
    """Fine-tune `config.policy.checkpoint` on `config.sft` into run folder `out` (continuing an
    earlier run there), and return the summary (also written to out/summary.json).
    Raises SFTInterrupted on Ctrl-C / SIGTERM, after checkpointing the last finished step.

    Under torchrun (WORLD_SIZE > 1) every rank runs this: the ranks join one process group
    (policy.launch), shard our policy as `[learner]` says (FSDP2, expert parallelism), and split
    each step's `gradient_accumulation` micro-batches between them, so a step is the same step
    as on one device. Rank 0 alone writes the run folder's files and returns the summary; the
    others return None. An interrupt there keeps the newest periodic checkpoint (a save needs
    every rank, and an interrupt reaches them at different points)."""
    if torchrun_world() > 1:
        from policy.launch import process_group

        with process_group() as device:
            return _run_sft(config, out, force=force, progress_stream=progress_stream, tty=tty, device=device)
    return _run_sft(config, out, force=force, progress_stream=progress_stream, tty=tty, device=None)


def _run_sft(config: ProverConfig, out: Path, *, force: bool, progress_stream: IO[str] | None, tty: bool | None,
             device: torch.device | None) -> dict[str, Any] | None:
    from policy.distributed_checkpoint import rank
    from policy.launch import clip_grad_norm
    from policy.tokenizer import load_tokenizer
    from prover.checkpoints import resolve_model
    from prover.config import write_resolved_config

    train_cfg, sft = config.training, config.sft
    world, lead = torchrun_world(), rank() == 0

    def local(value: str | None) -> str | None:   # paths made absolute: the record re-runs anywhere
        return os.path.abspath(value) if value is not None and Path(value).exists() else value

    sft = sft.model_copy(update={"corpus": local(sft.corpus), "problems": local(sft.problems)})
    config = with_absolute_paths(config.model_copy(update={"sft": sft, "output_dir": out}))
    checkpoints = Checkpointer(out, keep_last=train_cfg.keep_last)
    prepared: dict[str, Any] = {}

    def preflight() -> tuple[bool, str]:   # every user mistake is found here, on rank 0, before any work
        if config.policy.checkpoint is None:
            raise UserError("no model to fine-tune: pass --model DIR (a Hugging Face folder or hub id)")
        resumed = prepare_training_dir(out, config, force=force)
        source = resolve_model(str(config.policy.checkpoint))   # a folder, or a hub id -> its local folder
        if world > 1:
            _check_ranks(config, Path(source), world, checkpoints.latest() if resumed else None)
        tokenizer = load_tokenizer(config.policy.tokenizer or source)
        prepared.update(tokenizer=tokenizer, data=prepare_data(config, tokenizer))
        write_resolved_config(config, out)
        return resumed, str(source)

    resumed, source = rank0_first(preflight)
    latest = checkpoints.latest() if resumed else None
    if prepared:   # rank 0 (or the one process) has them from its preflight
        tokenizer, data = prepared["tokenizer"], prepared["data"]
    else:
        tokenizer = load_tokenizer(config.policy.tokenizer or source)
        data = prepare_data(config, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    device = device or resolve_device(train_cfg.device)
    torch.manual_seed(train_cfg.seed)
    model = sharded(load_model(latest or Path(source), device), config)
    is_policy = isinstance(model, Transformer)
    packed = sft.pack and is_policy
    if sft.pack and not is_policy:
        logger.warning("sft.pack needs our policy's document-aware attention; %s trains one example per row", source)
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.learning_rate, betas=train_cfg.adam_betas,
                                  weight_decay=train_cfg.weight_decay)
    scheduler = make_scheduler(optimizer, train_cfg)
    if is_policy:
        from policy.balancing import expert_load, max_violation, register_bias_update_hook

        register_bias_update_hook(optimizer, model)
    step, cursor, counters = 0, None, {"tokens": 0}
    if latest is not None:
        state = checkpoints.restore(latest, optimizer=optimizer, scheduler=scheduler, map_location=device,
                                    model=model)
        step, cursor, counters = state.step, state.cursor, {"tokens": 0, **state.counters}
        if lead:
            logger.info("continuing %s from %s (step %d)", out, latest, step)
    stream = BatchStream(data.train, micro_batch_size=train_cfg.micro_batch_size, seed=train_cfg.seed,
                         max_len=sft.max_seq_len, packed=packed, pad_id=pad_id, cursor=cursor)

    def save() -> Path:
        return checkpoints.save(step, model=model, optimizer=optimizer, scheduler=scheduler, cursor=stream.cursor,
                                config=config, tokenizer=tokenizer, counters=counters)

    def eval_loss() -> float | None:   # every rank evaluates every held-out row: sharded forwards go together
        if not data.held_out:
            return None
        return evaluate(model, data.held_out, micro_batch_size=train_cfg.micro_batch_size, max_len=sft.max_seq_len,
                        packed=packed, pad_id=pad_id, device=device)

    started = time.perf_counter()
    last: dict[str, Any] = {}
    saved_step = step if latest is not None else None
    progress = StepProgress(train_cfg.steps, done=step, stream=progress_stream or sys.stderr, tty=tty) if lead else None
    metrics = MetricsLog(out, resume_step=step if latest is not None else None) if lead else None
    try:
        with sigterm_as_interrupt():
            try:
                while step < train_cfg.steps:
                    tick = time.perf_counter()
                    # Every rank draws the step's micro-batches (one cursor everywhere) and trains on
                    # every world-th of them.
                    micro = [stream.next_batch() for _ in range(train_cfg.gradient_accumulation)]
                    step_tokens = sum(b.trained_tokens for b in micro)
                    main_sum, mtp_sum, mtp_seen = 0.0, 0.0, 0.0
                    for batch in micro[rank()::world]:
                        batch = batch.to(device)
                        with _autocast(device):
                            out_loss = micro_batch_loss(model, batch, packed=packed, mtp=sft.mtp)
                        # Each micro-batch's mean weighted by its share of the step's tokens: the
                        # step's loss is the mean over all its completion tokens. A sharded backward
                        # averages the ranks' gradients; x world makes that their sum.
                        share = out_loss.tokens / max(step_tokens, 1)
                        (out_loss.loss * (share * world)).backward()
                        main_sum += out_loss.main_sum
                        if out_loss.mtp is not None:
                            mtp_sum, mtp_seen = mtp_sum + out_loss.mtp * share, 1.0
                    main_sum, mtp_sum, mtp_seen = all_summed([main_sum, mtp_sum, mtp_seen])
                    grad_norm = float(clip_grad_norm(trained, train_cfg.max_grad_norm))
                    row: dict[str, Any] = {
                        "loss": main_sum / max(step_tokens, 1), "lr": scheduler.get_last_lr()[0],
                        "grad_norm": grad_norm, "tokens": step_tokens}
                    if mtp_seen:
                        row["mtp_loss"] = mtp_sum
                    if is_policy:
                        violation = max_violation(expert_load(model))   # collective when sharded
                        if violation.numel():
                            row["expert_max_violation"] = float(violation.mean())
                    with interrupts_held():   # the step, its counters and its metrics row go together
                        optimizer.step()   # (the balancing hook runs here)
                        scheduler.step()
                        optimizer.zero_grad(set_to_none=True)
                        step += 1
                        counters["tokens"] = int(counters["tokens"]) + step_tokens
                        row |= {"tokens_seen": counters["tokens"], "epoch": stream.epoch,
                                "step_s": round(time.perf_counter() - tick, 3)}
                        if metrics is not None and (step % train_cfg.log_every == 0 or step == train_cfg.steps):
                            metrics.log(step, row)
                    last = row
                    if progress is not None:
                        progress.step(loss=row["loss"], lr=row["lr"])
                    if step % train_cfg.eval_every == 0 or step == train_cfg.steps:
                        held = eval_loss()
                        if held is not None:
                            if metrics is not None:
                                with interrupts_held():
                                    metrics.log(step, {"eval_loss": held})
                            last["eval_loss"] = held
                    if step % train_cfg.save_every == 0 or step == train_cfg.steps:
                        save()
                        saved_step = step
            except KeyboardInterrupt:
                if world > 1:   # a collective save could wait forever on a rank the signal caught elsewhere
                    raise SFTInterrupted(step, checkpoints.latest(), saved=False) from None
                checkpoint = save() if saved_step != step else checkpoints.latest()
                raise SFTInterrupted(step, checkpoint) from None
    finally:
        if progress is not None:
            progress.close()
        if metrics is not None:
            metrics.close()
    if not lead:
        return None
    final = checkpoints.latest()
    summary = {
        "command": "sft", "complete": True, "steps": step, "checkpoint": str(final),
        "train_loss": last.get("loss"), "eval_loss": last.get("eval_loss"),
        "examples": len(data.train), "held_out": len(data.held_out), "skipped": len(data.skipped),
        "too_long": data.too_long, "tokens_seen": counters["tokens"], "packed": packed, "ranks": world,
        "model": str(source), "resumed_from": str(latest) if latest else None,
        "seconds": round(time.perf_counter() - started, 2), "output_dir": str(out)}
    tmp = out / f".{SUMMARY_NAME}.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / SUMMARY_NAME)
    if not math.isfinite(float(summary["train_loss"] or 0.0)):
        logger.warning("the training loss is not finite (%s)", summary["train_loss"])
    return summary


def _check_ranks(config: ProverConfig, source: Path, world: int, latest: Path | None) -> None:
    """Several ranks: the step's micro-batches split evenly, the layout fits, and a run to continue
    was written by ranks (a one-device optimizer state cannot be split)."""
    from prover.rl.checkpointing import OPTIMIZER_SHARDS, TRAINER_DIR

    accumulation = config.training.gradient_accumulation
    if accumulation % world:
        raise ConfigError(f"training.gradient_accumulation = {accumulation} micro-batches do not split over "
                          f"{world} ranks (torchrun): make it a multiple of {world}")
    check_layout(config, source, world, f"{world} ranks (torchrun)")
    if latest is not None and not (latest / TRAINER_DIR / OPTIMIZER_SHARDS).is_dir():
        raise UserError(f"{latest}: written by a run on one device, whose optimizer state cannot be split over "
                        f"{world} ranks; continue it without torchrun, or start another --out")
