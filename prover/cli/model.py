"""`prover model`: create and inspect policy checkpoints (Hugging Face format).

    prover model init --preset tiny --out runs/tiny [--tokenizer DIR] [--seed 0] [--dtype float32]
    prover model info runs/tiny [--json]
    prover model tokenizer --corpus proofs.jsonl --out data/tokenizers/mine [--vocab-size 4096]
    prover model plan --preset deepseek-v3-671b --gpus 2048 --gpu-memory 80 --ep 64 [--json]
    prover model convert runs/train/step-000100 --out runs/train/hf [--dtype bfloat16]

`init` writes a folder that transformers (`AutoModelForCausalLM.from_pretrained`) and vLLM
load as is: config.json (DeepSeek-V3 keys), model.safetensors, generation_config.json and the
tokenizer files. The vocabulary is exactly the tokenizer's size (our shipped tokenizer has
4096 = 64 x 64 entries), so the model can never sample an id the tokenizer cannot decode.
Without `--tokenizer`, the tokenizer shipped in data/tokenizers/lean-bpe-4k is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from prover.checkpoints import check_out_dir, checkpoint_info, init_checkpoint, read_model_config
from prover.cli.common import (
    SEED_MAX,
    JsonFlag,
    UserError,
    console,
    print_json,
)

app = typer.Typer(
    help="Policy checkpoints: write a fresh DeepSeek-V3-architecture checkpoint from a preset "
    "(init), print its parameters and layout (info), train a Lean BPE tokenizer (tokenizer), "
    "plan memory and communication per GPU of a sharded training step (plan), convert between "
    "sharded training checkpoints and HF format (convert).",
    no_args_is_help=True,
)

def _millions(n: int) -> str:
    return f"{n / 1e6:,.2f}M" if n < 1e9 else f"{n / 1e9:,.2f}B"


def _print_info(info: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"{info['path']} ({info['model_type']})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    params = info["parameters"]
    table.add_row("parameters", _millions(params["total"]) + (
        f" total, {_millions(params['active_per_token'])} active per token" if "active_per_token" in params
        else " (counted from the weights)"))
    if "mtp_total" in params:
        table.add_row("MTP modules", f"{_millions(params['mtp_total'])} (total with MTP {_millions(params['total_with_mtp'])})")
    layout = info.get("layout")
    if layout:
        table.add_row("layers", f"{layout['layers']} ({layout['dense_layers']} dense, {layout['moe_layers']} MoE), "
                      f"hidden {layout['hidden']}, {layout['heads']} heads")
        table.add_row("experts", f"{layout['routed_experts']} routed (top {layout['activated_experts']}), "
                      f"{layout['shared_experts']} shared, groups {layout['expert_groups']}, "
                      f"expert dim {layout['moe_inter_dim']}")
        table.add_row("MLA", ", ".join(f"{k} {v}" for k, v in layout["mla"].items()))
        table.add_row("MTP depth", str(layout["mtp_depth"]))
        table.add_row("context", f"{layout['max_seq_len']} tokens, rope {layout['rope']}")
    table.add_row("vocab", str(info["vocab_size"]))
    table.add_row("dtype", str(info["dtype"]))
    weights = info["weights"]
    if weights:
        table.add_row("weights", f"{weights['files']} file(s), {weights['bytes'] / 2**20:,.1f} MiB, "
                      f"{weights['tensors']} tensors, {_millions(weights['parameters'])} parameters")
    tok = info["tokenizer"]
    table.add_row("tokenizer", "none in the folder" if tok is None else
                  f"{tok['class']}, {tok['size']} tokens, bos {tok['bos']}, eos {tok['eos']}, pad {tok['pad']}")
    console.print(table)


@app.command()
def init(
    preset_name: Annotated[str, typer.Option("--preset", help="Model size: tiny (CPU tests), small, base.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the checkpoint into (created).")],
    tokenizer: Annotated[Path | None, typer.Option(
        "--tokenizer", help="Hugging Face tokenizer folder; default: the shipped "
        "data/tokenizers/lean-bpe-4k. The model's vocabulary is its size.")] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=SEED_MAX, help="Seed of the random initialisation.")] = 0,
    dtype: Annotated[str, typer.Option("--dtype", help="Weights' dtype: float32, bfloat16, float16.")] = "float32",
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out folder.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Write a fresh, randomly initialised checkpoint (config, safetensors, tokenizer) that
    transformers and vLLM load."""
    info = init_checkpoint(preset_name, out, tokenizer_path=tokenizer, seed=seed, dtype=dtype, force=force)
    if as_json:
        print_json(info)
        return
    _print_info(info)
    console.print(f"wrote {out}")


@app.command()
def info(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder (with config.json).")],
    as_json: JsonFlag = False,
) -> None:
    """Print parameters (total, active per token) and layout of a checkpoint folder."""
    summary = checkpoint_info(checkpoint)
    if as_json:
        print_json(summary)
    else:
        _print_info(summary)


