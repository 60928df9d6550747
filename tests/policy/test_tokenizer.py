"""The Lean BPE tokenizer: training, Hugging Face format, exact round trips, the shipped copy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from policy.tokenizer import (
    BOS_TOKEN,
    DEFAULT_TOKENIZER_DIR,
    EOS_TOKEN,
    PAD_TOKEN,
    TokenizerError,
    load_tokenizer,
    read_corpus,
    train_tokenizer,
)

LEAN_UNICODE = [
    "theorem foo (n : ℕ) (h₀ : 0 < n) : ∀ x : ℤ, x ∣ n → ⟨x, h₀⟩ = «x» := by\n  simp",
    "example : ∑ k ∈ Finset.range 10, (k : ℝ) ≤ 45 ∧ ¬ (1 = 2) ↔ True := by\n    norm_num [Finset.sum_range_succ]",
    "  rcases h with ⟨a, b, hab⟩ | ⟨c⟩\n\t· exact ⟨_, rfl⟩ -- ∃ λ ⊢ ⬝ ∘ ⁻¹ √ π α₁ ≠ ≥",
    "«weird name» ⦃x⦄ ⟪inner⟫ 𝓝 ∞ 🙂 \r\n trailing   ",
]


def _proof_texts(shared_data: Path) -> list[str]:
    return list(read_corpus([shared_data / "minif2f_valid_proofs.jsonl"], fields=("code",)))


@pytest.fixture(scope="module")
def trained(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 1024-token tokenizer trained on miniF2F statements, saved and reloaded via AutoTokenizer."""
    tokenizer = train_tokenizer(read_corpus([shared_data / "minif2f.jsonl"]), vocab_size=1024)
    folder = tmp_path_factory.mktemp("tok")
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def test_saved_in_hf_format_with_special_tokens(trained) -> None:
    ids = {t: trained.convert_tokens_to_ids(t) for t in (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)}
    assert ids == {BOS_TOKEN: 0, EOS_TOKEN: 1, PAD_TOKEN: 2}, ids
    assert (trained.bos_token, trained.eos_token, trained.pad_token) == (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
    assert len(trained) == 1024, len(trained)
    encoded = trained("theorem x : 1 = 1 := rfl")["input_ids"]
    assert encoded[0] == 0 and 0 not in encoded[1:], f"bos must start the text once: {encoded}"


@pytest.mark.parametrize("text", LEAN_UNICODE)
def test_round_trip_is_exact_on_lean_unicode(trained, text: str) -> None:
    ids = trained(text)["input_ids"]
    decoded = trained.decode(ids, skip_special_tokens=True)
    assert decoded == text, f"{text!r} -> {ids} -> {decoded!r}"


def test_round_trip_is_exact_on_every_proof(shared_data: Path) -> None:
    tokenizer = load_tokenizer(DEFAULT_TOKENIZER_DIR)
    proofs = _proof_texts(shared_data)
    assert len(proofs) == 221, len(proofs)
    broken = [
        p[:60] for p in proofs
        if tokenizer.decode(tokenizer(p)["input_ids"], skip_special_tokens=True) != p
    ]
    assert not broken, f"{len(broken)} proofs do not round-trip, e.g. {broken[:2]}"


def test_lean_symbols_are_single_tokens_in_shipped_tokenizer() -> None:
    tokenizer = load_tokenizer(DEFAULT_TOKENIZER_DIR)
    for symbol in (" ℕ", " →", " ⟨", " :=", " by", "theorem", " nlinarith"):
        pieces = tokenizer.tokenize(symbol)
        assert len(pieces) == 1, f"{symbol!r} splits into {pieces}"


def test_shipped_tokenizer_is_reproduced_by_its_readme_command(shared_data: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from prover.cli import app

    corpus = ["minif2f.jsonl", "minif2f_valid_proofs.jsonl", "proofnet.jsonl"]
    args = ["model", "tokenizer", "--out", str(tmp_path / "tok"), "--vocab-size", "4096", "--min-frequency", "2"]
    for name in corpus:
        args += ["--corpus", str(shared_data / name)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ours = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    shipped = json.loads((DEFAULT_TOKENIZER_DIR / "tokenizer.json").read_text())
    assert ours["model"]["merges"] == shipped["model"]["merges"], "merges differ from the shipped ones"
    assert ours == shipped


def test_compression_on_proofs(shared_data: Path) -> None:
    tokenizer = load_tokenizer(DEFAULT_TOKENIZER_DIR)
    proofs = _proof_texts(shared_data)
    n_bytes = sum(len(p.encode()) for p in proofs)
    n_tokens = sum(len(tokenizer(p)["input_ids"]) for p in proofs)
    # 2.9 bytes/token measured; a byte-level tokenizer without merges would give 1.0.
    assert n_bytes / n_tokens > 2.5, f"{n_bytes / n_tokens:.2f} bytes per token"


def test_indentation_run_stays_one_token() -> None:
    tokenizer = load_tokenizer(DEFAULT_TOKENIZER_DIR)
    pieces = tokenizer.tokenize("by\n    nlinarith")
    assert pieces.count("Ġ") == 0 and any(set(p) == {"Ġ"} and len(p) == 3 for p in pieces), pieces


def test_read_corpus_reports_bad_json_with_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"code": "theorem a : True := trivial"}\n{not json\n')
    with pytest.raises(TokenizerError, match=r"bad\.jsonl:2: not JSON"):
        list(read_corpus([path]))


def test_read_corpus_reads_lean_folders_and_fields(tmp_path: Path) -> None:
    (tmp_path / "A.lean").write_text("theorem a : True := trivial\n")
    (tmp_path / "sets.jsonl").write_text(json.dumps({"formal_statement": "s", "name": "n", "goal": "g"}) + "\n")
    texts = list(read_corpus([tmp_path, tmp_path / "sets.jsonl"]))
    assert texts == ["theorem a : True := trivial\n", "s", "g"], texts
    with pytest.raises(TokenizerError, match="corpus file not found"):
        list(read_corpus([tmp_path / "missing.jsonl"]))


def test_load_tokenizer_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="tokenizer folder not found"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(TokenizerError, match="not a Hugging Face tokenizer"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(TokenizerError, match="cannot load the tokenizer") as info:
        load_tokenizer(tmp_path)
    assert "\n" not in str(info.value), str(info.value)


def test_vocab_too_small_is_rejected() -> None:
    with pytest.raises(TokenizerError, match="vocab_size 100 is below 259"):
        train_tokenizer(["theorem"], vocab_size=100)
