"""Hugging Face-format checkpoints of our model, in DeepSeek-V3's own layout.

A checkpoint folder holds `config.json` (model_type deepseek_v3, plus the keys vLLM needs and
transformers 5 does not write: topk_method "noaux_tc", scoring_func "sigmoid"),
`model.safetensors` (or shards and `model.safetensors.index.json` past `max_shard_bytes`) and
`generation_config.json`. Tensor names are DeepSeek's released ones, which both loaders accept:
vLLM reads them directly; transformers 5 fuses the per-expert weights into its 3-D
`experts.gate_up_proj` / `experts.down_proj` on load (its qwen2_moe conversion) and splits them
back on save. MTP module k is stored as layer `num_hidden_layers + k` with `enorm`, `hnorm`,
`eh_proj`, `shared_head.norm`, the block's weights, and copies of the shared `embed_tokens` and
head (`shared_head.head`), as DeepSeek-V3's checkpoint does (vLLM's MTP drafter reads them).

`load_pretrained` reads our checkpoints and transformers' own DeepseekV3 checkpoints (either
expert layout); MTP modules missing from the weights are freshly initialised, with a warning.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from policy.model import ModelArgs, Transformer

logger = logging.getLogger(__name__)

MAX_SHARD_BYTES = 5 * 1024**3  # transformers' default shard size

# transformers' rope_parameters keys we understand (the rest make the config incompatible).
_ROPE_KEYS = {
    "rope_type",
    "type",
    "rope_theta",
    "factor",
    "original_max_position_embeddings",
    "beta_fast",
    "beta_slow",
    "mscale",
    "mscale_all_dim",
}


def hf_config(args: ModelArgs, **extra: Any) -> dict[str, Any]:
    """config.json for `args` (transformers' DeepseekV3Config names); `extra` keys (token ids,
    dtype, ...) are added last. Training-only fields go under `policy_training`."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": args.rope_theta}
    if args.rope_factor > 1:
        rope = {
            "rope_type": "yarn",
            "rope_theta": args.rope_theta,
            "factor": args.rope_factor,
            "original_max_position_embeddings": args.original_seq_len,
            "beta_fast": args.beta_fast,
            "beta_slow": args.beta_slow,
            "mscale": args.mscale,
            "mscale_all_dim": args.mscale_all_dim,
        }
    config: dict[str, Any] = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "model_type": "deepseek_v3",
        "vocab_size": args.vocab_size,
        "hidden_size": args.dim,
        "num_hidden_layers": args.n_layers,
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_heads,
        "q_lora_rank": args.q_lora_rank or None,
        "kv_lora_rank": args.kv_lora_rank,
        "qk_nope_head_dim": args.qk_nope_head_dim,
        "qk_rope_head_dim": args.qk_rope_head_dim,
        "v_head_dim": args.v_head_dim,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "intermediate_size": args.inter_dim,
        "first_k_dense_replace": args.n_dense_layers,
        "moe_layer_freq": 1,
        "n_routed_experts": args.n_routed_experts,
        "n_shared_experts": args.n_shared_experts,
        "num_experts_per_tok": args.n_activated_experts,
        "moe_intermediate_size": args.moe_inter_dim,
        "n_group": args.n_expert_groups,
        "topk_group": args.n_limited_groups,
        "routed_scaling_factor": args.route_scale,
        "norm_topk_prob": args.norm_topk_prob,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "aux_loss_alpha": args.seq_aux_loss_alpha,
        "seq_aux": True,
        "num_nextn_predict_layers": args.n_mtp_layers,
        "hidden_act": "silu",
        "rope_parameters": rope,
        "rope_interleave": True,
        "tie_word_embeddings": False,
        "initializer_range": args.init_std,
        "use_cache": True,
        "policy_training": {
            "mtp_loss_weight": args.mtp_loss_weight,
            "bias_update_speed": args.bias_update_speed,
            "attn_impl": args.attn_impl,
            "moe_impl": args.moe_impl,
        },
    }
    config.update(extra)
    return config


