"""Rank classification, as T0 and mT0 are evaluated (bigscience-workshop/t-zero `evaluation/`): each answer
choice is scored by the log-probability a text-to-text model gives it as the target of the prompt.

The prompt is tokenized without its closing `</s>`, each choice with it; a choice's score is the sum of its
tokens' log-probabilities under teacher forcing (decoder input = the choice shifted right), with no length
normalisation unless asked. The encoder runs once per batch of prompts; the decoder runs once over every
(prompt, choice) pair; the output projection once per distinct decoder state (choices of a prompt share their
first position, and any common first words).
"""
from __future__ import annotations

import torch

from .fast_head import FastHead
from .generation import log_normalizer
from .modeling import KVCache, shift_right

DEFAULT_MAX_INPUT_TOKENS = 512
LOGITS_CHUNK = 2 ** 25   # elements of fp32 logits held at once (128 MB): B*K rows x T x 250112 can be far more
PACK_ROWS = 32


def pad_rows(rows: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (N, T) and their mask (N, T) from N lists of ids."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def target_log_probs(model, states: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None,
                     groups: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probability of each target token: decoder states (N, T, D), targets (N, T) -> (N, T) fp32.

    The output projection (the cost: 250k logits per row) runs once per distinct decoder state: only where
    `mask` (N, T) is set (not on padding), and once for positions whose decoder input is the same prefix in the
    same `groups` (N,) (rows decoded against the same encoder states: choices of one prompt share the start
    token, and choices sharing first words share more). Rows of logits are computed and normalised (fp32) a few
    at a time, so (N, T, V) logits are never held. Positions outside `mask` get 0."""
    n, t = targets.shape
    keep = torch.ones_like(targets, dtype=torch.bool) if mask is None else mask.bool()
    group_ids = (torch.arange(n) if groups is None else groups).tolist()
    rows, cols = keep.nonzero(as_tuple=True)
    seqs = targets.tolist()
    unique: dict[tuple, int] = {}
    first, slot = [], []
    for r, c in zip(rows.tolist(), cols.tolist()):
        key = (group_ids[r], *seqs[r][:c])   # the decoder input at position c: start token + targets[:c]
        if key not in unique:
            unique[key] = len(first)
            first.append((r, c))
        slot.append(unique[key])
    where = torch.tensor(first, dtype=torch.long).view(-1, 2)
    distinct = states[where[:, 0], where[:, 1]]                                       # (U, D)
    slot = torch.tensor(slot, dtype=torch.long)
    wanted = targets[rows, cols].to(distinct.device)
    step = max(PACK_ROWS, LOGITS_CHUNK // model.config.vocab_size // PACK_ROWS * PACK_ROWS)
    # Four distinct states or more: MKL's packed head, PACK_ROWS rows a time (on 2 cores, mt5-small's head
    # costs about as much for 32 packed rows as F.linear does for 8; F.linear is fast up to 3 rows only).
    # Its last bits may differ from F.linear's: scores are sums compared within a tolerance, not argmaxes.
    head = FastHead.for_model(model, rows=PACK_ROWS if len(first) > 3 else None, same_bits=False)
    logp = torch.empty(len(slot), dtype=torch.float32, device=distinct.device)
    for i in range(0, len(first), step):
        logits = head.logits_in_blocks(distinct[i: i + step])                          # (u', V) fp32
        lse = log_normalizer(logits)[:, 0]      # log-probabilities only where they are wanted
        use = ((slot >= i) & (slot < i + step)).nonzero().squeeze(1)
        logp[use] = logits[slot[use] - i, wanted[use]] - lse[slot[use] - i]
    out = torch.zeros(n, t, dtype=torch.float32, device=distinct.device)
    out[rows, cols] = logp
    return out


def cross_attention_cache(model, states: torch.Tensor, repeat: int) -> KVCache:
    """A decoder cache holding each layer's cross-attention keys and values for encoder states (B, S, D), each
    row repeated `repeat` times: the K choices of a prompt attend to the same states, projected once, not K
    times."""
    cache = KVCache(len(model.decoder.block))
    for i, block in enumerate(model.decoder.block):
        device = block.layer[1].layer_norm.weight.device   # the block's (device_map); never quantized
        k, v = block.cross_keys_values(states if device.type == "meta" else states.to(device))
        cache.cross_k[i], cache.cross_v[i] = repeat_rows(k, repeat), repeat_rows(v, repeat)
    return cache


def repeat_rows(t: torch.Tensor, repeat: int) -> torch.Tensor:
    """Each batch row `repeat` times in a row; one row (one prompt) is repeated as a view, without copies."""
    return t.expand(repeat, *t.shape[1:]) if t.shape[0] == 1 else t.repeat_interleave(repeat, dim=0)


def rank_choices(model, tokenizer, prompts: str | list[str], choices: list[str], normalize: bool = False,
                 max_input_tokens: int = DEFAULT_MAX_INPUT_TOKENS) -> torch.Tensor:
    """Summed log-probabilities (B, K), fp32, of each of the K `choices` as the answer to each of the B `prompts`.

    `model` is a ...ForConditionalGeneration. Prompts are tokenized without `</s>` (cut to `max_input_tokens`),
    choices with it. The encoder runs once on the B prompts; its states are repeated K times and the decoder
    runs once on the B*K rows, the choices right-padded (a causal decoder never reads the padding, which is
    left out of the sums). `normalize`: each sum divided by the choice's token count (`</s>` included).
    A softmax over K turns a row into the choices' probabilities."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not choices:
        raise ValueError("rank_choices needs at least one prompt and one choice")
    prompt_ids = [tokenizer.encode(p, add_special_tokens=False)[:max_input_tokens] for p in prompts]
    if any(not ids for ids in prompt_ids):
        raise ValueError("a prompt has no tokens: give every prompt some text")
    device = model.device
    src, src_mask = pad_rows(prompt_ids, tokenizer.pad_token_id, device)                 # (B, S)
    labels, label_mask = pad_rows([tokenizer.encode(c) for c in choices], tokenizer.pad_token_id, device)  # (K, T)
    b, k = len(prompts), len(choices)
    with torch.no_grad():
        states = model.encode(src, src_mask).last_hidden_state                           # (B, S, D)
        cache = cross_attention_cache(model, states, k)
        states = repeat_rows(states, k)                                                  # (B*K, S, D)
        targets = labels.repeat(b, 1)                                                    # (B*K, T)
        decoder_in = shift_right(targets, model.config.decoder_start_token_id, tokenizer.pad_token_id)
        hidden = model.decode(decoder_in, states, src_mask.repeat_interleave(k, dim=0),
                              cache=cache).last_hidden_state
        mask = label_mask.repeat(b, 1)
        prompt_of_row = torch.arange(b).repeat_interleave(k)
        logp = target_log_probs(model, hidden, targets, mask, prompt_of_row)            # (B*K, T)
    mask = mask.to(logp.device).double()
    scores = (logp.double() * mask).sum(-1)   # summed in fp64: long choices add many terms
    if normalize:
        scores = scores / mask.sum(-1)
    return scores.float().view(b, k)
