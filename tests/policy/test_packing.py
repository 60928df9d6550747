"""Packed documents in the policy: positions restart and attention stays inside each document,
MTP never predicts across a boundary, and a packed row computes what its documents compute alone."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from policy.model import IGNORE_INDEX, ModelArgs, Transformer, document_layout


def test_document_layout_matches_hand_built_positions_and_mask() -> None:
    doc_ids = torch.tensor([[0, 0, 0, 1, 1, 2]])
    positions, mask = document_layout(doc_ids)
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0]], positions
    expected = torch.tensor([
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 0, 0, 1],
    ], dtype=torch.bool)
    assert mask.shape == (1, 1, 6, 6), mask.shape
    assert torch.equal(mask[0, 0], expected), mask[0, 0].int()


def _sequences(vocab: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Three sequences with a prompt (no loss) and a completion (loss)."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for length, prompt in ((7, 3), (5, 2), (9, 4)):
        tokens = torch.randint(1, vocab, (length,), generator=gen)
        targets = torch.full((length,), IGNORE_INDEX)
        targets[prompt - 1:length - 1] = tokens[prompt:]
        out.append((tokens, targets))
    return out


def _depth_count(targets: torch.Tensor, k: int) -> int:
    return int((targets[k:] != IGNORE_INDEX).sum())


@pytest.mark.parametrize("attn_impl", ["naive", "absorb"])
def test_packed_row_gives_the_losses_of_its_sequences_alone(micro_args: ModelArgs, attn_impl: str) -> None:
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(micro_args, attn_impl=attn_impl)).eval()
    seqs = _sequences(micro_args.vocab_size)
    # Row 0 packs all three; padding (token 0, ignored targets, its own document) ends it.
    tokens = torch.cat([t for t, _ in seqs] + [torch.zeros(3, dtype=torch.long)])[None]
    targets = torch.cat([y for _, y in seqs] + [torch.full((3,), IGNORE_INDEX)])[None]
    doc_ids = torch.cat([torch.full((len(t),), i) for i, (t, _) in enumerate(seqs)] + [torch.full((3,), 3)])[None]
    with torch.no_grad():
        packed = model.loss(tokens, targets=targets, doc_ids=doc_ids)
        alone = [model.loss(t[None], targets=y[None]) for t, y in seqs]
        packed_logits = model(tokens, doc_ids=doc_ids)[0]
        alone_logits = torch.cat([model(t[None])[0] for t, _ in seqs])
    n_main = sum(int((y != IGNORE_INDEX).sum()) for _, y in seqs)
    main_sum = sum(float(a.main) * int((y != IGNORE_INDEX).sum()) for a, (_, y) in zip(alone, seqs, strict=True))
    assert float(packed.main) * n_main == pytest.approx(main_sum, rel=1e-5), (float(packed.main), main_sum / n_main)
    n_mtp = sum(_depth_count(y, 1) for _, y in seqs)
    mtp_sum = sum(float(a.mtp_depths[0]) * _depth_count(y, 1) for a, (_, y) in zip(alone, seqs, strict=True))
    assert float(packed.mtp_depths[0]) * n_mtp == pytest.approx(mtp_sum, rel=1e-5), (
        "MTP depth 1 over the packed row vs its sequences alone", float(packed.mtp_depths[0]), mtp_sum / n_mtp)
    n = alone_logits.shape[0]
    diff = (packed_logits[:n] - alone_logits).abs().max()
    assert diff < 1e-4, f"packed logits differ from the sequences' own by {diff}"


def test_default_targets_stop_at_document_boundaries(micro_args: ModelArgs) -> None:
    torch.manual_seed(0)
    model = Transformer(micro_args).eval()
    a, b = torch.tensor([5, 6, 7, 8]), torch.tensor([9, 10, 11])
    with torch.no_grad():
        packed = model.loss(torch.cat([a, b])[None], doc_ids=torch.tensor([[0] * 4 + [1] * 3]))
        alone = [model.loss(x[None]) for x in (a, b)]
    # 3 + 2 next-token targets: none predicts b's first token from a's last.
    expected = (float(alone[0].main) * 3 + float(alone[1].main) * 2) / 5
    assert float(packed.main) == pytest.approx(expected, rel=1e-5), (float(packed.main), expected)


def test_packed_batch_rejects_a_kv_cache(micro_args: ModelArgs) -> None:
    model = Transformer(micro_args).eval()
    tokens = torch.tensor([[1, 2, 3]])
    with model.kv_cache(1, 8), pytest.raises(ValueError, match="packed documents"):
        model(tokens, doc_ids=torch.zeros_like(tokens))
