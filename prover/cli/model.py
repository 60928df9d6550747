"""`prover model`: create and inspect policy checkpoints (Hugging Face format).

    prover model init --preset tiny --out runs/tiny [--tokenizer DIR] [--seed 0] [--dtype float32]
    prover model info runs/tiny [--json]
    prover model tokenizer --corpus proofs.jsonl --out data/tokenizers/mine [--vocab-size 4096]

`init` writes a folder that transformers (`AutoModelForCausalLM.from_pretrained`) and vLLM
load as is: config.json (DeepSeek-V3 keys), model.safetensors, generation_config.json and the
tokenizer files. The vocabulary is exactly the tokenizer's size (our shipped tokenizer has
4096 = 64 x 64 entries), so the model can never sample an id the tokenizer cannot decode.
Without `--tokenizer`, the tokenizer shipped in data/tokenizers/lean-bpe-4k is used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from prover.cli.common import JsonFlag, UserError, console, print_json

app = typer.Typer(
    help="Policy checkpoints: write a fresh DeepSeek-V3-architecture checkpoint from a preset "
    "(init), print its parameters and layout (info), train a Lean BPE tokenizer (tokenizer).",
    no_args_is_help=True,
)

DTYPES = ("float32", "bfloat16", "float16")


def _check_out_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} is not empty; pass --force to overwrite or choose another folder")


def init_checkpoint(
    preset_name: str, out: Path, *, tokenizer_path: Path | None = None, seed: int = 0,
    dtype: str = "float32", force: bool = False,
) -> dict[str, Any]:
    """Write a randomly initialised checkpoint of `preset_name` to `out`; returns its summary
    (as `checkpoint_info`). Raises UserError for anything the caller can fix."""
    import torch

    from policy.checkpoint import save_pretrained
    from policy.model import Transformer
    from policy.presets import PRESETS, preset
    from policy.tokenizer import DEFAULT_TOKENIZER_DIR, TokenizerError, load_tokenizer

    if preset_name not in PRESETS:
        raise UserError(f"unknown preset {preset_name!r}; known presets: {', '.join(PRESETS)}")
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    _check_out_dir(out, force)
    source = tokenizer_path or DEFAULT_TOKENIZER_DIR
    try:
        tokenizer = load_tokenizer(source)
    except TokenizerError as exc:
        raise UserError(f"--tokenizer: {exc}") from None
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer {source} has no eos token: generation could never stop")
    try:
        args = preset(preset_name, vocab_size=len(tokenizer))
    except ValueError as exc:
        raise UserError(f"preset {preset_name!r} with this tokenizer: {exc}") from None
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = Transformer(args)
    special = {
        f"{kind}_token_id": getattr(tokenizer, f"{kind}_token_id")
        for kind in ("bos", "eos", "pad")
        if getattr(tokenizer, f"{kind}_token_id") is not None
    }
    out.mkdir(parents=True, exist_ok=True)
    save_pretrained(model, out, dtype=getattr(torch, dtype), extra_config=special)
    tokenizer.save_pretrained(out)
    return checkpoint_info(out)


def _safetensors_summary(folder: Path) -> dict[str, Any] | None:
    """Tensor count, parameter count and bytes of the folder's safetensors (headers only)."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    tensors = parameters = 0
    dtypes: set[str] = set()
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                piece = handle.get_slice(name)
                count = 1
                for size in piece.get_shape():
                    count *= size
                tensors += 1
                parameters += count
                dtypes.add(piece.get_dtype())
    return {
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "tensors": tensors,
        "parameters": parameters,
        "dtypes": sorted(dtypes),
    }


def checkpoint_info(folder: Path) -> dict[str, Any]:
    """Parameters and layout of a checkpoint folder: exact per-part counts for DeepSeek-V3
    configs (ours or any HF deepseek_v3), the weights' own count for any other model."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"{folder} has no config.json (not a Hugging Face checkpoint folder)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{config_file} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    info: dict[str, Any] = {
        "path": str(folder),
        "model_type": config.get("model_type"),
        "architectures": config.get("architectures"),
        "dtype": config.get("dtype", config.get("torch_dtype")),
        "vocab_size": config.get("vocab_size"),
        "weights": _safetensors_summary(folder),
        "tokenizer": _tokenizer_info(folder),
    }
    if config.get("model_type") == "deepseek_v3":
        from policy.checkpoint import args_from_hf_config
        from policy.model import count_parameters

        try:
            args = args_from_hf_config(config)
        except ValueError as exc:
            raise UserError(f"{config_file}: {exc}") from None
        counts = count_parameters(args)
        info["parameters"] = {
            "total": counts["total"],
            "active_per_token": counts["active"],
            "mtp_total": counts["mtp_total"],
            "total_with_mtp": counts["total_with_mtp"],
            "by_part": {k: v for k, v in counts.items()
                        if k not in ("total", "active", "mtp_total", "mtp_active", "total_with_mtp")},
        }
        info["layout"] = {
            "hidden": args.dim,
            "layers": args.n_layers,
            "dense_layers": args.n_dense_layers,
            "moe_layers": args.n_layers - args.n_dense_layers,
            "routed_experts": args.n_routed_experts,
            "activated_experts": args.n_activated_experts,
            "shared_experts": args.n_shared_experts,
            "expert_groups": f"{args.n_expert_groups} (top {args.n_limited_groups})",
            "moe_inter_dim": args.moe_inter_dim,
            "dense_inter_dim": args.inter_dim,
            "heads": args.n_heads,
            "mla": {
                "q_lora_rank": args.q_lora_rank,
                "kv_lora_rank": args.kv_lora_rank,
                "qk_nope_head_dim": args.qk_nope_head_dim,
                "qk_rope_head_dim": args.qk_rope_head_dim,
                "v_head_dim": args.v_head_dim,
            },
            "mtp_depth": args.n_mtp_layers,
            "max_seq_len": args.max_seq_len,
            "rope": "yarn" if args.rope_factor > 1 else "default",
        }
    elif info["weights"] is not None:
        info["parameters"] = {"total": info["weights"]["parameters"]}
    else:
        raise UserError(
            f"{folder}: model_type {config.get('model_type')!r} is not deepseek_v3 and there are "
            "no *.safetensors weights to count parameters from"
        )
    return info


def _tokenizer_info(folder: Path) -> dict[str, Any] | None:
    from policy.tokenizer import TokenizerError, load_tokenizer

    try:
        tokenizer = load_tokenizer(folder)
    except TokenizerError:
        return None
    return {
        "class": type(tokenizer).__name__,
        "size": len(tokenizer),
        "bos": tokenizer.bos_token,
        "eos": tokenizer.eos_token,
        "pad": tokenizer.pad_token,
    }


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
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random initialisation.")] = 0,
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

    _check_out_dir(out, force)
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
