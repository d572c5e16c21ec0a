"""Greedy decoding that new rows join while it runs (continuous batching, for a server's concurrent visitors).

A visitor who arrives while others decode should not wait for the whole batch to end: `RollingGreedy` takes new
rows between two steps. Their encoder runs then, their cross-attention keys and values are appended to the
cache, and their self-attention cache is the running one's length, with the positions before they joined
masked. T5's relative position bias depends only on the distance between query and key, so a row that joined
at step t sees its own keys at the distances it would see alone. A row leaves the batch (cache, encoder states)
at its end of sequence or its own token limit.

Only plain greedy settings can share such a batch: no processor that reads a row's history or length
(no-repeat n-grams, repetition penalty, bad words, a minimum length), no sampling, no beams. `joinable(cfg)`
says whether settings qualify.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .config import GenerationConfig
from .fast_head import FastHead
from .modeling import KVCache, StackContext, padding_mask


def joinable(cfg: GenerationConfig) -> bool:
    """Whether rows decoded with `cfg` may join a running decode: plain greedy, nothing that reads a row's
    history or length."""
    return (not cfg.do_sample and cfg.num_beams == 1 and cfg.num_return_sequences == 1
            and cfg.repetition_penalty == 1.0 and not cfg.no_repeat_ngram_size and not cfg.bad_words_ids
            and cfg.min_total_length() <= 1 and not cfg.remove_invalid_values and not cfg.output_scores)


class RollingGreedy:
    """One greedy decode of `model` with `cfg`; rows `join` between steps and leave when done.

    `step()` decodes one token for every row and returns (tag, token, finished) per row; finished rows have left
    when it returns. `tags` are the caller's handles for its rows."""

    def __init__(self, model, cfg: GenerationConfig):
        if not joinable(cfg):
            raise ValueError("RollingGreedy needs plain greedy settings (see joinable)")
        self.model, self.cfg = model, cfg
        self.head = FastHead.for_model(model)
        self.eos = torch.tensor(cfg.eos_ids, dtype=torch.long)
        self.limit = cfg.total_length(1) - 1          # new tokens per row
        self.cache = KVCache(len(model.decoder.block))
        self.tags: list[Any] = []
        self.encoder_states: torch.Tensor | None = None   # (N, S, D)
        self.encoder_mask: torch.Tensor | None = None     # (N, 1, 1, S) additive, None: nothing masked
        self.sees: torch.Tensor | None = None             # (N, L) bool: the cached positions each row attends to
        self.last = torch.zeros(0, dtype=torch.long)      # (N,) each row's latest token
        self.made = torch.zeros(0, dtype=torch.long)      # (N,) tokens each row has generated

    def __len__(self) -> int:
        return len(self.tags)

    @torch.no_grad()
    def join(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, tags: list[Any]) -> None:
        """Adds rows: input_ids (n, S') right-padded, their mask (n, S'); they decode from the next step on."""
        model, device = self.model, self.model.device
        states = model.encode(input_ids.to(device), None if attention_mask is None
                              else attention_mask.to(device)).last_hidden_state
        dtype = states.dtype
        mask = padding_mask(attention_mask, dtype) if attention_mask is not None and not bool(
            attention_mask.all()) else None
        n, length = len(tags), self.cache.get_seq_length()
        if self.encoder_states is None:
            self.encoder_states, self.encoder_mask = states, mask
            for i, block in enumerate(model.decoder.block):
                self.cache.cross_k[i], self.cache.cross_v[i] = cross_keys_values(block, states)
            self.sees = torch.zeros(n, 0, dtype=torch.bool, device=device)
        else:
            old_s, new_s = self.encoder_states.shape[1], states.shape[1]
            width = max(old_s, new_s)
            old_mask = self.encoder_mask if self.encoder_mask is not None else torch.zeros(
                len(self), 1, 1, old_s, dtype=dtype, device=device)
            new_mask = mask if mask is not None else torch.zeros(n, 1, 1, new_s, dtype=dtype, device=device)
            masked = torch.finfo(dtype).min
            self.encoder_mask = torch.cat([F.pad(old_mask, (0, width - old_s), value=masked),
                                           F.pad(new_mask, (0, width - new_s), value=masked)])
            if bool((self.encoder_mask == 0).all()):   # nothing masked: the unmasked attention path
                self.encoder_mask = None
            self.encoder_states = torch.cat([F.pad(self.encoder_states, (0, 0, 0, width - old_s)),
                                             F.pad(states, (0, 0, 0, width - new_s))])
            for i, block in enumerate(model.decoder.block):
                k, v = cross_keys_values(block, states)
                self.cache.cross_k[i] = torch.cat([pad_keys(self.cache.cross_k[i], width),
                                                   pad_keys(k, width)])
                self.cache.cross_v[i] = torch.cat([pad_keys(self.cache.cross_v[i], width),
                                                   pad_keys(v, width)])
                if self.cache.self_k[i] is not None:   # new rows' self-attention history: empty, masked
                    self.cache.self_k[i] = with_empty_rows(self.cache.self_k[i], n)
                    self.cache.self_v[i] = with_empty_rows(self.cache.self_v[i], n)
            self.sees = torch.cat([self.sees, torch.zeros(n, length, dtype=torch.bool, device=device)])
        start = torch.full((n,), self.cfg.decoder_start_token_id, dtype=torch.long, device=device)
        self.last = torch.cat([self.last.to(device), start])
        self.made = torch.cat([self.made.to(device), torch.zeros(n, dtype=torch.long, device=device)])
        self.tags += list(tags)

    @torch.no_grad()
    def step(self) -> list[tuple[Any, int, bool]]:
        """One token for every row: [(tag, token, finished)]; finished rows leave the batch."""
        if not self.tags:
            return []
        past = self.cache.get_seq_length()
        sees = torch.cat([self.sees, torch.ones(len(self), 1, dtype=torch.bool, device=self.sees.device)], 1)
        self.sees = sees
        # rows that joined late mask the positions before them; with none, the plain decoder step
        mask = None if bool(sees.all()) else torch.where(
            sees, 0.0, torch.finfo(self.encoder_states.dtype).min).to(self.encoder_states.dtype)[:, None, None, :]
        positions = torch.arange(past, past + 1, device=self.last.device)
        ctx = StackContext(cache=self.cache, encoder_states=self.encoder_states, encoder_mask=self.encoder_mask)
        hidden = self.model.decoder(self.model.shared(self.last[:, None]), mask, positions, ctx).last_hidden_state
        tokens = self.head.argmax(hidden[:, -1, :], lambda scores, rows: scores)
        self.last, self.made = tokens, self.made + 1
        done = torch.isin(tokens, self.eos.to(tokens.device)) | (self.made >= self.limit)
        out = [(tag, int(t), bool(d)) for tag, t, d in zip(self.tags, tokens.tolist(), done.tolist())]
        if bool(done.any()):
            self.keep((~done).nonzero().squeeze(1))
        return out

    def keep(self, index: torch.Tensor) -> None:
        """Keeps rows `index` only."""
        if len(index) == 0:   # everyone is done: an empty decode, ready for rows that join next
            self.__init__(self.model, self.cfg)
            return
        self.cache.reorder(index, cross=True)
        self.encoder_states = self.encoder_states.index_select(0, index)
        if self.encoder_mask is not None:
            self.encoder_mask = self.encoder_mask.index_select(0, index)
        self.sees = self.sees.index_select(0, index)
        self.last, self.made = self.last.index_select(0, index), self.made.index_select(0, index)
        keep = index.tolist()
        self.tags = [self.tags[i] for i in keep]
        self.forget_unseen()

    def forget_unseen(self) -> None:
        """Drops the cached positions no remaining row attends to (those before the earliest remaining row
        joined), so a decode that visitors keep joining does not grow without end. Every position moves by the
        same amount, and the relative bias depends only on distances: nothing a row computes changes."""
        seen = self.sees.any(0)
        first = int(seen.int().argmax()) if bool(seen.any()) else self.sees.shape[1]
        if first == 0:
            return
        self.sees = self.sees[:, first:]
        for i, length in enumerate(self.cache.lengths):
            self.cache.self_k[i] = self.cache.self_k[i][:, :, first:]
            self.cache.self_v[i] = self.cache.self_v[i][:, :, first:]
            self.cache.lengths[i] = length - first


def pad_keys(t: torch.Tensor, width: int) -> torch.Tensor:
    """(N, H, S, K) zero-padded to S = width."""
    return F.pad(t, (0, 0, 0, width - t.shape[2]))


def cross_keys_values(block, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoder block's cross-attention keys and values for encoder states, on the block's device."""
    device = block.layer[1].layer_norm.weight.device   # never quantized; blocks may sit apart (device_map)
    return block.cross_keys_values(states if device.type == "meta" else states.to(device))


def with_empty_rows(buffer: torch.Tensor, n: int) -> torch.Tensor:
    """A self-attention buffer (N, H, C, K) with n zero rows after its own."""
    return torch.cat([buffer, buffer.new_zeros(n, *buffer.shape[1:])])
