"""Rank classification, as T0 and mT0 are evaluated (bigscience-workshop/t-zero `evaluation/`): each answer
choice is scored by the log-probability a text-to-text model gives it as the target of the prompt.

The prompt is tokenized without its closing `</s>`, each choice with it; a choice's score is the sum of its
tokens' log-probabilities under teacher forcing (decoder input = the choice shifted right), with no length
normalisation unless asked. The encoder runs once per batch of prompts; the decoder runs once over every
(prompt, choice) pair.
"""
from __future__ import annotations

import torch

from .modeling import shift_right

DEFAULT_MAX_INPUT_TOKENS = 512
LOGITS_CHUNK = 2 ** 25   # elements of fp32 logits held at once (128 MB): B*K rows x T x 250112 can be far more


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


def target_log_probs(model, states: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-probability of each target token: decoder states (N, T, D), targets (N, T) -> (N, T) fp32.

    The output projection and log_softmax run over a few rows at a time, in fp32, so the (N, T, V) logits are
    never held at once."""
    n, t = targets.shape
    rows = max(1, LOGITS_CHUNK // max(1, t * model.config.vocab_size))
    out = []
    for i in range(0, n, rows):
        logits = model.logits(states[i: i + rows]).float()                       # (n', T, V)
        logp = torch.log_softmax(logits, dim=-1)
        out.append(logp.gather(-1, targets[i: i + rows, :, None].to(logp.device))[..., 0])
    return torch.cat(out)


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
        states = states.repeat_interleave(k, dim=0)                                      # (B*K, S, D)
        targets = labels.repeat(b, 1)                                                    # (B*K, T)
        decoder_in = shift_right(targets, model.config.decoder_start_token_id, tokenizer.pad_token_id)
        hidden = model.decode(decoder_in, states, src_mask.repeat_interleave(k, dim=0)).last_hidden_state
        logp = target_log_probs(model, hidden, targets)                                  # (B*K, T)
    mask = label_mask.repeat(b, 1).to(logp.device).double()
    scores = (logp.double() * mask).sum(-1)   # summed in fp64: long choices add many terms
    if normalize:
        scores = scores / mask.sum(-1)
    return scores.float().view(b, k)
