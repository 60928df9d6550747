"""`prover model init / info / tokenizer`: complete checkpoints, exact counts, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

from policy.model import count_parameters
from policy.presets import preset
from prover.cli import app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _error_line(result) -> str:
    """The single stderr line of a failed command (exit 2)."""
    assert result.exit_code == 2, f"exit {result.exit_code}: {result.output}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), f"want one error line, got {lines}"
    return lines[0]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("init") / "tiny"
    result = _run("model", "init", "--preset", "tiny", "--out", out, "--seed", "0")
    assert result.exit_code == 0, result.output
    return out


def test_init_writes_a_complete_checkpoint(tiny_dir: Path) -> None:
    names = sorted(p.name for p in tiny_dir.iterdir())
    for needed in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert needed in names, f"{needed} missing from {names}"
    config = json.loads((tiny_dir / "config.json").read_text())
    assert (config["vocab_size"], config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (4096, 0, 1, 2), config
    assert (config["topk_method"], config["scoring_func"]) == ("noaux_tc", "sigmoid"), config
    generation = json.loads((tiny_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 1, generation


def test_init_checkpoint_loads_in_transformers(tiny_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    ids = tokenizer("theorem t : 1 + 1 = 2 := by", return_tensors="pt")["input_ids"]
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], 4096), logits.shape
    assert torch.isfinite(logits).all(), "non-finite logits from a fresh checkpoint"


def test_info_json_counts_and_layout(tiny_dir: Path) -> None:
    result = _run("model", "info", tiny_dir, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    expected = count_parameters(preset("tiny", vocab_size=4096))
    params = info["parameters"]
    assert (params["total"], params["active_per_token"], params["mtp_total"]) == (
        expected["total"], expected["active"], expected["mtp_total"]), params
    assert params["active_per_token"] < params["total"], params
    layout = info["layout"]
    assert (layout["layers"], layout["dense_layers"], layout["moe_layers"], layout["mtp_depth"]) == (2, 1, 1, 1), layout
    assert layout["mla"] == {"q_lora_rank": 128, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
                             "qk_rope_head_dim": 64, "v_head_dim": 128}, layout["mla"]
    assert (info["vocab_size"], info["dtype"], info["tokenizer"]["size"]) == (4096, "float32", 4096), info
    # The file holds the main model and the MTP module (plus DeepSeek's copies of the
    # embedding and head inside each MTP layer), so at least total_with_mtp parameters.
    assert info["weights"]["parameters"] >= expected["total_with_mtp"], info["weights"]


def test_info_table_for_people(tiny_dir: Path) -> None:
    result = _run("model", "info", tiny_dir)
    assert result.exit_code == 0, result.output
    for needed in ("active per token", "1 dense, 1 MoE", "8 routed (top 2)", "kv_lora_rank 512", "MTP depth"):
        assert needed in result.stdout, f"{needed!r} not in:\n{result.stdout}"


def test_seed_and_dtype(tiny_dir: Path, tmp_path: Path) -> None:
    same = tmp_path / "same"
    assert _run("model", "init", "--preset", "tiny", "--out", same, "--seed", "0").exit_code == 0
    assert (same / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes(), "seed 0 twice differs"
    half = tmp_path / "half"
    result = _run("model", "init", "--preset", "tiny", "--out", half, "--seed", "1", "--dtype", "bfloat16", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert (info["dtype"], info["weights"]["dtypes"]) == ("bfloat16", ["BF16", "F32"]), info["weights"]
    with safe_open(str(half / "model.safetensors"), "pt") as a, safe_open(str(tiny_dir / "model.safetensors"), "pt") as b:
        name = "model.embed_tokens.weight"
        assert not (a.get_tensor(name).float() == b.get_tensor(name)).all(), "seed 1 equals seed 0"


def test_init_with_own_tokenizer_sets_vocab(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.lean"
    corpus.write_text("theorem t (n : ℕ) : n + 0 = n := by\n  simp\n" * 50)
    assert _run("model", "tokenizer", "--corpus", corpus, "--out", tmp_path / "tok", "--vocab-size", "300").exit_code == 0
    result = _run("model", "init", "--preset", "tiny", "--out", tmp_path / "m", "--tokenizer", tmp_path / "tok", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["vocab_size"] == info["tokenizer"]["size"] <= 300, info


def test_info_other_hf_model_counts_weights(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2))
    model.save_pretrained(tmp_path)
    result = _run("model", "info", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    total = sum(p.numel() for p in model.state_dict().values())
    assert (info["model_type"], info["parameters"]["total"]) == ("llama", total), info
    assert "layout" not in info and info["tokenizer"] is None, info


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--preset", "huge"], "unknown preset 'huge'; known presets: tiny, small, base"),
        (["--preset", "tiny", "--dtype", "int8"], "unknown --dtype 'int8'"),
        (["--preset", "tiny", "--tokenizer", "/nonexistent/tok"], "--tokenizer: tokenizer folder not found"),
    ],
)
def test_init_bad_input(args: list[str], needle: str, tmp_path: Path) -> None:
    line = _error_line(_run("model", "init", "--out", tmp_path / "out", *args))
    assert needle in line, line


def test_init_refuses_non_empty_out_and_invalid_tokenizer(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x")
    line = _error_line(_run("model", "init", "--preset", "tiny", "--out", tmp_path))
    assert "is not empty; pass --force" in line, line
    forced = _run("model", "init", "--preset", "tiny", "--out", tmp_path, "--force")
    assert forced.exit_code == 0 and (tmp_path / "config.json").is_file(), forced.output
    not_tok = tmp_path / "empty"
    not_tok.mkdir()
    line = _error_line(_run("model", "init", "--preset", "tiny", "--out", tmp_path / "o", "--tokenizer", not_tok))
    assert "not a Hugging Face tokenizer" in line, line


def test_info_bad_input(tmp_path: Path) -> None:
    assert "has no config.json" in _error_line(_run("model", "info", tmp_path))
    (tmp_path / "config.json").write_text("{nope")
    assert "is not valid JSON" in _error_line(_run("model", "info", tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "deepseek_v3", "scoring_func": "softmax",
                                                      "vocab_size": 8, "hidden_size": 8,
                                                      "num_hidden_layers": 1, "num_attention_heads": 1}))
    assert "scoring_func='softmax'" in _error_line(_run("model", "info", tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert "no *.safetensors weights" in _error_line(_run("model", "info", tmp_path))


def test_tokenizer_bad_input(tmp_path: Path) -> None:
    assert "corpus file not found" in _error_line(
        _run("model", "tokenizer", "--corpus", tmp_path / "none.jsonl", "--out", tmp_path / "t"))
    (tmp_path / "empty.jsonl").write_text("\n")
    assert "no training text found" in _error_line(
        _run("model", "tokenizer", "--corpus", tmp_path / "empty.jsonl", "--out", tmp_path / "t"))


def test_init_rejects_tokenizer_without_eos(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE())).save_pretrained(tmp_path / "tok")
    line = _error_line(_run("model", "init", "--preset", "tiny", "--out", tmp_path / "m", "--tokenizer", tmp_path / "tok"))
    assert "has no eos token" in line, line


def test_plan_deepseek_v3_on_its_published_mesh() -> None:
    """DeepSeek-V3's training mesh (2,048 GPUs of 80 GB, EP 64): 4 experts per GPU, 671B
    parameters, and the step fits; --json is exactly one document."""
    result = _run("model", "plan", "--preset", "deepseek-v3-671b", "--gpus", "2048", "--gpu-memory", "80",
                  "--ep", "64", "--seq", "4096", "--micro-batch", "1", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["mesh"]["experts_per_gpu"] == 4 and plan["mesh"]["edp"] == 32, plan["mesh"]
    assert round(plan["parameters"]["total_without_mtp"] / 1e9) == 671, plan["parameters"]
    assert plan["fits"] is True, plan["memory_gib"]
    table = _run("model", "plan", "--preset", "deepseek-v3-671b", "--gpus", "2048", "--gpu-memory", "80", "--ep", "64")
    assert table.exit_code == 0 and "4 experts per GPU" in table.stdout, table.output


def test_plan_says_when_it_does_not_fit() -> None:
    result = _run("model", "plan", "--preset", "deepseek-v3-671b", "--gpus", "64", "--gpu-memory", "80",
                  "--ep", "64", "--json")
    plan = json.loads(result.stdout)
    assert plan["fits"] is False and plan["memory_gib"]["total"] > 80, plan["memory_gib"]


def test_plan_bad_mesh_is_one_line_with_the_numbers() -> None:
    line = _error_line(_run("model", "plan", "--preset", "deepseek-v3-671b", "--gpus", "2048",
                            "--gpu-memory", "80", "--ep", "48"))
    assert "learner.ep = 48 does not divide the world size 2048" in line, line
    line = _error_line(_run("model", "plan", "--preset", "huge", "--gpus", "8", "--gpu-memory", "80"))
    assert "unknown preset 'huge'" in line, line


def test_convert_hf_to_sharded_and_back(tiny_dir: Path, tmp_path: Path) -> None:
    """HF -> sharded -> HF (float32) gives back the same tensors, config and tokenizer."""
    result = _run("model", "convert", tiny_dir, "--out", tmp_path / "sharded")
    assert result.exit_code == 0 and "hf -> sharded" in result.stdout, result.output
    result = _run("model", "convert", tmp_path / "sharded", "--out", tmp_path / "hf", "--dtype", "float32")
    assert result.exit_code == 0 and "sharded -> hf" in result.stdout, result.output
    with safe_open(str(tiny_dir / "model.safetensors"), "pt") as a, safe_open(str(tmp_path / "hf" / "model.safetensors"), "pt") as b:
        names = sorted(a.keys())
        assert names == sorted(b.keys())
        differ = [k for k in names if not a.get_tensor(k).equal(b.get_tensor(k))]
    assert not differ, differ[:3]
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["eos_token_id"] == \
        json.loads((tiny_dir / "config.json").read_text())["eos_token_id"]


def test_convert_bad_input_is_one_line(tmp_path: Path) -> None:
    line = _error_line(_run("model", "convert", tmp_path, "--out", tmp_path / "x"))
    assert "neither a sharded checkpoint" in line, line
