"""From (prompt, completion) texts to training rows: tokens, loss targets, document ids.

Loss only on the completion: a sequence is the prompt's tokens, then the completion's tokens and
EOS; `targets[i]` is the token at i + 1 when that token belongs to the completion (the prompt's
last token predicts the completion's first), IGNORE_INDEX everywhere else. The prompt is
tokenized alone, exactly as an engine tokenizes the prompt it is given, and the completion
after it, so the trained tokens are the ones the policy samples after that prompt.

Packing (`pack`) puts several sequences into one row of at most `max_len` tokens, in order,
starting a new row when the next one does not fit. Each token carries the index of its sequence
in `doc_ids`; the model (`policy.model.document_layout`) turns these into positions that restart
at 0 for each sequence and a block-diagonal causal attention mask, so no token sees another
sequence, and the MTP targets stop at each sequence's end. A packed row therefore gives, summed
over its tokens, exactly the losses of its sequences run one per row (tests/rl/test_packing.py).
Rows of a micro-batch are right-padded to the longest; padding is one more document, with
ignored targets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from policy.model import IGNORE_INDEX


@dataclass(frozen=True)
class TokenizedExample:
    """One training sequence: `tokens` = prompt + completion + EOS, `targets` aligned with it
    (IGNORE_INDEX where no loss)."""

    tokens: tuple[int, ...]
    targets: tuple[int, ...]

    @property
    def trained_tokens(self) -> int:
        return sum(t != IGNORE_INDEX for t in self.targets)


def completion_targets(prompt_ids: Sequence[int], completion_ids: Sequence[int]) -> TokenizedExample:
    """The sequence and its targets: loss on every completion token, none on the prompt."""
    if not completion_ids:
        raise ValueError("empty completion: nothing to train on")
    tokens = tuple(prompt_ids) + tuple(completion_ids)
    n_prompt = len(prompt_ids)
    targets = tuple(tokens[i + 1] if i + 1 >= n_prompt and i + 1 < len(tokens) else IGNORE_INDEX
                    for i in range(len(tokens)))
    return TokenizedExample(tokens, targets)


def tokenize_example(tokenizer: Any, prompt: str, completion: str) -> TokenizedExample:
    """Tokenize as an engine sees it: the prompt alone (with the tokenizer's own special tokens,
    e.g. BOS), the completion's tokens after it, then EOS (where sampling stops)."""
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: a trained completion could never stop")
    return completion_targets(prompt_ids, [*completion_ids, tokenizer.eos_token_id])


@dataclass(frozen=True)
class Row:
    """One row of a batch: several sequences back to back (`doc_ids` numbers them from 0)."""

    tokens: tuple[int, ...]
    targets: tuple[int, ...]
    doc_ids: tuple[int, ...]


def pack(examples: Sequence[TokenizedExample], max_len: int) -> list[Row]:
    """Sequences into rows of at most `max_len` tokens, in order (a row is closed when the next
    sequence does not fit). A sequence longer than `max_len` is an error: drop those first."""
    rows: list[Row] = []
    tokens: list[int] = []
    targets: list[int] = []
    doc_ids: list[int] = []
    for ex in examples:
        if len(ex.tokens) > max_len:
            raise ValueError(f"a sequence of {len(ex.tokens)} tokens exceeds the row length {max_len}")
        if tokens and len(tokens) + len(ex.tokens) > max_len:
            rows.append(Row(tuple(tokens), tuple(targets), tuple(doc_ids)))
            tokens, targets, doc_ids = [], [], []
        doc = doc_ids[-1] + 1 if doc_ids else 0
        tokens += ex.tokens
        targets += ex.targets
        doc_ids += [doc] * len(ex.tokens)
    if tokens:
        rows.append(Row(tuple(tokens), tuple(targets), tuple(doc_ids)))
    return rows


def unpacked(examples: Sequence[TokenizedExample]) -> list[Row]:
    """One sequence per row (no packing)."""
    return [Row(ex.tokens, ex.targets, (0,) * len(ex.tokens)) for ex in examples]


@dataclass(frozen=True)
class Batch:
    """A micro-batch: tokens, targets, doc_ids (B, T) int64 and the padding mask (B, T) bool
    (True = a real token, for models that take an attention mask instead of doc_ids)."""

    tokens: Tensor
    targets: Tensor
    doc_ids: Tensor
    attention_mask: Tensor

    @property
    def trained_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device) for t in (self.tokens, self.targets, self.doc_ids, self.attention_mask)))


def collate(rows: Sequence[Row], pad_id: int = 0) -> Batch:
    """Rows right-padded to the longest. Padding: token `pad_id`, ignored targets, and a
    document id of its own (one past the row's last), so it attends only to itself."""
    width = max(len(r.tokens) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    doc_ids = torch.empty((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        n = len(row.tokens)
        tokens[i, :n] = torch.tensor(row.tokens)
        targets[i, :n] = torch.tensor(row.targets)
        doc_ids[i, :n] = torch.tensor(row.doc_ids)
        doc_ids[i, n:] = row.doc_ids[-1] + 1
        mask[i, :n] = True
    return Batch(tokens, targets, doc_ids, mask)


def batches(rows: Sequence[Row], micro_batch_size: int, pad_id: int = 0) -> Iterator[Batch]:
    """Consecutive rows in micro-batches (the last one may be smaller)."""
    for start in range(0, len(rows), micro_batch_size):
        yield collate(rows[start:start + micro_batch_size], pad_id)
