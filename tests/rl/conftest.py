"""Fixtures for the learning tests: a very small policy checkpoint that vLLM still loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import SHARED_DATA

PROOFS = SHARED_DATA / "minif2f_valid_proofs.jsonl"


@pytest.fixture(autouse=True)
def _hf_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("VLLM_NO_USAGE_STATS", "1")


@pytest.fixture(scope="session")
def mini_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our policy small enough to train on this CPU: width 128, a dense block and an MoE block
    (4 routed experts, top-2, one shared), two MLA heads with the dims vLLM's CPU MLA backend
    accepts (qk_nope 128, qk_rope 64, v 128, kv_lora 512), one MTP module; the repository's
    tokenizer. A Hugging Face folder. (One layer cannot memorise a proof in 100 steps: tokens
    whose successor depends on more than the previous token need two.)"""
    from policy.checkpoint import save_pretrained
    from policy.model import ModelArgs, Transformer
    from policy.tokenizer import DEFAULT_TOKENIZER_DIR, load_tokenizer

    tokenizer = load_tokenizer(DEFAULT_TOKENIZER_DIR)
    args = ModelArgs(vocab_size=len(tokenizer), dim=128, n_layers=2, n_dense_layers=1, max_seq_len=1024,
                     n_heads=2, q_lora_rank=0, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
                     v_head_dim=128, inter_dim=256, moe_inter_dim=64, n_routed_experts=4, n_activated_experts=2,
                     n_shared_experts=1, n_expert_groups=1, n_limited_groups=1, n_mtp_layers=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Transformer(args)
    out = tmp_path_factory.mktemp("policy") / "mini"
    special = {f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")}
    save_pretrained(model, out, extra_config=special)
    tokenizer.save_pretrained(out)
    return out


def shortest_proofs(n: int, folder: Path) -> Path:
    """The `n` shortest shared proofs (rows of minif2f_valid_proofs.jsonl) in a corpus file."""
    if not PROOFS.is_file():
        pytest.skip(f"shared proofs not found at {PROOFS}")
    rows = [json.loads(line) for line in PROOFS.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows.sort(key=lambda r: (len(r["code"]), r["name"]))
    path = folder / f"shortest-{n}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows[:n]), encoding="utf-8")
    return path
