"""HF-format checkpoints: our model against transformers' DeepseekV3ForCausalLM on the same
weights in both directions, DeepSeek's tensor layout, config keys vLLM needs, shards, dtypes."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from policy.checkpoint import args_from_hf_config, hf_config, load_pretrained, save_pretrained
from policy.model import ModelArgs, Transformer


def _random_bias(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.normal_(0, 0.05)


def _hf_model(path: Path):
    from transformers import DeepseekV3ForCausalLM

    return DeepseekV3ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _assert_close_logits(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    err = (ours - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    assert err <= 1e-5 * scale, f"{what}: max logit difference {err} (logit scale {scale})"


@pytest.mark.parametrize("variant", ["tiny", "tiny-yarn-no-q-lora"])
def test_transformers_loads_our_checkpoint_with_equal_logits(
    tmp_path: Path, tiny_args: ModelArgs, variant: str
) -> None:
    args = tiny_args
    if variant != "tiny":
        args = dataclasses.replace(
            args, q_lora_rank=0, rope_factor=4.0, original_seq_len=128, mscale=0.9
        )
    torch.manual_seed(0)
    model = Transformer(args).eval()
    _random_bias(model)
    save_pretrained(model, tmp_path)
    hf = _hf_model(tmp_path)
    tokens = torch.randint(0, args.vocab_size, (2, 200))  # past original_seq_len: YaRN matters
    with torch.no_grad():
        _assert_close_logits(model(tokens), hf(tokens).logits, f"{variant}: ours -> transformers")


def test_our_loader_reads_transformers_checkpoint(
    tmp_path: Path, tiny_args: ModelArgs, caplog
) -> None:
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    keys = {
        k: v
        for k, v in hf_config(tiny_args).items()
        if k not in ("policy_training", "architectures")
    }
    torch.manual_seed(1)
    hf = DeepseekV3ForCausalLM(DeepseekV3Config(**keys)).eval()  # transformers' own random init
    _random_bias(hf)
    hf.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING, logger="policy.checkpoint"):
        model = load_pretrained(tmp_path).eval()
    assert "no MTP weights" in caplog.text, caplog.text
    mtp = model.mtp[0]
    assert torch.equal(mtp.enorm.weight, torch.ones_like(mtp.enorm.weight)), (
        "fresh MTP norms start at 1"
    )
    std = mtp.block.self_attn.kv_b_proj.weight.std().item()
    assert abs(std - tiny_args.init_std) < 0.2 * tiny_args.init_std, f"fresh MTP init std {std}"
    tokens = torch.randint(0, tiny_args.vocab_size, (2, 64))
    with torch.no_grad():
        _assert_close_logits(model(tokens), hf(tokens).logits, "transformers -> ours")
    assert torch.isfinite(model.loss(tokens).mtp), "the freshly initialised MTP module must train"


def test_loader_accepts_fused_expert_layout(tmp_path: Path, tiny_args: ModelArgs) -> None:
    """transformers' in-memory names (3-D `experts.gate_up_proj`), should a checkpoint carry them."""
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    args = dataclasses.replace(tiny_args, n_mtp_layers=0)
    keys = {
        k: v for k, v in hf_config(args).items() if k not in ("policy_training", "architectures")
    }
    torch.manual_seed(2)
    hf = DeepseekV3ForCausalLM(DeepseekV3Config(**keys)).eval()
    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert "model.layers.1.mlp.experts.gate_up_proj" in state, sorted(state)[:10]
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    model = load_pretrained(tmp_path).eval()
    tokens = torch.randint(0, args.vocab_size, (1, 32))
    with torch.no_grad():
        _assert_close_logits(model(tokens), hf(tokens).logits, "fused layout -> ours")


def test_checkpoint_layout_config_and_round_trip(tmp_path: Path, tiny_args: ModelArgs) -> None:
    args = dataclasses.replace(tiny_args, seq_aux_loss_alpha=1e-4, mtp_loss_weight=0.1)
    torch.manual_seed(3)
    model = Transformer(args)
    _random_bias(model)
    save_pretrained(model, tmp_path, extra_config={"bos_token_id": 1, "eos_token_id": 2})
    config = json.loads((tmp_path / "config.json").read_text())
    for key, want in {
        "model_type": "deepseek_v3",
        "topk_method": "noaux_tc",
        "scoring_func": "sigmoid",
        "num_nextn_predict_layers": 1,
        "n_group": 2,
        "topk_group": 1,
        "first_k_dense_replace": 1,
        "eos_token_id": 2,
        "dtype": "float32",
        "aux_loss_alpha": 1e-4,
    }.items():
        assert config.get(key) == want, f"config.json {key}={config.get(key)!r}, want {want!r}"
    assert json.loads((tmp_path / "generation_config.json").read_text()) == {
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        bias = f.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias")
    mtp = f"model.layers.{args.n_layers}."
    for name in (
        "model.layers.1.mlp.experts.7.gate_proj.weight",
        "model.layers.1.mlp.experts.0.down_proj.weight",
        "model.layers.1.mlp.shared_experts.up_proj.weight",
        "model.layers.0.mlp.gate_proj.weight",
        mtp + "enorm.weight",
        mtp + "hnorm.weight",
        mtp + "eh_proj.weight",
        mtp + "shared_head.norm.weight",
        mtp + "shared_head.head.weight",
        mtp + "embed_tokens.weight",
        mtp + "self_attn.kv_b_proj.weight",
        mtp + "mlp.experts.3.up_proj.weight",
        "lm_head.weight",
        "model.norm.weight",
    ):
        assert name in names, f"{name} missing; have e.g. {sorted(names)[:8]}"
    assert not any("gate_up_proj" in n for n in names), (
        "experts must be stored per expert (DeepSeek layout)"
    )
    assert torch.equal(bias, model.layers[1].mlp.gate.e_score_correction_bias), (
        "balancing bias must be saved"
    )
    loaded = load_pretrained(tmp_path)
    assert loaded.args == args, (loaded.args, args)
    assert torch.equal(loaded.rope_cos, model.rope_cos) and torch.equal(
        loaded.rope_sin, model.rope_sin
    )
    assert loaded.layers[1].mlp.gate.tokens_per_expert.abs().sum() == 0
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), [
        k for k in ours if not torch.equal(ours[k], theirs[k])
    ]


