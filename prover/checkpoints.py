"""Policy checkpoints as the prover manages them: create one, find one, describe one.

`init_checkpoint` writes a complete Hugging Face folder (config, weights, generation config,
tokenizer) that transformers and vLLM load as is; `resolve_model` turns what a user passes as
`--model` (a folder, or a Hugging Face hub id such as `deepseek-ai/DeepSeek-Prover-V2-7B`)
into a local folder, failing fast offline; `checkpoint_info` reads ours, transformers'
deepseek_v3 checkpoints and, for other causal LMs, the parameter count. All raise
`UserError` for anything the caller can fix; the CLI is a shell over them.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prover.errors import UserError

# owner/name as the hub spells repository ids (no path of ours looks like this and exists).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# What generation needs from a hub repository: configs, tokenizer files, weights.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja"]

DTYPES = ("float32", "bfloat16", "float16")


def check_out_dir(out: Path, force: bool) -> None:
    """Before any work: refuse a file, a non-empty folder unless `force` (nothing of the user is
    overwritten by accident), and a folder that could not be written at the end."""
    existing = out
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent   # the nearest folder that exists: where `out` would be created
    if not existing.is_dir():
        where = "is a file" if existing == out else f"has a file in its path ({existing})"
        raise UserError(f"--out {out} {where}, not a folder")
    if existing == out and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} is not empty; pass --force to overwrite or choose another folder")
    try:   # a real probe: os.access misses read-only filesystems and root's permission bypass
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise UserError(f"--out {out}: not writable ({existing}: {exc.strerror})") from None


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
    check_out_dir(out, force)
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


def _json_object(file: Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object; UserError naming the file otherwise."""
    try:
        value = json.loads(file.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"{file}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{file} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise UserError(f"{file}: expected a JSON object of {what}, got a {type(value).__name__}")
    return value


def read_model_config(folder: Path) -> dict[str, Any]:
    """The checkpoint's config.json as a dict; UserError for a missing, unreadable, non-JSON
    or non-object file (what transformers and vLLM would otherwise fail on with a traceback).
    A generation_config.json beside it, which both load too, must be a JSON object as well."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"{folder} has no config.json (not a Hugging Face checkpoint folder)")
    config = _json_object(config_file, "model settings")
    if (folder / "generation_config.json").is_file():
        _json_object(folder / "generation_config.json", "generation settings")
    return config


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or flag.upper() in ("1", "ON", "YES", "TRUE")


def _reachable(url: str, timeout_s: float) -> str | None:
    """None if a TCP connection to `url`'s host opens within `timeout_s`, else why not. Runs in a
    thread because name resolution has no timeout of its own."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    failure: list[str] = ["no answer"]

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            failure.clear()
        except OSError as exc:
            failure[:] = [exc.strerror or str(exc)]

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return f"{failure[0]} after {timeout_s:g} s" if thread.is_alive() else (failure[0] if failure else None)


def resolve_model(spec: str, *, connect_timeout_s: float = 2.0) -> Path:
    """A local checkpoint folder for `--model`: an existing folder, or a Hugging Face hub id
    (`owner/name`) taken from the local cache or downloaded. Offline (HF_HUB_OFFLINE=1 or the hub
    unreachable within `connect_timeout_s`) an id not in the cache fails at once with a hint,
    instead of the hub client's retries."""
    path = Path(spec).expanduser()
    if path.exists() or not HUB_ID.match(spec):
        if not path.is_dir():
            raise UserError(f"--model {spec}: no such folder (and not a Hugging Face hub id owner/name)")
        read_model_config(path)
        return path
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(spec, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
        hint = (f"download it where there is a network (`hf download {spec}`) and pass the folder, "
                "or fill the cache")
        if _offline():
            raise UserError(f"--model {spec}: not in the local Hugging Face cache and HF_HUB_OFFLINE "
                            f"is set; {hint}") from None
        why = _reachable(endpoint, connect_timeout_s)
        if why is not None:
            raise UserError(f"--model {spec}: not in the local Hugging Face cache and the hub "
                            f"({endpoint}) is not reachable: {why}; {hint}") from None
        try:
            folder = Path(snapshot_download(spec, allow_patterns=HUB_PATTERNS, endpoint=endpoint))
        except (HfHubHTTPError, LocalEntryNotFoundError) as exc:
            # A hub or mirror that answers with an error other than "no such repo" (a bare 404,
            # a 5xx) comes back as LocalEntryNotFoundError ("Got: HfHubHTTPError: ...").
            said = str(exc).splitlines()[0].removeprefix("Got: ")
            raise UserError(f"--model {spec}: no such folder, and the hub ({endpoint}) says: {said}") from None
    except HFValidationError as exc:
        raise UserError(f"--model {spec}: not a valid hub id ({exc})") from None
    read_model_config(folder)
    return folder


def checkpoint_info(folder: Path) -> dict[str, Any]:
    """Parameters and layout of a checkpoint folder: exact per-part counts for DeepSeek-V3
    configs (ours or any HF deepseek_v3), the weights' own count for any other model."""
    config_file = folder / "config.json"
    config = read_model_config(folder)
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
