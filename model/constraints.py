"""Constrained decoding: `prefix_allowed_tokens_fn`s for `generate()`.

`context_span_constraint` lets the decoder write only a contiguous run of a given token sequence (a passage),
then `</s>`: "answer from the passage only". It is exact on token ids, so the answer is always a span of the
passage as tokenized (its text, decoded, is found in the passage again by `app.align`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Callable

import torch

PrefixFn = Callable[[int, torch.Tensor], list[int]]


class SpanIndex:
    """Where each token run occurs in `ids`: for a run g, the positions just after each occurrence of g.

    Built incrementally and memoised by run: ends(g + [t]) = {j + 1 for j in ends(g) if ids[j] == t}, so a
    decoding step costs the number of occurrences of its prefix, not the passage's length."""

    def __init__(self, ids: Sequence[int]):
        self.ids = list(ids)
        self._ends: dict[tuple[int, ...], tuple[int, ...]] = {(): tuple(range(len(self.ids)))}

    def ends(self, run: tuple[int, ...]) -> tuple[int, ...]:
        """Positions just after every occurrence of `run` (for the empty run: every position)."""
        known = self._ends.get(run)
        if known is not None:
            return known
        # p ends an occurrence of run[:-1] (ids[p - len + 1: p] == run[:-1]); it continues when ids[p] == run[-1]
        found = tuple(p + 1 for p in self.ends(run[:-1]) if p < len(self.ids) and self.ids[p] == run[-1])
        self._ends[run] = found
        return found

    def next_tokens(self, run: tuple[int, ...]) -> list[int]:
        """The tokens that can follow `run` inside `ids` (sorted, distinct); empty when none can."""
        return sorted({self.ids[j] for j in self.ends(run) if j < len(self.ids)})


def context_span_constraint(context_ids: Sequence[int], eos_id: int, start_id: int = 0) -> PrefixFn:
    """A `prefix_allowed_tokens_fn` under which every generated sequence (after the decoder start token
    `start_id`) is a contiguous run of `context_ids`, of at least one token, followed by `eos_id`.

    `context_ids`: the passage's token ids, without special tokens (eos inside them is dropped). The same
    constraint serves every row and batch id. A row that already holds eos (finished, padded) may only repeat
    eos; generate() pads it anyway."""
    ids = [int(t) for t in context_ids if int(t) != eos_id]
    if not ids:
        raise ValueError("the context has no tokens to answer from")
    index = SpanIndex(ids)

    def allowed(batch_id: int, sent: torch.Tensor) -> list[int]:
        row = [int(t) for t in sent.tolist()]
        run = tuple(row[1:] if row and row[0] == start_id else row)
        if eos_id in run:
            return [eos_id]
        tokens = index.next_tokens(run)
        return tokens + [eos_id] if run else tokens

    return allowed


def is_span(run: Sequence[int], ids: Sequence[int]) -> bool:
    """True when `run` occurs contiguously in `ids` (an empty run does)."""
    run, ids = list(run), list(ids)
    return any(ids[i:i + len(run)] == run for i in range(len(ids) - len(run) + 1))