def _rope_args(config: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    unknown = sorted(set(rope) - _ROPE_KEYS)
    if unknown:
        problems.append(f"rope_parameters keys {unknown} (supported: {sorted(_ROPE_KEYS)})")
    kind = rope.get("rope_type", rope.get("type", "default"))
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    if kind == "default":
        return {"rope_theta": float(theta)}
    if kind != "yarn":
        problems.append(f"rope_type={kind!r} (need 'default' or 'yarn')")
        return {}
    factor = rope.get("factor")
    if factor is None:  # transformers: max_position_embeddings / original_max_position_embeddings
        factor = config["max_position_embeddings"] / rope["original_max_position_embeddings"]
    return {
        "rope_theta": float(theta),
        "rope_factor": float(factor),
        "original_seq_len": int(
            rope.get("original_max_position_embeddings", config["max_position_embeddings"])
        ),
        "beta_fast": int(rope.get("beta_fast") or 32),
        "beta_slow": int(rope.get("beta_slow") or 1),
        "mscale": float(rope.get("mscale") or 1.0),
        "mscale_all_dim": float(rope.get("mscale_all_dim") or 1.0),
    }


def args_from_hf_config(config: Mapping[str, Any]) -> ModelArgs:
    """ModelArgs from a config.json dict; ValueError quoting every incompatible key."""
    problems: list[str] = []
    required = {
        "model_type": "deepseek_v3",
        "hidden_act": "silu",
        "attention_bias": False,
        "tie_word_embeddings": False,
        "rope_interleave": True,
        "moe_layer_freq": 1,
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
    }
    for key, want in required.items():
        if key in config and config[key] != want:
            problems.append(f"{key}={config[key]!r} (need {want!r})")
    if config.get("quantization_config"):
        method = config["quantization_config"].get("quant_method", "?")
        problems.append(f"quantization_config (quant_method={method!r}): dequantize to bf16 first")
    heads = config.get("num_attention_heads")
    if config.get("num_key_value_heads") not in (None, heads):
        problems.append(
            f"num_key_value_heads={config['num_key_value_heads']!r} (MLA needs num_attention_heads={heads!r})"
        )
    missing = [
        k
        for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
        if k not in config
    ]
    if missing:
        problems.append(f"missing keys {missing}")
    rope = _rope_args(config, problems)
    if problems:
        raise ValueError("incompatible config.json: " + "; ".join(problems))
    training = config.get("policy_training") or {}
    defaults = {f.name: f.default for f in fields(ModelArgs)}
    values = {
        "vocab_size": config["vocab_size"],
        "dim": config["hidden_size"],
        "n_layers": config["num_hidden_layers"],
        "max_seq_len": config.get("max_position_embeddings", defaults["max_seq_len"]),
        "norm_eps": config.get("rms_norm_eps", defaults["norm_eps"]),
        "n_heads": heads,
        "q_lora_rank": config.get("q_lora_rank") or 0,
        "kv_lora_rank": config.get("kv_lora_rank", defaults["kv_lora_rank"]),
        "qk_nope_head_dim": config.get("qk_nope_head_dim", defaults["qk_nope_head_dim"]),
        "qk_rope_head_dim": config.get("qk_rope_head_dim", defaults["qk_rope_head_dim"]),
        "v_head_dim": config.get("v_head_dim", defaults["v_head_dim"]),
        "inter_dim": config.get("intermediate_size", defaults["inter_dim"]),
        "n_dense_layers": config.get("first_k_dense_replace", defaults["n_dense_layers"]),
        "n_routed_experts": config.get("n_routed_experts", defaults["n_routed_experts"]),
        "n_shared_experts": config.get("n_shared_experts") or 0,
        "n_activated_experts": config.get("num_experts_per_tok", defaults["n_activated_experts"]),
        "moe_inter_dim": config.get("moe_intermediate_size", defaults["moe_inter_dim"]),
        "n_expert_groups": config.get("n_group") or 1,
        "n_limited_groups": config.get("topk_group") or 1,
        "route_scale": config.get("routed_scaling_factor", defaults["route_scale"]),
        "norm_topk_prob": config.get("norm_topk_prob", defaults["norm_topk_prob"]),
        "seq_aux_loss_alpha": config.get("aux_loss_alpha", 0.0)
        if config.get("seq_aux", True)
        else 0.0,
        "n_mtp_layers": config.get("num_nextn_predict_layers", config.get("num_mtp_layers", 0))
        or 0,
        "init_std": config.get("initializer_range", defaults["init_std"]),
        **rope,
        **{k: v for k, v in training.items() if k in defaults},
    }
    return ModelArgs(**values)


def _to_hf(model: Transformer) -> dict[str, Tensor]:
    """Our state dict under DeepSeek's checkpoint names (experts split per expert)."""
    args = model.args
    out: dict[str, Tensor] = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        mtp = re.match(r"mtp\.(\d+)\.(.*)", name)
        if mtp:
            layer, rest = args.n_layers + int(mtp.group(1)), mtp.group(2)
            if rest.startswith("block."):
                rest = rest[len("block.") :]
            elif rest.startswith("norm."):
                rest = "shared_head." + rest
            name = f"model.layers.{layer}.{rest}"
        elif not name.startswith("lm_head."):
            name = "model." + name
        experts = re.match(r"(.*\.mlp\.experts)\.(gate_up_proj|down_proj)$", name)
        if experts is None:
            out[name] = tensor
            continue
        base, kind = experts.groups()
        for e in range(tensor.shape[0]):
            if kind == "gate_up_proj":
                gate, up = tensor[e].chunk(2, dim=0)
                out[f"{base}.{e}.gate_proj.weight"] = gate
                out[f"{base}.{e}.up_proj.weight"] = up
            else:
                out[f"{base}.{e}.down_proj.weight"] = tensor[e]
    # MTP modules read the shared embedding and head; DeepSeek stores a copy in each.
    for k in range(args.n_mtp_layers):
        prefix = f"model.layers.{args.n_layers + k}."
        out[prefix + "embed_tokens.weight"] = out["model.embed_tokens.weight"]
        out[prefix + "shared_head.head.weight"] = out["lm_head.weight"]
    return out


def checkpoint_tensors(model: Transformer) -> dict[str, Tensor]:
    """The model's weights under the checkpoint's (DeepSeek's) names, as `save_pretrained` writes
    them, without copying: what a learner hands `GenerationEngine.load_weights`."""
    return _to_hf(model)


def _from_hf(tensors: Mapping[str, Tensor], args: ModelArgs) -> dict[str, Tensor]:
    """DeepSeek/transformers checkpoint names -> our state dict (per-expert or fused experts)."""
    out: dict[str, Tensor] = {}
    experts: dict[str, dict[int, dict[str, Tensor]]] = {}
    for name, tensor in tensors.items():
        if "rotary_emb" in name:
            continue
        if name.startswith("lm_head."):
            out[name] = tensor
            continue
        if not name.startswith("model."):
            raise ValueError(f"unexpected tensor {name!r} in checkpoint")
        name = name[len("model.") :]
        layer_match = re.match(r"layers\.(\d+)\.(.*)", name)
        if layer_match and int(layer_match.group(1)) >= args.n_layers:
            k, rest = int(layer_match.group(1)) - args.n_layers, layer_match.group(2)
            if k >= args.n_mtp_layers:
                raise ValueError(
                    f"tensor {name!r}: layer beyond num_hidden_layers + num_nextn_predict_layers"
                )
            if rest.startswith(("embed_tokens.", "shared_head.head.")):
                continue  # copies of the shared embedding / head
            if rest.startswith("shared_head.norm."):
                rest = rest[len("shared_head.") :]
            elif not rest.startswith(("enorm.", "hnorm.", "eh_proj.")):
                rest = "block." + rest
            name = f"mtp.{k}.{rest}"
        per_expert = re.match(
            r"(.*\.mlp\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$", name
        )
        if per_expert:
            base, e, kind = per_expert.groups()
            experts.setdefault(base, {}).setdefault(int(e), {})[kind] = tensor
            continue
        out[name] = tensor
    for base, by_expert in experts.items():
        n = args.n_routed_experts
        if sorted(by_expert) != list(range(n)) or any(len(p) != 3 for p in by_expert.values()):
            raise ValueError(f"{base}: expected gate/up/down weights for experts 0..{n - 1}")
        out[f"{base}.gate_up_proj"] = torch.stack(
            [torch.cat([by_expert[e]["gate_proj"], by_expert[e]["up_proj"]]) for e in range(n)]
        )
        out[f"{base}.down_proj"] = torch.stack([by_expert[e]["down_proj"] for e in range(n)])
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def save_pretrained(
    model: Transformer,
    out_dir: Path,
    *,
    dtype: torch.dtype | None = None,
    extra_config: Mapping[str, Any] | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> None:
    """Write config.json, generation_config.json and safetensors weights (sharded past
    max_shard_bytes). dtype casts floating weights (the balancing bias stays float32, as
    transformers keeps it); extra_config adds config.json keys such as bos/eos token ids."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = _to_hf(model)
    for name, tensor in tensors.items():
        if (
            dtype is not None
            and tensor.is_floating_point()
            and not name.endswith("e_score_correction_bias")
        ):
            tensor = tensor.to(dtype)
        # safetensors wants contiguous tensors that share no storage (the MTP copies do).
        tensors[name] = tensor.to("cpu").contiguous().clone()
    weight_dtype = dtype or model.embed_tokens.weight.dtype
    extra = dict(extra_config or {})
    config = hf_config(model.args, dtype=_dtype_name(weight_dtype), **extra)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {
        k: config[k]
        for k in ("bos_token_id", "eos_token_id", "pad_token_id")
        if config.get(k) is not None
    }
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")

    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        nbytes = tensors[name].numel() * tensors[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensors[name]
        size += nbytes
    for stale in list(out_dir.glob("model*.safetensors")) + list(
        out_dir.glob("model.safetensors.index.json")
    ):
        stale.unlink()
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out_dir / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _read_tensors(path: Path) -> dict[str, Tensor]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")
    tensors: dict[str, Tensor] = {}
    for file in files:
        tensors.update(load_file(str(path / file)))
    return tensors


def load_pretrained(
    path: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Transformer:
    """Our model from a checkpoint folder (ours or transformers' DeepseekV3), built directly on
    `device` without a throw-away random init. Weights keep the checkpoint's dtype unless
    `dtype` is given. MTP modules absent from the weights are freshly initialised (logged as a
    warning)."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in {path}")
    args = args_from_hf_config(json.loads(config_file.read_text()))
    state = _from_hf(_read_tensors(path), args)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = Transformer(args)
    expected = set(model.state_dict())
    unexpected = sorted(set(state) - expected)
    if unexpected:
        raise ValueError(
            f"{path}: tensors the architecture lacks: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    missing = sorted(expected - set(state))
    missing_main = [k for k in missing if not k.startswith("mtp.")]
    if missing_main:
        raise ValueError(
            f"{path}: missing tensors: {missing_main[:5]}{' ...' if len(missing_main) > 5 else ''}"
        )
    if missing:
        logger.warning(
            "%s has no MTP weights for %d MTP module(s): they are freshly initialised",
            path,
            args.n_mtp_layers,
        )
    model.to(dtype or state["embed_tokens.weight"].dtype)  # still on meta; float32 buffers stay
    model.to_empty(device=device)
    model.load_state_dict(state, strict=False)
    model.reset_buffers()
    if missing:
        model.init_weights(prefix="mtp.")
    return model
