"""Loss positions and row layout of SFT batches, against hand-built expectations."""

from __future__ import annotations

import pytest
import torch

from policy.model import IGNORE_INDEX as X
from prover.rl.packing import TokenizedExample, collate, completion_targets, pack, tokenize_example


def test_loss_only_on_completion_tokens() -> None:
    ex = completion_targets([10, 11, 12], [20, 21, 2])   # 2 = EOS
    assert ex.tokens == (10, 11, 12, 20, 21, 2), ex
    # position i predicts token i+1; only completion tokens are targets: 20, 21, EOS.
    assert ex.targets == (X, X, 20, 21, 2, X), ex.targets
    assert ex.trained_tokens == 3


class _Tok:
    eos_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [ord(c) for c in text]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def test_prompt_tokenized_alone_with_specials_then_completion_and_eos() -> None:
    ex = tokenize_example(_Tok(), "ab", "c")
    assert ex.tokens == (1, 97, 98, 99, 2) and ex.targets == (X, X, 99, 2, X), ex


def _ex(n: int, start: int) -> TokenizedExample:
    return completion_targets(list(range(start, start + 1)), list(range(start + 1, start + n)))


def test_pack_keeps_order_and_numbers_documents() -> None:
    a, b, c = _ex(4, 100), _ex(3, 200), _ex(5, 300)
    rows = pack([a, b, c], max_len=8)
    assert [r.tokens for r in rows] == [a.tokens + b.tokens, c.tokens], rows
    assert rows[0].doc_ids == (0, 0, 0, 0, 1, 1, 1) and rows[1].doc_ids == (0,) * 5, rows
    assert rows[0].targets == a.targets + b.targets   # the last token of a predicts nothing
    assert rows[0].targets[3] == X
    with pytest.raises(ValueError, match="9 tokens exceeds the row length 8"):
        pack([_ex(9, 0)], max_len=8)


def test_collate_pads_with_a_document_of_its_own_and_no_targets() -> None:
    rows = pack([_ex(3, 100), _ex(2, 200), _ex(4, 300)], max_len=5)
    batch = collate(rows, pad_id=0)
    assert batch.tokens.tolist() == [[100, 101, 102, 200, 201], [300, 301, 302, 303, 0]], batch.tokens
    assert batch.doc_ids.tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, 0, 1]], batch.doc_ids
    # one prompt token each: it predicts the first completion token; a last token predicts nothing
    assert batch.targets.tolist() == [[101, 102, X, 201, X], [301, 302, 303, X, X]], batch.targets
    assert batch.attention_mask.tolist() == [[True] * 5, [True] * 4 + [False]]
    assert batch.trained_tokens == 6 and batch.tokens.dtype == torch.long