def test_sharded_and_bfloat16_checkpoints(tmp_path: Path, tiny_args: ModelArgs) -> None:
    torch.manual_seed(4)
    model = Transformer(tiny_args)
    save_pretrained(model, tmp_path, dtype=torch.bfloat16, max_shard_bytes=2_000_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 1 and not (tmp_path / "model.safetensors").exists(), files
    with safe_open(
        str(tmp_path / index["weight_map"]["model.layers.1.mlp.gate.e_score_correction_bias"]), "pt"
    ) as f:
        assert (
            f.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias").dtype == torch.float32
        )
    loaded = load_pretrained(tmp_path)
    assert loaded.embed_tokens.weight.dtype == torch.bfloat16, loaded.embed_tokens.weight.dtype
    want = model.embed_tokens.weight.to(torch.bfloat16)
    assert torch.equal(loaded.embed_tokens.weight, want), "bf16 weights must round-trip exactly"
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"


def test_incompatible_config_names_the_keys() -> None:
    config = hf_config(ModelArgs())
    config.update(
        hidden_act="gelu",
        scoring_func="softmax",
        num_key_value_heads=2,
        rope_parameters={"rope_type": "longrope", "rope_theta": 1e4},
        quantization_config={"quant_method": "fp8"},
    )
    with pytest.raises(ValueError) as info:
        args_from_hf_config(config)
    message = str(info.value)
    for part in (
        "hidden_act='gelu'",
        "scoring_func='softmax'",
        "num_key_value_heads=2",
        "rope_type='longrope'",
        "quant_method='fp8'",
    ):
        assert part in message, message
    assert args_from_hf_config(hf_config(ModelArgs())) == ModelArgs()


_VLLM_PROMPT_LOGPROBS = """
import json, sys
from vllm import LLM, SamplingParams

def main():
    path, prompts = sys.argv[1], json.loads(sys.argv[2])
    llm = LLM(model=path, skip_tokenizer_init=True, dtype="float32", max_model_len=128,
              enforce_eager=True, gpu_memory_utilization=0.15)
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0, detokenize=False)
    results = llm.generate([{"prompt_token_ids": p} for p in prompts], params)
    logprobs = [[next(iter(d.values())).logprob for d in r.prompt_logprobs[1:]] for r in results]
    print("RESULT " + json.dumps(logprobs))

if __name__ == "__main__":
    main()
"""


@pytest.mark.slow
def test_vllm_loads_our_checkpoint_with_balancing_bias(
    tmp_path: Path, tiny_args: ModelArgs
) -> None:
    """vLLM reads our names and config (the bias needs topk_method noaux_tc): its prompt
    log-probs match ours far closer than they would with the bias ignored."""
    pytest.importorskip("vllm")
    torch.manual_seed(5)
    model = Transformer(tiny_args).eval()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buffer.normal_(0, 0.5)  # strong enough to change many routing choices
    save_pretrained(model, tmp_path / "ckpt", extra_config={"bos_token_id": 0, "eos_token_id": 1})
    prompts = [torch.randint(2, tiny_args.vocab_size, (40,)).tolist() for _ in range(2)]
    script = tmp_path / "vllm_logprobs.py"
    script.write_text(_VLLM_PROMPT_LOGPROBS)
    env = {**os.environ, "VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "ckpt"), json.dumps(prompts)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    theirs = torch.tensor(json.loads(lines[-1][len("RESULT ") :]))
    unbiased = Transformer(tiny_args).eval()
    unbiased.load_state_dict(model.state_dict())
    for name, buffer in unbiased.named_buffers():
        if name.endswith("e_score_correction_bias"):
            buffer.zero_()
    tokens = torch.tensor(prompts)
    with torch.no_grad():
        ours, without_bias = (
            m(tokens).log_softmax(-1)[:, :-1].gather(2, tokens[:, 1:, None])[..., 0]
            for m in (model, unbiased)
        )
    err = (ours - theirs).abs().max().item()
    bias_effect = (ours - without_bias).abs().max().item()
    # vLLM's CPU kernels compute partly in reduced precision: ~1e-2 here, vs ~1e-1 without the bias.
    assert err < 0.05 < bias_effect, f"vLLM vs ours {err}, bias effect {bias_effect}"