@app.command("tokenizer")
def train_tokenizer_command(
    corpus: Annotated[list[Path], typer.Option(
        "--corpus", help="Training text: .jsonl files (their Lean text fields: code, "
        "formal_statement, formal_proof, informal_prefix, goal, header, text), .lean/.txt files, "
        "or folders of .lean files. Repeatable.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write tokenizer.json and tokenizer_config.json into.")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", help="Tokens in all: 3 special + 256 bytes + merges.")] = 4096,
    min_frequency: Annotated[int, typer.Option("--min-frequency", min=1, help="A merge needs a pair seen this often.")] = 2,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out folder.")] = False,
) -> None:
    """Train a byte-level BPE tokenizer on Lean text (Hugging Face format)."""
    from policy.tokenizer import TokenizerError, read_corpus, train_tokenizer

    check_out_dir(out, force)
    try:
        texts = list(read_corpus(corpus))
        if not texts:
            raise UserError(f"no training text found in {', '.join(map(str, corpus))}")
        trained = train_tokenizer(texts, vocab_size=vocab_size, min_frequency=min_frequency)
    except TokenizerError as exc:
        raise UserError(str(exc)) from None
    trained.save_pretrained(out)
    console.print(f"wrote {out}: {len(trained)} tokens from {len(texts)} texts "
                  f"({sum(len(t) for t in texts):,} characters)")


def _print_plan(p: dict[str, Any]) -> None:
    from rich.table import Table

    mesh, step, params = p["mesh"], p["step"], p["parameters"]
    table = Table(title=f"plan: {p['preset']} on {mesh['gpus']} GPUs of {p['gpu_memory_gib']:g} GiB",
                  show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("mesh", f"FSDP over {mesh['dp_shard']} x {mesh['dp_replicate']} replica(s); "
                  f"EP {mesh['ep']} ({mesh['experts_per_gpu']} experts per GPU), experts FSDP over {mesh['edp']}")
    table.add_row("parameters", f"{_millions(params['total'])} with MTP ({_millions(params['total_without_mtp'])} "
                  f"without), {_millions(params['active_per_token'])} active per token")
    table.add_row("step", f"{step['micro_batch']} x {step['seq']} tokens per GPU, activation checkpointing "
                  f"{step['activation_checkpointing']}")
    for name, gib in p["memory_gib"].items():
        table.add_row(f"{name} (GiB)", f"{gib:,.2f}")
    table.add_row("fits", f"{'yes' if p['fits'] else 'NO'} (headroom {p['headroom_gib']:,.2f} GiB)")
    for name, gib in p["communication_gib_per_micro_batch"].items():
        table.add_row(f"{name} (GiB per micro-batch)", f"{gib:,.2f}")
    table.add_row("compute (TFLOP per micro-batch)", f"{p['tflop_per_micro_batch']:,.1f}")
    console.print(table)


@app.command("plan")
def plan_command(
    preset_name: Annotated[str, typer.Option(
        "--preset", help="Model: tiny, small, base, or the published deepseek-v3-671b.")],
    gpus: Annotated[int, typer.Option("--gpus", min=1, help="GPUs (ranks) in the mesh.")],
    gpu_memory: Annotated[float, typer.Option("--gpu-memory", min=1, help="Memory per GPU, GiB (H800/H100: 80, H200: 141).")],
    ep: Annotated[int, typer.Option("--ep", min=1, help="Expert-parallel degree (learner.ep).")] = 1,
    dp_shard: Annotated[int, typer.Option("--dp-shard", help="FSDP shard group size (learner.dp_shard); -1: all GPUs.")] = -1,
    seq: Annotated[int, typer.Option("--seq", min=1, help="Tokens per sequence.")] = 4096,
    micro_batch: Annotated[int, typer.Option("--micro-batch", min=1, help="Sequences per GPU per forward/backward.")] = 1,
    checkpointing: Annotated[str, typer.Option(
        "--activation-checkpointing", help="full (keep each block's input, recompute the rest) or none.")] = "full",
    as_json: JsonFlag = False,
) -> None:
    """Per-GPU parameters, gradients, optimizer state and activations of one training step on a
    mesh (FSDP2 + expert parallelism), the all-to-all volume, and whether it fits."""
    from policy.plan import plan

    if checkpointing not in ("full", "none"):
        raise UserError(f"--activation-checkpointing {checkpointing!r}: use 'full' or 'none'")
    try:
        result = plan(preset_name, gpus=gpus, gpu_memory_gib=gpu_memory, ep=ep, dp_shard=dp_shard,
                      seq=seq, micro_batch=micro_batch, activation_checkpointing=checkpointing)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UserError(f"--preset {preset_name}: {exc}") from None
    if as_json:
        print_json(result)
    else:
        _print_plan(result)


@app.command("convert")
def convert_command(
    checkpoint: Annotated[Path, typer.Argument(help="A sharded training checkpoint (trainer_state.json, dcp/) "
                                               "or an HF-format checkpoint folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the other format into (created).")],
    dtype: Annotated[str, typer.Option("--dtype", help="Weights' dtype of HF output: bfloat16, float32, float16.")] = "bfloat16",
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out folder.")] = False,
) -> None:
    """Sharded (torch.distributed.checkpoint, any number of ranks) to HF format, which vLLM and
    `prover bench` load, or HF format to sharded (a sharded run starting from it)."""
    import torch

    from policy.distributed_checkpoint import convert

    if dtype not in ("bfloat16", "float32", "float16"):
        raise UserError(f"--dtype {dtype!r}: use bfloat16, float32 or float16")
    check_out_dir(out, force)
    if (checkpoint / "config.json").is_file():   # both formats carry one: a list or bad JSON is one line
        read_model_config(checkpoint)
    try:
        direction = convert(checkpoint, out, dtype=getattr(torch, dtype))
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None
    console.print(f"wrote {out} ({direction})", soft_wrap=True)
